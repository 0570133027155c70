/*
 * test_ebcfile.c — the .ebc format: a round trip keeps every table, a damaged file (any byte
 * flipped, any length cut off) is refused rather than loaded, and a damaged file is still told
 * apart from rules source (vm_file_is_ebc); a saved file is the serialised image, and a save
 * that fails leaves no file and an existing one as it was (vm_program_save).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "../../compiler/compiler.h"

/* A ruleset that fills every table: regexes, CIDRs, ranges, options, targets, dead letters. */
static const char rules[] =
    "bus b { retention 7d; fsync interval 10ms; token env(\"T\") }\n"
    "bus c\n"
    "target t http \"https://x.example/h\" { header \"A\" = \"b\"; retry exponential(attempts: 3) }\n"
    "target d file \"dlq.jsonl\"\n"
    "target e bus c\n"
    "server { listen \"127.0.0.1:1\" }\n"
    "rule r on b {\n"
    "  match data.s matches /a+b/ and data.ip in cidr \"10.0.0.0/8\" and data.n > 5\n"
    "    and data.n <= 50\n"
    "    and (data.x == \"y\" or not exists data.z) and data.w like \"a*\"\n"
    "  to t, e dead_letter d\n"
    "}\n"
    "rule q on b { match data.v like \"b*\" }\n"
    "rule p on c { pattern {\"a\": [{\"anything-but\": {\"prefix\": \"x\"}}, {\"regexp\": \"~p{Lu}\"}]} }\n";

static vm_program *compile(void)
{
    cc_result res;
    vm_program *p = cc_compile_text("t.ebr", rules, strlen(rules), stderr, &res);
    cr_assert_not_null(p);
    return p;
}

Test(ebcfile, round_trip_is_exact)
{
    vm_program *p = compile();
    uint8_t *a, *b;
    size_t na, nb;
    vm_error err;
    cr_assert_eq(vm_program_serialize(p, &a, &na), VM_OK);
    vm_program *q = vm_program_parse(a, na, &err);
    cr_assert_not_null(q, "%s", err.msg);
    cr_assert_eq(vm_program_serialize(q, &b, &nb), VM_OK);
    cr_assert_eq(na, nb);
    cr_expect_eq(vm_program_image_size(p), na, "the image's length is known without making it");
    cr_assert(memcmp(a, b, na) == 0, "serialising a loaded program changes the bytes");
    cr_expect_eq(q->nrules, 3);
    cr_expect_eq(q->nbuses, 2);
    cr_expect_eq(q->ntargets, 3);
    cr_expect_eq(q->nserver, 1);
    cr_expect_gt(q->nregexes, 0);
    cr_expect_str_eq(vm_s(q, q->rules[0].name), "r");
    cr_expect_eq(q->rules[0].dead_letter, 1);
    free(a);
    free(b);
    vm_program_free(p);
    vm_program_free(q);
}

Test(ebcfile, every_flipped_byte_is_refused)
{
    vm_program *p = compile();
    uint8_t *a;
    size_t n;
    cr_assert_eq(vm_program_serialize(p, &a, &n), VM_OK);
    vm_program_free(p);
    for (size_t i = 0; i < n; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            a[i] ^= (uint8_t)(1u << bit);
            vm_error err;
            vm_program *q = vm_program_parse(a, n, &err);
            cr_assert_null(q, "flipping bit %d of byte %zu was not noticed", bit, i);
            cr_assert_eq(err.code, VM_ERR_FORMAT);
            a[i] ^= (uint8_t)(1u << bit);
        }
    }
    free(a);
}

Test(ebcfile, every_truncation_is_refused)
{
    vm_program *p = compile();
    uint8_t *a;
    size_t n;
    cr_assert_eq(vm_program_serialize(p, &a, &n), VM_OK);
    vm_program_free(p);
    for (size_t len = 0; len < n; len++) {
        vm_error err;
        vm_program *q = vm_program_parse(a, len, &err);
        cr_assert_null(q, "a file cut to %zu of %zu bytes was loaded", len, n);
        cr_assert(strstr(err.msg, len == 0 ? "bad magic number" : "truncated"),
                  "cut to %zu: %s", len, err.msg);
    }
    free(a);
}

Test(ebcfile, wrong_version_is_refused_by_name)
{
    vm_program *p = compile();
    uint8_t *a;
    size_t n;
    cr_assert_eq(vm_program_serialize(p, &a, &n), VM_OK);
    vm_program_free(p);
    a[8] = VM_EBC_VERSION + 1;   /* a later version (earlier ones are refused alike) */
    vm_error err;
    cr_assert_null(vm_program_parse(a, n, &err));
    char want[64];
    snprintf(want, sizeof want, "version %u is not supported", VM_EBC_VERSION + 1);
    cr_expect(strstr(err.msg, want), "%s", err.msg);
    free(a);
}

/* Writes p (damaged by the caller, checksum and all in order) and expects the reader to refuse
 * it with a message holding `why`. */
static void refused(vm_program *p, const char *why)
{
    uint8_t *a;
    size_t n;
    cr_assert_eq(vm_program_serialize(p, &a, &n), VM_OK);
    vm_program_free(p);
    vm_error err;
    cr_assert_null(vm_program_parse(a, n, &err));
    cr_expect(strstr(err.msg, why), "%s", err.msg);
    free(a);
}

Test(ebcfile, a_file_with_a_valid_checksum_but_bad_indexes_is_refused)
{
    /* Damage an index and fix the checksum up: the verifier, not the CRC, must catch it. */
    vm_program *p = compile();
    p->rules[0].code0 = p->ncode + 10;
    refused(p, "rule's code is malformed");
}

Test(ebcfile, bytecode_that_runs_an_index_band_test_is_refused)
{
    /* A band test (two bounds, each passed by some leaf) belongs to the index; an instruction
     * that runs it as one leaf's test would give another answer, so the file is refused. */
    vm_program *p = compile();
    uint32_t band = VM_NONE;
    for (uint32_t i = 0; i < p->ntests; i++)
        if (p->tests[i].flags & VM_TF_BAND)
            band = i;
    cr_assert_neq(band, VM_NONE, "data.n > 5 and data.n <= 50 made no band");
    uint32_t pc = 0;
    while (VM_OP(p->code[pc]) != VM_OP_TEST)
        pc++;
    p->code[pc] = VM_INST(VM_OP_TEST, VM_A(p->code[pc]), band);
    refused(p, "rule's code is malformed");
}

Test(ebcfile, an_index_that_runs_a_band_test_on_one_leaf_is_refused)
{
    /* Likewise in the index: a band predicate filed among the tests run one by one. */
    vm_program *p = compile();
    const vm_ix_bus *b = &p->ix_buses[0];
    uint32_t band = VM_NONE;
    for (uint32_t i = 0; i < b->npred; i++)
        if (p->tests[p->ix_preds[b->pred0 + i].test].flags & VM_TF_BAND)
            band = i;
    cr_assert_neq(band, VM_NONE);
    bool filed = false;
    for (uint32_t i = 0; i < b->npath && !filed; i++) {
        const vm_ix_path *ip = &p->ix_paths[b->path0 + i];
        if (ip->ngeneric) {
            p->ix_refs[ip->generic0] = band;
            filed = true;
        }
    }
    cr_assert(filed, "the ruleset has no test run one by one");
    refused(p, "an index path is malformed");
}

/* Writes bytes to a new temporary file; returns its path (to free). */
static char *temp_file(const void *bytes, size_t n)
{
    char *path = strdup("/tmp/ebr-ebcfile-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "wb");
    cr_assert_eq(fwrite(bytes, 1, n, f), n);
    fclose(f);
    return path;
}

/* Is bytes[0..n), as a file, taken for an .ebc file? */
static bool is_ebc(const void *bytes, size_t n)
{
    char *path = temp_file(bytes, n);
    bool yes = vm_file_is_ebc(path);
    remove(path);
    free(path);
    return yes;
}

Test(ebcfile, a_damaged_file_is_still_known_by_its_header)
{
    vm_program *p = compile();
    uint8_t *a;
    size_t n;
    cr_assert_eq(vm_program_serialize(p, &a, &n), VM_OK);
    vm_program_free(p);
    cr_expect(is_ebc(a, n), "a sound .ebc file");
    for (size_t len = 1; len <= 8; len++)
        cr_expect(is_ebc(a, len), "cut to %zu bytes, inside the magic number", len);
    a[8] ^= 0x55;
    cr_expect(is_ebc(a, n), "a wrong version");
    memcpy(a + 1, "XYZ", 3);
    cr_expect(is_ebc(a, 8), "three bytes of the magic overwritten, the rest cut off");
    memcpy(a, "rule", 4);
    cr_expect(is_ebc(a, n), "half the magic overwritten: the NUL bytes of the header still tell");
    free(a);
    static const char bin[] = "bus b\0rule";
    cr_expect(is_ebc(bin, sizeof bin - 1), "a binary file is never source");
}

Test(ebcfile, source_is_not_taken_for_a_ruleset)
{
    static const char *const texts[] = { "", "b", "bus b\n", "\xef\xbb\xbf" "bus b\n", "EBC\r\n",
                                         "# \x89" "EBC is a magic number\nbus b\n" };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++)
        cr_expect(!is_ebc(texts[i], strlen(texts[i])), "took '%s' for an .ebc file", texts[i]);
    cr_expect(!vm_file_is_ebc("/nonexistent/rules.ebc"), "a file that cannot be read");
    cr_expect(is_ebc(rules, sizeof rules - 1) == false);
}

/* vm_program_load maps a file, and reads what cannot be mapped (a pipe); either way the
 * program and every refusal are those of vm_program_parse on the same bytes. */
Test(ebcfile, a_file_and_a_pipe_load_alike)
{
    vm_program *p = compile();
    uint8_t *a, *b;
    size_t n, nb;
    vm_error err;
    cr_assert_eq(vm_program_serialize(p, &a, &n), VM_OK);
    vm_program_free(p);
    cr_assert_lt(n, 65536, "the pipe below holds the whole file");

    char *path = temp_file(a, n);
    vm_program *q = vm_program_load(path, &err);
    cr_assert_not_null(q, "%s", err.msg);
    cr_assert_eq(vm_program_serialize(q, &b, &nb), VM_OK);
    cr_expect(nb == n && memcmp(a, b, n) == 0, "a mapped file loads another program");
    free(b);
    vm_program_free(q);
    remove(path);
    free(path);

    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    cr_assert_eq(write(fds[1], a, n), (ssize_t)n);
    close(fds[1]);
    char name[32];
    snprintf(name, sizeof name, "/dev/fd/%d", fds[0]);
    q = vm_program_load(name, &err);
    close(fds[0]);
    cr_assert_not_null(q, "%s", err.msg);
    cr_assert_eq(vm_program_serialize(q, &b, &nb), VM_OK);
    cr_expect(nb == n && memcmp(a, b, n) == 0, "a pipe loads another program");
    free(b);
    vm_program_free(q);

    a[n / 2] ^= 1;
    path = temp_file(a, n);
    cr_expect_null(vm_program_load(path, &err));
    cr_expect_str_eq(err.msg, "corrupted .ebc file: checksum mismatch");
    remove(path);
    free(path);
    path = temp_file(a, 0);
    cr_expect_null(vm_program_load(path, &err));
    cr_expect(strstr(err.msg, "bad magic number"), "%s", err.msg);
    remove(path);
    free(path);
    cr_expect_null(vm_program_load("/nonexistent/rules.ebc", &err));
    cr_expect_eq(err.code, VM_ERR_IO);
    free(a);
}

Test(ebcfile, positions_survive_dropping_the_source_texts)
{
    /* ebd lets the rules' texts go (vm_program_drop_sources) and keeps their line starts: every
     * instruction's line and column must come out as they did from the text. */
    vm_program *p = compile();
    uint32_t n = p->ncode, *line = calloc(n, sizeof *line), *col = calloc(n, sizeof *col);
    cr_assert(line && col);
    for (uint32_t i = 0; i < n; i++)
        vm_span_where(p, p->code_spans[i], &line[i], &col[i]);
    cr_assert_gt(line[n - 1], 1, "the last rule is not on the first line");
    vm_program_drop_sources(p);
    cr_assert_eq(p->srcs[0].text.len, 0);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t l, c;
        vm_span_where(p, p->code_spans[i], &l, &c);
        cr_expect(l == line[i] && c == col[i], "instruction %u: %u:%u, from the text %u:%u", i, l, c,
                  line[i], col[i]);
    }
    free(line);
    free(col);
    vm_program_free(p);
}

/* Reads a whole file (NULL if it cannot be opened) into a malloc'd buffer. */
static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16;
    uint8_t *b = malloc(cap);
    cr_assert_not_null(b);
    *n = 0;
    for (size_t k; (k = fread(b + *n, 1, cap - *n, f)) > 0;) {
        *n += k;
        if (*n == cap)
            cr_assert_not_null(b = realloc(b, cap *= 2));
    }
    fclose(f);
    return b;
}

/* The names in a directory, other than . and .., joined by spaces. */
static void listing(const char *dir, char *out, size_t cap)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    out[0] = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            snprintf(out + strlen(out), cap - strlen(out), "%s%s", out[0] ? " " : "", e->d_name);
    closedir(d);
}

/* Saved a buffer at a time (the rules' text, over 256 KiB, goes out straight from the pool and
 * the records through the buffer): the file is the serialised image, byte for byte. */
Test(ebcfile, a_saved_file_is_the_serialised_image)
{
    size_t cap = 1 << 20, len = 0;
    char *text = malloc(cap);
    cr_assert_not_null(text);
    len += (size_t)snprintf(text, cap, "bus b\n");
    for (int i = 0; len + 200 < cap && i < 4000; i++)
        len += (size_t)snprintf(text + len, cap - len,
                                "rule r%d on b { match data.k%d == \"value number %d\" and "
                                "data.n > %d }\n", i, i % 50, i, i);
    cc_result res;
    vm_program *p = cc_compile_text("big.ebr", text, len, stderr, &res);
    cr_assert_not_null(p);
    uint8_t *a, *b;
    size_t na, nb;
    cr_assert_eq(vm_program_serialize(p, &a, &na), VM_OK);
    cr_assert_gt(na, 2 * 256 * 1024, "the image spans several buffers");
    char dir[] = "/tmp/ebr-save-XXXXXX", path[64];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/big.ebc", dir);
    vm_error err;
    cr_assert_eq(vm_program_save(p, path, &err), VM_OK, "%s", err.msg);
    b = slurp(path, &nb);
    cr_assert_not_null(b);
    cr_expect(nb == na && memcmp(a, b, na) == 0, "the saved file is not the serialised image");
    char names[256];
    listing(dir, names, sizeof names);
    cr_expect_str_eq(names, "big.ebc");
    remove(path);
    rmdir(dir);
    free(a);
    free(b);
    free(text);
    vm_program_free(p);
}

Test(ebcfile, saving_into_a_missing_directory_fails_and_says_why)
{
    vm_program *p = compile();
    vm_error err;
    cr_assert_eq(vm_program_save(p, "/nonexistent/dir/out.ebc", &err), VM_ERR_IO);
    cr_expect_str_eq(err.msg, "cannot write: No such file or directory");
    vm_program_free(p);
}

/* A write that fails half way (here the file size limit, as a full disk would) leaves the file
 * that was there whole, and no temporary file: the image goes to a temporary file beside it,
 * renamed over it only once whole.  Writing in place would have cut the old file. */
Test(ebcfile, a_failed_save_leaves_the_old_file_as_it_was)
{
    vm_program *p = compile();
    char dir[] = "/tmp/ebr-save-XXXXXX", path[64];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/out.ebc", dir);
    static const char old[] = "the ruleset that was there before";
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fputs(old, f);
    fclose(f);

    struct rlimit was, small = { 512, 512 };
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &was), 0);
    small.rlim_max = was.rlim_max;
    signal(SIGXFSZ, SIG_IGN);   /* the write fails with EFBIG instead */
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    vm_error err;
    vm_status st = vm_program_save(p, path, &err);
    setrlimit(RLIMIT_FSIZE, &was);
    cr_expect_eq(st, VM_ERR_IO);
    cr_expect_str_eq(err.msg, "cannot write: File too large");

    size_t n;
    uint8_t *b = slurp(path, &n);
    cr_assert_not_null(b);
    cr_expect(n == strlen(old) && memcmp(b, old, n) == 0, "the old file was changed");
    char names[256];
    listing(dir, names, sizeof names);
    cr_expect_str_eq(names, "out.ebc", "a temporary file was left behind");
    remove(path);
    rmdir(dir);
    free(b);
    vm_program_free(p);
}
