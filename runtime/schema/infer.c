/*
 * infer.c — a schema inferred from the instances seen (docs/schemas.md, "Inference").
 *
 * Each location of the instances (the root, a property, an array's items) keeps a shape: how
 * many values it saw, which JSON types (integer apart from number), the formats every string
 * had so far, for objects each property with the number of objects that had it, for arrays the
 * merged shape of all their items.  Merging two shapes adds counts, unites types and properties
 * and intersects formats: it is commutative and associative, so the schema does not depend on
 * the order the instances came in.  The schema written out sorts properties and types by name;
 * `required` lists the properties every object had; enums are never invented.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "schema.h"

#define MAX_DEPTH 32              /* deeper values count by type only */
#define MAX_PROPS 1000            /* properties kept per object location; more are not described */
#define MAX_NAME 256              /* a longer property name is not described */
#define MAX_BYTES ((size_t)4 << 20)   /* memory an inference takes for its properties, by default */

enum { T_NULL = 1, T_BOOL = 2, T_INT = 4, T_NUM = 8, T_STR = 16, T_ARR = 32, T_OBJ = 64 };

static const char *const formats[] = { "date-time", "uuid", "email", "ipv4", "ipv6", "uri" };
#define NFMT (sizeof formats / sizeof formats[0])
#define ALL_FMT ((1u << NFMT) - 1)

typedef struct shape shape;

typedef struct {
    char *name;
    uint64_t seen;                /* objects here that had it */
    shape *s;
} prop;

struct shape {
    uint64_t count;
    unsigned types;
    unsigned fmt;                 /* formats all strings had (ALL_FMT before the first) */
    uint64_t nobj;
    prop *props;                  /* sorted by name */
    size_t nprops, cap;
    bool props_cut;               /* more than MAX_PROPS names came */
    shape *items;
};

struct sch_infer {
    shape root;
    size_t bytes;                 /* what its properties take (names and shapes), about */
    size_t limit;                 /* past it no property is added (sch_infer_limit) */
};

/* Frees what s holds (not s). */
static void shape_clear(shape *s)
{
    for (size_t i = 0; i < s->nprops; i++) {
        free(s->props[i].name);
        shape_clear(s->props[i].s);
        free(s->props[i].s);
    }
    free(s->props);
    if (s->items) {
        shape_clear(s->items);
        free(s->items);
    }
    memset(s, 0, sizeof *s);
    s->fmt = ALL_FMT;
}

sch_infer *sch_infer_new(void)
{
    sch_infer *g = calloc(1, sizeof *g);
    if (g) {
        g->root.fmt = ALL_FMT;
        g->limit = MAX_BYTES;
    }
    return g;
}

void sch_infer_free(sch_infer *g)
{
    if (!g)
        return;
    shape_clear(&g->root);
    free(g);
}

uint64_t sch_infer_count(const sch_infer *g)
{
    return g->root.count;
}

/* A new, empty shape. */
static shape *shape_new(void)
{
    shape *s = calloc(1, sizeof *s);
    if (s)
        s->fmt = ALL_FMT;
    return s;
}

/* The property name of s, added (empty) when absent; NULL when out of memory, or (with
 * s->props_cut set) when s has MAX_PROPS already, name is longer than MAX_NAME or g's
 * properties take its limit. */
static prop *prop_of(sch_infer *g, shape *s, const char *name)
{
    size_t lo = 0, hi = s->nprops;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(s->props[mid].name, name);
        if (c == 0)
            return &s->props[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t cost = sizeof(prop) + sizeof(shape) + strlen(name) + 1;
    if (s->nprops >= MAX_PROPS || strlen(name) > MAX_NAME || g->bytes + cost > g->limit) {
        s->props_cut = true;
        return NULL;
    }
    if (s->nprops == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4;
        prop *p = realloc(s->props, cap * sizeof *p);
        if (!p)
            return NULL;
        s->props = p, s->cap = cap;
    }
    prop np = { strdup(name), 0, shape_new() };
    if (!np.name || !np.s) {
        free(np.name), free(np.s);
        return NULL;
    }
    memmove(&s->props[lo + 1], &s->props[lo], (s->nprops - lo) * sizeof *s->props);
    s->props[lo] = np;
    g->bytes += cost;
    s->nprops++;
    return &s->props[lo];
}

/* The formats string v has (a mask over formats[]). */
static unsigned formats_of(const char *v)
{
    unsigned m = 0;
    for (size_t i = 0; i < NFMT; i++)
        if (sch_format_ok(formats[i], v, strlen(v), NULL))
            m |= 1u << i;
    return m;
}

/* Adds value v to shape s. */
static bool add(sch_infer *g, shape *s, const cJSON *v, int depth)
{
    s->count++;
    if (cJSON_IsNull(v)) {
        s->types |= T_NULL;
    } else if (cJSON_IsBool(v)) {
        s->types |= T_BOOL;
    } else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        s->types |= isfinite(d) && d == floor(d) ? T_INT : T_NUM;
    } else if (cJSON_IsString(v)) {
        s->types |= T_STR;
        if (s->fmt)
            s->fmt &= formats_of(v->valuestring);
    } else if (cJSON_IsArray(v)) {
        s->types |= T_ARR;
        if (depth >= MAX_DEPTH)
            return true;
        for (const cJSON *x = v->child; x; x = x->next) {
            if (!s->items && !(s->items = shape_new()))
                return false;
            if (!add(g, s->items, x, depth + 1))
                return false;
        }
    } else if (cJSON_IsObject(v)) {
        s->types |= T_OBJ;
        s->nobj++;
        if (depth >= MAX_DEPTH)
            return true;
        for (const cJSON *m = v->child; m; m = m->next) {
            /* a name given twice counts once */
            const cJSON *first = v->child;
            while (first != m && strcmp(first->string, m->string) != 0)
                first = first->next;
            if (first != m)
                continue;
            prop *p = prop_of(g, s, m->string);
            if (!p) {
                if (s->props_cut)
                    continue;
                return false;
            }
            p->seen++;
            if (!add(g, p->s, m, depth + 1))
                return false;
        }
    }
    return true;
}

bool sch_infer_add(sch_infer *g, const cJSON *instance)
{
    return add(g, &g->root, instance, 0);
}

/* Merges shape b into a. */
static bool merge(sch_infer *g, shape *a, const shape *b)
{
    a->count += b->count;
    a->types |= b->types;
    a->fmt &= b->fmt;
    a->nobj += b->nobj;
    a->props_cut |= b->props_cut;
    for (size_t i = 0; i < b->nprops; i++) {
        prop *p = prop_of(g, a, b->props[i].name);
        if (!p) {
            if (a->props_cut)
                continue;
            return false;
        }
        p->seen += b->props[i].seen;
        if (!merge(g, p->s, b->props[i].s))
            return false;
    }
    if (b->items) {
        if (!a->items && !(a->items = shape_new()))
            return false;
        if (!merge(g, a->items, b->items))
            return false;
    }
    return true;
}

size_t sch_infer_bytes(const sch_infer *g)
{
    return g->bytes;
}

void sch_infer_limit(sch_infer *g, size_t max)
{
    g->limit = max;
}

bool sch_infer_merge(sch_infer *a, const sch_infer *b)
{
    return merge(a, &a->root, &b->root);
}

static cJSON *to_schema(const shape *s);

/* Adds the keywords describing shape s to schema object o. */
static void describe(cJSON *o, const shape *s)
{
    static const struct { unsigned bit; const char *name; } names[] = {
        { T_ARR, "array" }, { T_BOOL, "boolean" }, { T_INT, "integer" }, { T_NULL, "null" },
        { T_NUM, "number" }, { T_OBJ, "object" }, { T_STR, "string" },
    };
    unsigned t = s->types;
    if (t & T_NUM)
        t &= ~(unsigned)T_INT;    /* number covers the integers seen beside */
    cJSON *list = cJSON_CreateArray();
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (t & names[i].bit)
            cJSON_AddItemToArray(list, cJSON_CreateString(names[i].name));
    int nt = cJSON_GetArraySize(list);
    if (nt == 1) {
        cJSON_AddItemToObject(o, "type", cJSON_DetachItemFromArray(list, 0));
        cJSON_Delete(list);
    } else if (nt > 1) {
        cJSON_AddItemToObject(o, "type", list);
    } else {
        cJSON_Delete(list);
    }
    if ((s->types & T_STR) && s->fmt)
        for (size_t i = 0; i < NFMT; i++)
            if (s->fmt & (1u << i)) {
                cJSON_AddStringToObject(o, "format", formats[i]);
                break;
            }
    if (s->types & T_OBJ && (s->nprops || s->props_cut)) {
        cJSON *props = cJSON_AddObjectToObject(o, "properties");
        cJSON *req = cJSON_CreateArray();
        for (size_t i = 0; i < s->nprops; i++) {
            cJSON_AddItemToObject(props, s->props[i].name, to_schema(s->props[i].s));
            if (s->props[i].seen == s->nobj)
                cJSON_AddItemToArray(req, cJSON_CreateString(s->props[i].name));
        }
        if (cJSON_GetArraySize(req))
            cJSON_AddItemToObject(o, "required", req);
        else
            cJSON_Delete(req);
    }
    if ((s->types & T_ARR) && s->items)
        cJSON_AddItemToObject(o, "items", to_schema(s->items));
}

/* The schema of shape s. */
static cJSON *to_schema(const shape *s)
{
    cJSON *o = cJSON_CreateObject();
    if (o)
        describe(o, s);
    return o;
}

cJSON *sch_infer_schema(const sch_infer *g)
{
    cJSON *o = cJSON_CreateObject();
    if (o) {
        cJSON_AddStringToObject(o, "$schema", "https://json-schema.org/draft/2020-12/schema");
        describe(o, &g->root);
    }
    return o;
}

/* ---- saving and loading ---------------------------------------------------------------------- */

/* s as JSON: {"n","t","f","o","p":[[name, seen, shape]...],"x":true,"i":shape}. */
static cJSON *save(const shape *s)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "n", (double)s->count);
    cJSON_AddNumberToObject(o, "t", s->types);
    cJSON_AddNumberToObject(o, "f", s->fmt);
    if (s->nobj)
        cJSON_AddNumberToObject(o, "o", (double)s->nobj);
    if (s->props_cut)
        cJSON_AddTrueToObject(o, "x");
    if (s->nprops) {
        cJSON *ps = cJSON_AddArrayToObject(o, "p");
        for (size_t i = 0; i < s->nprops; i++) {
            cJSON *e = cJSON_CreateArray();
            cJSON_AddItemToArray(e, cJSON_CreateString(s->props[i].name));
            cJSON_AddItemToArray(e, cJSON_CreateNumber((double)s->props[i].seen));
            cJSON_AddItemToArray(e, save(s->props[i].s));
            cJSON_AddItemToArray(ps, e);
        }
    }
    if (s->items)
        cJSON_AddItemToObject(o, "i", save(s->items));
    return o;
}

cJSON *sch_infer_save(const sch_infer *g)
{
    return save(&g->root);
}

/* A number member of j (0 when absent). */
static double num(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* Reads j (written by save) into the empty shape s. */
static bool load(sch_infer *g, shape *s, const cJSON *j, int depth)
{
    if (!cJSON_IsObject(j) || depth > MAX_DEPTH + 1)
        return false;
    s->count = (uint64_t)num(j, "n");
    s->types = (unsigned)num(j, "t") & 127;
    s->fmt = (unsigned)num(j, "f") & ALL_FMT;
    s->nobj = (uint64_t)num(j, "o");
    s->props_cut = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "x"));
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(j, "p"), *e;
    cJSON_ArrayForEach(e, ps) {
        const cJSON *name = cJSON_GetArrayItem(e, 0), *seen = cJSON_GetArrayItem(e, 1);
        if (!cJSON_IsString(name) || !cJSON_IsNumber(seen))
            return false;
        prop *p = prop_of(g, s, name->valuestring);
        if (!p && s->props_cut)
            continue;             /* (saved under a larger limit) */
        if (!p || p->seen || !load(g, p->s, cJSON_GetArrayItem(e, 2), depth + 1))
            return false;
        p->seen = (uint64_t)seen->valuedouble;
    }
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(j, "i");
    if (it && (!(s->items = shape_new()) || !load(g, s->items, it, depth + 1)))
        return false;
    return true;
}

sch_infer *sch_infer_load(const cJSON *saved)
{
    sch_infer *g = sch_infer_new();
    if (g && !load(g, &g->root, saved, 0)) {
        sch_infer_free(g);
        return NULL;
    }
    return g;
}

/* ---- ebc schema infer ------------------------------------------------------------------------- */

typedef struct {
    char *source, *type;
    sch_infer *g;
} group;

/* qsort: by source, then type. */
static int cmp_group(const void *a, const void *b)
{
    const group *x = a, *y = b;
    int c = strcmp(x->source, y->source);
    return c ? c : strcmp(x->type, y->type);
}

int sch_infer_cli(const char *path, FILE *out, FILE *err)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (!f) {
        fprintf(err, "%s: cannot read it\n", path);
        return 1;
    }
    group *gs = NULL;
    size_t ng = 0, cap = 0, lineno = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        size_t k = 0;
        while (k < (size_t)n && strchr(" \t\r\n", line[k]))
            k++;
        if (k == (size_t)n)
            continue;                           /* a blank line */
        const char *end = NULL;
        cJSON *ev = cJSON_ParseWithLengthOpts(line, (size_t)n, &end, false);
        const char *why = NULL;
        if (!ev)
            why = "not JSON";
        else if (!cJSON_IsObject(ev))
            why = "not a CloudEvent: not a JSON object";
        const cJSON *src = ev ? cJSON_GetObjectItemCaseSensitive(ev, "source") : NULL;
        const cJSON *typ = ev ? cJSON_GetObjectItemCaseSensitive(ev, "type") : NULL;
        if (!why && (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(ev, "id")) ||
                     !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(ev, "specversion"))))
            why = "not a CloudEvent: it needs string attributes id and specversion";
        if (!why && (!cJSON_IsString(src) || !*src->valuestring))
            why = "not a CloudEvent: no source (a non-empty string)";
        if (!why && (!cJSON_IsString(typ) || !*typ->valuestring))
            why = "not a CloudEvent: no type (a non-empty string)";
        if (why) {
            if (!ev && end && end > line)
                fprintf(err, "%s:%zu: %s (at byte %zu of the line)\n", path, lineno, why,
                        (size_t)(end - line) + 1);
            else
                fprintf(err, "%s:%zu: %s\n", path, lineno, why);
            cJSON_Delete(ev);
            rc = 1;
            break;
        }
        group *g = NULL;
        for (size_t i = 0; i < ng && !g; i++)
            if (!strcmp(gs[i].source, src->valuestring) && !strcmp(gs[i].type, typ->valuestring))
                g = &gs[i];
        if (!g) {
            if (ng == cap) {
                cap = cap ? cap * 2 : 8;
                group *v = realloc(gs, cap * sizeof *v);
                if (!v) {
                    cJSON_Delete(ev);
                    rc = 1;
                    fprintf(err, "%s:%zu: out of memory\n", path, lineno);
                    break;
                }
                gs = v;
            }
            g = &gs[ng++];
            *g = (group){ strdup(src->valuestring), strdup(typ->valuestring), sch_infer_new() };
        }
        bool ok = g->source && g->type && g->g && sch_infer_add(g->g, ev);
        cJSON_Delete(ev);
        if (!ok) {
            fprintf(err, "%s:%zu: out of memory\n", path, lineno);
            rc = 1;
            break;
        }
    }
    free(line);
    if (f != stdin)
        fclose(f);
    if (rc == 0) {
        qsort(gs, ng, sizeof *gs, cmp_group);
        cJSON *root = cJSON_CreateObject();
        cJSON *list = cJSON_AddArrayToObject(root, "schemas");
        for (size_t i = 0; i < ng; i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "source", gs[i].source);
            cJSON_AddStringToObject(e, "type", gs[i].type);
            cJSON_AddNumberToObject(e, "events", (double)sch_infer_count(gs[i].g));
            cJSON_AddItemToObject(e, "schema", sch_infer_schema(gs[i].g));
            cJSON_AddItemToArray(list, e);
        }
        char *text = cJSON_Print(root);
        if (text)
            fprintf(out, "%s\n", text);
        else
            rc = 1;
        free(text);
        cJSON_Delete(root);
    }
    for (size_t i = 0; i < ng; i++) {
        free(gs[i].source);
        free(gs[i].type);
        sch_infer_free(gs[i].g);
    }
    free(gs);
    return rc;
}

int sch_cli(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[0], "infer") == 0)
        return sch_infer_cli(argv[1], stdout, stderr) ? 3 : 0;
    fputs("usage: ebc schema infer EVENTS.jsonl   (EVENTS may be - for stdin)\n", stderr);
    return 2;
}
