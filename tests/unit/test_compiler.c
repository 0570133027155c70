/*
 * test_compiler.c — the compiler's API: imports across files, results, diagnostics streams.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../compiler/compiler.h"

static char dir[256];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/ebr-test-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

static void put(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

/* Compiles dir/name; returns the program and the diagnostics text. */
static vm_program *build(const char *name, char **diag, cc_result *res)
{
    char path[512];
    size_t len;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *d = open_memstream(diag, &len);
    vm_program *p = cc_compile_file(path, d, res);
    fclose(d);
    return p;
}

TestSuite(compiler, .init = setup, .fini = teardown);

Test(compiler, imports_join_the_compilation)
{
    char sub[512];
    snprintf(sub, sizeof sub, "%s/shared", dir);
    cr_assert_eq(mkdir(sub, 0700), 0);
    put("shared/targets.ebr", "target audit file \"audit.jsonl\"\nbus b\n");
    put("main.ebr", "import \"shared/targets\"\nrule r on b { match exists id to audit }\n");
    char *diag;
    cc_result res;
    vm_program *p = build("main.ebr", &diag, &res);
    cr_assert_not_null(p, "%s", diag);
    cr_expect_eq(p->ntargets, 1);
    cr_expect_eq(p->nsrcs, 2);
    vm_program_free(p);
    free(diag);
}

Test(compiler, import_cycles_read_each_file_once)
{
    put("a.ebr", "import \"b.ebr\"\nbus a\n");
    put("b.ebr", "import \"a.ebr\"\nrule r on a { match exists id }\n");
    char *diag;
    cc_result res;
    vm_program *p = build("a.ebr", &diag, &res);
    cr_assert_not_null(p, "%s", diag);
    cr_expect_eq(p->nbuses, 1);
    cr_expect_eq(p->nrules, 1);
    vm_program_free(p);
    free(diag);
}

Test(compiler, errors_in_imported_files_name_that_file)
{
    put("sub.ebr", "bus b\nrule dup on b { match exists id }\n");
    put("main.ebr", "import \"sub\"\nimport \"nowhere.ebr\"\nrule dup on b { match exists id }\n");
    char *diag;
    cc_result res;
    vm_program *p = build("main.ebr", &diag, &res);
    cr_assert_null(p);
    cr_expect_eq(res.nerrors, 2);
    cr_expect(strstr(diag, "main.ebr:2:8: error: cannot import 'nowhere.ebr': No such file or directory"), "%s", diag);
    /* main.ebr's declarations come first: the one in the imported file is the duplicate. */
    cr_expect(strstr(diag, "sub.ebr:2:6: error: duplicate rule 'dup' (first declared in "), "%s", diag);
    free(diag);
}

Test(compiler, warnings_do_not_stop_compilation)
{
    put("w.ebr", "bus b\nrule r on b { pattern {\"a\": [1], \"a\": [2]} }\n");
    char *diag;
    cc_result res;
    vm_program *p = build("w.ebr", &diag, &res);
    cr_assert_not_null(p);
    cr_expect_eq(res.nerrors, 0);
    cr_expect_eq(res.nwarnings, 1);
    cr_expect(strstr(diag, "warning: duplicate key \"a\""), "%s", diag);
    vm_program_free(p);
    free(diag);
}

Test(compiler, an_unreadable_file_is_an_error)
{
    char *diag;
    cc_result res;
    vm_program *p = build("missing.ebr", &diag, &res);
    cr_assert_null(p);
    cr_expect_eq(res.nerrors, 1);
    cr_expect(strstr(diag, "missing.ebr: error: cannot read: No such file or directory"), "%s", diag);
    free(diag);
}

Test(compiler, nul_bytes_and_binary_garbage_are_errors_not_crashes)
{
    const char src[] = "bus b\nrule r on b { match source == \"a\" }\0\xff\xfe rule";
    cc_result res;
    char *diag;
    size_t len;
    FILE *d = open_memstream(&diag, &len);
    vm_program *p = cc_compile_text("bin.ebr", src, sizeof src - 1, d, &res);
    fclose(d);
    cr_expect_null(p);
    cr_expect(strstr(diag, "bin.ebr:2:36: error: unexpected byte 0x00"), "%s", diag);
    free(diag);
}
