/*
 * config.c — what the rules file says about the runtime, read from a compiled program: a bus's
 * storage options.
 */
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
    }
}
