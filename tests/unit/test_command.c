/*
 * test_command.c — commands run as jobs (runtime/command.h: cmd_start, cmd_job_fds,
 * cmd_job_step, cmd_job_end, cmd_job_abort), many at once from one poll loop as a delivery
 * thread drives them.  cmd_run itself is tested through function exec in test_function.c.
 * No check here bounds a duration tighter than several seconds: the machine may be loaded.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../runtime/command.h"

static int64_t now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One job of a test, and what the loop saw of it. */
typedef struct {
    char *argv[6];
    cmd_spec spec;
    cmd_job *job;
    int64_t deadline;        /* as cmd_job_fds gave it last */
    bool done;
    cmd_result r;
    int64_t started, ended;  /* ms, before cmd_start and after cmd_job_end */
    int64_t spawned;         /* ms, after cmd_start: its timeout is before spawned + timeout_ms */
    bool saw_grace;          /* a step after its timeout left it unfinished: it was ending */
} slot;

static char **env;

static void setup(void)
{
    env = cmd_env(NULL, NULL, 0);
    cr_assert_not_null(env);
}

static void teardown(void)
{
    cmd_env_free(env);
}

/* Starts `sh -c script sh arg` (arg may be NULL) with input, keeping out_limit of its output. */
static void start(slot *s, const char *script, const char *arg, const char *input, size_t ninput,
                  uint32_t timeout_ms, size_t out_limit)
{
    memset(s, 0, sizeof *s);
    s->argv[0] = "/bin/sh";
    s->argv[1] = "-c";
    s->argv[2] = (char *)script;
    s->argv[3] = "sh";
    s->argv[4] = (char *)arg;
    s->spec = (cmd_spec){ s->argv, env, input, ninput, timeout_ms, out_limit };
    s->started = now();
    s->job = cmd_start(&s->spec);
    s->spawned = now();
    cr_assert_not_null(s->job);
    s->deadline = 0;
}

/* Steps slot s at time t; ends its job when finished.  Returns whether it is. */
static bool step(slot *s, int64_t t)
{
    if (s->done)
        return true;
    if (!cmd_job_step(s->job, t)) {
        s->saw_grace |= t >= s->spawned + s->spec.timeout_ms;
        return false;
    }
    s->ended = now();
    s->done = true;
    cmd_job_end(s->job, &s->r);
    s->job = NULL;
    return true;
}

/* Drives the n jobs from one poll loop until all are finished, or until stop(arg) says so
 * (checked at each turn).  A job is stepped when one of its descriptors is ready or its
 * deadline has come; with step_all, at every turn whatever it waits for (spurious steps).
 * Returns the number of turns. */
static long drive(slot *v, int n, bool step_all, bool (*stop)(void *), void *arg)
{
    struct pollfd *p = calloc((size_t)n * CMD_MAX_FDS, sizeof *p);
    int *owner = calloc((size_t)n * CMD_MAX_FDS, sizeof *owner);
    bool *ready = calloc((size_t)n, sizeof *ready);
    cr_assert(p && owner && ready);
    long turns = 0;
    for (;; turns++) {
        int m = 0, left = 0;
        int64_t next = -1;
        for (int i = 0; i < n; i++) {
            if (v[i].done)
                continue;
            left++;
            int k = cmd_job_fds(v[i].job, p + m, &v[i].deadline);
            cr_assert(k >= 0 && k <= CMD_MAX_FDS);
            for (int j = 0; j < k; j++)
                owner[m + j] = i;
            m += k;
            if (v[i].deadline >= 0 && (next < 0 || v[i].deadline < next))
                next = v[i].deadline;
        }
        if (!left || (stop && stop(arg)))
            break;
        int64_t t = now();
        int ms = next < 0 ? 1000 : next <= t ? 0 : next - t > 1000 ? 1000 : (int)(next - t);
        if (stop && ms > 10)
            ms = 10;                    /* stop looks at something no descriptor tells */
        int k = poll(p, (nfds_t)m, ms);
        cr_assert(k >= 0 || errno == EINTR, "poll: %s", strerror(errno));
        t = now();
        for (int i = 0; i < n; i++)
            ready[i] = step_all || (v[i].deadline >= 0 && v[i].deadline <= t);
        for (int j = 0; j < m; j++)
            if (p[j].revents)
                ready[owner[j]] = true;
        for (int i = 0; i < n; i++)
            if (ready[i])
                step(&v[i], t);
    }
    free(p);
    free(owner);
    free(ready);
    return turns;
}

/* Has process pid ended (gone, or a zombie)? */
static bool ended(long pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    return !p || p[1] == 0 || p[2] == 'Z';
}

/* Waits up to 10 s for pid to end; kills it if it does not (so that a failure leaves nothing). */
static bool ends(long pid)
{
    for (int i = 0; i < 1000 && !ended(pid); i++)
        usleep(10000);
    bool gone = ended(pid);
    if (!gone)
        kill((pid_t)pid, SIGKILL);
    return gone;
}

#define MIB ((size_t)1 << 20)

/* For drive's stop: has the file at path its two numbers yet? */
static bool file_written(void *path)
{
    FILE *f = fopen(path, "r");
    long a = 0, b = 0;
    bool ok = f && fscanf(f, "%ld %ld", &a, &b) == 2;
    if (f)
        fclose(f);
    return ok;
}

/* For drive's stop: is slot s past its timeout and still unfinished? */
static bool ending(void *s)
{
    return ((slot *)s)->saw_grace;
}

/* 50 commands, each given 1 MiB, all driven by one loop: each gets its whole input and ends
 * with its own status. */
Test(command, many_jobs_from_one_loop, .init = setup, .fini = teardown, .timeout = 120)
{
    enum { N = 50 };
    char *input = malloc(MIB);
    cr_assert_not_null(input);
    memset(input, 'x', MIB);
    static slot v[N];
    char args[N][12];
    for (int i = 0; i < N; i++) {
        snprintf(args[i], sizeof args[i], "%d", i + 1);
        start(&v[i], "wc -c; exit $1", args[i], input, MIB, 60000, 64);
    }
    drive(v, N, false, NULL, NULL);
    for (int i = 0; i < N; i++) {
        cmd_result *r = &v[i].r;
        cr_expect_eq(r->spawn_errno, 0, "job %d: %s", i, strerror(r->spawn_errno));
        cr_expect(!r->timed_out && !r->out_over && !r->oom, "job %d", i);
        cr_expect(WIFEXITED(r->status) && WEXITSTATUS(r->status) == i + 1,
                  "job %d: status %#x (stderr: %s)", i, r->status, r->err);
        cr_expect_not_null(r->out);
        cr_expect_eq(r->out ? atol(r->out) : 0, (long)MIB, "job %d read %s", i, r->out);
        cmd_result_free(r);
    }
    free(input);
}

/* Commands that answer while they read (cat) never block on a full pipe: their output comes
 * back whole.  Every job is stepped at every turn, ready or not: spurious steps are harmless. */
Test(command, chatty_jobs_with_spurious_steps, .init = setup, .fini = teardown, .timeout = 120)
{
    enum { N = 8 };
    static slot v[N];
    char *input[N];
    for (int i = 0; i < N; i++) {
        input[i] = malloc(MIB);
        cr_assert_not_null(input[i]);
        for (size_t k = 0; k < MIB; k++)
            input[i][k] = (char)('a' + (k * 7 + (size_t)i) % 26);
        start(&v[i], i % 2 ? "cat" : "cat; echo done >&2", NULL, input[i], MIB, 60000, 2 * MIB);
    }
    drive(v, N, true, NULL, NULL);
    for (int i = 0; i < N; i++) {
        cmd_result *r = &v[i].r;
        cr_expect(WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0, "job %d: status %#x", i,
                  r->status);
        cr_expect(!r->timed_out && !r->out_over && !r->oom, "job %d", i);
        cr_expect_eq(r->nout, MIB, "job %d wrote %zu bytes", i, r->nout);
        cr_expect(r->nout == MIB && memcmp(r->out, input[i], MIB) == 0, "job %d: other bytes", i);
        cr_expect_str_eq(r->err, i % 2 ? "" : "done\n", "job %d", i);
        cmd_result_free(r);
        free(input[i]);
    }
}

/* A command past its timeout ends at about its timeout while the loop goes on with the others;
 * one that ignores SIGTERM is ending (the grace is a state of the job, not a sleep in a step)
 * until SIGKILL at the end of the grace. */
Test(command, a_job_past_its_timeout_does_not_hold_the_loop, .init = setup, .fini = teardown,
     .timeout = 120)
{
    enum { N = 12 };
    static slot v[N];
    char args[N][12], path[64];
    snprintf(path, sizeof path, "/tmp/ebr_test_command_%d", (int)getpid());
    unlink(path);
    start(&v[0], "sleep 30", NULL, NULL, 0, 4000, 0);
    start(&v[1], "trap '' TERM; echo $$ > \"$1\"; sleep 30", path, "in", 2, 3000, 0);
    for (int i = 2; i < N; i++) {
        snprintf(args[i], sizeof args[i], "%d", i);
        start(&v[i], "exit $1", args[i], NULL, 0, 60000, 0);
    }
    /* Right after the step that found v[1] past its timeout, v[1] still runs: that step sent
     * SIGTERM (ignored) and returned; it did not wait out the grace. */
    drive(v, N, false, ending, &v[1]);
    cr_assert(!v[1].done, "ended in the step that found it past its timeout: the grace was "
              "waited for");
    FILE *f = fopen(path, "r");
    long pid = 0;
    cr_assert(f && fscanf(f, "%ld", &pid) == 1, "the command did not start in 3 s");
    fclose(f);
    unlink(path);
    cr_expect(!ended(pid), "the step at the timeout waited for the end of the grace");
    drive(v, N, false, NULL, NULL);

    cmd_result *r = &v[0].r;
    int64_t took = v[0].ended - v[0].started;
    cr_expect(r->timed_out);
    cr_expect(WIFSIGNALED(r->status) && WTERMSIG(r->status) == SIGTERM, "status %#x", r->status);
    cr_expect_geq(took, 4000, "ended before its timeout: %lld ms", (long long)took);
    cr_expect_lt(took, 25000, "waited for the command (%lld ms)", (long long)took);

    r = &v[1].r;
    took = v[1].ended - v[1].started;
    cr_expect(r->timed_out);
    cr_expect(WIFSIGNALED(r->status) && WTERMSIG(r->status) == SIGKILL, "status %#x", r->status);
    cr_expect(v[1].saw_grace, "timed out and ended in the same step");
    cr_expect_geq(took, 3000 + CMD_GRACE_MS, "killed before the grace ended: %lld ms",
                  (long long)took);
    cr_expect_lt(took, 25000, "waited for the command (%lld ms)", (long long)took);

    for (int i = 2; i < N; i++) {
        r = &v[i].r;
        cr_expect(WIFEXITED(r->status) && WEXITSTATUS(r->status) == i, "job %d: status %#x", i,
                  r->status);
        cr_expect(!r->timed_out);
        cr_expect_lt(v[i].ended, v[0].ended, "job %d ended after the timed-out one", i);
    }
    for (int i = 0; i < N; i++)
        cmd_result_free(&v[i].r);
}

/* What the command starts in the background ends with it: at once when it keeps SIGTERM's
 * default, SIGKILL at the end of the grace when it ignores SIGTERM. */
Test(command, background_children_end_with_the_job, .init = setup, .fini = teardown, .timeout = 60)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/ebr_test_command_%d", (int)getpid());
    unlink(path);
    slot v[3];
    start(&v[0], "sleep 30 & echo $!", NULL, NULL, 0, 20000, 64);
    start(&v[1], "trap '' TERM; sleep 30 >/dev/null 2>&1 & echo $!", NULL, NULL, 0, 20000, 64);
    /* (the command ends once its child has set its trap) */
    start(&v[2], "(trap 'echo TERM > \"$1\"; exit 0' TERM; echo > \"$1\"; sleep 30 & wait) & "
          "while [ ! -e \"$1\" ]; do sleep 0.01; done; echo $!", path, NULL, 0, 20000, 64);
    drive(v, 3, false, NULL, NULL);
    for (int i = 0; i < 3; i++) {
        cmd_result *r = &v[i].r;
        cr_assert(WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0, "job %d: status %#x", i,
                  r->status);
        cr_expect(!r->timed_out);
        long pid = r->out ? atol(r->out) : 0;
        cr_assert_gt(pid, 0, "job %d wrote '%s'", i, r->out);
        cr_expect(ends(pid), "job %d: its child %ld still runs", i, pid);
        cmd_result_free(r);
    }
    cr_expect_geq(v[1].ended - v[1].started, CMD_GRACE_MS, "the child ignoring SIGTERM was not "
                  "given its grace");
    char got[16] = "";
    FILE *f = fopen(path, "r");
    if (f) {
        if (!fgets(got, sizeof got, f))
            got[0] = 0;
        fclose(f);
    }
    unlink(path);
    cr_expect_str_eq(got, "TERM\n", "the group did not get SIGTERM");
}

/* An abandoned job ends at once, whatever its state, and leaves no process behind. */
Test(command, abort_is_bounded_and_leaves_nothing, .init = setup, .fini = teardown, .timeout = 60)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/ebr_test_command_%d", (int)getpid());
    unlink(path);

    /* running: the command and its background child */
    slot s;
    start(&s, "sleep 30 & echo $$ $! > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; wait", path, "x", 1,
          30000, 0);
    drive(&s, 1, false, file_written, path);
    cr_assert(!s.done, "the command ended by itself");
    long leader = 0, child = 0;
    FILE *f = fopen(path, "r");
    cr_assert(f && fscanf(f, "%ld %ld", &leader, &child) == 2);
    fclose(f);
    unlink(path);
    int64_t a = now();
    cmd_job_abort(s.job);
    int64_t took = now() - a;
    cr_expect_lt(took, 10000, "abort took %lld ms", (long long)took);
    cr_expect(ended(leader), "the command %ld was not reaped", leader);
    cr_expect(ends(child), "its child %ld still runs", child);

    /* ending: past its timeout, SIGTERM ignored, in its grace */
    start(&s, "trap '' TERM; sleep 30", NULL, NULL, 0, 200, 0);
    drive(&s, 1, false, ending, &s);
    cr_assert(!s.done, "ended in the step that found it past its timeout");
    a = now();
    cmd_job_abort(s.job);
    took = now() - a;
    cr_expect_lt(took, 10000, "abort took %lld ms", (long long)took);

    /* just started, never stepped, writing all it can */
    start(&s, "yes", NULL, NULL, 0, 30000, MIB);
    a = now();
    cmd_job_abort(s.job);
    took = now() - a;
    cr_expect_lt(took, 10000, "abort took %lld ms", (long long)took);
}

/* A command that cannot start is a job already finished: nothing to wait for, and why. */
Test(command, a_command_that_cannot_start_is_a_finished_job, .init = setup, .fini = teardown)
{
    const char *names[] = { "/nonexistent/ebr-no-such-program", "ebr-no-such-program" };
    for (int i = 0; i < 2; i++) {
        char *argv[] = { (char *)names[i], NULL };
        cmd_spec s = { argv, env, "x", 1, 1000, 64 };
        cmd_job *j = cmd_start(&s);
        cr_assert_not_null(j);
        struct pollfd p[CMD_MAX_FDS];
        int64_t deadline = -1;
        cr_expect_eq(cmd_job_fds(j, p, &deadline), 0);
        cr_expect_eq(deadline, 0, "a finished job asks to be stepped now");
        cr_expect(cmd_job_step(j, now()));
        cr_expect(cmd_job_step(j, now()), "still finished");
        cmd_result r;
        cmd_job_end(j, &r);
        cr_expect_eq(r.spawn_errno, ENOENT, "%s: %s", names[i], strerror(r.spawn_errno));
        cr_expect_null(r.out);
        char why[400];
        cr_expect(cmd_describe(&s, &r, why, sizeof why));
        cr_expect(strstr(why, "cannot be run: "), "%s", why);
        cmd_result_free(&r);

        cmd_run(&s, &r);
        cr_expect_eq(r.spawn_errno, ENOENT, "cmd_run %s: %s", names[i], strerror(r.spawn_errno));
        cmd_result_free(&r);
        j = cmd_start(&s);
        cr_assert_not_null(j);
        cmd_job_abort(j);
    }
}
