/*
 * function.c — function transforms (runtime.h): a command or an HTTP endpoint makes the
 * payload.
 */
#define _GNU_SOURCE   /* pipe2 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime.h"

typedef struct {
    char *v;
    size_t n, cap;
    size_t limit;       /* the most kept; more is counted in dropped */
    size_t dropped;
} grow;

static bool grow_put(grow *g, const char *s, size_t n)
{
    if (g->n + n > g->limit) {
        size_t keep = g->limit > g->n ? g->limit - g->n : 0;
        g->dropped += n - keep;
        n = keep;
    }
    if (g->n + n + 1 > g->cap) {
        size_t cap = (g->n + n + 1) * 2;
        char *v = realloc(g->v, cap);
        if (!v)
            return false;
        g->v = v;
        g->cap = cap;
    }
    memcpy(g->v + g->n, s, n);
    g->n += n;
    g->v[g->n] = 0;
    return true;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Is s[0..n) one JSON value, strictly (a payload goes to targets as it is)?  White space around
 * it is allowed and dropped (in place; *n shrinks): nearly every command ends its output with a
 * line break, which would otherwise end up in file targets and split `ebc test --json` lines. */
static bool json_payload(char *s, size_t *n)
{
    if (!vm_json_valid(s, *n, NULL))
        return false;
    size_t a = vm_json_ws(s, *n, 0), b = *n;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t' || s[b - 1] == '\n' || s[b - 1] == '\r'))
        b--;
    memmove(s, s + a, b - a);
    s[b - a] = 0;
    *n = b - a;
    return true;
}

/* A command that stops reading its input must not kill this process: SIGPIPE is ignored once,
 * for the process (the daemon does the same), and set back to its default in each command. */
static pthread_once_t sigpipe_once = PTHREAD_ONCE_INIT;

static void ignore_sigpipe(void)
{
    signal(SIGPIPE, SIG_IGN);
}

static void close_pipes(int fds[6])
{
    for (int i = 0; i < 6; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* Reaps pid, waiting until deadline (ms, monotonic) at most, then killing its process group:
 * a command that closed its outputs but keeps running is still held to its timeout. */
static int reap(pid_t pid, int64_t deadline, bool *timed_out)
{
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR))
            return status;
        if (r == 0 && now_ms() >= deadline) {
            *timed_out = true;
            kill(-pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            return status;
        }
        struct timespec ts = { 0, 2000000 };
        nanosleep(&ts, NULL);
    }
}

/* The first 200 bytes of stderr, on one line, for a message. */
static void stderr_note(const grow *e, char *buf, size_t cap)
{
    size_t n = e->n;
    while (n > 0 && (e->v[n - 1] == '\n' || e->v[n - 1] == '\r'))
        n--;
    if (n == 0) {
        snprintf(buf, cap, "%s", "");
        return;
    }
    snprintf(buf, cap, ": %.*s%s", (int)(n > 200 ? 200 : n), e->v, n > 200 || e->dropped ? "..." : "");
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
}

static bool run_exec(const char *cmd, uint32_t timeout_ms, const char *json, size_t len,
                     char **payload, size_t *plen, char *err, size_t errcap)
{
    int fds[6] = { -1, -1, -1, -1, -1, -1 };
    int *in = fds, *out = fds + 2, *er = fds + 4;
    pthread_once(&sigpipe_once, ignore_sigpipe);
    /* Close-on-exec everywhere: the command inherits its three pipes and nothing else of ours. */
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 || pipe2(er, O_CLOEXEC) != 0) {
        snprintf(err, errcap, "cannot run '%s': %s", cmd, strerror(errno));
        close_pipes(fds);
        return false;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errcap, "cannot run '%s': %s", cmd, strerror(errno));
        close_pipes(fds);
        return false;
    }
    if (pid == 0) {
        setpgid(0, 0);
        signal(SIGPIPE, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(er[1], 2);
        closefrom(3);    /* and nothing else the process has open, ours or not */
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid);
    close(in[0]);
    close(out[1]);
    close(er[1]);
    /* Write the event and read both outputs at once, so that a chatty command never blocks. */
    fcntl(in[1], F_SETFL, O_NONBLOCK);
    grow o = { .limit = (size_t)64 << 20 }, e = { .limit = 4096 };
    size_t sent = 0;
    int64_t deadline = now_ms() + timeout_ms;
    bool timed_out = false, oom = false;
    int wfd = in[1];
    if (len == 0) {
        close(wfd);
        wfd = -1;
    }
    int open_fds = 2;
    while (open_fds > 0) {
        struct pollfd fds[3] = { { out[0], POLLIN, 0 }, { er[0], POLLIN, 0 }, { wfd, POLLOUT, 0 } };
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        int k = poll(fds, wfd >= 0 ? 3 : 2, (int)left);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            timed_out = true;    /* cannot watch the command: stop it */
            break;
        }
        if (wfd >= 0 && (fds[2].revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t w = write(wfd, json + sent, len - sent);
            if (w > 0)
                sent += (size_t)w;
            if (w < 0 && errno != EAGAIN) {
                sent = len;   /* the command does not read its input: fine */
            }
            if (sent == len) {
                close(wfd);
                wfd = -1;
            }
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char buf[65536];
            ssize_t r = read(fds[i].fd, buf, sizeof buf);
            if (r > 0) {
                oom |= !grow_put(i == 0 ? &o : &e, buf, (size_t)r);
            } else if (r == 0 || errno != EINTR) {
                close(fds[i].fd);
                if (i == 0)
                    out[0] = -1;
                else
                    er[0] = -1;
                open_fds--;
            }
        }
    }
    if (wfd >= 0)
        close(wfd);
    if (out[0] >= 0)
        close(out[0]);
    if (er[0] >= 0)
        close(er[0]);
    if (timed_out)
        kill(-pid, SIGKILL);
    int status = reap(pid, timed_out ? 0 : deadline, &timed_out);
    char note[256];
    stderr_note(&e, note, sizeof note);
    bool ok = false;
    if (oom)
        snprintf(err, errcap, "'%s': out of memory", cmd);
    else if (timed_out)
        snprintf(err, errcap, "'%s' took longer than %u ms%s", cmd, timeout_ms, note);
    else if (WIFSIGNALED(status))
        snprintf(err, errcap, "'%s' was killed by signal %d%s", cmd, WTERMSIG(status), note);
    else if (WEXITSTATUS(status) != 0)
        snprintf(err, errcap, "'%s' exited with status %d%s", cmd, WEXITSTATUS(status), note);
    else if (o.dropped)
        snprintf(err, errcap, "'%s' wrote more than 64 MiB", cmd);
    else if (!o.v || !json_payload(o.v, &o.n))
        snprintf(err, errcap, "'%s' did not write JSON on its standard output%s", cmd, note);
    else
        ok = true;
    if (ok) {
        *payload = o.v ? o.v : calloc(1, 1);
        *plen = o.n;
        o.v = NULL;
    }
    free(o.v);
    free(e.v);
    return ok;
}

/* Keeps the body; past the limit, stops the transfer (its message says why). */
static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    grow *g = arg;
    return grow_put(g, data, size * n) && !g->dropped ? size * n : 0;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static bool run_http(const char *url, uint32_t timeout_ms, const char *json, size_t len,
                     char **payload, size_t *plen, bool *text, char *err, size_t errcap)
{
    pthread_once(&curl_once, curl_init);
    CURL *h = curl_easy_init();
    /* No "Expect: 100-continue": it holds a larger body back for a second. */
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/cloudevents+json");
    struct curl_slist *more = headers ? curl_slist_append(headers, "Expect:") : NULL;
    if (!h || !more) {
        curl_slist_free_all(headers);
        if (h)
            curl_easy_cleanup(h);
        snprintf(err, errcap, "POST %s: cannot start a request", url);
        return false;
    }
    headers = more;
    grow body = { .limit = (size_t)64 << 20 };
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, json);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    char *ctype = NULL;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ctype);
    bool is_text = ctype && strncmp(ctype, "text/", 5) == 0;
    bool ok = false;
    if (rc == CURLE_OPERATION_TIMEDOUT)
        snprintf(err, errcap, "POST %s took longer than %u ms", url, timeout_ms);
    else if (body.dropped)
        snprintf(err, errcap, "POST %s answered more than 64 MiB", url);
    else if (rc != CURLE_OK)
        snprintf(err, errcap, "POST %s: %s", url, curl_easy_strerror(rc));
    else if (status < 200 || status > 299)
        snprintf(err, errcap, "POST %s answered %ld", url, status);
    else if (!is_text && (!body.v || !json_payload(body.v, &body.n)))
        snprintf(err, errcap, "POST %s answered with a body that is not JSON", url);
    else
        ok = true;
    if (ok) {
        *payload = body.v ? body.v : calloc(1, 1);
        *plen = body.n;
        *text = is_text;
        body.v = NULL;
    }
    free(body.v);
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
    return ok;
}

bool rt_run_function(const vm_program *p, const vm_xform *x, const char *json, size_t len,
                     char **payload, size_t *plen, bool *text, char *err, size_t errcap)
{
    *payload = NULL;
    *plen = 0;
    *text = false;
    const char *arg = vm_s(p, x->arg);
    if (x->kind == VM_X_EXEC)
        return run_exec(arg, x->timeout_ms, json, len, payload, plen, err, errcap);
    if (x->kind == VM_X_HTTP)
        return run_http(arg, x->timeout_ms, json, len, payload, plen, text, err, errcap);
    snprintf(err, errcap, "not a function transform");
    return false;
}
