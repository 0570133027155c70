/*
 * enforce.c — a bus's bound schemas at ingest (docs/schemas.md, "Enforcement"):
 *
 *     bus orders { schema "order.created" file "schemas/order.json" on_invalid dead_letter }
 *
 * loaded with each ruleset (start and reload), read-only afterwards: ingest threads validate
 * at once against one compiled schema.  An invalid event is refused (400, naming the instance
 * path and keyword), stored anyway and counted (accept), or appended whole to the bus's
 * dead-letter file DATA/BUS.invalid.jsonl, one JSON line per event with the reason, and not
 * stored on the bus (dead_letter).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../ebd_int.h"
#include "schema.h"

typedef struct {
    char *type;
    char *file;
    sch_schema *schema;
    int on_invalid;
} binding;

struct sch_bus {
    char *name;
    binding *b;
    size_t n;
    char *dlq_path;               /* DATA/BUS.invalid.jsonl */
    pthread_mutex_t mu;           /* the dead-letter file's writes */
    int fd;                       /* opened on first use; -1 */
};

struct sch_set {
    sch_bus *bus;                 /* one per program bus */
    uint32_t nbus;
};

/* Invalid events since ebd started, per bus name (kept across reloads); found by name under
 * counts_mu, which only invalid events take. */
typedef struct {
    char *bus;
    sch_counts c;
} bus_counts;

static pthread_mutex_t counts_mu = PTHREAD_MUTEX_INITIALIZER;
static bus_counts *counts;
static size_t ncounts, capcounts;

/* Adds one to what of bus's counts (0 accepted, 1 dead-lettered, 2 rejected). */
static void count_invalid(const char *bus, int what)
{
    pthread_mutex_lock(&counts_mu);
    size_t i = 0;
    while (i < ncounts && strcmp(counts[i].bus, bus) != 0)
        i++;
    if (i == ncounts) {
        char *name = strdup(bus);
        if (ncounts == capcounts) {
            size_t cap = capcounts ? capcounts * 2 : 8;
            bus_counts *v = name ? realloc(counts, cap * sizeof *v) : NULL;
            if (v)
                counts = v, capcounts = cap;
        }
        if (!name || ncounts == capcounts) {
            free(name);
            pthread_mutex_unlock(&counts_mu);
            return;
        }
        counts[ncounts++] = (bus_counts){ name, { 0, 0, 0 } };
    }
    uint64_t *c = what == 0 ? &counts[i].c.accepted : what == 1 ? &counts[i].c.dead_lettered
                                                                : &counts[i].c.rejected;
    (*c)++;
    pthread_mutex_unlock(&counts_mu);
}

sch_counts sch_invalid_counts(const char *bus)
{
    sch_counts r = { 0, 0, 0 };
    pthread_mutex_lock(&counts_mu);
    for (size_t i = 0; i < ncounts; i++)
        if (!bus || !strcmp(counts[i].bus, bus)) {
            r.accepted += counts[i].c.accepted;
            r.dead_lettered += counts[i].c.dead_lettered;
            r.rejected += counts[i].c.rejected;
        }
    pthread_mutex_unlock(&counts_mu);
    return r;
}

/* A vm_str as a new C string. */
static char *dup_str(const vm_program *p, vm_str s)
{
    char *o = malloc(s.len + 1);
    if (o) {
        memcpy(o, vm_s(p, s), s.len);
        o[s.len] = '\0';
    }
    return o;
}

/* Is option value v the bare word w? */
static bool word(const vm_program *p, const vm_cfg *v, const char *w)
{
    return v && v->type == VM_CFG_IDENT && v->str.len == strlen(w) &&
           memcmp(vm_s(p, v->str), w, v->str.len) == 0;
}

/* Loads one `schema` option o of bus b into x. */
static bool load_binding(const vm_program *p, const vm_cfg *o, binding *x, char *err, size_t cap)
{
    const vm_cfg *t = ebd_cfg_child(p, o, 0), *f = ebd_cfg_child(p, o, 2);
    const vm_cfg *mode = ebd_cfg_child(p, o, 4);
    if (!t || t->type != VM_CFG_STR || !f || f->type != VM_CFG_STR) {
        snprintf(err, cap, "schema: written schema \"TYPE\" file \"PATH\" on_invalid MODE");
        return false;
    }
    x->type = dup_str(p, t->str);
    char *rel = dup_str(p, f->str);
    const char *src = o->span.src < p->nsrcs ? vm_s(p, p->srcs[o->span.src].name) : NULL;
    char *srcname = src ? dup_str(p, p->srcs[o->span.src].name) : NULL;
    x->file = rel ? sch_resolve_path(srcname, rel) : NULL;
    free(srcname);
    free(rel);
    x->on_invalid = word(p, mode, "dead_letter") ? SCH_ON_DEAD_LETTER
                  : word(p, mode, "accept") ? SCH_ON_ACCEPT : SCH_ON_REJECT;
    if (!x->type || !x->file) {
        snprintf(err, cap, "out of memory");
        return false;
    }
    char why[600];
    x->schema = sch_load_file(x->file, SCH_FORMATS, why, sizeof why);
    if (!x->schema) {
        snprintf(err, cap, "schema \"%.100s\": file \"%.300s\": %.400s", x->type, x->file, why);
        return false;
    }
    return true;
}

sch_set *sch_set_load(const vm_program *p, const char *data_dir, char *err, size_t cap)
{
    sch_set *s = calloc(1, sizeof *s);
    if (!s || !(s->bus = calloc(p->nbuses ? p->nbuses : 1, sizeof *s->bus))) {
        free(s);
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    s->nbus = p->nbuses;
    for (uint32_t i = 0; i < p->nbuses; i++) {
        sch_bus *b = &s->bus[i];
        const vm_bus *vb = &p->buses[i];
        b->fd = -1;
        pthread_mutex_init(&b->mu, NULL);
        b->name = dup_str(p, vb->name);
        size_t k = 0;
        for (uint32_t j = 0; j < vb->nopt; j++) {
            const vm_cfg *o = &p->cfgs[vb->opt0 + j];
            k += o->type == VM_CFG_OPTION && o->key.len == 6 && !memcmp(vm_s(p, o->key), "schema", 6);
        }
        if (!k)
            continue;
        b->b = calloc(k, sizeof *b->b);
        size_t dl = strlen(data_dir ? data_dir : ".") + strlen(b->name ? b->name : "") + 32;
        b->dlq_path = malloc(dl);
        if (!b->b || !b->dlq_path || !b->name) {
            snprintf(err, cap, "out of memory");
            sch_set_free(s);
            return NULL;
        }
        snprintf(b->dlq_path, dl, "%s/%s.invalid.jsonl", data_dir ? data_dir : ".", b->name);
        for (uint32_t j = 0; j < vb->nopt; j++) {
            const vm_cfg *o = &p->cfgs[vb->opt0 + j];
            if (o->type != VM_CFG_OPTION || o->key.len != 6 || memcmp(vm_s(p, o->key), "schema", 6))
                continue;
            char why[900];
            if (!load_binding(p, o, &b->b[b->n++], why, sizeof why)) {
                snprintf(err, cap, "bus %s: %s", b->name, why);
                sch_set_free(s);
                return NULL;
            }
        }
    }
    return s;
}

void sch_set_free(sch_set *s)
{
    if (!s)
        return;
    for (uint32_t i = 0; i < s->nbus; i++) {
        sch_bus *b = &s->bus[i];
        for (size_t k = 0; k < b->n; k++) {
            free(b->b[k].type);
            free(b->b[k].file);
            sch_free(b->b[k].schema);
        }
        free(b->b);
        free(b->name);
        free(b->dlq_path);
        if (b->fd >= 0)
            close(b->fd);
        pthread_mutex_destroy(&b->mu);
    }
    free(s->bus);
    free(s);
}

const sch_bus *sch_set_bus(const sch_set *s, uint32_t pbus)
{
    return s && pbus < s->nbus && s->bus[pbus].n ? &s->bus[pbus] : NULL;
}

const char *sch_divert_path(const sch_bus *b)
{
    return b->dlq_path;
}

bool sch_divert_add(const sch_bus *b, sbuf *line, const char *ev, size_t n, const char *why)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    size_t wl = strftime(when, sizeof when - 6, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + wl, sizeof when - wl, ".%03dZ", (int)(ts.tv_nsec / 1000000) % 1000);
    sb_printf(line, "{\"time\":\"%s\",\"bus\":", when);
    sb_json_string(line, b->name, strlen(b->name));
    sb_puts(line, ",\"error\":");
    sb_json_string(line, why, strlen(why));
    sb_puts(line, ",\"event\":");
    /* the event's text as it came, on one line (a line break in JSON text is whitespace) */
    size_t from = line->n;
    sb_put(line, ev, n);
    for (size_t i = from; !line->oom && i < line->n; i++)
        if (line->v[i] == '\n' || line->v[i] == '\r')
            line->v[i] = ' ';
    sb_puts(line, "}\n");
    return !line->oom;
}

bool sch_divert_write(const sch_bus *cb, const sbuf *batch, size_t count)
{
    sch_bus *b = (sch_bus *)cb;   /* only its dead-letter file changes, under b->mu */
    bool ok = !batch->oom;
    int err = 0;
    pthread_mutex_lock(&b->mu);
    if (ok && b->fd < 0)
        b->fd = open(b->dlq_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    off_t size0 = b->fd >= 0 ? lseek(b->fd, 0, SEEK_END) : -1;
    if (ok && (b->fd < 0 || size0 < 0))
        ok = false, err = errno;
    const char *at = batch->v;
    size_t left = ok ? batch->n : 0;
    while (ok && left) {
        ssize_t k = write(b->fd, at, left);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            err = k < 0 ? errno : ENOSPC;
            ok = false;
            break;
        }
        at += k, left -= (size_t)k;
    }
    if (ok && fdatasync(b->fd) != 0)
        ok = false, err = errno;
    /* (a half-written batch goes: the lines of the events the client is told were not taken
     * must not stay, nor half a line before the next batch's) */
    if (!ok && size0 >= 0 && ftruncate(b->fd, size0) != 0)
        ebd_log(EBD_ERROR, "msg=\"cannot take the dead-letter file of invalid events back\" "
                "bus=%s error=\"%s\"", b->name, strerror(errno));
    pthread_mutex_unlock(&b->mu);
    if (!ok) {
        char log[300];
        ebd_log(EBD_ERROR, "msg=\"cannot write the dead-letter file of invalid events\" bus=%s "
                "file=\"%s\" error=\"%s\"", b->name, ebd_log_text(b->dlq_path, log, sizeof log),
                strerror(err ? err : ENOMEM));
    } else {
        for (size_t i = 0; i < count; i++)
            count_invalid(b->name, 1);
    }
    return ok;
}

bool sch_divert(const sch_bus *b, const char *ev, size_t n, const char *why)
{
    sbuf line = { 0 };
    sch_divert_add(b, &line, ev, n, why);
    bool ok = sch_divert_write(b, &line, 1);
    sb_free(&line);
    return ok;
}

typedef struct {
    const char *s;
    const js_member *type;
    js_member m;
} find_type;

/* js_each: finds the member "type". */
static bool find_type_fn(void *arg, const js_member *m)
{
    find_type *f = arg;
    if (!js_key_is(f->s, m, "type"))
        return true;
    f->m = *m;
    f->type = &f->m;
    return false;
}

/* Does b bind a schema to the type of event ev (checked JSON text)?  Looks at its spans only,
 * so that the events of other types are not parsed. */
static bool type_bound(const sch_bus *b, const char *ev, size_t n)
{
    find_type f = { .s = ev };
    js_each(ev, n, vm_json_ws(ev, n, 0), find_type_fn, &f);
    if (!f.type || ev[f.type->val_off] != '"')
        return false;
    char stack[256], *t = f.type->val_len <= sizeof stack ? stack : malloc(f.type->val_len);
    if (!t)
        return true;              /* let the parse below decide */
    size_t tl = js_unquote(ev + f.type->val_off, f.type->val_len, t);
    bool bound = false;
    for (size_t i = 0; i < b->n && !bound; i++)
        bound = strlen(b->b[i].type) == tl && memcmp(b->b[i].type, t, tl) == 0;
    if (t != stack)
        free(t);
    return bound;
}

int sch_ingest(const sch_bus *b, const char *ev, size_t n, char *why, size_t cap)
{
    if (!b || !type_bound(b, ev, n))
        return SCH_STORE;
    cJSON *j = sch_parse(ev, n, NULL);
    if (!j) {
        snprintf(why, cap, "the event could not be read for its schema (out of memory, or "
                 "nested deeper than %d)", CJSON_NESTING_LIMIT);
        return SCH_REFUSE;
    }
    const cJSON *type = j ? cJSON_GetObjectItemCaseSensitive(j, "type") : NULL;
    const binding *x = NULL;
    for (size_t i = 0; cJSON_IsString(type) && i < b->n && !x; i++)
        if (strcmp(b->b[i].type, type->valuestring) == 0)
            x = &b->b[i];
    sch_error e;
    if (!x || sch_validate(x->schema, j, &e)) {
        cJSON_Delete(j);
        return SCH_STORE;
    }
    cJSON_Delete(j);
    snprintf(why, cap, "schema \"%s\": %s: %s: %s", x->type, e.path[0] ? e.path : "/", e.keyword,
             e.message);
    switch (x->on_invalid) {
    case SCH_ON_ACCEPT: {
        count_invalid(b->name, 0);
        char log[600];
        ebd_log(EBD_DEBUG, "msg=\"invalid event stored (on_invalid accept)\" bus=%s why=\"%s\"",
                b->name, ebd_log_text(why, log, sizeof log));
        return SCH_STORE;
    }
    case SCH_ON_DEAD_LETTER:
        return SCH_DIVERT;
    default:
        count_invalid(b->name, 2);
        return SCH_REFUSE;
    }
}
