/*
 * explain.c — `ebc explain`: the index of every bus drawn as an ASCII tree.  Per path it shows
 * where each predicate is filed (a key of the hash table, the range tree, the list every leaf
 * passes, the list tested one by one); then the clauses each predicate triggers (a clause that
 * needs all its predicates waits on its rarest one, the only one filed; the others are tested
 * when it passes) and what each clause needs.  Golden tests compare this text, so an optimisation that stops firing (a
 * predicate falling back to one-by-one tests, a rule losing its clauses) fails a test.
 */
#include <stdio.h>
#include <string.h>

#include "vm_int.h"

static const char *const kind_names[VM_K__COUNT] = {
    "==", "== ignore_case", "== number", "== true", "== false", "== null", "== ip",
    "starts_with", "starts_with ignore_case", "ends_with", "ends_with ignore_case", "in cidr",
};

/* Writes s[0..n) as a JSON string, or as hex for the raw address keys. */
static void put_key(const vm_program *p, const vm_ix_key *k, FILE *out)
{
    const unsigned char *s = (const unsigned char *)p->strs + k->key.off;
    if (k->kind == VM_K_IP || k->kind == VM_K_CIDR) {
        char buf[64];
        vm_format_ip(s, k->kind == VM_K_CIDR ? k->aux : 128, buf, sizeof buf);
        fputs(buf, out);
        return;
    }
    if (k->kind == VM_K_NUM) {
        fwrite(s, 1, k->key.len, out);   /* canonical: digits e exponent */
        return;
    }
    if (k->kind == VM_K_TRUE || k->kind == VM_K_FALSE || k->kind == VM_K_NULL)
        return;
    fputc('"', out);
    for (uint32_t i = 0; i < k->key.len; i++) {
        if (s[i] == '"' || s[i] == '\\')
            fprintf(out, "\\%c", s[i]);
        else if (s[i] < 0x20)
            fprintf(out, "\\u%04x", s[i]);
        else
            fputc(s[i], out);
    }
    fputc('"', out);
}

static void put_preds(const vm_program *p, uint32_t list0, uint32_t n, FILE *out)
{
    for (uint32_t i = 0; i < n; i++)
        fprintf(out, "%sp%u", i ? " " : "", p->ix_refs[list0 + i]);
}

/* Writes the predicates of the range tree of path entry ix (each once). */
static void put_range_preds(const vm_program *p, const vm_ix_bus *b, const vm_ix_path *ix, FILE *out)
{
    bool first = true;
    for (uint32_t i = 0; i < b->npred; i++) {
        bool in_tree = false;
        for (uint32_t k = 0; k < ix->nnode && !in_tree; k++) {
            const vm_ix_node *nd = &p->ix_nodes[ix->node0 + k];
            for (uint32_t j = 0; j < nd->nlist && !in_tree; j++)
                in_tree = p->ix_refs[nd->list0 + j] == i;
        }
        if (in_tree) {
            fprintf(out, "%sp%u", first ? "" : " ", i);
            first = false;
        }
    }
}

static void explain_bus(const vm_program *p, uint32_t bi, FILE *out)
{
    const vm_ix_bus *b = &p->ix_buses[bi];
    uint32_t nrules = 0;
    for (uint32_t r = 0; r < p->nrules; r++)
        nrules += p->rules[r].bus == bi;
    fprintf(out, "bus %s: %u rule%s, %u predicate%s, %u clause%s\n", vm_s(p, p->buses[bi].name),
            nrules, nrules == 1 ? "" : "s", b->npred, b->npred == 1 ? "" : "s", b->nclause,
            b->nclause == 1 ? "" : "s");
    fprintf(out, "├── paths\n");
    for (uint32_t i = 0; i < b->npath; i++) {
        uint32_t ipath = b->path0 + i;
        const vm_ix_path *ix = &p->ix_paths[ipath];
        bool last_path = i + 1 == b->npath;
        const char *pre = last_path ? "│       " : "│   │   ";
        fprintf(out, "│   %s ", last_path ? "└──" : "├──");
        vm_print_path(p, ix->path, out);
        fputc('\n', out);
        /* Keys of this path (in table order: kind, then key), the range tree, the lists. */
        uint32_t items = (ix->nnode > 0) + (ix->nband > 0) + (ix->nexists > 0) + (ix->ngeneric > 0);
        uint32_t done = 0;
        for (uint32_t k = 0; k < p->nix_keys; k++)
            items += p->ix_keys[k].ipath == ipath;
#define ITEM() fprintf(out, "%s%s ", pre, ++done == items ? "└──" : "├──")
        for (uint32_t k = 0; k < p->nix_keys; k++) {
            const vm_ix_key *key = &p->ix_keys[k];
            if (key->ipath != ipath)
                continue;
            ITEM();
            fprintf(out, "key %s", kind_names[key->kind]);
            if (key->kind != VM_K_TRUE && key->kind != VM_K_FALSE && key->kind != VM_K_NULL)
                fputc(' ', out);
            put_key(p, key, out);
            fputs(" -> ", out);
            put_preds(p, key->list0, key->nlist, out);
            fputc('\n', out);
        }
        if (ix->nnode) {
            ITEM();
            fprintf(out, "range %s over %u bound%s -> ", ix->nnode & 1 ? "slots" : "tree", ix->nbound,
                    ix->nbound == 1 ? "" : "s");
            put_range_preds(p, b, ix, out);
            fputc('\n', out);
        }
        if (ix->nband) {
            ITEM();
            fputs("bands by lower bound, for leaves that pass them together -> ", out);
            put_preds(p, ix->band0, ix->nband, out);
            fputc('\n', out);
        }
        if (ix->nexists) {
            ITEM();
            fputs("every leaf -> ", out);
            put_preds(p, ix->exists0, ix->nexists, out);
            fputc('\n', out);
        }
        if (ix->ngeneric) {
            ITEM();
            fputs("tested one by one -> ", out);
            put_preds(p, ix->generic0, ix->ngeneric, out);
            fputc('\n', out);
        }
#undef ITEM
    }
    fprintf(out, "├── predicates\n");
    for (uint32_t i = 0; i < b->npred; i++) {
        const vm_ix_pred *pr = &p->ix_preds[b->pred0 + i];
        fprintf(out, "│   %s p%u: ", i + 1 == b->npred ? "└──" : "├──", i);
        vm_print_test(p, pr->path, pr->test, out);
        if (pr->nclause == 0)
            fputs(" (tested when a clause needs it)", out);
        else
            fputs(" -> ", out);
        for (uint32_t j = 0; j < pr->nclause; j++)
            fprintf(out, "%sc%u", j ? " " : "", p->ix_refs[pr->clause0 + j]);
        fputc('\n', out);
    }
    fprintf(out, "└── clauses\n");
    for (uint32_t i = 0; i < b->nclause; i++) {
        const vm_ix_clause *cl = &p->ix_clauses[b->clause0 + i];
        fprintf(out, "    %s c%u: rule %s ", i + 1 == b->nclause ? "└──" : "├──", i,
                vm_s(p, p->rules[cl->rule].name));
        if (cl->need == 0) {
            fputs("on every event", out);
        } else if (cl->need == cl->npred) {
            fputs("when all of ", out);
            put_preds(p, cl->pred0, cl->npred, out);
        } else {
            fputs("when one of ", out);
            put_preds(p, cl->pred0, cl->npred, out);
        }
        if (cl->flags & VM_IXC_VERIFY)
            fputs(", confirmed by its bytecode", out);
        else if (cl->depth)
            fprintf(out, ", by its bytecode if arrays within depth %u tie them", cl->depth);
        fputc('\n', out);
    }
}

void vm_explain(const vm_program *p, FILE *out)
{
    for (uint32_t b = 0; b < p->nix_buses; b++) {
        if (b)
            fputc('\n', out);
        explain_bus(p, b, out);
    }
}
