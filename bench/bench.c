/*
 * bench.c — helpers of the benchmark drivers (bench.h).
 */
#include "bench.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

char *bench_fmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = malloc((size_t)n + 1);
    if (!s) {
        perror("bench");
        exit(2);
    }
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* Runs argv (no shell) and returns what it wrote on stdout; NULL if it could not run or exited
 * with a status other than 0.  Its stderr goes to ours. */
static char *capture(char *const argv[])
{
    int fd[2];
    if (pipe(fd) != 0)
        return NULL;
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]);
        close(fd[1]);
        return NULL;
    }
    if (pid == 0) {
        dup2(fd[1], STDOUT_FILENO);
        close(fd[0]);
        close(fd[1]);
        execv(argv[0], argv);
        fprintf(stderr, "bench: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(fd[1]);
    size_t n = 0, cap = 1 << 16;
    char *out = malloc(cap);
    for (;;) {
        if (n + 1 == cap)
            out = realloc(out, cap *= 2);
        if (!out) {
            perror("bench");
            exit(2);
        }
        ssize_t k = read(fd[0], out + n, cap - n - 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    out[n] = 0;
    close(fd[0]);
    int status = -1;
    pid_t w;
    while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
        ;
    if (w != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

bool bench_ebc(const char *ebc, const char *rules, const char *events, int repeat,
               const char *engine, bench_result *out)
{
    char rep[16];
    snprintf(rep, sizeof rep, "%d", repeat);
    /* "transforms" and "trusted" are the index engine with --transforms or --trusted. */
    bool with = !strcmp(engine, "transforms"), trusted = !strcmp(engine, "trusted");
    char *argv[] = { (char *)ebc, "bench", (char *)rules, (char *)events, "--json", "--repeat",
                     rep, "--engine", with || trusted ? "index" : (char *)engine,
                     with ? "--transforms" : trusted ? "--trusted" : NULL, NULL };
    memset(out, 0, sizeof *out);
    char *text = capture(argv);
    if (!text) {
        fprintf(stderr, "bench: '%s bench %s %s' failed\n", ebc, rules, events);
        return false;
    }
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) {
        fprintf(stderr, "bench: ebc bench printed something that is not JSON\n");
        return false;
    }
#define NUM(key) cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, key))
    out->events_per_sec = NUM("events_per_sec");
    out->mb_per_sec = NUM("mb_per_sec");
    out->ns_per_event = NUM("ns_per_event");
    out->compile_seconds = NUM("compile_seconds");
    out->peak_rss_kb = (long)NUM("peak_rss_kb");
    out->rss_kb = (long)NUM("rss_kb");
    out->program_bytes = NUM("program_bytes");
    out->events = (unsigned long)NUM("events");
    out->invalid = (unsigned long)NUM("invalid");
    out->rules = (unsigned long)NUM("rules");
    out->transforms = NUM("transforms");
    out->transforms_per_sec = NUM("transforms_per_sec");
    out->transforms_alone_per_sec = NUM("transforms_alone_per_sec");
#undef NUM
    out->counts = cJSON_DetachItemFromObjectCaseSensitive(j, "counts");
    cJSON_Delete(j);
    if (!cJSON_IsObject(out->counts)) {
        fprintf(stderr, "bench: ebc bench gave no counts\n");
        bench_result_free(out);
        return false;
    }
    return true;
}

void bench_result_free(bench_result *r)
{
    cJSON_Delete(r->counts);
    r->counts = NULL;
}

/* Do two runs' counts agree?  ebc prints them in rule order, so a walk in step is enough
 * (cJSON_Compare looks every key up: quadratic with 100k rules). */
bool bench_same_counts(const cJSON *a, const cJSON *b)
{
    const cJSON *x = a->child, *y = b->child;
    for (; x && y; x = x->next, y = y->next)
        if (strcmp(x->string, y->string) || x->valuedouble != y->valuedouble)
            return false;
    return !x && !y;
}

static void sort_doubles(double *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && v[k - 1] > v[k]; k--) {
            double x = v[k];
            v[k] = v[k - 1];
            v[k - 1] = x;
        }
}

/* `runs` measurements of RULES on EVENTS, each after one of BASE_RULES on BASE_EVENTS when
 * base_rules is not NULL; keeps the run with the median events/s, and the median ratio. */
static bool measure(const char *ebc, const char *base_rules, const char *base_events,
                    const char *rules, const char *events, int runs, int repeat,
                    const char *engine, bench_result *out, double *ratio, long *base_rss_kb)
{
    bench_result *all = calloc((size_t)runs, sizeof *all);
    double *ratios = calloc((size_t)runs, sizeof *ratios);
    if (!all || !ratios) {
        perror("bench");
        exit(2);
    }
    bool ok = true;
    int done = 0;
    for (; done < runs && ok; done++) {
        bench_result base = { 0 };
        if (base_rules) {
            if (!(ok = bench_ebc(ebc, base_rules, base_events, repeat, engine, &base)))
                break;
            bench_result_free(&base);
            if (done == 0 || base.rss_kb < *base_rss_kb)
                *base_rss_kb = base.rss_kb;
        }
        ok = bench_ebc(ebc, rules, events, repeat, engine, &all[done]);
        if (ok && base_rules)
            ratios[done] = all[done].events_per_sec / base.events_per_sec;
        if (ok && done > 0 && !bench_same_counts(all[0].counts, all[done].counts)) {
            fprintf(stderr, "bench: two runs of %s counted different matches\n", rules);
            ok = false;
        }
    }
    if (ok) {
        /* Sort the runs by events/s (few: insertion) and keep the middle one. */
        for (int i = 1; i < runs; i++)
            for (int k = i; k > 0 && all[k - 1].events_per_sec > all[k].events_per_sec; k--) {
                bench_result t = all[k];
                all[k] = all[k - 1];
                all[k - 1] = t;
            }
        *out = all[runs / 2];
        all[runs / 2].counts = NULL;
        sort_doubles(ratios, runs);
        if (ratio)
            *ratio = ratios[runs / 2];
    }
    for (int i = 0; i < done; i++)
        bench_result_free(&all[i]);
    free(all);
    free(ratios);
    return ok;
}

bool bench_median(const char *ebc, const char *rules, const char *events, int runs, int repeat,
                  const char *engine, bench_result *out)
{
    return measure(ebc, NULL, NULL, rules, events, runs, repeat, engine, out, NULL, NULL);
}

bool bench_paired(const char *ebc, const char *base_rules, const char *base_events,
                  const char *rules, const char *events, int runs, int repeat, bench_result *out,
                  double *ratio, long *base_rss_kb)
{
    return measure(ebc, base_rules, base_events, rules, events, runs, repeat, "index", out, ratio,
                   base_rss_kb);
}

bool bench_option(bench_options *o, int argc, char **argv, int *i)
{
    const char *a = argv[*i], *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    const char **slot = !strcmp(a, "--ebc") ? &o->ebc : !strcmp(a, "--data") ? &o->data
                      : !strcmp(a, "--work") ? &o->work : !strcmp(a, "--out") ? &o->out : NULL;
    if (!v || (!slot && (strcmp(a, "--runs") || atoi(v) <= 0)))
        return false;
    if (slot)
        *slot = v;
    else
        o->runs = atoi(v);
    *i += 1;
    return true;
}

bool bench_options_ready(const bench_options *o)
{
    return o->ebc && o->data && o->work && o->out && bench_mkdirs(o->work) && bench_mkdirs(o->out);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

double bench_compile(const char *ebc, const char *rules, const char *out, int runs)
{
    char *argv[] = { (char *)ebc, "compile", (char *)rules, "-o", (char *)out, NULL };
    double *t = calloc((size_t)runs, sizeof *t);
    if (!t) {
        perror("bench");
        exit(2);
    }
    for (int r = 0; r < runs; r++) {
        double start = now();
        char *text = capture(argv);
        t[r] = now() - start;
        if (!text) {
            fprintf(stderr, "bench: '%s compile %s' failed\n", ebc, rules);
            free(t);
            return -1;
        }
        free(text);
    }
    sort_doubles(t, runs);
    double m = t[runs / 2];
    free(t);
    return m;
}

void bench_machine(char *buf, size_t n)
{
    char model[256] = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            char *colon = strchr(line, ':');
            if (!strncmp(line, "model name", 10) && colon) {
                snprintf(model, sizeof model, "%s", colon + 2);
                model[strcspn(model, "\n")] = 0;
                break;
            }
        }
        fclose(f);
    }
    struct utsname u;
    if (uname(&u) != 0)
        strcpy(u.release, "?");
    time_t t = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&t));
    snprintf(buf, n, "%s, %ld cores, Linux %s, %s", model, sysconf(_SC_NPROCESSORS_ONLN),
             u.release, date);
}

bool bench_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "bench: cannot write %s: %s\n", path, strerror(errno));
        return false;
    }
    return true;
}

bool bench_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

bool bench_mkdirs(const char *dir)
{
    char *p = bench_fmt("%s", dir);
    for (char *s = p + 1;; s++) {
        bool end = *s == 0;
        if (*s == '/' || end) {
            *s = 0;
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                fprintf(stderr, "bench: cannot create %s: %s\n", p, strerror(errno));
                free(p);
                return false;
            }
            if (end)
                break;
            *s = '/';
        }
    }
    free(p);
    return true;
}

bool bench_gunzip(const char *src, const char *dst)
{
    struct stat a, b;
    if (stat(src, &a) != 0) {
        fprintf(stderr, "bench: %s: %s\n", src, strerror(errno));
        return false;
    }
    if (stat(dst, &b) == 0 && b.st_mtime >= a.st_mtime)
        return true;
    fprintf(stderr, "bench: decompressing %s\n", src);
    char *part = bench_fmt("%s.part", dst);
    pid_t pid = fork();
    if (pid == 0) {
        FILE *o = freopen(part, "w", stdout);
        if (!o)
            _exit(126);
        execlp("gzip", "gzip", "-dc", src, (char *)NULL);
        _exit(127);
    }
    int status = -1;
    if (pid > 0)
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
    bool ok = pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 && rename(part, dst) == 0;
    if (!ok) {
        fprintf(stderr, "bench: cannot decompress %s into %s\n", src, dst);
        unlink(part);
    }
    free(part);
    return ok;
}

bool bench_gnuplot(const char *script_path)
{
    pid_t pid = fork();
    if (pid == 0) {
        execlp("gnuplot", "gnuplot", script_path, (char *)NULL);
        _exit(127);
    }
    int status = -1;
    if (pid > 0)
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
    if (pid <= 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "bench: gnuplot failed or is missing (`make bench-deps` installs it); "
                        "the CSV is written, the chart is not\n");
        return false;
    }
    return true;
}

int bench_finish(bool draw, const char *gp, const char *script, const char *csv, const char *md,
                 const char *png, bool ok)
{
    if (draw && bench_write(gp, script))
        bench_gnuplot(gp);
    printf("results: %s, %s, %s\n", csv, md, png);
    if (!ok)
        fprintf(stderr, "bench: some match counts differ from the expected ones\n");
    return ok ? 0 : 1;
}
