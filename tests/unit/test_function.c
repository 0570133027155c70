/*
 * test_function.c — function transforms (runtime/function.c): a real command through sh, and a
 * real HTTP endpoint (libmicrohttpd on 127.0.0.1, started and stopped here).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <microhttpd.h>

#include <criterion/criterion.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../compiler/compiler.h"
#include "../../runtime/runtime.h"

static const char event[] = "{\"id\": \"e1\", \"data\": {\"x\": 1}}";

/* Compiles `transform <clause>` and runs it for the event; returns the payload or NULL (err). */
static char *run(const char *clause, bool *ok, bool *text, char *err, size_t errcap)
{
    char src[1024];
    snprintf(src, sizeof src, "bus b\ntarget t file \"t\"\nrule r on b { match exists id transform %s to t }\n", clause);
    vm_program *p = cc_compile_text("f.ebr", src, strlen(src), stderr, NULL);
    cr_assert_not_null(p, "does not compile: %s", clause);
    cr_assert_neq(p->rules[0].xform, VM_NONE);
    char *payload = NULL;
    size_t n = 0;
    err[0] = 0;
    *ok = rt_run_function(p, &p->xforms[p->rules[0].xform], event, strlen(event), &payload, &n, text, err, errcap);
    vm_program_free(p);
    if (*ok)
        cr_assert_eq(strlen(payload), n);
    return payload;
}

Test(function, exec_gives_the_event_on_stdin_and_reads_stdout)
{
    bool ok, text;
    char err[300];
    char *out = run("function exec \"cat\"", &ok, &text, err, sizeof err);
    cr_assert(ok, "%s", err);
    cr_expect_str_eq(out, event);
    cr_expect(!text);
    free(out);
    out = run("function exec \"printf '[1, {\\\"a\\\": 2}]'\"", &ok, &text, err, sizeof err);
    cr_assert(ok, "%s", err);
    cr_expect_str_eq(out, "[1, {\"a\": 2}]");
    free(out);
}

/* White space around the JSON value (jq, echo, print end with a line break) is dropped; the
 * value itself is still checked strictly. */
Test(function, exec_output_loses_surrounding_white_space)
{
    bool ok, text;
    char err[300];
    char *out = run("function exec \"printf ' \\n\\t{\\\"a\\\": [1, 2]}\\r\\n\\n'\"", &ok, &text, err, sizeof err);
    cr_assert(ok, "%s", err);
    cr_expect_str_eq(out, "{\"a\": [1, 2]}");
    free(out);
    out = run("function exec \"echo '\\\"text\\\"'\"", &ok, &text, err, sizeof err);
    cr_assert(ok, "%s", err);
    cr_expect_str_eq(out, "\"text\"");
    free(out);
    out = run("function exec \"echo '{\\\"a\\\": 1} x'\"", &ok, &text, err, sizeof err);
    cr_expect(!ok && !out, "text after the value is still refused");
    free(out);
}

Test(function, exec_failures_carry_stderr)
{
    bool ok, text;
    char err[300];
    char *out = run("function exec \"echo boom >&2; exit 3\"", &ok, &text, err, sizeof err);
    cr_expect(!ok && !out);
    cr_expect(strstr(err, "exited with status 3: boom"), "%s", err);
    out = run("function exec \"echo not json\"", &ok, &text, err, sizeof err);
    cr_expect(!ok);
    cr_expect(strstr(err, "did not write JSON"), "%s", err);
    out = run("function exec \"echo '{\\\"a\\\": 1} trailing'\"", &ok, &text, err, sizeof err);
    cr_expect(!ok, "trailing bytes after the JSON value must fail");
    out = run("function exec \"kill -9 $$\"", &ok, &text, err, sizeof err);
    cr_expect(!ok);
    cr_expect(strstr(err, "killed by signal 9"), "%s", err);
}

Test(function, exec_is_stopped_at_its_timeout, .timeout = 20)
{
    bool ok, text;
    char err[300];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    char *out = run("function exec \"sleep 10; echo 1\" timeout 200ms", &ok, &text, err, sizeof err);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    cr_expect(!ok && !out);
    cr_expect(strstr(err, "took longer than 200 ms"), "%s", err);
    cr_expect_lt(secs, 5.0, "the command ran to its end (%.1f s)", secs);
}

Test(function, exec_that_closes_its_outputs_is_still_held_to_its_timeout, .timeout = 20)
{
    bool ok, text;
    char err[300];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    char *out = run("function exec \"exec >&- 2>&-; sleep 10\" timeout 200ms", &ok, &text, err,
                    sizeof err);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    cr_expect(!ok && !out);
    cr_expect(strstr(err, "took longer than 200 ms"), "%s", err);
    cr_expect_lt(secs, 5.0, "waited for the command to end (%.1f s)", secs);
}

/* A pipeline whose reader stops early ends by SIGPIPE in its writer: every command starts with
 * SIGPIPE at its default, the first and every later one. */
Test(function, exec_commands_start_with_sigpipe_at_its_default, .timeout = 30)
{
    for (int round = 0; round < 2; round++) {
        bool ok, text;
        char err[300];
        char *out = run("function exec \"while :; do echo x; done | head -c 3 >/dev/null; echo 1\" "
                        "timeout 5s", &ok, &text, err, sizeof err);
        cr_assert(ok, "round %d: %s", round, err);
        cr_expect_str_eq(out, "1");
        free(out);
    }
}

/* The command inherits its three pipes and no other descriptor of the process. */
Test(function, exec_inherits_no_other_descriptor)
{
    int fd = open("/dev/null", O_RDONLY);     /* deliberately without O_CLOEXEC */
    cr_assert_geq(fd, 3);
    char clause[200];
    snprintf(clause, sizeof clause, "function exec \"if [ -e /proc/self/fd/%d ]; then echo "
             "'\\\"leaked\\\"'; else echo '\\\"clean\\\"'; fi\"", fd);
    bool ok, text;
    char err[300];
    char *out = run(clause, &ok, &text, err, sizeof err);
    close(fd);
    cr_assert(ok, "%s", err);
    cr_expect_str_eq(out, "\"clean\"");
    free(out);
}

/* Output that a lenient parser would take but RFC 8259 does not is refused. */
Test(function, exec_output_must_be_strict_json)
{
    const char *bad[] = { "printf '[01]'", "printf '[1.]'", "printf '{\\\"a\\\":\\\"x\\\\001y\\\"}'",
                          "printf '\\\"\\\\377\\\"'", "printf '[1,]'", "printf 'nul'" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char clause[200];
        snprintf(clause, sizeof clause, "function exec \"%s\"", bad[i]);
        bool ok, text;
        char err[300];
        char *out = run(clause, &ok, &text, err, sizeof err);
        cr_expect(!ok && !out, "accepted the output of %s", bad[i]);
        cr_expect(strstr(err, "did not write JSON"), "%s: %s", bad[i], err);
    }
}

/* A command's environment is PATH, HOME, LANG and TZ: none of the process's secrets. */
Test(function, exec_gets_a_clean_environment)
{
    setenv("EBR_ADMIN_TOKEN", "admin-secret-0123456789", 1);
    setenv("E2E_SOME_TOKEN", "another-secret", 1);
    bool ok, text;
    char err[300];
    char *out = run("function exec \"printf '\\\"%s|%s\\\"' \\\"$EBR_ADMIN_TOKEN$E2E_SOME_TOKEN\\\" "
                    "\\\"$PATH\\\"\"", &ok, &text, err, sizeof err);
    cr_assert(ok, "%s", err);
    cr_expect(strncmp(out, "\"|", 2) == 0, "the command saw: %s", out);
    cr_expect(strstr(out, "/bin"), "no PATH: %s", out);
    free(out);
    out = run("function exec \"env | grep -c -v -E '^(PATH|HOME|LANG|TZ|PWD)=' || true\"", &ok, &text,
              err, sizeof err);
    cr_assert(ok, "%s", err);
    cr_expect_str_eq(out, "0", "variables besides PATH, HOME, LANG, TZ (and the shell's PWD)");
    free(out);
    unsetenv("EBR_ADMIN_TOKEN");
    unsetenv("E2E_SOME_TOKEN");
}

/* Whatever this process blocks or ignores, a command starts with every signal at its default
 * and none blocked (ebd blocks SIGTERM, SIGINT, SIGHUP and ignores SIGPIPE, SIGXFSZ). */
Test(function, exec_starts_with_default_signals)
{
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    void (*was)(int) = signal(SIGXFSZ, SIG_IGN);
    bool ok, text;
    char err[300];
    char *out = run("function exec \"printf '\\\"%s\\\"' \\\"$(grep -E '^Sig(Blk|Ign)' /proc/self/status "
                    "| tr -d ' \\t\\n')\\\"\"", &ok, &text, err, sizeof err);
    signal(SIGXFSZ, was);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    cr_assert(ok, "%s", err);
    cr_expect(strstr(out, "SigBlk:0000000000000000"), "%s", out);
    const char *ign = strstr(out, "SigIgn:");
    cr_assert_not_null(ign, "%s", out);
    unsigned long long bits = strtoull(ign + 7, NULL, 16);
    cr_expect_eq(bits & ((1ull << (SIGPIPE - 1)) | (1ull << (SIGXFSZ - 1))), 0,
                 "SIGPIPE or SIGXFSZ still ignored: %s", out);
    free(out);
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

/* What a command leaves running when it ends is ended with it (its process group). */
Test(function, exec_children_end_with_the_command, .timeout = 30)
{
    bool ok, text;
    char err[300];
    char *out = run("function exec \"sleep 60 >/dev/null 2>&1 & echo $!\" timeout 10s", &ok, &text,
                    err, sizeof err);
    cr_assert(ok, "%s", err);
    long pid = atol(out);
    cr_assert_gt(pid, 0, "%s", out);
    free(out);
    for (int i = 0; i < 200 && !ended(pid); i++)
        usleep(10000);
    bool gone = ended(pid);
    if (!gone)
        kill((pid_t)pid, SIGKILL);
    cr_expect(gone, "the command's child %ld still runs", pid);
}

/* Output past the 64 MiB cap stops the command at once, and says so. */
Test(function, exec_output_over_its_cap_is_reported_as_such, .timeout = 60)
{
    bool ok, text;
    char err[300];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    char *out = run("function exec \"yes\" timeout 40s", &ok, &text, err, sizeof err);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    cr_expect(!ok && !out);
    cr_expect(strstr(err, "wrote more than 64 MiB on its standard output"), "%s", err);
    cr_expect_lt(secs, 30.0, "waited for the timeout (%.1f s)", secs);
}

/* Standard error is read to its end, but only its start is kept: on one line, valid UTF-8. */
Test(function, exec_stderr_is_capped_and_made_one_line_of_utf8, .timeout = 30)
{
    bool ok, text;
    char err[4096];
    char *out = run("function exec \"printf 'a\\\\377b\\\\nc' >&2; yes 0123456789 | head -c 3000000 >&2; "
                    "exit 2\"", &ok, &text, err, sizeof err);
    cr_expect(!ok && !out);
    cr_expect(strstr(err, "exited with status 2: a?b c0123456789 0123456789"), "%s", err);
    cr_expect_lt(strlen(err), 500, "%zu bytes of error", strlen(err));
    cr_expect(strstr(err, "...") == err + strlen(err) - 3, "not marked as cut: %s", err);
}

/* ---- HTTP --------------------------------------------------------------------------------- */

typedef struct {
    char body[4096];
    size_t n;
} upload;

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *data,
                              size_t *size, void **state)
{
    (void)cls;
    (void)version;
    upload *u = *state;
    if (!u) {
        *state = u = calloc(1, sizeof *u);
        return MHD_YES;
    }
    if (*size) {
        size_t k = *size < sizeof u->body - u->n - 1 ? *size : sizeof u->body - u->n - 1;
        memcpy(u->body + u->n, data, k);
        u->n += k;
        *size = 0;
        return MHD_YES;
    }
    char reply[8192];
    unsigned status = 200;
    const char *type = "application/json";
    if (!strcmp(url, "/echo")) {
        const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
        snprintf(reply, sizeof reply, "{\"method\": \"%s\", \"type\": \"%s\", \"got\": %.*s}", method,
                 ct ? ct : "", (int)u->n, u->body);
    } else if (!strcmp(url, "/text")) {
        type = "text/plain";
        snprintf(reply, sizeof reply, "hello, text");
    } else if (!strcmp(url, "/fail")) {
        status = 503;
        snprintf(reply, sizeof reply, "{}");
    } else if (!strcmp(url, "/newline")) {
        snprintf(reply, sizeof reply, "{\"ok\": true}\r\n");
    } else if (!strcmp(url, "/notjson")) {
        snprintf(reply, sizeof reply, "<html>");
    } else {
        usleep(1500 * 1000);
        snprintf(reply, sizeof reply, "{}");
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(reply), reply, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static void done(void *cls, struct MHD_Connection *conn, void **state, enum MHD_RequestTerminationCode why)
{
    (void)cls;
    (void)conn;
    (void)why;
    free(*state);
    *state = NULL;
}

static struct MHD_Daemon *server(unsigned *port)
{
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION,
                                            0, NULL, NULL, answer, NULL, MHD_OPTION_SOCK_ADDR, &addr,
                                            MHD_OPTION_NOTIFY_COMPLETED, done, NULL, MHD_OPTION_END);
    cr_assert_not_null(d, "cannot start the HTTP server on 127.0.0.1");
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *port = info->port;
    return d;
}

Test(function, http_posts_the_event_and_takes_the_answer, .timeout = 30)
{
    unsigned port;
    struct MHD_Daemon *d = server(&port);
    bool ok, text;
    char err[300], clause[256];
    snprintf(clause, sizeof clause, "function http \"http://127.0.0.1:%u/echo\"", port);
    char *out = run(clause, &ok, &text, err, sizeof err);
    cr_assert(ok, "%s", err);
    char want[512];
    snprintf(want, sizeof want, "{\"method\": \"POST\", \"type\": \"application/cloudevents+json\", \"got\": %s}", event);
    cr_expect_str_eq(out, want);
    cr_expect(!text);
    free(out);

    snprintf(clause, sizeof clause, "function http \"http://127.0.0.1:%u/text\"", port);
    out = run(clause, &ok, &text, err, sizeof err);
    cr_assert(ok, "%s", err);
    cr_expect_str_eq(out, "hello, text");
    cr_expect(text, "a text/plain answer is a text payload");
    free(out);

    snprintf(clause, sizeof clause, "function http \"http://127.0.0.1:%u/newline\"", port);
    out = run(clause, &ok, &text, err, sizeof err);
    cr_assert(ok, "%s", err);
    cr_expect_str_eq(out, "{\"ok\": true}", "the answer's line break is dropped");
    free(out);

    snprintf(clause, sizeof clause, "function http \"http://127.0.0.1:%u/fail\"", port);
    run(clause, &ok, &text, err, sizeof err);
    cr_expect(!ok);
    cr_expect(strstr(err, "answered 503"), "%s", err);

    snprintf(clause, sizeof clause, "function http \"http://127.0.0.1:%u/notjson\"", port);
    run(clause, &ok, &text, err, sizeof err);
    cr_expect(!ok);
    cr_expect(strstr(err, "not JSON"), "%s", err);

    snprintf(clause, sizeof clause, "function http \"http://127.0.0.1:%u/slow\" timeout 300ms", port);
    run(clause, &ok, &text, err, sizeof err);
    cr_expect(!ok);
    cr_expect(strstr(err, "took longer than 300 ms"), "%s", err);
    MHD_stop_daemon(d);
}
