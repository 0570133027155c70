/*
 * envelope.c — the AWS event envelope's shape (docs/aws.md), for what meets events of both
 * formats: a bus target takes a CloudEvent or an AWS event, an http batch is a CloudEvents batch
 * only when it holds no AWS event, `ebc test` checks a line by its format.  Needs nothing of
 * the daemon (ebc links it).
 */
#include <stdio.h>
#include <string.h>

#include "aws.h"
#include "../ebd_int.h"

/* The envelope's members, and the first character each must start with ('"': a string, '['
 * an array, '{' an object). */
static const struct {
    const char *name;
    char first;
} members[] = { { "version", '"' }, { "id", '"' }, { "detail-type", '"' }, { "source", '"' },
                { "account", '"' }, { "time", '"' }, { "region", '"' }, { "resources", '[' },
                { "detail", '{' } };
enum { NMEMBERS = sizeof members / sizeof members[0], M_DETAIL_TYPE = 2, M_DETAIL = 8 };

typedef struct {
    const char *s;
    bool specversion, version0;
    char seen[NMEMBERS];          /* 0: absent; 1: of its kind; 2: of another */
} shape;

/* (Stops at "specversion": a CloudEvent, no envelope.  A delivery asks this of every event it
 * forwards to a bus or batches, and a CloudEvent's specversion tends to come first.) */
static bool shape_member(void *arg, const js_member *m)
{
    shape *h = arg;
    if (js_key_is(h->s, m, "specversion")) {
        h->specversion = true;
        return false;
    }
    for (size_t i = 0; i < NMEMBERS; i++)
        if (js_key_is(h->s, m, members[i].name))
            h->seen[i] = h->s[m->val_off] == members[i].first ? 1 : 2;
    if (js_key_is(h->s, m, "version"))
        h->version0 = m->val_len == 3 && !memcmp(h->s + m->val_off, "\"0\"", 3);
    return true;
}

static bool read_shape(const char *s, size_t n, shape *h)
{
    size_t i = vm_json_ws(s, n, 0);
    memset(h, 0, sizeof *h);
    h->s = s;
    if (i >= n || s[i] != '{')
        return false;
    js_each(s, n, i, shape_member, h);
    return true;
}

bool aws_is_envelope(const char *s, size_t n)
{
    shape h;
    return read_shape(s, n, &h) && !h.specversion && h.seen[M_DETAIL_TYPE] == 1 && h.version0 &&
           h.seen[M_DETAIL] == 1;
}

bool aws_looks_like_envelope(const char *s, size_t n)
{
    shape h;
    return read_shape(s, n, &h) && !h.specversion && h.seen[M_DETAIL_TYPE];
}

bool aws_envelope_check(const char *s, size_t n, char *why, size_t cap)
{
    shape h;
    if (!read_shape(s, n, &h)) {
        snprintf(why, cap, "an AWS event is a JSON object");
        return false;
    }
    for (size_t i = 0; i < NMEMBERS; i++)
        if (h.seen[i] != 1) {
            snprintf(why, cap, "an AWS event %s \"%s\"%s", h.seen[i] ? "has a wrong" : "has no",
                     members[i].name, members[i].first == '"' ? " (a string)"
                     : members[i].first == '[' ? " (an array)" : " (an object)");
            return false;
        }
    if (!h.version0) {
        snprintf(why, cap, "an AWS event has \"version\": \"0\"");
        return false;
    }
    return true;
}
