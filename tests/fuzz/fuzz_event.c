/*
 * fuzz_event.c — libFuzzer target: any bytes as one event, against a ruleset that uses every
 * operator, arrays of objects, negations and bands.  Checks that the scanner never reads or
 * writes out of bounds (run under ASan + UBSan), that the SIMD scanner and the byte-by-byte one
 * agree (status and matches), and that the index matches exactly what the reference evaluator
 * (the rules' bytecode) matches.  The trusted path (vm_options.trusted, the router's) is given
 * the same bytes: on valid JSON it must agree with the others (matches, and the template's
 * payload); on anything else it must only stay in bounds and end.  `make fuzz` runs it; it is
 * not part of `make test`.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../compiler/compiler.h"

static const char rules[] =
    "bus b\n"
    "rule eq on b { match source == \"acme\" and type in [\"a\", \"b\", 1, true, null] }\n"
    "rule ci on b { match data.s == ignore_case \"stra\\u00dfe\" or data.s starts_with ignore_case \"ab\" }\n"
    "rule affix on b { match data.s starts_with \"x\" and data.t ends_with \"yz\" }\n"
    "rule wild on b { match data.s like \"a*b*c\" or data.s matches /[a-c]+d?/ }\n"
    "rule net on b { match data.ip in cidr \"10.0.0.0/8\" or data.ip == \"::1\" }\n"
    "rule ranges on b { match data.n > 5 and data.n <= 50 or data.n < -1e3 or data.n == 3e2 }\n"
    "rule band on b { match data.a[].v >= 1 and data.a[].v < 2 }\n"
    "rule same on b { match data.a[].k == \"x\" and data.a[].v > 0 }\n"
    "rule neg on b { match not (data.a[].k == \"bad\") and exists data.a }\n"
    "rule absent on b { match not exists data.z }\n"
    "rule anybut on b { match data.s not in [\"p\", \"q\"] and data.t != \"r\" }\n"
    "rule asnum on b { match data.s as number >= 10 }\n"
    "rule quick on b { match data.t not ends_with ignore_case \"yz\" or data.s != ignore_case \"ks\" "
    "or data.t like \"*k*\" or data.n > 1e300 }\n"
    "rule pat on b { pattern {\"data\": {\"a\": {\"k\": [{\"anything-but\": {\"prefix\": \"z\"}}], "
    "\"v\": [{\"numeric\": [\">\", 0, \"<\", 9]}]}, \"$or\": [{\"s\": [{\"wildcard\": \"*.json\"}]}, "
    "{\"t\": [{\"exists\": true}]}]}} }\n"
    "rule deep on b { match data.x.y.z[].w == 1 or data.x.y == \"v\" }\n"
    "target t file \"t\"\n"
    "rule xf on b { match exists id or exists data\n"
    "  transform { \"id\": $id, \"s\": \"${data.s}|${upper(data.t)}|${data.a[*].k}\", \"a\": data.a[-1],\n"
    "    \"n\": to_number(data.n) ?? 0, \"len\": len(data.a), \"j\": join(data.tags, \";\"),\n"
    "    \"o\"?: data.x.y, \"all\": data.*, \"t\": format_time($time, \"%F %T\") }\n"
    "  to t }\n";

static vm_program *prog;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    prog = cc_compile_text("fuzz.ebr", rules, strlen(rules), stderr, NULL);
    if (!prog)
        abort();
    return 0;
}

typedef struct {
    vm_status st;
    uint32_t m[64];
    size_t n;
} outcome;

static outcome run(const uint8_t *data, size_t size, const vm_options *opt)
{
    outcome o = { 0 };
    vm_ctx *c = vm_ctx_new(prog, opt);
    const uint32_t *m;
    vm_error err;
    o.st = vm_match(c, VM_NONE, (const char *)data, size, &m, &o.n, &err);
    if (o.st == VM_OK) {
        if (o.n > 64)
            abort();
        if (o.n)
            memcpy(o.m, m, o.n * sizeof *m);
    }
    vm_ctx_free(c);
    return o;
}

static void same(const outcome *a, const outcome *b, const char *what)
{
    if (a->st != b->st || (a->st == VM_OK && (a->n != b->n || memcmp(a->m, b->m, a->n * sizeof *a->m)))) {
        fprintf(stderr, "fuzz_event: %s disagree (status %d/%d, %zu/%zu matches)\n", what, a->st,
                b->st, a->n, b->n);
        abort();
    }
}

/* The template of rule xf writes the same payload (or fails alike) whether the event was read
 * through stage 1's brackets, byte by byte or (`trusted`) on the trusted path. */
static void transforms_agree(const uint8_t *ev, size_t size, bool trusted)
{
    static const vm_options bytewise = { .no_simd = true }, trust = { .trusted = true };
    static const vm_xform_env env = { NULL, NULL, 1, 1 };
    vm_ctx *a = vm_ctx_new(prog, trusted ? &trust : NULL), *b = vm_ctx_new(prog, &bytewise);
    const uint32_t *m;
    size_t nm;
    vm_error err;
    uint32_t xf = prog->nrules - 1;
    bool a_ok = vm_match(a, VM_NONE, (const char *)ev, size, &m, &nm, &err) == VM_OK;
    if (a_ok && trusted && !vm_json_valid((const char *)ev, size, NULL)) {
        /* The trusted scan may match bytes that are not JSON; its template must refuse them. */
        const char *pa;
        size_t na;
        bool ta;
        if (vm_transform(a, xf, (const char *)ev, size, &env, &pa, &na, &ta, &err) != VM_ERR_EVENT) {
            fprintf(stderr, "fuzz_event: a trusted template ran on bytes that are not JSON\n");
            abort();
        }
    } else if (a_ok && vm_match(b, VM_NONE, (const char *)ev, size, &m, &nm, &err) == VM_OK) {
        const char *pa, *pb;
        size_t na, nb;
        bool ta, tb;
        vm_status sa = vm_transform(a, xf, (const char *)ev, size, &env, &pa, &na, &ta, &err);
        vm_status sb = vm_transform(b, xf, (const char *)ev, size, &env, &pb, &nb, &tb, &err);
        if (sa != sb || (sa == VM_OK && (na != nb || (na && memcmp(pa, pb, na))))) {
            fprintf(stderr, "fuzz_event: the template's payload differs with and without stage 1\n");
            abort();
        }
    }
    vm_ctx_free(a);
    vm_ctx_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy, so that ASan sees any read past the event's end. */
    uint8_t *ev = malloc(size ? size : 1);
    memcpy(ev, data, size);
    static const vm_options bytewise = { .no_simd = true }, reference = { .reference = true };
    outcome fast = run(ev, size, NULL), slow = run(ev, size, &bytewise);
    same(&fast, &slow, "the SIMD scanner and the byte-by-byte scanner");
    outcome ref = run(ev, size, &reference);
    same(&fast, &ref, "the index and the reference evaluator");
    transforms_agree(ev, size, false);
    static const vm_options trusted = { .trusted = true },
                            trusted_ref = { .trusted = true, .reference = true };
    outcome tr = run(ev, size, &trusted), trref = run(ev, size, &trusted_ref);
    if (vm_json_valid((const char *)ev, size, NULL)) {
        same(&tr, &slow, "the trusted path and the validating one");
        same(&trref, &slow, "the trusted reference evaluator and the validating scan");
    }
    transforms_agree(ev, size, true);   /* (on invalid bytes: a trusted template refuses them) */
    free(ev);
    return 0;
}
