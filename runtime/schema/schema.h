/*
 * schema.h — JSON Schema in ebd and ebc (docs/schemas.md), the door of runtime/schema/:
 *
 *   validate.c  a draft 2020-12 validator on cJSON documents: sch_compile turns a schema into a
 *               read-only sch_schema that any number of threads may validate with at once;
 *   format.c    the `format` assertions (date-time, uri, email, uuid, ipv4, ipv6);
 *   infer.c     inference: events merged into a schema that describes all of them;
 *   enforce.c   a bus's `schema "TYPE" file "..." on_invalid ...` options, loaded by ebd and
 *               applied at ingest (compiler/schema_opt.c checks them for ebc);
 *   discover.c  ebd's discovery threads, one per bus (runtime/center/schemas.c serves them).
 *
 * validate.c, format.c and infer.c need only cJSON and PCRE2 and build as the library
 * ebr_schema, which ebc's checks link too; enforce.c and discover.c are the daemon's.
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
 * is not one: not an object or boolean, a keyword's value of the wrong kind, a bad regex, a
 * $ref that resolves nowhere. */
sch_schema *sch_compile(const cJSON *schema, unsigned flags, char *err, size_t cap);
/* The same from JSON text s[0..n). */
sch_schema *sch_compile_text(const char *s, size_t n, unsigned flags, char *err, size_t cap);
void sch_free(sch_schema *s);

/* path relative to the directory of rules_file (path itself when absolute): a new string. */
char *sch_resolve_path(const char *rules_file, const char *path);
/* The largest schema file sch_load_file reads. */
#define SCH_FILE_MAX (16 << 20)
/* Reads and compiles the schema file at path, a regular file of SCH_FILE_MAX bytes at most;
 * NULL with the reason in err ("cannot read it: ...", "not JSON (line L, column C)", "not a
 * schema: ..."). */
sch_schema *sch_load_file(const char *path, unsigned flags, char *err, size_t cap);

/* Parses JSON text s[0..n) as cJSON_ParseWithLengthOpts does (the first value; *end, may be
 * NULL, where it stopped), except that a string value holding U+0000 is kept whole: cJSON ends
 * a string at its first NUL ("192.168.0.1\u0000.evil.com" would read as a valid IPv4 address).
 * Such a string's valuestring holds all its bytes and its valueint their count (sch_strlen);
 * the validator reads it so.  (An object key holding U+0000 is still cut at it.) */
cJSON *sch_parse(const char *s, size_t n, const char **end);
/* The length in bytes of string value v, U+0000 included when sch_parse kept it. */
size_t sch_strlen(const cJSON *v);

/* Is instance valid under s?  On false fills *e (may be NULL).  Safe from several threads at
 * once on one s.  Parse the instance (and a schema) with sch_parse to see strings whole. */
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
/* About the memory g's properties take; its limit (4 MiB from sch_infer_new): past it, as past
 * 1000 properties at one place or for a name over 256 bytes, a property is not described. */
size_t sch_infer_bytes(const sch_infer *g);
void sch_infer_limit(sch_infer *g, size_t max);
/* How many instances g has seen. */
uint64_t sch_infer_count(const sch_infer *g);
/* The schema g describes now (a new cJSON tree the caller frees), or NULL when out of memory. */
cJSON *sch_infer_schema(const sch_infer *g);
/* g as a JSON tree that sch_infer_load reads back (its whole state, for persistence). */
cJSON *sch_infer_save(const sch_infer *g);
sch_infer *sch_infer_load(const cJSON *saved);

/* `ebc schema ...` (argv after "schema"): 0, 2 for a usage error, 3 for a bad input. */
int sch_cli(int argc, char **argv);
/* `ebc schema infer FILE`: reads one CloudEvent per line of path and prints
 * {"schemas":[{"source","type","events","schema"}]} to out.  0, or 1 with the error
 * (file:line: why) on err. */
int sch_infer_cli(const char *path, FILE *out, FILE *err);

/* ---- enforcement (ebd) ----------------------------------------------------------------------- */

typedef struct ebd ebd;
typedef struct vm_program vm_program;

/* What a bus does with an event its bound schema finds invalid. */
enum { SCH_ON_REJECT, SCH_ON_DEAD_LETTER, SCH_ON_ACCEPT };

/* A ruleset's bound schemas, per bus of its program; loaded with the rules, freed with them. */
typedef struct sch_set sch_set;
typedef struct sch_bus sch_bus;

/* Loads the `schema "TYPE" file "PATH" on_invalid MODE` options of p's buses (PATH relative to
 * the directory of the rules file that says it); dead-letter files go under data_dir as
 * BUS.invalid.jsonl.  NULL with the reason (naming the bus and file) in err. */
sch_set *sch_set_load(const vm_program *p, const char *data_dir, char *err, size_t cap);
void sch_set_free(sch_set *s);
/* The bindings of p's bus pbus, or NULL when it binds none. */
const sch_bus *sch_set_bus(const sch_set *s, uint32_t pbus);

/* What ingest does with ev[0..n) (a checked CloudEvent) on bus b (may be NULL); why gets
 * `schema "TYPE": /instance/path: keyword: message` when it is invalid. */
enum {
    SCH_STORE,                    /* no schema for its type, valid, or invalid and on_invalid accept */
    SCH_REFUSE,                   /* invalid, on_invalid reject: answer 400 with why */
    SCH_DIVERT,                   /* invalid, on_invalid dead_letter: sch_divert it, store nothing */
};
int sch_ingest(const sch_bus *b, const char *ev, size_t n, char *why, size_t cap);
/* Appends ev with why to b's dead-letter file (synced); false when it cannot (logged). */
bool sch_divert(const sch_bus *b, const char *ev, size_t n, const char *why);
#ifdef EBR_EBD_INT_H               /* (sbuf: for ebd's files, which include ebd_int.h first) */
/* A request's diverted events go as one: sch_divert_add appends ev's dead-letter line to batch
 * (false: out of memory); sch_divert_write writes the batch's `count` lines to b's file with one
 * write and one sync, or, when it cannot (logged), takes the file back to its size before and
 * answers false. */
bool sch_divert_add(const sch_bus *b, sbuf *batch, const char *ev, size_t n, const char *why);
bool sch_divert_write(const sch_bus *b, const sbuf *batch, size_t count);
#endif
/* The dead-letter file of b. */
const char *sch_divert_path(const sch_bus *b);

/* Invalid events since ebd started: stored anyway (accept), dead-lettered, refused; of bus, or
 * of all buses when bus is NULL (for the metrics). */
typedef struct {
    uint64_t accepted, dead_lettered, rejected;
} sch_counts;
sch_counts sch_invalid_counts(const char *bus);

/* ---- discovery (ebd) ------------------------------------------------------------------------- */

/* Starts a discovery thread for each open bus of d that has none (at start and after a
 * reload; under no lock).  A bus's thread keeps running across reloads that keep the bus. */
void sch_discovery_start(ebd *d);
/* Stops (and saves) the discovery of bus before its log closes. */
void sch_discovery_bus_closing(ebd *d, const char *bus);
/* Stops every discovery thread (before the logs close). */
void sch_discovery_stop(ebd *d);
/* How many (source, type) schemas discovery holds for bus (0 when it runs none). */
size_t sch_count(ebd *d, const char *bus);

#endif
