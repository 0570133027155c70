/*
 * brokers.c — the daemon's side of the MQTT and NATS sources and targets: their options read
 * from the rules into the modules' configurations (mqtt.c, nats.c), and a target's publish.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mqtt.h"
#include "sources_int.h"

/* ---- MQTT sources --------------------------------------------------------------------------- */

typedef struct {
    mqtt_source_conf conf;
    char *url, *client_id, *user, *password;
    char **topics;
    mqtt_source *run;
} mqtt_src;

static void mqtt_src_start(src *s)
{
    mqtt_src *m = s->impl;
    char err[300];
    if (!(m->run = mqtt_source_start(&m->conf, s->sink, err, sizeof err)))
        ebd_log(EBD_ERROR, "msg=\"mqtt source not started\" source=%s error=\"%s\"", s->name, err);
}

static void mqtt_src_stop(src *s)
{
    mqtt_src *m = s->impl;
    if (!m)
        return;
    mqtt_source_stop(m->run);
    for (size_t i = 0; i < m->conf.ntopics; i++)
        free(m->topics[i]);
    free(m->topics);
    free(m->url);
    free(m->client_id);
    free(m->user);
    free(m->password);
    free(m);
    s->impl = NULL;
}

static bool mqtt_src_up(const src *s)
{
    const mqtt_src *m = s->impl;
    return m->run && mqtt_source_connected(m->run);
}

bool mqtt_prepare(src *s, const vm_program *p, const vm_input *in, char *err, size_t cap)
{
    mqtt_src *m = calloc(1, sizeof *m);
    if (!m || !(m->topics = calloc(in->nopt + 1, sizeof *m->topics))) {
        free(m);
        snprintf(err, cap, "out of memory");
        return false;
    }
    s->impl = m;
    s->start = mqtt_src_start;
    s->stop = mqtt_src_stop;
    s->up = mqtt_src_up;
    char why[300] = "";
    m->url = ebd_cfg_text(p, &p->cfgs[in->value], why, sizeof why);
    m->client_id = src_opt_text(p, in, "client_id", why, sizeof why);
    m->user = src_opt_text(p, in, "user", why, sizeof why);
    m->password = src_opt_text(p, in, "password", why, sizeof why);
    for (uint32_t i = 0; i < in->nopt; i++) {
        const vm_cfg *o = &p->cfgs[in->opt0 + i];
        if (o->type == VM_CFG_OPTION && o->key.len == 5 && !memcmp(vm_s(p, o->key), "topic", 5))
            m->topics[m->conf.ntopics++] = ebd_cfg_text(p, ebd_cfg_child(p, o, 0), why, sizeof why);
    }
    const vm_cfg *q = src_opt(p, in, "qos");
    m->conf = (mqtt_source_conf){ .name = s->name, .url = m->url,
                                  .topics = (const char *const *)m->topics,
                                  .ntopics = m->conf.ntopics,
                                  .qos = q && ebd_cfg_child(p, q, 0) ? (int)ebd_cfg_child(p, q, 0)->num : 1,
                                  .client_id = m->client_id, .user = m->user,
                                  .password = m->password };
    if (why[0] || !m->url) {
        snprintf(err, cap, "%s", why[0] ? why : "out of memory");
        return false;
    }
    return true;
}

/* ---- MQTT targets ----------------------------------------------------------------------------- */

bool ebd_mqtt_target(ebd_target *x, const vm_program *p, const vm_target *t, char *err, size_t cap)
{
    char *url = ebd_cfg_text(p, &p->cfgs[t->value], err, cap);
    const vm_cfg *o;
    char *cid = NULL, *user = NULL, *password = NULL;
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "client_id")))
        cid = ebd_cfg_text(p, ebd_cfg_child(p, o, 0), err, cap);
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "user")))
        user = ebd_cfg_text(p, ebd_cfg_child(p, o, 0), err, cap);
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "password")))
        password = ebd_cfg_text(p, ebd_cfg_child(p, o, 0), err, cap);
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "topic")))
        x->topic = ebd_cfg_text(p, ebd_cfg_child(p, o, 0), err, cap);
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "qos")) && ebd_cfg_child(p, o, 0))
        x->qos = (int)ebd_cfg_child(p, o, 0)->num;
    else
        x->qos = 1;
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "retain")) && ebd_cfg_child(p, o, 0))
        x->retain = ebd_cfg_child(p, o, 0)->num != 0;
    char id[VM_MAX_NAME + 16];
    snprintf(id, sizeof id, "ebr-%s-%ld", x->name, (long)getpid());
    bool ok = url && x->topic && !err[0];
    if (ok) {
        mqtt_target_conf c = { url, cid ? cid : id, user, password };
        ok = (x->pub = mqtt_pub_open(&c, err, cap)) != NULL;
    }
    free(url);
    free(cid);
    free(user);
    free(password);
    return ok;
}

/* The media type of a payload: a CloudEvent goes in the binding's structured mode. */
static const char *payload_type(const char *payload, size_t n, bool text)
{
    const char *id;
    size_t idlen;
    char why[8];
    if (text)
        return "text/plain; charset=utf-8";
    return ce_check(payload, n, why, sizeof why, &id, &idlen) ? "application/cloudevents+json"
                                                               : "application/json";
}

bool ebd_mqtt_send(ebd_target *t, const char *payload, size_t n, bool text, char *why, size_t cap)
{
    return mqtt_pub_send(t->pub, t->topic, payload, n, payload_type(payload, n, text), t->qos,
                         t->retain, t->timeout_ms, why, cap) == 0;
}

void ebd_mqtt_close(ebd_target *t)
{
    mqtt_pub_close(t->pub);
    t->pub = NULL;
}

/* ---- NATS (nats.c) ---------------------------------------------------------------------------- */

bool nats_prepare(src *s, const vm_program *p, const vm_input *in, char *err, size_t cap)
{
    (void)s; (void)p; (void)in;
    snprintf(err, cap, "nats sources: not yet");
    return false;
}

bool ebd_nats_target(ebd_target *x, const vm_program *p, const vm_target *t, char *err, size_t cap)
{
    (void)x; (void)p; (void)t;
    snprintf(err, cap, "nats targets: not yet");
    return false;
}

bool ebd_nats_send(ebd_target *t, const char *payload, size_t n, bool text, char *why, size_t cap)
{
    (void)t; (void)payload; (void)n; (void)text;
    snprintf(why, cap, "not yet");
    return false;
}

void ebd_nats_close(ebd_target *t)
{
    (void)t;
}
