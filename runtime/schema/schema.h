/*
 * schema.h — JSON Schema in ebd and ebc (docs/schemas.md), the door of runtime/schema/:
 *
 *   validate.c  a draft 2020-12 validator on cJSON documents: sch_compile turns a schema into a
 *               read-only sch_schema that any number of threads may validate with at once;
 *   format.c    the `format` assertions (date-time, uri, email, uuid, ipv4, ipv6);
 *   infer.c     inference: events merged into a schema that describes all of them;
 *   enforce.c   a bus's `schema "TYPE" file "..." on_invalid ...` options: checked by ebc,
 *               loaded by ebd, applied at ingest;
 *   discover.c  ebd's discovery threads (one per bus) and GET /v1/schemas.
 */
#ifndef EBR_SCHEMA_H
#define EBR_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

/* ---- validation ---------------------------------------------------------------------------- */

typedef struct sch_schema sch_schema;

/* Why an instance is not valid: where in it (a JSON Pointer, "" for the whole instance), the
 * keyword that failed ("minimum", "required", ...) and a sentence saying why. */
typedef struct {
    char path[512];
    char keyword[64];
    char message[512];
} sch_error;

enum { SCH_FORMATS = 1 };          /* assert `format` (the six of sch_format_ok) */

/* Compiles schema (not kept: the result holds a copy) into a reusable, read-only validator.
 * flags: SCH_FORMATS or 0 (then `format` is an annotation only, the draft's default).
 * NULL with the reason in err (a JSON Pointer into the schema where it is bad) when the schema
 * is not one: not an object or boolean, a bad regex, a $ref that resolves nowhere. */
sch_schema *sch_compile(const cJSON *schema, unsigned flags, char *err, size_t cap);
/* The same from JSON text s[0..n). */
sch_schema *sch_compile_text(const char *s, size_t n, unsigned flags, char *err, size_t cap);
void sch_free(sch_schema *s);

/* Is instance valid under s?  On false fills *e (may be NULL).  Safe from several threads at
 * once on one s. */
bool sch_validate(const sch_schema *s, const cJSON *instance, sch_error *e);

/* Does s[0..n) have the format fmt ("date-time", "uri", "email", "uuid", "ipv4", "ipv6")?
 * Formats outside those six are annotations: *known (may be NULL) is false and the answer true. */
bool sch_format_ok(const char *fmt, const char *s, size_t n, bool *known);

/* ---- inference ----------------------------------------------------------------------------- */

/* A schema being inferred from instances: sch_infer_add merges one into it.  The result does
 * not depend on the order the instances came in. */
typedef struct sch_infer sch_infer;

sch_infer *sch_infer_new(void);
void sch_infer_free(sch_infer *g);
/* Merges instance into g; false only when out of memory. */
bool sch_infer_add(sch_infer *g, const cJSON *instance);
/* Merges everything b has seen into a. */
bool sch_infer_merge(sch_infer *a, const sch_infer *b);
/* How many instances g has seen. */
uint64_t sch_infer_count(const sch_infer *g);
/* The schema g describes now (a new cJSON tree the caller frees), or NULL when out of memory. */
cJSON *sch_infer_schema(const sch_infer *g);
/* g as a JSON tree that sch_infer_load reads back (its whole state, for persistence). */
cJSON *sch_infer_save(const sch_infer *g);
sch_infer *sch_infer_load(const cJSON *saved);

/* `ebc schema infer FILE`: reads one CloudEvent per line of path and prints
 * {"schemas":[{"source","type","events","schema"}]} to out.  0, or 1 with the error
 * (file:line: why) on err. */
int sch_infer_cli(const char *path, FILE *out, FILE *err);

/* ---- enforcement (ebd) ----------------------------------------------------------------------- */

typedef struct ebd ebd;
typedef struct ebd_rules ebd_rules;
typedef struct vm_program vm_program;

enum { SCH_REJECT, SCH_DEAD_LETTER, SCH_ACCEPT };

/* A bus's bound schemas, as one ruleset loaded them. */
typedef struct sch_binding {
    char *type;                   /* the event type it applies to */
    sch_schema *schema;
    char *file;                   /* as resolved */
    int on_invalid;               /* SCH_REJECT, ... */
} sch_binding;

/* Loads the bus options `schema "TYPE" file "PATH" on_invalid MODE` of program p (PATH relative
 * to rules_dir).  Returns an array (*n entries, per p's bus index: bind[bus] has nbind[bus]) or
 * false with the reason in err. */
typedef struct sch_set sch_set;
sch_set *sch_set_load(const vm_program *p, const char *rules_dir, char *err, size_t cap);
void sch_set_free(sch_set *s);

/* What ingest does with event text ev[0..n) (a checked CloudEvent) of type for program bus pbus:
 * SCH_ACCEPT when no schema binds its type or it is valid (or invalid under on_invalid accept);
 * SCH_REJECT with the message in why; SCH_DEAD_LETTER after appending the event to the bus's
 * dead-letter file (DATA/BUS.invalid.jsonl), why holding the reason. */
int sch_check_event(const sch_set *s, uint32_t pbus, const char *bus_name, const char *data_dir,
                    const char *ev, size_t n, char *why, size_t cap);
/* Events stored although invalid (on_invalid accept), and dead-lettered, since ebd started. */
uint64_t sch_invalid_accepted(void);
uint64_t sch_invalid_dead_lettered(void);

/* ---- discovery (ebd) ------------------------------------------------------------------------- */

/* Starts / stops the discovery threads of d's buses (a bus opened later is picked up). */
void sch_discovery_start(ebd *d);
void sch_discovery_stop(ebd *d);
/* How many (source, type) schemas discovery holds for bus. */
size_t sch_count(ebd *d, const char *bus);

#endif
