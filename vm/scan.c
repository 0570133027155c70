/*
 * scan.c — the event scanner: one pass over the event's JSON text that records only the leaves
 * whose paths some rule references (with the array elements they lie in).  No DOM is built;
 * strings are left encoded until a test needs them.  Two walks: the generic one (walk) validates
 * all of the text byte by byte as it goes; the lean one (walk_lean) reads text already validated
 * by stage 1 (scan_fast.c) or vouched for (vm_options.trusted), and jumps over what no rule reads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vm_int.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__SSE2__) && defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TW_WIDE 1
#endif

int vm_walk_wide = -1;
int vm_walk_bmi = -1;

struct vm_frame {
    uint8_t array;       /* 1: an array, 0: an object */
    uint8_t memb;        /* this container is an array element: it pushed a membership */
    uint32_t node;       /* trie node of the container's path, or VM_NONE if nothing inside matters */
    uint32_t id;         /* arrays: the array's number in this event */
    uint32_t index;      /* arrays: index of the element being read */
};

typedef struct {
    vm_ctx *c;
    const char *s;
    size_t n, p;
    vm_error *err;
    bool lean;         /* walk_lean's: dots says if the key read holds a '.' */
    bool dots;
    const struct vm_trie *trie;   /* the program's (read once: four loads a key otherwise) */
} scanner;

static vm_status fail(scanner *S, size_t at, vm_status code, const char *what)
{
    if (S->err) {
        S->err->code = code;
        S->err->offset = at;
        snprintf(S->err->msg, sizeof S->err->msg, "%s (at byte %zu)", what, at);
    }
    return code;
}

static inline void skip_ws(scanner *S)
{
    /* (the usual cases first, inlined: a token right here, or after one space, as in
     * `{"a": 1, "b": 2}`) */
    if (S->p < S->n && (unsigned char)S->s[S->p] > ' ')
        return;
    if (S->p + 1 < S->n && S->s[S->p] == ' ' && (unsigned char)S->s[S->p + 1] > ' ') {
        S->p++;
        return;
    }
    while (S->p < S->n) {
        char ch = S->s[S->p];
        if (ch != ' ' && ch != '\n' && ch != '\r' && ch != '\t')
            return;
        S->p++;
    }
}

/* Is the escape at s[0..n) (a backslash first) one of JSON's? */
static bool escape_ok(const char *s, size_t n)
{
    if (n < 2)
        return false;
    if (s[1] != 'u')
        return s[1] && strchr("\"\\/bfnrt", s[1]);
    for (size_t i = 2; i < 6; i++)
        if (i >= n || !s[i] || !strchr("0123456789abcdefABCDEF", s[i]))
            return false;
    return true;
}

/* The first '"', '\\' or '.' in s[p..n), or n: 16 bytes at a time while 16 are left, then by a
 * table look per byte. */
static inline size_t next_stop(const char *s, size_t p, size_t n)
{
    static const bool stop[256] = { ['"'] = 1, ['\\'] = 1, ['.'] = 1 };
#ifdef __SSE2__
    const __m128i q = _mm_set1_epi8('"'), bs = _mm_set1_epi8('\\'), dot = _mm_set1_epi8('.');
    for (; p + 16 <= n; p += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + p));
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, bs)), _mm_cmpeq_epi8(v, dot)));
        if (m)
            return p + (size_t)__builtin_ctz(m);
    }
#endif
    while (p < n && !stop[(unsigned char)s[p]])
        p++;
    return p;
}

/* The helpers of walk_lean take and give the position by value, so that it stays in a
 * register (in the scanner, every call the walk makes out of line forces it back to memory). */

/* Trusted: the first byte at or after p that is not whitespace.  Any byte up to ' ' counts as
 * one: valid JSON has only the four there, and other bytes need only stay in bounds. */
static inline size_t tw_ws(const char *s, size_t p, size_t n)
{
    while (p < n && (unsigned char)s[p] <= ' ')
        p++;
    return p;
}

#ifdef __SSE2__
/* The bytes of a 64-byte window whose members walk_lean reads from masks: quotes, backslashes,
 * dots, and whitespace (any byte up to ' ', as tw_ws counts it). */
typedef struct {
    uint64_t q, bs, dot, ws;
} tw_window;

static inline __attribute__((always_inline)) void tw_window_at(const char *s, tw_window *w)
{
    const __m128i q = _mm_set1_epi8('"'), bs = _mm_set1_epi8('\\'), dot = _mm_set1_epi8('.'),
                  space = _mm_set1_epi8(' ');
    w->q = w->bs = w->dot = w->ws = 0;
    for (unsigned i = 0; i < 4; i++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + 16 * i));
#define TW_MASK(x) ((uint64_t)(unsigned)_mm_movemask_epi8(x) << 16 * i)
        w->q |= TW_MASK(_mm_cmpeq_epi8(v, q));
        w->bs |= TW_MASK(_mm_cmpeq_epi8(v, bs));
        w->dot |= TW_MASK(_mm_cmpeq_epi8(v, dot));
        w->ws |= TW_MASK(_mm_cmpeq_epi8(_mm_min_epu8(v, space), v));
#undef TW_MASK
    }
}

#ifdef TW_WIDE
#define TW_R8(x) x, x, x, x, x, x, x, x
#define TW_R64(x) { TW_R8(x), TW_R8(x), TW_R8(x), TW_R8(x), TW_R8(x), TW_R8(x), TW_R8(x), TW_R8(x) }
static const __attribute__((aligned(64))) char tw_bytes[4][64] = {
    TW_R64('"'), TW_R64('\\'), TW_R64('.'), TW_R64(' ')
};
#undef TW_R64
#undef TW_R8

/* tw_window_at with AVX-512 (when tw_wide() says the CPU has it): one load, four compares into
 * mask registers and four moves out of them, where the SSE2 one takes 4 loads, 16 compares, 16
 * moves of masks and the shifts that join them.  In assembly, because this file is built for
 * any x86-64: a function of its own built for AVX-512 cost a call a window, and the whole walk
 * built so was slower, not faster, after stage 1 (x0.92-0.94).  Built for baseline x86-64,
 * zmm16 and k1-k4 are not declared as clobbered (GCC refuses them then): code built so never
 * holds a value in them, and every call clobbers them anyway.  (This holds without link-time
 * optimization, which could inline this file's code into callers built for AVX-512; built with
 * AVX-512 F, the clobbers are declared, and with BW the intrinsics are used.)  CityLots EXACT:
 * validating 8,564 -> 8,078 instructions an event, trusted 3,614 -> 3,075 (bench_icount, 200
 * events); thread CPU time, 10 rounds in random order, validating x1.04-1.05, trusted
 * x1.08-1.11 (EXACT and PREFIX rows, first quartiles and medians). */
static inline __attribute__((always_inline)) void tw_window_at_wide(const char *s, tw_window *w)
{
#ifdef __AVX512BW__
    __m512i v = _mm512_loadu_si512((const void *)s);
    w->q = _mm512_cmpeq_epi8_mask(v, _mm512_load_si512((const void *)tw_bytes[0]));
    w->bs = _mm512_cmpeq_epi8_mask(v, _mm512_load_si512((const void *)tw_bytes[1]));
    w->dot = _mm512_cmpeq_epi8_mask(v, _mm512_load_si512((const void *)tw_bytes[2]));
    w->ws = _mm512_cmple_epu8_mask(v, _mm512_load_si512((const void *)tw_bytes[3]));
#else
#ifdef __AVX512F__
#define TW_CLOBBERS : "xmm16", "k1", "k2", "k3", "k4"
#else
#define TW_CLOBBERS
#endif
    __asm__("vmovdqu8 %[s], %%zmm16\n\t"
            "vpcmpeqb %[q0], %%zmm16, %%k1\n\t"
            "vpcmpeqb %[bs0], %%zmm16, %%k2\n\t"
            "vpcmpeqb %[dot0], %%zmm16, %%k3\n\t"
            "vpcmpub $2, %[sp0], %%zmm16, %%k4\n\t"   /* (2: less or equal) */
            "kmovq %%k1, %[q]\n\t"
            "kmovq %%k2, %[bs]\n\t"
            "kmovq %%k3, %[dot]\n\t"
            "kmovq %%k4, %[ws]"
            : [q] "=r"(w->q), [bs] "=r"(w->bs), [dot] "=r"(w->dot), [ws] "=r"(w->ws)
            : [s] "m"(*(const char(*)[64])s), [q0] "m"(tw_bytes[0]), [bs0] "m"(tw_bytes[1]),
              [dot0] "m"(tw_bytes[2]), [sp0] "m"(tw_bytes[3]) TW_CLOBBERS);
#undef TW_CLOBBERS
#endif
}

/* Does the CPU have AVX-512 BW?  vm_walk_wide (vm_int.h) decides once. */
static bool tw_wide(void)
{
    if (vm_walk_wide < 0) {
        __builtin_cpu_init();
        vm_walk_wide = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    }
    return vm_walk_wide;
}
#endif

/* Is exactly one bit of x set?  (Written without popcount: this file is built for any x86-64;
 * GCC makes it one in the walks built for POPCNT, walk_bmi.) */
static inline bool tw_one(uint64_t x)
{
    return x && !(x & (x - 1));
}

#endif

/* Trusted: one past the closing quote of the string opened at p, or 0 when the text ends first
 * or an escape is not one of JSON's (the matcher decodes them assuming their forms; escapes are
 * rare); *esc and *dots say whether it held an escape, and a '.'.  Control characters and UTF-8
 * are not checked.  (The strings the walk reads are keys and the values rules test, mostly
 * short: memchr, two calls per string and one per key for its dots, was 22% of the EXACT row's
 * trusted profile, and a table look per byte then 19%.) */
static inline __attribute__((always_inline)) size_t tw_string(const char *s, size_t p, size_t n,
                                                              bool *esc, bool *dots)
{
    p++;
    *esc = false;
    *dots = false;
#ifdef __SSE2__
    /* The usual case, a string without escapes: its end and its dots from the block's masks,
     * without reading the byte found again (8.6% less CPU time on the trusted EXACT row, perf
     * stat task-clock, 5 alternating runs of 40 passes). */
    const __m128i q = _mm_set1_epi8('"'), bs = _mm_set1_epi8('\\'), dot = _mm_set1_epi8('.');
    for (; p + 16 <= n; p += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + p));
        unsigned mq = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, q)),
                 mb = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, bs)),
                 md = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, dot)), stop = mq | mb;
        if (stop) {
            unsigned first = stop & -stop;
            if (!(mq & first))
                break;                    /* an escape first: the loop below */
            *dots |= (md & (first - 1)) != 0;
            return p + (size_t)__builtin_ctz(first) + 1;
        }
        *dots |= md != 0;
    }
#endif
    while ((p = next_stop(s, p, n)) < n) {
        if (s[p] == '"')
            return p + 1;
        if (s[p] == '.') {
            *dots = true;
            p++;
            continue;
        }
        *esc = true;
        if (!escape_ok(s + p, n - p))
            return 0;
        p += s[p + 1] == 'u' ? 6 : 2;
    }
    return 0;
}

/* Trusted: one past the number at p (valid JSON ends it at ',', '}', ']', whitespace or the
 * end), 16 bytes at a time.  (A table look per byte was ~840 instructions an event of the
 * routing row's, six numbers of ~18 bytes: the whole match 21,566 -> 21,198, callgrind.) */
static inline size_t tw_number(const char *s, size_t p, size_t n)
{
#ifdef __SSE2__
    const __m128i comma = _mm_set1_epi8(','), brace = _mm_set1_epi8('}'),
                  bracket = _mm_set1_epi8(']'), space = _mm_set1_epi8(' ');
    for (; p + 16 <= n; p += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + p));
        __m128i ws = _mm_cmpeq_epi8(_mm_min_epu8(v, space), v);      /* bytes <= ' ' */
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, comma), _mm_cmpeq_epi8(v, brace)),
            _mm_or_si128(_mm_cmpeq_epi8(v, bracket), ws)));
        if (m)
            return p + (size_t)__builtin_ctz(m);
    }
#endif
    static const bool in_number[256] = {
        ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,
        ['7'] = 1, ['8'] = 1, ['9'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1, ['e'] = 1, ['E'] = 1,
    };
    while (p < n && in_number[(unsigned char)s[p]])
        p++;
    return p;
}

/* Reads the string whose opening quote is at S->p; leaves S->p after the closing quote.
 * Checks escapes, control characters and UTF-8.  *escaped says if it held escapes. */
static inline __attribute__((always_inline)) vm_status read_string(scanner *S, bool *escaped)
{
    const unsigned char *s = (const unsigned char *)S->s;
    size_t p = S->p + 1, n = S->n;
    *escaped = false;
    while (p < n) {
        unsigned char ch = s[p];
        if (ch == '"') {
            S->p = p + 1;
            return VM_OK;
        }
        if (ch == '\\') {
            *escaped = true;
            if (p + 1 >= n)
                break;
            char e = (char)s[p + 1];
            if (e == 'u') {
                for (int i = 2; i < 6; i++)
                    if (p + (size_t)i >= n || !strchr("0123456789abcdefABCDEF", s[p + i]) || !s[p + i])
                        return fail(S, p, VM_ERR_EVENT, "invalid \\u escape in string");
                p += 6;
            } else if (e && strchr("\"\\/bfnrt", e)) {
                p += 2;
            } else {
                return fail(S, p, VM_ERR_EVENT, "invalid escape in string");
            }
            continue;
        }
        if (ch < 0x20)
            return fail(S, p, VM_ERR_EVENT, "control character in string (it must be escaped)");
        if (ch < 0x80) {
            p++;
            continue;
        }
        uint32_t cp;
        size_t k = vm_utf8_decode((const char *)s + p, n - p, &cp);
        if (k == 0)
            return fail(S, p, VM_ERR_EVENT, "invalid UTF-8 in string");
        p += k;
    }
    return fail(S, S->p, VM_ERR_EVENT, "unterminated string");
}

/* Checks a number per RFC 8259 at S->p and moves past it. */
static vm_status read_number(scanner *S)
{
    const char *why;
    size_t k = vm_json_number_len(S->s + S->p, S->n - S->p, &why);
    if (k == 0)
        return fail(S, S->p, VM_ERR_EVENT, why);
    S->p += k;
    return VM_OK;
}

/* The trie node reached from `node` by the key k[0..len) (still escaped if `escaped`), in *out
 * (VM_NONE: no rule looks below it).  A key with dots reaches the node of its dot-separated
 * parts: names are flattened with dots, as in event-ruler, so {"a.b": 1} is {"a": {"b": 1}}. */
static vm_status lookup(scanner *S, uint32_t node, const char *k, size_t len, bool escaped,
                        uint32_t *out)
{
    vm_ctx *c = S->c;
    const struct vm_trie *t = S->trie;
    *out = VM_NONE;
    if (node == VM_NONE || t->nodes[node].nedge == 0)
        return VM_OK;
    if (escaped) {
        if (c->dec_cap < len + 1) {
            char *d = realloc(c->dec, len + 64);
            if (!d)
                return fail(S, S->p, VM_ERR_NOMEM, "out of memory");
            c->dec = d;
            c->dec_cap = len + 64;
        }
        len = vm_json_unescape(k, len, c->dec);
        k = c->dec;
    }
    /* The common case first: the whole key is one segment. */
    uint32_t whole = vm_trie_child(t, node, k, len);
    if (whole != VM_NONE || !(escaped ? memchr(k, '.', len) != NULL
                              : S->lean ? S->dots : memchr(k, '.', len) != NULL)) {
        *out = whole;
        return VM_OK;
    }
    const char *end = k + len;
    for (;;) {
        const char *dot = memchr(k, '.', (size_t)(end - k));
        const char *stop = dot ? dot : end;
        node = vm_trie_child(t, node, k, (size_t)(stop - k));
        if (!dot || node == VM_NONE)
            break;
        k = dot + 1;
    }
    c->dotted_keys += node != VM_NONE;
    *out = node;
    return VM_OK;
}

/* Records a leaf of path `path`. */
static vm_status record_field(scanner *S, uint32_t path, uint8_t type, bool escaped, size_t off,
                              size_t len)
{
    vm_ctx *c = S->c;
    vm_field f = { type, escaped, (uint32_t)off, (uint32_t)len, c->memb_top, c->memb_depth,
                   VM_NONE };
    if (c->memb_depth) {
        /* The index needs to know which paths have leaves inside arrays, and how deep the
         * outermost such array sits. */
        uint16_t depth = c->array_depth.v[c->memb.v[c->memb.v[c->memb_top].outer].array];
        if (c->path_arrays[path] != c->epoch || depth < c->path_depth[path]) {
            c->path_arrays[path] = c->epoch;
            c->path_depth[path] = depth;
        }
    }
    if (!VM_BUF_PUSH(c->fields, f))
        return fail(S, off, VM_ERR_NOMEM, "out of memory");
    uint32_t id = c->fields.n - 1;
    if (c->first[path] == VM_NONE) {
        c->first[path] = id;
        if (!VM_BUF_PUSH(c->touched, path))
            return fail(S, off, VM_ERR_NOMEM, "out of memory");
    } else {
        c->fields.v[c->last[path]].next = id;
    }
    c->last[path] = id;
    return VM_OK;
}

/* Records a leaf at trie node `node` (if a path ends there; most leaves read are not on one:
 * told in line). */
static inline __attribute__((always_inline)) vm_status
add_field(scanner *S, uint32_t node, uint8_t type, bool escaped, size_t off, size_t len)
{
    if (node == VM_NONE)
        return VM_OK;
    uint32_t path = S->trie->nodes[node].path;
    return path == VM_NONE ? VM_OK : record_field(S, path, type, escaped, off, len);
}

/* Can a rule look at anything inside a container (an array when `array`) read at trie node tn
 * (NULL: no rule's path leads there)?  Keys below it, or the leaves of an array on a path. */
static inline bool reads_inside(const vm_trie_node *tn, bool array)
{
    return tn && (tn->nedge > 0 || (array && tn->path != VM_NONE));
}

/* Opens a container at S->p ('{' or '['), read at trie node `node`.  When the frame `parent`
 * is an array, the container is one of its elements, and the leaves inside lie in it. */
static vm_status open_container(scanner *S, uint32_t node, struct vm_frame *parent)
{
    vm_ctx *c = S->c;
    const vm_trie_node *tn = node == VM_NONE ? NULL : &S->trie->nodes[node];
    struct vm_frame f = { S->s[S->p] == '[', 0, node, 0, 0 };
    if (c->frames.n >= c->max_depth)
        return fail(S, S->p, VM_ERR_LIMIT, "the event is nested too deeply");
    /* Nothing below can be referenced: keep validating, but look nothing up. */
    if (!reads_inside(tn, f.array))
        f.node = VM_NONE;
    if (f.array) {
        /* An array's depth (the segments to the key that holds it) tells the matcher whether a
         * later condition can look at it; one nothing can reach gets the greatest depth. */
        f.id = c->narrays++;
        uint16_t depth = f.node == VM_NONE ? UINT16_MAX
                       : (uint16_t)(tn->depth < UINT16_MAX ? tn->depth : UINT16_MAX);
        if (!VM_BUF_PUSH(c->array_depth, depth))
            return fail(S, S->p, VM_ERR_NOMEM, "out of memory");
    }
    if (parent && parent->array && f.node != VM_NONE) {
        /* An element that may hold leaves: the leaves inside lie in it. */
        uint32_t id = c->memb.n, top = c->memb_top;
        vm_memb m = { parent->id, parent->index, top, top == VM_NONE ? id : c->memb.v[top].outer };
        if (!VM_BUF_PUSH(c->memb, m))
            return fail(S, S->p, VM_ERR_NOMEM, "out of memory");
        c->memb_top = id;
        c->memb_depth++;
        f.memb = 1;
    }
    if (!VM_BUF_PUSH(c->frames, f))
        return fail(S, S->p, VM_ERR_NOMEM, "out of memory");
    S->p++;
    return VM_OK;
}

/* Reads one value at S->p with trie node `node`; containers are opened (pushed) and read by the
 * main loop.  *opened tells the caller which happened. */
static vm_status read_value(scanner *S, uint32_t node, struct vm_frame *parent, bool *opened)
{
    size_t start = S->p;
    vm_status st;
    bool esc;
    *opened = false;
    if (S->p >= S->n)
        return fail(S, S->p, VM_ERR_EVENT, "unexpected end of event: expected a value");
    switch (S->s[S->p]) {
    case '{':
    case '[': {
        st = open_container(S, node, parent);
        *opened = st == VM_OK;
        return st;
    }
    case '"':
        if ((st = read_string(S, &esc)) != VM_OK)
            return st;
        return add_field(S, node, VM_J_STR, esc, start + 1, S->p - start - 2);
    case 't':
    case 'f':
    case 'n': {
        static const char *const words[] = { "true", "false", "null" };
        static const uint8_t types[] = { VM_J_TRUE, VM_J_FALSE, VM_J_NULL };
        int w = S->s[S->p] == 't' ? 0 : S->s[S->p] == 'f' ? 1 : 2;
        size_t len = strlen(words[w]);
        if (S->n - S->p < len || memcmp(S->s + S->p, words[w], len) != 0)
            return fail(S, S->p, VM_ERR_EVENT, "invalid literal (expected true, false or null)");
        S->p += len;
        return add_field(S, node, types[w], false, start, len);
    }
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        if ((st = read_number(S)) != VM_OK)
            return st;
        return add_field(S, node, VM_J_NUM, false, start, S->p - start);
    default: {
        char what[64];
        unsigned char ch = (unsigned char)S->s[S->p];
        if (ch >= 0x20 && ch < 0x7f)
            snprintf(what, sizeof what, "unexpected character '%c': expected a value", ch);
        else
            snprintf(what, sizeof what, "unexpected byte 0x%02x: expected a value", ch);
        return fail(S, S->p, VM_ERR_EVENT, what);
    }
    }
}

/* Leaves the innermost array element open (its container closed). */
static void close_element(vm_ctx *c)
{
    c->memb_top = c->memb.v[c->memb_top].up;
    c->memb_depth--;
}

/* Reads the event into the field tables, validating every byte (the containers no rule looks into
 * too, looking nothing up in them): the reference for the fast paths, and the one that gives a
 * failure's message and position. */
static vm_status walk(vm_ctx *c, const char *json, size_t len, vm_error *err)
{
    scanner S = { c, json, len, 0, err, false, false, c->p->derived->trie };
    vm_status st;
    bool opened;
    c->memb_top = VM_NONE;
    c->memb_depth = 0;
    skip_ws(&S);
    if (S.p >= S.n || json[S.p] != '{')
        return fail(&S, S.p, VM_ERR_EVENT, S.p >= S.n ? "empty event: expected a JSON object"
                                                        : "the event must be a JSON object");
    if ((st = open_container(&S, 0, NULL)) != VM_OK)
        return st;
    bool first = true;
    while (c->frames.n > 0) {
        struct vm_frame *f = &c->frames.v[c->frames.n - 1];
        skip_ws(&S);
        if (S.p >= S.n)
            return fail(&S, S.p, VM_ERR_EVENT, "unexpected end of event");
        char ch = json[S.p];
        if (!first) {
            /* After a member or element: ',' or the end of the container. */
            if (ch == (f->array ? ']' : '}')) {
                S.p++;
                if (f->memb)
                    close_element(c);
                c->frames.n--;
                if (c->frames.n > 0)
                    c->frames.v[c->frames.n - 1].index++;
                continue;
            }
            if (ch != ',')
                return fail(&S, S.p, VM_ERR_EVENT, f->array ? "expected ',' or ']' in array"
                                                            : "expected ',' or '}' in object");
            S.p++;
            skip_ws(&S);
            if (S.p >= S.n)
                return fail(&S, S.p, VM_ERR_EVENT, "unexpected end of event");
            ch = json[S.p];
            if (ch == (f->array ? ']' : '}'))
                return fail(&S, S.p, VM_ERR_EVENT, f->array ? "trailing comma in array"
                                                            : "trailing comma in object");
        } else if (ch == (f->array ? ']' : '}')) {
            S.p++;
            if (f->memb)
                close_element(c);
            c->frames.n--;
            if (c->frames.n > 0)
                c->frames.v[c->frames.n - 1].index++;
            first = false;
            continue;
        }
        uint32_t node = f->node;
        if (!f->array) {
            if (ch != '"')
                return fail(&S, S.p, VM_ERR_EVENT, first ? "expected a string key or '}' in object"
                                                         : "expected a string key in object");
            size_t kstart = S.p + 1;
            bool esc;
            if ((st = read_string(&S, &esc)) != VM_OK)
                return st;
            if ((st = lookup(&S, f->node, json + kstart, S.p - kstart - 1, esc, &node)) != VM_OK)
                return st;
            skip_ws(&S);
            if (S.p >= S.n || json[S.p] != ':')
                return fail(&S, S.p, VM_ERR_EVENT, "expected ':' after an object key");
            S.p++;
            skip_ws(&S);
        }
        if ((st = read_value(&S, node, f, &opened)) != VM_OK)
            return st;
        /* f may have moved if the frame stack grew. */
        if (opened) {
            first = true;
        } else {
            c->frames.v[c->frames.n - 1].index++;
            first = false;
        }
    }
    skip_ws(&S);
    if (S.p < S.n)
        return fail(&S, S.p, VM_ERR_EVENT, "unexpected text after the event's closing '}'");
    return VM_OK;
}

/* ---- the trusted walk ------------------------------------------------------------------------- */

/* The walk of vm_options.trusted (the router's, on the bus log), and (fast) the walk after stage
 * 1 passed: the generic walk's work, with the same tables as its result (fields, memberships,
 * arrays), in one loop whose position and open container stay in locals (the container's
 * parents go on c->frames).  Only containers some rule looks into are opened; a key is looked up
 * among its node's few edges in line; a value no rule reads is passed over by its kind; what
 * separates tokens is not checked beyond what finding them needs.  The others are jumped over:
 * after stage 1 by its brackets (bi counts the brackets passed), trusted by counting brackets
 * outside strings.  Any bytes: every read is bounded by len, and nesting deeper than max_depth
 * fails as when validated.  (The generic walk, with its branches for the other paths and its
 * position and frame kept in memory: the trusted EXACT row 5,101 -> 3,918 instructions an event,
 * the routing row's events with the COMBO rules 22,202 -> 20,041, callgrind; best of 7
 * alternating runs of EXACT, 3.32M -> 4.32M events/s.) */
static inline __attribute__((always_inline)) vm_status
walk_lean(vm_ctx *c, const char *json, size_t len, vm_error *err, bool fast)
{
    scanner S = { c, json, len, 0, err, true, false, c->p->derived->trie };
#ifdef TW_WIDE
    bool wide = tw_wide();
#endif
    const struct vm_trie *t = S.trie;
    const char *s = json;
    size_t n = len, p = tw_ws(s, 0, n);
    vm_status st;
    bool esc, dots;
    c->memb_top = VM_NONE;
    c->memb_depth = 0;
    if (p >= n || s[p] != '{')
        return fail(&S, p, VM_ERR_EVENT, p >= n ? "empty event: expected a JSON object"
                                                : "the event must be a JSON object");
    const vm_fast *F = &c->fast;
    uint32_t bi = 0;                            /* fast: the next bracket's index */
    if (fast && t->nodes[0].nedge == 0) {
        p = F->br_pos[F->br_match[0]] + 1;
        goto done;
    }
    if (t->nodes[0].nedge == 0) {
        /* No rule looks into the event: the whole of it passed over. */
        vm_skip_status sk = vm_fast_skip(s, n, p + 1, c->max_depth, &p);
        if (sk != VM_SKIP_OK)
            return sk == VM_SKIP_DEEP ? fail(&S, 0, VM_ERR_LIMIT, "the event is nested too deeply")
                                      : fail(&S, n, VM_ERR_EVENT, "unexpected end of event");
        goto done;
    }
    struct vm_frame f = { 0, 0, 0, 0, 0 };      /* the open container; its parents on c->frames */
    /* The edges of f's trie node, where each of its keys is looked up: kept while f is open
     * (read from the node for every key, they were ~11 of the ~32 instructions a key cost;
     * CityLots PREFIX, validating 6,955 -> 6,881 instructions an event, trusted 3,042 -> 2,967). */
    const vm_trie_edge *fe;
    uint32_t fne;
#define F_EDGES() (fe = t->edges + t->nodes[f.node].edge0, fne = t->nodes[f.node].nedge)
    F_EDGES();
    char close = '}';
    p++;
    bi++;

open:                                           /* after '{' or '[': the end, or a first member */
    p = tw_ws(s, p, n);
    if (p >= n)
        return fail(&S, p, VM_ERR_EVENT, "unexpected end of event");
    if (s[p] == close)
        goto closed;
member:                                         /* a member (key and value) or an element */
    {
        uint32_t node = f.node;
        if (!f.array) {
            if (s[p] != '"')
                return fail(&S, p, VM_ERR_EVENT, "expected a string key in object");
#ifdef __SSE2__
            /* Members whose key and value are plain strings (no escape, no dot in the key),
             * read from the masks of the 64 bytes from p, as many as lie there whole: the
             * quotes after the key's are its end, its value's start and end, and the next
             * key's start.  On valid JSON, one byte besides whitespace between the key's end
             * and the next quote is the ':' before a string value (any other value adds its
             * own), and one between the value's end and the next quote is the ',' before
             * another key (a '}' would be followed by more).  A member cut by the window's end
             * starts a window of its own; other members go on below.  (Found one after
             * another, each string's end by a load and a mask at the position the last one
             * gave, the walk was a chain of dependent loads.  ~245 more instructions an event
             * on CityLots, callgrind, yet the trusted walk x1.26-1.37 as fast, EXACT, PREFIX,
             * WILDCARD and EQUALS_IGNORE_CASE rows, and the validating path x1.05-1.13: thread
             * CPU time, 5,000 events, 10 rounds in random order, first quartiles.) */
            while (p + 64 <= n) {
                tw_window w;
#ifdef TW_WIDE
                if (wide)
                    tw_window_at_wide(s + p, &w);
                else
#endif
                    tw_window_at(s + p, &w);
                uint64_t sig = ~w.ws;
                /* Quotes as single bits: ko the key's opening one, k1 its closing one, v0 and v1
                 * its value's, nk the next key's; the bits between two, b - 2a. */
                uint64_t ko = 1, last = 0;   /* last: the closing quote of the last value read */
                bool cut = false;
                for (;;) {
                    uint64_t rest = w.q & ~((ko << 1) - 1);   /* (ko = bit 63: none) */
                    uint64_t k1 = rest & -rest, r2 = rest ^ k1, v0 = r2 & -r2, r3 = r2 ^ v0,
                             v1 = r3 & -r3;
                    if (!v1) {
                        cut = true;   /* fewer than three quotes after the key's */
                        break;
                    }
                    if ((w.bs & (v1 - (ko << 1))) || (w.dot & (k1 - (ko << 1))) ||
                        !tw_one(sig & (v0 - (k1 << 1))))
                        break;
                    unsigned o = (unsigned)__builtin_ctzll(ko), q1 = (unsigned)__builtin_ctzll(k1),
                             q2 = (unsigned)__builtin_ctzll(v0), e = (unsigned)__builtin_ctzll(v1);
                    node = vm_trie_child_of(t, f.node, fe, fne, s + p + o + 1, q1 - o - 1);
                    st = add_field(&S, node, VM_J_STR, false, p + q2 + 1, e - q2 - 1);
                    if (st != VM_OK)
                        return st;
                    last = v1;
                    uint64_t r4 = r3 ^ v1, nk = r4 & -r4;
                    if (!nk || !tw_one(sig & (nk - (v1 << 1))))
                        break;
                    f.index++;
                    ko = nk;
                }
                if (last > ko) {
                    p += (size_t)__builtin_ctzll(last) + 1;   /* what follows the last read */
                    goto after;
                }
                unsigned o = (unsigned)__builtin_ctzll(ko);
                p += o;   /* the key of a member the masks did not read */
                if (!cut || !o)
                    break;   /* not a plain string member, or longer than a window: below */
                /* (cut by the window's end: a window from its key) */
            }
#endif
            size_t k = p + 1, end = tw_string(s, p, n, &esc, &dots);
            if (!end)
                return fail(&S, p, VM_ERR_EVENT, "unterminated string or invalid escape");
            size_t klen = end - k - 1;
            if (!esc && !dots) {
                node = vm_trie_child_of(t, f.node, fe, fne, s + k, klen);   /* the usual key */
            } else {
                S.p = end;
                S.dots = dots;
                if ((st = lookup(&S, f.node, s + k, klen, esc, &node)) != VM_OK)
                    return st;
            }
            p = tw_ws(s, end, n);
            if (p >= n || s[p] != ':')
                return fail(&S, p, VM_ERR_EVENT, "expected ':' after an object key");
            p = tw_ws(s, p + 1, n);
            if (p >= n)
                return fail(&S, p, VM_ERR_EVENT, "unexpected end of event: expected a value");
        }
        size_t start = p, end;
        char ch = s[p];
        uint8_t type;
        switch (ch) {
        case '{':
        case '[': {
            bool array = ch == '[';
            const vm_trie_node *tn = node == VM_NONE ? NULL : &t->nodes[node];
            size_t open = c->frames.n + 1;      /* containers open, f among them */
            if (open >= c->max_depth)
                return fail(&S, p, VM_ERR_LIMIT, "the event is nested too deeply");
            if (!reads_inside(tn, array) && fast) {
                uint32_t to = F->br_match[bi];  /* (stage 1 checked the depth inside) */
                p = F->br_pos[to] + 1;
                bi = to + 1;
                goto after;
            }
            if (!reads_inside(tn, array)) {
                vm_skip_status sk = vm_fast_skip(s, n, p + 1, c->max_depth - open, &end);
                if (sk != VM_SKIP_OK)
                    return sk == VM_SKIP_DEEP
                         ? fail(&S, p, VM_ERR_LIMIT, "the event is nested too deeply")
                         : fail(&S, p, VM_ERR_EVENT, "unexpected end of event");
                p = end;
                goto after;
            }
            struct vm_frame nf = { array, 0, node, 0, 0 };
            if (array) {
                nf.id = c->narrays++;
                uint16_t depth = (uint16_t)(tn->depth < UINT16_MAX ? tn->depth : UINT16_MAX);
                if (!VM_BUF_PUSH(c->array_depth, depth))
                    return fail(&S, p, VM_ERR_NOMEM, "out of memory");
            }
            if (f.array) {
                /* An element that may hold leaves: the leaves inside lie in it. */
                uint32_t id = c->memb.n, top = c->memb_top;
                vm_memb m = { f.id, f.index, top, top == VM_NONE ? id : c->memb.v[top].outer };
                if (!VM_BUF_PUSH(c->memb, m))
                    return fail(&S, p, VM_ERR_NOMEM, "out of memory");
                c->memb_top = id;
                c->memb_depth++;
                nf.memb = 1;
            }
            if (!VM_BUF_PUSH(c->frames, f))
                return fail(&S, p, VM_ERR_NOMEM, "out of memory");
            f = nf;
            F_EDGES();
            close = array ? ']' : '}';
            p++;
            bi++;
            goto open;
        }
        case '"':
            if (!(p = tw_string(s, p, n, &esc, &dots)))
                return fail(&S, start, VM_ERR_EVENT, "unterminated string or invalid escape");
            if ((st = add_field(&S, node, VM_J_STR, esc, start + 1, p - start - 2)) != VM_OK)
                return st;
            goto after;
        case 't':
        case 'f':
        case 'n':
            end = p + (ch == 'f' ? 5 : 4);
            if (end > n)
                return fail(&S, p, VM_ERR_EVENT, "invalid literal (expected true, false or null)");
            p = end;
            type = ch == 't' ? VM_J_TRUE : ch == 'f' ? VM_J_FALSE : VM_J_NULL;
            break;
        default:
            if (ch != '-' && (ch < '0' || ch > '9'))
                return fail(&S, p, VM_ERR_EVENT, "unexpected character: expected a value");
            p = tw_number(s, p, n);
            type = VM_J_NUM;
            break;
        }
        if ((st = add_field(&S, node, type, false, start, p - start)) != VM_OK)
            return st;
    }
after:                                          /* after a member or element: ',' or the end */
    f.index++;
    p = tw_ws(s, p, n);
    if (p >= n)
        return fail(&S, p, VM_ERR_EVENT, "unexpected end of event");
    if (s[p] == ',') {
        p = tw_ws(s, p + 1, n);
        if (p >= n)
            return fail(&S, p, VM_ERR_EVENT, "unexpected end of event");
        if (s[p] == close)
            return fail(&S, p, VM_ERR_EVENT, f.array ? "trailing comma in array"
                                                     : "trailing comma in object");
        goto member;
    }
    if (s[p] != close)
        return fail(&S, p, VM_ERR_EVENT, f.array ? "expected ',' or ']' in array"
                                                 : "expected ',' or '}' in object");
closed:
    p++;
    bi++;
    if (f.memb)
        close_element(c);
    if (c->frames.n > 0) {
        f = c->frames.v[--c->frames.n];
        F_EDGES();
        close = f.array ? ']' : '}';
        goto after;
    }
done:
    p = tw_ws(s, p, n);
    if (p < n)
        return fail(&S, p, VM_ERR_EVENT, "unexpected text after the event's closing '}'");
    return VM_OK;
}

#undef F_EDGES

static vm_status walk_trusted(vm_ctx *c, const char *json, size_t len, vm_error *err)
{
    return walk_lean(c, json, len, err, false);
}

static vm_status walk_after_stage1(vm_ctx *c, const char *json, size_t len, vm_error *err)
{
    return walk_lean(c, json, len, err, true);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* The same walks built for CPUs with BMI1, BMI2 and POPCNT (since 2013), where the window's
 * quotes are found with blsi, blsr and tzcnt, and "exactly one bit" is a popcount; this file is
 * otherwise built for any x86-64.  (CityLots PREFIX, 200 events: trusted 3,147 -> 3,042
 * instructions an event and x1.04-1.07 as fast; validating 7,652 -> 7,521 instructions, within
 * the noise in time; harness, 10 rounds in random order.) */
#define WALK_BMI 1
#define BMI __attribute__((target("bmi,bmi2,popcnt")))
static BMI vm_status walk_trusted_bmi(vm_ctx *c, const char *json, size_t len, vm_error *err)
{
    return walk_lean(c, json, len, err, false);
}

static BMI vm_status walk_after_stage1_bmi(vm_ctx *c, const char *json, size_t len, vm_error *err)
{
    return walk_lean(c, json, len, err, true);
}

/* Does the CPU have BMI1, BMI2 and POPCNT?  vm_walk_bmi (vm_int.h) decides once. */
static bool walk_bmi(void)
{
    if (vm_walk_bmi < 0) {
        __builtin_cpu_init();
        vm_walk_bmi = __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                      __builtin_cpu_supports("popcnt");
    }
    return vm_walk_bmi;
}
#else
#define walk_bmi() false
#define walk_trusted_bmi walk_trusted
#define walk_after_stage1_bmi walk_after_stage1
#endif

vm_status vm_scan(vm_ctx *c, const char *json, size_t len, vm_error *err)
{
    /* The fast path validates with SIMD first; a failure is scanned again byte by byte, for
     * the message and the position, and so is everything when no SIMD path exists. */
    static int only = -1;
    if (only < 0)
        only = getenv("EBR_STAGE1_ONLY") != NULL;
    c->fast_for = NULL;   /* (the tables it fills are emptied by vm_match, its only caller) */
    bool bmi = walk_bmi();
    if (c->trusted)
        return bmi ? walk_trusted_bmi(c, json, len, err) : walk_trusted(c, json, len, err);
    if (c->fast_ok && len >= 64 && vm_fast_stage1(c, json, len)) {
        c->fast_for = json;
        if (only)
            return VM_OK;
        return bmi ? walk_after_stage1_bmi(c, json, len, err) : walk_after_stage1(c, json, len, err);
    }
    return walk(c, json, len, err);
}
