/*
 * dryrun.c — a ruleset tried on a stretch of a bus log, delivering nothing (docs/replay.md,
 * "Dry run"): per rule how many events it would have matched, with the ids of the first few.
 * Offline in `ebc replay --dry-run` (replay_cli.c: the log opened read-only, beside a running
 * ebd); online in POST /v1/buses/{bus}/dry-run (query_http.c).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../ebd_int.h"
#include "query.h"


uint32_t dr_bus_index(const vm_program *p, const char *name)
{
    for (uint32_t b = 0; b < p->nbuses; b++)
        if (p->buses[b].name.len == strlen(name) && !memcmp(vm_s(p, p->buses[b].name), name,
                                                             p->buses[b].name.len))
            return b;
    return VM_NONE;
}

void dr_free(dr_result *r)
{
    for (size_t i = 0; i < r->nrules; i++) {
        free(r->rules[i].name);
        for (unsigned k = 0; k < r->rules[i].nsamples; k++)
            free(r->rules[i].samples[k]);
    }
    free(r->rules);
    memset(r, 0, sizeof *r);
}

/* The rules of bus `bus`: fills r->rules; map[rule index] is its place there (or SIZE_MAX). */
static bool rules_of_bus(const vm_program *p, uint32_t bus, dr_result *r, size_t *map)
{
    r->rules = calloc(p->nrules ? p->nrules : 1, sizeof *r->rules);
    if (!r->rules)
        return false;
    for (uint32_t i = 0; i < p->nrules; i++) {
        map[i] = SIZE_MAX;
        if (p->rules[i].bus != bus)
            continue;
        dr_rule *x = &r->rules[r->nrules];
        if (!(x->name = strndup(vm_s(p, p->rules[i].name), p->rules[i].name.len)))
            return false;
        map[i] = r->nrules++;
    }
    return true;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool dr_run(store *s, const vm_program *p, uint32_t bus, int64_t since_ns, int64_t until_ns,
            const dr_limits *lim, dr_result *out, char *err, size_t cap)
{
    static const dr_limits none = { 0 };
    if (!lim)
        lim = &none;
    uint64_t max_events = lim->max_events;
    unsigned since_relock = 0;
    memset(out, 0, sizeof *out);
    size_t *map = malloc((p->nrules ? p->nrules : 1) * sizeof *map);
    vm_options o = vm_program_options(p);
    vm_ctx *ctx = vm_ctx_new(p, &o);
    store_cursor *c = NULL;
    bool ok = map && ctx && rules_of_bus(p, bus, out, map);
    if (!ok)
        snprintf(err, cap, "out of memory");
    uint64_t first, end;
    store_bounds(s, &first, &end);
    if (ok && (since_ns != QY_NONE_BEFORE ? store_cursor_open_at(s, since_ns, &c)
                                          : store_cursor_open(s, first, &c)) != STORE_OK) {
        snprintf(err, cap, "%s", store_error(s));
        ok = false;
    }
    store_record r;
    store_status st = STORE_OK;
    while (ok && (st = store_cursor_next(c, &r, 0)) != STORE_TIMEOUT) {
        if (st == STORE_BEHIND || st == STORE_CORRUPT) {
            uint64_t lost, f2, n2;
            store_bounds(s, &f2, &n2);
            st = st == STORE_BEHIND ? store_cursor_seek(c, f2) : store_cursor_skip(c, &lost);
            if (st != STORE_OK)
                break;
            continue;
        }
        if (st != STORE_OK || r.offset >= end || r.time_ns >= until_ns)
            break;
        if ((max_events && out->events >= max_events) ||
            (lim->deadline_ms && !(out->events & 255) && out->events &&
             mono_ms() >= lim->deadline_ms)) {
            out->truncated = true;
            out->next = r.offset;
            break;
        }
        if (lim->relock && lim->relock_every && ++since_relock > lim->relock_every) {
            /* the log let go of a moment (the cursor closed: a reload may close the log) */
            uint64_t at = r.offset;
            since_relock = 0;
            store_cursor_close(c);
            c = NULL;
            if (!(s = lim->relock(lim->arg))) {
                snprintf(err, cap, "the bus's log was closed (a reload) during the dry run");
                ok = false;
                break;
            }
            if (store_cursor_open(s, at, &c) != STORE_OK) {
                snprintf(err, cap, "%s", store_error(s));
                c = NULL;
                ok = false;
                break;
            }
            continue;
        }
        if (!out->events)
            out->first = r.offset;
        out->last = r.offset;
        out->events++;
        const uint32_t *rules;
        size_t nrules;
        vm_error e;
        vm_status ms = vm_match(ctx, bus, (const char *)r.data, r.len, &rules, &nrules, &e);
        if (ms != VM_OK)
            out->failed++;
        char id[256] = "";
        for (size_t k = 0; k < nrules; k++) {
            if (map[rules[k]] == SIZE_MAX)
                continue;
            dr_rule *x = &out->rules[map[rules[k]]];
            x->matched++;
            if (x->nsamples < DR_SAMPLES) {
                if (!id[0] && !qy_attr((const char *)r.data, r.len, "id", id, sizeof id))
                    snprintf(id, sizeof id, "@%" PRIu64, r.offset);
                if ((x->samples[x->nsamples] = strdup(id)))
                    x->nsamples++;
            }
        }
    }
    if (ok && st != STORE_OK && st != STORE_TIMEOUT) {
        snprintf(err, cap, "%s", store_cursor_error(c));
        ok = false;
    }
    if (c)
        store_cursor_close(c);
    vm_ctx_free(ctx);
    free(map);
    if (!ok)
        dr_free(out);
    return ok;
}

char *dr_json(const dr_result *r)
{
    sbuf b = { 0 };
    sb_printf(&b, "{\"events\":%" PRIu64 ",\"rules\":[", r->events);
    for (size_t i = 0; i < r->nrules; i++) {
        const dr_rule *x = &r->rules[i];
        sb_puts(&b, i ? ",{\"name\":" : "{\"name\":");
        sb_json_string(&b, x->name, strlen(x->name));
        sb_printf(&b, ",\"matched\":%" PRIu64 ",\"samples\":[", x->matched);
        for (unsigned k = 0; k < x->nsamples; k++) {
            sb_puts(&b, k ? "," : "");
            sb_json_string(&b, x->samples[k], strlen(x->samples[k]));
        }
        sb_puts(&b, "]}");
    }
    sb_printf(&b, "],\"undecided\":%" PRIu64 ",\"truncated\":%s", r->failed,
              r->truncated ? "true" : "false");
    if (r->events)
        sb_printf(&b, ",\"first\":%" PRIu64 ",\"last\":%" PRIu64, r->first, r->last);
    if (r->truncated)
        sb_printf(&b, ",\"next\":%" PRIu64, r->next);
    sb_puts(&b, "}");
    if (b.oom) {
        sb_free(&b);
        return NULL;
    }
    return b.v;
}
