/*
 * trace_read.c — the trace's records (their encoding) and reading them back: the look-up behind
 * the trace endpoints and `ebc trace` (docs/trace.md), and the timeline `ebc trace` prints.
 * Needs nothing of the daemon: tools link it alone, and read the logs read-only while ebd runs.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "trace.h"

/* ---- little-endian fields ------------------------------------------------------------------- */

void trace_put_u(sbuf *b, uint64_t v, unsigned bytes)
{
    unsigned char x[8];
    for (unsigned i = 0; i < bytes; i++)
        x[i] = (unsigned char)(v >> (8 * i));
    sb_put(b, (const char *)x, bytes);
}

uint64_t trace_get_u(trace_reader *r, unsigned bytes)
{
    if (r->bad || r->n - r->at < bytes) {
        r->bad = true;
        return 0;
    }
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v |= (uint64_t)r->s[r->at + i] << (8 * i);
    r->at += bytes;
    return v;
}

static const char *get_str(trace_reader *r)
{
    size_t n = trace_get_u(r, 2);
    if (r->bad || r->n - r->at < n + 1 || r->s[r->at + n] != 0) {
        r->bad = true;
        return "";
    }
    const char *s = (const char *)r->s + r->at;
    r->at += n + 1;
    return s;
}

/* ---- records ---------------------------------------------------------------------------------
 * A record: u8 kind, u32 length of what follows, then by kind (integers little-endian):
 *   received  u64 first, u32 count, i64 time_ms, u8 alen, addr[alen], u16 port, count x u32 hash
 *   matched   u64 off, u32 count, count x (str rule, str target)
 *   matched span   u64 off, u32 span, u32 count, count x (str rule, str target)
 *   delivered span u64 off, u32 span, i64 time_ms, u32 attempt, i32 status, str rule,
 *             str target, span x (varint zigzag time_ms - the span's time_ms, varint
 *             latency_ms, varint payload)
 *   attempt   u64 off, i64 time_ms, u32 attempt, u8 flags (1: to the dead letter; 2: delivered,
 *             the delivery is over), i32 status, u32 latency_ms,
 *             u64 payload, str rule, str target, str to, str error
 *   outcome   u64 off, i64 time_ms, u8 state, u32 attempts, str rule, str target, str where,
 *             str why
 *   gap       u64 dropped, i64 time_ms
 * (str: u16 length, bytes, NUL.)  A reader skips kinds it does not know by their length. */

static inline unsigned char *w_u(unsigned char *p, uint64_t v, unsigned bytes)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(p, &v, bytes);             /* (one store: the hooks' cost is mostly this) */
#else
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
#endif
    return p + bytes;
}

static size_t str_len(const char *s)
{
    return s ? strnlen(s, 65535) : 0;
}

static unsigned char *w_str(unsigned char *p, const char *s, size_t n)
{
    p = w_u(p, n, 2);
    if (n)
        memcpy(p, s, n);
    p[n] = 0;
    return p + n + 1;
}

/* The strings an attempt and an outcome end with: rule, target, to (where), error (why). */
static unsigned char *w_delivery(unsigned char *p, const trace_rec *r)
{
    p = w_str(p, r->rule, str_len(r->rule));
    p = w_str(p, r->target, str_len(r->target));
    p = w_str(p, r->to, str_len(r->to));
    return w_str(p, r->error, str_len(r->error));
}

static void get_delivery(trace_reader *r, trace_rec *out)
{
    out->rule = get_str(r);
    out->target = get_str(r);
    out->to = get_str(r);
    out->error = get_str(r);
}

/* LEB128 */
static unsigned char *w_var(unsigned char *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *p++ = (unsigned char)v;
    return p;
}

static uint64_t get_var(trace_reader *r)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (r->bad || r->at >= r->n) {
            r->bad = true;
            return 0;
        }
        unsigned char c = r->s[r->at++];
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80))
            return v;
    }
    r->bad = true;
    return 0;
}

size_t trace_encoded_max(const trace_rec *r)
{
    size_t n = 5 + 64 + 4 * (size_t)r->count;
    if (r->kind == TR_MATCHED) {
        const char *s = r->names;
        for (uint32_t i = 0; i < 2 * r->count; i++) {
            size_t k = strlen(s);
            n += (k > 65535 ? 65535 : k) + 3;
            s += k + 1;
        }
    } else if (r->kind == TR_ATTEMPT || r->kind == TR_OUTCOME) {
        n += str_len(r->rule) + str_len(r->target) + str_len(r->to) + str_len(r->error) + 12;
    }
    return n;
}

unsigned char *trace_encode_to(unsigned char *p, const trace_rec *r)
{
    unsigned char *len = p + 1, *q = p + 5;
    *p = (unsigned char)r->kind;
    switch (r->kind) {
    case TR_RECEIVED:
        q = w_u(q, r->off, 8);
        q = w_u(q, r->count, 4);
        q = w_u(q, (uint64_t)r->time_ms, 8);
        q = w_u(q, r->alen, 1);
        memcpy(q, r->addr, r->alen);
        q = w_u(q + r->alen, r->port, 2);
        memcpy(q, r->hashes, 4 * (size_t)r->count);
        q += 4 * (size_t)r->count;
        break;
    case TR_MATCHED: {
        q = w_u(q, r->off, 8);
        if (r->span > 1) {
            *p = TR_MATCHED_SPAN;
            q = w_u(q, r->span, 4);
        }
        q = w_u(q, r->count, 4);
        const char *s = r->names;
        for (uint32_t i = 0; i < 2 * r->count; i++) {
            size_t k = strlen(s);
            q = w_str(q, s, k > 65535 ? 65535 : k);
            s += k + 1;
        }
        break;
    }
    case TR_ATTEMPT:
        q = w_u(q, r->off, 8);
        q = w_u(q, (uint64_t)r->time_ms, 8);
        q = w_u(q, r->attempt, 4);
        q = w_u(q, (r->dl ? 1u : 0u) | (r->state == TRACE_DELIVERED ? 2u : 0u), 1);
        q = w_u(q, (uint32_t)(int32_t)r->status, 4);
        q = w_u(q, r->latency_ms, 4);
        q = w_u(q, r->payload, 8);
        q = w_delivery(q, r);
        break;
    case TR_OUTCOME:
        q = w_u(q, r->off, 8);
        q = w_u(q, (uint64_t)r->time_ms, 8);
        q = w_u(q, r->state, 1);
        q = w_u(q, r->attempt, 4);
        q = w_delivery(q, r);
        break;
    case TR_GAP:
        q = w_u(q, r->dropped, 8);
        q = w_u(q, (uint64_t)r->time_ms, 8);
        break;
    }
    w_u(len, (uint64_t)(q - p - 5), 4);
    return q;
}

unsigned char *trace_span_begin(unsigned char *p, const trace_rec *r)
{
    unsigned char *q = p + 5;
    *p = TR_DELIVERED_SPAN;
    q = w_u(q, r->off, 8);
    q = w_u(q, 0, 4);
    q = w_u(q, (uint64_t)r->time_ms, 8);
    q = w_u(q, r->attempt, 4);
    q = w_u(q, (uint32_t)(int32_t)r->status, 4);
    q = w_str(q, r->rule, str_len(r->rule));
    q = w_str(q, r->target, str_len(r->target));
    w_u(p + 1, (uint64_t)(q - p - 5), 4);
    return q;
}

size_t trace_span_add(unsigned char *rec, unsigned char *end, int64_t time_ms, uint32_t latency_ms,
                      uint64_t payload)
{
    trace_reader h = { rec, 25, 1, false };
    uint64_t len = trace_get_u(&h, 4);
    h.at = 13;
    uint64_t span = trace_get_u(&h, 4);
    int64_t dt = time_ms - (int64_t)trace_get_u(&h, 8);
    unsigned char *q = w_var(end, dt < 0 ? ((uint64_t)-dt << 1) - 1 : (uint64_t)dt << 1);
    q = w_var(q, latency_ms);
    q = w_var(q, payload);
    size_t added = (size_t)(q - end);
    w_u(rec + 1, len + added, 4);
    w_u(rec + 13, span + 1, 4);
    return added;
}

/* The k-th event of a delivered span: its time, latency and payload into r (whose time_ms is
 * the span's, which the events' times are kept against). */
static bool span_event(trace_rec *r, uint32_t k)
{
    trace_reader v = { r->each, r->neach, 0, false };
    int64_t t0 = r->time_ms;
    for (uint32_t i = 0; i <= k && !v.bad; i++) {
        uint64_t z = get_var(&v);
        r->time_ms = t0 + (z & 1 ? -(int64_t)((z + 1) >> 1) : (int64_t)(z >> 1));
        r->latency_ms = (uint32_t)get_var(&v);
        r->payload = get_var(&v);
    }
    return !v.bad;
}

void trace_narrow(trace_rec *r, uint64_t off)
{
    uint32_t n = r->span ? r->span : 1;
    if (off >= r->off && off - r->off < n) {
        if (r->each)
            span_event(r, (uint32_t)(off - r->off));
        r->off = off;
        r->span = 1;
        r->each = NULL;
        r->neach = 0;
    } else if (off > r->off) {
        r->off += n - 1;                        /* (ends before off) */
    }
}

void trace_encode(sbuf *b, const trace_rec *r)
{
    size_t need = trace_encoded_max(r);
    if (b->oom)
        return;
    if (b->cap - b->n < need) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < need)
            cap *= 2;
        char *v = realloc(b->v, cap);
        if (!v) {
            b->oom = true;
            return;
        }
        b->v = v;
        b->cap = cap;
    }
    unsigned char *p = (unsigned char *)b->v + b->n;
    b->n += (size_t)(trace_encode_to(p, r) - p);
}

bool trace_decode(const unsigned char *s, size_t n, size_t *at, trace_rec *out)
{
    trace_reader h = { s, n, *at, false };
    int kind = (int)trace_get_u(&h, 1);
    size_t len = trace_get_u(&h, 4);
    if (h.bad || n - h.at < len)
        return false;
    trace_reader r = { s, h.at + len, h.at, false };
    memset(out, 0, sizeof *out);
    out->kind = kind;
    switch (kind) {
    case TR_RECEIVED:
        out->off = trace_get_u(&r, 8);
        out->count = (uint32_t)trace_get_u(&r, 4);
        out->time_ms = (int64_t)trace_get_u(&r, 8);
        out->alen = (unsigned)trace_get_u(&r, 1);
        if (out->alen > 16 || r.n - r.at < out->alen)
            return false;
        memcpy(out->addr, s + r.at, out->alen);
        r.at += out->alen;
        out->port = (unsigned)trace_get_u(&r, 2);
        if (r.bad || (r.n - r.at) / 4 < out->count)
            return false;
        out->hashes = s + r.at;
        r.at += 4 * (size_t)out->count;
        break;
    case TR_MATCHED:
    case TR_MATCHED_SPAN:
        out->kind = TR_MATCHED;
        out->off = trace_get_u(&r, 8);
        out->span = kind == TR_MATCHED_SPAN ? (uint32_t)trace_get_u(&r, 4) : 1;
        out->count = (uint32_t)trace_get_u(&r, 4);
        out->names = (const char *)s + r.at + 2;
        for (uint32_t i = 0; i < 2 * out->count && !r.bad; i++)
            get_str(&r);
        out->nnames = r.at;
        break;
    case TR_ATTEMPT:
        out->off = trace_get_u(&r, 8);
        out->time_ms = (int64_t)trace_get_u(&r, 8);
        out->attempt = (unsigned)trace_get_u(&r, 4);
        uint64_t flags = trace_get_u(&r, 1);
        out->dl = flags & 1;
        out->state = flags & 2 ? TRACE_DELIVERED : 0;
        out->status = (long)(int32_t)(uint32_t)trace_get_u(&r, 4);
        out->latency_ms = (uint32_t)trace_get_u(&r, 4);
        out->payload = trace_get_u(&r, 8);
        get_delivery(&r, out);
        break;
    case TR_DELIVERED_SPAN:
        out->kind = TR_ATTEMPT;
        out->off = trace_get_u(&r, 8);
        out->span = (uint32_t)trace_get_u(&r, 4);
        out->time_ms = (int64_t)trace_get_u(&r, 8);
        out->attempt = (unsigned)trace_get_u(&r, 4);
        out->status = (long)(int32_t)(uint32_t)trace_get_u(&r, 4);
        out->state = TRACE_DELIVERED;
        out->rule = get_str(&r);
        out->target = get_str(&r);
        out->to = out->error = "";
        out->each = s + r.at;
        out->neach = r.n - r.at;
        if (r.bad || out->span == 0)
            return false;
        {
            trace_reader v = { out->each, out->neach, 0, false };      /* every event is there */
            for (uint32_t i = 0; i < 3 * out->span && !v.bad; i++)
                get_var(&v);
            if (v.bad || v.at != v.n)
                return false;
        }
        r.at = r.n;
        break;
    case TR_OUTCOME:
        out->off = trace_get_u(&r, 8);
        out->time_ms = (int64_t)trace_get_u(&r, 8);
        out->state = (unsigned)trace_get_u(&r, 1);
        out->attempt = (unsigned)trace_get_u(&r, 4);
        get_delivery(&r, out);
        break;
    case TR_GAP:
        out->dropped = trace_get_u(&r, 8);
        out->time_ms = (int64_t)trace_get_u(&r, 8);
        break;
    default:
        break;                        /* a kind this trace_reader does not know: skipped */
    }
    if (r.bad)
        return false;
    *at = h.at + len;
    return true;
}

/* The names of a decoded matched record, pair after pair: *cursor from r->names on. */
static void matched_pair(const char **cursor, const char **rule, const char **target)
{
    *rule = *cursor;
    *target = *rule + strlen(*rule) + 3;   /* past its NUL and the next string's length */
    *cursor = *target + strlen(*target) + 3;
}

uint32_t trace_id_hash(const char *id, size_t n)
{
    uint32_t h = 2166136261u;                      /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)id[i]) * 16777619u;
    return h;
}

/* Reports of a log opened to read: none (a look-up says what it found). */
static void quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

/* ---- the look-up ------------------------------------------------------------------------------ */

/* One (rule, target) delivery of the event, as its records tell it. */
typedef struct {
    char *rule, *target;
    bool matched;
    int64_t payload;              /* the first attempt's payload size; -1: none yet */
    unsigned state;               /* TRACE_*, 0: not over */
    char *where, *why;
    unsigned attempts;
    bool tried;
    bool dl_done;                 /* its dead letter was handed over */
} tpair;

typedef struct {
    tpair *v;
    size_t n;
    sbuf attempts;                /* JSON objects, comma-separated */
    bool incomplete;
} tfound;

static tpair *pair_of(tfound *f, const char *rule, const char *target)
{
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->v[i].rule, rule) && !strcmp(f->v[i].target, target))
            return &f->v[i];
    tpair *v = realloc(f->v, (f->n + 1) * sizeof *v);
    if (!v)
        return NULL;
    f->v = v;
    tpair *p = &v[f->n];
    memset(p, 0, sizeof *p);
    p->payload = -1;
    p->rule = strdup(rule);
    p->target = strdup(target);
    if (!p->rule || !p->target) {
        free(p->rule);
        free(p->target);
        return NULL;
    }
    f->n++;
    return p;
}

static void found_free(tfound *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->v[i].rule);
        free(f->v[i].target);
        free(f->v[i].where);
        free(f->v[i].why);
    }
    free(f->v);
    sb_free(&f->attempts);
}

static void json_str(sbuf *b, const char *s)
{
    sb_json_string(b, s, strlen(s));
}

store_status trace_nats_open(const store_nats_options *no, const char *which, const store_options *o,
                             store **out, char *err, size_t cap)
{
    char stream[300];
    size_t n = (size_t)snprintf(stream, sizeof stream, "%s_TRACE_", no->stream);
    for (const char *w = which; *w && n + 1 < sizeof stream; w++)
        stream[n++] = (char)(*w >= 'a' && *w <= 'z' ? *w - 32 : *w);
    stream[n] = 0;
    store_nats_options tn = *no;
    tn.stream = stream;
    return nats_open(&tn, o, out, err, cap);
}

/* Opens trace log `which` of the bus read-only; NULL when there is none. */
static store *open_read(const trace_query *q, const char *which, bool *failed)
{
    if (q->shared) {                      /* (the daemon's: not closed here, close_read) */
        bool recv = !strcmp(which, "received");
        if (recv ? q->recv_failed : q->deliv_failed)
            *failed = true;               /* (the answer says it is incomplete) */
        return recv ? q->nats_recv : q->nats_deliv;
    }
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/trace/%s/%s", q->data_dir, q->bus, which);
    struct stat st;
    if (stat(dir, &st) != 0)
        return NULL;
    store_options o = { .read_only = true, .report = quiet };
    store *s = NULL;
    char err[600];
    if (log_open(dir, &o, &s, err, sizeof err) != STORE_OK)
        return NULL;
    return s;
}

static void close_read(const trace_query *q, store *s)
{
    if (!q->shared)
        store_close(s);
}

/* Calls fn for each record of each block of log s from time t0_ns on (from the start when t0_ns
 * is 0), block by block, until fn returns false or the log ends.  A block whose offsets
 * [lo, hi] leave out `off` is skipped unless all is set. */
typedef bool (*rec_fn)(void *arg, const trace_rec *r, int64_t block_ns);

static void scan(store *s, int64_t t0_ns, uint64_t off, bool all, rec_fn fn, void *arg)
{
    store_cursor *c = NULL;
    if ((t0_ns ? store_cursor_open_at(s, t0_ns, &c) : store_cursor_open(s, 0, &c)) != STORE_OK)
        return;
    for (;;) {
        store_record rec;
        store_status st = store_cursor_next(c, &rec, 0);
        if (st == STORE_BEHIND || st == STORE_CORRUPT) {
            uint64_t lost;
            if (st == STORE_CORRUPT ? store_cursor_skip(c, &lost) != STORE_OK
                                    : store_cursor_seek(c, store_cursor_offset(c) + 1) != STORE_OK)
                break;
            continue;
        }
        if (st != STORE_OK)
            break;
        if (rec.len < TRACE_BLOCK_HEADER || rec.data[0] != 1)
            continue;
        trace_reader h = { rec.data, rec.len, 1, false };
        uint64_t lo = trace_get_u(&h, 8), hi = trace_get_u(&h, 8), mhi = trace_get_u(&h, 8);
        bool go = true;
        if (all || (off >= lo && off <= hi)) {
            size_t at = TRACE_BLOCK_HEADER;
            trace_rec r;
            while (go && at < rec.len && trace_decode(rec.data, rec.len, &at, &r)) {
                trace_narrow(&r, off);
                go = fn(arg, &r, rec.time_ns);
            }
        } else if (mhi > off + 1) {
            /* not read, but it holds a matched record of a later offset: said as such */
            trace_rec later = { .kind = TR_MATCHED, .off = mhi - 1 };
            go = fn(arg, &later, rec.time_ns);
        } else {
            go = fn(arg, NULL, rec.time_ns);          /* (the time passes all the same) */
        }
        if (!go)
            break;
    }
    store_cursor_close(c);
}

/* ---- by id: the received records' hashes -------------------------------------------------- */

typedef struct {
    uint32_t hash;
    uint64_t offs[TRACE_MAX_CANDIDATES];      /* this window's matches (the newest when full) */
    size_t n;
    bool full;                                /* more matched than offs holds */
} id_scan;

static bool on_received_id(void *arg, const trace_rec *r, int64_t block_ns)
{
    (void)block_ns;
    id_scan *s = arg;
    if (!r || r->kind != TR_RECEIVED)
        return true;
    for (uint32_t k = 0; k < r->count; k++) {
        const unsigned char *h = r->hashes + 4 * (size_t)k;
        uint32_t v = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
        if (v != s->hash)
            continue;
        if (s->n < TRACE_MAX_CANDIDATES) {
            s->offs[s->n++] = r->off + k;
            continue;
        }
        s->full = true;           /* full: the newest are kept (the oldest one gives way) */
        size_t min = 0;
        for (size_t i = 1; i < s->n; i++)
            if (s->offs[i] < s->offs[min])
                min = i;
        if (s->offs[min] < r->off + k)
            s->offs[min] = r->off + k;
    }
    return true;
}

static int cmp_u64_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x > y ? -1 : x < y;
}

/* Calls fn for each record of the blocks at log offsets [lo, hi) of s; adds the blocks' bytes to
 * *bytes.  False when the log cannot be read there. */
static bool scan_range(store *s, uint64_t lo, uint64_t hi, rec_fn fn, void *arg, uint64_t *bytes)
{
    store_cursor *c = NULL;
    if (store_cursor_open(s, lo, &c) != STORE_OK)
        return false;
    while (store_cursor_offset(c) < hi) {
        store_record rec;
        store_status st = store_cursor_next(c, &rec, 0);
        if (st == STORE_BEHIND || st == STORE_CORRUPT) {
            uint64_t lost;
            if (st == STORE_CORRUPT ? store_cursor_skip(c, &lost) != STORE_OK
                                    : store_cursor_seek(c, store_cursor_offset(c) + 1) != STORE_OK)
                break;
            continue;
        }
        if (st != STORE_OK || rec.offset >= hi)
            break;
        *bytes += rec.len;
        if (rec.len < TRACE_BLOCK_HEADER || rec.data[0] != 1)
            continue;
        size_t at = TRACE_BLOCK_HEADER;
        trace_rec r;
        while (at < rec.len && trace_decode(rec.data, rec.len, &at, &r))
            fn(arg, &r, rec.time_ns);
    }
    store_cursor_close(c);
    return true;
}

#define ID_WINDOW 64              /* blocks of the received log read at a time, newest first */

void trace_id_candidates(const trace_query *q, trace_cands *c)
{
    c->n = 0;
    c->truncated = false;
    bool failed = false;
    store *s = open_read(q, "received", &failed);
    if (!s) {
        c->truncated = failed;            /* (the stream could not be read: said as truncated) */
        return;
    }
    uint64_t first, next, bytes = 0;
    store_bounds(s, &first, &next);
    id_scan *is = malloc(sizeof *is);
    for (uint64_t hi = next; is && hi > first;) {
        uint64_t lo = hi - first > ID_WINDOW ? hi - ID_WINDOW : first;
        is->hash = trace_id_hash(q->id, strlen(q->id));
        is->n = 0;
        is->full = false;
        if (!scan_range(s, lo, hi, on_received_id, is, &bytes))
            break;
        /* (threads' records of one flush are not in the order of the offsets) */
        qsort(is->offs, is->n, sizeof *is->offs, cmp_u64_desc);
        for (size_t k = 0; k < is->n && c->n < TRACE_MAX_CANDIDATES; k++)
            c->offs[c->n++] = is->offs[k];
        hi = lo;
        if ((c->n == TRACE_MAX_CANDIDATES || is->full || bytes >= TRACE_MAX_SCAN_BYTES) && hi > first) {
            c->truncated = true;
            break;
        }
        if (is->full)
            c->truncated = true;
    }
    free(is);
    close_read(q, s);
    /* (newest first across windows too: a flush's records can straddle two windows) */
    qsort(c->offs, c->n, sizeof *c->offs, cmp_u64_desc);
}

/* ---- by offset: the received run, the delivery records -------------------------------------- */

typedef struct {
    uint64_t off;
    int64_t until_ns;
    bool found;
    trace_rec r;
    char producer[64];
} recv_scan;

static bool on_received_off(void *arg, const trace_rec *r, int64_t block_ns)
{
    recv_scan *s = arg;
    if (block_ns > s->until_ns)
        return false;
    if (!r || r->kind != TR_RECEIVED || s->off < r->off || s->off - r->off >= r->count)
        return true;
    s->found = true;
    s->r = *r;
    char ip[INET6_ADDRSTRLEN] = "";
    if (r->alen == 4 || r->alen == 16)
        inet_ntop(r->alen == 4 ? AF_INET : AF_INET6, r->addr, ip, sizeof ip);
    if (ip[0])
        snprintf(s->producer, sizeof s->producer, r->alen == 4 ? "%s:%u" : "[%s]:%u", ip, r->port);
    return false;
}

typedef struct {
    uint64_t off;
    tfound *f;
    bool seen_matched, passed;    /* its matched record; one of a later offset */
    int64_t until_ns;             /* 0: to the end */
    bool shared;                  /* several daemons write the log: their records interleave */
    int64_t event_ns;             /* shared: the event's time */
    uint64_t blocks;              /* shared: blocks read */
} deliv_scan;

/* A shared log's look-up: an event its router matched nothing for leaves no record, so the
 * scan stops SHARED_QUIET_NS after the event's time without one; and never reads more than
 * SHARED_MAX_BLOCKS blocks (the answer is incomplete then). */
#define SHARED_QUIET_NS (60LL * 1000000000)
#define SHARED_MAX_BLOCKS 200000

/* Has every delivery of the event an outcome (a dead-lettered one: its dead letter handed over)? */
static bool all_over(const tfound *f)
{
    for (size_t i = 0; i < f->n; i++)
        if (!f->v[i].state || (f->v[i].state == TRACE_DEAD_LETTERED && !f->v[i].dl_done))
            return false;
    return true;
}

static bool on_delivery(void *arg, const trace_rec *r, int64_t block_ns)
{
    deliv_scan *s = arg;
    tfound *f = s->f;
    if (s->until_ns && block_ns > s->until_ns)
        return false;
    if (s->shared) {
        if (!s->seen_matched && block_ns > s->event_ns + SHARED_QUIET_NS)
            return false;
        if (!r && ++s->blocks > SHARED_MAX_BLOCKS) {
            f->incomplete = true;
            return false;
        }
    }
    if (!r)
        return true;
    if (r->kind == TR_GAP) {
        f->incomplete = true;
        return true;
    }
    if (r->off != s->off) {
        /* A matched record of a later offset: the router has been past the event (it writes
         * matched records in the order of the offsets, and an event's before any delivery of it
         * starts).  The trace is whole then when the event matched nothing, or once each of its
         * deliveries has an outcome. */
        if (r->kind == TR_MATCHED && r->off > s->off && !s->shared)
            s->passed = true;
        /* (shared: a later offset's record may be another daemon's, written before this
         * event's router got to it; the scan goes on until every delivery has its outcome) */
        return s->shared ? !(s->seen_matched && f->n && all_over(f))
                         : !(s->passed && (f->n == 0 || all_over(f)));
    }
    if (r->kind == TR_MATCHED) {
        s->seen_matched = true;
        const char *cur = r->names, *rule, *target;
        for (uint32_t i = 0; i < r->count; i++) {
            matched_pair(&cur, &rule, &target);
            tpair *p = pair_of(f, rule, target);
            if (p)
                p->matched = true;
        }
    } else if (r->kind == TR_ATTEMPT) {
        tpair *p = pair_of(f, r->rule, r->target);
        if (p && r->dl && !r->error[0])
            p->dl_done = true;
        if (p && !r->dl) {
            p->tried = true;
            p->matched = true;            /* (its matched record may sit in the next block) */
            if (p->payload < 0)
                p->payload = (int64_t)r->payload;
            if (r->state == TRACE_DELIVERED) {
                p->state = TRACE_DELIVERED;
                p->attempts = r->attempt;
            }
        }
        char t[40];
        rt_time_text(r->time_ms, t, sizeof t);
        sbuf *b = &f->attempts;
        sb_printf(b, "%s{\"time\":\"%s\",\"rule\":", b->n ? "," : "", t);
        json_str(b, r->rule);
        sb_puts(b, ",\"target\":");
        json_str(b, r->to[0] ? r->to : r->target);
        sb_printf(b, ",\"attempt\":%u,\"status\":", r->attempt);
        if (r->status)
            sb_printf(b, "%ld", r->status);
        else
            sb_puts(b, "null");
        sb_printf(b, ",\"latency_ms\":%" PRIu32 ",\"error\":", r->latency_ms);
        if (r->error[0])
            json_str(b, r->error);
        else
            sb_puts(b, "null");
        sb_printf(b, ",\"payload_bytes\":%" PRIu64 ",\"dead_letter\":%s", r->payload,
                  r->dl ? "true" : "false");
        if (r->dl) {
            sb_puts(b, ",\"for_target\":");
            json_str(b, r->target);
        }
        sb_puts(b, "}");
    } else if (r->kind == TR_OUTCOME) {
        tpair *p = pair_of(f, r->rule, r->target);
        if (p) {
            p->state = r->state;
            p->attempts = r->attempt;
            free(p->where);
            free(p->why);
            p->where = r->to[0] ? strdup(r->to) : NULL;
            p->why = r->error[0] ? strdup(r->error) : NULL;
        }
    }
    return true;
}

/* ---- explain ---------------------------------------------------------------------------------- */

/* For each rule of the bus that the event did not match, why: the first condition that failed,
 * as `ebc test --explain` says it ("TEST is false (FILE:LINE:COL)").  The daemon's program has
 * dropped its source texts: a test is written from the code (vm_print_test), as ebc test
 * writes it; a negation that held is named by its place. */
static void explain(sbuf *b, const vm_program *p, const char *bus, const char *event, size_t len)
{
    uint32_t pbus = VM_NONE;
    for (uint32_t i = 0; i < p->nbuses; i++)
        if (p->buses[i].name.len == strlen(bus) && !memcmp(vm_s(p, p->buses[i].name), bus,
                                                            p->buses[i].name.len))
            pbus = i;
    sb_puts(b, ",\"not_matched\":[");
    vm_options o = vm_program_options(p);
    vm_ctx *c = pbus == VM_NONE ? NULL : vm_ctx_new(p, &o);
    const uint32_t *m = NULL;
    size_t nm = 0;
    vm_error e;
    vm_status st = c ? vm_match(c, pbus, event, len, &m, &nm, &e) : VM_ERR_NOMEM;
    bool any = false;
    const vm_rule_error *fails = NULL;
    size_t nf = st == VM_ERR_RULE ? vm_match_failures(c, &fails) : 0;
    uint32_t *matched = nm ? malloc(nm * sizeof *matched) : NULL;
    if (matched)
        memcpy(matched, m, nm * sizeof *matched);
    for (uint32_t r = 0, k = 0, f = 0; (st == VM_OK || st == VM_ERR_RULE) && r < p->nrules; r++) {
        while (k < nm && matched && matched[k] < r)
            k++;
        while (f < nf && fails[f].rule < r)
            f++;
        if (p->rules[r].bus != pbus || (k < nm && matched && matched[k] == r))
            continue;
        sb_puts(b, any ? ",{\"rule\":" : "{\"rule\":");
        any = true;
        sb_json_string(b, vm_s(p, p->rules[r].name), p->rules[r].name.len);
        char why[600];
        if (f < nf && fails[f].rule == r) {
            snprintf(why, sizeof why, "matching failed: %s", fails[f].err.msg);
        } else {
            uint32_t at;
            if (vm_why_not(c, r, event, &at)) {
                vm_span sp = p->code_spans[at];
                char text[112] = "", where[300];
                uint32_t line, col;
                vm_span_where(p, sp, &line, &col);
                snprintf(where, sizeof where, "%s:%u:%u", vm_s(p, p->srcs[sp.src].name), line, col);
                if (VM_OP(p->code[at]) == VM_OP_TEST) {
                    FILE *mf = fmemopen(text, sizeof text, "w");
                    if (mf) {
                        vm_print_test(p, VM_A(p->code[at]), VM_B(p->code[at]), mf);
                        fclose(mf);
                    }
                    text[sizeof text - 1] = 0;
                } else if (!p->src_line0) {
                    vm_span_source(p, sp, text, sizeof text);
                } else {
                    snprintf(text, sizeof text, "a negation");
                }
                snprintf(why, sizeof why, "no match: %s is false (%s)", text, where);
            } else {
                snprintf(why, sizeof why, "no match");
            }
        }
        sb_puts(b, ",\"why\":");
        json_str(b, why);
        sb_puts(b, "}");
    }
    free(matched);
    sb_puts(b, "]");
    vm_ctx_free(c);
}

/* ---- the answer ------------------------------------------------------------------------------- */

/* The event at off of the bus log: a malloc'd NUL-terminated copy and its time. */
static char *read_event(store *s, uint64_t off, size_t *len, int64_t *time_ns)
{
    store_cursor *c = NULL;
    if (store_cursor_open(s, off, &c) != STORE_OK)
        return NULL;
    store_record r;
    char *out = NULL;
    if (store_cursor_next(c, &r, 0) == STORE_OK && r.offset == off && (out = malloc(r.len + 1))) {
        memcpy(out, r.data, r.len);
        out[r.len] = 0;
        *len = r.len;
        *time_ns = r.time_ns;
    }
    store_cursor_close(c);
    return out;
}

static const char *attr(const cJSON *ev, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(ev, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const char *state_name(unsigned s, bool tried)
{
    switch (s) {
    case TRACE_DELIVERED: return "delivered";
    case TRACE_DEAD_LETTERED: return "dead_lettered";
    case TRACE_DROPPED: return "dropped";
    case TRACE_EXPIRED: return "expired";
    default: return tried ? "retrying" : "pending";
    }
}

/* The trace of the event at off (its text ev[0..len), time t_ns, attributes in j) into out. */
static void answer(const trace_query *q, uint64_t off, const char *ev, size_t len, int64_t t_ns,
                   const cJSON *j, sbuf *out)
{
    tfound f = { 0 };
    recv_scan rs = { .off = off, .until_ns = t_ns + 60LL * 1000000000 };
    bool f_failed = false;
    store *s = open_read(q, "received", &f_failed);
    if (s) {
        scan(s, t_ns - 1000000000LL, off, true, on_received_off, &rs);
        close_read(q, s);
    }
    deliv_scan ds = { .off = off, .f = &f, .shared = q->shared, .event_ns = t_ns };
    if ((s = open_read(q, "delivery", &f_failed))) {
        scan(s, t_ns - 1000000000LL, off, false, on_delivery, &ds);
        close_read(q, s);
    }
    if (f_failed)
        f.incomplete = true;              /* (a trace stream could not be read) */
    char t[40];
    sb_puts(out, "{\"bus\":");
    json_str(out, q->bus);
    sb_printf(out, ",\"offset\":%" PRIu64, off);
    static const char *const names[] = { "id", "source", "type" };
    for (size_t i = 0; i < 3; i++) {
        const char *v = attr(j, names[i]);
        if (!v && i == 2)
            v = attr(j, "detail-type");         /* an AWS event's type (docs/aws.md) */
        sb_printf(out, ",\"%s\":", names[i]);
        if (v)
            json_str(out, v);
        else
            sb_puts(out, "null");
    }
    rt_time_text(rs.found ? rs.r.time_ms : t_ns / 1000000, t, sizeof t);
    sb_printf(out, ",\"received\":{\"time\":\"%s\",\"producer\":", t);
    if (rs.producer[0])
        json_str(out, rs.producer);
    else
        sb_puts(out, "null");
    sb_puts(out, "},\"matched\":[");
    bool any = false;
    for (size_t i = 0; i < f.n; i++) {
        if (!f.v[i].matched)
            continue;
        sb_puts(out, any ? ",{\"rule\":" : "{\"rule\":");
        any = true;
        json_str(out, f.v[i].rule);
        sb_puts(out, ",\"target\":");
        json_str(out, f.v[i].target);
        if (f.v[i].payload >= 0)
            sb_printf(out, ",\"payload_bytes\":%" PRId64 "}", f.v[i].payload);
        else
            sb_puts(out, ",\"payload_bytes\":null}");
    }
    sb_puts(out, "],\"attempts\":[");
    if (f.attempts.n)
        sb_put(out, f.attempts.v, f.attempts.n);
    sb_puts(out, "],\"outcomes\":[");
    for (size_t i = 0; i < f.n; i++) {
        tpair *p = &f.v[i];
        sb_puts(out, i ? ",{\"rule\":" : "{\"rule\":");
        json_str(out, p->rule);
        sb_puts(out, ",\"target\":");
        json_str(out, p->target);
        sb_printf(out, ",\"state\":\"%s\"", state_name(p->state, p->tried));
        if (p->where) {
            sb_puts(out, ",\"dead_letter\":");
            json_str(out, p->where);
        }
        if (p->why) {
            sb_puts(out, ",\"error\":");
            json_str(out, p->why);
        }
        if (p->state)
            sb_printf(out, ",\"attempts\":%u", p->attempts);
        sb_puts(out, "}");
    }
    sb_printf(out, "],\"incomplete\":%s", f.incomplete ? "true" : "false");
    if (q->explain)
        explain(out, q->explain, q->bus, ev, len);
    found_free(&f);
}

#define MAX_SAME_ID 20            /* events of one id listed in "others" */

unsigned trace_lookup(const trace_query *q, sbuf *out, char *err, size_t cap)
{
    uint64_t off = q->offset;
    size_t len = 0;
    int64_t t_ns = 0;
    char *ev = NULL;
    cJSON *j = NULL;
    sbuf others = { 0 };
    unsigned status = 404;
    bool truncated = false;
    if (q->by_offset) {
        if (!(ev = read_event(q->log, off, &len, &t_ns))) {
            uint64_t first, next;
            store_bounds(q->log, &first, &next);
            if (off < first)
                snprintf(err, cap, "offset %" PRIu64 " of bus '%s' was deleted by retention", off,
                         q->bus);
            else
                snprintf(err, cap, "bus '%s' has no event at offset %" PRIu64, q->bus, off);
            return 404;
        }
        j = cJSON_ParseWithLength(ev, len);
    } else {
        trace_cands *own = NULL;
        const trace_cands *cs = q->cands;
        if (!cs) {
            if (!(own = malloc(sizeof *own))) {
                snprintf(err, cap, "out of memory");
                return 500;
            }
            trace_id_candidates(q, own);
            cs = own;
        }
        truncated = cs->truncated;
        size_t nsame = 0;
        for (size_t k = 0; k < cs->n && nsame <= MAX_SAME_ID; k++) {   /* newest first */
            size_t l;
            int64_t tn;
            char *e = read_event(q->log, cs->offs[k], &l, &tn);
            cJSON *ej = e ? cJSON_ParseWithLength(e, l) : NULL;
            const char *id = attr(ej, "id"), *src = attr(ej, "source");
            if (id && !strcmp(id, q->id) && (!q->source || (src && !strcmp(src, q->source)))) {
                if (!ev) {
                    ev = e, len = l, t_ns = tn, j = ej, off = cs->offs[k];
                    e = NULL, ej = NULL;
                } else if (nsame++ < MAX_SAME_ID) {
                    char t[40];
                    rt_time_text(tn / 1000000, t, sizeof t);
                    sb_printf(&others, "%s{\"offset\":%" PRIu64 ",\"source\":", others.n ? "," : "",
                              cs->offs[k]);
                    json_str(&others, src ? src : "");
                    sb_printf(&others, ",\"time\":\"%s\"}", t);
                }
            }
            cJSON_Delete(ej);
            free(e);
        }
        free(own);
        if (!ev) {
            snprintf(err, cap, "no trace of an event with id '%.200s'%s%.200s%s on bus '%s'%s",
                     q->id, q->source ? " and source '" : "", q->source ? q->source : "",
                     q->source ? "'" : "", q->bus, truncated ? " (truncated: only the newest "
                     "candidates were read)" : "");
            sb_free(&others);
            return 404;
        }
    }
    if (!j) {
        snprintf(err, cap, "the event at offset %" PRIu64 " cannot be read", off);
        status = 500;
    } else {
        answer(q, off, ev, len, t_ns, j, out);
        if (others.n) {
            sb_puts(out, ",\"others\":[");
            sb_put(out, others.v, others.n);
            sb_puts(out, "]");
        }
        if (truncated)
            sb_puts(out, ",\"truncated\":true");
        sb_puts(out, "}");
        status = out->oom ? 500 : 200;
        if (out->oom)
            snprintf(err, cap, "out of memory");
    }
    cJSON_Delete(j);
    free(ev);
    sb_free(&others);
    return status;
}

/* ---- the timeline (ebc trace) ----------------------------------------------------------------- */

static const char *jstr(const cJSON *o, const char *name, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

static double jnum(const cJSON *o, const char *name, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

void trace_print(const char *json, FILE *out)
{
    cJSON *j = cJSON_Parse(json);
    if (!j) {
        fputs(json, out);
        fputc('\n', out);
        return;
    }
    const cJSON *rc = cJSON_GetObjectItemCaseSensitive(j, "received"), *x;
    fprintf(out, "event %s (source %s, type %s), bus %s, offset %.0f\n", jstr(j, "id", "?"),
            jstr(j, "source", "?"), jstr(j, "type", "?"), jstr(j, "bus", "?"), jnum(j, "offset", 0));
    fprintf(out, "  %s  received from %s\n", jstr(rc, "time", "?"), jstr(rc, "producer", "(unknown)"));
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "matched");
    if (!cJSON_GetArraySize(m))
        fprintf(out, "  %24s  matched no rule\n", "");
    cJSON_ArrayForEach(x, m) {
        double pb = jnum(x, "payload_bytes", -1);
        fprintf(out, "  %24s  matched rule %s -> target %s", "", jstr(x, "rule", "?"), jstr(x, "target", "?"));
        if (pb >= 0)
            fprintf(out, " (payload %.0f bytes)", pb);
        fputc('\n', out);
    }
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(j, "attempts")) {
        const cJSON *dl = cJSON_GetObjectItemCaseSensitive(x, "dead_letter");
        double st = jnum(x, "status", 0);
        char status[32] = "no status";
        if (st)
            snprintf(status, sizeof status, "status %.0f", st);
        fprintf(out, "  %s  %s %.0f %s -> %s: %s, %s in %.0f ms", jstr(x, "time", "?"),
                cJSON_IsTrue(dl) ? "dead letter, try" : "attempt", jnum(x, "attempt", 0),
                jstr(x, "rule", "?"), jstr(x, "target", "?"),
                jstr(x, "error", NULL) ? "failed" : "ok", status, jnum(x, "latency_ms", 0));
        if (jstr(x, "error", NULL))
            fprintf(out, ": %s", jstr(x, "error", ""));
        fputc('\n', out);
    }
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(j, "outcomes")) {
        fprintf(out, "  outcome  %s -> %s: %s", jstr(x, "rule", "?"), jstr(x, "target", "?"),
                jstr(x, "state", "?"));
        if (jstr(x, "dead_letter", NULL))
            fprintf(out, " to %s", jstr(x, "dead_letter", ""));
        if (cJSON_GetObjectItemCaseSensitive(x, "attempts"))
            fprintf(out, " after %.0f attempt%s", jnum(x, "attempts", 0),
                    jnum(x, "attempts", 0) == 1 ? "" : "s");
        if (jstr(x, "error", NULL))
            fprintf(out, " (%s)", jstr(x, "error", ""));
        fputc('\n', out);
    }
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(j, "not_matched"))
        fprintf(out, "  not matched  %s: %s\n", jstr(x, "rule", "?"), jstr(x, "why", "?"));
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "incomplete")))
        fputs("  (trace incomplete: the trace thread dropped records around this time)\n", out);
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(j, "others"))
        fprintf(out, "  also with this id: offset %.0f (source %s, %s)\n", jnum(x, "offset", 0),
                jstr(x, "source", "?"), jstr(x, "time", "?"));
    cJSON_Delete(j);
}
