/*
 * ingest.c — the daemon's HTTP side (libmicrohttpd, a pool of epoll threads, keep-alive):
 *
 *   POST /v1/buses/{bus}/events      CloudEvents 1.0 over HTTP: binary, structured or batched
 *                                    mode, chosen by the content type as the binding says
 *   POST /v1/buses/{bus}/put-events  {"entries": [event, ...]}, answered entry by entry
 *   POST /v1/admin/reload            load the rules again (admin token)
 *   GET  /healthz                    200 while every bus can store, else 503 naming those that cannot
 *
 * An event is stored as the JSON-format CloudEvent it is (binary mode builds that JSON from the
 * headers and the body), and answered 202 only once it is in the bus's log under its fsync
 * policy.  A request is all or nothing: one bad event in a batch stores none of it.
 */
#define _GNU_SOURCE                 /* pthread_setname_np */
#include <sys/socket.h>
#include <arpa/inet.h>
#include <microhttpd.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "../aws/aws.h"
#include "../center/center.h"
#include "../center/trace.h"
#include "../schema/schema.h"
#include "ingest.h"

#define MAX_BODY (32u << 20)        /* the most any request may carry */
/* A pool of epoll threads: a request holds its thread only while its append is acknowledged, so
 * as many appends as threads can share a sync, and slow clients cost no thread.  Against a
 * thread per connection: 54-69K against 50-58K single-event requests/s over 8 connections
 * (fsync interval, 3 runs each); 32 threads rather than 8: single events on a bus with fsync
 * always over 32 connections went from 7.8K to 12.2K requests/s (bench/ingest.c; noisy machine). */
#define HTTP_THREADS 32

typedef struct {
    sbuf body;                      /* its capacity is counted in d->buffered (body_room) */
    uint64_t reserved;              /* what this request counts in d->buffered */
    bool too_big;
    bool over_buffered;             /* its body would have passed d->max_buffered: dropped, 503 */
    bool busy;                      /* over d->max_requests when it came: 429 */
    bool answered;                  /* answered before its body: the body is dropped */
    /* Refused on its headers while its body was already on its way: the body is read and dropped,
     * and this answer sent once it has all come (refuse). */
    unsigned refused;               /* the status; 0 if not refused */
    const char *refused_field, *refused_retry;
    char refused_msg[320];
} request;

/* Queues the answer; with close, the connection closes once it is sent. */
static enum MHD_Result send_json_ex(struct MHD_Connection *c, unsigned status, const sbuf *b,
                                    const char *retry_after, bool close)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(b->n, b->v ? b->v : (char *)"",
                                                             MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "application/json");
    mt_answered(status);
    if (retry_after)
        MHD_add_response_header(r, "Retry-After", retry_after);
    if (close)
        MHD_add_response_header(r, "Connection", "close");
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, const sbuf *b,
                                 const char *retry_after)
{
    return send_json_ex(c, status, b, retry_after, false);
}

/* {"error": message, "field": field} with the status; with close, the connection closes after. */
static enum MHD_Result send_error_ex(struct MHD_Connection *c, unsigned status, const char *msg,
                                     const char *field, const char *retry_after, bool close)
{
    sbuf b = { 0 };
    sb_puts(&b, "{\"error\":");
    sb_json_string(&b, msg, strlen(msg));
    if (field) {
        sb_puts(&b, ",\"field\":");
        sb_json_string(&b, field, strlen(field));
    }
    sb_puts(&b, "}");
    enum MHD_Result ok = send_json_ex(c, status, &b, retry_after, close);
    sb_free(&b);
    return ok;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *msg,
                                  const char *field, const char *retry_after)
{
    return send_error_ex(c, status, msg, field, retry_after, false);
}

/* {"status": word}: what /healthz and a reload answer when all is well. */
static enum MHD_Result send_status(struct MHD_Connection *c, const char *word)
{
    sbuf b = { 0 };
    sb_puts(&b, "{\"status\":");
    sb_json_string(&b, word, strlen(word));
    sb_puts(&b, "}");
    enum MHD_Result ok = send_json(c, 200, &b, NULL);
    sb_free(&b);
    return ok;
}

/* 413 for a request body over MAX_BODY, naming the limit. */
static void too_big_text(char *msg, size_t cap)
{
    snprintf(msg, cap, "the request is over the limit of %u MiB (%u bytes) a request may carry",
             MAX_BODY >> 20, MAX_BODY);
}

static enum MHD_Result send_too_big(struct MHD_Connection *c)
{
    char msg[160];
    too_big_text(msg, sizeof msg);
    return send_error(c, 413, msg, NULL, NULL);
}

/* ---- connections: limits and deadlines ----------------------------------------------------- */

/* libmicrohttpd gives each worker thread a share of MHD_OPTION_CONNECTION_LIMIT and, once all are
 * full, stops accepting: a client then connects (into the listen backlog) and waits without an
 * answer.  So the listener takes a reserve of connections beyond d->max_connections, and those
 * (and those beyond d->max_client_connections from one address) are answered 503 with
 * Retry-After at their first request, then closed.  Beyond the reserve libmicrohttpd's limits
 * apply as they are (a client beyond the per-address reserve is closed at once; beyond the
 * global reserve, it waits in the backlog for a slot).
 *
 * Its time-out (MHD_OPTION_CONNECTION_TIMEOUT) is for a connection that sends nothing: one byte
 * now and then keeps it forever.  So each connection has a deadline of our own, which a reaper
 * thread enforces (shutdown() of the socket, which libmicrohttpd then closes): its request's
 * headers within d->header_timeout of its opening or of its previous answer (an idle keep-alive
 * connection is closed then too), its body within d->body_timeout of its headers; none while
 * the request is handled and answered.  A connection in the reserve has RESERVE_TIMEOUT. */
#define RESERVE_TIMEOUT 5       /* seconds */
#define MIN_IDLE_TIMEOUT 60     /* libmicrohttpd's time-out, for the answer's sending */
#define REAP_MS 250             /* how often deadlines are looked at */
#define IP_BUCKETS 1024

enum { W_NONE, W_HEADERS, W_BODY, W_RESERVE };      /* what a connection's deadline is for */
enum { ADMITTED, FULL_ALL, FULL_CLIENT };

/* One connection, from libmicrohttpd's STARTED notice to its CLOSED one (its socket context). */
typedef struct conn {
    struct conn *prev, *next;     /* in->conns, under in->mu */
    int fd;
    unsigned char addr[16];       /* the client's address: 4 bytes (IPv4) or 16 */
    unsigned alen;
    bool admitted;                /* counted against the limits (under in->mu) */
    bool cut;                     /* shut down by the reaper */
    _Atomic uint64_t deadline;    /* monotonic ms; 0: none */
    _Atomic int waiting;          /* W_...: what the deadline is for */
} conn;

/* Connections counted per client address. */
typedef struct ipcount {
    struct ipcount *next;
    unsigned char addr[16];
    unsigned alen, n;
} ipcount;

struct ebd_ingest {
    ebd *d;
    pthread_mutex_t mu;
    pthread_cond_t cv;            /* wakes the reaper to stop */
    conn *conns;
    unsigned admitted;
    ipcount *ips[IP_BUCKETS];
    pthread_t reaper;
    bool stop;
};

unsigned ebd_http_reserve(unsigned max_connections)
{
    return max_connections / 8 + 16;
}

static unsigned client_reserve(unsigned max_client)
{
    return max_client / 8 + 4;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void set_deadline(conn *k, int waiting, unsigned seconds)
{
    if (!k)
        return;
    atomic_store(&k->waiting, waiting);
    atomic_store(&k->deadline, waiting == W_NONE ? 0 : now_ms() + (uint64_t)seconds * 1000);
}

/* The slot of k's address in the per-address counts (*slot NULL if it has none).  Under in->mu. */
static ipcount **ip_slot(struct ebd_ingest *in, const conn *k)
{
    uint32_t h = 2166136261u;
    for (unsigned i = 0; i < k->alen; i++)
        h = (h ^ k->addr[i]) * 16777619u;
    ipcount **p = &in->ips[h % IP_BUCKETS];
    while (*p && ((*p)->alen != k->alen || memcmp((*p)->addr, k->addr, k->alen) != 0))
        p = &(*p)->next;
    return p;
}

/* Counts k against the limits if both have room: ADMITTED, else the one that is full.  Under
 * in->mu. */
static int admit(struct ebd_ingest *in, conn *k)
{
    const ebd *d = in->d;
    if (k->admitted)
        return ADMITTED;
    if (in->admitted >= d->max_connections)
        return FULL_ALL;
    if (d->max_client_connections && k->alen) {
        ipcount **p = ip_slot(in, k);
        if (*p && (*p)->n >= d->max_client_connections)
            return FULL_CLIENT;
        if (!*p) {
            if (!(*p = calloc(1, sizeof **p)))
                return FULL_ALL;
            memcpy((*p)->addr, k->addr, k->alen);
            (*p)->alen = k->alen;
        }
        (*p)->n++;
    }
    in->admitted++;
    k->admitted = true;
    return ADMITTED;
}

/* Takes k off the counts.  Under in->mu. */
static void release(struct ebd_ingest *in, conn *k)
{
    if (!k->admitted)
        return;
    k->admitted = false;
    in->admitted--;
    if (in->d->max_client_connections && k->alen) {
        ipcount **p = ip_slot(in, k);
        if (*p && --(*p)->n == 0) {
            ipcount *gone = *p;
            *p = gone->next;
            free(gone);
        }
    }
}

/* MHD_OPTION_NOTIFY_CONNECTION: a connection opens (into the table, admitted or in the reserve,
 * with the deadline for its first request's headers) or closes (out of it). */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    ebd *d = cls;
    struct ebd_ingest *in = d->ingest;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *fi = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *ai = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        conn *k = calloc(1, sizeof *k);
        if (!k) {                   /* untracked, it would have no deadline: closed */
            if (fi)
                shutdown(fi->connect_fd, SHUT_RDWR);
            return;
        }
        k->fd = fi ? fi->connect_fd : -1;
        const struct sockaddr *sa = ai ? ai->client_addr : NULL;
        if (sa && sa->sa_family == AF_INET) {
            memcpy(k->addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
            k->alen = 4;
        } else if (sa && sa->sa_family == AF_INET6) {
            memcpy(k->addr, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
            k->alen = 16;
        }
        pthread_mutex_lock(&in->mu);
        k->next = in->conns;
        if (in->conns)
            in->conns->prev = k;
        in->conns = k;
        bool admitted = admit(in, k) == ADMITTED;
        pthread_mutex_unlock(&in->mu);
        if (admitted)
            set_deadline(k, W_HEADERS, d->header_timeout);
        else
            set_deadline(k, W_RESERVE, RESERVE_TIMEOUT);
        *socket_context = k;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        conn *k = *socket_context;
        pthread_mutex_lock(&in->mu);
        if (k->prev)
            k->prev->next = k->next;
        else
            in->conns = k->next;
        if (k->next)
            k->next->prev = k->prev;
        release(in, k);
        pthread_mutex_unlock(&in->mu);
        free(k);
        *socket_context = NULL;
    }
}

static conn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *i = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i ? i->socket_context : NULL;
}

/* 0 when connection k may make its request (admitted now if it was in the reserve), else the
 * limit that is full. */
static int connection_admitted(struct ebd_ingest *in, conn *k)
{
    if (!k)
        return FULL_ALL;
    if (k->admitted)
        return ADMITTED;
    pthread_mutex_lock(&in->mu);
    int r = admit(in, k);
    pthread_mutex_unlock(&in->mu);
    return r;
}

/* 503 with Retry-After for a connection beyond a limit, which then closes. */
static enum MHD_Result send_full(struct MHD_Connection *c, const ebd *d, const conn *k, int full)
{
    char msg[300], who[INET6_ADDRSTRLEN] = "?";
    if (full == FULL_CLIENT) {
        inet_ntop(k->alen == 4 ? AF_INET : AF_INET6, k->addr, who, sizeof who);
        snprintf(msg, sizeof msg, "too many connections from %s: ebd serves at most %u connections "
                 "at once from one client address (--max-client-connections)", who,
                 d->max_client_connections);
    } else {
        snprintf(msg, sizeof msg, "too many connections: ebd serves at most %u connections at once "
                 "(--max-connections)", d->max_connections);
    }
    return send_error_ex(c, 503, msg, NULL, "1", true);
}

/* The reaper: every REAP_MS, shuts down the sockets of the connections past their deadline
 * (libmicrohttpd then reads the end of the stream and closes them), and logs how many. */
static void *reap(void *arg)
{
    pthread_setname_np(pthread_self(), "ebd-reaper");   /* (top -H, ps -L) */
    struct ebd_ingest *in = arg;
    pthread_mutex_lock(&in->mu);
    while (!in->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += REAP_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&in->cv, &in->mu, &ts);
        uint64_t now = now_ms();
        unsigned cut[W_RESERVE + 1] = { 0 };
        for (conn *k = in->conns; k && !in->stop; k = k->next) {
            uint64_t when = atomic_load(&k->deadline);
            if (k->cut || k->fd < 0 || !when || now < when)
                continue;
            cut[atomic_load(&k->waiting)]++;     /* before: once shut, on_done may change it */
            shutdown(k->fd, SHUT_RDWR);
            k->cut = true;
        }
        if (cut[W_HEADERS] + cut[W_BODY] + cut[W_RESERVE]) {
            pthread_mutex_unlock(&in->mu);
            ebd_log(EBD_INFO, "msg=\"connections cut: what they had to send did not come in time\" "
                    "headers=%u body=%u over_limit=%u header_timeout_s=%u body_timeout_s=%u",
                    cut[W_HEADERS], cut[W_BODY], cut[W_RESERVE], in->d->header_timeout,
                    in->d->body_timeout);
            pthread_mutex_lock(&in->mu);
        }
    }
    pthread_mutex_unlock(&in->mu);
    return NULL;
}

/* ---- request bodies: the bytes held at once ------------------------------------------------ */

/* Raises what rq counts in d->buffered to total bytes, if d->max_buffered allows. */
static bool take_buffered(ebd *d, request *rq, uint64_t total)
{
    if (total <= rq->reserved)
        return true;
    uint64_t more = total - rq->reserved, cur = atomic_load(&d->buffered);
    do {
        if (cur + more > d->max_buffered)
            return false;
    } while (!atomic_compare_exchange_weak(&d->buffered, &cur, cur + more));
    rq->reserved = total;
    return true;
}

static void drop_buffered(ebd *d, request *rq)
{
    sb_free(&rq->body);
    atomic_fetch_sub(&d->buffered, rq->reserved);
    rq->reserved = 0;
}

/* Room in rq->body for n more bytes and a NUL, its capacity counted in d->buffered: all that a
 * Content-Length announced was counted at the first call, so the buffer is made that size;
 * a chunked body grows by doubling, each step counted.  False when d->max_buffered would be
 * passed.  (A failed allocation sets body.oom, answered 503.) */
static bool body_room(ebd *d, request *rq, size_t n)
{
    size_t need = rq->body.n + n + 1;
    if (need <= rq->body.cap)
        return true;
    size_t cap = rq->reserved > rq->body.cap ? rq->reserved
               : rq->body.cap ? rq->body.cap * 2 : 16384;
    if (cap < need)
        cap = need;
    if (cap > MAX_BODY + 1 && need <= MAX_BODY + 1)
        cap = MAX_BODY + 1;
    if (!take_buffered(d, rq, cap))
        return false;
    char *v = realloc(rq->body.v, cap);
    if (!v) {
        rq->body.oom = true;
        return true;
    }
    rq->body.v = v;
    rq->body.cap = cap;
    return true;
}

static void over_buffered_text(const ebd *d, char *msg, size_t cap)
{
    snprintf(msg, cap, "too many request bodies held at once: this one would take them over "
             "%llu bytes (--max-buffered)", (unsigned long long)d->max_buffered);
}

static enum MHD_Result send_over_buffered(struct MHD_Connection *c, const ebd *d)
{
    char msg[300];
    over_buffered_text(d, msg, sizeof msg);
    return send_error(c, 503, msg, NULL, "1");
}

/* A request refused on its headers alone.  A client that sends no body, or that waits for
 * "100 Continue" before sending it, is answered now and never sends the body.  A client whose body
 * is already on its way is answered once that body has come and been dropped: after an early
 * answer libmicrohttpd closes the connection without reading what is in flight, and the reset that
 * the unread bytes cause can reach the client before it has read the answer (curl, sending 500 KB
 * without Expect, got no answer at all on a busy machine).  The body deadline bounds the wait. */
static enum MHD_Result refuse(struct MHD_Connection *c, request *rq, unsigned status,
                              const char *msg, const char *field, const char *retry_after)
{
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    const char *te = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Transfer-Encoding");
    const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Expect");
    bool body = (cl && strtoull(cl, NULL, 10) > 0) || te;
    if (!body || (expect && !strcasecmp(expect, "100-continue"))) {
        rq->answered = true;
        return send_error(c, status, msg, field, retry_after);
    }
    rq->refused = status;
    snprintf(rq->refused_msg, sizeof rq->refused_msg, "%s", msg);
    rq->refused_field = field;
    rq->refused_retry = retry_after;
    return MHD_YES;
}

/* ---- authorization ------------------------------------------------------------------------ */

/* Compares in time that depends on the lengths only. */
static bool same_secret(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    unsigned char diff = (unsigned char)(na != nb);
    for (size_t i = 0; i < na; i++)
        diff |= (unsigned char)(a[i] ^ b[i % (nb ? nb : 1)]);
    return diff == 0;
}

/* 0 when the request may go on; else the status (401: no token, 403: a wrong one). */
static unsigned authorize(struct MHD_Connection *c, const char *token)
{
    if (!token)
        return 0;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return 401;
    return same_secret(h + 7, token) ? 0 : 403;
}

int ebd_send_json(struct MHD_Connection *c, unsigned status, const sbuf *b)
{
    return send_json(c, status, b, NULL);
}

int ebd_send_error(struct MHD_Connection *c, unsigned status, const char *msg, const char *field)
{
    return send_error(c, status, msg, field, NULL);
}

static void media_type(const char *ct, char *out, size_t cap);

/* Does a Host header name the loopback listener: 127.x.y.z, localhost or [::1], with or
 * without ":port"? */
static bool loopback_host(const char *h)
{
    if (!h)
        return false;
    size_t n = strlen(h);
    const char *colon = h[0] == '[' ? NULL : strrchr(h, ':');
    if (h[0] == '[') {
        const char *end = strchr(h, ']');
        if (!end)
            return false;
        n = (size_t)(end + 1 - h);
        colon = end[1] == ':' ? end + 1 : NULL;
        if (end[1] && !colon)
            return false;
    } else if (colon) {
        n = (size_t)(colon - h);
    }
    if (colon && (!colon[1] || strspn(colon + 1, "0123456789") != strlen(colon + 1)))
        return false;
    if ((n == 9 && !strncasecmp(h, "localhost", 9)) || (n == 5 && !strncmp(h, "[::1]", 5)))
        return true;
    if (n < 4 || strncmp(h, "127.", 4) != 0)
        return false;
    for (size_t i = 4; i < n; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || h[i] == '.'))
            return false;
    return true;
}

/* Is the Origin header (when there is one) the origin of http://HOST (or https://HOST, for a
 * loopback listener with TLS)? */
static bool same_origin(const char *origin, const char *host)
{
    if (!origin)
        return true;
    size_t k = !strncasecmp(origin, "http://", 7) ? 7 : !strncasecmp(origin, "https://", 8) ? 8 : 0;
    return k && host && !strcasecmp(origin + k, host);
}

unsigned ebd_authorize_admin(ebd *d, struct MHD_Connection *c, bool write, const char **why)
{
    pthread_rwlock_rdlock(&d->lock);
    char *tok = d->rules->admin_token ? strdup(d->rules->admin_token) : NULL;
    pthread_rwlock_unlock(&d->lock);
    const char *dummy;
    if (!why)
        why = &dummy;
    if (tok) {
        unsigned deny = authorize(c, tok);
        free(tok);
        *why = deny == 401 ? "an admin token is needed (Authorization: Bearer ...)"
                           : "the admin token is wrong";
        return deny;
    }
    /* No token: only a loopback listener, asked by a local client rather than a web page. */
    if (!d->loopback) {
        *why = "the event center is served on a loopback listener only, unless the server block "
               "sets an admin_token";
        return 403;
    }
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host");
    if (!loopback_host(host)) {
        *why = "Host must name the loopback listener (127.0.0.1, localhost or [::1]); set an "
               "admin_token to serve other names";
        return 403;
    }
    if (!same_origin(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin"), host)) {
        *why = "a request from another origin (the Origin header) is refused; set an admin_token "
               "to serve one";
        return 403;
    }
    if (write) {
        /* A page can send a cross-site POST only with a "simple" content type and no custom
         * header: either of these needs the browser's preflight, which ebd never grants. */
        char mt[64];
        media_type(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type"), mt, sizeof mt);
        if (strcmp(mt, "application/json") != 0 &&
            !MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Ebr-Request")) {
            *why = "a POST needs Content-Type: application/json or the header X-Ebr-Request: 1";
            return 403;
        }
    }
    return 0;
}

/* ---- content types ------------------------------------------------------------------------ */

/* The media type of a Content-Type value, lower case, without parameters. */
static void media_type(const char *ct, char *out, size_t cap)
{
    size_t i = 0;
    while (ct && *ct == ' ')
        ct++;
    for (; ct && ct[i] && ct[i] != ';' && ct[i] != ' ' && i + 1 < cap; i++)
        out[i] = (char)(ct[i] >= 'A' && ct[i] <= 'Z' ? ct[i] + 32 : ct[i]);
    out[i] = 0;
}

/* Does media type mt (lower case, no parameters) declare JSON: a subtype json or ending in +json,
 * as the JSON format says? */
static bool is_json_type(const char *mt)
{
    const char *sub = strchr(mt, '/');
    size_t n = sub ? strlen(++sub) : 0;
    return (n == 4 && !strcmp(sub, "json")) || (n > 5 && !strcmp(sub + n - 5, "+json"));
}

/* ---- binary mode: the event built from ce- headers and the body ----------------------------- */

typedef struct {
    sbuf *ev;
    bool bad;
    char why[256];
    char field[64];               /* the header at fault */
} headers_state;

/* Fails st for header key, saying why; returns NULL. */
static char *header_fail(headers_state *st, const char *key, const char *why)
{
    st->bad = true;
    snprintf(st->why, sizeof st->why, "header '%.60s' %.180s", key, why);
    snprintf(st->field, sizeof st->field, "%.60s", key);
    return NULL;
}

/* The attribute value a ce- header carries, decoded as the binding says: first its
 * double-quoted strings unescaped (RFC 7230 3.2.6, which older senders used), then one round
 * of percent-decoding; malloc'd, its length in *len.  NULL (st failed) when a quoted string
 * does not end or a '%' is not followed by two hexadecimal digits. */
static char *header_value(headers_state *st, const char *key, const char *value, size_t *len)
{
    size_t vn = strlen(value), at = 0;
    char *dec = malloc(vn + 1);
    if (!dec) {
        st->bad = true;
        snprintf(st->why, sizeof st->why, "out of memory");
        return NULL;
    }
    int rc = ce_header_value(value, vn, dec, len, &at);
    if (rc == CE_HV_OK)
        return dec;
    free(dec);
    if (rc == CE_HV_QUOTE)
        return header_fail(st, key, "opens a quoted string and does not end it (a '\"' in a "
                           "value is %22)");
    char why[160];
    snprintf(why, sizeof why, "is not percent-encoded: the '%%' at byte %zu is not followed by "
             "two hexadecimal digits (a '%%' itself is %%25)", at);
    return header_fail(st, key, why);
}

static enum MHD_Result ce_header(void *arg, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    (void)kind;
    headers_state *st = arg;
    if (strncasecmp(key, "ce-", 3) != 0 || st->bad)
        return MHD_YES;
    const char *name = key + 3;
    size_t n = strlen(name);
    char lower[128];
    if (n == 0 || n >= sizeof lower) {
        st->bad = true;
        snprintf(st->why, sizeof st->why, "header '%s' names no attribute", key);
        return MHD_YES;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9'))) {
            st->bad = true;
            snprintf(st->why, sizeof st->why, "header '%s': attribute names are a-z and 0-9", key);
            snprintf(st->field, sizeof st->field, "%.60s", key);
            return MHD_YES;
        }
        lower[i] = ch;
    }
    lower[n] = 0;
    /* data is the body, and no attribute may take its name; datacontenttype is the
     * Content-Type, and the binding forbids the header beside it */
    if (!strcmp(lower, "data")) {
        header_fail(st, key, "names no attribute: in binary mode the body is the event's data, "
                    "and no attribute may be called data");
        return MHD_YES;
    }
    if (!strcmp(lower, "datacontenttype")) {
        header_fail(st, key, "may not be sent: in binary mode the Content-Type is the event's "
                    "datacontenttype");
        return MHD_YES;
    }
    size_t o;
    char *dec = header_value(st, key, value, &o);
    if (!dec)
        return MHD_YES;
    size_t bad_at;
    sbuf tmp = { 0 };
    sb_json_string(&tmp, dec, o);
    if (tmp.oom || !vm_json_valid(tmp.v, tmp.n, &bad_at)) {
        st->bad = true;
        snprintf(st->why, sizeof st->why, "header '%s' is not UTF-8 once percent-decoded", key);
        snprintf(st->field, sizeof st->field, "%.60s", key);
    } else {
        sb_puts(st->ev, st->ev->n > 1 ? "," : "");
        sb_json_string(st->ev, lower, n);
        sb_puts(st->ev, ":");
        sb_put(st->ev, tmp.v, tmp.n);
    }
    sb_free(&tmp);
    free(dec);
    return MHD_YES;
}

/* Builds the JSON-format event of a binary-mode request into ev; false with why (and the header
 * at fault in field[64], if one is) when the request is not one. */
static bool binary_event(struct MHD_Connection *c, const char *ctype, const request *rq, sbuf *ev,
                         char *why, size_t whycap, char *field)
{
    headers_state st = { .ev = ev };
    sb_puts(ev, "{");
    MHD_get_connection_values(c, MHD_HEADER_KIND, ce_header, &st);
    if (st.bad) {
        snprintf(why, whycap, "%s", st.why);
        snprintf(field, 64, "%s", st.field);
        return false;
    }
    if (ctype) {
        sb_puts(ev, ev->n > 1 ? "," : "");
        sb_puts(ev, "\"datacontenttype\":");
        sb_json_string(ev, ctype, strlen(ctype));
    }
    if (rq->body.n) {
        char mt[128];
        media_type(ctype, mt, sizeof mt);
        sb_puts(ev, ev->n > 1 ? "," : "");
        if (is_json_type(mt)) {
            size_t at;
            const char *what;
            if (!vm_json_check(rq->body.v, rq->body.n, &at, &what)) {
                snprintf(why, whycap, "the body is not valid JSON though its content type is %s: "
                         "%s (at byte %zu)", mt, what, at);
                return false;
            }
            sb_puts(ev, "\"data\":");
            size_t a = vm_json_ws(rq->body.v, rq->body.n, 0), e = rq->body.n;
            while (e > a && (rq->body.v[e - 1] == ' ' || rq->body.v[e - 1] == '\n' ||
                             rq->body.v[e - 1] == '\r' || rq->body.v[e - 1] == '\t'))
                e--;
            sb_put(ev, rq->body.v + a, e - a);
        } else {
            /* Text that is UTF-8 goes as a string; anything else as base64. */
            sbuf s = { 0 };
            sb_json_string(&s, rq->body.v, rq->body.n);
            bool text = !strncmp(mt, "text/", 5) && !s.oom && vm_json_valid(s.v, s.n, NULL) &&
                        memchr(rq->body.v, 0, rq->body.n) == NULL;
            if (text) {
                sb_puts(ev, "\"data\":");
                sb_put(ev, s.v, s.n);
            } else {
                sb_puts(ev, "\"data_base64\":");
                sb_base64(ev, (const unsigned char *)rq->body.v, rq->body.n);
            }
            sb_free(&s);
        }
    }
    sb_puts(ev, "}");
    return !ev->oom;
}

/* ---- events ------------------------------------------------------------------------------- */

typedef struct {
    char *s;                     /* the event's text (in the request's body: ce_drop_nulls may
                                    shorten it there) */
    size_t n;
    const char *id;              /* its id, quoted */
    size_t idlen;
    char error[240];             /* put-events: why this entry was refused */
    bool diverted;               /* invalid under its schema: in the dead-letter file (error: why) */
    bool dup;                    /* stored before, within the bus's dedup window (offset: the first's) */
    uint64_t offset;
    bool untraced;               /* not stored by this request (refused, diverted, a duplicate) */
} event;

typedef struct {
    event *v;
    size_t n, cap;
    char *body;
    bool oom;
} events;

static bool push_event(void *arg, const js_member *m)
{
    events *es = arg;
    if (es->n == es->cap) {
        size_t cap = es->cap ? es->cap * 2 : 16;
        event *v = realloc(es->v, cap * sizeof *v);
        if (!v) {
            es->oom = true;
            return false;
        }
        es->v = v;
        es->cap = cap;
    }
    es->v[es->n++] = (event){ .s = es->body + m->val_off, .n = m->val_len };
    return true;
}

/* ce_check on event e, then its attributes set to null taken out where it lies
 * (ce_drop_nulls): rules see them unset, as the JSON format says they are. */
static bool check_event(event *e, char *why, size_t whycap)
{
    bool nulls;
    if (!ce_check(e->s, e->n, why, whycap, &e->id, &e->idlen, &nulls))
        return false;
    if (!nulls)
        return true;
    ce_drop_nulls(e->s, &e->n);
    return ce_check(e->s, e->n, why, whycap, &e->id, &e->idlen, NULL);   /* (the id moved) */
}

/* Stores the events of es that have no error (through the bus's dedup window), setting each
 * one's offset and dup; then counts and traces them.  On a failure, nothing is counted. */
static store_status store_events(struct MHD_Connection *c, ebd_bus *b, events *es)
{
    size_t n = es->n ? es->n : 1;
    store_entry *e = calloc(n, sizeof *e);
    uint64_t *offs = calloc(n, sizeof *offs);
    bool *dup = calloc(n, sizeof *dup);
    size_t *at = calloc(n, sizeof *at);
    store_status st = STORE_OK;
    if (!e || !offs || !dup || !at) {
        st = STORE_CLOSED;
        goto out;
    }
    size_t k = 0, ndup = 0;
    for (size_t i = 0; i < es->n; i++) {
        es->v[i].untraced = true;
        if (!es->v[i].error[0] && !es->v[i].diverted) {
            at[k] = i;
            e[k++] = (store_entry){ es->v[i].s, (uint32_t)es->v[i].n, 0, NULL };
        }
    }
    st = k ? ebd_bus_store(b, e, k, offs, dup) : STORE_OK;
    if (st != STORE_OK)
        goto out;
    /* a duplicate is answered with the first one's offset, and neither counted nor traced as
     * taken in again */
    size_t m = 0;
    for (size_t j = 0; j < k; j++) {
        event *v = &es->v[at[j]];
        v->offset = offs[j];
        v->dup = dup[j];
        v->untraced = dup[j];
        if (dup[j])
            ndup++;
        else
            offs[m++] = offs[j];
    }
    mt_ingested(b, k - ndup);
    mt_duplicates(b, ndup);
    if (m)
        trace_received(c, b, offs, es->n, &es->v[0].id, &es->v[0].idlen, sizeof *es->v,
                       (const char *)&es->v[0].untraced);
out:
    free(e);
    free(offs);
    free(dup);
    free(at);
    return st;
}

/* Appends the events es (all good) to the bus and answers 202 {"events": [{id, offset}]}. */
static enum MHD_Result store_and_answer(struct MHD_Connection *c, ebd_bus *b, events *es)
{
    store_status st = store_events(c, b, es);
    if (st != STORE_OK) {
        ebd_log(EBD_ERROR, "msg=\"append failed\" bus=%s error=\"%s\"", b->name, store_error(b->s));
        mt_note_reason(st == STORE_CLOSED ? MT_OVERLOADED : MT_STORAGE);
        return send_error(c, 503, st == STORE_CLOSED ? "the daemon is stopping"
                                                      : "the bus cannot store events now",
                          NULL, st == STORE_CLOSED ? "1" : "5");
    }
    sbuf r = { 0 };
    sb_puts(&r, "{\"events\":[");
    for (size_t i = 0; i < es->n; i++) {
        if (es->v[i].diverted) {
            sb_printf(&r, "%s{\"id\":%.*s,\"dead_letter\":true,\"error\":", i ? "," : "",
                      (int)es->v[i].idlen, es->v[i].id);
            sb_json_string(&r, es->v[i].error, strlen(es->v[i].error));
            sb_puts(&r, "}");
            continue;
        }
        sb_printf(&r, "%s{\"id\":%.*s,\"offset\":%llu%s}", i ? "," : "", (int)es->v[i].idlen,
                  es->v[i].id, (unsigned long long)es->v[i].offset,
                  es->v[i].dup ? ",\"duplicate\":true" : "");
    }
    sb_puts(&r, "]}");
    enum MHD_Result ok = send_json(c, 202, &r, NULL);
    sb_free(&r);
    return ok;
}

static enum MHD_Result put_events_ce(struct MHD_Connection *c, ebd_bus *b, request *rq)
{
    const char *ctype = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    char mt[128];
    media_type(ctype, mt, sizeof mt);
    events es = { .body = rq->body.v };
    sbuf built = { 0 };
    char why[256];
    enum MHD_Result ok;
    bool batch = !strcmp(mt, "application/cloudevents-batch+json");
    bool structured = !strcmp(mt, "application/cloudevents+json");
    if (!batch && !structured && !strncmp(mt, "application/cloudevents", 23))
        return send_error(c, 415, "unsupported event format (this bus takes "
                          "application/cloudevents+json and application/cloudevents-batch+json, "
                          "or binary mode)", "Content-Type", NULL);
    if (batch || structured) {
        size_t at;
        const char *what;
        if (!vm_json_check(rq->body.v, rq->body.n, &at, &what)) {
            snprintf(why, sizeof why, "the body is not valid JSON: %s (at byte %zu)", what, at);
            return send_error(c, 400, why, "body", NULL);
        }
        size_t i = vm_json_ws(rq->body.v, rq->body.n, 0);
        if (batch) {
            if (rq->body.v[i] != '[')
                return send_error(c, 400, "a batch must be a JSON array of events", "body", NULL);
            js_each(rq->body.v, rq->body.n, i, push_event, &es);
        } else {
            js_member m = { .val_off = (uint32_t)i,
                            .val_len = (uint32_t)(vm_json_value_end(rq->body.v, rq->body.n, i) - i) };
            push_event(&es, &m);
        }
    } else {
        if (!MHD_lookup_connection_value(c, MHD_HEADER_KIND, "ce-specversion"))
            return send_error(c, 400, "not a CloudEvent: no ce-specversion header (binary mode) "
                              "and the content type is not application/cloudevents+json",
                              "ce-specversion", NULL);
        char field[64] = "";
        if (!binary_event(c, ctype, rq, &built, why, sizeof why, field)) {
            sb_free(&built);
            return send_error(c, 400, why, field[0] ? field : NULL, NULL);
        }
        js_member m = { .val_off = 0, .val_len = (uint32_t)built.n };
        es.body = built.v;
        push_event(&es, &m);
    }
    if (es.oom) {
        ok = send_error(c, 503, "out of memory", NULL, "1");
        goto done;
    }
    for (size_t i = 0; i < es.n; i++) {
        if (es.v[i].n > b->max_event) {
            snprintf(why, sizeof why, "event %zu is %zu bytes, over the limit of %llu", i,
                     es.v[i].n, (unsigned long long)b->max_event);
            ok = send_error(c, 413, why, NULL, NULL);
            goto done;
        }
        char w[200];
        if (!check_event(&es.v[i], w, sizeof w)) {
            if (es.n > 1)
                snprintf(why, sizeof why, "event %zu: %s", i, w);
            else
                snprintf(why, sizeof why, "%s", w);
            const char *q = strchr(w, '\''), *q2 = q ? strchr(q + 1, '\'') : NULL;
            char field[64] = "";
            if (q && q2 && q2 - q < 60)
                snprintf(field, sizeof field, "%.*s", (int)(q2 - q - 1), q + 1);
            ok = send_error(c, 400, why, field[0] ? field : NULL, NULL);
            goto done;
        }
        /* the bus's schema for its type (runtime/schema/enforce.c) */
        /* (error stays empty for a stored event, accepted invalid ones too: trace_received
         * and the answer take a set error for "not stored, no offset") */
        char w2[sizeof es.v[i].error];
        int sv = sch_ingest(b->schemas, es.v[i].s, es.v[i].n, w2, sizeof w2);
        if (sv != SCH_STORE)
            memcpy(es.v[i].error, w2, sizeof w2);
        if (sv == SCH_REFUSE) {
            if (es.n > 1)
                snprintf(why, sizeof why, "event %zu: %.200s", i, es.v[i].error);
            else
                snprintf(why, sizeof why, "%s", es.v[i].error);
            ok = send_error(c, 400, why, NULL, NULL);
            goto done;
        }
        es.v[i].diverted = sv == SCH_DIVERT;
    }
    /* the diverted events in one write and one sync (written before the append: an append that
     * fails after it leaves them there, and a client's retry writes them again: docs/schemas.md) */
    sbuf dl = { 0 };
    size_t ndl = 0;
    for (size_t i = 0; i < es.n; i++)
        if (es.v[i].diverted)
            ndl++, sch_divert_add(b->schemas, &dl, es.v[i].s, es.v[i].n, es.v[i].error);
    bool kept = !ndl || sch_divert_write(b->schemas, &dl, ndl);
    sb_free(&dl);
    if (!kept) {
        ok = send_error(c, 503, "the bus cannot keep invalid events now", NULL, "5");
        goto done;
    }
    ok = store_and_answer(c, b, &es);
done:
    free(es.v);
    sb_free(&built);
    return ok;
}

typedef struct {
    const char *s;
    js_member entries;
    unsigned found;
} find_entries;

static bool find_entries_member(void *arg, const js_member *m)
{
    find_entries *f = arg;
    if (js_key_is(f->s, m, "entries")) {
        f->entries = *m;
        f->found++;
    }
    return true;
}

/* PutEvents-style: {"entries": [event, ...]}; good entries are stored even when others fail. */
static enum MHD_Result put_events(struct MHD_Connection *c, ebd_bus *b, request *rq)
{
    size_t at;
    char why[256];
    const char *what;
    if (!vm_json_check(rq->body.v, rq->body.n, &at, &what)) {
        snprintf(why, sizeof why, "the body is not valid JSON: %s (at byte %zu)", what, at);
        return send_error(c, 400, why, "body", NULL);
    }
    size_t i = vm_json_ws(rq->body.v, rq->body.n, 0);
    find_entries f = { .s = rq->body.v };
    if (rq->body.v[i] == '{')
        js_each(rq->body.v, rq->body.n, i, find_entries_member, &f);
    if (f.found > 1)
        return send_error(c, 400, "the body has \"entries\" twice: it must be one {\"entries\": "
                          "[event, ...]}", "entries", NULL);
    if (!f.found || rq->body.v[f.entries.val_off] != '[')
        return send_error(c, 400, "the body must be {\"entries\": [event, ...]}", "entries", NULL);
    events es = { .body = rq->body.v };
    js_each(rq->body.v, rq->body.n, f.entries.val_off, push_event, &es);
    if (es.oom) {
        free(es.v);
        return send_error(c, 503, "out of memory", NULL, "1");
    }
    size_t good = 0, ndl = 0;
    sbuf dl = { 0 };              /* the diverted entries' lines: one write, one sync */
    for (size_t k = 0; k < es.n; k++) {
        if (es.v[k].n > b->max_event)
            snprintf(es.v[k].error, sizeof es.v[k].error, "the event is %zu bytes, over the limit "
                     "of %llu", es.v[k].n, (unsigned long long)b->max_event);
        else if (!check_event(&es.v[k], es.v[k].error, sizeof es.v[k].error) && !es.v[k].error[0])
            snprintf(es.v[k].error, sizeof es.v[k].error, "not a CloudEvent");
        else if (!es.v[k].error[0]) {   /* the bus's schema for its type (runtime/schema) */
            char w[sizeof es.v[k].error];
            int sv = sch_ingest(b->schemas, es.v[k].s, es.v[k].n, w, sizeof w);
            if (sv == SCH_REFUSE || sv == SCH_DIVERT)
                memcpy(es.v[k].error, w, sizeof w);
            if (sv == SCH_DIVERT) {
                es.v[k].diverted = true;
                ndl++;
                sch_divert_add(b->schemas, &dl, es.v[k].s, es.v[k].n, w);
            }
        }
        good += !es.v[k].error[0];
    }
    if (ndl && !sch_divert_write(b->schemas, &dl, ndl))
        for (size_t k = 0; k < es.n; k++)
            if (es.v[k].diverted) {
                es.v[k].diverted = false;
                snprintf(es.v[k].error, sizeof es.v[k].error, "the bus cannot keep invalid events now");
            }
    sb_free(&dl);
    store_status st = store_events(c, b, &es);
    if (st != STORE_OK) {
        free(es.v);
        mt_note_reason(st == STORE_CLOSED ? MT_OVERLOADED : MT_STORAGE);
        return send_error(c, 503, "the bus cannot store events now", NULL, "5");
    }
    sbuf r = { 0 };
    size_t diverted = 0;
    for (size_t k = 0; k < es.n; k++)
        diverted += es.v[k].diverted;
    sb_printf(&r, "{\"failed_entry_count\":%zu,\"entries\":[", es.n - good - diverted);
    for (size_t k = 0; k < es.n; k++) {
        sb_puts(&r, k ? "," : "");
        if (es.v[k].diverted) {
            sb_printf(&r, "{\"id\":%.*s,\"dead_letter\":true,\"error_message\":",
                      (int)es.v[k].idlen, es.v[k].id);
            sb_json_string(&r, es.v[k].error, strlen(es.v[k].error));
            sb_puts(&r, "}");
        } else if (es.v[k].error[0]) {
            bool large = strstr(es.v[k].error, "over the limit") != NULL;
            mt_refused(b, large ? MT_TOO_LARGE : MT_INVALID, 1);
            sb_puts(&r, "{\"error_code\":\"");
            sb_puts(&r, large ? "EventTooLarge" : "InvalidEvent");
            sb_puts(&r, "\",\"error_message\":");
            sb_json_string(&r, es.v[k].error, strlen(es.v[k].error));
            sb_puts(&r, "}");
        } else
            sb_printf(&r, "{\"id\":%.*s,\"offset\":%llu%s}", (int)es.v[k].idlen, es.v[k].id,
                      (unsigned long long)es.v[k].offset, es.v[k].dup ? ",\"duplicate\":true" : "");
    }
    sb_puts(&r, "]}");
    enum MHD_Result ok = send_json(c, 200, &r, NULL);
    sb_free(&r);
    free(es.v);
    return ok;
}

/* ---- routing ------------------------------------------------------------------------------ */

/* For /v1/buses/BUS/events and /v1/buses/BUS/put-events, where ingest takes events: the '/'
 * after BUS; else NULL. */
static const char *ingest_path(const char *url)
{
    static const char prefix[] = "/v1/buses/";
    if (strncmp(url, prefix, sizeof prefix - 1) != 0)
        return NULL;
    const char *slash = strchr(url + sizeof prefix - 1, '/');
    return slash && (!strcmp(slash, "/events") || !strcmp(slash, "/put-events")) ? slash : NULL;
}

static enum MHD_Result handle(struct MHD_Connection *c, ebd *d, const char *url,
                              const char *method, request *rq)
{
    if (aws_request(c, url, method))          /* PutEvents from AWS clients (runtime/aws) */
        return (enum MHD_Result)aws_serve(c, d, rq->body.v, rq->body.n, rq->too_big ? MAX_BODY : 0);
    if (!strcmp(url, "/healthz")) {
        /* 200 {"status":"ok"} while every open bus can store; otherwise 503 naming each bus
         * that cannot and why (its log failed a write or sync and has not recovered yet). */
        sbuf b = { 0 };
        size_t bad = 0;
        pthread_rwlock_rdlock(&d->lock);
        for (size_t i = 0; i < d->nbuses; i++) {
            char why[512];
            if (!d->buses[i]->s || store_health(d->buses[i]->s, why, sizeof why))
                continue;     /* (closed by a reload: no log to ask) */
            sb_puts(&b, bad++ ? ",{\"bus\":" : "{\"status\":\"degraded\",\"buses\":[{\"bus\":");
            sb_json_string(&b, d->buses[i]->name, strlen(d->buses[i]->name));
            sb_puts(&b, ",\"error\":");
            sb_json_string(&b, why, strlen(why));
            sb_puts(&b, "}");
        }
        pthread_rwlock_unlock(&d->lock);
        if (!bad)
            return send_status(c, "ok");
        sb_puts(&b, "]}");
        enum MHD_Result r = send_json(c, 503, &b, NULL);
        sb_free(&b);
        return r;
    }
    /* Ingest serves putting events and a reload; everything else is the event center's
     * (GET /v1/buses/BUS/events among it: the event query). */
    const char *put_at = ingest_path(url);
    bool post = !strcmp(method, "POST");
    if ((!put_at || !post) && strcmp(url, "/v1/admin/reload") != 0) {
        enum MHD_Result r;
        if (!put_at) {            /* a webhook source's path (never /v1/...: runtime/sources) */
            pthread_rwlock_rdlock(&d->lock);
            if (d->rules && src_webhook_path(d->rules->sources, url)) {
                r = (enum MHD_Result)src_webhook(d->rules->sources, c, url, method, rq->body.v,
                                                 rq->body.n, rq->too_big);
                pthread_rwlock_unlock(&d->lock);
                return r;
            }
            pthread_rwlock_unlock(&d->lock);
        }
        if (center_handle(c, d, url, method, rq->body.v, rq->body.n, &r))
            return r;
        if (put_at)
            return send_error(c, 405, "only POST is served here", NULL, NULL);
        return send_error(c, 404, "no such endpoint", NULL, NULL);
    }
    if (!post)
        return send_error(c, 405, "only POST is served here", NULL, NULL);
    if (!strcmp(url, "/v1/admin/reload")) {
        const char *why;
        unsigned deny = ebd_authorize_admin(d, c, false, &why);
        if (deny)
            return send_error(c, deny, why, NULL, NULL);
        sbuf errors = { 0 };
        bool ok = ebd_reload(d, &errors);
        enum MHD_Result r = ok ? send_status(c, "reloaded")
                               : send_error(c, 400, errors.v ? errors.v : "reload failed", NULL, NULL);
        sb_free(&errors);
        return r;
    }
    const char *name = url + sizeof "/v1/buses/" - 1, *slash = put_at;
    bool put = !strcmp(slash, "/put-events");
    pthread_rwlock_rdlock(&d->lock);
    ebd_bus view, *b = ebd_bus_view(d, name, (size_t)(slash - name), &view) ? &view : NULL;
    enum MHD_Result r;
    if (!b) {
        char msg[300];
        snprintf(msg, sizeof msg, "no bus '%.*s'", (int)(slash - name < 200 ? slash - name : 200), name);
        r = send_error(c, 404, msg, "bus", NULL);
    } else if (authorize(c, b->token)) {
        unsigned st = authorize(c, b->token);
        r = send_error(c, st, st == 401 ? "this bus needs a token (Authorization: Bearer ...)"
                                        : "the token is wrong for this bus", NULL, NULL);
    } else if (rq->too_big) {
        r = send_too_big(c);
    } else {
        r = put ? put_events(c, b, rq) : put_events_ce(c, b, rq);
    }
    pthread_rwlock_unlock(&d->lock);
    return r;
}

static enum MHD_Result serve(void *cls, struct MHD_Connection *c, const char *url,
                             const char *method, const char *version, const char *data,
                             size_t *size, void **state)
{
    (void)version;
    ebd *d = cls;
    request *rq = *state;
    if (!rq) {
        conn *k = conn_of(c);
        int full = connection_admitted(d->ingest, k);
        if (full)
            set_deadline(k, W_RESERVE, RESERVE_TIMEOUT);   /* to be answered and gone */
        else
            set_deadline(k, W_BODY, d->body_timeout);
        rq = calloc(1, sizeof *rq);
        if (!rq)
            return MHD_NO;
        *state = rq;
        rq->busy = atomic_fetch_add(&d->inflight, 1) >= d->max_requests;
        /* What can be refused before the body is (refuse); nothing is buffered for it. */
        if (full) {
            rq->answered = true;
            return send_full(c, d, k, full);
        }
        if (rq->busy)
            return refuse(c, rq, 429, "too many requests at once", NULL, "1");
        if (atomic_load(&d->stopping))
            return refuse(c, rq, 503, "the daemon is stopping", NULL, "1");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        unsigned long long length = cl ? strtoull(cl, NULL, 10) : 0;
        if (length > MAX_BODY) {
            char msg[160];
            too_big_text(msg, sizeof msg);
            return refuse(c, rq, 413, msg, NULL, NULL);
        }
        const char *name = url + sizeof "/v1/buses/" - 1, *slash = ingest_path(url);
        if (!strcmp(method, "POST") && slash) {
            pthread_rwlock_rdlock(&d->lock);
            ebd_bus view;
            bool found = ebd_bus_view(d, name, (size_t)(slash - name), &view);
            unsigned deny = found ? authorize(c, view.token) : 0;
            pthread_rwlock_unlock(&d->lock);
            if (!found) {
                char msg[300];
                snprintf(msg, sizeof msg, "no bus '%.*s'", (int)(slash - name < 200 ? slash - name : 200), name);
                return refuse(c, rq, 404, msg, "bus", NULL);
            }
            if (deny)
                return refuse(c, rq, deny, deny == 401 ? "this bus needs a token (Authorization: "
                              "Bearer ...)" : "the token is wrong for this bus", NULL, NULL);
        }
        /* A body of known length counts whole from now on (it is all coming). */
        if (length && !take_buffered(d, rq, length + 1)) {
            char msg[300];
            over_buffered_text(d, msg, sizeof msg);
            return refuse(c, rq, 503, msg, NULL, "1");
        }
        return MHD_YES;
    }
    if (rq->answered) {
        *size = 0;
        return MHD_YES;
    }
    if (*size) {
        if (rq->refused || rq->too_big || rq->over_buffered) {
            /* dropped */
        } else if (rq->body.n + *size > MAX_BODY) {
            rq->too_big = true;
            drop_buffered(d, rq);
        } else if (!body_room(d, rq, *size)) {
            rq->over_buffered = true;
            drop_buffered(d, rq);
        } else {
            sb_put(&rq->body, data, *size);
        }
        *size = 0;
        return MHD_YES;
    }
    set_deadline(conn_of(c), W_NONE, 0);        /* all of it came: handled and answered */
    if (rq->refused)
        return send_error(c, rq->refused, rq->refused_msg, rq->refused_field, rq->refused_retry);
    if (rq->over_buffered)
        return send_over_buffered(c, d);
    if (rq->busy)
        return send_error(c, 429, "too many requests at once", NULL, "1");
    if (atomic_load(&d->stopping))
        return send_error(c, 503, "the daemon is stopping", NULL, "1");
    if (rq->body.oom)
        return send_error(c, 503, "out of memory", NULL, "1");
    if (!rq->body.v)
        sb_put(&rq->body, "", 0);
    return handle(c, d, url, method, rq);
}

/* Serves the request's call; the metrics count what ingest refused (center/metrics.c). */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *size, void **state)
{
    mt_request_begin();
    enum MHD_Result r = serve(cls, c, url, method, version, data, size, state);
    const char *put = !strcmp(method, "POST") ? ingest_path(url) : NULL;
    const char *bus = url + sizeof "/v1/buses/" - 1;
    mt_request_end(put ? bus : NULL, put ? (size_t)(put - bus) : 0);
    return r;
}

static void on_done(void *cls, struct MHD_Connection *c, void **state,
                    enum MHD_RequestTerminationCode why)
{
    (void)why;
    ebd *d = cls;
    request *rq = *state;
    if (rq) {
        atomic_fetch_sub(&d->inflight, 1);
        drop_buffered(d, rq);
        free(rq);
    }
    *state = NULL;
    /* A kept-alive connection waits for its next request's headers. */
    set_deadline(conn_of(c), W_HEADERS, d->header_timeout);
}

/* The listening socket is ours, so that a port in use is an error with its cause: address reuse
 * lets a restart bind past connections in TIME_WAIT, but never SO_REUSEPORT, with which a second
 * daemon would bind the same port and take half of the traffic. */
int ebd_http_listen(const char *host, uint16_t port, char *err, size_t cap)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        snprintf(err, cap, "--listen: '%s' is not an IPv4 address", host);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 4096) != 0) {
        int e = errno;
        snprintf(err, cap, "cannot listen on %s:%u: %s%s", host, port, strerror(e),
                 e == EADDRINUSE ? " (another ebd, or another program, listens there)" : "");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void stop_reaper(struct ebd_ingest *in)
{
    pthread_mutex_lock(&in->mu);
    in->stop = true;
    pthread_cond_signal(&in->cv);
    pthread_mutex_unlock(&in->mu);
    pthread_join(in->reaper, NULL);
}

/* Frees the connection table (empty once libmicrohttpd has stopped). */
static void free_ingest(ebd *d)
{
    struct ebd_ingest *in = d->ingest;
    if (!in)
        return;
    for (size_t i = 0; i < IP_BUCKETS; i++)
        while (in->ips[i]) {
            ipcount *next = in->ips[i]->next;
            free(in->ips[i]);
            in->ips[i] = next;
        }
    pthread_cond_destroy(&in->cv);
    pthread_mutex_destroy(&in->mu);
    free(in);
    d->ingest = NULL;
}

struct MHD_Daemon *ebd_http_start(ebd *d, int fd, const char *host, uint16_t port, char *err,
                                  size_t cap)
{
    /* MHD_USE_ITC: MHD_stop_daemon wakes every worker through it; without it, a worker at its
     * share of the connection limit (which no longer watches the listening socket) slept until
     * its next time-out, and a SIGTERM took up to a minute. */
    unsigned flags = MHD_USE_EPOLL_INTERNALLY | MHD_USE_TURBO | MHD_USE_ITC |
                     (d->tls_cert ? MHD_USE_TLS : 0);
    struct MHD_OptionItem tls[] = {
        { d->tls_cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, d->tls_cert },
        { MHD_OPTION_HTTPS_MEM_KEY, 0, d->tls_key },
        { MHD_OPTION_END, 0, NULL },
    };
    struct ebd_ingest *in = calloc(1, sizeof *in);
    pthread_condattr_t ca;
    if (!in || pthread_condattr_init(&ca) != 0) {
        free(in);
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    in->d = d;
    pthread_mutex_init(&in->mu, NULL);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&in->cv, &ca);
    pthread_condattr_destroy(&ca);
    d->ingest = in;
    /* The reaper first: once libmicrohttpd has the socket, only MHD_stop_daemon closes it. */
    int e = pthread_create(&in->reaper, NULL, reap, in);
    if (e != 0) {
        snprintf(err, cap, "cannot start a thread: %s", strerror(e));
        free_ingest(d);
        return NULL;
    }
    unsigned idle = MIN_IDLE_TIMEOUT;
    idle = d->header_timeout > idle ? d->header_timeout : idle;
    idle = d->body_timeout > idle ? d->body_timeout : idle;
    struct MHD_Daemon *h = MHD_start_daemon(
        flags, port, NULL, NULL, on_request, d, MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)HTTP_THREADS,
        MHD_OPTION_NOTIFY_COMPLETED, on_done, d, MHD_OPTION_NOTIFY_CONNECTION, on_connection, d,
        MHD_OPTION_CONNECTION_TIMEOUT, idle,
        MHD_OPTION_CONNECTION_LIMIT, d->max_connections + ebd_http_reserve(d->max_connections),
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, d->max_client_connections
            ? d->max_client_connections + client_reserve(d->max_client_connections) : 0u,
        MHD_OPTION_ARRAY, tls, MHD_OPTION_END);
    if (!h) {
        snprintf(err, cap, d->tls_cert ? "cannot serve HTTPS on %s:%u: the TLS certificate or key "
                 "was refused (not a PEM certificate and private key, or they do not match)"
                 : "cannot serve on %s:%u", host, port);
        stop_reaper(in);
        free_ingest(d);
    }
    return h;
}

void ebd_http_stop(ebd *d, struct MHD_Daemon *h)
{
    if (!h)
        return;
    stop_reaper(d->ingest);
    MHD_stop_daemon(h);         /* every connection's CLOSED notice comes before it returns */
    free_ingest(d);
}
