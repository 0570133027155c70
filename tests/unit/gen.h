/*
 * gen.h — what the generating tests share (test_differential.c, test_scan_fast.c,
 * test_trusted.c): a seeded xorshift generator, a text buffer that printf appends to, and a
 * mutator of JSON texts.
 */
#ifndef EBR_TEST_GEN_H
#define EBR_TEST_GEN_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A number in [0, n) from the xorshift state *rng. */
static inline uint32_t gen_rnd(uint64_t *rng, uint32_t n)
{
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    return (uint32_t)((*rng >> 33) % n);
}

typedef struct {
    char *s;
    size_t n, cap;
} buf;

static inline void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void put(buf *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if ((size_t)k < b->cap - b->n) {
            b->n += (size_t)k;
            return;
        }
        b->cap = (b->cap + (size_t)k + 16) * 2;
        b->s = realloc(b->s, b->cap);
    }
}

/* Flips, inserts or deletes a few bytes of s[0..n) (room for 3 more), or cuts its end; with
 * nul, an edit may also write a NUL byte.  Returns the new length. */
static inline size_t gen_mutate(uint64_t *rng, char *s, size_t n, int nul)
{
    static const char bytes[] = "{}[]:,\"\\ 0123456789-+.eEtfnu\x01\x80\xc3\xff";
    int edits = 1 + (int)gen_rnd(rng, 3);
    for (int e = 0; e < edits && n > 0; e++) {
        size_t at = gen_rnd(rng, (uint32_t)n);
        uint32_t kind = gen_rnd(rng, nul ? 5 : 4);
        if (kind == 0) {
            s[at] = bytes[gen_rnd(rng, sizeof bytes - 1)];
        } else if (kind == 1) {
            memmove(s + at + 1, s + at, n - at);
            s[at] = bytes[gen_rnd(rng, sizeof bytes - 1)];
            n++;
        } else if (kind == 2) {
            memmove(s + at, s + at + 1, n - at - 1);
            n--;
        } else if (kind == 3 && nul) {
            s[at] = 0;
        } else {
            n = at + 1;
        }
    }
    return n;
}

#endif
