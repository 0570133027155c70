/*
 * regex.c — the I-Regexp (RFC 9485) compiler: pattern text -> syntax tree -> Thompson NFA.
 *
 * The parser follows the RFC's ABNF exactly, with the escape character a parameter ('\' or
 * '~').  It builds a small tree (nodes in one array, children as sibling lists) whose character
 * classes are already final range lists in the output buffer; the tree's size in instructions is
 * computed (so counted repetition cannot blow up) before any instruction is emitted.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "regex.h"

#define NONE   0xffffffffu
#define RE_INF 0xffffffffu   /* REPEAT max: no upper bound */

typedef enum { N_CLASS, N_CAT, N_ALT, N_REPEAT } node_kind;

/* CLASS: ranges b->ranges[a .. a+n).  CAT/ALT: children from `child`, linked by `next` (an
 * empty CAT is the empty string).  REPEAT: `child` between a and n times (n = RE_INF:
 * unbounded). */
typedef struct {
    uint8_t kind;
    uint32_t a, n;
    uint32_t child, next;
    uint32_t size;   /* instructions it emits (set by node_size) */
    size_t pos;      /* where the node starts in the pattern (for messages) */
} re_node;

/* A category (or '.'), complemented or not, and where its ranges were appended. */
typedef struct {
    const vm_range *src;
    bool neg;
    uint32_t off, n;
} cat_cache;

#define CACHE_MAX 80   /* > 2 * (36 categories + '.') */

typedef struct {
    const char *pat;
    size_t len, pos;
    char esc;
    re_buf *b;
    re_error *err;
    bool failed;
    unsigned depth;
    re_node *nodes;
    size_t nnodes, ncap;
    vm_range *tmp;         /* the class being built */
    size_t ntmp, tcap;
    cat_cache seen[CACHE_MAX];   /* categories already in the class being built */
    size_t nseen;
    cat_cache cache[CACHE_MAX];
    size_t ncache;
    size_t range0;         /* b->nranges when compilation began */
    size_t big_pos;        /* a quantifier that made the program too large */
} re_parser;

/* What one escape or class character stands for: a code point, or a category's ranges. */
typedef struct {
    bool is_cat, neg;
    uint32_t cp;
    const vm_range *ranges;
    size_t n;
} re_item;

static const vm_range dot_ranges[] = {
    {0x0, 0x9}, {0xB, 0xC}, {0xE, 0xD7FF}, {0xE000, 0x10FFFF},
};

static int parse_alt(re_parser *p, uint32_t *out);

/* Records the first error: formats msg, appends " at <pos>".  Always returns -1. */
static int fail(re_parser *p, size_t pos, const char *fmt, ...)
{
    if (p->failed)
        return -1;
    p->failed = true;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(p->err->msg, sizeof p->err->msg, fmt, ap);
    va_end(ap);
    size_t used = k < 0 ? 0 : (size_t)k;
    if (used < sizeof p->err->msg)
        snprintf(p->err->msg + used, sizeof p->err->msg - used, " at %zu", pos);
    p->err->pos = pos;
    return -1;
}

/* Writes a code point for a message: itself when printable, else U+XXXX.  Returns buf. */
static const char *show_cp(uint32_t cp, char buf[12])
{
    if ((cp > 0x20 && cp < 0x7F) || (cp > 0xA0 && cp <= 0x10FFFF)) {
        size_t n = vm_utf8_encode(cp, buf);
        if (n > 0) {
            buf[n] = '\0';
            return buf;
        }
    }
    snprintf(buf, 12, "U+%04X", (unsigned)cp);
    return buf;
}

/* Decodes the code point at p->pos (the pattern is validated up front). Returns its length. */
static size_t peek_cp(const re_parser *p, uint32_t *cp)
{
    size_t n = vm_utf8_decode(p->pat + p->pos, p->len - p->pos, cp);
    if (n == 0) {   /* not reached: checked by validate_utf8 */
        *cp = (unsigned char)p->pat[p->pos];
        n = 1;
    }
    return n;
}

/* Returns the byte at p->pos + k, or -1 past the end. */
static int peek(const re_parser *p, size_t k)
{
    return p->pos + k < p->len ? (unsigned char)p->pat[p->pos + k] : -1;
}

/* Checks that the whole pattern is well-formed UTF-8.  Returns 0 or -1 (error recorded). */
static int validate_utf8(re_parser *p)
{
    for (size_t i = 0; i < p->len;) {
        uint32_t cp;
        size_t n = vm_utf8_decode(p->pat + i, p->len - i, &cp);
        if (n == 0)
            return fail(p, i, "invalid UTF-8");
        i += n;
    }
    return 0;
}

/* Appends a tree node.  Returns its index, or NONE when out of memory (error recorded). */
static uint32_t new_node(re_parser *p, node_kind kind, size_t pos)
{
    if (p->nnodes == p->ncap) {
        size_t cap = p->ncap ? p->ncap * 2 : 64;
        re_node *nodes = cap < NONE ? realloc(p->nodes, cap * sizeof *nodes) : NULL;
        if (!nodes) {
            fail(p, pos, "out of memory");
            return NONE;
        }
        p->nodes = nodes;
        p->ncap = cap;
    }
    re_node *nd = &p->nodes[p->nnodes];
    *nd = (re_node){ .kind = (uint8_t)kind, .child = NONE, .next = NONE, .pos = pos };
    return (uint32_t)p->nnodes++;
}

/* Makes room for `more` ranges in the output buffer.  Returns 0, or -1 (error recorded) when
 * out of memory or past RE_MAX_RANGES for this regex. */
static int reserve_ranges(re_parser *p, size_t more, size_t pos)
{
    re_buf *b = p->b;
    if (b->nranges - p->range0 + more > RE_MAX_RANGES)
        return fail(p, pos, "regular expression too large: more than %u class ranges",
                    RE_MAX_RANGES);
    if (b->nranges + more > NONE)
        return fail(p, pos, "too many class ranges in the program");
    if (b->nranges + more <= b->rcap)
        return 0;
    size_t cap = b->rcap ? b->rcap : 256;
    while (cap < b->nranges + more)
        cap *= 2;
    vm_range *r = realloc(b->ranges, cap * sizeof *r);
    if (!r)
        return fail(p, pos, "out of memory");
    b->ranges = r;
    b->rcap = cap;
    return 0;
}

/* Appends a CLASS node over a copy of ranges r[0..n).  Returns the node or NONE. */
static uint32_t class_node(re_parser *p, const vm_range *r, size_t n, size_t pos)
{
    if (reserve_ranges(p, n, pos) < 0)
        return NONE;
    uint32_t id = new_node(p, N_CLASS, pos);
    if (id == NONE)
        return NONE;
    if (n)
        memcpy(p->b->ranges + p->b->nranges, r, n * sizeof *r);
    p->nodes[id].a = (uint32_t)p->b->nranges;
    p->nodes[id].n = (uint32_t)n;
    p->b->nranges += n;
    return id;
}

/* Makes room for one more range in the class being built.  Returns 0 or -1. */
static int tmp_reserve(re_parser *p, size_t more)
{
    if (p->ntmp + more <= p->tcap)
        return 0;
    size_t cap = p->tcap ? p->tcap : 64;
    while (cap < p->ntmp + more)
        cap *= 2;
    vm_range *t = realloc(p->tmp, cap * sizeof *t);
    if (!t)
        return fail(p, p->pos, "out of memory");
    p->tmp = t;
    p->tcap = cap;
    return 0;
}

/* Adds [lo, hi] to the class being built.  Returns 0 or -1. */
static int tmp_add(re_parser *p, uint32_t lo, uint32_t hi)
{
    if (tmp_reserve(p, 1) < 0)
        return -1;
    p->tmp[p->ntmp++] = (vm_range){ lo, hi };
    return 0;
}

/* Orders ranges by their low end (qsort callback). */
static int range_cmp(const void *a, const void *b)
{
    const vm_range *x = a, *y = b;
    return (x->lo > y->lo) - (x->lo < y->lo);
}

/* Sorts the class being built and joins overlapping or adjacent ranges, in place. */
static void tmp_merge(re_parser *p)
{
    if (p->ntmp < 2)
        return;
    qsort(p->tmp, p->ntmp, sizeof *p->tmp, range_cmp);
    size_t w = 0;
    for (size_t i = 1; i < p->ntmp; i++) {
        if (p->tmp[i].lo <= p->tmp[w].hi + 1) {
            if (p->tmp[i].hi > p->tmp[w].hi)
                p->tmp[w].hi = p->tmp[i].hi;
        } else {
            p->tmp[++w] = p->tmp[i];
        }
    }
    p->ntmp = w + 1;
}

/* Adds the gap [lo, hi] of a complement, leaving out the surrogates.  Returns 0 or -1. */
static int add_gap(re_parser *p, uint32_t lo, uint32_t hi)
{
    if (lo <= 0xD7FF && hi >= 0xE000) {
        if (tmp_add(p, lo, 0xD7FF) < 0)
            return -1;
        return tmp_add(p, 0xE000, hi);
    }
    if (lo >= 0xD800 && lo <= 0xDFFF)
        lo = 0xE000;
    if (hi >= 0xD800 && hi <= 0xDFFF)
        hi = 0xD7FF;
    return lo <= hi ? tmp_add(p, lo, hi) : 0;
}

/* Replaces the class being built with its complement among Unicode scalar values.  Assumes
 * p->tmp[from ..] is sorted and merged; the complement is placed there.  Returns 0 or -1. */
static int tmp_complement(re_parser *p, size_t from)
{
    size_t n = p->ntmp - from;
    if (tmp_reserve(p, 2 * n + 2) < 0)   /* the complement goes after the input, then moves */
        return -1;
    size_t start = p->ntmp;
    uint32_t next = 0;   /* lowest code point not yet covered */
    bool done = false;
    for (size_t i = from; i < start && !done; i++) {
        vm_range r = p->tmp[i];
        if (r.lo > next && add_gap(p, next, r.lo - 1) < 0)
            return -1;
        if (r.hi >= 0x10FFFF)
            done = true;
        else
            next = r.hi + 1;
    }
    if (!done && add_gap(p, next, 0x10FFFF) < 0)
        return -1;
    size_t m = p->ntmp - start;
    memmove(p->tmp + from, p->tmp + start, m * sizeof *p->tmp);
    p->ntmp = from + m;
    return 0;
}

/* Appends a CLASS node for a category (or '.'), complemented when neg, reusing an earlier copy
 * from this pattern.  Returns the node or NONE. */
static uint32_t category_node(re_parser *p, const vm_range *r, size_t n, bool neg, size_t pos)
{
    for (size_t i = 0; i < p->ncache; i++) {
        const cat_cache *c = &p->cache[i];
        if (c->src == r && c->neg == neg) {
            uint32_t id = new_node(p, N_CLASS, pos);
            if (id != NONE) {
                p->nodes[id].a = c->off;
                p->nodes[id].n = c->n;
            }
            return id;
        }
    }
    p->ntmp = 0;
    if (tmp_reserve(p, n) < 0)
        return NONE;
    memcpy(p->tmp, r, n * sizeof *r);
    p->ntmp = n;
    if (neg && tmp_complement(p, 0) < 0)
        return NONE;
    uint32_t id = class_node(p, p->tmp, p->ntmp, pos);
    if (id != NONE && p->ncache < CACHE_MAX)
        p->cache[p->ncache++] = (cat_cache){ r, neg, p->nodes[id].a, p->nodes[id].n };
    return id;
}

/* Parses the category escape at p->pos ("~p{Nd}" / "~P{Nd}") into it.  Returns 0 or -1. */
static int parse_category(re_parser *p, re_item *it)
{
    size_t start = p->pos;
    char letter = p->pat[start + 1];
    it->is_cat = true;
    it->neg = letter == 'P';
    p->pos += 2;
    if (peek(p, 0) != '{')
        return fail(p, p->pos, "expected '{' after %c%c", p->esc, letter);
    size_t name = p->pos + 1, end = name;
    while (end < p->len && p->pat[end] != '}')
        end++;
    if (end >= p->len)
        return fail(p, p->len, "missing '}' after %c%c{", p->esc, letter);
    if (!uc_category(p->pat + name, end - name, &it->ranges, &it->n)) {
        size_t show = end - name;
        if (show > 40) {   /* cut long names at a code point boundary */
            show = 40;
            while (show > 0 && ((unsigned char)p->pat[name + show] & 0xC0u) == 0x80u)
                show--;
        }
        return fail(p, name, "unknown property '%.*s%s'", (int)show, p->pat + name,
                    show < end - name ? "..." : "");
    }
    p->pos = end + 1;
    return 0;
}

/* Parses the escape at p->pos (p->pat[p->pos] == esc): a single-character escape, or a category
 * escape.  Returns 0 with *it filled, or -1 (error recorded). */
static int parse_escape(re_parser *p, re_item *it)
{
    size_t start = p->pos;
    *it = (re_item){ 0 };
    if (start + 1 >= p->len)
        return fail(p, start, "trailing escape character '%c'", p->esc);
    char c = p->pat[start + 1];
    if (c == 'p' || c == 'P')
        return parse_category(p, it);
    p->pos += 2;
    switch (c) {
    case 'n': it->cp = '\n'; return 0;
    case 'r': it->cp = '\r'; return 0;
    case 't': it->cp = '\t'; return 0;
    case '(': case ')': case '*': case '+': case '-': case '.': case '?':
    case '[': case ']': case '^': case '{': case '|': case '}':
        it->cp = (unsigned char)c;
        return 0;
    default:
        break;
    }
    if (c == p->esc) {
        it->cp = (unsigned char)c;
        return 0;
    }
    if (c && strchr("sSiIcCdDwW", c))
        return fail(p, start, "multiple-character escape %c%c", p->esc, c);
    p->pos = start + 1;
    uint32_t cp;
    char buf[12];
    peek_cp(p, &cp);
    return fail(p, start, "invalid escape %c%s", p->esc, show_cp(cp, buf));
}

/* Parses one class member at p->pos that is not '-', '[' or ']': a character or an escape.
 * Returns 0 or -1. */
static int parse_class_item(re_parser *p, re_item *it)
{
    if (p->pat[p->pos] == p->esc)
        return parse_escape(p, it);
    *it = (re_item){ 0 };
    p->pos += peek_cp(p, &it->cp);
    return 0;
}

/* Adds a category item's ranges (complemented for \P) to the class being built, unless the
 * class has it already (so a class holds at most every category once).  Returns 0 or -1. */
static int class_add_category(re_parser *p, const re_item *it)
{
    for (size_t i = 0; i < p->nseen; i++) {
        if (p->seen[i].src == it->ranges && p->seen[i].neg == it->neg)
            return 0;
    }
    if (p->nseen < CACHE_MAX)
        p->seen[p->nseen++] = (cat_cache){ it->ranges, it->neg, 0, 0 };
    size_t from = p->ntmp;
    if (tmp_reserve(p, it->n) < 0)
        return -1;
    memcpy(p->tmp + from, it->ranges, it->n * sizeof *it->ranges);
    p->ntmp += it->n;
    return it->neg ? tmp_complement(p, from) : 0;
}

/* Parses the range end after "lo-" and adds [lo, hi].  Returns 0 or -1. */
static int class_range(re_parser *p, uint32_t lo, size_t lo_pos)
{
    int c = peek(p, 0);
    if (c == '-' || c == '[')
        return fail(p, p->pos, "unescaped '%c' in character class", c);
    re_item hi;
    size_t hi_pos = p->pos;
    if (parse_class_item(p, &hi) < 0)
        return -1;
    if (hi.is_cat)
        return fail(p, hi_pos, "a category escape cannot end a range");
    if (hi.cp < lo) {
        char a[12], b[12];
        return fail(p, lo_pos, "invalid range %s-%s", show_cp(lo, a), show_cp(hi.cp, b));
    }
    return tmp_add(p, lo, hi.cp);
}

/* Parses one class member (a character, a range or an escape) at p->pos and adds it.
 * Returns 0 or -1. */
static int class_member(re_parser *p)
{
    size_t start = p->pos;
    re_item it;
    if (parse_class_item(p, &it) < 0)
        return -1;
    if (it.is_cat)
        return class_add_category(p, &it);
    if (peek(p, 0) == '-' && peek(p, 1) != ']' && peek(p, 1) != -1) {
        p->pos++;
        return class_range(p, it.cp, start);
    }
    return tmp_add(p, it.cp, it.cp);
}

/* Parses the members of a class after "[" or "[^" up to and including "]".  Returns 0 or -1. */
static int class_body(re_parser *p, size_t start)
{
    for (bool first = true;; first = false) {
        int c = peek(p, 0);
        if (c == -1)
            return fail(p, p->len, "missing ']'");
        if (c == ']') {
            if (first)
                return fail(p, start, "empty character class");
            p->pos++;
            return 0;
        }
        if (c == '-' && (first || peek(p, 1) == ']' || peek(p, 1) == -1)) {
            p->pos++;
            if (tmp_add(p, '-', '-') < 0)
                return -1;
            continue;
        }
        if (c == '-' || c == '[')
            return fail(p, p->pos, "unescaped '%c' in character class", c);
        if (class_member(p) < 0)
            return -1;
    }
}

/* Parses a character class at p->pos ('[') into a CLASS node.  Returns the node or NONE. */
static uint32_t parse_class(re_parser *p)
{
    size_t start = p->pos++;
    bool neg = peek(p, 0) == '^';
    if (neg)
        p->pos++;
    p->ntmp = 0;
    p->nseen = 0;
    if (class_body(p, start) < 0)
        return NONE;
    tmp_merge(p);
    if (neg && tmp_complement(p, 0) < 0)
        return NONE;
    return class_node(p, p->tmp, p->ntmp, start);
}

/* Parses a parenthesised group at p->pos ('(').  Returns its node or NONE. */
static uint32_t parse_group(re_parser *p)
{
    size_t start = p->pos++;
    if (++p->depth > RE_MAX_DEPTH) {
        fail(p, start, "too many nested parentheses (limit %u)", RE_MAX_DEPTH);
        return NONE;
    }
    uint32_t inner;
    if (parse_alt(p, &inner) < 0)
        return NONE;
    if (peek(p, 0) != ')') {
        fail(p, p->len, "missing ')'");
        return NONE;
    }
    p->pos++;
    p->depth--;
    return inner;
}

/* Parses an atom at p->pos: a character, '.', an escape, a class or a group.  Returns its node
 * or NONE. */
static uint32_t parse_atom(re_parser *p)
{
    size_t start = p->pos;
    int c = peek(p, 0);
    if (c == '(')
        return parse_group(p);
    if (c == '[')
        return parse_class(p);
    if (c == '.') {
        p->pos++;
        return category_node(p, dot_ranges, sizeof dot_ranges / sizeof dot_ranges[0], false,
                             start);
    }
    if (c == p->esc) {
        re_item it;
        if (parse_escape(p, &it) < 0)
            return NONE;
        if (it.is_cat)
            return category_node(p, it.ranges, it.n, it.neg, start);
        vm_range r = { it.cp, it.cp };
        return class_node(p, &r, 1, start);
    }
    if (c == '*' || c == '+' || c == '?' || c == '{' || c == '}' || c == ']') {
        fail(p, start, "invalid character '%c'", c);
        return NONE;
    }
    uint32_t cp;
    p->pos += peek_cp(p, &cp);
    vm_range r = { cp, cp };
    return class_node(p, &r, 1, start);
}

/* Parses the digits of a range quantifier at p->pos.  Returns 0 with *v set, or -1. */
static int parse_count(re_parser *p, uint32_t *v)
{
    size_t start = p->pos;
    int c = peek(p, 0);
    if (c < '0' || c > '9')
        return fail(p, p->pos, "invalid range quantifier, expecting digits");
    uint64_t n = 0;
    while ((c = peek(p, 0)) >= '0' && c <= '9') {
        n = n * 10 + (uint64_t)(c - '0');
        if (n > RE_MAX_REPEAT)
            return fail(p, start, "repetition count too large (limit %u)", RE_MAX_REPEAT);
        p->pos++;
    }
    *v = (uint32_t)n;
    return 0;
}

/* Parses a range quantifier at p->pos ('{'): {n}, {n,} or {n,m}.  Returns 0 or -1. */
static int parse_range_quant(re_parser *p, uint32_t *min, uint32_t *max)
{
    size_t start = p->pos++;
    if (parse_count(p, min) < 0)
        return -1;
    *max = *min;
    if (peek(p, 0) == ',') {
        p->pos++;
        *max = RE_INF;
        if (peek(p, 0) != '}' && parse_count(p, max) < 0)
            return -1;
    }
    if (peek(p, 0) != '}')
        return fail(p, p->pos, "invalid range quantifier, expecting '}'");
    p->pos++;
    if (*max < *min)
        return fail(p, start, "invalid range quantifier {%u,%u}, top must not be less than "
                    "bottom", *min, *max);
    return 0;
}

/* Parses a piece: an atom and an optional quantifier.  Returns 0 with *out set, or -1. */
static int parse_piece(re_parser *p, uint32_t *out)
{
    uint32_t atom = parse_atom(p);
    if (atom == NONE)
        return -1;
    *out = atom;
    size_t qpos = p->pos;
    int c = peek(p, 0);
    uint32_t min, max;
    if (c == '*' || c == '+' || c == '?') {
        min = c == '+' ? 1 : 0;
        max = c == '?' ? 1 : RE_INF;
        p->pos++;
    } else if (c == '{') {
        if (parse_range_quant(p, &min, &max) < 0)
            return -1;
    } else {
        return 0;
    }
    uint32_t rep = new_node(p, N_REPEAT, qpos);
    if (rep == NONE)
        return -1;
    p->nodes[rep].a = min;
    p->nodes[rep].n = max;
    p->nodes[rep].child = atom;
    *out = rep;
    return 0;
}

/* Parses a branch: pieces up to '|', ')' or the end.  Returns 0 with *out set, or -1. */
static int parse_branch(re_parser *p, uint32_t *out)
{
    uint32_t cat = new_node(p, N_CAT, p->pos), last = NONE;
    if (cat == NONE)
        return -1;
    int c;
    while ((c = peek(p, 0)) != -1 && c != '|' && c != ')') {
        uint32_t piece;
        if (parse_piece(p, &piece) < 0)
            return -1;
        if (last == NONE)
            p->nodes[cat].child = piece;
        else
            p->nodes[last].next = piece;
        last = piece;
    }
    *out = cat;
    return 0;
}

/* Parses branches separated by '|'.  Returns 0 with *out set, or -1. */
static int parse_alt(re_parser *p, uint32_t *out)
{
    uint32_t first;
    if (parse_branch(p, &first) < 0)
        return -1;
    if (peek(p, 0) != '|') {
        *out = first;
        return 0;
    }
    uint32_t alt = new_node(p, N_ALT, p->nodes[first].pos), last = first;
    if (alt == NONE)
        return -1;
    p->nodes[alt].child = first;
    while (peek(p, 0) == '|') {
        p->pos++;
        uint32_t br;
        if (parse_branch(p, &br) < 0)
            return -1;
        p->nodes[last].next = br;
        last = br;
    }
    *out = alt;
    return 0;
}

/* Adds two instruction counts, saturating just above the limit. */
static uint64_t sat_add(uint64_t a, uint64_t b)
{
    uint64_t s = a + b;
    return s > RE_MAX_INSTS ? RE_MAX_INSTS + 1 : s;
}

/* Multiplies an instruction count, saturating just above the limit. */
static uint64_t sat_mul(uint64_t a, uint64_t k)
{
    if (a == 0 || k == 0)
        return 0;
    return a > (RE_MAX_INSTS + 1) / k ? RE_MAX_INSTS + 1 : a * k;
}

/* Computes how many instructions node id and each node below it emit (saturated above
 * RE_MAX_INSTS), storing them in the nodes' size fields; returns node id's.  Remembers in
 * p->big_pos the first (innermost) quantifier whose own expansion reaches the limit. */
static uint64_t node_size(re_parser *p, uint32_t id)
{
    re_node *nd = &p->nodes[id];
    uint64_t s = 0;
    switch (nd->kind) {
    case N_CLASS:
        s = 1;
        break;
    case N_CAT:
    case N_ALT:
        for (uint32_t c = nd->child; c != NONE; c = p->nodes[c].next) {
            s = sat_add(s, node_size(p, c));
            if (nd->kind == N_ALT && p->nodes[c].next != NONE)
                s = sat_add(s, 2);   /* SPLIT before, JMP after */
        }
        break;
    case N_REPEAT: {
        uint64_t c = node_size(p, nd->child);
        s = sat_mul(c, nd->a);
        if (nd->n == RE_INF)
            s = sat_add(s, nd->a ? 1 : c + 2);
        else
            s = sat_add(s, sat_mul(c + 1, nd->n - nd->a));
        if (s >= RE_MAX_INSTS && p->big_pos == NONE)   /* >=: a MATCH always follows */
            p->big_pos = nd->pos;
        break;
    }
    default:
        break;
    }
    nd->size = (uint32_t)s;
    return s;
}

/* Appends one instruction (capacity was reserved).  Returns its pc relative to inst0. */
static uint32_t emit(re_buf *b, size_t inst0, vm_re_op op, uint32_t x, uint32_t y)
{
    b->inst[b->ninst] = (vm_re_inst){ (uint8_t)op, x, y };
    return (uint32_t)(b->ninst++ - inst0);
}

/* Returns the pc (relative to inst0) the next instruction will get. */
static uint32_t here(const re_buf *b, size_t inst0)
{
    return (uint32_t)(b->ninst - inst0);
}

static void emit_node(re_parser *p, uint32_t id, size_t inst0);

/* Emits c1|c2|...: SPLIT to each branch but the last, each followed by a JMP to the end.  The
 * pending JMPs are chained through their x field until the end is known. */
static void emit_alt(re_parser *p, const re_node *nd, size_t inst0)
{
    re_buf *b = p->b;
    uint32_t pending = NONE;
    for (uint32_t c = nd->child; c != NONE; c = p->nodes[c].next) {
        if (p->nodes[c].next == NONE) {
            emit_node(p, c, inst0);
            break;
        }
        uint32_t split = emit(b, inst0, VM_RE_SPLIT, 0, 0);
        b->inst[inst0 + split].x = split + 1;
        emit_node(p, c, inst0);
        pending = emit(b, inst0, VM_RE_JMP, pending, 0);
        b->inst[inst0 + split].y = here(b, inst0);
    }
    uint32_t end = here(b, inst0);
    while (pending != NONE) {
        uint32_t prev = b->inst[inst0 + pending].x;
        b->inst[inst0 + pending].x = end;
        pending = prev;
    }
}

/* Emits one copy of a repeated node: the first time through emit_node (recording where it went
 * in *tmpl), later by copying that block and shifting its jump targets, which all lie within
 * the block or at its end.  Copying keeps emission linear in the program's size. */
static void emit_copy(re_parser *p, uint32_t child, size_t inst0, uint32_t *tmpl)
{
    re_buf *b = p->b;
    uint32_t n = p->nodes[child].size;
    if (*tmpl == NONE) {
        *tmpl = here(b, inst0);
        emit_node(p, child, inst0);
        return;
    }
    uint32_t delta = here(b, inst0) - *tmpl;
    for (uint32_t i = 0; i < n; i++) {
        vm_re_inst in = b->inst[inst0 + *tmpl + i];
        if (in.op == VM_RE_SPLIT || in.op == VM_RE_JMP) {
            in.x += delta;
            if (in.op == VM_RE_SPLIT)
                in.y += delta;
        }
        b->inst[b->ninst++] = in;
    }
}

/* Emits child{min,max}: min copies, then either a loop (max unbounded) or max-min nested
 * optional copies whose SPLITs all skip to the end (chained through y until it is known). */
static void emit_repeat(re_parser *p, const re_node *nd, size_t inst0)
{
    re_buf *b = p->b;
    uint32_t tmpl = NONE, last = here(b, inst0);
    for (uint32_t i = 0; i < nd->a && p->nodes[nd->child].size > 0; i++) {
        last = here(b, inst0);
        emit_copy(p, nd->child, inst0, &tmpl);
    }
    if (nd->n == RE_INF && nd->a > 0) {          /* e{n,}: loop back over the last copy */
        emit(b, inst0, VM_RE_SPLIT, last, here(b, inst0) + 1);
    } else if (nd->n == RE_INF) {                /* e*: SPLIT body, end; body; JMP SPLIT */
        uint32_t split = emit(b, inst0, VM_RE_SPLIT, 0, 0);
        b->inst[inst0 + split].x = split + 1;
        emit_copy(p, nd->child, inst0, &tmpl);
        emit(b, inst0, VM_RE_JMP, split, 0);
        b->inst[inst0 + split].y = here(b, inst0);
    } else {
        uint32_t pending = NONE;
        for (uint32_t i = nd->a; i < nd->n; i++) {
            uint32_t split = emit(b, inst0, VM_RE_SPLIT, 0, pending);
            b->inst[inst0 + split].x = split + 1;
            pending = split;
            emit_copy(p, nd->child, inst0, &tmpl);
        }
        uint32_t end = here(b, inst0);
        while (pending != NONE) {
            uint32_t prev = b->inst[inst0 + pending].y;
            b->inst[inst0 + pending].y = end;
            pending = prev;
        }
    }
}

/* Emits the instructions of node id (capacity for node_size() of it was reserved). */
static void emit_node(re_parser *p, uint32_t id, size_t inst0)
{
    const re_node *nd = &p->nodes[id];
    switch (nd->kind) {
    case N_CLASS:
        emit(p->b, inst0, VM_RE_CLASS, nd->a, nd->n);
        break;
    case N_CAT:
        for (uint32_t c = nd->child; c != NONE; c = p->nodes[c].next)
            emit_node(p, c, inst0);
        break;
    case N_ALT:
        emit_alt(p, nd, inst0);
        break;
    case N_REPEAT:
        emit_repeat(p, nd, inst0);
        break;
    default:
        break;
    }
}

/* Sizes the tree, reserves room and emits it plus a final MATCH.  Returns 0 or -1. */
static int generate(re_parser *p, uint32_t root, vm_regex *out)
{
    re_buf *b = p->b;
    p->big_pos = NONE;
    uint64_t size = sat_add(node_size(p, root), 1);
    if (size > RE_MAX_INSTS)
        return fail(p, p->big_pos == NONE ? 0 : p->big_pos,
                    "regular expression too large: more than %u instructions", RE_MAX_INSTS);
    if (b->ninst + size > NONE)
        return fail(p, 0, "too many regex instructions in the program");
    if (b->ninst + size > b->icap) {
        size_t cap = b->icap ? b->icap : 256;
        while (cap < b->ninst + size)
            cap *= 2;
        vm_re_inst *in = realloc(b->inst, cap * sizeof *in);
        if (!in)
            return fail(p, 0, "out of memory");
        b->inst = in;
        b->icap = cap;
    }
    size_t inst0 = b->ninst;
    emit_node(p, root, inst0);
    emit(b, inst0, VM_RE_MATCH, 0, 0);
    out->inst0 = (uint32_t)inst0;
    out->ninst = (uint32_t)(b->ninst - inst0);
    return 0;
}

/* Compiles pat[0..len) into b; see regex.h.  Returns 0, or -1 with err filled and b's counts
 * restored. */
int re_compile(re_buf *b, const char *pat, size_t len, char esc, vm_regex *out, re_error *err)
{
    re_parser p = { .pat = pat, .len = len, .esc = esc, .b = b, .err = err,
                    .range0 = b->nranges };
    size_t ninst0 = b->ninst;
    uint32_t root = NONE;
    int rc = validate_utf8(&p);
    if (rc == 0)
        rc = parse_alt(&p, &root);
    if (rc == 0 && p.pos < len)
        rc = fail(&p, p.pos, "unbalanced ')'");
    if (rc == 0)
        rc = generate(&p, root, out);
    free(p.nodes);
    free(p.tmp);
    if (rc < 0) {
        b->ninst = ninst0;
        b->nranges = p.range0;
    }
    return rc;
}

/* Frees b's arrays and zeroes it. */
void re_buf_free(re_buf *b)
{
    free(b->inst);
    free(b->ranges);
    *b = (re_buf){ 0 };
}
