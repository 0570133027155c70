/*
 * test_dedup.c — a bus's dedup window (runtime/ingest/dedup.c): claims and settlements, expiry (also of
 * a key whose store outlasted the window), storing through it on a real log (duplicates within
 * a batch, across batches, after a restart's fill), and two threads storing the same events at
 * once.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../runtime/ebd_int.h"

static dedup_key key_of(const char *ev)
{
    dedup_key k;
    cr_assert(dedup_key_of(ev, strlen(ev), &k), "no key in %s", ev);
    return k;
}

static char *new_dir(void)
{
    char *d = strdup("/tmp/ebr-dedup-XXXXXX");
    cr_assert_not_null(mkdtemp(d));
    return d;
}

static void remove_dir(char *d)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    cr_expect_eq(system(cmd), 0);
    free(d);
}

static store *open_log(const char *dir)
{
    store_options o = { .fsync = STORE_FSYNC_NEVER };
    store *s;
    char err[512];
    cr_assert_eq(log_open(dir, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    return s;
}

Test(dedup, keys)
{
    dedup_key a = key_of("{\"id\":\"1\",\"source\":\"s\",\"type\":\"t\"}");
    dedup_key b = key_of("{ \"type\": \"u\", \"source\": \"s\", \"id\": \"1\", \"data\": 5 }");
    dedup_key c = key_of("{\"id\":\"1\",\"source\":\"s2\"}");
    dedup_key d = key_of("{\"id\":\"s1\",\"source\":\"\"}");      /* ("s","1") != ("","s1") */
    cr_expect(a.a == b.a && a.b == b.b, "the key is (source, id), whatever else the event holds");
    cr_expect(a.a != c.a || a.b != c.b);
    cr_expect(a.a != d.a || a.b != d.b, "source and id are kept apart");
    dedup_key k;
    cr_expect(!dedup_key_of("{\"id\":\"1\"}", 10, &k), "no source: no key");
    cr_expect(!dedup_key_of("[1,2]", 5, &k));
    cr_expect(!dedup_key_of("{\"id\":", 6, &k), "not JSON: no key");
}

static int64_t test_clock(void *arg)
{
    return *(int64_t *)arg;
}

Test(dedup, claim_settle_expire)
{
    ebd_dedup *d = dedup_new(1000);
    int64_t now = 1700000000000;          /* (the test's clock: time moves when it says) */
    dedup_set_clock(d, test_clock, &now);
    dedup_key k1 = key_of("{\"id\":\"1\",\"source\":\"s\"}"), k2 = key_of("{\"id\":\"2\",\"source\":\"s\"}");
    uint64_t off = 0, gen;
    cr_assert_eq(dedup_claim(d, k1, &off, &gen), DEDUP_NEW);
    cr_expect_eq(dedup_claim(d, k1, &off, &gen), DEDUP_PENDING, "being stored by another");
    dedup_settle(d, k1, false, 0);
    cr_expect_eq(dedup_claim(d, k1, &off, &gen), DEDUP_NEW, "a failed store gives way");
    dedup_settle(d, k1, true, 42);
    cr_expect_eq(dedup_claim(d, k1, &off, &gen), DEDUP_SEEN);
    cr_expect_eq(off, 42);
    now += 1300;
    cr_expect_eq(dedup_claim(d, k1, &off, &gen), DEDUP_NEW, "gone once the window passed");
    /* a store that outlasts the window: the key's window runs from its settlement */
    now += 1300;
    cr_assert_eq(dedup_claim(d, k2, &off, &gen), DEDUP_NEW);    /* (expires k1's first entry) */
    dedup_settle(d, k1, true, 7);
    dedup_settle(d, k2, true, 8);
    cr_expect_eq(dedup_claim(d, k1, &off, &gen), DEDUP_SEEN);
    now += 1300;
    cr_expect_eq(dedup_claim(d, k1, &off, &gen), DEDUP_NEW, "a late settlement expires too");
    dedup_settle(d, k1, false, 0);
    cr_expect_eq(dedup_size(d), 0, "nothing kept past its window");
    dedup_free(d);
}

static store_entry entry(const char *ev)
{
    return (store_entry){ ev, (uint32_t)strlen(ev), 0, NULL };
}

Test(dedup, store_through_the_window)
{
    char *dir = new_dir();
    ebd_bus b = { .name = "b", .s = open_log(dir), .dedup = dedup_new(600000) };
    store_entry e[4] = { entry("{\"id\":\"a\",\"source\":\"s\"}"), entry("{\"id\":\"b\",\"source\":\"s\"}"),
                         entry("{\"id\":\"a\",\"source\":\"s\",\"again\":1}"), entry("[\"no key\"]") };
    uint64_t offs[4];
    bool dup[4];
    cr_assert_eq(ebd_bus_store(&b, e, 4, offs, dup), STORE_OK);
    cr_expect(!dup[0] && !dup[1] && dup[2] && !dup[3]);
    cr_expect(offs[2] == offs[0], "the duplicate has the first one's offset");
    cr_expect(offs[3] == 2, "three records stored: %llu", (unsigned long long)offs[3]);
    cr_assert_eq(ebd_bus_store(&b, e, 4, offs, dup), STORE_OK);
    cr_expect(dup[0] && dup[1] && dup[2] && !dup[3], "a batch sent again: all but the keyless");
    uint64_t first, next;
    store_bounds(b.s, &first, &next);
    cr_expect_eq(next, 4);
    /* a restart: a new window filled from the log knows them */
    ebd_dedup *again = dedup_new(600000);
    cr_expect_eq(dedup_fill(again, b.s, 0), 2, "the two keyed events of the log");
    dedup_free(b.dedup);
    b.dedup = again;
    cr_assert_eq(ebd_bus_store(&b, e, 1, offs, dup), STORE_OK);
    cr_expect(dup[0] && offs[0] == 0);
    dedup_free(b.dedup);
    store_close(b.s);
    remove_dir(dir);
}

typedef struct {
    ebd_bus *b;
    int fails;
} racer;

static void *race(void *arg)
{
    racer *r = arg;
    for (int i = 0; i < 500; i += 5) {
        char ev[5][64];
        store_entry e[5];
        for (int j = 0; j < 5; j++) {
            snprintf(ev[j], sizeof ev[j], "{\"id\":\"e%d\",\"source\":\"race\"}", i + j);
            e[j] = entry(ev[j]);
        }
        if (ebd_bus_store(r->b, e, 5, NULL, NULL) != STORE_OK)
            r->fails++;
    }
    return NULL;
}

Test(dedup, racing_requests_store_once)
{
    char *dir = new_dir();
    ebd_bus b = { .name = "b", .s = open_log(dir), .dedup = dedup_new(600000) };
    racer r[4] = { { &b, 0 }, { &b, 0 }, { &b, 0 }, { &b, 0 } };
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, race, &r[i]);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    uint64_t first, next;
    store_bounds(b.s, &first, &next);
    cr_expect_eq(next, 500, "four threads storing the same 500 events: %llu stored",
                 (unsigned long long)next);
    cr_expect_eq(r[0].fails + r[1].fails + r[2].fails + r[3].fails, 0);
    dedup_free(b.dedup);
    store_close(b.s);
    remove_dir(dir);
}
