/*
 * store.c — the storage interface (runtime.h): each call goes to the backend that holds the bus.
 */
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

store_status store_append(store *s, const store_entry *e, size_t n, uint64_t *offsets)
{
    return s->ops->append(s, e, n, offsets, NULL);
}

bool store_dedups(store *s)
{
    return s->ops->dedups && s->ops->dedups(s);
}

store_status store_append_dedup(store *s, const store_entry *e, size_t n, uint64_t *offsets,
                                bool *dup)
{
    if (dup)
        memset(dup, 0, n * sizeof *dup);
    return s->ops->append(s, e, n, offsets, dup);
}

void store_bounds(store *s, uint64_t *first, uint64_t *next)
{
    s->ops->bounds(s, first, next);
}

store_status store_cursor_open(store *s, uint64_t offset, store_cursor **out)
{
    return s->ops->cursor_open(s, offset, out);
}

store_status store_cursor_open_at(store *s, int64_t time_ns, store_cursor **out)
{
    return s->ops->cursor_open_at(s, time_ns, out);
}

bool store_shared(store *s)
{
    return s->ops->cursor_open_group != NULL;
}

void store_get_figures(store *s, store_figures *f)
{
    memset(f, 0, sizeof *f);
    f->backend = s->ops->name;
    s->ops->figures(s, f);
}

store_status store_get_group_figures(store *s, const char *group, store_group_figures *g)
{
    memset(g, 0, sizeof *g);
    if (!s->ops->group_figures || !store_cursor_name_ok(group))
        return STORE_EINVAL;
    return s->ops->group_figures(s, group, g);
}

store_status store_cursor_open_group(store *s, const char *group, store_cursor **out)
{
    if (!s->ops->cursor_open_group || !store_cursor_name_ok(group))
        return STORE_EINVAL;
    return s->ops->cursor_open_group(s, group, out);
}

store_status store_cursor_done(store_cursor *c, const uint64_t *offsets, size_t n)
{
    if (!c->s->ops->cursor_done)
        return STORE_EINVAL;
    return c->s->ops->cursor_done(c, offsets, n);
}

store_status store_cursor_next(store_cursor *c, store_record *r, int timeout_ms)
{
    return c->s->ops->cursor_next(c, r, timeout_ms);
}

store_status store_cursor_seek(store_cursor *c, uint64_t offset)
{
    return c->s->ops->cursor_seek(c, offset);
}

store_status store_cursor_skip(store_cursor *c, uint64_t *lost)
{
    uint64_t ignored;
    return c->s->ops->cursor_skip(c, lost ? lost : &ignored);
}

uint64_t store_cursor_offset(const store_cursor *c)
{
    return c->s->ops->cursor_offset(c);
}

const char *store_cursor_error(const store_cursor *c)
{
    return c->s->ops->cursor_error(c);
}

void store_cursor_close(store_cursor *c)
{
    if (c)
        c->s->ops->cursor_close(c);
}

store_status store_commit(store *s, const char *name, uint64_t offset)
{
    return store_commit_pending(s, name, offset, NULL, 0);
}

store_status store_committed(store *s, const char *name, uint64_t *offset)
{
    uint64_t pending[STORE_MAX_PENDING];
    size_t n;
    store_status st = store_committed_pending(s, name, offset, pending, &n);
    for (size_t i = 0; st == STORE_OK && i < n; i++)
        if (pending[i] < *offset)
            *offset = pending[i];
    return st;
}

store_status store_commit_pending(store *s, const char *name, uint64_t high,
                                  const uint64_t *pending, size_t npending)
{
    if (!store_cursor_name_ok(name) || npending > STORE_MAX_PENDING)
        return STORE_EINVAL;
    for (size_t i = 0; i < npending; i++)
        if (pending[i] >= high)
            return STORE_EINVAL;
    return s->ops->commit(s, name, high, pending, npending);
}

store_status store_committed_pending(store *s, const char *name, uint64_t *high,
                                     uint64_t *pending, size_t *npending)
{
    *npending = 0;
    if (!store_cursor_name_ok(name))
        return STORE_EINVAL;
    return s->ops->committed(s, name, high, pending, npending);
}

/* The backend's names (none when it fails). */
static store_status names(store *s, bool sets, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    return s->ops->names(s, sets, out, n);
}

store_status store_cursor_names(store *s, char ***out, size_t *n)
{
    return names(s, false, out, n);
}

store_status store_set_names(store *s, char ***out, size_t *n)
{
    return names(s, true, out, n);
}

store_status store_forget(store *s, const char *name)
{
    if (!store_cursor_name_ok(name))
        return STORE_EINVAL;
    return s->ops->forget(s, name);
}

/* strcmp order of the names of two entries (pointers to them), for qsort. */
static int cmp_pos(const void *a, const void *b)
{
    return strcmp((*(const store_pos *const *)a)->name, (*(const store_pos *const *)b)->name);
}

/* Is e one entry of a cursor set: a good name, pending offsets few enough and below high? */
static bool pos_ok(const store_pos *e)
{
    if (!e->name || !store_cursor_name_ok(e->name) || e->npending > STORE_MAX_PENDING ||
        (e->npending && !e->pending))
        return false;
    for (size_t i = 0; i < e->npending; i++)
        if (e->pending[i] >= e->high)
            return false;
    return true;
}

/* Checks the entries and hands them to the backend sorted by name (each name once). */
store_status store_commit_set(store *s, const char *set, uint64_t base, const store_pos *e,
                              size_t n)
{
    if (!store_cursor_name_ok(set) || (n && !e))
        return STORE_EINVAL;
    const store_pos **sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!sorted)
        return STORE_EIO;
    store_status st = STORE_OK;
    for (size_t i = 0; i < n && st == STORE_OK; i++) {
        sorted[i] = &e[i];
        if (!pos_ok(&e[i]))
            st = STORE_EINVAL;
    }
    if (st == STORE_OK && n > 1)
        qsort(sorted, n, sizeof *sorted, cmp_pos);
    for (size_t i = 1; i < n && st == STORE_OK; i++)
        if (!strcmp(sorted[i - 1]->name, sorted[i]->name))
            st = STORE_EINVAL;
    if (st == STORE_OK)
        st = s->ops->commit_set(s, set, base, sorted, n);
    free(sorted);
    return st;
}

store_status store_committed_set(store *s, const char *set, uint64_t *base, store_pos **e,
                                 size_t *n)
{
    *e = NULL;
    *n = 0;
    if (!store_cursor_name_ok(set))
        return STORE_EINVAL;
    return s->ops->committed_set(s, set, base, e, n);
}

void store_set_free(store_pos *e, size_t n)
{
    for (size_t i = 0; e && i < n; i++) {
        free(e[i].name);
        free(e[i].pending);
    }
    free(e);
}

store_status store_retain(store *s, int64_t now_ns, unsigned *deleted)
{
    unsigned ignored;
    return s->ops->retain(s, now_ns, deleted ? deleted : &ignored);
}

bool store_health(store *s, char *err, size_t errcap)
{
    char ignored[1];
    if (!err || !errcap) {
        err = ignored;
        errcap = sizeof ignored;
    }
    err[0] = 0;
    return s->ops->health(s, err, errcap);
}

void store_wake(store *s)
{
    s->ops->wake(s);
}

const char *store_error(store *s)
{
    return s->ops->error(s);
}

void store_close(store *s)
{
    if (s)
        s->ops->close(s);
}

bool store_cursor_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > VM_MAX_NAME || name[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}
