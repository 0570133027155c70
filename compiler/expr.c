/*
 * expr.c — lowers `match` expressions to the IR, checking operand types.
 *
 * Every predicate becomes one test on one path.  Negated operators (`!=`, `not in`,
 * `not starts_with`, ...) are anything-but tests: the field must be there and fail the operator;
 * `not (...)` and `not exists` are IR_NOT, which holds when the field is absent too.
 */
#include <stdlib.h>
#include <string.h>

#include "cc.h"
#include "parser.h"

/* Lowers a path node to a path index. */
static uint32_t lower_path(cc_unit *u, ast *p, bool *ok)
{
    const char *segs[CC_MAX_PATH];
    size_t lens[CC_MAX_PATH];
    uint32_t n = 0;
    for (ast *s = p->a; s; s = s->next) {
        const char *name = u->text + s->tok.off;
        size_t len = s->tok.len;
        if (s->tok.type == TK_STRING && !(name = cc_string(u, &s->tok, &len))) {
            *ok = false;
            return 0;
        }
        if (!cc_split_name(name, len, segs, lens, &n)) {
            cc_error_at(u, p, "a path has at most %d segments", CC_MAX_PATH);
            *ok = false;
            return 0;
        }
    }
    return cc_path(u->comp, segs, lens, n);
}

/* What a value token is, for messages. */
static const char *value_name(int op)
{
    switch (op) {
    case TK_STRING: return "a string";
    case TK_NUMBER: return "a number";
    case TK_TRUE: case TK_FALSE: return "a boolean";
    case TK_NULL: return "null";
    case TK_QUANTITY: return "a duration or size";
    case TK_IDENT: return "a name";
    case TK_REGEX: return "a regular expression";
    default: return "a value";
    }
}

/* Reports a right-hand side that is not a plain value; returns false then. */
static bool want_scalar(cc_unit *u, ast *v, const char *opname)
{
    if (v->kind == A_LIST) {
        cc_error_at(u, v, "%s compares with one value; use 'in [...]' for a list", opname);
        return false;
    }
    if (v->kind != A_VALUE || v->op == TK_REGEX) {
        cc_error_at(u, v, "%s needs a string, number, true, false or null here", opname);
        return false;
    }
    if (v->op == TK_IDENT) {
        cc_error_at(u, v, "expected a value, found the name '%.*s' (quote it to compare with text)",
                    (int)v->tok.len, u->text + v->tok.off);
        return false;
    }
    if (v->op == TK_QUANTITY) {
        cc_error_at(u, v, "durations and sizes are not event values; write a number or a string");
        return false;
    }
    return true;
}

/* Lowers a scalar value for equality.  fold: ignore_case; asnum: `as number`. */
static bool scalar_const(cc_unit *u, ast *v, bool fold, bool asnum, const char *opname,
                         uint32_t *out)
{
    cc_comp *c = u->comp;
    if (!want_scalar(u, v, opname))
        return false;
    if (fold && v->op != TK_STRING) {
        cc_error_at(u, v, "ignore_case compares strings, not %s", value_name(v->op));
        return false;
    }
    if (asnum && v->op != TK_NUMBER) {
        cc_error_at(u, v, "'as number' compares with numbers, not %s", value_name(v->op));
        return false;
    }
    switch (v->op) {
    case TK_STRING: {
        size_t n;
        const char *s = cc_string(u, &v->tok, &n);
        if (!s)
            return false;
        *out = cc_const_string(c, s, n, fold, !fold);
        return true;
    }
    case TK_NUMBER: {
        /* Equality is by decimal value, so a number beyond the double range still works. */
        double d;
        if (!vm_number_value(u->text + v->tok.off, v->tok.len, &d))
            d = 0.0 / 0.0;
        *out = cc_const_number(c, u->text + v->tok.off, v->tok.len, d);
        return true;
    }
    case TK_TRUE: *out = cc_const_simple(c, VM_C_TRUE); return true;
    case TK_FALSE: *out = cc_const_simple(c, VM_C_FALSE); return true;
    default: *out = cc_const_simple(c, VM_C_NULL); return true;
    }
}

/* The string operand of starts_with / ends_with / contains / like / in cidr. */
static const char *string_operand(cc_unit *u, ast *v, const char *opname, size_t *n)
{
    if (v->kind != A_VALUE || v->op != TK_STRING) {
        cc_error_at(u, v, "%s needs a string, not %s", opname,
                    v->kind == A_LIST ? "a list" : value_name(v->op));
        return NULL;
    }
    return cc_string(u, &v->tok, n);
}

/* Decodes the body of a /regex/ token: "\/" stands for "/"; other escapes stay for the
 * regex compiler.  Returns the body in the arena; *map gets, for each output byte, its offset
 * in the token, so regex errors can point at the right column. */
static char *regex_body(cc_unit *u, const gr_token *t, size_t *n, uint32_t **map)
{
    const char *s = u->text + t->off + 1;
    size_t len = t->len - 2, o = 0;
    char *out = cc_alloc(u->comp, len + 1);
    *map = cc_alloc(u->comp, (len + 1) * sizeof **map);
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\\' && i + 1 < len && s[i + 1] == '/')
            i++;
        (*map)[o] = (uint32_t)(i + 1);
        out[o++] = s[i];
    }
    (*map)[o] = (uint32_t)(len + 1);
    *n = o;
    return out;
}

static const char *op_name(int op)
{
    switch (op) {
    case TK_EQ: return "'=='";
    case TK_NE: return "'!='";
    case TK_LT: return "'<'";
    case TK_LE: return "'<='";
    case TK_GT: return "'>'";
    case TK_GE: return "'>='";
    case TK_STARTS_WITH: return "starts_with";
    case TK_ENDS_WITH: return "ends_with";
    case TK_CONTAINS: return "contains";
    case TK_LIKE: return "like";
    case TK_MATCHES: return "matches";
    case TK_IN: return "in";
    case TK_CIDR: return "in cidr";
    default: return "this operator";
    }
}

/* Lowers one predicate `path [not] op [ignore_case] rhs`. */
static ir *lower_pred(cc_unit *u, ast *e)
{
    cc_comp *c = u->comp;
    bool ok = true;
    uint32_t path = lower_path(u, e->a, &ok);
    if (!ok)
        return NULL;
    bool neg = e->flags & AF_NEG, ci = e->flags & AF_CI, asnum = e->a->flags & AF_ASNUM;
    int op = e->op;
    const char *name = op_name(op);
    vm_span span = cc_span(u, e->off, e->len);
    unsigned flags = (neg ? VM_TF_NEG : 0) | (ci ? VM_TF_CI : 0) | (asnum ? VM_TF_ASNUM : 0);
    uint32_t k;

    if (neg && (op == TK_EQ || op == TK_NE || op == TK_LT || op == TK_LE || op == TK_GT || op == TK_GE)) {
        cc_error(u, e->c->off, e->c->len, "'not' cannot precede %s; write %s", name,
                 op == TK_EQ ? "'!='" : op == TK_NE ? "'=='" : "the opposite comparison");
        return NULL;
    }
    if (ci && !(op == TK_EQ || op == TK_NE || op == TK_STARTS_WITH || op == TK_ENDS_WITH ||
                op == TK_CONTAINS || op == TK_LIKE || op == TK_IN)) {
        cc_error(u, e->aux.off, e->aux.len, "ignore_case does not apply to %s", name);
        return NULL;
    }
    if (asnum && !(op == TK_EQ || op == TK_NE || op == TK_LT || op == TK_LE || op == TK_GT ||
                   op == TK_GE || op == TK_IN)) {
        cc_error_at(u, e->a, "'as number' applies to comparisons with numbers, not to %s", name);
        return NULL;
    }

    switch (op) {
    case TK_EQ:
    case TK_NE:
        if (!scalar_const(u, e->b, ci, asnum, name, &k))
            return NULL;
        if (op == TK_NE)
            flags |= VM_TF_NEG;
        return ir_test(c, path, cc_test(c, VM_T_EQ, flags, &k, 1), span);

    case TK_LT: case TK_LE: case TK_GT: case TK_GE: {
        ast *v = e->b;
        double d;
        if (v->kind != A_VALUE || v->op != TK_NUMBER) {
            cc_error_at(u, v, "%s compares numbers, not %s", name,
                        v->kind == A_LIST ? "a list" : value_name(v->op));
            return NULL;
        }
        if (!vm_number_value(u->text + v->tok.off, v->tok.len, &d)) {
            cc_error_at(u, v, "number outside the range of a double");
            return NULL;
        }
        double inf = 1.0 / 0.0;
        k = op == TK_LT ? cc_const_range(c, -inf, true, d, true)
          : op == TK_LE ? cc_const_range(c, -inf, true, d, false)
          : op == TK_GT ? cc_const_range(c, d, true, inf, true)
                        : cc_const_range(c, d, false, inf, true);
        return ir_test(c, path, cc_test(c, VM_T_RANGE, flags, &k, 1), span);
    }

    case TK_STARTS_WITH: case TK_ENDS_WITH: case TK_CONTAINS: case TK_LIKE: {
        size_t n;
        const char *s = string_operand(u, e->b, name, &n);
        if (!s)
            return NULL;
        if (op == TK_LIKE) {
            char err[160];
            size_t pos;
            if (!cc_check_wildcard(s, n, err, sizeof err, &pos)) {
                cc_error(u, cc_source_offset(u, &e->b->tok, pos), 2, "%s", err);
                return NULL;
            }
        }
        k = cc_const_string(c, s, n, ci, false);
        vm_test_kind kind = op == TK_STARTS_WITH ? VM_T_PREFIX : op == TK_ENDS_WITH ? VM_T_SUFFIX
                          : op == TK_CONTAINS ? VM_T_CONTAINS : VM_T_WILDCARD;
        return ir_test(c, path, cc_test(c, kind, flags, &k, 1), span);
    }

    case TK_MATCHES: {
        ast *v = e->b;
        if (v->kind != A_VALUE || v->op != TK_REGEX) {
            cc_error_at(u, v, "matches needs a regular expression between slashes, as in /^a.*z$/");
            return NULL;
        }
        size_t n, pos;
        uint32_t *map;
        char *body = regex_body(u, &v->tok, &n, &map);
        char err[200];
        if (!cc_const_regex(c, body, n, '\\', &k, err, sizeof err, &pos)) {
            uint32_t at = map[pos < n ? pos : n];
            cc_error(u, v->off + at, 1, "invalid regular expression: %s", err);
            return NULL;
        }
        return ir_test(c, path, cc_test(c, VM_T_REGEX, flags, &k, 1), span);
    }

    case TK_IN: {
        ast *v = e->b;
        if (v->kind != A_LIST) {
            cc_error_at(u, v, "in needs a list, as in [\"a\", \"b\"]");
            return NULL;
        }
        if (!v->a) {
            cc_error_at(u, v, "empty list: 'in []' can never match");
            return NULL;
        }
        u32vec ks = { 0 };
        for (ast *x = v->a; x; x = x->next) {
            if (!scalar_const(u, x, ci, asnum, "in", &k)) {
                ok = false;
                continue;
            }
            vec_push(ks, k);
        }
        ir *t = ok ? ir_test(c, path, cc_test(c, VM_T_EQ, flags, ks.v, ks.n), span) : NULL;
        free(ks.v);
        return t;
    }

    case TK_CIDR: {
        size_t n;
        const char *s = string_operand(u, e->b, name, &n);
        const char *why;
        if (!s)
            return NULL;
        if (!cc_const_cidr(c, s, n, &k, &why)) {
            cc_error_at(u, e->b, "%s", why);
            return NULL;
        }
        return ir_test(c, path, cc_test(c, VM_T_CIDR, flags, &k, 1), span);
    }
    }
    cc_error_at(u, e, "unknown operator");
    return NULL;
}

static ir *lower(cc_unit *u, ast *e);

/* Adds the operands of a chain of one operator (a and b and c, parsed as nested pairs) to n
 * directly, so that long chains stay linear.  Lowers every operand, even after an error. */
static bool gather(cc_unit *u, ast *e, ast_kind kind, ir *n)
{
    if (e->kind == kind) {
        bool l = gather(u, e->a, kind, n);
        bool r = gather(u, e->b, kind, n);
        return l && r;
    }
    ir *k = lower(u, e);
    if (k)
        ir_add(u->comp, n, k);
    return k != NULL;
}

static ir *lower(cc_unit *u, ast *e)
{
    cc_comp *c = u->comp;
    vm_span span = cc_span(u, e->off, e->len);
    switch (e->kind) {
    case A_AND:
    case A_OR: {
        ir *n = ir_new(c, e->kind == A_AND ? IR_AND : IR_OR, span);
        return gather(u, e, e->kind, n) ? n : NULL;
    }
    case A_NOT: {
        ir *k = lower(u, e->a);
        if (!k)
            return NULL;
        ir *n = ir_new(c, IR_NOT, span);
        ir_add(c, n, k);
        return n;
    }
    case A_EXISTS: {
        bool ok = true;
        if (e->a->flags & AF_ASNUM) {
            cc_error_at(u, e->a, "'as number' does not apply to exists");
            return NULL;
        }
        uint32_t path = lower_path(u, e->a, &ok);
        if (!ok)
            return NULL;
        ir *t = ir_test(c, path, cc_test(c, VM_T_EXISTS, 0, NULL, 0), span);
        if (!(e->flags & AF_NEG))
            return t;
        ir *n = ir_new(c, IR_NOT, span);
        ir_add(c, n, t);
        return n;
    }
    case A_PRED:
        return lower_pred(u, e);
    default:
        cc_error_at(u, e, "not an expression");
        return NULL;
    }
}

ir *cc_lower_expr(cc_unit *u, ast *e)
{
    /* Lower both sides of every operator even after an error, so one run reports them all. */
    int before = u->comp->nerrors;
    ir *r = lower(u, e);
    return u->comp->nerrors == before ? r : NULL;
}
