/*
 * brokers.c — the daemon's side of the MQTT and NATS sources and targets: their options read
 * from the rules into the modules' configurations (mqtt.c, nats.c), and a target's publish.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mqtt.h"
#include "nats.h"
#include "sources_int.h"

/* ---- MQTT sources --------------------------------------------------------------------------- */

typedef struct {
    mqtt_source_conf conf;
    char *url, *client_id, *user, *password;
    char *state_path;                 /* DATA_DIR/sources/NAME.mqtt: packet id generations */
    char **topics;
    mqtt_source *run;
} mqtt_src;

static void mqtt_src_start(src *s)
{
    mqtt_src *m = s->impl;
    char err[300];
    char *slash = strrchr(m->state_path, '/');
    *slash = 0;
    mkdir(m->state_path, 0755);        /* (an error shows when the state is saved) */
    *slash = '/';
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
    free(m->state_path);
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
    size_t n = strlen(s->d->data_dir) + strlen(s->name) + 32;
    if ((m->state_path = malloc(n)))
        snprintf(m->state_path, n, "%s/sources/%s.mqtt", s->d->data_dir, s->name);
    const vm_cfg *q = src_opt(p, in, "qos");
    m->conf = (mqtt_source_conf){ .name = s->name, .url = m->url,
                                  .topics = (const char *const *)m->topics,
                                  .ntopics = m->conf.ntopics,
                                  .qos = q && ebd_cfg_child(p, q, 0) ? (int)ebd_cfg_child(p, q, 0)->num : 1,
                                  .client_id = m->client_id, .user = m->user,
                                  .password = m->password, .state_path = m->state_path };
    if (why[0] || !m->url || !m->state_path) {
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
    /* a client id of its own per ruleset: a reload's new connection must not take the old
     * one's over while the old rules finish their deliveries */
    static _Atomic unsigned generation;
    char id[VM_MAX_NAME + 40];
    snprintf(id, sizeof id, "ebr-%s-%ld-%u", x->name, (long)getpid(), ++generation);
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
    return ce_check(payload, n, why, sizeof why, &id, &idlen, NULL) ? "application/cloudevents+json"
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

/* A value that is one URL or a list of them, read into a NULL-ended array. */
static char **read_urls(const vm_program *p, const vm_cfg *v, size_t *n, char *err, size_t cap)
{
    uint32_t k = v->type == VM_CFG_LIST ? v->nchild : 1;
    char **u = calloc(k + 1, sizeof *u);
    if (!u) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    for (uint32_t i = 0; i < k; i++)
        u[i] = ebd_cfg_text(p, v->type == VM_CFG_LIST ? ebd_cfg_child(p, v, i) : v, err, cap);
    *n = k;
    return u;
}

static void free_strs(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* The login options every NATS declaration may take, read into login[4]: user, password,
 * token, creds. */
static void read_login(const vm_program *p, uint32_t opt0, uint32_t nopt, char **login, char *err,
                       size_t cap)
{
    static const char *const keys[4] = { "user", "password", "token", "creds" };
    for (int i = 0; i < 4; i++) {
        const vm_cfg *o = ebd_cfg_option(p, opt0, nopt, keys[i]);
        login[i] = o ? ebd_cfg_text(p, ebd_cfg_child(p, o, 0), err, cap) : NULL;
    }
}

typedef struct {
    natsrc_conf conf;
    char **urls, *login[4], *subject, *queue, *stream, *consumer;
    natsrc *run;
} nats_src;

static void nats_src_start(src *s)
{
    nats_src *m = s->impl;
    char err[300];
    if (!(m->run = natsrc_start(&m->conf, s->sink, err, sizeof err)))
        ebd_log(EBD_ERROR, "msg=\"nats source not started\" source=%s error=\"%s\"", s->name, err);
}

static void nats_src_stop(src *s)
{
    nats_src *m = s->impl;
    if (!m)
        return;
    if (m->run)
        natsrc_stop(m->run);
    free_strs(m->urls);
    for (int i = 0; i < 4; i++)
        free(m->login[i]);
    free(m->subject);
    free(m->queue);
    free(m->stream);
    free(m->consumer);
    free(m);
    s->impl = NULL;
}

static bool nats_src_up(const src *s)
{
    const nats_src *m = s->impl;
    return m->run && natsrc_connected(m->run);
}

bool nats_prepare(src *s, const vm_program *p, const vm_input *in, char *err, size_t cap)
{
    nats_src *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, cap, "out of memory");
        return false;
    }
    s->impl = m;
    s->start = nats_src_start;
    s->stop = nats_src_stop;
    s->up = nats_src_up;
    char why[300] = "";
    size_t nurls = 0;
    m->urls = read_urls(p, &p->cfgs[in->value], &nurls, why, sizeof why);
    read_login(p, in->opt0, in->nopt, m->login, why, sizeof why);
    m->subject = src_opt_text(p, in, "subject", why, sizeof why);
    m->queue = src_opt_text(p, in, "queue", why, sizeof why);
    m->stream = src_opt_text(p, in, "stream", why, sizeof why);
    m->consumer = src_opt_text(p, in, "consumer", why, sizeof why);
    const vm_cfg *aw = src_opt(p, in, "ack_wait");
    m->conf = (natsrc_conf){ .name = s->name, .urls = (const char *const *)m->urls, .nurls = nurls,
                             .subject = m->subject, .queue = m->queue, .stream = m->stream,
                             .consumer = m->consumer, .user = m->login[0],
                             .password = m->login[1], .token = m->login[2], .creds = m->login[3],
                             .ack_wait_ms = aw && ebd_cfg_child(p, aw, 0) ? (long)ebd_cfg_child(p, aw, 0)->num : 0 };
    if (why[0] || !m->urls) {
        snprintf(err, cap, "%s", why[0] ? why : "out of memory");
        return false;
    }
    return true;
}

bool ebd_nats_target(ebd_target *x, const vm_program *p, const vm_target *t, char *err, size_t cap)
{
    size_t nurls = 0;
    char **urls = read_urls(p, &p->cfgs[t->value], &nurls, err, cap), *login[4];
    read_login(p, t->opt0, t->nopt, login, err, cap);
    const vm_cfg *o;
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "subject")))
        x->topic = ebd_cfg_text(p, ebd_cfg_child(p, o, 0), err, cap);
    bool js = (o = ebd_cfg_option(p, t->opt0, t->nopt, "jetstream")) && ebd_cfg_child(p, o, 0) &&
              ebd_cfg_child(p, o, 0)->num != 0;
    bool ok = urls && x->topic && !err[0];
    if (ok) {
        natspub_conf c = { (const char *const *)urls, nurls, login[0], login[1], login[2], login[3], js };
        ok = (x->pub = natspub_open(&c, err, cap)) != NULL;
    }
    free_strs(urls);
    for (int i = 0; i < 4; i++)
        free(login[i]);
    return ok;
}

bool ebd_nats_send(ebd_target *t, const char *payload, size_t n, bool text, const char *delivery,
                   char *why, size_t cap)
{
    /* The Nats-Msg-Id names the delivery, not the payload (two deliveries may carry the same
     * bytes, or the same source and id): a retry of it is dropped by the stream's window. */
    char msg_id[33], *mid = NULL;
    if (delivery) {
        const void *parts[1] = { delivery };
        size_t lens[1] = { strlen(delivery) };
        src_hash_id(msg_id, parts, lens, 1);
        mid = msg_id;
    }
    return natspub_send(t->pub, t->topic, payload, n, payload_type(payload, n, text), mid,
                        t->timeout_ms, why, cap) == 0;
}

void ebd_nats_close(ebd_target *t)
{
    natspub_close(t->pub);
    t->pub = NULL;
}
