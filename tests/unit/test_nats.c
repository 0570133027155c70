/*
 * test_nats.c — a bus on NATS JetStream (runtime/store/nats.c, docs/storage.md "NATS
 * JetStream"), against a real `nats-server -js` each test starts on a loopback port of its own
 * (6000-8999, below Linux's ephemeral range) with its own storage folder, and stops:
 * appends and their offsets, flags and times; cursors by offset (a consumer, and one record by a
 * direct get after a seek) and by time, waiting for a record; group cursors shared by two
 * connections (as by two daemons): each record to one of them, done records never again, a
 * closed reader's records to the other at once, a record held past the ack wait given again
 * unless its reader goes on reading (in progress); and the errors of a server that is not there
 * or refuses the stream's replicas.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "../../runtime/runtime.h"
#include "servers.h"

/* ---- a server of the test's own ---------------------------------------------------------------- */

/* nats-server in a folder /tmp/ebr-nats-XXXXXX, sent SIGTERM if the test dies. */
static void server_start(srv *s)
{
    srv_nats_start(s, "nats", SIGTERM);
}

static store *open_bus(const srv *sv, const char *stream, int64_t ack_wait_ms)
{
    const char *urls[1] = { sv->url };
    store_nats_options no = { .urls = urls, .nurls = 1, .stream = stream,
                              .ack_wait_ns = ack_wait_ms * 1000000 };
    store *s = NULL;
    char err[512];
    store_status st = nats_open(&no, NULL, &s, err, sizeof err);
    cr_assert_eq(st, STORE_OK, "nats_open: %s", err);
    return s;
}

static int64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void append_n(store *s, int from, int n)
{
    for (int i = from; i < from + n; i++) {
        char b[32];
        int len = snprintf(b, sizeof b, "{\"n\":%d}", i);
        store_entry e = { b, (uint32_t)len, 0, NULL };
        uint64_t off;
        cr_assert_eq(store_append(s, &e, 1, &off), STORE_OK, "%s", store_error(s));
    }
}

/* ---- appends and ordinary cursors ---------------------------------------------------------------- */

Test(nats, append_and_read)
{
    srv sv;
    server_start(&sv);
    store *s = open_bus(&sv, "T1", 0);
    cr_expect(store_shared(s), "a JetStream bus is shared");
    int64_t before = wall_ns() - 1000000000;     /* (the server's clock: the same machine) */
    store_entry e[3] = { { "{\"a\":1}", 7, 0, NULL }, { "", 0, 0xdeadbeef, NULL }, { "{\"c\":3}", 7, 0, NULL } };
    uint64_t offs[3];
    cr_assert_eq(store_append(s, e, 3, offs), STORE_OK, "%s", store_error(s));
    cr_expect(offs[0] == 0 && offs[1] == 1 && offs[2] == 2, "offsets %" PRIu64 " %" PRIu64
              " %" PRIu64, offs[0], offs[1], offs[2]);
    uint64_t first, next;
    store_bounds(s, &first, &next);
    cr_expect(first == 0 && next == 3, "bounds %" PRIu64 "..%" PRIu64, first, next);

    store_cursor *c;
    cr_assert_eq(store_cursor_open(s, 0, &c), STORE_OK);
    store_record r;
    int64_t last = 0;
    for (uint64_t i = 0; i < 3; i++) {
        cr_assert_eq(store_cursor_next(c, &r, 5000), STORE_OK, "%s", store_cursor_error(c));
        cr_expect_eq(r.offset, i);
        cr_expect_eq(r.len, e[i].len);
        cr_expect(r.len == 0 || !memcmp(r.data, e[i].data, r.len));
        cr_expect_eq(r.flags, e[i].flags);
        cr_expect(r.time_ns >= before && r.time_ns >= last, "time %" PRId64, r.time_ns);
        last = r.time_ns;
    }
    cr_expect_eq(store_cursor_next(c, &r, 0), STORE_TIMEOUT);
    cr_expect_eq(store_cursor_offset(c), 3);

    /* one record after a seek, without waiting: a direct get */
    cr_assert_eq(store_cursor_seek(c, 1), STORE_OK);
    store_cursor *d;
    cr_assert_eq(store_cursor_open(s, 2, &d), STORE_OK);
    cr_assert_eq(store_cursor_next(d, &r, 0), STORE_OK, "%s", store_cursor_error(d));
    cr_expect(r.offset == 2 && r.len == 7 && !memcmp(r.data, "{\"c\":3}", 7));
    cr_assert_eq(store_cursor_seek(d, 1), STORE_OK);
    cr_assert_eq(store_cursor_next(d, &r, 0), STORE_OK, "%s", store_cursor_error(d));
    cr_expect(r.offset == 1 && r.flags == 0xdeadbeef);
    cr_expect_eq(store_cursor_next(d, &r, 0), STORE_OK);
    cr_expect_eq(r.offset, 2);
    cr_expect_eq(store_cursor_next(d, &r, 0), STORE_TIMEOUT, "nothing at 3 yet");
    store_cursor_close(d);

    /* a reader waiting at the end gets the next record when it comes */
    cr_assert_eq(store_cursor_seek(c, 3), STORE_OK);
    pid_t w = fork();
    if (w == 0) {
        usleep(300000);
        store *s2 = open_bus(&sv, "T1", 0);
        append_n(s2, 3, 1);
        store_close(s2);
        _exit(0);
    }
    cr_assert_eq(store_cursor_next(c, &r, 20000), STORE_OK, "%s", store_cursor_error(c));
    cr_expect(r.offset == 3 && r.len == 7 && !memcmp(r.data, "{\"n\":3}", 7));
    waitpid(w, NULL, 0);
    store_cursor_close(c);

    /* a scan without waiting: every record kept, in order, then the end (past the first few
     * direct gets it reads through a consumer) */
    append_n(s, 4, 60);
    cr_assert_eq(store_cursor_open(s, 0, &c), STORE_OK);
    uint64_t seen = 0;
    while (store_cursor_next(c, &r, 0) == STORE_OK) {
        cr_assert_eq(r.offset, seen, "offset %" PRIu64 " where %" PRIu64 " was due", r.offset, seen);
        seen++;
    }
    cr_expect_eq(seen, 64, "scanned %" PRIu64 " of 64", seen);
    store_cursor_close(c);
    store_close(s);
    srv_end(&sv);
}

Test(nats, cursor_by_time)
{
    srv sv;
    server_start(&sv);
    store *s = open_bus(&sv, "T2", 0);
    append_n(s, 0, 2);
    usleep(50000);
    int64_t t = wall_ns();
    usleep(50000);
    append_n(s, 2, 2);
    store_cursor *c;
    cr_assert_eq(store_cursor_open_at(s, t, &c), STORE_OK);
    store_record r;
    cr_assert_eq(store_cursor_next(c, &r, 5000), STORE_OK, "%s", store_cursor_error(c));
    cr_expect_eq(r.offset, 2, "the first record at or after the time");
    cr_assert_eq(store_cursor_next(c, &r, 5000), STORE_OK);
    cr_expect_eq(r.offset, 3);
    store_cursor_close(c);
    /* the offset is known before reading: before everything, 0; after everything, the end */
    cr_assert_eq(store_cursor_open_at(s, t - 3600000000000LL, &c), STORE_OK);
    cr_expect_eq(store_cursor_offset(c), 0);
    store_cursor_close(c);
    cr_assert_eq(store_cursor_open_at(s, wall_ns() + 3600000000000LL, &c), STORE_OK);
    cr_expect_eq(store_cursor_offset(c), 4);
    cr_expect_eq(store_cursor_next(c, &r, 0), STORE_TIMEOUT);
    store_cursor_close(c);
    cr_assert_eq(store_cursor_open_at(s, t, &c), STORE_OK);
    cr_expect_eq(store_cursor_offset(c), 2);
    store_cursor_close(c);
    store_close(s);
    srv_end(&sv);
}

/* ---- group cursors ------------------------------------------------------------------------------- */

/* Reads from a and b in turns until want records came or nothing more does; counts each offset. */
static int read_both(store_cursor *a, store_cursor *b, int *seen, int nseen, int want,
                     int *from_a, int *from_b, bool done)
{
    int got = 0, idle = 0;
    while (got < want && idle < 20) {
        store_cursor *cs[2] = { a, b };
        bool any = false;
        for (int k = 0; k < 2; k++) {
            if (!cs[k])
                continue;
            store_record r;
            store_status st = store_cursor_next(cs[k], &r, 100);
            if (st == STORE_TIMEOUT)
                continue;
            cr_assert_eq(st, STORE_OK, "%s", store_cursor_error(cs[k]));
            cr_assert_lt(r.offset, (uint64_t)nseen);
            seen[r.offset]++;
            got++;
            any = true;
            *(k ? from_b : from_a) += 1;
            if (done)
                cr_assert_eq(store_cursor_done(cs[k], &r.offset, 1), STORE_OK);
        }
        idle = any ? 0 : idle + 1;
    }
    return got;
}

Test(nats, group_shares_records)
{
    srv sv;
    server_start(&sv);
    store *s1 = open_bus(&sv, "T3", 0), *s2 = open_bus(&sv, "T3", 0);
    store_cursor *a, *b;
    cr_assert_eq(store_cursor_open_group(s1, "router", &a), STORE_OK, "%s", store_error(s1));
    cr_assert_eq(store_cursor_open_group(s2, "router", &b), STORE_OK, "%s", store_error(s2));
    append_n(s1, 0, 300);
    int seen[300] = { 0 }, fa = 0, fb = 0;
    cr_expect_eq(read_both(a, b, seen, 300, 300, &fa, &fb, true), 300);
    for (int i = 0; i < 300; i++)
        cr_expect_eq(seen[i], 1, "offset %d given %d times", i, seen[i]);
    cr_expect(fa > 0 && fb > 0, "both readers had a share (%d, %d)", fa, fb);
    store_record r;
    cr_expect_eq(store_cursor_seek(a, 0), STORE_EINVAL, "a group cursor cannot seek");
    store_cursor_close(a);
    store_cursor_close(b);
    /* done records are never given again, to a new reader of the group either */
    cr_assert_eq(store_cursor_open_group(s2, "router", &b), STORE_OK);
    cr_expect_eq(store_cursor_next(b, &r, 1500), STORE_TIMEOUT);
    store_cursor_close(b);
    /* another group reads everything from the start */
    cr_assert_eq(store_cursor_open_group(s2, "audit", &b), STORE_OK);
    int seen2[300] = { 0 };
    fa = fb = 0;
    cr_expect_eq(read_both(NULL, b, seen2, 300, 300, &fa, &fb, true), 300);
    store_cursor_close(b);
    store_close(s1);
    store_close(s2);
    srv_end(&sv);
}

Test(nats, group_closed_reader_gives_back)
{
    srv sv;
    server_start(&sv);
    store *s1 = open_bus(&sv, "T4", 60000), *s2 = open_bus(&sv, "T4", 60000);
    store_cursor *a, *b;
    cr_assert_eq(store_cursor_open_group(s1, "router", &a), STORE_OK);
    append_n(s1, 0, 10);
    int seen[10] = { 0 };
    store_record r;
    for (int i = 0; i < 10; i++) {
        cr_assert_eq(store_cursor_next(a, &r, 5000), STORE_OK, "%s", store_cursor_error(a));
        seen[r.offset]++;
        if (r.offset % 2 == 0)
            cr_assert_eq(store_cursor_done(a, &r.offset, 1), STORE_OK);
    }
    store_cursor_close(a);                 /* five not done: to the group's other reader now */
    cr_assert_eq(store_cursor_open_group(s2, "router", &b), STORE_OK);
    int again = 0;
    while (store_cursor_next(b, &r, 5000) == STORE_OK) {   /* well within the 60 s ack wait */
        cr_expect_eq(r.offset % 2, 1, "offset %" PRIu64 " was done", r.offset);
        again++;
        store_cursor_done(b, &r.offset, 1);
        if (again == 5)
            break;
    }
    cr_expect_eq(again, 5);
    cr_expect_eq(store_cursor_next(b, &r, 1000), STORE_TIMEOUT);
    store_cursor_close(b);
    store_close(s1);
    store_close(s2);
    srv_end(&sv);
}

Test(nats, group_ack_wait_and_in_progress)
{
    srv sv;
    server_start(&sv);
    /* (2 s: the holder says it is at work every 0.67 s, a margin for a busy machine) */
    store *s1 = open_bus(&sv, "T5", 2000), *s2 = open_bus(&sv, "T5", 2000);
    store_cursor *a, *b;
    cr_assert_eq(store_cursor_open_group(s1, "router", &a), STORE_OK);
    cr_assert_eq(store_cursor_open_group(s2, "router", &b), STORE_OK);
    append_n(s1, 0, 1);
    store_record r;
    store_status st;
    store_cursor *holder = NULL, *other = NULL;
    for (int i = 0; i < 100 && !holder; i++) {
        if ((st = store_cursor_next(a, &r, 100)) == STORE_OK)
            holder = a, other = b;
        else if ((st = store_cursor_next(b, &r, 100)) == STORE_OK)
            holder = b, other = a;
    }
    cr_assert_not_null(holder);
    /* The holder goes on reading (and so says it is at work on the record) for 2.5 ack waits:
     * the other reader does not get it. */
    int64_t end = wall_ns() + 5000000000LL;
    while (wall_ns() < end) {
        cr_expect_eq(store_cursor_next(holder, &r, 100), STORE_TIMEOUT);
        cr_expect_eq(store_cursor_next(other, &r, 100), STORE_TIMEOUT, "given again while in progress");
    }
    /* Held and not read for longer than the ack wait (a daemon that hangs): given again. */
    st = store_cursor_next(other, &r, 15000);
    cr_expect_eq(st, STORE_OK, "the record went to the other reader after the ack wait");
    cr_expect_eq(r.offset, 0);
    store_cursor_done(other, &r.offset, 1);
    store_cursor_close(a);
    store_cursor_close(b);
    store_close(s1);
    store_close(s2);
    srv_end(&sv);
}

/* ---- the stream's duplicate window (a bus's dedup on JetStream) ------------------------------- */

Test(nats, duplicate_window)
{
    srv sv;
    server_start(&sv);
    const char *urls[1] = { sv.url };
    store_nats_options no = { .urls = urls, .nurls = 1, .stream = "TD" };
    store_options o = { .dedup_ns = 60 * (uint64_t)1000000000 };
    store *a = NULL, *b = NULL;
    char err[512];
    cr_assert_eq(nats_open(&no, &o, &a, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(nats_open(&no, &o, &b, err, sizeof err), STORE_OK, "%s", err);
    cr_expect(store_dedups(a), "a stream with a window de-duplicates");
    /* one record alone, then a batch holding it again, a new one and the new one twice:
     * through two connections, as two daemons would */
    store_entry one = { "{\"x\":1}", 7, 0, "k1" };
    uint64_t off1;
    bool dup1;
    cr_assert_eq(store_append_dedup(a, &one, 1, &off1, &dup1), STORE_OK, "%s", store_error(a));
    cr_expect(!dup1);
    store_entry e[3] = { { "{\"x\":1}", 7, 0, "k1" }, { "{\"x\":2}", 7, 0, "k2" },
                         { "{\"x\":2}", 7, 0, "k2" } };
    uint64_t offs[3];
    bool dup[3];
    cr_assert_eq(store_append_dedup(b, e, 3, offs, dup), STORE_OK, "%s", store_error(b));
    cr_expect(dup[0] && !dup[1] && dup[2], "dups: %d %d %d", dup[0], dup[1], dup[2]);
    cr_expect_eq(offs[0], off1, "a duplicate has the first one's offset");
    cr_expect_eq(offs[2], offs[1]);
    uint64_t first, next;
    store_bounds(a, &first, &next);
    cr_expect_eq(next, 2, "two records stored, not four");
    /* without a msg_id nothing is de-duplicated */
    store_entry plain = { "{\"x\":1}", 7, 0, NULL };
    cr_assert_eq(store_append_dedup(a, &plain, 1, &off1, &dup1), STORE_OK);
    cr_expect(!dup1 && off1 == 2);
    /* a window longer than the stream keeps its messages: the stream's retention bounds it
     * (the server refuses a longer one) */
    store_nats_options short_no = { .urls = urls, .nurls = 1, .stream = "TD2" };
    store_options short_o = { .dedup_ns = 600 * (uint64_t)1000000000,
                              .retention_ns = 60 * (uint64_t)1000000000 };
    store *c = NULL;
    cr_expect_eq(nats_open(&short_no, &short_o, &c, err, sizeof err), STORE_OK, "%s", err);
    if (c)
        store_close(c);
    store_close(a);
    store_close(b);
    srv_end(&sv);
}

/* ---- errors ------------------------------------------------------------------------------------- */

Test(nats, errors)
{
    srv sv;
    server_start(&sv);
    const char *urls[1] = { sv.url };
    store_nats_options no = { .urls = urls, .nurls = 1, .stream = "T6", .replicas = 3 };
    store *s = NULL;
    char err[512];
    cr_expect_neq(nats_open(&no, NULL, &s, err, sizeof err), STORE_OK);
    cr_expect(strstr(err, "cannot make stream T6 (replicas 3)"), "%s", err);
    srv_end(&sv);
    no.replicas = 1;
    cr_expect_eq(nats_open(&no, NULL, &s, err, sizeof err), STORE_EIO);
    cr_expect(strstr(err, "cannot connect to NATS at nats://127.0.0.1:"), "%s", err);
}
