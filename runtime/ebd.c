/*
 * ebd.c — the daemon: loads the rules, opens each bus's log, takes CloudEvents in over HTTP
 * (ingest/) and delivers what the rules route (delivery/).  SIGHUP or POST /v1/admin/reload
 * loads the rules again; SIGTERM stops it gracefully.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sys/socket.h>
#include <microhttpd.h>

#include "../compiler/compiler.h"
#include "aws/aws.h"
#include "center/center.h"
#include "command.h"
#include "ebd_int.h"
#include "center/center.h"
#include "center/trace.h"
#include "schema/schema.h"

#define DEFAULT_MAX_EVENT (256u << 10)
/* Ingest's limits (docs/ebd.md, "Limits").  Connections: 10,000 or half the descriptors, a
 * quarter of them from one client address; a connection has 30 s to send a request's headers
 * (and to stay idle between requests), a request 60 s for its body once its headers came (a
 * request of 32 MiB needs 0.55 MiB/s); 256 MiB of request bodies held at once, which 8
 * requests of 32 MiB or 1,000 of 256 KiB fill. */
#define DEFAULT_MAX_CONNECTIONS 10000
#define DEFAULT_HEADER_TIMEOUT 30
#define DEFAULT_BODY_TIMEOUT 60
#define DEFAULT_MAX_BUFFERED (256ull << 20)
#define SPARE_FDS 64      /* descriptors kept beyond connections for logs, targets and the like */

static const char usage[] =
    "usage: ebd --rules RULES [--data DIR] [--listen HOST:PORT] [--tls-cert FILE --tls-key FILE]\n"
    "           [--insecure-http] [--max-requests N] [--max-connections N]\n"
    "           [--max-client-connections N] [--header-timeout SECONDS]\n"
    "           [--body-timeout SECONDS] [--max-buffered SIZE]\n"
    "       ebd --help | --version\n"
    "\n"
    "Takes CloudEvents in over HTTP, stores them in each bus's log, and delivers them to the\n"
    "targets the rules route them to.\n"
    "\n"
    "  --rules RULES       the rules: an .ebr source file or a compiled .ebc file\n"
    "  --data DIR          where the buses' logs, cursors and file targets live\n"
    "                      (default: the server block's data_dir, else ./ebr-data)\n"
    "  --listen HOST:PORT  the address to listen on (default: the server block's listen,\n"
    "                      else 127.0.0.1:8088); an address that is not loopback needs a\n"
    "                      token on every bus, and TLS\n"
    "  --tls-cert FILE     serve HTTPS with this certificate (PEM; the chain may follow it)\n"
    "  --tls-key FILE      and this private key (PEM); default: the server block's\n"
    "                      tls_cert and tls_key\n"
    "  --insecure-http     allow plain HTTP on an address that is not loopback (tokens then\n"
    "                      cross the network in clear text)\n"
    "  --max-requests N    requests handled at once before more are answered 429 (4096)\n"
    "  --max-connections N connections served at once; a request on one beyond them is\n"
    "                      answered 503 (default: 10000, or half the descriptor limit)\n"
    "  --max-client-connections N\n"
    "                      of those, from one client address (default: a quarter of\n"
    "                      --max-connections; 0: no limit)\n"
    "  --header-timeout SECONDS\n"
    "                      time a connection has to send a request's headers, from its\n"
    "                      opening or its previous answer; then it is closed (30)\n"
    "  --body-timeout SECONDS\n"
    "                      time a request has to send its body once its headers came (60)\n"
    "  --max-buffered SIZE request bodies held in memory at once, across requests (bytes, or\n"
    "                      KiB, MiB, GiB); a request that would pass it is answered 503\n"
    "                      (256MiB)\n"
    "  --help              print this and exit\n"
    "  --version           print the version and exit\n"
    "\n"
    "Endpoints: POST /v1/buses/BUS/events (CloudEvents binary, structured, batched),\n"
    "POST /v1/buses/BUS/put-events ({\"entries\": [...]}), POST /v1/admin/reload, GET /healthz.\n"
    "Signals: SIGHUP reloads the rules; SIGTERM or SIGINT stops (appends finish, cursors are\n"
    "saved).  Logs go to standard error, one key=value line per message.  docs/ebd.md has\n"
    "the rest.\n";

/* Loads the rules: an .ebc file (sound or damaged: vm_file_is_ebc) is read, anything else
 * compiled from source; errors into diag. */
static vm_program *load_rules(const char *path, FILE *diag)
{
    vm_program *p;
    if (vm_file_is_ebc(path)) {
        vm_error err;
        p = vm_program_load(path, &err);
        if (!p)
            fprintf(diag, "%s: not a valid ruleset file: %s\n", path, err.msg);
    } else {
        cc_result res;
        p = cc_compile_file(path, diag, &res);
    }
    /* The daemon's messages need the rules' lines, not their text (56 MB at 100,000 rules). */
    if (p)
        vm_program_drop_sources(p);
    return p;
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
            view->schemas = sch_set_bus(r->schemas, b);
            view->pbus = b;
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

#define MIN_SECRET 16     /* bytes: a bearer token shorter than this is refused */

/* A bearer token from the rules, checked: NULL without err when the option is absent; NULL
 * with err when it cannot be read (an unset env()) or is shorter than MIN_SECRET bytes (an
 * empty one would let in anyone who sends `Authorization: Bearer `). */
static char *read_token(const vm_program *p, const vm_cfg *opt, const char *what, char *err,
                        size_t cap)
{
    if (!opt)
        return NULL;
    char why[300] = "";
    char *t = ebd_cfg_text(p, ebd_cfg_child(p, opt, 0), why, sizeof why);
    if (why[0] || !t) {
        snprintf(err, cap, "%s: %s", what, why[0] ? why : "out of memory");
        free(t);
        return NULL;
    }
    if (strlen(t) < MIN_SECRET) {
        snprintf(err, cap, "%s is %s: a token needs at least %d bytes (as from `openssl rand "
                 "-hex 16`)", what, t[0] ? "too short" : "empty", MIN_SECRET);
        free(t);
        return NULL;
    }
    return t;
}

/* Opens the log of bus i of p into b->s: its stream on NATS JetStream (`log nats`), else the
 * local log under the data directory; false with the cause. */
static bool open_bus_log(ebd *d, const vm_program *p, uint32_t i, ebd_bus *b, char *err, size_t cap)
{
    store_options o;
    rt_bus_store_options(p, i, &o);
    char why[600];
    store_nats_options no;
    int on_nats = rt_bus_nats_options(p, i, &no, why, sizeof why);
    if (on_nats < 0) {
        snprintf(err, cap, "bus '%s': %s", b->name, why);
        return false;
    }
    if (on_nats) {
        char name[300];
        snprintf(name, sizeof name, "ebd %ld bus %s", (long)getpid(), b->name);
        no.name = name;
        store_status st = nats_open(&no, &o, &b->s, why, sizeof why);
        if (st != STORE_OK) {
            snprintf(err, cap, "bus '%s': %s", b->name, why);
            rt_bus_nats_free(&no);
            b->s = NULL;
            return false;
        }
        uint64_t first, next;
        store_bounds(b->s, &first, &next);
        ebd_log(EBD_INFO, "msg=\"bus opened\" bus=%s log=nats server=%s stream=%s replicas=%u "
                "first=%llu next=%llu", b->name, no.urls[0], no.stream, no.replicas ? no.replicas : 1,
                (unsigned long long)first, (unsigned long long)next);
        rt_bus_nats_free(&no);
        return true;
    }
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/buses", d->data_dir);
    mkdir(dir, 0755);
    snprintf(dir, sizeof dir, "%s/buses/%s", d->data_dir, b->name);
    if (log_open(dir, &o, &b->s, why, sizeof why) != STORE_OK) {
        snprintf(err, cap, "bus '%s': %s", b->name, why);
        b->s = NULL;
        return false;
    }
    uint64_t first, next;
    store_bounds(b->s, &first, &next);
    ebd_log(EBD_INFO, "msg=\"bus opened\" bus=%s dir=%s first=%llu next=%llu", b->name, dir,
            (unsigned long long)first, (unsigned long long)next);
    return true;
}

/* Sets bus b's dedup window from the rules (bus i of p): the first time, with the keys of the
 * events its log stored within the window; a reload changes the window, keeping the keys.
 * Once the rules are in force (a refused reload changes nothing), without d->lock: the keys are
 * read before the window is published, and read again from then on, for the events stored
 * meanwhile. */
static void set_dedup(ebd *d, ebd_bus *b, const vm_program *p, uint32_t i)
{
    const vm_bus *vb = &p->buses[i];
    const vm_cfg *o = ebd_cfg_option(p, vb->opt0, vb->nopt, "dedup");
    uint64_t ms = o && ebd_cfg_child(p, o, 0) ? (uint64_t)ebd_cfg_child(p, o, 0)->num : 0;
    if (store_shared(b->s)) {
        /* the stream's own window, shared by the bus's daemons (store/nats.c), set when the
         * bus opens: not a window of this daemon's */
        if (store_dedups(b->s) != (ms > 0))
            ebd_log(EBD_WARN, "msg=\"a NATS bus's dedup window changes when the daemon next "
                    "opens the bus (a start)\" bus=%s", b->name);
        return;
    }
    if (b->dedup || !ms) {
        if (b->dedup)
            dedup_set_window(b->dedup, ms);
        return;
    }
    ebd_dedup *m = dedup_new(ms);
    if (!m) {
        ebd_log(EBD_ERROR, "msg=\"no memory for the dedup window: events are not de-duplicated\" "
                "bus=%s", b->name);
        return;
    }
    struct timespec t0;
    clock_gettime(CLOCK_REALTIME, &t0);
    long n = dedup_fill(m, b->s, 0);
    /* the events stored meanwhile, read again with ingest held off (a second or so of them) */
    pthread_rwlock_wrlock(&d->lock);
    __atomic_store_n(&b->dedup, m, __ATOMIC_RELEASE);   /* (deliver.c reads it without the lock) */
    if (n >= 0 && dedup_fill(m, b->s, (int64_t)t0.tv_sec * 1000 - 1000) < 0)
        n = -1;
    pthread_rwlock_unlock(&d->lock);
    if (n < 0)
        ebd_log(EBD_WARN, "msg=\"the dedup window could not read the whole log: an event sent "
                "again may be stored twice\" bus=%s error=\"%s\"", b->name, store_error(b->s));
    else
        ebd_log(EBD_INFO, "msg=\"dedup window\" bus=%s window_ms=%llu keys=%zu", b->name,
                (unsigned long long)ms, dedup_size(m));
}

/* The dedup windows of the buses of r, the rules now in force. */
static void apply_dedup(ebd *d, const ebd_rules *r)
{
    for (uint32_t i = 0; i < r->p->nbuses; i++)
        if (r->bus_of[i] != VM_NONE)
            set_dedup(d, d->buses[r->bus_of[i]], r->p, i);
}

/* Works out each bus's token and size limit into r (they apply when r does), refusing what
 * would let anyone in; then opens the log of every bus r->p declares that the daemon has not
 * open (buses stay open across reloads while the rules declare them).  Nothing is created on
 * disk before the settings are found good.  *io tells a failure of the data directory from one
 * of the rules.  Called with d->lock held for writing (or before the daemon serves). */
static bool open_buses(ebd *d, ebd_rules *r, char *err, size_t cap, bool *io)
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
        char what[300];
        snprintf(what, sizeof what, "bus '%s': token", name);
        r->bus_token[i] = read_token(p, ebd_cfg_option(p, vb->opt0, vb->nopt, "token"), what, err, cap);
        if (err[0])
            return false;
        const vm_cfg *m = ebd_cfg_option(p, vb->opt0, vb->nopt, "max_event_size");
        r->bus_max[i] = m && ebd_cfg_child(p, m, 0) ? (uint64_t)ebd_cfg_child(p, m, 0)->num : server_max;
        if (!d->loopback && !r->bus_token[i]) {
            snprintf(err, cap, "bus '%s' has no token, and %s is not a loopback address: give "
                     "every bus a token (token env(\"NAME\")) or listen on 127.0.0.1", name,
                     d->listen);
            return false;
        }
    }
    for (uint32_t i = 0; i < p->nbuses; i++) {
        const vm_bus *vb = &p->buses[i];
        const char *name = vm_s(p, vb->name);
        ebd_bus *b = ebd_find_bus(d, name, vb->name.len);
        if (b && b->s)
            continue;
        if (!b) {       /* a bus the daemon never had: a slot of its own, for good */
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
            d->buses[d->nbuses++] = b;
            b->mt = mt_bus_slot(b->name);     /* its counters (NULL without memory: none) */
        }
        if (!open_bus_log(d, p, i, b, err, cap)) {
            *io = true;
            return false;
        }
    }
    return true;
}

/* Closes the logs of the buses the running rules do not declare (removed by a reload, or
 * opened by a reload that was then refused): their descriptors and threads go; the slot keeps
 * the name, and a later reload that declares the bus again opens its log again.  Called with
 * d->reload_mu held, after the rules that used them have stopped. */
static void close_unused_buses(ebd *d)
{
    const ebd_rules *r = d->rules;
    for (size_t i = 0; i < d->nbuses; i++) {
        bool used = false;
        for (uint32_t b = 0; b < r->p->nbuses && !used; b++)
            used = r->bus_of[b] == i;
        if (used || !d->buses[i]->s)
            continue;
        pthread_rwlock_wrlock(&d->lock);
        store *s = d->buses[i]->s;
        d->buses[i]->s = NULL;
        pthread_rwlock_unlock(&d->lock);
        ebd_book_free(d->buses[i]->book);     /* read again if the bus comes back */
        d->buses[i]->book = NULL;
        dedup_free(d->buses[i]->dedup);       /* filled again from the log if it comes back */
        d->buses[i]->dedup = NULL;
        sch_discovery_bus_closing(d, d->buses[i]->name);
        store_close(s);
        ebd_log(EBD_INFO, "msg=\"bus closed: the rules no longer declare it\" bus=%s",
                d->buses[i]->name);
    }
}

/* Compiles the rules into a new ebd_rules ready to start (or takes loaded, the program read at
 * start-up for the server block); errors (positioned) into errors. */
static ebd_rules *make_rules(ebd *d, vm_program *loaded, sbuf *errors)
{
    char *text = NULL;
    size_t len = 0;
    FILE *diag = loaded ? NULL : open_memstream(&text, &len);
    vm_program *p = loaded ? loaded : diag ? load_rules(d->rules_path, diag) : NULL;
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
    const vm_cfg *dt = ebd_cfg_option(p, p->server0, p->nserver, "delivery_threads");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    r->delivery_threads = dt && ebd_cfg_child(p, dt, 0) ? (unsigned)ebd_cfg_child(p, dt, 0)->num
                        : cores > 0 ? (unsigned)cores : 1;
    const vm_cfg *dq = ebd_cfg_option(p, p->server0, p->nserver, "delivery_queue");
    r->delivery_queue = dq && ebd_cfg_child(p, dq, 0) ? (unsigned)ebd_cfg_child(p, dq, 0)->num : 0;
    r->admin_token = read_token(p, ebd_cfg_option(p, p->server0, p->nserver, "admin_token"),
                                "server: admin_token", err, sizeof err);
    if (!err[0])
        r->aws = aws_keys_load(p, err, sizeof err);
    if (!err[0])
        r->sources = src_prepare(d, p, err, sizeof err);
    bool io = false;       /* the data directory failed, not the rules: no rules-file prefix */
    /* The schemas first: ebd_rules_prepare commits new pairs' start positions, which a reload
     * refused for a schema file must not have done (ebd_rules_free frees them on failure). */
    bool ok = !err[0] && (r->schemas = sch_set_load(p, d->data_dir, err, sizeof err)) != NULL;
    if (ok) {
        pthread_rwlock_wrlock(&d->lock);
        ok = open_buses(d, r, err, sizeof err, &io);
        pthread_rwlock_unlock(&d->lock);
    }
    if (ok)
        ok = ebd_rules_prepare(d, r, err, sizeof err);
    if (!ok) {
        sb_printf(errors, "%s: %s\n", io ? "ebd" : d->rules_path, err);
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
    ebd_rules *r = make_rules(d, NULL, errors);
    double t1 = mono_s();
    if (!r) {
        close_unused_buses(d);
        pthread_mutex_unlock(&d->reload_mu);
        char text[1600];
        ebd_log(EBD_ERROR, "msg=\"reload refused: the running rules stay\" errors=\"%s\"",
                ebd_log_text(errors->v, text, sizeof text));
        return false;
    }
    ebd_rules *old = d->rules;
    /* The old workers finish the delivery in hand and commit their cursors; the new ones
     * start from those cursors: nothing is lost (docs/ebd.md says what may go twice). */
    ebd_workers_stop(d, old);
    double t2 = mono_s();
    pthread_rwlock_wrlock(&d->lock);
    d->rules = r;
    d->generation++;
    pthread_rwlock_unlock(&d->lock);
    /* the old sources go (no webhook request holds them now), then the new ones start */
    src_stop(old->sources);
    old->sources = NULL;
    apply_dedup(d, r);
    src_start(r->sources);
    ebd_workers_start(d, r);
    rp_rules_swapped(d);
    sch_discovery_start(d);
    trace_retire();
    ebd_rules_free(old);
    close_unused_buses(d);
    pthread_mutex_unlock(&d->reload_mu);
    ebd_log(EBD_INFO, "msg=\"rules reloaded\" rules=%u targets=%u deliveries=%zu compile_ms=%.1f "
            "stop_ms=%.1f total_ms=%.1f", r->p->nrules, r->p->ntargets, r->npairs,
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

/* Reads the whole of a small text file (a PEM certificate or key) into a string; NULL with the
 * cause in err. */
static char *read_text_file(const char *path, const char *what, char *err, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, cap, "cannot read the TLS %s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    sbuf b = { 0 };
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0 && b.n < (1u << 20))
        sb_put(&b, chunk, n);
    bool bad = ferror(f);
    fclose(f);
    if (bad || b.oom || !b.v || !strstr(b.v, "-----BEGIN ")) {
        snprintf(err, cap, "the TLS %s %s is not %s", what, path,
                 bad ? "readable" : b.oom ? "small enough to read" : "in PEM form (-----BEGIN ...)");
        sb_free(&b);
        return NULL;
    }
    return b.v;
}

/* A count (or, with size, bytes with an optional KiB, MiB or GiB) from the command line into
 * *out; false when s is not one, or is 0 unless zero_ok, or is over max. */
static bool parse_count(const char *s, bool size, bool zero_ok, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *s == '-' || errno)
        return false;
    unsigned shift = !size || !*end ? 0 : !strcmp(end, "KiB") ? 10 : !strcmp(end, "MiB") ? 20
                   : !strcmp(end, "GiB") ? 30 : 99;
    if ((*end && shift == 99) || (!size && *end) || v > (max >> shift) || (!v && !zero_ok))
        return false;
    *out = (uint64_t)v << shift;
    return true;
}

/* Raises the soft limit on open descriptors to the hard one (each connection takes one: the
 * usual soft limit of 1024 would let in fewer than the default --max-connections); returns
 * the limit in force. */
static uint64_t raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 1024;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < rl.rlim_max) {
        struct rlimit want = { rl.rlim_max == RLIM_INFINITY ? (rlim_t)1 << 20 : rl.rlim_max,
                               rl.rlim_max };
        if (setrlimit(RLIMIT_NOFILE, &want) == 0)
            rl.rlim_cur = want.rlim_cur;
    }
    return rl.rlim_cur == RLIM_INFINITY ? (uint64_t)1 << 20 : (uint64_t)rl.rlim_cur;
}

/* Makes sure the data directory exists and can be written, before any bus is opened there:
 * false with the operating system's own reason (permission, read-only file system, not a
 * directory) in err. */
static bool data_dir_ready(const char *dir, char *err, size_t cap)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, cap, "cannot create the data directory %s: %s", dir, strerror(errno));
        return false;
    }
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.ebd-write-check", dir);
    int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, cap, "cannot write in the data directory %s: %s", dir, strerror(errno));
        return false;
    }
    close(fd);
    unlink(probe);
    return true;
}

int main(int argc, char **argv)
{
    const char *rules = NULL, *data = NULL, *listen = NULL, *cert = NULL, *key = NULL;
    bool insecure = false;
    unsigned max_requests = 4096;
    uint64_t max_conns = 0, max_client = UINT64_MAX, header_timeout = DEFAULT_HEADER_TIMEOUT;
    uint64_t body_timeout = DEFAULT_BODY_TIMEOUT, max_buffered = DEFAULT_MAX_BUFFERED;
    /* the flags that take a number: name, where it goes, a size?, 0 allowed?, at most */
    const struct {
        const char *flag;
        uint64_t *to;
        bool size, zero_ok;
        uint64_t max;
    } numeric[] = {
        { "--max-connections", &max_conns, false, false, 1u << 24 },
        { "--max-client-connections", &max_client, false, true, 1u << 24 },
        { "--header-timeout", &header_timeout, false, false, 86400 },
        { "--body-timeout", &body_timeout, false, false, 86400 },
        { "--max-buffered", &max_buffered, true, false, (uint64_t)1 << 50 },
    };
    for (int i = 1; i < argc; i++) {
        size_t f = 0;
        while (f < sizeof numeric / sizeof *numeric && strcmp(argv[i], numeric[f].flag) != 0)
            f++;
        if (f < sizeof numeric / sizeof *numeric) {
            if (i + 1 >= argc || !parse_count(argv[i + 1], numeric[f].size, numeric[f].zero_ok,
                                              numeric[f].max, numeric[f].to)) {
                fprintf(stderr, "ebd: %s takes %s, not '%s'\n\n%s", argv[i], numeric[f].size
                        ? "a size in bytes (as 256MiB)" : numeric[f].zero_ok ? "a number"
                        : "a number over 0", i + 1 < argc ? argv[i + 1] : "", usage);
                return 2;
            }
            i++;
            continue;
        }
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--version")) {
            printf("ebd %s (.ebc format %u)\n", EBR_VERSION, VM_EBC_VERSION);
            return 0;
        } else if (!strcmp(argv[i], "--rules") && i + 1 < argc)
            rules = argv[++i];
        else if (!strcmp(argv[i], "--data") && i + 1 < argc)
            data = argv[++i];
        else if (!strcmp(argv[i], "--listen") && i + 1 < argc)
            listen = argv[++i];
        else if (!strcmp(argv[i], "--tls-cert") && i + 1 < argc)
            cert = argv[++i];
        else if (!strcmp(argv[i], "--tls-key") && i + 1 < argc)
            key = argv[++i];
        else if (!strcmp(argv[i], "--insecure-http"))
            insecure = true;
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
    /* Every connection takes a descriptor: the limit goes up to what the system allows, and
     * the connection limits must fit in it. */
    uint64_t fds = raise_fd_limit();
    if (!max_conns)
        max_conns = fds / 2 < DEFAULT_MAX_CONNECTIONS ? fds / 2 : DEFAULT_MAX_CONNECTIONS;
    if (max_client == UINT64_MAX)
        max_client = max_conns / 4 ? max_conns / 4 : 1;
    uint64_t need = max_conns + ebd_http_reserve((unsigned)max_conns) + SPARE_FDS;
    if (max_conns < 1 || need > fds) {
        fprintf(stderr, "ebd: %llu connections (--max-connections) need about %llu descriptors, "
                "and the limit here is %llu (ulimit -n; the hard limit bounds it)\n",
                (unsigned long long)max_conns, (unsigned long long)need, (unsigned long long)fds);
        return 1;
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
    /* (with the signals blocked, as every thread of the daemon; before the delivery threads
     * lower their priority, so that commands keep the daemon's) */
    cmd_spawner_start();

    ebd d = { .rules_path = (char *)rules, .max_requests = max_requests,
              .max_connections = (unsigned)max_conns, .max_client_connections = (unsigned)max_client,
              .header_timeout = (unsigned)header_timeout, .body_timeout = (unsigned)body_timeout,
              .max_buffered = max_buffered };
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
    char *cfg_cert = cert ? NULL : server_text(p0, "tls_cert", err, sizeof err);
    char *cfg_key = key ? NULL : server_text(p0, "tls_key", err, sizeof err);
    /* (p0 serves the start too: compiling 100,000 rules twice took 4 s more) */
    int status = 1, fd = -1;
    struct MHD_Daemon *http = NULL;
    if (err[0]) {
        fprintf(stderr, "ebd: server: %s\n", err);
        goto out;
    }
    d.listen = (char *)(listen ? listen : cfg_listen ? cfg_listen : "127.0.0.1:8088");
    d.data_dir = (char *)(data ? data : cfg_data ? cfg_data : "ebr-data");
    cert = cert ? cert : cfg_cert;
    key = key ? key : cfg_key;
    char host[256];
    uint16_t port;
    if (!parse_listen(d.listen, host, sizeof host, &port)) {
        fprintf(stderr, "ebd: --listen takes HOST:PORT (as 127.0.0.1:8088), not '%s'\n", d.listen);
        status = 2;
        goto out;
    }
    d.loopback = !strncmp(host, "127.", 4) || !strcmp(host, "localhost");
    if (!strcmp(host, "localhost"))
        snprintf(host, sizeof host, "127.0.0.1");
    if (!cert != !key) {
        fprintf(stderr, "ebd: TLS needs both a certificate and a key (--tls-cert and --tls-key, "
                "or tls_cert and tls_key in the server block)\n");
        status = 2;
        goto out;
    }
    if (cert && (!(d.tls_cert = read_text_file(cert, "certificate", err, sizeof err)) ||
                 !(d.tls_key = read_text_file(key, "key", err, sizeof err)))) {
        fprintf(stderr, "ebd: %s\n", err);
        goto out;
    }
    if (!d.loopback && !cert && !insecure) {
        fprintf(stderr, "ebd: %s is not a loopback address, and without TLS the buses' tokens "
                "would cross the network in clear text: give --tls-cert and --tls-key (or "
                "tls_cert and tls_key in the server block), or --insecure-http to accept that\n",
                d.listen);
        goto out;
    }
    if (cert && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        fprintf(stderr, "ebd: this build of libmicrohttpd has no TLS support\n");
        goto out;
    }
    /* The port first: a second daemon on it stops here, before it touches any data.  Requests
     * that come while the rules load wait in the socket's backlog. */
    fd = ebd_http_listen(host, port, err, sizeof err);
    if (fd < 0) {
        fprintf(stderr, "ebd: %s\n", err);
        goto out;
    }
    if (!data_dir_ready(d.data_dir, err, sizeof err)) {
        fprintf(stderr, "ebd: %s\n", err);
        goto out;
    }
    /* The rules, their buses and the start of every delivery are fixed before the listener
     * opens: an event acknowledged from the first request on is routed by these rules, and
     * every pair that its rule matches is at or before it. */
    sbuf errors = { 0 };
    d.rules = make_rules(&d, p0, &errors);
    p0 = NULL;
    if (!d.rules) {
        fprintf(stderr, "%sebd: not starting\n", errors.v ? errors.v : "");
        sb_free(&errors);
        goto out;
    }
    sb_free(&errors);
    apply_dedup(&d, d.rules);
    trace_start(&d);
    ebd_workers_start(&d, d.rules);
    rp_start(&d);
    sch_discovery_start(&d);
    http = ebd_http_start(&d, fd, host, port, err, sizeof err);
    if (!http) {
        fprintf(stderr, "ebd: %s\n", err);
        rp_stop(&d);
        ebd_workers_stop(&d, d.rules);
        trace_stop();
        goto out;
    }
    src_start(d.rules->sources);
    ebd_log(EBD_INFO, "msg=\"ebd started\" listen=%s://%s:%u data=%s rules=%s buses=%zu "
            "deliveries=%zu pid=%ld descriptors=%llu max_connections=%u max_client_connections=%u "
            "header_timeout_s=%u body_timeout_s=%u max_buffered=%llu", d.tls_cert ? "https" : "http",
            host, port, d.data_dir, rules, d.nbuses, d.rules->npairs, (long)getpid(),
            (unsigned long long)fds, d.max_connections, d.max_client_connections, d.header_timeout,
            d.body_timeout, (unsigned long long)d.max_buffered);
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
    ebd_http_stop(&d, http);
    src_stop(d.rules->sources);
    d.rules->sources = NULL;
    rp_stop(&d);
    ebd_workers_stop(&d, d.rules);
    trace_stop();
    ebd_log(EBD_INFO, "msg=\"ebd stopped\"");
    status = 0;
out:
    sch_discovery_stop(&d);
    if (!http && fd >= 0)
        close(fd);
    vm_program_free(p0);
    ebd_rules_free(d.rules);
    for (size_t i = 0; i < d.nbuses; i++) {
        store_close(d.buses[i]->s);
        ebd_book_free(d.buses[i]->book);
        dedup_free(d.buses[i]->dedup);
        free(d.buses[i]->name);
        free(d.buses[i]);
    }
    free(d.buses);
    free(cfg_listen);
    free(cfg_data);
    free(cfg_cert);
    free(cfg_key);
    free(d.tls_cert);
    free(d.tls_key);
    curl_global_cleanup();
    return status;
}
