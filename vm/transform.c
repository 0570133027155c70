/*
 * transform.c — running templates (vm.h, VM_TO_*, docs/transforms.md).  The payload is written
 * into the context's buffer from the event's text, read where it lies: a path is followed
 * through the (already validated) JSON without building a tree, and a value is copied as the
 * event writes it.  Values on the stack are slices of the event, of the string pool or of a
 * per-event scratch buffer, so nothing is allocated per event once the buffers are warm.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <time.h>

#include "vm_int.h"

struct vm_tval {
    uint8_t kind;      /* TV_* */
    uint8_t where;     /* W_*: the text it lies in */
    uint32_t off, len;
};

enum { TV_NOTHING, TV_JSON, TV_STR };   /* a path that names nothing; JSON text; a string */
enum { W_EVENT, W_POOL, W_SCRATCH };

typedef struct vm_tval tval;

typedef struct {
    vm_ctx *c;
    const vm_program *p;
    const char *json;
    uint32_t len;
    const vm_xform_env *env;
    uint32_t rule;
    uint32_t at;           /* the instruction running (tcode index), for messages */
    vm_error *err;
    /* navigation memo: the object that held the last path's last name, and where the member
     * after the one found there starts (paths of one template often share a parent) */
    uint32_t memo_obj, memo_resume;
    const vm_fast *br;     /* the event's brackets, when stage 1 recorded them */
} run;

/* ---- buffers ---------------------------------------------------------------------------------- */

static bool reserve(vm_cbuf *b, size_t more)
{
    if (b->n + more > UINT32_MAX)
        return false;
    return b->n + more <= b->cap || vm_buf_grow((void **)&b->v, &b->cap, 1, (uint32_t)(b->n + more));
}

#define OUT(r) (&(r)->c->xout)
#define SCR(r) (&(r)->c->xscratch)

static bool put(vm_cbuf *b, const char *s, size_t n)
{
    if (n == 0)
        return true;
    if (!reserve(b, n))
        return false;
    memcpy(b->v + b->n, s, n);
    b->n += (uint32_t)n;
    return true;
}

static const char *text_of(const run *r, const tval *v)
{
    switch (v->where) {
    case W_EVENT: return r->json + v->off;
    case W_POOL: return r->p->strs + v->off;
    default: return r->c->xscratch.v ? r->c->xscratch.v + v->off : "";
    }
}

/* Appends the bytes of v to buffer b (which may be the scratch buffer v lies in). */
static bool put_val(run *r, vm_cbuf *b, const tval *v)
{
    if (v->len == 0)
        return true;
    if (!reserve(b, v->len))
        return false;
    memcpy(b->v + b->n, text_of(r, v), v->len);
    b->n += v->len;
    return true;
}

/* Appends s[0..n) JSON-escaped. */
static bool put_escaped(vm_cbuf *b, const char *s, size_t n)
{
    if (n == 0)
        return true;
    if (!reserve(b, n * 6))
        return false;
    b->n += (uint32_t)vm_json_escape(b->v + b->n, s, n);
    return true;
}

/* A new value made of the scratch bytes from `start` to the end. */
static tval scratch_val(run *r, uint8_t kind, uint32_t start)
{
    tval v = { kind, W_SCRATCH, start, r->c->xscratch.n - start };
    return v;
}

/* ---- errors ---------------------------------------------------------------------------------- */

static vm_status fail(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static vm_status fail(run *r, const char *fmt, ...)
{
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const vm_program *p = r->p;
    vm_span s = p->tcode_spans[r->at];
    uint32_t line = 1, col = 1;
    const char *file = "?";
    if (s.src < p->nsrcs) {
        file = vm_s(p, p->srcs[s.src].name);
        vm_span_where(p, s, &line, &col);
    }
    r->err->code = VM_ERR_TRANSFORM;
    r->err->offset = 0;
    snprintf(r->err->msg, sizeof r->err->msg, "%s (%s:%u:%u)", msg, file, line, col);
    return VM_ERR_TRANSFORM;
}

static vm_status nomem(run *r)
{
    r->err->code = VM_ERR_NOMEM;
    r->err->offset = 0;
    snprintf(r->err->msg, sizeof r->err->msg, "out of memory");
    return VM_ERR_NOMEM;
}

/* ---- walking the event's JSON ------------------------------------------------------------------ */

static uint32_t ws(const char *s, uint32_t n, uint32_t p)
{
    return (uint32_t)vm_json_ws(s, n, p);
}

/* The end of the string whose opening quote is at p. */
static uint32_t string_end(const char *s, uint32_t n, uint32_t p)
{
    return (uint32_t)vm_json_string_end(s, n, p);
}

/* The end of the value that starts at p.  `brackets`: where stage 1 of the fast scanner recorded
 * the brackets of s (NULL: it did not run on it): an object or array is then skipped in one jump,
 * not byte by byte.  (In the
 * CityLots MIXED transform row, walking geometry.coordinates byte by byte took most of its
 * 7 us.) */
static uint32_t value_end(const vm_fast *brackets, const char *s, uint32_t n, uint32_t p)
{
    if (p >= n)
        return n;
    if (s[p] == '"')
        return string_end(s, n, p);
    if ((s[p] == '{' || s[p] == '[') && brackets) {
        uint32_t lo = 0, hi = brackets->nbr;
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (brackets->br_pos[mid] < p)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < brackets->nbr && brackets->br_pos[lo] == p)
            return brackets->br_pos[brackets->br_match[lo]] + 1;
    }
    return (uint32_t)vm_json_value_end(s, n, p);
}

/* Does the key (a string at [k, kend)) spell name? */
static bool key_is(vm_ctx *c, const char *s, uint32_t k, uint32_t kend, const char *name, size_t nlen)
{
    const char *body = s + k + 1;
    size_t blen = kend - k - 2;
    if (!memchr(body, '\\', blen))
        return blen == nlen && memcmp(body, name, nlen) == 0;
    if (blen > c->dec_cap) {
        char *d = realloc(c->dec, blen);
        if (!d)
            return false;
        c->dec = d;
        c->dec_cap = blen;
    }
    size_t dn = vm_json_unescape(body, blen, c->dec);
    return dn == nlen && memcmp(c->dec, name, nlen) == 0;
}

/* The value of member `name` of the object at obj, searched from `from` (a member's start,
 * or obj + 1) to the end and then from the start: VM_NONE if there is none.  *after: where the
 * next member begins. */
static uint32_t member(vm_ctx *c, const vm_fast *br, const char *s, uint32_t n, uint32_t obj,
                       uint32_t from, const char *name, size_t nlen, uint32_t *after)
{
    for (int pass = 0; pass < 2; pass++) {
        uint32_t p = pass ? obj + 1 : from, stop = pass ? from : n;
        for (;;) {
            p = ws(s, n, p);
            if (p >= stop || p >= n || s[p] != '"')
                break;
            uint32_t kend = string_end(s, n, p);
            uint32_t v = ws(s, n, kend);
            if (v < n && s[v] == ':')
                v = ws(s, n, v + 1);
            uint32_t vend = value_end(br, s, n, v);
            uint32_t q = ws(s, n, vend);
            if (q < n && s[q] == ',')
                q++;
            if (key_is(c, s, p, kend, name, nlen)) {
                *after = q;
                return v;
            }
            p = q;
        }
        if (from == obj + 1)
            break;
    }
    return VM_NONE;
}

/* The elements (or member values) of the container at p, appended to c->xpos. */
static bool children(vm_ctx *c, const vm_fast *br, const char *s, uint32_t n, uint32_t p)
{
    bool object = s[p] == '{';
    p = ws(s, n, p + 1);
    while (p < n && s[p] != '}' && s[p] != ']') {
        uint32_t v = p;
        if (object) {
            v = ws(s, n, string_end(s, n, p));
            if (v < n && s[v] == ':')
                v = ws(s, n, v + 1);
        }
        if (!VM_BUF_PUSH(c->xpos, v))
            return false;
        p = ws(s, n, value_end(br, s, n, v));
        if (p < n && s[p] == ',')
            p = ws(s, n, p + 1);
    }
    return true;
}

/* Follows steps [k, nstep) of template path tp from the value at p; appends every result's
 * start to c->xpos.  False only when memory runs out. */
static bool follow(run *r, const vm_tpath *tp, uint32_t k, uint32_t p)
{
    vm_ctx *c = r->c;
    const char *s = r->json;
    uint32_t n = r->len;
    for (; k < tp->nstep; k++) {
        const vm_tstep *st = &r->p->tsteps[tp->step0 + k];
        if (p >= n)
            return true;
        if (st->kind == VM_TS_NAME) {
            if (s[p] != '{')
                return true;
            /* A path whose parent is the object of the last path's last name starts there. */
            uint32_t from = p + 1, after;
            if (k + 1 == tp->nstep && r->memo_obj == p)
                from = r->memo_resume;
            uint32_t v = member(c, r->br, s, n, p, from, vm_s(r->p, st->name), st->name.len, &after);
            if (v == VM_NONE)
                return true;
            if (k + 1 == tp->nstep) {
                r->memo_obj = p;
                r->memo_resume = after;
            }
            p = v;
        } else if (st->kind == VM_TS_INDEX && st->index >= 0) {
            /* element i: walk to it, no further */
            if (s[p] != '[')
                return true;
            uint32_t q = ws(s, n, p + 1);
            for (int32_t i = 0; i < st->index && q < n && s[q] != ']'; i++) {
                q = ws(s, n, value_end(r->br, s, n, q));
                if (q < n && s[q] == ',')
                    q = ws(s, n, q + 1);
            }
            if (q >= n || s[q] == ']')
                return true;
            p = q;
        } else if (st->kind == VM_TS_INDEX) {
            if (s[p] != '[')
                return true;
            uint32_t first = c->xpos.n;
            if (!children(c, r->br, s, n, p))
                return false;
            uint32_t count = c->xpos.n - first;
            int64_t i = st->index < 0 ? (int64_t)count + st->index : st->index;
            uint32_t v = i >= 0 && i < count ? c->xpos.v[first + i] : VM_NONE;
            c->xpos.n = first;
            if (v == VM_NONE)
                return true;
            p = v;
        } else {
            if (s[p] != '[' && s[p] != '{')
                return true;
            uint32_t first = c->xpos.n;
            if (!children(c, r->br, s, n, p))
                return false;
            uint32_t last = c->xpos.n;
            /* each child, on with the rest of the steps; results go after them */
            for (uint32_t i = first; i < last; i++)
                if (!follow(r, tp, k + 1, c->xpos.v[i]))
                    return false;
            uint32_t nres = c->xpos.n - last;
            if (nres)
                memmove(c->xpos.v + first, c->xpos.v + last, nres * sizeof *c->xpos.v);
            c->xpos.n = first + nres;
            return true;
        }
    }
    return VM_BUF_PUSH(c->xpos, p);
}

/* Is the value that starts at json[v] an object's member (after its ':')?  The scanner counts
 * the arrays a leaf lies in only through container elements: the lone leaf of "k": ["a"] has no
 * array of its own, and is the path's value only if nothing but a ':' comes before it. */
static bool member_value(const char *json, uint32_t v)
{
    while (v > 0 && (json[v - 1] == ' ' || json[v - 1] == '\t' || json[v - 1] == '\n' ||
                     json[v - 1] == '\r'))
        v--;
    return v > 0 && json[v - 1] == ':';
}

/* The value at template path a: one value, nothing, or (with [*]) an array of the results. */
static vm_status path_value(run *r, uint32_t a, tval *out)
{
    vm_ctx *c = r->c;
    const vm_tpath *tp = &r->p->tpaths[a];
    bool many = false;
    for (uint32_t k = 0; k < tp->nstep; k++)
        many |= r->p->tsteps[tp->step0 + k].kind == VM_TS_ALL;
    *out = (tval){ TV_NOTHING, W_EVENT, 0, 0 };
    /* A leaf the scanner found (a path of names, one leaf, in no array) is known already; unless
     * the scan read a key with dots as several names, which a template's path does not. */
    if (!many && tp->path != VM_NONE && c->scanned == r->json && c->scanned_len == r->len &&
        c->dotted_keys == 0) {
        uint32_t f = c->first[tp->path];
        if (f != VM_NONE && c->fields.v[f].next == VM_NONE && c->fields.v[f].nmemb == 0 &&
            member_value(r->json, c->fields.v[f].off - (c->fields.v[f].type == VM_J_STR))) {
            const vm_field *fl = &c->fields.v[f];
            uint32_t q = fl->type == VM_J_STR;
            *out = (tval){ TV_JSON, W_EVENT, fl->off - q, fl->len + 2 * q };
            return VM_OK;
        }
    }
    uint32_t root = ws(r->json, r->len, 0);
    uint32_t first = c->xpos.n;
    if (!follow(r, tp, 0, root))
        return nomem(r);
    uint32_t nres = c->xpos.n - first;
    if (!many) {
        if (nres == 1) {
            uint32_t v = c->xpos.v[first];
            *out = (tval){ TV_JSON, W_EVENT, v, value_end(r->br, r->json, r->len, v) - v };
        }
        c->xpos.n = first;
        return VM_OK;
    }
    uint32_t start = SCR(r)->n;
    bool ok = put(SCR(r), "[", 1);
    for (uint32_t i = 0; i < nres && ok; i++) {
        uint32_t v = c->xpos.v[first + i];
        ok = (i == 0 || put(SCR(r), ",", 1)) &&
             put(SCR(r), r->json + v, value_end(r->br, r->json, r->len, v) - v);
    }
    ok = ok && put(SCR(r), "]", 1);
    c->xpos.n = first;
    if (!ok)
        return nomem(r);
    *out = scratch_val(r, TV_JSON, start);
    return VM_OK;
}

/* ---- values ----------------------------------------------------------------------------------- */

static char json_kind(const run *r, const tval *v)
{
    return v->kind == TV_JSON && v->len ? text_of(r, v)[0] : 0;
}

static bool present(const run *r, const tval *v)
{
    return v->kind != TV_NOTHING && json_kind(r, v) != 'n';
}

/* Appends v's text to b: a string's characters (decoded), any other JSON value as written. */
static bool put_text(run *r, vm_cbuf *b, const tval *v)
{
    if (v->kind == TV_NOTHING)
        return true;
    if (json_kind(r, v) != '"')
        return put_val(r, b, v);
    if (!reserve(b, v->len))
        return false;
    const char *s = text_of(r, v);   /* (after reserve: the value may lie in b) */
    b->n += (uint32_t)vm_json_unescape(s + 1, v->len - 2, b->v + b->n);
    return true;
}

/* v's text as a new scratch string. */
static bool text_value(run *r, const tval *v, tval *out)
{
    if (v->kind == TV_STR) {
        *out = *v;
        return true;
    }
    uint32_t start = SCR(r)->n;
    if (!put_text(r, SCR(r), v))
        return false;
    *out = scratch_val(r, TV_STR, start);
    return true;
}

/* Writes v as a payload's JSON value. */
static bool emit_json(run *r, const tval *v)
{
    if (v->kind == TV_NOTHING)
        return put(OUT(r), "null", 4);
    if (v->kind == TV_JSON)
        return put_val(r, OUT(r), v);
    return put(OUT(r), "\"", 1) && put_escaped(OUT(r), text_of(r, v), v->len) && put(OUT(r), "\"", 1);
}

/* Writes v inside a JSON string: its text, escaped (a JSON string's body is already). */
static bool emit_instr(run *r, const tval *v)
{
    if (v->kind == TV_NOTHING)
        return true;
    if (json_kind(r, v) == '"') {
        tval body = { TV_JSON, v->where, v->off + 1, v->len - 2 };
        return put_val(r, OUT(r), &body);
    }
    return put_escaped(OUT(r), text_of(r, v), v->len);
}

/* ---- time -------------------------------------------------------------------------------------- */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool digits(const char *s, size_t n, size_t at, size_t k, int *out)
{
    if (at + k > n)
        return false;
    int v = 0;
    for (size_t i = 0; i < k; i++) {
        if (s[at + i] < '0' || s[at + i] > '9')
            return false;
        v = v * 10 + (s[at + i] - '0');
    }
    *out = v;
    return true;
}

bool vm_parse_time(const char *s, size_t n, int64_t *ms)
{
    int Y, M, D, h, m, sec;
    if (!digits(s, n, 0, 4, &Y) || n < 19 || s[4] != '-' || !digits(s, n, 5, 2, &M) || s[7] != '-' ||
        !digits(s, n, 8, 2, &D) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        !digits(s, n, 11, 2, &h) || s[13] != ':' || !digits(s, n, 14, 2, &m) || s[16] != ':' ||
        !digits(s, n, 17, 2, &sec))
        return false;
    static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (M < 1 || M > 12 || D < 1 || D > mdays[M - 1] || h > 23 || m > 59 || sec > 60)
        return false;
    bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    if (M == 2 && D == 29 && !leap)
        return false;
    size_t i = 19;
    int frac_ms = 0;
    if (i < n && s[i] == '.') {
        size_t k = ++i;
        int scale = 100;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            frac_ms += (s[i] - '0') * scale;
            scale /= 10;
            i++;
        }
        if (i == k)
            return false;
    }
    int offset = 0;
    if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i < n && (s[i] == '+' || s[i] == '-')) {
        int oh, om;
        if (!digits(s, n, i + 1, 2, &oh) || i + 3 >= n || s[i + 3] != ':' || !digits(s, n, i + 4, 2, &om) ||
            oh > 23 || om > 59)
            return false;
        offset = (s[i] == '+' ? 1 : -1) * (oh * 60 + om);
        i += 6;
    } else {
        return false;
    }
    if (i != n)
        return false;
    int64_t secs = days_from_civil(Y, (unsigned)M, (unsigned)D) * 86400 + h * 3600 + m * 60 + sec -
                   (int64_t)offset * 60;
    *ms = secs * 1000 + frac_ms;
    return true;
}

/* Formats ms since 1970 (UTC) by fmt: %Y %m %d %H %M %S %L (milliseconds) %y %j %e %b %B %a
 * %A %Z %z %s %F %T %%.  False on another conversion. */
static bool format_time(vm_cbuf *b, int64_t ms, const char *fmt, size_t n, char *bad)
{
    static const char *const mon[] = { "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December" };
    static const char *const wday[] = { "Sunday", "Monday", "Tuesday", "Wednesday", "Thursday",
        "Friday", "Saturday" };
    int64_t secs = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
    int millis = (int)(ms - secs * 1000);
    time_t t = (time_t)secs;
    struct tm tm;
    if (!gmtime_r(&t, &tm))
        return false;
    for (size_t i = 0; i < n; i++) {
        char buf[32];
        int k;
        if (fmt[i] != '%' || i + 1 == n) {
            if (!put(b, fmt + i, 1))
                return false;
            continue;
        }
        switch (fmt[++i]) {
        case 'Y': k = snprintf(buf, sizeof buf, "%04d", tm.tm_year + 1900); break;
        case 'm': k = snprintf(buf, sizeof buf, "%02d", tm.tm_mon + 1); break;
        case 'd': k = snprintf(buf, sizeof buf, "%02d", tm.tm_mday); break;
        case 'e': k = snprintf(buf, sizeof buf, "%2d", tm.tm_mday); break;
        case 'H': k = snprintf(buf, sizeof buf, "%02d", tm.tm_hour); break;
        case 'M': k = snprintf(buf, sizeof buf, "%02d", tm.tm_min); break;
        case 'S': k = snprintf(buf, sizeof buf, "%02d", tm.tm_sec); break;
        case 'L': k = snprintf(buf, sizeof buf, "%03d", millis); break;
        case 'y': k = snprintf(buf, sizeof buf, "%02d", ((tm.tm_year + 1900) % 100 + 100) % 100); break;
        case 'j': k = snprintf(buf, sizeof buf, "%03d", tm.tm_yday + 1); break;
        case 'b': k = snprintf(buf, sizeof buf, "%.3s", mon[tm.tm_mon]); break;
        case 'B': k = snprintf(buf, sizeof buf, "%s", mon[tm.tm_mon]); break;
        case 'a': k = snprintf(buf, sizeof buf, "%.3s", wday[tm.tm_wday]); break;
        case 'A': k = snprintf(buf, sizeof buf, "%s", wday[tm.tm_wday]); break;
        case 'Z': k = snprintf(buf, sizeof buf, "UTC"); break;
        case 'z': k = snprintf(buf, sizeof buf, "+0000"); break;
        case 's': k = snprintf(buf, sizeof buf, "%lld", (long long)secs); break;
        case 'F': k = snprintf(buf, sizeof buf, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday); break;
        case 'T': k = snprintf(buf, sizeof buf, "%02d:%02d:%02d", tm.tm_hour, tm.tm_min, tm.tm_sec); break;
        case '%': k = snprintf(buf, sizeof buf, "%%"); break;
        default: *bad = fmt[i]; return false;
        }
        if (!put(b, buf, (size_t)k))
            return false;
    }
    return true;
}

static int64_t clock_ms(const run *r)
{
    if (r->env && r->env->now_ms)
        return r->env->now_ms;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ms as an RFC 3339 string with milliseconds, in scratch. */
static bool time_value(run *r, int64_t ms, tval *out)
{
    uint32_t start = SCR(r)->n;
    char bad;
    static const char rfc3339[] = "%Y-%m-%dT%H:%M:%S.%LZ";
    if (!format_time(SCR(r), ms, rfc3339, sizeof rfc3339 - 1, &bad))
        return false;
    *out = scratch_val(r, TV_STR, start);
    return true;
}

/* ---- functions -------------------------------------------------------------------------------- */

static const char *kind_name(const run *r, const tval *v)
{
    switch (v->kind == TV_STR ? '"' : json_kind(r, v)) {
    case '"': return "a string";
    case '{': return "an object";
    case '[': return "an array";
    case 't': case 'f': return "a boolean";
    case 'n': return "null";
    default: return "a number";
    }
}

/* Quotes up to 40 bytes of v's text for a message. */
static const char *shown(const run *r, const tval *v, char *buf, size_t cap)
{
    const char *s = text_of(r, v);
    size_t n = v->len;
    if (v->kind == TV_STR)
        snprintf(buf, cap, "\"%.*s%s\"", (int)(n > 40 ? 40 : n), s, n > 40 ? "..." : "");
    else
        snprintf(buf, cap, "%.*s%s", (int)(n > 40 ? 40 : n), s, n > 40 ? "..." : "");
    return buf;
}

static vm_status call(run *r, unsigned fn, tval *args, uint32_t nargs, tval *out)
{
    vm_ctx *c = r->c;
    char shownbuf[64];
    *out = (tval){ TV_NOTHING, W_EVENT, 0, 0 };
    if (fn == VM_FN_NOW)
        return time_value(r, clock_ms(r), out) ? VM_OK : nomem(r);
    if (args[0].kind == TV_NOTHING)
        return VM_OK;   /* a function of nothing is nothing: `?? default` applies */
    tval a = args[0];
    char k = a.kind == TV_STR ? '"' : json_kind(r, &a);
    switch (fn) {
    case VM_FN_UPPER:
    case VM_FN_LOWER: {
        tval t;
        if (!text_value(r, &a, &t))
            return nomem(r);
        uint32_t start = SCR(r)->n;
        for (uint32_t i = 0; i < t.len;) {
            const char *s = text_of(r, &t);
            uint32_t cp;
            size_t k1 = vm_utf8_decode(s + i, t.len - i, &cp);
            if (!k1) {   /* (event text is valid UTF-8; keep any other byte as it is) */
                cp = (unsigned char)s[i];
                k1 = 1;
            }
            uint32_t to[3];
            size_t m = vm_case_map(cp, fn == VM_FN_UPPER, to);
            if (!reserve(SCR(r), 12))
                return nomem(r);
            for (size_t j = 0; j < m; j++)
                SCR(r)->n += (uint32_t)vm_utf8_encode(to[j], SCR(r)->v + SCR(r)->n);
            i += (uint32_t)k1;
        }
        *out = scratch_val(r, TV_STR, start);
        return VM_OK;
    }
    case VM_FN_LEN: {
        size_t n = 0;
        if (k == '"') {
            tval t;
            if (!text_value(r, &a, &t))
                return nomem(r);
            const char *s = text_of(r, &t);
            for (uint32_t i = 0; i < t.len; i++)
                n += ((unsigned char)s[i] & 0xc0) != 0x80;
        } else if (k == '[' || k == '{') {
            uint32_t first = c->xpos.n;
            if (a.where != W_EVENT) {
                /* (an array made from several results lies in scratch: count its elements) */
                const char *s = text_of(r, &a);
                for (uint32_t i = 1, depth = 0; i + 1 < a.len; i++) {
                    if (s[i] == '"') {
                        i = string_end(s, a.len, i) - 1;
                    } else if (s[i] == '{' || s[i] == '[') {
                        depth++;
                    } else if (s[i] == '}' || s[i] == ']') {
                        depth--;
                    } else if (s[i] == ',' && depth == 0) {
                        n++;
                    }
                }
                n += a.len > 2;
            } else {
                if (!children(c, r->br, r->json, r->len, a.off))
                    return nomem(r);
                n = c->xpos.n - first;
                c->xpos.n = first;
            }
        } else {
            return fail(r, "len takes a string, an array or an object, not %s", kind_name(r, &a));
        }
        uint32_t start = SCR(r)->n;
        char buf[24];
        if (!put(SCR(r), buf, (size_t)snprintf(buf, sizeof buf, "%zu", n)))
            return nomem(r);
        *out = scratch_val(r, TV_JSON, start);
        return VM_OK;
    }
    case VM_FN_JOIN: {
        if (k != '[')
            return fail(r, "join takes an array, not %s", kind_name(r, &a));
        tval sep = { TV_STR, W_POOL, 0, 0 };
        static const char comma[] = ",";
        bool default_sep = nargs < 2 || args[1].kind == TV_NOTHING;
        if (!default_sep && !text_value(r, &args[1], &sep))
            return nomem(r);
        /* The elements of an array: walk the array's own text. */
        const char *base = text_of(r, &a);
        uint32_t alen = a.len, start = SCR(r)->n;
        bool first = true;
        for (uint32_t p = ws(base, alen, 1); p < alen && base[p] != ']';) {
            uint32_t e = value_end(NULL, base, alen, p);
            tval el = { TV_JSON, a.where, a.off + p, e - p };
            if (!first && !(default_sep ? put(SCR(r), comma, 1) : put_val(r, SCR(r), &sep)))
                return nomem(r);
            if (!put_text(r, SCR(r), &el))
                return nomem(r);
            base = text_of(r, &a);   /* (scratch may have moved) */
            first = false;
            p = ws(base, alen, e);
            if (p < alen && base[p] == ',')
                p = ws(base, alen, p + 1);
        }
        *out = scratch_val(r, TV_STR, start);
        return VM_OK;
    }
    case VM_FN_TO_STRING:
        return text_value(r, &a, out) ? VM_OK : nomem(r);
    case VM_FN_TO_NUMBER: {
        if (k != '"' && k != '[' && k != '{' && k != 't' && k != 'f' && k != 'n') {
            *out = a;   /* a number already */
            return VM_OK;
        }
        tval t;
        if (k != '"' || !text_value(r, &a, &t))
            return k != '"' ? fail(r, "to_number takes a string or a number, not %s", kind_name(r, &a))
                            : nomem(r);
        const char *s = text_of(r, &t);
        size_t i = 0, n = t.len;
        while (i < n && s[i] == ' ')
            i++;
        while (n > i && s[n - 1] == ' ')
            n--;
        double dv;
        if (n == i || vm_json_number_len(s + i, n - i, NULL) != n - i)
            return fail(r, "to_number: %s is not a number", shown(r, &a, shownbuf, sizeof shownbuf));
        if (!vm_number_value(s + i, n - i, &dv) || !isfinite(dv))
            return fail(r, "to_number: %s is beyond the range of a double",
                        shown(r, &a, shownbuf, sizeof shownbuf));
        *out = (tval){ TV_JSON, t.where, t.off + (uint32_t)i, (uint32_t)(n - i) };
        return VM_OK;
    }
    case VM_FN_JSON: {
        uint32_t start = SCR(r)->n;
        if (a.kind == TV_STR) {
            if (!put(SCR(r), "\"", 1) || !reserve(SCR(r), a.len * 6 + 1) ||
                !put_escaped(SCR(r), text_of(r, &a), a.len) || !put(SCR(r), "\"", 1))
                return nomem(r);
        } else if (!put_val(r, SCR(r), &a)) {
            return nomem(r);
        }
        *out = scratch_val(r, TV_STR, start);
        return VM_OK;
    }
    case VM_FN_FORMAT_TIME: {
        int64_t ms;
        if (k == '"') {
            tval t;
            if (!text_value(r, &a, &t))
                return nomem(r);
            /* An offset can carry a time across year 1 or 9999: the same range as numbers. */
            if (!vm_parse_time(text_of(r, &t), t.len, &ms) || ms < -62135596800000 ||
                ms > 253402300799999)
                return fail(r, "format_time: %s is not an RFC 3339 time (as 2026-11-26T10:00:00Z)",
                            shown(r, &a, shownbuf, sizeof shownbuf));
        } else if (k != '[' && k != '{' && k != 't' && k != 'f' && k != 'n') {
            double secs;
            if (!vm_number_value(text_of(r, &a), a.len, &secs) || secs < -62135596800.0 ||
                secs > 253402300799.0)
                return fail(r, "format_time: %s is not a time (seconds since 1970)",
                            shown(r, &a, shownbuf, sizeof shownbuf));
            ms = (int64_t)(secs * 1000.0);
        } else {
            return fail(r, "format_time takes a time (a string or seconds since 1970), not %s",
                        kind_name(r, &a));
        }
        if (nargs < 2 || args[1].kind == TV_NOTHING)
            return time_value(r, ms, out) ? VM_OK : nomem(r);
        tval f;
        if (!text_value(r, &args[1], &f))
            return nomem(r);
        /* (the format may lie in scratch: copy it out before writing more there) */
        char fmt[256];
        if (f.len >= sizeof fmt)
            return fail(r, "format_time: the format is longer than 255 bytes");
        memcpy(fmt, text_of(r, &f), f.len);
        uint32_t start = SCR(r)->n;
        char bad = 0;
        if (!format_time(SCR(r), ms, fmt, f.len, &bad))
            return bad ? fail(r, "format_time: unknown conversion '%%%c' in the format", bad) : nomem(r);
        *out = scratch_val(r, TV_STR, start);
        return VM_OK;
    }
    default:
        return fail(r, "unknown function %u", fn);
    }
}

/* ---- the loop --------------------------------------------------------------------------------- */

static vm_status var_value(run *r, uint32_t a, tval *out)
{
    const vm_program *p = r->p;
    const char *s = NULL;
    size_t n = 0;
    if (a == VM_VAR_INGEST_TIME) {
        int64_t ms = r->env && r->env->ingest_ms ? r->env->ingest_ms : clock_ms(r);
        return time_value(r, ms, out) ? VM_OK : nomem(r);
    }
    if (a == VM_VAR_BUS) {
        if (r->env && r->env->bus)
            s = r->env->bus;
        else if (p->rules[r->rule].bus != VM_NONE)
            s = vm_s(p, p->buses[p->rules[r->rule].bus].name);
    } else {
        s = r->env && r->env->rule ? r->env->rule : vm_s(p, p->rules[r->rule].name);
    }
    n = s ? strlen(s) : 0;
    uint32_t start = SCR(r)->n;
    if (!put(SCR(r), s ? s : "", n))
        return nomem(r);
    *out = scratch_val(r, TV_STR, start);
    return VM_OK;
}

static vm_status exec(run *r, const vm_xform *x)
{
    vm_ctx *c = r->c;
    c->xstack.n = c->xfirst.n = 0;
    for (uint32_t pc = 0; pc < x->ncode; pc++) {
        r->at = x->code0 + pc;
        vm_inst in = r->p->tcode[r->at];
        uint32_t a = VM_A(in), b = VM_B(in);
        tval v;
        vm_status st = VM_OK;
        switch (VM_OP(in)) {
        case VM_TO_TEXT:
            if (!put(OUT(r), r->p->strs + b, a))
                return nomem(r);
            continue;
        case VM_TO_CONST:
        case VM_TO_STR:
            v = (tval){ VM_OP(in) == VM_TO_CONST ? TV_JSON : TV_STR, W_POOL, b, a };
            break;
        case VM_TO_PATH:
            st = path_value(r, a, &v);
            break;
        case VM_TO_VAR:
            st = var_value(r, a, &v);
            break;
        case VM_TO_CALL: {
            if (c->xstack.n < b)
                return fail(r, "malformed template code");
            c->xstack.n -= b;
            tval args[4];
            if (b)
                memcpy(args, c->xstack.v + c->xstack.n, (b > 4 ? 4 : b) * sizeof *args);
            st = call(r, a, args, b, &v);
            break;
        }
        case VM_TO_CAT: {
            if (c->xstack.n < a)
                return fail(r, "malformed template code");
            c->xstack.n -= a;
            uint32_t start = SCR(r)->n;
            for (uint32_t i = 0; i < a; i++)
                if (!put_text(r, SCR(r), &c->xstack.v[c->xstack.n + i]))
                    return nomem(r);
            v = scratch_val(r, TV_STR, start);
            break;
        }
        case VM_TO_EMIT: {
            if (c->xstack.n == 0)
                return fail(r, "malformed template code");
            tval t = c->xstack.v[--c->xstack.n];
            bool ok = true;
            switch (a) {
            case VM_EMIT_JSON: ok = emit_json(r, &t); break;
            case VM_EMIT_INSTR: ok = emit_instr(r, &t); break;
            case VM_EMIT_TEXT: ok = put_text(r, OUT(r), &t); break;
            default: ok = put(OUT(r), "\"", 1) && emit_instr(r, &t) && put(OUT(r), "\"", 1); break;
            }
            if (!ok)
                return nomem(r);
            continue;
        }
        case VM_TO_BEGIN:
            if (!put(OUT(r), a ? "[" : "{", 1) || !VM_BUF_PUSH(c->xfirst, 1))
                return nomem(r);
            continue;
        case VM_TO_SEP:
            if (c->xfirst.n == 0)
                return fail(r, "malformed template code");
            if (!c->xfirst.v[c->xfirst.n - 1] && !put(OUT(r), ",", 1))
                return nomem(r);
            c->xfirst.v[c->xfirst.n - 1] = 0;
            continue;
        case VM_TO_END:
            if (c->xfirst.n == 0)
                return fail(r, "malformed template code");
            c->xfirst.n--;
            if (!put(OUT(r), a ? "]" : "}", 1))
                return nomem(r);
            continue;
        case VM_TO_SKIP:
        case VM_TO_ELSE: {
            if (c->xstack.n == 0)
                return fail(r, "malformed template code");
            bool there = present(r, &c->xstack.v[c->xstack.n - 1]);
            if (VM_OP(in) == VM_TO_SKIP ? !there : there) {
                if (VM_OP(in) == VM_TO_SKIP)
                    c->xstack.n--;
                pc = b - 1;   /* (verified: forward, inside the transform) */
            } else if (VM_OP(in) == VM_TO_ELSE) {
                c->xstack.n--;
            }
            continue;
        }
        default:
            return fail(r, "malformed template code");
        }
        if (st != VM_OK)
            return st;
        if (!VM_BUF_PUSH(c->xstack, v))
            return nomem(r);
    }
    if (c->xstack.n != 0 || c->xfirst.n != 0)
        return fail(r, "malformed template code");
    return VM_OK;
}

/* A trusted context's vm_match read only what the rules look at, without validating; a
 * template walks the event's text assuming JSON, so the event is validated here, once for all
 * the templates it is given to (by stage 1 where it runs: the template then also finds values
 * by its brackets).  False, with err filled, when it is not valid JSON. */
static bool trusted_event_ok(vm_ctx *c, const char *json, size_t len, vm_error *err)
{
    if (c->valid_for == json && c->valid_len == len)
        return true;
    size_t bad = 0;
    bool scanned = c->scanned == json && c->scanned_len == len;
    if (scanned && c->fast_ok && len >= 64 && vm_fast_stage1(c, json, len)) {
        c->fast_for = json;
    } else if (!vm_json_valid(json, len, &bad)) {
        err->code = VM_ERR_EVENT;
        err->offset = bad;
        snprintf(err->msg, sizeof err->msg,
                 "the event is not valid JSON (at byte %zu), as a trusted event must be", bad);
        return false;
    }
    c->valid_for = json;
    c->valid_len = len;
    return true;
}

vm_status vm_transform(vm_ctx *c, uint32_t rule, const char *json, size_t len,
                       const vm_xform_env *env, const char **out, size_t *outlen, bool *text,
                       vm_error *err)
{
    const vm_program *p = c->p;
    *out = NULL;
    *outlen = 0;
    *text = false;
    if (rule >= p->nrules || len > UINT32_MAX) {
        err->code = VM_ERR_LIMIT;
        err->offset = 0;
        snprintf(err->msg, sizeof err->msg, rule >= p->nrules ? "no such rule" : "event larger than 4 GiB");
        return VM_ERR_LIMIT;
    }
    uint32_t xi = p->rules[rule].xform;
    if (xi == VM_NONE) {
        *out = json;
        *outlen = len;
        return VM_OK;
    }
    const vm_xform *x = &p->xforms[xi];
    if (x->kind != VM_X_TEMPLATE) {
        err->code = VM_ERR_TRANSFORM;
        err->offset = 0;
        snprintf(err->msg, sizeof err->msg, "a function transform is run by the runtime, not the VM");
        return VM_ERR_TRANSFORM;
    }
    if (c->trusted && !trusted_event_ok(c, json, len, err))
        return VM_ERR_EVENT;
    run r = { c, p, json, (uint32_t)len, env, rule, x->code0, err, VM_NONE, 0,
              c->fast_for == json && c->scanned == json && c->scanned_len == len ? &c->fast : NULL };
    c->xout.n = c->xscratch.n = c->xpos.n = 0;
    vm_status st = exec(&r, x);
    if (st != VM_OK) {
        c->xout.n = 0;   /* nothing half-written */
        return st;
    }
    *out = c->xout.v ? c->xout.v : "";
    *outlen = c->xout.n;
    *text = x->flags & VM_XF_TEXT;
    return VM_OK;
}
