/*
 * nats.h — NATS as a source of events (core NATS and JetStream) and as a target (runtime/
 * sources/nats.c, whose opening comment says which CloudEvent a message becomes).  Not a door:
 * the daemon's source and target wiring sees it.
 */
#ifndef EBR_SOURCES_NATS_H
#define EBR_SOURCES_NATS_H

#include "sources_int.h"

typedef struct {
    const char *name;             /* the source's name (logs; the default durable "ebr-NAME") */
    const char *const *urls;      /* nats://host:port ... */
    size_t nurls;
    const char *subject;          /* core: the subject to subscribe (wildcards ok);
                                   * JetStream: an optional filter */
    const char *queue;            /* core: an optional queue group */
    const char *stream;           /* NULL: core NATS; else a JetStream stream to consume */
    const char *consumer;         /* JetStream: the durable's name (NULL: "ebr-" name) */
    const char *user, *password, *token, *creds;   /* NULL: none */
    long ack_wait_ms;             /* JetStream: 0: 30 s */
} natsrc_conf;

typedef struct natsrc natsrc;

/* Starts taking messages in a thread of its own and handing their events to sink.  Fails (NULL,
 * err says why) only on a configuration that can never work; a server that cannot be reached,
 * or a stream that is not there yet, is tried again in the background (logged meanwhile, and
 * natsrc_connected is false).  c's strings are copied. */
natsrc *natsrc_start(const natsrc_conf *c, src_sink sink, char *err, size_t cap);
/* Stops taking messages and frees s.  Returns once an append in progress has returned; the
 * JetStream messages then in hand are not acknowledged (the server gives them again after the
 * ack wait). */
void natsrc_stop(natsrc *s);
/* Connected to a server, and subscribed (JetStream: bound to the consumer)? */
bool natsrc_connected(const natsrc *s);

/* A message as the source sees it, for natsrc_event. */
typedef struct {
    const char *subject;
    const char *const *hnames, *const *hvalues;   /* headers (a name may repeat) */
    size_t nh;
    const void *data;
    size_t n;
    const char *source;           /* the source attribute of an event made for the message */
    const char *id;               /* its id (JetStream: "STREAM:SEQUENCE"; core: a unique one);
                                   * a JetStream message's Nats-Msg-Id header comes first */
    bool jetstream;
    int64_t time_ms;              /* JetStream's timestamp, or when it was received */
} natsrc_msg;

/* The CloudEvent (JSON format) for message m, appended to out: 1 made, 0 the message is a
 * CloudEvent in the binary mode that can never be one (why says what is wrong), -1 out of
 * memory. */
int natsrc_event(const natsrc_msg *m, sbuf *out, char *why, size_t cap);

typedef struct {
    const char *const *urls;
    size_t nurls;
    const char *user, *password, *token, *creds;
    bool jetstream;
} natspub_conf;

typedef struct natspub natspub;

/* A connection to publish on.  Fails only on a configuration that can never work; a server not
 * there yet is connected to in the background (and sends fail meanwhile). */
natspub *natspub_open(const natspub_conf *c, char *err, size_t cap);
/* Publishes data[0..n) to subject, with a Content-Type header when content_type is given and a
 * Nats-Msg-Id header when msg_id is (JetStream drops a message whose id it stored within the
 * stream's duplicate window).  Core NATS: delivered once the server answered a flush behind it
 * (it has routed the message); JetStream: once the stream acknowledged it.  Returns 0 delivered,
 * -1 not (why[0..cap) says why), within about timeout_ms (0: 5 s).  Safe from several threads. */
int natspub_send(natspub *p, const char *subject, const void *data, size_t n,
                 const char *content_type, const char *msg_id, long timeout_ms, char *why,
                 size_t cap);
void natspub_close(natspub *p);

#endif
