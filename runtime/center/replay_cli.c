/*
 * replay_cli.c — `ebc replay` (docs/replay.md, docs/ebc.md): starts a replay on a running ebd
 * and follows it (a progress bar on a terminal, a line every few seconds otherwise), shows or
 * cancels one, lists them; and the dry run offline (`--dry-run RULES.ebr --data DIR`), which
 * opens the bus log read-only beside a running ebd and delivers nothing.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "../../compiler/compiler.h"
#include "query.h"

enum { RC_OK = 0, RC_RULES = 1, RC_USAGE = 2, RC_INPUT = 3, RC_LOG = 5, RC_ENDED = 6 };

static const char usage[] =
    "usage: ebc replay --url URL --bus BUS --since TIME [--until TIME] [--rule RULE]\n"
    "                  [--target TARGET] [--name NAME] [--rate N] [--token TOKEN] [--no-wait]\n"
    "       ebc replay --url URL --bus BUS (--status NAME | --cancel NAME | --list) [--token T]\n"
    "       ebc replay --dry-run RULES --data DIR --bus BUS --since TIME [--until TIME]\n"
    "                  [--json]\n"
    "TIME: RFC 3339 (2026-12-05T16:00:00Z) or a duration back from now (24h, 90m, 30s).\n"
    "Exit status: 0 done; 1 the rules have errors; 2 bad command line; 3 the daemon cannot be\n"
    "reached or refused the request; 5 the log cannot be read; 6 the replay was cancelled or\n"
    "failed.\n";

typedef struct {
    const char *url, *bus, *since, *until, *rule, *target, *name, *token, *rate;
    const char *status, *cancel, *dry, *data;
    bool list, json, no_wait;
} opts;

/* ---- the dry run ------------------------------------------------------------------------------- */

static int dry_run(const opts *o)
{
    if (!o->data || !o->bus || !o->since) {
        fputs("ebc replay --dry-run needs --data DIR, --bus BUS and --since TIME\n\n", stderr);
        fputs(usage, stderr);
        return RC_USAGE;
    }
    int64_t now = qy_now_ns(), since, until = QY_NONE_AFTER;
    char why[300];
    if (!qy_parse_time(o->since, now, &since, why, sizeof why) ||
        (o->until && !qy_parse_time(o->until, now, &until, why, sizeof why))) {
        fprintf(stderr, "ebc replay: %s\n", why);
        return RC_USAGE;
    }
    /* RULES: .ebr source, or a compiled .ebc (told apart as ebc does, by the first bytes) */
    vm_program *p;
    if (vm_file_is_ebc(o->dry)) {
        vm_error e;
        if (!(p = vm_program_load(o->dry, &e))) {
            fprintf(stderr, "%s: error: not a valid ruleset file: %s\n", o->dry, e.msg);
            return RC_INPUT;
        }
    } else {
        cc_result res;
        if (!(p = cc_compile_file(o->dry, stderr, &res)))
            return RC_RULES;
    }
    uint32_t bus = dr_bus_index(p, o->bus);
    if (bus == VM_NONE) {
        fprintf(stderr, "ebc replay: %s declares no bus '%s'\n", o->dry, o->bus);
        vm_program_free(p);
        return RC_USAGE;
    }
    char dir[4200], err[512];
    snprintf(dir, sizeof dir, "%s/buses/%s", o->data, o->bus);
    store *s;
    store_options so = { .read_only = true };
    if (log_open(dir, &so, &s, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "ebc replay: %s\n", err);
        vm_program_free(p);
        return RC_INPUT;
    }
    dr_result r;
    bool ok = dr_run(s, p, bus, since, until, NULL, &r, err, sizeof err);
    store_close(s);
    vm_program_free(p);
    if (!ok) {
        fprintf(stderr, "ebc replay: %s\n", err);
        return RC_LOG;
    }
    if (o->json) {
        char *j = dr_json(&r);
        puts(j ? j : "{}");
        free(j);
    } else {
        printf("%" PRIu64 " events read from bus %s", r.events, o->bus);
        if (r.events)
            printf(" (offsets %" PRIu64 "-%" PRIu64 ")", r.first, r.last);
        printf("; nothing delivered\n");
        for (size_t i = 0; i < r.nrules; i++) {
            printf("rule %s: %" PRIu64 " matched", r.rules[i].name, r.rules[i].matched);
            for (unsigned k = 0; k < r.rules[i].nsamples; k++)
                printf("%s%s", k ? ", " : "; samples: ", r.rules[i].samples[k]);
            putchar('\n');
        }
        if (r.failed)
            printf("%" PRIu64 " events could not be decided for some rule (its step budget)\n",
                   r.failed);
    }
    dr_free(&r);
    return RC_OK;
}

/* ---- talking to ebd ------------------------------------------------------------------------------ */

typedef struct {
    char *v;
    size_t n;
} buf;

static size_t take(char *b, size_t size, size_t n, void *arg)
{
    buf *x = arg;
    char *v = realloc(x->v, x->n + size * n + 1);
    if (!v)
        return 0;
    memcpy(v + x->n, b, size * n);
    x->v = v;
    x->n += size * n;
    v[x->n] = 0;
    return size * n;
}

/* A request to ebd: METHOD URL/path with an optional JSON body; the status (0 when it could not
 * be made, the reason in out) and the answer in out (malloc'd). */
static long call(const opts *o, const char *method, const char *path, const char *body, buf *out)
{
    CURL *h = curl_easy_init();
    char url[4200];
    snprintf(url, sizeof url, "%s%s", o->url, path);
    struct curl_slist *hs = curl_slist_append(NULL, "Content-Type: application/json");
    char auth[600];
    if (o->token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", o->token);
        hs = curl_slist_append(hs, auth);
    }
    *out = (buf){ 0 };
    long status = 0;
    if (!h)
        return 0;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, take);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(h);
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    else {
        free(out->v);
        out->v = strdup(curl_easy_strerror(rc));
        out->n = out->v ? strlen(out->v) : 0;
    }
    curl_slist_free_all(hs);
    curl_easy_cleanup(h);
    return status;
}

/* Prints why a request failed: the answer's "error" (and "field"), else the answer. */
static void say_refused(long status, const buf *b)
{
    cJSON *j = b->v ? cJSON_Parse(b->v) : NULL;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, "field");
    if (!status)
        fprintf(stderr, "ebc replay: cannot reach ebd: %s\n", b->v ? b->v : "?");
    else if (cJSON_IsString(e))
        fprintf(stderr, "ebc replay: %ld: %s%s%s%s\n", status, e->valuestring,
                cJSON_IsString(f) ? " (" : "", cJSON_IsString(f) ? f->valuestring : "",
                cJSON_IsString(f) ? ")" : "");
    else
        fprintf(stderr, "ebc replay: %ld: %s\n", status, b->v ? b->v : "");
    cJSON_Delete(j);
}

static double num(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static const char *str(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* One progress report: a bar redrawn in place on a terminal, else a line. */
static void progress(const cJSON *j, bool tty)
{
    double total = num(j, "total"), p = num(j, "progress"), rate = num(j, "rate");
    double left = total - (num(j, "position") - num(j, "first"));
    char eta[32] = "-";
    if (rate > 0 && left > 0)
        snprintf(eta, sizeof eta, "%.0fs", left / rate);
    if (tty) {
        char bar[31];
        int fill = (int)(p * 30 + 0.5);
        for (int i = 0; i < 30; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        printf("\r%s [%s] %5.1f%%  %.0f/%.0f events  %.0f ev/s  ETA %s  delivered %.0f failed %.0f ",
               str(j, "name"), bar, p * 100, total - (left > 0 ? left : 0), total, rate, eta,
               num(j, "delivered"), num(j, "failed"));
    } else {
        printf("%s %s %.1f%% read=%.0f/%.0f matched=%.0f delivered=%.0f failed=%.0f rate=%.0f/s "
               "eta=%s\n", str(j, "name"), str(j, "state"), p * 100, num(j, "events_read"), total,
               num(j, "matched"), num(j, "delivered"), num(j, "failed"), rate, eta);
    }
    fflush(stdout);
}

/* Follows replay `name` until it is no longer running; its exit status. */
static int follow(const opts *o, const char *name)
{
    bool tty = isatty(STDOUT_FILENO);
    char path[1200];
    snprintf(path, sizeof path, "/v1/buses/%s/replays/%s", o->bus, name);
    struct timespec tick = { 0, 250000000 };
    int since_line = 1 << 30;
    for (;;) {
        buf b;
        long st = call(o, "GET", path, NULL, &b);
        cJSON *j = st == 200 ? cJSON_Parse(b.v) : NULL;
        if (!j) {
            say_refused(st, &b);
            free(b.v);
            return RC_INPUT;
        }
        free(b.v);
        const char *state = str(j, "state");
        bool running = !strcmp(state, "running");
        if (tty || !running || (since_line += 250) >= 3000) {
            progress(j, tty);
            since_line = 0;
        }
        if (!running) {
            if (tty)
                putchar('\n');
            const char *err = str(j, "error");
            printf("%s: %s; %.0f events read, %.0f matched, %.0f delivered, %.0f failed%s%s\n",
                   name, state, num(j, "events_read"), num(j, "matched"), num(j, "delivered"),
                   num(j, "failed"), err[0] ? "; last error: " : "", err);
            int rc = !strcmp(state, "done") ? RC_OK : RC_ENDED;
            cJSON_Delete(j);
            return rc;
        }
        cJSON_Delete(j);
        nanosleep(&tick, NULL);
    }
}

static int show(const opts *o, const char *method, const char *path)
{
    buf b;
    long st = call(o, method, path, NULL, &b);
    if (st != 200) {
        say_refused(st, &b);
        free(b.v);
        return RC_INPUT;
    }
    puts(b.v ? b.v : "");
    free(b.v);
    return RC_OK;
}

static int start(const opts *o)
{
    if (!o->since) {
        fputs("ebc replay: --since is needed\n\n", stderr);
        fputs(usage, stderr);
        return RC_USAGE;
    }
    cJSON *j = cJSON_CreateObject();
    const char *keys[] = { "name", "since", "until", "rule", "target" };
    const char *vals[] = { o->name, o->since, o->until, o->rule, o->target };
    for (int k = 0; k < 5; k++)
        if (vals[k])
            cJSON_AddStringToObject(j, keys[k], vals[k]);
    if (o->rate)
        cJSON_AddNumberToObject(j, "rate", atof(o->rate));
    char *body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    char path[600];
    snprintf(path, sizeof path, "/v1/buses/%s/replays", o->bus);
    buf b;
    long st = call(o, "POST", path, body, &b);
    free(body);
    cJSON *a = st == 201 ? cJSON_Parse(b.v) : NULL;
    if (!a) {
        say_refused(st, &b);
        free(b.v);
        return RC_INPUT;
    }
    free(b.v);
    char name[128];
    snprintf(name, sizeof name, "%s", str(a, "name"));
    printf("replay %s started on bus %s: offsets %.0f to %.0f (%.0f events)\n", name, o->bus,
           num(a, "first"), num(a, "end"), num(a, "total"));
    cJSON_Delete(a);
    fflush(stdout);
    return o->no_wait ? RC_OK : follow(o, name);
}

int rp_cli(int argc, char **argv)
{
    opts o = { 0 };
    struct { const char *flag; const char **to; } vals[] = {
        { "--url", &o.url }, { "--bus", &o.bus }, { "--since", &o.since }, { "--until", &o.until },
        { "--rule", &o.rule }, { "--target", &o.target }, { "--name", &o.name },
        { "--token", &o.token }, { "--rate", &o.rate }, { "--status", &o.status },
        { "--cancel", &o.cancel }, { "--dry-run", &o.dry }, { "--data", &o.data },
    };
    for (int i = 0; i < argc; i++) {
        size_t k = 0;
        while (k < sizeof vals / sizeof *vals && strcmp(argv[i], vals[k].flag))
            k++;
        if (k < sizeof vals / sizeof *vals && i + 1 < argc)
            *vals[k].to = argv[++i];
        else if (!strcmp(argv[i], "--list"))
            o.list = true;
        else if (!strcmp(argv[i], "--json"))
            o.json = true;
        else if (!strcmp(argv[i], "--no-wait"))
            o.no_wait = true;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            return RC_OK;
        } else {
            fprintf(stderr, "ebc replay: unexpected argument '%s'\n\n%s", argv[i], usage);
            return RC_USAGE;
        }
    }
    if (o.rate) {
        char *end;
        double r = strtod(o.rate, &end);
        if (*end || end == o.rate || r < 0) {
            fprintf(stderr, "ebc replay: --rate takes events a second, not '%s'\n", o.rate);
            return RC_USAGE;
        }
    }
    if (o.dry)
        return dry_run(&o);
    if (!o.url || !o.bus) {
        fprintf(stderr, "ebc replay: --url and --bus are needed\n\n%s", usage);
        return RC_USAGE;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char path[1200];
    int rc;
    if (o.status) {
        snprintf(path, sizeof path, "/v1/buses/%s/replays/%s", o.bus, o.status);
        rc = show(&o, "GET", path);
    } else if (o.cancel) {
        snprintf(path, sizeof path, "/v1/buses/%s/replays/%s", o.bus, o.cancel);
        rc = show(&o, "DELETE", path);
    } else if (o.list) {
        snprintf(path, sizeof path, "/v1/buses/%s/replays", o.bus);
        rc = show(&o, "GET", path);
    } else {
        rc = start(&o);
    }
    curl_global_cleanup();
    return rc;
}
