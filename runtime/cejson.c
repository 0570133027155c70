/*
 * cejson.c — what the daemon does with JSON text without a DOM: text buffers, spans of members
 * and elements (of text that vm_json_valid accepted), string decoding, and the checks the
 * CloudEvents JSON format asks of an event.  Events are stored as they came (no re-encoding: a
 * number keeps its digits, a key its escapes).
 */
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ebd_int.h"

/* ---- times and logging ---------------------------------------------------------------------- */

void rt_time_text(int64_t ms, char *out, size_t cap)
{
    time_t secs = (time_t)(ms / 1000);
    int milli = (int)(ms % 1000);
    if (milli < 0) {            /* (before 1970: the second below, the milliseconds above it) */
        milli += 1000;
        secs--;
    }
    struct tm tm;
    gmtime_r(&secs, &tm);
    char b[40];
    strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, cap, "%s.%03dZ", b, milli);
}

void ebd_log(int level, const char *fmt, ...)
{
    static const char *const names[] = { "debug", "info", "warn", "error" };
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40], msg[2048];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One line per message, whatever a value held: a control character left in it (a value
     * that did not go through ebd_log_text) becomes a space. */
    for (char *c = msg; *c; c++)
        if ((unsigned char)*c < 0x20)
            *c = ' ';
    fprintf(stderr, "time=%s.%03ldZ level=%s %s\n", when, ts.tv_nsec / 1000000, names[level], msg);
}

const char *ebd_log_text(const char *s, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (; s && *s && o + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[c >> 4];
            out[o + 5] = hex[c & 15];
            o += 6;
        } else
            out[o++] = (char)c;
    }
    if (s && *s && cap >= 4) {      /* cut: say so */
        while (o + 4 > cap)
            o--;
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[cap ? o : 0] = 0;
    return out;
}

/* ---- text buffers ------------------------------------------------------------------------- */

/* Room for n more bytes and a NUL; false (b->oom set) if there is none to be had. */
static bool sb_reserve(sbuf *b, size_t n)
{
    if (b->oom)
        return false;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *v = realloc(b->v, cap);
        if (!v) {
            b->oom = true;
            return false;
        }
        b->v = v;
        b->cap = cap;
    }
    return true;
}

void sb_put(sbuf *b, const char *s, size_t n)
{
    if (!sb_reserve(b, n))
        return;
    memcpy(b->v + b->n, s, n);
    b->n += n;
    b->v[b->n] = 0;
}

void sb_puts(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        sb_put(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_put(b, big, (size_t)n);
    free(big);
}

void sb_json_string(sbuf *b, const char *s, size_t n)
{
    sb_put(b, "\"", 1);
    if (sb_reserve(b, n * 6 + 1))        /* room for the worst case */
        b->n += vm_json_escape(b->v + b->n, s, n);
    sb_put(b, "\"", 1);
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void sb_base64(sbuf *b, const unsigned char *s, size_t n)
{
    sb_put(b, "\"", 1);
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        char q[4] = { b64[v >> 18 & 63], b64[v >> 12 & 63], i + 1 < n ? b64[v >> 6 & 63] : '=',
                      i + 2 < n ? b64[v & 63] : '=' };
        sb_put(b, q, 4);
    }
    sb_put(b, "\"", 1);
}

bool ebd_digest128(unsigned char out[16], const void *const *parts, const size_t *lens, size_t n)
{
    unsigned char md[32] = { 0 };
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    bool ok = x && EVP_DigestInit_ex(x, EVP_sha256(), NULL) == 1;
    for (size_t i = 0; ok && i < n; i++) {
        unsigned char len[8];
        for (int k = 0; k < 8; k++)
            len[k] = (unsigned char)((uint64_t)lens[i] >> (8 * k));
        ok = EVP_DigestUpdate(x, len, 8) == 1 && EVP_DigestUpdate(x, parts[i], lens[i]) == 1;
    }
    ok = ok && EVP_DigestFinal_ex(x, md, NULL) == 1;
    EVP_MD_CTX_free(x);
    memcpy(out, ok ? md : (unsigned char[16]){ 0 }, 16);
    return ok;
}

/* The HMAC implementation, fetched once (a fetch per signed delivery looked it up by name every
 * time); kept until the process ends. */
static EVP_MAC *hmac_mac;
static pthread_once_t hmac_once = PTHREAD_ONCE_INIT;

static void hmac_fetch(void)
{
    hmac_mac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
}

bool ebd_hmac_sha256(unsigned char out[32], const char *key, const void *const *parts,
                     const size_t *lens, size_t n)
{
    pthread_once(&hmac_once, hmac_fetch);
    EVP_MAC_CTX *x = hmac_mac ? EVP_MAC_CTX_new(hmac_mac) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    size_t got = 0;
    bool ok = x && EVP_MAC_init(x, (const unsigned char *)key, strlen(key), params) == 1;
    for (size_t i = 0; ok && i < n; i++)
        ok = EVP_MAC_update(x, parts[i], lens[i]) == 1;
    ok = ok && EVP_MAC_final(x, out, &got, 32) == 1 && got == 32;
    EVP_MAC_CTX_free(x);
    return ok;
}

void sb_free(sbuf *b)
{
    free(b->v);
    *b = (sbuf){ 0 };
}

/* ---- spans ------------------------------------------------------------------------------ */

bool js_each(const char *s, size_t n, size_t i, bool (*fn)(void *, const js_member *), void *arg)
{
    bool object = s[i] == '{';
    i = vm_json_ws(s, n, i + 1);
    while (i < n && s[i] != '}' && s[i] != ']') {
        js_member m = { 0 };
        if (object) {
            size_t k = vm_json_string_end(s, n, i);
            m.key_off = (uint32_t)i;
            m.key_len = (uint32_t)(k - i);
            i = vm_json_ws(s, n, k);
            i = vm_json_ws(s, n, i + 1);    /* ':' */
        }
        size_t e = vm_json_value_end(s, n, i);
        m.val_off = (uint32_t)i;
        m.val_len = (uint32_t)(e - i);
        if (!fn(arg, &m))
            return false;
        i = vm_json_ws(s, n, e);
        if (i < n && s[i] == ',')
            i = vm_json_ws(s, n, i + 1);
    }
    return true;
}

int js_hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static unsigned hex4(const char *p)
{
    unsigned v = 0;
    for (int k = 0; k < 4; k++)
        v = v << 4 | (unsigned)js_hexval(p[k]);
    return v;
}

size_t js_unquote(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 1; i + 1 < n; i++) {
        if (s[i] != '\\') {
            out[o++] = s[i];
            continue;
        }
        char e = s[++i];
        switch (e) {
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            uint32_t cp = hex4(s + i + 1);
            i += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && i + 6 < n && s[i + 1] == '\\' && s[i + 2] == 'u') {
                uint32_t lo = hex4(s + i + 3);
                if (lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            if (cp >= 0xD800 && cp < 0xE000)
                cp = 0xFFFD;
            o += vm_utf8_encode(cp, out + o);
            break;
        }
        default: out[o++] = e;
        }
    }
    return o;
}

bool js_key_is(const char *s, const js_member *m, const char *name)
{
    size_t n = strlen(name);
    return m->key_len == n + 2 && memcmp(s + m->key_off + 1, name, n) == 0;
}

void js_put_member(sbuf *out, const char *s, const js_member *m, bool *any)
{
    sb_puts(out, *any ? "," : "");
    sb_put(out, s + m->key_off, m->key_len);
    sb_puts(out, ":");
    sb_put(out, s + m->val_off, m->val_len);
    *any = true;
}

/* ---- CloudEvents' JSON format ------------------------------------------------------------- */

#define MAX_KEYS 256

typedef struct {
    const char *s;
    char *why;
    size_t whycap;
    js_member keys[MAX_KEYS];     /* the attributes seen, to refuse one given twice */
    size_t nkeys;
    bool id, source, specversion, type, data, data_base64, failed;
    bool nulls;                   /* an attribute (not data) is null */
    const char *idp;
    size_t idlen;
} ce_state;

static bool ce_fail(ce_state *st, const char *fmt, const char *name)
{
    snprintf(st->why, st->whycap, fmt, name);
    st->failed = true;
    return false;
}

/* A CloudEvents String may not hold the control characters U+0000-U+001F and U+007F-U+009F
 * (the spec's type system: some, such as a line feed, cannot cross an HTTP header), nor a
 * Unicode noncharacter.  Refuses the decoded UTF-8 text t[0..n) of attribute name if it holds
 * one, naming the first. */
static bool no_control(ce_state *st, const char *name, const char *t, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = vm_utf8_decode(t + i, n - i, &cp);
        if (len == 0)               /* (not from a string vm_json_check took) */
            len = 1, cp = 0xFFFD;
        bool control = cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
        bool nonchar = (cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE;
        if (control || nonchar) {
            snprintf(st->why, st->whycap, "attribute '%s' holds a %s (U+%04X at byte %zu), which a "
                     "CloudEvents string may not", name, control ? "control character"
                     : "noncharacter", (unsigned)cp, i);
            st->failed = true;
            return false;
        }
        i += len;
    }
    return true;
}

static bool is_surrogate(unsigned cp, unsigned lo)
{
    return cp >= lo && cp < lo + 0x400;
}

/* A String may hold a surrogate only as half of a pair: JSON text may escape one alone
 * ("\uDEAD"), which is no character.  Refuses the quoted JSON string v[0..n) of attribute name if
 * it does, naming the escape. */
static bool no_lone_surrogate(ce_state *st, const char *name, const char *v, size_t n)
{
    for (size_t i = 1; i + 1 < n; i++) {
        if (v[i] != '\\')
            continue;
        if (v[++i] != 'u')
            continue;
        unsigned cp = hex4(v + i + 1), lo = 0;
        bool paired = i + 11 < n && v[i + 5] == '\\' && v[i + 6] == 'u' &&
                      is_surrogate(lo = hex4(v + i + 7), 0xDC00);
        if (is_surrogate(cp, 0xD800) && paired) {
            i += 10;
        } else if (is_surrogate(cp, 0xD800) || is_surrogate(cp, 0xDC00)) {
            snprintf(st->why, st->whycap, "attribute '%s' holds a lone surrogate (%.6s), which a "
                     "CloudEvents string may not", name, v + i - 1);
            st->failed = true;
            return false;
        } else {
            i += 4;
        }
    }
    return true;
}

int ce_header_value(const char *v, size_t n, char *out, size_t *len, size_t *at)
{
    size_t un = 0, o = 0;
    bool quoted = false;
    for (size_t i = 0; i < n; i++) {
        if (v[i] == '"')
            quoted = !quoted;
        else if (quoted && v[i] == '\\' && i + 1 < n)
            out[un++] = v[++i];
        else
            out[un++] = v[i];
    }
    if (quoted)
        return CE_HV_QUOTE;
    /* (in place: a percent-escape's three bytes become one) */
    for (size_t i = 0; i < un; i++) {
        if (out[i] != '%') {
            out[o++] = out[i];
        } else if (i + 2 < un && js_hexval(out[i + 1]) >= 0 && js_hexval(out[i + 2]) >= 0) {
            out[o++] = (char)(js_hexval(out[i + 1]) * 16 + js_hexval(out[i + 2]));
            i += 2;
        } else {
            *at = i;
            return CE_HV_PERCENT;
        }
    }
    *len = o;
    return CE_HV_OK;
}

/* Is c one of RFC 3986's characters (unreserved, gen-delims, sub-delims; '%' apart)? */
static bool uri_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("-._~:/?#[]@!$&'()*+,;=", c));
}

/* The length of v's scheme (RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) before a ':'),
 * 0 if it has none. */
static size_t scheme_len(const char *v, size_t n)
{
    size_t i = 0;
    while (i < n && ((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') ||
                     (i > 0 && ((v[i] >= '0' && v[i] <= '9') || v[i] == '+' || v[i] == '-' ||
                                v[i] == '.'))))
        i++;
    return i > 0 && i < n && v[i] == ':' ? i : 0;
}

/* A URI-reference (RFC 3986 section 4.1), or with absolute a URI with a scheme (section 4.3,
 * a fragment let pass): its characters, its percent-encodings, and a ':' in its first segment
 * only after a scheme (a relative reference cannot have one there).  Not the finer grammar of
 * hosts and ports.  Characters beyond ASCII are let pass, as in an IRI (RFC 3987): sources
 * name things after MQTT topics, which may hold any. */
static bool uri_ref(const char *v, size_t n, bool absolute)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i] == '%' ? !(i + 2 < n && js_hexval(v[i + 1]) >= 0 && js_hexval(v[i + 2]) >= 0)
                        : !uri_char(v[i]) && (unsigned char)v[i] < 0x80)
            return false;
    }
    if (scheme_len(v, n))
        return true;
    /* (v ends at n, with no NUL: the first segment found within it) */
    size_t seg = 0;
    while (seg < n && v[seg] != '/' && v[seg] != '?' && v[seg] != '#')
        seg++;
    return !absolute && memchr(v, ':', seg) == NULL;
}

/* A token of RFC 2045: printable ASCII but space and the tspecials; its length. */
static size_t mime_token(const char *v, size_t n)
{
    size_t i = 0;
    while (i < n && v[i] > 0x20 && v[i] < 0x7f && !strchr("()<>@,;:\\\"/[]?=", v[i]))
        i++;
    return i;
}

/* A media type as RFC 2046 writes one: type "/" subtype, then any parameters
 * (; attribute=value, a value a token or a quoted string), white space around the ';'. */
static bool media_type_ok(const char *v, size_t n)
{
    size_t i = mime_token(v, n);
    if (i == 0 || i >= n || v[i] != '/')
        return false;
    size_t k = mime_token(v + i + 1, n - i - 1);
    if (k == 0)
        return false;
    for (i += 1 + k;;) {
        while (i < n && (v[i] == ' ' || v[i] == '\t'))
            i++;
        if (i == n)
            return true;
        if (v[i++] != ';')
            return false;
        while (i < n && (v[i] == ' ' || v[i] == '\t'))
            i++;
        if (i == n || v[i] == ';')
            continue;   /* an empty parameter, as HTTP may send (RFC 9110 section 5.6.6) */
        k = mime_token(v + i, n - i);
        if (k == 0 || i + k >= n || v[i + k] != '=')
            return false;
        i += k + 1;
        if (i < n && v[i] == '"') {
            for (i++; i < n && v[i] != '"'; i++)
                if (v[i] == '\\')
                    i++;
            if (i++ >= n)
                return false;
        } else if ((k = mime_token(v + i, n - i)) == 0) {
            return false;
        } else {
            i += k;
        }
    }
}

/* A CloudEvents Integer as JSON writes it: the integer component of a number, in the signed
 * 32-bit range. */
static bool ce_integer(const char *v, size_t n)
{
    size_t i = v[0] == '-';
    if (i == n || n - i > 10)
        return false;
    long long x = 0;
    for (; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        x = x * 10 + (v[i] - '0');
    }
    return v[0] == '-' ? x <= 2147483648LL : x <= 2147483647LL;
}

/* The days of month mo (1-12) of year y, Gregorian. */
static int month_days(int y, int mo)
{
    static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return mo == 2 && leap ? 29 : days[mo - 1];
}

/* RFC 3339 date-time: 2026-11-26T10:00:00(.frac)?(Z|+hh:mm), with a day its month has and an
 * offset of at most 23:59. */
static bool rfc3339(const char *v, size_t n)
{
    const char *shape = "dddd-dd-ddTdd:dd:dd";
    if (n < 20)
        return false;
    for (size_t i = 0; i < 19; i++)
        if (shape[i] == 'd' ? v[i] < '0' || v[i] > '9' : (shape[i] == 'T' ? (v[i] != 'T' && v[i] != 't') : v[i] != shape[i]))
            return false;
    int y = (v[0] - '0') * 1000 + (v[1] - '0') * 100 + (v[2] - '0') * 10 + v[3] - '0';
    int mo = (v[5] - '0') * 10 + v[6] - '0', d = (v[8] - '0') * 10 + v[9] - '0';
    int h = (v[11] - '0') * 10 + v[12] - '0', mi = (v[14] - '0') * 10 + v[15] - '0';
    int sec = (v[17] - '0') * 10 + v[18] - '0';
    if (mo < 1 || mo > 12 || d < 1 || d > month_days(y, mo) || h > 23 || mi > 59 || sec > 60)
        return false;
    size_t i = 19;
    if (v[i] == '.') {
        size_t k = ++i;
        while (i < n && v[i] >= '0' && v[i] <= '9')
            i++;
        if (i == k)
            return false;
    }
    if (i < n && (v[i] == 'Z' || v[i] == 'z'))
        return i + 1 == n;
    return i + 6 == n && (v[i] == '+' || v[i] == '-') && v[i + 3] == ':' &&
           (v[i + 1] == '2' ? v[i + 2] >= '0' && v[i + 2] <= '3'
                            : v[i + 1] >= '0' && v[i + 1] <= '1' && v[i + 2] >= '0' && v[i + 2] <= '9') &&
           v[i + 4] >= '0' && v[i + 4] <= '5' && v[i + 5] >= '0' && v[i + 5] <= '9';
}

static bool ce_value(ce_state *st, const js_member *m, const char *name, const char *v, size_t vlen,
                     bool is_str, const char *text, size_t tlen);

static bool ce_member(void *arg, const js_member *m)
{
    ce_state *st = arg;
    const char *s = st->s;
    const char *key = s + m->key_off + 1;
    size_t klen = m->key_len - 2;
    const char *v = s + m->val_off;
    size_t vlen = m->val_len;
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(klen < 60 ? klen : 60), key);
    for (size_t k = 0; k < st->nkeys; k++)
        if (st->keys[k].key_len == m->key_len && !memcmp(s + st->keys[k].key_off, key - 1, m->key_len))
            return ce_fail(st, "attribute '%s' appears twice", name);
    /* (a limit, so that every one is compared with every other: one given twice past it went
     * unnoticed, and came into view when the null ones before it were taken out) */
    if (st->nkeys == MAX_KEYS)
        return ce_fail(st, "an event may have at most 256 attributes; '%s' is one more", name);
    st->keys[st->nkeys++] = *m;
    bool is_str = v[0] == '"';
    char small[512], *text = small;
    size_t tlen = 0;
    if (is_str && vlen > sizeof small && !(text = malloc(vlen)))
        return ce_fail(st, "out of memory reading attribute '%s'", name);
    if (is_str)
        tlen = js_unquote(v, vlen, text);
    bool ok = ce_value(st, m, name, v, vlen, is_str, text, tlen);
    if (text != small)
        free(text);
    return ok;
}

/* Checks one attribute's value (text: a string value decoded).  A null value is an attribute
 * unset (the JSON format says so), except for data, where it is a null payload. */
static bool ce_value(ce_state *st, const js_member *m, const char *name, const char *v, size_t vlen,
                     bool is_str, const char *text, size_t tlen)
{
    const char *s = st->s;
    const char *key = s + m->key_off + 1;
    size_t klen = m->key_len - 2;
    bool null = v[0] == 'n';
    if (js_key_is(s, m, "data")) {
        st->data = true;
        return true;
    }
    st->nulls |= null;   /* (data is not an attribute: see ce_null_attribute) */
    if (js_key_is(s, m, "data_base64")) {
        if (null)
            return true;
        st->data_base64 = true;
        if (!is_str)
            return ce_fail(st, "attribute '%s' must be a string (base64)", name);
        size_t pad = 0;
        for (size_t i = 0; i < tlen; i++) {
            char ch = text[i];
            bool b64 = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                       ch == '+' || ch == '/';
            if (ch == '=' && i + 2 >= tlen)
                pad++;
            else if (!b64 || pad)
                return ce_fail(st, "attribute '%s' is not base64", name);
        }
        if (tlen % 4)
            return ce_fail(st, "attribute '%s' is not base64 (its length is not a multiple of 4)", name);
        return true;
    }
    if (is_str && (!no_lone_surrogate(st, name, v, vlen) || !no_control(st, name, text, tlen)))
        return false;
    static const char *const strs[] = { "id", "source", "specversion", "type", "datacontenttype",
                                        "dataschema", "subject", "time" };
    for (size_t k = 0; k < sizeof strs / sizeof *strs; k++) {
        if (!js_key_is(s, m, strs[k]))
            continue;
        if (null)
            return true;
        if (!is_str)
            return ce_fail(st, "attribute '%s' must be a string", name);
        /* the required ones and subject: non-empty strings */
        if ((k < 4 || k == 6) && tlen == 0)
            return ce_fail(st, "attribute '%s' must not be empty", name);
        if (k == 0) {
            st->id = true;
            st->idp = v;
            st->idlen = vlen;
        } else if (k == 1) {
            st->source = true;
            if (!uri_ref(text, tlen, false))
                return ce_fail(st, "attribute '%s' must be a URI-reference", name);
        } else if (k == 2) {
            st->specversion = true;
            if (tlen != 3 || memcmp(text, "1.0", 3) != 0)
                return ce_fail(st, "attribute '%s' must be \"1.0\"", name);
        } else if (k == 3) {
            st->type = true;
        } else if (k == 4 && !media_type_ok(text, tlen)) {
            return ce_fail(st, "attribute '%s' must be a media type (RFC 2046), such as "
                           "application/json", name);
        } else if (k == 5 && (tlen == 0 || !uri_ref(text, tlen, true))) {
            return ce_fail(st, "attribute '%s' must be a URI", name);
        } else if (k == 7 && !rfc3339(text, tlen)) {
            return ce_fail(st, "attribute '%s' must be an RFC 3339 time", name);
        }
        return true;
    }
    /* An extension: a-z and 0-9 only; a string, an Integer or a boolean (or null: unset). */
    if (klen == 0)
        return ce_fail(st, "an attribute name is empty%s", "");
    for (size_t i = 0; i < klen; i++)
        if (!((key[i] >= 'a' && key[i] <= 'z') || (key[i] >= '0' && key[i] <= '9')))
            return ce_fail(st, "attribute name '%s' is not made of a-z and 0-9", name);
    if (v[0] == '{' || v[0] == '[')
        return ce_fail(st, "extension attribute '%s' must be a string, a number or a boolean", name);
    if ((v[0] == '-' || (v[0] >= '0' && v[0] <= '9')) && !ce_integer(v, vlen))
        return ce_fail(st, "extension attribute '%s' is a number that is not a CloudEvents Integer "
                       "(a whole number from -2147483648 to 2147483647)", name);
    return true;
}

bool ce_check(const char *s, size_t n, char *why, size_t whycap, const char **id, size_t *idlen,
              bool *nulls)
{
    size_t i = vm_json_ws(s, n, 0);
    if (i >= n || s[i] != '{') {
        snprintf(why, whycap, "an event must be a JSON object");
        return false;
    }
    ce_state st = { .s = s, .why = why, .whycap = whycap };
    js_each(s, n, i, ce_member, &st);
    if (st.failed)
        return false;
    const char *missing = !st.specversion ? "specversion" : !st.id ? "id" : !st.source ? "source"
                        : !st.type ? "type" : NULL;
    if (missing) {
        snprintf(why, whycap, "required attribute '%s' is missing", missing);
        return false;
    }
    if (st.data && st.data_base64) {
        snprintf(why, whycap, "an event has 'data' or 'data_base64', not both");
        return false;
    }
    *id = st.idp;
    *idlen = st.idlen;
    if (nulls)
        *nulls = st.nulls;
    return true;
}

bool ce_null_attribute(const char *s, const js_member *m)
{
    return s[m->val_off] == 'n' && !js_key_is(s, m, "data");
}

typedef struct {
    char *s;
    size_t w;        /* where the next kept member goes */
    bool any;
} drop_state;

/* Keeps member m unless it is an attribute set to null: moved down to where the kept ones
 * end (never past its own end, which js_each reads from next). */
static bool keep_member(void *arg, const js_member *m)
{
    drop_state *st = arg;
    if (ce_null_attribute(st->s, m))
        return true;
    size_t len = m->val_off + m->val_len - m->key_off;
    if (st->any)
        st->s[st->w++] = ',';
    memmove(st->s + st->w, st->s + m->key_off, len);
    st->w += len;
    st->any = true;
    return true;
}

void ce_drop_nulls(char *s, size_t *n)
{
    size_t i = vm_json_ws(s, *n, 0);
    drop_state st = { s, i + 1, false };
    js_each(s, *n, i, keep_member, &st);
    s[st.w++] = '}';
    *n = st.w;
}

bool rt_cloudevent_check(const char *s, size_t n, char *why, size_t whycap)
{
    size_t at;
    const char *bad;
    if (!vm_json_check(s, n, &at, &bad)) {
        snprintf(why, whycap, "not valid JSON: %s (at byte %zu)", bad, at);
        return false;
    }
    const char *id;
    size_t idlen;
    return ce_check(s, n, why, whycap, &id, &idlen, NULL);
}
