/*
 * command.c — running a command for an exec target or a function transform (command.h).
 */
#define _GNU_SOURCE   /* pipe2, posix_spawn_file_actions_addclosefrom_np */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "command.h"
#include "ebd_int.h"

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(long ms)
{
    struct timespec ts = { 0, ms * 1000000 };
    nanosleep(&ts, NULL);
}

/* A command that stops reading its input must not kill this process: SIGPIPE is ignored once,
 * for the process (the daemon does the same); each command starts with it at its default. */
static pthread_once_t sigpipe_once = PTHREAD_ONCE_INIT;

static void ignore_sigpipe(void)
{
    signal(SIGPIPE, SIG_IGN);
}

/* Starts s with descriptors in, out (-1: /dev/null) and err as its 0, 1 and 2, in a process
 * group of its own, every signal at its default and none blocked (the daemon blocks SIGTERM,
 * SIGINT and SIGHUP in its threads and ignores SIGPIPE and SIGXFSZ: a command must not inherit
 * that).  Returns 0 or an errno. */
static int spawn(const cmd_spec *s, int in, int out, int err, pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    int e = posix_spawn_file_actions_init(&fa);
    if (e)
        return e;
    if ((e = posix_spawnattr_init(&at))) {
        posix_spawn_file_actions_destroy(&fa);
        return e;
    }
    e = posix_spawn_file_actions_adddup2(&fa, in, 0);
    if (!e)
        e = out >= 0 ? posix_spawn_file_actions_adddup2(&fa, out, 1)
                     : posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (!e)
        e = posix_spawn_file_actions_adddup2(&fa, err, 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    /* Ours are close-on-exec; this also closes what a library opened without it. */
    if (!e)
        e = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
    if (!e)
        e = posix_spawnattr_setsigmask(&at, &none);
    if (!e)
        e = posix_spawnattr_setsigdefault(&at, &all);
    if (!e)
        e = posix_spawnattr_setpgroup(&at, 0);
    if (!e)
        e = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                              POSIX_SPAWN_SETPGROUP);
    if (!e)
        e = posix_spawnp(pid, s->argv[0], &fa, &at, s->argv, s->envp);
    posix_spawnattr_destroy(&at);
    posix_spawn_file_actions_destroy(&fa);
    return e;
}

/* Has the command exited?  (It stays unreaped: its process group id cannot be reused yet.) */
static bool leader_exited(pid_t pid)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    return waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid;
}

/* Ends the command's process group: SIGTERM to all of it, SIGKILL CMD_GRACE_MS later to what is
 * left; reaps the command and returns its status.  The group is signalled first while the
 * command is unreaped (its id cannot belong to anyone else then); after the command is reaped,
 * the id stays taken as long as a member lives, so the later signals reach only the group's
 * members (another process would have to take the number and lead a group of that id within
 * the grace). */
static int end_group(pid_t pid, int pidfd)
{
    int status = 0;
    kill(-pid, SIGTERM);
    int64_t until = now_ms() + CMD_GRACE_MS;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid || (w < 0 && errno != EINTR))
            break;
        int64_t left = until - now_ms();
        if (left <= 0) {
            kill(-pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            return status;
        }
        struct pollfd p = { pidfd, POLLIN, 0 };
        if (pidfd < 0 || poll(&p, 1, (int)left) < 0)
            nap_ms(2);
    }
    /* The command is gone; what it started may not be. */
    while (kill(-pid, 0) == 0 && now_ms() < until)
        nap_ms(5);
    if (kill(-pid, 0) == 0)
        kill(-pid, SIGKILL);
    return status;
}

/* Reads what fd has now into the result: standard output up to the limit (past it: out_over),
 * standard error's first CMD_STDERR_KEEP bytes (the rest is counted as cut).  Returns false at
 * the end of the stream or on an error (the caller closes fd), true otherwise. */
static bool take(int fd, bool is_out, const cmd_spec *s, sbuf *o, cmd_result *r)
{
    char buf[65536];
    ssize_t k = read(fd, buf, sizeof buf);
    if (k < 0)
        return errno == EINTR || errno == EAGAIN;
    if (k == 0)
        return false;
    size_t n = (size_t)k;
    if (is_out) {
        if (o->n + n > s->out_limit) {
            r->out_over = true;
            n = s->out_limit - o->n;
        }
        sb_put(o, buf, n);
        r->oom |= o->oom;
    } else {
        size_t keep = n < CMD_STDERR_KEEP - r->nerr ? n : CMD_STDERR_KEEP - r->nerr;
        memcpy(r->err + r->nerr, buf, keep);
        r->nerr += keep;
        r->err[r->nerr] = 0;
        r->err_cut |= keep < n;
    }
    return true;
}

/* After the group has ended: what is still in the pipes (written just before the end), without
 * waiting for more; bounded, in case something outside the group holds a pipe and writes. */
static void drain(int fd, bool is_out, const cmd_spec *s, sbuf *o, cmd_result *r)
{
    if (fd < 0)
        return;
    fcntl(fd, F_SETFL, O_NONBLOCK);
    for (int i = 0; i < 64 && !r->out_over && !r->oom; i++) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 0) <= 0 || !take(fd, is_out, s, o, r))
            break;
    }
}

static void close_all(int a, int b, int c)
{
    int fds[3] = { a, b, c };
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

void cmd_run(const cmd_spec *s, cmd_result *r)
{
    memset(r, 0, sizeof *r);
    pthread_once(&sigpipe_once, ignore_sigpipe);
    int in[2] = { -1, -1 }, out[2] = { -1, -1 }, er[2] = { -1, -1 };
    pid_t pid = 0;
    if (pipe2(in, O_CLOEXEC) != 0 || (s->out_limit && pipe2(out, O_CLOEXEC) != 0) ||
        pipe2(er, O_CLOEXEC) != 0)
        r->spawn_errno = errno;
    else
        r->spawn_errno = spawn(s, in[0], out[1], er[1], &pid);
    close_all(in[0], out[1], er[1]);       /* the command's ends */
    if (r->spawn_errno) {
        close_all(in[1], out[0], er[0]);
        return;
    }
    int wfd = in[1], ofd = out[0], efd = er[0];
    /* A descriptor that becomes readable when the command exits; without one (before Linux
     * 5.3), the loop looks every 5 ms. */
#ifdef SYS_pidfd_open
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
#else
    int pidfd = -1;
#endif
    sbuf o = { 0 };
    size_t sent = 0;
    fcntl(wfd, F_SETFL, O_NONBLOCK);
    if (s->ninput == 0) {
        close(wfd);
        wfd = -1;
    }
    int64_t deadline = now_ms() + s->timeout_ms;
    bool exited = false;
    while (!exited && !r->out_over && !r->oom) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            r->timed_out = true;
            break;
        }
        /* poll skips the negative descriptors: those closed, or not there */
        struct pollfd p[4] = { { ofd, POLLIN, 0 }, { efd, POLLIN, 0 }, { wfd, POLLOUT, 0 },
                               { pidfd, POLLIN, 0 } };
        int k = poll(p, 4, pidfd >= 0 || left < 5 ? (int)left : 5);
        if (k < 0 && errno != EINTR) {
            r->timed_out = true;      /* cannot watch the command: stop it */
            break;
        }
        if (k < 0)
            continue;
        if (wfd >= 0 && p[2].revents) {
            ssize_t w = write(wfd, s->input + sent, s->ninput - sent);
            if (w > 0)
                sent += (size_t)w;
            if ((w < 0 && errno != EAGAIN && errno != EINTR) || sent == s->ninput) {
                close(wfd);       /* all written, or the command does not read: fine */
                wfd = -1;
            }
        }
        if (ofd >= 0 && p[0].revents && !take(ofd, true, s, &o, r)) {
            close(ofd);
            ofd = -1;
        }
        if (efd >= 0 && p[1].revents && !take(efd, false, s, &o, r)) {
            close(efd);
            efd = -1;
        }
        exited = (pidfd < 0 || p[3].revents) && leader_exited(pid);
    }
    if (wfd >= 0)
        close(wfd);
    r->status = end_group(pid, pidfd);
    drain(ofd, true, s, &o, r);
    drain(efd, false, s, &o, r);
    close_all(ofd, efd, pidfd);
    r->out = o.v;
    r->nout = o.n;
    if (s->out_limit && !r->out && !r->oom)
        r->out = calloc(1, 1);
    r->oom |= s->out_limit && !r->out;
}

void cmd_result_free(cmd_result *r)
{
    free(r->out);
    r->out = NULL;
}

void cmd_stderr_text(const cmd_result *r, char *buf, size_t cap)
{
    size_t a = 0, b = r->nerr, o = 0;
    if (cap < 4) {
        if (cap)
            buf[0] = 0;
        return;
    }
    while (a < b && strchr(" \t\r\n", r->err[a]))
        a++;
    while (b > a && strchr(" \t\r\n", r->err[b - 1]))
        b--;
    while (a < b) {
        uint32_t cp;
        size_t k = vm_utf8_decode(r->err + a, b - a, &cp);
        if (k == 0 && r->err_cut && b - a < 4)
            break;                /* a character cut where the rest was dropped */
        if (o + (k ? k : 1) + 4 > cap)
            break;
        if (k == 0) {
            buf[o++] = '?';       /* not UTF-8 */
            a++;
            continue;
        }
        for (size_t i = 0; i < k; i++, a++) {
            unsigned char c = (unsigned char)r->err[a];
            buf[o++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;    /* one line */
        }
    }
    if (r->err_cut || a < b) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = 0;
}

/* "N MiB" when the limit is a whole number of MiB, else "N bytes". */
static void size_text(size_t n, char *buf, size_t cap)
{
    if (n && n % ((size_t)1 << 20) == 0)
        snprintf(buf, cap, "%zu MiB", n >> 20);
    else
        snprintf(buf, cap, "%zu bytes", n);
}

bool cmd_describe(const cmd_spec *s, const cmd_result *r, char *buf, size_t cap)
{
    char why[80], note[CMD_STDERR_KEEP + 8], size[40];
    cmd_stderr_text(r, note, sizeof note);
    if (r->spawn_errno)
        snprintf(why, sizeof why, "cannot be run: %s", strerror(r->spawn_errno));
    else if (r->oom)
        snprintf(why, sizeof why, "ran out of memory for its output");
    else if (r->out_over) {
        size_text(s->out_limit, size, sizeof size);
        snprintf(why, sizeof why, "wrote more than %s on its standard output", size);
    } else if (r->timed_out)
        snprintf(why, sizeof why, "took longer than %u ms", s->timeout_ms);
    else if (WIFSIGNALED(r->status))
        snprintf(why, sizeof why, "was killed by signal %d", WTERMSIG(r->status));
    else if (WEXITSTATUS(r->status) != 0)
        snprintf(why, sizeof why, "exited with status %d", WEXITSTATUS(r->status));
    else {
        if (cap)
            buf[0] = 0;
        return false;
    }
    snprintf(buf, cap, "%s%s%s", why, note[0] ? ": " : "", note);
    return true;
}

char **cmd_env(const char *const *names, const char *const *values, size_t n)
{
    static const char *const kept[] = { "PATH", "HOME", "LANG", "TZ" };
    char **env = calloc(4 + n + 1, sizeof *env);
    size_t k = 0;
    bool ok = env != NULL;
    for (size_t i = 0; ok && i < 4 + n; i++) {
        const char *name = i < 4 ? kept[i] : names[i - 4];
        const char *value = i < 4 ? getenv(name) : values[i - 4];
        if (i == 0 && !value)
            value = "/usr/local/bin:/usr/bin:/bin";
        for (size_t j = 0; i < 4 && j < n; j++)
            if (!strcmp(names[j], name))
                value = NULL;          /* the rules set it */
        if (!value)
            continue;
        size_t len = strlen(name) + strlen(value) + 2;
        ok = (env[k] = malloc(len)) != NULL;
        if (ok)
            snprintf(env[k++], len, "%s=%s", name, value);
    }
    if (!ok) {
        cmd_env_free(env);
        return NULL;
    }
    return env;
}

void cmd_env_free(char **env)
{
    for (char **e = env; e && *e; e++)
        free(*e);
    free(env);
}
