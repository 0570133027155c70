/*
 * trace.c — an event's trace (docs/trace.md): the hooks, the trace thread and its logs, the
 * record encoding, and the look-up behind GET /v1/buses/{bus}/events/{id}/trace,
 * GET /v1/buses/{bus}/offsets/{n}/trace and `ebc trace`.
 *
 * The hooks never wait for I/O: each encodes its record into its thread's buffer under one mutex
 * (a few dozen bytes of memcpy, or a span extended in place) and returns; past
 * THREAD_BUFFER_MAX bytes held it drops the record and counts it.  The trace thread (nice 19)
 * swaps each thread's buffer for its other one every TRACE_FLUSH_MS, sorts what it took by bus
 * and appends one block per bus and log (fsync never: a trace is not
 * an acknowledged promise; a crash loses at most what the operating system had not written).
 * Dropped records leave a gap record in every traced bus's delivery log, and a look-up that
 * meets one says its trace is "incomplete".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "center.h"
#include "trace.h"

/* ---- the buffer the hooks fill -------------------------------------------------------------- */

/* Each thread that records has a buffer of its own (no lock shared between threads on the hot
 * path: one mutex that only the trace thread also takes, for the swap).  An entry: u32 length
 * of the rest, u8 length of the bus's name, the name, one record. */
typedef struct tbuf {
    pthread_mutex_t mu;
    sbuf b;                       /* the thread writes here (under mu) */
    sbuf back;                    /* the trace thread reads the other one here */
    struct tbuf *next;
    _Atomic bool dead;            /* its thread has ended: freed once drained */
    /* The last entry of b, when the next record may extend it (a span, trace_rec): a router's
     * matched record, or a delivered span.  0: none (any other record, or b was swapped). */
    int tail;
    size_t tail_at;               /* where its entry begins in b */
    size_t tail_rec;              /* where its record begins in the entry */
    const void *tail_bus, *tail_a, *tail_b;   /* the bus; matched: the program; delivered: the
                                               * rule's and the target's names */
    uint64_t tail_next;           /* the offset that extends it */
    unsigned tail_attempt;
    long tail_status;
} tbuf;

#define THREAD_BUFFER_MAX ((size_t)16 << 20)   /* bytes one thread's buffer holds: then drops */

static struct {
    pthread_mutex_t mu;           /* the list */
    tbuf *all;
    _Atomic bool on;              /* some bus is traced: the hooks record */
    _Atomic uint64_t dropped;
    pthread_key_t key;            /* marks a thread's buffer dead when the thread ends */
    pthread_once_t once;
} T = { .mu = PTHREAD_MUTEX_INITIALIZER, .once = PTHREAD_ONCE_INIT };

static _Thread_local tbuf *mine;

static void thread_gone(void *arg)
{
    atomic_store(&((tbuf *)arg)->dead, true);
}

static void key_init(void)
{
    pthread_key_create(&T.key, thread_gone);
}

/* This thread's buffer, made and listed the first time. */
static tbuf *my_buffer(void)
{
    if (mine)
        return mine;
    pthread_once(&T.once, key_init);
    tbuf *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    pthread_mutex_init(&t->mu, NULL);
    pthread_setspecific(T.key, t);
    pthread_mutex_lock(&T.mu);
    t->next = T.all;
    T.all = t;
    pthread_mutex_unlock(&T.mu);
    return mine = t;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t trace_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Under t->mu: room for need more bytes at the end of t's buffer (where they go), or NULL when
 * it holds too much already or memory is short. */
static unsigned char *room(tbuf *t, size_t need)
{
    sbuf *b = &t->b;
    if (b->n > THREAD_BUFFER_MAX)
        return NULL;
    if (b->cap - b->n < need) {
        size_t cap = b->cap ? b->cap : 64 << 10;
        while (cap - b->n < need)
            cap *= 2;
        char *v = realloc(b->v, cap);
        if (!v)
            return NULL;
        b->v = v;
        b->cap = cap;
    }
    return (unsigned char *)b->v + b->n;
}

/* An entry's u32 length (of what follows it), little-endian as flush_buffer reads it. */
static void entry_length(unsigned char *p, size_t len)
{
    for (unsigned i = 0; i < 4; i++)
        p[i] = (unsigned char)(len >> (8 * i));
}

/* Encodes r for bus `bus` into this thread's buffer, or counts it dropped.  (Written in place,
 * one bounds check: this is the hooks' whole cost.) */
static void push(const char *bus, const trace_rec *r)
{
    size_t bn = strlen(bus), need = 5 + bn + trace_encoded_max(r);
    tbuf *t = my_buffer();
    if (bn > 255 || !t) {
        atomic_fetch_add(&T.dropped, 1);
        return;
    }
    pthread_mutex_lock(&t->mu);
    sbuf *b = &t->b;
    unsigned char *p = room(t, need);
    if (!p) {
        pthread_mutex_unlock(&t->mu);
        atomic_fetch_add(&T.dropped, 1);
        return;
    }
    t->tail = 0;
    unsigned char *q = trace_encode_to(p + 5 + bn, r);
    entry_length(p, (size_t)(q - p) - 4);
    p[4] = (unsigned char)bn;
    memcpy(p + 5, bus, bn);
    b->n += (size_t)(q - p);
    pthread_mutex_unlock(&t->mu);
}

/* An error cut to TRACE_ERROR_MAX bytes ("..." at the end when cut) into out. */
static void cut_error(char *out, const char *e)
{
    size_t n = e ? strnlen(e, TRACE_ERROR_MAX + 1) : 0;
    if (n > TRACE_ERROR_MAX) {
        size_t k = TRACE_ERROR_MAX - 3;
        while (k && ((unsigned char)e[k] & 0xC0) == 0x80)    /* not inside a UTF-8 sequence */
            k--;
        memcpy(out, e, k);
        memcpy(out + k, "...", 4);
    } else {
        memcpy(out, e ? e : "", n);
        out[n] = 0;
    }
}

static bool tracing(void)
{
    return atomic_load_explicit(&T.on, memory_order_relaxed);
}

void trace_received(struct MHD_Connection *c, const ebd_bus *b, const uint64_t *offs, size_t n,
                    const void *ids, const void *idlens, size_t stride, const char *skip)
{
    if (!tracing() || n == 0)
        return;
    trace_rec r = { .kind = TR_RECEIVED, .off = offs[0], .time_ms = wall_ms() };
    const union MHD_ConnectionInfo *ai =        /* (no connection: a source's event) */
        c ? MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS) : NULL;
    const struct sockaddr *sa = ai ? ai->client_addr : NULL;
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        memcpy(r.addr, &in->sin_addr, 4);
        r.alen = 4;
        r.port = ntohs(in->sin_port);
    } else if (sa && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in = (const struct sockaddr_in6 *)sa;
        memcpy(r.addr, &in->sin6_addr, 16);
        r.alen = 16;
        r.port = ntohs(in->sin6_port);
    }
    unsigned char small[4 * 64], *hs = n <= 64 ? small : malloc(4 * n);
    if (!hs) {
        atomic_fetch_add(&T.dropped, 1);
        return;
    }
    /* One record per run of consecutive offsets (a shared backend may put other producers'
     * events between a batch's). */
    const char *ip = ids, *lp = idlens;
    size_t j = 0, h0 = 0;
    for (size_t k = 0; k < n; k++) {
        if (skip && skip[k * stride])
            continue;
        if (r.count && offs[j] != r.off + r.count) {
            r.hashes = hs + 4 * h0;
            push(b->name, &r);
            h0 += r.count;
            r.off = offs[j];
            r.count = 0;
        }
        j++;
        const char *id = *(const char *const *)(const void *)(ip + k * stride);
        size_t len = *(const size_t *)(const void *)(lp + k * stride);
        uint32_t h;
        if (len >= 2 && !memchr(id, '\\', len)) {
            h = trace_id_hash(id + 1, len - 2);
        } else {                                   /* escapes: the decoded text */
            char *t = malloc(len + 1);
            h = t ? trace_id_hash(t, js_unquote(id, len, t)) : 0;
            free(t);
        }
        for (unsigned i = 0; i < 4; i++)
            hs[4 * (h0 + r.count) + i] = (unsigned char)(h >> (8 * i));
        r.count++;
    }
    r.hashes = hs + 4 * h0;
    if (r.count)
        push(b->name, &r);
    if (hs != small)
        free(hs);
}

/* The router's record, as it is buffered: the program and the rules' indices, turned into the
 * stored matched record (names) by the trace thread (a router does one per event: it must cost
 * next to nothing).  The program stays alive until then: trace_retire.  Layout after the entry's
 * u32 length, u8 bus length and bus: u8 TR_MATCHED_RAW, u32 length, u64 off, u64 program,
 * u32 count, u32 span, count x u32 rule (host order). */
#define TR_MATCHED_RAW 100
enum { RAW_OFF = 5, RAW_PROG = 13, RAW_COUNT = 21, RAW_SPAN = 25, RAW_RULES = 29 };

/* A router matches run after run of events to the same rules: the next event of a run adds one
 * to the span of the record already buffered (a compare and an add, under the lock), instead of
 * a record of its own.  With the delivered spans below, tracing went from 0.74 of the routing
 * rate with it off to 0.91-0.97, and the trace thread from ~15% of the daemon's CPU to ~0
 * (bench_ingest --trace-table --runs 7: bench/README.md). */
void trace_matched(const ebd_bus *b, uint64_t off, const vm_program *p, const uint32_t *rules,
                   size_t n)
{
    if (!tracing() || n == 0)
        return;
    tbuf *t = my_buffer();
    if (!t || n > 65535) {
        atomic_fetch_add(&T.dropped, 1);
        return;
    }
    pthread_mutex_lock(&t->mu);
    if (t->tail == TR_MATCHED_RAW && t->tail_bus == b && t->tail_a == p && t->tail_next == off) {
        unsigned char *q = (unsigned char *)t->b.v + t->tail_at + t->tail_rec;
        uint32_t cnt, span;
        memcpy(&cnt, q + RAW_COUNT, 4);
        memcpy(&span, q + RAW_SPAN, 4);
        if (cnt == n && span < UINT32_MAX && !memcmp(q + RAW_RULES, rules, 4 * n)) {
            span++;
            memcpy(q + RAW_SPAN, &span, 4);
            t->tail_next++;
            pthread_mutex_unlock(&t->mu);
            return;
        }
    }
    size_t bn = strlen(b->name), body = RAW_RULES - 5 + 4 * n, need = 5 + bn + 5 + body;
    unsigned char *q = bn > 255 ? NULL : room(t, need);
    if (!q) {
        pthread_mutex_unlock(&t->mu);
        atomic_fetch_add(&T.dropped, 1);
        return;
    }
    t->tail = TR_MATCHED_RAW;
    t->tail_at = t->b.n;
    t->tail_rec = 5 + bn;
    t->tail_bus = b;
    t->tail_a = p;
    t->tail_next = off + 1;
    uint32_t rl = (uint32_t)body, cnt = (uint32_t)n, span = 1;
    uint64_t pp = (uint64_t)(uintptr_t)p;
    entry_length(q, need - 4);
    q[4] = (unsigned char)bn;
    memcpy(q + 5, b->name, bn);
    q += 5 + bn;
    q[0] = TR_MATCHED_RAW;
    memcpy(q + 1, &rl, 4);
    memcpy(q + RAW_OFF, &off, 8);
    memcpy(q + RAW_PROG, &pp, 8);
    memcpy(q + RAW_COUNT, &cnt, 4);
    memcpy(q + RAW_SPAN, &span, 4);
    memcpy(q + RAW_RULES, rules, 4 * n);
    t->b.n += need;
    pthread_mutex_unlock(&t->mu);
}

/* A raw matched record rec[0..n) (TR_MATCHED_RAW, host byte order) as the stored one, appended
 * to out: each (rule, target) pair of the rules, by name. */
static void matched_names(const unsigned char *rec, size_t n, sbuf *out)
{
    uint64_t off, pp;
    uint32_t cnt, span;
    if (n < RAW_RULES)
        return;
    memcpy(&off, rec + RAW_OFF, 8);
    memcpy(&pp, rec + RAW_PROG, 8);
    memcpy(&cnt, rec + RAW_COUNT, 4);
    memcpy(&span, rec + RAW_SPAN, 4);
    if (n < RAW_RULES + 4 * (size_t)cnt)
        return;
    const vm_program *p = (const vm_program *)(uintptr_t)pp;
    sbuf names = { 0 };
    uint32_t pairs = 0;
    for (uint32_t i = 0; i < cnt; i++) {
        uint32_t ri;
        memcpy(&ri, rec + RAW_RULES + 4 * (size_t)i, 4);
        if (ri >= p->nrules)
            continue;
        const vm_rule *ru = &p->rules[ri];
        for (uint32_t k = 0; k < ru->ntgt; k++) {
            const vm_target *t = &p->targets[p->rule_targets[ru->tgt0 + k]];
            sb_put(&names, vm_s(p, ru->name), ru->name.len);
            sb_put(&names, "", 1);
            sb_put(&names, vm_s(p, t->name), t->name.len);
            sb_put(&names, "", 1);
            pairs++;
        }
    }
    if (!names.oom && pairs) {
        trace_rec r = { .kind = TR_MATCHED, .off = off, .count = pairs, .names = names.v,
                        .span = span };
        trace_encode(out, &r);
    }
    sb_free(&names);
}

/* A delivery that succeeded, as one event more of a delivered span: a delivery thread delivers
 * a batch of consecutive offsets to one target, each event adding a few bytes of varints to the
 * record the batch's first began. */
static void delivered(const ebd_bus *b, uint64_t off, const char *rule, const char *target,
                      unsigned n, long status, uint32_t lat, size_t payload)
{
    tbuf *t = my_buffer();
    if (!t) {
        atomic_fetch_add(&T.dropped, 1);
        return;
    }
    int64_t now = wall_ms();
    pthread_mutex_lock(&t->mu);
    if (t->tail == TR_DELIVERED_SPAN && t->tail_bus == b && t->tail_a == rule &&
        t->tail_b == target && t->tail_next == off && t->tail_attempt == n &&
        t->tail_status == status && t->b.n - t->tail_at < 65536) {
        unsigned char *q = room(t, TRACE_SPAN_EVENT_MAX);
        if (q) {
            unsigned char *e = (unsigned char *)t->b.v + t->tail_at;
            size_t added = trace_span_add(e + t->tail_rec, q, now, lat, payload);
            entry_length(e, (size_t)(q - e) - 4 + added);
            t->b.n += added;
            t->tail_next++;
            pthread_mutex_unlock(&t->mu);
            return;
        }
    }
    size_t bn = strlen(b->name);
    trace_rec r = { .kind = TR_ATTEMPT, .off = off, .time_ms = now, .attempt = n,
                    .status = status, .rule = rule, .target = target, .to = "", .error = "" };
    unsigned char *p = bn > 255 ? NULL : room(t, 5 + bn + trace_encoded_max(&r) + TRACE_SPAN_EVENT_MAX);
    if (!p) {
        t->tail = 0;
        pthread_mutex_unlock(&t->mu);
        atomic_fetch_add(&T.dropped, 1);
        return;
    }
    unsigned char *rec = p + 5 + bn, *q = trace_span_begin(rec, &r);
    q += trace_span_add(rec, q, now, lat, payload);
    entry_length(p, (size_t)(q - p) - 4);
    p[4] = (unsigned char)bn;
    memcpy(p + 5, b->name, bn);
    t->tail = TR_DELIVERED_SPAN;
    t->tail_at = t->b.n;
    t->tail_rec = 5 + bn;
    t->tail_bus = b;
    t->tail_a = rule;
    t->tail_b = target;
    t->tail_next = off + 1;
    t->tail_attempt = n;
    t->tail_status = status;
    t->b.n += (size_t)(q - p);
    pthread_mutex_unlock(&t->mu);
}

void trace_attempt(const ebd_bus *b, uint64_t off, const char *rule, const char *target,
                   const char *to, bool dl, unsigned n, long status, int64_t start_ms,
                   size_t payload, const char *error)
{
    if (!tracing())
        return;
    char cut[TRACE_ERROR_MAX + 4];
    cut_error(cut, error);
    int64_t lat = start_ms ? trace_clock_ms() - start_ms : 0;
    /* a delivery that succeeded is over: said here, not in an outcome record of its own */
    unsigned state = !dl && !cut[0] ? TRACE_DELIVERED : 0;
    if (state == TRACE_DELIVERED) {
        delivered(b, off, rule, target, n, status, lat > 0 ? (uint32_t)lat : 0, payload);
        return;
    }
    trace_rec r = { .kind = TR_ATTEMPT, .off = off, .time_ms = wall_ms(), .attempt = n, .dl = dl,
                    .state = state,
                    .status = status, .latency_ms = lat > 0 ? (uint32_t)lat : 0,
                    .payload = payload, .rule = rule, .target = target,
                    .to = dl ? to : "", .error = cut };     /* (not dl: to is the target) */
    push(b->name, &r);
}

void trace_outcome(const ebd_bus *b, uint64_t off, const char *rule, const char *target,
                   int state, const char *where, const char *why, unsigned attempts)
{
    if (!tracing())
        return;
    char cut[TRACE_ERROR_MAX + 4];
    cut_error(cut, why);
    trace_rec r = { .kind = TR_OUTCOME, .off = off, .time_ms = wall_ms(), .state = (unsigned)state,
                    .attempt = attempts, .rule = rule, .target = target, .to = where, .error = cut };
    push(b->name, &r);
}

/* ---- the trace thread ------------------------------------------------------------------------- */

/* A block being made: its records, and the offsets they are about. */
typedef struct {
    sbuf b;
    uint64_t lo, hi;              /* the lowest and highest offset of its records */
    uint64_t mhi;                 /* the highest offset of its matched records, + 1 (0: none) */
} block;

/* A bus as the trace thread writes it. */
typedef struct {
    char *name;
    bool on;
    int64_t retention_ms;
    store *recv, *deliv;          /* opened when first written */
    int64_t open_retention_ms;    /* what they were opened with */
    bool nats;                    /* a bus on NATS JetStream: its trace logs are streams there, */
    store_nats_options no;        /*   which every daemon of the bus writes and reads */
    int64_t retry_ms;             /* a stream that could not be opened: not tried before then */
    unsigned failures;            /*   (said once a streak, and when it ends) */
    block brecv, bdeliv;          /* this flush's blocks */
} tbus;

static struct {
    ebd *d;
    pthread_t th;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    const ebd_rules *seen;        /* the rules the settings below were read from */
    tbus *buses;
    size_t nbuses;
    uint64_t gaps_written;        /* drops already told */
    sbuf conv;                    /* a matched record made from a raw one */
    pthread_cond_t done;          /* a flush ended (cycles moved) */
    uint64_t cycles;
} W = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER,
        .done = PTHREAD_COND_INITIALIZER };

/* The daemon's readers of trace streams (trace_nats_reader). */
static struct {
    pthread_mutex_t mu;
    struct rcache { char *key; store *s; } *v;   /* by stream, log and first server */
    size_t n;
} RC = { .mu = PTHREAD_MUTEX_INITIALIZER };

static bool cfg_word(const vm_program *p, const vm_cfg *c, const char *w)
{
    const vm_cfg *v = ebd_cfg_child(p, c, 0);
    return v && v->str.len == strlen(w) && !memcmp(vm_s(p, v->str), w, v->str.len);
}

static tbus *tbus_find(const char *name, size_t n)
{
    for (size_t i = 0; i < W.nbuses; i++)
        if (strlen(W.buses[i].name) == n && !memcmp(W.buses[i].name, name, n))
            return &W.buses[i];
    return NULL;
}

/* Reads what the rules say of tracing: server { trace off } turns it off everywhere; bus { trace
 * off } for one bus; trace_retention per bus (default: 24 h, or the bus's retention if
 * shorter).  Under d->lock (read). */
static void read_settings(const ebd_rules *r)
{
    const vm_program *p = r->p;
    const vm_cfg *so = ebd_cfg_option(p, p->server0, p->nserver, "trace");
    bool any = false, server_off = so && cfg_word(p, so, "off");
    for (size_t i = 0; i < W.nbuses; i++)
        W.buses[i].on = false;
    for (uint32_t i = 0; i < p->nbuses; i++) {
        const vm_bus *vb = &p->buses[i];
        tbus *t = tbus_find(vm_s(p, vb->name), vb->name.len);
        if (!t) {
            tbus *v = realloc(W.buses, (W.nbuses + 1) * sizeof *v);
            if (!v)
                continue;
            W.buses = v;
            t = &W.buses[W.nbuses];
            memset(t, 0, sizeof *t);
            if (!(t->name = strndup(vm_s(p, vb->name), vb->name.len)))
                continue;
            W.nbuses++;
        }
        const vm_cfg *o = ebd_cfg_option(p, vb->opt0, vb->nopt, "trace");
        t->on = !server_off && !(o && cfg_word(p, o, "off"));
        store_options so2;
        rt_bus_store_options(p, i, &so2);
        int64_t ret = TRACE_DEFAULT_RETENTION_MS;
        if (so2.retention_ns && (int64_t)(so2.retention_ns / 1000000) < ret)
            ret = (int64_t)(so2.retention_ns / 1000000);
        const vm_cfg *tr = ebd_cfg_option(p, vb->opt0, vb->nopt, "trace_retention");
        if (tr && ebd_cfg_child(p, tr, 0))
            ret = (int64_t)ebd_cfg_child(p, tr, 0)->num;
        t->retention_ms = ret > 0 ? ret : 1000;
        any |= t->on;
        store_nats_options no;
        char err[300];
        int on_nats = rt_bus_nats_options(p, i, &no, err, sizeof err);
        if (on_nats < 0)
            ebd_log(EBD_ERROR, "msg=\"the bus's trace stays in this daemon's data directory\" "
                    "bus=%s error=\"%s\"", t->name, err);
        bool moved = t->nats != (on_nats == 1) ||
                     (t->nats && (strcmp(t->no.stream, no.stream) || strcmp(t->no.urls[0], no.urls[0]) ||
                                  t->no.replicas != no.replicas));
        if (t->nats)
            rt_bus_nats_free(&t->no);
        t->nats = on_nats == 1;
        if (t->nats)
            t->no = no;
        if (moved && (t->recv || t->deliv))   /* (reopened where the rules now say) */
            t->open_retention_ms = -1;
    }
    atomic_store(&T.on, any);
}

static void report(void *arg, const char *msg)
{
    (void)arg;
    char esc[700];
    ebd_log(EBD_WARN, "msg=\"trace log: %s\"", ebd_log_text(msg, esc, sizeof esc));
}

/* Opens (creating it) trace log `which` of bus t for appending. */
static store *open_trace_log(const tbus *t, const char *which)
{
    if (t->nats) {
        store_options o = { .retention_ns = (uint64_t)t->retention_ms * 1000000 };
        store *s = NULL;
        char err[600];
        if (trace_nats_open(&t->no, which, &o, &s, err, sizeof err) != STORE_OK) {
            char esc[700];
            if (!t->failures)             /* (once a streak: tried again every 5 s) */
                ebd_log(EBD_ERROR, "msg=\"cannot open a trace stream: its records are lost until "
                        "it opens\" bus=%s error=\"%s\"", t->name, ebd_log_text(err, esc, sizeof esc));
            return NULL;
        }
        return s;
    }
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/trace", W.d->data_dir);
    mkdir(dir, 0755);
    snprintf(dir, sizeof dir, "%s/trace/%s", W.d->data_dir, t->name);
    mkdir(dir, 0755);
    snprintf(dir, sizeof dir, "%s/trace/%s/%s", W.d->data_dir, t->name, which);
    store_options o = { .fsync = STORE_FSYNC_NEVER, .segment_bytes = 8u << 20,
                        .retention_ns = (uint64_t)t->retention_ms * 1000000, .report = report };
    store *s = NULL;
    char err[600];
    if (log_open(dir, &o, &s, err, sizeof err) != STORE_OK) {
        char esc[700];
        ebd_log(EBD_ERROR, "msg=\"cannot open a trace log: its records are lost\" bus=%s "
                "error=\"%s\"", t->name, ebd_log_text(err, esc, sizeof esc));
        return NULL;
    }
    return s;
}

/* Appends block k of bus t to *s: header (TRACE_BLOCK_HEADER bytes) u8 version 1, u64 lo, u64
 * hi, u64 mhi, then the records. */
static void write_block(tbus *t, store **s, const char *which, block *k)
{
    if (!k->b.n)
        return;
    if (t->open_retention_ms != t->retention_ms) {       /* reopened: a reload changed it */
        store_close(t->recv);
        store_close(t->deliv);
        t->recv = t->deliv = NULL;
        t->open_retention_ms = t->retention_ms;
    }
    if (!*s && (!t->nats || wall_ms() >= t->retry_ms)) {
        *s = open_trace_log(t, which);
        if (t->nats && !*s) {
            t->retry_ms = wall_ms() + 5000;   /* (NATS away: every 5 s, not every flush) */
            t->failures++;
        } else if (*s && t->failures) {
            ebd_log(EBD_INFO, "msg=\"trace stream open again\" bus=%s after_failures=%u", t->name,
                    t->failures);
            t->failures = 0;
        }
    }
    if (*s && !k->b.oom) {
        unsigned char *h = (unsigned char *)k->b.v;
        h[0] = 1;
        for (unsigned i = 0; i < 8; i++) {
            h[1 + i] = (unsigned char)(k->lo >> (8 * i));
            h[9 + i] = (unsigned char)(k->hi >> (8 * i));
            h[17 + i] = (unsigned char)(k->mhi >> (8 * i));
        }
        store_entry e = { k->b.v, (uint32_t)k->b.n, 0, NULL };
        if (store_append(*s, &e, 1, NULL) != STORE_OK)
            ebd_log(EBD_ERROR, "msg=\"a trace block is lost\" bus=%s error=\"%s\"", t->name,
                    store_error(*s));
    }
    k->b.n = 0;
    k->b.oom = false;
}

/* Adds record rec[0..n), of the offsets [off, off + span), to block k. */
static void block_add(block *k, const unsigned char *rec, size_t n, uint64_t off, uint32_t span)
{
    if (!k->b.n) {
        static const char zero[TRACE_BLOCK_HEADER];
        sb_put(&k->b, zero, sizeof zero);
        k->lo = UINT64_MAX;
        k->hi = k->mhi = 0;
    }
    sb_put(&k->b, (const char *)rec, n);
    uint64_t last = off + (span ? span : 1) - 1;
    if (off < k->lo)
        k->lo = off;
    if (last > k->hi)
        k->hi = last;
    if ((rec[0] == TR_MATCHED || rec[0] == TR_MATCHED_SPAN) && last + 1 > k->mhi)
        k->mhi = last + 1;
}

#define BLOCK_MAX ((size_t)8 << 20)
/* On NATS JetStream a block is one message: under the server's max_payload (1 MiB by default),
 * with room for the record that takes it past this. */
#define NATS_BLOCK_MAX ((size_t)256 << 10)

/* Adds what one thread's hooks left in buf[0..n) to the buses' blocks. */
static void flush_buffer(const unsigned char *buf, size_t n)
{
    trace_reader r = { buf, n, 0, false };
    tbus *last = NULL;
    while (r.at < n) {
        size_t len = trace_get_u(&r, 4);
        if (r.bad || n - r.at < len)
            break;
        size_t end = r.at + len, bn = buf[r.at];
        if (!last || strlen(last->name) != bn || memcmp(last->name, buf + r.at + 1, bn))
            last = tbus_find((const char *)buf + r.at + 1, bn);
        tbus *t = last;
        size_t at = r.at + 1 + bn;
        r.at = end;
        if (!t || !t->on || end - at < 13)
            continue;
        /* (every kind the hooks write starts with u8 kind, u32 length, u64 offset) */
        trace_reader h = { buf, end, at + 5, false };
        uint64_t off = trace_get_u(&h, 8);
        if (buf[at] == TR_MATCHED_RAW) {
            uint32_t span;
            if (end - at < RAW_RULES)
                continue;
            memcpy(&span, buf + at + RAW_SPAN, 4);
            W.conv.n = 0;
            matched_names(buf + at, end - at, &W.conv);
            if (W.conv.n && !W.conv.oom)
                block_add(&t->bdeliv, (const unsigned char *)W.conv.v, W.conv.n, off, span);
        } else if (buf[at] == TR_RECEIVED) {
            block_add(&t->brecv, buf + at, end - at, off, 1);
            if (t->brecv.b.n > (t->nats ? NATS_BLOCK_MAX : BLOCK_MAX))
                write_block(t, &t->recv, "received", &t->brecv);
        } else {
            uint32_t span = buf[at] == TR_DELIVERED_SPAN ? (uint32_t)trace_get_u(&h, 4) : 1;
            block_add(&t->bdeliv, buf + at, end - at, off, span);
            if (t->bdeliv.b.n > (t->nats ? NATS_BLOCK_MAX : BLOCK_MAX))
                write_block(t, &t->deliv, "delivery", &t->bdeliv);
        }
    }
}

/* Writes the blocks of this flush, one per bus and log (and a gap record when hooks dropped). */
static void write_all(void)
{
    uint64_t dropped = atomic_load(&T.dropped);
    for (size_t i = 0; i < W.nbuses; i++) {
        tbus *t = &W.buses[i];
        if (dropped != W.gaps_written && t->on) {
            sbuf g = { 0 };
            trace_rec gr = { .kind = TR_GAP, .dropped = dropped - W.gaps_written,
                             .time_ms = wall_ms() };
            trace_encode(&g, &gr);
            block_add(&t->bdeliv, (const unsigned char *)g.v, g.n, 0, 1);
            sb_free(&g);
        }
        write_block(t, &t->recv, "received", &t->brecv);
        write_block(t, &t->deliv, "delivery", &t->bdeliv);
    }
    if (dropped != W.gaps_written)
        ebd_log(EBD_WARN, "msg=\"trace records dropped: the trace thread fell behind\" "
                "dropped=%" PRIu64, dropped - W.gaps_written);
    W.gaps_written = dropped;
}

/* Takes what the hooks wrote so far, thread by thread (each buffer swapped for its other one),
 * writes it, and frees the buffers of threads that have ended. */
static void flush_all(void)
{
    pthread_rwlock_rdlock(&W.d->lock);
    if (W.d->rules && W.d->rules != W.seen) {
        read_settings(W.d->rules);
        W.seen = W.d->rules;
    }
    pthread_rwlock_unlock(&W.d->lock);
    pthread_mutex_lock(&T.mu);
    for (tbuf **pt = &T.all; *pt;) {
        tbuf *t = *pt;
        bool dead = atomic_load(&t->dead);
        /* Double-buffered: the thread writes on in its other buffer, of the size it needed
         * before, while this one is read (a buffer handed from thread to thread grew again
         * each time, copying and faulting pages in). */
        pthread_mutex_lock(&t->mu);
        sbuf full = t->b;
        t->b = t->back;
        t->tail = 0;
        pthread_mutex_unlock(&t->mu);
        flush_buffer((const unsigned char *)full.v, full.n);
        full.n = 0;
        full.oom = false;
        if (full.cap > ((size_t)32 << 20))      /* a burst's buffer is not kept */
            sb_free(&full);
        t->back = full;
        if (dead) {
            *pt = t->next;
            sb_free(&t->b);
            sb_free(&t->back);
            pthread_mutex_destroy(&t->mu);
            free(t);
        } else {
            pt = &t->next;
        }
    }
    pthread_mutex_unlock(&T.mu);
    write_all();
}

static void *trace_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ebd-trace");   /* (top -H, ps -L) */
    (void)arg;
    errno = 0;
    int nice_now = getpriority(PRIO_PROCESS, 0);
    if (errno == 0)
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice_now + 19);
    pthread_mutex_lock(&W.mu);
    while (!W.stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += TRACE_FLUSH_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&W.cv, &W.mu, &ts);
        pthread_mutex_unlock(&W.mu);
        flush_all();
        pthread_mutex_lock(&W.mu);
        W.cycles++;
        pthread_cond_broadcast(&W.done);
    }
    pthread_mutex_unlock(&W.mu);
    flush_all();
    pthread_mutex_lock(&W.mu);
    W.cycles++;
    pthread_cond_broadcast(&W.done);
    pthread_mutex_unlock(&W.mu);
    return NULL;
}

void trace_start(ebd *d)
{
    W.d = d;
    pthread_rwlock_rdlock(&d->lock);
    read_settings(d->rules);
    W.seen = d->rules;
    pthread_rwlock_unlock(&d->lock);
    W.stop = false;
    W.started = pthread_create(&W.th, NULL, trace_main, NULL) == 0;
    if (!W.started) {
        atomic_store(&T.on, false);
        ebd_log(EBD_ERROR, "msg=\"cannot start the trace thread: no traces\"");
    }
}

void trace_retire(void)
{
    pthread_mutex_lock(&W.mu);
    uint64_t until = W.cycles + 2;        /* a whole flush that began after this call */
    while (W.started && !W.stop && W.cycles < until) {
        pthread_cond_signal(&W.cv);
        pthread_cond_wait(&W.done, &W.mu);
    }
    pthread_mutex_unlock(&W.mu);
}

void trace_stop(void)
{
    if (!W.started)
        return;
    pthread_mutex_lock(&W.mu);
    W.stop = true;
    pthread_cond_signal(&W.cv);
    pthread_mutex_unlock(&W.mu);
    pthread_join(W.th, NULL);
    W.started = false;
    atomic_store(&T.on, false);
    for (size_t i = 0; i < W.nbuses; i++) {
        store_close(W.buses[i].recv);
        store_close(W.buses[i].deliv);
        sb_free(&W.buses[i].brecv.b);
        sb_free(&W.buses[i].bdeliv.b);
        free(W.buses[i].name);
        if (W.buses[i].nats)
            rt_bus_nats_free(&W.buses[i].no);
    }
    free(W.buses);
    W.buses = NULL;
    W.nbuses = 0;
    pthread_mutex_lock(&RC.mu);
    for (size_t i = 0; i < RC.n; i++) {
        store_close(RC.v[i].s);
        free(RC.v[i].key);
    }
    free(RC.v);
    RC.v = NULL;
    RC.n = 0;
    pthread_mutex_unlock(&RC.mu);
    sb_free(&W.conv);
}

/* ---- the daemon's readers of trace streams (a bus on NATS JetStream) ---------------------------- */

store *trace_nats_reader(const store_nats_options *no, const char *which, bool *failed)
{
    char key[600];
    snprintf(key, sizeof key, "%s|%s|%s", no->stream, which, no->nurls ? no->urls[0] : "");
    store *s = NULL;
    pthread_mutex_lock(&RC.mu);
    for (size_t i = 0; i < RC.n && !s; i++)
        if (!strcmp(RC.v[i].key, key))
            s = RC.v[i].s;
    if (!s) {
        /* (kept until trace_stop, even when a reload moves the bus: a look-up may be using it) */
        store_options o = { .read_only = true };
        char err[600];
        store_status st = trace_nats_open(no, which, &o, &s, err, sizeof err);
        struct rcache *v = st == STORE_OK ? realloc(RC.v, (RC.n + 1) * sizeof *v) : NULL;
        char *k = v ? strdup(key) : NULL;
        if (v)
            RC.v = v;
        if (k)
            RC.v[RC.n++] = (struct rcache){ k, s };
        else {
            store_close(s);
            s = NULL;
        }
        if (st != STORE_OK && st != STORE_NOTFOUND)
            *failed = true;
    }
    pthread_mutex_unlock(&RC.mu);
    return s;
}

/* ---- the endpoints ------------------------------------------------------------------------------ */

/* GET /v1/buses/{bus}/events/{id}/trace[?source=&explain=1] and
 * GET /v1/buses/{bus}/offsets/{n}/trace[?explain=1]. */
static enum MHD_Result serve(const center_req *r, bool by_offset)
{
    ebd *d = r->d;
    trace_query q = { .data_dir = d->data_dir, .bus = r->arg[0] };
    if (by_offset) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(r->arg[1], &end, 10);
        if (*end || errno || r->arg[1][0] == '-')
            return (enum MHD_Result)ebd_send_error(r->c, 400, "an offset is a whole number", "offset");
        q.by_offset = true;
        q.offset = n;
    } else {
        q.id = r->arg[1];
        q.source = center_query(r, "source");
    }
    const char *ex = center_query(r, "explain");
    bool want_explain = ex && (!strcmp(ex, "1") || !strcmp(ex, "true"));
    sbuf b = { 0 };
    char err[600] = "";
    unsigned st;
    /* By id, the long part (reading the received trace log for the id's hash) goes without
     * d->lock: it reads the trace log by its path.  Reading the candidates' events and the
     * answer take the lock (the bus's log and the rules stay open under it), a bounded work. */
    trace_cands *cands = NULL;
    store_nats_options no;
    bool on_nats = false;
    pthread_rwlock_rdlock(&d->lock);
    ebd_bus *known = ebd_find_bus(d, q.bus, strlen(q.bus));
    const vm_program *p = d->rules ? d->rules->p : NULL;
    for (uint32_t i = 0; known && p && i < p->nbuses; i++)
        if (p->buses[i].name.len == strlen(q.bus) &&
            !memcmp(vm_s(p, p->buses[i].name), q.bus, p->buses[i].name.len))
            on_nats = rt_bus_nats_options(p, i, &no, err, sizeof err) == 1;
    pthread_rwlock_unlock(&d->lock);
    err[0] = 0;
    if (on_nats) {                    /* (connected once, outside the lock) */
        q.shared = true;
        q.nats_recv = trace_nats_reader(&no, "received", &q.recv_failed);
        q.nats_deliv = trace_nats_reader(&no, "delivery", &q.deliv_failed);
    }
    if (known && !by_offset) {        /* (a name that is no bus never makes a path) */
        if (!(cands = malloc(sizeof *cands))) {
            if (on_nats)
                rt_bus_nats_free(&no);
            return (enum MHD_Result)ebd_send_error(r->c, 503, "out of memory", NULL);
        }
        trace_id_candidates(&q, cands);
        q.cands = cands;
    }
    pthread_rwlock_rdlock(&d->lock);
    ebd_bus *bus = ebd_find_bus(d, q.bus, strlen(q.bus));
    if (!bus || !bus->s) {
        pthread_rwlock_unlock(&d->lock);
        free(cands);
        if (on_nats)
            rt_bus_nats_free(&no);
        snprintf(err, sizeof err, "no bus '%.200s'", q.bus);
        return (enum MHD_Result)ebd_send_error(r->c, 404, err, "bus");
    }
    q.log = bus->s;
    q.explain = want_explain && d->rules ? d->rules->p : NULL;
    st = trace_lookup(&q, &b, err, sizeof err);
    pthread_rwlock_unlock(&d->lock);
    free(cands);
    if (on_nats)
        rt_bus_nats_free(&no);
    enum MHD_Result res = st == 200 ? (enum MHD_Result)ebd_send_json(r->c, 200, &b)
                                    : (enum MHD_Result)ebd_send_error(r->c, st, err, NULL);
    sb_free(&b);
    return res;
}

enum MHD_Result trace_serve_id(const center_req *r)
{
    return serve(r, false);
}

enum MHD_Result trace_serve_offset(const center_req *r)
{
    return serve(r, true);
}

