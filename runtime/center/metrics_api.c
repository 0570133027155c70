/*
 * metrics_api.c — what the metrics serve (docs/metrics.md): GET /metrics in the Prometheus text
 * format 0.0.4, and the admin API: GET /v1/buses, /v1/buses/{bus}, /v1/rules, /v1/targets.
 * The counters are metrics.c's; the figures of the logs, the deliveries' queues and the process
 * are read here when asked.
 */
#include <dirent.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metrics_int.h"
#include "../schema/schema.h"

/* ---- the Prometheus text format ------------------------------------------------------------------ */

/* "# HELP name text" and "# TYPE name type". */
static void family(sbuf *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{label="value"} v */
static void sample1(sbuf *b, const char *name, const char *label, const char *value, uint64_t v)
{
    sb_printf(b, "%s{%s=\"", name, label);
    mt_prom_label(b, value);
    sb_printf(b, "\"} %" PRIu64 "\n", v);
}

/* The family of the targets' latency (or duration) histograms, for those that have one. */
static void hist_family(sbuf *b, const struct mt_rules *m, bool latency, const char *name,
                        const char *help)
{
    family(b, name, "histogram", help);
    for (uint32_t i = 0; i < m->ntargets; i++) {
        mt_hist *h = atomic_load_explicit(latency ? &m->target[i]->latency : &m->target[i]->duration,
                                          memory_order_acquire);
        if (!h)
            continue;
        uint64_t bk[MT_NBUCKETS + 1], total = 0;
        for (unsigned k = 0; k <= MT_NBUCKETS; k++)
            total += bk[k] = atomic_load_explicit(&h->bucket[k], memory_order_relaxed);
        mt_prom_hist(b, name, "target", m->target[i]->name, bk,
                     atomic_load_explicit(&h->sum_ns, memory_order_relaxed), total);
    }
}

/* ---- what deliveries hold: queues and lag per target --------------------------------------------- */

typedef struct {
    ebd *d;
    ebd_rules *r;
    uint64_t *queued, *lag;       /* per target of r */
    uint64_t *next;               /* per bus of r->p: its log's next offset */
} pair_walk;

/* ebd_pairs_visit's callback: adds a pair's figures to its target's. */
static void on_pair(void *arg, uint32_t target, uint32_t pbus, uint64_t queued, uint64_t low)
{
    pair_walk *w = arg;
    w->queued[target] += queued;
    uint64_t lag = w->next[pbus] > low ? w->next[pbus] - low : 0;
    if (lag > w->lag[target])
        w->lag[target] = lag;
}

/* Under d->reload_mu and d->lock (read): the queues and lag of r's targets (NULL without
 * memory; free with free(w->queued) etc.). */
static bool walk_pairs(ebd *d, ebd_rules *r, pair_walk *w)
{
    const vm_program *p = r->p;
    *w = (pair_walk){ .d = d, .r = r };
    w->queued = calloc(p->ntargets + 1, sizeof *w->queued);
    w->lag = calloc(p->ntargets + 1, sizeof *w->lag);
    w->next = calloc(p->nbuses + 1, sizeof *w->next);
    if (!w->queued || !w->lag || !w->next)
        return false;
    for (uint32_t b = 0; b < p->nbuses; b++) {
        uint64_t first = 0;
        if (r->bus_of[b] != VM_NONE && d->buses[r->bus_of[b]]->s)
            store_bounds(d->buses[r->bus_of[b]]->s, &first, &w->next[b]);
    }
    ebd_pairs_visit(r, on_pair, w);
    return true;
}

/* Frees what walk_pairs made. */
static void walk_free(pair_walk *w)
{
    free(w->queued);
    free(w->lag);
    free(w->next);
}

/* ---- process figures ------------------------------------------------------------------------------ */

typedef struct {
    double cpu_s, start_s;
    uint64_t rss, threads, fds;
} proc_figs;

/* The process's figures from /proc/self (zeros for what cannot be read). */
static void read_proc(proc_figs *f)
{
    memset(f, 0, sizeof *f);
    long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    char buf[1024];
    FILE *fp = fopen("/proc/self/stat", "r");
    if (fp) {
        size_t n = fread(buf, 1, sizeof buf - 1, fp);
        fclose(fp);
        buf[n] = '\0';
        const char *s = strrchr(buf, ')');     /* the command's name may hold anything */
        unsigned long long ut = 0, st = 0, start = 0;
        long threads = 0, rss = 0;
        /* fields 3.. after the name: state(3) ... utime(14) stime(15) ... num_threads(20)
         * itrealvalue(21) starttime(22) vsize(23) rss(24) */
        if (s && sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d "
                        "%*d %ld %*d %llu %*u %ld", &ut, &st, &threads, &start, &rss) == 5 && tck > 0) {
            f->cpu_s = (double)(ut + st) / (double)tck;
            f->threads = (uint64_t)threads;
            f->rss = (uint64_t)rss * (uint64_t)page;
            double btime = 0;
            FILE *ps = fopen("/proc/stat", "r");
            char line[256];
            while (ps && fgets(line, sizeof line, ps))
                if (!strncmp(line, "btime ", 6)) {
                    btime = strtod(line + 6, NULL);
                    break;
                }
            if (ps)
                fclose(ps);
            f->start_s = btime + (double)start / (double)tck;
        }
    }
    if (!f->start_s)
        f->start_s = (double)mt_started_ns() / 1e9;
    DIR *dir = opendir("/proc/self/fd");
    if (dir) {
        struct dirent *e;
        while ((e = readdir(dir)))
            if (e->d_name[0] != '.')
                f->fds++;
        closedir(dir);
        if (f->fds)
            f->fds--;                     /* (the one opendir holds) */
    }
}

/* ---- GET /metrics ---------------------------------------------------------------------------------- */

/* A target kind's name, as the contract spells it. */
static const char *kind_name(int kind)
{
    return kind == T_HTTP ? "http" : kind == T_FILE ? "file" : kind == T_BUS ? "bus"
         : kind == T_MQTT ? "mqtt" : kind == T_NATS ? "nats" : "exec";
}

/* ebr_source_up and ebr_source_events_total, one source at a time (src_visit) */
typedef struct {
    sbuf *b;
    int pass;                     /* 0: up, 1: events */
} source_walk;

static void source_sample(void *arg, const char *name, const char *kind, const char *bus, bool up,
                          const src_counts *n)
{
    source_walk *w = arg;
    if (w->pass == 0) {
        sb_puts(w->b, "ebr_source_up{source=\"");
        mt_prom_label(w->b, name);
        sb_puts(w->b, "\",kind=\"");
        mt_prom_label(w->b, kind);
        sb_puts(w->b, "\",bus=\"");
        mt_prom_label(w->b, bus);
        sb_printf(w->b, "\"} %d\n", up);
        return;
    }
    const char *outcome[] = { "stored", "duplicate", "refused", "retried" };
    const uint64_t v[] = { n->stored, n->duplicate, n->refused, n->retried };
    for (int i = 0; i < 4; i++) {
        sb_puts(w->b, "ebr_source_events_total{source=\"");
        mt_prom_label(w->b, name);
        sb_printf(w->b, "\",outcome=\"%s\"} %" PRIu64 "\n", outcome[i], v[i]);
    }
}

static void render_sources(const ebd_rules *r, sbuf *b)
{
    source_walk w = { b, 0 };
    family(b, "ebr_source_up", "gauge", "1 while a source is connected to its broker (webhooks "
           "and schedules: 1).");
    src_visit(r->sources, source_sample, &w);
    w.pass = 1;
    family(b, "ebr_source_events_total", "counter", "What a source took in, by outcome: stored, "
           "duplicate (within the bus's dedup window), refused (never storable), retried (the bus "
           "could not store it then).");
    src_visit(r->sources, source_sample, &w);
}

/* The whole exposition, under d->reload_mu and d->lock (read): the slots' atomics, the
 * ruleset's figures, the logs' and the process's. */
static void render_metrics(ebd *d, sbuf *b)
{
    ebd_rules *r = d->rules;
    const struct mt_rules *m = r->mt;
    if (!m) {
        sb_puts(b, "# no metrics: out of memory when the rules loaded\n");
        return;
    }
    const vm_program *p = r->p;
    /* the buses: the ruleset's, and "" when something was refused for an unknown bus */
    mt_lock();
    struct mt_bus *none = mt_bus_find_locked("");
    mt_unlock();
    family(b, "ebr_events_ingested_total", "counter", "Events stored in the bus's log.");
    for (uint32_t i = 0; i < m->nbuses; i++)
        sample1(b, "ebr_events_ingested_total", "bus", m->bus[i]->name,
                atomic_load_explicit(&m->bus[i]->ingested, memory_order_relaxed));
    render_sources(r, b);
    family(b, "ebr_events_duplicate_total", "counter", "Events not stored again: the bus had "
           "stored their (source, id) within its dedup window.");
    for (uint32_t i = 0; i < m->nbuses; i++)
        sample1(b, "ebr_events_duplicate_total", "bus", m->bus[i]->name,
                atomic_load_explicit(&m->bus[i]->duplicates, memory_order_relaxed));
    family(b, "ebr_events_refused_total", "counter", "Ingest requests (and put-events entries) "
           "refused, by reason: invalid, too_large, unauthorized, unknown_bus, overloaded, storage.");
    for (uint32_t i = 0; i <= m->nbuses; i++) {
        struct mt_bus *x = i < m->nbuses ? m->bus[i] : none;
        for (unsigned k = 0; x && k < MT_NREASONS; k++) {
            if (i == m->nbuses && k != MT_UNKNOWN_BUS && k != MT_OVERLOADED)
                continue;
            sb_puts(b, "ebr_events_refused_total{bus=\"");
            mt_prom_label(b, x->name);
            sb_printf(b, "\",reason=\"%s\"} %" PRIu64 "\n", mt_reason_name((mt_reason)k),
                      atomic_load_explicit(&x->refused[k], memory_order_relaxed));
        }
    }
    family(b, "ebr_schema_invalid_total", "counter", "Events that failed the schema bound to "
           "their type (docs/schemas.md), by what on_invalid did: accepted, dead_lettered, "
           "rejected.");
    for (uint32_t i = 0; i < m->nbuses; i++) {
        sch_counts sc = sch_invalid_counts(m->bus[i]->name);
        const struct { const char *what; uint64_t n; } v[] = {
            { "accepted", sc.accepted }, { "dead_lettered", sc.dead_lettered },
            { "rejected", sc.rejected },
        };
        for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
            sb_puts(b, "ebr_schema_invalid_total{bus=\"");
            mt_prom_label(b, m->bus[i]->name);
            sb_printf(b, "\",action=\"%s\"} %" PRIu64 "\n", v[k].what, v[k].n);
        }
    }
    family(b, "ebr_schemas_discovered", "gauge", "(source, type) kinds with a schema inferred "
           "from the bus's traffic.");
    for (uint32_t i = 0; i < m->nbuses; i++)
        sample1(b, "ebr_schemas_discovered", "bus", m->bus[i]->name,
                sch_count(d, m->bus[i]->name));
    family(b, "ebr_rule_matched_total", "counter", "Events the rule matched (once per event, "
           "whatever the number of its targets).");
    for (uint32_t i = 0; i < m->nrules; i++) {
        sb_puts(b, "ebr_rule_matched_total{rule=\"");
        mt_prom_label(b, m->rule[i]->name);
        sb_puts(b, "\",bus=\"");
        mt_prom_label(b, m->bus[p->rules[i].bus]->name);
        sb_printf(b, "\"} %" PRIu64 "\n", atomic_load_explicit(&m->rule[i]->matched,
                                                              memory_order_relaxed));
    }
    static const struct {
        const char *name, *help;
        size_t off;
    } tc[] = {
        { "ebr_deliveries_succeeded_total", "Delivery attempts that succeeded (dead letters "
          "delivered to a dead-letter target count there).", offsetof(struct mt_target, succeeded) },
        { "ebr_deliveries_failed_total", "Delivery attempts that failed.",
          offsetof(struct mt_target, failed) },
        { "ebr_deliveries_retried_total", "Retries scheduled after a failed attempt.",
          offsetof(struct mt_target, retried) },
        { "ebr_deliveries_dead_lettered_total", "Events given up on and sent to a dead letter.",
          offsetof(struct mt_target, dead_lettered) },
        { "ebr_deliveries_dropped_total", "Events given up on with no dead letter to go to.",
          offsetof(struct mt_target, dropped) },
    };
    for (size_t k = 0; k < sizeof tc / sizeof tc[0]; k++) {
        family(b, tc[k].name, "counter", tc[k].help);
        for (uint32_t i = 0; i < m->ntargets; i++)
            sample1(b, tc[k].name, "target", m->target[i]->name,
                    atomic_load_explicit((_Atomic uint64_t *)((char *)m->target[i] + tc[k].off),
                                         memory_order_relaxed));
    }
    hist_family(b, m, true, "ebr_delivery_latency_seconds",
                "From an event's append to the bus's log to its successful delivery.");
    hist_family(b, m, false, "ebr_delivery_duration_seconds", "One delivery attempt.");
    pair_walk w;
    if (walk_pairs(d, r, &w)) {
        family(b, "ebr_target_queued", "gauge", "Events queued for the target or in flight "
               "(waiting for a retry among them), over its rules.");
        for (uint32_t i = 0; i < m->ntargets; i++)
            sample1(b, "ebr_target_queued", "target", m->target[i]->name, w.queued[i]);
        family(b, "ebr_target_lag_events", "gauge", "Events of the bus's log the target's rules "
               "have not finished yet (the most behind of them).");
        for (uint32_t i = 0; i < m->ntargets; i++)
            sample1(b, "ebr_target_lag_events", "target", m->target[i]->name, w.lag[i]);
    }
    walk_free(&w);
    static const char *const lf[] = { "ebr_log_bytes", "ebr_log_segments", "ebr_log_first_offset",
                                      "ebr_log_next_offset" };
    static const char *const lh[] = { "The size of the bus's log segments.",
                                      "Segments of the bus's log.",
                                      "The oldest offset the bus's log keeps.",
                                      "The offset the bus's next event gets." };
    /* (once a bus: on JetStream each is a request to the server) */
    store_figures *fig = calloc(p->nbuses + 1, sizeof *fig);
    for (uint32_t i = 0; fig && i < p->nbuses; i++)
        if (r->bus_of[i] != VM_NONE && d->buses[r->bus_of[i]]->s)
            store_get_figures(d->buses[r->bus_of[i]]->s, &fig[i]);
    for (unsigned k = 0; fig && k < 4; k++) {
        family(b, lf[k], "gauge", lh[k]);
        for (uint32_t i = 0; i < p->nbuses; i++) {
            if (!fig[i].backend)
                continue;
            const store_figures *st = &fig[i];
            uint64_t v = k == 0 ? st->bytes : k == 1 ? st->segments : k == 2 ? st->first : st->next;
            sample1(b, lf[k], "bus", m->bus[i]->name, v);
        }
    }
    free(fig);
    /* A bus on NATS JetStream: the daemons' consumer (what no daemon took yet, what they hold,
     * what was given again). */
    static const char *const gf[] = { "ebr_bus_consumer_pending", "ebr_bus_consumer_in_hand",
                                      "ebr_bus_consumer_redelivered", "ebr_bus_consumer_waiting" };
    static const char *const gh[] = {
        "Events of the bus's stream that no daemon has taken yet.",
        "Events the daemons took and have not finished (acknowledged) yet.",
        "Events given to a daemon again (its ack wait passed, or it stopped first).",
        "Requests for events the daemons have waiting at the consumer." };
    store_group_figures gv[64];
    bool gok[64] = { false }, anyg = false;
    for (uint32_t i = 0; i < p->nbuses && i < 64; i++) {
        store *s = r->bus_of[i] != VM_NONE ? d->buses[r->bus_of[i]]->s : NULL;
        gok[i] = s && store_shared(s) && store_get_group_figures(s, EBD_GROUP, &gv[i]) == STORE_OK;
        anyg |= gok[i];
    }
    for (unsigned k = 0; anyg && k < 4; k++) {
        family(b, gf[k], "gauge", gh[k]);
        for (uint32_t i = 0; i < p->nbuses && i < 64; i++)
            if (gok[i])
                sample1(b, gf[k], "bus", m->bus[i]->name,
                        k == 0 ? gv[i].pending : k == 1 ? gv[i].in_hand
                               : k == 2 ? gv[i].redelivered : gv[i].waiting);
    }
    family(b, "ebr_rules", "gauge", "Rules loaded.");
    sb_printf(b, "ebr_rules %u\n", p->nrules);
    family(b, "ebr_replays_running", "gauge", "Replays running.");
    sb_printf(b, "ebr_replays_running %zu\n", rp_running());
    proc_figs f;
    read_proc(&f);
    family(b, "process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.");
    sb_printf(b, "process_cpu_seconds_total %.2f\n", f.cpu_s);
    family(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    sb_printf(b, "process_resident_memory_bytes %" PRIu64 "\n", f.rss);
    family(b, "process_open_fds", "gauge", "Number of open file descriptors.");
    sb_printf(b, "process_open_fds %" PRIu64 "\n", f.fds);
    family(b, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch "
           "in seconds.");
    sb_printf(b, "process_start_time_seconds %.2f\n", f.start_s);
    family(b, "process_threads", "gauge", "Number of OS threads in the process.");
    sb_printf(b, "process_threads %" PRIu64 "\n", f.threads);
}

/* Takes what the figures need: no reload in progress (workers neither starting nor stopping),
 * the rules and buses held. */
static void hold(ebd *d)
{
    pthread_mutex_lock(&d->reload_mu);
    pthread_rwlock_rdlock(&d->lock);
}

/* Gives back what hold took. */
static void unhold(ebd *d)
{
    pthread_rwlock_unlock(&d->lock);
    pthread_mutex_unlock(&d->reload_mu);
}

enum MHD_Result mt_serve_metrics(const center_req *q)
{
    sbuf b = { 0 };
    hold(q->d);
    render_metrics(q->d, &b);
    unhold(q->d);
    if (b.oom) {
        sb_free(&b);
        return (enum MHD_Result)ebd_send_error(q->c, 503, "out of memory", NULL);
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(b.n, b.v ? b.v : (char *)"",
                                                             MHD_RESPMEM_MUST_FREE);
    if (!r) {
        sb_free(&b);
        return MHD_NO;
    }
    b.v = NULL;
    MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result ok = MHD_queue_response(q->c, 200, r);
    MHD_destroy_response(r);
    return ok;
}

/* ---- the admin API ---------------------------------------------------------------------------------- */

/* "name":"text" */
static void jstr(sbuf *b, const char *key, const char *s)
{
    sb_printf(b, "\"%s\":", key);
    sb_json_string(b, s, strlen(s));
}

/* BUS of the contract (docs/center.md): bus i of the running rules' program. */
static void bus_json(ebd *d, sbuf *b, uint32_t i)
{
    ebd_rules *r = d->rules;
    const vm_program *p = r->p;
    struct mt_bus *x = r->mt->bus[i];
    int64_t now_s = mt_real_ns() / 1000000000LL;
    uint64_t v = atomic_load_explicit(&x->ingested, memory_order_relaxed), refused = 0;
    sb_puts(b, "{");
    jstr(b, "name", x->name);
    sb_printf(b, ",\"ingested\":%" PRIu64 ",\"refused_by\":{", v);
    for (unsigned k = 0; k < MT_NREASONS; k++) {
        uint64_t n = atomic_load_explicit(&x->refused[k], memory_order_relaxed);
        refused += n;
        sb_printf(b, "%s\"%s\":%" PRIu64, k ? "," : "", mt_reason_name((mt_reason)k), n);
    }
    uint64_t counts[60];
    mt_lock();
    double rate = mt_bus_rate_locked(x, v, now_s);
    mt_bus_minutes_locked(x, v, now_s, counts);
    mt_unlock();
    int64_t cur = now_s / 60;
    sb_printf(b, "},\"refused\":%" PRIu64 ",\"rate\":%.3f,\"per_minute\":[", refused, rate);
    for (int k = 0; k < 60; k++) {
        char t[40];
        rt_time_text((cur - 59 + k) * 60000, t, sizeof t);
        sb_printf(b, "%s{\"time\":\"%s\",\"count\":%" PRIu64 "}", k ? "," : "", t, counts[k]);
    }
    sb_puts(b, "],\"log\":");
    store *s = r->bus_of[i] != VM_NONE ? d->buses[r->bus_of[i]]->s : NULL;
    if (s) {
        store_figures st;
        store_get_figures(s, &st);
        sb_printf(b, "{\"backend\":\"%s\",\"first\":%" PRIu64 ",\"next\":%" PRIu64
                  ",\"bytes\":%" PRIu64 ",\"segments\":%u}", st.backend, st.first, st.next,
                  st.bytes, st.segments);
    } else {
        sb_puts(b, "null");
    }
    sb_puts(b, ",\"rules\":[");
    bool any = false;
    for (uint32_t k = 0; k < p->nrules; k++)
        if (p->rules[k].bus == i) {
            sb_puts(b, any ? "," : "");
            sb_json_string(b, r->mt->rule[k]->name, strlen(r->mt->rule[k]->name));
            any = true;
        }
    sb_printf(b, "],\"schemas\":%zu}", sch_count(d, x->name));
}

/* Sends b (200), or 503 when it ran out of memory; frees it. */
static enum MHD_Result send_built(const center_req *q, sbuf *b)
{
    enum MHD_Result ok = (enum MHD_Result)(b->oom ? ebd_send_error(q->c, 503, "out of memory", NULL)
                                                  : ebd_send_json(q->c, 200, b));
    sb_free(b);
    return ok;
}

/* Sends 503 when the running rules have no metrics (no memory when they loaded): true then. */
static bool no_metrics(const center_req *q, enum MHD_Result *out)
{
    if (q->d->rules->mt)
        return false;
    unhold(q->d);
    *out = (enum MHD_Result)ebd_send_error(q->c, 503, "no metrics: out of memory when the rules "
                                           "loaded", NULL);
    return true;
}

enum MHD_Result mt_serve_buses(const center_req *q)
{
    enum MHD_Result out;
    sbuf b = { 0 };
    hold(q->d);
    if (no_metrics(q, &out))
        return out;
    sb_puts(&b, "{\"buses\":[");
    for (uint32_t i = 0; i < q->d->rules->p->nbuses; i++) {
        sb_puts(&b, i ? "," : "");
        bus_json(q->d, &b, i);
    }
    sb_puts(&b, "]}");
    unhold(q->d);
    return send_built(q, &b);
}

enum MHD_Result mt_serve_bus(const center_req *q)
{
    enum MHD_Result out;
    sbuf b = { 0 };
    hold(q->d);
    if (no_metrics(q, &out))
        return out;
    const struct mt_rules *m = q->d->rules->mt;
    uint32_t i = 0;
    while (i < m->nbuses && strcmp(m->bus[i]->name, q->arg[0]) != 0)
        i++;
    if (i == m->nbuses) {
        unhold(q->d);
        char msg[300];
        snprintf(msg, sizeof msg, "no bus '%.200s'", q->arg[0]);
        return (enum MHD_Result)ebd_send_error(q->c, 404, msg, "bus");
    }
    bus_json(q->d, &b, i);
    unhold(q->d);
    return send_built(q, &b);
}

enum MHD_Result mt_serve_rules(const center_req *q)
{
    enum MHD_Result out;
    sbuf b = { 0 };
    const char *only = center_query(q, "bus");
    hold(q->d);
    if (no_metrics(q, &out))
        return out;
    ebd_rules *r = q->d->rules;
    const vm_program *p = r->p;
    const struct mt_rules *m = r->mt;
    int64_t now_s = mt_real_ns() / 1000000000LL;
    sb_puts(&b, "{\"rules\":[");
    bool first = true;
    mt_lock();
    for (uint32_t i = 0; i < m->nrules; i++) {
        const char *bus = m->bus[p->rules[i].bus]->name;
        if (only && strcmp(only, bus) != 0)
            continue;
        uint64_t v = atomic_load_explicit(&m->rule[i]->matched, memory_order_relaxed);
        sb_puts(&b, first ? "{" : ",{");
        first = false;
        jstr(&b, "name", m->rule[i]->name);
        sb_puts(&b, ",");
        jstr(&b, "bus", bus);
        sb_printf(&b, ",\"matched\":%" PRIu64 ",\"rate\":%.3f,\"targets\":[", v,
                  mt_rule_rate_locked(m->rule[i], v, now_s));
        for (uint32_t k = 0; k < p->rules[i].ntgt; k++) {
            const char *t = m->target[p->rule_targets[p->rules[i].tgt0 + k]]->name;
            sb_puts(&b, k ? "," : "");
            sb_json_string(&b, t, strlen(t));
        }
        sb_puts(&b, "]}");
    }
    mt_unlock();
    sb_puts(&b, "]}");
    unhold(q->d);
    return send_built(q, &b);
}

/* "last_error" and "errors" of target s: its samples, newest first. */
static void errors_json(sbuf *b, struct mt_target *s)
{
    mt_errors *e = atomic_load_explicit(&s->errors, memory_order_acquire);
    if (!e) {
        sb_puts(b, ",\"last_error\":null,\"errors\":[]");
        return;
    }
    pthread_mutex_lock(&e->mu);
    char t[40];
    for (unsigned k = 0; k < e->n; k++) {
        unsigned at = (e->head + NERRORS - 1 - k) % NERRORS;
        rt_time_text(e->e[at].ms, t, sizeof t);
        if (k == 0) {
            sb_printf(b, ",\"last_error\":{\"time\":\"%s\",", t);
            jstr(b, "message", e->e[at].msg);
            sb_puts(b, "},\"errors\":[");
        }
        sb_printf(b, "%s{\"time\":\"%s\",", k ? "," : "", t);
        jstr(b, "rule", e->e[at].rule);
        sb_puts(b, ",");
        jstr(b, "message", e->e[at].msg);
        sb_puts(b, "}");
    }
    if (!e->n)
        sb_puts(b, ",\"last_error\":null,\"errors\":[");
    sb_puts(b, "]");
    pthread_mutex_unlock(&e->mu);
}

enum MHD_Result mt_serve_targets(const center_req *q)
{
    enum MHD_Result out;
    sbuf b = { 0 };
    hold(q->d);
    if (no_metrics(q, &out))
        return out;
    ebd_rules *r = q->d->rules;
    const struct mt_rules *m = r->mt;
    pair_walk w;
    bool walked = walk_pairs(q->d, r, &w);
    sb_puts(&b, "{\"targets\":[");
    for (uint32_t i = 0; i < m->ntargets; i++) {
        struct mt_target *s = m->target[i];
        sb_puts(&b, i ? ",{" : "{");
        jstr(&b, "name", s->name);
        sb_printf(&b, ",\"kind\":\"%s\",\"succeeded\":%" PRIu64 ",\"failed\":%" PRIu64
                  ",\"retried\":%" PRIu64 ",\"dead_lettered\":%" PRIu64 ",\"dropped\":%" PRIu64,
                  kind_name(s->kind), atomic_load(&s->succeeded), atomic_load(&s->failed),
                  atomic_load(&s->retried), atomic_load(&s->dead_lettered), atomic_load(&s->dropped));
        if (walked)
            sb_printf(&b, ",\"queued\":%" PRIu64 ",\"lag\":%" PRIu64, w.queued[i], w.lag[i]);
        else
            sb_puts(&b, ",\"queued\":null,\"lag\":null");
        errors_json(&b, s);
        sb_puts(&b, "}");
    }
    sb_puts(&b, "]}");
    walk_free(&w);
    unhold(q->d);
    return send_built(q, &b);
}

