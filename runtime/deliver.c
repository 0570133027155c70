/*
 * deliver.c — from the bus log to the targets.
 *
 * Each (rule, target) pair has a worker thread with its own cursor on the rule's bus log and its
 * own durable named cursor ("RULE.TARGET"): it reads events in order, runs the matcher (its own
 * vm_ctx), runs the rule's transform for those the rule matches, and delivers the payload with
 * retries; an event whose delivery is exhausted or refused goes to the dead-letter target.  The
 * cursor is committed (after syncing file targets) every 200 ms or 256 events, so after a crash
 * delivery resumes from it: at least once.  A slow or failing target holds back only its own
 * pairs, and nothing queues in memory: the log is the queue.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "command.h"
#include "ebd_int.h"

#define COMMIT_EVERY_MS 200
#define COMMIT_EVERY_EVENTS 256

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t real_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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
    if (!v)
        return NULL;
    if (v->type == VM_CFG_ENV) {
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)v->str.len, vm_s(p, v->str));
        const char *e = getenv(name);
        if (!e) {
            snprintf(err, cap, "the environment variable %s is not set", name);
            return NULL;
        }
        return strdup(e);
    }
    return strndup(vm_s(p, v->str), v->str.len);
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

/* ---- SHA-256 and HMAC (FIPS 180-4, RFC 2104) for signed deliveries ------------------------- */

typedef struct {
    uint32_t h[8];
    unsigned char buf[64];
    uint64_t len;
    size_t fill;
} sha256;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) ((x) >> (n) | (x) << (32 - (n)))

static void sha_block(sha256 *s, const unsigned char *b)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)b[4 * i] << 24 | (uint32_t)b[4 * i + 1] << 16 | (uint32_t)b[4 * i + 2] << 8 | b[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s->h[0], bb = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5],
             g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c));
        h = g, g = f, f = e, e = d + t1, d = c, c = bb, bb = a, a = t1 + t2;
    }
    s->h[0] += a, s->h[1] += bb, s->h[2] += c, s->h[3] += d;
    s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void sha_init(sha256 *s)
{
    static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
    memcpy(s->h, iv, sizeof iv);
    s->len = 0;
    s->fill = 0;
}

static void sha_add(sha256 *s, const void *data, size_t n)
{
    const unsigned char *p = data;
    s->len += n;
    while (n) {
        size_t k = 64 - s->fill < n ? 64 - s->fill : n;
        memcpy(s->buf + s->fill, p, k);
        s->fill += k, p += k, n -= k;
        if (s->fill == 64) {
            sha_block(s, s->buf);
            s->fill = 0;
        }
    }
}

static void sha_end(sha256 *s, unsigned char out[32])
{
    uint64_t bits = s->len * 8;
    unsigned char pad = 0x80;
    sha_add(s, &pad, 1);
    pad = 0;
    while (s->fill != 56)
        sha_add(s, &pad, 1);
    unsigned char l[8];
    for (int i = 0; i < 8; i++)
        l[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha_add(s, l, 8);
    for (int i = 0; i < 8; i++)
        for (int k = 0; k < 4; k++)
            out[4 * i + k] = (unsigned char)(s->h[i] >> (24 - 8 * k));
}

/* HMAC-SHA256(key, a || b) as 64 hex digits. */
void ebd_hmac_sha256_hex(const char *key, const char *a, size_t an, const char *b, size_t bn,
                         char hex[65]);
void ebd_hmac_sha256_hex(const char *key, const char *a, size_t an, const char *b, size_t bn,
                         char hex[65])
{
    unsigned char k[64] = { 0 }, ipad[64], opad[64], inner[32], mac[32];
    size_t kn = strlen(key);
    if (kn > 64) {
        sha256 s;
        sha_init(&s);
        sha_add(&s, key, kn);
        sha_end(&s, k);
    } else
        memcpy(k, key, kn);
    for (int i = 0; i < 64; i++) {
        ipad[i] = k[i] ^ 0x36;
        opad[i] = k[i] ^ 0x5c;
    }
    sha256 s;
    sha_init(&s);
    sha_add(&s, ipad, 64);
    sha_add(&s, a, an);
    sha_add(&s, b, bn);
    sha_end(&s, inner);
    sha_init(&s);
    sha_add(&s, opad, 64);
    sha_add(&s, inner, 32);
    sha_end(&s, mac);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);
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
    /* The daemon's own folders there (the buses' logs, the list of pairs) are not for targets. */
    static const char *const own[] = { "buses", "pairs" };
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
static int open_output(const ebd *d, const char *path, char **full, char *why, size_t cap)
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

static bool prepare_target(ebd *d, ebd_rules *r, uint32_t i, char *err, size_t cap)
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
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "rate_limit")) && ebd_cfg_child(p, o, 0))
        x->tokens = x->rate_limit = (unsigned)ebd_cfg_child(p, o, 0)->num;
    clock_gettime(CLOCK_MONOTONIC, &x->refill);
    if ((o = ebd_cfg_option(p, t->opt0, t->nopt, "dead_letter"))) {
        const vm_cfg *v = ebd_cfg_child(p, o, 0);
        if (v && v->type == VM_CFG_IDENT && str_eq(p, v->str, "file") && ebd_cfg_child(p, o, 1)) {
            /* kept as written: each dead letter opens it (open_output) */
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
    } else if (str_eq(p, t->kind, "file")) {
        x->kind = T_FILE;
        char *path = ebd_cfg_text(p, value, why, sizeof why);
        if (path)
            x->fd = open_output(d, path, &x->path, why, sizeof why);
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

/* ---- the pairs that have run ----------------------------------------------------------------
 * DATA/pairs/BUS lists, a name per line, every pair of the bus that ever took a position.  A
 * pair listed there whose cursor is gone (removed by hand, a backup restored without it) has
 * lost its place: it starts again from the oldest event kept, with an error in the log, rather
 * than silently skip its backlog. */

typedef struct {
    char **v;
    size_t n, cap;
    bool changed;
} namelist;

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void pairs_path(const ebd *d, const char *bus, char *out, size_t cap)
{
    snprintf(out, cap, "%s/pairs/%s", d->data_dir, bus);
}

/* Adds name (kept sorted when the list is written). */
static bool pairs_add(namelist *l, const char *name)
{
    if (l->n == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 64;
        char **v = realloc(l->v, c * sizeof *v);
        if (!v)
            return false;
        l->v = v;
        l->cap = c;
    }
    if (!(l->v[l->n] = strdup(name)))
        return false;
    l->n++;
    l->changed = true;
    return true;
}

/* Reads bus's list (sorted; empty when there is none yet); false when it cannot be read. */
static bool pairs_load(const ebd *d, const char *bus, namelist *l, char *err, size_t cap)
{
    char path[4400];
    pairs_path(d, bus, path, sizeof path);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT)
            return true;
        snprintf(err, cap, "cannot read %s: %s", path, strerror(errno));
        return false;
    }
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    bool ok = true;
    while (ok && (n = getline(&line, &lcap, f)) > 0) {
        if (line[n - 1] == '\n')
            line[--n] = 0;
        if (n > 0)
            ok = pairs_add(l, line);
    }
    free(line);
    fclose(f);
    if (!ok)
        snprintf(err, cap, "out of memory reading %s", path);
    l->changed = false;       /* as read: nothing to write back */
    qsort(l->v, l->n, sizeof *l->v, cmp_name);
    return ok;
}

static bool pairs_has(const namelist *l, const char *name)
{
    return l->n && bsearch(&name, l->v, l->n, sizeof *l->v, cmp_name) != NULL;
}

/* Writes bus's list whole, durably (a new file synced, renamed over the old, the folder synced). */
static bool pairs_save(const ebd *d, const char *bus, namelist *l, char *err, size_t cap)
{
    char dir[4300], path[4400], tmp[4500];
    snprintf(dir, sizeof dir, "%s/pairs", d->data_dir);
    mkdir(dir, 0755);
    pairs_path(d, bus, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    qsort(l->v, l->n, sizeof *l->v, cmp_name);
    FILE *f = fopen(tmp, "w");
    bool ok = f != NULL;
    for (size_t i = 0; ok && i < l->n; i++)
        ok = fprintf(f, "%s\n", l->v[i]) > 0;
    ok = f && fflush(f) == 0 && fsync(fileno(f)) == 0 && ok;
    if (f && fclose(f) != 0)
        ok = false;
    ok = ok && rename(tmp, path) == 0;
    int dfd = ok ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    ok = ok && dfd >= 0 && fsync(dfd) == 0;
    if (dfd >= 0)
        close(dfd);
    if (!ok)
        snprintf(err, cap, "cannot write %s: %s", path, strerror(errno));
    return ok;
}

static void pairs_free(namelist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
}

/* Fixes where each pair without a cursor starts, committed at once: a pair that has never run,
 * at the end of its bus's log now; one that has run before and lost its cursor, at the oldest
 * event kept, loudly.  This runs while the rules are prepared, before ingest can acknowledge an
 * event under them (at start-up before the listener opens; at reload before the swap), so every
 * event acknowledged under these rules is at or after each new pair's start: none falls in a gap
 * between "acknowledged" and "the pair took its position".  An event acknowledged during a
 * reload, before the swap, may reach a rule that the reload adds (docs/ebd.md).  False, with
 * the cause in err, when a position cannot be read or made durable. */
static bool claim_new_pairs(ebd *d, ebd_rules *r, char *err, size_t cap)
{
    const vm_program *p = r->p;
    namelist *known = calloc(d->nbuses ? d->nbuses : 1, sizeof *known);
    bool *loaded = calloc(d->nbuses ? d->nbuses : 1, sizeof *loaded);
    bool ok = known && loaded;
    if (!ok)
        snprintf(err, cap, "out of memory");
    for (size_t i = 0; ok && i < r->nworkers; i++) {
        ebd_worker *w = &r->workers[i];
        uint32_t b = r->bus_of[p->rules[w->rule].bus];
        if (b == VM_NONE)
            continue;
        store *s = d->buses[b]->s;
        const char *bus = d->buses[b]->name;
        if (!loaded[b] && !(ok = loaded[b] = pairs_load(d, bus, &known[b], err, cap)))
            break;
        uint64_t at, first;
        store_status st = store_committed(s, w->cursor, &at);
        if (st == STORE_NOTFOUND) {
            store_bounds(s, &first, &at);
            if (pairs_has(&known[b], w->cursor)) {
                ebd_log(EBD_ERROR, "msg=\"a delivery cursor is missing though the pair has run "
                        "before: it starts again from the oldest event kept, so events may be "
                        "delivered twice, rather than skip its backlog\" bus=%s cursor=%s from=%"
                        PRIu64 " end=%" PRIu64, bus, w->cursor, first, at);
                at = first;
            }
            st = store_commit(s, w->cursor, at);
        }
        if (st != STORE_OK) {
            snprintf(err, cap, "delivery %s: cannot fix its position in bus '%s': %s", w->cursor,
                     bus, store_error(s));
            ok = false;
        } else if (!pairs_has(&known[b], w->cursor) && !pairs_add(&known[b], w->cursor)) {
            snprintf(err, cap, "out of memory");
            ok = false;
        }
    }
    for (size_t b = 0; known && b < d->nbuses; b++) {
        if (ok && known[b].changed)
            ok = pairs_save(d, d->buses[b]->name, &known[b], err, cap);
        pairs_free(&known[b]);
    }
    free(known);
    free(loaded);
    return ok;
}

bool ebd_rules_prepare(ebd *d, ebd_rules *r, char *err, size_t cap)
{
    const vm_program *p = r->p;
    r->targets = calloc(p->ntargets ? p->ntargets : 1, sizeof *r->targets);
    r->bus_of = calloc(p->nbuses ? p->nbuses : 1, sizeof *r->bus_of);
    if (!r->targets || !r->bus_of) {
        snprintf(err, cap, "out of memory");
        return false;
    }
    for (uint32_t b = 0; b < p->nbuses; b++)
        r->bus_of[b] = ebd_bus_index(d, vm_s(p, p->buses[b].name), p->buses[b].name.len);
    for (uint32_t i = 0; i < p->ntargets; i++) {
        r->targets[i].fd = -1;       /* freeing a half-prepared ruleset closes nothing else */
        r->targets[i].dead_letter = VM_NONE;
    }
    for (uint32_t i = 0; i < p->ntargets; i++)
        if (!prepare_target(d, r, i, err, cap))
            return false;
    for (uint32_t i = 0; i < p->nrules; i++)
        r->nworkers += p->rules[i].ntgt;
    r->workers = calloc(r->nworkers ? r->nworkers : 1, sizeof *r->workers);
    size_t w = 0;
    for (uint32_t i = 0; i < p->nrules; i++)
        for (uint32_t k = 0; k < p->rules[i].ntgt; k++, w++) {
            ebd_worker *x = &r->workers[w];
            x->d = d;
            x->r = r;
            x->rule = i;
            x->target = p->rule_targets[p->rules[i].tgt0 + k];
            snprintf(x->cursor, sizeof x->cursor, "%.*s.%.*s", (int)p->rules[i].name.len,
                     vm_s(p, p->rules[i].name), (int)p->targets[x->target].name.len,
                     vm_s(p, p->targets[x->target].name));
        }
    return claim_new_pairs(d, r, err, cap);
}

void ebd_rules_free(ebd_rules *r)
{
    if (!r)
        return;
    for (uint32_t i = 0; r->targets && i < r->p->ntargets; i++) {
        ebd_target *x = &r->targets[i];
        free(x->name);
        free(x->url);
        free(x->method);
        curl_slist_free_all(x->headers);
        free(x->sign_secret);
        free(x->sign_header);
        free(x->path);
        if (x->fd >= 0)
            close(x->fd);
        for (char **a = x->argv; a && *a; a++)
            free(*a);
        free(x->argv);
        cmd_env_free(x->envp);
        free(x->dead_letter_file);
        pthread_mutex_destroy(&x->mu);
    }
    for (uint32_t b = 0; r->bus_token && b < r->p->nbuses; b++)
        free(r->bus_token[b]);
    free(r->bus_token);
    free(r->bus_max);
    free(r->targets);
    free(r->workers);
    free(r->bus_of);
    free(r->admin_token);
    vm_program_free(r->p);
    free(r);
}

/* ---- one attempt at one target -------------------------------------------------------------- */

typedef struct {
    long status;             /* HTTP status, exit status; 0 when there was none */
    bool retry;              /* worth another attempt */
    int64_t retry_after_ms;  /* the target asked to wait this long (0: it did not say) */
    char error[512];
} attempt;

typedef struct {
    int64_t retry_after_ms;
} http_seen;

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
                int64_t at = (int64_t)timegm(&tm) * 1000 - real_ms();
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

/* Sets h up to deliver payload to t; *headers (freed by the caller after the transfer) and
 * *seen must live until then. */
static void http_prepare(ebd_target *t, CURL *h, const char *payload, size_t n, bool text,
                         struct curl_slist **headers, http_seen *seen)
{
    struct curl_slist *hs = NULL;
    for (struct curl_slist *s = t->headers; s; s = s->next)
        hs = curl_slist_append(hs, s->data);
    hs = curl_slist_append(hs, text ? "Content-Type: text/plain; charset=utf-8"
                                    : "Content-Type: application/json");
    hs = curl_slist_append(hs, "Expect:");
    if (t->sign_secret) {
        /* header: t=UNIX_SECONDS,v1=HEX(HMAC-SHA256(secret, "UNIX_SECONDS." + body)) */
        char ts[32], hex[65], line[300];
        int tn = snprintf(ts, sizeof ts, "%lld.", (long long)(real_ms() / 1000));
        ebd_hmac_sha256_hex(t->sign_secret, ts, (size_t)tn, payload, n, hex);
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
}

/* What a finished transfer (rc) means: success, a retryable failure or a final one. */
static void http_finish(ebd_target *t, CURL *h, CURLcode rc, const http_seen *seen, attempt *a)
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

static void deliver_http(ebd_target *t, CURL *h, const char *payload, size_t n, bool text,
                         attempt *a)
{
    struct curl_slist *headers;
    http_seen seen;
    http_prepare(t, h, payload, n, text, &headers, &seen);
    CURLcode rc = curl_easy_perform(h);
    curl_slist_free_all(headers);
    http_finish(t, h, rc, &seen, a);
}

/* JSON text s[0..n) (valid: an event, a template's output, a function's checked answer) without
 * the white space between its tokens, to out (n bytes): on one line, as a string holds no raw
 * line break.  Returns the length. */
static size_t json_one_line(const char *s, size_t n, char *out)
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
static size_t text_one_line(const char *s, size_t n, char *out)
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
static void deliver_file(ebd_target *t, const char *payload, size_t n, bool text, attempt *a)
{
    /* One write of the line: O_APPEND keeps lines whole even with several writers. */
    char *line = malloc(2 * n + 1);
    if (!line) {
        snprintf(a->error, sizeof a->error, "out of memory");
        a->retry = true;
        return;
    }
    size_t len = text ? text_one_line(payload, n, line) : json_one_line(payload, n, line);
    line[len++] = '\n';
    ssize_t w = write(t->fd, line, len);
    free(line);
    if (w != (ssize_t)len || (t->fsync == STORE_FSYNC_ALWAYS && fdatasync(t->fd) != 0)) {
        snprintf(a->error, sizeof a->error, "%s: %s", t->path, w < 0 ? strerror(errno) : "short write");
        a->retry = true;
    }
}

static void deliver_bus(ebd *d, ebd_target *t, const char *payload, size_t n, bool text,
                        attempt *a)
{
    char why[200];
    const char *id;
    size_t idlen;
    if (t->bus == VM_NONE || text || !vm_json_valid(payload, n, NULL) ||
        !ce_check(payload, n, why, sizeof why, &id, &idlen)) {
        snprintf(a->error, sizeof a->error, "bus target '%s': the payload is not a CloudEvent%s%s",
                 t->name, text ? "" : ": ", text ? "" : why);
        return;
    }
    store_entry e = { payload, (uint32_t)n, 0 };
    uint64_t first;
    store_status st = store_append(d->buses[t->bus]->s, &e, 1, &first);
    if (st != STORE_OK) {
        snprintf(a->error, sizeof a->error, "bus '%s': %s", d->buses[t->bus]->name,
                 store_error(d->buses[t->bus]->s));
        a->retry = true;
    }
}

/* Runs the target's command with the payload on its standard input (docs/ebd.md, Commands):
 * exit status 0 is success.  What it writes to standard error is kept in part (CMD_STDERR_KEEP
 * bytes) for the error, or logged, escaped, when it succeeded. */
static void deliver_exec(ebd_target *t, const char *payload, size_t n, attempt *a)
{
    cmd_spec s = { t->argv, t->envp, payload, n, (uint32_t)t->timeout_ms, 0 };
    cmd_result r;
    char why[CMD_STDERR_KEEP + 100];
    cmd_run(&s, &r);
    if (cmd_describe(&s, &r, why, sizeof why)) {
        snprintf(a->error, sizeof a->error, "%s %s", t->argv[0], why);
        a->status = r.spawn_errno || r.timed_out ? 0 : WIFEXITED(r.status) ? WEXITSTATUS(r.status)
                                                                          : -WTERMSIG(r.status);
        a->retry = true;
    } else if (r.nerr) {
        char note[CMD_STDERR_KEEP + 8], esc[4 * sizeof note];
        cmd_stderr_text(&r, note, sizeof note);
        ebd_log(EBD_INFO, "msg=\"command wrote to standard error\" target=%s stderr=\"%s\"",
                t->name, ebd_log_text(note, esc, sizeof esc));
    }
    cmd_result_free(&r);
}

/* Takes a slot of the target's concurrency limit and a rate-limit token if both are free now. */
static bool try_slot(ebd_target *t)
{
    if (!t->concurrency && !t->rate_limit)
        return true;
    pthread_mutex_lock(&t->mu);
    if (t->rate_limit) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double secs = (double)(now.tv_sec - t->refill.tv_sec) + (double)(now.tv_nsec - t->refill.tv_nsec) / 1e9;
        t->refill = now;
        t->tokens += secs * t->rate_limit;
        if (t->tokens > t->rate_limit)
            t->tokens = t->rate_limit;
    }
    bool ok = (!t->concurrency || t->busy < t->concurrency) && (!t->rate_limit || t->tokens >= 1);
    if (ok) {
        t->busy++;
        if (t->rate_limit)
            t->tokens -= 1;
    }
    pthread_mutex_unlock(&t->mu);
    return ok;
}

/* Waits for a free slot of the target's concurrency limit and a token of its rate limit (or
 * for the daemon to stop: the attempt then goes ahead, counted, so that give_slot balances). */
static void take_slot(_Atomic bool *stop, ebd_target *t)
{
    while (!try_slot(t)) {
        if (atomic_load(stop)) {
            pthread_mutex_lock(&t->mu);
            t->busy++;
            pthread_mutex_unlock(&t->mu);
            return;
        }
        struct timespec ts = { 0, 2000000 };
        nanosleep(&ts, NULL);
    }
}

static void give_slot(ebd_target *t)
{
    if (!t->concurrency && !t->rate_limit)
        return;
    pthread_mutex_lock(&t->mu);
    t->busy--;
    pthread_mutex_unlock(&t->mu);
}

static void attempt_once(ebd *d, _Atomic bool *stop, ebd_target *t, CURL *h, const char *payload,
                         size_t n, bool text, attempt *a)
{
    *a = (attempt){ 0 };
    take_slot(stop, t);
    switch (t->kind) {
    case T_HTTP: deliver_http(t, h, payload, n, text, a); break;
    case T_FILE: deliver_file(t, payload, n, text, a); break;
    case T_BUS: deliver_bus(d, t, payload, n, text, a); break;
    default: deliver_exec(t, payload, n, a); break;
    }
    give_slot(t);
}

/* ---- the worker ----------------------------------------------------------------------------- */

typedef struct {
    ebd_worker *w;
    ebd_rules *r;
    ebd_bus *bus;
    ebd_target *t;
    CURL *curl, *dl_curl;
    vm_ctx *ctx;
    const char *rule_name;
    unsigned seed;
    store_cursor *c;              /* the worker's own cursor: jobs are read through it */
    bool catching;                /* reading the log itself (the router skips this pair) */
    uint64_t cpos;                /* catching up: the next offset to read */
    uint64_t inhand;              /* run_in_order: the event being delivered (or UINT64_MAX) */
} work;

/* Sleeps ms, in steps, unless the daemon stops: false then. */
static bool pause_ms(_Atomic bool *stop, int64_t ms)
{
    int64_t until = mono_ms() + ms;
    while (!atomic_load(stop)) {
        int64_t left = until - mono_ms();
        if (left <= 0)
            return true;
        struct timespec ts = { 0, (left > 50 ? 50 : left) * 1000000 };
        nanosleep(&ts, NULL);
    }
    return false;
}

static void iso_time(int64_t ms, char *buf, size_t cap)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char b[32];
    strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, cap, "%s.%03dZ", b, (int)(ms % 1000));
}

/* Delivers a dead letter: the event, where it was going and why it did not get there.  Retried
 * until it is delivered or the daemon stops (false: the event is delivered again later). */
static bool dead_letter(work *k, const store_record *rec, const attempt *a, unsigned attempts,
                        int64_t first_ms, int64_t last_ms)
{
    ebd *d = k->w->d;
    ebd_target *t = k->t, *dl = NULL;
    const char *file = t->dead_letter_file;
    const vm_rule *rule = &k->r->p->rules[k->w->rule];
    if (rule->dead_letter != VM_NONE)
        dl = &k->r->targets[rule->dead_letter];
    else if (t->dead_letter != VM_NONE)
        dl = &k->r->targets[t->dead_letter];
    char esc[1024];      /* an error may quote a URL or a command's stderr: escaped for the log */
    if (!dl && !file) {
        ebd_log(EBD_ERROR, "msg=\"delivery dropped: no dead-letter target\" rule=%s target=%s "
                "offset=%" PRIu64 " attempts=%u error=\"%s\"", k->rule_name, t->name, rec->offset,
                attempts, ebd_log_text(a->error, esc, sizeof esc));
        return true;
    }
    sbuf b = { 0 };
    char t0[40], t1[40];
    iso_time(first_ms, t0, sizeof t0);
    iso_time(last_ms, t1, sizeof t1);
    sb_puts(&b, "{\"event\":");
    sb_put(&b, (const char *)rec->data, rec->len);
    sb_puts(&b, ",\"rule\":");
    sb_json_string(&b, k->rule_name, strlen(k->rule_name));
    sb_puts(&b, ",\"target\":");
    sb_json_string(&b, t->name, strlen(t->name));
    if (a->status)
        sb_printf(&b, ",\"status\":%ld", a->status);
    else
        sb_puts(&b, ",\"status\":null");
    sb_puts(&b, ",\"error\":");
    sb_json_string(&b, a->error, strlen(a->error));
    sb_printf(&b, ",\"attempts\":%u,\"first_attempt\":\"%s\",\"last_attempt\":\"%s\",\"offset\":%"
              PRIu64 "}", attempts, t0, t1, rec->offset);
    ebd_log(EBD_WARN, "msg=\"dead letter\" rule=%s target=%s offset=%" PRIu64 " attempts=%u "
            "status=%ld error=\"%s\"", k->rule_name, t->name, rec->offset, attempts, a->status,
            ebd_log_text(a->error, esc, sizeof esc));
    bool ok = false;
    for (unsigned n = 0; !ok; n++) {
        attempt da = { 0 };
        if (file) {
            ebd_target ft = { .name = t->name, .fsync = STORE_FSYNC_ALWAYS };
            ft.fd = open_output(d, file, &ft.path, da.error, sizeof da.error);
            if (ft.fd >= 0) {
                deliver_file(&ft, b.v, b.n, false, &da);
                close(ft.fd);
            }
            free(ft.path);
        } else {
            if (!k->dl_curl)
                k->dl_curl = curl_easy_init();
            attempt_once(d, &k->r->stop, dl, k->dl_curl, b.v, b.n, false, &da);
            /* The cursor moves past the event once this returns: a dead letter in a file must
             * be on disk by then, whatever that file target's own policy. */
            if (!da.error[0] && dl->kind == T_FILE && dl->fsync != STORE_FSYNC_NEVER &&
                fdatasync(dl->fd) != 0)
                snprintf(da.error, sizeof da.error, "%s: %s", dl->path, strerror(errno));
        }
        ok = !da.error[0];
        if (!ok) {
            ebd_log(EBD_ERROR, "msg=\"dead-letter delivery failed\" rule=%s target=%s error=\"%s\"",
                    k->rule_name, t->name, ebd_log_text(da.error, esc, sizeof esc));
            if (!pause_ms(&k->r->stop, n < 10 ? 1000LL << (n < 6 ? n : 6) : 60000))
                break;
        }
    }
    sb_free(&b);
    return ok;
}

/* How long to wait before attempt i+1 after attempt i failed with a: exponential backoff with
 * full jitter (a random wait up to first * 2^(i-1), capped at max), or the target's Retry-After
 * (capped at max too). */
static int64_t backoff_ms(work *k, unsigned i, const attempt *a)
{
    const ebd_retry *r = &k->t->retry;
    uint64_t cap = r->first_ms << (i - 1 < 30 ? i - 1 : 30);
    if (cap > r->max_ms || cap == 0)
        cap = r->max_ms;
    int64_t wait = (int64_t)((double)rand_r(&k->seed) / RAND_MAX * (double)cap);
    if (a->retry_after_ms > 0)
        wait = a->retry_after_ms < (int64_t)r->max_ms ? a->retry_after_ms : (int64_t)r->max_ms;
    return wait;
}

/* After attempt i failed: is another one allowed (retryable, attempts left, young enough)? */
static bool may_retry(work *k, unsigned i, const attempt *a, const store_record *rec)
{
    int64_t age = real_ms() - rec->time_ns / 1000000;
    return a->retry && i < k->t->retry.attempts && (uint64_t)age < k->t->retry.max_age_ms;
}

static void log_retry(work *k, const store_record *rec, unsigned i, int64_t wait, const attempt *a)
{
    char esc[1024];
    ebd_log(EBD_INFO, "msg=\"delivery failed, will retry\" rule=%s target=%s offset=%" PRIu64
            " attempt=%u wait_ms=%lld error=\"%s\"", k->rule_name, k->t->name, rec->offset, i,
            (long long)wait, ebd_log_text(a->error, esc, sizeof esc));
}

/* Delivers one payload with the target's retry policy; false if the daemon stopped first (the
 * event is delivered again after the restart). */
static bool deliver(work *k, const store_record *rec, const char *payload, size_t n, bool text)
{
    ebd *d = k->w->d;
    ebd_target *t = k->t;
    int64_t first = real_ms();
    attempt a;
    for (unsigned i = 1;; i++) {
        attempt_once(d, &k->r->stop, t, k->curl, payload, n, text, &a);
        if (!a.error[0]) {
            if (i > 1)
                ebd_log(EBD_INFO, "msg=\"delivered after retries\" rule=%s target=%s offset=%" PRIu64
                        " attempts=%u", k->rule_name, t->name, rec->offset, i);
            return true;
        }
        if (!may_retry(k, i, &a, rec))
            return dead_letter(k, rec, &a, i, first, real_ms());
        int64_t wait = backoff_ms(k, i, &a);
        log_retry(k, rec, i, wait, &a);
        if (!pause_ms(&k->r->stop, wait))
            return false;
    }
}

static bool rule_matched(const uint32_t *rules, size_t n, uint32_t rule)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (rules[mid] == rule)
            return true;
        if (rules[mid] < rule)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

typedef struct flight flight;
static uint64_t flight_offset(const flight *fl, unsigned i, bool *used);

/* Says where the worker's cursor may go: `high`, less the offsets below it still to do (the
 * requests in flight fl[0..W), the event in hand, what the last run left pending and is not read
 * yet); the committer thread makes it durable (syncing file targets first), so no sync ever
 * holds a delivery up (a commit in the delivery path put the p99 of ingest-to-delivery at
 * 9-190 ms while the disk was busy; bench/ingest.c).  Keeping what is done above the oldest
 * event in flight is what lets a reload or restart skip it instead of delivering it again. */
static void publish(work *k, uint64_t high, const flight *fl, unsigned W)
{
    ebd_worker *w = k->w;
    uint64_t todo[STORE_MAX_PENDING + 1], low = high;
    size_t n = 0;
    bool over = false;
    for (unsigned i = 0; i < W + 1 + (w->nspend - w->ispend); i++) {
        uint64_t off;
        bool used = true;
        if (i < W)
            off = flight_offset(fl, i, &used);
        else if (i == W)
            off = k->inhand, used = off != UINT64_MAX;
        else
            off = w->spend[w->ispend + (i - W - 1)];
        if (!used || off >= high)
            continue;
        if (off < low)
            low = off;
        if (n < STORE_MAX_PENDING)
            todo[n++] = off;
        else
            over = true;
    }
    uint64_t nh = over ? low : high;     /* too many to list: the lowest, as a plain cursor */
    size_t nn = over ? 0 : n;
    pthread_mutex_lock(&w->pmu);
    if (nh != w->pubhigh || nn != w->npubpend || memcmp(w->pubpend, todo, nn * sizeof *todo)) {
        w->pubhigh = nh;                 /* (only a change is a new version: idle pairs write nothing) */
        w->npubpend = nn;
        memcpy(w->pubpend, todo, nn * sizeof *todo);
        w->pubver++;
    }
    pthread_mutex_unlock(&w->pmu);
}

/* Writes worker w's cursor if it moved: its file target synced first, then the cursor. */
static void commit_now(ebd *d, ebd_rules *r, ebd_worker *w)
{
    if (!w->router)
        return;
    pthread_mutex_lock(&w->pmu);
    uint64_t ver = w->pubver, high = w->pubhigh, pend[STORE_MAX_PENDING];
    size_t n = w->npubpend;
    memcpy(pend, w->pubpend, n * sizeof *pend);
    pthread_mutex_unlock(&w->pmu);
    if (ver == w->comver)
        return;
    ebd_target *t = &r->targets[w->target];
    if (t->kind == T_FILE && t->fsync != STORE_FSYNC_NEVER && fdatasync(t->fd) != 0) {
        /* The lines may not be on disk: the cursor stays where it is (they go again). */
        ebd_log(EBD_ERROR, "msg=\"cannot sync a file target: its cursor stays\" cursor=%s file=%s "
                "error=\"%s\"", w->cursor, t->path, strerror(errno));
        return;
    }
    store *s = d->buses[r->bus_of[r->p->rules[w->rule].bus]]->s;
    if (store_commit_pending(s, w->cursor, high, pend, n) == STORE_OK)
        w->comver = ver;
    else
        ebd_log(EBD_ERROR, "msg=\"cannot commit cursor\" cursor=%s error=\"%s\"", w->cursor,
                store_error(s));
}

static void *committer_main(void *arg)
{
    ebd_rules *r = arg;
    ebd *d = r->workers ? r->workers[0].d : NULL;
    while (d && !atomic_load(&r->stop)) {
        struct timespec ts = { 0, COMMIT_EVERY_MS * 1000000L };
        nanosleep(&ts, NULL);
        for (size_t i = 0; i < r->nworkers; i++)
            commit_now(d, r, &r->workers[i]);
    }
    return NULL;
}

/* The payload of record rec for this worker's rule: 0 when the rule does not match it, 1 with
 * *payload (malloc'd) when it does, -1 when matching failed for the rule (failed, or found
 * here) or the transform failed (why in err). */
static int transform_payload(work *k, vm_xform_env *env, const store_record *rec, bool known,
                             const char *failed, char **payload, size_t *plen, bool *text,
                             char *err, size_t cap);

/* ---- hops: events that bus targets pass from bus to bus ---------------------------------- */

typedef struct {
    const char *s;
    unsigned hops;
    sbuf *out;                    /* stamping: the members kept */
    bool any;
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
    if (js_key_is(h->s, m, VM_HOPS_ATTR))
        return true;
    sb_puts(h->out, h->any ? "," : "");
    sb_put(h->out, h->s + m->key_off, m->key_len);
    sb_puts(h->out, ":");
    sb_put(h->out, h->s + m->val_off, m->val_len);
    h->any = true;
    return true;
}

/* A bus target's payload gets the extension attribute VM_HOPS_ATTR: one more than the event it
 * was made from had (0 when it had none), replacing any the payload carried, so that an event
 * cannot go round between buses for ever.  Past VM_MAX_BUS_HOPS: -1 with the reason in err (the
 * caller dead-letters it).  A payload that is not a JSON object is left as it is (deliver_bus
 * refuses it).  1 otherwise, *payload replaced. */
static int stamp_hops(const store_record *rec, char **payload, size_t *plen, char *err, size_t cap)
{
    hops_walk src = { .s = (const char *)rec->data };
    size_t i = vm_json_ws(src.s, rec->len, 0);
    if (i < rec->len && src.s[i] == '{')
        js_each(src.s, rec->len, i, find_hops, &src);
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
    hops_walk h = { .s = *payload, .out = &out };
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

/* Why matching failed for every rule of the bus: the event itself could not be read (the
 * scanner's message).  Stored events passed the same check at ingest, so this should not
 * happen; if it does, each rule's dead letter says so. */
static void event_failed(const vm_error *e, char *out, size_t cap)
{
    snprintf(out, cap, "the event cannot be matched: %s", e->msg);
}

/* The error of rule ri among the rules the last vm_match on ctx failed, or NULL. */
static const char *rule_failure(vm_ctx *ctx, uint32_t ri)
{
    const vm_rule_error *f;
    size_t n = vm_match_failures(ctx, &f);
    for (size_t i = 0; i < n; i++)
        if (f[i].rule == ri)
            return f[i].err.msg;
    return NULL;
}

/* Matches rec for the worker's rule itself (while it catches up, or for an event its last run
 * left pending), as the router would: 1 when the rule matches, 0 when not, -1 when matching
 * failed for the rule or for the event (why in err: the event goes to the dead letter). */
static int match_here(work *k, const store_record *rec, char *err, size_t cap)
{
    const vm_program *p = k->r->p;
    const uint32_t *rules;
    size_t nrules;
    vm_error e;
    vm_status st = vm_match(k->ctx, p->rules[k->w->rule].bus, (const char *)rec->data, rec->len,
                            &rules, &nrules, &e);
    if (st != VM_OK && st != VM_ERR_RULE) {
        event_failed(&e, err, cap);
        return -1;
    }
    if (rule_matched(rules, nrules, k->w->rule))
        return 1;
    const char *why = st == VM_ERR_RULE ? rule_failure(k->ctx, k->w->rule) : NULL;
    if (!why)
        return 0;
    snprintf(err, cap, "%s", why);
    return -1;
}

/* The payload of rec for the worker's target: the rule's transform (a function transform runs
 * the command or request), stamped with its hop count for a bus target.  1 with *payload
 * (malloc'd), 0 when the rule does not match after all (known false: matched here), -1 with
 * the reason in err (failed: matching failed for the rule, as the router found). */
static int make_payload(work *k, vm_xform_env *env, const store_record *rec, bool known,
                        const char *failed, char **payload, size_t *plen, bool *text, char *err,
                        size_t cap)
{
    int m = transform_payload(k, env, rec, known, failed, payload, plen, text, err, cap);
    if (m == 1 && k->t->kind == T_BUS && !*text && (m = stamp_hops(rec, payload, plen, err, cap)) < 0) {
        free(*payload);
        *payload = NULL;
    }
    return m;
}

static int transform_payload(work *k, vm_xform_env *env, const store_record *rec, bool known,
                             const char *failed, char **payload, size_t *plen, bool *text,
                             char *err, size_t cap)
{
    const vm_program *p = k->r->p;
    const vm_rule *rule = &p->rules[k->w->rule];
    vm_error e;
    if (failed) {
        snprintf(err, cap, "%s", failed);
        return -1;
    }
    int m = known ? 1 : match_here(k, rec, err, cap);
    if (m <= 0)
        return m;
    *text = false;
    env->ingest_ms = rec->time_ns / 1000000;
    const vm_xform *x = rule->xform != VM_NONE ? &p->xforms[rule->xform] : NULL;
    if (x && (x->kind == VM_X_EXEC || x->kind == VM_X_HTTP))
        return rt_run_function(p, x, (const char *)rec->data, rec->len, payload, plen, text, err, cap)
               ? 1 : -1;
    const char *out;
    if (vm_transform(k->ctx, k->w->rule, (const char *)rec->data, rec->len, env, &out, plen, text,
                     &e) != VM_OK) {
        snprintf(err, cap, "transform failed: %s", e.msg);
        return -1;
    }
    *payload = malloc(*plen + 1);
    if (!*payload) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    memcpy(*payload, out, *plen);
    (*payload)[*plen] = 0;
    return 1;
}

/* The next record for the worker, waiting up to timeout_ms; handles retention and corruption
 * (logged, gone past).  *pos: the offset after the last record looked at. */
static bool next_record(work *k, store_cursor *c, store_record *rec, int timeout_ms, uint64_t *pos)
{
    store_status st = store_cursor_next(c, rec, timeout_ms);
    if (st == STORE_OK) {
        *pos = rec->offset + 1;
        return true;
    }
    if (st == STORE_BEHIND) {
        uint64_t first, next;
        store_bounds(k->bus->s, &first, &next);
        ebd_log(EBD_WARN, "msg=\"events deleted by retention before delivery\" cursor=%s "
                "from=%" PRIu64 " to=%" PRIu64, k->w->cursor, *pos, first);
        store_cursor_seek(c, first);
        *pos = first;
    } else if (st == STORE_CORRUPT) {
        uint64_t lost;
        ebd_log(EBD_ERROR, "msg=\"corrupt record skipped\" cursor=%s error=\"%s\"", k->w->cursor,
                store_cursor_error(c));
        store_cursor_skip(c, &lost);
        *pos = store_cursor_offset(c);
    }
    return false;
}

/* Reads the record at offset off through the worker's cursor, seeking only when the cursor is
 * not there already: queued events are often consecutive, and a seek costs a lock, an index
 * search and a look at the log again. */
static store_status read_at(work *k, uint64_t off, store_record *rec)
{
    if (store_cursor_offset(k->c) != off)
        store_cursor_seek(k->c, off);
    return store_cursor_next(k->c, rec, 0);
}

static uint64_t router_pos(ebd_router *rt)
{
    pthread_mutex_lock(&rt->mu);
    uint64_t p = rt->pos;
    pthread_mutex_unlock(&rt->mu);
    return p;
}

/* The worker's next event, waiting up to timeout_ms: from its queue (*known: the rule matches
 * it, or failed it: then *failed, malloc'd, says why), or from the log while it catches up (the
 * caller matches).  *safe: the cursor may be committed there once the returned event (if any)
 * is finished — every event before it is finished, not this rule's, or in the caller's hands. */
static bool source_next(work *k, store_record *rec, int timeout_ms, uint64_t *safe, bool *known,
                        char **failed)
{
    ebd_worker *w = k->w;
    ebd_router *rt = w->router;
    *known = false;
    *failed = NULL;
    if (w->ispend < w->nspend) {
        /* What the last run left in flight comes first (matched again: the rules may differ). */
        uint64_t off = w->spend[w->ispend];
        *safe = w->start;
        store_status st = read_at(k, off, rec);
        if ((st == STORE_OK && rec->offset == off) || st == STORE_BEHIND) {
            w->ispend++;
            if (st == STORE_BEHIND)
                ebd_log(EBD_WARN, "msg=\"event deleted by retention before delivery\" cursor=%s "
                        "offset=%" PRIu64, w->cursor, off);
            return st == STORE_OK;
        }
        ebd_log(EBD_ERROR, "msg=\"a pending event cannot be read, will try again\" cursor=%s "
                "offset=%" PRIu64 " error=\"%s\"", w->cursor, off,
                st == STORE_OK ? "offset out of place" : store_cursor_error(k->c));
        pause_ms(&k->r->stop, 100);
        return false;
    }
    if (!k->catching) {
        for (int pass = 0; pass < 2; pass++) {
            /* The router's position is read before the queue: it queues, then moves on. */
            uint64_t rp = router_pos(rt);
            pthread_mutex_lock(&w->qmu);
            if (w->qn > 0) {
                /* Read the head first; it leaves the queue once read (or deleted by retention),
                 * never on an error that may pass. */
                uint64_t off = w->ring[w->qhead];
                pthread_mutex_unlock(&w->qmu);
                store_status st = read_at(k, off, rec);
                bool gone = st == STORE_BEHIND;
                if ((st == STORE_OK && rec->offset == off) || gone) {
                    pthread_mutex_lock(&w->qmu);
                    *failed = w->failed[w->qhead];
                    w->failed[w->qhead] = NULL;
                    w->qhead = (w->qhead + 1) % w->qcap;
                    w->qn--;
                    /* Past the queue: the router's position, unless it stopped queueing for
                     * this worker (the queue was full): then the catch-up point, which the
                     * worker has yet to read from the log. */
                    uint64_t after = w->qn ? w->ring[w->qhead] : w->catchup ? w->catchup_from : rp;
                    pthread_mutex_unlock(&w->qmu);
                    *safe = after > w->start ? after : w->start;
                    if (!gone) {
                        *known = true;
                        return true;
                    }
                    free(*failed);
                    *failed = NULL;
                    ebd_log(EBD_WARN, "msg=\"event deleted by retention before delivery\" cursor=%s "
                            "offset=%" PRIu64, w->cursor, off);
                    return false;
                }
                *safe = off > w->start ? off : w->start;
                ebd_log(EBD_ERROR, "msg=\"a queued event cannot be read, will try again\" cursor=%s "
                        "offset=%" PRIu64 " error=\"%s\"", w->cursor, off,
                        st == STORE_OK ? "offset out of place" : store_cursor_error(k->c));
                pause_ms(&k->r->stop, 100);
                return false;
            }
            if (w->catchup) {
                k->catching = true;
                k->cpos = w->catchup_from;
                pthread_mutex_unlock(&w->qmu);
                store_cursor_seek(k->c, k->cpos);
                ebd_log(EBD_INFO, "msg=\"delivery fell behind: reading the log\" cursor=%s from=%"
                        PRIu64, w->cursor, k->cpos);
                break;
            }
            *safe = rp > w->start ? rp : w->start;
            if (pass == 0 && timeout_ms != 0 && !atomic_load(&k->r->stop)) {
                struct timespec until;
                clock_gettime(CLOCK_REALTIME, &until);
                long ns = until.tv_nsec + (long)(timeout_ms > 0 ? timeout_ms : 100) * 1000000L;
                until.tv_sec += ns / 1000000000L;
                until.tv_nsec = ns % 1000000000L;
                pthread_cond_timedwait(&w->qcv, &w->qmu, &until);
                pthread_mutex_unlock(&w->qmu);
                continue;
            }
            pthread_mutex_unlock(&w->qmu);
            return false;
        }
        if (!k->catching)
            return false;
    }
    /* Catching up: the log itself, until level with the router. */
    uint64_t pos = k->cpos;
    if (next_record(k, k->c, rec, 0, &pos)) {
        k->cpos = pos;
        *safe = pos;
        return true;
    }
    k->cpos = pos;
    *safe = pos;
    pthread_mutex_lock(&rt->mu);
    if (rt->pos == k->cpos) {
        pthread_mutex_lock(&w->qmu);
        w->catchup = false;
        pthread_mutex_unlock(&w->qmu);
        k->catching = false;
        ebd_log(EBD_INFO, "msg=\"delivery caught up\" cursor=%s at=%" PRIu64, w->cursor, k->cpos);
    }
    pthread_mutex_unlock(&rt->mu);
    if (timeout_ms != 0 && k->catching) {
        struct timespec ts = { 0, 5000000 };
        nanosleep(&ts, NULL);
    }
    return false;
}

/* One delivery at a time, in order: file, bus and exec targets, and http with concurrency 1. */
static void run_in_order(work *k, uint64_t from)
{
    uint64_t done = from;
    vm_xform_env env = { .bus = k->bus->name, .rule = k->rule_name };
    k->inhand = UINT64_MAX;
    while (!atomic_load(&k->r->stop)) {
        store_record rec;
        uint64_t safe;
        bool known;
        char *failed;
        bool got = source_next(k, &rec, 100, &safe, &known, &failed);
        if (got) {
            char *payload = NULL, err[512];
            size_t plen = 0;
            bool text = false, finished;
            k->inhand = rec.offset;
            int m = make_payload(k, &env, &rec, known, failed, &payload, &plen, &text, err,
                                 sizeof err);
            free(failed);
            if (m > 0)
                finished = deliver(k, &rec, payload, plen, text);
            else if (m < 0) {
                attempt a = { 0 };
                snprintf(a.error, sizeof a.error, "%s", err);
                finished = dead_letter(k, &rec, &a, 0, real_ms(), real_ms());
            } else
                finished = true;
            free(payload);
            if (!finished)
                break;   /* stopping: this event (still in hand) goes again after the restart */
            k->inhand = UINT64_MAX;
        }
        if (safe > done)
            done = safe;
        publish(k, done, NULL, 0);
    }
    publish(k, done, NULL, 0);
}

/* ---- http with several deliveries in flight (libcurl multi) --------------------------------- */

#define WINDOW_DEFAULT 16
#define WINDOW_MAX 256

struct flight {
    bool used, running;
    store_record rec;             /* data: a copy */
    char *payload;
    size_t plen;
    bool text;
    unsigned attempts;
    int64_t first_ms, due_ms;     /* first attempt (real time); next attempt (monotonic) */
    CURL *h;
    struct curl_slist *headers;
    http_seen seen;
};

static uint64_t flight_offset(const flight *fl, unsigned i, bool *used)
{
    *used = fl && fl[i].used;
    return *used ? fl[i].rec.offset : 0;
}

static void flight_free(CURLM *m, flight *f)
{
    if (f->running) {
        curl_multi_remove_handle(m, f->h);
        curl_slist_free_all(f->headers);
        f->headers = NULL;
        f->running = false;
    }
    free((void *)f->rec.data);
    free(f->payload);
    f->rec.data = NULL;
    f->payload = NULL;
    f->used = false;
}

/* Moves the transfers on and handles those that finished: a success frees its flight; a
 * failure is retried later or dead-lettered, unless stopping (then it stays for the restart). */
static void drive(work *k, CURLM *m, flight *fl, unsigned W, bool stopping)
{
    ebd_target *t = k->t;
    int running;
    curl_multi_perform(m, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        flight *f = NULL;
        for (unsigned i = 0; i < W && !f; i++)
            if (fl[i].running && fl[i].h == msg->easy_handle)
                f = &fl[i];
        if (!f)
            continue;
        CURLcode rc = msg->data.result;
        curl_multi_remove_handle(m, f->h);
        curl_slist_free_all(f->headers);
        f->headers = NULL;
        f->running = false;
        give_slot(t);
        attempt a = { 0 };
        http_finish(t, f->h, rc, &f->seen, &a);
        if (!a.error[0]) {
            if (f->attempts > 1)
                ebd_log(EBD_INFO, "msg=\"delivered after retries\" rule=%s target=%s offset=%"
                        PRIu64 " attempts=%u", k->rule_name, t->name, f->rec.offset, f->attempts);
            flight_free(m, f);
        } else if (stopping) {
            f->due_ms = INT64_MAX;
        } else if (may_retry(k, f->attempts, &a, &f->rec)) {
            int64_t wait = backoff_ms(k, f->attempts, &a);
            log_retry(k, &f->rec, f->attempts, wait, &a);
            f->due_ms = mono_ms() + wait;
        } else if (dead_letter(k, &f->rec, &a, f->attempts, f->first_ms, real_ms())) {
            flight_free(m, f);
        } else {
            f->due_ms = INT64_MAX;    /* stopping: kept, so the cursor stays below it */
        }
    }
}

/* Deliveries to an http target: up to its concurrency (16 by default) in flight at once from
 * this worker, each retried on its own schedule; the cursor is committed up to the oldest event
 * not finished, so a restart redelivers what was in flight.  Order is kept only with
 * concurrency 1 (run_in_order). */
static void run_window(work *k, uint64_t from)
{
    ebd *d = k->w->d;
    ebd_target *t = k->t;
    unsigned W = t->concurrency ? (t->concurrency < WINDOW_MAX ? t->concurrency : WINDOW_MAX)
                                : WINDOW_DEFAULT;
    flight *fl = calloc(W, sizeof *fl);
    CURLM *m = curl_multi_init();
    uint64_t pos = from;
    vm_xform_env env = { .bus = k->bus->name, .rule = k->rule_name };
    (void)d;
    k->inhand = UINT64_MAX;
    while (fl && m && !atomic_load(&k->r->stop)) {
        /* Fill the window from the log. */
        unsigned used = 0;
        for (unsigned i = 0; i < W; i++)
            used += fl[i].used;
        /* (a bounded pass, and a look at stop each time: under steady traffic that this rule
         * does not match, records keep coming and the pass would not end by itself) */
        for (unsigned looked = 0; used < W && looked < COMMIT_EVERY_EVENTS &&
                                  !atomic_load(&k->r->stop); looked++) {
            store_record rec;
            uint64_t safe;
            bool known;
            char *failed;
            bool got = source_next(k, &rec, used ? 0 : 100, &safe, &known, &failed);
            if (safe > pos)
                pos = safe;
            if (!got)
                break;
            char *payload = NULL, err[512];
            size_t plen = 0;
            bool text = false;
            int r = make_payload(k, &env, &rec, known, failed, &payload, &plen, &text, err,
                                 sizeof err);
            free(failed);
            if (r < 0) {
                attempt a = { 0 };
                snprintf(a.error, sizeof a.error, "%s", err);
                if (!dead_letter(k, &rec, &a, 0, real_ms(), real_ms())) {
                    k->inhand = rec.offset;   /* stopping: kept pending for the restart */
                    break;
                }
            }
            if (r <= 0)
                continue;
            unsigned i = 0;
            while (fl[i].used)
                i++;
            flight *f = &fl[i];
            unsigned char *copy = malloc(rec.len ? rec.len : 1);
            if (!copy) {
                /* out of memory: the event stays pending in the cursor (delivered after a
                 * restart), never passed over */
                free(payload);
                ebd_log(EBD_ERROR, "msg=\"out of memory: an event stays pending\" cursor=%s offset=%"
                        PRIu64, k->w->cursor, rec.offset);
                k->inhand = rec.offset;
                break;
            }
            memcpy(copy, rec.data, rec.len);
            f->rec = rec;
            f->rec.data = copy;
            f->payload = payload;
            f->plen = plen;
            f->text = text;
            f->attempts = 0;
            f->first_ms = real_ms();
            f->due_ms = mono_ms();
            f->used = true;
            if (!f->h)
                f->h = curl_easy_init();
            used++;
        }
        /* Start what is due. */
        int64_t now = mono_ms(), next_due = now + 100;
        for (unsigned i = 0; i < W; i++) {
            flight *f = &fl[i];
            if (!f->used || f->running)
                continue;
            if (f->due_ms > now || !try_slot(t)) {
                int64_t due = f->due_ms > now ? f->due_ms : now + 5;
                if (due < next_due)
                    next_due = due;
                continue;
            }
            http_prepare(t, f->h, f->payload, f->plen, f->text, &f->headers, &f->seen);
            curl_multi_add_handle(m, f->h);
            f->running = true;
            f->attempts++;
        }
        /* Drive the transfers; handle those that finished. */
        drive(k, m, fl, W, false);
        /* Where the cursor may go: past what is done, the events in flight kept apart. */
        publish(k, pos, fl, W);
        bool busy = false;
        for (unsigned i = 0; i < W; i++)
            busy |= fl[i].used;
        if (busy) {
            int64_t wait = next_due - mono_ms();
            curl_multi_poll(m, NULL, 0, (int)(wait < 1 ? 1 : wait > 50 ? 50 : wait), NULL);
        }
    }
    /* Stopping: requests already sent may finish (within the target's timeout), so that a reload
     * does not send them twice; what does not finish goes again after the restart. */
    int64_t until = mono_ms() + t->timeout_ms;
    for (bool any = true; fl && m && any && mono_ms() < until;) {
        any = false;
        for (unsigned i = 0; i < W; i++)
            any |= fl[i].running;
        if (any) {
            drive(k, m, fl, W, true);
            curl_multi_poll(m, NULL, 0, 20, NULL);
        }
    }
    if (fl)
        publish(k, pos, fl, W);      /* what did not finish stays pending for the restart */
    for (unsigned i = 0; fl && i < W; i++) {
        if (fl[i].running)
            give_slot(t);
        if (fl[i].used)
            flight_free(m, &fl[i]);
        if (fl[i].h)
            curl_easy_cleanup(fl[i].h);
    }
    free(fl);
    if (m)
        curl_multi_cleanup(m);
}

static void *worker_main(void *arg)
{
    ebd_worker *w = arg;
    ebd *d = w->d;
    ebd_rules *r = w->r;
    const vm_program *p = r->p;
    const vm_rule *rule = &p->rules[w->rule];
    work k = { .w = w, .r = r, .t = &r->targets[w->target], .seed = (unsigned)(uintptr_t)w };
    k.bus = d->buses[r->bus_of[rule->bus]];
    char rule_name[256];
    snprintf(rule_name, sizeof rule_name, "%.*s", (int)rule->name.len, vm_s(p, rule->name));
    k.rule_name = rule_name;
    vm_options mopt = vm_program_options(p);
    k.ctx = vm_ctx_new(p, &mopt);
    k.curl = k.t->kind == T_HTTP ? curl_easy_init() : NULL;
    store_cursor_open(k.bus->s, w->start, &k.c);
    if (k.t->kind == T_HTTP && k.t->concurrency != 1)
        run_window(&k, w->start);
    else
        run_in_order(&k, w->start);
    store_cursor_close(k.c);
    vm_ctx_free(k.ctx);
    if (k.curl)
        curl_easy_cleanup(k.curl);
    if (k.dl_curl)
        curl_easy_cleanup(k.dl_curl);
    return NULL;
}

/* ---- the router ---------------------------------------------------------------------------- */

#define QUEUE_CAP 1024

/* Queues event `off` for worker w: matched (failed NULL) or failed for its rule (why).  A full
 * queue, or no memory for the reason, sends the worker to the log, where it matches for itself
 * from this event on. */
static void enqueue(ebd_worker *w, uint64_t off, const char *failed)
{
    pthread_mutex_lock(&w->qmu);
    if (!w->catchup) {
        char *why = failed ? strdup(failed) : NULL;
        if (w->qn < w->qcap && (why || !failed)) {
            w->ring[(w->qhead + w->qn) % w->qcap] = off;
            w->failed[(w->qhead + w->qn) % w->qcap] = why;
            w->qn++;
        } else {
            free(why);
            w->catchup = true;      /* the worker reads the log from here */
            w->catchup_from = off;
        }
        pthread_cond_signal(&w->qcv);
    }
    pthread_mutex_unlock(&w->qmu);
}

/* Says, once per rule, that matching failed for it on this event (each of its pairs then
 * dead-letters the event).  A failure of the whole event is every rule of the bus's. */
static void log_match_failures(ebd_router *rt, ebd_bus *bus, vm_ctx *ctx, const char *whole,
                               uint64_t off)
{
    const vm_program *p = rt->r->p;
    const vm_rule_error *f;
    size_t n = whole ? 0 : vm_match_failures(ctx, &f);
    char esc[700];
    for (uint32_t r = 0, i = 0; r < p->nrules; r++) {
        while (i < n && f[i].rule < r)
            i++;
        const char *why = whole ? whole : i < n && f[i].rule == r ? f[i].err.msg : NULL;
        if (!why || p->rules[r].bus != rt->pbus)
            continue;
        ebd_log(EBD_ERROR, "msg=\"matching failed: the event goes to the rule's dead letter\" "
                "rule=%.*s bus=%s offset=%" PRIu64 " error=\"%s\"", (int)p->rules[r].name.len,
                vm_s(p, p->rules[r].name), bus->name, off, ebd_log_text(why, esc, sizeof esc));
    }
}

static void *router_main(void *arg)
{
    ebd_router *rt = arg;
    ebd_rules *r = rt->r;
    ebd_bus *bus = rt->d->buses[r->bus_of[rt->pbus]];
    vm_options mopt = vm_program_options(r->p);
    vm_ctx *ctx = vm_ctx_new(r->p, &mopt);
    store_cursor *c;
    store_cursor_open(bus->s, rt->pos, &c);
    while (ctx && !atomic_load(&r->stop)) {
        store_record rec;
        store_status st = store_cursor_next(c, &rec, 100);
        if (st == STORE_OK) {
            const uint32_t *rules = NULL;
            size_t nrules = 0;
            vm_error err;
            vm_status ms = vm_match(ctx, rt->pbus, (const char *)rec.data, rec.len, &rules,
                                    &nrules, &err);
            if (ms == VM_ERR_NOMEM) {
                /* (may pass: the event is matched again, nothing is queued twice) */
                ebd_log(EBD_ERROR, "msg=\"the router is out of memory, will try again\" bus=%s "
                        "offset=%" PRIu64, bus->name, rec.offset);
                pause_ms(&r->stop, 100);
                store_cursor_seek(c, rec.offset);
                continue;
            }
            /* A rule that failed for this event goes to its dead letter with the error, the
             * others as they matched; an event that cannot be matched at all fails every rule
             * of the bus (stored events passed the same checks at ingest: it should not be). */
            char whole[300];
            bool all_failed = ms != VM_OK && ms != VM_ERR_RULE;
            if (all_failed)
                event_failed(&err, whole, sizeof whole);
            if (ms != VM_OK)
                log_match_failures(rt, bus, ctx, all_failed ? whole : NULL, rec.offset);
            pthread_mutex_lock(&rt->mu);
            for (size_t i = 0; i < rt->npairs && (nrules || ms != VM_OK); i++) {
                ebd_worker *w = &r->workers[rt->pairs[i]];
                if (rec.offset < w->start)
                    continue;
                const char *failed = all_failed ? whole
                                   : ms == VM_ERR_RULE ? rule_failure(ctx, w->rule) : NULL;
                if (failed || rule_matched(rules, nrules, w->rule))
                    enqueue(w, rec.offset, failed);
            }
            rt->pos = rec.offset + 1;
            pthread_mutex_unlock(&rt->mu);
        } else if (st == STORE_BEHIND) {
            uint64_t first, next;
            store_bounds(bus->s, &first, &next);
            store_cursor_seek(c, first);
            pthread_mutex_lock(&rt->mu);
            rt->pos = first;
            pthread_mutex_unlock(&rt->mu);
        } else if (st == STORE_CORRUPT) {
            uint64_t lost;
            ebd_log(EBD_ERROR, "msg=\"corrupt record skipped by the router\" bus=%s error=\"%s\"",
                    bus->name, store_cursor_error(c));
            store_cursor_skip(c, &lost);
            pthread_mutex_lock(&rt->mu);
            rt->pos = store_cursor_offset(c);
            pthread_mutex_unlock(&rt->mu);
        } else if (st == STORE_CLOSED) {
            break;
        } else if (st != STORE_TIMEOUT) {
            /* An error that may pass (descriptors, I/O): said, and tried again. */
            ebd_log(EBD_ERROR, "msg=\"the router cannot read, will try again\" bus=%s error=\"%s\"",
                    bus->name, store_cursor_error(c));
            pause_ms(&r->stop, 100);
            store_cursor_seek(c, rt->pos);
        }
    }
    store_cursor_close(c);
    vm_ctx_free(ctx);
    return NULL;
}

void ebd_workers_start(ebd *d, ebd_rules *r)
{
    atomic_store(&r->stop, false);
    const vm_program *p = r->p;
    r->routers = calloc(p->nbuses ? p->nbuses : 1, sizeof *r->routers);
    /* Each pair starts from its committed cursor (claim_new_pairs gave new pairs theirs). */
    for (size_t i = 0; i < r->nworkers; i++) {
        ebd_worker *w = &r->workers[i];
        uint32_t b = p->rules[w->rule].bus;
        if (r->bus_of[b] == VM_NONE || !r->routers)
            continue;
        store *s = d->buses[r->bus_of[b]]->s;
        uint64_t pend[STORE_MAX_PENDING];
        size_t npend = 0;
        store_status cst = store_committed_pending(s, w->cursor, &w->start, pend, &npend);
        if (cst == STORE_NOTFOUND) {
            /* Its cursor was there when the rules were prepared: someone removed it since. */
            uint64_t next;
            store_bounds(s, &w->start, &next);
            store_commit(s, w->cursor, w->start);
            ebd_log(EBD_ERROR, "msg=\"a delivery cursor disappeared: it starts again from the "
                    "oldest event kept, so events may be delivered twice\" cursor=%s offset=%"
                    PRIu64, w->cursor, w->start);
        } else if (cst != STORE_OK) {
            /* Not a new pair: its backlog must not be passed over.  It stays stopped. */
            ebd_log(EBD_ERROR, "msg=\"cannot read a delivery cursor: these deliveries stay stopped "
                    "until it is fixed and the rules reloaded\" cursor=%s error=\"%s\"", w->cursor,
                    store_error(s));
            continue;
        }
        /* What the last run left pending below its position is delivered first, in order. */
        w->nspend = w->ispend = 0;
        w->spend = npend ? malloc(npend * sizeof *w->spend) : NULL;
        if (npend && !w->spend) {
            ebd_log(EBD_ERROR, "msg=\"out of memory: these deliveries stay stopped\" cursor=%s",
                    w->cursor);
            continue;
        }
        /* After a power loss the log may end below what the cursor listed: those are gone. */
        uint64_t lfirst, lnext;
        store_bounds(s, &lfirst, &lnext);
        size_t kept = 0;
        for (size_t q = 0; q < npend; q++)
            if (pend[q] < lnext)
                pend[kept++] = pend[q];
            else
                ebd_log(EBD_WARN, "msg=\"a pending event is past the end of the log\" cursor=%s "
                        "offset=%" PRIu64, w->cursor, pend[q]);
        npend = kept;
        if (w->spend) {
            memcpy(w->spend, pend, npend * sizeof *pend);
            for (size_t a = 1; a < npend; a++)
                for (size_t z = a; z > 0 && w->spend[z - 1] > w->spend[z]; z--) {
                    uint64_t tmp = w->spend[z];
                    w->spend[z] = w->spend[z - 1];
                    w->spend[z - 1] = tmp;
                }
            w->nspend = npend;
        }
        pthread_mutex_init(&w->pmu, NULL);
        w->pubhigh = w->start;
        w->npubpend = w->nspend;
        memcpy(w->pubpend, pend, w->nspend * sizeof *pend);
        w->pubver = w->comver = 0;
        pthread_mutex_init(&w->qmu, NULL);
        pthread_cond_init(&w->qcv, NULL);
        w->qcap = QUEUE_CAP;
        w->ring = calloc(w->qcap, sizeof *w->ring);
        w->failed = calloc(w->qcap, sizeof *w->failed);
        w->qhead = w->qn = 0;
        w->catchup = false;
        ebd_router *rt = &r->routers[b];
        w->router = rt;
        size_t *v = realloc(rt->pairs, (rt->npairs + 1) * sizeof *v);
        if (v) {
            rt->pairs = v;
            rt->pairs[rt->npairs++] = i;
        }
        if (rt->npairs == 1 || w->start < rt->pos)
            rt->pos = w->start;
    }
    for (uint32_t b = 0; r->routers && b < p->nbuses; b++) {
        ebd_router *rt = &r->routers[b];
        rt->d = d;
        rt->r = r;
        rt->pbus = b;
        pthread_mutex_init(&rt->mu, NULL);
        if (rt->npairs)
            rt->started = pthread_create(&rt->th, NULL, router_main, rt) == 0;
    }
    r->committer_started = r->nworkers && pthread_create(&r->committer, NULL, committer_main, r) == 0;
    for (size_t i = 0; i < r->nworkers; i++) {
        ebd_worker *w = &r->workers[i];
        if (!w->router || !w->ring || !w->failed || !w->router->started)
            continue;
        w->started = pthread_create(&w->th, NULL, worker_main, w) == 0;
        if (!w->started)
            ebd_log(EBD_ERROR, "msg=\"cannot start a delivery thread\" cursor=%s", w->cursor);
    }
}

void ebd_workers_stop(ebd *d, ebd_rules *r)
{
    atomic_store(&r->stop, true);
    int64_t t0 = mono_ms();
    for (size_t i = 0; i < r->nworkers; i++) {
        ebd_worker *w = &r->workers[i];
        if (w->started) {
            pthread_join(w->th, NULL);
            w->started = false;
            if (mono_ms() - t0 > 300)
                ebd_log(EBD_INFO, "msg=\"delivery stopped late\" cursor=%s after_ms=%lld",
                        w->cursor, (long long)(mono_ms() - t0));
        }
    }
    if (r->committer_started)
        pthread_join(r->committer, NULL);
    r->committer_started = false;
    for (size_t i = 0; i < r->nworkers; i++)     /* the last positions, durable before the swap */
        commit_now(d, r, &r->workers[i]);
    for (uint32_t b = 0; r->routers && b < r->p->nbuses; b++) {
        ebd_router *rt = &r->routers[b];
        if (rt->started)
            pthread_join(rt->th, NULL);
        rt->started = false;
        if (rt->d)
            pthread_mutex_destroy(&rt->mu);
        free(rt->pairs);
    }
    for (size_t i = 0; i < r->nworkers; i++) {
        ebd_worker *w = &r->workers[i];
        if (w->router) {
            pthread_mutex_destroy(&w->qmu);
            pthread_cond_destroy(&w->qcv);
            pthread_mutex_destroy(&w->pmu);
        }
        free(w->spend);
        w->spend = NULL;
        free(w->ring);
        w->ring = NULL;
        for (unsigned q = 0; w->failed && q < w->qcap; q++)
            free(w->failed[q]);
        free(w->failed);
        w->failed = NULL;
        w->router = NULL;
    }
    free(r->routers);
    r->routers = NULL;
}
