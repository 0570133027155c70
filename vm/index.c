/*
 * index.c — matching through the index (vm.h, docs/index.md): every leaf that some rule looks
 * at is dispatched once to the predicates it passes; a clause waits on its rarest predicate, and
 * when that passes, its other predicates are tested; complete clauses make their rules match,
 * or candidates that the rule's bytecode confirms.  The work per event follows the event's
 * leaves and the predicates they pass, not the number of rules.
 */
#include <stdlib.h>
#include <string.h>

#include "vm_int.h"

uint64_t vm_ix_hash(unsigned kind, unsigned aux, uint32_t ipath, const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ull ^ ((uint64_t)ipath << 16 | kind << 8 | aux);
    h *= 1099511628211ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 1099511628211ull;
    return h ^ (h >> 32);
}

/* The key's predicate list, or NULL.  (In line in its two callers: a call was ~25 of the ~75
 * instructions a look-up took, CityLots SUFFIX_EQUALS_IGNORE_CASE.) */
static inline __attribute__((always_inline)) const vm_ix_key *
find_key(const vm_program *p, unsigned kind, unsigned aux, uint32_t ipath, const char *key,
         size_t len)
{
    uint32_t mask = p->nix_slots - 1;
    if (!p->nix_slots)
        return NULL;
    const uint64_t *slots = p->derived->ix_tagged;
    uint64_t hash = vm_probe_hash(vm_key_seed(kind, aux, ipath), key, len), tag = hash >> 32;
    for (uint64_t h = hash & mask; (uint32_t)slots[h]; h = (h + 1) & mask) {
        if (slots[h] >> 32 != tag)
            continue;
        const vm_ix_key *k = &p->ix_keys[(uint32_t)slots[h] - 1];
        if (k->kind == kind && k->aux == aux && k->ipath == ipath && k->key.len == len &&
            vm_same_bytes(p->strs + k->key.off, key, len))
            return k;
    }
    return NULL;
}

/* The mark of a predicate that passed in this event (vm_pred_mark; one less: tested on
 * demand, and failed). */
static inline uint32_t passed_mark(const vm_ctx *c)
{
    return 2 * c->epoch + 1;
}

/* How far ahead the matcher asks for memory it will read: the mark of a predicate PF_MARK
 * further in a key's list, the value ids of the candidate PF_IDS further on.  The marks,
 * records and ids of ~140 candidates an event (10k issue193 rules) are each a cache miss in
 * another place, and nothing in deciding one waits on another, so their misses can overlap. */
enum { PF_MARK = 4, PF_IDS = 4 };

/* Marks a predicate of bus b as passed (once per event); the clauses it triggers become
 * candidates, decided once every leaf has been dispatched (through its records, vm_ix_rec,
 * asked for now: they are read after the other candidates' marks, whose misses overlap). */
static inline bool fire(vm_ctx *c, const vm_ix_bus *b, uint32_t pred)
{
    uint32_t g = b->pred0 + pred;
    vm_pred_mark *m = &c->pred_mark[g];
    if (m->mark == passed_mark(c))
        return true;
    m->mark = passed_mark(c);
    __builtin_prefetch(&c->p->derived->ix_recs[m->rec]);
    return VM_BUF_PUSH(c->candidates, g);
}

/* Does band k (`p >= lo and p < hi`, each bound open or closed) hold for numbers that range from
 * min to max: does max pass the lower bound and min the upper one? */
static bool band_holds(const vm_const *k, double min, double max)
{
    bool above = k->flags & VM_CF_LO_OPEN ? max > k->lo : max >= k->lo;
    bool below = k->flags & VM_CF_HI_OPEN ? min < k->hi : min <= k->hi;
    return above && below;
}

/* The value id of string leaf fi of path (struct vm_derived), looked up once per event. */
static uint32_t field_vid_slow(vm_ctx *c, const char *json, uint32_t fi, uint32_t path)
{
    vm_text s;
    uint32_t v = vm_field_text(c, json, &c->fields.v[fi], &s) ? vm_value_id(c->p, path, s.s, s.n)
                                                             : VM_NONE;
    v = v == VM_NONE ? VM_NONE : c->p->derived->vid_local[v];
    c->field_vid.v[fi] = v;
    return v;
}

static inline uint32_t field_vid(vm_ctx *c, const char *json, uint32_t fi, uint32_t path)
{
    uint32_t v = c->field_vid.v[fi];
    return v != VM_VID_UNSET ? v : field_vid_slow(c, json, fi, path);
}

/* Number leaf fi as a double, parsed once per event (vm_number_value; the leaf's field_vid
 * entry says whether it was): false when it lies beyond the double range.  A number that ranges
 * and bands look at was parsed for each, and again when a clause tested a range on it: ~4
 * times an event of ~300 instructions each on the routing row (its coordinates have 17
 * digits): the routing row 17,211 -> 16,601 instructions an event, COMBO 35,349 -> 31,548,
 * NUMERIC 5,340 -> 5,014 (callgrind, trusted). */
static inline bool field_number(vm_ctx *c, const char *json, uint32_t fi, double *d)
{
    uint32_t *known = &c->field_vid.v[fi];
    if (*known == VM_VID_UNSET) {
        const vm_field *f = &c->fields.v[fi];
        *known = vm_number_value(json + f->off, f->len, &c->field_num.v[fi]) ? 0 : VM_NONE;
    }
    *d = c->field_num.v[fi];
    return *known == 0;
}

/* Is value id v among the n sorted ids?  Without branches on the data: most lookups fail,
 * each in a different list, and a mispredicted halving costs more than the compare.  (The
 * step is arithmetic because GCC made `c ? base + half : base` a jump: callgrind's branch
 * simulation counted ~92 mispredicted halvings an event with the 10k issue193 rules.) */
static inline bool has_vid(const uint16_t *ids, uint32_t n, uint32_t v)
{
    size_t at = 0;
    if (n == 0)
        return false;
    while (n > 1) {
        uint32_t half = n / 2;
        at += half & (0u - (uint32_t)(ids[at + half - 1] < v));
        n -= half;
    }
    return ids[at] == v;
}

/* Does the string s[0..n), a leaf with no escape, pass test t, whose quick form (struct
 * vm_derived, test_quick) is q, compared where it lies in the event: 1 yes, 0 no, -1 it cannot
 * tell here (ignore-case, and a byte past ASCII, whose folding may change lengths).  *ascii
 * caches whether the leaf is ASCII (-1: not known yet) for the other tests of the leaf.
 * vm_leaf_passes unescapes and case-folds the leaf for each test, then compares through its
 * general paths; this is a length test and a short compare.  Callgrind, instructions an event,
 * trusted, 2,000 events: the CityLots ANYTHING_BUT_IGNORE_CASE row 7,487 -> 6,819,
 * ANYTHING_BUT_PREFIX 6,937 -> 6,681, ANYTHING_BUT_WILDCARD 5,942 -> 5,587 (wildcards), the
 * routing row's events with the COMBO rules (25 anything-but) 19,903 -> 18,576. */
static int quick_passes(const vm_program *p, unsigned q, const vm_test *t, const unsigned char *s,
                        size_t n, int *ascii)
{
    if (q & VM_Q_CI) {
        if (*ascii < 0) {
            size_t i = 0;
            while (i < n && s[i] < 0x80)
                i++;
            *ascii = i == n;
        }
        if (!*ascii)
            return -1;
    }
    unsigned op = q & ~VM_Q_CI;
    const vm_const *k = p->consts + t->arg0, *end = k + t->narg;
    for (; k < end; k++) {
        size_t m = k->s.len;
        const unsigned char *ks = (const unsigned char *)vm_s(p, k->s);
        if (op == VM_Q_WILDCARD) {
            if (vm_wildcard_match((const char *)ks, m, (const char *)s, n))
                return 1;
            continue;
        }
        if (m > n || (op == VM_Q_EQ && m != n))
            continue;
        const unsigned char *at = op == VM_Q_SUFFIX ? s + n - m : s;
        if (!(q & VM_Q_CI)) {
            if (memcmp(at, ks, m) == 0)
                return 1;
            continue;
        }
        size_t i = 0;
        while (i < m && (at[i] >= 'A' && at[i] <= 'Z' ? at[i] + 32 : at[i]) == ks[i])
            i++;
        if (i == m)
            return 1;
    }
    return 0;
}

/* Does leaf fi pass the test of predicate g (before VM_TF_NEG)?  A plain string equality
 * compares value ids (struct vm_derived): the leaf's id is looked up once per event, then found
 * or not by a binary search in the predicate's ids.  With the 100k issue193 rules this took
 * matching from ~813K to ~537K instructions an event (callgrind; vm_leaf_passes and its
 * memcmp were 45% of it), and 10k rules from ~30K to ~55K events/s. */
static bool leaf_passes(vm_ctx *c, const char *json, uint32_t g, const vm_test *t, uint32_t fi)
{
    const struct vm_derived *d = c->p->derived;
    const vm_field *f = &c->fields.v[fi];
    uint32_t n = vm_pred_nvid(d, g);
    if (f->type == VM_J_NUM && t->kind == VM_T_RANGE && !(t->flags & VM_TF_ASNUM)) {
        double v;
        if (!field_number(c, json, fi, &v))
            return false;   /* beyond the double range: in no range (vm_leaf_passes) */
        for (const vm_const *k = c->p->consts + t->arg0, *end = k + t->narg; k < end; k++)
            if (vm_in_range(k, v))
                return true;
        return false;
    }
    if (n == VM_NONE || f->type != VM_J_STR) {
        unsigned q = d->test_quick[t - c->p->tests];
        int ascii = -1, r = q && f->type == VM_J_STR && !f->escaped
                                ? quick_passes(c->p, q, t, (const unsigned char *)json + f->off,
                                               f->len, &ascii)
                                : -1;
        return r >= 0 ? r : vm_leaf_passes(c, json, t, f);
    }
    uint32_t v = field_vid(c, json, fi, c->p->ix_preds[g].path);
    return v != VM_NONE && has_vid(d->vids + vm_pred_vid0(d, g), n, v);
}

/* Does a leaf of path have one of the n value ids: 1 yes, 0 no, -1 a leaf of the path is not
 * a string (pred_passed decides). */
static inline int vids_pass(vm_ctx *c, const char *json, uint32_t path, uint32_t vid0, uint32_t n)
{
    const uint16_t *ids = c->p->derived->vids + vid0;
    for (uint32_t f = c->first[path]; f != VM_NONE; f = c->fields.v[f].next) {
        if (c->fields.v[f].type != VM_J_STR)
            return -1;
        uint32_t v = field_vid(c, json, f, path);
        if (v != VM_NONE && has_vid(ids, n, v))
            return 1;
    }
    return 0;
}

/* The signature of the value ids of path's leaves in this event (vm_vid_sig): a list whose
 * signature shares no bit with it holds none of them.  ~0 if a leaf is not a string (the ids
 * cannot decide).  Once per event and path. */
static uint32_t path_sig_slow(vm_ctx *c, const char *json, uint32_t path)
{
    uint32_t sig = 0;
    for (uint32_t f = c->first[path]; f != VM_NONE; f = c->fields.v[f].next) {
        if (c->fields.v[f].type != VM_J_STR) {
            sig = ~0u;
            break;
        }
        uint32_t v = field_vid(c, json, f, path);
        sig |= v != VM_NONE ? vm_vid_sig(v) : 0;
    }
    c->sig_stamp[path] = c->epoch;
    c->path_sig[path] = sig;
    return sig;
}

static inline uint32_t path_sig(vm_ctx *c, const char *json, uint32_t path)
{
    return c->sig_stamp[path] == c->epoch ? c->path_sig[path] : path_sig_slow(c, json, path);
}

/* Are the clauses a passed predicate triggers worth a look in this event?  Its mark entry m
 * holds the signature of the ids its records' next predicates test when they all test ids on
 * one path (vm_pred_mark; ~0: it cannot tell); where that shares no bit with the path's leaves,
 * every record would fail, and none is read (live_records). */
static inline bool worth_deciding(vm_ctx *c, const char *json, const vm_pred_mark *m)
{
    uint32_t sig = m->sig;
    return (sig == ~0u ? sig : path_sig(c, json, m->path) & sig) != 0;
}

/* Does some leaf of predicate x's path pass it?  For predicates that trigger no clause: the
 * compiler files them nowhere (so no leaf is dispatched to them), and they are tested here only
 * when a clause that needs them has its trigger pass.  With the 10,000 rules of the issue193
 * workload, one predicate in three passed each event and each was marked at dispatch; tested on
 * demand, only those of triggered clauses cost anything.  A band (`p >= a and p < b`) means some
 * leaf passes each bound, as at dispatch (fire_bands). */
static bool test_pred(vm_ctx *c, const char *json, uint32_t g)
{
    const vm_ix_pred *x = &c->p->ix_preds[g];
    const vm_test *t = &c->p->tests[x->test];
    if (t->flags & VM_TF_BAND) {
        double min = 1.0 / 0.0, max = -min;
        for (uint32_t f = c->first[x->path]; f != VM_NONE; f = c->fields.v[f].next) {
            const vm_field *fl = &c->fields.v[f];
            double d;
            if (fl->type == VM_J_NUM && field_number(c, json, f, &d)) {
                min = d < min ? d : min;
                max = d > max ? d : max;
            }
        }
        return min <= max && band_holds(&c->p->consts[t->arg0], min, max);
    }
    for (uint32_t f = c->first[x->path]; f != VM_NONE; f = c->fields.v[f].next) {
        bool pass = leaf_passes(c, json, g, t, f);
        if ((t->flags & VM_TF_NEG) ? !pass : pass)
            return true;
    }
    return false;
}

/* Has predicate pred of bus b passed in this event?  One that triggers clauses was dispatched
 * (a mark); one that triggers none is tested now, once per event. */
static bool pred_passed(vm_ctx *c, const vm_ix_bus *b, const char *json, uint32_t pred)
{
    uint32_t g = b->pred0 + pred;
    vm_pred_mark *m = &c->pred_mark[g];
    if (m->mark == passed_mark(c))
        return true;
    if (c->p->ix_preds[g].nclause || m->mark == passed_mark(c) - 1)
        return false;
    bool pass = test_pred(c, json, g);
    m->mark = passed_mark(c) - !pass;
    return pass;
}

/* Have all the predicates a clause needs passed? */
static bool clause_complete(vm_ctx *c, const vm_ix_bus *b, const char *json, const vm_ix_clause *cl)
{
    const uint32_t *pr = c->p->ix_refs + cl->pred0;
    if (cl->need < cl->npred || cl->npred == 1)
        return true;   /* any one of them, or its only one: it was triggered by it */
    for (uint32_t i = 0; i < cl->npred; i++)
        if (!pred_passed(c, b, json, pr[i]))
            return false;
    return true;
}

/* Fires the n predicates of bus b at ix_refs[list0 ..] (fire, with room made for all at once:
 * a popular value's list is long, ~77 predicates an event for the tenant at 10k issue193
 * rules, and the loop then keeps all it needs in registers; the marks a few entries further
 * on are asked for now). */
static bool fire_list_n(vm_ctx *c, const vm_ix_bus *b, uint32_t list0, uint32_t n)
{
    if (c->candidates.cap - c->candidates.n < n &&
        !vm_buf_grow((void **)&c->candidates.v, &c->candidates.cap, sizeof *c->candidates.v,
                     c->candidates.n + n))
        return false;
    const uint32_t *l = c->p->ix_refs + list0;
    const vm_ix_rec *recs = c->p->derived->ix_recs;
    vm_pred_mark *marks = c->pred_mark + b->pred0;
    uint32_t *cand = c->candidates.v, nc = c->candidates.n, passed = passed_mark(c);
    for (uint32_t i = 0; i < n; i++) {
        if (i + PF_MARK < n)
            __builtin_prefetch(&marks[l[i + PF_MARK]]);
        vm_pred_mark *m = &marks[l[i]];
        if (m->mark == passed)
            continue;
        m->mark = passed;
        __builtin_prefetch(&recs[m->rec]);
        cand[nc++] = b->pred0 + l[i];
    }
    c->candidates.n = nc;
    return true;
}

/* (Told in line when a list or a path's lengths are empty, as most are: a call each was ~60
 * instructions an event of the CityLots rows: ANYTHING_BUT 7,615 -> 7,056, EXACT 4,110 -> 3,974,
 * callgrind.) */
static inline bool fire_list(vm_ctx *c, const vm_ix_bus *b, uint32_t list0, uint32_t n)
{
    return n == 0 || fire_list_n(c, b, list0, n);
}

static bool fire_key(vm_ctx *c, const vm_ix_bus *b, unsigned kind, unsigned aux, uint32_t ipath,
                     const char *key, size_t len)
{
    const vm_ix_key *k = find_key(c->p, kind, aux, ipath, key, len);
    return !k || fire_list(c, b, k->list0, k->nlist);
}

/* Looks up every prefix (or suffix) of t whose length some key of the path has. */
static bool fire_affixes_n(vm_ctx *c, const vm_ix_bus *b, uint32_t ipath, unsigned kind,
                           uint32_t len0, uint32_t nlen, const char *t, size_t n, bool suffix)
{
    const uint32_t *lens = c->p->ix_refs + len0;
    for (uint32_t i = 0; i < nlen && lens[i] <= n; i++)
        if (!fire_key(c, b, kind, 0, ipath, suffix ? t + n - lens[i] : t, lens[i]))
            return false;
    return true;
}

static inline bool fire_affixes(vm_ctx *c, const vm_ix_bus *b, uint32_t ipath, unsigned kind,
                                uint32_t len0, uint32_t nlen, const char *t, size_t n, bool suffix)
{
    return nlen == 0 || fire_affixes_n(c, b, ipath, kind, len0, nlen, t, n, suffix);
}

/* May a key of affix kind `kind` (VM_K_PREFIX to VM_K_SUFFIX_CI) of path entry ipath match the
 * text t[0..n)?  False only when none can: the filter (struct vm_derived, affix_bits) has no key
 * that begins (or ends) with the text's first (or last) two bytes, folded for the _CI kinds
 * when both are ASCII (the folded text then begins or ends with them folded).  Most of an
 * event's values match no affix: their look-ups, one per key length, and the folding of the
 * whole text are left out (CityLots SUFFIX_EQUALS_IGNORE_CASE, validating, in-process A/B over
 * 30,000 events of the whole file: x1.05-1.08). */
static inline bool affix_may(const vm_program *p, uint32_t ipath, unsigned kind, const char *t,
                             size_t n)
{
    if (n < 2)
        return true;
    bool suffix = kind == VM_K_SUFFIX || kind == VM_K_SUFFIX_CI;
    unsigned char a = (unsigned char)t[suffix ? n - 2 : 0], z = (unsigned char)t[suffix ? n - 1 : 1];
    if (kind == VM_K_PREFIX_CI || kind == VM_K_SUFFIX_CI) {
        if ((a | z) & 0x80)
            return true;
        a = vm_fold_ascii(a);
        z = vm_fold_ascii(z);
    }
    unsigned bit = vm_affix_bit(a, z);
    return vm_affix_slot(p->derived, ipath, kind)[bit / 64] >> (bit % 64) & 1;
}

/* The range slot of d among the sorted bounds (see compiler/index.c, bound_slot). */
static uint32_t value_slot(const double *bounds, uint32_t n, double d)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (bounds[mid] < d)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && bounds[lo] == d ? 2 * lo + 1 : 2 * lo;
}

/* Dispatches one leaf of path entry ipath to the predicates it passes. */
static bool dispatch(vm_ctx *c, const vm_ix_bus *b, uint32_t ipath, const char *json, uint32_t fi)
{
    const vm_field *f = &c->fields.v[fi];
    const vm_program *p = c->p;
    const vm_ix_path *ix = &p->ix_paths[ipath];
    uint32_t kinds = ix->kinds;
    if (!fire_list(c, b, ix->exists0, ix->nexists))
        return false;
    switch (f->type) {
    case VM_J_STR: {
        vm_text t;
        if (!kinds && !ix->ngeneric)
            break;
        if (!vm_field_text(c, json, f, &t))
            return false;
        if (kinds & (1u << VM_K_STR)) {
            const vm_ix_key *k = find_key(p, VM_K_STR, 0, ipath, t.s, t.n);
            if (c->field_vid.v[fi] == VM_VID_UNSET && (k || p->derived->keys_hold_vids[ipath]))
                c->field_vid.v[fi] = k ? p->derived->key_vid[k - p->ix_keys] : VM_NONE;
            if (k && !fire_list(c, b, k->list0, k->nlist))
                return false;
        }
        if (!fire_affixes(c, b, ipath, VM_K_PREFIX, ix->plen0,
                          (kinds & (1u << VM_K_PREFIX)) && affix_may(p, ipath, VM_K_PREFIX, t.s, t.n)
                              ? ix->nplen : 0, t.s, t.n, false) ||
            !fire_affixes(c, b, ipath, VM_K_SUFFIX, ix->slen0,
                          (kinds & (1u << VM_K_SUFFIX)) && affix_may(p, ipath, VM_K_SUFFIX, t.s, t.n)
                              ? ix->nslen : 0, t.s, t.n, true))
            return false;
        if (kinds & ((1u << VM_K_IP) | (1u << VM_K_CIDR))) {
            uint8_t ip[16];
            if (vm_parse_ip(t.s, t.n, ip)) {
                if ((kinds & (1u << VM_K_IP)) &&
                    !fire_key(c, b, VM_K_IP, 0, ipath, (const char *)ip, 16))
                    return false;
                const uint32_t *lens = p->ix_refs + ix->clen0;
                for (uint32_t i = 0; i < ix->nclen && (kinds & (1u << VM_K_CIDR)); i++) {
                    uint8_t masked[16];
                    int bits = (int)lens[i];
                    for (int j = 0; j < 16; j++, bits -= 8)
                        masked[j] = ip[j] & (bits >= 8 ? 0xff : bits <= 0 ? 0 : (uint8_t)(0xff << (8 - bits)));
                    if (!fire_key(c, b, VM_K_CIDR, lens[i], ipath, (const char *)masked, 16))
                        return false;
                }
            }
        }
        if (kinds & ((1u << VM_K_STR_CI) | (1u << VM_K_PREFIX_CI) | (1u << VM_K_SUFFIX_CI))) {
            /* (the filters on the text as it is: nothing is folded when no key can match) */
            uint32_t np = (kinds & (1u << VM_K_PREFIX_CI)) &&
                                  affix_may(p, ipath, VM_K_PREFIX_CI, t.s, t.n) ? ix->nplen : 0,
                     ns = (kinds & (1u << VM_K_SUFFIX_CI)) &&
                                  affix_may(p, ipath, VM_K_SUFFIX_CI, t.s, t.n) ? ix->nslen : 0;
            if (!(kinds & (1u << VM_K_STR_CI)) && !np && !ns)
                break;
            if (!vm_fold_text(c, &t))
                return false;
            if ((kinds & (1u << VM_K_STR_CI)) && !fire_key(c, b, VM_K_STR_CI, 0, ipath, t.s, t.n))
                return false;
            if (!fire_affixes(c, b, ipath, VM_K_PREFIX_CI, ix->plen0, np, t.s, t.n, false) ||
                !fire_affixes(c, b, ipath, VM_K_SUFFIX_CI, ix->slen0, ns, t.s, t.n, true))
                return false;
        }
        break;
    }
    case VM_J_NUM: {
        const char *s = json + f->off;
        vm_text canon;
        if ((kinds & (1u << VM_K_NUM)) &&
            (!vm_canon_text(c, s, f->len, &canon) ||
             !fire_key(c, b, VM_K_NUM, 0, ipath, canon.s, canon.n)))
            return false;
        double d;
        if (ix->nnode && field_number(c, json, fi, &d)) {
            uint32_t slot = value_slot(p->ix_bounds + ix->bound0, ix->nbound, d);
            if (ix->nnode & 1) {
                /* One list per slot: every range that holds it. */
                const vm_ix_node *nd = &p->ix_nodes[ix->node0 + slot];
                if (!fire_list(c, b, nd->list0, nd->nlist))
                    return false;
            } else {
                /* The tree: every node from the value's leaf to the root holds ranges that
                 * contain it. */
                for (uint32_t node = ix->nnode / 2 + slot; node >= 1; node /= 2) {
                    const vm_ix_node *nd = &p->ix_nodes[ix->node0 + node];
                    if (!fire_list(c, b, nd->list0, nd->nlist))
                        return false;
                }
            }
        }
        break;
    }
    case VM_J_TRUE:
    case VM_J_FALSE:
    case VM_J_NULL: {
        unsigned kind = f->type == VM_J_TRUE ? VM_K_TRUE : f->type == VM_J_FALSE ? VM_K_FALSE : VM_K_NULL;
        if ((kinds & (1u << kind)) && !fire_key(c, b, kind, 0, ipath, "", 0))
            return false;
        break;
    }
    }
    /* The predicates no lookup can find: each runs its test on the leaf, in place when it can
     * (quick_passes; a plain equality with value ids is one search, leaf_passes).  (The loop
     * looks at the leaf once for all its tests: the routing row 17,437 -> 17,211 instructions
     * an event, callgrind.) */
    const uint32_t *g = p->ix_refs + ix->generic0;
    const unsigned char *s = (const unsigned char *)json + f->off;
    bool in_place = f->type == VM_J_STR && !f->escaped;
    int ascii = -1;
    for (uint32_t i = 0; i < ix->ngeneric; i++) {
        uint32_t gi = b->pred0 + g[i];
        if (c->pred_mark[gi].mark == passed_mark(c))
            continue;
        uint32_t ti = p->ix_preds[gi].test;
        const vm_test *t = &p->tests[ti];
        unsigned q = in_place ? p->derived->test_quick[ti] : VM_Q_NONE;
        /* An equality of a few constants on a leaf whose value id is not known yet is
         * compared in place too: the id's look-up (a hash, a probe, a compare) costs more than
         * a few length tests and a compare.  (`anything-but` of one value, CityLots
         * ANYTHING_BUT row, 16 rounds in a random order, thread CPU time: trusted 362 -> 345
         * ns an event, validating 671 -> 650; 10k issue193 rules ~2% faster.) */
        bool tried = q && (q != VM_Q_EQ || (t->narg <= 4 && c->field_vid.v[fi] == VM_VID_UNSET));
        int pass = tried ? quick_passes(p, q, t, s, f->len, &ascii) : -1;
        if (pass < 0)   /* (leaf_passes would try quick_passes again) */
            pass = tried ? vm_leaf_passes(c, json, t, f) : leaf_passes(c, json, gi, t, fi);
        if ((t->flags & VM_TF_NEG) ? !pass : pass)
            if (!fire(c, b, g[i]))
                return false;
    }
    return true;
}

/* Fires the band predicates of path entry ix that no single leaf passes but the leaves together
 * do: a lower bound in [min, max] that max passes, an upper bound min passes.  (Those that hold
 * min itself were found through the range tree.)  Bands are sorted by lower bound. */
static bool fire_bands(vm_ctx *c, const vm_ix_bus *b, const vm_ix_path *ix, double min, double max)
{
    const vm_program *p = c->p;
    const uint32_t *band = p->ix_refs + ix->band0;
#define BAND_CONST(i) (&p->consts[p->tests[p->ix_preds[b->pred0 + band[i]].test].arg0])
    uint32_t lo = 0, hi = ix->nband;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (BAND_CONST(mid)->lo < min)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (uint32_t i = lo; i < ix->nband; i++) {
        const vm_const *k = BAND_CONST(i);
        if (k->lo > max)
            break;
        if (band_holds(k, min, max) && !fire(c, b, band[i]))
            return false;
    }
#undef BAND_CONST
    return true;
}

/* Does some leaf of path lie in an array no deeper than depth? */
static bool in_arrays(const vm_ctx *c, uint32_t path, uint32_t depth)
{
    return c->path_arrays[path] == c->epoch && c->path_depth[path] <= depth;
}

/* Could the elements of arrays in this event decide a clause (so that counting alone cannot)?
 * Only if two of its predicates lie on paths with leaves inside arrays no deeper than the
 * prefix their paths share (the clause's depth). */
static bool arrays_matter(const vm_ctx *c, const vm_ix_bus *b, const vm_ix_clause *cl)
{
    const vm_program *p = c->p;
    const uint32_t *pr = p->ix_refs + cl->pred0;
    uint32_t inside = 0;
    if (cl->depth == 0)
        return false;
    for (uint32_t i = 0; i < cl->npred; i++) {
        const vm_ix_pred *x = &p->ix_preds[b->pred0 + pr[i]];
        /* (a band stands for two predicates on its path) */
        if (c->path_arrays[x->path] == c->epoch && c->path_depth[x->path] <= cl->depth &&
            (inside += p->tests[x->test].flags & VM_TF_BAND ? 2 : 1) >= 2)
            return true;
    }
    return false;
}

/* The value ids predicate g (all buses) is tested by, if it is a plain string equality that
 * is not negated (then *ids, *n); false otherwise. */
static bool plain_ids(const vm_ctx *c, uint32_t g, const uint16_t **ids, uint32_t *n)
{
    const struct vm_derived *d = c->p->derived;
    *n = vm_pred_nvid(d, g);
    *ids = d->vids + vm_pred_vid0(d, g);
    return *n != VM_NONE && !(c->p->tests[c->p->ix_preds[g].test].flags & VM_TF_NEG);
}

/* Does some leaf of path pass, as a string with one of the n ids: its field, or VM_NONE;
 * from the field after `from` on (VM_NONE: the first). */
static uint32_t next_passing(vm_ctx *c, const char *json, uint32_t path, uint32_t from,
                             const uint16_t *ids, uint32_t n)
{
    uint32_t f = from == VM_NONE ? c->first[path] : c->fields.v[from].next;
    for (; f != VM_NONE; f = c->fields.v[f].next) {
        uint32_t v = field_vid(c, json, f, path);
        if (v != VM_NONE && has_vid(ids, n, v))
            return f;
    }
    return VM_NONE;
}

/* Are the leaves of path all strings, each inside one array at most? */
static bool flat_strings(const vm_ctx *c, uint32_t path)
{
    for (uint32_t f = c->first[path]; f != VM_NONE; f = c->fields.v[f].next)
        if (c->fields.v[f].type != VM_J_STR || c->fields.v[f].nmemb > 1)
            return false;
    return true;
}

/* Two predicates ga and gb of a clause (all buses) whose paths have leaves inside arrays that
 * could tie them: does one element hold a leaf that passes each?  1 yes, 0 no, -1 the bytecode
 * decides (either is not a plain string equality, or a leaf is not a string or lies in nested
 * arrays).  A leaf of each that passes, in one array element or in arrays of their own (or in
 * none), is a match: the bytecode would choose those elements.  Deciding here what ~2.3 rules
 * an event ran their bytecode for (10k issue193 rules: `data.items[].sku` and `.category` in
 * one clause). */
static int tied_pair(vm_ctx *c, const char *json, uint32_t ga, uint32_t gb)
{
    const uint16_t *ia, *ib;
    uint32_t na, nb, pa = c->p->ix_preds[ga].path, pb = c->p->ix_preds[gb].path;
    if (!plain_ids(c, ga, &ia, &na) || !plain_ids(c, gb, &ib, &nb) || !flat_strings(c, pa) ||
        !flat_strings(c, pb))
        return -1;
    /* Where the passing leaves of each lie: outside arrays, or in which arrays.  (One pass over
     * each path, not a pass over one path's leaves for each passing leaf of the other: an event
     * of 11,000 elements took ~0.5 s a rule that way.) */
    struct { bool outside, several; uint32_t array; } at[2];
    const uint16_t *ids[2] = { ia, ib };
    uint32_t nid[2] = { na, nb }, path[2] = { pa, pb };
    for (int k = 0; k < 2; k++) {
        at[k].outside = at[k].several = false;
        at[k].array = VM_NONE;
        uint32_t f = next_passing(c, json, path[k], VM_NONE, ids[k], nid[k]);
        if (f == VM_NONE)
            return 0;
        for (; f != VM_NONE; f = next_passing(c, json, path[k], f, ids[k], nid[k])) {
            const vm_field *fl = &c->fields.v[f];
            uint32_t arr = fl->nmemb ? c->memb.v[fl->memb].array : VM_NONE;
            at[k].outside |= arr == VM_NONE;
            if (arr != VM_NONE && at[k].array != VM_NONE && arr != at[k].array)
                at[k].several = true;
            if (arr != VM_NONE && at[k].array == VM_NONE)
                at[k].array = arr;
        }
    }
    /* A leaf outside arrays, or two arrays to choose from: the elements cannot keep them apart. */
    if (at[0].outside || at[1].outside || at[0].several || at[1].several ||
        at[0].array != at[1].array)
        return 1;
    /* Both in one array: is there an element with a passing leaf of each?  The leaves come in
     * the order of the event, so their element numbers do not go down: one merge. */
    uint32_t a = next_passing(c, json, pa, VM_NONE, ia, na);
    uint32_t b = next_passing(c, json, pb, VM_NONE, ib, nb);
    while (a != VM_NONE && b != VM_NONE) {
        uint32_t xa = c->memb.v[c->fields.v[a].memb].index, xb = c->memb.v[c->fields.v[b].memb].index;
        if (xa == xb)
            return 1;
        if (xa < xb)
            a = next_passing(c, json, pa, a, ia, na);
        else
            b = next_passing(c, json, pb, b, ib, nb);
    }
    return 0;
}

/* Has simple clause r (vm_ix_rec), triggered by predicate g, its trigger and next predicate
 * passed, all it needs: 1 yes, 0 no, -1 yes if the elements of arrays allow it (decide asks the
 * bytecode).  Its predicates and their value ids are read from one place, not through the
 * clause, predicate and test tables: at 100k issue193 rules, where each event matches ~200
 * rules of 2 to 4 predicates, this took the last-level cache misses of matching from ~1,600 to
 * ~1,100 an event (callgrind's cache simulation, 300 events).  Where arrays could tie two of
 * its predicates, tied_pair decides if it can. */
static int simple_clause(vm_ctx *c, const vm_ix_bus *b, const char *json, const vm_ix_rec *r,
                         uint32_t g)
{
    if (r->ncp == 1)
        return 1;
    if (r->ncp == 2)
        return r->depth && in_arrays(c, r->cp0, r->depth) && in_arrays(c, r->path, r->depth)
                   ? tied_pair(c, json, g, r->next)
                   : 1;
    const vm_ix_cpred *e = c->p->derived->ix_cpreds + r->cp0, *end = e + r->ncp;
    uint32_t inside = 0, tied[2] = { 0, 0 };
    for (; e < end; e++) {
        if (e->pred != g && e->pred != r->next) {
            int q = e->nvid != 0xffff ? vids_pass(c, json, e->path, e->vid0, e->nvid) : -1;
            if (q == 0 || (q < 0 && !pred_passed(c, b, json, e->pred - b->pred0)))
                return 0;
        }
        if (r->depth && in_arrays(c, e->path, r->depth) && inside++ < 2)
            tied[inside - 1] = e->pred;
    }
    return inside < 2 ? 1 : inside == 2 ? tied_pair(c, json, tied[0], tied[1]) : -1;
}

/* Clause ci (all buses), complete, is its rule's only clause, and the rule is its predicates
 * and one negated TEST (struct vm_derived, neg_test), and arrays tie none of its predicates:
 * does the rule match?  1 yes (no leaf passes the negated TEST), 0 no (a leaf outside arrays
 * passes it, whatever elements the rule chose), -1 the bytecode decides (only leaves inside
 * arrays pass it).  With the 10k issue193 rules ~1.9 rules an event (`"exists": false`) ran
 * their bytecode for this. */
static int negation_holds(vm_ctx *c, const char *json, uint32_t ci)
{
    uint32_t at = c->p->derived->neg_test[ci];
    if (at == VM_NONE)
        return -1;
    const vm_test *t = &c->p->tests[VM_B(c->p->code[at])];
    int holds = 1;
    for (uint32_t f = c->first[VM_A(c->p->code[at])]; f != VM_NONE; f = c->fields.v[f].next) {
        bool pass = vm_leaf_passes(c, json, t, &c->fields.v[f]);
        if ((t->flags & VM_TF_NEG) ? !pass : pass) {
            if (!c->fields.v[f].nmemb)
                return 0;
            holds = -1;
        }
    }
    return holds;
}

/* Decides clause ci (all buses) of bus b, a candidate: if all it needs has passed, its rule
 * matches, or its bytecode decides.  False when memory runs out. */
static bool decide(vm_ctx *c, const vm_ix_bus *b, const char *json, uint32_t ci)
{
    const vm_ix_clause *cl = &c->p->ix_clauses[ci];
    if (c->rule_stamp[cl->rule] == c->epoch || !clause_complete(c, b, json, cl))
        return true;
    if ((cl->flags & VM_IXC_VERIFY) || arrays_matter(c, b, cl)) {
        /* The bytecode decides the whole rule: no other clause of it needs a look. */
        int m = (cl->flags & VM_IXC_VERIFY) && !arrays_matter(c, b, cl)
                    ? negation_holds(c, json, ci)
                    : -1;
        m = m >= 0 ? m : vm_run_rule(c, json, cl->rule);
        if (m == -1 || (m == -2 && !vm_rule_failed(c, cl->rule)))
            return false;
        c->rule_stamp[cl->rule] = c->epoch;
        if (m != 1)
            return true;   /* no match, or the rule failed (alone) */
    }
    c->rule_stamp[cl->rule] = c->epoch;
    return VM_BUF_PUSH(c->matched, cl->rule);
}

/* The records of the candidates (c->live: each record's index, then its trigger) less those
 * whose next predicate fails by the signatures alone (vm_vid_sig): ~3 in 4 of the records
 * with the 10k issue193 rules.  A short loop of its own, so that deciding the rest, a loop that
 * holds much more, runs ~40 times an event and not ~145.  A candidate whose records all fail
 * so by the signature in its mark is dropped without reading them (worth_deciding). */
static bool live_records(vm_ctx *c, const char *json)
{
    const vm_ix_rec *recs = c->p->derived->ix_recs;
    uint32_t *cand = c->candidates.v, ncand = (uint32_t)c->candidates.n, nworth = 0;
    /* Whether a candidate or a record is kept is counted, not branched on: which of them fail
     * by their signatures follows the event, and those branches were ~64 mispredictions an
     * event with the 10k issue193 rules (callgrind's branch simulation).  The candidates
     * worth deciding are kept in place of the others. */
    for (uint32_t i = 0; i < ncand; i++) {
        uint32_t g = cand[i];
        cand[nworth] = g;
        nworth += worth_deciding(c, json, &c->pred_mark[g]);
    }
    c->candidates.n = nworth;
    c->live.n = 0;
    for (uint32_t i = 0; i < nworth; i++) {
        uint32_t g = cand[i], r = c->pred_mark[g].rec, end = c->pred_mark[g + 1].rec;
        uint32_t n = (uint32_t)c->live.n;
        if (c->live.cap - n < 2 * (end - r) &&
            !vm_buf_grow((void **)&c->live.v, &c->live.cap, sizeof *c->live.v, n + 2 * (end - r)))
            return false;
        uint32_t *live = c->live.v;
        for (; r < end; r++) {
            const vm_ix_rec *x = &recs[r];
            uint32_t sig = x->nvid == VM_REC_NO_IDS ? ~0u : path_sig(c, json, x->path) & x->sig;
            live[n] = r;
            live[n + 1] = g;
            n += sig ? 2 : 0;
        }
        c->live.n = n;
    }
    return true;
}

bool vm_ix_begin(vm_ctx *c)
{
    /* No leaf's value id or number is known yet (they do not depend on the bus: once an
     * event). */
    if (c->field_vid.cap < c->fields.n &&
        !vm_buf_grow((void **)&c->field_vid.v, &c->field_vid.cap, sizeof *c->field_vid.v,
                     c->fields.n))
        return false;
    if (c->field_num.cap < c->fields.n &&
        !vm_buf_grow((void **)&c->field_num.v, &c->field_num.cap, sizeof *c->field_num.v,
                     c->fields.n))
        return false;
    for (uint32_t i = 0; i < c->fields.n; i++)
        c->field_vid.v[i] = VM_VID_UNSET;
    return true;
}

vm_status vm_ix_match_bus(vm_ctx *c, uint32_t bus, const char *json)
{
    const vm_program *p = c->p;
    const vm_ix_bus *b = &p->ix_buses[bus];
    const uint32_t *map = p->derived->ix_path_of + (size_t)bus * p->npaths;
    c->candidates.n = 0;
    /* Dispatch every leaf that some rule of the bus looks at. */
    for (uint32_t i = 0; i < c->touched.n; i++) {
        uint32_t path = c->touched.v[i], ipath = map[path];
        if (ipath == VM_NONE)
            continue;
        const vm_ix_path *ix = &p->ix_paths[ipath];
        double min = 1.0 / 0.0, max = -min;
        uint32_t numbers = 0;
        for (uint32_t f = c->first[path]; f != VM_NONE; f = c->fields.v[f].next) {
            const vm_field *fl = &c->fields.v[f];
            if (!dispatch(c, b, ipath, json, f))
                return VM_ERR_NOMEM;
            double d;
            if (ix->nband && fl->type == VM_J_NUM && field_number(c, json, f, &d)) {
                min = d < min ? d : min;
                max = d > max ? d : max;
                numbers++;
            }
        }
        if (numbers > 1 && min < max && !fire_bands(c, b, ix, min, max))
            return VM_ERR_NOMEM;
    }
    /* Decide the candidates; a rule's clauses may come up several times.  The clauses that
     * need no predicate first, then those of each predicate that passed, through their
     * records: most fail on their next predicate, read from the record.  (At 100k issue193
     * rules, ~1,400 records an event for ~200 matches; reading them in place of the clause,
     * predicate and test tables took matching from ~537K to ~424K instructions an event, and
     * the cache misses of callgrind's simulation by a third.) */
    size_t first_match = c->matched.n;
    for (uint32_t i = 0; i < b->nalways; i++)
        if (!decide(c, b, json, b->clause0 + p->ix_refs[b->always0 + i]))
            return VM_ERR_NOMEM;
    if (!live_records(c, json))
        return VM_ERR_NOMEM;
    const vm_ix_rec *recs = p->derived->ix_recs;
    const uint32_t *live = c->live.v, nlive = (uint32_t)c->live.n;
    for (uint32_t i = 0; i < nlive; i += 2) {
        if (i + 2 * PF_IDS < nlive) {
            /* the value ids the next few records test, each in another place */
            const vm_ix_rec *r = recs + live[i + 2 * PF_IDS];
            if (r->nvid != VM_REC_NO_IDS)
                __builtin_prefetch(p->derived->vids + r->vid0);
        }
        const vm_ix_rec *r = recs + live[i];
        uint32_t g = live[i + 1];
        if (r->next != VM_NONE) {
            int q = r->nvid == VM_REC_NO_IDS ? -1 : vids_pass(c, json, r->path, r->vid0, r->nvid);
            if (q == 0 || (q < 0 && !pred_passed(c, b, json, r->next - b->pred0)))
                continue;
            c->pred_mark[r->next].mark = passed_mark(c);
        }
        if (c->rule_stamp[r->rule] == c->epoch)
            continue;
        if (r->ncp) {
            int m = simple_clause(c, b, json, r, g);
            if (m == 0)
                continue;
            if (m == 1) {
                c->rule_stamp[r->rule] = c->epoch;
                if (!VM_BUF_PUSH(c->matched, r->rule))
                    return VM_ERR_NOMEM;
                continue;
            }
        }
        if (!decide(c, b, json, r->clause))
            return VM_ERR_NOMEM;
    }
    if (c->matched.n - first_match > 1)
        vm_sort_rules(c->matched.v + first_match, c->matched.n - first_match);
    return VM_OK;
}
