/*
 * ebd.c — the daemon: loads the rules, opens each bus's log, takes CloudEvents in over HTTP
 * (ingest.c) and delivers what the rules route (deliver.c).  SIGHUP or POST /v1/admin/reload
 * loads the rules again; SIGTERM stops it gracefully.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../compiler/compiler.h"
#include "ebd_int.h"

#define DEFAULT_MAX_EVENT (256u << 10)

static const char usage[] =
    "usage: ebd --rules RULES [--data DIR] [--listen HOST:PORT]\n"
    "\n"
    "Takes CloudEvents in over HTTP, stores them in each bus's log, and delivers them to the\n"
    "targets the rules route them to.\n"
    "\n"
    "  --rules RULES       the rules: an .ebr source file or a compiled .ebc file\n"
    "  --data DIR          where the buses' logs, cursors and file targets live\n"
    "                      (default: the server block's data_dir, else ./ebr-data)\n"
    "  --listen HOST:PORT  the address to listen on (default: the server block's listen,\n"
    "                      else 127.0.0.1:8088); an address that is not loopback needs a\n"
    "                      token on every bus\n"
    "  --max-requests N    requests handled at once before more are answered 429 (4096)\n"
    "\n"
    "Endpoints: POST /v1/buses/BUS/events (CloudEvents binary, structured, batched),\n"
    "POST /v1/buses/BUS/put-events ({\"entries\": [...]}), POST /v1/admin/reload, GET /healthz.\n"
    "Signals: SIGHUP reloads the rules; SIGTERM or SIGINT stops (appends finish, cursors are\n"
    "saved).  Logs go to standard error, one key=value line per message.\n";

/* Loads the rules: an .ebc file (sound or damaged: vm_file_is_ebc) is read, anything else
 * compiled from source; errors into diag. */
static vm_program *load_rules(const char *path, FILE *diag)
{
    if (vm_file_is_ebc(path)) {
        vm_error err;
        vm_program *p = vm_program_load(path, &err);
        if (!p)
            fprintf(diag, "%s: not a valid ruleset file: %s\n", path, err.msg);
        return p;
    }
    cc_result res;
    return cc_compile_file(path, diag, &res);
}

uint32_t ebd_bus_index(const ebd *d, const char *name, size_t n)
{
    for (size_t i = 0; i < d->nbuses; i++)
        if (strlen(d->buses[i]->name) == n && !memcmp(d->buses[i]->name, name, n))
            return (uint32_t)i;
    return VM_NONE;
}

ebd_bus *ebd_find_bus(ebd *d, const char *name, size_t n)
{
    uint32_t i = ebd_bus_index(d, name, n);
    return i == VM_NONE ? NULL : d->buses[i];
}

bool ebd_bus_view(ebd *d, const char *name, size_t n, ebd_bus *view)
{
    const ebd_rules *r = d->rules;
    const vm_program *p = r->p;
    for (uint32_t b = 0; b < p->nbuses; b++)
        if (p->buses[b].name.len == n && !memcmp(vm_s(p, p->buses[b].name), name, n) &&
            r->bus_of[b] != VM_NONE) {
            *view = *d->buses[r->bus_of[b]];
            view->token = r->bus_token[b];
            view->max_event = r->bus_max[b];
            return true;
        }
    return false;
}

/* A server { } option's text (or NULL). */
static char *server_text(const vm_program *p, const char *key, char *err, size_t cap)
{
    const vm_cfg *o = ebd_cfg_option(p, p->server0, p->nserver, key);
    return o ? ebd_cfg_text(p, ebd_cfg_child(p, o, 0), err, cap) : NULL;
}

/* Opens the log of every bus r->p declares that the daemon does not have yet (buses stay open
 * across reloads), and works out each bus's token and size limit into r: they apply when r
 * does.  Called with d->lock held for writing (or before the daemon serves). */
static bool open_buses(ebd *d, ebd_rules *r, char *err, size_t cap)
{
    const vm_program *p = r->p;
    const vm_cfg *mx = ebd_cfg_option(p, p->server0, p->nserver, "max_event_size");
    uint64_t server_max = mx && ebd_cfg_child(p, mx, 0) ? (uint64_t)ebd_cfg_child(p, mx, 0)->num
                                                        : DEFAULT_MAX_EVENT;
    r->bus_token = calloc(p->nbuses ? p->nbuses : 1, sizeof *r->bus_token);
    r->bus_max = calloc(p->nbuses ? p->nbuses : 1, sizeof *r->bus_max);
    if (!r->bus_token || !r->bus_max) {
        snprintf(err, cap, "out of memory");
        return false;
    }
    for (uint32_t i = 0; i < p->nbuses; i++) {
        const vm_bus *vb = &p->buses[i];
        const char *name = vm_s(p, vb->name);
        ebd_bus *b = ebd_find_bus(d, name, vb->name.len);
        if (!b) {
            if (d->nbuses == d->capbuses) {
                size_t c = d->capbuses ? d->capbuses * 2 : 8;
                ebd_bus **v = realloc(d->buses, c * sizeof *v);
                if (!v) {
                    snprintf(err, cap, "out of memory");
                    return false;
                }
                d->buses = v;
                d->capbuses = c;
            }
            b = calloc(1, sizeof *b);
            if (!b || !(b->name = strndup(name, vb->name.len))) {
                free(b);
                snprintf(err, cap, "out of memory");
                return false;
            }
            char dir[4200];
            snprintf(dir, sizeof dir, "%s/buses", d->data_dir);
            mkdir(dir, 0755);
            snprintf(dir, sizeof dir, "%s/buses/%s", d->data_dir, b->name);
            store_options o;
            rt_bus_store_options(p, i, &o);
            char why[600];
            if (log_open(dir, &o, &b->s, why, sizeof why) != STORE_OK) {
                snprintf(err, cap, "bus '%s': %s", b->name, why);
                free(b->name);
                free(b);
                return false;
            }
            d->buses[d->nbuses++] = b;
            uint64_t first, next;
            store_bounds(b->s, &first, &next);
            ebd_log(EBD_INFO, "msg=\"bus opened\" bus=%s dir=%s first=%llu next=%llu", b->name, dir,
                    (unsigned long long)first, (unsigned long long)next);
        }
        const vm_cfg *t = ebd_cfg_option(p, vb->opt0, vb->nopt, "token");
        char why[300] = "";
        r->bus_token[i] = t ? ebd_cfg_text(p, ebd_cfg_child(p, t, 0), why, sizeof why) : NULL;
        if (why[0]) {
            snprintf(err, cap, "bus '%s': token: %s", b->name, why);
            return false;
        }
        const vm_cfg *m = ebd_cfg_option(p, vb->opt0, vb->nopt, "max_event_size");
        r->bus_max[i] = m && ebd_cfg_child(p, m, 0) ? (uint64_t)ebd_cfg_child(p, m, 0)->num : server_max;
        if (!d->loopback && !r->bus_token[i]) {
            snprintf(err, cap, "bus '%s' has no token, and %s is not a loopback address: give "
                     "every bus a token (token env(\"NAME\")) or listen on 127.0.0.1", b->name,
                     d->listen);
            return false;
        }
    }
    return true;
}

/* Compiles the rules into a new ebd_rules ready to start; errors (positioned) into errors. */
static ebd_rules *make_rules(ebd *d, sbuf *errors)
{
    char *text = NULL;
    size_t len = 0;
    FILE *diag = open_memstream(&text, &len);
    vm_program *p = diag ? load_rules(d->rules_path, diag) : NULL;
    if (diag)
        fclose(diag);
    if (!p) {
        sb_puts(errors, text && len ? text : "cannot load the rules\n");
        free(text);
        return NULL;
    }
    free(text);
    ebd_rules *r = calloc(1, sizeof *r);
    if (!r) {
        vm_program_free(p);
        sb_puts(errors, "out of memory");
        return NULL;
    }
    r->p = p;
    char err[700] = "";
    r->admin_token = server_text(p, "admin_token", err, sizeof err);
    pthread_rwlock_wrlock(&d->lock);
    bool ok = !err[0] && open_buses(d, r, err, sizeof err);
    pthread_rwlock_unlock(&d->lock);
    if (ok)
        ok = ebd_rules_prepare(d, r, err, sizeof err);
    if (!ok) {
        sb_printf(errors, "%s: %s\n", d->rules_path, err);
        ebd_rules_free(r);
        return NULL;
    }
    return r;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

bool ebd_reload(ebd *d, sbuf *errors)
{
    pthread_mutex_lock(&d->reload_mu);
    double t0 = mono_s();
    ebd_rules *r = make_rules(d, errors);
    double t1 = mono_s();
    if (!r) {
        pthread_mutex_unlock(&d->reload_mu);
        ebd_log(EBD_ERROR, "msg=\"reload refused: the running rules stay\" errors=\"%s\"",
                errors->v ? errors->v : "");
        return false;
    }
    ebd_rules *old = d->rules;
    /* The old workers finish the delivery in hand and commit their cursors; the new ones
     * start from those cursors: nothing is lost (docs/ebd.md says what may go twice). */
    ebd_workers_stop(d, old);
    double t2 = mono_s();
    pthread_rwlock_wrlock(&d->lock);
    d->rules = r;
    pthread_rwlock_unlock(&d->lock);
    ebd_workers_start(d, r);
    ebd_rules_free(old);
    pthread_mutex_unlock(&d->reload_mu);
    ebd_log(EBD_INFO, "msg=\"rules reloaded\" rules=%u targets=%u deliveries=%zu compile_ms=%.1f "
            "stop_ms=%.1f total_ms=%.1f", r->p->nrules, r->p->ntargets, r->nworkers,
            (t1 - t0) * 1e3, (t2 - t1) * 1e3, (mono_s() - t0) * 1e3);
    return true;
}

static bool parse_listen(const char *s, char *host, size_t cap, uint16_t *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= cap)
        return false;
    char *end;
    long v = strtol(colon + 1, &end, 10);
    if (*end || v <= 0 || v > 65535)
        return false;
    snprintf(host, cap, "%.*s", (int)(colon - s), s);
    *port = (uint16_t)v;
    return true;
}

int main(int argc, char **argv)
{
    const char *rules = NULL, *data = NULL, *listen = NULL;
    unsigned max_requests = 4096;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--rules") && i + 1 < argc)
            rules = argv[++i];
        else if (!strcmp(argv[i], "--data") && i + 1 < argc)
            data = argv[++i];
        else if (!strcmp(argv[i], "--listen") && i + 1 < argc)
            listen = argv[++i];
        else if (!strcmp(argv[i], "--max-requests") && i + 1 < argc && atoi(argv[i + 1]) > 0)
            max_requests = (unsigned)atoi(argv[++i]);
        else {
            fprintf(stderr, "ebd: unexpected argument '%s'\n\n%s", argv[i], usage);
            return 2;
        }
    }
    if (!rules) {
        fprintf(stderr, "ebd: --rules is needed\n\n%s", usage);
        return 2;
    }
    /* Signals are taken by the main thread alone (sigwait), so block them before any thread
     * starts; SIGPIPE and SIGXFSZ are ignored: a peer that goes away or a file size limit is an
     * error to handle, not a death. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);   /* a file size limit fails the write (EFBIG), it does not kill */
    curl_global_init(CURL_GLOBAL_DEFAULT);

    ebd d = { .rules_path = (char *)rules, .max_requests = max_requests };
    /* Writers first: a reload must not wait behind a steady stream of ingest requests. */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&d.lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&d.reload_mu, NULL);
    /* The server block gives defaults for what the flags did not say. */
    char *text = NULL;
    size_t len = 0;
    FILE *diag = open_memstream(&text, &len);
    vm_program *p0 = load_rules(rules, diag);
    fclose(diag);
    if (!p0) {
        fputs(text, stderr);
        fprintf(stderr, "ebd: the rules have errors; not starting\n");
        free(text);
        return 1;
    }
    free(text);
    char err[800] = "";
    char *cfg_listen = listen ? NULL : server_text(p0, "listen", err, sizeof err);
    char *cfg_data = data ? NULL : server_text(p0, "data_dir", err, sizeof err);
    vm_program_free(p0);
    if (err[0]) {
        fprintf(stderr, "ebd: server: %s\n", err);
        return 1;
    }
    d.listen = (char *)(listen ? listen : cfg_listen ? cfg_listen : "127.0.0.1:8088");
    d.data_dir = (char *)(data ? data : cfg_data ? cfg_data : "ebr-data");
    char host[256];
    uint16_t port;
    if (!parse_listen(d.listen, host, sizeof host, &port)) {
        fprintf(stderr, "ebd: --listen takes HOST:PORT (as 127.0.0.1:8088), not '%s'\n", d.listen);
        return 2;
    }
    d.loopback = !strncmp(host, "127.", 4) || !strcmp(host, "localhost");
    if (!strcmp(host, "localhost"))
        snprintf(host, sizeof host, "127.0.0.1");
    if (mkdir(d.data_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "ebd: cannot create the data directory %s: %s\n", d.data_dir, strerror(errno));
        return 1;
    }
    sbuf errors = { 0 };
    d.rules = make_rules(&d, &errors);
    if (!d.rules) {
        fprintf(stderr, "%sebd: not starting\n", errors.v ? errors.v : "");
        return 1;
    }
    sb_free(&errors);
    struct MHD_Daemon *http = ebd_http_start(&d, host, port, err, sizeof err);
    if (!http) {
        fprintf(stderr, "ebd: %s\n", err);
        return 1;
    }
    ebd_workers_start(&d, d.rules);
    ebd_log(EBD_INFO, "msg=\"ebd started\" listen=%s:%u data=%s rules=%s buses=%zu "
            "deliveries=%zu pid=%ld", host, port, d.data_dir, rules, d.nbuses, d.rules->nworkers,
            (long)getpid());
    for (;;) {
        int sig;
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            ebd_log(EBD_INFO, "msg=\"SIGHUP: reloading the rules\"");
            sbuf e = { 0 };
            ebd_reload(&d, &e);
            sb_free(&e);
            continue;
        }
        ebd_log(EBD_INFO, "msg=\"stopping\" signal=%s", sig == SIGTERM ? "TERM" : "INT");
        break;
    }
    /* Stop taking requests (those in progress finish their appends), then the deliveries
     * (each finishes what it holds and commits its cursor), then the logs. */
    atomic_store(&d.stopping, true);
    ebd_http_stop(http);
    ebd_workers_stop(&d, d.rules);
    ebd_rules_free(d.rules);
    for (size_t i = 0; i < d.nbuses; i++) {
        store_close(d.buses[i]->s);
        free(d.buses[i]->name);
        free(d.buses[i]);
    }
    free(d.buses);
    free(cfg_listen);
    free(cfg_data);
    ebd_log(EBD_INFO, "msg=\"ebd stopped\"");
    curl_global_cleanup();
    return 0;
}
