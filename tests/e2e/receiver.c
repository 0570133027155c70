/*
 * receiver.c — a webhook receiver for the end-to-end tests: listens on 127.0.0.1:PORT and
 * appends one line per request to LOG: the time (ms), the path, the status it answered, the
 * X-Ebr-Signature, X-Ebr-Timestamp, X-E2e and Content-Type headers (or -) and the body,
 * tab-separated.  What it
 * answers is told on the command line:
 *
 *   receiver PORT LOG [--fail N] [--status S] [--delay MS] [--retry-after SECS]
 *                     [--arrived FILE] [--hold FILE]
 *
 * --fail N: the first N requests get 500 (or S), then 200; --status S alone: every request gets
 * S; --delay: wait before answering; --retry-after: send that Retry-After with failures.
 * --arrived FILE: each request is also written to FILE as soon as its body is in, in LOG's
 * format with the status "-"; --hold FILE: no request is answered while FILE does not exist
 * (removing it holds the next ones again), so a test sees what is in flight without a clock.
 * It stops on SIGTERM, answering what it holds.
 */
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <microhttpd.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static FILE *out, *arrived;
static const char *hold_path;
static atomic_bool stopping;
static int fail_n = -1, status = 0, delay_ms = 0, retry_after = -1, seen = 0;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

typedef struct {
    char *v;
    size_t n;
} body;

/* Appends one line for the request to f (under mu): STATUS is what it answered, or "-". */
static void log_request(FILE *f, struct MHD_Connection *c, const char *url, const char *status,
                        const body *b)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    const char *sig = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Ebr-Signature");
    const char *tsh = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Ebr-Timestamp");
    const char *xh = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-E2e");
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    fprintf(f, "%lld\t%s\t%s\t%s\t%s\t%s\t%s\t%.*s\n",
            (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, url, status, sig ? sig : "-",
            tsh ? tsh : "-", xh ? xh : "-", ct ? ct : "-", (int)b->n, b->v ? b->v : "");
    fflush(f);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *size, void **state)
{
    (void)cls;
    (void)method;
    (void)version;
    body *b = *state;
    if (!b) {
        *state = calloc(1, sizeof *b);
        return MHD_YES;
    }
    if (*size) {
        b->v = realloc(b->v, b->n + *size + 1);
        memcpy(b->v + b->n, data, *size);
        b->n += *size;
        b->v[b->n] = 0;
        *size = 0;
        return MHD_YES;
    }
    if (arrived) {
        pthread_mutex_lock(&mu);
        log_request(arrived, c, url, "-", b);
        pthread_mutex_unlock(&mu);
    }
    while (hold_path && !atomic_load(&stopping) && access(hold_path, F_OK) != 0)
        usleep(5000);
    if (delay_ms)
        usleep((useconds_t)delay_ms * 1000);
    pthread_mutex_lock(&mu);
    int k = seen++;
    unsigned code = 200;
    if (fail_n >= 0)
        code = k < fail_n ? (unsigned)(status ? status : 500) : 200;
    else if (status)
        code = (unsigned)status;
    char cs[16];
    snprintf(cs, sizeof cs, "%u", code);
    log_request(out, c, url, cs, b);
    pthread_mutex_unlock(&mu);
    struct MHD_Response *r = MHD_create_response_from_buffer(2, (char *)"ok", MHD_RESPMEM_PERSISTENT);
    if (code != 200 && retry_after >= 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry_after);
        MHD_add_response_header(r, "Retry-After", ra);
    }
    enum MHD_Result ok = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ok;
}

static void on_done(void *cls, struct MHD_Connection *c, void **state, enum MHD_RequestTerminationCode t)
{
    (void)cls;
    (void)c;
    (void)t;
    body *b = *state;
    if (b) {
        free(b->v);
        free(b);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: receiver PORT LOG [--fail N] [--status S] [--delay MS] [--retry-after S] "
                        "[--arrived FILE] [--hold FILE]\n");
        return 2;
    }
    for (int i = 3; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--fail"))
            fail_n = v;
        else if (!strcmp(argv[i], "--status"))
            status = v;
        else if (!strcmp(argv[i], "--delay"))
            delay_ms = v;
        else if (!strcmp(argv[i], "--retry-after"))
            retry_after = v;
        else if (!strcmp(argv[i], "--hold"))
            hold_path = argv[i + 1];
        else if (!strcmp(argv[i], "--arrived") && !(arrived = fopen(argv[i + 1], "a")))
            return 1;
    }
    out = fopen(argv[2], "a");
    if (!out)
        return 1;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])) };
    sa.sin_addr.s_addr = htonl(0x7f000001);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGINT);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD,
                                            (uint16_t)atoi(argv[1]), NULL, NULL, on_request, NULL,
                                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                                            MHD_OPTION_NOTIFY_COMPLETED, on_done, NULL,
                                            MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "receiver: cannot listen on 127.0.0.1:%s\n", argv[1]);
        return 1;
    }
    int sig;
    sigwait(&s, &sig);
    atomic_store(&stopping, true);      /* held requests are answered, so their threads end */
    MHD_stop_daemon(d);
    fclose(out);
    if (arrived)
        fclose(arrived);
    return 0;
}
