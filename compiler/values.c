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

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Checks the JSON string body s[0..n) (no quotes): escapes, control characters, UTF-8.  Returns
 * true, or false with the faulty bytes' offset and length and a message. */
static bool check_string(const char *s, size_t n, size_t *bad, size_t *badlen, const char **why)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\') {
            char e = i + 1 < n ? s[i + 1] : 0;
            if (e == 'u' && i + 6 <= n && is_hex(s[i + 2]) && is_hex(s[i + 3]) &&
                is_hex(s[i + 4]) && is_hex(s[i + 5])) {
                i += 6;
                continue;
            }
            if (e && e != 'u' && strchr("\"\\/bfnrt", e)) {
                i += 2;
                continue;
            }
            *bad = i;
            *badlen = e == 'u' ? (i + 6 <= n ? 6 : n - i) : i + 1 < n ? 2 : 1;
            *why = i + 1 < n ? "invalid escape in string" : "a string cannot end with a lone backslash";
            return false;
        }
        if (c < 0x20) {
            *bad = i, *badlen = 1, *why = "control character in string (escape it)";
            return false;
        }
        uint32_t cp;
        size_t k = c < 0x80 ? 1 : vm_utf8_decode(s + i, n - i, &cp);
        if (k == 0) {
            *bad = i, *badlen = 1, *why = "invalid UTF-8 in string";
            return false;
        }
        i += k;
    }
    return true;
}

char *cc_string(cc_unit *u, const gr_token *t, size_t *len)
{
    const char *body = u->text + t->off + 1;
    size_t n = t->len >= 2 ? t->len - 2 : 0;
    char *out = cc_alloc(u->comp, n + 1);
    size_t bad, badlen;
    const char *why;
    long k = cc_decode_json_string(body, n, out, &bad, &badlen, &why);
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
        size_t len = s[i] == '\\' ? vm_json_escape_len(s + i, n - i) : 1;
        char tmp[12];
        o += s[i] == '\\' ? vm_json_unescape(s + i, len, tmp) : 1;
        i += len;
    }
    return t->off + 1 + (uint32_t)i;
}

long cc_decode_json_string(const char *s, size_t n, char *out, size_t *bad, size_t *badlen,
                           const char **why)
{
    if (!check_string(s, n, bad, badlen, why))
        return -1;
    return (long)vm_json_unescape(s, n, out);
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

/* Parses a duration: one or more <number><unit> with units ms, s, m, h, d (numbers with at most
 * one '.').  Returns 1, 0 if the text is not a duration, -1 if it is over 100 years. */
static int parse_duration(const char *s, size_t n, double *ms)
{
    static const struct { const char *unit; double ms; } units[] = {
        { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 },
    };
    double total = 0;
    size_t i = 0;
    if (n == 0 || s[0] == '-')
        return 0;
    while (i < n) {
        size_t num = i, dots = 0;
        while (i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.'))
            dots += s[i++] == '.';
        size_t unit = i;
        while (i < n && s[i] >= 'a' && s[i] <= 'z')
            i++;
        if (num == unit || unit == i || dots > 1 || s[num] == '.' || s[unit - 1] == '.')
            return 0;
        size_t k = 0;
        while (k < sizeof units / sizeof units[0] &&
               !(strlen(units[k].unit) == i - unit && memcmp(units[k].unit, s + unit, i - unit) == 0))
            k++;
        if (k == sizeof units / sizeof units[0])
            return 0;
        total += leading_number(s + num, unit - num) * units[k].ms;
    }
    if (!(total <= 100.0 * 365.25 * 86400000.0))
        return -1;
    *ms = total;
    return 1;
}

/* Parses a size: <number><unit> with units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB.  Returns 1, 0
 * if the text is not a size, -1 if it is not a whole number of bytes or over 2^60. */
static int parse_size(const char *s, size_t n, double *bytes)
{
    static const struct { const char *unit; double mult; } units[] = {
        { "B", 1 },     { "KB", 1e3 },      { "MB", 1e6 },          { "GB", 1e9 },
        { "TB", 1e12 }, { "KiB", 1024.0 },  { "MiB", 1048576.0 },   { "GiB", 1073741824.0 },
        { "TiB", 1099511627776.0 },
    };
    size_t us = number_part(s, n), dots = 0;
    for (size_t i = 0; i < us; i++)
        dots += s[i] == '.';
    if (s[0] == '-' || us == 0 || dots > 1 || s[0] == '.' || s[us - 1] == '.')
        return 0;
    for (size_t k = 0; k < sizeof units / sizeof units[0]; k++) {
        if (strlen(units[k].unit) == n - us && memcmp(units[k].unit, s + us, n - us) == 0) {
            double b = leading_number(s, us) * units[k].mult;
            if (b != floor(b) || b > 1152921504606846976.0)
                return -1;
            *bytes = b;
            return 1;
        }
    }
    return 0;
}

int cc_duration(cc_unit *u, const gr_token *t, double *ms)
{
    if (t->type != TK_QUANTITY)
        return 0;
    return parse_duration(u->text + t->off, t->len, ms);
}

int cc_size(cc_unit *u, const gr_token *t, double *bytes)
{
    if (t->type != TK_QUANTITY)
        return 0;
    return parse_size(u->text + t->off, t->len, bytes);
}
