/*
 * query_http.c — the event center's endpoints that read the log (docs/replay.md):
 * GET /v1/buses/{bus}/events, the event query (query.c reads), and POST /v1/buses/{bus}/dry-run
 * (dryrun.c matches).  Work per request is bounded: the query looks at QY_SCAN_MAX records at
 * most (a filter that matches nothing answers with a `next` token to go on, never after
 * minutes), the dry run reads DR_HTTP_MAX events for DR_HTTP_MS at most ("truncated": true
 * past them), one at a time (409 meanwhile), letting the daemon's lock go every
 * DR_RELOCK_EVERY events.  The
 * posted text of a dry run is compiled on its own: it declares the bus and the targets its
 * rules name (nothing is delivered to them), and imports the standard templates only (the
 * compiler's CC_NO_FILES: it reads no file of the daemon's machine).
 */
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../compiler/compiler.h"
#include "center.h"
#include "query.h"

#define QY_LIMIT_DEFAULT 50
#define QY_LIMIT_MAX 1000
#define QY_SCAN_MAX 20000         /* records one request looks at, at most */
#define DR_HTTP_MAX 200000        /* events one HTTP dry run reads at most */
#define DR_HTTP_MS 10000          /* and for this long at most (ms) */
#define DR_RELOCK_EVERY 4096      /* events read under the daemon's lock at once */

/* ---- GET /v1/buses/{bus}/events ------------------------------------------------------------ */

typedef struct {
    sbuf *b;
    size_t n;
} page;

static bool put_event(void *arg, const store_record *r)
{
    page *pg = arg;
    char t[48];
    qy_format_time(r->time_ns, t, sizeof t);
    sb_printf(pg->b, "%s{\"offset\":%" PRIu64 ",\"time\":\"%s\",\"event\":", pg->n++ ? "," : "",
              r->offset, t);
    if (vm_json_valid((const char *)r->data, r->len, NULL))
        sb_put(pg->b, (const char *)r->data, r->len);
    else
        sb_json_string(pg->b, (const char *)r->data, r->len);
    sb_puts(pg->b, "}");
    return true;
}

/* Reads the query's parameters into q; 0, or 400 with the message and the parameter named. */
static unsigned read_params(const center_req *r, qy_query *q, char *msg, size_t cap,
                            const char **field)
{
    int64_t now = qy_now_ns();
    const char *v;
    *q = (qy_query){ .since_ns = QY_NONE_BEFORE, .until_ns = QY_NONE_AFTER, .newest = true,
                     .limit = QY_LIMIT_DEFAULT, .scan_max = QY_SCAN_MAX };
    if ((v = center_query(r, "order"))) {
        if (strcmp(v, "newest") && strcmp(v, "oldest")) {
            snprintf(msg, cap, "order is newest or oldest, not '%.80s'", v);
            *field = "order";
            return 400;
        }
        q->newest = !strcmp(v, "newest");
    }
    static const char *const times[] = { "since", "until" };
    for (int k = 0; k < 2; k++)
        if ((v = center_query(r, times[k])) &&
            !qy_parse_time(v, now, k ? &q->until_ns : &q->since_ns, msg, cap)) {
            *field = times[k];
            return 400;
        }
    if ((v = center_query(r, "limit"))) {
        char *end;
        errno = 0;
        long n = strtol(v, &end, 10);
        if (*end || errno || end == v || n < 1 || n > QY_LIMIT_MAX) {
            snprintf(msg, cap, "limit is a number from 1 to %d, not '%.80s'", QY_LIMIT_MAX, v);
            *field = "limit";
            return 400;
        }
        q->limit = (size_t)n;
    }
    if ((v = center_query(r, "after"))) {
        if (!qy_token_read(v, q->newest, &q->at)) {
            snprintf(msg, cap, "after takes the `next` token of a page in the same order, not "
                     "'%.80s'", v);
            *field = "after";
            return 400;
        }
        q->resume = true;
    }
    q->f.source = center_query(r, "source");
    q->f.type = center_query(r, "type");
    if ((q->f.source && !*q->f.source) || (q->f.type && !*q->f.type)) {
        snprintf(msg, cap, "%s is empty", q->f.source && !*q->f.source ? "source" : "type");
        *field = q->f.source && !*q->f.source ? "source" : "type";
        return 400;
    }
    return 0;
}

enum MHD_Result qy_handle_events(const center_req *r)
{
    qy_query q;
    char msg[400];
    const char *field = NULL;
    unsigned bad = read_params(r, &q, msg, sizeof msg, &field);
    if (bad)
        return (enum MHD_Result)ebd_send_error(r->c, bad, msg, field);
    sbuf b = { 0 };
    sb_puts(&b, "{\"events\":[");
    page pg = { .b = &b };
    bool more = false;
    uint64_t next = 0;
    char err[300] = "";
    /* under the lock: a reload may close a bus's log, never while it is read here */
    pthread_rwlock_rdlock(&r->d->lock);
    ebd_bus view;
    bool found = ebd_bus_view(r->d, r->arg[0], strlen(r->arg[0]), &view);
    store_status st = found ? qy_run(view.s, &q, put_event, &pg, &more, &next, err, sizeof err)
                            : STORE_OK;
    pthread_rwlock_unlock(&r->d->lock);
    enum MHD_Result res;
    if (!found) {
        snprintf(msg, sizeof msg, "no bus '%.200s'", r->arg[0]);
        res = (enum MHD_Result)ebd_send_error(r->c, 404, msg, "bus");
    } else if (st != STORE_OK) {
        snprintf(msg, sizeof msg, "the log cannot be read: %s", err);
        res = (enum MHD_Result)ebd_send_error(r->c, 500, msg, NULL);
    } else {
        char tok[40];
        qy_token(q.newest, next, tok, sizeof tok);
        sb_puts(&b, "],\"next\":");
        if (more)
            sb_printf(&b, "\"%s\"}", tok);
        else
            sb_puts(&b, "null}");
        res = b.oom ? (enum MHD_Result)ebd_send_error(r->c, 500, "out of memory", NULL)
                    : (enum MHD_Result)ebd_send_json(r->c, 200, &b);
    }
    sb_free(&b);
    return res;
}

/* ---- POST /v1/buses/{bus}/dry-run ----------------------------------------------------------- */

static _Atomic bool dr_busy;      /* a dry run is in progress (one at a time) */

typedef struct {
    ebd *d;
    const char *bus;
} relock_arg;

/* dr_limits.relock: lets go of the daemon's lock (read) and takes it again; the bus's log as
 * the rules in force now have it (NULL: they declare the bus no more). */
static store *relock(void *arg)
{
    relock_arg *a = arg;
    pthread_rwlock_unlock(&a->d->lock);
    sched_yield();
    pthread_rwlock_rdlock(&a->d->lock);
    ebd_bus view;
    return ebd_bus_view(a->d, a->bus, strlen(a->bus), &view) ? view.s : NULL;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

enum MHD_Result dr_handle(const center_req *r)
{
    const char *bus = r->arg[0];
    char msg[600];
    int64_t now = qy_now_ns(), since = QY_NONE_BEFORE, until = QY_NONE_AFTER;
    const char *v;
    if (!(v = center_query(r, "since")))
        return (enum MHD_Result)ebd_send_error(r->c, 400, "since is needed (an RFC 3339 time or "
                                               "a duration back from now, as 24h)", "since");
    if (!qy_parse_time(v, now, &since, msg, sizeof msg))
        return (enum MHD_Result)ebd_send_error(r->c, 400, msg, "since");
    if ((v = center_query(r, "until")) && !qy_parse_time(v, now, &until, msg, sizeof msg))
        return (enum MHD_Result)ebd_send_error(r->c, 400, msg, "until");
    if (!r->n)
        return (enum MHD_Result)ebd_send_error(r->c, 400, "the body is the rules' source text "
                                               "(an .ebr file that declares the bus)", "body");
    /* compiled on its own (the messages name it dry-run.ebr) and reading no file of this
     * machine: CC_NO_FILES refuses every import but the standard templates' and leaves the
     * files of schema options unread (the compiler quotes what it reads in its messages) */
    char *diag = NULL;
    size_t ndiag = 0;
    FILE *df = open_memstream(&diag, &ndiag);
    cc_result cr;
    vm_program *p = df ? cc_compile_text_flags("dry-run.ebr", r->body, r->n, CC_NO_FILES, df,
                                                &cr) : NULL;
    if (df)
        fclose(df);
    if (!p) {
        sbuf b = { 0 };
        sb_puts(&b, "{\"error\":\"the rules have errors\",\"field\":\"body\",\"messages\":");
        sb_json_string(&b, diag ? diag : "", diag ? ndiag : 0);
        sb_puts(&b, "}");
        enum MHD_Result res = (enum MHD_Result)ebd_send_json(r->c, 400, &b);
        sb_free(&b);
        free(diag);
        return res;
    }
    free(diag);
    uint32_t pb = dr_bus_index(p, bus);
    if (pb == VM_NONE) {
        vm_program_free(p);
        snprintf(msg, sizeof msg, "the rules posted do not declare bus '%.200s' (bus %.200s)",
                 bus, bus);
        return (enum MHD_Result)ebd_send_error(r->c, 400, msg, "body");
    }
    /* one dry run at a time, for DR_HTTP_MS at most, the daemon's lock let go of every
     * DR_RELOCK_EVERY events (a reload waiting for it goes first: writer-preferring) */
    if (atomic_exchange(&dr_busy, true)) {
        vm_program_free(p);
        return (enum MHD_Result)ebd_send_error(r->c, 409, "another dry run is in progress: try "
                                               "again when it has finished", NULL);
    }
    dr_result res;
    char err[400] = "";
    relock_arg ra = { r->d, bus };
    dr_limits lim = { .max_events = DR_HTTP_MAX, .deadline_ms = mono_ms() + DR_HTTP_MS,
                      .relock = relock, .arg = &ra, .relock_every = DR_RELOCK_EVERY };
    pthread_rwlock_rdlock(&r->d->lock);
    ebd_bus view;
    bool found = ebd_bus_view(r->d, bus, strlen(bus), &view);
    bool ok = found && dr_run(view.s, p, pb, since, until, &lim, &res, err, sizeof err);
    pthread_rwlock_unlock(&r->d->lock);
    atomic_store(&dr_busy, false);
    vm_program_free(p);
    if (!found) {
        snprintf(msg, sizeof msg, "no bus '%.200s'", bus);
        return (enum MHD_Result)ebd_send_error(r->c, 404, msg, "bus");
    }
    if (!ok) {
        snprintf(msg, sizeof msg, "the dry run failed: %s", err);
        return (enum MHD_Result)ebd_send_error(r->c, 500, msg, NULL);
    }
    char *json = dr_json(&res);
    dr_free(&res);
    if (!json)
        return (enum MHD_Result)ebd_send_error(r->c, 500, "out of memory", NULL);
    sbuf b = { .v = json, .n = strlen(json), .cap = strlen(json) + 1 };
    enum MHD_Result out = (enum MHD_Result)ebd_send_json(r->c, 200, &b);
    free(json);
    return out;
}
