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
 * What is served of them is metrics_api.c's.
 */
#define _GNU_SOURCE                 /* pthread_setname_np */
#include <dirent.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "metrics_int.h"

/* ---- clocks and times ------------------------------------------------------------------------ */

/* The real-time clock: ns since the epoch (the log's record times are on it). */
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

/* ---- the slots --------------------------------------------------------------------------------- */


/* The slots by name: open addressing on one table per kind, under reg_mu (bind, refusals, the
 * ticker); the slots themselves are never freed nor moved. */
typedef struct {
    void **v;                     /* each slot starts with its name (char *) */
    size_t cap, n;
} table;

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static table buses_t, rules_t, targets_t;
static int64_t tick10;            /* the index of the last 10 s tick (reg_mu) */
static int64_t started_ns;
static pthread_once_t ticker_once = PTHREAD_ONCE_INIT;

/* FNV-1a of a name. */
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

/* Once, at the first slot: notes the start and runs the ticker (detached, for good). */
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

/* Under reg_mu: the slot of p's bus b. */
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
        (void)made;               /* (a new slot's samples are 0: its count when made) */
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

/* ---- the hooks --------------------------------------------------------------------------------- */

void mt_ingested(const ebd_bus *b, size_t n)
{
    if (b->mt)
        atomic_fetch_add_explicit(&b->mt->ingested, n, memory_order_relaxed);
}

void mt_duplicates(const ebd_bus *b, size_t n)
{
    if (b->mt && n)
        atomic_fetch_add_explicit(&b->mt->duplicates, n, memory_order_relaxed);
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
        /* One router (its bus's) writes a rule's slot at a time: a reload stops the old one
         * before the new one starts.  So a load and a store, no read-modify-write. */
        if (off < atomic_load_explicit(&s->next_off, memory_order_relaxed))
            continue;
        atomic_store_explicit(&s->next_off, off + 1, memory_order_relaxed);
        atomic_store_explicit(&s->matched, atomic_load_explicit(&s->matched, memory_order_relaxed) + 1,
                              memory_order_relaxed);
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

void mt_request_end(const char *bus, size_t n)
{
    unsigned st = answered_status;
    if (st < 400 || !bus)
        return;
    mt_reason why = answered_reason >= 0 ? (mt_reason)answered_reason : reason_of(st);
    /* (a cold path: the slot by name; an unknown bus counts under bus "") */
    char bname[256];
    snprintf(bname, sizeof bname, "%.*s", (int)n, bus);
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

/* Every second: the buses' samples; every 10 s, the rules'. */
static void *ticker_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ebd-metrics");   /* (top -H, ps -L) */
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
double mt_bus_rate_locked(struct mt_bus *b, uint64_t v, int64_t now_s)
{
    bus_advance(b, now_s);
    if (now_s - 60 >= b->sec0)
        return (double)(v - b->at_sec[(now_s - 60) % RING_SEC]) / 60.0;
    return (double)v / (double)(now_s - b->sec0 > 0 ? now_s - b->sec0 : 1);
}

/* Under reg_mu: rule s's matches/s over about the last minute. */
double mt_rule_rate_locked(const struct mt_rule *s, uint64_t v, int64_t now_s)
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


/* ---- for metrics_api.c ------------------------------------------------------------------------- */

int64_t mt_real_ns(void)
{
    return real_ns();
}


int64_t mt_started_ns(void)
{
    return started_ns;
}

void mt_lock(void)
{
    pthread_mutex_lock(&reg_mu);
}

void mt_unlock(void)
{
    pthread_mutex_unlock(&reg_mu);
}

struct mt_bus *mt_bus_find_locked(const char *name)
{
    return buses_t.cap ? *table_place(&buses_t, name) : NULL;
}

void mt_bus_minutes_locked(struct mt_bus *b, uint64_t v, int64_t now_s, uint64_t counts[60])
{
    bus_advance(b, now_s);
    int64_t cur = now_s / 60;
    for (int k = 0; k < 60; k++) {
        int64_t m = cur - 59 + k;
        counts[k] = m < b->min0 ? 0
                  : (m == cur ? v : b->at_min[(m + 1) % RING_MIN]) - b->at_min[m % RING_MIN];
    }
}
