/*
 * program.c — the tables generated from opcodes.def, the derived path trie, and freeing a
 * program.
 */
#include <stdlib.h>
#include <string.h>

#include "vm_int.h"

const char *const vm_op_names[VM_OP__COUNT] = {
#define OP(name, fmt, doc) #name,
#include "opcodes.def"
#undef OP
};

const char *const vm_op_formats[VM_OP__COUNT] = {
#define OP(name, fmt, doc) #fmt,
#include "opcodes.def"
#undef OP
};

const char *const vm_op_docs[VM_OP__COUNT] = {
#define OP(name, fmt, doc) doc,
#include "opcodes.def"
#undef OP
};

const char *const vm_test_names[VM_T__COUNT] = {
    "exists", "eq", "prefix", "suffix", "contains", "wildcard", "regex", "range", "cidr",
};

/* ---- the path trie ---------------------------------------------------------------------------- */

/* Orders edges by key length, then bytes: lookups compare the length first. */
static int edge_order(const void *pa, const void *pb)
{
    const vm_trie_edge *a = pa, *b = pb;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1;
    return memcmp(a->key, b->key, a->len);
}

uint32_t vm_trie_child(const struct vm_trie *t, uint32_t n, const char *k, size_t len)
{
    const vm_trie_edge *e = t->edges + t->nodes[n].edge0;
    uint32_t lo = 0, hi = t->nodes[n].nedge;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        int cmp = e[mid].len != len ? (e[mid].len < len ? -1 : 1) : memcmp(e[mid].key, k, len);
        if (cmp == 0)
            return e[mid].child;
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return VM_NONE;
}

void vm_trie_free(struct vm_trie *t)
{
    if (!t)
        return;
    free(t->nodes);
    free(t->edges);
    free(t);
}

/* Builds the trie: first as a tree with per-node edge lists in insertion order (an edge list
 * entry per (parent, key)), then each node's edges sorted and laid out contiguously. */
static struct vm_trie *build_trie(const vm_program *p)
{
    struct vm_trie *t = calloc(1, sizeof *t);
    uint32_t cap = 1;
    for (uint32_t i = 0; i < p->npaths; i++)
        cap += p->paths[i].nseg;
    typedef struct { uint32_t parent; vm_trie_edge e; } raw_edge;
    raw_edge *raw = malloc(cap * sizeof *raw);
    t->nodes = malloc(cap * sizeof *t->nodes);
    t->edges = malloc(cap * sizeof *t->edges);
    if (!t || !raw || !t->nodes || !t->edges)
        goto nomem;
    t->nnodes = 1;
    t->nodes[0].path = VM_NONE;
    uint32_t nraw = 0;
    for (uint32_t i = 0; i < p->npaths; i++) {
        uint32_t node = 0;
        for (uint32_t s = 0; s < p->paths[i].nseg; s++) {
            vm_str seg = p->segs[p->paths[i].seg0 + s];
            const char *key = vm_s(p, seg);
            uint32_t child = VM_NONE;
            for (uint32_t r = 0; r < nraw && child == VM_NONE; r++)
                if (raw[r].parent == node && raw[r].e.len == seg.len &&
                    memcmp(raw[r].e.key, key, seg.len) == 0)
                    child = raw[r].e.child;
            if (child == VM_NONE) {
                child = t->nnodes++;
                t->nodes[child].path = VM_NONE;
                raw[nraw].parent = node;
                raw[nraw].e = (vm_trie_edge){ key, seg.len, child };
                nraw++;
            }
            node = child;
        }
        t->nodes[node].path = i;
    }
    /* Lay the edges out per parent, sorted. */
    uint32_t at = 0;
    for (uint32_t n = 0; n < t->nnodes; n++) {
        t->nodes[n].edge0 = at;
        for (uint32_t r = 0; r < nraw; r++)
            if (raw[r].parent == n)
                t->edges[at++] = raw[r].e;
        t->nodes[n].nedge = at - t->nodes[n].edge0;
        qsort(t->edges + t->nodes[n].edge0, t->nodes[n].nedge, sizeof *t->edges, edge_order);
    }
    t->nedges = at;
    free(raw);
    return t;
nomem:
    free(raw);
    vm_trie_free(t);
    return NULL;
}

vm_status vm_program_prepare(vm_program *p)
{
    vm_trie_free(p->trie);
    p->trie = build_trie(p);
    return p->trie ? VM_OK : VM_ERR_NOMEM;
}

void vm_program_free(vm_program *p)
{
    if (!p)
        return;
    free(p->strs);
    free(p->srcs);
    free(p->segs);
    free(p->paths);
    free(p->consts);
    free(p->tests);
    free(p->regexes);
    free(p->re_insts);
    free(p->re_ranges);
    free(p->code);
    free(p->code_spans);
    free(p->rules);
    free(p->rule_targets);
    free(p->buses);
    free(p->targets);
    free(p->cfgs);
    vm_trie_free(p->trie);
    free(p);
}
