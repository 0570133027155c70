/*
 * test_cron.c — schedule expressions (runtime/sources/cron.c) and time zones (tz.c): rate forms,
 * each cron field feature with its firings written out as UTC wall times, the five-field
 * leniency, errors with their byte spans, Europe/Paris and America/New_York across both DST
 * changes of 2026 and past 2037 (where the TZif footer rules), offsets of ten zones against
 * Python's zoneinfo, a zone written by hand with only a footer, and a randomized cross-check of
 * UTC cron firings against a brute-force reference written independently below.
 */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../runtime/sources/cron.h"

/* "2026-03-20 10:00" (UTC) as Unix seconds. */
static int64_t utc(const char *s)
{
    struct tm tm = { 0 };
    cr_assert(sscanf(s, "%d-%d-%d %d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                     &tm.tm_min) == 5, "bad date %s", s);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm);
}

static sched *parse_ok(const char *text, const char *tz)
{
    char err[200] = "";
    size_t at = 0, len = 0;
    sched *s = sched_parse(text, tz, err, sizeof err, &at, &len);
    cr_assert(s, "%s refused: %s", text, err);
    return s;
}

/* Asserts the firings after `from` are exactly `want` (UTC wall times; NULL-terminated; a
 * final "none" for INT64_MAX). */
static void firings(const char *text, const char *tz, const char *from, const char *const *want)
{
    sched *s = parse_ok(text, tz);
    int64_t t = utc(from);
    for (int i = 0; want[i]; i++) {
        t = sched_next(s, t);
        int64_t w = strcmp(want[i], "none") == 0 ? INT64_MAX : utc(want[i]);
        time_t tt = (time_t)t;
        char got[40] = "none";
        if (t != INT64_MAX)
            strftime(got, sizeof got, "%Y-%m-%d %H:%M", gmtime(&tt));
        cr_assert_eq(t, w, "%s (%s) firing %d after %s: got %s, want %s", text,
                     tz ? tz : "UTC", i + 1, from, got, want[i]);
    }
    sched_free(s);
}

#define FIRES(text, tz, from, ...) firings(text, tz, from, (const char *const[]){ __VA_ARGS__, NULL })

/* Asserts that text is refused with this message and this span (the text the span covers). */
static void refused(const char *text, const char *tz, const char *msg, const char *where)
{
    char err[200] = "";
    size_t at = 99, len = 99;
    sched *s = sched_parse(text, tz, err, sizeof err, &at, &len);
    cr_assert_null(s, "%s accepted", text);
    cr_assert_str_eq(err, msg, "%s", text);
    cr_assert(at + len <= strlen(text), "%s: span %zu+%zu", text, at, len);
    char got[200];
    snprintf(got, sizeof got, "%.*s", (int)len, text + at);
    cr_assert_str_eq(got, where, "%s: span of '%s'", text, msg);
}

/* ---- rate ----------------------------------------------------------------------------------- */

Test(cron, rate_counts_from_the_epoch)
{
    sched *s = parse_ok("rate(30 seconds)", NULL);
    int64_t t = utc("2026-03-20 10:00");
    cr_assert_eq(sched_next(s, t), t + 30);
    cr_assert_eq(sched_next(s, t + 1), t + 30);
    cr_assert_eq(sched_next(s, t - 1), t);
    cr_assert_eq(sched_next(s, -1), 0);
    cr_assert_eq(sched_next(s, INT64_MAX - 5), INT64_MAX);
    sched_free(s);
    FIRES("rate(1 day)", "America/New_York", "2026-03-20 10:00", "2026-03-21 00:00",
          "2026-03-22 00:00");
    FIRES("rate(1 minute)", NULL, "2026-03-20 10:00", "2026-03-20 10:01");
    FIRES("rate(5 minutes)", NULL, "2026-03-20 10:03", "2026-03-20 10:05", "2026-03-20 10:10");
    FIRES("rate(2 hours)", "Europe/Paris", "2026-03-20 09:00", "2026-03-20 10:00",
          "2026-03-20 12:00");
    FIRES("rate(1 hour)", NULL, "2026-03-20 09:59", "2026-03-20 10:00");
    FIRES("rate(365 days)", NULL, "1970-12-31 00:00", "1971-01-01 00:00");
    FIRES("rate( 3  days )", NULL, "1970-01-01 00:00", "1970-01-04 00:00");
}

Test(cron, rate_errors)
{
    refused("rate(1 minutes)", NULL, "write 'rate(1 minute)'", "minutes");
    refused("rate(5 minute)", NULL, "write 'rate(5 minutes)'", "minute");
    refused("rate(1 seconds)", NULL, "write 'rate(1 second)'", "seconds");
    refused("rate(2 day)", NULL, "write 'rate(2 days)'", "day");
    refused("rate(0 minutes)", NULL, "rate value '0' is not a positive whole number", "0");
    refused("rate(-5 minutes)", NULL, "rate value '-5' is not a positive whole number", "-5");
    refused("rate(1.5 hours)", NULL, "rate value '1.5' is not a positive whole number", "1.5");
    refused("rate(5 weeks)", NULL,
            "rate unit 'weeks' is not one of minute(s), hour(s), day(s), second(s)", "weeks");
    refused("rate(366 days)", NULL, "rate period '366 days' is longer than a year (365 days)",
            "366 days");
    refused("rate(99999999999999 seconds)", NULL,
            "rate period '99999999999999 seconds' is longer than a year (365 days)",
            "99999999999999 seconds");
    refused("rate(5)", NULL, "a rate is 'rate(VALUE UNIT)', e.g. 'rate(5 minutes)'", "5");
    refused("rate(5 minutes now)", NULL, "a rate is 'rate(VALUE UNIT)', e.g. 'rate(5 minutes)'",
            "5 minutes now");
    refused("rate(5 minutes", NULL, "a schedule must end with ')'", "rate(5 minutes");
    refused("every 5 minutes", NULL, "a schedule is 'rate(VALUE UNIT)' or 'cron(FIELDS)'",
            "every 5 minutes");
    refused("", NULL, "a schedule is 'rate(VALUE UNIT)' or 'cron(FIELDS)'", "");
}

/* ---- cron fields ---------------------------------------------------------------------------- */

Test(cron, minutes_and_hours)
{
    FIRES("cron(*/15 * * * ? *)", NULL, "2026-01-01 00:07", "2026-01-01 00:15",
          "2026-01-01 00:30", "2026-01-01 00:45", "2026-01-01 01:00");
    FIRES("cron(10/15 * * * ? *)", NULL, "2026-01-01 00:00", "2026-01-01 00:10",
          "2026-01-01 00:25", "2026-01-01 00:40", "2026-01-01 00:55", "2026-01-01 01:10");
    FIRES("cron(1-10/4 9 * * ? *)", NULL, "2026-01-01 00:00", "2026-01-01 09:01",
          "2026-01-01 09:05", "2026-01-01 09:09", "2026-01-02 09:01");
    FIRES("cron(0,30 10,15 * * ? *)", NULL, "2026-01-01 10:00", "2026-01-01 10:30",
          "2026-01-01 15:00", "2026-01-01 15:30", "2026-01-02 10:00");
    /* hours wrap past midnight */
    FIRES("cron(0 22-1 * * ? *)", NULL, "2026-01-01 02:00", "2026-01-01 22:00",
          "2026-01-01 23:00", "2026-01-02 00:00", "2026-01-02 01:00", "2026-01-02 22:00");
    FIRES("cron(0 23-1/2 * * ? *)", NULL, "2026-01-01 02:00", "2026-01-01 23:00",
          "2026-01-02 01:00", "2026-01-02 23:00");
    FIRES("cron(59 23 31 12 ? *)", NULL, "2026-06-01 00:00", "2026-12-31 23:59",
          "2027-12-31 23:59");
}

Test(cron, months_and_years)
{
    FIRES("cron(0 0 1 JAN,jul ? *)", NULL, "2026-01-01 00:00", "2026-07-01 00:00",
          "2027-01-01 00:00");
    FIRES("cron(0 0 1 NOV-FEB ? *)", NULL, "2026-03-01 00:00", "2026-11-01 00:00",
          "2026-12-01 00:00", "2027-01-01 00:00", "2027-02-01 00:00", "2027-11-01 00:00");
    FIRES("cron(0 0 1 */5 ? *)", NULL, "2026-01-01 00:00", "2026-06-01 00:00",
          "2026-11-01 00:00", "2027-01-01 00:00");
    FIRES("cron(0 0 1 1 ? 2030-2031)", NULL, "2026-05-01 00:00", "2030-01-01 00:00",
          "2031-01-01 00:00", "none");
    FIRES("cron(0 0 1 1 ? 2030/50)", NULL, "2026-05-01 00:00", "2030-01-01 00:00",
          "2080-01-01 00:00", "2130-01-01 00:00", "2180-01-01 00:00", "none");
    FIRES("cron(0 0 1 1 ? 1990,2199)", NULL, "2026-05-01 00:00", "2199-01-01 00:00", "none");
    FIRES("cron(0 0 1 1 ? 1990)", NULL, "2026-05-01 00:00", "none");
    FIRES("cron(0 0 1 1 ? 1970)", NULL, "1969-05-01 00:00", "1970-01-01 00:00", "none");
}

Test(cron, day_of_week)
{
    /* 2026-03-19 is a Thursday; 1 = Sunday */
    FIRES("cron(0 10 ? * MON-FRI *)", NULL, "2026-03-19 12:00", "2026-03-20 10:00",
          "2026-03-23 10:00");
    FIRES("cron(0 10 ? * 1,7 *)", NULL, "2026-03-19 12:00", "2026-03-21 10:00",
          "2026-03-22 10:00", "2026-03-28 10:00");
    /* a range that wraps past Saturday: FRI, SAT, SUN, MON */
    FIRES("cron(0 10 ? * FRI-MON *)", NULL, "2026-03-19 12:00", "2026-03-20 10:00",
          "2026-03-21 10:00", "2026-03-22 10:00", "2026-03-23 10:00", "2026-03-27 10:00");
    FIRES("cron(0 10 ? * sat-sun *)", NULL, "2026-03-19 12:00", "2026-03-21 10:00",
          "2026-03-22 10:00", "2026-03-28 10:00");
    FIRES("cron(0 10 ? * 2/3 *)", NULL, "2026-03-19 12:00", "2026-03-23 10:00",
          "2026-03-26 10:00", "2026-03-30 10:00");
    /* L alone: the last day of the week, Saturday */
    FIRES("cron(0 0 ? * L *)", NULL, "2026-03-19 12:00", "2026-03-21 00:00",
          "2026-03-28 00:00");
    /* 5L: the last Thursday of the month */
    FIRES("cron(0 0 ? * 5L *)", NULL, "2026-03-01 00:00", "2026-03-26 00:00",
          "2026-04-30 00:00", "2026-05-28 00:00");
    FIRES("cron(0 0 ? * friL,1 *)", NULL, "2026-03-20 12:00", "2026-03-22 00:00",
          "2026-03-27 00:00", "2026-03-29 00:00");
    /* 3#2: the second Tuesday; 2#5: the fifth Monday, in the months that have one */
    FIRES("cron(0 0 ? * 3#2 *)", NULL, "2026-03-01 00:00", "2026-03-10 00:00",
          "2026-04-14 00:00");
    FIRES("cron(0 0 ? * MON#5 *)", NULL, "2026-03-01 00:00", "2026-03-30 00:00",
          "2026-06-29 00:00", "2026-08-31 00:00");
}

Test(cron, day_of_month)
{
    FIRES("cron(0 0 L * ? *)", NULL, "2026-01-15 00:00", "2026-01-31 00:00",
          "2026-02-28 00:00", "2026-03-31 00:00", "2026-04-30 00:00");
    FIRES("cron(0 0 L 2 ? *)", NULL, "2027-03-01 00:00", "2028-02-29 00:00",
          "2029-02-28 00:00");
    /* 3W: January 3 2026 is a Saturday (so Friday the 2nd), February 3 a Tuesday, May 3 a
     * Sunday (so Monday the 4th) */
    FIRES("cron(0 0 3W JAN,FEB,MAY ? *)", NULL, "2026-01-01 00:00", "2026-01-02 00:00",
          "2026-02-03 00:00", "2026-05-04 00:00");
    /* 1W never leaves the month: August 1 2026 is a Saturday, so Monday the 3rd */
    FIRES("cron(0 0 1W AUG ? 2026)", NULL, "2026-01-01 00:00", "2026-08-03 00:00", "none");
    /* 31W in a month without a 31st does not fire; May 31 2026 is a Sunday: Friday the 29th */
    FIRES("cron(0 0 31W 4,5 ? 2026)", NULL, "2026-01-01 00:00", "2026-05-29 00:00", "none");
    /* LW: the last weekday; January 31 2026 is a Saturday, May 31 a Sunday */
    FIRES("cron(0 0 LW * ? 2026)", NULL, "2026-01-01 00:00", "2026-01-30 00:00",
          "2026-02-27 00:00", "2026-03-31 00:00", "2026-04-30 00:00", "2026-05-29 00:00");
    FIRES("cron(0 0 28-2 * ? *)", NULL, "2026-02-01 00:00", "2026-02-02 00:00",
          "2026-02-28 00:00", "2026-03-01 00:00", "2026-03-02 00:00", "2026-03-28 00:00");
    FIRES("cron(0 0 1,L,15W * ? *)", NULL, "2026-02-01 00:00", "2026-02-16 00:00",
          "2026-02-28 00:00", "2026-03-01 00:00", "2026-03-16 00:00");
    FIRES("cron(0 0 */10 * ? *)", NULL, "2026-02-01 00:00", "2026-02-11 00:00",
          "2026-02-21 00:00", "2026-03-01 00:00");
}

Test(cron, impossible_expressions_end_quickly, .timeout = 10)
{
    const char *never[] = { "cron(0 0 30 2 ? *)", "cron(0 0 31 4,6,9,11 ? *)",
                            "cron(0 0 ? 2 MON#5 2026-2027)", "cron(* * 31 2 ? *)" };
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++) {
        sched *s = parse_ok(never[i], "Europe/Paris");
        clock_t c0 = clock();
        for (int k = 0; k < 10; k++)
            cr_assert_eq(sched_next(s, -86400LL * 365 * 10 + k), INT64_MAX, "%s", never[i]);
        cr_assert_lt((double)(clock() - c0) / CLOCKS_PER_SEC, 5.0, "%s is slow", never[i]);
        sched_free(s);
    }
    FIRES("cron(0 0 29 2 ? 2100-2199)", NULL, "2026-01-01 00:00", "2104-02-29 00:00");
}

/* AWS wants six fields with one day field '?'; five fields (no year) are accepted too, where a
 * literal '*' in a day field yields to the other. */
Test(cron, five_fields)
{
    FIRES("cron(0 2 * * *)", NULL, "2026-03-19 12:00", "2026-03-20 02:00", "2026-03-21 02:00");
    FIRES("cron(0 2 * * MON)", NULL, "2026-03-19 12:00", "2026-03-23 02:00", "2026-03-30 02:00");
    FIRES("cron(0 2 15 * *)", NULL, "2026-03-19 12:00", "2026-04-15 02:00", "2026-05-15 02:00");
    FIRES("cron(0 2 ? * MON)", NULL, "2026-03-19 12:00", "2026-03-23 02:00");
    FIRES("cron(0 2 ? * MON#2)", NULL, "2026-03-19 12:00", "2026-04-13 02:00");
    /* a day of the week by number: Monday in a crontab, Sunday to AWS; refused, not guessed */
    refused("cron(0 2 * * 1-5)", NULL, "in five fields, write days of the week by name (MON-FRI): "
            "classic cron counts 0 as Sunday and 1 as Monday, AWS 1 as Sunday; or write six "
            "fields, AWS's way", "1-5");
    refused("cron(0 2 ? * 5L)", NULL, "in five fields, write days of the week by name (MON-FRI): "
            "classic cron counts 0 as Sunday and 1 as Monday, AWS 1 as Sunday; or write six "
            "fields, AWS's way", "5L");
    FIRES("cron(0 2 15 * ?)", NULL, "2026-03-19 12:00", "2026-04-15 02:00");
    FIRES("cron(0 2 */2 * *)", NULL, "2026-03-19 12:00", "2026-03-21 02:00");
    refused("cron(0 2 15 * MON)", NULL,
            "day-of-month and day-of-week cannot both be given: one must be '?' or '*'",
            "15 * MON");
    refused("cron(0 2 ? * ?)", NULL,
            "day-of-month and day-of-week cannot both be '?': give one of them", "? * ?");
    /* six fields keep AWS's rule: '*' in both is refused */
    refused("cron(0 2 * * * *)", NULL,
            "day-of-month and day-of-week cannot both be given: one must be '?'", "* * *");
    FIRES("cron(0 2 ? * * *)", NULL, "2026-03-19 12:00", "2026-03-20 02:00");
}

Test(cron, field_errors)
{
    refused("cron(61 10 * * ? *)", NULL, "minutes value 61 is out of range 0-59", "61");
    refused("cron(0 24 * * ? *)", NULL, "hours value 24 is out of range 0-23", "24");
    refused("cron(0 1 0 * ? *)", NULL, "day-of-month value 0 is out of range 1-31", "0");
    refused("cron(0 1 32W * ? *)", NULL, "day-of-month value 32 is out of range 1-31", "32");
    refused("cron(0 1 ? 13 2 *)", NULL, "month value 13 is out of range 1-12", "13");
    refused("cron(0 1 ? JANUARY 2 *)", NULL, "month value 'JANUARY' is not 1-12 or JAN-DEC",
            "JANUARY");
    refused("cron(0 1 ? * 0 *)", NULL, "day-of-week value 0 is out of range 1-7", "0");
    refused("cron(0 1 ? * MON-FUN *)", NULL, "day-of-week value 'FUN' is not 1-7 or SUN-SAT",
            "FUN");
    refused("cron(0 1 * * ? 1969)", NULL, "year value 1969 is out of range 1970-2199", "1969");
    refused("cron(0 1 * * ? 2030-2020)", NULL, "year range 2030-2020 runs backwards",
            "2030-2020");
    refused("cron(x 1 * * ? *)", NULL, "minutes value 'x' is not a number 0-59", "x");
    refused("cron(*/0 1 * * ? *)", NULL, "minutes step '0' is not a whole number 1-60", "0");
    refused("cron(*/61 1 * * ? *)", NULL, "minutes step '61' is not a whole number 1-60", "61");
    refused("cron(1-/2 1 * * ? *)", NULL, "minutes field has an empty value", "");
    refused("cron(1,,2 1 * * ? *)", NULL, "minutes field has an empty item", "1,,2");
    refused("cron(? 1 * * ? *)", NULL, "'?' is only allowed in day-of-month and day-of-week",
            "?");
    refused("cron(0 1 ?,1 * ? *)", NULL, "day-of-month '?' must stand alone, not in a list", "?");
    refused("cron(0 L * * ? *)", NULL, "'L', 'W' and '#' are only allowed in the day fields",
            "L");
    refused("cron(0 1 ? * 2W *)", NULL, "'W' is only allowed in day-of-month", "2W");
    refused("cron(0 1 1#2 * ? *)", NULL, "'#' is only allowed in day-of-week", "1#2");
    refused("cron(0 1 ? * 3#6 *)", NULL, "day-of-week '#6' is not an occurrence 1-5", "6");
    refused("cron(0 1 ? * 3#1,6#3 *)", NULL, "day-of-week '#' must stand alone, not in a list",
            "3#1");
    refused("cron(0 1 5L * ? *)", NULL, "day-of-month value '5L' is not a number 1-31", "5L");
    refused("cron(0 1 15 * 2 *)", NULL,
            "day-of-month and day-of-week cannot both be given: one must be '?'", "15 * 2");
    refused("cron(0 1 * *)", NULL, "a cron expression has 6 fields (minutes hours day-of-month "
                                   "month day-of-week year), or 5 without the year; this one "
                                   "has 4", "0 1 * *");
    refused("cron(0 1 * * ? * 7)", NULL, "a cron expression has 6 fields (minutes hours "
                                         "day-of-month month day-of-week year), or 5 without "
                                         "the year; this one has 7", "0 1 * * ? * 7");
}

/* ---- time zones ----------------------------------------------------------------------------- */

Test(cron, unknown_time_zones)
{
    const char *bad[] = { "Europe/Nowhere", "../etc/passwd", "/etc/localtime", "Europe/../UTC",
                          "Europe/Paris ", "Europe", "Europe/Paris\n", "" };
    for (size_t i = 0; i + 1 < sizeof bad / sizeof bad[0]; i++) {
        char err[200], want[200];
        size_t at = 9, len = 9;
        cr_assert_null(sched_parse("cron(0 2 * * ? *)", bad[i], err, sizeof err, &at, &len));
        snprintf(want, sizeof want, "unknown time zone '%s'", bad[i]);
        cr_assert_str_eq(err, want);
        cr_assert(at == 0 && len == 0);
    }
    /* "", NULL and "UTC" are UTC without a file */
    FIRES("cron(0 2 * * ? *)", "", "2026-03-19 12:00", "2026-03-20 02:00");
    FIRES("cron(0 2 * * ? *)", "UTC", "2026-03-19 12:00", "2026-03-20 02:00");
    FIRES("cron(0 2 * * ? *)", "Etc/GMT+5", "2026-03-19 12:00", "2026-03-20 07:00");
}

Test(cron, paris_across_dst_2026)
{
    /* spring forward on March 29 (02:00 CET -> 03:00 CEST): 02:30 does not exist that day */
    FIRES("cron(30 2 * * ? *)", "Europe/Paris", "2026-03-27 12:00", "2026-03-28 01:30",
          "2026-03-30 00:30");
    FIRES("cron(0 3 * * ? *)", "Europe/Paris", "2026-03-28 12:00", "2026-03-29 01:00",
          "2026-03-30 01:00");
    FIRES("cron(0 * 29 3 ? 2026)", "Europe/Paris", "2026-03-28 23:30", "2026-03-29 00:00",
          "2026-03-29 01:00", "2026-03-29 02:00");
    /* fall back on October 25 (03:00 CEST -> 02:00 CET): 02:30 occurs twice, fires once */
    FIRES("cron(30 2 * * ? *)", "Europe/Paris", "2026-10-24 12:00", "2026-10-25 00:30",
          "2026-10-26 01:30");
    FIRES("cron(30 2 * * ? *)", "Europe/Paris", "2026-10-25 01:15", "2026-10-26 01:30");
    FIRES("cron(0 * 25 10 ? 2026)", "Europe/Paris", "2026-10-24 23:30", "2026-10-25 00:00",
          "2026-10-25 02:00", "2026-10-25 03:00");
    FIRES("cron(0 2 * * ? *)", "Europe/Paris", "2026-03-20 12:00", "2026-03-21 01:00");
}

Test(cron, new_york_across_dst_2026)
{
    /* spring forward on March 8 (02:00 EST -> 03:00 EDT) */
    FIRES("cron(30 2 * * ? *)", "America/New_York", "2026-03-07 00:00", "2026-03-07 07:30",
          "2026-03-09 06:30");
    /* fall back on November 1 (02:00 EDT -> 01:00 EST) */
    FIRES("cron(30 1 * * ? *)", "America/New_York", "2026-10-31 12:00", "2026-11-01 05:30",
          "2026-11-02 06:30");
    FIRES("cron(30 1 * * ? *)", "America/New_York", "2026-11-01 06:00", "2026-11-02 06:30");
    FIRES("cron(0 9 ? * MON-FRI *)", "America/New_York", "2026-10-30 12:00",
          "2026-10-30 13:00", "2026-11-02 14:00");
}

Test(cron, past_2037_the_footer_rules)
{
    /* 2040: last Sundays March 25 and October 28 */
    FIRES("cron(30 2 * * ? *)", "Europe/Paris", "2040-03-23 12:00", "2040-03-24 01:30",
          "2040-03-26 00:30");
    FIRES("cron(30 2 * * ? *)", "Europe/Paris", "2040-10-27 12:00", "2040-10-28 00:30",
          "2040-10-29 01:30");
    FIRES("cron(0 2 1 * ? *)", "Europe/Paris", "2040-06-15 00:00", "2040-07-01 00:00");
    FIRES("cron(0 2 1 12 ? *)", "Europe/Paris", "2040-06-15 00:00", "2040-12-01 01:00");
    /* 2050: second Sunday of March 13, first of November 6 */
    FIRES("cron(30 2 * * ? *)", "America/New_York", "2050-03-12 00:00", "2050-03-12 07:30",
          "2050-03-14 06:30");
    FIRES("cron(30 1 * * ? *)", "America/New_York", "2050-11-05 12:00", "2050-11-06 05:30",
          "2050-11-07 06:30");
}

/* Offsets at instants from 1900 to 2300, as Python's zoneinfo reads the same files: southern
 * DST (Sydney), negative DST (Dublin), quarter hours (Chatham), negative rule times (Nuuk). */
static const struct {
    const char *zone;
    int64_t t;
    int32_t offset;
} OFFSETS[] = {
    { "Europe/Paris", 2733870775LL, 7200 },       { "Europe/Paris", 586753488LL, 7200 },
    { "Europe/Paris", 92606891LL, 3600 },         { "Europe/Paris", 7951567736LL, 3600 },
    { "Europe/Paris", -29568907LL, 3600 },        { "Europe/Paris", -2047946152LL, 561 },
    { "America/New_York", 3948472538LL, -18000 }, { "America/New_York", -1908962033LL, -18000 },
    { "America/New_York", 6770555225LL, -14400 }, { "America/New_York", -385692762LL, -14400 },
    { "America/New_York", 9932248623LL, -14400 }, { "America/New_York", 7339749849LL, -14400 },
    { "Australia/Sydney", 9075750965LL, 36000 },  { "Australia/Sydney", 1861390121LL, 39600 },
    { "Australia/Sydney", 8859584079LL, 36000 },  { "Australia/Sydney", -505259116LL, 36000 },
    { "Australia/Sydney", 1983994956LL, 39600 },  { "Australia/Sydney", 6581016880LL, 36000 },
    { "America/Sao_Paulo", 1478105163LL, -7200 }, { "America/Sao_Paulo", 3329840918LL, -10800 },
    { "America/Sao_Paulo", 7000516644LL, -10800 }, { "America/Sao_Paulo", 9886181807LL, -10800 },
    { "Asia/Kolkata", -1432774901LL, 19800 },     { "Asia/Kolkata", 8878899473LL, 19800 },
    { "Asia/Kolkata", 535123655LL, 19800 },       { "Asia/Kolkata", -609553533LL, 19800 },
    { "Pacific/Chatham", 6636930868LL, 45900 },   { "Pacific/Chatham", 2970564447LL, 49500 },
    { "Pacific/Chatham", 9303241428LL, 49500 },   { "Pacific/Chatham", -921499347LL, 44100 },
    { "America/Nuuk", 1202845095LL, -10800 },     { "America/Nuuk", -1160602245LL, -10800 },
    { "America/Nuuk", 4553109551LL, -3600 },      { "America/Nuuk", 5844665415LL, -7200 },
    { "Africa/Casablanca", 7617629064LL, 3600 },  { "Africa/Casablanca", 2000830136LL, 3600 },
    { "Africa/Casablanca", -413164952LL, 0 },     { "Africa/Casablanca", 4186059010LL, 3600 },
    { "Europe/Dublin", 660976464LL, 0 },          { "Europe/Dublin", 9664752670LL, 3600 },
    { "Europe/Dublin", 3433513804LL, 3600 },      { "Europe/Dublin", 4638777677LL, 0 },
    { "Europe/Dublin", -249601814LL, 0 },         { "America/St_Johns", 1398645374LL, -9000 },
    { "America/St_Johns", 6143352918LL, -9000 },  { "America/St_Johns", 643523226LL, -9000 },
};

Test(cron, offsets_match_zoneinfo)
{
    for (size_t i = 0; i < sizeof OFFSETS / sizeof OFFSETS[0]; i++) {
        tz_zone *z = tz_load(OFFSETS[i].zone);
        cr_assert(z, "%s", OFFSETS[i].zone);
        cr_assert_eq(tz_offset(z, OFFSETS[i].t), OFFSETS[i].offset, "%s at %lld",
                     OFFSETS[i].zone, (long long)OFFSETS[i].t);
        tz_free(z);
    }
}

/* A TZif file with no transition at all, only a footer with quoted names and negative rule
 * times (America/Nuuk's rule since 2023): everything comes from the footer. */
static void write_footer_only_zone(const char *dir)
{
    unsigned char hdr[44] = "TZif2";
    hdr[39] = 1; /* typecnt */
    hdr[43] = 4; /* charcnt */
    const unsigned char data[10] = { 0xff, 0xff, 0xd5, 0xd0, 0, 0, '-', '0', '3', 0 };
    const char footer[] = "\n<-03>3<-02>,M3.5.0/-2,M10.5.0/-1\n";
    char path[400], sub[400];
    snprintf(sub, sizeof sub, "%s/Test", dir);
    snprintf(path, sizeof path, "%s/Test/Nuuk", dir);
    cr_assert_eq(mkdir(dir, 0700), 0);
    cr_assert_eq(mkdir(sub, 0700), 0);
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    fwrite(hdr, 1, 44, f);
    fwrite(data, 1, 10, f);
    fwrite(hdr, 1, 44, f);
    fwrite(data, 1, 10, f);
    fwrite(footer, 1, strlen(footer), f);
    fclose(f);
}

Test(cron, footer_only_zone_from_tzdir)
{
    char dir[] = "/tmp/ebr-tz-XXXXXX";
    cr_assert(mkdtemp(dir));
    char zdir[300];
    snprintf(zdir, sizeof zdir, "%s/z", dir);
    write_footer_only_zone(zdir);
    setenv("TZDIR", zdir, 1); /* this test's process only (Criterion forks per test) */
    tz_zone *z = tz_load("Test/Nuuk");
    cr_assert(z);
    /* 2026: -03 until March 29 01:00Z, -02 until October 25 01:00Z */
    cr_assert_eq(tz_offset(z, utc("2026-03-29 01:00") - 1), -10800);
    cr_assert_eq(tz_offset(z, utc("2026-03-29 01:00")), -7200);
    cr_assert_eq(tz_offset(z, utc("2026-10-25 01:00") - 1), -7200);
    cr_assert_eq(tz_offset(z, utc("2026-10-25 01:00")), -10800);
    cr_assert_eq(tz_offset(z, utc("2100-01-01 00:00")), -10800);
    tz_free(z);
    FIRES("cron(0 12 1 * ? *)", "Test/Nuuk", "2026-03-01 00:00", "2026-03-01 15:00",
          "2026-04-01 14:00");
    char err[200];
    size_t at, len;
    cr_assert_null(sched_parse("rate(1 day)", "Europe/Paris", err, sizeof err, &at, &len));
    cr_assert_str_eq(err, "unknown time zone 'Europe/Paris'");
    char path[400];
    snprintf(path, sizeof path, "%s/Test/Nuuk", zdir);
    unlink(path);
    snprintf(path, sizeof path, "%s/Test", zdir);
    rmdir(path);
    rmdir(zdir);
    rmdir(dir);
}

/* ---- randomized cross-check against a brute-force reference (UTC) --------------------------- */

/* A field as the reference sees it: which values it admits, written independently of cron.c
 * (a value v is in lo-hi/step when its distance from lo, counted around the field, is within
 * the range and a multiple of the step). */
typedef struct {
    bool in[2200];
} ref_set;

typedef struct {
    ref_set f[6];
    bool dom_any, dow_any;
    int dom_kind; /* 0 plain, 1 L, 2 LW, 3 nW */
    int dom_n;
    int dow_kind; /* 0 plain, 1 nL, 2 d#n */
    int dow_d, dow_n;
} ref_expr;

static const int LO[6] = { 0, 0, 1, 1, 1, 2024 }, HI[6] = { 59, 23, 31, 12, 7, 2032 };

static int rnd(int a, int b)
{
    return a + rand() % (b - a + 1);
}

static void ref_range(ref_set *s, int lo_f, int hi_f, int lo, int hi, int step)
{
    int n = hi_f - lo_f + 1;
    for (int v = lo_f; v <= hi_f; v++) {
        int dist = ((v - lo) % n + n) % n, width = ((hi - lo) % n + n) % n;
        if (dist <= width && dist % step == 0)
            s->in[v] = true;
    }
}

/* One random plain item of field f (values, ranges that may wrap, steps, '*'), appended to
 * out and added to s. */
static void random_item(int f, ref_set *s, char *out, size_t cap)
{
    int lo_f = f == 5 ? 1970 : LO[f], hi_f = f == 5 ? 2199 : HI[f];
    int a = rnd(LO[f], HI[f]), b = rnd(LO[f], HI[f]), step = rnd(1, f == 5 ? 3 : HI[f] / 3 + 1);
    size_t k = strlen(out);
    switch (rnd(0, 4)) {
    case 0:
        snprintf(out + k, cap - k, "%d", a);
        ref_range(s, lo_f, hi_f, a, a, 1);
        break;
    case 1:
        if (f == 5 && a > b) {
            int t = a;
            a = b;
            b = t;
        }
        snprintf(out + k, cap - k, "%d-%d", a, b);
        ref_range(s, lo_f, hi_f, a, b, 1);
        break;
    case 2:
        snprintf(out + k, cap - k, "%d/%d", a, step);
        ref_range(s, lo_f, hi_f, a, hi_f, step);
        break;
    case 3:
        if (f == 5 && a > b) {
            int t = a;
            a = b;
            b = t;
        }
        snprintf(out + k, cap - k, "%d-%d/%d", a, b, step);
        ref_range(s, lo_f, hi_f, a, b, step);
        break;
    default:
        snprintf(out + k, cap - k, "*/%d", step);
        ref_range(s, lo_f, hi_f, lo_f, hi_f, step);
        break;
    }
}

static void random_field(int f, ref_set *s, char *out, size_t cap)
{
    out[0] = '\0';
    if (rnd(0, 3) == 0) {
        snprintf(out, cap, "*");
        for (int v = (f == 5 ? 1970 : LO[f]); v <= (f == 5 ? 2199 : HI[f]); v++)
            s->in[v] = true;
        return;
    }
    int n = rnd(1, 3);
    for (int i = 0; i < n; i++) {
        if (i)
            strncat(out, ",", cap - strlen(out) - 1);
        random_item(f, s, out, cap);
    }
}

static void random_dom(ref_expr *e, char *out, size_t cap)
{
    e->dom_kind = rnd(0, 5);
    e->dom_n = rnd(1, 31);
    if (e->dom_kind == 1)
        snprintf(out, cap, "L");
    else if (e->dom_kind == 2)
        snprintf(out, cap, "LW");
    else if (e->dom_kind == 3)
        snprintf(out, cap, "%dW", e->dom_n);
    else
        e->dom_kind = 0, random_field(2, &e->f[2], out, cap);
}

static void random_dow(ref_expr *e, char *out, size_t cap)
{
    e->dow_kind = rnd(0, 4);
    e->dow_d = rnd(1, 7);
    e->dow_n = rnd(1, 5);
    if (e->dow_kind == 1)
        snprintf(out, cap, "%dL", e->dow_d);
    else if (e->dow_kind == 2)
        snprintf(out, cap, "%d#%d", e->dow_d, e->dow_n);
    else
        e->dow_kind = 0, random_field(4, &e->f[4], out, cap);
}

static bool weekday(int wd)
{
    return wd != 0 && wd != 6;
}

/* Whether day d of a month of len days whose first day is weekday wd1 (0 = Sunday) passes. */
static bool ref_day(const ref_expr *e, int d, int len, int wd1)
{
    int wd = (wd1 + d - 1) % 7;
    bool dom = e->dom_any, dow = e->dow_any;
    if (!dom && e->dom_kind == 0)
        dom = e->f[2].in[d];
    if (!dom && e->dom_kind == 1)
        dom = d == len;
    if (!dom && (e->dom_kind == 2 || e->dom_kind == 3)) {
        int target = e->dom_kind == 2 ? len : e->dom_n, best = 0;
        for (int c = 1; c <= len && target <= len; c++)
            if (weekday((wd1 + c - 1) % 7) && (!best || abs(c - target) < abs(best - target)))
                best = c;
        dom = best == d;
    }
    if (!dow && e->dow_kind == 0)
        dow = e->f[4].in[wd + 1];
    if (!dow && e->dow_kind == 1)
        dow = wd + 1 == e->dow_d && d + 7 > len;
    if (!dow && e->dow_kind == 2)
        dow = wd + 1 == e->dow_d && (d - 1) / 7 + 1 == e->dow_n;
    return dom && dow;
}

/* The first matching minute after `after`, day by day then minute by minute, within `days`
 * days; INT64_MAX when none. */
static int64_t ref_next(const ref_expr *e, int64_t after, int days)
{
    int64_t day0 = after >= 0 ? after / 86400 : -((-after + 86399) / 86400);
    for (int64_t day = day0; day <= day0 + days; day++) {
        time_t t = (time_t)(day * 86400), first;
        struct tm tm, tm1;
        gmtime_r(&t, &tm);
        struct tm next = tm;
        next.tm_mday = 1;
        next.tm_mon++;
        time_t nm = timegm(&next);
        int len = (int)((nm - t) / 86400) + tm.tm_mday - 1;
        first = t - (time_t)(tm.tm_mday - 1) * 86400;
        gmtime_r(&first, &tm1);
        if (!e->f[5].in[tm.tm_year + 1900] || !e->f[3].in[tm.tm_mon + 1]
            || !ref_day(e, tm.tm_mday, len, tm1.tm_wday))
            continue;
        for (int h = 0; h < 24; h++)
            for (int mi = 0; mi < 60; mi++)
                if (e->f[1].in[h] && e->f[0].in[mi] && day * 86400 + h * 3600 + mi * 60 > after)
                    return day * 86400 + h * 3600 + mi * 60;
    }
    return INT64_MAX;
}

Test(cron, random_expressions_match_brute_force, .timeout = 120)
{
    srand(20260320);
    const int horizon = 3 * 366;
    for (int n = 0; n < 400; n++) {
        ref_expr *e = calloc(1, sizeof *e);
        char fld[6][120], text[800];
        for (int f = 0; f < 6; f++)
            if (f != 2 && f != 4)
                random_field(f, &e->f[f], fld[f], sizeof fld[f]);
        random_dom(e, fld[2], sizeof fld[2]);
        random_dow(e, fld[4], sizeof fld[4]);
        if (rnd(0, 1)) {
            snprintf(fld[2], sizeof fld[2], "?");
            e->dom_any = true;
        } else {
            snprintf(fld[4], sizeof fld[4], "?");
            e->dow_any = true;
        }
        snprintf(text, sizeof text, "cron(%s %s %s %s %s %s)", fld[0], fld[1], fld[2], fld[3],
                 fld[4], fld[5]);
        sched *s = parse_ok(text, NULL);
        int64_t t = utc("2024-01-01 00:00") + rnd(0, 6 * 365) * 86400LL + rnd(0, 86399);
        for (int k = 0; k < 4; k++) {
            int64_t want = ref_next(e, t, horizon), got = sched_next(s, t);
            if (want == INT64_MAX)
                cr_assert_gt(got, t + (int64_t)horizon * 86400, "%s after %lld: got %lld", text,
                             (long long)t, (long long)got);
            else
                cr_assert_eq(got, want, "%s after %lld: got %lld, want %lld", text,
                             (long long)t, (long long)got, (long long)want);
            if (want == INT64_MAX)
                break;
            t = k == 1 ? want - rnd(1, 3600) : want;
        }
        sched_free(s);
        free(e);
    }
}

/* Mutations of valid expressions (bytes replaced, inserted, cut) are parsed without fault: a
 * refusal's span stays within the text, an acceptance yields a schedule whose next firing
 * comes, if at all, after the instant asked about. Run under ASan too. */
Test(cron, mutated_expressions_are_safe, .timeout = 60)
{
    static const char *const seeds[] = { "cron(0 2 * * ? *)", "cron(*/5 1-10/2 LW JAN-MAR ? 2030)",
                                         "cron(0 0 ? * 3#2 *)", "cron(0 0 ? * FRI-MON,5L *)",
                                         "rate(5 minutes)", "cron(0 2 15W * *)" };
    static const char alphabet[] = "0123456789*/,-?LW#() JANMONlw";
    srand(7);
    for (int n = 0; n < 3000; n++) {
        char text[64];
        snprintf(text, sizeof text, "%s", seeds[n % 6]);
        for (int k = rnd(1, 3); k > 0; k--) {
            size_t len = strlen(text), at = (size_t)rnd(0, (int)len);
            char c = alphabet[rnd(0, (int)sizeof alphabet - 2)];
            if (rnd(0, 2) == 0 && len + 1 < sizeof text) {
                memmove(text + at + 1, text + at, len - at + 1);
                text[at] = c;
            } else if (at < len) {
                if (rnd(0, 1))
                    text[at] = c;
                else
                    memmove(text + at, text + at + 1, len - at);
            }
        }
        char err[200] = "";
        size_t at = 0, len = 0;
        sched *s = sched_parse(text, NULL, err, sizeof err, &at, &len);
        if (!s) {
            cr_assert(at + len <= strlen(text) && err[0], "%s: %zu+%zu '%s'", text, at, len,
                      err);
            continue;
        }
        int64_t t = utc("2026-01-01 00:00");
        int64_t next = sched_next(s, t);
        cr_assert_gt(next, t, "%s", text);
        sched_free(s);
    }
}
