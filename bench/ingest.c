/*
 * ingest.c — ebd's benchmark (bench/README.md, "The daemon"): ingest throughput over keep-alive
 * connections, one event per request and batches of 100, and ingest-to-delivery latency at a
 * fixed rate to a webhook on loopback.  It starts ebd itself (bus fsync interval 10ms) on
 * 127.0.0.1 and its own receiver, and stops both.
 *
 *   bench_ingest --ebd EBD --work DIR --out DIR [--seconds S] [--connections C]
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

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
} loader;

static const char event_fmt[] =
    "{\"specversion\":\"1.0\",\"id\":\"ev-%d-%" PRIu64 "-%d\",\"source\":\"bench\",\"type\":\"bench.load\","
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
    size_t cap = (size_t)l->batch * 400 + 1024;
    char *body = malloc(cap), *req = malloc(cap + 512), buf[8192];
    int self = (int)(uintptr_t)pthread_self() & 0xffff;
    for (uint64_t k = 0; now_s() < l->until; k++) {
        size_t n = 0;
        if (l->batch > 1)
            body[n++] = '[';
        for (int i = 0; i < l->batch; i++) {
            if (i)
                body[n++] = ',';
            n += (size_t)snprintf(body + n, cap - n, event_fmt, self, k, i, k);
        }
        if (l->batch > 1)
            body[n++] = ']';
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
    }
    if (fd >= 0)
        close(fd);
    free(body);
    free(req);
    return NULL;
}

static void run_load(int port, const char *bus, int conns, int batch, double secs, double *req_s, double *ev_s,
                     uint64_t *errors)
{
    loader *l = calloc((size_t)conns, sizeof *l);
    pthread_t *t = calloc((size_t)conns, sizeof *t);
    double t0 = now_s();
    for (int i = 0; i < conns; i++) {
        l[i] = (loader){ .port = port, .batch = batch, .until = t0 + secs, .bus = bus };
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

/* ---- latency: a receiver that notes when each event arrives ---------------------------------- */

static int64_t *lat_us;
static _Atomic size_t nlat;
static size_t cap_lat;

static enum MHD_Result on_delivery(void *cls, struct MHD_Connection *c, const char *url,
                                   const char *method, const char *version, const char *data,
                                   size_t *size, void **state)
{
    (void)cls, (void)url, (void)method, (void)version;
    if (!*state) {
        *state = calloc(1, 64);
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
    free(*state);
    *state = NULL;
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (char *)"", MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ok = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ok;
}

/* Starts ebd on a new data directory (the last run's removed, its writes flushed first, so that
 * one run's page-cache writeback does not slow the next); returns its pid or -1. */
static pid_t start_ebd(const char *ebd, const char *rules, const char *data, int port)
{
    char cmd[9000], listen[64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data);
    if (system(cmd) != 0)
        return -1;
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
 * carrying its send time; the rule's transform passes it to the receiver. */
static void run_latency(int port, int rate, double secs, double *p50, double *p99, double *pmax,
                        size_t *delivered)
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
                         "\"bench\",\"type\":\"bench.latency\",\"data\":{\"sent\":%" PRId64 "}}", k, real_us());
        int rn = snprintf(req, sizeof req, "POST /v1/buses/lat/events HTTP/1.1\r\nHost: x\r\n"
                          "Content-Type: application/cloudevents+json\r\nContent-Length: %d\r\n\r\n%s",
                          n, body);
        roundtrip(fd, req, (size_t)rn, buf, sizeof buf);
    }
    if (fd >= 0)
        close(fd);
    for (int i = 0; i < 100 && atomic_load(&nlat) < total; i++) {
        struct timespec ts = { 0, 20000000 };
        nanosleep(&ts, NULL);
    }
    size_t n = atomic_load(&nlat) < cap_lat ? atomic_load(&nlat) : cap_lat;
    qsort(lat_us, n, sizeof *lat_us, cmp64);
    *delivered = n;
    *p50 = n ? lat_us[n / 2] / 1000.0 : 0;
    *p99 = n ? lat_us[(size_t)(n * 0.99)] / 1000.0 : 0;
    *pmax = n ? lat_us[n - 1] / 1000.0 : 0;
}

int main(int argc, char **argv)
{
    const char *ebd = NULL, *work = NULL, *out = NULL;
    double secs = 5;
    int conns = 8;
    const char *fsync_policy = "interval 10ms";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--ebd")) ebd = argv[i + 1];
        else if (!strcmp(argv[i], "--work")) work = argv[i + 1];
        else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
        else if (!strcmp(argv[i], "--seconds")) secs = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--connections")) conns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--fsync")) fsync_policy = argv[i + 1];
    }
    if (!ebd || !work || !out) {
        fprintf(stderr, "usage: bench_ingest --ebd EBD --work DIR --out DIR [--seconds S] [--connections C]\n");
        return 2;
    }
    int port = 20000 + getpid() % 12000, rport = port + 1;   /* below the ephemeral ports */
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
    char path[4200];
    snprintf(path, sizeof path, "%s/ingest.md", out);
    FILE *md = fopen(path, "w");
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
        run_latency(port, 5000, secs, &r50[r], &r99[r], &rmax[r], &rdel[r]);
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
    fclose(md);
    MHD_stop_daemon(recv);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data);
    if (system(cmd) != 0)
        fprintf(stderr, "bench: cannot remove %s\n", data);
    printf("results: %s\n", path);
    return 0;
}
