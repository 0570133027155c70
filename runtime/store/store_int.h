/*
 * store_int.h — what a storage backend implements (runtime.h, "Storage").  Every store and cursor
 * starts with these structs; the store_* functions of runtime.h dispatch through ops, so nothing
 * above the interface knows which backend holds a bus.
 */
#ifndef EBR_STORE_INT_H
#define EBR_STORE_INT_H

#include "store.h"

typedef struct {
    const char *name;
    /* dup (NULL, or n flags): set for a record the backend kept from being stored again */
    store_status (*append)(store *s, const store_entry *e, size_t n, uint64_t *offsets, bool *dup);
    bool (*dedups)(store *s);     /* NULL: never */
    void (*bounds)(store *s, uint64_t *first, uint64_t *next);
    store_status (*cursor_open)(store *s, uint64_t offset, store_cursor **out);
    store_status (*cursor_open_at)(store *s, int64_t time_ns, store_cursor **out);
    /* NULL for a backend without shared reading (and then cursor_done too) */
    store_status (*cursor_open_group)(store *s, const char *group, store_cursor **out);
    store_status (*cursor_done)(store_cursor *c, const uint64_t *offsets, size_t n);
    store_status (*group_figures)(store *s, const char *group, store_group_figures *g);
    void (*figures)(store *s, store_figures *f);
    store_status (*cursor_next)(store_cursor *c, store_record *r, int timeout_ms);
    store_status (*cursor_seek)(store_cursor *c, uint64_t offset);
    store_status (*cursor_skip)(store_cursor *c, uint64_t *lost);
    uint64_t (*cursor_offset)(const store_cursor *c);
    const char *(*cursor_error)(const store_cursor *c);
    void (*cursor_close)(store_cursor *c);
    store_status (*commit)(store *s, const char *name, uint64_t high, const uint64_t *pending,
                           size_t npending);
    store_status (*committed)(store *s, const char *name, uint64_t *high, uint64_t *pending,
                              size_t *npending);
    /* names: the named cursors' (sets false) or the cursor sets' (sets true), sorted (strcmp) */
    store_status (*names)(store *s, bool sets, char ***names, size_t *n);
    store_status (*forget)(store *s, const char *name);
    /* e[0..n): sorted by name, each once, checked (store.c); pending offsets in any order */
    store_status (*commit_set)(store *s, const char *set, uint64_t base,
                               const store_pos *const *e, size_t n);
    store_status (*committed_set)(store *s, const char *set, uint64_t *base, store_pos **e,
                                  size_t *n);
    store_status (*retain)(store *s, int64_t now_ns, unsigned *deleted);
    bool (*health)(store *s, char *err, size_t errcap);
    void (*wake)(store *s);
    const char *(*error)(store *s);
    void (*close)(store *s);
} store_ops;

struct store {
    const store_ops *ops;
};

struct store_cursor {
    store *s;
};

/* Is name fit to be a named cursor's (and so a file's) name? */
bool store_cursor_name_ok(const char *name);

#endif
