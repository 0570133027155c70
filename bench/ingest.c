/*
 * ingest.c — ebd's benchmark (bench/README.md, "The daemon"): ingest throughput over keep-alive
 * connections, one event per request and batches of 100, and ingest-to-delivery latency at a
 * fixed rate to a webhook on loopback.  It starts ebd itself (bus fsync interval 10ms) on
 * 127.0.0.1 and its own receiver, and stops both.
 *
 * Then the rule-count table (issue 11): for 10, 1,000, 10,000 and 100,000 rules of
 * ../shared/data/scaling (gen_scaling.py, run once into WORK/issue193 as bench_scaling does),
 * each rule delivering to one of 20 file targets, the daemon's start-up time (from an .ebc and
 * from the .ebr), threads, memory, idle CPU, single-event ingest, ingest-to-delivery latency and
 * the deliveries the rules made; and two fan-out rows: one event matched by 1,000 rules to 1,000
 * file targets, and by 1,000 rules to one http target (the driver's receiver).
 *
 *   bench_ingest --ebd EBD --work DIR --out DIR [--ebc EBC] [--data SHARED_DATA_DIR]
 *                [--seconds S] [--connections C] [--fsync POLICY]
 *                [--rules-table] [--max-rules N] [--runs R] [--start-timeout S]
 *                [--idle-seconds S] [--drain-timeout S] [--no-fanout] [--ebd-label TEXT]
 *                [--replay-row [--replay-rate N]] [--trace-table] [--routing-row]
 *                [--jetstream-rows] [--dedup-rows]
 *
 * --replay-row runs only the replay rows (issue 12): live ingest and routing with and without a
 * replay running, alternately, --runs times, written to OUT/replay.md (--replay-rate: the
 * replay's rate cap, events a second; default none).
 *
 * --rules-table runs only the rule-count table and the fan-out rows, and replaces only their
 * section of OUT/ingest.md; --max-rules leaves out the rows above N rules (0: the fan-out rows
 * alone); --no-fanout leaves those out; --runs (3) is the number of runs each row's medians are
 * taken over; --start-timeout (120 s) is how long one start of ebd may take before it is killed
 * and its row reported as not started; --idle-seconds (10) the window idle CPU is measured over;
 * --drain-timeout (120 s) how long to wait for a row's deliveries after its ingest run;
 * --ebd-label says in the results which ebd ran (default: the tree's git describe).
 * --trace-table runs only the tracing rows (issue 12: ingest and routing with tracing off and on,
 * in the same run) and replaces only their section of OUT/ingest.md; --routing-row likewise runs
 * only the routing row (issue 14: the router alone on the COMBO rules, trusted path), which the
 * default run includes after the ingest rows.  --ebc
 * defaults to the ebc beside EBD, --data to ../shared/data.  --jetstream-rows runs only the rows of
 * a bus on NATS JetStream (issue 15: one node and three, one daemon and two, against the local
 * log in the same run), starting nats-server itself, and replaces only their section;
 * --dedup-rows likewise the rows of a bus's dedup window (issue 16: with and without, on the
 * local log and on JetStream).
 *
 * The load generator speaks HTTP/1.1 over plain sockets (one thread per connection, one request
 * in flight on each), so that it costs the daemon's two cores as little as it can.
 */
#define _GNU_SOURCE
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <microhttpd.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(0x7f000001);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends one request and reads its answer; returns the status, or -1. */
static int roundtrip(int fd, const char *req, size_t n, char *buf, size_t cap)
{
    for (size_t sent = 0; sent < n;) {
        ssize_t w = send(fd, req + sent, n - sent, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        sent += (size_t)w;
    }
    size_t got = 0;
    for (;;) {
        ssize_t r = recv(fd, buf + got, cap - got - 1, 0);
        if (r <= 0)
            return -1;
        got += (size_t)r;
        buf[got] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        char *cl = strcasestr(buf, "Content-Length:");
        size_t body = cl ? (size_t)atol(cl + 15) : 0;
        if (got >= (size_t)(end + 4 - buf) + body)
            return atoi(buf + 9);
    }
}

typedef struct {
    int port, batch;
    const char *bus;
    double until;
    uint64_t requests, events, errors;
    /* When lines is set: one event per request, the lines in turn (shared by every loader
     * through *next), each one's acknowledgements counted in acked[k]. */
    char *const *lines;
    const size_t *lens;
    size_t nlines, maxlen;
    _Atomic size_t *next;
    _Atomic uint32_t *acked;
    const char *type;             /* the events' type (NULL: bench.load) */
} loader;

static const char event_fmt[] =
    "{\"specversion\":\"1.0\",\"id\":\"ev-%d-%" PRIu64 "-%d\",\"source\":\"bench\",\"type\":\"%s\","
    "\"time\":\"2026-11-26T10:00:00Z\",\"data\":{\"order\":%" PRIu64 ",\"total\":123.45,\"region\":"
    "\"eu-west-1\",\"items\":[{\"sku\":\"SKU-1-X\",\"qty\":2}],\"note\":\"a 300-byte-ish event\"}}";

static void *load(void *arg)
{
    loader *l = arg;
    int fd = connect_to(l->port);
    if (fd < 0) {
        l->errors++;
        return NULL;
    }
    size_t cap = (size_t)l->batch * 400 + 1024 + l->maxlen;
    char *body = malloc(cap), *req = malloc(cap + 512), buf[8192];
    /* each loader's number: the events' ids are unique across loaders (the low bits of
     * pthread_self() were not, and a bus's dedup window took such events as one) */
    static _Atomic int loaders;
    int self = atomic_fetch_add(&loaders, 1);
    for (uint64_t k = 0; now_s() < l->until; k++) {
        size_t n = 0, line = 0;
        if (l->lines) {
            line = atomic_fetch_add(l->next, 1) % l->nlines;
            memcpy(body, l->lines[line], n = l->lens[line]);
        } else {
            if (l->batch > 1)
                body[n++] = '[';
            for (int i = 0; i < l->batch; i++) {
                if (i)
                    body[n++] = ',';
                n += (size_t)snprintf(body + n, cap - n, event_fmt, self, k, i,
                                      l->type ? l->type : "bench.load", k);
            }
            if (l->batch > 1)
                body[n++] = ']';
        }
        int rn = snprintf(req, cap + 512, "POST /v1/buses/%s/events HTTP/1.1\r\nHost: x\r\n"
                          "Content-Type: application/cloudevents%s+json\r\nContent-Length: %zu\r\n\r\n",
                          l->bus, l->batch > 1 ? "-batch" : "", n);
        memcpy(req + rn, body, n);
        int st = roundtrip(fd, req, (size_t)rn + n, buf, sizeof buf);
        if (st != 202) {
            l->errors++;
            close(fd);
            fd = connect_to(l->port);
            if (fd < 0)
                break;
            continue;
        }
        l->requests++;
        l->events += (uint64_t)l->batch;
        if (l->lines)
            atomic_fetch_add(&l->acked[line], 1);
    }
    if (fd >= 0)
        close(fd);
    free(body);
    free(req);
    return NULL;
}

/* Runs conns loaders like proto for secs seconds. */
static void run_loaders(const loader *proto, int conns, double secs, double *req_s, double *ev_s,
                        uint64_t *errors)
{
    loader *l = calloc((size_t)conns, sizeof *l);
    pthread_t *t = calloc((size_t)conns, sizeof *t);
    double t0 = now_s();
    for (int i = 0; i < conns; i++) {
        l[i] = *proto;
        l[i].until = t0 + secs;
        pthread_create(&t[i], NULL, load, &l[i]);
    }
    uint64_t rq = 0, ev = 0;
    *errors = 0;
    for (int i = 0; i < conns; i++) {
        pthread_join(t[i], NULL);
        rq += l[i].requests;
        ev += l[i].events;
        *errors += l[i].errors;
    }
    double el = now_s() - t0;
    *req_s = (double)rq / el;
    *ev_s = (double)ev / el;
    free(l);
    free(t);
}

static void run_load(int port, const char *bus, int conns, int batch, double secs, double *req_s, double *ev_s,
                     uint64_t *errors)
{
    loader proto = { .port = port, .batch = batch, .bus = bus };
    run_loaders(&proto, conns, secs, req_s, ev_s, errors);
}

/* ---- latency: a receiver that notes when each event arrives ---------------------------------- */

static int64_t *lat_us;
static _Atomic size_t nlat;
static size_t cap_lat;
/* The fan-out rows' deliveries to /fan: how many, and when the last one came (CLOCK_MONOTONIC, ns). */
static _Atomic uint64_t fan_count, fan_requests;
static _Atomic int64_t fan_last_ns;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* What the fan-out receiver counts of one request's body. */
typedef struct {
    uint64_t events;
    char tail[16];
    size_t ntail;
} fan_body;

static enum MHD_Result on_delivery(void *cls, struct MHD_Connection *c, const char *url,
                                   const char *method, const char *version, const char *data,
                                   size_t *size, void **state)
{
    (void)cls, (void)method, (void)version;
    if (!*state) {
        *state = calloc(1, sizeof(fan_body));
        return MHD_YES;
    }
    if (*size && !strcmp(url, "/fan")) {
        /* a fan-out delivery: one event, or with `batch` an array of them; each has one
         * "specversion" (maybe across two pieces of the body) */
        fan_body *fb = *state;
        static const char mark[] = "\"specversion\"";
        size_t m = sizeof mark - 1;
        char *buf = malloc(fb->ntail + *size);
        if (buf) {
            memcpy(buf, fb->tail, fb->ntail);
            memcpy(buf + fb->ntail, data, *size);
            size_t n = fb->ntail + *size;
            for (const char *q = buf; (q = memmem(q, n - (size_t)(q - buf), mark, m)); q += m)
                fb->events++;
            fb->ntail = n < m - 1 ? n : m - 1;
            memcpy(fb->tail, buf + n - fb->ntail, fb->ntail);
            free(buf);
        }
        *size = 0;
        return MHD_YES;
    }
    if (*size) {
        /* the payload is {"sent": MICROSECONDS, ...}: find the number */
        const char *p = memmem(data, *size, "\"sent\":", 7);
        if (p) {
            int64_t sent = atoll(p + 7);
            size_t k = atomic_fetch_add(&nlat, 1);
            if (k < cap_lat)
                lat_us[k] = real_us() - sent;
        }
        *size = 0;
        return MHD_YES;
    }
    fan_body *fb = *state;
    if (!strcmp(url, "/fan")) {
        atomic_fetch_add(&fan_count, fb->events ? fb->events : 1);
        atomic_fetch_add(&fan_requests, 1);
        atomic_store(&fan_last_ns, mono_ns());
    }
    free(*state);
    *state = NULL;
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (char *)"", MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ok = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ok;
}

/* Starts ebd on a new data directory (the last run's removed, its writes flushed first, so that
 * one run's page-cache writeback does not slow the next), or on the one there (!fresh); returns
 * its pid or -1. */
static pid_t start_ebd_on(const char *ebd, const char *rules, const char *data, int port, bool fresh)
{
    char cmd[9000], listen[64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data);
    if (fresh && system(cmd) != 0)
        return -1;
    if (fresh)
        sync();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", 1);
        dup2(null, 2);
        execl(ebd, "ebd", "--rules", rules, "--data", data, "--listen", listen, (char *)NULL);
        _exit(127);
    }
    int fd = -1;
    for (int i = 0; i < 200 && (fd = connect_to(port)) < 0; i++)
        usleep(20000);
    if (fd < 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        return -1;
    }
    close(fd);
    return pid;
}

static pid_t start_ebd(const char *ebd, const char *rules, const char *data, int port)
{
    return start_ebd_on(ebd, rules, data, port, true);
}

static void stop_ebd(pid_t pid)
{
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sends `rate` events a second for `secs` seconds, one per request on one connection, each
 * carrying its send time; the rule's transform passes it to the receiver.  Waits up to grace
 * seconds for the last deliveries.  With all_sent, the percentiles are of the events sent, those
 * not delivered counting as slower than any (a percentile that falls on one is -1); else of the
 * events delivered. */
/* Posts rate events a second for secs seconds to bus at port, one connection, each carrying
 * its sending time; their ids count from id0. */
static void post_at_rate(int port, const char *bus, double rate, double secs, size_t id0)
{
    int fd = connect_to(port);
    char req[2048], buf[4096], body[1024];
    size_t total = (size_t)(rate * secs);
    double t0 = now_s();
    for (size_t k = 0; k < total && fd >= 0; k++) {
        double due = t0 + (double)k / rate;
        while (now_s() < due) {
            struct timespec ts = { 0, 50000 };
            nanosleep(&ts, NULL);
        }
        int n = snprintf(body, sizeof body, "{\"specversion\":\"1.0\",\"id\":\"lat-%zu\",\"source\":"
                         "\"bench\",\"type\":\"bench.latency\",\"data\":{\"sent\":%" PRId64 "}}",
                         id0 + k, real_us());
        int rn = snprintf(req, sizeof req, "POST /v1/buses/%s/events HTTP/1.1\r\nHost: x\r\n"
                          "Content-Type: application/cloudevents+json\r\nContent-Length: %d\r\n\r\n%s",
                          bus, n, body);
        roundtrip(fd, req, (size_t)rn, buf, sizeof buf);
    }
    if (fd >= 0)
        close(fd);
}

/* Waits up to grace seconds for total deliveries, then the latencies' p50, p99 and max (ms)
 * of what came: over total when all_sent (a missing one counts as slower than all), else over
 * what came; -1 for a rank that did not come. */
static void latency_ranks(size_t total, double grace, bool all_sent, double *p50, double *p99,
                          double *pmax, size_t *delivered)
{
    for (double end = now_s() + grace; now_s() < end && atomic_load(&nlat) < total;) {
        struct timespec ts = { 0, 20000000 };
        nanosleep(&ts, NULL);
    }
    size_t n = atomic_load(&nlat) < cap_lat ? atomic_load(&nlat) : cap_lat;
    qsort(lat_us, n, sizeof *lat_us, cmp64);
    *delivered = n;
    size_t base = all_sent ? total : n, i50 = base / 2, i99 = (size_t)((double)base * 0.99);
    *p50 = i50 < n ? lat_us[i50] / 1000.0 : n ? -1 : 0;
    *p99 = i99 < n ? lat_us[i99] / 1000.0 : n ? -1 : 0;
    *pmax = n == base && n ? lat_us[n - 1] / 1000.0 : n ? -1 : 0;
}

static void run_latency(int port, const char *bus, int rate, double secs, double grace, bool all_sent,
                        double *p50, double *p99, double *pmax, size_t *delivered)
{
    post_at_rate(port, bus, rate, secs, 0);
    latency_ranks((size_t)(rate * secs), grace, all_sent, p50, p99, pmax, delivered);
}

/* ---- the rule-count table and the fan-out rows (issue 11) ----------------------------------- */

enum { TABLE_ROWS = 4, USED_EVENTS = 10000, TARGETS = 20, MAX_RUNS = 9, FAN_RULES = 1000 };
static const unsigned table_rules[TABLE_ROWS] = { 10, 1000, 10000, 100000 };

static void die(const char *what)
{
    fprintf(stderr, "bench: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* Runs a shell command; false if it did not exit 0. */
static bool sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static bool sh(const char *fmt, ...)
{
    char cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd) == 0;
}

/* The first line a shell command prints, or "?". */
static void sh_line(const char *cmd, char *buf, size_t n)
{
    snprintf(buf, n, "?");
    FILE *p = popen(cmd, "r");
    if (!p)
        return;
    if (fgets(buf, (int)n, p))
        buf[strcspn(buf, "\n")] = 0;
    pclose(p);
}

static double median(const double *v, int n)
{
    if (n <= 0)
        return 0;
    double s[MAX_RUNS];
    memcpy(s, v, (size_t)n * sizeof *s);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (s[j] < s[i]) {
                double t = s[i]; s[i] = s[j]; s[j] = t;
            }
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* The daemon's process, from /proc: threads, a field of status in kB, CPU ticks (user + system). */
static long proc_threads(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    long n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static long proc_status_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    size_t k = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, k) && line[k] == ':')
            kb = atol(line + k + 1);
    if (f)
        fclose(f);
    return kb;
}

static long proc_cpu_ticks(pid_t pid)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');     /* after the command's name: field 3 (state) on */
    if (!p)
        return -1;
    long utime = 0, stime = 0;
    /* fields 3..13 skipped, then 14 utime and 15 stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &utime, &stime) != 2)
        return -1;
    return utime + stime;
}

/* This process's CPU time (user + system), in seconds. */
static double self_cpu(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

/* GET path: the status, or -1 (no answer within 2 s counts as none). */
static int get_status(int port, const char *path)
{
    int fd = connect_to(port);
    if (fd < 0)
        return -1;
    struct timeval tv = { 2, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[256], buf[4096];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    int st = roundtrip(fd, req, (size_t)n, buf, sizeof buf);
    close(fd);
    return st;
}

/* Starts ebd on a new data directory, its standard error appended to log, and waits for
 * /healthz to answer 200: returns its pid and the time from before the fork to that answer in
 * *secs.  -1, with why, when it exits first or does not answer within limit seconds (then it is
 * killed with SIGKILL). */
static pid_t start_timed(const char *ebd, const char *rules, const char *data, int port, const char *log,
                         double limit, double *secs, char *why, size_t whyn)
{
    if (!sh("rm -rf '%s'", data)) {
        snprintf(why, whyn, "cannot remove %s", data);
        return -1;
    }
    sync();
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    double t0 = now_s();
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_APPEND | O_CREAT, 0644), null = open("/dev/null", O_WRONLY);
        dup2(fd >= 0 ? fd : null, 2);
        dup2(null, 1);
        execl(ebd, "ebd", "--rules", rules, "--data", data, "--listen", listen, (char *)NULL);
        _exit(127);
    }
    for (;;) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            snprintf(why, whyn, "ebd exited (%s %d) before /healthz answered; see %s",
                     WIFEXITED(status) ? "status" : "signal",
                     WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), log);
            return -1;
        }
        if (get_status(port, "/healthz") == 200) {
            *secs = now_s() - t0;
            return pid;
        }
        if (now_s() - t0 > limit) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            snprintf(why, whyn, "did not start in %.0f s", limit);
            return -1;
        }
        usleep(5000);
    }
}

/* SIGTERM, then SIGKILL if it has not stopped within 120 s. */
static void stop_bounded(pid_t pid)
{
    kill(pid, SIGTERM);
    double t0 = now_s();
    while (waitpid(pid, NULL, WNOHANG) != pid) {
        if (now_s() - t0 > 120) {
            fprintf(stderr, "bench: ebd did not stop within 120 s of SIGTERM: killed\n");
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return;
        }
        usleep(10000);
    }
}

/* Lines written to a set of files so far, read incrementally (a file may not exist yet). */
typedef struct {
    char **paths;
    int *fds;
    size_t n;
    uint64_t lines;
} line_counter;

static void counter_init(line_counter *c, const char *dir, const char *prefix, size_t n)
{
    c->n = n;
    c->lines = 0;
    c->paths = calloc(n, sizeof *c->paths);
    c->fds = malloc(n * sizeof *c->fds);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(dir) + strlen(prefix) + 32;
        c->paths[i] = malloc(len);
        snprintf(c->paths[i], len, "%s/%s%zu.jsonl", dir, prefix, i);
        c->fds[i] = -1;
    }
}

static uint64_t counter_poll(line_counter *c)
{
    static char buf[1 << 16];
    for (size_t i = 0; i < c->n; i++) {
        if (c->fds[i] < 0 && (c->fds[i] = open(c->paths[i], O_RDONLY)) < 0)
            continue;
        ssize_t r;
        while ((r = read(c->fds[i], buf, sizeof buf)) > 0)
            for (ssize_t k = 0; k < r; k++)
                c->lines += buf[k] == '\n';
    }
    return c->lines;
}

static void counter_free(line_counter *c)
{
    for (size_t i = 0; i < c->n; i++) {
        if (c->fds[i] >= 0)
            close(c->fds[i]);
        free(c->paths[i]);
    }
    free(c->paths);
    free(c->fds);
}

/* Waits until the files hold want lines, or nothing has come for `quiet` seconds, or limit
 * seconds have passed; returns the lines, and in *at when the last of them was seen. */
static uint64_t wait_lines(line_counter *c, uint64_t want, double quiet, double limit, double *at)
{
    double t0 = now_s(), last = t0;
    uint64_t seen = counter_poll(c);
    *at = t0;
    while (seen < want) {
        double t = now_s();
        if (t - last > quiet || t - t0 > limit)
            break;
        usleep(5000);
        uint64_t n = counter_poll(c);
        if (n != seen) {
            seen = n;
            last = *at = now_s();
        }
    }
    return seen;
}

/* The scaling workload's rules: the first n patterns of rules_100000.jsonl, rule rI delivering
 * {"id": ...} to file target f(I mod 20), and the latency rule on the same bus. */
static bool write_table_rules(const char *jsonl, unsigned n, const char *path, int rport)
{
    FILE *in = fopen(jsonl, "r"), *out = in ? fopen(path, "w") : NULL;
    if (!out) {
        if (in)
            fclose(in);
        return false;
    }
    fprintf(out, "# generated by bench/ingest.c: %u rules of %s\nbus b {\n  fsync interval 10ms\n}\n", n, jsonl);
    for (int j = 0; j < TARGETS; j++)
        fprintf(out, "target f%d file \"out/f%d.jsonl\"\n", j, j);
    fprintf(out, "target hook http \"http://127.0.0.1:%d/hook\" {\n  retry none\n}\n"
                 "rule latency on b {\n  match type == \"bench.latency\"\n"
                 "  transform {\"sent\": data.sent, \"id\": $id}\n  to hook\n}\n", rport);
    char *line = NULL;
    size_t cap = 0;
    unsigned i = 0;
    while (i < n && getline(&line, &cap, in) > 0) {
        line[strcspn(line, "\r\n")] = 0;
        if (*line) {
            fprintf(out, "rule r%u on b { pattern %s transform {\"id\": $id} to f%u }\n", i, line, i % TARGETS);
            i++;
        }
    }
    free(line);
    fclose(in);
    return fclose(out) == 0 && i == n;
}

/* cnt[k]: how many scaling rules event line k+1 of events matches, as `ebc test` says. */
static bool match_counts(const char *ebc, const char *rules, const char *events, uint32_t *cnt, size_t n)
{
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s' test '%s' '%s'", ebc, rules, events);
    FILE *p = popen(cmd, "r");
    if (!p)
        return false;
    char *line = NULL;
    size_t cap = 0, seen = 0;
    while (getline(&line, &cap, p) > 0) {
        if (line[0] < '0' || line[0] > '9')
            continue;                       /* a delivery line */
        char *end;
        unsigned long k = strtoul(line, &end, 10);
        if (k < 1 || k > n || *end != ':')
            continue;
        uint32_t c = 0;
        for (char *t = strtok(end + 1, " \n"); t; t = strtok(NULL, " \n")) {
            if (!strcmp(t, "error:"))
                break;
            c += strcmp(t, "-") && strcmp(t, "latency");
        }
        cnt[k - 1] = c;
        seen++;
    }
    free(line);
    int st = pclose(p);
    /* status 4: a transform failed for some event (none should) */
    return seen == n && (st == 0 || (WIFEXITED(st) && WEXITSTATUS(st) == 4));
}

/* Posts n events of `type` one per request on one connection; returns how many got 202. */
static int post_events(int port, const char *bus, const char *type, int n)
{
    int fd = connect_to(port), ok = 0;
    char req[2048], buf[4096], body[512];
    for (int k = 0; k < n && fd >= 0; k++) {
        int bn = snprintf(body, sizeof body, "{\"specversion\":\"1.0\",\"id\":\"%s-%d\",\"source\":\"bench\","
                          "\"type\":\"%s\",\"data\":{\"k\":%d}}", type, k, type, k);
        int rn = snprintf(req, sizeof req, "POST /v1/buses/%s/events HTTP/1.1\r\nHost: x\r\n"
                          "Content-Type: application/cloudevents+json\r\nContent-Length: %d\r\n\r\n%s",
                          bus, bn, body);
        ok += roundtrip(fd, req, (size_t)rn, buf, sizeof buf) == 202;
    }
    if (fd >= 0)
        close(fd);
    return ok;
}

typedef struct {
    unsigned rules;
    bool run;                          /* within --max-rules */
    char why[256], ebr_why[256];       /* why a start failed ("" if none did) */
    double compile_s;
    long ebc_bytes;
    int runs, ebr_runs;                /* the runs that started */
    double start_ebc[MAX_RUNS], start_ebr[MAX_RUNS], threads[MAX_RUNS], rss_mb[MAX_RUNS],
           hwm_mb[MAX_RUNS], hwm_load_mb[MAX_RUNS], idle_pct[MAX_RUNS], ev_s[MAX_RUNS],
           p50[MAX_RUNS], p99[MAX_RUNS], pmax[MAX_RUNS], per_event[MAX_RUNS], drain_s[MAX_RUNS];
    size_t lat_delivered[MAX_RUNS];
    uint64_t errors, acked[MAX_RUNS], expected[MAX_RUNS], delivered[MAX_RUNS];
} table_row;

enum { NFANS = 4 };

typedef struct {
    const char *label;
    bool http;
    int batch;                    /* http: the target's `batch` (0: none) */
    int events, runs;
    uint64_t requests[MAX_RUNS];  /* http: the requests that carried them */
    char why[256];
    double dps[MAX_RUNS], secs[MAX_RUNS], post_s[MAX_RUNS], ebd_cpu[MAX_RUNS], driver_cpu[MAX_RUNS];
    uint64_t want, got[MAX_RUNS];
} fan_row;

typedef struct {
    const char *ebd, *ebc, *work, *shared;
    int port, conns, runs;
    double secs, start_limit, idle_secs, drain_limit;
    unsigned max_rules;
    bool fanout;
    const char *label;                 /* what the ebd is, for the results */
} table_opts;

/* One row of the table: compile, count the deliveries each event makes, then `runs` runs (start
 * from the .ebc, idle, latency, throughput, deliveries), then `runs` starts from the .ebr. */
static void table_row_run(const table_opts *o, table_row *row, const char *rules_jsonl, char *const *lines,
                          const size_t *lens, size_t maxlen, const char *events_file, int rport)
{
    unsigned n = row->rules;
    char ebr[4200], ebcf[4200], data[4200], log[4200];
    snprintf(ebr, sizeof ebr, "%s/rules-%u.ebr", o->work, n);
    snprintf(ebcf, sizeof ebcf, "%s/rules-%u.ebc", o->work, n);
    snprintf(data, sizeof data, "%s/rules-data", o->work);
    snprintf(log, sizeof log, "%s/ebd-rules-%u.log", o->work, n);
    unlink(log);
    if (!write_table_rules(rules_jsonl, n, ebr, rport)) {
        snprintf(row->why, sizeof row->why, "cannot write the rules from %.200s", rules_jsonl);
        return;
    }
    double t0 = now_s();
    if (!sh("'%s' compile '%s' -o '%s'", o->ebc, ebr, ebcf)) {
        snprintf(row->why, sizeof row->why, "ebc compile failed");
        return;
    }
    row->compile_s = now_s() - t0;
    struct stat st;
    row->ebc_bytes = stat(ebcf, &st) == 0 ? (long)st.st_size : -1;
    uint32_t *cnt = calloc(USED_EVENTS, sizeof *cnt);
    if (!match_counts(o->ebc, ebcf, events_file, cnt, USED_EVENTS)) {
        snprintf(row->why, sizeof row->why, "ebc test did not say which rules the events match");
        free(cnt);
        return;
    }
    uint64_t all = 0;
    for (size_t k = 0; k < USED_EVENTS; k++)
        all += cnt[k];
    printf("rules %u: compiled in %.2f s (%.1f MB); the %d events posted make %.2f deliveries each on average\n",
           n, row->compile_s, row->ebc_bytes / 1e6, USED_EVENTS, (double)all / USED_EVENTS);
    fflush(stdout);
    _Atomic uint32_t *acked = calloc(USED_EVENTS, sizeof *acked);
    for (int r = 0; r < o->runs; r++) {
        double secs;
        pid_t pid = start_timed(o->ebd, ebcf, data, o->port, log, o->start_limit, &secs, row->why,
                                sizeof row->why);
        if (pid < 0) {
            printf("rules %u, run %d: %s\n", n, r + 1, row->why);
            break;
        }
        row->start_ebc[r] = secs;
        long c0 = proc_cpu_ticks(pid);
        double i0 = now_s();
        usleep((useconds_t)(o->idle_secs * 1e6));
        long c1 = proc_cpu_ticks(pid);
        double el = now_s() - i0;
        row->idle_pct[r] = (double)(c1 - c0) / (double)sysconf(_SC_CLK_TCK) / el * 100;
        row->threads[r] = (double)proc_threads(pid);
        row->rss_mb[r] = proc_status_kb(pid, "VmRSS") / 1024.0;
        row->hwm_mb[r] = proc_status_kb(pid, "VmHWM") / 1024.0;
        atomic_store(&nlat, 0);
        run_latency(o->port, "b", 5000, o->secs, 60, true, &row->p50[r], &row->p99[r], &row->pmax[r],
                    &row->lat_delivered[r]);
        for (size_t k = 0; k < USED_EVENTS; k++)
            atomic_store(&acked[k], 0);
        _Atomic size_t next = 0;
        loader proto = { .port = o->port, .batch = 1, .bus = "b", .lines = lines, .lens = lens,
                         .nlines = USED_EVENTS, .maxlen = maxlen, .next = &next, .acked = acked };
        double rq;
        uint64_t errors;
        run_loaders(&proto, o->conns, o->secs, &rq, &row->ev_s[r], &errors);
        row->errors += errors;
        uint64_t want = 0, events = 0;
        for (size_t k = 0; k < USED_EVENTS; k++) {
            want += (uint64_t)atomic_load(&acked[k]) * cnt[k];
            events += atomic_load(&acked[k]);
        }
        line_counter lc;
        char outdir[4300];
        snprintf(outdir, sizeof outdir, "%s/out", data);
        counter_init(&lc, outdir, "f", TARGETS);
        double ended = now_s(), at;
        uint64_t got = wait_lines(&lc, want, 30, o->drain_limit, &at);
        counter_free(&lc);
        row->acked[r] = events;
        row->expected[r] = want;
        row->delivered[r] = got;
        row->per_event[r] = events ? (double)want / (double)events : 0;
        row->drain_s[r] = got ? at - ended : 0;
        row->hwm_load_mb[r] = proc_status_kb(pid, "VmHWM") / 1024.0;
        stop_bounded(pid);
        row->runs = r + 1;
        printf("rules %u, run %d: start %.2f s, %.0f threads, RSS %.0f MB (peak %.0f), idle CPU %.1f%%, "
               "latency p50 %.2f p99 %.2f ms (%zu of %.0f), ingest %.0f events/s (%" PRIu64 " errors), "
               "%" PRIu64 " of %" PRIu64 " deliveries (%.2f per event) %.1f s after the last post, peak RSS %.0f MB\n",
               n, r + 1, secs, row->threads[r], row->rss_mb[r], row->hwm_mb[r], row->idle_pct[r], row->p50[r],
               row->p99[r], row->lat_delivered[r], 5000 * o->secs, row->ev_s[r], errors, got, want,
               row->per_event[r], row->drain_s[r], row->hwm_load_mb[r]);
        fflush(stdout);
    }
    free(cnt);
    free((void *)acked);
    if (!row->runs) {
        snprintf(row->ebr_why, sizeof row->ebr_why, "not tried");
        return;
    }
    for (int r = 0; r < o->runs; r++) {
        double secs;
        pid_t pid = start_timed(o->ebd, ebr, data, o->port, log, o->start_limit, &secs, row->ebr_why,
                                sizeof row->ebr_why);
        if (pid < 0) {
            printf("rules %u, .ebr start %d: %s\n", n, r + 1, row->ebr_why);
            break;
        }
        stop_bounded(pid);
        row->start_ebr[r] = secs;
        row->ebr_runs = r + 1;
        printf("rules %u, .ebr start %d: %.2f s\n", n, r + 1, secs);
        fflush(stdout);
    }
    sh("rm -rf '%s'", data);
}

static bool write_fan_rules(const char *path, bool http, int batch, int fport)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return false;
    fprintf(f, "# generated by bench/ingest.c: %d rules that match the same events\nbus b {\n  fsync interval 10ms\n}\n",
            FAN_RULES);
    if (http && batch)
        fprintf(f, "target fan http \"http://127.0.0.1:%d/fan\" { batch %d }\n", fport, batch);
    else if (http)
        fprintf(f, "target fan http \"http://127.0.0.1:%d/fan\"\n", fport);
    for (int i = 0; i < FAN_RULES; i++) {
        if (!http)
            fprintf(f, "target t%d file \"fan/t%d.jsonl\"\n", i, i);
        fprintf(f, "rule fan%d on b { match type == \"bench.fanout\" to %s", i, http ? "fan" : "");
        if (!http)
            fprintf(f, "t%d", i);
        fprintf(f, " }\n");
    }
    return fclose(f) == 0;
}

/* A fan-out row: `runs` runs, each on a new ebd: post the events, wait for the 1,000 deliveries
 * of each. */
static void fan_row_run(const table_opts *o, fan_row *row, int fport)
{
    char ebr[4200], ebcf[4200], data[4200], log[4200], outdir[4300];
    const char *kind = row->http ? (row->batch ? "http-batch" : "http") : "file";
    snprintf(ebr, sizeof ebr, "%s/fanout-%s.ebr", o->work, kind);
    snprintf(ebcf, sizeof ebcf, "%s/fanout-%s.ebc", o->work, kind);
    snprintf(data, sizeof data, "%s/fanout-data", o->work);
    snprintf(log, sizeof log, "%s/ebd-fanout-%s.log", o->work, kind);
    snprintf(outdir, sizeof outdir, "%s/fan", data);
    unlink(log);
    if (!write_fan_rules(ebr, row->http, row->batch, fport) || !sh("'%s' compile '%s' -o '%s'", o->ebc, ebr, ebcf)) {
        snprintf(row->why, sizeof row->why, "cannot write or compile the fan-out rules");
        return;
    }
    row->want = (uint64_t)row->events * FAN_RULES;
    for (int r = 0; r < o->runs; r++) {
        double secs;
        pid_t pid = start_timed(o->ebd, ebcf, data, o->port, log, o->start_limit, &secs, row->why,
                                sizeof row->why);
        if (pid < 0) {
            printf("fan-out %s, run %d: %s\n", kind, r + 1, row->why);
            break;
        }
        atomic_store(&fan_count, 0);
        atomic_store(&fan_requests, 0);
        line_counter lc;
        counter_init(&lc, outdir, "t", FAN_RULES);
        double t0 = now_s(), self0 = self_cpu();
        int64_t t0ns = mono_ns();
        long ebd0 = proc_cpu_ticks(pid);
        int ok = post_events(o->port, "b", "bench.fanout", row->events);
        row->post_s[r] = now_s() - t0;
        uint64_t got;
        double end;
        if (row->http) {
            uint64_t seen = atomic_load(&fan_count);
            double last = now_s();
            while (seen < row->want && now_s() - last < 30 && now_s() - t0 < 300) {
                usleep(5000);
                uint64_t k = atomic_load(&fan_count);
                if (k != seen)
                    seen = k, last = now_s();
            }
            got = seen;
            row->requests[r] = atomic_load(&fan_requests);
            end = t0 + (double)(atomic_load(&fan_last_ns) - t0ns) / 1e9;
        } else {
            got = wait_lines(&lc, row->want, 30, 300, &end);
        }
        counter_free(&lc);
        row->ebd_cpu[r] = (double)(proc_cpu_ticks(pid) - ebd0) / (double)sysconf(_SC_CLK_TCK);
        row->driver_cpu[r] = self_cpu() - self0;
        stop_bounded(pid);
        if (ok != row->events)
            snprintf(row->why, sizeof row->why, "%d of %d events acknowledged", ok, row->events);
        row->got[r] = got;
        row->secs[r] = end - t0;
        row->dps[r] = row->secs[r] > 0 ? (double)got / row->secs[r] : 0;
        row->runs = r + 1;
        printf("fan-out %s, %d events, run %d: %" PRIu64 " of %" PRIu64 " deliveries in %.2f s (posting took %.2f s): "
               "%.0f deliveries/s; CPU: ebd %.1f s, this driver %.1f s\n", kind, row->events, r + 1, got, row->want,
               row->secs[r], row->post_s[r], row->dps[r], row->ebd_cpu[r], row->driver_cpu[r]);
        fflush(stdout);
    }
    sh("rm -rf '%s'", data);
}

/* Loads the first n lines of path; false if it has fewer. */
static bool load_lines(const char *path, size_t n, char **lines, size_t *lens, size_t *maxlen)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    char *line = NULL;
    size_t cap = 0, k = 0;
    ssize_t len;
    *maxlen = 0;
    while (k < n && (len = getline(&line, &cap, f)) > 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (!len)
            continue;
        lines[k] = strdup(line);
        lens[k] = (size_t)len;
        if ((size_t)len > *maxlen)
            *maxlen = (size_t)len;
        k++;
    }
    free(line);
    fclose(f);
    return k == n;
}

/* 100000 -> "100,000" */
static const char *commas(char *buf, size_t n, uint64_t v)
{
    char d[32];
    int len = snprintf(d, sizeof d, "%" PRIu64, v), k = 0;
    for (int i = 0; i < len && (size_t)k + 2 < n; i++) {
        if (i && (len - i) % 3 == 0)
            buf[k++] = ',';
        buf[k++] = d[i];
    }
    buf[k] = 0;
    return buf;
}

static void fmt_count(char *buf, size_t n, double v)
{
    if (v >= 1e6)
        snprintf(buf, n, "%.2fM", v / 1e6);
    else if (v >= 1e3)
        snprintf(buf, n, "%.1fK", v / 1e3);
    else
        snprintf(buf, n, "%.0f", v);
}

/* A latency: "1.23 ms", or for one not delivered (-1) "not delivered". */
static const char *fmt_ms(char *buf, size_t n, double v)
{
    if (v < 0)
        snprintf(buf, n, "not delivered");
    else
        snprintf(buf, n, "%.2f ms", v);
    return buf;
}

static double lat_key(double v)
{
    return v < 0 ? 1e300 : v;
}

static void list_runs(FILE *md, const char *name, const double *v, int n, const char *fmt)
{
    fprintf(md, "%s ", name);
    for (int i = 0; i < n; i++) {
        fprintf(md, i ? ", " : "");
        fprintf(md, fmt, v[i]);
    }
}

/* Runs the rule-count table and the fan-out rows; writes their section of ingest.md to md.
 * Returns false if the workload could not be had. */
static bool rules_table(const table_opts *o, int rport, FILE *md)
{
    char dir193[4200], jsonl[4300], events[4300], used[4300], machine[512], tree[128];
    snprintf(dir193, sizeof dir193, "%s/issue193", o->work);
    snprintf(jsonl, sizeof jsonl, "%s/rules_100000.jsonl", dir193);
    snprintf(events, sizeof events, "%s/events.jsonl", dir193);
    snprintf(used, sizeof used, "%s/ingest-events.jsonl", o->work);
    if (access(events, R_OK) != 0 || access(jsonl, R_OK) != 0) {
        fprintf(stderr, "bench: generating the issue193 workload into %s\n", dir193);
        if (!sh("mkdir -p '%s' && python3 '%s/scaling/gen_scaling.py' --out '%s' >/dev/null", dir193, o->shared,
                dir193)) {
            fprintf(stderr, "bench: gen_scaling.py failed (python3 and %s/scaling are needed)\n", o->shared);
            return false;
        }
    }
    char **lines = calloc(USED_EVENTS, sizeof *lines);
    size_t *lens = calloc(USED_EVENTS, sizeof *lens), maxlen;
    if (!load_lines(events, USED_EVENTS, lines, lens, &maxlen)) {
        fprintf(stderr, "bench: %s has fewer than %d events\n", events, USED_EVENTS);
        return false;
    }
    FILE *uf = fopen(used, "w");
    if (!uf)
        die(used);
    for (size_t k = 0; k < USED_EVENTS; k++)
        fprintf(uf, "%s\n", lines[k]);
    fclose(uf);
    sh_line("(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'; nproc; uname -r; date -u +%F) | paste -sd,",
            machine, sizeof machine);
    sh_line("echo \"the tree $(git describe --always --dirty 2>/dev/null || echo '(unknown)')\"", tree, sizeof tree);

    table_row rows[TABLE_ROWS];
    memset(rows, 0, sizeof rows);
    for (int i = 0; i < TABLE_ROWS; i++) {
        rows[i].rules = table_rules[i];
        rows[i].run = table_rules[i] <= o->max_rules || (i == 0 && o->max_rules > 0);
        if (rows[i].run)
            table_row_run(o, &rows[i], jsonl, lines, lens, maxlen, used, rport);
    }
    fan_row fans[NFANS] = {
        { .label = "1 event to 1,000 rules, each to its own file target", .http = false, .events = 300 },
        { .label = "1 event to 1,000 rules, each to its own file target", .http = false, .events = 3000 },
        { .label = "1 event to 1,000 rules, all to one http target (the driver's receiver)", .http = true, .events = 300 },
        { .label = "1 event to 1,000 rules, all to one http target with `batch 100`", .http = true, .batch = 100,
          .events = 3000 },
    };
    if (o->fanout) {
        /* The http row's receiver: epoll and two threads, so that a thousand connections kept
         * alive cost it no thousand threads (the latency receiver has a thread per connection). */
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)(rport + 1)) };
        sa.sin_addr.s_addr = htonl(0x7f000001);
        struct MHD_Daemon *fan = MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD, (uint16_t)(rport + 1), NULL, NULL,
                                                  on_delivery, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                                                  MHD_OPTION_THREAD_POOL_SIZE, 2u,
                                                  MHD_OPTION_CONNECTION_LIMIT, 50000u, MHD_OPTION_END);
        if (!fan)
            fprintf(stderr, "bench: the fan-out receiver did not start on port %d\n", rport + 1);
        for (int i = 0; i < NFANS; i++)
            if (fan || !fans[i].http)
                fan_row_run(o, &fans[i], rport + 1);
            else
                snprintf(fans[i].why, sizeof fans[i].why, "the receiver did not start");
        if (fan)
            MHD_stop_daemon(fan);
    }

    char nev[32];
    fprintf(md, "<!-- rules-table begin: written by bench_ingest; `bench_ingest --rules-table` rewrites only this part -->\n");
    fprintf(md, "## Rule count (issue 11)\n\n");
    fprintf(md, "Machine: %s (model, cores, kernel, date); ebd: %s; ebd and the load generator share it.\n\n",
            machine, o->label ? o->label : tree);
    fprintf(md, "Rules: the first N patterns of the scaling workload (`rules_100000.jsonl` of "
                "../shared/data/scaling/gen_scaling.py), rule rI as `rule rI on b { pattern P transform {\"id\": $id} "
                "to fJ }` with J = I mod %d (%d file targets, `fsync interval 10ms` on the bus), and the latency rule on "
                "the same bus. Each figure is the median of %d run(s), each on a new ebd and data directory (fewer where a "
                "start failed: see the runs below). Start: from the fork and exec of ebd to /healthz answering 200 (.ebc "
                "compiled beforehand by `ebc compile`; .ebr compiled by ebd at start). Threads, RSS and peak (VmHWM) "
                "after the idle window; peak after load: VmHWM once the deliveries are done. Idle CPU: utime+stime of ebd "
                "over %.0f s with no traffic, right after start, in %% of one core. Ingest: %d connections, one event per "
                "request, %.0f s, the first %s events of the workload's events.jsonl in turn (754-1,168 bytes); vs 10: "
                "ratio to the 10-rule row of the same invocation. Latency: %.0f s at 5K events/s of a type no scaling "
                "rule matches, ingest to the driver's webhook (the run with the median p99; percentiles of the events "
                "sent, one not delivered within 60 s of the last post counting as slower than any). Deliveries per event: what "
                "the rules make of the events acknowledged (from `ebc test` on the same events), and the lines found "
                "in the 20 files (waiting until they are all there, at most %.0f s, and at most 30 s without a new line).\n\n",
            TARGETS, TARGETS, o->runs, o->idle_secs, o->conns, o->secs, commas(nev, sizeof nev, USED_EVENTS), o->secs,
            o->drain_limit);
    fprintf(md, "| rules | compile, .ebc size | start (.ebc) | start (.ebr) | threads | RSS | peak RSS (after load) "
                "| idle CPU | ingest events/s | vs 10 | latency p50 / p99 | deliveries per event | delivered (after the last post) |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    double base = rows[0].runs ? median(rows[0].ev_s, rows[0].runs) : 0;
    for (int i = 0; i < TABLE_ROWS; i++) {
        table_row *w = &rows[i];
        char nr[32];
        fprintf(md, "| %s | ", commas(nr, sizeof nr, w->rules));
        if (!w->run) {
            fprintf(md, "not run (--max-rules %u) | | | | | | | | | | | |\n", o->max_rules);
            continue;
        }
        if (w->compile_s <= 0) {
            fprintf(md, "%s | | | | | | | | | | | |\n", w->why);
            continue;
        }
        fprintf(md, "%.2f s, %.1f MB | ", w->compile_s, w->ebc_bytes / 1e6);
        if (!w->runs) {
            fprintf(md, "%s | not tried | | | | | | | | | |\n", w->why);
            continue;
        }
        int n = w->runs;
        char ev[32];
        fmt_count(ev, sizeof ev, median(w->ev_s, n));
        double ebr = w->ebr_runs ? median(w->start_ebr, w->ebr_runs) : -1;
        char ebrs[300];
        if (ebr >= 0)
            snprintf(ebrs, sizeof ebrs, "%.2f s", ebr);
        else
            snprintf(ebrs, sizeof ebrs, "%s", w->ebr_why);
        /* latency: the run with the median p99 (one not delivered counts as slower than any) */
        int mid = 0;
        for (int r = 0; r < n; r++) {
            int below = 0;
            for (int q = 0; q < n; q++)
                below += lat_key(w->p99[q]) < lat_key(w->p99[r]) || (w->p99[q] == w->p99[r] && q < r);
            if (below == (n - 1) / 2)
                mid = r;
        }
        char l50[32], l99[32], lat[160];
        snprintf(lat, sizeof lat, "%s / %s", fmt_ms(l50, sizeof l50, w->p50[mid]), fmt_ms(l99, sizeof l99, w->p99[mid]));
        if (w->lat_delivered[mid] < (size_t)(5000 * o->secs))
            snprintf(lat + strlen(lat), sizeof lat - strlen(lat), " (%zu of %.0f delivered within 60 s)",
                     w->lat_delivered[mid], 5000 * o->secs);
        double per = median(w->per_event, n);
        fprintf(md, "%.2f s | %s | %.0f | %.0f MB | %.0f MB (%.0f MB) | %.1f%% | %s | %.2f | %s | %.*f | ",
                median(w->start_ebc, n), ebrs, median(w->threads, n), median(w->rss_mb, n),
                median(w->hwm_mb, n), median(w->hwm_load_mb, n), median(w->idle_pct, n), ev,
                base > 0 ? median(w->ev_s, n) / base : 0, lat, per < 0.1 ? 4 : 2, per);
        for (int r = 0; r < n; r++) {
            char d[32], e[32];
            fprintf(md, "%s%s of %s (%.1f s)", r ? ", " : "", commas(d, sizeof d, w->delivered[r]),
                    commas(e, sizeof e, w->expected[r]), w->drain_s[r]);
        }
        fprintf(md, " |\n");
    }
    fprintf(md, "\nThe runs, in order:\n\n");
    for (int i = 0; i < TABLE_ROWS; i++) {
        table_row *w = &rows[i];
        if (!w->run || w->compile_s <= 0)
            continue;
        char nr[32];
        fprintf(md, "- %s rules: ", commas(nr, sizeof nr, w->rules));
        if (w->runs) {
            list_runs(md, "start (.ebc)", w->start_ebc, w->runs, "%.2f");
            list_runs(md, " s; .ebr", w->start_ebr, w->ebr_runs, "%.2f");
            list_runs(md, " s; idle CPU", w->idle_pct, w->runs, "%.1f%%");
            list_runs(md, "; events/s", w->ev_s, w->runs, "%.0f");
            fprintf(md, " (%" PRIu64 " errors)", w->errors);
            fprintf(md, "; latency p99 ");
            for (int r = 0; r < w->runs; r++) {
                char l[32];
                fprintf(md, "%s%s", r ? ", " : "", fmt_ms(l, sizeof l, w->p99[r]));
            }
            fprintf(md, ", delivered ");
            for (int r = 0; r < w->runs; r++)
                fprintf(md, "%s%zu", r ? ", " : "", w->lat_delivered[r]);
            fprintf(md, " of %.0f", 5000 * o->secs);
        }
        if (*w->why)
            fprintf(md, "%s.ebc: %s", w->runs ? "; " : "", w->why);
        if (*w->ebr_why && w->runs)
            fprintf(md, "; .ebr: %s", w->ebr_why);
        fprintf(md, "\n");
    }
    if (o->fanout) {
        fprintf(md, "\nFan-out (issue 11, item 5): %s rules `rule fanI on b { match type == \"bench.fanout\" to ... }` "
                    "(the whole event delivered), one ebd per run; the events posted one per request on one "
                    "connection; the time from the first post to the last delivery (files: their lines counted as "
                    "they grow, every 5 ms; http: the receiver's clock at the last request). CPU: the time ebd and this driver "
                    "(the line counting, or the receiver: libmicrohttpd, epoll, 2 threads) spent over the same span. "
                    "Median of %d run(s).\n\n",
                commas(nev, sizeof nev, FAN_RULES), o->runs);
        fprintf(md, "| fan-out | events | deliveries | first post to last delivery | deliveries/s | CPU: ebd / driver "
                    "| runs (deliveries/s) |\n|---|---|---|---|---|---|---|\n");
        for (int i = 0; i < NFANS; i++) {
            fan_row *f = &fans[i];
            fprintf(md, "| %s | %d | ", f->label, f->events);
            if (!f->runs) {
                fprintf(md, "%s | | | | |\n", f->why);
                continue;
            }
            char d[32];
            fmt_count(d, sizeof d, median(f->dps, f->runs));
            char w[32];
            fprintf(md, "%s | %.2f s | %s | %.1f s / %.1f s | ", commas(w, sizeof w, f->want), median(f->secs, f->runs), d,
                    median(f->ebd_cpu, f->runs), median(f->driver_cpu, f->runs));
            for (int r = 0; r < f->runs; r++) {
                fprintf(md, "%s%.0f", r ? ", " : "", f->dps[r]);
                if (f->got[r] < f->want)
                    fprintf(md, " (only %s delivered)", commas(w, sizeof w, f->got[r]));
                else if (f->got[r] > f->want)
                    fprintf(md, " (%s deliveries: some delivered again after a time-out)", commas(w, sizeof w, f->got[r]));
                if (f->batch)
                    fprintf(md, " (%s requests)", commas(w, sizeof w, f->requests[r]));
            }
            if (*f->why)
                fprintf(md, "; %s", f->why);
            fprintf(md, " |\n");
        }
    }
    fprintf(md, "<!-- rules-table end -->\n");
    for (size_t k = 0; k < USED_EVENTS; k++)
        free(lines[k]);
    free(lines);
    free(lens);
    return true;
}

/* The rows above the rule-count table: latency (3 runs) and throughput (3 runs of each row), each
 * run on a new ebd; written to md.  Returns 1 if ebd did not start. */
static int classic_rows(const char *ebd, const char *rules, const char *data, int port, double secs, int conns,
                        const char *fsync_policy, const char *machine, FILE *md)
{
    fprintf(md, "Machine: %s (model, cores, kernel, date); ebd and the load generator share it.\n\n", machine);
    fprintf(md, "Each run on a new ebd and data directory.  Throughput: the median of 3 runs of %.0f s "
                "each; latency: the run with the median p99 of 3 runs of %.0f s, before them.\n\n", secs, secs);
    fprintf(md, "| workload | connections | requests/s | events/s | errors (all runs) |\n|---|---|---|---|---|\n");
    /* Latency first, each run on a fresh daemon: a steady 5K events/s, not the aftermath of a
     * flood.  Three runs; the one with the median p99 is reported. */
    double p50 = 0, p99 = 0, pmax = 0;
    size_t delivered = 0;
    double r50[3], r99[3], rmax[3];
    size_t rdel[3];
    for (int r = 0; r < 3; r++) {
        pid_t lpid = start_ebd(ebd, rules, data, port);
        if (lpid < 0) {
            fprintf(stderr, "bench: ebd did not start\n");
            return 1;
        }
        atomic_store(&nlat, 0);
        run_latency(port, "lat", 5000, secs, 2, false, &r50[r], &r99[r], &rmax[r], &rdel[r]);
        stop_ebd(lpid);
        printf("latency run %d: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", r + 1, r50[r], r99[r], rmax[r]);
    }
    int mid = 0;
    for (int r = 0; r < 3; r++) {
        int below = 0;
        for (int q = 0; q < 3; q++)
            below += r99[q] < r99[r] || (r99[q] == r99[r] && q < r);
        if (below == 1)
            mid = r;
    }
    p50 = r50[mid], p99 = r99[mid], pmax = rmax[mid], delivered = rdel[mid];
    printf("latency ingest -> delivery at 5000 events/s (median run of 3): p50 %.2f ms, p99 %.2f ms, "
           "max %.2f ms (%zu delivered of %.0f)\n", p50, p99, pmax, delivered, 5000 * secs);
    /* Rows: single events and batches on the bus with the chosen policy (8 connections), and
     * single events on a bus with fsync always (the default) over 4x the connections, where
     * throughput is as many appends as share each sync. */
    int batches[] = { 1, 100, 1 };
    const char *buses[] = { "load", "load", "durable" };
    for (int b = 0; b < 3; b++) {
        int nc = b == 2 ? conns * 4 : conns;
        /* The median of 3 runs (by requests/s). */
        double rqs[3], evs[3];
        uint64_t errors = 0, e;
        for (int r = 0; r < 3; r++) {
            pid_t pid = start_ebd(ebd, rules, data, port);
            if (pid < 0) {
                fprintf(stderr, "bench: ebd did not start\n");
                return 1;
            }
            run_load(port, buses[b], nc, batches[b], secs, &rqs[r], &evs[r], &e);
            stop_ebd(pid);
            errors += e;
        }
        for (int i = 0; i < 3; i++)
            for (int j = i + 1; j < 3; j++)
                if (rqs[j] < rqs[i]) {
                    double t = rqs[i]; rqs[i] = rqs[j]; rqs[j] = t;
                    t = evs[i]; evs[i] = evs[j]; evs[j] = t;
                }
        double rq = rqs[1], ev = evs[1];
        const char *policy = b == 2 ? "always" : fsync_policy;
        printf("ingest  %s, fsync %s: %d connections: %.0f requests/s, %.0f events/s, %" PRIu64 " errors\n",
               batches[b] == 1 ? "one event per request" : "batches of 100", policy, nc, rq, ev, errors);
        fprintf(md, "| %s (fsync %s) | %d | %.1fK | %.0fK | %" PRIu64 " |\n",
                batches[b] == 1 ? "one event per request" : "batches of 100 events", policy, nc, rq / 1e3,
                ev / 1e3, errors);
    }
    fprintf(md, "\n| ingest -> delivery to a loopback webhook, 5K events/s | p50 | p99 | max | delivered |\n"
                "|---|---|---|---|---|\n| one event per request, fsync interval 10ms | %.2f ms | %.2f ms | %.2f ms | %zu of %.0f |\n",
            p50, p99, pmax, delivered, 5000 * secs);
    fprintf(md, "\nThe three latency runs' p99: %.2f, %.2f, %.2f ms.\n", r99[0], r99[1], r99[2]);
    return 0;
}

/* ---- replay (issue 12): live ingest and routing with and without a replay running ------------
 * One bus, fsync interval 10ms.  History first: `secs` seconds of batches of 100 events of type
 * bench.history, which no rule matches then; a reload adds rule `hist` (to file target hist), so
 * that only a replay delivers them (a new rule starts at the end of the log).  Then, `runs` times
 * in turn: single-event ingest for `secs` seconds from `conns` connections with nothing else
 * running (A), and the same with a replay of the history through rule hist running (B).  Live
 * events (bench.load) go to file target `live` by rule `live`: routed = its lines written during
 * the window.  The replay's own rate is read from its status. */

static int http_call(int port, const char *method, const char *path, const char *body, char *buf,
                     size_t cap)
{
    int fd = connect_to(port);
    if (fd < 0)
        return -1;
    char req[2048];
    size_t bn = body ? strlen(body) : 0;
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s", method, path, bn, body ? body : "");
    int st = roundtrip(fd, req, (size_t)n, buf, cap);
    close(fd);
    return st;
}

/* The number right after `key` in text, or -1 if key is not there. */
static double number_after(const char *text, const char *key)
{
    const char *p = strstr(text, key);
    return p ? atof(p + strlen(key)) : -1;
}

static double json_num(const char *buf, const char *key)
{
    char k[80];
    snprintf(k, sizeof k, "\"%s\":", key);
    return number_after(buf, k);
}

static void write_replay_rules(const char *path, bool hist)
{
    FILE *f = fopen(path, "w");
    if (!f)
        die(path);
    fprintf(f, "bus rp {\n  fsync interval 10ms\n}\n"
               "target live file \"rp/live0.jsonl\" { fsync interval 10ms }\n"
               "target hist file \"rp/hist0.jsonl\" { fsync interval 10ms }\n"
               "rule live on rp { match type == \"bench.load\" to live }\n%s",
            hist ? "rule hist on rp { match type == \"bench.history\" to hist }\n" : "");
    fclose(f);
}

static int replay_rows(const char *ebd, const char *work, int port, int conns, double secs, int runs,
                       double rate, const char *machine, const char *out)
{
    char rules[4200], data[4200], dir[4300], path[4200], buf[8192];
    snprintf(rules, sizeof rules, "%s/replay.ebr", work);
    snprintf(data, sizeof data, "%s/replay-data", work);
    snprintf(dir, sizeof dir, "%s/rp", data);
    write_replay_rules(rules, false);
    pid_t pid = start_ebd(ebd, rules, data, port);
    if (pid < 0) {
        fprintf(stderr, "bench: ebd did not start\n");
        return 1;
    }
    loader hist = { .port = port, .batch = 100, .bus = "rp", .type = "bench.history" };
    double rq, hist_s;
    uint64_t errors;
    run_loaders(&hist, conns, secs, &rq, &hist_s, &errors);
    uint64_t history = (uint64_t)(hist_s * secs + 0.5);
    write_replay_rules(rules, true);
    if (http_call(port, "POST", "/v1/admin/reload", NULL, buf, sizeof buf) != 200) {
        fprintf(stderr, "bench: the reload failed: %s\n", buf);
        stop_ebd(pid);
        return 1;
    }
    line_counter lc;
    counter_init(&lc, dir, "live", 1);
    double a_ev[MAX_RUNS], b_ev[MAX_RUNS], a_rt[MAX_RUNS], b_rt[MAX_RUNS], b_rp[MAX_RUNS];
    bool finished_early = false;
    for (int r = 0; r < runs; r++) {
        double at;
        for (int phase = 0; phase < 2; phase++) {
            char name[64], body[256];
            double r0 = 0;
            if (phase) {
                snprintf(name, sizeof name, "bench-%d", r);
                if (rate > 0)
                    snprintf(body, sizeof body, "{\"name\":\"%s\",\"since\":\"1h\",\"rule\":\"hist\","
                             "\"rate\":%g}", name, rate);
                else
                    snprintf(body, sizeof body, "{\"name\":\"%s\",\"since\":\"1h\",\"rule\":\"hist\"}", name);
                if (http_call(port, "POST", "/v1/buses/rp/replays", body, buf, sizeof buf) != 201) {
                    fprintf(stderr, "bench: the replay did not start: %s\n", buf);
                    stop_ebd(pid);
                    return 1;
                }
                usleep(300000);
                snprintf(path, sizeof path, "/v1/buses/rp/replays/%s", name);
                http_call(port, "GET", path, NULL, buf, sizeof buf);
                r0 = json_num(buf, "events_read");
            }
            uint64_t l0 = counter_poll(&lc);
            double ev;
            run_load(port, "rp", conns, 1, secs, &rq, &ev, &errors);
            uint64_t l1 = counter_poll(&lc);
            (phase ? b_ev : a_ev)[r] = ev;
            (phase ? b_rt : a_rt)[r] = (double)(l1 - l0) / secs;
            if (phase) {
                http_call(port, "GET", path, NULL, buf, sizeof buf);
                b_rp[r] = (json_num(buf, "events_read") - r0) / secs;
                finished_early |= strstr(buf, "\"state\":\"running\"") == NULL;
                http_call(port, "DELETE", path, NULL, buf, sizeof buf);
            }
            /* the live deliveries drain before the next window */
            wait_lines(&lc, UINT64_MAX, 1.0, 60, &at);
            fprintf(stderr, "bench: replay run %d %s: ingest %.0f ev/s, routed %.0f/s%s\n", r + 1,
                    phase ? "with a replay" : "alone", ev, (phase ? b_rt : a_rt)[r],
                    phase ? "" : "");
        }
    }
    counter_free(&lc);
    stop_ebd(pid);
    double ma = median(a_ev, runs), mb = median(b_ev, runs), ra = median(a_rt, runs), rb = median(b_rt, runs);
    snprintf(path, sizeof path, "%s/replay.md", out);
    FILE *md = fopen(path, "w");
    if (!md)
        die(path);
    fprintf(md, "## Replay (issue 12): live traffic with and without a replay running\n\n"
                "Machine: %s.  One bus (fsync interval 10ms), %" PRIu64 " history events (bench.history) "
                "replayed through rule hist to a file target; live single-event ingest from %d "
                "connections, %.0f s windows, alone and with the replay running, alternately, %d runs "
                "(medians; each run's figures below).  Replay rate cap: %s.\n\n"
                "| | alone | with a replay | ratio |\n|---|---|---|---|\n"
                "| live ingest, events/s | %.0f | %.0f | %.3f |\n"
                "| live routing (deliveries written), /s | %.0f | %.0f | %.3f |\n"
                "| the replay, events/s | | %.0f | |\n\n",
            machine, history, conns, secs, runs, rate > 0 ? "yes" : "none (nice 19 only)",
            ma, mb, ma > 0 ? mb / ma : 0, ra, rb, ra > 0 ? rb / ra : 0, median(b_rp, runs));
    for (int r = 0; r < runs; r++)
        fprintf(md, "- run %d: ingest %.0f / %.0f, routed %.0f / %.0f, replay %.0f ev/s\n", r + 1,
                a_ev[r], b_ev[r], a_rt[r], b_rt[r], b_rp[r]);
    if (finished_early)
        fprintf(md, "\nA replay finished before its window ended in some run: more history is needed.\n");
    fclose(md);
    FILE *in = fopen(path, "r");
    int c;
    while (in && (c = getc(in)) != EOF)
        putchar(c);
    if (in)
        fclose(in);
    return 0;
}

/* ---- tracing on and off (issue 12) ------------------------------------------------------------
 * Per run, tracing off then on (server { trace off }, or the default), each with a fresh daemon:
 * one bus, one rule matching every event to one file target.  Ingest: C connections, one event
 * per request, for S seconds, while the rule routes and delivers them (its cost counts).  Then,
 * once those are delivered, routing: a burst of ROUTE_EVENTS events posted in batches of 100 on
 * one connection, timed from the first post until the file holds them all (ingest in batches
 * is several times faster than routing and delivery, so this is the routing rate). */
enum { ROUTE_EVENTS = 200000 };

static bool write_trace_rules(const char *path, bool on, const char *fsync_policy)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return false;
    fprintf(f, "%sbus load {\n  fsync %s\n}\ntarget out file \"out/t0.jsonl\" { fsync never }\n"
               "rule all on load {\n  match type == \"bench.load\"\n  to out\n}\n",
            on ? "" : "server { trace off }\n", fsync_policy);
    return fclose(f) == 0;
}

/* Posts n events in batches of 100 on one connection; returns the events acknowledged. */
static uint64_t post_burst(int port, const char *bus, uint64_t n)
{
    int fd = connect_to(port);
    size_t cap = 100 * 400 + 1024;
    char *body = malloc(cap), *req = malloc(cap + 512), buf[8192];
    uint64_t ok = 0;
    for (uint64_t k = 0; k < n && fd >= 0; k += 100) {
        size_t len = 0;
        body[len++] = '[';
        for (int i = 0; i < 100 && k + (uint64_t)i < n; i++) {
            if (i)
                body[len++] = ',';
            len += (size_t)snprintf(body + len, cap - len, event_fmt, 99999, k, i, "bench.load", k);
        }
        body[len++] = ']';
        int rn = snprintf(req, cap + 512, "POST /v1/buses/%s/events HTTP/1.1\r\nHost: x\r\n"
                          "Content-Type: application/cloudevents-batch+json\r\nContent-Length: %zu\r\n\r\n",
                          bus, len);
        memcpy(req + rn, body, len);
        if (roundtrip(fd, req, (size_t)rn + len, buf, sizeof buf) == 202)
            ok += n - k < 100 ? n - k : 100;
    }
    if (fd >= 0)
        close(fd);
    free(body);
    free(req);
    return ok;
}

static int trace_rows(const char *ebd, const char *work, int port, double secs, int conns, int runs,
                      const char *fsync_policy, const char *machine, FILE *md)
{
    double ing[2][MAX_RUNS], route[2][MAX_RUNS], ing_cpu[2][MAX_RUNS], route_cpu[2][MAX_RUNS];
    double hz = (double)sysconf(_SC_CLK_TCK);
    char rules[4200], data[4200], out[4300];
    snprintf(rules, sizeof rules, "%s/trace.ebr", work);
    snprintf(data, sizeof data, "%s/trace-data", work);
    snprintf(out, sizeof out, "%s/out", data);
    for (int r = 0; r < runs; r++) {
        for (int on = 0; on < 2; on++) {
            if (!write_trace_rules(rules, on, fsync_policy))
                die(rules);
            pid_t pid = start_ebd(ebd, rules, data, port);
            if (pid < 0) {
                fprintf(stderr, "bench: ebd did not start for the trace rows\n");
                return 1;
            }
            double req_s, ev_s;
            uint64_t errors;
            long c0 = proc_cpu_ticks(pid);
            run_load(port, "load", conns, 1, secs, &req_s, &ev_s, &errors);
            ing[on][r] = ev_s;
            uint64_t sent = (uint64_t)(ev_s * secs + 0.5);
            line_counter c;
            counter_init(&c, out, "t", 1);
            double at;
            uint64_t have = wait_lines(&c, sent, 10, 300, &at);
            long c1 = proc_cpu_ticks(pid);
            ing_cpu[on][r] = sent ? (double)(c1 - c0) / hz * 1e6 / (double)sent : 0;
            double t0 = now_s();
            uint64_t acked = post_burst(port, "load", ROUTE_EVENTS);
            uint64_t got = wait_lines(&c, have + acked, 10, 300, &at);
            usleep(300000);            /* (the trace thread's last flush of the burst) */
            long c2 = proc_cpu_ticks(pid);
            route[on][r] = got > have ? (double)(got - have) / (at - t0) : 0;
            route_cpu[on][r] = got > have ? (double)(c2 - c1) / hz * 1e6 / (double)(got - have) : 0;
            counter_free(&c);
            stop_ebd(pid);
            fprintf(stderr, "bench: trace %s run %d: ingest %.0f ev/s (%" PRIu64 " errors, %.2f us "
                    "CPU/event), routing %.0f ev/s (%" PRIu64 " of %" PRIu64 ", %.2f us CPU/event)\n",
                    on ? "on " : "off", r + 1, ev_s, errors, ing_cpu[on][r], route[on][r], got - have,
                    acked, route_cpu[on][r]);
        }
    }
    double i_off = median(ing[0], runs), i_on = median(ing[1], runs);
    double r_off = median(route[0], runs), r_on = median(route[1], runs);
    double ic_off = median(ing_cpu[0], runs), ic_on = median(ing_cpu[1], runs);
    double rc_off = median(route_cpu[0], runs), rc_on = median(route_cpu[1], runs);
    fprintf(md, "<!-- trace-table begin: bench_ingest --trace-table -->\n"
                "## Tracing on and off (issue 12)\n\nMeasured %s; `bench_ingest --trace-table --runs %d "
                "--seconds %g --connections %d`: median of %d runs, each run tracing off then on, a "
                "fresh ebd each, one rule to one file target, bus fsync %s.\n\n"
                "| | trace off | trace on | on / off |\n|---|---:|---:|---:|\n"
                "| ingest, one event per request, %d connections (events/s) | %.0f | %.0f | %.3f |\n"
                "| ebd CPU per ingested event, routing and delivery included (µs) | %.2f | %.2f | %.3f |\n"
                "| routing, ingest → file delivery of a %d-event burst (events/s) | %.0f | %.0f | %.3f |\n"
                "| ebd CPU per routed event, ingest of the burst included (µs) | %.2f | %.2f | %.3f |\n\n",
            machine, runs, secs, conns, runs, fsync_policy, conns, i_off, i_on, i_on / i_off,
            ic_off, ic_on, ic_on / ic_off, ROUTE_EVENTS, r_off, r_on, r_on / r_off, rc_off, rc_on,
            rc_on / rc_off);
    fputs("Each run (off / on):", md);
    for (int r = 0; r < runs; r++)
        fprintf(md, "%s ingest %.0f / %.0f (%.2f / %.2f µs), routing %.0f / %.0f (%.2f / %.2f µs)",
                r ? ";" : "", ing[0][r], ing[1][r], ing_cpu[0][r], ing_cpu[1][r], route[0][r],
                route[1][r], route_cpu[0][r], route_cpu[1][r]);
    fputs(".\n<!-- trace-table end -->\n", md);
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data);
    if (system(cmd) != 0)
        fprintf(stderr, "bench: cannot remove %s\n", data);
    return 0;
}

/* The whole text of the file at path (malloc'd), or NULL. */
static char *read_whole(const char *path)
{
    char *text = NULL;
    size_t cap = 0;
    FILE *f = fopen(path, "r");
    if (f) {
        if (getdelim(&text, &cap, 0, f) < 0) {
            free(text);
            text = NULL;
        }
        fclose(f);
    }
    return text;
}

/* ---- routing (issue 14): the router alone, on the trusted path ---------------------------------
 * The COMBO row of ../shared/data/citylots2_rows.json (45 patterns, each put under "data") as
 * rules with no target, on two workloads: the ingest rows' ~300-byte event (none of the rules'
 * paths is in it), and CloudEvents made from the CityLots2 events (their properties, their
 * geometry's type and first point, and firstCoordinates: ~420 bytes, ~21 matches each).  Per run
 * and workload, a fresh daemon; 6 or 3 passes over the events are posted in batches of 100
 * on one connection, then one "bench.done" event, which the only rule with a target (a file)
 * takes once the router has read everything before it.  The router's thread (ebd-router) CPU
 * time over that span, from /proc/PID/task, gives the events it matches per second of one core:
 * log reads, CRCs, matching and counting, and waiting for the next append (ticks of 10 ms; a run
 * is a few hundred).  Then the backlog: the daemon again on the same log without its delivery
 * positions, so that the pair of "done" starts from the oldest event and the router reads the
 * whole log with nothing else running; its new thread's CPU time is all of that routing (~40-150
 * ticks: ±1-2.5%).  Beside it, in the same run, `ebc bench` over the same events: the trusted
 * path (the router's) and the validating one.  Counts: every rule's ebr_rule_matched_total
 * against the passes times its count in `ebc bench`, in both phases. */

/* One CityLots2 feature as a ~300-byte CloudEvent (NULL if the line is not one). */
static char *route_event(const char *line, size_t k)
{
    cJSON *f = cJSON_Parse(line), *ev = NULL;
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(f, "properties"),
                *geo = cJSON_GetObjectItemCaseSensitive(f, "geometry"),
                *type = cJSON_GetObjectItemCaseSensitive(geo, "type"),
                *first = cJSON_GetObjectItemCaseSensitive(geo, "firstCoordinates"),
                *coords = cJSON_GetObjectItemCaseSensitive(geo, "coordinates");
    /* the first point: coordinates[0][0] (a polygon's ring) or coordinates[0][0][0] */
    const cJSON *pt = cJSON_GetArrayItem(cJSON_GetArrayItem(coords, 0), 0);
    if (cJSON_IsArray(pt))
        pt = cJSON_GetArrayItem(pt, 0);
    char id[32], *text = NULL;
    if (!cJSON_IsObject(props) || !cJSON_IsString(type) || !cJSON_IsObject(first) || !cJSON_IsObject(pt))
        goto out;
    snprintf(id, sizeof id, "r%zu", k);
    ev = cJSON_CreateObject();
    cJSON *data = cJSON_CreateObject(), *g = cJSON_CreateObject();
    cJSON_AddStringToObject(ev, "specversion", "1.0");
    cJSON_AddStringToObject(ev, "id", id);
    cJSON_AddStringToObject(ev, "source", "lots");
    cJSON_AddStringToObject(ev, "type", "lot");
    cJSON_AddItemToObject(ev, "data", data);
    cJSON_AddItemToObject(data, "properties", cJSON_Duplicate(props, 1));
    cJSON_AddItemToObject(data, "geometry", g);
    cJSON_AddStringToObject(g, "type", type->valuestring);
    cJSON *ring = cJSON_CreateArray(), *outer = cJSON_CreateArray();
    cJSON_AddItemToArray(ring, cJSON_Duplicate(pt, 1));
    cJSON_AddItemToArray(outer, ring);
    cJSON_AddItemToObject(g, "coordinates", outer);
    cJSON_AddItemToObject(g, "firstCoordinates", cJSON_Duplicate(first, 1));
    text = cJSON_PrintUnformatted(ev);
out:
    cJSON_Delete(ev);
    cJSON_Delete(f);
    return text;
}

/* The router's CPU ticks (its thread is named ebd-router; one bus, one router), or -1. */
static long router_ticks(pid_t pid)
{
    char path[96], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    long ticks = -1;
    for (struct dirent *e; d && ticks < 0 && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/%d/task/%.20s/stat", (int)pid, e->d_name);
        int fd = open(path, O_RDONLY);
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
        if (fd >= 0)
            close(fd);
        if (n <= 0)
            continue;
        buf[n] = 0;
        char *name = strchr(buf, '('), *p = strrchr(buf, ')');
        long ut, st;
        if (name && p && !strncmp(name + 1, "ebd-router)", 11) &&
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &ut, &st) == 2)
            ticks = ut + st;
    }
    if (d)
        closedir(d);
    return ticks;
}

/* Posts the lines, `passes` times, in batches of 100 on one connection (each pass's ids made
 * unique by a suffix); returns the events acknowledged. */
static uint64_t post_lines(int port, const char *bus, char **lines, size_t n, int passes)
{
    int fd = connect_to(port);
    size_t cap = 100 * 1024 + 1024;
    char *req = malloc(cap + 512), *body = req + 512, buf[8192];
    uint64_t ok = 0;
    for (int pass = 0; pass < passes; pass++)
        for (size_t k = 0; k < n && fd >= 0; k += 100) {
            size_t len = 0, m = n - k < 100 ? n - k : 100;
            body[len++] = '[';
            for (size_t i = 0; i < m; i++) {
                const char *l = lines[k + i], *q = strstr(l, "\",\"source\"");
                if (i)
                    body[len++] = ',';
                /* "id":"rK" becomes "id":"rK.PASS" */
                len += (size_t)snprintf(body + len, cap - len, "%.*s.%d%s", (int)(q - l), l, pass, q);
            }
            body[len++] = ']';
            char head[256];
            int hn = snprintf(head, sizeof head, "POST /v1/buses/%s/events HTTP/1.1\r\nHost: x\r\n"
                              "Content-Type: application/cloudevents-batch+json\r\nContent-Length: %zu\r\n\r\n",
                              bus, len);
            memcpy(body - hn, head, (size_t)hn);
            if (roundtrip(fd, body - hn, (size_t)hn + len, buf, sizeof buf) == 202)
                ok += m;
        }
    if (fd >= 0)
        close(fd);
    free(req);
    return ok;
}

/* ebr_rule_matched_total of rule `name` of bus route in a /metrics answer (-1 if it is not
 * there). */
static double metric_matched(const char *text, const char *name)
{
    char key[160];
    snprintf(key, sizeof key, "ebr_rule_matched_total{rule=\"%s\",bus=\"route\"} ", name);
    return number_after(text, key);
}

/* One workload of the routing rows: its events (lines, written to `events`), the figures of
 * each run. */
typedef struct {
    const char *label;
    int passes;                        /* over the events, each run */
    char *events;
    char **lines;
    size_t n, bytes;
    double per_core[MAX_RUNS], wall[MAX_RUNS], trusted[MAX_RUNS], validating[MAX_RUNS];
    double backlog[MAX_RUNS], backlog_wall[MAX_RUNS];   /* the same events routed again, alone */
    uint64_t matches;                  /* a pass, every rule but "done" */
    bool counts_ok;
} route_load;

static void route_load_add(route_load *w, char *ev, size_t *cap)
{
    if (w->n == *cap && !(w->lines = realloc(w->lines, (*cap = *cap ? 2 * *cap : 1024) * sizeof *w->lines)))
        die("realloc");
    w->lines[w->n++] = ev;
    w->bytes += strlen(ev);
}

static bool route_load_write(route_load *w)
{
    FILE *f = fopen(w->events, "w");
    for (size_t k = 0; f && k < w->n; k++)
        fprintf(f, "%s\n", w->lines[k]);
    return f && fclose(f) == 0 && w->n > 0;
}

/* Run r of a workload: ebc bench (trusted, then validating), a fresh daemon fed the events (live),
 * then the daemon again on its log without its delivery positions (the backlog). */
static bool route_run(route_load *w, int r, const char *ebd, const char *ebc, const char *rules,
                      const char *data, const char *out, int port, char *metrics, size_t mcap)
{
    bench_result tr = { 0 }, va = { 0 };
    bool ok = false;
    if (!bench_ebc(ebc, rules, w->events, 3, "trusted", &tr) || !bench_ebc(ebc, rules, w->events, 3, "index", &va) ||
        !bench_same_counts(tr.counts, va.counts)) {
        fprintf(stderr, "bench: routing: ebc bench failed or its two paths disagree\n");
        goto done;
    }
    pid_t pid = start_ebd(ebd, rules, data, port);
    if (pid < 0) {
        fprintf(stderr, "bench: ebd did not start for the routing rows\n");
        goto done;
    }
    line_counter c;
    counter_init(&c, out, "done", 1);
    long t0 = router_ticks(pid);
    for (int i = 0; i < 200 && t0 < 0; i++) {        /* (the router starts just after the listener) */
        usleep(10000);
        t0 = router_ticks(pid);
    }
    double hz = (double)sysconf(_SC_CLK_TCK), w0 = now_s(), at;
    uint64_t acked = post_lines(port, "route", w->lines, w->n, w->passes);
    int done_ok = post_events(port, "route", "bench.done", 1);
    uint64_t got = wait_lines(&c, 1, 30, 600, &at);
    long t1 = router_ticks(pid);
    counter_free(&c);
    int st = http_call(port, "GET", "/metrics", NULL, metrics, mcap);
    stop_ebd(pid);
    if (acked != (uint64_t)w->n * (uint64_t)w->passes || done_ok != 1 || got != 1 || t0 < 0 || t1 <= t0 || st != 200) {
        fprintf(stderr, "bench: routing %s, run %d: %" PRIu64 " of %zu acknowledged, the last event %s, "
                "router CPU ticks %ld to %ld, GET /metrics %d\n", w->label, r + 1, acked, w->n * (size_t)w->passes,
                got == 1 && done_ok == 1 ? "routed" : "not routed", t0, t1, st);
        goto done;
    }
    w->per_core[r] = (double)acked / ((double)(t1 - t0) / hz);
    w->wall[r] = (double)acked / (at - w0);
    w->trusted[r] = tr.events_per_sec;
    w->validating[r] = va.events_per_sec;
    w->matches = 0;
    for (const cJSON *k = tr.counts->child; k; k = k->next) {
        if (!strcmp(k->string, "done"))
            continue;
        w->matches += (uint64_t)k->valuedouble;
        double want = k->valuedouble * w->passes, have = metric_matched(metrics, k->string);
        if (have != want && !(want == 0 && have < 0)) {   /* (a rule that never matched may be absent) */
            fprintf(stderr, "bench: routing: rule %s matched %.0f events in ebd, %.0f expected\n", k->string,
                    have, want);
            w->counts_ok = false;
        }
    }
    /* The backlog: the daemon again on the same log without its delivery positions, so that the
     * pair of "done" starts from the oldest event (docs/ebd.md) and the router reads the whole
     * log while nothing else runs.  Its thread is new: its CPU time is all of this routing. */
    char *unset = bench_fmt("find '%s' -path '*/cursors/@delivery' -delete", data);
    int rm_ok = system(unset);
    free(unset);
    if (rm_ok != 0) {
        fprintf(stderr, "bench: cannot remove the delivery positions under %s\n", data);
        goto done;
    }
    sync();                           /* (the live phase's writes, before the clock starts) */
    double b0 = now_s();
    if ((pid = start_ebd_on(ebd, rules, data, port, false)) < 0) {
        fprintf(stderr, "bench: ebd did not start again on the routing row's log\n");
        goto done;
    }
    counter_init(&c, out, "done", 1);
    got = wait_lines(&c, 2, 600, 600, &at);   /* (no line comes before the whole log is read) */
    long tb = router_ticks(pid);
    counter_free(&c);
    st = http_call(port, "GET", "/metrics", NULL, metrics, mcap);
    stop_ebd(pid);
    if (got != 2 || tb <= 0 || st != 200) {
        fprintf(stderr, "bench: routing %s, run %d, the backlog: the last event %s, router CPU ticks %ld, "
                "GET /metrics %d\n", w->label, r + 1, got == 2 ? "routed" : "not routed", tb, st);
        goto done;
    }
    w->backlog[r] = (double)(acked + 1) / ((double)tb / hz);
    w->backlog_wall[r] = (double)(acked + 1) / (at - b0);
    for (const cJSON *k = tr.counts->child; k; k = k->next) {
        double want = k->valuedouble * w->passes + !strcmp(k->string, "done"),
               have = metric_matched(metrics, k->string);
        if (have != want && !(want == 0 && have < 0)) {
            fprintf(stderr, "bench: routing the backlog: rule %s matched %.0f events in ebd, %.0f "
                    "expected\n", k->string, have, want);
            w->counts_ok = false;
        }
    }
    fprintf(stderr, "bench: routing %s, run %d: router %.0f events/s of its CPU (%ld ticks), %.0f events/s "
            "wall clock; the backlog alone %.0f events/s of its CPU (%ld ticks), %.0f wall clock; ebc "
            "bench trusted %.0f, validating %.0f\n", w->label, r + 1, w->per_core[r], t1 - t0, w->wall[r],
            w->backlog[r], tb, w->backlog_wall[r], w->trusted[r], w->validating[r]);
    ok = true;
done:
    bench_result_free(&tr);
    bench_result_free(&va);
    return ok;
}

static int routing_rows(const char *ebd, const char *ebc, const char *shared, const char *work, int port,
                        int runs, const char *machine, FILE *md)
{
    char *rows_path = bench_fmt("%s/citylots2_rows.json", shared), *gz = bench_fmt("%s/citylots2_synth.json.gz", shared);
    char *lots = bench_fmt("%s/citylots2_synth.jsonl", work);
    char *rules = bench_fmt("%s/route.ebr", work), *data = bench_fmt("%s/route-data", work);
    char *out = bench_fmt("%s/out", data);
    int status = 1;
    cJSON *rows = NULL;
    /* Two workloads: bench_ingest's ~300-byte load event (the COMBO rules' paths are not in it:
     * the router reads its keys and jumps over the rest), and events made from CityLots2, which
     * the rules look into all over (~21 matches each). */
    route_load loads[2] = {
        { .label = "the ingest rows' event", .passes = 6, .events = bench_fmt("%s/route-load.jsonl", work), .counts_ok = true },
        { .label = "CityLots2 features", .passes = 3, .events = bench_fmt("%s/route-events.jsonl", work), .counts_ok = true },
    };
    /* the rules */
    char *text = read_whole(rows_path);
    rows = text ? cJSON_Parse(text) : NULL;
    free(text);
    const cJSON *combo = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(rows, "rows"), "COMBO");
    const cJSON *patterns = cJSON_GetObjectItemCaseSensitive(combo, "patterns");
    FILE *rf = cJSON_IsArray(patterns) ? fopen(rules, "w") : NULL;
    if (!rf) {
        fprintf(stderr, "bench: no COMBO row in %s\n", rows_path);
        goto done;
    }
    fprintf(rf, "# generated by bench/ingest.c: the COMBO row of citylots2_rows.json, under data\n"
                "bus route {\n  fsync interval 10ms\n}\ntarget done file \"out/done0.jsonl\" { fsync never }\n"
                "rule done on route {\n  match type == \"bench.done\"\n  to done\n}\n");
    int nr = 0;
    for (const cJSON *p = patterns->child; p; p = p->next, nr++) {
        char *pt = cJSON_PrintUnformatted(p);
        fprintf(rf, "rule c%d on route { pattern {\"data\": %s} }\n", nr, pt);
        free(pt);
    }
    if (fclose(rf) != 0)
        die(rules);
    /* the events */
    if (!bench_gunzip(gz, lots))
        goto done;
    FILE *in = fopen(lots, "r");
    if (!in)
        die(lots);
    char *line = NULL;
    size_t lcap = 0, caps[2] = { 0, 0 };
    for (size_t k = 0; getline(&line, &lcap, in) > 0; k++) {
        char *ev = route_event(line, k), buf[1024];
        if (!ev)
            continue;
        route_load_add(&loads[1], ev, &caps[1]);
        snprintf(buf, sizeof buf, event_fmt, 1, (uint64_t)k, 0, "bench.load", (uint64_t)k);
        route_load_add(&loads[0], strdup(buf), &caps[0]);
    }
    free(line);
    fclose(in);
    if (!route_load_write(&loads[0]) || !route_load_write(&loads[1]))
        die("the routing events");
    char *metrics = malloc(1 << 20);
    for (int r = 0; r < runs; r++)
        for (int l = 0; l < 2; l++)
            if (!route_run(&loads[l], r, ebd, ebc, rules, data, out, port, metrics, 1 << 20)) {
                free(metrics);
                goto done;
            }
    free(metrics);
    fprintf(md, "<!-- routing-row begin: bench_ingest --routing-row -->\n"
                "## Routing (issue 14)\n\nMeasured %s; `bench_ingest --routing-row --runs %d`: the COMBO "
                "rules (%d patterns under `data`, no targets) on a fresh ebd per run, %d (ingest rows' event) "
                "and %d passes (CityLots2) over %zu events posted in batches of 100; the router's events per second of its own CPU time "
                "(thread ebd-router: log reads, CRCs, matching, counting), live (while the events are "
                "posted) and on the backlog (ebd started again on the same log without its delivery "
                "positions: the router reads all of it, nothing else running), and `ebc bench` over "
                "the same events in the same run. Median of %d runs. Every rule's count in ebd equal to "
                "`ebc bench`'s, in both: %s.\n\n"
                "| events | bytes | matches an event | router per core, the backlog (trusted) | MB/s | "
                "router per core, live | router, wall clock: live (ingest beside it) / the backlog | "
                "`ebc bench --trusted` | `ebc bench` (validating) | backlog / `ebc bench --trusted` |\n"
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            machine, runs, nr, loads[0].passes, loads[1].passes, loads[0].n, runs,
            loads[0].counts_ok && loads[1].counts_ok ? "yes" : "**no**");
    for (int l = 0; l < 2; l++) {
        route_load *w = &loads[l];
        double ratio[MAX_RUNS], mean = (double)w->bytes / (double)w->n;
        for (int r = 0; r < runs; r++)
            ratio[r] = w->backlog[r] / w->trusted[r];
        double pc = median(w->backlog, runs);
        fprintf(md, "| %s | %.0f | %.1f | **%.0f** | %.0f | %.0f | %.0f / %.0f | %.0f | %.0f | %.2f |\n",
                w->label, mean, (double)w->matches / (double)w->n, pc, pc * mean / 1e6,
                median(w->per_core, runs), median(w->wall, runs), median(w->backlog_wall, runs),
                median(w->trusted, runs), median(w->validating, runs), median(ratio, runs));
    }
    for (int l = 0; l < 2; l++) {
        fprintf(md, "%s%s, each run (router per core on the backlog / live / `ebc bench --trusted` / "
                "validating):", l ? " " : "\n", loads[l].label);
        for (int r = 0; r < runs; r++)
            fprintf(md, "%s %.0f / %.0f / %.0f / %.0f", r ? ";" : "", loads[l].backlog[r],
                    loads[l].per_core[r], loads[l].trusted[r], loads[l].validating[r]);
        fputc('.', md);
    }
    fputs("\n<!-- routing-row end -->\n", md);
    status = loads[0].counts_ok && loads[1].counts_ok ? 0 : 1;
done:
    for (int l = 0; l < 2; l++) {
        for (size_t k = 0; k < loads[l].n; k++)
            free(loads[l].lines[k]);
        free(loads[l].lines);
        free(loads[l].events);
    }
    cJSON_Delete(rows);
    char *rm = bench_fmt("rm -rf '%s'", data);
    if (system(rm) != 0)
        fprintf(stderr, "bench: cannot remove %s\n", data);
    free(rm);
    free(rows_path), free(gz), free(lots), free(rules), free(data), free(out);
    return status;
}

/* Replaces the section between BEGIN and END of the file at path with rows (or adds rows at
 * its end). */
/* ---- a bus on NATS JetStream (issue 15) -------------------------------------------------------
 * In the same run, in turn: the local log (fsync interval 10ms), and a bus on JetStream on one
 * node and on three (replicas 3), each with one daemon and with two sharing the bus.  Each
 * configuration `runs` times, each run on new servers and data: single-event ingest from `conns`
 * connections spread over the daemons for `secs` seconds (acknowledged events/s); end to end,
 * those events to the driver's receiver (/fan): acknowledged events over the time from the
 * load's start to the last delivery; and the latency from ingest to delivery at 1,000 events/s,
 * posted to the daemons in turn. */

typedef struct {
    const char *label;
    int nodes;                    /* 0: the local log */
    int daemons;
    bool dedup;                   /* the bus has `dedup 10m` */
} js_config;

static pid_t js_pids[3];

/* Starts `nodes` nats-servers (a cluster of three when nodes is 3) on ports port0.., storage
 * under dir; waits for them to take connections. */
static bool js_start(const char *dir, int nodes, int port0, int cport0)
{
    char routes[256];
    snprintf(routes, sizeof routes, "nats://127.0.0.1:%d,nats://127.0.0.1:%d,nats://127.0.0.1:%d",
             cport0, cport0 + 1, cport0 + 2);
    for (int i = 0; i < nodes; i++) {
        char sd[4300], p[16], name[16], cl[64];
        snprintf(sd, sizeof sd, "%s/n%d", dir, i);
        snprintf(p, sizeof p, "%d", port0 + i);
        snprintf(name, sizeof name, "n%d", i);
        snprintf(cl, sizeof cl, "nats://127.0.0.1:%d", cport0 + i);
        js_pids[i] = fork();
        if (js_pids[i] == 0) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            dup2(null, 2);
            if (nodes == 1)
                execlp("nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", p, "-sd", sd,
                       "-n", name, (char *)NULL);
            else
                execlp("nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", p, "-sd", sd,
                       "-n", name, "--cluster_name", "bench", "--cluster", cl, "--routes", routes,
                       (char *)NULL);
            _exit(127);
        }
    }
    for (int i = 0; i < nodes; i++) {
        int fd = -1;
        for (int k = 0; k < 500 && (fd = connect_to(port0 + i)) < 0; k++)
            usleep(20000);
        if (fd < 0)
            return false;
        close(fd);
    }
    return true;
}

static void js_stop(int nodes)
{
    for (int i = 0; i < nodes; i++)
        if (js_pids[i] > 0) {
            kill(js_pids[i], SIGTERM);
            waitpid(js_pids[i], NULL, 0);
            js_pids[i] = 0;
        }
}

typedef struct {
    int port;
    double rate, secs;
    size_t from;
} js_lat_arg;

/* One daemon's share of the latency run (a thread). */
static void *js_latency_post(void *arg)
{
    js_lat_arg *a = arg;
    post_at_rate(a->port, "b", a->rate, a->secs, a->from);
    return NULL;
}

typedef struct {
    double ingest, e2e, p50, p99;
    uint64_t errors, lost;
} js_result;

static bool js_run(const char *ebd, const char *work, const js_config *c, int port, int rport, int conns,
                   double secs, js_result *res)
{
    char dir[4200], rules[4300], cmd[9000];
    snprintf(dir, sizeof dir, "%s/js", work);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'; mkdir -p '%s'", dir, dir);
    if (system(cmd) != 0)
        return false;
    int nport = port + 20, cport = port + 30, eport[2] = { port + 10, port + 11 };
    if (c->nodes && !js_start(dir, c->nodes, nport, cport)) {
        js_stop(c->nodes);
        return false;
    }
    snprintf(rules, sizeof rules, "%s/js.ebr", dir);
    FILE *f = fopen(rules, "w");
    const char *dd = c->dedup ? "; dedup 10m" : "";
    if (c->nodes == 0)
        fprintf(f, "bus b { fsync interval 10ms%s }\n", dd);
    else if (c->nodes == 1)
        fprintf(f, "bus b { log nats \"nats://127.0.0.1:%d\" stream \"BENCH\"%s }\n", nport, dd);
    else
        fprintf(f, "bus b { log nats \"nats://127.0.0.1:%d\" \"nats://127.0.0.1:%d\" \"nats://127.0.0.1:%d\" "
                   "stream \"BENCH\" replicas 3%s }\n", nport, nport + 1, nport + 2, dd);
    fprintf(f, "target fan http \"http://127.0.0.1:%d/fan\" { retry none }\n"
               "target hook http \"http://127.0.0.1:%d/hook\" { retry none }\n"
               "rule all on b { match type == \"bench.load\" to fan }\n"
               "rule latency on b {\n  match type == \"bench.latency\"\n"
               "  transform {\"sent\": data.sent, \"id\": $id}\n  to hook\n}\n", rport, rport);
    fclose(f);
    pid_t pids[2] = { -1, -1 };
    bool ok = true;
    for (int d = 0; d < c->daemons && ok; d++) {
        char data[4300];
        snprintf(data, sizeof data, "%s/ebd%d", dir, d);
        /* (a stream of replicas 3 can be made once the cluster has its leader: ebd exits until then) */
        for (int k = 0; k < 60 && pids[d] < 0; k++) {
            pids[d] = start_ebd(ebd, rules, data, eport[d]);
            bool up = false;
            for (int w = 0; pids[d] > 0 && w < 100 && !up; w++) {
                up = get_status(eport[d], "/healthz") == 200;
                if (!up && waitpid(pids[d], NULL, WNOHANG) == pids[d])
                    pids[d] = -1;         /* (it stopped: the stream could not be made yet) */
                else if (!up)
                    usleep(20000);
            }
            if (pids[d] > 0 && !up) {
                stop_ebd(pids[d]);
                pids[d] = -1;
            }
            if (pids[d] < 0)
                sleep(1);
        }
        ok = pids[d] > 0;
    }
    if (ok) {
        /* ingest, then the end of its deliveries */
        atomic_store(&fan_count, 0);
        loader *l = calloc((size_t)conns, sizeof *l);
        pthread_t *t = calloc((size_t)conns, sizeof *t);
        double t0 = now_s();
        for (int i = 0; i < conns; i++) {
            l[i] = (loader){ .port = eport[i % c->daemons], .batch = 1, .bus = "b", .until = t0 + secs };
            pthread_create(&t[i], NULL, load, &l[i]);
        }
        uint64_t ev = 0;
        res->errors = 0;
        for (int i = 0; i < conns; i++) {
            pthread_join(t[i], NULL);
            ev += l[i].events;
            res->errors += l[i].errors;
        }
        double t1 = now_s();
        res->ingest = (double)ev / (t1 - t0);
        free(l);
        free(t);
        uint64_t last = 0;
        double quiet = now_s();
        while (atomic_load(&fan_count) < ev && now_s() - quiet < 30) {
            usleep(20000);
            if (atomic_load(&fan_count) != last) {
                last = atomic_load(&fan_count);
                quiet = now_s();
            }
        }
        double end = (double)atomic_load(&fan_last_ns) / 1e9;   /* (both CLOCK_MONOTONIC) */
        res->lost = atomic_load(&fan_count) < ev ? ev - atomic_load(&fan_count) : 0;
        res->e2e = (double)atomic_load(&fan_count) / (end > t0 ? end - t0 : 1e-9);
        /* latency at 1,000 events/s over the daemons */
        atomic_store(&nlat, 0);
        js_lat_arg la[2];
        pthread_t lt[2];
        for (int d = 0; d < c->daemons; d++) {
            la[d] = (js_lat_arg){ eport[d], 1000.0 / c->daemons, secs, (size_t)d * 1000000 };
            pthread_create(&lt[d], NULL, js_latency_post, &la[d]);
        }
        for (int d = 0; d < c->daemons; d++)
            pthread_join(lt[d], NULL);
        size_t total = (size_t)(1000 * secs), n;
        double pmax;
        latency_ranks(total, 5, false, &res->p50, &res->p99, &pmax, &n);
        if (!n)
            res->p50 = res->p99 = -1;
        res->lost += n < total ? total - n : 0;
    }
    for (int d = 0; d < 2; d++)
        if (pids[d] > 0)
            stop_ebd(pids[d]);
    js_stop(c->nodes);
    return ok;
}

/* The rows of configurations cfgs[0..NC) in turn, runs times; the first is the baseline.  Its
 * section of OUT/ingest.md is marked `marker`-begin / -end and titled `title`. */
static int config_rows(const js_config *cfgs, int NC, const char *marker, const char *title,
                       const char *ebd, const char *work, int port, int rport, int conns,
                       double secs, int runs, const char *machine, FILE *md)
{
    enum { MAXC = 8 };
    double ing[MAXC][MAX_RUNS], e2e[MAXC][MAX_RUNS], p50[MAXC][MAX_RUNS], p99[MAXC][MAX_RUNS];
    uint64_t errors[MAXC] = { 0 }, lost[MAXC] = { 0 };
    for (int r = 0; r < runs; r++)
        for (int k = 0; k < NC; k++) {
            js_result res = { 0 };
            if (!js_run(ebd, work, &cfgs[k], port, rport, conns, secs, &res)) {
                fprintf(stderr, "bench: %s did not start (nats-server installed?)\n", cfgs[k].label);
                return 1;
            }
            ing[k][r] = res.ingest;
            e2e[k][r] = res.e2e;
            p50[k][r] = res.p50;
            p99[k][r] = res.p99;
            errors[k] += res.errors;
            lost[k] += res.lost;
            printf("%-44s run %d: ingest %8.0f events/s, end to end %8.0f events/s, p50 %6.2f ms, "
                   "p99 %7.2f ms, %" PRIu64 " errors, %" PRIu64 " not delivered\n", cfgs[k].label, r + 1,
                   res.ingest, res.e2e, res.p50, res.p99, res.errors, res.lost);
        }
    fprintf(md, "<!-- %s begin -->\n### %s\n\n"
                "Machine: %s; ebd, nats-server and the load generator share it.  `make bench-ingest "
                "INGEST_ARGS='--%s'`: every configuration in turn, %d runs, each on new "
                "servers and data; the median of the runs.  Ingest: single events from %d "
                "connections spread over the daemons for %.0f s; end to end: those events delivered "
                "to a loopback webhook, over the time from the load's start to the last delivery; "
                "latency: ingest to delivery at 1,000 events/s.\n\n"
                "| configuration | ingest events/s | end to end events/s | p50 | p99 | ingest vs the local log | errors | not delivered |\n"
                "|---|---:|---:|---:|---:|---:|---:|---:|\n", marker, title, machine, marker, runs,
                conns, secs);
    double base = median(ing[0], runs);
    for (int k = 0; k < NC; k++) {
        double i = median(ing[k], runs);
        fprintf(md, "| %s | %.1fK | %.1fK | %.2f ms | %.2f ms | %.2f | %" PRIu64 " | %" PRIu64 " |\n",
                cfgs[k].label, i / 1e3, median(e2e[k], runs) / 1e3, median(p50[k], runs),
                median(p99[k], runs), base > 0 ? i / base : 0, errors[k], lost[k]);
    }
    fprintf(md, "\nEach run's ingest events/s:");
    for (int k = 0; k < NC; k++) {
        fprintf(md, " %s", cfgs[k].label);
        for (int r = 0; r < runs; r++)
            fprintf(md, "%s%.0f", r ? ", " : " ", ing[k][r]);
        fprintf(md, k + 1 < NC ? ";" : ".\n");
    }
    fprintf(md, "<!-- %s end -->\n", marker);
    return 0;
}

static int jetstream_rows(const char *ebd, const char *work, int port, int rport, int conns, double secs,
                          int runs, const char *machine, FILE *md)
{
    static const js_config cfgs[] = {
        { "local log (fsync interval 10ms)", 0, 1, false },
        { "JetStream, 1 node", 1, 1, false },
        { "JetStream, 1 node, 2 daemons", 1, 2, false },
        { "JetStream, 3 nodes, replicas 3", 3, 1, false },
        { "JetStream, 3 nodes, replicas 3, 2 daemons", 3, 2, false },
    };
    return config_rows(cfgs, 5, "jetstream-rows", "A bus on NATS JetStream (issue 15)", ebd, work,
                       port, rport, conns, secs, runs, machine, md);
}

/* What a bus's dedup window costs (issue 16): each event's key claimed, stored and kept on the
 * local log; on JetStream, a Nats-Msg-Id the stream checks. */
static int dedup_rows(const char *ebd, const char *work, int port, int rport, int conns, double secs,
                      int runs, const char *machine, FILE *md)
{
    static const js_config cfgs[] = {
        { "local log (fsync interval 10ms)", 0, 1, false },
        { "local log, dedup 10m", 0, 1, true },
        { "JetStream, 1 node", 1, 1, false },
        { "JetStream, 1 node, dedup 10m", 1, 1, true },
        { "JetStream, 1 node, 2 daemons, dedup 10m", 1, 2, true },
    };
    return config_rows(cfgs, 5, "dedup-rows", "A bus's dedup window (issue 16)", ebd, work, port,
                       rport, conns, secs, runs, machine, md);
}

static void replace_section(const char *path, const char *begin, const char *end, const char *rows)
{
    char *old = read_whole(path);
    char *b = old ? strstr(old, begin) : NULL, *e = b ? strstr(b, end) : NULL;
    FILE *mdf = fopen(path, "w");
    if (!mdf)
        die(path);
    if (b && e) {
        fwrite(old, 1, (size_t)(b - old), mdf);
        fputs(rows, mdf);
        fputs(e + strlen(end), mdf);
    } else {
        fprintf(mdf, "%s%s%s", old ? old : "", old ? "\n" : "", rows);
    }
    fclose(mdf);
    free(old);
}

int main(int argc, char **argv)
{
    const char *ebd = NULL, *work = NULL, *out = NULL, *ebc = NULL, *shared = "../shared/data";
    double secs = 5, start_limit = 120, idle_secs = 10, drain_limit = 120;
    int conns = 8, runs = 3;
    unsigned max_rules = 100000;
    bool table_only = false, fanout = true, replay_only = false, trace_only = false, routing_only = false,
         jetstream_only = false, dedup_only = false;
    double replay_rate = 0;
    const char *label = NULL;
    const char *fsync_policy = "interval 10ms";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--rules-table")) {
            table_only = true;
            continue;
        }
        if (!strcmp(a, "--trace-table")) {
            trace_only = true;
            continue;
        }
        if (!strcmp(a, "--routing-row")) {
            routing_only = true;
            continue;
        }
        if (!strcmp(a, "--jetstream-rows")) {
            jetstream_only = true;
            continue;
        }
        if (!strcmp(a, "--dedup-rows")) {
            dedup_only = true;
            continue;
        }
        if (!strcmp(a, "--no-fanout")) {
            fanout = false;
            continue;
        }
        if (!strcmp(a, "--replay-row")) {
            replay_only = true;
            continue;
        }
        if (!v)
            goto usage;
        if (!strcmp(a, "--ebd")) ebd = v;
        else if (!strcmp(a, "--ebc")) ebc = v;
        else if (!strcmp(a, "--data")) shared = v;
        else if (!strcmp(a, "--work")) work = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--seconds")) secs = atof(v);
        else if (!strcmp(a, "--connections")) conns = atoi(v);
        else if (!strcmp(a, "--fsync")) fsync_policy = v;
        else if (!strcmp(a, "--max-rules")) max_rules = (unsigned)atol(v);
        else if (!strcmp(a, "--runs")) runs = atoi(v);
        else if (!strcmp(a, "--start-timeout")) start_limit = atof(v);
        else if (!strcmp(a, "--idle-seconds")) idle_secs = atof(v);
        else if (!strcmp(a, "--drain-timeout")) drain_limit = atof(v);
        else if (!strcmp(a, "--ebd-label")) label = v;
        else if (!strcmp(a, "--replay-rate")) replay_rate = atof(v);
        else goto usage;
        i++;
    }
    if (!ebd || !work || !out || secs <= 0 || conns < 1 || runs < 1 || runs > MAX_RUNS || start_limit <= 0 ||
        idle_secs <= 0 || drain_limit <= 0) {
    usage:
        fprintf(stderr, "usage: bench_ingest --ebd EBD --work DIR --out DIR [--ebc EBC] [--data SHARED_DATA_DIR]\n"
                        "                    [--seconds S] [--connections C] [--fsync POLICY]\n"
                        "                    [--rules-table] [--max-rules N] [--runs R (1-%d)] [--start-timeout S]\n"
                        "                    [--idle-seconds S] [--drain-timeout S] [--no-fanout] [--ebd-label TEXT]\n"
                        "                    [--replay-row [--replay-rate N]] [--trace-table] [--routing-row]\n"
                        "                    [--jetstream-rows] [--dedup-rows]\n",
                MAX_RUNS);
        return 2;
    }
    char ebc_default[4200];
    if (!ebc) {
        const char *slash = strrchr(ebd, '/');
        snprintf(ebc_default, sizeof ebc_default, "%.*sebc", slash ? (int)(slash - ebd + 1) : 0, ebd);
        ebc = ebc_default;
    }
    /* ebd, the latency receiver and the fan-out receiver: below the ephemeral ports */
    int port = 20000 + getpid() % 11998, rport = port + 1;
    struct rlimit nofile;        /* the fan-out receiver may hold thousands of connections */
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }
    char rules[4200], data[4200], cmd[9000];
    snprintf(data, sizeof data, "%s/ingest-data", work);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'; mkdir -p '%s'", data, work);
    if (system(cmd) != 0)
        return 2;
    snprintf(rules, sizeof rules, "%s/ingest.ebr", work);
    FILE *f = fopen(rules, "w");
    fprintf(f, "bus load {\n  fsync %s\n}\nbus durable {\n  fsync always\n}\nbus lat {\n  fsync interval 10ms\n}\n"
               "target hook http \"http://127.0.0.1:%d/hook\" {\n  retry none\n}\n"
               "rule latency on lat {\n  match type == \"bench.latency\"\n"
               "  transform {\"sent\": data.sent, \"id\": $id}\n  to hook\n}\n", fsync_policy, rport);
    fclose(f);
    cap_lat = 1 << 20;
    lat_us = calloc(cap_lat, sizeof *lat_us);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)rport) };
    sa.sin_addr.s_addr = htonl(0x7f000001);
    struct MHD_Daemon *recv = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD,
                                               (uint16_t)rport, NULL, NULL, on_delivery, NULL,
                                               MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                                               MHD_OPTION_END);
    if (!recv) {
        fprintf(stderr, "bench: the receiver did not start\n");
        return 1;
    }
    char machine[256] = "";
    FILE *m = popen("(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'; nproc; uname -r; date -u +%F) | paste -sd,", "r");
    if (m) {
        if (fgets(machine, sizeof machine, m))
            machine[strcspn(machine, "\n")] = 0;
        pclose(m);
    }
    if (replay_only)
        return replay_rows(ebd, work, port, conns, secs, runs, replay_rate, machine, out);
    char path[4200];
    snprintf(path, sizeof path, "%s/ingest.md", out);
    if (jetstream_only || dedup_only) {
        char *rows = NULL;
        size_t rows_n = 0;
        FILE *rm = open_memstream(&rows, &rows_n);
        if (!rm)
            die("open_memstream");
        int st = (dedup_only ? dedup_rows : jetstream_rows)(ebd, work, port, rport, conns, secs, runs,
                                                            machine, rm);
        fclose(rm);
        MHD_stop_daemon(recv);
        if (st == 0 && dedup_only)
            replace_section(path, "<!-- dedup-rows begin", "<!-- dedup-rows end -->\n", rows);
        else if (st == 0)
            replace_section(path, "<!-- jetstream-rows begin", "<!-- jetstream-rows end -->\n", rows);
        free(rows);
        printf("results: %s\n", path);
        return st;
    }
    if (trace_only || routing_only) {
        /* Those rows alone, their section of OUT/ingest.md replaced (or added at its end). */
        char *rows = NULL;
        size_t rows_n = 0;
        FILE *rm = open_memstream(&rows, &rows_n);
        if (!rm)
            die("open_memstream");
        int st = trace_only ? trace_rows(ebd, work, port, secs, conns, runs, fsync_policy, machine, rm)
                            : routing_rows(ebd, ebc, shared, work, port, runs, machine, rm);
        fclose(rm);
        MHD_stop_daemon(recv);
        if (trace_only)
            replace_section(path, "<!-- trace-table begin", "<!-- trace-table end -->\n", rows);
        else
            replace_section(path, "<!-- routing-row begin", "<!-- routing-row end -->\n", rows);
        free(rows);
        printf("results: %s\n", path);
        return st;
    }
    char *classic = NULL, *table = NULL;
    size_t classic_n = 0, table_n = 0;
    FILE *md = open_memstream(&classic, &classic_n);
    if (!md)
        die("open_memstream");
    if (!table_only && classic_rows(ebd, rules, data, port, secs, conns, fsync_policy, machine, md) != 0)
        return 1;
    if (!table_only) {
        fputc('\n', md);
        if (routing_rows(ebd, ebc, shared, work, port, runs, machine, md) != 0)
            return 1;
    }
    fclose(md);

    FILE *tmd = open_memstream(&table, &table_n);
    if (!tmd)
        die("open_memstream");
    table_opts topts = { .ebd = ebd, .ebc = ebc, .work = work, .shared = shared, .port = port, .conns = conns,
                         .runs = runs, .secs = secs, .start_limit = start_limit, .idle_secs = idle_secs,
                         .drain_limit = drain_limit,
                         .max_rules = max_rules, .fanout = fanout, .label = label };
    bool table_ok = rules_table(&topts, rport, tmd);
    fclose(tmd);
    MHD_stop_daemon(recv);
    /* The file: the rows above, then the table's section; with --rules-table, what the file
     * held with its table section replaced. */
    const char *begin = "<!-- rules-table begin", *end = "<!-- rules-table end -->\n";
    char *old = NULL;
    if (table_only) {
        old = read_whole(path);
        char *b = old ? strstr(old, begin) : NULL, *e = b ? strstr(b, end) : NULL;
        if (b && e)
            memmove(b, e + strlen(end), strlen(e + strlen(end)) + 1);
        while (old && *old && old[strlen(old) - 1] == '\n' && strlen(old) > 1 && old[strlen(old) - 2] == '\n')
            old[strlen(old) - 1] = 0;
    }
    FILE *mdf = fopen(path, "w");
    if (!mdf)
        die(path);
    fputs(table_only ? (old ? old : "") : classic, mdf);
    if (table_ok)
        fprintf(mdf, "\n%s", table);
    fclose(mdf);
    free(old);
    free(classic);
    free(table);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data);
    if (system(cmd) != 0)
        fprintf(stderr, "bench: cannot remove %s\n", data);
    printf("results: %s\n", path);
    return table_ok ? 0 : 1;
}
