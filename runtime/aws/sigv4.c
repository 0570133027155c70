/*
 * sigv4.c — AWS Signature Version 4 in the Authorization header (aws.h): the header read, the
 * canonical request rebuilt from the request as it came, the signing key derived from the
 * secret, the signature compared in constant time.  Signing (aws_sig_sign) runs the same code,
 * so what the tests sign is what the daemon checks.  Not here: presigned URLs (the signature in
 * the query), chunked payload signing (STREAMING-*), a Date header in place of X-Amz-Date.
 *
 * The canonical request, one line each, no newline after the last:
 *     POST                         the method
 *     /                            the path as sent, each byte but '/' URI-encoded
 *     Action=A&Version=B           the query's parameters re-encoded, sorted by name, value
 *     content-type:application/x-amz-json-1.1
 *     host:events.example.com      each signed header: lower-case name ':' trimmed value
 *                                  (the empty line: the headers' block ends with '\n')
 *     content-type;host;...        SignedHeaders as sent
 *     e3b0c442...                  the body's SHA-256 in hex
 * It is never held whole: it goes into SHA-256 as it is written (hasher), so a long query or
 * header costs time in proportion to it and no memory.  The string to sign is
 * "AWS4-HMAC-SHA256\n" X-Amz-Date "\n" date/region/service/aws4_request "\n" hex(SHA-256 of
 * the canonical request); the signature is its HMAC-SHA256 under the signing key, in hex.
 */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "aws.h"

#define ALGORITHM "AWS4-HMAC-SHA256"
#define TERMINATOR "aws4_request"

/* Our bounds on SignedHeaders (AWS documents none): clients sign 3 to 10 headers with short
 * names, and each signed header costs a look-up through header(), which may well walk all of
 * the request's headers; so a list of thousands is refused rather than served in n * m. */
#define MAX_SIGNED_HEADERS 64
#define MAX_HEADER_NAME 128

/* How much of an untrusted value a message repeats: printf arguments for "%.*s". */
#define SHOWN(s) (int)((s).n < 64 ? (s).n : 64), (s).p

#define SIGNATURE_MISMATCH                                                                        \
    "The request signature we calculated does not match the signature you provided. Check your "  \
    "AWS Secret Access Key and signing method. Consult the service documentation for details."

/* ---- bytes and spans ------------------------------------------------------------------------ */

typedef struct {
    const char *p;
    size_t n;
} span;

static span span_of(const char *s)
{
    return (span){ s, strlen(s) };
}

static bool span_is(span s, const char *lit)
{
    return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static span trim(span s)
{
    while (s.n && is_blank(s.p[0])) {
        s.p++;
        s.n--;
    }
    while (s.n && is_blank(s.p[s.n - 1]))
        s.n--;
    return s;
}

/* AWS's unreserved set: the bytes URI encoding leaves as they are. */
static bool unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.' || c == '~';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool all_hex(span s)
{
    for (size_t i = 0; i < s.n; i++)
        if (hex_value(s.p[i]) < 0)
            return false;
    return true;
}

static void to_hex(const unsigned char *b, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = 0;
}

/* The number written in n decimal digits at p; -1 if they are not all digits. */
static int decimal(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* Walks a list: each call cuts the next piece off up to sep (not included) or the end, and is
 * false once the list is used up.  "" is one empty piece, "a;" the pieces "a" and "". */
typedef struct {
    span rest;
    bool done;
} cutter;

static bool cut(cutter *c, char sep, span *piece)
{
    if (c->done)
        return false;
    const char *at = memchr(c->rest.p, sep, c->rest.n);
    if (!at) {
        *piece = c->rest;
        c->done = true;
        return true;
    }
    *piece = (span){ c->rest.p, (size_t)(at - c->rest.p) };
    c->rest.n -= piece->n + 1;
    c->rest.p = at + 1;
    return true;
}

/* Whether the ';'-separated list names name (header names: case does not matter). */
static bool list_has(span list, const char *name)
{
    cutter c = { list, false };
    span piece;
    while (cut(&c, ';', &piece))
        if (piece.n == strlen(name) && strncasecmp(piece.p, name, piece.n) == 0)
            return true;
    return false;
}

/* ---- results -------------------------------------------------------------------------------- */

__attribute__((format(printf, 4, 5)))
static bool fail(aws_sig_result *out, unsigned status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->message, sizeof out->message, fmt, ap);
    va_end(ap);
    out->ok = false;
    out->status = status;
    out->code = code;
    return false;
}

/* OpenSSL failed, or memory ran out (the query's index): nothing the client did. */
static bool internal_failure(aws_sig_result *out)
{
    return fail(out, 500, "InternalFailure",
                "The request processing has failed because of an unknown error, exception or "
                "failure.");
}

/* ---- the Authorization header --------------------------------------------------------------- */

/* A credential's scope: ACCESS_KEY/DATE/REGION/SERVICE/aws4_request. */
typedef struct {
    span access_key, date, region, service;
} scope;

typedef struct {
    span credential, signed_headers, signature;   /* as sent; .p NULL when absent */
    scope scope;                                  /* the credential's parts */
} authorization;

/* The parameters an Authorization header must have, in the order AWS names them missing. */
static const struct {
    const char *name;
    size_t at;
} PARAMETERS[] = {
    { "Credential", offsetof(authorization, credential) },
    { "Signature", offsetof(authorization, signature) },
    { "SignedHeaders", offsetof(authorization, signed_headers) },
};
#define NPARAMETERS (sizeof PARAMETERS / sizeof PARAMETERS[0])

static span *parameter(authorization *a, size_t i)
{
    return (span *)((char *)a + PARAMETERS[i].at);
}

/* Finds a's three parameters in "AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
 * Signature=..." (in any order, blanks around ',' and '=' allowed; other parameters ignored).
 * Returns false, with out filled (IncompleteSignature), for another algorithm, a parameter
 * given twice or one missing: the message names each one missing. */
static bool read_parameters(span header, authorization *a, aws_sig_result *out)
{
    size_t an = strlen(ALGORITHM);
    if (header.n < an || memcmp(header.p, ALGORITHM, an) != 0 ||
        (header.n > an && !is_blank(header.p[an]))) {
        span word = header;
        for (word.n = 0; word.n < header.n && !is_blank(header.p[word.n]); word.n++)
            ;
        return fail(out, 400, "IncompleteSignature",
                    "Authorization header requires the '" ALGORITHM "' algorithm, not '%.*s'.",
                    SHOWN(word));
    }
    cutter c = { { header.p + an, header.n - an }, false };
    span piece;
    while (cut(&c, ',', &piece)) {
        const char *eq = memchr(piece.p, '=', piece.n);
        if (!eq)
            continue;
        span name = trim((span){ piece.p, (size_t)(eq - piece.p) });
        span value = trim((span){ eq + 1, piece.n - (size_t)(eq + 1 - piece.p) });
        for (size_t i = 0; i < NPARAMETERS; i++) {
            if (!span_is(name, PARAMETERS[i].name))
                continue;
            if (parameter(a, i)->p)
                return fail(out, 400, "IncompleteSignature",
                            "Authorization header has more than one '%s' parameter.",
                            PARAMETERS[i].name);
            *parameter(a, i) = value;
        }
    }
    char missing[256];
    size_t n = 0;
    for (size_t i = 0; i < NPARAMETERS; i++)
        if (!parameter(a, i)->p && n < sizeof missing)
            n += (size_t)snprintf(missing + n, sizeof missing - n,
                                  "%sAuthorization header requires '%s' parameter.",
                                  n ? " " : "", PARAMETERS[i].name);
    if (n)
        return fail(out, 400, "IncompleteSignature", "%s", missing);
    return true;
}

static bool visible(span s)
{
    for (size_t i = 0; i < s.n; i++)
        if (s.p[i] <= ' ' || s.p[i] > '~')
            return false;
    return true;
}

/* Region and service: what an ARN or a log line can repeat as it is. */
static bool scope_word(span s, size_t cap)
{
    if (s.n == 0 || s.n >= cap)
        return false;
    for (size_t i = 0; i < s.n; i++)
        if (!unreserved((unsigned char)s.p[i]))
            return false;
    return true;
}

/* Checks a scope's parts: an access key of visible characters that aws_sig_result can hold, an
 * 8-digit date, region and service of unreserved characters (ditto).  Fills out if not. */
static bool check_scope(const scope *s, aws_sig_result *out)
{
    if (s->access_key.n == 0 || s->access_key.n >= sizeof out->access_key ||
        !visible(s->access_key))
        return fail(out, 400, "IncompleteSignature",
                    "Credential should name an access key of 1 to %zu visible characters.",
                    sizeof out->access_key - 1);
    if (s->date.n != 8 || decimal(s->date.p, 8) < 0)
        return fail(out, 400, "IncompleteSignature",
                    "Credential should be scoped to a date YYYYMMDD, not '%.*s'.", SHOWN(s->date));
    if (!scope_word(s->region, sizeof out->region))
        return fail(out, 400, "IncompleteSignature",
                    "Credential should be scoped to a valid region, not '%.*s'.",
                    SHOWN(s->region));
    if (!scope_word(s->service, sizeof out->service))
        return fail(out, 400, "IncompleteSignature",
                    "Credential should be scoped to a valid service, not '%.*s'.",
                    SHOWN(s->service));
    return true;
}

/* Cuts the credential ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request into its scope; false,
 * with out filled, unless it is exactly five parts, the last aws4_request, the others sound. */
static bool read_credential(span credential, scope *s, aws_sig_result *out)
{
    span part[6];
    size_t n = 0;
    cutter c = { credential, false };
    while (n < 6 && cut(&c, '/', &part[n]))
        n++;
    if (n != 5 || !span_is(part[4], TERMINATOR))
        return fail(out, 400, "IncompleteSignature",
                    "Credential should be ACCESS_KEY/YYYYMMDD/REGION/SERVICE/" TERMINATOR
                    ", not '%.*s'.", SHOWN(credential));
    *s = (scope){ part[0], part[1], part[2], part[3] };
    return check_scope(s, out);
}

/* Checks SignedHeaders: 1 to MAX_SIGNED_HEADERS names of 1 to MAX_HEADER_NAME visible
 * characters, "host" among them (AWS insists on it; the Host value signed is not compared with
 * any name of the daemon's: docs/aws.md says so).  Fills out (IncompleteSignature) if not. */
static bool check_signed_headers(span list, aws_sig_result *out)
{
    cutter c = { list, false };
    span name;
    size_t n = 0;
    while (cut(&c, ';', &name)) {
        if (++n > MAX_SIGNED_HEADERS)
            return fail(out, 400, "IncompleteSignature",
                        "SignedHeaders may name at most %d headers.", MAX_SIGNED_HEADERS);
        if (name.n == 0 || name.n > MAX_HEADER_NAME || !visible(name) ||
            memchr(name.p, ':', name.n))
            return fail(out, 400, "IncompleteSignature",
                        "SignedHeaders should be header names separated by ';', not '%.*s'.",
                        SHOWN(list));
    }
    if (!list_has(list, "host"))
        return fail(out, 400, "IncompleteSignature",
                    "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.");
    return true;
}

/* What aws_sig_verify keeps of the Authorization header and X-Amz-Date once they are read:
 * copies, because a value from header() may last only until its next call (protocol.c joins
 * every value into one buffer).  Each fits: read_authorization bounded what it accepted. */
typedef struct {
    char access_key[129], date[9], region[64], service[64];
    char signed_headers[MAX_SIGNED_HEADERS * (MAX_HEADER_NAME + 1)];
    char signature[66];               /* (65 kept of a longer one: it still does not match) */
    char amz_date[17];
} kept;

/* Copies s into buf[cap] (as much as fits) and returns the copy. */
static span keep(span s, char *buf, size_t cap)
{
    size_t n = s.n < cap ? s.n : cap - 1;
    memcpy(buf, s.p, n);
    buf[n] = 0;
    return (span){ buf, n };
}

/* Points a at copies in k of all that the rest of the check reads of it. */
static void keep_authorization(authorization *a, kept *k)
{
    a->scope.access_key = keep(a->scope.access_key, k->access_key, sizeof k->access_key);
    a->scope.date = keep(a->scope.date, k->date, sizeof k->date);
    a->scope.region = keep(a->scope.region, k->region, sizeof k->region);
    a->scope.service = keep(a->scope.service, k->service, sizeof k->service);
    a->signed_headers = keep(a->signed_headers, k->signed_headers, sizeof k->signed_headers);
    a->signature = keep(a->signature, k->signature, sizeof k->signature);
    a->credential = (span){ NULL, 0 };            /* (read: not needed again) */
}

/* Reads an Authorization header whole: its parameters, its credential's scope, its
 * SignedHeaders.  False, with out filled (IncompleteSignature), if any is missing or unsound. */
static bool read_authorization(const char *header, authorization *a, aws_sig_result *out)
{
    *a = (authorization){ 0 };
    return read_parameters(trim(span_of(header)), a, out) &&
           read_credential(a->credential, &a->scope, out) &&
           check_signed_headers(a->signed_headers, out);
}

/* ---- dates ---------------------------------------------------------------------------------- */

static int days_in_month(int year, int month)
{
    static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return month == 2 && leap ? 29 : days[month - 1];
}

/* Reads X-Amz-Date's form YYYYMMDDTHHMMSSZ into Unix seconds: false unless it is exactly that
 * and a real time (no 30 February, no second 60). */
static bool read_amz_date(span s, int64_t *t)
{
    if (s.n != 16 || s.p[8] != 'T' || s.p[15] != 'Z')
        return false;
    int y = decimal(s.p, 4), mo = decimal(s.p + 4, 2), d = decimal(s.p + 6, 2);
    int h = decimal(s.p + 9, 2), mi = decimal(s.p + 11, 2), sec = decimal(s.p + 13, 2);
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h < 0 || h > 23 ||
        mi < 0 || mi > 59 || sec < 0 || sec > 59)
        return false;
    struct tm tm = { .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h,
                     .tm_min = mi, .tm_sec = sec };
    *t = (int64_t)timegm(&tm);
    return true;
}

/* t as YYYYMMDDTHHMMSSZ, in buf[17]; "?" for a time that has no such form. */
static void format_amz_date(int64_t t, char buf[17])
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm) || strftime(buf, 17, "%Y%m%dT%H%M%SZ", &tm) == 0)
        strcpy(buf, "?");
}

/* The request's X-Amz-Date, as sent (trimmed) in *date and in Unix seconds in *t.  False, with
 * out filled (IncompleteSignature), when it is missing or not YYYYMMDDTHHMMSSZ. */
static bool read_request_date(const aws_sig_request *r, span *date, int64_t *t,
                              aws_sig_result *out)
{
    const char *v = r->header(r->arg, "x-amz-date");
    if (!v)
        return fail(out, 400, "IncompleteSignature",
                    "Authorization header requires existence of a 'X-Amz-Date' header.");
    *date = trim(span_of(v));
    if (!read_amz_date(*date, t))
        return fail(out, 400, "IncompleteSignature",
                    "X-Amz-Date should be YYYYMMDD'T'HHMMSS'Z' (ISO 8601 basic, UTC), not '%.*s'.",
                    SHOWN(*date));
    return true;
}

/* Whether the request's time t is within AWS_SIG_SKEW_SECONDS of now; if not, out says which
 * way, in AWS's words. */
static bool check_skew(span date, int64_t t, int64_t now, aws_sig_result *out)
{
    if (t >= now - AWS_SIG_SKEW_SECONDS && t <= now + AWS_SIG_SKEW_SECONDS)
        return true;
    bool past = t < now;
    char edge[17], at[17];
    format_amz_date(past ? now - AWS_SIG_SKEW_SECONDS : now + AWS_SIG_SKEW_SECONDS, edge);
    format_amz_date(now, at);
    return fail(out, 400, "RequestExpired", "Signature %s: %.*s is %s than %s (%s %c %d min.)",
                past ? "expired" : "not yet current", SHOWN(date),
                past ? "now earlier" : "still later", edge, at, past ? '-' : '+',
                AWS_SIG_SKEW_SECONDS / 60);
}

/* ---- SHA-256 as the canonical request is written -------------------------------------------- */

typedef struct {
    EVP_MD_CTX *md;
    bool bad;                         /* an OpenSSL call failed */
    size_t n;
    unsigned char buf[512];           /* (one EVP call per 512 bytes, not per byte) */
} hasher;

static bool h_init(hasher *h)
{
    h->n = 0;
    h->bad = false;
    h->md = EVP_MD_CTX_new();
    if (h->md && EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) == 1)
        return true;
    EVP_MD_CTX_free(h->md);
    return false;
}

static void h_flush(hasher *h)
{
    if (h->n && !h->bad && EVP_DigestUpdate(h->md, h->buf, h->n) != 1)
        h->bad = true;
    h->n = 0;
}

static void h_byte(hasher *h, char c)
{
    if (h->n == sizeof h->buf)
        h_flush(h);
    h->buf[h->n++] = (unsigned char)c;
}

static void h_put(hasher *h, const void *p, size_t n)
{
    if (n > sizeof h->buf - h->n) {
        h_flush(h);
        if (n >= sizeof h->buf) {
            if (!h->bad && EVP_DigestUpdate(h->md, p, n) != 1)
                h->bad = true;
            return;
        }
    }
    memcpy(h->buf + h->n, p, n);
    h->n += n;
}

/* The digest of all that was written, in out[32]; frees h and wipes its buffer (it may have
 * held a secret: signing_key).  False if any OpenSSL call failed. */
static bool h_final(hasher *h, unsigned char out[32])
{
    h_flush(h);
    unsigned int n = 0;
    bool ok = !h->bad && EVP_DigestFinal_ex(h->md, out, &n) == 1 && n == 32;
    EVP_MD_CTX_free(h->md);
    OPENSSL_cleanse(h->buf, sizeof h->buf);
    return ok;
}

/* Writes b URI-encoded: unreserved bytes as they are, any other as %XY (upper-case hex). */
static void h_encoded_byte(hasher *h, unsigned char b)
{
    static const char digits[] = "0123456789ABCDEF";
    if (unreserved(b)) {
        h_byte(h, (char)b);
        return;
    }
    h_byte(h, '%');
    h_byte(h, digits[b >> 4]);
    h_byte(h, digits[b & 15]);
}

/* ---- the canonical request ------------------------------------------------------------------ */

/* Writes the canonical URI: the path as sent with each byte but '/' URI-encoded, so an escape
 * the client sent ("%20") is encoded once more ("%2520"): AWS encodes the path twice for every
 * service but S3, and clients send it encoded once.  "/" for an empty path.  Dot segments are
 * not resolved: a client that sent "/a/../b" and signed "/b" (botocore would) is refused. */
static void h_uri(hasher *h, const char *path)
{
    if (!*path) {
        h_byte(h, '/');
        return;
    }
    for (const char *p = path; *p; p++)
        if (*p == '/')
            h_byte(h, '/');
        else
            h_encoded_byte(h, (unsigned char)*p);
}

typedef struct {
    span name, value;
} param;

/* The next byte a query component stands for, from *i on (advancing it); -1 at its end.
 * "%XY" stands for the byte XY, anything else for itself ('+' too: AWS clients send a space as
 * %20), a '%' without two hex digits after it included. */
static int next_decoded(span s, size_t *i)
{
    if (*i >= s.n)
        return -1;
    if (s.p[*i] == '%' && s.n - *i >= 3 && hex_value(s.p[*i + 1]) >= 0 &&
        hex_value(s.p[*i + 2]) >= 0) {
        int b = hex_value(s.p[*i + 1]) << 4 | hex_value(s.p[*i + 2]);
        *i += 3;
        return b;
    }
    return (unsigned char)s.p[(*i)++];
}

static void h_component(hasher *h, span s)
{
    size_t i = 0;
    for (int b; (b = next_decoded(s, &i)) >= 0;)
        h_encoded_byte(h, (unsigned char)b);
}

/* Where byte b's encoding sorts: encoded, b is itself when unreserved and "%XY" when not, and
 * every "%XY" sorts before every unreserved byte ('%' is below them all) and among the others
 * as the bytes do (upper-case hex digits sort as the numbers).  So comparing the decoded bytes
 * in this order compares the encodings, which need not be made. */
static int encoded_rank(int b)
{
    return unreserved((unsigned char)b) ? 256 + b : b;
}

static int compare_components(span a, span b)
{
    size_t i = 0, j = 0;
    for (;;) {
        int x = next_decoded(a, &i), y = next_decoded(b, &j);
        if (x < 0 || y < 0)
            return (x >= 0) - (y >= 0);          /* a prefix first */
        if (x != y)
            return encoded_rank(x) - encoded_rank(y);
    }
}

static int compare_params(const void *x, const void *y)
{
    const param *a = x, *b = y;
    int c = compare_components(a->name, b->name);
    return c ? c : compare_components(a->value, b->value);
}

/* How many pieces of query between '&'s are not empty. */
static size_t count_params(span q)
{
    size_t n = 0;
    cutter c = { q, false };
    span piece;
    while (cut(&c, '&', &piece))
        n += piece.n > 0;
    return n;
}

/* Writes the canonical query string: query's parameters (split on '&'; "name=value", a name
 * alone has the value "") each decoded and encoded again the AWS way, so a client's spelling
 * (%7E or ~) does not matter, sorted by encoded name, then value.  Empty pieces ("a&&b") are
 * dropped.  The index to sort is on the heap, 32 bytes a parameter (so at worst 16 bytes for
 * each byte of the query, "a&a&..."; none for no query): false if memory ran out. */
static bool h_query(hasher *h, const char *query)
{
    span q = span_of(query);
    size_t n = count_params(q);
    if (n == 0)
        return true;
    param *ps = malloc(n * sizeof *ps);
    if (!ps)
        return false;
    cutter c = { q, false };
    span piece;
    for (size_t i = 0; cut(&c, '&', &piece);) {
        if (piece.n == 0)
            continue;
        const char *eq = memchr(piece.p, '=', piece.n);
        size_t nn = eq ? (size_t)(eq - piece.p) : piece.n;
        ps[i++] = (param){ { piece.p, nn }, { piece.p + nn + !!eq, piece.n - nn - !!eq } };
    }
    qsort(ps, n, sizeof *ps, compare_params);
    for (size_t i = 0; i < n; i++) {
        if (i)
            h_byte(h, '&');
        h_component(h, ps[i].name);
        h_byte(h, '=');
        h_component(h, ps[i].value);
    }
    free(ps);
    return true;
}

/* Writes a header's value trimmed, each run of blanks inside it one space. */
static void h_trimmed(hasher *h, const char *v)
{
    bool blank = false, any = false;
    for (; *v; v++) {
        if (is_blank(*v)) {
            blank = any;
            continue;
        }
        if (blank)
            h_byte(h, ' ');
        h_byte(h, *v);
        any = true;
        blank = false;
    }
}

/* Why a canonical request could not be made. */
typedef enum {
    CANON_OK,
    CANON_NO_HEADER,                  /* a signed header is not in the request: what */
    CANON_PAYLOAD_NOT_DIGEST,         /* a signed X-Amz-Content-Sha256 is no SHA-256: what */
    CANON_PAYLOAD_MISMATCH,           /* a signed X-Amz-Content-Sha256 is not the body's */
    CANON_FAILED                      /* OpenSSL failed, or memory ran out */
} canon_status;

/* Writes the canonical headers, one line each: the name in lower case ':' the value trimmed.
 * CANON_NO_HEADER, naming it in *what, for a signed header the request does not have.
 * Assumes list passed check_signed_headers. */
static canon_status h_headers(hasher *h, const aws_sig_request *r, span list, span *what)
{
    cutter c = { list, false };
    span name;
    while (cut(&c, ';', &name)) {
        char z[MAX_HEADER_NAME + 1];
        if (name.n > MAX_HEADER_NAME)
            return CANON_FAILED;
        memcpy(z, name.p, name.n);
        z[name.n] = 0;
        const char *v = r->header(r->arg, z);
        if (!v) {
            *what = name;
            return CANON_NO_HEADER;
        }
        for (size_t i = 0; i < name.n; i++)
            h_byte(h, z[i] >= 'A' && z[i] <= 'Z' ? (char)(z[i] - 'A' + 'a') : z[i]);
        h_byte(h, ':');
        h_trimmed(h, v);
        h_byte(h, '\n');
    }
    return CANON_OK;
}

/* The canonical request's last line into hex[65]: the body's SHA-256 in hex; or, when the
 * client signed an X-Amz-Content-Sha256, its value as sent, which must then be that same
 * digest (its value is all the signature covers of the body).  UNSIGNED-PAYLOAD and
 * STREAMING-* are refused (CANON_PAYLOAD_NOT_DIGEST): they would leave the body unsigned. */
static canon_status payload_hash(const aws_sig_request *r, span signed_headers, char hex[65],
                                 span *what)
{
    unsigned char d[32];
    if (EVP_Digest(r->body_len ? r->body : "", r->body_len, d, NULL, EVP_sha256(), NULL) != 1)
        return CANON_FAILED;
    to_hex(d, sizeof d, hex);
    if (!list_has(signed_headers, "x-amz-content-sha256"))
        return CANON_OK;
    const char *v = r->header(r->arg, "x-amz-content-sha256");
    if (!v) {
        *what = span_of("x-amz-content-sha256");
        return CANON_NO_HEADER;
    }
    span sent = trim(span_of(v));
    if (sent.n != 64 || !all_hex(sent)) {
        *what = sent;
        return CANON_PAYLOAD_NOT_DIGEST;
    }
    if (strncasecmp(sent.p, hex, 64) != 0)
        return CANON_PAYLOAD_MISMATCH;
    memcpy(hex, sent.p, 64);
    return CANON_OK;
}

/* The SHA-256 of r's canonical request for the headers in signed_headers (which passed
 * check_signed_headers), in hash[32]; on CANON_NO_HEADER and CANON_PAYLOAD_NOT_DIGEST, *what
 * says which header or value. */
static canon_status canonical_request(const aws_sig_request *r, span signed_headers,
                                      unsigned char hash[32], span *what)
{
    char payload[65];
    canon_status st = payload_hash(r, signed_headers, payload, what);
    hasher h;
    if (st != CANON_OK || !h_init(&h))
        return st != CANON_OK ? st : CANON_FAILED;
    h_put(&h, r->method, strlen(r->method));
    h_byte(&h, '\n');
    h_uri(&h, r->path ? r->path : "");
    h_byte(&h, '\n');
    if (!h_query(&h, r->query ? r->query : ""))
        st = CANON_FAILED;
    h_byte(&h, '\n');
    if (st == CANON_OK)
        st = h_headers(&h, r, signed_headers, what);
    h_byte(&h, '\n');
    h_put(&h, signed_headers.p, signed_headers.n);
    h_byte(&h, '\n');
    h_put(&h, payload, 64);
    if (!h_final(&h, hash) && st == CANON_OK)
        st = CANON_FAILED;
    return st;
}

/* ---- keys and signatures -------------------------------------------------------------------- */

static bool hmac(const unsigned char *key, size_t key_n, span msg, unsigned char out[32])
{
    unsigned int n = 0;
    return HMAC(EVP_sha256(), key, (int)key_n, (const unsigned char *)msg.p, msg.n, out, &n) &&
           n == 32;
}

/* The signing key for a scope, in key[32]: HMAC("AWS4" secret, date), then of that with the
 * region, the service, "aws4_request".  HMAC itself replaces a key longer than SHA-256's block
 * (64 bytes) by its SHA-256; doing so here keeps "AWS4" secret in a fixed buffer whatever the
 * secret's length.  Wipes what it held of the secret. */
static bool signing_key(const char *secret, const scope *s, unsigned char key[32])
{
    unsigned char k[64], a[32], b[32];
    size_t sn = strlen(secret), kn = 4 + sn;
    bool ok = true;
    if (kn <= sizeof k) {
        memcpy(k, "AWS4", 4);
        memcpy(k + 4, secret, sn);
    } else {
        hasher h;
        ok = h_init(&h);
        if (ok) {
            h_put(&h, "AWS4", 4);
            h_put(&h, secret, sn);
            ok = h_final(&h, k);
        }
        kn = 32;
    }
    ok = ok && hmac(k, kn, s->date, a) && hmac(a, 32, s->region, b) &&
         hmac(b, 32, s->service, a) && hmac(a, 32, span_of(TERMINATOR), key);
    OPENSSL_cleanse(k, sizeof k);
    OPENSSL_cleanse(a, sizeof a);
    OPENSSL_cleanse(b, sizeof b);
    return ok;
}

/* The signature, in hex[65], of a canonical request's hash made at amz_date (16 characters)
 * within scope s, under secret.  Assumes s passed check_scope (the string to sign fits). */
static bool signature(const char *secret, span amz_date, const scope *s,
                      const unsigned char creq[32], char hex[65])
{
    char creq_hex[65], sts[320];
    to_hex(creq, 32, creq_hex);
    int n = snprintf(sts, sizeof sts, ALGORITHM "\n%.*s\n%.*s/%.*s/%.*s/" TERMINATOR "\n%s",
                     (int)amz_date.n, amz_date.p, (int)s->date.n, s->date.p, (int)s->region.n,
                     s->region.p, (int)s->service.n, s->service.p, creq_hex);
    unsigned char key[32], sig[32];
    bool ok = n > 0 && (size_t)n < sizeof sts && signing_key(secret, s, key) &&
              hmac(key, sizeof key, (span){ sts, (size_t)n }, sig);
    OPENSSL_cleanse(key, sizeof key);
    if (ok)
        to_hex(sig, sizeof sig, hex);
    return ok;
}

/* Makes the signature r should carry and compares it, in constant time, with the one a
 * carries.  A signed header the request lacks is IncompleteSignature (400) naming it, not
 * SignatureDoesNotMatch: the client (or a proxy on the way) dropped it, and saying which is
 * what helps; it tells no more than the client's own SignedHeaders. */
static bool check_signature(const aws_sig_request *r, const authorization *a, const aws_key *key,
                            span amz_date, aws_sig_result *out)
{
    unsigned char creq[32];
    span what = { "", 0 };
    switch (canonical_request(r, a->signed_headers, creq, &what)) {
    case CANON_OK:
        break;
    case CANON_NO_HEADER:
        return fail(out, 400, "IncompleteSignature",
                    "SignedHeaders names '%.*s', a header the request does not have.",
                    SHOWN(what));
    case CANON_PAYLOAD_NOT_DIGEST:
        return fail(out, 400, "IncompleteSignature",
                    "X-Amz-Content-Sha256 should be the body's SHA-256 in hex, not '%.*s' "
                    "(unsigned and streaming payloads are not accepted).", SHOWN(what));
    case CANON_PAYLOAD_MISMATCH:
        return fail(out, 403, "SignatureDoesNotMatch",
                    "The provided 'x-amz-content-sha256' header does not match what was "
                    "computed.");
    case CANON_FAILED:
        return internal_failure(out);
    }
    char want[65];
    if (!signature(key->secret, amz_date, &a->scope, creq, want))
        return internal_failure(out);
    if (a->signature.n != 64 || CRYPTO_memcmp(want, a->signature.p, 64) != 0)
        return fail(out, 403, "SignatureDoesNotMatch", SIGNATURE_MISMATCH);
    return true;
}

static int find_key(const aws_key *keys, size_t nkeys, span access_key)
{
    for (size_t i = 0; i < nkeys; i++)
        if (keys[i].access_key && span_is(access_key, keys[i].access_key))
            return (int)i;
    return -1;
}

static void copy_span(char *dst, size_t cap, span s)
{
    if (s.n >= cap)
        s.n = 0;
    memcpy(dst, s.p, s.n);
    dst[s.n] = 0;
}

/* ---- the door ------------------------------------------------------------------------------- */

/* The checks, each only once those before it passed: the header's form, X-Amz-Date's, the
 * key, the clock, the credential's date against X-Amz-Date, the signature.  So an unknown key
 * learns nothing of the clock, and no HMAC is spent on a request refused for less. */
bool aws_sig_verify(const aws_sig_request *r, const aws_key *keys, size_t nkeys,
                    aws_sig_result *out)
{
    *out = (aws_sig_result){ .key = -1 };
    const char *header = r->header(r->arg, "authorization");
    if (!header || trim(span_of(header)).n == 0)
        return fail(out, 403, "MissingAuthenticationToken", "Missing Authentication Token");
    authorization a;
    kept k;
    if (!read_authorization(header, &a, out))
        return false;
    keep_authorization(&a, &k);
    copy_span(out->access_key, sizeof out->access_key, a.scope.access_key);
    copy_span(out->region, sizeof out->region, a.scope.region);
    copy_span(out->service, sizeof out->service, a.scope.service);
    span date;
    int64_t t;
    if (!read_request_date(r, &date, &t, out))
        return false;
    date = keep(date, k.amz_date, sizeof k.amz_date);
    int i = find_key(keys, nkeys, a.scope.access_key);
    if (i < 0)
        return fail(out, 403, "InvalidClientTokenId",
                    "The security token included in the request is invalid.");
    if (!check_skew(date, t, r->now, out))
        return false;
    if (memcmp(date.p, a.scope.date.p, 8) != 0)
        return fail(out, 403, "SignatureDoesNotMatch",
                    "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
                    "date from HTTP: '%.8s' != '%.8s', from '%.16s'.", a.scope.date.p, date.p,
                    date.p);
    if (!check_signature(r, &a, &keys[i], date, out))
        return false;
    out->ok = true;
    out->key = i;
    out->status = 200;
    out->code = "";
    return true;
}

void aws_sig_scope(const char *authorization_header, char *access_key, size_t akcap,
                   char *region, size_t rcap, char *service, size_t scap)
{
    static const scope none = { { "", 0 }, { "", 0 }, { "", 0 }, { "", 0 } };
    aws_sig_result scratch;           /* (why it cannot be read is not asked) */
    authorization a = { 0 };
    scope s = none;
    /* Only Credential matters: read_parameters finds it whatever else the header lacks. */
    if (authorization_header) {
        read_parameters(trim(span_of(authorization_header)), &a, &scratch);
        if (!a.credential.p || !read_credential(a.credential, &s, &scratch))
            s = none;
    }
    copy_span(access_key, akcap, s.access_key);
    copy_span(region, rcap, s.region);
    copy_span(service, scap, s.service);
}

bool aws_sig_sign(const aws_sig_request *r, const char *signed_headers, const char *amz_date,
                  const char *region, const char *service, const aws_key *key, char *out,
                  size_t cap)
{
    aws_sig_result scratch;           /* signing says only yes or no */
    span date = span_of(amz_date), list = span_of(signed_headers), what;
    int64_t t;
    if (!read_amz_date(date, &t))
        return false;
    scope s = { span_of(key->access_key), { amz_date, 8 }, span_of(region), span_of(service) };
    unsigned char creq[32];
    char sig[65];
    if (!check_scope(&s, &scratch) || !check_signed_headers(list, &scratch) ||
        canonical_request(r, list, creq, &what) != CANON_OK ||
        !signature(key->secret, date, &s, creq, sig))
        return false;
    int n = snprintf(out, cap,
                     ALGORITHM " Credential=%s/%.8s/%s/%s/" TERMINATOR
                     ", SignedHeaders=%s, Signature=%s",
                     key->access_key, amz_date, region, service, signed_headers, sig);
    return n > 0 && (size_t)n < cap;
}
