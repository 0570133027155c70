/*
 * scan_fast.c — stage 1 of the fast scanner: the whole event is validated 64 bytes at a time
 * with bit masks, without looking at one token after another.
 *
 * Per 64-byte block, SIMD compares give one bit per byte for each character class; everything
 * else is arithmetic on 64-bit masks, with carries into the next block:
 *   - strings: real quotes (not escaped), the bytes inside, control characters, escapes;
 *   - outside strings: only whitespace, { } [ ] : , and the characters of numbers and literals;
 *   - numbers: the JSON grammar, rule by rule ("a '.' is followed by a digit", "no second '.'",
 *     ...), where "x is followed by y" is `(x << 1) & ~y` and "the end of a run" is found by
 *     adding its start to the run (the carry ripples through it);
 *   - tokens: what may follow each kind of token (after ':' a value, after '{' a key or '}', ...),
 *     with "the next token after x" found the same way, the carry rippling through whitespace;
 *     a ':' must follow a string that starts where a key may start.
 * Stage 1 also records every bracket; a walk over the brackets (far fewer than tokens) matches
 * them and counts the ':' and ',' each object and array holds at its own level, which settles
 * what bit masks cannot (an object is key ':' value, separated by ','; an array has no ':').
 *
 * An event that passes is valid JSON, and the extraction walk (scan.c) then reads only the
 * parts some rule looks at, jumping over the rest from bracket to matching bracket.  An event
 * that fails is scanned again by the byte-at-a-time validator, which says what is wrong and where.
 */
#include <string.h>

#include "vm_int.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EBR_X86 1
#endif

#ifdef EBR_X86
#define HOT __attribute__((target("popcnt,bmi,bmi2,lzcnt")))
#else
#define HOT
#endif

/* A branch to what is rare (escapes, non-ASCII bytes).  (The functions it leads to were marked
 * cold, and GCC 12 then took stage 1's whole block loop for code never run: it moved the loop to
 * the .cold section and compiled it for size.) */
#define RARE(x) __builtin_expect((x) != 0, 0)

/* One bit per byte of a 64-byte block, for each class of character stage 1 looks at. */
typedef struct {
    uint64_t q, bs, ws, lb, rb, lk, rk, co, cm;
    uint64_t d, mi, pl, dt, ee, let, lit, z, ctrl, hi;
    uint64_t br, scal;   /* any bracket; any byte of a scalar: d | mi | pl | dt | ee | let */
    uint64_t ok;         /* (stage1_vbmi2) what may stand outside strings: ws | br | co | cm | scal */
    /* (lit: t, f or n, the first letter of a literal) */
} classes;

#ifdef EBR_X86
/* The bytes the AVX-512 classification compares with, each repeated 64 times, read from memory:
 * built with _mm512_set1_epi8 inside the loop of stage1_vbmi2, GCC made each anew in every block
 * (a move and a broadcast, 2 instructions for each of 22 constants, because the loop's rare
 * calls clobber the vector registers); a compare with a memory operand is one.  Stage 1 of the
 * EXACT row: 573 instead of 598 ns an event (best of 240 passes over 5,000 events, alternating). */
#define R8(x) x, x, x, x, x, x, x, x
#define R64(x) { R8(x), R8(x), R8(x), R8(x), R8(x), R8(x), R8(x), R8(x) }
enum { K_Q, K_BS, K_SP, K_CO, K_CM, K_MI, K_DT, K_1F, K_OK, K_COUNT };
static const __attribute__((aligned(64))) uint8_t classify_consts[K_COUNT][64] = {
    R64('"'), R64('\\'), R64(' '), R64(':'), R64(','), R64('-'), R64('.'), R64(0x1f), R64(0x40),
};
#undef R64
#undef R8

/* Sets of bytes told by one look-up (vpermb) and one compare: the slot of a byte's low six bits
 * holds the member of the set that has them, and x is in the set iff its slot holds x (slot 0
 * holds 0xff, no byte that ends in six zero bits being in a set; the others 0).  Whitespace,
 * brackets, 'e' or 'E', and the first letters of literals each take two instructions and give
 * one mask, where a compare a byte and or-ing the masks took up to eight, in general registers
 * (GCC moved each mask there to or it).  The bytes of scalars (digits, letters, '-', '+', '.')
 * are the high bit of a 128-byte table's entry, looked up by the low seven bits (a byte from
 * 0x80 may come out as one; outside strings it is an error anyway, and inside them the mask is
 * not read).  Stage 1 of the EXACT row ×1.06 as fast: 391 -> 369 ns an event, thread CPU time,
 * 5,000 events, 20 rounds in random order, first quartiles. */
#define S6(c) [(c) & 63] = (c)
#define SET64 static const __attribute__((aligned(64))) uint8_t
SET64 in_br[64] = { [0] = 0xff, S6('{'), S6('}'), S6('['), S6(']') };
SET64 in_ee[64] = { [0] = 0xff, S6('e'), S6('E') };
SET64 in_lit[64] = { [0] = 0xff, S6('t'), S6('f'), S6('n') };
#undef SET64
#undef S6
/* (and bit 6 of the same entry: what may stand outside strings, the bytes of scalars,
 * whitespace, brackets, ':' and ','; one test where whitespace took a look-up and a compare, and
 * the five masks or-ed; CityLots PREFIX validating 7,521 -> 7,361 instructions an event, stage 1
 * x1.03, harness, 12 rounds in random order) */
static const __attribute__((aligned(64))) uint8_t in_scal[128] = {
    ['0' ... '9'] = 0xc0, ['a' ... 'z'] = 0xc0, ['A' ... 'Z'] = 0xc0, ['-'] = 0xc0, ['+'] = 0xc0,
    ['.'] = 0xc0, [' '] = 0x40, ['\n'] = 0x40, ['\r'] = 0x40, ['\t'] = 0x40, ['{'] = 0x40,
    ['}'] = 0x40, ['['] = 0x40, [']'] = 0x40, [':'] = 0x40, [','] = 0x40,
};

/* The classes stage1_vbmi2 needs, in three parts, each computed just before its masks are used
 * (all at once, GCC kept 21 masks live across the block and spilled most of them; the loop had
 * 111 stack accesses in 407 instructions): stage 1 of the EXACT row, 443 instead of 474 ns an
 * event (best of 320 passes over 5,000 events, alternating).  Not filled: lb, rb, lk, rk (the
 * token classes come from a table), pl, d, let, z, ws (ok says it all).  v: the block; kk:
 * classify_consts. */
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vbmi"))) static inline \
    __attribute__((always_inline))
#define LOAD(t) _mm512_load_si512((const void *)(t))
#define C(i) LOAD(kk[i])
#define EQ(i) _mm512_cmpeq_epi8_mask(v, C(i))
#define IN(set) _mm512_cmpeq_epi8_mask(_mm512_permutexvar_epi8(v, LOAD(set)), v)

/* For block_strings: q, bs, ctrl, hi. */
AVX512 void classify512_strings(__m512i v, const uint8_t (*kk)[64], classes *k)
{
    k->q = EQ(K_Q);
    k->bs = EQ(K_BS);
    k->ctrl = _mm512_cmple_epu8_mask(v, C(K_1F));
    k->hi = _mm512_movepi8_mask(v);
}

/* What may stand outside strings: br, co, cm, scal, and all of it (ok). */
AVX512 void classify512_outside(__m512i v, const uint8_t (*kk)[64], classes *k)
{
    k->br = IN(in_br);
    k->co = EQ(K_CO);
    k->cm = EQ(K_CM);
    __m512i t = _mm512_permutex2var_epi8(LOAD(in_scal), v, LOAD(in_scal + 64));
    k->scal = _mm512_movepi8_mask(t);
    k->ok = _mm512_test_epi8_mask(t, C(K_OK));
}

/* For the numbers and literals of stage1_vbmi2: mi, dt, ee, lit (the rest of the number grammar
 * comes from the classes vbmi2_numbers looks up). */
AVX512 void classify512_numbers(__m512i v, const uint8_t (*kk)[64], classes *k)
{
    k->mi = EQ(K_MI);
    k->dt = EQ(K_DT);
    k->ee = IN(in_ee);
    k->lit = IN(in_lit);
}
#undef IN
#undef LOAD
#undef EQ
#undef C
#undef AVX512

/* The same with two 32-byte halves. */
__attribute__((target("avx2"))) static inline __attribute__((always_inline))
void classify_avx2(const uint8_t *p, classes *k)
{
    __m256i lo = _mm256_loadu_si256((const __m256i *)p);
    __m256i hi = _mm256_loadu_si256((const __m256i *)(p + 32));
#define M(x) ((uint64_t)(uint32_t)_mm256_movemask_epi8(x))
#define BOTH_EQ(ch) (M(_mm256_cmpeq_epi8(lo, _mm256_set1_epi8((char)(ch)))) | \
                     M(_mm256_cmpeq_epi8(hi, _mm256_set1_epi8((char)(ch)))) << 32)
    k->q = BOTH_EQ('"');
    k->bs = BOTH_EQ('\\');
    k->ws = BOTH_EQ(' ') | BOTH_EQ('\n') | BOTH_EQ('\r') | BOTH_EQ('\t');
    k->lb = BOTH_EQ('{');
    k->rb = BOTH_EQ('}');
    k->lk = BOTH_EQ('[');
    k->rk = BOTH_EQ(']');
    k->co = BOTH_EQ(':');
    k->cm = BOTH_EQ(',');
    k->mi = BOTH_EQ('-');
    k->pl = BOTH_EQ('+');
    k->dt = BOTH_EQ('.');
    k->ee = BOTH_EQ('e') | BOTH_EQ('E');
    k->lit = BOTH_EQ('t') | BOTH_EQ('f') | BOTH_EQ('n');
    k->z = BOTH_EQ('0');
    /* Unsigned range tests: x in [a, a+n] iff max(x - a, n) == n with saturation. */
    __m256i zero = _mm256_set1_epi8('0'), nine = _mm256_set1_epi8(9);
    __m256i dl = _mm256_sub_epi8(lo, zero), dh = _mm256_sub_epi8(hi, zero);
    k->d = M(_mm256_cmpeq_epi8(_mm256_min_epu8(dl, nine), dl)) |
           M(_mm256_cmpeq_epi8(_mm256_min_epu8(dh, nine), dh)) << 32;
    __m256i a = _mm256_set1_epi8('a'), z25 = _mm256_set1_epi8(25), sp = _mm256_set1_epi8(0x20);
    __m256i ll = _mm256_sub_epi8(_mm256_or_si256(lo, sp), a), lh = _mm256_sub_epi8(_mm256_or_si256(hi, sp), a);
    k->let = M(_mm256_cmpeq_epi8(_mm256_min_epu8(ll, z25), ll)) |
             M(_mm256_cmpeq_epi8(_mm256_min_epu8(lh, z25), lh)) << 32;
    __m256i c1f = _mm256_set1_epi8(0x1f);
    k->ctrl = M(_mm256_cmpeq_epi8(_mm256_min_epu8(lo, c1f), lo)) |
              M(_mm256_cmpeq_epi8(_mm256_min_epu8(hi, c1f), hi)) << 32;
    k->hi = M(lo) | M(hi) << 32;
    k->br = k->lb | k->rb | k->lk | k->rk;
    k->scal = k->d | k->mi | k->pl | k->dt | k->ee | k->let;
#undef M
#undef BOTH_EQ
}
#endif

/* Portable classification, byte by byte (used where no SIMD path exists, and by tests). */
static void classify_scalar(const uint8_t *p, classes *k)
{
    memset(k, 0, sizeof *k);
    for (int i = 0; i < 64; i++) {
        uint8_t ch = p[i];
        uint64_t b = 1ull << i;
        k->q |= ch == '"' ? b : 0;
        k->bs |= ch == '\\' ? b : 0;
        k->ws |= (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t') ? b : 0;
        k->lb |= ch == '{' ? b : 0;
        k->rb |= ch == '}' ? b : 0;
        k->lk |= ch == '[' ? b : 0;
        k->rk |= ch == ']' ? b : 0;
        k->co |= ch == ':' ? b : 0;
        k->cm |= ch == ',' ? b : 0;
        k->mi |= ch == '-' ? b : 0;
        k->pl |= ch == '+' ? b : 0;
        k->dt |= ch == '.' ? b : 0;
        k->ee |= (ch == 'e' || ch == 'E') ? b : 0;
        k->lit |= (ch == 't' || ch == 'f' || ch == 'n') ? b : 0;
        k->z |= ch == '0' ? b : 0;
        k->d |= (ch >= '0' && ch <= '9') ? b : 0;
        k->let |= ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') ? b : 0;
        k->ctrl |= ch < 0x20 ? b : 0;
        k->hi |= ch >= 0x80 ? b : 0;
    }
    k->br = k->lb | k->rb | k->lk | k->rk;
    k->scal = k->d | k->mi | k->pl | k->dt | k->ee | k->let;
}

typedef void (*classify_fn)(const uint8_t *, classes *);

/* ---- carries between blocks -------------------------------------------------------------------- */

/* x << 1 with the bit shifted out of the previous block coming in. */
static inline __attribute__((always_inline)) uint64_t shl(uint64_t x, uint64_t *carry)
{
    uint64_t r = x << 1 | *carry;
    *carry = x >> 63;
    return r;
}

/* a + b with the carry of the previous block's addition. */
static inline __attribute__((always_inline)) uint64_t add(uint64_t a, uint64_t b, uint64_t *carry)
{
#ifdef EBR_X86
    unsigned long long r;
    *carry = _addcarry_u64((unsigned char)*carry, a, b, &r);   /* one adc */
    return r;
#else
    uint64_t r;
    uint64_t c1 = __builtin_add_overflow(a, b, &r);
    uint64_t c2 = __builtin_add_overflow(r, *carry, &r);
    *carry = c1 | c2;
    return r;
#endif
}

/* Bit i set: bits 0..i hold an odd number of set bits of x (the inside of quote pairs). */
static inline __attribute__((always_inline)) uint64_t prefix_xor(uint64_t x)
{
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    return x;
}

/* The state stage 1 carries from one block to the next. */
typedef struct {
    uint64_t odd_bs;       /* the last byte was a backslash that escapes the next one */
    uint64_t in;           /* all ones if the block ended inside a string */
    uint64_t c_sc, c_ee, c_dt, c_ms, c_z, c_nd;        /* shift carries */
    uint64_t c_closeq, c_after, c_cocm, c_lk, c_lb, c_lbcm, c_ke;
    uint64_t a_lit, a_dt, a_e, a_ke;                   /* add carries */
    uint64_t n_a, n_b, n_c, n_d, n_e, n_g, n_h;        /* next-token adds */
} carries;

/* Marks the bytes escaped by a backslash: a byte after an odd run of backslashes.  Backslashes
 * are rare in events, so this walks only the blocks that have one.  p: the block, of which n
 * bytes may be read (the rest is taken as spaces). */
static __attribute__((noinline)) uint64_t escaped_walk(const uint8_t *p, unsigned n, uint64_t *odd);

static inline __attribute__((always_inline)) uint64_t escaped_bytes(const uint8_t *p, unsigned n,
                                                                    uint64_t bs, uint64_t *odd)
{
    if (RARE(bs | *odd))
        return escaped_walk(p, n, odd);
    return 0;
}

static uint64_t escaped_walk(const uint8_t *p, unsigned n, uint64_t *odd)
{
    uint64_t esc = 0;
    for (unsigned i = 0; i < 64; i++) {
        if (*odd) {
            esc |= 1ull << i;
            *odd = 0;
        } else if (i < n && p[i] == '\\') {
            *odd = 1;
        }
    }
    return esc;
}

/* The next token after each position of x (x already shifted to "the byte after the token"):
 * the carry ripples through whitespace and stops on the next significant byte. */
static inline __attribute__((always_inline)) uint64_t next_token(uint64_t xs, uint64_t ws, uint64_t *carry)
{
    return add(xs, ws, carry) & ~ws;
}

/* Checks the escapes of a block: after a backslash one of " \ / b f n r t, or u and four hex
 * digits (which may run into the next block: the text is contiguous). */
static __attribute__((noinline)) bool escapes_ok(const uint8_t *s, size_t len, size_t base,
                                                uint64_t esc)
{
    while (esc) {
        size_t at = base + (size_t)__builtin_ctzll(esc);
        esc &= esc - 1;
        if (at >= len)
            return false;
        uint8_t e = s[at];
        if (e == 'u') {
            for (size_t k = 1; k <= 4; k++) {
                if (at + k >= len)
                    return false;
                uint8_t h = s[at + k];
                if (!((h >= '0' && h <= '9') || ((h | 0x20) >= 'a' && (h | 0x20) <= 'f')))
                    return false;
            }
        } else if (!memchr("\"\\/bfnrt", e, 8) || !e) {
            return false;
        }
    }
    return true;
}

/* Checks literals: each run starting with t, f or n must be exactly true, false or null. */
static __attribute__((noinline)) bool literals_ok(const uint8_t *s, size_t len, size_t base,
                                                  uint64_t starts)
{
    while (starts) {
        size_t at = base + (size_t)__builtin_ctzll(starts);
        starts &= starts - 1;
        const char *w = s[at] == 't' ? "true" : s[at] == 'f' ? "false" : "null";
        size_t n = strlen(w);
        if (at + n > len || memcmp(s + at, w, n) != 0)
            return false;
        /* The run must end there: the next byte is no letter, digit or number sign. */
        if (at + n < len) {
            uint8_t ch = s[at + n];
            if ((ch >= '0' && ch <= '9') || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') ||
                ch == '-' || ch == '+' || ch == '.')
                return false;
        }
    }
    return true;
}

/* UTF-8 of a block that has non-ASCII bytes: checked by decoding (rare in events); *resume
 * carries the end of a sequence that runs into the next block.  False on malformed input. */
static __attribute__((noinline)) bool utf8_ok(const uint8_t *s, size_t len, size_t base,
                                             size_t *resume)
{
    size_t i = *resume > base ? *resume : base, end = base + 64 < len ? base + 64 : len;
    while (i < end) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = vm_utf8_decode((const char *)s + i, len - i, &cp);
        if (k == 0)
            return false;
        i += k;
    }
    *resume = i;   /* a sequence may end in the next block */
    return true;
}

bool vm_fast_available(void)
{
    static int avail = -1;
    if (avail < 0) {
#ifdef EBR_X86
        __builtin_cpu_init();
        avail = __builtin_cpu_supports("avx2") != 0;
#else
        avail = 0;
#endif
    }
    return avail;
}

/* Stage 1: validates the event's bytes and fills c->fast (the brackets, their matches and the
 * ':' and ',' before each).  Returns false when the event is not valid JSON (or not an object, or
 * too deep): the caller then scans it byte by byte for the message. */
#define AI static inline __attribute__((always_inline))

/* The string masks of a block. */
typedef struct {
    uint64_t q, in, openq, closeq, body, out;
} strmasks;

/* Strings of a block: real quotes, their insides, what is outside; checks escapes, control
 * characters and UTF-8.  Returns false on an error it cannot put in *err (a bad escape).
 * p: the block, of which n bytes may be read (the rest is taken as spaces). */
AI bool block_strings(const uint8_t *p, unsigned n, const classes *m, carries *k, const uint8_t *s,
                      size_t len, size_t base, size_t *utf8_resume, uint64_t *err, strmasks *o)
{
    uint64_t odd = k->odd_bs;
    uint64_t esc = escaped_bytes(p, n, m->bs, &odd);
    k->odd_bs = odd;
    o->q = m->q & ~esc;
    o->in = prefix_xor(o->q) ^ k->in;
    k->in = (uint64_t)((int64_t)o->in >> 63);
    o->openq = o->q & o->in;
    o->closeq = o->q & ~o->in;
    o->body = o->in & ~o->openq;
    o->out = ~o->in & ~o->closeq;
    if (RARE(esc) && !escapes_ok(s, len, base, esc & o->body))
        return false;
    *err |= esc & ~o->body;               /* an escape outside a string */
    *err |= m->ctrl & o->body;            /* raw control characters in strings */
    *err |= (m->bs | m->hi) & o->out;     /* backslashes, non-ASCII outside strings */
    return !(RARE(m->hi) && !utf8_ok(s, len, base, utf8_resume));
}

/* Scalars of a block (numbers and literals): returns the first byte of each scalar run in *ss
 * and the byte after each run in *after.  Numbers follow the JSON grammar rule by rule.
 *
 * The rules are as few as the grammar allows (each shift or add is a carry kept from block to
 * block): "a '-', '+' or '.' is followed by a digit" also says that a number ends with a digit,
 * that a '-' has its digit and that '.' is not doubled; with "a run starts with a digit or '-'"
 * (no '.' first) it leaves "a digit before '.'" and "a digit before 'e'" nothing to catch.
 * The number runs are the scalar runs but the literals (rare, checked whole by literals_ok),
 * found only in the blocks that have one.  Stage 1 of the CityLots2 events (EXACT row) went from
 * 30,205 to 28,701 instructions an event (callgrind, AVX2 path), and on the AVX-512 path from
 * ~570 to 513 ns an event (best of 240 passes over 5,000 events, old and new alternating). */
AI bool block_scalars(const classes *m, uint64_t sc, carries *k, const uint8_t *s, size_t len,
                      size_t base, uint64_t *err, uint64_t *ss_out, uint64_t *after_out)
{
    uint64_t scs = shl(sc, &k->c_sc);
    uint64_t ss = sc & ~scs;
    *ss_out = ss;
    *after_out = scs & ~sc;
    *err |= ss & ~(m->d | m->mi | m->lit);
    uint64_t numstart = ss & (m->d | m->mi);
    uint64_t litstart = ss & m->lit;
    uint64_t nr = sc;   /* the bytes of number runs */
    if (litstart | k->a_lit) {
        if (litstart && !literals_ok(s, len, base, litstart))
            return false;
        nr &= add(sc, litstart, &k->a_lit);   /* the carry ripples through each literal */
    }
    /* Numbers are checked in every block: a run cut by the block's end carries over. */
    uint64_t d = m->d;
    *err |= nr & m->let & ~m->ee;                        /* only number characters */
    *err |= shl(nr & ~d & ~m->ee, &k->c_nd) & ~d;        /* '-', '+', '.' before a digit */
    uint64_t ms = shl(m->mi & numstart, &k->c_ms);
    *err |= shl(m->z & (numstart | ms), &k->c_z) & d;    /* no leading zeros */
    uint64_t dts = shl(m->dt & nr, &k->c_dt);
    *err |= add(dts, d, &k->a_dt) & m->dt & nr;          /* one '.' only */
    uint64_t ee = m->ee & nr;
    if (ee | (m->pl & nr) | k->c_ee | k->a_e) {
        /* Exponents (rare): */
        uint64_t ees = shl(ee, &k->c_ee);
        *err |= m->mi & nr & ~(numstart | ees);          /* '-' first, or after e */
        *err |= m->pl & nr & ~ees;                       /* '+' only after e */
        *err |= ees & ~(d | m->mi | m->pl);              /* a digit or sign after e */
        uint64_t r = d | ((m->mi | m->pl) & ees);
        *err |= add(ees, r, &k->a_e) & ~r & (m->dt | ee); /* nothing after the exponent */
    } else {
        *err |= m->mi & nr & ~numstart;                  /* '-' only first */
    }
    return true;
}

/* Stores what the bracket walk and the extraction walk need of block b: its brackets.  (The
 * ':' and ',' masks and their counts per block are not kept: only the brackets' counts are
 * read.  Nor are the masks of the block's strings: the extraction walk reads the strings it
 * needs itself, as the trusted walk does, in what they cost it before with the masks; not
 * storing them made stage 1 ~30 ns an event faster, EXACT row.) */
AI bool block_outputs(vm_fast *F, size_t b, uint64_t co, uint64_t cm, uint64_t br, uint64_t *cum)
{
    uint64_t base = *cum;
    *cum += (uint64_t)__builtin_popcountll(co) << 32 | (uint64_t)__builtin_popcountll(cm);
    if (br) {
        if (F->nbr + 64 > F->br_cap && !vm_fast_grow_brackets(F))
            return false;
        /* Each bracket keeps the ':' and ',' before it, so the bracket walk counts a
         * container's by subtractions: both counts in one word, one store a bracket here and
         * one load and one subtraction in the walk (two each before; stage 1 of the EXACT row
         * ~20-30 ns an event less, 5,000 events, min of 20 alternating runs: 433-441 -> 407-411). */
        /* (in locals: stored through br_pos, F->nbr was read again for every bracket; ~6 ns
         * an event, EXACT row) */
        uint32_t *pos = F->br_pos + F->nbr;
        uint64_t *cnt = F->br_cnt + F->nbr;
        F->nbr += (uint32_t)__builtin_popcountll(br);
        for (; br; br &= br - 1) {
            unsigned off = (unsigned)__builtin_ctzll(br);
            uint64_t below = (1ull << off) - 1;
            *pos++ = (uint32_t)(b * 64 + off);
            *cnt++ = base + ((uint64_t)__builtin_popcountll(co & below) << 32 |
                             (uint64_t)__builtin_popcountll(cm & below));
        }
    }
    return true;
}

/* The block at b of the event, padded with spaces past its end (every rule lets them pass). */
AI const uint8_t *block_at(const uint8_t *s, size_t len, size_t b, uint8_t tail[64])
{
    if (b * 64 + 64 <= len)
        return s + b * 64;
    memset(tail, ' ', 64);
    memcpy(tail, s + b * 64, len - b * 64);
    return tail;
}

/* Stage 1 with any classification: token order is checked with "next token" masks, the carry
 * of an addition rippling through whitespace (see the top of this file). */
AI bool stage1_masks(vm_ctx *c, const char *json, size_t len, classify_fn classify)
{
    const uint8_t *s = (const uint8_t *)json;
    size_t nblocks = (len + 63) / 64;
    vm_fast *F = &c->fast;
    carries k;
    memset(&k, 0, sizeof k);
    uint64_t err = 0;
    uint64_t cum = 0;
    size_t utf8_resume = 0;
    uint8_t tail[64];
    for (size_t b = 0; b < nblocks; b++) {
        const uint8_t *p = block_at(s, len, b, tail);
        classes m;
        classify(p, &m);
        strmasks st;
        if (!block_strings(p, 64, &m, &k, s, len, b * 64, &utf8_resume, &err, &st))
            return false;
        uint64_t out = st.out, ws = m.ws & out;
        uint64_t lb = m.lb & out, rb = m.rb & out, lk = m.lk & out, rk = m.rk & out;
        uint64_t co = m.co & out, cm = m.cm & out;
        uint64_t sc = out & m.scal;
        err |= out & ~(ws | lb | rb | lk | rk | co | cm | sc);
        uint64_t ss, after_sc;
        if (!block_scalars(&m, sc, &k, s, len, b * 64, &err, &ss, &after_sc))
            return false;
        /* What may follow each token. */
        uint64_t openq = st.openq, closeq = st.closeq;
        uint64_t vstart = openq | lb | lk | ss;
        uint64_t after_rbk = shl(rb | rk, &k.c_after);
        err |= next_token(shl(closeq, &k.c_closeq), ws, &k.n_a) & ~(co | cm | rb | rk);
        err |= next_token(after_sc | after_rbk, ws, &k.n_b) & ~(cm | rb | rk);
        err |= next_token(shl(co | cm, &k.c_cocm), ws, &k.n_c) & ~vstart;
        err |= next_token(shl(lk, &k.c_lk), ws, &k.n_d) & ~(vstart | rk);
        err |= next_token(shl(lb, &k.c_lb), ws, &k.n_e) & ~(openq | rb);
        /* A ':' follows a string that starts where a key may start (after '{' or ','). */
        uint64_t keypos = next_token(shl(lb | cm, &k.c_lbcm), ws, &k.n_g) & openq;
        uint64_t keyend = add(keypos, st.in, &k.a_ke) & ~st.in;
        err |= co & ~next_token(shl(keyend, &k.c_ke), ws, &k.n_h);
        if (err)
            return false;
        if (!block_outputs(F, b, co, cm, lb | rb | lk | rk, &cum))
            return false;
    }
    if (k.in || k.odd_bs)
        return false;   /* an unterminated string */
    return vm_fast_brackets(c, json, len);
}

/* stage1_masks with each classification in line (it was called through a pointer, once a
 * block, from a function compiled without AVX2): the AVX2 path's stage 1 of the EXACT row,
 * 13,900 -> 13,212 instructions an event (callgrind, 500 CityLots events), 721 -> 692 ns (min
 * of 8 alternating runs on a loaded machine). */
#ifdef EBR_X86
static __attribute__((target("avx2,popcnt,bmi,bmi2,lzcnt"))) bool
stage1_avx2(vm_ctx *c, const char *json, size_t len)
{
    return stage1_masks(c, json, len, classify_avx2);
}
#endif

static HOT bool stage1_portable(vm_ctx *c, const char *json, size_t len)
{
    return stage1_masks(c, json, len, classify_scalar);
}

#ifdef EBR_X86
#define VBMI2 __attribute__((target("avx512f,avx512bw,avx512vbmi,avx512vbmi2,popcnt,bmi,bmi2,lzcnt")))

/* Token classes of the compressed token stream (3 bits). */
enum { T_LB, T_RB, T_LK, T_RK, T_CO, T_CM, T_STR, T_SCALAR };

/* The constants of stage1_vbmi2, 64 bytes each. */
typedef struct {
    /* Per token pair (the class before * 8 + the class): the classes of the token before those
     * two that allow the pair, one bit each (0xff: any; 0: the pair is never valid).  A ':'
     * must come after a string that comes after '{' or ',' (the string is a key). */
    uint8_t allowed[64];
    /* Indexes of vpermt2b: the token one before each, and two before, in (block, history). */
    uint8_t before1[64], before2[64];
    uint8_t iota[64];
    /* The class of a token at the low 6 bits of its byte: '{', '}', '[', ']', ':', ',' and the
     * closing '"' (0x3b, 0x3d, 0x1b, 0x1d, 0x3a, 0x2c and 0x22 are distinct), and T_SCALAR for
     * any other, the first byte of a scalar.  The first bytes a valid scalar can have (digits,
     * '-', 't', 'f', 'n': 0x30-0x39, 0x2d, 0x34, 0x26, 0x2e) share no entry with the others;
     * those that do ('b', 'l', 'z', and 0xe2, 0xec, 0xfa by their low bits) start no number
     * or literal, and the number grammar (or the test of bytes above 0x7f outside strings)
     * fails them.  Each class as a bit, for testing `allowed`. */
    uint8_t cls_of[64], bit_of[64];
    /* The number grammar (vbmi2_numbers): the class of a byte of a number run (N_, at the low 7
     * bits of the byte; the class of a '-' that starts a number at num_ms); per pair of classes
     * (the byte before * 8 + the byte), the classes of the byte before the two that allow the
     * pair, one bit each (as `allowed`). */
    uint8_t num_cls[128], num_ms[64], num_allowed[64];   /* (num_cls: two registers) */
} vbmi2_consts;

/* Classes of the bytes of number runs (3 bits; every byte outside them is N_O): a digit but
 * '0', '0', a '-' that starts a number, any other sign, '.', 'e' or 'E', any other letter. */
enum { N_O, N_D, N_Z, N_M, N_S, N_T, N_E, N_X };
#define NX4(a) [a] = N_X, [(a) + 1] = N_X, [(a) + 2] = N_X, [(a) + 3] = N_X
#define NLETTERS(a) NX4(a + 1), NX4(a + 6), NX4(a + 10), NX4(a + 14), NX4(a + 18), NX4(a + 22), \
                    [a + 26] = N_X   /* a: the byte before 'A' or 'a'; all letters but 'e' */
#define NROW(f, p) f(p, 0), f(p, 1), f(p, 2), f(p, 3), f(p, 4), f(p, 5), f(p, 6), f(p, 7)
#define NB(c) (1 << (c))
#define NDIGIT(c) ((c) == N_D || (c) == N_Z)
/* The pair (p, c): a number ends (N_O) after a digit; a digit follows anything but a digit
 * after a '0' that starts a number ('0' or '-0'); a '-' that starts a number follows no byte of
 * the run, another sign follows 'e'; '.' and 'e' follow a digit; no other letter. */
#define NALLOW(p, c)                                                                          \
    ((p) == N_X || (c) == N_X ? 0                                                             \
     : (c) == N_O             ? ((p) == N_O || NDIGIT(p) ? 0xff : 0)                          \
     : NDIGIT(c)              ? ((p) == N_Z ? 0xff & ~(NB(N_O) | NB(N_M)) : 0xff)             \
     : (c) == N_M             ? ((p) == N_O ? 0xff : 0)                                       \
     : (c) == N_S             ? ((p) == N_E ? 0xff : 0)                                       \
                              : (NDIGIT(p) ? 0xff : 0))

#define SEQ8(i) (i), (i) + 1, (i) + 2, (i) + 3, (i) + 4, (i) + 5, (i) + 6, (i) + 7
#define SEQ64(i) SEQ8(i), SEQ8((i) + 8), SEQ8((i) + 16), SEQ8((i) + 24), SEQ8((i) + 32), \
                 SEQ8((i) + 40), SEQ8((i) + 48), SEQ8((i) + 56)
#define R8(x) x, x, x, x, x, x, x, x
#define R64(x) { R8(x), R8(x), R8(x), R8(x), R8(x), R8(x), R8(x), R8(x) }
static const __attribute__((aligned(64))) vbmi2_consts vbmi2_k = {
    .allowed = {
#define A(prev, cur) [(prev) * 8 + (cur)] = 0xff
        A(T_LB, T_STR), A(T_LB, T_RB),
        A(T_RB, T_CM), A(T_RB, T_RB), A(T_RB, T_RK), A(T_RK, T_CM), A(T_RK, T_RB), A(T_RK, T_RK),
        A(T_LK, T_STR), A(T_LK, T_SCALAR), A(T_LK, T_LB), A(T_LK, T_LK), A(T_LK, T_RK),
        A(T_CO, T_STR), A(T_CO, T_SCALAR), A(T_CO, T_LB), A(T_CO, T_LK),
        A(T_CM, T_STR), A(T_CM, T_SCALAR), A(T_CM, T_LB), A(T_CM, T_LK),
        A(T_STR, T_CM), A(T_STR, T_RB), A(T_STR, T_RK),
        A(T_SCALAR, T_CM), A(T_SCALAR, T_RB), A(T_SCALAR, T_RK),
#undef A
        [T_STR * 8 + T_CO] = 1 << T_LB | 1 << T_CM,
    },
    /* (64 + j: byte j of the history, whose byte 63 is the last token of the blocks before) */
    .before1 = { 127, SEQ8(0), SEQ8(8), SEQ8(16), SEQ8(24), SEQ8(32), SEQ8(40), SEQ8(48), 56, 57,
                 58, 59, 60, 61, 62 },
    .before2 = { 126, 127, SEQ8(0), SEQ8(8), SEQ8(16), SEQ8(24), SEQ8(32), SEQ8(40), SEQ8(48), 56,
                 57, 58, 59, 60, 61 },
    .iota = { SEQ64(0) },
    .cls_of = { [0x00 ... 0x1a] = T_SCALAR, [0x1b] = T_LK, [0x1c] = T_SCALAR, [0x1d] = T_RK,
                [0x1e ... 0x21] = T_SCALAR, [0x22] = T_STR, [0x23 ... 0x2b] = T_SCALAR,
                [0x2c] = T_CM, [0x2d ... 0x39] = T_SCALAR, [0x3a] = T_CO, [0x3b] = T_LB,
                [0x3c] = T_SCALAR, [0x3d] = T_RB, [0x3e ... 0x3f] = T_SCALAR },
    .bit_of = { 1 << T_LB, 1 << T_RB, 1 << T_LK, 1 << T_RK, 1 << T_CO, 1 << T_CM, 1 << T_STR,
                1 << T_SCALAR },
    .num_cls = { ['0'] = N_Z, ['1'] = N_D, ['2'] = N_D, ['3'] = N_D, ['4'] = N_D, ['5'] = N_D,
                 ['6'] = N_D, ['7'] = N_D, ['8'] = N_D, ['9'] = N_D, ['-'] = N_S, ['+'] = N_S,
                 ['.'] = N_T, ['e'] = N_E, ['E'] = N_E, NLETTERS(0x40), NLETTERS(0x60) },
    .num_ms = R64(N_M),
    .num_allowed = { NROW(NALLOW, 0), NROW(NALLOW, 1), NROW(NALLOW, 2), NROW(NALLOW, 3),
                     NROW(NALLOW, 4), NROW(NALLOW, 5), NROW(NALLOW, 6), NROW(NALLOW, 7) },
};
#undef NALLOW
#undef NDIGIT
#undef NB
#undef NROW
#undef NLETTERS
#undef NX4
#undef R64
#undef R8
#undef SEQ64
#undef SEQ8

/* The state of stage1_vbmi2 between blocks. */
typedef struct {
    __m512i hist;   /* the classes of the last tokens, the last at byte 63 */
    __m512i ncls;   /* the number classes of the last block */
    carries k;
    uint64_t cum;   /* the ':' and ',' so far (high and low half) */
} vbmi2_state;

/* The token stream of a block: checks each token against the two before it (see vbmi2_consts)
 * and keeps the last ones in S->hist for the next block.  The two tokens before the block's
 * first come from the history by a two-table permute (vpermt2b), and the history moves on by
 * one more: no byte goes through a general register, and no branch.  With the class of a
 * bracket, ':' or ',' read from a table (one vpermb instead of six masked moves), stage 1 of
 * the EXACT row: 460 instead of 503 ns an event (best of 320 passes over 5,000 events,
 * alternating).  Strings and scalars get theirs from the same table: two masked moves and the
 * moves of two masks into mask registers fewer a block (CityLots PREFIX, validating: 7,341 ->
 * 7,285 instructions an event; the time within the noise). */
static VBMI2 inline __attribute__((always_inline)) uint64_t
vbmi2_tokens(__m512i v, uint64_t tokens, vbmi2_state *S, const vbmi2_consts *K)
{
#define V(x) _mm512_load_si512((const void *)K->x)
    __m512i cls = _mm512_permutexvar_epi8(v, V(cls_of));
    __m512i tok = _mm512_maskz_compress_epi8(tokens, cls);
    unsigned ntok = (unsigned)__builtin_popcountll(tokens);
    __m512i prev = _mm512_permutex2var_epi8(tok, V(before1), S->hist);
    __m512i prev2 = _mm512_permutex2var_epi8(tok, V(before2), S->hist);
    __m512i pair = _mm512_or_si512(_mm512_slli_epi16(prev, 3), tok);
    __m512i ok = _mm512_permutexvar_epi8(pair, V(allowed));
    uint64_t bad = _mm512_testn_epi8_mask(ok, _mm512_permutexvar_epi8(prev2, V(bit_of)));
    /* history byte j becomes byte j + ntok of (history, tokens) */
    S->hist = _mm512_permutex2var_epi8(S->hist, _mm512_add_epi8(V(iota), _mm512_set1_epi8((char)ntok)),
                                       tok);
    return bad & _bzhi_u64(~0ull, ntok);
#undef V
}

/* The number grammar of a block, but for "one '.'" and "one 'e'" (vbmi2_scalars): each byte of
 * a number run (nr) gets a class (vpermi2b; bytes outside the runs N_O), a '-' that starts a
 * run (ms) its own, and each byte with the two before it is looked up in num_allowed, as
 * vbmi2_tokens does with tokens: a number starts with a digit or '-'; a '+' or '-' inside it
 * follows 'e'; a sign, '.' or 'e' is followed by a digit ('e' by a sign too); a '.' or 'e'
 * follows a digit; no digit follows a '0' that starts a number ('0' or '-0'); no letter but
 * 'e'.  The bytes before the block's first two come from the last block's classes (S->ncls).
 * Returns the bytes that break a rule.
 *
 * It replaced the mask rules of block_scalars here (~30 instructions and 6 carries a block):
 * stage 1 alone of the EXACT row ~13 ns an event faster than a first version that told the
 * signs apart by a second look-up (7 shuffles instead of 5), which was no faster than the mask
 * rules (in-process A/B, 300 alternating passes over 5,000 CityLots events, both orders).
 * Shuffles seem to be what this loop runs short of: fewer of them paid, fewer instructions
 * in general have not. */
static VBMI2 inline __attribute__((always_inline)) uint64_t
vbmi2_numbers(__m512i v, uint64_t nr, uint64_t ms, vbmi2_state *S, const vbmi2_consts *K)
{
#define V(x) _mm512_load_si512((const void *)(x))
    __m512i cls = _mm512_maskz_permutex2var_epi8(nr, V(K->num_cls), v, V(K->num_cls + 64));
    cls = _mm512_mask_mov_epi8(cls, ms, V(K->num_ms));
    __m512i prev1 = _mm512_permutex2var_epi8(cls, V(K->before1), S->ncls);
    __m512i prev2 = _mm512_permutex2var_epi8(cls, V(K->before2), S->ncls);
    __m512i ok = _mm512_permutexvar_epi8(_mm512_or_si512(_mm512_slli_epi16(prev1, 3), cls),
                                         V(K->num_allowed));
    S->ncls = cls;
    return _mm512_testn_epi8_mask(ok, _mm512_permutexvar_epi8(prev2, V(K->bit_of)));
#undef V
}

/* Scalars of a block of stage1_vbmi2: literals (as block_scalars), the number grammar
 * (vbmi2_numbers), and the two rules over whole runs: no '.' after a '.' or 'e' of the same
 * number, no 'e' after an 'e' (the carry of an addition rippling through the run).  Returns the
 * first byte of each scalar run in *ss_out; false as block_scalars. */
static VBMI2 inline __attribute__((always_inline)) bool
vbmi2_scalars(__m512i v, const classes *m, uint64_t sc, vbmi2_state *S, const vbmi2_consts *K,
              const uint8_t *s, size_t len, size_t base, uint64_t *err, uint64_t *ss_out)
{
    carries *k = &S->k;
    uint64_t ss = sc & ~shl(sc, &k->c_sc);
    *ss_out = ss;
    uint64_t litstart = ss & m->lit, nr = sc;
    if (litstart | k->a_lit) {
        if (litstart && !literals_ok(s, len, base, litstart))
            return false;
        nr &= add(sc, litstart, &k->a_lit);
    }
    *err |= vbmi2_numbers(v, nr, ss & m->mi, S, K);
    uint64_t dt = m->dt & nr, ee = m->ee & nr, run = nr & ~(dt | ee);
    *err |= add(shl(dt | ee, &k->c_dt), run, &k->a_dt) & dt;
    if (ee | k->c_ee | k->a_e)
        *err |= add(shl(ee, &k->c_ee), run, &k->a_e) & ee;
    return true;
}

/* One block of stage1_vbmi2 (v: its 64 bytes, b: its number; p: where they are in the event,
 * n of them, the rest padding). */
static VBMI2 inline __attribute__((always_inline)) bool
vbmi2_block(vm_ctx *c, const uint8_t *s, size_t len, __m512i v, const uint8_t *p, unsigned n,
            size_t b, vbmi2_state *S, size_t *utf8_resume, const vbmi2_consts *K,
            const uint8_t (*kk)[64])
{
    classes m;
    classify512_strings(v, kk, &m);
    strmasks st;
    /* The block's errors in a local (a block with one ends stage 1): with them in *S, GCC or-ed
     * into memory five times a block.  (Not measurable on its own: stage 1 of the EXACT row
     * 406-424 against 413-427 ns an event, min of 16 alternating runs.) */
    uint64_t err = 0;
    if (!block_strings(p, n, &m, &S->k, s, len, b * 64, utf8_resume, &err, &st))
        return false;
    classify512_outside(v, kk, &m);
    uint64_t out = st.out, br = m.br & out, co = m.co & out, cm = m.cm & out;
    uint64_t sc = out & m.scal;
    err |= out & ~m.ok;
    uint64_t ss = 0;
    if (sc | S->k.c_sc) {
        classify512_numbers(v, kk, &m);
        if (!vbmi2_scalars(v, &m, sc, S, K, s, len, b * 64, &err, &ss))
            return false;
    } else {
        /* No number or literal in the block, none running into it (a run that ends in a block
         * carries nothing into the next, or ends in an error there): only the classes the next
         * block looks back at.  (CityLots EXACT, validating: 8,078 -> 7,899 instructions an
         * event, the strings of `properties` fill the first blocks; stage 1 x1.01, 10k issue193
         * rules x1.01-1.04, harness, 8-10 rounds in random order.) */
        S->ncls = _mm512_setzero_si512();
    }
    err |= vbmi2_tokens(v, br | co | cm | st.closeq | ss, S, K);
    if (err)
        return false;
    return block_outputs(&c->fast, b, co, cm, br, &S->cum);
}

/* Stage 1 with AVX-512 VBMI2: each block's tokens (brackets, ':', ',', the closing quote of a
 * string, the first byte of a scalar) are compressed into a byte stream of their classes; each
 * token and the two before it index a table of what JSON allows (vbmi2_tokens).  About ten
 * instructions replace the masks of stage1_masks, whose carries through whitespace cost most
 * of its time. */
static VBMI2 bool stage1_vbmi2(vm_ctx *c, const char *json, size_t len)
{
    const uint8_t *s = (const uint8_t *)json;
    const vbmi2_consts *K = &vbmi2_k;
    const uint8_t(*kk)[64] = classify_consts;
    __asm__("" : "+r"(K), "+r"(kk));   /* (read from memory, not rebuilt in every block) */
    /* (zeroed by six vector stores: memset was a `rep stos` of 48 words, which starts slowly;
     * the zero is hidden from GCC, which would make the stores a memset again) */
    vbmi2_state S;
    _Static_assert(sizeof S % 64 == 0, "vbmi2_state is zeroed 64 bytes at a time");
    __m512i zero = _mm512_setzero_si512();
    __asm__("" : "+v"(zero));
    for (size_t i = 0; i < sizeof S / 64; i++)
        _mm512_store_si512((void *)((char *)&S + 64 * i), zero);
    S.hist = _mm512_set1_epi8(T_CM);   /* the stream starts as after a ',' */
    size_t utf8_resume = 0, full = len / 64, b = 0;
    for (; b < full; b++) {
        __m512i v = _mm512_loadu_si512((const void *)(s + b * 64));
        if (!vbmi2_block(c, s, len, v, s + b * 64, 64, b, &S, &utf8_resume, K, kk))
            return false;
    }
    if (len % 64) {
        /* The last bytes and spaces after them (whitespace, which every rule lets pass), by a
         * masked load: the bytes past the event are not read.  (It was copied into a buffer
         * of spaces, a memset and a memcpy an event, and the block read back from it; no
         * difference measured, -2 to -4 ns an event, within the noise.) */
        __m512i v = _mm512_mask_loadu_epi8(_mm512_load_si512((const void *)kk[K_SP]),
                                           _bzhi_u64(~0ull, (unsigned)(len % 64)), s + b * 64);
        if (!vbmi2_block(c, s, len, v, s + b * 64, (unsigned)(len % 64), b, &S, &utf8_resume, K,
                         kk))
            return false;
    }
    if (S.k.in || S.k.odd_bs)
        return false;
    return vm_fast_brackets(c, json, len);
}
#endif

/* Which stage 1 to run: 0 the widest this CPU has, 1 masks with AVX2, 2 masks with portable
 * classification (the last two for tests that compare them). */
int vm_fast_stage1_kind(void)
{
    static int kind = -1;
    if (kind < 0) {
        kind = 2;
#ifdef EBR_X86
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi2") &&
            __builtin_cpu_supports("avx512vbmi"))
            kind = 0;
        else if (__builtin_cpu_supports("avx2"))
            kind = 1;
#endif
    }
    return kind;
}

bool vm_fast_stage1_with(vm_ctx *c, const char *json, size_t len, int kind)
{
    c->fast.nbr = 0;
    switch (kind) {
#ifdef EBR_X86
    case 0: return stage1_vbmi2(c, json, len);
    case 1: return stage1_avx2(c, json, len);
#endif
    default: return stage1_portable(c, json, len);
    }
}

bool vm_fast_stage1(vm_ctx *c, const char *json, size_t len)
{
    return vm_fast_stage1_with(c, json, len, vm_fast_stage1_kind());
}

/* ---- buffers ---------------------------------------------------------------------------------- */

struct vm_fast_frame {
    uint32_t open;              /* index of the opening bracket */
    uint64_t inner;             /* ':' and ',' inside the finished children (as br_cnt) */
};

bool vm_fast_grow_brackets(vm_fast *F)
{
    uint32_t cap = F->br_cap ? F->br_cap * 2 : 256;
    void *p = realloc(F->br_pos, cap * sizeof *F->br_pos);
    if (p)
        F->br_pos = p;
    void *m = realloc(F->br_match, cap * sizeof *F->br_match);
    if (m)
        F->br_match = m;
    void *cnt = realloc(F->br_cnt, cap * sizeof *F->br_cnt);
    if (cnt)
        F->br_cnt = cnt;
    if (!p || !m || !cnt)
        return false;
    F->br_cap = cap;
    return true;
}

void vm_fast_free(vm_fast *F)
{
    free(F->br_pos);
    free(F->br_match);
    free(F->br_cnt);
    free(F->stack);
}

/* Is ch JSON whitespace? */
static inline bool is_ws(char ch)
{
    return ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t';
}

/* Is the container between brackets io and ic (indexes into pos) empty, whitespace inside?
 * (Out of line: in the bracket walk's loop, its values had GCC spill others.) */
static __attribute__((noinline)) bool container_empty(const char *json, const uint32_t *pos,
                                                      uint32_t io, uint32_t ic)
{
    uint32_t k = pos[io] + 1;
    while (is_ws(json[k]))
        k++;
    return k == pos[ic];
}

/* Are the ':' and ',' a container holds at its own level right for its kind?  An object has one
 * ':' more than ',', or none of either when it is empty; an array has no ':'.  own: the counts
 * (as br_cnt); ch: the closing bracket; io, ic: the brackets' indexes. */
static inline __attribute__((always_inline)) bool container_ok(const char *json,
                                                               const uint32_t *pos, uint32_t io,
                                                               uint32_t ic, uint8_t ch,
                                                               uint64_t own)
{
    uint32_t lco = (uint32_t)(own >> 32), lcm = (uint32_t)own;
    if (ch != '}')
        return lco == 0;
    if (lco == lcm + 1)
        return true;
    /* no ':': only an empty object is valid */
    return lco == 0 && lcm == 0 && container_empty(json, pos, io, ic);
}

/* The bracket walk: matches brackets (kind and nesting), counts the ':' and ',' each container
 * holds at its own level (an object: one ':' more than ','; or none of either when empty; an
 * array: no ':'), and checks that the event is one object and nothing else: its first bracket
 * is its first byte but whitespace, and its last bracket its last.  Fills br_match.
 *
 * (Stage 1 found the first and last significant bytes from each block's masks, a branch and
 * a store a block; the event's ends, found here byte by byte, are mostly its first and last
 * bytes.  Every byte stage 1 passes outside whitespace is a token or in a string; the first
 * and the last are outside strings or are quotes.)
 *
 * The open container is kept in locals and only its parents go on the stack, so a child's
 * counts reach the parent without a store and a load; '{' and '[' have bit 1 set, '}' and ']'
 * do not, and a bracket closes one of its kind if the two differ by 6 ('{' ^ '}', '[' ^ ']').
 * The walk was ~70 ns of the EXACT row's stage 1 an event; this saved ~10 of them (two runs of
 * 320 passes over 5,000 events, alternating: 438 against 450 and 474 against 478 ns). */
HOT bool vm_fast_brackets(vm_ctx *c, const char *json, size_t len)
{
    vm_fast *F = &c->fast;
    size_t first_sig = 0, last_sig = len;
    while (first_sig < len && is_ws(json[first_sig]))
        first_sig++;
    if (first_sig == len)
        return false;   /* nothing at all */
    while (is_ws(json[last_sig - 1]))
        last_sig--;
    last_sig--;
    if (F->nbr < 2 || F->br_pos[0] != first_sig || json[first_sig] != '{' ||
        F->br_pos[F->nbr - 1] != last_sig)
        return false;
    if (F->stack_cap < c->max_depth + 1) {
        void *s = realloc(F->stack, (c->max_depth + 1) * sizeof *F->stack);
        if (!s)
            return false;
        F->stack = s;
        F->stack_cap = (uint32_t)c->max_depth + 1;
    }
    uint32_t nbr = F->nbr;
    if (json[last_sig] != '}')
        return false;
    /* A sentinel past the last bracket: the event's '}' again.  The loop reaches it only when
     * a container is left open (the event's '}' closed one inside the event's object); it is a
     * closing bracket, so nothing past it is read, and closing at index nbr always fails: the
     * loop needs no bound check of its own. */
    if (F->br_cap <= nbr && !vm_fast_grow_brackets(F))
        return false;
    F->br_pos[nbr] = F->br_pos[nbr - 1];
    F->br_cnt[nbr] = F->br_cnt[nbr - 1];
    const uint32_t *pos = F->br_pos;
    const uint64_t *cnt = F->br_cnt;
    uint32_t *match = F->br_match;
    /* The event's object with no container inside: its '}' is bracket 1, and the last. */
    if (!(json[pos[1]] & 2)) {
        match[0] = 1;
        return nbr == 2 && container_ok(json, pos, 0, 1, '}', cnt[1] - cnt[0]);
    }
    size_t max_depth = c->max_depth;
    if (max_depth < 2)
        return false;   /* too deep: the byte-by-byte scan reports it */
    /* The open container in cur, its parents on the stack (the event's object has none).
     * Fewer values live in the loop than with a depth, a frame below the event's and the
     * opening bracket in the frame, and no check of the depth at each opening bracket nor of
     * the end at each: GCC spilled five of them.  With the empty object's check out of line
     * and the usual object's test first: the walk with its checks 931 -> 602 instructions an
     * event, PREFIX validating 7,285 -> 6,955 (the tables and the stack's end in locals, since
     * a store of a match or a frame might otherwise change them for all GCC knows; the stack
     * has room for max_depth + 1 frames, of which this uses max_depth - 2 at most). */
    struct vm_fast_frame *stack = F->stack, *sp = stack, *full = stack + (max_depth - 2);
    struct vm_fast_frame cur = { 0, 0 };
    for (uint32_t i = 1;; i++) {
        uint8_t ch = (uint8_t)json[pos[i]];
        if (ch & 2) {
            /* (an opening bracket is never the last, which closes the event) */
            uint8_t next = (uint8_t)json[pos[i + 1]];
            if ((next ^ ch) == 6) {
                /* A container with none inside (most are, in CityLots the 14 or so points of
                 * a polygon): matched and counted without going on the stack.  Stage 1 alone,
                 * EXACT row: ~14 ns an event less (min of 500 alternating passes over 5,000
                 * events, both orders: -17 and -11). */
                uint64_t own = cnt[i + 1] - cnt[i];
                if (!container_ok(json, pos, i, i + 1, next, own))
                    return false;
                match[i] = i + 1;
                i++;
                cur.inner += own;
                continue;
            }
            /* A container with another inside: it opens at depth (sp - stack) + 2 (the parents
             * on the stack, cur, itself) and its child one deeper, within max_depth only while
             * sp < full (a container with none inside needs no check of its own: its parent's
             * made room for it). */
            if (sp == full)
                return false;   /* too deep: the byte-by-byte scan reports it */
            *sp++ = cur;
            cur = (struct vm_fast_frame){ i, 0 };
            continue;
        }
        if ((ch ^ (uint8_t)json[pos[cur.open]]) != 6)
            return false;   /* (the opening bracket read again: one value fewer in the loop) */
        /* (both halves at once: neither count decreases, so no borrow crosses) */
        uint64_t in = cnt[i] - cnt[cur.open], own = in - cur.inner;
        if (!container_ok(json, pos, cur.open, i, ch, own))
            return false;
        match[cur.open] = i;   /* (read for opening brackets only) */
        if (sp == stack)
            return i + 1 == nbr;   /* the event's object: nothing may follow it */
        if (i + 1 >= nbr)
            return false;          /* a container left open (the last bracket or the sentinel) */
        cur = *--sp;
        cur.inner += in;
    }
}

/* ---- the trusted skip --------------------------------------------------------------------------- */

/* The bytes of a block the skip looks at: quotes, backslashes, opening and closing brackets. */
typedef struct { uint64_t q, bs, open, close; } skip_classes;

#ifdef EBR_X86
__attribute__((target("avx2"))) static inline __attribute__((always_inline))
void skip_classify_avx2(const uint8_t *p, skip_classes *k)
{
    __m256i lo = _mm256_loadu_si256((const __m256i *)p);
    __m256i hi = _mm256_loadu_si256((const __m256i *)(p + 32));
#define M(x) ((uint64_t)(uint32_t)_mm256_movemask_epi8(x))
#define BOTH_EQ(ch) (M(_mm256_cmpeq_epi8(lo, _mm256_set1_epi8((char)(ch)))) | \
                     M(_mm256_cmpeq_epi8(hi, _mm256_set1_epi8((char)(ch)))) << 32)
    k->q = BOTH_EQ('"');
    k->bs = BOTH_EQ('\\');
    /* '{' is 0x7b and '[' 0x5b, '}' 0x7d and ']' 0x5d: they differ only in bit 5. */
    __m256i l5 = _mm256_andnot_si256(_mm256_set1_epi8(0x20), lo);
    __m256i h5 = _mm256_andnot_si256(_mm256_set1_epi8(0x20), hi);
    k->open = M(_mm256_cmpeq_epi8(l5, _mm256_set1_epi8(0x5b))) |
              M(_mm256_cmpeq_epi8(h5, _mm256_set1_epi8(0x5b))) << 32;
    k->close = M(_mm256_cmpeq_epi8(l5, _mm256_set1_epi8(0x5d))) |
               M(_mm256_cmpeq_epi8(h5, _mm256_set1_epi8(0x5d))) << 32;
#undef M
#undef BOTH_EQ
}
#endif

#ifdef EBR_X86
/* The same with one 64-byte register: a mask per compare, nothing to gather (4 compares a block
 * instead of 8 compares and 8 movemasks; valgrind has no AVX-512, and its gain was not measured
 * apart from the other changes of its commit). */
__attribute__((target("avx512f,avx512bw"))) static inline __attribute__((always_inline))
void skip_classify_avx512(const uint8_t *p, skip_classes *k)
{
    __m512i v = _mm512_loadu_si512((const void *)p);
    __m512i v5 = _mm512_andnot_si512(_mm512_set1_epi8(0x20), v);
    k->q = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8('"'));
    k->bs = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8('\\'));
    k->open = _mm512_cmpeq_epi8_mask(v5, _mm512_set1_epi8(0x5b));
    k->close = _mm512_cmpeq_epi8_mask(v5, _mm512_set1_epi8(0x5d));
}
#endif

static void skip_classify_scalar(const uint8_t *p, skip_classes *k)
{
    memset(k, 0, sizeof *k);
    for (int i = 0; i < 64; i++) {
        uint8_t ch = p[i];
        uint64_t b = 1ull << i;
        k->q |= ch == '"' ? b : 0;
        k->bs |= ch == '\\' ? b : 0;
        k->open |= (ch == '{' || ch == '[') ? b : 0;
        k->close |= (ch == '}' || ch == ']') ? b : 0;
    }
}

typedef void (*skip_classify_fn)(const uint8_t *, skip_classes *);
typedef uint64_t (*prefix_fn)(uint64_t);

#ifdef EBR_X86
/* prefix_xor in one carry-less multiplication by all ones (the trusted EXACT row, whose skip
 * crosses ~14 blocks an event: 5,441 -> 5,285 instructions an event, callgrind). */
__attribute__((target("pclmul,sse2"))) static inline __attribute__((always_inline))
uint64_t prefix_xor_clmul(uint64_t x)
{
    __m128i v = _mm_clmulepi64_si128(_mm_set_epi64x(0, (long long)x), _mm_set1_epi8((char)0xFF), 0);
    return (uint64_t)_mm_cvtsi128_si64(v);
}
#endif

static uint64_t prefix_xor_plain(uint64_t x)
{
    return prefix_xor(x);
}

/* The skip with one classification: blocks start at `from`, not at multiples of 64. */
AI vm_skip_status skip_with(const char *json, size_t len, size_t from, size_t room,
                                    size_t *end, skip_classify_fn classify, prefix_fn prefix)
{
    const uint8_t *s = (const uint8_t *)json;
    uint64_t odd = 0, in = 0;
    size_t depth = 1;
    uint8_t tail[64];
    for (size_t base = from; base < len; base += 64) {
        const uint8_t *p = s + base;
        if (len - base < 64) {
            memset(tail, ' ', sizeof tail);
            memcpy(tail, p, len - base);
            p = tail;
        }
        skip_classes m;
        classify(p, &m);
        uint64_t q = m.q & ~escaped_bytes(p, 64, m.bs, &odd);
        uint64_t inside = prefix(q) ^ in;
        in = (uint64_t)((int64_t)inside >> 63);
        uint64_t open = m.open & ~inside, close = m.close & ~inside;
        size_t nopen = (size_t)__builtin_popcountll(open), nclose = (size_t)__builtin_popcountll(close);
        if (nclose < depth && depth + nopen <= room) {
            /* Neither the end of the container nor a level too deep can lie in this block. */
            depth += nopen - nclose;
            continue;
        }
        for (uint64_t br = open | close; br; br &= br - 1) {
            uint64_t bit = br & -br;
            if (open & bit) {
                if (++depth > room)
                    return VM_SKIP_DEEP;
            } else if (--depth == 0) {
                *end = base + (size_t)__builtin_ctzll(bit) + 1;
                return *end <= len ? VM_SKIP_OK : VM_SKIP_BAD;
            }
        }
    }
    return VM_SKIP_BAD;
}

#ifdef EBR_X86
/* (its own function, so that the classification is inlined with AVX2 enabled) */
static __attribute__((target("avx2,pclmul,popcnt,bmi,bmi2,lzcnt"))) vm_skip_status
skip_avx2(const char *json, size_t len, size_t from, size_t room, size_t *end)
{
    return skip_with(json, len, from, room, end, skip_classify_avx2, prefix_xor_clmul);
}

static __attribute__((target("avx512f,avx512bw,avx2,pclmul,popcnt,bmi,bmi2,lzcnt"))) vm_skip_status
skip_avx512(const char *json, size_t len, size_t from, size_t room, size_t *end)
{
    return skip_with(json, len, from, room, end, skip_classify_avx512, prefix_xor_clmul);
}
#endif

vm_skip_status vm_fast_skip(const char *json, size_t len, size_t from, size_t room, size_t *end)
{
#ifdef EBR_X86
    static int clmul = -1;
    if (clmul < 0) {
        __builtin_cpu_init();
        clmul = __builtin_cpu_supports("pclmul") != 0;
    }
    if (clmul && vm_fast_stage1_kind() == 0)
        return skip_avx512(json, len, from, room, end);
    if (clmul && vm_fast_available())
        return skip_avx2(json, len, from, room, end);
#endif
    return skip_with(json, len, from, room, end, skip_classify_scalar, prefix_xor_plain);
}

vm_skip_status vm_fast_skip_portable(const char *json, size_t len, size_t from, size_t room,
                                     size_t *end)
{
    return skip_with(json, len, from, room, end, skip_classify_scalar, prefix_xor_plain);
}
