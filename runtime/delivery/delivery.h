/*
 * delivery.h — the door of delivery/: from the bus log to the targets (docs/ebd.md, "Delivery").
 * deliver.c holds routers that match the log's events, a fixed pool of delivery threads driving
 * the (rule, target) pairs as data, retries and dead letters, and the pairs' positions,
 * committed in one cursor set per bus; targets.c the targets (http, file, bus, exec; mqtt and
 * nats through runtime/sources/brokers.c); sync.c one delivery at once, for replays.
 */
#ifndef EBR_DELIVERY_H
#define EBR_DELIVERY_H

#include "../ebd_int.h"

enum { T_HTTP, T_FILE, T_BUS, T_EXEC, T_MQTT, T_NATS };

typedef struct {
    unsigned attempts;            /* 0: no retry (one attempt) */
    uint64_t first_ms, max_ms, max_age_ms;
} ebd_retry;

/* A target of a loaded ruleset, ready to deliver to (its options read, its file open, its
 * publisher connected). */
struct ebd_target {
    char *name;
    int kind;
    char *url, *method;           /* http */
    struct curl_slist *headers;
    long timeout_ms;              /* http, exec */
    char *sign_secret, *sign_header;
    bool remote;                  /* http: a remote target, a bus of another ebd (CloudEvents) */
    char *ca_file;                /* http: the CA certificates its TLS peer is checked against */
    void *pub;                    /* mqtt, nats: the publisher (runtime/sources/brokers.c) */
    char *topic;                  /* mqtt: the topic; nats: the subject */
    int qos;                      /* mqtt */
    bool retain;                  /* mqtt */
    unsigned concurrency;         /* http, exec: deliveries at once (0: no limit) */
    unsigned batch;               /* http: deliveries one request may carry (0, 1: one) */
    unsigned rate_limit;          /* http, exec: deliveries per second (0: no limit) */
    char *path;                   /* file: resolved under the data directory */
    int fd;
    store_fsync fsync;
    uint32_t bus;                 /* bus: the daemon's bus index */
    char **argv;                  /* exec: argv (NULL-terminated) */
    char **envp;                  /* exec: its environment (cmd_env) */
    ebd_retry retry;
    uint32_t dead_letter;         /* a target index, or VM_NONE */
    char *dead_letter_file;       /* or a file under the data directory */
    pthread_mutex_t mu;           /* file writes; rate limit */
    unsigned busy;                /* deliveries in progress (concurrency) */
    double tokens;                /* rate limit bucket */
    struct timespec refill;
};

/* runtime/sources/brokers.c: mqtt and nats targets (false with err; a send false with why,
 * to be retried) */
bool ebd_mqtt_target(ebd_target *x, const vm_program *p, const vm_target *t, char *err, size_t cap);
bool ebd_mqtt_send(ebd_target *t, const char *payload, size_t n, bool text, char *why, size_t cap);
void ebd_mqtt_close(ebd_target *t);
bool ebd_nats_target(ebd_target *x, const vm_program *p, const vm_target *t, char *err, size_t cap);
/* delivery: what names this delivery (a retry of it names it alike), or NULL */
bool ebd_nats_send(ebd_target *t, const char *payload, size_t n, bool text, const char *delivery,
                   char *why, size_t cap);
void ebd_nats_close(ebd_target *t);

/* The options of declarations (p->cfgs), as targets.c reads them; sources read theirs alike. */
const vm_cfg *ebd_cfg_option(const vm_program *p, uint32_t opt0, uint32_t nopt, const char *key);
const vm_cfg *ebd_cfg_child(const vm_program *p, const vm_cfg *c, uint32_t k);
/* A text value: a string, or env("NAME") read now (NULL with err set when it is unset). */
char *ebd_cfg_text(const vm_program *p, const vm_cfg *v, char *err, size_t cap);

/* A ruleset's delivery: prepared with the rules, started after the swap, stopped before the
 * next one. */
bool ebd_rules_prepare(ebd *d, ebd_rules *r, char *err, size_t errcap);
void ebd_workers_start(ebd *d, ebd_rules *r);
void ebd_workers_stop(ebd *d, ebd_rules *r);     /* finish the delivery in hand, commit, join */
void ebd_rules_free(ebd_rules *r);
void ebd_book_free(ebd_book *b);                  /* when its bus closes */
/* For the event center: fn for each pair of r that delivers, with its target and bus (r->p's
 * indexes), the events queued for it or in flight, and the lowest offset it has not finished.
 * Under d->reload_mu (its workers are neither starting nor stopping). */
void ebd_pairs_visit(ebd_rules *r, void (*fn)(void *arg, uint32_t target, uint32_t pbus,
                                              uint64_t queued, uint64_t low), void *arg);
/* One delivery made at once, for replays (runtime/center/replay.c): rule's payload for the event
 * (its transform run with ctx, a context of r->p), delivered to target with the target's limits,
 * retries (the age counted from the first attempt) and then its dead letter (which gets
 * "replay"); http requests carry `X-Ebr-Replay: REPLAY`.  stop(arg) is asked while it waits.
 * Returns how it ended, the last error in err unless delivered. */
enum { EBD_SYNC_DELIVERED, EBD_SYNC_DEAD_LETTERED, EBD_SYNC_DROPPED, EBD_SYNC_STOPPED };
int ebd_deliver_sync(ebd *d, ebd_rules *r, vm_ctx *ctx, uint32_t rule, uint32_t target,
                     const char *event, size_t len, int64_t time_ns, uint64_t off,
                     const char *replay, bool (*stop)(void *), void *arg, char *err, size_t cap);

#endif
