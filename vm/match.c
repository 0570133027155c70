/*
 * match.c — the rule VM: tests on leaf values, and the interpreter that runs a rule's code as a
 * backtracking search over choices of array elements.
 *
 * Semantics (docs/language.md, "Arrays"): a rule matches if there is a choice of one element for
 * each array that its conditions pass through such that the whole condition holds; a leaf that is
 * a direct (scalar) element of an array does not fix that array's element, so conditions on a
 * list of scalars may each use a different element.  Bindings are kept in c->bind, undone through
 * c->trail; choice points remember where to resume.
 *
 * Four facts keep the search small.  An array is bound only if a later TEST of the rule can look
 * at it (its depth is within the TEST's keep_depth, see program.c): choices of other arrays cannot
 * change the outcome, so they make no choice point.  While no negation is left to run, more
 * bindings can only make later conditions fail, never pass: a choice that bound nothing needs no
 * alternative.  A TEST looking for the leaves of a bound element does not read the leaves of the
 * other elements one by one: it jumps over them (see runs below), so conditions over one large
 * array cost the array's length, not its square.  And a failure goes back to the latest choice
 * it depends on, not merely the latest choice (conflict-directed backjumping): when a TEST fails,
 * only the bindings that excluded some of its leaves can be to blame, so choices made since then
 * that bound none of them are passed over instead of tried in turn (a rule over several large
 * arrays tries each array's elements, not every combination of them).  A step budget per rule
 * and event bounds what is left, and a rule that spends it fails alone.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vm_int.h"

enum { CP_TEST, CP_FORK, CP_NOT };

struct vm_choice {
    uint8_t kind;
    uint32_t pc;       /* CP_TEST: the TEST; CP_FORK / CP_NOT: where to resume */
    uint32_t trail;    /* trail height to restore */
    uint32_t field;    /* CP_TEST: the next field to try */
    int32_t blame_hi, blame_next; /* CP_TEST: the culprits of the fields passed over before it */
};

/* What a failure depends on: the choices (their places on the choice stack) that bound the
 * arrays which excluded leaves; only the two highest are kept (-1: none). */
typedef struct { int32_t hi, next; } culprits;

static inline void blame(culprits *w, int32_t level)
{
    if (level > w->hi) {
        w->next = w->hi;
        w->hi = level;
    } else if (level < w->hi && level > w->next) {
        w->next = level;
    }
}

bool vm_buf_grow(void **v, uint32_t *cap, size_t elem, uint32_t need)
{
    uint32_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *p = realloc(*v, (size_t)n * elem);
    if (!p)
        return false;
    *v = p;
    *cap = n;
    return true;
}

static bool grow_bytes(char **buf, size_t *cap, size_t need)
{
    if (*cap >= need)
        return true;
    size_t n = *cap ? *cap : 256;
    while (n < need)
        n *= 2;
    char *p = realloc(*buf, n);
    if (!p)
        return false;
    *buf = p;
    *cap = n;
    return true;
}

vm_ctx *vm_ctx_new(const vm_program *p, const vm_options *opt)
{
    vm_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->p = p;
    c->max_depth = opt && opt->max_depth ? opt->max_depth : VM_MAX_DEPTH;
    c->max_steps = opt && opt->max_steps ? opt->max_steps : VM_MAX_STEPS;
    c->plain = opt && opt->plain_search;
    c->first = malloc((p->npaths + 1) * sizeof *c->first);
    c->last = malloc((p->npaths + 1) * sizeof *c->last);
    if (!c->first || !c->last) {
        vm_ctx_free(c);
        return NULL;
    }
    for (uint32_t i = 0; i < p->npaths; i++)
        c->first[i] = VM_NONE;
    c->reference = opt && opt->reference;
    c->fast_ok = !(opt && opt->no_simd) && vm_fast_available();
    c->trusted = opt && opt->trusted;
    c->pred_mark = calloc(p->nix_preds + 1, sizeof *c->pred_mark);
    if (c->pred_mark)
        vm_pred_mark_init(p, c->pred_mark);
    c->rule_stamp = calloc(p->nrules + 1, sizeof *c->rule_stamp);
    c->path_sig = calloc(p->npaths + 1, sizeof *c->path_sig);
    c->sig_stamp = calloc(p->npaths + 1, sizeof *c->sig_stamp);
    c->path_arrays = calloc(p->npaths + 1, sizeof *c->path_arrays);
    c->path_depth = calloc(p->npaths + 1, sizeof *c->path_depth);
    c->runs = calloc(p->npaths + 1, sizeof *c->runs);
    if (!c->pred_mark || !c->rule_stamp || !c->path_sig || !c->sig_stamp ||
        !c->path_arrays || !c->path_depth || !c->runs) {
        vm_ctx_free(c);
        return NULL;
    }
    return c;
}

const vm_program *vm_ctx_program(const vm_ctx *c)
{
    return c->p;
}

void vm_ctx_free(vm_ctx *c)
{
    if (!c)
        return;
    free(c->fields.v);
    free(c->memb.v);
    free(c->failed.v);
    free(c->first);
    free(c->last);
    free(c->touched.v);
    free(c->frames.v);
    free(c->array_depth.v);
    free(c->pred_mark);
    free(c->rule_stamp);
    free(c->path_sig);
    free(c->sig_stamp);
    free(c->path_arrays);
    free(c->path_depth);
    free(c->candidates.v);
    free(c->live.v);
    free(c->field_vid.v);
    free(c->field_num.v);
    vm_fast_free(&c->fast);
    free(c->bind);
    free(c->bind_level);
    free(c->trail.v);
    free(c->choices.v);
    free(c->runs);
    free(c->run_field.v);
    free(c->run_end.v);
    free(c->run_pos.v);
    free(c->matched.v);
    free(c->xout.v);
    free(c->xscratch.v);
    free(c->xstack.v);
    free(c->xfirst.v);
    free(c->xpos.v);
    free(c->dec);
    free(c->fold);
    free(c->canon);
    free(c->re_scratch);
    free(c);
}

/* ---- leaf values ------------------------------------------------------------------------------ */


/* A string field's decoded UTF-8 (in the context's scratch when it had escapes). */
bool vm_field_text(vm_ctx *c, const char *json, const vm_field *f, vm_text *out)
{
    const char *s = json + f->off;
    if (!f->escaped) {
        out->s = s;
        out->n = f->len;
        return true;
    }
    if (!grow_bytes(&c->dec, &c->dec_cap, f->len + 1))
        return false;
    out->s = c->dec;
    out->n = vm_json_unescape(s, f->len, c->dec);
    return true;
}

bool vm_fold_text(vm_ctx *c, vm_text *t)
{
    if (!grow_bytes(&c->fold, &c->fold_cap, t->n * 3 + 1))
        return false;
    t->n = vm_casefold_utf8(t->s, t->n, c->fold);
    t->s = c->fold;
    return true;
}

bool vm_canon_text(vm_ctx *c, const char *s, size_t n, vm_text *out)
{
    if (!grow_bytes(&c->canon, &c->canon_cap, n + 32))
        return false;
    size_t cn = vm_number_canon(s, n, c->canon, c->canon_cap);
    /* The compiler keeps a constant's spelling when it has no canonical form either. */
    out->s = cn ? c->canon : s;
    out->n = cn ? cn : n;
    return true;
}

/* Compares number text s with a VM_C_NUM constant by decimal value. */
static bool number_equals(vm_ctx *c, const char *s, size_t n, const vm_const *k)
{
    vm_text t;
    if (!vm_canon_text(c, s, n, &t))
        return false;
    return k->s.len == t.n && memcmp(vm_s(c->p, k->s), t.s, t.n) == 0;
}

static bool ip_in(const vm_const *k, const uint8_t ip[16])
{
    int bits = k->bits;
    for (int i = 0; i < 16 && bits > 0; i++, bits -= 8) {
        uint8_t mask = bits >= 8 ? 0xff : (uint8_t)(0xff << (8 - bits));
        if ((ip[i] & mask) != k->ip[i])
            return false;
    }
    return true;
}

static bool has_prefix(vm_text t, const char *k, size_t n)
{
    return t.n >= n && memcmp(t.s, k, n) == 0;
}

static bool has_suffix(vm_text t, const char *k, size_t n)
{
    return t.n >= n && memcmp(t.s + t.n - n, k, n) == 0;
}

static bool contains(vm_text t, const char *k, size_t n)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i + n <= t.n; i++) {
        const char *hit = memchr(t.s + i, k[0], t.n - n - i + 1);
        if (!hit)
            return false;
        i = (size_t)(hit - t.s);
        if (memcmp(hit, k, n) == 0)
            return true;
    }
    return false;
}

static bool regex(vm_ctx *c, uint32_t re, vm_text t)
{
    size_t need = vm_regex_scratch_size(c->p, re);
    if (c->re_cap < need) {
        void *p = realloc(c->re_scratch, need);
        if (!p)
            return false;
        c->re_scratch = p;
        c->re_cap = need;
    }
    return vm_regex_match(c->p, re, t.s, t.n, c->re_scratch);
}

/* Does constant k pass for the string t (already folded for VM_TF_CI)? */
static bool string_test(vm_ctx *c, const vm_test *test, const vm_const *k, vm_text t, const uint8_t *ip)
{
    const char *ks = vm_s(c->p, k->s);
    switch (test->kind) {
    case VM_T_EQ:
        if (k->type != VM_C_STR)
            return false;
        if (k->s.len == t.n && memcmp(ks, t.s, t.n) == 0)
            return true;
        return (k->flags & VM_CF_IP) && ip && memcmp(ip, k->ip, 16) == 0;
    case VM_T_PREFIX: return has_prefix(t, ks, k->s.len);
    case VM_T_SUFFIX: return has_suffix(t, ks, k->s.len);
    case VM_T_CONTAINS: return contains(t, ks, k->s.len);
    case VM_T_WILDCARD: return vm_wildcard_match(ks, k->s.len, t.s, t.n);
    case VM_T_REGEX: return regex(c, k->re, t);
    case VM_T_CIDR: return ip && ip_in(k, ip);
    default: return false;
    }
}

/* Does the leaf f pass test t (before VM_TF_NEG is applied)? */
bool vm_leaf_passes(vm_ctx *c, const char *json, const vm_test *t, const vm_field *f)
{
    const vm_program *p = c->p;
    const vm_const *k = p->consts + t->arg0, *kend = k + t->narg;
    if (t->kind == VM_T_EXISTS)
        return true;
    bool asnum = (t->flags & VM_TF_ASNUM) && f->type == VM_J_STR;
    if (f->type == VM_J_NUM || asnum) {
        if (t->kind != VM_T_EQ && t->kind != VM_T_RANGE)
            goto strings;
        vm_text num = { json + f->off, f->len };
        if (asnum) {
            if (!vm_field_text(c, json, f, &num) || vm_json_number_len(num.s, num.n, NULL) != num.n)
                return false;
        }
        if (t->kind == VM_T_RANGE) {
            double d;
            /* Numbers beyond the double range are never in a range, as in event-ruler. */
            if (!vm_number_value(num.s, num.n, &d))
                return false;
            for (; k < kend; k++)
                if (vm_in_range(k, d))
                    return true;
            return false;
        }
        for (; k < kend; k++)
            if (k->type == VM_C_NUM && number_equals(c, num.s, num.n, k))
                return true;
        return false;
    }
strings:
    if (f->type != VM_J_STR) {
        if (t->kind != VM_T_EQ)
            return false;
        uint8_t want = f->type == VM_J_TRUE ? VM_C_TRUE : f->type == VM_J_FALSE ? VM_C_FALSE
                     : f->type == VM_J_NULL ? VM_C_NULL : 0xff;
        for (; k < kend; k++)
            if (k->type == want)
                return true;
        return false;
    }
    if (t->kind == VM_T_RANGE)
        return false;
    vm_text s;
    if (!vm_field_text(c, json, f, &s))
        return false;
    if ((t->flags & VM_TF_CI) && !vm_fold_text(c, &s))
        return false;
    /* Parse the value as an IP address once, when some constant needs it: for an equality,
     * only once no constant's text matched (a list of 50 names then costs no second pass). */
    uint8_t ipbuf[16];
    const uint8_t *ip = NULL;
    if (t->kind == VM_T_EQ) {
        bool want_ip = false;
        for (const vm_const *q = k; q < kend; q++) {
            if (q->type == VM_C_STR && q->s.len == s.n && memcmp(vm_s(p, q->s), s.s, s.n) == 0)
                return true;
            want_ip |= q->flags & VM_CF_IP;
        }
        if (!want_ip || !vm_parse_ip(s.s, s.n, ipbuf))
            return false;
        ip = ipbuf;
    } else if (t->kind == VM_T_CIDR && vm_parse_ip(s.s, s.n, ipbuf)) {
        ip = ipbuf;
    }
    for (; k < kend; k++)
        if (string_test(c, t, k, s, ip))
            return true;
    return false;
}

/* ---- the interpreter ------------------------------------------------------------------------- */

/* The array whose binding excludes field f (f lies in another of its elements), or VM_NONE. */
static uint32_t conflict(const vm_ctx *c, const vm_field *f)
{
    for (uint32_t m = f->memb; m != VM_NONE; m = c->memb.v[m].up) {
        const vm_memb *e = &c->memb.v[m];
        int32_t b = c->bind[e->array];
        if (b >= 0 && (uint32_t)b != e->index)
            return e->array;
    }
    return VM_NONE;
}

/* Binds the arrays of f that are not bound yet and that sit no deeper than keep (later
 * conditions cannot see the others); returns how many it bound. */
static uint32_t bind_field(vm_ctx *c, const vm_field *f, uint32_t keep)
{
    uint32_t added = 0;
    for (uint32_t m = f->memb; m != VM_NONE; m = c->memb.v[m].up) {
        const vm_memb *e = &c->memb.v[m];
        if (c->bind[e->array] < 0 && c->array_depth.v[e->array] <= keep) {
            c->bind[e->array] = (int32_t)e->index;
            c->trail.v[c->trail.n++] = e->array;
            added++;
        }
    }
    return added;
}

static void undo(vm_ctx *c, uint32_t height)
{
    while (c->trail.n > height)
        c->bind[c->trail.v[--c->trail.n]] = -1;
}

/* ---- runs: jumping over the leaves of other elements --------------------------------------
 * A path's fields, in the order of the event, fall into runs: fields one after another that lie
 * in the same outermost array, in the order of its elements.  When that array is bound, the
 * fields of the bound element are found in a run by binary search, and a field of a later
 * element ends the run at once.  The tables are made per path, the first time a search in this
 * event passes over several fields of other elements. */

static const vm_memb *outer_of(const vm_ctx *c, uint32_t f)
{
    return &c->memb.v[c->memb.v[c->fields.v[f].memb].outer];
}

static bool make_runs(vm_ctx *c, uint32_t path)
{
    vm_path_runs *r = &c->runs[path];
    if (c->run_pos.cap < c->fields.n &&
        !vm_buf_grow((void **)&c->run_pos.v, &c->run_pos.cap, sizeof *c->run_pos.v, c->fields.n))
        return false;
    r->at = c->run_field.n;
    for (uint32_t f = c->first[path]; f != VM_NONE; f = c->fields.v[f].next) {
        c->run_pos.v[f] = c->run_field.n;
        if (!VM_BUF_PUSH(c->run_field, f) || !VM_BUF_PUSH(c->run_end, 0))
            return false;
    }
    r->n = c->run_field.n - r->at;
    uint32_t end = r->at + r->n, key_after = VM_NONE;
    for (uint32_t i = end; i-- > r->at;) {
        uint32_t f = c->run_field.v[i];
        uint32_t key = c->fields.v[f].nmemb ? outer_of(c, f)->array : VM_NONE;
        c->run_end.v[i] = key != VM_NONE && key == key_after ? c->run_end.v[i + 1] : i + 1;
        key_after = key;
    }
    r->stamp = c->epoch;
    return true;
}

/* Field f lies in element o->index of its outermost array, which is bound to element b: the
 * first field after it in its path that may lie in element b (or outside that array). */
static uint32_t skip_run(const vm_ctx *c, uint32_t path, uint32_t f, const vm_memb *o, uint32_t b)
{
    const vm_path_runs *r = &c->runs[path];
    uint32_t pos = c->run_pos.v[f], next = c->run_end.v[pos];
    if (o->index < b) {
        uint32_t lo = pos + 1, hi = next;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (outer_of(c, c->run_field.v[mid])->index < b)
                lo = mid + 1;
            else
                hi = mid;
        }
        next = lo;
    }
    return next < r->at + r->n ? c->run_field.v[next] : VM_NONE;
}

/* Runs the code of rule number ri; returns 1 on a match, 0 on none, -1 when memory runs out,
 * -2 when the rule's step budget for this event is spent. */
int vm_run_rule(vm_ctx *c, const char *json, uint32_t ri)
{
    const vm_program *p = c->p;
    const vm_rule *r = &p->rules[ri];
    const vm_inst *code = p->code + r->code0;
    const uint16_t *keep_depth = p->derived->keep_depth + r->code0;
    const uint32_t last_not = p->derived->last_not[ri];
    uint32_t pc = 0, start = VM_NONE;
    /* The failures so far that led back to the choices now on the stack depend on choices
     * below `floor` too (backjumping never passes over those). */
    int32_t floor = 0;
    culprits why = { -1, -1 }, resumed = { -1, -1 };
    bool blind = false;       /* the failure's culprits are not known: back to the last choice */
    int result;
    c->steps = 0;
    c->choices.n = 0;
    for (;;) {
        vm_inst in = code[pc];
        switch (VM_OP(in)) {
        case VM_OP_TEST: {
            uint32_t path = VM_A(in);
            const vm_test *t = p->tests + VM_B(in);
            uint32_t f = c->first[path], passed = 0;
            why = (culprits){ -1, -1 };
            if (start != VM_NONE) {
                f = start;
                why = resumed;
            }
            start = VM_NONE;
            while (f != VM_NONE) {
                const vm_field *fd = &c->fields.v[f];
                if (++c->steps > c->max_steps) {
                    result = -2;
                    goto out;
                }
                uint32_t a = fd->nmemb ? conflict(c, fd) : VM_NONE;
                if (a != VM_NONE) {
                    blame(&why, c->bind_level[a]);
                    const vm_memb *o = outer_of(c, f);
                    int32_t b = c->bind[o->array];
                    /* Another element of a bound array: past a few, jump over the rest. */
                    if (!c->plain && b >= 0 && (uint32_t)b != o->index &&
                        (++passed > 8 || c->runs[path].stamp == c->epoch)) {
                        if (c->runs[path].stamp != c->epoch && !make_runs(c, path)) {
                            result = -1;
                            goto out;
                        }
                        blame(&why, c->bind_level[o->array]);
                        f = skip_run(c, path, f, o, (uint32_t)b);
                    } else {
                        f = fd->next;
                    }
                    continue;
                }
                bool pass = vm_leaf_passes(c, json, t, fd);
                if (t->flags & VM_TF_NEG)
                    pass = !pass;
                if (pass)
                    break;
                f = fd->next;
            }
            if (f == VM_NONE) {
                if (c->trace && (c->trace_pc == VM_NONE || pc > c->trace_pc))
                    c->trace_pc = pc;
                goto fail;
            }
            const vm_field *fd = &c->fields.v[f];
            uint32_t height = c->trail.n, keep = keep_depth[pc];
            uint32_t added = fd->nmemb && keep ? bind_field(c, fd, keep) : 0;
            /* Another field may lead elsewhere if this choice fails later: when this one bound
             * an array, or when a negation follows (more bindings may then help). */
            if (fd->next != VM_NONE && (added > 0 || (pc < last_not && keep > 0))) {
                struct vm_choice cp = { CP_TEST, pc, height, fd->next, why.hi, why.next };
                if (!VM_BUF_PUSH(c->choices, cp)) {
                    result = -1;
                    goto out;
                }
            }
            /* The choice whose retry may change these bindings: this one's, or the last. */
            for (uint32_t i = height; i < c->trail.n; i++)
                c->bind_level[c->trail.v[i]] = (int32_t)c->choices.n - 1;
            pc++;
            continue;
        }
        case VM_OP_FORK: {
            struct vm_choice cp = { CP_FORK, VM_B(in), c->trail.n, 0, -1, -1 };
            if (!VM_BUF_PUSH(c->choices, cp)) {
                result = -1;
                goto out;
            }
            pc++;
            continue;
        }
        case VM_OP_JOIN:
            /* The branch bound nothing: the other branches can only reach the same state or one
             * with more bindings, which helps nothing unless a negation follows. */
            if (c->choices.n > 0 && pc >= last_not) {
                struct vm_choice *top = &c->choices.v[c->choices.n - 1];
                if (top->kind == CP_FORK && top->pc == VM_A(in) && top->trail == c->trail.n)
                    c->choices.n--;
            }
            pc = VM_B(in);
            continue;
        case VM_OP_NOT: {
            struct vm_choice cp = { CP_NOT, VM_B(in), c->trail.n, 0, -1, -1 };
            if (!VM_BUF_PUSH(c->choices, cp)) {
                result = -1;
                goto out;
            }
            pc++;
            continue;
        }
        case VM_OP_NOTOK:
            if (c->trace && (c->trace_pc == VM_NONE || pc > c->trace_pc))
                c->trace_pc = pc;
            /* The negated condition holds: drop the body's choices and its barrier, then fail. */
            while (c->choices.n > 0 && c->choices.v[--c->choices.n].kind != CP_NOT)
                ;
            blind = true;
            goto fail;
        case VM_OP_MATCH:
            result = 1;
            goto out;
        }
    fail:
        if (c->choices.n > 0 && ++c->steps > c->max_steps) {
            result = -2;
            goto out;
        }
        if (!c->plain && !blind) {
            /* Back to the latest choice this failure or an earlier one depends on: the choices
             * of leaves above it bound nothing to blame, so each of their alternatives would
             * come to this same failure.  A fork or a negation is never passed over (their
             * other way is other code). */
            int32_t target = why.hi > floor - 1 ? why.hi : floor - 1;
            while ((int32_t)c->choices.n - 1 > target &&
                   c->choices.v[c->choices.n - 1].kind == CP_TEST)
                c->choices.n--;
        }
        if (c->choices.n == 0) {
            result = 0;
            goto out;
        }
        {
            int32_t at = (int32_t)c->choices.n - 1;
            if (blind || c->plain) {
                floor = at;
            } else {
                /* The culprits below the choice retried stay to blame if all its alternatives
                 * fail too (only the highest is known; when that is the one retried, every
                 * choice below it counts). */
                int32_t below = why.hi < at ? why.hi : why.next;
                if (floor - 1 == at)
                    floor = at;
                if (below + 1 > floor)
                    floor = below + 1;
            }
            blind = false;
            struct vm_choice cp = c->choices.v[--c->choices.n];
            undo(c, cp.trail);
            pc = cp.pc;
            if (cp.kind == CP_TEST) {
                start = cp.field;
                resumed = (culprits){ cp.blame_hi, cp.blame_next };
            }
            /* CP_NOT: the negated body failed, so the negation holds: go on after it. */
        }
    }
out:
    undo(c, 0);
    return result;
}

bool vm_rule_failed(vm_ctx *c, uint32_t ri)
{
    const vm_program *p = c->p;
    vm_rule_error e = { ri, { VM_ERR_LIMIT, 0, "" } };
    snprintf(e.err.msg, sizeof e.err.msg, "matching rule '%.*s' took more than %zu steps: the "
             "event's arrays are too large for its conditions", (int)p->rules[ri].name.len,
             vm_s(p, p->rules[ri].name), c->max_steps);
    return VM_BUF_PUSH(c->failed, e);
}

size_t vm_match_failures(const vm_ctx *c, const vm_rule_error **out)
{
    *out = c->failed.v;
    return c->failed.n;
}

bool vm_why_not(vm_ctx *c, uint32_t rule, const char *json, uint32_t *at)
{
    const vm_program *p = c->p;
    if (rule >= p->nrules || c->scanned != json)
        return false;
    c->trace = true;
    c->trace_pc = VM_NONE;
    int m = vm_run_rule(c, json, rule);
    c->trace = false;
    if (m != 0 || c->trace_pc == VM_NONE)
        return false;
    *at = p->rules[rule].code0 + c->trace_pc;
    return true;
}

static void insertion_sort(uint32_t *v, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        uint32_t x = v[i];
        size_t k = i;
        for (; k > 0 && v[k - 1] > x; k--)
            v[k] = v[k - 1];
        v[k] = x;
    }
}

/* Sorts v[0..n) through a bitmap of the numbers up to the largest, when they are distinct (an
 * event's matches are) and the largest is small next to n: a few steps a number and one per 64
 * numbers below the largest, where insertion sort moves ~n * n / 4 of them.  False, with v as it
 * was, when a number repeats or the bitmap would be too long.  (The routing row's events, 21
 * matches of the 45 COMBO rules: the sort 1,234 -> 628 instructions an event, callgrind.) */
static bool bitmap_sort(uint32_t *v, size_t n)
{
    enum { WORDS = 256 };                       /* numbers below 16,384: 2 KB of stack */
    uint64_t bits[WORDS];
    uint32_t max = 0;
    for (size_t i = 0; i < n; i++)
        max = v[i] > max ? v[i] : max;
    size_t words = (size_t)(max >> 6) + 1;
    if (words > WORDS || words > 2 * n)
        return false;
    memset(bits, 0, words * sizeof *bits);
    for (size_t i = 0; i < n; i++) {
        uint64_t bit = 1ull << (v[i] & 63);
        if (bits[v[i] >> 6] & bit)
            return false;                       /* (v is not written before here) */
        bits[v[i] >> 6] |= bit;
    }
    size_t k = 0;
    for (size_t w = 0; w < words; w++)
        for (uint64_t b = bits[w]; b; b &= b - 1)
            v[k++] = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(b));
    return true;
}

void vm_sort_rules(uint32_t *v, size_t n)
{
    if (n >= 8 && bitmap_sort(v, n))
        return;
    /* An event matches a few rules: insertion sort below 32, above it a quicksort (median of
     * three, the smaller side first, the larger by looping), not qsort's merge sort with its
     * indirect compares: ~200 matches an event at 100k issue193 rules cost ~39K instructions
     * there (7% of the event), ~18K here (callgrind). */
    while (n > 32) {
        uint32_t a = v[0], b = v[n / 2], c = v[n - 1];
        uint32_t pivot = a < b ? (b < c ? b : a < c ? c : a) : (a < c ? a : b < c ? c : b);
        size_t i = 0, j = n - 1;
        for (;;) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i >= j)
                break;
            uint32_t t = v[i];
            v[i++] = v[j];
            v[j--] = t;
        }
        /* v[0 .. j] <= pivot <= v[j + 1 .. n) */
        size_t left = j + 1;
        if (left >= n)
            break;   /* (cannot happen with the median of three; insertion sort is safe) */
        if (left < n - left) {
            vm_sort_rules(v, left);
            v += left;
            n -= left;
        } else {
            vm_sort_rules(v + left, n - left);
            n = left;
        }
    }
    insertion_sort(v, n);
}

vm_status vm_match(vm_ctx *c, uint32_t bus, const char *json, size_t len,
                   const uint32_t **rules, size_t *nrules, vm_error *err)
{
    const vm_program *p = c->p;
    for (uint32_t i = 0; i < c->touched.n; i++)
        c->first[c->touched.v[i]] = VM_NONE;
    c->touched.n = c->fields.n = c->memb.n = c->frames.n = 0;
    c->narrays = c->array_depth.n = 0;
    c->run_field.n = c->run_end.n = 0;
    c->matched.n = 0;
    c->failed.n = 0;
    *rules = NULL;
    *nrules = 0;
    if (len > UINT32_MAX) {
        err->code = VM_ERR_LIMIT;
        err->offset = 0;
        snprintf(err->msg, sizeof err->msg, "event larger than 4 GiB");
        return VM_ERR_LIMIT;
    }
    if (++c->epoch == 0x80000000u) {
        /* The stamps wrapped around (a predicate's mark holds twice the epoch, vm_pred_mark):
         * clear them, so that no old mark passes for a new one. */
        for (uint32_t g = 0; g < p->nix_preds; g++)
            c->pred_mark[g].mark = 0;
        memset(c->rule_stamp, 0, p->nrules * sizeof *c->rule_stamp);
        memset(c->sig_stamp, 0, p->npaths * sizeof *c->sig_stamp);
        memset(c->path_arrays, 0, p->npaths * sizeof *c->path_arrays);
        memset(c->runs, 0, p->npaths * sizeof *c->runs);
        c->epoch = 1;
    }
    c->scanned = c->valid_for = NULL;
    c->dotted_keys = 0;
    vm_status st = vm_scan(c, json, len, err);
    if (st != VM_OK)
        return st;
    c->scanned = json;
    c->scanned_len = len;
    if (c->bind_cap < c->narrays) {
        int32_t *b = realloc(c->bind, c->narrays * sizeof *b);
        if (!b)
            goto nomem;
        c->bind = b;
        b = realloc(c->bind_level, c->narrays * sizeof *b);
        if (!b)
            goto nomem;
        c->bind_level = b;
        c->bind_cap = c->narrays;
    }
    for (uint32_t i = 0; i < c->narrays; i++)
        c->bind[i] = -1;
    if (c->trail.cap < c->narrays + 1 &&
        !vm_buf_grow((void **)&c->trail.v, &c->trail.cap, sizeof *c->trail.v, c->narrays + 1))
        goto nomem;
    c->trail.n = 0;
    if (!c->reference) {
        if (!vm_ix_begin(c))
            goto nomem;
        for (uint32_t b = 0; b < p->nix_buses; b++) {
            if (bus != VM_NONE && b != bus)
                continue;
            if (vm_ix_match_bus(c, b, json) != VM_OK)
                goto nomem;
        }
        if (bus == VM_NONE && p->nix_buses > 1 && c->matched.n > 1)
            vm_sort_rules(c->matched.v, c->matched.n);
    } else {
        for (uint32_t r = 0; r < p->nrules; r++) {
            if (bus != VM_NONE && p->rules[r].bus != bus)
                continue;
            int m = vm_run_rule(c, json, r);
            if (m == -1 || (m == -2 && !vm_rule_failed(c, r)))
                goto nomem;
            if (m == 1 && !VM_BUF_PUSH(c->matched, r))
                goto nomem;
        }
    }
    *rules = c->matched.v;
    *nrules = c->matched.n;
    if (c->failed.n == 0)
        return VM_OK;
    /* Some rules failed: in the order of rules, the first one's message in err. */
    for (uint32_t i = 1; i < c->failed.n; i++)
        for (uint32_t k = i; k > 0 && c->failed.v[k - 1].rule > c->failed.v[k].rule; k--) {
            vm_rule_error x = c->failed.v[k];
            c->failed.v[k] = c->failed.v[k - 1];
            c->failed.v[k - 1] = x;
        }
    *err = c->failed.v[0].err;
    err->code = VM_ERR_RULE;
    return VM_ERR_RULE;
nomem:
    c->matched.n = 0;
    c->failed.n = 0;
    *rules = NULL;
    *nrules = 0;
    err->code = VM_ERR_NOMEM;
    err->offset = 0;
    snprintf(err->msg, sizeof err->msg, "out of memory");
    return VM_ERR_NOMEM;
}
