/*
 * program.c — the tables generated from opcodes.def, the derived path trie, and freeing a
 * program.
 */
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
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

/* Orders edges by key length, then head (vm_key_head), then the bytes past the head: the order
 * in which lookups compare them. */
static int edge_order(const void *pa, const void *pb)
{
    const vm_trie_edge *a = pa, *b = pb;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1;
    if (a->head != b->head)
        return a->head < b->head ? -1 : 1;
    return a->len <= 8 ? 0 : memcmp(a->key + 8, b->key + 8, a->len - 8);
}

uint32_t vm_trie_child_many(const struct vm_trie *t, uint32_t n, const char *k, size_t len)
{
    const vm_trie_edge *e = t->edges + t->nodes[n].edge0;
    uint32_t lo = 0, hi = t->nodes[n].nedge;
    uint64_t head = vm_key_head(k, len);
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        int cmp = e[mid].len != len     ? (e[mid].len < len ? -1 : 1)
                  : e[mid].head != head ? (e[mid].head < head ? -1 : 1)
                  : len <= 8            ? 0
                                        : memcmp(e[mid].key + 8, k + 8, len - 8);
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

/* A hash of (parent node, key) to child node, used while the trie is built. */
typedef struct {
    uint32_t *slots;   /* edge index + 1, 0 = empty */
    size_t mask;
} edge_table;

static size_t edge_hash(uint32_t parent, const char *k, size_t n)
{
    uint64_t h = 1469598103934665603ull ^ parent;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 1099511628211ull;
    return (size_t)(h ^ (h >> 29));
}

/* Builds the trie: nodes are made by walking every path (a hash table finds existing edges),
 * then each node's edges are sorted and laid out contiguously.  Returns NULL when memory runs
 * out or the paths are too many (a program may reuse segments in many paths). */
static struct vm_trie *build_trie(const vm_program *p)
{
    size_t cap = 1;
    for (uint32_t i = 0; i < p->npaths; i++)
        cap += p->paths[i].nseg;
    if (cap > ((size_t)1 << 28))
        return NULL;
    struct vm_trie *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    edge_table h = { NULL, 0 };
    size_t slots = 16;
    while (slots < cap * 2)
        slots *= 2;
    h.slots = calloc(slots, sizeof *h.slots);
    h.mask = slots - 1;
    t->nodes = malloc(cap * sizeof *t->nodes);
    t->edges = malloc(cap * sizeof *t->edges);
    uint32_t *parent = malloc(cap * sizeof *parent);   /* per edge: the node it leaves */
    vm_trie_edge *raw = malloc(cap * sizeof *raw);
    if (!h.slots || !t->nodes || !t->edges || !parent || !raw)
        goto nomem;
    t->nnodes = 1;
    t->nodes[0] = (vm_trie_node){ VM_NONE, 0, 0, 0 };
    uint32_t nraw = 0;
    for (uint32_t i = 0; i < p->npaths; i++) {
        uint32_t node = 0;
        for (uint32_t s = 0; s < p->paths[i].nseg; s++) {
            vm_str seg = p->segs[p->paths[i].seg0 + s];
            const char *key = vm_s(p, seg);
            size_t at = edge_hash(node, key, seg.len) & h.mask;
            uint32_t child = VM_NONE;
            for (; h.slots[at]; at = (at + 1) & h.mask) {
                const vm_trie_edge *e = &raw[h.slots[at] - 1];
                if (parent[h.slots[at] - 1] == node && e->len == seg.len &&
                    memcmp(e->key, key, seg.len) == 0) {
                    child = e->child;
                    break;
                }
            }
            if (child == VM_NONE) {
                child = t->nnodes++;
                t->nodes[child] = (vm_trie_node){ VM_NONE, 0, 0, t->nodes[node].depth + 1 };
                parent[nraw] = node;
                raw[nraw] = (vm_trie_edge){ key, seg.len, child, vm_key_head(key, seg.len) };
                h.slots[at] = ++nraw;
            }
            node = child;
        }
        t->nodes[node].path = i;
    }
    /* Lay the edges out per parent (a counting sort), each node's edges sorted by key. */
    for (uint32_t n = 0; n < t->nnodes; n++)
        t->nodes[n].nedge = 0;
    for (uint32_t r = 0; r < nraw; r++)
        t->nodes[parent[r]].nedge++;
    uint32_t at = 0;
    for (uint32_t n = 0; n < t->nnodes; n++) {
        t->nodes[n].edge0 = at;
        at += t->nodes[n].nedge;
        t->nodes[n].nedge = 0;
    }
    for (uint32_t r = 0; r < nraw; r++) {
        vm_trie_node *pn = &t->nodes[parent[r]];
        t->edges[pn->edge0 + pn->nedge++] = raw[r];
    }
    for (uint32_t n = 0; n < t->nnodes; n++)
        qsort(t->edges + t->nodes[n].edge0, t->nodes[n].nedge, sizeof *t->edges, edge_order);
    t->nedges = nraw;
    free(raw);
    free(parent);
    free(h.slots);
    return t;
nomem:
    free(raw);
    free(parent);
    free(h.slots);
    vm_trie_free(t);
    return NULL;
}

/* The number of leading segments paths a and b share. */
static uint32_t common_prefix(const vm_program *p, uint32_t a, uint32_t b)
{
    const vm_path *pa = &p->paths[a], *pb = &p->paths[b];
    uint32_t n = 0;
    while (n < pa->nseg && n < pb->nseg) {
        vm_str x = p->segs[pa->seg0 + n], y = p->segs[pb->seg0 + n];
        if (x.len != y.len || memcmp(vm_s(p, x), vm_s(p, y), x.len) != 0)
            break;
        n++;
    }
    return n;
}

/* Works out, for every rule, where its last negation ends, and for every TEST how deep the
 * arrays it may bind are still looked at by a later TEST of the rule (see match.c). */
static bool analyse_code(vm_program *p, struct vm_derived *d)
{
    d->keep_depth = calloc(p->ncode ? p->ncode : 1, sizeof *d->keep_depth);
    d->last_not = calloc(p->nrules ? p->nrules : 1, sizeof *d->last_not);
    if (!d->keep_depth || !d->last_not)
        return false;
    for (uint32_t r = 0; r < p->nrules; r++) {
        const vm_rule *rule = &p->rules[r];
        const vm_inst *code = p->code + rule->code0;
        for (uint32_t pc = 0; pc < rule->ncode; pc++) {
            if (VM_OP(code[pc]) == VM_OP_NOT)
                d->last_not[r] = pc + 1;
            if (VM_OP(code[pc]) != VM_OP_TEST)
                continue;
            uint32_t keep = 0;
            for (uint32_t later = pc + 1; later < rule->ncode; later++)
                if (VM_OP(code[later]) == VM_OP_TEST) {
                    uint32_t n = common_prefix(p, VM_A(code[pc]), VM_A(code[later]));
                    if (n > keep)
                        keep = n;
                }
            d->keep_depth[rule->code0 + pc] = (uint16_t)(keep > 0xffff ? 0xffff : keep);
        }
    }
    return true;
}

/* Maps each (bus, path) to the path's entry in the bus's index. */
static bool map_index_paths(const vm_program *p, struct vm_derived *d)
{
    size_t n = (size_t)p->nix_buses * p->npaths;
    d->ix_path_of = malloc((n ? n : 1) * sizeof *d->ix_path_of);
    if (!d->ix_path_of)
        return false;
    for (size_t i = 0; i < n; i++)
        d->ix_path_of[i] = VM_NONE;
    for (uint32_t b = 0; b < p->nix_buses; b++)
        for (uint32_t i = 0; i < p->ix_buses[b].npath; i++) {
            uint32_t ip = p->ix_buses[b].path0 + i;
            d->ix_path_of[(size_t)b * p->npaths + p->ix_paths[ip].path] = ip;
        }
    return true;
}

/* Places every key of the index's hash table again, by vm_probe_hash, each slot tagged (see
 * struct vm_derived): a table of the file's size, so as full. */
static bool tag_index_slots(const vm_program *p, struct vm_derived *d)
{
    uint32_t mask = p->nix_slots - 1;
    d->ix_tagged = calloc(p->nix_slots ? p->nix_slots : 1, sizeof *d->ix_tagged);
    if (!d->ix_tagged)
        return false;
    for (uint32_t i = 0; i < p->nix_slots; i++) {
        if (!p->ix_slots[i])
            continue;
        const vm_ix_key *k = &p->ix_keys[p->ix_slots[i] - 1];
        uint64_t hash = vm_probe_hash(vm_key_seed(k->kind, k->aux, k->ipath), p->strs + k->key.off,
                                      k->key.len);
        uint64_t h = hash & mask;
        while (d->ix_tagged[h])
            h = (h + 1) & mask;
        d->ix_tagged[h] = (hash >> 32) << 32 | p->ix_slots[i];
    }
    return true;
}

/* The affix filters of struct vm_derived (vm_affix_slot). */
static bool affix_filters(const vm_program *p, struct vm_derived *d)
{
    d->affix_bits = calloc(((size_t)p->nix_paths + 1) * 16, sizeof *d->affix_bits);
    if (!d->affix_bits)
        return false;
    _Static_assert(VM_K_PREFIX_CI == VM_K_PREFIX + 1 && VM_K_SUFFIX == VM_K_PREFIX + 2 &&
                       VM_K_SUFFIX_CI == VM_K_PREFIX + 3,
                   "the affix kinds follow each other");
    for (uint32_t i = 0; i < p->nix_keys; i++) {
        const vm_ix_key *k = &p->ix_keys[i];
        if (k->kind < VM_K_PREFIX || k->kind > VM_K_SUFFIX_CI)
            continue;
        uint64_t *w = (uint64_t *)vm_affix_slot(d, k->ipath, k->kind);
        if (k->key.len < 2) {
            w[0] = w[1] = w[2] = w[3] = ~0ull;
            continue;
        }
        const unsigned char *b = (const unsigned char *)p->strs + k->key.off;
        if (k->kind == VM_K_SUFFIX || k->kind == VM_K_SUFFIX_CI)
            b += k->key.len - 2;
        unsigned bit = vm_affix_bit(b[0], b[1]);
        w[bit / 64] |= 1ull << (bit % 64);
    }
    return true;
}

/* The vid_slots probe for (path, s) (any hash will do: it is never stored). */
static uint64_t vid_hash(uint32_t path, const char *s, size_t n)
{
    return vm_probe_hash(vm_key_seed(0xff, 0, path), s, n);
}

uint32_t vm_value_id(const vm_program *p, uint32_t path, const char *s, size_t n)
{
    const struct vm_derived *d = p->derived;
    uint32_t mask = d->nvid_slots - 1;
    uint64_t hash = vid_hash(path, s, n), tag = hash >> 32;
    for (uint64_t h = hash & mask; (uint32_t)d->vid_slots[h]; h = (h + 1) & mask) {
        if (d->vid_slots[h] >> 32 != tag)
            continue;
        const struct vm_vid *t = &d->vid_text[(uint32_t)d->vid_slots[h] - 1];
        if (t->path == path && t->s.len == n && vm_same_bytes(vm_s(p, t->s), s, n))
            return (uint32_t)d->vid_slots[h] - 1;
    }
    return VM_NONE;
}

/* Puts slot value x (tag << 32 | id + 1) in the first free slot of its probe sequence. */
static void vid_place(uint64_t *slots, uint32_t nslots, uint64_t hash, uint64_t x)
{
    uint64_t h = hash & (nslots - 1);
    while ((uint32_t)slots[h])
        h = (h + 1) & (nslots - 1);
    slots[h] = x;
}

/* The id of constant k (a string on path), numbering it if it is new; VM_NONE when memory runs
 * out. */
static uint32_t vid_of(const vm_program *p, struct vm_derived *d, uint32_t path, uint32_t k,
                       uint32_t *per_path)
{
    const vm_const *kc = &p->consts[k];
    uint32_t v = vm_value_id(p, path, vm_s(p, kc->s), kc->s.len);
    if (v != VM_NONE)
        return v;
    if ((d->nvids + 1) * 2 > d->nvid_slots) {
        /* Keep the table at most half full: double it and place every id again. */
        uint32_t n = d->nvid_slots * 2;
        uint64_t *slots = calloc(n, sizeof *slots);
        struct vm_vid *tv = realloc(d->vid_text, n / 2 * sizeof *tv);
        if (tv)
            d->vid_text = tv;
        uint16_t *lv = tv ? realloc(d->vid_local, n / 2 * sizeof *lv) : NULL;
        if (lv)
            d->vid_local = lv;
        if (!slots || !tv || !lv) {
            free(slots);
            return VM_NONE;
        }
        for (uint32_t i = 0; i < d->nvid_slots; i++) {
            uint32_t q = (uint32_t)d->vid_slots[i];
            if (q) {
                const struct vm_vid *t = &d->vid_text[q - 1];
                vid_place(slots, n, vid_hash(t->path, vm_s(p, t->s), t->s.len), d->vid_slots[i]);
            }
        }
        free(d->vid_slots);
        d->vid_slots = slots;
        d->nvid_slots = n;
    }
    v = d->nvids++;
    d->vid_text[v] = (struct vm_vid){ kc->s, path };
    d->vid_local[v] = (uint16_t)(per_path[path] < 0xffff ? per_path[path] : 0xffff);
    per_path[path]++;
    uint64_t hash = vid_hash(path, vm_s(p, kc->s), kc->s.len);
    vid_place(d->vid_slots, d->nvid_slots, hash, (hash >> 32) << 32 | (uint64_t)(v + 1));
    return v;
}

static int cmp_u16(const void *pa, const void *pb)
{
    return (int)*(const uint16_t *)pa - (int)*(const uint16_t *)pb;
}

static void sort_u16(uint16_t *v, size_t n)
{
    if (n > 32) {
        qsort(v, n, sizeof *v, cmp_u16);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        uint16_t x = v[i];
        size_t k = i;
        for (; k > 0 && v[k - 1] > x; k--)
            v[k] = v[k - 1];
        v[k] = x;
    }
}

/* Numbers the strings of the index's plain string equalities (see struct vm_derived).  The
 * compiler pools equal strings once, so most constants are numbered by their (path, string
 * offset) in a small table of integers first, and the text is hashed and compared only for a
 * pair not seen yet (with 100k issue193 rules, 2.8M constants: hashing each text took 7% of
 * `ebc compile`). */
static bool number_values(const vm_program *p, struct vm_derived *d)
{
    size_t total = 0;
    d->nvid_slots = 1024;
    d->vid_slots = calloc(d->nvid_slots, sizeof *d->vid_slots);
    d->vid_text = malloc(d->nvid_slots / 2 * sizeof *d->vid_text);
    d->vid_local = malloc(d->nvid_slots / 2 * sizeof *d->vid_local);
    d->pred_vids = malloc((p->nix_preds + 1) * sizeof *d->pred_vids);
    if (!d->vid_slots || !d->vid_text || !d->vid_local || !d->pred_vids)
        return false;
    for (uint32_t g = 0; g < p->nix_preds; g++) {
        const vm_test *t = &p->tests[p->ix_preds[g].test];
        bool plain = t->kind == VM_T_EQ && !(t->flags & (VM_TF_CI | VM_TF_ASNUM | VM_TF_BAND));
        for (uint32_t i = 0; plain && i < t->narg; i++) {
            const vm_const *k = &p->consts[t->arg0 + i];
            plain = k->type != VM_C_STR || !(k->flags & VM_CF_IP);
        }
        d->pred_vids[g] = plain ? 0 : VM_PRED_NO_IDS;
        if (plain)
            total += t->narg;
    }
    if (total >= VM_PRED_NO_IDS)
        return false;
    d->vids = malloc((total ? total : 1) * sizeof *d->vids);
    /* (path, offset) -> id + 1, open addressing, kept at most half full */
    uint32_t ncache = 1024, ncached = 0;
    struct vid_cache { uint64_t key; uint32_t v; } *cache = calloc(ncache, sizeof *cache);
    uint32_t *per_path = calloc(p->npaths + 1, sizeof *per_path);   /* strings numbered */
    bool ok = d->vids && cache && per_path;
    uint32_t at = 0;
    for (uint32_t g = 0; ok && g < p->nix_preds; g++) {
        bool plain = !(d->pred_vids[g] & VM_PRED_NO_IDS);
        d->pred_vids[g] = at | (plain ? 0 : VM_PRED_NO_IDS);
        if (!plain)
            continue;
        const vm_ix_pred *x = &p->ix_preds[g];
        const vm_test *t = &p->tests[x->test];
        for (uint32_t i = 0; ok && i < t->narg; i++) {
            const vm_const *k = &p->consts[t->arg0 + i];
            if (k->type != VM_C_STR)
                continue;
            uint64_t key = (uint64_t)x->path << 32 | k->s.off;
            uint64_t h = (key * 0x9E3779B97F4A7C15ull) >> 20;
            while (cache[h & (ncache - 1)].v && cache[h & (ncache - 1)].key != key)
                h++;
            uint32_t v = cache[h & (ncache - 1)].v;
            if (v) {
                d->vids[at++] = d->vid_local[v - 1];
                continue;
            }
            v = vid_of(p, d, x->path, t->arg0 + i, per_path);
            ok = v != VM_NONE;
            if (ok)
                d->vids[at++] = d->vid_local[v];
            cache[h & (ncache - 1)].key = key;
            cache[h & (ncache - 1)].v = v + 1;
            if (ok && ++ncached * 2 > ncache) {
                /* Double the cache and place every pair again. */
                uint32_t n = ncache * 2;
                struct vid_cache *bigger = calloc(n, sizeof *bigger);
                ok = bigger != NULL;
                for (uint32_t j = 0; ok && j < ncache; j++) {
                    if (!cache[j].v)
                        continue;
                    uint64_t hh = (cache[j].key * 0x9E3779B97F4A7C15ull) >> 20;
                    while (bigger[hh & (n - 1)].v)
                        hh++;
                    bigger[hh & (n - 1)] = cache[j];
                }
                if (ok) {
                    free(cache);
                    cache = bigger;
                    ncache = n;
                }
            }
        }
        sort_u16(d->vids + vm_pred_vid0(d, g), at - vm_pred_vid0(d, g));
    }
    d->pred_vids[p->nix_preds] = at;
    /* A path with more strings than 16 bits number: its equalities compare constants. */
    for (uint32_t g = 0; ok && g < p->nix_preds; g++)
        if (per_path[p->ix_preds[g].path] > 0xffff)
            d->pred_vids[g] |= VM_PRED_NO_IDS;
    free(cache);
    free(per_path);
    return ok;
}

/* Which tests index.c may run on a string leaf's bytes in place (struct vm_derived, test_quick):
 * an equality, prefix, suffix or wildcard whose constants are all strings that spell no IP address, not
 * compared as numbers; ignore-case only when every constant is ASCII (a leaf of ASCII alone then
 * folds byte for byte). */
static bool quick_tests(const vm_program *p, struct vm_derived *d)
{
    d->test_quick = calloc(p->ntests + 1, 1);
    if (!d->test_quick)
        return false;
    for (uint32_t i = 0; i < p->ntests; i++) {
        const vm_test *t = &p->tests[i];
        unsigned q = t->kind == VM_T_EQ ? VM_Q_EQ : t->kind == VM_T_PREFIX ? VM_Q_PREFIX
                   : t->kind == VM_T_SUFFIX ? VM_Q_SUFFIX
                   : t->kind == VM_T_WILDCARD ? VM_Q_WILDCARD : VM_Q_NONE;
        if (t->flags & ~(VM_TF_NEG | VM_TF_CI) || t->narg == 0 ||
            (q == VM_Q_WILDCARD && (t->flags & VM_TF_CI)))
            q = VM_Q_NONE;
        for (uint32_t j = 0; q && j < t->narg; j++) {
            const vm_const *k = &p->consts[t->arg0 + j];
            if (k->type != VM_C_STR || (k->flags & VM_CF_IP))
                q = VM_Q_NONE;
            for (uint32_t b = 0; q && (t->flags & VM_TF_CI) && b < k->s.len; b++)
                if ((unsigned char)vm_s(p, k->s)[b] >= 0x80)
                    q = VM_Q_NONE;
        }
        d->test_quick[i] = (uint8_t)(q && (t->flags & VM_TF_CI) ? q | VM_Q_CI : q);
    }
    return true;
}

/* Gives each plain string key of the index its value id (see struct vm_derived, key_vid). */
static bool key_value_ids(const vm_program *p, struct vm_derived *d)
{
    uint32_t *named = calloc(p->npaths + 1, sizeof *named);      /* ids per path */
    uint32_t *keyed = calloc(p->nix_paths + 1, sizeof *keyed);   /* keys with one per entry */
    d->key_vid = malloc((p->nix_keys + 1) * sizeof *d->key_vid);
    d->keys_hold_vids = calloc(p->nix_paths + 1, 1);
    bool ok = named && keyed && d->key_vid && d->keys_hold_vids;
    for (uint32_t v = 0; ok && v < d->nvids; v++)
        named[d->vid_text[v].path]++;
    for (uint32_t k = 0; ok && k < p->nix_keys; k++) {
        const vm_ix_key *key = &p->ix_keys[k];
        uint32_t v = key->kind != VM_K_STR ? VM_NONE
                     : vm_value_id(p, p->ix_paths[key->ipath].path, p->strs + key->key.off,
                                   key->key.len);
        d->key_vid[k] = v == VM_NONE ? VM_NONE : d->vid_local[v];
        keyed[key->ipath] += v != VM_NONE;
    }
    for (uint32_t ip = 0; ok && ip < p->nix_paths; ip++)
        d->keys_hold_vids[ip] = keyed[ip] == named[p->ix_paths[ip].path];
    free(named);
    free(keyed);
    return ok;
}

/* The value ids predicate o (all buses) is tested by, in *vid0 and *nvid: VM_NONE unless it is
 * a plain string equality that triggers nothing (a mark says whether a trigger passed) and is
 * not negated. */
static void ids_of(const vm_program *p, const struct vm_derived *d, uint32_t o, uint32_t *vid0,
                   uint32_t *nvid)
{
    const vm_ix_pred *n = &p->ix_preds[o];
    bool ids = !n->nclause && vm_pred_nvid(d, o) != VM_NONE &&
               !(p->tests[n->test].flags & VM_TF_NEG);
    *vid0 = ids ? vm_pred_vid0(d, o) : 0;
    *nvid = ids ? vm_pred_nvid(d, o) : VM_NONE;
}

/* Lays out the clauses each predicate triggers as records (see vm_ix_rec). */
static bool clause_records(const vm_program *p, struct vm_derived *d)
{
    size_t total = 0, ncp = 0;
    d->rec_at = calloc(p->nix_preds + 1, sizeof *d->rec_at);
    if (!d->rec_at)
        return false;
    for (uint32_t g = 0; g < p->nix_preds; g++)
        total += p->ix_preds[g].nclause;
    for (uint32_t ci = 0; ci < p->nix_clauses; ci++)
        ncp += p->ix_clauses[ci].npred;
    if (total >= UINT32_MAX || ncp >= UINT32_MAX)
        return false;
    d->ix_recs = malloc((total ? total : 1) * sizeof *d->ix_recs);
    d->ix_cpreds = malloc((ncp ? ncp : 1) * sizeof *d->ix_cpreds);
    if (!d->ix_recs || !d->ix_cpreds)
        return false;
    /* Per clause, where its predicates are in ix_cpreds (VM_NONE: not simple). */
    uint32_t *cp0 = malloc((p->nix_clauses + 1) * sizeof *cp0);
    if (!cp0)
        return false;
    for (uint32_t bi = 0; bi < p->nix_buses; bi++) {
        const vm_ix_bus *bus = &p->ix_buses[bi];
        for (uint32_t k = 0; k < bus->nclause; k++) {
            uint32_t ci = bus->clause0 + k;
            const vm_ix_clause *cl = &p->ix_clauses[ci];
            bool simple = cl->need == cl->npred && cl->npred >= 2 && cl->npred <= 0xffff &&
                          !(cl->flags & VM_IXC_VERIFY) && cl->depth <= 0xffff;
            for (uint32_t j = 0; simple && j < cl->npred; j++)
                simple = !(p->tests[p->ix_preds[bus->pred0 + p->ix_refs[cl->pred0 + j]].test].flags &
                           VM_TF_BAND);
            cp0[ci] = VM_NONE;
            if (!simple || cl->npred > ncp - d->ncpreds)
                continue;
            if (cl->npred == 2) {
                cp0[ci] = 0;   /* its record holds both */
                continue;
            }
            cp0[ci] = d->ncpreds;
            for (uint32_t j = 0; j < cl->npred; j++) {
                vm_ix_cpred *e = &d->ix_cpreds[d->ncpreds++];
                uint32_t vid0, nvid;
                e->pred = bus->pred0 + p->ix_refs[cl->pred0 + j];
                ids_of(p, d, e->pred, &vid0, &nvid);
                e->path = (uint16_t)p->ix_preds[e->pred].path;
                e->vid0 = vid0;
                e->nvid = (uint16_t)(nvid < 0xffff ? nvid : 0xffff);
                if (p->ix_preds[e->pred].path >= 0xffff)
                    cp0[ci] = VM_NONE;   /* (a path number past 16 bits: not simple) */
            }
        }
    }
    /* Each predicate's records, in the order of predicates (rec_at[g] .. rec_at[g + 1]). */
    uint32_t *bus_of = malloc((p->nix_preds + 1) * sizeof *bus_of);
    if (!bus_of) {
        free(cp0);
        return false;
    }
    for (uint32_t g = 0; g < p->nix_preds; g++)
        bus_of[g] = VM_NONE;
    for (uint32_t bi = 0; bi < p->nix_buses; bi++)
        for (uint32_t i = 0; i < p->ix_buses[bi].npred; i++)
            bus_of[p->ix_buses[bi].pred0 + i] = bi;
    uint32_t at = 0;
    for (uint32_t g = 0; g < p->nix_preds; g++) {
        d->rec_at[g] = at;
        if (bus_of[g] == VM_NONE)
            continue;
        const vm_ix_bus *bus = &p->ix_buses[bus_of[g]];
        const vm_ix_pred *x = &p->ix_preds[g];
        if (x->nclause > total - at) {
            free(cp0);
            free(bus_of);
            return false;
        }
        for (uint32_t k = 0; k < x->nclause; k++) {
            uint32_t ci = bus->clause0 + p->ix_refs[x->clause0 + k];
            const vm_ix_clause *cl = &p->ix_clauses[ci];
            vm_ix_rec *r = &d->ix_recs[at++];
            *r = (vm_ix_rec){ ci, cl->rule, VM_NONE, 0, ~0u, 0, 0, VM_REC_NO_IDS, 0, 0 };
            /* A clause of one predicate that its trigger completes (a band in arrays lets the
             * bytecode decide, decide's arrays_matter): decided without reading the clause.
             * Each of the ~21 matches an event of the routing row's COMBO rules, and of the
             * CityLots rows, is such a clause; callgrind, instructions an event, trusted:
             * the routing row 18,576 -> 17,437, ANYTHING_BUT 7,009 -> 6,829. */
            if (cl->npred == 1 && cl->need == 1 && !(cl->flags & VM_IXC_VERIFY) &&
                (cl->depth == 0 || !(p->tests[x->test].flags & VM_TF_BAND)))
                r->ncp = 1;
            if (cl->need < cl->npred || cl->npred == 1)
                continue;   /* any one of its predicates, or only this one */
            for (uint32_t j = 0; j < cl->npred; j++) {
                uint32_t o = bus->pred0 + p->ix_refs[cl->pred0 + j], vid0, nvid;
                ids_of(p, d, o, &vid0, &nvid);
                if (o == g || (r->next != VM_NONE && (r->nvid != VM_REC_NO_IDS || nvid == VM_NONE)))
                    continue;
                uint32_t path = p->ix_preds[o].path;
                bool ids = nvid < VM_REC_NO_IDS && path < 0xffff;
                r->next = o;
                r->path = (uint16_t)(path < 0xffff ? path : 0xffff);
                r->vid0 = ids ? vid0 : 0;
                r->nvid = (uint16_t)(ids ? nvid : VM_REC_NO_IDS);
                r->sig = 0;
                for (uint32_t i = 0; ids && i < nvid; i++)
                    r->sig |= vm_vid_sig(d->vids[vid0 + i]);
                r->sig = r->sig ? r->sig : ~0u;   /* (no string: the leaves decide) */
            }
            if (r->next != VM_NONE && cp0[ci] != VM_NONE && r->path != 0xffff) {
                r->cp0 = cl->npred == 2 ? x->path : cp0[ci];
                r->ncp = (uint16_t)cl->npred;
                r->depth = (uint16_t)cl->depth;
            }
        }
    }
    d->rec_at[p->nix_preds] = at;
    free(cp0);
    free(bus_of);
    return true;
}

/* Does clause ci (all buses) hold exactly the TESTs code[0 .. n) of its rule, as predicates of
 * bus b (the same path and test, each TEST one of them and each of them a TEST)? */
static bool clause_is_tests(const vm_program *p, const vm_ix_bus *b, uint32_t ci,
                            const vm_inst *code, uint32_t n)
{
    const vm_ix_clause *cl = &p->ix_clauses[ci];
    const uint32_t *pr = p->ix_refs + cl->pred0;
    for (uint32_t i = 0; i < n; i++) {
        bool found = false;
        for (uint32_t j = 0; j < cl->npred && !found; j++)
            found = p->ix_preds[b->pred0 + pr[j]].path == VM_A(code[i]) &&
                    p->ix_preds[b->pred0 + pr[j]].test == VM_B(code[i]);
        if (!found)
            return false;
    }
    for (uint32_t j = 0; j < cl->npred; j++) {
        bool found = false;
        for (uint32_t i = 0; i < n && !found; i++)
            found = p->ix_preds[b->pred0 + pr[j]].path == VM_A(code[i]) &&
                    p->ix_preds[b->pred0 + pr[j]].test == VM_B(code[i]);
        if (!found)
            return false;
    }
    return true;
}

/* Finds the clauses that are their rule's only clause and whose rule is TESTs of its
 * predicates and then one negated TEST (`"exists": false`, `not (p == x)`):
 * TEST.. NOT -> m; TEST; NOTOK; m: MATCH.  Their negated TEST is neg_test[ci] (an address of
 * p->code), VM_NONE for every other clause. */
static bool negated_tests(const vm_program *p, struct vm_derived *d)
{
    uint32_t *nclauses = calloc(p->nrules + 1, sizeof *nclauses);
    d->neg_test = malloc((p->nix_clauses + 1) * sizeof *d->neg_test);
    if (!nclauses || !d->neg_test) {
        free(nclauses);
        return false;
    }
    for (uint32_t ci = 0; ci < p->nix_clauses; ci++) {
        nclauses[p->ix_clauses[ci].rule]++;
        d->neg_test[ci] = VM_NONE;
    }
    for (uint32_t bi = 0; bi < p->nix_buses; bi++) {
        const vm_ix_bus *b = &p->ix_buses[bi];
        for (uint32_t k = 0; k < b->nclause; k++) {
            uint32_t ci = b->clause0 + k;
            const vm_ix_clause *cl = &p->ix_clauses[ci];
            const vm_rule *r = &p->rules[cl->rule];
            const vm_inst *code = p->code + r->code0;
            uint32_t n = r->ncode;
            if (!(cl->flags & VM_IXC_VERIFY) || nclauses[cl->rule] != 1 || cl->need != cl->npred ||
                n < 4 || VM_OP(code[n - 4]) != VM_OP_NOT || VM_B(code[n - 4]) != n - 1 ||
                VM_OP(code[n - 3]) != VM_OP_TEST || VM_OP(code[n - 2]) != VM_OP_NOTOK ||
                VM_OP(code[n - 1]) != VM_OP_MATCH)
                continue;
            bool tests = true;
            for (uint32_t pc = 0; pc < n - 4 && tests; pc++)
                tests = VM_OP(code[pc]) == VM_OP_TEST;
            if (tests && clause_is_tests(p, b, ci, code, n - 4))
                d->neg_test[ci] = r->code0 + n - 3;
        }
    }
    free(nclauses);
    return true;
}

void vm_pred_mark_init(const vm_program *p, vm_pred_mark *m)
{
    const struct vm_derived *d = p->derived;
    for (uint32_t g = 0; g <= p->nix_preds; g++) {
        m[g] = (vm_pred_mark){ 0, d->rec_at[g], ~0u, 0 };
        if (g == p->nix_preds || d->rec_at[g] == d->rec_at[g + 1])
            continue;
        uint32_t sig = 0, path = d->ix_recs[d->rec_at[g]].path;
        for (uint32_t r = d->rec_at[g]; r < d->rec_at[g + 1] && sig != ~0u; r++) {
            const vm_ix_rec *x = &d->ix_recs[r];
            sig = x->nvid == VM_REC_NO_IDS || x->path != path ? ~0u : sig | x->sig;
        }
        m[g].sig = sig;
        m[g].path = path;
    }
}

void vm_derived_free(struct vm_derived *d)
{
    if (!d)
        return;
    free(d->ix_path_of);
    free(d->ix_tagged);
    free(d->affix_bits);
    free(d->vid_slots);
    free(d->vid_text);
    free(d->vid_local);
    free(d->pred_vids);
    free(d->vids);
    free(d->key_vid);
    free(d->keys_hold_vids);
    free(d->test_quick);
    free(d->ix_recs);
    free(d->rec_at);
    free(d->ix_cpreds);
    vm_trie_free(d->trie);
    free(d->keep_depth);
    free(d->last_not);
    free(d->neg_test);
    free(d);
}

vm_status vm_program_prepare(vm_program *p)
{
    vm_derived_free(p->derived);
    p->derived = calloc(1, sizeof *p->derived);
    if (!p->derived)
        return VM_ERR_NOMEM;
    p->derived->trie = build_trie(p);
    if (!p->derived->trie || !analyse_code(p, p->derived) || !map_index_paths(p, p->derived) ||
        !tag_index_slots(p, p->derived) || !affix_filters(p, p->derived) ||
        !number_values(p, p->derived) ||
        !key_value_ids(p, p->derived) || !clause_records(p, p->derived) ||
        !quick_tests(p, p->derived) || !negated_tests(p, p->derived)) {
        vm_derived_free(p->derived);
        p->derived = NULL;
        return VM_ERR_NOMEM;
    }
    return VM_OK;
}

vm_options vm_program_options(const vm_program *p)
{
    vm_options o = { 0 };
    for (uint32_t i = 0; i < p->nserver; i++) {
        const vm_cfg *c = &p->cfgs[p->server0 + i];
        if (c->type == VM_CFG_OPTION && c->key.len == 11 && c->nchild == 1 &&
            memcmp(vm_s(p, c->key), "match_steps", 11) == 0 && p->cfgs[c->child0].type == VM_CFG_NUM)
            o.max_steps = (size_t)p->cfgs[c->child0].num;
    }
    return o;
}

void vm_program_drop_sources(vm_program *p)
{
    if (p->src_line0 || !p->nsrcs)
        return;
    /* (the newlines found by memchr: counted byte by byte, 73M instructions at load for the
     * 10k issue193 rules, ~250 ms for 100k) */
    uint32_t total = 0;
    for (uint32_t i = 0; i < p->nsrcs; i++) {
        const char *t = vm_s(p, p->srcs[i].text), *end = t + p->srcs[i].text.len;
        total++;
        for (const char *q = t; (q = memchr(q, '\n', (size_t)(end - q))) != NULL; q++)
            total++;
    }
    uint32_t *line0 = malloc((p->nsrcs + 1) * sizeof *line0);
    uint32_t *lines = malloc(total * sizeof *lines);
    if (!line0 || !lines) {
        free(line0);
        free(lines);
        return;   /* the texts stay: messages only need them */
    }
    uint32_t n = 0;
    for (uint32_t i = 0; i < p->nsrcs; i++) {
        const char *t = vm_s(p, p->srcs[i].text), *end = t + p->srcs[i].text.len;
        line0[i] = n;
        lines[n++] = 0;
        for (const char *q = t; (q = memchr(q, '\n', (size_t)(end - q))) != NULL; q++)
            lines[n++] = (uint32_t)(q - t) + 1;
    }
    line0[p->nsrcs] = n;
    p->src_line0 = line0;
    p->src_lines = lines;
    /* Give back the whole pages inside each text: strings are pooled whole, so no other string
     * lies within a text (a literal equal to a whole file's text would share it: a text of less
     * than a few pages is kept).  Those pages read as zeros from now on. */
    long page = sysconf(_SC_PAGESIZE);
    for (uint32_t i = 0; i < p->nsrcs; i++) {
        vm_str *t = &p->srcs[i].text;
        uintptr_t from = (uintptr_t)(p->strs + t->off), to = from + t->len;
        if (page > 0 && t->len >= 4 * (uint32_t)page) {
            from = (from + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
            to &= ~((uintptr_t)page - 1);
            if (to > from)
                madvise((void *)from, to - from, MADV_DONTNEED);
        }
        t->len = 0;
    }
}

void vm_span_source(const vm_program *p, vm_span s, char *text, size_t cap)
{
    const char *src = vm_s(p, p->srcs[s.src].text);
    size_t k = 0;
    bool blank = false;
    for (uint32_t i = 0; i < s.len && k + 4 < cap; i++) {
        char ch = src[s.off + i];
        if (ch == '\n' || ch == '\t' || ch == '\r' || ch == ' ') {
            blank = k > 0;
            continue;
        }
        if (blank)
            text[k++] = ' ';
        blank = false;
        text[k++] = ch;
    }
    if (k + 4 >= cap)
        strcpy(text + k, "...");
    else
        text[k] = 0;
}

void vm_span_where(const vm_program *p, vm_span s, uint32_t *line, uint32_t *col)
{
    *line = *col = 1;
    if (s.src >= p->nsrcs)
        return;
    if (p->src_line0) {
        /* the last line start at or before s.off */
        uint32_t lo = p->src_line0[s.src], hi = p->src_line0[s.src + 1];
        while (hi - lo > 1) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (p->src_lines[mid] <= s.off)
                lo = mid;
            else
                hi = mid;
        }
        *line = lo - p->src_line0[s.src] + 1;
        *col = s.off - p->src_lines[lo] + 1;
        return;
    }
    const char *text = vm_s(p, p->srcs[s.src].text);
    uint32_t start = 0;
    for (uint32_t i = 0; i < s.off && i < p->srcs[s.src].text.len; i++)
        if (text[i] == '\n') {
            ++*line;
            start = i + 1;
        }
    *col = s.off - start + 1;
}

void vm_program_free(vm_program *p)
{
    if (!p)
        return;
    free(p->src_line0);
    free(p->src_lines);
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
    free(p->inputs);
    free(p->cfgs);
    free(p->xforms);
    free(p->tcode);
    free(p->tcode_spans);
    free(p->tpaths);
    free(p->tsteps);
    free(p->ix_buses);
    free(p->ix_paths);
    free(p->ix_preds);
    free(p->ix_clauses);
    free(p->ix_keys);
    free(p->ix_slots);
    free(p->ix_nodes);
    free(p->ix_bounds);
    free(p->ix_refs);
    vm_derived_free(p->derived);
    free(p);
}
