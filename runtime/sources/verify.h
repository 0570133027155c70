/*
 * verify.h — a webhook's signature checked (wh_check) and the attributes its provider gives a
 * delivery read (wh_describe), for the webhook source.  Pure functions: the request comes in
 * through a header look-up and the body's bytes, the clock as an argument.  Not a door: the
 * webhook source includes it.
 *
 * The schemes:
 *   github  X-Hub-Signature-256: "sha256=" hex(HMAC-SHA256(secret, body)).
 *   stripe  Stripe-Signature: "t=T,v1=S[,v1=S2...][,v0=...]", each S hex(HMAC-SHA256(secret,
 *           T "." body)); one matching v1 is enough; |now - T| within the tolerance.
 *   hmac    the named header: [prefix] hex or base64 of HMAC-<algorithm>(secret, body).
 */
#ifndef EBR_VERIFY_H
#define EBR_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { WH_GITHUB, WH_STRIPE, WH_HMAC } wh_scheme;

typedef struct {
    wh_scheme scheme;
    const char *secret;           /* the shared secret (bytes of the string) */
    int64_t tolerance_s;          /* stripe: accepted age of the timestamp, default 300 when 0 */
    const char *header;           /* hmac: the header carrying the signature (required) */
    const char *prefix;           /* hmac: text before the signature in the header ("sha256="),
                                   * matched case-insensitively; or NULL */
    bool base64;                  /* hmac: signature in base64 (standard or URL alphabet,
                                   * padding optional); else hex, case-insensitive */
    const char *algorithm;        /* hmac: "sha256" (NULL: the default), "sha1", "sha512" */
} wh_verify;

/* Looks a request header up by name, case-insensitively; NULL when absent.  The value need only
 * last until the next call. */
typedef const char *(*wh_header_fn)(void *arg, const char *name);

/* Whether v can check anything (a secret; stripe: a tolerance >= 0; hmac: a header and a known
 * algorithm): true, or false with why[0..cap) saying what is wrong, for a configuration error. */
bool wh_valid(const wh_verify *v, char *why, size_t cap);

/* 0: the request (headers by h(arg, name), body[0..n)) is signed by v's secret.  401: it is not,
 * and why[0..cap) says what failed in words for the sender's operator, never the expected
 * signature.  500: v is not valid (wh_valid) or the signature could not be computed (libcrypto
 * failed); why says so.  now: Unix seconds, for Stripe's tolerance.  The signature is checked before Stripe's timestamp:
 * only a signed timestamp is worth a word about the clock. */
int wh_check(const wh_verify *v, wh_header_fn h, void *arg, const char *body, size_t n,
             int64_t now, char *why, size_t cap);

/* The attributes the provider gives a delivery, for the CloudEvent made of it.  Strings are
 * copied into the fixed buffers (cut if longer; empty when unknown). */
typedef struct {
    char type[256];
    char id[256];
    char source[512];
    char subject[256];
    int64_t time_ms;              /* 0: none */
} wh_attrs;

/* Fills out from the request:
 *   github  type "com.github." event ["." suffix], event from X-GitHub-Event, the suffix and
 *           the subject by the event as the CloudEvents GitHub adapter says (most: the body's
 *           action; create / delete: ref_type; ...); id X-GitHub-Delivery; source the
 *           repository's html_url (else the organization's page, else https://github.com).
 *   stripe  type "com.stripe." body.type; id body.id; source https://dashboard.stripe.com
 *           [/ body.account][/test when body.livemode is false]; subject data.object.id;
 *           time_ms body.created * 1000.
 *   hmac    id the header id_header when given; the rest empty (the source's own settings).
 * id_header, when given, also stands in for a github or stripe id that is missing.  A body that
 * is not JSON leaves what comes from it empty. */
void wh_describe(const wh_verify *v, wh_header_fn h, void *arg, const char *body, size_t n,
                 const char *id_header, wh_attrs *out);

#endif
