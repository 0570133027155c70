/*
 * query.h — reading a bus log by time and by attribute (docs/replay.md): the event query of
 * GET /v1/buses/{bus}/events and `ebc log dump`'s filters, the time arguments that replays and
 * dry runs take, and the dry run itself (a ruleset matched over a stretch of the log, nothing
 * delivered), shared by ebd's event center and by ebc.  No HTTP here: center.h is the door of
 * the endpoints.
 */
#ifndef EBR_CENTER_QUERY_H
#define EBR_CENTER_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../runtime.h"

/* ---- times ------------------------------------------------------------------------------- */

/* The clock, in ns since the epoch. */
int64_t qy_now_ns(void);

/* Reads a duration: one or more NUMBER UNIT with the units ms, s, m, h, d ("24h", "90m",
 * "1h30m", "500ms"); "now" is 0.  False when s is not one (or overflows). */
bool qy_parse_duration(const char *s, int64_t *ns);

/* Reads s as an RFC 3339 time ("2026-12-05T16:00:00Z", "...:00.123+01:00") or a duration back
 * from now_ns ("24h": 24 hours before now_ns) into *ns.  False with the reason in why. */
bool qy_parse_time(const char *s, int64_t now_ns, int64_t *ns, char *why, size_t cap);

/* ns since the epoch as RFC 3339 UTC with milliseconds ("2026-12-05T16:00:00.123Z"). */
void qy_format_time(int64_t ns, char *buf, size_t cap);

/* ---- filters ----------------------------------------------------------------------------- */

/* The attributes an event must have: each NULL (any) or a value the attribute equals exactly;
 * a value that ends in '*' is a prefix ("order.*" takes "order.created"). */
typedef struct {
    const char *source, *type;
} qy_filter;

/* The top-level string member `name` of the JSON object ev[0..n) (valid JSON), decoded into
 * out[cap] (cut to fit); false when it has none. */
bool qy_attr(const char *ev, size_t n, const char *name, char *out, size_t cap);

/* Does the event (a stored record: JSON text) pass the filter? */
bool qy_event_passes(const qy_filter *f, const char *ev, size_t n);

/* ---- the query ---------------------------------------------------------------------------- */

#define QY_NONE_BEFORE INT64_MIN
#define QY_NONE_AFTER INT64_MAX

typedef struct {
    int64_t since_ns, until_ns;   /* appended at or after since, before until */
    qy_filter f;
    bool newest;                  /* newest first (the log is read backwards in chunks) */
    size_t limit;                 /* records to give at most (0: no limit) */
    size_t scan_max;              /* records to look at at most (0: no bound) */
    bool resume;                  /* go on from `at` (a page's `next`): oldest first, the */
    uint64_t at;                  /*   next offset to look at; newest first, the one above */
    size_t chunk_bytes;           /* newest first: bytes of records held at once, at most
                                   * (0: QY_CHUNK_BYTES; one record bigger is held alone) */
    size_t *held_peak;            /* when not NULL: the most bytes held at once, told */
} qy_query;

#define QY_CHUNK_BYTES ((size_t)8 << 20)

/* Calls emit for each record the query selects, in its order; emit returns false to stop
 * (nothing more is looked at; *more is then true with *next after that record).  On return
 * *more says whether more records may follow, and *next is where to resume them (q->at).  A
 * corrupt record is passed over and a record deleted by retention is simply not there.
 * STORE_OK, or the status of a failure with a message in err. */
store_status qy_run(store *s, const qy_query *q, bool (*emit)(void *, const store_record *),
                    void *arg, bool *more, uint64_t *next, char *err, size_t cap);

/* A page token for `after` (resume at `at`, in that order) into buf[cap], and back: false when
 * tok is not one made for that order. */
void qy_token(bool newest, uint64_t at, char *buf, size_t cap);
bool qy_token_read(const char *tok, bool newest, uint64_t *at);

/* ---- the dry run -------------------------------------------------------------------------- */

#define DR_SAMPLES 5

typedef struct {
    char *name;
    uint64_t matched;
    char *samples[DR_SAMPLES];    /* the ids of the first events it matched (malloc'd) */
    unsigned nsamples;
} dr_rule;

typedef struct {
    uint64_t events;              /* events read */
    uint64_t failed;              /* events the matcher could not decide for some rule */
    dr_rule *rules;               /* the program's rules on the bus, in their order */
    size_t nrules;
    bool truncated;               /* stopped at max_events before the end of the range */
    uint64_t next;                /* then: the offset it stopped at */
    uint64_t first, last;         /* the offsets of the first and last events read */
} dr_result;

/* What bounds a dry run, and how it lets go of the log now and then (all 0/NULL: nothing). */
typedef struct {
    uint64_t max_events;          /* events read at most; past them "truncated" (0: no bound) */
    int64_t deadline_ms;          /* CLOCK_MONOTONIC ms; past it "truncated" (0: none) */
    /* every relock_every events the cursor is closed and relock(arg) called: it may let go of
     * a lock the log is read under and take it again, and returns the log again (NULL: it is
     * gone, the run fails); the run goes on from the next offset */
    store *(*relock)(void *arg);
    void *arg;
    unsigned relock_every;
} dr_limits;

/* Matches every event of bus `bus` of program p (its index in p) appended in [since, until) of
 * the log s against p's rules on that bus, counting per rule and keeping sample ids, within
 * lim (NULL: none).  Delivers nothing.  False with the reason in err. */
bool dr_run(store *s, const vm_program *p, uint32_t bus, int64_t since_ns, int64_t until_ns,
            const dr_limits *lim, dr_result *out, char *err, size_t cap);

/* The result as JSON, {"events":N,"rules":[{"name","matched","samples":[...]}],...}: malloc'd
 * text (NULL when out of memory). */
char *dr_json(const dr_result *r);
void dr_free(dr_result *r);

/* The index in p of the bus named name, or VM_NONE. */
uint32_t dr_bus_index(const vm_program *p, const char *name);

/* ---- ebc replay (replay_cli.c) ------------------------------------------------------------- */

/* `ebc replay ARGS...` (argv without "ebc replay"): its exit status. */
int rp_cli(int argc, char **argv);

#endif
