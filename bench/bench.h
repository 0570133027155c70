/*
 * bench.h — what the benchmark drivers share: running `ebc bench --json` and reading its answer,
 * medians, the machine's description, files, and charts through gnuplot.
 *
 * The drivers measure through the `ebc bench` command, one process per measurement, so that
 * peak RSS and compile time are those of a process that loads only that ruleset.
 */
#ifndef EBR_BENCH_H
#define EBR_BENCH_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

/* One `ebc bench` measurement, as it reports it. */
typedef struct {
    double events_per_sec, mb_per_sec, ns_per_event, compile_seconds;
    long peak_rss_kb, rss_kb;    /* the peak; resident at the end (ruleset and events) */
    double program_bytes;
    unsigned long events, invalid, rules;
    double transforms, transforms_per_sec, transforms_alone_per_sec;   /* engine "transforms" */
    cJSON *counts;                 /* {rule: n}; owned by the measurement */
} bench_result;

/* The options every driver takes: --ebc EBC --data SHARED_DATA_DIR --work DIR --out DIR
 * [--runs N]. */
typedef struct {
    const char *ebc, *data, *work, *out;
    int runs;
} bench_options;

/* Takes argv[i] and its value if it is one of those options: returns true and moves *i past
 * it.  Returns false, leaving *i, for any other argument. */
bool bench_option(bench_options *o, int argc, char **argv, int *i);

/* Are the required options there?  Then creates the work and output folders. */
bool bench_options_ready(const bench_options *o);

/* Runs `EBC bench RULES EVENTS --json --repeat REPEAT --engine ENGINE`; false (with a message on
 * stderr) if it fails or prints something other than its JSON object.  ENGINE "transforms" runs
 * the index with --transforms (the matched rules' templates timed too), "trusted" the index
 * with --trusted (the router's path: events read without validating them). */
bool bench_ebc(const char *ebc, const char *rules, const char *events, int repeat,
               const char *engine, bench_result *out);
void bench_result_free(bench_result *r);

/* Do two measurements' counts agree (same rules, same numbers, in order)? */
bool bench_same_counts(const cJSON *a, const cJSON *b);

/* Runs the measurement `runs` times and keeps the run with the median events/s (its other
 * figures come with it; the counts of every run must agree, or it fails). */
bool bench_median(const char *ebc, const char *rules, const char *events, int runs, int repeat,
                  const char *engine, bench_result *out);

/* Like bench_median, with a baseline run (BASE_RULES on BASE_EVENTS) before each run: *ratio
 * is the median over the runs of events/s divided by the baseline's events/s just measured,
 * which a noisy machine disturbs less than a ratio of two medians taken minutes apart.
 * *base_rss_kb: the baseline's resident memory at the end (the smallest of its runs). */
bool bench_paired(const char *ebc, const char *base_rules, const char *base_events,
                  const char *rules, const char *events, int runs, int repeat, bench_result *out,
                  double *ratio, long *base_rss_kb);

/* Runs `EBC compile RULES -o OUT` `runs` times; the median wall-clock seconds, or -1 if it
 * fails. */
double bench_compile(const char *ebc, const char *rules, const char *out, int runs);

/* "Intel(R) Xeon(R) ... , 2 cores, Linux 6.1, 2026-11-26" */
void bench_machine(char *buf, size_t n);

bool bench_write(const char *path, const char *text);
bool bench_mkdirs(const char *dir);
bool bench_exists(const char *path);
/* Decompresses SRC.gz into DST (through DST.part) unless DST is already newer than SRC. */
bool bench_gunzip(const char *src, const char *dst);
/* Runs gnuplot on a script file; false (with a note) if gnuplot is missing or fails. */
bool bench_gnuplot(const char *script_path);

/* Draws the chart (gnuplot SCRIPT written to GP, if draw), prints where the results are and
 * returns the driver's exit status: 0, or 1 when some count was wrong (ok false). */
int bench_finish(bool draw, const char *gp, const char *script, const char *csv, const char *md,
                 const char *png, bool ok);

/* printf into a fresh string. */
char *bench_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
