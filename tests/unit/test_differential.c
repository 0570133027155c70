/*
 * test_differential.c — the index against the reference evaluator: seeded random rulesets (match
 * expressions and JSON patterns over a small vocabulary, with arrays, negations, every operator)
 * and random events; both engines must match exactly the same rules for every event.
 * EBR_DIFF_SEED and EBR_DIFF_ROUNDS (a multiplier) give longer runs outside `make test`.
 */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../compiler/compiler.h"
#include "gen.h"
#include "vm_int.h"

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static uint32_t rnd(uint32_t n)
{
    return gen_rnd(&rng, n);
}

/* The vocabulary: paths (language form, pattern form) and values. */
static const char *const paths[] = {
    "a", "b", "c.d", "c.e", "arr[].x", "arr[].y", "arr[].sub[].z", "tags", "n", "s",
};
static const char *const strs[] = {
    "x", "y", "ab", "abc", "ABC", "10.0.0.1", "10.0.0.001", "\\u00df", "ss", "SS", "", "a*b",
};
static const char *const nums[] = { "0", "1", "1.5", "-2", "300", "3e2", "1e400", "12345678901234567890" };

static const char *any_value(void)
{
    static char tmp[64];
    switch (rnd(5)) {
    case 0: case 1: snprintf(tmp, sizeof tmp, "\"%s\"", strs[rnd(12)]); return tmp;
    case 2: return nums[rnd(8)];
    case 3: return rnd(2) ? "true" : "false";
    default: return "null";
    }
}

/* One random predicate in the rule language. */
static void predicate(buf *b)
{
    const char *p = paths[rnd(10)];
    switch (rnd(17)) {
    case 0: put(b, "%s == %s", p, any_value()); break;
    case 1: put(b, "%s != %s", p, any_value()); break;
    case 2: put(b, "%s %s %s", p, rnd(2) ? "<" : ">=", nums[rnd(6)]); break;
    case 3: put(b, "%s in [%s, %s]", p, any_value(), any_value()); break;
    case 4: put(b, "%s not in [\"%s\", \"%s\"]", p, strs[rnd(12)], strs[rnd(12)]); break;
    case 5: put(b, "%s starts_with%s \"%s\"", p, rnd(2) ? " ignore_case" : "", strs[rnd(10)]); break;
    case 6: put(b, "%s ends_with%s \"%s\"", p, rnd(2) ? " ignore_case" : "", strs[rnd(10)]); break;
    case 7: put(b, "%s contains \"%s\"", p, strs[rnd(5)]); break;
    case 8: put(b, "%s like \"%s*\"", p, strs[rnd(5)]); break;
    case 9: put(b, "%s matches /[a-c]+/", p); break;
    case 10: put(b, "%s in cidr \"10.0.0.0/%d\"", p, rnd(2) ? 8 : 31); break;
    case 11: put(b, "exists %s", p); break;
    case 12: put(b, "not exists %s", p); break;
    case 13: put(b, "%s == ignore_case \"%s\"", p, strs[rnd(10)]); break;
    case 14: put(b, "%s as number > 1", p); break;
    case 15:   /* both bounds on one path: the index merges them into a band */
        put(b, "(%s %s %s and %s %s %s)", p, rnd(2) ? ">" : ">=", nums[rnd(6)], p,
            rnd(2) ? "<" : "<=", nums[rnd(6)]);
        break;
    default: put(b, "%s not starts_with \"%s\"", p, strs[rnd(5)]); break;
    }
}

static void expression(buf *b, int depth)
{
    int k = depth >= 3 ? 0 : rnd(6);
    switch (k) {
    case 0: case 1: case 2: predicate(b); return;
    case 3: put(b, "("); expression(b, depth + 1); put(b, " and "); expression(b, depth + 1); put(b, ")"); return;
    case 4: put(b, "("); expression(b, depth + 1); put(b, " or "); expression(b, depth + 1); put(b, ")"); return;
    default: put(b, "not ("); expression(b, depth + 1); put(b, ")"); return;
    }
}

/* A random JSON pattern over the same vocabulary (event-ruler dialect). */
static void pattern(buf *b)
{
    static const char *const ops[] = {
        "\"%s\"", "{\"prefix\": \"%s\"}", "{\"suffix\": \"%s\"}", "{\"equals-ignore-case\": \"%s\"}",
        "{\"anything-but\": \"%s\"}", "{\"wildcard\": \"%s*\"}", "{\"exists\": true}", "{\"exists\": false}",
        "{\"anything-but\": {\"prefix\": \"%s\"}}",
    };
    put(b, "{\"arr\": {\"x\": [");
    int n = 1 + rnd(2);
    for (int i = 0; i < n; i++) {
        const char *op = ops[rnd(9)];
        const char *s = strs[rnd(10)];
        if (i)
            put(b, ", ");
        if (strstr(op, "prefix") && !*s)
            s = "a";
        put(b, op, s);
    }
    put(b, "]");
    if (rnd(2))
        put(b, ", \"y\": [%s, {\"numeric\": [\">\", 0, \"<=\", 300]}]", nums[rnd(6)]);
    put(b, "}");
    if (rnd(2))
        put(b, ", \"$or\": [{\"a\": [\"x\"]}, {\"c\": {\"d\": [{\"exists\": true}]}}]");
    put(b, "}");
}

/* A random event: objects, arrays of objects and scalars, at the vocabulary's paths. */
static void event(buf *b)
{
    put(b, "{");
    bool first = true;
#define KEY(k) (put(b, "%s\"%s\": ", first ? "" : ", ", k), first = false)
    if (rnd(3)) { KEY("a"); put(b, "%s", any_value()); }
    if (rnd(2)) { KEY("b"); put(b, "%s", any_value()); }
    if (rnd(2)) { KEY("c"); put(b, "{\"d\": %s, \"e\": %s}", any_value(), any_value()); }
    if (rnd(3)) {
        KEY("arr");
        put(b, "[");
        int n = rnd(4);
        for (int i = 0; i < n; i++) {
            put(b, "%s{\"x\": %s", i ? ", " : "", any_value());
            if (rnd(2))
                put(b, ", \"y\": %s", any_value());
            if (rnd(3) == 0)
                put(b, ", \"sub\": [{\"z\": %s}, {\"z\": %s}]", any_value(), any_value());
            put(b, "}");
        }
        put(b, "]");
    }
    if (rnd(2)) {
        KEY("tags");
        put(b, "[%s, %s]", any_value(), any_value());
    }
    if (rnd(2)) {   /* a number, or several (bands: bounds passed by different leaves) */
        KEY("n");
        if (rnd(3) == 0)
            put(b, "[%s, %s, %s]", nums[rnd(8)], nums[rnd(8)], nums[rnd(8)]);
        else
            put(b, "%s", nums[rnd(8)]);
    }
    if (rnd(5) == 0) {   /* a key twice: two leaves of one path with no array */
        KEY("n");
        put(b, "%s", nums[rnd(8)]);
    }
    if (rnd(2)) { KEY("s"); put(b, "\"%s\"", nums[rnd(6)]); }
    if (rnd(4) == 0) { KEY("c.d"); put(b, "%s", any_value()); }
#undef KEY
    put(b, "}");
}

static void run_engines(vm_program *p, const char *ev, size_t len, int round, const char *rules)
{
    vm_options ix = { 0 }, ref = { .reference = true };
    vm_ctx *a = vm_ctx_new(p, &ix), *r = vm_ctx_new(p, &ref);
    const uint32_t *ma, *mr;
    size_t na, nr;
    vm_error ea, er;
    vm_status sa = vm_match(a, VM_NONE, ev, len, &ma, &na, &ea);
    vm_status sr = vm_match(r, VM_NONE, ev, len, &mr, &nr, &er);
    cr_assert_eq(sa, sr, "round %d: status %d vs reference %d for %s\n%s", round, sa, sr, ev, rules);
    cr_assert_eq(na, nr, "round %d: %zu matches vs reference %zu for %s\n%s", round, na, nr, ev,
                 rules);
    for (size_t i = 0; i < na; i++)
        cr_assert_eq(ma[i], mr[i], "round %d: rule %s vs reference %s for %s\n%s", round,
                     vm_s(p, p->rules[ma[i]].name), vm_s(p, p->rules[mr[i]].name), ev, rules);
    vm_ctx_free(a);
    vm_ctx_free(r);
}

/* How many rules the index matches for the event (0 if it fails): a test that hardly ever
 * matches tests little. */
static long count_matches(vm_program *p, const char *ev, size_t len)
{
    vm_ctx *c = vm_ctx_new(p, NULL);
    const uint32_t *m;
    size_t nm;
    vm_error err;
    long n = vm_match(c, VM_NONE, ev, len, &m, &nm, &err) == VM_OK ? (long)nm : 0;
    vm_ctx_free(c);
    return n;
}

Test(differential, index_equals_reference, .timeout = 300)
{
    const char *seed = getenv("EBR_DIFF_SEED"), *mult = getenv("EBR_DIFF_ROUNDS");
    if (seed && strtoull(seed, NULL, 10))
        rng = strtoull(seed, NULL, 10);
    int rounds = 200 * (mult && atoi(mult) > 0 ? atoi(mult) : 1);
    long compared = 0, matched = 0;
    for (int round = 0; round < rounds; round++) {
        buf src = { 0 };
        put(&src, "bus b\nbus other\n");
        int nrules = 1 + rnd(12);
        for (int i = 0; i < nrules; i++) {
            put(&src, "rule r%d on %s { ", i, rnd(5) ? "b" : "other");
            if (rnd(3) == 0) {
                put(&src, "pattern ");
                pattern(&src);
            } else {
                put(&src, "match ");
                expression(&src, 0);
            }
            put(&src, " }\n");
        }
        char *diag = NULL;
        size_t dlen = 0;
        FILE *d = open_memstream(&diag, &dlen);
        vm_program *p = cc_compile_text("diff.ebr", src.s, src.n, d, NULL);
        fclose(d);
        cr_assert_not_null(p, "round %d: the generated rules do not compile:\n%s\n%s", round, src.s, diag);
        free(diag);
        /* Run the program as read back from .ebc bytes, index included. */
        uint8_t *bytes;
        size_t nbytes;
        vm_error err;
        cr_assert_eq(vm_program_serialize(p, &bytes, &nbytes), VM_OK);
        vm_program *q = vm_program_parse(bytes, nbytes, &err);
        cr_assert_not_null(q, "%s", err.msg);
        free(bytes);
        for (int e = 0; e < 40; e++) {
            buf ev = { 0 };
            event(&ev);
            run_engines(q, ev.s, ev.n, round, src.s);
            vm_ctx *c = vm_ctx_new(q, NULL);
            const uint32_t *m;
            size_t nm;
            if (vm_match(c, VM_NONE, ev.s, ev.n, &m, &nm, &err) == VM_OK)
                matched += (long)nm;
            vm_ctx_free(c);
            compared++;
            free(ev.s);
        }
        vm_program_free(p);
        vm_program_free(q);
        free(src.s);
    }
    cr_log_info("differential: %ld events compared, %ld matches", compared, matched);
    cr_expect_gt(matched, compared / 10, "the generator hardly ever matches: it tests little");
}

/* The two layouts of a path's ranges: a segment tree where ranges overlap much (nested
 * half-lines), one list per slot where they do not (disjoint intervals).  Both must agree with
 * the reference on single numbers, arrays of numbers and bounds hit exactly. */
Test(differential, range_tree_and_range_slots)
{
    buf src = { 0 };
    put(&src, "bus b\n");
    for (int i = 0; i < 64; i++) {
        put(&src, "rule h%d on b { match n %s %d }\n", i, i % 2 ? ">" : ">=", i);
        put(&src, "rule d%d on b { match m >= %d and m < %d.5 }\n", i, 2 * i, 2 * i);
    }
    vm_program *p = cc_compile_text("ranges.ebr", src.s, src.n, stderr, NULL);
    cr_assert_not_null(p);
    int trees = 0, slots = 0;
    for (uint32_t i = 0; i < p->nix_paths; i++)
        if (p->ix_paths[i].nnode) {
            if (p->ix_paths[i].nnode & 1)
                slots++;
            else
                trees++;
        }
    cr_assert_eq(trees, 1, "the nested half-lines should make a tree");
    cr_assert_eq(slots, 1, "the disjoint ranges should make one list per slot");
    for (int e = 0; e < 2000; e++) {
        buf ev = { 0 };
        if (rnd(3))
            put(&ev, "{\"n\": %d.%d, \"m\": %d.%d}", (int)rnd(70) - 3, (int)rnd(2) * 5,
                (int)rnd(140) - 3, (int)rnd(2) * 5);
        else
            put(&ev, "{\"n\": [%d, %d], \"m\": [%d, %d.5, %d]}", (int)rnd(70), (int)rnd(70),
                (int)rnd(140), (int)rnd(140), (int)rnd(140));
        run_engines(p, ev.s, ev.n, e, src.s);
        free(ev.s);
    }
    vm_program_free(p);
    free(src.s);
}

/* Many rules whose lists share values (the issue193 shape): a clause's other predicates are
 * tested through value ids (index.c, leaf_passes).  Lists mix strings, escaped spellings,
 * numbers, true and null, anything-but lists and prefixes; events hold listed values, unlisted
 * ones and values of other types, on plain paths and in arrays.  Every event must match exactly
 * what the reference matches. */
Test(differential, shared_values)
{
    static const char *const vals[] = {
        "\"v0\"", "\"v1\"", "\"v2\"", "\"v3\"", "\"v4\"", "\"v5\"", "\"v6\"", "\"v7\"",
        "\"\\u0076\\u0038\"", "\"v9\"", "\"\"", "\"w\\\"q\"", "\"\\u00e9t\\u00e9\"", "1",
        "\"1\"", "true", "null", "\"10.0.0.1\"", "\"V1\"",
    };
    /* what events hold: the listed values, an escaped spelling of one, unlisted ones */
    static const char *const evals[] = {
        "\"v0\"", "\"v1\"", "\"v2\"", "\"v3\"", "\"v4\"", "\"v5\"", "\"v6\"", "\"v7\"", "\"v8\"",
        "\"\\u0076\\u0039\"", "\"\"", "\"w\\\"q\"", "\"\u00e9t\u00e9\"", "1", "1.0", "\"1\"",
        "true", "false", "null", "\"10.0.0.001\"", "\"V1\"", "\"zz\"", "\"v10\"", "{}", "[]",
    };
    /* the keys of a pattern: a, b, c.d, arr.x, arr.y (two in one array: the bytecode decides
     * when an event's elements could tie them), tags */
    static const char *const keys[] = { "a", "b", "c.d", "arr.x", "arr.y", "tags" };
    const size_t nv = sizeof vals / sizeof *vals, ne = sizeof evals / sizeof *evals;
    buf src = { 0 };
    put(&src, "bus b\n");
    for (int r = 0; r < 400; r++) {
        buf list[6] = { { 0 } };
        int nk = 2 + (int)rnd(3);
        for (int k = 0; k < nk; k++) {
            unsigned key = rnd(6), kind = rnd(10);
            if (list[key].n)
                continue;
            put(&list[key], "[");
            if (kind == 0) {
                put(&list[key], "{\"anything-but\": [\"v%u\", \"v%u\"]}", rnd(8), rnd(8));
            } else if (kind == 1) {
                put(&list[key], "{\"prefix\": \"v%u\"}", rnd(3));
            } else {
                int n = 1 + (int)rnd(kind == 2 ? 12 : 5);
                for (int i = 0; i < n; i++)
                    put(&list[key], "%s%s", i ? ", " : "", vals[rnd((uint32_t)nv)]);
            }
            put(&list[key], "]");
        }
        put(&src, "rule r%d on b { pattern {", r);
        const char *sep = "";
        for (int key = 0; key < 6; key++) {
            if (!list[key].n || key == 4)
                continue;
            if (key == 2) {
                put(&src, "%s\"c\": {\"d\": %s}", sep, list[key].s);
            } else if (key == 3) {
                put(&src, "%s\"arr\": {\"x\": %s", sep, list[key].s);
                if (list[4].n)
                    put(&src, ", \"y\": %s", list[4].s);
                put(&src, "}");
            } else {
                put(&src, "%s\"%s\": %s", sep, keys[key], list[key].s);
            }
            sep = ", ";
        }
        if (list[4].n && !list[3].n)
            put(&src, "%s\"arr\": {\"y\": %s}", sep, list[4].s);
        put(&src, "} }\n");
        for (int key = 0; key < 6; key++)
            free(list[key].s);
    }
    vm_program *p = cc_compile_text("shared.ebr", src.s, src.n, stderr, NULL);
    cr_assert_not_null(p, "%s", src.s);
    uint32_t by_ids = 0;
    for (uint32_t g = 0; g < p->nix_preds; g++)
        by_ids += vm_pred_nvid(p->derived, g) != VM_NONE && !p->ix_preds[g].nclause;
    cr_assert_gt(by_ids, 100, "the other predicates should be tested through value ids");
    long matched = 0;
    for (int e = 0; e < 3000; e++) {
        buf ev = { 0 };
        put(&ev, "{\"a\": %s, \"b\": [%s, %s], \"c\": {\"d\": %s}, \"arr\": [{\"x\": %s, \"y\": %s},"
                 " {\"x\": %s}], \"tags\": [%s, %s, %s]}",
            evals[rnd((uint32_t)ne)], evals[rnd((uint32_t)ne)], evals[rnd((uint32_t)ne)],
            evals[rnd((uint32_t)ne)], evals[rnd((uint32_t)ne)], evals[rnd((uint32_t)ne)],
            evals[rnd((uint32_t)ne)], evals[rnd((uint32_t)ne)], evals[rnd((uint32_t)ne)],
            evals[rnd((uint32_t)ne)]);
        run_engines(p, ev.s, ev.n, e, "(shared values)");
        matched += count_matches(p, ev.s, ev.n);
        free(ev.s);
    }
    cr_log_info("shared values: %ld matches over 3000 events", matched);
    cr_expect_gt(matched, 3000, "the rules hardly ever match: the test tests little");
    vm_program_free(p);
    free(src.s);
}

/* Value ids are 16 bits per path: a path whose equalities name more than 65,535 strings gets
 * none, and its equalities are tested constant by constant; the other paths keep theirs. */
Test(differential, value_ids_past_16_bits, .timeout = 120)
{
    buf src = { 0 };
    put(&src, "bus b\nrule big on b { match b == \"k\" and a in [");
    for (int i = 0; i < 70000; i++)
        put(&src, "%s\"s%d\"", i ? ", " : "", i);
    put(&src, "] }\nrule small on b { match b == \"k\" and c in [\"x\", \"y\"] }\n"
              "rule t on b { match b == \"k\" and a in [\"t1\", \"t2\"] }\n");
    vm_program *p = cc_compile_text("big.ebr", src.s, src.n, stderr, NULL);
    cr_assert_not_null(p);
    uint32_t plain = 0, constant_by_constant = 0;
    for (uint32_t g = 0; g < p->nix_preds; g++) {
        const char *path = vm_s(p, p->segs[p->paths[p->ix_preds[g].path].seg0]);
        if (strcmp(path, "a") == 0)
            constant_by_constant += vm_pred_nvid(p->derived, g) == VM_NONE;
        if (strcmp(path, "c") == 0)
            plain += vm_pred_nvid(p->derived, g) == 2;
    }
    cr_assert_eq(constant_by_constant, 2, "the equalities on a should have no value ids");
    cr_assert_eq(plain, 1, "the equality on c should keep its value ids");
    static const char *const as[] = { "s0", "s65535", "s65536", "s69999", "t1", "x" };
    static const char *const cs[] = { "x", "y", "s1", "z" };
    for (int e = 0; e < 48; e++) {
        buf ev = { 0 };
        put(&ev, "{\"b\": \"k\", \"a\": \"%s\", \"c\": \"%s\"}", as[e % 6], cs[e / 6 % 4]);
        run_engines(p, ev.s, ev.n, e, "(big list)");
        free(ev.s);
    }
    vm_program_free(p);
    free(src.s);
}

/* Clauses the index decides without their rule's bytecode where it can (index.c): two plain
 * equalities on paths of one array (`arr[].x`, `arr[].y`: one element must hold both, tied_pair)
 * and rules that are equalities and then one negated test (`"exists": false`, `not (b == ..)`,
 * negation_holds), each with a third predicate or not; the shared trigger values make the
 * signatures of the marks (vm_pred_mark) drop many.  Events put the values in one element or
 * two, in nested arrays, outside arrays, as other types, with the negated path absent, present,
 * null, inside arrays; every event must match exactly what the reference matches. */
Test(differential, ties_and_negations)
{
    static const char *const v[] = { "v0", "v1", "v2", "v3", "v4" };
    buf src = { 0 };
    put(&src, "bus b\n");
    for (int r = 0; r < 300; r++) {
        const char *x1 = v[rnd(5)], *x2 = v[rnd(5)], *y1 = v[rnd(5)], *y2 = v[rnd(5)];
        put(&src, "rule r%d on b { ", r);
        switch (rnd(6)) {
        case 0:
            put(&src, "pattern {\"arr\": {\"x\": [\"%s\", \"%s\"], \"y\": [\"%s\", \"%s\"]}}", x1,
                x2, y1, y2);
            break;
        case 1:
            put(&src, "pattern {\"a\": [\"%s\", \"%s\"], \"arr\": {\"x\": [\"%s\"], \"y\": [\"%s\"]}}",
                v[rnd(5)], v[rnd(5)], x1, y1);
            break;
        case 2:
            put(&src, "pattern {\"a\": [\"%s\", \"%s\"], \"b\": [{\"exists\": false}]}", x1, x2);
            break;
        case 3:
            put(&src, "pattern {\"a\": [\"%s\"], \"c\": {\"d\": [\"%s\", \"%s\"]}, \"arr\": {\"y\": "
                      "[{\"exists\": false}]}}", x1, y1, y2);
            break;
        case 4:
            put(&src, "match a in [\"%s\", \"%s\"] and not (b == \"%s\")", x1, x2, y1);
            break;
        default:
            put(&src, "match arr[].x == \"%s\" and not (arr[].y == \"%s\")", x1, y1);
            break;
        }
        put(&src, " }\n");
    }
    vm_program *p = cc_compile_text("ties.ebr", src.s, src.n, stderr, NULL);
    cr_assert_not_null(p, "%s", src.s);
    uint32_t negated = 0;
    for (uint32_t ci = 0; ci < p->nix_clauses; ci++)
        negated += p->derived->neg_test[ci] != VM_NONE;
    cr_assert_gt(negated, 100, "rules of equalities and one negation should be recognised");
    long matched = 0;
    for (int e = 0; e < 4000; e++) {
        buf ev = { 0 };
        put(&ev, "{\"a\": \"%s\"", v[rnd(5)]);
        switch (rnd(6)) {   /* b: absent, a string, null, a number, in an array, an object */
        case 0: break;
        case 1: put(&ev, ", \"b\": \"%s\"", v[rnd(5)]); break;
        case 2: put(&ev, ", \"b\": null"); break;
        case 3: put(&ev, ", \"b\": 1"); break;
        case 4: put(&ev, ", \"b\": [\"%s\", \"%s\"]", v[rnd(5)], v[rnd(5)]); break;
        default: put(&ev, ", \"b\": {\"z\": 1}"); break;
        }
        if (rnd(2))
            put(&ev, ", \"c\": {\"d\": \"%s\"}", v[rnd(5)]);
        /* arr: absent, one object, elements, nested arrays and other types, elements and (the
         * key twice) an object outside them */
        switch (rnd(6)) {
        case 0: break;
        case 1: put(&ev, ", \"arr\": {\"x\": \"%s\", \"y\": \"%s\"}", v[rnd(5)], v[rnd(5)]); break;
        case 2: case 3: {
            put(&ev, ", \"arr\": [");
            int n = 1 + (int)rnd(3);
            for (int i = 0; i < n; i++) {
                put(&ev, "%s{\"x\": \"%s\"", i ? ", " : "", v[rnd(5)]);
                if (rnd(3))
                    put(&ev, ", \"y\": \"%s\"", v[rnd(5)]);
                put(&ev, "}");
            }
            put(&ev, "]");
            break;
        }
        case 4:
            put(&ev, ", \"arr\": [{\"x\": [\"%s\", \"%s\"], \"y\": \"%s\"}, {\"x\": %s, \"y\": [\"%s\"]}]",
                v[rnd(5)], v[rnd(5)], v[rnd(5)], rnd(2) ? "1" : "\"v1\"", v[rnd(5)]);
            break;
        default: {
            bool array = rnd(2);   /* the second "arr": an object, or an array of its own */
            put(&ev, ", \"arr\": [{\"x\": \"%s\", \"y\": \"%s\"}], \"arr\": %s\"%s\": \"%s\"%s",
                v[rnd(5)], v[rnd(5)], array ? "[{\"z\": 1}, {" : "{", rnd(2) ? "x" : "y", v[rnd(5)],
                array ? "}]" : "}");
            break;
        }
        }
        put(&ev, "}");
        run_engines(p, ev.s, ev.n, e, "(ties and negations)");
        matched += count_matches(p, ev.s, ev.n);
        free(ev.s);
    }
    cr_log_info("ties and negations: %ld matches over 4000 events", matched);
    cr_expect_gt(matched, 4000, "the rules hardly ever match: the test tests little");
    vm_program_free(p);
    free(src.s);
}

/* The scanner's trie tells a node's keys apart by length and head (vm_key_head: the whole key up
 * to 8 bytes, the first 8 beyond) before any byte: siblings of every length from 0 to 20 that
 * differ in one byte anywhere (first, middle, last, past the eighth), under a node with few
 * edges (looked at in line) and one with many (a binary search).  Each must lead to its own
 * child, and each one-byte change of it to none or to the sibling it spells. */
Test(differential, trie_keys_by_head)
{
    static const char *const few[] = { "", "x", "xy", "xyz", "abcd", "abce", "abcdefgh", "abcdefghi" };
    char many[21][3][24];
    buf src = { 0 };
    put(&src, "bus b\nrule f on b { match ");
    for (size_t i = 0; i < sizeof few / sizeof *few; i++)
        put(&src, "%sexists f.\"%s\"", i ? " or " : "", few[i]);
    put(&src, " }\nrule m on b { match ");
    for (int len = 0; len <= 20; len++)
        for (int v = 0; v < 3; v++) {
            for (int i = 0; i < len; i++)
                many[len][v][i] = (char)('a' + (i * 7 + len) % 26);
            many[len][v][len] = 0;
            if (len && v)   /* a sibling that differs in one byte: the last, or past the 8th */
                many[len][v][v == 1 ? len - 1 : (len > 9 ? 9 : len / 2)] = v == 1 ? 'Z' : 'W';
            put(&src, "%sexists m.\"%s\"", len || v ? " or " : "", many[len][v]);
        }
    put(&src, " }\n");
    vm_program *p = cc_compile_text("trie.ebr", src.s, src.n, stderr, NULL);
    cr_assert_not_null(p, "%s", src.s);
    const struct vm_trie *t = p->derived->trie;
    uint32_t f = vm_trie_child(t, 0, "f", 1), m = vm_trie_child(t, 0, "m", 1);
    cr_assert(f != VM_NONE && m != VM_NONE);
    cr_assert_leq(t->nodes[f].nedge, 8, "f's keys are looked at in line");
    cr_assert_gt(t->nodes[m].nedge, 8, "m's keys are found by a binary search");
    for (size_t i = 0; i < sizeof few / sizeof *few; i++) {
        uint32_t child = vm_trie_child(t, f, few[i], strlen(few[i]));
        cr_assert_neq(child, VM_NONE, "f.%s", few[i]);
        for (size_t j = 0; j < i; j++)
            cr_assert_neq(child, vm_trie_child(t, f, few[j], strlen(few[j])), "f.%s", few[i]);
    }
    cr_assert_eq(vm_trie_child(t, f, "abcf", 4), VM_NONE);
    cr_assert_eq(vm_trie_child(t, f, "abcdefgj", 8), VM_NONE);
    cr_assert_eq(vm_trie_child(t, f, "abcdefghj", 9), VM_NONE);
    cr_assert_eq(vm_trie_child(t, f, "y", 1), VM_NONE);
    uint32_t seen[21][3];
    for (int len = 0; len <= 20; len++)
        for (int v = 0; v < 3; v++) {
            seen[len][v] = vm_trie_child(t, m, many[len][v], (size_t)len);
            cr_assert_neq(seen[len][v], VM_NONE, "m.%s", many[len][v]);
            for (int w = 0; w < v && len; w++)
                cr_assert_neq(seen[len][v], seen[len][w], "m.%s", many[len][v]);
        }
    for (int len = 1; len <= 20; len++)
        for (int at = 0; at < len; at++) {
            char k[24];
            memcpy(k, many[len][0], (size_t)len + 1);
            k[at] = 'Y';   /* spells none of the siblings */
            cr_assert_eq(vm_trie_child(t, m, k, (size_t)len), VM_NONE, "m.%s", k);
        }
    vm_program_free(p);
    free(src.s);
}

/* The matches of an event are sorted by vm_sort_rules: through a bitmap when the numbers are
 * distinct and small, else insertion sort, quicksort above 32. */
Test(differential, sort_rules)
{
    static uint32_t v[3000], w[3000];
    for (int round = 0; round < 400; round++) {
        size_t n = rnd(3) == 0 ? rnd(40) : rnd(3000);
        uint32_t range = rnd(4) == 0 ? 3 : 100000;
        if (round % 7 == 3) {
            /* Distinct numbers below ~2n, some in the bitmap's reach (16,384), shuffled; and
             * now and then one repeated, or one past the bitmap's end. */
            uint32_t top = (uint32_t)(2 * n + 1);
            for (size_t i = 0; i < n; i++)
                v[i] = (uint32_t)i * top / (uint32_t)(n ? n : 1);
            for (size_t i = n; i > 1; i--) {
                size_t j = rnd((uint32_t)i);
                uint32_t t = v[i - 1];
                v[i - 1] = v[j];
                v[j] = t;
            }
            if (n > 1 && rnd(4) == 0)
                v[rnd((uint32_t)n)] = v[rnd((uint32_t)n)];
            else if (n > 1 && rnd(4) == 0)
                v[rnd((uint32_t)n)] = 16384 + rnd(3);
        } else {
            for (size_t i = 0; i < n; i++)
                v[i] = round % 7 == 1 ? (uint32_t)i : round % 7 == 2 ? (uint32_t)(n - i) : rnd(range);
        }
        memcpy(w, v, n * sizeof *v);
        vm_sort_rules(v, n);
        uint64_t sum_v = 0, sum_w = 0;
        for (size_t i = 0; i < n; i++) {
            sum_v += v[i] * 2654435761u % 1000003;
            sum_w += w[i] * 2654435761u % 1000003;
            if (i)
                cr_assert_leq(v[i - 1], v[i], "round %d: not sorted at %zu of %zu", round, i, n);
        }
        cr_assert_eq(sum_v, sum_w, "round %d: the values changed", round);
    }
}

/* Equality, prefix, suffix and wildcard tests of strings, plain and ignore-case, as themselves
 * and as anything-but, run on a leaf's bytes in place when they can (index.c, quick_passes): leaves
 * that are escaped, or hold bytes past ASCII whose case folding changes lengths or turns into
 * ASCII (the Kelvin sign folds to "k", "ß" to "ss", "ſ" to "s"), must get the same verdicts as
 * the reference's folded comparisons. */
Test(differential, strings_compared_in_place)
{
    static const char *const consts[] = { "kelvin", "KE", "ss", "s", "in", "ab", "", "\u00e9" };
    static const char *const ops[] = {
        "\"%s\"", "{\"equals-ignore-case\": \"%s\"}", "{\"prefix\": \"%s\"}",
        "{\"prefix\": {\"equals-ignore-case\": \"%s\"}}", "{\"suffix\": \"%s\"}",
        "{\"suffix\": {\"equals-ignore-case\": \"%s\"}}", "{\"anything-but\": \"%s\"}",
        "{\"anything-but\": {\"equals-ignore-case\": [\"%s\", \"ss\"]}}",
        "{\"anything-but\": {\"prefix\": \"%s\"}}", "{\"anything-but\": {\"suffix\": \"%s\"}}",
        "{\"wildcard\": \"*%s*\"}", "{\"anything-but\": {\"wildcard\": \"%s*\"}}",
    };
    static const char *const leaves[] = {
        "\"kelvin\"", "\"KELVIN\"", "\"\u212aelvin\"", "\"\\u212Aelvin\"", "\"\u017fs\"", "\"\u00df\"",
        "\"SS\"", "\"s\"", "\"\"", "\"ab\"", "\"xAB\"", "\"\u00e9\"", "\"\u00c9\"", "\"k\\u0045\"",
        "\"KEin\"", "\"abs\"", "5", "true", "null", "\"\u212a\"",
    };
    const uint32_t nc = sizeof consts / sizeof *consts, no = sizeof ops / sizeof *ops,
                   nl = sizeof leaves / sizeof *leaves;
    buf src = { 0 };
    put(&src, "bus b\n");
    int r = 0;
    for (uint32_t o = 0; o < no; o++)
        for (uint32_t k = 0; k < nc; k++) {
            if (((strstr(ops[o], "anything-but\": {\"") && strstr(ops[o], "fix")) ||
                 strstr(ops[o], "wildcard")) && !*consts[k])
                continue;   /* refused: an empty prefix or suffix in anything-but, "**" */
            put(&src, "rule r%d on b { pattern {\"%s\": [", r, r % 2 ? "s" : "t");
            r++;
            put(&src, ops[o], consts[k]);
            put(&src, "]} }\n");
        }
    vm_program *p = cc_compile_text("in_place.ebr", src.s, src.n, stderr, NULL);
    cr_assert_not_null(p, "%s", src.s);
    uint32_t quick = 0, quick_ci = 0;
    for (uint32_t g = 0; g < p->nix_preds; g++) {
        uint8_t q = p->derived->test_quick[p->ix_preds[g].test];
        quick += q != VM_Q_NONE;
        quick_ci += (q & VM_Q_CI) != 0;
    }
    cr_assert_gt(quick_ci, 10, "the ignore-case tests should run in place (%u of %u in all)", quick_ci,
                 quick);
    for (int e = 0; e < 2000; e++) {
        buf ev = { 0 };
        put(&ev, "{\"s\": %s, \"t\": [%s, %s]}", leaves[rnd(nl)], leaves[rnd(nl)], leaves[rnd(nl)]);
        run_engines(p, ev.s, ev.n, e, "(strings compared in place)");
        free(ev.s);
    }
    vm_program_free(p);
    free(src.s);
}

/* The index against the reference on each of n fixed events, for rules written out. */
static void check_events(const char *rules, const char *const *events, size_t n)
{
    vm_program *p = cc_compile_text("cases.ebr", rules, strlen(rules), stderr, NULL);
    cr_assert_not_null(p);
    for (size_t e = 0; e < n; e++)
        run_engines(p, events[e], strlen(events[e]), (int)e, rules);
    vm_program_free(p);
}

/* A clause of one predicate is decided by its trigger alone, unless it is a band whose two
 * bounds the elements of an array could pass apart: [0, 500] has a number above 1 and one below
 * 300, yet no element in (1, 300). */
Test(differential, one_predicate_clauses)
{
    static const char *const rules =
        "bus b\n"
        "rule band on b { match data.arr[].x > 1 and data.arr[].x < 300 }\n"
        "rule band_top on b { match data.n >= 1 and data.n <= 300 }\n"
        "rule one on b { match data.arr[].x > 400 }\n"
        "rule neg on b { match not (data.arr[].x == 0) }\n";
    static const char *const events[] = {
        "{\"data\": {\"arr\": [{\"x\": 0}, {\"x\": 500}]}}",
        "{\"data\": {\"arr\": [{\"x\": 0}, {\"x\": 50}]}}",
        "{\"data\": {\"arr\": [{\"x\": 500}, {\"x\": -3}, {\"x\": 2}]}}",
        "{\"data\": {\"n\": [0, 500]}}",
        "{\"data\": {\"n\": 7, \"arr\": []}}",
        "{\"data\": {\"arr\": [{\"x\": 0}]}}",
    };
    check_events(rules, events, sizeof events / sizeof *events);
}

/* A number leaf is parsed once an event and read by the range tree, the bands and the ranges
 * tested on demand (index.c, field_number); one beyond the double range is in no range. */
Test(differential, numbers_read_once)
{
    static const char *const rules =
        "bus b\n"
        "rule above on b { match data.t == \"x\" and data.n > 1 }\n"
        "rule below on b { match data.t == \"x\" and data.n < 1 }\n"
        "rule band on b { match data.t == \"x\" and data.n >= 0 and data.n < 5 }\n"
        "rule tree on b { match data.n >= 2 }\n"
        "rule tree_band on b { match data.n > 1 and data.n <= 300 }\n"
        "rule asnum on b { match data.t == \"x\" and data.n as number > 1 }\n";
    static const char *const values[] = {
        "1e400", "-1e400", "3", "0", "[0, 500]", "[1e400, 2]", "\"3\"", "300", "1", "-0.5",
    };
    vm_program *p = cc_compile_text("numbers.ebr", rules, strlen(rules), stderr, NULL);
    cr_assert_not_null(p);
    for (size_t i = 0; i < sizeof values / sizeof *values; i++) {
        char ev[128];
        snprintf(ev, sizeof ev, "{\"data\": {\"t\": \"x\", \"n\": %s}}", values[i]);
        run_engines(p, ev, strlen(ev), (int)i, rules);
    }
    vm_program_free(p);
}

/* Two equalities tied by arrays, decided by the index (index.c, tied_pair) in one pass over
 * each path: leaves in one array (the same element or not), in two arrays of one path (a key
 * given twice), outside arrays. */
Test(differential, tied_pairs_over_arrays)
{
    static const char *const rules =
        "bus b\n"
        "rule xy on b { match data.arr[].x == \"v1\" and data.arr[].y == \"v2\" }\n"
        "rule yx on b { match data.arr[].y == \"v2\" and data.arr[].x in [\"v1\", \"v3\"] }\n";
    static const char *const events[] = {
        "{\"data\": {\"arr\": [{\"x\": \"v1\"}, {\"y\": \"v2\"}]}}",
        "{\"data\": {\"arr\": [{\"x\": \"v1\", \"y\": \"v2\"}]}}",
        "{\"data\": {\"arr\": [{\"y\": \"v2\"}, {\"x\": \"v0\"}, {\"x\": \"v1\", \"y\": \"v0\"}]}}",
        "{\"data\": {\"arr\": [{\"x\": \"v1\"}, {\"y\": \"v2\"}], \"arr\": [{\"y\": \"v2\"}]}}",
        "{\"data\": {\"arr\": [{\"y\": \"v2\"}, {\"x\": \"v1\"}], \"arr\": [{\"x\": \"v3\"}]}}",
        "{\"data\": {\"arr\": [{\"x\": \"v1\"}, {\"y\": \"v0\"}], \"arr\": [{\"y\": \"v2\"}]}}",
        "{\"data\": {\"arr\": [{\"x\": \"v1\"}, {\"x\": \"v3\"}, {\"y\": \"v2\"}, {\"x\": \"v1\", \"y\": \"v2\"}]}}",
        "{\"data\": {\"arr\": [{\"x\": \"v1\"}, {\"y\": \"v2\"}, {\"x\": \"v1\"}, {\"y\": \"v2\"}]}}",
    };
    check_events(rules, events, sizeof events / sizeof *events);
}

/* A template reads the event through the brackets stage 1 recorded, or byte by byte when the
 * byte-by-byte scanner read it; the payloads must be the same.  (Events of 64 bytes and more
 * go through stage 1.) */
Test(differential, templates_read_alike_with_and_without_stage_1)
{
    static const char src[] =
        "bus b\ntarget t file \"t\"\n"
        "rule r on b { match exists a or exists arr or exists c or exists tags or exists n\n"
        "  transform { \"a\": a, \"c\": c, \"cd\": c.d, \"arr\": arr, \"x0\": arr[0].x, \"xl\": arr[-1].x,\n"
        "    \"xs\": arr[*].x, \"z\": arr[*].sub[*].z, \"tags\": tags, \"t1\": tags[1], \"n\": n,\n"
        "    \"s\": \"${a}|${arr[0]}|${tags}\", \"len\": len(arr) ?? 0, \"all\": $event.*, \"dc\": \"c.d\" }\n"
        "  to t }\n";
    vm_program *p = cc_compile_text("t.ebr", src, strlen(src), stderr, NULL);
    cr_assert_not_null(p);
    vm_options bytewise = { .no_simd = true };
    vm_ctx *fast = vm_ctx_new(p, NULL), *slow = vm_ctx_new(p, &bytewise);
    int compared = 0;
    for (int e = 0; e < 3000; e++) {
        buf ev = { 0 };
        event(&ev);
        const uint32_t *m;
        size_t nm, nm2;
        vm_error err;
        if (vm_match(fast, VM_NONE, ev.s, ev.n, &m, &nm, &err) != VM_OK ||
            vm_match(slow, VM_NONE, ev.s, ev.n, &m, &nm2, &err) != VM_OK || nm == 0) {
            free(ev.s);
            continue;
        }
        const char *a, *b;
        size_t na, nb;
        bool ta, tb;
        vm_status sa = vm_transform(fast, 0, ev.s, ev.n, NULL, &a, &na, &ta, &err);
        char *copy = sa == VM_OK ? strndup(a, na) : NULL;
        vm_status sb = vm_transform(slow, 0, ev.s, ev.n, NULL, &b, &nb, &tb, &err);
        cr_assert_eq(sa, sb, "%s", ev.s);
        if (sa == VM_OK)
            cr_assert(na == nb && memcmp(copy, b, na) == 0, "event %s\nstage 1: %.*s\nbyte by byte: %.*s",
                      ev.s, (int)na, copy, (int)nb, b);
        compared += ev.n >= 64;
        free(copy);
        free(ev.s);
    }
    cr_expect_gt(compared, 500, "too few events went through stage 1 (%d)", compared);
    vm_ctx_free(fast);
    vm_ctx_free(slow);
    vm_program_free(p);
}
