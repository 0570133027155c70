/*
 * test_natsrc.c — NATS as a source and a target (runtime/sources/nats.c): the CloudEvent a
 * message becomes (plain payloads, the binding's structured and binary modes, malformed
 * binary-mode headers); and against a real `nats-server -js` each test starts on a free
 * loopback port of its own (6000-8999) with its own storage folder: core subjects to events,
 * JetStream backlogs, a retried append, no acknowledgement before the append, a server killed
 * and restarted under a source, and the target on core NATS and JetStream (its Nats-Msg-Id
 * de-duplication, and its failure when no server runs).
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "../../runtime/sources/nats.h"
#include "servers.h"
#include "sink.h"

/* ---- a server of the test's own ---------------------------------------------------------------- */

/* nats-server in a folder /tmp/ebr-natsrc-XXXXXX, sent SIGKILL if the test dies. */
static void server_start(srv *s)
{
    srv_nats_start(s, "natsrc", SIGKILL);
}

/* ---- a client of the test's own ---------------------------------------------------------------- */

static natsConnection *client(const srv *sv)
{
    natsConnection *nc = NULL;
    cr_assert_eq(natsConnection_ConnectTo(&nc, sv->url), NATS_OK);
    return nc;
}

/* Publishes data with headers given as name, value, ..., NULL; flushed. */
static void publish(natsConnection *nc, const char *subject, const void *data, int n, ...)
{
    natsMsg *m = NULL;
    cr_assert_eq(natsMsg_Create(&m, subject, NULL, data, n), NATS_OK);
    va_list ap;
    va_start(ap, n);
    for (const char *k; (k = va_arg(ap, const char *));)
        cr_assert_eq(natsMsgHeader_Add(m, k, va_arg(ap, const char *)), NATS_OK);
    va_end(ap);
    cr_assert_eq(natsConnection_PublishMsg(nc, m), NATS_OK);
    cr_assert_eq(natsConnection_FlushTimeout(nc, 5000), NATS_OK);
    natsMsg_Destroy(m);
}

static jsCtx *jetstream(natsConnection *nc)
{
    jsCtx *js = NULL;
    cr_assert_eq(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    return js;
}

static void add_stream(jsCtx *js, const char *name, const char *subject)
{
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = name;
    sc.Subjects = &subject;
    sc.SubjectsLen = 1;
    jsErrCode jerr = 0;
    cr_assert_eq(js_AddStream(NULL, js, &sc, NULL, &jerr), NATS_OK, "stream %s: %d", name,
                 (int)jerr);
}

static void js_publish(jsCtx *js, const char *subject, const char *data, const char *msg_id)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    po.MaxWait = 10000;
    jsErrCode jerr = 0;
    cr_assert_eq(js_Publish(NULL, js, subject, data, (int)strlen(data), &po, &jerr), NATS_OK,
                 "js_Publish: %d", (int)jerr);
}

static bool wait_connected(natsrc *s, int ms)
{
    for (int i = 0; i < ms / 50 && !natsrc_connected(s); i++)
        usleep(50000);
    return natsrc_connected(s);
}

static natsrc *start(const srv *sv, const char *name, const char *subject, const char *stream,
                     long ack_wait_ms, tsink *k)
{
    const char *urls[1] = { sv->url };
    natsrc_conf c = { .name = name, .urls = urls, .nurls = 1, .subject = subject,
                      .stream = stream, .ack_wait_ms = ack_wait_ms };
    char err[512];
    natsrc *s = natsrc_start(&c, tsink_sink(k), err, sizeof err);
    cr_assert_not_null(s, "natsrc_start: %s", err);
    cr_assert(wait_connected(s, 20000), "the source did not connect");
    return s;
}

/* ---- the event of a message, without a server ------------------------------------------------- */

static int event_of(const natsrc_msg *m, cJSON **out, char *why)
{
    sbuf b = { 0 };
    int rc = natsrc_event(m, &b, why, 300);
    *out = NULL;
    if (rc == 1) {
        *out = cJSON_ParseWithLength(b.v, b.n);
        cr_assert_not_null(*out, "not JSON: %.*s", (int)b.n, b.v);
    }
    sb_free(&b);
    return rc;
}

Test(natsrc, plain_messages)
{
    natsrc_msg m = { .subject = "orders.eu", .data = "{\"a\": 1} ", .n = 9,
                     .source = "nats://h:4222", .id = "abc", .time_ms = 1700000000123 };
    cJSON *e;
    char why[300];
    cr_assert_eq(event_of(&m, &e, why), 1);
    cr_expect_str_eq(tsink_str(e, "specversion"), "1.0");
    cr_expect_str_eq(tsink_str(e, "id"), "abc");
    cr_expect_str_eq(tsink_str(e, "source"), "nats://h:4222");
    cr_expect_str_eq(tsink_str(e, "type"), "nats.message");
    cr_expect_str_eq(tsink_str(e, "subject"), "orders.eu");
    cr_expect_str_eq(tsink_str(e, "time"), "2023-11-14T22:13:20.123Z");
    cr_expect_str_eq(tsink_str(e, "datacontenttype"), "application/json");
    cr_expect_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(e, "data"), "a")->valueint, 1);
    cJSON_Delete(e);

    /* bytes that are not JSON: base64; text with its Content-Type: a string */
    m.data = "\x01\x02\xff";
    m.n = 3;
    cr_assert_eq(event_of(&m, &e, why), 1);
    cr_expect_str_eq(tsink_str(e, "data_base64"), "AQL/");
    cr_expect_str_eq(tsink_str(e, "datacontenttype"), "application/octet-stream");
    cJSON_Delete(e);
    const char *hn[2] = { "content-type", "Nats-Msg-Id" }, *hv[2] = { "text/plain", "m-1" };
    m.hnames = hn;
    m.hvalues = hv;
    m.nh = 2;
    m.data = "hello";
    m.n = 5;
    cr_assert_eq(event_of(&m, &e, why), 1);
    cr_expect_str_eq(tsink_str(e, "data"), "hello");
    cr_expect_str_eq(tsink_str(e, "datacontenttype"), "text/plain");
    cr_expect_str_eq(tsink_str(e, "id"), "abc", "core NATS: Nats-Msg-Id is not the id");
    cJSON_Delete(e);
    m.jetstream = true;
    cr_assert_eq(event_of(&m, &e, why), 1);
    cr_expect_str_eq(tsink_str(e, "id"), "m-1", "JetStream: Nats-Msg-Id is the id");
    cJSON_Delete(e);

    /* no payload: no data */
    m.nh = 0;
    m.n = 0;
    cr_assert_eq(event_of(&m, &e, why), 1);
    cr_expect_null(cJSON_GetObjectItem(e, "data"));
    cr_expect_null(cJSON_GetObjectItem(e, "data_base64"));
    cJSON_Delete(e);
}

Test(natsrc, structured_mode)
{
    const char *ce = "{\"specversion\":\"1.0\",\"id\":\"x1\",\"source\":\"/s\",\"type\":\"t\"}";
    const char *hn[1] = { "Content-Type" }, *hv[1] = { "application/cloudevents+json" };
    natsrc_msg m = { .subject = "a", .hnames = hn, .hvalues = hv, .nh = 1, .data = ce,
                     .n = strlen(ce), .source = "nats://h:1", .id = "i" };
    sbuf b = { 0 };
    char why[300];
    cr_assert_eq(natsrc_event(&m, &b, why, sizeof why), 1);
    cr_expect(b.n == strlen(ce) && !memcmp(b.v, ce, b.n), "taken as it is: %.*s", (int)b.n, b.v);
    b.n = 0;
    /* no headers at all and a JSON object with specversion: the structured mode too */
    m.nh = 0;
    cr_assert_eq(natsrc_event(&m, &b, why, sizeof why), 1);
    cr_expect(b.n == strlen(ce) && !memcmp(b.v, ce, b.n));
    b.n = 0;
    /* ... but not when the sender said it is JSON of its own */
    hv[0] = "application/json";
    m.nh = 1;
    cJSON *e;
    cr_assert_eq(event_of(&m, &e, why), 1);
    cr_expect_str_eq(tsink_str(e, "type"), "nats.message");
    cr_expect_str_eq(tsink_str(cJSON_GetObjectItem(e, "data"), "id"), "x1");
    cJSON_Delete(e);
    sb_free(&b);
}

Test(natsrc, binary_mode)
{
    const char *hn[] = { "ce-specversion", "CE-ID", "ce-source", "ce-type", "ce-time",
                         "ce-subject", "ce-datacontenttype", "ce-myext", "ce-quoted",
                         "Content-Type", "ce-id" };
    const char *hv[] = { "1.0", "e-7", "/my/src", "com.example.made", "2024-01-02T03:04:05Z",
                         "Euro%20%E2%82%AC%20%f0%9f%98%80", "application/json", "v%25",
                         "\"a \\\"b\\\"\"", "text/plain", "ignored" };
    natsrc_msg m = { .subject = "a.b", .hnames = hn, .hvalues = hv, .nh = 11,
                     .data = "{\"k\":[1,2]}", .n = 11, .source = "nats://h:1", .id = "i" };
    cJSON *e;
    char why[300];
    cr_assert_eq(event_of(&m, &e, why), 1, "%s", why);
    cr_expect_str_eq(tsink_str(e, "specversion"), "1.0");
    cr_expect_str_eq(tsink_str(e, "id"), "e-7");
    cr_expect_str_eq(tsink_str(e, "source"), "/my/src");
    cr_expect_str_eq(tsink_str(e, "type"), "com.example.made");
    cr_expect_str_eq(tsink_str(e, "time"), "2024-01-02T03:04:05Z");
    cr_expect_str_eq(tsink_str(e, "subject"), "Euro \xe2\x82\xac \xf0\x9f\x98\x80");
    cr_expect_str_eq(tsink_str(e, "datacontenttype"), "application/json");
    cr_expect_str_eq(tsink_str(e, "myext"), "v%");
    cr_expect_str_eq(tsink_str(e, "quoted"), "a \"b\"");
    cr_expect_eq(cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetObjectItem(e, "data"), "k")), 2);
    cJSON_Delete(e);

    /* Content-Type stands for a missing ce-datacontenttype */
    hn[6] = "x-other";
    hv[9] = "text/plain";
    m.data = "plain words";
    m.n = 11;
    cr_assert_eq(event_of(&m, &e, why), 1, "%s", why);
    cr_expect_str_eq(tsink_str(e, "datacontenttype"), "text/plain");
    cr_expect_str_eq(tsink_str(e, "data"), "plain words");
    cJSON_Delete(e);

    /* malformed: an overlong encoding, a lone %, an attribute name, another specversion */
    const char *bad[][2] = { { "ce-source", "%C0%A0" }, { "ce-source", "50%" },
                             { "ce-source", "a%00b" },
                             { "ce-my_ext", "x" }, { "ce-specversion", "0.3" },
                             { "ce-data", "x" } };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        /* (first: of a repeated header, the first value counts) */
        const char *bn[] = { bad[i][0], "ce-specversion", "ce-id", "ce-type" };
        const char *bv[] = { bad[i][1], "1.0", "1", "t" };
        natsrc_msg b = { .subject = "a", .hnames = bn, .hvalues = bv, .nh = 4, .source = "s",
                         .id = "i" };
        why[0] = 0;
        cr_expect_eq(event_of(&b, &e, why), 0, "%s: %s", bad[i][0], bad[i][1]);
        cr_expect(why[0], "a reason for %s", bad[i][0]);
    }
}

Test(natsrc, bad_configuration)
{
    const char *urls[1] = { "nats://127.0.0.1:1" };
    tsink k;
    tsink_init(&k);
    natsrc_conf cs[] = {
        { .name = "a", .urls = urls, .nurls = 1 },                                  /* subject */
        { .name = "a", .urls = urls, .nurls = 1, .subject = "a..b" },
        { .name = "a", .urls = urls, .nurls = 1, .subject = "a.>.b" },
        { .name = "a", .urls = urls, .nurls = 1, .stream = "OR.DERS" },
        { .name = "a", .urls = urls, .nurls = 1, .stream = "S", .consumer = "c*" },
        { .name = "a", .urls = urls, .nurls = 0, .subject = "x" },
        { .name = "a", .urls = urls, .nurls = 1, .subject = "x", .creds = "/nonexistent" },
        { .urls = urls, .nurls = 1, .subject = "x" },
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        char err[300] = "";
        natsrc *s = natsrc_start(&cs[i], tsink_sink(&k), err, sizeof err);
        cr_expect_null(s, "configuration %zu accepted", i);
        cr_expect(err[0], "configuration %zu: no reason", i);
        natsrc_stop(s);
    }
    tsink_end(&k);
}

Test(natsrc, source_without_a_server)
{
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", srv_free_port());
    const char *urls[1] = { url };
    tsink k;
    tsink_init(&k);
    for (int jetstream = 0; jetstream < 2; jetstream++) {
        natsrc_conf c = { .name = "away", .urls = urls, .nurls = 1, .subject = "a.>",
                          .stream = jetstream ? "S" : NULL };
        char err[300];
        natsrc *s = natsrc_start(&c, tsink_sink(&k), err, sizeof err);
        cr_assert_not_null(s, "a server not there yet is no configuration error: %s", err);
        usleep(300000);
        cr_expect(!natsrc_connected(s));
        natsrc_stop(s);           /* (returns though nothing ever connected) */
    }
    tsink_end(&k);
}

/* ---- core NATS ---------------------------------------------------------------------------------- */

Test(natsrc, core_subjects_to_events)
{
    srv sv;
    server_start(&sv);
    tsink k;
    tsink_init(&k);
    natsrc *s = start(&sv, "orders_in", "orders.>", NULL, 0, &k);
    natsConnection *nc = client(&sv);
    /* the subscription reaches the server a moment after the source says it is connected:
     * probe until one arrives */
    for (int i = 0; i < 100 && tsink_count(&k) == 0; i++) {
        publish(nc, "orders.probe", "{}", 2, NULL);
        tsink_wait(&k, 1, 100);
    }
    cr_assert_geq(tsink_count(&k), 1, "no probe came through");
    usleep(200000);
    size_t base = tsink_count(&k);

    const char *ce = "{\"specversion\":\"1.0\",\"id\":\"s-1\",\"source\":\"/x\",\"type\":\"t\"}";
    publish(nc, "orders.eu", "{\"n\":1}", 7, NULL);
    publish(nc, "orders.us", "\x00\x01", 2, NULL);
    publish(nc, "orders.eu", ce, (int)strlen(ce), "Content-Type", "application/cloudevents+json",
            NULL);
    publish(nc, "orders.bin", "7", 1, "ce-specversion", "1.0", "ce-id", "b-1", "ce-source",
            "/bin", "ce-type", "t.bin", NULL);
    publish(nc, "other.subject", "{}", 2, NULL);
    cr_assert(tsink_wait(&k, base + 4, 10000), "%zu of 4 events", tsink_count(&k) - base);

    cJSON *e[4];
    for (int i = 0; i < 4; i++) {
        e[i] = tsink_at(&k, base + i);
        cr_assert_not_null(e[i]);
    }
    char src[80];
    snprintf(src, sizeof src, "nats://127.0.0.1:%d", sv.port);
    cr_expect_str_eq(tsink_str(e[0], "source"), src);
    cr_expect_str_eq(tsink_str(e[0], "type"), "nats.message");
    cr_expect_str_eq(tsink_str(e[0], "subject"), "orders.eu");
    cr_expect_eq(strlen(tsink_str(e[0], "id")), 32);
    cr_expect(tsink_str(e[0], "time")[0]);
    cr_expect_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(e[0], "data"), "n")->valueint, 1);
    cr_expect_str_eq(tsink_str(e[1], "subject"), "orders.us");
    cr_expect_str_eq(tsink_str(e[1], "data_base64"), "AAE=");
    cr_expect_str_neq(tsink_str(e[0], "id"), tsink_str(e[1], "id"));
    cr_expect_str_eq(tsink_str(e[2], "id"), "s-1");
    cr_expect_str_eq(tsink_str(e[2], "source"), "/x");
    cr_expect_str_eq(tsink_str(e[3], "id"), "b-1");
    cr_expect_str_eq(tsink_str(e[3], "type"), "t.bin");
    cr_expect_eq(cJSON_GetObjectItem(e[3], "data")->valueint, 7);
    for (int i = 0; i < 4; i++)
        cJSON_Delete(e[i]);
    usleep(300000);
    cr_expect_eq(tsink_count(&k), base + 4, "other.subject is not subscribed");

    natsConnection_Destroy(nc);
    natsrc_stop(s);
    tsink_end(&k);
    srv_end(&sv);
}

/* ---- JetStream ------------------------------------------------------------------------------------ */

/* A JetStream test's own: a server with a stream, a client of it, an empty sink. */
typedef struct {
    srv sv;
    natsConnection *nc;
    jsCtx *js;
    tsink k;
} js_test;

/* Starts f's server, the stream named stream taking subjects, its client and sink. */
static void js_begin(js_test *f, const char *stream, const char *subjects)
{
    server_start(&f->sv);
    f->nc = client(&f->sv);
    f->js = jetstream(f->nc);
    add_stream(f->js, stream, subjects);
    tsink_init(&f->k);
}

static void js_end(js_test *f)
{
    tsink_end(&f->k);
    jsCtx_Destroy(f->js);
    natsConnection_Destroy(f->nc);
    srv_end(&f->sv);
}

static int64_t ack_pending(jsCtx *js, const char *stream, const char *consumer, uint64_t *floor)
{
    jsConsumerInfo *ci = NULL;
    cr_assert_eq(js_GetConsumerInfo(&ci, js, stream, consumer, NULL, NULL), NATS_OK,
                 "consumer %s", consumer);
    int64_t n = ci->NumAckPending;
    if (floor)
        *floor = ci->AckFloor.Stream;
    jsConsumerInfo_Destroy(ci);
    return n;
}

Test(natsrc, jetstream_backlog)
{
    js_test f;
    js_begin(&f, "ORDERS", "orders.>");
    js_publish(f.js, "orders.a", "{\"n\":1}", NULL);
    js_publish(f.js, "orders.b", "{\"n\":2}", "pub-2");
    js_publish(f.js, "orders.a", "{\"n\":3}", NULL);

    natsrc *s = start(&f.sv, "orders_js", NULL, "ORDERS", 0, &f.k);
    cr_assert(tsink_wait(&f.k, 3, 10000), "%zu of 3 events", tsink_count(&f.k));
    char src[80];
    snprintf(src, sizeof src, "nats://127.0.0.1:%d/ORDERS", f.sv.port);
    const char *ids[3] = { "ORDERS:1", "pub-2", "ORDERS:3" };
    for (int i = 0; i < 3; i++) {
        cJSON *e = tsink_at(&f.k, i);
        cr_expect_str_eq(tsink_str(e, "id"), ids[i]);
        cr_expect_str_eq(tsink_str(e, "source"), src);
        cr_expect_str_eq(tsink_str(e, "subject"), i == 1 ? "orders.b" : "orders.a");
        cr_expect(tsink_str(e, "time")[0]);
        cr_expect_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(e, "data"), "n")->valueint, i + 1);
        cJSON_Delete(e);
    }
    /* acknowledged: the durable's floor moves to 3, and a new source goes on from there */
    uint64_t floor = 0;
    for (int i = 0; i < 100 && (ack_pending(f.js, "ORDERS", "ebr-orders_js", &floor) || floor < 3);
         i++)
        usleep(100000);
    cr_expect_eq(floor, 3);
    natsrc_stop(s);
    s = start(&f.sv, "orders_js", NULL, "ORDERS", 0, &f.k);
    js_publish(f.js, "orders.c", "{\"n\":4}", NULL);
    cr_assert(tsink_wait(&f.k, 4, 10000));
    usleep(500000);
    cr_expect_eq(tsink_count(&f.k), 4, "nothing taken twice");
    cJSON *e = tsink_at(&f.k, 3);
    cr_expect_str_eq(tsink_str(e, "id"), "ORDERS:4");
    cJSON_Delete(e);

    natsrc_stop(s);
    js_end(&f);
}

Test(natsrc, jetstream_retry_comes_again)
{
    js_test f;
    js_begin(&f, "ORDERS", "orders.>");
    f.k.refuse = tsink_refuse_next;
    f.k.retries = 2;
    natsrc *s = start(&f.sv, "r", "orders.>", "ORDERS", 0, &f.k);
    js_publish(f.js, "orders.a", "{\"n\":1}", NULL);
    cr_assert(tsink_wait(&f.k, 1, 15000), "not stored after the retries");
    usleep(1000000);
    pthread_mutex_lock(&f.k.mu);
    cr_expect_eq(f.k.n, 1, "stored once");
    cr_expect_eq(f.k.calls, 3, "two refusals, then stored");
    pthread_mutex_unlock(&f.k.mu);
    cr_expect_eq(ack_pending(f.js, "ORDERS", "ebr-r", NULL), 0);
    natsrc_stop(s);
    js_end(&f);
}

static void *stopper(void *arg)
{
    natsrc_stop(arg);
    return NULL;
}

Test(natsrc, jetstream_not_acked_before_the_append)
{
    js_test f;
    js_begin(&f, "ORDERS", "orders.>");
    tsink_block(&f.k, true);
    natsrc *s = start(&f.sv, "held", NULL, "ORDERS", 1000, &f.k);
    js_publish(f.js, "orders.a", "{\"n\":1}", NULL);
    cr_assert(tsink_wait_blocked(&f.k, 10000), "the append was not reached");
    cr_expect_eq(ack_pending(f.js, "ORDERS", "ebr-held", NULL), 1, "delivered, not acknowledged");

    /* stopped while the append is in progress: once it returns, nothing is acknowledged */
    pthread_t t;
    pthread_create(&t, NULL, stopper, s);
    usleep(300000);
    tsink_block(&f.k, false);
    pthread_join(t, NULL);
    uint64_t floor = 9;
    ack_pending(f.js, "ORDERS", "ebr-held", &floor);
    cr_expect_eq(floor, 0, "not acknowledged by a stopped source");

    tsink k2;
    tsink_init(&k2);
    s = start(&f.sv, "held", NULL, "ORDERS", 1000, &k2);
    cr_assert(tsink_wait(&k2, 1, 15000), "the message did not come again");
    cJSON *e = tsink_at(&k2, 0);
    cr_expect_str_eq(tsink_str(e, "id"), "ORDERS:1", "the same id: the bus drops the copy");
    cJSON_Delete(e);
    natsrc_stop(s);
    tsink_end(&k2);
    js_end(&f);
}

Test(natsrc, jetstream_survives_a_server_restart, .timeout = 90)
{
    js_test f;
    js_begin(&f, "ORDERS", "orders.>");
    natsrc *s = start(&f.sv, "rs", NULL, "ORDERS", 0, &f.k);
    js_publish(f.js, "orders.a", "{\"n\":1}", NULL);
    cr_assert(tsink_wait(&f.k, 1, 10000));
    jsCtx_Destroy(f.js);
    natsConnection_Destroy(f.nc);

    srv_kill(&f.sv, SIGKILL);
    for (int i = 0; i < 100 && natsrc_connected(s); i++)
        usleep(50000);
    cr_expect(!natsrc_connected(s), "connected to a dead server");
    srv_nats_run(&f.sv);
    f.nc = client(&f.sv);
    f.js = jetstream(f.nc);
    for (int i = 2; i <= 3; i++) {
        char d[32];
        snprintf(d, sizeof d, "{\"n\":%d}", i);
        /* (JetStream may take a moment to recover its streams after the restart) */
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 2000;
        natsStatus st = NATS_ERR;
        for (int t = 0; t < 30 && st != NATS_OK; t++)
            st = js_Publish(NULL, f.js, "orders.b", d, (int)strlen(d), &po, NULL);
        cr_assert_eq(st, NATS_OK);
    }
    cr_assert(tsink_wait(&f.k, 3, 30000), "%zu of 3 events after the restart", tsink_count(&f.k));
    cr_expect(wait_connected(s, 10000));
    cJSON *e = tsink_at(&f.k, 2);
    cr_expect_str_eq(tsink_str(e, "id"), "ORDERS:3");
    cJSON_Delete(e);

    natsrc_stop(s);
    js_end(&f);
}

/* ---- the target ----------------------------------------------------------------------------------- */

static natspub *open_pub(const char *url, bool jetstream)
{
    const char *urls[1] = { url };
    natspub_conf c = { .urls = urls, .nurls = 1, .jetstream = jetstream };
    char err[300];
    natspub *p = natspub_open(&c, err, sizeof err);
    cr_assert_not_null(p, "natspub_open: %s", err);
    return p;
}

/* Sends until the connection made in the background is up (or 20 s). */
static int send_soon(natspub *p, const char *subject, const char *data, const char *msg_id,
                     char *why)
{
    int rc = -1;
    for (int i = 0; i < 200 && rc != 0; i++) {
        rc = natspub_send(p, subject, data, strlen(data), "application/json", msg_id, 5000, why,
                          300);
        if (rc != 0)
            usleep(100000);
    }
    return rc;
}

Test(natsrc, target_core)
{
    srv sv;
    server_start(&sv);
    natsConnection *nc = client(&sv);
    natsSubscription *sub = NULL;
    cr_assert_eq(natsConnection_SubscribeSync(&sub, nc, "out.orders"), NATS_OK);
    cr_assert_eq(natsConnection_FlushTimeout(nc, 5000), NATS_OK);
    natspub *p = open_pub(sv.url, false);
    char why[300] = "";
    cr_assert_eq(send_soon(p, "out.orders", "{\"n\":1}", "id-1", why), 0, "%s", why);
    natsMsg *m = NULL;
    cr_assert_eq(natsSubscription_NextMsg(&m, sub, 5000), NATS_OK);
    cr_expect_eq(natsMsg_GetDataLength(m), 7);
    const char *v = NULL;
    cr_expect_eq(natsMsgHeader_Get(m, "Content-Type", &v), NATS_OK);
    cr_expect_str_eq(v ? v : "", "application/json");
    natsMsg_Destroy(m);
    cr_expect_eq(natspub_send(p, "out.*", "x", 1, NULL, NULL, 1000, why, sizeof why), -1,
                 "a wildcard is no subject to publish to");
    natspub_close(p);
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    srv_end(&sv);
}

Test(natsrc, target_jetstream_dedup)
{
    js_test f;
    js_begin(&f, "OUT", "out.>");
    natspub *p = open_pub(f.sv.url, true);
    char why[300] = "";
    cr_assert_eq(send_soon(p, "out.orders", "{\"n\":1}", "e-1", why), 0, "%s", why);
    cr_assert_eq(natspub_send(p, "out.orders", "{\"n\":1}", 7, NULL, "e-1", 5000, why,
                              sizeof why), 0, "a duplicate is delivered too: %s", why);
    cr_assert_eq(natspub_send(p, "out.orders", "{\"n\":2}", 7, NULL, "e-2", 5000, why,
                              sizeof why), 0, "%s", why);
    jsStreamInfo *si = NULL;
    cr_assert_eq(js_GetStreamInfo(&si, f.js, "OUT", NULL, NULL), NATS_OK);
    cr_expect_eq(si->State.Msgs, 2, "the stream holds %d", (int)si->State.Msgs);
    jsStreamInfo_Destroy(si);
    cr_expect_eq(natspub_send(p, "nostream.x", "{}", 2, NULL, NULL, 2000, why, sizeof why), -1,
                 "no stream takes the subject");
    natspub_close(p);
    js_end(&f);
}

Test(natsrc, target_without_a_server)
{
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", srv_free_port());
    for (int jetstream = 0; jetstream < 2; jetstream++) {
        natspub *p = open_pub(url, jetstream);
        char why[300] = "";      /* (fails with a reason; how fast is the timeout's business) */
        cr_expect_eq(natspub_send(p, "out.x", "{}", 2, NULL, "i", 1000, why, sizeof why), -1);
        cr_expect(why[0]);
        natspub_close(p);
    }
}
