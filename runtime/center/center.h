/*
 * center.h — the event center's door (docs/center.md): what ebd serves to operators beside
 * ingest — the admin API, metrics, traces, event query, replays, schemas and the console.
 * Each part keeps a file of its own in runtime/center/ and its endpoints in the table of
 * http.c; ingest.c hands every request it does not serve itself to center_handle.
 */
#ifndef EBR_CENTER_H
#define EBR_CENTER_H

#include <sys/socket.h>
#include <microhttpd.h>

#include "../ebd_int.h"

/* One request to an endpoint of the center, as its handler sees it. */
typedef struct {
    struct MHD_Connection *c;
    ebd *d;
    const char *method, *url;
    const char *body;             /* the request's body (POST, PUT): body[0..n) */
    size_t n;
    /* The path's segments where the endpoint's pattern has '*' (decoded), in order. */
    const char *arg[4];
    size_t narg;
} center_req;

/* Serves url with method when it is one of the center's endpoints: true with the answer queued
 * in *out; false when it is not one (ingest then answers 404).  Called without d->lock. */
bool center_handle(struct MHD_Connection *c, ebd *d, const char *url, const char *method,
                   const char *body, size_t n, enum MHD_Result *out);

/* The endpoints' handlers, one file each. */
enum MHD_Result center_schemas(const center_req *r);       /* schemas.c: GET /v1/schemas */

/* A query parameter of the request (?name=value, decoded), or NULL. */
const char *center_query(const center_req *r, const char *name);

/* console.c: GET /ui, /ui/ and /ui/NAME, the console's embedded files (open: no token). */
enum MHD_Result console_serve(const center_req *r);
/* ---- metrics (metrics.c, docs/metrics.md) -------------------------------------------------
 * Counters by name that survive reloads; the hooks below are what ingest and delivery call. */

/* Why ingest refused a request (or a put-events entry). */
typedef enum {
    MT_INVALID,                   /* not a CloudEvent, bad JSON, a wrong content type (400, 415) */
    MT_TOO_LARGE,                 /* over max_event_size or the request limit (413) */
    MT_UNAUTHORIZED,              /* no token or a wrong one (401, 403) */
    MT_UNKNOWN_BUS,               /* no such bus (404; counted under bus "") */
    MT_OVERLOADED,                /* the daemon's limits: requests, connections, buffers, memory,
                                     stopping (429, 503) */
    MT_STORAGE,                   /* the bus's log could not store it (503) */
    MT_NREASONS
} mt_reason;

#define MT_NBUCKETS 15            /* the histograms' finite buckets: 1 ms .. 60 s */

struct mt_bus;
struct mt_rules;

/* The slot of bus `name` (made the first time; lives as long as the process), or NULL. */
struct mt_bus *mt_bus_slot(const char *name);
/* r's arrays of slots, indexed as r->p is (ebd_rules_prepare); NULL without memory. */
struct mt_rules *mt_rules_bind(ebd_rules *r);
void mt_rules_free(struct mt_rules *m);

/* Hooks: ingest */
void mt_ingested(const ebd_bus *b, size_t n);                /* events stored */
void mt_duplicates(const ebd_bus *b, size_t n);              /* ...not stored again (dedup) */
void mt_refused(const ebd_bus *b, mt_reason why, size_t n);
void mt_request_begin(void);                  /* before ingest handles a request's call... */
void mt_answered(unsigned status);            /* ...when it queues an answer... */
void mt_note_reason(mt_reason why);           /* ...(what the status alone does not tell)... */
/* ...and after it, with the bus its URL names when it was a put of events (ingest_path), or
 * NULL: a refusal of one counts for that bus. */
void mt_request_end(const char *bus, size_t n);
/* Hooks: delivery.  mt_matched: the rules the router of their bus matched for the event at
 * offset off (called by that router alone: its counts are not read-modify-written);
 * mt_attempt: an attempt at target (error NULL or "" when it succeeded), started at
 * started_ns (mt_now_ns; 0: not timed), of an event appended at event_time_ns (real time);
 * mt_retry: a retry scheduled; mt_dead_letter: given up on, sent to a dead letter (or dropped
 * when there is none); attempted: an attempt said why already (else error is kept as a
 * sample). */
void mt_matched(ebd_rules *r, const uint32_t *rules, size_t n, uint64_t off);
void mt_attempt(ebd_rules *r, uint32_t target, bool dead_letter, const char *rule,
                const char *error, int64_t started_ns, int64_t event_time_ns);
void mt_retry(ebd_rules *r, uint32_t target);
void mt_dead_letter(ebd_rules *r, uint32_t target, bool dropped, const char *rule,
                    const char *error, bool attempted);
int64_t mt_now_ns(void);                      /* a monotonic clock */

/* Endpoints (http.c's table) */
enum MHD_Result mt_serve_metrics(const center_req *r);
enum MHD_Result mt_serve_buses(const center_req *r);
enum MHD_Result mt_serve_bus(const center_req *r);
enum MHD_Result mt_serve_rules(const center_req *r);
enum MHD_Result mt_serve_targets(const center_req *r);

/* Pieces (tests): the Prometheus text format's label value escaping (\\, \", \n); the bucket
 * of an observation (0..MT_NBUCKETS, the last being +Inf); one histogram's lines (bucket[] not
 * cumulated). */
void mt_prom_label(sbuf *b, const char *s);
unsigned mt_hist_bucket(int64_t ns);
void mt_prom_hist(sbuf *b, const char *name, const char *label, const char *value,
                  const uint64_t *bucket, uint64_t sum_ns, uint64_t count);
const char *mt_reason_name(mt_reason why);
/* The endpoints' handlers, one file each (the table in http.c). */
/* query.c, dryrun.c, replay.c (docs/replay.md) */
enum MHD_Result qy_handle_events(const center_req *r);
enum MHD_Result dr_handle(const center_req *r);
enum MHD_Result rp_handle_start(const center_req *r);
enum MHD_Result rp_handle_list(const center_req *r);
enum MHD_Result rp_handle_get(const center_req *r);
enum MHD_Result rp_handle_cancel(const center_req *r);
/* ebd.c: replays resume at start (after the delivery starts), stop before it stops; a reload
 * calls rp_rules_swapped after the swap, before the old rules are freed. */
void rp_start(ebd *d);
void rp_stop(ebd *d);
void rp_rules_swapped(ebd *d);
/* The replays running now (for the metrics). */
size_t rp_running(void);
/* trace.c: an event's trace (docs/trace.md). */
enum MHD_Result trace_serve_id(const center_req *r);
enum MHD_Result trace_serve_offset(const center_req *r);

#endif
