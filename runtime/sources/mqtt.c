/*
 * mqtt.c — MQTT sources and targets through libmosquitto (mqtt.h).
 *
 * The CloudEvent made from a message
 * ----------------------------------
 * A message that already is a CloudEvent (the CloudEvents MQTT protocol binding) is taken as it
 * is:
 *   - structured mode: its MQTT 5 Content Type is application/cloudevents+json (parameters
 *     such as ;charset=utf-8 allowed); the payload is the event, in the JSON format;
 *   - binary mode: it has MQTT 5 User Properties specversion "1.0", id, source and type; the
 *     event is built from the User Properties (each whose name is a CloudEvents attribute name,
 *     a-z and 0-9, becomes that attribute: subject, time, dataschema, extensions), the Content
 *     Type as datacontenttype and the payload as the data;
 *   - a message without a Content Type (as every MQTT 3.1.1 message is) whose payload is a JSON
 *     object with a "specversion" member is taken as a structured event.
 * The bus checks the event as it checks what is posted to it; one it refuses is acknowledged
 * and logged (a broker would give it again forever otherwise).
 *
 * Any other message becomes the event
 *   specversion  1.0
 *   id           32 hexadecimal digits (below)
 *   source       mqtt://HOST:PORT/TOPIC   (the broker as the URL names it, the message's topic)
 *   type         mqtt.message
 *   subject      the topic
 *   time         when the source received it
 *   datacontenttype, data / data_base64
 *                the payload: as JSON when it is JSON (and the Content Type, if any, a JSON
 *                one), as a string when the Content Type is text/..., otherwise in base64
 *
 * The id is stable across redeliveries so that the bus's de-duplication window stores a
 * message the broker gives again (after a lost acknowledgement) once: it is a hash of the
 * client id, the topic, "mid N gen G" and the payload, N being the packet identifier the broker
 * gave the QoS 1 message (kept on a redelivery) and G its generation (below).  A retained message
 * given again on subscribing hashes the word "retained" in place of "mid N gen G", so its
 * replays are one event within the window.  A QoS 0 message is never given again: its id is
 * unique.
 *
 * Generations of packet identifiers
 * ---------------------------------
 * A broker numbers the QoS 1 messages it sends a session 1, 2, ... 65535, 1, 2, ... (mosquitto's
 * mosquitto__mid_generate skips 0; it numbers a message when it queues it for the session), so
 * a heartbeat's payload would meet the one sent 65535 messages earlier under the same
 * identifier.  libmosquitto does not pass the DUP flag on, so whether a message is new or given
 * again is told by sequence arithmetic.  Identifiers are read on their cycle of 65535 (the one
 * after 65535 is 1; a modulus of 65536 would count that step as two and misjudge distances of
 * about half a cycle across the wrap): with L the newest identifier seen and M the message's,
 * d = (M - L) mod 65535, taken in -32767..32767.
 *   - d > 0: a new message.  If M < L the identifiers wrapped and the generation G grows by one.
 *     L becomes M; the message belongs to G.
 *   - d <= 0: a message given again (a broker gives again only what is unacknowledged, at most
 *     its in-flight window behind L): it belongs to G when M <= L, to G - 1 when M > L (it was
 *     numbered before the wrap).
 *   - a CONNACK without "session present": the broker has no session (it forgot it, or never had
 *     it), numbers from 1 again and cannot give anything earlier again, so G grows by one and L
 *     is forgotten.  (Left to the arithmetic, a restart at 1 reads as a wrap only when L was
 *     above 32768; below, 1 would read as a redelivery and meet an earlier id.)
 * Every QoS 1 message advances L, retained and CloudEvents ones too: they take identifiers.
 * (G, L) is kept in the source's state file (state_path; written to a temporary file, fsynced
 * and renamed): saved on every wrap and new session, after at most 1024 identifiers and when
 * the source stops; read when it starts.  So ids stay the same across a restart or a kill -9: a
 * saved L lags by less than 1024, and the messages after it (given again or new) come in the
 * order they were numbered, so they take G and L forward as they did before the crash, a wrap
 * since the save included (M < L with d > 0).  For the same reason messages unacknowledged across
 * a wrap at a crash still get their ids: a wrap is saved when the first message after it is
 * seen, before it is stored, and those before it, given again, read as G - 1.  A missing state
 * (first start, state_path NULL) or one that cannot be read begins G at the wall clock in
 * milliseconds, so its ids do not meet those of an earlier state (unless that one wrapped more
 * than once a millisecond): a message given again across a lost state is stored twice, never
 * lost.
 * Limits.  Two messages share an id (the later is dropped if alike in topic and payload and
 * within the window), or one message gets two (stored twice), when
 *   - more than 32767 identifiers lie between a message given again and the newest seen (an
 *     in-flight window over 32767; mosquitto's max_inflight_messages is 20 by default), or
 *     between two messages seen one after the other (a broker that numbers messages it never
 *     sends, as mosquitto does with those it drops over max_queued_messages while the source is
 *     away);
 *   - the broker numbers other than in sequence, or reuses identifiers it gave out: one that
 *     crashes and restarts from an older save of the session (mosquitto's autosave_interval)
 *     numbers new messages with identifiers given since that save, and they read as given again;
 *   - the state file cannot be written for 32767 identifiers or more (each failure is logged).

 * Acknowledging only what the bus stored (QoS 1)
 * ----------------------------------------------
 * libmosquitto 2.0.11 has no manual acknowledgement.  Read in its sources (tag v2.0.11):
 * lib/handle_publish.c handle__publish() calls send__puback() for a QoS 1 message *before* it
 * calls on_message / on_message_v5; send__puback ends in packet__queue() (lib/packet_mosq.c),
 * which writes at once (packet__write) only when `mosq->in_callback == false && mosq->threaded
 * == mosq_ts_none`, and otherwise only appends the packet to the out queue.  The queue is
 * written by mosquitto_loop() (lib/loop.c) in mosquitto_loop_write(), after
 * mosquitto_loop_read() — which calls the handler, hence on_message — has returned; nothing else
 * in lib/ calls packet__write.  So each connection here is marked threaded
 * (mosquitto_threaded_set: mosq_ts_external) and runs mosquitto_loop() in a thread of its own:
 * the PUBACK of a message cannot reach the socket before its on_message has returned.
 * on_message therefore stores the event synchronously; while the sink answers SRC_RETRY it tries
 * again with a growing pause for hold_ms, and if it still cannot (or the source is stopping) it
 * shutdown()s the socket from inside the callback.  The queued PUBACK then fails to be written,
 * mosquitto_loop() reports the connection lost, and mosquitto__reconnect() (lib/connect.c)
 * drops the out queue (packet__cleanup_all) before connecting again, so the stale PUBACK is
 * never sent on the new connection.  The broker keeps the unacknowledged message in the
 * persistent session (clean session off; MQTT 5 session expiry "never") and gives it again,
 * with the same packet identifier, when the source is back.  Messages read in the same batch
 * after it are not acknowledged either and come again (their ids make them one event each).
 *
 * Each connection's thread connects, runs the loop and reconnects itself (0.1 s, doubling to
 * 5 s) rather than mosquitto_loop_forever(), which returns for good on some errors (a protocol
 * error, such as an MQTT 3.1.1 broker refusing MQTT 5) and sleeps through a stop.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "mqtt.h"

#define PAUSE_MIN_MS 100
#define PAUSE_MAX_MS 5000

static void fail(char *err, size_t cap, const char *fmt, const char *arg)
{
    if (cap)
        snprintf(err, cap, fmt, arg);
}

/* ---- the broker's URL --------------------------------------------------------------------- */

typedef struct {
    char host[256];
    int port;
    char user[256], password[256];
    bool has_user, has_password;
} broker_url;

/* Copies s[0..n) into out[0..cap) decoding %XX; false when it does not fit or is malformed. */
static bool url_part(const char *s, size_t n, char *out, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            int hi = i + 2 < n ? js_hexval(s[i + 1]) : -1, lo = hi >= 0 ? js_hexval(s[i + 2]) : -1;
            if (lo < 0)
                return false;
            c = hi * 16 + lo;
            i += 2;
        }
        if (k + 1 >= cap || c == 0)
            return false;
        out[k++] = (char)c;
    }
    out[k] = 0;
    return true;
}

/* Reads mqtt://[user[:password]@]host[:port][/] into u; false with err saying why. */
static bool parse_url(const char *url, broker_url *u, char *err, size_t cap)
{
    memset(u, 0, sizeof *u);
    if (!url || strncasecmp(url, "mqtt://", 7)) {
        if (url && !strncasecmp(url, "mqtts://", 8))
            fail(err, cap, "'%s': mqtts:// (TLS) is not supported; use mqtt://", url);
        else
            fail(err, cap, "'%s' is not an mqtt://host[:port] URL", url ? url : "");
        return false;
    }
    const char *p = url + 7, *end = p + strcspn(p, "/?#");
    if (*end && strcmp(end, "/")) {
        fail(err, cap, "'%s': an MQTT broker URL has no path, query or fragment", url);
        return false;
    }
    const char *at = memchr(p, '@', (size_t)(end - p));
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *ue = colon ? colon : at;
        u->has_user = true;
        u->has_password = colon != NULL;
        if (!url_part(p, (size_t)(ue - p), u->user, sizeof u->user) ||
            (colon && !url_part(colon + 1, (size_t)(at - colon - 1), u->password,
                                sizeof u->password))) {
            fail(err, cap, "'%s': a bad user or password", url);
            return false;
        }
        p = at + 1;
    }
    const char *hs = p, *he;
    if (*p == '[') {                      /* an IPv6 address */
        he = memchr(p, ']', (size_t)(end - p));
        hs = p + 1;
        p = he ? he + 1 : end;
    } else {
        he = memchr(p, ':', (size_t)(end - p));
        he = he ? he : end;
        p = he;
    }
    u->port = 1883;
    if (p < end && *p == ':') {
        char *e;
        long port = strtol(p + 1, &e, 10);
        if (e != end || port < 1 || port > 65535 || p + 1 == end)
            he = NULL;
        u->port = (int)port;
    } else if (p != end) {
        he = NULL;
    }
    if (!he || he == hs || (size_t)(he - hs) >= sizeof u->host) {
        fail(err, cap, "'%s': the host or port is not valid", url);
        return false;
    }
    memcpy(u->host, hs, (size_t)(he - hs));
    return true;
}

/* ---- one connection and the thread that runs it ------------------------------------------- */

typedef struct conn conn;
struct conn {
    struct mosquitto *m;
    char what[160];                   /* for logs: "source=NAME" or "target=HOST:PORT" */
    broker_url u;
    int keepalive;
    bool clean;                       /* clean session (no persistent session) */
    atomic_int version;               /* MQTT_PROTOCOL_V5, or V311 after the broker refused 5 */
    atomic_bool stopping, up;
    bool downgrade;                   /* (loop thread) the broker refused MQTT 5 */
    bool failing;                     /* (loop thread) the last try failed: logged already */
    bool ever;                        /* (loop thread) connected once */
    int pause_ms;                     /* (loop thread) before the next try */
    pthread_t th;
    bool started;
    pthread_mutex_t mu;               /* with cv: pauses cut short by a stop; a publisher's waits */
    pthread_cond_t cv;
    void (*on_up)(conn *c, int flags); /* connected (CONNACK accepted; its flags) */
    void *owner;
};

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

static void lib_init(void)
{
    mosquitto_lib_init();
}

/* Waits ms, or less when the connection is stopping. */
static void conn_pause(conn *c, long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&c->mu);
    while (!atomic_load(&c->stopping) && pthread_cond_timedwait(&c->cv, &c->mu, &ts) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&c->mu);
}

static void on_connect(struct mosquitto *m, void *arg, int rc, int flags,
                       const mosquitto_property *props)
{
    (void)m, (void)props;
    conn *c = arg;
    if (rc == 0) {
        c->pause_ms = PAUSE_MIN_MS;
        if (c->failing || !c->ever)
            ebd_log(EBD_INFO, "msg=\"connected to the MQTT broker\" %s broker=%s:%d mqtt=%s",
                    c->what, c->u.host, c->u.port,
                    atomic_load(&c->version) == MQTT_PROTOCOL_V5 ? "5" : "3.1.1");
        c->failing = false;
        c->ever = true;
        if (c->on_up)
            c->on_up(c, flags);
        pthread_mutex_lock(&c->mu);
        atomic_store(&c->up, true);
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (rc == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION && atomic_load(&c->version) == MQTT_PROTOCOL_V5) {
        c->downgrade = true;
        return;
    }
    const char *why = atomic_load(&c->version) == MQTT_PROTOCOL_V5 ? mosquitto_reason_string(rc)
                                                                   : mosquitto_connack_string(rc);
    ebd_log(EBD_WARN, "msg=\"the MQTT broker refused the connection\" %s broker=%s:%d why=\"%s\"",
            c->what, c->u.host, c->u.port, why);
    c->failing = true;
}

/* Connects (blocking) with the connection's protocol version and session. */
static int conn_connect(conn *c)
{
    mosquitto_property *props = NULL;
    bool v5 = atomic_load(&c->version) == MQTT_PROTOCOL_V5;
    mosquitto_int_option(c->m, MOSQ_OPT_PROTOCOL_VERSION, atomic_load(&c->version));
    /* An MQTT 5 session ends with its connection unless it is given an expiry; 3.1.1's
     * persistent sessions never expire, and so are these. */
    if (v5 && !c->clean &&
        mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, UINT32_MAX))
        return MOSQ_ERR_NOMEM;
    int rc = mosquitto_connect_bind_v5(c->m, c->u.host, c->u.port, c->keepalive, NULL, props);
    mosquitto_property_free_all(&props);
    return rc;
}

/* After a failed try or a lost connection: logs it (once until connected again), and pauses. */
static void conn_down(conn *c, int rc)
{
    pthread_mutex_lock(&c->mu);
    atomic_store(&c->up, false);
    pthread_mutex_unlock(&c->mu);
    if (c->downgrade) {
        c->downgrade = false;
        atomic_store(&c->version, MQTT_PROTOCOL_V311);
        ebd_log(EBD_INFO, "msg=\"the MQTT broker refused MQTT 5: using 3.1.1\" %s broker=%s:%d",
                c->what, c->u.host, c->u.port);
        return;
    }
    if (!c->failing && !atomic_load(&c->stopping))
        ebd_log(EBD_WARN, "msg=\"no connection to the MQTT broker: trying again\" %s broker=%s:%d "
                "why=\"%s\"", c->what, c->u.host, c->u.port,
                rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    c->failing = true;
    conn_pause(c, c->pause_ms);
    c->pause_ms = c->pause_ms * 2 > PAUSE_MAX_MS ? PAUSE_MAX_MS : c->pause_ms * 2;
}

static void *conn_run(void *arg)
{
    conn *c = arg;
    int rc = conn_connect(c);
    while (!atomic_load(&c->stopping)) {
        if (rc == MOSQ_ERR_SUCCESS)
            rc = mosquitto_loop(c->m, 200, 1);
        if (rc != MOSQ_ERR_SUCCESS && !atomic_load(&c->stopping)) {
            conn_down(c, rc);
            if (!atomic_load(&c->stopping))
                rc = conn_connect(c);
        }
    }
    if (atomic_load(&c->up) && mosquitto_disconnect(c->m) == MOSQ_ERR_SUCCESS)
        mosquitto_loop(c->m, 100, 1);              /* (writes the DISCONNECT) */
    atomic_store(&c->up, false);
    return NULL;
}

/* Makes c's locks: first of all, so that conn_stop can always run. */
static void conn_init(conn *c)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&c->mu, NULL);
    atomic_init(&c->version, MQTT_PROTOCOL_V5);
    c->pause_ms = PAUSE_MIN_MS;
}

/* Makes c's client (c->u, clean, what, on_up and owner given); its callbacks are set before
 * conn_go. */
static bool conn_open(conn *c, const char *client_id, const char *user, const char *password,
                      char *err, size_t cap)
{
    pthread_once(&lib_once, lib_init);
    c->m = mosquitto_new(client_id, c->clean, c);
    if (!c->m) {
        fail(err, cap, "cannot make an MQTT client: %s", strerror(errno));
        return false;
    }
    if (!user && c->u.has_user) {
        user = c->u.user;
        password = c->u.has_password ? c->u.password : NULL;
    }
    if (user && mosquitto_username_pw_set(c->m, user, password) != MOSQ_ERR_SUCCESS) {
        fail(err, cap, "%s", "cannot set the MQTT user and password");
        return false;
    }
    mosquitto_threaded_set(c->m, true);   /* (the PUBACK mechanism at the top relies on it) */
    mosquitto_int_option(c->m, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_connect_v5_callback_set(c->m, on_connect);
    return true;
}

/* Starts c's thread. */
static bool conn_go(conn *c, char *err, size_t cap)
{
    if (pthread_create(&c->th, NULL, conn_run, c)) {
        fail(err, cap, "%s", "cannot start a thread");
        return false;
    }
    c->started = true;
    return true;
}

/* Stops c's thread (if conn_go started it) and frees what conn_init and conn_open made. */
static void conn_stop(conn *c)
{
    pthread_mutex_lock(&c->mu);
    atomic_store(&c->stopping, true);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->started)
        pthread_join(c->th, NULL);
    if (c->m)
        mosquitto_destroy(c->m);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
}

/* ---- generations of packet identifiers (the top comment) ---------------------------------- */

#define MID_CYCLE 65535              /* identifiers 1..65535: 0 is never given */

void mqtt_mid_init(mqtt_midstate *st)
{
    *st = (mqtt_midstate){ .gen = (uint64_t)ebd_wall_ms() };
}

/* (to - from) on the cycle of identifiers, in -32767..32767. */
static int mid_distance(int from, int to)
{
    int d = ((to - from) % MID_CYCLE + MID_CYCLE) % MID_CYCLE;
    return d > MID_CYCLE / 2 ? d - MID_CYCLE : d;
}

uint64_t mqtt_mid_gen(mqtt_midstate *st, int mid)
{
    st->save = st->save || ++st->unsaved >= MQTT_MID_SAVE_EVERY;
    if (st->last_mid && mid_distance(st->last_mid, mid) <= 0)
        return mid <= st->last_mid ? st->gen : st->gen - 1;
    if (st->last_mid && mid < st->last_mid) {
        st->gen++;
        st->save = true;
    }
    st->last_mid = mid;
    return st->gen;
}

void mqtt_mid_reset(mqtt_midstate *st)
{
    st->gen++;
    st->last_mid = 0;
    st->save = true;
}

/* Syncs the folder of path, so that a rename into it outlasts a power loss. */
static void sync_dir(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    if (n >= sizeof dir)
        return;
    memcpy(dir, n ? path : ".", n ? n : 1);
    dir[n ? n : 1] = 0;
    int fd = open(slash == path ? "/" : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

bool mqtt_mid_save(mqtt_midstate *st, const char *path, char *err, size_t cap)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
        fail(err, cap, "'%s': the path is too long", path);
        return false;
    }
    char line[64];
    int n = snprintf(line, sizeof line, "%" PRIu64 " %d\n", st->gen, st->last_mid);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    bool ok = fd >= 0 && write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    int e = errno;
    ok = fd >= 0 && close(fd) == 0 && ok;
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        if (cap)
            snprintf(err, cap, "'%s': %s", tmp, strerror(e ? e : EIO));
        unlink(tmp);
        return false;
    }
    sync_dir(path);
    st->save = false;
    st->unsaved = 0;
    return true;
}

int mqtt_mid_load(mqtt_midstate *st, const char *path, char *err, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT)
            return 0;
        if (cap)
            snprintf(err, cap, "'%s': %s", path, strerror(errno));
        return -1;
    }
    uint64_t gen;
    int mid;
    char end;
    bool ok = fscanf(f, "%" SCNu64 " %d%c", &gen, &mid, &end) == 3 && end == '\n' &&
              mid >= 0 && mid <= MID_CYCLE;
    fclose(f);
    if (!ok) {
        fail(err, cap, "'%s': not a packet identifier state (\"GEN LAST_MID\")", path);
        return -1;
    }
    *st = (mqtt_midstate){ .gen = gen, .last_mid = mid };
    return 1;
}

/* ---- sources ------------------------------------------------------------------------------ */

struct mqtt_source {
    conn c;
    src_sink sink;
    char *client_id;
    char **topics;
    size_t ntopics;
    int qos;
    long hold_ms;
    char origin[300];                 /* "mqtt://HOST:PORT" */
    atomic_ulong withheld, nonce;
    atomic_bool refused;              /* the last SUBACK refused a topic (or subscribing failed) */
    char *state_path;                 /* NULL: mid kept in memory only */
    mqtt_midstate mid;                /* (loop thread, then mqtt_source_stop) */
};

/* Saves s's packet identifier state, logging a failure (ids are still made meanwhile). */
static void save_mids(mqtt_source *s)
{
    char err[300], w[400];
    if (s->state_path && !mqtt_mid_save(&s->mid, s->state_path, err, sizeof err))
        ebd_log(EBD_ERROR, "msg=\"cannot save the MQTT packet identifier state\" %s why=\"%s\"",
                s->c.what, ebd_log_text(err, w, sizeof w));
    s->mid.save = false;
}

/* Reads s's packet identifier state; one that cannot be read is logged and left fresh. */
static void load_mids(mqtt_source *s)
{
    char err[300], w[400];
    if (s->state_path && mqtt_mid_load(&s->mid, s->state_path, err, sizeof err) < 0)
        ebd_log(EBD_ERROR, "msg=\"MQTT packet identifier state unreadable: a new generation "
                "begins (a message given again now is stored twice)\" %s why=\"%s\"", s->c.what,
                ebd_log_text(err, w, sizeof w));
}

/* on_up: a new session begins a generation (the top comment); the topics are subscribed to. */
static void subscribe(conn *c, int flags)
{
    mqtt_source *s = c->owner;
    if (s->qos > 0 && !(flags & 1)) {    /* (bit 0 of the CONNACK flags: session present) */
        mqtt_mid_reset(&s->mid);
        save_mids(s);
    }
    bool v5 = atomic_load(&c->version) == MQTT_PROTOCOL_V5;
    /* (MQTT 5: retained messages only when a subscription is new, not on every reconnect) */
    int rc = mosquitto_subscribe_multiple(c->m, NULL, (int)s->ntopics, s->topics, s->qos,
                                          v5 ? MQTT_SUB_OPT_SEND_RETAIN_NEW : 0, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        ebd_log(EBD_ERROR, "msg=\"cannot subscribe\" %s why=\"%s\"", c->what,
                mosquitto_strerror(rc));
        atomic_store(&s->refused, true);
    }
}

/* The SUBACK of subscribe()'s one SUBSCRIBE: granted[i] answers topics[i], 0x80 and up
 * (3.1.1's Failure, MQTT 5's reason codes) a refusal. */
static void on_subscribe(struct mosquitto *m, void *arg, int mid, int n, const int *granted,
                         const mosquitto_property *props)
{
    (void)m, (void)mid, (void)props;
    mqtt_source *s = ((conn *)arg)->owner;
    bool refused = n != (int)s->ntopics;
    for (int i = 0; i < n && i < (int)s->ntopics; i++) {
        char t[200];
        if (granted[i] >= 0x80) {
            refused = true;
            ebd_log(EBD_ERROR, "msg=\"the MQTT broker refused a subscription: nothing comes from "
                    "that topic\" %s topic=\"%s\" why=\"%s\"", s->c.what,
                    ebd_log_text(s->topics[i], t, sizeof t), mosquitto_reason_string(granted[i]));
        } else if (granted[i] < s->qos) {
            ebd_log(EBD_WARN, "msg=\"the MQTT broker granted QoS 0 only: its messages are not "
                    "kept for the source\" %s topic=\"%s\"", s->c.what,
                    ebd_log_text(s->topics[i], t, sizeof t));
        }
    }
    if (n != (int)s->ntopics)
        ebd_log(EBD_ERROR, "msg=\"the MQTT broker answered %d subscriptions of %zu\" %s", n,
                s->ntopics, s->c.what);
    if (!refused && atomic_load(&s->refused))
        ebd_log(EBD_INFO, "msg=\"subscribed to every topic\" %s", s->c.what);
    atomic_store(&s->refused, refused);
}

static bool media_is(const char *ct, const char *type)
{
    size_t n = strcspn(ct, ";");
    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    return n == strlen(type) && !strncasecmp(ct, type, n);
}

static bool attr_name(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= 20 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789") == n &&
           strcmp(s, "data") && strcmp(s, "data_base64") && strcmp(s, "specversion");
}

#define MAX_ATTRS 32

/* A binary-mode event: the message's User Properties as attributes.  Returns false when they do
 * not make one (no specversion 1.0, or no id, source or type), leaving out untouched. */
static bool binary_event(const mosquitto_property *props, const char *ct, const void *data,
                         size_t n, sbuf *out)
{
    char *names[MAX_ATTRS], *values[MAX_ATTRS];
    size_t k = 0;
    src_ce e = { .content_type = ct, .data = data, .n = n };
    bool spec = false;
    const mosquitto_property *p = props;
    for (bool skip = false; k < MAX_ATTRS; skip = true) {
        char *name = NULL, *value = NULL;
        p = mosquitto_property_read_string_pair(p, MQTT_PROP_USER_PROPERTY, &name, &value, skip);
        if (!p)
            break;
        if (!strcmp(name, "specversion"))
            spec = spec || !strcmp(value, "1.0");
        if (attr_name(name) && !(ct && !strcmp(name, "datacontenttype"))) {
            names[k] = name;
            values[k++] = value;
        } else {
            free(name);
            free(value);
        }
    }
    /* the required and the typed attributes in their fields; the rest as written */
    const char **fields[] = { &e.id, &e.source, &e.type, &e.subject, &e.content_type };
    const char *fnames[] = { "id", "source", "type", "subject", "datacontenttype" };
    const char *ext_n[MAX_ATTRS], *ext_v[MAX_ATTRS];
    size_t next = 0;
    for (size_t i = 0; i < k; i++) {
        size_t f = 0;
        while (f < 5 && strcmp(names[i], fnames[f]))
            f++;
        if (f < 5)
            *fields[f] = values[i];
        else {
            ext_n[next] = names[i];
            ext_v[next++] = values[i];
        }
    }
    e.ext_names = ext_n;
    e.ext_values = ext_v;
    e.next = next;
    bool ok = spec && e.id && *e.id && e.source && *e.source && e.type && *e.type;
    if (ok)
        src_event_json(out, &e);
    for (size_t i = 0; i < k; i++) {
        free(names[i]);
        free(values[i]);
    }
    return ok;
}

/* An ordinary message as the event mqtt.c's top comment describes. */
static void plain_event(mqtt_source *s, const struct mosquitto_message *msg, uint64_t gen,
                        const char *ct, sbuf *out)
{
    char mid[64], src[600];
    if (msg->retain)
        snprintf(mid, sizeof mid, "retained");
    else if (msg->qos > 0)
        snprintf(mid, sizeof mid, "mid %d gen %" PRIu64, msg->mid, gen);
    else
        snprintf(mid, sizeof mid, "once %lld %lu", (long long)ebd_wall_ms(),
                 atomic_fetch_add(&s->nonce, 1));
    const void *parts[] = { s->client_id, msg->topic, mid, msg->payload };
    size_t lens[] = { strlen(s->client_id), strlen(msg->topic), strlen(mid),
                      (size_t)msg->payloadlen };
    char id[33];
    src_hash_id(id, parts, lens, 4);
    /* (a topic may hold what a URI may not: a space, '"', '|' ...) */
    int at = snprintf(src, sizeof src, "%s/", s->origin);
    src_uri_escape(src + at, sizeof src - (size_t)at, msg->topic);
    src_ce e = { .id = id, .source = src, .type = "mqtt.message", .subject = msg->topic,
                 .time_ms = ebd_wall_ms(), .content_type = ct, .data = msg->payload,
                 .n = (size_t)msg->payloadlen };
    src_event_json(out, &e);
}

/* The CloudEvent of msg (gen: its packet identifier's generation, for QoS 1), in out. */
static void message_event(mqtt_source *s, const struct mosquitto_message *msg, uint64_t gen,
                          const mosquitto_property *props, sbuf *out)
{
    char *ct = NULL;
    mosquitto_property_read_string(props, MQTT_PROP_CONTENT_TYPE, &ct, false);
    const char *p = msg->payload;
    size_t n = (size_t)msg->payloadlen;
    if (ct ? media_is(ct, "application/cloudevents+json") : src_json_event(p, n))
        sb_put(out, p, n);
    else if (!binary_event(props, ct, p, n, out))
        plain_event(s, msg, gen, ct, out);
    free(ct);
}

/* Keeps the message unacknowledged: see "Acknowledging only what the bus stored" above. */
static void withhold(mqtt_source *s, const struct mosquitto_message *msg, const char *why)
{
    char w[300];
    ebd_log(EBD_WARN, "msg=\"message not stored: not acknowledged, the connection is dropped so "
            "that the broker gives it again\" %s topic=\"%s\" mid=%d why=\"%s\"", s->c.what,
            ebd_log_text(msg->topic, w, 100), msg->mid, ebd_log_text(why, w + 100, 200));
    shutdown(mosquitto_socket(s->c.m), SHUT_RDWR);
    atomic_fetch_add(&s->withheld, 1);
}

static void on_message(struct mosquitto *m, void *arg, const struct mosquitto_message *msg,
                       const mosquitto_property *props)
{
    (void)m;
    mqtt_source *s = ((conn *)arg)->owner;
    uint64_t gen = msg->qos > 0 ? mqtt_mid_gen(&s->mid, msg->mid) : 0;
    if (s->mid.save)                     /* (before the event is stored: the top comment) */
        save_mids(s);
    sbuf ev = { 0 };
    message_event(s, msg, gen, props, &ev);
    char why[256] = "out of memory";
    int64_t give_up = ebd_mono_ms() + s->hold_ms;
    for (long pause = 50; !ev.oom; pause = pause * 2 > 1000 ? 1000 : pause * 2) {
        if (s->sink.append(s->sink.arg, ev.v, ev.n, why, sizeof why) != SRC_RETRY)
            goto done;
        if (msg->qos == 0 || atomic_load(&s->c.stopping) || ebd_mono_ms() >= give_up)
            break;
        conn_pause(&s->c, pause);
    }
    if (msg->qos > 0) {
        withhold(s, msg, why);
    } else {
        char w[300];
        ebd_log(EBD_WARN, "msg=\"QoS 0 message lost: the bus cannot store it now\" %s "
                "topic=\"%s\" why=\"%s\"", s->c.what, ebd_log_text(msg->topic, w, 100),
                ebd_log_text(why, w + 100, 200));
    }
done:
    sb_free(&ev);
}

static bool source_conf_ok(const mqtt_source_conf *c, char *err, size_t cap)
{
    if (!c->name || !*c->name) {
        fail(err, cap, "%s", "an MQTT source needs a name");
        return false;
    }
    if (c->qos != 0 && c->qos != 1) {
        fail(err, cap, "source %s: qos must be 0 or 1", c->name);
        return false;
    }
    if (!c->ntopics) {
        fail(err, cap, "source %s: no topic to subscribe to", c->name);
        return false;
    }
    for (size_t i = 0; i < c->ntopics; i++)
        if (mosquitto_sub_topic_check(c->topics[i]) != MOSQ_ERR_SUCCESS) {
            fail(err, cap, "'%s' is not a valid MQTT topic filter", c->topics[i]);
            return false;
        }
    if (c->keepalive_s < 0 || (c->keepalive_s && c->keepalive_s < 5) || c->keepalive_s > 65535) {
        fail(err, cap, "source %s: keepalive must be 5 to 65535 seconds", c->name);
        return false;
    }
    return true;
}

mqtt_source *mqtt_source_start(const mqtt_source_conf *c, src_sink sink, char *err, size_t cap)
{
    if (!source_conf_ok(c, err, cap))
        return NULL;
    mqtt_source *s = calloc(1, sizeof *s);
    if (!s) {
        fail(err, cap, "%s", "out of memory");
        return NULL;
    }
    conn_init(&s->c);
    if (!parse_url(c->url, &s->c.u, err, cap)) {
        mqtt_source_stop(s);
        return NULL;
    }
    s->sink = sink;
    s->qos = c->qos;
    s->hold_ms = c->hold_ms > 0 ? c->hold_ms : 2000;
    s->c.keepalive = c->keepalive_s ? (int)c->keepalive_s : 30;
    s->c.clean = c->qos == 0;
    s->c.on_up = subscribe;
    s->c.owner = s;
    bool v6 = strchr(s->c.u.host, ':');
    snprintf(s->origin, sizeof s->origin, v6 ? "mqtt://[%s]:%d" : "mqtt://%s:%d", s->c.u.host,
             s->c.u.port);
    snprintf(s->c.what, sizeof s->c.what, "source=%s", c->name);
    size_t idn = strlen(c->name) + 5;
    s->client_id = c->client_id ? strdup(c->client_id) : malloc(idn);
    if (s->client_id && !c->client_id)
        snprintf(s->client_id, idn, "ebr-%s", c->name);
    s->topics = calloc(c->ntopics, sizeof *s->topics);
    s->ntopics = c->ntopics;
    mqtt_mid_init(&s->mid);
    s->state_path = c->state_path ? strdup(c->state_path) : NULL;
    bool ok = s->client_id && s->topics && (s->state_path || !c->state_path);
    if (ok)
        load_mids(s);
    for (size_t i = 0; ok && i < c->ntopics; i++)
        ok = (s->topics[i] = strdup(c->topics[i])) != NULL;
    if (!ok)
        fail(err, cap, "%s", "out of memory");
    if (ok && (ok = conn_open(&s->c, s->client_id, c->user, c->password, err, cap))) {
        mosquitto_message_v5_callback_set(s->c.m, on_message);
        mosquitto_subscribe_v5_callback_set(s->c.m, on_subscribe);
        ok = conn_go(&s->c, err, cap);
    }
    if (!ok) {
        mqtt_source_stop(s);
        return NULL;
    }
    return s;
}

void mqtt_source_stop(mqtt_source *s)
{
    if (!s)
        return;
    conn_stop(&s->c);
    if (s->c.started)
        save_mids(s);
    free(s->state_path);
    for (size_t i = 0; s->topics && i < s->ntopics; i++)
        free(s->topics[i]);
    free(s->topics);
    free(s->client_id);
    free(s);
}

bool mqtt_source_connected(const mqtt_source *s)
{
    return atomic_load(&s->c.up) && !atomic_load(&s->refused);
}

unsigned long mqtt_source_withheld(const mqtt_source *s)
{
    return atomic_load(&s->withheld);
}

/* ---- targets ------------------------------------------------------------------------------ */

/* A publisher waiting for the broker to take its message (on c.mu). */
typedef struct waiter {
    int mid;
    bool done;
    int reason;                        /* MQTT 5 PUBACK reason code (>= 0x80: refused) */
    struct waiter *next;
} waiter;

struct mqtt_pub {
    conn c;
    waiter *waiting;
};

static void on_publish(struct mosquitto *m, void *arg, int mid, int reason,
                       const mosquitto_property *props)
{
    (void)m, (void)props;
    conn *c = arg;
    mqtt_pub *p = c->owner;
    pthread_mutex_lock(&c->mu);
    for (waiter *w = p->waiting; w; w = w->next)
        if (w->mid == mid) {
            w->done = true;
            w->reason = reason;
        }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

mqtt_pub *mqtt_pub_open(const mqtt_target_conf *c, char *err, size_t cap)
{
    mqtt_pub *p = calloc(1, sizeof *p);
    if (!p) {
        fail(err, cap, "%s", "out of memory");
        return NULL;
    }
    conn_init(&p->c);
    if (!parse_url(c->url, &p->c.u, err, cap)) {
        mqtt_pub_close(p);
        return NULL;
    }
    p->c.keepalive = 30;
    p->c.clean = true;     /* (what a lost connection leaves unsent, the caller sends again) */
    p->c.owner = p;
    snprintf(p->c.what, sizeof p->c.what, "role=target");
    bool ok = conn_open(&p->c, c->client_id, c->user, c->password, err, cap);
    if (ok) {
        mosquitto_publish_v5_callback_set(p->c.m, on_publish);
        ok = conn_go(&p->c, err, cap);
    }
    if (!ok) {
        mqtt_pub_close(p);
        return NULL;
    }
    return p;
}

static struct timespec deadline_in(long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

/* Publishes under c.mu, so that on_publish cannot come before w is waiting. */
static int publish_locked(mqtt_pub *p, waiter *w, const char *topic, const void *data, size_t n,
                          const char *content_type, int qos, bool retain)
{
    mosquitto_property *props = NULL;
    if (content_type && atomic_load(&p->c.version) == MQTT_PROTOCOL_V5 &&
        mosquitto_property_add_string(&props, MQTT_PROP_CONTENT_TYPE, content_type))
        return MOSQ_ERR_NOMEM;
    int rc = mosquitto_publish_v5(p->c.m, &w->mid, topic, (int)n, data, qos, retain, props);
    mosquitto_property_free_all(&props);
    if (rc == MOSQ_ERR_SUCCESS) {
        w->next = p->waiting;
        p->waiting = w;
    }
    return rc;
}

static void unlink_waiter(mqtt_pub *p, waiter *w)
{
    for (waiter **q = &p->waiting; *q; q = &(*q)->next)
        if (*q == w) {
            *q = w->next;
            return;
        }
}

int mqtt_pub_send(mqtt_pub *p, const char *topic, const void *data, size_t n,
                  const char *content_type, int qos, bool retain, long timeout_ms, char *why,
                  size_t cap)
{
    if (qos != 0 && qos != 1) {
        fail(why, cap, "%s", "qos must be 0 or 1");
        return -1;
    }
    struct timespec until = deadline_in(timeout_ms > 0 ? timeout_ms : 0);
    waiter w = { 0 };
    pthread_mutex_lock(&p->c.mu);
    /* Not queued while disconnected: what libmosquitto holds is sent again on a reconnect, and
     * the caller's own tries would come on top. */
    while (!atomic_load(&p->c.up) && !atomic_load(&p->c.stopping) &&
           pthread_cond_timedwait(&p->c.cv, &p->c.mu, &until) != ETIMEDOUT)
        ;
    int rc = atomic_load(&p->c.up) ? publish_locked(p, &w, topic, data, n, content_type, qos, retain)
                                   : MOSQ_ERR_NO_CONN;
    while (rc == MOSQ_ERR_SUCCESS && !w.done &&
           pthread_cond_timedwait(&p->c.cv, &p->c.mu, &until) != ETIMEDOUT)
        ;
    if (rc == MOSQ_ERR_SUCCESS)
        unlink_waiter(p, &w);
    pthread_mutex_unlock(&p->c.mu);
    if (rc == MOSQ_ERR_NO_CONN) {
        if (cap)
            snprintf(why, cap, "not connected to the MQTT broker %s:%d", p->c.u.host, p->c.u.port);
        return -1;
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        fail(why, cap, "cannot publish: %s", mosquitto_strerror(rc));
        return -1;
    }
    if (!w.done) {
        fail(why, cap, "%s", qos ? "no PUBACK from the MQTT broker in time"
                                 : "the message was not written in time");
        return -1;
    }
    if (w.reason >= 0x80) {
        fail(why, cap, "the MQTT broker refused the message: %s", mosquitto_reason_string(w.reason));
        return -1;
    }
    return 0;
}

void mqtt_pub_close(mqtt_pub *p)
{
    if (!p)
        return;
    conn_stop(&p->c);
    free(p);
}
