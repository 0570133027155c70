/*
 * mqtt.h — MQTT sources (a broker's messages become CloudEvents on a bus) and MQTT targets
 * (events published to a broker), through libmosquitto.  Not a door: the daemon sees sources.h.
 *
 * Broker addresses are URLs: mqtt://[user[:password]@]host[:port] (port 1883 by default).
 * mqtts:// is refused: TLS is not done here.  Each source and each target owns one connection
 * and one thread that runs it, reconnecting by itself with a growing pause (0.1 s to 5 s).
 */
#ifndef EBR_SOURCES_MQTT_H
#define EBR_SOURCES_MQTT_H

#include "sources_int.h"

typedef struct {
    const char *name;             /* the source's name (logs; default client id "ebr-NAME") */
    const char *url;
    const char *const *topics;    /* subscription filters (+ and # allowed) */
    size_t ntopics;
    int qos;                      /* 0 or 1 */
    const char *client_id;        /* NULL: "ebr-" name */
    const char *user, *password;  /* NULL: those of the URL, or none */
    long keepalive_s;             /* 0: 30 */
    long hold_ms;                 /* how long a QoS 1 message the sink cannot store now
                                   * (SRC_RETRY) is offered again before the connection is
                                   * dropped so the broker gives it again later; 0: 2000 */
    const char *state_path;       /* where the packet-identifier generation is kept across
                                   * restarts (mqtt.c's top comment); NULL: in memory only */
} mqtt_source_conf;

typedef struct mqtt_source mqtt_source;

/* Starts a source: its thread connects (MQTT 5, or 3.1.1 when the broker refuses 5) with a
 * persistent session under its client id, subscribes to the topics, and hands each message to
 * sink as a CloudEvent (mqtt.c says how it is made).  Returns NULL with err[0..cap) saying why
 * when c is not usable; a broker that cannot be reached now is not an error (it is logged and
 * tried again). */
mqtt_source *mqtt_source_start(const mqtt_source_conf *c, src_sink sink, char *err, size_t cap);
/* Disconnects, stops the thread and frees s (NULL: nothing).  Returns within about a second,
 * unless a TCP connect to an unreachable host is under way. */
void mqtt_source_stop(mqtt_source *s);
/* Is the source connected (CONNACK accepted) with its subscriptions granted now?  A subscription
 * the broker refused makes it false until a later SUBACK grants them all. */
bool mqtt_source_connected(const mqtt_source *s);
/* How many times the source dropped its connection to keep a QoS 1 message unacknowledged. */
unsigned long mqtt_source_withheld(const mqtt_source *s);

/* The generation of QoS 1 packet identifiers (the sequence arithmetic of mqtt.c's top comment).
 * Exposed for the unit tests; the daemon sees only mqtt_source_*. */
typedef struct {
    uint64_t gen;                 /* the generation last_mid belongs to */
    int last_mid;                 /* the newest identifier seen (1..65535); 0: none yet */
    unsigned unsaved;             /* identifiers taken since the state was last saved */
    bool save;                    /* a wrap, or MQTT_MID_SAVE_EVERY identifiers: save now */
} mqtt_midstate;

#define MQTT_MID_SAVE_EVERY 1024

/* A fresh state: a generation from the wall clock in milliseconds, so that ids made after a
 * state was lost do not meet those made before it (see mqtt.c). */
void mqtt_mid_init(mqtt_midstate *st);
/* The generation of the QoS 1 message with packet identifier mid (1..65535), advancing st. */
uint64_t mqtt_mid_gen(mqtt_midstate *st, int mid);
/* The broker has no session for the client (CONNACK without session present): its identifiers
 * start again and no earlier message can be given again, so a new generation begins. */
void mqtt_mid_reset(mqtt_midstate *st);
/* Writes st to path (a temporary file, fsync, rename) and clears st->save and st->unsaved.
 * Returns false with err[0..cap) saying why. */
bool mqtt_mid_save(mqtt_midstate *st, const char *path, char *err, size_t cap);
/* Reads path into st.  Returns 1 when read, 0 when there is no such file (st untouched), -1
 * with err[0..cap) saying why when it cannot be read or is malformed (st untouched). */
int mqtt_mid_load(mqtt_midstate *st, const char *path, char *err, size_t cap);

typedef struct {
    const char *url, *client_id, *user, *password;   /* client_id NULL: one the broker picks */
} mqtt_target_conf;

typedef struct mqtt_pub mqtt_pub;

/* Opens a publisher; its thread connects at once and stays connected.  Returns NULL with
 * err[0..cap) saying why when c is not usable (not when the broker is down). */
mqtt_pub *mqtt_pub_open(const mqtt_target_conf *c, char *err, size_t cap);
/* Publishes data[0..n) to topic (content_type, if not NULL, as the MQTT 5 Content Type) and
 * waits at most timeout_ms for the broker's PUBACK (qos 1) or for the bytes to be written
 * (qos 0).  Returns 0 when delivered; -1 with why[0..cap) when not (the caller retries later:
 * a message whose PUBACK came too late may then reach the broker twice).  Safe from several
 * threads at once. */
int mqtt_pub_send(mqtt_pub *p, const char *topic, const void *data, size_t n,
                  const char *content_type, int qos, bool retain, long timeout_ms, char *why,
                  size_t cap);
/* Disconnects and frees p (NULL: nothing). */
void mqtt_pub_close(mqtt_pub *p);

#endif
