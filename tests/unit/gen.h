/*
 * gen.h — what the generating tests share (test_differential.c, test_scan_fast.c): a seeded
 * xorshift generator, and a text buffer that printf appends to.
 */
#ifndef EBR_TEST_GEN_H
#define EBR_TEST_GEN_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

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

#endif
