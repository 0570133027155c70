/*
 * verify.c — webhook signatures (GitHub, Stripe, a plain HMAC in a header) and the attributes a
 * provider gives a delivery (verify.h).
 *
 * GitHub's check is the plain HMAC one with its header, prefix and encoding fixed, so the two
 * share every line.  A signature is decoded to bytes and compared with the HMAC in constant time
 * (CRYPTO_memcmp): what a sender sent is not secret, what it is compared with is.  No message
 * repeats the expected signature, nor the one received.
 *
 * GitHub's attributes follow the CloudEvents GitHub adapter (cloudevents/spec,
 * cloudevents/adapters/github.md) for type and subject, one row per event in GITHUB_EVENTS.
 * Its source differs: the adapter says "repository.url", which is the repository's page in a
 * push's body but its API address in every other event's; the html_url is the page in all of
 * them, so one repository's events share one source (and a push's is the adapter's).
 */
#include <cjson/cJSON.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "verify.h"

#define DEFAULT_TOLERANCE_S 300
#define GITHUB_HEADER "X-Hub-Signature-256"
#define GITHUB_LEGACY_HEADER "X-Hub-Signature"
#define STRIPE_HEADER "Stripe-Signature"
#define MAX_MAC 64                /* SHA-512's output, the longest of ALGORITHMS */

/* ---- spans and messages --------------------------------------------------------------------- */

typedef struct {
    const char *p;
    size_t n;
} span;

static span trim(const char *s, size_t n)
{
    while (n && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    return (span){ s, n };
}

/* Writes the reason into why[0..cap) and returns status. */
__attribute__((format(printf, 4, 5)))
static int fail(int status, char *why, size_t cap, const char *fmt, ...)
{
    if (cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, cap, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* ---- HMAC ------------------------------------------------------------------------------------ */

typedef struct {
    const char *name;             /* as configured */
    const char *digest;           /* as libcrypto names it */
    const char *shown;            /* in messages */
    size_t size;
} algorithm;

static const algorithm ALGORITHMS[] = {
    { "sha256", "SHA256", "SHA-256", 32 },
    { "sha1", "SHA1", "SHA-1", 20 },
    { "sha512", "SHA512", "SHA-512", 64 },
};

static const algorithm *find_algorithm(const char *name)
{
    if (!name)
        return &ALGORITHMS[0];
    for (size_t i = 0; i < sizeof ALGORITHMS / sizeof ALGORITHMS[0]; i++)
        if (strcasecmp(name, ALGORITHMS[i].name) == 0)
            return &ALGORITHMS[i];
    return NULL;
}

/* HMAC-a(secret, parts[0] || parts[1] || ...) into out[a->size]; false if libcrypto failed. */
static bool hmac(const algorithm *a, const char *secret, const span *parts, size_t nparts,
                 unsigned char *out)
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)a->digest, 0),
        OSSL_PARAM_construct_end(),
    };
    size_t got = 0;
    bool ok = ctx && EVP_MAC_init(ctx, (const unsigned char *)secret, strlen(secret), params);
    for (size_t i = 0; ok && i < nparts; i++)
        ok = EVP_MAC_update(ctx, (const unsigned char *)parts[i].p, parts[i].n);
    ok = ok && EVP_MAC_final(ctx, out, &got, a->size) && got == a->size;
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return ok;
}

/* ---- decoding a signature ------------------------------------------------------------------- */

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* s as exactly size bytes in hex (either case) into out; false if it is not that. */
static bool from_hex(span s, unsigned char *out, size_t size)
{
    if (s.n != 2 * size)
        return false;
    for (size_t i = 0; i < size; i++) {
        int hi = hex_digit(s.p[2 * i]), lo = hex_digit(s.p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}

static int b64_digit(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    return c == '/' || c == '_' ? 63 : -1;
}

/* s as exactly size bytes in base64 (standard or URL alphabet, padding optional) into out. */
static bool from_base64(span s, unsigned char *out, size_t size)
{
    for (int pad = 0; pad < 2 && s.n && s.p[s.n - 1] == '='; pad++)
        s.n--;
    if (s.n % 4 == 1 || s.n * 3 / 4 != size)
        return false;
    unsigned bits = 0, have = 0;
    size_t k = 0;
    for (size_t i = 0; i < s.n; i++) {
        int d = b64_digit(s.p[i]);
        if (d < 0)
            return false;
        bits = (bits << 6 | (unsigned)d) & 0xffffff;
        have += 6;
        if (have >= 8) {
            have -= 8;
            out[k++] = (unsigned char)(bits >> have);
        }
    }
    return k == size;
}

/* ---- a MAC of the body in one header (hmac, github) ------------------------------------------- */

typedef struct {
    const char *header, *prefix;
    bool base64;
    const algorithm *alg;
} header_mac;

static int missing_header(const wh_verify *v, wh_header_fn h, void *arg, const char *header,
                          char *why, size_t cap)
{
    if (v->scheme == WH_GITHUB && h(arg, GITHUB_LEGACY_HEADER))
        return fail(401, why, cap,
                    "no " GITHUB_HEADER " header (only " GITHUB_LEGACY_HEADER
                    ", the SHA-1 signature, which is not accepted)");
    return fail(401, why, cap, "no %s header", header);
}

static int check_header_mac(const wh_verify *v, const header_mac *m, wh_header_fn h, void *arg,
                            const char *body, size_t n, char *why, size_t cap)
{
    const char *raw = h(arg, m->header);
    if (!raw)
        return missing_header(v, h, arg, m->header, why, cap);
    span s = trim(raw, strlen(raw));
    if (s.n == 0)
        return fail(401, why, cap, "the %s header is empty", m->header);
    size_t plen = m->prefix ? strlen(m->prefix) : 0;
    if (plen && (s.n < plen || strncasecmp(s.p, m->prefix, plen) != 0))
        return fail(401, why, cap, "the %s header does not start with \"%s\"", m->header,
                    m->prefix);
    s = trim(s.p + plen, s.n - plen);
    unsigned char sent[MAX_MAC], want[MAX_MAC];
    if (!(m->base64 ? from_base64(s, sent, m->alg->size) : from_hex(s, sent, m->alg->size)))
        return fail(401, why, cap, "the signature in %s is not the %zu bytes of an HMAC-%s in %s",
                    m->header, m->alg->size, m->alg->shown, m->base64 ? "base64" : "hex");
    span whole = { body, n };
    if (!hmac(m->alg, v->secret, &whole, 1, want))
        return fail(500, why, cap, "the HMAC could not be computed (libcrypto failed)");
    if (CRYPTO_memcmp(sent, want, m->alg->size) != 0)
        return fail(401, why, cap, "the signature does not match the body (signed with "
                    "another secret, or the body changed on the way)");
    return 0;
}

/* ---- Stripe ---------------------------------------------------------------------------------- */

/* Walks "k=v,k=v": each call gives the next non-empty piece's key and value, trimmed.  false at
 * the end, or (with *bad) on a piece with no '='. */
typedef struct {
    span rest;
    bool bad;
} pairs;

static bool next_pair(pairs *w, span *key, span *value)
{
    while (w->rest.n) {
        const char *comma = memchr(w->rest.p, ',', w->rest.n);
        size_t len = comma ? (size_t)(comma - w->rest.p) : w->rest.n;
        span piece = trim(w->rest.p, len);
        w->rest.p += comma ? len + 1 : len;
        w->rest.n -= comma ? len + 1 : len;
        if (piece.n == 0)
            continue;
        const char *eq = memchr(piece.p, '=', piece.n);
        if (!eq) {
            w->bad = true;
            return false;
        }
        *key = trim(piece.p, (size_t)(eq - piece.p));
        *value = trim(eq + 1, piece.n - (size_t)(eq - piece.p) - 1);
        return true;
    }
    return false;
}

static bool span_is(span s, const char *lit)
{
    return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

typedef struct {
    span t;                       /* the timestamp's text, as signed */
    int64_t when;
    int v1, v0;
} stripe_header;

/* Reads the header's form: one t of 1 to 12 digits, the v1s each 64 hex digits. */
static int read_stripe(const char *raw, stripe_header *sh, char *why, size_t cap)
{
    pairs w = { trim(raw, strlen(raw)), false };
    span k, val;
    unsigned char scratch[32];
    *sh = (stripe_header){ 0 };
    while (next_pair(&w, &k, &val)) {
        if (span_is(k, "t")) {
            if (sh->t.p)
                return fail(401, why, cap, STRIPE_HEADER " has two t= timestamps");
            if (val.n == 0 || val.n > 12 || strspn(val.p, "0123456789") < val.n)
                return fail(401, why, cap, "the t= timestamp in " STRIPE_HEADER
                            " is not a number of seconds");
            sh->t = val;
            for (size_t i = 0; i < val.n; i++)
                sh->when = sh->when * 10 + (val.p[i] - '0');
        } else if (span_is(k, "v1")) {
            if (!from_hex(val, scratch, sizeof scratch))
                return fail(401, why, cap, "a v1 signature in " STRIPE_HEADER
                            " is not 64 hexadecimal digits");
            sh->v1++;
        } else if (span_is(k, "v0")) {
            sh->v0++;
        }
    }
    if (w.bad)
        return fail(401, why, cap, STRIPE_HEADER " is not a list of key=value pairs "
                    "(t=TIMESTAMP,v1=SIGNATURE)");
    if (!sh->t.p)
        return fail(401, why, cap, STRIPE_HEADER " has no t= timestamp");
    if (!sh->v1)
        return fail(401, why, cap, STRIPE_HEADER " has no v1 signature%s",
                    sh->v0 ? " (only v0, which is not accepted)" : "");
    return 0;
}

/* Whether one of raw's v1 signatures (read_stripe has checked their form) is want. */
static bool stripe_match(const char *raw, const unsigned char want[32])
{
    pairs w = { trim(raw, strlen(raw)), false };
    span k, val;
    unsigned char sent[32];
    while (next_pair(&w, &k, &val))
        if (span_is(k, "v1") && from_hex(val, sent, sizeof sent) &&
            CRYPTO_memcmp(sent, want, sizeof sent) == 0)
            return true;
    return false;
}

static int check_stripe(const wh_verify *v, wh_header_fn h, void *arg, const char *body,
                        size_t n, int64_t now, char *why, size_t cap)
{
    const char *raw = h(arg, STRIPE_HEADER);
    if (!raw)
        return fail(401, why, cap, "no " STRIPE_HEADER " header");
    stripe_header sh;
    int st = read_stripe(raw, &sh, why, cap);
    if (st)
        return st;
    span parts[] = { sh.t, { ".", 1 }, { body, n } };
    unsigned char want[32];
    if (!hmac(&ALGORITHMS[0], v->secret, parts, 3, want))
        return fail(500, why, cap, "the HMAC could not be computed (libcrypto failed)");
    if (!stripe_match(raw, want))
        return fail(401, why, cap, "no v1 signature in " STRIPE_HEADER " matches the body "
                    "(signed with another endpoint's secret, or the body changed on the way)");
    int64_t tol = v->tolerance_s ? v->tolerance_s : DEFAULT_TOLERANCE_S, age = now - sh.when;
    if (age > tol)
        return fail(401, why, cap, "the timestamp is %lld s old, over the tolerance of %lld s",
                    (long long)age, (long long)tol);
    if (-age > tol)
        return fail(401, why, cap, "the timestamp is %lld s in the future, over the tolerance "
                    "of %lld s (is a clock wrong?)", (long long)-age, (long long)tol);
    return 0;
}

/* ---- the checks ------------------------------------------------------------------------------ */

bool wh_valid(const wh_verify *v, char *why, size_t cap)
{
    const char *bad = NULL;
    if (!v->secret || !v->secret[0])
        bad = "the secret is empty";
    else if (v->scheme == WH_STRIPE && v->tolerance_s < 0)
        bad = "the tolerance is negative";
    else if (v->scheme == WH_HMAC && (!v->header || !v->header[0]))
        bad = "hmac needs the header that carries the signature";
    else if (v->scheme == WH_HMAC && !find_algorithm(v->algorithm))
        bad = "unknown algorithm (sha256, sha1 or sha512)";
    if (bad)
        fail(0, why, cap, "%s", bad);
    return !bad;
}

int wh_check(const wh_verify *v, wh_header_fn h, void *arg, const char *body, size_t n,
             int64_t now, char *why, size_t cap)
{
    if (cap)
        why[0] = 0;
    if (!wh_valid(v, why, cap))
        return 500;
    if (v->scheme == WH_STRIPE)
        return check_stripe(v, h, arg, body, n, now, why, cap);
    header_mac m = { GITHUB_HEADER, "sha256=", false, &ALGORITHMS[0] };
    if (v->scheme == WH_HMAC)
        m = (header_mac){ v->header, v->prefix, v->base64, find_algorithm(v->algorithm) };
    return check_header_mac(v, &m, h, arg, body, n, why, cap);
}

/* ---- attributes ------------------------------------------------------------------------------ */

/* Copies s[0..n) to dst[cap], cut (at a UTF-8 character's start) to fit. */
static void put(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap) {
        n = cap - 1;
        while (n && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(dst, s, n);
    dst[n] = 0;
}

/* Appends s to the text in dst[cap], cut to fit. */
static void append(char *dst, size_t cap, const char *s)
{
    size_t at = strlen(dst);
    put(dst + at, cap - at, s, strlen(s));
}

/* The member at a dotted path ("pull_request.head.ref") under root, or NULL. */
static const cJSON *at(const cJSON *root, const char *path)
{
    char name[64];
    while (root && *path) {
        size_t len = strcspn(path, ".");
        if (len >= sizeof name)
            return NULL;
        memcpy(name, path, len);
        name[len] = 0;
        root = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, name) : NULL;
        path += len + (path[len] == '.');
    }
    return root;
}

/* A string's text or a number's (whole numbers without a fraction) into out[cap]; false (out
 * untouched) for anything else, or an empty string. */
static bool text_at(const cJSON *root, const char *path, char *out, size_t cap)
{
    const cJSON *j = path ? at(root, path) : NULL;
    if (cJSON_IsString(j) && j->valuestring[0]) {
        put(out, cap, j->valuestring, strlen(j->valuestring));
        return true;
    }
    if (!cJSON_IsNumber(j))
        return false;
    double d = j->valuedouble;
    if (d == (double)(int64_t)d && d > -9e15 && d < 9e15)
        snprintf(out, cap, "%lld", (long long)d);
    else
        snprintf(out, cap, "%.17g", d);
    return true;
}

/* A header's value, trimmed, into out[cap] (empty when absent). */
static void header_text(wh_header_fn h, void *arg, const char *name, char *out, size_t cap)
{
    const char *raw = h(arg, name);
    span s = raw ? trim(raw, strlen(raw)) : (span){ "", 0 };
    put(out, cap, s.p, s.n);
}

/* One event of the CloudEvents GitHub adapter: X-GitHub-Event's value, the name the type uses,
 * what follows it (one or two members' values, each after a '.'; the member "action" for most
 * events, appended only when the body has it), and the member that is the subject. */
typedef struct {
    const char *event, *type;
    const char *suffix[2];
    const char *subject;
} github_event;

static const github_event GITHUB_EVENTS[] = {
    { "check_run", 0, { "action" }, "check_run.id" },
    { "check_suite", 0, { "action" }, "check_suite.id" },
    { "commit_comment", 0, { "action" }, "comment.id" },
    { "content_reference", 0, { "action" }, "content_reference.id" },
    { "create", 0, { "ref_type" }, "ref" },
    { "delete", 0, { "ref_type" }, "ref" },
    { "deploy_key", 0, { "action" }, "key.id" },
    { "deployment", 0, { 0 }, "deployment.id" },
    { "deployment_status", 0, { "deployment_status.state" }, "deployment_status.url" },
    { "fork", 0, { 0 }, "forkee.url" },
    { "github_app_authorization", 0, { 0 }, 0 },
    { "gollum", 0, { 0 }, 0 },
    { "installation", 0, { "action" }, "installation.id" },
    { "installation_repositories", 0, { "action" }, "installation.id" },
    { "issue_comment", 0, { "action" }, "comment.id" },
    { "issues", "issue", { "action" }, "issue.number" },
    { "label", 0, { "action" }, "label.name" },
    { "marketplace_purchase", 0, { "action" }, "marketplace_purchase.account.login" },
    { "member", 0, { "action" }, "member.login" },
    { "membership", 0, { "scope", "action" }, "member.login" },
    { "meta", 0, { "action" }, "hook_id" },
    { "milestone", 0, { "action" }, "milestone.number" },
    { "organization", 0, { "action" }, "membership.user.login" },
    { "org_block", 0, { "action" }, "blocked_user.login" },
    { "page_build", 0, { 0 }, "build.url" },
    { "project", 0, { "action" }, "project.id" },
    { "project_card", 0, { "action" }, "project_card.id" },
    { "project_column", 0, { "action" }, "project_column.id" },
    { "public", 0, { 0 }, "repository.name" },
    { "pull_request", 0, { "action" }, "number" },
    { "pull_request_review", 0, { "action" }, "review.id" },
    { "pull_request_review_comment", 0, { "action" }, "comment.id" },
    { "push", 0, { 0 }, "ref" },
    { "registry_package", 0, { "action" }, "registry_package.html_url" },
    { "release", 0, { "action" }, "release.id" },
    { "repository", 0, { "action" }, "repository.name" },
    { "repository_import", 0, { 0 }, "repository.name" },
    { "repository_vulnerability_alert", 0, { "action" }, "alert.id" },
    { "security_advisory", 0, { "action" }, "security_advisory.ghsa_id" },
    { "star", 0, { "action" }, 0 },
    { "status", 0, { 0 }, "sha" },
    { "team", 0, { "action" }, "team.id" },
    { "team_add", 0, { "action" }, "team.id" },
    { "watch", 0, { "action" }, 0 },
};

/* The row for an event; events the adapter does not name get the usual "action" and no
 * subject. */
static github_event github_row(const char *event)
{
    for (size_t i = 0; i < sizeof GITHUB_EVENTS / sizeof GITHUB_EVENTS[0]; i++)
        if (strcmp(event, GITHUB_EVENTS[i].event) == 0)
            return GITHUB_EVENTS[i];
    return (github_event){ event, 0, { "action" }, 0 };
}

/* X-GitHub-Event is outside the signature: only a plain event name ([a-z0-9_]) makes a type. */
static bool plain_event(const char *s)
{
    return s[0] && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_") == strlen(s);
}

static void github_source(const cJSON *doc, char *out, size_t cap)
{
    char login[128];
    if (text_at(doc, "repository.html_url", out, cap) ||
        text_at(doc, "organization.html_url", out, cap))
        return;
    put(out, cap, "https://github.com", 18);
    if (text_at(doc, "organization.login", login, sizeof login)) {
        append(out, cap, "/");
        append(out, cap, login);
    }
}

static void describe_github(wh_header_fn h, void *arg, const cJSON *doc, wh_attrs *out)
{
    char event[64], part[128];
    header_text(h, arg, "X-GitHub-Event", event, sizeof event);
    header_text(h, arg, "X-GitHub-Delivery", out->id, sizeof out->id);
    github_source(doc, out->source, sizeof out->source);
    if (!plain_event(event))
        return;
    github_event row = github_row(event);
    append(out->type, sizeof out->type, "com.github.");
    append(out->type, sizeof out->type, row.type ? row.type : row.event);
    for (int i = 0; i < 2 && row.suffix[i]; i++)
        if (text_at(doc, row.suffix[i], part, sizeof part)) {
            append(out->type, sizeof out->type, ".");
            append(out->type, sizeof out->type, part);
        }
    text_at(doc, row.subject, out->subject, sizeof out->subject);
}

/* Stripe's source: its dashboard, as the dashboard's own addresses place an event: the
 * connected account's part (Connect) and "test" for test mode.  So a rule can tell a test
 * event from a live one by its source. */
static void describe_stripe(const cJSON *doc, wh_attrs *out)
{
    char part[128];
    if (text_at(doc, "type", part, sizeof part)) {
        append(out->type, sizeof out->type, "com.stripe.");
        append(out->type, sizeof out->type, part);
    }
    text_at(doc, "id", out->id, sizeof out->id);
    text_at(doc, "data.object.id", out->subject, sizeof out->subject);
    append(out->source, sizeof out->source, "https://dashboard.stripe.com");
    if (text_at(doc, "account", part, sizeof part)) {
        append(out->source, sizeof out->source, "/");
        append(out->source, sizeof out->source, part);
    }
    if (cJSON_IsFalse(at(doc, "livemode")))
        append(out->source, sizeof out->source, "/test");
    const cJSON *created = at(doc, "created");
    if (cJSON_IsNumber(created) && created->valuedouble > 0 && created->valuedouble < 1e13)
        out->time_ms = (int64_t)created->valuedouble * 1000;
}

void wh_describe(const wh_verify *v, wh_header_fn h, void *arg, const char *body, size_t n,
                 const char *id_header, wh_attrs *out)
{
    *out = (wh_attrs){ 0 };
    cJSON *doc = body && n ? cJSON_ParseWithLength(body, n) : NULL;
    if (v->scheme == WH_GITHUB)
        describe_github(h, arg, doc, out);
    else if (v->scheme == WH_STRIPE)
        describe_stripe(doc, out);
    if (!out->id[0] && id_header && id_header[0])
        header_text(h, arg, id_header, out->id, sizeof out->id);
    cJSON_Delete(doc);
}
