/*
 * servers.c — a server of the test's own: ports, folders, processes (servers.h).
 */
#define _GNU_SOURCE
#include "servers.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nats/nats.h>

/* Whether a TCP socket binds to (listen) or connects to (!listen) loopback port. */
static bool loopback(int port, bool listen)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = (listen ? bind(fd, (struct sockaddr *)&a, sizeof a)
                      : connect(fd, (struct sockaddr *)&a, sizeof a)) == 0;
    close(fd);
    return ok;
}

bool srv_port_open(int port)
{
    return loopback(port, false);
}

int srv_free_port(void)
{
    static int k;
    /* (spread by process, so that tests running side by side seldom try the same ports) */
    for (int i = 0; i < 200; i++) {
        int p = 6000 + (int)(((unsigned)getpid() * 13u + (unsigned)k++ * 7u) % 3000u);
        if (loopback(p, true))
            return p;
    }
    cr_assert_fail("no free port in 6000-8999");
    return 0;
}

void srv_make(srv *s, const char *scheme, const char *name, int deathsig)
{
    memset(s, 0, sizeof *s);
    s->deathsig = deathsig;
    s->port = srv_free_port();
    snprintf(s->dir, sizeof s->dir, "/tmp/ebr-%s-XXXXXX", name);
    cr_assert_not_null(mkdtemp(s->dir), "mkdtemp %s", s->dir);
    snprintf(s->url, sizeof s->url, "%s://127.0.0.1:%d", scheme, s->port);
}

void srv_spawn(srv *s, const char *prog, char *const argv[])
{
    char sbin[128] = "";                 /* (made before the fork: the child only execs) */
    if (!strchr(prog, '/'))
        snprintf(sbin, sizeof sbin, "/usr/sbin/%s", prog);
    snprintf(s->name, sizeof s->name, "%s", argv[0]);
    s->pid = fork();
    cr_assert_geq(s->pid, 0, "fork");
    if (s->pid == 0) {
        prctl(PR_SET_PDEATHSIG, s->deathsig);   /* (a test that crashes takes its server along) */
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execvp(prog, argv);
        if (sbin[0])
            execv(sbin, argv);
        _exit(127);
    }
}

void srv_await(const srv *s, int seconds, bool (*up)(const srv *), const char *hint)
{
    for (int i = 0; i < seconds * 10 && !up(s); i++) {
        int st;
        cr_assert_eq(waitpid(s->pid, &st, WNOHANG), 0, "%s exited (%s)", s->name, hint);
        usleep(100000);
    }
    cr_assert(up(s), "%s did not come up on %s", s->name, s->url);
}

void srv_kill(srv *s, int sig)
{
    if (s->pid > 0) {
        kill(s->pid, sig);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

void srv_end(srv *s)
{
    srv_kill(s, SIGTERM);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
    cr_expect_eq(system(cmd), 0, "%s", cmd);
}

/* ---- nats-server -js ---------------------------------------------------------------------- */

static bool nats_up(const srv *s)
{
    const char *url = s->url;
    natsConnection *nc = NULL;
    natsOptions *o = NULL;
    natsOptions_Create(&o);
    natsOptions_SetServers(o, &url, 1);
    natsOptions_SetTimeout(o, 500);
    natsOptions_SetMaxReconnect(o, 0);
    bool ok = natsConnection_Connect(&nc, o) == NATS_OK;
    natsConnection_Destroy(nc);
    natsOptions_Destroy(o);
    return ok;
}

void srv_nats_start(srv *s, const char *name, int deathsig)
{
    srv_make(s, "nats", name, deathsig);
    srv_nats_run(s);
}

void srv_nats_run(srv *s)
{
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    char *argv[] = { "nats-server", "-js", "-a", "127.0.0.1", "-p", port, "-sd", s->dir, NULL };
    srv_spawn(s, "nats-server", argv);
    srv_await(s, 60, nats_up, "is it installed?");      /* (60 s: a busy machine) */
}
