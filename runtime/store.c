/*
 * store.c — the storage interface (runtime.h): each call goes to the backend that holds the bus.
 */
#include <string.h>

#include "store_int.h"

store_status store_append(store *s, const store_entry *e, size_t n, uint64_t *first)
{
    return s->ops->append(s, e, n, first);
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
