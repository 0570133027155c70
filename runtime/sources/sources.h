/*
 * sources.h — the door of runtime/sources/: what the daemon takes events from besides its HTTP
 * API (docs/sources.md).  A ruleset's `source` declarations are read into a src_set when the
 * rules are made (src_prepare: every option and secret checked, nothing started), started with
 * them (src_start) and stopped before they are replaced or the daemon stops (src_stop).  Each
 * source stores what it takes in on its bus through the same checks as ingest (sources_int.h).
 *
 *   mqtt      MQTT subscriptions (libmosquitto): QoS 1 acknowledged after the append
 *   nats      core NATS subjects (at most once) and JetStream streams (acked after the append)
 *   webhook   POSTs to a path of the daemon's listener, signed the sender's way
 *   schedule  rate(...) and cron(...) firings, recorded so that a restart neither loses nor
 *             doubles one
 */
#ifndef EBR_SOURCES_H
#define EBR_SOURCES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ebd ebd;
typedef struct src_set src_set;
struct MHD_Connection;

/* Reads the sources of program p (NULL when it declares none, or on error: err says which
 * source and why, err[0] == 0 otherwise). */
src_set *src_prepare(ebd *d, const struct vm_program *p, char *err, size_t cap);
void src_start(src_set *s);
void src_stop(src_set *s);          /* stops (waiting for what is in hand) and frees; NULL ok */

/* Whether url is the path of one of s's webhook sources. */
bool src_webhook_path(const src_set *s, const char *url);
/* Answers the request to a webhook source's path (a POST; body[0..n), too_big when it went
 * over the daemon's request limit).  Called with d->lock held for reading.  Returns the
 * MHD_Result of queuing the answer. */
int src_webhook(src_set *s, struct MHD_Connection *c, const char *url, const char *method,
                const char *body, size_t n, bool too_big);

/* For /metrics: fn for each source with its kind, bus, whether it is up (connected; always for
 * webhooks and schedules) and its events by outcome. */
typedef struct {
    uint64_t stored, duplicate, refused, retried;
} src_counts;
void src_visit(const src_set *s, void (*fn)(void *arg, const char *name, const char *kind,
                                            const char *bus, bool up, const src_counts *n),
               void *arg);

#endif
