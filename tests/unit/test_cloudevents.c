/*
 * test_cloudevents.c — the daemon's checks of CloudEvents in the JSON format (runtime/cejson.c,
 * ce_check): what an event must have, and the message (naming the attribute) when it does not.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../runtime/ebd_int.h"

static const char *check(const char *ev)
{
    static char why[256];
    const char *id;
    size_t idlen;
    cr_assert(vm_json_valid(ev, strlen(ev), NULL), "not JSON: %s", ev);
    return ce_check(ev, strlen(ev), why, sizeof why, &id, &idlen, NULL) ? NULL : why;
}

#define BASE "\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"s\",\"type\":\"t\""

Test(cloudevents, good_events_pass_and_give_their_id)
{
    const char *good[] = {
        "{" BASE "}",
        "{" BASE ",\"data\":{\"a\":[1,2]}}",
        "{" BASE ",\"data_base64\":\"AAEC\"}",
        "{" BASE ",\"data_base64\":\"\"}",
        "{" BASE ",\"time\":\"2026-11-26T10:00:00Z\"}",
        "{" BASE ",\"time\":\"2026-11-26T10:00:00.123456+05:30\"}",
        "{" BASE ",\"subject\":\"x\",\"datacontenttype\":\"application/json\",\"dataschema\":\"https://x/s\"}",
        "{" BASE ",\"ext1\":\"v\",\"num\":5,\"flag\":true}",
        "{\"type\":\"t\",\"source\":\"urn:a\",\"id\":\"\\u00e9\",\"specversion\":\"1.0\"}",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        const char *why = check(good[i]);
        cr_expect_null(why, "%s refused: %s", good[i], why ? why : "");
    }
    const char ev[] = "{" BASE "}";
    char why[100];
    const char *id;
    size_t idlen;
    cr_assert(ce_check(ev, strlen(ev), why, sizeof why, &id, &idlen, NULL));
    cr_expect_eq(idlen, 4);
    cr_expect(!strncmp(id, "\"e1\"", 4));
}

Test(cloudevents, bad_events_are_refused_naming_the_attribute)
{
    const struct { const char *ev, *why; } bad[] = {
        { "[1]", "an event must be a JSON object" },
        { "{\"id\":\"e\",\"source\":\"s\",\"type\":\"t\"}", "required attribute 'specversion' is missing" },
        { "{\"specversion\":\"1.0\",\"source\":\"s\",\"type\":\"t\"}", "required attribute 'id' is missing" },
        { "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\"}", "required attribute 'source' is missing" },
        { "{\"specversion\":\"1.0\",\"id\":\"e\",\"source\":\"s\"}", "required attribute 'type' is missing" },
        { "{\"specversion\":\"0.3\",\"id\":\"e\",\"source\":\"s\",\"type\":\"t\"}", "attribute 'specversion' must be \"1.0\"" },
        { "{\"specversion\":\"1.0\",\"id\":\"\",\"source\":\"s\",\"type\":\"t\"}", "attribute 'id' must not be empty" },
        { "{\"specversion\":\"1.0\",\"id\":5,\"source\":\"s\",\"type\":\"t\"}", "attribute 'id' must be a string" },
        { "{\"specversion\":\"1.0\",\"id\":\"e\",\"source\":\"a b\",\"type\":\"t\"}", "attribute 'source' must be a URI-reference" },
        { "{" BASE ",\"time\":\"2026-11-26 10:00\"}", "attribute 'time' must be an RFC 3339 time" },
        { "{" BASE ",\"time\":\"2026-13-26T10:00:00Z\"}", "attribute 'time' must be an RFC 3339 time" },
        { "{" BASE ",\"Ext\":\"v\"}", "attribute name 'Ext' is not made of a-z and 0-9" },
        { "{" BASE ",\"my_ext\":\"v\"}", "attribute name 'my_ext' is not made of a-z and 0-9" },
        { "{" BASE ",\"ext\":{\"a\":1}}", "extension attribute 'ext' must be a string, a number or a boolean" },
        { "{" BASE ",\"id\":\"again\"}", "attribute 'id' appears twice" },
        { "{" BASE ",\"data\":1,\"data_base64\":\"AA==\"}", "an event has 'data' or 'data_base64', not both" },
        { "{" BASE ",\"data_base64\":\"AA=\"}", "attribute 'data_base64' is not base64 (its length is not a multiple of 4)" },
        { "{" BASE ",\"data_base64\":\"A*==\"}", "attribute 'data_base64' is not base64" },
        { "{" BASE ",\"dataschema\":\"\"}", "attribute 'dataschema' must be a URI" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *why = check(bad[i].ev);
        cr_expect_not_null(why, "%s accepted", bad[i].ev);
        if (why)
            cr_expect_str_eq(why, bad[i].why, "%s", bad[i].ev);
    }
}

Test(cloudevents, long_attributes_are_read_whole)
{
    size_t n = 5000;
    char *ev = malloc(n + 200);
    int k = snprintf(ev, 200, "{" BASE ",\"subject\":\"");
    memset(ev + k, 'x', n);
    strcpy(ev + k + n, "\"}");
    cr_expect_null(check(ev), "a 5000-byte subject is an attribute like any other");
    /* a 5000-byte source with a space near its end: refused, so it was read whole */
    k = snprintf(ev, 200, "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\",\"source\":\"");
    memset(ev + k, 'x', n);
    ev[k + n - 3] = ' ';
    strcpy(ev + k + n, "\"}");
    const char *why = check(ev);
    cr_expect(why && !strcmp(why, "attribute 'source' must be a URI-reference"), "%s", why ? why : "accepted");
    free(ev);
}

/* The runtime's public door to the check (rt_cloudevent_check, for ebc test) gives the same
 * verdicts, and takes any text: one that is not JSON is refused as such. */
Test(cloudevents, the_public_check_is_the_daemons)
{
    const char *evs[] = { "{" BASE "}", "{\"source\":\"s\"}", "{" BASE ",\"time\":\"today\"}", "[1]" };
    for (size_t i = 0; i < sizeof evs / sizeof *evs; i++) {
        char why[256] = "";
        const char *want = check(evs[i]);
        cr_expect_eq(rt_cloudevent_check(evs[i], strlen(evs[i]), why, sizeof why), want == NULL,
                     "%s", evs[i]);
        if (want)
            cr_expect_str_eq(why, want);
    }
    char why[256];
    cr_expect(!rt_cloudevent_check("{\"id\": \"a\",}", 12, why, sizeof why));
    cr_expect_str_eq(why, "not valid JSON: trailing comma in object (at byte 11)");
}

/* A CloudEvents String holds no control character (U+0000-U+001F, U+007F-U+009F), whether it
 * comes escaped or raw: every string attribute refuses one, naming itself; data may hold any. */
Test(cloudevents, control_characters_are_refused_in_every_attribute)
{
    const char *attrs[] = { "id", "source", "specversion", "type", "datacontenttype", "dataschema",
                            "subject", "time", "myext" };
    const struct { const char *text; const char *cp; } controls[] = {
        { "\\u0000", "U+0000" }, { "\\t", "U+0009" }, { "\\n", "U+000A" }, { "\\u001f", "U+001F" },
        { "\\u007f", "U+007F" }, { "\x7f", "U+007F" }, { "\\u0080", "U+0080" },
        { "\xc2\x85", "U+0085" }, { "\\u009F", "U+009F" },
    };
    for (size_t a = 0; a < sizeof attrs / sizeof *attrs; a++)
        for (size_t k = 0; k < sizeof controls / sizeof *controls; k++) {
            char ev[400], want[200];
            /* the attribute given last, after all the required ones: it alone is at fault */
            const char *base = a < 4 ? "" : BASE ",";
            snprintf(ev, sizeof ev, "{%s%s\"%s\":\"x%s\"}", base,
                     a == 0 ? "\"specversion\":\"1.0\",\"source\":\"s\",\"type\":\"t\","
                     : a == 1 ? "\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\","
                     : a == 2 ? "\"id\":\"e\",\"source\":\"s\",\"type\":\"t\","
                     : a == 3 ? "\"specversion\":\"1.0\",\"id\":\"e\",\"source\":\"s\"," : "",
                     attrs[a], controls[k].text);
            snprintf(want, sizeof want, "attribute '%s' holds a control character (%s at byte 1), "
                     "which a CloudEvents string may not", attrs[a], controls[k].cp);
            const char *why = check(ev);
            cr_expect(why && !strcmp(why, want), "%s: %s", ev, why ? why : "accepted");
        }
    const char *good[] = {
        "{" BASE ",\"subject\":\"\\u00a0\xc2\xa0\xc3\xa9 \\u2028\"}",      /* U+00A0 and on */
        "{" BASE ",\"data\":\"a\\u0000b\\n\"}",                            /* data: any text */
        "{" BASE ",\"data\":{\"k\":\"\\u0001\"}}",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        const char *why = check(good[i]);
        cr_expect_null(why, "%s refused: %s", good[i], why ? why : "");
    }
}

/* The JSON format: an attribute whose value is null is unset (json-format.md 2.2), so an optional
 * one may be null and a required one given as null is missing; data may be null (a null payload). */
Test(cloudevents, null_attributes_are_unset)
{
    const char *good[] = {
        "{" BASE ",\"subject\":null,\"time\":null,\"dataschema\":null,\"datacontenttype\":null}",
        "{" BASE ",\"unsetextension\":null}",
        "{" BASE ",\"data\":null}",
        "{" BASE ",\"data_base64\":null,\"data\":{\"a\":1}}",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        const char *why = check(good[i]);
        cr_expect_null(why, "%s refused: %s", good[i], why ? why : "");
    }
    const struct { const char *ev, *why; } bad[] = {
        { "{\"specversion\":\"1.0\",\"id\":null,\"source\":\"s\",\"type\":\"t\"}", "required attribute 'id' is missing" },
        { "{\"specversion\":\"1.0\",\"id\":\"e\",\"source\":null,\"type\":\"t\"}", "required attribute 'source' is missing" },
        { "{\"specversion\":null,\"id\":\"e\",\"source\":\"s\",\"type\":\"t\"}", "required attribute 'specversion' is missing" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *why = check(bad[i].ev);
        cr_expect(why && !strcmp(why, bad[i].why), "%s: %s", bad[i].ev, why ? why : "accepted");
    }
}

/* The spec's constraints on each attribute's value (spec.md, "Type System" and the attributes'
 * "Constraints"): each case is refused, naming the attribute. */
Test(cloudevents, attribute_values_keep_to_their_types)
{
    const struct { const char *ev, *why; } bad[] = {
        /* Integer: the integer component of a JSON number, in the signed 32-bit range */
        { "{" BASE ",\"num\":1.5}", "extension attribute 'num' is a number that is not a CloudEvents Integer (a whole number from -2147483648 to 2147483647)" },
        { "{" BASE ",\"num\":1e3}", "extension attribute 'num' is a number that is not a CloudEvents Integer (a whole number from -2147483648 to 2147483647)" },
        { "{" BASE ",\"num\":2147483648}", "extension attribute 'num' is a number that is not a CloudEvents Integer (a whole number from -2147483648 to 2147483647)" },
        { "{" BASE ",\"num\":-2147483649}", "extension attribute 'num' is a number that is not a CloudEvents Integer (a whole number from -2147483648 to 2147483647)" },
        /* subject: if present, a non-empty string */
        { "{" BASE ",\"subject\":\"\"}", "attribute 'subject' must not be empty" },
        /* dataschema: a URI, which is absolute (a scheme) */
        { "{" BASE ",\"dataschema\":\"/schemas/order\"}", "attribute 'dataschema' must be a URI" },
        { "{" BASE ",\"dataschema\":\"https://x/a b\"}", "attribute 'dataschema' must be a URI" },
        /* source: a URI-reference (RFC 3986) */
        { "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\",\"source\":\"a<b>\"}", "attribute 'source' must be a URI-reference" },
        { "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\",\"source\":\"/a%zz\"}", "attribute 'source' must be a URI-reference" },
        { "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\",\"source\":\"1http://x\"}", "attribute 'source' must be a URI-reference" },
        /* datacontenttype: a media type (RFC 2046) */
        { "{" BASE ",\"datacontenttype\":\"\"}", "attribute 'datacontenttype' must be a media type (RFC 2046), such as application/json" },
        { "{" BASE ",\"datacontenttype\":\"json\"}", "attribute 'datacontenttype' must be a media type (RFC 2046), such as application/json" },
        { "{" BASE ",\"datacontenttype\":\"application/\"}", "attribute 'datacontenttype' must be a media type (RFC 2046), such as application/json" },
        /* time: RFC 3339, a day its month has, an offset of at most 23:59 */
        { "{" BASE ",\"time\":\"2026-02-30T10:00:00Z\"}", "attribute 'time' must be an RFC 3339 time" },
        { "{" BASE ",\"time\":\"2025-02-29T10:00:00Z\"}", "attribute 'time' must be an RFC 3339 time" },
        { "{" BASE ",\"time\":\"2026-04-31T10:00:00Z\"}", "attribute 'time' must be an RFC 3339 time" },
        { "{" BASE ",\"time\":\"2026-04-30T10:00:00+24:00\"}", "attribute 'time' must be an RFC 3339 time" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *why = check(bad[i].ev);
        cr_expect(why && !strcmp(why, bad[i].why), "%s: %s", bad[i].ev, why ? why : "accepted");
    }
    const char *good[] = {
        "{" BASE ",\"num\":-2147483648,\"big\":2147483647,\"zero\":0,\"neg\":-0}",
        "{" BASE ",\"dataschema\":\"urn:example:schema:1\",\"subject\":\"x\"}",
        "{" BASE ",\"datacontenttype\":\"Application/JSON; charset=utf-8\"}",
        "{" BASE ",\"datacontenttype\":\"application/vnd.apache.thrift.binary\"}",
        "{" BASE ",\"datacontenttype\":\"text/plain;charset=\\\"utf-8\\\"\"}",
        "{" BASE ",\"datacontenttype\":\"application/json;\"}",
        "{" BASE ",\"datacontenttype\":\"application/json; ; charset=utf-8;\"}",
        "{" BASE ",\"time\":\"2024-02-29T23:59:60.5-23:59\"}",
        "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\",\"source\":\"https://github.com/cloudevents\"}",
        "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\",\"source\":\"mailto:cncf-wg-serverless@lists.cncf.io\"}",
        "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\",\"source\":\"urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66\"}",
        "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\",\"source\":\"/sensors/tn-1234567/alerts?x=1&y=%20#f\"}",
        "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\",\"source\":\"1-555-123-4567\"}",
        "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\",\"source\":\"http://[::1]:8080/a\"}",
        /* beyond ASCII, as an IRI (an MQTT topic's source) */
        "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\",\"source\":\"mqtt://h/caf\xc3\xa9\"}",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        const char *why = check(good[i]);
        cr_expect_null(why, "%s refused: %s", good[i], why ? why : "");
    }
}

/* A CloudEvents String holds no lone surrogate ("\uDEAD" is invalid, "\uD800\uDEAD" legal) and no
 * Unicode noncharacter (spec.md, "Type System"). */
Test(cloudevents, strings_hold_no_lone_surrogate_nor_noncharacter)
{
    const struct { const char *ev, *why; } bad[] = {
        { "{" BASE ",\"subject\":\"a\\uDEADb\"}", "attribute 'subject' holds a lone surrogate (\\uDEAD), which a CloudEvents string may not" },
        { "{" BASE ",\"subject\":\"a\\uD800\"}", "attribute 'subject' holds a lone surrogate (\\uD800), which a CloudEvents string may not" },
        { "{" BASE ",\"myext\":\"\\udbff\\u0041\"}", "attribute 'myext' holds a lone surrogate (\\udbff), which a CloudEvents string may not" },
        { "{" BASE ",\"subject\":\"x\\uFFFE\"}", "attribute 'subject' holds a noncharacter (U+FFFE at byte 1), which a CloudEvents string may not" },
        { "{" BASE ",\"subject\":\"x\xef\xb7\x90\"}", "attribute 'subject' holds a noncharacter (U+FDD0 at byte 1), which a CloudEvents string may not" },
        { "{" BASE ",\"myext\":\"\\uD83F\\uDFFF\"}", "attribute 'myext' holds a noncharacter (U+1FFFF at byte 0), which a CloudEvents string may not" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *why = check(bad[i].ev);
        cr_expect(why && !strcmp(why, bad[i].why), "%s: %s", bad[i].ev, why ? why : "accepted");
    }
    const char *good[] = {
        "{" BASE ",\"subject\":\"\\uD800\\uDEAD \\ud83d\\ude00 \xf0\x9f\x98\x80 \\uFFFD\"}",
        "{" BASE ",\"data\":\"\\uDEAD\\uFFFF\"}",                        /* data: any JSON */
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        const char *why = check(good[i]);
        cr_expect_null(why, "%s refused: %s", good[i], why ? why : "");
    }
}

/* review: a source read as a URI-reference is the decoded text, which ends at tlen with no NUL:
 * nothing past it may be read (a relative reference with no '/', '?' or '#' in it, long
 * enough that its decoded text is on the heap). */
Test(cloudevents, a_long_relative_source_is_read_within_its_bounds)
{
    size_t n = 700;
    char *ev = malloc(n + 128);
    cr_assert_not_null(ev);
    int at = snprintf(ev, n + 128, "{\"specversion\":\"1.0\",\"id\":\"e\",\"type\":\"t\",\"source\":\"");
    memset(ev + at, 'a', n);
    strcpy(ev + at + n, "\"}");
    const char *why = check(ev);
    cr_expect_null(why, "refused: %s", why ? why : "");
    free(ev);
}

/* ce_drop_nulls: the attributes set to null go (the JSON format: unset), the members kept are
 * copied as they are, "data": null stays, and ce_check reports whether there were any. */
Test(cloudevents, null_attributes_are_taken_out)
{
    static const struct { const char *in, *out; } cases[] = {
        { "{\"subject\":null," BASE "}", "{" BASE "}" },
        { "{" BASE ",\"subject\":null}", "{" BASE "}" },
        { "{" BASE ",\"x\":null,\"data\":null,\"y\":null}", "{" BASE ",\"data\":null}" },
        { "{" BASE ",\"data\":{\"a\":null,\"b\":[null]},\"time\":null}",
          "{" BASE ",\"data\":{\"a\":null,\"b\":[null]}}" },
        { "{ \"specversion\" : \"1.0\" ,\n \"subject\" : null ,\n \"id\" : \"e1\", \"source\":\"s\","
          " \"type\" : \"t\", \"data_base64\": null }\n",
          "{\"specversion\" : \"1.0\",\"id\" : \"e1\",\"source\":\"s\",\"type\" : \"t\"}" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char buf[512], why[200];
        const char *id;
        size_t n = strlen(cases[i].in), idlen;
        bool nulls = false;
        memcpy(buf, cases[i].in, n + 1);
        cr_assert(ce_check(buf, n, why, sizeof why, &id, &idlen, &nulls), "%s: %s", buf, why);
        cr_expect(nulls, "no null seen in %s", cases[i].in);
        ce_drop_nulls(buf, &n);
        cr_expect(n == strlen(cases[i].out) && !memcmp(buf, cases[i].out, n),
                  "%s\n  gave %.*s\n  not  %s", cases[i].in, (int)n, buf, cases[i].out);
        cr_expect(ce_check(buf, n, why, sizeof why, &id, &idlen, &nulls), "%.*s: %s", (int)n, buf, why);
        cr_expect(!nulls, "a null left in %.*s", (int)n, buf);
    }
    const char plain[] = "{" BASE ",\"data\":null}";
    char why[200];
    const char *id;
    size_t idlen;
    bool nulls = true;
    cr_assert(ce_check(plain, strlen(plain), why, sizeof why, &id, &idlen, &nulls));
    cr_expect(!nulls, "\"data\": null is no null attribute");
}

/* Every attribute is compared with every other for one given twice: so at most 256 (one given
 * twice past a limit of the comparisons had gone unnoticed). */
Test(cloudevents, at_most_256_attributes)
{
    static char ev[8192];
    size_t at = (size_t)snprintf(ev, sizeof ev, "{" BASE);
    for (int i = 0; i < 252; i++)
        at += (size_t)snprintf(ev + at, sizeof ev - at, ",\"x%d\":%d", i, i);
    snprintf(ev + at, sizeof ev - at, "}");
    const char *why = check(ev);
    cr_expect_null(why, "256 attributes refused: %s", why ? why : "");
    snprintf(ev + at, sizeof ev - at, ",\"x%d\":1}", 252);
    why = check(ev);
    cr_expect(why && strstr(why, "at most 256 attributes") && strstr(why, "'x252'"), "%s",
              why ? why : "257 attributes accepted");
    snprintf(ev + at, sizeof ev - at, ",\"a\":1,\"a\":2}");
    why = check(ev);
    cr_expect(why != NULL, "257 attributes, one given twice, accepted");
}
