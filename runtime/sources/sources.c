/*
 * sources.c — a ruleset's sources (sources.h): read from the program, started, stopped; and the
 * sink through which each stores what it takes in, with ingest's checks.
 */
#include <stdlib.h>
#include <string.h>

#include "../center/center.h"
#include "../center/trace.h"
#include "../schema/schema.h"
#include "sources_int.h"

struct src_set {
    ebd *d;
    src *v;
    size_t n;
    bool started;
};

const vm_cfg *src_opt(const vm_program *p, const vm_input *in, const char *key)
{
    return ebd_cfg_option(p, in->opt0, in->nopt, key);
}

char *src_opt_text(const vm_program *p, const vm_input *in, const char *key, char *err, size_t cap)
{
    const vm_cfg *o = src_opt(p, in, key);
    if (!o)
        return NULL;
    char why[300] = "";
    char *t = ebd_cfg_text(p, ebd_cfg_child(p, o, 0), why, sizeof why);
    if (!t)
        snprintf(err, cap, "'%s': %s", key, why[0] ? why : "out of memory");
    return t;
}

/* ---- the sink --------------------------------------------------------------------------------- */

/* Stores ev as ingest would: the bus as the running rules see it (its size limit, schemas),
 * the CloudEvents checks, its dedup window; counted and traced.  With d->lock held for reading
 * (taking it a second time could wait behind a reload's writer that waits for the first). */
src_result src_append_locked(src *s, const char *ev, size_t n, char *why, size_t cap)
{
    ebd *d = s->d;
    src_result r = SRC_STORED;
    bool dup = false;
    ebd_bus view, *b = ebd_bus_view(d, s->bus, strlen(s->bus), &view) ? &view : NULL;
    const char *id, *what;
    size_t idlen, at;
    char w[240] = "", *unset = NULL;
    bool nulls = false;
    if (atomic_load(&d->stopping) || !b || !b->s) {
        snprintf(why, cap, "%s", b && b->s ? "the daemon is stopping" : "the bus is not open");
        r = SRC_RETRY;
    } else if (n > b->max_event) {
        snprintf(why, cap, "the event is %zu bytes, over the bus's limit of %llu", n,
                 (unsigned long long)b->max_event);
        r = SRC_REFUSED;
    } else if (!vm_json_check(ev, n, &at, &what)) {   /* (a broker's structured-mode payload is
                                                       * anybody's bytes: checked as ingest does) */
        snprintf(why, cap, "not JSON: %s (at byte %zu)", what, at);
        r = SRC_REFUSED;
    } else if (!ce_check(ev, n, w, sizeof w, &id, &idlen, &nulls)) {
        snprintf(why, cap, "not a CloudEvent: %s", w);
        r = SRC_REFUSED;
    } else if (nulls && !(unset = malloc(n))) {
        snprintf(why, cap, "out of memory");
        r = SRC_RETRY;
    } else {
        if (nulls) {   /* attributes set to null are unset (ce_drop_nulls) */
            memcpy(unset, ev, n);
            ce_drop_nulls(unset, &n);
            ev = unset;
        }
        int sv = sch_ingest(b->schemas, ev, n, w, sizeof w);
        if (sv == SCH_REFUSE) {
            snprintf(why, cap, "%s", w);
            r = SRC_REFUSED;
        } else if (sv == SCH_DIVERT) {          /* kept in the bus's dead-letter file */
            sbuf dl = { 0 };
            bool kept = sch_divert_add(b->schemas, &dl, ev, n, w) && sch_divert_write(b->schemas, &dl, 1);
            sb_free(&dl);
            if (!kept) {
                snprintf(why, cap, "the bus cannot keep invalid events now");
                r = SRC_RETRY;
            }
        } else {
            store_entry e = { ev, (uint32_t)n, 0, NULL };
            uint64_t off;
            if (ebd_bus_store(b, &e, 1, &off, &dup) != STORE_OK) {
                snprintf(why, cap, "the bus cannot store events now: %s", store_error(b->s));
                r = SRC_RETRY;
            } else if (dup) {
                mt_duplicates(b, 1);
                atomic_fetch_add(&s->duplicate, 1);
            } else {
                mt_ingested(b, 1);
                trace_received(NULL, b, &off, 1, &id, &idlen, 0, NULL);
            }
        }
    }
    free(unset);
    if (r == SRC_STORED && !dup)
        atomic_fetch_add(&s->stored, 1);
    else if (r == SRC_REFUSED)
        atomic_fetch_add(&s->refused, 1);
    else if (r == SRC_RETRY)
        atomic_fetch_add(&s->retried, 1);
    if (r != SRC_STORED) {
        char esc[600];
        ebd_log(r == SRC_REFUSED ? EBD_WARN : EBD_INFO, "msg=\"%s\" source=%s bus=%s error=\"%s\"",
                r == SRC_REFUSED ? "source event refused" : "source event not stored now: it "
                "will come again", s->name, s->bus, ebd_log_text(why, esc, sizeof esc));
    }
    return r;
}

/* The sink of the sources that run in threads of their own. */
static src_result sink_append(void *arg, const char *ev, size_t n, char *why, size_t cap)
{
    src *s = arg;
    pthread_rwlock_rdlock(&s->d->lock);
    src_result r = src_append_locked(s, ev, n, why, cap);
    pthread_rwlock_unlock(&s->d->lock);
    return r;
}

int src_bus_has(src *s, int64_t since_ms, const char *ev, size_t n)
{
    dedup_key want, k;
    if (!dedup_key_of(ev, n, &want))
        return 0;
    /* The cursor is opened under the lock and read without it (a long read must not hold a
     * reload back): the bus's log stays open meanwhile, as a reload closes logs only after it
     * stopped the old rules' sources, and the daemon only after it stopped them all. */
    ebd *d = s->d;
    pthread_rwlock_rdlock(&d->lock);
    ebd_bus *b = ebd_find_bus(d, s->bus, strlen(s->bus));
    store_cursor *c = NULL;
    bool open = b && b->s && store_cursor_open_at(b->s, since_ms * 1000000, &c) == STORE_OK;
    pthread_rwlock_unlock(&d->lock);
    if (!open)
        return -1;
    store_record r;
    store_status st;
    int found = 0;
    while (!found && (st = store_cursor_next(c, &r, 0)) == STORE_OK)
        found = dedup_key_of((const char *)r.data, r.len, &k) && k.a == want.a && k.b == want.b;
    if (!found && st != STORE_TIMEOUT)
        found = -1;
    store_cursor_close(c);
    return found;
}

/* ---- the set ---------------------------------------------------------------------------------- */

static void free_src(src *s)
{
    free(s->name);
    free(s->kind);
    free(s->bus);
}

src_set *src_prepare(ebd *d, const vm_program *p, char *err, size_t cap)
{
    err[0] = 0;
    if (!p->ninputs)
        return NULL;
    src_set *set = calloc(1, sizeof *set);
    if (!set || !(set->v = calloc(p->ninputs, sizeof *set->v))) {
        free(set);
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    set->d = d;
    for (uint32_t i = 0; i < p->ninputs; i++) {
        const vm_input *in = &p->inputs[i];
        src *s = &set->v[set->n];
        s->d = d;
        s->name = strndup(vm_s(p, in->name), in->name.len);
        s->kind = strndup(vm_s(p, in->kind), in->kind.len);
        s->bus = strndup(vm_s(p, p->buses[in->bus].name), p->buses[in->bus].name.len);
        s->sink = (src_sink){ sink_append, s };
        char why[400] = "out of memory";
        bool ok = s->name && s->kind && s->bus;
        if (ok) {
            const char *k = s->kind;
            ok = !strcmp(k, "webhook") ? webhook_prepare(s, p, in, why, sizeof why)
               : !strcmp(k, "schedule") ? schedule_prepare(s, p, in, why, sizeof why)
               : !strcmp(k, "mqtt") ? mqtt_prepare(s, p, in, why, sizeof why)
               : !strcmp(k, "nats") ? nats_prepare(s, p, in, why, sizeof why)
               : (snprintf(why, sizeof why, "unknown kind '%s'", k), false);
        }
        if (!ok) {
            snprintf(err, cap, "source '%s': %s", s->name ? s->name : "?", why);
            free_src(s);
            set->n = i;     /* (the ones before: prepared, not started) */
            src_stop(set);
            return NULL;
        }
        set->n++;
    }
    return set;
}

void src_start(src_set *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->n; i++)
        if (set->v[i].start)
            set->v[i].start(&set->v[i]);
    set->started = true;
}

void src_stop(src_set *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->n; i++) {
        if (set->v[i].stop)
            set->v[i].stop(&set->v[i]);       /* (frees impl, started or not) */
        free_src(&set->v[i]);
    }
    free(set->v);
    free(set);
}

bool src_webhook_path(const src_set *set, const char *url)
{
    for (size_t i = 0; set && i < set->n; i++)
        if (!strcmp(set->v[i].kind, "webhook") && !strcmp(webhook_path(&set->v[i]), url))
            return true;
    return false;
}

int src_webhook(src_set *set, struct MHD_Connection *c, const char *url, const char *method,
                const char *body, size_t n, bool too_big)
{
    for (size_t i = 0; i < set->n; i++)
        if (!strcmp(set->v[i].kind, "webhook") && !strcmp(webhook_path(&set->v[i]), url)) {
            if (strcmp(method, "POST") != 0)
                return ebd_send_error(c, 405, "a webhook takes POST only", NULL);
            return webhook_serve(&set->v[i], c, body, n, too_big);
        }
    return ebd_send_error(c, 404, "no such endpoint", NULL);
}

void src_visit(const src_set *set, void (*fn)(void *arg, const char *name, const char *kind,
                                              const char *bus, bool up, const src_counts *n),
               void *arg)
{
    for (size_t i = 0; set && i < set->n; i++) {
        const src *s = &set->v[i];
        src_counts n = { atomic_load(&s->stored), atomic_load(&s->duplicate),
                         atomic_load(&s->refused), atomic_load(&s->retried) };
        fn(arg, s->name, s->kind, s->bus, !s->up || s->up(s), &n);
    }
}
