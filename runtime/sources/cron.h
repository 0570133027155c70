/*
 * cron.h — schedule expressions in AWS EventBridge's syntax, for schedule sources
 * (`source nightly schedule "cron(0 2 * * ? *)" { timezone "Europe/Paris" } to ops`):
 *
 *   cron.c  parsing "rate(VALUE UNIT)" and "cron(FIELDS)" and computing the next firing;
 *   tz.c    time zones read from the system's TZif files (zoneinfo), POSIX TZ footer included,
 *           without touching the process's TZ or localtime (ebd is multithreaded).
 *
 * Pure code with no dependency: it builds as the library ebr_cron, which ebc (to report an
 * expression's errors at compile time) and ebd (to fire) both link.
 *
 * Semantics where AWS says nothing or where ebr differs, in short (cron.c says why):
 *   - rate(N UNIT) fires at the multiples of its period counted from the Unix epoch in UTC,
 *     whatever the time zone; UNIT may also be second(s); the period is at most 365 days.
 *   - five fields (no year) are accepted besides AWS's six; there `*` in both day fields means
 *     every day, and a lone `*` beside a given day field yields to it.
 *   - a range may wrap around its field's end (FRI-MON, 22-2) except in the year field.
 *   - a local time that a DST change skips does not fire that day; one that occurs twice fires
 *     once, at its first occurrence.
 */
#ifndef EBR_CRON_H
#define EBR_CRON_H

#include <stddef.h>
#include <stdint.h>

/* ---- schedules (cron.c) ---------------------------------------------------------------------- */

typedef struct sched sched;

/* Parses "rate(VALUE UNIT)" or "cron(FIELDS)" (the whole text) in time zone tz (NULL, "" or
 * "UTC": UTC; else an IANA name read from $TZDIR or /usr/share/zoneinfo). On error returns NULL,
 * writes a one-line message to err (lower-case start, no period) and sets *at and *len to the byte
 * range within text of the offending part (the whole text when none is better); for an unknown
 * time zone *at = *len = 0 and the message says "unknown time zone 'X'". */
sched *sched_parse(const char *text, const char *tz, char *err, size_t cap, size_t *at,
                   size_t *len);

/* The first firing strictly after `after` (Unix seconds), INT64_MAX when there is none before
 * the year 2200. Its cost is bounded (it skips by field, never by minute over years). */
int64_t sched_next(const sched *s, int64_t after);

void sched_free(sched *s);

/* ---- time zones (tz.c) ----------------------------------------------------------------------- */

typedef struct tz_zone tz_zone;

/* Loads an IANA zone by name ("Europe/Paris") from $TZDIR, else /usr/share/zoneinfo. NULL when
 * the name is not a safe zone name (no "..", no leading '/', only [A-Za-z0-9/_+-]) or its file
 * is missing or malformed. */
tz_zone *tz_load(const char *name);
void tz_free(tz_zone *z);

/* The zone's offset from UTC in seconds (local = t + offset) at instant t (Unix seconds). */
int32_t tz_offset(const tz_zone *z, int64_t t);

/* The earliest instant whose local wall time is `local` (local seconds since 1970-01-01
 * 00:00 of the zone's wall clock); INT64_MIN when that wall time does not exist (a DST gap).
 * A NULL zone is UTC. */
int64_t tz_to_utc(const tz_zone *z, int64_t local);

/* ---- civil calendar (tz.c), proleptic Gregorian --------------------------------------------- */

int64_t cal_days(int64_t y, int m, int d);                 /* days since 1970-01-01 */
void cal_date(int64_t days, int64_t *y, int *m, int *d);   /* the inverse */
int cal_weekday(int64_t days);                             /* 0 = Sunday .. 6 = Saturday */
int cal_month_len(int64_t y, int m);

#endif
