/*
 * runtime.h — the runtime's public door.  For now: running function transforms
 * (`transform function exec "..."` / `function http "..."`), which the VM describes but does not
 * run; `ebc test` and, later, `ebd` run them through here.
 */
#ifndef EBR_RUNTIME_H
#define EBR_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>

#include "../vm/vm.h"

/* Runs function transform x for the event json[0..len): for exec, `sh -c COMMAND` with the
 * event on its stdin, the payload read from its stdout; for http, a POST of the event
 * (application/cloudevents+json), the payload the response body.  Within x->timeout_ms.
 * On success *payload is malloc'd (the caller frees it) and *text says it is text (an http
 * response of type text/...), else it is JSON, checked.  A non-zero exit, a signal, a timeout,
 * output that is not JSON or an HTTP status other than 2xx fail, with a message in err that
 * carries the command's stderr (its first 200 bytes) or the response status. */
bool rt_run_function(const vm_program *p, const vm_xform *x, const char *json, size_t len,
                     char **payload, size_t *plen, bool *text, char *err, size_t errcap);

#endif
