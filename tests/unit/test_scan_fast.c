/*
 * test_scan_fast.c — the fast scanner against the byte-by-byte one: for generated JSON (numbers
 * of every shape, escapes, Unicode, nesting, whitespace, tokens placed across the 64-byte block
 * boundaries) and thousands of mutations of it, every stage-1 implementation this machine has
 * must give the byte-by-byte validator's verdict, and matching must give the same rules.
 * EBR_SCAN_SEED and EBR_SCAN_ROUNDS (a multiplier) give longer runs outside `make test`.
 */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../compiler/compiler.h"
#include "../../vm/vm_int.h"
#include "gen.h"

static uint64_t rng = 0x853C49E6748FEA9Bull;

static uint32_t rnd(uint32_t n)
{
    return gen_rnd(&rng, n);
}

static void ws(buf *b)
{
    static const char *const w[] = { "", "", "", " ", "  ", "\n", "\t", " \r\n   " };
    put(b, "%s", w[rnd(8)]);
}

static void number(buf *b)
{
    static const char *const n[] = {
        "0", "-0", "1", "-1", "12", "123456789", "0.5", "-0.25", "3.14159", "1e5", "1E+5",
        "-2.5e-3", "0e0", "10", "100.000", "12345678901234567890", "1e400", "-0.0",
    };
    put(b, "%s", n[rnd(sizeof n / sizeof n[0])]);
}

static void string(buf *b)
{
    static const char *const s[] = {
        "", "a", "abc", "MAPBLKLOT", "with space", "a.b", "tab\\tnewline\\n", "q\\\"uote",
        "back\\\\slash", "\\u0041\\u00e9", "\\ud83d\\ude00", "caf\xc3\xa9", "\xe2\x82\xac",
        "\xf0\x9f\x98\x80", "slash\\/", "1", "true", "{[,:]}", "\\\\\\\\", "\\\\\\\"",
    };
    put(b, "\"%s\"", s[rnd(sizeof s / sizeof s[0])]);
}

static void value(buf *b, int depth);

static void object(buf *b, int depth)
{
    static const char *const keys[] = { "a", "b", "data", "properties", "MAPBLKLOT", "x", "y", "a.b" };
    put(b, "{");
    int n = depth > 4 ? 0 : (int)rnd(5);
    for (int i = 0; i < n; i++) {
        ws(b);
        put(b, "%s\"%s\"", i ? "," : "", keys[rnd(8)]);
        ws(b);
        put(b, ":");
        ws(b);
        value(b, depth + 1);
        ws(b);
    }
    put(b, "}");
}

static void value(buf *b, int depth)
{
    switch (depth > 4 ? rnd(4) : rnd(7)) {
    case 0: number(b); break;
    case 1: string(b); break;
    case 2: put(b, "%s", rnd(3) == 0 ? "true" : rnd(2) ? "false" : "null"); break;
    case 3: number(b); break;
    case 4: object(b, depth); break;
    default: {
        put(b, "[");
        int n = (int)rnd(5);
        for (int i = 0; i < n; i++) {
            ws(b);
            if (i)
                put(b, ",");
            value(b, depth + 1);
        }
        ws(b);
        put(b, "]");
    }
    }
}

/* (gen.h's mutator, drawing from this file's generator) */
static size_t mutate(char *s, size_t n)
{
    return gen_mutate(&rng, s, n, 0);
}

static int kinds_here(void)
{
    /* 0 needs AVX-512 VBMI2, 1 AVX2; 2 runs everywhere. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("avx512bw"))
        return 0;
    return __builtin_cpu_supports("avx2") ? 1 : 2;
}

static vm_program *program(void)
{
    const char *src =
        "bus b\n"
        "rule r1 on b { match a == 1 or data.x > 0 or exists y }\n"
        "rule r2 on b { match properties.MAPBLKLOT starts_with \"a\" or data.a.b == true }\n"
        "rule r3 on b { match b == \"abc\" and not exists x }\n"
        "rule r4 on b { pattern {\"data\": {\"y\": [{\"exists\": true}], \"x\": [{\"numeric\": [\"<\", 100]}]}} }\n";
    vm_program *p = cc_compile_text("t.ebr", src, strlen(src), stderr, NULL);
    cr_assert_not_null(p);
    return p;
}

/* Checks one input against every stage-1 implementation and both walks. */
static void check(vm_program *p, vm_ctx *fast, vm_ctx *slow, const char *s, size_t n, int first_kind,
                  long *valid)
{
    const uint32_t *rs, *rf;
    size_t ns, nf;
    vm_error es, ef;
    vm_status st_slow = vm_match(slow, VM_NONE, s, n, &rs, &ns, &es);
    bool ok = st_slow == VM_OK;
    *valid += ok;
    for (int kind = first_kind; kind <= 2; kind++) {
        bool got = vm_fast_stage1_with(fast, s, n, kind);
        cr_assert_eq(got, ok, "stage 1 (kind %d) says %s, the byte-by-byte scan says %s (%s) for:\n%.*s",
                     kind, got ? "valid" : "invalid", ok ? "valid" : "invalid", es.msg, (int)n, s);
    }
    vm_status st_fast = vm_match(fast, VM_NONE, s, n, &rf, &nf, &ef);
    cr_assert_eq(st_fast, st_slow, "status %d vs %d for %.*s", st_fast, st_slow, (int)n, s);
    if (ok) {
        cr_assert_eq(nf, ns, "matches differ for %.*s", (int)n, s);
        for (size_t i = 0; i < nf; i++)
            cr_assert_eq(rf[i], rs[i]);
        (void)p;
    } else {
        cr_assert_eq(ef.offset, es.offset, "the error message must come from the byte-by-byte scan");
    }
}

Test(scan_fast, every_stage1_agrees_with_the_byte_by_byte_scan, .timeout = 300)
{
    const char *seed = getenv("EBR_SCAN_SEED"), *mult = getenv("EBR_SCAN_ROUNDS");
    if (seed && strtoull(seed, NULL, 10))
        rng = strtoull(seed, NULL, 10);
    int rounds = 3000 * (mult && atoi(mult) > 0 ? atoi(mult) : 1);
    vm_program *p = program();
    vm_options slow_opt = { .no_simd = true };
    vm_ctx *fast = vm_ctx_new(p, NULL), *slow = vm_ctx_new(p, &slow_opt);
    int first = kinds_here();
    long valid = 0, total = 0;
    char *m = malloc(1 << 16);
    for (int r = 0; r < rounds; r++) {
        buf b = { 0 };
        /* Padding moves the tokens across the 64-byte block boundaries. */
        put(&b, "%*s", (int)rnd(70), "");
        object(&b, 0);
        put(&b, "%*s", (int)rnd(3), "");
        check(p, fast, slow, b.s, b.n, first, &valid);
        total++;
        for (int k = 0; k < 4; k++) {
            memcpy(m, b.s, b.n);
            size_t n = mutate(m, b.n);
            check(p, fast, slow, m, n, first, &valid);
            total++;
        }
        free(b.s);
    }
    free(m);
    cr_log_info("scan_fast: %ld inputs, %ld valid", total, valid);
    cr_expect_gt(valid, total / 5);
    cr_expect_lt(valid, total - total / 10);
    vm_ctx_free(fast);
    vm_ctx_free(slow);
    vm_program_free(p);
}

Test(scan_fast, tricky_inputs)
{
    static const char *const cases[] = {
        "{}", "{ }", "[]", "{\"a\":1}", "{\"a\":01}", "{\"a\":-}", "{\"a\":1.}", "{\"a\":.5}",
        "{\"a\":1e}", "{\"a\":1e+}", "{\"a\":1.2.3}", "{\"a\":1e5e5}", "{\"a\":1e5.5}", "{\"a\":--1}",
        "{\"a\":+1}", "{\"a\":1-1}", "{\"a\":-01}", "{\"a\":0.0e-0}", "{\"a\":truex}", "{\"a\":tru}",
        "{\"a\":nul}", "{\"a\":null1}", "{\"a\":\"\\x\"}", "{\"a\":\"\\u12\"}", "{\"a\":\"\\u12g4\"}",
        "{\"a\":\"\t\"}", "{\"a\" 1}", "{\"a\",1}", "{\"a\":1,}", "{,}", "{\"a\":1 \"b\":2}",
        "{\"a\":\"b\":1}", "{\"a\":1:2}", "[1:2]", "{\"a\":[1,]}", "{\"a\":[,1]}", "{\"a\":{]}",
        "{\"a\":[}", "{\"a\":1}}", "{\"a\":1}{", "{\"a\":1} 1", " {\"a\":1} ", "{\"a\":\"x\"", "{\"a",
        "{\"a\":\"\\\\\"}", "{\"a\":\"\\\\\\\"\"}", "{\"a\":[1 2]}", "{\"a\":[\"x\" \"y\"]}",
        "{\"a\":{\"b\"}}", "{\"a\":{\"b\":}}", "{\"\":\"\"}", "{\"a\":[[[]]]}", "{\"a\":[{}]}",
        "{\"a\":\"\xc3\"}", "{\"a\":\"\xc0\xaf\"}", "{\"a\":\"\xed\xa0\x80\"}", "{\"\xe2\x82\xac\":1}",
        "{\"a\":1}\x00", "\xef\xbb\xbf{}", "{\"a\":[1,2,3],\"b\":{\"c\":[{\"d\":\"e\"}]}}",
        "{\"a\":1E5}", "{\"a\":-0.1E-5}", "{\"a\":[true,false,null]}", "{\"a\":True}",
        /* as many ':' as ',' + 1 and every pair of tokens allowed: only "a ':' after a key" */
        "{\"a\":\"b\":\"c\",\"d\"}", "{\"a\":[1,\"b\":2,3],\"c\":4}", "{\"a\":{\"b\":\"c\":\"d\",\"e\"}}",
        /* a second value after the event's object, one with nothing inside and one without */
        "{}{}", "{} []", "{\"a\":1},[]", "{},{}", "{}, {\"a\":{}}", "{\"a\":1}{\"b\":2}",
        "{\"a\":1}[]", "{}{\"a\":[1]}", "[]",
        /* the event's last '}' closing a container inside it: the bracket walk reads its
         * sentinel with the event's object open, or another container too */
        "{\"a\":{\"b\":1}", "{\"a\":{}", "{\"a\":{\"b\":{}", "{\"a\":{\"b\":{\"c\":1}",
        "{\"a\":[{}", "{\"a\":[1,{}", "{\"a\":[{\"b\":1}", "{\"a\":[[{\"b\":1}",
        "{\"a\":{\"b\":{\"c\":[1]}", "{\"a\":[{\"b\":[{}]}", "{\"a\":{\"b\":{}}",
        "{\"a\":{\"b\":[1]}}}", "{\"a\":[[[[{}]]]}",
    };
    vm_program *p = program();
    vm_options slow_opt = { .no_simd = true };
    vm_ctx *fast = vm_ctx_new(p, NULL), *slow = vm_ctx_new(p, &slow_opt);
    int first = kinds_here();
    long valid = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* Each case at several offsets from a block boundary. */
        for (int pad = 0; pad < 70; pad += 7) {
            char in[256];
            size_t len = strlen(cases[i]);
            memset(in, ' ', (size_t)pad);
            memcpy(in + pad, cases[i], len);
            check(p, fast, slow, in, (size_t)pad + len, first, &valid);
        }
    }
    /* A NUL byte after the object, and one inside a string. */
    check(p, fast, slow, "{\"a\":1}\0", 8, first, &valid);
    check(p, fast, slow, "{\"a\":\"x\0y\"}", 11, first, &valid);
    vm_ctx_free(fast);
    vm_ctx_free(slow);
    vm_program_free(p);
}

/* Each item three times in an event (fmt: a pad, then the item three times), the event moved a
 * byte at a time over 130 positions, so that every byte of the item lies on a block boundary
 * once; every stage 1 this machine has must agree with the byte-by-byte scan, and some of the
 * events must be valid and some not. */
static void across_boundaries(const char *const *items, size_t n, const char *fmt)
{
    vm_program *p = program();
    vm_options slow_opt = { .no_simd = true };
    vm_ctx *fast = vm_ctx_new(p, NULL), *slow = vm_ctx_new(p, &slow_opt);
    int first = kinds_here();
    long valid = 0, total = 0;
    for (size_t i = 0; i < n; i++) {
        for (int pad = 0; pad < 130; pad++) {
            char in[512];
            int len = snprintf(in, sizeof in, fmt, pad, "", items[i], items[i], items[i]);
            check(p, fast, slow, in, (size_t)len, first, &valid);
            total++;
        }
    }
    cr_expect_gt(valid, 0);
    cr_expect_lt(valid, total);
    vm_ctx_free(fast);
    vm_ctx_free(slow);
    vm_program_free(p);
}

/* Numbers, valid and not, with every byte of them in turn on a block boundary: each rule of
 * stage 1's number grammar carries from one block to the next, and each is tried here. */
Test(scan_fast, numbers_across_every_block_boundary, .timeout = 120)
{
    static const char *const numbers[] = {
        "0", "-0", "7", "-12", "0.5", "-0.05", "10.25", "1e5", "1E-5", "1e+05", "-2.5E+10", "0e0",
        "123456789012345678901234567890", "0.000000000000000000000000001", "-122.37993999141668",
        "01", "-01", "00", "-", "--1", "+1", "1-", "1+", "1.", "-.5", ".5", "1..2", "1.2.3", "1.e5",
        "1e", "1e+", "1e-", "1e+-5", "1ee5", "1e5e5", "1e5.5", "1e.5", "-e5", "1e5-", "0-1", "1x",
        "1.5x", "1E", "1.0e05", "0.0e-0", "-0.0", "1e05.", "12.34.56e7", "1e5+5", "2-3",
        /* leading zeros in exponents are allowed, not in the number */
        "1e-05", "1E+00", "-0e-01", "10e01", "0e01", "1.0e-05", "-00", "-0e05",
        /* signs: one at the start ('-') and one after 'e', nowhere else */
        "1+5", "-+1", "+-1", "1e-+5", "0-0", "1e--5", "-1e-5-", "1.5e-05e5", "-1.5e-05.1",
        /* letters but 'e' */
        "1a", "1e5a", "-a", "1.a", "1Ea", "tr1e", "0x10",
    };
    across_boundaries(numbers, sizeof numbers / sizeof numbers[0], "%*s{\"a\":[%s,%s],\"b\":%s}");
}

/* Strings, valid and not, with every byte of them in turn on a block boundary: escapes (a
 * backslash run cut by the boundary), \u escapes, UTF-8 sequences cut by it, and bad ones. */
Test(scan_fast, strings_across_every_block_boundary, .timeout = 120)
{
    static const char *const strings[] = {
        "abc", "a\\\\b", "a\\\"b", "\\\\\\\"", "\\u00e9x", "\\uD83D\\uDE00", "caf\xc3\xa9", "\xe2\x82\xac\xe2\x82\xac",
        "\xf0\x9f\x98\x80", "1.5e3", "{[,:]}", "\\u12", "\\u12g4", "\\x", "\xc3", "\xc0\xaf", "\xed\xa0\x80",
        "\xf4\x90\x80\x80", "\xe2\x82", "a\tb", "\x7f", "\xff",
    };
    across_boundaries(strings, sizeof strings / sizeof strings[0],
                      "%*s{\"%s\":[\"%s\"],\"b\":\"%s\"}");
}

/* Every byte value between the tokens of an object, an array and a value (outside strings, where
 * JSON allows whitespace only, or a byte that makes another token), with the byte in turn at
 * twenty offsets around the first block boundary: stage 1 tells what may stand there by a table,
 * and every stage 1 this machine has must agree with the byte-by-byte scan on each. */
Test(scan_fast, every_byte_between_tokens, .timeout = 120)
{
    static const char *const shapes[] = {
        "%*s{\"a\":1,%c\"b\":[2,3]}", "%*s{\"a\"%c:1}", "%*s{\"a\":%c1}", "%*s{\"a\":[1,%c2]}",
        "%*s{\"a\":1%c}", "%*s{%c}", "%*s{\"a\":[%c]}", "%*s{\"a\":{\"b\":true%c}}",
    };
    vm_program *p = program();
    vm_options slow_opt = { .no_simd = true };
    vm_ctx *fast = vm_ctx_new(p, NULL), *slow = vm_ctx_new(p, &slow_opt);
    int first = kinds_here();
    long valid = 0, total = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        for (int byte = 0; byte < 256; byte++) {
            for (int pad = 50; pad < 70; pad++) {
                char in[256];
                int len = snprintf(in, sizeof in, shapes[i], pad, "", byte);
                check(p, fast, slow, in, (size_t)len, first, &valid);
                total++;
            }
        }
    }
    cr_log_info("scan_fast: %ld inputs with a byte between tokens, %ld valid", total, valid);
    cr_expect_gt(valid, 0);
    cr_expect_lt(valid, total);
    vm_ctx_free(fast);
    vm_ctx_free(slow);
    vm_program_free(p);
}

/* Nesting at and around the depth limit (vm_options.max_depth from 1 to 6): containers with
 * none inside and with others inside, objects and arrays, as deep as the limit and one deeper.
 * Stage 1 checks the depth where a container with another inside opens, not at every bracket;
 * it must give the byte-by-byte scan's verdict on each. */
Test(scan_fast, nesting_at_the_depth_limit)
{
    vm_program *p = program();
    int first = kinds_here();
    long valid = 0, total = 0;
    for (size_t limit = 1; limit <= 6; limit++) {
        vm_options fast_opt = { .max_depth = limit }, slow_opt = { .no_simd = true, .max_depth = limit };
        vm_ctx *fast = vm_ctx_new(p, &fast_opt), *slow = vm_ctx_new(p, &slow_opt);
        for (int depth = 1; depth <= 8; depth++) {
            for (int shape = 0; shape < 4; shape++) {
                /* shape: the innermost holds a number or is empty; the levels are objects, or
                 * objects and arrays in turn */
                buf b = { 0 };
                put(&b, "%*s", (int)rnd(70), "");
                for (int d = 0; d < depth; d++)
                    put(&b, "%s", d == 0 || !(shape & 2) || d % 2 ? "{\"a\":" : "[");
                put(&b, "%s", shape & 1 ? "1" : "[]");
                for (int d = depth - 1; d >= 0; d--)
                    put(&b, "%s", d == 0 || !(shape & 2) || d % 2 ? "}" : "]");
                check(p, fast, slow, b.s, b.n, first, &valid);
                total++;
                free(b.s);
            }
        }
        vm_ctx_free(fast);
        vm_ctx_free(slow);
    }
    cr_expect_gt(valid, 0);
    cr_expect_lt(valid, total);
    vm_program_free(p);
}

/* Events that leave a container open under their last '}', each after a long event that fills
 * the bracket tables with positions far past its end, and in a buffer of its own size: a walk
 * that read a bracket past the sentinel would read the event's bytes there (out of bounds: the
 * sanitizer build fails; stale positions otherwise). */
Test(scan_fast, containers_left_open_read_nothing_past_the_event)
{
    static const char *const cases[] = {
        "{\"a\":{\"b\":{}", "{\"a\":{\"b\":{\"c\":1}", "{\"a\":[{}", "{\"a\":[1,{}",
        "{\"a\":{\"b\":{\"c\":[1]}", "{\"a\":{\"b\":{\"c\":{\"d\":{}}", "{\"a\":{\"b\":1}",
    };
    vm_program *p = program();
    vm_options slow_opt = { .no_simd = true };
    vm_ctx *fast = vm_ctx_new(p, NULL), *slow = vm_ctx_new(p, &slow_opt);
    int first = kinds_here();
    long valid = 0;
    buf big = { 0 };
    put(&big, "{\"a\":[");
    for (int i = 0; i < 200; i++)
        put(&big, "%s{\"x\":[%d,{\"y\":[]}]}", i ? "," : "", i);
    put(&big, "]}");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int pad = 0; pad < 70; pad += 5) {
            check(p, fast, slow, big.s, big.n, first, &valid);
            size_t len = strlen(cases[i]);
            char *in = malloc((size_t)pad + len);
            memset(in, ' ', (size_t)pad);
            memcpy(in + pad, cases[i], len);
            check(p, fast, slow, in, (size_t)pad + len, first, &valid);
            free(in);
        }
    }
    free(big.s);
    cr_expect_eq(valid, (long)(sizeof cases / sizeof cases[0]) * 14, "only the long events are valid");
    vm_ctx_free(fast);
    vm_ctx_free(slow);
    vm_program_free(p);
}
