/*
 * regex.c — runs a compiled I-Regexp: a Thompson NFA simulated over the code points of the
 * subject, one set of live states per position (Pike's method without captures).  Time is
 * O(len * ninst * log(ranges)), there is no backtracking, and the only memory is the caller's
 * scratch:
 *
 *     uint32_t cur[ninst]   the states live before the current code point
 *     uint32_t next[ninst]  the states live after it
 *     uint8_t  in[ninst]    in[pc] != 0 iff pc is in `next` (membership while building it)
 *
 * A state list holds every pc reached, SPLIT and JMP included; the list being built doubles as
 * the work queue of its epsilon closure, so no stack is needed and each pc enters at most once.
 */
#include <string.h>

#include "vm.h"

/* Returns the bytes of scratch vm_regex_match needs for regex re of p: 2 * ninst uint32_t and
 * ninst bytes.  Assumes re is a valid index. */
size_t vm_regex_scratch_size(const vm_program *p, uint32_t re)
{
    size_t n = p->regexes[re].ninst;
    return 2 * n * sizeof(uint32_t) + n;
}

/* Returns whether cp lies in one of the sorted, disjoint ranges r[0..n) (binary search). */
static bool in_ranges(const vm_range *r, uint32_t n, uint32_t cp)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].lo)
            hi = mid;
        else if (cp > r[mid].hi)
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

/* A state list under construction: pcs in list[0..n), membership flags in `in`. */
typedef struct {
    uint32_t *list;
    uint32_t n;
    uint8_t *in;
} re_states;

/* Adds pc and everything reachable from it without consuming input to s.  Assumes every
 * target in insts is below the regex's ninst (the loader checks). */
static void add_state(re_states *s, const vm_re_inst *insts, uint32_t pc)
{
    if (s->in[pc])
        return;
    uint32_t head = s->n;
    s->in[pc] = 1;
    s->list[s->n++] = pc;
    for (; head < s->n; head++) {   /* the new tail of the list is the closure's queue */
        const vm_re_inst *in = &insts[s->list[head]];
        uint32_t t[2] = { in->x, in->y };
        int nt = in->op == VM_RE_SPLIT ? 2 : in->op == VM_RE_JMP ? 1 : 0;
        for (int k = 0; k < nt; k++) {
            if (!s->in[t[k]]) {
                s->in[t[k]] = 1;
                s->list[s->n++] = t[k];
            }
        }
    }
}

/* Computes in `next` the states reached from `cur` by consuming cp.  Clears cur's membership
 * flags first, so that `in` then describes `next` alone. */
static void step(const vm_program *p, const vm_re_inst *insts, re_states *cur, re_states *next,
                 uint32_t cp)
{
    for (uint32_t i = 0; i < cur->n; i++)
        cur->in[cur->list[i]] = 0;
    next->n = 0;
    for (uint32_t i = 0; i < cur->n; i++) {
        uint32_t pc = cur->list[i];
        const vm_re_inst *in = &insts[pc];
        if (in->op == VM_RE_CLASS && in_ranges(p->re_ranges + in->x, in->y, cp))
            add_state(next, insts, pc + 1);
    }
}

/* Returns whether regex re of p matches the whole of UTF-8 text s[0..n).  scratch must hold
 * vm_regex_scratch_size(p, re) bytes, aligned for uint32_t.  Text that is not well-formed UTF-8
 * does not match. */
bool vm_regex_match(const vm_program *p, uint32_t re, const char *s, size_t n, void *scratch)
{
    const vm_regex *rx = &p->regexes[re];
    if (rx->ninst == 0)
        return false;
    const vm_re_inst *insts = p->re_insts + rx->inst0;
    uint32_t *lists = scratch;
    uint8_t *in = (uint8_t *)(lists + 2 * (size_t)rx->ninst);
    re_states a = { lists, 0, in }, b = { lists + rx->ninst, 0, in };
    re_states *cur = &a, *next = &b;
    memset(in, 0, rx->ninst);
    add_state(cur, insts, 0);
    for (size_t i = 0; i < n && cur->n > 0;) {
        uint32_t cp;
        size_t len = vm_utf8_decode(s + i, n - i, &cp);
        if (len == 0)
            return false;
        i += len;
        step(p, insts, cur, next, cp);
        re_states *t = cur;
        cur = next;
        next = t;
    }
    for (uint32_t i = 0; i < cur->n; i++) {
        if (insts[cur->list[i]].op == VM_RE_MATCH)
            return true;
    }
    return false;
}
