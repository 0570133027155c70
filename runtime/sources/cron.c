/*
 * cron.c — schedule expressions as AWS EventBridge writes them: "rate(VALUE UNIT)" and
 * "cron(Minutes Hours Day-of-month Month Day-of-week Year)", parsed once into bit sets, and the
 * next firing found by skipping whole years, months, days and hours that cannot match.
 *
 * Choices where AWS is silent or where ebr is more lenient (docs/sources.md says the same):
 *   - rate: also second(s); the firings are the multiples of the period since the Unix epoch in
 *     UTC, whatever the time zone, so a restarted daemon keeps the same beat.
 *   - five fields (no year) are accepted, as users write cron(0 2 * * *) out of habit: there a
 *     literal `*` in a day field yields to the other day field, `*` in both means every day,
 *     and two given day fields are an error as in six fields (where one must be `?`).  Days
 *     of the week must be names there (MON-FRI, MON#2): a number would mean Monday to a
 *     crontab's author and Sunday to AWS.
 *   - a range may wrap (FRI-MON = FRI,SAT,SUN,MON; 22-2 in hours), as in Quartz, from which
 *     AWS's syntax comes; not in the year field, where it would run backwards.
 *   - L, LW, nW and nL may be mixed with plain values in a list; `#` must stand alone (AWS).
 *   - DST, as EventBridge Scheduler documents: a wall time a spring-forward gap skips does not
 *     fire that day; a wall time that occurs twice fires once, at its first occurrence.
 *   - no firing is sought past the year 2199 (the year field's end): sched_next returns
 *     INT64_MAX then, which also ends impossible expressions such as cron(0 0 30 2 ? *).
 */
#include "cron.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { F_MIN, F_HOUR, F_DOM, F_MON, F_DOW, F_YEAR, NFIELDS };

#define YEAR_LO 1970
#define YEAR_HI 2199
#define RATE_MAX (365 * 86400)

/* A set of small values: bit v for value v (the year field stores year - 1970). */
typedef struct {
    uint64_t w[4];
} bits;

struct sched {
    int64_t period; /* rate(): seconds; 0 for cron() */
    bits set[NFIELDS];
    bool dom_any, dow_any;  /* the field does not restrict the day ('?', or a yielding '*') */
    bool dom_last, dom_lastwd;
    uint32_t dom_near;      /* nW: bit n */
    uint8_t dow_last;       /* nL: bit n (1 = Sunday) */
    int nth_day, nth_n;     /* d#n; nth_n = 0 when absent */
    tz_zone *zone;          /* NULL: UTC */
};

typedef struct {
    const char *name;
    int lo, hi;
    const char *const *names; /* names of lo, lo + 1, ... */
    const char *names_hint;
} field_spec;

static const char *const MONTHS[] = { "JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                      "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", NULL };
static const char *const DAYS[] = { "SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", NULL };

static const field_spec FIELDS[NFIELDS] = {
    [F_MIN] = { "minutes", 0, 59, NULL, NULL },
    [F_HOUR] = { "hours", 0, 23, NULL, NULL },
    [F_DOM] = { "day-of-month", 1, 31, NULL, NULL },
    [F_MON] = { "month", 1, 12, MONTHS, "1-12 or JAN-DEC" },
    [F_DOW] = { "day-of-week", 1, 7, DAYS, "1-7 or SUN-SAT" },
    [F_YEAR] = { "year", YEAR_LO, YEAR_HI, NULL, NULL },
};

/* ---- bit sets ------------------------------------------------------------------------------- */

static void bit_set(bits *b, int i)
{
    b->w[i >> 6] |= 1ull << (i & 63);
}

static bool bit_has(const bits *b, int i)
{
    return i >= 0 && i < 256 && (b->w[i >> 6] >> (i & 63) & 1);
}

/* The smallest member >= from, or -1. */
static int bit_next(const bits *b, int from)
{
    if (from < 0)
        from = 0;
    for (int k = from >> 6; k < 4; k++) {
        uint64_t w = b->w[k];
        if (k == from >> 6)
            w &= ~0ull << (from & 63);
        if (w)
            return k * 64 + __builtin_ctzll(w);
    }
    return -1;
}

/* ---- errors --------------------------------------------------------------------------------- */

typedef struct {
    const char *text;
    char *err;
    size_t cap;
    size_t *at, *len;
    sched *s;
    int nfields;
} parser;

typedef struct {
    const char *b, *e; /* [b, e) within the text */
} span;

static bool fail(parser *p, span where, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (p->err && p->cap)
        vsnprintf(p->err, p->cap, fmt, ap);
    va_end(ap);
    if (p->at)
        *p->at = (size_t)(where.b - p->text);
    if (p->len)
        *p->len = (size_t)(where.e - where.b);
    return false;
}

/* ---- tokens --------------------------------------------------------------------------------- */

static bool blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Splits [b, e) at blanks into at most max words; returns how many there were (counting past
 * max, so that a caller can tell too many). */
static int split_words(span in, span *out, int max)
{
    int n = 0;
    const char *c = in.b;
    for (;;) {
        while (c < in.e && blank(*c))
            c++;
        if (c == in.e)
            return n;
        const char *w = c;
        while (c < in.e && !blank(*c))
            c++;
        if (n < max)
            out[n] = (span){ w, c };
        n++;
    }
}

static bool span_is(span s, const char *word)
{
    size_t n = strlen(word);
    return (size_t)(s.e - s.b) == n && strncasecmp(s.b, word, n) == 0;
}

static int span_len(span s)
{
    return (int)(s.e - s.b);
}

/* Reads a whole number from all of s; false when s is not only digits. Caps at 10^7 so that a
 * long number cannot overflow (every bound checked later is far below). */
static bool whole_number(span s, int *out)
{
    if (s.b == s.e)
        return false;
    long v = 0;
    for (const char *c = s.b; c < s.e; c++) {
        if (*c < '0' || *c > '9')
            return false;
        if (v < 10000000)
            v = v * 10 + (*c - '0');
    }
    *out = (int)v;
    return true;
}

/* ---- rate() --------------------------------------------------------------------------------- */

static const struct {
    const char *one, *many;
    int seconds;
} UNITS[] = { { "second", "seconds", 1 }, { "minute", "minutes", 60 },
              { "hour", "hours", 3600 }, { "day", "days", 86400 } };

static bool parse_rate(parser *p, span in)
{
    span w[3];
    int n = split_words(in, w, 3);
    if (n != 2)
        return fail(p, in, "a rate is 'rate(VALUE UNIT)', e.g. 'rate(5 minutes)'");
    int value;
    if (!whole_number(w[0], &value) || value == 0)
        return fail(p, w[0], "rate value '%.*s' is not a positive whole number", span_len(w[0]),
                    w[0].b);
    for (size_t i = 0; i < sizeof UNITS / sizeof UNITS[0]; i++) {
        bool one = span_is(w[1], UNITS[i].one), many = span_is(w[1], UNITS[i].many);
        if (!one && !many)
            continue;
        if (one != (value == 1))
            return fail(p, w[1], "write 'rate(%d %s)'", value,
                        value == 1 ? UNITS[i].one : UNITS[i].many);
        if ((int64_t)value * UNITS[i].seconds > RATE_MAX)
            return fail(p, (span){ w[0].b, w[1].e }, "rate period '%.*s' is longer than a year "
                        "(365 days)", (int)(w[1].e - w[0].b), w[0].b);
        p->s->period = (int64_t)value * UNITS[i].seconds;
        return true;
    }
    return fail(p, w[1], "rate unit '%.*s' is not one of minute(s), hour(s), day(s), second(s)",
                span_len(w[1]), w[1].b);
}

/* ---- cron() fields -------------------------------------------------------------------------- */

/* One value of field f: a number or (month, day-of-week) a name, checked against its range. */
static bool field_value(parser *p, int f, span s, int *out)
{
    const field_spec *fs = &FIELDS[f];
    if (whole_number(s, out)) {
        if (*out < fs->lo || *out > fs->hi)
            return fail(p, s, "%s value %.*s is out of range %d-%d", fs->name, span_len(s), s.b,
                        fs->lo, fs->hi);
        return true;
    }
    for (int i = 0; fs->names && fs->names[i]; i++)
        if (span_is(s, fs->names[i])) {
            *out = fs->lo + i;
            return true;
        }
    if (s.b == s.e)
        return fail(p, s, "%s field has an empty value", fs->name);
    if (fs->names)
        return fail(p, s, "%s value '%.*s' is not %s", fs->name, span_len(s), s.b,
                    fs->names_hint);
    return fail(p, s, "%s value '%.*s' is not a number %d-%d", fs->name, span_len(s), s.b,
                fs->lo, fs->hi);
}

/* Adds lo..hi by step to the field's set; lo > hi wraps past the field's end. */
static void add_range(sched *s, int f, int lo, int hi, int step)
{
    const field_spec *fs = &FIELDS[f];
    int span_n = fs->hi - fs->lo + 1;
    int count = (hi - lo + span_n) % span_n + 1;
    int base = f == F_YEAR ? YEAR_LO : 0;
    for (int i = 0; i < count; i += step)
        bit_set(&s->set[f], fs->lo + (lo - fs->lo + i) % span_n - base);
}

static const char *find_char(span s, char c)
{
    const void *at = memchr(s.b, c, (size_t)(s.e - s.b));
    return at;
}

/* VALUE, VALUE-VALUE, * — each optionally /STEP (a single VALUE with a step runs to the end). */
static bool plain_item(parser *p, int f, span it)
{
    const field_spec *fs = &FIELDS[f];
    const char *slash = find_char(it, '/');
    span base = { it.b, slash ? slash : it.e };
    int lo, hi, step = 1;
    if (slash) {
        span st = { slash + 1, it.e };
        if (!whole_number(st, &step) || step < 1 || step > fs->hi - fs->lo + 1)
            return fail(p, st, "%s step '%.*s' is not a whole number 1-%d", fs->name,
                        span_len(st), st.b, fs->hi - fs->lo + 1);
    }
    const char *dash = find_char(base, '-');
    if (span_is(base, "*")) {
        lo = fs->lo;
        hi = fs->hi;
    } else if (dash) {
        if (!field_value(p, f, (span){ base.b, dash }, &lo)
            || !field_value(p, f, (span){ dash + 1, base.e }, &hi))
            return false;
        if (f == F_YEAR && lo > hi)
            return fail(p, base, "year range %.*s runs backwards", span_len(base), base.b);
    } else {
        if (!field_value(p, f, base, &lo))
            return false;
        hi = slash ? fs->hi : lo;
    }
    add_range(p->s, f, lo, hi, step);
    return true;
}

/* L, LW, nW. */
static bool dom_item(parser *p, span it, bool *done)
{
    sched *s = p->s;
    char last = span_len(it) > 0 ? it.e[-1] : 0;
    *done = true;
    if (span_is(it, "L")) {
        s->dom_last = true;
    } else if (span_is(it, "LW")) {
        s->dom_lastwd = true;
    } else if (last == 'W' || last == 'w') {
        int d;
        if (!field_value(p, F_DOM, (span){ it.b, it.e - 1 }, &d))
            return false;
        s->dom_near |= 1u << d;
    } else {
        *done = find_char(it, '#') != NULL;
        if (*done)
            return fail(p, it, "'#' is only allowed in day-of-week");
    }
    return true;
}

/* L (Saturday, the week's last day), nL, d#n. */
static bool dow_item(parser *p, span it, bool alone, bool *done)
{
    sched *s = p->s;
    const char *hash = find_char(it, '#');
    char last = span_len(it) > 0 ? it.e[-1] : 0;
    int d;
    *done = true;
    if (span_is(it, "L")) {
        bit_set(&s->set[F_DOW], 7);
    } else if (hash) {
        span n = { hash + 1, it.e };
        if (!alone)
            return fail(p, it, "day-of-week '#' must stand alone, not in a list");
        if (!field_value(p, F_DOW, (span){ it.b, hash }, &d))
            return false;
        if (!whole_number(n, &s->nth_n) || s->nth_n < 1 || s->nth_n > 5)
            return fail(p, n, "day-of-week '#%.*s' is not an occurrence 1-5", span_len(n), n.b);
        s->nth_day = d;
    } else if (last == 'L' || last == 'l') {
        if (!field_value(p, F_DOW, (span){ it.b, it.e - 1 }, &d))
            return false;
        s->dow_last |= (uint8_t)(1u << d);
    } else if (last == 'W' || last == 'w') {
        return fail(p, it, "'W' is only allowed in day-of-month");
    } else {
        *done = false;
    }
    return true;
}

static bool item(parser *p, int f, span it, bool alone)
{
    bool done = false;
    if (span_is(it, "?")) {
        if (f != F_DOM && f != F_DOW)
            return fail(p, it, "'?' is only allowed in day-of-month and day-of-week");
        if (!alone)
            return fail(p, it, "%s '?' must stand alone, not in a list", FIELDS[f].name);
        return true;
    }
    if (f == F_DOM && !dom_item(p, it, &done))
        return false;
    if (f == F_DOW && !dow_item(p, it, alone, &done))
        return false;
    if (done)
        return true;
    if (f != F_DOM && f != F_DOW && f != F_MON && strcspn(it.b, "LlWw#") < (size_t)span_len(it))
        return fail(p, it, "'L', 'W' and '#' are only allowed in the day fields");
    return plain_item(p, f, it);
}

static bool parse_field(parser *p, int f, span fld)
{
    bool alone = find_char(fld, ',') == NULL;
    const char *c = fld.b;
    for (;;) {
        const char *comma = find_char((span){ c, fld.e }, ',');
        span it = { c, comma ? comma : fld.e };
        if (it.b == it.e)
            return fail(p, fld, "%s field has an empty item", FIELDS[f].name);
        if (!item(p, f, it, alone))
            return false;
        if (!comma)
            return true;
        c = comma + 1;
    }
}

/* AWS: exactly one of the two day fields is '?'. Five fields are more lenient (see the top). */
static bool day_rules(parser *p, span dom, span dow)
{
    bool qd = span_is(dom, "?"), qw = span_is(dow, "?");
    span both = { dom.b, dow.e };
    if (qd && qw)
        return fail(p, both, "day-of-month and day-of-week cannot both be '?': give one of them");
    if (p->nfields == 5 && !qd && !qw) {
        bool sd = span_is(dom, "*"), sw = span_is(dow, "*");
        if (!sd && !sw)
            return fail(p, both, "day-of-month and day-of-week cannot both be given: one must "
                                 "be '?' or '*'");
        p->s->dom_any = sd;
        p->s->dow_any = sw;
        return true;
    }
    if (!qd && !qw)
        return fail(p, both,
                    "day-of-month and day-of-week cannot both be given: one must be '?'");
    p->s->dom_any = qd;
    p->s->dow_any = qw;
    return true;
}

static bool parse_cron(parser *p, span in)
{
    span w[NFIELDS + 1];
    int n = split_words(in, w, NFIELDS + 1);
    if (n != 5 && n != 6)
        return fail(p, in, "a cron expression has 6 fields (minutes hours day-of-month month "
                           "day-of-week year), or 5 without the year; this one has %d", n);
    p->nfields = n;
    /* a day of the week by number means two things: refused in five fields (after '#', the
     * number is the week's, which both agree on) */
    const char *hash = n == 5 ? memchr(w[F_DOW].b, '#', (size_t)(w[F_DOW].e - w[F_DOW].b)) : NULL;
    for (const char *c = w[F_DOW].b; n == 5 && c < (hash ? hash : w[F_DOW].e); c++)
        if (*c >= '0' && *c <= '9')
            return fail(p, w[F_DOW], "in five fields, write days of the week by name (MON-FRI): "
                                         "classic cron counts 0 as Sunday and 1 as Monday, AWS 1 "
                                         "as Sunday; or write six fields, AWS's way");
    for (int f = 0; f < n; f++)
        if (!parse_field(p, f, w[f]))
            return false;
    if (n == 5)
        add_range(p->s, F_YEAR, YEAR_LO, YEAR_HI, 1);
    return day_rules(p, w[F_DOM], w[F_DOW]);
}

/* ---- parse ---------------------------------------------------------------------------------- */

sched *sched_parse(const char *text, const char *tz, char *err, size_t cap, size_t *at,
                   size_t *len)
{
    parser p = { text, err, cap, at, len, calloc(1, sizeof(sched)), 0 };
    span whole = { text, text + strlen(text) };
    if (!p.s) {
        fail(&p, whole, "out of memory");
        return NULL;
    }
    bool rate = strncmp(text, "rate(", 5) == 0, cron = strncmp(text, "cron(", 5) == 0;
    bool ok;
    if (!rate && !cron)
        ok = fail(&p, whole, "a schedule is 'rate(VALUE UNIT)' or 'cron(FIELDS)'");
    else if (whole.e[-1] != ')')
        ok = fail(&p, whole, "a schedule must end with ')'");
    else if (rate)
        ok = parse_rate(&p, (span){ text + 5, whole.e - 1 });
    else
        ok = parse_cron(&p, (span){ text + 5, whole.e - 1 });
    if (ok && tz && *tz && strcmp(tz, "UTC") != 0 && !(p.s->zone = tz_load(tz))) {
        ok = fail(&p, (span){ text, text }, "unknown time zone '%s'", tz);
    }
    if (!ok) {
        sched_free(p.s);
        return NULL;
    }
    return p.s;
}

void sched_free(sched *s)
{
    if (!s)
        return;
    tz_free(s->zone);
    free(s);
}

/* ---- next firing ---------------------------------------------------------------------------- */

/* The weekday nearest day n within the month (a Saturday goes to Friday, a Sunday to Monday,
 * never across the month's ends); 0 when the month has no day n. */
static int nearest_weekday(int n, int len, int wd1)
{
    if (n > len)
        return 0;
    int wd = (wd1 + n - 1) % 7;
    if (wd == 6)
        return n == 1 ? 3 : n - 1;
    if (wd == 0)
        return n == len ? n - 2 : n + 1;
    return n;
}

static uint32_t dom_days(const sched *s, int len, int wd1)
{
    uint32_t m = (uint32_t)s->set[F_DOM].w[0];
    if (s->dom_last)
        m |= 1u << len;
    if (s->dom_lastwd)
        m |= 1u << nearest_weekday(len, len, wd1);
    for (int n = 1; n <= 31; n++)
        if (s->dom_near >> n & 1)
            m |= 1u << nearest_weekday(n, len, wd1);
    return m & ~1u;
}

static uint32_t dow_days(const sched *s, int len, int wd1)
{
    uint32_t m = 0;
    for (int d = 1; d <= len; d++) {
        int w = (wd1 + d - 1) % 7 + 1; /* 1 = Sunday */
        if (bit_has(&s->set[F_DOW], w) || ((s->dow_last >> w & 1) && d + 7 > len)
            || (w == s->nth_day && (d + 6) / 7 == s->nth_n))
            m |= 1u << d;
    }
    return m;
}

/* The days of month m of year y on which the expression fires: bit d for day d. */
static uint32_t month_days(const sched *s, int64_t y, int m)
{
    int len = cal_month_len(y, m);
    int wd1 = cal_weekday(cal_days(y, m, 1));
    uint32_t all = (uint32_t)(((uint64_t)2 << len) - 2);
    uint32_t dom = s->dom_any ? all : dom_days(s, len, wd1);
    uint32_t dow = s->dow_any ? all : dow_days(s, len, wd1);
    return dom & dow & all;
}

static int next_day(uint32_t mask, int from)
{
    mask = from > 31 ? 0 : mask & (~0u << from);
    return mask ? __builtin_ctz(mask) : -1;
}

typedef struct {
    int64_t y;
    int m, d, h, mi;
} wall;

/* Moves w to the start of the next month (or of its year when m is 0). */
static void next_month(wall *w, int m)
{
    if (m > 12 || m < 1) {
        w->y++;
        m = 1;
    }
    *w = (wall){ w->y, m, 1, 0, 0 };
}

/* The first wall time >= w (to the minute) that the expression matches; false when there is
 * none before the year 2200. Each turn of the loop moves w forward by at least one of a field's
 * unit, skipping straight to the field's next member, so it ends within a few thousand turns. */
static bool next_wall(const sched *s, wall *w)
{
    for (;;) {
        if (w->y > YEAR_HI)
            return false;
        if (!bit_has(&s->set[F_YEAR], (int)(w->y - YEAR_LO))) {
            int y = bit_next(&s->set[F_YEAR], w->y < YEAR_LO ? 0 : (int)(w->y - YEAR_LO));
            if (y < 0)
                return false;
            *w = (wall){ YEAR_LO + y, 1, 1, 0, 0 };
            continue;
        }
        if (!bit_has(&s->set[F_MON], w->m)) {
            next_month(w, bit_next(&s->set[F_MON], w->m));
            continue;
        }
        int d = next_day(month_days(s, w->y, w->m), w->d);
        if (d < 0) {
            next_month(w, w->m + 1);
            continue;
        }
        if (d != w->d)
            *w = (wall){ w->y, w->m, d, 0, 0 };
        int h = bit_next(&s->set[F_HOUR], w->h);
        if (h < 0 || h > 23) {
            *w = (wall){ w->y, w->m, w->d + 1, 0, 0 };
            continue;
        }
        if (h != w->h)
            *w = (wall){ w->y, w->m, w->d, h, 0 };
        int mi = bit_next(&s->set[F_MIN], w->mi);
        if (mi < 0 || mi > 59) {
            *w = (wall){ w->y, w->m, w->d, w->h + 1, 0 };
            continue;
        }
        w->mi = mi;
        return true;
    }
}

static int64_t floor_to(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

static int64_t next_rate(int64_t period, int64_t after)
{
    int64_t k = floor_to(after, period);
    return k >= INT64_MAX / period ? INT64_MAX : (k + 1) * period;
}

/* Wall times are tried in order; the first one whose first occurrence comes after `after`
 * wins. The map from a wall time to its first occurrence never goes backwards, so the search
 * may start at the wall time of `after` itself; it passes over at most the wall times of one
 * DST gap or fold (those skipped, or whose first occurrence was before `after`). */
int64_t sched_next(const sched *s, int64_t after)
{
    if (s->period)
        return next_rate(s->period, after);
    const int64_t far = (int64_t)4000 * 366 * 86400; /* years 5970 and -2030: no firing */
    if (after > far)
        return INT64_MAX;
    if (after < -far)
        after = -far; /* clear of overflow below */
    int64_t local = after + tz_offset(s->zone, after);
    int64_t days = floor_to(local, 86400), secs = local - days * 86400;
    wall w = { 0, 0, 0, (int)(secs / 3600), (int)(secs % 3600 / 60) };
    cal_date(days, &w.y, &w.m, &w.d);
    while (next_wall(s, &w)) {
        int64_t at = (cal_days(w.y, w.m, w.d) * 24 + w.h) * 3600 + w.mi * 60;
        int64_t t = tz_to_utc(s->zone, at);
        if (t != INT64_MIN && t > after)
            return t;
        w.mi++; /* next_wall carries an overflowing minute, hour or day */
    }
    return INT64_MAX;
}
