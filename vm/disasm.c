/*
 * disasm.c — `ebc disasm`: each rule's code as "addr OPCODE operands ; synopsis", the synopsis
 * written in the rule language so that a reader can see what the compiler made of a condition.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vm_int.h"

void vm_put_json_string(FILE *out, const char *s, size_t n)
{
    fputc('"', out);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", out);
        else if (ch == '\t')
            fputs("\\t", out);
        else if (ch == '\r')
            fputs("\\r", out);
        else if (ch < 0x20)
            fprintf(out, "\\u%04x", ch);
        else
            fputc(ch, out);
    }
    fputc('"', out);
}

static bool plain_name(const char *s, size_t n)
{
    if (n == 0 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || (c == '-' && i + 1 < n && s[i + 1] != '-')))
            return false;
    }
    return true;
}

void vm_print_path(const vm_program *p, uint32_t path, FILE *out)
{
    const vm_path *pp = &p->paths[path];
    for (uint32_t i = 0; i < pp->nseg; i++) {
        vm_str s = p->segs[pp->seg0 + i];
        if (i)
            fputc('.', out);
        if (plain_name(vm_s(p, s), s.len))
            fwrite(vm_s(p, s), 1, s.len, out);
        else
            vm_put_json_string(out, vm_s(p, s), s.len);
    }
}

/* Writes a canonical decimal ("DIGITSeEXP") the way people write numbers when it is short. */
static void put_number(FILE *out, const char *s, size_t n)
{
    const char *e = memchr(s, 'e', n);
    if (!e) {
        fwrite(s, 1, n, out);
        return;
    }
    long exp = strtol(e + 1, NULL, 10);
    int neg = s[0] == '-';
    const char *d = s + neg;
    int nd = (int)(e - d);
    if (neg)
        fputc('-', out);
    if (exp >= 0 && exp <= 20) {
        fwrite(d, 1, (size_t)nd, out);
        for (long i = 0; i < exp; i++)
            fputc('0', out);
    } else if (exp < 0 && -exp < nd) {
        fwrite(d, 1, (size_t)(nd + exp), out);
        fputc('.', out);
        fwrite(d + nd + exp, 1, (size_t)-exp, out);
    } else if (exp < 0 && -exp - nd <= 6) {
        fputs("0.", out);
        for (long i = 0; i < -exp - nd; i++)
            fputc('0', out);
        fwrite(d, 1, (size_t)nd, out);
    } else {
        fwrite(d, 1, (size_t)(e - d), out);
        fprintf(out, "e%ld", exp);
    }
}

/* Writes the shortest decimal that reads back as d, without an exponent unless it is large. */
static void put_double(FILE *out, double d)
{
    char buf[64];
    int prec = 1;
    for (; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec - 1, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    int exp = atoi(strchr(buf, 'e') + 1);
    if (exp >= -6 && exp < 17) {
        int decimals = prec - 1 - exp;
        snprintf(buf, sizeof buf, "%.*f", decimals > 0 ? decimals : 0, d);
    }
    fputs(buf, out);
}

void vm_format_ip(const uint8_t ip[16], int bits, char *buf, size_t cap)
{
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (memcmp(ip, mapped, 12) == 0 && bits >= 96) {
        snprintf(buf, cap, "%u.%u.%u.%u", ip[12], ip[13], ip[14], ip[15]);
        if (bits < 128)
            snprintf(buf + strlen(buf), cap - strlen(buf), "/%d", bits - 96);
        return;
    }
    /* RFC 5952: lower case, the longest run of zero groups (two or more) as "::". */
    int best = -1, bestlen = 1;
    for (int i = 0; i < 8;) {
        int j = i;
        while (j < 8 && ip[2 * j] == 0 && ip[2 * j + 1] == 0)
            j++;
        if (j - i > bestlen)
            best = i, bestlen = j - i;
        i = j > i ? j : i + 1;
    }
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            o += (size_t)snprintf(buf + o, cap - o, "::");
            i += bestlen - 1;
            continue;
        }
        if (i > 0 && !(best >= 0 && i == best + bestlen))
            o += (size_t)snprintf(buf + o, cap - o, ":");
        o += (size_t)snprintf(buf + o, cap - o, "%x", ip[2 * i] << 8 | ip[2 * i + 1]);
    }
    if (bits < 128)
        snprintf(buf + o, cap - o, "/%d", bits);
}

static void put_const(const vm_program *p, const vm_const *k, FILE *out)
{
    switch (k->type) {
    case VM_C_STR: vm_put_json_string(out, vm_s(p, k->s), k->s.len); break;
    case VM_C_NUM: put_number(out, vm_s(p, k->s), k->s.len); break;
    case VM_C_TRUE: fputs("true", out); break;
    case VM_C_FALSE: fputs("false", out); break;
    case VM_C_NULL: fputs("null", out); break;
    case VM_C_REGEX:
        if (k->flags & VM_CF_TILDE) {
            vm_put_json_string(out, vm_s(p, k->s), k->s.len);   /* Quamina's ~-escaped form */
        } else {
            fputc('/', out);
            for (uint32_t i = 0; i < k->s.len; i++) {
                char ch = vm_s(p, k->s)[i];
                if (ch == '/')
                    fputc('\\', out);
                fputc(ch, out);
            }
            fputc('/', out);
        }
        break;
    case VM_C_CIDR: {
        char buf[64];
        vm_format_ip(k->ip, k->bits, buf, sizeof buf);
        fprintf(out, "\"%s\"", buf);
        break;
    }
    case VM_C_RANGE: {
        double inf = 1.0 / 0.0;
        if (k->lo == k->hi) {
            fputs("== ", out);
            put_double(out, k->lo);
        } else if (k->lo == -inf) {
            fputs(k->flags & VM_CF_HI_OPEN ? "< " : "<= ", out);
            put_double(out, k->hi);
        } else if (k->hi == inf) {
            fputs(k->flags & VM_CF_LO_OPEN ? "> " : ">= ", out);
            put_double(out, k->lo);
        } else {
            fputs(k->flags & VM_CF_LO_OPEN ? "in (" : "in [", out);
            put_double(out, k->lo);
            fputs(", ", out);
            put_double(out, k->hi);
            fputs(k->flags & VM_CF_HI_OPEN ? ")" : "]", out);
        }
        break;
    }
    }
}

void vm_print_test(const vm_program *p, uint32_t path, uint32_t test, FILE *out)
{
    const vm_test *t = &p->tests[test];
    bool neg = t->flags & VM_TF_NEG, ci = t->flags & VM_TF_CI;
    if (t->kind == VM_T_EXISTS) {
        fputs(neg ? "not exists " : "exists ", out);
        vm_print_path(p, path, out);
        return;
    }
    vm_print_path(p, path, out);
    if (t->flags & VM_TF_BAND) {
        /* Two bounds that some leaf each passes (docs/index.md). */
        const vm_const *k = &p->consts[t->arg0];
        fputs(k->flags & VM_CF_LO_OPEN ? " > " : " >= ", out);
        put_double(out, k->lo);
        fputs(" and ", out);
        vm_print_path(p, path, out);
        fputs(k->flags & VM_CF_HI_OPEN ? " < " : " <= ", out);
        put_double(out, k->hi);
        return;
    }
    if (t->flags & VM_TF_ASNUM)
        fputs(" as number", out);
    static const char *const ops[VM_T__COUNT] = {
        "", "==", "starts_with", "ends_with", "contains", "like", "matches", "", "in cidr",
    };
    const char *op = ops[t->kind];
    if (t->kind == VM_T_EQ && t->narg != 1)
        op = "in";
    if (t->kind == VM_T_EQ && t->narg == 1 && neg)
        fputs(" !=", out);
    else if (t->kind != VM_T_RANGE)
        fprintf(out, " %s%s", neg ? "not " : "", op);
    if (ci)
        fputs(" ignore_case", out);
    fputc(' ', out);
    bool list = t->narg != 1 && t->kind != VM_T_RANGE;
    if (list)
        fputc('[', out);
    for (uint32_t i = 0; i < t->narg; i++) {
        if (i)
            fputs(", ", out);
        put_const(p, &p->consts[t->arg0 + i], out);
    }
    if (list)
        fputc(']', out);
}

/* The offsets where each line of every source starts, to turn spans into line numbers. */
typedef struct {
    uint32_t **starts;
    uint32_t *n;
} line_index;

static void index_lines(const vm_program *p, line_index *ix)
{
    ix->starts = calloc(p->nsrcs ? p->nsrcs : 1, sizeof *ix->starts);
    ix->n = calloc(p->nsrcs ? p->nsrcs : 1, sizeof *ix->n);
    for (uint32_t s = 0; ix->starts && ix->n && s < p->nsrcs; s++) {
        const char *text = vm_s(p, p->srcs[s].text);
        uint32_t len = p->srcs[s].text.len, lines = 1;
        for (uint32_t i = 0; i < len; i++)
            lines += text[i] == '\n';
        ix->starts[s] = malloc(lines * sizeof **ix->starts);
        if (!ix->starts[s])
            continue;
        ix->starts[s][ix->n[s]++] = 0;
        for (uint32_t i = 0; i < len; i++)
            if (text[i] == '\n')
                ix->starts[s][ix->n[s]++] = i + 1;
    }
}

/* The line (from 1) where span s starts; 0 when it cannot be worked out. */
static uint32_t line_of(const line_index *ix, vm_span s)
{
    if (!ix->starts || !ix->n || !ix->starts[s.src])
        return 0;
    uint32_t lo = 0, hi = ix->n[s.src];
    while (lo < hi) {   /* the last line start <= s.off */
        uint32_t mid = (lo + hi) / 2;
        if (ix->starts[s.src][mid] <= s.off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void free_lines(const vm_program *p, line_index *ix)
{
    for (uint32_t s = 0; ix->starts && s < p->nsrcs; s++)
        free(ix->starts[s]);
    free(ix->starts);
    free(ix->n);
}

/* Writes up to 60 bytes of pool text as a quoted string. */
static void put_pool(const vm_program *p, uint32_t off, uint32_t len, FILE *out)
{
    fputc('"', out);
    for (uint32_t i = 0; i < len && i < 60; i++) {
        unsigned char ch = (unsigned char)p->strs[off + i];
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(out, "\\u%04x", ch);
        else
            fputc(ch, out);
    }
    fputs(len > 60 ? "\"..." : "\"", out);
}

/* A template path as JSONPath steps. */
static void put_tpath(const vm_program *p, uint32_t tp, FILE *out)
{
    const vm_tpath *t = &p->tpaths[tp];
    fputc('$', out);
    for (uint32_t k = 0; k < t->nstep; k++) {
        const vm_tstep *st = &p->tsteps[t->step0 + k];
        if (st->kind == VM_TS_ALL)
            fputs("[*]", out);
        else if (st->kind == VM_TS_INDEX)
            fprintf(out, "[%d]", st->index);
        else
            fprintf(out, ".%.*s", (int)st->name.len, vm_s(p, st->name));
    }
}

/* The template code of a rule's transform. */
static void disasm_xform(const vm_program *p, const line_index *ix, uint32_t xi, FILE *out)
{
    static const char *const names[VM_TO__COUNT] = {
#define X(name, doc) #name,
        VM_TEMPLATE_OPCODES(X)
#undef X
    };
    static const char *const fns[VM_FN__COUNT] = {
#define X(id, name, lo, hi) name,
        VM_TEMPLATE_FUNCTIONS(X)
#undef X
    };
    static const char *const vars[VM_VAR__COUNT] = { "$bus", "$rule", "$ingest_time" };
    static const char *const modes[] = { "json", "in_string", "text", "key" };
    const vm_xform *x = &p->xforms[xi];
    const char *kind = x->kind == VM_X_EXEC ? "function exec" : x->kind == VM_X_HTTP ? "function http"
                     : x->flags & VM_XF_TEXT ? "text template" : "template";
    fprintf(out, "  transform: %s  ; %s:%u\n", kind, vm_s(p, p->srcs[x->span.src].name),
            line_of(ix, x->span));
    if (x->kind != VM_X_TEMPLATE) {
        fprintf(out, "        %s, timeout %u ms\n", vm_s(p, x->arg), x->timeout_ms);
        return;
    }
    for (uint32_t pc = 0; pc < x->ncode; pc++) {
        vm_inst in = p->tcode[x->code0 + pc];
        uint32_t a = VM_A(in), b = VM_B(in);
        unsigned op = VM_OP(in);
        fprintf(out, "  %4u  %s", pc, op < VM_TO__COUNT ? names[op] : "?");
        switch (op) {
        case VM_TO_TEXT: case VM_TO_CONST: case VM_TO_STR: fputc(' ', out); put_pool(p, b, a, out); break;
        case VM_TO_PATH: fputc(' ', out); put_tpath(p, a, out); break;
        case VM_TO_VAR: fprintf(out, " %s", a < VM_VAR__COUNT ? vars[a] : "?"); break;
        case VM_TO_CALL: fprintf(out, " %s/%u", a < VM_FN__COUNT ? fns[a] : "?", b); break;
        case VM_TO_CAT: fprintf(out, " %u", a); break;
        case VM_TO_EMIT: fprintf(out, " %s", a <= 3 ? modes[a] : "?"); break;
        case VM_TO_BEGIN: case VM_TO_END: fprintf(out, " %s", a ? "array" : "object"); break;
        case VM_TO_SKIP: case VM_TO_ELSE: fprintf(out, " -> %u", b); break;
        default: break;
        }
        fputc('\n', out);
    }
}

void vm_disasm(const vm_program *p, FILE *out)
{
    line_index ix;
    index_lines(p, &ix);
    for (uint32_t r = 0; r < p->nrules; r++) {
        const vm_rule *rule = &p->rules[r];
        uint32_t line = line_of(&ix, rule->span);
        fprintf(out, "%srule %s on %s  ; %s:%u\n", r ? "\n" : "", vm_s(p, rule->name),
                rule->bus == VM_NONE ? "?" : vm_s(p, p->buses[rule->bus].name),
                vm_s(p, p->srcs[rule->span.src].name), line);
        for (uint32_t pc = 0; pc < rule->ncode; pc++) {
            vm_inst in = p->code[rule->code0 + pc];
            unsigned op = VM_OP(in);
            const char *fmt = vm_op_formats[op];
            char operands[48] = "";
            if (!strcmp(fmt, "PT"))
                snprintf(operands, sizeof operands, "p%u t%u", VM_A(in), VM_B(in));
            else if (!strcmp(fmt, "J"))
                snprintf(operands, sizeof operands, "-> %u", VM_B(in));
            else if (!strcmp(fmt, "JJ"))
                snprintf(operands, sizeof operands, "%u -> %u", VM_A(in), VM_B(in));
            /* No trailing blanks: they would only make golden files fragile. */
            if (op == VM_OP_TEST) {
                fprintf(out, "  %4u  %-6s %-12s ; ", pc, vm_op_names[op], operands);
                vm_print_test(p, VM_A(in), VM_B(in), out);
            } else if (operands[0]) {
                fprintf(out, "  %4u  %-6s %s", pc, vm_op_names[op], operands);
            } else {
                fprintf(out, "  %4u  %s", pc, vm_op_names[op]);
            }
            fputc('\n', out);
        }
        if (rule->xform != VM_NONE)
            disasm_xform(p, &ix, rule->xform, out);
    }
    free_lines(p, &ix);
}
