/*
 * store/store.h — the storage a bus lives behind: one interface (append, cursors, named cursors
 * and cursor sets, retention) and its backends, the local bus log (log.c, docs/storage.md) and
 * NATS JetStream (nats.c).  runtime.h includes it; nothing above it knows which backend holds a
 * bus.
 */
#ifndef EBR_STORE_H
#define EBR_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../vm/vm.h"

/* ---------------------------------------------------------------------------------------------
 * Storage.  A store holds one bus: an ordered sequence of records numbered by offset from 0, each
 * with the time it was appended (ns since the epoch, never decreasing along the offsets) and 32
 * flag bits that belong to the caller.  Appends are acknowledged under the store's fsync policy;
 * cursors read in order from an offset or a time and wait for more; named cursors persist a
 * reader's position, cursor sets many readers' positions at once.  Everything above this
 * interface works the same on every backend.
 * ------------------------------------------------------------------------------------------- */

typedef enum {
    STORE_OK = 0,
    STORE_TIMEOUT,    /* a cursor found nothing new within its wait */
    STORE_BEHIND,     /* a cursor's position was deleted by retention (store_cursor_seek goes on) */
    STORE_CORRUPT,    /* a record fails its checks; the message gives file and position
                       * (store_cursor_skip goes past it) */
    STORE_NOTFOUND,   /* no named cursor (or cursor set) of that name was ever committed */
    STORE_CLOSED,     /* the store is closing */
    STORE_EINVAL,     /* a bad argument: record too large, bad cursor name, append to read-only */
    STORE_EIO,        /* an I/O error; after a failed write or sync a log refuses appends until
                       * it has recovered by itself (store_health says why meanwhile) */
    STORE_EBUSY,      /* another process holds the log */
} store_status;

typedef enum { STORE_FSYNC_ALWAYS, STORE_FSYNC_INTERVAL, STORE_FSYNC_NEVER } store_fsync;

typedef struct {
    store_fsync fsync;              /* default STORE_FSYNC_ALWAYS */
    uint64_t fsync_interval_ns;     /* STORE_FSYNC_INTERVAL; default 10 ms */
    uint64_t segment_bytes;         /* a segment rolls at this size; default 64 MiB, 4 KiB..1 GiB */
    uint64_t retention_ns;          /* delete segments whose newest record is older; 0: never */
    uint64_t retention_bytes;       /* delete the oldest segments above this total; 0: never */
    uint32_t max_record;            /* the largest payload; default 16 MiB */
    uint64_t dedup_ns;              /* a backend that de-duplicates (store_dedups): its window
                                     * for records with a msg_id; 0: none */
    bool read_only;                 /* tools: no lock, no repair, no appends, no background thread */
    /* Loud messages (recovery, corruption, retention), one line each without a newline; default:
     * standard error, prefixed "ebr log: ". */
    void (*report)(void *arg, const char *msg);
    void *report_arg;
} store_options;

typedef struct {
    const void *data;
    uint32_t len;
    uint32_t flags;
    const char *msg_id;             /* NULL, or the record's id for a backend that de-duplicates */
} store_entry;

typedef struct {
    uint64_t offset;
    int64_t time_ns;
    uint32_t flags;
    uint32_t len;
    const unsigned char *data;      /* valid until the cursor's next call */
} store_record;

typedef struct store store;
typedef struct store_cursor store_cursor;

/* Opens (creating it if need be) the bus log in directory dir: recovers its tail, truncating a
 * torn or corrupt tail with a loud report, and reports damage in sealed segments.  o may be NULL
 * for the defaults.  On failure returns the status and a message in err. */
store_status log_open(const char *dir, const store_options *o, store **out, char *err,
                      size_t errcap);

/* Appends n records in their order and returns once they are acknowledged, each one's offset in
 * offsets[i] (offsets may be NULL).  The local log gives them consecutive offsets and
 * acknowledges them with fsync always on disk, otherwise written to the operating system; many
 * threads may append at once, sharing writes and syncs (group commit).  STORE_EIO when the write
 * or sync of their batch failed (then none of them is kept), or while the store has not
 * recovered from such a failure (store_health).  A shared backend (NATS JetStream, which several
 * processes append to) may put other records between them, and acknowledges each record by
 * itself: on a failure, some of them may be kept (docs/storage.md). */
store_status store_append(store *s, const store_entry *e, size_t n, uint64_t *offsets);
/* Does s itself keep records with the same msg_id once within its dedup_ns window (NATS
 * JetStream's duplicate window, shared by every daemon of the bus)?  Then store_append_dedup
 * gives a record it kept from being stored again the first one's offset and sets dup[i]. */
bool store_dedups(store *s);
store_status store_append_dedup(store *s, const store_entry *e, size_t n, uint64_t *offsets,
                                bool *dup);

/* The first offset still kept and the next offset to be acknowledged. */
void store_bounds(store *s, uint64_t *first, uint64_t *next);

/* A cursor that reads from offset on (an offset beyond the end waits for it), or from the first
 * record appended at or after time_ns. */
store_status store_cursor_open(store *s, uint64_t offset, store_cursor **out);
store_status store_cursor_open_at(store *s, int64_t time_ns, store_cursor **out);

/* The next record, waiting up to timeout_ms (0: do not wait; -1: for ever) for one to be
 * acknowledged.  STORE_BEHIND and STORE_CORRUPT leave the cursor where it is, with a message
 * (store_cursor_error) that gives offsets and, for corruption, the file and byte position. */
store_status store_cursor_next(store_cursor *c, store_record *r, int timeout_ms);
store_status store_cursor_seek(store_cursor *c, uint64_t offset);
/* Goes past the corrupt record the last call reported, to the next record that checks out;
 * *lost says how many offsets were passed over. */
store_status store_cursor_skip(store_cursor *c, uint64_t *lost);
uint64_t store_cursor_offset(const store_cursor *c);     /* the offset next() looks for */
const char *store_cursor_error(const store_cursor *c);
void store_cursor_close(store_cursor *c);

/* Shared reading, for a backend that several processes read (NATS JetStream; the local log has
 * one reader process and says false).  A group cursor reads the records of group `group` (a
 * cursor name) in every process at once: each record goes to one of the group's cursors, in
 * about the order of the offsets, and is held by it until store_cursor_done says it is done.
 * A record not done within the backend's ack wait (its reader says it is still at work on it
 * while the cursor is open and read), or held by a cursor closed first or by a process that
 * died, is given again, to any of them; so is one whose done was lost.  store_cursor_done may
 * be called from another thread than the one reading the cursor; the record last given stays
 * readable until the next call to store_cursor_next.  A group cursor cannot seek. */
bool store_shared(store *s);

/* What a store holds: offsets, bytes, and (the local log) segment files; the name of its
 * backend ("log", "nats").  For the metrics: on JetStream it asks the server. */
typedef struct {
    uint64_t first, next;           /* as store_bounds */
    uint64_t bytes;
    unsigned segments;              /* 0 on JetStream */
    const char *backend;
} store_figures;
void store_get_figures(store *s, store_figures *f);

/* A group's state, on a shared store (STORE_EINVAL otherwise): records not given to any reader
 * yet, given and not done, given more than once, and readers waiting for records. */
typedef struct {
    uint64_t pending, in_hand, redelivered, waiting;
} store_group_figures;
store_status store_get_group_figures(store *s, const char *group, store_group_figures *g);
store_status store_cursor_open_group(store *s, const char *group, store_cursor **out);
store_status store_cursor_done(store_cursor *c, const uint64_t *offsets, size_t n);

/* Named cursors: store_commit persists offset under name atomically and durably (letters, digits,
 * '.', '_', '-'; at most VM_MAX_NAME (200) bytes; not starting with '.'); store_committed reads it back. */
store_status store_commit(store *s, const char *name, uint64_t offset);
store_status store_committed(store *s, const char *name, uint64_t *offset);

/* A named cursor that is a position `high` and up to STORE_MAX_PENDING offsets below it still to
 * be done (a reader with several records in hand): store_committed gives the lowest of them.
 * store_committed_pending fills pending (room for STORE_MAX_PENDING) and *npending. */
#define STORE_MAX_PENDING 256
store_status store_commit_pending(store *s, const char *name, uint64_t high,
                                  const uint64_t *pending, size_t npending);
store_status store_committed_pending(store *s, const char *name, uint64_t *high,
                                     uint64_t *pending, size_t *npending);

/* The names of the store's named cursors (store_commit, store_commit_pending), sorted (strcmp);
 * cursor sets are not among them.  *names and each name are malloc'd: free each, then the array. */
store_status store_cursor_names(store *s, char ***names, size_t *n);
/* Removes named cursor name durably (its file gone, the directory synced): store_committed then
 * gives STORE_NOTFOUND.  STORE_OK if there was none.  A cursor set of that name is left alone. */
store_status store_forget(store *s, const char *name);

/* Cursor sets: many named positions committed together in one write and one sync, for a reader
 * with more positions than single named cursors could keep up with (the daemon's (rule, target)
 * pairs).  A set has a name of its own (a cursor's name: a set and a named cursor of the same name
 * are two different things), a base position, and entries: positions of names, each a named
 * cursor's name (store_cursor_name_ok) with a position `high` and up to STORE_MAX_PENDING offsets
 * below it still to be done, as store_commit_pending keeps.  What a name without an entry means
 * is the caller's (for the daemon: at the base). */
typedef struct {
    char *name;             /* its name (letters, digits, '.', '_', '-'; not '.' first) */
    uint64_t high;          /* everything below is done but the pending offsets */
    uint64_t *pending;      /* offsets below high still to do: in any order, a repeated one
                             * counting once (read back strictly increasing); NULL when none */
    size_t npending;        /* at most STORE_MAX_PENDING */
} store_pos;

/* Commits cursor set `set` whole: base and the entries e[0..n) (in any order, each name once)
 * replace what the set held, atomically (a crash leaves the old set or the new one, never a mix)
 * and durably (on disk when it returns), in one write and one sync of the file, plus its rename
 * and the directory's sync.  STORE_EINVAL for a bad set or entry name, a name given twice, more
 * than STORE_MAX_PENDING pending offsets or one not below high, or a store opened read-only.
 * STORE_EIO when the write, a sync or the rename fails: the set then reads as it was (or, if only
 * the directory's sync failed, as committed, perhaps not durably). */
store_status store_commit_set(store *s, const char *set, uint64_t base, const store_pos *e,
                              size_t n);
/* Reads set `set` back: its base, and its entries in *e (malloc'd, free with store_set_free;
 * NULL when n is 0), sorted by name (strcmp).  STORE_NOTFOUND when it was never committed;
 * STORE_CORRUPT, with a message naming the file and what is wrong, when the file is damaged (a
 * checksum that does not match, counts, names or offsets out of shape); STORE_EINVAL for a bad
 * set name. */
store_status store_committed_set(store *s, const char *set, uint64_t *base, store_pos **e,
                                 size_t *n);
void store_set_free(store_pos *e, size_t n);
/* The names of the store's cursor sets, as store_cursor_names gives those of named cursors. */
store_status store_set_names(store *s, char ***names, size_t *n);

/* Applies retention as of now_ns (a background thread does this every second with the clock;
 * tests call it with a time of their choosing).  *deleted (may be NULL) counts segments deleted. */
store_status store_retain(store *s, int64_t now_ns, unsigned *deleted);

/* Can s take appends now?  True when it can; false, with the cause in err (cap bytes, may be 0),
 * while a failed write or sync has it refusing them: the local log then retries by itself
 * (docs/storage.md, "After a failed write or sync").  Cheap: no I/O, one lock. */
bool store_health(store *s, char *err, size_t errcap);

/* Makes every cursor of s that is waiting for a record return STORE_TIMEOUT now (a reader that
 * must stop need not wait out its timeout). */
void store_wake(store *s);

const char *store_error(store *s);      /* the message of the last failure */
void store_close(store *s);             /* waits for appends in flight; cursors must be closed */

/* The storage options bus `bus` of program p declares (fsync, segment_size, retention,
 * retention_size; docs/language.md), the defaults where it says nothing. */
void rt_bus_store_options(const vm_program *p, uint32_t bus, store_options *o);

/* ---- NATS JetStream (nats.c, docs/storage.md "NATS JetStream") ------------------------------ */

typedef struct {
    const char *const *urls;        /* the servers (nats:// or tls://), at least one */
    size_t nurls;
    const char *stream;             /* the stream that holds the bus (subject "ebr.STREAM") */
    unsigned replicas;              /* 1..5; default 1 */
    const char *user, *password;    /* credentials: these, or a token, or a creds file */
    const char *token;
    const char *creds;
    const char *name;               /* the connection's name, as the server lists it */
    int64_t ack_wait_ns;            /* group cursors: default 30 s */
    size_t max_held;                /* records a group cursor holds at once; default 65,536 */
} store_nats_options;

/* Connects to NATS and opens (creating it, or changing it to o's limits and the replicas asked
 * for) the stream of bus; o: retention and retention_bytes become the stream's limits, max_record
 * its largest message (at most the server's max_payload); with o->read_only the stream is
 * neither made nor changed (STORE_NOTFOUND when there is none) and appends are refused.  Fails
 * with a message in err when the servers cannot be reached or JetStream refuses the stream. */
store_status nats_open(const store_nats_options *n, const store_options *o, store **out,
                       char *err, size_t errcap);

/* Does bus `bus` of p live on NATS JetStream (`log nats ...`, docs/language.md)?  1 with *n
 * filled (its strings malloc'd, env() values read now; the stream EBR_BUS in capitals unless
 * named): free with rt_bus_nats_free; 0 for the local log; -1 with the cause in err (an
 * environment variable not set, a URL from one that is not nats:// or tls://). */
int rt_bus_nats_options(const vm_program *p, uint32_t bus, store_nats_options *n, char *err,
                        size_t cap);
void rt_bus_nats_free(store_nats_options *n);

/* A text value of the rules' options: a string, or env("NAME") read now; malloc'd.  NULL with
 * err set when the variable is not set (or v is NULL, without a message). */
char *rt_cfg_text(const vm_program *p, const vm_cfg *v, char *err, size_t cap);

/* ---- The local log's own tools and figures ---------------------------------------------- */

typedef struct {
    uint64_t first, next;           /* offsets kept */
    uint64_t written, durable;      /* records below these offsets are written / synced */
    uint64_t bytes;                 /* total size of the segments */
    unsigned segments;
    uint64_t fsyncs, writes;        /* system calls made so far */
    unsigned appending;             /* appends in progress */
} log_stats;

void log_get_stats(store *s, log_stats *st);

/* Tests only: fault injection.  When fn is set, the log's writer calls it before each write
 * ("write"), sync ("sync") and truncation ("truncate") of a segment file, and a commit before
 * the write ("cursor write"), sync ("cursor sync") and rename ("cursor rename") of a named
 * cursor's or a cursor set's temporary file; a non-zero return makes that call fail with that
 * errno, as if the system had refused it.  NULL by default (then it costs a test of a pointer).
 * Set it before the calls it is to see. */
void log_set_fault(store *s, int (*fn)(void *arg, const char *op), void *arg);

/* Verifies every record of the log in dir offline, reporting each problem (a torn tail, a corrupt
 * record with its file, position and offsets, a missing or stale index, a gap in the offsets, a
 * damaged named cursor or cursor set file) through report; with fix, first repairs what can be
 * repaired without losing a whole record (a torn tail is truncated, indexes rebuilt; never a
 * cursor).  Returns the number of problems left; -1 if dir is not a log (message in err). */
long log_check(const char *dir, bool fix, void (*report)(void *, const char *), void *arg,
               char *err, size_t errcap);

#endif
