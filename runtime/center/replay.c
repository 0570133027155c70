/*
 * replay.c — archive and replay (docs/replay.md).  The bus log is the archive; a replay
 * re-runs a stretch of it [since, until) through the CURRENT rules (optionally one rule, one
 * target) and delivers again.  Each replay is a thread of its own at nice 19 (it yields to
 * ingest and to live delivery), with an optional rate cap: it reads the log with its own
 * cursor, a chunk at a time under the daemon's read lock (a reload may close a log, never while
 * it is read), matches each event with its own VM context, and delivers each (rule, target)
 * that matched through ebd_deliver_sync (delivery/sync.c): one delivery at a time, in log order, with
 * the target's retries and dead letter.  The event as matched and delivered carries the
 * extension attribute `replay` naming the replay.
 *
 * A replay's definition and position are kept in DATA/replays/BUS/NAME.json (written whole,
 * synced, renamed), every second while it moves and when it ends; ebd resumes a running one at
 * start from its last saved position: at least once (what it delivered after that save is
 * delivered again).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "center.h"
#include "query.h"

#define RP_CHUNK 64               /* records read under the lock at once */
#define RP_SAVE_MS 1000           /* the position is saved this often while it moves */
#define RP_NAME_MAX 64
/* A replay's rate cap when its request names none ("rate": 0 lifts it): with it, live ingest
 * and routing ran at 1.10 / 1.10 of their rate alone (noise; bench/README.md, "Replay"); with
 * no cap, SCHED_IDLE alone, at 0.92 / 0.92 while the replay read 13,000 events a second. */
#define RP_DEFAULT_RATE 5000.0

enum { RP_RUNNING, RP_DONE, RP_CANCELLED, RP_FAILED };
static const char *const state_names[] = { "running", "done", "cancelled", "failed" };

typedef struct replay {
    char name[RP_NAME_MAX + 1];
    char *bus, *rule, *target;    /* rule, target: NULL for all */
    int64_t since_ns, until_ns;
    uint64_t first, end;          /* the offsets of the range: [first, end) */
    double max_rate;              /* events read per second at most (0: no cap) */
    _Atomic uint64_t position;    /* the next offset to replay */
    _Atomic uint64_t read, matched, delivered, failed, dead_lettered;
    _Atomic int state;
    _Atomic bool cancel;
    int64_t started_ns, finished_ns;
    _Atomic double rate;          /* events read per second, lately */
    char error[400];              /* under M.emu */
    pthread_t th;
    bool joinable;
    _Atomic bool boosted;         /* a reload raised its thread's priority (rp_rules_swapped) */
    pthread_mutex_t save_mu;      /* one save of its file at a time */
    struct replay *next;
} replay;

static struct {
    pthread_mutex_t mu;           /* the list */
    pthread_mutex_t emu;          /* the replays' errors */
    replay *list;
    ebd *d;
    _Atomic bool stopping;        /* the daemon stops: threads leave, replays stay running */
    pthread_rwlock_t use;         /* held (read) by a replay while it uses the rules */
    _Atomic bool pause;           /* a reload waits: let the rules go */
    unsigned seq;
} M = { .mu = PTHREAD_MUTEX_INITIALIZER, .emu = PTHREAD_MUTEX_INITIALIZER, .use = PTHREAD_RWLOCK_INITIALIZER };

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > RP_NAME_MAX)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_'))
            return false;
    return true;
}

/* ---- its file --------------------------------------------------------------------------------- */

static void dir_of(const char *bus, char *out, size_t cap)
{
    snprintf(out, cap, "%s/replays/%s", M.d->data_dir, bus);
}

/* The replay as JSON (REPLAY of docs/center.md). */
static void to_json(replay *x, sbuf *b)
{
    char t[48];
    uint64_t pos = atomic_load(&x->position);
    sb_puts(b, "{\"name\":");
    sb_json_string(b, x->name, strlen(x->name));
    sb_puts(b, ",\"bus\":");
    sb_json_string(b, x->bus, strlen(x->bus));
    sb_printf(b, ",\"state\":\"%s\"", state_names[atomic_load(&x->state)]);
    qy_format_time(x->since_ns, t, sizeof t);
    sb_printf(b, ",\"since\":\"%s\",\"since_ns\":%" PRId64, t, x->since_ns);
    qy_format_time(x->until_ns, t, sizeof t);
    sb_printf(b, ",\"until\":\"%s\",\"until_ns\":%" PRId64 ",\"rule\":", t, x->until_ns);
    if (x->rule)
        sb_json_string(b, x->rule, strlen(x->rule));
    else
        sb_puts(b, "null");
    sb_puts(b, ",\"target\":");
    if (x->target)
        sb_json_string(b, x->target, strlen(x->target));
    else
        sb_puts(b, "null");
    uint64_t total = x->end > x->first ? x->end - x->first : 0;
    uint64_t done = pos > x->first ? (pos < x->end ? pos : x->end) - x->first : 0;
    sb_printf(b, ",\"first\":%" PRIu64 ",\"last\":", x->first);
    if (total)
        sb_printf(b, "%" PRIu64, x->end - 1);
    else
        sb_puts(b, "null");
    sb_printf(b, ",\"end\":%" PRIu64 ",\"position\":%" PRIu64 ",\"total\":%" PRIu64
              ",\"progress\":%.4f,\"events_read\":%" PRIu64 ",\"matched\":%" PRIu64
              ",\"delivered\":%" PRIu64 ",\"failed\":%" PRIu64 ",\"dead_lettered\":%" PRIu64
              ",\"rate\":%.1f,\"max_rate\":%g", x->end, pos, total,
              total ? (double)done / (double)total : 1.0, atomic_load(&x->read),
              atomic_load(&x->matched), atomic_load(&x->delivered), atomic_load(&x->failed),
              atomic_load(&x->dead_lettered), atomic_load(&x->rate), x->max_rate);
    qy_format_time(x->started_ns, t, sizeof t);
    sb_printf(b, ",\"started\":\"%s\",\"started_ns\":%" PRId64 ",\"finished\":", t, x->started_ns);
    if (x->finished_ns) {
        qy_format_time(x->finished_ns, t, sizeof t);
        sb_printf(b, "\"%s\",\"finished_ns\":%" PRId64, t, x->finished_ns);
    } else
        sb_puts(b, "null");
    sb_puts(b, ",\"error\":");
    pthread_mutex_lock(&M.emu);
    if (x->error[0])
        sb_json_string(b, x->error, strlen(x->error));
    else
        sb_puts(b, "null");
    pthread_mutex_unlock(&M.emu);
    sb_puts(b, "}");
}

/* Writes the replay's file whole: a temporary file of a unique name (mkstemp, in the same
 * folder), synced, renamed over the old one, the folder synced; one save of a replay at a time
 * (its save_mu).  A failure is logged and false returned (a running replay goes on; a restart
 * then resumes from an older position: at least once still). */
static bool save(replay *x)
{
    char dir[4200], tmp[4400], path[4400];
    pthread_mutex_lock(&x->save_mu);
    snprintf(dir, sizeof dir, "%s/replays", M.d->data_dir);
    mkdir(dir, 0755);
    dir_of(x->bus, dir, sizeof dir);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/%s.json", dir, x->name);
    snprintf(tmp, sizeof tmp, "%s/.%s.XXXXXX", dir, x->name);
    sbuf b = { 0 };
    to_json(x, &b);
    sb_puts(&b, "\n");
    int fd = b.oom ? -1 : mkostemp(tmp, O_CLOEXEC);
    bool made = fd >= 0;
    bool ok = made && fchmod(fd, 0644) == 0 && write(fd, b.v, b.n) == (ssize_t)b.n &&
              fsync(fd) == 0;
    if (fd >= 0)
        close(fd);
    ok = ok && rename(tmp, path) == 0;
    if (ok) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    } else {
        ebd_log(EBD_ERROR, "msg=\"cannot save a replay's position\" replay=%s path=%s error=\"%s\"",
                x->name, path, b.oom ? "out of memory" : strerror(errno));
        if (made)
            unlink(tmp);
    }
    sb_free(&b);
    pthread_mutex_unlock(&x->save_mu);
    return ok;
}

/* A new replay, zeroed, its save lock ready; NULL when out of memory. */
static replay *replay_new(void)
{
    replay *x = calloc(1, sizeof *x);
    if (x && pthread_mutex_init(&x->save_mu, NULL) != 0) {
        free(x);
        x = NULL;
    }
    return x;
}

static void replay_free(replay *x)
{
    pthread_mutex_destroy(&x->save_mu);
    free(x->bus);
    free(x->rule);
    free(x->target);
    free(x);
}

/* ---- the thread ----------------------------------------------------------------------------- */

/* One record read, copied out of the cursor. */
typedef struct {
    uint64_t off;
    int64_t time_ns;
    char *data;
    size_t len;
} rp_rec;

static bool should_stop(void *arg)
{
    replay *x = arg;
    return atomic_load(&x->cancel) || atomic_load(&M.stopping) || atomic_load(&M.pause);
}

static void set_error(replay *x, const char *msg)
{
    pthread_mutex_lock(&M.emu);
    snprintf(x->error, sizeof x->error, "%s", msg);
    pthread_mutex_unlock(&M.emu);
}

/* Lowers the calling thread's priority below everything else of the daemon: SCHED_IDLE, which
 * runs only when no other thread wants the core (the routers and delivery threads run at nice
 * 19, deliver.c's yield_to_ingest: a replay at nice 19 competed with them as an equal and took
 * live routing down to 0.83 in bench/README.md's replay rows); nice 19 where SCHED_IDLE is
 * refused.  Under sustained saturating load a replay then waits: live traffic comes first. */
static void lower_priority(void)
{
    struct sched_param sp = { 0 };
    if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) == 0)
        return;
    errno = 0;
    int now = getpriority(PRIO_PROCESS, 0);
    if (errno == 0)
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), now + 19);
}

/* Back to the normal priority (SCHED_OTHER) while the thread holds what others wait for (the
 * daemon's lock, which is writer-preferring: a reload waiting behind a starved idle reader would
 * stall every ingest request).  Where SCHED_IDLE was refused (nice 19) nothing changes. */
static void normal_priority(void)
{
    struct sched_param sp = { 0 };
    (void)pthread_setschedparam(pthread_self(), SCHED_OTHER, &sp);
}

/* The daemon's lock (read) taken, and let go, at the normal priority (normal_priority). */
static void d_rdlock(void)
{
    normal_priority();
    pthread_rwlock_rdlock(&M.d->lock);
}

static void d_unlock(void)
{
    pthread_rwlock_unlock(&M.d->lock);
    if (!atomic_load(&M.pause))
        lower_priority();   /* (a reload waits: kept at the normal priority, see `boosted`) */
}

/* Reads up to RP_CHUNK records of x's bus from x->position, under the daemon's read lock (held
 * at the normal priority, d_rdlock).  Returns how many, with *at_end set when the range has
 * nothing more (the end reached, or the log holds nothing more below it: retention or a
 * corrupt stretch went past it); -1 on an error (the bus gone, the log unreadable, no memory
 * with nothing read), with the reason in err: never "the end" for an error.  A corrupt record
 * is passed over (what it held cannot be replayed), logged and said in x's error. */
static int read_chunk(replay *x, rp_rec *out, bool *at_end, char *err, size_t cap)
{
    int n = 0;
    ebd *d = M.d;
    *at_end = false;
    d_rdlock();
    ebd_bus view;
    if (!ebd_bus_view(d, x->bus, strlen(x->bus), &view)) {
        d_unlock();
        snprintf(err, cap, "the rules no longer declare bus '%s'", x->bus);
        return -1;
    }
    uint64_t first, next;
    store_bounds(view.s, &first, &next);
    uint64_t pos = atomic_load(&x->position);
    if (pos < first)
        atomic_store(&x->position, pos = first);     /* retention went past it */
    store_cursor *c;
    if (store_cursor_open(view.s, pos, &c) != STORE_OK) {
        snprintf(err, cap, "the log cannot be read: %s", store_error(view.s));
        d_unlock();
        return -1;
    }
    store_record r;
    store_status st = STORE_OK;
    int out_rc = 0;
    while (n < RP_CHUNK) {
        st = store_cursor_next(c, &r, 0);
        if (st == STORE_TIMEOUT) {
            *at_end = true;             /* nothing more in the log */
            break;
        }
        if (st == STORE_BEHIND) {
            store_bounds(view.s, &first, &next);
            if (store_cursor_seek(c, first) != STORE_OK) {
                snprintf(err, cap, "the log cannot be read: %s", store_cursor_error(c));
                out_rc = -1;
                break;
            }
            continue;
        }
        if (st == STORE_CORRUPT) {
            char why[300];
            snprintf(why, sizeof why, "%s", store_cursor_error(c));
            uint64_t lost = 0;
            if (store_cursor_skip(c, &lost) != STORE_OK) {
                snprintf(err, cap, "the log cannot be read: %s", why);
                out_rc = -1;
                break;
            }
            ebd_log(EBD_WARN, "msg=\"a replay passed over a corrupt stretch of the log\" replay=%s "
                    "bus=%s lost=%" PRIu64 " error=\"%s\"", x->name, x->bus, lost, why);
            char note[400];
            snprintf(note, sizeof note, "%" PRIu64 " offsets passed over, corrupt: %s", lost, why);
            set_error(x, note);
            continue;
        }
        if (st != STORE_OK) {
            snprintf(err, cap, "the log cannot be read: %s", store_cursor_error(c));
            out_rc = -1;
            break;
        }
        if (r.offset >= x->end) {
            *at_end = true;
            break;
        }
        if (!(out[n].data = malloc(r.len + 1))) {
            if (!n) {
                snprintf(err, cap, "out of memory (a record of %zu bytes)", (size_t)r.len);
                out_rc = -1;
            }
            break;              /* (what was read is replayed; the next chunk tries again) */
        }
        memcpy(out[n].data, r.data, r.len);
        out[n].data[r.len] = 0;
        out[n].len = r.len;
        out[n].off = r.offset;
        out[n].time_ns = r.time_ns;
        n++;
    }
    store_cursor_close(c);
    d_unlock();
    if (out_rc < 0) {
        for (int i = 0; i < n; i++)
            free(out[i].data);
        *at_end = false;
        return -1;
    }
    return n;
}

typedef struct {
    const char *s;
    sbuf *out;
    bool any;
} stamp_walk;

static bool keep_other(void *arg, const js_member *m)
{
    stamp_walk *w = arg;
    if (!js_key_is(w->s, m, "replay"))
        js_put_member(w->out, w->s, m, &w->any);
    return true;
}

/* The event with the extension attribute `replay` set to the replay's name (one it had is
 * replaced), into out; false when it is not a JSON object. */
static bool stamp(const rp_rec *e, const char *name, sbuf *out)
{
    size_t i = vm_json_ws(e->data, e->len, 0);
    if (i >= e->len || e->data[i] != '{' || !vm_json_valid(e->data, e->len, NULL))
        return false;
    stamp_walk w = { .s = e->data, .out = out };
    sb_puts(out, "{");
    js_each(e->data, e->len, i, keep_other, &w);
    sb_puts(out, w.any ? ",\"replay\":" : "\"replay\":");
    sb_json_string(out, name, strlen(name));
    sb_puts(out, "}");
    return !out->oom;
}

/* The index of the rule (or target) named name in p, or VM_NONE. */
static uint32_t rule_index(const vm_program *p, const char *name)
{
    for (uint32_t i = 0; i < p->nrules; i++)
        if (p->rules[i].name.len == strlen(name) && !memcmp(vm_s(p, p->rules[i].name), name,
                                                            p->rules[i].name.len))
            return i;
    return VM_NONE;
}

static uint32_t target_index(const vm_program *p, const char *name)
{
    for (uint32_t i = 0; i < p->ntargets; i++)
        if (p->targets[i].name.len == strlen(name) && !memcmp(vm_s(p, p->targets[i].name), name,
                                                              p->targets[i].name.len))
            return i;
    return VM_NONE;
}

/* The rules in force, held (M.use) until release_rules: a reload waits for them.  *gen: their
 * generation (d->generation): rules a reload freed and another allocated at the same address
 * are told apart by it, never by the pointer. */
static ebd_rules *hold_rules(uint64_t *gen)
{
    pthread_rwlock_rdlock(&M.use);
    d_rdlock();
    ebd_rules *r = M.d->rules;
    *gen = M.d->generation;
    d_unlock();
    return r;
}

static void release_rules(void)
{
    pthread_rwlock_unlock(&M.use);
}

/* Replays one event: matches it and delivers it to each pair x selects.  True when it is done
 * (position may pass it); false when it must be done again (stopped, paused) or x failed. */
static bool replay_event(replay *x, ebd_rules *r, vm_ctx *ctx, const rp_rec *e, bool *fatal)
{
    const vm_program *p = r->p;
    uint32_t pbus = dr_bus_index(p, x->bus);
    uint32_t only_rule = x->rule ? rule_index(p, x->rule) : VM_NONE;
    uint32_t only_target = x->target ? target_index(p, x->target) : VM_NONE;
    if (pbus == VM_NONE || (x->rule && only_rule == VM_NONE) || (x->target && only_target == VM_NONE)) {
        char msg[300];
        snprintf(msg, sizeof msg, "the rules no longer declare %s '%s'", pbus == VM_NONE ? "bus"
                 : x->rule && only_rule == VM_NONE ? "rule" : "target", pbus == VM_NONE ? x->bus
                 : x->rule && only_rule == VM_NONE ? x->rule : x->target);
        set_error(x, msg);
        *fatal = true;
        return false;
    }
    sbuf ev = { 0 };
    if (!stamp(e, x->name, &ev)) {
        sb_free(&ev);
        return true;           /* not an event: nothing to match */
    }
    const uint32_t *rules;
    size_t nrules;
    vm_error verr;
    vm_match(ctx, pbus, ev.v, ev.n, &rules, &nrules, &verr);
    /* (the matches are copied: delivering runs transforms on the same context) */
    uint32_t *m = nrules ? malloc(nrules * sizeof *m) : NULL;
    if (nrules && !m) {
        sb_free(&ev);
        return false;
    }
    if (nrules)
        memcpy(m, rules, nrules * sizeof *m);
    bool done = true;
    for (size_t k = 0; k < nrules && done; k++) {
        const vm_rule *ru = &p->rules[m[k]];
        if (only_rule != VM_NONE && m[k] != only_rule)
            continue;
        for (uint32_t j = 0; j < ru->ntgt && done; j++) {
            uint32_t ti = p->rule_targets[ru->tgt0 + j];
            if (only_target != VM_NONE && ti != only_target)
                continue;
            atomic_fetch_add(&x->matched, 1);
            char err[380];
            int res = ebd_deliver_sync(M.d, r, ctx, m[k], ti, ev.v, ev.n, e->time_ns, e->off,
                                       x->name, should_stop, x, err, sizeof err);
            if (res == EBD_SYNC_STOPPED) {
                atomic_fetch_sub(&x->matched, 1);
                done = false;
            } else if (res == EBD_SYNC_DELIVERED) {
                atomic_fetch_add(&x->delivered, 1);
            } else {
                atomic_fetch_add(&x->failed, 1);
                if (res == EBD_SYNC_DEAD_LETTERED)
                    atomic_fetch_add(&x->dead_lettered, 1);
                set_error(x, err);
            }
        }
    }
    free(m);
    sb_free(&ev);
    return done;
}

static void finish(replay *x, int state)
{
    if (atomic_load(&x->state) == RP_RUNNING)
        atomic_store(&x->state, state);
    x->finished_ns = qy_now_ns();
    /* ended: the rate of the whole run (a resumed one: counted from its first start) */
    double secs = (double)(x->finished_ns - x->started_ns) / 1e9;
    atomic_store(&x->rate, secs > 0 ? (double)atomic_load(&x->read) / secs : 0.0);
    save(x);
    ebd_log(EBD_INFO, "msg=\"replay ended\" replay=%s bus=%s state=%s read=%" PRIu64 " matched=%"
            PRIu64 " delivered=%" PRIu64 " failed=%" PRIu64, x->name, x->bus,
            state_names[atomic_load(&x->state)], atomic_load(&x->read), atomic_load(&x->matched),
            atomic_load(&x->delivered), atomic_load(&x->failed));
}

static void *replay_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ebd-replay");   /* (top -H, ps -L) */
    replay *x = arg;
    lower_priority();
    rp_rec *chunk = calloc(RP_CHUNK, sizeof *chunk);
    uint64_t ctx_gen = 0;         /* the generation of the rules ctx was made for */
    vm_ctx *ctx = NULL;
    int64_t saved = mono_ms(), t0 = mono_ms(), rate_at = mono_ms();
    uint64_t rate_n = atomic_load(&x->read), cap_n = 0;
    int ending = RP_DONE;
    char err[400];
    bool fatal = false;
    while (chunk && !fatal) {
        if (atomic_load(&x->cancel)) {
            ending = RP_CANCELLED;
            break;
        }
        if (atomic_load(&M.stopping))
            break;
        if (atomic_load(&x->position) >= x->end)
            break;
        bool at_end;
        int n = read_chunk(x, chunk, &at_end, err, sizeof err);
        if (n < 0) {
            set_error(x, err);
            ending = RP_FAILED;
            break;
        }
        if (n == 0) {
            if (!at_end)
                continue;                         /* (cannot be: read again) */
            atomic_store(&x->position, x->end);   /* (the rest of the range is gone) */
            break;
        }
        for (int i = 0; i < n && !fatal; i++) {
            if (atomic_load(&x->cancel) || atomic_load(&M.stopping))
                break;
            /* (a cancel ends the wait: a start of the same name joins this thread holding the
             * list's lock, which the reload that paused waits for) */
            while (atomic_load(&M.pause) && !atomic_load(&x->cancel) && !atomic_load(&M.stopping))
                nanosleep(&(struct timespec){ 0, 5000000 }, NULL);
            if (atomic_load(&x->cancel) || atomic_load(&M.stopping))
                break;
            if (atomic_exchange(&x->boosted, false))
                lower_priority();
            uint64_t gen;
            ebd_rules *r = hold_rules(&gen);
            if (!ctx || gen != ctx_gen) {
                vm_ctx_free(ctx);
                vm_options o = vm_program_options(r->p);
                ctx = vm_ctx_new(r->p, &o);
                ctx_gen = gen;
            }
            if (!ctx) {
                set_error(x, "out of memory (a matching context)");
                fatal = true;
            }
            bool done = ctx && replay_event(x, r, ctx, &chunk[i], &fatal);
            release_rules();
            if (!done)
                break;
            atomic_fetch_add(&x->read, 1);
            atomic_store(&x->position, chunk[i].off + 1);
            /* the rate cap: no faster than max_rate events a second on average */
            cap_n++;
            if (x->max_rate > 0) {
                int64_t due = t0 + (int64_t)((double)cap_n * 1000.0 / x->max_rate);
                int64_t now = mono_ms();
                /* (in slices: a cancel or a stop is seen within 50 ms) */
                while (due > now && !atomic_load(&x->cancel) && !atomic_load(&M.stopping)) {
                    int64_t ms = due - now < 50 ? due - now : 50;
                    nanosleep(&(struct timespec){ 0, ms * 1000000L }, NULL);
                    now = mono_ms();
                }
            }
            int64_t now = mono_ms();
            if (now - rate_at >= 1000) {
                uint64_t rn = atomic_load(&x->read);
                atomic_store(&x->rate, (double)(rn - rate_n) * 1000.0 / (double)(now - rate_at));
                rate_n = rn;
                rate_at = now;
            }
            if (now - saved >= RP_SAVE_MS) {
                save(x);
                saved = now;
            }
        }
        for (int i = 0; i < n; i++)
            free(chunk[i].data);
    }
    if (fatal)
        ending = RP_FAILED;
    vm_ctx_free(ctx);
    free(chunk);
    if (atomic_load(&x->cancel))
        ending = RP_CANCELLED;
    if (!atomic_load(&M.stopping) || ending != RP_DONE || atomic_load(&x->position) >= x->end)
        finish(x, ending);
    else
        save(x);                 /* the daemon stops: resumed at the next start */
    return NULL;
}

static bool start_thread(replay *x)
{
    x->joinable = pthread_create(&x->th, NULL, replay_main, x) == 0;
    if (!x->joinable) {
        set_error(x, "cannot start a thread");
        atomic_store(&x->state, RP_FAILED);
        save(x);
    }
    return x->joinable;
}

/* ---- start, stop, reload ---------------------------------------------------------------------- */

static replay *find(const char *bus, const char *name)
{
    for (replay *x = M.list; x; x = x->next)
        if (!strcmp(x->bus, bus) && !strcmp(x->name, name))
            return x;
    return NULL;
}

static const char *str_of(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double num_of(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* A replay read back from its file (NULL when it cannot be). */
static replay *load(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    replay *x = j ? replay_new() : NULL;
    const char *name = str_of(j, "name"), *bus = str_of(j, "bus"), *state = str_of(j, "state");
    const char *rule = str_of(j, "rule"), *target = str_of(j, "target"), *error = str_of(j, "error");
    if (x && name && name_ok(name) && bus && state) {
        snprintf(x->name, sizeof x->name, "%s", name);
        x->bus = strdup(bus);
        x->rule = rule ? strdup(rule) : NULL;
        x->target = target ? strdup(target) : NULL;
        x->since_ns = (int64_t)num_of(j, "since_ns");
        x->until_ns = (int64_t)num_of(j, "until_ns");
        x->started_ns = (int64_t)num_of(j, "started_ns");
        x->finished_ns = (int64_t)num_of(j, "finished_ns");
        x->first = (uint64_t)num_of(j, "first");
        x->end = (uint64_t)num_of(j, "end");
        x->max_rate = num_of(j, "max_rate");
        atomic_store(&x->position, (uint64_t)num_of(j, "position"));
        atomic_store(&x->read, (uint64_t)num_of(j, "events_read"));
        atomic_store(&x->matched, (uint64_t)num_of(j, "matched"));
        atomic_store(&x->delivered, (uint64_t)num_of(j, "delivered"));
        atomic_store(&x->failed, (uint64_t)num_of(j, "failed"));
        atomic_store(&x->dead_lettered, (uint64_t)num_of(j, "dead_lettered"));
        int st = RP_FAILED;
        for (int k = 0; k < 4; k++)
            if (!strcmp(state, state_names[k]))
                st = k;
        atomic_store(&x->state, st);
        if (error)
            snprintf(x->error, sizeof x->error, "%s", error);
    } else if (x) {
        replay_free(x);
        x = NULL;
    }
    cJSON_Delete(j);
    return x;
}

void rp_start(ebd *d)
{
    M.d = d;
    atomic_store(&M.stopping, false);
    char root[4200];
    snprintf(root, sizeof root, "%s/replays", d->data_dir);
    DIR *top = opendir(root);
    if (!top)
        return;
    struct dirent *be;
    while ((be = readdir(top))) {
        if (be->d_name[0] == '.')
            continue;
        char dir[4500];
        snprintf(dir, sizeof dir, "%s/%s", root, be->d_name);
        DIR *bd = opendir(dir);
        if (!bd)
            continue;
        struct dirent *fe;
        while ((fe = readdir(bd))) {
            size_t n = strlen(fe->d_name);
            if (fe->d_name[0] == '.' || n < 6 || strcmp(fe->d_name + n - 5, ".json"))
                continue;
            char path[4800];
            snprintf(path, sizeof path, "%s/%s", dir, fe->d_name);
            replay *x = load(path);
            if (!x || !x->bus) {
                ebd_log(EBD_WARN, "msg=\"a replay's file cannot be read: left alone\" path=%s", path);
                if (x)
                    replay_free(x);
                continue;
            }
            pthread_mutex_lock(&M.mu);
            x->next = M.list;
            M.list = x;
            pthread_mutex_unlock(&M.mu);
            if (atomic_load(&x->state) == RP_RUNNING) {
                ebd_log(EBD_INFO, "msg=\"replay resumed\" replay=%s bus=%s position=%" PRIu64
                        " end=%" PRIu64, x->name, x->bus, atomic_load(&x->position), x->end);
                start_thread(x);
            }
        }
        closedir(bd);
    }
    closedir(top);
}

void rp_stop(ebd *d)
{
    (void)d;
    atomic_store(&M.stopping, true);
    pthread_mutex_lock(&M.mu);
    replay *list = M.list;
    M.list = NULL;
    pthread_mutex_unlock(&M.mu);
    for (replay *x = list, *next; x; x = next) {
        next = x->next;
        if (x->joinable)
            pthread_join(x->th, NULL);
        replay_free(x);
    }
}

void rp_rules_swapped(ebd *d)
{
    (void)d;
    atomic_store(&M.pause, true);
    /* a replay's thread at SCHED_IDLE may not run for long on a busy machine: raised to the
     * normal priority until it has let the rules go (it lowers itself again, `boosted`); what
     * it is in the middle of asks should_stop every 50 ms at most (delivery/sync.c's attempt_now,
     * nap), so the wait below is short */
    pthread_mutex_lock(&M.mu);
    for (replay *x = M.list; x; x = x->next)
        if (x->joinable && atomic_load(&x->state) == RP_RUNNING) {
            atomic_store(&x->boosted, true);
            (void)pthread_setschedparam(x->th, SCHED_OTHER, &(struct sched_param){ 0 });
        }
    pthread_mutex_unlock(&M.mu);
    pthread_rwlock_wrlock(&M.use);          /* every replay has let the old rules go */
    pthread_rwlock_unlock(&M.use);
    atomic_store(&M.pause, false);
}

/* ---- the endpoints ---------------------------------------------------------------------------- */

static enum MHD_Result bad(const center_req *r, unsigned status, const char *field,
                           const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static enum MHD_Result bad(const center_req *r, unsigned status, const char *field,
                           const char *fmt, ...)
{
    char msg[500];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return (enum MHD_Result)ebd_send_error(r->c, status, msg, field);
}

/* Checks the replay against the rules in force (bus, rule, target) and fixes its range of
 * offsets; 0, or an HTTP status with the message in msg and the field named. */
static unsigned fix_range(replay *x, char *msg, size_t cap, const char **field)
{
    ebd *d = M.d;
    pthread_rwlock_rdlock(&d->lock);
    ebd_bus view;
    unsigned st = 0;
    const vm_program *p = d->rules->p;
    uint32_t ri = x->rule ? rule_index(p, x->rule) : VM_NONE;
    uint32_t ti = x->target ? target_index(p, x->target) : VM_NONE;
    if (!ebd_bus_view(d, x->bus, strlen(x->bus), &view)) {
        snprintf(msg, cap, "no bus '%s'", x->bus);
        *field = "bus";
        st = 404;
    } else if (x->rule && (ri == VM_NONE || p->rules[ri].bus != dr_bus_index(p, x->bus))) {
        snprintf(msg, cap, "no rule '%s' on bus '%s'", x->rule, x->bus);
        *field = "rule";
        st = 404;
    } else if (x->target && ti == VM_NONE) {
        snprintf(msg, cap, "no target '%s'", x->target);
        *field = "target";
        st = 404;
    } else {
        bool sends = ri == VM_NONE || ti == VM_NONE;
        for (uint32_t j = 0; !sends && j < p->rules[ri].ntgt; j++)
            sends = p->rule_targets[p->rules[ri].tgt0 + j] == ti;
        if (!sends) {
            snprintf(msg, cap, "rule '%s' does not deliver to target '%s'", x->rule, x->target);
            *field = "target";
            st = 400;
        }
    }
    if (!st) {
        uint64_t first, next;
        store_bounds(view.s, &first, &next);
        /* the first offset at or after a time: read one record from there */
        uint64_t at[2] = { next, next };
        int64_t t[2] = { x->since_ns, x->until_ns };
        for (int k = 0; k < 2; k++) {
            store_cursor *c;
            store_record rec;
            if (store_cursor_open_at(view.s, t[k], &c) != STORE_OK)
                continue;
            for (store_status s2; (s2 = store_cursor_next(c, &rec, 0)) != STORE_TIMEOUT;) {
                if (s2 == STORE_OK) {
                    at[k] = rec.offset < next ? rec.offset : next;
                    break;
                }
                uint64_t lost;
                if (s2 != STORE_CORRUPT || store_cursor_skip(c, &lost) != STORE_OK)
                    break;
            }
            store_cursor_close(c);
        }
        x->first = at[0];
        x->end = at[1] > at[0] ? at[1] : at[0];
        atomic_store(&x->position, x->first);
    }
    pthread_rwlock_unlock(&d->lock);
    return st;
}

enum MHD_Result rp_handle_start(const center_req *r)
{
    if (!M.d)
        return bad(r, 503, NULL, "replays are not running");
    cJSON *j = r->n ? cJSON_ParseWithLength(r->body, r->n) : NULL;
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return bad(r, 400, "body", "the body is a JSON object: {\"since\": \"2h\", \"until\"?, "
                   "\"name\"?, \"rule\"?, \"target\"?, \"rate\"?}");
    }
    const char *keys[] = { "name", "since", "until", "rule", "target" };
    const char *val[5] = { 0 };
    for (int k = 0; k < 5; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[k]);
        if (v && !cJSON_IsNull(v) && (!cJSON_IsString(v) || !v->valuestring[0])) {
            cJSON_Delete(j);
            return bad(r, 400, keys[k], "%s is a non-empty string", keys[k]);
        }
        val[k] = v && cJSON_IsString(v) ? v->valuestring : NULL;
    }
    const cJSON *rate = cJSON_GetObjectItemCaseSensitive(j, "rate");
    if (rate && (!cJSON_IsNumber(rate) || rate->valuedouble < 0)) {
        cJSON_Delete(j);
        return bad(r, 400, "rate", "rate is a number of events a second (0: no cap)");
    }
    char msg[500];
    const char *field = NULL;
    int64_t now = qy_now_ns();
    replay *x = replay_new();
    unsigned st = 0;
    if (!x) {
        st = 500;
        snprintf(msg, sizeof msg, "out of memory");
    } else if (!val[1]) {
        st = 400;
        field = "since";
        snprintf(msg, sizeof msg, "since is needed (an RFC 3339 time or a duration back from "
                 "now, as 2h)");
    } else if (!qy_parse_time(val[1], now, &x->since_ns, msg, sizeof msg)) {
        st = 400;
        field = "since";
    } else if (val[2] && !qy_parse_time(val[2], now, &x->until_ns, msg, sizeof msg)) {
        st = 400;
        field = "until";
    } else if (val[0] && !name_ok(val[0])) {
        st = 400;
        field = "name";
        snprintf(msg, sizeof msg, "a replay's name has 1 to %d letters, digits, '-' and '_'",
                 RP_NAME_MAX);
    }
    if (!st) {
        if (!val[2])
            x->until_ns = now;             /* the range is fixed now: what comes later is live */
        x->max_rate = rate ? rate->valuedouble : RP_DEFAULT_RATE;
        x->started_ns = now;
        x->bus = strdup(r->arg[0]);
        x->rule = val[3] ? strdup(val[3]) : NULL;
        x->target = val[4] ? strdup(val[4]) : NULL;
        if (val[0])
            snprintf(x->name, sizeof x->name, "%s", val[0]);
        else {
            char ts[32];
            time_t secs = (time_t)(now / 1000000000);
            struct tm tm;
            gmtime_r(&secs, &tm);
            strftime(ts, sizeof ts, "%Y%m%d-%H%M%S", &tm);
            pthread_mutex_lock(&M.mu);
            snprintf(x->name, sizeof x->name, "r-%s-%u", ts, ++M.seq);
            pthread_mutex_unlock(&M.mu);
        }
        if (!x->bus || (val[3] && !x->rule) || (val[4] && !x->target)) {
            st = 500;
            snprintf(msg, sizeof msg, "out of memory");
        }
    }
    cJSON_Delete(j);
    if (!st)
        st = fix_range(x, msg, sizeof msg, &field);
    if (st) {
        if (x)
            replay_free(x);
        return bad(r, st, field, "%s", msg);
    }
    atomic_store(&x->state, RP_RUNNING);
    pthread_mutex_lock(&M.mu);
    replay *old = find(x->bus, x->name), **pp;
    if (old && atomic_load(&old->state) == RP_RUNNING) {
        pthread_mutex_unlock(&M.mu);
        snprintf(msg, sizeof msg, "replay '%s' is running on bus '%s'", x->name, x->bus);
        replay_free(x);
        return bad(r, 409, "name", "%s", msg);
    }
    if (old) {              /* a finished one of that name: replaced */
        for (pp = &M.list; *pp != old; pp = &(*pp)->next)
            ;
        *pp = old->next;
        /* its thread may still be ending (cancelled: it stops within a moment); joined before
         * the new one's file is written, so that its last save cannot land over it */
        if (old->joinable)
            pthread_join(old->th, NULL);
        replay_free(old);
    }
    if (!save(x)) {
        pthread_mutex_unlock(&M.mu);
        snprintf(msg, sizeof msg, "replay '%s' cannot be saved in the data directory (the "
                 "daemon's log says why): not started", x->name);
        replay_free(x);
        return bad(r, 500, NULL, "%s", msg);
    }
    x->next = M.list;
    M.list = x;
    pthread_mutex_unlock(&M.mu);
    ebd_log(EBD_INFO, "msg=\"replay started\" replay=%s bus=%s first=%" PRIu64 " end=%" PRIu64,
            x->name, x->bus, x->first, x->end);
    sbuf b = { 0 };
    pthread_mutex_lock(&M.mu);
    to_json(x, &b);               /* (as it starts: before its thread moves it) */
    start_thread(x);
    pthread_mutex_unlock(&M.mu);
    enum MHD_Result res = (enum MHD_Result)ebd_send_json(r->c, 201, &b);
    sb_free(&b);
    return res;
}

size_t rp_running(void)
{
    size_t n = 0;
    pthread_mutex_lock(&M.mu);
    for (replay *x = M.list; x; x = x->next)
        n += atomic_load(&x->state) == RP_RUNNING;
    pthread_mutex_unlock(&M.mu);
    return n;
}

enum MHD_Result rp_handle_list(const center_req *r)
{
    pthread_rwlock_rdlock(&r->d->lock);
    ebd_bus view;
    bool known = ebd_bus_view(r->d, r->arg[0], strlen(r->arg[0]), &view);
    pthread_rwlock_unlock(&r->d->lock);
    if (!known)
        return bad(r, 404, "bus", "no bus '%s'", r->arg[0]);
    sbuf b = { 0 };
    sb_puts(&b, "{\"replays\":[");
    pthread_mutex_lock(&M.mu);
    size_t n = 0;
    for (replay *x = M.list; x; x = x->next)
        if (!strcmp(x->bus, r->arg[0])) {
            sb_puts(&b, n++ ? "," : "");
            to_json(x, &b);
        }
    pthread_mutex_unlock(&M.mu);
    sb_puts(&b, "]}");
    enum MHD_Result res = (enum MHD_Result)ebd_send_json(r->c, 200, &b);
    sb_free(&b);
    return res;
}

/* GET (cancel false) or DELETE (cancel true) of one replay: answered from its state under the
 * list's lock (a start of the same name may replace a finished one meanwhile). */
static enum MHD_Result one(const center_req *r, bool cancel)
{
    pthread_mutex_lock(&M.mu);
    replay *x = find(r->arg[0], r->arg[1]);
    if (!x) {
        pthread_mutex_unlock(&M.mu);
        return bad(r, 404, "name", "no replay '%s' on bus '%s'", r->arg[1], r->arg[0]);
    }
    int running = RP_RUNNING;
    if (cancel && atomic_compare_exchange_strong(&x->state, &running, RP_CANCELLED)) {
        atomic_store(&x->cancel, true);
        save(x);
        ebd_log(EBD_INFO, "msg=\"replay cancelled\" replay=%s bus=%s", x->name, x->bus);
    }
    sbuf b = { 0 };
    to_json(x, &b);
    pthread_mutex_unlock(&M.mu);
    enum MHD_Result res = (enum MHD_Result)ebd_send_json(r->c, 200, &b);
    sb_free(&b);
    return res;
}

enum MHD_Result rp_handle_get(const center_req *r)
{
    return one(r, false);
}

enum MHD_Result rp_handle_cancel(const center_req *r)
{
    return one(r, true);
}
