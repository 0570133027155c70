/*
 * delivery_int.h — what the files of delivery/ share: the targets' side (targets.c), which the
 * engine (deliver.c) and the one-at-a-time deliveries of replays (sync.c) both drive.  Not a
 * door: the rest of the daemon sees delivery.h.
 */
#ifndef EBR_DELIVERY_INT_H
#define EBR_DELIVERY_INT_H

#include "../command.h"
#include "delivery.h"

#define CTYPE_TEXT "Content-Type: text/plain; charset=utf-8"
#define CTYPE_JSON "Content-Type: application/json"
#define CTYPE_CE_BATCH "Content-Type: application/cloudevents-batch+json"
#define CTYPE_CE "Content-Type: application/cloudevents+json"

/* How one attempt at one target went. */
typedef struct {
    long status;             /* HTTP status, exit status; 0 when there was none */
    bool retry;              /* worth another attempt */
    int64_t retry_after_ms;  /* the target asked to wait this long (0: it did not say) */
    char error[512];
} attempt;

typedef struct {
    int64_t retry_after_ms;
} http_seen;

/* ---- a ruleset's targets made ready (targets.c) ---------------------------------------- */

/* Target i of r made ready to deliver to: its options read, its file opened, its publisher
 * connected; false with err. */
bool dl_prepare_target(ebd *d, ebd_rules *r, uint32_t i, char *err, size_t cap);
/* A file target's (or dead-letter file's) path, under the data directory, opened for appending
 * (*full: the path as opened); -1 with why. */
int dl_open_output(const ebd *d, const char *path, char **full, char *why, size_t cap);

/* ---- one attempt at one target (targets.c) ------------------------------------------------ */

/* The Content-Type of a payload sent alone (event: it is the stored event itself). */
const char *dl_http_ctype(const char *payload, size_t n, bool text, bool event);
void dl_http_prepare(ebd_target *t, CURL *h, const char *payload, size_t n, const char *ctype,
                     struct curl_slist **headers, http_seen *seen);
void dl_http_finish(ebd_target *t, CURL *h, CURLcode rc, const http_seen *seen, attempt *a);
void dl_deliver_file(ebd_target *t, const char *payload, size_t n, bool text, attempt *a);
void dl_deliver_bus(ebd *d, ebd_target *t, const char *payload, size_t n, bool text,
                    attempt *a);
void dl_deliver_broker(ebd_target *t, const char *payload, size_t n, bool text,
                       const char *delivery, attempt *a);
void dl_exec_outcome(ebd_target *t, const cmd_spec *s, cmd_result *r, attempt *a);
/* Payloads a bus target, or a remote one, cannot take: false with a->error (not retried). */
bool dl_bus_payload_ok(const ebd_target *t, const char *payload, size_t n, bool text,
                       attempt *a);
bool dl_remote_payload_ok(const ebd_target *t, const char *payload, size_t n, bool text,
                          attempt *a);
/* A bus target's payload with its hop count one more than the event's. */
int dl_stamp_hops(const char *event, size_t len, char **payload, size_t *plen, char *err,
                  size_t cap);
/* A payload on one line, as file targets write it (out: 2n bytes for text). */
size_t dl_json_one_line(const char *s, size_t n, char *out);
size_t dl_text_one_line(const char *s, size_t n, char *out);
/* The target's limits (concurrency, rate): take a slot now, count the free ones, give one back. */
bool dl_try_slot(ebd_target *t);
unsigned dl_slots_free(ebd_target *t, unsigned want);
void dl_give_slot(ebd_target *t);
/* A dead letter's line (docs/ebd.md, "Dead letters"). */
void dl_dead_letter_record(sbuf *b, const char *event, size_t len, const char *rule,
                           size_t rlen, const char *target, const attempt *a,
                           unsigned attempts, int64_t first_ms, int64_t last_ms, uint64_t off,
                           const char *replay);

#endif
