/*
 * test_robust.c — malformed input never crashes: thousands of deterministic mutations (flipped,
 * inserted, deleted bytes, cut-off ends) of real rule files and events go through the compiler
 * and the VM.  Every rule file either compiles or yields positioned errors; every event either
 * matches (and its matched rules' transforms write a payload or fail cleanly) or is reported
 * invalid.  Most useful in the sanitizer build, where it also runs.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../compiler/compiler.h"

static char *slurp(const char *rel, size_t *len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", EBR_SOURCE_DIR, rel);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    char *buf = malloc(1 << 20);
    *len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

/* A small deterministic generator (xorshift), so a failure can be replayed.  EBR_FUZZ_SEED and
 * EBR_FUZZ_ROUNDS (a multiplier) turn the same tests into a longer run outside `make test`. */
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static int rounds(int base)
{
    const char *seed = getenv("EBR_FUZZ_SEED"), *mult = getenv("EBR_FUZZ_ROUNDS");
    if (seed && strtoull(seed, NULL, 10))
        rng = strtoull(seed, NULL, 10);
    return base * (mult && atoi(mult) > 0 ? atoi(mult) : 1);
}
static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

/* Writes a mutation of in[0..n) to out; returns its length. */
static size_t mutate(const char *in, size_t n, char *out)
{
    static const char interesting[] = "{}[]()\"\\/*:,.=!<>#\n\0\xff\xc3~$-0e";
    memcpy(out, in, n);
    int edits = 1 + (int)(next() % 4);
    for (int e = 0; e < edits && n > 0; e++) {
        size_t at = next() % n;
        switch (next() % 4) {
        case 0:
            out[at] = next() & 1 ? interesting[next() % (sizeof interesting - 1)] : (char)next();
            break;
        case 1:
            memmove(out + at + 1, out + at, n - at);
            out[at] = interesting[next() % (sizeof interesting - 1)];
            n++;
            break;
        case 2:
            memmove(out + at, out + at + 1, n - at - 1);
            n--;
            break;
        default:
            n = at;
            break;
        }
    }
    return n;
}

/* Every diagnostic block starts "name:line:col: error|warning: ". */
static void check_diagnostics(const char *diag)
{
    for (const char *line = diag; *line;) {
        const char *eol = strchr(line, '\n');
        if (!strncmp(line, "fuzz.ebr:", 9)) {
            unsigned l, c;
            char kind[16];
            cr_assert_eq(sscanf(line, "fuzz.ebr:%u:%u: %15[a-z]:", &l, &c, kind), 3, "bad header: %.80s", line);
            cr_assert(l >= 1 && c >= 1);
            cr_assert(!strcmp(kind, "error") || !strcmp(kind, "warning"), "%s", kind);
        }
        if (!eol)
            break;
        line = eol + 1;
    }
}

Test(robust, mutated_rule_files_compile_or_report, .timeout = 600)
{
    static const char *const files[] = {
        "examples/orders.ebr", "tests/golden/operators.ebr", "tests/golden/patterns.ebr",
        "tests/golden/logic.ebr", "tests/golden/transforms.ebr", "stdlib-templates/pagerduty.ebr",
    };
    char *out = malloc(1 << 21);
    int per_file = rounds(2000);
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        size_t n;
        char *src = slurp(files[f], &n);
        for (int i = 0; i < per_file; i++) {
            size_t m = mutate(src, n, out);
            char *diag = NULL;
            size_t dlen = 0;
            FILE *d = open_memstream(&diag, &dlen);
            cc_result res;
            vm_program *p = cc_compile_text("fuzz.ebr", out, m, d, &res);
            fclose(d);
            if (p) {
                cr_assert_eq(res.nerrors, 0);
                vm_program_free(p);
            } else {
                cr_assert_gt(res.nerrors, 0, "%s mutation %d failed without an error", files[f], i);
                cr_assert(strstr(diag, ": error: "), "no error text for mutation %d of %s", i, files[f]);
            }
            check_diagnostics(diag);
            free(diag);
        }
        free(src);
    }
    free(out);
}

/* vm_json_check (the daemon's check of a body) and the event scanner (ebc test) judge an event
 * object alike: the same verdict, the same byte, and the same words where both have words for it
 * (they word an unexpected end or character differently).  Nesting beyond the scanner's limit is
 * the scanner's own refusal. */
Test(robust, json_check_and_the_scanner_agree_on_mutated_events, .timeout = 120)
{
    size_t n;
    char *rules = slurp("examples/orders.ebr", &n);
    vm_program *p = cc_compile_text("orders.ebr", rules, n, stderr, NULL);
    free(rules);
    cr_assert_not_null(p);
    char *events = slurp("examples/events.jsonl", &n);
    events[n] = 0;
    vm_ctx *c = vm_ctx_new(p, NULL);
    char *out = malloc(1 << 16);
    int compared = 0, refused = 0, per_line = rounds(3000);
    for (char *line = strtok(events, "\n"); line; line = strtok(NULL, "\n")) {
        for (int i = 0; i < per_line; i++) {
            size_t m = mutate(line, strlen(line), out);
            size_t start = vm_json_ws(out, m, 0);
            if (start == m || out[start] != '{')
                continue;   /* not an object: the scanner refuses it for that alone */
            const uint32_t *r;
            size_t nr, at = 0;
            vm_error err;
            const char *why = NULL;
            vm_status st = vm_match(c, VM_NONE, out, m, &r, &nr, &err);
            bool ok = vm_json_check(out, m, &at, &why);
            if (st == VM_ERR_LIMIT)
                continue;
            compared++;
            cr_assert_eq(ok, st == VM_OK, "%.*s: scanner %s, json_check %s", (int)m, out, err.msg,
                         ok ? "accepts" : why);
            if (ok)
                continue;
            refused++;
            char want[256];
            snprintf(want, sizeof want, "%s (at byte %zu)", why, at);
            cr_assert_eq(err.offset, at, "%.*s: scanner: %s; json_check: %s", (int)m, out, err.msg, want);
            if (strncmp(err.msg, "unexpected ", 11) != 0)
                cr_assert_str_eq(err.msg, want, "%.*s", (int)m, out);
        }
    }
    cr_log_info("json_check against the scanner: %d events, %d refused", compared, refused);
    cr_expect_gt(refused, 1000);
    cr_expect_gt(compared - refused, 1000);
    free(out);
    free(events);
    vm_ctx_free(c);
    vm_program_free(p);
}

Test(robust, mutated_events_match_or_are_refused, .timeout = 120)
{
    size_t n;
    char *rules = slurp("examples/orders.ebr", &n);
    vm_program *p = cc_compile_text("orders.ebr", rules, n, stderr, NULL);
    free(rules);
    cr_assert_not_null(p);
    char *events = slurp("examples/events.jsonl", &n);
    events[n] = 0;
    vm_ctx *c = vm_ctx_new(p, NULL);
    char *out = malloc(1 << 16);
    int refused = 0, accepted = 0, per_line = rounds(3000);
    for (char *line = strtok(events, "\n"); line; line = strtok(NULL, "\n")) {
        for (int i = 0; i < per_line; i++) {
            size_t m = mutate(line, strlen(line), out);
            const uint32_t *r;
            size_t nr;
            vm_error err;
            vm_status st = vm_match(c, VM_NONE, out, m, &r, &nr, &err);
            if (st == VM_OK) {
                accepted++;
                uint32_t matched[16];
                size_t nm = nr < 16 ? nr : 16;
                for (size_t k = 0; k < nr; k++)
                    cr_assert_lt(r[k], p->nrules);
                if (nm)
                    memcpy(matched, r, nm * sizeof *r);
                /* their payloads: written, or failed cleanly (a transform never breaks) */
                for (size_t k = 0; k < nm; k++) {
                    const char *pay;
                    size_t plen;
                    bool text;
                    vm_status xs = vm_transform(c, matched[k], out, m, NULL, &pay, &plen, &text, &err);
                    cr_assert(xs == VM_OK || xs == VM_ERR_TRANSFORM, "transform status %d", xs);
                }
            } else {
                refused++;
                cr_assert(st == VM_ERR_EVENT || st == VM_ERR_LIMIT, "status %d", st);
                cr_assert_leq(err.offset, m);
                cr_assert_gt(strlen(err.msg), 0);
            }
        }
    }
    cr_log_info("mutated events: %d accepted, %d refused", accepted, refused);
    cr_expect_gt(accepted, 0);
    cr_expect_gt(refused, 0);
    free(out);
    free(events);
    vm_ctx_free(c);
    vm_program_free(p);
}
