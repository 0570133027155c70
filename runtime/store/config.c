/*
 * config.c — what the rules file says about the runtime, read from a compiled program: a bus's
 * storage options, and where its log lives (`log local`, `log nats ...`).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

static bool key_is(const vm_program *p, const vm_cfg *c, const char *name)
{
    return c->key.len == strlen(name) && memcmp(vm_s(p, c->key), name, c->key.len) == 0;
}

static bool str_is(const vm_program *p, const vm_cfg *c, const char *word)
{
    return c->str.len == strlen(word) && memcmp(vm_s(p, c->str), word, c->str.len) == 0;
}

void rt_bus_store_options(const vm_program *p, uint32_t bus, store_options *o)
{
    memset(o, 0, sizeof *o);
    const vm_bus *b = &p->buses[bus];
    for (uint32_t i = 0; i < b->nopt; i++) {
        const vm_cfg *c = &p->cfgs[b->opt0 + i];
        if (c->type != VM_CFG_OPTION || c->nchild == 0)
            continue;
        const vm_cfg *v = &p->cfgs[c->child0];
        if (key_is(p, c, "fsync")) {
            if (str_is(p, v, "never"))
                o->fsync = STORE_FSYNC_NEVER;
            else if (str_is(p, v, "interval") && c->nchild == 2) {
                o->fsync = STORE_FSYNC_INTERVAL;
                o->fsync_interval_ns = (uint64_t)(p->cfgs[c->child0 + 1].num * 1e6);
            } else
                o->fsync = STORE_FSYNC_ALWAYS;
        } else if (key_is(p, c, "segment_size"))
            o->segment_bytes = (uint64_t)v->num;
        else if (key_is(p, c, "retention"))
            o->retention_ns = (uint64_t)(v->num * 1e6);
        else if (key_is(p, c, "retention_size"))
            o->retention_bytes = (uint64_t)v->num;
        else if (key_is(p, c, "dedup"))
            o->dedup_ns = (uint64_t)(v->num * 1e6);
    }
}

char *rt_cfg_text(const vm_program *p, const vm_cfg *v, char *err, size_t cap)
{
    if (!v)
        return NULL;
    if (v->type == VM_CFG_ENV) {
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)v->str.len, vm_s(p, v->str));
        const char *e = getenv(name);
        if (!e) {
            snprintf(err, cap, "the environment variable %s is not set", name);
            return NULL;
        }
        return strdup(e);
    }
    return strndup(vm_s(p, v->str), v->str.len);
}

void rt_bus_nats_free(store_nats_options *no)
{
    for (size_t i = 0; i < no->nurls; i++)
        free((char *)no->urls[i]);
    free((void *)no->urls);
    free((char *)no->stream);
    free((char *)no->user);
    free((char *)no->password);
    free((char *)no->token);
    free((char *)no->creds);
    memset(no, 0, sizeof *no);
}

/* A stream's name for a bus without `stream`: EBR_ and its name in capitals. */
static char *default_stream(const char *bus, size_t n)
{
    char *s = malloc(n + 5);
    if (!s)
        return NULL;
    memcpy(s, "EBR_", 4);
    for (size_t i = 0; i < n; i++) {
        char ch = bus[i];
        s[4 + i] = ch >= 'a' && ch <= 'z' ? (char)(ch - 32)
                 : (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ? ch : '_';
    }
    s[n + 4] = 0;
    return s;
}

int rt_bus_nats_options(const vm_program *p, uint32_t bus, store_nats_options *no, char *err,
                        size_t cap)
{
    memset(no, 0, sizeof *no);
    err[0] = 0;
    const vm_bus *b = &p->buses[bus];
    const vm_cfg *log = NULL;
    for (uint32_t i = 0; i < b->nopt; i++) {
        const vm_cfg *c = &p->cfgs[b->opt0 + i];
        if (c->type == VM_CFG_OPTION && key_is(p, c, "log"))
            log = c;
    }
    if (!log || log->nchild == 0 || !str_is(p, &p->cfgs[log->child0], "nats"))
        return 0;
    const char **urls = calloc(log->nchild, sizeof *urls);
    no->urls = urls;
    if (!urls) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    uint32_t k = 1;
    for (; k < log->nchild; k++) {       /* the URLs: strings and env() before the first word */
        const vm_cfg *v = &p->cfgs[log->child0 + k];
        if (v->type != VM_CFG_STR && v->type != VM_CFG_ENV)
            break;
        char *u = rt_cfg_text(p, v, err, cap);
        if (!u)
            goto fail;
        urls[no->nurls++] = u;
        if (strncmp(u, "nats://", 7) != 0 && strncmp(u, "tls://", 6) != 0) {
            snprintf(err, cap, "the NATS server URL '%.200s' (from the environment) must start "
                     "with nats:// or tls://", u);
            goto fail;
        }
    }
    for (; k + 1 < log->nchild; k += 2) {
        const vm_cfg *w = &p->cfgs[log->child0 + k], *v = &p->cfgs[log->child0 + k + 1];
        const char **slot = str_is(p, w, "stream") ? &no->stream
                          : str_is(p, w, "user") ? &no->user
                          : str_is(p, w, "password") ? &no->password
                          : str_is(p, w, "token") ? &no->token
                          : str_is(p, w, "creds") ? &no->creds : NULL;
        if (str_is(p, w, "replicas"))
            no->replicas = (unsigned)v->num;
        else if (str_is(p, w, "ack_wait"))
            no->ack_wait_ns = (int64_t)(v->num * 1e6);
        else if (str_is(p, w, "in_hand"))
            no->max_held = (size_t)v->num;
        else if (slot && !(*slot = rt_cfg_text(p, v, err, cap)))
            goto fail;
    }
    if (!no->stream) {
        vm_str name = b->name;
        if (!(no->stream = default_stream(vm_s(p, name), name.len))) {
            snprintf(err, cap, "out of memory");
            goto fail;
        }
    }
    return 1;
fail:
    rt_bus_nats_free(no);
    return -1;
}
