/*
 * discover.h — discovery's state, shared by runtime/schema/discover.c (the threads) and
 * runtime/center/schemas.c (GET /v1/schemas).  Not a door: the rest of ebd sees schema.h.
 */
#ifndef EBR_SCHEMA_DISCOVER_H
#define EBR_SCHEMA_DISCOVER_H

#include <pthread.h>
#include <stdatomic.h>

#include "../runtime.h"
#include "schema.h"

#define KEEP_VERSIONS 10          /* versions kept per (source, type), the current one included */

typedef struct {
    uint64_t version;
    char *updated;                /* when it appeared (RFC 3339) */
    char *schema;                 /* its JSON text */
} disc_version;

/* One (source, type) of a bus. */
typedef struct {
    char *source, *type;
    sch_infer *g;
    bool dirty;                   /* events merged since the last version check */
    disc_version ver[KEEP_VERSIONS];  /* oldest first; the last is the current one */
    size_t nver;
    uint64_t base_version;        /* the version before ver[0] when none are kept */
} disc_kind;

typedef struct {
    char *name;
    char *file;                   /* DATA/BUS.schemas.json */
    store *s;
    pthread_t th;
    _Atomic bool stop;
    pthread_mutex_t mu;           /* everything below */
    uint64_t pos;                 /* the next offset to read */
    uint64_t skipped;             /* events passed over to catch up */
    disc_kind *kinds;
    size_t nkinds, capkinds;
    size_t bytes;                 /* what the kinds' inferences take (DISC_BUS_BYTES at most) */
    _Atomic size_t nschemas;      /* kinds with a version (sch_count reads it without mu) */
} disc_bus;

/* Calls fn for every bus with discovery running, under its lock. */
void sch_discovery_each(void (*fn)(void *arg, disc_bus *b), void *arg);

#endif
