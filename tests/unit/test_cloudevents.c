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
    return ce_check(ev, strlen(ev), why, sizeof why, &id, &idlen) ? NULL : why;
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
    cr_assert(ce_check(ev, strlen(ev), why, sizeof why, &id, &idlen));
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
        { "{" BASE ",\"ext\":null}", "extension attribute 'ext' must be a string, a number or a boolean" },
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
