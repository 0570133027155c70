/*
 * targets.c — the targets' side of delivery: a ruleset's targets made ready (their options,
 * files, publishers) and one attempt at one target, whatever drives it (the engine of
 * deliver.c, or a replay's one delivery at a time in sync.c): http through libcurl, lines to a
 * file, events to a bus, messages to a broker, an exec target's outcome; the targets' limits,
 * and a dead letter's line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../aws/aws.h"
#include "delivery_int.h"

/* ---- reading a target's options ------------------------------------------------------------ */

static bool str_eq(const vm_program *p, vm_str s, const char *w)
{
    return s.len == strlen(w) && memcmp(vm_s(p, s), w, s.len) == 0;
}

const vm_cfg *ebd_cfg_option(const vm_program *p, uint32_t opt0, uint32_t nopt, const char *key)
{
    for (uint32_t i = 0; i < nopt; i++)
        if (p->cfgs[opt0 + i].type == VM_CFG_OPTION && str_eq(p, p->cfgs[opt0 + i].key, key))
            return &p->cfgs[opt0 + i];
    return NULL;
}

const vm_cfg *ebd_cfg_child(const vm_program *p, const vm_cfg *c, uint32_t k)
{
    return c && k < c->nchild ? &p->cfgs[c->child0 + k] : NULL;
}

/* A text value: a string, or env("NAME") read now.  NULL (err set) if the variable is unset. */
char *ebd_cfg_text(const vm_program *p, const vm_cfg *v, char *err, size_t cap)
{
    return rt_cfg_text(p, v, err, cap);
}

/* A named argument of a call value (retry exponential(attempts: ...)). */
static const vm_cfg *arg_of(const vm_program *p, const vm_cfg *call, const char *name)
{
    for (uint32_t i = 0; call && call->type == VM_CFG_CALL && i < call->nchild; i++) {
        const vm_cfg *a = &p->cfgs[call->child0 + i];
        if (a->type == VM_CFG_OPTION && str_eq(p, a->key, name) && a->nchild)
            return &p->cfgs[a->child0];
    }
    return NULL;
}

/* ---- preparing a ruleset ------------------------------------------------------------------- */

static char *under_data(const ebd *d, const char *path)
{
    if (path[0] == '/')
        return strdup(path);
    size_t n = strlen(d->data_dir) + strlen(path) + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s/%s", d->data_dir, path);
    return s;
}

/* Creates the directories above path. */
static void mkdirs_above(const char *path)
{
    char *p = strdup(path);
    for (char *s = p ? strchr(p + 1, '/') : NULL; s; s = strchr(s + 1, '/')) {
        *s = 0;
        mkdir(p, 0755);
        *s = '/';
    }
    free(p);
}

/* May a file target (or dead-letter file) have this path?  A relative path names a file under
 * the data directory and must stay there: empty, or with a ".." part, it is refused (why set).
 * The compiler says the same of a path written in the rules; this checks one from env(). */
static bool output_path_ok(const char *path, char *why, size_t cap)
{
    if (!*path) {
        snprintf(why, cap, "the file's path is empty");
        return false;
    }
    for (const char *c = path; path[0] != '/' && *c; c += strcspn(c, "/") + (c[strcspn(c, "/")] != 0))
        if (strncmp(c, "..", 2) == 0 && (c[2] == '/' || c[2] == 0)) {
            snprintf(why, cap, "'%.100s': a relative path names a file under the data directory "
                     "and cannot leave it ('..' is not allowed)", path);
            return false;
        }
    /* The daemon's own folders there (logs, the list of pairs, replays) are not for targets. */
    static const char *const own[] = { "buses", "pairs", "replays" };
    const char *first = path;
    while (first[0] == '.' && first[1] == '/')
        first += 2 + strspn(first + 2, "/");
    for (size_t i = 0; path[0] != '/' && i < sizeof own / sizeof *own; i++)
        if (!strncmp(first, own[i], strlen(own[i])) &&
            (first[strlen(own[i])] == '/' || !first[strlen(own[i])])) {
            snprintf(why, cap, "'%.100s': %s/ under the data directory is the daemon's own", path,
                     own[i]);
            return false;
        }
    return true;
}

/* Opens a file target's (or dead-letter file's) path for appending, creating it and the
 * directories above it.  An absolute path is opened as written.  A relative one is walked from
 * the data directory one part at a time, without following a symbolic link anywhere (a link
 * placed there must not lead a write out of it), and must end at a regular file (a FIFO would
 * block the daemon).  Returns the descriptor, or -1 with the cause in why; *full (malloc'd, may
 * be NULL) gets the path for messages. */
int dl_open_output(const ebd *d, const char *path, char **full, char *why, size_t cap)
{
    *full = under_data(d, path);
    if (!output_path_ok(path, why, cap))
        return -1;
    const char *shown = *full ? *full : path;
    int flags = O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC;
    if (path[0] == '/') {
        mkdirs_above(path);
        int fd = open(path, flags, 0644);
        if (fd < 0)
            snprintf(why, cap, "cannot open %s: %s", shown, strerror(errno));
        return fd;
    }
    int dir = open(d->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    const char *part = path;
    while (dir >= 0 && strchr(part, '/')) {
        size_t n = strcspn(part, "/");
        char name[256];
        if (n >= sizeof name) {
            close(dir);
            snprintf(why, cap, "cannot open %s: %s", shown, strerror(ENAMETOOLONG));
            return -1;
        }
        memcpy(name, part, n);
        name[n] = 0;
        part += n + 1;
        if (n == 0 || !strcmp(name, "."))
            continue;
        mkdirat(dir, name, 0755);
        int next = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0) {
            int e = errno;
            close(dir);
            if (e == ELOOP || e == ENOTDIR)
                snprintf(why, cap, "cannot open %s: '%s' is not a directory (symbolic links are "
                         "not followed under the data directory)", shown, name);
            else
                snprintf(why, cap, "cannot open %s: %s", shown, strerror(e));
            return -1;
        }
        close(dir);
        dir = next;
    }
    if (dir < 0) {
        snprintf(why, cap, "cannot open %s: %s", shown, strerror(errno));
        return -1;
    }
    int fd = openat(dir, part, flags | O_NOFOLLOW | O_NONBLOCK, 0644);
    int e = errno;
    close(dir);
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
        close(fd);
        fd = -1;
        e = EINVAL;
    }
    if (fd < 0 && e == ELOOP)
        snprintf(why, cap, "cannot open %s: it is a symbolic link (symbolic links are not "
                 "followed under the data directory)", shown);
    else if (fd < 0 && e == EINVAL)
        snprintf(why, cap, "cannot open %s: not a regular file", shown);
    else if (fd < 0)
        snprintf(why, cap, "cannot open %s: %s", shown, strerror(e));
    else
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

/* Is s an HTTP header name (a token, RFC 9110)?  Is v fit for a header value (no CR, LF, NUL:
 * a value from the environment must not add header lines of its own)? */
static bool header_name_ok(const char *s)
{
    if (!*s || strlen(s) > 200)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s)))
            return false;
    return true;
}

static bool header_value_ok(const char *v)
{
    return strpbrk(v, "\r\n") == NULL;
}

static bool read_retry(const vm_program *p, const vm_target *t, ebd_retry *r)
{
    /* The default: 10 attempts, 1 s doubling up to 5 min, for at most 24 h. */
    *r = (ebd_retry){ 10, 1000, 300000, 86400000 };
    const vm_cfg *o = ebd_cfg_option(p, t->opt0, t->nopt, "retry");
    const vm_cfg *v = ebd_cfg_child(p, o, 0);
    if (!v)
        return true;
    if (v->type == VM_CFG_IDENT) {     /* none */
        r->attempts = 1;
        return true;
    }
    const vm_cfg *a;
    if ((a = arg_of(p, v, "attempts")))
        r->attempts = a->num < 1 ? 1 : (unsigned)a->num;
    if ((a = arg_of(p, v, "first")))
        r->first_ms = (uint64_t)a->num;
    if ((a = arg_of(p, v, "max")))
        r->max_ms = (uint64_t)a->num;
    if ((a = arg_of(p, v, "max_age")))
        r->max_age_ms = (uint64_t)a->num;
    return true;
}

/* An exec target's environment: PATH, HOME, LANG, TZ and what its `env { NAME = value }` sets
 * (values from env() read now).  NULL, why set, when a variable is unset or memory is short. */
static char **exec_env(const vm_program *p, const vm_target *t, char *why, size_t cap)
{
    const vm_cfg *block = ebd_cfg_option(p, t->opt0, t->nopt, "env");
    uint32_t n = block ? block->nchild : 0;
    const char **names = calloc(n + 1, sizeof *names);
    char **values = calloc(n + 1, sizeof *values);
    char **env = NULL;
    uint32_t k = 0;
    for (; names && values && k < n; k++) {
        const vm_cfg *v = ebd_cfg_child(p, block, k);
        names[k] = strndup(vm_s(p, v->key), v->key.len);
        values[k] = ebd_cfg_text(p, ebd_cfg_child(p, v, 0), why, cap);
        if (!names[k] || !values[k])
            break;
    }
    if (names && values && k == n)
        env = cmd_env(names, (const char *const *)values, n);
    if (!env && !why[0])
        snprintf(why, cap, "out of memory");
    for (uint32_t j = 0; names && values && j < n; j++) {
        free((char *)names[j]);
        free(values[j]);
    }
    free(names);
    free(values);
    return env;
}

bool dl_prepare_target(ebd *d, ebd_rules *r, uint32_t i, char *err, size_t cap)
{
    const vm_program *p = r->p;
    const vm_target *t = &p->targets[i];
    ebd_target *x = &r->targets[i];
    x->name = strndup(vm_s(p, t->name), t->name.len);
    x->fd = -1;
    x->dead_letter = VM_NONE;
    pthread_mutex_init(&x->mu, NULL);
    const vm_cfg *value = &p->cfgs[t->value];
    char why[256] = "";
    read_retry(p, t, &x->retry);
    const vm_cfg *o;
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "timeout")) && ebd_cfg_child(p, o, 0))
        x->timeout_ms = (long)ebd_cfg_child(p, o, 0)->num;
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "concurrency")) && ebd_cfg_child(p, o, 0))
        x->concurrency = (unsigned)ebd_cfg_child(p, o, 0)->num;
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "batch")) && ebd_cfg_child(p, o, 0))
        x->batch = (unsigned)ebd_cfg_child(p, o, 0)->num;
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "rate_limit")) && ebd_cfg_child(p, o, 0))
        x->tokens = x->rate_limit = (unsigned)ebd_cfg_child(p, o, 0)->num;
    clock_gettime(CLOCK_MONOTONIC, &x->refill);
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "dead_letter"))) {
        const vm_cfg *v = ebd_cfg_child(p, o, 0);
        if (v && v->type == VM_CFG_IDENT && str_eq(p, v->str, "file") && ebd_cfg_child(p, o, 1)) {
            /* kept as written: each dead letter opens it (dl_open_output) */
            x->dead_letter_file = ebd_cfg_text(p, ebd_cfg_child(p, o, 1), why, sizeof why);
            if (x->dead_letter_file)
                output_path_ok(x->dead_letter_file, why, sizeof why);
        } else if (v) {
            for (uint32_t k = 0; k < p->ntargets; k++)
                if (p->targets[k].name.len == v->str.len &&
                    !memcmp(vm_s(p, p->targets[k].name), vm_s(p, v->str), v->str.len))
                    x->dead_letter = k;
        }
    }
    if (str_eq(p, t->kind, "http")) {
        x->kind = T_HTTP;
        x->url = ebd_cfg_text(p, value, why, sizeof why);
        /* The compiler checks a URL written in the rules; this one may come from env(). */
        if (x->url && strncmp(x->url, "http://", 7) != 0 && strncmp(x->url, "https://", 8) != 0)
            snprintf(why, sizeof why, "the URL '%.100s' does not start with http:// or https://",
                     x->url);
        if (!x->timeout_ms)
            x->timeout_ms = 10000;
        const vm_cfg *m = ebd_cfg_option(p, t->opt0, t->nopt, "method");
        x->method = m && ebd_cfg_child(p, m, 0) ? strndup(vm_s(p, ebd_cfg_child(p, m, 0)->str), ebd_cfg_child(p, m, 0)->str.len)
                                        : strdup("POST");
        for (uint32_t k = 0; k < t->nopt && !why[0]; k++) {
            const vm_cfg *h = &p->cfgs[t->opt0 + k];
            if (h->type != VM_CFG_OPTION || !str_eq(p, h->key, "header") || h->nchild != 2)
                continue;
            char *name = ebd_cfg_text(p, ebd_cfg_child(p, h, 0), why, sizeof why);
            char *val = ebd_cfg_text(p, ebd_cfg_child(p, h, 1), why, sizeof why);
            if (name && val && (!header_name_ok(name) || !header_value_ok(val)))
                snprintf(why, sizeof why, "header '%.100s': a name must be a token and a value "
                         "must not hold CR or LF", name);
            else if (name && val) {
                size_t n = strlen(name) + strlen(val) + 3;
                char *line = malloc(n);
                snprintf(line, n, "%s: %s", name, val);
                x->headers = curl_slist_append(x->headers, line);
                free(line);
            }
            free(name);
            free(val);
        }
        const vm_cfg *sg = ebd_cfg_option(p, t->opt0, t->nopt, "sign");
        if (sg && ebd_cfg_child(p, sg, 0)) {
            x->sign_secret = ebd_cfg_text(p, arg_of(p, ebd_cfg_child(p, sg, 0), "secret"), why, sizeof why);
            const vm_cfg *hv = arg_of(p, ebd_cfg_child(p, sg, 0), "header");
            x->sign_header = hv ? ebd_cfg_text(p, hv, why, sizeof why) : strdup("X-Ebr-Signature");
            if (x->sign_header && !header_name_ok(x->sign_header))
                snprintf(why, sizeof why, "sign: '%.100s' is not a header name", x->sign_header);
            if (x->sign_secret && !*x->sign_secret)
                snprintf(why, sizeof why, "sign: the secret is empty");
        }
    } else if (str_eq(p, t->kind, "remote")) {
        /* a bus of another ebd: its events endpoint, its token, the CA its TLS is checked by */
        x->kind = T_HTTP;
        x->remote = true;
        x->method = strdup("POST");
        if (!x->timeout_ms)
            x->timeout_ms = 10000;
        char *base = ebd_cfg_text(p, value, why, sizeof why);
        if (base && strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0)
            snprintf(why, sizeof why, "the URL '%.100s' does not start with http:// or https://", base);
        if (base && (x->url = malloc(strlen(base) + 8)))
            sprintf(x->url, "%s/events", base);
        free(base);
        const vm_cfg *tk = ebd_cfg_option(p, t->opt0, t->nopt, "token");
        char *token = tk ? ebd_cfg_text(p, ebd_cfg_child(p, tk, 0), why, sizeof why) : NULL;
        if (token && !header_value_ok(token))
            snprintf(why, sizeof why, "the token holds a line break");
        else if (token) {
            size_t n = strlen(token) + 32;
            char *line = malloc(n);
            if (line) {
                snprintf(line, n, "Authorization: Bearer %s", token);
                x->headers = curl_slist_append(x->headers, line);
                free(line);
            }
        }
        free(token);
        const vm_cfg *ca = ebd_cfg_option(p, t->opt0, t->nopt, "ca");
        if (ca && (x->ca_file = ebd_cfg_text(p, ebd_cfg_child(p, ca, 0), why, sizeof why)) &&
            access(x->ca_file, R_OK) != 0)
            snprintf(why, sizeof why, "ca: %.200s: %s", x->ca_file, strerror(errno));
    } else if (str_eq(p, t->kind, "mqtt") || str_eq(p, t->kind, "nats")) {
        bool mqtt = str_eq(p, t->kind, "mqtt");
        x->kind = mqtt ? T_MQTT : T_NATS;
        if (!x->timeout_ms)
            x->timeout_ms = 10000;
        if (!(mqtt ? ebd_mqtt_target : ebd_nats_target)(x, p, t, why, sizeof why) && !why[0])
            snprintf(why, sizeof why, "out of memory");
    } else if (str_eq(p, t->kind, "file")) {
        x->kind = T_FILE;
        char *path = ebd_cfg_text(p, value, why, sizeof why);
        if (path)
            x->fd = dl_open_output(d, path, &x->path, why, sizeof why);
        free(path);
        x->fsync = STORE_FSYNC_INTERVAL;    /* synced before each cursor commit */
        const vm_cfg *f = ebd_cfg_option(p, t->opt0, t->nopt, "fsync");
        if (f && ebd_cfg_child(p, f, 0))
            x->fsync = str_eq(p, ebd_cfg_child(p, f, 0)->str, "always") ? STORE_FSYNC_ALWAYS
                     : str_eq(p, ebd_cfg_child(p, f, 0)->str, "never") ? STORE_FSYNC_NEVER : STORE_FSYNC_INTERVAL;
    } else if (str_eq(p, t->kind, "bus")) {
        x->kind = T_BUS;
        x->bus = ebd_bus_index(d, vm_s(p, value->str), value->str.len);
    } else {
        x->kind = T_EXEC;
        if (!x->timeout_ms)
            x->timeout_ms = 30000;
        /* ["prog", "arg", ...] runs prog; "a command" runs through sh -c; `args [...]` adds
         * arguments (after the list, or as $1... of the shell command). */
        uint32_t n = value->type == VM_CFG_LIST ? value->nchild : 1;
        const vm_cfg *ao = ebd_cfg_option(p, t->opt0, t->nopt, "args");
        const vm_cfg *al = ebd_cfg_child(p, ao, 0);
        uint32_t na = al && al->type == VM_CFG_LIST ? al->nchild : 0;
        x->argv = calloc(n + na + 5, sizeof *x->argv);
        uint32_t at = 0;
        if (value->type == VM_CFG_LIST) {
            for (uint32_t k = 0; k < n; k++)
                x->argv[at++] = ebd_cfg_text(p, ebd_cfg_child(p, value, k), why, sizeof why);
        } else {
            x->argv[at++] = strdup("/bin/sh");
            x->argv[at++] = strdup("-c");
            x->argv[at++] = ebd_cfg_text(p, value, why, sizeof why);
            x->argv[at++] = strdup(x->name);     /* $0 */
        }
        for (uint32_t k = 0; k < na; k++)
            x->argv[at++] = ebd_cfg_text(p, ebd_cfg_child(p, al, k), why, sizeof why);
        if (!why[0])
            x->envp = exec_env(p, t, why, sizeof why);
    }
    if (why[0]) {
        snprintf(err, cap, "target '%s': %s", x->name, why);
        return false;
    }
    return true;
}

/* ---- one attempt at one target -------------------------------------------------------------- */

static size_t on_header(char *b, size_t size, size_t n, void *arg)
{
    http_seen *h = arg;
    size_t len = size * n;
    if (len > 12 && !strncasecmp(b, "Retry-After:", 12)) {
        const char *v = b + 12;
        while (*v == ' ')
            v++;
        char *end;
        long secs = strtol(v, &end, 10);
        if (end != v && secs >= 0)
            h->retry_after_ms = (int64_t)secs * 1000;
        else {
            struct tm tm = { 0 };
            if (strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm)) {
                int64_t at = (int64_t)timegm(&tm) * 1000 - ebd_wall_ms();
                h->retry_after_ms = at > 0 ? at : 1;
            }
        }
    }
    return len;
}

static size_t discard(char *b, size_t size, size_t n, void *arg)
{
    (void)b;
    (void)arg;
    return size * n;
}


/* The Content-Type of a payload sent alone: a whole CloudEvent (event: the payload is the event
 * itself, which ingest checked) goes in the HTTP binding's structured mode, whose Content-Type
 * must name the event format; an AWS event, or a transform's JSON, as JSON. */
const char *dl_http_ctype(const char *payload, size_t n, bool text, bool event)
{
    return text ? CTYPE_TEXT : event && !aws_is_envelope(payload, n) ? CTYPE_CE : CTYPE_JSON;
}

/* Sets h up to deliver payload to t; *headers (freed by the caller after the transfer) and
 * *seen must live until then. */
void dl_http_prepare(ebd_target *t, CURL *h, const char *payload, size_t n, const char *ctype,
                         struct curl_slist **headers, http_seen *seen)
{
    struct curl_slist *hs = NULL;
    for (struct curl_slist *s = t->headers; s; s = s->next)
        hs = curl_slist_append(hs, s->data);
    /* a remote target sends the event as a structured CloudEvent (or a batch of them) */
    hs = curl_slist_append(hs, t->remote && strcmp(ctype, CTYPE_CE_BATCH) != 0 ? CTYPE_CE : ctype);
    hs = curl_slist_append(hs, "Expect:");
    if (t->sign_secret) {
        /* header: t=UNIX_SECONDS,v1=HEX(HMAC-SHA256(secret, "UNIX_SECONDS." + body)) */
        char ts[32], hex[65] = "", line[300];
        int tn = snprintf(ts, sizeof ts, "%lld.", (long long)(ebd_wall_ms() / 1000));
        const void *parts[2] = { ts, payload };
        size_t lens[2] = { (size_t)tn, n };
        unsigned char mac[32];
        if (ebd_hmac_sha256(mac, t->sign_secret, parts, lens, 2))
            for (int i = 0; i < 32; i++)
                snprintf(hex + 2 * i, 3, "%02x", mac[i]);
        else   /* (sent unsigned, v1 empty: the receiver refuses it, and the attempt is retried) */
            ebd_log(EBD_ERROR, "msg=\"cannot sign a delivery\" target=%s", t->name);
        ts[tn - 1] = 0;
        snprintf(line, sizeof line, "%s: t=%s,v1=%s", t->sign_header, ts, hex);
        hs = curl_slist_append(hs, line);
        snprintf(line, sizeof line, "X-Ebr-Timestamp: %s", ts);
        hs = curl_slist_append(hs, line);
    }
    *seen = (http_seen){ 0 };
    *headers = hs;
    curl_easy_setopt(h, CURLOPT_URL, t->url);
    ebd_curl_http_only(h);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, t->method);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, payload);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)n);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hs);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, t->timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, seen);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    if (t->ca_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, t->ca_file);
}

/* What a finished transfer (rc) means: success, a retryable failure or a final one. */
void dl_http_finish(ebd_target *t, CURL *h, CURLcode rc, const http_seen *seen, attempt *a)
{
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    a->status = status;
    a->retry_after_ms = seen->retry_after_ms;
    if (rc != CURLE_OK) {
        snprintf(a->error, sizeof a->error, "%s %s: %s", t->method, t->url, curl_easy_strerror(rc));
        a->retry = true;      /* network errors and timeouts */
    } else if (status >= 200 && status < 300) {
        a->error[0] = 0;
    } else {
        snprintf(a->error, sizeof a->error, "%s %s answered %ld", t->method, t->url, status);
        a->retry = status == 404 || status == 409 || status == 429 || status >= 500;
    }
}


/* JSON text s[0..n) (valid: an event, a template's output, a function's checked answer) without
 * the white space between its tokens, to out (n bytes): on one line, as a string holds no raw
 * line break.  Returns the length. */
size_t dl_json_one_line(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] == '"') {
            size_t end = vm_json_string_end(s, n, i);
            memcpy(out + o, s + i, end - i);
            o += end - i;
            i = end;
        } else {
            if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
                out[o++] = s[i];
            i++;
        }
    }
    return o;
}

/* Text s[0..n) on one line, to out (2n bytes): a backslash as \\, a line feed as \n, a carriage
 * return as \r.  Returns the length. */
size_t dl_text_one_line(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\' || c == '\n' || c == '\r') {
            out[o++] = '\\';
            out[o++] = c == '\n' ? 'n' : c == '\r' ? 'r' : '\\';
        } else {
            out[o++] = c;
        }
    }
    return o;
}

/* Appends the payload as one line: JSON without white space between tokens, text with its line
 * breaks (and backslashes) escaped, so that a payload never reads as several. */
void dl_deliver_file(ebd_target *t, const char *payload, size_t n, bool text, attempt *a)
{
    /* One write of the line: O_APPEND keeps lines whole even with several writers. */
    char *line = malloc(2 * n + 1);
    if (!line) {
        snprintf(a->error, sizeof a->error, "out of memory");
        a->retry = true;
        return;
    }
    size_t len = text ? dl_text_one_line(payload, n, line) : dl_json_one_line(payload, n, line);
    line[len++] = '\n';
    ssize_t w = write(t->fd, line, len);
    free(line);
    if (w != (ssize_t)len || (t->fsync == STORE_FSYNC_ALWAYS && fdatasync(t->fd) != 0)) {
        snprintf(a->error, sizeof a->error, "%s: %s", t->path, w < 0 ? strerror(errno) : "short write");
        a->retry = true;
    }
}

/* Can a bus target take this payload (a CloudEvent)?  If not, a->error says why (not retried). */
bool dl_bus_payload_ok(const ebd_target *t, const char *payload, size_t n, bool text,
                           attempt *a)
{
    char why[200] = "it is text";
    const char *id, *what = "a CloudEvent";
    size_t idlen;
    bool json = t->bus != VM_NONE && !text && vm_json_valid(payload, n, NULL);
    if (!text && !json)
        snprintf(why, sizeof why, "it is not JSON");
    if (json && aws_looks_like_envelope(payload, n)) {        /* an AWS event (docs/aws.md) */
        what = "a whole AWS event";
        if (aws_envelope_check(payload, n, why, sizeof why))
            return true;
    } else if (json && ce_check(payload, n, why, sizeof why, &id, &idlen, NULL)) {
        return true;
    }
    snprintf(a->error, sizeof a->error, "bus target '%s': the payload is not %s: %s", t->name,
             what, why);
    return false;
}

/* delivery: the pair's delivery of one event (its Nats-Msg-Id on a JetStream target: a retry
 * keeps it, another delivery never shares it), or NULL (a replay's: made on purpose again). */
void dl_deliver_broker(ebd_target *t, const char *payload, size_t n, bool text,
                           const char *delivery, attempt *a)
{
    char why[300];
    bool ok = t->kind == T_MQTT ? ebd_mqtt_send(t, payload, n, text, why, sizeof why)
                                : ebd_nats_send(t, payload, n, text, delivery, why, sizeof why);
    if (!ok) {
        snprintf(a->error, sizeof a->error, "%s target '%s': %s",
                 t->kind == T_MQTT ? "mqtt" : "nats", t->name, why);
        a->retry = true;
    }
}

/* A remote target forwards CloudEvents only: the other daemon would refuse anything else. */
bool dl_remote_payload_ok(const ebd_target *t, const char *payload, size_t n, bool text,
                              attempt *a)
{
    char why[200] = "it is text";
    const char *id;
    size_t idlen;
    if (!text && ce_check(payload, n, why, sizeof why, &id, &idlen, NULL))
        return true;
    snprintf(a->error, sizeof a->error, "remote target '%s': the payload is not a CloudEvent: %s",
             t->name, why);
    return false;
}

void dl_deliver_bus(ebd *d, ebd_target *t, const char *payload, size_t n, bool text,
                        attempt *a)
{
    if (!dl_bus_payload_ok(t, payload, n, text, a))
        return;
    store_entry e = { payload, (uint32_t)n, 0, NULL };
    store_status st = ebd_bus_store(d->buses[t->bus], &e, 1, NULL, NULL);   /* (dedup window) */
    if (st != STORE_OK) {
        snprintf(a->error, sizeof a->error, "bus '%s': %s", d->buses[t->bus]->name,
                 store_error(d->buses[t->bus]->s));
        a->retry = true;
    }
}

/* What a finished command of an exec target means (docs/ebd.md, Commands): exit status 0 is
 * success.  What it wrote to standard error is kept in part (CMD_STDERR_KEEP bytes) for the
 * error, or logged, escaped, when it succeeded.  r is freed. */
void dl_exec_outcome(ebd_target *t, const cmd_spec *s, cmd_result *r, attempt *a)
{
    char why[CMD_STDERR_KEEP + 100];
    if (cmd_describe(s, r, why, sizeof why)) {
        snprintf(a->error, sizeof a->error, "%s %s", t->argv[0], why);
        a->status = r->spawn_errno || r->timed_out ? 0 : WIFEXITED(r->status) ? WEXITSTATUS(r->status)
                                                                             : -WTERMSIG(r->status);
        a->retry = true;
    } else if (r->nerr) {
        char note[CMD_STDERR_KEEP + 8], esc[4 * sizeof note];
        cmd_stderr_text(r, note, sizeof note);
        ebd_log(EBD_INFO, "msg=\"command wrote to standard error\" target=%s stderr=\"%s\"",
                t->name, ebd_log_text(note, esc, sizeof esc));
    }
    cmd_result_free(r);
}

/* Under t->mu: the rate limit's bucket, refilled for the time since it was last looked at. */
static void refill(ebd_target *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double secs = (double)(now.tv_sec - t->refill.tv_sec) + (double)(now.tv_nsec - t->refill.tv_nsec) / 1e9;
    t->refill = now;
    t->tokens += secs * t->rate_limit;
    if (t->tokens > t->rate_limit)
        t->tokens = t->rate_limit;
}

/* Takes a slot of the target's concurrency limit and a rate-limit token if both are free now. */
bool dl_try_slot(ebd_target *t)
{
    if (!t->concurrency && !t->rate_limit)
        return true;
    pthread_mutex_lock(&t->mu);
    if (t->rate_limit)
        refill(t);
    bool ok = (!t->concurrency || t->busy < t->concurrency) && (!t->rate_limit || t->tokens >= 1);
    if (ok) {
        t->busy++;
        if (t->rate_limit)
            t->tokens -= 1;
    }
    pthread_mutex_unlock(&t->mu);
    return ok;
}

/* How many deliveries the target's limits let start now, at most want (nothing is taken: a
 * pair takes no more events than it could start, rather than hold them waiting for slots). */
unsigned dl_slots_free(ebd_target *t, unsigned want)
{
    if (!t->concurrency && !t->rate_limit)
        return want;
    pthread_mutex_lock(&t->mu);
    if (t->concurrency && want > (t->busy < t->concurrency ? t->concurrency - t->busy : 0))
        want = t->busy < t->concurrency ? t->concurrency - t->busy : 0;
    if (t->rate_limit) {
        refill(t);
        if (want > (unsigned)t->tokens)
            want = (unsigned)t->tokens;
    }
    pthread_mutex_unlock(&t->mu);
    return want;
}

void dl_give_slot(ebd_target *t)
{
    if (!t->concurrency && !t->rate_limit)
        return;
    pthread_mutex_lock(&t->mu);
    t->busy--;
    pthread_mutex_unlock(&t->mu);
}


typedef struct {
    const char *s;
    unsigned hops;
    sbuf *out;                    /* stamping: the members kept */
    bool any;
    bool nulls;                   /* stamping a CloudEvent: its attributes set to null go */
} hops_walk;

static bool find_hops(void *arg, const js_member *m)
{
    hops_walk *h = arg;
    if (js_key_is(h->s, m, VM_HOPS_ATTR)) {
        unsigned v = 0;
        for (uint32_t i = 0; i < m->val_len && h->s[m->val_off + i] >= '0' &&
                             h->s[m->val_off + i] <= '9' && v < 1000000; i++)
            v = v * 10 + (unsigned)(h->s[m->val_off + i] - '0');
        h->hops = v;
    }
    return true;
}

static bool keep_member(void *arg, const js_member *m)
{
    hops_walk *h = arg;
    if (!js_key_is(h->s, m, VM_HOPS_ATTR) && !(h->nulls && ce_null_attribute(h->s, m)))
        js_put_member(h->out, h->s, m, &h->any);
    return true;
}

/* A bus target's payload gets the extension attribute VM_HOPS_ATTR: one more than the event it
 * was made from had (0 when it had none), replacing any the payload carried, so that an event
 * cannot go round between buses for ever; a CloudEvent's attributes set to null are taken out
 * of it, as ingest takes them out (ce_drop_nulls).  Past VM_MAX_BUS_HOPS: -1 with the reason in err (the
 * caller dead-letters it).  A payload that is not a JSON object is left as it is (dl_deliver_bus
 * refuses it).  1 otherwise, *payload replaced. */
int dl_stamp_hops(const char *event, size_t len, char **payload, size_t *plen, char *err,
                      size_t cap)
{
    hops_walk src = { .s = event };
    size_t i = vm_json_ws(src.s, len, 0);
    if (i < len && src.s[i] == '{')
        js_each(src.s, len, i, find_hops, &src);
    unsigned hops = src.hops + 1;
    if (hops > VM_MAX_BUS_HOPS) {
        snprintf(err, cap, "the event has passed %u bus targets already (%s %u), the most "
                 "allowed: the rules may send it round in a loop", src.hops, VM_HOPS_ATTR, src.hops);
        return -1;
    }
    if (!vm_json_valid(*payload, *plen, NULL))
        return 1;
    i = vm_json_ws(*payload, *plen, 0);
    if ((*payload)[i] != '{')
        return 1;
    sbuf out = { 0 };
    hops_walk h = { .s = *payload, .out = &out, .nulls = !aws_looks_like_envelope(*payload, *plen) };
    sb_puts(&out, "{");
    js_each(*payload, *plen, i, keep_member, &h);
    sb_printf(&out, "%s\"%s\":%u}", h.any ? "," : "", VM_HOPS_ATTR, hops);
    if (out.oom) {
        sb_free(&out);
        snprintf(err, cap, "out of memory");
        return -1;
    }
    free(*payload);
    *payload = out.v;
    *plen = out.n;
    return 1;
}

/* The line a dead letter gets (docs/ebd.md "Dead letters"): the event, the rule and target, the
 * last status and error, the attempts and when the first and last were, the offset; and, for a
 * replayed delivery, "replay". */
void dl_dead_letter_record(sbuf *b, const char *event, size_t len, const char *rule,
                               size_t rlen, const char *target, const attempt *a,
                               unsigned attempts, int64_t first_ms, int64_t last_ms, uint64_t off,
                               const char *replay)
{
    char t0[40], t1[40];
    rt_time_text(first_ms, t0, sizeof t0);
    rt_time_text(last_ms, t1, sizeof t1);
    sb_puts(b, "{\"event\":");
    sb_put(b, event, len);
    sb_puts(b, ",\"rule\":");
    sb_json_string(b, rule, rlen);
    sb_puts(b, ",\"target\":");
    sb_json_string(b, target, strlen(target));
    if (a->status)
        sb_printf(b, ",\"status\":%ld", a->status);
    else
        sb_puts(b, ",\"status\":null");
    sb_puts(b, ",\"error\":");
    sb_json_string(b, a->error, strlen(a->error));
    sb_printf(b, ",\"attempts\":%u,\"first_attempt\":\"%s\",\"last_attempt\":\"%s\",\"offset\":%"
              PRIu64, attempts, t0, t1, off);
    if (replay) {
        sb_puts(b, ",\"replay\":");
        sb_json_string(b, replay, strlen(replay));
    }
    sb_puts(b, "}");
}
