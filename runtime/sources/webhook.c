/*
 * webhook.c — webhook sources: POSTs to a path of the daemon's own listener, checked the way
 * their sender signs them (verify.c), each stored as one CloudEvent (docs/sources.md).
 *
 * The sender is answered 202 once the event is stored (or was, within the bus's dedup window:
 * a sender's retry of a delivery that went through is stored once), 401 when the signature is
 * wrong, 400 when the request can never make an event, 413 when it is too large, and 503 when
 * the bus cannot store now: every provider retries a 5xx, so nothing it sent is lost.
 */
#include <sys/socket.h>
#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sources_int.h"
#include "verify.h"

typedef struct {
    char *path;
    bool none;                    /* verify none: anyone may post */
    wh_verify v;
    char *secret, *header, *prefix, *algorithm;
    char *type, *id_header;       /* options (NULL: the provider's, or the defaults) */
} webhook;

const char *webhook_path(const src *s)
{
    return ((const webhook *)s->impl)->path;
}

static void webhook_free(src *s)
{
    webhook *w = s->impl;
    if (!w)
        return;
    free(w->path);
    free(w->secret);
    free(w->header);
    free(w->prefix);
    free(w->algorithm);
    free(w->type);
    free(w->id_header);
    free(w);
    s->impl = NULL;
}

/* The named argument `key` of a call's value, or NULL. */
static const vm_cfg *call_arg(const vm_program *p, const vm_cfg *call, const char *key)
{
    for (uint32_t i = 0; i < call->nchild; i++) {
        const vm_cfg *a = &p->cfgs[call->child0 + i];
        if (a->type == VM_CFG_OPTION && a->key.len == strlen(key) && !memcmp(vm_s(p, a->key), key, a->key.len))
            return ebd_cfg_child(p, a, 0);
    }
    return NULL;
}

static bool read_verify(webhook *w, const vm_program *p, const vm_cfg *v, char *err, size_t cap)
{
    if (v->type == VM_CFG_IDENT) {                 /* verify none */
        w->none = true;
        return true;
    }
    const char *fn = vm_s(p, v->str);
    w->v.scheme = !strncmp(fn, "github", v->str.len) ? WH_GITHUB
                : !strncmp(fn, "stripe", v->str.len) ? WH_STRIPE : WH_HMAC;
    char why[300] = "";
    const vm_cfg *a;
    if ((a = call_arg(p, v, "secret")) && !(w->secret = ebd_cfg_text(p, a, why, sizeof why))) {
        snprintf(err, cap, "verify: secret: %s", why[0] ? why : "out of memory");
        return false;
    }
    if ((a = call_arg(p, v, "tolerance")))
        w->v.tolerance_s = (int64_t)(a->num / 1000);
    if ((a = call_arg(p, v, "header")))
        w->header = ebd_cfg_text(p, a, why, sizeof why);
    if ((a = call_arg(p, v, "prefix")))
        w->prefix = ebd_cfg_text(p, a, why, sizeof why);
    if ((a = call_arg(p, v, "algorithm")))
        w->algorithm = strndup(vm_s(p, a->str), a->str.len);
    if ((a = call_arg(p, v, "encoding")))
        w->v.base64 = a->str.len == 6 && !memcmp(vm_s(p, a->str), "base64", 6);
    if (why[0]) {
        snprintf(err, cap, "verify: %s", why);
        return false;
    }
    w->v.secret = w->secret;
    w->v.header = w->header;
    w->v.prefix = w->prefix;
    w->v.algorithm = w->algorithm;
    if (w->secret && strlen(w->secret) < 8) {
        snprintf(err, cap, "verify: the secret is %zu bytes: a webhook secret needs at least 8",
                 strlen(w->secret));
        return false;
    }
    return wh_valid(&w->v, err, cap);
}

bool webhook_prepare(src *s, const vm_program *p, const vm_input *in, char *err, size_t cap)
{
    webhook *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, cap, "out of memory");
        return false;
    }
    s->impl = w;
    s->stop = webhook_free;
    char why[300] = "";
    w->path = ebd_cfg_text(p, &p->cfgs[in->value], why, sizeof why);
    const vm_cfg *v = src_opt(p, in, "verify");
    if (!w->path || !v || !ebd_cfg_child(p, v, 0)) {
        snprintf(err, cap, "%s", why[0] ? why : "out of memory");
        return false;
    }
    if (!read_verify(w, p, ebd_cfg_child(p, v, 0), err, cap))
        return false;
    w->type = src_opt_text(p, in, "type", why, sizeof why);
    w->id_header = src_opt_text(p, in, "id_header", why, sizeof why);
    if (why[0]) {
        snprintf(err, cap, "%s", why);
        return false;
    }
    return true;
}

static const char *header_of(void *arg, const char *name)
{
    return MHD_lookup_connection_value(arg, MHD_HEADER_KIND, name);
}

int webhook_serve(src *s, struct MHD_Connection *c, const char *body, size_t n, bool too_big)
{
    webhook *w = s->impl;
    char why[400];
    if (too_big) {
        atomic_fetch_add(&s->refused, 1);
        return ebd_send_error(c, 413, "the request is larger than the daemon takes", NULL);
    }
    if (!w->none) {
        int st = wh_check(&w->v, header_of, c, body, n, (int64_t)time(NULL), why, sizeof why);
        if (st) {
            atomic_fetch_add(&s->refused, 1);
            char esc[600];
            ebd_log(EBD_WARN, "msg=\"webhook refused\" source=%s status=%d error=\"%s\"", s->name,
                    st, ebd_log_text(why, esc, sizeof esc));
            return ebd_send_error(c, (unsigned)st, why, NULL);
        }
    }
    wh_attrs a;
    wh_verify plain = { .scheme = WH_HMAC };
    wh_describe(w->none ? &plain : &w->v, header_of, c, body, n, w->id_header, &a);
    if (!w->type && !a.type[0] && !w->none && w->v.scheme != WH_HMAC) {
        atomic_fetch_add(&s->refused, 1);
        return ebd_send_error(c, 400, w->v.scheme == WH_GITHUB
                              ? "no event type: the X-GitHub-Event header is missing or not a name"
                              : "no event type: the body has no \"type\"", NULL);
    }
    char id[33];
    if (!a.id[0]) {      /* no id from the sender: the body's hash (a retry of it is one event) */
        const void *parts[2] = { w->path, body };
        size_t lens[2] = { strlen(w->path), n };
        src_hash_id(id, parts, lens, 2);
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    src_ce e = {
        .id = a.id[0] ? a.id : id,
        .source = a.source[0] ? a.source : w->path,
        .type = w->type ? w->type : a.type[0] ? a.type : "ebr.webhook",
        .subject = a.subject[0] ? a.subject : NULL,
        .time_ms = a.time_ms ? a.time_ms : (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000,
        .content_type = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type"),
        .data = body,
        .n = n,
    };
    sbuf ev = { 0 };
    if (!src_event_json(&ev, &e)) {
        sb_free(&ev);
        return ebd_send_error(c, 503, "out of memory", NULL);
    }
    src_result r = src_append_locked(s, ev.v, ev.n, why, sizeof why);   /* (under d->lock) */
    sb_free(&ev);
    if (r == SRC_REFUSED)
        return ebd_send_error(c, 400, why, NULL);
    if (r == SRC_RETRY)
        return ebd_send_error(c, 503, why, NULL);
    sbuf out = { 0 };
    sb_puts(&out, "{\"status\":\"stored\",\"id\":");
    sb_json_string(&out, e.id, strlen(e.id));
    sb_puts(&out, "}");
    int ok = ebd_send_json(c, 202, &out);
    sb_free(&out);
    return ok;
}
