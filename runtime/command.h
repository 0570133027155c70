/*
 * command.h — running a command: an exec target's (deliver.c) or a function transform's
 * (function.c), both the same way (docs/ebd.md, "Commands").  Internal to runtime/.
 */
#ifndef EBR_COMMAND_H
#define EBR_COMMAND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How much of a command's standard error is kept for messages; the rest is read and dropped. */
#define CMD_STDERR_KEEP 300
/* How long what is left of a command's process group has between SIGTERM and SIGKILL. */
#define CMD_GRACE_MS 1000

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
void cmd_result_free(cmd_result *r);

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
