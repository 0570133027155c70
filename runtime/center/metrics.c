/*
 * metrics.c — the daemon's counters and what it serves of them (docs/metrics.md):
 * GET /metrics (the Prometheus text format 0.0.4) and the admin API, GET /v1/buses,
 * /v1/buses/{bus}, /v1/rules and /v1/targets.
 *
 * Counters are kept by name, in slots that live as long as the process: a reload replaces the
 * ruleset whole, and the new one binds its rules, targets and buses to the slots of the same
 * names, so nothing counted is lost.  A ruleset holds arrays (struct mt_rules) indexed as its
 * program is, pointing at its slots: the hooks ingest and delivery call pay one relaxed atomic
 * add on a slot they reach by index, never a look-up or a lock.  What is rarer (an error
 * sample, a refused request, a histogram's first use) may take a lock.
 *
 * A ticker thread samples the counters once a second for rates and per-minute counts.
 */
#include <dirent.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "center.h"

/* ---- clocks and times ------------------------------------------------------------------------ */

static int64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t mt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* An RFC 3339 UTC time with milliseconds ("2026-12-05T16:00:00.123Z") for ms since the epoch. */
void mt_time_text(int64_t ms, char *out, size_t cap)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char day[32];
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, cap, "%s.%03dZ", day, (int)(ms % 1000));
}

/* ---- the slots --------------------------------------------------------------------------------- */

#define RING_SEC 64               /* a bus's per-second samples (the rate over the last minute) */
#define RING_MIN 64               /* a bus's per-minute samples (the last 60 minutes) */
#define RING_10S 8                /* a rule's samples, every 10 s */
#define NERRORS 10                /* the error samples a target keeps */

struct mt_bus {
    char *name;
    _Atomic uint64_t ingested;
    _Atomic uint64_t refused[MT_NREASONS];
    /* under reg_mu (the ticker): the value of ingested at the first sample of each second and
     * each minute since the slot was made */
    int64_t sec0, last_sec, min0, last_min;
    uint64_t at_sec[RING_SEC], at_min[RING_MIN];
};

struct mt_rule {
    char *name;
    _Atomic uint64_t matched;
    _Atomic uint64_t next_off;    /* offsets of its bus below this were counted (a reload's new
                                     router may read some again: counted once) */
    const struct mt_bus *bus;     /* the bus the offsets are of */
    uint32_t at_10s[RING_10S];    /* matched (mod 2^32) at the last ticks of 10 s (reg_mu) */
};

typedef struct {
    _Atomic uint64_t bucket[MT_NBUCKETS + 1];    /* by mt_hist_bucket; the last: +Inf */
    _Atomic uint64_t sum_ns, count;
} mt_hist;

typedef struct {
    pthread_mutex_t mu;
    struct {
        int64_t ms;
        char rule[128];
        char msg[384];
    } e[NERRORS];
    unsigned n, head;             /* samples kept; where the next goes */
} mt_errors;

struct mt_target {
    char *name;
    int kind;
    _Atomic uint64_t succeeded, failed, retried, dead_lettered, dropped;
    _Atomic(mt_hist *) latency, duration;      /* made at their first observation */
    _Atomic(mt_errors *) errors;               /* made at the first error */
};

/* A ruleset's view of the slots, indexed as its program is. */
struct mt_rules {
    uint32_t nbuses, nrules, ntargets;
    struct mt_bus **bus;
    struct mt_rule **rule;
    struct mt_target **target;
};

/* The slots by name: open addressing on one table per kind, under reg_mu (bind, refusals, the
 * ticker); the slots themselves are never freed nor moved. */
typedef struct {
    void **v;                     /* each slot starts with its name (char *) */
    size_t cap, n;
} table;

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static table buses_t, rules_t, targets_t;
static int64_t tick10;            /* the index of the last 10 s tick (reg_mu) */
static _Atomic int replays;
static int64_t started_ns;
static pthread_once_t ticker_once = PTHREAD_ONCE_INIT;

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The slot of that name in t, or where it would go (an empty place). */
static void **table_place(table *t, const char *name)
{
    size_t i = (size_t)hash_name(name) & (t->cap - 1);
    while (t->v[i] && strcmp(*(char **)t->v[i], name) != 0)
        i = (i + 1) & (t->cap - 1);
    return &t->v[i];
}

/* Under reg_mu: the slot of that name in t, made (size bytes, zeroed, the name copied) when
 * there is none yet; NULL without memory.  *made says whether it is new. */
static void *table_get(table *t, const char *name, size_t size, bool *made)
{
    *made = false;
    if (t->n * 2 >= t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        void **v = calloc(cap, sizeof *v);
        if (!v)
            return NULL;
        table old = *t;
        t->v = v;
        t->cap = cap;
        for (size_t i = 0; i < old.cap; i++)
            if (old.v[i])
                *table_place(t, *(char **)old.v[i]) = old.v[i];
        free(old.v);
    }
    void **at = table_place(t, name);
    if (*at)
        return *at;
    void *s = calloc(1, size);
    char *copy = strdup(name);
    if (!s || !copy) {
        free(s);
        free(copy);
        return NULL;
    }
    *(char **)s = copy;
    *at = s;
    t->n++;
    *made = true;
    return s;
}

static void *ticker_main(void *arg);

static void ticker_start(void)
{
    started_ns = real_ns();
    pthread_t th;
    if (pthread_create(&th, NULL, ticker_main, NULL) == 0)
        pthread_detach(th);
}

/* Under reg_mu: the bus slot of that name ("" for refusals of no known bus). */
static struct mt_bus *bus_get(const char *name)
{
    bool made;
    struct mt_bus *b = table_get(&buses_t, name, sizeof *b, &made);
    if (b && made) {
        int64_t s = real_ns() / 1000000000LL;
        b->sec0 = b->last_sec = s;
        b->min0 = b->last_min = s / 60;
    }
    return b;
}

struct mt_bus *mt_bus_slot(const char *name)
{
    pthread_once(&ticker_once, ticker_start);
    pthread_mutex_lock(&reg_mu);
    struct mt_bus *b = bus_get(name);
    pthread_mutex_unlock(&reg_mu);
    return b;
}

static struct mt_bus *bus_named(const vm_program *p, uint32_t b)
{
    char name[512];
    snprintf(name, sizeof name, "%.*s", (int)p->buses[b].name.len, vm_s(p, p->buses[b].name));
    return bus_get(name);
}

struct mt_rules *mt_rules_bind(ebd_rules *r)
{
    pthread_once(&ticker_once, ticker_start);
    const vm_program *p = r->p;
    struct mt_rules *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->nbuses = p->nbuses;
    m->nrules = p->nrules;
    m->ntargets = p->ntargets;
    m->bus = calloc(p->nbuses ? p->nbuses : 1, sizeof *m->bus);
    m->rule = calloc(p->nrules ? p->nrules : 1, sizeof *m->rule);
    m->target = calloc(p->ntargets ? p->ntargets : 1, sizeof *m->target);
    bool ok = m->bus && m->rule && m->target;
    char name[1024];
    pthread_mutex_lock(&reg_mu);
    for (uint32_t b = 0; ok && b < p->nbuses; b++)
        ok = (m->bus[b] = bus_named(p, b)) != NULL;
    for (uint32_t i = 0; ok && i < p->nrules; i++) {
        snprintf(name, sizeof name, "%.*s", (int)p->rules[i].name.len, vm_s(p, p->rules[i].name));
        bool made;
        struct mt_rule *s = table_get(&rules_t, name, sizeof *s, &made);
        if (!(ok = s != NULL))
            break;
        if (made)
            for (unsigned k = 0; k < RING_10S; k++)
                s->at_10s[k] = 0;
        const struct mt_bus *bus = m->bus[p->rules[i].bus];
        if (s->bus != bus) {      /* a rule that moved to another bus: its offsets are new */
            s->bus = bus;
            atomic_store_explicit(&s->next_off, 0, memory_order_relaxed);
        }
        m->rule[i] = s;
    }
    for (uint32_t i = 0; ok && i < p->ntargets; i++) {
        snprintf(name, sizeof name, "%.*s", (int)p->targets[i].name.len,
                 vm_s(p, p->targets[i].name));
        bool made;
        struct mt_target *s = table_get(&targets_t, name, sizeof *s, &made);
        if (!(ok = s != NULL))
            break;
        s->kind = r->targets ? r->targets[i].kind : T_HTTP;
        m->target[i] = s;
    }
    pthread_mutex_unlock(&reg_mu);
    if (!ok) {
        mt_rules_free(m);
        return NULL;
    }
    return m;
}

void mt_rules_free(struct mt_rules *m)
{
    if (!m)
        return;
    free(m->bus);
    free(m->rule);
    free(m->target);
    free(m);
}

void mt_replays_running(int delta)
{
    atomic_fetch_add(&replays, delta);
}

/* ---- the hooks --------------------------------------------------------------------------------- */

void mt_ingested(const ebd_bus *b, size_t n)
{
    if (b->mt)
        atomic_fetch_add_explicit(&b->mt->ingested, n, memory_order_relaxed);
}

void mt_refused(const ebd_bus *b, mt_reason why, size_t n)
{
    if (b && b->mt)
        atomic_fetch_add_explicit(&b->mt->refused[why], n, memory_order_relaxed);
}

void mt_matched(ebd_rules *r, const uint32_t *rules, size_t n, uint64_t off)
{
    const struct mt_rules *m = r->mt;
    if (!m)
        return;
    for (size_t i = 0; i < n; i++) {
        struct mt_rule *s = m->rule[rules[i]];
        /* one router per bus writes next_off at a time (a reload stops the old one first) */
        if (off < atomic_load_explicit(&s->next_off, memory_order_relaxed))
            continue;
        atomic_store_explicit(&s->next_off, off + 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->matched, 1, memory_order_relaxed);
    }
}

static const int64_t bucket_ns[MT_NBUCKETS] = {
    1000000LL, 2500000LL, 5000000LL, 10000000LL, 25000000LL, 50000000LL, 100000000LL,
    250000000LL, 500000000LL, 1000000000LL, 2500000000LL, 5000000000LL, 10000000000LL,
    30000000000LL, 60000000000LL,
};
static const char *const bucket_le[MT_NBUCKETS] = {
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
    "10", "30", "60",
};

unsigned mt_hist_bucket(int64_t ns)
{
    unsigned i = 0;
    while (i < MT_NBUCKETS && ns > bucket_ns[i])
        i++;
    return i;
}

/* Adds one observation of ns nanoseconds to the histogram at *slot (made at its first). */
static void observe(_Atomic(mt_hist *) *slot, int64_t ns)
{
    mt_hist *h = atomic_load_explicit(slot, memory_order_acquire);
    if (!h) {
        mt_hist *fresh = calloc(1, sizeof *fresh), *none = NULL;
        if (!fresh)
            return;
        if (atomic_compare_exchange_strong(slot, &none, fresh))
            h = fresh;
        else {
            free(fresh);
            h = none;
        }
    }
    if (ns < 0)
        ns = 0;
    atomic_fetch_add_explicit(&h->bucket[mt_hist_bucket(ns)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, (uint64_t)ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

/* Keeps an error sample of target s (the newest NERRORS). */
static void error_sample(struct mt_target *s, const char *rule, const char *msg)
{
    mt_errors *e = atomic_load_explicit(&s->errors, memory_order_acquire);
    if (!e) {
        mt_errors *fresh = calloc(1, sizeof *fresh), *none = NULL;
        if (!fresh)
            return;
        pthread_mutex_init(&fresh->mu, NULL);
        if (atomic_compare_exchange_strong(&s->errors, &none, fresh))
            e = fresh;
        else {
            pthread_mutex_destroy(&fresh->mu);
            free(fresh);
            e = none;
        }
    }
    pthread_mutex_lock(&e->mu);
    unsigned k = e->head;
    e->e[k].ms = real_ns() / 1000000;
    snprintf(e->e[k].rule, sizeof e->e[k].rule, "%s", rule ? rule : "");
    snprintf(e->e[k].msg, sizeof e->e[k].msg, "%s", msg && msg[0] ? msg : "failed");
    e->head = (k + 1) % NERRORS;
    if (e->n < NERRORS)
        e->n++;
    pthread_mutex_unlock(&e->mu);
}

void mt_attempt(ebd_rules *r, uint32_t target, bool dead_letter, const char *rule,
                const char *error, int64_t started_ns, int64_t event_time_ns)
{
    const struct mt_rules *m = r->mt;
    if (!m || target >= m->ntargets)
        return;
    struct mt_target *s = m->target[target];
    if (started_ns)
        observe(&s->duration, mt_now_ns() - started_ns);
    if (error && error[0]) {
        atomic_fetch_add_explicit(&s->failed, 1, memory_order_relaxed);
        error_sample(s, rule, error);
        return;
    }
    atomic_fetch_add_explicit(&s->succeeded, 1, memory_order_relaxed);
    if (!dead_letter && event_time_ns)
        observe(&s->latency, real_ns() - event_time_ns);
}

void mt_retry(ebd_rules *r, uint32_t target)
{
    if (r->mt && target < r->mt->ntargets)
        atomic_fetch_add_explicit(&r->mt->target[target]->retried, 1, memory_order_relaxed);
}

void mt_dead_letter(ebd_rules *r, uint32_t target, bool dropped, const char *rule,
                    const char *error, bool attempted)
{
    if (!r->mt || target >= r->mt->ntargets)
        return;
    struct mt_target *s = r->mt->target[target];
    atomic_fetch_add_explicit(dropped ? &s->dropped : &s->dead_lettered, 1, memory_order_relaxed);
    if (!attempted)               /* (no attempt said why: a transform, matching) */
        error_sample(s, rule, error);
}

/* ---- refusals at ingest: classified from the status answered ---------------------------------- */

static _Thread_local unsigned answered_status;
static _Thread_local int answered_reason = -1;

void mt_answered(unsigned status)
{
    answered_status = status;
}

void mt_note_reason(mt_reason why)
{
    answered_reason = (int)why;
}

void mt_request_begin(void)
{
    answered_status = 0;
    answered_reason = -1;
}

const char *mt_reason_name(mt_reason why)
{
    static const char *const names[MT_NREASONS] = {
        "invalid", "too_large", "unauthorized", "unknown_bus", "overloaded", "storage",
    };
    return (unsigned)why < MT_NREASONS ? names[why] : "other";
}

/* The reason a refused ingest request counts under, from the status it was answered. */
static mt_reason reason_of(unsigned status)
{
    switch (status) {
    case 413:
        return MT_TOO_LARGE;
    case 401:
    case 403:
        return MT_UNAUTHORIZED;
    case 404:
        return MT_UNKNOWN_BUS;
    case 429:
    case 503:
        return MT_OVERLOADED;
    default:
        return MT_INVALID;
    }
}

void mt_request_end(ebd *d, const char *url, const char *method)
{
    (void)d;
    unsigned st = answered_status;
    if (st < 400 || strcmp(method, "POST") != 0)
        return;
    static const char prefix[] = "/v1/buses/";
    if (strncmp(url, prefix, sizeof prefix - 1) != 0)
        return;
    const char *name = url + sizeof prefix - 1, *slash = strchr(name, '/');
    if (!slash || (strcmp(slash, "/events") != 0 && strcmp(slash, "/put-events") != 0))
        return;
    mt_reason why = answered_reason >= 0 ? (mt_reason)answered_reason : reason_of(st);
    /* (a cold path: the slot by name; an unknown bus counts under bus "") */
    char bname[256];
    snprintf(bname, sizeof bname, "%.*s", (int)(slash - name), name);
    pthread_mutex_lock(&reg_mu);
    struct mt_bus *b = NULL;
    if (why != MT_UNKNOWN_BUS) {
        void **at = buses_t.cap ? table_place(&buses_t, bname) : NULL;
        b = at ? *at : NULL;
    }
    if (!b)
        b = bus_get("");
    pthread_mutex_unlock(&reg_mu);
    if (b)
        atomic_fetch_add_explicit(&b->refused[why], 1, memory_order_relaxed);
    answered_status = 0;
}

/* ---- the ticker: samples for rates and per-minute counts ---------------------------------------- */

/* Under reg_mu: brings bus b's per-second and per-minute samples up to now_s. */
static void bus_advance(struct mt_bus *b, int64_t now_s)
{
    uint64_t v = atomic_load_explicit(&b->ingested, memory_order_relaxed);
    int64_t m = now_s / 60;
    if (now_s - b->last_sec > RING_SEC)
        b->last_sec = now_s - RING_SEC;
    while (b->last_sec < now_s)
        b->at_sec[++b->last_sec % RING_SEC] = v;
    if (m - b->last_min > RING_MIN)
        b->last_min = m - RING_MIN;
    while (b->last_min < m)
        b->at_min[++b->last_min % RING_MIN] = v;
}

static void *ticker_main(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec ts = { 1, 0 };
        nanosleep(&ts, NULL);
        int64_t now_s = real_ns() / 1000000000LL;
        pthread_mutex_lock(&reg_mu);
        for (size_t i = 0; i < buses_t.cap; i++)
            if (buses_t.v[i])
                bus_advance(buses_t.v[i], now_s);
        if (now_s / 10 > tick10) {
            tick10 = now_s / 10;
            for (size_t i = 0; i < rules_t.cap; i++) {
                struct mt_rule *s = rules_t.v[i];
                if (s)
                    s->at_10s[tick10 % RING_10S] =
                        (uint32_t)atomic_load_explicit(&s->matched, memory_order_relaxed);
            }
        }
        pthread_mutex_unlock(&reg_mu);
    }
    return NULL;
}

/* Under reg_mu: bus b's events/s over the last minute, its count now being v. */
static double bus_rate(struct mt_bus *b, uint64_t v, int64_t now_s)
{
    bus_advance(b, now_s);
    if (now_s - 60 >= b->sec0)
        return (double)(v - b->at_sec[(now_s - 60) % RING_SEC]) / 60.0;
    return (double)v / (double)(now_s - b->sec0 > 0 ? now_s - b->sec0 : 1);
}

/* Under reg_mu: rule s's matches/s over about the last minute. */
static double rule_rate(const struct mt_rule *s, uint64_t v, int64_t now_s)
{
    if (!tick10)
        return 0;
    int64_t k = tick10 - 5;       /* the tick 50-60 s ago */
    uint32_t then = s->at_10s[(uint64_t)k % RING_10S];
    double span = (double)(now_s - k * 10);
    return span > 0 ? (double)((uint32_t)v - then) / span : 0;
}

/* ---- the Prometheus text format ------------------------------------------------------------------ */

void mt_prom_label(sbuf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            sb_puts(b, "\\\\");
        else if (*s == '"')
            sb_puts(b, "\\\"");
        else if (*s == '\n')
            sb_puts(b, "\\n");
        else
            sb_put(b, s, 1);
    }
}

/* "# HELP name text" and "# TYPE name type". */
static void family(sbuf *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{label="value"} v */
static void sample1(sbuf *b, const char *name, const char *label, const char *value, uint64_t v)
{
    sb_printf(b, "%s{%s=\"", name, label);
    mt_prom_label(b, value);
    sb_printf(b, "\"} %" PRIu64 "\n", v);
}

void mt_prom_hist(sbuf *b, const char *name, const char *label, const char *value,
                  const uint64_t *bucket, uint64_t sum_ns, uint64_t count)
{
    uint64_t cum = 0;
    for (unsigned i = 0; i <= MT_NBUCKETS; i++) {
        cum += bucket[i];
        sb_printf(b, "%s_bucket{%s=\"", name, label);
        mt_prom_label(b, value);
        sb_printf(b, "\",le=\"%s\"} %" PRIu64 "\n", i < MT_NBUCKETS ? bucket_le[i] : "+Inf", cum);
    }
    sb_printf(b, "%s_sum{%s=\"", name, label);
    mt_prom_label(b, value);
    sb_printf(b, "\"} %.9f\n%s_count{%s=\"", (double)sum_ns / 1e9, name, label);
    mt_prom_label(b, value);
    sb_printf(b, "\"} %" PRIu64 "\n", count);
}

static void hist_family(sbuf *b, const struct mt_rules *m, bool latency, const char *name,
                        const char *help)
{
    family(b, name, "histogram", help);
    for (uint32_t i = 0; i < m->ntargets; i++) {
        mt_hist *h = atomic_load_explicit(latency ? &m->target[i]->latency : &m->target[i]->duration,
                                          memory_order_acquire);
        if (!h)
            continue;
        uint64_t bk[MT_NBUCKETS + 1], total = 0;
        for (unsigned k = 0; k <= MT_NBUCKETS; k++)
            total += bk[k] = atomic_load_explicit(&h->bucket[k], memory_order_relaxed);
        /* (read apart from count: the buckets' total is the count this answer shows) */
        mt_prom_hist(b, name, "target", m->target[i]->name, bk,
                     atomic_load_explicit(&h->sum_ns, memory_order_relaxed), total);
    }
}

/* ---- what deliveries hold: queues and lag per target --------------------------------------------- */

typedef struct {
    ebd *d;
    ebd_rules *r;
    uint64_t *queued, *lag;       /* per target of r */
    uint64_t *next;               /* per bus of r->p: its log's next offset */
} pair_walk;

static void on_pair(void *arg, uint32_t target, uint32_t pbus, uint64_t queued, uint64_t low)
{
    pair_walk *w = arg;
    w->queued[target] += queued;
    uint64_t lag = w->next[pbus] > low ? w->next[pbus] - low : 0;
    if (lag > w->lag[target])
        w->lag[target] = lag;
}

/* Under d->reload_mu and d->lock (read): the queues and lag of r's targets (NULL without
 * memory; free with free(w->queued) etc.). */
static bool walk_pairs(ebd *d, ebd_rules *r, pair_walk *w)
{
    const vm_program *p = r->p;
    *w = (pair_walk){ .d = d, .r = r };
    w->queued = calloc(p->ntargets + 1, sizeof *w->queued);
    w->lag = calloc(p->ntargets + 1, sizeof *w->lag);
    w->next = calloc(p->nbuses + 1, sizeof *w->next);
    if (!w->queued || !w->lag || !w->next)
        return false;
    for (uint32_t b = 0; b < p->nbuses; b++) {
        uint64_t first = 0;
        if (r->bus_of[b] != VM_NONE && d->buses[r->bus_of[b]]->s)
            store_bounds(d->buses[r->bus_of[b]]->s, &first, &w->next[b]);
    }
    ebd_pairs_visit(r, on_pair, w);
    return true;
}

static void walk_free(pair_walk *w)
{
    free(w->queued);
    free(w->lag);
    free(w->next);
}

/* ---- process figures ------------------------------------------------------------------------------ */

typedef struct {
    double cpu_s, start_s;
    uint64_t rss, threads, fds;
} proc_figs;

static void read_proc(proc_figs *f)
{
    memset(f, 0, sizeof *f);
    long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    char buf[1024];
    FILE *fp = fopen("/proc/self/stat", "r");
    if (fp) {
        size_t n = fread(buf, 1, sizeof buf - 1, fp);
        fclose(fp);
        buf[n] = '\0';
        const char *s = strrchr(buf, ')');     /* the command's name may hold anything */
        unsigned long long ut = 0, st = 0, start = 0;
        long threads = 0, rss = 0;
        /* fields 3.. after the name: state(3) ... utime(14) stime(15) ... num_threads(20)
         * itrealvalue(21) starttime(22) vsize(23) rss(24) */
        if (s && sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d "
                        "%*d %ld %*d %llu %*u %ld", &ut, &st, &threads, &start, &rss) == 5 && tck > 0) {
            f->cpu_s = (double)(ut + st) / (double)tck;
            f->threads = (uint64_t)threads;
            f->rss = (uint64_t)rss * (uint64_t)page;
            double btime = 0;
            FILE *ps = fopen("/proc/stat", "r");
            char line[256];
            while (ps && fgets(line, sizeof line, ps))
                if (!strncmp(line, "btime ", 6)) {
                    btime = strtod(line + 6, NULL);
                    break;
                }
            if (ps)
                fclose(ps);
            f->start_s = btime + (double)start / (double)tck;
        }
    }
    if (!f->start_s)
        f->start_s = (double)started_ns / 1e9;
    DIR *dir = opendir("/proc/self/fd");
    if (dir) {
        struct dirent *e;
        while ((e = readdir(dir)))
            if (e->d_name[0] != '.')
                f->fds++;
        closedir(dir);
        if (f->fds)
            f->fds--;                     /* (the one opendir holds) */
    }
}

/* ---- GET /metrics ---------------------------------------------------------------------------------- */

static const char *kind_name(int kind)
{
    return kind == T_HTTP ? "http" : kind == T_FILE ? "file" : kind == T_BUS ? "bus" : "exec";
}

/* The whole exposition, under d->reload_mu and d->lock (read): the slots' atomics, the
 * ruleset's figures, the logs' and the process's. */
static void render_metrics(ebd *d, sbuf *b)
{
    ebd_rules *r = d->rules;
    const struct mt_rules *m = r->mt;
    if (!m) {
        sb_puts(b, "# no metrics: out of memory when the rules loaded\n");
        return;
    }
    const vm_program *p = r->p;
    /* the buses: the ruleset's, and "" when something was refused for an unknown bus */
    pthread_mutex_lock(&reg_mu);
    void **anon = buses_t.cap ? table_place(&buses_t, "") : NULL;
    struct mt_bus *none = anon ? *anon : NULL;
    pthread_mutex_unlock(&reg_mu);
    family(b, "ebr_events_ingested_total", "counter", "Events stored in the bus's log.");
    for (uint32_t i = 0; i < m->nbuses; i++)
        sample1(b, "ebr_events_ingested_total", "bus", m->bus[i]->name,
                atomic_load_explicit(&m->bus[i]->ingested, memory_order_relaxed));
    family(b, "ebr_events_refused_total", "counter", "Ingest requests (and put-events entries) "
           "refused, by reason: invalid, too_large, unauthorized, unknown_bus, overloaded, storage.");
    for (uint32_t i = 0; i <= m->nbuses; i++) {
        struct mt_bus *x = i < m->nbuses ? m->bus[i] : none;
        for (unsigned k = 0; x && k < MT_NREASONS; k++) {
            if (i == m->nbuses && k != MT_UNKNOWN_BUS && k != MT_OVERLOADED)
                continue;
            sb_puts(b, "ebr_events_refused_total{bus=\"");
            mt_prom_label(b, x->name);
            sb_printf(b, "\",reason=\"%s\"} %" PRIu64 "\n", mt_reason_name((mt_reason)k),
                      atomic_load_explicit(&x->refused[k], memory_order_relaxed));
        }
    }
    family(b, "ebr_rule_matched_total", "counter", "Events the rule matched (once per event, "
           "whatever the number of its targets).");
    for (uint32_t i = 0; i < m->nrules; i++) {
        sb_puts(b, "ebr_rule_matched_total{rule=\"");
        mt_prom_label(b, m->rule[i]->name);
        sb_puts(b, "\",bus=\"");
        mt_prom_label(b, m->bus[p->rules[i].bus]->name);
        sb_printf(b, "\"} %" PRIu64 "\n", atomic_load_explicit(&m->rule[i]->matched,
                                                              memory_order_relaxed));
    }
    static const struct {
        const char *name, *help;
        size_t off;
    } tc[] = {
        { "ebr_deliveries_succeeded_total", "Delivery attempts that succeeded (dead letters "
          "delivered to a dead-letter target count there).", offsetof(struct mt_target, succeeded) },
        { "ebr_deliveries_failed_total", "Delivery attempts that failed.",
          offsetof(struct mt_target, failed) },
        { "ebr_deliveries_retried_total", "Retries scheduled after a failed attempt.",
          offsetof(struct mt_target, retried) },
        { "ebr_deliveries_dead_lettered_total", "Events given up on and sent to a dead letter.",
          offsetof(struct mt_target, dead_lettered) },
        { "ebr_deliveries_dropped_total", "Events given up on with no dead letter to go to.",
          offsetof(struct mt_target, dropped) },
    };
    for (size_t k = 0; k < sizeof tc / sizeof tc[0]; k++) {
        family(b, tc[k].name, "counter", tc[k].help);
        for (uint32_t i = 0; i < m->ntargets; i++)
            sample1(b, tc[k].name, "target", m->target[i]->name,
                    atomic_load_explicit((_Atomic uint64_t *)((char *)m->target[i] + tc[k].off),
                                         memory_order_relaxed));
    }
    hist_family(b, m, true, "ebr_delivery_latency_seconds",
                "From an event's append to the bus's log to its successful delivery.");
    hist_family(b, m, false, "ebr_delivery_duration_seconds", "One delivery attempt.");
    pair_walk w;
    if (walk_pairs(d, r, &w)) {
        family(b, "ebr_target_queued", "gauge", "Events queued for the target or in flight "
               "(waiting for a retry among them), over its rules.");
        for (uint32_t i = 0; i < m->ntargets; i++)
            sample1(b, "ebr_target_queued", "target", m->target[i]->name, w.queued[i]);
        family(b, "ebr_target_lag_events", "gauge", "Events of the bus's log the target's rules "
               "have not finished yet (the most behind of them).");
        for (uint32_t i = 0; i < m->ntargets; i++)
            sample1(b, "ebr_target_lag_events", "target", m->target[i]->name, w.lag[i]);
    }
    walk_free(&w);
    static const char *const lf[] = { "ebr_log_bytes", "ebr_log_segments", "ebr_log_first_offset",
                                      "ebr_log_next_offset" };
    static const char *const lh[] = { "The size of the bus's log segments.",
                                      "Segments of the bus's log.",
                                      "The oldest offset the bus's log keeps.",
                                      "The offset the bus's next event gets." };
    for (unsigned k = 0; k < 4; k++) {
        family(b, lf[k], "gauge", lh[k]);
        for (uint32_t i = 0; i < p->nbuses; i++) {
            if (r->bus_of[i] == VM_NONE || !d->buses[r->bus_of[i]]->s)
                continue;
            log_stats st;
            log_get_stats(d->buses[r->bus_of[i]]->s, &st);
            uint64_t v = k == 0 ? st.bytes : k == 1 ? st.segments : k == 2 ? st.first : st.next;
            sample1(b, lf[k], "bus", m->bus[i]->name, v);
        }
    }
    family(b, "ebr_rules", "gauge", "Rules loaded.");
    sb_printf(b, "ebr_rules %u\n", p->nrules);
    family(b, "ebr_replays_running", "gauge", "Replays running.");
    sb_printf(b, "ebr_replays_running %d\n", atomic_load(&replays));
    proc_figs f;
    read_proc(&f);
    family(b, "process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.");
    sb_printf(b, "process_cpu_seconds_total %.2f\n", f.cpu_s);
    family(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    sb_printf(b, "process_resident_memory_bytes %" PRIu64 "\n", f.rss);
    family(b, "process_open_fds", "gauge", "Number of open file descriptors.");
    sb_printf(b, "process_open_fds %" PRIu64 "\n", f.fds);
    family(b, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch "
           "in seconds.");
    sb_printf(b, "process_start_time_seconds %.2f\n", f.start_s);
    family(b, "process_threads", "gauge", "Number of OS threads in the process.");
    sb_printf(b, "process_threads %" PRIu64 "\n", f.threads);
}

/* Takes what the figures need: no reload in progress (workers neither starting nor stopping),
 * the rules and buses held. */
static void hold(ebd *d)
{
    pthread_mutex_lock(&d->reload_mu);
    pthread_rwlock_rdlock(&d->lock);
}

static void unhold(ebd *d)
{
    pthread_rwlock_unlock(&d->lock);
    pthread_mutex_unlock(&d->reload_mu);
}

enum MHD_Result mt_serve_metrics(const center_req *q)
{
    sbuf b = { 0 };
    hold(q->d);
    render_metrics(q->d, &b);
    unhold(q->d);
    if (b.oom) {
        sb_free(&b);
        return (enum MHD_Result)ebd_send_error(q->c, 503, "out of memory", NULL);
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(b.n, b.v ? b.v : (char *)"",
                                                             MHD_RESPMEM_MUST_FREE);
    if (!r) {
        sb_free(&b);
        return MHD_NO;
    }
    b.v = NULL;
    MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result ok = MHD_queue_response(q->c, 200, r);
    MHD_destroy_response(r);
    return ok;
}

/* ---- the admin API ---------------------------------------------------------------------------------- */

/* "name":"text" */
static void jstr(sbuf *b, const char *key, const char *s)
{
    sb_printf(b, "\"%s\":", key);
    sb_json_string(b, s, strlen(s));
}

/* BUS of the contract (docs/center.md): bus i of the running rules' program. */
static void bus_json(ebd *d, sbuf *b, uint32_t i)
{
    ebd_rules *r = d->rules;
    const vm_program *p = r->p;
    struct mt_bus *x = r->mt->bus[i];
    int64_t now_s = real_ns() / 1000000000LL;
    uint64_t v = atomic_load_explicit(&x->ingested, memory_order_relaxed), refused = 0;
    sb_puts(b, "{");
    jstr(b, "name", x->name);
    sb_printf(b, ",\"ingested\":%" PRIu64 ",\"refused_by\":{", v);
    for (unsigned k = 0; k < MT_NREASONS; k++) {
        uint64_t n = atomic_load_explicit(&x->refused[k], memory_order_relaxed);
        refused += n;
        sb_printf(b, "%s\"%s\":%" PRIu64, k ? "," : "", mt_reason_name((mt_reason)k), n);
    }
    pthread_mutex_lock(&reg_mu);
    double rate = bus_rate(x, v, now_s);
    int64_t cur = now_s / 60;
    uint64_t counts[60];
    for (int k = 0; k < 60; k++) {
        int64_t mi = cur - 59 + k;
        counts[k] = mi < x->min0 ? 0
                  : (mi == cur ? v : x->at_min[(mi + 1) % RING_MIN]) - x->at_min[mi % RING_MIN];
    }
    pthread_mutex_unlock(&reg_mu);
    sb_printf(b, "},\"refused\":%" PRIu64 ",\"rate\":%.3f,\"per_minute\":[", refused, rate);
    for (int k = 0; k < 60; k++) {
        char t[40];
        mt_time_text((cur - 59 + k) * 60000, t, sizeof t);
        sb_printf(b, "%s{\"time\":\"%s\",\"count\":%" PRIu64 "}", k ? "," : "", t, counts[k]);
    }
    sb_puts(b, "],\"log\":");
    store *s = r->bus_of[i] != VM_NONE ? d->buses[r->bus_of[i]]->s : NULL;
    if (s) {
        log_stats st;
        log_get_stats(s, &st);
        sb_printf(b, "{\"first\":%" PRIu64 ",\"next\":%" PRIu64 ",\"bytes\":%" PRIu64
                  ",\"segments\":%u}", st.first, st.next, st.bytes, st.segments);
    } else {
        sb_puts(b, "null");
    }
    sb_puts(b, ",\"rules\":[");
    bool any = false;
    for (uint32_t k = 0; k < p->nrules; k++)
        if (p->rules[k].bus == i) {
            sb_puts(b, any ? "," : "");
            sb_json_string(b, r->mt->rule[k]->name, strlen(r->mt->rule[k]->name));
            any = true;
        }
    sb_printf(b, "],\"schemas\":%d}", 0 /* the schema helper's count for this bus goes here */);
}

/* Sends b (200), or 503 when it ran out of memory; frees it. */
static enum MHD_Result send_built(const center_req *q, sbuf *b)
{
    enum MHD_Result ok = (enum MHD_Result)(b->oom ? ebd_send_error(q->c, 503, "out of memory", NULL)
                                                  : ebd_send_json(q->c, 200, b));
    sb_free(b);
    return ok;
}

/* Sends 503 when the running rules have no metrics (no memory when they loaded): true then. */
static bool no_metrics(const center_req *q, enum MHD_Result *out)
{
    if (q->d->rules->mt)
        return false;
    unhold(q->d);
    *out = (enum MHD_Result)ebd_send_error(q->c, 503, "no metrics: out of memory when the rules "
                                           "loaded", NULL);
    return true;
}

enum MHD_Result mt_serve_buses(const center_req *q)
{
    enum MHD_Result out;
    sbuf b = { 0 };
    hold(q->d);
    if (no_metrics(q, &out))
        return out;
    sb_puts(&b, "{\"buses\":[");
    for (uint32_t i = 0; i < q->d->rules->p->nbuses; i++) {
        sb_puts(&b, i ? "," : "");
        bus_json(q->d, &b, i);
    }
    sb_puts(&b, "]}");
    unhold(q->d);
    return send_built(q, &b);
}

enum MHD_Result mt_serve_bus(const center_req *q)
{
    enum MHD_Result out;
    sbuf b = { 0 };
    hold(q->d);
    if (no_metrics(q, &out))
        return out;
    const struct mt_rules *m = q->d->rules->mt;
    uint32_t i = 0;
    while (i < m->nbuses && strcmp(m->bus[i]->name, q->arg[0]) != 0)
        i++;
    if (i == m->nbuses) {
        unhold(q->d);
        char msg[300];
        snprintf(msg, sizeof msg, "no bus '%.200s'", q->arg[0]);
        return (enum MHD_Result)ebd_send_error(q->c, 404, msg, "bus");
    }
    bus_json(q->d, &b, i);
    unhold(q->d);
    return send_built(q, &b);
}

enum MHD_Result mt_serve_rules(const center_req *q)
{
    enum MHD_Result out;
    sbuf b = { 0 };
    const char *only = center_query(q, "bus");
    hold(q->d);
    if (no_metrics(q, &out))
        return out;
    ebd_rules *r = q->d->rules;
    const vm_program *p = r->p;
    const struct mt_rules *m = r->mt;
    int64_t now_s = real_ns() / 1000000000LL;
    sb_puts(&b, "{\"rules\":[");
    bool first = true;
    pthread_mutex_lock(&reg_mu);
    for (uint32_t i = 0; i < m->nrules; i++) {
        const char *bus = m->bus[p->rules[i].bus]->name;
        if (only && strcmp(only, bus) != 0)
            continue;
        uint64_t v = atomic_load_explicit(&m->rule[i]->matched, memory_order_relaxed);
        sb_puts(&b, first ? "{" : ",{");
        first = false;
        jstr(&b, "name", m->rule[i]->name);
        sb_puts(&b, ",");
        jstr(&b, "bus", bus);
        sb_printf(&b, ",\"matched\":%" PRIu64 ",\"rate\":%.3f,\"targets\":[", v,
                  rule_rate(m->rule[i], v, now_s));
        for (uint32_t k = 0; k < p->rules[i].ntgt; k++) {
            const char *t = m->target[p->rule_targets[p->rules[i].tgt0 + k]]->name;
            sb_puts(&b, k ? "," : "");
            sb_json_string(&b, t, strlen(t));
        }
        sb_puts(&b, "]}");
    }
    pthread_mutex_unlock(&reg_mu);
    sb_puts(&b, "]}");
    unhold(q->d);
    return send_built(q, &b);
}

/* "last_error" and "errors" of target s: its samples, newest first. */
static void errors_json(sbuf *b, struct mt_target *s)
{
    mt_errors *e = atomic_load_explicit(&s->errors, memory_order_acquire);
    if (!e) {
        sb_puts(b, ",\"last_error\":null,\"errors\":[]");
        return;
    }
    pthread_mutex_lock(&e->mu);
    char t[40];
    for (unsigned k = 0; k < e->n; k++) {
        unsigned at = (e->head + NERRORS - 1 - k) % NERRORS;
        mt_time_text(e->e[at].ms, t, sizeof t);
        if (k == 0) {
            sb_printf(b, ",\"last_error\":{\"time\":\"%s\",", t);
            jstr(b, "message", e->e[at].msg);
            sb_puts(b, "},\"errors\":[");
        }
        sb_printf(b, "%s{\"time\":\"%s\",", k ? "," : "", t);
        jstr(b, "rule", e->e[at].rule);
        sb_puts(b, ",");
        jstr(b, "message", e->e[at].msg);
        sb_puts(b, "}");
    }
    if (!e->n)
        sb_puts(b, ",\"last_error\":null,\"errors\":[");
    sb_puts(b, "]");
    pthread_mutex_unlock(&e->mu);
}

enum MHD_Result mt_serve_targets(const center_req *q)
{
    enum MHD_Result out;
    sbuf b = { 0 };
    hold(q->d);
    if (no_metrics(q, &out))
        return out;
    ebd_rules *r = q->d->rules;
    const struct mt_rules *m = r->mt;
    pair_walk w;
    bool walked = walk_pairs(q->d, r, &w);
    sb_puts(&b, "{\"targets\":[");
    for (uint32_t i = 0; i < m->ntargets; i++) {
        struct mt_target *s = m->target[i];
        sb_puts(&b, i ? ",{" : "{");
        jstr(&b, "name", s->name);
        sb_printf(&b, ",\"kind\":\"%s\",\"succeeded\":%" PRIu64 ",\"failed\":%" PRIu64
                  ",\"retried\":%" PRIu64 ",\"dead_lettered\":%" PRIu64 ",\"dropped\":%" PRIu64,
                  kind_name(s->kind), atomic_load(&s->succeeded), atomic_load(&s->failed),
                  atomic_load(&s->retried), atomic_load(&s->dead_lettered), atomic_load(&s->dropped));
        if (walked)
            sb_printf(&b, ",\"queued\":%" PRIu64 ",\"lag\":%" PRIu64, w.queued[i], w.lag[i]);
        else
            sb_puts(&b, ",\"queued\":null,\"lag\":null");
        errors_json(&b, s);
        sb_puts(&b, "}");
    }
    sb_puts(&b, "]}");
    walk_free(&w);
    unhold(q->d);
    return send_built(q, &b);
}
