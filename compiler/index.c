/*
 * index.c — builds the index of every bus (vm.h, docs/index.md) from the IR of its rules.
 *
 * Each rule becomes clauses: its condition in disjunctive normal form over predicates (a test on
 * a path), where a negation makes a clause that must be confirmed by running the rule.  A rule
 * whose normal form would be too large gets one clause that counts any of a set of predicates
 * one of which must pass for the rule to match (its triggers), confirmed by running the rule.
 * Then, per bus and path, every predicate is filed where a leaf value finds it fastest.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cc.h"

enum { MAX_CLAUSES = 32 };   /* beyond this a rule is indexed by its triggers */

/* ---- predicates ------------------------------------------------------------------------------ */

static uint64_t mix3(uint32_t a, uint32_t b, uint32_t c)
{
    uint64_t h = (uint64_t)a * 0x9E3779B97F4A7C15ull ^ (uint64_t)b * 0xC2B2AE3D27D4EB4Full ^
                 (uint64_t)c * 0x165667B19E3779F9ull;
    return h ^ (h >> 31);
}

/* The predicate (test on path, on one bus), made once. */
static uint32_t pred_of(cc_comp *c, uint32_t bus, uint32_t path, uint32_t test)
{
    if ((c->xpreds.n + 1) * 2 > c->xpred_cap) {
        uint32_t cap = c->xpred_cap ? c->xpred_cap * 2 : 1024;
        uint32_t *slots = calloc(cap, sizeof *slots);
        if (!slots)
            abort();
        for (uint32_t i = 0; i < c->xpreds.n; i++) {
            cc_xpred *x = &c->xpreds.v[i];
            uint64_t h = mix3(x->bus, x->path, x->test) & (cap - 1);
            while (slots[h])
                h = (h + 1) & (cap - 1);
            slots[h] = i + 1;
        }
        free(c->xpred_slots);
        c->xpred_slots = slots;
        c->xpred_cap = cap;
    }
    uint64_t h = mix3(bus, path, test) & (c->xpred_cap - 1);
    for (; c->xpred_slots[h]; h = (h + 1) & (c->xpred_cap - 1)) {
        cc_xpred *x = &c->xpreds.v[c->xpred_slots[h] - 1];
        if (x->bus == bus && x->path == path && x->test == test)
            return c->xpred_slots[h] - 1;
    }
    cc_xpred x = { bus, path, test, { 0 }, false };
    vec_push(c->xpreds, x);
    c->xpred_slots[h] = c->xpreds.n;
    return c->xpreds.n - 1;
}

/* ---- normal forms ----------------------------------------------------------------------------- */

typedef struct {
    u32vec preds;
    bool verify;
} dclause;

typedef struct {
    dclause *v;
    uint32_t n;
    bool overflow;
} dnf;

static void dnf_free(dnf *d)
{
    for (uint32_t i = 0; i < d->n; i++)
        free(d->v[i].preds.v);
    free(d->v);
    d->v = NULL;
    d->n = 0;
}

static void add_pred(u32vec *v, uint32_t p)
{
    for (uint32_t i = 0; i < v->n; i++)
        if (v->v[i] == p)
            return;
    vec_push(*v, p);
}

/* The disjunctive normal form of n over predicates; overflow when it exceeds MAX_CLAUSES. */
static dnf to_dnf(cc_comp *c, uint32_t bus, const ir *n)
{
    dnf out = { NULL, 0, false };
    switch (n->kind) {
    case IR_TEST:
        out.v = calloc(1, sizeof *out.v);
        out.n = 1;
        add_pred(&out.v[0].preds, pred_of(c, bus, n->path, n->test));
        return out;
    case IR_NOT:
        /* A negation passes no predicate: the clause is confirmed by running the rule. */
        out.v = calloc(1, sizeof *out.v);
        out.n = 1;
        out.v[0].verify = true;
        return out;
    case IR_OR:
        for (uint32_t k = 0; k < n->nkid && !out.overflow; k++) {
            dnf d = to_dnf(c, bus, n->kid[k]);
            if (d.overflow || out.n + d.n > MAX_CLAUSES) {
                out.overflow = true;
                dnf_free(&d);
                break;
            }
            out.v = cc_xrealloc(out.v, (out.n + d.n) * sizeof *out.v);
            if (d.n)
                memcpy(out.v + out.n, d.v, d.n * sizeof *d.v);
            out.n += d.n;
            free(d.v);
        }
        return out;
    case IR_AND:
        out.v = calloc(1, sizeof *out.v);
        out.n = 1;
        for (uint32_t k = 0; k < n->nkid && !out.overflow; k++) {
            dnf d = to_dnf(c, bus, n->kid[k]);
            if (d.overflow || (uint64_t)out.n * d.n > MAX_CLAUSES) {
                out.overflow = true;
                dnf_free(&d);
                break;
            }
            dnf prod = { calloc(out.n * d.n, sizeof *out.v), out.n * d.n, false };
            for (uint32_t i = 0; i < out.n; i++)
                for (uint32_t j = 0; j < d.n; j++) {
                    dclause *x = &prod.v[i * d.n + j];
                    for (uint32_t q = 0; q < out.v[i].preds.n; q++)
                        add_pred(&x->preds, out.v[i].preds.v[q]);
                    for (uint32_t q = 0; q < d.v[j].preds.n; q++)
                        add_pred(&x->preds, d.v[j].preds.v[q]);
                    x->verify = out.v[i].verify || d.v[j].verify;
                }
            dnf_free(&out);
            dnf_free(&d);
            out = prod;
        }
        return out;
    }
    return out;
}

/* Triggers: predicates one of which passes whenever n holds (false: there is no such set, as
 * for a negation).  Of an 'and' the smallest set of a part is taken. */
static bool triggers(cc_comp *c, uint32_t bus, const ir *n, u32vec *out)
{
    switch (n->kind) {
    case IR_TEST:
        add_pred(out, pred_of(c, bus, n->path, n->test));
        return true;
    case IR_NOT:
        return false;
    case IR_OR:
        for (uint32_t k = 0; k < n->nkid; k++)
            if (!triggers(c, bus, n->kid[k], out))
                return false;
        return true;
    case IR_AND: {
        u32vec best = { 0 };
        bool found = false;
        for (uint32_t k = 0; k < n->nkid; k++) {
            u32vec t = { 0 };
            if (triggers(c, bus, n->kid[k], &t) && (!found || t.n < best.n)) {
                free(best.v);
                best = t;
                found = true;
            } else {
                free(t.v);
            }
        }
        for (uint32_t i = 0; i < best.n; i++)
            add_pred(out, best.v[i]);
        free(best.v);
        return found;
    }
    }
    return false;
}

/* The longest path prefix that two predicates of a clause share (a predicate's whole path when
 * two are on the same path): arrays deeper than that cannot tie leaves of two predicates. */
static uint32_t shared_depth(cc_comp *c, const u32vec *preds)
{
    uint32_t best = 0;
    for (uint32_t i = 0; i < preds->n; i++)
        for (uint32_t j = i + 1; j < preds->n; j++) {
            const vm_path *a = &c->paths.v[c->xpreds.v[preds->v[i]].path];
            const vm_path *b = &c->paths.v[c->xpreds.v[preds->v[j]].path];
            uint32_t n = 0;
            while (n < a->nseg && n < b->nseg &&
                   c->segs.v[a->seg0 + n].off == c->segs.v[b->seg0 + n].off)
                n++;   /* segments are pooled once: equal names have equal offsets */
            if (n > best)
                best = n;
        }
    return best;
}

/* How often a predicate is expected to pass, as a rank (lower: rarer).  An exact value passes
 * for few events, `exists` or anything-but for most; a clause waits on its rarest predicate. */
static uint32_t rarity(cc_comp *c, uint32_t pred)
{
    const vm_test *t = &c->tests.v[c->xpreds.v[pred].test];
    if (t->flags & VM_TF_NEG)
        return 1000;
    switch (t->kind) {
    case VM_T_EQ:
        /* true, false and null: a few values that many events share */
        if (t->narg == 1 && c->consts.v[t->arg0].type >= VM_C_TRUE &&
            c->consts.v[t->arg0].type <= VM_C_NULL)
            return 400;
        return (t->flags & VM_TF_CI ? 20 : 10) + t->narg;
    case VM_T_PREFIX: case VM_T_SUFFIX: return 100 + t->narg;
    case VM_T_CIDR: return 200;
    case VM_T_RANGE: return t->flags & VM_TF_BAND ? 250 : 300;
    case VM_T_EXISTS: return 900;
    default: return 500;
    }
}

/* ---- triggers -------------------------------------------------------------------------------- */

/* The exact values the predicates of one bus name, per path, sorted by path and then by text:
 * what the rules say about each path's values, for estimating how often a predicate passes. */
typedef struct {
    uint32_t path, len;
    const char *s;
} path_value;

typedef struct {
    path_value *v;
    uint32_t n;
    uint32_t *first, *count;   /* per program path: its distinct values in v */
} value_stats;

static int cmp_path_value(const void *pa, const void *pb)
{
    const path_value *a = pa, *b = pb;
    if (a->path != b->path)
        return a->path < b->path ? -1 : 1;
    int d = memcmp(a->s, b->s, a->len < b->len ? a->len : b->len);
    return d ? d : a->len < b->len ? -1 : a->len > b->len;
}

static void stats_build(cc_comp *c, uint32_t bus, value_stats *vs)
{
    /* Distinct (path, value) first, in a hash set (values are pooled once, so a value is its
     * offset), then only those sorted by text: sorting all 2.8M values of 100k rules by text
     * was a third of compiling them. */
    VEC(path_value) all = { 0 };
    uint32_t cap = 1024, used = 0;
    uint64_t *set = calloc(cap, sizeof *set);
    if (!set)
        abort();
    for (uint32_t i = 0; i < c->xpreds.n; i++) {
        const cc_xpred *x = &c->xpreds.v[i];
        const vm_test *t = &c->tests.v[x->test];
        if (x->bus != bus || !x->used || t->kind != VM_T_EQ || (t->flags & VM_TF_NEG))
            continue;
        for (uint32_t k = 0; k < t->narg; k++) {
            const vm_const *q = &c->consts.v[t->arg0 + k];
            if (q->type != VM_C_STR && q->type != VM_C_NUM)
                continue;
            if ((used + 1) * 2 > cap) {
                uint64_t *grown = calloc((size_t)cap * 2, sizeof *grown);
                if (!grown)
                    abort();
                for (uint32_t h = 0; h < cap; h++)
                    if (set[h]) {
                        uint64_t g = mix3((uint32_t)(set[h] >> 32), (uint32_t)set[h], 0) & (cap * 2 - 1);
                        while (grown[g])
                            g = (g + 1) & (cap * 2 - 1);
                        grown[g] = set[h];
                    }
                free(set);
                set = grown;
                cap *= 2;
            }
            uint64_t key = (uint64_t)x->path << 32 | (q->s.off + 1);   /* +1: never 0 */
            uint64_t h = mix3(x->path, q->s.off + 1, 0) & (cap - 1);
            while (set[h] && set[h] != key)
                h = (h + 1) & (cap - 1);
            if (set[h])
                continue;
            set[h] = key;
            used++;
            path_value v = { x->path, q->s.len, c->strs.v + q->s.off };
            vec_push(all, v);
        }
    }
    free(set);
    if (all.n)
        qsort(all.v, all.n, sizeof *all.v, cmp_path_value);
    vs->v = all.v;
    vs->n = all.n;
    vs->first = calloc(c->paths.n + 1, sizeof *vs->first);
    vs->count = calloc(c->paths.n + 1, sizeof *vs->count);
    if (!vs->first || !vs->count)
        abort();
    for (uint32_t i = all.n; i-- > 0;) {
        vs->first[vs->v[i].path] = i;
        vs->count[vs->v[i].path]++;
    }
}

static void stats_free(value_stats *vs)
{
    free(vs->v);
    free(vs->first);
    free(vs->count);
}

/* How many of the path's known values start with s (at most 4096). */
static uint32_t values_with_prefix(const value_stats *vs, uint32_t path, const char *s, uint32_t len)
{
    if (!vs->count[path])
        return 0;   /* (and vs->v may be NULL: no rule names a value) */
    const path_value *v = vs->v + vs->first[path];
    uint32_t lo = 0, hi = vs->count[path], n = 0;
    path_value key = { path, len, s };
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (cmp_path_value(&v[mid], &key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (; lo < vs->count[path] && n < 4096 && v[lo].len >= len && memcmp(v[lo].s, s, len) == 0; lo++)
        n++;
    return n;
}

/* The share of events a predicate is expected to pass, from what the rules themselves say: an
 * exact value is one of the values the bus's rules name on that path (plus a few unnamed ones),
 * so `tenant in [38 of 5,000 tenants]` (0.8%) is rarer than `country in [2 of 130]` (1.5%) and
 * `category in [15 of 30]` (38%) although its list is longer; a prefix, the share of named values
 * that start with it; the other kinds a fixed guess, rarest first as in rarity(). */
static double pass_estimate(cc_comp *c, const value_stats *vs, uint32_t pred)
{
    const cc_xpred *x = &c->xpreds.v[pred];
    const vm_test *t = &c->tests.v[x->test];
    if (t->flags & VM_TF_NEG)
        return 0.95;
    if (t->flags & VM_TF_ASNUM)
        return 0.5;
    switch (t->kind) {
    case VM_T_EQ: case VM_T_PREFIX: case VM_T_SUFFIX: case VM_T_CIDR: case VM_T_RANGE: break;
    case VM_T_EXISTS: return 0.9;
    default: return 0.5;   /* contains, wildcards, regular expressions */
    }
    double d = vs->count[x->path] + 10.0, e = 0;
    for (uint32_t i = 0; i < t->narg; i++) {
        const vm_const *k = &c->consts.v[t->arg0 + i];
        if (t->kind == VM_T_EQ)
            e += k->type == VM_C_STR || k->type == VM_C_NUM ? 1 / d : k->type == VM_C_NULL ? 0.3 : 0.5;
        else if (t->kind == VM_T_PREFIX) {
            uint32_t m = values_with_prefix(vs, x->path, c->strs.v + k->s.off, k->s.len);
            e += (m ? m : 1) / d;
        } else if (t->kind == VM_T_SUFFIX)
            e += 0.1;
        else if (t->kind == VM_T_CIDR)
            e += 0.2;
        else
            e += t->flags & VM_TF_BAND ? 0.2 : 0.4;
    }
    return e < 1 ? e : 1;
}

/* Files the clauses of bus `bus` under the predicates that trigger them.  A clause that needs
 * all its predicates is listed under the one expected to pass least often (its trigger): when
 * that one passes, the others are tested; so the work per event follows the clauses whose
 * trigger passed, not every clause a common value appears in.  A clause that needs any one of
 * its predicates is listed under each of them. */
static void file_clauses(cc_comp *c, uint32_t bus)
{
    value_stats vs;
    stats_build(c, bus, &vs);
    for (uint32_t id = 0; id < c->xclauses.n; id++) {
        const cc_xclause *x = &c->xclauses.v[id];
        if (x->bus != bus)
            continue;
        u32vec *preds = &c->xclauses.v[id].preds;
        if (x->need == preds->n && preds->n > 0) {
            /* Rarest first, so that the first predicate tested after the trigger is the one
             * most likely to fail (an insertion sort: a clause has a few predicates). */
            double *e = cc_xmalloc(preds->n * sizeof *e);
            for (uint32_t i = 0; i < preds->n; i++) {
                double ei = pass_estimate(c, &vs, preds->v[i]);
                uint32_t pi = preds->v[i], k = i;
                for (; k > 0 && (e[k - 1] > ei || (e[k - 1] == ei &&
                                  rarity(c, preds->v[k - 1]) > rarity(c, pi))); k--) {
                    e[k] = e[k - 1];
                    preds->v[k] = preds->v[k - 1];
                }
                e[k] = ei;
                preds->v[k] = pi;
            }
            free(e);
            vec_push(c->xpreds.v[preds->v[0]].clauses, id);
            continue;
        }
        for (uint32_t i = 0; i < preds->n; i++)
            vec_push(c->xpreds.v[preds->v[i]].clauses, id);
    }
    stats_free(&vs);
}


/* Is pred a one-sided range (`p >= n`, `p < n`: one constant, no negation)? 1: a lower bound,
 * 2: an upper bound, 0: neither. */
static int one_side(cc_comp *c, uint32_t pred)
{
    const vm_test *t = &c->tests.v[c->xpreds.v[pred].test];
    if (t->kind != VM_T_RANGE || t->flags || t->narg != 1)
        return 0;
    const vm_const *k = &c->consts.v[t->arg0];
    if (isinf(k->hi) && k->hi > 0 && !isinf(k->lo))
        return 1;
    if (isinf(k->lo) && k->lo < 0 && !isinf(k->hi))
        return 2;
    return 0;
}

/* Merges `p >= lo` and `p < hi` of one clause into one band predicate on p, which the index
 * finds through the range tree like an interval, instead of two half-lines that most numbers
 * pass: with 10k rules `data.amount >= 10 i and data.amount < 10 i + 5` each event passed ~10k
 * predicates (18K events/s); as bands ~1 (1.2M events/s, bench/scaling.c "numeric").  The band
 * means exactly the pair also when p has several leaves (some leaf passes each bound: max >= lo
 * and min < hi); when arrays on p could tie the two to one element, the clause's depth (taken
 * before merging) sends the decision to the bytecode. */
static void merge_bands(cc_comp *c, uint32_t bus, u32vec *preds)
{
    for (uint32_t i = 0; i < preds->n; i++) {
        int si = one_side(c, preds->v[i]);
        if (!si)
            continue;
        for (uint32_t j = i + 1; j < preds->n; j++) {
            const cc_xpred *a = &c->xpreds.v[preds->v[i]], *b = &c->xpreds.v[preds->v[j]];
            if (a->path != b->path || one_side(c, preds->v[j]) != 3 - si)
                continue;
            const vm_const *lo = &c->consts.v[c->tests.v[(si == 1 ? a : b)->test].arg0];
            const vm_const *hi = &c->consts.v[c->tests.v[(si == 1 ? b : a)->test].arg0];
            uint32_t k = cc_const_range(c, lo->lo, lo->flags & VM_CF_LO_OPEN, hi->hi,
                                        hi->flags & VM_CF_HI_OPEN);
            uint32_t path = a->path;
            uint32_t band = pred_of(c, bus, path, cc_test(c, VM_T_RANGE, VM_TF_BAND, &k, 1));
            preds->v[i] = band;
            preds->v[j] = preds->v[--preds->n];
            break;
        }
    }
}

static void add_clause(cc_comp *c, uint32_t bus, uint32_t rule, u32vec preds, uint32_t need,
                       bool verify)
{
    uint32_t depth = shared_depth(c, &preds);
    if (need == preds.n && preds.n > 1) {
        merge_bands(c, bus, &preds);
        need = preds.n;
    }
    cc_xclause x = { bus, rule, need, verify ? VM_IXC_VERIFY : 0, depth, preds };
    vec_push(c->xclauses, x);
    for (uint32_t i = 0; i < preds.n; i++)
        c->xpreds.v[preds.v[i]].used = true;   /* (predicates no clause uses are dropped) */
    /* (filed under its trigger once the bus's rules are all known: file_clauses) */
}

void cc_index_rule(cc_comp *c, uint32_t rule, uint32_t bus, const ir *root)
{
    if (bus == VM_NONE)
        return;
    dnf d = to_dnf(c, bus, root);
    if (!d.overflow) {
        for (uint32_t i = 0; i < d.n; i++)
            add_clause(c, bus, rule, d.v[i].preds, d.v[i].preds.n, d.v[i].verify);
        free(d.v);   /* the clauses own the predicate lists now */
        return;
    }
    dnf_free(&d);
    u32vec t = { 0 };
    if (triggers(c, bus, root, &t)) {
        add_clause(c, bus, rule, t, 1, true);
    } else {
        free(t.v);
        add_clause(c, bus, rule, (u32vec){ 0 }, 0, true);
    }
}

/* ---- per-path dispatch ------------------------------------------------------------------------- */

/* A key filed during the build, before keys are merged into the table. */
typedef struct {
    uint8_t kind, aux;
    uint32_t ipath;
    vm_str key;
    uint32_t pred;
} raw_key;

typedef VEC(raw_key) raw_keys;

typedef struct {
    double lo, hi;
    bool lo_open, hi_open;
    uint32_t pred;
} raw_range;

typedef VEC(raw_range) raw_ranges;

/* Does key a come before key b: by path entry, kind, aux, string, then predicate? */
static inline bool key_before(const raw_key *a, const raw_key *b)
{
    if (a->ipath != b->ipath) return a->ipath < b->ipath;
    if (a->kind != b->kind) return a->kind < b->kind;
    if (a->aux != b->aux) return a->aux < b->aux;
    if (a->key.off != b->key.off) return a->key.off < b->key.off;
    if (a->key.len != b->key.len) return a->key.len < b->key.len;
    return a->pred < b->pred;
}

/* Sorts keys in place: quicksort (a median of three, Hoare's partition, the smaller side first
 * and the larger by looping), an insertion sort below 16.  Keys that compare equal are equal, so
 * any sort gives the same order.  qsort here (a merge sort through a callback, copying each
 * 20-byte record with memcpy, into a temporary array as large as the keys) was 17% of the
 * instructions compiling 10k issue193 rules. */
static void sort_keys(raw_key *v, size_t n)
{
    while (n > 16) {
        const raw_key *a = &v[0], *m = &v[n / 2], *z = &v[n - 1];
        raw_key p = key_before(a, m) ? (key_before(m, z) ? *m : key_before(a, z) ? *z : *a)
                                     : (key_before(a, z) ? *a : key_before(m, z) ? *z : *m);
        size_t i = 0, j = n - 1;
        for (;;) {
            while (key_before(&v[i], &p))
                i++;
            while (key_before(&p, &v[j]))
                j--;
            if (i >= j)
                break;
            raw_key t = v[i];
            v[i++] = v[j];
            v[j--] = t;
        }
        /* v[0..j] <= p <= v[j+1..n), both sides non-empty (p is a median of three) */
        size_t left = j + 1;
        if (left < n - left) {
            sort_keys(v, left);
            v += left;
            n -= left;
        } else {
            sort_keys(v + left, n - left);
            n = left;
        }
    }
    for (size_t i = 1; i < n; i++) {
        raw_key t = v[i];
        size_t j = i;
        for (; j > 0 && key_before(&t, &v[j - 1]); j--)
            v[j] = v[j - 1];
        v[j] = t;
    }
}

static int cmp_double(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return a < b ? -1 : a > b;
}

static int cmp_u32(const void *pa, const void *pb)
{
    uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
    return a < b ? -1 : a > b;
}

static int cmp_u64(const void *pa, const void *pb)
{
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    return a < b ? -1 : a > b;
}

typedef struct {
    double lo;
    uint32_t local;
} band_key;

static int cmp_band(const void *pa, const void *pb)
{
    const band_key *a = pa, *b = pb;
    if (a->lo != b->lo)
        return a->lo < b->lo ? -1 : 1;
    return a->local < b->local ? -1 : a->local > b->local;
}

static void put_key(raw_keys *keys, unsigned kind, unsigned aux, uint32_t ipath, vm_str key,
                    uint32_t pred)
{
    raw_key k = { (uint8_t)kind, (uint8_t)aux, ipath, key, pred };
    vec_push(*keys, k);
}

/* Appends the distinct values of v (sorted) to the refs pool; returns the first index. */
static uint32_t put_lengths(cc_comp *c, u32vec *v, uint32_t *n)
{
    if (v->n)
        qsort(v->v, v->n, sizeof *v->v, cmp_u32);
    uint32_t first = c->ix_refs.n, k = 0;
    for (uint32_t i = 0; i < v->n; i++)
        if (i == 0 || v->v[i] != v->v[i - 1]) {
            vec_push(c->ix_refs, v->v[i]);
            k++;
        }
    *n = k;
    return first;
}

/* Files predicate `pred` (index within the bus: `local`) of path entry `ip`.  Tests the
 * dispatcher can look up go to keys or ranges; the rest are run one by one. */
static void file_pred(cc_comp *c, uint32_t ip, uint32_t local, raw_keys *keys, raw_ranges *ranges,
                      u32vec *exists, u32vec *generic, u32vec *plens, u32vec *slens, u32vec *clens,
                      u32vec *bands)
{
    const cc_xpred *x = &c->xpreds.v[c->ix_local_to_pred.v[local]];
    const vm_test *t = &c->tests.v[x->test];
    bool ci = t->flags & VM_TF_CI;
    if (x->clauses.n == 0)
        return;   /* it triggers nothing: tested only when a clause needs it (vm/index.c) */
    if (t->flags & (VM_TF_NEG | VM_TF_ASNUM)) {
        vec_push(*generic, local);
        return;
    }
    switch (t->kind) {
    case VM_T_EXISTS:
        vec_push(*exists, local);
        return;
    case VM_T_EQ:
        for (uint32_t i = 0; i < t->narg; i++) {
            const vm_const *k = &c->consts.v[t->arg0 + i];
            switch (k->type) {
            case VM_C_STR:
                put_key(keys, ci ? VM_K_STR_CI : VM_K_STR, 0, ip, k->s, local);
                if (k->flags & VM_CF_IP)
                    put_key(keys, VM_K_IP, 0, ip, cc_str(c, (const char *)k->ip, 16), local);
                break;
            case VM_C_NUM: put_key(keys, VM_K_NUM, 0, ip, k->s, local); break;
            case VM_C_TRUE: put_key(keys, VM_K_TRUE, 0, ip, (vm_str){ 0, 0 }, local); break;
            case VM_C_FALSE: put_key(keys, VM_K_FALSE, 0, ip, (vm_str){ 0, 0 }, local); break;
            default: put_key(keys, VM_K_NULL, 0, ip, (vm_str){ 0, 0 }, local); break;
            }
        }
        return;
    case VM_T_PREFIX:
    case VM_T_SUFFIX:
        for (uint32_t i = 0; i < t->narg; i++) {
            const vm_const *k = &c->consts.v[t->arg0 + i];
            bool pre = t->kind == VM_T_PREFIX;
            put_key(keys, pre ? (ci ? VM_K_PREFIX_CI : VM_K_PREFIX) : (ci ? VM_K_SUFFIX_CI : VM_K_SUFFIX),
                    0, ip, k->s, local);
            vec_push(*(pre ? plens : slens), k->s.len);
        }
        return;
    case VM_T_CIDR:
        for (uint32_t i = 0; i < t->narg; i++) {
            const vm_const *k = &c->consts.v[t->arg0 + i];
            put_key(keys, VM_K_CIDR, k->bits, ip, cc_str(c, (const char *)k->ip, 16), local);
            vec_push(*clens, k->bits);
        }
        return;
    case VM_T_RANGE:
        for (uint32_t i = 0; i < t->narg; i++) {
            const vm_const *k = &c->consts.v[t->arg0 + i];
            raw_range r = { k->lo, k->hi, k->flags & VM_CF_LO_OPEN, k->flags & VM_CF_HI_OPEN, local };
            vec_push(*ranges, r);
        }
        if (t->flags & VM_TF_BAND)
            vec_push(*bands, local);
        return;
    default:
        vec_push(*generic, local);
        return;
    }
}

/* The slot of a range's end among the sorted bounds b[0..n): slot 2i+1 is b[i] itself, slot 2i
 * the open interval below it (slot 2n: above the last). */
static uint32_t bound_slot(const double *b, uint32_t n, double v, bool upper, bool open)
{
    if (isinf(v))
        return v < 0 ? 0 : 2 * n;
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (b[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* b[lo] == v: the bound is one of the points */
    uint32_t at = 2 * lo + 1;
    return open ? (upper ? at - 1 : at + 1) : at;
}

/* Builds the segment tree of one path's ranges: node lists are filed in ix_nodes (a complete
 * binary tree over a power of two of leaves; leaf s is the slot s). */
static void build_ranges(cc_comp *c, vm_ix_path *ixp, raw_ranges *rs)
{
    if (rs->n == 0)
        return;
    double *b = cc_xmalloc(rs->n * 2 * sizeof *b);
    uint32_t nb = 0;
    for (uint32_t i = 0; i < rs->n; i++) {
        if (!isinf(rs->v[i].lo))
            b[nb++] = rs->v[i].lo;
        if (!isinf(rs->v[i].hi))
            b[nb++] = rs->v[i].hi;
    }
    qsort(b, nb, sizeof *b, cmp_double);
    uint32_t k = 0;
    for (uint32_t i = 0; i < nb; i++)
        if (k == 0 || b[i] != b[k - 1])
            b[k++] = b[i];
    nb = k;
    uint32_t slots = 2 * nb + 1, leaves = 1;
    while (leaves < slots)
        leaves *= 2;
    /* Gather each node's predicates: a range [a, b] of slots is covered by O(log) nodes. */
    u32vec *lists = calloc(2 * leaves, sizeof *lists);
    if (!lists)
        abort();
    for (uint32_t i = 0; i < rs->n; i++) {
        const raw_range *r = &rs->v[i];
        uint32_t a = bound_slot(b, nb, r->lo, false, r->lo_open);
        uint32_t z = bound_slot(b, nb, r->hi, true, r->hi_open);
        if (a > z)
            continue;   /* empty, as (5, 5) */
        for (uint32_t l = a + leaves, h = z + leaves + 1; l < h; l /= 2, h /= 2) {
            if (l & 1) {
                vec_push(lists[l], r->pred);
                l++;
            }
            if (h & 1) {
                h--;
                vec_push(lists[h], r->pred);
            }
        }
    }
    ixp->bound0 = c->ix_bounds.n;
    ixp->nbound = nb;
    for (uint32_t i = 0; i < nb; i++)
        vec_push(c->ix_bounds, b[i]);
    ixp->node0 = c->ix_nodes.n;
    /* Where it costs little memory (ranges that overlap little, as disjoint ones), lay out one
     * list per slot instead: the predicates of every node from the slot's leaf up to the root.
     * A number then takes its binary search and one list, not one node per level: with 100k
     * disjoint ranges the tree walk was 19 cache misses an event: bench_scaling "numeric" at 100k
     * ranges went from 539K to 888K events/s with this layout. */
    uint64_t tree_refs = 0, flat_refs = 0;
    for (uint32_t i = 0; i < 2 * leaves; i++)
        tree_refs += lists[i].n;
    for (uint32_t s = 0; s < slots; s++)
        for (uint32_t node = s + leaves; node >= 1; node /= 2)
            flat_refs += lists[node].n;
    if (flat_refs <= 2 * tree_refs + slots) {
        ixp->nnode = slots;   /* odd: one list per slot (a tree has an even number of nodes) */
        for (uint32_t s = 0; s < slots; s++) {
            vm_ix_node nd = { c->ix_refs.n, 0 };
            for (uint32_t node = s + leaves; node >= 1; node /= 2)
                for (uint32_t j = 0; j < lists[node].n; j++)
                    vec_push(c->ix_refs, lists[node].v[j]);
            nd.nlist = c->ix_refs.n - nd.list0;
            vec_push(c->ix_nodes, nd);
        }
    } else {
        ixp->nnode = 2 * leaves;
        for (uint32_t i = 0; i < 2 * leaves; i++) {
            vm_ix_node nd = { c->ix_refs.n, lists[i].n };
            for (uint32_t j = 0; j < lists[i].n; j++)
                vec_push(c->ix_refs, lists[i].v[j]);
            vec_push(c->ix_nodes, nd);
        }
    }
    for (uint32_t i = 0; i < 2 * leaves; i++)
        free(lists[i].v);
    free(lists);
    free(b);
}

/* Merges equal keys and lays the hash table out (open addressing, linear probing, half full). */
static void build_keys(cc_comp *c, raw_keys *keys)
{
    sort_keys(keys->v, keys->n);
    for (uint32_t i = 0; i < keys->n;) {
        uint32_t j = i;
        vm_ix_key k = { keys->v[i].kind, keys->v[i].aux, keys->v[i].ipath, keys->v[i].key,
                        c->ix_refs.n, 0 };
        while (j < keys->n && keys->v[j].kind == k.kind && keys->v[j].aux == k.aux &&
               keys->v[j].ipath == k.ipath && keys->v[j].key.off == k.key.off &&
               keys->v[j].key.len == k.key.len) {
            if (j == i || keys->v[j].pred != keys->v[j - 1].pred) {
                vec_push(c->ix_refs, keys->v[j].pred);
                k.nlist++;
            }
            j++;
        }
        vec_push(c->ix_keys, k);
        i = j;
    }
}

static void build_table(cc_comp *c)
{
    uint32_t cap = 16;
    while (cap < c->ix_keys.n * 2)
        cap *= 2;
    uint32_t *slots = calloc(cap, sizeof *slots);
    if (!slots)
        abort();
    for (uint32_t i = 0; i < c->ix_keys.n; i++) {
        const vm_ix_key *k = &c->ix_keys.v[i];
        uint64_t h = vm_ix_hash(k->kind, k->aux, k->ipath, c->strs.v + k->key.off, k->key.len);
        for (h &= cap - 1; slots[h]; h = (h + 1) & (cap - 1))
            ;
        slots[h] = i + 1;
    }
    for (uint32_t i = 0; i < cap; i++)
        vec_push(c->ix_slots, slots[i]);
    free(slots);
}

/* Builds the index of bus `bus` from the predicates and clauses its rules made. */
static void build_bus(cc_comp *c, uint32_t bus, raw_keys *keys)
{
    vm_ix_bus xb = { c->ix_paths.n, 0, c->ix_preds.n, 0, c->ix_clauses.n, 0, 0, 0 };
    file_clauses(c, bus);
    /* The bus's predicates, by path: local numbers are their order in ix_preds. */
    c->ix_local_to_pred.n = 0;
    for (uint32_t i = 0; i < c->xpreds.n; i++)
        if (c->xpreds.v[i].bus == bus && c->xpreds.v[i].used)
            vec_push(c->ix_local_to_pred, i);
    uint32_t npred = c->ix_local_to_pred.n;
    /* Sort by path, then creation order, so that each path's predicates are together.  (An
     * insertion sort here took 73% of compiling 20k rules; the pairs make qsort stable.) */
    uint64_t *order = cc_xmalloc((npred + 1) * sizeof *order);
    for (uint32_t i = 0; i < npred; i++) {
        uint32_t v = c->ix_local_to_pred.v[i];
        order[i] = (uint64_t)c->xpreds.v[v].path << 32 | v;
    }
    qsort(order, npred, sizeof *order, cmp_u64);
    for (uint32_t i = 0; i < npred; i++)
        c->ix_local_to_pred.v[i] = (uint32_t)order[i];
    free(order);
    uint32_t *local_of = cc_xmalloc((c->xpreds.n + 1) * sizeof *local_of);
    for (uint32_t i = 0; i < npred; i++)
        local_of[c->ix_local_to_pred.v[i]] = i;
    /* Clauses of the bus, with their predicates renumbered. */
    uint32_t *clause_of = cc_xmalloc((c->xclauses.n + 1) * sizeof *clause_of);
    for (uint32_t i = 0; i < c->xclauses.n; i++) {
        const cc_xclause *x = &c->xclauses.v[i];
        if (x->bus != bus)
            continue;
        vm_ix_clause cl = { x->rule, x->need, x->flags, x->depth, c->ix_refs.n, x->preds.n };
        for (uint32_t j = 0; j < x->preds.n; j++)
            vec_push(c->ix_refs, local_of[x->preds.v[j]]);
        clause_of[i] = c->ix_clauses.n - xb.clause0;
        vec_push(c->ix_clauses, cl);
    }
    xb.nclause = c->ix_clauses.n - xb.clause0;
    xb.always0 = c->ix_refs.n;
    for (uint32_t i = 0; i < xb.nclause; i++)
        if (c->ix_clauses.v[xb.clause0 + i].need == 0)
            vec_push(c->ix_refs, i);
    xb.nalways = c->ix_refs.n - xb.always0;
    for (uint32_t i = 0; i < npred; i++) {
        const cc_xpred *x = &c->xpreds.v[c->ix_local_to_pred.v[i]];
        vm_ix_pred pr = { x->path, x->test, c->ix_refs.n, x->clauses.n };
        for (uint32_t j = 0; j < x->clauses.n; j++)
            vec_push(c->ix_refs, clause_of[x->clauses.v[j]]);
        vec_push(c->ix_preds, pr);
    }
    xb.npred = npred;
    /* Paths, each with its dispatch. */
    for (uint32_t i = 0; i < npred;) {
        uint32_t path = c->xpreds.v[c->ix_local_to_pred.v[i]].path, j = i;
        uint32_t ip = c->ix_paths.n;
        vm_ix_path ixp = { .path = path };
        raw_ranges ranges = { 0 };
        u32vec exists = { 0 }, generic = { 0 }, plens = { 0 }, slens = { 0 }, clens = { 0 };
        u32vec bands = { 0 };
        uint32_t keys_before = keys->n;
        for (; j < npred && c->xpreds.v[c->ix_local_to_pred.v[j]].path == path; j++)
            file_pred(c, ip, j, keys, &ranges, &exists, &generic, &plens, &slens, &clens, &bands);
        for (uint32_t k = keys_before; k < keys->n; k++)
            ixp.kinds |= 1u << keys->v[k].kind;
        /* A path with nothing filed (its predicates trigger no clause) gets no entry: its
         * leaves are not dispatched at all. */
        if (keys->n > keys_before || ranges.n || exists.n || generic.n) {
            ixp.exists0 = c->ix_refs.n;
            for (uint32_t k = 0; k < exists.n; k++)
                vec_push(c->ix_refs, exists.v[k]);
            ixp.nexists = exists.n;
            ixp.generic0 = c->ix_refs.n;
            for (uint32_t k = 0; k < generic.n; k++)
                vec_push(c->ix_refs, generic.v[k]);
            ixp.ngeneric = generic.n;
            ixp.plen0 = put_lengths(c, &plens, &ixp.nplen);
            ixp.slen0 = put_lengths(c, &slens, &ixp.nslen);
            ixp.clen0 = put_lengths(c, &clens, &ixp.nclen);
            build_ranges(c, &ixp, &ranges);
            /* Bands by lower bound, then predicate (qsort on pairs: a stable order). */
            band_key *order = cc_xmalloc((bands.n + 1) * sizeof *order);
            for (uint32_t k = 0; k < bands.n; k++) {
                const cc_xpred *x = &c->xpreds.v[c->ix_local_to_pred.v[bands.v[k]]];
                order[k] = (band_key){ c->consts.v[c->tests.v[x->test].arg0].lo, bands.v[k] };
            }
            if (bands.n)
                qsort(order, bands.n, sizeof *order, cmp_band);
            for (uint32_t k = 0; k < bands.n; k++)
                bands.v[k] = order[k].local;
            free(order);
            ixp.band0 = c->ix_refs.n;
            for (uint32_t k = 0; k < bands.n; k++)
                vec_push(c->ix_refs, bands.v[k]);
            ixp.nband = bands.n;
            vec_push(c->ix_paths, ixp);
        }
        free(bands.v);
        free(ranges.v);
        free(exists.v);
        free(generic.v);
        free(plens.v);
        free(slens.v);
        free(clens.v);
        i = j;
    }
    xb.npath = c->ix_paths.n - xb.path0;
    vec_push(c->ix_buses, xb);
    free(local_of);
    free(clause_of);
}

void cc_index_build(cc_comp *c)
{
    raw_keys keys = { 0 };
    for (uint32_t b = 0; b < c->pbuses.n; b++)
        build_bus(c, b, &keys);
    build_keys(c, &keys);
    build_table(c);
    free(keys.v);
}
