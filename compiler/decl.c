/*
 * decl.c — declarations: collects buses, targets, rules and the server block of every unit,
 * checks names, references and options, turns options into the image's option trees, and drives
 * the lowering and code generation of each rule.
 */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cc.h"
#include "../runtime/sources/cron.h"
#include "parser.h"

/* ---- names ----------------------------------------------------------------------------------- */

static const char *ident(cc_unit *u, const gr_token *t)
{
    return cc_token_text(u, t);
}

static uint64_t name_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

int cc_names_find(const cc_names *list, const char *s, size_t len)
{
    if (!list->nslots)
        return -1;
    for (uint64_t h = name_hash(s, len) & (list->nslots - 1); list->slots[h];
         h = (h + 1) & (list->nslots - 1)) {
        const cc_name *e = &list->v[list->slots[h] - 1];
        if (strlen(e->name) == len && memcmp(e->name, s, len) == 0)
            return (int)list->slots[h] - 1;
    }
    return -1;
}

void cc_names_add(cc_names *list, cc_name e)
{
    vec_push(*list, e);
    if (list->n * 2 > list->nslots) {
        uint32_t n = list->nslots ? list->nslots * 2 : 64;
        uint32_t *slots = calloc(n, sizeof *slots);
        if (!slots)
            abort();
        free(list->slots);
        list->slots = slots;
        list->nslots = n;
        for (uint32_t i = 0; i + 1 < list->n; i++) {
            uint64_t h = name_hash(list->v[i].name, strlen(list->v[i].name)) & (n - 1);
            while (slots[h])
                h = (h + 1) & (n - 1);
            slots[h] = i + 1;
        }
    }
    uint64_t h = name_hash(e.name, strlen(e.name)) & (list->nslots - 1);
    while (list->slots[h])
        h = (h + 1) & (list->nslots - 1);
    list->slots[h] = list->n;
}

void cc_names_free(cc_names *list)
{
    free(list->v);
    free(list->slots);
}

/* Edit distance, for "did you mean" suggestions (names are short). */
static size_t distance(const char *a, size_t na, const char *b, size_t nb)
{
    size_t row[64];
    if (na >= 63 || nb >= 63)
        return 99;
    for (size_t j = 0; j <= nb; j++)
        row[j] = j;
    for (size_t i = 1; i <= na; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best) best = row[j] + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[nb];
}

/* Appends " (did you mean 'x'?)" to buf when some candidate is close to name. */
void cc_suggest(const char *name, size_t len, const char *const *cands, size_t n, char *buf,
                    size_t cap)
{
    size_t best = 99, pick = n;
    for (size_t i = 0; i < n; i++) {
        size_t d = distance(name, len, cands[i], strlen(cands[i]));
        if (d < best) {
            best = d;
            pick = i;
        }
    }
    buf[0] = 0;
    if (pick < n && best <= (len > 4 ? 2 : 1))
        snprintf(buf, cap, " (did you mean '%s'?)", cands[pick]);
}

static void suggest_name(const cc_name *v, uint32_t n, const char *s, size_t len, char *buf,
                         size_t cap)
{
    const char *cands[256];
    size_t k = 0;
    for (uint32_t i = 0; i < n && k < 256; i++)
        cands[k++] = v[i].name;
    cc_suggest(s, len, cands, k, buf, cap);
}

/* Registers a declaration in `list`, reporting a duplicate. */
static void declare(cc_comp *c, cc_unit *u, ast *d, const char *what, cc_names *list)
{
    const char *name = ident(u, &d->tok);
    int prev = cc_names_find(list, name, strlen(name));
    if (prev >= 0) {
        cc_name *p = &list->v[prev];
        char where[64] = "";
        if (p->unit == u) {
            uint32_t line = 1;
            for (uint32_t i = 0; i < p->node->tok.off; i++)
                line += u->text[i] == '\n';
            snprintf(where, sizeof where, " on line %u", line);
        } else {
            snprintf(where, sizeof where, " in %s", p->unit->name);
        }
        cc_error(u, d->tok.off, d->tok.len, "duplicate %s '%s' (first declared%s)", what, name,
                 where);
        /* Its body is still checked, so that one run reports every error. */
        cc_name e = { name, d, u, VM_NONE };
        vec_push(c->dups, e);   /* never looked up by name: no index needed */
        return;
    }
    cc_name e = { name, d, u, list->n };
    cc_names_add(list, e);
}

/* ---- option values --------------------------------------------------------------------------- */

typedef enum { V_TEXT, V_DURATION, V_SIZE, V_NUMBER, V_INT, V_IDENT, V_BOOL } vkind;

static const char *vkind_name(vkind k)
{
    switch (k) {
    case V_TEXT: return "a string or env(\"NAME\")";
    case V_DURATION: return "a duration such as 5s";
    case V_SIZE: return "a size such as 256KiB";
    case V_NUMBER: return "a number";
    case V_INT: return "a whole number";
    case V_IDENT: return "a name";
    case V_BOOL: return "true or false";
    }
    return "a value";
}

static bool is_env_call(cc_unit *u, ast *v)
{
    return v->kind == A_CALL && v->tok.len == 3 && memcmp(u->text + v->tok.off, "env", 3) == 0;
}

/* Checks that value v is of kind k; reports and returns false if not. */
static bool check_value(cc_unit *u, ast *v, vkind k, const char *what)
{
    double d;
    bool ok = false;
    if (v->kind == A_CALL && is_env_call(u, v)) {
        ast *arg = v->a;
        if (!arg || arg->next || arg->kind != A_VALUE || arg->op != TK_STRING) {
            cc_error_at(u, v, "env() takes one string: the variable's name, as in env(\"TOKEN\")");
            return false;
        }
        ok = k == V_TEXT;
    } else if (v->kind == A_VALUE) {
        switch (k) {
        case V_TEXT: ok = v->op == TK_STRING; break;
        case V_DURATION:
        case V_SIZE: {
            int r = k == V_DURATION ? cc_duration(u, &v->tok, &d) : cc_size(u, &v->tok, &d);
            if (r < 0) {
                cc_error_at(u, v, k == V_DURATION ? "duration out of range (at most 100 years)"
                                                  : "a size is a whole number of bytes, at most 2^60");
                return false;
            }
            ok = r == 1;
            break;
        }
        case V_NUMBER: ok = v->op == TK_NUMBER; break;
        case V_INT:
            ok = v->op == TK_NUMBER && vm_number_value(u->text + v->tok.off, v->tok.len, &d) &&
                 d >= 0 && d == floor(d) && d < 4e9;
            break;
        case V_IDENT: ok = v->op == TK_IDENT; break;
        case V_BOOL: ok = v->op == TK_TRUE || v->op == TK_FALSE; break;
        }
        if (ok && v->op == TK_STRING) {
            size_t n;
            ok = cc_string(u, &v->tok, &n) != NULL;
            if (!ok)
                return false;
        }
    }
    if (!ok)
        cc_error_at(u, v, "%s takes %s", what, vkind_name(k));
    return ok;
}

static uint32_t count(ast *list)
{
    uint32_t n = 0;
    for (ast *x = list; x; x = x->next)
        n++;
    return n;
}

/* ---- option specifications ------------------------------------------------------------------- */

enum {
    K_BUS = 1, K_SERVER = 2,
    K_HTTP = 4, K_FILE = 8, K_TOBUS = 16, K_EXEC = 32, K_MQTT = 64, K_NATS = 128,   /* targets */
    K_REMOTE = 256,
    K_SMQTT = 512, K_SNATS = 1024, K_WEBHOOK = 2048, K_SCHEDULE = 4096,             /* sources */
};
#define K_TARGETS (K_HTTP | K_FILE | K_TOBUS | K_EXEC | K_MQTT | K_NATS | K_REMOTE)

typedef bool (*opt_check)(cc_comp *c, cc_unit *u, ast *opt, const char *what);

static bool one(cc_unit *u, ast *opt, const char *what, vkind k)
{
    if (count(opt->a) != 1 || opt->b) {
        cc_error_at(u, opt, "%s takes one value: %s", what, vkind_name(k));
        return false;
    }
    return check_value(u, opt->a, k, what);
}

static bool opt_duration(cc_comp *c, cc_unit *u, ast *o, const char *w) { (void)c; return one(u, o, w, V_DURATION); }
static bool opt_size(cc_comp *c, cc_unit *u, ast *o, const char *w) { (void)c; return one(u, o, w, V_SIZE); }
static bool opt_text(cc_comp *c, cc_unit *u, ast *o, const char *w) { (void)c; return one(u, o, w, V_TEXT); }
static bool opt_int(cc_comp *c, cc_unit *u, ast *o, const char *w) { (void)c; return one(u, o, w, V_INT); }

/* One whole number from lo to hi (what: "threads", "events"). */
static bool whole_in(cc_unit *u, ast *o, const char *w, double lo, double hi, const char *what)
{
    double d;
    if (!one(u, o, w, V_INT))
        return false;
    if (vm_number_value(u->text + o->a->tok.off, o->a->tok.len, &d) && d >= lo && d <= hi)
        return true;
    cc_error_at(u, o->a, "%s takes a number of %s from %.0f to %.0f", w, what, lo, hi);
    return false;
}

/* delivery_threads: 1 to 256 threads; delivery_queue: how many events one (rule, target) pair
 * may hold queued, 16 to 2^20; batch: how many deliveries one http request may carry. */
static bool opt_threads(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    return whole_in(u, o, w, 1, 256, "threads");
}

static bool opt_queue(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    return whole_in(u, o, w, 16, 1048576, "events");
}

static bool opt_batch(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    return whole_in(u, o, w, 1, 1000, "events");
}

static bool word_is(cc_unit *u, ast *v, const char *word)
{
    return v->kind == A_VALUE && v->op == TK_IDENT && strlen(word) == v->tok.len &&
           memcmp(u->text + v->tok.off, word, v->tok.len) == 0;
}

/* fsync always | never | interval DURATION */
static bool opt_fsync(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    ast *v = o->a;
    if (v && !v->next && !o->b && (word_is(u, v, "always") || word_is(u, v, "never")))
        return true;
    if (v && word_is(u, v, "interval") && v->next && !v->next->next && !o->b)
        return check_value(u, v->next, V_DURATION, "fsync interval");
    cc_error_at(u, o, "%s takes 'always', 'never' or 'interval <duration>'", w);
    return false;
}

/* aws_access_key "AKID" secret env("NAME") [account "123456789012"]: an access key AWS clients
 * sign PutEvents with (docs/aws.md); in the server block for every bus, in a bus for that one. */
static bool opt_aws_key(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    ast *id = o->a, *kw = id ? id->next : NULL, *sec = kw ? kw->next : NULL;
    ast *kw2 = sec ? sec->next : NULL, *acct = kw2 ? kw2->next : NULL;
    if (!id || id->kind != A_VALUE || id->op != TK_STRING || !kw || !word_is(u, kw, "secret") ||
        !sec || o->b || (kw2 && (!word_is(u, kw2, "account") || !acct || acct->next))) {
        cc_error_at(u, o, "%s is written: aws_access_key \"AKID\" secret env(\"NAME\") "
                    "[account \"123456789012\"]", w);
        return false;
    }
    size_t n;
    const char *k = cc_string(u, &id->tok, &n);
    bool good = k && n >= 16 && n <= 128;
    for (size_t i = 0; good && i < n; i++)
        good = (k[i] >= 'A' && k[i] <= 'Z') || (k[i] >= '0' && k[i] <= '9');
    if (!good) {
        cc_error_at(u, id, "an AWS access key id is 16 to 128 capital letters and digits "
                    "(AKIAIOSFODNN7EXAMPLE)");
        return false;
    }
    if (!(sec->kind == A_CALL && is_env_call(u, sec))) {
        cc_error_at(u, sec, "a secret is not written in the rules: secret env(\"NAME\") reads it "
                    "from the environment when ebd loads them");
        return false;
    }
    if (!check_value(u, sec, V_TEXT, "secret"))
        return false;
    if (acct) {
        const char *a = acct->kind == A_VALUE && acct->op == TK_STRING ? cc_string(u, &acct->tok, &n) : NULL;
        bool digits = a && n == 12;
        for (size_t i = 0; digits && i < n; i++)
            digits = a[i] >= '0' && a[i] <= '9';
        if (!digits) {
            cc_error_at(u, acct, "an AWS account is 12 digits, as a string: account \"123456789012\"");
            return false;
        }
    }
    return true;
}

/* trace on | off */
static bool opt_onoff(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    if (o->a && !o->a->next && !o->b && (word_is(u, o->a, "on") || word_is(u, o->a, "off")))
        return true;
    cc_error_at(u, o, "%s takes 'on' or 'off'", w);
    return false;
}

/* header "Name" = value */
static bool opt_header(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    if (count(o->a) != 1 || !o->b) {
        cc_error_at(u, o, "%s is written: header \"Name\" = \"value\" (or env(\"VAR\"))", w);
        return false;
    }
    return check_value(u, o->a, V_TEXT, "a header name") && check_value(u, o->b, V_TEXT, "a header value");
}

/* method GET | POST | PUT | PATCH | DELETE */
static bool opt_method(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    static const char *const methods[] = { "GET", "POST", "PUT", "PATCH", "DELETE" };
    (void)c;
    if (count(o->a) == 1 && !o->b && (o->a->op == TK_IDENT || o->a->op == TK_STRING)) {
        const gr_token *t = &o->a->tok;
        const char *s = u->text + t->off + (t->type == TK_STRING);
        size_t n = t->len - (t->type == TK_STRING ? 2 : 0);
        for (size_t i = 0; i < 5; i++)
            if (strlen(methods[i]) == n && memcmp(methods[i], s, n) == 0)
                return true;
    }
    cc_error_at(u, o, "%s takes one of GET, POST, PUT, PATCH, DELETE", w);
    return false;
}

/* Checks the named arguments of a call against `names` and their kinds. */
static bool check_args(cc_unit *u, ast *call, const char *const *names, const vkind *kinds,
                       size_t n, bool all_required)
{
    bool ok = true;
    bool seen[8] = { false };
    for (ast *a = call->a; a; a = a->next) {
        if (a->kind != A_NAMED) {
            cc_error_at(u, a, "arguments of %.*s() are named, as in name: value", (int)call->tok.len,
                        u->text + call->tok.off);
            ok = false;
            continue;
        }
        size_t k = 0;
        while (k < n && !(strlen(names[k]) == a->tok.len &&
                          memcmp(names[k], u->text + a->tok.off, a->tok.len) == 0))
            k++;
        if (k == n) {
            char hint[96];
            cc_suggest(u->text + a->tok.off, a->tok.len, names, n, hint, sizeof hint);
            cc_error(u, a->tok.off, a->tok.len, "unknown argument '%.*s' of %.*s()%s",
                     (int)a->tok.len, u->text + a->tok.off, (int)call->tok.len,
                     u->text + call->tok.off, hint);
            ok = false;
            continue;
        }
        if (seen[k]) {
            cc_error(u, a->tok.off, a->tok.len, "argument '%s' given twice", names[k]);
            ok = false;
        }
        seen[k] = true;
        ok &= check_value(u, a->a, kinds[k], names[k]);
    }
    for (size_t k = 0; k < n && all_required; k++)
        if (!seen[k]) {
            cc_error_at(u, call, "%.*s() needs the argument '%s'", (int)call->tok.len,
                        u->text + call->tok.off, names[k]);
            ok = false;
        }
    return ok;
}

/* retry none | exponential(attempts: N, first: D, max: D, max_age: D) */
static bool opt_retry(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    static const char *const names[] = { "attempts", "first", "max", "max_age" };
    static const vkind kinds[] = { V_INT, V_DURATION, V_DURATION, V_DURATION };
    (void)c;
    ast *v = o->a;
    if (v && !v->next && !o->b && word_is(u, v, "none"))
        return true;
    if (v && !v->next && !o->b && v->kind == A_CALL && v->tok.len == 11 &&
        memcmp(u->text + v->tok.off, "exponential", 11) == 0)
        return check_args(u, v, names, kinds, 4, false);
    cc_error_at(u, o, "%s takes 'none' or exponential(attempts: N, first: 1s, max: 5m, max_age: 24h)", w);
    return false;
}

/* sign hmac_sha256(secret: env("KEY"), header: "X-Ebr-Signature") */
static bool opt_sign(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    static const char *const names[] = { "secret", "header" };
    static const vkind kinds[] = { V_TEXT, V_TEXT };
    (void)c;
    ast *v = o->a;
    if (v && !v->next && !o->b && v->kind == A_CALL && v->tok.len == 11 &&
        memcmp(u->text + v->tok.off, "hmac_sha256", 11) == 0) {
        bool ok = check_args(u, v, names, kinds, 2, false);
        bool has_secret = false;
        for (ast *a = v->a; a; a = a->next)
            has_secret |= a->kind == A_NAMED && a->tok.len == 6 &&
                          memcmp(u->text + a->tok.off, "secret", 6) == 0;
        if (!has_secret) {
            cc_error_at(u, v, "hmac_sha256() needs the argument 'secret'");
            ok = false;
        }
        return ok;
    }
    cc_error_at(u, o, "%s takes hmac_sha256(secret: env(\"KEY\"))", w);
    return false;
}

/* Is s[0..n) a name for an environment variable: letters, digits and '_', not a digit first? */
static bool env_name_ok(const char *s, size_t n)
{
    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

/* env { NAME = "value"  OTHER = env("VAR") }: what an exec target's command finds in its
 * environment besides PATH, HOME, LANG and TZ (docs/ebd.md, Commands). */
static bool opt_env(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    if (!(o->flags & AF_BLOCK)) {
        cc_error_at(u, o, "%s is written as a block, one variable a line: env { NAME = env(\"VAR\") }", w);
        return false;
    }
    bool ok = true;
    for (ast *x = o->a; x; x = x->next) {
        const char *name = u->text + x->tok.off;
        if (x->a || !x->b || (x->flags & AF_BLOCK)) {
            cc_error_at(u, x, "a variable of 'env' is written NAME = \"value\" or NAME = env(\"VAR\")");
            ok = false;
            continue;
        }
        if (!env_name_ok(name, x->tok.len)) {
            cc_error(u, x->tok.off, x->tok.len, "'%.*s' cannot name an environment variable: "
                     "letters, digits and '_', not starting with a digit", (int)x->tok.len, name);
            ok = false;
        }
        for (ast *p = o->a; p != x; p = p->next)
            if (p->tok.len == x->tok.len && memcmp(u->text + p->tok.off, name, x->tok.len) == 0) {
                cc_error(u, x->tok.off, x->tok.len, "variable '%.*s' is set twice",
                         (int)x->tok.len, name);
                ok = false;
                break;
            }
        char what[80];
        snprintf(what, sizeof what, "variable '%.*s'", (int)(x->tok.len < 40 ? x->tok.len : 40), name);
        ok &= check_value(u, x->b, V_TEXT, what);
    }
    return ok;
}

/* A file path written in the rules (env() is checked when the daemon reads it): a relative path
 * names a file under the data directory and must stay there, so none of its parts is "..". */
static bool check_file_path(cc_unit *u, ast *v)
{
    size_t n;
    const char *s = v->kind == A_VALUE && v->op == TK_STRING ? cc_string(u, &v->tok, &n) : NULL;
    if (!s)
        return true;
    if (n == 0 || memchr(s, 0, n)) {
        cc_error_at(u, v, "the path is empty");
        return false;
    }
    for (size_t i = 0; s[0] != '/' && i < n;) {
        size_t j = i;
        while (j < n && s[j] != '/')
            j++;
        if (j - i == 2 && s[i] == '.' && s[i + 1] == '.') {
            cc_error_at(u, v, "a relative path names a file under the data directory and cannot "
                        "leave it: '..' is not allowed (an absolute path may name any file)");
            return false;
        }
        i = j + 1;
    }
    return true;
}

/* dead_letter TARGET | dead_letter file "path" */
static bool opt_dead_letter(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    ast *v = o->a;
    if (v && !v->next && !o->b && v->op == TK_IDENT) {
        const char *name = u->text + v->tok.off;
        if (cc_names_find(&c->targets, name, v->tok.len) < 0 &&
            !cc_is_broken(c, "target", name, v->tok.len)) {
            char hint[128];
            suggest_name(c->targets.v, c->targets.n, name, v->tok.len, hint, sizeof hint);
            cc_error_at(u, v, "unknown target '%.*s'%s", (int)v->tok.len, name, hint);
            return false;
        }
        return true;
    }
    if (v && word_is(u, v, "file") && v->next && !v->next->next && !o->b)
        return check_value(u, v->next, V_TEXT, "dead_letter file") && check_file_path(u, v->next);
    cc_error_at(u, o, "%s takes a target's name, or file \"path\"", w);
    return false;
}

/* args ["--flag", "value"] */
static bool opt_args(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    if (count(o->a) != 1 || o->b || o->a->kind != A_LIST) {
        cc_error_at(u, o, "%s takes a list of strings", w);
        return false;
    }
    bool ok = true;
    for (ast *x = o->a->a; x; x = x->next)
        ok &= check_value(u, x, V_TEXT, "an argument");
    return ok;
}

/* Is v a literal string or env("NAME")? */
static bool is_text(cc_unit *u, ast *v)
{
    return (v->kind == A_VALUE && v->op == TK_STRING) || is_env_call(u, v);
}

/* A NATS server URL: a literal one starts with nats:// or tls:// and names a host (an env()
 * value is checked when the daemon reads it). Reports and returns false if not. */
static bool check_nats_url(cc_unit *u, ast *v)
{
    if (!check_value(u, v, V_TEXT, "a NATS server URL"))
        return false;
    size_t n;
    const char *s = v->kind == A_VALUE ? cc_string(u, &v->tok, &n) : NULL;
    if (!s)
        return true;
    size_t i = n >= 7 && memcmp(s, "nats://", 7) == 0 ? 7
             : n >= 6 && memcmp(s, "tls://", 6) == 0  ? 6 : 0;
    if (!i) {
        cc_error_at(u, v, "a NATS server URL must start with nats:// or tls://");
        return false;
    }
    size_t end = i;                             /* the authority: up to the first '/' */
    while (end < n && s[end] != '/')
        end++;
    for (size_t j = i; j < end; j++)            /* user:password@ before the host */
        if (s[j] == '@')
            i = j + 1;
    if (i == end || s[i] == ':') {
        cc_error_at(u, v, "a NATS server URL needs a host, as in nats://HOST:PORT");
        return false;
    }
    return true;
}

/* A NATS target's or source's servers: one URL or a list of them. */
static void check_nats_urls(cc_unit *u, ast *v)
{
    if (v->kind != A_LIST) {
        check_nats_url(u, v);
        return;
    }
    if (!v->a)
        cc_error_at(u, v, "the list of NATS servers is empty");
    for (ast *x = v->a; x; x = x->next)
        check_nats_url(u, x);
}

/* A literal URL's text after its scheme (one of schemes), or NULL after reporting why not.
 * env() passes: the daemon checks what it reads. */
static const char *url_after_scheme(cc_unit *u, ast *v, const char *what,
                                    const char *const *schemes, size_t nschemes, size_t *rest)
{
    if (!check_value(u, v, V_TEXT, what) || v->kind != A_VALUE)
        return NULL;
    size_t n;
    const char *s = cc_string(u, &v->tok, &n);
    for (size_t i = 0; s && i < nschemes; i++) {
        size_t k = strlen(schemes[i]);
        if (n > k && !memcmp(s, schemes[i], k) && s[k] != '/' && s[k] != ':') {
            *rest = n - k;
            return s + k;
        }
    }
    if (s)
        cc_error_at(u, v, "%s starts with %s%s%s and names a host", what, schemes[0],
                    nschemes > 1 ? " or " : "", nschemes > 1 ? schemes[1] : "");
    return NULL;
}

static void check_mqtt_url(cc_unit *u, ast *v)
{
    static const char *const schemes[] = { "mqtt://" };
    size_t n;
    const char *s = url_after_scheme(u, v, "an MQTT broker's URL", schemes, 1, &n);
    if (s && memchr(s, '/', n) && ((const char *)memchr(s, '/', n))[1] != 0)
        cc_error_at(u, v, "an MQTT broker's URL names the broker only (mqtt://HOST:PORT); the "
                    "topic is an option");
}

/* A remote target: the URL of a bus of another ebd, .../v1/buses/NAME */
static void check_remote_url(cc_unit *u, ast *v)
{
    static const char *const schemes[] = { "http://", "https://" };
    size_t n;
    const char *s = url_after_scheme(u, v, "a remote target's URL", schemes, 2, &n);
    if (!s)
        return;
    const char *b = NULL;
    for (size_t i = 0; i + 10 <= n; i++)
        if (!memcmp(s + i, "/v1/buses/", 10))
            b = s + i + 10;
    if (!b || b == s + n || memchr(b, '/', (size_t)(s + n - b)))
        cc_error_at(u, v, "a remote target's URL is the other daemon's bus, as in "
                    "\"https://HOST:PORT/v1/buses/NAME\"");
}

static ast *find_option(cc_unit *u, ast *opts, const char *name)
{
    size_t n = strlen(name);
    for (ast *o = opts; o; o = o->next)
        if (o->tok.len == n && !memcmp(u->text + o->tok.off, name, n))
            return o;
    return NULL;
}

static unsigned option_count(cc_unit *u, ast *opts, const char *name)
{
    unsigned k = 0;
    for (ast *o = find_option(u, opts, name); o; o = find_option(u, o->next, name))
        k++;
    return k;
}

/* The MQTT topics of a declaration's `topic` options: a source's are filters, where '+' is a
 * whole level and '#' the whole last one; a target's are names, without either. */
static void check_topics(cc_unit *u, ast *opts, bool filter)
{
    for (ast *o = find_option(u, opts, "topic"); o; o = find_option(u, o->next, "topic")) {
        ast *v = o->a;
        size_t n;
        const char *t = v && v->kind == A_VALUE && v->op == TK_STRING ? cc_string(u, &v->tok, &n) : NULL;
        if (!t)
            continue;            /* (env(): checked by the daemon; not a string: reported) */
        const char *why = n == 0 ? "a topic is not empty" : NULL;
        for (size_t i = 0; i < n && !why; i++) {
            bool level_start = i == 0 || t[i - 1] == '/', level_end = i + 1 == n || t[i + 1] == '/';
            if ((t[i] == '+' || t[i] == '#') && !filter)
                why = "a topic published to names one topic: no + or # in it";
            else if (t[i] == '+' && !(level_start && level_end))
                why = "'+' stands for a whole level of the topic, as in \"sensors/+/temp\"";
            else if (t[i] == '#' && !(level_start && i + 1 == n))
                why = "'#' stands for the whole rest of the topic: it comes last, alone in its level";
            else if (t[i] == 0)
                why = "a topic holds no NUL character";
        }
        if (why)
            cc_error_at(u, v, "%s", why);
    }
}

/* Reports at the declaration's name when its options lack `name`. */
static void need_option(cc_unit *u, ast *d, const char *name, const char *msg)
{
    if (!find_option(u, d->c, name))
        cc_error(u, d->tok.off, d->tok.len, "%s", msg);
}

/* The value after one word of 'log nats' (x is the word, val what follows it, or NULL):
 * stream "NAME", replicas N, or user/password/token/creds with a string or env(). */
static bool check_log_word(cc_unit *u, const char *word, ast *x, ast *val)
{
    size_t n;
    const char *s;
    double d;
    if (strcmp(word, "stream") == 0) {
        if (!val || val->kind != A_VALUE || val->op != TK_STRING) {
            cc_error_at(u, val ? val : x, "'stream' takes a string, as in stream \"EBR_ORDERS\"");
            return false;
        }
        if (!(s = cc_string(u, &val->tok, &n)))
            return false;
        bool good = n >= 1 && n <= 64;
        for (size_t i = 0; good && i < n; i++)
            good = (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
                   (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-';
        if (!good)
            cc_error_at(u, val, "a stream name is 1 to 64 letters, digits, '_' or '-'");
        return good;
    }
    if (strcmp(word, "ack_wait") == 0) {
        if (!val) {
            cc_error_at(u, x, "'ack_wait' takes a duration such as 30s");
            return false;
        }
        if (!check_value(u, val, V_DURATION, "'ack_wait'"))
            return false;
        if (cc_duration(u, &val->tok, &d) != 1 || d < 1000 || d > 12 * 3600 * 1000.0) {
            cc_error_at(u, val, "ack_wait is from 1s to 12h");
            return false;
        }
        return true;
    }
    double most = !strcmp(word, "in_hand") ? 1048576 : !strcmp(word, "replicas") ? 5 : 0;
    if (most) {                               /* a whole number from 1 to most */
        if (!val || val->kind != A_VALUE || val->op != TK_NUMBER ||
            !vm_number_value(u->text + val->tok.off, val->tok.len, &d) || d != floor(d) ||
            d < 1 || d > most) {
            cc_error_at(u, val ? val : x, "%s is a whole number from 1 to %.0f", word, most);
            return false;
        }
        return true;
    }
    char what[16];
    snprintf(what, sizeof what, "'%s'", word);
    if (!val) {
        cc_error_at(u, x, "%s takes %s", what, vkind_name(V_TEXT));
        return false;
    }
    if ((!strcmp(word, "password") || !strcmp(word, "token")) &&
        !(val->kind == A_CALL && is_env_call(u, val))) {
        cc_error_at(u, val, "a secret is not written in the rules: %s env(\"NAME\") reads it "
                    "from the environment when ebd loads them", word);
        return false;
    }
    return check_value(u, val, V_TEXT, what);
}

/* log local | log nats URL... [stream "NAME"] [replicas N] [user U password P | token T |
 * creds "FILE"]: where a bus keeps its events (docs/storage.md). The server URLs come first;
 * each word after them comes at most once, with one value. Stops at the first error after
 * the URLs, where what follows can no longer be told apart. */
static bool opt_log(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    enum { W_STREAM, W_REPLICAS, W_ACK_WAIT, W_IN_HAND, W_USER, W_PASSWORD, W_TOKEN, W_CREDS,
           NWORDS };
    static const char *const words[NWORDS] = { "stream", "replicas", "ack_wait", "in_hand", "user",
                                                "password", "token", "creds" };
    static const int login[NWORDS] = { 0, 0, 0, 0, 1, 1, 2, 3 };  /* the way to log in of each */
    (void)c;
    ast *v = o->a;
    if (v && word_is(u, v, "local") && !v->next && !o->b)
        return true;
    if (!v || !word_is(u, v, "nats") || !v->next || !is_text(u, v->next) || o->b) {
        cc_error_at(u, o, "%s takes local, or nats \"nats://HOST:PORT\" ... [stream \"NAME\"] "
                    "[replicas N] [ack_wait 30s] [in_hand N] [user U password env(\"P\") | token env(\"T\") | "
                    "creds \"FILE\"]", w);
        return false;
    }
    bool ok = true;
    ast *x = v->next;
    for (; x && is_text(u, x); x = x->next)
        ok &= check_nats_url(u, x);
    ast *seen[NWORDS] = { NULL };
    int way = 0;
    for (; x; x = x->next ? x->next->next : NULL) {
        size_t k = 0;
        while (k < NWORDS && !word_is(u, x, words[k]))
            k++;
        if (k == NWORDS && x->kind == A_VALUE && x->op == TK_IDENT) {
            char hint[96];
            cc_suggest(u->text + x->tok.off, x->tok.len, words, NWORDS, hint, sizeof hint);
            cc_error_at(u, x, "unknown word '%.*s' in %s (stream, replicas, ack_wait, "
                        "in_hand, user, password, token or creds)%s", (int)x->tok.len, u->text + x->tok.off, w, hint);
            return false;
        }
        if (k == NWORDS) {
            cc_error_at(u, x, "%s takes its server URLs first, then words with one value each: "
                        "stream, replicas, ack_wait, in_hand, user, password, token or creds", w);
            return false;
        }
        if (seen[k]) {
            cc_error_at(u, x, "'%s' is given twice", words[k]);
            return false;
        }
        seen[k] = x;
        if (login[k] && way && login[k] != way) {
            cc_error_at(u, x, "give one of user/password, token or creds: they are ways to log "
                        "in to NATS, and a bus uses one");
            return false;
        }
        if (login[k])
            way = login[k];
        if (!check_log_word(u, words[k], x, x->next))
            return false;
    }
    if (!seen[W_USER] != !seen[W_PASSWORD]) {
        cc_error_at(u, seen[W_USER] ? seen[W_USER] : seen[W_PASSWORD],
                    seen[W_USER] ? "'user' needs 'password'" : "'password' needs 'user'");
        return false;
    }
    return ok;
}

static bool opt_bool(cc_comp *c, cc_unit *u, ast *o, const char *w) { (void)c; return one(u, o, w, V_BOOL); }

/* qos 0 | 1 (QoS 2 is not offered: ebr's own de-duplication is what stores a message once) */
static bool opt_qos(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    double d;
    if (!one(u, o, w, V_INT))
        return false;
    if (vm_number_value(u->text + o->a->tok.off, o->a->tok.len, &d) && d <= 1)
        return true;
    cc_error_at(u, o->a, "%s takes 0 or 1 (no QoS 2: the bus's dedup window is what stores a "
                "message once)", w);
    return false;
}

/* dedup DURATION: the window within which an event's (source, id) is stored once */
static bool opt_dedup(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    double ms;
    if (!one(u, o, w, V_DURATION))
        return false;
    cc_duration(u, &o->a->tok, &ms);
    if (ms < 1000 || ms > 24 * 3600e3) {
        cc_error_at(u, o->a, "%s takes a window from 1s to 24h", w);
        return false;
    }
    return true;
}

/* catchup all | last | none: what a schedule does with the firings it missed while down */
static bool opt_catchup(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    ast *v = o->a;
    if (v && !v->next && !o->b &&
        (word_is(u, v, "all") || word_is(u, v, "last") || word_is(u, v, "none")))
        return true;
    cc_error_at(u, o, "%s takes 'all', 'last' or 'none'", w);
    return false;
}

/* data {...}: a JSON value (read whole by the parser) */
static bool opt_json(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    if (o->a && !o->a->next && !o->b && o->a->kind == A_JSON) {
        const char *j = u->text + o->a->tok.off;
        size_t at;
        const char *why;
        if (vm_json_check(j, o->a->tok.len, &at, &why))
            return true;
        cc_error(u, o->a->tok.off + (uint32_t)at, 1, "%s is not valid JSON: %s", w, why);
        return false;
    }
    cc_error_at(u, o, "%s takes a JSON object or array, as in data {\"job\": \"compact\"}", w);
    return false;
}

/* verify github(secret: S) | stripe(secret: S, tolerance: D) | hmac(secret: S, header: H,
 * prefix: P, encoding: hex|base64, algorithm: sha1|sha256|sha512) | none */
static bool opt_verify(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    (void)c;
    static const char *const gh[] = { "secret" };
    static const vkind ghk[] = { V_TEXT };
    static const char *const st[] = { "secret", "tolerance" };
    static const vkind stk[] = { V_TEXT, V_DURATION };
    static const char *const hm[] = { "secret", "header", "prefix", "encoding", "algorithm" };
    static const vkind hmk[] = { V_TEXT, V_TEXT, V_TEXT, V_IDENT, V_IDENT };
    ast *v = o->a;
    if (v && !v->next && !o->b && word_is(u, v, "none"))
        return true;
    if (!v || v->next || o->b || v->kind != A_CALL) {
        cc_error_at(u, o, "%s takes github(secret: env(\"S\")), stripe(secret: ...), "
                    "hmac(secret: ..., header: \"X-Signature\") or none", w);
        return false;
    }
    const char *f = u->text + v->tok.off;
    size_t n = v->tok.len;
    bool ok;
    if (n == 6 && !memcmp(f, "github", 6))
        ok = check_args(u, v, gh, ghk, 1, true);
    else if (n == 6 && !memcmp(f, "stripe", 6))
        ok = check_args(u, v, st, stk, 2, false);
    else if (n == 4 && !memcmp(f, "hmac", 4))
        ok = check_args(u, v, hm, hmk, 5, false);
    else {
        static const char *const fns[] = { "github", "stripe", "hmac", "none" };
        char hint[96];
        cc_suggest(f, n, fns, 4, hint, sizeof hint);
        cc_error(u, v->tok.off, v->tok.len, "unknown signature scheme '%.*s' (github, stripe, "
                 "hmac or none)%s", (int)n, f, hint);
        return false;
    }
    bool secret = false, header = false;
    for (ast *a = v->a; a; a = a->next) {
        if (a->kind != A_NAMED)
            continue;
        const char *an = u->text + a->tok.off;
        secret |= a->tok.len == 6 && !memcmp(an, "secret", 6);
        header |= a->tok.len == 6 && !memcmp(an, "header", 6);
        if (a->tok.len == 8 && !memcmp(an, "encoding", 8) && a->a->op == TK_IDENT &&
            !word_is(u, a->a, "hex") && !word_is(u, a->a, "base64")) {
            cc_error_at(u, a->a, "encoding is hex or base64");
            ok = false;
        }
        if (a->tok.len == 9 && !memcmp(an, "algorithm", 9) && a->a->op == TK_IDENT &&
            !word_is(u, a->a, "sha1") && !word_is(u, a->a, "sha256") && !word_is(u, a->a, "sha512")) {
            cc_error_at(u, a->a, "algorithm is sha1, sha256 or sha512");
            ok = false;
        }
    }
    if (ok && !secret) {
        cc_error_at(u, v, "%.*s() needs the argument 'secret'", (int)n, f);
        ok = false;
    }
    if (ok && n == 4 && !header) {
        cc_error_at(u, v, "hmac() needs the argument 'header': the request header that carries "
                    "the signature");
        ok = false;
    }
    return ok;
}

static const struct opt_spec {
    const char *name;
    unsigned kinds;
    opt_check check;
    bool repeatable;
} opt_specs[] = {
    { "retention",      K_BUS,                      opt_duration,    false },
    { "retention_size", K_BUS,                      opt_size,        false },
    { "segment_size",   K_BUS,                      opt_size,        false },
    { "fsync",          K_BUS | K_FILE,             opt_fsync,       false },
    { "log",            K_BUS,                      opt_log,         false },
    { "max_event_size", K_BUS | K_SERVER,           opt_size,        false },
    { "token",          K_BUS | K_NATS | K_SNATS | K_REMOTE, opt_text,   false },
    { "dedup",          K_BUS,                      opt_dedup,       false },
    { "admin_token",    K_SERVER,                   opt_text,        false },
    { "header",         K_HTTP,                     opt_header,      true  },
    { "method",         K_HTTP,                     opt_method,      false },
    { "timeout",        K_HTTP | K_EXEC | K_MQTT | K_NATS | K_REMOTE, opt_duration, false },
    { "retry",          K_TARGETS,                  opt_retry,       false },
    { "dead_letter",    K_TARGETS,                  opt_dead_letter, false },
    { "rate_limit",     K_HTTP | K_EXEC,            opt_int,         false },
    { "concurrency",    K_HTTP | K_EXEC,            opt_int,         false },
    { "sign",           K_HTTP,                     opt_sign,        false },
    { "batch",          K_HTTP,                     opt_batch,       false },
    { "args",           K_EXEC,                     opt_args,        false },
    { "env",            K_EXEC,                     opt_env,         false },
    { "topic",          K_MQTT | K_SMQTT,           opt_text,        true  },
    { "qos",            K_MQTT | K_SMQTT,           opt_qos,         false },
    { "retain",         K_MQTT,                     opt_bool,        false },
    { "client_id",      K_MQTT | K_SMQTT,           opt_text,        false },
    { "user",           K_MQTT | K_SMQTT | K_NATS | K_SNATS, opt_text, false },
    { "password",       K_MQTT | K_SMQTT | K_NATS | K_SNATS, opt_text, false },
    { "creds",          K_NATS | K_SNATS,           opt_text,        false },
    { "subject",        K_NATS | K_SNATS,           opt_text,        false },
    { "jetstream",      K_NATS,                     opt_bool,        false },
    { "queue",          K_SNATS,                    opt_text,        false },
    { "stream",         K_SNATS,                    opt_text,        false },
    { "consumer",       K_SNATS,                    opt_text,        false },
    { "ack_wait",       K_SNATS,                    opt_duration,    false },
    { "ca",             K_REMOTE,                   opt_text,        false },
    { "verify",         K_WEBHOOK,                  opt_verify,      false },
    { "id_header",      K_WEBHOOK,                  opt_text,        false },
    { "type",           K_WEBHOOK | K_SCHEDULE,     opt_text,        false },
    { "timezone",       K_SCHEDULE,                 opt_text,        false },
    { "data",           K_SCHEDULE,                 opt_json,        false },
    { "catchup",        K_SCHEDULE,                 opt_catchup,     false },
    { "listen",         K_SERVER,                   opt_text,        false },
    { "data_dir",       K_SERVER,                   opt_text,        false },
    { "tls_cert",       K_SERVER,                   opt_text,        false },
    { "tls_key",        K_SERVER,                   opt_text,        false },
    { "match_steps",    K_SERVER,                   opt_int,         false },
    { "delivery_threads", K_SERVER,                 opt_threads,     false },
    { "delivery_queue",   K_SERVER,                 opt_queue,       false },
    { "schema",         K_BUS,                      cc_opt_schema,   true  },   /* schema_opt.c */
    { "trace",          K_BUS | K_SERVER,           opt_onoff,       false },
    { "trace_retention", K_BUS,                     opt_duration,    false },
    { "aws_access_key", K_BUS | K_SERVER,           opt_aws_key,     true  },
};

/* Options the language reserves but nothing carries out yet: refused with a clear message, so
 * that nobody believes a secret protects something that does not exist. */
static const struct not_yet {
    const char *name;
    unsigned kinds;
    const char *why;
} not_yet[] = {
    { "replay_token", K_BUS, "replay is not available yet, so a replay token would protect nothing" },
    { "admin_token",  K_BUS, "a bus has no admin endpoints yet; the server block's admin_token "
                             "guards the daemon's" },
};

static bool is_option_of(cc_unit *u, ast *v, unsigned kind)
{
    if (v->kind != A_VALUE || v->op != TK_IDENT)
        return false;
    for (size_t k = 0; k < sizeof opt_specs / sizeof opt_specs[0]; k++)
        if ((opt_specs[k].kinds & kind) && strlen(opt_specs[k].name) == v->tok.len &&
            !memcmp(opt_specs[k].name, u->text + v->tok.off, v->tok.len))
            return true;
    return false;
}

/* Several options may share a line, as in { topic "sensors/#" qos 1 }: the parser reads that
 * as one option with four values, cut here before each value that names an option of this
 * kind of declaration.  (Not inside `log`, whose own words - token, stream - are options too.) */
static void split_options(cc_comp *c, cc_unit *u, ast *opts, unsigned kind)
{
    for (ast *o = opts; o; o = o->next) {
        if (o->kind != A_OPTION || (o->flags & AF_BLOCK) ||
            (o->tok.len == 3 && !memcmp(u->text + o->tok.off, "log", 3)))
            continue;
        ast *prev = NULL;
        for (ast *v = o->a; v; prev = v, v = v->next) {
            if (!prev || !is_option_of(u, v, kind))
                continue;
            ast *rest = cc_alloc(c, sizeof *rest);
            *rest = *o;
            rest->tok = v->tok;
            rest->a = v->next;
            rest->off = v->off;
            rest->len = o->off + o->len - v->off;
            prev->next = NULL;
            o->a->tail = prev;
            o->b = NULL;
            o->len = prev->off + prev->len - o->off;
            o->next = rest;
            break;          /* rest is split in its turn */
        }
    }
}

/* Checks the options of a declaration of kind `kind` ("bus", "http target", ...). */
static void check_options(cc_comp *c, cc_unit *u, ast *opts, unsigned kind, const char *what)
{
    const size_t nspec = sizeof opt_specs / sizeof opt_specs[0];
    split_options(c, u, opts, kind);
    for (ast *o = opts; o; o = o->next) {
        const char *name = u->text + o->tok.off;
        const struct not_yet *ny = NULL;
        for (size_t i = 0; i < sizeof not_yet / sizeof not_yet[0]; i++)
            if (strlen(not_yet[i].name) == o->tok.len &&
                memcmp(not_yet[i].name, name, o->tok.len) == 0 && (not_yet[i].kinds & kind))
                ny = &not_yet[i];
        if (ny) {
            cc_error(u, o->tok.off, o->tok.len, "option '%s' for %s is not supported yet: %s",
                     ny->name, what, ny->why);
            continue;
        }
        size_t k = 0;
        while (k < nspec && !(strlen(opt_specs[k].name) == o->tok.len &&
                              memcmp(opt_specs[k].name, name, o->tok.len) == 0))
            k++;
        if (k == nspec || !(opt_specs[k].kinds & kind)) {
            const char *cands[32];
            size_t nc = 0;
            for (size_t i = 0; i < nspec; i++)
                if (opt_specs[i].kinds & kind)
                    cands[nc++] = opt_specs[i].name;
            char hint[96];
            cc_suggest(name, o->tok.len, cands, nc, hint, sizeof hint);
            cc_error(u, o->tok.off, o->tok.len, "%s option '%.*s' for %s%s",
                     k == nspec ? "unknown" : "no", (int)o->tok.len, name, what, hint);
            continue;
        }
        if (!opt_specs[k].repeatable)
            for (ast *p = opts; p != o; p = p->next)
                if (p->tok.len == o->tok.len && memcmp(u->text + p->tok.off, name, p->tok.len) == 0) {
                    cc_error(u, o->tok.off, o->tok.len, "option '%s' is given twice",
                             opt_specs[k].name);
                    break;
                }
        if ((o->flags & AF_BLOCK) && opt_specs[k].check != opt_env) {
            cc_error(u, o->tok.off, o->tok.len, "option '%s' takes no block { ... }",
                     opt_specs[k].name);
            continue;
        }
        char label[64];
        snprintf(label, sizeof label, "'%s'", opt_specs[k].name);
        opt_specs[k].check(c, u, o, label);
    }
}

/* ---- option trees in the image --------------------------------------------------------------- */

static void fill_cfg(cc_comp *c, cc_unit *u, uint32_t at, ast *v);

/* Appends the nodes of list (one per item) contiguously; returns the first index. */
static uint32_t emit_cfgs(cc_comp *c, cc_unit *u, ast *list, uint32_t *n)
{
    uint32_t first = c->cfgs.n;
    *n = count(list);
    vm_cfg blank = { 0 };
    for (uint32_t i = 0; i < *n; i++)
        vec_push(c->cfgs, blank);
    uint32_t i = 0;
    for (ast *v = list; v; v = v->next)
        fill_cfg(c, u, first + i++, v);
    return first;
}

/* Fills cfgs[at] from AST value v (children are appended after). */
static void fill_cfg(cc_comp *c, cc_unit *u, uint32_t at, ast *v)
{
    vm_cfg k = { 0 };
    k.span = cc_span(u, v->off, v->len);
    double d;
    size_t n;
    switch (v->kind) {
    case A_OPTION: {
        k.type = VM_CFG_OPTION;
        k.key = cc_str(c, u->text + v->tok.off, v->tok.len);
        ast *all = NULL;
        for (ast *x = v->a; x; x = x->next) {
            ast *copy = cc_alloc(c, sizeof *copy);
            *copy = *x;
            copy->next = copy->tail = NULL;
            all = ast_append(all, copy);
        }
        if (v->b) {
            ast *copy = cc_alloc(c, sizeof *copy);
            *copy = *v->b;
            copy->next = copy->tail = NULL;
            all = ast_append(all, copy);
        }
        k.child0 = emit_cfgs(c, u, all, &k.nchild);
        break;
    }
    case A_CALL:
        if (is_env_call(u, v)) {
            k.type = VM_CFG_ENV;       /* env() without one string was reported: "" */
            const char *s = v->a && v->a->kind == A_VALUE && v->a->op == TK_STRING
                                ? cc_string(u, &v->a->tok, &n) : NULL;
            k.str = cc_str(c, s ? s : "", s ? n : 0);
        } else {
            k.type = VM_CFG_CALL;
            k.str = cc_str(c, u->text + v->tok.off, v->tok.len);
            k.child0 = emit_cfgs(c, u, v->a, &k.nchild);
        }
        break;
    case A_NAMED: {
        uint32_t kid;
        k.type = VM_CFG_OPTION;
        k.key = cc_str(c, u->text + v->tok.off, v->tok.len);
        ast *copy = cc_alloc(c, sizeof *copy);
        *copy = *v->a;
        copy->next = copy->tail = NULL;
        kid = emit_cfgs(c, u, copy, &k.nchild);
        k.child0 = kid;
        break;
    }
    case A_JSON:                       /* (a schedule's data: its text) */
        k.type = VM_CFG_STR;
        k.str = cc_str(c, u->text + v->tok.off, v->tok.len);
        break;
    case A_LIST:
        k.type = VM_CFG_LIST;
        k.child0 = emit_cfgs(c, u, v->a, &k.nchild);
        break;
    default:
        switch (v->op) {
        case TK_STRING: {
            const char *s = cc_string(u, &v->tok, &n);
            k.type = VM_CFG_STR;
            k.str = cc_str(c, s ? s : "", s ? n : 0);
            break;
        }
        case TK_NUMBER:
            k.type = VM_CFG_NUM;
            vm_number_value(u->text + v->tok.off, v->tok.len, &k.num);
            break;
        case TK_QUANTITY:
            if (cc_duration(u, &v->tok, &d) == 1)
                k.type = VM_CFG_DURATION;
            else if (cc_size(u, &v->tok, &d) == 1)
                k.type = VM_CFG_SIZE;
            else
                d = 0;
            k.num = d;
            break;
        case TK_TRUE: case TK_FALSE:
            k.type = VM_CFG_BOOL;
            k.num = v->op == TK_TRUE;
            break;
        default:
            k.type = VM_CFG_IDENT;
            k.str = cc_str(c, u->text + v->tok.off, v->tok.len);
            break;
        }
    }
    c->cfgs.v[at] = k;
}

/* ---- declarations ---------------------------------------------------------------------------- */

/* The options of a bus that only its local log reads (fsync, segment_size) are refused, where
 * they are written, on a bus on NATS JetStream (log nats ...): they would do nothing there. */
static void check_log_kind(cc_unit *u, ast *opts)
{
    static const struct { const char *name, *why; } local_only[] = {
        { "fsync", "a bus on NATS JetStream is made durable by its stream (replicas)" },
        { "segment_size", "a bus on NATS JetStream keeps its events in its stream, not in "
                          "segment files" },
    };
    ast *log = opts;
    while (log && !(log->tok.len == 3 && memcmp(u->text + log->tok.off, "log", 3) == 0))
        log = log->next;
    if (!log || !log->a || !word_is(u, log->a, "nats"))
        return;
    for (ast *o = opts; o; o = o->next)
        for (size_t i = 0; i < sizeof local_only / sizeof local_only[0]; i++)
            if (strlen(local_only[i].name) == o->tok.len &&
                memcmp(u->text + o->tok.off, local_only[i].name, o->tok.len) == 0)
                cc_error(u, o->tok.off, o->tok.len, "option '%s' is the local log's: %s",
                         local_only[i].name, local_only[i].why);
}

static void check_bus(cc_comp *c, cc_unit *u, ast *d)
{
    if (d->tok.len > VM_MAX_NAME)
        cc_error(u, d->tok.off, d->tok.len, "a bus name may have at most %u bytes (its log is a "
                 "directory named after it); this one has %u", VM_MAX_NAME, d->tok.len);
    check_options(c, u, d->c, K_BUS, "a bus");
    check_log_kind(u, d->c);
    vm_bus b = { cc_str(c, u->text + d->tok.off, d->tok.len), 0, 0, cc_span(u, d->off, d->len) };
    b.opt0 = emit_cfgs(c, u, d->c, &b.nopt);
    vec_push(c->pbuses, b);
}

static void check_target(cc_comp *c, cc_unit *u, ast *d)
{
    static const char *const kinds[] = { "http", "file", "bus", "exec", "mqtt", "nats", "remote" };
    static const unsigned masks[] = { K_HTTP, K_FILE, K_TOBUS, K_EXEC, K_MQTT, K_NATS, K_REMOTE };
    enum { NKINDS = sizeof kinds / sizeof kinds[0] };
    const char *kind = u->text + d->a->tok.off;
    size_t klen = d->a->tok.len, k = 0;
    while (k < NKINDS && !(strlen(kinds[k]) == klen && memcmp(kinds[k], kind, klen) == 0))
        k++;
    vm_target t = { cc_str(c, u->text + d->tok.off, d->tok.len), cc_str(c, kind, klen), 0, 0, 0,
                    cc_span(u, d->off, d->len) };
    if (k == NKINDS) {
        char hint[96];
        cc_suggest(kind, klen, kinds, NKINDS, hint, sizeof hint);
        cc_error(u, d->a->tok.off, (uint32_t)klen, "unknown target kind '%.*s' (http, file, bus, "
                 "exec, mqtt, nats or remote)%s", (int)klen, kind, hint);
    } else {
        ast *v = d->b;
        split_options(c, u, d->c, masks[k]);
        switch (masks[k]) {
        case K_HTTP:
            if (check_value(u, v, V_TEXT, "an http target") && v->kind == A_VALUE) {
                size_t n;
                const char *url = cc_string(u, &v->tok, &n);
                if (url && strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
                    cc_error_at(u, v, "an http target's URL must start with http:// or https://");
            }
            break;
        case K_FILE:
            if (check_value(u, v, V_TEXT, "a file target"))
                check_file_path(u, v);
            break;
        case K_TOBUS:
            if (v->kind != A_VALUE || v->op != TK_IDENT) {
                cc_error_at(u, v, "a bus target takes the name of a bus");
            } else if (cc_names_find(&c->buses, u->text + v->tok.off, v->tok.len) < 0 &&
                       !cc_is_broken(c, "bus", u->text + v->tok.off, v->tok.len)) {
                char hint[96];
                suggest_name(c->buses.v, c->buses.n, u->text + v->tok.off, v->tok.len, hint,
                             sizeof hint);
                cc_error_at(u, v, "unknown bus '%.*s'%s", (int)v->tok.len, u->text + v->tok.off, hint);
            }
            break;
        case K_EXEC:
            if (v->kind == A_LIST) {
                if (!v->a)
                    cc_error_at(u, v, "an exec target needs a command");
                for (ast *x = v->a; x; x = x->next)
                    check_value(u, x, V_TEXT, "an exec target's command");
            } else {
                check_value(u, v, V_TEXT, "an exec target");
            }
            break;
        case K_MQTT:
            check_mqtt_url(u, v);
            need_option(u, d, "topic", "an mqtt target needs the topic it publishes to: "
                        "topic \"NAME\"");
            if (option_count(u, d->c, "topic") > 1)
                cc_error_at(u, d, "an mqtt target publishes to one topic");
            check_topics(u, d->c, false);
            break;
        case K_NATS:
            check_nats_urls(u, v);
            need_option(u, d, "subject", "a nats target needs the subject it publishes to: "
                        "subject \"NAME\"");
            break;
        case K_REMOTE:
            check_remote_url(u, v);
            break;
        }
        char what[32];
        snprintf(what, sizeof what, "a%s %s target", k == 0 || k == 3 ? "n" : "", kinds[k]);
        check_options(c, u, d->c, masks[k], what);
        for (ast *o = d->c; o; o = o->next)
            if (o->tok.len == 11 && memcmp(u->text + o->tok.off, "dead_letter", 11) == 0 &&
                o->a && o->a->op == TK_IDENT && o->a->tok.len == d->tok.len &&
                memcmp(u->text + o->a->tok.off, u->text + d->tok.off, d->tok.len) == 0)
                cc_error_at(u, o->a, "a target cannot be its own dead letter");
    }
    uint32_t one;
    ast copy = *d->b;
    copy.next = copy.tail = NULL;
    t.value = emit_cfgs(c, u, &copy, &one);
    t.opt0 = emit_cfgs(c, u, d->c, &t.nopt);
    vec_push(c->ptargets, t);
}

/* ---- sources -------------------------------------------------------------------------------- */

/* Where a webhook source may not listen: the daemon's own endpoints (one ending in '/': all
 * below it; else it and all below it). */
static const char *const reserved_paths[] = { "/v1/", "/ui", "/healthz", "/metrics" };

static bool check_webhook_path(cc_comp *c, cc_unit *u, ast *d, ast *v)
{
    size_t n;
    const char *p = v->kind == A_VALUE && v->op == TK_STRING ? cc_string(u, &v->tok, &n) : NULL;
    if (!p) {
        cc_error_at(u, v, "a webhook source takes the path it is posted to, as in \"/hooks/github\"");
        return false;
    }
    if (n < 2 || p[0] != '/') {
        cc_error_at(u, v, "a webhook's path starts with '/' and names something, as in \"/hooks/github\"");
        return false;
    }
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)p[i]) || strchr("/-_.~", p[i]))) {
            cc_error_at(u, v, "a webhook's path may hold letters, digits and / - _ . ~ only");
            return false;
        }
    for (size_t i = 0; i < sizeof reserved_paths / sizeof reserved_paths[0]; i++) {
        size_t rn = strlen(reserved_paths[i]);
        bool below = n >= rn && !memcmp(p, reserved_paths[i], rn);
        if (below && (reserved_paths[i][rn - 1] == '/' || n == rn || p[rn] == '/')) {
            cc_error_at(u, v, "the path %s is the daemon's own", reserved_paths[i]);
            return false;
        }
    }
    for (uint32_t i = 0; i < c->sources.n; i++) {
        ast *o = c->sources.v[i].node;
        cc_unit *ou = c->sources.v[i].unit;
        size_t on;
        const char *op = o != d && o->a->tok.len == 7 && !memcmp(ou->text + o->a->tok.off, "webhook", 7) &&
                         o->b->kind == A_VALUE && o->b->op == TK_STRING ? cc_string(ou, &o->b->tok, &on) : NULL;
        if (op && on == n && !memcmp(op, p, n) && (ou != u || o->off < d->off)) {
            cc_error_at(u, v, "source '%.*s' already takes webhooks at %.*s", (int)o->tok.len,
                        ou->text + o->tok.off, (int)n, p);
            return false;
        }
    }
    return true;
}

static bool check_schedule_text(cc_unit *u, ast *d, ast *v)
{
    size_t n;
    const char *e = v->kind == A_VALUE && v->op == TK_STRING ? cc_string(u, &v->tok, &n) : NULL;
    if (!e) {
        cc_error_at(u, v, "a schedule source takes \"rate(...)\" or \"cron(...)\"");
        return false;
    }
    char tz[128] = "";
    ast *zo = find_option(u, d->c, "timezone");
    if (zo && zo->a && zo->a->kind == A_VALUE && zo->a->op == TK_STRING) {
        size_t zn;
        const char *z = cc_string(u, &zo->a->tok, &zn);
        if (z)
            snprintf(tz, sizeof tz, "%.*s", (int)zn, z);
    }
    char err[256];
    size_t at = 0, len = 0;
    sched *s = sched_parse(e, tz, err, sizeof err, &at, &len);
    if (s) {
        sched_free(s);
        return true;
    }
    if (len == 0 && zo)                              /* the time zone's fault */
        cc_error_at(u, zo->a, "%s", err);
    else
        cc_error(u, cc_source_offset(u, &v->tok, at), (uint32_t)(len ? len : 1), "%s", err);
    return false;
}

static void check_source(cc_comp *c, cc_unit *u, ast *d)
{
    static const char *const kinds[] = { "mqtt", "nats", "webhook", "schedule" };
    static const unsigned masks[] = { K_SMQTT, K_SNATS, K_WEBHOOK, K_SCHEDULE };
    enum { NKINDS = sizeof kinds / sizeof kinds[0] };
    const char *kind = u->text + d->a->tok.off;
    size_t klen = d->a->tok.len, k = 0;
    while (k < NKINDS && !(strlen(kinds[k]) == klen && memcmp(kinds[k], kind, klen) == 0))
        k++;
    if (d->tok.len > VM_MAX_NAME)
        cc_error(u, d->tok.off, d->tok.len, "a source name may have at most %u bytes; this one "
                 "has %u", VM_MAX_NAME, d->tok.len);
    int bus = cc_names_find(&c->buses, u->text + d->aux.off, d->aux.len);
    if (bus < 0 && !cc_is_broken(c, "bus", u->text + d->aux.off, d->aux.len)) {
        char hint[96];
        suggest_name(c->buses.v, c->buses.n, u->text + d->aux.off, d->aux.len, hint, sizeof hint);
        cc_error(u, d->aux.off, d->aux.len, "unknown bus '%.*s'%s", (int)d->aux.len,
                 u->text + d->aux.off, hint);
    }
    if (k == NKINDS) {
        char hint[96];
        cc_suggest(kind, klen, kinds, NKINDS, hint, sizeof hint);
        cc_error(u, d->a->tok.off, (uint32_t)klen, "unknown source kind '%.*s' (mqtt, nats, "
                 "webhook or schedule)%s", (int)klen, kind, hint);
        return;
    }
    ast *v = d->b;
    split_options(c, u, d->c, masks[k]);
    switch (masks[k]) {
    case K_SMQTT:
        check_mqtt_url(u, v);
        need_option(u, d, "topic", "an mqtt source needs the topics it subscribes to: "
                    "topic \"sensors/#\"");
        check_topics(u, d->c, true);
        break;
    case K_SNATS:
        check_nats_urls(u, v);
        if (!find_option(u, d->c, "subject") && !find_option(u, d->c, "stream"))
            cc_error_at(u, d, "a nats source needs the subject it subscribes to (subject "
                        "\"orders.>\") or the JetStream stream it reads (stream \"ORDERS\")");
        if (find_option(u, d->c, "queue") && find_option(u, d->c, "stream"))
            cc_error_at(u, find_option(u, d->c, "queue"), "'queue' is for core NATS subjects; "
                        "on a stream, daemons share the durable consumer");
        break;
    case K_WEBHOOK:
        check_webhook_path(c, u, d, v);
        need_option(u, d, "verify", "a webhook source needs verify github(...), stripe(...), "
                    "hmac(...) or none: say how its senders are checked");
        break;
    case K_SCHEDULE:
        check_schedule_text(u, d, v);
        break;
    }
    char what[40];
    snprintf(what, sizeof what, "a%s %s source", k == 0 ? "n" : "", kinds[k]);
    check_options(c, u, d->c, masks[k], what);
    vm_input in = { cc_str(c, u->text + d->tok.off, d->tok.len), cc_str(c, kind, klen),
                    bus < 0 ? 0 : (uint32_t)bus, 0, 0, 0, cc_span(u, d->off, d->len) };
    uint32_t one;
    ast copy = *v;
    copy.next = copy.tail = NULL;
    in.value = emit_cfgs(c, u, &copy, &one);
    in.opt0 = emit_cfgs(c, u, d->c, &in.nopt);
    vec_push(c->pinputs, in);
}

static void check_server(cc_comp *c, cc_unit *u, ast *d)
{
    if (c->server) {
        cc_error(u, d->tok.off, d->tok.len, "only one server block is allowed (the first is in %s)",
                 c->server_unit->name);
        return;
    }
    c->server = d;
    c->server_unit = u;
    check_options(c, u, d->c, K_SERVER, "the server");
    c->server0 = emit_cfgs(c, u, d->c, &c->nserver);
}

/* Resolves a target name used by a rule; returns its index or VM_NONE after an error. */
static uint32_t resolve_target(cc_comp *c, cc_unit *u, ast *v)
{
    const char *name = u->text + v->tok.off;
    int i = cc_names_find(&c->targets, name, v->tok.len);
    if (i >= 0)
        return (uint32_t)i;
    if (!cc_is_broken(c, "target", name, v->tok.len)) {
        char hint[128];
        suggest_name(c->targets.v, c->targets.n, name, v->tok.len, hint, sizeof hint);
        cc_error_at(u, v, "unknown target '%.*s'%s", (int)v->tok.len, name, hint);
    }
    return VM_NONE;
}

static void check_rule(cc_comp *c, cc_unit *u, ast *d)
{
    vm_rule r = { cc_str(c, u->text + d->tok.off, d->tok.len), VM_NONE, 0, 0, 0, 0, VM_NONE,
                  VM_NONE, cc_span(u, d->off, d->len) };
    ast *bus = d->a;
    int b = cc_names_find(&c->buses, u->text + bus->tok.off, bus->tok.len);
    if (b < 0 && !cc_is_broken(c, "bus", u->text + bus->tok.off, bus->tok.len)) {
        char hint[128];
        suggest_name(c->buses.v, c->buses.n, u->text + bus->tok.off, bus->tok.len, hint, sizeof hint);
        cc_error_at(u, bus, "unknown bus '%.*s'%s", (int)bus->tok.len, u->text + bus->tok.off, hint);
    }
    r.bus = b < 0 ? VM_NONE : (uint32_t)b;

    ast *to = NULL, *dl = NULL, *tf = NULL;
    int nconds = 0;
    for (ast *k = d->c; k; k = k->next) {
        if (k->kind == A_MATCH || k->kind == A_PATTERN) {
            nconds++;   /* several conditions: the rule matches when any of them does */
            continue;
        }
        ast **slot = k->kind == A_TO ? &to : k->kind == A_DEAD_LETTER ? &dl : &tf;
        if (*slot) {
            const char *what = slot == &to ? "'to' is given twice (list every target in one 'to')"
                             : slot == &dl ? "'dead_letter' is given twice" : "'transform' is given twice";
            cc_error(u, k->tok.off, k->tok.len, "%s", what);
            continue;
        }
        *slot = k;
    }
    if (!nconds)
        cc_error(u, d->tok.off, d->tok.len, "rule '%.*s' has no condition: add 'match <expression>' or 'pattern {...}'",
                 (int)d->tok.len, u->text + d->tok.off);
    if (tf)
        r.xform = cc_compile_transform(c, u, tf);
    r.tgt0 = c->rule_targets.n;
    for (ast *t = to ? to->a : NULL; t; t = t->next) {
        uint32_t ti = resolve_target(c, u, t);
        for (uint32_t j = r.tgt0; j < c->rule_targets.n && ti != VM_NONE; j++)
            if (c->rule_targets.v[j] == ti)
                cc_error_at(u, t, "target '%.*s' is listed twice", (int)t->tok.len, u->text + t->tok.off);
        vec_push(c->rule_targets, ti);
    }
    r.ntgt = c->rule_targets.n - r.tgt0;
    for (ast *t = to ? to->a : NULL; t; t = t->next)
        if (d->tok.len + 1 + t->tok.len > VM_MAX_NAME)
            cc_error_at(u, t, "rule '%.*s' delivers to target '%.*s' under the name '%.*s.%.*s', "
                        "%u bytes: at most %u (the daemon names the pair's cursor so); shorten "
                        "the rule's or the target's name", (int)d->tok.len, u->text + d->tok.off,
                        (int)t->tok.len, u->text + t->tok.off, (int)d->tok.len,
                        u->text + d->tok.off, (int)t->tok.len, u->text + t->tok.off,
                        d->tok.len + 1 + t->tok.len, VM_MAX_NAME);
    if (dl)
        r.dead_letter = resolve_target(c, u, dl->a);

    int before = c->nerrors;
    ir *root = nconds > 1 ? ir_new(c, IR_OR, r.span) : NULL;
    for (ast *k = d->c; k; k = k->next) {
        if (k->kind != A_MATCH && k->kind != A_PATTERN)
            continue;
        ir *one = k->kind == A_MATCH ? cc_lower_expr(u, k->a) : cc_lower_pattern(u, k->a);
        if (one && root)
            ir_add(c, root, one);
        else if (one)
            root = one;
    }
    if (root && c->nerrors == before) {
        r.code0 = cc_codegen(c, root, r.span, &r.ncode);
        cc_index_rule(c, c->prules.n, r.bus, root);
    }
    cc_rule_reset(c);   /* the IR has served */
    vec_push(c->prules, r);
}

/* The target named by a target's `dead_letter NAME` option, or -1. */
static int dead_letter_of(cc_comp *c, uint32_t t, ast **where)
{
    cc_unit *u = c->targets.v[t].unit;
    for (ast *o = c->targets.v[t].node->c; o; o = o->next)
        if (o->tok.len == 11 && memcmp(u->text + o->tok.off, "dead_letter", 11) == 0 && o->a &&
            !o->a->next && o->a->kind == A_VALUE && o->a->op == TK_IDENT) {
            *where = o->a;
            return cc_names_find(&c->targets, u->text + o->a->tok.off, o->a->tok.len);
        }
    return -1;
}

/* Dead letters must not lead back to where they came from (a -> b -> a), or a failed delivery
 * would circle for ever.  Each cycle is reported once, at its first target's dead_letter. */
static void check_dead_letter_cycles(cc_comp *c)
{
    uint32_t n = c->targets.n;
    uint8_t *done = calloc(n ? n : 1, 1);
    if (!done)
        abort();
    for (uint32_t start = 0; start < n; start++) {
        ast *where = NULL;
        int t = (int)start;
        uint32_t steps = 0;
        if (dead_letter_of(c, start, &where) == (int)start)
            continue;   /* its own dead letter: check_target says so */
        while (t >= 0 && !done[t] && steps <= n) {
            ast *w;
            t = dead_letter_of(c, (uint32_t)t, &w);
            if (steps == 0)
                where = w;
            steps++;
            if (t == (int)start && steps > 1) {
                char chain[512] = "";
                size_t o = 0;
                int k = (int)start;
                do {
                    o += (size_t)snprintf(chain + o, o < sizeof chain ? sizeof chain - o : 0, "%s -> ",
                                          c->targets.v[k].name);
                    ast *ignored;
                    k = dead_letter_of(c, (uint32_t)k, &ignored);
                } while (k != (int)start && o < sizeof chain);
                snprintf(chain + (o < sizeof chain ? o : sizeof chain - 1),
                         o < sizeof chain ? sizeof chain - o : 1, "%s", c->targets.v[start].name);
                cc_error_at(c->targets.v[start].unit, where, "dead-letter cycle: %s", chain);
                for (k = (int)start; k >= 0 && !done[k]; k = dead_letter_of(c, (uint32_t)k, &where))
                    done[k] = 1;
                break;
            }
        }
    }
    free(done);
}

/* The bus a `target NAME bus BUS` sends to (its index in c->buses), or -1 for other targets. */
static int bus_target_of(cc_comp *c, uint32_t t)
{
    ast *d = c->targets.v[t].node;
    cc_unit *u = c->targets.v[t].unit;
    if (!d->a || d->a->tok.len != 3 || memcmp(u->text + d->a->tok.off, "bus", 3) != 0 || !d->b ||
        d->b->kind != A_VALUE || d->b->op != TK_IDENT)
        return -1;
    return cc_names_find(&c->buses, u->text + d->b->tok.off, d->b->tok.len);
}

/* Calls fn for each bus target that a rule sends to: the rule, the bus it is on, the target's
 * name where the rule lists it, and the bus the target appends to (indices in c->buses). */
static void each_bus_edge(cc_comp *c, void (*fn)(cc_comp *, void *, uint32_t rule, uint32_t from,
                                                  ast *where, uint32_t to), void *arg)
{
    for (uint32_t i = 0; i < c->rules.n; i++) {
        ast *d = c->rules.v[i].node;
        cc_unit *u = c->rules.v[i].unit;
        int from = cc_names_find(&c->buses, u->text + d->a->tok.off, d->a->tok.len);
        for (ast *k = d->c; from >= 0 && k; k = k->next)
            for (ast *t = k->kind == A_TO ? k->a : NULL; t; t = t->next) {
                int ti = cc_names_find(&c->targets, u->text + t->tok.off, t->tok.len);
                int to = ti >= 0 ? bus_target_of(c, (uint32_t)ti) : -1;
                if (to >= 0)
                    fn(c, arg, i, (uint32_t)from, t, (uint32_t)to);
            }
    }
}

static void mark_edge(cc_comp *c, void *arg, uint32_t rule, uint32_t from, ast *where, uint32_t to)
{
    (void)rule;
    (void)where;
    ((uint8_t *)arg)[(size_t)from * c->buses.n + to] = 1;
}

static void warn_edge(cc_comp *c, void *arg, uint32_t rule, uint32_t from, ast *where, uint32_t to)
{
    const uint8_t *reach = arg;
    ast *d = c->rules.v[rule].node;
    cc_unit *u = c->rules.v[rule].unit;
    if (to == from || reach[(size_t)to * c->buses.n + from])
        cc_warning(u, where->tok.off, where->tok.len, "events can loop: rule '%.*s' on bus '%s' "
                   "sends to bus '%s'%s; the daemon dead-letters an event after %u bus targets",
                   (int)d->tok.len, u->text + d->tok.off, c->buses.v[from].name,
                   c->buses.v[to].name, to == from ? ", its own bus" : ", which leads back to it",
                   VM_MAX_BUS_HOPS);
}

/* A rule on bus A that sends to a bus target of bus B, where B can lead back to A through other
 * such rules, lets an event go round for ever; the daemon stops it after VM_MAX_BUS_HOPS bus
 * targets (dead-lettering it), and this says so at compile time: a warning at each such target
 * of each rule on the cycle. */
static void check_bus_cycles(cc_comp *c)
{
    uint32_t nb = c->buses.n;
    if (!nb)
        return;
    /* reach[a * nb + b]: bus b can be reached from bus a through one or more bus targets */
    uint8_t *reach = calloc((size_t)nb * nb, 1);
    if (!reach)
        abort();
    each_bus_edge(c, mark_edge, reach);
    for (uint32_t k = 0; k < nb; k++)       /* the closure (Warshall): buses are few */
        for (uint32_t a = 0; a < nb; a++)
            if (reach[(size_t)a * nb + k])
                for (uint32_t b = 0; b < nb; b++)
                    reach[(size_t)a * nb + b] |= reach[(size_t)k * nb + b];
    each_bus_edge(c, warn_edge, reach);
    free(reach);
}

int cc_check_and_build(cc_comp *c)
{
    const struct { ast_kind kind; const char *what; cc_names *list; } kinds[] = {
        { A_BUS, "bus", &c->buses },
        { A_TARGET, "target", &c->targets },
        { A_RULE, "rule", &c->rules },
        { A_TEMPLATE, "template", &c->templates },
        { A_SOURCE, "source", &c->sources },
    };
    for (uint32_t i = 0; i < c->units.n; i++)
        for (ast *d = c->units.v[i]->decls; d; d = d->next)
            for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
                if (d->kind == kinds[k].kind)
                    declare(c, c->units.v[i], d, kinds[k].what, kinds[k].list);
    cc_check_templates(c);
    for (uint32_t i = 0; i < c->buses.n; i++)
        check_bus(c, c->buses.v[i].unit, c->buses.v[i].node);
    for (uint32_t i = 0; i < c->targets.n; i++)
        check_target(c, c->targets.v[i].unit, c->targets.v[i].node);
    for (uint32_t i = 0; i < c->sources.n; i++)
        check_source(c, c->sources.v[i].unit, c->sources.v[i].node);
    for (uint32_t i = 0; i < c->units.n; i++)
        for (ast *d = c->units.v[i]->decls; d; d = d->next)
            if (d->kind == A_SERVER)
                check_server(c, c->units.v[i], d);
    for (uint32_t i = 0; i < c->rules.n; i++)
        check_rule(c, c->rules.v[i].unit, c->rules.v[i].node);
    check_dead_letter_cycles(c);
    check_bus_cycles(c);
    if (c->nerrors == 0)
        cc_index_build(c);
    for (uint32_t i = 0; i < c->dups.n; i++) {
        ast *n = c->dups.v[i].node;
        cc_unit *u = c->dups.v[i].unit;
        if (n->kind == A_BUS)
            check_bus(c, u, n);
        else if (n->kind == A_TARGET)
            check_target(c, u, n);
        else if (n->kind == A_RULE)
            check_rule(c, u, n);
        /* (a template's duplicate: its name is the error) */
    }
    return c->nerrors;
}
