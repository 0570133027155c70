/*
 * icount.c — counts the instructions one match runs, AVX-512 included, on events of a file.
 *
 *   bench_icount EBC EVENTS.jsonl [--events N] [--trusted] [--bytewise] [--rips FILE]
 *
 * valgrind (callgrind) has no AVX-512, so it counts the AVX2 path of stage 1, not the one this
 * machine runs.  This counts by single-stepping: with the x86 trap flag set, the CPU stops after
 * every instruction with SIGTRAP, and a handler counts (and, with --rips, records the address:
 * `sort FILE | uniq -c` and addr2line give a profile by line; build with -g and -no-pie).  Each
 * event is matched once untraced (buffers grown, tables warm) and once traced, at some hundred
 * thousand instructions a second: a few hundred events are enough.  Linux on x86-64 only.  (A
 * string instruction with a repeat prefix counts once per repetition.)
 *
 * The count is what the CPU executes, not the time it takes: on the CityLots events a change of
 * stage 1 that ran fewer instructions was slower (bench/README.md); time with `ebc bench`.
 */
#define _GNU_SOURCE
#include <stdio.h>

#if defined(__x86_64__) && defined(__linux__)
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include "../vm/vm_int.h"

static volatile unsigned long steps;
/* --rips: the addresses, kept in memory by the handler (no stdio there) and written at the end */
static unsigned long long *rips;
static volatile size_t nrips;
static size_t rips_cap;

static void on_trap(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    steps++;
    if (nrips < rips_cap)
        rips[nrips++] = (unsigned long long)((ucontext_t *)uc)->uc_mcontext.gregs[REG_RIP];
}

/* The stage 1 that vm_fast_stage1 runs on this CPU. */
static const char *stage1_here(void)
{
    static const char *const names[] = { "AVX-512 VBMI2", "AVX2", "portable" };
    return names[vm_fast_stage1_kind()];
}

/* (inlined: the count starts right after the flag is set, and ends at the instruction that
 * clears it, a few instructions of its own either way) */
static inline __attribute__((always_inline)) void trap_flag(bool on)
{
    if (on)
        __asm__ volatile("pushfq; orq $0x100, (%%rsp); popfq" ::: "memory", "cc");
    else
        __asm__ volatile("pushfq; andq $~0x100, (%%rsp); popfq" ::: "memory", "cc");
}

int main(int argc, char **argv)
{
    const char *ebc = NULL, *events = NULL, *rips_path = NULL;
    long limit = 200;
    vm_options opt = { 0 };
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--events") && i + 1 < argc)
            limit = atol(argv[++i]);
        else if (!strcmp(argv[i], "--trusted"))
            opt.trusted = true;
        else if (!strcmp(argv[i], "--bytewise"))
            opt.no_simd = true;
        else if (!strcmp(argv[i], "--rips") && i + 1 < argc)
            rips_path = argv[++i];
        else if (!ebc)
            ebc = argv[i];
        else if (!events)
            events = argv[i];
        else
            ebc = NULL, i = argc;
    }
    if (!ebc || !events || limit <= 0) {
        fprintf(stderr, "usage: bench_icount EBC EVENTS.jsonl [--events N] [--trusted] [--bytewise] "
                        "[--rips FILE]\n");
        return 2;
    }
    vm_error err;
    vm_program *p = vm_program_load(ebc, &err);
    if (!p) {
        fprintf(stderr, "bench_icount: %s: %s\n", ebc, err.msg);
        return 1;
    }
    FILE *in = fopen(events, "r");
    if (!in) {
        perror(events);
        return 1;
    }
    FILE *rips_out = NULL;
    if (rips_path) {
        rips_cap = 1u << 26;   /* (512 MB of address space, touched as it fills) */
        if (!(rips_out = fopen(rips_path, "w")) || !(rips = malloc(rips_cap * sizeof *rips))) {
            perror(rips_path);
            return 1;
        }
    }
    vm_ctx *c = vm_ctx_new(p, &opt);
    if (!c) {
        fprintf(stderr, "bench_icount: out of memory\n");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGTRAP, &sa, NULL);
    char *line = NULL;
    size_t cap = 0, bytes = 0;
    ssize_t n;
    long count = 0, matches = 0, failed = 0;
    while (count < limit && (n = getline(&line, &cap, in)) > 0) {
        if (line[n - 1] == '\n')
            n--;
        if (!n)
            continue;
        const uint32_t *m;
        size_t nm;
        vm_match(c, VM_NONE, line, (size_t)n, &m, &nm, &err);
        trap_flag(true);
        vm_status st = vm_match(c, VM_NONE, line, (size_t)n, &m, &nm, &err);
        trap_flag(false);
        matches += st == VM_OK ? (long)nm : 0;
        failed += st != VM_OK;
        bytes += (size_t)n;
        count++;
    }
    if (rips_out) {
        for (size_t i = 0; i < nrips; i++)
            fprintf(rips_out, "%llx\n", rips[i]);
        fclose(rips_out);
        if (nrips == rips_cap)
            fprintf(stderr, "bench_icount: only the first %zu addresses kept\n", rips_cap);
    }
    if (!count) {
        fprintf(stderr, "bench_icount: no events in %s\n", events);
        return 1;
    }
    char label[64];   /* (events under 64 bytes are scanned byte by byte on any path) */
    if (opt.trusted || opt.no_simd)
        snprintf(label, sizeof label, "%s path", opt.trusted ? "trusted" : "byte-by-byte");
    else
        snprintf(label, sizeof label, "validating path (stage 1: %s)", stage1_here());
    printf("%s: %ld events, %lu instructions, %.0f an event, %.1f per 64 bytes, %ld matches, "
           "%ld in error (counted too)\n", label, count, steps, (double)steps / count,
           (double)steps * 64 / (double)bytes, matches, failed);
    free(line);
    free(rips);
    fclose(in);
    vm_ctx_free(c);
    vm_program_free(p);
    return 0;
}
#else
int main(void)
{
    fprintf(stderr, "bench_icount: single-stepping is done on Linux x86-64 only\n");
    return 2;
}
#endif
