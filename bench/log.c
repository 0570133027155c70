/*
 * log.c — the bus log's benchmark (bench/README.md, "The bus log"): appends of 1 KiB records
 * under each fsync policy and several batch sizes, sequential reads, and in the same run the same
 * workload published to NATS JetStream (file storage, one node, on 127.0.0.1, `nats-server` from
 * Debian, started and stopped here).
 *
 * Each figure is the median of --runs runs.  Appends: P producer threads each append batches of
 * B records until the row's count is written; the log is new for each run and removed after.
 * Reads: one cursor reads a 1 GiB log from offset 0 with the files in the page cache, checking
 * every record's CRC as any reader does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../runtime/runtime.h"
#include "bench.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void rm_rf(const char *dir)
{
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench: cannot remove %s\n", dir);
}

/* ---- appends -------------------------------------------------------------------------------- */

typedef struct {
    store *s;
    unsigned batch, size;
    uint64_t count;         /* records this producer appends */
    bool failed;
} producer;

static void *produce(void *arg)
{
    producer *p = arg;
    store_entry *e = calloc(p->batch, sizeof *e);
    char *buf = malloc(p->size);
    memset(buf, 'x', p->size);
    for (unsigned i = 0; i < p->batch; i++)
        e[i] = (store_entry){ buf, p->size, 0, NULL };
    for (uint64_t done = 0; done < p->count && !p->failed;) {
        size_t n = p->count - done < p->batch ? (size_t)(p->count - done) : p->batch;
        if (store_append(p->s, e, n, NULL) != STORE_OK) {
            fprintf(stderr, "bench: append: %s\n", store_error(p->s));
            p->failed = true;
        }
        done += n;
    }
    free(buf);
    free(e);
    return NULL;
}

typedef struct {
    const char *policy;
    store_fsync fsync;
    unsigned batch, producers, size;
    uint64_t records;
} append_row;

typedef struct {
    double per_sec, mb_per_sec, syncs_per_sec, records_per_sync;
} append_result;

static bool run_append(const char *work, const append_row *row, append_result *res)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/log-append", work);
    rm_rf(dir);
    store_options o = { .fsync = row->fsync, .fsync_interval_ns = 10000000 };
    store *s;
    char err[512];
    if (log_open(dir, &o, &s, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "bench: %s\n", err);
        return false;
    }
    producer p[64];
    pthread_t t[64];
    double t0 = now();
    for (unsigned i = 0; i < row->producers; i++) {
        p[i] = (producer){ s, row->batch, row->size, row->records / row->producers, false };
        pthread_create(&t[i], NULL, produce, &p[i]);
    }
    bool ok = true;
    for (unsigned i = 0; i < row->producers; i++) {
        pthread_join(t[i], NULL);
        ok = ok && !p[i].failed;
    }
    double secs = now() - t0;
    log_stats st;
    log_get_stats(s, &st);
    store_close(s);
    rm_rf(dir);
    res->per_sec = (double)st.next / secs;
    res->mb_per_sec = (double)st.next * row->size / secs / 1e6;
    res->syncs_per_sec = (double)st.fsyncs / secs;
    res->records_per_sync = st.fsyncs ? (double)st.next / (double)st.fsyncs : 0;
    return ok && st.next == row->records / row->producers * row->producers;
}

/* ---- sequential reads --------------------------------------------------------------------- */

static bool make_read_log(const char *dir, uint64_t records)
{
    rm_rf(dir);
    store_options o = { .fsync = STORE_FSYNC_NEVER };
    store *s;
    char err[512];
    if (log_open(dir, &o, &s, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "bench: %s\n", err);
        return false;
    }
    producer p = { s, 256, 1024, records, false };
    produce(&p);
    store_close(s);
    return !p.failed;
}

static bool run_read(const char *dir, uint64_t records, double *gb_per_sec, double *rec_per_sec)
{
    store_options o = { .read_only = true };
    store *s;
    char err[512];
    if (log_open(dir, &o, &s, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "bench: %s\n", err);
        return false;
    }
    store_cursor *c;
    store_cursor_open(s, 0, &c);
    store_record r;
    uint64_t n = 0, bytes = 0;
    double t0 = now();
    store_status st;
    while ((st = store_cursor_next(c, &r, 0)) == STORE_OK) {
        n++;
        bytes += r.len + 32;     /* the record as stored, header and all */
    }
    double secs = now() - t0;
    store_cursor_close(c);
    store_close(s);
    *gb_per_sec = (double)bytes / secs / 1e9;
    *rec_per_sec = (double)n / secs;
    return st == STORE_TIMEOUT && n == records;
}

/* ---- NATS JetStream ------------------------------------------------------------------------ */

static pid_t nats_pid;

static bool nats_start(const char *work, int port)
{
    char store_dir[4200], portbuf[16];
    snprintf(store_dir, sizeof store_dir, "%s/nats-js", work);
    rm_rf(store_dir);
    snprintf(portbuf, sizeof portbuf, "%d", port);
    nats_pid = fork();
    if (nats_pid == 0) {
        int null = open("/dev/null", 1);
        dup2(null, 1);
        dup2(null, 2);
        execlp("nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", portbuf, "-sd",
               store_dir, (char *)NULL);
        execl("/usr/sbin/nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", portbuf,
              "-sd", store_dir, (char *)NULL);
        _exit(127);
    }
    return nats_pid > 0;
}

static void nats_stop(void)
{
    if (nats_pid > 0) {
        kill(nats_pid, SIGTERM);
        waitpid(nats_pid, NULL, 0);
        nats_pid = 0;
    }
}

/* Publishes `count` messages of `size` bytes asynchronously (at most 4096 awaiting their
 * acknowledgement) into a new file-storage stream and waits for every acknowledgement. */
static bool nats_publish(int port, unsigned size, int count, double *per_sec)
{
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", port);
    natsConnection *nc = NULL;
    for (int tries = 0; tries < 100; tries++) {     /* the server takes a moment to listen */
        if (natsConnection_ConnectTo(&nc, url) == NATS_OK)
            break;
        struct timespec ts = { 0, 50000000 };
        nanosleep(&ts, NULL);
    }
    if (!nc) {
        fprintf(stderr, "bench: cannot connect to nats-server at %s\n", url);
        return false;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 4096;
    jsCtx *js = NULL;
    bool ok = natsConnection_JetStream(&js, nc, &jo) == NATS_OK;
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = "BENCH";
    const char *subjects[] = { "bench.>" };
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    jsErrCode jerr = 0;
    js_DeleteStream(js, "BENCH", NULL, &jerr);
    ok = ok && js_AddStream(NULL, js, &cfg, NULL, &jerr) == NATS_OK;
    char *buf = malloc(size);
    memset(buf, 'x', size);
    double t0 = now();
    for (int i = 0; ok && i < count; i++)
        ok = js_PublishAsync(js, "bench.x", buf, (int)size, NULL) == NATS_OK;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 60000;
    ok = ok && js_PublishAsyncComplete(js, &po) == NATS_OK;
    double secs = now() - t0;
    *per_sec = count / secs;
    js_DeleteStream(js, "BENCH", NULL, &jerr);
    free(buf);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    if (!ok)
        fprintf(stderr, "bench: JetStream publish failed\n");
    return ok;
}

/* ---- the driver ----------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    bench_options o = { .runs = 3 };
    unsigned scale = 100;     /* percent of the default record counts */
    for (int i = 1; i < argc; i++) {
        if (bench_option(&o, argc, argv, &i))
            continue;
        if (i + 1 < argc && !strcmp(argv[i], "--scale") && atoi(argv[i + 1]) > 0) {
            scale = (unsigned)atoi(argv[++i]);
            continue;
        }
        fprintf(stderr, "usage: bench_log --ebc EBC --data DIR --work DIR --out DIR [--runs N] "
                        "[--scale PERCENT]\n");
        return 2;
    }
    if (!bench_options_ready(&o)) {
        fprintf(stderr, "bench_log: --ebc, --data, --work and --out are needed\n");
        return 2;
    }
    int runs = o.runs;
#define N(x) ((uint64_t)(x) * scale / 100)
    const append_row rows[] = {
        { "always", STORE_FSYNC_ALWAYS, 1, 4, 1024, N(20000) },
        { "always", STORE_FSYNC_ALWAYS, 1, 64, 1024, N(100000) },
        { "always", STORE_FSYNC_ALWAYS, 16, 4, 1024, N(200000) },
        { "always", STORE_FSYNC_ALWAYS, 256, 4, 1024, N(500000) },
        { "always", STORE_FSYNC_ALWAYS, 1, 64, 256, N(100000) },
        { "always", STORE_FSYNC_ALWAYS, 16, 4, 256, N(200000) },
        { "always", STORE_FSYNC_ALWAYS, 256, 4, 256, N(1000000) },
        { "interval 10ms", STORE_FSYNC_INTERVAL, 1, 4, 1024, N(500000) },
        { "interval 10ms", STORE_FSYNC_INTERVAL, 1, 64, 1024, N(500000) },
        { "interval 10ms", STORE_FSYNC_INTERVAL, 16, 4, 1024, N(1000000) },
        { "interval 10ms", STORE_FSYNC_INTERVAL, 256, 4, 1024, N(1000000) },
        { "never", STORE_FSYNC_NEVER, 1, 4, 1024, N(500000) },
        { "never", STORE_FSYNC_NEVER, 1, 64, 1024, N(500000) },
        { "never", STORE_FSYNC_NEVER, 16, 4, 1024, N(1000000) },
        { "never", STORE_FSYNC_NEVER, 256, 4, 1024, N(1000000) },
    };
    size_t nrows = sizeof rows / sizeof *rows;
    char machine[512];
    bench_machine(machine, sizeof machine);
    char csv_path[4200], md_path[4200];
    snprintf(csv_path, sizeof csv_path, "%s/log.csv", o.out);
    snprintf(md_path, sizeof md_path, "%s/log.md", o.out);
    FILE *csv = fopen(csv_path, "w"), *md = fopen(md_path, "w");
    if (!csv || !md) {
        fprintf(stderr, "bench: cannot write the results in %s\n", o.out);
        return 2;
    }
    fprintf(csv, "# %s; median of %d runs\n", machine, runs);
    fprintf(csv, "workload,fsync,record_bytes,batch,producers,records,per_sec,mb_per_sec,"
                 "fsyncs_per_sec,records_per_fsync\n");
    fprintf(md, "Machine: %s; median of %d runs.\n\n", machine, runs);
    fprintf(md, "| workload | fsync | record | batch | producers | appends/s | MB/s | fsyncs/s | "
                "records per fsync |\n|---|---|---|---|---|---|---|---|---|\n");
    bool ok = true;
    double *v = calloc((size_t)runs, sizeof *v), *m = calloc((size_t)runs, sizeof *m),
           *sy = calloc((size_t)runs, sizeof *sy), *rps = calloc((size_t)runs, sizeof *rps);
    for (size_t k = 0; k < nrows; k++) {
        const append_row *r = &rows[k];
        for (int i = 0; i < runs; i++) {
            append_result res;
            if (!run_append(o.work, r, &res)) {
                ok = false;
                break;
            }
            v[i] = res.per_sec;
            m[i] = res.mb_per_sec;
            sy[i] = res.syncs_per_sec;
            rps[i] = res.records_per_sync;
        }
        double a = median(v, runs), b = median(m, runs), c = median(sy, runs), d = median(rps, runs);
        printf("append  fsync %-13s %5u B  batch %3u  x%-2u producers: %10.0f appends/s %8.1f MB/s "
               "%7.0f fsyncs/s %7.1f records/fsync\n", r->policy, r->size, r->batch, r->producers,
               a, b, c, d);
        fflush(stdout);
        fprintf(csv, "append,%s,%u,%u,%u,%" PRIu64 ",%.0f,%.1f,%.0f,%.1f\n", r->policy, r->size,
                r->batch, r->producers, r->records, a, b, c, d);
        fprintf(md, "| ebr append | %s | %u B | %u | %u | %.0fK | %.0f | %.0f | %.1f |\n", r->policy,
                r->size, r->batch, r->producers, a / 1e3, b, c, d);
    }
    /* Sequential reads of 1 GiB (1M records of 1 KiB). */
    char rdir[4200];
    snprintf(rdir, sizeof rdir, "%s/log-read", o.work);
    uint64_t nread = N(1000000);
    if (make_read_log(rdir, nread)) {
        double gb[16], rec[16];
        int rr = runs < 16 ? runs : 16;
        for (int i = 0; i < rr; i++)
            if (!run_read(rdir, nread, &gb[i], &rec[i]))
                ok = false;
        double g = median(gb, rr), rc = median(rec, rr);
        printf("read    one cursor, 1 KiB records, page cache:  %.2f GB/s  %.0f records/s\n", g, rc);
        fprintf(csv, "read,,1024,,1,%" PRIu64 ",%.0f,%.1f,,\n", nread, rc, g * 1e3);
        fprintf(md, "| ebr sequential read (CRC checked) | | 1 KiB | | 1 cursor | %.0fK records/s | %.0f "
                "(%.2f GB/s) | | |\n", rc / 1e3, g * 1e3, g);
    } else
        ok = false;
    rm_rf(rdir);
    /* NATS JetStream, the same machine, the same run. */
    int port = 14222 + (int)(getpid() % 1000);
    if (nats_start(o.work, port)) {
        unsigned sizes[] = { 256, 1024 };
        for (int z = 0; z < 2; z++) {
            int count = (int)N(sizes[z] == 256 ? 500000 : 300000);
            for (int i = 0; i < runs; i++)
                if (!nats_publish(port, sizes[z], count, &v[i]))
                    v[i] = 0;
            double a = median(v, runs);
            printf("NATS JetStream file store, async publish, %4u B: %10.0f msgs/s %8.1f MB/s\n",
                   sizes[z], a, a * sizes[z] / 1e6);
            fprintf(csv, "jetstream_async_publish,,%u,,1,%d,%.0f,%.1f,,\n", sizes[z], count, a,
                    a * sizes[z] / 1e6);
            fprintf(md, "| NATS JetStream async publish (file store, default sync) | | %u B | | 1 | "
                    "%.0fK | %.0f | | |\n", sizes[z], a / 1e3, a * sizes[z] / 1e6);
        }
        nats_stop();
        char jsdir[4200];
        snprintf(jsdir, sizeof jsdir, "%s/nats-js", o.work);
        rm_rf(jsdir);
    } else {
        fprintf(stderr, "bench: cannot start nats-server\n");
        ok = false;
    }
    fclose(csv);
    fclose(md);
    free(v);
    free(m);
    free(sy);
    free(rps);
    printf("results: %s, %s\n", csv_path, md_path);
    return ok ? 0 : 1;
}
