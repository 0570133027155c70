/*
 * function.c — function transforms (runtime.h): a command or an HTTP endpoint makes the
 * payload.
 */
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "ebd_int.h"

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

/* A function command's environment: PATH, HOME, LANG and TZ (the rules cannot add to it: a
 * function transform has no options block), made once. */
static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static char **function_env;

static void make_function_env(void)
{
    function_env = cmd_env(NULL, NULL, 0);
}

/* What a function asks while it runs (rt_run_function_until). */
typedef struct {
    bool (*stop)(void *);
    void *arg;
    bool *stopped;
} fn_stop;

/* curl's progress callback: non-zero (abort) when the stop callback says so. */
static int fn_xferinfo(void *p, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt, (void)dn, (void)ut, (void)un;
    const fn_stop *st = p;
    if (st->stop && st->stop(st->arg))
        *st->stopped = true;
    return *st->stopped;
}

/* Runs the command through sh -c with the event on its standard input; its standard output,
 * one JSON value, is the payload. */
static bool run_exec(const char *cmd, uint32_t timeout_ms, const char *json, size_t len,
                     char **payload, size_t *plen, const fn_stop *st, char *err, size_t errcap)
{
    pthread_once(&env_once, make_function_env);
    char *argv[] = { "/bin/sh", "-c", (char *)cmd, NULL };
    cmd_spec s = { argv, function_env, json, len, timeout_ms, (size_t)64 << 20 };
    cmd_result r;
    char why[CMD_STDERR_KEEP + 100];
    if (!function_env) {
        snprintf(err, errcap, "'%s': out of memory", cmd);
        return false;
    }
    if (!cmd_run_until(&s, &r, st->stop, st->arg)) {
        *st->stopped = true;
        snprintf(err, errcap, "'%s' given up (stopped)", cmd);
        return false;
    }
    bool ok = false;
    if (cmd_describe(&s, &r, why, sizeof why)) {
        snprintf(err, errcap, "'%s' %s", cmd, why);
    } else if (!json_payload(r.out, &r.nout)) {
        cmd_stderr_text(&r, why, sizeof why);
        snprintf(err, errcap, "'%s' did not write JSON on its standard output%s%s", cmd,
                 why[0] ? ": " : "", why);
    } else {
        *payload = r.out;
        *plen = r.nout;
        r.out = NULL;
        ok = true;
    }
    cmd_result_free(&r);
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
                     char **payload, size_t *plen, bool *text, const fn_stop *st, char *err,
                     size_t errcap)
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
    ebd_curl_http_only(h);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
    if (st->stop) {
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, fn_xferinfo);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, (void *)st);
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    }
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    char *ctype = NULL;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ctype);
    bool is_text = ctype && strncmp(ctype, "text/", 5) == 0;
    bool ok = false;
    if (rc == CURLE_ABORTED_BY_CALLBACK && *st->stopped)
        snprintf(err, errcap, "POST %s given up (stopped)", url);
    else if (rc == CURLE_OPERATION_TIMEDOUT)
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
    bool stopped;
    return rt_run_function_until(p, x, json, len, payload, plen, text, NULL, NULL, &stopped, err,
                                 errcap);
}

bool rt_run_function_until(const vm_program *p, const vm_xform *x, const char *json, size_t len,
                           char **payload, size_t *plen, bool *text, bool (*stop)(void *),
                           void *sarg, bool *stopped, char *err, size_t errcap)
{
    *payload = NULL;
    *plen = 0;
    *text = false;
    *stopped = false;
    fn_stop st = { stop, sarg, stopped };
    const char *arg = vm_s(p, x->arg);
    if (x->kind == VM_X_EXEC)
        return run_exec(arg, x->timeout_ms, json, len, payload, plen, &st, err, errcap);
    if (x->kind == VM_X_HTTP)
        return run_http(arg, x->timeout_ms, json, len, payload, plen, text, &st, err, errcap);
    snprintf(err, errcap, "not a function transform");
    return false;
}
