/*
 * dedup.c — a bus's de-duplication window (`bus B { dedup 10m }`, docs/sources.md): an event
 * whose (source, id) the bus stored within the window is not stored again; whoever sent it is
 * answered with the offset of the first, as if it had been stored.  At-least-once senders (a
 * remote target retrying after a cut, a webhook retried, an MQTT message redelivered) then
 * leave each event once on the bus.
 *
 * Keys are the first 128 bits of SHA-256 over the source and the id (length-prefixed): a
 * sender cannot make one event's key equal another's and so have it dropped.  The table holds
 * each key with its offset and the time it was stored; a FIFO of the same keys in the order
 * they came lets the ones older than the window go.  An event being stored is "pending": a
 * second request with the same key waits for the first to finish (and takes its offset) or to
 * fail (and then stores the event itself), so that two requests racing each other store it
 * once.  At open, the table is filled from the bus's own records of the last window, so a
 * restart (or kill -9) forgets nothing that was stored.
 *
 * Memory: about 64 bytes a key (table at most half full, plus the FIFO); 10 minutes at 10,000
 * events/s is 6M keys, some 400 MB.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ingest.h"

typedef struct {
    uint64_t a, b;                /* the key; a == 0 && b == 0: an empty slot */
    uint64_t offset;
    int64_t ms;                   /* when it was stored */
    bool pending;
} dslot;

typedef struct {
    uint64_t a, b;
    int64_t ms;
} dqueued;

struct ebd_dedup {
    pthread_mutex_t mu;
    pthread_cond_t settled;
    _Atomic uint64_t window_ms;
    uint64_t gen;                 /* counts settlements: what a waiter waits to change */
    dslot *t;
    size_t cap, n;                /* cap: a power of two */
    dqueued *q;                   /* a ring: q[(head + i) & (qcap - 1)] for i < qn */
    size_t qcap, head, qn;
    int64_t (*now)(void *arg);    /* its clock (NULL: the wall clock; tests give their own) */
    void *now_arg;
};

static int64_t clock_ms(const ebd_dedup *d)
{
    return d->now ? d->now(d->now_arg) : ebd_wall_ms();
}

void dedup_set_clock(ebd_dedup *d, int64_t (*now)(void *arg), void *arg)
{
    d->now = now;
    d->now_arg = arg;
}

typedef struct {
    const char *s;
    js_member src, id;
    unsigned found;
} key_parts;

static bool key_member(void *arg, const js_member *m)
{
    key_parts *k = arg;
    if (js_key_is(k->s, m, "source"))
        k->src = *m, k->found |= 1;
    else if (js_key_is(k->s, m, "id"))
        k->id = *m, k->found |= 2;
    return true;
}

/* The key of ev[0..n), JSON that ingest's check accepted (ebd_bus_store's events): its
 * source's and id's JSON text, as src_hash_id digests parts.  (The same string written with
 * other escapes would count as another key, which only costs a duplicate, never a loss.) */
static bool key_of(const char *ev, size_t n, dedup_key *key)
{
    key_parts k = { .s = ev };
    size_t i = vm_json_ws(ev, n, 0);
    if (i >= n || ev[i] != '{')
        return false;
    js_each(ev, n, i, key_member, &k);
    if (k.found != 3)
        return false;
    const void *parts[2] = { ev + k.src.val_off, ev + k.id.val_off };
    size_t lens[2] = { k.src.val_len, k.id.val_len };
    unsigned char md[16];
    if (!ebd_digest128(md, parts, lens, 2))
        return false;
    memcpy(&key->a, md, 8);
    memcpy(&key->b, md + 8, 8);
    key->a |= 1;                  /* never the empty slot's (0, 0) */
    return true;
}

bool dedup_key_of(const char *ev, size_t n, dedup_key *key)
{
    return vm_json_valid(ev, n, NULL) && key_of(ev, n, key);
}

ebd_dedup *dedup_new(uint64_t window_ms)
{
    ebd_dedup *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->cap = 1024;
    d->qcap = 1024;
    d->t = calloc(d->cap, sizeof *d->t);
    d->q = malloc(d->qcap * sizeof *d->q);
    if (!d->t || !d->q) {
        free(d->t);
        free(d->q);
        free(d);
        return NULL;
    }
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->settled, NULL);
    d->window_ms = window_ms;
    return d;
}

void dedup_free(ebd_dedup *d)
{
    if (!d)
        return;
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->settled);
    free(d->t);
    free(d->q);
    free(d);
}

void dedup_set_window(ebd_dedup *d, uint64_t window_ms)
{
    d->window_ms = window_ms;
}

uint64_t dedup_window(const ebd_dedup *d)
{
    return d ? d->window_ms : 0;
}

/* The slot of key (a, b), or the empty slot where it would go. */
static size_t find(const ebd_dedup *d, uint64_t a, uint64_t b)
{
    size_t m = d->cap - 1, i = (size_t)(a ^ b >> 7) & m;
    while ((d->t[i].a || d->t[i].b) && !(d->t[i].a == a && d->t[i].b == b))
        i = (i + 1) & m;
    return i;
}

/* Removes slot i, shifting back the slots after it that probed past it. */
static void remove_at(ebd_dedup *d, size_t i)
{
    size_t m = d->cap - 1, j = i;
    for (;;) {
        j = (j + 1) & m;
        if (!d->t[j].a && !d->t[j].b)
            break;
        size_t home = (size_t)(d->t[j].a ^ d->t[j].b >> 7) & m;
        if (((j - home) & m) >= ((j - i) & m)) {
            d->t[i] = d->t[j];
            i = j;
        }
    }
    memset(&d->t[i], 0, sizeof d->t[i]);
    d->n--;
}

static bool grow(ebd_dedup *d)
{
    if ((d->n + 1) * 2 > d->cap) {
        size_t cap = d->cap * 2;
        dslot *t = calloc(cap, sizeof *t), *old = d->t;
        if (!t)
            return false;
        size_t oldcap = d->cap;
        d->t = t;
        d->cap = cap;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i].a || old[i].b)
                d->t[find(d, old[i].a, old[i].b)] = old[i];
        free(old);
    }
    if (d->qn == d->qcap) {
        dqueued *q = malloc(2 * d->qcap * sizeof *q);
        if (!q)
            return false;
        for (size_t i = 0; i < d->qn; i++)
            q[i] = d->q[(d->head + i) & (d->qcap - 1)];
        free(d->q);
        d->q = q;
        d->head = 0;
        d->qcap *= 2;
    }
    return true;
}

/* Lets the keys stored before now - window go. */
static void expire(ebd_dedup *d, int64_t now)
{
    int64_t edge = now - (int64_t)d->window_ms;
    while (d->qn && d->q[d->head].ms < edge) {
        dqueued *e = &d->q[d->head];
        size_t i = find(d, e->a, e->b);
        if ((d->t[i].a || d->t[i].b) && !d->t[i].pending && d->t[i].ms == e->ms)
            remove_at(d, i);
        d->head = (d->head + 1) & (d->qcap - 1);
        d->qn--;
    }
}

static bool insert(ebd_dedup *d, dedup_key k, uint64_t offset, int64_t ms, bool pending)
{
    if (!grow(d))
        return false;
    size_t i = find(d, k.a, k.b);
    if (!d->t[i].a && !d->t[i].b)
        d->n++;
    d->t[i] = (dslot){ k.a, k.b, offset, ms, pending };
    d->q[(d->head + d->qn++) & (d->qcap - 1)] = (dqueued){ k.a, k.b, ms };
    return true;
}

void dedup_note(ebd_dedup *d, dedup_key k, uint64_t offset, int64_t ms)
{
    pthread_mutex_lock(&d->mu);
    size_t i = find(d, k.a, k.b);
    if (!d->t[i].a && !d->t[i].b)     /* (one there already, pending or stored, stays) */
        insert(d, k, offset, ms, false);
    pthread_mutex_unlock(&d->mu);
}

int dedup_claim(ebd_dedup *d, dedup_key k, uint64_t *offset, uint64_t *gen)
{
    pthread_mutex_lock(&d->mu);
    int r;
    int64_t now = clock_ms(d);
    expire(d, now);
    size_t i = find(d, k.a, k.b);
    if (!d->t[i].a && !d->t[i].b)
        r = insert(d, k, 0, now, true) ? DEDUP_NEW : DEDUP_FULL;
    else if (d->t[i].pending)
        r = DEDUP_PENDING;
    else
        *offset = d->t[i].offset, r = DEDUP_SEEN;
    *gen = d->gen;
    pthread_mutex_unlock(&d->mu);
    return r;
}

void dedup_wait(ebd_dedup *d, uint64_t gen)
{
    pthread_mutex_lock(&d->mu);
    while (d->gen == gen)
        pthread_cond_wait(&d->settled, &d->mu);
    pthread_mutex_unlock(&d->mu);
}

void dedup_settle(ebd_dedup *d, dedup_key k, bool stored, uint64_t offset)
{
    pthread_mutex_lock(&d->mu);
    size_t i = find(d, k.a, k.b);
    if ((d->t[i].a || d->t[i].b) && d->t[i].pending) {
        if (stored) {
            /* its window runs from now: the FIFO entry of its claim may be gone already (a
             * store slower than the window), and would no longer match it */
            int64_t ms = clock_ms(d);
            d->t[i].pending = false;
            d->t[i].offset = offset;
            d->t[i].ms = ms;
            if (grow(d))          /* (may move the slots: i is not used after it) */
                d->q[(d->head + d->qn++) & (d->qcap - 1)] = (dqueued){ k.a, k.b, ms };
        } else {
            remove_at(d, i);      /* (its FIFO entry finds nothing when it expires) */
        }
    }
    d->gen++;
    pthread_cond_broadcast(&d->settled);
    pthread_mutex_unlock(&d->mu);
}

size_t dedup_size(ebd_dedup *d)
{
    pthread_mutex_lock(&d->mu);
    size_t n = d->n;
    pthread_mutex_unlock(&d->mu);
    return n;
}

long dedup_fill(ebd_dedup *d, store *s, int64_t from_ms)
{
    int64_t since = clock_ms(d) - (int64_t)d->window_ms;
    if (from_ms > since)
        since = from_ms;
    store_cursor *c;
    if (store_cursor_open_at(s, since * 1000000, &c) != STORE_OK)
        return -1;
    long n = 0;
    store_record r;
    store_status st;
    for (;;) {
        st = store_cursor_next(c, &r, 0);
        dedup_key k;
        uint64_t first, next, lost;
        if (st == STORE_OK && dedup_key_of((const char *)r.data, r.len, &k)) {
            dedup_note(d, k, r.offset, r.time_ns / 1000000);
            n++;
        } else if (st == STORE_BEHIND) {          /* retention went past it: from the first */
            store_bounds(s, &first, &next);
            store_cursor_seek(c, first);
        } else if (st == STORE_CORRUPT) {
            store_cursor_skip(c, &lost);
        } else if (st != STORE_OK) {
            break;
        }
    }
    store_cursor_close(c);
    return st == STORE_TIMEOUT ? n : -1;
}

/* ---- storing through the window ------------------------------------------------------------ */

enum { ST_PENDING, ST_PLAIN, ST_NEW, ST_SEEN, ST_SAME };

typedef struct {                  /* one event of a store through the window */
    dedup_key k;
    bool keyed;                   /* it has a key (else it is simply stored) */
    bool done;                    /* stored, or known to be a duplicate */
    unsigned char st;             /* ST_* */
    size_t same;                  /* ST_SAME: the earlier event of the request it repeats */
    size_t slot;                  /* in this round's append */
    uint64_t off;
} one;

/* Claims the keys of the events still to decide (ST_PENDING); *gen for waiting. */
static void claim_round(ebd_dedup *d, one *v, size_t n, uint64_t *gen, bool *waiting)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i].st != ST_PENDING)
            continue;
        if (!v[i].keyed) {
            v[i].st = ST_PLAIN;
            continue;
        }
        size_t j = 0;                     /* the same event earlier in this request */
        while (j < i && !(v[j].keyed && v[j].st != ST_PENDING && v[j].k.a == v[i].k.a &&
                          v[j].k.b == v[i].k.b))
            j++;
        if (j < i) {
            v[i].st = ST_SAME;
            v[i].same = j;
            continue;
        }
        uint64_t g;
        switch (dedup_claim(d, v[i].k, &v[i].off, &g)) {
        case DEDUP_NEW: v[i].st = ST_NEW; break;
        case DEDUP_SEEN: v[i].st = ST_SEEN; break;
        case DEDUP_FULL:                  /* stored, unguarded: said, not hidden */
            v[i].st = ST_PLAIN;
            ebd_log(EBD_ERROR, "msg=\"no memory for the dedup window: an event is stored without "
                    "its check\"");
            break;
        default:                          /* another request is storing it: next round */
            if (!*waiting)
                *gen = g;                 /* (a settlement after this claim ends the wait) */
            *waiting = true;
        }
    }
}

/* A bus whose store de-duplicates itself (NATS JetStream: its duplicate window, which every
 * daemon of the bus shares): each event's key as its msg_id, the store says which it kept. */
static store_status store_keyed(ebd_bus *b, const store_entry *e, size_t n, uint64_t *offsets,
                                bool *dup)
{
    store_entry *k = malloc(n * sizeof *k);
    char (*ids)[33] = malloc(n * sizeof *ids);
    if (!k || !ids) {
        free(k);
        free(ids);
        return STORE_EIO;
    }
    for (size_t i = 0; i < n; i++) {
        dedup_key key;
        k[i] = e[i];
        if (key_of(e[i].data, e[i].len, &key)) {
            snprintf(ids[i], sizeof ids[i], "%016llx%016llx", (unsigned long long)key.a,
                     (unsigned long long)key.b);
            k[i].msg_id = ids[i];
        }
    }
    store_status st = store_append_dedup(b->s, k, n, offsets, dup);
    free(k);
    free(ids);
    return st;
}

store_status ebd_bus_store(ebd_bus *b, const store_entry *e, size_t n, uint64_t *offsets,
                           bool *dup)
{
    if (dup)
        memset(dup, 0, n * sizeof *dup);
    if (n && store_dedups(b->s))
        return store_keyed(b, e, n, offsets, dup);
    ebd_dedup *d = __atomic_load_n(&b->dedup, __ATOMIC_ACQUIRE);
    if (!d || !d->window_ms || n == 0)
        return store_append(b->s, e, n, offsets);
    one *v = calloc(n, sizeof *v);
    store_entry *todo = malloc(n * sizeof *todo);
    uint64_t *got = malloc(n * sizeof *got);
    store_status r = STORE_OK;
    if (!v || !todo || !got) {
        r = STORE_EIO;
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        v[i].keyed = key_of(e[i].data, e[i].len, &v[i].k);
    /* Rounds: claim, store what is new, settle; what another request was storing meanwhile is
     * decided in the next round, after waiting for a settlement - never while holding claims
     * of our own, so that two requests cannot wait for each other. */
    for (;;) {
        uint64_t gen = 0;
        bool waiting = false;
        claim_round(d, v, n, &gen, &waiting);
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (!v[i].done && (v[i].st == ST_NEW || v[i].st == ST_PLAIN)) {
                v[i].slot = m;
                todo[m++] = e[i];
            }
        if (m)
            r = store_append(b->s, todo, m, got);
        for (size_t i = 0; i < n; i++)
            if (!v[i].done && (v[i].st == ST_NEW || v[i].st == ST_PLAIN)) {
                if (v[i].st == ST_NEW)        /* (a failed append gives the claim way) */
                    dedup_settle(d, v[i].k, r == STORE_OK, got[v[i].slot]);
                v[i].off = got[v[i].slot];
                v[i].done = true;
            }
        if (r != STORE_OK)
            goto out;
        if (!waiting)
            break;
        dedup_wait(d, gen);
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i].st == ST_SAME)
            v[i].off = v[v[i].same].off;
        if (dup && (v[i].st == ST_SEEN || v[i].st == ST_SAME))
            dup[i] = true;
        if (offsets)
            offsets[i] = v[i].off;
    }
out:
    free(v);
    free(todo);
    free(got);
    return r;
}
