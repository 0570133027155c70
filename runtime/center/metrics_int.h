/*
 * metrics_int.h — what metrics.c (the slots, the hooks, the ticker) shares with metrics_api.c
 * (GET /metrics and the admin API).  Private to those two files.
 */
#ifndef EBR_METRICS_INT_H
#define EBR_METRICS_INT_H

#include "center.h"

#define RING_SEC 64               /* a bus's per-second samples (the rate over the last minute) */
#define RING_MIN 64               /* a bus's per-minute samples (the last 60 minutes) */
#define RING_10S 8                /* a rule's samples, every 10 s */
#define NERRORS 10                /* the error samples a target keeps */

struct mt_bus {
    char *name;
    _Atomic uint64_t ingested;
    _Atomic uint64_t duplicates;  /* events its dedup window kept from being stored again */
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
    _Atomic uint64_t sum_ns;      /* (the count is the buckets' total) */
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

int64_t mt_real_ns(void);                     /* the real-time clock, ns since the epoch */
int64_t mt_started_ns(void);                  /* when the first slot was made */
/* The slots' lock (the registry, the ticker's samples) and what needs it held: */
void mt_lock(void);
void mt_unlock(void);
struct mt_bus *mt_bus_find_locked(const char *name);          /* NULL: none of that name */
double mt_bus_rate_locked(struct mt_bus *b, uint64_t v, int64_t now_s);   /* events/s */
/* counts[k]: the events of the minute cur - 59 + k (cur = now_s / 60), from v now */
void mt_bus_minutes_locked(struct mt_bus *b, uint64_t v, int64_t now_s, uint64_t counts[60]);
double mt_rule_rate_locked(const struct mt_rule *s, uint64_t v, int64_t now_s);

#endif
