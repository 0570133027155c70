/*
 * test_mqtt.c — MQTT sources and targets (runtime/sources/mqtt.c) against a real mosquitto each
 * test starts on a loopback port of its own (6000-8999) with persistence in a folder of its own:
 * messages become the CloudEvents mqtt.c describes (JSON, binary and text payloads, structured
 * events by Content Type or by a "specversion" member, binary-mode events by User Properties);
 * a QoS 1 message the sink cannot store is not acknowledged and comes again (stored once); a
 * persistent session keeps what was published while the source was stopped; a source and a
 * target reconnect after the broker restarts; a target publishes with QoS 1 from several threads
 * and fails in time while the broker is down; a source falls back to MQTT 3.1.1 when a broker
 * refuses MQTT 5 (a fake one).  Test messages are published and received with
 * libmosquitto directly.  Packet identifier generations: the sequence arithmetic on its own
 * (wraps, redeliveries across a wrap, a new session, the state file), and with a broker: equal
 * payloads get distinct ids through a real wrap of the broker's identifiers, and a message given
 * again to a restarted source keeps its id through the state file.  A subscription the broker
 * refuses (mosquitto's dynamic security plugin) makes the source not connected, and says so.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "../../runtime/ebd_int.h"
#include "../../runtime/sources/mqtt.h"
#include "servers.h"
#include "sink.h"

/* ---- a broker of the test's own ----------------------------------------------------------- */

typedef struct {
    srv s;
    const char *conf;                 /* more mosquitto.conf lines ("%s": the folder), or NULL */
} broker;

static bool port_up(const srv *s)
{
    return srv_port_open(s->port);
}

/* Starts mosquitto (sent SIGTERM if the test dies); the first time on a new port and folder,
 * later on the same ones. */
static void broker_start(broker *b)
{
    char conf[128];
    if (!b->s.port) {
        srv_make(&b->s, "mqtt", "mqtt", SIGTERM);
        /* (mosquitto started as root runs as user mosquitto: it must be able to save there) */
        cr_assert_eq(chmod(b->s.dir, 0777), 0);
        snprintf(conf, sizeof conf, "%s/mosquitto.conf", b->s.dir);
        FILE *f = fopen(conf, "w");
        cr_assert_not_null(f);
        fprintf(f, "listener %d 127.0.0.1\nallow_anonymous true\npersistence true\n"
                "persistence_location %s/\n", b->s.port, b->s.dir);
        if (b->conf)
            fprintf(f, b->conf, b->s.dir);
        fclose(f);
    }
    snprintf(conf, sizeof conf, "%s/mosquitto.conf", b->s.dir);
    char *argv[] = { "mosquitto", "-c", conf, NULL };
    srv_spawn(&b->s, "/usr/sbin/mosquitto", argv);
    char hint[32];
    snprintf(hint, sizeof hint, "port %d taken?", b->s.port);
    srv_await(&b->s, 30, port_up, hint);      /* (30 s: a busy machine) */
}

/* Stops mosquitto (SIGTERM: it saves its sessions on the way out). */
static void broker_kill(broker *b)
{
    srv_kill(&b->s, SIGTERM);
}

/* ---- publishing and receiving with libmosquitto ----------------------------------------- */

static void on_pub(struct mosquitto *m, void *arg, int mid)
{
    (void)m, (void)mid;
    *(bool *)arg = true;
}

/* Publishes one message (MQTT 5, properties as given) and waits for the broker to take it. */
static void publish(const broker *b, const char *topic, const void *data, size_t n, int qos,
                    const mosquitto_property *props)
{
    bool done = false;
    struct mosquitto *m = mosquitto_new(NULL, true, &done);
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_publish_callback_set(m, on_pub);
    cr_assert_eq(mosquitto_connect(m, "127.0.0.1", b->s.port, 30), MOSQ_ERR_SUCCESS);
    cr_assert_eq(mosquitto_publish_v5(m, NULL, topic, (int)n, data, qos, false, props), 0);
    for (int i = 0; i < 200 && !done; i++)
        mosquitto_loop(m, 50, 1);
    cr_assert(done, "the broker did not take the test's message");
    mosquitto_disconnect(m);
    mosquitto_loop(m, 50, 1);
    mosquitto_destroy(m);
}

static void publish_text(const broker *b, const char *topic, const char *text)
{
    publish(b, topic, text, strlen(text), 1, NULL);
}

typedef struct {
    pthread_mutex_t mu;
    char *payload[64], *ctype[64];
    size_t n;
} inbox;

static void on_msg(struct mosquitto *m, void *arg, const struct mosquitto_message *msg,
                   const mosquitto_property *props)
{
    (void)m;
    inbox *in = arg;
    char *ct = NULL;
    mosquitto_property_read_string(props, MQTT_PROP_CONTENT_TYPE, &ct, false);
    pthread_mutex_lock(&in->mu);
    if (in->n < 64) {
        in->payload[in->n] = strndup(msg->payload, (size_t)msg->payloadlen);
        in->ctype[in->n++] = ct;
        ct = NULL;
    }
    pthread_mutex_unlock(&in->mu);
    free(ct);
}

static size_t inbox_count(inbox *in)
{
    pthread_mutex_lock(&in->mu);
    size_t n = in->n;
    pthread_mutex_unlock(&in->mu);
    return n;
}

static struct mosquitto *subscriber(const broker *b, const char *topic, inbox *in)
{
    pthread_mutex_init(&in->mu, NULL);
    struct mosquitto *m = mosquitto_new(NULL, true, in);
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_message_v5_callback_set(m, on_msg);
    cr_assert_eq(mosquitto_connect(m, "127.0.0.1", b->s.port, 30), MOSQ_ERR_SUCCESS);
    cr_assert_eq(mosquitto_subscribe(m, NULL, topic, 1), MOSQ_ERR_SUCCESS);
    cr_assert_eq(mosquitto_loop_start(m), MOSQ_ERR_SUCCESS);
    return m;
}

static void subscriber_end(struct mosquitto *m, inbox *in)
{
    mosquitto_disconnect(m);
    mosquitto_loop_stop(m, false);
    mosquitto_destroy(m);
    for (size_t i = 0; i < in->n; i++) {
        free(in->payload[i]);
        free(in->ctype[i]);
    }
}

/* ---- a sink that keeps what it is given ---------------------------------------------------- */

/* Refuses (SRC_RETRY) until the source in t->arg has withheld t->retries acknowledgements. */
static bool refuse_until_withheld(tsink *t)
{
    mqtt_source *s = atomic_load(&t->arg);
    return s && mqtt_source_withheld(s) < (unsigned long)atomic_load(&t->retries);
}

static mqtt_source *start_source_at(const broker *b, tsink *t, const char *name,
                                    long hold_ms, const char *state_path)
{
    static const char *topics[] = { "sensors/#" };
    mqtt_source_conf c = { .name = name, .url = b->s.url, .topics = topics, .ntopics = 1,
                           .qos = 1, .hold_ms = hold_ms, .state_path = state_path };
    src_sink sink = tsink_sink(t);
    char err[256];
    mqtt_source *s = mqtt_source_start(&c, sink, err, sizeof err);
    cr_assert_not_null(s, "mqtt_source_start: %s", err);
    atomic_store(&t->arg, s);
    return s;
}

static mqtt_source *start_source(const broker *b, tsink *t, const char *name, long hold_ms)
{
    return start_source_at(b, t, name, hold_ms, NULL);
}

/* Waits until the source receives what is published (its subscription is in place). */
static void wait_ready(const broker *b, tsink *t)
{
    for (int i = 0; i < 40 && !tsink_count(t); i++) {
        publish_text(b, "sensors/probe", "{\"probe\":true}");
        tsink_wait(t, 1, 1000);
    }
    cr_assert(tsink_count(t), "the source receives nothing");
    /* (and has acknowledged the probe: one it had not when a test drops the connection comes
     * again, an event more) */
    usleep(200000);
    tsink_clear(t);
}

static void sink_init(tsink *t)
{
    tsink_init(t);
    t->refuse = refuse_until_withheld;
}

/* The broker started, the sink made, and a source on sensors/# that receives what is
 * published. */
static mqtt_source *ready_source(broker *b, tsink *t, const char *name, long hold_ms)
{
    broker_start(b);
    sink_init(t);
    mqtt_source *s = start_source(b, t, name, hold_ms);
    wait_ready(b, t);
    return s;
}

static void source_end(mqtt_source *s, tsink *t)
{
    atomic_store(&t->arg, NULL);
    mqtt_source_stop(s);
    tsink_clear(t);
}

/* ---- messages to CloudEvents --------------------------------------------------------------- */

Test(mqtt, json_and_binary_payloads)
{
    broker b = { 0 };
    tsink t;
    mqtt_source *s = ready_source(&b, &t, "sensors", 0);
    cr_expect(mqtt_source_connected(s));
    publish_text(&b, "sensors/a", " {\"t\": 21.5} ");
    static const unsigned char bin[] = { 0, 1, 0xff };
    publish(&b, "sensors/b", bin, 3, 1, NULL);
    mosquitto_property *ct = NULL;
    mosquitto_property_add_string(&ct, MQTT_PROP_CONTENT_TYPE, "text/plain");
    publish(&b, "sensors/c", "hello", 5, 0, ct);
    mosquitto_property_free_all(&ct);
    cr_assert(tsink_wait(&t, 3, 10000), "%zu events of 3", tsink_count(&t));

    cJSON *a = tsink_find(&t, "sensors/a");
    char src[96];
    snprintf(src, sizeof src, "mqtt://127.0.0.1:%d/sensors/a", b.s.port);
    cr_expect_str_eq(tsink_str(a, "specversion"), "1.0");
    cr_expect_str_eq(tsink_str(a, "type"), "mqtt.message");
    cr_expect_str_eq(tsink_str(a, "source"), src);
    cr_expect_str_eq(tsink_str(a, "datacontenttype"), "application/json");
    cr_expect_eq(strlen(tsink_str(a, "id")), 32);
    cr_expect_eq(strlen(tsink_str(a, "time")), 24, "time %s", tsink_str(a, "time"));
    cJSON *d = cJSON_GetObjectItemCaseSensitive(a, "data");
    cr_expect(cJSON_IsObject(d) && cJSON_GetObjectItem(d, "t")->valuedouble == 21.5);
    cJSON *bj = tsink_find(&t, "sensors/b");
    cr_expect_str_eq(tsink_str(bj, "data_base64"), "AAH/");
    cr_expect_str_eq(tsink_str(bj, "datacontenttype"), "application/octet-stream");
    cJSON *c = tsink_find(&t, "sensors/c");
    cr_expect_str_eq(tsink_str(c, "data"), "hello");
    cr_expect_str_eq(tsink_str(c, "datacontenttype"), "text/plain");
    cr_expect_str_neq(tsink_str(a, "id"), tsink_str(c, "id"));
    cJSON_Delete(a);
    cJSON_Delete(bj);
    cJSON_Delete(c);
    source_end(s, &t);
    srv_end(&b.s);
}

/* A topic may hold what a URI may not (a space, '"', '|', '%'): the event's source escapes it,
 * so that the event passes ingest's checks (source: a URI-reference), and its subject keeps it. */
Test(mqtt, topics_a_uri_cannot_hold)
{
    broker b = { 0 };
    tsink t;
    mqtt_source *s = ready_source(&b, &t, "sensors", 0);
    publish_text(&b, "sensors/room 1|\"x\"%zz[1]/caf\xc3\xa9", "{\"t\": 1}");
    cr_assert(tsink_wait(&t, 1, 10000), "no event");
    cJSON *e = tsink_find(&t, "sensors/room 1|\"x\"%zz[1]/caf\xc3\xa9");
    char src[128];
    snprintf(src, sizeof src, "mqtt://127.0.0.1:%d/sensors/room%%201%%7C%%22x%%22%%25zz%%5B1%%5D/caf\xc3\xa9",
             b.s.port);
    cr_expect_str_eq(tsink_str(e, "source"), src);
    char *text = cJSON_PrintUnformatted(e), why[256];
    const char *id;
    size_t idlen;
    cr_expect(ce_check(text, strlen(text), why, sizeof why, &id, &idlen, NULL), "%s: %s", why, text);
    free(text);
    cJSON_Delete(e);
    source_end(s, &t);
    srv_end(&b.s);
}

Test(mqtt, cloudevents_structured_and_binary)
{
    broker b = { 0 };
    tsink t;
    mqtt_source *s = ready_source(&b, &t, "ce", 0);

    /* structured, by Content Type (MQTT 5) and by a specversion member (as MQTT 3.1.1 sends) */
    const char *ev1 = "{\"specversion\":\"1.0\",\"id\":\"e-1\",\"source\":\"/x\",\"type\":\"t.one\"}";
    mosquitto_property *ct = NULL;
    mosquitto_property_add_string(&ct, MQTT_PROP_CONTENT_TYPE,
                                  "application/cloudevents+json; charset=utf-8");
    publish(&b, "sensors/s1", ev1, strlen(ev1), 1, ct);
    mosquitto_property_free_all(&ct);
    publish_text(&b, "sensors/s2",
                 "{\"specversion\":\"1.0\",\"id\":\"e-2\",\"source\":\"/x\",\"type\":\"t.two\"}");

    /* binary mode: the attributes as User Properties */
    mosquitto_property *up = NULL;
    const char *pairs[][2] = { { "specversion", "1.0" }, { "id", "e-3" }, { "source", "/dev/7" },
                               { "type", "t.three" }, { "subject", "s-3" },
                               { "time", "2026-01-02T03:04:05Z" }, { "region", "eu" },
                               { "Not-An-Attribute", "x" } };
    for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++)
        mosquitto_property_add_string_pair(&up, MQTT_PROP_USER_PROPERTY, pairs[i][0], pairs[i][1]);
    mosquitto_property_add_string(&up, MQTT_PROP_CONTENT_TYPE, "application/json");
    publish(&b, "sensors/s3", "{\"a\":1}", 7, 1, up);
    mosquitto_property_free_all(&up);
    cr_assert(tsink_wait(&t, 3, 10000), "%zu events of 3", tsink_count(&t));

    pthread_mutex_lock(&t.mu);
    bool same = false;
    for (size_t i = 0; i < t.n; i++)
        same = same || !strcmp(t.ev[i], ev1);
    pthread_mutex_unlock(&t.mu);
    cr_expect(same, "a structured event is stored as it came");
    cJSON *e2 = tsink_find(&t, "e-2");
    cr_expect_str_eq(tsink_str(e2, "type"), "t.two");
    cr_expect_str_eq(tsink_str(e2, "source"), "/x");
    cJSON *e3 = tsink_find(&t, "s-3");
    cr_expect_str_eq(tsink_str(e3, "id"), "e-3");
    cr_expect_str_eq(tsink_str(e3, "source"), "/dev/7");
    cr_expect_str_eq(tsink_str(e3, "type"), "t.three");
    cr_expect_str_eq(tsink_str(e3, "time"), "2026-01-02T03:04:05Z");
    cr_expect_str_eq(tsink_str(e3, "region"), "eu");
    cr_expect_str_eq(tsink_str(e3, "datacontenttype"), "application/json");
    cr_expect_null(cJSON_GetObjectItem(e3, "Not-An-Attribute"));
    cJSON *d = cJSON_GetObjectItemCaseSensitive(e3, "data");
    cr_expect(cJSON_IsObject(d) && cJSON_GetObjectItem(d, "a")->valueint == 1);
    cJSON_Delete(e2);
    cJSON_Delete(e3);
    source_end(s, &t);
    srv_end(&b.s);
}

/* ---- acknowledgements, sessions, reconnects ----------------------------------------------- */

Test(mqtt, not_stored_comes_again_and_is_stored_once)
{
    broker b = { 0 };
    tsink t;
    mqtt_source *s = ready_source(&b, &t, "retry", 300);
    atomic_store(&t.retries, 1);         /* SRC_RETRY until the source has dropped a PUBACK */
    publish_text(&b, "sensors/r", "{\"n\":1}");
    cr_assert(tsink_wait(&t, 1, 20000), "the message did not come again");
    cr_expect_geq(mqtt_source_withheld(s), 1);
    usleep(1000000);                     /* (a wrongly repeated delivery would come by now) */
    cr_expect_eq(tsink_count(&t), 1, "stored %zu times", tsink_count(&t));
    cJSON *e = tsink_find(&t, "sensors/r");
    pthread_mutex_lock(&t.mu);
    cr_assert_not_null(t.refused_id);
    cr_expect_str_eq(tsink_str(e, "id"), t.refused_id, "a redelivery keeps its id");
    cr_expect_geq(t.calls, 2);
    pthread_mutex_unlock(&t.mu);
    cJSON_Delete(e);
    source_end(s, &t);
    srv_end(&b.s);
}

Test(mqtt, persistent_session_keeps_messages_while_stopped)
{
    broker b = { 0 };
    tsink t;
    mqtt_source *s = ready_source(&b, &t, "persist", 0);
    source_end(s, &t);
    publish_text(&b, "sensors/p1", "{\"n\":1}");
    publish_text(&b, "sensors/p2", "{\"n\":2}");
    s = start_source(&b, &t, "persist", 0);
    cr_assert(tsink_wait(&t, 2, 15000), "%zu of the 2 messages published while stopped",
              tsink_count(&t));
    cJSON_Delete(tsink_find(&t, "sensors/p1"));
    cJSON_Delete(tsink_find(&t, "sensors/p2"));
    source_end(s, &t);
    srv_end(&b.s);
}

Test(mqtt, source_reconnects_after_broker_restart)
{
    broker b = { 0 };
    tsink t;
    mqtt_source *s = ready_source(&b, &t, "restart", 0);
    broker_kill(&b);
    for (int i = 0; i < 100 && mqtt_source_connected(s); i++)
        usleep(100000);
    cr_expect(!mqtt_source_connected(s), "still connected with the broker down");
    broker_start(&b);
    publish_text(&b, "sensors/after", "{\"n\":3}");   /* (kept in its session if not back yet) */
    cr_assert(tsink_wait(&t, 1, 20000), "nothing after the broker came back");
    cJSON_Delete(tsink_find(&t, "sensors/after"));
    cr_expect(mqtt_source_connected(s));
    source_end(s, &t);
    srv_end(&b.s);
}

/* ---- targets ------------------------------------------------------------------------------- */

typedef struct {
    mqtt_pub *p;
    int k;
    atomic_int *ok;
} sender;

static void *send_some(void *arg)
{
    sender *sd = arg;
    for (int i = 0; i < 10; i++) {
        char msg[32], why[128];
        int n = snprintf(msg, sizeof msg, "{\"k\":%d,\"i\":%d}", sd->k, i);
        if (mqtt_pub_send(sd->p, "alerts", msg, (size_t)n, NULL, 1, false, 10000, why,
                          sizeof why) == 0)
            atomic_fetch_add(sd->ok, 1);
    }
    return NULL;
}

Test(mqtt, target_publishes_qos1_from_several_threads)
{
    broker b = { 0 };
    broker_start(&b);
    inbox in = { 0 };
    struct mosquitto *sub = subscriber(&b, "alerts", &in);
    mqtt_target_conf c = { .url = b.s.url };
    char err[256], why[256] = "";
    mqtt_pub *p = mqtt_pub_open(&c, err, sizeof err);
    cr_assert_not_null(p, "%s", err);
    int rc = -1;
    for (int i = 0; i < 50 && rc; i++) {       /* (until the subscription is in place) */
        rc = mqtt_pub_send(p, "alerts", "{\"first\":1}", 11, "application/json", 1, false,
                           10000, why, sizeof why);
        for (int k = 0; k < 4 && !inbox_count(&in); k++)
            usleep(50000);
        rc = rc ? rc : inbox_count(&in) ? 0 : -1;
    }
    cr_assert_eq(rc, 0, "%s", why);
    pthread_mutex_lock(&in.mu);
    cr_expect_str_eq(in.payload[0], "{\"first\":1}");
    cr_expect_str_eq(in.ctype[0] ? in.ctype[0] : "(none)", "application/json");
    size_t before = in.n;
    pthread_mutex_unlock(&in.mu);

    atomic_int ok = 0;
    pthread_t th[4];
    sender sd[4];
    for (int k = 0; k < 4; k++) {
        sd[k] = (sender){ p, k, &ok };
        pthread_create(&th[k], NULL, send_some, &sd[k]);
    }
    for (int k = 0; k < 4; k++)
        pthread_join(th[k], NULL);
    cr_expect_eq(atomic_load(&ok), 40);
    for (int i = 0; i < 100 && inbox_count(&in) < before + 40; i++)
        usleep(50000);
    cr_expect_eq(inbox_count(&in), before + 40);
    cr_expect_eq(mqtt_pub_send(p, "alerts/#", "x", 1, NULL, 1, false, 1000, why, sizeof why), -1,
                 "a wildcard is no topic to publish to");
    mqtt_pub_close(p);
    subscriber_end(sub, &in);
    srv_end(&b.s);
}

/* While the broker is away a send fails (to be retried by the daemon) rather than queue: it
 * returns -1 with a reason.  How long it takes is the timeout's business, not this test's: a
 * loaded machine stretches any duration. */
Test(mqtt, target_fails_while_the_broker_is_down)
{
    broker b = { 0 };
    broker_start(&b);
    mqtt_target_conf c = { .url = b.s.url, .client_id = "ebr-test-target" };
    char err[256], why[256] = "";
    mqtt_pub *p = mqtt_pub_open(&c, err, sizeof err);
    cr_assert_not_null(p, "%s", err);
    cr_assert_eq(mqtt_pub_send(p, "alerts", "1", 1, NULL, 1, false, 10000, why, sizeof why), 0,
                 "%s", why);
    broker_kill(&b);
    cr_expect_eq(mqtt_pub_send(p, "alerts", "2", 1, NULL, 1, false, 500, why, sizeof why), -1);
    cr_expect_neq(why[0], 0);
    broker_start(&b);
    int rc = -1;
    for (int i = 0; i < 20 && rc; i++)
        rc = mqtt_pub_send(p, "alerts", "3", 1, NULL, 1, false, 1000, why, sizeof why);
    cr_expect_eq(rc, 0, "not delivered after the broker came back: %s", why);
    mqtt_pub_close(p);
    srv_end(&b.s);
}

/* ---- configurations refused ---------------------------------------------------------------- */

Test(mqtt, bad_configurations)
{
    static const char *topics[] = { "a/#" }, *bad_topics[] = { "a/#/b" };
    tsink t;
    sink_init(&t);
    src_sink sink = tsink_sink(&t);
    char err[256];
    struct { const char *url; const char *const *topics; int qos; const char *want; } cases[] = {
        { "mqtts://h:8883", topics, 1, "TLS" },
        { "http://h", topics, 1, "not an mqtt://" },
        { "mqtt://h:0", topics, 1, "port" },
        { "mqtt://h:1883/x", topics, 1, "no path" },
        { "mqtt://:1883", topics, 1, "host" },
        { "mqtt://h", topics, 2, "qos" },
        { "mqtt://h", bad_topics, 1, "topic filter" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mqtt_source_conf c = { .name = "x", .url = cases[i].url, .topics = cases[i].topics,
                               .ntopics = 1, .qos = cases[i].qos };
        err[0] = 0;
        cr_expect_null(mqtt_source_start(&c, sink, err, sizeof err), "%s", cases[i].url);
        cr_expect(strstr(err, cases[i].want), "%s: %s", cases[i].url, err);
    }
    mqtt_target_conf tc = { .url = "mqtts://h" };
    cr_expect_null(mqtt_pub_open(&tc, err, sizeof err));
    cr_expect(strstr(err, "TLS"), "%s", err);
    tsink_end(&t);
}

/* ---- a broker that knows MQTT 3.1.1 only ----------------------------------------------------- */

typedef struct {
    int fd;
    int levels[2];        /* the protocol level of each CONNECT: 5 is MQTT 5, 4 is 3.1.1 */
} old_broker;

/* The protocol level of the CONNECT read from c (fixed header, length, "MQTT", level). */
static int connect_level(int c)
{
    unsigned char b[64];
    size_t n = 0;
    for (int i = 0; i < 50 && n < 9; i++) {
        ssize_t k = recv(c, b + n, sizeof b - n, 0);
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    size_t at = 2;
    while (at < n && b[at - 1] & 0x80)      /* (the remaining length's bytes) */
        at++;
    return n >= at + 7 && b[0] == 0x10 ? b[at + 6] : -1;
}

static void *old_broker_run(void *arg)
{
    old_broker *o = arg;
    for (int i = 0; i < 2; i++) {
        int c = accept(o->fd, NULL, NULL);
        if (c < 0)
            return NULL;
        struct timeval tv = { 5, 0 };
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        o->levels[i] = connect_level(c);
        static const unsigned char refused[] = { 0x20, 2, 0, 1 };   /* 3.1.1: bad version */
        if (i == 0 && send(c, refused, 4, MSG_NOSIGNAL) != 4)
            o->levels[i] = -2;
        close(c);
    }
    return NULL;
}

Test(mqtt, falls_back_to_mqtt311)
{
    old_broker o = { .fd = socket(AF_INET, SOCK_STREAM, 0) };
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    cr_assert_eq(bind(o.fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(o.fd, 4), 0);
    getsockname(o.fd, (struct sockaddr *)&a, &len);
    pthread_t th;
    pthread_create(&th, NULL, old_broker_run, &o);
    char url[64], err[256];
    snprintf(url, sizeof url, "mqtt://127.0.0.1:%d", ntohs(a.sin_port));
    static const char *topics[] = { "x" };
    mqtt_source_conf c = { .name = "old", .url = url, .topics = topics, .ntopics = 1, .qos = 1 };
    tsink t;
    sink_init(&t);
    mqtt_source *s = mqtt_source_start(&c, tsink_sink(&t), err, sizeof err);
    cr_assert_not_null(s, "%s", err);
    pthread_join(th, NULL);
    mqtt_source_stop(s);
    tsink_end(&t);
    close(o.fd);
    cr_expect_eq(o.levels[0], 5, "first CONNECT: level %d", o.levels[0]);
    cr_expect_eq(o.levels[1], 4, "after the refusal: level %d", o.levels[1]);
}

/* ---- generations of packet identifiers ------------------------------------------------------ */

Test(mqtt, mid_generations_wrap_and_redeliveries)
{
    mqtt_midstate st;
    mqtt_mid_init(&st);
    st.gen = 5;
    bool all_same = true;
    for (int m = 1; m <= 65535; m++)
        all_same = all_same && mqtt_mid_gen(&st, m) == 5;
    cr_expect(all_same, "1..65535 is one generation");
    for (int m = 65530; m <= 65535; m++)     /* given again before the wrap */
        cr_expect_eq(mqtt_mid_gen(&st, m), 5, "mid %d given again", m);
    st.save = false;
    cr_expect_eq(mqtt_mid_gen(&st, 1), 6, "1 after 65535 begins a generation");
    cr_expect(st.save, "a wrap is saved at once");
    cr_expect_eq(mqtt_mid_gen(&st, 2), 6);
    cr_expect_eq(mqtt_mid_gen(&st, 65534), 5, "65534 given again after 2: before the wrap");
    cr_expect_eq(mqtt_mid_gen(&st, 65535), 5);
    cr_expect_eq(mqtt_mid_gen(&st, 1), 6, "1 given again");
    cr_expect_eq(mqtt_mid_gen(&st, 2), 6, "2 given again");
    cr_expect_eq(mqtt_mid_gen(&st, 3), 6, "3 is new");
    cr_expect_eq(st.last_mid, 3);
    for (int m = 4; m <= 65535; m++)
        mqtt_mid_gen(&st, m);
    cr_expect_eq(mqtt_mid_gen(&st, 1), 7, "the second round ends as the first");

    /* distances read on the cycle of 65535 (the one after 65535 is 1): from 65535, 32767 is
     * 32767 steps on, a new message of the next generation (mod 65536 would call it 32768
     * behind and give it the current generation, the id of a message 65535 earlier) */
    st = (mqtt_midstate){ .gen = 9, .last_mid = 65535 };
    cr_expect_eq(mqtt_mid_gen(&st, 32767), 10);
    st = (mqtt_midstate){ .gen = 9, .last_mid = 65535 };
    cr_expect_eq(mqtt_mid_gen(&st, 32768), 9, "32768 behind 65535: given again");
    cr_expect_eq(st.last_mid, 65535);
    st = (mqtt_midstate){ .gen = 9, .last_mid = 100 };
    cr_expect_eq(mqtt_mid_gen(&st, 32868), 8, "32767 behind 100: given again, before the wrap");
    cr_expect_eq(st.last_mid, 100);
    cr_expect_eq(mqtt_mid_gen(&st, 32867), 9, "32767 on: new");
    cr_expect_eq(st.last_mid, 32867);
}

Test(mqtt, mid_generations_new_session_and_saving)
{
    mqtt_midstate st = { .gen = 3, .last_mid = 5000 };
    mqtt_mid_reset(&st);                    /* a broker that forgot the session: from 1 again */
    cr_expect_eq(mqtt_mid_gen(&st, 1), 4, "(1 after 5000 would read as given again)");
    cr_expect_eq(mqtt_mid_gen(&st, 2), 4);
    st.save = false;
    st.unsaved = 0;
    for (int m = 3; m < 3 + MQTT_MID_SAVE_EVERY - 1; m++)
        mqtt_mid_gen(&st, m);
    cr_expect(!st.save);
    mqtt_mid_gen(&st, 3 + MQTT_MID_SAVE_EVERY);
    cr_expect(st.save, "saved after %d identifiers", MQTT_MID_SAVE_EVERY);

    char dir[] = "/tmp/ebr-mid-XXXXXX", path[64], err[256];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/s.mqtt", dir);
    mqtt_midstate got = { .gen = 77 };
    cr_expect_eq(mqtt_mid_load(&got, path, err, sizeof err), 0, "no file: a fresh state");
    cr_expect_eq(got.gen, 77, "untouched");
    st = (mqtt_midstate){ .gen = 18446744073709551000u, .last_mid = 65535, .unsaved = 9,
                          .save = true };
    cr_assert(mqtt_mid_save(&st, path, err, sizeof err), "%s", err);
    cr_expect(!st.save && !st.unsaved);
    cr_expect_eq(mqtt_mid_load(&got, path, err, sizeof err), 1, "%s", err);
    cr_expect_eq(got.gen, 18446744073709551000u);
    cr_expect_eq(got.last_mid, 65535);
    cr_expect_eq(mqtt_mid_gen(&got, 1), 18446744073709551001u, "a loaded state goes on");
    FILE *f = fopen(path, "w");
    fputs("12 70000\n", f);
    fclose(f);
    got.gen = 77;
    cr_expect_eq(mqtt_mid_load(&got, path, err, sizeof err), -1);
    cr_expect(strstr(err, "not a packet identifier state"), "%s", err);
    cr_expect_eq(got.gen, 77, "untouched");
    snprintf(path, sizeof path, "%s/no/such/s.mqtt", dir);
    cr_expect(!mqtt_mid_save(&st, path, err, sizeof err));
    cr_expect(strstr(err, "No such file"), "%s", err);
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);

    mqtt_mid_init(&st);
    mqtt_midstate st2;
    usleep(2000);
    mqtt_mid_init(&st2);
    cr_expect_neq(st.gen, st2.gen, "fresh states begin at the clock: each its own generation");
}

/* Publishes count copies of one message with QoS 1 on one connection, waiting for the broker
 * to take them all. */
static void on_pub_count(struct mosquitto *m, void *arg, int mid)
{
    (void)m, (void)mid;
    (*(long *)arg)++;
}

static void publish_many(const broker *b, const char *topic, const char *text, long count)
{
    long done = 0;
    struct mosquitto *m = mosquitto_new(NULL, true, &done);
    mosquitto_publish_callback_set(m, on_pub_count);
    cr_assert_eq(mosquitto_connect(m, "127.0.0.1", b->s.port, 30), MOSQ_ERR_SUCCESS);
    for (long i = 0; i < count; i++) {
        cr_assert_eq(mosquitto_publish(m, NULL, topic, (int)strlen(text), text, 1, false), 0);
        while (i - done > 200)           /* (a window, so that the queue stays short) */
            cr_assert_eq(mosquitto_loop(m, 1000, 1), MOSQ_ERR_SUCCESS);
    }
    for (int i = 0; i < 600 && done < count; i++)
        mosquitto_loop(m, 50, 1);
    cr_assert_eq(done, count, "the broker took %ld of %ld", done, count);
    mosquitto_disconnect(m);
    mosquitto_loop(m, 50, 1);
    mosquitto_destroy(m);
}

/* The ids of the events whose subject is key, sorted; returns how many are distinct. */
static size_t distinct_ids(tsink *t, const char *key, size_t *all)
{
    char **ids = calloc(128, sizeof *ids);
    size_t n = 0;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->n; i++) {
        cJSON *j = cJSON_Parse(t->ev[i]);
        if (!strcmp(tsink_str(j, "subject"), key))
            ids[n++] = strdup(tsink_str(j, "id"));
        cJSON_Delete(j);
    }
    pthread_mutex_unlock(&t->mu);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = !strcmp(ids[i], ids[j]);
        k += !seen;
    }
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
    *all = n;
    return k;
}

Test(mqtt, equal_payloads_get_distinct_ids)
{
    broker b = { 0 };
    tsink t;
    mqtt_source *s = ready_source(&b, &t, "beat", 0);
    publish_many(&b, "sensors/beat", "on", 70);
    cr_assert(tsink_wait(&t, 70, 20000), "%zu events of 70", tsink_count(&t));
    size_t all, k = distinct_ids(&t, "sensors/beat", &all);
    cr_expect_eq(all, 70);
    cr_expect_eq(k, 70, "70 equal messages, %zu distinct ids", k);
    source_end(s, &t);
    srv_end(&b.s);
}

/* A sink that keeps only the ids of what it is given (a whole cycle of identifiers). */
typedef struct {
    pthread_mutex_t mu;
    char (*ids)[33];
    size_t n, cap;
} id_sink;

static src_result id_append(void *arg, const char *ev, size_t n, char *why, size_t cap)
{
    (void)why, (void)cap;
    id_sink *t = arg;
    const char *p = memmem(ev, n, "\"id\":\"", 6);
    pthread_mutex_lock(&t->mu);
    if (p && p + 6 + 32 <= ev + n && t->n < t->cap) {
        memcpy(t->ids[t->n], p + 6, 32);
        t->ids[t->n++][32] = 0;
    }
    pthread_mutex_unlock(&t->mu);
    return SRC_STORED;
}

static int id_cmp(const void *a, const void *b)
{
    return memcmp(a, b, 33);
}

Test(mqtt, equal_payloads_through_a_wrap_of_identifiers, .timeout = 120)
{
    broker b = { .conf = "max_queued_messages 0\n" };   /* (none dropped while it catches up) */
    broker_start(&b);
    enum { N = 65535 + 100 };
    id_sink t = { .ids = calloc(N + 10, 33), .cap = N + 10 };
    pthread_mutex_init(&t.mu, NULL);
    static const char *topics[] = { "t/x" };
    mqtt_source_conf c = { .name = "wrap", .url = b.s.url, .topics = topics, .ntopics = 1,
                           .qos = 1 };
    char err[256];
    mqtt_source *s = mqtt_source_start(&c, (src_sink){ id_append, &t }, err, sizeof err);
    cr_assert_not_null(s, "%s", err);
    for (int i = 0; i < 100 && !mqtt_source_connected(s); i++)
        usleep(100000);
    usleep(300000);                          /* (its SUBACK) */
    publish_many(&b, "t/x", "on", N);
    for (int i = 0; i < 1200; i++) {
        pthread_mutex_lock(&t.mu);
        size_t n = t.n;
        pthread_mutex_unlock(&t.mu);
        if (n >= N)
            break;
        usleep(100000);
    }
    mqtt_source_stop(s);
    cr_assert_eq(t.n, N, "%zu of %d messages", t.n, N);
    qsort(t.ids, t.n, 33, id_cmp);
    size_t same = 0;
    for (size_t i = 1; i < t.n; i++)
        same += !memcmp(t.ids[i], t.ids[i - 1], 33);
    cr_expect_eq(same, 0, "%zu of %d equal messages took an id already given", same, N);
    free(t.ids);
    srv_end(&b.s);
}

Test(mqtt, redelivery_to_a_restarted_source_keeps_its_id)
{
    broker b = { 0 };
    broker_start(&b);
    tsink t;
    sink_init(&t);
    char state[96];
    snprintf(state, sizeof state, "%s/state.mqtt", b.s.dir);
    mqtt_source *s = start_source_at(&b, &t, "again", 10000, state);
    wait_ready(&b, &t);
    publish_many(&b, "sensors/beat", "on", 3);
    cr_assert(tsink_wait(&t, 3, 10000));
    atomic_store(&t.retries, 1000);          /* the bus stores nothing now */
    publish_text(&b, "sensors/beat", "on");
    for (int i = 0; i < 200; i++) {
        pthread_mutex_lock(&t.mu);
        bool refused = t.refused_id;
        pthread_mutex_unlock(&t.mu);
        if (refused)
            break;
        usleep(50000);
    }
    mqtt_source_stop(s);                     /* (stopping, it leaves the message unacknowledged) */
    atomic_store(&t.arg, NULL);              /* (the sink asked s until it stopped) */
    cr_assert_not_null(t.refused_id, "the message did not come");
    FILE *f = fopen(state, "r");
    cr_assert_not_null(f, "no state file %s", state);
    fclose(f);
    char *refused = strdup(t.refused_id);
    atomic_store(&t.retries, 0);
    tsink_clear(&t);
    s = start_source_at(&b, &t, "again", 0, state);
    cr_assert(tsink_wait(&t, 1, 20000), "not given again after the restart");
    cJSON *e = tsink_find(&t, "sensors/beat");
    cr_expect_str_eq(tsink_str(e, "id"), refused, "a message given again to a restarted source "
                     "keeps its id");
    cJSON_Delete(e);
    source_end(s, &t);
    free(refused);
    srv_end(&b.s);
}

/* ---- a subscription refused ------------------------------------------------------------------ */

/* (mosquitto 2.0's acl_file does not check subscriptions, only what is delivered: its dynamic
 * security plugin does, answering a refused one with Not authorized in the SUBACK) */
#define DYNSEC_CONF                                                                               \
    "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so\n"                          \
    "plugin_opt_config_file %s/dynsec.json\n"

static void write_dynsec(const broker *b)
{
    char path[96];
    snprintf(path, sizeof path, "%s/dynsec.json", b->s.dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("{\"defaultACLAccess\":{\"publishClientSend\":true,\"publishClientReceive\":true,"
          "\"subscribe\":false,\"unsubscribe\":true},\"clients\":[],"
          "\"roles\":[{\"rolename\":\"reader\",\"acls\":[{\"acltype\":\"subscribePattern\","
          "\"topic\":\"allowed/#\",\"allow\":true}]}],"
          "\"groups\":[{\"groupname\":\"anon\",\"roles\":[{\"rolename\":\"reader\"}]}],"
          "\"anonymousGroup\":\"anon\"}\n", f);
    fclose(f);
    chmod(path, 0666);
}

/* Runs a source on topics for a while; returns whether it ended connected, its log in log. */
static bool connected_with(broker *b, const char *const *topics, size_t n, char *log, size_t cap)
{
    char path[96];
    snprintf(path, sizeof path, "%s/log", b->s.dir);
    fflush(stderr);
    int saved = dup(2), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
    mqtt_source_conf c = { .name = "acl", .url = b->s.url, .topics = topics, .ntopics = n,
                           .qos = 1 };
    tsink t;
    sink_init(&t);
    char err[256];
    mqtt_source *s = mqtt_source_start(&c, tsink_sink(&t), err, sizeof err);
    bool up = false;
    for (int i = 0; i < 100 && s && !up; i++) {     /* (until connected and the SUBACK read) */
        usleep(100000);
        up = mqtt_source_connected(s);
    }
    usleep(1000000);
    up = s && mqtt_source_connected(s);
    mqtt_source_stop(s);
    tsink_end(&t);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    cr_assert_not_null(s, "%s", err);
    FILE *f = fopen(path, "r");
    size_t k = fread(log, 1, cap - 1, f);
    log[k] = 0;
    fclose(f);
    return up;
}

Test(mqtt, refused_subscription_is_not_connected)
{
    broker b = { .conf = DYNSEC_CONF };
    broker_start(&b);
    write_dynsec(&b);
    broker_kill(&b);                 /* (the folder was made with the broker: start it again) */
    broker_start(&b);
    static const char *mixed[] = { "allowed/#", "denied/x" }, *fine[] = { "allowed/#" };
    char log[8192];
    cr_expect(!connected_with(&b, mixed, 2, log, sizeof log), "connected with a topic refused");
    cr_expect(strstr(log, "refused a subscription") && strstr(log, "topic=\"denied/x\"") &&
              !strstr(log, "topic=\"allowed/#\""), "log: %s", log);
    cr_expect(connected_with(&b, fine, 1, log, sizeof log), "not connected: %s", log);
    cr_expect(!strstr(log, "refused"), "log: %s", log);
    srv_end(&b.s);
}

/* review: a source cut to fit (src[600] in plain_event; a topic may be 64 KiB) is cut between
 * characters: a UTF-8 sequence cut in two makes the event's JSON invalid, and the event refused. */
void src_uri_escape(char *out, size_t cap, const char *s);
Test(mqtt, a_source_cut_to_fit_is_cut_between_characters)
{
    char out[4];
    src_uri_escape(out, sizeof out, "\xc3\xa9\xc3\xa9");       /* "éé": room for one é */
    cr_expect_str_eq(out, "\xc3\xa9");
    src_uri_escape(out, sizeof out, "a\xe2\x82\xac");         /* "a€": the € does not fit */
    cr_expect_str_eq(out, "a");
}
