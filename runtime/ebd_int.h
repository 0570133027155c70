/*
 * ebd_int.h — the daemon's parts (runtime/ebd.c, ingest.c, deliver.c, cejson.c) and what they
 * share.  Not a door: the rest of the project sees runtime.h only.
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

/* ---- CloudEvents (ingest.c) ------------------------------------------------------------- */

/* Checks one event in the JSON format (s[0..n), a valid JSON value): an object with the
 * required attributes (id, source, specversion "1.0", type) as non-empty strings, optional ones
 * of the right type (time RFC 3339, dataschema/source URI-references), extension names of
 * a-z and 0-9, no control character (U+0000-U+001F, U+007F-U+009F) in a string attribute, not
 * both data and data_base64.  On failure writes the reason (naming the attribute) to why and
 * returns false.  *id / *idlen get the id's text (quoted). */
bool ce_check(const char *s, size_t n, char *why, size_t whycap, const char **id, size_t *idlen);

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

enum { T_HTTP, T_FILE, T_BUS, T_EXEC, T_MQTT, T_NATS };

typedef struct {
    unsigned attempts;            /* 0: no retry (one attempt) */
    uint64_t first_ms, max_ms, max_age_ms;
} ebd_retry;

typedef struct {
    char *name;
    int kind;
    char *url, *method;           /* http */
    struct curl_slist *headers;
    long timeout_ms;              /* http, exec */
    char *sign_secret, *sign_header;
    bool remote;                  /* http: a remote target, a bus of another ebd (CloudEvents) */
    char *ca_file;                /* http: the CA certificates its TLS peer is checked against */
    void *pub;                    /* mqtt, nats: the publisher (runtime/sources/brokers.c) */
    char *topic;                  /* mqtt: the topic; nats: the subject */
    int qos;                      /* mqtt */
    bool retain;                  /* mqtt */
    unsigned concurrency;         /* http, exec: deliveries at once (0: no limit) */
    unsigned batch;               /* http: deliveries one request may carry (0, 1: one) */
    unsigned rate_limit;          /* http, exec: deliveries per second (0: no limit) */
    char *path;                   /* file: resolved under the data directory */
    int fd;
    store_fsync fsync;
    uint32_t bus;                 /* bus: the daemon's bus index */
    char **argv;                  /* exec: argv (NULL-terminated) */
    char **envp;                  /* exec: its environment (cmd_env) */
    ebd_retry retry;
    uint32_t dead_letter;         /* a target index, or VM_NONE */
    char *dead_letter_file;       /* or a file under the data directory */
    pthread_mutex_t mu;           /* file writes; rate limit */
    unsigned busy;                /* deliveries in progress (concurrency) */
    double tokens;                /* rate limit bucket */
    struct timespec refill;
} ebd_target;

/* ---- a bus's de-duplication window (dedup.c) ---------------------------------------------- */

typedef struct ebd_dedup ebd_dedup;
typedef struct { uint64_t a, b; } dedup_key;
enum { DEDUP_NEW, DEDUP_SEEN, DEDUP_PENDING, DEDUP_FULL };

/* The key of the event ev[0..n) (a JSON object with "source" and "id"); false if it has none. */
bool dedup_key_of(const char *ev, size_t n, dedup_key *k);
ebd_dedup *dedup_new(uint64_t window_ms);
void dedup_free(ebd_dedup *d);
void dedup_set_window(ebd_dedup *d, uint64_t window_ms);     /* 0: off (keys kept) */
/* The clock d reads, in Unix milliseconds (default: the wall clock): tests move time by hand. */
void dedup_set_clock(ebd_dedup *d, int64_t (*now)(void *arg), void *arg);
uint64_t dedup_window(const ebd_dedup *d);                   /* 0 for NULL */
/* DEDUP_SEEN with *offset when the bus stored k within the window; DEDUP_NEW when it did not:
 * k is then pending, and the caller must dedup_settle it; DEDUP_PENDING when another caller
 * is storing it (dedup_wait(d, *gen) waits for a settlement); DEDUP_FULL: no memory. */
int dedup_claim(ebd_dedup *d, dedup_key k, uint64_t *offset, uint64_t *gen);
void dedup_wait(ebd_dedup *d, uint64_t gen);
void dedup_settle(ebd_dedup *d, dedup_key k, bool stored, uint64_t offset);
void dedup_note(ebd_dedup *d, dedup_key k, uint64_t offset, int64_t ms);
size_t dedup_size(ebd_dedup *d);
/* Fills d from the records s stored within the window and from wall time from_ms on (0: the
 * whole window); how many, or -1 on a read error. */
long dedup_fill(ebd_dedup *d, store *s, int64_t from_ms);

/* Per bus of the daemon, kept across reloads: where each pair stands (deliver.c). */
typedef struct ebd_book ebd_book;

/* A bus of the daemon: its log stays open across reloads (d->buses holds pointers, so a bus
 * never moves).  What the rules say of it (token, size limit) is in ebd_rules; ingest works on
 * a view that joins both (ebd_bus_view). */
typedef struct {
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

/* Stores the events e[0..n) on bus b (store_append), through its dedup window: an event the
 * bus stored within it is not stored again, and gets the first one's offset with dup[i] set
 * (dup may be NULL when the caller does not care).  Offsets as store_append's. */
store_status ebd_bus_store(ebd_bus *b, const store_entry *e, size_t n, uint64_t *offsets,
                           bool *dup);

typedef struct ebd ebd;
typedef struct ebd_rules ebd_rules;

/* deliver.c's run-time state of a ruleset: the (rule, target) pairs, the routers, the delivery
 * threads and the committer.  Private to deliver.c. */
typedef struct ebd_engine ebd_engine;

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

/* runtime/sources/brokers.c: mqtt and nats targets (false with err; a send false with why,
 * to be retried) */
bool ebd_mqtt_target(ebd_target *x, const vm_program *p, const vm_target *t, char *err, size_t cap);
bool ebd_mqtt_send(ebd_target *t, const char *payload, size_t n, bool text, char *why, size_t cap);
void ebd_mqtt_close(ebd_target *t);
bool ebd_nats_target(ebd_target *x, const vm_program *p, const vm_target *t, char *err, size_t cap);
/* delivery: what names this delivery (a retry of it names it alike), or NULL */
bool ebd_nats_send(ebd_target *t, const char *payload, size_t n, bool text, const char *delivery,
                   char *why, size_t cap);
void ebd_nats_close(ebd_target *t);

/* deliver.c: the options of declarations (p->cfgs) */
const vm_cfg *ebd_cfg_option(const vm_program *p, uint32_t opt0, uint32_t nopt, const char *key);
const vm_cfg *ebd_cfg_child(const vm_program *p, const vm_cfg *c, uint32_t k);
/* A text value: a string, or env("NAME") read now (NULL with err set when it is unset). */
char *ebd_cfg_text(const vm_program *p, const vm_cfg *v, char *err, size_t cap);

/* deliver.c */
bool ebd_rules_prepare(ebd *d, ebd_rules *r, char *err, size_t errcap);
void ebd_workers_start(ebd *d, ebd_rules *r);
void ebd_workers_stop(ebd *d, ebd_rules *r);     /* finish the delivery in hand, commit, join */
void ebd_rules_free(ebd_rules *r);
void ebd_book_free(ebd_book *b);                  /* when its bus closes */
/* For the event center: fn for each pair of r that delivers, with its target and bus (r->p's
 * indexes), the events queued for it or in flight, and the lowest offset it has not finished.
 * Under d->reload_mu (its workers are neither starting nor stopping). */
void ebd_pairs_visit(ebd_rules *r, void (*fn)(void *arg, uint32_t target, uint32_t pbus,
                                              uint64_t queued, uint64_t low), void *arg);
/* One delivery made at once, for replays (runtime/center/replay.c): rule's payload for the event
 * (its transform run with ctx, a context of r->p), delivered to target with the target's limits,
 * retries (the age counted from the first attempt) and then its dead letter (which gets
 * "replay"); http requests carry `X-Ebr-Replay: REPLAY`.  stop(arg) is asked while it waits.
 * Returns how it ended, the last error in err unless delivered. */
enum { EBD_SYNC_DELIVERED, EBD_SYNC_DEAD_LETTERED, EBD_SYNC_DROPPED, EBD_SYNC_STOPPED };
int ebd_deliver_sync(ebd *d, ebd_rules *r, vm_ctx *ctx, uint32_t rule, uint32_t target,
                     const char *event, size_t len, int64_t time_ns, uint64_t off,
                     const char *replay, bool (*stop)(void *), void *arg, char *err, size_t cap);

/* ingest.c */
struct MHD_Daemon;
/* A listening socket on host:port (IPv4), or -1 with the cause in err (a port in use says so). */
int ebd_http_listen(const char *host, uint16_t port, char *err, size_t cap);
/* Serves the daemon's endpoints on listening socket fd (HTTPS when d->tls_cert), which it owns
 * from then on; NULL with the cause in err (the caller still owns fd then). */
struct MHD_Daemon *ebd_http_start(ebd *d, int fd, const char *host, uint16_t port, char *err,
                                  size_t cap);
void ebd_http_stop(ebd *d, struct MHD_Daemon *h);
/* The connections the listener takes beyond max_connections to answer them 503 rather than
 * leave them unaccepted: they need descriptors too. */
unsigned ebd_http_reserve(unsigned max_connections);

/* Answers for the event center (runtime/center/), as ingest's own: a JSON body with the status;
 * {"error": msg, "field": field} (field may be NULL). */
struct MHD_Connection;
int ebd_send_json(struct MHD_Connection *c, unsigned status, const sbuf *b);
int ebd_send_error(struct MHD_Connection *c, unsigned status, const char *msg, const char *field);
/* May this request use an operator's endpoint?  0 if so; 401 without a token, 403 with a wrong
 * one.  With no admin_token set, 403 unless the listener is on loopback, Host names loopback,
 * an Origin header (if any) is http(s)://HOST and, for a write (POST), the request is not one a
 * web page can send cross-site (Content-Type: application/json or X-Ebr-Request).  *why (may
 * be NULL) gets the reason. */
unsigned ebd_authorize_admin(ebd *d, struct MHD_Connection *c, bool write, const char **why);

/* ebd.c */
bool ebd_reload(ebd *d, sbuf *errors);
ebd_bus *ebd_find_bus(ebd *d, const char *name, size_t n);
uint32_t ebd_bus_index(const ebd *d, const char *name, size_t n);   /* or VM_NONE */
/* The bus the current rules declare under that name, with their token and limit; false if they
 * declare none.  Under d->lock (read). */
bool ebd_bus_view(ebd *d, const char *name, size_t n, ebd_bus *view);

#endif
