/*
 * protocol.c — the AWS wire protocol for events (docs/aws.md): POST / with
 * X-Amz-Target: AWSEvents.PutEvents or AWSEvents.TestEventPattern and a JSON 1.1 body, as the
 * AWS CLI and SDKs send them, answered in AWS's shapes; the access keys the rules declare
 * (aws_access_key) and the AWS event envelope that PutEvents stores.
 *
 * An event put this way is stored as AWS shows events to rules and targets:
 *   {"version":"0","id":UUID,"detail-type":...,"source":...,"account":...,"time":...,
 *    "region":...,"resources":[...],"detail":{...}}
 * so that a pattern written for Amazon EventBridge ("detail-type", "detail": {...}) matches it
 * unchanged.  Requests are rare next to events (at most 10 entries each): cJSON reads them.
 */
#define _GNU_SOURCE
#include <sys/socket.h>
#include <microhttpd.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "aws.h"
#include "../ebd_int.h"
#include "../center/center.h"
#include "../center/trace.h"
#include "../schema/schema.h"
#include "../../compiler/compiler.h"

#define MAX_ENTRIES 10                        /* PutEvents: entries per call (AWS's quota) */
#define MAX_ENTRIES_BYTES (256u * 1024)       /* PutEvents: the entries' size, AWS's way */
#define MAX_DETAIL_TYPE 128                   /* the API Reference's limits, in characters */
#define MAX_TRACE_HEADER 500
#define MAX_RESOURCE 2048
#define MAX_EVENT_PATTERN 4096
#define DEFAULT_ACCOUNT "000000000000"
#define DEFAULT_REGION "us-east-1"

/* ---- access keys ------------------------------------------------------------------------------ */

typedef struct {
    char *id, *secret;
    char account[13];
    bool has_account;             /* (an account given, which another declaration must repeat) */
    bool all;                     /* declared in the server block: every bus */
    bool *bus;                    /* else by p's bus index: the buses that declare it */
} key_entry;

struct aws_keyset {
    key_entry *v;
    aws_key *keys;                /* v's ids and secrets, as aws_sig_verify takes them */
    size_t n;
    uint32_t nbuses;
};

void aws_keys_free(aws_keyset *k)
{
    if (!k)
        return;
    for (size_t i = 0; i < k->n; i++) {
        free(k->v[i].id);
        if (k->v[i].secret)
            memset(k->v[i].secret, 0, strlen(k->v[i].secret));
        free(k->v[i].secret);
        free(k->v[i].bus);
    }
    free(k->v);
    free(k->keys);
    free(k);
}

static bool cfg_is(const vm_program *p, vm_str s, const char *w)
{
    return s.len == strlen(w) && !memcmp(vm_s(p, s), w, s.len);
}

/* Adds option o (aws_access_key ...) of bus pbus (VM_NONE: the server block) to k. */
static bool add_key(aws_keyset *k, const vm_program *p, const vm_cfg *o, uint32_t pbus, char *err,
                    size_t cap)
{
    const vm_cfg *id = ebd_cfg_child(p, o, 0), *sec = ebd_cfg_child(p, o, 2);
    const vm_cfg *acct = ebd_cfg_child(p, o, 4);
    if (!id || !sec) {
        snprintf(err, cap, "aws_access_key: malformed");
        return false;
    }
    char why[300] = "";
    char *secret = ebd_cfg_text(p, sec, why, sizeof why);
    if (!secret) {
        snprintf(err, cap, "aws_access_key \"%.*s\": %s", (int)id->str.len, vm_s(p, id->str),
                 why[0] ? why : "out of memory");
        return false;
    }
    if (!secret[0]) {
        snprintf(err, cap, "aws_access_key \"%.*s\": the secret is empty", (int)id->str.len,
                 vm_s(p, id->str));
        free(secret);
        return false;
    }
    key_entry *e = NULL;
    for (size_t i = 0; i < k->n && !e; i++)
        if (strlen(k->v[i].id) == id->str.len && !memcmp(k->v[i].id, vm_s(p, id->str), id->str.len))
            e = &k->v[i];
    if (e && strcmp(e->secret, secret) != 0) {
        snprintf(err, cap, "aws_access_key \"%s\" is declared twice with two secrets", e->id);
        free(secret);
        return false;
    }
    if (!e) {
        key_entry *v = realloc(k->v, (k->n + 1) * sizeof *v);
        if (!v) {
            free(secret);
            snprintf(err, cap, "out of memory");
            return false;
        }
        k->v = v;
        e = &k->v[k->n++];
        memset(e, 0, sizeof *e);
        e->id = strndup(vm_s(p, id->str), id->str.len);
        e->bus = calloc(k->nbuses ? k->nbuses : 1, sizeof *e->bus);
        e->secret = secret;
        snprintf(e->account, sizeof e->account, "%s", DEFAULT_ACCOUNT);
        if (!e->id || !e->bus) {
            snprintf(err, cap, "out of memory");
            return false;
        }
    } else {
        free(secret);
    }
    if (acct) {
        char a[13];
        snprintf(a, sizeof a, "%.*s", (int)acct->str.len, vm_s(p, acct->str));
        if (e->has_account && strcmp(e->account, a) != 0) {
            snprintf(err, cap, "aws_access_key \"%s\" is declared twice with two accounts",
                     e->id);
            return false;
        }
        snprintf(e->account, sizeof e->account, "%s", a);
        e->has_account = true;
    }
    if (pbus == VM_NONE)
        e->all = true;
    else
        e->bus[pbus] = true;
    return true;
}

aws_keyset *aws_keys_load(const vm_program *p, char *err, size_t cap)
{
    aws_keyset *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    k->nbuses = p->nbuses;
    for (uint32_t i = 0; i < p->nserver; i++) {
        const vm_cfg *o = &p->cfgs[p->server0 + i];
        if (o->type == VM_CFG_OPTION && cfg_is(p, o->key, "aws_access_key") &&
            !add_key(k, p, o, VM_NONE, err, cap))
            goto bad;
    }
    for (uint32_t b = 0; b < p->nbuses; b++)
        for (uint32_t i = 0; i < p->buses[b].nopt; i++) {
            const vm_cfg *o = &p->cfgs[p->buses[b].opt0 + i];
            if (o->type == VM_CFG_OPTION && cfg_is(p, o->key, "aws_access_key") &&
                !add_key(k, p, o, b, err, cap)) {
                char tmp[600];
                snprintf(tmp, sizeof tmp, "bus '%s': %s", vm_s(p, p->buses[b].name), err);
                snprintf(err, cap, "%s", tmp);
                goto bad;
            }
        }
    if (k->n && !(k->keys = malloc(k->n * sizeof *k->keys))) {
        snprintf(err, cap, "out of memory");
        goto bad;
    }
    for (size_t i = 0; i < k->n; i++)
        k->keys[i] = (aws_key){ k->v[i].id, k->v[i].secret };
    return k;
bad:
    aws_keys_free(k);
    return NULL;
}

/* ---- answers ------------------------------------------------------------------------------------ */

/* A random (version 4) UUID.  Should the kernel give no random bytes (it blocks only until its
 * pool is ready, at boot), the time and a counter make it at least unique in this process. */
static void uuid4(char out[37])
{
    static _Atomic uint64_t counter;
    unsigned char r[16];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t k = getrandom(r + got, sizeof r - got, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    if (got < sizeof r) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t a = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        uint64_t b = atomic_fetch_add(&counter, 1) ^ ((uint64_t)getpid() << 40);
        memcpy(r, &a, 8);
        memcpy(r + 8, &b, 8);
    }
    r[6] = (unsigned char)((r[6] & 0x0F) | 0x40);              /* version 4 */
    r[8] = (unsigned char)((r[8] & 0x3F) | 0x80);              /* RFC 4122 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12],
             r[13], r[14], r[15]);
}

/* Queues an answer as AWS's JSON 1.1 services give it: the body, its content type, a request
 * id, and for an error its type in x-amzn-ErrorType too. */
static int answer(struct MHD_Connection *c, unsigned status, const sbuf *b, const char *error_type)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(b->n, b->v ? b->v : (char *)"",
                                                             MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    char rid[37];
    uuid4(rid);
    MHD_add_response_header(r, "Content-Type", "application/x-amz-json-1.1");
    MHD_add_response_header(r, "x-amzn-RequestId", rid);
    if (error_type)
        MHD_add_response_header(r, "x-amzn-ErrorType", error_type);
    mt_answered(status);
    int ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

/* {"__type": code, "message": msg}: the error shape of AWS's JSON protocols. */
static int fail(struct MHD_Connection *c, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(struct MHD_Connection *c, unsigned status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sbuf b = { 0 };
    sb_puts(&b, "{\"__type\":");
    sb_json_string(&b, code, strlen(code));
    sb_puts(&b, ",\"message\":");
    sb_json_string(&b, msg, strlen(msg));
    sb_puts(&b, "}");
    int ok = answer(c, status, &b, code);
    sb_free(&b);
    return ok;
}

/* ---- the request: whose it is ------------------------------------------------------------------- */

bool aws_request(struct MHD_Connection *c, const char *url, const char *method)
{
    return !strcmp(method, "POST") && !strcmp(url, "/") &&
           MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Amz-Target") != NULL;
}

typedef struct {
    struct MHD_Connection *c;
    sbuf joined;                  /* a header sent more than once: its values joined by "," */
} hdrs;

typedef struct {
    const char *name;
    hdrs *h;
    size_t count;
} join_ctx;

static enum MHD_Result join_one(void *arg, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    (void)kind;
    join_ctx *j = arg;
    if (strcasecmp(key, j->name) != 0)
        return MHD_YES;
    if (j->count++)
        sb_puts(&j->h->joined, ",");
    sb_puts(&j->h->joined, value ? value : "");
    return MHD_YES;
}

/* aws_sig_request's header(): the value lasts until the next call (sigv4.c copies what it keeps). */
static const char *header_of(void *arg, const char *name)
{
    hdrs *h = arg;
    join_ctx j = { name, h, 0 };
    h->joined.n = 0;
    MHD_get_connection_values(h->c, MHD_HEADER_KIND, join_one, &j);
    if (!j.count || h->joined.oom)
        return NULL;                  /* (out of memory: absent, so the check fails) */
    sb_put(&h->joined, "", 0);        /* (a terminated string even when empty) */
    return h->joined.v;
}

/* Who may do what: the key that signed (NULL when the daemon declares no key), its region. */
typedef struct {
    const key_entry *key;
    char region[64];
} caller;

/* Checks the request's signature against d's keys (under d->lock): true, or false with the
 * refusal answered into *r. */
static bool authenticate(struct MHD_Connection *c, ebd *d, const char *body, size_t n, caller *who,
                         int *r)
{
    const aws_keyset *k = d->rules->aws;
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!k || k->n == 0) {
        /* No keys: served on loopback alone, as a bus without a token is. */
        if (!d->loopback) {
            *r = fail(c, 403, "AccessDeniedException", "this ebd listens on %s, which is not a "
                      "loopback address, and its rules declare no aws_access_key: AWS clients "
                      "need one there (docs/aws.md)", d->listen);
            return false;
        }
        char ak[129], svc[64];
        aws_sig_scope(auth ? auth : "", ak, sizeof ak, who->region, sizeof who->region, svc,
                      sizeof svc);
        who->key = NULL;
        return true;
    }
    hdrs h = { .c = c };
    aws_sig_request q = { .method = "POST", .path = "/", .query = "", .header = header_of,
                          .arg = &h, .body = body, .body_len = n, .now = (int64_t)time(NULL) };
    aws_sig_result res;
    bool ok = aws_sig_verify(&q, k->keys, k->n, &res);
    sb_free(&h.joined);
    if (!ok) {
        *r = fail(c, res.status ? res.status : 403, res.code ? res.code : "AccessDeniedException",
                  "%s", res.message);
        return false;
    }
    /* A signature for another service (an s3 or sqs request of the same key) is not one for
     * this: AWS refuses it so, and so does ebd.  (No region is ebd's: any is taken.) */
    if (strcmp(res.service, "events") != 0) {
        *r = fail(c, 403, "SignatureDoesNotMatch", "Credential should be scoped to correct "
                  "service: 'events'.");
        return false;
    }
    who->key = &k->v[res.key];
    snprintf(who->region, sizeof who->region, "%s", res.region);
    return true;
}

/* ---- PutEvents ---------------------------------------------------------------------------------- */

typedef struct {
    const char *code;             /* NULL: stored */
    char message[300];
    char id[37];
    sbuf ev;                      /* the envelope */
    uint32_t bus;                 /* its bus: the daemon's index (d->buses), VM_NONE if none */
    mt_reason why;                /* a refusal's, for the metrics */
} entry;

/* A string member of o, its length in *n: NULL when absent or null; *bad when it is another
 * kind, or holds U+0000 (the request is read by sch_parse, which keeps what follows one: cJSON
 * would cut "a\u0000b" to "a" and store a value the client never sent). */
static const char *str_member(const cJSON *o, const char *name, size_t *n, bool *bad)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    *n = 0;
    if (!v || cJSON_IsNull(v))
        return NULL;
    if (!cJSON_IsString(v) || v->valueint > 0) {      /* (valueint: sch_parse kept a NUL) */
        *bad = true;
        return NULL;
    }
    *n = strlen(v->valuestring);
    return v->valuestring;
}

/* Does object o (or one of its objects, the entries) give a member twice?  AWS's readers and
 * cJSON would each keep one of them, not the same one: refused rather than guessed. */
static bool duplicate_keys(const cJSON *o)
{
    for (const cJSON *a = o ? o->child : NULL; a; a = a->next) {
        for (const cJSON *b = a->next; b; b = b->next)
            if (a->string && b->string && !strcmp(a->string, b->string))
                return true;
        if ((cJSON_IsObject(a) || cJSON_IsArray(a)) && duplicate_keys(a))
            return true;
    }
    return false;
}

/* The characters (code points) of UTF-8 text s[0..n): AWS's length limits count these. */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* Does entry j (the n-th, from 1) break a length limit of the API's own (TraceHeader, a
 * resource)?  Those fail the whole request, as AWS's validation does; msg says which. */
static bool entry_limits(const cJSON *j, int n, char *msg, size_t cap)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "TraceHeader"), *x;
    if (cJSON_IsString(t)) {
        size_t k = utf8_chars(t->valuestring, sch_strlen(t));
        if (k < 1 || k > MAX_TRACE_HEADER) {
            snprintf(msg, cap, "1 validation error detected: Value at 'entries.%d.member."
                     "traceHeader' failed to satisfy constraint: Member must have length %s %d",
                     n, k < 1 ? "greater than or equal to" : "less than or equal to",
                     k < 1 ? 1 : MAX_TRACE_HEADER);
            return true;
        }
    }
    int r = 0;
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(j, "Resources")) {
        r++;
        if (cJSON_IsString(x) && utf8_chars(x->valuestring, sch_strlen(x)) > MAX_RESOURCE) {
            snprintf(msg, cap, "1 validation error detected: Value at 'entries.%d.member."
                     "resources.%d.member' failed to satisfy constraint: Member must have length "
                     "less than or equal to %d", n, r, MAX_RESOURCE);
            return true;
        }
    }
    return false;
}

/* Has entry j the three members an event needs (whether or not their values will do)? */
static bool entry_whole(const cJSON *j)
{
    static const char *const need[] = { "Source", "DetailType", "Detail" };
    for (size_t i = 0; i < 3; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, need[i]);
        if (!cJSON_IsString(v) || !v->valuestring[0])
            return false;
    }
    return true;
}

/* An entry's size as AWS counts it for the 256 KB limit: Time 14 bytes when given, and the
 * UTF-8 bytes of Source, DetailType, Detail and each resource. */
static size_t entry_size(const cJSON *e)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "Time");
    size_t n = t && !cJSON_IsNull(t) ? 14 : 0;
    static const char *const fields[] = { "Source", "DetailType", "Detail" };
    for (size_t i = 0; i < 3; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, fields[i]);
        if (cJSON_IsString(v))
            n += sch_strlen(v);
    }
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(e, "Resources"), *x;
    cJSON_ArrayForEach(x, r)
        if (cJSON_IsString(x))
            n += sch_strlen(x);
    return n;
}

/* The entry's time: Time as epoch seconds (what the SDKs send), or an RFC 3339 text; absent or
 * null: now.  Written as AWS writes an event's time (seconds, UTC, "Z").  False if Time is not
 * a time from 1970 to 9999. */
static bool entry_time(const cJSON *t, char out[32])
{
    int64_t secs;
    if (!t || cJSON_IsNull(t)) {
        secs = (int64_t)time(NULL);
    } else if (cJSON_IsNumber(t) && t->valuedouble >= 0 && t->valuedouble < 253402300800.0) {
        secs = (int64_t)t->valuedouble;
    } else if (cJSON_IsString(t) && t->valueint == 0) {
        int64_t ms;
        if (!vm_parse_time(t->valuestring, strlen(t->valuestring), &ms) || ms < 0)
            return false;
        secs = ms / 1000;
    } else {
        return false;
    }
    time_t tt = (time_t)secs;
    struct tm tm;
    if (!gmtime_r(&tt, &tm))
        return false;
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return true;
}

/* EventBusName: a name, or an event bus's ARN (arn:PARTITION:events:REGION:ACCOUNT:event-bus/
 * NAME; its region and account are not ebd's to check); absent: "default".  NULL when it is
 * neither (an empty name, another service's ARN). */
static const char *bus_name(const char *s, size_t n)
{
    if (!s)
        return "default";
    if (n == 0)
        return NULL;
    if (strncmp(s, "arn:", 4) != 0)
        return s;
    const char *svc = strchr(s + 4, ':');                  /* past the partition */
    const char *a = svc && !strncmp(svc, ":events:", 8) ? strstr(svc, ":event-bus/") : NULL;
    return a && a[sizeof ":event-bus/" - 1] ? a + sizeof ":event-bus/" - 1 : NULL;
}

static bool may_put(const caller *who, uint32_t pbus)
{
    return !who->key || who->key->all || who->key->bus[pbus];
}

static void set_error(entry *e, mt_reason why, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set_error(entry *e, mt_reason why, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    e->code = code;
    e->why = why;
}

/* The three members every entry needs, in AWS's words when one is missing. */
static bool required(const cJSON *j, const char *name, const char **v, size_t *n, entry *e)
{
    bool bad = false;
    *v = str_member(j, name, n, &bad);
    if (*v && *n && !bad)
        return true;
    if (bad && !strcmp(name, "Detail") && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, name)))
        set_error(e, MT_INVALID, "MalformedDetail", "Detail is malformed.");   /* (a U+0000) */
    else
        set_error(e, MT_INVALID, "InvalidArgument", "Parameter %s is not valid. Reason: %s is a "
                  "required argument.", name, name);
    return false;
}

/* Checks entry j (of size bytes, AWS's count) and makes its envelope into e (or says why not).
 * Under d->lock (read). */
static void make_entry(ebd *d, const caller *who, const cJSON *j, size_t size, entry *e)
{
    e->bus = VM_NONE;
    bool bad = false;
    size_t bnn;
    const char *given = str_member(j, "EventBusName", &bnn, &bad);
    const char *bn = bus_name(given, bnn);
    ebd_bus view;
    bool known = bn && !bad && ebd_bus_view(d, bn, strlen(bn), &view);
    if (known)
        e->bus = d->rules->bus_of[view.pbus];        /* (its metrics count even a refusal) */
    const char *source, *dt, *detail;
    size_t sn, dtn, dn;
    if (!required(j, "Source", &source, &sn, e) || !required(j, "DetailType", &dt, &dtn, e) ||
        !required(j, "Detail", &detail, &dn, e))
        return;
    if (utf8_chars(dt, dtn) > MAX_DETAIL_TYPE) {
        set_error(e, MT_INVALID, "InvalidArgument", "Parameter DetailType is not valid. Reason: "
                  "DetailType is longer than %d characters.", MAX_DETAIL_TYPE);
        return;
    }
    size_t at;
    const char *what;
    if (!vm_json_check(detail, dn, &at, &what) || detail[vm_json_ws(detail, dn, 0)] != '{') {
        set_error(e, MT_INVALID, "MalformedDetail", "Detail is malformed.");
        return;
    }
    if (!bn || bad) {
        set_error(e, MT_INVALID, "InvalidArgument", "Parameter EventBusName is not valid.");
        return;
    }
    if (!known) {
        /* (Amazon EventBridge takes such an event and drops it; ebd says so instead) */
        set_error(e, MT_UNKNOWN_BUS, "InvalidArgument", "Parameter EventBusName is not valid. "
                  "Reason: event bus '%.200s' does not exist.", bn);
        return;
    }
    if (!may_put(who, view.pbus)) {
        set_error(e, MT_UNAUTHORIZED, "AccessDeniedException", "the access key %s may not put "
                  "events on bus '%.200s'.", who->key->id, bn);
        return;
    }
    if (!who->key && view.token) {
        set_error(e, MT_UNAUTHORIZED, "AccessDeniedException", "bus '%.200s' has a token: AWS "
                  "clients put events on it signed with an aws_access_key of the rules "
                  "(docs/aws.md).", bn);
        return;
    }
    if (strncmp(source, "aws.", 4) == 0) {
        set_error(e, MT_INVALID, "NotAuthorizedForSourceException", "Not authorized for the source.");
        return;
    }
    char when[32];
    if (!entry_time(cJSON_GetObjectItemCaseSensitive(j, "Time"), when)) {
        set_error(e, MT_INVALID, "InvalidArgument", "Parameter Time is not valid.");
        return;
    }
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(j, "Resources"), *x;
    bool res_ok = !res || cJSON_IsNull(res) || cJSON_IsArray(res);
    cJSON_ArrayForEach(x, res)
        res_ok = res_ok && cJSON_IsString(x) && x->valueint == 0;
    if (!res_ok) {
        set_error(e, MT_INVALID, "InvalidArgument", "Parameter Resources is not valid.");
        return;
    }
    /* The bus's max_event_size counts as AWS counts an entry (the envelope's own members are
     * not the client's), so an entry AWS takes fits a bus of the default 256 KiB. */
    if (size > view.max_event) {
        set_error(e, MT_TOO_LARGE, "InvalidArgument", "the entry is %zu bytes, over bus "
                  "'%.200s''s limit of %" PRIu64 " bytes (max_event_size).", size, bn,
                  view.max_event);
        return;
    }
    uuid4(e->id);
    sbuf *b = &e->ev;
    sb_printf(b, "{\"version\":\"0\",\"id\":\"%s\",\"detail-type\":", e->id);
    sb_json_string(b, dt, dtn);
    sb_puts(b, ",\"source\":");
    sb_json_string(b, source, sn);
    sb_printf(b, ",\"account\":\"%s\",\"time\":\"%s\",\"region\":",
              who->key ? who->key->account : DEFAULT_ACCOUNT, when);
    const char *region = who->region[0] ? who->region : DEFAULT_REGION;
    sb_json_string(b, region, strlen(region));
    sb_puts(b, ",\"resources\":[");
    bool first = true;
    cJSON_ArrayForEach(x, res) {
        sb_puts(b, first ? "" : ",");
        sb_json_string(b, x->valuestring, strlen(x->valuestring));
        first = false;
    }
    sb_puts(b, "],\"detail\":");
    sb_put(b, detail, dn);                 /* as sent: no number re-encoded, no key reordered */
    sb_puts(b, "}");
    if (b->oom)
        set_error(e, MT_OVERLOADED, "InternalFailure", "out of memory");
}

/* Appends the good entries of bus bi (the daemon's index) with one append; an append that
 * fails fails them (InternalFailure, which AWS clients retry). */
static void store_bus(struct MHD_Connection *c, ebd *d, entry *es, size_t n, uint32_t bi)
{
    ebd_bus *b = d->buses[bi];
    store_entry se[MAX_ENTRIES];
    struct { const char *id; size_t len; } tr[MAX_ENTRIES];   /* (as trace_received reads ids) */
    char idq[MAX_ENTRIES][40];                                /* each id as JSON text */
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!es[i].code && es[i].bus == bi) {
            se[k] = (store_entry){ es[i].ev.v, (uint32_t)es[i].ev.n, 0, NULL };
            snprintf(idq[k], sizeof idq[k], "\"%s\"", es[i].id);
            tr[k].id = idq[k];
            tr[k].len = strlen(idq[k]);
            k++;
        }
    if (!k)
        return;
    uint64_t offs[MAX_ENTRIES];
    if (ebd_bus_store(b, se, k, offs, NULL) != STORE_OK) {   /* (its ids are new: no dedup) */
        ebd_log(EBD_ERROR, "msg=\"append failed\" bus=%s error=\"%s\"", b->name, store_error(b->s));
        for (size_t i = 0; i < n; i++)
            if (!es[i].code && es[i].bus == bi)
                set_error(&es[i], MT_STORAGE, "InternalFailure", "bus '%.200s' cannot store "
                          "events now", b->name);
        return;
    }
    mt_ingested(b, k);
    trace_received(c, b, offs, k, &tr[0].id, &tr[0].len, sizeof tr[0], NULL);
}

static int put_events(struct MHD_Connection *c, ebd *d, const caller *who, const cJSON *req)
{
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(req, "Entries");
    if (!list || cJSON_IsNull(list))
        return fail(c, 400, "ValidationException", "1 validation error detected: Value null at "
                    "'entries' failed to satisfy constraint: Member must not be null");
    if (!cJSON_IsArray(list))
        return fail(c, 400, "SerializationException", "Entries is not a list");
    int count = cJSON_GetArraySize(list);
    if (count < 1 || count > MAX_ENTRIES)
        return fail(c, 400, "ValidationException", "1 validation error detected: Value at "
                    "'entries' failed to satisfy constraint: Member must have length %s %d",
                    count < 1 ? "greater than or equal to" : "less than or equal to",
                    count < 1 ? 1 : MAX_ENTRIES);
    size_t total = 0, size[MAX_ENTRIES], n = 0;
    const cJSON *j;
    char why[300];
    bool any_whole = false;
    cJSON_ArrayForEach(j, list) {
        if (!cJSON_IsObject(j))
            return fail(c, 400, "SerializationException", "an entry of Entries is not an object");
        if (entry_limits(j, (int)n + 1, why, sizeof why))
            return fail(c, 400, "ValidationException", "%s", why);
        total += size[n++] = entry_size(j);
        any_whole = any_whole || entry_whole(j);
    }
    /* An entry without them fails alone, a request with no entry that has them fails whole:
     * AWS's API_PutEventsRequestEntry says so (not with which error; this is its generic one). */
    if (!any_whole)
        return fail(c, 400, "ValidationException", "no entry has Source, DetailType and Detail: "
                    "each is required");
    if (total > MAX_ENTRIES_BYTES)
        return fail(c, 400, "ValidationException", "Total size of the entries in the request is "
                    "over the limit.");
    entry es[MAX_ENTRIES];
    memset(es, 0, sizeof es);
    n = 0;
    cJSON_ArrayForEach(j, list) {
        make_entry(d, who, j, size[n], &es[n]);
        n++;
    }
    for (size_t i = 0; i < n; i++) {          /* each bus once, in the order it first comes */
        bool seen = false;
        for (size_t k = 0; k < i && !seen; k++)
            seen = !es[k].code && es[k].bus == es[i].bus;
        if (!es[i].code && !seen)
            store_bus(c, d, es, n, es[i].bus);
    }
    sbuf b = { 0 };
    size_t failed = 0;
    for (size_t i = 0; i < n; i++)
        failed += es[i].code != NULL;
    sb_printf(&b, "{\"FailedEntryCount\":%zu,\"Entries\":[", failed);
    for (size_t i = 0; i < n; i++) {
        sb_puts(&b, i ? "," : "");
        if (es[i].code) {
            sb_puts(&b, "{\"ErrorCode\":");
            sb_json_string(&b, es[i].code, strlen(es[i].code));
            sb_puts(&b, ",\"ErrorMessage\":");
            sb_json_string(&b, es[i].message, strlen(es[i].message));
            sb_puts(&b, "}");
            /* (an unknown bus counts under bus "", as ingest counts a 404) */
            mt_refused(es[i].bus == VM_NONE || es[i].why == MT_UNKNOWN_BUS ? NULL
                       : d->buses[es[i].bus], es[i].why, 1);
        } else {
            sb_printf(&b, "{\"EventId\":\"%s\"}", es[i].id);
        }
        sb_free(&es[i].ev);
    }
    sb_puts(&b, "]}");
    int ok = b.oom ? fail(c, 500, "InternalFailure", "out of memory") : answer(c, 200, &b, NULL);
    sb_free(&b);
    return ok;
}

/* ---- TestEventPattern ----------------------------------------------------------------------------- */

/* The fields an event given to TestEventPattern must have (AWS's list). */
static const char *const required_fields[] = { "id", "account", "source", "time", "region",
                                               "resources", "detail-type" };

static int test_event_pattern(struct MHD_Connection *c, const cJSON *req)
{
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(req, "EventPattern");
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(req, "Event");
    if (!cJSON_IsString(pat) || !cJSON_IsString(ev))
        return fail(c, 400, "ValidationException", "1 validation error detected: Value null at "
                    "'%s' failed to satisfy constraint: Member must not be null",
                    !cJSON_IsString(pat) ? "eventPattern" : "event");
    const char *ps = pat->valuestring, *es = ev->valuestring, *what = "it holds U+0000";
    size_t pn = sch_strlen(pat), en = sch_strlen(ev), at;
    if (utf8_chars(ps, pn) > MAX_EVENT_PATTERN)
        return fail(c, 400, "ValidationException", "1 validation error detected: Value at "
                    "'eventPattern' failed to satisfy constraint: Member must have length less "
                    "than or equal to %d", MAX_EVENT_PATTERN);
    bool json = vm_json_check(ps, pn, &at, &what);
    if (!json || ps[vm_json_ws(ps, pn, 0)] != '{')
        return fail(c, 400, "InvalidEventPatternException", "Event pattern is not valid. Reason: "
                    "%s", json ? "it is not a JSON object" : what);
    if (!vm_json_check(es, en, &at, &what))
        return fail(c, 400, "ValidationException", "Parameter Event is not valid. Reason: %s "
                    "(at byte %zu)", what, at);
    cJSON *ej = cJSON_ParseWithLength(es, en);
    bool eok = cJSON_IsObject(ej);
    const char *missing = NULL;
    for (size_t i = 0; eok && i < sizeof required_fields / sizeof *required_fields && !missing; i++)
        if (!cJSON_GetObjectItemCaseSensitive(ej, required_fields[i]))
            missing = required_fields[i];
    cJSON_Delete(ej);
    if (!eok || missing)
        return fail(c, 400, "ValidationException", "Parameter Event is not valid. Reason: %s%s%s",
                    !eok ? "it is not a JSON object (or is nested deeper than cJSON reads)"
                         : "the event has no '", missing ? missing : "", missing ? "' field" : "");
    /* The pattern through the same compiler and VM as a rule's `pattern {...}`: the JSON was
     * checked whole above, so the text around it is all there is of the rule. */
    sbuf src = { 0 };
    sb_puts(&src, "bus test_event_pattern {}\nrule event_pattern on test_event_pattern {\n"
                  "  pattern ");
    sb_put(&src, ps, pn);
    sb_puts(&src, "\n}\n");
    char *diag = NULL;
    size_t dlen = 0;
    FILE *df = open_memstream(&diag, &dlen);
    cc_result cr = { 0 };
    vm_program *p = src.oom || !df ? NULL
                  : cc_compile_text_flags("EventPattern", src.v, src.n, CC_NO_FILES, df, &cr);
    if (df)
        fclose(df);
    sb_free(&src);
    int ok;
    if (!p) {
        /* the first line of the compiler's message, without its position in the made-up text */
        char reason[600] = "it does not compile";
        const char *m = diag ? strstr(diag, "error: ") : NULL;
        if (m) {
            m += 7;
            size_t k = strcspn(m, "\n");
            snprintf(reason, sizeof reason, "%.*s", (int)(k < 500 ? k : 500), m);
        }
        ok = fail(c, 400, "InvalidEventPatternException", "Event pattern is not valid. Reason: %s",
                  reason);
    } else {
        vm_options o = vm_program_options(p);
        vm_ctx *x = vm_ctx_new(p, &o);
        const uint32_t *m = NULL;
        size_t nm = 0;
        vm_error err;
        vm_status st = x ? vm_match(x, 0, es, en, &m, &nm, &err) : VM_ERR_NOMEM;
        if (st != VM_OK && st != VM_ERR_RULE) {
            ok = fail(c, 400, "ValidationException", "Parameter Event is not valid. Reason: %s",
                      err.msg[0] ? err.msg : "it cannot be matched");
        } else {
            sbuf b = { 0 };
            sb_printf(&b, "{\"Result\":%s}", nm > 0 ? "true" : "false");
            ok = answer(c, 200, &b, NULL);
            sb_free(&b);
        }
        vm_ctx_free(x);
        vm_program_free(p);
    }
    free(diag);
    return ok;
}

/* ---- the entry point ------------------------------------------------------------------------------ */

int aws_serve(struct MHD_Connection *c, ebd *d, const char *body, size_t n, size_t over)
{
    const char *target = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Amz-Target");
    const char *action = target && !strncmp(target, "AWSEvents.", 10) ? target + 10 : NULL;
    bool put = action && !strcmp(action, "PutEvents");
    bool test = action && !strcmp(action, "TestEventPattern");
    if (!put && !test)
        return fail(c, 400, "UnknownOperationException", "ebd serves the actions "
                    "AWSEvents.PutEvents and AWSEvents.TestEventPattern, not '%.100s' "
                    "(docs/aws.md)", target ? target : "");
    if (over)
        return fail(c, 413, "RequestEntityTooLargeException", "the request is over the %zu "
                    "bytes a request may carry", over);
    /* The JSON protocol sends no query string, and the signature would not cover one here. */
    if (MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, NULL, NULL) > 0)
        return fail(c, 400, "SerializationException", "the AWS JSON protocol sends no query string");
    cJSON *req = sch_parse(body, n, NULL);
    int r = 0;
    caller who = { 0 };
    pthread_rwlock_rdlock(&d->lock);
    bool allowed = authenticate(c, d, body, n, &who, &r);
    if (allowed && !cJSON_IsObject(req))
        r = fail(c, 400, "SerializationException", "the body is not a JSON object");
    else if (allowed && duplicate_keys(req))
        r = fail(c, 400, "SerializationException", "the body gives a member twice");
    else if (allowed && put)
        r = put_events(c, d, &who, req);
    pthread_rwlock_unlock(&d->lock);
    if (allowed && test && cJSON_IsObject(req) && !duplicate_keys(req))
        r = test_event_pattern(c, req);       /* (the compiler's work, without the lock) */
    cJSON_Delete(req);
    return r;
}
