/*
 * test_regex.c — unit tests of the I-Regexp compiler (compiler/regex.c) and matcher
 * (vm/regex.c): syntax, classes, categories, quantifiers, both escape modes, error messages
 * with their positions, limits and compile speed.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../compiler/regex.h"

/* Compiles pat with escape esc into a fresh buffer.  Returns 0, or -1 with *err filled. */
static int compile(const char *pat, char esc, re_buf *b, vm_regex *rx, re_error *err)
{
    *b = (re_buf){ 0 };
    return re_compile(b, pat, strlen(pat), esc, rx, err);
}

/* Runs compiled regex rx (in b) over s: builds a one-regex program and scratch for it. */
static bool run(const re_buf *b, vm_regex rx, const char *s, size_t n)
{
    vm_program p;
    memset(&p, 0, sizeof p);
    p.regexes = &rx;
    p.nregexes = 1;
    p.re_insts = b->inst;
    p.nre_insts = (uint32_t)b->ninst;
    p.re_ranges = b->ranges;
    p.nre_ranges = (uint32_t)b->nranges;
    void *scratch = malloc(vm_regex_scratch_size(&p, 0));
    cr_assert(scratch != NULL);
    bool m = vm_regex_match(&p, 0, s, n, scratch);
    free(scratch);
    return m;
}

/* Returns whether pat (escape esc) matches all of s; fails the test if pat does not compile. */
static bool matches_esc(const char *pat, char esc, const char *s)
{
    re_buf b;
    vm_regex rx;
    re_error err;
    int rc = compile(pat, esc, &b, &rx, &err);
    cr_assert_eq(rc, 0, "pattern /%s/ refused: %s", pat, err.msg);
    bool m = run(&b, rx, s, strlen(s));
    re_buf_free(&b);
    return m;
}

static bool matches(const char *pat, const char *s)
{
    return matches_esc(pat, '~', s);
}

/* Asserts that pat (escape esc) is refused with exactly msg at byte pos. */
static void refused_esc(const char *pat, char esc, const char *msg, size_t pos)
{
    re_buf b;
    vm_regex rx;
    re_error err;
    memset(&err, 0, sizeof err);
    int rc = compile(pat, esc, &b, &rx, &err);
    cr_assert_eq(rc, -1, "pattern /%s/ should be refused", pat);
    cr_assert_str_eq(err.msg, msg, "pattern /%s/", pat);
    cr_assert_eq(err.pos, pos, "pattern /%s/: pos %zu, want %zu", pat, err.pos, pos);
    cr_assert_eq(b.ninst, 0);
    cr_assert_eq(b.nranges, 0);
    re_buf_free(&b);
}

static void refused(const char *pat, const char *msg, size_t pos)
{
    refused_esc(pat, '~', msg, pos);
}

Test(regex, literals_and_anchoring)
{
    cr_assert(matches("", ""));
    cr_assert_not(matches("", "a"));
    cr_assert(matches("abc", "abc"));
    cr_assert_not(matches("abc", "abcd"));
    cr_assert_not(matches("abc", "xabc"));
    cr_assert_not(matches("abc", "ab"));
    cr_assert(matches("^a$", "^a$"), "^ and $ are ordinary characters");
    cr_assert(matches("é€😀", "é€😀"));
    cr_assert_not(matches("é", "e"));
    cr_assert(matches("a,b-c", "a,b-c"));
}

Test(regex, alternation_and_groups)
{
    cr_assert(matches("a|bc|d", "bc"));
    cr_assert(matches("a|bc|d", "d"));
    cr_assert_not(matches("a|bc|d", "b"));
    cr_assert(matches("|", ""));
    cr_assert(matches("a|", ""));
    cr_assert(matches("x(a|b)y", "xby"));
    cr_assert(matches("(((a)))", "a"));
    cr_assert(matches("()", ""));
    cr_assert(matches("(a|b)(c|d)", "bc"));
    cr_assert_not(matches("(a|b)(c|d)", "ab"));
}

Test(regex, dot)
{
    cr_assert(matches(".", "a"));
    cr_assert(matches(".", "😀"), "one code point, four bytes");
    cr_assert(matches(".", "\t"));
    cr_assert(matches(".", "\xe2\x80\xa8"), "U+2028 is not excluded");
    cr_assert_not(matches(".", "\n"));
    cr_assert_not(matches(".", "\r"));
    cr_assert_not(matches(".", ""));
    cr_assert_not(matches(".", "ab"));
    cr_assert(matches("a.*z", "a\xc3\xa9\xe2\x82\xac z"));
}

Test(regex, quantifiers)
{
    cr_assert(matches("ab*c", "ac"));
    cr_assert(matches("ab*c", "abbbc"));
    cr_assert_not(matches("ab+c", "ac"));
    cr_assert(matches("ab+c", "abbc"));
    cr_assert(matches("ab?c", "ac"));
    cr_assert_not(matches("ab?c", "abbc"));
    cr_assert(matches("a{3}", "aaa"));
    cr_assert_not(matches("a{3}", "aa"));
    cr_assert_not(matches("a{3}", "aaaa"));
    cr_assert(matches("a{2,}", "aaaaa"));
    cr_assert_not(matches("a{2,}", "a"));
    cr_assert(matches("a{2,4}", "aaaa"));
    cr_assert_not(matches("a{2,4}", "aaaaa"));
    cr_assert(matches("a{0}", ""));
    cr_assert_not(matches("a{0}", "a"));
    cr_assert(matches("a{0,0}b", "b"));
    cr_assert(matches("a{1,1}", "a"));
    cr_assert(matches("(ab){2,3}", "ababab"));
    cr_assert_not(matches("(ab){2,3}", "abababab"));
    cr_assert(matches("((ab){2})?", ""));
    cr_assert(matches("(a{2})*", "aaaa"));
    cr_assert_not(matches("(a{2})*", "aaa"));
    cr_assert(matches("(a|b{2}){2,}", "abba"));
    cr_assert(matches("x{0,}y", "xxxy"));
    cr_assert(matches("a{007}", "aaaaaaa"));
}

Test(regex, empty_loops_terminate)
{
    cr_assert(matches("()*", ""));
    cr_assert(matches("(a*)*", "aaa"));
    cr_assert(matches("(a*)+b", "aab"));
    cr_assert(matches("(|a)+", "aa"));
    cr_assert(matches("(){3,}", ""));
    cr_assert(matches("(a?){5}", "aa"));
    cr_assert_not(matches("(a*)*", "b"));
}

Test(regex, linear_time_on_pathological_input)
{
    static char s[30002];
    memset(s, 'a', 30000);
    s[30000] = 'b';
    clock_t t0 = clock();
    cr_assert_not(matches("(a*)*c", s));
    cr_assert_not(matches("(a|a)*(a|aa)*c", s));
    cr_assert(matches("(.*a){20}b", s));
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    cr_assert(secs < 2.0, "took %.2f s", secs);
}

Test(regex, classes)
{
    cr_assert(matches("[abc]+", "cab"));
    cr_assert_not(matches("[abc]", "d"));
    cr_assert(matches("[a-z0-9]+", "a0z9"));
    cr_assert_not(matches("[a-z]", "A"));
    cr_assert(matches("[a-a]", "a"));
    cr_assert(matches("[^a-z]", "A"));
    cr_assert_not(matches("[^a-z]", "q"));
    cr_assert(matches("[^a]", "\n"), "a negated class contains newlines");
    cr_assert(matches("[^a]", "😀"));
    cr_assert(matches("[-a]+", "a-"));
    cr_assert(matches("[a-]+", "a-"));
    cr_assert(matches("[-]", "-"));
    cr_assert(matches("[--]", "-"));
    cr_assert(matches("[^-]", "x"));
    cr_assert_not(matches("[^-]", "-"));
    cr_assert(matches("[a^]+", "^a"));
    cr_assert(matches("[^^]", "a"));
    cr_assert_not(matches("[^^]", "^"));
    cr_assert(matches("[a-e - m-p]+", "a e m"), "' - ' is a range of one space");
    cr_assert_not(matches("[a-e - m-p]", "-"));
    cr_assert(matches("[a-abc]{3}", "abc"));
    cr_assert(matches("[1-~]]+", "1]"));
    cr_assert(matches("[(a~?)?]+", "a?)("));
    cr_assert(matches("[é-ë]", "ê"));
    cr_assert(matches("[😀-🙏]", "🙂"));
    cr_assert(matches("[.*+?{}()|$]+", ".*+?{}()|$"), "metacharacters are plain in a class");
}

Test(regex, class_escapes)
{
    cr_assert(matches("[~n~r~t]+", "\n\r\t"));
    cr_assert(matches("[~-~[~]~^~~~.~*]+", "-[]^~.*"));
    cr_assert(matches("[~--~.]+", "-."), "escaped range ends");
    cr_assert(matches("[a-~}]+", "a}"));
    cr_assert(matches("[~p{Lu}~p{Nd}]+", "A1Ω٣"));
    cr_assert_not(matches("[~p{Lu}~p{Nd}]", "a"));
    cr_assert(matches("[^~p{L}]", "1"));
    cr_assert_not(matches("[^~p{L}]", "ж"));
    cr_assert(matches("[~P{L}a]+", "1a"), "\\P inside a class is its complement");
    cr_assert_not(matches("[~P{L}a]", "b"));
    cr_assert(matches("[~P{L}~p{L}]", "x"));
    cr_assert_not(matches("[^~P{L}~p{L}]", "x"), "the empty class matches nothing");
    cr_assert(matches("[~p{L}-]+", "a-"));
}

Test(regex, categories)
{
    cr_assert(matches("~p{L}+", "aZжΩ中"));
    cr_assert_not(matches("~p{L}", "1"));
    cr_assert(matches("~p{Lu}", "A"));
    cr_assert_not(matches("~p{Lu}", "a"));
    cr_assert(matches("~p{Ll}", "a"));
    cr_assert(matches("~p{Lt}", "ǅ"));
    cr_assert(matches("~p{Nd}+", "0123456789٠٩"));
    cr_assert_not(matches("~p{Nd}", "Ⅳ"));
    cr_assert(matches("~p{Nl}", "Ⅳ"));
    cr_assert(matches("~p{No}", "²"));
    cr_assert(matches("~p{P}+", ".,!?"));
    cr_assert(matches("~p{Pd}", "-"));
    cr_assert(matches("~p{Ps}~p{Pe}", "()"));
    cr_assert(matches("~p{Pi}~p{Pf}", "«»"));
    cr_assert(matches("~p{Zs}", " "));
    cr_assert(matches("~p{Zl}~p{Zp}", "\xe2\x80\xa8\xe2\x80\xa9"));
    cr_assert(matches("~p{Sm}~p{Sc}~p{Sk}~p{So}", "+$^©"));
    cr_assert(matches("~p{Cc}", "\n"));
    cr_assert(matches("~p{Cf}", "\xc2\xad"));
    cr_assert(matches("~p{Co}", "\xee\x80\x80"));
    cr_assert(matches("~p{Cn}", "\xcd\xb8"), "U+0378 is unassigned");
    cr_assert(matches("~p{C}", "\xcd\xb8"));
    cr_assert_not(matches("~p{Cn}", "a"));
    cr_assert(matches("~p{M}~p{Mn}", "\xcc\x81\xcc\x81"));
    cr_assert(matches("~P{L}+", "1 !"));
    cr_assert_not(matches("~P{L}", "a"));
    cr_assert(matches("~P{Cn}", "a"));
    cr_assert(matches("~P{Nd}{2}", "ab"));
}

Test(regex, every_category_name_compiles)
{
    static const char *const names[] = {
        "L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
        "P", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Z", "Zs", "Zl", "Zp",
        "S", "Sm", "Sc", "Sk", "So", "C", "Cc", "Cf", "Cn", "Co",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const vm_range *r;
        size_t n;
        cr_assert(uc_category(names[i], strlen(names[i]), &r, &n), "%s", names[i]);
        cr_assert_gt(n, 0);
        for (size_t k = 0; k < n; k++) {
            cr_assert_leq(r[k].lo, r[k].hi);
            cr_assert(k == 0 || r[k].lo > r[k - 1].hi + 1, "%s: sorted and merged", names[i]);
            cr_assert(r[k].hi < 0xD800 || r[k].lo > 0xDFFF, "%s: no surrogates", names[i]);
        }
        char pat[16];
        snprintf(pat, sizeof pat, "[~P{%s}]", names[i]);
        re_buf b;
        vm_regex rx;
        re_error err;
        cr_assert_eq(compile(pat, '~', &b, &rx, &err), 0, "%s: %s", pat, err.msg);
        re_buf_free(&b);
    }
    const vm_range *r;
    size_t n;
    cr_assert_not(uc_category("Cs", 2, &r, &n));
    cr_assert_not(uc_category("Lx", 2, &r, &n));
    cr_assert_not(uc_category("L\0", 2, &r, &n));
    cr_assert_not(uc_category("", 0, &r, &n));
    cr_assert_not(uc_category("IsBasicLatin", 12, &r, &n));
}

Test(regex, single_char_escapes_tilde_mode)
{
    cr_assert(matches("~.~~~?~*~+~{~}~[~]~(~)~|~-~^", ".~?*+{}[]()|-^"));
    cr_assert(matches("~n~r~t", "\n\r\t"));
    cr_assert(matches("a\\b", "a\\b"), "a backslash is an ordinary character");
    cr_assert(matches("[\\-~{]+", "\\^{"), "range from backslash to '{'");
    cr_assert(matches("~~t", "~t"));
    cr_assert_not(matches("~~t", "\t"));
}

Test(regex, single_char_escapes_backslash_mode)
{
    cr_assert(matches_esc("\\.\\\\\\?\\*\\+\\{\\}\\[\\]\\(\\)\\|\\-\\^", '\\', ".\\?*+{}[]()|-^"));
    cr_assert(matches_esc("\\n\\r\\t", '\\', "\n\r\t"));
    cr_assert(matches_esc("a~b", '\\', "a~b"), "a tilde is an ordinary character");
    cr_assert(matches_esc("~+", '\\', "~~~"));
    cr_assert(matches_esc("\\p{Nd}+\\.\\p{Nd}+", '\\', "3.14"));
    cr_assert(matches_esc("[\\p{Lu}\\-]+", '\\', "A-B"));
    cr_assert_not(matches_esc("\\P{Lu}", '\\', "A"));
    cr_assert(matches_esc("[^\\]]", '\\', "a"));
    refused_esc("\\d", '\\', "multiple-character escape \\d at 0", 0);
    refused_esc("a\\~", '\\', "invalid escape \\~ at 1", 1);
    refused_esc("a\\", '\\', "trailing escape character '\\' at 1", 1);
    refused_esc("~", '~', "trailing escape character '~' at 0", 0);
    refused_esc("~\\", '~', "invalid escape ~\\ at 0", 0);
}

Test(regex, quamina_slow_patterns_are_fast)
{
    static const char *const pats[] = { "P~p{Nd}{4}Y~p{Nd}{2}M", "~p{Nd}{4}-~p{Nd}{2}-~p{Nd}{2}" };
    clock_t t0 = clock();
    for (int i = 0; i < 1000; i++) {
        for (size_t k = 0; k < 2; k++) {
            re_buf b;
            vm_regex rx;
            re_error err;
            cr_assert_eq(compile(pats[k], '~', &b, &rx, &err), 0);
            re_buf_free(&b);
        }
    }
    double us = (double)(clock() - t0) / CLOCKS_PER_SEC * 1e6 / 2000;
    cr_assert(us < 200.0, "%.1f us per compile", us);
    cr_assert(matches(pats[0], "P1234Y12M"));
    cr_assert(matches(pats[0], "P٠١٢٣Y45M"), "any Nd digit");
    cr_assert_not(matches(pats[0], "P123Y12M"));
    cr_assert_not(matches(pats[0], "P1234Y12"));
    cr_assert_not(matches(pats[0], "P12345Y12M"));
    cr_assert(matches(pats[1], "2024-01-31"));
    cr_assert_not(matches(pats[1], "2024-1-31"));
    cr_assert_not(matches(pats[1], "2024-01-31T"));
}

Test(regex, appends_to_a_shared_buffer)
{
    re_buf b = { 0 };
    vm_regex r1, r2;
    re_error err;
    cr_assert_eq(re_compile(&b, "a+", 2, '~', &r1, &err), 0);
    size_t ninst = b.ninst, nranges = b.nranges;
    cr_assert_eq(re_compile(&b, "(b", 2, '~', &r2, &err), -1);
    cr_assert_eq(b.ninst, ninst, "nothing appended on error");
    cr_assert_eq(b.nranges, nranges);
    cr_assert_eq(re_compile(&b, "[bc]x", 5, '~', &r2, &err), 0);
    cr_assert_eq(r1.inst0, 0);
    cr_assert_eq(r2.inst0, r1.ninst);
    cr_assert_eq(b.ninst, r1.ninst + r2.ninst);
    vm_regex both[2] = { r1, r2 };
    vm_program p;
    memset(&p, 0, sizeof p);
    p.regexes = both;
    p.nregexes = 2;
    p.re_insts = b.inst;
    p.re_ranges = b.ranges;
    size_t sz = vm_regex_scratch_size(&p, 1);
    cr_assert_eq(sz, 2 * r2.ninst * sizeof(uint32_t) + r2.ninst);
    void *scratch = malloc(vm_regex_scratch_size(&p, 0) + sz);
    cr_assert(vm_regex_match(&p, 0, "aaa", 3, scratch));
    cr_assert_not(vm_regex_match(&p, 0, "cx", 2, scratch));
    cr_assert(vm_regex_match(&p, 1, "cx", 2, scratch));
    cr_assert_not(vm_regex_match(&p, 1, "aaa", 3, scratch));
    cr_assert_not(vm_regex_match(&p, 1, "c\xff", 2, scratch), "ill-formed text never matches");
    free(scratch);
    re_buf_free(&b);
}

Test(regex, errors_structure)
{
    refused("?a", "invalid character '?' at 0", 0);
    refused("a**", "invalid character '*' at 2", 2);
    refused("a{2}{3}", "invalid character '{' at 4", 4);
    refused("{1}a", "invalid character '{' at 0", 0);
    refused("a}", "invalid character '}' at 1", 1);
    refused("a]", "invalid character ']' at 1", 1);
    refused("(?:a)", "invalid character '?' at 1", 1);
    refused("(ab", "missing ')' at 3", 3);
    refused("((a)", "missing ')' at 4", 4);
    refused("(a))", "unbalanced ')' at 3", 3);
    refused(")", "unbalanced ')' at 0", 0);
    refused("a\xff", "invalid UTF-8 at 1", 1);
    refused("\xed\xa0\x80", "invalid UTF-8 at 0", 0);
}

Test(regex, errors_escapes)
{
    refused("~d", "multiple-character escape ~d at 0", 0);
    refused("ab~s", "multiple-character escape ~s at 2", 2);
    refused("[~w]", "multiple-character escape ~w at 1", 1);
    refused("~1", "invalid escape ~1 at 0", 0);
    refused("a~b", "invalid escape ~b at 1", 1);
    refused("~é", "invalid escape ~é at 0", 0);
    refused("a~", "trailing escape character '~' at 1", 1);
    refused("~p{IsBasicLatin}", "unknown property 'IsBasicLatin' at 3", 3);
    refused("[^~p{IsBasicLatin}]", "unknown property 'IsBasicLatin' at 5", 5);
    refused("~p{Lx}", "unknown property 'Lx' at 3", 3);
    refused("~p{}", "unknown property '' at 3", 3);
    refused("~p{L", "missing '}' after ~p{ at 4", 4);
    refused("~P", "expected '{' after ~P at 2", 2);
    refused("[~pL]", "expected '{' after ~p at 3", 3);
}

Test(regex, errors_classes)
{
    refused("[", "missing ']' at 1", 1);
    refused("[a-", "missing ']' at 3", 3);
    refused("[~]", "missing ']' at 3", 3);
    refused("[]", "empty character class at 0", 0);
    refused("x[^]", "empty character class at 1", 1);
    refused("[b-a]", "invalid range b-a at 1", 1);
    refused("[a-\\]", "invalid range a-\\ at 1", 1);
    refused("[~n-~t]", "invalid range U+000A-U+0009 at 1", 1);
    refused("[a-d-b]", "unescaped '-' in character class at 4", 4);
    refused("[a--b]", "unescaped '-' in character class at 3", 3);
    refused("[---]", "unescaped '-' in character class at 2", 2);
    refused("[~p{L}-a]", "unescaped '-' in character class at 6", 6);
    refused("[a-~p{L}]", "a category escape cannot end a range at 3", 3);
    refused("[a-d-[b-c]]", "unescaped '-' in character class at 4", 4);
    refused("[a[b]]", "unescaped '[' in character class at 2", 2);
    refused("[a-[]", "unescaped '[' in character class at 3", 3);
    refused("[[:alpha:]]", "unescaped '[' in character class at 1", 1);
}

Test(regex, errors_quantifiers)
{
    refused("a{2,1}", "invalid range quantifier {2,1}, top must not be less than bottom at 1", 1);
    refused("a{,2}", "invalid range quantifier, expecting digits at 2", 2);
    refused("a{", "invalid range quantifier, expecting digits at 2", 2);
    refused("a{1", "invalid range quantifier, expecting '}' at 3", 3);
    refused("a{1,x}", "invalid range quantifier, expecting digits at 4", 4);
    refused("a{1,2", "invalid range quantifier, expecting '}' at 5", 5);
    refused("a{100001}", "repetition count too large (limit 100000) at 2", 2);
}

Test(regex, limits)
{
    refused("a{100000}", "regular expression too large: more than 100000 instructions at 1", 1);
    refused("x(a{1000}){100}", "regular expression too large: more than 100000 instructions at 10",
            10);
    refused("(((a{100}){100}){100}){100}",
            "regular expression too large: more than 100000 instructions at 16", 16);
    re_buf b;
    vm_regex rx;
    re_error err;
    cr_assert_eq(compile("(((a{10}){10}){10}){99}", '~', &b, &rx, &err), 0, "%s", err.msg);
    cr_assert_eq(rx.ninst, 99001);
    re_buf_free(&b);
    cr_assert(matches("(){100000}", ""), "repeating nothing costs nothing");
    static char deep[2 * RE_MAX_DEPTH + 8];
    memset(deep, '(', RE_MAX_DEPTH);
    memset(deep + RE_MAX_DEPTH, ')', RE_MAX_DEPTH);
    cr_assert(matches(deep, ""));
    memset(deep, '(', RE_MAX_DEPTH + 1);
    memset(deep + RE_MAX_DEPTH + 1, ')', RE_MAX_DEPTH + 1);
    refused(deep, "too many nested parentheses (limit 256) at 256", 256);
}
