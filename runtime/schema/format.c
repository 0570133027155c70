/*
 * format.c — the `format` values ebr asserts: date-time (RFC 3339 section 5.6), uri (RFC 3986
 * absolute URI), email (RFC 5321 Mailbox: dot-atom or quoted local part, host name or address
 * literal), uuid (RFC 9562 text form), ipv4 (dotted quad, no leading zeros) and ipv6 (RFC 4291
 * text forms, an IPv4 tail allowed).  Every other format is an annotation.
 */
#include <stdlib.h>
#include <string.h>

#include "schema.h"

static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

/* The value of the n digits at s, or -1 when they are not all ASCII digits. */
static int digits(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* Days in month m of year y. */
static int month_days(int y, int m)
{
    static const int d[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return d[m - 1];
}

/* RFC 3339 date-time: YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM); a leap second only at
 * 23:59:60 UTC. */
static bool is_date_time(const char *s, size_t n)
{
    if (n < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
        s[16] != ':')
        return false;
    int y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2);
    int h = digits(s + 11, 2), mi = digits(s + 14, 2), se = digits(s + 17, 2);
    if (y < 0 || mo < 1 || mo > 12 || d < 1 || d > month_days(y, mo) || h < 0 || h > 23 ||
        mi < 0 || mi > 59 || se < 0 || se > 60)
        return false;
    size_t i = 19;
    if (i < n && s[i] == '.') {
        size_t k = ++i;
        while (i < n && is_digit(s[i]))
            i++;
        if (i == k)
            return false;
    }
    int off = 0;                  /* minutes east of UTC */
    if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i < n && (s[i] == '+' || s[i] == '-')) {
        if (n - i != 6 || s[i + 3] != ':')
            return false;
        int oh = digits(s + i + 1, 2), om = digits(s + i + 4, 2);
        if (oh < 0 || oh > 23 || om < 0 || om > 59)
            return false;
        off = (oh * 60 + om) * (s[i] == '+' ? 1 : -1);
        i += 6;
    } else {
        return false;
    }
    if (i != n)
        return false;
    if (se == 60) {
        int utc = ((h * 60 + mi - off) % 1440 + 1440) % 1440;
        if (utc != 23 * 60 + 59)
            return false;
    }
    return true;
}

/* An IPv4 address: four decimal octets 0-255 without leading zeros. */
static bool is_ipv4(const char *s, size_t n)
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i >= n || s[i] != '.')
                return false;
            i++;
        }
        size_t k = i;
        int v = 0;
        while (i < n && is_digit(s[i]) && i - k < 3)
            v = v * 10 + (s[i++] - '0');
        if (i == k || v > 255 || (i - k > 1 && s[k] == '0'))
            return false;
    }
    return i == n;
}

/* An IPv6 address in the forms of RFC 4291 section 2.2 (no zone). */
static bool is_ipv6(const char *s, size_t n)
{
    int groups = 0;
    bool gap = false;
    size_t i = 0;
    if (n >= 2 && s[0] == ':' && s[1] == ':') {
        gap = true;
        i = 2;
        if (i == n)
            return true;
    } else if (n && s[0] == ':') {
        return false;
    }
    while (i < n) {
        size_t k = i;
        while (i < n && is_hex(s[i]) && i - k < 5)
            i++;
        if (i < n && s[i] == '.') {             /* an IPv4 tail: two groups */
            if (!is_ipv4(s + k, n - k))
                return false;
            groups += 2;
            i = n;
            break;
        }
        if (i == k || i - k > 4)
            return false;
        groups++;
        if (i == n)
            break;
        if (s[i] != ':')
            return false;
        i++;
        if (i < n && s[i] == ':') {
            if (gap)
                return false;
            gap = true;
            i++;
            if (i == n)
                break;
        } else if (i == n) {
            return false;                       /* a trailing single ':' */
        }
    }
    return gap ? groups < 8 : groups == 8;
}

/* A UUID: 8-4-4-4-12 hexadecimal digits. */
static bool is_uuid(const char *s, size_t n)
{
    if (n != 36)
        return false;
    for (size_t i = 0; i < n; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !is_hex(s[i]))
            return false;
    }
    return true;
}

/* RFC 3986 characters: unreserved, sub-delims, and those `extra` allows; %XX escapes. */
static bool uri_chars(const char *s, size_t n, const char *extra)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n + 0 || !is_hex(s[i + 1]) || !is_hex(s[i + 2]))
                return false;
            i += 2;
            continue;
        }
        if (is_alpha(c) || is_digit(c) || strchr("-._~!$&'()*+,;=", c) || (extra && strchr(extra, c)))
            continue;
        return false;
    }
    return true;
}

/* An absolute URI: scheme ":" hier-part ["?" query] ["#" fragment]. */
static bool is_uri(const char *s, size_t n)
{
    size_t i = 0;
    if (!n || !is_alpha(s[0]))
        return false;
    while (i < n && (is_alpha(s[i]) || is_digit(s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.'))
        i++;
    if (i == n || s[i] != ':')
        return false;
    i++;
    size_t end = i;
    while (end < n && s[end] != '?' && s[end] != '#')
        end++;
    if (end < n && s[end] == '?') {
        size_t q = end + 1, qe = q;
        while (qe < n && s[qe] != '#')
            qe++;
        if (!uri_chars(s + q, qe - q, ":@/?"))
            return false;
        if (qe < n && !uri_chars(s + qe + 1, n - qe - 1, ":@/?"))
            return false;
    } else if (end < n && !uri_chars(s + end + 1, n - end - 1, ":@/?")) {
        return false;
    }
    const char *p = s + i;
    size_t pn = end - i;
    if (pn >= 2 && p[0] == '/' && p[1] == '/') {
        size_t a = 2;
        while (a < pn && p[a] != '/')
            a++;
        const char *auth = p + 2;
        size_t an = a - 2;
        const char *at = memchr(auth, '@', an);
        if (at) {
            if (!uri_chars(auth, (size_t)(at - auth), ":"))
                return false;
            an -= (size_t)(at - auth) + 1;
            auth = at + 1;
        }
        const char *host = auth;
        size_t hn = an;
        if (an && auth[0] == '[') {
            const char *close = memchr(auth, ']', an);
            if (!close)
                return false;
            const char *lit = auth + 1;
            size_t ln = (size_t)(close - lit);
            if (!(ln && (lit[0] == 'v' || lit[0] == 'V') ? uri_chars(lit, ln, ":") : is_ipv6(lit, ln)))
                return false;
            hn = (size_t)(close - auth) + 1;
        } else {
            const char *colon = memchr(auth, ':', an);
            hn = colon ? (size_t)(colon - auth) : an;
            if (!uri_chars(host, hn, NULL))
                return false;
        }
        if (hn < an) {
            if (host[hn] != ':')
                return false;
            for (size_t k = hn + 1; k < an; k++)
                if (!is_digit(host[k]))
                    return false;
        }
        p += a, pn -= a;
    }
    return uri_chars(p, pn, ":@/");
}

/* A host name: labels of letters, digits and hyphens (not at either end), at most 63 each. */
static bool is_hostname(const char *s, size_t n)
{
    if (!n || n > 253)
        return false;
    size_t k = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '.') {
            if (i == k || i - k > 63 || s[k] == '-' || s[i - 1] == '-')
                return false;
            k = i + 1;
        } else if (!is_alpha(s[i]) && !is_digit(s[i]) && s[i] != '-') {
            return false;
        }
    }
    return true;
}

/* An e-mail address: local-part "@" domain. */
static bool is_email(const char *s, size_t n)
{
    size_t i = 0;
    if (n && s[0] == '"') {
        for (i = 1; i < n && s[i] != '"'; i++) {
            if (s[i] == '\\')
                i++;
            else if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7E)
                return false;
        }
        if (i >= n)
            return false;
        i++;
    } else {
        static const char atext[] = "!#$%&'*+-/=?^_`{|}~";
        size_t k = 0;
        for (; i < n && s[i] != '@'; i++) {
            if (s[i] == '.') {
                if (i == k)
                    return false;               /* leading or doubled dot */
                k = i + 1;
            } else if (!is_alpha(s[i]) && !is_digit(s[i]) && !strchr(atext, s[i])) {
                return false;
            }
        }
        if (i == 0 || k == i)
            return false;                       /* empty, or a trailing dot */
    }
    if (i >= n || s[i] != '@')
        return false;
    const char *d = s + i + 1;
    size_t dn = n - i - 1;
    if (dn >= 2 && d[0] == '[' && d[dn - 1] == ']') {
        if (dn > 7 && strncmp(d + 1, "IPv6:", 5) == 0)
            return is_ipv6(d + 6, dn - 7);
        return is_ipv4(d + 1, dn - 2);
    }
    return is_hostname(d, dn);
}

bool sch_format_ok(const char *fmt, const char *s, size_t n, bool *known)
{
    static const struct {
        const char *name;
        bool (*fn)(const char *, size_t);
    } fmts[] = {
        { "date-time", is_date_time }, { "uri", is_uri }, { "email", is_email },
        { "uuid", is_uuid }, { "ipv4", is_ipv4 }, { "ipv6", is_ipv6 },
    };
    for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++)
        if (strcmp(fmt, fmts[i].name) == 0) {
            if (known)
                *known = true;
            return memchr(s, '\0', n) == NULL && fmts[i].fn(s, n);
        }
    if (known)
        *known = false;
    return true;
}
