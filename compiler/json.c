/*
 * json.c — a strict JSON reader for the bodies of `pattern` (and later templates), keeping the
 * byte span of every value so that errors point into the rule file.  Compile time only: the hot
 * path never builds a tree (see vm/scan.c).
 */
#include <string.h>

#include "cc.h"
#include "json.h"

typedef struct {
    cc_unit *u;
    const char *s;      /* the unit's text */
    uint32_t pos, end;  /* absolute offsets */
    int failed;
    bool scratch;       /* allocate in the scratch arena */
} reader;

enum { MAX_DEPTH = 256 };

static void fail(reader *r, uint32_t off, uint32_t len, const char *msg)
{
    if (!r->failed)
        cc_error(r->u, off, len ? len : 1, "%s", msg);
    r->failed = 1;
}

static inline bool is_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

/* (Compared in line rather than by strchr, a call per blank: 10k issue193 rules 746M -> 716M
 * instructions.) */
static void skip_ws(reader *r)
{
    while (r->pos < r->end && is_ws(r->s[r->pos]))
        r->pos++;
}

static jv *new_value(reader *r, jtype type, uint32_t off)
{
    jv *v = r->scratch ? cc_scratch_alloc(r->u->comp, sizeof *v) : cc_alloc(r->u->comp, sizeof *v);
    v->type = type;
    v->off = off;
    return v;
}

/* Reads a string at r->pos (which holds '"'); returns its decoded text in the arena. */
static char *read_string(reader *r, size_t *len, uint32_t *span_len)
{
    uint32_t start = r->pos++;
    /* Printable ASCII up to the closing quote (the usual string) is its own text: one pass and
     * a copy, not a pass to find the end, one to check and one to decode.  Compiling 10k
     * issue193 rules: 860M -> 746M instructions (callgrind). */
    const unsigned char *s = (const unsigned char *)r->s;
    uint32_t p = r->pos;
    while (p < r->end && s[p] >= 0x20 && s[p] < 0x80 && s[p] != '"' && s[p] != '\\')
        p++;
    if (p < r->end && s[p] == '"') {
        size_t n = p - r->pos;
        char *out = r->scratch ? cc_scratch_alloc(r->u->comp, n + 1) : cc_alloc(r->u->comp, n + 1);
        memcpy(out, s + r->pos, n);
        out[n] = 0;
        r->pos = p + 1;
        *len = n;
        *span_len = r->pos - start;
        return out;
    }
    while (r->pos < r->end && r->s[r->pos] != '"') {
        if (r->s[r->pos] == '\\')
            r->pos++;
        r->pos++;
    }
    if (r->pos >= r->end) {
        fail(r, start, 1, "unterminated string in JSON");
        return NULL;
    }
    r->pos++;
    size_t n = r->pos - start - 2, bad, badlen;
    const char *why;
    char *out = r->scratch ? cc_scratch_alloc(r->u->comp, n + 1) : cc_alloc(r->u->comp, n + 1);
    long k = cc_decode_json_string(r->s + start + 1, n, out, &bad, &badlen, &why);
    if (k < 0) {
        fail(r, start + 1 + (uint32_t)bad, (uint32_t)badlen, why);
        return NULL;
    }
    *len = (size_t)k;
    *span_len = r->pos - start;
    return out;
}

/* Reads a number per RFC 8259's grammar; its text stays as written (see jv.str). */
static jv *read_number(reader *r)
{
    uint32_t start = r->pos;
    const char *why;
    size_t k = vm_json_number_len(r->s + start, r->end - start, &why);
    uint32_t p = start + (uint32_t)k;
    if (k == 0 || (p < r->end && !strchr(" \t\r\n,]}", r->s[p]))) {
        while (p < r->end && !strchr(" \t\r\n,]}", r->s[p]))
            p++;
        fail(r, start, p - start, k == 0 ? why : "invalid JSON number");
        return NULL;
    }
    jv *v = new_value(r, J_NUMBER, start);
    v->str = r->s + start;
    v->slen = k;
    v->len = (uint32_t)k;
    r->pos = p;
    return v;
}

static jv *read_value(reader *r, int depth);

static jv *read_container(reader *r, int depth, int object)
{
    uint32_t start = r->pos++;
    jv *v = new_value(r, object ? J_OBJECT : J_ARRAY, start);
    jv **tail = &v->kids;
    char close = object ? '}' : ']';
    if (depth >= MAX_DEPTH) {
        fail(r, start, 1, "JSON nested too deeply");
        return NULL;
    }
    skip_ws(r);
    if (r->pos < r->end && r->s[r->pos] == close) {
        r->pos++;
        v->len = r->pos - start;
        return v;
    }
    for (;;) {
        skip_ws(r);
        const char *key = NULL;
        size_t klen = 0;
        uint32_t koff = r->pos, kspan = 0;
        if (object) {
            if (r->pos >= r->end || r->s[r->pos] != '"') {
                fail(r, r->pos, 1, r->pos < r->end && r->s[r->pos] == '}'
                                       ? "trailing comma in JSON object"
                                       : "expected a string key in JSON object");
                return NULL;
            }
            key = read_string(r, &klen, &kspan);
            if (!key)
                return NULL;
            skip_ws(r);
            if (r->pos >= r->end || r->s[r->pos] != ':') {
                fail(r, r->pos, 1, "expected ':' after a key in JSON object");
                return NULL;
            }
            r->pos++;
            skip_ws(r);
        }
        if (!object && r->pos < r->end && r->s[r->pos] == ']') {
            fail(r, r->pos, 1, "trailing comma in JSON array");
            return NULL;
        }
        jv *item = read_value(r, depth + 1);
        if (!item)
            return NULL;
        if (object) {
            item->key = key;
            item->klen = klen;
            item->koff = koff;
            item->kspan = kspan;
        }
        *tail = item;
        tail = &item->next;
        v->nkids++;
        skip_ws(r);
        if (r->pos < r->end && r->s[r->pos] == ',') {
            r->pos++;
            continue;
        }
        if (r->pos < r->end && r->s[r->pos] == close) {
            r->pos++;
            v->len = r->pos - start;
            return v;
        }
        fail(r, r->pos < r->end ? r->pos : start, 1,
             object ? "expected ',' or '}' in JSON object" : "expected ',' or ']' in JSON array");
        return NULL;
    }
}

static jv *read_value(reader *r, int depth)
{
    skip_ws(r);
    if (r->pos >= r->end) {
        fail(r, r->end ? r->end - 1 : 0, 1, "unexpected end of JSON");
        return NULL;
    }
    char c = r->s[r->pos];
    if (c == '{' || c == '[')
        return read_container(r, depth, c == '{');
    if (c == '"') {
        uint32_t start = r->pos, span;
        size_t n;
        char *s = read_string(r, &n, &span);
        if (!s)
            return NULL;
        jv *v = new_value(r, J_STRING, start);
        v->str = s;
        v->slen = n;
        v->len = span;
        return v;
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return read_number(r);
    static const struct { const char *word; jtype type; } words[] = {
        { "true", J_TRUE }, { "false", J_FALSE }, { "null", J_NULL },
    };
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(words[i].word);
        if (r->end - r->pos >= n && memcmp(r->s + r->pos, words[i].word, n) == 0) {
            jv *v = new_value(r, words[i].type, r->pos);
            v->len = (uint32_t)n;
            r->pos += (uint32_t)n;
            return v;
        }
    }
    uint32_t p = r->pos;
    while (p < r->end && !strchr(" \t\r\n,]}:", r->s[p]))
        p++;
    fail(r, r->pos, p - r->pos, "unexpected text in JSON (expected a value)");
    return NULL;
}

static jv *parse(cc_unit *u, uint32_t off, uint32_t len, bool scratch)
{
    reader r = { .u = u, .s = u->text, .pos = off, .end = off + len, .scratch = scratch };
    jv *v = read_value(&r, 0);
    if (!v)
        return NULL;
    skip_ws(&r);
    if (r.pos < r.end) {
        fail(&r, r.pos, r.end - r.pos, "unexpected text after the JSON value");
        return NULL;
    }
    return v;
}

jv *cc_json_parse(cc_unit *u, uint32_t off, uint32_t len)
{
    return parse(u, off, len, false);
}

jv *cc_json_parse_scratch(cc_unit *u, uint32_t off, uint32_t len)
{
    return parse(u, off, len, true);
}

const char *cc_json_type_name(jtype t)
{
    switch (t) {
    case J_OBJECT: return "an object";
    case J_ARRAY: return "an array";
    case J_STRING: return "a string";
    case J_NUMBER: return "a number";
    case J_TRUE: case J_FALSE: return "a boolean";
    case J_NULL: return "null";
    }
    return "a value";
}
