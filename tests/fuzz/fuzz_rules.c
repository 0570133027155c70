/*
 * fuzz_rules.c — libFuzzer target: any bytes as a ruleset.  Compiling never crashes or leaks;
 * what compiles survives the .ebc round trip, and on a handful of events the index matches
 * exactly what the reference evaluator matches, and every matched rule's template runs to a
 * payload or a clean failure.  `make fuzz` runs it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../compiler/compiler.h"

static const char *const events[] = {
    "{\"source\": \"acme\", \"type\": \"a\", \"data\": {\"n\": 7, \"s\": \"abc\", \"t\": \"xyz\"}}",
    "{\"data\": {\"a\": [{\"k\": \"x\", \"v\": 1.5}, {\"k\": \"bad\", \"v\": -1}], \"n\": [1, 60]}}",
    "{\"a\": \"x\", \"b\": [1, \"2\", null, true], \"c\": {\"d\": \"10.0.0.1\", \"e\": \"STRASSE\"}}",
    "{\"detail\": {\"x\": [[1, 2], {\"y\": \"z\"}], \"n\": 3e2}, \"source\": \"\\u00e9\"}",
    "{}",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Imports would read files (a device could block forever): the fuzzer's rules stay inside
     * the input. */
    for (size_t i = 0; i + 6 <= size; i++)
        if (!memcmp(data + i, "import", 6))
            return 0;
    FILE *sink = fopen("/dev/null", "w");
    vm_program *p = cc_compile_text("fuzz.ebr", (const char *)data, size, sink, NULL);
    fclose(sink);
    if (!p)
        return 0;
    uint8_t *bytes;
    size_t n;
    vm_error err;
    if (vm_program_serialize(p, &bytes, &n) != VM_OK)
        abort();
    vm_program *q = vm_program_parse(bytes, n, &err);
    free(bytes);
    if (!q) {
        fprintf(stderr, "fuzz_rules: a compiled program does not load: %s\n", err.msg);
        abort();
    }
    static const vm_options reference = { .reference = true };
    for (size_t e = 0; e < sizeof events / sizeof events[0]; e++) {
        vm_ctx *a = vm_ctx_new(q, NULL), *r = vm_ctx_new(q, &reference);
        const uint32_t *ma, *mr;
        size_t na, nr;
        vm_status sa = vm_match(a, VM_NONE, events[e], strlen(events[e]), &ma, &na, &err);
        vm_status sr = vm_match(r, VM_NONE, events[e], strlen(events[e]), &mr, &nr, &err);
        if (sa != sr || (sa == VM_OK && (na != nr || (na && memcmp(ma, mr, na * sizeof *ma))))) {
            fprintf(stderr, "fuzz_rules: the index and the reference disagree on event %zu\n", e);
            abort();
        }
        /* every matched rule's transform runs to a payload or a clean failure */
        static const vm_xform_env env = { NULL, NULL, 1, 1 };
        for (size_t i = 0; sa == VM_OK && i < na; i++) {
            const char *out;
            size_t olen;
            bool text;
            uint32_t xi = q->rules[ma[i]].xform;
            if (xi == VM_NONE || q->xforms[xi].kind == VM_X_TEMPLATE)
                vm_transform(a, ma[i], events[e], strlen(events[e]), &env, &out, &olen, &text, &err);
        }
        vm_ctx_free(a);
        vm_ctx_free(r);
    }
    vm_program_free(q);
    vm_program_free(p);
    return 0;
}
