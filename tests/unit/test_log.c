/*
 * test_log.c — the bus log (runtime/store/log.c, docs/storage.md): appends and reads, group commit and
 * the fsync contract, cursors by offset and by time, waiting readers, retention, named cursors
 * and cursor sets (atomic replacement, damaged files refused), recovery from torn and corrupted
 * files written on purpose, a writer killed with SIGKILL mid-append (EBR_CRASH_ROUNDS rounds, 20
 * by default; `make soak` runs 500), and recovery without a reopen from failed writes and syncs
 * (a full disk, an I/O error).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../runtime/runtime.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static char reports[1 << 16];

static void collect(void *arg, const char *msg)
{
    (void)arg;
    size_t n = strlen(reports);
    snprintf(reports + n, sizeof reports - n, "%s\n", msg);
}

static char *new_dir(void)
{
    char *d = strdup("/tmp/ebr-log-XXXXXX");
    cr_assert_not_null(mkdtemp(d));
    return d;
}

static void remove_dir(const char *d)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    cr_assert_eq(system(cmd), 0);
}

/* Record i's payload: 1..300 bytes that say which record they are. */
static size_t payload(uint64_t i, char *buf)
{
    size_t n = 1 + (size_t)(i * 7919 % 300);
    for (size_t k = 0; k < n; k++)
        buf[k] = (char)('a' + (i + k) % 26);
    int h = snprintf(buf, n, "%" PRIu64, i);
    (void)h;
    return n;
}

static store *open_log(const char *dir, store_fsync f, uint64_t seg)
{
    store_options o = { .fsync = f, .segment_bytes = seg, .report = collect };
    store *s;
    char err[512];
    store_status st = log_open(dir, &o, &s, err, sizeof err);
    cr_assert_eq(st, STORE_OK, "log_open: %s", err);
    return s;
}

/* Appends records [from, to) in batches of up to 7. */
static void append_range(store *s, uint64_t from, uint64_t to)
{
    static char bufs[7][300];
    for (uint64_t i = from; i < to;) {
        store_entry e[7];
        size_t n = 0;
        for (; n < 7 && i < to; n++, i++) {
            e[n].len = (uint32_t)payload(i, bufs[n]);
            e[n].data = bufs[n];
            e[n].flags = (uint32_t)i;
        }
        uint64_t offs[7];
        cr_assert_eq(store_append(s, e, n, offs), STORE_OK, "%s", store_error(s));
        for (size_t k = 0; k < n; k++)
            cr_assert_eq(offs[k], i - n + k, "the local log's offsets are consecutive");
    }
}

/* Reads from offset `from` and expects records [from, to), each intact, then nothing. */
static void expect_range(store *s, uint64_t from, uint64_t to)
{
    store_cursor *c;
    cr_assert_eq(store_cursor_open(s, from, &c), STORE_OK);
    store_record r;
    char want[300];
    for (uint64_t i = from; i < to; i++) {
        store_status st = store_cursor_next(c, &r, 0);
        cr_assert_eq(st, STORE_OK, "offset %" PRIu64 ": status %d: %s", i, st, store_cursor_error(c));
        cr_assert_eq(r.offset, i);
        size_t n = payload(i, want);
        cr_assert_eq(r.len, n, "offset %" PRIu64, i);
        cr_assert(memcmp(r.data, want, n) == 0, "offset %" PRIu64 ": payload differs", i);
        cr_assert_eq(r.flags, (uint32_t)i);
    }
    cr_assert_eq(store_cursor_next(c, &r, 0), STORE_TIMEOUT);
    store_cursor_close(c);
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s", path);
    return (uint64_t)st.st_size;
}

static char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(*n + 1);
    cr_assert_eq(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static void write_file(const char *path, const char *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    cr_assert_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* ---- appends and reads -------------------------------------------------------------------- */

Test(log, appends_read_back_across_segments_and_reopen)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 8192);
    append_range(s, 0, 1000);
    log_stats st;
    log_get_stats(s, &st);
    cr_expect_gt(st.segments, 10, "8 KiB segments roll: %u", st.segments);
    cr_expect_eq(st.next, 1000);
    expect_range(s, 0, 1000);
    expect_range(s, 517, 1000);     /* through the sparse index */
    expect_range(s, 999, 1000);
    expect_range(s, 1000, 1000);
    store_close(s);
    s = open_log(d, STORE_FSYNC_NEVER, 8192);
    expect_range(s, 0, 1000);
    append_range(s, 1000, 1100);
    expect_range(s, 0, 1100);
    store_close(s);
    cr_expect_eq(reports[0], 0, "a clean reopen reports nothing: %s", reports);
    char err[300];
    reports[0] = 0;
    cr_expect_eq(log_check(d, false, collect, NULL, err, sizeof err), 0, "%s", reports);
    cr_expect(strstr(reports, "25 segments, 1100 records") || strstr(reports, " segments, 1100 records"), "%s", reports);
    remove_dir(d);
    free(d);
}

Test(log, records_carry_flags_time_and_empty_payloads)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_ALWAYS, 0);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t before = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    store_entry e[2] = { { "", 0, 0xdeadbeef, NULL }, { "x", 1, 0, NULL } };
    uint64_t first, offs[2];
    cr_assert_eq(store_append(s, e, 2, offs), STORE_OK);
    store_cursor *c;
    cr_assert_eq(store_cursor_open(s, 0, &c), STORE_OK);
    store_record r;
    cr_assert_eq(store_cursor_next(c, &r, 0), STORE_OK);
    cr_expect_eq(r.len, 0);
    cr_expect_eq(r.flags, 0xdeadbeef);
    cr_expect_geq(r.time_ns, before);
    int64_t t0 = r.time_ns;
    cr_assert_eq(store_cursor_next(c, &r, 0), STORE_OK);
    cr_expect_geq(r.time_ns, t0, "times never decrease");
    store_cursor_close(c);
    /* A record over the limit is refused whole, and the log goes on. */
    static char big[17 << 20];
    store_entry b = { big, sizeof big, 0, NULL };
    cr_expect_eq(store_append(s, &b, 1, &first), STORE_EINVAL);
    cr_expect(strstr(store_error(s), "over the limit"), "%s", store_error(s));
    cr_expect_eq(store_append(s, e, 1, &first), STORE_OK);
    cr_expect_eq(first, 2);
    store_close(s);
    remove_dir(d);
    free(d);
}

Test(log, a_second_process_cannot_open_a_log_in_use)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    pid_t pid = fork();
    if (pid == 0) {
        store *t;
        char err[300];
        _exit(log_open(d, NULL, &t, err, sizeof err) == STORE_EBUSY && strstr(err, "another process") ? 0 : 1);
    }
    int status;
    waitpid(pid, &status, 0);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the second open was not refused");
    store_close(s);
    remove_dir(d);
    free(d);
}

Test(log, cursor_by_time_finds_the_first_record_at_or_after_it)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 4096);
    append_range(s, 0, 300);
    struct timespec ts = { 0, 3000000 };
    nanosleep(&ts, NULL);
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t mid = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    ts = (struct timespec){ 0, 3000000 };
    nanosleep(&ts, NULL);
    append_range(s, 300, 400);
    store_cursor *c;
    cr_assert_eq(store_cursor_open_at(s, mid, &c), STORE_OK);
    store_record r;
    cr_assert_eq(store_cursor_next(c, &r, 0), STORE_OK);
    cr_expect_eq(r.offset, 300);
    store_cursor_close(c);
    cr_assert_eq(store_cursor_open_at(s, 0, &c), STORE_OK);
    cr_assert_eq(store_cursor_next(c, &r, 0), STORE_OK);
    cr_expect_eq(r.offset, 0);
    store_cursor_close(c);
    cr_assert_eq(store_cursor_open_at(s, INT64_MAX, &c), STORE_OK);
    cr_expect_eq(store_cursor_next(c, &r, 0), STORE_TIMEOUT, "nothing is that recent");
    store_cursor_close(c);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* ---- concurrency: waiting readers, many writers, group commit ------------------------------- */

typedef struct {
    store *s;
    uint64_t n;      /* records to read */
    bool ok;
    char why[200];
} reader_arg;

static void *reader(void *arg)
{
    reader_arg *a = arg;
    store_cursor *c;
    store_cursor_open(a->s, 0, &c);
    a->ok = true;
    for (uint64_t i = 0; i < a->n && a->ok; i++) {
        store_record r;
        store_status st = store_cursor_next(c, &r, 10000);
        if (st != STORE_OK || r.offset != i || r.len < 8) {
            snprintf(a->why, sizeof a->why, "record %" PRIu64 ": status %d offset %" PRIu64, i, st, r.offset);
            a->ok = false;
            break;
        }
        /* a writer's record: "w<thread> <seq>" padded, its own length in the flags */
        if (r.flags != r.len) {
            snprintf(a->why, sizeof a->why, "record %" PRIu64 ": torn (len %u flags %u)", i, r.len, r.flags);
            a->ok = false;
        }
    }
    store_cursor_close(c);
    return NULL;
}

typedef struct {
    store *s;
    int id, count;
} writer_arg;

static void *writer(void *arg)
{
    writer_arg *w = arg;
    char buf[1024];
    for (int i = 0; i < w->count; i++) {
        size_t n = 8 + (size_t)((w->id * 31 + i * 17) % 1000);
        memset(buf, 'a' + w->id, n);
        snprintf(buf, 8, "w%d", w->id);
        store_entry e = { buf, (uint32_t)n, (uint32_t)n, NULL };
        uint64_t first;
        if (store_append(w->s, &e, 1, &first) != STORE_OK)
            return (void *)1;
    }
    return NULL;
}

static void run_writers_and_readers(store_fsync f, int nwriters, int per_writer, log_stats *st)
{
    char *d = new_dir();
    store *s = open_log(d, f, 65536);
    reader_arg ra[3];
    pthread_t rt[3], wt[16];
    writer_arg wa[16];
    uint64_t total = (uint64_t)nwriters * (uint64_t)per_writer;
    for (int i = 0; i < 3; i++) {
        ra[i] = (reader_arg){ .s = s, .n = total };
        pthread_create(&rt[i], NULL, reader, &ra[i]);
    }
    for (int i = 0; i < nwriters; i++) {
        wa[i] = (writer_arg){ s, i, per_writer };
        pthread_create(&wt[i], NULL, writer, &wa[i]);
    }
    for (int i = 0; i < nwriters; i++) {
        void *rv;
        pthread_join(wt[i], &rv);
        cr_expect_null(rv, "writer %d failed: %s", i, store_error(s));
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(rt[i], NULL);
        cr_expect(ra[i].ok, "reader %d: %s", i, ra[i].why);
    }
    log_get_stats(s, st);
    cr_expect_eq(st->next, total);
    store_close(s);
    remove_dir(d);
    free(d);
}

Test(log, readers_wait_and_see_every_record_of_many_writers_in_order, .timeout = 60)
{
    log_stats st;
    run_writers_and_readers(STORE_FSYNC_NEVER, 8, 2000, &st);
    cr_expect_eq(st.fsyncs, 0, "fsync never syncs nothing");
}

Test(log, fsync_always_commits_groups_with_one_sync_each, .timeout = 60)
{
    log_stats st;
    run_writers_and_readers(STORE_FSYNC_ALWAYS, 8, 200, &st);
    cr_expect_eq(st.durable, 1600);
    cr_expect_lt(st.fsyncs, 1600, "eight writers at once must share syncs: %" PRIu64 " syncs", st.fsyncs);
}

/* The contract in numbers: under always an append returns with its records synced; under
 * interval they are synced within the interval (plus the sync's own time). */
Test(log, the_fsync_contract_holds_at_every_acknowledgement, .timeout = 60)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_ALWAYS, 16384);
    char buf[300];
    for (uint64_t i = 0; i < 200; i++) {
        store_entry e = { buf, (uint32_t)payload(i, buf), 0, NULL };
        uint64_t first;
        cr_assert_eq(store_append(s, &e, 1, &first), STORE_OK);
        log_stats st;
        log_get_stats(s, &st);
        cr_assert_geq(st.durable, first + 1, "acknowledged before it was synced");
    }
    store_close(s);
    remove_dir(d);

    store_options o = { .fsync = STORE_FSYNC_INTERVAL, .fsync_interval_ns = 10000000, .report = collect };
    char err[300];
    cr_assert_eq(log_open(d, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    for (uint64_t i = 0; i < 200; i++) {
        store_entry e = { buf, (uint32_t)payload(i, buf), 0, NULL };
        uint64_t first;
        cr_assert_eq(store_append(s, &e, 1, &first), STORE_OK);
        log_stats st;
        log_get_stats(s, &st);
        cr_assert_geq(st.written, first + 1, "acknowledged before it was written");
    }
    log_stats st;
    for (int k = 0; k < 200; k++) {    /* 10 ms interval: synced within 2 s even on a busy box */
        log_get_stats(s, &st);
        if (st.durable == 200)
            break;
        struct timespec ts = { 0, 10000000 };
        nanosleep(&ts, NULL);
    }
    cr_expect_eq(st.durable, 200, "interval: not synced in time (%" PRIu64 ")", st.durable);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* store_wake: a reader waiting for a record returns STORE_TIMEOUT at once (the daemon's router
 * waits a second at a time and must not make a reload wait that long); a wake that comes while
 * the reader is not waiting is answered by its next wait; records still come first. */
typedef struct {
    store_cursor *c;
    store_status st;
} waiter;

static void *wait_long(void *arg)
{
    waiter *w = arg;
    store_record r;
    w->st = store_cursor_next(w->c, &r, 600000);     /* ten minutes: only a wake ends it */
    return NULL;
}

Test(log, store_wake_ends_a_readers_wait, .timeout = 120)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 16384);
    waiter w = { .st = STORE_OK };
    cr_assert_eq(store_cursor_open(s, 0, &w.c), STORE_OK);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, wait_long, &w), 0);
    struct timespec ts = { 0, 100000000 };
    nanosleep(&ts, NULL);
    store_wake(s);
    pthread_join(th, NULL);
    cr_expect_eq(w.st, STORE_TIMEOUT, "a woken wait returns STORE_TIMEOUT, not %d", w.st);
    /* a wake before the call: the next wait returns at once */
    store_wake(s);
    wait_long(&w);
    cr_expect_eq(w.st, STORE_TIMEOUT);
    /* answered once: the next wait waits (for its timeout), and a record is read first */
    store_record r;
    cr_expect_eq(store_cursor_next(w.c, &r, 50), STORE_TIMEOUT);
    char buf[300];
    store_entry e = { buf, (uint32_t)payload(1, buf), 0, NULL };
    uint64_t first;
    cr_assert_eq(store_append(s, &e, 1, &first), STORE_OK);
    store_wake(s);
    cr_expect_eq(store_cursor_next(w.c, &r, 600000), STORE_OK);
    store_cursor_close(w.c);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* ---- retention ---------------------------------------------------------------------------- */

Test(log, retention_by_size_deletes_whole_segments_and_tells_cursors)
{
    char *d = new_dir();
    store_options o = { .fsync = STORE_FSYNC_NEVER, .segment_bytes = 4096,
                        .retention_bytes = 16384, .report = collect };
    store *s;
    char err[300];
    cr_assert_eq(log_open(d, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    store_cursor *c;
    cr_assert_eq(store_cursor_open(s, 0, &c), STORE_OK);
    append_range(s, 0, 500);
    unsigned deleted;
    cr_assert_eq(store_retain(s, 0, &deleted), STORE_OK);
    cr_expect_gt(deleted, 0);
    log_stats st;
    log_get_stats(s, &st);
    cr_expect_leq(st.bytes, 16384 + 4096, "%" PRIu64 " bytes kept", st.bytes);
    cr_expect_gt(st.first, 0);
    cr_expect(strstr(reports, "deleted by retention (size)"), "%s", reports);
    store_record r;
    cr_expect_eq(store_cursor_next(c, &r, 0), STORE_BEHIND);
    cr_expect(strstr(store_cursor_error(c), "was deleted by retention"), "%s", store_cursor_error(c));
    cr_assert_eq(store_cursor_seek(c, st.first), STORE_OK);
    cr_assert_eq(store_cursor_next(c, &r, 0), STORE_OK);
    cr_expect_eq(r.offset, st.first);
    store_cursor_close(c);
    expect_range(s, st.first, 500);
    store_close(s);
    /* What retention deleted stays deleted, and the rest reopens. */
    s = open_log(d, STORE_FSYNC_NEVER, 4096);
    expect_range(s, st.first, 500);
    store_close(s);
    remove_dir(d);
    free(d);
}

Test(log, retention_by_age_deletes_everything_older_even_the_last_segment)
{
    char *d = new_dir();
    store_options o = { .fsync = STORE_FSYNC_NEVER, .segment_bytes = 4096,
                        .retention_ns = 3600ull * 1000000000, .report = collect };
    store *s;
    char err[300];
    cr_assert_eq(log_open(d, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    append_range(s, 0, 100);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    unsigned deleted;
    cr_assert_eq(store_retain(s, now, &deleted), STORE_OK);
    cr_expect_eq(deleted, 0, "nothing is an hour old yet");
    cr_assert_eq(store_retain(s, now + 3601ll * 1000000000, &deleted), STORE_OK);
    cr_expect_gt(deleted, 0);
    uint64_t first, next;
    store_bounds(s, &first, &next);
    cr_expect_eq(first, 100, "every record expired");
    cr_expect_eq(next, 100);
    append_range(s, 100, 110);
    expect_range(s, 100, 110);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* ---- named cursors ------------------------------------------------------------------------ */

Test(log, named_cursors_persist_atomically)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    uint64_t off;
    cr_expect_eq(store_committed(s, "orders.billing", &off), STORE_NOTFOUND);
    cr_expect_eq(store_commit(s, "orders.billing", 42), STORE_OK);
    cr_expect_eq(store_commit(s, "orders.billing", 43), STORE_OK);
    cr_expect_eq(store_commit(s, "audit", 7), STORE_OK);
    cr_expect_eq(store_commit(s, "../escape", 1), STORE_EINVAL);
    cr_expect_eq(store_commit(s, ".hidden", 1), STORE_EINVAL);
    cr_expect_eq(store_commit(s, "", 1), STORE_EINVAL);
    store_close(s);
    s = open_log(d, STORE_FSYNC_NEVER, 0);
    cr_assert_eq(store_committed(s, "orders.billing", &off), STORE_OK);
    cr_expect_eq(off, 43);
    cr_assert_eq(store_committed(s, "audit", &off), STORE_OK);
    cr_expect_eq(off, 7);
    char path[300];
    snprintf(path, sizeof path, "%s/cursors/audit", d);
    write_file(path, "ebr-cursor 1 8 00000000\n", 24);
    cr_expect_eq(store_committed(s, "audit", &off), STORE_CORRUPT, "a damaged cursor file is refused");
    snprintf(path, sizeof path, "%s/cursors/orders.billing.tmp", d);
    cr_expect_neq(access(path, F_OK), 0, "no temporary file is left");
    store_close(s);
    remove_dir(d);
    free(d);
}

/* ---- recovery: torn and corrupted files, written on purpose ------------------------------- */

/* A log of n records in one segment; returns the segment's bytes and each record's end. */
static char *one_segment(const char *d, uint64_t n, size_t *size, uint64_t *ends)
{
    store *s = open_log(d, STORE_FSYNC_NEVER, 1 << 20);
    for (uint64_t i = 0; i < n; i++) {
        append_range(s, i, i + 1);
        log_stats st;
        log_get_stats(s, &st);
        ends[i] = st.bytes;
    }
    store_close(s);
    char path[300];
    snprintf(path, sizeof path, "%s/00000000000000000000.seg", d);
    return read_file(path, size);
}

Test(log, a_torn_tail_is_truncated_at_every_cut_and_nothing_before_it_is_lost, .timeout = 600)
{
    char *d = new_dir();
    uint64_t ends[40];
    size_t size;
    char *seg = one_segment(d, 40, &size, ends);
    char path[300];
    snprintf(path, sizeof path, "%s/00000000000000000000.seg", d);
    int cuts = 0;
    for (size_t cut = 0; cut < size; cut += 5, cuts++) {
        write_file(path, seg, cut);
        reports[0] = 0;
        store *s = open_log(d, STORE_FSYNC_NEVER, 1 << 20);
        uint64_t whole = 0;
        while (whole < 40 && ends[whole] <= cut)
            whole++;
        uint64_t first, next;
        store_bounds(s, &first, &next);
        cr_assert_eq(next, whole, "cut at %zu: %" PRIu64 " records, expected %" PRIu64, cut, next, whole);
        expect_range(s, 0, whole);
        bool torn = cut >= 32 && (whole == 0 ? cut > 32 : ends[whole - 1] != cut);
        if (torn)
            cr_assert(strstr(reports, "truncated a torn tail"), "cut at %zu: not reported: %s", cut, reports);
        /* the log takes appends where it was cut, and keeps them */
        append_range(s, whole, whole + 1);
        store_close(s);
        cr_assert_eq(file_size(path), (whole ? ends[whole - 1] : 32) + 32 + payload(whole, (char[300]){ 0 }));
    }
    cr_expect_gt(cuts, 100);
    free(seg);
    remove_dir(d);
    free(d);
}

Test(log, a_flipped_byte_is_reported_with_its_position_and_skipped_past, .timeout = 600)
{
    char *d = new_dir();
    uint64_t ends[30];
    size_t size;
    char *seg = one_segment(d, 30, &size, ends);
    char path[300];
    snprintf(path, sizeof path, "%s/00000000000000000000.seg", d);
    for (size_t at = 32; at < size; at += 3) {
        seg[at] ^= 0x20;
        write_file(path, seg, size);
        seg[at] ^= 0x20;
        reports[0] = 0;
        uint64_t k = 0;     /* the damaged record */
        while (ends[k] <= at)
            k++;
        uint64_t start = k ? ends[k - 1] : 32;
        store *s = open_log(d, STORE_FSYNC_NEVER, 1 << 20);
        uint64_t first, next;
        store_bounds(s, &first, &next);
        if (k == 29) {
            /* The last record: a corrupt tail, truncated. */
            cr_assert_eq(next, 29, "flip at %zu", at);
            cr_assert(strstr(reports, "truncated a torn tail"), "flip at %zu: %s", at, reports);
            expect_range(s, 0, 29);
        } else {
            /* Good records follow: nothing is truncated; the damage is reported where it is. */
            cr_assert_eq(next, 30, "flip at %zu", at);
            char want[80];
            snprintf(want, sizeof want, "position %" PRIu64 ": corrupt record", start);
            cr_assert(strstr(reports, want), "flip at %zu: %s", at, reports);
            store_cursor *c;
            store_cursor_open(s, 0, &c);
            store_record r;
            for (uint64_t i = 0; i < k; i++)
                cr_assert_eq(store_cursor_next(c, &r, 0), STORE_OK);
            cr_assert_eq(store_cursor_next(c, &r, 0), STORE_CORRUPT, "flip at %zu", at);
            cr_assert(strstr(store_cursor_error(c), want + 0), "%s", store_cursor_error(c));
            uint64_t lost;
            cr_assert_eq(store_cursor_skip(c, &lost), STORE_OK, "%s", store_cursor_error(c));
            cr_expect_eq(lost, 1);
            for (uint64_t i = k + 1; i < 30; i++) {
                cr_assert_eq(store_cursor_next(c, &r, 0), STORE_OK, "%s", store_cursor_error(c));
                cr_assert_eq(r.offset, i);
            }
            store_cursor_close(c);
            char err[300];
            char saved[sizeof reports];
            memcpy(saved, reports, sizeof reports);
            reports[0] = 0;
            store_close(s);
            s = NULL;
            cr_expect_eq(log_check(d, false, collect, NULL, err, sizeof err), 1, "%s", reports);
        }
        if (s)
            store_close(s);
        write_file(path, seg, size);   /* whole again for the next round */
    }
    free(seg);
    remove_dir(d);
    free(d);
}

Test(log, damage_in_a_sealed_segment_is_reported_by_readers_and_check)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 4096);
    append_range(s, 0, 200);
    store_close(s);
    char path[300];
    snprintf(path, sizeof path, "%s/00000000000000000000.seg", d);
    size_t n;
    char *b = read_file(path, &n);
    b[100] ^= 1;
    write_file(path, b, n);
    free(b);
    reports[0] = 0;
    s = open_log(d, STORE_FSYNC_NEVER, 4096);
    store_cursor *c;
    store_cursor_open(s, 0, &c);
    store_record r;
    store_status st;
    uint64_t seen = 0, lost_total = 0;
    while ((st = store_cursor_next(c, &r, 0)) != STORE_TIMEOUT) {
        if (st == STORE_CORRUPT) {
            cr_expect(strstr(store_cursor_error(c), "00000000000000000000.seg: position"), "%s", store_cursor_error(c));
            uint64_t lost;
            cr_assert_eq(store_cursor_skip(c, &lost), STORE_OK);
            lost_total += lost;
            continue;
        }
        cr_assert_eq(st, STORE_OK);
        seen++;
    }
    cr_expect_eq(lost_total, 1);
    cr_expect_eq(seen, 199);
    store_cursor_close(c);
    store_close(s);
    char err[300];
    reports[0] = 0;
    long problems = log_check(d, false, collect, NULL, err, sizeof err);
    cr_expect_geq(problems, 1, "%s", reports);
    cr_expect(strstr(reports, "00000000000000000000.seg: position"), "%s", reports);
    remove_dir(d);
    free(d);
}

Test(log, damaged_indexes_and_a_cut_short_segment_header_are_rebuilt)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 4096);
    append_range(s, 0, 100);
    log_stats st;
    log_get_stats(s, &st);
    store_close(s);
    char path[300];
    snprintf(path, sizeof path, "%s/00000000000000000000.idx", d);
    write_file(path, "garbage", 7);
    /* a segment whose creation a crash cut short, after the last one */
    snprintf(path, sizeof path, "%s/%020" PRIu64 ".seg", d, st.next);
    write_file(path, "EBRLO", 5);
    reports[0] = 0;
    s = open_log(d, STORE_FSYNC_NEVER, 4096);
    cr_expect(strstr(reports, "header cut short"), "%s", reports);
    expect_range(s, 0, 100);
    append_range(s, 100, 120);
    expect_range(s, 0, 120);
    store_close(s);
    char err[300];
    reports[0] = 0;
    cr_expect_eq(log_check(d, false, collect, NULL, err, sizeof err), 0, "%s", reports);
    remove_dir(d);
    free(d);
}

Test(log, check_reports_a_torn_tail_and_fix_truncates_it)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    append_range(s, 0, 10);
    store_close(s);
    char path[300];
    snprintf(path, sizeof path, "%s/00000000000000000000.seg", d);
    FILE *f = fopen(path, "ab");
    fwrite("\x10\x20\x30", 1, 3, f);
    fclose(f);
    char err[300];
    reports[0] = 0;
    cr_expect_eq(log_check(d, false, collect, NULL, err, sizeof err), 1);
    cr_expect(strstr(reports, "3 bytes after the last record hold no whole record"), "%s", reports);
    cr_expect(strstr(reports, "torn tail"), "%s", reports);
    reports[0] = 0;
    cr_expect_eq(log_check(d, true, collect, NULL, err, sizeof err), 0, "%s", reports);
    cr_expect(strstr(reports, "truncated a torn tail"), "%s", reports);
    cr_expect_eq(log_check("/nonexistent/ebr", false, collect, NULL, err, sizeof err), -1);
    cr_expect(strstr(err, "cannot open"), "%s", err);
    /* --fix repairs a log; it never makes one where there was none */
    char none[600];
    snprintf(none, sizeof none, "%s/cursors", d);
    cr_expect_eq(log_check(none, true, collect, NULL, err, sizeof err), -1);
    cr_expect(strstr(err, "not a bus log"), "%s", err);
    snprintf(none, sizeof none, "%s/no-such-log", d);
    cr_expect_eq(log_check(none, true, collect, NULL, err, sizeof err), -1);
    cr_expect(access(none, F_OK) != 0, "--fix created %s", none);
    remove_dir(d);
    free(d);
}

/* Runs an ebc command line; returns its exit status, its standard output in out. */
static int run_ebc(const char *args, char *out, size_t cap)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s %s", EBR_EBC, args);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* `ebc log dump` of a log whose first segments retention deleted: by default from the first
 * record kept (status 0); from an offset deleted, a message and the records kept (status 5). */
Test(log, ebc_log_dump_after_retention)
{
    char *d = new_dir();
    store_options o = { .fsync = STORE_FSYNC_NEVER, .segment_bytes = 4096,
                        .retention_bytes = 8192, .report = collect };
    store *s;
    char err[300], args[600], out[1 << 16];
    cr_assert_eq(log_open(d, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    append_range(s, 0, 200);
    unsigned deleted;
    cr_assert_eq(store_retain(s, 0, &deleted), STORE_OK);
    uint64_t first, next;
    store_bounds(s, &first, &next);
    store_close(s);
    cr_assert_gt(first, 0);
    char want[64];
    snprintf(want, sizeof want, "%" PRIu64 " ", first);
    snprintf(args, sizeof args, "log dump %s", d);
    cr_expect_eq(run_ebc(args, out, sizeof out), 0);
    cr_expect(strncmp(out, want, strlen(want)) == 0, "starts with '%.40s'", out);
    snprintf(args, sizeof args, "log dump %s --from 0 2>&1", d);
    cr_expect_eq(run_ebc(args, out, sizeof out), 5);
    cr_expect(strstr(out, "offset 0 was deleted by retention"), "%.200s", out);
    cr_expect(strstr(out, want), "the records kept follow");
    snprintf(args, sizeof args, "log dump %s --from 0 --since 2026-11-26T10:00:00Z 2>/dev/null", d);
    cr_expect_eq(run_ebc(args, out, sizeof out), 2, "--from and --since together");
    remove_dir(d);
    free(d);
}

/* `ebc log dump` and `ebc log check` on a real log. */
Test(log, ebc_log_dump_and_check)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    store_entry e[4] = { { "{\"id\":\"a\",\"n\":1}", 16, 0, NULL }, { "plain \"text\"\n", 13, 7, NULL },
                         { "[1,2]", 5, 0, NULL }, { "{\r\n \"b\": 2\n}\n", 13, 0, NULL } };
    cr_assert_eq(store_append(s, e, 4, NULL), STORE_OK);
    store_close(s);
    char cmd[600], out[4096];
    snprintf(cmd, sizeof cmd, "%s log dump %s --json --from 0", EBR_EBC, d);
    FILE *p = popen(cmd, "r");
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    cr_expect_eq(pclose(p), 0);
    cr_expect(strstr(out, "{\"offset\":0,\"time\":\""), "%s", out);
    cr_expect(strstr(out, "\",\"flags\":0,\"len\":16,\"payload\":{\"id\":\"a\",\"n\":1}}\n"), "%s", out);
    cr_expect(strstr(out, "\"flags\":7,\"len\":13,\"payload\":\"plain \\\"text\\\"\\n\"}\n"), "%s", out);
    cr_expect(strstr(out, "\"len\":13,\"payload\":{   \"b\": 2 } }\n"), "JSON on lines, as JSON on one: %s", out);
    snprintf(cmd, sizeof cmd, "%s log dump %s --from 2", EBR_EBC, d);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    cr_expect_eq(pclose(p), 0);
    cr_expect(strstr(out, "2 ") == out && strstr(out, "Z flags=0x0 len=5 [1,2]\n"), "%s", out);
    cr_expect(strstr(out, "Z flags=0x0 len=13 \"{\\r\\n \\\"b\\\": 2\\n}\\n\"\n"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s log check %s", EBR_EBC, d);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    cr_expect_eq(pclose(p), 0, "%s", out);
    cr_expect(strstr(out, ": 1 segments, 4 records"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s log check /nonexistent/x 2>/dev/null", EBR_EBC);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof out - 1, p);
    int status = pclose(p);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 3, "status %d", status);
    remove_dir(d);
    free(d);
}

/* ---- a writer killed mid-append ------------------------------------------------------------ */

typedef struct {
    uint64_t first;
    uint32_t thread, seq, n;
} ack;

/* Payload of record k of append seq by thread t: says what it is, then filler. */
static size_t crash_payload(uint32_t t, uint32_t seq, uint32_t k, char *buf)
{
    size_t n = 24 + (t * 131 + seq * 17 + k * 7) % 1000;
    for (size_t j = 0; j < n; j++)
        buf[j] = (char)('a' + (seq + j) % 26);
    memcpy(buf, &t, 4);
    memcpy(buf + 4, &seq, 4);
    memcpy(buf + 8, &k, 4);
    return n;
}

typedef struct {
    store *s;
    int pipe;
    uint32_t t;
} crash_writer;

static void *crash_thread(void *arg)
{
    crash_writer *w = arg;
    static __thread char bufs[4][1100];
    for (uint32_t seq = 0;; seq++) {
        store_entry e[4];
        uint32_t n = 1 + seq % 4;
        for (uint32_t k = 0; k < n; k++) {
            e[k].len = (uint32_t)crash_payload(w->t, seq, k, bufs[k]);
            e[k].data = bufs[k];
            e[k].flags = 0;
        }
        ack a = { 0, w->t, seq, n };
        uint64_t offs[4];
        if (store_append(w->s, e, n, offs) != STORE_OK)
            _exit(3);
        a.first = offs[0];
        if (write(w->pipe, &a, sizeof a) != sizeof a)   /* atomic: less than PIPE_BUF */
            _exit(4);
    }
    return NULL;
}

static void crash_child(const char *dir, int pipe, store_fsync f)
{
    store_options o = { .fsync = f, .segment_bytes = 65536 };
    store *s;
    char err[300];
    if (log_open(dir, &o, &s, err, sizeof err) != STORE_OK)
        _exit(2);
    pthread_t th[4];
    crash_writer w[4];
    for (uint32_t t = 0; t < 4; t++) {
        w[t] = (crash_writer){ s, pipe, t };
        pthread_create(&th[t], NULL, crash_thread, &w[t]);
    }
    for (;;)
        pause();
}

Test(log_crash, every_acknowledged_record_survives_sigkill, .timeout = 3600)
{
    const char *env = getenv("EBR_CRASH_ROUNDS");
    int rounds = env ? atoi(env) : 20;
    char *d = new_dir();
    unsigned seed = 12345;
    uint64_t total_acked = 0;
    for (int round = 0; round < rounds; round++) {
        store_fsync f = (store_fsync)(round % 3);
        int fds[2];
        cr_assert_eq(pipe(fds), 0);
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            crash_child(d, fds[1], f);
        }
        close(fds[1]);
        /* Let it acknowledge a random number of appends, then kill it mid-stream. */
        int want = 1 + (int)(rand_r(&seed) % 400);
        size_t cap = 1024, n = 0;
        ack *acks = malloc(cap * sizeof *acks);
        while ((int)n < want) {
            ssize_t r = read(fds[0], &acks[n], sizeof *acks);
            cr_assert_eq(r, (ssize_t)sizeof *acks, "round %d: the writer died early", round);
            if (++n == cap)
                acks = realloc(acks, (cap *= 2) * sizeof *acks);
        }
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        cr_assert(WIFSIGNALED(status), "round %d: writer exited with %d", round, WEXITSTATUS(status));
        for (;;) {    /* acknowledgements still in the pipe count too */
            ssize_t r = read(fds[0], &acks[n], sizeof *acks);
            if (r <= 0)
                break;
            cr_assert_eq(r, (ssize_t)sizeof *acks);
            if (++n == cap)
                acks = realloc(acks, (cap *= 2) * sizeof *acks);
        }
        close(fds[0]);
        /* Recover, then every acknowledged record must be there, intact. */
        reports[0] = 0;
        store *s = open_log(d, STORE_FSYNC_NEVER, 65536);
        uint64_t first, next;
        store_bounds(s, &first, &next);
        store_cursor *c;
        char want_buf[1100];
        for (size_t i = 0; i < n; i++) {
            for (uint32_t k = 0; k < acks[i].n; k++) {
                uint64_t off = acks[i].first + k;
                cr_assert_lt(off, next, "round %d (%d): acknowledged offset %" PRIu64 " lost (log ends at %" PRIu64 ")\n%s",
                             round, f, off, next, reports);
                cr_assert_eq(store_cursor_open(s, off, &c), STORE_OK);
                store_record r;
                store_status st = store_cursor_next(c, &r, 0);
                cr_assert_eq(st, STORE_OK, "round %d: offset %" PRIu64 ": %s", round, off, store_cursor_error(c));
                size_t len = crash_payload(acks[i].thread, acks[i].seq, k, want_buf);
                cr_assert(r.len == len && memcmp(r.data, want_buf, len) == 0,
                          "round %d: offset %" PRIu64 " is not what was acknowledged", round, off);
                store_cursor_close(c);
            }
        }
        /* and the whole log reads clean */
        cr_assert_eq(store_cursor_open(s, 0, &c), STORE_OK);
        store_record r;
        uint64_t count = 0;
        store_status st;
        while ((st = store_cursor_next(c, &r, 0)) == STORE_OK)
            count++;
        cr_assert_eq(st, STORE_TIMEOUT, "round %d: %s", round, store_cursor_error(c));
        cr_assert_eq(count, next);
        store_cursor_close(c);
        store_close(s);
        total_acked += n;
        free(acks);
    }
    cr_log_info("%d rounds, %" PRIu64 " acknowledged appends checked", rounds, total_acked);
    remove_dir(d);
    free(d);
}

/* ---- a bus's options in the rules file ------------------------------------------------------ */

#include "../../compiler/compiler.h"

Test(log, a_bus_declares_its_storage_options)
{
    const char src[] = "bus a {\n  fsync interval 10ms\n  segment_size 8MiB\n  retention 7d\n  retention_size 1GiB\n}\n"
                       "bus b { fsync never }\nbus c\n";
    vm_program *p = cc_compile_text("t.ebr", src, sizeof src - 1, stderr, NULL);
    cr_assert_not_null(p);
    store_options o;
    rt_bus_store_options(p, 0, &o);
    cr_expect_eq(o.fsync, STORE_FSYNC_INTERVAL);
    cr_expect_eq(o.fsync_interval_ns, 10000000);
    cr_expect_eq(o.segment_bytes, 8u << 20);
    cr_expect_eq(o.retention_ns, 7ull * 86400 * 1000000000);
    cr_expect_eq(o.retention_bytes, 1ull << 30);
    rt_bus_store_options(p, 1, &o);
    cr_expect_eq(o.fsync, STORE_FSYNC_NEVER);
    rt_bus_store_options(p, 2, &o);
    cr_expect_eq(o.fsync, STORE_FSYNC_ALWAYS, "the default is always");
    cr_expect_eq(o.retention_ns, 0);
    vm_program_free(p);
}

/* ---- what the review of the log found --------------------------------------------------------- */

typedef struct {
    store *s;
    _Atomic int *done;
    store_status st;
} one_append;

static void *append_once(void *arg)
{
    one_append *a = arg;
    static char buf[64 * 1024];
    store_entry e[16];
    for (int i = 0; i < 16; i++)
        e[i] = (store_entry){ buf, sizeof buf, 0, NULL };
    a->st = store_append(a->s, e, 16, NULL);
    (*a->done)++;
    return NULL;
}

/* store_close waits for the appends inside store_append to come out (ASan would see the log
 * freed under them otherwise). */
Test(log, close_waits_for_appends_in_flight, .timeout = 60)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_ALWAYS, 1 << 20);
    _Atomic int done = 0;
    one_append a[16];
    pthread_t t[16];
    for (int i = 0; i < 16; i++) {
        a[i] = (one_append){ s, &done, STORE_EIO };
        pthread_create(&t[i], NULL, append_once, &a[i]);
    }
    for (;;) {     /* every thread is inside store_append or out of it */
        log_stats st;
        log_get_stats(s, &st);
        if ((int)st.appending + done == 16)
            break;
    }
    store_close(s);
    for (int i = 0; i < 16; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(a[i].st, STORE_OK, "an append in flight at close was not finished");
    }
    s = open_log(d, STORE_FSYNC_NEVER, 1 << 20);
    uint64_t first, next;
    store_bounds(s, &first, &next);
    cr_expect_eq(next, 256);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* ---- failed writes and syncs: the log recovers by itself ---------------------------------- */

static double mono_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Appends record `from` (payload(from)) as soon as the log takes it again, within a generous
 * deadline (the log retries at most every 100 ms to 1 s), expecting offset `from`: the failed
 * append's records were dropped.  Then the rest up to `to`. */
static void append_when_recovered(store *s, uint64_t from, uint64_t to)
{
    char buf[300];
    store_entry e = { buf, (uint32_t)payload(from, buf), (uint32_t)from, NULL };
    uint64_t first = UINT64_MAX;
    store_status st = STORE_EIO;
    for (double end = mono_s() + 60; st != STORE_OK && mono_s() < end;) {
        st = store_append(s, &e, 1, &first);
        if (st != STORE_OK) {
            cr_assert_eq(st, STORE_EIO, "status %d: %s", st, store_error(s));
            struct timespec ts = { 0, 10000000 };
            nanosleep(&ts, NULL);
        }
    }
    cr_assert_eq(st, STORE_OK, "the log did not recover: %s", store_error(s));
    cr_assert_eq(first, from, "the records of the failed append were kept (next offset %" PRIu64 ")",
                 first);
    char why[300];
    cr_expect(store_health(s, why, sizeof why), "recovered, yet unhealthy: %s", why);
    append_range(s, from + 1, to);
}

/* A fault plan for log_set_fault: fail operation `op` with `err` the next `times` times it is
 * called; `peek`, when set, is read to its end at the first failure, while the failing batch's
 * records are in the file but not acknowledged. */
typedef struct {
    const char *op;
    int err;
    _Atomic int times;
    _Atomic int failed, calls, writes;
    _Atomic int writes_at_failure;  /* writes when the first failure was injected */
    double at[16];                  /* when each failure was injected */
    _Atomic bool hold;              /* the failing call waits while this is set */
    store_cursor *peek;
    uint64_t peeked;                /* records peek read */
} fault_plan;

static int inject(void *arg, const char *op)
{
    fault_plan *f = arg;
    if (!strcmp(op, "write"))
        f->writes++;
    if (strcmp(op, f->op) != 0)
        return 0;
    f->calls++;
    if (f->times <= 0)
        return 0;
    f->times--;
    while (f->hold) {
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    if (f->failed == 0)
        f->writes_at_failure = f->writes;
    int k = f->failed++;
    if (k < 16)
        f->at[k] = mono_s();
    if (f->peek && k == 0) {
        store_record r;
        while (store_cursor_next(f->peek, &r, 0) == STORE_OK)
            f->peeked++;
    }
    return f->err;
}

/* The disk fills (the file size limit, which makes a write stop part-way as a full disk does):
 * the append is refused, health says why, and once there is room again the log takes appends
 * without a reopen: the torn record is gone, its offset is given to the next record, a reader
 * goes on, and the log reopens without a torn tail to truncate. */
Test(log, a_full_disk_is_recovered_from_without_a_reopen, .timeout = 120)
{
    signal(SIGXFSZ, SIG_IGN);
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_ALWAYS, 1 << 20);
    append_range(s, 0, 50);
    store_cursor *c;
    cr_assert_eq(store_cursor_open(s, 0, &c), STORE_OK);
    store_record r;
    for (uint64_t i = 0; i < 50; i++)
        cr_assert_eq(store_cursor_next(c, &r, 0), STORE_OK);
    char path[300];
    snprintf(path, sizeof path, "%s/00000000000000000000.seg", d);
    uint64_t size = file_size(path);
    struct rlimit old, tiny;
    getrlimit(RLIMIT_FSIZE, &old);
    tiny = (struct rlimit){ size + 100, old.rlim_max };
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &tiny), 0);
    static char big[1000];
    memset(big, 'X', sizeof big);
    store_entry e = { big, sizeof big, 0, NULL };
    uint64_t first;
    cr_assert_eq(store_append(s, &e, 1, &first), STORE_EIO);
    cr_expect_gt(file_size(path), size, "the write stopped part-way");
    char why[300];
    cr_expect_not(store_health(s, why, sizeof why));
    cr_expect(strstr(why, "File too large"), "health gives the cause: %s", why);
    cr_expect_eq(store_append(s, &e, 1, &first), STORE_EIO, "no room yet");
    /* A recovery attempt finds no room for the failed record: a disk still full is no recovery,
     * and health says so. */
    for (double end = mono_s() + 60; !strstr(why, "no room") && mono_s() < end;) {
        struct timespec ts = { 0, 5000000 };
        nanosleep(&ts, NULL);
        cr_assert_not(store_health(s, why, sizeof why), "recovered with the disk still full");
    }
    cr_expect(strstr(why, "recovering failed") && strstr(why, "no room for 4096 bytes yet"), "%s", why);
    cr_expect_eq(store_cursor_next(c, &r, 0), STORE_TIMEOUT, "readers see nothing of it");
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    append_when_recovered(s, 50, 60);
    for (uint64_t i = 50; i < 60; i++) {
        cr_assert_eq(store_cursor_next(c, &r, 0), STORE_OK, "%s", store_cursor_error(c));
        cr_expect_eq(r.offset, i);
        cr_expect_eq(r.flags, (uint32_t)i, "offset %" PRIu64 " is not the record appended there", i);
    }
    store_cursor_close(c);
    expect_range(s, 0, 60);
    cr_expect(strstr(reports, "recovered"), "the recovery is reported: %s", reports);
    store_close(s);
    reports[0] = 0;
    s = open_log(d, STORE_FSYNC_ALWAYS, 1 << 20);
    expect_range(s, 0, 60);
    store_close(s);
    cr_expect_eq(reports[0], 0, "the reopen found something to repair: %s", reports);
    char err[300];
    cr_expect_eq(log_check(d, false, collect, NULL, err, sizeof err), 0, "%s", reports);
    remove_dir(d);
    free(d);
}

/* A sync fails under fsync always: the batch it was to acknowledge is not, and is not kept.  A
 * reader that read ahead over that batch's bytes while it was in the file (peek, at the failure)
 * must not return them later in place of the records that take its offsets. */
Test(log, a_failed_sync_drops_the_batch_it_did_not_acknowledge, .timeout = 120)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_ALWAYS, 1 << 20);
    append_range(s, 0, 10);
    fault_plan f = { .op = "sync", .err = EIO, .times = 1 };
    cr_assert_eq(store_cursor_open(s, 0, &f.peek), STORE_OK);
    log_set_fault(s, inject, &f);
    static char never[200];
    memset(never, 'N', sizeof never);
    store_entry e[3] = { { never, 200, 0, NULL }, { never, 100, 0, NULL }, { never, 50, 0, NULL } };
    cr_assert_eq(store_append(s, e, 3, NULL), STORE_EIO);
    cr_expect_eq(f.peeked, 10, "the reader read the acknowledged records, and only those");
    char why[300];
    cr_expect_not(store_health(s, why, sizeof why));
    cr_expect(strstr(why, "fdatasync") && strstr(why, "Input/output error"), "%s", why);
    append_when_recovered(s, 10, 20);
    store_record r;
    for (uint64_t i = 10; i < 20; i++) {
        cr_assert_eq(store_cursor_next(f.peek, &r, 0), STORE_OK, "%s", store_cursor_error(f.peek));
        cr_expect_eq(r.offset, i);
        cr_expect(r.len == 0 || ((const char *)r.data)[0] != 'N', "offset %" PRIu64 ": a record "
                  "whose append failed, from bytes read ahead before the recovery", i);
        cr_expect_eq(r.flags, (uint32_t)i);
    }
    store_cursor_close(f.peek);
    expect_range(s, 0, 20);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* Under fsync interval a sync that fails comes after the records were acknowledged: they stay.
 * The log recovers with no append to prompt it (health turns good again), writing the records
 * acknowledged since the last good sync again before it syncs (a failed fsync may have left
 * the kernel's copy marked clean and never written). */
Test(log, a_failed_interval_sync_keeps_what_was_acknowledged, .timeout = 120)
{
    char *d = new_dir();
    store_options o = { .fsync = STORE_FSYNC_INTERVAL, .fsync_interval_ns = 10000000,
                        .report = collect };
    store *s;
    char err[300];
    cr_assert_eq(log_open(d, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    fault_plan f = { .op = "sync", .err = EIO, .times = 1 };
    log_set_fault(s, inject, &f);
    append_range(s, 0, 30);
    double end = mono_s() + 60;
    while (f.failed == 0 && mono_s() < end) {
        struct timespec ts = { 0, 5000000 };
        nanosleep(&ts, NULL);
    }
    cr_assert_eq(f.failed, 1, "the flusher never synced");
    /* Recovered: healthy, and all 30 durable again.  (Health alone tells nothing: it is still
     * good in the moment between the failing call and the log taking note of it; and the
     * records may be written again before this thread sees the failure, hence the count of
     * writes the fault took at the failure.) */
    char why[300] = "";
    log_stats st;
    log_get_stats(s, &st);
    while (!(store_health(s, why, sizeof why) && st.durable == 30) && mono_s() < end) {
        struct timespec ts = { 0, 5000000 };
        nanosleep(&ts, NULL);
        log_get_stats(s, &st);
    }
    cr_assert(store_health(s, why, sizeof why), "no recovery without appends: %s", why);
    cr_expect_eq(f.writes, f.writes_at_failure + 1, "the unsynced records were not written again");
    log_get_stats(s, &st);
    cr_expect_eq(st.next, 30);
    cr_expect_eq(st.durable, 30, "recovery syncs what it keeps");
    append_range(s, 30, 40);
    expect_range(s, 0, 40);
    store_close(s);
    s = open_log(d, STORE_FSYNC_NEVER, 0);
    expect_range(s, 0, 40);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* Megabytes acknowledged and not synced when a sync fails, one record larger than the 1 MiB
 * the rewrite works through at a time: all written again, piece by piece, and all kept. */
Test(log, a_failed_sync_writes_again_megabytes_acknowledged_since_the_last_sync, .timeout = 120)
{
    char *d = new_dir();
    store_options o = { .fsync = STORE_FSYNC_INTERVAL, .fsync_interval_ns = 10000000,
                        .report = collect };
    store *s;
    char err[300];
    cr_assert_eq(log_open(d, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    fault_plan f = { .op = "sync", .err = EIO, .times = 1, .hold = true };
    log_set_fault(s, inject, &f);
    static char big[3 << 20], rec[20000];
    uint64_t first;
    for (int i = 0; i < 120; i++) {
        memset(rec, 'a' + i % 26, sizeof rec);
        store_entry e = { rec, sizeof rec, (uint32_t)i, NULL };
        if (i == 60) {
            memset(big, 'B', sizeof big);
            e = (store_entry){ big, sizeof big, (uint32_t)i, NULL };
        }
        cr_assert_eq(store_append(s, &e, 1, &first), STORE_OK, "%s", store_error(s));
    }
    int writes = f.writes;
    f.hold = false;          /* the first sync, held since the first records, fails now */
    double end = mono_s() + 60;
    char why[300] = "";
    /* Recovered: the sync failed, and the log is healthy with all 120 durable again (health
     * alone is still good in the moment between the failing call and the log taking note of
     * it: waiting on it alone failed ~1 run in 10). */
    log_stats st;
    log_get_stats(s, &st);
    while (!(f.failed == 1 && store_health(s, why, sizeof why) && st.durable == 120) &&
           mono_s() < end) {
        struct timespec ts = { 0, 5000000 };
        nanosleep(&ts, NULL);
        log_get_stats(s, &st);
    }
    cr_assert(f.failed == 1 && store_health(s, why, sizeof why), "no recovery: %s", why);
    cr_expect_geq(f.writes - writes, 4, "5.3 MiB written again in pieces of 1 MiB or one record: "
                  "%d writes", f.writes - writes);
    log_get_stats(s, &st);
    cr_expect_eq(st.durable, 120);
    store_close(s);
    s = open_log(d, STORE_FSYNC_NEVER, 0);
    store_cursor *c;
    cr_assert_eq(store_cursor_open(s, 0, &c), STORE_OK);
    store_record r;
    for (uint32_t i = 0; i < 120; i++) {
        cr_assert_eq(store_cursor_next(c, &r, 0), STORE_OK, "%s", store_cursor_error(c));
        cr_assert_eq(r.flags, i);
        cr_assert_eq(r.len, i == 60 ? sizeof big : sizeof rec);
        cr_assert_eq(r.data[r.len - 1], i == 60 ? 'B' : 'a' + i % 26);
    }
    store_cursor_close(c);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* A recovery that fails is tried again later, no more often than every 100 ms, and health keeps
 * giving the cause meanwhile. */
Test(log, a_failed_recovery_is_tried_again_with_a_pause, .timeout = 120)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_ALWAYS, 1 << 20);
    append_range(s, 0, 5);
    fault_plan w = { .op = "write", .err = ENOSPC, .times = 1 };
    log_set_fault(s, inject, &w);
    static char rec[100];
    store_entry e = { rec, sizeof rec, 0, NULL };
    uint64_t first;
    cr_assert_eq(store_append(s, &e, 1, &first), STORE_EIO);
    char why[300];
    cr_expect_not(store_health(s, why, sizeof why));
    cr_expect(strstr(why, "No space left on device"), "%s", why);
    fault_plan t = { .op = "truncate", .err = EIO, .times = 3 };
    log_set_fault(s, inject, &t);
    append_when_recovered(s, 5, 10);
    cr_expect_eq(t.failed, 3);
    cr_expect_eq(t.calls, 4, "one attempt after the three that failed");
    for (int k = 1; k < 3; k++)
        cr_expect_geq(t.at[k] - t.at[k - 1], 0.1, "attempts %d and %d %.3f s apart", k - 1, k,
                      t.at[k] - t.at[k - 1]);
    expect_range(s, 0, 10);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* Closing a log that has not recovered yet leaves only acknowledged records for the next open. */
Test(log, a_close_before_recovery_leaves_only_what_was_acknowledged)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_ALWAYS, 1 << 20);
    append_range(s, 0, 5);
    fault_plan f = { .op = "sync", .err = EIO, .times = 1 };
    log_set_fault(s, inject, &f);
    store_entry e = { "never", 5, 0, NULL };
    uint64_t first;
    cr_assert_eq(store_append(s, &e, 1, &first), STORE_EIO);
    store_close(s);
    s = open_log(d, STORE_FSYNC_ALWAYS, 1 << 20);
    expect_range(s, 0, 5);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* A roll that fails (here: the file size limit) stops the log until it recovers by itself, and
 * leaves nothing that keeps it from opening again with every acknowledged record. */
Test(log, a_failed_roll_leaves_a_log_that_reopens)
{
    signal(SIGXFSZ, SIG_IGN);
    char *d = new_dir();
    store_options o = { .fsync = STORE_FSYNC_NEVER, .segment_bytes = 4096,
                        .retention_ns = 1, .report = collect };
    store *s;
    char err[300];
    cr_assert_eq(log_open(d, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    append_range(s, 0, 10);
    struct rlimit old, tiny;
    getrlimit(RLIMIT_FSIZE, &old);
    tiny = (struct rlimit){ 16, old.rlim_max };     /* the soft limit only: it can go back up */
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &tiny), 0);
    unsigned deleted;
    store_status st = store_retain(s, INT64_MAX, &deleted);
    cr_expect_eq(st, STORE_EIO);
    store_entry e = { "x", 1, 0, NULL };
    uint64_t first;
    cr_expect_eq(store_append(s, &e, 1, &first), STORE_EIO, "the log stops after a failed roll");
    cr_expect_not(store_health(s, NULL, 0));
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    append_when_recovered(s, 10, 11);
    store_close(s);
    s = open_log(d, STORE_FSYNC_NEVER, 4096);
    expect_range(s, 0, 11);
    append_range(s, 11, 20);
    expect_range(s, 0, 20);
    store_close(s);
    remove_dir(d);
    free(d);
}

typedef struct {
    store *s;
    int fails;
} committer;

static void *commit_many(void *arg)
{
    committer *c = arg;
    for (uint64_t i = 0; i < 200; i++)
        if (store_commit(c->s, "shared", i * 1000000007ull) != STORE_OK)
            c->fails++;
    return NULL;
}

Test(log, named_cursors_never_share_a_temporary_file, .timeout = 60)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    cr_assert_eq(store_commit(s, "a.tmp", 5), STORE_OK);
    cr_assert_eq(store_commit(s, "a", 6), STORE_OK);
    uint64_t off;
    cr_assert_eq(store_committed(s, "a.tmp", &off), STORE_OK, "committing 'a' took 'a.tmp' away");
    cr_expect_eq(off, 5);
    committer c[2] = { { s, 0 }, { s, 0 } };
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, commit_many, &c[i]);
    for (int k = 0; k < 200; k++) {
        store_status st = store_committed(s, "shared", &off);
        cr_expect(st == STORE_OK || st == STORE_NOTFOUND, "a reader saw a torn cursor (%d)", st);
        cr_expect(st != STORE_OK || off % 1000000007ull == 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(c[i].fails, 0);
    }
    store_close(s);
    remove_dir(d);
    free(d);
}

Test(log, named_cursors_carry_pending_offsets)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    uint64_t pend[3] = { 40, 7, 45 };
    cr_assert_eq(store_commit_pending(s, "w.t", 50, pend, 3), STORE_OK);
    uint64_t pend_bad[1] = { 50 };
    cr_expect_eq(store_commit_pending(s, "w.t", 50, pend_bad, 1), STORE_EINVAL, "pending must be below");
    store_close(s);
    s = open_log(d, STORE_FSYNC_NEVER, 0);
    uint64_t high, got[STORE_MAX_PENDING], low;
    size_t n;
    cr_assert_eq(store_committed_pending(s, "w.t", &high, got, &n), STORE_OK);
    cr_expect_eq(high, 50);
    cr_assert_eq(n, 3);
    cr_expect(got[0] == 7 && got[1] == 40 && got[2] == 45, "in increasing order");
    cr_assert_eq(store_committed(s, "w.t", &low), STORE_OK);
    cr_expect_eq(low, 7, "store_committed gives the lowest offset still to do");
    cr_assert_eq(store_commit(s, "w.t", 60), STORE_OK);
    cr_assert_eq(store_committed_pending(s, "w.t", &high, got, &n), STORE_OK);
    cr_expect(high == 60 && n == 0);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* A cursor file is read strictly: what a valid checksum does not cover, or numbers out of shape,
 * are damage. */
Test(log, cursor_files_are_read_strictly)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    char path[300];
    snprintf(path, sizeof path, "%s/cursors/c", d);
    const char *bodies[] = { "ebr-cursor 1 -5", "ebr-cursor 1  5", "ebr-cursor 2 10 2 3 3",
                             "ebr-cursor 2 10 2 5 3", "ebr-cursor 2 10 1 10", "ebr-cursor 1 99999999999999999999",
                             "ebr-cursor 3 10", "ebr-cursor 2 10 2 3" };
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        char text[200];
        int n = snprintf(text, sizeof text, "%s %08x\n", bodies[i], vm_crc32c(0, bodies[i], strlen(bodies[i])));
        write_file(path, text, (size_t)n);
        uint64_t off;
        cr_expect_eq(store_committed(s, "c", &off), STORE_CORRUPT, "took '%s'", bodies[i]);
    }
    /* bytes after a NUL are not part of the line */
    char text[200];
    const char *body = "ebr-cursor 1 5";
    int n = snprintf(text, sizeof text, "%s %08x\n", body, vm_crc32c(0, body, strlen(body)));
    memcpy(text + n, "\0junk\n", 6);
    write_file(path, text, (size_t)n + 6);
    uint64_t off;
    cr_expect_eq(store_committed(s, "c", &off), STORE_CORRUPT);
    write_file(path, text, (size_t)n);
    cr_expect_eq(store_committed(s, "c", &off), STORE_OK);
    cr_expect_eq(off, 5);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* ---- cursor sets ---------------------------------------------------------------------------- */

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1                 /* ASan: allocations cost tens of times more */
#else
#define SANITIZED 0
#endif

/* Entry i of a test set: names in increasing order with i ("p0000042.t2"), a position, and for
 * some entries pending offsets (entries 1, 8, 15, ... 1 to 5 of them, entry 3 as many as a cursor
 * keeps). */
static void set_entry(size_t i, store_pos *e, uint64_t gen)
{
    char name[32];
    snprintf(name, sizeof name, "p%07zu.t%zu", i, i % 3);
    e->name = strdup(name);
    e->high = gen * 1000000000ull + i * 1000 + 500;
    e->npending = i == 3 ? STORE_MAX_PENDING : i % 7 == 1 ? 1 + i % 5 : 0;
    e->pending = e->npending ? malloc(e->npending * sizeof *e->pending) : NULL;
    for (size_t j = 0; j < e->npending; j++)
        e->pending[j] = e->high - 1 - (e->npending - j);
}

/* A test set of n entries of generation gen, in a shuffled order (the commit sorts them). */
static store_pos *make_set(size_t n, uint64_t gen)
{
    store_pos *e = calloc(n ? n : 1, sizeof *e);
    for (size_t i = 0; i < n; i++)
        set_entry(i, &e[i], gen);
    unsigned seed = (unsigned)n;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)rand_r(&seed) % i;
        store_pos t = e[i - 1];
        e[i - 1] = e[j];
        e[j] = t;
    }
    return e;
}

/* Reads set `set` back and expects the test set of n entries of generation gen, base base. */
static void expect_set(store *s, const char *set, uint64_t base, size_t n, uint64_t gen)
{
    uint64_t got_base;
    store_pos *e;
    size_t got;
    store_status st = store_committed_set(s, set, &got_base, &e, &got);
    cr_assert_eq(st, STORE_OK, "set %s: status %d: %s", set, st, store_error(s));
    cr_expect_eq(got_base, base);
    cr_assert_eq(got, n, "set %s: %zu entries, not %zu", set, got, n);
    for (size_t i = 0; i < n; i++) {
        store_pos want;
        set_entry(i, &want, gen);
        cr_assert_str_eq(e[i].name, want.name, "entry %zu", i);
        cr_assert_eq(e[i].high, want.high, "entry %zu", i);
        cr_assert_eq(e[i].npending, want.npending, "entry %zu", i);
        for (size_t j = 0; j < want.npending; j++)
            cr_assert_eq(e[i].pending[j], want.pending[j], "entry %zu, pending %zu", i, j);
        free(want.name);
        free(want.pending);
    }
    store_set_free(e, got);
}

/* The test's own hook: counts the commits' writes, syncs and renames. */
typedef struct {
    _Atomic int writes, syncs, renames;
    const char *fail_op;            /* this operation fails with EIO (NULL: none) */
    bool die;                       /* ... or the process dies there, as in a crash */
} cursor_hook;

static int count_cursor_ops(void *arg, const char *op)
{
    cursor_hook *h = arg;
    h->writes += !strcmp(op, "cursor write");
    h->syncs += !strcmp(op, "cursor sync");
    h->renames += !strcmp(op, "cursor rename");
    if (h->fail_op && !strcmp(op, h->fail_op)) {
        if (h->die)
            raise(SIGKILL);
        return EIO;
    }
    return 0;
}

/* A set of 0, 1 and 100,000 entries (pending offsets among them, up to STORE_MAX_PENDING) reads
 * back as committed, sorted by name, after a reopen; each commit is one write and one sync of one
 * file; reading 100,000 entries back is quick. */
Test(log, cursor_sets_round_trip, .timeout = 120)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    cursor_hook h = { 0 };
    log_set_fault(s, count_cursor_ops, &h);
    uint64_t base;
    store_pos *e;
    size_t n;
    cr_expect_eq(store_committed_set(s, "big", &base, &e, &n), STORE_NOTFOUND);
    cr_expect(e == NULL && n == 0);
    size_t sizes[3] = { 0, 1, 100000 };
    const char *names[3] = { "empty", "one", "big" };
    for (int k = 0; k < 3; k++) {
        store_pos *set = make_set(sizes[k], 1);
        int w = h.writes, y = h.syncs, r = h.renames;
        double t0 = mono_s();
        cr_assert_eq(store_commit_set(s, names[k], 77 + (uint64_t)k, set, sizes[k]), STORE_OK, "%s",
                     store_error(s));
        cr_log_info("%zu entries committed in %.1f ms", sizes[k], (mono_s() - t0) * 1e3);
        cr_expect(h.writes == w + 1 && h.syncs == y + 1 && h.renames == r + 1,
                  "%s: %d writes, %d syncs, %d renames", names[k], h.writes - w, h.syncs - y,
                  h.renames - r);
        store_set_free(set, sizes[k]);
    }
    store_close(s);
    char path[300];
    snprintf(path, sizeof path, "%s/cursors/@big", d);
    uint64_t size = file_size(path);
    cr_expect(size > 100000 * 14 && size < 8u << 20, "100,000 entries take %" PRIu64 " bytes", size);
    s = open_log(d, STORE_FSYNC_NEVER, 0);
    for (int k = 0; k < 3; k++)
        expect_set(s, names[k], 77 + (uint64_t)k, sizes[k], 1);
    double best = 1e9;
    for (int i = 0; i < 5; i++) {
        double t0 = mono_s();
        cr_assert_eq(store_committed_set(s, "big", &base, &e, &n), STORE_OK);
        double t = mono_s() - t0;
        best = t < best ? t : best;
        store_set_free(e, n);
    }
    cr_log_info("100,000 entries (%" PRIu64 " bytes) read in %.1f ms", size, best * 1e3);
    /* (release builds: a few ms; a bound that only something slower than linear would pass) */
    cr_expect_lt(best, SANITIZED ? 10.0 : 1.0, "reading 100,000 entries took %.3f s", best);
    /* a new commit replaces the set whole */
    store_pos *set = make_set(3, 2);
    cr_assert_eq(store_commit_set(s, "big", 5, set, 3), STORE_OK);
    store_set_free(set, 3);
    expect_set(s, "big", 5, 3, 2);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* Set and entry names are cursor names; entries are checked before anything is written. */
Test(log, cursor_set_names_and_entries_are_validated)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    store_pos *good = make_set(2, 1);
    char long_name[VM_MAX_NAME + 2];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    const char *bad_sets[] = { "", ".hidden", "a/b", "@x", "a b", "..", long_name };
    uint64_t base;
    store_pos *e;
    size_t n;
    for (size_t i = 0; i < sizeof bad_sets / sizeof *bad_sets; i++) {
        cr_expect_eq(store_commit_set(s, bad_sets[i], 0, good, 2), STORE_EINVAL, "set '%s'", bad_sets[i]);
        cr_expect_eq(store_committed_set(s, bad_sets[i], &base, &e, &n), STORE_EINVAL, "set '%s'", bad_sets[i]);
    }
    long_name[VM_MAX_NAME] = 0;
    cr_expect_eq(store_commit_set(s, long_name, 0, good, 2), STORE_OK, "a name of 200 bytes");
    uint64_t p3[3] = { 1, 2, 3 }, p_high[1] = { 10 };
    uint64_t many[STORE_MAX_PENDING + 1];
    for (size_t i = 0; i <= STORE_MAX_PENDING; i++)
        many[i] = i;
    store_pos bad[] = {
        { "", 10, NULL, 0 }, { ".x", 10, NULL, 0 }, { "a@b", 10, NULL, 0 }, { "a\nb", 10, NULL, 0 },
        { NULL, 10, NULL, 0 }, { "r.t", 10, p_high, 1 }, { "r.t", 3, p3, 3 }, { "r.t", 1000, many, STORE_MAX_PENDING + 1 },
        { "r.t", 10, NULL, 1 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        store_pos two[2] = { good[0], bad[i] };
        cr_expect_eq(store_commit_set(s, "v", 0, two, 2), STORE_EINVAL, "bad entry %zu", i);
    }
    store_pos twice[3] = { good[0], good[1], good[0] };
    cr_expect_eq(store_commit_set(s, "v", 0, twice, 3), STORE_EINVAL, "a name twice");
    cr_expect_eq(store_committed_set(s, "v", &base, &e, &n), STORE_NOTFOUND, "nothing was written");
    store_pos ok[2] = { { "r.t", 1000, many, STORE_MAX_PENDING }, { "r.u", 0, NULL, 0 } };
    cr_expect_eq(store_commit_set(s, "v", 0, ok, 2), STORE_OK, "the limits themselves: %s", store_error(s));
    /* pending offsets in any order, a repeated one counting once, as store_commit_pending takes them */
    uint64_t p_any[5] = { 9, 4, 7, 4, 9 };
    store_pos any = { "r.t", 10, p_any, 5 };
    cr_assert_eq(store_commit_set(s, "v", 0, &any, 1), STORE_OK, "%s", store_error(s));
    cr_assert_eq(store_committed_set(s, "v", &base, &e, &n), STORE_OK);
    cr_assert(n == 1 && e[0].npending == 3, "%zu entries, %zu pending", n, n ? e[0].npending : 0);
    cr_expect(e[0].pending[0] == 4 && e[0].pending[1] == 7 && e[0].pending[2] == 9);
    store_set_free(e, n);
    store_set_free(good, 2);
    store_close(s);
    /* a store opened read-only commits nothing */
    store_options o = { .read_only = true, .report = collect };
    char err[300];
    cr_assert_eq(log_open(d, &o, &s, err, sizeof err), STORE_OK, "%s", err);
    cr_expect_eq(store_commit_set(s, "v", 0, NULL, 0), STORE_EINVAL);
    cr_expect_eq(store_forget(s, "x"), STORE_EINVAL);
    cr_expect_eq(store_committed_set(s, "v", &base, &e, &n), STORE_OK, "but reads");
    store_set_free(e, n);
    store_close(s);
    remove_dir(d);
    free(d);
}

typedef struct {
    store *s;
    store_pos *v[2];
    int fails;
    _Atomic bool done;
} set_committer;

/* Commits set "delivery" 200 times, v[0] with base 1 and v[1] with base 2 in turn. */
static void *commit_sets(void *arg)
{
    set_committer *c = arg;
    for (int i = 0; i < 200; i++)
        if (store_commit_set(c->s, "delivery", 1 + (uint64_t)(i % 2), c->v[i % 2], 1000) != STORE_OK)
            c->fails++;
    c->done = true;
    return NULL;
}

/* A set is replaced atomically: a commit that fails at its rename, or a process that dies between
 * writing the temporary file and the rename, leaves the old set readable; readers beside a
 * committer never see a torn set. */
Test(log, a_cursor_set_is_replaced_atomically, .timeout = 120)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    store_pos *v1 = make_set(1000, 1), *v2 = make_set(1000, 2);
    cr_assert_eq(store_commit_set(s, "delivery", 1, v1, 1000), STORE_OK);
    cursor_hook h = { .fail_op = "cursor rename" };
    log_set_fault(s, count_cursor_ops, &h);
    cr_expect_eq(store_commit_set(s, "delivery", 2, v2, 1000), STORE_EIO);
    cr_expect(strstr(store_error(s), "cursors/@delivery: cannot write"), "%s", store_error(s));
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s/cursors/.@delivery.tmp", d);
    cr_expect_neq(access(tmp, F_OK), 0, "a failed commit leaves no temporary file");
    h.fail_op = "cursor sync";
    cr_expect_eq(store_commit_set(s, "delivery", 2, v2, 1000), STORE_EIO);
    expect_set(s, "delivery", 1, 1000, 1);
    store_close(s);

    /* a crash after the temporary file is written and synced, before the rename */
    pid_t pid = fork();
    if (pid == 0) {
        store_options o = { .fsync = STORE_FSYNC_NEVER, .report = collect };
        store *c;
        char err[300];
        if (log_open(d, &o, &c, err, sizeof err) != STORE_OK)
            _exit(1);
        cursor_hook die = { .fail_op = "cursor rename", .die = true };
        log_set_fault(c, count_cursor_ops, &die);
        store_commit_set(c, "delivery", 2, v2, 1000);
        _exit(2);
    }
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFSIGNALED(status), "the committer did not die at the rename (status %d)", status);
    cr_expect_eq(access(tmp, F_OK), 0, "the temporary file is there");
    s = open_log(d, STORE_FSYNC_NEVER, 0);
    expect_set(s, "delivery", 1, 1000, 1);
    char **names;
    size_t n;
    cr_assert_eq(store_cursor_names(s, &names, &n), STORE_OK);
    cr_expect_eq(n, 0, "the temporary file is no cursor");
    free(names);
    cr_assert_eq(store_commit_set(s, "delivery", 2, v2, 1000), STORE_OK, "the next commit goes on");
    expect_set(s, "delivery", 2, 1000, 2);
    cr_expect_neq(access(tmp, F_OK), 0);

    /* a reader beside a committer sees one whole set or the other */
    set_committer c = { s, { v1, v2 }, 0, false };
    pthread_t t;
    pthread_create(&t, NULL, commit_sets, &c);
    int reads = 0;
    while (!c.done) {
        uint64_t base;
        store_pos *e;
        size_t ne;
        store_status st = store_committed_set(s, "delivery", &base, &e, &ne);
        cr_assert_eq(st, STORE_OK, "read %d: %s", reads, store_error(s));
        cr_assert(ne == 1000 && (base == 1 || base == 2), "read %d: a torn set", reads);
        for (size_t i = 0; i < ne; i++)
            cr_assert_eq(e[i].high / 1000000000ull, base, "read %d: entry %zu of another commit", reads, i);
        store_set_free(e, ne);
        reads++;
    }
    pthread_join(t, NULL);
    cr_expect_eq(c.fails, 0, "the committer failed");
    cr_log_info("%d reads beside 200 commits", reads);
    store_set_free(v1, 1000);
    store_set_free(v2, 1000);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* Writes body and the line of its checksum as file `file` of d/cursors. */
static void write_with_crc(const char *d, const char *file, const char *body, size_t len)
{
    char path[300], *text = malloc(len + 10);
    memcpy(text, body, len);
    snprintf(text + len, 10, "%08x\n", vm_crc32c(0, body, len));
    snprintf(path, sizeof path, "%s/cursors/%s", d, file);
    write_file(path, text, len + 9);
    free(text);
}

/* A torn set file (cut anywhere), a byte changed anywhere, and files whose checksum matches but
 * whose text is out of shape are all refused as STORE_CORRUPT, naming the file. */
Test(log, a_torn_or_edited_cursor_set_is_refused, .timeout = 120)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    store_pos *v = make_set(3, 1);
    cr_assert_eq(store_commit_set(s, "s", 9, v, 3), STORE_OK);
    store_set_free(v, 3);
    char path[300];
    snprintf(path, sizeof path, "%s/cursors/@s", d);
    size_t size;
    char *good = read_file(path, &size);
    uint64_t base;
    store_pos *e;
    size_t n;
    for (size_t cut = 0; cut < size; cut++) {
        write_file(path, good, cut);
        cr_assert_eq(store_committed_set(s, "s", &base, &e, &n), STORE_CORRUPT, "cut at %zu", cut);
        cr_assert(e == NULL && n == 0);
    }
    cr_expect(strstr(store_error(s), "/cursors/@s: a damaged cursor set: "), "%s", store_error(s));
    for (size_t at = 0; at < size; at++)
        for (int bit = 0; bit < 8; bit += 3) {
            good[at] ^= (char)(1 << bit);
            write_file(path, good, size);
            cr_assert_eq(store_committed_set(s, "s", &base, &e, &n), STORE_CORRUPT, "byte %zu", at);
            good[at] ^= (char)(1 << bit);
        }
    write_file(path, good, size);
    expect_set(s, "s", 9, 3, 1);
    free(good);
    /* the checksum matches, the text is out of shape */
    const char *ok = "ebr-cursorset 1 5 2\na.t 10 0\nb.t 20 2 3 4\n";
    write_with_crc(d, "@s", ok, strlen(ok));
    cr_assert_eq(store_committed_set(s, "s", &base, &e, &n), STORE_OK, "%s", store_error(s));
    cr_expect(base == 5 && n == 2 && e[1].npending == 2 && e[1].pending[1] == 4);
    store_set_free(e, n);
    char many[4000] = "ebr-cursorset 1 5 1\na.t 1000 257";
    for (int i = 0; i < 257; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), " %d", i);
    strcat(many, "\n");
    const char *bad[] = {
        "ebr-cursorset 1 5 2\nb.t 10 0\na.t 20 0\n", "ebr-cursorset 1 5 2\na.t 10 0\na.t 20 0\n",
        "ebr-cursorset 1 5 3\na.t 10 0\nb.t 20 0\n", "ebr-cursorset 1 5 1\na.t 10 0\nb.t 20 0\n",
        "ebr-cursorset 1 5 1\na.t 10 2 3\n", "ebr-cursorset 1 5 1\na.t 10 1 3 4\n",
        "ebr-cursorset 1 5 1\na.t 10 2 4 3\n", "ebr-cursorset 1 5 1\na.t 10 2 3 3\n",
        "ebr-cursorset 1 5 1\na.t 10 1 10\n", "ebr-cursorset 1 5 1\n.a 10 0\n",
        "ebr-cursorset 1 5 1\na@b 10 0\n", "ebr-cursorset 1 5 1\na.t 010 0\n",
        "ebr-cursorset 1 5 1\na.t -1 0\n", "ebr-cursorset 1 5 1\na.t 99999999999999999999 0\n",
        "ebr-cursorset 1 5 1\na.t 10 0 \n", "ebr-cursorset 1 5 1\na.t  10 0\n",
        "ebr-cursorset 1 5 1\na.t 10\n", "ebr-cursorset 1 5 1\na.t 10 0\r\n",
        "ebr-cursorset 2 5 1\na.t 10 0\n", "ebr-cursor 1 5\n", "ebr-cursorset 1 5 1\na.t 10 0",
        "ebr-cursorset 1 5 0\n\n", "ebr-cursorset 1 5 1000\na.t 10 0\n", "ebr-cursorset 1 5\n",
        "", many,
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        write_with_crc(d, "@s", bad[i], strlen(bad[i]));
        cr_expect_eq(store_committed_set(s, "s", &base, &e, &n), STORE_CORRUPT, "took %zu: '%s'", i, bad[i]);
    }
    const char nul[] = "ebr-cursorset 1 5 1\na.t\0 10 0\n";
    write_with_crc(d, "@s", nul, sizeof nul - 1);
    cr_expect_eq(store_committed_set(s, "s", &base, &e, &n), STORE_CORRUPT, "a NUL byte");
    store_close(s);
    remove_dir(d);
    free(d);
}

/* store_cursor_names lists the named cursors, never the sets (nor temporary or stray files);
 * store_forget removes one durably and leaves a set of the same name alone. */
Test(log, cursor_names_and_forget)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    char **names;
    size_t n;
    cr_assert_eq(store_cursor_names(s, &names, &n), STORE_OK);
    cr_expect_eq(n, 0);
    free(names);
    cr_assert_eq(store_commit(s, "b.t", 2), STORE_OK);
    cr_assert_eq(store_commit(s, "a.t", 1), STORE_OK);
    uint64_t p[1] = { 3 };
    cr_assert_eq(store_commit_pending(s, "z", 9, p, 1), STORE_OK);
    store_pos e1 = { "a.t", 100, NULL, 0 };
    cr_assert_eq(store_commit_set(s, "delivery", 50, &e1, 1), STORE_OK);
    cr_assert_eq(store_commit_set(s, "a.t", 60, NULL, 0), STORE_OK);
    char path[300];
    const char *stray[] = { ".b.t.tmp", "@", "notes~" };
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/cursors/%s", d, stray[i]);
        write_file(path, "x\n", 2);
    }
    snprintf(path, sizeof path, "%s/cursors/dir.t", d);
    cr_assert_eq(mkdir(path, 0755), 0);
    cr_assert_eq(store_cursor_names(s, &names, &n), STORE_OK);
    cr_assert_eq(n, 3);
    cr_expect(!strcmp(names[0], "a.t") && !strcmp(names[1], "b.t") && !strcmp(names[2], "z"),
              "%s %s %s", names[0], names[1], names[2]);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    cr_assert_eq(store_set_names(s, &names, &n), STORE_OK);
    cr_assert_eq(n, 2);
    cr_expect(!strcmp(names[0], "a.t") && !strcmp(names[1], "delivery"), "%s %s", names[0], names[1]);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    /* a named cursor and a set of one name are two things */
    uint64_t off, base;
    store_pos *e;
    cr_assert_eq(store_committed(s, "a.t", &off), STORE_OK);
    cr_expect_eq(off, 1);
    cr_assert_eq(store_committed_set(s, "a.t", &base, &e, &n), STORE_OK);
    cr_expect(base == 60 && n == 0);
    cr_expect_eq(store_committed(s, "delivery", &off), STORE_NOTFOUND, "a set is no named cursor");
    cr_expect_eq(store_committed(s, "@delivery", &off), STORE_EINVAL);
    cr_expect_eq(store_forget(s, "a.t"), STORE_OK);
    cr_expect_eq(store_committed(s, "a.t", &off), STORE_NOTFOUND);
    cr_assert_eq(store_committed_set(s, "a.t", &base, &e, &n), STORE_OK, "forget leaves the set");
    cr_expect_eq(store_forget(s, "a.t"), STORE_OK, "forgetting it again");
    cr_expect_eq(store_forget(s, "never"), STORE_OK);
    cr_expect_eq(store_forget(s, "@delivery"), STORE_EINVAL);
    cr_expect_eq(store_forget(s, ".b.t.tmp"), STORE_EINVAL);
    cr_expect_eq(store_forget(s, "../x"), STORE_EINVAL);
    cr_expect_eq(store_committed_set(s, "delivery", &base, &e, &n), STORE_OK);
    cr_expect(base == 50 && n == 1);
    store_set_free(e, n);
    store_close(s);
    s = open_log(d, STORE_FSYNC_NEVER, 0);
    cr_assert_eq(store_cursor_names(s, &names, &n), STORE_OK);
    cr_assert_eq(n, 2, "after a reopen");
    cr_expect(!strcmp(names[0], "b.t") && !strcmp(names[1], "z"));
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    store_close(s);
    remove_dir(d);
    free(d);
}

/* log_check (ebc log check) reads every named cursor and cursor set, and reports a damaged one as
 * a problem naming its file. */
Test(log, check_verifies_named_cursors_and_cursor_sets)
{
    char *d = new_dir();
    store *s = open_log(d, STORE_FSYNC_NEVER, 0);
    append_range(s, 0, 10);
    cr_assert_eq(store_commit(s, "r.t", 5), STORE_OK);
    cr_assert_eq(store_commit(s, "r.u", 6), STORE_OK);
    store_pos *v = make_set(3, 1);
    cr_assert_eq(store_commit_set(s, "delivery", 4, v, 3), STORE_OK);
    store_set_free(v, 3);
    store_close(s);
    char path[300], err[300];
    snprintf(path, sizeof path, "%s/cursors/.r.t.tmp", d);
    write_file(path, "torn", 4);
    reports[0] = 0;
    cr_expect_eq(log_check(d, false, collect, NULL, err, sizeof err), 0, "%s", reports);
    cr_expect(strstr(reports, "/cursors: 2 named cursors, 1 cursor set (3 positions): ok\n"), "%s", reports);
    cr_expect(!strstr(reports, ".r.t.tmp"), "a temporary file is passed over: %s", reports);
    snprintf(path, sizeof path, "%s/cursors/@delivery", d);
    size_t n;
    char *text = read_file(path, &n);
    write_file(path, text, n - 3);
    free(text);
    snprintf(path, sizeof path, "%s/cursors/r.u", d);
    write_file(path, "ebr-cursor 1 6 00000000\n", 24);
    snprintf(path, sizeof path, "%s/cursors/notes~", d);
    write_file(path, "x", 1);
    reports[0] = 0;
    cr_expect_eq(log_check(d, false, collect, NULL, err, sizeof err), 2, "%s", reports);
    cr_expect(strstr(reports, "/cursors/@delivery: a damaged cursor set: its last line is not a "
                     "checksum"), "%s", reports);
    cr_expect(strstr(reports, "/cursors/r.u: a damaged named cursor: "), "%s", reports);
    cr_expect(strstr(reports, "/cursors/notes~: not a cursor's file (passed over)"), "%s", reports);
    cr_expect(strstr(reports, "/cursors: 1 named cursor, 0 cursor sets (0 positions)\n"), "%s", reports);
    cr_expect(strstr(reports, ": 2 problems\n"), "%s", reports);
    remove_dir(d);
    free(d);
}
