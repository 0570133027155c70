/*
 * command.c — running a command for an exec target or a function transform (command.h).
 */
#define _GNU_SOURCE   /* pipe2, posix_spawn_file_actions_addclosefrom_np */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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
static int spawn_now(const cmd_spec *s, int in, int out, int err, pid_t *pid)
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

/* The spawner: a thread that starts the commands for the others (cmd_spawner_start).  A child
 * inherits its starter's niceness, and the daemon's delivery threads run below the ingest
 * threads (nice 19, runtime/delivery/deliver.c): without it, every command of an exec target or a
 * function transform would run at that lower priority too, and an unprivileged daemon could not
 * raise it back.  Started before those threads, the spawner keeps the daemon's own. */
typedef struct spawn_req {
    const cmd_spec *s;
    int in, out, err, result;
    pid_t *pid;
    bool done;
    struct spawn_req *next;
} spawn_req;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t ask, answer;
    bool running;
    spawn_req *head, *tail;
} spawner = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
              false, NULL, NULL };

static void *spawner_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ebd-spawner");   /* (top -H, ps -L) */
    (void)arg;
    pthread_mutex_lock(&spawner.mu);
    for (;;) {
        while (!spawner.head)
            pthread_cond_wait(&spawner.ask, &spawner.mu);
        spawn_req *r = spawner.head;
        if (!(spawner.head = r->next))
            spawner.tail = NULL;
        pthread_mutex_unlock(&spawner.mu);
        int e = spawn_now(r->s, r->in, r->out, r->err, r->pid);
        pthread_mutex_lock(&spawner.mu);
        r->result = e;
        r->done = true;
        pthread_cond_broadcast(&spawner.answer);
    }
    return NULL;
}

bool cmd_spawner_start(void)
{
    pthread_attr_t at;
    pthread_t t;
    if (pthread_attr_init(&at))
        return false;
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    bool ok = pthread_create(&t, &at, spawner_main, NULL) == 0;
    pthread_attr_destroy(&at);
    pthread_mutex_lock(&spawner.mu);
    spawner.running = ok;
    pthread_mutex_unlock(&spawner.mu);
    return ok;
}

/* Starts s through the spawner when there is one (the daemon), else here (ebc, the tests). */
static int spawn(const cmd_spec *s, int in, int out, int err, pid_t *pid)
{
    pthread_mutex_lock(&spawner.mu);
    if (!spawner.running) {
        pthread_mutex_unlock(&spawner.mu);
        return spawn_now(s, in, out, err, pid);
    }
    spawn_req r = { s, in, out, err, 0, pid, false, NULL };
    if (spawner.tail)
        spawner.tail->next = &r;
    else
        spawner.head = &r;
    spawner.tail = &r;
    pthread_cond_signal(&spawner.ask);
    while (!r.done)
        pthread_cond_wait(&spawner.answer, &spawner.mu);
    pthread_mutex_unlock(&spawner.mu);
    return r.result;
}

/* A running command: the state of cmd_run's loop, kept between steps. */
enum { RUNNING, ENDING, KILLED, DONE };

struct cmd_job {
    cmd_spec s;              /* a copy; only input, timeout_ms and out_limit used after the start */
    cmd_result r;
    sbuf out;
    pid_t pid;
    int wfd, ofd, efd;       /* our ends of its pipes, -1 when closed or not there */
    int pidfd;               /* readable when the command exits; -1 without pidfd_open */
    size_t sent;             /* how much of the input is written */
    int state;               /* RUNNING: pipes served until it exits, times out or writes too
                              * much; ENDING: its group has had SIGTERM, the grace runs;
                              * KILLED: SIGKILL sent, the command not yet reaped; DONE */
    bool reaped;
    int64_t until;           /* RUNNING: its timeout; ENDING, KILLED: the end of the grace */
    int64_t wake;            /* the deadline cmd_job_fds reports */
};

/* How often a job looks when no descriptor can tell it (no pidfd; a group being waited for). */
#define LOOK_MS 5

static int64_t earlier(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* Has the command exited?  (It stays unreaped: its process group id cannot be reused yet.)
 * True also when it cannot be waited for at all (someone else reaped it). */
static bool leader_exited(pid_t pid)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int e = waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT);
    return e == 0 ? si.si_pid == pid : errno != EINTR;
}

/* Reaps the command if it has exited (block: waits for it); its status goes to the result.
 * Returns whether it is reaped (or cannot be waited for: reaped by someone else). */
static bool reap(cmd_job *j, bool block)
{
    for (;;) {
        int status = 0;
        pid_t w = waitpid(j->pid, &status, block ? 0 : WNOHANG);
        if (w == j->pid)
            j->r.status = status;
        if (w == j->pid || (w < 0 && errno != EINTR))
            return true;
        if (w == 0)
            return false;
    }
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

/* After the group has ended: what is still in the pipe (written just before the end), without
 * waiting for more; bounded, in case something outside the group holds the pipe and writes. */
static void drain(int fd, bool is_out, cmd_job *j)
{
    for (int i = 0; fd >= 0 && i < 64 && !j->r.out_over && !j->r.oom; i++) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 0) <= 0 || !take(fd, is_out, &j->s, &j->out, &j->r))
            break;
    }
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void close_all(cmd_job *j)
{
    close_fd(&j->wfd);
    close_fd(&j->ofd);
    close_fd(&j->efd);
    close_fd(&j->pidfd);
}

/* The group is gone and the command reaped: the rest of the pipes into the result. */
static bool finish(cmd_job *j)
{
    drain(j->ofd, true, j);
    drain(j->efd, false, j);
    close_all(j);
    j->r.out = j->out.v;
    j->r.nout = j->out.n;
    j->out = (sbuf){ 0 };
    if (j->s.out_limit && !j->r.out && !j->r.oom)
        j->r.out = calloc(1, 1);
    j->r.oom |= j->s.out_limit && !j->r.out;
    j->state = DONE;
    j->wake = 0;
    return true;
}

/* SIGKILL is sent: the command is only to be reaped, which its pidfd announces. */
static bool killed_step(cmd_job *j, int64_t now)
{
    if (reap(j, false)) {
        j->reaped = true;
        return finish(j);
    }
    j->wake = j->pidfd >= 0 ? -1 : now + LOOK_MS;
    return false;
}

/* The group has had SIGTERM, sent while the command was unreaped (its id could belong to no one
 * else then).  Reaps the command; after that, the id stays taken as long as a member of the
 * group lives, so the later signals reach only the group's members (another process would have
 * to take the number and lead a group of that id within the grace).  Whatever is left at the
 * end of the grace gets SIGKILL.  The grace is this state and its deadline, never a sleep. */
static bool ending_step(cmd_job *j, int64_t now)
{
    if (!j->reaped)
        j->reaped = reap(j, false);
    if (!j->reaped) {
        if (now < j->until) {
            j->wake = j->pidfd >= 0 ? j->until : earlier(now + LOOK_MS, j->until);
            return false;
        }
        kill(-j->pid, SIGKILL);
        j->state = KILLED;
        return killed_step(j, now);
    }
    /* The command is gone; what it started may not be. */
    if (kill(-j->pid, 0) == 0) {
        if (now < j->until) {
            j->wake = earlier(now + LOOK_MS, j->until);
            return false;
        }
        kill(-j->pid, SIGKILL);
    }
    return finish(j);
}

/* The command has exited, timed out or written too much: its group gets SIGTERM, and the grace
 * starts. */
static bool begin_end(cmd_job *j, int64_t now)
{
    close_fd(&j->wfd);
    kill(-j->pid, SIGTERM);
    j->state = ENDING;
    j->until = now + CMD_GRACE_MS;
    return ending_step(j, now);
}

/* Writes what the command's standard input takes now; closes it when all is written, or when
 * the command does not read it (fine). */
static void put(cmd_job *j)
{
    ssize_t w = write(j->wfd, j->s.input + j->sent, j->s.ninput - j->sent);
    if (w > 0)
        j->sent += (size_t)w;
    if ((w < 0 && errno != EAGAIN && errno != EINTR) || j->sent == j->s.ninput)
        close_fd(&j->wfd);
}

/* Serves the pipes that are ready, and sees whether the command is over. */
static bool running_step(cmd_job *j, int64_t now)
{
    struct pollfd p[CMD_MAX_FDS];
    int64_t ignored;
    int n = cmd_job_fds(j, p, &ignored);
    int k = poll(p, (nfds_t)n, 0);
    if (k < 0 && errno != EINTR) {
        j->r.timed_out = true;      /* cannot watch the command: stop it */
        return begin_end(j, now);
    }
    bool exited = false;
    for (int i = 0; i < n && k > 0; i++) {
        if (!p[i].revents)
            continue;
        if (p[i].fd == j->wfd)
            put(j);
        else if (p[i].fd == j->ofd && !take(j->ofd, true, &j->s, &j->out, &j->r))
            close_fd(&j->ofd);
        else if (p[i].fd == j->efd && !take(j->efd, false, &j->s, &j->out, &j->r))
            close_fd(&j->efd);
        else if (p[i].fd == j->pidfd)
            exited = true;
    }
    if (((exited || j->pidfd < 0) && leader_exited(j->pid)) || j->r.out_over || j->r.oom)
        return begin_end(j, now);
    if (now >= j->until) {
        j->r.timed_out = true;
        return begin_end(j, now);
    }
    j->wake = j->pidfd >= 0 ? j->until : earlier(now + LOOK_MS, j->until);
    return false;
}

cmd_job *cmd_start(const cmd_spec *s)
{
    cmd_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    pthread_once(&sigpipe_once, ignore_sigpipe);
    j->s = *s;
    j->s.argv = NULL;
    j->s.envp = NULL;
    j->pidfd = -1;
    int in[2] = { -1, -1 }, out[2] = { -1, -1 }, er[2] = { -1, -1 };
    if (pipe2(in, O_CLOEXEC) != 0 || (s->out_limit && pipe2(out, O_CLOEXEC) != 0) ||
        pipe2(er, O_CLOEXEC) != 0)
        j->r.spawn_errno = errno;
    else
        j->r.spawn_errno = spawn(s, in[0], out[1], er[1], &j->pid);
    close_fd(&in[0]);                  /* the command's ends */
    close_fd(&out[1]);
    close_fd(&er[1]);
    j->wfd = in[1];
    j->ofd = out[0];
    j->efd = er[0];
    if (j->r.spawn_errno) {
        close_all(j);
        j->state = DONE;
        j->reaped = true;
        return j;
    }
    /* A descriptor that becomes readable when the command exits; without one (before Linux
     * 5.3), the job asks to be looked at every LOOK_MS. */
#ifdef SYS_pidfd_open
    j->pidfd = (int)syscall(SYS_pidfd_open, j->pid, 0);
#endif
    fcntl(j->wfd, F_SETFL, O_NONBLOCK);
    if (j->ofd >= 0)
        fcntl(j->ofd, F_SETFL, O_NONBLOCK);
    fcntl(j->efd, F_SETFL, O_NONBLOCK);
    if (s->ninput == 0)
        close_fd(&j->wfd);
    int64_t now = now_ms();
    j->until = now + s->timeout_ms;
    j->wake = j->pidfd >= 0 ? j->until : earlier(now + LOOK_MS, j->until);
    return j;
}

int cmd_job_fds(const cmd_job *j, struct pollfd *fds, int64_t *deadline_ms)
{
    int n = 0;
    if (j->state == RUNNING) {
        int want[3][2] = { { j->ofd, POLLIN }, { j->efd, POLLIN }, { j->wfd, POLLOUT } };
        for (int i = 0; i < 3; i++)
            if (want[i][0] >= 0)
                fds[n++] = (struct pollfd){ want[i][0], (short)want[i][1], 0 };
    }
    if (j->state != DONE && !j->reaped && j->pidfd >= 0)
        fds[n++] = (struct pollfd){ j->pidfd, POLLIN, 0 };
    *deadline_ms = j->wake;
    return n;
}

bool cmd_job_step(cmd_job *j, int64_t now)
{
    switch (j->state) {
    case RUNNING:
        return running_step(j, now);
    case ENDING:
        return ending_step(j, now);
    case KILLED:
        return killed_step(j, now);
    default:
        return true;
    }
}

/* Ends an unfinished job at once: SIGTERM and SIGKILL to its group (the id is still the group's:
 * see ending_step), the command reaped. */
static void stop_now(cmd_job *j)
{
    if (j->state == DONE)
        return;
    if (j->state == RUNNING)
        kill(-j->pid, SIGTERM);
    kill(-j->pid, SIGKILL);
    if (!j->reaped)
        j->reaped = reap(j, true);
}

void cmd_job_end(cmd_job *j, cmd_result *r)
{
    if (j->state != DONE) {
        stop_now(j);
        finish(j);
    }
    *r = j->r;
    free(j);
}

void cmd_job_abort(cmd_job *j)
{
    stop_now(j);
    close_all(j);
    sb_free(&j->out);
    cmd_result_free(&j->r);
    free(j);
}

/* The poll timeout until deadline (-1: none). */
static int wait_ms(int64_t deadline, int64_t now)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - now;
    return left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
}

void cmd_run(const cmd_spec *s, cmd_result *r)
{
    cmd_job *j = cmd_start(s);
    if (!j) {
        memset(r, 0, sizeof *r);
        r->spawn_errno = ENOMEM;
        return;
    }
    for (;;) {
        struct pollfd p[CMD_MAX_FDS];
        int64_t deadline;
        int n = cmd_job_fds(j, p, &deadline);
        int ms = wait_ms(deadline, now_ms());
        if (ms != 0)
            poll(p, (nfds_t)n, ms);
        if (cmd_job_step(j, now_ms()))
            break;
    }
    cmd_job_end(j, r);
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

bool cmd_run_until(const cmd_spec *s, cmd_result *r, bool (*stop)(void *), void *arg)
{
    if (!stop) {
        cmd_run(s, r);
        return true;
    }
    memset(r, 0, sizeof *r);
    cmd_job *j = cmd_start(s);
    if (!j) {
        r->spawn_errno = ENOMEM;
        return true;
    }
    for (;;) {
        struct pollfd fds[CMD_MAX_FDS];
        int64_t deadline;
        int nf = cmd_job_fds(j, fds, &deadline);
        int64_t now = now_ms();
        int wait = 50;
        if (deadline == 0)
            wait = 0;
        else if (deadline > 0 && deadline - now < wait)
            wait = deadline > now ? (int)(deadline - now) : 0;
        if (wait > 0)
            (void)poll(fds, (nfds_t)nf, wait);
        if (cmd_job_step(j, now_ms()))
            break;
        if (stop && stop(arg)) {
            cmd_job_abort(j);
            return false;
        }
    }
    cmd_job_end(j, r);
    return true;
}
