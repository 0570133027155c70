/*
 * deliver.c — from the bus log to the targets (docs/ebd.md, "Delivery").
 *
 * Per bus a router reads the log once, runs the matcher once per event and queues the event's
 * offset for each (rule, target) pair whose rule matched it.  A pair is data, never a thread: a
 * fixed pool of delivery threads (server { delivery_threads N }, by default one per core) gives
 * each pair with something queued a turn: it runs the rule's transform and hands the payload
 * over, http through one libcurl multi handle per thread, lines to files and events to buses in
 * batches, retries on one timer heap per thread.  A slow or failing target holds back only its
 * own pairs.  Where each pair stands is committed per bus in one cursor set (one write and one
 * sync for every pair that moved) every 200 ms while events move, after syncing file targets;
 * after a crash delivery resumes from it: at least once.  Idle, nothing polls: threads sleep
 * until a router wakes them, or once a second.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../aws/aws.h"
#include "../center/center.h"
#include "../center/trace.h"
#include "../schema/schema.h"
#include "delivery_int.h"

#define COMMIT_EVERY_MS 200
#define COMMIT_EVERY_EVENTS 256

/* ---- the pairs that have run ----------------------------------------------------------------
 * DATA/pairs/BUS lists, a name per line, every pair of the bus that ever took a position.  A
 * pair listed there whose cursor is gone (removed by hand, a backup restored without it) has
 * lost its place: it starts again from the oldest event kept, with an error in the log, rather
 * than silently skip its backlog. */

typedef struct {
    char **v;
    size_t n, cap;
    bool changed;
} namelist;

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void pairs_path(const ebd *d, const char *bus, char *out, size_t cap)
{
    snprintf(out, cap, "%s/pairs/%s", d->data_dir, bus);
}

/* Adds name (kept sorted when the list is written). */
static bool pairs_add(namelist *l, const char *name)
{
    if (l->n == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 64;
        char **v = realloc(l->v, c * sizeof *v);
        if (!v)
            return false;
        l->v = v;
        l->cap = c;
    }
    if (!(l->v[l->n] = strdup(name)))
        return false;
    l->n++;
    l->changed = true;
    return true;
}

/* Reads bus's list (sorted; empty when there is none yet); false when it cannot be read. */
static bool pairs_load(const ebd *d, const char *bus, namelist *l, char *err, size_t cap)
{
    char path[4400];
    pairs_path(d, bus, path, sizeof path);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT)
            return true;
        snprintf(err, cap, "cannot read %s: %s", path, strerror(errno));
        return false;
    }
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    bool ok = true;
    while (ok && (n = getline(&line, &lcap, f)) > 0) {
        if (line[n - 1] == '\n')
            line[--n] = 0;
        if (n > 0)
            ok = pairs_add(l, line);
    }
    free(line);
    fclose(f);
    if (!ok)
        snprintf(err, cap, "out of memory reading %s", path);
    l->changed = false;       /* as read: nothing to write back */
    qsort(l->v, l->n, sizeof *l->v, cmp_name);
    return ok;
}

static bool pairs_has(const namelist *l, const char *name)
{
    return l->n && bsearch(&name, l->v, l->n, sizeof *l->v, cmp_name) != NULL;
}

/* Writes bus's list whole, durably (a new file synced, renamed over the old, the folder synced). */
static bool pairs_save(const ebd *d, const char *bus, namelist *l, char *err, size_t cap)
{
    char dir[4300], path[4400], tmp[4500];
    snprintf(dir, sizeof dir, "%s/pairs", d->data_dir);
    mkdir(dir, 0755);
    pairs_path(d, bus, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    qsort(l->v, l->n, sizeof *l->v, cmp_name);
    FILE *f = fopen(tmp, "w");
    bool ok = f != NULL;
    for (size_t i = 0; ok && i < l->n; i++)
        ok = fprintf(f, "%s\n", l->v[i]) > 0;
    ok = f && fflush(f) == 0 && fsync(fileno(f)) == 0 && ok;
    if (f && fclose(f) != 0)
        ok = false;
    ok = ok && rename(tmp, path) == 0;
    int dfd = ok ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    ok = ok && dfd >= 0 && fsync(dfd) == 0;
    if (dfd >= 0)
        close(dfd);
    if (!ok)
        snprintf(err, cap, "cannot write %s: %s", path, strerror(errno));
    return ok;
}

static void pairs_free(namelist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
}

/* ---- where each pair stands: the bus's cursor set --------------------------------------------
 * Every pair of a bus keeps its position in one cursor set of the bus's log, SET_NAME, committed
 * whole (one write and one sync per bus per commit, however many pairs moved): a base, the
 * router's position, and an entry for each pair that is not at the base (something queued or in
 * flight below it, a start above it).  A pair without an entry is at the base.  The book is the
 * set as last committed, kept in memory across reloads; a commit replaces the entries of the
 * pairs the running rules have and keeps the others (a pair a reload removed, a pair a reload
 * is adding while the old rules still run). */

#define SET_NAME "delivery"
#define GROUP_NAME EBD_GROUP

struct ebd_book {
    pthread_mutex_t mu;
    bool loaded;
    bool broken;                  /* its set cannot be read: the bus's deliveries stay stopped */
    uint64_t base;
    store_pos *e;                 /* sorted by name */
    size_t n;
};

void ebd_book_free(ebd_book *b)
{
    if (!b)
        return;
    store_set_free(b->e, b->n);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

static int cmp_pos(const void *a, const void *b)
{
    return strcmp(((const store_pos *)a)->name, ((const store_pos *)b)->name);
}

static store_pos *book_find(const ebd_book *b, const char *name)
{
    store_pos key = { .name = (char *)name };
    return b->n ? bsearch(&key, b->e, b->n, sizeof *b->e, cmp_pos) : NULL;
}

/* Appends a copy of (name, high, pending) to v[*n] (room is the caller's). */
static bool pos_set(store_pos *p, const char *name, uint64_t high, const uint64_t *pend, size_t np)
{
    p->name = strdup(name);
    p->high = high;
    p->npending = np;
    p->pending = np ? malloc(np * sizeof *pend) : NULL;
    if (np && p->pending)
        memcpy(p->pending, pend, np * sizeof *pend);
    return p->name && (!np || p->pending);
}

/* The first time a bus is used: its set, or, from a data directory of a release that kept one
 * cursor file per pair, those files converted into the set (written durably, then the files
 * removed; a daemon stopped in between finds both, and the set wins).  Without either, a bus
 * whose pairs ran before (known, DATA/pairs/BUS) lost its positions: every pair starts again
 * from the oldest event kept, loudly, rather than skip its backlog.  A set that cannot be read
 * marks the book broken: the bus's deliveries stay stopped, with an error in the log.  False
 * only when the conversion cannot be written (err). */
static bool book_load(ebd_bus *bus, const namelist *known, char *err, size_t cap)
{
    if (!bus->book) {
        if (!(bus->book = calloc(1, sizeof *bus->book))) {
            snprintf(err, cap, "out of memory");
            return false;
        }
        pthread_mutex_init(&bus->book->mu, NULL);
    }
    ebd_book *bk = bus->book;
    if (bk->loaded)
        return true;
    store *s = bus->s;
    store_pos *e = NULL;
    size_t n = 0;
    uint64_t base = 0, first, next;
    char **singles = NULL;
    size_t nsingles = 0;
    store_bounds(s, &first, &next);
    store_status st = store_committed_set(s, SET_NAME, &base, &e, &n);
    if (st == STORE_OK) {
        /* single cursors left by a conversion that stopped before removing them: stale */
        if (store_cursor_names(s, &singles, &nsingles) == STORE_OK)
            for (size_t i = 0; i < nsingles; i++)
                store_forget(s, singles[i]);
    } else if (st == STORE_NOTFOUND) {
        if (store_cursor_names(s, &singles, &nsingles) != STORE_OK) {
            snprintf(err, cap, "bus '%s': cannot list its cursors: %s", bus->name, store_error(s));
            return false;
        }
        e = calloc(nsingles + known->n + 1, sizeof *e);
        if (!e) {
            snprintf(err, cap, "out of memory");
            return false;
        }
        base = next;
        bool ok = true;
        for (size_t i = 0; ok && i < nsingles; i++) {
            uint64_t high, pend[STORE_MAX_PENDING];
            size_t np = 0;
            if (store_committed_pending(s, singles[i], &high, pend, &np) != STORE_OK) {
                ebd_log(EBD_ERROR, "msg=\"cannot read a delivery cursor to convert it: the bus's "
                        "deliveries stay stopped until it is fixed and ebd restarted\" bus=%s "
                        "cursor=%s error=\"%s\"", bus->name, singles[i], store_error(s));
                ok = false;
                break;
            }
            ok = pos_set(&e[n++], singles[i], high, pend, np);
            uint64_t low = np ? pend[0] : high;
            if (low < base)
                base = low;
        }
        /* pairs that ran but whose file is gone: from the oldest event kept */
        for (size_t i = 0; ok && known->n && i < known->n; i++) {
            bool have = false;
            for (size_t k = 0; k < nsingles && !have; k++)
                have = !strcmp(singles[k], known->v[i]);
            if (have)
                continue;
            if (nsingles)
                ebd_log(EBD_ERROR, "msg=\"a delivery cursor is missing though the pair has run "
                        "before: it starts again from the oldest event kept, so events may be "
                        "delivered twice, rather than skip its backlog\" bus=%s cursor=%s from=%"
                        PRIu64 " end=%" PRIu64, bus->name, known->v[i], first, next);
            ok = pos_set(&e[n++], known->v[i], first, NULL, 0);
            base = first;
        }
        if (ok && !nsingles && known->n) {
            ebd_log(EBD_ERROR, "msg=\"the delivery positions of a bus are missing though its pairs "
                    "have run before: they start again from the oldest event kept, so events may "
                    "be delivered twice, rather than skip their backlog\" bus=%s from=%" PRIu64
                    " end=%" PRIu64, bus->name, first, next);
            store_set_free(e, n);
            e = NULL;
            n = 0;
            base = first;
        }
        if (!ok) {
            store_set_free(e, n);
            e = NULL;
            n = 0;
            bk->broken = true;
        } else {
            if (n)
                qsort(e, n, sizeof *e, cmp_pos);
            if (nsingles || known->n) {
                if (store_commit_set(s, SET_NAME, base, e, n) != STORE_OK) {
                    snprintf(err, cap, "bus '%s': cannot write its delivery positions: %s",
                             bus->name, store_error(s));
                    store_set_free(e, n);
                    for (size_t i = 0; i < nsingles; i++)
                        free(singles[i]);
                    free(singles);
                    return false;
                }
                for (size_t i = 0; i < nsingles; i++)
                    store_forget(s, singles[i]);
                if (nsingles)
                    ebd_log(EBD_INFO, "msg=\"delivery cursors converted into the bus's cursor set\" "
                            "bus=%s cursors=%zu base=%" PRIu64, bus->name, nsingles, base);
            }
        }
    } else {
        ebd_log(EBD_ERROR, "msg=\"cannot read the delivery positions: the bus's deliveries stay "
                "stopped until they are fixed and ebd restarted\" bus=%s error=\"%s\"", bus->name,
                store_error(s));
        bk->broken = true;
    }
    for (size_t i = 0; i < nsingles; i++)
        free(singles[i]);
    free(singles);
    bk->base = base;
    bk->e = e;
    bk->n = n;
    bk->loaded = true;
    return true;
}

/* ---- the pairs ---------------------------------------------------------------------------------
 * A (rule, target) pair is data, never a thread: a queue of the offsets its rule matched (or
 * failed), the deliveries it has in flight, where it starts.  Its bus's router fills the queue;
 * one of the delivery threads empties it. */

typedef struct {
    uint64_t off;
    char *failed;                 /* matching failed for the rule: why (malloc'd), else NULL */
} qent;

typedef struct ebd_pair ebd_pair;

struct ebd_pair {
    uint32_t rule, target, pbus;  /* in r->p */
    uint32_t th;                  /* its delivery thread */
    char *name;                   /* RULE.TARGET: its name in the cursor set */
    const char *rule_name;
    ebd_target *t;
    bool runs;                    /* its bus's positions were read: it delivers */
    bool in_order;                /* one delivery (or one batch of lines) at a time */
    unsigned window;              /* otherwise: deliveries in flight at once */
    uint64_t start;               /* it takes events from here on */
    uint64_t *spend;              /* offsets its last run left pending below start: done first */
    uint32_t nspend, ispend;
    /* under its thread's mu: */
    qent *q;
    uint32_t qcap, qhead, qn;
    bool catchup;                 /* the router stopped queueing for it at catchup_from... */
    uint64_t catchup_from;
    bool catching;                /* ...and it reads the log itself: cpos is the next offset */
    uint64_t cpos;
    uint64_t *fl;                 /* offsets taken and not finished (in flight, waiting a retry) */
    uint32_t nfl, capfl;
    bool on_ready;
    ebd_pair *next_ready;
    ebd_pair *next_snooze;        /* its thread's alone */
    bool snoozed;
    ebd_pair *next_slotwait;      /* waiting for a slot of its target (its thread's alone) */
    bool slotwaiting;
    /* its thread's alone: */
    unsigned running;             /* items not finished */
};

/* Fixes where each new pair starts: one that has never run, at the end of its bus's log now
 * (an entry in the set, committed at once).  This runs while the rules are prepared, before
 * ingest can acknowledge an event under them (at start-up before the listener opens; at reload
 * before the swap), so every event acknowledged under these rules is at or after each new
 * pair's start: none falls in a gap between "acknowledged" and "the pair took its position".
 * An event acknowledged during a reload, before the swap, may reach a rule that the reload adds
 * (docs/ebd.md).  The pairs that ever ran are listed in DATA/pairs/BUS.  False, with the cause
 * in err, when a position cannot be read or made durable. */
static bool claim_new_pairs(ebd *d, ebd_rules *r, ebd_pair *pairs, size_t npairs, char *err,
                            size_t cap)
{
    const vm_program *p = r->p;
    size_t nb = d->nbuses ? d->nbuses : 1;
    namelist *known = calloc(nb, sizeof *known);
    bool *used = calloc(nb, sizeof *used);
    bool ok = known && used;
    if (!ok)
        snprintf(err, cap, "out of memory");
    for (uint32_t b = 0; ok && b < p->nbuses; b++)
        if (r->bus_of[b] != VM_NONE)
            used[r->bus_of[b]] = true;
    for (size_t b = 0; ok && b < d->nbuses; b++) {
        if (!used[b])
            continue;
        ebd_bus *bus = d->buses[b];
        if (store_shared(bus->s))
            continue;                     /* (positions in the stream's consumer: no book) */
        if (!(ok = pairs_load(d, bus->name, &known[b], err, cap)) ||
            !(ok = book_load(bus, &known[b], err, cap)))
            break;
        ebd_book *bk = bus->book;
        if (bk->broken)
            continue;
        uint64_t first, next;
        store_bounds(bus->s, &first, &next);
        pthread_mutex_lock(&bk->mu);
        /* (which pairs are new is decided before any name is added: the lists are sorted as
         * read, and an added name goes unsorted at the end until they are sorted or written) */
        size_t added = 0, n0 = bk->n;
        bool *fresh = calloc(npairs + 1, sizeof *fresh);
        store_pos *v = fresh ? realloc(bk->e, (bk->n + npairs + 1) * sizeof *v) : NULL;
        if (!(ok = v != NULL))
            snprintf(err, cap, "out of memory");
        else
            bk->e = v;
        for (size_t i = 0; ok && i < npairs; i++)
            fresh[i] = r->bus_of[pairs[i].pbus] == b && !pairs_has(&known[b], pairs[i].name);
        for (size_t i = 0; ok && i < npairs; i++) {
            if (!fresh[i])
                continue;
            store_pos key = { .name = pairs[i].name };
            if (!n0 || !bsearch(&key, bk->e, n0, sizeof *bk->e, cmp_pos)) {
                if ((ok = pos_set(&bk->e[bk->n], pairs[i].name, next, NULL, 0))) {
                    bk->n++;
                    added++;
                }
            }
            if (ok && !pairs_add(&known[b], pairs[i].name))
                ok = false;
            if (!ok)
                snprintf(err, cap, "out of memory");
        }
        free(fresh);
        if (added)
            qsort(bk->e, bk->n, sizeof *bk->e, cmp_pos);
        if (ok && added && store_commit_set(bus->s, SET_NAME, bk->base, bk->e, bk->n) != STORE_OK) {
            snprintf(err, cap, "bus '%s': cannot fix where its new deliveries start: %s",
                     bus->name, store_error(bus->s));
            ok = false;
        }
        pthread_mutex_unlock(&bk->mu);
    }
    for (size_t b = 0; known && b < d->nbuses; b++) {
        if (ok && known[b].changed)
            ok = pairs_save(d, d->buses[b]->name, &known[b], err, cap);
        pairs_free(&known[b]);
    }
    free(known);
    free(used);
    return ok;
}

/* ---- the engine: routers, delivery threads, committer ---------------------------------------- */

/* Why matching failed for every rule of the bus: the event itself could not be read (the
 * scanner's message).  Stored events passed the same check at ingest, so this should not
 * happen; if it does, each rule's dead letter says so. */
static void event_failed(const vm_error *e, char *out, size_t cap)
{
    snprintf(out, cap, "the event cannot be matched: %s", e->msg);
}

/* The error of rule ri among the rules the last vm_match on ctx failed, or NULL. */
static const char *rule_failure(vm_ctx *ctx, uint32_t ri)
{
    const vm_rule_error *f;
    size_t n = vm_match_failures(ctx, &f);
    for (size_t i = 0; i < n; i++)
        if (f[i].rule == ri)
            return f[i].err.msg;
    return NULL;
}


/* A pair's queue holds what the router matched for it; past its bound the pair reads the log
 * itself (catching up: every event read and matched, once per thread for MCACHE events).  The
 * bound is QUEUE_MAX (`server { delivery_queue N }`), but QUEUE_CAP (or N if less) while the
 * queues of all pairs together hold more than QUEUED_BUDGET entries (16 bytes each: 64 MB).  A
 * burst of 114K events to 10,000 rules (2.3M deliveries) overflowed 1,024 per pair in hundreds
 * of pairs, whose catching up then read and matched 60K events each: 1.95M delivered in 120 s;
 * queued, all 2.2M in 35 s. */
#define QUEUE_CAP 1024
#define QUEUE_MAX 65536
#define QUEUED_BUDGET ((size_t)1 << 22)
static _Atomic size_t queued_total;   /* entries in the queues of every pair (all engines) */
#define BATCH_MAX 64              /* lines (file) or events (bus) a pair hands over at once */
#define WINDOW_DEFAULT 16
#define WINDOW_MAX 256
#define PUMP_BUDGET 256           /* events one pair takes in one turn: then the others go */
#define SNOOZE_MS 5               /* a pair level with the log waits for its router this long */
#define MCACHE 256                /* events (and their matches) a thread keeps for catching up */
#define YIELD_NICE 19             /* routers' and delivery threads' niceness: the lowest */
#define IDLE_WAKE_MS 10000        /* an idle thread wakes this often (stopping wakes it at once) */

/* An event as a delivery holds it: shared by the pairs that deliver it (fan-out), freed by
 * the last. */
typedef struct {
    unsigned ref;
    uint64_t off;
    int64_t time_ns;
    uint32_t len;
    char *line;                   /* the event on one line, with its line feed: made once for the */
    size_t nline;                 /*   file targets of a fan-out (rules without a transform) */
    unsigned char data[];
} recbuf;

typedef struct item item;
typedef struct dthread dthread;

/* One delivery of one event by one pair: its payload, its attempts, its retry timer; when it
 * is refused or exhausted, the same item carries the dead letter. */
struct item {
    ebd_pair *p;
    uint64_t off;
    recbuf *rec;                  /* NULL: not read yet (a read that failed: tried again) */
    bool known;                   /* the router matched it for the rule */
    bool made;                    /* its payload is made */
    char *failed;                 /* matching failed for the rule: why */
    char *payload;                /* malloc'd, or the event itself (shared) */
    size_t plen;
    bool text;
    bool shared;                  /* payload is rec->data: a rule without a transform */
    ebd_target *t;                /* where the attempt goes: the pair's target, or its dead letter */
    unsigned attempts;            /* at the pair's target */
    int64_t t0;                   /* the attempt in hand started (mt_now_ns: metrics) */
    int64_t first_ms;             /* the first attempt (real time) */
    bool dl;                      /* payload is the dead letter */
    const char *dl_file;          /* ...for this file (no dead-letter target) */
    unsigned dl_tries;
    bool slot;                    /* holds one of t's concurrency slots */
    int64_t due;                  /* waiting: when to try again (monotonic ms) */
    uint64_t seq;                 /* (equal dues go in the order they were set) */
    cmd_job *job;                 /* exec in flight: watched through wfd[w0, w0 + nw) */
    uint32_t w0, nw;
    int64_t jdue;                 /*   and stepped by then (-1: when a descriptor says) */
    bool watched;
    item *jnext;                  /* in the thread's list of commands running */
    CURL *h;                      /* http in flight */
    struct curl_slist *headers;
    http_seen seen;
    struct hbatch *hb;            /* http in flight in a batch request (the first item's) */
    int64_t tr_start;             /* its attempt started (trace_clock_ms) */
    item *next;                   /* in a batch, or the list of those waiting for a slot */
};

/* One request of an http target with `batch`: the items it carries (linked by next), in order. */
typedef struct hbatch {
    CURL *h;
    struct curl_slist *headers;
    http_seen seen;
    char *body;
    ebd_target *t;
    item *items;
} hbatch;

struct dthread {
    ebd_engine *e;
    unsigned idx;
    pthread_t th;
    bool started;
    pthread_mutex_t mu;           /* its pairs' queues and in-flight lists, its ready list */
    ebd_pair *ready, *ready_tail;
    bool woken;
    CURLM *multi;
    vm_ctx *ctx;
    store_cursor **cur;           /* per bus of the program, opened when first read */
    recbuf *cache;                /* the last event read, of bus cache_bus */
    uint32_t cache_bus;
    /* Pairs catching up read the same events one after another (a fan-out whose queues
     * overflowed): the recent events they read, and what the matcher said of each, so that an
     * event is read and matched once per thread, not once per pair.  By offset modulo MCACHE. */
    struct {
        recbuf *rec;
        uint32_t pbus;
        uint32_t *rules;          /* the rules it matched (sorted); NULL: not matched here yet */
        size_t nrules;
    } mc[MCACHE];
    item **heap;                  /* waiting items, by due */
    size_t nheap, capheap;
    uint64_t seq;
    item *blocked;                /* waiting for a slot of their target */
    ebd_pair *snooze;             /* pairs that could not read the log: again at snooze_until */
    int64_t snooze_until;
    ebd_pair *slotwait, *slotwait_tail;   /* pairs whose target had no slot free */
    int64_t slotwait_at;          /* when they look again (or when a slot of this thread frees) */
    bool freed;                   /* a slot was given back since they last looked */
    struct { ebd_pair *p; uint64_t off; } *done;   /* finished, not yet out of their lists */
    size_t ndone, capdone;
    ebd_pair *same_p;             /* in a batch's results: the in-order pair that waits, and */
    int64_t same_due;             /*   until when (its later events wait as long, in order) */
    item **bfirst, **blast;       /* per target: the lines (file) or events (bus) to hand over */
    uint32_t *touched;            /* targets with a batch */
    size_t ntouched;
    CURL **easy;                  /* handles to use again */
    size_t neasy, capeasy;
    unsigned running;             /* http transfers and commands in flight */
    item *jobs;                   /* the commands running */
    struct curl_waitfd *wfd;      /* what curl_multi_poll watches for them */
    size_t capwfd;
    unsigned seed;
};

typedef struct {
    ebd_engine *e;
    uint32_t pbus;
    ebd_bus *bus;
    ebd_pair **pairs;             /* its pairs, sorted by name */
    size_t npairs;
    ebd_pair **scratch;           /* the pairs an event goes to */
    pthread_mutex_t mu;
    uint64_t pos;                 /* the next offset it looks at: everything before is queued */
    pthread_t th;
    bool started;
    _Atomic bool dirty;           /* moved since its last commit */
    /* A bus several daemons share (store_shared: NATS JetStream): the router reads a group
     * cursor, each event counts the deliveries it is queued for (acks), and an event whose
     * deliveries all finished is done (done[]), said to the store at the next commit, after
     * the file targets' sync (commit_all). */
    bool shared;
    store_cursor *gc;             /* (closed after the last commit: what is not done goes back) */
    pthread_mutex_t amu;          /* acks and done */
    /* open addressing by off+1 (0: free); with each event's bytes, which the delivery threads
     * copy rather than ask the stream for them again (a round trip to the server each) */
    struct ackslot { uint64_t off; uint32_t left, len; int64_t time_ns; unsigned char *data; } *acks;
    size_t acap, an;
    uint64_t *done;
    size_t ndone, capdone;
} router;

struct ebd_engine {
    ebd *d;
    ebd_rules *r;
    ebd_pair *pairs;
    size_t npairs;
    uint32_t *rule_pair0;         /* per rule: its first pair (a rule's pairs are consecutive) */
    char **rule_names;
    router *routers;              /* per bus of the program */
    dthread *th;
    unsigned nth;
    pthread_t committer;
    bool committer_started;
    pthread_mutex_t cmu;
    pthread_cond_t ccv;
    _Atomic bool cdirty;
    _Atomic bool *file_dirty;     /* per target: lines written since its last sync */
    uint32_t qmax;                /* a pair's queue bound (QUEUE_MAX, or delivery_queue) */
};

/* ---- small pieces ----------------------------------------------------------------------------- */

static void recbuf_put(recbuf *b)
{
    if (b && --b->ref == 0) {
        free(b->line);
        free(b);
    }
}

static void mark_dirty(ebd_engine *e)
{
    if (!atomic_exchange(&e->cdirty, true)) {
        pthread_mutex_lock(&e->cmu);
        pthread_cond_signal(&e->ccv);
        pthread_mutex_unlock(&e->cmu);
    }
}

/* ---- a shared bus's events in hand: how many deliveries each still waits for ------------------- */

static size_t ack_home(const router *rt, uint64_t off)
{
    return (size_t)((off * 0x9e3779b97f4a7c15ULL) >> 17) & (rt->acap - 1);
}

/* Under rt->amu: the event at off is done (acknowledged at the next commit). */
static void done_push(router *rt, uint64_t off)
{
    if (rt->ndone == rt->capdone) {
        size_t c = rt->capdone ? rt->capdone * 2 : 256;
        uint64_t *v = realloc(rt->done, c * sizeof *v);
        if (!v) {                         /* (never acknowledged: held until this daemon stops, then
                                           * given again and delivered twice) */
            ebd_log(EBD_ERROR, "msg=\"out of memory: an event will be delivered again\" bus=%s "
                    "offset=%" PRIu64, rt->bus->name, off);
            return;
        }
        rt->done = v;
        rt->capdone = c;
    }
    rt->done[rt->ndone++] = off;
}

/* Under rt->amu: the slot of the event at off, or NULL. */
static struct ackslot *ack_find(router *rt, uint64_t off)
{
    if (!rt->acap)
        return NULL;
    size_t mask = rt->acap - 1, i = ack_home(rt, off);
    while (rt->acks[i].off && rt->acks[i].off != off + 1)
        i = (i + 1) & mask;
    return rt->acks[i].off ? &rt->acks[i] : NULL;
}

/* The router queued the event rec for n deliveries (0: it is done now), keeping a copy of it
 * for them.  False without memory: then it is never done here, and goes back to the group when
 * the cursor closes. */
static bool ack_add(router *rt, const store_record *rec, uint32_t n)
{
    uint64_t off = rec->offset;
    unsigned char *data = n ? malloc(rec->len ? rec->len : 1) : NULL;
    if (n && !data)
        return false;
    if (data)
        memcpy(data, rec->data, rec->len);
    pthread_mutex_lock(&rt->amu);
    bool ok = true;
    if (!n) {
        done_push(rt, off);
    } else {
        if ((rt->an + 1) * 2 > rt->acap) {
            size_t ocap = rt->acap, ncap = ocap ? ocap * 2 : 1024;
            struct ackslot *old = rt->acks, *v = calloc(ncap, sizeof *v);
            if (!v)
                ok = false;
            else {
                rt->acks = v;
                rt->acap = ncap;
                for (size_t i = 0; i < ocap; i++)
                    if (old[i].off) {
                        size_t j = ack_home(rt, old[i].off - 1);
                        while (v[j].off)
                            j = (j + 1) & (ncap - 1);
                        v[j] = old[i];
                    }
                free(old);
            }
        }
        if (ok) {
            size_t j = ack_home(rt, off);
            while (rt->acks[j].off)
                j = (j + 1) & (rt->acap - 1);
            rt->acks[j] = (struct ackslot){ off + 1, n, rec->len, rec->time_ns, data };
            rt->an++;
        }
    }
    pthread_mutex_unlock(&rt->amu);
    if (!ok)
        free(data);
    return ok;
}

/* Under rt->amu: one of the deliveries of the event at off finished (delivered, dead-lettered
 * or dropped). */
static void ack_dec(router *rt, uint64_t off)
{
    struct ackslot *a = ack_find(rt, off);
    if (!a || --a->left)
        return;
    size_t mask = rt->acap - 1, i = (size_t)(a - rt->acks);
    done_push(rt, off);
    free(a->data);
    a->data = NULL;
    rt->acks[i].off = 0;                  /* out, the later entries of its run moved back */
    rt->an--;
    for (size_t j = (i + 1) & mask; rt->acks[j].off; j = (j + 1) & mask) {
        size_t k = ack_home(rt, rt->acks[j].off - 1);
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
            continue;
        rt->acks[i] = rt->acks[j];
        rt->acks[j] = (struct ackslot){ 0 };   /* (its data is slot i's now) */
        i = j;
    }
}

/* Under th->mu: puts p on its thread's ready list. */
static void pair_ready(dthread *th, ebd_pair *p)
{
    if (p->on_ready)
        return;
    p->on_ready = true;
    p->next_ready = NULL;
    if (th->ready_tail)
        th->ready_tail->next_ready = p;
    else
        th->ready = p;
    th->ready_tail = p;
}

/* Under th->mu: an offset taken (fl_add) or finished (fl_del). */
static bool fl_add(ebd_pair *p, uint64_t off)
{
    if (p->nfl == p->capfl) {
        uint32_t c = p->capfl ? p->capfl * 2 : 4;
        uint64_t *v = realloc(p->fl, c * sizeof *v);
        if (!v)
            return false;
        p->fl = v;
        p->capfl = c;
    }
    p->fl[p->nfl++] = off;
    return true;
}

static void fl_del(ebd_pair *p, uint64_t off)
{
    for (uint32_t i = 0; i < p->nfl; i++)
        if (p->fl[i] == off) {
            p->fl[i] = p->fl[--p->nfl];
            break;
        }
    if (!p->nfl && p->capfl > 64) {
        free(p->fl);
        p->fl = NULL;
        p->capfl = 0;
    }
}

/* ---- the timer: a binary heap of waiting items ------------------------------------------------- */

static bool heap_before(const item *a, const item *b)
{
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_push(dthread *th, item *it, int64_t due)
{
    if (th->nheap == th->capheap) {
        size_t c = th->capheap ? th->capheap * 2 : 64;
        item **v = realloc(th->heap, c * sizeof *v);
        if (!v) {
            /* no memory for the timer: try it on the next turn instead */
            it->next = th->blocked;
            th->blocked = it;
            return;
        }
        th->heap = v;
        th->capheap = c;
    }
    it->due = due;
    it->seq = th->seq++;
    size_t i = th->nheap++;
    while (i > 0 && heap_before(it, th->heap[(i - 1) / 2])) {
        th->heap[i] = th->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    th->heap[i] = it;
}

static item *heap_pop(dthread *th)
{
    item *top = th->heap[0], *last = th->heap[--th->nheap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= th->nheap)
            break;
        if (c + 1 < th->nheap && heap_before(th->heap[c + 1], th->heap[c]))
            c++;
        if (!heap_before(th->heap[c], last))
            break;
        th->heap[i] = th->heap[c];
        i = c;
    }
    if (th->nheap)
        th->heap[i] = last;
    return top;
}

/* ---- reading events ---------------------------------------------------------------------------- */

static store_cursor *thread_cursor(dthread *th, uint32_t pbus, uint64_t off)
{
    if (!th->cur[pbus]) {
        ebd_engine *e = th->e;
        store *s = e->d->buses[e->r->bus_of[pbus]]->s;
        if (store_cursor_open(s, off, &th->cur[pbus]) != STORE_OK)
            th->cur[pbus] = NULL;
    }
    return th->cur[pbus];
}

static recbuf *recbuf_of(const store_record *rec)
{
    recbuf *b = malloc(sizeof *b + rec->len + 1);
    if (!b)
        return NULL;
    b->ref = 1;
    b->line = NULL;
    b->nline = 0;
    b->off = rec->offset;
    b->time_ns = rec->time_ns;
    b->len = rec->len;
    memcpy(b->data, rec->data, rec->len);
    b->data[rec->len] = 0;
    return b;
}

/* The event at off on bus pbus, shared (a reference the caller puts back): the last one read is
 * kept, since in a fan-out many pairs read the same event one after another; queued events are
 * often consecutive, so the cursor seeks only when it is not there already.  STORE_BEHIND when
 * retention deleted it; another status when it cannot be read now. */
static store_status read_event(dthread *th, uint32_t pbus, uint64_t off, recbuf **out)
{
    if (th->cache && th->cache->off == off && th->cache_bus == pbus) {
        th->cache->ref++;
        *out = th->cache;
        return STORE_OK;
    }
    router *rt = &th->e->routers[pbus];
    if (rt->shared) {
        recbuf *b = NULL;
        pthread_mutex_lock(&rt->amu);
        struct ackslot *a = ack_find(rt, off);
        if (a && a->data && (b = malloc(sizeof *b + a->len + 1))) {
            *b = (recbuf){ .ref = 2, .off = off, .time_ns = a->time_ns, .len = a->len };
            memcpy(b->data, a->data, a->len);
            b->data[a->len] = 0;
        }
        pthread_mutex_unlock(&rt->amu);
        if (b) {
            recbuf_put(th->cache);
            th->cache = b;
            th->cache_bus = pbus;
            *out = b;
            return STORE_OK;
        }
    }
    store_cursor *c = thread_cursor(th, pbus, off);
    if (!c)
        return STORE_EIO;
    if (store_cursor_offset(c) != off)
        store_cursor_seek(c, off);
    store_record rec;
    store_status st = store_cursor_next(c, &rec, 0);
    if (st == STORE_OK && rec.offset != off)
        st = STORE_CORRUPT;
    if (st != STORE_OK)
        return st;
    recbuf *b = recbuf_of(&rec);
    if (!b)
        return STORE_EIO;
    recbuf_put(th->cache);
    th->cache = b;
    th->cache_bus = pbus;
    b->ref++;
    *out = b;
    return STORE_OK;
}

/* ---- making the payload ------------------------------------------------------------------------ */

static bool rule_matched(const uint32_t *rules, size_t n, uint32_t rule)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (rules[mid] == rule)
            return true;
        if (rules[mid] < rule)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* Matches the event for p's rule here (an event the last run left pending, or one read while
 * catching up), as the router would: 1 when the rule matches, 0 when not, -1 when matching
 * failed for the rule or for the event (why in err: the event goes to the dead letter). */
static int match_here(dthread *th, ebd_pair *p, const recbuf *rec, char *err, size_t cap)
{
    const uint32_t *rules;
    size_t nrules;
    vm_error e;
    size_t slot = rec->off % MCACHE;
    if (th->mc[slot].rec == rec && th->mc[slot].pbus == p->pbus && th->mc[slot].rules)
        return rule_matched(th->mc[slot].rules, th->mc[slot].nrules, p->rule);
    vm_status st = vm_match(th->ctx, p->pbus, (const char *)rec->data, rec->len, &rules, &nrules, &e);
    if (st == VM_OK && th->mc[slot].rec == rec && th->mc[slot].pbus == p->pbus &&
        (th->mc[slot].rules = malloc((nrules ? nrules : 1) * sizeof *rules))) {
        memcpy(th->mc[slot].rules, rules, nrules * sizeof *rules);
        th->mc[slot].nrules = nrules;
    }
    if (st != VM_OK && st != VM_ERR_RULE) {
        event_failed(&e, err, cap);
        return -1;
    }
    if (rule_matched(rules, nrules, p->rule))
        return 1;
    const char *why = st == VM_ERR_RULE ? rule_failure(th->ctx, p->rule) : NULL;
    if (!why)
        return 0;
    snprintf(err, cap, "%s", why);
    return -1;
}

/* The item's payload: the rule's transform (a function transform runs its command or request
 * here, on the delivery thread), stamped with its hop count for a bus target.  1 with
 * it->payload (malloc'd), 0 when the rule does not match after all, -1 with the reason in err. */
static int make_payload(dthread *th, item *it, char *err, size_t cap)
{
    ebd_pair *p = it->p;
    const vm_program *pr = th->e->r->p;
    const char *data = (const char *)it->rec->data;
    size_t len = it->rec->len;
    if (it->failed) {
        snprintf(err, cap, "%s", it->failed);
        return -1;
    }
    int m = it->known ? 1 : match_here(th, p, it->rec, err, cap);
    if (m <= 0)
        return m;
    const vm_rule *rule = &pr->rules[p->rule];
    vm_xform_env env = { .bus = th->e->routers[p->pbus].bus->name, .rule = p->rule_name,
                         .ingest_ms = it->rec->time_ns / 1000000 };
    const vm_xform *x = rule->xform != VM_NONE ? &pr->xforms[rule->xform] : NULL;
    it->text = false;
    if (x && (x->kind == VM_X_EXEC || x->kind == VM_X_HTTP)) {
        if (!rt_run_function(pr, x, data, len, &it->payload, &it->plen, &it->text, err, cap))
            return -1;
    } else if (!x && p->t->kind != T_BUS) {
        /* the event as it is: no copy (a fan-out delivers the same bytes many times) */
        it->payload = (char *)it->rec->data;
        it->plen = len;
        it->shared = true;
        return 1;
    } else {
        const char *out;
        vm_error e;
        if (vm_transform(th->ctx, p->rule, data, len, &env, &out, &it->plen, &it->text, &e) != VM_OK) {
            snprintf(err, cap, "transform failed: %s", e.msg);
            return -1;
        }
        if (!(it->payload = malloc(it->plen + 1))) {
            snprintf(err, cap, "out of memory");
            return -1;
        }
        memcpy(it->payload, out, it->plen);
        it->payload[it->plen] = 0;
    }
    if ((p->t->kind == T_BUS || p->t->remote) && !it->text && dl_stamp_hops(data, len, &it->payload, &it->plen, err, cap) < 0) {
        free(it->payload);
        it->payload = NULL;
        return -1;
    }
    return 1;
}

/* ---- attempts, retries, dead letters ------------------------------------------------------------ */

enum { GONE_DONE, GONE_BATCH, GONE_WAIT };   /* where an item went: finished, into a batch, elsewhere */

static int start_attempt(dthread *th, item *it);

static void easy_put(dthread *th, CURL *h)
{
    if (th->neasy == th->capeasy) {
        size_t c = th->capeasy ? th->capeasy * 2 : 16;
        CURL **v = realloc(th->easy, c * sizeof *v);
        if (!v) {
            curl_easy_cleanup(h);
            return;
        }
        th->easy = v;
        th->capeasy = c;
    }
    th->easy[th->neasy++] = h;
}

static void item_free(dthread *th, item *it)
{
    if (it->job)
        cmd_job_abort(it->job);       /* (not reached: a thread ends once its commands have) */
    if (it->h) {
        curl_multi_remove_handle(th->multi, it->h);
        th->running--;
        easy_put(th, it->h);
    }
    curl_slist_free_all(it->headers);
    if (!it->shared)
        free(it->payload);
    recbuf_put(it->rec);
    free(it->failed);
    free(it);
}

/* The item is finished: done (delivered, dead-lettered or dropped; its offset leaves the pair's
 * list, so the cursor may pass it) or not (the daemon stops: it stays pending for the restart). */
/* Takes the finished offsets out of their pairs' lists, under one lock for all of them (a
 * fan-out finishes thousands at once), and gives those pairs their next turn. */
static void apply_done(dthread *th)
{
    if (!th->ndone)
        return;
    bool stopping = atomic_load(&th->e->r->stop);
    pthread_mutex_lock(&th->mu);
    for (size_t i = 0; i < th->ndone; i++) {
        fl_del(th->done[i].p, th->done[i].off);
        if (!stopping)
            pair_ready(th, th->done[i].p);        /* its next event, if it has one */
    }
    pthread_mutex_unlock(&th->mu);
    for (size_t i = 0; i < th->ndone; i++) {
        router *rt = &th->e->routers[th->done[i].p->pbus];
        if (rt->shared) {
            pthread_mutex_lock(&rt->amu);
            ack_dec(rt, th->done[i].off);
            pthread_mutex_unlock(&rt->amu);
        }
        atomic_store(&rt->dirty, true);
    }
    th->ndone = 0;
    mark_dirty(th->e);
}

/* The item is finished: done (delivered, dead-lettered or dropped; its offset leaves the pair's
 * list, so the cursor may pass it: at the next apply_done) or not (the daemon stops: it stays
 * pending for the restart). */
static int finish(dthread *th, item *it, bool done)
{
    ebd_pair *p = it->p;
    if (it->slot) {
        dl_give_slot(it->t);
        it->slot = false;
        th->freed = true;
    }
    if (done) {
        if (th->ndone == th->capdone) {
            size_t c = th->capdone ? th->capdone * 2 : 256;
            void *v = realloc(th->done, c * sizeof *th->done);
            if (v) {
                th->done = v;
                th->capdone = c;
            } else {
                apply_done(th);
            }
        }
        if (th->ndone < th->capdone) {
            th->done[th->ndone].p = p;
            th->done[th->ndone++].off = it->off;
        } else {                          /* no memory even for one: alone, under the lock */
            pthread_mutex_lock(&th->mu);
            fl_del(p, it->off);
            pair_ready(th, p);
            pthread_mutex_unlock(&th->mu);
            router *rt = &th->e->routers[p->pbus];
            if (rt->shared) {
                pthread_mutex_lock(&rt->amu);
                ack_dec(rt, it->off);
                pthread_mutex_unlock(&rt->amu);
            }
        }
    }
    p->running--;
    item_free(th, it);
    return GONE_DONE;
}

/* How long to wait before attempt i+1 after attempt i failed with a: exponential backoff with
 * full jitter (a random wait up to first * 2^(i-1), capped at max), or the target's Retry-After
 * (capped at max too). */
static int64_t backoff_ms(dthread *th, const ebd_target *t, unsigned i, const attempt *a)
{
    const ebd_retry *r = &t->retry;
    uint64_t cap = r->first_ms << (i - 1 < 30 ? i - 1 : 30);
    if (cap > r->max_ms || cap == 0)
        cap = r->max_ms;
    int64_t wait = (int64_t)((double)rand_r(&th->seed) / RAND_MAX * (double)cap);
    if (a->retry_after_ms > 0)
        wait = a->retry_after_ms < (int64_t)r->max_ms ? a->retry_after_ms : (int64_t)r->max_ms;
    return wait;
}

/* After attempt i failed: is another one allowed (retryable, attempts left, young enough)? */
static bool may_retry(const ebd_target *t, unsigned i, const attempt *a, const recbuf *rec)
{
    int64_t age = ebd_wall_ms() - rec->time_ns / 1000000;
    return a->retry && i < t->retry.attempts && (uint64_t)age < t->retry.max_age_ms;
}

/* Sends the item to its dead letter: the event, where it was going and why it did not get
 * there; retried until it is delivered (or the daemon stops: then the event stays pending). */
static int to_dead_letter(dthread *th, item *it, const attempt *a, unsigned attempts)
{
    ebd_rules *r = th->e->r;
    ebd_pair *p = it->p;
    ebd_target *t = p->t, *dl = NULL;
    const char *file = t->dead_letter_file;
    const vm_rule *rule = &r->p->rules[p->rule];
    if (rule->dead_letter != VM_NONE)
        dl = &r->targets[rule->dead_letter];
    else if (t->dead_letter != VM_NONE)
        dl = &r->targets[t->dead_letter];
    char esc[1024];      /* an error may quote a URL or a command's stderr: escaped for the log */
    mt_dead_letter(r, p->target, !dl && !file, p->rule_name, a->error, attempts > 0);
    trace_outcome(th->e->routers[p->pbus].bus, it->off, p->rule_name, t->name,
                  dl || file ? TRACE_DEAD_LETTERED : TRACE_DROPPED, dl ? dl->name : file, a->error,
                  attempts);
    if (!dl && !file) {
        ebd_log(EBD_ERROR, "msg=\"delivery dropped: no dead-letter target\" rule=%s target=%s "
                "offset=%" PRIu64 " attempts=%u error=\"%s\"", p->rule_name, t->name, it->off,
                attempts, ebd_log_text(a->error, esc, sizeof esc));
        return finish(th, it, true);
    }
    int64_t now = ebd_wall_ms();
    if (!it->first_ms)
        it->first_ms = now;
    sbuf b = { 0 };
    dl_dead_letter_record(&b, (const char *)it->rec->data, it->rec->len, p->rule_name,
                       strlen(p->rule_name), t->name, a, attempts, it->first_ms, now, it->off, NULL);
    ebd_log(EBD_WARN, "msg=\"dead letter\" rule=%s target=%s offset=%" PRIu64 " attempts=%u "
            "status=%ld error=\"%s\"", p->rule_name, t->name, it->off, attempts, a->status,
            ebd_log_text(a->error, esc, sizeof esc));
    if (b.oom) {
        sb_free(&b);
        ebd_log(EBD_ERROR, "msg=\"out of memory: an event stays pending\" cursor=%s offset=%" PRIu64,
                p->name, it->off);
        return finish(th, it, false);
    }
    if (!it->shared)
        free(it->payload);
    it->shared = false;
    it->payload = b.v;
    it->plen = b.n;
    it->text = false;
    it->dl = true;
    it->dl_file = file;
    it->t = file ? t : dl;
    it->dl_tries = 0;
    return start_attempt(th, it);
}

/* What attempt a of the item means: done, a retry later, or its dead letter. */
static int attempt_done(dthread *th, item *it, const attempt *a)
{
    ebd_pair *p = it->p;
    char esc[1024];
    if (it->slot) {
        dl_give_slot(it->t);
        it->slot = false;
        th->freed = true;
    }
    if (!it->dl || !it->dl_file)
        mt_attempt(th->e->r, (uint32_t)(it->t - th->e->r->targets), it->dl, p->rule_name,
                   a->error, it->t0, it->rec ? it->rec->time_ns : 0);
    bool stopping = atomic_load(&th->e->r->stop);
    trace_attempt(th->e->routers[p->pbus].bus, it->off, p->rule_name, p->t->name,
                  it->dl_file ? it->dl_file : it->t->name, it->dl,
                  it->dl ? it->dl_tries : it->attempts, a->status, it->tr_start, it->plen, a->error);
    if (!a->error[0]) {
        if (!it->dl && it->attempts > 1)
            ebd_log(EBD_INFO, "msg=\"delivered after retries\" rule=%s target=%s offset=%" PRIu64
                    " attempts=%u", p->rule_name, p->t->name, it->off, it->attempts);
        return finish(th, it, true);
    }
    if (it->dl) {
        ebd_log(EBD_ERROR, "msg=\"dead-letter delivery failed\" rule=%s target=%s error=\"%s\"",
                p->rule_name, p->t->name, ebd_log_text(a->error, esc, sizeof esc));
        if (stopping)
            return finish(th, it, false);
        unsigned n = it->dl_tries ? it->dl_tries - 1 : 0;
        heap_push(th, it, ebd_mono_ms() + (n < 10 ? 1000LL << (n < 6 ? n : 6) : 60000));
        return GONE_WAIT;
    }
    if (stopping)
        return finish(th, it, false);
    if (may_retry(p->t, it->attempts, a, it->rec)) {
        int64_t wait = backoff_ms(th, p->t, it->attempts, a), now = ebd_mono_ms();
        if (p->in_order && th->same_p == p && th->same_due >= now)
            wait = th->same_due - now;    /* a failed batch: its lines go again together */
        th->same_p = p;
        th->same_due = now + wait;
        mt_retry(th->e->r, p->target);
        ebd_log(EBD_INFO, "msg=\"delivery failed, will retry\" rule=%s target=%s offset=%" PRIu64
                " attempt=%u wait_ms=%lld error=\"%s\"", p->rule_name, p->t->name, it->off,
                it->attempts, (long long)wait, ebd_log_text(a->error, esc, sizeof esc));
        heap_push(th, it, now + wait);
        return GONE_WAIT;
    }
    return to_dead_letter(th, it, a, it->attempts);
}

static void batch_add(dthread *th, item *it)
{
    uint32_t ti = (uint32_t)(it->t - th->e->r->targets);
    it->next = NULL;
    if (!th->bfirst[ti]) {
        th->bfirst[ti] = it;
        th->touched[th->ntouched++] = ti;
    } else {
        th->blast[ti]->next = it;
    }
    th->blast[ti] = it;
}

/* Starts an attempt of the item at it->t, or holds it until the target has a free slot. */
static int start_attempt(dthread *th, item *it)
{
    attempt a = { 0 };
    ebd_target *t = it->t;
    it->tr_start = trace_clock_ms();
    if (!it->first_ms)
        it->first_ms = ebd_wall_ms();
    if (it->dl && it->dl_file) {
        /* a dead letter to a file: opened for each, written and synced before the event passes */
        ebd_target ft = { .name = t->name, .fsync = STORE_FSYNC_ALWAYS };
        ft.fd = dl_open_output(th->e->d, it->dl_file, &ft.path, a.error, sizeof a.error);
        if (ft.fd >= 0) {
            dl_deliver_file(&ft, it->payload, it->plen, false, &a);
            close(ft.fd);
        }
        free(ft.path);
        it->dl_tries++;
        return attempt_done(th, it, &a);
    }
    if (!dl_try_slot(t)) {
        it->next = th->blocked;
        th->blocked = it;
        return GONE_WAIT;
    }
    it->slot = true;
    it->t0 = mt_now_ns();
    if (it->dl)
        it->dl_tries++;
    else
        it->attempts++;
    switch (t->kind) {
    case T_HTTP: {
        if (t->remote && !dl_remote_payload_ok(t, it->payload, it->plen, it->text, &a))
            break;
        if (t->batch > 1 && !it->dl) {
            batch_add(th, it);            /* sent with the others of this turn: flush_batches */
            return GONE_BATCH;
        }
        CURL *h = th->neasy ? th->easy[--th->neasy] : curl_easy_init();
        if (!h) {
            snprintf(a.error, sizeof a.error, "out of memory");
            a.retry = true;
            break;
        }
        curl_easy_reset(h);
        dl_http_prepare(t, h, it->payload, it->plen,
                        dl_http_ctype(it->payload, it->plen, it->text, it->shared), &it->headers,
                        &it->seen);
        curl_easy_setopt(h, CURLOPT_PRIVATE, (void *)it);
        if (curl_multi_add_handle(th->multi, h) != CURLM_OK) {
            easy_put(th, h);
            curl_slist_free_all(it->headers);
            it->headers = NULL;
            snprintf(a.error, sizeof a.error, "%s %s: cannot start the request", t->method, t->url);
            a.retry = true;
            break;
        }
        it->h = h;
        th->running++;
        return GONE_WAIT;
    }
    case T_FILE:
        if (!it->dl) {
            batch_add(th, it);
            return GONE_BATCH;
        }
        dl_deliver_file(t, it->payload, it->plen, false, &a);
        /* The cursor moves past the event once this returns: a dead letter in a file must be
         * on disk by then, whatever that file target's own policy. */
        if (!a.error[0] && t->fsync != STORE_FSYNC_NEVER && fdatasync(t->fd) != 0)
            snprintf(a.error, sizeof a.error, "%s: %s", t->path, strerror(errno));
        break;
    case T_BUS:
        if (!it->dl) {
            batch_add(th, it);
            return GONE_BATCH;
        }
        dl_deliver_bus(th->e->d, t, it->payload, it->plen, it->text, &a);
        break;
    case T_MQTT:
    case T_NATS: {    /* a publish waits for the broker's acknowledgement (timeout) */
        /* the delivery: its bus, the event's offset (the same in every daemon of a shared
         * bus), its pair, and where it goes (the target, or a dead letter) */
        char delivery[3 * VM_MAX_NAME + 64];
        snprintf(delivery, sizeof delivery, "%s/%" PRIu64 "/%s/%s",
                 th->e->d->buses[th->e->r->bus_of[it->p->pbus]]->name, it->off, it->p->name,
                 t->name);
        dl_deliver_broker(t, it->payload, it->plen, it->text, delivery, &a);
        break;
    }
    default: {
        /* started here, watched by the thread's loop: no thread waits for a command */
        cmd_spec cs = { t->argv, t->envp, it->payload, it->plen, (uint32_t)t->timeout_ms, 0 };
        if (!(it->job = cmd_start(&cs))) {
            snprintf(a.error, sizeof a.error, "%s: out of memory", t->argv[0]);
            a.retry = true;
            break;
        }
        it->jnext = th->jobs;
        th->jobs = it;
        th->running++;
        return GONE_WAIT;
    }
    }
    return attempt_done(th, it, &a);
}

/* Starts one request of an http target with `batch`: the first t->batch items of list, their
 * payloads as one JSON array (the CloudEvents batched mode, application/cloudevents-batch+json,
 * when each is the event itself; application/json otherwise; a text payload is a JSON string),
 * in order.  Each item keeps the slot it took: `concurrency` and `rate_limit` count events, as
 * for one request each.  Returns the items left. */
static item *http_batch_start(dthread *th, ebd_target *t, item *list)
{
    item *rest = list, *last = list;
    size_t n = 0, need = 2;
    bool events = true;
    for (; rest && n < t->batch; last = rest, rest = rest->next, n++) {
        need += (rest->text ? 6 * rest->plen + 2 : rest->plen) + 1;
        events = events && rest->shared && !aws_is_envelope(rest->payload, rest->plen);
    }
    hbatch *hb = calloc(1, sizeof *hb);
    char *body = malloc(need);
    CURL *h = hb && body ? (th->neasy ? th->easy[--th->neasy] : curl_easy_init()) : NULL;
    size_t len = 0;
    if (h) {
        sbuf sb = { 0 };
        body[len++] = '[';
        for (item *it = list; it != rest; it = it->next) {
            if (it != list)
                body[len++] = ',';
            if (it->text) {
                sb.n = 0;
                sb_json_string(&sb, it->payload, it->plen);
                if (sb.oom || sb.n > 6 * it->plen + 2) {
                    easy_put(th, h);
                    h = NULL;
                    break;
                }
                memcpy(body + len, sb.v, sb.n);
                len += sb.n;
            } else {
                memcpy(body + len, it->payload, it->plen);
                len += it->plen;
            }
        }
        free(sb.v);
        body[len++] = ']';
    }
    if (h) {
        curl_easy_reset(h);
        hb->h = h;
        hb->body = body;
        hb->t = t;
        hb->items = list;
        dl_http_prepare(t, h, body, len, events ? CTYPE_CE_BATCH : CTYPE_JSON, &hb->headers, &hb->seen);
        curl_easy_setopt(h, CURLOPT_PRIVATE, (void *)list);
        if (curl_multi_add_handle(th->multi, h) == CURLM_OK) {
            for (item *it = list; it != rest; it = it->next)
                it->hb = hb;
            th->running++;
            last->next = NULL;            /* linked until the answer, cut off the rest */
            return rest;
        }
        curl_slist_free_all(hb->headers);
        easy_put(th, h);
    }
    free(hb);
    free(body);
    attempt a = { .retry = true };
    snprintf(a.error, sizeof a.error, "%s %s: cannot start the request", t->method, t->url);
    for (item *it = list, *next; it != rest; it = next) {
        next = it->next;
        attempt_done(th, it, &a);
    }
    return rest;
}

/* A batch request answered: every item it carried learns how it went. */
static void http_batch_done(dthread *th, hbatch *hb, CURLcode rc)
{
    curl_multi_remove_handle(th->multi, hb->h);
    th->running--;
    attempt a = { 0 };
    dl_http_finish(hb->t, hb->h, rc, &hb->seen, &a);
    easy_put(th, hb->h);
    curl_slist_free_all(hb->headers);
    free(hb->body);
    item *list = hb->items;
    free(hb);
    for (item *it = list, *next; it; it = next) {
        next = it->next;
        it->hb = NULL;
        attempt_done(th, it, &a);
    }
}

/* Hands the batches over: per file target one write of every line (and one sync with fsync
 * always), per bus target one append of every event, per http target with `batch` one request
 * per `batch` events; then each item learns how it went. */
static void flush_batches(dthread *th)
{
    ebd_engine *e = th->e;
    while (th->ntouched) {
        uint32_t ti = th->touched[--th->ntouched];
        item *list = th->bfirst[ti];
        th->bfirst[ti] = th->blast[ti] = NULL;
        ebd_target *t = &e->r->targets[ti];
        attempt a = { 0 };
        th->same_p = NULL;
        if (t->kind == T_HTTP) {
            while (list)
                list = http_batch_start(th, t, list);
            continue;
        }
        if (t->kind == T_FILE) {
            size_t need = 0;
            for (item *it = list; it; it = it->next) {
                recbuf *rb = it->rec;
                if (it->shared && !rb->line && (rb->line = malloc(it->plen + 1))) {
                    rb->nline = dl_json_one_line(it->payload, it->plen, rb->line);
                    rb->line[rb->nline++] = '\n';
                }
                need += it->shared && rb->line ? rb->nline : 2 * it->plen + 1;
            }
            char *buf = malloc(need ? need : 1);
            if (!buf) {
                snprintf(a.error, sizeof a.error, "out of memory");
                a.retry = true;
            } else {
                size_t len = 0;
                for (item *it = list; it; it = it->next) {
                    if (it->shared && it->rec->line) {
                        memcpy(buf + len, it->rec->line, it->rec->nline);
                        len += it->rec->nline;
                        continue;
                    }
                    len += it->text ? dl_text_one_line(it->payload, it->plen, buf + len)
                                    : dl_json_one_line(it->payload, it->plen, buf + len);
                    buf[len++] = '\n';
                }
                /* One write: O_APPEND keeps the lines whole even with several writers. */
                ssize_t w = write(t->fd, buf, len);
                if (w != (ssize_t)len || (t->fsync == STORE_FSYNC_ALWAYS && fdatasync(t->fd) != 0)) {
                    snprintf(a.error, sizeof a.error, "%s: %s", t->path,
                             w < 0 || w == (ssize_t)len ? strerror(errno) : "short write");
                    a.retry = true;
                } else if (t->fsync == STORE_FSYNC_INTERVAL) {
                    atomic_store(&e->file_dirty[ti], true);    /* synced before the next commit */
                }
                free(buf);
            }
            for (item *it = list, *next; it; it = next) {
                next = it->next;
                attempt_done(th, it, &a);
            }
            continue;
        }
        /* a bus target: the payloads that are CloudEvents, in one append */
        size_t n = 0;
        for (item *it = list; it; it = it->next)
            n++;
        store_entry *en = calloc(n, sizeof *en);
        attempt *each = calloc(n, sizeof *each);
        if (!en || !each) {
            free(en);
            free(each);
            snprintf(a.error, sizeof a.error, "out of memory");
            a.retry = true;
            for (item *it = list, *next; it; it = next) {
                next = it->next;
                attempt_done(th, it, &a);
            }
            continue;
        }
        size_t k = 0, i = 0;
        for (item *it = list; it; it = it->next, i++) {
            if (dl_bus_payload_ok(t, it->payload, it->plen, it->text, &each[i]))
                en[k++] = (store_entry){ it->payload, (uint32_t)it->plen, 0, NULL };
        }
        if (k) {
            store *s = e->d->buses[t->bus]->s;
            if (ebd_bus_store(e->d->buses[t->bus], en, k, NULL, NULL) != STORE_OK) {
                snprintf(a.error, sizeof a.error, "bus '%s': %s", e->d->buses[t->bus]->name,
                         store_error(s));
                a.retry = true;
            }
        }
        i = 0;
        for (item *it = list, *next; it; it = next, i++) {
            next = it->next;
            attempt_done(th, it, each[i].error[0] ? &each[i] : &a);
        }
        free(en);
        free(each);
    }
}

/* Reads the item's event if need be, makes its payload, and starts its first attempt. */
static int prepare_item(dthread *th, item *it)
{
    ebd_pair *p = it->p;
    if (!it->rec) {
        store_status st = read_event(th, p->pbus, it->off, &it->rec);
        if (st == STORE_BEHIND) {
            ebd_log(EBD_WARN, "msg=\"event deleted by retention before delivery\" cursor=%s "
                    "offset=%" PRIu64, p->name, it->off);
            trace_outcome(th->e->routers[p->pbus].bus, it->off, p->rule_name, p->t->name,
                          TRACE_EXPIRED, NULL, "deleted by retention before delivery", 0);
            return finish(th, it, true);
        }
        if (st != STORE_OK) {
            store_cursor *c = th->cur[p->pbus];
            ebd_log(EBD_ERROR, "msg=\"a queued event cannot be read, will try again\" cursor=%s "
                    "offset=%" PRIu64 " error=\"%s\"", p->name, it->off,
                    st == STORE_CORRUPT && c ? store_cursor_error(c) : "cannot read");
            heap_push(th, it, ebd_mono_ms() + 100);
            return GONE_WAIT;
        }
    }
    char err[512];
    it->t = p->t;
    int m = make_payload(th, it, err, sizeof err);
    it->made = true;
    if (m == 0)
        return finish(th, it, true);
    if (m < 0) {
        attempt a = { 0 };
        snprintf(a.error, sizeof a.error, "%s", err);
        return to_dead_letter(th, it, &a, 0);
    }
    return start_attempt(th, it);
}

/* ---- a pair's turn ------------------------------------------------------------------------------ */

/* An event a pair took for its turn. */
typedef struct {
    uint64_t off;
    bool known;                   /* from the queue: the router matched it (or failed: failed) */
    bool spend;                   /* left pending by the last run */
    char *failed;
} taken_ev;

/* Under th->mu: the pair's next event.  1 with *t, taken (in its list until finished); 2 when
 * it reads the log itself from p->cpos (catching up); 0 when it has nothing now. */
static int take_next(ebd_pair *p, taken_ev *t)
{
    t->known = t->spend = false;
    t->failed = NULL;
    if (p->ispend < p->nspend) {
        /* what the last run left pending comes first (matched again: the rules may differ) */
        if (!fl_add(p, p->spend[p->ispend]))
            return 0;
        t->off = p->spend[p->ispend++];
        t->spend = true;
        return 1;
    }
    if (p->qn) {
        qent *q = &p->q[p->qhead];
        if (!fl_add(p, q->off))
            return 0;
        t->off = q->off;
        t->failed = q->failed;
        t->known = true;
        p->qhead = (p->qhead + 1) % p->qcap;
        atomic_fetch_sub(&queued_total, 1);
        if (--p->qn == 0 && p->qcap > 64) {
            free(p->q);
            p->q = NULL;
            p->qcap = p->qhead = 0;
        }
        return 1;
    }
    if (p->catchup) {
        if (!p->catching) {
            p->catching = true;
            p->cpos = p->catchup_from;
            ebd_log(EBD_INFO, "msg=\"delivery fell behind: reading the log\" cursor=%s from=%"
                    PRIu64, p->name, p->cpos);
        }
        return 2;
    }
    return 0;
}

/* Under th->mu: a queue with room for one more (its bound is the router's to keep). */
static bool ring_grow(ebd_pair *p)
{
    if (p->qn < p->qcap)
        return true;
    uint32_t c = p->qcap ? p->qcap * 2 : 8;
    qent *v = malloc(c * sizeof *v);
    if (!v)
        return false;
    for (uint32_t i = 0; i < p->qn; i++)
        v[i] = p->q[(p->qhead + i) % p->qcap];
    free(p->q);
    p->q = v;
    p->qcap = c;
    p->qhead = 0;
    return true;
}

/* Under th->mu: gives back, in order, what a turn took and cannot start yet (they follow an
 * event that must wait, in a pair that keeps order): to the head of the queue, or to what the
 * last run left pending.  Without memory for that, they stay taken: pending until a restart. */
static void unget(ebd_pair *p, const taken_ev *t, size_t n)
{
    for (size_t i = n; i-- > 0;) {
        if (t[i].spend) {
            fl_del(p, t[i].off);
            p->ispend--;
        } else if (ring_grow(p)) {
            fl_del(p, t[i].off);
            p->qhead = (p->qhead + p->qcap - 1) % p->qcap;
            p->q[p->qhead] = (qent){ t[i].off, t[i].failed };
            p->qn++;
            atomic_fetch_add(&queued_total, 1);
        } else {
            ebd_log(EBD_ERROR, "msg=\"out of memory: an event stays pending\" cursor=%s offset=%"
                    PRIu64, p->name, t[i].off);
            free(t[i].failed);
        }
    }
}

static void snooze(dthread *th, ebd_pair *p)
{
    if (p->snoozed)
        return;
    p->snoozed = true;
    if (!th->snooze)
        th->snooze_until = ebd_mono_ms() + SNOOZE_MS;
    p->next_snooze = th->snooze;
    th->snooze = p;
}

/* Catching up: the pair's next event from the log (matched by the caller).  1 with *rb and
 * *off (taken); -1 when it went past something (retention, a corrupt record): call again; 0
 * when it is level with the log: then it goes back to its queue (the router skips, from then
 * on, the events it read itself), or waits a little after an error. */
static int catch_next(dthread *th, ebd_pair *p, recbuf **rb, uint64_t *off)
{
    router *rt = &th->e->routers[p->pbus];
    size_t slot = p->cpos % MCACHE;
    recbuf *hit = th->mc[slot].rec;
    if (hit && hit->off == p->cpos && th->mc[slot].pbus == p->pbus) {
        pthread_mutex_lock(&th->mu);
        bool ok = fl_add(p, hit->off);
        if (ok)
            p->cpos = hit->off + 1;
        pthread_mutex_unlock(&th->mu);
        if (ok) {
            hit->ref++;
            *rb = hit;
            *off = hit->off;
            return 1;
        }
    }
    store_cursor *c = thread_cursor(th, p->pbus, p->cpos);
    store_record rec;
    store_status st = c ? STORE_OK : STORE_EIO;
    if (c && store_cursor_offset(c) != p->cpos)
        store_cursor_seek(c, p->cpos);
    if (c)
        st = store_cursor_next(c, &rec, 0);
    if (st == STORE_OK) {
        recbuf *b = recbuf_of(&rec);
        pthread_mutex_lock(&th->mu);
        bool ok = b && fl_add(p, rec.offset);
        if (ok)
            p->cpos = rec.offset + 1;
        pthread_mutex_unlock(&th->mu);
        if (!ok) {
            free(b);
            snooze(th, p);
            return 0;
        }
        size_t k = rec.offset % MCACHE;      /* kept for the other pairs catching up */
        recbuf_put(th->mc[k].rec);
        free(th->mc[k].rules);
        th->mc[k].rec = b;
        th->mc[k].pbus = p->pbus;
        th->mc[k].rules = NULL;
        b->ref++;
        *rb = b;
        *off = rec.offset;
        return 1;
    }
    if (st == STORE_BEHIND || st == STORE_CORRUPT) {
        uint64_t first, next, lost, at;
        if (st == STORE_BEHIND) {
            store_bounds(rt->bus->s, &first, &next);
            ebd_log(EBD_WARN, "msg=\"events deleted by retention before delivery\" cursor=%s "
                    "from=%" PRIu64 " to=%" PRIu64, p->name, p->cpos, first);
            at = first;
        } else {
            ebd_log(EBD_ERROR, "msg=\"corrupt record skipped\" cursor=%s error=\"%s\"", p->name,
                    store_cursor_error(c));
            store_cursor_skip(c, &lost);
            at = store_cursor_offset(c);
        }
        pthread_mutex_lock(&th->mu);
        p->cpos = at;
        pthread_mutex_unlock(&th->mu);
        return -1;
    }
    if (st == STORE_TIMEOUT) {
        /* Level with the log, so the router is not ahead of it: back to the queue, the router
         * skipping what it read itself (start). */
        pthread_mutex_lock(&rt->mu);
        pthread_mutex_lock(&th->mu);
        bool level = rt->pos <= p->cpos;
        if (level) {
            p->catchup = p->catching = false;
            if (p->start < p->cpos)
                p->start = p->cpos;
        }
        pthread_mutex_unlock(&th->mu);
        pthread_mutex_unlock(&rt->mu);
        if (level) {
            ebd_log(EBD_INFO, "msg=\"delivery caught up\" cursor=%s at=%" PRIu64, p->name, p->cpos);
            return 0;
        }
    } else {
        ebd_log(EBD_ERROR, "msg=\"the log cannot be read, will try again\" cursor=%s error=\"%s\"",
                p->name, c ? store_cursor_error(c) : "cannot open a cursor");
    }
    snooze(th, p);
    return 0;
}

/* The pair waits for a slot of its target: it looks again when this thread gives one back, or
 * within 2 ms (another thread's, or a rate-limit token). */
static void slot_wait(dthread *th, ebd_pair *p)
{
    if (p->slotwaiting)
        return;
    p->slotwaiting = true;
    p->next_slotwait = NULL;
    if (th->slotwait_tail)
        th->slotwait_tail->next_slotwait = p;
    else {
        th->slotwait = p;
        th->slotwait_at = ebd_mono_ms() + 2;
    }
    th->slotwait_tail = p;
}

/* Starts the delivery of one taken event (rb: already read, while catching up). */
static int start_one(dthread *th, ebd_pair *p, taken_ev *t, recbuf *rb)
{
    item *it = calloc(1, sizeof *it);
    if (!it) {
        recbuf_put(rb);
        return -1;
    }
    it->p = p;
    it->off = t->off;
    it->known = t->known;
    it->failed = t->failed;
    it->rec = rb;
    p->running++;
    return prepare_item(th, it);
}

/* Gives the pair a turn: it takes, under one lock, the events it may start now (in order: one
 * delivery, or one batch of lines or events, at a time; otherwise up to its window), then
 * starts them.  *next (when given): the pair after it on the ready list, read under that lock. */
static void pump(dthread *th, ebd_pair *p, ebd_pair **next)
{
    ebd_engine *e = th->e;
    taken_ev tk[WINDOW_MAX > BATCH_MAX ? WINDOW_MAX : BATCH_MAX];
    bool batch = p->t->kind == T_FILE || p->t->kind == T_BUS || (p->t->kind == T_HTTP && p->t->batch > 1);
    size_t n = 0, room = 0;
    int k = 0;
    pthread_mutex_lock(&th->mu);
    if (next) {
        *next = p->next_ready;
        p->on_ready = false;
    }
    bool nothing = true;
    if (p->runs && !atomic_load(&e->r->stop)) {
        room = p->in_order ? (p->running ? 0 : batch ? BATCH_MAX : 1)
                           : p->window > p->running ? p->window - p->running : 0;
        nothing = !p->qn && p->ispend == p->nspend && !p->catchup;
    }
    pthread_mutex_unlock(&th->mu);
    if (room && !nothing && (p->t->concurrency || p->t->rate_limit) &&
        !(room = dl_slots_free(p->t, (unsigned)room))) {
        slot_wait(th, p);
        return;
    }
    if (room) {
        pthread_mutex_lock(&th->mu);
        while (n < room && (k = take_next(p, &tk[n])) == 1)
            n++;
        pthread_mutex_unlock(&th->mu);
    }
    for (size_t i = 0; i < n; i++) {
        int how = start_one(th, p, &tk[i], NULL);
        bool held = p->in_order && (how == GONE_WAIT || (how == GONE_BATCH && !batch));
        if (how < 0 || (held && i + 1 < n)) {
            size_t from = how < 0 ? i : i + 1;
            if (how < 0)
                ebd_log(EBD_ERROR, "msg=\"out of memory: events wait\" cursor=%s", p->name);
            pthread_mutex_lock(&th->mu);
            unget(p, tk + from, n - from);
            pthread_mutex_unlock(&th->mu);
            if (how < 0)
                snooze(th, p);
            return;
        }
    }
    if (k != 2 || n >= room)
        return;
    /* Catching up: the log itself, event by event, matched here. */
    for (size_t budget = PUMP_BUDGET, started = n; budget; budget--) {
        if (atomic_load(&e->r->stop) || (p->in_order ? started >= room : p->running >= room))
            return;
        recbuf *rb = NULL;
        taken_ev t = { 0 };
        int c = catch_next(th, p, &rb, &t.off);
        if (c < 0)
            continue;
        if (c == 0) {
            if (!p->catchup) {            /* back on its queue: events may be there already */
                pthread_mutex_lock(&th->mu);
                pair_ready(th, p);
                pthread_mutex_unlock(&th->mu);
            }
            return;
        }
        int how = start_one(th, p, &t, rb);
        if (how < 0) {
            pthread_mutex_lock(&th->mu);
            fl_del(p, t.off);
            p->cpos = t.off;              /* read again later */
            pthread_mutex_unlock(&th->mu);
            snooze(th, p);
            return;
        }
        started++;
        if (p->in_order && (how == GONE_WAIT || (how == GONE_BATCH && !batch)))
            return;
        if (p->in_order && how == GONE_DONE && !p->running)
            started = 0;                  /* nothing held: the next one may start */
    }
    pthread_mutex_lock(&th->mu);
    pair_ready(th, p);                    /* more to read: the other pairs first */
    pthread_mutex_unlock(&th->mu);
}

/* Lowers *timeout (ms) so that a wait ends by `until` (monotonic ms), 0 when it has passed. */
static void wait_until(int *timeout, int64_t until)
{
    int64_t w = until - ebd_mono_ms();
    if (w < *timeout)
        *timeout = w < 0 ? 0 : (int)w;
}

/* ---- commands: exec targets' --------------------------------------------------------------------- */

/* Fills th->wfd with the descriptors of the commands running (for curl_multi_poll) and lowers
 * *timeout to the nearest of their deadlines; returns how many. */
static unsigned watch_jobs(dthread *th, int *timeout)
{
    size_t n = 0;
    for (item *it = th->jobs; it; it = it->jnext) {
        if (th->capwfd < n + CMD_MAX_FDS) {
            size_t c = th->capwfd ? th->capwfd * 2 : 64;
            struct curl_waitfd *v = realloc(th->wfd, c * sizeof *v);
            if (!v) {
                *timeout = *timeout > 5 ? 5 : *timeout;   /* no room to watch: look soon */
                for (; it; it = it->jnext)
                    it->watched = false;
                break;
            }
            th->wfd = v;
            th->capwfd = c;
        }
        struct pollfd pf[CMD_MAX_FDS];
        int64_t deadline;
        int k = cmd_job_fds(it->job, pf, &deadline);
        it->w0 = (uint32_t)n;
        it->nw = (uint32_t)k;
        it->jdue = deadline;
        it->watched = true;
        for (int i = 0; i < k; i++)
            th->wfd[n++] = (struct curl_waitfd){ pf[i].fd,
                (short)((pf[i].events & POLLIN ? CURL_WAIT_POLLIN : 0) |
                        (pf[i].events & POLLOUT ? CURL_WAIT_POLLOUT : 0)), 0 };
        if (deadline >= 0)
            wait_until(timeout, deadline);
    }
    return (unsigned)n;
}

/* Moves on the commands whose descriptors are ready or whose deadline came (a step reads and
 * writes what is ready, without waiting) and hands those that ended to attempt_done. */
static void step_jobs(dthread *th)
{
    int64_t now = ebd_mono_ms();
    item **pp = &th->jobs;
    while (*pp) {
        item *it = *pp;
        bool due = !it->watched || (it->jdue >= 0 && it->jdue <= now);
        for (uint32_t i = 0; i < it->nw && !due; i++)
            due = th->wfd[it->w0 + i].revents != 0;
        if (!due || !cmd_job_step(it->job, now)) {
            pp = &it->jnext;
            continue;
        }
        *pp = it->jnext;
        th->running--;
        cmd_result r;
        cmd_job_end(it->job, &r);
        it->job = NULL;
        cmd_spec cs = { it->t->argv, it->t->envp, it->payload, it->plen, (uint32_t)it->t->timeout_ms, 0 };
        attempt a = { 0 };
        dl_exec_outcome(it->t, &cs, &r, &a);
        attempt_done(th, it, &a);
    }
}

/* ---- a delivery thread ---------------------------------------------------------------------------
 * Drives many pairs: their turns (the ready list the routers fill), the retries and waits (one
 * timer heap), the http requests (one libcurl multi handle, connections kept alive), the
 * batches of lines and events.  It sleeps in curl_multi_poll until a router wakes it
 * (curl_multi_wakeup), a transfer moves, or the next timer is due; idle, once a second. */

/* Taking events in comes first: a producer waits for its answer, a delivery only follows the log.
 * When the cores are busy, the routers and the delivery threads yield to the ingest threads (the
 * lowest priority, nice 19, for the calling thread alone: Linux's nice is per thread) and catch
 * up when they rest; they still get a share (SCHED_IDLE would starve them for as long as ingest
 * is saturated).  Commands keep the daemon's priority (they start from the spawner,
 * runtime/command.c).  Ingest at 1,000 / 10,000 rules against 10 (bench_ingest --rules-table,
 * median of 3, each set in one invocation; the 10-rule figure itself moved from 27K to 43K
 * between invocations): nothing lowered 0.68 / 0.70; nice +10 0.76 / 0.81; SCHED_IDLE 0.91 /
 * 0.81; nice 19 1.20 / 1.28. */
static void yield_to_ingest(void)
{
    errno = 0;
    int nice_now = getpriority(PRIO_PROCESS, 0);
    if (errno == 0)
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice_now + YIELD_NICE);
}

static void *thread_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ebd-deliver");   /* (top -H, ps -L) */
    dthread *th = arg;
    ebd_engine *e = th->e;
    ebd_rules *r = e->r;
    yield_to_ingest();
    for (;;) {
        bool stopping = atomic_load(&r->stop);
        /* the pairs that have something to do */
        pthread_mutex_lock(&th->mu);
        ebd_pair *list = th->ready;
        th->ready = th->ready_tail = NULL;
        th->woken = false;
        pthread_mutex_unlock(&th->mu);
        /* (a pair stays marked ready until its turn, so that a router does not link it into
         * the next list while it is still in this one) */
        for (ebd_pair *p = list, *next; p; p = next)
            pump(th, p, &next);
        flush_batches(th);
        apply_done(th);
        /* retries and waits that are due; items waiting for a slot */
        int64_t now = ebd_mono_ms();
        while (th->nheap && (th->heap[0]->due <= now || stopping)) {
            item *it = heap_pop(th);
            if (stopping)
                finish(th, it, false);    /* pending: delivered after the restart */
            else if (!it->made)
                prepare_item(th, it);
            else
                start_attempt(th, it);
        }
        item *b = th->blocked;
        th->blocked = NULL;
        for (item *next; b; b = next) {
            next = b->next;
            if (stopping)
                finish(th, b, false);
            else if (!b->made)
                prepare_item(th, b);      /* (a read to try again, put here by heap_push) */
            else
                start_attempt(th, b);
        }
        flush_batches(th);
        apply_done(th);
        if (th->slotwait && (th->freed || ebd_mono_ms() >= th->slotwait_at)) {
            pthread_mutex_lock(&th->mu);
            for (ebd_pair *w = th->slotwait, *next; w; w = next) {
                next = w->next_slotwait;
                w->slotwaiting = false;
                pair_ready(th, w);
            }
            th->slotwait = th->slotwait_tail = NULL;
            pthread_mutex_unlock(&th->mu);
        }
        th->freed = false;
        if (th->snooze && ebd_mono_ms() >= th->snooze_until) {
            pthread_mutex_lock(&th->mu);
            for (ebd_pair *sn = th->snooze, *next; sn; sn = next) {
                next = sn->next_snooze;
                sn->snoozed = false;
                pair_ready(th, sn);
            }
            th->snooze = NULL;
            pthread_mutex_unlock(&th->mu);
        }
        /* Stopping: requests already sent may finish (within their target's timeout), so that
         * a reload does not send them twice; what fails now stays pending for the restart. */
        if (stopping && !th->running)
            break;
        int timeout = IDLE_WAKE_MS;
        if (th->nheap)
            wait_until(&timeout, th->heap[0]->due);
        if (th->blocked && timeout > 2)
            timeout = 2;                  /* a slot or a rate-limit token frees soon */
        if (th->snooze)
            wait_until(&timeout, th->snooze_until);
        if (th->slotwait)
            wait_until(&timeout, th->slotwait_at);
        pthread_mutex_lock(&th->mu);
        if (th->ready)
            timeout = 0;
        pthread_mutex_unlock(&th->mu);
        unsigned nw = watch_jobs(th, &timeout);
        curl_multi_poll(th->multi, th->wfd, nw, timeout, NULL);
        step_jobs(th);
        int nrun;
        curl_multi_perform(th->multi, &nrun);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(th->multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            item *it = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&it);
            if (!it)
                continue;
            CURLcode rc = m->data.result;
            if (it->hb) {
                http_batch_done(th, it->hb, rc);
                continue;
            }
            curl_multi_remove_handle(th->multi, it->h);
            th->running--;
            curl_slist_free_all(it->headers);
            it->headers = NULL;
            attempt a = { 0 };
            dl_http_finish(it->t, it->h, rc, &it->seen, &a);
            easy_put(th, it->h);
            it->h = NULL;
            attempt_done(th, it, &a);
        }
        flush_batches(th);
        apply_done(th);
    }
    return NULL;
}

/* ---- the router -------------------------------------------------------------------------------- */

/* Under th->mu: queues event `off` for p, matched (failed NULL) or failed for its rule (why).  A
 * full queue, or no memory, sends the pair to the log, where it matches for itself from there. */
static void enqueue(dthread *th, ebd_pair *p, uint64_t off, const char *failed)
{
    if (p->catchup)
        return;
    char *why = NULL;
    if (failed && !(why = strdup(failed)))
        goto full;
    /* (a shared bus's queues are bounded by what its group cursor holds: no catching up from
     * a log that other daemons read too) */
    uint32_t max = th->e->qmax, cap = max < QUEUE_CAP ? max : QUEUE_CAP;
    bool shared = th->e->routers[p->pbus].shared;
    if ((!shared && (p->qn >= max || (p->qn >= cap && atomic_load(&queued_total) >= QUEUED_BUDGET))) ||
        !ring_grow(p))
        goto full;
    p->q[(p->qhead + p->qn) % p->qcap] = (qent){ off, why };
    p->qn++;
    atomic_fetch_add(&queued_total, 1);
    pair_ready(th, p);
    return;
full:
    free(why);
    if (th->e->routers[p->pbus].shared) {
        /* (never done here: it goes back to the group when the router's cursor closes) */
        ebd_log(EBD_ERROR, "msg=\"out of memory: an event waits for the next start\" cursor=%s "
                "offset=%" PRIu64, p->name, off);
        return;
    }
    p->catchup = true;                    /* it reads the log from here */
    p->catchup_from = off;
    pair_ready(th, p);
}

/* Says, once per rule, that matching failed for it on this event (each of its pairs then
 * dead-letters the event).  A failure of the whole event is every rule of the bus's. */
static void log_match_failures(router *rt, vm_ctx *ctx, const char *whole, uint64_t off)
{
    const vm_program *p = rt->e->r->p;
    const vm_rule_error *f;
    size_t n = whole ? 0 : vm_match_failures(ctx, &f);
    char esc[700];
    for (uint32_t r = 0, i = 0; r < p->nrules; r++) {
        while (i < n && f[i].rule < r)
            i++;
        const char *why = whole ? whole : i < n && f[i].rule == r ? f[i].err.msg : NULL;
        if (!why || p->rules[r].bus != rt->pbus)
            continue;
        ebd_log(EBD_ERROR, "msg=\"matching failed: the event goes to the rule's dead letter\" "
                "rule=%.*s bus=%s offset=%" PRIu64 " error=\"%s\"", (int)p->rules[r].name.len,
                vm_s(p, p->rules[r].name), rt->bus->name, off, ebd_log_text(why, esc, sizeof esc));
    }
}

/* One per bus: reads the log once, runs the matcher once per event, and queues the event for
 * the pairs whose rule it matches (or failed: for their dead letter), each delivery thread's
 * pairs under one lock, waking the thread once. */
static void *router_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ebd-router");   /* (top -H, ps -L) */
    router *rt = arg;
    ebd_engine *e = rt->e;
    ebd_rules *r = e->r;
    const vm_program *p = r->p;
    ebd_bus *bus = rt->bus;
    vm_options mopt = vm_program_options(p);
    /* Trusted: every stored event was validated at ingest (vm_json_check, the validating scan's
     * twin) and the log's CRCs guard it since, so the router reads only what the rules need
     * (docs/index.md).  Templates run on the delivery threads' validating contexts. */
    mopt.trusted = true;
    vm_ctx *ctx = vm_ctx_new(p, &mopt);
    store_cursor *c = NULL;
    yield_to_ingest();
    if (rt->shared) {
        /* The bus's consumer, shared with the other daemons (made once: it may not be there
         * yet when its servers are down: tried again every second). */
        while (!c && !atomic_load(&r->stop)) {
            if (store_cursor_open_group(bus->s, GROUP_NAME, &c) == STORE_OK) {
                pthread_mutex_lock(&rt->amu);     /* (the committer reads it) */
                rt->gc = c;
                pthread_mutex_unlock(&rt->amu);
                break;
            }
            c = NULL;
            ebd_log(EBD_ERROR, "msg=\"the router cannot read the bus's consumer, will try again\" "
                    "bus=%s error=\"%s\"", bus->name, store_error(bus->s));
            for (int i = 0; i < 10 && !atomic_load(&r->stop); i++) {
                struct timespec ts = { 0, 100000000 };
                nanosleep(&ts, NULL);
            }
        }
    } else if (store_cursor_open(bus->s, rt->pos, &c) != STORE_OK)
        c = NULL;
    while (ctx && c && !atomic_load(&r->stop)) {
        store_record rec;
        store_status st = store_cursor_next(c, &rec, IDLE_WAKE_MS);
        if (st == STORE_OK) {
        again:;
            const uint32_t *rules = NULL;
            size_t nrules = 0;
            vm_error err;
            vm_status ms = vm_match(ctx, rt->pbus, (const char *)rec.data, rec.len, &rules,
                                    &nrules, &err);
            if (ms == VM_ERR_NOMEM) {
                /* (may pass: the event is matched again, nothing is queued twice) */
                ebd_log(EBD_ERROR, "msg=\"the router is out of memory, will try again\" bus=%s "
                        "offset=%" PRIu64, bus->name, rec.offset);
                struct timespec ts = { 0, 100000000 };
                nanosleep(&ts, NULL);
                if (rt->shared)
                    goto again;                   /* (the record stays readable until next) */
                store_cursor_seek(c, rec.offset);
                continue;
            }
            /* A rule that failed for this event goes to its dead letter with the error, the
             * others as they matched; an event that cannot be matched at all fails every rule
             * of the bus (stored events passed the same checks at ingest: it should not be). */
            char whole[300];
            bool all_failed = ms != VM_OK && ms != VM_ERR_RULE;
            if (all_failed)
                event_failed(&err, whole, sizeof whole);
            if (ms != VM_OK)
                log_match_failures(rt, ctx, all_failed ? whole : NULL, rec.offset);
            size_t n = 0;
            if (all_failed) {
                for (size_t i = 0; i < rt->npairs; i++)
                    rt->scratch[n++] = rt->pairs[i];
            } else {
                mt_matched(r, rules, nrules, rec.offset);
                for (size_t i = 0; i < nrules; i++)
                    for (uint32_t k = 0; k < p->rules[rules[i]].ntgt; k++)
                        rt->scratch[n++] = &e->pairs[e->rule_pair0[rules[i]] + k];
                const vm_rule_error *f;
                size_t nf = ms == VM_ERR_RULE ? vm_match_failures(ctx, &f) : 0;
                for (size_t i = 0; i < nf; i++)
                    if (p->rules[f[i].rule].bus == rt->pbus)
                        for (uint32_t k = 0; k < p->rules[f[i].rule].ntgt; k++)
                            rt->scratch[n++] = &e->pairs[e->rule_pair0[f[i].rule] + k];
            }
            trace_matched(bus, rec.offset, p, rules, all_failed ? 0 : nrules);
            if (rt->shared) {
                /* counted before any is queued: a delivery may finish before the last is */
                uint32_t want = 0;
                for (size_t i = 0; i < n; i++)
                    want += rt->scratch[i]->runs && rec.offset >= rt->scratch[i]->start;
                if (!ack_add(rt, &rec, want)) {
                    ebd_log(EBD_ERROR, "msg=\"out of memory: an event waits for the next start\" "
                            "bus=%s offset=%" PRIu64, bus->name, rec.offset);
                    n = 0;
                }
                if (!want)
                    mark_dirty(e);
            }
            pthread_mutex_lock(&rt->mu);
            for (unsigned t = 0; n && t < e->nth; t++) {
                dthread *th = &e->th[t];
                bool any = false, wake = false;
                pthread_mutex_lock(&th->mu);
                for (size_t i = 0; i < n; i++) {
                    ebd_pair *q = rt->scratch[i];
                    if (q->th != t || !q->runs || rec.offset < q->start)
                        continue;
                    const char *failed = all_failed ? whole
                                       : ms == VM_ERR_RULE ? rule_failure(ctx, q->rule) : NULL;
                    enqueue(th, q, rec.offset, failed);
                    any = true;
                }
                if (any && !th->woken)
                    th->woken = wake = true;
                pthread_mutex_unlock(&th->mu);
                if (wake)
                    curl_multi_wakeup(th->multi);
            }
            if (rec.offset + 1 > rt->pos || !rt->shared)
                rt->pos = rec.offset + 1;
            pthread_mutex_unlock(&rt->mu);
            atomic_store(&rt->dirty, true);
            mark_dirty(e);
        } else if (st == STORE_BEHIND) {
            uint64_t first, next;
            store_bounds(bus->s, &first, &next);
            store_cursor_seek(c, first);
            pthread_mutex_lock(&rt->mu);
            rt->pos = first;
            pthread_mutex_unlock(&rt->mu);
        } else if (st == STORE_CORRUPT) {
            uint64_t lost;
            ebd_log(EBD_ERROR, "msg=\"corrupt record skipped by the router\" bus=%s error=\"%s\"",
                    bus->name, store_cursor_error(c));
            store_cursor_skip(c, &lost);
            pthread_mutex_lock(&rt->mu);
            rt->pos = store_cursor_offset(c);
            pthread_mutex_unlock(&rt->mu);
        } else if (st == STORE_CLOSED) {
            break;
        } else if (st != STORE_TIMEOUT) {
            /* An error that may pass (descriptors, I/O): said, and tried again. */
            ebd_log(EBD_ERROR, "msg=\"the router cannot read, will try again\" bus=%s error=\"%s\"",
                    bus->name, store_cursor_error(c));
            struct timespec ts = { 0, 100000000 };
            nanosleep(&ts, NULL);
            if (!rt->shared)
                store_cursor_seek(c, rt->pos);
        }
    }
    if (c && !rt->shared)
        store_cursor_close(c);
    vm_ctx_free(ctx);
    return NULL;
}

/* ---- committing: one cursor set per bus ------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Under p's thread's mu: where p stands, given its router's position R (read before): `high`,
 * everything below which is done but the pending offsets (taken and not finished, or left by
 * its last run and not taken yet).  False when that is just R: the base covers it. */
static bool pair_position(const ebd_pair *p, uint64_t R, store_pos *out)
{
    uint64_t h = p->catching ? p->cpos : p->qn ? p->q[p->qhead].off : p->catchup ? p->catchup_from : R;
    if (h < p->start)
        h = p->start;
    size_t n = 0, cap = p->nfl + (p->nspend - p->ispend);
    uint64_t *pend = cap ? malloc(cap * sizeof *pend) : NULL, low = h;
    if (cap && !pend)
        return true;                      /* (no memory: out->name stays NULL, the caller sees it) */
    for (uint32_t i = 0; i < p->nfl; i++)
        if (p->fl[i] < h)
            pend[n++] = p->fl[i];
    for (uint32_t i = p->ispend; i < p->nspend; i++)
        if (p->spend[i] < h)
            pend[n++] = p->spend[i];
    if (n > 1)
        qsort(pend, n, sizeof *pend, cmp_u64);
    if (n)
        low = pend[0];
    if (n > STORE_MAX_PENDING) {          /* too many to list: the lowest, as a plain position */
        h = low;
        n = 0;
    }
    if (h == R && n == 0) {
        free(pend);
        return false;
    }
    out->high = h;
    out->pending = n ? pend : NULL;
    out->npending = n;
    if (!n)
        free(pend);
    return true;
}

static int cmp_pair_name(const void *a, const void *b)
{
    return strcmp((*(ebd_pair *const *)a)->name, (*(ebd_pair *const *)b)->name);
}

static bool managed(const router *rt, const char *name)
{
    ebd_pair key = { .name = (char *)name }, *kp = &key;
    return rt->npairs && bsearch(&kp, rt->pairs, rt->npairs, sizeof *rt->pairs, cmp_pair_name);
}

typedef struct {
    router *rt;
    uint64_t base;
    store_pos *e;                 /* the pairs not at the base, sorted by name */
    size_t n;
    bool ok;
} bus_snap;

/* Writes the position of every pair whose bus moved (all of them when final): their file
 * targets synced first, then one cursor set per bus, written whole.  A file that fails to sync
 * keeps every position where it was (the lines go again). */
static void commit_all(ebd_engine *e, bool final)
{
    const vm_program *p = e->r->p;
    bus_snap *snap = calloc(p->nbuses ? p->nbuses : 1, sizeof *snap);
    if (!snap)
        return;
    size_t ns = 0;
    for (uint32_t b = 0; b < p->nbuses; b++) {
        router *rt = &e->routers[b];
        if (rt->shared || !rt->npairs || !rt->bus->book || rt->bus->book->broken)
            continue;
        if (!atomic_exchange(&rt->dirty, false) && !final)
            continue;
        bus_snap *s = &snap[ns++];
        s->rt = rt;
        s->ok = true;
        pthread_mutex_lock(&rt->mu);
        s->base = rt->pos;
        pthread_mutex_unlock(&rt->mu);
        s->e = calloc(rt->npairs, sizeof *s->e);
        s->ok = s->e != NULL;
        for (size_t i = 0; s->ok && i < rt->npairs; i++) {
            ebd_pair *q = rt->pairs[i];
            if (!q->runs)
                continue;
            dthread *th = &e->th[q->th];
            store_pos pos = { 0 };
            pthread_mutex_lock(&th->mu);
            bool listed = pair_position(q, s->base, &pos);
            pthread_mutex_unlock(&th->mu);
            if (!listed)
                continue;
            pos.name = q->name;           /* borrowed */
            s->e[s->n++] = pos;
        }
    }
    /* A shared bus's finished events, taken before the file targets' sync: an event finished
     * after it may have written a line the sync did not cover, so it waits for the next. */
    struct { uint64_t *v; size_t n; } *fin = calloc(p->nbuses ? p->nbuses : 1, sizeof *fin);
    for (uint32_t b = 0; fin && b < p->nbuses; b++) {
        router *rt = &e->routers[b];
        if (!rt->shared)
            continue;
        pthread_mutex_lock(&rt->amu);
        fin[b].v = rt->done;
        fin[b].n = rt->ndone;
        rt->done = NULL;
        rt->ndone = rt->capdone = 0;
        pthread_mutex_unlock(&rt->amu);
    }
    bool synced = true;
    for (uint32_t t = 0; t < p->ntargets; t++) {
        ebd_target *x = &e->r->targets[t];
        if (x->kind != T_FILE || !atomic_exchange(&e->file_dirty[t], false))
            continue;
        if (x->fsync != STORE_FSYNC_NEVER && fdatasync(x->fd) != 0) {
            /* The lines may not be on disk: the positions stay where they are (they go again). */
            ebd_log(EBD_ERROR, "msg=\"cannot sync a file target: the delivery positions stay\" "
                    "target=%s file=%s error=\"%s\"", x->name, x->path, strerror(errno));
            atomic_store(&e->file_dirty[t], true);
            synced = false;
        }
    }
    /* ...acknowledged now that the lines they wrote are synced; with a file that failed to
     * sync they wait for the next commit (given again if this daemon stops first). */
    for (uint32_t b = 0; fin && b < p->nbuses; b++) {
        router *rt = &e->routers[b];
        if (!fin[b].n) {
            free(fin[b].v);
            continue;
        }
        pthread_mutex_lock(&rt->amu);
        store_cursor *gc = rt->gc;
        if (!synced || !gc) {
            for (size_t k = 0; k < fin[b].n; k++)
                done_push(rt, fin[b].v[k]);
            fin[b].n = 0;
        }
        pthread_mutex_unlock(&rt->amu);
        if (fin[b].n && store_cursor_done(gc, fin[b].v, fin[b].n) != STORE_OK)
            ebd_log(EBD_ERROR, "msg=\"cannot acknowledge delivered events now: they will be "
                    "acknowledged later, or delivered again\" bus=%s error=\"%s\"", rt->bus->name,
                    store_cursor_error(gc));
        free(fin[b].v);
        if (!synced && !final)
            mark_dirty(e);
    }
    free(fin);
    for (size_t i = 0; i < ns; i++) {
        bus_snap *s = &snap[i];
        router *rt = s->rt;
        ebd_book *bk = rt->bus->book;
        if (!synced || !s->ok) {
            atomic_store(&rt->dirty, true);
            if (!final)
                mark_dirty(e);
        } else {
            /* the entries of the pairs these rules do not have are kept as they were */
            pthread_mutex_lock(&bk->mu);
            store_pos *all = calloc(bk->n + s->n + 1, sizeof *all);
            size_t n = 0;
            bool ok = all != NULL;
            for (size_t k = 0; ok && k < bk->n; k++)
                if (!managed(rt, bk->e[k].name))
                    ok = pos_set(&all[n++], bk->e[k].name, bk->e[k].high, bk->e[k].pending,
                                 bk->e[k].npending);
            for (size_t k = 0; ok && k < s->n; k++)
                ok = pos_set(&all[n++], s->e[k].name, s->e[k].high, s->e[k].pending,
                             s->e[k].npending);
            if (ok && n > 1)
                qsort(all, n, sizeof *all, cmp_pos);
            store *st = rt->bus->s;
            if (ok && store_commit_set(st, SET_NAME, s->base, all, n) == STORE_OK) {
                store_set_free(bk->e, bk->n);
                bk->e = all;
                bk->n = n;
                bk->base = s->base;
            } else {
                ebd_log(EBD_ERROR, "msg=\"cannot commit the delivery positions\" bus=%s error=\"%s\"",
                        rt->bus->name, ok ? store_error(st) : "out of memory");
                if (all)
                    store_set_free(all, n);
                atomic_store(&rt->dirty, true);
                if (!final)
                    mark_dirty(e);
            }
            pthread_mutex_unlock(&bk->mu);
        }
        for (size_t k = 0; k < s->n; k++)
            free(s->e[k].pending);
        free(s->e);
    }
    free(snap);
}

/* Commits at most every COMMIT_EVERY_MS while events move, and sleeps while nothing does. */
static void *committer_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ebd-commit");   /* (top -H, ps -L) */
    ebd_engine *e = arg;
    ebd_rules *r = e->r;
    pthread_mutex_lock(&e->cmu);
    while (!atomic_load(&r->stop)) {
        if (!atomic_load(&e->cdirty)) {
            pthread_cond_wait(&e->ccv, &e->cmu);
            continue;
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        long ns = until.tv_nsec + COMMIT_EVERY_MS * 1000000L;
        until.tv_sec += ns / 1000000000L;
        until.tv_nsec = ns % 1000000000L;
        while (!atomic_load(&r->stop) && pthread_cond_timedwait(&e->ccv, &e->cmu, &until) != ETIMEDOUT)
            ;
        if (atomic_load(&r->stop))
            break;
        atomic_store(&e->cdirty, false);
        pthread_mutex_unlock(&e->cmu);
        commit_all(e, false);
        pthread_mutex_lock(&e->cmu);
    }
    pthread_mutex_unlock(&e->cmu);
    return NULL;
}

/* ---- preparing, starting and stopping a ruleset's delivery ------------------------------------ */

static void engine_free(ebd_engine *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->npairs; i++) {
        ebd_pair *p = &e->pairs[i];
        free(p->name);
        free(p->spend);
        for (uint32_t k = 0; k < p->qn; k++)
            free(p->q[(p->qhead + k) % p->qcap].failed);
        atomic_fetch_sub(&queued_total, p->qn);
        free(p->q);
        free(p->fl);
    }
    for (uint32_t i = 0; e->rule_names && i < e->r->p->nrules; i++)
        free(e->rule_names[i]);
    free(e->rule_names);
    free(e->pairs);
    free(e->rule_pair0);
    free((void *)e->file_dirty);
    free(e);
}

bool ebd_rules_prepare(ebd *d, ebd_rules *r, char *err, size_t cap)
{
    const vm_program *p = r->p;
    r->targets = calloc(p->ntargets ? p->ntargets : 1, sizeof *r->targets);
    r->bus_of = calloc(p->nbuses ? p->nbuses : 1, sizeof *r->bus_of);
    ebd_engine *e = r->eng = calloc(1, sizeof *e);
    if (!r->targets || !r->bus_of || !e) {
        snprintf(err, cap, "out of memory");
        return false;
    }
    e->d = d;
    e->r = r;
    for (uint32_t b = 0; b < p->nbuses; b++)
        r->bus_of[b] = ebd_bus_index(d, vm_s(p, p->buses[b].name), p->buses[b].name.len);
    for (uint32_t i = 0; i < p->ntargets; i++) {
        r->targets[i].fd = -1;       /* freeing a half-prepared ruleset closes nothing else */
        r->targets[i].dead_letter = VM_NONE;
    }
    for (uint32_t i = 0; i < p->ntargets; i++)
        if (!dl_prepare_target(d, r, i, err, cap))
            return false;
    for (uint32_t i = 0; i < p->nrules; i++)
        e->npairs += p->rules[i].ntgt;
    r->npairs = e->npairs;
    e->pairs = calloc(e->npairs ? e->npairs : 1, sizeof *e->pairs);
    e->rule_pair0 = calloc(p->nrules ? p->nrules : 1, sizeof *e->rule_pair0);
    e->rule_names = calloc(p->nrules ? p->nrules : 1, sizeof *e->rule_names);
    e->file_dirty = calloc(p->ntargets ? p->ntargets : 1, sizeof *e->file_dirty);
    if (!e->pairs || !e->rule_pair0 || !e->rule_names || !e->file_dirty) {
        snprintf(err, cap, "out of memory");
        return false;
    }
    size_t w = 0;
    for (uint32_t i = 0; i < p->nrules; i++) {
        e->rule_pair0[i] = (uint32_t)w;
        if (!(e->rule_names[i] = strndup(vm_s(p, p->rules[i].name), p->rules[i].name.len))) {
            snprintf(err, cap, "out of memory");
            return false;
        }
        for (uint32_t k = 0; k < p->rules[i].ntgt; k++, w++) {
            ebd_pair *x = &e->pairs[w];
            x->rule = i;
            x->target = p->rule_targets[p->rules[i].tgt0 + k];
            x->pbus = p->rules[i].bus;
            x->rule_name = e->rule_names[i];
            x->t = &r->targets[x->target];
            size_t n = p->rules[i].name.len + p->targets[x->target].name.len + 2;
            if (!(x->name = malloc(n))) {
                snprintf(err, cap, "out of memory");
                return false;
            }
            snprintf(x->name, n, "%s.%.*s", x->rule_name, (int)p->targets[x->target].name.len,
                     vm_s(p, p->targets[x->target].name));
        }
    }
    if (!(r->mt = mt_rules_bind(r)))
        ebd_log(EBD_ERROR, "msg=\"out of memory: these rules go without metrics\"");
    return claim_new_pairs(d, r, e->pairs, e->npairs, err, cap);
}

void ebd_rules_free(ebd_rules *r)
{
    if (!r)
        return;
    sch_set_free(r->schemas);
    src_stop(r->sources);
    for (uint32_t i = 0; r->targets && i < r->p->ntargets; i++) {
        ebd_target *x = &r->targets[i];
        free(x->name);
        free(x->url);
        free(x->method);
        curl_slist_free_all(x->headers);
        free(x->sign_secret);
        free(x->sign_header);
        free(x->ca_file);
        if (x->kind == T_MQTT)
            ebd_mqtt_close(x);
        else if (x->kind == T_NATS)
            ebd_nats_close(x);
        free(x->topic);
        free(x->path);
        if (x->fd >= 0)
            close(x->fd);
        for (char **a = x->argv; a && *a; a++)
            free(*a);
        free(x->argv);
        cmd_env_free(x->envp);
        free(x->dead_letter_file);
        pthread_mutex_destroy(&x->mu);
    }
    for (uint32_t b = 0; r->bus_token && b < r->p->nbuses; b++)
        free(r->bus_token[b]);
    free(r->bus_token);
    free(r->bus_max);
    free(r->targets);
    engine_free(r->eng);
    free(r->bus_of);
    free(r->admin_token);
    aws_keys_free(r->aws);
    mt_rules_free(r->mt);
    vm_program_free(r->p);
    free(r);
}

/* Where pair q starts: its entry in the book (and what it left pending), else the base. */
static void pair_start(ebd_pair *q, const ebd_book *bk, uint64_t next)
{
    const store_pos *en = book_find(bk, q->name);
    q->start = en ? en->high : bk->base;
    q->nspend = q->ispend = 0;
    if (!en || !en->npending)
        return;
    if (!(q->spend = malloc(en->npending * sizeof *q->spend))) {
        ebd_log(EBD_ERROR, "msg=\"out of memory: these deliveries stay stopped\" cursor=%s", q->name);
        q->runs = false;
        return;
    }
    /* After a power loss the log may end below what the set listed: those are gone. */
    for (size_t k = 0; k < en->npending; k++)
        if (en->pending[k] < next)
            q->spend[q->nspend++] = en->pending[k];
        else
            ebd_log(EBD_WARN, "msg=\"a pending event is past the end of the log\" cursor=%s "
                    "offset=%" PRIu64, q->name, en->pending[k]);
}

static bool thread_init(ebd_engine *e, dthread *th, unsigned idx)
{
    const vm_program *p = e->r->p;
    th->e = e;
    th->idx = idx;
    th->seed = (unsigned)(uintptr_t)th ^ (unsigned)ebd_mono_ms();
    pthread_mutex_init(&th->mu, NULL);
    vm_options mopt = vm_program_options(p);
    th->multi = curl_multi_init();
    th->ctx = vm_ctx_new(p, &mopt);
    th->cur = calloc(p->nbuses ? p->nbuses : 1, sizeof *th->cur);
    th->bfirst = calloc(p->ntargets ? p->ntargets : 1, sizeof *th->bfirst);
    th->blast = calloc(p->ntargets ? p->ntargets : 1, sizeof *th->blast);
    th->touched = calloc(p->ntargets ? p->ntargets : 1, sizeof *th->touched);
    return th->multi && th->ctx && th->cur && th->bfirst && th->blast && th->touched;
}

static void thread_free(ebd_engine *e, dthread *th)
{
    const vm_program *p = e->r->p;
    for (size_t i = 0; i < th->nheap; i++)
        finish(th, th->heap[i], false);
    for (item *b = th->blocked, *next; b; b = next) {
        next = b->next;
        finish(th, b, false);
    }
    free(th->heap);
    free(th->wfd);
    for (size_t i = 0; i < th->neasy; i++)
        curl_easy_cleanup(th->easy[i]);
    free(th->easy);
    if (th->multi)
        curl_multi_cleanup(th->multi);
    vm_ctx_free(th->ctx);
    for (uint32_t b = 0; th->cur && b < p->nbuses; b++)
        if (th->cur[b])
            store_cursor_close(th->cur[b]);
    free(th->cur);
    recbuf_put(th->cache);
    for (size_t i = 0; i < MCACHE; i++) {
        recbuf_put(th->mc[i].rec);
        free(th->mc[i].rules);
    }
    free(th->done);
    free(th->bfirst);
    free(th->blast);
    free(th->touched);
}

void ebd_workers_start(ebd *d, ebd_rules *r)
{
    atomic_store(&r->stop, false);
    ebd_engine *e = r->eng;
    const vm_program *p = r->p;
    e->nth = r->delivery_threads ? r->delivery_threads : 1;
    e->qmax = r->delivery_queue ? r->delivery_queue : QUEUE_MAX;
    e->th = calloc(e->nth, sizeof *e->th);
    e->routers = calloc(p->nbuses ? p->nbuses : 1, sizeof *e->routers);
    pthread_mutex_init(&e->cmu, NULL);
    pthread_cond_init(&e->ccv, NULL);
    if (!e->th || !e->routers) {
        ebd_log(EBD_ERROR, "msg=\"out of memory: no delivery\"");
        return;
    }
    bool threads_ok = true;
    for (unsigned t = 0; t < e->nth; t++)
        threads_ok &= thread_init(e, &e->th[t], t);
    /* Each pair starts from where the bus's set says (claim_new_pairs gave new pairs theirs). */
    for (uint32_t b = 0; b < p->nbuses; b++) {
        router *rt = &e->routers[b];
        rt->e = e;
        rt->pbus = b;
        pthread_mutex_init(&rt->mu, NULL);
        pthread_mutex_init(&rt->amu, NULL);
        if (r->bus_of[b] == VM_NONE)
            continue;
        rt->bus = d->buses[r->bus_of[b]];
        rt->shared = store_shared(rt->bus->s);
    }
    for (size_t i = 0; i < e->npairs; i++) {
        ebd_pair *q = &e->pairs[i];
        router *rt = &e->routers[q->pbus];
        q->th = (uint32_t)(i % e->nth);
        q->in_order = q->t->kind != T_HTTP || q->t->concurrency == 1;
        q->window = q->t->concurrency ? (q->t->concurrency < WINDOW_MAX ? q->t->concurrency
                                                                      : WINDOW_MAX) : WINDOW_DEFAULT;
        if (q->t->kind == T_HTTP && q->t->batch > q->window && !q->t->concurrency)
            q->window = q->t->batch < WINDOW_MAX ? q->t->batch : WINDOW_MAX;   /* a full request */
        if (!rt->bus || !threads_ok)
            continue;
        rt->npairs++;
    }
    for (uint32_t b = 0; b < p->nbuses; b++) {
        router *rt = &e->routers[b];
        if (!rt->npairs)
            continue;
        rt->pairs = calloc(rt->npairs, sizeof *rt->pairs);
        rt->scratch = calloc(rt->npairs, sizeof *rt->scratch);
        if (!rt->pairs || !rt->scratch) {
            ebd_log(EBD_ERROR, "msg=\"out of memory: a bus's deliveries stay stopped\" bus=%s",
                    rt->bus->name);
            rt->npairs = 0;
        }
        rt->npairs = 0;
    }
    for (size_t i = 0; i < e->npairs; i++) {
        ebd_pair *q = &e->pairs[i];
        router *rt = &e->routers[q->pbus];
        if (rt->pairs && rt->bus && threads_ok)
            rt->pairs[rt->npairs++] = q;
    }
    for (uint32_t b = 0; b < p->nbuses; b++) {
        router *rt = &e->routers[b];
        if (!rt->npairs)
            continue;
        qsort(rt->pairs, rt->npairs, sizeof *rt->pairs, cmp_pair_name);
        if (rt->shared) {
            /* Every pair takes what the group gives this daemon; where the bus stands is its
             * consumer's. */
            for (size_t i = 0; i < rt->npairs; i++) {
                rt->pairs[i]->runs = true;
                rt->pairs[i]->start = 0;
            }
            rt->started = pthread_create(&rt->th, NULL, router_main, rt) == 0;
            if (!rt->started)
                ebd_log(EBD_ERROR, "msg=\"cannot start a router thread\" bus=%s", rt->bus->name);
            continue;
        }
        ebd_book *bk = rt->bus->book;
        if (!bk || bk->broken) {
            ebd_log(EBD_ERROR, "msg=\"the bus's delivery positions cannot be read: its deliveries "
                    "stay stopped until they are fixed and ebd restarted\" bus=%s", rt->bus->name);
            continue;
        }
        uint64_t first, next;
        store_bounds(rt->bus->s, &first, &next);
        pthread_mutex_lock(&bk->mu);
        bool any = false;
        for (size_t i = 0; i < rt->npairs; i++) {
            ebd_pair *q = rt->pairs[i];
            q->runs = true;
            pair_start(q, bk, next);
            if (!q->runs)
                continue;
            uint64_t low = q->nspend ? q->spend[0] : q->start;
            for (uint32_t k = 1; k < q->nspend; k++)
                if (q->spend[k] < low)
                    low = q->spend[k];
            if (!any || low < rt->pos)
                rt->pos = low;
            any = true;
            if (q->nspend) {
                qsort(q->spend, q->nspend, sizeof *q->spend, cmp_u64);
                pair_ready(&e->th[q->th], q);
            }
        }
        pthread_mutex_unlock(&bk->mu);
        if (any)
            rt->started = pthread_create(&rt->th, NULL, router_main, rt) == 0;
        if (any && !rt->started)
            ebd_log(EBD_ERROR, "msg=\"cannot start a router thread\" bus=%s", rt->bus->name);
    }
    for (unsigned t = 0; threads_ok && t < e->nth; t++) {
        e->th[t].started = pthread_create(&e->th[t].th, NULL, thread_main, &e->th[t]) == 0;
        if (!e->th[t].started)
            ebd_log(EBD_ERROR, "msg=\"cannot start a delivery thread\"");
    }
    e->committer_started = pthread_create(&e->committer, NULL, committer_main, e) == 0;
}

void ebd_workers_stop(ebd *d, ebd_rules *r)
{
    (void)d;
    ebd_engine *e = r->eng;
    atomic_store(&r->stop, true);
    if (!e || !e->th || !e->routers)
        return;
    int64_t t0 = ebd_mono_ms();
    pthread_mutex_lock(&e->cmu);
    pthread_cond_broadcast(&e->ccv);
    pthread_mutex_unlock(&e->cmu);
    for (unsigned t = 0; t < e->nth; t++)
        if (e->th[t].multi)
            curl_multi_wakeup(e->th[t].multi);
    /* the routers first, so that their positions are final; then the deliveries in hand */
    for (uint32_t b = 0; b < r->p->nbuses; b++)
        if (e->routers[b].started)
            store_wake(e->routers[b].bus->s);
    for (uint32_t b = 0; b < r->p->nbuses; b++)
        if (e->routers[b].started) {
            pthread_join(e->routers[b].th, NULL);
            e->routers[b].started = false;
        }
    for (unsigned t = 0; t < e->nth; t++)
        if (e->th[t].started) {
            pthread_join(e->th[t].th, NULL);
            e->th[t].started = false;
        }
    if (e->committer_started)
        pthread_join(e->committer, NULL);
    e->committer_started = false;
    if (ebd_mono_ms() - t0 > 300)
        ebd_log(EBD_INFO, "msg=\"delivery stopped late\" after_ms=%lld", (long long)(ebd_mono_ms() - t0));
    /* what is still pending (waiting for a retry, for a slot) stays listed in the positions */
    for (unsigned t = 0; t < e->nth; t++)
        thread_free(e, &e->th[t]);
    commit_all(e, true);                  /* the last positions, durable before the swap */
    for (unsigned t = 0; t < e->nth; t++)
        pthread_mutex_destroy(&e->th[t].mu);
    for (uint32_t b = 0; b < r->p->nbuses; b++) {
        router *rt = &e->routers[b];
        store_cursor_close(rt->gc);       /* what is not done goes back to the group now */
        rt->gc = NULL;
        for (size_t i = 0; i < rt->acap; i++)
            if (rt->acks[i].off)
                free(rt->acks[i].data);
        free(rt->acks);
        free(rt->done);
        pthread_mutex_destroy(&rt->amu);
        pthread_mutex_destroy(&e->routers[b].mu);
        free(e->routers[b].pairs);
        free(e->routers[b].scratch);
    }
    free(e->routers);
    e->routers = NULL;
    free(e->th);
    e->th = NULL;
    pthread_mutex_destroy(&e->cmu);
    pthread_cond_destroy(&e->ccv);
}

void ebd_pairs_visit(ebd_rules *r, void (*fn)(void *arg, uint32_t target, uint32_t pbus,
                                              uint64_t queued, uint64_t low), void *arg)
{
    ebd_engine *e = r->eng;
    if (!e || !e->th || !e->routers)
        return;
    const vm_program *p = r->p;
    uint64_t *R = calloc(p->nbuses ? p->nbuses : 1, sizeof *R);
    if (!R)
        return;
    for (uint32_t b = 0; b < p->nbuses; b++) {
        pthread_mutex_lock(&e->routers[b].mu);
        R[b] = e->routers[b].pos;
        pthread_mutex_unlock(&e->routers[b].mu);
    }
    /* each thread's pairs under its lock, taken once */
    for (unsigned t = 0; t < e->nth; t++) {
        dthread *th = &e->th[t];
        pthread_mutex_lock(&th->mu);
        for (size_t i = t; i < e->npairs; i += e->nth) {
            const ebd_pair *q = &e->pairs[i];
            if (!q->runs || q->th != t)
                continue;
            uint64_t h = q->catching ? q->cpos : q->qn ? q->q[q->qhead].off
                       : q->catchup ? q->catchup_from : R[q->pbus];
            if (h < q->start)
                h = q->start;
            uint64_t low = h;
            for (uint32_t k = 0; k < q->nfl; k++)
                if (q->fl[k] < low)
                    low = q->fl[k];
            for (uint32_t k = q->ispend; k < q->nspend; k++)
                if (q->spend[k] < low)
                    low = q->spend[k];
            fn(arg, q->target, q->pbus, (uint64_t)q->qn + q->nfl + (q->nspend - q->ispend), low);
        }
        pthread_mutex_unlock(&th->mu);
    }
    free(R);
}

