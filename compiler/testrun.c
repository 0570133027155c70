/*
 * testrun.c — what `ebc test` prints for one event (compiler.h, docs/ebc.md): the rules it
 * matches, then the payload each of their targets gets.  The language tests print through it
 * too, so their expectations are `ebc test`'s output.
 */
#include <stdlib.h>
#include <string.h>

#include "compiler.h"

void cc_json_string(FILE *out, const char *s, size_t n)
{
    vm_put_json_string(out, s, n);
}

static void put_z(FILE *out, const char *s)
{
    cc_json_string(out, s, strlen(s));
}

/* The payload rule r's targets get; false with a message in err when the transform fails. */
static bool payload(vm_ctx *c, const vm_program *p, uint32_t r, const char *event, size_t len,
                    const cc_test_options *opt, const char **out, size_t *outlen, bool *text,
                    char **owned, char *err, size_t errcap)
{
    *owned = NULL;
    uint32_t xi = p->rules[r].xform;
    if (xi != VM_NONE && p->xforms[xi].kind != VM_X_TEMPLATE) {
        if (!opt->run_function) {
            snprintf(err, errcap, "function transforms are not run here");
            return false;
        }
        size_t n = 0;
        if (!opt->run_function(opt->arg, p, &p->xforms[xi], event, len, owned, &n, text, err, errcap))
            return false;
        *out = *owned;
        *outlen = n;
        return true;
    }
    vm_error e;
    if (vm_transform(c, r, event, len, opt->env, out, outlen, text, &e) != VM_OK) {
        snprintf(err, errcap, "%s", e.msg);
        return false;
    }
    return true;
}

/* The source text of span s, on one line (white space runs folded), at most 100 bytes; and its
 * file, line and column. */
static void span_text(const vm_program *p, vm_span s, char *text, size_t cap, char *where, size_t wcap)
{
    const char *src = vm_s(p, p->srcs[s.src].text);
    uint32_t line = 1, col = 1;
    for (uint32_t i = 0; i < s.off; i++, col++)
        if (src[i] == '\n') {
            line++;
            col = 0;
        }
    snprintf(where, wcap, "%s:%u:%u", vm_s(p, p->srcs[s.src].name), line, col);
    vm_span_source(p, s, text, cap);
}

/* For every rule of the bus that the event did not match, the condition that failed. */
static void explain(FILE *out, vm_ctx *c, uint32_t bus, const char *event, const uint32_t *matched,
                    size_t nm, bool json, bool *any)
{
    const vm_program *p = vm_ctx_program(c);
    const vm_rule_error *fails;
    size_t nf = vm_match_failures(c, &fails);
    for (uint32_t r = 0, k = 0, f = 0; r < p->nrules; r++) {
        while (k < nm && matched[k] < r)
            k++;
        while (f < nf && fails[f].rule < r)
            f++;
        /* (a rule that failed is not explained: its error is on the event's lines) */
        if ((k < nm && matched[k] == r) || (f < nf && fails[f].rule == r) ||
            (bus != VM_NONE && p->rules[r].bus != bus))
            continue;
        uint32_t at;
        char text[112], where[300];
        bool known = vm_why_not(c, r, event, &at);
        if (known) {
            /* a test as the condition it checks; a negation as it is written */
            span_text(p, p->code_spans[at], text, sizeof text, where, sizeof where);
            if (VM_OP(p->code[at]) == VM_OP_TEST) {
                FILE *m = fmemopen(text, sizeof text, "w");
                if (m) {
                    vm_print_test(p, VM_A(p->code[at]), VM_B(p->code[at]), m);
                    fclose(m);   /* (writes the NUL; a long test is cut at the buffer) */
                }
                text[sizeof text - 1] = 0;
            }
        }
        const char *name = vm_s(p, p->rules[r].name);
        if (json) {
            fputs(*any ? ", " : ", \"explain\": [", out);
            *any = true;
            fputs("{\"rule\": ", out);
            put_z(out, name);
            if (known) {
                fputs(", \"failed\": ", out);
                put_z(out, text);
                fputs(", \"at\": ", out);
                put_z(out, where);
            }
            fputc('}', out);
        } else if (known) {
            fprintf(out, "  %s: no match: %s is false (%s)\n", name, text, where);
        } else {
            fprintf(out, "  %s: no match\n", name);
        }
    }
}

vm_status cc_test_event(FILE *out, vm_ctx *c, uint32_t bus, unsigned long lineno,
                        const char *event, size_t len, const cc_test_options *opt)
{
    const vm_program *p = vm_ctx_program(c);
    const uint32_t *m;
    size_t nm;
    vm_error err;
    vm_status st = vm_match(c, bus, event, len, &m, &nm, &err);
    /* Rules that failed for this event (their step budget) are listed after the matches; the
     * others are decided as usual. */
    const vm_rule_error *fails;
    size_t nf = vm_match_failures(c, &fails);
    /* (the matched rules are copied: running a transform does not touch them, but a function
     * runner may take its time) */
    uint32_t *rules = nm ? malloc(nm * sizeof *rules) : NULL;
    if (nm && !rules)
        return VM_ERR_NOMEM;
    if (nm)
        memcpy(rules, m, nm * sizeof *rules);
    if (opt->json) {
        fprintf(out, "{\"line\": %lu, \"matched\": [", lineno);
        for (size_t i = 0; i < nm; i++) {
            if (i)
                fputs(", ", out);
            put_z(out, vm_s(p, p->rules[rules[i]].name));
        }
        fputc(']', out);
        if (st == VM_ERR_RULE) {
            fputs(", \"failed\": [", out);
            for (size_t i = 0; i < nf; i++) {
                fputs(i ? ", {\"rule\": " : "{\"rule\": ", out);
                put_z(out, vm_s(p, p->rules[fails[i].rule].name));
                fputs(", \"error\": ", out);
                put_z(out, fails[i].err.msg);
                fputc('}', out);
            }
            fputc(']', out);
        } else if (st != VM_OK) {
            fputs(", \"error\": ", out);
            put_z(out, err.msg);
        }
    } else if (st != VM_OK && st != VM_ERR_RULE) {
        fprintf(out, "%lu: error: %s%s\n", lineno, st == VM_ERR_EVENT ? "invalid event: " : "", err.msg);
    } else {
        fprintf(out, "%lu:", lineno);
        for (size_t i = 0; i < nm; i++)
            fprintf(out, " %s", vm_s(p, p->rules[rules[i]].name));
        fputs(nm ? "\n" : " -\n", out);
        for (size_t i = 0; i < nf; i++)
            fprintf(out, "  %s: error: %s\n", vm_s(p, p->rules[fails[i].rule].name),
                    fails[i].err.msg);
    }
    if ((st == VM_OK || st == VM_ERR_RULE) && opt->explain) {
        bool any_explain = false;
        explain(out, c, bus, event, rules, nm, opt->json, &any_explain);
        if (opt->json && any_explain)
            fputc(']', out);
    }
    bool any = false, failed = false;
    for (size_t i = 0; i < nm; i++) {
        const vm_rule *r = &p->rules[rules[i]];
        if (r->ntgt == 0)
            continue;
        const char *body = NULL;
        size_t blen = 0;
        bool text = false;
        char *owned = NULL, msg[256];
        bool ok = payload(c, p, rules[i], event, len, opt, &body, &blen, &text, &owned, msg, sizeof msg);
        failed |= !ok;
        for (uint32_t t = 0; t < r->ntgt; t++) {
            const char *rule = vm_s(p, r->name);
            const char *target = vm_s(p, p->targets[p->rule_targets[r->tgt0 + t]].name);
            if (opt->json) {
                fputs(any ? ", " : ", \"deliveries\": [", out);
                any = true;
                fputs("{\"rule\": ", out);
                put_z(out, rule);
                fputs(", \"target\": ", out);
                put_z(out, target);
                if (!ok) {
                    fputs(", \"error\": ", out);
                    put_z(out, msg);
                } else if (text) {
                    fputs(", \"payload\": ", out);
                    cc_json_string(out, body, blen);
                    fputs(", \"text\": true", out);
                } else {
                    fputs(", \"payload\": ", out);
                    fwrite(body, 1, blen, out);
                }
                fputc('}', out);
            } else {
                fprintf(out, "  %s -> %s: ", rule, target);
                if (!ok) {
                    fprintf(out, "error: %s\n", msg);
                } else if (text) {
                    fputs("text ", out);
                    cc_json_string(out, body, blen);
                    fputc('\n', out);
                } else {
                    fwrite(body, 1, blen, out);
                    fputc('\n', out);
                }
            }
        }
        free(owned);
    }
    if (opt->json)
        fputs(any ? "]}\n" : "}\n", out);
    free(rules);
    return st == VM_OK && failed ? VM_ERR_TRANSFORM : st;
}
