/*
 * utf8.c — strict UTF-8 decoding and encoding, and case folding of UTF-8 text.
 */
#include <string.h>

#include "vm_int.h"

/* Decodes one code point from s[0..n) into *cp.  Returns its length (1..4), or 0 when the bytes
 * are not well-formed UTF-8: a stray continuation byte, a truncated sequence, an overlong form,
 * a surrogate (D800-DFFF) or a value above U+10FFFF.  Assumes n > 0 or returns 0. */
size_t vm_utf8_decode(const char *s, size_t n, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (n == 0)
        return 0;
    if (u[0] < 0x80) {
        *cp = u[0];
        return 1;
    }
    size_t len;
    uint32_t c, min;
    if (u[0] >= 0xC2 && u[0] <= 0xDF) {
        len = 2, c = u[0] & 0x1Fu, min = 0x80;
    } else if (u[0] >= 0xE0 && u[0] <= 0xEF) {
        len = 3, c = u[0] & 0x0Fu, min = 0x800;
    } else if (u[0] >= 0xF0 && u[0] <= 0xF4) {
        len = 4, c = u[0] & 0x07u, min = 0x10000;
    } else {
        return 0;   /* continuation byte, C0/C1 (always overlong) or F5..FF */
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((u[i] & 0xC0u) != 0x80u)
            return 0;
        c = (c << 6) | (u[i] & 0x3Fu);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return len;
}

/* Encodes cp as UTF-8 into out.  Returns the length (1..4), or 0 when cp is a surrogate or
 * above U+10FFFF (nothing written). */
size_t vm_utf8_encode(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp >= 0xD800 && cp <= 0xDFFF)
        return 0;
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    if (cp > 0x10FFFF)
        return 0;
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Folds the ASCII bytes of a word at once: 0x20 added to each of 'A'..'Z' (each byte below 0x80,
 * so the additions that find them carry out of none). */
static inline uint64_t fold_ascii_word(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ull;
    uint64_t from_a = w + (0x80 - 'A') * ones, past_z = w + (0x80 - 'Z' - 1) * ones;
    return w | ((from_a & ~past_z & 0x80 * ones) >> 2);
}

/* fold_short_ascii's words: the first and the last w bytes of s[0..n), w <= n. */
static inline __attribute__((always_inline)) bool fold_ends(const char *s, size_t n, char *out,
                                                            size_t w)
{
    uint64_t a = 0, b = 0;
    memcpy(&a, s, w);
    memcpy(&b, s + n - w, w);
    if ((a | b) & 0x8080808080808080ull)
        return false;
    a = fold_ascii_word(a);
    b = fold_ascii_word(b);
    memcpy(out, &a, w);
    memcpy(out + n - w, &b, w);
    return true;
}

/* The full case folding of s[0..n), 1 <= n <= 16, when it is ASCII: by two overlapping words
 * (8 bytes from each end, or 4), or three bytes (first, middle, last) below 4, each written
 * where it was read, the overlap twice with the same bytes.  False when some byte is not
 * ASCII (nothing useful is written then).  A string of any length below 17 takes two
 * branches on its length, where the loops below take one a word and one a byte, which the
 * lengths of an event's strings mispredict: about the same instructions (CityLots
 * EQUALS_IGNORE_CASE, trusted: 3,891 -> 3,877 an event), ~1% less time (in-process A/B,
 * 300 alternating passes, x1.007-1.015; SUFFIX_EQUALS_IGNORE_CASE x1.00-1.02). */
static inline bool fold_short_ascii(const char *s, size_t n, char *out)
{
    /* (w a constant in each call: the copies of w bytes are single loads and stores; chosen at
     * run time they cost ~16 instructions a text more) */
    if (n >= 8)
        return fold_ends(s, n, out, 8);
    if (n >= 4)
        return fold_ends(s, n, out, 4);
    unsigned char x = (unsigned char)s[0], y = (unsigned char)s[n / 2],
                  z = (unsigned char)s[n - 1];
    if ((x | y | z) & 0x80)
        return false;
    out[0] = (char)vm_fold_ascii(x);
    out[n / 2] = (char)vm_fold_ascii(y);
    out[n - 1] = (char)vm_fold_ascii(z);
    return true;
}

/* Writes the full case folding of UTF-8 text s[0..n) to out (room for 3*n bytes: the longest
 * expansion, U+0390 to three 2-byte code points, triples its bytes).  Bytes that are not
 * well-formed UTF-8 are copied unchanged.  Returns the number of bytes written. */
size_t vm_casefold_utf8(const char *s, size_t n, char *out)
{
    if (n - 1 < 16 && fold_short_ascii(s, n, out))
        return n;
    size_t i = 0, o;
    /* ASCII, 8 bytes and then 4 at a time, until a byte that is not.  (The values that rules fold
     * are mostly short ASCII words: on the CityLots EQUALS_IGNORE_CASE row, byte by byte, this
     * took ~170 instructions an event; now ~125, the validating match 9,019 -> 8,975,
     * bench_icount.) */
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080ull)
            break;
        w = fold_ascii_word(w);
        memcpy(out + i, &w, 8);
    }
    if (i + 4 <= n) {
        uint32_t w;
        memcpy(&w, s + i, 4);
        if (!(w & 0x80808080u)) {
            w = (uint32_t)fold_ascii_word(w);
            memcpy(out + i, &w, 4);
            i += 4;
        }
    }
    o = i;
    while (i < n) {
        unsigned char b = (unsigned char)s[i];
        if (b < 0x80) {   /* ASCII folds to ASCII */
            out[o++] = (char)vm_fold_ascii(b);
            i++;
            continue;
        }
        uint32_t cp;
        size_t len = vm_utf8_decode(s + i, n - i, &cp);
        if (len == 0) {
            out[o++] = s[i++];
            continue;
        }
        uint32_t folded[3];
        size_t k = vm_casefold_full(cp, folded);
        for (size_t j = 0; j < k; j++)
            o += vm_utf8_encode(folded[j], out + o);
        i += len;
    }
    return o;
}
