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

/* The same for source text held in memory; `name` is used in messages and imports are resolved
 * relative to the current directory. */
vm_program *cc_compile_text(const char *name, const char *text, size_t len, FILE *diag,
                            cc_result *res);

#endif
