/*
 * test_vm.c — the VM's API and the value semantics shared with the compiler: number canonical
 * forms, IP parsing, wildcards, the scanner's limits and error reports.
 */
#include <criterion/criterion.h>
#include <math.h>
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

/* Matches one event; returns the number of matched rules, or -1 (err filled) for a bad event. */
static int matches(vm_program *p, const char *event, size_t len, vm_error *err)
{
    vm_ctx *c = vm_ctx_new(p, NULL);
    const uint32_t *r;
    size_t n;
    vm_status st = vm_match(c, VM_NONE, event, len, &r, &n, err);
    vm_ctx_free(c);
    return st == VM_OK ? (int)n : -1;
}

static void canon(const char *in, const char *want)
{
    char buf[128];
    size_t n = vm_number_canon(in, strlen(in), buf, sizeof buf);
    buf[n] = 0;
    cr_expect_str_eq(buf, want, "canon(%s)", in);
}

Test(values, numbers_of_equal_value_share_one_form)
{
    canon("300", "3e2");
    canon("300.0", "3e2");
    canon("3e2", "3e2");
    canon("0.3e3", "3e2");
    canon("-0", "0");
    canon("0.000", "0");
    canon("0.05", "5e-2");
    canon("-1.50", "-15e-1");
    canon("12345678901234567890", "1234567890123456789e1");
    canon("0.30000000000000001", "30000000000000001e-17");
    char buf[8];
    cr_expect_eq(vm_number_canon("abc", 3, buf, sizeof buf), 0);
    cr_expect_eq(vm_number_canon("1e", 2, buf, sizeof buf), 0);
}

static bool ip(const char *s, const char *want)
{
    uint8_t a[16];
    if (!vm_parse_ip(s, strlen(s), a))
        return want == NULL;
    char buf[64];
    vm_format_ip(a, 128, buf, sizeof buf);
    return want && !strcmp(buf, want);
}

/* vm_number_value must give strtod's correctly rounded double, bit for bit, whichever path
 * it takes (the exact fast paths or strtod itself). */
static void same_as_strtod(const char *text)
{
    double got, want = strtod(text, NULL);
    bool ok = vm_number_value(text, strlen(text), &got);
    if (!isfinite(want) || (want == 0 && strpbrk(text, "123456789") &&
                            strcspn(text, "123456789") < strcspn(text, "eE"))) {
        cr_assert(!ok, "%s: outside the double range, yet read as %.17g", text, got);
        return;
    }
    cr_assert(ok, "%s: not read", text);
    cr_assert(memcmp(&got, &want, sizeof got) == 0, "%s: %.17g, strtod says %.17g", text, got,
              want);
}

Test(values, numbers_are_read_exactly)
{
    static const char *const edges[] = {
        "0", "-0", "0.0", "1", "-1", "9007199254740992", "9007199254740993", "9007199254740995",
        "18446744073709551615", "18446744073709551616", "1e22", "1e23", "8.98846567431158e307",
        "1.7976931348623157e308", "1.7976931348623158e308", "1.7976931348623159e308",
        "2.2250738585072014e-308", "2.2250738585072011e-308", "4.9e-324", "2.4e-324", "1e-400",
        "1e400", "0.1", "0.2", "0.3", "0.30000000000000001", "-122.37993999141668",
        "37.792288172410125", "2.5", "7.2057594037927933e16", "9223372036854775807",
        "9223372036854775808", "1.00000000000000011102230246251565404236316680908203125",
        "1.00000000000000011102230246251565404236316680908203124",
        "1.00000000000000011102230246251565404236316680908203126", "5e-324", "1e-323",
        "123456789012345678901234567890", "0.000000000000000000000000000000001", "1e-22", "1e-23",
        "4503599627370496.5", "4503599627370497.5", "9007199254740993e-3", "1.5e300", "1E5", "1e+5",
        /* fractions read eight digits a step: a non-digit inside the eight, digits past 19,
         * leading zeros, the exponent right after */
        "1.12345678", "1.1234567e5", "12.34567890123456789", "1.2345678901234567890",
        "0.000123456789012", "10.00000000000000000001", "1.23456789e-5",
        "99999999999.99999999", "1.9999999999999999", "-0.99999999999999999999",
    };
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        same_as_strtod(edges[i]);
    /* a byte that is not a digit within the eight read at once */
    static const char *const bad[] = { "1.1234567/", "1.123456:8", "123456.78901234:", "1.12345678901234/" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        double d;
        cr_assert(!vm_number_value(bad[i], strlen(bad[i]), &d), "%s: read as a number", bad[i]);
    }
    /* Random doubles printed short and long, and random digit strings and exponents. */
    uint64_t r = 0x9E3779B97F4A7C15ull;
    char buf[64];
    for (int i = 0; i < 300000; i++) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        double v;
        uint64_t bits = r & 0x7fefffffffffffffull;   /* finite */
        memcpy(&v, &bits, sizeof v);
        snprintf(buf, sizeof buf, i % 3 ? "%.17g" : i % 2 ? "%.15g" : "%.16e", v);
        same_as_strtod(buf);
        int digits = 1 + (int)(r >> 58) % 19, exp = (int)((r >> 20) % 700) - 350;
        int k = 0;
        buf[k++] = '-';
        for (int d = 0; d < digits; d++)
            buf[k++] = (char)('0' + (r >> (d * 3 % 60)) % 10);
        if (buf[1] == '0')
            buf[1] = '1';
        snprintf(buf + k, sizeof buf - (size_t)k, "e%d", exp);
        same_as_strtod(buf + (i & 1));
        /* fixed notation with 0 to 20 fraction digits */
        snprintf(buf, sizeof buf, "%.*f", (int)(r >> 40) % 21, v / 1e300 * (double)(r >> 44));
        same_as_strtod(buf);
    }
}

Test(values, ip_addresses)
{
    cr_expect(ip("10.0.0.1", "10.0.0.1"));
    cr_expect(ip("10.0.0.001", "10.0.0.1"));
    cr_expect(ip("255.255.255.255", "255.255.255.255"));
    cr_expect(ip("256.0.0.1", NULL));
    cr_expect(ip("1.2.3", NULL));
    cr_expect(ip("1.2.3.4.5", NULL));
    cr_expect(ip("1.2.3.0004", NULL));
    cr_expect(ip("::1", "::1"));
    cr_expect(ip("0:0:0:0:0:0:0:1", "::1"));
    cr_expect(ip("2001:DB8::1", "2001:db8::1"));
    cr_expect(ip("::ffff:10.0.0.1", "10.0.0.1"));
    cr_expect(ip("::ffff:a00:1", "10.0.0.1"));
    cr_expect(ip("1::2::3", NULL));
    cr_expect(ip("12345::", NULL));
    cr_expect(ip("1:2:3:4:5:6:7:8:9", NULL));
    cr_expect(ip(":1", NULL));
    cr_expect(ip("", NULL));
}

Test(values, wildcards)
{
    cr_expect(vm_wildcard_match("a*b", 3, "axxb", 4));
    cr_expect(vm_wildcard_match("a*b", 3, "ab", 2));
    cr_expect(!vm_wildcard_match("a*b", 3, "abc", 3));
    cr_expect(vm_wildcard_match("*", 1, "", 0));
    cr_expect(vm_wildcard_match("a\\*b", 4, "a*b", 3));
    cr_expect(!vm_wildcard_match("a\\*b", 4, "axb", 3));
    cr_expect(vm_wildcard_match("a\\\\b", 4, "a\\b", 3));
    cr_expect(vm_wildcard_match("*a*a*a*", 7, "aaaa", 4));
    cr_expect(!vm_wildcard_match("*a*a*a*b", 8, "aaaaaaaaaaaa", 12));
}

Test(scan, escaped_keys_and_values_are_decoded)
{
    vm_program *p = compile("bus b\nrule r on b { match source == \"ab\" }\n");
    vm_error err;
    const char *evs[] = { "{\"\\u0073ource\": \"a\\u0062\"}", "{\"source\": \"\\u0061b\"}",
                          "{\"sourc\\u0065\": \"ac\"}" };
    cr_expect_eq(matches(p, evs[0], strlen(evs[0]), &err), 1);
    cr_expect_eq(matches(p, evs[1], strlen(evs[1]), &err), 1);
    cr_expect_eq(matches(p, evs[2], strlen(evs[2]), &err), 0);
    vm_program_free(p);
}

Test(scan, invalid_utf8_is_an_invalid_event)
{
    vm_program *p = compile("bus b\nrule r on b { match not exists x }\n");
    vm_error err;
    const char overlong[] = "{\"a\": \"\xc0\xaf\"}";
    cr_expect_eq(matches(p, overlong, sizeof overlong - 1, &err), -1);
    cr_expect(strstr(err.msg, "invalid UTF-8"), "%s", err.msg);
    const char surrogate[] = "{\"a\": \"\xed\xa0\x80\"}";
    cr_expect_eq(matches(p, surrogate, sizeof surrogate - 1, &err), -1);
    const char cut[] = "{\"a\": \"\xe2\x82\"}";
    cr_expect_eq(matches(p, cut, sizeof cut - 1, &err), -1);
    const char fine[] = "{\"a\": \"\xe2\x82\xac\"}";
    cr_expect_eq(matches(p, fine, sizeof fine - 1, &err), 1);
    const char nul[] = "{\"a\": \"x\0y\"}";
    cr_expect_eq(matches(p, nul, sizeof nul - 1, &err), -1);
    vm_program_free(p);
}

/* {"a": [[...]]}: `levels` containers in all (the top object included), or nested objects
 * {"a": {"a": ...}} when objects is set. */
static char *nested(int levels, bool objects, size_t *len)
{
    char *ev = malloc((size_t)levels * 6 + 16);
    size_t n = 0;
    for (int i = 0; i < levels; i++)
        n += (size_t)sprintf(ev + n, i == 0 || objects ? "{\"a\":" : "[");
    n += (size_t)sprintf(ev + n, "1");
    for (int i = levels - 1; i >= 0; i--)
        ev[n++] = i == 0 || objects ? '}' : ']';
    *len = n;
    return ev;
}

Test(scan, nesting_is_limited_where_ingest_limits_it)
{
    /* The scanner reads every event that vm_json_check (the daemon's ingest) accepts: the same
     * VM_MAX_DEPTH levels, through the SIMD scanner and byte by byte. */
    vm_program *p = compile("bus b\nrule r on b { match not exists x }\n");
    static const vm_options engines[] = { { .no_simd = false }, { .no_simd = true } };
    for (int objects = 0; objects < 2; objects++)
        for (int e = 0; e < 2; e++) {
            size_t n;
            char *ev = nested(VM_MAX_DEPTH, objects, &n);
            vm_ctx *c = vm_ctx_new(p, &engines[e]);
            const uint32_t *r;
            size_t nr;
            vm_error err;
            cr_expect(vm_json_valid(ev, n, NULL));
            cr_expect_eq(vm_match(c, VM_NONE, ev, n, &r, &nr, &err), VM_OK, "%s", err.msg);
            cr_expect_eq(nr, 1);
            free(ev);
            ev = nested(VM_MAX_DEPTH + 1, objects, &n);
            cr_expect_not(vm_json_valid(ev, n, NULL));
            cr_expect_eq(vm_match(c, VM_NONE, ev, n, &r, &nr, &err), VM_ERR_LIMIT);
            cr_expect(strstr(err.msg, "nested too deeply"), "%s", err.msg);
            vm_ctx_free(c);
            free(ev);
        }
    vm_program_free(p);
}

Test(scan, an_event_a_thousand_levels_deep_is_matched)
{
    /* The event: an id, 1,000 levels of arrays around data.deep's leaves (a path's arrays are
     * implicit), and objects as deep as a rule's path goes (64 segments).  Every engine matches
     * every rule. */
    vm_program *p = compile("bus b\n"
                            "rule any on b { match exists id }\n"
                            "rule deep on b { match data.deep == 7 and data.deep == 8 }\n"
                            "rule long on b { match data.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o"
                            ".o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.o.v "
                            "== \"end\" }\n");
    buf b = { 0 };
    put(&b, "{\"id\": \"x\", \"data\": {\"o\": ");
    for (int i = 0; i < 61; i++)
        put(&b, "{\"o\": ");
    put(&b, "{\"v\": \"end\"}");
    for (int i = 0; i < 61; i++)
        put(&b, "}");
    put(&b, ", \"deep\": ");
    for (int i = 0; i < 997; i++)
        put(&b, "[");
    put(&b, "7, 8, [8]");
    for (int i = 0; i < 997; i++)
        put(&b, "]");
    put(&b, "}}");
    cr_assert(vm_json_valid(b.s, b.n, NULL));
    for (int k = 0; k < 4; k++) {
        vm_options opt = { .reference = k & 1, .no_simd = k >= 2 };
        vm_ctx *c = vm_ctx_new(p, &opt);
        const uint32_t *r;
        size_t n;
        vm_error err;
        cr_expect_eq(vm_match(c, VM_NONE, b.s, b.n, &r, &n, &err), VM_OK, "options %d: %s", k, err.msg);
        cr_expect_eq(n, 3, "options %d", k);
        vm_ctx_free(c);
    }
    free(b.s);
    vm_program_free(p);
}

Test(scan, errors_give_the_byte_offset)
{
    vm_program *p = compile("bus b\nrule r on b { match source == \"a\" }\n");
    vm_error err;
    const char ev[] = "{\"source\": \"a\", \"x\": [1, 2,, 3]}";
    cr_expect_eq(matches(p, ev, sizeof ev - 1, &err), -1);
    cr_expect_eq(err.offset, 27);
    cr_expect_eq(err.code, VM_ERR_EVENT);
    cr_expect_eq(matches(p, "", 0, &err), -1);
    cr_expect_eq(matches(p, "   ", 3, &err), -1);
    cr_expect_eq(matches(p, "{} {}", 5, &err), -1);
    vm_program_free(p);
}

Test(vm, rules_of_one_bus)
{
    vm_program *p = compile("bus a\nbus b\nrule ra on a { match exists x }\nrule rb on b { match exists x }\n");
    vm_ctx *c = vm_ctx_new(p, NULL);
    const uint32_t *r;
    size_t n;
    vm_error err;
    cr_assert_eq(vm_match(c, 1, "{\"x\": 1}", 8, &r, &n, &err), VM_OK);
    cr_assert_eq(n, 1);
    cr_expect_eq(r[0], 1);
    cr_assert_eq(vm_match(c, VM_NONE, "{\"x\": 1}", 8, &r, &n, &err), VM_OK);
    cr_expect_eq(n, 2);
    vm_ctx_free(c);
    vm_program_free(p);
}

Test(vm, a_context_is_reused_across_events)
{
    vm_program *p = compile("bus b\nrule r on b { match data.items[].a == 1 and data.items[].b == 2 }\n");
    vm_ctx *c = vm_ctx_new(p, NULL);
    const uint32_t *r;
    size_t n;
    vm_error err;
    const char *yes = "{\"data\": {\"items\": [{\"a\": 1, \"b\": 3}, {\"a\": 1, \"b\": 2}]}}";
    const char *no = "{\"data\": {\"items\": [{\"a\": 1, \"b\": 3}, {\"a\": 0, \"b\": 2}]}}";
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(vm_match(c, VM_NONE, yes, strlen(yes), &r, &n, &err), VM_OK);
        cr_assert_eq(n, 1);
        cr_assert_eq(vm_match(c, VM_NONE, no, strlen(no), &r, &n, &err), VM_OK);
        cr_assert_eq(n, 0);
        cr_assert_eq(vm_match(c, VM_NONE, "{", 1, &r, &n, &err), VM_ERR_EVENT);
    }
    vm_ctx_free(c);
    vm_program_free(p);
}

Test(vm, the_slow_quamina_regexps_compile_fast_and_match)
{
    vm_program *p = compile(
        "bus b\n"
        "rule r on b { pattern {\"a\": [{\"regexp\": \"P~p{Nd}{4}Y~p{Nd}{2}M\"}]} }\n"
        "rule d on b { pattern {\"a\": [{\"regexp\": \"~p{Nd}{4}-~p{Nd}{2}-~p{Nd}{2}\"}]} }\n");
    vm_error err;
    cr_expect_eq(matches(p, "{\"a\": \"P2026Y11M\"}", 18, &err), 1);
    cr_expect_eq(matches(p, "{\"a\": \"2026-11-26\"}", 19, &err), 1);
    cr_expect_eq(matches(p, "{\"a\": \"P2026Y1M\"}", 17, &err), 0);
    vm_program_free(p);
}

Test(vm, regex_matching_is_linear)
{
    /* (a|a)*b against a long run of a's backtracks exponentially in a naive engine. */
    vm_program *p = compile("bus b\nrule r on b { match data.s matches /(a|aa)*(a|aa)*b/ }\n");
    size_t n = 20000;
    char *ev = malloc(n + 32);
    size_t k = (size_t)sprintf(ev, "{\"data\": {\"s\": \"");
    memset(ev + k, 'a', n);
    k += n;
    k += (size_t)sprintf(ev + k, "\"}}");
    vm_error err;
    cr_expect_eq(matches(p, ev, k, &err), 0);
    free(ev);
    vm_program_free(p);
}

/* Builds {"data": {"<name>": [{"x": 1}, ...n times], ..., "z": 4}} for the given array names. */
static char *arrays_event(const char *const *names, int narrays, int n, size_t *len)
{
    char *ev = malloc((size_t)(narrays * n * 24 + 256));   /* an element is 20 bytes */
    size_t k = (size_t)sprintf(ev, "{\"data\": {");
    for (int a = 0; a < narrays; a++) {
        k += (size_t)sprintf(ev + k, "\"%s\": [", names[a]);
        for (int i = 0; i < n; i++)
            k += (size_t)sprintf(ev + k, "%s{\"x\": 1, \"y\": 1}", i ? ", " : "");
        k += (size_t)sprintf(ev + k, "], ");
    }
    k += (size_t)sprintf(ev + k, "\"z\": 4}}");
    *len = k;
    return ev;
}

Test(vm, independent_arrays_do_not_multiply_the_work, .timeout = 10)
{
    /* Each array is looked at by one condition only: its choice cannot matter to the others,
     * so the failing last condition ends the rule at once rather than after 300^3 tries. */
    vm_program *p = compile("bus b\nrule r on b { match data.a[].x == 1 and data.b[].x == 1 "
                            "and data.c[].x == 1 and data.z == 5 }\n");
    static const char *const names[] = { "a", "b", "c" };
    size_t len;
    char *ev = arrays_event(names, 3, 300, &len);
    /* A budget of 100,000 steps is ample for 900 fields, and far too small for 300^3 tries. */
    vm_options opt = { .max_steps = 100000 };
    vm_ctx *c = vm_ctx_new(p, &opt);
    const uint32_t *r;
    size_t n;
    vm_error err;
    cr_expect_eq(vm_match(c, VM_NONE, ev, len, &r, &n, &err), VM_OK, "%s", err.msg);
    cr_expect_eq(n, 0);
    vm_ctx_free(c);
    free(ev);
    vm_program_free(p);
}

/* CRC32C: the check value of the standard ("123456789" -> e3069283), and the crc32-instruction
 * path (three streams joined by shifts, then 8 bytes and 1 at a time) equal to the table path on
 * every length around its runs' sizes, at every alignment, continuing a CRC as well as starting
 * one. */
Test(vm, crc32c_paths_agree)
{
    cr_assert_eq(vm_crc32c(0, "123456789", 9), 0xE3069283u);
    cr_assert_eq(vm_crc32c_sw(0, "123456789", 9), 0xE3069283u);
    static unsigned char b[2100];
    uint64_t r = 0x5DEECE66Dull;
    for (size_t i = 0; i < sizeof b; i++)
        b[i] = (unsigned char)gen_rnd(&r, 256);
    for (size_t len = 0; len <= 2000; len += len < 600 ? 1 : 37)
        for (size_t at = 0; at < 8; at++) {
            uint32_t seed = at & 1 ? 0 : (uint32_t)gen_rnd(&r, 0xFFFFFFFFu);
            uint32_t hw = vm_crc32c(seed, b + at, len), sw = vm_crc32c_sw(seed, b + at, len);
            cr_assert_eq(hw, sw, "length %zu at %zu from %08x: %08x, the table path %08x", len, at,
                         seed, hw, sw);
        }
    /* Split anywhere, a CRC continued is the CRC of the whole. */
    for (size_t cut = 0; cut <= 1000; cut += 7)
        cr_assert_eq(vm_crc32c(vm_crc32c(0, b, cut), b + cut, 1000 - cut), vm_crc32c(0, b, 1000));
}
