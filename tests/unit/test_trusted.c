/*
 * test_trusted.c — the trusted path (vm_options.trusted) against the validating one: on valid
 * JSON, trusted = validating (SIMD) = validating (byte by byte) = reference VM, in status,
 * matched rules and transform payloads, over the event-ruler conformance cases and generated
 * events (nesting, arrays, escapes, Unicode, numbers of every form, keys with dots, containers
 * across 64-byte blocks), with the trusted walk recording the same leaves as the others; on any
 * other bytes (random, mutated, cut) the trusted path must only stay in bounds and end (run it
 * under ASan/UBSan: `make build-asan`).  vm_fast_skip is tested alone too.  EBR_TRUSTED_SEED and
 * EBR_TRUSTED_ROUNDS (a multiplier) give longer runs.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../compiler/compiler.h"
#include "../../vm/vm_int.h"
#include "gen.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(uint32_t n)
{
    return gen_rnd(&rng, n);
}

static int rounds(int base)
{
    const char *seed = getenv("EBR_TRUSTED_SEED"), *mult = getenv("EBR_TRUSTED_ROUNDS");
    if (seed && strtoull(seed, NULL, 10))
        rng = strtoull(seed, NULL, 10);
    return base * (mult && atoi(mult) > 0 ? atoi(mult) : 1);
}

/* The engines compared: trusted (index), trusted (reference VM), validating (SIMD stage 1),
 * validating byte by byte, reference VM validating. */
enum { E_TRUSTED, E_TRUSTED_REF, E_SIMD, E_BYTEWISE, E_REF, NENGINES };
static const char *const engine_names[NENGINES] = {
    "trusted", "trusted reference", "validating", "byte-by-byte", "reference",
};

typedef struct {
    vm_program *p;
    vm_ctx *c[NENGINES];
} engines;

static void engines_open(engines *e, vm_program *p)
{
    const vm_options opts[NENGINES] = {
        [E_TRUSTED] = { .trusted = true },
        [E_TRUSTED_REF] = { .trusted = true, .reference = true },
        [E_SIMD] = { 0 },
        [E_BYTEWISE] = { .no_simd = true },
        [E_REF] = { .reference = true },
    };
    e->p = p;
    for (int i = 0; i < NENGINES; i++) {
        e->c[i] = vm_ctx_new(p, &opts[i]);
        cr_assert_not_null(e->c[i]);
    }
}

static void engines_close(engines *e)
{
    for (int i = 0; i < NENGINES; i++)
        vm_ctx_free(e->c[i]);
    vm_program_free(e->p);
}

/* Every engine on one valid event: the same status, rules and transform payloads.  `where`
 * names the case in a failure. */
static void agree(engines *e, const char *s, size_t n, const char *where)
{
    /* An exact-size copy, so that ASan sees a read past the event's end. */
    char *ev = malloc(n ? n : 1);
    memcpy(ev, s, n);
    const uint32_t *m[NENGINES];
    size_t nm[NENGINES];
    vm_status st[NENGINES];
    for (int i = 0; i < NENGINES; i++) {
        vm_error err;
        st[i] = vm_match(e->c[i], VM_NONE, ev, n, &m[i], &nm[i], &err);
    }
    for (int i = 0; i < NENGINES; i++) {
        cr_assert_eq(st[i], st[E_BYTEWISE], "%s: %s says status %d, byte-by-byte %d for:\n%.*s",
                     where, engine_names[i], st[i], st[E_BYTEWISE], (int)n, s);
        if (st[i] != VM_OK && st[i] != VM_ERR_RULE)
            continue;
        cr_assert_eq(nm[i], nm[E_BYTEWISE], "%s: %s matches %zu rules, byte-by-byte %zu for:\n%.*s",
                     where, engine_names[i], nm[i], nm[E_BYTEWISE], (int)n, s);
        for (size_t k = 0; k < nm[i]; k++)
            cr_assert_eq(m[i][k], m[E_BYTEWISE][k], "%s: %s matches other rules for:\n%.*s", where,
                         engine_names[i], (int)n, s);
    }
    /* The lean walk (walk_lean) records what the generic walk records, byte by byte: the same
     * leaves and array memberships (whose arrays the generic walk numbers otherwise: it counts
     * the arrays it reads through too).  And trusted (jumping by counting brackets) as after
     * stage 1 (jumping by its brackets): the same tables, arrays too. */
    bool ok_t = st[E_TRUSTED] == VM_OK || st[E_TRUSTED] == VM_ERR_RULE,
         ok_b = st[E_BYTEWISE] == VM_OK || st[E_BYTEWISE] == VM_ERR_RULE,
         ok_s = st[E_SIMD] == VM_OK || st[E_SIMD] == VM_ERR_RULE;
    for (int other = E_SIMD; other <= E_BYTEWISE; other++) {
        const vm_ctx *a = e->c[E_TRUSTED], *b = e->c[other];
        if (!ok_t || !(other == E_SIMD ? ok_s && b->fast_for == ev : ok_b))
            continue;
        cr_assert_eq(a->fields.n, b->fields.n, "%s: the trusted walk records %u leaves, the %s "
                     "walk %u for:\n%.*s", where, (unsigned)a->fields.n, engine_names[other],
                     (unsigned)b->fields.n, (int)n, s);
        for (uint32_t i = 0; i < a->fields.n; i++) {
            const vm_field *x = &a->fields.v[i], *y = &b->fields.v[i];
            cr_assert(x->type == y->type && x->escaped == y->escaped && x->off == y->off &&
                      x->len == y->len && x->memb == y->memb && x->nmemb == y->nmemb &&
                      x->next == y->next, "%s: leaf %u differs between the trusted walk and the "
                      "%s one for:\n%.*s", where, i, engine_names[other], (int)n, s);
        }
        cr_assert_eq(a->memb.n, b->memb.n, "%s: the array memberships differ (%s) for:\n%.*s",
                     where, engine_names[other], (int)n, s);
        for (uint32_t i = 0; i < a->memb.n; i++) {
            const vm_memb *x = &a->memb.v[i], *y = &b->memb.v[i];
            cr_assert(x->index == y->index && x->up == y->up && x->outer == y->outer &&
                      (other == E_BYTEWISE || x->array == y->array),
                      "%s: array membership %u differs (%s) for:\n%.*s", where, i,
                      engine_names[other], (int)n, s);
        }
        if (other == E_SIMD)
            cr_assert(a->narrays == b->narrays && a->array_depth.n == b->array_depth.n &&
                      (!a->array_depth.n || !memcmp(a->array_depth.v, b->array_depth.v,
                                                    a->array_depth.n * sizeof *a->array_depth.v)),
                      "%s: the arrays differ for:\n%.*s", where, (int)n, s);
    }
    /* The templates of the matched rules read the same fields. */
    if (st[E_TRUSTED] == VM_OK) {
        static const vm_xform_env env = { NULL, NULL, 1, 1 };
        for (size_t k = 0; k < nm[E_TRUSTED]; k++) {
            uint32_t r = m[E_TRUSTED][k], xi = e->p->rules[r].xform;
            if (xi == VM_NONE || e->p->xforms[xi].kind != VM_X_TEMPLATE)
                continue;
            const char *out[2];
            size_t len[2];
            bool text[2];
            vm_status xs[2];
            vm_error err;
            char *copy[2] = { NULL, NULL };
            int who[2] = { E_TRUSTED, E_BYTEWISE };
            for (int j = 0; j < 2; j++) {
                xs[j] = vm_transform(e->c[who[j]], r, ev, n, &env, &out[j], &len[j], &text[j], &err);
                if (xs[j] == VM_OK) {
                    copy[j] = malloc(len[j] + 1);
                    memcpy(copy[j], out[j], len[j]);
                }
            }
            cr_assert_eq(xs[0], xs[1], "%s: the transform of rule %u fails on one path only", where, r);
            if (xs[0] == VM_OK)
                cr_assert(len[0] == len[1] && !memcmp(copy[0], copy[1], len[0]),
                          "%s: rule %u's payload differs:\n%.*s\n%.*s", where, r, (int)len[0],
                          copy[0], (int)len[1], copy[1]);
            free(copy[0]);
            free(copy[1]);
        }
    }
    free(ev);
}

/* The trusted path on any bytes: it must end and stay in bounds (ASan checks); its verdict is
 * free unless the bytes are valid JSON, when it must agree with the others. */
static void robust(engines *e, const char *s, size_t n, const char *where)
{
    size_t bad;
    if (vm_json_valid(s, n, &bad)) {
        agree(e, s, n, where);
        return;
    }
    char *ev = malloc(n ? n : 1);
    memcpy(ev, s, n);
    const uint32_t *m;
    size_t nm;
    vm_error err;
    static const vm_xform_env env = { NULL, NULL, 1, 1 };
    if (vm_match(e->c[E_TRUSTED], VM_NONE, ev, n, &m, &nm, &err) == VM_OK) {
        /* The matched rules' templates on the same bytes: they must refuse them. */
        uint32_t rules[64];
        size_t k = nm < 64 ? nm : 64;
        if (k)
            memcpy(rules, m, k * sizeof *m);
        for (size_t i = 0; i < k; i++) {
            const char *out;
            size_t len;
            bool text;
            uint32_t xi = e->p->rules[rules[i]].xform;
            if (xi != VM_NONE && e->p->xforms[xi].kind == VM_X_TEMPLATE)
                cr_assert_eq(vm_transform(e->c[E_TRUSTED], rules[i], ev, n, &env, &out, &len, &text,
                                          &err), VM_ERR_EVENT, "%s: a trusted template ran on:\n%.*s",
                             where, (int)n, s);
        }
    }
    (void)vm_match(e->c[E_TRUSTED_REF], VM_NONE, ev, n, &m, &nm, &err);
    free(ev);
}

/* ---- the conformance cases ------------------------------------------------------------------- */

/* The value of "key": "..." in a line of JSON, decoded; NULL when absent. */
static char *field(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": \"", key);
    const char *at = strstr(line, pat);
    if (!at)
        return NULL;
    at += strlen(pat);
    const char *end = at;
    while (*end && *end != '"')
        end += *end == '\\' && end[1] ? 2 : 1;
    char *out = malloc((size_t)(end - at) * 3 + 1);
    size_t n = vm_json_unescape(at, (size_t)(end - at), out);
    out[n] = 0;
    return out;
}

Test(trusted, conformance_cases_agree, .timeout = 300)
{
    static const char *const files[] = {
        "event_ruler_observed.jsonl", "correctness_cases.jsonl", "probes_event_ruler.jsonl",
    };
    const char *shared = getenv("EBR_SHARED");
    long cases = 0;
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/conformance/event-ruler/%s", shared && *shared ? shared : EBR_SHARED_DIR,
                 files[f]);
        FILE *in = fopen(path, "r");
        cr_assert_not_null(in, "cannot open %s", path);
        char *line = NULL;
        size_t cap = 0;
        long lineno = 0;
        while (getline(&line, &cap, in) > 0) {
            lineno++;
            char *pat = field(line, "pattern"), *ev = field(line, "event");
            if (pat && ev) {
                buf src = { 0 };
                put(&src, "bus b\nrule r on b { pattern %s }\nrule x on b { match exists q }\n", pat);
                vm_program *p = cc_compile_text_flags("c.ebr", src.s, src.n, 0, NULL, NULL);
                if (p) {
                    engines e;
                    engines_open(&e, p);
                    char where[1100];
                    snprintf(where, sizeof where, "%s:%ld", path, lineno);
                    agree(&e, ev, strlen(ev), where);
                    engines_close(&e);
                    cases++;
                }
                free(src.s);
            }
            free(pat);
            free(ev);
        }
        free(line);
        fclose(in);
    }
    cr_log_info("trusted: %ld conformance cases", cases);
    cr_expect_gt(cases, 3000);
}

/* ---- generated events -------------------------------------------------------------------------- */

/* Keys the rules use (some with dots, some escaped in events) and keys they do not. */
static const char *const keys[] = {
    "a", "b", "data", "x", "y", "s", "n", "k", "v", "tags", "a.b", "x.y", "d\\u0061ta", "z",
    "skip", "geometry", "caf\xc3\xa9", "\\\"q", "",
};
#define NKEYS (sizeof keys / sizeof keys[0])

static void ws(buf *b)
{
    static const char *const w[] = { "", "", "", " ", "\n", "\t", " \r\n  " };
    put(b, "%s", w[rnd(7)]);
}

static void number(buf *b)
{
    static const char *const n[] = {
        "0", "-0", "1", "-1", "2", "5", "7", "12", "50", "300", "3e2", "3.0e+2", "0.5", "-2.5e-3",
        "1E5", "1e400", "-1e400", "12345678901234567890", "1.5", "-1000.0001", "0e0", "100.000",
    };
    put(b, "%s", n[rnd(sizeof n / sizeof n[0])]);
}

static void string(buf *b)
{
    static const char *const s[] = {
        "", "a", "ab", "abc", "acme", "x", "xyz", "r", "p", "bad", "10", "10.0.0.7", "::1",
        "STRASSE", "stra\\u00dfe", ("Stra\xc3\x9f" "e"), "a.json", "q\\\"uote", "back\\\\slash",
        "\\ud83d\\ude00", "\xf0\x9f\x98\x80", "{[,:]}", "tab\\tnl\\n", "\\/", "\\\\\\\"",
        "aXbYc", "abd", "zzz", "\\u0000x", "\xe2\x82\xac\xe2\x82\xac",
    };
    put(b, "\"%s\"", s[rnd(sizeof s / sizeof s[0])]);
}

static void value(buf *b, int depth);

/* Set: most values are strings, and objects hold more members (string_members_agree). */
static bool strings_first;

static void object(buf *b, int depth)
{
    put(b, "{");
    int n = depth > 5 ? 0 : (int)rnd(strings_first ? 14 : 6);
    for (int i = 0; i < n; i++) {
        ws(b);
        put(b, "%s\"%s\"", i ? "," : "", keys[rnd(NKEYS)]);
        ws(b);
        put(b, ":");
        ws(b);
        value(b, depth + 1);
        ws(b);
    }
    put(b, "}");
}

static void array(buf *b, int depth)
{
    put(b, "[");
    /* Now and then a long one, so that a skipped container spans several 64-byte blocks. */
    int n = rnd(8) == 0 ? 10 + (int)rnd(30) : (int)rnd(5);
    for (int i = 0; i < n; i++) {
        ws(b);
        if (i)
            put(b, ",");
        value(b, depth + 1);
    }
    ws(b);
    put(b, "]");
}

static void value(buf *b, int depth)
{
    if (strings_first && rnd(4)) {
        string(b);
        return;
    }
    switch (depth > 5 ? rnd(4) : rnd(8)) {
    case 0: case 3: number(b); break;
    case 1: string(b); break;
    case 2: put(b, "%s", rnd(3) == 0 ? "true" : rnd(2) ? "false" : "null"); break;
    case 4: case 5: object(b, depth); break;
    default: array(b, depth); break;
    }
}

static vm_program *generated_rules(void)
{
    static const char src[] =
        "bus b\n"
        "rule eq on b { match a == \"acme\" or b in [\"a\", 1, true, null] or x.y == \"x\" }\n"
        "rule ci on b { match data.s == ignore_case \"stra\\u00dfe\" or data.s starts_with ignore_case \"AB\" }\n"
        "rule affix on b { match data.s starts_with \"x\" or data.s ends_with \"yz\" or s ends_with \".json\" }\n"
        "rule wild on b { match data.s like \"a*b*c\" or s matches /[a-c]+d?/ }\n"
        "rule net on b { match data.s in cidr \"10.0.0.0/8\" or s == \"::1\" }\n"
        "rule ranges on b { match data.n > 5 and data.n <= 50 or n < -1e3 or n == 3e2 }\n"
        "rule band on b { match data.a[].v >= 1 and data.a[].v < 2 }\n"
        "rule same on b { match data.a[].k == \"x\" and data.a[].v > 0 }\n"
        "rule neg on b { match not (data.a[].k == \"bad\") and exists data.a }\n"
        "rule absent on b { match not exists z and exists a }\n"
        "rule anybut on b { match data.s not in [\"p\", \"q\"] and s != \"r\" }\n"
        "rule asnum on b { match s as number >= 10 }\n"
        "rule dots on b { match a.b == 1 or a.b.x == true or x.y.z[].k == \"abc\" }\n"
        "rule deep on b { match data.data.data.x == 2 or a.a.a.a.a == null }\n"
        "rule uni on b { pattern {\"caf\\u00e9\": [{\"exists\": true}]} }\n"
        "rule euro on b { match tags[] == \"\\u20ac\\u20ac\" }\n"
        "rule pat on b { pattern {\"data\": {\"a\": {\"k\": [{\"anything-but\": {\"prefix\": \"z\"}}], "
        "\"v\": [{\"numeric\": [\">\", 0, \"<\", 9]}]}, \"$or\": [{\"s\": [{\"wildcard\": \"*.json\"}]}, "
        "{\"k\": [{\"exists\": true}]}]}} }\n"
        "target t file \"t\"\n"
        "rule xf on b { match exists a or exists data or exists s\n"
        "  transform { \"s\": \"${data.s}|${upper(s)}|${data.a[*].k}\", \"a\": data.a[-1],\n"
        "    \"n\": to_number(data.n) ?? 0, \"len\": len(data.a), \"j\": join(tags, \";\"),\n"
        "    \"o\"?: x.y, \"all\": data.*, \"whole\": a }\n"
        "  to t }\n";
    vm_program *p = cc_compile_text("t.ebr", src, strlen(src), stderr, NULL);
    cr_assert_not_null(p);
    return p;
}

/* (gen.h's mutator, drawing from this file's generator) */
static size_t mutate(char *s, size_t n)
{
    return gen_mutate(&rng, s, n, 1);
}

/* An event of the generator: an object after up to 69 spaces (its tokens fall anywhere in the
 * 64-byte blocks), and some whitespace after it. */
static buf generated_event(void)
{
    buf b = { 0 };
    put(&b, "%*s", (int)rnd(70), "");
    object(&b, 0);
    ws(&b);
    return b;
}

Test(trusted, generated_events_agree, .timeout = 300)
{
    int n = rounds(2000);
    engines e;
    engines_open(&e, generated_rules());
    long matched = 0;
    for (int r = 0; r < n; r++) {
        buf b = generated_event();
        agree(&e, b.s, b.n, "generated");
        const uint32_t *m;
        size_t nm;
        vm_error err;
        if (vm_match(e.c[E_TRUSTED], VM_NONE, b.s, b.n, &m, &nm, &err) == VM_OK)
            matched += nm > 1;
        free(b.s);
    }
    cr_log_info("trusted: %d generated events, %ld matching more than one rule", n, matched);
    cr_expect_gt(matched, n / 10);
    engines_close(&e);
}

/* Objects of many members whose values are mostly strings: the walk reads runs of them from one
 * 64-byte window's masks (walk_lean), and must record what the byte-by-byte walk records, with
 * escapes, dots in keys, whitespace of every kind, and members that cross a window's end or
 * that hold other values between them. */
Test(trusted, string_members_agree, .timeout = 300)
{
    int n = rounds(3000);
    engines e;
    engines_open(&e, generated_rules());
    strings_first = true;
    long fields = 0;
    /* with the windows and the build of the walk this CPU runs best (AVX-512 and BMI where it
     * has them), then with SSE2's windows and the build for any x86-64 */
    int first = -1, bmi = -1;   /* the first pass's, as the walk chose them */
    for (int narrow = 0; narrow < 2; narrow++) {
        vm_walk_wide = narrow ? 0 : -1;
        vm_walk_bmi = narrow ? 0 : -1;
        for (int r = 0; r < n; r++) {
            buf b = generated_event();
            agree(&e, b.s, b.n, narrow ? "string members, SSE2 windows" : "string members");
            fields += e.c[E_TRUSTED]->fields.n;
            free(b.s);
        }
        if (!narrow) {
            first = vm_walk_wide;
            bmi = vm_walk_bmi;
        }
    }
    vm_walk_wide = -1;
    vm_walk_bmi = -1;
    strings_first = false;
    cr_log_info("trusted: %d events of string members twice (windows: %s%s, then SSE2), %ld "
                "leaves recorded", n, first == 1 ? "AVX-512" : "SSE2", bmi == 1 ? ", BMI" : "",
                fields);
    cr_expect_gt(fields, 2 * n);
    engines_close(&e);
}

Test(trusted, depth_limit_as_when_validated)
{
    engines e;
    engines_open(&e, generated_rules());
    for (int depth = VM_MAX_DEPTH - 2; depth <= VM_MAX_DEPTH + 2; depth++) {
        for (int shape = 0; shape < 4; shape++) {
            /* The deep part under a key no rule uses (jumped over) or under one it does, arrays
             * in arrays or objects in objects. */
            buf b = { 0 };
            bool arrays = shape & 1;
            put(&b, "{\"%s\":", shape & 2 ? "data" : "skip");
            for (int i = 1; i < depth; i++)
                put(&b, arrays ? "[" : "{\"data\":");
            put(&b, arrays ? "" : "1");
            for (int i = 1; i < depth; i++)
                put(&b, arrays ? "]" : "}");
            put(&b, "}");
            agree(&e, b.s, b.n, "deep");
            free(b.s);
        }
    }
    engines_close(&e);
}

Test(trusted, any_bytes_stay_in_bounds, .timeout = 300)
{
    int n = rounds(3000);
    engines e;
    engines_open(&e, generated_rules());
    char *m = malloc(1 << 16);
    for (int r = 0; r < n; r++) {
        buf b = { 0 };
        object(&b, 0);
        for (int k = 0; k < 4; k++) {
            memcpy(m, b.s, b.n);
            size_t len = mutate(m, b.n);
            robust(&e, m, len, "mutated");
        }
        /* Random bytes, drawn mostly from JSON's structure. */
        static const char alphabet[] = "{}[]\"\\:, ab0-.eu\x80\x00";
        size_t len = rnd(200);
        m[0] = '{';
        for (size_t i = 1; i < len; i++)
            m[i] = rnd(4) ? alphabet[rnd(sizeof alphabet - 1)] : (char)rnd(256);
        robust(&e, m, len, "random");
        free(b.s);
    }
    free(m);
    engines_close(&e);
}

/* ---- vm_fast_skip alone ------------------------------------------------------------------------- */

/* The byte-wise answer vm_fast_skip must give: a byte after an odd run of backslashes is
 * escaped (in a string or not: in valid JSON they are only in strings), an escaped quote is no
 * quote, and brackets outside strings count. */
static vm_skip_status skip_slow(const char *s, size_t n, size_t from, size_t room, size_t *end)
{
    size_t depth = 1;
    bool in = false, escaped = false;
    for (size_t i = from; i < n; i++) {
        char ch = s[i];
        bool esc = escaped;
        escaped = !esc && ch == '\\';
        if (ch == '"' && !esc)
            in = !in;
        else if (in)
            continue;
        else if (ch == '{' || ch == '[') {
            if (++depth > room)
                return VM_SKIP_DEEP;
        } else if ((ch == '}' || ch == ']') && --depth == 0) {
            *end = i + 1;
            return VM_SKIP_OK;
        }
    }
    return VM_SKIP_BAD;
}

Test(trusted, skip_equals_a_byte_wise_count)
{
    static const char alphabet[] = "{}[]\"\\\\ a,";
    int n = rounds(20000);
    char *s = malloc(400);
    for (int r = 0; r < n; r++) {
        size_t len = 1 + rnd(300), room = 1 + rnd(6);
        for (size_t i = 0; i < len; i++)
            s[i] = alphabet[rnd(sizeof alphabet - 1)];
        size_t from = rnd((uint32_t)len);
        size_t want_end = 0, got_end = 0, port_end = 0;
        vm_skip_status want = skip_slow(s, len, from, room, &want_end);
        vm_skip_status got = vm_fast_skip(s, len, from, room, &got_end);
        vm_skip_status port = vm_fast_skip_portable(s, len, from, room, &port_end);
        cr_assert_eq(got, want, "status %d, want %d for %.*s from %zu", got, want, (int)len, s, from);
        cr_assert_eq(port, want);
        if (want == VM_SKIP_OK) {
            cr_assert_eq(got_end, want_end, "end %zu, want %zu for %.*s from %zu", got_end, want_end,
                         (int)len, s, from);
            cr_assert_eq(port_end, want_end);
        }
    }
    free(s);
}
