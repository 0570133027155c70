/*
 * runtime.h — the runtime's public door: running function transforms (`transform function exec
 * "..."` / `function http "..."`), which the VM describes but does not run, the daemon's check of
 * a CloudEvent; and, through store/store.h, the storage of buses (the local bus log and NATS
 * JetStream behind one interface, docs/storage.md).
 */
#ifndef EBR_RUNTIME_H
#define EBR_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../vm/vm.h"
#include "store/store.h"
#include "sources/sources.h"

/* Runs function transform x for the event json[0..len): for exec, `sh -c COMMAND` with the
 * event on its stdin, the payload read from its stdout; for http, a POST of the event
 * (application/cloudevents+json), the payload the response body.  Within x->timeout_ms.
 * On success *payload is malloc'd (the caller frees it) and *text says it is text (an http
 * response of type text/...), else it is JSON, checked.  A non-zero exit, a signal, a timeout,
 * output that is not JSON or an HTTP status other than 2xx fail, with a message in err that
 * carries the command's stderr (its first 200 bytes) or the response status. */
bool rt_run_function(const vm_program *p, const vm_xform *x, const char *json, size_t len,
                     char **payload, size_t *plen, bool *text, char *err, size_t errcap);
/* The same, asking stop(arg) every 50 ms at most (NULL: never) while the command or request
 * runs: when it says so the function is given up, *stopped set and false returned. */
bool rt_run_function_until(const vm_program *p, const vm_xform *x, const char *json, size_t len,
                           char **payload, size_t *plen, bool *text, bool (*stop)(void *),
                           void *arg, bool *stopped, char *err, size_t errcap);

/* Would ebd take s[0..n) as one event in the CloudEvents JSON format: valid JSON, an object with
 * id, source, specversion "1.0" and type as non-empty strings, optional attributes of the right
 * type, extension names of a-z and 0-9, not both data and data_base64?  The daemon's own check
 * (ce_check), for tools that must give its verdict offline.  If not, writes the reason (naming the
 * attribute) to why and returns false. */
bool rt_cloudevent_check(const char *s, size_t n, char *why, size_t whycap);

/* ms since the epoch as an RFC 3339 UTC time with milliseconds ("2026-12-05T16:00:00.123Z"),
 * into out (cap bytes; 25 suffice). */
void rt_time_text(int64_t ms, char *out, size_t cap);

#endif
