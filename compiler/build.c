/*
 * build.c — the program builder: the string pool, paths, constants and tests that the passes
 * add to the image, and the IR nodes they make.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cc.h"
#include "regex.h"

/* ---- strings: one pool, each distinct string stored once ------------------------------------- */

/* A slot holds the string's place in the pool and 32 bits of its hash: a probe reads the pool
 * only for a string that is likely the one (compiling 100,000 issue193 rules, a slot that held
 * an index into a list of the strings cost a cache miss more a lookup: cc_str and its memcmp
 * were 19% of the time, 15% after). */
typedef struct {
    uint32_t off1;      /* offset in the pool + 1; 0: empty */
    uint32_t len, tag;  /* tag: the hash's high half */
} strslot;

struct cc_strtab {
    strslot *slots;
    uint32_t n, cap;    /* cap: number of slots, a power of two */
};

/* Eight bytes a step (a byte a step was a tenth of compiling 100k rules: the pool holds every
 * value and, at the end, the whole source text). */
static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n, w;
    for (; n >= 8; s += 8, n -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

static void strtab_grow(cc_comp *c)
{
    struct cc_strtab *t = c->strtab;
    uint32_t cap = t->cap ? t->cap * 2 : 1024;
    strslot *slots = calloc(cap, sizeof *slots);
    if (!slots)
        abort();
    for (uint32_t i = 0; i < t->cap; i++) {
        if (!t->slots[i].off1)
            continue;
        uint64_t h = hash_bytes(c->strs.v + t->slots[i].off1 - 1, t->slots[i].len) & (cap - 1);
        while (slots[h].off1)
            h = (h + 1) & (cap - 1);
        slots[h] = t->slots[i];
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
}

void cc_strtab_free(cc_comp *c)
{
    if (!c->strtab)
        return;
    free(c->strtab->slots);
    free(c->strtab);
    c->strtab = NULL;
}

vm_str cc_str_unpooled(cc_comp *c, const char *s, size_t n)
{
    vm_str e = { c->strs.n, (uint32_t)n };
    vec_reserve((void **)&c->strs.v, &c->strs.cap, 1, c->strs.n + (uint32_t)n + 1);
    memcpy(c->strs.v + c->strs.n, s, n);
    c->strs.v[c->strs.n + n] = 0;
    c->strs.n += (uint32_t)n + 1;
    return e;
}

/* When the text is the larger, the pool moves in front of it in its buffer rather than the text
 * being copied after the pool: compiling 100,000 issue193 rules, the 56 MB text was copied into
 * a pool of ~1.3 MB, 14k page faults (of 118k) and the copy. */
vm_str cc_str_adopt(cc_comp *c, char *text, size_t n)
{
    if (n <= c->strs.n) {
        vm_str e = cc_str_unpooled(c, text, n);
        free(text);
        return e;
    }
    uint32_t at = c->strs.n;
    char *b = cc_xrealloc(text, (size_t)at + n + 1);   /* (a large block moves without a copy) */
    memmove(b + at, b, n + 1);
    if (at)
        memcpy(b, c->strs.v, at);
    free(c->strs.v);
    c->strs.v = b;
    c->strs.n = c->strs.cap = at + (uint32_t)n + 1;
    return (vm_str){ at, (uint32_t)n };
}

vm_str cc_str(cc_comp *c, const char *s, size_t n)
{
    if (!c->strtab)
        c->strtab = calloc(1, sizeof *c->strtab);
    struct cc_strtab *t = c->strtab;
    if ((t->n + 1) * 2 > t->cap)
        strtab_grow(c);
    uint64_t full = hash_bytes(s, n), h = full & (t->cap - 1);
    uint32_t tag = (uint32_t)(full >> 32);
    for (; t->slots[h].off1; h = (h + 1) & (t->cap - 1)) {
        const strslot *e = &t->slots[h];
        if (e->tag == tag && e->len == n && memcmp(c->strs.v + e->off1 - 1, s, n) == 0)
            return (vm_str){ e->off1 - 1, e->len };
    }
    vm_str e = { c->strs.n, (uint32_t)n };
    vec_reserve((void **)&c->strs.v, &c->strs.cap, 1, c->strs.n + (uint32_t)n + 1);
    memcpy(c->strs.v + c->strs.n, s, n);
    c->strs.v[c->strs.n + n] = 0;   /* every pooled string is NUL-terminated too */
    c->strs.n += (uint32_t)n + 1;
    t->slots[h] = (strslot){ e.off + 1, e.len, tag };
    t->n++;
    return e;
}

/* ---- paths ----------------------------------------------------------------------------------- */

/* Paths are interned through a hash of their segments' pool offsets (equal strings share an
 * offset, see cc_str); slots hold path index + 1. */
static uint64_t path_hash(const vm_str *ss, uint32_t n)
{
    uint64_t h = 1469598103934665603ull ^ n;
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ ss[i].off) * 1099511628211ull;
    return h ^ (h >> 31);
}

static void path_table_grow(cc_comp *c)
{
    uint32_t cap = c->path_slots_cap ? c->path_slots_cap * 2 : 256;
    uint32_t *slots = calloc(cap, sizeof *slots);
    if (!slots)
        abort();
    for (uint32_t p = 0; p < c->paths.n; p++) {
        uint64_t h = path_hash(c->segs.v + c->paths.v[p].seg0, c->paths.v[p].nseg) & (cap - 1);
        while (slots[h])
            h = (h + 1) & (cap - 1);
        slots[h] = p + 1;
    }
    free(c->path_slots);
    c->path_slots = slots;
    c->path_slots_cap = cap;
}

uint32_t cc_path(cc_comp *c, const char *const *segs, const size_t *lens, uint32_t nseg)
{
    vm_str ss[CC_MAX_PATH];
    if (nseg > CC_MAX_PATH)
        abort();   /* the lowering passes check the limit first */
    for (uint32_t i = 0; i < nseg; i++)
        ss[i] = cc_str(c, segs[i], lens[i]);
    if ((c->paths.n + 1) * 2 > c->path_slots_cap)
        path_table_grow(c);
    uint32_t mask = c->path_slots_cap - 1;
    uint64_t h = path_hash(ss, nseg) & mask;
    for (; c->path_slots[h]; h = (h + 1) & mask) {
        vm_path e = c->paths.v[c->path_slots[h] - 1];
        if (e.nseg == nseg && memcmp(c->segs.v + e.seg0, ss, nseg * sizeof *ss) == 0)
            return c->path_slots[h] - 1;
    }
    vm_path e = { c->segs.n, nseg };
    for (uint32_t i = 0; i < nseg; i++)
        vec_push(c->segs, ss[i]);
    vec_push(c->paths, e);
    c->path_slots[h] = c->paths.n;
    return c->paths.n - 1;
}

bool cc_split_name(const char *s, size_t n, const char **segs, size_t *lens, uint32_t *nseg)
{
    uint32_t parts = 1;
    for (size_t i = 0; i < n; i++)
        parts += s[i] == '.';
    if (*nseg + parts > CC_MAX_PATH)
        return false;
    const char *end = s + n;
    for (;;) {
        const char *dot = memchr(s, '.', (size_t)(end - s));
        const char *stop = dot ? dot : end;
        segs[*nseg] = s;
        lens[(*nseg)++] = (size_t)(stop - s);
        if (!dot)
            return true;
        s = dot + 1;
    }
}

/* ---- constants and tests --------------------------------------------------------------------- */

uint32_t cc_const(cc_comp *c, const vm_const *k)
{
    vec_push(c->consts, *k);
    return c->consts.n - 1;
}

uint32_t cc_const_string(cc_comp *c, const char *s, size_t n, bool fold, bool ip_aware)
{
    vm_const k = { .type = VM_C_STR };
    if (fold) {
        char *f = cc_xmalloc(n * 3 + 1);
        size_t fn = vm_casefold_utf8(s, n, f);
        k.s = cc_str(c, f, fn);
        free(f);
    } else {
        k.s = cc_str(c, s, n);
    }
    if (ip_aware && vm_parse_ip(s, n, k.ip)) {
        k.flags |= VM_CF_IP;
        k.bits = 128;
    }
    return cc_const(c, &k);
}

uint32_t cc_const_number(cc_comp *c, const char *text, size_t n, double value)
{
    vm_const k = { .type = VM_C_NUM, .num = value };
    char buf[1100];
    size_t cn = vm_number_canon(text, n, buf, sizeof buf);
    k.s = cn ? cc_str(c, buf, cn) : cc_str(c, text, n);
    return cc_const(c, &k);
}

uint32_t cc_const_simple(cc_comp *c, vm_const_type type)
{
    vm_const k = { .type = (uint8_t)type };
    return cc_const(c, &k);
}

uint32_t cc_const_range(cc_comp *c, double lo, bool lo_open, double hi, bool hi_open)
{
    vm_const k = { .type = VM_C_RANGE, .lo = lo, .hi = hi };
    k.flags = (uint8_t)((lo_open ? VM_CF_LO_OPEN : 0) | (hi_open ? VM_CF_HI_OPEN : 0));
    return cc_const(c, &k);
}

bool cc_const_cidr(cc_comp *c, const char *s, size_t n, uint32_t *out, const char **err)
{
    const char *slash = memchr(s, '/', n);
    if (!slash || memchr(slash + 1, '/', n - (size_t)(slash + 1 - s))) {
        *err = "malformed CIDR: exactly one '/' is required, as in \"10.0.0.0/8\"";
        return false;
    }
    vm_const k = { .type = VM_C_CIDR };
    if (!vm_parse_ip(s, (size_t)(slash - s), k.ip)) {
        *err = "malformed CIDR: the part before '/' is not an IPv4 or IPv6 address";
        return false;
    }
    const char *b = slash + 1, *e = s + n;
    if (b == e || e - b > 3) {
        *err = "malformed CIDR: the prefix length after '/' must be a number";
        return false;
    }
    int bits = 0;
    for (const char *p = b; p < e; p++) {
        if (*p < '0' || *p > '9') {
            *err = "malformed CIDR: the prefix length after '/' must be a number";
            return false;
        }
        bits = bits * 10 + (*p - '0');
    }
    bool v4 = memchr(s, ':', (size_t)(slash - s)) == NULL;
    if (bits > (v4 ? 32 : 128)) {
        *err = v4 ? "malformed CIDR: an IPv4 prefix length is at most 32"
                  : "malformed CIDR: an IPv6 prefix length is at most 128";
        return false;
    }
    if (v4)
        bits += 96;
    /* Host bits may be set ("10.1.2.3/8"): they are masked off, as event-ruler does. */
    for (int i = 0; i < 16; i++) {
        int keep = bits - i * 8;
        uint8_t mask = keep >= 8 ? 0xff : keep <= 0 ? 0 : (uint8_t)(0xff << (8 - keep));
        k.ip[i] &= mask;
    }
    k.bits = (uint8_t)bits;
    *out = cc_const(c, &k);
    return true;
}

bool cc_const_regex(cc_comp *c, const char *pat, size_t n, char esc, uint32_t *out, char *err,
                    size_t errcap, size_t *errpos)
{
    re_buf b = { (vm_re_inst *)c->re_insts.v, c->re_insts.n, c->re_insts.cap,
                 (vm_range *)c->re_ranges.v, c->re_ranges.n, c->re_ranges.cap };
    vm_regex re;
    re_error e;
    int rc = re_compile(&b, pat, n, esc, &re, &e);
    c->re_insts.v = b.inst;
    c->re_insts.n = (uint32_t)b.ninst;
    c->re_insts.cap = (uint32_t)b.icap;
    c->re_ranges.v = b.ranges;
    c->re_ranges.n = (uint32_t)b.nranges;
    c->re_ranges.cap = (uint32_t)b.rcap;
    if (rc != 0) {
        /* The caret shows the position: drop a trailing " at N" from the message. */
        size_t n = strlen(e.msg), k = n;
        while (k > 0 && e.msg[k - 1] >= '0' && e.msg[k - 1] <= '9')
            k--;
        if (k < n && k >= 4 && !memcmp(e.msg + k - 4, " at ", 4))
            e.msg[k - 4] = 0;
        snprintf(err, errcap, "%s", e.msg);
        *errpos = e.pos;
        return false;
    }
    vec_push(c->regexes, re);
    vm_const k = { .type = VM_C_REGEX, .re = c->regexes.n - 1, .s = cc_str(c, pat, n),
                   .flags = esc == '~' ? VM_CF_TILDE : 0 };
    *out = cc_const(c, &k);
    return true;
}

bool cc_check_wildcard(const char *s, size_t n, char *err, size_t errcap, size_t *errpos)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\') {
            if (i + 1 < n && (s[i + 1] == '*' || s[i + 1] == '\\')) {
                i++;
                continue;
            }
            snprintf(err, errcap, "invalid escape in wildcard: only \\* and \\\\ are allowed");
            *errpos = i;
            return false;
        }
        if (s[i] == '*' && i + 1 < n && s[i + 1] == '*') {
            snprintf(err, errcap, "consecutive '*' in wildcard (one '*' already matches any run)");
            *errpos = i;
            return false;
        }
    }
    return true;
}

uint32_t cc_test(cc_comp *c, vm_test_kind kind, unsigned flags, const uint32_t *consts, uint32_t n)
{
    vm_test t = { (uint8_t)kind, (uint8_t)flags, 0, n };
    /* The constants of a test are contiguous: copy them to the end when they are not. */
    bool contiguous = true;
    for (uint32_t i = 1; i < n; i++)
        contiguous &= consts[i] == consts[0] + i;
    if (n && contiguous) {
        t.arg0 = consts[0];
    } else {
        t.arg0 = c->consts.n;
        for (uint32_t i = 0; i < n; i++) {
            vm_const k = c->consts.v[consts[i]];
            vec_push(c->consts, k);
        }
    }
    vec_push(c->tests, t);
    return c->tests.n - 1;
}

/* ---- IR -------------------------------------------------------------------------------------- */

vm_span cc_span(cc_unit *u, uint32_t off, uint32_t len)
{
    vm_span s = { u->src, off, len };
    return s;
}

ir *ir_new(cc_comp *c, ir_kind kind, vm_span span)
{
    ir *n = cc_rule_alloc(c, sizeof *n);   /* the IR lives while its rule is compiled */
    n->kind = kind;
    n->span = span;
    return n;
}

ir *ir_test(cc_comp *c, uint32_t path, uint32_t test, vm_span span)
{
    ir *n = ir_new(c, IR_TEST, span);
    n->path = path;
    n->test = test;
    return n;
}

void ir_add(cc_comp *c, ir *parent, ir *kid)
{
    /* Flatten and(and(...)) and or(or(...)): the codegen then sees one level per operator. */
    if (kid->kind == parent->kind && (kid->kind == IR_AND || kid->kind == IR_OR)) {
        for (uint32_t i = 0; i < kid->nkid; i++)
            ir_add(c, parent, kid->kid[i]);
        return;
    }
    if (parent->nkid == parent->cap) {
        /* Doubling keeps a long chain linear; the old array stays in the rule arena. */
        parent->cap = parent->cap ? parent->cap * 2 : 4;
        ir **k = cc_rule_alloc(c, parent->cap * sizeof *k);
        if (parent->nkid)
            memcpy(k, parent->kid, parent->nkid * sizeof *k);
        parent->kid = k;
    }
    parent->kid[parent->nkid++] = kid;
}
