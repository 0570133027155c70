/*
 * test_metrics.c — the pieces of runtime/center/metrics.c that stand alone: the Prometheus
 * text format's label escaping and histogram lines, the histograms' buckets, RFC 3339 times,
 * and bus slots kept by name.  The counts themselves are tested end to end
 * (tests/e2e/metrics.sh).
 */
#include <criterion/criterion.h>
#include <string.h>

#include "../../runtime/center/center.h"

/* s escaped as a label value, as a NUL-terminated string (the caller frees). */
static char *escaped(const char *s)
{
    sbuf b = { 0 };
    mt_prom_label(&b, s);
    sb_put(&b, "", 1);
    return b.v;
}

Test(metrics, label_values_escape_backslash_quote_and_line_feed)
{
    char *e = escaped("plain-name_1.x");
    cr_assert_str_eq(e, "plain-name_1.x");
    free(e);
    e = escaped("a\\b\"c\nd");
    cr_assert_str_eq(e, "a\\\\b\\\"c\\nd");
    free(e);
    e = escaped("");
    cr_assert_str_eq(e, "");
    free(e);
    e = escaped("tab\there é");              /* anything else goes as it is (UTF-8) */
    cr_assert_str_eq(e, "tab\there é");
    free(e);
}

Test(metrics, observations_fall_in_the_first_bucket_at_or_above_them)
{
    cr_assert_eq(mt_hist_bucket(0), 0);
    cr_assert_eq(mt_hist_bucket(1000000), 0);              /* le="0.001" holds 1 ms exactly */
    cr_assert_eq(mt_hist_bucket(1000001), 1);
    cr_assert_eq(mt_hist_bucket(2500000), 1);
    cr_assert_eq(mt_hist_bucket(999999999), 9);            /* le="1" */
    cr_assert_eq(mt_hist_bucket(1000000000), 9);
    cr_assert_eq(mt_hist_bucket(60000000000LL), MT_NBUCKETS - 1);
    cr_assert_eq(mt_hist_bucket(60000000001LL), MT_NBUCKETS);     /* +Inf */
    cr_assert_eq(mt_hist_bucket(INT64_MAX), MT_NBUCKETS);
}

Test(metrics, a_histogram_has_cumulative_buckets_a_sum_and_a_count)
{
    uint64_t bucket[MT_NBUCKETS + 1] = { 0 };
    bucket[mt_hist_bucket(500000)]++;              /* 0.5 ms */
    bucket[mt_hist_bucket(300000000)]++;           /* 0.3 s */
    bucket[mt_hist_bucket(120000000000LL)]++;      /* 2 min */
    sbuf b = { 0 };
    mt_prom_hist(&b, "x_seconds", "target", "t\"1", bucket, 120300500000ULL, 3);
    sb_put(&b, "", 1);
    cr_assert(strstr(b.v, "x_seconds_bucket{target=\"t\\\"1\",le=\"0.001\"} 1\n"), "%s", b.v);
    cr_assert(strstr(b.v, "x_seconds_bucket{target=\"t\\\"1\",le=\"0.25\"} 1\n"), "%s", b.v);
    cr_assert(strstr(b.v, "x_seconds_bucket{target=\"t\\\"1\",le=\"0.5\"} 2\n"), "%s", b.v);
    cr_assert(strstr(b.v, "x_seconds_bucket{target=\"t\\\"1\",le=\"60\"} 2\n"), "%s", b.v);
    cr_assert(strstr(b.v, "x_seconds_bucket{target=\"t\\\"1\",le=\"+Inf\"} 3\n"), "%s", b.v);
    cr_assert(strstr(b.v, "x_seconds_sum{target=\"t\\\"1\"} 120.300500000\n"), "%s", b.v);
    cr_assert(strstr(b.v, "x_seconds_count{target=\"t\\\"1\"} 3\n"), "%s", b.v);
    /* one line per bucket, the +Inf one included, then the sum and the count */
    size_t lines = 0;
    for (const char *p = b.v; *p; p++)
        lines += *p == '\n';
    cr_assert_eq(lines, MT_NBUCKETS + 1 + 2);
    free(b.v);
}

Test(metrics, times_are_rfc3339_utc_with_milliseconds)
{
    char t[40];
    rt_time_text(0, t, sizeof t);
    cr_assert_str_eq(t, "1970-01-01T00:00:00.000Z");
    rt_time_text(1796486400123LL, t, sizeof t);
    cr_assert_str_eq(t, "2026-12-05T16:00:00.123Z");
}

Test(metrics, reasons_have_names)
{
    cr_assert_str_eq(mt_reason_name(MT_INVALID), "invalid");
    cr_assert_str_eq(mt_reason_name(MT_TOO_LARGE), "too_large");
    cr_assert_str_eq(mt_reason_name(MT_UNAUTHORIZED), "unauthorized");
    cr_assert_str_eq(mt_reason_name(MT_UNKNOWN_BUS), "unknown_bus");
    cr_assert_str_eq(mt_reason_name(MT_OVERLOADED), "overloaded");
    cr_assert_str_eq(mt_reason_name(MT_STORAGE), "storage");
}

Test(metrics, a_bus_slot_is_found_again_by_name)
{
    struct mt_bus *a = mt_bus_slot("unit-bus"), *b = mt_bus_slot("unit-bus"),
                  *c = mt_bus_slot("unit-other");
    cr_assert_not_null(a);
    cr_assert_eq(a, b);
    cr_assert_neq(a, c);
    for (int i = 0; i < 500; i++) {               /* the table grows: slots stay where they are */
        char name[32];
        snprintf(name, sizeof name, "grow-%d", i);
        cr_assert_not_null(mt_bus_slot(name));
    }
    cr_assert_eq(mt_bus_slot("unit-bus"), a);
    ebd_bus bus = { .name = "unit-bus", .mt = a };
    mt_ingested(&bus, 3);
    mt_refused(&bus, MT_TOO_LARGE, 1);
    ebd_bus none = { .name = "x" };
    mt_ingested(&none, 1);                        /* no slot: nothing counted, no crash */
    mt_refused(NULL, MT_INVALID, 1);
}
