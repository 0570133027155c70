/*
 * json_check.c — a strict check that a text is one JSON value (RFC 8259): what the scanner
 * demands of events, for any value, for payloads that come from outside (function transforms)
 * and for tools that embed stored payloads in their own JSON output.
 */
#include <string.h>

#include "vm.h"

#define MAX_DEPTH 1024

typedef struct {
    const char *s;
    size_t n, i;
} rd;

static void ws(rd *r)
{
    while (r->i < r->n && (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' ||
                           r->s[r->i] == '\r'))
        r->i++;
}

static bool digits(rd *r)
{
    size_t from = r->i;
    while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9')
        r->i++;
    return r->i > from;
}

/* -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)? */
static bool number(rd *r)
{
    if (r->s[r->i] == '-')
        r->i++;
    if (r->i < r->n && r->s[r->i] == '0')
        r->i++;
    else if (r->i >= r->n || r->s[r->i] < '1' || r->s[r->i] > '9' || !digits(r))
        return false;
    if (r->i < r->n && r->s[r->i] == '.') {
        r->i++;
        if (!digits(r))
            return false;
    }
    if (r->i < r->n && (r->s[r->i] == 'e' || r->s[r->i] == 'E')) {
        r->i++;
        if (r->i < r->n && (r->s[r->i] == '+' || r->s[r->i] == '-'))
            r->i++;
        if (!digits(r))
            return false;
    }
    return true;
}

static bool hex4(rd *r, unsigned *v)
{
    *v = 0;
    for (int k = 0; k < 4; k++, r->i++) {
        if (r->i >= r->n)
            return false;
        char c = r->s[r->i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                   : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16u;
        if (d == 16)
            return false;
        *v = *v << 4 | d;
    }
    return true;
}

/* A string from its opening quote: well-formed UTF-8, no raw control characters, only the
 * escapes the RFC lists.  A lone surrogate escape is allowed, as the RFC's grammar allows it. */
static bool string(rd *r)
{
    r->i++;
    while (r->i < r->n) {
        unsigned char c = (unsigned char)r->s[r->i];
        if (c == '"') {
            r->i++;
            return true;
        }
        if (c < 0x20)
            return false;
        if (c == '\\') {
            if (++r->i >= r->n)
                return false;
            char e = r->s[r->i++];
            unsigned v;
            if (e == 'u') {
                if (!hex4(r, &v))
                    return false;
            } else if (!strchr("\"\\/bfnrt", e) || e == 0)
                return false;
            continue;
        }
        if (c < 0x80) {
            r->i++;
            continue;
        }
        uint32_t cp;
        size_t len = vm_utf8_decode(r->s + r->i, r->n - r->i, &cp);
        if (len == 0)
            return false;
        r->i += len;
    }
    return false;
}

static bool word(rd *r, const char *w)
{
    size_t k = strlen(w);
    if (r->n - r->i < k || memcmp(r->s + r->i, w, k) != 0)
        return false;
    r->i += k;
    return true;
}

/* A member's name and its colon, white space after. */
static bool member_name(rd *r)
{
    if (r->i >= r->n || r->s[r->i] != '"' || !string(r))
        return false;
    ws(r);
    if (r->i >= r->n || r->s[r->i] != ':')
        return false;
    r->i++;
    ws(r);
    return true;
}

size_t vm_json_escape(char *out, const char *s, size_t n)
{
    static const char esc[32] = { ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't' };
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            *o++ = '\\';
            *o++ = (char)ch;
        } else if (ch < 0x20) {
            *o++ = '\\';
            if (esc[ch]) {
                *o++ = esc[ch];
            } else {
                memcpy(o, "u00", 3);
                o[3] = hex[ch >> 4];
                o[4] = hex[ch & 15];
                o += 5;
            }
        } else {
            *o++ = (char)ch;
        }
    }
    return (size_t)(o - out);
}

bool vm_json_valid(const char *s, size_t n, size_t *bad_at)
{
    rd r = { s, n, 0 };
    char stack[MAX_DEPTH];    /* '{' or '[' for each open container */
    size_t depth = 0;
    ws(&r);
    for (;;) {
        /* A value. */
        if (r.i >= n)
            goto bad;
        char c = s[r.i];
        if (c == '{' || c == '[') {
            if (depth == MAX_DEPTH)
                goto bad;
            stack[depth++] = c;
            r.i++;
            ws(&r);
            if (r.i < n && s[r.i] == (c == '{' ? '}' : ']')) {
                r.i++;
                depth--;
            } else {
                if (c == '{' && !member_name(&r))
                    goto bad;
                continue;
            }
        } else if (c == '"') {
            if (!string(&r))
                goto bad;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            if (!number(&r))
                goto bad;
        } else if (!word(&r, "true") && !word(&r, "false") && !word(&r, "null"))
            goto bad;
        /* After a value: a comma and the next member or element, or closing brackets. */
        for (;;) {
            ws(&r);
            if (depth == 0)
                goto end;
            if (r.i >= n)
                goto bad;
            char open = stack[depth - 1];
            if (s[r.i] == (open == '{' ? '}' : ']')) {
                r.i++;
                depth--;
                continue;
            }
            if (s[r.i] != ',')
                goto bad;
            r.i++;
            ws(&r);
            if (open == '{' && !member_name(&r))
                goto bad;
            break;
        }
    }
end:
    if (r.i == n)
        return true;
bad:
    if (bad_at)
        *bad_at = r.i;
    return false;
}
