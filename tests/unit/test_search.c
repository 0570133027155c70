/*
 * test_search.c — the matcher's search over array elements (vm/match.c): conditions over large
 * arrays cost about the arrays' length, not a power of it; the faster search decides exactly as
 * the plain one (every element in turn, back to the last choice); and a rule that spends its
 * step budget fails alone, named, while the other rules of the event are decided.
 *
 * Work is asserted as a step budget (vm_options.max_steps) that the rule must finish within,
 * never as time.  EBR_DIFF_SEED and EBR_DIFF_ROUNDS lengthen the random comparison.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "../../compiler/compiler.h"
#include "gen.h"

static vm_program *compile(const char *src)
{
    vm_program *p = cc_compile_text("t.ebr", src, strlen(src), stderr, NULL);
    cr_assert_not_null(p, "does not compile: %s", src);
    return p;
}

static bool name_is(const vm_program *p, uint32_t rule, const char *name)
{
    vm_str s = p->rules[rule].name;
    return s.len == strlen(name) && memcmp(vm_s(p, s), name, s.len) == 0;
}

/* Matches ev with the given options; returns the status, the matches in m (up to 16). */
static vm_status match_with(vm_program *p, const vm_options *opt, const char *ev, size_t len,
                            uint32_t *m, size_t *nm, vm_error *err)
{
    vm_ctx *c = vm_ctx_new(p, opt);
    cr_assert_not_null(c);
    const uint32_t *r;
    vm_status st = vm_match(c, VM_NONE, ev, len, &r, nm, err);
    cr_assert_leq(*nm, 16);
    if (*nm)
        memcpy(m, r, *nm * sizeof *r);
    vm_ctx_free(c);
    return st;
}

/* {"data": {"items": [{"a": 1, "b": 1, "c": 1, "d": 0}, ...n, {"a": 0, ..., "d": 1}], "z": 1}},
 * with d = 1 in element `hit` too (none when hit < 0).  Every condition below passes in some
 * element (the last one is there for d), so the index too must search for one element where
 * all four pass. */
static char *items_event(int n, int hit, size_t *len)
{
    buf b = { 0 };
    put(&b, "{\"id\": \"e\", \"data\": {\"items\": [");
    for (int i = 0; i < n; i++)
        put(&b, "%s{\"a\": 1, \"b\": 1, \"c\": 1, \"d\": %d}", i ? ", " : "", i == hit);
    put(&b, ", {\"a\": 0, \"b\": 0, \"c\": 0, \"d\": 1}], \"z\": 1}}");
    *len = b.n;
    return b.s;
}

static const char *const four_conditions =
    "bus b\nrule r on b { match data.items[].a == 1 and data.items[].b == 1 "
    "and data.items[].c == 1 and data.items[].d == 1 }\n";

Test(search, conditions_on_one_large_array_cost_its_length, .timeout = 60)
{
    /* Four conditions that must hold in one element of 4,000: every element passes three of
     * them.  Looking for each element's leaves from the start of the array cost about n^2
     * steps (16 million: over the default limit); jumping to the element costs a few per
     * element (about 9), so 25 steps an element (100,000) are enough. */
    vm_program *p = compile(four_conditions);
    static const int hits[] = { -1, 0, 1999, 3999 };
    for (int engine = 0; engine < 2; engine++)
        for (size_t h = 0; h < sizeof hits / sizeof hits[0]; h++) {
            size_t len;
            char *ev = items_event(4000, hits[h], &len);
            vm_options opt = { .reference = engine == 1, .max_steps = 100000 };
            uint32_t m[16];
            size_t nm;
            vm_error err;
            vm_status st = match_with(p, &opt, ev, len, m, &nm, &err);
            cr_expect_eq(st, VM_OK, "engine %d, hit %d: %s", engine, hits[h], err.msg);
            cr_expect_eq(nm, hits[h] >= 0, "engine %d, hit %d", engine, hits[h]);
            free(ev);
        }
    vm_program_free(p);
}

Test(search, the_fast_search_agrees_with_the_plain_one_on_a_large_array, .timeout = 60)
{
    /* 300 elements: the plain search (about 90,000 steps a try) finishes too, and both say the
     * same, through the index and the reference engine alike. */
    vm_program *p = compile(four_conditions);
    for (int hit = -1; hit < 300; hit += 37) {
        size_t len;
        char *ev = items_event(300, hit, &len);
        size_t want = hit >= 0;
        for (int k = 0; k < 4; k++) {
            vm_options opt = { .reference = k & 1, .plain_search = k >= 2 };
            uint32_t m[16];
            size_t nm;
            vm_error err;
            cr_expect_eq(match_with(p, &opt, ev, len, m, &nm, &err), VM_OK, "%s", err.msg);
            cr_expect_eq(nm, want, "options %d, hit %d", k, hit);
        }
        free(ev);
    }
    vm_program_free(p);
}

/* {"data": {"z": 5, "a": [{"x": 0, "y": 1}, {"x": 1, "y": 0} x n], "b": (the same)}}, and when
 * both_in is set, an element of each array where x and y are both 1 at the end. */
static char *two_arrays_event(int n, bool both_in, size_t *len)
{
    buf b = { 0 };
    put(&b, "{\"data\": {\"z\": 5");
    for (int a = 0; a < 2; a++) {
        put(&b, ", \"%c\": [{\"x\": 0, \"y\": 1}", "ab"[a]);
        for (int i = 0; i < n; i++)
            put(&b, ", {\"x\": 1, \"y\": 0}");
        if (both_in)
            put(&b, ", {\"x\": 1, \"y\": 1}");
        put(&b, "]");
    }
    put(&b, "}}");
    *len = b.n;
    return b.s;
}

Test(search, a_failure_goes_back_to_the_choice_it_depends_on, .timeout = 60)
{
    /* Two arrays, each looked at twice, the conditions interleaved: when data.a[].y fails, the
     * choice of b's element cannot be the cause, so b's other elements are not tried: the
     * search costs about n + n steps, not n * n (160,000 for 400, over this budget). */
    vm_program *p = compile("bus b\nrule heavy on b { match data.a[].x == 1 and data.b[].x == 1 "
                            "and data.a[].y == 1 and data.b[].y == 1 and data.z == 5 }\n");
    for (int both = 0; both < 2; both++)
        for (int engine = 0; engine < 2; engine++) {
            size_t len;
            char *ev = two_arrays_event(400, both, &len);
            vm_options opt = { .reference = engine == 1, .max_steps = 20000 };
            uint32_t m[16];
            size_t nm;
            vm_error err;
            cr_expect_eq(match_with(p, &opt, ev, len, m, &nm, &err), VM_OK, "engine %d: %s",
                         engine, err.msg);
            cr_expect_eq(nm, (size_t)both, "engine %d", engine);
            free(ev);
        }
    vm_program_free(p);
}

Test(search, leaves_passed_over_stay_to_blame)
{
    /* data.a[].x first takes element 1 (binding a), then the dotted key "a.x", which binds
     * nothing.  Under a = 1, data.a[].s[].v passes over element 0's leaf and takes element 1's,
     * whose w fails; its next leaf fails too.  Element 0's leaf, passed over because of a's
     * binding, keeps that choice to blame: going back to it, the dotted key leaves a unbound,
     * and element 0 matches. */
    vm_program *p = compile("bus b\nrule r on b { match data.a[].x == 1 and data.a[].s[].v == 1 "
                            "and data.a[].s[].w == 1 }\n");
    const char *ev = "{\"data\": {\"a\": [{\"x\": 0, \"s\": [{\"v\": 1, \"w\": 1}]}, "
                     "{\"x\": 1, \"s\": [{\"v\": 1, \"w\": 0}, {\"v\": 0}]}], \"a.x\": 1}}";
    for (int k = 0; k < 3; k++) {
        vm_options opt = { .reference = k > 0, .plain_search = k == 2 };
        uint32_t m[16];
        size_t nm;
        vm_error err;
        cr_expect_eq(match_with(p, &opt, ev, strlen(ev), m, &nm, &err), VM_OK, "%s", err.msg);
        cr_expect_eq(nm, 1, "options %d", k);
    }
    vm_program_free(p);
}

Test(search, a_rule_over_its_budget_fails_alone, .timeout = 60)
{
    /* `heavy` needs more steps than the budget allows; the other rules of the event are decided
     * as usual, and the failure names the rule.  Each rule has its own budget: the rules
     * decided after it are not starved. */
    vm_program *p = compile("bus b\n"
                            "rule any on b { match exists data.z }\n"
                            "rule heavy on b { match data.a[].x == 1 and data.a[].y == 1 }\n"
                            "rule light on b { match data.b[].x == 0 and data.b[].y == 1 }\n"
                            "rule none on b { match data.z == 6 }\n");
    size_t len;
    char *ev = two_arrays_event(400, false, &len);
    for (int engine = 0; engine < 2; engine++) {
        vm_options opt = { .reference = engine == 1, .max_steps = 500 };
        vm_ctx *c = vm_ctx_new(p, &opt);
        const uint32_t *r;
        size_t n;
        vm_error err;
        cr_assert_eq(vm_match(c, VM_NONE, ev, len, &r, &n, &err), VM_ERR_RULE, "engine %d: %s",
                     engine, err.msg);
        cr_expect_eq(err.code, VM_ERR_RULE);
        cr_expect(strstr(err.msg, "matching rule 'heavy' took more than 500 steps"), "%s", err.msg);
        cr_assert_eq(n, 2, "engine %d", engine);
        cr_expect(name_is(p, r[0], "any") && name_is(p, r[1], "light"));
        const vm_rule_error *f;
        cr_assert_eq(vm_match_failures(c, &f), 1);
        cr_expect(name_is(p, f[0].rule, "heavy"));
        cr_expect_eq(f[0].err.code, VM_ERR_LIMIT);
        cr_expect(strstr(f[0].err.msg, "matching rule 'heavy'"), "%s", f[0].err.msg);
        /* The context is still usable: a small event matches as before, nothing failed. */
        const char *ok = "{\"data\": {\"a\": [{\"x\": 1, \"y\": 1}], \"z\": 5}}";
        cr_expect_eq(vm_match(c, VM_NONE, ok, strlen(ok), &r, &n, &err), VM_OK);
        cr_expect_eq(n, 2);
        cr_expect_eq(vm_match_failures(c, &f), 0);
        vm_ctx_free(c);
    }
    free(ev);
    vm_program_free(p);
}

/* ---- random rules over arrays: the faster search against the plain one -------------------- */

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(uint32_t n)
{
    return gen_rnd(&rng, n);
}

static const char *const arr_paths[] = {
    "a[].x", "a[].y", "a[].s[].v", "a[].s[].w", "b[].x", "b[].y", "b[].s[].v", "t", "k",
};

static void condition(buf *b, int depth)
{
    int k = depth >= 3 ? rnd(3) : rnd(8);
    const char *path = arr_paths[rnd(9)];
    switch (k) {
    case 0: put(b, "data.%s == %u", path, rnd(3)); return;
    case 1: put(b, "data.%s != %u", path, rnd(3)); return;
    case 2: put(b, "data.%s >= %u", path, rnd(3)); return;
    case 3: case 4:
        put(b, "(");
        condition(b, depth + 1);
        put(b, " and ");
        condition(b, depth + 1);
        put(b, ")");
        return;
    case 5:
        put(b, "(");
        condition(b, depth + 1);
        put(b, " or ");
        condition(b, depth + 1);
        put(b, ")");
        return;
    case 6: put(b, "not ("); condition(b, depth + 1); put(b, ")"); return;
    default: put(b, "exists data.%s", path); return;
    }
}

/* An array of up to max objects {"x": .., "y": ..} (inner ones: "v" and "w"), some with an
 * inner array "s". */
static void element_list(buf *b, int max, bool outer)
{
    int n = (int)rnd((uint32_t)max + 1);
    put(b, "[");
    for (int i = 0; i < n; i++) {
        put(b, "%s{\"%s\": %u", i ? ", " : "", outer ? "x" : "v", rnd(3));
        if (rnd(3))
            put(b, ", \"%s\": %u", outer ? "y" : "w", rnd(3));
        if (outer && rnd(2)) {
            put(b, ", \"s\": ");
            element_list(b, 6, false);
        }
        put(b, "}");
    }
    put(b, "]");
}

/* Arrays of up to 24 elements (so that the search jumps over elements), values 0..2. */
static void array_event(buf *b)
{
    put(b, "{\"data\": {\"a\": ");
    element_list(b, 24, true);
    put(b, ", \"b\": ");
    element_list(b, 12, true);
    if (rnd(2))
        put(b, rnd(3) ? ", \"t\": [%u, %u]" : ", \"t\": [[%u], %u]", rnd(3), rnd(3));
    if (rnd(2))
        put(b, ", \"k\": %u", rnd(3));
    /* The same paths outside the arrays: a dotted key is read as its parts (data.a.x). */
    if (rnd(4) == 0)
        put(b, ", \"a.x\": %u", rnd(3));
    if (rnd(4) == 0)
        put(b, ", \"b.s\": {\"v\": %u}", rnd(3));
    put(b, "}}");
}

Test(search, random_rules_over_arrays_decide_as_the_plain_search, .timeout = 300)
{
    /* EBR_DIFF_SEED and EBR_DIFF_ROUNDS (a multiplier) give longer runs, as in
     * test_differential.c. */
    const char *seed = getenv("EBR_DIFF_SEED"), *mult = getenv("EBR_DIFF_ROUNDS");
    if (seed && strtoull(seed, NULL, 10))
        rng = strtoull(seed, NULL, 10);
    int rounds = 300 * (mult && atoi(mult) > 0 ? atoi(mult) : 1);
    long decided = 0, matched = 0;
    for (int round = 0; round < rounds; round++) {
        buf src = { 0 };
        put(&src, "bus b\n");
        int nrules = 1 + (int)rnd(6);
        for (int i = 0; i < nrules; i++) {
            put(&src, "rule r%d on b { match ", i);
            /* several conditions in a row: what makes a search over choices */
            int nc = 2 + (int)rnd(4);
            for (int k = 0; k < nc; k++) {
                if (k)
                    put(&src, " and ");
                condition(&src, 1);
            }
            put(&src, " }\n");
        }
        vm_program *p = compile(src.s);
        for (int e = 0; e < 30; e++) {
            buf ev = { 0 };
            array_event(&ev);
            uint32_t want[16];
            size_t nwant;
            vm_error err;
            vm_options plain = { .reference = true, .plain_search = true };
            cr_assert_eq(match_with(p, &plain, ev.s, ev.n, want, &nwant, &err), VM_OK, "%s", err.msg);
            for (int k = 0; k < 2; k++) {
                vm_options opt = { .reference = k == 1 };
                uint32_t got[16];
                size_t ngot;
                cr_assert_eq(match_with(p, &opt, ev.s, ev.n, got, &ngot, &err), VM_OK, "%s", err.msg);
                cr_assert(ngot == nwant && !memcmp(got, want, ngot * sizeof *got),
                          "round %d, %s engine: %zu matches, the plain search %zu, for\n%s\n%s",
                          round, k ? "reference" : "index", ngot, nwant, ev.s, src.s);
            }
            decided++;
            matched += (long)nwant;
            free(ev.s);
        }
        vm_program_free(p);
        free(src.s);
    }
    cr_log_info("search: %ld events decided alike, %ld matches", decided, matched);
    cr_expect_gt(matched, decided / 10, "the generator hardly ever matches: it tests little");
}
