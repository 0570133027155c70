/*
 * sync.c — one delivery made at once, for replays (runtime/center/replay.c): beside the engine of
 * deliver.c and without its queues, on the replay's own thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "delivery_int.h"

/* A replay delivers again what the log holds, beside the engine and without its queues: one
 * event to one (rule, target) pair at a time, on the replay's own thread, with the pieces the
 * engine uses (the payload as deliver.c's make_payload makes it; targets.c's dl_http_prepare
 * and dl_http_finish, dl_deliver_file, dl_deliver_bus, an exec target's command) and the
 * target's retry policy, then its dead letter.  Simple and slow on purpose: a replay is
 * background work. */

/* Waits ms, in slices, unless stop says to stop: false then. */
static bool nap(int64_t ms, bool (*stop)(void *), void *arg)
{
    for (int64_t end = ebd_mono_ms() + ms; ebd_mono_ms() < end;) {
        if (stop && stop(arg))
            return false;
        int64_t left = end - ebd_mono_ms();
        struct timespec ts = { 0, (long)(left < 50 ? (left > 0 ? left : 0) : 50) * 1000000L };
        nanosleep(&ts, NULL);
    }
    return !(stop && stop(arg));
}

/* What a replay's attempt asks while it waits (curl's progress callback, the command's poll). */
typedef struct {
    bool (*stop)(void *);
    void *arg;
    int64_t asked_ms;        /* when stop first said so (0: not yet) */
    bool stopped;
} stop_check;

/* The grace an attempt in progress has once told to stop, to end by itself (one that ends in
 * it is not made twice); past it, it is given up. */
#define STOP_GRACE_MS 1000

/* Has the attempt been told to stop for longer than STOP_GRACE_MS?  Sets sc->stopped then. */
static bool stop_due(stop_check *sc)
{
    if (!sc->stop || sc->stopped)
        return sc->stopped;
    if (!sc->stop(sc->arg)) {
        sc->asked_ms = 0;
        return false;
    }
    int64_t now = ebd_mono_ms();
    if (!sc->asked_ms)
        sc->asked_ms = now;
    return sc->stopped = now - sc->asked_ms >= STOP_GRACE_MS;
}

/* curl's progress callback of a replay's http attempt: non-zero (abort) when stop_due. */
static int stop_xferinfo(void *p, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt, (void)dn, (void)ut, (void)un;
    return stop_due(p);
}

/* stop_due as a callback (cmd_run_until, rt_run_function_until). */
static bool stop_due_cb(void *sc)
{
    return stop_due(sc);
}

/* A replay's http attempts share one libcurl handle per thread, reset before each, which keeps
 * its connections (and TLS sessions) open from one attempt to the next: with a handle made for
 * each attempt, every event cost a new connection and a TLS handshake, and a replay of 300
 * events to a remote target over TLS took most of two minutes on a busy machine (its thread runs
 * at the lowest priority). */
static pthread_key_t easy_key;
static pthread_once_t easy_once = PTHREAD_ONCE_INIT;
static bool easy_key_ok;

static void easy_free(void *h)
{
    curl_easy_cleanup(h);
}

static void easy_key_make(void)
{
    easy_key_ok = pthread_key_create(&easy_key, easy_free) == 0;
}

/* This thread's handle, reset (NULL: out of memory); *own: the caller cleans it up itself (no
 * key to keep it under). */
static CURL *thread_easy(bool *own)
{
    pthread_once(&easy_once, easy_key_make);
    CURL *h = easy_key_ok ? pthread_getspecific(easy_key) : NULL;
    *own = false;
    if (h) {
        curl_easy_reset(h);
        return h;
    }
    h = curl_easy_init();
    if (h && (!easy_key_ok || pthread_setspecific(easy_key, h) != 0))
        *own = true;
    return h;
}

/* One attempt of payload at t, synchronously; extra: one more header for http (or NULL).  An
 * http request or a command in progress is given up when stop(arg) has said so for longer than
 * STOP_GRACE_MS (asked about every 50 ms: curl's progress callback, the command's poll): false
 * then, the attempt not made as far as the caller knows (a replay makes it again later: its
 * target may get it twice), true when it was made (a->error: how it ended). */
static bool attempt_now(ebd *d, ebd_target *t, const char *payload, size_t n, bool text,
                        bool event, const char *extra, bool (*stop)(void *), void *arg, attempt *a)
{
    stop_check sc = { stop, arg, 0, false };
    switch (t->kind) {
    case T_HTTP: {
        if (t->remote && !dl_remote_payload_ok(t, payload, n, text, a))
            return true;
        bool own;
        CURL *h = thread_easy(&own);
        if (!h) {
            snprintf(a->error, sizeof a->error, "out of memory");
            a->retry = true;
            return true;
        }
        struct curl_slist *hs = NULL;
        http_seen seen;
        dl_http_prepare(t, h, payload, n, dl_http_ctype(payload, n, text, event), &hs, &seen);
        struct curl_slist *more = extra ? curl_slist_append(hs, extra) : hs;
        if (!more) {   /* (no memory for the header: the request is not sent) */
            snprintf(a->error, sizeof a->error, "out of memory");
            a->retry = true;
            curl_slist_free_all(hs);
            if (own)
                curl_easy_cleanup(h);
            return true;
        }
        hs = more;
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hs);
        if (stop) {
            curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, stop_xferinfo);
            curl_easy_setopt(h, CURLOPT_XFERINFODATA, &sc);
            curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        }
        CURLcode rc = curl_easy_perform(h);
        if (!(sc.stopped && rc == CURLE_ABORTED_BY_CALLBACK))
            dl_http_finish(t, h, rc, &seen, a);
        if (own)
            curl_easy_cleanup(h);
        curl_slist_free_all(hs);
        return !(sc.stopped && rc == CURLE_ABORTED_BY_CALLBACK);
    }
    case T_FILE:
        /* (fsync interval: ebd_deliver_sync syncs it; a live delivery's, the engine's commit) */
        dl_deliver_file(t, payload, n, text, a);
        if (!a->error[0] && t->fsync == STORE_FSYNC_ALWAYS && fdatasync(t->fd) != 0)
            snprintf(a->error, sizeof a->error, "%s: %s", t->path, strerror(errno));
        return true;
    case T_BUS:
        dl_deliver_bus(d, t, payload, n, text, a);
        return true;
    case T_MQTT:
    case T_NATS:
        dl_deliver_broker(t, payload, n, text, NULL, a);
        return true;
    default: {
        cmd_spec cs = { t->argv, t->envp, payload, n, (uint32_t)t->timeout_ms, 0 };
        cmd_result r;
        if (!cmd_run_until(&cs, &r, stop ? stop_due_cb : NULL, &sc))
            return false;
        dl_exec_outcome(t, &cs, &r, a);
        return true;
    }
    }
}

/* Takes a slot of t's limits (concurrency, rate), waiting for one; false when told to stop. */
static bool slot_now(ebd_target *t, bool (*stop)(void *), void *arg)
{
    while (!dl_try_slot(t))
        if (!nap(2, stop, arg))
            return false;
    return true;
}

/* The dead letter of a replayed delivery: as to_dead_letter writes it, with "replay". */
static int dead_letter_now(ebd *d, ebd_rules *r, uint32_t rule, ebd_target *t, const char *event,
                           size_t len, uint64_t off, const char *replay, const attempt *a,
                           unsigned attempts, int64_t first_ms, bool (*stop)(void *), void *arg)
{
    const vm_rule *ru = &r->p->rules[rule];
    ebd_target *dl = ru->dead_letter != VM_NONE ? &r->targets[ru->dead_letter]
                   : t->dead_letter != VM_NONE ? &r->targets[t->dead_letter] : NULL;
    const char *file = dl ? NULL : t->dead_letter_file;
    const char *rname = vm_s(r->p, ru->name);
    char esc[1024];
    if (!dl && !file) {
        ebd_log(EBD_ERROR, "msg=\"replayed delivery dropped: no dead-letter target\" replay=%s "
                "rule=%.*s target=%s offset=%" PRIu64 " error=\"%s\"", replay, (int)ru->name.len,
                rname, t->name, off, ebd_log_text(a->error, esc, sizeof esc));
        return EBD_SYNC_DROPPED;
    }
    sbuf b = { 0 };
    dl_dead_letter_record(&b, event, len, rname, ru->name.len, t->name, a, attempts, first_ms,
                       ebd_wall_ms(), off, replay);
    if (b.oom) {
        sb_free(&b);
        return EBD_SYNC_DROPPED;
    }
    ebd_log(EBD_WARN, "msg=\"dead letter\" replay=%s rule=%.*s target=%s offset=%" PRIu64
            " attempts=%u error=\"%s\"", replay, (int)ru->name.len, rname, t->name, off, attempts,
            ebd_log_text(a->error, esc, sizeof esc));
    int out = EBD_SYNC_DROPPED;
    for (unsigned k = 0; k < 6; k++) {
        attempt x = { 0 };
        if (file) {
            ebd_target ft = { .name = t->name, .fsync = STORE_FSYNC_ALWAYS };
            ft.fd = dl_open_output(d, file, &ft.path, x.error, sizeof x.error);
            if (ft.fd >= 0) {
                dl_deliver_file(&ft, b.v, b.n, false, &x);
                close(ft.fd);
            }
            free(ft.path);
        } else if (slot_now(dl, stop, arg)) {
            bool made = attempt_now(d, dl, b.v, b.n, false, false, NULL, stop, arg, &x);
            dl_give_slot(dl);
            if (!made) {
                out = EBD_SYNC_STOPPED;
                break;
            }
        } else {
            out = EBD_SYNC_STOPPED;
            break;
        }
        if (!x.error[0]) {
            out = EBD_SYNC_DEAD_LETTERED;
            break;
        }
        ebd_log(EBD_ERROR, "msg=\"dead-letter delivery failed\" replay=%s target=%s error=\"%s\"",
                replay, t->name, ebd_log_text(x.error, esc, sizeof esc));
        if (!nap(1000LL << k, stop, arg)) {
            out = EBD_SYNC_STOPPED;
            break;
        }
    }
    sb_free(&b);
    return out;
}

int ebd_deliver_sync(ebd *d, ebd_rules *r, vm_ctx *ctx, uint32_t rule, uint32_t target,
                     const char *event, size_t len, int64_t time_ns, uint64_t off,
                     const char *replay, bool (*stop)(void *), void *arg, char *err, size_t cap)
{
    const vm_program *pr = r->p;
    const vm_rule *ru = &pr->rules[rule];
    ebd_target *t = &r->targets[target];
    const vm_xform *x = ru->xform != VM_NONE ? &pr->xforms[ru->xform] : NULL;
    char *payload = NULL;
    size_t plen = 0;
    bool text = false;
    attempt a = { 0 };
    int64_t first_ms = ebd_wall_ms();
    char rname[VM_MAX_NAME + 1];
    snprintf(rname, sizeof rname, "%.*s", (int)ru->name.len, vm_s(pr, ru->name));
    /* the payload, as make_payload makes it */
    if (x && (x->kind == VM_X_EXEC || x->kind == VM_X_HTTP)) {
        /* (a function in progress is given up as an attempt is: stop_due) */
        stop_check sc = { stop, arg, 0, false };
        bool stopped = false;
        if (!rt_run_function_until(pr, x, event, len, &payload, &plen, &text,
                                   stop ? stop_due_cb : NULL, &sc, &stopped, a.error,
                                   sizeof a.error))
            payload = NULL;
        if (stopped)
            return EBD_SYNC_STOPPED;
    } else {
        const char *out = event;
        size_t n = len;
        vm_error e;
        uint32_t bus = ru->bus;
        vm_xform_env env = { .bus = vm_s(pr, pr->buses[bus].name), .rule = rname,
                             .ingest_ms = time_ns / 1000000 };
        if (x && vm_transform(ctx, rule, event, len, &env, &out, &n, &text, &e) != VM_OK)
            snprintf(a.error, sizeof a.error, "transform failed: %s", e.msg);
        else if ((payload = malloc(n + 1))) {
            memcpy(payload, out, n);
            payload[n] = 0;
            plen = n;
        } else
            snprintf(a.error, sizeof a.error, "out of memory");
    }
    if (payload && (t->kind == T_BUS || t->remote) && !text &&
        dl_stamp_hops(event, len, &payload, &plen, a.error, sizeof a.error) < 0) {
        free(payload);
        payload = NULL;
    }
    char extra[VM_MAX_NAME + 40];
    snprintf(extra, sizeof extra, "X-Ebr-Replay: %s", replay);
    unsigned attempts = 0;
    int res;
    for (;;) {
        if (!payload) {
            res = dead_letter_now(d, r, rule, t, event, len, off, replay, &a, attempts, first_ms,
                                  stop, arg);
            break;
        }
        if (!slot_now(t, stop, arg)) {
            res = EBD_SYNC_STOPPED;
            break;
        }
        a = (attempt){ 0 };
        attempts++;
        bool made = attempt_now(d, t, payload, plen, text, !x, extra, stop, arg, &a);
        dl_give_slot(t);
        if (!made) {
            res = EBD_SYNC_STOPPED;
            break;
        }
        /* fsync interval: synced here (the engine's committer may have stopped already: a
         * replay outlives a reload's old engine; one delivery at a time, a sync each is cheap
         * beside it) */
        if (!a.error[0] && t->kind == T_FILE && t->fsync == STORE_FSYNC_INTERVAL &&
            fdatasync(t->fd) != 0) {
            snprintf(a.error, sizeof a.error, "%s: %s", t->path, strerror(errno));
            a.retry = true;
        }
        if (!a.error[0]) {
            res = EBD_SYNC_DELIVERED;
            break;
        }
        /* retried as the target says; a replayed event's age counts from its first attempt */
        int64_t age = ebd_wall_ms() - first_ms;
        if (!(a.retry && attempts < t->retry.attempts && (uint64_t)age < t->retry.max_age_ms)) {
            res = dead_letter_now(d, r, rule, t, event, len, off, replay, &a, attempts, first_ms,
                                  stop, arg);
            break;
        }
        uint64_t cap_ms = t->retry.first_ms << (attempts - 1 < 30 ? attempts - 1 : 30);
        if (cap_ms > t->retry.max_ms || cap_ms == 0)
            cap_ms = t->retry.max_ms;
        unsigned seed = (unsigned)(off ^ (uint64_t)first_ms);
        int64_t wait = (int64_t)((double)rand_r(&seed) / RAND_MAX * (double)cap_ms);
        if (a.retry_after_ms > 0)
            wait = a.retry_after_ms < (int64_t)t->retry.max_ms ? a.retry_after_ms
                                                                : (int64_t)t->retry.max_ms;
        if (!nap(wait, stop, arg)) {
            res = EBD_SYNC_STOPPED;
            break;
        }
    }
    if (res != EBD_SYNC_DELIVERED)
        snprintf(err, cap, "%s", a.error);
    free(payload);
    return res;
}

