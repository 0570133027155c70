/*
 * validate.c — a JSON Schema draft 2020-12 validator over cJSON documents (docs/schemas.md).
 *
 * Compiling copies the schema and indexes it once: every schema resource ($id, resolved against
 * the enclosing one as RFC 3986 says), every $anchor and $dynamicAnchor, every pattern compiled
 * (PCRE2 in UTF mode, with ECMA-262's \uXXXX and \u{X...}; \d and \w stay ASCII as in ECMA-262).  Validating walks the schema
 * and the instance together and writes nothing shared: the dynamic scope, the instance path and
 * the "evaluated" marks that unevaluatedProperties / unevaluatedItems read live in the caller's
 * context, so one compiled schema serves any number of threads.
 *
 * Evaluated marks: for an object or array instance, one byte per member / element.  A schema
 * object fills its own marks (properties, patternProperties, additionalProperties, prefixItems,
 * items, contains, and what its in-place applicators — allOf, anyOf, oneOf, if/then/else,
 * dependentSchemas, $ref, $dynamicRef — marked when they passed), reads them for its
 * unevaluated* keywords, and on success hands them to the schema that applied it.
 */
#define _GNU_SOURCE                 /* memmem */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "schema.h"
#include "../../vm/vm.h"

#define MAX_DEPTH 256             /* schema applications nested (a $ref loop ends here) */
#define MAX_REFS 4096             /* $refs checked at compile time */
#define DEFAULT_BASE "ebr:/schema.json"

/* The keywords validation looks up, by index: each schema object's are found once, when it is
 * compiled (a table per object in the node map), not by name at every validation. */
#define KEYWORDS(X) \
    X(KW_ref, "$ref") \
    X(KW_dynamicRef, "$dynamicRef") \
    X(KW_type, "type") \
    X(KW_const, "const") \
    X(KW_enum, "enum") \
    X(KW_minimum, "minimum") \
    X(KW_maximum, "maximum") \
    X(KW_exclusiveMinimum, "exclusiveMinimum") \
    X(KW_exclusiveMaximum, "exclusiveMaximum") \
    X(KW_multipleOf, "multipleOf") \
    X(KW_minLength, "minLength") \
    X(KW_maxLength, "maxLength") \
    X(KW_pattern, "pattern") \
    X(KW_format, "format") \
    X(KW_minItems, "minItems") \
    X(KW_maxItems, "maxItems") \
    X(KW_uniqueItems, "uniqueItems") \
    X(KW_prefixItems, "prefixItems") \
    X(KW_items, "items") \
    X(KW_contains, "contains") \
    X(KW_minContains, "minContains") \
    X(KW_maxContains, "maxContains") \
    X(KW_minProperties, "minProperties") \
    X(KW_maxProperties, "maxProperties") \
    X(KW_required, "required") \
    X(KW_dependentRequired, "dependentRequired") \
    X(KW_properties, "properties") \
    X(KW_patternProperties, "patternProperties") \
    X(KW_additionalProperties, "additionalProperties") \
    X(KW_propertyNames, "propertyNames") \
    X(KW_dependentSchemas, "dependentSchemas") \
    X(KW_allOf, "allOf") \
    X(KW_anyOf, "anyOf") \
    X(KW_oneOf, "oneOf") \
    X(KW_not, "not") \
    X(KW_if, "if") \
    X(KW_then, "then") \
    X(KW_else, "else") \
    X(KW_unevaluatedItems, "unevaluatedItems") \
    X(KW_unevaluatedProperties, "unevaluatedProperties")

enum {
#define KW_ENUM(id, name) id,
    KEYWORDS(KW_ENUM)
#undef KW_ENUM
    KW_N
};

static const char *const kw_names[KW_N] = {
#define KW_NAME(id, name) name,
    KEYWORDS(KW_NAME)
#undef KW_NAME
};

/* Fills out[KW_N] with schema object n's keywords (the first of a name given twice, as
 * cJSON_GetObjectItemCaseSensitive finds it); returns out. */
static const cJSON **fill_kw(const cJSON *n, const cJSON **out)
{
    memset(out, 0, KW_N * sizeof *out);
    for (const cJSON *m = n->child; m; m = m->next)
        for (int i = 0; i < KW_N; i++)
            if (!out[i] && strcmp(m->string, kw_names[i]) == 0) {
                out[i] = m;
                break;
            }
    return out;
}

typedef struct {
    char *uri;                    /* absolute, no fragment */
    const cJSON *node;
} resource;

typedef struct {
    char *name;
    int res;                      /* the resource it is declared in */
    const cJSON *node;
    bool dynamic;                 /* $dynamicAnchor (also usable as a plain anchor) */
} anchor;

typedef struct {
    const cJSON *key;             /* a schema object with $id, or a pattern string */
    int res;                      /* $id: its resource */
    pcre2_code *re;               /* pattern; a patternProperties member's name */
    const cJSON *target;          /* $ref, $dynamicRef: where it points */
    int tres;                     /* ... and in which resource */
    const char *dyn;              /* $dynamicRef to a dynamic anchor: its name */
    const cJSON **kw;             /* a schema object: its keywords (KW_N, fill_kw) */
} pmap_ent;

struct sch_schema {
    cJSON *root;
    resource *res;
    size_t nres, capres;
    anchor *anc;
    size_t nanc, capanc;
    unsigned flags;               /* SCH_FORMATS ... */
    pmap_ent *map;                /* open addressing on the node's address */
    size_t mapcap, mapn;
};

/* ---- the node map --------------------------------------------------------------------------- */

/* The slot of key in s's map (an empty one when absent). */
static pmap_ent *map_slot(const sch_schema *s, const cJSON *key)
{
    size_t h = ((uintptr_t)key >> 4) * 0x9E3779B97F4A7C15ull;
    for (size_t i = h & (s->mapcap - 1);; i = (i + 1) & (s->mapcap - 1))
        if (s->map[i].key == key || !s->map[i].key)
            return &s->map[i];
}

/* The entry of key, added when absent; NULL when out of memory. */
static pmap_ent *map_put(sch_schema *s, const cJSON *key)
{
    if ((s->mapn + 1) * 2 > s->mapcap) {
        size_t cap = s->mapcap ? s->mapcap * 2 : 64;
        pmap_ent *old = s->map;
        size_t oldcap = s->mapcap;
        s->map = calloc(cap, sizeof *s->map);
        if (!s->map) {
            s->map = old;
            return NULL;
        }
        s->mapcap = cap;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i].key)
                *map_slot(s, old[i].key) = old[i];
        free(old);
    }
    pmap_ent *e = map_slot(s, key);
    if (!e->key) {
        e->key = key;
        e->res = -1;
        s->mapn++;
    }
    return e;
}

/* The entry of key, or NULL. */
static const pmap_ent *map_get(const sch_schema *s, const cJSON *key)
{
    if (!s->mapcap)
        return NULL;
    const pmap_ent *e = map_slot(s, key);
    return e->key ? e : NULL;
}

/* ---- URIs (RFC 3986, section 5) ------------------------------------------------------------- */

typedef struct {
    const char *scheme, *auth, *path, *query, *frag;
    size_t ls, la, lp, lq, lf;
    bool has_auth, has_query, has_frag;
} uri_parts;

/* Splits u into its five components. */
static void uri_split(const char *u, uri_parts *p)
{
    memset(p, 0, sizeof *p);
    const char *c = u;
    while (isalnum((unsigned char)*c) || *c == '+' || *c == '-' || *c == '.')
        c++;
    if (*c == ':' && c > u && isalpha((unsigned char)*u)) {
        p->scheme = u;
        p->ls = (size_t)(c - u);
        u = c + 1;
    }
    if (u[0] == '/' && u[1] == '/') {
        p->has_auth = true;
        p->auth = u + 2;
        p->la = strcspn(p->auth, "/?#");
        u = p->auth + p->la;
    }
    p->path = u;
    p->lp = strcspn(u, "?#");
    u += p->lp;
    if (*u == '?') {
        p->has_query = true;
        p->query = u + 1;
        p->lq = strcspn(p->query, "#");
        u = p->query + p->lq;
    }
    if (*u == '#') {
        p->has_frag = true;
        p->frag = u + 1;
        p->lf = strlen(p->frag);
    }
}

/* Removes "." and ".." segments from path in[0..n) into out (n + 1 bytes); returns its length. */
static size_t remove_dots(const char *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    while (i < n) {
        if (n - i >= 3 && memcmp(in + i, "../", 3) == 0) {
            i += 3;
        } else if (n - i >= 2 && memcmp(in + i, "./", 2) == 0) {
            i += 2;
        } else if (n - i >= 3 && memcmp(in + i, "/./", 3) == 0) {
            i += 2;
        } else if (n - i == 2 && memcmp(in + i, "/.", 2) == 0) {
            i += 1;
            out[o++] = '/';
            i += 1;
        } else if ((n - i >= 4 && memcmp(in + i, "/../", 4) == 0) ||
                   (n - i == 3 && memcmp(in + i, "/..", 3) == 0)) {
            bool end = n - i == 3;
            i += 3;
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--;
            if (end)
                out[o++] = '/';
        } else if ((n - i == 1 && in[i] == '.') || (n - i == 2 && memcmp(in + i, "..", 2) == 0)) {
            i = n;
        } else {
            size_t k = i + (in[i] == '/');
            while (k < n && in[k] != '/')
                k++;
            memcpy(out + o, in + i, k - i);
            o += k - i;
            i = k;
        }
    }
    out[o] = '\0';
    return o;
}

/* ref resolved against the absolute base: a new string (NULL when out of memory). */
static char *uri_resolve(const char *base, const char *ref)
{
    uri_parts b, r;
    uri_split(base, &b);
    uri_split(ref, &r);
    size_t cap = strlen(base) + strlen(ref) + 8;
    char *out = malloc(cap), *path = malloc(cap), *tmp = malloc(cap);
    if (!out || !path || !tmp) {
        free(out), free(path), free(tmp);
        return NULL;
    }
    const uri_parts *sa, *qa;     /* whose scheme/authority, whose query */
    size_t lp;
    if (r.scheme) {
        sa = &r, qa = &r;
        lp = remove_dots(r.path, r.lp, path);
    } else if (r.has_auth) {
        sa = &r, qa = &r;
        lp = remove_dots(r.path, r.lp, path);
    } else if (r.lp == 0) {
        sa = &b;
        qa = r.has_query ? &r : &b;
        memcpy(path, b.path, b.lp);
        lp = b.lp;
        path[lp] = '\0';
    } else {
        sa = &b, qa = &r;
        if (r.path[0] == '/') {
            lp = remove_dots(r.path, r.lp, path);
        } else {
            size_t k = 0;
            if (b.has_auth && b.lp == 0) {
                tmp[k++] = '/';
            } else {
                size_t cut = b.lp;
                while (cut > 0 && b.path[cut - 1] != '/')
                    cut--;
                memcpy(tmp, b.path, cut);
                k = cut;
            }
            memcpy(tmp + k, r.path, r.lp);
            k += r.lp;
            lp = remove_dots(tmp, k, path);
        }
    }
    size_t o = 0;
    const uri_parts *sc = r.scheme ? &r : &b;
    if (sc->scheme) {
        memcpy(out + o, sc->scheme, sc->ls);
        o += sc->ls;
        out[o++] = ':';
    }
    if (sa->has_auth) {
        out[o++] = '/', out[o++] = '/';
        memcpy(out + o, sa->auth, sa->la);
        o += sa->la;
    }
    memcpy(out + o, path, lp);
    o += lp;
    if (qa->has_query) {
        out[o++] = '?';
        memcpy(out + o, qa->query, qa->lq);
        o += qa->lq;
    }
    if (r.has_frag) {
        out[o++] = '#';
        memcpy(out + o, r.frag, r.lf);
        o += r.lf;
    }
    out[o] = '\0';
    free(path), free(tmp);
    return out;
}

/* ---- compiling -------------------------------------------------------------------------------- */

typedef struct {
    sch_schema *s;
    char *err;
    size_t cap;
    bool failed;
    char where[512];              /* the JSON Pointer of the schema being walked */
    struct {                      /* the $refs seen, resolved once all resources are known */
        const cJSON *node;
        int res;
        char where[256];
    } *refs;
    size_t nrefs;
} comp;

/* Records the first compile error, at c->where. */
static void comp_fail(comp *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void comp_fail(comp *c, const char *fmt, ...)
{
    if (c->failed)
        return;
    c->failed = true;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(c->err, c->cap, "%s%s%s", c->where[0] ? c->where : "", c->where[0] ? ": " : "", msg);
}

/* Appends a resource; its index or -1. */
static int add_resource(comp *c, char *uri, const cJSON *node)
{
    sch_schema *s = c->s;
    for (size_t i = 0; i < s->nres; i++)
        if (strcmp(s->res[i].uri, uri) == 0) {
            if (s->res[i].node != node)
                comp_fail(c, "$id \"%s\" names two schemas", uri);
            free(uri);
            return (int)i;
        }
    if (s->nres == s->capres) {
        size_t cap = s->capres ? s->capres * 2 : 8;
        resource *r = realloc(s->res, cap * sizeof *r);
        if (!r) {
            free(uri);
            comp_fail(c, "out of memory");
            return -1;
        }
        s->res = r, s->capres = cap;
    }
    s->res[s->nres] = (resource){ uri, node };
    return (int)s->nres++;
}

/* Appends an anchor of resource res. */
static void add_anchor(comp *c, const char *name, int res, const cJSON *node, bool dynamic)
{
    sch_schema *s = c->s;
    for (size_t i = 0; i < s->nanc; i++)
        if (s->anc[i].res == res && strcmp(s->anc[i].name, name) == 0) {
            if (s->anc[i].node != node)
                comp_fail(c, "anchor \"%s\" is declared twice", name);
            s->anc[i].dynamic |= dynamic;
            return;
        }
    if (s->nanc == s->capanc) {
        size_t cap = s->capanc ? s->capanc * 2 : 8;
        anchor *a = realloc(s->anc, cap * sizeof *a);
        if (!a) {
            comp_fail(c, "out of memory");
            return;
        }
        s->anc = a, s->capanc = cap;
    }
    char *n = strdup(name);
    if (!n) {
        comp_fail(c, "out of memory");
        return;
    }
    s->anc[s->nanc++] = (anchor){ n, res, node, dynamic };
}

/* Pattern pat with ECMA-262's long Unicode property names (\p{Letter}, \p{gc=Letter},
 * \p{Script=Greek}) rewritten to the short ones this PCRE2 knows: a new string. */
static char *short_props(const char *pat)
{
    static const char *const names[][2] = {
        { "Letter", "L" }, { "Cased_Letter", "L&" }, { "Uppercase_Letter", "Lu" },
        { "Lowercase_Letter", "Ll" }, { "Titlecase_Letter", "Lt" }, { "Modifier_Letter", "Lm" },
        { "Other_Letter", "Lo" }, { "Mark", "M" }, { "Nonspacing_Mark", "Mn" },
        { "Spacing_Mark", "Mc" }, { "Enclosing_Mark", "Me" }, { "Number", "N" },
        { "Decimal_Number", "Nd" }, { "digit", "Nd" }, { "Letter_Number", "Nl" },
        { "Other_Number", "No" }, { "Punctuation", "P" }, { "punct", "P" },
        { "Connector_Punctuation", "Pc" }, { "Dash_Punctuation", "Pd" },
        { "Open_Punctuation", "Ps" }, { "Close_Punctuation", "Pe" },
        { "Initial_Punctuation", "Pi" }, { "Final_Punctuation", "Pf" },
        { "Other_Punctuation", "Po" }, { "Symbol", "S" }, { "Math_Symbol", "Sm" },
        { "Currency_Symbol", "Sc" }, { "Modifier_Symbol", "Sk" }, { "Other_Symbol", "So" },
        { "Separator", "Z" }, { "Space_Separator", "Zs" }, { "Line_Separator", "Zl" },
        { "Paragraph_Separator", "Zp" }, { "Other", "C" }, { "Control", "Cc" }, { "cntrl", "Cc" },
        { "Format", "Cf" }, { "Surrogate", "Cs" }, { "Private_Use", "Co" }, { "Unassigned", "Cn" },
    };
    size_t n = strlen(pat);
    char *o = malloc(n + 1);
    if (!o)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        o[k++] = pat[i];
        if (pat[i] == '\\' && i + 2 < n && (pat[i + 1] == 'p' || pat[i + 1] == 'P') &&
            pat[i + 2] == '{') {
            const char *name = pat + i + 3, *end = strchr(name, '}');
            if (!end)
                continue;
            const char *eq = memchr(name, '=', (size_t)(end - name));
            if (eq)
                name = eq + 1;
            size_t len = (size_t)(end - name);
            const char *rep = NULL;
            for (size_t j = 0; j < sizeof names / sizeof names[0] && !rep; j++)
                if (strlen(names[j][0]) == len && strncmp(names[j][0], name, len) == 0)
                    rep = names[j][1];
            o[k++] = pat[i + 1];
            o[k++] = '{';
            if (rep) {
                memcpy(o + k, rep, strlen(rep));
                k += strlen(rep);
            } else {
                memcpy(o + k, name, len);
                k += len;
            }
            o[k++] = '}';
            i = (size_t)(end - pat);
        }
    }
    o[k] = '\0';
    return o;
}

/* Compiles pattern text pat (ECMA-262 flavour) into the map's entry for node key. */
static void add_pattern(comp *c, const cJSON *key, const char *pat)
{
    char *text = short_props(pat);
    if (!text) {
        comp_fail(c, "out of memory");
        return;
    }
    pmap_ent *e = map_put(c->s, key);
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (!e || !cc) {
        pcre2_compile_context_free(cc);
        free(text);
        comp_fail(c, "out of memory");
        return;
    }
    pcre2_set_compile_extra_options(cc, PCRE2_EXTRA_ALT_BSUX);
    int rc;
    PCRE2_SIZE at;
    e->re = pcre2_compile((PCRE2_SPTR)text, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_ALT_BSUX | PCRE2_DOLLAR_ENDONLY, &rc, &at, cc);
    pcre2_compile_context_free(cc);
    free(text);
    if (!e->re) {
        PCRE2_UCHAR why[128];
        pcre2_get_error_message(rc, why, sizeof why);
        comp_fail(c, "bad pattern \"%s\": %s at offset %zu", pat, (const char *)why, (size_t)at);
    }
}

/* The bounds of one match (a pattern that backtracks without end on a producer's string stops
 * there and does not match), shared read-only by every thread: made once. */
static pcre2_match_context *limits;
static pthread_once_t limits_once = PTHREAD_ONCE_INIT;

static void make_limits(void)
{
    limits = pcre2_match_context_create(NULL);
    if (limits) {
        pcre2_set_match_limit(limits, 1000000);
        pcre2_set_depth_limit(limits, 10000);
    }
}

static pcre2_match_context *match_limits(void)
{
    pthread_once(&limits_once, make_limits);
    return limits;
}

/* Does UTF-8 text s hold a match of re anywhere? */
static bool re_search(const pcre2_code *re, const char *s, size_t n)
{
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md)
        return false;
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, 0, 0, md, match_limits());
    pcre2_match_data_free(md);
    return rc >= 0;
}

static void walk(comp *c, const cJSON *n, int res);

/* Is v a non-negative integer? */
static bool is_count(const cJSON *v)
{
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble == floor(v->valuedouble);
}

/* Is v an array of strings? */
static bool is_names(const cJSON *v)
{
    if (!cJSON_IsArray(v))
        return false;
    for (const cJSON *x = v->child; x; x = x->next)
        if (!cJSON_IsString(x))
            return false;
    return true;
}

/* Checks the values of the validation keywords of schema object n (what the meta-schema says
 * of them), so that a schema with {"type": 3} or {"minimum": "5"} is refused, not ignored. */
static void check_values(comp *c, const cJSON *n)
{
    static const char *const types[] = { "null", "boolean", "object", "array", "number",
                                         "string", "integer", NULL };
    static const char *const nums[] = { "minimum", "maximum", "exclusiveMinimum",
                                        "exclusiveMaximum", NULL };
    static const char *const counts[] = { "minLength", "maxLength", "minItems", "maxItems",
        "minProperties", "maxProperties", "minContains", "maxContains", NULL };
    for (const cJSON *k = n->child; k && !c->failed; k = k->next) {
        const char *key = k->string;
        if (strcmp(key, "type") == 0) {
            const cJSON *one = k;
            bool ok = cJSON_IsString(k) || (cJSON_IsArray(k) && k->child);
            for (const cJSON *t = cJSON_IsArray(k) ? k->child : one; ok && t;
                 t = cJSON_IsArray(k) ? t->next : NULL) {
                bool known = false;
                for (int i = 0; types[i] && cJSON_IsString(t); i++)
                    known |= strcmp(t->valuestring, types[i]) == 0;
                ok = known;
            }
            if (!ok)
                comp_fail(c, "type must be one of null, boolean, object, array, number, string, "
                          "integer, or a list of them");
        }
        for (int i = 0; nums[i]; i++)
            if (strcmp(key, nums[i]) == 0 && !cJSON_IsNumber(k))
                comp_fail(c, "%s must be a number", key);
        for (int i = 0; counts[i]; i++)
            if (strcmp(key, counts[i]) == 0 && !is_count(k))
                comp_fail(c, "%s must be a non-negative integer", key);
        if (strcmp(key, "multipleOf") == 0 && !(cJSON_IsNumber(k) && k->valuedouble > 0))
            comp_fail(c, "multipleOf must be a number greater than 0");
        if (strcmp(key, "required") == 0 && !is_names(k))
            comp_fail(c, "required must be a list of property names");
        if (strcmp(key, "enum") == 0 && !cJSON_IsArray(k))
            comp_fail(c, "enum must be a list");
        if (strcmp(key, "uniqueItems") == 0 && !cJSON_IsBool(k))
            comp_fail(c, "uniqueItems must be true or false");
        if ((strcmp(key, "format") == 0 || strcmp(key, "$anchor") == 0 ||
             strcmp(key, "$dynamicAnchor") == 0) && !cJSON_IsString(k))
            comp_fail(c, "%s must be a string", key);
        if (strcmp(key, "dependentRequired") == 0) {
            bool ok = cJSON_IsObject(k);
            for (const cJSON *d = ok ? k->child : NULL; d; d = d->next)
                ok &= is_names(d);
            if (!ok)
                comp_fail(c, "dependentRequired must map names to lists of names");
        }
    }
}

/* Walks child schema n under keyword seg (and member name sub, or index idx >= 0). */
static void walk_child(comp *c, const cJSON *n, int res, const char *seg, const char *sub, int idx)
{
    size_t at = strlen(c->where);
    size_t cap = sizeof c->where;
    if (sub)
        snprintf(c->where + at, cap - at, "/%s/%s", seg, sub);
    else if (idx >= 0)
        snprintf(c->where + at, cap - at, "/%s/%d", seg, idx);
    else
        snprintf(c->where + at, cap - at, "/%s", seg);
    walk(c, n, res);
    c->where[at] = '\0';
}

/* Indexes schema n (of resource res) and everything under it. */
static void walk(comp *c, const cJSON *n, int res)
{
    if (c->failed)
        return;
    if (cJSON_IsBool(n))
        return;
    if (!cJSON_IsObject(n)) {
        comp_fail(c, "a schema must be an object or a boolean");
        return;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(n, "$id");
    if (id) {
        if (!cJSON_IsString(id)) {
            comp_fail(c, "$id must be a string");
            return;
        }
        char *u = uri_resolve(c->s->res[res].uri, id->valuestring);
        if (!u) {
            comp_fail(c, "out of memory");
            return;
        }
        char *h = strchr(u, '#');
        if (h)
            *h = '\0';                          /* an empty fragment only, in 2020-12 */
        int r = add_resource(c, u, n);
        if (r < 0)
            return;
        pmap_ent *e = map_put(c->s, n);
        if (!e) {
            comp_fail(c, "out of memory");
            return;
        }
        e->res = r;
        res = r;
    }
    check_values(c, n);
    pmap_ent *ke = map_put(c->s, n);
    if (!ke || (!ke->kw && !(ke->kw = malloc(KW_N * sizeof *ke->kw)))) {
        comp_fail(c, "out of memory");
        return;
    }
    fill_kw(n, ke->kw);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(n, "$anchor");
    if (cJSON_IsString(a))
        add_anchor(c, a->valuestring, res, n, false);
    a = cJSON_GetObjectItemCaseSensitive(n, "$dynamicAnchor");
    if (cJSON_IsString(a))
        add_anchor(c, a->valuestring, res, n, true);

    static const char *const one[] = { "additionalProperties", "propertyNames", "items",
        "contains", "not", "if", "then", "else", "unevaluatedItems", "unevaluatedProperties",
        "contentSchema", NULL };
    static const char *const map[] = { "properties", "patternProperties", "$defs",
        "definitions", "dependentSchemas", NULL };
    static const char *const list[] = { "allOf", "anyOf", "oneOf", "prefixItems", NULL };
    for (const cJSON *k = n->child; k && !c->failed; k = k->next) {
        const char *key = k->string;
        for (int i = 0; one[i]; i++)
            if (strcmp(key, one[i]) == 0)
                walk_child(c, k, res, key, NULL, -1);
        for (int i = 0; map[i]; i++)
            if (strcmp(key, map[i]) == 0) {
                if (!cJSON_IsObject(k)) {
                    comp_fail(c, "%s must be an object", key);
                    return;
                }
                for (const cJSON *m = k->child; m && !c->failed; m = m->next) {
                    if (strcmp(key, "patternProperties") == 0)
                        add_pattern(c, m, m->string);   /* the member's name is the pattern */
                    walk_child(c, m, res, key, m->string, -1);
                }
            }
        for (int i = 0; list[i]; i++)
            if (strcmp(key, list[i]) == 0) {
                if (!cJSON_IsArray(k) || !k->child) {
                    comp_fail(c, "%s must be a non-empty array", key);
                    return;
                }
                int j = 0;
                for (const cJSON *m = k->child; m; m = m->next)
                    walk_child(c, m, res, key, NULL, j++);
            }
        if (strcmp(key, "pattern") == 0) {
            if (!cJSON_IsString(k)) {
                comp_fail(c, "pattern must be a string");
                return;
            }
            add_pattern(c, k, k->valuestring);
        }
        if ((strcmp(key, "$ref") == 0 || strcmp(key, "$dynamicRef") == 0) && c->nrefs < MAX_REFS) {
            if (!cJSON_IsString(k)) {
                comp_fail(c, "%s must be a string", key);
                return;
            }
            c->refs[c->nrefs].node = k;
            c->refs[c->nrefs].res = res;
            snprintf(c->refs[c->nrefs].where, sizeof c->refs[0].where, "%.255s", c->where);
            c->nrefs++;
        }
    }
}

/* Decodes %XX escapes of s[0..n) into out (n + 1 bytes). */
static void pct_decode(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n + 0 && isxdigit((unsigned char)s[i + 1]) &&
            isxdigit((unsigned char)s[i + 2])) {
            char h[3] = { s[i + 1], s[i + 2], 0 };
            out[o++] = (char)strtol(h, NULL, 16);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
}

/* The anchor name of resource res, or NULL. */
static const anchor *find_anchor(const sch_schema *s, int res, const char *name, bool dynamic)
{
    for (size_t i = 0; i < s->nanc; i++)
        if (s->anc[i].res == res && strcmp(s->anc[i].name, name) == 0 &&
            (!dynamic || s->anc[i].dynamic))
            return &s->anc[i];
    return NULL;
}

/* Resolves reference ref against resource res: *node, *nres; *anc the anchor it names (NULL
 * for a pointer).  False when it resolves nowhere. */
static bool resolve(const sch_schema *s, int res, const char *ref, const cJSON **node, int *nres,
                    const anchor **anc)
{
    *anc = NULL;
    char *full = uri_resolve(s->res[res].uri, ref);
    if (!full)
        return false;
    char *h = strchr(full, '#');
    const char *frag = "";
    if (h) {
        *h = '\0';
        frag = h + 1;
    }
    int r = -1;
    for (size_t i = 0; i < s->nres; i++)
        if (strcmp(s->res[i].uri, full) == 0)
            r = (int)i;
    bool ok = false;
    if (r < 0)
        goto out;
    if (frag[0] && frag[0] != '/') {
        const anchor *a = find_anchor(s, r, frag, false);
        if (a) {
            *node = a->node, *nres = r, *anc = a;
            ok = true;
        }
        goto out;
    }
    size_t fl = strlen(frag);
    char *dec = malloc(fl + 1);
    if (!dec)
        goto out;
    pct_decode(frag, fl, dec);
    const cJSON *n = s->res[r].node;
    const char *p = dec;
    while (n && *p == '/') {
        p++;
        size_t k = strcspn(p, "/");
        char *tok = malloc(k + 1);
        if (!tok) {
            n = NULL;
            break;
        }
        size_t t = 0;
        for (size_t i = 0; i < k; i++) {
            if (p[i] == '~' && i + 1 < k && (p[i + 1] == '0' || p[i + 1] == '1')) {
                tok[t++] = p[i + 1] == '0' ? '~' : '/';
                i++;
            } else {
                tok[t++] = p[i];
            }
        }
        tok[t] = '\0';
        if (cJSON_IsObject(n)) {
            n = cJSON_GetObjectItemCaseSensitive(n, tok);
        } else if (cJSON_IsArray(n)) {
            char *end;
            long idx = strtol(tok, &end, 10);
            n = *tok && !*end && idx >= 0 ? cJSON_GetArrayItem(n, (int)idx) : NULL;
        } else {
            n = NULL;
        }
        free(tok);
        p += k;
        const pmap_ent *e = n ? map_get(s, n) : NULL;
        if (e && e->res >= 0)
            r = e->res;
    }
    free(dec);
    if (n) {
        *node = n, *nres = r;
        ok = true;
    }
out:
    free(full);
    return ok;
}

/* Resolves the $refs and $dynamicRefs collected by the walk into the map. */
static void link_refs(comp *c)
{
    for (size_t i = 0; i < c->nrefs && !c->failed; i++) {
        const cJSON *k = c->refs[i].node;
        const cJSON *t;
        int tres;
        const anchor *a;
        snprintf(c->where, sizeof c->where, "%s", c->refs[i].where);
        if (!resolve(c->s, c->refs[i].res, k->valuestring, &t, &tres, &a)) {
            comp_fail(c, "%s \"%s\" resolves to no schema here (remote references are not "
                      "fetched)", k->string, k->valuestring);
            return;
        }
        if (!cJSON_IsObject(t) && !cJSON_IsBool(t)) {
            comp_fail(c, "%s \"%s\" points at something that is not a schema", k->string,
                      k->valuestring);
            return;
        }
        pmap_ent *e = map_put(c->s, k);
        if (!e) {
            comp_fail(c, "out of memory");
            return;
        }
        e->target = t;
        e->tres = tres;
        if (strcmp(k->string, "$dynamicRef") == 0 && a && a->dynamic)
            e->dyn = a->name;
    }
}

/* cJSON_Duplicate copies a string up to its first NUL: the strings of copy that sch_parse kept
 * whole in from (valueint: their length) get all their bytes again. */
static bool whole_strings(cJSON *copy, const cJSON *from)
{
    if (cJSON_IsString(from) && from->valueint > 0) {
        char *v = malloc((size_t)from->valueint + 1);
        if (!v)
            return false;
        memcpy(v, from->valuestring, (size_t)from->valueint + 1);
        cJSON_free(copy->valuestring);
        copy->valuestring = v;
        return true;
    }
    const cJSON *f = from->child;
    for (cJSON *c = copy->child; c && f; c = c->next, f = f->next)
        if (!whole_strings(c, f))
            return false;
    return true;
}

sch_schema *sch_compile(const cJSON *schema, unsigned flags, char *err, size_t cap)
{
    sch_schema *s = calloc(1, sizeof *s);
    if (s)
        s->flags = flags;
    comp c = { .s = s, .err = err, .cap = cap };
    if (cap)
        err[0] = '\0';
    if (!s || !(s->root = cJSON_Duplicate(schema, true)) || !whole_strings(s->root, schema) ||
        !(c.refs = malloc(MAX_REFS * sizeof *c.refs))) {
        snprintf(err, cap, "out of memory");
        sch_free(s);
        return NULL;
    }
    char *base = strdup(DEFAULT_BASE);
    if (base && add_resource(&c, base, s->root) == 0) {
        walk(&c, s->root, 0);
        link_refs(&c);
    } else {
        comp_fail(&c, "out of memory");
    }
    free(c.refs);
    if (c.failed) {
        sch_free(s);
        return NULL;
    }
    return s;
}

/* ---- strings that hold U+0000 ------------------------------------------------------------ */

/* Where the string token that begins at s[*at] (or after it) ends; its body is s[*b0..*b1). */
static bool next_token(const char *s, size_t n, size_t *at, size_t *b0, size_t *b1)
{
    const char *q = memchr(s + *at, '"', n - *at);
    if (!q)
        return false;
    size_t i = (size_t)(q - s) + 1;
    *b0 = i;
    while (i < n && s[i] != '"')
        i += s[i] == '\\' ? 2 : 1;
    if (i >= n)
        return false;
    *b1 = i;
    *at = i + 1;
    return true;
}

/* Walks v in document order beside the string tokens of s (keys and string values come in the
 * same order in both), giving each string value whose body holds a \u0000 all its bytes. */
static bool keep_nuls(cJSON *v, const char *s, size_t n, size_t *at)
{
    size_t b0, b1;
    if (cJSON_IsString(v)) {
        if (!next_token(s, n, at, &b0, &b1))
            return false;
        if (!memmem(s + b0, b1 - b0, "\\u0000", 6))
            return true;
        char *full = malloc(b1 - b0 + 1);
        if (!full)
            return false;
        size_t len = vm_json_unescape(s + b0, b1 - b0, full);   /* (cJSON read it: valid) */
        full[len] = 0;
        if (len > INT_MAX || memchr(full, 0, len) == NULL) {   /* ("\\u0000": no NUL) */
            free(full);
            return true;
        }
        cJSON_free(v->valuestring);
        v->valuestring = full;
        v->valueint = (int)len;
        return true;
    }
    for (cJSON *c = cJSON_IsArray(v) || cJSON_IsObject(v) ? v->child : NULL; c; c = c->next) {
        if (cJSON_IsObject(v) && !next_token(s, n, at, &b0, &b1))    /* its key */
            return false;
        if (!keep_nuls(c, s, n, at))
            return false;
    }
    return true;
}

cJSON *sch_parse(const char *s, size_t n, const char **end)
{
    const char *stop = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(s, n, &stop, false);
    if (end)
        *end = stop;
    size_t at = 0;
    if (j && memmem(s, n, "\\u0000", 6) && !keep_nuls(j, s, (size_t)(stop - s), &at)) {
        cJSON_Delete(j);                    /* (out of memory) */
        return NULL;
    }
    return j;
}

size_t sch_strlen(const cJSON *v)
{
    return v->valueint > 0 ? (size_t)v->valueint : strlen(v->valuestring);
}

sch_schema *sch_compile_text(const char *text, size_t n, unsigned flags, char *err, size_t cap)
{
    const char *end = NULL;
    cJSON *j = sch_parse(text, n, &end);
    if (!j) {
        size_t at = end ? (size_t)(end - text) : 0;
        snprintf(err, cap, "not JSON (at byte %zu)", at);
        return NULL;
    }
    sch_schema *s = sch_compile(j, flags, err, cap);
    cJSON_Delete(j);
    return s;
}

void sch_free(sch_schema *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->mapcap; i++)
        pcre2_code_free(s->map[i].re), free(s->map[i].kw);
    free(s->map);
    for (size_t i = 0; i < s->nres; i++)
        free(s->res[i].uri);
    free(s->res);
    for (size_t i = 0; i < s->nanc; i++)
        free(s->anc[i].name);
    free(s->anc);
    cJSON_Delete(s->root);
    free(s);
}

/* ---- validating ------------------------------------------------------------------------------- */

typedef struct {
    const sch_schema *s;
    sch_error *e;
    char path[512];               /* the instance path being validated */
    size_t plen;
    bool cut;                     /* the path outgrew the buffer */
    int scope[MAX_DEPTH];         /* the dynamic scope: resources entered, outermost first */
    int nscope;
    int depth;
} vx;

/* Records why the instance is not valid (the latest failure wins; applicators that fail on
 * their own account overwrite their subschemas'). */
static bool fail(vx *x, const char *kw, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool fail(vx *x, const char *kw, const char *fmt, ...)
{
    if (!x->e)
        return false;
    snprintf(x->e->path, sizeof x->e->path, "%.*s", (int)x->plen, x->path);
    snprintf(x->e->keyword, sizeof x->e->keyword, "%s", kw);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->e->message, sizeof x->e->message, fmt, ap);
    va_end(ap);
    return false;
}

/* Pushes a member name (escaped as a JSON Pointer token) onto the instance path; returns the
 * length to pop back to. */
static size_t push_key(vx *x, const char *k)
{
    size_t at = x->plen;
    if (x->plen + 1 >= sizeof x->path)
        return at;
    x->path[x->plen++] = '/';
    for (; *k && x->plen + 3 < sizeof x->path; k++) {
        if (*k == '~' || *k == '/') {
            x->path[x->plen++] = '~';
            x->path[x->plen++] = *k == '~' ? '0' : '1';
        } else {
            x->path[x->plen++] = *k;
        }
    }
    return at;
}

/* Pushes an array index onto the instance path. */
static size_t push_index(vx *x, size_t i)
{
    size_t at = x->plen;
    int k = snprintf(x->path + x->plen, sizeof x->path - x->plen, "/%zu", i);
    if (k > 0 && (size_t)k < sizeof x->path - x->plen)
        x->plen += (size_t)k;
    return at;
}

/* A number as JSON text, shortest that reads back the same. */
static const char *num_text(double d, char *buf, size_t cap)
{
    if (d == floor(d) && fabs(d) < 1e15) {
        snprintf(buf, cap, "%.0f", d);
        return buf;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    return buf;
}

/* Deep equality of JSON values, numbers by value (1.0 equals 1), members in any order. */
static bool json_equal(const cJSON *a, const cJSON *b)
{
    if (cJSON_IsNumber(a) && cJSON_IsNumber(b))
        return a->valuedouble == b->valuedouble;
    if ((a->type & 0xFF) != (b->type & 0xFF))
        return false;
    if (cJSON_IsString(a))
        return sch_strlen(a) == sch_strlen(b) && !memcmp(a->valuestring, b->valuestring, sch_strlen(a));
    if (cJSON_IsArray(a)) {
        const cJSON *x = a->child, *y = b->child;
        for (; x && y; x = x->next, y = y->next)
            if (!json_equal(x, y))
                return false;
        return !x && !y;
    }
    if (cJSON_IsObject(a)) {
        int na = cJSON_GetArraySize(a), nb = cJSON_GetArraySize(b);
        if (na != nb)
            return false;
        for (const cJSON *m = a->child; m; m = m->next) {
            const cJSON *o = cJSON_GetObjectItemCaseSensitive(b, m->string);
            if (!o || !json_equal(m, o))
                return false;
        }
        return true;
    }
    return true;                  /* null, true, false: the type said it */
}

/* The JSON type name of v for `type` ("integer" for a number with no fraction). */
static bool has_type(const cJSON *v, const char *t)
{
    if (strcmp(t, "null") == 0) return cJSON_IsNull(v);
    if (strcmp(t, "boolean") == 0) return cJSON_IsBool(v);
    if (strcmp(t, "object") == 0) return cJSON_IsObject(v);
    if (strcmp(t, "array") == 0) return cJSON_IsArray(v);
    if (strcmp(t, "string") == 0) return cJSON_IsString(v);
    if (strcmp(t, "number") == 0) return cJSON_IsNumber(v);
    if (strcmp(t, "integer") == 0)
        return cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble);
    return false;
}

/* The name of v's type, for messages. */
static const char *type_name(const cJSON *v)
{
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "boolean";
    if (cJSON_IsObject(v)) return "object";
    if (cJSON_IsArray(v)) return "array";
    if (cJSON_IsString(v)) return "string";
    return has_type(v, "integer") ? "integer" : "number";
}

/* Code points in UTF-8 text s. */
static size_t utf8_len(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* Is x a multiple of m (m > 0)?  With a tolerance a few ulps of the quotient wide, so that
 * 0.0075 is a multiple of 0.0001 although neither is exact in binary. */
static bool multiple_of(double x, double m)
{
    double q = x / m;
    if (!isfinite(q))
        return false;
    double r = fabs(q - nearbyint(q));
    double tol = fabs(q) * 4 * DBL_EPSILON;
    return r <= (tol > 1e-9 ? tol : 1e-9);
}

/* A keyword's number (v may be NULL), or NAN. */
static double knum(const cJSON *v, bool *has)
{
    *has = cJSON_IsNumber(v);
    return *has ? v->valuedouble : NAN;
}

/* A hash of v that equal values (json_equal) share: numbers by value, members in any order. */
static uint64_t json_hash(const cJSON *v)
{
    uint64_t h;
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble == 0 ? 0 : v->valuedouble;     /* -0 is 0 */
        memcpy(&h, &d, sizeof h);
        return h * 0x9E3779B97F4A7C15ull + 1;
    }
    if (cJSON_IsString(v)) {
        h = 1469598103934665603ull;
        const unsigned char *p = (const unsigned char *)v->valuestring;
        for (size_t i = 0, n = sch_strlen(v); i < n; i++)
            h = (h ^ p[i]) * 1099511628211ull;
        return h + 2;
    }
    if (cJSON_IsArray(v)) {
        h = 3;
        for (const cJSON *c = v->child; c; c = c->next)
            h = h * 31 + json_hash(c);
        return h;
    }
    if (cJSON_IsObject(v)) {
        h = 4;
        for (const cJSON *c = v->child; c; c = c->next) {
            uint64_t k = 1469598103934665603ull;
            for (const unsigned char *p = (const unsigned char *)c->string; *p; p++)
                k = (k ^ *p) * 1099511628211ull;
            h += (k ^ (json_hash(c) * 0xBF58476D1CE4E5B9ull)) * 0x94D049BB133111EBull;
        }
        return h;
    }
    return (uint64_t)(v->type & 0xFF) + 5;
}

typedef struct {
    uint64_t h;
    size_t i;
    const cJSON *v;
} hashed;

/* qsort: by hash, then by index. */
static int cmp_hashed(const void *a, const void *b)
{
    const hashed *x = a, *y = b;
    return x->h != y->h ? (x->h < y->h ? -1 : 1) : x->i < y->i ? -1 : x->i > y->i;
}

/* Two equal items of array a (n of them): their indices, the lowest pair by the second; found
 * in O(n log n) by sorting on a hash, so that a long array does not cost n^2 comparisons. */
static bool find_duplicate(const cJSON *a, size_t n, size_t *i, size_t *j)
{
    if (n < 2)
        return false;
    hashed *v = malloc(n * sizeof *v);
    if (!v) {                     /* the slow way */
        size_t p = 0;
        for (const cJSON *x = a->child; x; x = x->next, p++) {
            size_t q = p + 1;
            for (const cJSON *y = x->next; y; y = y->next, q++)
                if (json_equal(x, y)) {
                    *i = p, *j = q;
                    return true;
                }
        }
        return false;
    }
    size_t k = 0;
    for (const cJSON *x = a->child; x && k < n; x = x->next, k++)
        v[k] = (hashed){ json_hash(x), k, x };
    qsort(v, k, sizeof *v, cmp_hashed);
    bool found = false;
    for (size_t p = 0; p < k; p++)
        for (size_t q = p + 1; q < k && v[q].h == v[p].h; q++)
            if (json_equal(v[p].v, v[q].v) && (!found || v[q].i < *j || (v[q].i == *j && v[p].i < *i))) {
                *i = v[p].i, *j = v[q].i;
                found = true;
            }
    free(v);
    return found;
}

static bool v_schema(vx *x, const cJSON *sch, int res, const cJSON *inst, unsigned char *ev);

/* Applies sub in place (same instance): marks merge into ev when it passes. */
static bool v_inplace(vx *x, const cJSON *sub, int res, const cJSON *inst, unsigned char *ev,
                      size_t n)
{
    if (!ev)
        return v_schema(x, sub, res, inst, NULL);
    unsigned char *mine = calloc(n + 1, 1);
    if (!mine)
        return fail(x, "$schema", "out of memory");
    bool ok = v_schema(x, sub, res, inst, mine);
    if (ok)
        for (size_t i = 0; i < n; i++)
            ev[i] |= mine[i];
    free(mine);
    return ok;
}

/* The number keywords of sch for number inst. */
static bool v_number(vx *x, const cJSON *const *K, const cJSON *inst)
{
    double v = inst->valuedouble, b;
    bool has;
    char t1[40], t2[40];
    b = knum(K[KW_minimum], &has);
    if (has && !(v >= b))
        return fail(x, "minimum", "%s is less than the minimum %s", num_text(v, t1, sizeof t1),
                    num_text(b, t2, sizeof t2));
    b = knum(K[KW_maximum], &has);
    if (has && !(v <= b))
        return fail(x, "maximum", "%s is greater than the maximum %s",
                    num_text(v, t1, sizeof t1), num_text(b, t2, sizeof t2));
    b = knum(K[KW_exclusiveMinimum], &has);
    if (has && !(v > b))
        return fail(x, "exclusiveMinimum", "%s is not greater than %s",
                    num_text(v, t1, sizeof t1), num_text(b, t2, sizeof t2));
    b = knum(K[KW_exclusiveMaximum], &has);
    if (has && !(v < b))
        return fail(x, "exclusiveMaximum", "%s is not less than %s",
                    num_text(v, t1, sizeof t1), num_text(b, t2, sizeof t2));
    b = knum(K[KW_multipleOf], &has);
    if (has && b > 0 && !multiple_of(v, b))
        return fail(x, "multipleOf", "%s is not a multiple of %s", num_text(v, t1, sizeof t1),
                    num_text(b, t2, sizeof t2));
    return true;
}

/* The string keywords of sch (format only with SCH_FORMATS) for string inst. */
static bool v_string(vx *x, const cJSON *const *K, const cJSON *inst)
{
    const char *s = inst->valuestring;
    size_t n = sch_strlen(inst);
    bool has;
    double b = knum(K[KW_minLength], &has);
    size_t len = utf8_len(s, n);
    if (has && (double)len < b)
        return fail(x, "minLength", "%zu characters, fewer than %.0f", len, b);
    b = knum(K[KW_maxLength], &has);
    if (has && (double)len > b)
        return fail(x, "maxLength", "%zu characters, more than %.0f", len, b);
    const cJSON *p = K[KW_pattern];
    if (p) {
        const pmap_ent *e = map_get(x->s, p);
        if (e && e->re && !re_search(e->re, s, n))
            return fail(x, "pattern", "\"%.80s\" does not match the pattern \"%.80s\"", s,
                        p->valuestring);
    }
    const cJSON *f = K[KW_format];
    if (cJSON_IsString(f) && (x->s->flags & SCH_FORMATS) && !sch_format_ok(f->valuestring, s, n, NULL))
        return fail(x, "format", "\"%.80s\" is not a valid %s", s, f->valuestring);
    return true;
}

/* The array keywords of sch for array inst; marks the items they evaluated in ev. */
static bool v_array(vx *x, const cJSON *const *K, int res, const cJSON *inst, unsigned char *ev)
{
    size_t n = (size_t)cJSON_GetArraySize(inst), i;
    bool has;
    double b = knum(K[KW_minItems], &has);
    if (has && (double)n < b)
        return fail(x, "minItems", "%zu items, fewer than %.0f", n, b);
    b = knum(K[KW_maxItems], &has);
    if (has && (double)n > b)
        return fail(x, "maxItems", "%zu items, more than %.0f", n, b);
    const cJSON *u = K[KW_uniqueItems];
    size_t di, dj;
    if (cJSON_IsTrue(u) && find_duplicate(inst, n, &di, &dj))
        return fail(x, "uniqueItems", "items %zu and %zu are equal", di, dj);
    const cJSON *pre = K[KW_prefixItems];
    const cJSON *it = inst->child;
    i = 0;
    if (cJSON_IsArray(pre))
        for (const cJSON *p = pre->child; p && it; p = p->next, it = it->next, i++) {
            size_t at = push_index(x, i);
            bool ok = v_schema(x, p, res, it, NULL);
            x->plen = at;
            if (!ok)
                return false;
            if (ev)
                ev[i] = 1;
        }
    const cJSON *items = K[KW_items];
    if (items)
        for (; it; it = it->next, i++) {
            size_t at = push_index(x, i);
            bool ok = v_schema(x, items, res, it, NULL);
            x->plen = at;
            if (!ok)
                return false;
            if (ev)
                ev[i] = 1;
        }
    const cJSON *con = K[KW_contains];
    if (con) {
        double mn = knum(K[KW_minContains], &has);
        if (!has)
            mn = 1;
        double mx = knum(K[KW_maxContains], &has);
        if (!has)
            mx = INFINITY;
        size_t hits = 0;
        i = 0;
        for (const cJSON *a = inst->child; a; a = a->next, i++) {
            size_t at = push_index(x, i);
            bool ok = v_schema(x, con, res, a, NULL);
            x->plen = at;
            if (ok) {
                hits++;
                if (ev)
                    ev[i] = 1;
            }
        }
        if ((double)hits < mn)
            return fail(x, mn == 1 && !K[KW_minContains]
                        ? "contains" : "minContains",
                        "%zu items match \"contains\", fewer than %.0f", hits, mn);
        if ((double)hits > mx)
            return fail(x, "maxContains", "%zu items match \"contains\", more than %.0f", hits, mx);
    }
    return true;
}

/* The object keywords of sch for object inst; marks the members they evaluated in ev. */
static bool v_object(vx *x, const cJSON *const *K, int res, const cJSON *inst, unsigned char *ev)
{
    size_t n = (size_t)cJSON_GetArraySize(inst), i;
    bool has;
    double b = knum(K[KW_minProperties], &has);
    if (has && (double)n < b)
        return fail(x, "minProperties", "%zu properties, fewer than %.0f", n, b);
    b = knum(K[KW_maxProperties], &has);
    if (has && (double)n > b)
        return fail(x, "maxProperties", "%zu properties, more than %.0f", n, b);
    const cJSON *req = K[KW_required];
    if (cJSON_IsArray(req))
        for (const cJSON *r = req->child; r; r = r->next)
            if (cJSON_IsString(r) && !cJSON_GetObjectItemCaseSensitive(inst, r->valuestring))
                return fail(x, "required", "\"%s\" is required", r->valuestring);
    const cJSON *dr = K[KW_dependentRequired];
    if (cJSON_IsObject(dr))
        for (const cJSON *d = dr->child; d; d = d->next) {
            if (!cJSON_GetObjectItemCaseSensitive(inst, d->string) || !cJSON_IsArray(d))
                continue;
            for (const cJSON *r = d->child; r; r = r->next)
                if (cJSON_IsString(r) && !cJSON_GetObjectItemCaseSensitive(inst, r->valuestring))
                    return fail(x, "dependentRequired", "\"%s\" is required when \"%s\" is present",
                                r->valuestring, d->string);
        }
    const cJSON *props = K[KW_properties];
    const cJSON *pp = K[KW_patternProperties];
    const cJSON *ap = K[KW_additionalProperties];
    const cJSON *pn = K[KW_propertyNames];
    i = 0;
    for (const cJSON *m = inst->child; m; m = m->next, i++) {
        size_t at = push_key(x, m->string);
        bool seen = false;
        if (pn) {
            cJSON *name = cJSON_CreateString(m->string);
            bool ok = name && v_schema(x, pn, res, name, NULL);
            cJSON_Delete(name);
            if (!ok) {
                if (x->e && strcmp(x->e->keyword, "false") == 0)
                    fail(x, "propertyNames", "the property name is not allowed");
                x->plen = at;
                return false;
            }
        }
        const cJSON *p = cJSON_IsObject(props) ? cJSON_GetObjectItemCaseSensitive(props, m->string)
                                               : NULL;
        if (p) {
            seen = true;
            if (!v_schema(x, p, res, m, NULL)) {
                x->plen = at;
                return false;
            }
        }
        if (cJSON_IsObject(pp))
            for (const cJSON *q = pp->child; q; q = q->next) {
                const pmap_ent *e = map_get(x->s, q);
                if (!e || !e->re || !re_search(e->re, m->string, strlen(m->string)))
                    continue;
                seen = true;
                if (!v_schema(x, q, res, m, NULL)) {
                    x->plen = at;
                    return false;
                }
            }
        if (!seen && ap) {
            seen = true;
            if (!v_schema(x, ap, res, m, NULL)) {
                if (cJSON_IsFalse(ap))
                    fail(x, "additionalProperties", "no property \"%s\" is allowed here", m->string);
                x->plen = at;
                return false;
            }
        }
        x->plen = at;
        if (seen && ev)
            ev[i] = 1;
    }
    const cJSON *ds = K[KW_dependentSchemas];
    if (cJSON_IsObject(ds))
        for (const cJSON *d = ds->child; d; d = d->next)
            if (cJSON_GetObjectItemCaseSensitive(inst, d->string) &&
                !v_inplace(x, d, res, inst, ev, n))
                return false;
    return true;
}

/* Validates inst against the schema object or boolean sch of resource res; fills ev (one byte
 * per member / element of inst, may be NULL) with what it evaluated when it passes. */
static bool v_schema(vx *x, const cJSON *sch, int res, const cJSON *inst, unsigned char *ev)
{
    if (cJSON_IsTrue(sch))
        return true;
    if (!cJSON_IsObject(sch))
        return fail(x, "false", "no value is allowed here");
    if (x->depth >= MAX_DEPTH)
        return fail(x, "$ref", "schemas nest deeper than %d (a $ref loop?)", MAX_DEPTH);
    const pmap_ent *me = map_get(x->s, sch);
    if (me && me->res >= 0)
        res = me->res;
    const cJSON *local[KW_N];     /* a schema object the walk did not see (under an unknown keyword) */
    const cJSON *const *K = me && me->kw ? me->kw : fill_kw(sch, local);
    bool pushed = false;
    if (x->nscope == 0 || x->scope[x->nscope - 1] != res) {
        x->scope[x->nscope++] = res;
        pushed = true;
    }
    x->depth++;
    bool ok = false;
    size_t n = cJSON_IsObject(inst) || cJSON_IsArray(inst) ? (size_t)cJSON_GetArraySize(inst) : 0;
    const cJSON *uprops = K[KW_unevaluatedProperties];
    const cJSON *uitems = K[KW_unevaluatedItems];
    bool need = ev || (uprops && cJSON_IsObject(inst)) || (uitems && cJSON_IsArray(inst));
    unsigned char *mine = need ? calloc(n + 1, 1) : NULL;
    if (need && !mine) {
        fail(x, "$schema", "out of memory");
        goto out;
    }

    const cJSON *k = K[KW_ref];
    if (k) {
        const pmap_ent *e = map_get(x->s, k);
        if (!e || !e->target || !v_inplace(x, e->target, e->tres, inst, mine, n))
            goto out;
    }
    k = K[KW_dynamicRef];
    if (k) {
        const pmap_ent *e = map_get(x->s, k);
        if (!e || !e->target)
            goto out;
        const cJSON *t = e->target;
        int tres = e->tres;
        if (e->dyn)
            for (int i = 0; i < x->nscope; i++) {
                const anchor *a = find_anchor(x->s, x->scope[i], e->dyn, true);
                if (a) {
                    t = a->node, tres = a->res;
                    break;
                }
            }
        if (!v_inplace(x, t, tres, inst, mine, n))
            goto out;
    }
    k = K[KW_type];
    if (cJSON_IsString(k) && !has_type(inst, k->valuestring)) {
        fail(x, "type", "%s is not of type %s", type_name(inst), k->valuestring);
        goto out;
    }
    if (cJSON_IsArray(k)) {
        bool any = false;
        for (const cJSON *t = k->child; t && !any; t = t->next)
            any = cJSON_IsString(t) && has_type(inst, t->valuestring);
        if (!any) {
            char *list = cJSON_PrintUnformatted(k);
            fail(x, "type", "%s is not of the types %s", type_name(inst), list ? list : "listed");
            free(list);
            goto out;
        }
    }
    k = K[KW_const];
    if (k && !json_equal(k, inst)) {
        char *v = cJSON_PrintUnformatted(k);
        fail(x, "const", "the value must be %.200s", v ? v : "the constant");
        free(v);
        goto out;
    }
    k = K[KW_enum];
    if (cJSON_IsArray(k)) {
        bool any = false;
        for (const cJSON *e = k->child; e && !any; e = e->next)
            any = json_equal(e, inst);
        if (!any) {
            char *v = cJSON_PrintUnformatted(k);
            fail(x, "enum", "the value is not one of %.300s", v ? v : "the listed values");
            free(v);
            goto out;
        }
    }
    if (cJSON_IsNumber(inst) && !v_number(x, K, inst))
        goto out;
    if (cJSON_IsString(inst) && !v_string(x, K, inst))
        goto out;
    if (cJSON_IsArray(inst) && !v_array(x, K, res, inst, mine))
        goto out;
    if (cJSON_IsObject(inst) && !v_object(x, K, res, inst, mine))
        goto out;

    k = K[KW_allOf];
    if (cJSON_IsArray(k))
        for (const cJSON *s = k->child; s; s = s->next)
            if (!v_inplace(x, s, res, inst, mine, n))
                goto out;
    k = K[KW_anyOf];
    if (cJSON_IsArray(k)) {
        bool any = false;
        for (const cJSON *s = k->child; s; s = s->next)
            if (v_inplace(x, s, res, inst, mine, n)) {
                any = true;
                if (!mine)
                    break;                      /* nothing to collect from the others */
            }
        if (!any) {
            fail(x, "anyOf", "the value matches none of the schemas of anyOf");
            goto out;
        }
    }
    k = K[KW_oneOf];
    if (cJSON_IsArray(k)) {
        int hits = 0, first = -1, second = -1, j = 0;
        for (const cJSON *s = k->child; s; s = s->next, j++)
            if (v_inplace(x, s, res, inst, mine, n)) {
                if (hits++ == 0)
                    first = j;
                else if (second < 0)
                    second = j;
            }
        if (hits == 0) {
            fail(x, "oneOf", "the value matches none of the schemas of oneOf");
            goto out;
        }
        if (hits > 1) {
            fail(x, "oneOf", "the value matches schemas %d and %d of oneOf, not one", first, second);
            goto out;
        }
    }
    k = K[KW_not];
    if (k && v_schema(x, k, res, inst, NULL)) {
        fail(x, "not", "the value must not match the schema of not");
        goto out;
    }
    k = K[KW_if];
    if (k) {
        const cJSON *br;
        const char *which;
        if (v_inplace(x, k, res, inst, mine, n))
            br = K[KW_then], which = "then";
        else
            br = K[KW_else], which = "else";
        if (br && !v_inplace(x, br, res, inst, mine, n)) {
            if (x->e && strcmp(x->e->keyword, "false") == 0)
                fail(x, which, "the value is not allowed by %s", which);
            goto out;
        }
    }

    if (uitems && cJSON_IsArray(inst)) {
        size_t i = 0;
        for (const cJSON *it = inst->child; it; it = it->next, i++) {
            if (mine[i])
                continue;
            size_t at = push_index(x, i);
            bool okk = v_schema(x, uitems, res, it, NULL);
            if (!okk && cJSON_IsFalse(uitems))
                fail(x, "unevaluatedItems", "item %zu is not allowed here", i);
            x->plen = at;
            if (!okk)
                goto out;
            mine[i] = 1;
        }
    }
    if (uprops && cJSON_IsObject(inst)) {
        size_t i = 0;
        for (const cJSON *m = inst->child; m; m = m->next, i++) {
            if (mine[i])
                continue;
            size_t at = push_key(x, m->string);
            bool okk = v_schema(x, uprops, res, m, NULL);
            if (!okk && cJSON_IsFalse(uprops))
                fail(x, "unevaluatedProperties", "no property \"%s\" is allowed here", m->string);
            x->plen = at;
            if (!okk)
                goto out;
            mine[i] = 1;
        }
    }
    ok = true;
    if (ev)
        for (size_t i = 0; i < n; i++)
            ev[i] |= mine[i];
out:
    free(mine);
    x->depth--;
    if (pushed)
        x->nscope--;
    return ok;
}

bool sch_validate(const sch_schema *s, const cJSON *instance, sch_error *e)
{
    vx *x = calloc(1, sizeof *x);
    if (!x) {
        if (e)
            *e = (sch_error){ "", "$schema", "out of memory" };
        return false;
    }
    x->s = s;
    x->e = e;
    bool ok = v_schema(x, s->root, 0, instance, NULL);
    free(x);
    return ok;
}

/* ---- files ------------------------------------------------------------------------------------ */

char *sch_resolve_path(const char *rules_file, const char *path)
{
    const char *slash = rules_file ? strrchr(rules_file, '/') : NULL;
    size_t dl = path[0] == '/' || !slash ? 0 : (size_t)(slash - rules_file) + 1;
    char *out = malloc(dl + strlen(path) + 1);
    if (out) {
        memcpy(out, rules_file, dl);
        strcpy(out + dl, path);
    }
    return out;
}

sch_schema *sch_load_file(const char *path, unsigned flags, char *err, size_t cap)
{
    /* O_NONBLOCK: opening a FIFO does not wait for a writer (it is then refused as not a
     * regular file); the size is capped before anything is read */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, cap, "cannot read it: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        snprintf(err, cap, "cannot read it: not a regular file");
        return NULL;
    }
    if (st.st_size > SCH_FILE_MAX) {
        close(fd);
        snprintf(err, cap, "cannot read it: %lld bytes, more than the %d MiB a schema file may "
                 "have", (long long)st.st_size, SCH_FILE_MAX >> 20);
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        snprintf(err, cap, "cannot read it: %s", strerror(errno));
        return NULL;
    }
    char *text = NULL;
    size_t n = 0, capt = 0;
    for (;;) {
        if (n > SCH_FILE_MAX) {       /* (it grew since fstat) */
            free(text);
            fclose(f);
            snprintf(err, cap, "cannot read it: more than the %d MiB a schema file may have",
                     SCH_FILE_MAX >> 20);
            return NULL;
        }
        if (n + 4096 > capt) {
            char *t = realloc(text, capt = capt * 2 + 8192);
            if (!t) {
                free(text);
                fclose(f);
                snprintf(err, cap, "out of memory");
                return NULL;
            }
            text = t;
        }
        size_t k = fread(text + n, 1, capt - n, f);
        n += k;
        if (k == 0)
            break;
    }
    bool rerr = ferror(f);
    fclose(f);
    if (rerr) {
        free(text);
        snprintf(err, cap, "cannot read it");
        return NULL;
    }
    const char *end = NULL;
    cJSON *j = sch_parse(text, n, &end);
    if (!j) {
        size_t at = end && end >= text ? (size_t)(end - text) : 0, line = 1, col = 1;
        for (size_t i = 0; i < at && i < n; i++, col++)
            if (text[i] == '\n')
                line++, col = 0;
        free(text);
        snprintf(err, cap, "not JSON (line %zu, column %zu)", line, col);
        return NULL;
    }
    free(text);
    char why[500];
    sch_schema *s = sch_compile(j, flags, why, sizeof why);
    cJSON_Delete(j);
    if (!s)
        snprintf(err, cap, "not a schema: %s", why);
    return s;
}
