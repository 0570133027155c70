/*
 * ingest.h — the door of ingest/: how events come into a bus over HTTP.  ingest.c serves the
 * daemon's endpoints (CloudEvents in every mode of the HTTP binding, put-events, the AWS
 * clients' PutEvents through runtime/aws, and the event center's through runtime/center) and
 * answers an event only once it is stored; dedup.c is a bus's de-duplication window, through
 * which everything that stores events goes (ebd_bus_store).
 */
#ifndef EBR_INGEST_H
#define EBR_INGEST_H

#include "../ebd_int.h"

/* Stores the events e[0..n) on bus b (store_append), through its dedup window: an event the
 * bus stored within it is not stored again, and gets the first one's offset with dup[i] set
 * (dup may be NULL when the caller does not care).  Offsets as store_append's. */
store_status ebd_bus_store(ebd_bus *b, const store_entry *e, size_t n, uint64_t *offsets,
                           bool *dup);

/* ---- a bus's de-duplication window (dedup.c) ---------------------------------------------- */

typedef struct { uint64_t a, b; } dedup_key;
enum { DEDUP_NEW, DEDUP_SEEN, DEDUP_PENDING, DEDUP_FULL };

/* The key of the event ev[0..n) (a JSON object with "source" and "id"); false if it has none. */
bool dedup_key_of(const char *ev, size_t n, dedup_key *k);
ebd_dedup *dedup_new(uint64_t window_ms);
void dedup_free(ebd_dedup *d);
void dedup_set_window(ebd_dedup *d, uint64_t window_ms);     /* 0: off (keys kept) */
/* The clock d reads, in Unix milliseconds (default: the wall clock): tests move time by hand. */
void dedup_set_clock(ebd_dedup *d, int64_t (*now)(void *arg), void *arg);
uint64_t dedup_window(const ebd_dedup *d);                   /* 0 for NULL */
/* DEDUP_SEEN with *offset when the bus stored k within the window; DEDUP_NEW when it did not:
 * k is then pending, and the caller must dedup_settle it; DEDUP_PENDING when another caller
 * is storing it (dedup_wait(d, *gen) waits for a settlement); DEDUP_FULL: no memory. */
int dedup_claim(ebd_dedup *d, dedup_key k, uint64_t *offset, uint64_t *gen);
void dedup_wait(ebd_dedup *d, uint64_t gen);
void dedup_settle(ebd_dedup *d, dedup_key k, bool stored, uint64_t offset);
void dedup_note(ebd_dedup *d, dedup_key k, uint64_t offset, int64_t ms);
size_t dedup_size(ebd_dedup *d);
/* Fills d from the records s stored within the window and from wall time from_ms on (0: the
 * whole window); how many, or -1 on a read error. */
long dedup_fill(ebd_dedup *d, store *s, int64_t from_ms);

/* ---- the HTTP side (ingest.c) ------------------------------------------------------------ */

struct MHD_Daemon;
/* A listening socket on host:port (IPv4), or -1 with the cause in err (a port in use says so). */
int ebd_http_listen(const char *host, uint16_t port, char *err, size_t cap);
/* Serves the daemon's endpoints on listening socket fd (HTTPS when d->tls_cert), which it owns
 * from then on; NULL with the cause in err (the caller still owns fd then). */
struct MHD_Daemon *ebd_http_start(ebd *d, int fd, const char *host, uint16_t port, char *err,
                                  size_t cap);
void ebd_http_stop(ebd *d, struct MHD_Daemon *h);
/* The connections the listener takes beyond max_connections to answer them 503 rather than
 * leave them unaccepted: they need descriptors too. */
unsigned ebd_http_reserve(unsigned max_connections);

/* Answers for the event center (runtime/center/), as ingest's own: a JSON body with the status;
 * {"error": msg, "field": field} (field may be NULL). */
struct MHD_Connection;
int ebd_send_json(struct MHD_Connection *c, unsigned status, const sbuf *b);
int ebd_send_error(struct MHD_Connection *c, unsigned status, const char *msg, const char *field);
/* May this request use an operator's endpoint?  0 if so; 401 without a token, 403 with a wrong
 * one.  With no admin_token set, 403 unless the listener is on loopback, Host names loopback,
 * an Origin header (if any) is http(s)://HOST and, for a write (POST), the request is not one a
 * web page can send cross-site (Content-Type: application/json or X-Ebr-Request).  *why (may
 * be NULL) gets the reason. */
unsigned ebd_authorize_admin(ebd *d, struct MHD_Connection *c, bool write, const char **why);

#endif
