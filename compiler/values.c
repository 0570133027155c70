/*
 * values.c — literals of the language: strings (JSON escapes, UTF-8 checked), numbers, durations
 * and sizes.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cc.h"
#include "parser.h"

char *cc_token_text(cc_unit *u, const gr_token *t)
{
    char *s = cc_alloc(u->comp, (size_t)t->len + 1);
    memcpy(s, u->text + t->off, t->len);
    return s;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static long hex4(const char *s)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

/* Decodes the JSON string body s[0..n) (no quotes) into out (room for n bytes: decoding never
 * grows a string).  Returns the decoded length, or -1 with *bad set to the offset of the faulty
 * bytes and *badlen to their length, and *why to a message. */
static long decode_string(const char *s, size_t n, char *out, size_t *bad, size_t *badlen,
                          const char **why)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\') {
            if (i + 1 >= n) {
                *bad = i, *badlen = 1, *why = "a string cannot end with a lone backslash";
                return -1;
            }
            char e = s[i + 1], plain = 0;
            switch (e) {
            case '"': plain = '"'; break;
            case '\\': plain = '\\'; break;
            case '/': plain = '/'; break;
            case 'b': plain = '\b'; break;
            case 'f': plain = '\f'; break;
            case 'n': plain = '\n'; break;
            case 'r': plain = '\r'; break;
            case 't': plain = '\t'; break;
            default: break;
            }
            if (plain) {
                out[o++] = plain;
                i += 2;
                continue;
            }
            if (e != 'u' || i + 6 > n || hex4(s + i + 2) < 0) {
                *bad = i, *badlen = e == 'u' ? (i + 6 <= n ? 6 : n - i) : 2;
                *why = "invalid escape in string";
                return -1;
            }
            uint32_t cp = (uint32_t)hex4(s + i + 2);
            size_t used = 6;
            if (cp >= 0xD800 && cp <= 0xDBFF && i + 12 <= n && s[i + 6] == '\\' &&
                s[i + 7] == 'u' && hex4(s + i + 8) >= 0xDC00 && hex4(s + i + 8) <= 0xDFFF) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)hex4(s + i + 8) - 0xDC00);
                used = 12;
            } else if (cp >= 0xD800 && cp <= 0xDFFF) {
                cp = 0xFFFD;  /* a lone surrogate cannot be UTF-8: it reads as U+FFFD */
            }
            o += vm_utf8_encode(cp, out + o);
            i += used;
            continue;
        }
        if (c < 0x20) {
            *bad = i, *badlen = 1, *why = "control character in string (escape it)";
            return -1;
        }
        if (c < 0x80) {
            out[o++] = (char)c;
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = vm_utf8_decode(s + i, n - i, &cp);
        if (k == 0) {
            *bad = i, *badlen = 1, *why = "invalid UTF-8 in string";
            return -1;
        }
        memcpy(out + o, s + i, k);
        o += k;
        i += k;
    }
    return (long)o;
}

char *cc_string(cc_unit *u, const gr_token *t, size_t *len)
{
    const char *body = u->text + t->off + 1;
    size_t n = t->len >= 2 ? t->len - 2 : 0;
    char *out = cc_alloc(u->comp, n + 1);
    size_t bad, badlen;
    const char *why;
    long k = decode_string(body, n, out, &bad, &badlen, &why);
    if (k < 0) {
        cc_error(u, t->off + 1 + (uint32_t)bad, (uint32_t)badlen, "%s", why);
        return NULL;
    }
    out[k] = 0;
    *len = (size_t)k;
    return out;
}

uint32_t cc_source_offset(cc_unit *u, const gr_token *t, size_t pos)
{
    const char *s = u->text + t->off + 1;
    size_t n = t->len >= 2 ? t->len - 2 : 0, i = 0, o = 0;
    while (i < n && o < pos) {
        if (s[i] == '\\' && i + 1 < n && s[i + 1] == 'u') {
            char tmp[8];
            uint32_t cp = (uint32_t)hex4(s + i + 2);
            size_t used = 6;
            if (cp >= 0xD800 && cp <= 0xDBFF && i + 12 <= n && s[i + 6] == '\\')
                cp = 0x10000, used = 12;
            o += vm_utf8_encode(cp, tmp);
            i += used;
        } else {
            i += s[i] == '\\' ? 2 : 1;
            o++;
        }
    }
    return t->off + 1 + (uint32_t)i;
}

long cc_decode_json_string(const char *s, size_t n, char *out, size_t *bad, size_t *badlen,
                           const char **why)
{
    return decode_string(s, n, out, bad, badlen, why);
}

/* Length of the leading number of a quantity ("1.5" of "1.5s"). */
static size_t number_part(const char *s, size_t n)
{
    size_t i = s[0] == '-';
    while (i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.'))
        i++;
    return i;
}

static double leading_number(const char *s, size_t n)
{
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%.*s", (int)(n < 63 ? n : 63), s);
    return strtod(tmp, NULL);
}

/* Parses a duration: one or more <number><unit> with units ms, s, m, h, d.  Returns false if
 * the text is not one. */
static bool parse_duration(const char *s, size_t n, double *ms)
{
    static const struct { const char *unit; double ms; } units[] = {
        { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 },
    };
    double total = 0;
    size_t i = 0;
    if (n == 0 || s[0] == '-')
        return false;
    while (i < n) {
        size_t num = i;
        while (i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.'))
            i++;
        size_t unit = i;
        while (i < n && s[i] >= 'a' && s[i] <= 'z')
            i++;
        if (num == unit || unit == i)
            return false;
        size_t k = 0;
        while (k < sizeof units / sizeof units[0] &&
               !(strlen(units[k].unit) == i - unit && memcmp(units[k].unit, s + unit, i - unit) == 0))
            k++;
        if (k == sizeof units / sizeof units[0])
            return false;
        total += leading_number(s + num, unit - num) * units[k].ms;
    }
    *ms = total;
    return true;
}

/* Parses a size: <number><unit> with units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB. */
static bool parse_size(const char *s, size_t n, double *bytes)
{
    static const struct { const char *unit; double mult; } units[] = {
        { "B", 1 },     { "KB", 1e3 },      { "MB", 1e6 },          { "GB", 1e9 },
        { "TB", 1e12 }, { "KiB", 1024.0 },  { "MiB", 1048576.0 },   { "GiB", 1073741824.0 },
        { "TiB", 1099511627776.0 },
    };
    size_t us = number_part(s, n);
    if (s[0] == '-')
        return false;
    for (size_t k = 0; k < sizeof units / sizeof units[0]; k++) {
        if (strlen(units[k].unit) == n - us && memcmp(units[k].unit, s + us, n - us) == 0) {
            *bytes = leading_number(s, us) * units[k].mult;
            return true;
        }
    }
    return false;
}

int cc_duration(cc_unit *u, const gr_token *t, double *ms)
{
    if (t->type != TK_QUANTITY)
        return 0;
    return parse_duration(u->text + t->off, t->len, ms) ? 1 : 0;
}

int cc_size(cc_unit *u, const gr_token *t, double *bytes)
{
    if (t->type != TK_QUANTITY)
        return 0;
    return parse_size(u->text + t->off, t->len, bytes) ? 1 : 0;
}
