/*
 * trace.h — what happened to each event (docs/trace.md): hooks that ingest, the routers and the
 * delivery threads call (cheap: a copy into a buffer under one lock), a trace thread that writes
 * what they said to a trace log per bus every TRACE_FLUSH_MS, and the look-up that reads an
 * event's trace back (the daemon's endpoints and `ebc trace`).
 *
 * Storage: per bus two logs under the data directory, trace/BUS/received (who sent which
 * offsets, with a hash of each event's id) and trace/BUS/delivery (matches, attempts, outcomes).
 * Each record of them is a block: what the trace thread had for that bus at one flush.
 */
#ifndef EBR_TRACE_H
#define EBR_TRACE_H

#include "../ebd_int.h"

#define TRACE_FLUSH_MS 100
#define TRACE_ERROR_MAX 200                   /* an attempt's error is cut to this many bytes */
#define TRACE_DEFAULT_RETENTION_MS (24LL * 3600 * 1000)
#define TRACE_BLOCK_HEADER 25                 /* u8 version 1, u64 lo, u64 hi, u64 mhi */

/* What became of a delivery (rule, target) of an event. */
enum { TRACE_DELIVERED = 1, TRACE_DEAD_LETTERED, TRACE_DROPPED, TRACE_EXPIRED };

/* ---- the daemon's side -------------------------------------------------------------------- */

/* Starts the trace thread of daemon d (after its first rules are made, before it serves) and
 * stops it (after the deliveries have stopped: what the buffer holds is written first). */
void trace_start(ebd *d);
void trace_stop(void);
/* Returns once everything the hooks said so far is written: the routers' records name their
 * rules through the program (trace_matched), so a reload calls this after the old rules' workers
 * stopped and before their program is freed. */
void trace_retire(void);

/* Ingest stored n events on bus b for the client of connection c (NULL: for a source), the j-th stored one at offset
 * offs[j] (store_append's offsets).  Event k's id (its JSON text, quoted) is at
 * *(const char **)(ids + k * stride), its length at *(const size_t *)(idlens + k * stride);
 * with skip non-NULL, event k was refused (and has no offset) when skip[k * stride] is not 0. */
struct MHD_Connection;
void trace_received(struct MHD_Connection *c, const ebd_bus *b, const uint64_t *offs, size_t n,
                    const void *ids, const void *idlens, size_t stride, const char *skip);

/* The router of bus b matched the event at off for rules[0..n) of program p (which must live
 * until trace_retire). */
void trace_matched(const ebd_bus *b, uint64_t off, const vm_program *p, const uint32_t *rules,
                   size_t n);

/* A monotonic clock in ms, for an attempt's latency (start_ms). */
int64_t trace_clock_ms(void);

/* One attempt of the delivery (rule, target) of the event at off ended: to `to` (the target, or
 * its dead letter when dl), its number n, status (HTTP status, exit status; 0: none), the
 * payload's size and the error ("" on success). */
void trace_attempt(const ebd_bus *b, uint64_t off, const char *rule, const char *target,
                   const char *to, bool dl, unsigned n, long status, int64_t start_ms,
                   size_t payload, const char *error);

/* The delivery (rule, target) of the event at off is over: state TRACE_*, where (the dead
 * letter's target or file, or NULL), why (the last error, or NULL), after `attempts`. */
void trace_outcome(const ebd_bus *b, uint64_t off, const char *rule, const char *target,
                   int state, const char *where, const char *why, unsigned attempts);

/* ---- the look-up -------------------------------------------------------------------------- */

typedef struct {
    const char *data_dir;         /* trace logs: DATA/trace/BUS/... */
    /* or, a bus on NATS JetStream: its trace streams, open (the daemon keeps them; NULL: one
     * that does not exist yet or cannot be read: *_failed says which) */
    bool shared;
    store *nats_recv, *nats_deliv;
    bool recv_failed, deliv_failed;
    const char *bus;
    store *log;                   /* the bus's log (open: the daemon's, or read-only) */
    bool by_offset;
    uint64_t offset;              /* by_offset */
    const char *id, *source;      /* otherwise: the event's id, and its source or NULL */
    const vm_program *explain;    /* explain why the rules of this program did not match, or NULL */
    const struct trace_cands *cands;  /* by id: found by trace_id_candidates, or NULL (then
                                       * trace_lookup looks for them itself) */
} trace_query;

/* The daemon's reader of trace stream `which` of a bus on NATS JetStream (servers and stream
 * no), opened the first time and kept until trace_stop (a look-up does not connect each time,
 * nor while it holds the daemon's lock).  NULL when the stream does not exist yet, or, with
 * *failed set, when it cannot be read now. */
store *trace_nats_reader(const store_nats_options *no, const char *which, bool *failed);

/* Opens trace log `which` ("received", "delivery") of a bus on NATS JetStream (servers and
 * stream no): the stream STREAM_TRACE_RECEIVED or STREAM_TRACE_DELIVERY, which every daemon of
 * the bus writes.  o: the trace retention (the stream is made or set to it), or read_only (it
 * is neither made nor changed: STORE_NOTFOUND when there is none). */
store_status trace_nats_open(const store_nats_options *no, const char *which, const store_options *o,
                             store **out, char *err, size_t cap);

/* By id: the offsets whose received records carry the id's hash, newest first, as found by
 * reading the received trace log backwards window by window; the look-up stops at
 * TRACE_MAX_CANDIDATES of them or TRACE_MAX_SCAN_BYTES of blocks read (truncated then). */
#define TRACE_MAX_CANDIDATES 256
#define TRACE_MAX_SCAN_BYTES ((uint64_t)256 << 20)
typedef struct trace_cands {
    uint64_t offs[TRACE_MAX_CANDIDATES];
    size_t n;
    bool truncated;               /* a budget stopped the look-up before the log's start */
} trace_cands;

/* Fills c for q's id (q->data_dir, q->bus, q->id; needs neither q->log nor the daemon's lock:
 * it reads the trace log by its path). */
void trace_id_candidates(const trace_query *q, trace_cands *c);

/* Looks the event up and writes its trace (docs/trace.md) as JSON to out: returns 200, or 404
 * (unknown) or 500 with the reason in err.  By id, several events with that id (and source):
 * the newest, the others listed in "others" (at most MAX_SAME_ID), "truncated": true when the
 * look-up stopped at a budget (trace_cands) before the log's start. */
unsigned trace_lookup(const trace_query *q, sbuf *out, char *err, size_t cap);

/* Prints the trace json (trace_lookup's answer) as a timeline, one line per step. */
#include <stdio.h>
void trace_print(const char *json, FILE *out);

/* ---- the record encoding (exposed for the unit tests) --------------------------------------- */

typedef struct {
    int kind;                     /* TR_* */
    uint64_t off;                 /* (received: the first offset) */
    uint32_t count;               /* received: events; matched: names */
    int64_t time_ms;
    unsigned char addr[16];       /* received: the producer's address (alen 4 or 16; 0: unknown) */
    unsigned alen, port;
    const unsigned char *hashes;  /* received: count x u32 (little-endian) id hashes */
    const char *names;            /* matched: count strings "rule\0target\0" pairs, NUL-separated */
    size_t nnames;
    unsigned attempt, state;
    bool dl;
    long status;
    uint32_t latency_ms;
    uint64_t payload;
    const char *rule, *target, *to, *error;   /* attempt/outcome (to: where; error: why) */
    uint64_t dropped;             /* gap */
    /* A span: a matched record or a first attempt that delivered, of the events at offsets
     * [off, off + span) alike (a router matches run after run of events to the same rules, a
     * delivery thread delivers a batch to one target): one record for the run.  0 or 1: one
     * event.  A delivered span holds each event's time, latency and payload size (each, span
     * triples of varints); trace_narrow makes it the record of one of its events. */
    uint32_t span;
    const unsigned char *each;
    size_t neach;
} trace_rec;

/* Kinds as stored.  Decoded, a TR_MATCHED_SPAN is a TR_MATCHED and a TR_DELIVERED_SPAN a
 * TR_ATTEMPT (delivered, not to the dead letter), each with its span. */
enum { TR_RECEIVED = 1, TR_MATCHED, TR_ATTEMPT, TR_OUTCOME, TR_GAP, TR_MATCHED_SPAN,
       TR_DELIVERED_SPAN };

/* Little-endian integers of `bytes` bytes: appended to b; read from r (r->bad once it runs out). */
typedef struct {
    const unsigned char *s;
    size_t n, at;
    bool bad;
} trace_reader;
void trace_put_u(sbuf *b, uint64_t v, unsigned bytes);
uint64_t trace_get_u(trace_reader *r, unsigned bytes);

/* Encodes r into b (appended); decodes one record from s[*at..n), moving *at; false if it does
 * not hold one.  Decoded strings point into s (which holds them NUL-terminated). */
void trace_encode(sbuf *b, const trace_rec *r);
/* The same into p (room for trace_encoded_max(r) bytes); returns the end. */
size_t trace_encoded_max(const trace_rec *r);
unsigned char *trace_encode_to(unsigned char *p, const trace_rec *r);
bool trace_decode(const unsigned char *s, size_t n, size_t *at, trace_rec *r);
/* A delivered span, built in place by the hooks: trace_span_begin writes one of r's
 * (TR_ATTEMPT's rule, target, attempt, status, time_ms) with no event yet at p (room for
 * trace_encoded_max(r)); trace_span_add appends one event (time, latency, payload) at end, the
 * record's end (room for TRACE_SPAN_EVENT_MAX bytes), and returns the bytes it added. */
#define TRACE_SPAN_EVENT_MAX 30
unsigned char *trace_span_begin(unsigned char *p, const trace_rec *r);
size_t trace_span_add(unsigned char *rec, unsigned char *end, int64_t time_ms, uint32_t latency_ms,
                      uint64_t payload);
/* Makes span record r (decoded) say what it says of the event at off: the record of that event
 * alone when the span holds it; else its first offset when it begins after off, its last when
 * it ends before off.  A record of one event is left as it is. */
void trace_narrow(trace_rec *r, uint64_t off);

/* The hash the received records keep of an event's id (its decoded text). */
uint32_t trace_id_hash(const char *id, size_t n);

#endif
