/*
 * pattern.c — lowers `pattern { ... }` bodies (the Amazon EventBridge / event-ruler JSON dialect,
 * plus Quamina's "regexp" and "shellstyle") to the same IR as match expressions.
 *
 * A pattern object is a conjunction over its keys (a key with dots is several path segments, as
 * in event-ruler); a key's array lists alternatives on one path; "$or" lists alternative
 * sub-patterns.  Every pattern event-ruler rejects is rejected here, with the position of the
 * offending JSON.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cc.h"
#include "json.h"

typedef struct {
    cc_unit *u;
    cc_comp *c;
    const char *segs[CC_MAX_PATH];
    size_t lens[CC_MAX_PATH];
    uint32_t nseg;
    int in_or;       /* inside a "$or" branch */
} lowerer;

static void err(lowerer *L, const jv *v, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void err(lowerer *L, const jv *v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cc_diag(L->c, 0, L->u->src, v->off, v->len, fmt, ap);
    va_end(ap);
}

static void err_key(lowerer *L, const jv *v, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void err_key(lowerer *L, const jv *v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cc_diag(L->c, 0, L->u->src, v->koff, v->kspan, fmt, ap);
    va_end(ap);
}

static vm_span span_of(lowerer *L, const jv *v)
{
    return cc_span(L->u, v->off, v->len);
}

static bool key_is(const jv *v, const char *k)
{
    return v->klen == strlen(k) && memcmp(v->key, k, v->klen) == 0;
}

/* The source offset of byte pos of string value v's decoded text. */
static uint32_t string_offset(lowerer *L, const jv *v, size_t pos)
{
    gr_token t = { 0, v->off, v->len };
    return cc_source_offset(L->u, &t, pos);
}

static uint32_t current_path(lowerer *L)
{
    return cc_path(L->c, L->segs, L->lens, L->nseg);
}

/* ---- constants -------------------------------------------------------------------------------- */

/* A number of a numeric comparison: it must fit a double. */
static bool numeric_value(lowerer *L, const jv *v, const char *what, double *d)
{
    if (v->type != J_NUMBER) {
        err(L, v, "the value of %s must be a number", what);
        return false;
    }
    if (!vm_number_value(v->str, v->slen, d)) {
        err(L, v, "cannot compare number %.*s: it is outside the range of a double",
            (int)v->slen, v->str);
        return false;
    }
    return true;
}

/* An exact value: string, number, true, false or null. */
static bool exact_const(lowerer *L, const jv *v, bool fold, uint32_t *k)
{
    switch (v->type) {
    case J_STRING:
        *k = cc_const_string(L->c, v->str, v->slen, fold, !fold);
        return true;
    case J_NUMBER: {
        double d;
        /* A number beyond the double range can still be matched exactly, by its decimal value. */
        if (!vm_number_value(v->str, v->slen, &d))
            d = NAN;
        *k = cc_const_number(L->c, v->str, v->slen, d);
        return true;
    }
    case J_TRUE: *k = cc_const_simple(L->c, VM_C_TRUE); return true;
    case J_FALSE: *k = cc_const_simple(L->c, VM_C_FALSE); return true;
    case J_NULL: *k = cc_const_simple(L->c, VM_C_NULL); return true;
    default: return false;
    }
}

static ir *test(lowerer *L, const jv *at, vm_test_kind kind, unsigned flags, const uint32_t *k, uint32_t n)
{
    return ir_test(L->c, current_path(L), cc_test(L->c, kind, flags, k, n), span_of(L, at));
}

/* A string operand: reports "<op> match pattern must be a string". */
static bool want_string(lowerer *L, const jv *v, const char *op)
{
    if (v->type == J_STRING)
        return true;
    err(L, v, "%s match pattern must be a string, not %s", op, cc_json_type_name(v->type));
    return false;
}

static bool wildcard_ok(lowerer *L, const jv *v)
{
    char msg[160];
    size_t pos;
    if (cc_check_wildcard(v->str, v->slen, msg, sizeof msg, &pos))
        return true;
    cc_error(L->u, string_offset(L, v, pos), 2, "%s", msg);
    return false;
}

/* Quamina's "shellstyle": '*' is the only special character, so backslashes are literal. */
static const char *shellstyle_as_wildcard(lowerer *L, const jv *v, size_t *n)
{
    char *out = cc_alloc(L->c, v->slen * 2 + 1);
    size_t o = 0;
    for (size_t i = 0; i < v->slen; i++) {
        if (v->str[i] == '\\')
            out[o++] = '\\';
        out[o++] = v->str[i];
    }
    *n = o;
    return out;
}

static bool regex_const(lowerer *L, const jv *v, uint32_t *k)
{
    char msg[200];
    size_t pos;
    if (cc_const_regex(L->c, v->str, v->slen, '~', k, msg, sizeof msg, &pos))
        return true;
    cc_error(L->u, string_offset(L, v, pos < v->slen ? pos : v->slen), 1,
             "invalid regular expression: %s", msg);
    return false;
}

/* ---- operators ---------------------------------------------------------------------------------- */

/* "prefix" / "suffix": a string, or {"equals-ignore-case": string}. */
static ir *lower_affix(lowerer *L, const jv *op, vm_test_kind kind, unsigned flags)
{
    const char *name = kind == VM_T_PREFIX ? "prefix" : "suffix";
    if (op->type == J_OBJECT) {
        if (op->nkids != 1) {
            err(L, op, op->nkids ? "only one key is allowed in a %s expression"
                                 : "empty %s expression", name);
            return NULL;
        }
        const jv *inner = op->kids;
        if (!key_is(inner, "equals-ignore-case")) {
            err_key(L, inner, "unsupported %s pattern: %.*s (only equals-ignore-case)", name,
                    (int)inner->klen, inner->key);
            return NULL;
        }
        if (!want_string(L, inner, "equals-ignore-case"))
            return NULL;
        uint32_t k = cc_const_string(L->c, inner->str, inner->slen, true, false);
        return test(L, op, kind, flags | VM_TF_CI, &k, 1);
    }
    if (!want_string(L, op, name))
        return NULL;
    uint32_t k = cc_const_string(L->c, op->str, op->slen, false, false);
    return test(L, op, kind, flags, &k, 1);
}

/* One string or a list of strings, each checked by `check` and turned into a constant. */
static bool string_list(lowerer *L, const jv *v, const char *what, bool fold, bool nonempty,
                        bool (*check)(lowerer *, const jv *), u32vec *out)
{
    const jv *items = v->type == J_ARRAY ? v->kids : v;
    if (v->type == J_ARRAY && v->nkids == 0) {
        err(L, v, "empty arrays are not allowed");
        return false;
    }
    for (const jv *x = items; x; x = v->type == J_ARRAY ? x->next : NULL) {
        if (x->type != J_STRING) {
            err(L, x, "%s match pattern must be a string, not %s", what, cc_json_type_name(x->type));
            return false;
        }
        if (nonempty && x->slen == 0) {
            err(L, x, "empty %s is not allowed here", what);
            return false;
        }
        if (check && !check(L, x))
            return false;
        uint32_t k = cc_const_string(L->c, x->str, x->slen, fold, false);
        vec_push(*out, k);
    }
    return true;
}

/* An anything-but value: a number as exact_const makes it, a string compared as text, without
 * the other spellings of an IP address that == accepts (event-ruler keeps anything-but values
 * as text: `{"anything-but": "10.0.0.1"}` lets "10.0.0.001" pass). */
static void anything_but_const(lowerer *L, const jv *v, uint32_t *k)
{
    if (v->type == J_STRING)
        *k = cc_const_string(L->c, v->str, v->slen, false, false);
    else
        exact_const(L, v, false, k);
}

static ir *lower_anything_but(lowerer *L, const jv *op)
{
    u32vec ks = { 0 };
    ir *r = NULL;
    switch (op->type) {
    case J_STRING:
    case J_NUMBER: {
        uint32_t k;
        if (op->type == J_NUMBER) {
            double d;
            if (!numeric_value(L, op, "anything-but", &d))
                return NULL;
        }
        anything_but_const(L, op, &k);
        return test(L, op, VM_T_EQ, VM_TF_NEG, &k, 1);
    }
    case J_ARRAY: {
        if (op->nkids == 0) {
            err(L, op, "empty arrays are not allowed");
            return NULL;
        }
        jtype first = op->kids->type;
        for (const jv *x = op->kids; x; x = x->next) {
            if (x->type != J_STRING && x->type != J_NUMBER) {
                err(L, x, "inside an anything-but list, only strings or numbers are allowed, not %s",
                    cc_json_type_name(x->type));
                goto out;
            }
            if (x->type != first) {
                err(L, x, "inside an anything-but list, all values must be strings or all numbers");
                goto out;
            }
            double d;
            if (x->type == J_NUMBER && !numeric_value(L, x, "anything-but", &d))
                goto out;
            uint32_t k;
            anything_but_const(L, x, &k);
            vec_push(ks, k);
        }
        r = test(L, op, VM_T_EQ, VM_TF_NEG, ks.v, ks.n);
        goto out;
    }
    case J_OBJECT: {
        if (op->nkids != 1) {
            err(L, op, op->nkids ? "only one key is allowed in an anything-but expression"
                                 : "empty anything-but expression");
            return NULL;
        }
        const jv *in = op->kids;
        vm_test_kind kind;
        bool fold = false, nonempty = false;
        bool (*check)(lowerer *, const jv *) = NULL;
        if (key_is(in, "prefix")) {
            kind = VM_T_PREFIX, nonempty = true;
        } else if (key_is(in, "suffix")) {
            kind = VM_T_SUFFIX, nonempty = true;
        } else if (key_is(in, "equals-ignore-case")) {
            kind = VM_T_EQ, fold = true;
        } else if (key_is(in, "wildcard")) {
            kind = VM_T_WILDCARD, check = wildcard_ok;
        } else {
            err_key(L, in, "unsupported anything-but pattern: %.*s (prefix, suffix, "
                    "equals-ignore-case or wildcard)", (int)in->klen, in->key);
            return NULL;
        }
        char what[64];
        snprintf(what, sizeof what, "%.*s", (int)in->klen, in->key);
        if (string_list(L, in, what, fold, nonempty, check, &ks))
            r = test(L, op, kind, VM_TF_NEG | (fold ? VM_TF_CI : 0), ks.v, ks.n);
        goto out;
    }
    default:
        err(L, op, "the value of anything-but must be a string, a number, a list of them, or an object");
        return NULL;
    }
out:
    free(ks.v);
    return r;
}

/* Reads one "op, number" pair of a numeric expression at x. */
static bool numeric_term(lowerer *L, const jv *x, char name[3], double *d)
{
    static const char *const ops[] = { "=", "<", "<=", ">", ">=" };
    if (x->type != J_STRING) {
        err(L, x, "expected a comparison operator (=, <, <=, >, >=) in numeric, not %s",
            cc_json_type_name(x->type));
        return false;
    }
    size_t i = 0;
    while (i < 5 && !(strlen(ops[i]) == x->slen && memcmp(ops[i], x->str, x->slen) == 0))
        i++;
    if (i == 5) {
        err(L, x, "unrecognized numeric operator: %.*s (=, <, <=, >, >=)", (int)x->slen, x->str);
        return false;
    }
    strcpy(name, ops[i]);
    char what[16];
    snprintf(what, sizeof what, "'%s'", ops[i]);
    if (!x->next) {
        err(L, x, "the value of %s must be a number", what);
        return false;
    }
    return numeric_value(L, x->next, what, d);
}

/* "numeric": [op, n] with op one of = < <= > >=, or a range [">"|">=", lo, "<"|"<=", hi]. */
static ir *lower_numeric(lowerer *L, const jv *op)
{
    if (op->type != J_ARRAY) {
        err(L, op, "the value of numeric must be an array, as in [\">\", 0, \"<=\", 5]");
        return NULL;
    }
    if (op->nkids == 0) {
        err(L, op, "empty arrays are not allowed");
        return NULL;
    }
    double inf = 1.0 / 0.0, lo = -inf, hi = inf, d1, d2;
    bool lo_open = true, hi_open = true;
    char o1[3], o2[3];
    const jv *t1 = op->kids;
    if (!numeric_term(L, t1, o1, &d1))
        return NULL;
    const jv *t2 = t1->next->next;
    if (!t2) {
        if (o1[0] == '=')
            lo = hi = d1, lo_open = hi_open = false;
        else if (o1[0] == '>')
            lo = d1, lo_open = o1[1] == 0;
        else
            hi = d1, hi_open = o1[1] == 0;
    } else {
        if (o1[0] != '>') {
            err(L, t1, "too many elements in numeric expression: only a range takes two terms, "
                       "and it starts with > or >=");
            return NULL;
        }
        if (!numeric_term(L, t2, o2, &d2))
            return NULL;
        if (o2[0] != '<') {
            err(L, t2, "bad numeric range operator: %s (the upper bound takes < or <=)", o2);
            return NULL;
        }
        if (t2->next->next) {
            err(L, t2->next->next, "too many terms in numeric range expression");
            return NULL;
        }
        if (!(d1 < d2)) {
            err(L, op, "bottom must be less than top in a numeric range");
            return NULL;
        }
        lo = d1, lo_open = o1[1] == 0;
        hi = d2, hi_open = o2[1] == 0;
    }
    uint32_t k = cc_const_range(L->c, lo, lo_open, hi, hi_open);
    return test(L, op, VM_T_RANGE, 0, &k, 1);
}

/* One element of a field's match list: a value or an operator object. */
static ir *lower_match(lowerer *L, const jv *m)
{
    uint32_t k;
    if (m->type == J_ARRAY) {
        err(L, m, "a match value must be a string, number, true, false, null or an operator object");
        return NULL;
    }
    if (m->type != J_OBJECT) {
        exact_const(L, m, false, &k);
        return test(L, m, VM_T_EQ, 0, &k, 1);
    }
    if (m->nkids == 0) {
        err(L, m, "empty operator object: expected one of prefix, suffix, equals-ignore-case, "
                  "wildcard, anything-but, numeric, exists, cidr, exactly, regexp");
        return NULL;
    }
    if (m->nkids > 1) {
        err_key(L, m->kids->next, "only one key is allowed in a match expression");
        return NULL;
    }
    const jv *op = m->kids;
    if (key_is(op, "exactly")) {
        if (!want_string(L, op, "exact"))
            return NULL;
        k = cc_const_string(L->c, op->str, op->slen, false, false);
        return test(L, m, VM_T_EQ, 0, &k, 1);
    }
    if (key_is(op, "prefix"))
        return lower_affix(L, op, VM_T_PREFIX, 0);
    if (key_is(op, "suffix"))
        return lower_affix(L, op, VM_T_SUFFIX, 0);
    if (key_is(op, "equals-ignore-case")) {
        if (!want_string(L, op, "equals-ignore-case"))
            return NULL;
        k = cc_const_string(L->c, op->str, op->slen, true, false);
        return test(L, m, VM_T_EQ, VM_TF_CI, &k, 1);
    }
    if (key_is(op, "wildcard") || key_is(op, "shellstyle")) {
        bool shell = key_is(op, "shellstyle");
        if (!want_string(L, op, shell ? "shellstyle" : "wildcard"))
            return NULL;
        const char *twice = shell ? strstr(op->str, "**") : NULL;
        if (twice) {
            cc_error(L->u, string_offset(L, op, (size_t)(twice - op->str)), 2,
                     "consecutive '*' in shellstyle (one '*' already matches any run)");
            return NULL;
        }
        if (!shell && !wildcard_ok(L, op))
            return NULL;
        size_t n = op->slen;
        const char *s = shell ? shellstyle_as_wildcard(L, op, &n) : op->str;
        k = cc_const_string(L->c, s, n, false, false);
        return test(L, m, VM_T_WILDCARD, 0, &k, 1);
    }
    if (key_is(op, "anything-but"))
        return lower_anything_but(L, op);
    if (key_is(op, "numeric"))
        return lower_numeric(L, op);
    if (key_is(op, "exists")) {
        if (op->type != J_TRUE && op->type != J_FALSE) {
            err(L, op, "exists match pattern must be either true or false");
            return NULL;
        }
        ir *t = test(L, m, VM_T_EXISTS, 0, NULL, 0);
        if (op->type == J_TRUE)
            return t;
        ir *n = ir_new(L->c, IR_NOT, span_of(L, m));
        ir_add(L->c, n, t);
        return n;
    }
    if (key_is(op, "cidr")) {
        const char *why;
        if (!want_string(L, op, "cidr"))
            return NULL;
        if (!cc_const_cidr(L->c, op->str, op->slen, &k, &why)) {
            err(L, op, "%s", why);
            return NULL;
        }
        return test(L, m, VM_T_CIDR, 0, &k, 1);
    }
    if (key_is(op, "regexp")) {
        if (!want_string(L, op, "regexp") || !regex_const(L, op, &k))
            return NULL;
        return test(L, m, VM_T_REGEX, 0, &k, 1);
    }
    err_key(L, op, "unrecognized match type %.*s", (int)op->klen, op->key);
    return NULL;
}

/* A key's array of alternatives: its plain values become one test with a constant each (one
 * hash-like lookup rather than a chain of tests), its operator objects a test each. */
static ir *lower_value_list(lowerer *L, const jv *list)
{
    u32vec values = { 0 };
    ir *any = ir_new(L->c, IR_OR, span_of(L, list));
    bool ok = true;
    for (const jv *x = list->kids; x; x = x->next) {
        uint32_t k;
        if (x->type != J_OBJECT && x->type != J_ARRAY && exact_const(L, x, false, &k)) {
            vec_push(values, k);
            continue;
        }
        ir *t = lower_match(L, x);
        if (t)
            ir_add(L->c, any, t);
        else
            ok = false;
    }
    if (ok && values.n)
        ir_add(L->c, any, test(L, list, VM_T_EQ, 0, values.v, values.n));
    free(values.v);
    if (!ok)
        return NULL;
    return any->nkid == 1 ? any->kid[0] : any;
}

/* ---- objects ------------------------------------------------------------------------------------ */

/* Names event-ruler reserves for operators: none may be a field name inside "$or". */
static const char *const reserved[] = {
    "exactly", "equals-ignore-case", "prefix", "suffix", "anything-but", "exists", "wildcard",
    "numeric", "cidr", "regexp", "shellstyle", "=", "<", "<=", ">", ">=", "regex",
    "not-wildcard", "not-equals-ignore-case", "date-after", "date-on-or-after", "date-before",
    "date-on-or-before", "in-date-range", "ip-address-in-range", "ip-address-not-in-range",
};

/* Patterns are lowered the way event-ruler reads them: a pattern is a set of sub-rules (one per
 * combination of "$or" branches), each a conjunction of one condition per path.  Members are
 * taken in document order and a later condition on a path replaces an earlier one in the same
 * sub-rule; a "$or" branch starts from the conditions before it, and members after the "$or"
 * apply to every branch. */
typedef struct { uint32_t path; ir *cond; } entry;
typedef struct { entry *v; uint32_t n; } subrule;
typedef struct { subrule *v; uint32_t n, cap; } subrules;

enum { MAX_SUBRULES = 4096 };

static void add_subrule(lowerer *L, subrules *S, subrule s)
{
    if (S->n == S->cap) {
        uint32_t cap = S->cap ? S->cap * 2 : 4;
        subrule *v = cc_rule_alloc(L->c, cap * sizeof *v);
        if (S->n)
            memcpy(v, S->v, S->n * sizeof *v);
        S->v = v;
        S->cap = cap;
    }
    S->v[S->n++] = s;
}

/* Sets the condition on path in sub-rule s.  Sub-rules share their entry arrays after a "$or"
 * copies them, so every change writes a new array. */
static void set_cond(lowerer *L, subrule *s, uint32_t path, ir *cond)
{
    uint32_t at = 0;
    while (at < s->n && s->v[at].path != path)
        at++;
    entry *v = cc_rule_alloc(L->c, (s->n + 1) * sizeof *v);
    if (s->n)
        memcpy(v, s->v, s->n * sizeof *v);
    v[at] = (entry){ path, cond };
    if (at == s->n)
        s->n++;
    s->v = v;
}

static bool lower_members(lowerer *L, const jv *obj, subrules *S);

/* "$or": [ {...}, {...}, ... ] — every sub-rule so far continues in each branch. */
static bool lower_or(lowerer *L, const jv *m, subrules *S)
{
    if (m->type != J_ARRAY) {
        err(L, m, "the value of $or must be an array of pattern objects");
        return false;
    }
    if (m->nkids < 2) {
        err(L, m, "there must be at least 2 objects in a $or");
        return false;
    }
    bool ok = true;
    for (const jv *b = m->kids; b; b = b->next)
        if (b->type != J_OBJECT) {
            err(L, b, "only JSON objects are allowed in the array of a $or");
            ok = false;
        }
    if (!ok)
        return false;
    /* Each branch is lowered once, from nothing; every sub-rule so far then continues in each
     * of the branch's sub-rules, whose conditions replace its own on the same paths. */
    subrules out = { 0 };
    for (const jv *b = m->kids; b && ok; b = b->next) {
        subrules branch = { 0 };
        add_subrule(L, &branch, (subrule){ NULL, 0 });
        L->in_or++;
        ok = lower_members(L, b, &branch);
        L->in_or--;
        if (!ok)
            break;
        if ((uint64_t)out.n + (uint64_t)S->n * branch.n > MAX_SUBRULES) {
            err(L, m, "this pattern expands to more than %d alternatives", MAX_SUBRULES);
            return false;
        }
        for (uint32_t i = 0; i < S->n; i++)
            for (uint32_t k = 0; k < branch.n; k++) {
                subrule s = S->v[i];
                for (uint32_t e = 0; e < branch.v[k].n; e++)
                    set_cond(L, &s, branch.v[k].v[e].path, branch.v[k].v[e].cond);
                add_subrule(L, &out, s);
            }
    }
    *S = out;
    return ok;
}

/* Adds the members of object obj (at the current path) to every sub-rule of S. */
static bool lower_members(lowerer *L, const jv *obj, subrules *S)
{
    if (obj->nkids == 0) {
        err(L, obj, "empty objects are not allowed in a pattern");
        return false;
    }
    bool ok = true;
    for (const jv *m = obj->kids; m; m = m->next) {
        const jv *later = m->next;
        while (later && !(later->klen == m->klen && memcmp(later->key, m->key, m->klen) == 0))
            later = later->next;
        if (later) {
            cc_warning(L->u, m->koff, m->kspan,
                       "duplicate key \"%.*s\": the later one replaces it", (int)m->klen, m->key);
            continue;
        }
        if (key_is(m, "$or")) {
            ok &= lower_or(L, m, S);
            continue;
        }
        bool reserved_key = false;
        if (L->in_or)
            for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
                if (key_is(m, reserved[i])) {
                    err_key(L, m, "%s is an operator, not a field name: it cannot be used as a "
                            "field inside $or", reserved[i]);
                    reserved_key = true;
                }
        if (reserved_key) {
            ok = false;
            continue;
        }
        uint32_t before = L->nseg;
        if (!cc_split_name(m->key, m->klen, L->segs, L->lens, &L->nseg)) {
            err_key(L, m, "a path has at most %d segments", CC_MAX_PATH);
            ok = false;
            continue;
        }
        if (m->type == J_OBJECT) {
            ok &= lower_members(L, m, S);
        } else if (m->type == J_ARRAY) {
            ir *k = NULL;
            if (m->nkids == 0) {
                err(L, m, "empty arrays are not allowed");
            } else {
                k = lower_value_list(L, m);
                ok &= k != NULL;
            }
            if (k) {
                uint32_t path = current_path(L);
                for (uint32_t i = 0; i < S->n; i++)
                    set_cond(L, &S->v[i], path, k);
            } else {
                ok = false;
            }
        } else {
            err(L, m, "the value of \"%.*s\" must be an object or an array of match values",
                (int)m->klen, m->key);
            ok = false;
        }
        L->nseg = before;
    }
    return ok;
}

static ir *lower_object(lowerer *L, const jv *obj)
{
    subrules S = { 0 };
    add_subrule(L, &S, (subrule){ NULL, 0 });
    if (!lower_members(L, obj, &S))
        return NULL;
    ir *any = ir_new(L->c, IR_OR, span_of(L, obj));
    for (uint32_t i = 0; i < S.n; i++) {
        ir *all = ir_new(L->c, IR_AND, span_of(L, obj));
        for (uint32_t k = 0; k < S.v[i].n; k++)
            ir_add(L->c, all, S.v[i].v[k].cond);
        ir_add(L->c, any, all->nkid == 1 ? all->kid[0] : all);
    }
    return any->nkid == 1 ? any->kid[0] : any;
}

ir *cc_lower_pattern(cc_unit *u, ast *json)
{
    /* The JSON tree serves only while the pattern is lowered (the IR keeps spans, and constants
     * copy their text into the string pool). */
    jv *root = cc_json_parse_scratch(u, json->off, json->len);
    ir *r = NULL;
    lowerer L = { .u = u, .c = u->comp };
    if (root && root->type != J_OBJECT) {
        err(&L, root, "a pattern must be a JSON object");
    } else if (root) {
        int before = u->comp->nerrors;
        r = lower_object(&L, root);
        r = u->comp->nerrors == before ? r : NULL;
    }
    cc_scratch_reset(u->comp);
    return r;
}
