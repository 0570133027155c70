/*
 * servers.h — a server of the test's own (test_nats.c, test_natsrc.c, test_mqtt.c): a free
 * loopback port in 6000-8999 (below Linux's ephemeral range), a folder of its own, the process
 * started so that it dies with the test (PR_SET_PDEATHSIG), waited for until it answers, and
 * stopped.  nats-server, which two of them run the same way, has a starter here too; what only
 * one test runs (mosquitto and its configuration) stays in that test.
 */
#ifndef EBR_TEST_SERVERS_H
#define EBR_TEST_SERVERS_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct srv {
    pid_t pid;                /* 0 while it is not running */
    int deathsig;             /* what it is sent when the test process dies */
    char name[32];            /* its program's name, for messages */
    int port;                 /* on 127.0.0.1 */
    char dir[64];             /* its own folder, removed by srv_end */
    char url[64];             /* SCHEME://127.0.0.1:PORT */
} srv;

/* A loopback port in 6000-8999 nothing is bound to now, different on each call; fails the test
 * if 200 tries find none. */
int srv_free_port(void);

/* Whether something accepts connections on loopback port. */
bool srv_port_open(int port);

/* Fills s for a server not yet started: a free port, a new folder /tmp/ebr-NAME-XXXXXX, the url
 * SCHEME://127.0.0.1:PORT; deathsig as srv's.  Fails the test if the folder cannot be made. */
void srv_make(srv *s, const char *scheme, const char *name, int deathsig);

/* Starts prog with argv (NULL-terminated; argv[0] its name) as s's process, its output to
 * /dev/null; prog without a '/' is looked for on PATH, then in /usr/sbin.  Fails the test if
 * it cannot fork (a program not found shows as a process that exits: see srv_await). */
void srv_spawn(srv *s, const char *prog, char *const argv[]);

/* Waits up to seconds until up(s) says the server answers, failing the test if its process
 * exits meanwhile ("NAME exited (HINT)") or if it never answers. */
void srv_await(const srv *s, int seconds, bool (*up)(const srv *), const char *hint);

/* Sends s's process sig and reaps it (nothing if it is not running). */
void srv_kill(srv *s, int sig);

/* Stops s (SIGTERM) and removes its folder. */
void srv_end(srv *s);

/* ---- nats-server -js ---------------------------------------------------------------------- */

/* Makes s (srv_make, scheme nats) and runs nats-server in it: srv_nats_run. */
void srv_nats_start(srv *s, const char *name, int deathsig);

/* Runs nats-server -js on s's port with its storage in s's folder (kept across a restart), and
 * waits up to 60 s until a NATS client connects. */
void srv_nats_run(srv *s);

#endif
