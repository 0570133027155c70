/*
 * query.c — the event query (docs/replay.md): GET /v1/buses/{bus}/events, paged, oldest or
 * newest first, by time, source and type; the time arguments of the event center; and qy_run,
 * the reading of a bus log that `ebc log dump` shares.  The log's cursors read forward only:
 * newest first reads chunks backwards from the top and walks each one in reverse.  The
 * endpoint is in query_http.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../ebd_int.h"
#include "query.h"

#define CHUNK_MIN 64
#define CHUNK_MAX 4096

/* ---- times ------------------------------------------------------------------------------- */

int64_t qy_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

bool qy_parse_duration(const char *s, int64_t *ns)
{
    if (!strcmp(s, "now")) {
        *ns = 0;
        return true;
    }
    if (!*s)
        return false;
    double total = 0;
    while (*s) {
        if (*s < '0' || *s > '9')
            return false;
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s)
            return false;
        s = end;
        double unit;
        if (!strncmp(s, "ms", 2)) {
            unit = 1e6;
            s += 2;
        } else if (*s == 's' || *s == 'm' || *s == 'h' || *s == 'd') {
            unit = *s == 's' ? 1e9 : *s == 'm' ? 60e9 : *s == 'h' ? 3600e9 : 86400e9;
            s++;
        } else {
            return false;
        }
        total += v * unit;
    }
    if (total > 9.2e18)
        return false;
    *ns = (int64_t)total;
    return true;
}

bool qy_parse_time(const char *s, int64_t now_ns, int64_t *ns, char *why, size_t cap)
{
    int64_t d, ms;
    if (vm_parse_time(s, strlen(s), &ms)) {
        *ns = ms * 1000000;
        return true;
    }
    if (qy_parse_duration(s, &d)) {
        *ns = now_ns - d;
        return true;
    }
    snprintf(why, cap, "'%.80s' is neither an RFC 3339 time (2026-12-05T16:00:00Z) nor a "
             "duration back from now (24h, 90m, 30s, 1h30m)", s);
    return false;
}

void qy_format_time(int64_t ns, char *buf, size_t cap)
{
    int64_t ms = ns / 1000000;
    if (ns < 0 && ns % 1000000)
        ms--;
    rt_time_text(ms, buf, cap);
}

/* ---- filters ----------------------------------------------------------------------------- */

typedef struct {
    const char *s, *name;
    char *out;
    size_t cap;
    bool found;
} attr_walk;

static bool find_attr(void *arg, const js_member *m)
{
    attr_walk *w = arg;
    if (!js_key_is(w->s, m, w->name))
        return true;
    if (w->s[m->val_off] != '"')
        return false;
    char *tmp = malloc(m->val_len + 1);
    if (!tmp)
        return false;
    size_t n = js_unquote(w->s + m->val_off, m->val_len, tmp);
    if (n >= w->cap)
        n = w->cap - 1;
    memcpy(w->out, tmp, n);
    w->out[n] = 0;
    free(tmp);
    w->found = true;
    return false;
}

bool qy_attr(const char *ev, size_t n, const char *name, char *out, size_t cap)
{
    size_t i = vm_json_ws(ev, n, 0);
    if (i >= n || ev[i] != '{' || !cap)
        return false;
    attr_walk w = { .s = ev, .name = name, .out = out, .cap = cap };
    js_each(ev, n, i, find_attr, &w);
    return w.found;
}

/* Does value v pass want (exact, or a prefix when want ends in '*')? */
static bool value_passes(const char *want, const char *v)
{
    size_t n = strlen(want);
    if (n && want[n - 1] == '*')
        return !strncmp(v, want, n - 1);
    return !strcmp(v, want);
}

bool qy_event_passes(const qy_filter *f, const char *ev, size_t n)
{
    char v[1024];
    if (f->source && (!qy_attr(ev, n, "source", v, sizeof v) || !value_passes(f->source, v)))
        return false;
    /* an AWS event's type is its detail-type (docs/aws.md) */
    if (f->type && ((!qy_attr(ev, n, "type", v, sizeof v) && !qy_attr(ev, n, "detail-type", v, sizeof v)) ||
                    !value_passes(f->type, v)))
        return false;
    return true;
}

/* ---- the query ---------------------------------------------------------------------------- */

void qy_token(bool newest, uint64_t at, char *buf, size_t cap)
{
    snprintf(buf, cap, "%c%" PRIu64, newest ? 'n' : 'o', at);
}

bool qy_token_read(const char *tok, bool newest, uint64_t *at)
{
    if (!tok || tok[0] != (newest ? 'n' : 'o') || tok[1] < '0' || tok[1] > '9')
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(tok + 1, &end, 10);
    if (*end || errno)
        return false;
    *at = v;
    return true;
}

/* The next record of c, passing over what is corrupt or deleted: STORE_OK with *r, or
 * STORE_TIMEOUT at the end, or a failure. */
static store_status next_record(store *s, store_cursor *c, store_record *r)
{
    for (;;) {
        store_status st = store_cursor_next(c, r, 0);
        if (st == STORE_BEHIND) {
            uint64_t first, next;
            store_bounds(s, &first, &next);
            store_cursor_seek(c, first > store_cursor_offset(c) ? first : store_cursor_offset(c) + 1);
            continue;
        }
        if (st == STORE_CORRUPT) {
            uint64_t lost;
            if (store_cursor_skip(c, &lost) != STORE_OK)
                return STORE_CORRUPT;
            continue;
        }
        return st;
    }
}

static store_status run_oldest(store *s, const qy_query *q, bool (*emit)(void *, const store_record *),
                               void *arg, bool *more, uint64_t *next, char *err, size_t cap)
{
    uint64_t first, end;
    store_bounds(s, &first, &end);
    store_cursor *c;
    store_status st = q->resume ? store_cursor_open(s, q->at < first ? first : q->at, &c)
                    : q->since_ns != QY_NONE_BEFORE ? store_cursor_open_at(s, q->since_ns, &c)
                    : store_cursor_open(s, first, &c);
    if (st != STORE_OK) {
        snprintf(err, cap, "%s", store_error(s));
        return st;
    }
    size_t given = 0, seen = 0;
    *more = false;
    store_record r;
    while ((st = next_record(s, c, &r)) == STORE_OK) {
        if (r.offset >= end || r.time_ns >= q->until_ns)
            break;
        seen++;
        if (r.time_ns >= q->since_ns && qy_event_passes(&q->f, (const char *)r.data, r.len)) {
            given++;
            if (!emit(arg, &r)) {
                *more = true;
                *next = r.offset + 1;
                break;
            }
        }
        if ((q->limit && given >= q->limit) || (q->scan_max && seen >= q->scan_max)) {
            *more = r.offset + 1 < end;
            *next = r.offset + 1;
            break;
        }
    }
    if (st != STORE_OK && st != STORE_TIMEOUT) {
        snprintf(err, cap, "%s", store_cursor_error(c));
        store_cursor_close(c);
        return st;
    }
    store_cursor_close(c);
    return STORE_OK;
}

typedef struct {
    store_record r;
    unsigned char *copy;
} held;

/* The first offset appended at or after t (the end of the log when none is). */
static uint64_t offset_at(store *s, int64_t t)
{
    uint64_t first, end;
    store_bounds(s, &first, &end);
    store_cursor *c;
    if (store_cursor_open_at(s, t, &c) != STORE_OK)
        return end;
    store_record r;
    uint64_t at = next_record(s, c, &r) == STORE_OK ? r.offset : end;
    store_cursor_close(c);
    return at < end ? at : end;
}

static store_status run_newest(store *s, const qy_query *q, bool (*emit)(void *, const store_record *),
                               void *arg, bool *more, uint64_t *next, char *err, size_t cap)
{
    uint64_t first, end;
    store_bounds(s, &first, &end);
    uint64_t hi = q->resume ? q->at : q->until_ns != QY_NONE_AFTER ? offset_at(s, q->until_ns) : end;
    if (hi > end)
        hi = end;
    *more = false;
    store_cursor *c;
    store_status st = store_cursor_open(s, first, &c);
    if (st != STORE_OK) {
        snprintf(err, cap, "%s", store_error(s));
        return st;
    }
    size_t chunk = q->limit && q->limit * 2 > CHUNK_MIN ? q->limit * 2 : CHUNK_MIN;
    if (chunk > CHUNK_MAX)
        chunk = CHUNK_MAX;
    size_t budget = q->chunk_bytes ? q->chunk_bytes : QY_CHUNK_BYTES, peak = 0;
    bool grow = true;            /* (a chunk that went over the budget stops the doubling) */
    held *h = calloc(chunk, sizeof *h);
    size_t given = 0, seen = 0;
    bool done = h == NULL;
    if (!h) {
        snprintf(err, cap, "out of memory");
        st = STORE_EIO;
    }
    while (!done && hi > first) {
        uint64_t lo = hi - first > chunk ? hi - chunk : first;
        store_cursor_seek(c, lo);
        size_t nh = 0, bytes = 0;
        bool over = false;
        store_record r;
        while (nh < chunk && (st = next_record(s, c, &r)) == STORE_OK && r.offset < hi) {
            if (nh && bytes + r.len > budget) {
                over = true;          /* (records held whole: bounded by bytes too) */
                break;
            }
            bytes += r.len;
            h[nh].r = r;
            if (!(h[nh].copy = malloc(r.len ? r.len : 1))) {
                st = STORE_EIO;
                snprintf(err, cap, "out of memory");
                break;
            }
            memcpy(h[nh].copy, r.data, r.len);
            h[nh].r.data = h[nh].copy;
            nh++;
        }
        if (bytes > peak)
            peak = bytes;
        if (over) {
            /* the window [lo, hi) holds more than the budget: read a narrower one ending at hi
             * (halved until it fits; a single record always does) */
            st = STORE_OK;
            for (size_t k = 0; k < nh; k++)
                free(h[k].copy);
            chunk = nh / 2 ? nh / 2 : 1;
            grow = false;
            continue;
        }
        if (st != STORE_OK && st != STORE_TIMEOUT) {
            if (!err[0])
                snprintf(err, cap, "%s", store_cursor_error(c));
            done = true;
        } else {
            st = STORE_OK;
        }
        for (size_t k = nh; !done && k-- > 0;) {
            const store_record *x = &h[k].r;
            if (x->time_ns < q->since_ns) {
                done = true;           /* times never decrease along the offsets */
                break;
            }
            seen++;
            if (x->time_ns < q->until_ns && qy_event_passes(&q->f, (const char *)x->data, x->len)) {
                given++;
                if (!emit(arg, x)) {
                    *more = true;
                    *next = x->offset;
                    done = true;
                    break;
                }
            }
            if ((q->limit && given >= q->limit) || (q->scan_max && seen >= q->scan_max)) {
                *more = x->offset > first;
                *next = x->offset;
                done = true;
            }
        }
        for (size_t k = 0; k < nh; k++)
            free(h[k].copy);
        hi = lo;
        if (chunk < CHUNK_MAX && !done && grow) {
            held *v = realloc(h, 2 * chunk * sizeof *h);
            if (v) {
                h = v;
                chunk *= 2;
            }
        }
    }
    free(h);
    store_cursor_close(c);
    if (q->held_peak)
        *q->held_peak = peak;
    return st;
}

store_status qy_run(store *s, const qy_query *q, bool (*emit)(void *, const store_record *),
                    void *arg, bool *more, uint64_t *next, char *err, size_t cap)
{
    if (cap)
        err[0] = 0;
    *next = 0;
    return q->newest ? run_newest(s, q, emit, arg, more, next, err, cap)
                     : run_oldest(s, q, emit, arg, more, next, err, cap);
}
