/*
 * compiler.h — the compiler's public door: .ebr source in, a checked vm_program out.
 *
 * Diagnostics are printed in one format everywhere:
 *
 *     rules.ebr:12:9: error: unknown target 'biling'
 *         to biling, audit
 *            ^^^^^^
 *
 * Every error of every file is reported in one run; on any error no program is returned.
 */
#ifndef EBR_COMPILER_H
#define EBR_COMPILER_H

#include <stdio.h>

#include "../vm/vm.h"

typedef struct cc_comp cc_comp;

typedef struct {
    int nerrors;
    int nwarnings;
} cc_result;

/* Compiles the file at path and the files it imports.  Diagnostics go to `diag` (NULL: nowhere).
 * Returns a prepared program, or NULL when there were errors (res says how many). */
vm_program *cc_compile_file(const char *path, FILE *diag, cc_result *res);

/* cc_compile_file with flags (CC_...). */
vm_program *cc_compile_file_flags(const char *path, unsigned flags, FILE *diag, cc_result *res);

/* The same for source text held in memory; `name` is used in messages and imports are resolved
 * relative to the current directory. */
vm_program *cc_compile_text(const char *name, const char *text, size_t len, FILE *diag,
                            cc_result *res);

/* Flags of cc_compile_text_flags. */
enum {
    /* read no file of the machine: an import other than "stdlib/NAME" is an error, and a bus's
     * `schema "T" file "PATH"` option is checked for its shape only (the file is not read).
     * For text from an untrusted source (ebd's dry run, docs/replay.md). */
    CC_NO_FILES = 1u,
    /* the program is only to be written out (vm_program_save), not run: it comes without the
     * tables vm_program_prepare derives for matching.  `ebc compile` of 100,000 issue193 rules
     * spent ~6% of its time building them. */
    CC_UNPREPARED = 2u,
};

/* cc_compile_text with flags (CC_...). */
vm_program *cc_compile_text_flags(const char *name, const char *text, size_t len, unsigned flags,
                                  FILE *diag, cc_result *res);

/* ---- `ebc test`: one event through the rules, printed (docs/ebc.md) ---------------------------- */

/* Runs a function transform (exec or http) for the event; on success sets *payload (malloc'd)
 * and returns true; on failure writes a message to err. */
typedef bool (*cc_function_runner)(void *arg, const vm_program *p, const vm_xform *x,
                                   const char *event, size_t len, char **payload, size_t *plen,
                                   bool *text, char *err, size_t errcap);

typedef struct {
    bool json;                  /* one JSON object per event, not the text lines */
    const vm_xform_env *env;    /* what transforms read besides the event */
    cc_function_runner run_function;   /* NULL: function transforms are reported as not run */
    void *arg;
    bool explain;               /* for each rule that did not match: the condition that failed */
} cc_test_options;

/* Matches event[0..len) (line `lineno` of its file) against the rules of bus `bus` (VM_NONE:
 * all) and prints the matched rules, then for each matched rule and each of its targets the
 * payload its transform makes.  Returns vm_match's status, or VM_ERR_TRANSFORM when the event
 * matched but some transform failed for it. */
vm_status cc_test_event(FILE *out, vm_ctx *c, uint32_t bus, unsigned long lineno,
                        const char *event, size_t len, const cc_test_options *opt);

/* Writes s as a JSON string (quotes and escapes). */
void cc_json_string(FILE *out, const char *s, size_t n);

#endif
