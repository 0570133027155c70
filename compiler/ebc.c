/*
 * ebc.c — the `ebc` command: compile, check, test and disassemble rules.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compiler.h"

enum {
    EXIT_OK = 0,
    EXIT_RULES = 1,   /* the rules have errors; nothing was written */
    EXIT_USAGE = 2,   /* bad command line */
    EXIT_INPUT = 3,   /* an input could not be read, or is invalid (a refused .ebc, a bad event) */
};

static const char usage[] =
    "usage: ebc <command> [arguments]\n"
    "\n"
    "commands:\n"
    "  compile RULES.ebr -o OUT.ebc   compile rules into a ruleset file (written only if there\n"
    "                                 are no errors)\n"
    "  check RULES.ebr                report every error and warning; write nothing\n"
    "  test RULES EVENTS.jsonl        print the rules each event matches, one line per event\n"
    "       [--json] [--bus NAME]     (RULES is .ebr or .ebc; EVENTS may be - for stdin;\n"
    "                                 --json prints {\"line\": N, \"matched\": [...]} per event,\n"
    "                                 with \"error\" for an invalid event)\n"
    "  disasm RULES                   print each rule's bytecode (RULES is .ebr or .ebc)\n"
    "  opcodes                        print the VM's opcode reference (Markdown)\n"
    "  --help, --version\n"
    "\n"
    "exit status:\n"
    "  0  success\n"
    "  1  the rules have errors (each printed as file:line:col: error: ...)\n"
    "  2  bad command line\n"
    "  3  an input could not be read or is invalid (an .ebc file refused, an unreadable\n"
    "     events file, an event line that is not a JSON object)\n";

/* Does the file start with the .ebc magic number? */
static bool is_ebc(const char *path)
{
    FILE *f = fopen(path, "rb");
    char magic[8];
    bool yes = f && fread(magic, 1, 8, f) == 8 && memcmp(magic, VM_EBC_MAGIC, 8) == 0;
    if (f)
        fclose(f);
    return yes;
}

/* Loads rules from .ebr source or a compiled .ebc; prints problems; NULL on failure, with
 * *status set to the exit status to use. */
static vm_program *load_rules(const char *path, int *status)
{
    if (is_ebc(path)) {
        vm_error err;
        vm_program *p = vm_program_load(path, &err);
        if (!p) {
            fprintf(stderr, "%s: error: %s\n", path, err.msg);
            *status = EXIT_INPUT;
        }
        return p;
    }
    cc_result res;
    vm_program *p = cc_compile_file(path, stderr, &res);
    if (!p) {
        if (res.nerrors > 1)
            fprintf(stderr, "%d errors\n", res.nerrors);
        *status = EXIT_RULES;
    }
    return p;
}

static int cmd_compile(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-o") && i + 1 < argc)
            out = argv[++i];
        else if (!in && argv[i][0] != '-')
            in = argv[i];
        else {
            fprintf(stderr, "ebc compile: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!in || !out) {
        fputs("usage: ebc compile RULES.ebr -o OUT.ebc\n", stderr);
        return EXIT_USAGE;
    }
    cc_result res;
    vm_program *p = cc_compile_file(in, stderr, &res);
    if (!p) {
        if (res.nerrors > 1)
            fprintf(stderr, "%d errors\n", res.nerrors);
        return EXIT_RULES;
    }
    uint8_t *buf;
    size_t len;
    if (vm_program_serialize(p, &buf, &len) != VM_OK) {
        vm_program_free(p);
        fputs("ebc: out of memory\n", stderr);
        return EXIT_INPUT;
    }
    vm_program_free(p);
    /* Write a temporary file and rename it over the output: readers see the old or the new
     * file, never half of one. */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    bool ok = f && fwrite(buf, 1, len, f) == len;
    ok = f && fclose(f) == 0 && ok;
    free(buf);
    if (!ok || rename(tmp, out) != 0) {
        fprintf(stderr, "%s: error: cannot write: %s\n", out, strerror(errno));
        remove(tmp);
        return EXIT_INPUT;
    }
    return EXIT_OK;
}

static int cmd_check(int argc, char **argv)
{
    if (argc != 1) {
        fputs("usage: ebc check RULES.ebr\n", stderr);
        return EXIT_USAGE;
    }
    cc_result res;
    vm_program *p = cc_compile_file(argv[0], stderr, &res);
    if (!p) {
        if (res.nerrors > 1)
            fprintf(stderr, "%d errors\n", res.nerrors);
        return EXIT_RULES;
    }
    printf("%s: ok: %u rules, %u buses, %u targets\n", argv[0], p->nrules, p->nbuses, p->ntargets);
    vm_program_free(p);
    return EXIT_OK;
}

/* Writes s as a JSON string. */
static void json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

static int cmd_test(int argc, char **argv)
{
    const char *rules = NULL, *events = NULL, *busname = NULL;
    bool json = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--bus") && i + 1 < argc)
            busname = argv[++i];
        else if (!rules)
            rules = argv[i];
        else if (!events)
            events = argv[i];
        else {
            fprintf(stderr, "ebc test: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!rules || !events) {
        fputs("usage: ebc test RULES EVENTS.jsonl [--json] [--bus NAME]\n", stderr);
        return EXIT_USAGE;
    }
    int status = EXIT_OK;
    vm_program *p = load_rules(rules, &status);
    if (!p)
        return status;
    uint32_t bus = VM_NONE;
    if (busname) {
        for (uint32_t i = 0; i < p->nbuses; i++)
            if (!strcmp(vm_s(p, p->buses[i].name), busname))
                bus = i;
        if (bus == VM_NONE) {
            fprintf(stderr, "ebc test: no bus '%s' in %s\n", busname, rules);
            vm_program_free(p);
            return EXIT_USAGE;
        }
    }
    FILE *in = strcmp(events, "-") ? fopen(events, "rb") : stdin;
    if (!in) {
        fprintf(stderr, "%s: error: cannot open: %s\n", events, strerror(errno));
        vm_program_free(p);
        return EXIT_INPUT;
    }
    vm_ctx *ctx = vm_ctx_new(p, NULL);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    for (unsigned long lineno = 1; ctx && (n = getline(&line, &cap, in)) >= 0; lineno++) {
        size_t len = (size_t)n;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        size_t k = 0;
        while (k < len && (line[k] == ' ' || line[k] == '\t'))
            k++;
        if (k == len)
            continue;   /* blank lines are not events */
        const uint32_t *m;
        size_t nm;
        vm_error err;
        vm_status st = vm_match(ctx, bus, line, len, &m, &nm, &err);
        if (st != VM_OK)
            status = EXIT_INPUT;
        if (json) {
            printf("{\"line\": %lu, \"matched\": [", lineno);
            for (size_t i = 0; i < nm; i++) {
                if (i)
                    fputs(", ", stdout);
                json_string(stdout, vm_s(p, p->rules[m[i]].name));
            }
            fputc(']', stdout);
            if (st != VM_OK) {
                fputs(", \"error\": ", stdout);
                json_string(stdout, err.msg);
            }
            fputs("}\n", stdout);
        } else if (st != VM_OK) {
            printf("%lu: error: %s%s\n", lineno, st == VM_ERR_EVENT ? "invalid event: " : "", err.msg);
        } else {
            printf("%lu:", lineno);
            for (size_t i = 0; i < nm; i++)
                printf(" %s", vm_s(p, p->rules[m[i]].name));
            if (nm == 0)
                fputs(" -", stdout);
            fputc('\n', stdout);
        }
    }
    if (!ctx) {
        fputs("ebc: out of memory\n", stderr);
        status = EXIT_INPUT;
    } else if (ferror(in)) {
        fprintf(stderr, "%s: error: read failed\n", events);
        status = EXIT_INPUT;
    }
    free(line);
    if (in != stdin)
        fclose(in);
    vm_ctx_free(ctx);
    vm_program_free(p);
    return status;
}

/* Prints the opcode reference (the table in docs/bytecode.md is this output). */
static int cmd_opcodes(int argc, char **argv)
{
    (void)argv;
    if (argc != 0) {
        fputs("usage: ebc opcodes\n", stderr);
        return EXIT_USAGE;
    }
    puts("| opcode | operands | semantics |");
    puts("|---|---|---|");
    for (int i = 0; i < VM_OP__COUNT; i++)
        printf("| `%s` | %s | %s |\n", vm_op_names[i], vm_op_formats[i], vm_op_docs[i]);
    return EXIT_OK;
}

static int cmd_disasm(int argc, char **argv)
{
    if (argc != 1) {
        fputs("usage: ebc disasm RULES\n", stderr);
        return EXIT_USAGE;
    }
    int status = EXIT_OK;
    vm_program *p = load_rules(argv[0], &status);
    if (!p)
        return status;
    vm_disasm(p, stdout);
    vm_program_free(p);
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(usage, stdout);
        return EXIT_OK;
    }
    if (!strcmp(cmd, "--version")) {
        printf("ebc %s (.ebc format %u)\n", EBR_VERSION, VM_EBC_VERSION);
        return EXIT_OK;
    }
    static const struct { const char *name; int (*run)(int, char **); } cmds[] = {
        { "compile", cmd_compile }, { "check", cmd_check }, { "test", cmd_test },
        { "disasm", cmd_disasm }, { "opcodes", cmd_opcodes },
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(cmd, cmds[i].name))
            return cmds[i].run(argc - 2, argv + 2);
    fprintf(stderr, "ebc: unknown command '%s'\n\n%s", cmd, usage);
    return EXIT_USAGE;
}
