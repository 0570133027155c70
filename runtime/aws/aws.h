/*
 * aws.h — Amazon EventBridge compatibility (docs/aws.md): the AWS wire protocol for events
 * (POST / with X-Amz-Target: AWSEvents.PutEvents or AWSEvents.TestEventPattern, JSON 1.1), the
 * AWS event envelope, and Signature Version 4 checked against the access keys the rules declare.
 * The door of runtime/aws/: protocol.c (the two actions, the keys), envelope.c (the envelope's
 * shape), sigv4.c (signatures).
 */
#ifndef EBR_AWS_H
#define EBR_AWS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Signature Version 4 (sigv4.c) ------------------------------------------------------------ */

/* A request as it came, for its signature: header(arg, name) gives a header's value (the name
 * matched without regard to case: sigv4.c asks in lower case, and for SignedHeaders' names as
 * the client wrote them; NULL when absent; a header sent twice: its values joined by ",").  The
 * value need last only until header's next call: sigv4.c copies what it keeps. */
typedef struct {
    const char *method;                 /* "POST" */
    const char *path;                   /* the request target's path as sent ("/"), not decoded */
    const char *query;                  /* the query string as sent, without '?'; "" for none */
    const char *(*header)(void *arg, const char *name);
    void *arg;
    const void *body;
    size_t body_len;
    int64_t now;                        /* the time to check X-Amz-Date against, Unix seconds */
} aws_sig_request;

typedef struct {
    const char *access_key;             /* "AKIA..." */
    const char *secret;
} aws_key;

/* What the check found.  On failure: status (HTTP), code (AWS's error code, the answer's
 * "__type") and message say why, in AWS's words as far as AWS documents them; never a secret.
 * On success: ok, key, status 200, code "". */
typedef struct {
    bool ok;
    int key;                            /* the index in keys of the key that signed; -1
                                         * unless ok */
    char access_key[129];               /* the access key the request names ("" if none) */
    char region[64], service[64];       /* its credential scope's ("" if none) */
    unsigned status;                    /* 400 or 403; 500 if OpenSSL or memory failed */
    const char *code;                   /* "IncompleteSignature", "MissingAuthenticationToken",
                                         * "InvalidClientTokenId", "SignatureDoesNotMatch",
                                         * "RequestExpired"; "InternalFailure" with 500 */
    char message[512];
} aws_sig_result;

/* How far X-Amz-Date may be from now, either way (AWS: 15 minutes). */
#define AWS_SIG_SKEW_SECONDS (15 * 60)

/* Checks the request's Authorization header (AWS4-HMAC-SHA256; Credential, SignedHeaders,
 * Signature) against keys[0..nkeys): the access key must be one of them, the signature the one
 * its secret makes over the canonical request (method, path, query, the signed headers, the
 * body's SHA-256), with X-Amz-Date within AWS_SIG_SKEW_SECONDS of r->now and on the
 * credential's date.  Fills *out either way (access key, region and service also when the key
 * or the signature is wrong, once the header has been read whole). */
bool aws_sig_verify(const aws_sig_request *r, const aws_key *keys, size_t nkeys,
                    aws_sig_result *out);

/* Reads the credential scope of an Authorization header without checking anything: its
 * access key, region and service (empty strings when it cannot be read). */
void aws_sig_scope(const char *authorization, char *access_key, size_t akcap, char *region,
                   size_t rcap, char *service, size_t scap);

/* Signs a request as an AWS client would (for the tests and tools): the Authorization header's
 * value, in out[0..cap), for method/path/query, the headers named in signed (lower case,
 * ';'-separated, sorted; "host" among them) found through header(), the body, date
 * "YYYYMMDDTHHMMSSZ" (the X-Amz-Date the request carries), region and service ("events").
 * r->now is not read.  False, out undefined, for a date or scope it cannot sign, a signed
 * header header() does not give, a signed X-Amz-Content-Sha256 that is not the body's SHA-256,
 * or too small a cap. */
bool aws_sig_sign(const aws_sig_request *r, const char *signed_headers, const char *amz_date,
                  const char *region, const char *service, const aws_key *key, char *out,
                  size_t cap);

/* ---- the daemon's side (protocol.c) ----------------------------------------------------------- */

#include "../../vm/vm.h"
struct MHD_Connection;
typedef struct ebd ebd;

/* The aws_access_key options of program p: in the server block a key for every bus, in a bus
 * block a key for that bus (one key id in several blocks: the union); their secrets read from
 * the environment now.  NULL with the reason in err (an unset variable, an empty secret, one key
 * id with two secrets). */
typedef struct aws_keyset aws_keyset;
aws_keyset *aws_keys_load(const vm_program *p, char *err, size_t cap);
void aws_keys_free(aws_keyset *k);

/* Is this request for the AWS endpoint (POST / with an X-Amz-Target header)? */
bool aws_request(struct MHD_Connection *c, const char *url, const char *method);
/* Answers it once its body[0..n) is in: AWSEvents.PutEvents, AWSEvents.TestEventPattern, each
 * signed with a key of the rules (without keys: unsigned, on a loopback listener only); over
 * not 0: the body passed that many bytes and was dropped (413).  Takes d->lock (read) itself.
 * Returns an MHD_Result. */
int aws_serve(struct MHD_Connection *c, ebd *d, const char *body, size_t n, size_t over);

/* ---- the envelope's shape (envelope.c; ebc links it too) -------------------------------------- */

/* Is s[0..n) (valid JSON) an AWS event envelope rather than a CloudEvent: an object with
 * "version": "0", a string "detail-type", an object "detail" and no "specversion"? */
bool aws_is_envelope(const char *s, size_t n);
/* Does it mean to be one (a "detail-type" and no "specversion")?  And is it a whole one: every
 * member of the envelope, of its kind (false with the reason in why)? */
bool aws_looks_like_envelope(const char *s, size_t n);
bool aws_envelope_check(const char *s, size_t n, char *why, size_t cap);

#endif
