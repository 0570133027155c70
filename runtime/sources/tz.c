/*
 * tz.c — IANA time zones from the system's TZif files (RFC 8536), read by hand so that a
 * schedule's wall clock never depends on the process's TZ (setenv/localtime are not safe in
 * the multithreaded ebd). The transitions of the file are used up to the last one; after it the
 * POSIX TZ string of the footer governs, which matters because Debian's files may be "slim"
 * (few or no listed transitions past today, the rule in the footer only).
 */
#include "cron.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- civil calendar ------------------------------------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static bool leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

int cal_month_len(int64_t y, int m)
{
    static const int len[13] = { 0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    return m == 2 && leap(y) ? 29 : len[m];
}

/* Counting years from March makes February the last month, so its length never shifts the
 * other months' offsets; eras of 400 years repeat exactly (146097 days). */
int64_t cal_days(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

void cal_date(int64_t days, int64_t *y, int *m, int *d)
{
    days += 719468;
    int64_t era = floor_div(days, 146097);
    int64_t doe = days - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

int cal_weekday(int64_t days)
{
    int64_t w = (days + 4) % 7; /* 1970-01-01 was a Thursday */
    return (int)(w < 0 ? w + 7 : w);
}

/* ---- the POSIX TZ string of the footer ------------------------------------------------------ */

/* One DST boundary: Mm.w.d (kind 'M'), Jn (1..365, February 29 never counted) or n (0..365). */
typedef struct {
    char kind;
    int m, w, d, n;
    int32_t time; /* seconds after local midnight, may be negative or past 24 h */
} tz_rule;

typedef struct {
    int32_t std, dst; /* UTC offsets (local = utc + offset) */
    bool has_dst;
    tz_rule start, end;
} tz_posix;

struct tz_zone {
    size_t n;           /* transitions */
    int64_t *at;        /* their instants, ascending */
    int32_t *off;       /* the offset from each transition on */
    int32_t first;      /* the offset before the first transition */
    bool has_footer;
    tz_posix footer;
};

static bool parse_num(const char **p, int lo, int hi, int *out)
{
    const char *s = *p;
    int v = 0;
    if (*s < '0' || *s > '9')
        return false;
    while (*s >= '0' && *s <= '9' && v <= hi)
        v = v * 10 + (*s++ - '0');
    if (v < lo || v > hi)
        return false;
    *p = s;
    *out = v;
    return true;
}

/* [+-]hh[:mm[:ss]], hours up to 167 (RFC 8536 allows that much for rule times). */
static bool parse_hms(const char **p, int32_t *out)
{
    int sign = 1, h, mi = 0, sec = 0;
    if (**p == '+' || **p == '-')
        sign = *(*p)++ == '-' ? -1 : 1;
    if (!parse_num(p, 0, 167, &h))
        return false;
    if (**p == ':' && (++*p, !parse_num(p, 0, 59, &mi)))
        return false;
    if (**p == ':' && (++*p, !parse_num(p, 0, 59, &sec)))
        return false;
    *out = sign * (h * 3600 + mi * 60 + sec);
    return true;
}

static bool skip_name(const char **p)
{
    const char *s = *p;
    if (*s == '<') {
        while (*s && *s != '>')
            s++;
        if (*s != '>')
            return false;
        *p = s + 1;
        return true;
    }
    while ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z'))
        s++;
    if (s - *p < 3)
        return false;
    *p = s;
    return true;
}

static bool parse_rule(const char **p, tz_rule *r)
{
    r->time = 7200;
    if (**p == 'M') {
        ++*p;
        r->kind = 'M';
        if (!parse_num(p, 1, 12, &r->m) || *(*p)++ != '.' || !parse_num(p, 1, 5, &r->w)
            || *(*p)++ != '.' || !parse_num(p, 0, 6, &r->d))
            return false;
    } else if (**p == 'J') {
        ++*p;
        r->kind = 'J';
        if (!parse_num(p, 1, 365, &r->n))
            return false;
    } else {
        r->kind = 'n';
        if (!parse_num(p, 0, 365, &r->n))
            return false;
    }
    if (**p == '/') {
        ++*p;
        return parse_hms(p, &r->time);
    }
    return true;
}

/* "std offset [dst [offset] [,start[/time],end[/time]]]"; POSIX offsets count west of
 * Greenwich, hence the negations. */
static bool parse_posix(const char *s, tz_posix *out)
{
    int32_t v;
    if (!skip_name(&s) || !parse_hms(&s, &v))
        return false;
    out->std = -v;
    out->has_dst = false;
    if (*s == '\0')
        return true;
    if (!skip_name(&s))
        return false;
    out->has_dst = true;
    out->dst = out->std + 3600;
    if (*s != ',' && *s != '\0') {
        if (!parse_hms(&s, &v))
            return false;
        out->dst = -v;
    }
    if (*s == '\0') { /* POSIX's default rule; the US one, as glibc assumes */
        out->start = (tz_rule){ 'M', 3, 2, 0, 0, 7200 };
        out->end = (tz_rule){ 'M', 11, 1, 0, 0, 7200 };
        return true;
    }
    if (*s++ != ',' || !parse_rule(&s, &out->start) || *s++ != ','
        || !parse_rule(&s, &out->end))
        return false;
    return *s == '\0';
}

/* The instant at which rule r falls in year y, given the offset in effect before it. */
static int64_t rule_instant(const tz_rule *r, int64_t y, int32_t before)
{
    int64_t day;
    if (r->kind == 'M') {
        int64_t first = cal_days(y, r->m, 1);
        int dom = 1 + (r->d - cal_weekday(first) + 7) % 7 + (r->w - 1) * 7;
        while (dom > cal_month_len(y, r->m))
            dom -= 7;
        day = first + dom - 1;
    } else if (r->kind == 'J') {
        day = cal_days(y, 1, 1) + r->n - 1 + (leap(y) && r->n >= 60);
    } else {
        day = cal_days(y, 1, 1) + r->n;
    }
    return day * 86400 + r->time - before;
}

static int32_t posix_offset(const tz_posix *f, int64_t t)
{
    if (!f->has_dst)
        return f->std;
    int64_t y;
    int m, d;
    cal_date(floor_div(t + f->std, 86400), &y, &m, &d);
    int64_t start = rule_instant(&f->start, y, f->std);
    int64_t end = rule_instant(&f->end, y, f->dst);
    bool dst = start < end ? (t >= start && t < end) : !(t >= end && t < start);
    return dst ? f->dst : f->std;
}

int32_t tz_offset(const tz_zone *z, int64_t t)
{
    if (!z)
        return 0;
    if (z->n == 0 || t < z->at[0])
        return z->n == 0 && z->has_footer ? posix_offset(&z->footer, t) : z->first;
    if (t >= z->at[z->n - 1] && z->has_footer)
        return posix_offset(&z->footer, t);
    size_t lo = 0, hi = z->n; /* the last transition at or before t */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (z->at[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return z->off[lo];
}

/* Every offset that could apply to a wall time shows up in the offsets a day either side of
 * it (offsets stay within ±26 h, and no zone changes its offset twice within half a day), so
 * each is tried and the earliest instant that reads back as `local` wins. */
int64_t tz_to_utc(const tz_zone *z, int64_t local)
{
    int64_t best = INT64_MIN;
    for (int k = -2; k <= 2; k++) {
        int64_t t = local - tz_offset(z, local + k * 43200);
        if (t + tz_offset(z, t) == local && (best == INT64_MIN || t < best))
            best = t;
    }
    return best;
}

/* ---- TZif files ------------------------------------------------------------------------------ */

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const unsigned char *p)
{
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

typedef struct {
    uint32_t isut, isstd, leap, time, type, chars;
} tzif_counts;

static bool read_header(const unsigned char *p, size_t len, tzif_counts *c)
{
    if (len < 44 || memcmp(p, "TZif", 4) != 0)
        return false;
    c->isut = be32(p + 20);
    c->isstd = be32(p + 24);
    c->leap = be32(p + 28);
    c->time = be32(p + 32);
    c->type = be32(p + 36);
    c->chars = be32(p + 40);
    return c->type >= 1 && c->type <= 256 && c->time <= 1u << 20;
}

static size_t block_len(const tzif_counts *c, size_t tsize)
{
    return c->time * tsize + c->time + c->type * 6 + c->chars + c->leap * (tsize + 4) + c->isstd
           + c->isut;
}

/* Fills z from one data block whose times take tsize bytes (4 in version 1, 8 after). */
static bool read_block(tz_zone *z, const unsigned char *p, const tzif_counts *c, size_t tsize)
{
    const unsigned char *idx = p + c->time * tsize, *types = idx + c->time;
    z->n = c->time;
    z->at = malloc((z->n ? z->n : 1) * sizeof *z->at);
    z->off = malloc((z->n ? z->n : 1) * sizeof *z->off);
    if (!z->at || !z->off)
        return false;
    for (size_t i = 0; i < z->n; i++) {
        z->at[i] = tsize == 8 ? be64(p + i * 8) : (int32_t)be32(p + i * 4);
        if (idx[i] >= c->type || (i > 0 && z->at[i] <= z->at[i - 1]))
            return false;
        z->off[i] = (int32_t)be32(types + idx[i] * 6);
    }
    z->first = (int32_t)be32(types);
    return true;
}

static bool parse_tzif(tz_zone *z, const unsigned char *p, size_t len)
{
    tzif_counts c;
    if (!read_header(p, len, &c))
        return false;
    size_t v1 = 44 + block_len(&c, 4);
    if (p[4] == 0 || len < v1 + 44) /* version 1: 32-bit times and no footer */
        return len >= v1 && read_block(z, p + 44, &c, 4);
    const unsigned char *h2 = p + v1;
    if (!read_header(h2, len - v1, &c) || len - v1 - 44 < block_len(&c, 8)
        || !read_block(z, h2 + 44, &c, 8))
        return false;
    const char *f = (const char *)h2 + 44 + block_len(&c, 8);
    const char *end = (const char *)p + len;
    if (f >= end || *f != '\n')
        return true;
    const char *nl = memchr(f + 1, '\n', (size_t)(end - f - 1));
    if (!nl || nl == f + 1)
        return true; /* an empty footer: no rule past the last transition */
    char rule[128];
    if ((size_t)(nl - f - 1) >= sizeof rule)
        return false;
    memcpy(rule, f + 1, (size_t)(nl - f - 1));
    rule[nl - f - 1] = '\0';
    z->has_footer = parse_posix(rule, &z->footer);
    return z->has_footer;
}

static bool safe_name(const char *name)
{
    if (!*name || *name == '/' || strstr(name, "..") || strlen(name) > 200)
        return false;
    for (const char *c = name; *c; c++)
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9')
              || *c == '/' || *c == '_' || *c == '+' || *c == '-'))
            return false;
    return true;
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    unsigned char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap || cap >= 1u << 22)
            break;
        unsigned char *more = realloc(buf, cap *= 2);
        if (!more)
            free(buf);
        buf = more;
    }
    bool bad = ferror(f) || (buf && n == cap);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

tz_zone *tz_load(const char *name)
{
    if (!name || !safe_name(name))
        return NULL;
    const char *dir = getenv("TZDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo", name);
    size_t len;
    unsigned char *data = slurp(path, &len);
    tz_zone *z = data ? calloc(1, sizeof *z) : NULL;
    if (z && !parse_tzif(z, data, len)) {
        tz_free(z);
        z = NULL;
    }
    free(data);
    return z;
}

void tz_free(tz_zone *z)
{
    if (!z)
        return;
    free(z->at);
    free(z->off);
    free(z);
}
