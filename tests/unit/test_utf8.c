/*
 * test_utf8.c — unit tests of vm/utf8.c (strict decoding, encoding, case folding of text), the
 * generated simple case folding table (vm/unicode_fold.c) and the strict JSON check
 * (vm/json_check.c: what it refuses, where, and why).
 */
#include <criterion/criterion.h>
#include <string.h>

#include "../../vm/vm.h"

/* Returns vm_utf8_decode's length for the bytes s[0..n), storing the code point in *cp. */
static size_t dec(const char *s, size_t n, uint32_t *cp)
{
    *cp = 0xFFFFFFFFu;
    return vm_utf8_decode(s, n, cp);
}

Test(utf8, decodes_well_formed)
{
    uint32_t cp;
    cr_assert_eq(dec("A", 1, &cp), 1);
    cr_assert_eq(cp, 'A');
    cr_assert_eq(dec("\0", 1, &cp), 1);
    cr_assert_eq(cp, 0);
    cr_assert_eq(dec("\xc2\x80", 2, &cp), 2);
    cr_assert_eq(cp, 0x80);
    cr_assert_eq(dec("\xed\x9f\xbf", 3, &cp), 3);
    cr_assert_eq(cp, 0xD7FF);
    cr_assert_eq(dec("\xee\x80\x80", 3, &cp), 3);
    cr_assert_eq(cp, 0xE000);
    cr_assert_eq(dec("\xef\xbf\xbf", 3, &cp), 3);
    cr_assert_eq(cp, 0xFFFF);
    cr_assert_eq(dec("\xf0\x90\x80\x80", 4, &cp), 4);
    cr_assert_eq(cp, 0x10000);
    cr_assert_eq(dec("\xf4\x8f\xbf\xbf", 4, &cp), 4);
    cr_assert_eq(cp, 0x10FFFF);
    cr_assert_eq(dec("\xc3\xa9xyz", 5, &cp), 2, "stops after one code point");
}

Test(utf8, rejects_ill_formed)
{
    static const struct { const char *s; size_t n; } bad[] = {
        { "", 0 },                      /* nothing */
        { "\x80", 1 },                  /* stray continuation */
        { "\xbf", 1 },
        { "\xc0\x80", 2 },              /* overlong NUL */
        { "\xc1\xbf", 2 },              /* overlong */
        { "\xe0\x80\x80", 3 },          /* overlong */
        { "\xe0\x9f\xbf", 3 },          /* overlong U+07FF */
        { "\xf0\x8f\xbf\xbf", 4 },      /* overlong U+FFFF */
        { "\xed\xa0\x80", 3 },          /* surrogate D800 */
        { "\xed\xbf\xbf", 3 },          /* surrogate DFFF */
        { "\xf4\x90\x80\x80", 4 },      /* U+110000 */
        { "\xf5\x80\x80\x80", 4 },
        { "\xff", 1 },
        { "\xc3", 1 },                  /* truncated */
        { "\xe2\x82", 2 },
        { "\xf0\x9f\x98", 3 },
        { "\xc3\x28", 2 },              /* bad continuation */
        { "\xe2\x28\xa1", 3 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint32_t cp;
        cr_assert_eq(vm_utf8_decode(bad[i].s, bad[i].n, &cp), 0, "case %zu", i);
    }
}

Test(utf8, encode_round_trips)
{
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        char buf[4];
        size_t n = vm_utf8_encode(cp, buf);
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            cr_assert_eq(n, 0);
            continue;
        }
        cr_assert_eq(n, cp < 0x80 ? 1u : cp < 0x800 ? 2u : cp < 0x10000 ? 3u : 4u);
        uint32_t back;
        cr_assert_eq(vm_utf8_decode(buf, n, &back), n);
        cr_assert_eq(back, cp);
    }
    char buf[4];
    cr_assert_eq(vm_utf8_encode(0x110000, buf), 0);
}

Test(utf8, casefold_code_points)
{
    cr_assert_eq(vm_casefold('A'), 'a');
    cr_assert_eq(vm_casefold('z'), 'z');
    cr_assert_eq(vm_casefold('@'), '@');
    cr_assert_eq(vm_casefold(0xC0), 0xE0);      /* À */
    cr_assert_eq(vm_casefold(0xD7), 0xD7);      /* × has no case */
    cr_assert_eq(vm_casefold(0xB5), 0x3BC);     /* µ -> μ */
    cr_assert_eq(vm_casefold(0x100), 0x101);    /* Ā, an alternating run */
    cr_assert_eq(vm_casefold(0x101), 0x101);
    cr_assert_eq(vm_casefold(0x3A3), 0x3C3);    /* Σ */
    cr_assert_eq(vm_casefold(0x3C2), 0x3C3);    /* final ς folds to σ */
    cr_assert_eq(vm_casefold(0x212A), 'k');     /* Kelvin sign */
    cr_assert_eq(vm_casefold(0x1E9E), 0xDF);    /* ẞ -> ß (simple, status S) */
    cr_assert_eq(vm_casefold(0xDF), 0xDF);      /* ß only has a full (F) folding */
    cr_assert_eq(vm_casefold(0x130), 0x130);    /* İ only has F and T foldings */
    cr_assert_eq(vm_casefold(0x10400), 0x10428); /* Deseret */
    cr_assert_eq(vm_casefold(0x1E900), 0x1E922); /* Adlam */
    cr_assert_eq(vm_casefold(0x10FFFF), 0x10FFFF);
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        uint32_t f = vm_casefold(cp);
        cr_assert_eq(vm_casefold(f), f, "folding is idempotent (U+%04X)", (unsigned)cp);
    }
}

Test(utf8, casefold_text)
{
    char out[64];
    const char *s = "Hello ÀÉ ΣΑΣ \xe2\x84\xaa \xc8\xba";   /* Kelvin sign, U+023A */
    size_t n = vm_casefold_utf8(s, strlen(s), out);
    const char *want = "hello àé σασ k \xe2\xb1\xa5";          /* U+2C65 is one byte longer */
    cr_assert_eq(n, strlen(want));
    cr_assert(memcmp(out, want, n) == 0);
    n = vm_casefold_utf8("A\xff" "B\xc3", 4, out);
    cr_assert_eq(n, 4, "ill-formed bytes are copied");
    cr_assert(memcmp(out, "a\xff" "b\xc3", 4) == 0);
    cr_assert_eq(vm_casefold_utf8("", 0, out), 0);
}

/* Text folded a word at a time equals text folded a byte at a time: every ASCII byte, and
 * non-ASCII ones at each position (where the word-at-a-time part must stop). */
Test(utf8, casefold_ascii_words_fold_as_bytes)
{
    char in[160], out[480], want[480];
    for (int pos = -1; pos < 40; pos++) {
        for (int len = 0; len <= 40; len++) {
            for (int start = 0; start < 128; start++) {
                size_t n = 0;
                for (int k = 0; k < len; k++) {
                    if (k == pos) {
                        memcpy(in + n, "\xc3\x80", 2);   /* À */
                        n += 2;
                    } else {
                        in[n++] = (char)((start + k * 7) % 128);
                    }
                }
                /* the reference: each ASCII byte folded alone; À folds to à */
                size_t w = 0;
                for (size_t k = 0; k < n; k++) {
                    unsigned char b = (unsigned char)in[k];
                    if (b >= 0x80) {
                        memcpy(want + w, "\xc3\xa0", 2);
                        w += 2;
                        k++;
                    } else {
                        want[w++] = (char)vm_casefold(b);
                    }
                }
                size_t got = vm_casefold_utf8(in, n, out);
                cr_assert_eq(got, w, "length, %d bytes, À at %d", len, pos);
                cr_assert(memcmp(out, want, w) == 0, "%d bytes, À at %d, from %d", len, pos,
                          start);
            }
        }
    }
}

Test(utf8, casefold_never_more_than_triples)
{
    size_t most = 0;
    for (uint32_t cp = 0x80; cp <= 0x10FFFF; cp++) {
        char in[4], out[12];
        size_t n = vm_utf8_encode(cp, in);
        if (n == 0)
            continue;
        size_t k = vm_casefold_utf8(in, n, out);
        cr_assert_leq(k, 3 * n, "U+%04X folds to %zu bytes", cp, k);
        if (k * 100 / n > most)
            most = k * 100 / n;
    }
    cr_expect_eq(most, 300, "the bound is tight: U+0390 folds to three 2-byte code points");
}

Test(utf8, full_case_folding)
{
    char out[64];
    const char *s = "Stra\xc3\x9f" "e \xef\xac\x81 \xe1\xba\x9e";   /* Straße, U+FB01 fi ligature, U+1E9E */
    size_t n = vm_casefold_utf8(s, strlen(s), out);
    cr_assert_eq(n, strlen("strasse fi ss"));
    cr_assert(memcmp(out, "strasse fi ss", n) == 0);
}

/* ---- vm_json_check / vm_json_valid: RFC 8259, strictly ------------------------------------- */

Test(json_valid, takes_every_kind_of_value_with_white_space_around)
{
    const char *good[] = { "0", "-0", "1.5e-3", "-12E+4", "\"\"", "\"a\\u00e9\\n\\/\"", "\"\xc3\xa9\"",
                           "true", "false", "null", "[]", "{}", " [1, [2, {\"a\": [null]}]] \n",
                           "{\"a\": 1, \"b\": {\"c\": []}}", "\"\\ud800\"" };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        cr_expect(vm_json_valid(good[i], strlen(good[i]), NULL), "refused %s", good[i]);
}

Test(json_valid, refuses_what_a_lenient_parser_takes)
{
    const char *bad[] = { "", " ", "01", "1.", ".5", "+1", "1e", "--1", "[1,]", "{\"a\":1,}", "[1 2]",
                          "{\"a\" 1}", "{a: 1}", "'a'", "\"a", "\"\x01\"", "\"\xff\"", "\"\xc0\xaf\"",
                          "\"\\x\"", "\"\\u12\"", "nul", "truex", "[1]]", "{} {}", "[", "NaN", "Infinity" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t at = 999;
        cr_expect(!vm_json_valid(bad[i], strlen(bad[i]), &at), "took %s", bad[i]);
        cr_expect_leq(at, strlen(bad[i]));
    }
}

Test(json_valid, bounds_nesting)
{
    char deep[3000];
    memset(deep, '[', 1500);
    memset(deep + 1500, ']', 1500);
    cr_expect(!vm_json_valid(deep, 3000, NULL), "nesting deeper than 1024 is refused");
    cr_expect(vm_json_valid(deep + 500, 2000, NULL), "1000 levels are fine");
}

Test(json_check, says_what_is_wrong_and_where)
{
    static const struct { const char *text; size_t at; const char *why; } cases[] = {
        { "", 0, "unexpected end: expected a value" },
        { "  \n", 3, "unexpected end: expected a value" },
        { "{\"a\":1,}", 7, "trailing comma in object" },
        { "[1, 2,]", 6, "trailing comma in array" },
        { "{\"a\" 1}", 5, "expected ':' after an object key" },
        { "{a: 1}", 1, "expected a string key or '}' in object" },
        { "{\"a\":1, 2}", 8, "expected a string key in object" },
        { "{\"a\":1 \"b\":2}", 7, "expected ',' or '}' in object" },
        { "[1 2]", 3, "expected ',' or ']' in array" },
        { "{\"a\": \"bc", 6, "unterminated string" },
        { "\"a\\", 0, "unterminated string" },
        { "[\"\xff\"]", 2, "invalid UTF-8 in string" },
        { "\"\xc0\xaf\"", 1, "invalid UTF-8 in string" },
        { "\"ab\tc\"", 3, "control character in string (it must be escaped)" },
        { "\"a\\x\"", 2, "invalid escape in string" },
        { "\"\\u12\"", 1, "invalid \\u escape in string" },
        { "01", 0, "invalid number: leading zeros are not allowed" },
        { "[1.]", 1, "invalid number: digits must follow '.'" },
        { "{\"n\": -1e}", 6, "invalid number: digits must follow the exponent" },
        { "-", 0, "invalid number" },
        { "[nul]", 1, "invalid literal (expected true, false or null)" },
        { "{\"a\": 'b'}", 6, "unexpected character: expected a value" },
        { "{} {}", 3, "unexpected text after the JSON value" },
        { "truex", 4, "unexpected text after the JSON value" },
        { "[", 1, "unexpected end: expected a value" },
        { "{\"a\":", 5, "unexpected end: expected a value" },
        { "{", 1, "unexpected end: expected a string key or '}' in object" },
        { "{\"a\":1,", 7, "unexpected end: expected a string key in object" },
        { "{\"a\":1", 6, "unexpected end: expected ',' or '}' in object" },
        { "[1", 2, "unexpected end: expected ',' or ']' in array" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t at = 999;
        const char *why = NULL;
        cr_expect(!vm_json_check(cases[i].text, strlen(cases[i].text), &at, &why), "took %s",
                  cases[i].text);
        cr_expect_eq(at, cases[i].at, "%s: at byte %zu, expected %zu", cases[i].text, at, cases[i].at);
        cr_expect_str_eq(why ? why : "(none)", cases[i].why, "%s", cases[i].text);
        size_t valid_at = 999;
        cr_expect(!vm_json_valid(cases[i].text, strlen(cases[i].text), &valid_at));
        cr_expect_eq(valid_at, at, "vm_json_valid and vm_json_check differ on %s", cases[i].text);
    }
    char deep[1100];
    memset(deep, '[', sizeof deep);
    size_t at;
    const char *why;
    cr_expect(!vm_json_check(deep, sizeof deep, &at, &why));
    cr_expect_eq(at, 1024);
    cr_expect_str_eq(why, "nesting deeper than 1024 levels");
    const char *good = "{\"a\": [1, {\"b\": null}]}";
    cr_expect(vm_json_check(good, strlen(good), NULL, NULL), "a valid text needs neither");
}
