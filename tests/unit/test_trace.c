/*
 * test_trace.c — the trace's records (runtime/center/trace_read.c, docs/trace.md): each kind
 * encoded and decoded back field for field, spans (a run of events in one record) read and
 * narrowed to each event, records cut short refused, a kind the reader does
 * not know skipped by its length, the id hash; and a look-up (trace_lookup) over trace logs and
 * a bus log written here: by offset and by id, the newest of two events with one id, 404s.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../runtime/center/trace.h"

static trace_rec roundtrip(const trace_rec *r, sbuf *b)
{
    b->n = 0;
    trace_encode(b, r);
    cr_assert(!b->oom);
    cr_assert_leq(b->n, trace_encoded_max(r));
    trace_rec out;
    size_t at = 0;
    cr_assert(trace_decode((const unsigned char *)b->v, b->n, &at, &out));
    cr_assert_eq(at, b->n, "the whole record is read");
    return out;
}

Test(trace, received_roundtrip)
{
    sbuf b = { 0 };
    unsigned char h[8] = { 1, 2, 3, 4, 0xff, 0xfe, 0xfd, 0xfc };
    trace_rec r = { .kind = TR_RECEIVED, .off = 1234567890123ull, .count = 2, .time_ms = 1780000000123,
                    .addr = { 127, 0, 0, 1 }, .alen = 4, .port = 54321, .hashes = h };
    trace_rec o = roundtrip(&r, &b);
    cr_assert_eq(o.kind, TR_RECEIVED);
    cr_assert_eq(o.off, r.off);
    cr_assert_eq(o.count, 2);
    cr_assert_eq(o.time_ms, r.time_ms);
    cr_assert_eq(o.alen, 4);
    cr_assert_eq(memcmp(o.addr, r.addr, 4), 0);
    cr_assert_eq(o.port, 54321);
    cr_assert_eq(memcmp(o.hashes, h, 8), 0);
    sb_free(&b);
}

Test(trace, attempt_and_outcome_roundtrip)
{
    sbuf b = { 0 };
    trace_rec a = { .kind = TR_ATTEMPT, .off = 7, .time_ms = 99, .attempt = 3, .dl = true,
                    .state = TRACE_DELIVERED, .status = -1, .latency_ms = 250, .payload = 1 << 20,
                    .rule = "to_ok", .target = "ok", .to = "dlq", .error = "POST x answered 500" };
    trace_rec o = roundtrip(&a, &b);
    cr_assert_eq(o.kind, TR_ATTEMPT);
    cr_assert_eq(o.off, 7);
    cr_assert_eq(o.attempt, 3);
    cr_assert(o.dl);
    cr_assert_eq(o.state, TRACE_DELIVERED);
    cr_assert_eq(o.status, -1);
    cr_assert_eq(o.latency_ms, 250);
    cr_assert_eq(o.payload, 1 << 20);
    cr_assert_str_eq(o.rule, "to_ok");
    cr_assert_str_eq(o.target, "ok");
    cr_assert_str_eq(o.to, "dlq");
    cr_assert_str_eq(o.error, "POST x answered 500");
    trace_rec oc = { .kind = TR_OUTCOME, .off = 8, .time_ms = 100, .state = TRACE_DEAD_LETTERED,
                     .attempt = 2, .rule = "r", .target = "t", .to = "dlq/x.jsonl", .error = "" };
    o = roundtrip(&oc, &b);
    cr_assert_eq(o.kind, TR_OUTCOME);
    cr_assert_eq(o.state, TRACE_DEAD_LETTERED);
    cr_assert_eq(o.attempt, 2);
    cr_assert_str_eq(o.to, "dlq/x.jsonl");
    cr_assert_str_eq(o.error, "");
    sb_free(&b);
}

Test(trace, matched_and_gap_roundtrip)
{
    sbuf b = { 0 };
    static const char names[] = "rule_a\0target_1\0rule_b\0target_2";
    trace_rec m = { .kind = TR_MATCHED, .off = 42, .count = 2, .names = names };
    trace_rec o = roundtrip(&m, &b);
    cr_assert_eq(o.kind, TR_MATCHED);
    cr_assert_eq(o.off, 42);
    cr_assert_eq(o.count, 2);
    /* decoded: each name a string of the record (u16 length before, NUL after) */
    cr_assert_str_eq(o.names, "rule_a");
    cr_assert_str_eq(o.names + 6 + 3, "target_1");
    trace_rec g = { .kind = TR_GAP, .dropped = 5, .time_ms = 12 };
    o = roundtrip(&g, &b);
    cr_assert_eq(o.kind, TR_GAP);
    cr_assert_eq(o.dropped, 5);
    sb_free(&b);
}

Test(trace, matched_span_roundtrip_and_narrowed)
{
    sbuf b = { 0 };
    static const char names[] = "rule_a\0target_1";
    trace_rec m = { .kind = TR_MATCHED, .off = 100, .count = 1, .names = names, .span = 5 };
    trace_rec o = roundtrip(&m, &b);
    cr_assert_eq(b.v[0], TR_MATCHED_SPAN, "stored as a span");
    cr_assert_eq(o.kind, TR_MATCHED, "read as a matched record");
    cr_assert_eq(o.off, 100);
    cr_assert_eq(o.span, 5);
    cr_assert_str_eq(o.names, "rule_a");
    trace_rec n = o;
    trace_narrow(&n, 102);                       /* inside: that event's */
    cr_assert_eq(n.off, 102);
    cr_assert_eq(n.span, 1);
    n = o;
    trace_narrow(&n, 99);                        /* begins after it: its first offset */
    cr_assert_eq(n.off, 100);
    n = o;
    trace_narrow(&n, 200);                       /* ends before it: its last */
    cr_assert_eq(n.off, 104);
    m.span = 1;                                  /* one event: the plain kind */
    roundtrip(&m, &b);
    cr_assert_eq(b.v[0], TR_MATCHED);
    sb_free(&b);
}

Test(trace, delivered_span_built_in_place)
{
    unsigned char buf[512];
    trace_rec a = { .kind = TR_ATTEMPT, .off = 1000, .time_ms = 1780000000000, .attempt = 1,
                    .status = 200, .rule = "to_ok", .target = "ok" };
    unsigned char *end = trace_span_begin(buf, &a);
    const int64_t t[3] = { 1780000000000, 1780000000005, 1779999999998 };  /* (a clock step back) */
    const uint32_t lat[3] = { 0, 7, 300000 };
    const uint64_t pl[3] = { 0, 300, (uint64_t)1 << 40 };
    for (int k = 0; k < 3; k++)
        end += trace_span_add(buf, end, t[k], lat[k], pl[k]);
    size_t n = (size_t)(end - buf), at = 0;
    trace_rec o;
    cr_assert(trace_decode(buf, n, &at, &o));
    cr_assert_eq(at, n);
    cr_assert_eq(o.kind, TR_ATTEMPT);
    cr_assert_eq(o.span, 3);
    cr_assert_eq(o.state, TRACE_DELIVERED);
    cr_assert(!o.dl);
    cr_assert_str_eq(o.rule, "to_ok");
    cr_assert_str_eq(o.target, "ok");
    cr_assert_str_eq(o.error, "");
    for (int k = 0; k < 3; k++) {
        trace_rec e = o;
        trace_narrow(&e, 1000 + (uint64_t)k);
        cr_assert_eq(e.off, 1000 + (uint64_t)k);
        cr_assert_eq(e.time_ms, t[k], "event %d", k);
        cr_assert_eq(e.latency_ms, lat[k], "event %d", k);
        cr_assert_eq(e.payload, pl[k], "event %d", k);
        cr_assert_eq(e.status, 200);
        cr_assert_eq(e.attempt, 1);
    }
    for (size_t cut = 0; cut < n; cut++) {       /* an event cut short: refused */
        at = 0;
        cr_assert(!trace_decode(buf, cut, &at, &o), "cut at %zu", cut);
    }
}

Test(trace, short_records_refused_unknown_kinds_skipped)
{
    sbuf b = { 0 };
    trace_rec a = { .kind = TR_ATTEMPT, .off = 1, .rule = "r", .target = "t", .to = "", .error = "e" };
    trace_encode(&b, &a);
    trace_rec o;
    for (size_t n = 0; n < b.n; n++) {
        size_t at = 0;
        cr_assert(!trace_decode((const unsigned char *)b.v, n, &at, &o), "cut at %zu", n);
    }
    /* a kind 77 record of 3 bytes, then the attempt: the first is skipped, the second read */
    sbuf c = { 0 };
    sb_put(&c, "\x4d\x03\x00\x00\x00xyz", 8);
    sb_put(&c, b.v, b.n);
    size_t at = 0;
    cr_assert(trace_decode((const unsigned char *)c.v, c.n, &at, &o));
    cr_assert_eq(o.kind, 77);
    cr_assert_eq(at, 8);
    cr_assert(trace_decode((const unsigned char *)c.v, c.n, &at, &o));
    cr_assert_eq(o.kind, TR_ATTEMPT);
    cr_assert_str_eq(o.error, "e");
    sb_free(&b);
    sb_free(&c);
}

Test(trace, id_hash)
{
    cr_assert_eq(trace_id_hash("", 0), 2166136261u);
    cr_assert_eq(trace_id_hash("a", 1), 0xe40c292cu);      /* FNV-1a */
    cr_assert_neq(trace_id_hash("order-1", 7), trace_id_hash("order-2", 7));
}

/* ---- a look-up over logs written here ---------------------------------------------------------- */

static store *open_log(const char *dir)
{
    store *s = NULL;
    char err[300];
    store_options o = { .fsync = STORE_FSYNC_NEVER };
    cr_assert_eq(log_open(dir, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    return s;
}

/* One block of records (the trace thread's format) appended to s. */
static void put_block(store *s, const trace_rec *r, size_t n)
{
    sbuf b = { 0 };
    /* version 1, offsets 0..max, matched up to max */
    sb_put(&b, "\x01\0\0\0\0\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 25);
    for (size_t i = 0; i < n; i++)
        trace_encode(&b, &r[i]);
    store_entry e = { b.v, (uint32_t)b.n, 0, NULL };
    uint64_t first;
    cr_assert_eq(store_append(s, &e, 1, &first), STORE_OK);
    sb_free(&b);
}

static uint32_t hash_of(const char *id)
{
    return trace_id_hash(id, strlen(id));
}

Test(trace, lookup)
{
    char dir[] = "/tmp/ebr-trace-XXXXXX", path[200];
    cr_assert(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/buses", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/buses/b", dir);
    store *bus = open_log(path);
    const char *evs[] = {
        "{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"s1\",\"type\":\"t\"}",
        "{\"specversion\":\"1.0\",\"id\":\"y\",\"source\":\"s1\",\"type\":\"t\"}",
        "{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"s2\",\"type\":\"t\"}",
    };
    store_entry e[3];
    for (int i = 0; i < 3; i++)
        e[i] = (store_entry){ evs[i], (uint32_t)strlen(evs[i]), 0, NULL };
    cr_assert_eq(store_append(bus, e, 3, NULL), STORE_OK);
    snprintf(path, sizeof path, "%s/trace", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/trace/b", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/trace/b/received", dir);
    store *rs = open_log(path);
    uint32_t hv[3] = { hash_of("x"), hash_of("y"), hash_of("x") };
    unsigned char hb[12];
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 4; k++)
            hb[4 * i + k] = (unsigned char)(hv[i] >> (8 * k));
    trace_rec rr = { .kind = TR_RECEIVED, .off = 0, .count = 3, .time_ms = 1, .addr = { 10, 0, 0, 7 },
                     .alen = 4, .port = 999, .hashes = hb };
    put_block(rs, &rr, 1);
    store_close(rs);
    snprintf(path, sizeof path, "%s/trace/b/delivery", dir);
    store *ds = open_log(path);
    /* (one thread's records after another's: a delivery thread's attempts may come first) */
    trace_rec dr[] = {
        { .kind = TR_ATTEMPT, .off = 2, .time_ms = 5, .attempt = 1, .status = 503, .latency_ms = 3,
          .payload = 10, .rule = "r1", .target = "t1", .to = "", .error = "answered 503" },
        { .kind = TR_ATTEMPT, .off = 2, .time_ms = 6, .attempt = 2, .status = 200, .latency_ms = 2,
          .payload = 10, .state = TRACE_DELIVERED, .rule = "r1", .target = "t1", .to = "", .error = "" },
        { .kind = TR_MATCHED, .off = 1, .count = 1, .names = "r1\0t1" },
        { .kind = TR_MATCHED, .off = 2, .count = 1, .names = "r1\0t1" },
    };
    put_block(ds, dr, 4);
    store_close(ds);

    trace_query q = { .data_dir = dir, .bus = "b", .log = bus, .id = "x" };
    sbuf out = { 0 };
    char err[300];
    cr_assert_eq(trace_lookup(&q, &out, err, sizeof err), 200, "%s", err);
    sb_put(&out, "", 1);
    cr_assert(strstr(out.v, "\"offset\":2,\"id\":\"x\",\"source\":\"s2\""), "%s", out.v);
    cr_assert(strstr(out.v, "\"producer\":\"10.0.0.7:999\""), "%s", out.v);
    cr_assert(strstr(out.v, "\"matched\":[{\"rule\":\"r1\",\"target\":\"t1\",\"payload_bytes\":10}]"), "%s", out.v);
    cr_assert(strstr(out.v, "\"attempt\":1,\"status\":503,\"latency_ms\":3,\"error\":\"answered 503\""), "%s", out.v);
    cr_assert(strstr(out.v, "\"state\":\"delivered\",\"attempts\":2"), "%s", out.v);
    cr_assert(strstr(out.v, "\"others\":[{\"offset\":0,\"source\":\"s1\""), "%s", out.v);

    out.n = 0;
    q.source = "s1";
    cr_assert_eq(trace_lookup(&q, &out, err, sizeof err), 200, "%s", err);
    sb_put(&out, "", 1);
    cr_assert(strstr(out.v, "\"offset\":0,"), "%s", out.v);
    cr_assert(strstr(out.v, "\"matched\":[]"), "%s", out.v);
    cr_assert(strstr(out.v, "\"outcomes\":[]"), "%s", out.v);

    out.n = 0;
    trace_query q1 = { .data_dir = dir, .bus = "b", .log = bus, .by_offset = true, .offset = 1 };
    cr_assert_eq(trace_lookup(&q1, &out, err, sizeof err), 200, "%s", err);
    sb_put(&out, "", 1);
    cr_assert(strstr(out.v, "\"id\":\"y\""), "%s", out.v);
    cr_assert(strstr(out.v, "\"state\":\"pending\""), "%s", out.v);

    out.n = 0;
    q.id = "nope";
    q.source = NULL;
    cr_assert_eq(trace_lookup(&q, &out, err, sizeof err), 404);
    q1.offset = 3;
    cr_assert_eq(trace_lookup(&q1, &out, err, sizeof err), 404);
    sb_free(&out);
    store_close(bus);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}
