/*
 * compiler.c — the compiler's driver: reads the main file and its imports, parses each, runs the
 * checks and code generation, and hands the finished image over as a vm_program.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cc.h"

/* Reads a whole file into a NUL-terminated buffer; NULL with errno set on failure. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        errno = EISDIR;
        return NULL;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *buf = cc_xmalloc(cap + 1);
    for (;;) {
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (n < cap)
            break;
        cap *= 2;
        buf = cc_xrealloc(buf, cap + 1);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

static cc_unit *add_unit(cc_comp *c, const char *name, char *text, size_t len)
{
    cc_unit *u = cc_alloc(c, sizeof *u);
    u->comp = c;
    u->src = c->units.n;
    u->name = cc_xstrndup(name, strlen(name));
    u->text = text;
    u->len = len;
    vec_push(c->units, u);
    return u;
}

/* Is a file with this canonical path already part of the compilation? */
static bool loaded(cc_comp *c, const char *real)
{
    for (uint32_t i = 0; i < c->units.n; i++) {
        char buf[PATH_MAX];
        if (realpath(c->units.v[i]->name, buf) && strcmp(buf, real) == 0)
            return true;
    }
    return false;
}

static void parse_unit(cc_comp *c, cc_unit *u);

/* Resolves `import "path"` of unit u: a file relative to u's directory (".ebr" may be left
 * out), or "stdlib/NAME", a file of stdlib-templates/ built into the compiler. */
static void do_import(cc_comp *c, cc_unit *u, ast *d)
{
    size_t n;
    const char *path = cc_string(u, &d->tok, &n);
    if (!path)
        return;
    if (strncmp(path, "stdlib/", 7) == 0) {
        /* The standard templates are built into ebc (stdlib-templates/). */
        const char *name = path + 7;
        size_t nn = strlen(name);
        if (nn > 4 && strcmp(name + nn - 4, ".ebr") == 0)
            nn -= 4;
        const struct cc_stdlib_file *f = cc_stdlib_files;
        while (f->name && !(strlen(f->name) == nn && memcmp(f->name, name, nn) == 0))
            f++;
        if (!f->name) {
            const char *cands[64];
            size_t k = 0;
            for (const struct cc_stdlib_file *g = cc_stdlib_files; g->name && k < 64; g++)
                cands[k++] = g->name;
            char hint[128];
            cc_suggest(name, nn, cands, k, hint, sizeof hint);
            cc_error(u, d->tok.off, d->tok.len, "unknown standard template module '%.*s'%s "
                     "(docs/transforms.md lists them)", (int)nn, name, hint);
            return;
        }
        char unit_name[128];
        snprintf(unit_name, sizeof unit_name, "stdlib/%s.ebr", f->name);
        for (uint32_t i = 0; i < c->units.n; i++)
            if (strcmp(c->units.v[i]->name, unit_name) == 0)
                return;   /* imported already */
        char *text = cc_xmalloc(f->len + 1);
        memcpy(text, f->text, f->len);
        text[f->len] = 0;
        parse_unit(c, add_unit(c, unit_name, text, f->len));
        return;
    }
    if (c->flags & CC_NO_FILES) {
        cc_error(u, d->tok.off, d->tok.len, "cannot import '%s': only the standard templates "
                 "(\"stdlib/NAME\") can be imported here", path);
        return;
    }
    char full[PATH_MAX];
    const char *slash = strrchr(u->name, '/');
    if (path[0] == '/' || !slash)
        snprintf(full, sizeof full, "%s", path);
    else
        snprintf(full, sizeof full, "%.*s/%s", (int)(slash - u->name), u->name, path);
    struct stat st;
    if (stat(full, &st) != 0 && !(n >= 4 && strcmp(path + n - 4, ".ebr") == 0))
        strncat(full, ".ebr", sizeof full - strlen(full) - 1);
    char real[PATH_MAX];
    if (!realpath(full, real)) {
        cc_error(u, d->tok.off, d->tok.len, "cannot import '%s': %s", path, strerror(errno));
        return;
    }
    if (loaded(c, real))
        return;
    size_t len;
    char *text = read_file(full, &len);
    if (!text) {
        cc_error(u, d->tok.off, d->tok.len, "cannot import '%s': %s", path, strerror(errno));
        return;
    }
    parse_unit(c, add_unit(c, full, text, len));
}

static void parse_unit(cc_comp *c, cc_unit *u)
{
    gr_parse(u);
    for (ast *d = u->decls; d; d = d->next)
        if (d->kind == A_IMPORT)
            do_import(c, u, d);
}

/* Moves the built tables into a vm_program. */
static vm_program *finish(cc_comp *c)
{
    vm_program *p = calloc(1, sizeof *p);
    if (!p)
        abort();
    /* The texts go to the pool (their messages are printed). */
    for (uint32_t i = 0; i < c->units.n; i++) {
        cc_unit *u = c->units.v[i];
        vm_source s = { cc_str(c, u->name, strlen(u->name)), cc_str_adopt(c, (char *)u->text, u->len) };
        u->text = NULL;
        vec_push(c->srcs, s);
    }
#define TAKE(field, vec) (p->field = (vec).v, p->n##field = (vec).n, (vec).v = NULL, (vec).n = 0)
    TAKE(strs, c->strs);
    TAKE(srcs, c->srcs);
    TAKE(segs, c->segs);
    TAKE(paths, c->paths);
    TAKE(consts, c->consts);
    TAKE(tests, c->tests);
    TAKE(regexes, c->regexes);
    TAKE(re_insts, c->re_insts);
    TAKE(re_ranges, c->re_ranges);
    TAKE(rules, c->prules);
    TAKE(rule_targets, c->rule_targets);
    TAKE(buses, c->pbuses);
    TAKE(targets, c->ptargets);
    TAKE(inputs, c->pinputs);
    TAKE(cfgs, c->cfgs);
    TAKE(xforms, c->xforms);
    TAKE(tpaths, c->tpaths);
    TAKE(tsteps, c->tsteps);
    TAKE(ix_buses, c->ix_buses);
    TAKE(ix_paths, c->ix_paths);
    TAKE(ix_preds, c->ix_preds);
    TAKE(ix_clauses, c->ix_clauses);
    TAKE(ix_keys, c->ix_keys);
    TAKE(ix_slots, c->ix_slots);
    TAKE(ix_nodes, c->ix_nodes);
    TAKE(ix_bounds, c->ix_bounds);
    TAKE(ix_refs, c->ix_refs);
#undef TAKE
    p->code = c->code.v;
    p->ncode = c->code.n;
    p->code_spans = c->code_spans.v;
    c->code.v = NULL;
    c->code_spans.v = NULL;
    p->tcode = c->tcode.v;
    p->ntcode = c->tcode.n;
    p->tcode_spans = c->tcode_spans.v;
    c->tcode.v = NULL;
    c->tcode_spans.v = NULL;
    p->server0 = c->server0;
    p->nserver = c->nserver;
    if (!(c->flags & CC_UNPREPARED) && vm_program_prepare(p) != VM_OK) {
        vm_program_free(p);
        return NULL;
    }
    return p;
}

static void comp_free(cc_comp *c)
{
    for (uint32_t i = 0; i < c->units.n; i++) {
        free((char *)c->units.v[i]->name);
        free((char *)c->units.v[i]->text);
    }
    for (uint32_t i = 0; i < c->msgs.n; i++)
        free(c->msgs.v[i].msg);
    for (uint32_t i = 0; i < c->broken.n; i++)
        free(c->broken.v[i]);
    cc_strtab_free(c);
    free(c->units.v); free(c->msgs.v); free(c->broken.v);
    cc_names_free(&c->buses); cc_names_free(&c->targets); cc_names_free(&c->rules);
    cc_names_free(&c->sources);
    cc_names_free(&c->dups); cc_names_free(&c->templates);
    free(c->path_slots); free(c->strs.v); free(c->srcs.v); free(c->segs.v); free(c->paths.v); free(c->consts.v);
    free(c->tests.v); free(c->regexes.v); free(c->re_insts.v); free(c->re_ranges.v);
    free(c->code.v); free(c->code_spans.v); free(c->prules.v); free(c->rule_targets.v);
    free(c->pbuses.v); free(c->ptargets.v); free(c->pinputs.v); free(c->cfgs.v);
    free(c->xforms.v); free(c->tcode.v); free(c->tcode_spans.v); free(c->tpaths.v); free(c->tsteps.v);
    for (uint32_t i = 0; i < c->xpreds.n; i++)
        free(c->xpreds.v[i].clauses.v);
    for (uint32_t i = 0; i < c->xclauses.n; i++)
        free(c->xclauses.v[i].preds.v);
    free(c->xpreds.v); free(c->xpred_slots); free(c->xclauses.v); free(c->ix_local_to_pred.v);
    free(c->ix_buses.v); free(c->ix_paths.v); free(c->ix_preds.v); free(c->ix_clauses.v);
    free(c->ix_keys.v); free(c->ix_slots.v); free(c->ix_nodes.v); free(c->ix_bounds.v);
    free(c->ix_refs.v);
    cc_arena_free(c);
    free(c);
}

/* Compiles unit text (owned by the compilation from here on). */
static vm_program *compile(const char *name, char *text, size_t len, unsigned flags, FILE *diag,
                           cc_result *res)
{
    cc_comp *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->flags = flags;
    parse_unit(c, add_unit(c, name, text, len));
    cc_check_and_build(c);
    cc_print_diags(c, diag);   /* before finish: it hands the texts over to the program */
    vm_program *p = c->nerrors ? NULL : finish(c);
    if (res) {
        res->nerrors = c->nerrors;
        res->nwarnings = c->nwarnings;
    }
    comp_free(c);
    return p;
}

vm_program *cc_compile_file(const char *path, FILE *diag, cc_result *res)
{
    return cc_compile_file_flags(path, 0, diag, res);
}

vm_program *cc_compile_file_flags(const char *path, unsigned flags, FILE *diag, cc_result *res)
{
    size_t len;
    char *text = read_file(path, &len);
    if (!text) {
        if (diag)
            fprintf(diag, "%s: error: cannot read: %s\n", path, strerror(errno));
        if (res)
            res->nerrors = 1, res->nwarnings = 0;
        return NULL;
    }
    return compile(path, text, len, flags, diag, res);
}

vm_program *cc_compile_text(const char *name, const char *text, size_t len, FILE *diag,
                            cc_result *res)
{
    return cc_compile_text_flags(name, text, len, 0, diag, res);
}

vm_program *cc_compile_text_flags(const char *name, const char *text, size_t len, unsigned flags,
                                  FILE *diag, cc_result *res)
{
    char *copy = cc_xmalloc(len + 1);
    memcpy(copy, text, len);
    copy[len] = 0;
    return compile(name, copy, len, flags, diag, res);
}
