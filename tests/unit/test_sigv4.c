/*
 * test_sigv4.c — AWS Signature Version 4 (runtime/aws/sigv4.c): known answers from AWS's
 * documentation and from botocore, signed and checked both ways; then each way a request is
 * refused (status, code, message), each test first showing that the request it starts from
 * passes, so that the refusal is the change's doing; then hostile sizes.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../../runtime/aws/aws.h"

#define AKID "AKIDEXAMPLE"
#define SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

/* The keys a daemon would know: ours second, so that the index is seen to be right. */
static const aws_key KEYS[] = { { "AKIAOTHERKEY", "another secret altogether" }, { AKID, SECRET } };
#define NKEYS (sizeof KEYS / sizeof KEYS[0])

/* ---- requests ------------------------------------------------------------------------------- */

#define MAX_HEADERS 80

typedef struct {
    const char *name[MAX_HEADERS], *value[MAX_HEADERS];
    size_t n;
} headers;

typedef struct {
    headers h;
    aws_sig_request r;
} request;

static const char *value_of(const headers *h, const char *name)
{
    for (size_t i = 0; i < h->n; i++)
        if (strcasecmp(h->name[i], name) == 0)
            return h->value[i];
    return NULL;
}

/* As protocol.c's does, find_header hands each value out in one buffer that the next look-up
 * scribbles over (or frees, when it grows): sigv4.c must keep no value across calls. */
static char *joined;
static size_t joined_cap;

static void free_joined(void)
{
    free(joined);
    joined = NULL;
    joined_cap = 0;
}

TestSuite(sigv4, .fini = free_joined);

static const char *find_header(void *arg, const char *name)
{
    const char *v = value_of(arg, name);
    size_t n = v ? strlen(v) : 0;
    if (n + 1 > joined_cap) {
        free_joined();
        joined_cap = n + 1 < 256 ? 256 : n + 1;
        joined = malloc(joined_cap);
        cr_assert_not_null(joined);
    }
    memset(joined, '#', joined_cap);
    if (!v)
        return NULL;
    memcpy(joined, v, n + 1);
    return joined;
}

/* Sets a header, replacing one of that name; NULL removes it. */
static void set_header(request *q, const char *name, const char *value)
{
    headers *h = &q->h;
    for (size_t i = 0; i < h->n; i++) {
        if (strcasecmp(h->name[i], name) != 0)
            continue;
        if (value) {
            h->value[i] = value;
        } else {
            h->n--;
            h->name[i] = h->name[h->n];
            h->value[i] = h->value[h->n];
        }
        return;
    }
    cr_assert_lt(h->n, MAX_HEADERS);
    if (value) {
        h->name[h->n] = name;
        h->value[h->n++] = value;
    }
}

static void start(request *q, const char *method, const char *query, const char *body,
                  int64_t now)
{
    *q = (request){ .r = { .method = method, .path = "/", .query = query, .header = find_header,
                           .arg = &q->h, .body = body, .body_len = strlen(body), .now = now } };
}

/* botocore's PutEvents below (its X-Amz-Date, 20261205T123100Z, is Unix 1796473860). */
#define PUT_EVENTS_BODY                                                                           \
    "{\"Entries\":[{\"Source\":\"shop.orders\",\"DetailType\":\"OrderPlaced\",\"Detail\":"      \
    "\"{\\\"id\\\":42}\",\"EventBusName\":\"default\"}]}"
#define PUT_EVENTS_NOW 1796473860
#define PUT_EVENTS_AUTHORIZATION                                                                  \
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request, "            \
    "SignedHeaders=content-type;host;x-amz-date;x-amz-target, "                                   \
    "Signature=7a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde87"

static void put_events(request *q)
{
    start(q, "POST", "", PUT_EVENTS_BODY, PUT_EVENTS_NOW);
    set_header(q, "Content-Type", "application/x-amz-json-1.1");
    set_header(q, "Host", "events.eu-west-1.amazonaws.com");
    set_header(q, "X-Amz-Date", "20261205T123100Z");
    set_header(q, "X-Amz-Target", "AWSEvents.PutEvents");
    set_header(q, "Authorization", PUT_EVENTS_AUTHORIZATION);
}

/* Signs q as it stands with our key for eu-west-1/events, into buf (its Authorization). */
static void sign(request *q, const char *signed_headers, char *buf, size_t cap)
{
    aws_key key = KEYS[1];
    cr_assert(aws_sig_sign(&q->r, signed_headers, value_of(&q->h, "x-amz-date"), "eu-west-1",
                           "events", &key, buf, cap));
    set_header(q, "Authorization", buf);
}

static void expect_ok(const request *q)
{
    aws_sig_result out;
    bool ok = aws_sig_verify(&q->r, KEYS, NKEYS, &out);
    cr_assert(ok, "refused: %u %s: %s", out.status, out.code, out.message);
    cr_assert(out.ok);
    cr_assert_eq(out.key, 1);
    cr_assert_str_eq(out.access_key, AKID);
}

/* Checks that q is refused with status and code, and that the message holds words (and never
 * the secret).  Returns the result for a closer look. */
static aws_sig_result expect_refused(const request *q, unsigned status, const char *code,
                                     const char *words)
{
    aws_sig_result out;
    cr_assert(!aws_sig_verify(&q->r, KEYS, NKEYS, &out), "passed");
    cr_assert(!out.ok);
    cr_assert_eq(out.key, -1);
    cr_assert_eq(out.status, status, "status %u (%s: %s)", out.status, out.code, out.message);
    cr_assert_str_eq(out.code, code, "%s", out.message);
    cr_assert(strstr(out.message, words), "message: %s", out.message);
    cr_assert_null(strstr(out.message, SECRET));
    return out;
}

/* ---- known answers -------------------------------------------------------------------------- */

/* AWS's example (IAM ListUsers, "Create a signed AWS API request" in the IAM User Guide). */
static void iam_list_users(request *q, const char *query)
{
    start(q, "GET", query, "", 1440938160);        /* 20150830T123600Z */
    set_header(q, "Content-Type", "application/x-www-form-urlencoded; charset=utf-8");
    set_header(q, "Host", "iam.amazonaws.com");
    set_header(q, "X-Amz-Date", "20150830T123600Z");
}

#define IAM_AUTHORIZATION                                                                         \
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "               \
    "SignedHeaders=content-type;host;x-amz-date, "                                                \
    "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"

Test(sigv4, aws_documented_example)
{
    request q;
    iam_list_users(&q, "Action=ListUsers&Version=2010-05-08");
    aws_key key = { AKID, SECRET };
    char buf[512];
    cr_assert(aws_sig_sign(&q.r, "content-type;host;x-amz-date", "20150830T123600Z", "us-east-1",
                           "iam", &key, buf, sizeof buf));
    cr_assert_str_eq(buf, IAM_AUTHORIZATION);
    set_header(&q, "Authorization", IAM_AUTHORIZATION);
    aws_sig_result out;
    cr_assert(aws_sig_verify(&q.r, KEYS, NKEYS, &out), "%s: %s", out.code, out.message);
    cr_assert_eq(out.key, 1);
    cr_assert_str_eq(out.access_key, AKID);
    cr_assert_str_eq(out.region, "us-east-1");
    cr_assert_str_eq(out.service, "iam");
}

/* The query canonicalised: its order and its spelling (%55 is 'U', %2D '-') do not matter. */
Test(sigv4, query_order_and_spelling)
{
    request q;
    iam_list_users(&q, "Version=2010%2D05-08&Action=List%55sers");
    set_header(&q, "Authorization", IAM_AUTHORIZATION);
    expect_ok(&q);
    iam_list_users(&q, "Action=ListUsers&Version=2010-05-09");
    set_header(&q, "Authorization", IAM_AUTHORIZATION);
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
}

/*
 * The botocore fixtures: PUT_EVENTS_AUTHORIZATION, LONG_SECRET_SIGNATURE, QUERY_AUTHORIZATION
 * and LONG_AUTHORIZATION were made by Debian's python3-botocore 1.29.27 (/usr/bin/python3), its
 * clock held still (botocore.auth's datetime replaced by one whose utcnow is fixed):
 *
 *   import datetime, types
 *   from unittest import mock
 *   from botocore.auth import SigV4Auth
 *   from botocore.awsrequest import AWSRequest
 *   from botocore.credentials import Credentials
 *   class At(datetime.datetime):
 *       @classmethod
 *       def utcnow(cls):
 *           return cls(2026, 12, 5, 12, 31, 0)
 *   def signed(req, secret):
 *       with mock.patch("botocore.auth.datetime", types.SimpleNamespace(datetime=At)):
 *           SigV4Auth(Credentials("AKIDEXAMPLE", secret), "events", "eu-west-1").add_auth(req)
 *       return req.headers["Authorization"]
 *   body = (b'{"Entries":[{"Source":"shop.orders","DetailType":"OrderPlaced",'
 *           b'"Detail":"{\\"id\\":42}","EventBusName":"default"}]}')
 *   for secret in ("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "s" * 100):
 *       print(signed(AWSRequest(method="POST", url="https://events.eu-west-1.amazonaws.com/",
 *                               data=body,
 *                               headers={"Content-Type": "application/x-amz-json-1.1",
 *                                        "X-Amz-Target": "AWSEvents.PutEvents"}), secret))
 *   params = [("a b", "1"), ("a~", "2"), ("aB", "3"), ("a-b", "4"), ("a/", "5"), ("a", "2"),
 *             ("a", "10"), ("z", "\u00e9+")]
 *   print(signed(AWSRequest(method="GET", url="https://events.eu-west-1.amazonaws.com/",
 *                           params=params), "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"))
 *   params = [("k%03d" % i, "v %d" % i) for i in range(300, 0, -1)]
 *   print(signed(AWSRequest(method="GET",
 *                           url="https://events.eu-west-1.amazonaws.com/a%20b/~c/d%2Fe",
 *                           headers={"X-Long": "ab  " * 1000}, params=params),
 *                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"))
 *
 * (botocore signs the host it takes from the URL.)  The last is LONG_AUTHORIZATION.
 */
Test(sigv4, botocore_put_events)
{
    request q;
    put_events(&q);
    aws_sig_result out;
    cr_assert(aws_sig_verify(&q.r, KEYS, NKEYS, &out), "%s: %s", out.code, out.message);
    cr_assert_eq(out.key, 1);
    cr_assert_str_eq(out.region, "eu-west-1");
    cr_assert_str_eq(out.service, "events");
    cr_assert_eq(out.status, 200);
    char buf[512];
    sign(&q, "content-type;host;x-amz-date;x-amz-target", buf, sizeof buf);
    cr_assert_str_eq(buf, PUT_EVENTS_AUTHORIZATION);
}

/* A secret longer than HMAC's block: sigv4.c hashes "AWS4" + secret itself. */
#define LONG_SECRET_SIGNATURE "0a17fc7fc93b705e9e2249e2ad08d510a64fd5562f3ac26f0f26d392dce8e4ea"

Test(sigv4, botocore_long_secret)
{
    char secret[101];
    memset(secret, 's', 100);
    secret[100] = 0;
    request q;
    put_events(&q);
    aws_key key = { AKID, secret };
    char buf[512];
    cr_assert(aws_sig_sign(&q.r, "content-type;host;x-amz-date;x-amz-target", "20261205T123100Z",
                           "eu-west-1", "events", &key, buf, sizeof buf));
    cr_assert_str_eq(strstr(buf, "Signature=") + 10, LONG_SECRET_SIGNATURE);
    set_header(&q, "Authorization", buf);
    aws_sig_result out;
    cr_assert(aws_sig_verify(&q.r, &key, 1, &out), "%s: %s", out.code, out.message);
}

#define QUERY_AUTHORIZATION                                                                       \
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request, "            \
    "SignedHeaders=host;x-amz-date, "                                                             \
    "Signature=925db0d55e4be2566b5e68cdcdc3d7ec79eb018da15080323327f6bb59effe69"

/* Sorted by their encodings ("a", "a%20b", "a%2F", "a-b", "aB", "a~"), a repeated name by
 * value ("10" before "2"); sent here out of order and spelt otherwise (%7e for '~', and '+'
 * as it is: a '+' is a plus, not a space, as AWS clients send a space as %20). */
Test(sigv4, botocore_query_sorted_by_encoding)
{
    request q;
    start(&q, "GET", "z=%C3%A9+&a%7e=2&aB=3&a=2&a%2F=5&a-b=4&a%20b=1&a=10", "", PUT_EVENTS_NOW);
    set_header(&q, "Host", "events.eu-west-1.amazonaws.com");
    set_header(&q, "X-Amz-Date", "20261205T123100Z");
    set_header(&q, "Authorization", QUERY_AUTHORIZATION);
    expect_ok(&q);
    q.r.query = "z=%C3%A9+&a%7e=2&aB=3&a=2&a%2F=5&a-b=4&a%20b=1&a=11";
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
}

#define LONG_AUTHORIZATION                                                                        \
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request, "            \
    "SignedHeaders=host;x-amz-date;x-long, "                                                      \
    "Signature=e025364782c291a2115dbcd0ef2c57dbadf5ba539cbfb4b33ba888a3cb4dfa8f"

/* A canonical request of some kilobytes (so the hasher's buffer fills many times over): 300
 * parameters sent in reverse order, a header of 4,000 bytes, and a path whose escapes are
 * encoded again ("/a%2520b/~c/d%252Fe" in the canonical request). */
Test(sigv4, botocore_long_request)
{
    static char query[300 * 16], value[4001];
    size_t n = 0;
    for (int i = 300; i > 0; i--)
        n += (size_t)snprintf(query + n, sizeof query - n, "%sk%03d=v%%20%d", n ? "&" : "", i,
                              i);
    for (int i = 0; i < 1000; i++)
        memcpy(value + 4 * i, "ab  ", 4);
    request q;
    start(&q, "GET", query, "", PUT_EVENTS_NOW);
    q.r.path = "/a%20b/~c/d%2Fe";
    set_header(&q, "Host", "events.eu-west-1.amazonaws.com");
    set_header(&q, "X-Amz-Date", "20261205T123100Z");
    set_header(&q, "X-Long", value);
    char buf[512];
    sign(&q, "host;x-amz-date;x-long", buf, sizeof buf);
    cr_assert_str_eq(buf, LONG_AUTHORIZATION);
    expect_ok(&q);
    q.r.path = "/a%20b/~c/d/e";
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
}

/* ---- refusals ------------------------------------------------------------------------------- */

Test(sigv4, missing_authorization)
{
    request q;
    put_events(&q);
    expect_ok(&q);
    set_header(&q, "Authorization", NULL);
    aws_sig_result out = expect_refused(&q, 403, "MissingAuthenticationToken",
                                        "Missing Authentication Token");
    cr_assert_str_eq(out.access_key, "");
    set_header(&q, "Authorization", "  ");
    expect_refused(&q, 403, "MissingAuthenticationToken", "Missing Authentication Token");
}

/* Each parameter left out in turn, then all: the message names each one missing. */
Test(sigv4, incomplete_parameters)
{
    static const struct {
        const char *header, *missing;
    } cases[] = {
        { "AWS4-HMAC-SHA256 SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
          "Signature=7a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde87",
          "Authorization header requires 'Credential' parameter." },
        { "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request, "
          "Signature=7a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde87",
          "Authorization header requires 'SignedHeaders' parameter." },
        { "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request, "
          "SignedHeaders=content-type;host;x-amz-date;x-amz-target",
          "Authorization header requires 'Signature' parameter." },
        { "AWS4-HMAC-SHA256",
          "Authorization header requires 'Credential' parameter. Authorization header requires "
          "'Signature' parameter. Authorization header requires 'SignedHeaders' parameter." },
    };
    request q;
    put_events(&q);
    expect_ok(&q);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        set_header(&q, "Authorization", cases[i].header);
        aws_sig_result out = expect_refused(&q, 400, "IncompleteSignature", cases[i].missing);
        cr_assert_str_eq(out.message, cases[i].missing);
    }
}

/* The parameters in another order, blanks around ',' and '=' or none: the same header. */
Test(sigv4, parameters_in_any_order)
{
    request q;
    put_events(&q);
    set_header(&q, "Authorization",
               "AWS4-HMAC-SHA256   Signature = "
               "7a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde87 ,"
               "SignedHeaders=content-type;host;x-amz-date;x-amz-target,"
               "Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request");
    expect_ok(&q);
    set_header(&q, "Authorization",
               PUT_EVENTS_AUTHORIZATION ", Signature="
               "7a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde87");
    expect_refused(&q, 400, "IncompleteSignature", "more than one 'Signature'");
}

Test(sigv4, incomplete_algorithm)
{
    request q;
    put_events(&q);
    expect_ok(&q);
    set_header(&q, "Authorization",
               "AWS4-HMAC-SHA512 Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request, "
               "SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
               "Signature=7a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde87");
    expect_refused(&q, 400, "IncompleteSignature", "not 'AWS4-HMAC-SHA512'");
    set_header(&q, "Authorization", "AWS4-HMAC-SHA256Credential=AKIDEXAMPLE/20261205");
    expect_refused(&q, 400, "IncompleteSignature", "requires the 'AWS4-HMAC-SHA256' algorithm");
}

Test(sigv4, incomplete_credential)
{
    static const struct {
        const char *credential, *words;
    } cases[] = {
        { "AKIDEXAMPLE/20261205/eu-west-1/aws4_request", "should be ACCESS_KEY/YYYYMMDD" },
        { "AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request/x", "should be ACCESS_KEY" },
        { "AKIDEXAMPLE/20261205/eu-west-1/events/aws5_request", "should be ACCESS_KEY" },
        { "/20261205/eu-west-1/events/aws4_request", "access key of 1 to 128" },
        { "AKIDEXAMPLE/2026125/eu-west-1/events/aws4_request", "a date YYYYMMDD, not '2026125'" },
        { "AKIDEXAMPLE/2026120x/eu-west-1/events/aws4_request", "a date YYYYMMDD" },
        { "AKIDEXAMPLE/20261205//events/aws4_request", "a valid region, not ''" },
        { "AKIDEXAMPLE/20261205/eu west 1/events/aws4_request", "a valid region" },
        { "AKIDEXAMPLE/20261205/eu-west-1/ev\"nts/aws4_request", "a valid service" },
    };
    request q;
    put_events(&q);
    expect_ok(&q);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char header[512];
        snprintf(header, sizeof header,
                 "AWS4-HMAC-SHA256 Credential=%s, "
                 "SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
                 "Signature=7a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde87",
                 cases[i].credential);
        set_header(&q, "Authorization", header);
        expect_refused(&q, 400, "IncompleteSignature", cases[i].words);
    }
}

Test(sigv4, incomplete_without_host)
{
    request q;
    put_events(&q);
    char buf[512];
    sign(&q, "content-type;host;x-amz-date;x-amz-target", buf, sizeof buf);
    expect_ok(&q);
    set_header(&q, "Authorization",
               "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request, "
               "SignedHeaders=content-type;x-amz-date;x-amz-target, "
               "Signature=7a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde87");
    expect_refused(&q, 400, "IncompleteSignature",
                   "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.");
    /* nor will it sign so */
    aws_key key = KEYS[1];
    cr_assert(!aws_sig_sign(&q.r, "content-type;x-amz-date", "20261205T123100Z", "eu-west-1",
                            "events", &key, buf, sizeof buf));
}

Test(sigv4, incomplete_date)
{
    request q;
    put_events(&q);
    expect_ok(&q);
    set_header(&q, "X-Amz-Date", NULL);
    expect_refused(&q, 400, "IncompleteSignature",
                   "Authorization header requires existence of a 'X-Amz-Date' header.");
    static const char *const unreadable[] = { "2026-12-05T12:31:00Z", "20261205T123100",
                                              "20261131T123100Z", "20261205T243100Z",
                                              "20261205T123160Z", "" };
    for (size_t i = 0; i < sizeof unreadable / sizeof unreadable[0]; i++) {
        set_header(&q, "X-Amz-Date", unreadable[i]);
        char words[64];
        snprintf(words, sizeof words, "not '%s'", unreadable[i]);
        expect_refused(&q, 400, "IncompleteSignature", words);
    }
}

Test(sigv4, unknown_key)
{
    request q;
    put_events(&q);
    expect_ok(&q);
    set_header(&q, "Authorization",
               "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLF/20261205/eu-west-1/events/aws4_request, "
               "SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
               "Signature=7a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde87");
    aws_sig_result out = expect_refused(&q, 403, "InvalidClientTokenId",
                                        "The security token included in the request is invalid.");
    cr_assert_str_eq(out.access_key, "AKIDEXAMPLF");
    aws_sig_result none;
    put_events(&q);
    cr_assert(!aws_sig_verify(&q.r, KEYS, 1, &none), "our key not among the keys");
    cr_assert_str_eq(none.code, "InvalidClientTokenId");
}

Test(sigv4, wrong_secret)
{
    request q;
    put_events(&q);
    expect_ok(&q);
    const aws_key wrong[] = { { AKID, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ" } };
    aws_sig_result out;
    cr_assert(!aws_sig_verify(&q.r, wrong, 1, &out));
    cr_assert_eq(out.status, 403);
    cr_assert_str_eq(out.code, "SignatureDoesNotMatch");
    cr_assert_str_eq(out.message,
                     "The request signature we calculated does not match the signature you "
                     "provided. Check your AWS Secret Access Key and signing method. Consult the "
                     "service documentation for details.");
    cr_assert_str_eq(out.access_key, AKID);         /* the scope read all the same */
    cr_assert_str_eq(out.region, "eu-west-1");
    cr_assert_str_eq(out.service, "events");
}

Test(sigv4, changed_body)
{
    request q;
    put_events(&q);
    expect_ok(&q);
    q.r.body_len--;                                  /* one byte short */
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match the signature you provided");
    q.r.body_len++;
    q.r.body = "{\"Entries\":[{\"Source\":\"shop.orders\",\"DetailType\":\"OrderPlaced\","
               "\"Detail\":\"{\\\"id\\\":43}\",\"EventBusName\":\"default\"}]}";
    cr_assert_eq(strlen(q.r.body), q.r.body_len);
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match the signature you provided");
}

Test(sigv4, changed_signed_header_method_path)
{
    request q;
    put_events(&q);
    expect_ok(&q);
    set_header(&q, "X-Amz-Target", "AWSEvents.TestEventPattern");
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
    put_events(&q);
    set_header(&q, "Host", "events.eu-west-2.amazonaws.com");
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
    put_events(&q);
    q.r.method = "PUT";
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
    put_events(&q);
    q.r.path = "/x";
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
    put_events(&q);
    q.r.query = "a=1";
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
}

/* What is not signed may change; a signed value's blanks are trimmed and collapsed. */
Test(sigv4, unsigned_header_changed_still_ok)
{
    request q;
    put_events(&q);
    set_header(&q, "User-Agent", "aws-cli/2.15.0");
    expect_ok(&q);
    set_header(&q, "User-Agent", "something else entirely");
    set_header(&q, "X-Forwarded-For", "10.0.0.1");
    expect_ok(&q);
    set_header(&q, "X-Amz-Target", " \t AWSEvents.PutEvents  ");
    expect_ok(&q);
    set_header(&q, "X-Amz-Target", "AWSEvents. PutEvents");
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
}

/* 15 minutes either way pass, a second more does not; AWS's words for each side. */
Test(sigv4, expired_past_and_future)
{
    request q;
    put_events(&q);
    q.r.now = PUT_EVENTS_NOW + 15 * 60;
    expect_ok(&q);
    q.r.now = PUT_EVENTS_NOW - 15 * 60;
    expect_ok(&q);
    q.r.now = PUT_EVENTS_NOW + 15 * 60 + 1;
    aws_sig_result out = expect_refused(&q, 400, "RequestExpired", "Signature expired");
    cr_assert_str_eq(out.message, "Signature expired: 20261205T123100Z is now earlier than "
                                  "20261205T123101Z (20261205T124601Z - 15 min.)");
    q.r.now = PUT_EVENTS_NOW - 3600;
    out = expect_refused(&q, 400, "RequestExpired", "Signature not yet current");
    cr_assert_str_eq(out.message, "Signature not yet current: 20261205T123100Z is still later "
                                  "than 20261205T114600Z (20261205T113100Z + 15 min.)");
}

/* A credential dated the day before X-Amz-Date, signed as such: refused for the dates. */
Test(sigv4, credential_date_differs)
{
    request q;
    put_events(&q);
    char buf[512];
    sign(&q, "content-type;host;x-amz-date;x-amz-target", buf, sizeof buf);
    expect_ok(&q);
    memcpy(strstr(buf, "/20261205/"), "/20261204/", 10);
    set_header(&q, "Authorization", buf);
    aws_sig_result out = expect_refused(&q, 403, "SignatureDoesNotMatch",
                                        "Date in Credential scope does not match");
    cr_assert(strstr(out.message, "'20261204' != '20261205', from '20261205T123100Z'"), "%s",
              out.message);
}

/* A header named in SignedHeaders that the request does not have: IncompleteSignature naming
 * it (sigv4.c's check_signature says why not SignatureDoesNotMatch). */
Test(sigv4, signed_header_absent)
{
    request q;
    put_events(&q);
    expect_ok(&q);
    set_header(&q, "X-Amz-Target", NULL);
    expect_refused(&q, 400, "IncompleteSignature",
                   "SignedHeaders names 'x-amz-target', a header the request does not have.");
}

/* A signed X-Amz-Content-Sha256 stands for the body in the canonical request, so it must be
 * the body's; UNSIGNED-PAYLOAD is refused; one not signed is not read. */
#define PUT_EVENTS_BODY_SHA256 /* printf '%s' "$body" | sha256sum */                             \
    "ea1b467ee0303c3f827fbf76ddf827fb913a7aa2bccb93665bdb4d77a5f45474"

Test(sigv4, content_sha256)
{
    request q;
    put_events(&q);
    set_header(&q, "X-Amz-Content-Sha256", PUT_EVENTS_BODY_SHA256);
    char buf[512];
    sign(&q, "content-type;host;x-amz-content-sha256;x-amz-date;x-amz-target", buf, sizeof buf);
    expect_ok(&q);
    q.r.body_len--;
    expect_refused(&q, 403, "SignatureDoesNotMatch", "'x-amz-content-sha256' header does not");
    q.r.body_len++;
    set_header(&q, "X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD");
    expect_refused(&q, 400, "IncompleteSignature", "not 'UNSIGNED-PAYLOAD'");
    aws_key key = KEYS[1];
    cr_assert(!aws_sig_sign(&q.r, "content-type;host;x-amz-content-sha256;x-amz-date",
                            "20261205T123100Z", "eu-west-1", "events", &key, buf, sizeof buf),
              "nor does it sign so");
    put_events(&q);
    set_header(&q, "X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD");
    expect_ok(&q);
}

/* ---- hostile sizes -------------------------------------------------------------------------- */

static char *repeat(const char *head, char c, size_t n, const char *tail)
{
    size_t h = strlen(head), t = strlen(tail);
    char *s = malloc(h + n + t + 1);
    cr_assert_not_null(s);
    memcpy(s, head, h);
    memset(s + h, c, n);
    memcpy(s + h + n, tail, t + 1);
    return s;
}

/* A signed header of 1 MiB is hashed as it streams, its blanks collapsed on the way. */
Test(sigv4, huge_signed_header)
{
    char *big = repeat("x", ' ', 1 << 20, "y");
    request q;
    put_events(&q);
    set_header(&q, "X-Big", big);
    char buf[512];
    sign(&q, "content-type;host;x-amz-date;x-amz-target;x-big", buf, sizeof buf);
    expect_ok(&q);
    set_header(&q, "X-Big", "x y");                 /* the same, canonically */
    expect_ok(&q);
    set_header(&q, "X-Big", "xy");
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
    free(big);
}

/* At most 64 names in SignedHeaders (sigv4.c: each costs a look-up); 64 pass, their list
 * longer than the hasher's buffer. */
Test(sigv4, many_signed_headers)
{
    char list[2048] = "content-type;host;x-amz-date;x-amz-target";
    static char names[60][32];
    request q;
    put_events(&q);
    for (unsigned i = 0; i < 60; i++) {
        snprintf(names[i], sizeof names[i], "x-header-number-%u", i);
        set_header(&q, names[i], "v");
        strcat(list, ";");
        strcat(list, names[i]);
    }
    char buf[2560];
    sign(&q, list, buf, sizeof buf);                 /* 64 names */
    expect_ok(&q);
    set_header(&q, names[59], "w");
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
    strcat(list, ";host");                           /* 65 */
    aws_key key = KEYS[1];
    cr_assert(!aws_sig_sign(&q.r, list, "20261205T123100Z", "eu-west-1", "events", &key, buf,
                            sizeof buf));
    snprintf(buf, sizeof buf,
             "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request, "
             "SignedHeaders=%s, Signature=%064d", list, 0);
    set_header(&q, "Authorization", buf);
    expect_refused(&q, 400, "IncompleteSignature", "at most 64 headers");
    set_header(&q, "Authorization",
               "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request, "
               "SignedHeaders=host;;x-amz-date, Signature=0");
    expect_refused(&q, 400, "IncompleteSignature", "separated by ';', not 'host;;x-amz-date'");
}

/* Megabytes where a few bytes belong: refused with a message of bounded size. */
Test(sigv4, huge_authorization)
{
    static const struct {
        const char *head, *tail, *code, *words;
        char fill;
    } cases[] = {
        { "AWS4-HMAC-SHA256 ", "", "IncompleteSignature", "requires 'Credential' parameter", 'x' },
        { "AWS4-HMAC-SHA256 Credential=", "/20261205/eu-west-1/events/aws4_request, "
          "SignedHeaders=host;x-amz-date, Signature=0", "IncompleteSignature", "access key", 'A' },
        { "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/", "/events/aws4_request, "
          "SignedHeaders=host;x-amz-date, Signature=0", "IncompleteSignature", "region", 'e' },
        { "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request, "
          "SignedHeaders=host;", ", Signature=0", "IncompleteSignature", "separated by ';'", 'h' },
        { "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request, "
          "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=", "",
          "SignatureDoesNotMatch", "does not match", 'f' },
        { "", "", "IncompleteSignature", "algorithm", 'A' },
    };
    request q;
    put_events(&q);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *header = repeat(cases[i].head, cases[i].fill, 1 << 20, cases[i].tail);
        set_header(&q, "Authorization", header);
        aws_sig_result out = expect_refused(&q, cases[i].code[0] == 'I' ? 400 : 403,
                                            cases[i].code, cases[i].words);
        cr_assert_lt(strlen(out.message), 400, "%s", out.message);
        free(header);
    }
}

/* A signature of the wrong length or case, or cut short: no match (and no read past it). */
Test(sigv4, signature_spelling)
{
    static const char *const sigs[] = {
        "7a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde8",
        "7a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde877",
        "7A2490F7C0663C4CA4054562B2306915D8119D04BF35BBAB59AE74E8DB2BDE87",
        "7a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde86",
        "8a2490f7c0663c4ca4054562b2306915d8119d04bf35bbab59ae74e8db2bde87",
        "",
    };
    request q;
    put_events(&q);
    expect_ok(&q);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        char header[512];
        snprintf(header, sizeof header,
                 "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/eu-west-1/events/aws4_request, "
                 "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=%s",
                 sigs[i]);
        set_header(&q, "Authorization", header);
        expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
    }
}

/* 200,000 query parameters are sorted in O(n log n) (the test's timeout would tell). */
Test(sigv4, huge_query, .timeout = 30)
{
    char *query = repeat("", '&', 1 << 20, "");
    for (size_t i = 0; i + 5 < (size_t)1 << 20; i += 5)
        memcpy(query + i, i % 2 ? "b=%7" : "a=~1", 4);
    request q;
    start(&q, "GET", query, "", PUT_EVENTS_NOW);
    set_header(&q, "Host", "events.eu-west-1.amazonaws.com");
    set_header(&q, "X-Amz-Date", "20261205T123100Z");
    char buf[512];
    sign(&q, "host;x-amz-date", buf, sizeof buf);
    expect_ok(&q);
    query[7] = 'c';
    expect_refused(&q, 403, "SignatureDoesNotMatch", "does not match");
    free(query);
}

/* ---- aws_sig_scope and aws_sig_sign's refusals ---------------------------------------------- */

Test(sigv4, scope)
{
    char ak[129], region[64], service[64];
    aws_sig_scope(PUT_EVENTS_AUTHORIZATION, ak, sizeof ak, region, sizeof region, service,
                  sizeof service);
    cr_assert_str_eq(ak, AKID);
    cr_assert_str_eq(region, "eu-west-1");
    cr_assert_str_eq(service, "events");
    /* the credential alone is read: the rest may be missing */
    aws_sig_scope("AWS4-HMAC-SHA256 Credential=AKIA1/20261205/us-east-2/events/aws4_request", ak,
                  sizeof ak, region, sizeof region, service, sizeof service);
    cr_assert_str_eq(ak, "AKIA1");
    cr_assert_str_eq(region, "us-east-2");
    static const char *const unreadable[] = {
        NULL, "", "Basic dXNlcjpwYXNz", "AWS4-HMAC-SHA256 Credential=AKIA1/20261205/us-east-2",
        "AWS4-HMAC-SHA256 Signature=00",
    };
    for (size_t i = 0; i < sizeof unreadable / sizeof unreadable[0]; i++) {
        aws_sig_scope(unreadable[i], ak, sizeof ak, region, sizeof region, service,
                      sizeof service);
        cr_assert_str_eq(ak, "", "%zu", i);
        cr_assert_str_eq(region, "");
        cr_assert_str_eq(service, "");
    }
    /* what does not fit is left empty, not cut */
    char small[4];
    aws_sig_scope(PUT_EVENTS_AUTHORIZATION, small, sizeof small, region, sizeof region, service,
                  sizeof service);
    cr_assert_str_eq(small, "");
    cr_assert_str_eq(region, "eu-west-1");
}

Test(sigv4, sign_refuses)
{
    request q;
    put_events(&q);
    aws_key key = KEYS[1];
    char buf[512];
    const char *list = "content-type;host;x-amz-date;x-amz-target";
    cr_assert(aws_sig_sign(&q.r, list, "20261205T123100Z", "eu-west-1", "events", &key, buf,
                           sizeof buf));
    size_t n = strlen(buf);
    cr_assert(!aws_sig_sign(&q.r, list, "20261205T123100Z", "eu-west-1", "events", &key, buf, n),
              "no room for the NUL");
    cr_assert(aws_sig_sign(&q.r, list, "20261205T123100Z", "eu-west-1", "events", &key, buf,
                           n + 1));
    cr_assert(!aws_sig_sign(&q.r, list, "2026-12-05", "eu-west-1", "events", &key, buf,
                            sizeof buf));
    cr_assert(!aws_sig_sign(&q.r, list, "20261205T123100Z", "", "events", &key, buf, sizeof buf));
    set_header(&q, "X-Amz-Target", NULL);
    cr_assert(!aws_sig_sign(&q.r, list, "20261205T123100Z", "eu-west-1", "events", &key, buf,
                            sizeof buf), "a signed header missing");
}
