/*
 * nats.c — NATS as a source of events and as a target (nats.h), through libnats.
 *
 * A source takes messages from core NATS (a subscription, with an optional queue group) or
 * from a JetStream stream (a durable pull consumer), and hands each to its bus as a CloudEvent:
 *
 *   - Core NATS is at most once: a message is taken as the server pushes it; one the bus
 *     cannot store (SRC_RETRY), or one the server drops while the source is away or too slow,
 *     is lost (and logged).
 *   - JetStream is at least once: the source reads a durable pull consumer (explicit acks,
 *     from the stream's first message, the subject as its filter; made if it is not there, its
 *     ack wait and filter set if they differ) and acknowledges a message only once the bus
 *     stored it (or refused it for good); a message the bus cannot store now is given back
 *     with a delay (a negative acknowledgement), growing while the bus keeps failing.  A
 *     message in hand when the source stops, or when the connection drops, is given again
 *     after the ack wait; its event's id is the same each time, so the bus's de-duplication
 *     window drops a copy it stored already.
 *
 * The event made of a message follows the CloudEvents NATS protocol binding (1.0.3: header
 * names are matched without regard to case):
 *
 *   - Structured mode: a Content-Type header whose media type starts with
 *     application/cloudevents (application/cloudevents+json): the payload is the event,
 *     taken as it is (a batch, or a format other than JSON, is refused by the bus).
 *   - Binary mode: a ce-specversion header.  Each ce-NAME header is the attribute NAME (its
 *     value unquoted if double-quoted, then percent-decoded; bytes that are not UTF-8 after
 *     decoding make the message malformed), the payload is the data, whose media type is the
 *     ce-datacontenttype header (the binding's) or else Content-Type.  The event is written
 *     in the JSON format: every attribute as a string, the data as JSON, text or base64 as
 *     for any source (src_event_json).  A specversion other than 1.0, an attribute name
 *     other than a-z and 0-9, or an undecodable value makes the message malformed: it is
 *     logged and dropped (acknowledged), never given to the bus.  Missing id, source or type
 *     leave the bus to refuse the event.
 *   - A payload that is a JSON object with a "specversion" member, in a message with neither
 *     a Content-Type nor a ce-specversion header: the structured mode as well.  Version 1.0.2
 *     of the binding knew no other mode, and publishers written to it (or to servers before
 *     2.2, which had no headers) send an event so; a JSON document of one's own that merely
 *     has such a member is refused by the bus rather than wrapped.
 *   - Any other message is wrapped in a new event:
 *       id       JetStream: its Nats-Msg-Id header when it has one, else "STREAM:SEQUENCE"
 *                (both the same at each redelivery); core: 32 hexadecimal digits hashing a
 *                random number of the source's, a counter, the time, the subject and the
 *                payload (unique)
 *       source   "nats://HOST:PORT" of the first server URL (less any user and password);
 *                JetStream adds "/STREAM", the context in which sequences are unique, so
 *                that source and id together name one message of one stream.  (Not the
 *                server the connection landed on: every server of a cluster gives the same
 *                message the same source, which de-duplication needs.)
 *       type     "nats.message"
 *       subject  the message's NATS subject
 *       time     JetStream: when the stream stored it; core: when it was received
 *       data     the payload, with the Content-Type header's media type if there is one
 *                (JSON as JSON, text as a string, anything else as data_base64; no payload:
 *                no data)
 *
 * A target publishes one message per event (natspub_send): on core NATS it is delivered once
 * a flush behind it came back (the server routed it: at most once to its subscribers); on
 * JetStream once the stream acknowledged it, with the event's id as Nats-Msg-Id so that the
 * stream drops a retried copy.
 *
 * Connections reconnect for ever (every 250 ms, to any server given); the first connection is
 * made in the background too, so that a source or target can start before its server.  No
 * reconnect buffer: a publish while disconnected fails at once.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "nats.h"

#define FETCH_BATCH 64            /* JetStream messages asked for at once when some wait */
#define WAIT_MS 1000              /* a fetch, or a core subscription, waits this long at most */
#define SETUP_RETRY_MS 1000       /* a consumer or subscription that could not be made */
#define RETRY_FIRST_MS 250        /* the bus could not store: the first delay, doubled ... */
#define RETRY_MAX_MS 10000        /* ... up to this */
#define FETCH_ERRORS_MAX 3        /* failed fetches while connected before binding again */
#define PUB_TIMEOUT_MS 5000
#define CORE_PENDING_MSGS 65536   /* core messages waiting in the client before it drops */
#define CORE_PENDING_BYTES (256 << 20)
#define LOG_AGAIN_MS 60000        /* the same failure is logged again after this */

/* ---- the event of a message -------------------------------------------------------------- */

/* The first value of header name (any case), or NULL. */
static const char *header(const natsrc_msg *m, const char *name)
{
    for (size_t i = 0; i < m->nh; i++)
        if (!strcasecmp(m->hnames[i], name))
            return m->hvalues[i];
    return NULL;
}

/* Does content type ct name a CloudEvents format (application/cloudevents[+format])? */
static bool ce_media(const char *ct)
{
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return !strncasecmp(ct, "application/cloudevents", 23);
}

/* A binary-mode header value as the binding writes it (ce_header_value: its quoted strings
 * unescaped, then percent-decoded; white space around it dropped), and UTF-8 without NUL.
 * Appends it, NUL-terminated, to out. */
static bool decode_value(const char *v, sbuf *out)
{
    size_t n = strlen(v), len = 0, at;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    while (n && (*v == ' ' || *v == '\t'))
        v++, n--;
    char *dec = malloc(n + 1);
    if (!dec)
        out->oom = true;   /* (the caller tells no memory from a bad value by it) */
    bool ok = dec && ce_header_value(v, n, dec, &len, &at) == CE_HV_OK;
    size_t start = out->n;
    if (ok)
        sb_put(out, dec, len);
    free(dec);
    for (size_t i = start; ok && !out->oom && i < out->n;) {
        uint32_t cp;
        size_t k = vm_utf8_decode(out->v + i, out->n - i, &cp);
        ok = k > 0 && cp != 0;    /* (a NUL would end the value short) */
        i += k;
    }
    sb_put(out, "", 1);
    return ok;
}

static bool attr_name_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9')))
            return false;
    return true;
}

/* The binary mode's event: the ce- headers' attributes around the payload. */
static int binary_event(const natsrc_msg *m, const char *ct, sbuf *out, char *why, size_t cap)
{
    size_t na = 0, *off = calloc(m->nh ? m->nh : 1, 2 * sizeof *off);
    sbuf text = { 0 };            /* name\0value\0 of each attribute, at off[2i], off[2i+1] */
    int rc = off ? 1 : -1;
    for (size_t i = 0; rc == 1 && i < m->nh; i++) {
        const char *h = m->hnames[i];
        if (strncasecmp(h, "ce-", 3) || !h[3])
            continue;
        size_t name_at = text.n;
        for (const char *p = h + 3; *p; p++) {
            char c = (char)tolower((unsigned char)*p);
            sb_put(&text, &c, 1);
        }
        sb_put(&text, "", 1);
        if (text.oom) {
            rc = -1;
            break;
        }
        bool again = false;       /* (a repeated header: its first value counts) */
        for (size_t k = 0; k < na && !again; k++)
            again = !strcmp(text.v + off[2 * k], text.v + name_at);
        if (again) {
            text.n = name_at;
            continue;
        }
        if (!attr_name_ok(text.v + name_at) || !strcmp(text.v + name_at, "data")) {
            snprintf(why, cap, "binary-mode CloudEvent with header %s: an attribute's name is "
                     "of a-z and 0-9 only", h);
            rc = 0;
            break;
        }
        size_t value_at = text.n;
        if (!decode_value(m->hvalues[i], &text)) {
            snprintf(why, cap, "binary-mode CloudEvent with header %s: its value is not "
                     "percent-encoded UTF-8", h);
            rc = text.oom ? -1 : 0;
            break;
        }
        off[2 * na] = name_at;
        off[2 * na + 1] = value_at;
        na++;
    }
    const char **names = rc == 1 ? calloc(na + 1, sizeof *names) : NULL;
    const char **values = names ? calloc(na + 1, sizeof *values) : NULL;
    if (rc == 1 && (!values || text.oom))
        rc = -1;
    src_ce e = { .id = "", .source = "", .type = "", .content_type = NULL };
    const char *spec = NULL, *dct = NULL;
    size_t next = 0;
    for (size_t k = 0; rc == 1 && k < na; k++) {
        const char *nm = text.v + off[2 * k], *v = text.v + off[2 * k + 1];
        if (!strcmp(nm, "specversion"))
            spec = v;
        else if (!strcmp(nm, "id"))
            e.id = v;
        else if (!strcmp(nm, "source"))
            e.source = v;
        else if (!strcmp(nm, "type"))
            e.type = v;
        else if (!strcmp(nm, "subject"))
            e.subject = v;
        else if (!strcmp(nm, "datacontenttype"))
            dct = v;
        else {
            names[next] = nm;
            values[next++] = v;
        }
    }
    if (rc == 1 && (!spec || strcmp(spec, "1.0"))) {
        snprintf(why, cap, "binary-mode CloudEvent of specversion \"%s\": only 1.0 is known",
                 spec ? spec : "");
        rc = 0;
    }
    if (rc == 1) {
        e.content_type = dct ? dct : ct;
        e.data = m->data;
        e.n = m->n;
        e.ext_names = names;
        e.ext_values = values;
        e.next = next;
        rc = src_event_json(out, &e) ? 1 : -1;
    }
    free(names);
    free(values);
    free(off);
    sb_free(&text);
    return rc;
}

int natsrc_event(const natsrc_msg *m, sbuf *out, char *why, size_t cap)
{
    const char *ct = header(m, "Content-Type");
    bool structured = ct ? ce_media(ct)
                    : !header(m, "ce-specversion") && src_json_event(m->data, m->n);
    if (structured) {
        sb_put(out, m->data, m->n);
        return out->oom ? -1 : 1;
    }
    if (header(m, "ce-specversion"))
        return binary_event(m, ct, out, why, cap);
    const char *id = m->id;
    const char *msg_id = m->jetstream ? header(m, "Nats-Msg-Id") : NULL;
    if (msg_id && *msg_id)
        id = msg_id;
    src_ce e = { .id = id, .source = m->source, .type = "nats.message", .subject = m->subject,
                 .time_ms = m->time_ms, .content_type = ct, .data = m->data, .n = m->n };
    return src_event_json(out, &e) ? 1 : -1;
}

/* ---- connections ------------------------------------------------------------------------- */

typedef struct {
    const char *const *urls;
    size_t nurls;
    const char *user, *password, *token, *creds, *name;
    natsConnectionHandler on_down, on_up, on_closed;   /* (may be NULL) */
    void *arg;
} conn_conf;

/* The client's words for st, with its last error's text when it has one. */
static const char *status_text(natsStatus st, char *buf, size_t cap)
{
    natsStatus ls;
    const char *t = nats_GetLastError(&ls);
    snprintf(buf, cap, "%s%s%s", natsStatus_GetText(st), t && *t ? ": " : "", t ? t : "");
    return buf;
}

/* What can never connect: no server, an empty URL, credentials that cannot be read. */
static bool conn_conf_ok(const conn_conf *c, char *err, size_t cap)
{
    if (!c->urls || !c->nurls) {
        snprintf(err, cap, "NATS: no server URL");
        return false;
    }
    for (size_t i = 0; i < c->nurls; i++)
        if (!c->urls[i] || !*c->urls[i]) {
            snprintf(err, cap, "NATS: an empty server URL");
            return false;
        }
    if (c->creds && access(c->creds, R_OK) != 0) {
        snprintf(err, cap, "NATS: cannot read the credentials file %s: %s", c->creds,
                 strerror(errno));
        return false;
    }
    return true;
}

static void no_op(natsConnection *nc, void *arg)
{
    (void)nc;
    (void)arg;
}

/* A connection made in the background if the servers are not there yet, reconnecting for
 * ever.  Fails only when the client refuses the options (a URL it cannot parse). */
static bool conn_open(const conn_conf *c, natsConnection **nc, char *err, size_t cap)
{
    natsOptions *o = NULL;
    char b[300];
    natsStatus st = natsOptions_Create(&o);
    if (st == NATS_OK)
        st = natsOptions_SetServers(o, (const char **)c->urls, (int)c->nurls);
    if (st == NATS_OK && c->name)
        st = natsOptions_SetName(o, c->name);
    if (st == NATS_OK && c->user)
        st = natsOptions_SetUserInfo(o, c->user, c->password ? c->password : "");
    if (st == NATS_OK && c->token)
        st = natsOptions_SetToken(o, c->token);
    if (st == NATS_OK && c->creds)
        st = natsOptions_SetUserCredentialsFromFiles(o, c->creds, NULL);
    if (st == NATS_OK)
        st = natsOptions_SetTimeout(o, 2000);
    if (st == NATS_OK)
        st = natsOptions_SetMaxReconnect(o, -1);
    if (st == NATS_OK)
        st = natsOptions_SetReconnectWait(o, 250);
    if (st == NATS_OK)         /* (a publish while away fails, rather than wait in a buffer) */
        st = natsOptions_SetReconnectBufSize(o, 0);
    /* (with no callback for the first connection, libnats waits for it in Connect) */
    if (st == NATS_OK)
        st = natsOptions_SetRetryOnFailedConnect(o, true, c->on_up ? c->on_up : no_op, c->arg);
    if (st == NATS_OK && c->on_down)
        st = natsOptions_SetDisconnectedCB(o, c->on_down, c->arg);
    if (st == NATS_OK && c->on_up)
        st = natsOptions_SetReconnectedCB(o, c->on_up, c->arg);
    if (st == NATS_OK && c->on_closed)
        st = natsOptions_SetClosedCB(o, c->on_closed, c->arg);
    if (st == NATS_OK)
        st = natsOptions_SetSendAsap(o, true);
    if (st == NATS_OK) {
        st = natsConnection_Connect(nc, o);
        if (st == NATS_NOT_YET_CONNECTED)
            st = NATS_OK;
    }
    if (st != NATS_OK)
        snprintf(err, cap, "NATS (%s%s): %s", c->urls[0], c->nurls > 1 ? " ..." : "",
                 status_text(st, b, sizeof b));
    natsOptions_Destroy(o);
    return st == NATS_OK;
}

static bool connected(natsConnection *nc)
{
    return nc && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED;
}

/* ---- names the server would refuse --------------------------------------------------------- */

/* A subject: tokens of printable characters between dots, none empty; with wildcards ('*' a
 * whole token, '>' the whole last one) only when allowed. */
static bool subject_ok(const char *s, bool wildcards)
{
    if (!s || !*s)
        return false;
    for (const char *t = s;;) {
        size_t n = strcspn(t, ".");
        if (n == 0)
            return false;
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)t[i] <= ' ' || t[i] == 127)
                return false;
        if (memchr(t, '*', n) || memchr(t, '>', n)) {
            if (!wildcards || n != 1 || (t[0] == '>' && t[1]))
                return false;
        }
        if (!t[n])
            return true;
        t += n + 1;
    }
}

/* A stream or consumer name: no dots, wildcards, slashes or blanks. */
static bool js_name_ok(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == 127 || strchr(".*>/\\", *s))
            return false;
    return true;
}

/* "nats://HOST:PORT" of a URL as given (scheme kept or added, user and path dropped). */
static char *url_origin(const char *url)
{
    size_t n = strcspn(url, ",");
    const char *p = strstr(url, "://");
    const char *scheme = "nats";
    size_t sn = 4;
    const char *host = url;
    if (p && (size_t)(p - url) < n) {
        scheme = url;
        sn = (size_t)(p - url);
        host = p + 3;
    }
    size_t hn = (size_t)(url + n - host);
    hn = strcspn(host, "/?#") < hn ? strcspn(host, "/?#") : hn;
    const char *at = memchr(host, '@', hn);
    if (at) {
        hn -= (size_t)(at + 1 - host);
        host = at + 1;
    }
    char *o = malloc(sn + hn + 4);
    if (o)
        snprintf(o, sn + hn + 4, "%.*s://%.*s", (int)sn, scheme, (int)hn, host);
    for (char *c = o; c && c < o + sn; c++)
        *c = (char)tolower((unsigned char)*c);
    return o;
}

/* ---- the source ---------------------------------------------------------------------------- */

struct natsrc {
    char *name, *subject, *queue, *stream, *consumer, *source_attr;
    int64_t ack_wait_ns;
    src_sink sink;
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *sub;        /* the worker's; set up and torn down by it */
    pthread_t worker;
    pthread_mutex_t mu;           /* with cv: naps that natsrc_stop cuts short */
    pthread_cond_t cv;
    _Atomic bool stop, ready;
    bool closed;                  /* (under mu) the client's last callback has been made */
    unsigned char nonce[16];      /* core ids: this source's own, whatever its counter says */
    uint64_t counter;
    int64_t retry_ms;             /* the delay of the next negative acknowledgement */
    int fetch_errors;
    char last_why[512];           /* the setup failure last logged, and when */
    int64_t last_logged_ms;
};

/* Waits ms, or less if the source is told to stop. */
static void nap(natsrc *s, int64_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    long ns = until.tv_nsec + (long)(ms % 1000) * 1000000L;
    until.tv_sec += ms / 1000 + ns / 1000000000L;
    until.tv_nsec = ns % 1000000000L;
    pthread_mutex_lock(&s->mu);
    while (!atomic_load(&s->stop) &&
           pthread_cond_timedwait(&s->cv, &s->mu, &until) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&s->mu);
}

static void log_text(const char *key, const char *v, char *buf, size_t cap)
{
    char t[300];
    snprintf(buf, cap, " %s=\"%s\"", key, ebd_log_text(v ? v : "", t, sizeof t));
}

/* A setup failure: logged when it is new, and again every LOG_AGAIN_MS while it lasts. */
static void setup_failed(natsrc *s, const char *why)
{
    int64_t now = ebd_mono_ms();
    if (!strcmp(why, s->last_why) && now - s->last_logged_ms < LOG_AGAIN_MS)
        return;
    snprintf(s->last_why, sizeof s->last_why, "%s", why);
    s->last_logged_ms = now;
    char w[340];
    log_text("error", why, w, sizeof w);
    ebd_log(EBD_WARN, "msg=\"nats source not subscribed yet; trying again\" source=%s%s",
            s->name, w);
}

static void on_down(natsConnection *nc, void *arg)
{
    (void)nc;
    natsrc *s = arg;
    if (!atomic_load(&s->stop))
        ebd_log(EBD_WARN, "msg=\"nats source disconnected; reconnecting\" source=%s", s->name);
}

static void on_up(natsConnection *nc, void *arg)
{
    (void)nc;
    ebd_log(EBD_INFO, "msg=\"nats source connected\" source=%s", ((natsrc *)arg)->name);
}

/* The client's last callback for the connection: after it, s may go. */
static void on_closed(natsConnection *nc, void *arg)
{
    (void)nc;
    natsrc *s = arg;
    pthread_mutex_lock(&s->mu);
    s->closed = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* JetStream: the durable consumer made (or set to this source's ack wait and filter), and a
 * pull subscription bound to it, which does not own it (one made by js_PullSubscribe itself
 * would be deleted with the subscription, and its position with it). */
static bool bind_consumer(natsrc *s, char *why, size_t cap)
{
    char b[300];
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = s->consumer;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = s->ack_wait_ns;
    cc.MaxDeliver = -1;
    cc.DeliverPolicy = js_DeliverAll;
    cc.FilterSubject = s->subject;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetConsumerInfo(&ci, s->js, s->stream, s->consumer, NULL, &jerr);
    if (st != NATS_OK && jerr == JSConsumerNotFoundErr) {
        st = js_AddConsumer(&ci, s->js, s->stream, &cc, NULL, &jerr);
    } else if (st == NATS_OK && ci->Config &&
               (ci->Config->AckWait != cc.AckWait ||
                strcmp(ci->Config->FilterSubject ? ci->Config->FilterSubject : "",
                       s->subject ? s->subject : ""))) {
        jsConsumerInfo_Destroy(ci);
        ci = NULL;
        st = js_UpdateConsumer(&ci, s->js, s->stream, &cc, NULL, &jerr);
    }
    bool push = st == NATS_OK && ci && ci->Config && ci->Config->DeliverSubject &&
                *ci->Config->DeliverSubject;
    jsConsumerInfo_Destroy(ci);
    if (st != NATS_OK || push) {
        snprintf(why, cap, "consumer %s of stream %s: %s", s->consumer, s->stream,
                 push ? "a push consumer (a pull consumer is needed)"
                 : jerr == JSStreamNotFoundErr ? "no such stream" : status_text(st, b, sizeof b));
        return false;
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = s->stream;
    so.Consumer = s->consumer;
    so.ManualAck = true;
    st = js_PullSubscribe(&s->sub, s->js, NULL, s->consumer, NULL, &so, &jerr);
    if (st != NATS_OK) {
        s->sub = NULL;
        snprintf(why, cap, "consumer %s of stream %s: %s", s->consumer, s->stream,
                 status_text(st, b, sizeof b));
        return false;
    }
    return true;
}

/* Core NATS: the subscription (the client makes it again on each reconnection). */
static bool subscribe_core(natsrc *s, char *why, size_t cap)
{
    char b[300];
    natsStatus st = s->queue
        ? natsConnection_QueueSubscribeSync(&s->sub, s->nc, s->subject, s->queue)
        : natsConnection_SubscribeSync(&s->sub, s->nc, s->subject);
    if (st == NATS_OK)
        st = natsSubscription_SetPendingLimits(s->sub, CORE_PENDING_MSGS, CORE_PENDING_BYTES);
    if (st != NATS_OK) {
        natsSubscription_Destroy(s->sub);
        s->sub = NULL;
        snprintf(why, cap, "subject %s: %s", s->subject, status_text(st, b, sizeof b));
        return false;
    }
    return true;
}

static bool setup(natsrc *s)
{
    char why[512];
    if (!connected(s->nc))
        snprintf(why, sizeof why, "not connected to a NATS server");
    else if (s->stream ? bind_consumer(s, why, sizeof why) : subscribe_core(s, why, sizeof why)) {
        s->last_why[0] = 0;
        s->fetch_errors = 0;
        atomic_store(&s->ready, true);
        ebd_log(EBD_INFO, "msg=\"nats source subscribed\" source=%s %s=%s", s->name,
                s->stream ? "stream" : "subject", s->stream ? s->stream : s->subject);
        return true;
    }
    setup_failed(s, why);
    return false;
}

/* The message's headers as parallel name and value lists (malloc'd; the strings are m's).
 * Out of memory: fewer headers. */
static void headers_of(natsMsg *m, natsrc_msg *x)
{
    const char **keys = NULL, **names = NULL, **values = NULL;
    int nk = 0;
    size_t n = 0;
    if (natsMsgHeader_Keys(m, &keys, &nk) != NATS_OK)
        nk = 0;
    for (int i = 0; i < nk; i++) {
        const char **v = NULL;
        int nv = 0;
        if (natsMsgHeader_Values(m, keys[i], &v, &nv) != NATS_OK)
            continue;
        const char **nn = realloc(names, (n + (size_t)nv) * sizeof *nn);
        names = nn ? nn : names;
        const char **vv = nn ? realloc(values, (n + (size_t)nv) * sizeof *vv) : NULL;
        values = vv ? vv : values;
        for (int k = 0; vv && k < nv; k++) {
            names[n] = keys[i];
            values[n++] = v[k];
        }
        free((void *)v);
    }
    free((void *)keys);
    x->hnames = names;
    x->hvalues = values;
    x->nh = n;
}

/* Hands message m's event to the bus.  A malformed message is logged and counts as refused. */
static src_result take(natsrc *s, natsMsg *m)
{
    natsrc_msg x = { .subject = natsMsg_GetSubject(m), .data = natsMsg_GetData(m),
                     .n = (size_t)natsMsg_GetDataLength(m), .source = s->source_attr,
                     .jetstream = s->stream != NULL, .time_ms = ebd_wall_ms() };
    char id[64];
    jsMsgMetaData *md = NULL;
    if (s->stream && natsMsg_GetMetaData(&md, m) == NATS_OK) {
        snprintf(id, sizeof id, "%s:%" PRIu64, s->stream, md->Sequence.Stream);
        if (md->Timestamp > 0)
            x.time_ms = md->Timestamp / 1000000;
        jsMsgMetaData_Destroy(md);
    } else {
        uint64_t k = s->counter++;
        const void *parts[5] = { s->nonce, &k, &x.time_ms, x.subject, x.data };
        size_t lens[5] = { sizeof s->nonce, sizeof k, sizeof x.time_ms, strlen(x.subject), x.n };
        src_hash_id(id, parts, lens, 5);
    }
    x.id = id;
    headers_of(m, &x);
    sbuf ev = { 0 };
    char why[300] = "";
    int made = natsrc_event(&x, &ev, why, sizeof why);
    src_result r = made > 0 ? s->sink.append(s->sink.arg, ev.v, ev.n, why, sizeof why)
                 : made == 0 ? SRC_REFUSED : SRC_RETRY;
    if (made == 0) {
        char w[340], subj[340];
        log_text("error", why, w, sizeof w);
        log_text("subject", x.subject, subj, sizeof subj);
        ebd_log(EBD_WARN, "msg=\"nats message dropped: not a CloudEvent\" source=%s%s%s",
                s->name, subj, w);
    }
    free((void *)x.hnames);
    free((void *)x.hvalues);
    sb_free(&ev);
    return r;
}

static void core_step(natsrc *s)
{
    natsMsg *m = NULL;
    natsStatus st = natsSubscription_NextMsg(&m, s->sub, WAIT_MS);
    if (st == NATS_OK) {
        if (take(s, m) == SRC_RETRY)
            ebd_log(EBD_WARN, "msg=\"nats message lost: the bus could not store it (core NATS "
                    "is at most once)\" source=%s", s->name);
        natsMsg_Destroy(m);
    } else if (st == NATS_SLOW_CONSUMER) {
        ebd_log(EBD_WARN, "msg=\"nats messages dropped: the source fell behind (core NATS is "
                "at most once)\" source=%s", s->name);
    } else if (st != NATS_TIMEOUT) {
        nap(s, 250);              /* (closed for the stop, or away) */
    }
}

/* JetStream: the bus could not store list[i]: it and the rest are given back for later. */
static void give_back(natsrc *s, natsMsgList *l, int i)
{
    for (; i < l->Count; i++)
        natsMsg_NakWithDelay(l->Msgs[i], s->retry_ms, NULL);
    nap(s, s->retry_ms);
    s->retry_ms = s->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : s->retry_ms * 2;
}

static void js_batch(natsrc *s, natsMsgList *l)
{
    for (int i = 0; i < l->Count && !atomic_load(&s->stop); i++) {
        src_result r = take(s, l->Msgs[i]);
        if (r == SRC_RETRY) {
            give_back(s, l, i);
            return;
        }
        s->retry_ms = RETRY_FIRST_MS;
        /* (an acknowledgement lost now only makes the message come again, and the bus's
         * de-duplication drops it: not worth a round trip for each) */
        natsMsg_Ack(l->Msgs[i], NULL);
    }
}

/* What waits, in one batch without waiting; when nothing does, the first message to come. */
static void js_step(natsrc *s)
{
    natsMsgList l = { 0 };
    jsFetchRequest rq;
    jsFetchRequest_Init(&rq);
    rq.Batch = FETCH_BATCH;
    rq.NoWait = true;
    rq.Expires = (int64_t)WAIT_MS * 1000000;
    natsStatus st = natsSubscription_FetchRequest(&l, s->sub, &rq);
    if (st == NATS_NOT_FOUND || st == NATS_TIMEOUT)
        st = natsSubscription_Fetch(&l, s->sub, 1, WAIT_MS, NULL);
    if (st == NATS_OK) {
        s->fetch_errors = 0;
        js_batch(s, &l);
        natsMsgList_Destroy(&l);
        return;
    }
    if (st == NATS_TIMEOUT || atomic_load(&s->stop))
        return;
    if (connected(s->nc) && ++s->fetch_errors >= FETCH_ERRORS_MAX) {
        /* connected, yet the consumer does not answer: it may be gone (a server that lost
         * its storage): make it again */
        char b[300], w[340];
        log_text("error", status_text(st, b, sizeof b), w, sizeof w);
        ebd_log(EBD_WARN, "msg=\"nats source cannot fetch; binding again\" source=%s%s",
                s->name, w);
        atomic_store(&s->ready, false);
        natsSubscription_Destroy(s->sub);
        s->sub = NULL;
    }
    nap(s, 250);
}

static void *run(void *arg)
{
    natsrc *s = arg;
    while (!atomic_load(&s->stop)) {
        if (!s->sub && !setup(s)) {
            nap(s, SETUP_RETRY_MS);
            continue;
        }
        if (s->stream)
            js_step(s);
        else
            core_step(s);
    }
    return NULL;
}

static void natsrc_free(natsrc *s)
{
    natsSubscription_Destroy(s->sub);
    jsCtx_Destroy(s->js);
    natsConnection_Destroy(s->nc);
    free(s->name);
    free(s->subject);
    free(s->queue);
    free(s->stream);
    free(s->consumer);
    free(s->source_attr);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

/* Closes the connection and frees s once the client's callbacks are over: it makes them on a
 * thread of its own, in order, the closed one last, so one may still be on its way to s. */
static void release(natsrc *s)
{
    natsConnection_Close(s->nc);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&s->mu);
    while (s->nc && !s->closed && pthread_cond_timedwait(&s->cv, &s->mu, &until) != ETIMEDOUT)
        ;
    bool closed = s->closed || !s->nc;
    pthread_mutex_unlock(&s->mu);
    if (!closed) {                /* (never seen; kept rather than freed under a callback) */
        ebd_log(EBD_ERROR, "msg=\"nats source: the client did not close; its memory is kept\" "
                "source=%s", s->name);
        return;
    }
    natsrc_free(s);
}

static bool src_conf_ok(const natsrc_conf *c, char *err, size_t cap)
{
    if (!c->name || !*c->name)
        snprintf(err, cap, "a NATS source needs a name");
    else if (!c->stream && !subject_ok(c->subject, true))
        snprintf(err, cap, "NATS source %s: %s subject \"%s\"", c->name,
                 c->subject ? "an invalid" : "no", c->subject ? c->subject : "");
    else if (c->stream && c->subject && !subject_ok(c->subject, true))
        snprintf(err, cap, "NATS source %s: an invalid subject \"%s\"", c->name, c->subject);
    else if (c->stream && !js_name_ok(c->stream))
        snprintf(err, cap, "NATS source %s: an invalid stream name \"%s\"", c->name, c->stream);
    else if (c->stream && c->consumer && !js_name_ok(c->consumer))
        snprintf(err, cap, "NATS source %s: an invalid consumer name \"%s\"", c->name,
                 c->consumer);
    else if (c->stream && c->queue)
        snprintf(err, cap, "NATS source %s: a queue group is for core NATS (a JetStream "
                 "consumer is shared by whoever reads it)", c->name);
    else if (c->queue && !js_name_ok(c->queue))
        snprintf(err, cap, "NATS source %s: an invalid queue group \"%s\"", c->name, c->queue);
    else if (c->ack_wait_ms < 0)
        snprintf(err, cap, "NATS source %s: a negative ack wait", c->name);
    else
        return true;
    return false;
}

/* The default durable: "ebr-NAME", what the server refuses in a name made '_'. */
static char *default_consumer(const char *name)
{
    size_t n = strlen(name) + 5;
    char *d = malloc(n);
    if (!d)
        return NULL;
    snprintf(d, n, "ebr-%s", name);
    for (char *p = d; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 127 || strchr(".*>/\\", *p))
            *p = '_';
    return d;
}

static char *dup_or_null(const char *s, bool *oom)
{
    char *d = s ? strdup(s) : NULL;
    *oom |= s && !d;
    return d;
}

natsrc *natsrc_start(const natsrc_conf *c, src_sink sink, char *err, size_t cap)
{
    conn_conf cc = { c->urls, c->nurls, c->user, c->password, c->token, c->creds, c->name,
                     on_down, on_up, on_closed, NULL };
    if (!src_conf_ok(c, err, cap) || !conn_conf_ok(&cc, err, cap))
        return NULL;
    natsrc *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    bool oom = false;
    s->name = dup_or_null(c->name, &oom);
    s->subject = dup_or_null(c->subject, &oom);
    s->queue = dup_or_null(c->queue, &oom);
    s->stream = dup_or_null(c->stream, &oom);
    s->consumer = c->consumer ? dup_or_null(c->consumer, &oom) : default_consumer(c->name);
    s->ack_wait_ns = (c->ack_wait_ms ? c->ack_wait_ms : 30000) * (int64_t)1000000;
    s->sink = sink;
    s->retry_ms = RETRY_FIRST_MS;
    char *origin = url_origin(c->urls[0]);
    if (origin && s->stream) {
        size_t n = strlen(origin) + strlen(s->stream) + 2;
        s->source_attr = malloc(n);
        if (s->source_attr)
            snprintf(s->source_attr, n, "%s/%s", origin, s->stream);
        free(origin);
    } else {
        s->source_attr = origin;
    }
    if (getrandom(s->nonce, sizeof s->nonce, 0) != (ssize_t)sizeof s->nonce) {
        int64_t t[2] = { ebd_wall_ms(), (int64_t)getpid() ^ (int64_t)(uintptr_t)s };
        memcpy(s->nonce, t, sizeof s->nonce);
    }
    if (oom || !s->consumer || !s->source_attr) {
        snprintf(err, cap, "out of memory");
        natsrc_free(s);
        return NULL;
    }
    cc.arg = s;
    char b[300];
    natsStatus st = NATS_OK;
    if (!conn_open(&cc, &s->nc, err, cap) ||
        (s->stream && (st = natsConnection_JetStream(&s->js, s->nc, NULL)) != NATS_OK)) {
        if (st != NATS_OK)
            snprintf(err, cap, "NATS JetStream: %s", status_text(st, b, sizeof b));
        release(s);
        return NULL;
    }
    if (pthread_create(&s->worker, NULL, run, s) != 0) {
        snprintf(err, cap, "cannot start a thread: %s", strerror(errno));
        release(s);
        return NULL;
    }
    return s;
}

void natsrc_stop(natsrc *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->stop, true);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    /* Closed first: a fetch or a wait for the next message returns at once, and nothing
     * taken from now on is acknowledged. */
    natsConnection_Close(s->nc);
    pthread_join(s->worker, NULL);
    release(s);
}

bool natsrc_connected(const natsrc *s)
{
    return s && atomic_load(&s->ready) && connected(s->nc);
}

/* ---- the target ---------------------------------------------------------------------------- */

struct natspub {
    natsConnection *nc;
    jsCtx *js;                    /* JetStream: publishes wait for the stream's acknowledgement */
};

natspub *natspub_open(const natspub_conf *c, char *err, size_t cap)
{
    conn_conf cc = { c->urls, c->nurls, c->user, c->password, c->token, c->creds, NULL,
                     NULL, NULL, NULL, NULL };
    if (!conn_conf_ok(&cc, err, cap))
        return NULL;
    natspub *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    char b[300];
    natsStatus st = NATS_OK;
    if (!conn_open(&cc, &p->nc, err, cap) ||
        (c->jetstream && (st = natsConnection_JetStream(&p->js, p->nc, NULL)) != NATS_OK)) {
        if (st != NATS_OK)
            snprintf(err, cap, "NATS JetStream: %s", status_text(st, b, sizeof b));
        natspub_close(p);
        return NULL;
    }
    return p;
}

int natspub_send(natspub *p, const char *subject, const void *data, size_t n,
                 const char *content_type, const char *msg_id, long timeout_ms, char *why,
                 size_t cap)
{
    if (!subject_ok(subject, false)) {
        snprintf(why, cap, "not a subject to publish to: \"%s\"", subject ? subject : "");
        return -1;
    }
    if (!connected(p->nc)) {
        snprintf(why, cap, "not connected to a NATS server");
        return -1;
    }
    if (timeout_ms <= 0)
        timeout_ms = PUB_TIMEOUT_MS;
    char b[300];
    natsMsg *m = NULL;
    natsStatus st = natsMsg_Create(&m, subject, NULL, data, (int)n);
    if (st == NATS_OK && content_type && *content_type)
        st = natsMsgHeader_Set(m, "Content-Type", content_type);
    if (st == NATS_OK && msg_id && *msg_id)
        st = natsMsgHeader_Set(m, "Nats-Msg-Id", msg_id);
    if (st == NATS_OK && p->js) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = timeout_ms;
        jsPubAck *pa = NULL;
        jsErrCode jerr = 0;
        st = js_PublishMsg(&pa, p->js, m, &po, &jerr);
        jsPubAck_Destroy(pa);
    } else if (st == NATS_OK) {
        st = natsConnection_PublishMsg(p->nc, m);
        /* the server answers a flush after it handled what came before it */
        if (st == NATS_OK)
            st = natsConnection_FlushTimeout(p->nc, timeout_ms);
    }
    natsMsg_Destroy(m);
    if (st != NATS_OK) {
        snprintf(why, cap, "%s %s: %s", p->js ? "JetStream did not store the message on"
                 : "NATS did not take the message on", subject, status_text(st, b, sizeof b));
        return -1;
    }
    return 0;
}

void natspub_close(natspub *p)
{
    if (!p)
        return;
    jsCtx_Destroy(p->js);
    natsConnection_Destroy(p->nc);
    free(p);
}
