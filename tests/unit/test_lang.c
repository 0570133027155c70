/*
 * test_lang.c — the data-driven language tests: every .test file under tests/lang is a list of cases
 *
 *     === name
 *     --- rules            the .ebr source (compiled as "test.ebr")
 *     --- events           one event per line (optional)
 *     --- expect           what `ebc test` prints for them: "N: rule rule" / "N: -" /
 *                          "N: error: invalid event: ...", then "  rule -> target: payload"
 *                          lines (with $ingest_time 2026-11-26T10:00:00.123Z and now()
 *                          2026-11-26T10:01:00.456Z)
 *     --- errors           or: the exact diagnostics when the rules must not compile
 *     --- warnings         or: the exact warnings of rules that compile
 *     --- explain          what `ebc test --explain` prints for the events
 *
 * and golden disassembly: every tests/golden/NAME.ebr must disassemble to NAME.disasm.
 * A failure names the file and line of its case.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../../compiler/compiler.h"

typedef struct {
    char *name;
    int line;
    char *rules, *events, *expect, *errors, *warnings, *explain;
} lang_case;

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    char chunk[65536];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, k, m);
    fclose(f);
    fclose(m);
    return buf;
}

/* Appends line to *section (creating it). */
static void add_line(char **section, const char *line, size_t n)
{
    size_t old = *section ? strlen(*section) : 0;
    *section = realloc(*section, old + n + 2);
    memcpy(*section + old, line, n);
    (*section)[old + n] = '\n';
    (*section)[old + n + 1] = 0;
}

/* Drops the blank lines that separate cases from the end of a section. */
static void trim(char *s)
{
    if (!s)
        return;
    size_t n = strlen(s);
    while (n >= 2 && s[n - 1] == '\n' && s[n - 2] == '\n')
        s[--n] = 0;
    if (n == 1 && s[0] == '\n')
        s[0] = 0;
}

/* Splits a .test file into cases. */
static int parse_cases(char *text, lang_case *out, int max)
{
    int n = -1, lineno = 0;
    char **section = NULL;
    for (char *p = text; *p;) {
        char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        lineno++;
        if (len >= 4 && !strncmp(p, "=== ", 4)) {
            if (++n >= max)
                break;
            memset(&out[n], 0, sizeof out[n]);
            out[n].name = strndup(p + 4, len - 4);
            out[n].line = lineno;
            section = NULL;
        } else if (n >= 0 && len >= 4 && !strncmp(p, "--- ", 4)) {
            char tag[32];
            snprintf(tag, sizeof tag, "%.*s", (int)(len - 4), p + 4);
            lang_case *c = &out[n];
            section = !strcmp(tag, "rules") ? &c->rules : !strcmp(tag, "events") ? &c->events
                    : !strcmp(tag, "expect") ? &c->expect : !strcmp(tag, "errors") ? &c->errors
                    : !strcmp(tag, "warnings") ? &c->warnings
                    : !strcmp(tag, "explain") ? &c->explain : NULL;
            if (section)
                add_line(section, "", 0), (*section)[0] = 0;
        } else if (section) {
            add_line(section, p, len);
        }
        p += len + (eol ? 1 : 0);
    }
    int count = n + 1 < max ? n + 1 : max;
    for (int i = 0; i < count; i++) {
        trim(out[i].rules);
        trim(out[i].events);
        trim(out[i].expect);
        trim(out[i].errors);
        trim(out[i].warnings);
        trim(out[i].explain);
    }
    return count;
}

/* Runs the events of a case the way `ebc test` prints them. */
static char *run_events(vm_program *p, const char *events, bool why)
{
    char *out = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&out, &len);
    vm_ctx *c = vm_ctx_new(p, NULL);
    int lineno = 0;
    for (const char *e = events; e && *e;) {
        const char *eol = strchr(e, '\n');
        size_t n = eol ? (size_t)(eol - e) : strlen(e);
        lineno++;
        if (n > 0) {
            /* A fixed clock, so that $ingest_time and now() give the same text every run. */
            static const vm_xform_env env = { NULL, NULL, 1795687200123, 1795687260456 };
            cc_test_options opt = { .env = &env, .explain = why };
            cc_test_event(m, c, VM_NONE, (unsigned long)lineno, e, n, &opt);
        }
        e += n + (eol ? 1 : 0);
    }
    vm_ctx_free(c);
    fclose(m);
    return out;
}

static int failures;

static void check(const char *file, const lang_case *c, const char *what, const char *want,
                  const char *got)
{
    if (!strcmp(want ? want : "", got ? got : ""))
        return;
    failures++;
    cr_log_error("%s:%d: case '%s': %s differ\n--- expected\n%s--- got\n%s", file, c->line, c->name,
                 what, want ? want : "", got ? got : "");
}

/* Every JSON payload printed ("  rule -> target: {...}") must parse as JSON: a template never
 * writes an invalid payload, whatever its expectation says. */
static void check_payloads(const char *file, const lang_case *c, const char *got)
{
    for (const char *line = got; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t n = eol ? (size_t)(eol - line) : strlen(line);
        const char *arrow = strstr(line, " -> ");
        const char *colon = arrow && arrow < line + n ? strstr(arrow, ": ") : NULL;
        if (n > 2 && line[0] == ' ' && colon && colon < line + n) {
            const char *body = colon + 2;
            size_t blen = (size_t)(line + n - body);
            if (strncmp(body, "error: ", 7) != 0 && strncmp(body, "text \"", 6) != 0) {
                char *copy = strndup(body, blen);   /* (whole: nothing may follow the value) */
                cJSON *j = cJSON_ParseWithOpts(copy, NULL, 1);
                free(copy);
                if (!j) {
                    failures++;
                    cr_log_error("%s:%d: case '%s': a payload is not JSON: %.*s", file, c->line,
                                 c->name, (int)n, line);
                }
                cJSON_Delete(j);
            }
        }
        line = eol ? eol + 1 : NULL;
    }
}

static void run_case(const char *file, const lang_case *c)
{
    char *diag = NULL;
    size_t dlen = 0;
    FILE *d = open_memstream(&diag, &dlen);
    cc_result res;
    const char *src = c->rules ? c->rules : "";
    vm_program *p = cc_compile_text("test.ebr", src, strlen(src), d, &res);
    fclose(d);
    if (c->errors) {
        if (p) {
            failures++;
            cr_log_error("%s:%d: case '%s': expected errors, but the rules compiled", file, c->line,
                         c->name);
        }
        check(file, c, "errors", c->errors, diag);
    } else if (!p) {
        failures++;
        cr_log_error("%s:%d: case '%s': the rules do not compile:\n%s", file, c->line, c->name, diag);
    } else {
        check(file, c, "warnings", c->warnings, diag);
        /* Run the program as read back from its .ebc bytes, as ebd will. */
        uint8_t *buf;
        size_t len;
        vm_error err;
        cr_assert_eq(vm_program_serialize(p, &buf, &len), VM_OK);
        vm_program *q = vm_program_parse(buf, len, &err);
        free(buf);
        cr_assert_not_null(q, "%s:%d: reading back failed: %s", file, c->line, q ? "" : err.msg);
        char *got = run_events(q, c->events, false);
        if (!c->explain || c->expect)
            check(file, c, "matches", c->expect, got);
        check_payloads(file, c, got);
        if (c->explain) {
            free(got);
            got = run_events(q, c->events, true);
            check(file, c, "explanations (ebc test --explain)", c->explain, got);
        }
        free(got);
        vm_program_free(q);
    }
    vm_program_free(p);
    free(diag);
}

Test(lang, data_driven_cases)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/lang", EBR_SOURCE_DIR);
    DIR *dh = opendir(dir);
    cr_assert_not_null(dh, "cannot open %s", dir);
    int files = 0, total = 0;
    struct dirent *de;
    while ((de = readdir(dh))) {
        size_t n = strlen(de->d_name);
        if (n < 6 || strcmp(de->d_name + n - 5, ".test"))
            continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        char *text = slurp(path);
        cr_assert_not_null(text, "cannot read %s", path);
        static lang_case cases[1024];
        int nc = parse_cases(text, cases, 1024);
        for (int i = 0; i < nc; i++) {
            run_case(de->d_name, &cases[i]);
            free(cases[i].name);
            free(cases[i].rules);
            free(cases[i].events);
            free(cases[i].expect);
            free(cases[i].errors);
            free(cases[i].warnings);
            free(cases[i].explain);
        }
        total += nc;
        files++;
        free(text);
    }
    closedir(dh);
    cr_log_info("%d language cases in %d files", total, files);
    cr_expect_gt(total, 0, "no language cases found");
    cr_expect_eq(failures, 0, "%d language cases failed (see above)", failures);
}

Test(lang, golden_disassembly_and_explain)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/golden", EBR_SOURCE_DIR);
    DIR *dh = opendir(dir);
    cr_assert_not_null(dh, "cannot open %s", dir);
    struct dirent *de;
    int n = 0, n_explain = 0;
    while ((de = readdir(dh))) {
        size_t len = strlen(de->d_name);
        if (len < 5 || strcmp(de->d_name + len - 4, ".ebr"))
            continue;
        char src[8192], want_path[8192];
        snprintf(src, sizeof src, "%s/%s", dir, de->d_name);
        snprintf(want_path, sizeof want_path, "%s/%.*s.disasm", dir, (int)(len - 4), de->d_name);
        /* Compile with a stable name so the headers do not depend on the checkout's path. */
        char *text = slurp(src);
        cr_assert_not_null(text);
        char name[512];
        snprintf(name, sizeof name, "%s", de->d_name);
        vm_program *p = cc_compile_text(name, text, strlen(text), stderr, NULL);
        free(text);
        cr_assert_not_null(p, "%s does not compile", src);
        char *got = NULL;
        size_t glen = 0;
        FILE *m = open_memstream(&got, &glen);
        vm_disasm(p, m);
        fclose(m);
        char *want = slurp(want_path);
        cr_expect_not_null(want, "missing %s; it would read:\n%s", want_path, got);
        if (want)
            cr_expect_str_eq(got, want, "%s: the disassembly changed", de->d_name);
        free(want);
        free(got);
        /* And the index, where a NAME.explain is kept. */
        snprintf(want_path, sizeof want_path, "%s/%.*s.explain", dir, (int)(len - 4), de->d_name);
        want = slurp(want_path);
        if (want) {
            m = open_memstream(&got, &glen);
            vm_explain(p, m);
            fclose(m);
            cr_expect_str_eq(got, want, "%s: the index changed (ebc explain)", de->d_name);
            free(got);
            free(want);
            n_explain++;
        }
        vm_program_free(p);
        n++;
    }
    closedir(dh);
    cr_expect_gt(n, 0, "no golden files found");
    cr_expect_gt(n_explain, 0, "no golden explain files found");
}
