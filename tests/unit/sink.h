/*
 * sink.h — a sink that keeps what a source gives it (test_natsrc.c, test_mqtt.c): the events
 * as they came, how many appends there were, and on the test's word an append refused
 * (SRC_RETRY) or held until the test lets it go; waiting for a number of events, finding one by
 * its subject or id, reading its string members.
 */
#ifndef EBR_TEST_SINK_H
#define EBR_TEST_SINK_H

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "../../runtime/sources/sources_int.h"

enum { TSINK_MAX = 128 };            /* events kept; more are counted as appends only */

typedef struct tsink {
    pthread_mutex_t mu;               /* guards all but retries and arg */
    pthread_cond_t cv;                /* broadcast on each append, and when unblocked */
    char *ev[TSINK_MAX];              /* the events stored, in order */
    size_t n;
    size_t calls;                     /* appends, whatever became of them */
    char *refused_id;                 /* the id of the first event refused, or NULL */
    bool block, blocked;              /* block: appends wait until it is cleared; blocked: one
                                       * does */
    /* Asked under mu before an event is stored: true refuses it (NULL: none refused). */
    bool (*refuse)(struct tsink *t);
    atomic_int retries;               /* for refuse: a number the test sets */
    _Atomic(void *) arg;              /* for refuse: what else it reads */
} tsink;

void tsink_init(tsink *t);

/* Forgets the events stored and the refused id. */
void tsink_clear(tsink *t);

/* tsink_clear, and frees what tsink_init made. */
void tsink_end(tsink *t);

/* t as a source's sink. */
src_sink tsink_sink(tsink *t);

/* A refuse that refuses the next t->retries appends, counting it down. */
bool tsink_refuse_next(tsink *t);

/* How many events t holds. */
size_t tsink_count(tsink *t);

/* Waits up to ms for t to hold n events; returns whether it does. */
bool tsink_wait(tsink *t, size_t n, int ms);

/* Waits up to ms for an append to wait on t->block; returns whether one does. */
bool tsink_wait_blocked(tsink *t, int ms);

/* Sets t->block; cleared, the appends waiting go on. */
void tsink_block(tsink *t, bool block);

/* Event i as JSON (the caller deletes it); fails the test if it is not there or not JSON. */
cJSON *tsink_at(tsink *t, size_t i);

/* The first event whose subject (or, for events made elsewhere, id) is key, as JSON (the caller
 * deletes it); fails the test if there is none. */
cJSON *tsink_find(tsink *t, const char *key);

/* The string member name of j ("" if there is none). */
const char *tsink_str(const cJSON *j, const char *name);

#endif
