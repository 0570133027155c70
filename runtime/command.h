/*
 * command.h — running a command: an exec target's (delivery/) or a function transform's
 * (function.c), both the same way (docs/ebd.md, "Commands").  Internal to runtime/.
 */
#ifndef EBR_COMMAND_H
#define EBR_COMMAND_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How much of a command's standard error is kept for messages; the rest is read and dropped. */
#define CMD_STDERR_KEEP 300
/* How long what is left of a command's process group has between SIGTERM and SIGKILL. */
#define CMD_GRACE_MS 1000
/* The most descriptors a running command waits on (cmd_job_fds). */
#define CMD_MAX_FDS 4

typedef struct {
    char *const *argv;       /* argv[0]: a path, or a name looked up in PATH */
    char *const *envp;       /* the command's whole environment (cmd_env) */
    const char *input;       /* written to its standard input, which is then closed */
    size_t ninput;
    uint32_t timeout_ms;
    size_t out_limit;        /* keep up to this much of its standard output; 0: /dev/null */
} cmd_spec;

typedef struct {
    int spawn_errno;         /* not started, for this reason; nothing below holds */
    int status;              /* as waitpid gives it */
    bool timed_out;          /* stopped at its timeout */
    bool out_over;           /* stopped when its standard output went past out_limit */
    bool oom;                /* stopped: no memory for its output */
    char *out;               /* its standard output (malloc'd, NUL-terminated), or NULL */
    size_t nout;
    char err[CMD_STDERR_KEEP + 1];   /* the start of its standard error, NUL-terminated */
    size_t nerr;
    bool err_cut;            /* it wrote more than that to standard error */
} cmd_result;

/* Runs a command to its end.  It starts (posix_spawn) in a process group of its own, with every
 * signal at its default action and none blocked, the environment s->envp, and no descriptor of
 * this process but its three pipes (standard output on /dev/null when not kept).  The input is
 * written while both outputs are read, so a chatty command never blocks.  When the command
 * exits, times out or writes more than out_limit, its process group gets SIGTERM, and whatever
 * is left of it SIGKILL CMD_GRACE_MS later: nothing it started outlives it.  Fills *r (free its
 * output with cmd_result_free). */
void cmd_run(const cmd_spec *s, cmd_result *r);
/* cmd_run, asking stop(arg) every 50 ms at most: when it says so the command is abandoned
 * (cmd_job_abort) and false returned, *r then empty; true when it ran to its end. */
bool cmd_run_until(const cmd_spec *s, cmd_result *r, bool (*stop)(void *), void *arg);
void cmd_result_free(cmd_result *r);

/* The same run, as a job that a thread drives among others from its own poll loop, never
 * blocking in it (cmd_run is such a loop for one job).  The loop asks cmd_job_fds what to wait
 * for, waits (poll, curl_multi_poll's extra descriptors...), and calls cmd_job_step when one of
 * those descriptors is ready or the deadline has come; a step at any other moment is harmless.
 * After each step the descriptors and the deadline may differ: ask again.  A job belongs to one
 * thread at a time; nothing else in the process may reap its command (waitpid(-1), SIGCHLD set
 * to SIG_IGN). */
typedef struct cmd_job cmd_job;

/* Starts s as cmd_run does, without waiting for anything.  Only s->input is used after this
 * returns: it must stay valid and unchanged until the job ends (cmd_job_end or cmd_job_abort);
 * argv and envp may go at once.  Returns NULL only when out of memory; a command that cannot
 * be started is a job already finished, with the reason in its result's spawn_errno. */
cmd_job *cmd_start(const cmd_spec *s);

/* Starts the thread that starts every command from then on, so that commands keep the priority
 * of the thread that called this (ebd: its main thread, before the delivery threads lower
 * theirs).  False if the thread cannot be made: commands then start where they are asked for. */
bool cmd_spawner_start(void);

/* Fills fds (room for CMD_MAX_FDS) with the descriptors the job waits on now, and for what
 * (POLLIN or POLLOUT in .events; .revents 0); returns how many.  *deadline_ms is the time
 * (CLOCK_MONOTONIC, in ms) by which the job must be stepped even if none is ready: its timeout,
 * the end of the grace after SIGTERM, a look every 5 ms while the group is ending or when the
 * kernel has no pidfd (before Linux 5.3); -1 when only a descriptor can move it on; 0 when it
 * is finished (step it: it says so). */
int cmd_job_fds(const cmd_job *j, struct pollfd *fds, int64_t *deadline_ms);

/* Moves the job on without blocking: writes and reads what its pipes take and have now,
 * notices the command's exit, its timeout and the end of the grace, signals its group and reaps
 * it.  now_ms is the time on CLOCK_MONOTONIC in ms.  Returns true once the job is finished (and
 * then on every later call). */
bool cmd_job_step(cmd_job *j, int64_t now_ms);

/* Moves a finished job's result into *r (free its output with cmd_result_free) and frees the
 * job.  Given a job that is not finished, ends it first as cmd_job_abort would. */
void cmd_job_end(cmd_job *j, cmd_result *r);

/* Abandons a job, finished or not (the daemon stops): the command's group gets SIGTERM and at
 * once SIGKILL, the command is reaped (a wait for a process that SIGKILL ends), its descriptors
 * are closed and the job freed, result included. */
void cmd_job_abort(cmd_job *j);

/* Why the command failed, for a message: "took longer than 200 ms", "exited with status 3",
 * "was killed by signal 9", "wrote more than 64 MiB", "cannot be run: No such file or
 * directory", followed by ": " and the start of its standard error when it wrote any (valid
 * UTF-8, white space around it dropped, "..." when cut).  Returns false, with "", when the
 * command succeeded (exit status 0, in time). */
bool cmd_describe(const cmd_spec *s, const cmd_result *r, char *buf, size_t cap);

/* The start of the command's standard error as cmd_describe quotes it ("" when none). */
void cmd_stderr_text(const cmd_result *r, char *buf, size_t cap);

/* A command's environment: PATH (by default /usr/local/bin:/usr/bin:/bin), HOME, LANG and TZ
 * as this process has them, then NAME=VALUE for each of the n pairs (which take precedence).
 * NULL-terminated; NULL when out of memory.  Freed by cmd_env_free. */
char **cmd_env(const char *const *names, const char *const *values, size_t n);
void cmd_env_free(char **env);

#endif
