/*
 * regex.h — the I-Regexp (RFC 9485) compiler.
 *
 * A pattern compiles to a Thompson NFA over code points (vm_re_inst, see vm/vm.h) that
 * vm_regex_match() runs in linear time.  The match is implicitly anchored to the whole string.
 * Character classes become sorted, merged range lists (negation is done here, at compile time).
 */
#ifndef EBR_REGEX_H
#define EBR_REGEX_H

#include <stdbool.h>
#include <stddef.h>

#include "../vm/vm.h"

/* Limits: a pattern that would exceed them is refused with an error, not truncated. */
#define RE_MAX_INSTS   100000u  /* instructions of one regex, after expanding {n,m} */
#define RE_MAX_RANGES  100000u  /* ranges one regex appends */
#define RE_MAX_REPEAT  100000u  /* the largest n or m in {n,m} */
#define RE_MAX_DEPTH   256u     /* nested parentheses (the parser recurses) */

/* Growing arrays that compiled regexes are appended to (the program's re_insts / re_ranges).
 * Start from all zeroes; release with re_buf_free. */
typedef struct {
    vm_re_inst *inst;
    size_t ninst, icap;
    vm_range *ranges;
    size_t nranges, rcap;
} re_buf;

/* Why a pattern was refused.  msg ends with " at <pos>"; pos is a byte offset in the pattern. */
typedef struct {
    char msg[160];
    size_t pos;
} re_error;

/* Compiles pattern pat[0..len) (UTF-8) with escape character esc: '\\' for the .ebr
 * `matches /.../` form, '~' for Quamina's {"regexp": "..."} form (then a backslash is an ordinary
 * character, and in the '\\' form a tilde is).  Appends the instructions and ranges to b and
 * fills *out: inst0 is the index of its first instruction in b->inst, and jump targets are
 * relative to it; a CLASS instruction's x indexes b->ranges directly.  Returns 0, or -1 with err
 * filled (and b's counts unchanged: nothing appended). */
int re_compile(re_buf *b, const char *pat, size_t len, char esc, vm_regex *out, re_error *err);

/* Frees b's arrays and zeroes it. */
void re_buf_free(re_buf *b);

/* Looks up an I-Regexp general category by name ("L", "Nd", ... "Cn").  Returns true and points
 * *ranges / *n at its sorted, merged code point ranges (never surrogates); false for an unknown
 * name.  Generated into compiler/unicode_cat.c by tools/gen_unicode.pl. */
bool uc_category(const char *name, size_t len, const vm_range **ranges, size_t *n);

#endif
