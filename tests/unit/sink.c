/*
 * sink.c — a sink that keeps what a source gives it (sink.h).
 */
#define _GNU_SOURCE
#include "sink.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void tsink_init(tsink *t)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
}

void tsink_clear(tsink *t)
{
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->n; i++)
        free(t->ev[i]);
    t->n = 0;
    free(t->refused_id);
    t->refused_id = NULL;
    pthread_mutex_unlock(&t->mu);
}

void tsink_end(tsink *t)
{
    tsink_clear(t);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
}

const char *tsink_str(const cJSON *j, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, name);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static char *id_of(const char *ev, size_t n)
{
    cJSON *j = cJSON_ParseWithLength(ev, n);
    char *s = strdup(tsink_str(j, "id"));
    cJSON_Delete(j);
    return s;
}

static src_result append(void *arg, const char *ev, size_t n, char *why, size_t cap)
{
    tsink *t = arg;
    pthread_mutex_lock(&t->mu);
    t->calls++;
    while (t->block) {
        t->blocked = true;
        pthread_cond_broadcast(&t->cv);
        pthread_cond_wait(&t->cv, &t->mu);
    }
    src_result r = SRC_STORED;
    if (t->refuse && t->refuse(t)) {
        if (!t->refused_id)
            t->refused_id = id_of(ev, n);
        snprintf(why, cap, "the test's bus is not storing now");
        r = SRC_RETRY;
    } else if (t->n < TSINK_MAX) {
        t->ev[t->n++] = strndup(ev, n);
    }
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return r;
}

src_sink tsink_sink(tsink *t)
{
    return (src_sink){ append, t };
}

bool tsink_refuse_next(tsink *t)
{
    if (atomic_load(&t->retries) <= 0)
        return false;
    atomic_fetch_sub(&t->retries, 1);
    return true;
}

size_t tsink_count(tsink *t)
{
    pthread_mutex_lock(&t->mu);
    size_t n = t->n;
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* Waits up to ms for t to hold n events, or with n == 0 for an append to block. */
static bool wait_until(tsink *t, size_t n, int ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&t->mu);
    bool ok;
    while (!(ok = n ? t->n >= n : t->blocked) &&
           pthread_cond_timedwait(&t->cv, &t->mu, &until) == 0)
        ;
    ok = n ? t->n >= n : t->blocked;      /* (what came with the timeout counts too) */
    pthread_mutex_unlock(&t->mu);
    return ok;
}

bool tsink_wait(tsink *t, size_t n, int ms)
{
    return n == 0 || wait_until(t, n, ms);
}

bool tsink_wait_blocked(tsink *t, int ms)
{
    return wait_until(t, 0, ms);
}

void tsink_block(tsink *t, bool block)
{
    pthread_mutex_lock(&t->mu);
    t->block = block;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

cJSON *tsink_at(tsink *t, size_t i)
{
    pthread_mutex_lock(&t->mu);
    cJSON *j = i < t->n ? cJSON_Parse(t->ev[i]) : NULL;
    pthread_mutex_unlock(&t->mu);
    cr_assert_not_null(j, "no event %zu (of JSON) in the sink", i);
    return j;
}

cJSON *tsink_find(tsink *t, const char *key)
{
    cJSON *found = NULL;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->n && !found; i++) {
        cJSON *j = cJSON_Parse(t->ev[i]);
        if (!strcmp(tsink_str(j, "subject"), key) || !strcmp(tsink_str(j, "id"), key))
            found = j;
        else
            cJSON_Delete(j);
    }
    pthread_mutex_unlock(&t->mu);
    cr_assert_not_null(found, "no event for %s", key);
    return found;
}
