/*
 * sources_int.h — what the sources of runtime/sources/ share: how a source hands an event to its
 * bus (src_sink) and how it builds the CloudEvent it hands (src_event_json).  Not a door: the
 * daemon sees sources.h.
 *
 * A source turns what it takes in (an MQTT message, a NATS message, a webhook request, a
 * schedule's firing) into one CloudEvent in the JSON format and gives it to its sink.  The sink
 * stores it on the source's bus as ingest would (the CloudEvents checks, the bus's schemas, its
 * de-duplication window, traces and metrics) and says what became of it; a source acknowledges
 * what it took in (to a broker, to a webhook's sender) only once the sink said SRC_STORED.
 */
#ifndef EBR_SOURCES_INT_H
#define EBR_SOURCES_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../ebd_int.h"
#include "sources.h"

typedef enum {
    SRC_STORED,     /* stored (or a duplicate of an event the bus stored within its window) */
    SRC_REFUSED,    /* never storable (not a CloudEvent, over the size limit, refused by a
                     * schema): acknowledge it, so that a broker does not redeliver it forever;
                     * the sink has logged and counted it */
    SRC_RETRY,      /* the bus cannot store now (storage failing, the daemon stopping): do not
                     * acknowledge; take it again later */
} src_result;

typedef struct {
    /* Stores the event ev[0..n) (JSON text); on anything but SRC_STORED, why[0..cap) says why.
     * Safe to call from any thread, several at once. */
    src_result (*append)(void *arg, const char *ev, size_t n, char *why, size_t cap);
    void *arg;
} src_sink;

/* The attributes of a CloudEvent a source makes.  id, source and type are required (non-empty);
 * the rest may be NULL / 0. */
typedef struct {
    const char *id, *source, *type;
    const char *subject;
    int64_t time_ms;              /* Unix milliseconds, written as RFC 3339 UTC; 0: no time */
    const char *content_type;     /* the payload's media type, as the sender said it (or NULL) */
    const void *data;             /* the payload (NULL with n 0: no data) */
    size_t n;
    /* extension attributes, as name/value text pairs (names of a-z and 0-9) */
    const char *const *ext_names, *const *ext_values;
    size_t next;
} src_ce;

/* Writes e as one CloudEvent in the JSON format to out (appending).  The payload goes as `data`
 * when it is valid JSON (and the content type, if given, is a JSON one), then with
 * datacontenttype application/json unless another was given; as a JSON string when the content
 * type is text/... and the bytes are UTF-8; otherwise as `data_base64`.  Returns false when out
 * ran out of memory. */
bool src_event_json(sbuf *out, const src_ce *e);

/* Is p[0..n) a JSON object with a "specversion" member: a CloudEvent in the JSON format with
 * nothing to say so but itself (MQTT 3.1.1, NATS before headers)? */
bool src_json_event(const void *p, size_t n);

/* s made fit to stand in a URI-reference's path (a CloudEvent's source): each ASCII byte RFC
 * 3986 does not allow there, and '%', '#', '[' and ']' (a fragment, an IP literal), as %XX;
 * characters beyond ASCII kept whole (an IRI, as ce_check takes).  Writes out[cap], cut before
 * a character (or escape) that does not fit. */
void src_uri_escape(char *out, size_t cap, const char *s);

/* Appends the RFC 3339 UTC form of Unix milliseconds ms ("2026-12-06T07:15:37.123Z"). */
void src_time_text(sbuf *out, int64_t ms);

/* A stable id for bytes: the first 16 bytes of their SHA-256 as 32 hexadecimal digits, over
 * the parts given (each preceded by its length, so that ("ab","c") and ("a","bc") differ). */
void src_hash_id(char out[33], const void *const *parts, const size_t *lens, size_t nparts);

/* ---- one source of a ruleset (sources.c) ------------------------------------------------------ */

typedef struct src src;
struct src {
    char *name, *kind, *bus;
    ebd *d;
    src_sink sink;                /* sink_append, arg: this */
    _Atomic uint64_t stored, duplicate, refused, retried;
    /* the kind's part: its state, started and stopped by these (stop frees it) */
    void *impl;
    void (*start)(src *s);
    void (*stop)(src *s);
    bool (*up)(const src *s);     /* NULL: always up */
};

/* What s->sink.append does, for a caller that holds d->lock for reading already (a webhook,
 * served under it). */
src_result src_append_locked(src *s, const char *ev, size_t n, char *why, size_t cap);

/* A source option's text (a string, or env() read now): NULL when absent, or with err set when
 * it cannot be read. */
char *src_opt_text(const struct vm_program *p, const vm_input *in, const char *key, char *err,
                   size_t cap);
const vm_cfg *src_opt(const struct vm_program *p, const vm_input *in, const char *key);

/* The kinds: each reads its options into s->impl and sets s's hooks; false with err. */
bool webhook_prepare(src *s, const struct vm_program *p, const vm_input *in, char *err, size_t cap);
bool schedule_prepare(src *s, const struct vm_program *p, const vm_input *in, char *err, size_t cap);
bool mqtt_prepare(src *s, const struct vm_program *p, const vm_input *in, char *err, size_t cap);
bool nats_prepare(src *s, const struct vm_program *p, const vm_input *in, char *err, size_t cap);

/* webhook.c: the path s listens on, and the answer to a request there */
const char *webhook_path(const src *s);
int webhook_serve(src *s, struct MHD_Connection *c, const char *body, size_t n, bool too_big);

/* Whether the bus of s holds, from wall time since_ms on, an event with the key of ev[0..n)
 * (the schedule's check after a crash between its append and its record): 1 yes, 0 no, -1 the
 * log could not be read. */
int src_bus_has(src *s, int64_t since_ms, const char *ev, size_t n);

#endif
