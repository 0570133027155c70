/*
 * test_query.c — the event query's pieces (runtime/center/query.c, docs/replay.md): times as
 * RFC 3339 or a duration back from now, their formatting, the source/type filter with its
 * prefix form, page tokens, and qy_run over a log of known records in both orders, paged
 * (every record once) and with a bound on the records looked at; newest-first chunks bounded
 * by bytes; the dry run letting go of its log (relock) and stopping at its deadline.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../compiler/compiler.h"
#include "../../runtime/center/query.h"

#define NS 1000000000LL

Test(query, durations)
{
    int64_t ns;
    cr_assert(qy_parse_duration("24h", &ns) && ns == 24 * 3600 * NS);
    cr_assert(qy_parse_duration("90m", &ns) && ns == 90 * 60 * NS);
    cr_assert(qy_parse_duration("30s", &ns) && ns == 30 * NS);
    cr_assert(qy_parse_duration("1h30m", &ns) && ns == 5400 * NS);
    cr_assert(qy_parse_duration("500ms", &ns) && ns == NS / 2);
    cr_assert(qy_parse_duration("7d", &ns) && ns == 7 * 86400 * NS);
    cr_assert(qy_parse_duration("now", &ns) && ns == 0);
    const char *bad[] = { "", "h", "24", "24x", "-1h", "1h-", "1.5.5h", " 1h" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert(!qy_parse_duration(bad[i], &ns), "'%s' taken", bad[i]);
}

Test(query, times)
{
    int64_t ns, now = 1796486400 * NS;     /* 2026-12-05T16:00:00Z */
    char why[300];
    cr_assert(qy_parse_time("2026-12-05T16:00:00Z", now, &ns, why, sizeof why) && ns == now);
    cr_assert(qy_parse_time("2026-12-05T16:00:00.123Z", now, &ns, why, sizeof why) &&
              ns == now + 123000000);
    cr_assert(qy_parse_time("2026-12-05T17:30:00+01:30", now, &ns, why, sizeof why) && ns == now);
    cr_assert(qy_parse_time("2026-12-05T14:00:00-02:00", now, &ns, why, sizeof why) && ns == now);
    cr_assert(qy_parse_time("2h", now, &ns, why, sizeof why) && ns == now - 7200 * NS);
    const char *bad[] = { "2026-12-05", "2026-12-05T16:00:00", "2026-13-05T16:00:00Z",
                          "2026-12-05T16:00:00.Z", "yesterday", "2026-12-05T16:00:00Zjunk" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert(!qy_parse_time(bad[i], now, &ns, why, sizeof why), "'%s' taken", bad[i]);
        cr_assert(strstr(why, "RFC 3339"), "why: %s", why);
    }
    char buf[48];
    qy_format_time(now + 7000000, buf, sizeof buf);
    cr_assert_str_eq(buf, "2026-12-05T16:00:00.007Z");
}

Test(query, filters_and_tokens)
{
    const char *ev = "{\"id\":\"x\",\"source\":\"acme.orders\",\"type\":\"order.created\","
                     "\"data\":{\"type\":\"inner\"}}";
    size_t n = strlen(ev);
    qy_filter f = { .source = "acme.orders" };
    cr_assert(qy_event_passes(&f, ev, n));
    f.type = "order.*";
    cr_assert(qy_event_passes(&f, ev, n));
    f.type = "order";
    cr_assert(!qy_event_passes(&f, ev, n));
    f.type = "inner";                       /* a nested member is not the attribute */
    cr_assert(!qy_event_passes(&f, ev, n));
    f = (qy_filter){ .source = "acme.*", .type = "order.created" };
    cr_assert(qy_event_passes(&f, ev, n));
    char tok[40];
    uint64_t at;
    qy_token(true, 1234, tok, sizeof tok);
    cr_assert(qy_token_read(tok, true, &at) && at == 1234);
    cr_assert(!qy_token_read(tok, false, &at));
    cr_assert(!qy_token_read("n12x", true, &at));
    cr_assert(!qy_token_read("", true, &at));
}

typedef struct {
    uint64_t got[200];
    size_t n;
} seen;

static bool collect(void *arg, const store_record *r)
{
    seen *s = arg;
    s->got[s->n++] = r->offset;
    return true;
}

Test(query, run_both_orders_paged)
{
    char dir[] = "/tmp/ebr-query-XXXXXX";
    cr_assert(mkdtemp(dir));
    store *s;
    char err[300];
    store_options o = { .fsync = STORE_FSYNC_NEVER, .segment_bytes = 4096 };
    cr_assert_eq(log_open(dir, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    for (int i = 0; i < 150; i++) {
        char ev[200];
        snprintf(ev, sizeof ev, "{\"id\":\"e%d\",\"source\":\"s%d\",\"type\":\"t\"}", i, i % 3);
        store_entry e = { ev, (uint32_t)strlen(ev), 0, NULL };
        uint64_t first;
        cr_assert_eq(store_append(s, &e, 1, &first), STORE_OK);
    }
    for (int newest = 0; newest < 2; newest++) {
        for (size_t limit = 1; limit < 160; limit += 37) {
            seen all = { 0 };
            qy_query q = { .since_ns = QY_NONE_BEFORE, .until_ns = QY_NONE_AFTER,
                           .newest = newest, .limit = limit };
            for (int pages = 0;; pages++) {
                bool more;
                uint64_t next;
                cr_assert_eq(qy_run(s, &q, collect, &all, &more, &next, err, sizeof err), STORE_OK);
                if (!more)
                    break;
                q.resume = true;
                q.at = next;
                cr_assert(pages < 200);
            }
            cr_assert_eq(all.n, 150, "order %d limit %zu: %zu records", newest, limit, all.n);
            for (size_t i = 0; i < all.n; i++)
                cr_assert_eq(all.got[i], newest ? 149 - i : i);
        }
    }
    /* a filter and a bound on the records looked at: pages that may be empty, and a token */
    seen some = { 0 };
    qy_query q = { .since_ns = QY_NONE_BEFORE, .until_ns = QY_NONE_AFTER, .newest = true,
                   .f = { .source = "s1" }, .scan_max = 10 };
    int pages = 0;
    for (;; pages++) {
        bool more;
        uint64_t next;
        cr_assert_eq(qy_run(s, &q, collect, &some, &more, &next, err, sizeof err), STORE_OK);
        if (!more)
            break;
        q.resume = true;
        q.at = next;
    }
    cr_assert_eq(some.n, 50);
    cr_assert_geq(pages, 14);
    store_close(s);
    char cmd[100];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

/* Newest first, the records held at once are bounded by bytes as well as by count: big records
 * with a small budget come out all, in order, the most held never over the budget. */
Test(query, newest_chunk_bounded_by_bytes)
{
    char dir[] = "/tmp/ebr-query-XXXXXX";
    cr_assert(mkdtemp(dir));
    store *s;
    char err[300];
    store_options o = { .fsync = STORE_FSYNC_NEVER, .segment_bytes = 1 << 20 };
    cr_assert_eq(log_open(dir, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    static char ev[10000];
    for (int i = 0; i < 150; i++) {
        int n = snprintf(ev, sizeof ev, "{\"id\":\"e%d\",\"pad\":\"", i);
        memset(ev + n, 'x', 9000);
        snprintf(ev + n + 9000, sizeof ev - (size_t)n - 9000, "\"}");
        store_entry e = { ev, (uint32_t)strlen(ev), 0, NULL };
        uint64_t first;
        cr_assert_eq(store_append(s, &e, 1, &first), STORE_OK);
    }
    size_t peak = 0;
    seen all = { 0 };
    qy_query q = { .since_ns = QY_NONE_BEFORE, .until_ns = QY_NONE_AFTER, .newest = true,
                   .limit = 150, .chunk_bytes = 50000, .held_peak = &peak };
    bool more;
    uint64_t next;
    cr_assert_eq(qy_run(s, &q, collect, &all, &more, &next, err, sizeof err), STORE_OK);
    cr_assert_eq(all.n, 150);
    for (size_t i = 0; i < all.n; i++)
        cr_assert_eq(all.got[i], 149 - i);
    cr_assert(peak > 0 && peak <= 50000, "held %zu bytes at once", peak);
    store_close(s);
    char cmd[100];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

typedef struct {
    store *s;
    unsigned calls;
} relock_count;

static store *relock_same(void *arg)
{
    relock_count *k = arg;
    k->calls++;
    return k->s;
}

static store *relock_gone(void *arg)
{
    (void)arg;
    return NULL;
}

/* dr_run letting go of the log every few events counts as one run that never does; a log gone
 * at a relock fails the run; a deadline passed truncates it. */
Test(query, dry_run_relock_and_deadline)
{
    char dir[] = "/tmp/ebr-query-XXXXXX";
    cr_assert(mkdtemp(dir));
    store *s;
    char err[300];
    store_options o = { .fsync = STORE_FSYNC_NEVER, .segment_bytes = 4096 };
    cr_assert_eq(log_open(dir, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    for (int i = 0; i < 600; i++) {
        char ev[200];
        snprintf(ev, sizeof ev, "{\"id\":\"e%d\",\"source\":\"s\",\"type\":\"%s\"}", i,
                 i % 3 ? "b" : "a");
        store_entry e = { ev, (uint32_t)strlen(ev), 0, NULL };
        uint64_t first;
        cr_assert_eq(store_append(s, &e, 1, &first), STORE_OK);
    }
    const char *src = "bus main\ntarget t file \"x.jsonl\"\n"
                      "rule ra on main { match type == \"a\" to t }\n";
    vm_program *p = cc_compile_text_flags("t.ebr", src, strlen(src), CC_NO_FILES, NULL, NULL);
    cr_assert(p);
    uint32_t bus = dr_bus_index(p, "main");
    dr_result plain, again;
    cr_assert(dr_run(s, p, bus, QY_NONE_BEFORE, QY_NONE_AFTER, NULL, &plain, err, sizeof err));
    cr_assert_eq(plain.events, 600);
    cr_assert_eq(plain.rules[0].matched, 200);
    relock_count k = { s, 0 };
    dr_limits lim = { .relock = relock_same, .arg = &k, .relock_every = 7 };
    cr_assert(dr_run(s, p, bus, QY_NONE_BEFORE, QY_NONE_AFTER, &lim, &again, err, sizeof err));
    cr_assert_eq(again.events, 600);
    cr_assert_eq(again.rules[0].matched, 200);
    cr_assert_eq(again.first, 0);
    cr_assert_eq(again.last, 599);
    cr_assert_geq(k.calls, 80);
    dr_free(&again);
    lim = (dr_limits){ .relock = relock_gone, .relock_every = 7 };
    cr_assert(!dr_run(s, p, bus, QY_NONE_BEFORE, QY_NONE_AFTER, &lim, &again, err, sizeof err));
    lim = (dr_limits){ .deadline_ms = 1 };
    cr_assert(dr_run(s, p, bus, QY_NONE_BEFORE, QY_NONE_AFTER, &lim, &again, err, sizeof err));
    cr_assert(again.truncated);
    cr_assert_eq(again.events, 256);
    cr_assert_eq(again.next, 256);
    dr_free(&again);
    dr_free(&plain);
    vm_program_free(p);
    store_close(s);
    char cmd[100];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}
