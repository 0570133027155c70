/*
 * center.h — the event center's door (docs/center.md): what ebd serves to operators beside
 * ingest — the admin API, metrics, traces, event query, replays, schemas and the console.
 * Each part keeps a file of its own in runtime/center/ and its endpoints in the table of
 * http.c; ingest.c hands every request it does not serve itself to center_handle.
 */
#ifndef EBR_CENTER_H
#define EBR_CENTER_H

#include <sys/socket.h>
#include <microhttpd.h>

#include "../ebd_int.h"

/* One request to an endpoint of the center, as its handler sees it. */
typedef struct {
    struct MHD_Connection *c;
    ebd *d;
    const char *method, *url;
    const char *body;             /* the request's body (POST, PUT): body[0..n) */
    size_t n;
    /* The path's segments where the endpoint's pattern has '*' (decoded), in order. */
    const char *arg[4];
    size_t narg;
} center_req;

/* Serves url with method when it is one of the center's endpoints: true with the answer queued
 * in *out; false when it is not one (ingest then answers 404).  Called without d->lock. */
bool center_handle(struct MHD_Connection *c, ebd *d, const char *url, const char *method,
                   const char *body, size_t n, enum MHD_Result *out);

/* A query parameter of the request (?name=value, decoded), or NULL. */
const char *center_query(const center_req *r, const char *name);

/* trace.c: an event's trace (docs/trace.md). */
enum MHD_Result trace_serve_id(const center_req *r);
enum MHD_Result trace_serve_offset(const center_req *r);

#endif
