/*
 * nats.c — a bus on NATS JetStream, behind the storage interface (store.h; docs/storage.md,
 * "NATS JetStream").  One stream per bus, one subject in it; a record's offset is its stream
 * sequence minus one, its time the stream's timestamp, its flags a header.  Appends return once
 * JetStream acknowledged each record.  Two kinds of cursor:
 *   - an ordinary cursor reads in order through an ephemeral pull consumer, fetching batches;
 *     the first few records after a seek
 *     read without waiting (a look-up of one event) come by direct gets instead, since a
 *     consumer for one record costs more than the record;
 *   - a group cursor reads through a durable pull consumer that every process reading the bus
 *     shares: each record goes to one of them, is held until its reader says it is done
 *     (store_cursor_done: acknowledged), and is given again to any of them if it is not within
 *     the ack wait (a reader that holds it long says it is still at work on it), or at once if
 *     its reader closes the cursor first.
 * Positions live in the durable consumers, so named cursors and cursor sets are the local log's.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

#include "store_int.h"

#define FLAGS_HEADER "Ebr-Flags"
#define WAIT_SLICE_MS 200         /* a waiting cursor looks at store_wake this often */
#define FETCH_BATCH 128           /* records a group cursor asks for at once */
#define HELD_MAX_DEFAULT 65536    /* records a group cursor holds before it stops asking */
#define ACK_TIMEOUT_MS 5000       /* an append not acknowledged by JetStream by then fails */
#define DIRECT_GETS 4             /* records a cursor reads by direct gets before a consumer */

/* An append waiting for JetStream's acknowledgements of its records. */
typedef struct {
    size_t left;                  /* records not acknowledged (nor refused) yet */
    uint64_t *seq;                /* each record's sequence */
    bool *dup;                    /* NULL, or each record: a duplicate JetStream did not store */
    bool failed;
    char why[200];
} pubwait;

/* A record published and not acknowledged yet: its message, whose append waits, which record. */
typedef struct {
    natsMsg *msg;                 /* NULL: a free slot */
    pubwait *w;
    size_t i;
} pubslot;

typedef struct {
    store base;
    natsConnection *nc;
    jsCtx *js;
    char *stream, *subject;
    store_nats_options no;        /* (its strings are not kept: stream/subject above) */
    store_options o;
    pthread_mutex_t mu;           /* err, and the wake generation */
    pthread_cond_t cv;
    pthread_mutex_t pmu;          /* the records in flight (pub), against the ack handler */
    pthread_cond_t pcv;
    pubslot *pub;                 /* open addressing by message pointer */
    size_t pcap, pn;
    unsigned wake;                /* store_wake's generation */
    _Atomic bool closing;
    char err[512];
} nats_t;

/* A record a group cursor holds: given to its reader, not done yet. */
typedef struct {
    uint64_t off;                 /* UINT64_MAX: a free slot */
    natsMsg *msg;
    int64_t touched_ms;           /* given, or last said to be in progress */
    bool done;                    /* done, but its acknowledgement could not be sent: again */
} held;

typedef struct {
    store_cursor base;
    nats_t *n;
    /* ordinary cursors */
    natsSubscription *sub;        /* an ephemeral pull consumer at want, or NULL */
    uint64_t want;                /* the offset next() looks for */
    unsigned gets;                /* records read by direct gets since the last seek */
    uint64_t last;                /* the stream's last sequence, as last seen */
    natsMsg *stash;               /* read past a deletion: given once the caller seeks to it */
    natsMsg *cur;                 /* the record last given (its data is the caller's) */
    /* group cursors */
    bool group;
    char *consumer;
    natsMsgList batch;            /* fetched, not given yet */
    int ibatch;
    pthread_mutex_t mu;           /* the held table and cur, against store_cursor_done */
    pthread_cond_t cv;
    held *h;                      /* open addressing by offset, linear probing */
    size_t hcap, hn, held_max;
    bool cur_done;                /* cur was done while given: destroyed at the next call */
    size_t undone;                /* held entries done whose acknowledgement failed (sent again
                                   * at each call, and kept in progress meanwhile) */
    int64_t next_touch_ms;
    char err[512];
} ncur;

static char *consumer_name(const char *group);
static void n_cursor_close(store_cursor *sc);

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static store_status failf(nats_t *n, store_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&n->mu);
    vsnprintf(n->err, sizeof n->err, fmt, ap);
    pthread_mutex_unlock(&n->mu);
    va_end(ap);
    return st;
}

static store_status cfailf(ncur *c, store_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return st;
}

/* The client's words for s, with its last error's text when it has one. */
static const char *why(natsStatus s, char *buf, size_t cap)
{
    natsStatus ls;
    const char *t = nats_GetLastError(&ls);
    snprintf(buf, cap, "%s%s%s", natsStatus_GetText(s), t && *t ? ": " : "", t ? t : "");
    return buf;
}

/* A store status for a client status: a timeout is one, a closed connection another. */
static store_status status_of(natsStatus s)
{
    return s == NATS_TIMEOUT ? STORE_TIMEOUT : s == NATS_CONNECTION_CLOSED ? STORE_CLOSED
                                                                             : STORE_EIO;
}

/* The stream sequence, delivery count and timestamp of a message a consumer gave, from its
 * reply subject: $JS.ACK.[domain.account.]stream.consumer.delivered.sseq.cseq.ts.pending[.x],
 * read from the known tokens' end so that both forms parse. */
static bool ack_fields(natsMsg *m, uint64_t *sseq, uint64_t *delivered, int64_t *ts)
{
    const char *r = natsMsg_GetReply(m);
    if (!r || strncmp(r, "$JS.ACK.", 8) != 0)
        return false;
    const char *tok[16];
    size_t ntok = 0;
    for (const char *p = r + 8; *p && ntok < 16;) {
        tok[ntok++] = p;
        const char *d = strchr(p, '.');
        if (!d)
            break;
        p = d + 1;
    }
    /* 7 tokens after "$JS.ACK." in the old form, 9 (or 10 with a trailing token) in the new */
    size_t base = ntok == 7 ? 2 : ntok >= 9 ? 4 : 0;
    if (!base)
        return false;
    *delivered = strtoull(tok[base], NULL, 10);
    *sseq = strtoull(tok[base + 1], NULL, 10);
    *ts = (int64_t)strtoull(tok[base + 3], NULL, 10);
    return *sseq > 0;
}

static uint32_t flags_of(natsMsg *m)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, FLAGS_HEADER, &v) != NATS_OK || !v)
        return 0;
    return (uint32_t)strtoul(v, NULL, 10);
}

static void fill(store_record *r, natsMsg *m, uint64_t off, int64_t ts)
{
    r->offset = off;
    r->time_ns = ts;
    r->flags = flags_of(m);
    r->len = (uint32_t)natsMsg_GetDataLength(m);
    r->data = (const unsigned char *)natsMsg_GetData(m);
}

/* ---- appending ------------------------------------------------------------------------------
 * A batch is pipelined: every record is published without waiting (js_PublishMsgAsync), and
 * the append waits for its records' acknowledgements, which the client's ack handler hands over
 * by message, so that a batch of 100 takes about one round trip, not 100.  One record is one
 * request (below). */

static size_t pub_home(const nats_t *x, const natsMsg *m)
{
    return (size_t)(((uintptr_t)m * 0x9e3779b97f4a7c15ULL) >> 20) & (x->pcap - 1);
}

/* Under pmu. */
static pubslot *pub_find(nats_t *x, const natsMsg *m)
{
    if (!x->pcap)
        return NULL;
    for (size_t i = pub_home(x, m);; i = (i + 1) & (x->pcap - 1)) {
        if (x->pub[i].msg == m)
            return &x->pub[i];
        if (!x->pub[i].msg)
            return NULL;
    }
}

/* Under pmu: out of the table, the later entries of its run moved back. */
static void pub_del(nats_t *x, pubslot *s)
{
    size_t mask = x->pcap - 1, i = (size_t)(s - x->pub);
    x->pub[i].msg = NULL;
    x->pn--;
    for (size_t j = (i + 1) & mask; x->pub[j].msg; j = (j + 1) & mask) {
        size_t k = pub_home(x, x->pub[j].msg);
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
            continue;
        x->pub[i] = x->pub[j];
        x->pub[j].msg = NULL;
        i = j;
    }
}

/* Under pmu. */
static bool pub_put(nats_t *x, natsMsg *m, pubwait *w, size_t i)
{
    if ((x->pn + 1) * 2 > x->pcap) {
        size_t ocap = x->pcap, ncap = ocap ? ocap * 2 : 256;
        pubslot *old = x->pub, *v = calloc(ncap, sizeof *v);
        if (!v)
            return false;
        x->pub = v;
        x->pcap = ncap;
        for (size_t k = 0; k < ocap; k++)
            if (old[k].msg) {
                size_t j = pub_home(x, old[k].msg);
                while (v[j].msg)
                    j = (j + 1) & (ncap - 1);
                v[j] = old[k];
            }
        free(old);
    }
    size_t j = pub_home(x, m);
    while (x->pub[j].msg)
        j = (j + 1) & (x->pcap - 1);
    x->pub[j] = (pubslot){ m, w, i };
    x->pn++;
    return true;
}

/* The client's thread: JetStream acknowledged (pa) or refused (pae) message m. */
static void on_pub_ack(jsCtx *js, natsMsg *m, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    nats_t *x = closure;
    pthread_mutex_lock(&x->pmu);
    pubslot *s = pub_find(x, m);
    if (s) {                      /* (not there: its append gave up waiting) */
        pubwait *w = s->w;
        if (pa) {
            w->seq[s->i] = pa->Sequence;        /* (a duplicate's: the first one's) */
            if (w->dup)
                w->dup[s->i] = pa->Duplicate;
        }
        else if (!w->failed) {
            w->failed = true;
            snprintf(w->why, sizeof w->why, "%s", pae && pae->ErrText ? pae->ErrText
                     : pae ? natsStatus_GetText(pae->Err) : "no acknowledgement");
        }
        pub_del(x, s);
        if (--w->left == 0)
            pthread_cond_broadcast(&x->pcv);
    }
    pthread_mutex_unlock(&x->pmu);
    natsMsg_Destroy(m);
}

/* The message of record e: its bytes, its flags in a header. */
static natsStatus make_msg(nats_t *x, const store_entry *e, natsMsg **m)
{
    natsStatus st = natsMsg_Create(m, x->subject, NULL, (const char *)e->data, (int)e->len);
    if (st == NATS_OK && e->flags) {
        char v[16];
        snprintf(v, sizeof v, "%" PRIu32, e->flags);
        st = natsMsgHeader_Set(*m, FLAGS_HEADER, v);
    }
    if (st == NATS_OK && e->msg_id && x->o.dedup_ns)
        st = natsMsgHeader_Set(*m, "Nats-Msg-Id", e->msg_id);
    return st;
}

static bool n_dedups(store *s)
{
    return ((nats_t *)s)->o.dedup_ns != 0;
}

static store_status n_append(store *s, const store_entry *e, size_t n, uint64_t *offsets,
                             bool *dup)
{
    nats_t *x = (nats_t *)s;
    for (size_t i = 0; i < n; i++)
        if (e[i].len > x->o.max_record)
            return failf(x, STORE_EINVAL, "a record of %u bytes is over the limit of %u bytes",
                         e[i].len, x->o.max_record);
    if (x->closing)
        return failf(x, STORE_CLOSED, "the store is closing");
    if (x->o.read_only)
        return failf(x, STORE_EINVAL, "stream %s: opened read-only", x->stream);
    if (n == 0)
        return STORE_OK;
    if (n == 1) {
        /* One record: a request, whose answer the client's reader hands straight to this
         * thread; the asynchronous path's ack handler is two thread hand-offs more.  One node,
         * 32 connections, one run each: 3.8-5.4K -> 8.1-8.6K events/s. */
        natsMsg *m = NULL;
        natsStatus st = make_msg(x, &e[0], &m);
        jsPubAck *ack = NULL;
        jsErrCode jerr = 0;
        if (st == NATS_OK)
            st = js_PublishMsg(&ack, x->js, m, NULL, &jerr);
        natsMsg_Destroy(m);
        if (st != NATS_OK || !ack) {
            char b[300];
            jsPubAck_Destroy(ack);
            return failf(x, STORE_EIO, "JetStream did not acknowledge the record (stream %s): %s",
                         x->stream, why(st, b, sizeof b));
        }
        if (offsets)
            offsets[0] = ack->Sequence - 1;
        if (dup)
            dup[0] = ack->Duplicate;
        jsPubAck_Destroy(ack);
        return STORE_OK;
    }
    uint64_t *seq = calloc(n, sizeof *seq);
    if (!seq)
        return failf(x, STORE_EIO, "out of memory");
    pubwait w = { .left = 0, .seq = seq, .dup = dup };
    natsStatus st = NATS_OK;
    char b[300] = "";
    size_t sent = 0;
    for (; sent < n && st == NATS_OK; sent++) {
        natsMsg *m = NULL;
        st = make_msg(x, &e[sent], &m);
        if (st != NATS_OK) {
            natsMsg_Destroy(m);
            break;
        }
        /* in the table before it goes: its acknowledgement may come before the call returns */
        pthread_mutex_lock(&x->pmu);
        bool put = pub_put(x, m, &w, sent);
        if (put)
            w.left++;
        pthread_mutex_unlock(&x->pmu);
        if (!put) {
            natsMsg_Destroy(m);
            st = NATS_NO_MEMORY;
            break;
        }
        natsMsg *owned = m;
        st = js_PublishMsgAsync(x->js, &owned, NULL);
        if (st != NATS_OK) {      /* not sent: the message is still ours */
            why(st, b, sizeof b);
            pthread_mutex_lock(&x->pmu);
            pubslot *ps = pub_find(x, m);
            if (ps) {
                pub_del(x, ps);
                w.left--;
            }
            pthread_mutex_unlock(&x->pmu);
            natsMsg_Destroy(owned);
            break;
        }
    }
    /* wait for what went; past ACK_TIMEOUT_MS what is left counts as refused */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ACK_TIMEOUT_MS / 1000;
    pthread_mutex_lock(&x->pmu);
    while (w.left && pthread_cond_timedwait(&x->pcv, &x->pmu, &until) != ETIMEDOUT)
        ;
    bool timed_out = w.left > 0;
    if (timed_out)
        for (size_t i = 0; i < x->pcap; i++)
            while (x->pub[i].msg && x->pub[i].w == &w) {
                pub_del(x, &x->pub[i]);
                w.left--;
            }
    pthread_mutex_unlock(&x->pmu);
    store_status rs = STORE_OK;
    if (st != NATS_OK || w.failed || timed_out) {
        if (!b[0] && st != NATS_OK)
            why(st, b, sizeof b);
        rs = failf(x, STORE_EIO, "JetStream did not acknowledge the record%s (stream %s): %s",
                   n > 1 ? "s" : "", x->stream, w.failed ? w.why : timed_out
                   ? "no acknowledgement within 5 s" : b);
    } else if (offsets) {
        for (size_t i = 0; i < n; i++)
            offsets[i] = seq[i] - 1;
    }
    free(seq);
    return rs;
}

/* The stream's state: the first sequence kept and the last. */
static store_status stream_state(nats_t *x, uint64_t *first_seq, uint64_t *last_seq)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetStreamInfo(&si, x->js, x->stream, NULL, &jerr);
    if (st != NATS_OK || !si) {
        char b[300];
        return failf(x, status_of(st), "cannot read stream %s: %s", x->stream, why(st, b, sizeof b));
    }
    *first_seq = si->State.FirstSeq;
    *last_seq = si->State.LastSeq;
    if (si->State.Msgs == 0)
        *first_seq = si->State.LastSeq + 1;
    jsStreamInfo_Destroy(si);
    return STORE_OK;
}

static void n_figures(store *s, store_figures *f)
{
    nats_t *x = (nats_t *)s;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    if (js_GetStreamInfo(&si, x->js, x->stream, NULL, &jerr) != NATS_OK || !si)
        return;
    f->first = si->State.Msgs ? si->State.FirstSeq - 1 : si->State.LastSeq;
    f->next = si->State.LastSeq;
    f->bytes = si->State.Bytes;
    jsStreamInfo_Destroy(si);
}

static store_status n_group_figures(store *s, const char *group, store_group_figures *g)
{
    nats_t *x = (nats_t *)s;
    char *name = consumer_name(group);
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus st = name ? js_GetConsumerInfo(&ci, x->js, x->stream, name, NULL, &jerr)
                         : NATS_NO_MEMORY;
    free(name);
    if (st != NATS_OK || !ci) {
        char b[300];
        return failf(x, jerr == JSConsumerNotFoundErr ? STORE_NOTFOUND : status_of(st),
                     "cannot read consumer %s of stream %s: %s", group, x->stream,
                     why(st, b, sizeof b));
    }
    g->pending = ci->NumPending;
    g->in_hand = ci->NumAckPending > 0 ? (uint64_t)ci->NumAckPending : 0;
    g->redelivered = ci->NumRedelivered > 0 ? (uint64_t)ci->NumRedelivered : 0;
    g->waiting = ci->NumWaiting > 0 ? (uint64_t)ci->NumWaiting : 0;
    jsConsumerInfo_Destroy(ci);
    return STORE_OK;
}

static void n_bounds(store *s, uint64_t *first, uint64_t *next)
{
    nats_t *x = (nats_t *)s;
    uint64_t f = 1, l = 0;
    if (stream_state(x, &f, &l) != STORE_OK) {
        f = 1;
        l = 0;
    }
    *first = f ? f - 1 : 0;
    *next = l;
}

/* ---- ordinary cursors ------------------------------------------------------------------------ */

static ncur *cur_new(nats_t *x)
{
    ncur *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->base.s = &x->base;
    c->n = x;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    return c;
}

static store_status n_cursor_open(store *s, uint64_t offset, store_cursor **out)
{
    ncur *c = cur_new((nats_t *)s);
    if (!c)
        return STORE_EIO;
    c->want = offset;
    *out = &c->base;
    return STORE_OK;
}

/* The time of the record at sequence *seq, or of the first one kept after it below hi (deleted
 * records are passed over; *seq moves to the one found).  False when there is none below hi. */
static bool time_at(nats_t *x, uint64_t *seq, uint64_t hi, int64_t *t)
{
    for (; *seq < hi; ++*seq) {
        natsMsg *m = NULL;
        jsErrCode jerr = 0;
        natsStatus st = js_GetMsg(&m, x->js, x->stream, *seq, NULL, &jerr);
        if (st == NATS_OK && m) {
            *t = natsMsg_GetTime(m);
            natsMsg_Destroy(m);
            return true;
        }
        if (jerr != JSNoMessageFoundErr)
            return false;
    }
    return false;
}

/* By time: the first record stored at or after time_ns, found by bisecting the sequences (times
 * do not decrease along them: one leader stamps them), some twenty requests for a million
 * records, so that the cursor knows its offset before it reads (a replay's first offset). */
static store_status n_cursor_open_at(store *s, int64_t time_ns, store_cursor **out)
{
    nats_t *x = (nats_t *)s;
    uint64_t lo, hi;
    store_status st = stream_state(x, &lo, &hi);
    if (st != STORE_OK)
        return st;
    hi++;                                         /* sequences lo..hi-1 */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2, at = mid;
        int64_t t;
        if (!time_at(x, &at, hi, &t)) {
            if (at < hi)
                return failf(x, STORE_EIO, "cannot read stream %s at sequence %" PRIu64,
                             x->stream, at);
            hi = mid;                             /* nothing kept from mid on */
        } else if (t >= time_ns) {
            hi = mid;
        } else {
            lo = at + 1;
        }
    }
    ncur *c = cur_new(x);
    if (!c)
        return STORE_EIO;
    c->want = lo - 1;
    *out = &c->base;
    return STORE_OK;
}

static void drop_sub(ncur *c)
{
    if (c->sub) {
        natsSubscription_Destroy(c->sub);       /* (its consumer is ephemeral) */
        c->sub = NULL;
    }
    natsMsgList_Destroy(&c->batch);             /* (fetched ahead, not given) */
    c->batch = (natsMsgList){ 0 };
    c->ibatch = 0;
}

static store_status subscribe(ncur *c)
{
    nats_t *x = c->n;
    /* An ephemeral pull consumer, fetched from in batches: records come only when asked for.
     * (An ordered push consumer was the first choice; destroying one while the server still
     * pushed to it crashed libnats 3.4.1's reader thread under ASan: a use after free.) */
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = x->stream;
    so.Config.AckPolicy = js_AckNone;
    so.Config.InactiveThreshold = (int64_t)60 * 1000000000;  /* (gone a minute after its last fetch) */
    if (c->want == 0) {
        so.Config.DeliverPolicy = js_DeliverAll;
    } else {
        so.Config.DeliverPolicy = js_DeliverByStartSequence;
        so.Config.OptStartSeq = c->want + 1;
    }
    jsErrCode jerr = 0;
    natsStatus st = js_PullSubscribe(&c->sub, x->js, x->subject, NULL, NULL, &so, &jerr);
    if (st != NATS_OK) {
        char b[300];
        c->sub = NULL;
        return cfailf(c, status_of(st), "cannot read stream %s: %s", x->stream, why(st, b, sizeof b));
    }
    return STORE_OK;
}

/* One record by a direct get of its sequence (no consumer): what a reader of one record
 * without waiting needs. */
static store_status direct_get(ncur *c, store_record *r)
{
    nats_t *x = c->n;
    for (;;) {
        natsMsg *m = NULL;
        jsErrCode jerr = 0;
        natsStatus st = js_GetMsg(&m, x->js, x->stream, c->want + 1, NULL, &jerr);
        if (st == NATS_OK && m) {
            c->cur = m;
            fill(r, m, c->want, natsMsg_GetTime(m));
            c->want++;
            return STORE_OK;
        }
        if (jerr != JSNoMessageFoundErr) {
            char b[300];
            return cfailf(c, st == NATS_CONNECTION_CLOSED ? STORE_CLOSED : STORE_EIO,
                          "cannot read offset %" PRIu64 " of stream %s: %s", c->want, x->stream,
                          why(st, b, sizeof b));
        }
        uint64_t f, l;
        if (stream_state(x, &f, &l) != STORE_OK)
            return cfailf(c, STORE_EIO, "%s", x->err);
        if (c->want + 1 > l)
            return STORE_TIMEOUT;                 /* not appended yet */
        if (c->want + 1 < f)
            return cfailf(c, STORE_BEHIND, "offset %" PRIu64 " was deleted by the stream's "
                          "limits; the first kept is %" PRIu64, c->want, f - 1);
        c->want++;                                /* deleted by hand: the next one */
    }
}

static bool woken(nats_t *x, unsigned gen)
{
    pthread_mutex_lock(&x->mu);
    bool w = x->wake != gen || x->closing;
    pthread_mutex_unlock(&x->mu);
    return w;
}

static unsigned wake_gen(nats_t *x)
{
    pthread_mutex_lock(&x->mu);
    unsigned g = x->wake;
    pthread_mutex_unlock(&x->mu);
    return g;
}

static store_status group_next(ncur *c, store_record *r, int timeout_ms);

static store_status n_cursor_next(store_cursor *sc, store_record *r, int timeout_ms)
{
    ncur *c = (ncur *)sc;
    nats_t *x = c->n;
    if (c->group)
        return group_next(c, r, timeout_ms);
    natsMsg_Destroy(c->cur);
    c->cur = NULL;
    if (x->closing)
        return STORE_CLOSED;
    if (c->stash) {
        uint64_t sseq = 0, dl;
        int64_t ts = 0;
        ack_fields(c->stash, &sseq, &dl, &ts);
        c->cur = c->stash;
        c->stash = NULL;
        fill(r, c->cur, sseq - 1, ts);
        c->want = sseq;
        return STORE_OK;
    }
    /* Without waiting: a record or two after a seek by direct gets; a reader that goes on (a
     * scan of a trace log) through the consumer, waiting for the records the stream has (its
     * last sequence, read again when reached) but not for new ones. */
    if (!c->sub && timeout_ms == 0 && c->gets < DIRECT_GETS) {
        c->gets++;
        return direct_get(c, r);
    }
    /* (without waiting, STORE_TIMEOUT means the end of the stream: a request that fails is
     * STORE_EIO, never a false end) */
    bool nowait = timeout_ms == 0;
    if (nowait) {
        if (c->want + 1 > c->last) {
            uint64_t f;
            if (stream_state(x, &f, &c->last) != STORE_OK)
                return cfailf(c, STORE_EIO, "%s", x->err);
            if (c->want + 1 > c->last)
                return STORE_TIMEOUT;
        }
        timeout_ms = ACK_TIMEOUT_MS;      /* (it is there: the consumer brings it) */
    }
    if (!c->sub) {
        store_status st = subscribe(c);
        if (st != STORE_OK)
            return st;
    }
    unsigned gen = wake_gen(x);
    int64_t end = timeout_ms < 0 ? INT64_MAX : now_ms() + timeout_ms;
    for (;;) {
        int64_t left = end == INT64_MAX ? WAIT_SLICE_MS : end - now_ms();
        if (left < 0)
            left = 0;
        natsMsg *m = NULL;
        natsStatus st = NATS_OK;
        if (c->ibatch < c->batch.Count) {
            m = c->batch.Msgs[c->ibatch];
            c->batch.Msgs[c->ibatch++] = NULL;
        } else {
            natsMsgList_Destroy(&c->batch);
            c->batch = (natsMsgList){ 0 };
            c->ibatch = 0;
            int64_t slice = left < WAIT_SLICE_MS ? left : WAIT_SLICE_MS;
            st = natsSubscription_Fetch(&c->batch, c->sub, FETCH_BATCH, slice > 0 ? slice : 1, NULL);
            if (st == NATS_OK && c->batch.Count)
                continue;
            if (st == NATS_OK)
                st = NATS_TIMEOUT;
        }
        if (st == NATS_OK && m) {
            uint64_t sseq = 0, dl;
            int64_t ts = 0;
            if (!ack_fields(m, &sseq, &dl, &ts)) {
                natsMsg_Destroy(m);               /* (not a stream message: a status) */
                continue;
            }
            if (sseq - 1 < c->want) {             /* (already given) */
                natsMsg_Destroy(m);
                continue;
            }
            if (sseq - 1 > c->want) {
                uint64_t f, l;
                if (stream_state(x, &f, &l) == STORE_OK && c->want + 1 < f) {
                    c->stash = m;
                    return cfailf(c, STORE_BEHIND, "offset %" PRIu64 " was deleted by the "
                                  "stream's limits; the first kept is %" PRIu64, c->want, f - 1);
                }
                /* records deleted by hand: go on from the next one kept */
            }
            c->cur = m;
            fill(r, m, sseq - 1, ts);
            c->want = sseq;
            return STORE_OK;
        }
        if (st != NATS_TIMEOUT) {
            char b[300];
            drop_sub(c);
            return cfailf(c, status_of(st), "cannot read stream %s: %s", x->stream,
                          why(st, b, sizeof b));
        }
        if (nowait) {
            /* Nothing yet: the records up to the last may have gone meanwhile (deleted by hand,
             * by the limits); else the consumer is slow, and past the limit that is an error. */
            uint64_t f;
            if (stream_state(x, &f, &c->last) != STORE_OK)
                return cfailf(c, STORE_EIO, "%s", x->err);
            if (c->want + 1 > c->last)
                return STORE_TIMEOUT;
            if (c->want + 1 < f)
                return cfailf(c, STORE_BEHIND, "offset %" PRIu64 " was deleted by the stream's "
                              "limits; the first kept is %" PRIu64, c->want, f - 1);
            if (now_ms() >= end)
                return cfailf(c, STORE_EIO, "stream %s: the record at offset %" PRIu64 " did "
                              "not come within %d ms", x->stream, c->want, ACK_TIMEOUT_MS);
            continue;
        }
        if (now_ms() >= end || woken(x, gen))
            return STORE_TIMEOUT;
    }
}

static store_status n_cursor_seek(store_cursor *sc, uint64_t offset)
{
    ncur *c = (ncur *)sc;
    if (c->group)
        return cfailf(c, STORE_EINVAL, "a group cursor cannot seek");
    if (c->stash) {
        uint64_t sseq = 0, dl;
        int64_t ts;
        ack_fields(c->stash, &sseq, &dl, &ts);
        if (sseq - 1 == offset) {
            c->want = offset;
            return STORE_OK;
        }
        natsMsg_Destroy(c->stash);
        c->stash = NULL;
    }
    if (c->sub && c->want == offset)
        return STORE_OK;
    drop_sub(c);
    c->want = offset;
    c->gets = 0;
    return STORE_OK;
}

static store_status n_cursor_skip(store_cursor *sc, uint64_t *lost)
{
    (void)sc;
    *lost = 0;                    /* (JetStream reports no corrupt record to skip) */
    return STORE_OK;
}

static uint64_t n_cursor_offset(const store_cursor *sc)
{
    return ((const ncur *)sc)->want;
}

static const char *n_cursor_error(const store_cursor *sc)
{
    return ((const ncur *)sc)->err;
}

/* ---- group cursors ----------------------------------------------------------------------------- */

static size_t hslot(const ncur *c, uint64_t off)
{
    uint64_t h = off * 0x9e3779b97f4a7c15ULL;
    return (size_t)(h >> 20) & (c->hcap - 1);
}

static held *hfind(ncur *c, uint64_t off)
{
    if (!c->hcap)
        return NULL;
    for (size_t i = hslot(c, off);; i = (i + 1) & (c->hcap - 1)) {
        if (c->h[i].off == off)
            return &c->h[i];
        if (c->h[i].off == UINT64_MAX)
            return NULL;
    }
}

/* Removes slot i, moving later entries of its run back (no tombstones). */
static void hdel(ncur *c, size_t i)
{
    size_t mask = c->hcap - 1;
    c->h[i] = (held){ UINT64_MAX, NULL, 0, false };
    c->hn--;
    for (size_t j = (i + 1) & mask; c->h[j].off != UINT64_MAX; j = (j + 1) & mask) {
        size_t k = hslot(c, c->h[j].off);
        /* entry j may move to i when its home k is not in (i, j] cyclically */
        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays)
            continue;
        c->h[i] = c->h[j];
        c->h[j] = (held){ UINT64_MAX, NULL, 0, false };
        i = j;
    }
}

static bool hput(ncur *c, uint64_t off, natsMsg *m)
{
    if ((c->hn + 1) * 2 > c->hcap) {
        size_t ncap = c->hcap ? c->hcap * 2 : 1024;
        held *nh = malloc(ncap * sizeof *nh), *old = c->h;
        if (!nh)
            return false;
        for (size_t i = 0; i < ncap; i++)
            nh[i] = (held){ UINT64_MAX, NULL, 0, false };
        size_t ocap = c->hcap;
        c->h = nh;
        c->hcap = ncap;
        for (size_t i = 0; i < ocap; i++)
            if (old[i].off != UINT64_MAX) {
                size_t j = hslot(c, old[i].off);
                while (nh[j].off != UINT64_MAX)
                    j = (j + 1) & (ncap - 1);
                nh[j] = old[i];
            }
        free(old);
    }
    size_t j = hslot(c, off);
    while (c->h[j].off != UINT64_MAX)
        j = (j + 1) & (c->hcap - 1);
    c->h[j] = (held){ off, m, now_ms(), false };
    c->hn++;
    return true;
}

static int64_t ack_wait_ms(const nats_t *x)
{
    return x->no.ack_wait_ns / 1000000;
}

/* Tells JetStream the records held longer than a third of the ack wait are still at work (a
 * delivery retrying for hours), so that they are not given to another process meanwhile.
 * Under c->mu. */
static void touch_held(ncur *c)
{
    int64_t now = now_ms(), third = ack_wait_ms(c->n) / 3;
    if (now < c->next_touch_ms && !c->undone)
        return;
    bool touch = now >= c->next_touch_ms;
    if (touch)
        c->next_touch_ms = now + (third > 0 ? third : 1);
    for (size_t i = 0; i < c->hcap; i++) {
        held *h = &c->h[i];
        while (h->off != UINT64_MAX && h->done && natsMsg_Ack(h->msg, NULL) == NATS_OK) {
            if (h->msg == c->cur)         /* (acknowledged at last) */
                c->cur_done = true;
            else
                natsMsg_Destroy(h->msg);
            hdel(c, i);                   /* (slot i may hold another entry now) */
            c->undone--;
        }
        if (touch && h->off != UINT64_MAX && now - h->touched_ms >= third) {
            natsMsg_InProgress(h->msg, NULL);
            h->touched_ms = now;
        }
    }
}

static store_status group_next(ncur *c, store_record *r, int timeout_ms)
{
    nats_t *x = c->n;
    pthread_mutex_lock(&c->mu);
    if (c->cur && c->cur_done)
        natsMsg_Destroy(c->cur);
    c->cur = NULL;
    c->cur_done = false;
    pthread_mutex_unlock(&c->mu);
    unsigned gen = wake_gen(x);
    int64_t end = timeout_ms < 0 ? INT64_MAX : now_ms() + timeout_ms;
    for (;;) {
        if (x->closing)
            return STORE_CLOSED;
        pthread_mutex_lock(&c->mu);
        touch_held(c);
        while (c->ibatch < c->batch.Count) {
            natsMsg *m = c->batch.Msgs[c->ibatch];
            c->batch.Msgs[c->ibatch++] = NULL;
            uint64_t sseq = 0, dl = 0;
            int64_t ts = 0;
            if (!ack_fields(m, &sseq, &dl, &ts)) {
                natsMsg_Destroy(m);
                continue;
            }
            held *h = hfind(c, sseq - 1);
            if (h) {                    /* given again while this reader still holds it */
                if (h->msg != c->cur)
                    natsMsg_Destroy(h->msg);
                h->msg = m;
                h->touched_ms = now_ms();
                continue;
            }
            if (!hput(c, sseq - 1, m)) {
                natsMsg_Nak(m, NULL);
                natsMsg_Destroy(m);
                continue;
            }
            c->cur = m;
            pthread_mutex_unlock(&c->mu);
            fill(r, m, sseq - 1, ts);
            return STORE_OK;
        }
        natsMsgList_Destroy(&c->batch);
        c->batch = (natsMsgList){ 0 };
        c->ibatch = 0;
        int64_t left = end == INT64_MAX ? WAIT_SLICE_MS : end - now_ms();
        if (left <= 0 || woken(x, gen)) {
            pthread_mutex_unlock(&c->mu);
            return STORE_TIMEOUT;
        }
        int64_t slice = left < WAIT_SLICE_MS ? left : WAIT_SLICE_MS;
        if (c->hn >= c->held_max) {
            /* As many records in hand as it may hold: wait for some to be done. */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            long ns = until.tv_nsec + (long)slice * 1000000L;
            until.tv_sec += ns / 1000000000L;
            until.tv_nsec = ns % 1000000000L;
            pthread_cond_timedwait(&c->cv, &c->mu, &until);
            pthread_mutex_unlock(&c->mu);
            continue;
        }
        size_t room = c->held_max - c->hn;
        pthread_mutex_unlock(&c->mu);
        jsErrCode jerr = 0;
        natsStatus st = natsSubscription_Fetch(&c->batch, c->sub,
                                               room < FETCH_BATCH ? (int)room : FETCH_BATCH,
                                               slice > 0 ? slice : 1, &jerr);
        if (st == NATS_OK || st == NATS_TIMEOUT)
            continue;
        char b[300];
        cfailf(c, status_of(st), "cannot fetch from stream %s (consumer %s): %s", x->stream,
               c->consumer, why(st, b, sizeof b));
        /* (the connection may be reconnecting: the caller tries again) */
        return STORE_EIO;
    }
}

/* A durable consumer's name for a group: a cursor name without '.', which JetStream reserves. */
static char *consumer_name(const char *group)
{
    char *s = strdup(group);
    for (char *p = s; p && *p; p++)
        if (*p == '.')
            *p = '_';
    return s;
}

static store_status n_cursor_open_group(store *s, const char *group, store_cursor **out)
{
    nats_t *x = (nats_t *)s;
    ncur *c = cur_new(x);
    if (!c)
        return STORE_EIO;
    c->group = true;
    c->consumer = consumer_name(group);
    c->held_max = x->no.max_held ? x->no.max_held : HELD_MAX_DEFAULT;
    char b[300];
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = c->consumer;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = x->no.ack_wait_ns;
    cc.MaxDeliver = -1;           /* never dropped: a record is done only when its reader says */
    /* (the group's: generous, the same whatever each daemon's in_hand, so that daemons with
     * other settings do not change the consumer back and forth) */
    cc.MaxAckPending = (int64_t)HELD_MAX_DEFAULT * 4;
    cc.DeliverPolicy = js_DeliverAll;
    cc.FilterSubject = x->subject;
    cc.MaxWaiting = 512;
    /* Made with the consumer API, not by the subscription, so that it outlives every process
     * (a durable made by js_PullSubscribe is deleted when its subscription unsubscribes). */
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetConsumerInfo(&ci, x->js, x->stream, c->consumer, NULL, &jerr);
    if (st != NATS_OK && jerr == JSConsumerNotFoundErr)
        st = js_AddConsumer(&ci, x->js, x->stream, &cc, NULL, &jerr);
    else if (st == NATS_OK && ci && ci->Config &&
             (ci->Config->AckWait != cc.AckWait || ci->Config->MaxAckPending != cc.MaxAckPending)) {
        jsConsumerInfo_Destroy(ci);
        ci = NULL;
        st = js_UpdateConsumer(&ci, x->js, x->stream, &cc, NULL, &jerr);
    }
    jsConsumerInfo_Destroy(ci);
    if (st != NATS_OK) {
        failf(x, status_of(st), "cannot make consumer %s of stream %s: %s", c->consumer,
              x->stream, why(st, b, sizeof b));
        n_cursor_close(&c->base);
        return STORE_EIO;
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = x->stream;
    so.Consumer = c->consumer;    /* bound: the subscription does not own the consumer */
    so.ManualAck = true;
    st = js_PullSubscribe(&c->sub, x->js, x->subject, c->consumer, NULL, &so, &jerr);
    if (st != NATS_OK) {
        failf(x, status_of(st), "cannot read consumer %s of stream %s: %s", c->consumer,
              x->stream, why(st, b, sizeof b));
        c->sub = NULL;
        n_cursor_close(&c->base);
        return STORE_EIO;
    }
    *out = &c->base;
    return STORE_OK;
}

/* An acknowledgement that cannot be sent now (the connection is away) is sent again at the
 * reader's next calls (touch_held), which also keep saying the record is in progress: it is
 * given to another only if the ack wait passes with the connection away all along. */
static store_status n_cursor_done(store_cursor *sc, const uint64_t *offsets, size_t n)
{
    ncur *c = (ncur *)sc;
    if (!c->group)
        return cfailf(c, STORE_EINVAL, "only a group cursor's records are done");
    size_t failed = 0;
    natsStatus last = NATS_OK;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < n; i++) {
        held *h = hfind(c, offsets[i]);
        if (!h)
            continue;
        natsStatus st = natsMsg_Ack(h->msg, NULL);
        if (st != NATS_OK) {
            c->undone += !h->done;
            h->done = true;
            failed++;
            last = st;
            continue;
        }
        if (h->done)
            c->undone--;
        if (h->msg == c->cur)
            c->cur_done = true;
        else
            natsMsg_Destroy(h->msg);
        hdel(c, (size_t)(h - c->h));
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (failed) {
        char b[300];
        return cfailf(c, STORE_EIO, "%zu acknowledgements could not be sent (sent again later): %s",
                      failed, why(last, b, sizeof b));
    }
    return STORE_OK;
}

static void n_cursor_close(store_cursor *sc)
{
    ncur *c = (ncur *)sc;
    if (c->group) {
        /* What it holds and did not finish goes to the group's other readers now, not after
         * the ack wait. */
        for (size_t i = 0; i < c->hcap; i++)
            if (c->h[i].off != UINT64_MAX) {
                natsMsg_Nak(c->h[i].msg, NULL);
                if (c->h[i].msg != c->cur)
                    natsMsg_Destroy(c->h[i].msg);
            }
        for (int i = c->ibatch; i < c->batch.Count; i++)
            if (c->batch.Msgs[i])
                natsMsg_Nak(c->batch.Msgs[i], NULL);
        natsMsgList_Destroy(&c->batch);
        c->batch = (natsMsgList){ 0 };
        free(c->h);
        free(c->consumer);
    }
    natsMsg_Destroy(c->cur);
    natsMsg_Destroy(c->stash);
    drop_sub(c);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

/* ---- positions: the consumers' -------------------------------------------------------------- */

static store_status n_commit(store *s, const char *name, uint64_t high, const uint64_t *pending,
                             size_t npending)
{
    (void)name, (void)high, (void)pending, (void)npending;
    return failf((nats_t *)s, STORE_EINVAL, "a bus on NATS JetStream keeps its readers' "
                 "positions in its durable consumers, not in named cursors");
}

static store_status n_committed(store *s, const char *name, uint64_t *high, uint64_t *pending,
                                size_t *npending)
{
    (void)s, (void)name, (void)high, (void)pending;
    *npending = 0;
    return STORE_NOTFOUND;
}

static store_status n_names(store *s, bool sets, char ***names, size_t *n)
{
    (void)s, (void)sets;
    *names = NULL;
    *n = 0;
    return STORE_OK;
}

static store_status n_forget(store *s, const char *name)
{
    (void)s, (void)name;
    return STORE_OK;
}

static store_status n_commit_set(store *s, const char *set, uint64_t base,
                                 const store_pos *const *e, size_t n)
{
    (void)set, (void)base, (void)e, (void)n;
    return n_commit(s, set, 0, NULL, 0);
}

static store_status n_committed_set(store *s, const char *set, uint64_t *base, store_pos **e,
                                    size_t *n)
{
    (void)s, (void)set, (void)base;
    *e = NULL;
    *n = 0;
    return STORE_NOTFOUND;
}

static store_status n_retain(store *s, int64_t now_ns, unsigned *deleted)
{
    (void)s, (void)now_ns;
    *deleted = 0;                 /* (the stream's limits: JetStream applies them itself) */
    return STORE_OK;
}

static bool n_health(store *s, char *err, size_t errcap)
{
    nats_t *x = (nats_t *)s;
    natsConnStatus cs = natsConnection_Status(x->nc);
    if (cs == NATS_CONN_STATUS_CONNECTED)
        return true;
    snprintf(err, errcap, "not connected to NATS (stream %s): %s", x->stream,
             cs == NATS_CONN_STATUS_RECONNECTING ? "reconnecting" : "disconnected");
    return false;
}

static void n_wake(store *s)
{
    nats_t *x = (nats_t *)s;
    pthread_mutex_lock(&x->mu);
    x->wake++;
    pthread_mutex_unlock(&x->mu);
}

static const char *n_error(store *s)
{
    return ((nats_t *)s)->err;
}

/* The connection (the client's threads with it), then what x holds. */
static void nats_free(nats_t *x)
{
    natsConnection_Destroy(x->nc);
    jsCtx_Destroy(x->js);
    free(x->pub);
    free(x->stream);
    free(x->subject);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    pthread_mutex_destroy(&x->pmu);
    pthread_cond_destroy(&x->pcv);
    free(x);
}

static void n_close(store *s)
{
    nats_t *x = (nats_t *)s;
    atomic_store(&x->closing, true);
    /* (appends in flight have returned: the daemon closes a store after its listener stops; what
     * the client still holds is waited for, so that its ack handler never sees x freed) */
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = ACK_TIMEOUT_MS;
    js_PublishAsyncComplete(x->js, &po);
    nats_free(x);
}

static const store_ops nats_ops = {
    .name = "nats",
    .figures = n_figures,
    .group_figures = n_group_figures,
    .append = n_append,
    .dedups = n_dedups,
    .bounds = n_bounds,
    .cursor_open = n_cursor_open,
    .cursor_open_at = n_cursor_open_at,
    .cursor_open_group = n_cursor_open_group,
    .cursor_next = n_cursor_next,
    .cursor_seek = n_cursor_seek,
    .cursor_skip = n_cursor_skip,
    .cursor_offset = n_cursor_offset,
    .cursor_error = n_cursor_error,
    .cursor_done = n_cursor_done,
    .cursor_close = n_cursor_close,
    .commit = n_commit,
    .committed = n_committed,
    .names = n_names,
    .forget = n_forget,
    .commit_set = n_commit_set,
    .committed_set = n_committed_set,
    .retain = n_retain,
    .health = n_health,
    .wake = n_wake,
    .error = n_error,
    .close = n_close,
};

/* ---- opening ------------------------------------------------------------------------------------ */

/* Is the stream's configuration what the bus asks for (the settings this file sets)? */
static bool same_config(const jsStreamConfig *a, const jsStreamConfig *b)
{
    return a->Replicas == b->Replicas && a->MaxAge == b->MaxAge && a->MaxBytes == b->MaxBytes &&
           (!b->Duplicates || a->Duplicates == b->Duplicates) &&
           a->MaxMsgSize == b->MaxMsgSize && a->SubjectsLen == 1 && b->SubjectsLen == 1 &&
           !strcmp(a->Subjects[0], b->Subjects[0]);
}

store_status nats_open(const store_nats_options *no, const store_options *o, store **out,
                       char *err, size_t errcap)
{
    *out = NULL;
    if (!no || !no->nurls || !no->stream || !*no->stream) {
        snprintf(err, errcap, "a bus on NATS JetStream needs a server URL and a stream name");
        return STORE_EINVAL;
    }
    nats_t *x = calloc(1, sizeof *x);
    if (!x) {
        snprintf(err, errcap, "out of memory");
        return STORE_EIO;
    }
    x->base.ops = &nats_ops;
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    pthread_mutex_init(&x->pmu, NULL);
    pthread_cond_init(&x->pcv, NULL);
    x->no = *no;
    x->no.urls = NULL;
    x->no.stream = NULL;
    x->no.user = x->no.password = x->no.token = x->no.creds = x->no.name = NULL;
    if (!x->no.replicas)
        x->no.replicas = 1;
    if (!x->no.ack_wait_ns)
        x->no.ack_wait_ns = 30 * (int64_t)1000000000;
    if (o)
        x->o = *o;
    if (!x->o.max_record)
        x->o.max_record = 16u << 20;
    x->stream = strdup(no->stream);
    size_t sl = strlen(no->stream) + 5;
    x->subject = malloc(sl);
    if (x->subject)
        snprintf(x->subject, sl, "ebr.%s", no->stream);
    char b[300];
    natsOptions *opts = NULL;
    natsStatus st = x->stream && x->subject ? natsOptions_Create(&opts) : NATS_NO_MEMORY;
    if (st == NATS_OK)
        st = natsOptions_SetServers(opts, (const char **)no->urls, (int)no->nurls);
    if (st == NATS_OK && no->name)
        st = natsOptions_SetName(opts, no->name);
    if (st == NATS_OK && no->user)
        st = natsOptions_SetUserInfo(opts, no->user, no->password ? no->password : "");
    if (st == NATS_OK && no->token)
        st = natsOptions_SetToken(opts, no->token);
    if (st == NATS_OK && no->creds)
        st = natsOptions_SetUserCredentialsFromFiles(opts, no->creds, NULL);
    if (st == NATS_OK)
        st = natsOptions_SetTimeout(opts, 2000);
    /* Once connected, reconnect for ever (a node that dies is a pause, not an end); the
     * reconnect buffer stays off, so an append while disconnected fails at once rather than
     * being acknowledged by nobody. */
    if (st == NATS_OK)
        st = natsOptions_SetMaxReconnect(opts, -1);
    if (st == NATS_OK)
        st = natsOptions_SetReconnectWait(opts, 250);
    if (st == NATS_OK)
        st = natsOptions_SetReconnectBufSize(opts, 0);
    /* Published records go out at once, not when the client's flusher next runs: an append waits
     * for its acknowledgement, and so do its acks of delivered records' peers. */
    if (st == NATS_OK)
        st = natsOptions_SetSendAsap(opts, true);
    if (st != NATS_OK) {
        snprintf(err, errcap, "NATS options: %s", why(st, b, sizeof b));
        goto fail;
    }
    st = natsConnection_Connect(&x->nc, opts);
    if (st != NATS_OK) {
        snprintf(err, errcap, "cannot connect to NATS at %s%s: %s", no->urls[0],
                 no->nurls > 1 ? " (or the other servers given)" : "", why(st, b, sizeof b));
        goto fail;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 5000;
    jo.PublishAsync.AckHandler = on_pub_ack;
    jo.PublishAsync.AckHandlerClosure = x;
    jo.PublishAsync.MaxPending = 65536;
    st = natsConnection_JetStream(&x->js, x->nc, &jo);
    if (st != NATS_OK) {
        snprintf(err, errcap, "NATS JetStream: %s", why(st, b, sizeof b));
        goto fail;
    }
    int64_t maxpay = natsConnection_GetMaxPayload(x->nc);
    if (maxpay > 0 && x->o.max_record > (uint64_t)maxpay)
        x->o.max_record = (uint32_t)maxpay;       /* (the server refuses larger messages) */
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    const char *subjects[1] = { x->subject };
    sc.Name = x->stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    sc.Retention = js_LimitsPolicy;
    sc.Discard = js_DiscardOld;
    sc.Replicas = x->no.replicas;
    sc.MaxAge = x->o.retention_ns ? (int64_t)x->o.retention_ns : 0;
    sc.MaxBytes = x->o.retention_bytes ? (int64_t)x->o.retention_bytes : -1;
    sc.MaxMsgSize = (int32_t)x->o.max_record;
    sc.AllowDirect = true;
    /* (0: the server's default, 2 minutes; never longer than the stream keeps its messages,
     * which the server refuses and which would guard nothing more) */
    sc.Duplicates = (int64_t)x->o.dedup_ns;
    if (sc.MaxAge > 0 && sc.Duplicates > sc.MaxAge)
        sc.Duplicates = sc.MaxAge;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    st = js_GetStreamInfo(&si, x->js, x->stream, NULL, &jerr);
    if (x->o.read_only && st != NATS_OK) {
        snprintf(err, errcap, "no stream %s on NATS: %s", x->stream, why(st, b, sizeof b));
        natsOptions_Destroy(opts);
        nats_free(x);
        return jerr == JSStreamNotFoundErr ? STORE_NOTFOUND : STORE_EIO;
    }
    if (x->o.read_only) {
        /* (a reader: the stream as it is) */
    } else if (st != NATS_OK && jerr == JSStreamNotFoundErr) {
        st = js_AddStream(&si, x->js, &sc, NULL, &jerr);
        if (st != NATS_OK) {
            snprintf(err, errcap, "cannot make stream %s (replicas %u) on NATS: %s", x->stream,
                     x->no.replicas, why(st, b, sizeof b));
            goto fail;
        }
    } else if (st != NATS_OK) {
        snprintf(err, errcap, "cannot read stream %s on NATS (is JetStream on? nats-server -js): "
                 "%s", x->stream, why(st, b, sizeof b));
        goto fail;
    } else if (!same_config(si->Config, &sc)) {
        jsStreamInfo_Destroy(si);
        si = NULL;
        st = js_UpdateStream(&si, x->js, &sc, NULL, &jerr);
        if (st != NATS_OK) {
            snprintf(err, errcap, "stream %s exists on NATS with other settings, and cannot be "
                     "changed to the bus's (replicas %u): %s", x->stream, x->no.replicas,
                     why(st, b, sizeof b));
            goto fail;
        }
    }
    jsStreamInfo_Destroy(si);
    natsOptions_Destroy(opts);
    *out = &x->base;
    return STORE_OK;
fail:
    natsOptions_Destroy(opts);
    nats_free(x);
    return STORE_EIO;
}
