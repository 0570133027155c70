/*
 * test_schema.c — the JSON Schema validator (runtime/schema/validate.c, format.c) against the
 * official JSON-Schema-Test-Suite for draft 2020-12 (../shared/conformance/json-schema, or
 * $EBR_SHARED/conformance/json-schema), and direct tests of its error reports.
 *
 * Every file listed in `claimed` must pass whole: every test of every group, except groups that
 * need a document from outside the suite's file (a remote http://localhost:1234/ one, or the
 * draft's meta-schema), which are counted apart.  The other files run too, for the table only.
 * The table goes to stderr; docs/schemas.md keeps a copy.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../runtime/schema/schema.h"

static const char *const claimed[] = {
    "additionalProperties.json", "allOf.json", "anchor.json", "anyOf.json", "boolean_schema.json",
    "const.json", "contains.json", "content.json", "default.json", "defs.json",
    "dependentRequired.json", "dependentSchemas.json", "dynamicRef.json", "enum.json",
    "exclusiveMaximum.json", "exclusiveMinimum.json", "format.json", "if-then-else.json",
    "infinite-loop-detection.json", "items.json", "maxContains.json", "maxItems.json",
    "maxLength.json", "maxProperties.json", "maximum.json", "minContains.json", "minItems.json",
    "minLength.json", "minProperties.json", "minimum.json", "multipleOf.json", "not.json",
    "oneOf.json", "pattern.json", "patternProperties.json", "prefixItems.json",
    "properties.json", "propertyNames.json", "ref.json", "required.json", "type.json",
    "unevaluatedItems.json", "unevaluatedProperties.json", "uniqueItems.json",
    "optional/format/date-time.json", "optional/format/uri.json", "optional/format/email.json",
    "optional/format/uuid.json", "optional/format/ipv6.json", "optional/format/ipv4.json",
    NULL,
};

/* Files claimed but for tests that cannot pass, each with its reason: the count must be exact
 * (one more failure fails the test, and so does one fewer: then claim the file whole). */
static const struct {
    const char *file;
    int fail;
    const char *why;
} partial[] = {
    { NULL, 0, NULL },          /* (none now: ipv4.json's "192.168.0.1\u0000.evil.com" passes
                                 * since sch_parse keeps a string's U+0000) */
};

/* The suite's folder. */
static const char *suite_dir(void)
{
    static char dir[1024];
    const char *shared = getenv("EBR_SHARED");
    snprintf(dir, sizeof dir, "%s/conformance/json-schema/draft2020-12",
             shared && *shared ? shared : EBR_SHARED_DIR);
    return dir;
}

/* The whole of file path, or NULL. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    if (b)
        b[n] = '\0';
    fclose(f);
    return b;
}

typedef struct {
    int tests, passed, groups, groups_whole, outside, outside_passed;
    char first_failure[512];
} tally;

/* Does the group need a document the suite's file does not hold? */
static bool needs_outside(const cJSON *schema)
{
    char *t = cJSON_PrintUnformatted(schema);
    bool r = t && (strstr(t, "localhost:1234") ||
                   strstr(t, "\"$ref\":\"https://json-schema.org/") ||
                   strstr(t, "\"$schema\":\"http://localhost"));
    free(t);
    return r;
}

/* Runs one file of the suite. */
static void run_file(const char *rel, tally *t)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", suite_dir(), rel);
    char *text = slurp(path);
    cr_assert_not_null(text, "cannot read %s", path);
    cJSON *groups = sch_parse(text, strlen(text), NULL);   /* (strings with U+0000 kept whole) */
    free(text);
    cr_assert_not_null(groups, "%s is not JSON", path);
    const cJSON *g;
    cJSON_ArrayForEach(g, groups) {
        const cJSON *schema = cJSON_GetObjectItem(g, "schema");
        const char *gdesc = cJSON_GetObjectItem(g, "description")->valuestring;
        bool outside = needs_outside(schema);
        char err[512];
        sch_schema *s = sch_compile(schema, strncmp(rel, "optional/format/", 16) == 0 ? SCH_FORMATS : 0,
                                    err, sizeof err);
        bool whole = true;
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(g, "tests")) {
            bool want = cJSON_IsTrue(cJSON_GetObjectItem(c, "valid"));
            sch_error e;
            bool got = s && sch_validate(s, cJSON_GetObjectItem(c, "data"), &e);
            bool ok = s && got == want;
            if (outside) {
                t->outside++;
                t->outside_passed += ok;
                continue;
            }
            t->tests++;
            t->passed += ok;
            if (!ok) {
                whole = false;
                if (!t->first_failure[0])
                    snprintf(t->first_failure, sizeof t->first_failure, "%.150s / %.150s: %.200s", gdesc,
                             cJSON_GetObjectItem(c, "description")->valuestring,
                             !s ? err : got ? "valid, expected invalid" : e.message);
            }
        }
        if (!outside) {
            t->groups++;
            t->groups_whole += whole;
        }
        sch_free(s);
    }
    cJSON_Delete(groups);
}

/* Is rel one of the claimed files?  *known gets the failures it is known to have. */
static bool is_claimed(const char *rel, int *known)
{
    *known = 0;
    for (int i = 0; partial[i].file; i++)
        if (strcmp(partial[i].file, rel) == 0) {
            *known = partial[i].fail;
            return true;
        }
    for (int i = 0; claimed[i]; i++)
        if (strcmp(claimed[i], rel) == 0)
            return true;
    return false;
}

/* qsort: strings in strcmp order. */
static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The .json files of the suite's folder sub ("" or "optional/" ...), sorted, appended to v. */
static size_t list_dir(const char *sub, char **v, size_t at, size_t cap)
{
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/%s", suite_dir(), sub);
    DIR *d = opendir(dir);
    if (!d)
        return at;
    size_t first = at;
    struct dirent *e;
    while ((e = readdir(d)) && at < cap) {
        size_t l = strlen(e->d_name);
        if (l > 5 && strcmp(e->d_name + l - 5, ".json") == 0) {
            char *s = malloc(strlen(sub) + l + 1);
            sprintf(s, "%s%s", sub, e->d_name);
            v[at++] = s;
        }
    }
    closedir(d);
    qsort(v + first, at - first, sizeof *v, cmp_str);
    return at;
}

Test(schema_suite, draft2020_12_files_pass_whole, .timeout = 120)
{
    char *files[256];
    size_t n = list_dir("", files, 0, 256);
    n = list_dir("optional/", files, n, 256);
    n = list_dir("optional/format/", files, n, 256);
    cr_assert_gt(n, 40, "the suite is not at %s", suite_dir());
    for (int i = 0; claimed[i]; i++) {
        bool found = false;
        for (size_t k = 0; k < n; k++)
            found |= strcmp(files[k], claimed[i]) == 0;
        cr_expect(found, "claimed file %s is not in the suite", claimed[i]);
    }
    fprintf(stderr, "\nJSON-Schema-Test-Suite draft2020-12 (%s)\n", suite_dir());
    fprintf(stderr, "%-40s %-8s %-9s %-7s %s\n", "file", "claimed", "tests", "groups",
            "needs outside documents");
    int all = 0, all_passed = 0;
    for (size_t k = 0; k < n; k++) {
        tally t = { 0 };
        run_file(files[k], &t);
        int known;
        bool claim = is_claimed(files[k], &known);
        char tests[32], groups[32], outside[32] = "";
        snprintf(tests, sizeof tests, "%d/%d", t.passed, t.tests);
        snprintf(groups, sizeof groups, "%d/%d", t.groups_whole, t.groups);
        if (t.outside)
            snprintf(outside, sizeof outside, "%d/%d", t.outside_passed, t.outside);
        fprintf(stderr, "%-40s %-8s %-9s %-7s %s\n", files[k], !claim ? "no" : known ? "partly" : "yes", tests,
                groups, outside);
        if (claim) {
            all += t.tests;
            all_passed += t.passed;
            cr_expect_eq(t.passed, t.tests - known, "%s: %d of %d tests fail (%d known); first: %s",
                         files[k], t.tests - t.passed, t.tests, known, t.first_failure);
        }
        free(files[k]);
    }
    fprintf(stderr, "claimed files: %d/%d tests pass\n", all_passed, all);
}

/* Validates instance text against schema text; returns the error (static) or NULL. */
static const sch_error *check(const char *schema, const char *instance)
{
    static sch_error e;
    char err[256];
    sch_schema *s = sch_compile_text(schema, strlen(schema), SCH_FORMATS, err, sizeof err);
    cr_assert_not_null(s, "schema does not compile: %s", err);
    cJSON *i = sch_parse(instance, strlen(instance), NULL);
    cr_assert_not_null(i);
    bool ok = sch_validate(s, i, &e);
    cJSON_Delete(i);
    sch_free(s);
    return ok ? NULL : &e;
}

Test(schema, errors_name_the_instance_path_and_the_keyword)
{
    const char *sch = "{\"properties\":{\"items\":{\"items\":{\"properties\":"
                      "{\"price\":{\"type\":\"number\",\"minimum\":0}}}}}}";
    const sch_error *e = check(sch, "{\"items\":[{\"price\":1},{\"price\":-2}]}");
    cr_assert_not_null(e);
    cr_expect_str_eq(e->path, "/items/1/price");
    cr_expect_str_eq(e->keyword, "minimum");
    cr_expect_str_eq(e->message, "-2 is less than the minimum 0");
    e = check("{\"required\":[\"a\"]}", "{}");
    cr_assert_not_null(e);
    cr_expect_str_eq(e->path, "");
    cr_expect_str_eq(e->keyword, "required");
    e = check("{\"properties\":{\"a/b~c\":{\"type\":\"string\"}}}", "{\"a/b~c\":1}");
    cr_assert_not_null(e);
    cr_expect_str_eq(e->path, "/a~1b~0c");
    cr_expect_str_eq(e->keyword, "type");
    e = check("{\"additionalProperties\":false}", "{\"x\":1}");
    cr_assert_not_null(e);
    cr_expect_str_eq(e->keyword, "additionalProperties");
    cr_expect_null(check("{\"type\":\"integer\",\"const\":1}", "1.0"));
    cr_expect_null(check("{\"multipleOf\":0.01}", "19.99"));
}

Test(schema, strings_holding_u0000_are_read_whole)
{
    /* cJSON ends a string at U+0000; sch_parse keeps what follows it */
    const sch_error *e = check("{\"format\":\"ipv4\"}", "\"192.168.0.1\\u0000.evil.com\"");
    cr_assert_not_null(e, "what follows the NUL is seen");
    cr_assert_str_eq(e->keyword, "format");
    cr_assert_null(check("{\"format\":\"ipv4\"}", "\"192.168.0.1\""));
    cr_assert_null(check("{\"maxLength\":3,\"minLength\":3}", "\"a\\u0000b\""), "3 characters");
    cr_assert_not_null(check("{\"pattern\":\"^[a-z]*$\"}", "\"ab\\u0000cd\""));
    cr_assert_null(check("{\"const\":\"a\\u0000b\"}", "\"a\\u0000b\""));
    cr_assert_not_null(check("{\"const\":\"a\\u0000b\"}", "\"a\\u0000c\""), "not only up to the NUL");
    cr_assert_not_null(check("{\"enum\":[\"a\\u0000b\"]}", "\"a\""));
    cr_assert_not_null(check("{\"uniqueItems\":true}", "[\"a\\u0000b\",\"a\\u0000b\"]"));
    cr_assert_null(check("{\"uniqueItems\":true}", "[\"a\\u0000b\",\"a\\u0000c\"]"));
    /* "\\u0000" is a backslash and "u0000": 6 characters, no NUL; a pair of surrogates after a
     * NUL decodes to one character */
    cr_assert_null(check("{\"maxLength\":6,\"minLength\":6}", "\"\\\\u0000\""));
    cr_assert_null(check("{\"maxLength\":3,\"minLength\":3}", "\"\\u0000\\ud83d\\ude00\\n\""));
    cJSON *j = sch_parse("{\"k\":[1,\"x\\u0000y\",{\"a\":\"\\u0000\"}]}", 35, NULL);
    cr_assert_not_null(j);
    const cJSON *arr = cJSON_GetObjectItem(j, "k");
    cr_assert_eq(sch_strlen(cJSON_GetArrayItem(arr, 1)), 3);
    cr_assert_eq(memcmp(cJSON_GetArrayItem(arr, 1)->valuestring, "x\0y", 4), 0);
    cr_assert_eq(sch_strlen(cJSON_GetObjectItem(cJSON_GetArrayItem(arr, 2), "a")), 1);
    cJSON_Delete(j);
}

Test(schema, bad_schemas_are_refused_with_where_and_why)
{
    char err[256];
    const char *bad[][2] = {
        { "{\"properties\":{\"a\":3}}", "/properties/a: a schema must be an object or a boolean" },
        { "{\"pattern\":\"(\"}", "bad pattern" },
        { "{\"$ref\":\"#/$defs/nope\"}", "resolves to no schema" },
        { "[1]", "a schema must be an object or a boolean" },
        { "{\"allOf\":[]}", "allOf must be a non-empty array" },
        { "{\"type\":3}", "type must be one of" },
        { "{\"items\":{\"type\":[\"string\",\"int\"]}}", "/items: type must be one of" },
        { "{\"minimum\":\"5\"}", "minimum must be a number" },
        { "{\"minLength\":-1}", "minLength must be a non-negative integer" },
        { "{\"multipleOf\":0}", "multipleOf must be a number greater than 0" },
        { "{\"required\":[1]}", "required must be a list of property names" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sch_schema *s = sch_compile_text(bad[i][0], strlen(bad[i][0]), 0, err, sizeof err);
        cr_expect_null(s, "%s compiled", bad[i][0]);
        cr_expect(strstr(err, bad[i][1]) != NULL, "%s: %s", bad[i][0], err);
        sch_free(s);
    }
    cr_expect_null(sch_compile_text("{", 1, 0, err, sizeof err));
    cr_expect(strstr(err, "not JSON") != NULL, "%s", err);
}

/* ---- inference ------------------------------------------------------------------------------- */

/* The schema inferred from the JSON texts evs (n of them), as compact text (static). */
static const char *infer(const char *const *evs, size_t n)
{
    static char out[4096];
    sch_infer *g = sch_infer_new();
    cr_assert_not_null(g);
    for (size_t i = 0; i < n; i++) {
        cJSON *j = cJSON_Parse(evs[i]);
        cr_assert_not_null(j, "%s", evs[i]);
        cr_assert(sch_infer_add(g, j));
        cJSON_Delete(j);
    }
    cJSON *s = sch_infer_schema(g);
    char *t = cJSON_PrintUnformatted(s);
    snprintf(out, sizeof out, "%s", t);
    free(t);
    cJSON_Delete(s);
    sch_infer_free(g);
    const char *pre = "{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\",";
    cr_assert(strncmp(out, pre, strlen(pre)) == 0, "%s", out);
    memmove(out + 1, out + strlen(pre), strlen(out + strlen(pre)) + 1);
    return out;
}

Test(infer, types_integer_number_and_required)
{
    const char *a[] = { "{\"n\":1,\"s\":\"x\",\"b\":true}", "{\"n\":2,\"z\":null}" };
    cr_expect_str_eq(infer(a, 2), "{\"type\":\"object\",\"properties\":{\"b\":{\"type\":\"boolean\"},"
                     "\"n\":{\"type\":\"integer\"},\"s\":{\"type\":\"string\"},\"z\":{\"type\":\"null\"}},"
                     "\"required\":[\"n\"]}");
    const char *b[] = { "{\"n\":1}", "{\"n\":1.5}", "{\"n\":2.0}" };
    cr_expect_str_eq(infer(b, 3), "{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"number\"}},"
                     "\"required\":[\"n\"]}");
    const char *c[] = { "1", "\"x\"", "[]" };
    cr_expect_str_eq(infer(c, 3), "{\"type\":[\"array\",\"integer\",\"string\"]}");
}

Test(infer, arrays_merge_their_items)
{
    const char *a[] = { "{\"items\":[{\"sku\":\"a\",\"n\":1},{\"sku\":\"b\"}]}",
                        "{\"items\":[{\"sku\":\"c\",\"gift\":true}]}", "{\"items\":[]}" };
    cr_expect_str_eq(infer(a, 3), "{\"type\":\"object\",\"properties\":{\"items\":{\"type\":\"array\","
                     "\"items\":{\"type\":\"object\",\"properties\":{\"gift\":{\"type\":\"boolean\"},"
                     "\"n\":{\"type\":\"integer\"},\"sku\":{\"type\":\"string\"}},\"required\":[\"sku\"]}}},"
                     "\"required\":[\"items\"]}");
}

Test(infer, formats_only_when_every_value_has_one_and_no_enums)
{
    const char *a[] = { "{\"t\":\"2026-12-05T16:00:00Z\",\"u\":\"https://x.org/\",\"m\":\"a@b.c\","
                        "\"i\":\"3fa85f64-5717-4562-b3fc-2c963f66afa6\",\"v4\":\"10.0.0.1\",\"v6\":\"::1\",\"c\":\"red\"}",
                        "{\"t\":\"2026-12-05T16:00:01.5+01:00\",\"u\":\"not a uri\",\"m\":\"x@y.z\","
                        "\"i\":\"3FA85F64-5717-4562-B3FC-2C963F66AFA6\",\"v4\":\"192.168.1.1\",\"v6\":\"fe80::1\",\"c\":\"red\"}" };
    cr_expect_str_eq(infer(a, 2), "{\"type\":\"object\",\"properties\":{"
                     "\"c\":{\"type\":\"string\"},"
                     "\"i\":{\"type\":\"string\",\"format\":\"uuid\"},"
                     "\"m\":{\"type\":\"string\",\"format\":\"email\"},"
                     "\"t\":{\"type\":\"string\",\"format\":\"date-time\"},"
                     "\"u\":{\"type\":\"string\"},"
                     "\"v4\":{\"type\":\"string\",\"format\":\"ipv4\"},"
                     "\"v6\":{\"type\":\"string\",\"format\":\"ipv6\"}},"
                     "\"required\":[\"c\",\"i\",\"m\",\"t\",\"u\",\"v4\",\"v6\"]}");
}

Test(infer, order_does_not_matter_and_merging_equals_adding)
{
    const char *evs[] = { "{\"a\":1,\"b\":{\"x\":\"2026-12-05T16:00:00Z\"}}", "{\"a\":2.5,\"c\":[1]}",
                          "{\"b\":{\"x\":\"y\",\"z\":null},\"a\":3}", "{\"a\":\"s\",\"c\":[\"q\",{}]}" };
    char first[4096];
    snprintf(first, sizeof first, "%s", infer(evs, 4));
    const char *rev[] = { evs[3], evs[2], evs[1], evs[0] };
    cr_expect_str_eq(infer(rev, 4), first);
    const char *mix[] = { evs[2], evs[0], evs[3], evs[1] };
    cr_expect_str_eq(infer(mix, 4), first);
    /* two halves merged, and a half saved and loaded, give the same */
    sch_infer *g1 = sch_infer_new(), *g2 = sch_infer_new();
    for (int i = 0; i < 4; i++) {
        cJSON *j = cJSON_Parse(evs[i]);
        sch_infer_add(i % 2 ? g1 : g2, j);
        cJSON_Delete(j);
    }
    cJSON *saved = sch_infer_save(g2);
    sch_infer_free(g2);
    g2 = sch_infer_load(saved);
    cJSON_Delete(saved);
    cr_assert_not_null(g2);
    cr_assert(sch_infer_merge(g2, g1));
    cr_expect_eq(sch_infer_count(g2), 4);
    cJSON *s = sch_infer_schema(g2);
    char *t = cJSON_PrintUnformatted(s);
    cr_expect(strstr(t, first + 1) != NULL, "%s vs %s", t, first);
    free(t);
    cJSON_Delete(s);
    sch_infer_free(g1);
    sch_infer_free(g2);
}

Test(infer, an_inferred_schema_validates_what_it_came_from)
{
    const char *evs[] = { "{\"id\":\"1\",\"data\":{\"n\":[1,2],\"t\":\"2026-12-05T16:00:00Z\"}}",
                          "{\"id\":\"2\",\"data\":{\"n\":[],\"t\":\"2026-12-05T17:00:00Z\",\"x\":1.5}}" };
    sch_infer *g = sch_infer_new();
    for (int i = 0; i < 2; i++) {
        cJSON *j = cJSON_Parse(evs[i]);
        sch_infer_add(g, j);
        cJSON_Delete(j);
    }
    cJSON *sj = sch_infer_schema(g);
    char err[256];
    sch_schema *s = sch_compile(sj, SCH_FORMATS, err, sizeof err);
    cr_assert_not_null(s, "%s", err);
    for (int i = 0; i < 2; i++) {
        cJSON *j = cJSON_Parse(evs[i]);
        sch_error e;
        cr_expect(sch_validate(s, j, &e), "%s: %s %s", evs[i], e.path, e.message);
        cJSON_Delete(j);
    }
    cJSON *bad = cJSON_Parse("{\"id\":\"3\",\"data\":{\"n\":[\"x\"],\"t\":\"then\"}}");
    sch_error e;
    cr_expect_not(sch_validate(s, bad, &e));
    cJSON_Delete(bad);
    sch_free(s);
    cJSON_Delete(sj);
    sch_infer_free(g);
}

Test(infer, a_budget_and_long_names_stop_new_properties)
{
    sch_infer *g = sch_infer_new();
    /* a name over 256 bytes is not described; the object keeps its other names */
    char name[400];
    memset(name, 'n', 300);
    name[300] = 0;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, name, 1);
    cJSON_AddNumberToObject(j, "short", 2);
    cr_assert(sch_infer_add(g, j));
    cJSON_Delete(j);
    size_t one = sch_infer_bytes(g);
    cr_assert_gt(one, 0);
    /* past the limit no property is added, and the state stops growing */
    sch_infer_limit(g, one + 1);
    j = cJSON_CreateObject();
    for (int i = 0; i < 50; i++) {
        char k[16];
        snprintf(k, sizeof k, "p%d", i);
        cJSON_AddNumberToObject(j, k, i);
    }
    cr_assert(sch_infer_add(g, j));
    cJSON_Delete(j);
    cr_expect_eq(sch_infer_bytes(g), one);
    cJSON *sj = sch_infer_schema(g);
    char *text = cJSON_PrintUnformatted(sj);
    cr_expect(strstr(text, "\"short\"") != NULL, "%s", text);
    cr_expect(strstr(text, "nnnnnnnn") == NULL, "a long name described: %.80s", text);
    cr_expect(strstr(text, "\"p0\"") == NULL, "a property past the budget: %s", text);
    free(text);
    cJSON_Delete(sj);
    sch_infer_free(g);
}

/* ---- threads ---------------------------------------------------------------------------------- */

#include <pthread.h>

typedef struct {
    const sch_schema *s;
    int wrong;
} worker;

/* Validates good and bad instances many times over; counts wrong answers and wrong errors. */
static void *validate_many(void *arg)
{
    worker *w = arg;
    cJSON *good = cJSON_Parse("{\"id\":\"a\",\"data\":{\"items\":[{\"sku\":\"x\",\"price\":1}],"
                              "\"when\":\"2026-12-05T16:00:00Z\",\"code\":\"AB-12\"}}");
    cJSON *bad = cJSON_Parse("{\"id\":\"a\",\"data\":{\"items\":[{\"sku\":\"x\",\"price\":1},"
                             "{\"sku\":\"y\",\"price\":-1}],\"when\":\"2026-12-05T16:00:00Z\",\"code\":\"AB-12\"}}");
    for (int i = 0; i < 2000; i++) {
        sch_error e;
        if (!sch_validate(w->s, good, &e))
            w->wrong++;
        if (sch_validate(w->s, bad, &e) || strcmp(e.path, "/data/items/1/price") != 0 ||
            strcmp(e.keyword, "minimum") != 0)
            w->wrong++;
    }
    cJSON_Delete(good);
    cJSON_Delete(bad);
    return NULL;
}

Test(schema, one_compiled_schema_serves_many_threads_at_once)
{
    const char *text = "{\"$defs\":{\"item\":{\"type\":\"object\",\"required\":[\"sku\"],"
                       "\"properties\":{\"sku\":{\"pattern\":\"^[a-z]$\"},"
                       "\"price\":{\"type\":\"number\",\"minimum\":0}},\"unevaluatedProperties\":false}},"
                       "\"properties\":{\"data\":{\"properties\":{\"items\":{\"items\":{\"$ref\":\"#/$defs/item\"}},"
                       "\"when\":{\"format\":\"date-time\"},\"code\":{\"pattern\":\"^[A-Z]{2}-\\\\d+$\"}}}}}";
    char err[256];
    sch_schema *s = sch_compile_text(text, strlen(text), SCH_FORMATS, err, sizeof err);
    cr_assert_not_null(s, "%s", err);
    pthread_t th[4];
    worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){ s, 0 };
        pthread_create(&th[i], NULL, validate_many, &w[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(w[i].wrong, 0, "thread %d: %d wrong answers", i, w[i].wrong);
    }
    sch_free(s);
}

Test(schema, long_arrays_and_bad_patterns_stay_cheap, .timeout = 30)
{
    /* uniqueItems over 50,000 items: sorted by hash, not compared pairwise */
    char err[256];
    sch_schema *s = sch_compile_text("{\"uniqueItems\":true}", 20, 0, err, sizeof err);
    cr_assert_not_null(s);
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < 50000; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(i));
    sch_error e;
    cr_expect(sch_validate(s, a, &e));
    cJSON_AddItemToArray(a, cJSON_CreateNumber(123.0));
    cJSON_AddItemToArray(a, cJSON_Parse("{\"b\":[1,2],\"a\":null}"));
    cJSON_AddItemToArray(a, cJSON_Parse("{\"a\":null,\"b\":[1.0,2]}"));
    cr_expect_not(sch_validate(s, a, &e));
    cr_expect_str_eq(e.message, "items 123 and 50000 are equal");
    cJSON_Delete(a);
    sch_free(s);
    /* a pattern that backtracks without end stops at PCRE2's match limit: no match */
    const sch_error *r = check("{\"pattern\":\"^(a+)+$\"}",
                               "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab\"");
    cr_assert_not_null(r);
    cr_expect_str_eq(r->keyword, "pattern");
}

/* ---- discovery: versions, and what a restart keeps -------------------------------------------- */

#include <unistd.h>
#include "../../runtime/schema/discover.h"
#include "../../runtime/ebd_int.h"

typedef struct {
    uint64_t version, events;
    size_t kept;
    char schema[2048];
} seen;

/* sch_discovery_each: the (only) kind of bus "b". */
static void look(void *arg, disc_bus *b)
{
    seen *s = arg;
    if (strcmp(b->name, "b") || !b->nkinds || !b->kinds[0].nver)
        return;
    const disc_kind *k = &b->kinds[0];
    s->version = k->ver[k->nver - 1].version;
    s->events = sch_infer_count(k->g);
    s->kept = k->nver;
    snprintf(s->schema, sizeof s->schema, "%s", k->ver[k->nver - 1].schema);
}

/* Waits (up to 60 s) until bus b's kind is at version v with n events merged. */
static bool wait_version(uint64_t v, uint64_t n, seen *s)
{
    for (int i = 0; i < 1200; i++) {
        memset(s, 0, sizeof *s);
        sch_discovery_each(look, s);
        if (s->version == v && s->events == n)
            return true;
        usleep(50000);
    }
    return false;
}

/* Appends event text ev to store st. */
static void append(store *st, const char *ev)
{
    store_entry e = { ev, (uint32_t)strlen(ev), 0, NULL };
    uint64_t first;
    cr_assert_eq(store_append(st, &e, 1, &first), STORE_OK);
}

Test(discovery, versions_go_up_when_the_schema_changes_and_survive_a_restart, .timeout = 180)
{
    char dir[] = "/tmp/ebr-sch-XXXXXX", logdir[64], err[256];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(logdir, sizeof logdir, "%s/log", dir);
    store *st;
    cr_assert_eq(log_open(logdir, NULL, &st, err, sizeof err), STORE_OK, "%s", err);
    ebd_bus bus = { .name = "b", .s = st };
    ebd_bus *buses[1] = { &bus };
    ebd d = { .data_dir = dir, .buses = buses, .nbuses = 1 };
    pthread_rwlock_init(&d.lock, NULL);
#define EV(id, data) "{\"specversion\":\"1.0\",\"id\":\"" id "\",\"source\":\"s\",\"type\":\"t\",\"data\":" data "}"
    append(st, EV("1", "{\"n\":1}"));
    append(st, EV("2", "{\"n\":2}"));
    sch_discovery_start(&d);
    seen s;
    cr_assert(wait_version(1, 2, &s), "version %llu, %llu events", (unsigned long long)s.version,
              (unsigned long long)s.events);
    cr_expect_eq(sch_count(&d, "b"), 1);
    cr_expect(strstr(s.schema, "\"n\":{\"type\":\"integer\"}") != NULL, "%s", s.schema);
    append(st, EV("3", "{\"n\":3}"));                  /* same shape: same version */
    cr_assert(wait_version(1, 3, &s));
    append(st, EV("4", "{\"n\":4.5}"));                /* integer -> number: version 2 */
    cr_assert(wait_version(2, 4, &s), "version %llu", (unsigned long long)s.version);
    cr_expect(strstr(s.schema, "\"n\":{\"type\":\"number\"}") != NULL, "%s", s.schema);
    append(st, EV("5", "{\"n\":5,\"x\":true}"));       /* a new field: version 3, 3 kept */
    cr_assert(wait_version(3, 5, &s));
    cr_expect_eq(s.kept, 3);
    sch_discovery_stop(&d);
    cr_expect_eq(sch_count(&d, "b"), 0);
    /* a restart: the versions, the count and the position are read back */
    sch_discovery_start(&d);
    cr_assert(wait_version(3, 5, &s), "after a restart: version %llu, %llu events",
              (unsigned long long)s.version, (unsigned long long)s.events);
    append(st, EV("6", "{\"n\":6,\"x\":false}"));
    cr_assert(wait_version(3, 6, &s));
    sch_discovery_bus_closing(&d, "b");
    cr_expect_eq(sch_count(&d, "b"), 0);
    store_close(st);
    pthread_rwlock_destroy(&d.lock);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
#undef EV
}
