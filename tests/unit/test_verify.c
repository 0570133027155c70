/*
 * test_verify.c — webhook signatures and attributes (runtime/sources/verify.c).  The signatures
 * a test sends are made by the openssl command (or are published known answers), never by the
 * code under test; each refusal starts from a request shown to pass, so the refusal is the
 * change's doing.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../../runtime/sources/verify.h"

/* ---- requests ------------------------------------------------------------------------------- */

#define MAX_HEADERS 8

typedef struct {
    const char *name[MAX_HEADERS], *value[MAX_HEADERS];
    size_t n;
} headers;

/* Each value is handed out in one buffer that the next look-up overwrites: verify.c must keep
 * no value across calls. */
static char handed[4096];

static const char *find_header(void *arg, const char *name)
{
    const headers *h = arg;
    for (size_t i = 0; i < h->n; i++)
        if (strcasecmp(h->name[i], name) == 0) {
            snprintf(handed, sizeof handed, "%s", h->value[i]);
            return handed;
        }
    memset(handed, 'x', sizeof handed - 1);
    return NULL;
}

static void set(headers *h, const char *name, const char *value)
{
    for (size_t i = 0; i < h->n; i++)
        if (strcasecmp(h->name[i], name) == 0) {
            h->value[i] = value;
            return;
        }
    cr_assert(h->n < MAX_HEADERS);
    h->name[h->n] = name;
    h->value[h->n++] = value;
}

static char why[256];

static int check(const wh_verify *v, headers *h, const char *body, int64_t now)
{
    return wh_check(v, find_header, h, body, strlen(body), now, why, sizeof why);
}

#define PASSES(v, h, body, now) cr_assert_eq(check(v, h, body, now), 0, "refused: %s", why)
#define REFUSED(v, h, body, now, words)                                                         \
    do {                                                                                        \
        cr_assert_eq(check(v, h, body, now), 401);                                              \
        cr_assert(strstr(why, words), "why: \"%s\", expected \"%s\" in it", why, words);        \
    } while (0)

/* ---- signatures by the openssl command -------------------------------------------------------- */

/* HMAC-alg(key, data) by `openssl dgst`, as hex (base64 false) or base64 into out[cap].  key
 * holds no single quote. */
static void openssl_hmac(const char *alg, const char *key, const char *data, bool base64,
                         char *out, size_t cap)
{
    char path[] = "/tmp/test_verify_XXXXXX", cmd[512];
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, data, strlen(data)), (ssize_t)strlen(data));
    close(fd);
    if (base64)
        snprintf(cmd, sizeof cmd, "openssl dgst -%s -hmac '%s' -binary %s | openssl base64 -A",
                 alg, key, path);
    else
        snprintf(cmd, sizeof cmd, "openssl dgst -%s -hmac '%s' -r %s", alg, key, path);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    char line[512] = "";
    cr_assert(fgets(line, sizeof line, p));
    pclose(p);
    unlink(path);
    line[strcspn(line, base64 ? "\n" : " ")] = 0;     /* -r: "HEX *FILE" */
    cr_assert(strlen(line) >= 27, "openssl said \"%s\"", line);
    snprintf(out, cap, "%s", line);
}

static void upper(char *s)
{
    for (; *s; s++)
        if (*s >= 'a' && *s <= 'z')
            *s = (char)(*s - 32);
}

TestSuite(verify);

/* ---- GitHub --------------------------------------------------------------------------------- */

#define GH_SECRET "gh-secret-1"
#define GH_BODY "{\"ref\":\"refs/heads/main\",\"repository\":{\"html_url\":\"https://github.com/o/r\"}}"

static const wh_verify GITHUB = { .scheme = WH_GITHUB, .secret = GH_SECRET };

/* A request GitHub would send with body GH_BODY; sig receives "sha256=" HEX. */
static headers github_request(char *sig, size_t cap)
{
    char hex[160];
    openssl_hmac("sha256", GH_SECRET, GH_BODY, false, hex, sizeof hex);
    snprintf(sig, cap, "sha256=%s", hex);
    headers h = { 0 };
    set(&h, "Content-Type", "application/json");
    set(&h, "X-GitHub-Event", "push");
    set(&h, "X-Hub-Signature-256", sig);
    return h;
}

/* GitHub's own example in "Validating webhook deliveries". */
Test(verify, github_documented_example)
{
    wh_verify v = { .scheme = WH_GITHUB, .secret = "It's a Secret to Everybody" };
    headers h = { 0 };
    set(&h, "x-hub-signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
    PASSES(&v, &h, "Hello, World!", 0);
    REFUSED(&v, &h, "Hello, World?", 0, "does not match the body");
}

Test(verify, github_good_and_upper_case)
{
    char sig[200];
    headers h = github_request(sig, sizeof sig);
    PASSES(&GITHUB, &h, GH_BODY, 0);
    upper(sig + 7);
    PASSES(&GITHUB, &h, GH_BODY, 0);
}

Test(verify, github_wrong_secret_says_nothing_of_the_signature)
{
    char sig[200], right[160];
    headers h = github_request(sig, sizeof sig);
    wh_verify other = GITHUB;
    other.secret = "gh-secret-2";
    openssl_hmac("sha256", "gh-secret-2", GH_BODY, false, right, sizeof right);
    REFUSED(&other, &h, GH_BODY, 0, "does not match the body");
    cr_assert_null(strstr(why, right));
    cr_assert_null(strstr(why, sig + 7));
}

Test(verify, github_body_changed_by_one_byte)
{
    char sig[200], body[] = GH_BODY;
    headers h = github_request(sig, sizeof sig);
    PASSES(&GITHUB, &h, body, 0);
    body[10] ^= 1;
    REFUSED(&GITHUB, &h, body, 0, "does not match the body");
}

Test(verify, github_missing_header)
{
    char sig[200];
    headers h = github_request(sig, sizeof sig);
    PASSES(&GITHUB, &h, GH_BODY, 0);
    h.n--;                                     /* X-Hub-Signature-256, set last */
    REFUSED(&GITHUB, &h, GH_BODY, 0, "no X-Hub-Signature-256 header");
    cr_assert_null(strstr(why, "SHA-1"));
    set(&h, "X-Hub-Signature", "sha1=0123456789abcdef0123456789abcdef01234567");
    REFUSED(&GITHUB, &h, GH_BODY, 0, "only X-Hub-Signature, the SHA-1 signature");
}

Test(verify, github_malformed_header)
{
    char sig[200];
    headers h = github_request(sig, sizeof sig);
    PASSES(&GITHUB, &h, GH_BODY, 0);
    char *hex = sig + 7;
    char bad[256];
    snprintf(bad, sizeof bad, "sha1=%s", hex);
    set(&h, "X-Hub-Signature-256", bad);
    REFUSED(&GITHUB, &h, GH_BODY, 0, "does not start with \"sha256=\"");
    snprintf(bad, sizeof bad, "sha256=%.62s", hex);
    set(&h, "X-Hub-Signature-256", bad);
    REFUSED(&GITHUB, &h, GH_BODY, 0, "not the 32 bytes of an HMAC-SHA-256 in hex");
    snprintf(bad, sizeof bad, "sha256=%.63sg", hex);
    set(&h, "X-Hub-Signature-256", bad);
    REFUSED(&GITHUB, &h, GH_BODY, 0, "not the 32 bytes");
    set(&h, "X-Hub-Signature-256", "  ");
    REFUSED(&GITHUB, &h, GH_BODY, 0, "header is empty");
    snprintf(bad, sizeof bad, " sha256=%s ", hex);
    set(&h, "X-Hub-Signature-256", bad);
    PASSES(&GITHUB, &h, GH_BODY, 0);
}

/* ---- Stripe --------------------------------------------------------------------------------- */

#define ST_SECRET "whsec_test123"
#define ST_BODY "{\"id\":\"evt_1\",\"object\":\"event\",\"type\":\"invoice.paid\"}"
#define T0 1700000000

static const wh_verify STRIPE = { .scheme = WH_STRIPE, .secret = ST_SECRET };

/* The v1 signature of body at time t under secret, in hex. */
static void stripe_sig(const char *secret, long t, const char *body, char *out, size_t cap)
{
    char signed_payload[1024];
    snprintf(signed_payload, sizeof signed_payload, "%ld.%s", t, body);
    openssl_hmac("sha256", secret, signed_payload, false, out, cap);
}

static char stripe_value[512];

/* A request with Stripe-Signature made of tmpl: {t} becomes T0, {sig} the v1 signature of
 * ST_BODY at T0 under ST_SECRET, {old} the one under another secret. */
static headers stripe_request(const char *tmpl)
{
    char sig[160], old[160], t[16];
    stripe_sig(ST_SECRET, T0, ST_BODY, sig, sizeof sig);
    stripe_sig("whsec_old", T0, ST_BODY, old, sizeof old);
    snprintf(t, sizeof t, "%d", T0);
    const char *names[] = { "{t}", "{sig}", "{old}" }, *values[] = { t, sig, old };
    size_t k = 0;
    while (*tmpl) {
        size_t i = 0;
        while (i < 3 && strncmp(tmpl, names[i], strlen(names[i])) != 0)
            i++;
        const char *put = i < 3 ? values[i] : tmpl;
        size_t len = i < 3 ? strlen(values[i]) : 1;
        cr_assert(k + len < sizeof stripe_value);
        memcpy(stripe_value + k, put, len);
        k += len;
        tmpl += i < 3 ? strlen(names[i]) : 1;
    }
    stripe_value[k] = 0;
    headers h = { 0 };
    set(&h, "Stripe-Signature", stripe_value);
    return h;
}

Test(verify, stripe_good)
{
    headers h = stripe_request("t={t},v1={sig}");
    PASSES(&STRIPE, &h, ST_BODY, T0);
    PASSES(&STRIPE, &h, ST_BODY, T0 + 299);
    PASSES(&STRIPE, &h, ST_BODY, T0 - 299);
    REFUSED(&STRIPE, &h, ST_BODY "\n", T0, "no v1 signature in Stripe-Signature matches");
    h = stripe_request(" v1={sig} , t={t} ");
    PASSES(&STRIPE, &h, ST_BODY, T0);
}

Test(verify, stripe_several_v1_one_matching)
{
    headers h = stripe_request("t={t},v1={old}, v1={sig}, v0={old}, v9=whatever");
    PASSES(&STRIPE, &h, ST_BODY, T0);
    h = stripe_request("t={t},v1={old},v0={sig}");
    REFUSED(&STRIPE, &h, ST_BODY, T0, "no v1 signature in Stripe-Signature matches the body");
}

Test(verify, stripe_timestamp_is_signed)
{
    headers h = stripe_request("t={t},v1={sig}");
    PASSES(&STRIPE, &h, ST_BODY, T0);
    stripe_value[11] ^= 1;                     /* t=1700000000 -> t=1700000001 */
    REFUSED(&STRIPE, &h, ST_BODY, T0, "matches the body");
}

Test(verify, stripe_old_timestamp)
{
    headers h = stripe_request("t={t},v1={sig}");
    REFUSED(&STRIPE, &h, ST_BODY, T0 + 912,
            "the timestamp is 912 s old, over the tolerance of 300 s");
    PASSES(&STRIPE, &h, ST_BODY, T0 + 300);
    wh_verify wide = STRIPE;
    wide.tolerance_s = 1000;
    PASSES(&wide, &h, ST_BODY, T0 + 912);
}

Test(verify, stripe_future_timestamp)
{
    headers h = stripe_request("t={t},v1={sig}");
    REFUSED(&STRIPE, &h, ST_BODY, T0 - 400,
            "the timestamp is 400 s in the future, over the tolerance of 300 s");
}

/* A wrong signature on an old timestamp speaks of the signature: the clock is not discussed
 * with whoever cannot sign. */
Test(verify, stripe_signature_before_clock)
{
    headers h = stripe_request("t={t},v1={sig}");
    wh_verify other = STRIPE;
    other.secret = "whsec_other";
    REFUSED(&other, &h, ST_BODY, T0 + 5000, "matches the body");
}

Test(verify, stripe_missing_and_malformed)
{
    headers h = stripe_request("t={t},v1={sig}");
    PASSES(&STRIPE, &h, ST_BODY, T0);
    struct {
        const char *tmpl, *words;
    } cases[] = {
        { "v1={sig}", "has no t= timestamp" },
        { "t={t}", "has no v1 signature" },
        { "t={t},v0={sig}", "has no v1 signature (only v0, which is not accepted)" },
        { "t={t},v1={sig},garbage", "is not a list of key=value pairs" },
        { "t=12x4,v1={sig}", "is not a number of seconds" },
        { "t=,v1={sig}", "is not a number of seconds" },
        { "t=-5,v1={sig}", "is not a number of seconds" },
        { "t=1234567890123,v1={sig}", "is not a number of seconds" },
        { "t={t},t={t},v1={sig}", "has two t= timestamps" },
        { "t={t},v1=abc", "is not 64 hexadecimal digits" },
        { "", "has no t= timestamp" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        h = stripe_request(cases[i].tmpl);
        REFUSED(&STRIPE, &h, ST_BODY, T0, cases[i].words);
    }
    h.n = 0;
    REFUSED(&STRIPE, &h, ST_BODY, T0, "no Stripe-Signature header");
}

/* ---- a plain HMAC ----------------------------------------------------------------------------- */

#define H_SECRET "plain-secret"
#define H_BODY "{\"order\":17,\"total\":\"12.50\"}"

static void hmac_case(const char *alg, bool base64, const char *prefix, bool upper_case)
{
    wh_verify v = { .scheme = WH_HMAC, .secret = H_SECRET, .header = "X-Signature",
                    .prefix = prefix, .base64 = base64, .algorithm = alg };
    char sig[200], value[256];
    openssl_hmac(alg ? alg : "sha256", H_SECRET, H_BODY, base64, sig, sizeof sig);
    if (upper_case)
        upper(sig);
    snprintf(value, sizeof value, "%s%s", prefix ? prefix : "", sig);
    headers h = { 0 };
    set(&h, "x-signature", value);
    PASSES(&v, &h, H_BODY, 0);
    REFUSED(&v, &h, H_BODY " ", 0, "does not match the body");
    v.secret = "another";
    REFUSED(&v, &h, H_BODY, 0, "does not match the body");
}

Test(verify, hmac_hex_lower_and_upper)
{
    hmac_case(NULL, false, NULL, false);
    hmac_case("sha256", false, NULL, true);
}

Test(verify, hmac_prefix)
{
    hmac_case("sha256", false, "sha256=", false);
    wh_verify v = { .scheme = WH_HMAC, .secret = H_SECRET, .header = "X-Signature",
                    .prefix = "sha256=" };
    char sig[200];
    openssl_hmac("sha256", H_SECRET, H_BODY, false, sig, sizeof sig);
    headers h = { 0 };
    set(&h, "X-Signature", sig);
    REFUSED(&v, &h, H_BODY, 0, "the X-Signature header does not start with \"sha256=\"");
}

Test(verify, hmac_base64)
{
    hmac_case("sha256", true, NULL, false);
    hmac_case("sha512", true, "v1,", false);
    /* the URL alphabet, without padding */
    wh_verify v = { .scheme = WH_HMAC, .secret = "Jefe", .header = "X-Signature", .base64 = true };
    headers h = { 0 };
    /* RFC 4231 test case 2, HMAC-SHA-256 ("W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=") */
    set(&h, "X-Signature", "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM");
    PASSES(&v, &h, "what do ya want for nothing?", 0);
    set(&h, "X-Signature", "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=");
    PASSES(&v, &h, "what do ya want for nothing?", 0);
    set(&h, "X-Signature", "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOE");
    REFUSED(&v, &h, "what do ya want for nothing?", 0, "not the 32 bytes of an HMAC-SHA-256 in base64");
    set(&h, "X-Signature", "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTs*EM");
    REFUSED(&v, &h, "what do ya want for nothing?", 0, "in base64");
}

Test(verify, hmac_sha1_and_sha512)
{
    hmac_case("sha1", false, NULL, false);
    hmac_case("sha512", false, "sha512=", true);
    /* RFC 2202 / RFC 4231 test case 2 */
    wh_verify v = { .scheme = WH_HMAC, .secret = "Jefe", .header = "Sig", .algorithm = "sha1" };
    headers h = { 0 };
    set(&h, "Sig", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    PASSES(&v, &h, "what do ya want for nothing?", 0);
    v.algorithm = "SHA512";
    set(&h, "Sig", "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
                   "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737");
    PASSES(&v, &h, "what do ya want for nothing?", 0);
    v.algorithm = "sha256";       /* a SHA-512 signature where SHA-256 is expected */
    REFUSED(&v, &h, "what do ya want for nothing?", 0, "not the 32 bytes of an HMAC-SHA-256");
    h.n = 0;
    REFUSED(&v, &h, "what do ya want for nothing?", 0, "no Sig header");
}

Test(verify, invalid_settings)
{
    struct {
        wh_verify v;
        const char *words;
    } cases[] = {
        { { .scheme = WH_GITHUB }, "the secret is empty" },
        { { .scheme = WH_STRIPE, .secret = "" }, "the secret is empty" },
        { { .scheme = WH_STRIPE, .secret = "s", .tolerance_s = -1 }, "tolerance is negative" },
        { { .scheme = WH_HMAC, .secret = "s" }, "needs the header" },
        { { .scheme = WH_HMAC, .secret = "s", .header = "X", .algorithm = "md5" },
          "unknown algorithm" },
    };
    headers h = { 0 };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        why[0] = 0;
        cr_assert_not(wh_valid(&cases[i].v, why, sizeof why));
        cr_assert(strstr(why, cases[i].words), "why: %s", why);
        cr_assert_eq(check(&cases[i].v, &h, "{}", 0), 500);
        cr_assert(strstr(why, cases[i].words), "why: %s", why);
    }
    wh_verify ok = { .scheme = WH_HMAC, .secret = "s", .header = "X", .algorithm = "sha1" };
    cr_assert(wh_valid(&ok, why, sizeof why));
}

/* ---- attributes ----------------------------------------------------------------------------- */

static wh_attrs describe(const wh_verify *v, headers *h, const char *body, const char *id_header)
{
    wh_attrs a;
    memset(&a, 0x55, sizeof a);                /* what wh_describe leaves unset shows */
    wh_describe(v, find_header, h, body, strlen(body), id_header, &a);
    return a;
}

static headers github_headers(const char *event)
{
    headers h = { 0 };
    set(&h, "X-GitHub-Event", event);
    set(&h, "X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    set(&h, "X-GitHub-Hook-ID", "292430182");
    return h;
}

Test(verify, describe_github_push)
{
    headers h = github_headers("push");
    const char *body = "{\"ref\":\"refs/heads/main\",\"before\":\"9049f126\",\"repository\":{"
                       "\"id\":1,\"full_name\":\"octo/hello\",\"html_url\":\"https://github.com/"
                       "octo/hello\",\"url\":\"https://github.com/octo/hello\"},"
                       "\"organization\":{\"login\":\"octo\"}}";
    wh_attrs a = describe(&GITHUB, &h, body, NULL);
    cr_assert_str_eq(a.type, "com.github.push");
    cr_assert_str_eq(a.id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    cr_assert_str_eq(a.source, "https://github.com/octo/hello");
    cr_assert_str_eq(a.subject, "refs/heads/main");
    cr_assert_eq(a.time_ms, 0);
}

Test(verify, describe_github_pull_request)
{
    headers h = github_headers("pull_request");
    const char *body = "{\"action\":\"opened\",\"number\":42,\"pull_request\":{\"number\":42,"
                       "\"updated_at\":\"2024-05-01T10:00:00Z\"},\"repository\":{\"html_url\":"
                       "\"https://github.com/octo/hello\",\"url\":\"https://api.github.com/repos/"
                       "octo/hello\"}}";
    wh_attrs a = describe(&GITHUB, &h, body, "X-GitHub-Hook-ID");
    cr_assert_str_eq(a.type, "com.github.pull_request.opened");
    cr_assert_str_eq(a.id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    cr_assert_str_eq(a.source, "https://github.com/octo/hello");
    cr_assert_str_eq(a.subject, "42");
}

Test(verify, describe_github_by_the_adapter_table)
{
    struct {
        const char *event, *body, *type, *subject;
    } cases[] = {
        { "issues", "{\"action\":\"closed\",\"issue\":{\"number\":7}}", "com.github.issue.closed", "7" },
        { "create", "{\"ref\":\"v1.0\",\"ref_type\":\"tag\"}", "com.github.create.tag", "v1.0" },
        { "membership", "{\"action\":\"added\",\"scope\":\"team\",\"member\":{\"login\":\"ann\"}}",
          "com.github.membership.team.added", "ann" },
        { "deployment", "{\"action\":\"created\",\"deployment\":{\"id\":99}}", "com.github.deployment", "99" },
        { "ping", "{\"zen\":\"Keep it logically awesome.\",\"hook_id\":5}", "com.github.ping", "" },
        { "workflow_run", "{\"action\":\"completed\"}", "com.github.workflow_run.completed", "" },
        { "push", "not json", "com.github.push", "" },
        { "push.evil", "{}", "", "" },
        { "", "{}", "", "" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        headers h = github_headers(cases[i].event);
        wh_attrs a = describe(&GITHUB, &h, cases[i].body, NULL);
        cr_assert_str_eq(a.type, cases[i].type, "%s", cases[i].event);
        cr_assert_str_eq(a.subject, cases[i].subject, "%s", cases[i].event);
        cr_assert_str_eq(a.source, "https://github.com", "%s", cases[i].event);
    }
}

Test(verify, describe_github_organization_source)
{
    headers h = github_headers("organization");
    wh_attrs a = describe(&GITHUB, &h, "{\"action\":\"member_added\",\"membership\":{\"user\":{"
                          "\"login\":\"ann\"}},\"organization\":{\"login\":\"octo\"}}", NULL);
    cr_assert_str_eq(a.type, "com.github.organization.member_added");
    cr_assert_str_eq(a.source, "https://github.com/octo");
    cr_assert_str_eq(a.subject, "ann");
}

Test(verify, describe_stripe)
{
    const char *body = "{\"id\":\"evt_1NG8Du2eZvKYlo2CUI79vXWy\",\"object\":\"event\","
                       "\"api_version\":\"2019-02-19\",\"created\":1686089970,\"data\":{\"object\":{"
                       "\"id\":\"pi_3NG8Du2eZvKYlo2C1\",\"object\":\"payment_intent\"}},"
                       "\"livemode\":false,\"type\":\"payment_intent.succeeded\"}";
    headers h = { 0 };
    wh_attrs a = describe(&STRIPE, &h, body, NULL);
    cr_assert_str_eq(a.type, "com.stripe.payment_intent.succeeded");
    cr_assert_str_eq(a.id, "evt_1NG8Du2eZvKYlo2CUI79vXWy");
    cr_assert_str_eq(a.source, "https://dashboard.stripe.com/test");
    cr_assert_str_eq(a.subject, "pi_3NG8Du2eZvKYlo2C1");
    cr_assert_eq(a.time_ms, 1686089970000LL);

    a = describe(&STRIPE, &h, "{\"id\":\"evt_2\",\"type\":\"account.updated\",\"account\":"
                 "\"acct_1A\",\"livemode\":true,\"created\":1}", NULL);
    cr_assert_str_eq(a.source, "https://dashboard.stripe.com/acct_1A");
    cr_assert_str_eq(a.subject, "");
    cr_assert_eq(a.time_ms, 1000);

    set(&h, "Idempotency", "from-a-header");
    a = describe(&STRIPE, &h, "[1,2]", "Idempotency");
    cr_assert_str_eq(a.type, "");
    cr_assert_str_eq(a.id, "from-a-header");
    cr_assert_eq(a.time_ms, 0);
}

Test(verify, describe_hmac_and_long_values)
{
    wh_verify v = { .scheme = WH_HMAC, .secret = "s", .header = "X-Signature" };
    headers h = { 0 };
    set(&h, "X-Request-Id", "  req-81  ");
    wh_attrs a = describe(&v, &h, "{\"type\":\"ignored\"}", "X-Request-Id");
    cr_assert_str_eq(a.id, "req-81");
    cr_assert_str_eq(a.type, "");
    cr_assert_str_eq(a.source, "");
    cr_assert_str_eq(a.subject, "");
    a = describe(&v, &h, "{}", NULL);
    cr_assert_str_eq(a.id, "");

    /* cut to fit, never inside a UTF-8 character: 300 bytes of 2-byte characters */
    static char long_id[301];
    for (int i = 0; i < 300; i += 2)
        memcpy(long_id + i, "\xc3\xa9", 2);
    set(&h, "X-Request-Id", long_id);
    a = describe(&v, &h, "", "X-Request-Id");
    cr_assert_eq(strlen(a.id), 254);
}
