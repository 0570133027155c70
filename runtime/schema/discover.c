/*
 * discover.c — schemas discovered from traffic (docs/schemas.md, "Discovery"): one thread per
 * open bus, at nice 19, reads the bus log with a cursor of its own (never in ingest's way) and
 * merges each event into the inferred schema of its (source, type).  When the schema written
 * out changes, its version goes up; the last KEEP_VERSIONS versions are kept.  Everything,
 * with the read position, is saved to DATA/BUS.schemas.json (written whole, renamed into place)
 * every few seconds and when the thread stops, and read back when it starts.
 *
 * The work is bounded: at most MAX_RATE events a second per bus; when the log is more than
 * MAX_BACKLOG events ahead, the thread jumps to KEEP_BACKLOG events before the end (and logs
 * how many it skipped): discovery describes recent traffic, it is not an audit.
 * GET /v1/schemas (runtime/center/schemas.c) reads the state under each bus's lock.
 */
#define _GNU_SOURCE                 /* pthread_setname_np */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../ebd_int.h"
#include "discover.h"

#define MAX_RATE 2000             /* events a second a discovery thread merges, at most */
#define MAX_BACKLOG 100000        /* events behind the end beyond which it skips ahead */
#define KEEP_BACKLOG 1000         /* ... to this many before the end */
#define MAX_KINDS 1000            /* (source, type) pairs tracked per bus */
#define SAVE_EVERY_MS 2000        /* how often the state is saved (and versions checked) */
#define BUS_BYTES ((size_t)16 << 20)  /* the properties all of a bus's kinds describe, about */

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static disc_bus **reg;            /* the running discovery threads */
static size_t nreg, capreg;

/* Now as RFC 3339 UTC with milliseconds. */
static void now_text(char out[32])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, 26, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)(ts.tv_nsec / 1000000) % 1000);
}

/* A monotonic clock in milliseconds. */
static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Frees kind k's contents. */
static void kind_clear(disc_kind *k)
{
    free(k->source);
    free(k->type);
    sch_infer_free(k->g);
    for (size_t i = 0; i < k->nver; i++) {
        free(k->ver[i].schema);
        free(k->ver[i].updated);
    }
    memset(k, 0, sizeof *k);
}

/* Frees b (its thread has ended). */
static void bus_free(disc_bus *b)
{
    for (size_t i = 0; i < b->nkinds; i++)
        kind_clear(&b->kinds[i]);
    free(b->kinds);
    free(b->name);
    free(b->file);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

/* The kind (source, type) of b, added when absent (NULL beyond MAX_KINDS or out of memory). */
static disc_kind *kind_of(disc_bus *b, const char *source, const char *type)
{
    for (size_t i = 0; i < b->nkinds; i++)
        if (!strcmp(b->kinds[i].source, source) && !strcmp(b->kinds[i].type, type))
            return &b->kinds[i];
    if (b->nkinds >= MAX_KINDS)
        return NULL;
    if (b->nkinds == b->capkinds) {
        size_t cap = b->capkinds ? b->capkinds * 2 : 8;
        disc_kind *v = realloc(b->kinds, cap * sizeof *v);
        if (!v)
            return NULL;
        b->kinds = v, b->capkinds = cap;
    }
    disc_kind *k = &b->kinds[b->nkinds];
    memset(k, 0, sizeof *k);
    k->source = strdup(source);
    k->type = strdup(type);
    k->g = sch_infer_new();
    if (!k->source || !k->type || !k->g) {
        kind_clear(k);
        return NULL;
    }
    b->nkinds++;
    return k;
}

/* Gives k a new version when its schema written out differs from the current one. */
static void check_version(disc_kind *k)
{
    if (!k->dirty)
        return;
    k->dirty = false;
    cJSON *s = sch_infer_schema(k->g);
    char *text = s ? cJSON_PrintUnformatted(s) : NULL;
    cJSON_Delete(s);
    if (!text)
        return;
    if (k->nver && !strcmp(k->ver[k->nver - 1].schema, text)) {
        free(text);
        return;
    }
    char when[32];
    now_text(when);
    char *updated = strdup(when);
    if (!updated) {
        free(text);
        return;
    }
    if (k->nver == KEEP_VERSIONS) {
        free(k->ver[0].schema);
        free(k->ver[0].updated);
        memmove(&k->ver[0], &k->ver[1], (KEEP_VERSIONS - 1) * sizeof k->ver[0]);
        k->nver--;
    }
    uint64_t v = k->nver ? k->ver[k->nver - 1].version + 1 : k->base_version + 1;
    k->ver[k->nver++] = (disc_version){ v, updated, text };
}

/* ---- saving and loading ---------------------------------------------------------------------- */

/* b's state as a JSON tree (the caller deletes it), for write_state.  Under b->mu. */
static cJSON *state_of(disc_bus *b)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "bus", b->name);
    cJSON_AddNumberToObject(root, "position", (double)b->pos);
    cJSON *list = cJSON_AddArrayToObject(root, "schemas");
    for (size_t i = 0; i < b->nkinds; i++) {
        disc_kind *k = &b->kinds[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "source", k->source);
        cJSON_AddStringToObject(e, "type", k->type);
        cJSON_AddItemToObject(e, "state", sch_infer_save(k->g));
        cJSON *vs = cJSON_AddArrayToObject(e, "versions");
        for (size_t j = 0; j < k->nver; j++) {
            cJSON *v = cJSON_CreateObject();
            cJSON_AddNumberToObject(v, "version", (double)k->ver[j].version);
            cJSON_AddStringToObject(v, "updated", k->ver[j].updated);
            cJSON_AddItemToObject(v, "schema", cJSON_Parse(k->ver[j].schema));
            cJSON_AddItemToArray(vs, v);
        }
        cJSON_AddItemToArray(list, e);
    }
    return root;
}

/* Writes root (state_of: b's state) to b's file (a temporary file renamed into place) and
 * deletes it.  Not under b->mu (the printing and the sync would keep GET /v1/schemas and
 * /metrics waiting): only b's file and name, which do not change, are used. */
static void write_state(disc_bus *b, cJSON *root)
{
    char *text = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return;
    size_t tl = strlen(b->file) + 8;
    char *tmp = malloc(tl);
    bool ok = false;
    if (tmp) {
        snprintf(tmp, tl, "%s.tmp", b->file);
        FILE *f = fopen(tmp, "w");
        if (f) {
            ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
            ok = fflush(f) == 0 && ok;
            ok = fsync(fileno(f)) == 0 && ok;
            ok = fclose(f) == 0 && ok;
            ok = ok && rename(tmp, b->file) == 0;
            if (!ok)
                unlink(tmp);
        }
    }
    if (!ok) {
        char log[300];
        ebd_log(EBD_WARN, "msg=\"cannot save the discovered schemas\" bus=%s file=\"%s\" "
                "error=\"%s\"", b->name, ebd_log_text(b->file, log, sizeof log), strerror(errno));
    }
    free(tmp);
    free(text);
}

/* Reads b's state back from its file, if there is one. */
static void load(disc_bus *b)
{
    FILE *f = fopen(b->file, "r");
    if (!f)
        return;
    char *text = NULL;
    size_t cap = 0;
    ssize_t n = getdelim(&text, &cap, '\0', f);
    fclose(f);
    cJSON *root = n > 0 ? cJSON_ParseWithLength(text, (size_t)n) : NULL;
    free(text);
    if (!root) {
        ebd_log(EBD_WARN, "msg=\"the saved discovered schemas are unreadable: starting afresh\" "
                "bus=%s", b->name);
        return;
    }
    const cJSON *pos = cJSON_GetObjectItemCaseSensitive(root, "position"), *e;
    b->pos = cJSON_IsNumber(pos) && pos->valuedouble >= 0 ? (uint64_t)pos->valuedouble : 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(root, "schemas")) {
        const cJSON *src = cJSON_GetObjectItemCaseSensitive(e, "source");
        const cJSON *typ = cJSON_GetObjectItemCaseSensitive(e, "type");
        if (!cJSON_IsString(src) || !cJSON_IsString(typ))
            continue;
        disc_kind *k = kind_of(b, src->valuestring, typ->valuestring);
        sch_infer *g = k ? sch_infer_load(cJSON_GetObjectItemCaseSensitive(e, "state")) : NULL;
        if (!g)
            continue;
        sch_infer_free(k->g);
        k->g = g;
        const cJSON *v;
        cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(e, "versions")) {
            const cJSON *num = cJSON_GetObjectItemCaseSensitive(v, "version");
            const cJSON *upd = cJSON_GetObjectItemCaseSensitive(v, "updated");
            char *schema = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(v, "schema"));
            if (!cJSON_IsNumber(num) || !cJSON_IsString(upd) || !schema || k->nver == KEEP_VERSIONS) {
                free(schema);
                continue;
            }
            k->ver[k->nver++] = (disc_version){ (uint64_t)num->valuedouble, strdup(upd->valuestring),
                                                schema };
        }
        k->base_version = k->nver ? k->ver[k->nver - 1].version : 0;
    }
    cJSON_Delete(root);
}

/* ---- the thread ------------------------------------------------------------------------------ */

/* Sets b->nschemas and b->bytes from b's kinds.  Under b->mu. */
static void recount(disc_bus *b)
{
    size_t n = 0, bytes = 0;
    for (size_t i = 0; i < b->nkinds; i++) {
        n += b->kinds[i].nver > 0;
        bytes += b->kinds[i].g ? sch_infer_bytes(b->kinds[i].g) : 0;
    }
    atomic_store(&b->nschemas, n);
    b->bytes = bytes;
}

/* Merges the event in record text s[0..n) into b.  Under b->mu. */
static void merge_event(disc_bus *b, const unsigned char *s, uint32_t n)
{
    cJSON *ev = cJSON_ParseWithLength((const char *)s, n);
    const cJSON *src = ev ? cJSON_GetObjectItemCaseSensitive(ev, "source") : NULL;
    const cJSON *typ = ev ? cJSON_GetObjectItemCaseSensitive(ev, "type") : NULL;
    if (ev && !typ)
        typ = cJSON_GetObjectItemCaseSensitive(ev, "detail-type");   /* an AWS event's (docs/aws.md) */
    if (cJSON_IsString(src) && cJSON_IsString(typ)) {
        disc_kind *k = kind_of(b, src->valuestring, typ->valuestring);
        /* (the bus's budget: the properties past it are not described, docs/schemas.md) */
        size_t before = k ? sch_infer_bytes(k->g) : 0;
        if (k)
            sch_infer_limit(k->g, before + (b->bytes < BUS_BYTES ? BUS_BYTES - b->bytes : 0));
        if (k && sch_infer_add(k->g, ev))
            k->dirty = true;
        if (k)
            b->bytes += sch_infer_bytes(k->g) - before;
    }
    cJSON_Delete(ev);
}

/* A bus's discovery thread: reads the log from the saved position, merges, versions, saves. */
static void *disc_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ebd-schema");   /* (top -H, ps -L) */
    disc_bus *b = arg;
    errno = 0;
    int nice_now = getpriority(PRIO_PROCESS, 0);
    if (errno == 0)
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice_now + 19);
    uint64_t first, next;
    store_bounds(b->s, &first, &next);
    if (b->pos < first || b->pos > next)
        b->pos = b->pos > next ? next : first;
    store_cursor *c = NULL;
    if (store_cursor_open(b->s, b->pos, &c) != STORE_OK) {
        ebd_log(EBD_WARN, "msg=\"schema discovery cannot read the bus\" bus=%s", b->name);
        return NULL;
    }
    uint64_t window = mono_ms(), in_window = 0, last_save = mono_ms(), saved_pos = b->pos;
    while (!atomic_load(&b->stop)) {
        if (in_window >= MAX_RATE) {
            uint64_t now = mono_ms();
            if (now - window < 1000) {
                struct timespec nap = { 0, 50 * 1000000L };
                nanosleep(&nap, NULL);
                continue;
            }
            window = now, in_window = 0;
        }
        store_record r;
        store_status st = store_cursor_next(c, &r, 500);
        if (st == STORE_OK) {
            pthread_mutex_lock(&b->mu);
            merge_event(b, r.data, r.len);
            b->pos = r.offset + 1;
            pthread_mutex_unlock(&b->mu);
            in_window++;
            if (in_window % 256 == 0) {
                store_bounds(b->s, &first, &next);
                if (next - b->pos > MAX_BACKLOG) {
                    uint64_t to = next - KEEP_BACKLOG;
                    ebd_log(EBD_INFO, "msg=\"schema discovery is behind: skipping ahead\" bus=%s "
                            "skipped=%llu", b->name, (unsigned long long)(to - b->pos));
                    if (store_cursor_seek(c, to) == STORE_OK) {
                        pthread_mutex_lock(&b->mu);
                        b->skipped += to - b->pos;
                        b->pos = to;
                        pthread_mutex_unlock(&b->mu);
                    }
                }
            }
        } else if (st == STORE_BEHIND || st == STORE_CORRUPT) {
            uint64_t lost = 0;
            if (st == STORE_CORRUPT)
                store_cursor_skip(c, &lost);
            else {
                store_bounds(b->s, &first, &next);
                store_cursor_seek(c, first);
            }
            pthread_mutex_lock(&b->mu);
            b->pos = store_cursor_offset(c);
            pthread_mutex_unlock(&b->mu);
        } else if (st != STORE_TIMEOUT) {
            break;                                  /* closing */
        }
        uint64_t now = mono_ms();
        if (now - last_save >= SAVE_EVERY_MS || st == STORE_TIMEOUT) {
            pthread_mutex_lock(&b->mu);
            bool changed = b->pos != saved_pos;
            for (size_t i = 0; i < b->nkinds; i++) {
                changed |= b->kinds[i].dirty;
                check_version(&b->kinds[i]);
            }
            recount(b);
            cJSON *state = NULL;
            if (changed && now - last_save >= SAVE_EVERY_MS / 4) {
                state = state_of(b);
                saved_pos = b->pos;
                last_save = now;
            }
            pthread_mutex_unlock(&b->mu);
            if (state)
                write_state(b, state);
        }
    }
    store_cursor_close(c);
    pthread_mutex_lock(&b->mu);
    for (size_t i = 0; i < b->nkinds; i++)
        check_version(&b->kinds[i]);
    recount(b);
    cJSON *state = state_of(b);
    pthread_mutex_unlock(&b->mu);
    write_state(b, state);
    return NULL;
}

/* ---- starting and stopping ------------------------------------------------------------------- */

void sch_discovery_start(ebd *d)
{
    pthread_rwlock_rdlock(&d->lock);
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < d->nbuses; i++) {
        ebd_bus *eb = d->buses[i];
        if (!eb->s)
            continue;
        bool running = false;
        for (size_t j = 0; j < nreg && !running; j++)
            running = !strcmp(reg[j]->name, eb->name) && reg[j]->s == eb->s;
        if (running)
            continue;
        if (nreg == capreg) {
            size_t cap = capreg ? capreg * 2 : 8;
            disc_bus **v = realloc(reg, cap * sizeof *v);
            if (!v)
                break;
            reg = v, capreg = cap;
        }
        disc_bus *b = calloc(1, sizeof *b);
        size_t fl = strlen(d->data_dir) + strlen(eb->name) + 32;
        if (!b || !(b->name = strdup(eb->name)) || !(b->file = malloc(fl))) {
            if (b) {
                free(b->name);
                free(b);
            }
            break;
        }
        snprintf(b->file, fl, "%s/%s.schemas.json", d->data_dir, eb->name);
        pthread_mutex_init(&b->mu, NULL);
        b->s = eb->s;
        load(b);
        recount(b);
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setstacksize(&at, 1u << 20);  /* cJSON's parse nests up to 1,000 deep */
        int rc = pthread_create(&b->th, &at, disc_main, b);
        pthread_attr_destroy(&at);
        if (rc != 0) {
            bus_free(b);
            ebd_log(EBD_WARN, "msg=\"cannot start schema discovery\" bus=%s", eb->name);
            continue;
        }
        reg[nreg++] = b;
    }
    pthread_mutex_unlock(&reg_mu);
    pthread_rwlock_unlock(&d->lock);
}

/* Stops and frees registry entry i.  Under reg_mu. */
static void stop_one(size_t i)
{
    disc_bus *b = reg[i];
    atomic_store(&b->stop, true);
    store_wake(b->s);
    pthread_join(b->th, NULL);
    bus_free(b);
    reg[i] = reg[--nreg];
}

void sch_discovery_bus_closing(ebd *d, const char *bus)
{
    (void)d;
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < nreg; i++)
        if (!strcmp(reg[i]->name, bus)) {
            stop_one(i);
            break;
        }
    pthread_mutex_unlock(&reg_mu);
}

void sch_discovery_stop(ebd *d)
{
    (void)d;
    pthread_mutex_lock(&reg_mu);
    while (nreg)
        stop_one(nreg - 1);
    free(reg);
    reg = NULL;
    capreg = 0;
    pthread_mutex_unlock(&reg_mu);
}

size_t sch_count(ebd *d, const char *bus)
{
    (void)d;
    size_t n = 0;
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < nreg; i++)
        if (!strcmp(reg[i]->name, bus)) {
            n += atomic_load(&reg[i]->nschemas);      /* (not b->mu: a save may hold it) */
        }
    pthread_mutex_unlock(&reg_mu);
    return n;
}

void sch_discovery_each(void (*fn)(void *arg, disc_bus *b), void *arg)
{
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < nreg; i++) {
        pthread_mutex_lock(&reg[i]->mu);
        fn(arg, reg[i]);
        pthread_mutex_unlock(&reg[i]->mu);
    }
    pthread_mutex_unlock(&reg_mu);
}
