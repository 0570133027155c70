/*
 * ebd_int.h — what the daemon's parts share: its structures (the daemon, its buses, a loaded
 * ruleset), logging, text buffers, JSON spans (cejson.c) and the doors of its rooms, delivery/
 * and ingest/.  Not a door: the rest of the project sees runtime.h only.
 */
#ifndef EBR_EBD_INT_H
#define EBR_EBD_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "runtime.h"

/* The group (store_cursor_open_group) the routers of every daemon on a shared bus read: its
 * durable consumer on NATS JetStream. */
#define EBD_GROUP "ebd-router"

/* ---- logging: one line per message, key=value (logfmt) ---------------------------------- */

enum { EBD_DEBUG, EBD_INFO, EBD_WARN, EBD_ERROR };
void ebd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s made fit to stand between the quotes of a value (key="..."): '"' and '\\' escaped, a line
 * break as \n, other control characters as \u00XX; cut with "..." to fit out[cap].  Returns out. */
const char *ebd_log_text(const char *s, char *out, size_t cap);

/* ---- clocks, in milliseconds ------------------------------------------------------------- */

#include <time.h>

static inline int64_t ebd_mono_ms(void)          /* for durations and deadlines */
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int64_t ebd_wall_ms(void)          /* Unix time */
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- a growing text buffer -------------------------------------------------------------- */

typedef struct {
    char *v;
    size_t n, cap;
    bool oom;
} sbuf;

void sb_put(sbuf *b, const char *s, size_t n);
void sb_puts(sbuf *b, const char *s);
void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_json_string(sbuf *b, const char *s, size_t n);     /* a quoted, escaped JSON string */
void sb_base64(sbuf *b, const unsigned char *s, size_t n); /* a quoted base64 JSON string */

/* The first 16 bytes of SHA-256 over parts[0..n), each preceded by its length (8 bytes, little
 * endian), so that ("ab","c") and ("a","bc") differ: dedup keys and sources' stable ids.  False
 * when libcrypto failed (out[] then zero). */
bool ebd_digest128(unsigned char out[16], const void *const *parts, const size_t *lens, size_t n);
/* HMAC-SHA256 under key of parts[0..n) one after another (libcrypto): signed deliveries.  False
 * when libcrypto failed. */
bool ebd_hmac_sha256(unsigned char out[32], const char *key, const void *const *parts,
                     const size_t *lens, size_t n);
void sb_free(sbuf *b);

/* ---- JSON text that vm_json_valid has accepted: spans, not a DOM -------------------------- */

typedef struct {
    uint32_t key_off, key_len;    /* the member's name, quotes included */
    uint32_t val_off, val_len;    /* its value's text */
} js_member;

/* Calls fn for each member of the object at s[i] (or each element of the array, key_len 0);
 * stops early when fn returns false, and then returns false. */
bool js_each(const char *s, size_t n, size_t i, bool (*fn)(void *, const js_member *), void *arg);
/* Decodes the JSON string literal s[0..n) (quotes included) into out (at least n bytes);
 * returns the decoded length. */
size_t js_unquote(const char *s, size_t n, char *out);
/* A hexadecimal digit's value, or -1. */
int js_hexval(char c);
/* Is the member's key the given name? */
bool js_key_is(const char *s, const js_member *m, const char *name);
/* Appends member m of s to an object being written in out, after a ',' if *any (then sets it):
 * for rewriting an object less some of its members. */
void js_put_member(sbuf *out, const char *s, const js_member *m, bool *any);

/* ---- CloudEvents (ingest.c) ------------------------------------------------------------- */

/* Checks one event in the JSON format (s[0..n), a valid JSON value): an object with the
 * required attributes (id, source, specversion "1.0", type) as non-empty strings, optional ones
 * of the right type (time RFC 3339, dataschema/source URI-references), extension names of
 * a-z and 0-9, no control character (U+0000-U+001F, U+007F-U+009F) in a string attribute, not
 * both data and data_base64.  On failure writes the reason (naming the attribute) to why and
 * returns false.  *id / *idlen get the id's text (quoted); *nulls (unless NULL) whether an
 * attribute is set to null, which the JSON format says is unset (ce_drop_nulls). */
bool ce_check(const char *s, size_t n, char *why, size_t whycap, const char **id, size_t *idlen,
              bool *nulls);
/* Is member m of event s an attribute set to null (unset, as the JSON format says)?  ("data":
 * null is a null payload, not this.) */
bool ce_null_attribute(const char *s, const js_member *m);
/* Takes the attributes set to null out of event s[0..*n) (one that ce_check passed), in place:
 * the JSON format says a null attribute is unset, and rules then see it unset (`exists`).  The
 * members kept are copied as they are; only the space between them goes.  ("data": null is a
 * null payload, and stays.) */
void ce_drop_nulls(char *s, size_t *n);
/* A binary-mode attribute's header value decoded as the HTTP binding says (the NATS binding
 * alike): its double-quoted strings unescaped (RFC 7230 section 3.2.6), then one round of
 * percent-decoding, into out (n bytes at least), its length in *len.  CE_HV_QUOTE when a
 * quoted string does not end, CE_HV_PERCENT when a '%' at *at (of the unquoted text) is not
 * followed by two hexadecimal digits.  The decoded bytes may be anything: callers check UTF-8. */
enum { CE_HV_OK, CE_HV_QUOTE, CE_HV_PERCENT };
int ce_header_value(const char *v, size_t n, char *out, size_t *len, size_t *at);

/* ---- the daemon ---------------------------------------------------------------------------- */

#include <curl/curl.h>

/* Lets a libcurl handle speak http and https only, whatever the URL: one from the environment
 * (file:///...) must not make it read a local file, nor a redirect take it to another scheme. */
static inline void ebd_curl_http_only(CURL *h)
{
#if LIBCURL_VERSION_NUM >= 0x075500     /* 7.85.0 */
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
}

/* The rooms' types the daemon's structures point to (delivery/delivery.h, ingest/ingest.h). */
typedef struct ebd_target ebd_target;
typedef struct ebd_book ebd_book;         /* per bus, kept across reloads: where each pair stands */
typedef struct ebd_engine ebd_engine;     /* a ruleset's delivery at run time */
typedef struct ebd_dedup ebd_dedup;       /* a bus's de-duplication window */

/* A bus of the daemon: its log stays open across reloads (d->buses holds pointers, so a bus
 * never moves).  What the rules say of it (token, size limit) is in ebd_rules; ingest works on
 * a view that joins both (ebd_bus_view). */
typedef struct ebd_bus {
    char *name;
    store *s;
    ebd_book *book;               /* deliver.c: the pairs' positions, as last committed */
    const char *token;            /* in a view: bearer token for puts, or NULL */
    uint64_t max_event;           /* in a view: the largest event */
    struct mt_bus *mt;            /* center/metrics.c: its counters (NULL: none) */
    const struct sch_bus *schemas; /* in a view: its bound schemas (runtime/schema), or NULL */
    uint32_t pbus;                /* in a view: its index in the rules' program */
    ebd_dedup *dedup;             /* its dedup window (NULL: none ever set) */
} ebd_bus;

typedef struct ebd ebd;
typedef struct ebd_rules ebd_rules;

/* One loaded ruleset with what it needs at run time; replaced whole on reload. */
struct ebd_rules {
    vm_program *p;
    _Atomic bool stop;            /* its delivery: leave after the deliveries in hand */
    ebd_target *targets;          /* one per p->targets */
    size_t npairs;                /* (rule, target) pairs */
    ebd_engine *eng;
    unsigned delivery_threads;    /* server { delivery_threads N }, else the number of cores */
    unsigned delivery_queue;      /* server { delivery_queue N }: a pair's queue bound, else 0 */
    uint32_t *bus_of;             /* p's bus index -> the daemon's bus index */
    char **bus_token;             /* p's bus index -> its token (NULL: none) */
    uint64_t *bus_max;            /* p's bus index -> its max_event_size */
    char *admin_token;
    struct mt_rules *mt;          /* center/metrics.c: its counters, by rule and target index */
    struct sch_set *schemas;      /* the buses' bound schemas (runtime/schema/enforce.c) */
    struct aws_keyset *aws;       /* the access keys AWS clients sign with (runtime/aws) */
    struct src_set *sources;      /* its sources (runtime/sources), NULL: none */
};

struct ebd {
    char *rules_path, *data_dir, *listen;
    bool loopback;
    char *tls_cert, *tls_key;     /* PEM text: the listener speaks HTTPS (NULL: plain HTTP) */
    ebd_bus **buses;
    size_t nbuses, capbuses;
    pthread_rwlock_t lock;        /* rules and buses: ingest reads, reload writes */
    ebd_rules *rules;
    uint64_t generation;          /* bumped with each rules swap, under lock (write) */
    _Atomic bool stopping;        /* the daemon is shutting down: ingest answers 503 */
    pthread_mutex_t reload_mu;
    _Atomic unsigned inflight;    /* ingest requests being handled */
    unsigned max_requests;        /* more at once are answered 429 (--max-requests) */
    /* Ingest's limits (docs/ebd.md, "Limits"): connections served at once, in all and from one
     * client address (0: no limit), beyond which a connection's request is answered 503; the
     * seconds a connection has to send a request's headers (from its opening or its previous
     * answer) and then its body; the bytes of request bodies held at once across requests. */
    unsigned max_connections, max_client_connections;
    unsigned header_timeout, body_timeout;
    uint64_t max_buffered;
    _Atomic uint64_t buffered;    /* body bytes held now (allocated for requests in progress) */
    struct ebd_ingest *ingest;    /* ingest.c's connection table, while the listener runs */
};

/* ebd.c */
bool ebd_reload(ebd *d, sbuf *errors);
ebd_bus *ebd_find_bus(ebd *d, const char *name, size_t n);
uint32_t ebd_bus_index(const ebd *d, const char *name, size_t n);   /* or VM_NONE */
/* The bus the current rules declare under that name, with their token and limit; false if they
 * declare none.  Under d->lock (read). */
bool ebd_bus_view(ebd *d, const char *name, size_t n, ebd_bus *view);

/* The rooms of the daemon, each behind its header (they need what is above). */
#include "delivery/delivery.h"
#include "ingest/ingest.h"

#endif
