/*
 * schedule.c — schedule sources: one event per firing of a rate(...) or cron(...) expression
 * (cron.c), none lost or doubled across a restart (docs/sources.md).
 *
 * Each firing is recorded in the source's state file under the data directory
 * (sources/NAME.schedule): before its append as "in flight", after it as the last one done,
 * each write synced.  A daemon that starts again goes on after the last firing done.  One left
 * in flight (a stop between the append and its record) is looked for in the bus's log from
 * the moment it was written: found, it is done; not found, it is appended now.  Neither loses
 * nor doubles one, with or without the bus's dedup window.
 *
 * The firings missed while the daemon was down (or before a reload brought the source) are
 * made up according to `catchup`: all of them in order (the default; at most MAX_CATCHUP, the
 * rest skipped with a warning), only the last, or none.  A source's first start has nothing
 * to make up: it fires from then on.
 *
 * The event: id "NAME@TIME" (the firing's time, RFC 3339 UTC), source "/schedules/NAME", type
 * `type` (default "ebr.schedule"), time the firing's, data the `data` option.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cron.h"
#include "sources_int.h"

#define MAX_CATCHUP 10000

enum { CATCHUP_ALL, CATCHUP_LAST, CATCHUP_NONE };

typedef struct {
    sched *x;
    char *expr, *data, *type, *state_path, *dir;
    int catchup;
    pthread_t th;
    bool running;
    _Atomic bool dead;            /* its thread gave up (an unreadable state file) */
    pthread_mutex_t mu;
    pthread_cond_t cv;            /* signalled on stop */
    bool stop;
    int64_t last, inflight;       /* Unix seconds: the last firing done, one in flight (0: none) */
    int64_t inflight_at_ms;       /* when the one in flight was recorded */
} schedule;

static void schedule_free(schedule *c)
{
    sched_free(c->x);
    free(c->expr);
    free(c->data);
    free(c->type);
    free(c->state_path);
    free(c->dir);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

/* ---- the state file ----------------------------------------------------------------------------- */

/* 1 read, 0 none yet, -1 unreadable (err). */
static int read_state(schedule *c, char *err, size_t cap)
{
    FILE *f = fopen(c->state_path, "r");
    if (!f) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, cap, "%s: %s", c->state_path, strerror(errno));
        return -1;
    }
    long long last = 0, inflight = 0, at = 0;
    int k = fscanf(f, "last %lld\ninflight %lld\nat %lld\n", &last, &inflight, &at);
    fclose(f);
    if (k != 3) {
        snprintf(err, cap, "%s is not a schedule's state (remove it to start the schedule afresh)",
                 c->state_path);
        return -1;
    }
    c->last = last;
    c->inflight = inflight;
    c->inflight_at_ms = at;
    return 1;
}

/* Writes the state through a synced temporary file renamed over the old one. */
static bool write_state(schedule *c)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", c->state_path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return false;
    char line[128];
    int n = snprintf(line, sizeof line, "last %" PRId64 "\ninflight %" PRId64 "\nat %" PRId64 "\n",
                     c->last, c->inflight, c->inflight_at_ms);
    bool ok = write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    ok &= close(fd) == 0;
    ok = ok && rename(tmp, c->state_path) == 0;
    int dfd = ok ? open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dfd >= 0) {
        ok = fsync(dfd) == 0;
        close(dfd);
    }
    return ok;
}

/* ---- firing --------------------------------------------------------------------------------- */

static void event_of(const src *s, const schedule *c, int64_t t, sbuf *ev)
{
    sbuf id = { 0 }, from = { 0 };
    sb_printf(&id, "%s@", s->name);
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    sb_printf(&id, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
              tm.tm_hour, tm.tm_min, tm.tm_sec);
    sb_printf(&from, "/schedules/%s", s->name);
    src_ce e = { .id = id.v, .source = from.v, .type = c->type ? c->type : "ebr.schedule",
                 .time_ms = t * 1000, .data = c->data, .n = c->data ? strlen(c->data) : 0,
                 .content_type = c->data ? "application/json" : NULL };
    src_event_json(ev, &e);
    sb_free(&id);
    sb_free(&from);
}

/* Waits until wall time ms or a stop; true when stopped. */
static bool wait_until(schedule *c, int64_t ms)
{
    struct timespec at = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000 };
    pthread_mutex_lock(&c->mu);
    while (!c->stop && ebd_wall_ms() < ms)
        if (pthread_cond_timedwait(&c->cv, &c->mu, &at) == ETIMEDOUT)
            break;
    bool stop = c->stop;
    pthread_mutex_unlock(&c->mu);
    return stop;
}

/* Stores the firing at t, recording it; false when stopped first. */
static bool fire(src *s, schedule *c, int64_t t)
{
    c->inflight = t;
    c->inflight_at_ms = ebd_wall_ms();
    while (!write_state(c)) {
        ebd_log(EBD_ERROR, "msg=\"schedule cannot record its firing: it waits\" source=%s "
                "file=%s error=\"%s\"", s->name, c->state_path, strerror(errno));
        if (wait_until(c, ebd_wall_ms() + 5000))
            return false;
    }
    sbuf ev = { 0 };
    event_of(s, c, t, &ev);
    char why[400];
    for (unsigned tries = 0;; tries++) {
        src_result r = ev.oom ? SRC_RETRY : s->sink.append(s->sink.arg, ev.v, ev.n, why, sizeof why);
        if (r != SRC_RETRY)
            break;
        if (wait_until(c, ebd_wall_ms() + (tries < 5 ? 1000 : 5000))) {
            sb_free(&ev);
            return false;        /* (still in flight: the next start looks for it) */
        }
    }
    sb_free(&ev);
    c->last = t;
    c->inflight = 0;
    if (!write_state(c))
        ebd_log(EBD_ERROR, "msg=\"schedule cannot record its firing\" source=%s file=%s "
                "error=\"%s\"", s->name, c->state_path, strerror(errno));
    return true;
}

/* A firing left in flight: done if the bus has it, else stored now. */
static bool settle_inflight(src *s, schedule *c)
{
    sbuf ev = { 0 };
    event_of(s, c, c->inflight, &ev);
    int has;
    while ((has = src_bus_has(s, c->inflight_at_ms - 5000, ev.v, ev.n)) < 0)
        if (wait_until(c, ebd_wall_ms() + 5000)) {
            sb_free(&ev);
            return false;
        }
    sb_free(&ev);
    ebd_log(EBD_INFO, "msg=\"schedule: a firing was in flight at the last stop\" source=%s "
            "time=%" PRId64 " stored=%s", s->name, c->inflight, has ? "yes" : "no: storing it now");
    if (has) {
        c->last = c->inflight;
        c->inflight = 0;
        write_state(c);
        return true;
    }
    return fire(s, c, c->inflight);
}

static void *run(void *arg)
{
    src *s = arg;
    schedule *c = s->impl;
    char err[400];
    int st = read_state(c, err, sizeof err);
    if (st < 0) {
        ebd_log(EBD_ERROR, "msg=\"schedule not started\" source=%s error=\"%s\"", s->name, err);
        c->dead = true;           /* (ebr_source_up 0) */
        return NULL;
    }
    if (st == 0) {                                 /* its first start: from now on */
        c->last = ebd_wall_ms() / 1000;
        write_state(c);
    } else if (c->inflight && !settle_inflight(s, c)) {
        return NULL;
    }
    unsigned caught = 0;
    for (;;) {
        int64_t now = ebd_wall_ms() / 1000, next = sched_next(c->x, c->last);
        if (next == INT64_MAX) {
            ebd_log(EBD_INFO, "msg=\"schedule has no firing left\" source=%s", s->name);
            wait_until(c, INT64_MAX / 2);
            return NULL;
        }
        if (next <= now && c->catchup != CATCHUP_ALL) {
            int64_t latest = next, k;               /* the last firing missed */
            while ((k = sched_next(c->x, latest)) <= now)
                latest = k;
            if (c->catchup == CATCHUP_NONE) {
                c->last = latest;
                write_state(c);
                continue;
            }
            next = latest;
        } else if (next <= now && ++caught > MAX_CATCHUP) {
            ebd_log(EBD_WARN, "msg=\"schedule: more firings missed than it makes up: the rest "
                    "are skipped\" source=%s made_up=%d", s->name, MAX_CATCHUP);
            while ((next = sched_next(c->x, c->last)) <= now)
                c->last = next;
            write_state(c);
            caught = 0;
            continue;
        } else if (next > now) {
            caught = 0;
            if (wait_until(c, next * 1000))
                return NULL;
        }
        if (!fire(s, c, next))
            return NULL;
    }
}

static void schedule_start(src *s)
{
    schedule *c = s->impl;
    mkdir(c->dir, 0755);
    c->running = pthread_create(&c->th, NULL, run, s) == 0;
    if (!c->running)
        ebd_log(EBD_ERROR, "msg=\"schedule not started: no thread\" source=%s", s->name);
}

static bool schedule_up(const src *s)
{
    const schedule *c = s->impl;
    return c->running && !c->dead;
}

static void schedule_stop(src *s)
{
    schedule *c = s->impl;
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->running)
        pthread_join(c->th, NULL);
    schedule_free(c);
    s->impl = NULL;
}

bool schedule_prepare(src *s, const vm_program *p, const vm_input *in, char *err, size_t cap)
{
    schedule *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, cap, "out of memory");
        return false;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    s->impl = c;
    s->start = schedule_start;
    s->stop = schedule_stop;
    s->up = schedule_up;
    char why[300] = "";
    c->expr = ebd_cfg_text(p, &p->cfgs[in->value], why, sizeof why);
    char *tz = src_opt_text(p, in, "timezone", why, sizeof why);
    c->type = src_opt_text(p, in, "type", why, sizeof why);
    const vm_cfg *d = src_opt(p, in, "data");
    if (d && ebd_cfg_child(p, d, 0))
        c->data = strndup(vm_s(p, ebd_cfg_child(p, d, 0)->str), ebd_cfg_child(p, d, 0)->str.len);
    const vm_cfg *cu = src_opt(p, in, "catchup");
    const vm_cfg *w = cu ? ebd_cfg_child(p, cu, 0) : NULL;
    if (w && w->str.len == 4 && !memcmp(vm_s(p, w->str), "last", 4))
        c->catchup = CATCHUP_LAST;
    else if (w && w->str.len == 4 && !memcmp(vm_s(p, w->str), "none", 4))
        c->catchup = CATCHUP_NONE;
    if (why[0] || !c->expr) {
        free(tz);
        snprintf(err, cap, "%s", why[0] ? why : "out of memory");
        return false;
    }
    size_t at, len;
    c->x = sched_parse(c->expr, tz, why, sizeof why, &at, &len);
    free(tz);
    if (!c->x) {
        snprintf(err, cap, "%s", why);
        return false;
    }
    size_t n = strlen(s->d->data_dir) + strlen(s->name) + 32;
    c->dir = malloc(n);
    c->state_path = malloc(n);
    if (!c->dir || !c->state_path) {
        snprintf(err, cap, "out of memory");
        return false;
    }
    snprintf(c->dir, n, "%s/sources", s->d->data_dir);
    snprintf(c->state_path, n, "%s/sources/%s.schedule", s->d->data_dir, s->name);
    return true;
}
