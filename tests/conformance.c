/*
 * conformance.c — runs every case of ../shared/conformance through `pattern` rules and reports
 * each file's result.  A case that disagrees with the recorded verdict fails the run, unless it
 * is one of the deliberate divergences listed below, each of which docs/conformance.md explains
 * under the same name; a listed divergence that no longer diverges fails the run too.
 *
 * Every program is also written to .ebc bytes and read back before it runs, so the file format
 * is exercised by all of these cases; and every event runs through the index and through the
 * reference evaluator (the rules' bytecode), which must agree.
 *
 * usage: conformance SHARED_CONFORMANCE_DIR DOCS_CONFORMANCE_MD
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../compiler/compiler.h"

/* Deliberate divergences: (file, pattern, event) as recorded, and the name of the section of
 * docs/conformance.md that gives the reason.  event NULL: the pattern's compile verdict. */
static const struct divergence {
    const char *file;
    const char *pattern;
    const char *event;
    const char *reason;
} divergences[] = {
    { "probes_event_ruler.jsonl", "{\"a\":[{\"numeric\":[\"=\",0.30000000000000001]}]}", NULL,
      "numbers-beyond-double-precision" },
    { "probes_event_ruler.jsonl", "{\"a\":[{\"numeric\":[\"=\",0.3]}]}", "{\"a\":0.30000000000000001}",
      "numbers-beyond-double-precision" },
};

typedef struct {
    int cases, pass, diverged, failed, other_mode;
} tally;

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap + 1);
    size_t k;
    while (buf && (k = fread(buf + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap)
            buf = realloc(buf, (cap *= 2) + 1);
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        *len = n;
    }
    return buf;
}

/* Compiles patterns (one rule, one `pattern` clause each) and round-trips the program through
 * the .ebc format.  Returns NULL when the rules do not compile; *diag gets the messages. */
static vm_program *compile_patterns(const char *const *patterns, int n, char **diag)
{
    size_t cap = 64;
    for (int i = 0; i < n; i++)
        cap += strlen(patterns[i]) + 16;
    char *src = malloc(cap);
    size_t o = (size_t)snprintf(src, cap, "bus b\nrule r on b {");
    for (int i = 0; i < n; i++)
        o += (size_t)snprintf(src + o, cap - o, "\n  pattern %s", patterns[i]);
    snprintf(src + o, cap - o, "\n}\n");
    size_t dlen;
    FILE *d = open_memstream(diag, &dlen);
    cc_result res;
    vm_program *p = cc_compile_text("case.ebr", src, strlen(src), d, &res);
    fclose(d);
    free(src);
    if (!p)
        return NULL;
    uint8_t *buf;
    size_t len;
    vm_error err;
    if (vm_program_serialize(p, &buf, &len) != VM_OK) {
        fprintf(stderr, "serialize failed\n");
        exit(2);
    }
    vm_program_free(p);
    p = vm_program_parse(buf, len, &err);
    free(buf);
    if (!p) {
        fprintf(stderr, "reading back a compiled program failed: %s\n", err.msg);
        exit(2);
    }
    return p;
}

/* Runs one event with the given engine; returns 1 match, 0 no match, -1 invalid event. */
static int run_with(vm_program *p, const char *event, const vm_options *opt)
{
    vm_ctx *c = vm_ctx_new(p, opt);
    const uint32_t *m;
    size_t nm;
    vm_error err;
    vm_status st = vm_match(c, VM_NONE, event, strlen(event), &m, &nm, &err);
    vm_ctx_free(c);
    return st != VM_OK ? -1 : nm > 0;
}

static int engine_disagreements;

/* Runs one event through the index (SIMD scan and byte-by-byte scan) and through the reference
 * evaluator; all three must agree, whatever the recorded verdict. */
static int run(vm_program *p, const char *event)
{
    static const vm_options reference = { .reference = true }, bytewise = { .no_simd = true };
    int got = run_with(p, event, NULL);
    int ref = run_with(p, event, &reference), slow = run_with(p, event, &bytewise);
    if (ref != got || slow != got) {
        printf("ENGINES index %d, byte-by-byte scan %d, reference %d on event %s\n", got, slow,
               ref, event);
        engine_disagreements++;
    }
    return got;
}

static const struct divergence *find_divergence(const char *file, const char *pattern,
                                                const char *event)
{
    for (size_t i = 0; i < sizeof divergences / sizeof divergences[0]; i++) {
        const struct divergence *d = &divergences[i];
        if (!strcmp(d->file, file) && !strcmp(d->pattern, pattern) &&
            ((!d->event && !event) || (d->event && event && !strcmp(d->event, event))))
            return d;
    }
    return NULL;
}

static int stale_divergences;

/* Compares a verdict with the recorded one and tallies it. */
static void verdict(tally *t, const char *file, int line, const char *pattern, const char *event,
                    bool expected, bool got, const char *detail)
{
    const struct divergence *d = find_divergence(file, pattern, event);
    t->cases++;
    if (expected == got) {
        if (d) {
            printf("STALE   %s:%d: listed as divergence '%s' but now agrees with event-ruler\n",
                   file, line, d->reason);
            stale_divergences++;
        }
        t->pass++;
        return;
    }
    if (d) {
        printf("DIVERGE %s:%d: %s (docs/conformance.md: %s)\n", file, line,
               event ? "different match verdict" : "different compile verdict", d->reason);
        t->diverged++;
        return;
    }
    t->failed++;
    printf("FAIL    %s:%d: expected %s, got %s\n        pattern: %s\n", file, line,
           event ? (expected ? "match" : "no match") : (expected ? "valid" : "rejected"),
           event ? (got ? "match" : "no match") : (got ? "valid" : "rejected"), pattern);
    if (event)
        printf("        event:   %.300s\n", event);
    if (detail && *detail)
        printf("        %s", detail);
}

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Runs every line of one file; `kind` says how to read it. */
static tally run_file(const char *dir, const char *sub, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", dir, sub, name);
    tally t = { 0 };
    size_t len;
    char *text = read_all(path, &len);
    if (!text) {
        printf("FAIL    cannot read %s\n", path);
        t.failed++;
        return t;
    }
    int lineno = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        lineno++;
        cJSON *o = cJSON_Parse(line);
        if (!o) {
            printf("FAIL    %s:%d: cannot parse the case\n", name, lineno);
            t.failed++;
            continue;
        }
        const char *pattern = str(o, "pattern") ? str(o, "pattern") : str(o, "rule");
        const char *event = str(o, "event");
        const cJSON *match = cJSON_GetObjectItemCaseSensitive(o, "match");
        const cJSON *valid = cJSON_GetObjectItemCaseSensitive(o, "valid");
        const cJSON *plist = cJSON_GetObjectItemCaseSensitive(o, "patterns");
        const char *patterns[16] = { NULL };
        int np = 0;
        if (cJSON_IsArray(plist)) {
            const cJSON *x;
            cJSON_ArrayForEach(x, plist) if (np < 16 && cJSON_IsString(x)) patterns[np++] = x->valuestring;
            pattern = patterns[0];
        } else if (pattern) {
            patterns[np++] = pattern;
        }
        char *diag = NULL;
        vm_program *p = np ? compile_patterns(patterns, np, &diag) : NULL;
        if (cJSON_IsBool(valid)) {
            /* pattern_validity.jsonl: the default mode of event-ruler (ruleOverriding) decides;
             * cases recorded with overriding off describe a mode ebr does not have. */
            const cJSON *ov = cJSON_GetObjectItemCaseSensitive(o, "ruleOverriding");
            if (cJSON_IsFalse(ov) && cJSON_IsFalse(valid)) {
                t.cases++;
                t.other_mode++;
                printf("SKIPMODE %s:%d: rejected only with ruleOverriding=false, a mode ebr does not "
                       "have; ebr %s it, as event-ruler's default mode does (docs/conformance.md: "
                       "duplicate-keys)\n", name, lineno, p ? "accepts" : "rejects");
            } else {
                verdict(&t, name, lineno, pattern, NULL, cJSON_IsTrue(valid), p != NULL, diag);
            }
        } else if (str(o, "compile_error") || (!event && !match)) {
            /* probes with a compile error, or quamina's invalid regexps */
            verdict(&t, name, lineno, pattern, NULL, false, p != NULL, diag);
        } else if (!p) {
            verdict(&t, name, lineno, pattern, NULL, true, false, diag);
        } else {
            int got = run(p, event);
            if (got < 0) {
                t.cases++;
                t.failed++;
                printf("FAIL    %s:%d: the event was refused as invalid: %.200s\n", name, lineno, event);
            } else {
                verdict(&t, name, lineno, pattern, event, cJSON_IsTrue(match), got == 1, NULL);
            }
        }
        vm_program_free(p);
        free(diag);
        cJSON_Delete(o);
    }
    free(text);
    printf("%-36s %5d cases: %5d pass, %d expected divergences, %d failures", name, t.cases,
           t.pass, t.diverged, t.failed);
    printf(t.other_mode ? ", %d of another mode\n" : "\n", t.other_mode);
    return t;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: conformance SHARED_CONFORMANCE_DIR DOCS_CONFORMANCE_MD\n");
        return 2;
    }
    static const struct { const char *sub, *name; } files[] = {
        { "event-ruler", "event_ruler_observed.jsonl" },
        { "event-ruler", "correctness_cases.jsonl" },
        { "event-ruler", "event_ruler_multi_pattern.jsonl" },
        { "event-ruler", "pattern_validity.jsonl" },
        { "event-ruler", "probes_event_ruler.jsonl" },
        { "quamina-regexp", "regexp_samples.jsonl" },
        { "quamina-regexp", "regexp_samples_invalid.jsonl" },
    };
    tally all = { 0 };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        tally t = run_file(argv[1], files[i].sub, files[i].name);
        all.cases += t.cases;
        all.pass += t.pass;
        all.diverged += t.diverged;
        all.failed += t.failed;
        all.other_mode += t.other_mode;
    }
    /* Every divergence named here must be explained in the docs under its name. */
    size_t dlen;
    char *doc = read_all(argv[2], &dlen);
    int undocumented = 0;
    for (size_t i = 0; i < sizeof divergences / sizeof divergences[0]; i++) {
        char anchor[128];
        snprintf(anchor, sizeof anchor, "(%s)", divergences[i].reason);
        if (!doc || !strstr(doc, anchor)) {
            printf("FAIL    divergence '%s' is not explained in %s\n", divergences[i].reason, argv[2]);
            undocumented++;
        }
    }
    free(doc);
    printf("all files                            %5d cases: %5d pass, %d expected divergences, %d failures, "
           "%d of another mode\n", all.cases, all.pass, all.diverged, all.failed, all.other_mode);
    printf("engines (index with SIMD scan, index with byte-by-byte scan, reference VM): %d "
           "disagreements\n", engine_disagreements);
    return all.failed || stale_divergences || undocumented || engine_disagreements ? 1 : 0;
}
