/*
 * ebc.c — the `ebc` command: compile, check, test and disassemble rules.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "compiler.h"
#include "../runtime/runtime.h"
#include "../runtime/center/query.h"
#include "../runtime/schema/schema.h"
#include "../runtime/center/trace.h"
#include "../runtime/aws/aws.h"

enum {
    EXIT_OK = 0,
    EXIT_RULES = 1,   /* the rules have errors; nothing was written */
    EXIT_USAGE = 2,   /* bad command line */
    EXIT_INPUT = 3,   /* an input could not be read, or is invalid (a refused .ebc, a bad event) */
    EXIT_TRANSFORM = 4, /* ebc test: an event matched, but a transform failed for it */
    EXIT_LOG = 5,       /* ebc log: problems found in the log */
};

static const char usage[] =
    "usage: ebc <command> [arguments]\n"
    "\n"
    "commands:\n"
    "  compile RULES.ebr -o OUT.ebc   compile rules into a ruleset file (written only if there\n"
    "                                 are no errors)\n"
    "  check RULES                    report every error and warning; write nothing\n"
    "  test RULES EVENTS.jsonl        print the rules each event matches, one line per event,\n"
    "       [--json] [--bus NAME]     then the payload each of their targets gets (RULES is\n"
    "       [--explain] [--now T]     .ebr or .ebc; EVENTS may be - for stdin; --json prints\n"
    "       [--ingest-time T]         (--explain: why each other rule did not match)\n"
    "                                 {\"line\": N, \"matched\": [...], \"deliveries\": [...]};\n"
    "                                 T fixes now() and $ingest_time: 2026-11-26T10:00:00Z)\n"
    "  bench RULES EVENTS.jsonl       time matching over the events (median of N passes):\n"
    "        [--repeat N] [--json]    events/s, MB/s, ns/event, compile time, peak RSS, and\n"
    "        [--engine E]             each rule's match count; E: index (default), bytewise\n"
    "        [--transforms]           (index, byte-by-byte scan), reference (bytecode only);\n"
    "        [--trusted]              --trusted: the router's path (the events checked untimed\n"
    "                                 first, then read without validating them);\n"
    "                                 --transforms also times the matched rules' templates\n"
    "  disasm RULES                   print each rule's bytecode (RULES is .ebr or .ebc)\n"
    "  explain RULES                  draw each bus's index as a tree\n"
    "  opcodes                        print the VM's opcode reference (Markdown)\n"
    "  schema infer EVENTS.jsonl      infer a JSON Schema per (source, type) of the events, one\n"
    "                                 CloudEvent a line (docs/schemas.md)\n"
    "  log check DIR [--fix]          verify a bus log offline: every record, every index,\n"
    "                                 every cursor (--fix first truncates a torn tail,\n"
    "                                 rebuilds indexes)\n"
    "  log dump DIR [--from OFFSET | --since TIME] [--json]\n"
    "        [--until T] [--source S] print a bus log's records in order, from an offset or\n"
    "        [--type T] [--limit N]   the first appended at or after TIME; T: RFC 3339, or\n"
    "        [--order oldest|newest]  a duration back from now (24h); --source and --type\n"
    "                                 match exactly (a trailing * is a prefix)\n"
    "  log cursors DIR [--json]       print a bus log's named cursors and cursor sets\n"
    "  replay --url URL --bus B --since T [--until T] [--rule R] [--target T] [--name N]\n"
    "         [--rate N] [--token T]  replay a time range on a running ebd through its\n"
    "                                 rules, showing its progress (--status NAME,\n"
    "                                 --cancel NAME, --list)\n"
    "  replay --dry-run RULES.ebr --data DIR --bus B --since T [--until T] [--json]\n"
    "                                 per rule, how many events of the log it would have\n"
    "                                 matched, with sample ids; nothing is delivered\n"
    "  trace --data DIR BUS ID        print what happened to an event (docs/trace.md): a\n"
    "        [--source S] [--offset N] timeline, or --json; --explain RULES: why each rule\n"
    "        [--json] [--explain RULES] of the bus did not match (read-only: ebd may run)\n"
    "  --help, --version\n"
    "\n"
    "exit status:\n"
    "  0  success\n"
    "  1  the rules have errors (each printed as file:line:col: error: ...)\n"
    "  2  bad command line\n"
    "  3  an input could not be read or is invalid (an .ebc file refused, an unreadable\n"
    "     events file, an event line that is not a JSON object)\n"
    "  4  ebc test: a transform failed for some event (and no event was invalid)\n"
    "  5  ebc log: the log has problems (each printed), or a record or a cursor could not\n"
    "     be read\n"
    "  6  ebc replay: the replay ended cancelled or failed (3: ebd refused or is not there)\n";

/* Loads rules from .ebr source or an .ebc file (told apart by the file's first bytes, so that a
 * damaged .ebc is reported as one and not compiled as source); prints problems; NULL on failure,
 * with *status set to the exit status to use.  flags: those of cc_compile_file_flags. */
static vm_program *load_rules(const char *path, unsigned flags, int *status)
{
    if (vm_file_is_ebc(path)) {
        vm_error err;
        vm_program *p = vm_program_load(path, &err);
        if (!p) {
            fprintf(stderr, "%s: error: not a valid ruleset file: %s\n", path, err.msg);
            *status = EXIT_INPUT;
        }
        return p;
    }
    cc_result res;
    vm_program *p = cc_compile_file_flags(path, flags, stderr, &res);
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
    int status = EXIT_OK;
    vm_program *p = load_rules(in, CC_UNPREPARED, &status);
    if (!p)
        return status;
    vm_error err;
    bool ok = vm_program_save(p, out, &err) == VM_OK;
    vm_program_free(p);
    if (!ok) {
        if (err.code == VM_ERR_NOMEM)
            fputs("ebc: out of memory\n", stderr);
        else
            fprintf(stderr, "%s: error: %s\n", out, err.msg);
        return EXIT_INPUT;
    }
    return EXIT_OK;
}

static int cmd_check(int argc, char **argv)
{
    if (argc != 1) {
        fputs("usage: ebc check RULES\n", stderr);
        return EXIT_USAGE;
    }
    int status = EXIT_OK;
    vm_program *p = load_rules(argv[0], 0, &status);
    if (!p)
        return status;
    printf("%s: ok: %u rules, %u buses, %u targets", argv[0], p->nrules, p->nbuses, p->ntargets);
    if (p->ninputs)
        printf(", %u sources", p->ninputs);
    printf("\n");
    vm_program_free(p);
    return EXIT_OK;
}

/* The name of an input file in messages ("-" is standard input). */
static const char *input_name(const char *path)
{
    return strcmp(path, "-") ? path : "<stdin>";
}

/* Runs a function transform for `ebc test` (a real command, a real request). */
static bool run_function(void *arg, const vm_program *p, const vm_xform *x, const char *event,
                         size_t len, char **payload, size_t *plen, bool *text, char *err,
                         size_t errcap)
{
    (void)arg;
    return rt_run_function(p, x, event, len, payload, plen, text, err, errcap);
}

/* Reads an RFC 3339 time ("2026-11-26T10:00:00Z", fraction and offset allowed) into ms. */
static bool parse_time_arg(const char *s, int64_t *ms)
{
    int Y, M, D, h, m, sec, n = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &Y, &M, &D, &h, &m, &sec, &n) != 6)
        return false;
    const char *rest = s + n;
    int frac = 0, scale = 100;
    if (*rest == '.')
        for (rest++; *rest >= '0' && *rest <= '9'; rest++, scale /= 10)
            frac += (*rest - '0') * scale;
    if (strcmp(rest, "Z") != 0 || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return false;
    struct tm tm = { .tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D, .tm_hour = h, .tm_min = m, .tm_sec = sec };
    *ms = (int64_t)timegm(&tm) * 1000 + frac;
    return true;
}

static int cmd_test(int argc, char **argv)
{
    const char *rules = NULL, *events = NULL, *busname = NULL;
    bool json = false;
    vm_xform_env env = { 0 };
    bool ingest_given = false, why = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--explain"))
            why = true;
        else if (!strcmp(argv[i], "--bus") && i + 1 < argc)
            busname = argv[++i];
        else if ((!strcmp(argv[i], "--now") || !strcmp(argv[i], "--ingest-time")) && i + 1 < argc) {
            bool now = !strcmp(argv[i], "--now");
            int64_t ms;
            if (!parse_time_arg(argv[++i], &ms)) {
                fprintf(stderr, "ebc test: %s takes a UTC time as 2026-11-26T10:00:00Z\n", argv[i - 1]);
                return EXIT_USAGE;
            }
            if (now)
                env.now_ms = ms;
            if (now ? !ingest_given : true)
                env.ingest_ms = ms;
            ingest_given |= !now;
        } else if (!rules)
            rules = argv[i];
        else if (!events)
            events = argv[i];
        else {
            fprintf(stderr, "ebc test: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!rules || !events) {
        fputs("usage: ebc test RULES EVENTS.jsonl [--json] [--explain] [--bus NAME] [--now TIME]\n"
              "                [--ingest-time TIME]\n", stderr);
        return EXIT_USAGE;
    }
    int status = EXIT_OK;
    vm_program *p = load_rules(rules, 0, &status);
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
    vm_options mopt = vm_program_options(p);   /* (the server block's match_steps, as in ebd) */
    vm_ctx *ctx = vm_ctx_new(p, &mopt);
    cc_test_options opt = { json, &env, run_function, NULL, why };
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
        /* (a fixed ingest time for the whole run unless --now: the time the run started) */
        if (!env.ingest_ms) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            env.ingest_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        }
        /* The daemon refuses what is not a CloudEvent: say so, so that this verdict and the
         * daemon's do not differ silently (an event that is not JSON is reported below).  A
         * line with "detail-type" and no "specversion" is an AWS event (docs/aws.md): ebd makes
         * those from PutEvents, whole. */
        char why[256];
        bool aws = vm_json_valid(line, len, NULL) && aws_looks_like_envelope(line, len);
        if (aws && !aws_envelope_check(line, len, why, sizeof why))
            fprintf(stderr, "%s:%lu: warning: ebd never holds such an event: %s\n",
                    input_name(events), lineno, why);
        else if (!aws && vm_json_valid(line, len, NULL) && !rt_cloudevent_check(line, len, why, sizeof why))
            fprintf(stderr, "%s:%lu: warning: ebd would refuse this event: %s\n", input_name(events),
                    lineno, why);
        vm_status st = cc_test_event(stdout, ctx, bus, lineno, line, len, &opt);
        if (st == VM_ERR_TRANSFORM && status == EXIT_OK)
            status = EXIT_TRANSFORM;
        else if (st != VM_OK && st != VM_ERR_TRANSFORM)
            status = EXIT_INPUT;
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

static int cmd_explain(int argc, char **argv)
{
    if (argc != 1) {
        fputs("usage: ebc explain RULES\n", stderr);
        return EXIT_USAGE;
    }
    int status = EXIT_OK;
    vm_program *p = load_rules(argv[0], 0, &status);
    if (!p)
        return status;
    vm_explain(p, stdout);
    vm_program_free(p);
    return EXIT_OK;
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
    /* Template code (transforms): its own instruction set. */
    static const char *const tnames[] = {
#define X(name, doc) #name,
        VM_TEMPLATE_OPCODES(X)
#undef X
    };
    static const char *const tdocs[] = {
#define X(name, doc) doc,
        VM_TEMPLATE_OPCODES(X)
#undef X
    };
    puts("");
    puts("| template opcode | semantics |");
    puts("|---|---|");
    for (int i = 0; i < VM_TO__COUNT; i++)
        printf("| `%s` | %s |\n", tnames[i], tdocs[i]);
    return EXIT_OK;
}

/* ---- bench ---------------------------------------------------------------------------------- */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Reads a whole file (or stdin for "-") into memory. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f)
        return NULL;
    size_t cap = 1 << 20, n = 0, k;
    char *buf = malloc(cap);
    while (buf && (k = fread(buf + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap) {
            char *b = realloc(buf, cap *= 2);
            if (!b) {
                free(buf);
                buf = NULL;
            }
            buf = b;
        }
    }
    if (f != stdin)
        fclose(f);
    *len = n;
    return buf;
}

/* A line "KEY: N kB" of /proc/self/status; -1 if there is none. */
static long proc_status_kb(const char *key)
{
    long kb = -1;
    size_t n = strlen(key);
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, key, n) && line[n] == ':' && sscanf(line + n + 1, "%ld", &kb) == 1)
                break;
        fclose(f);
    }
    return kb;
}

/* The process's peak resident set, in KiB: VmHWM, which starts afresh at exec (getrusage's
 * ru_maxrss keeps the peak of the process that forked us, e.g. a benchmark driver). */
static long peak_rss_kb(void)
{
    long kb = proc_status_kb("VmHWM");
    if (kb < 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        kb = ru.ru_maxrss;
    }
    return kb;
}

/* n per s seconds; 0 when s is not positive. */
static double per(double n, double s)
{
    return s > 0 ? n / s : 0;
}

/* One event line of the file bench times. */
typedef struct {
    const char *s;
    size_t n;
    unsigned long line;
} bench_event;

/* Splits text[0..len) into its event lines (blank lines are not events, as for ebc test);
 * NULL when out of memory. */
static bench_event *split_events(const char *text, size_t len, size_t *nev)
{
    size_t cap = 1024;
    bench_event *ev = malloc(cap * sizeof *ev);
    *nev = 0;
    unsigned long line = 1;
    for (size_t i = 0; ev && i < len; line++) {
        const char *eol = memchr(text + i, '\n', len - i);
        size_t n = eol ? (size_t)(eol - (text + i)) : len - i, k = 0;
        while (k < n && (text[i + k] == ' ' || text[i + k] == '\t' || text[i + k] == '\r'))
            k++;
        if (k < n) {
            if (*nev == cap) {
                bench_event *more = realloc(ev, (cap *= 2) * sizeof *ev);
                if (!more)
                    free(ev);
                ev = more;
            }
            if (ev)
                ev[(*nev)++] = (bench_event){ text + i, n, line };
        }
        i += n + 1;
    }
    return ev;
}

/* An untimed pass over the events: counts each rule's matches, reports each event that does not
 * match cleanly on standard error (FILE:LINE: error: ...) and drops it from ev, so that the timed
 * passes see only events that match.  `check` decides (a validating context: with --trusted the
 * events are checked as ingest checks them) and `ctx`, the timed one, counts.  Returns how many
 * were dropped. */
static size_t drop_invalid(vm_ctx *check, vm_ctx *ctx, const char *file, bench_event *ev,
                           size_t *nev, uint64_t *counts)
{
    size_t kept = 0;
    for (size_t i = 0; i < *nev; i++) {
        const uint32_t *m;
        size_t nm;
        vm_error err;
        vm_status st = vm_match(check, VM_NONE, ev[i].s, ev[i].n, &m, &nm, &err);
        if (st == VM_OK && ctx != check)
            st = vm_match(ctx, VM_NONE, ev[i].s, ev[i].n, &m, &nm, &err);
        if (st != VM_OK) {
            fprintf(stderr, "%s:%lu: error: %s%s\n", file, ev[i].line,
                    st == VM_ERR_EVENT ? "invalid event: " : "", err.msg);
            continue;
        }
        for (size_t k = 0; k < nm; k++)
            counts[m[k]]++;
        ev[kept++] = ev[i];
    }
    size_t dropped = *nev - kept;
    *nev = kept;
    return dropped;
}

static int cmd_bench(int argc, char **argv)
{
    const char *rules = NULL, *events = NULL;
    bool json = false, transforms = false;
    int repeat = 3;
    vm_options opt = { 0 };
    const char *engine = "index";
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--transforms"))
            transforms = true;
        else if (!strcmp(argv[i], "--trusted"))
            opt.trusted = true;
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc && atoi(argv[i + 1]) > 0)
            repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--engine") && i + 1 < argc) {
            engine = argv[++i];
            if (!strcmp(engine, "reference"))
                opt.reference = true;
            else if (!strcmp(engine, "bytewise"))
                opt.no_simd = true;
            else if (strcmp(engine, "index")) {
                fprintf(stderr, "ebc bench: unknown engine '%s' (index, bytewise, reference)\n",
                        engine);
                return EXIT_USAGE;
            }
        }
        else if (!rules)
            rules = argv[i];
        else if (!events)
            events = argv[i];
        else {
            fprintf(stderr, "ebc bench: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!rules || !events) {
        fputs("usage: ebc bench RULES EVENTS.jsonl [--repeat N] [--engine E] [--trusted] [--transforms]\n"
              "                 [--json]\n", stderr);
        return EXIT_USAGE;
    }
    int status = EXIT_OK;
    double t0 = now_seconds();
    vm_program *p = load_rules(rules, 0, &status);
    double compile_s = now_seconds() - t0;
    if (!p)
        return status;
    /* As the daemon does (runtime/ebd.c): messages need the rules' lines, not their text, and
     * the memory measured is then the daemon's (56 MB of text at 100,000 rules). */
    vm_program_drop_sources(p);
    size_t len;
    char *text = slurp(events, &len);
    if (!text) {
        fprintf(stderr, "%s: error: cannot read: %s\n", events, strerror(errno));
        vm_program_free(p);
        return EXIT_INPUT;
    }
    /* Split the file into event lines and set the invalid ones aside, untimed: the timed passes
     * see only matching. */
    size_t nev, bytes = 0;
    bench_event *ev = split_events(text, len, &nev);
    vm_ctx *ctx = ev ? vm_ctx_new(p, &opt) : NULL;
    vm_options validating = opt;
    validating.trusted = false;
    vm_ctx *check = ctx && opt.trusted ? vm_ctx_new(p, &validating) : ctx;
    uint64_t *counts = calloc(p->nrules ? p->nrules : 1, sizeof *counts);
    if (!ctx || !check || !counts) {
        fputs("ebc: out of memory\n", stderr);
        free(ev);
        free(counts);
        free(text);
        if (check != ctx)
            vm_ctx_free(check);
        vm_ctx_free(ctx);
        vm_program_free(p);
        return EXIT_INPUT;
    }
    size_t nlines = nev, invalid = drop_invalid(check, ctx, input_name(events), ev, &nev, counts);
    if (check != ctx)
        vm_ctx_free(check);
    for (size_t i = 0; i < nev; i++)
        bytes += ev[i].n;
    double *times = malloc((size_t)repeat * sizeof *times);
    /* With --transforms each pass runs twice: matching alone, then matching and every matched
     * rule's template (the difference is the transforms' own time). */
    double *xtimes = malloc((size_t)repeat * sizeof *xtimes);
    size_t ntransforms = 0, xfailed = 0, xbytes = 0;
    vm_xform_env env = { NULL, NULL, 1, 1 };
    for (int r = 0; r < repeat; r++) {
        for (int with = 0; with <= (int)transforms; with++) {
            double start = now_seconds();
            for (size_t i = 0; i < nev; i++) {
                const uint32_t *m;
                size_t nm;
                vm_error err;
                if (vm_match(ctx, VM_NONE, ev[i].s, ev[i].n, &m, &nm, &err) != VM_OK)
                    continue;
                for (size_t k = 0; with && k < nm; k++) {
                    uint32_t xi = p->rules[m[k]].xform;
                    if (xi == VM_NONE || p->xforms[xi].kind != VM_X_TEMPLATE)
                        continue;
                    const char *out;
                    size_t outlen;
                    bool text;
                    vm_status st = vm_transform(ctx, m[k], ev[i].s, ev[i].n, &env, &out, &outlen, &text, &err);
                    if (r == 0) {
                        ntransforms++;
                        xfailed += st != VM_OK;
                        xbytes += outlen;
                    }
                }
            }
            (with ? xtimes : times)[r] = now_seconds() - start;
        }
    }
    qsort(times, (size_t)repeat, sizeof *times, compare_doubles);
    double secs = times[repeat / 2];
    double xsecs = 0;
    if (transforms) {
        qsort(xtimes, (size_t)repeat, sizeof *xtimes, compare_doubles);
        xsecs = xtimes[repeat / 2];
    }
    /* Resident now, after matching: the ruleset and the events, without what loading or
     * compiling used for a while (file buffers, syntax trees). */
    long rss_kb = proc_status_kb("VmRSS");
    long peak_kb = peak_rss_kb();
    /* The size of the ruleset as stored (bytecode, index, strings): its memory once loaded.
     * (From the layout: making the image to measure it was 24M instructions at 10k rules.) */
    size_t image_len = (size_t)vm_program_image_size(p);
    /* (rates over the events timed; none timed, or too fast to time, gives 0, not a NaN) */
    double eps = per(nev, secs), mbps = per(bytes, secs) / 1e6, ns = nev ? secs * 1e9 / nev : 0;
    double xps = per(ntransforms, xsecs), alone = xsecs > secs ? per(ntransforms, xsecs - secs) : 0;
    if (json) {
        printf("{\"events\": %zu, \"bytes\": %zu, \"seconds\": %.6f, \"events_per_sec\": %.0f, "
               "\"mb_per_sec\": %.1f, \"ns_per_event\": %.1f, \"compile_seconds\": %.6f, "
               "\"peak_rss_kb\": %ld, \"rss_kb\": %ld, \"rules\": %u, \"program_bytes\": %zu, \"repeat\": %d, "
               "\"engine\": \"%s\", \"trusted\": %s, \"invalid\": %zu, ",
               nlines, bytes, secs, eps, mbps, ns, compile_s, peak_kb, rss_kb, p->nrules, image_len,
               repeat, engine, opt.trusted ? "true" : "false", invalid);
        if (transforms)
            printf("\"transforms\": %zu, \"transform_failures\": %zu, \"payload_bytes\": %zu, "
                   "\"seconds_with_transforms\": %.6f, \"transforms_per_sec\": %.0f, "
                   "\"transforms_alone_per_sec\": %.0f, ",
                   ntransforms, xfailed, xbytes, xsecs, xps, alone);
        fputs("\"counts\": {", stdout);
        for (uint32_t i = 0; i < p->nrules; i++) {
            printf("%s", i ? ", " : "");
            cc_json_string(stdout, vm_s(p, p->rules[i].name), strlen(vm_s(p, p->rules[i].name)));
            printf(": %llu", (unsigned long long)counts[i]);
        }
        puts("}}");
    } else {
        printf("events        %zu (%zu invalid, not timed)\n", nlines, invalid);
        printf("bytes         %zu\n", bytes);
        printf("seconds       %.6f (median of %d passes, engine %s%s)\n", secs, repeat, engine,
               opt.trusted ? ", trusted" : "");
        printf("events/s      %.0f\n", eps);
        printf("MB/s          %.1f\n", mbps);
        printf("ns/event      %.1f\n", ns);
        printf("compile       %.6f s\n", compile_s);
        printf("peak RSS      %ld KiB (%ld KiB resident at the end)\n", peak_kb, rss_kb);
        printf("rules         %u (%zu bytes compiled, %.0f per rule)\n", p->nrules, image_len,
               p->nrules ? (double)image_len / p->nrules : 0.0);
        if (transforms) {
            printf("transforms    %zu (%zu failed, %zu payload bytes)\n", ntransforms, xfailed, xbytes);
            printf("  with them   %.6f s: %.0f transforms/s, matching included\n", xsecs, xps);
            printf("  alone       %.0f transforms/s (the time they add to matching)\n", alone);
        }
        printf("matches\n");
        for (uint32_t i = 0; i < p->nrules; i++)
            printf("  %-30s %llu\n", vm_s(p, p->rules[i].name), (unsigned long long)counts[i]);
    }
    free(times);
    free(xtimes);
    free(counts);
    free(ev);
    free(text);
    vm_ctx_free(ctx);
    vm_program_free(p);
    return invalid ? EXIT_INPUT : EXIT_OK;
}

static int cmd_disasm(int argc, char **argv)
{
    if (argc != 1) {
        fputs("usage: ebc disasm RULES\n", stderr);
        return EXIT_USAGE;
    }
    int status = EXIT_OK;
    vm_program *p = load_rules(argv[0], 0, &status);
    if (!p)
        return status;
    vm_disasm(p, stdout);
    vm_program_free(p);
    return EXIT_OK;
}

/* ---- ebc log ---------------------------------------------------------------------------- */

static void print_line(void *arg, const char *msg)
{
    fprintf(arg, "%s\n", msg);
}

static int cmd_log_check(int argc, char **argv)
{
    const char *dir = NULL;
    bool fix = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--fix"))
            fix = true;
        else if (!dir && argv[i][0] != '-')
            dir = argv[i];
        else {
            fprintf(stderr, "ebc log check: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!dir) {
        fputs("usage: ebc log check DIR [--fix]\n", stderr);
        return EXIT_USAGE;
    }
    char err[512];
    long problems = log_check(dir, fix, print_line, stdout, err, sizeof err);
    if (problems < 0) {
        fprintf(stderr, "ebc log check: %s\n", err);
        return EXIT_INPUT;
    }
    return problems ? EXIT_LOG : EXIT_OK;
}

/* Writes ns since the epoch as RFC 3339 UTC with nanoseconds. */
static void put_time(FILE *out, int64_t ns)
{
    time_t secs = (time_t)(ns / 1000000000);
    long frac = (long)(ns % 1000000000);
    if (frac < 0) {
        frac += 1000000000;
        secs--;
    }
    struct tm tm;
    gmtime_r(&secs, &tm);
    char buf[64];
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(out, "%s.%09ldZ", buf, frac);
}

/* A payload as it is when it is one line of JSON, else as a JSON string; with json, JSON on
 * several lines as JSON too, its line breaks (white space between tokens: valid JSON has no other)
 * made spaces, so that each record stays one line. */
static void put_payload(FILE *out, const store_record *r, bool json)
{
    const char *d = (const char *)r->data;
    bool one_line = memchr(d, '\n', r->len) == NULL && memchr(d, '\r', r->len) == NULL;
    if (!vm_json_valid(d, r->len, NULL) || !(one_line || json))
        vm_put_json_string(out, d, r->len);
    else if (one_line)
        fwrite(d, 1, r->len, out);
    else
        for (uint32_t i = 0; i < r->len; i++)
            putc(d[i] == '\n' || d[i] == '\r' ? ' ' : d[i], out);
}

/* One record as `ebc log dump` prints it (text, or with json one object per line). */
static void dump_record(const store_record *r, bool json)
{
    if (json) {
        printf("{\"offset\":%" PRIu64 ",\"time\":\"", r->offset);
        put_time(stdout, r->time_ns);
        printf("\",\"flags\":%u,\"len\":%u,\"payload\":", r->flags, r->len);
        put_payload(stdout, r, true);
        fputs("}\n", stdout);
    } else {
        printf("%" PRIu64 " ", r->offset);
        put_time(stdout, r->time_ns);
        printf(" flags=0x%x len=%u ", r->flags, r->len);
        put_payload(stdout, r, false);
        putchar('\n');
    }
}

static bool dump_emit(void *arg, const store_record *r)
{
    dump_record(r, *(bool *)arg);
    return true;
}

static const char dump_usage[] =
    "usage: ebc log dump DIR [--from OFFSET | --since TIME] [--json]\n"
    "                    [--until TIME] [--source S] [--type T] [--limit N]\n"
    "                    [--order oldest|newest]\n";

static int cmd_log_dump(int argc, char **argv)
{
    const char *dir = NULL;
    bool json = false, since = false, from_given = false, newest = false;
    uint64_t from = 0;
    int64_t now = qy_now_ns(), since_ns = QY_NONE_BEFORE, until_ns = QY_NONE_AFTER;
    qy_filter f = { 0 };
    unsigned long long limit = 0;
    char why[300];
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--from") && i + 1 < argc) {
            char *end;
            errno = 0;
            from = strtoull(argv[++i], &end, 10);
            if (*end || errno || argv[i][0] == '-') {
                fprintf(stderr, "ebc log dump: --from takes an offset (0, 1, ...), not '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
            from_given = true;
        } else if ((!strcmp(argv[i], "--since") || !strcmp(argv[i], "--until")) && i + 1 < argc) {
            bool is_since = !strcmp(argv[i], "--since");
            since |= is_since;
            if (!qy_parse_time(argv[i + 1], now, is_since ? &since_ns : &until_ns, why, sizeof why)) {
                fprintf(stderr, "ebc log dump: %s: %s\n", argv[i], why);
                return EXIT_USAGE;
            }
            i++;
        } else if (!strcmp(argv[i], "--source") && i + 1 < argc)
            f.source = argv[++i];
        else if (!strcmp(argv[i], "--type") && i + 1 < argc)
            f.type = argv[++i];
        else if (!strcmp(argv[i], "--limit") && i + 1 < argc) {
            char *end;
            errno = 0;
            limit = strtoull(argv[++i], &end, 10);
            if (*end || errno || argv[i][0] == '-' || !limit) {
                fprintf(stderr, "ebc log dump: --limit takes a number over 0, not '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
        } else if (!strcmp(argv[i], "--order") && i + 1 < argc) {
            i++;
            if (strcmp(argv[i], "oldest") && strcmp(argv[i], "newest")) {
                fprintf(stderr, "ebc log dump: --order is oldest or newest, not '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
            newest = !strcmp(argv[i], "newest");
        } else if (!dir && argv[i][0] != '-')
            dir = argv[i];
        else {
            fprintf(stderr, "ebc log dump: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!dir || (since && from_given) || (newest && from_given)) {
        fputs(dump_usage, stderr);
        return EXIT_USAGE;
    }
    char err[512];
    store *s;
    store_options o = { .read_only = true };
    if (log_open(dir, &o, &s, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "ebc log dump: %s\n", err);
        return EXIT_INPUT;
    }
    if (newest) {
        /* read backwards in chunks (runtime/center/query.c); corrupt records passed over */
        qy_query q = { .since_ns = since_ns, .until_ns = until_ns, .f = f, .newest = true,
                       .limit = (size_t)limit };
        bool more;
        uint64_t next;
        store_status st = qy_run(s, &q, dump_emit, &json, &more, &next, err, sizeof err);
        if (st != STORE_OK)
            fprintf(stderr, "ebc log dump: %s\n", err);
        store_close(s);
        return st == STORE_OK ? EXIT_OK : EXIT_LOG;
    }
    /* (by default from the first record retention has kept) */
    uint64_t first, next;
    store_bounds(s, &first, &next);
    store_cursor *c;
    store_status st = since ? store_cursor_open_at(s, since_ns, &c)
                            : store_cursor_open(s, from_given ? from : first, &c);
    if (st != STORE_OK) {
        fprintf(stderr, "ebc log dump: %s\n", store_error(s));
        store_close(s);
        return EXIT_LOG;
    }
    int status = EXIT_OK;
    unsigned long long given = 0;
    store_record r;
    while (st == STORE_OK && (!limit || given < limit) &&
           (st = store_cursor_next(c, &r, 0)) != STORE_TIMEOUT) {
        if (st == STORE_CORRUPT || st == STORE_BEHIND) {
            fprintf(stderr, "ebc log dump: %s\n", store_cursor_error(c));
            status = EXIT_LOG;
            uint64_t lost;
            store_bounds(s, &first, &next);
            st = st == STORE_BEHIND ? store_cursor_seek(c, first) : store_cursor_skip(c, &lost);
            continue;
        }
        if (st != STORE_OK || r.time_ns >= until_ns)
            break;
        if (!qy_event_passes(&f, (const char *)r.data, r.len))
            continue;
        dump_record(&r, json);
        given++;
    }
    if (st != STORE_TIMEOUT && st != STORE_OK) {
        fprintf(stderr, "ebc log dump: %s\n", store_cursor_error(c));
        status = EXIT_LOG;
    }
    store_cursor_close(c);
    store_close(s);
    return status;
}

/* One position: `HIGH [pending P1 P2 ...]`, or with json `"high":N,"pending":[...]`. */
static void put_pos(uint64_t high, const uint64_t *pending, size_t n, bool json)
{
    if (json) {
        printf("\"high\":%" PRIu64 ",\"pending\":[", high);
        for (size_t i = 0; i < n; i++)
            printf("%s%" PRIu64, i ? "," : "", pending[i]);
        putchar(']');
    } else {
        printf("%" PRIu64 "%s", high, n ? " pending" : "");
        for (size_t i = 0; i < n; i++)
            printf(" %" PRIu64, pending[i]);
    }
}

/* Prints the named cursors of s, one a line; false if one could not be read (reported). */
static bool print_cursors(store *s, bool json)
{
    char **names;
    size_t n;
    if (store_cursor_names(s, &names, &n) != STORE_OK) {
        fprintf(stderr, "ebc log cursors: %s\n", store_error(s));
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        uint64_t high, pending[STORE_MAX_PENDING];
        size_t np;
        if (store_committed_pending(s, names[i], &high, pending, &np) != STORE_OK) {
            fprintf(stderr, "ebc log cursors: %s\n", store_error(s));
            ok = false;
        } else {
            printf(json ? "{\"cursor\":\"%s\"," : "%s ", names[i]);
            put_pos(high, pending, np, json);
            puts(json ? "}" : "");
        }
        free(names[i]);
    }
    free(names);
    return ok;
}

/* Prints the cursor sets of s: a line for each set, then (text) a line for each entry or (json)
 * the entries in the set's line; false if one could not be read (reported). */
static bool print_sets(store *s, bool json)
{
    char **names;
    size_t n;
    if (store_set_names(s, &names, &n) != STORE_OK) {
        fprintf(stderr, "ebc log cursors: %s\n", store_error(s));
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        uint64_t base;
        store_pos *e;
        size_t ne;
        if (store_committed_set(s, names[i], &base, &e, &ne) != STORE_OK) {
            fprintf(stderr, "ebc log cursors: %s\n", store_error(s));
            ok = false;
        } else if (json) {
            printf("{\"set\":\"%s\",\"base\":%" PRIu64 ",\"entries\":[", names[i], base);
            for (size_t j = 0; j < ne; j++) {
                printf("%s{\"name\":\"%s\",", j ? "," : "", e[j].name);
                put_pos(e[j].high, e[j].pending, e[j].npending, true);
                putchar('}');
            }
            puts("]}");
        } else {
            printf("@%s base %" PRIu64 " entries %zu\n", names[i], base, ne);
            for (size_t j = 0; j < ne; j++) {
                printf("  %s ", e[j].name);
                put_pos(e[j].high, e[j].pending, e[j].npending, false);
                putchar('\n');
            }
        }
        store_set_free(e, ne);
        free(names[i]);
    }
    free(names);
    return ok;
}

static int cmd_log_cursors(int argc, char **argv)
{
    const char *dir = NULL;
    bool json = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!dir && argv[i][0] != '-')
            dir = argv[i];
        else {
            fprintf(stderr, "ebc log cursors: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!dir) {
        fputs("usage: ebc log cursors DIR [--json]\n", stderr);
        return EXIT_USAGE;
    }
    char err[512];
    store *s;
    store_options o = { .read_only = true };
    if (log_open(dir, &o, &s, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "ebc log cursors: %s\n", err);
        return EXIT_INPUT;
    }
    bool ok = print_cursors(s, json);
    ok = print_sets(s, json) && ok;
    store_close(s);
    return ok ? EXIT_OK : EXIT_LOG;
}

static int cmd_log(int argc, char **argv)
{
    if (argc >= 1 && !strcmp(argv[0], "check"))
        return cmd_log_check(argc - 1, argv + 1);
    if (argc >= 1 && !strcmp(argv[0], "dump"))
        return cmd_log_dump(argc - 1, argv + 1);
    if (argc >= 1 && !strcmp(argv[0], "cursors"))
        return cmd_log_cursors(argc - 1, argv + 1);
    fputs("usage: ebc log check DIR [--fix]\n"
          "       ebc log dump DIR [--from OFFSET | --since TIME] [--json] [--until TIME]\n"
          "                    [--source S] [--type T] [--limit N] [--order oldest|newest]\n"
          "       ebc log cursors DIR [--json]\n", stderr);
    return EXIT_USAGE;
}

/* ebc trace --data DIR BUS (ID [--source S] | --offset N) [--json] [--explain RULES]: an
 * event's trace, read from the logs read-only (ebd may be running). */
static int cmd_trace(int argc, char **argv)
{
    const char *data = NULL, *bus = NULL, *id = NULL, *source = NULL, *rules = NULL;
    bool json = false, by_offset = false;
    uint64_t offset = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--data") && i + 1 < argc)
            data = argv[++i];
        else if (!strcmp(argv[i], "--source") && i + 1 < argc)
            source = argv[++i];
        else if (!strcmp(argv[i], "--explain") && i + 1 < argc)
            rules = argv[++i];
        else if (!strcmp(argv[i], "--offset") && i + 1 < argc) {
            char *end;
            errno = 0;
            offset = strtoull(argv[++i], &end, 10);
            if (*end || errno || argv[i][0] == '-') {
                fprintf(stderr, "ebc trace: --offset takes an offset (0, 1, ...), not '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
            by_offset = true;
        } else if (!bus && argv[i][0] != '-')
            bus = argv[i];
        else if (!id && (argv[i][0] != '-' || i > 0))
            id = argv[i];
        else {
            fprintf(stderr, "ebc trace: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!data || !bus || (!id == !by_offset)) {
        fputs("usage: ebc trace --data DIR BUS (ID [--source S] | --offset N) [--json]\n"
              "                 [--explain RULES]\n", stderr);
        return EXIT_USAGE;
    }
    int status = EXIT_OK;
    vm_program *p = rules ? load_rules(rules, 0, &status) : NULL;
    if (rules && !p)
        return status;
    char dir[4400], err[700];
    snprintf(dir, sizeof dir, "%s/buses/%s", data, bus);
    store *s;
    store_options o = { .read_only = true };
    if (log_open(dir, &o, &s, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "ebc trace: bus '%s': %s\n", bus, err);
        vm_program_free(p);
        return EXIT_INPUT;
    }
    trace_query q = { .data_dir = data, .bus = bus, .log = s, .by_offset = by_offset,
                      .offset = offset, .id = id, .source = source, .explain = p };
    sbuf b = { 0 };
    unsigned st = trace_lookup(&q, &b, err, sizeof err);
    if (st == 200 && json)
        printf("%s\n", b.v);
    else if (st == 200)
        trace_print(b.v, stdout);
    else {
        fprintf(stderr, "ebc trace: %s\n", err);
        status = EXIT_INPUT;
    }
    sb_free(&b);
    store_close(s);
    vm_program_free(p);
    return status;
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
        { "disasm", cmd_disasm }, { "opcodes", cmd_opcodes }, { "bench", cmd_bench },
        { "explain", cmd_explain }, { "log", cmd_log }, { "replay", rp_cli },
        { "schema", sch_cli }, { "trace", cmd_trace },
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(cmd, cmds[i].name))
            return cmds[i].run(argc - 2, argv + 2);
    fprintf(stderr, "ebc: unknown command '%s'\n\n%s", cmd, usage);
    return EXIT_USAGE;
}
