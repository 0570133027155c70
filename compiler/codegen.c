/*
 * codegen.c — emits a rule's bytecode from its IR.  Addresses are relative to the rule's first
 * instruction.  Shapes (see docs/bytecode.md):
 *
 *   test        TEST path test
 *   a and b     <a> <b>                (conditions without a negation first, see order_kids)
 *   a or b      FORK L1; <a>; JOIN L1 END; L1: <b>; END:
 *   not a       NOT END; <a>; NOTOK; END:
 *   rule        <condition> MATCH
 */
#include <stdlib.h>
#include <string.h>

#include "cc.h"

typedef struct {
    cc_comp *c;
    uint32_t base;    /* the rule's first instruction */
    bool overflow;
} gen;

static uint32_t here(gen *g)
{
    return g->c->code.n - g->base;
}

static uint32_t emit(gen *g, vm_opcode op, uint32_t a, uint32_t b, vm_span span)
{
    if (a > VM_MAX_A)
        g->overflow = true;
    vec_push(g->c->code, VM_INST(op, a & VM_MAX_A, b));
    vec_push(g->c->code_spans, span);
    return here(g) - 1;
}

static void patch_b(gen *g, uint32_t at, uint32_t b)
{
    vm_inst *i = &g->c->code.v[g->base + at];
    *i = VM_INST(VM_OP(*i), VM_A(*i), b);
}

/* 0: the condition holds no negation; 1: it holds one and also positive tests; 2: it is a
 * negation. */
static int negation_class(const ir *n)
{
    if (n->kind == IR_NOT)
        return 2;
    for (uint32_t i = 0; i < n->nkid; i++)
        if (negation_class(n->kid[i]))
            return 1;
    return 0;
}

/* Orders the conditions of an 'and': those without a negation first, then those that mix tests
 * and negations (an 'or' with a 'not' branch may still choose array elements), then plain
 * negations.  A negation is thus decided under the array elements chosen by the positive
 * conditions beside it, whatever the order they were written in (docs/language.md, "Arrays"). */
static void order_kids(ir *n)
{
    ir **tmp = malloc(n->nkid * sizeof *tmp);
    uint8_t *cls = malloc(n->nkid);
    uint32_t k = 0;
    if (!tmp || !cls)
        abort();
    for (uint32_t i = 0; i < n->nkid; i++)
        cls[i] = (uint8_t)negation_class(n->kid[i]);
    for (int want = 0; want <= 2; want++)
        for (uint32_t i = 0; i < n->nkid; i++)
            if (cls[i] == want)
                tmp[k++] = n->kid[i];
    memcpy(n->kid, tmp, n->nkid * sizeof *tmp);
    free(tmp);
    free(cls);
}

static void gen_node(gen *g, ir *n)
{
    switch (n->kind) {
    case IR_TEST:
        emit(g, VM_OP_TEST, n->path, n->test, n->span);
        return;
    case IR_AND:
        order_kids(n);
        for (uint32_t i = 0; i < n->nkid; i++)
            gen_node(g, n->kid[i]);
        return;
    case IR_OR: {
        uint32_t *joins = malloc(n->nkid * sizeof *joins);
        if (!joins)
            abort();
        for (uint32_t i = 0; i + 1 < n->nkid; i++) {
            uint32_t fork = emit(g, VM_OP_FORK, 0, 0, n->kid[i]->span);
            gen_node(g, n->kid[i]);
            joins[i] = emit(g, VM_OP_JOIN, 0, 0, n->kid[i]->span);
            uint32_t next = here(g);
            patch_b(g, fork, next);
            vm_inst *j = &g->c->code.v[g->base + joins[i]];
            *j = VM_INST(VM_OP_JOIN, next, 0);
        }
        gen_node(g, n->kid[n->nkid - 1]);
        for (uint32_t i = 0; i + 1 < n->nkid; i++)
            patch_b(g, joins[i], here(g));
        free(joins);
        return;
    }
    case IR_NOT: {
        uint32_t at = emit(g, VM_OP_NOT, 0, 0, n->span);
        gen_node(g, n->kid[0]);
        emit(g, VM_OP_NOTOK, 0, 0, n->span);
        patch_b(g, at, here(g));
        return;
    }
    }
}

uint32_t cc_codegen(cc_comp *c, ir *root, vm_span rule_span, uint32_t *n)
{
    gen g = { c, c->code.n, false };
    gen_node(&g, root);
    emit(&g, VM_OP_MATCH, 0, 0, rule_span);
    *n = here(&g);
    if (g.overflow) {
        cc_unit *u = c->units.v[rule_span.src];
        cc_error(u, rule_span.off, rule_span.len, "rule too large to compile");
    }
    return g.base;
}
