/*
 * template.c — transforms (docs/transforms.md): the template language, read from the text the
 * lexer captured whole (a `{...}` or `[...]` body, a string, a call's `(...)`), checked, and
 * compiled into template code (vm.h, VM_TO_*) that writes the payload.
 *
 * A template is parsed into a small tree (tnode) once, where it is declared; every `transform`
 * that uses it compiles it again with its own arguments bound to the parameters, so that an
 * argument that is a path becomes part of the paths the template reads, and a path into an
 * argument that is a constant is an error at the call.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cc.h"
#include "json.h"
#include "parser.h"

/* ---- the tree ---------------------------------------------------------------------------------- */

typedef enum {
    TN_OBJECT,   /* kids: TN_MEMBER */
    TN_MEMBER,   /* key, value; optional: `key?: value` */
    TN_ARRAY,    /* kids: values */
    TN_STRING,   /* kids: TN_TEXT parts and expressions (interpolations) */
    TN_TEXT,     /* a literal part of a string: text (decoded) */
    TN_CONST,    /* a number, true, false or null: text is its JSON */
    TN_PATH,     /* steps from the event's root */
    TN_VAR,      /* $name: var (TV_*) or a parameter (param >= 0), then steps */
    TN_CALL,     /* fn, kids: arguments */
    TN_ELSE,     /* kids: x ?? y */
} tn_kind;

typedef struct tstep tstep;
struct tstep {
    uint8_t kind;          /* VM_TS_* */
    int32_t index;
    const char *name;
    size_t nlen;
    uint32_t off, len;
    tstep *next;
};

typedef struct tnode tnode;
struct tnode {
    tn_kind kind;
    uint32_t off, len;
    tnode *kids, *next;
    tnode *key, *value;    /* TN_MEMBER */
    bool optional;
    const char *text;      /* TN_TEXT, TN_CONST */
    size_t n;
    tstep *steps;          /* TN_PATH, TN_VAR */
    int var, param, fn;
};

/* The reserved variables; those past TV_SUBJECT are not paths into the event. */
enum { TV_EVENT, TV_ID, TV_SOURCE, TV_TYPE, TV_TIME, TV_SUBJECT, TV_BUS, TV_RULE, TV_INGEST_TIME,
       TV__COUNT };
static const char *const var_names[TV__COUNT] = {
    "event", "id", "source", "type", "time", "subject", "bus", "rule", "ingest_time",
};

/* `default(x, y)` is `x ?? y`; the rest are the VM's functions. */
enum { FN_DEFAULT = VM_FN__COUNT };
static const struct { const char *name; int lo, hi; } functions[VM_FN__COUNT + 1] = {
#define X(id, name, lo, hi) { name, lo, hi },
    VM_TEMPLATE_FUNCTIONS(X)
#undef X
    { "default", 2, 2 },
};

/* A declared template, parsed. */
struct cc_template {
    const char *name;
    cc_unit *unit;
    ast *decl;
    struct tparam {
        const char *name;
        size_t nlen;
        uint32_t off, len;
        tnode *dflt;        /* NULL: the parameter must be given */
    } *params;
    uint32_t nparams;
    tnode *body;
    bool text;              /* the body is a string: a text payload */
    bool ok;                /* parsed and checked without errors */
};

/* ---- reading -------------------------------------------------------------------------------- */

typedef enum {
    TT_END, TT_LBRACE, TT_RBRACE, TT_LBRACKET, TT_RBRACKET, TT_LPAREN, TT_RPAREN, TT_COMMA,
    TT_COLON, TT_DOT, TT_QUESTION, TT_ELSE, TT_ASSIGN, TT_STAR, TT_VAR, TT_NAME, TT_STRING,
    TT_SQSTRING, TT_NUMBER, TT_TRUE, TT_FALSE, TT_NULL, TT_ERROR,
} tt_kind;

typedef struct {
    tt_kind kind;
    uint32_t off, len;
} ttok;

typedef struct {
    cc_comp *c;
    cc_unit *u;
    const char *s;
    uint32_t pos, end;     /* the region being read: [pos, end) of u's text */
    ttok tok;              /* the current token */
    bool failed;           /* an error was reported: stop reading */
    struct cc_template *tpl;  /* the template being declared: $name may name its parameters */
    bool in_default;       /* reading a parameter's default: no parameters */
} tparser;

static void fail(tparser *p, uint32_t off, uint32_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(tparser *p, uint32_t off, uint32_t len, const char *fmt, ...)
{
    if (p->failed)
        return;
    p->failed = true;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cc_error(p->u, off, len ? len : 1, "%s", msg);
}

static bool name_start(char ch) { return isalpha((unsigned char)ch) || ch == '_'; }
static bool name_char(char ch) { return isalnum((unsigned char)ch) || ch == '_'; }

/* The end of a `${ ... }` that opens at s[p] == '$' (brackets of every kind counted, strings
 * skipped), or 0. */
static uint32_t interp_end(const char *s, uint32_t p, uint32_t end);

/* The end of the string that starts at s[p] (quote q), `${...}` skipped in '"' strings; or 0. */
static uint32_t string_end(const char *s, uint32_t p, uint32_t end, char q)
{
    for (p++; p < end && s[p] != '\n';) {
        if (s[p] == q)
            return p + 1;
        if (s[p] == '\\' && p + 1 < end)
            p += 2;
        else if (q == '"' && s[p] == '$' && p + 1 < end && s[p + 1] == '$')
            p += 2;     /* "$$" is a literal '$': "$${" is no interpolation */
        else if (q == '"' && s[p] == '$' && p + 1 < end && s[p + 1] == '{') {
            uint32_t e = interp_end(s, p, end);
            if (!e)
                return 0;
            p = e;
        } else
            p++;
    }
    return 0;
}

static uint32_t interp_end(const char *s, uint32_t p, uint32_t end)
{
    int depth = 0;
    for (p++; p < end;) {
        char ch = s[p];
        if (ch == '"' || ch == '\'') {
            uint32_t e = string_end(s, p, end, ch);
            if (!e)
                return 0;
            p = e;
            continue;
        }
        p++;
        if (ch == '{' || ch == '[' || ch == '(')
            depth++;
        else if ((ch == '}' || ch == ']' || ch == ')') && --depth == 0)
            return p;
    }
    return 0;
}

static void next(tparser *p)
{
    const char *s = p->s;
    uint32_t i = p->pos;
    for (;;) {
        while (i < p->end && strchr(" \t\r\n\f", s[i]) && s[i])
            i++;
        if (i < p->end && s[i] == '#') {
            while (i < p->end && s[i] != '\n')
                i++;
            continue;
        }
        break;
    }
    ttok t = { TT_END, i, 0 };
    if (i >= p->end) {
        p->tok = t;
        p->pos = i;
        return;
    }
    char ch = s[i];
    uint32_t j = i + 1;
    switch (ch) {
    case '{': t.kind = TT_LBRACE; break;
    case '}': t.kind = TT_RBRACE; break;
    case '[': t.kind = TT_LBRACKET; break;
    case ']': t.kind = TT_RBRACKET; break;
    case '(': t.kind = TT_LPAREN; break;
    case ')': t.kind = TT_RPAREN; break;
    case ',': t.kind = TT_COMMA; break;
    case ':': t.kind = TT_COLON; break;
    case '.': t.kind = TT_DOT; break;
    case '*': t.kind = TT_STAR; break;
    case '=': t.kind = TT_ASSIGN; break;
    case '?':
        if (j < p->end && s[j] == '?') {
            t.kind = TT_ELSE;
            j++;
        } else {
            t.kind = TT_QUESTION;
        }
        break;
    case '$':
        while (j < p->end && name_char(s[j]))
            j++;
        t.kind = j > i + 1 && name_start(s[i + 1]) ? TT_VAR : TT_ERROR;
        break;
    case '"':
    case '\'':
        j = string_end(s, i, p->end, ch);
        t.kind = ch == '"' ? TT_STRING : TT_SQSTRING;
        if (!j) {
            j = i + 1;
            t.kind = TT_ERROR;
            t.len = 1;
            p->tok = t;
            p->pos = j;
            fail(p, i, 1, "unterminated string");
            return;
        }
        break;
    default:
        if (ch == '-' || isdigit((unsigned char)ch)) {
            while (j < p->end && (isalnum((unsigned char)s[j]) || strchr(".+-", s[j])))
                j++;
            t.kind = TT_NUMBER;
        } else if (name_start(ch)) {
            /* a name: letters, digits, '_', and '-' between them (as in `x-request-id`) */
            while (j < p->end && (name_char(s[j]) || (s[j] == '-' && j + 1 < p->end && name_char(s[j + 1]))))
                j++;
            t.kind = TT_NAME;
            if (j - i == 4 && !memcmp(s + i, "true", 4))
                t.kind = TT_TRUE;
            else if (j - i == 5 && !memcmp(s + i, "false", 5))
                t.kind = TT_FALSE;
            else if (j - i == 4 && !memcmp(s + i, "null", 4))
                t.kind = TT_NULL;
        } else {
            t.kind = TT_ERROR;
        }
    }
    t.len = j - i;
    p->tok = t;
    p->pos = j;
    if (t.kind == TT_ERROR)
        fail(p, i, 1, "unexpected character '%c' in a template", ch);
}

static const char *tt_name(tt_kind k)
{
    switch (k) {
    case TT_END: return "the end of the template";
    case TT_LBRACE: return "'{'";
    case TT_RBRACE: return "'}'";
    case TT_LBRACKET: return "'['";
    case TT_RBRACKET: return "']'";
    case TT_LPAREN: return "'('";
    case TT_RPAREN: return "')'";
    case TT_COMMA: return "','";
    case TT_COLON: return "':'";
    case TT_DOT: return "'.'";
    case TT_QUESTION: return "'?'";
    case TT_ELSE: return "'?\?'";
    case TT_ASSIGN: return "'='";
    case TT_STAR: return "'*'";
    case TT_VAR: return "a variable";
    case TT_NAME: return "a name";
    case TT_STRING: case TT_SQSTRING: return "a string";
    case TT_NUMBER: return "a number";
    case TT_TRUE: return "'true'";
    case TT_FALSE: return "'false'";
    case TT_NULL: return "'null'";
    default: return "a character";
    }
}

static void unexpected(tparser *p, const char *want)
{
    if (p->tok.kind == TT_END)
        fail(p, p->tok.off, 1, "expected %s, found %s", want, tt_name(TT_END));
    else
        fail(p, p->tok.off, p->tok.len, "expected %s, found '%.*s'", want,
             (int)(p->tok.len > 40 ? 40 : p->tok.len), p->s + p->tok.off);
}

static bool expect(tparser *p, tt_kind k, const char *want)
{
    if (p->tok.kind != k) {
        unexpected(p, want);
        return false;
    }
    next(p);
    return true;
}

static tnode *new_node(tparser *p, tn_kind kind, uint32_t off, uint32_t len)
{
    tnode *n = cc_alloc(p->c, sizeof *n);
    n->kind = kind;
    n->off = off;
    n->len = len;
    n->var = n->param = n->fn = -1;
    return n;
}

static void extend_to(tnode *n, uint32_t end)
{
    if (end > n->off + n->len)
        n->len = end - n->off;
}

static void append(tnode **list, tnode *item)
{
    tnode **at = list;
    while (*at)
        at = &(*at)->next;
    *at = item;
}

/* Decodes the JSON escapes of s[from, to) into the arena; reports an error on a bad one. */
static char *decode(tparser *p, uint32_t from, uint32_t to, size_t *n)
{
    char *out = cc_alloc(p->c, to - from + 1);
    size_t bad, badlen;
    const char *why;
    long k = cc_decode_json_string(p->s + from, to - from, out, &bad, &badlen, &why);
    if (k < 0) {
        fail(p, from + (uint32_t)bad, (uint32_t)badlen, "%s", why);
        return NULL;
    }
    *n = (size_t)k;
    return out;
}

static tnode *parse_expr(tparser *p);
static tnode *parse_value(tparser *p);

/* Reads a sub-region [from, to) with a parser of its own (an interpolation). */
static tnode *parse_region(tparser *p, uint32_t from, uint32_t to)
{
    tparser q = *p;
    q.pos = from;
    q.end = to;
    next(&q);
    tnode *e = q.failed ? NULL : parse_expr(&q);
    if (e && !q.failed && q.tok.kind != TT_END)
        unexpected(&q, "'}' to end the '${'");
    p->failed |= q.failed;
    return q.failed ? NULL : e;
}

/* A string token: its literal parts and its `${ expression }` parts.  "$${" is a literal "${". */
static tnode *parse_string(tparser *p, ttok t)
{
    tnode *n = new_node(p, TN_STRING, t.off, t.len);
    const char *s = p->s;
    uint32_t end = t.off + t.len - 1, lit = t.off + 1;
    for (uint32_t i = t.off + 1; i <= end && !p->failed;) {
        bool interp = i < end && s[i] == '$' && i + 1 < end && s[i + 1] == '{';
        bool escaped_interp = i + 2 < end && s[i] == '$' && s[i + 1] == '$' && s[i + 2] == '{';
        if (i < end && s[i] == '\\') {
            i += 2;
            continue;
        }
        if (i < end && !interp && !escaped_interp) {
            /* "$$" not before '{' is two literal dollars, taken as a pair as the scanners take
             * it: "$$${x}" is "$$" and then an interpolation. */
            i += i + 1 < end && s[i] == '$' && s[i + 1] == '$' ? 2 : 1;
            continue;
        }
        if (i > lit) {   /* the literal part before */
            size_t k;
            char *text = decode(p, lit, i, &k);
            if (!text)
                return NULL;
            tnode *part = new_node(p, TN_TEXT, lit, i - lit);
            part->text = text;
            part->n = k;
            append(&n->kids, part);
        }
        if (i == end)
            break;
        if (escaped_interp) {
            tnode *part = new_node(p, TN_TEXT, i, 3);
            part->text = "${";
            part->n = 2;
            append(&n->kids, part);
            i += 3;
            lit = i;
            continue;
        }
        uint32_t close = interp_end(s, i, end);
        if (!close) {
            fail(p, i, 2, "'${' is never closed with '}'");
            return NULL;
        }
        tnode *e = parse_region(p, i + 2, close - 1);
        if (!e)
            return NULL;
        append(&n->kids, e);
        i = lit = close;
    }
    return p->failed ? NULL : n;
}

/* Path steps after a name or variable: `.name`, `."name"`, `[n]`, `[-n]`, `[*]`, `[]`,
 * `['name']`, `["name"]`. */
static tstep *parse_steps(tparser *p)
{
    tstep *first = NULL, **at = &first;
    for (;;) {
        tstep *st = cc_alloc(p->c, sizeof *st);
        st->off = p->tok.off;
        if (p->tok.kind == TT_DOT) {
            next(p);
            if (p->tok.kind == TT_NAME || p->tok.kind == TT_TRUE || p->tok.kind == TT_FALSE ||
                p->tok.kind == TT_NULL) {
                st->name = p->s + p->tok.off;
                st->nlen = p->tok.len;
            } else if (p->tok.kind == TT_STRING || p->tok.kind == TT_SQSTRING) {
                if (!(st->name = decode(p, p->tok.off + 1, p->tok.off + p->tok.len - 1, &st->nlen)))
                    return NULL;
            } else if (p->tok.kind == TT_STAR) {
                st->kind = VM_TS_ALL;
            } else {
                unexpected(p, "a field name after '.'");
                return NULL;
            }
            st->kind = p->tok.kind == TT_STAR ? VM_TS_ALL : VM_TS_NAME;
            st->len = p->tok.off + p->tok.len - st->off;
            next(p);
        } else if (p->tok.kind == TT_LBRACKET) {
            next(p);
            if (p->tok.kind == TT_RBRACKET || p->tok.kind == TT_STAR) {
                st->kind = VM_TS_ALL;
                if (p->tok.kind == TT_STAR)
                    next(p);
            } else if (p->tok.kind == TT_NUMBER) {
                char buf[32];
                snprintf(buf, sizeof buf, "%.*s", (int)(p->tok.len > 30 ? 30 : p->tok.len),
                         p->s + p->tok.off);
                char *e;
                long v = strtol(buf, &e, 10);
                if (*e || p->tok.len > 10 || v > INT32_MAX || v < -INT32_MAX) {
                    fail(p, p->tok.off, p->tok.len, "an array index is a whole number, as [0] or [-1]");
                    return NULL;
                }
                st->kind = VM_TS_INDEX;
                st->index = (int32_t)v;
                next(p);
            } else if (p->tok.kind == TT_STRING || p->tok.kind == TT_SQSTRING) {
                st->kind = VM_TS_NAME;
                if (!(st->name = decode(p, p->tok.off + 1, p->tok.off + p->tok.len - 1, &st->nlen)))
                    return NULL;
                next(p);
            } else {
                unexpected(p, "an index, '*' or a quoted name inside '[ ]'");
                return NULL;
            }
            st->len = p->tok.off + p->tok.len - st->off;
            if (!expect(p, TT_RBRACKET, "']'"))
                return NULL;
        } else {
            return first;
        }
        *at = st;
        at = &st->next;
    }
}

static int find_name(const char *const *names, int n, const char *s, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(names[i]) == len && !memcmp(names[i], s, len))
            return i;
    return -1;
}

/* `$name` and what follows: a reserved variable or a parameter of the template declared. */
static tnode *parse_var(tparser *p)
{
    ttok t = p->tok;
    const char *name = p->s + t.off + 1;
    size_t len = t.len - 1;
    tnode *n = new_node(p, TN_VAR, t.off, t.len);
    n->var = find_name(var_names, TV__COUNT, name, len);
    if (p->tpl && !p->in_default)
        for (uint32_t i = 0; i < p->tpl->nparams; i++)
            if (p->tpl->params[i].nlen == len && !memcmp(p->tpl->params[i].name, name, len))
                n->param = (int)i;
    if (n->var < 0 && n->param < 0) {
        const char *cands[64];
        int k = 0;
        for (int i = 0; i < TV__COUNT; i++)
            cands[k++] = var_names[i];
        if (p->tpl && !p->in_default)
            for (uint32_t i = 0; i < p->tpl->nparams && k < 64; i++)
                cands[k++] = cc_xstrndup(p->tpl->params[i].name, p->tpl->params[i].nlen);
        char hint[128];
        cc_suggest(name, len, cands, (size_t)k, hint, sizeof hint);
        for (int i = TV__COUNT; i < k; i++)
            free((char *)cands[i]);
        if (p->in_default)
            fail(p, t.off, t.len, "unknown variable '$%.*s' (a parameter's default cannot use "
                 "other parameters)%s", (int)len, name, hint);
        else if (p->tpl)
            fail(p, t.off, t.len, "unknown variable '$%.*s': not a parameter of template '%s' "
                 "nor a reserved variable%s", (int)len, name, p->tpl->name, hint);
        else
            fail(p, t.off, t.len, "unknown variable '$%.*s'%s", (int)len, name, hint);
        return NULL;
    }
    next(p);
    n->steps = parse_steps(p);
    if (p->failed)
        return NULL;
    if (n->steps && n->param < 0 && n->var > TV_SUBJECT) {
        fail(p, n->steps->off, n->steps->len, "'$%s' is a string, not an object: a path cannot "
             "go into it", var_names[n->var]);
        return NULL;
    }
    for (tstep *st = n->steps; st; st = st->next)
        extend_to(n, st->off + st->len);
    return n;
}

static tnode *parse_call(tparser *p, ttok name)
{
    tnode *n = new_node(p, TN_CALL, name.off, name.len);
    int fn = -1;
    for (int i = 0; i <= VM_FN__COUNT; i++)
        if (strlen(functions[i].name) == name.len && !memcmp(functions[i].name, p->s + name.off, name.len))
            fn = i;
    if (fn < 0) {
        const char *cands[VM_FN__COUNT + 1];
        for (int i = 0; i <= VM_FN__COUNT; i++)
            cands[i] = functions[i].name;
        char hint[128];
        cc_suggest(p->s + name.off, name.len, cands, VM_FN__COUNT + 1, hint, sizeof hint);
        bool is_template = cc_names_find(&p->c->templates, p->s + name.off, name.len) >= 0;
        fail(p, name.off, name.len, "unknown function '%.*s'%s%s", (int)name.len,
             p->s + name.off, hint,
             is_template ? " (a template is used by 'transform NAME(...)', not called inside "
                           "another)" : "");
        return NULL;
    }
    n->fn = fn;
    next(p);   /* '(' */
    int nargs = 0;
    if (p->tok.kind != TT_RPAREN) {
        for (;;) {
            tnode *a = parse_expr(p);
            if (!a)
                return NULL;
            append(&n->kids, a);
            nargs++;
            if (p->tok.kind != TT_COMMA)
                break;
            next(p);
        }
    }
    extend_to(n, p->tok.off + p->tok.len);
    if (!expect(p, TT_RPAREN, "',' or ')'"))
        return NULL;
    if (nargs < functions[fn].lo || nargs > functions[fn].hi) {
        char want[48];
        if (functions[fn].lo == functions[fn].hi)
            snprintf(want, sizeof want, "%d argument%s", functions[fn].lo, functions[fn].lo == 1 ? "" : "s");
        else
            snprintf(want, sizeof want, "%d or %d arguments", functions[fn].lo, functions[fn].hi);
        fail(p, n->off, n->len, "%s takes %s, not %d", functions[fn].name, want, nargs);
        return NULL;
    }
    return n;
}

static tnode *parse_primary(tparser *p)
{
    ttok t = p->tok;
    switch (t.kind) {
    case TT_STRING:
        next(p);
        return parse_string(p, t);
    case TT_NUMBER: {
        const char *why = NULL;
        if (vm_json_number_len(p->s + t.off, t.len, &why) != t.len) {
            fail(p, t.off, t.len, "%s", why ? why : "invalid number");
            return NULL;
        }
    }
        /* fall through */
    case TT_TRUE:
    case TT_FALSE:
    case TT_NULL: {
        tnode *n = new_node(p, TN_CONST, t.off, t.len);
        n->text = p->s + t.off;
        n->n = t.len;
        next(p);
        return n;
    }
    case TT_VAR:
        return parse_var(p);
    case TT_NAME: {
        next(p);
        if (p->tok.kind == TT_LPAREN && p->tok.off == t.off + t.len)
            return parse_call(p, t);
        tnode *n = new_node(p, TN_PATH, t.off, t.len);
        tstep *first = cc_alloc(p->c, sizeof *first);
        first->kind = VM_TS_NAME;
        first->name = p->s + t.off;
        first->nlen = t.len;
        first->off = t.off;
        first->len = t.len;
        first->next = parse_steps(p);
        if (p->failed)
            return NULL;
        n->steps = first;
        for (tstep *s = first; s; s = s->next)
            extend_to(n, s->off + s->len);
        return n;
    }
    case TT_LPAREN: {
        next(p);
        tnode *e = parse_expr(p);
        if (!e || !expect(p, TT_RPAREN, "')'"))
            return NULL;
        return e;
    }
    case TT_LBRACE:
    case TT_LBRACKET:
        return parse_value(p);
    default:
        unexpected(p, "a value (a path, a string, a number, $variable, a function call, '{' or '[')");
        return NULL;
    }
}

static tnode *parse_expr(tparser *p)
{
    tnode *x = parse_primary(p);
    while (x && p->tok.kind == TT_ELSE) {
        next(p);
        tnode *y = parse_primary(p);
        if (!y)
            return NULL;
        tnode *e = new_node(p, TN_ELSE, x->off, x->len);
        extend_to(e, y->off + y->len);
        e->kids = x;
        x->next = y;
        x = e;
    }
    return p->failed ? NULL : x;
}

static tnode *parse_object(tparser *p)
{
    tnode *n = new_node(p, TN_OBJECT, p->tok.off, 1);
    next(p);
    while (p->tok.kind != TT_RBRACE) {
        tnode *m = new_node(p, TN_MEMBER, p->tok.off, p->tok.len);
        ttok k = p->tok;
        if (k.kind == TT_STRING) {
            next(p);
            m->key = parse_string(p, k);
        } else if (k.kind == TT_NAME || k.kind == TT_VAR) {
            m->key = parse_primary(p);   /* a path or variable: its value, as a string */
        } else {
            unexpected(p, "a member's key (a string, a path or $variable) or '}'");
            return NULL;
        }
        if (!m->key)
            return NULL;
        if (m->key->kind == TN_CALL) {
            fail(p, m->key->off, m->key->len, "a key is a string, a path or $variable; write a "
                 "computed key as a string: \"${...}\"");
            return NULL;
        }
        if (p->tok.kind == TT_QUESTION) {
            m->optional = true;
            next(p);
        }
        if (!expect(p, TT_COLON, m->optional ? "':' after '?'" : "':' (or '?:' for a member left out when its value is null or missing)"))
            return NULL;
        if (!(m->value = parse_value(p)))
            return NULL;
        extend_to(m, m->value->off + m->value->len);
        append(&n->kids, m);
        if (p->tok.kind != TT_COMMA)
            break;
        next(p);
    }
    extend_to(n, p->tok.off + p->tok.len);
    return expect(p, TT_RBRACE, "',' or '}'") ? n : NULL;
}

static tnode *parse_array(tparser *p)
{
    tnode *n = new_node(p, TN_ARRAY, p->tok.off, 1);
    next(p);
    while (p->tok.kind != TT_RBRACKET) {
        tnode *v = parse_value(p);
        if (!v)
            return NULL;
        append(&n->kids, v);
        if (p->tok.kind != TT_COMMA)
            break;
        next(p);
    }
    extend_to(n, p->tok.off + p->tok.len);
    return expect(p, TT_RBRACKET, "',' or ']'") ? n : NULL;
}

static tnode *parse_value(tparser *p)
{
    if (p->tok.kind == TT_LBRACE)
        return parse_object(p);
    if (p->tok.kind == TT_LBRACKET)
        return parse_array(p);
    return parse_expr(p);
}

static void init_parser(tparser *p, cc_unit *u, uint32_t off, uint32_t len, struct cc_template *tpl)
{
    memset(p, 0, sizeof *p);
    p->c = u->comp;
    p->u = u;
    p->s = u->text;
    p->pos = off;
    p->end = off + len;
    p->tpl = tpl;
    next(p);
}

/* Reads a whole template body: an object or an array (the captured text), nothing after it. */
static tnode *parse_body(cc_unit *u, const ast *body, struct cc_template *tpl)
{
    tparser p;
    init_parser(&p, u, body->tok.off, body->tok.len, tpl);
    tnode *n = p.failed ? NULL : parse_value(&p);
    if (n && !p.failed && p.tok.kind != TT_END)
        unexpected(&p, "the end of the template");
    return p.failed ? NULL : n;
}

/* Reads a string used as a text template, interpolations and all. */
static tnode *parse_text(cc_unit *u, const ast *str, struct cc_template *tpl)
{
    tparser p;
    init_parser(&p, u, str->tok.off, str->tok.len, tpl);
    ttok t = p.tok;
    tnode *n = p.failed ? NULL : parse_string(&p, t);
    return p.failed ? NULL : n;
}

/* ---- template declarations --------------------------------------------------------------------- */

static struct cc_template *template_of(cc_comp *c, int i)
{
    return &c->tmpls[i];
}

/* Reads a template's parameter list `(a, b = "x", c = data.id)`. */
static bool parse_params(cc_unit *u, ast *list, struct cc_template *t)
{
    tparser p;
    init_parser(&p, u, list->tok.off, list->tok.len, t);
    if (!expect(&p, TT_LPAREN, "'('"))
        return false;
    uint32_t cap = 0;
    while (p.tok.kind != TT_RPAREN && !p.failed) {
        ttok name = p.tok;
        if (name.kind == TT_VAR) {
            name.off++;
            name.len--;
        } else if (name.kind != TT_NAME) {
            unexpected(&p, "a parameter's name or ')'");
            break;
        }
        for (uint32_t i = 0; i < t->nparams; i++)
            if (t->params[i].nlen == name.len && !memcmp(t->params[i].name, u->text + name.off, name.len)) {
                fail(&p, name.off, name.len, "parameter '%.*s' is declared twice", (int)name.len,
                     u->text + name.off);
                return false;
            }
        /* (a parameter may take a reserved variable's name: in the template it hides it, and
         * $event.NAME still reads the event's attribute) */
        if (t->nparams == cap) {
            cap = cap ? cap * 2 : 4;
            struct tparam *np = cc_alloc(u->comp, cap * sizeof *np);
            if (t->nparams)
                memcpy(np, t->params, t->nparams * sizeof *np);
            t->params = np;
        }
        struct tparam *pm = &t->params[t->nparams++];
        memset(pm, 0, sizeof *pm);
        pm->name = u->text + name.off;
        pm->nlen = name.len;
        pm->off = name.off;
        pm->len = name.len;
        next(&p);
        if (p.tok.kind == TT_ASSIGN) {
            next(&p);
            p.in_default = true;
            pm->dflt = parse_value(&p);
            p.in_default = false;
            if (!pm->dflt)
                return false;
        }
        if (p.tok.kind != TT_COMMA)
            break;
        next(&p);
    }
    if (!p.failed)
        expect(&p, TT_RPAREN, "',' or ')'");
    if (!p.failed && p.tok.kind != TT_END)
        unexpected(&p, "nothing after ')'");
    return !p.failed;
}

void cc_check_templates(cc_comp *c)
{
    c->ntmpls = c->templates.n;
    c->tmpls = cc_alloc(c, (c->ntmpls + 1) * sizeof *c->tmpls);
    for (uint32_t i = 0; i < c->templates.n; i++) {
        struct cc_template *t = &c->tmpls[i];
        cc_unit *u = c->templates.v[i].unit;
        ast *d = c->templates.v[i].node;
        t->name = c->templates.v[i].name;
        t->unit = u;
        t->decl = d;
        int before = c->nerrors;
        if (d->a && !parse_params(u, d->a, t))
            continue;
        t->text = d->b->kind == A_VALUE;
        t->body = t->text ? parse_text(u, d->b, t) : parse_body(u, d->b, t);
        t->ok = t->body && c->nerrors == before;
    }
}

/* ---- compiling -------------------------------------------------------------------------------- */

/* What a tnode is compiled in: its unit, and for a template's body, the arguments bound to its
 * parameters (compiled in the caller's environment). */
typedef struct cenv cenv;
struct cenv {
    cc_comp *c;
    cc_unit *u;
    const struct cc_template *tpl;
    tnode **args;            /* per parameter: the argument, or NULL (then its default) */
    const cenv *caller;      /* where the arguments are compiled */
    char *pending;           /* literal output not yet written as one TEXT */
    size_t npending, cappending;
    uint32_t pend_off, pend_len;  /* the span the pending text came from */
    uint32_t xform_start;    /* where the transform's code begins (jumps count from there) */
    bool failed;
};

static void put_inst(cenv *e, unsigned op, uint32_t a, uint32_t b, uint32_t off, uint32_t len);

/* Writes the pending literal text as one TEXT instruction. */
static void flush(cenv *e)
{
    if (!e->npending)
        return;
    vm_str s = cc_str(e->c, e->pending, e->npending);
    size_t n = e->npending;
    e->npending = 0;
    put_inst(e, VM_TO_TEXT, (uint32_t)n, s.off, e->pend_off, e->pend_len);
}

static void put_inst(cenv *e, unsigned op, uint32_t a, uint32_t b, uint32_t off, uint32_t len)
{
    if (op != VM_TO_TEXT)
        flush(e);
    vec_push(e->c->tcode, VM_INST(op, a, b));
    vec_push(e->c->tcode_spans, cc_span(e->u, off, len));
}

static void text(cenv *e, const char *s, size_t n, const tnode *from)
{
    if (e->npending + n + 1 > e->cappending) {
        e->cappending = (e->npending + n + 1) * 2;
        e->pending = cc_xrealloc(e->pending, e->cappending);
    }
    if (!e->npending) {
        e->pend_off = from->off;
        e->pend_len = from->len;
    }
    memcpy(e->pending + e->npending, s, n);
    e->npending += n;
}

static void textz(cenv *e, const char *s, const tnode *from)
{
    text(e, s, strlen(s), from);
}

/* Appends s[0..n) JSON-escaped (no quotes) to a growing buffer. */
static void escape_into(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (*len + 8 > *cap) {
            *cap = (*len + 8) * 2;
            *buf = cc_xrealloc(*buf, *cap);
        }
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            (*buf)[(*len)++] = '\\';
            (*buf)[(*len)++] = (char)ch;
        } else if (ch < 0x20) {
            static const char short_esc[] = { ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't' };
            if (ch < sizeof short_esc && short_esc[ch]) {
                (*buf)[(*len)++] = '\\';
                (*buf)[(*len)++] = short_esc[ch];
            } else {
                *len += (size_t)snprintf(*buf + *len, 8, "\\u%04x", ch);
            }
        } else {
            (*buf)[(*len)++] = (char)ch;
        }
    }
}

static void text_escaped(cenv *e, const char *s, size_t n, const tnode *from)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    escape_into(&buf, &len, &cap, s, n);
    text(e, buf ? buf : "", len, from);
    free(buf);
}

static void efail(cenv *e, const tnode *at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void efail(cenv *e, const tnode *at, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cc_error(e->u, at->off, at->len ? at->len : 1, "%s", msg);
    e->failed = true;
}

/* Is n a constant (no paths, variables or calls inside)? */
static bool constant(const tnode *n)
{
    switch (n->kind) {
    case TN_CONST: case TN_TEXT: return true;
    case TN_STRING:
        for (const tnode *k = n->kids; k; k = k->next)
            if (k->kind != TN_TEXT)
                return false;
        return true;
    case TN_OBJECT: case TN_ARRAY:
        for (const tnode *k = n->kids; k; k = k->next)
            if (!constant(k))
                return false;
        return true;
    case TN_MEMBER: return !n->optional && constant(n->key) && constant(n->value);
    default: return false;
    }
}

/* The JSON text of a constant, compact. */
static void const_json(const tnode *n, char **buf, size_t *len, size_t *cap)
{
#define PUT(s, k) do { if (*len + (k) + 1 > *cap) { *cap = (*len + (k) + 1) * 2; *buf = cc_xrealloc(*buf, *cap); } \
                       memcpy(*buf + *len, (s), (k)); *len += (k); } while (0)
    switch (n->kind) {
    case TN_CONST: PUT(n->text, n->n); break;
    case TN_STRING:
        PUT("\"", 1);
        for (const tnode *k = n->kids; k; k = k->next)
            escape_into(buf, len, cap, k->text, k->n);
        PUT("\"", 1);
        break;
    case TN_ARRAY:
        PUT("[", 1);
        for (const tnode *k = n->kids; k; k = k->next) {
            if (k != n->kids)
                PUT(",", 1);
            const_json(k, buf, len, cap);
        }
        PUT("]", 1);
        break;
    case TN_OBJECT:
        PUT("{", 1);
        for (const tnode *k = n->kids; k; k = k->next) {
            if (k != n->kids)
                PUT(",", 1);
            const_json(k->key, buf, len, cap);
            PUT(":", 1);
            const_json(k->value, buf, len, cap);
        }
        PUT("}", 1);
        break;
    default: break;
    }
#undef PUT
}

/* The decoded text of a constant string (its parts joined). */
static char *const_string(cenv *e, const tnode *n, size_t *len)
{
    size_t total = 0;
    for (const tnode *k = n->kids; k; k = k->next)
        total += k->n;
    char *s = cc_alloc(e->c, total + 1);
    *len = 0;
    for (const tnode *k = n->kids; k; k = k->next) {
        memcpy(s + *len, k->text, k->n);
        *len += k->n;
    }
    return s;
}

/* Registers a template path from its steps (with `extra` steps appended). */
static uint32_t tpath(cenv *e, const tstep *steps, const tstep *extra)
{
    cc_comp *c = e->c;
    vm_tpath tp = { c->tsteps.n, 0, VM_NONE };
    const char *segs[CC_MAX_PATH];
    size_t lens[CC_MAX_PATH];
    uint32_t nseg = 0;
    bool names_only = true;
    for (int pass = 0; pass < 2; pass++)
        for (const tstep *s = pass ? extra : steps; s; s = s->next) {
            vm_tstep st = { s->kind, s->index, { 0, 0 } };
            if (s->kind == VM_TS_NAME)
                st.name = cc_str(c, s->name, s->nlen);
            vec_push(c->tsteps, st);
            tp.nstep++;
            if (s->kind != VM_TS_NAME || nseg == CC_MAX_PATH || memchr(s->name, '.', s->nlen))
                names_only = false;
            else {
                segs[nseg] = s->name;
                lens[nseg++] = s->nlen;
            }
        }
    /* A path of names only is also one the scanner extracts when it reads the event: its leaf
     * is then found without walking the event again. */
    if (names_only && nseg > 0)
        tp.path = cc_path(c, segs, lens, nseg);
    vec_push(c->tpaths, tp);
    return c->tpaths.n - 1;
}

static void push_value(cenv *e, const tnode *n);

/* Pushes the value of $name (with `extra` steps after it). */
static void push_var(cenv *e, const tnode *n, const tstep *extra)
{
    if (n->param >= 0) {
        const struct tparam *pm = &e->tpl->params[n->param];
        const tnode *arg = e->args[n->param];
        const cenv *where = e->caller;
        cenv sub = *where;
        if (!arg) {   /* the default, compiled in the template's own environment */
            arg = pm->dflt;
            sub = *e;
            sub.args = NULL;
            sub.tpl = NULL;
        }
        sub.pending = NULL;
        sub.npending = sub.cappending = 0;
        sub.xform_start = e->xform_start;
        const tstep *more = n->steps;
        if (more && extra)
            efail(e, n, "internal: nested steps");
        if (!more)
            more = extra;
        if (more) {
            /* A path into the argument: it must be a path itself. */
            if (arg->kind == TN_PATH || (arg->kind == TN_VAR && arg->param < 0 && arg->var <= TV_SUBJECT)) {
                flush(e);
                tstep head = { VM_TS_NAME, 0, NULL, 0, 0, 0, NULL };
                const tstep *base = arg->steps;
                if (arg->kind == TN_VAR && arg->var != TV_EVENT) {
                    head.name = var_names[arg->var];
                    head.nlen = strlen(head.name);
                    head.next = (tstep *)arg->steps;
                    base = &head;
                }
                /* (steps of the argument, then those after $name) */
                tstep *joined = NULL, **at = &joined;
                for (const tstep *s = base; s; s = s->next) {
                    tstep *cp = cc_alloc(e->c, sizeof *cp);
                    *cp = *s;
                    cp->next = NULL;
                    *at = cp;
                    at = &cp->next;
                }
                *at = (tstep *)more;
                put_inst(e, VM_TO_PATH, tpath(e, joined, NULL), 0, n->off, n->len);
                return;
            }
            cc_unit *au = arg == pm->dflt ? e->tpl->unit : where->u;
            cc_error(au, arg->off, arg->len ? arg->len : 1,
                     "template '%s' reads a path inside $%.*s, so its %s must be a path into "
                     "the event, not %s", e->tpl->name, (int)pm->nlen, pm->name,
                     arg == pm->dflt ? "default" : "argument",
                     constant(arg) ? "a constant" : "a computed value");
            e->failed = true;
            return;
        }
        flush(e);
        sub.u = arg == pm->dflt ? e->tpl->unit : where->u;
        push_value(&sub, arg);
        e->failed |= sub.failed;
        free(sub.pending);
        return;
    }
    switch (n->var) {
    case TV_BUS: put_inst(e, VM_TO_VAR, VM_VAR_BUS, 0, n->off, n->len); return;
    case TV_RULE: put_inst(e, VM_TO_VAR, VM_VAR_RULE, 0, n->off, n->len); return;
    case TV_INGEST_TIME: put_inst(e, VM_TO_VAR, VM_VAR_INGEST_TIME, 0, n->off, n->len); return;
    default: break;
    }
    tstep head = { VM_TS_NAME, 0, NULL, 0, n->off, n->len, n->steps };
    const tstep *from = n->steps;
    if (n->var != TV_EVENT) {
        head.name = var_names[n->var];
        head.nlen = strlen(head.name);
        from = &head;
    }
    put_inst(e, VM_TO_PATH, tpath(e, from, extra), 0, n->off, n->len);
}

/* Pushes the value of an expression. */
static void push_value(cenv *e, const tnode *n)
{
    switch (n->kind) {
    case TN_CONST: {
        vm_str s = cc_str(e->c, n->text, n->n);
        put_inst(e, VM_TO_CONST, (uint32_t)n->n, s.off, n->off, n->len);
        return;
    }
    case TN_STRING: {
        if (constant(n)) {
            size_t len;
            char *s = const_string(e, n, &len);
            vm_str v = cc_str(e->c, s, len);
            put_inst(e, VM_TO_STR, (uint32_t)len, v.off, n->off, n->len);
            return;
        }
        uint32_t parts = 0;
        for (const tnode *k = n->kids; k; k = k->next, parts++) {
            if (k->kind == TN_TEXT) {
                vm_str v = cc_str(e->c, k->text, k->n);
                put_inst(e, VM_TO_STR, (uint32_t)k->n, v.off, k->off, k->len);
            } else {
                push_value(e, k);
            }
        }
        put_inst(e, VM_TO_CAT, parts, 0, n->off, n->len);
        return;
    }
    case TN_PATH:
        put_inst(e, VM_TO_PATH, tpath(e, n->steps, NULL), 0, n->off, n->len);
        return;
    case TN_VAR:
        push_var(e, n, NULL);
        return;
    case TN_CALL: {
        uint32_t nargs = 0;
        if (n->fn == FN_DEFAULT) {
            /* default(x, y) is x ?? y */
            push_value(e, n->kids);
            uint32_t at = e->c->tcode.n;
            put_inst(e, VM_TO_ELSE, 0, 0, n->off, n->len);
            push_value(e, n->kids->next);
            flush(e);
            e->c->tcode.v[at] = VM_INST(VM_TO_ELSE, 0, e->c->tcode.n - e->xform_start);
            return;
        }
        for (const tnode *k = n->kids; k; k = k->next, nargs++)
            push_value(e, k);
        put_inst(e, VM_TO_CALL, (uint32_t)n->fn, nargs, n->off, n->len);
        return;
    }
    case TN_ELSE: {
        push_value(e, n->kids);
        flush(e);
        uint32_t at = e->c->tcode.n;
        put_inst(e, VM_TO_ELSE, 0, 0, n->off, n->len);
        push_value(e, n->kids->next);
        flush(e);
        e->c->tcode.v[at] = VM_INST(VM_TO_ELSE, 0, e->c->tcode.n - e->xform_start);
        return;
    }
    case TN_OBJECT:
    case TN_ARRAY: {
        if (!constant(n)) {
            efail(e, n, "an object or array with paths or calls inside can be a payload's member, "
                  "not an operand of '?\?' or a function's argument");
            return;
        }
        char *buf = NULL;
        size_t len = 0, cap = 0;
        const_json(n, &buf, &len, &cap);
        vm_str s = cc_str(e->c, buf ? buf : "", len);
        free(buf);
        put_inst(e, VM_TO_CONST, (uint32_t)len, s.off, n->off, n->len);
        return;
    }
    default:
        efail(e, n, "internal: unexpected template node");
    }
}

static void emit_value(cenv *e, const tnode *n);

/* Writes a string with interpolations inside a JSON string (the quotes are the caller's). */
static void emit_in_string(cenv *e, const tnode *n)
{
    for (const tnode *k = n->kids; k; k = k->next) {
        if (k->kind == TN_TEXT) {
            text_escaped(e, k->text, k->n, k);
        } else {
            push_value(e, k);
            put_inst(e, VM_TO_EMIT, VM_EMIT_INSTR, 0, k->off, k->len);
        }
    }
}

static void emit_key(cenv *e, const tnode *key)
{
    if (key->kind == TN_STRING) {
        textz(e, "\"", key);
        emit_in_string(e, key);
        textz(e, "\":", key);
    } else {
        push_value(e, key);
        put_inst(e, VM_TO_EMIT, VM_EMIT_KEY, 0, key->off, key->len);
        textz(e, ":", key);
    }
}

/* Writes a value where the payload has a JSON value. */
static void emit_value(cenv *e, const tnode *n)
{
    switch (n->kind) {
    case TN_OBJECT: {
        bool dynamic = false;   /* a member left out when null: commas decided as it runs */
        for (const tnode *m = n->kids; m; m = m->next)
            dynamic |= m->optional;
        if (dynamic)
            put_inst(e, VM_TO_BEGIN, 0, 0, n->off, n->len);
        else
            textz(e, "{", n);
        for (const tnode *m = n->kids; m && !e->failed; m = m->next) {
            if (m->optional) {
                push_value(e, m->value);
                flush(e);
                uint32_t at = e->c->tcode.n;
                put_inst(e, VM_TO_SKIP, 0, 0, m->off, m->len);
                put_inst(e, VM_TO_SEP, 0, 0, m->off, m->len);
                emit_key(e, m->key);
                put_inst(e, VM_TO_EMIT, VM_EMIT_JSON, 0, m->value->off, m->value->len);
                flush(e);
                e->c->tcode.v[at] = VM_INST(VM_TO_SKIP, 0, e->c->tcode.n - e->xform_start);
            } else {
                if (dynamic)
                    put_inst(e, VM_TO_SEP, 0, 0, m->off, m->len);
                else if (m != n->kids)
                    textz(e, ",", m);
                emit_key(e, m->key);
                emit_value(e, m->value);
            }
        }
        if (dynamic)
            put_inst(e, VM_TO_END, 0, 0, n->off, n->len);
        else
            textz(e, "}", n);
        return;
    }
    case TN_ARRAY:
        textz(e, "[", n);
        for (const tnode *k = n->kids; k; k = k->next) {
            if (k != n->kids)
                textz(e, ",", k);
            emit_value(e, k);
        }
        textz(e, "]", n);
        return;
    case TN_STRING:
        textz(e, "\"", n);
        emit_in_string(e, n);
        textz(e, "\"", n);
        return;
    case TN_CONST:
        text(e, n->text, n->n, n);
        return;
    default:
        push_value(e, n);
        put_inst(e, VM_TO_EMIT, VM_EMIT_JSON, 0, n->off, n->len);
        return;
    }
}

/* Writes a text template: literal parts as they are, values as their text. */
static void emit_text(cenv *e, const tnode *n)
{
    for (const tnode *k = n->kids; k; k = k->next) {
        if (k->kind == TN_TEXT) {
            text(e, k->text, k->n, k);
        } else {
            push_value(e, k);
            put_inst(e, VM_TO_EMIT, VM_EMIT_TEXT, 0, k->off, k->len);
        }
    }
}

/* ---- transforms ---------------------------------------------------------------------------------- */

/* Writes a parsed JSON value compactly (a `transform const` body). */
static void write_json(const jv *j, char **buf, size_t *len, size_t *cap)
{
#define PUT(s, k) do { if (*len + (k) + 1 > *cap) { *cap = (*len + (k) + 1) * 2; *buf = cc_xrealloc(*buf, *cap); } \
                       memcpy(*buf + *len, (s), (k)); *len += (k); } while (0)
    switch (j->type) {
    case J_OBJECT:
    case J_ARRAY:
        PUT(j->type == J_OBJECT ? "{" : "[", 1);
        for (const jv *k = j->kids; k; k = k->next) {
            if (k != j->kids)
                PUT(",", 1);
            if (j->type == J_OBJECT) {
                PUT("\"", 1);
                escape_into(buf, len, cap, k->key, k->klen);
                PUT("\":", 2);
            }
            write_json(k, buf, len, cap);
        }
        PUT(j->type == J_OBJECT ? "}" : "]", 1);
        break;
    case J_STRING:
        PUT("\"", 1);
        escape_into(buf, len, cap, j->str, j->slen);
        PUT("\"", 1);
        break;
    case J_NUMBER: PUT(j->str, j->slen); break;
    case J_TRUE: PUT("true", 4); break;
    case J_FALSE: PUT("false", 5); break;
    case J_NULL: PUT("null", 4); break;
    }
#undef PUT
}

static uint32_t start_xform(cenv *e)
{
    e->xform_start = e->c->tcode.n;
    return e->xform_start;
}

/* Finishes the code begun at e->xform_start as a transform (the clause lies in unit u);
 * returns its index or VM_NONE. */
static uint32_t finish_xform(cenv *e, cc_unit *u, const ast *clause, bool is_text)
{
    flush(e);
    free(e->pending);
    e->pending = NULL;
    cc_comp *c = e->c;
    if (e->failed) {
        c->tcode.n = c->tcode_spans.n = e->xform_start;
        return VM_NONE;
    }
    vm_xform x = { VM_X_TEMPLATE, is_text ? VM_XF_TEXT : 0, e->xform_start,
                   c->tcode.n - e->xform_start, { 0, 0 }, 0, cc_span(u, clause->off, clause->len) };
    vec_push(c->xforms, x);
    return c->xforms.n - 1;
}

/* `transform path "$.data.items[0]"`: a JSONPath ($, .name, ['name'], [n], [-n], [*]). */
static tstep *parse_jsonpath(cc_unit *u, const ast *str, bool *ok)
{
    uint32_t from = str->tok.off + 1, to = str->tok.off + str->tok.len - 1;
    *ok = false;
    for (uint32_t i = from; i < to; i++)
        if (u->text[i] == '\\') {
            cc_error(u, i, 2, "a JSONPath here is written without escapes (use ['name'] for names "
                     "with odd characters)");
            return NULL;
        }
    if (from >= to || u->text[from] != '$') {
        cc_error(u, str->tok.off, str->tok.len, "a JSONPath starts with '$', as \"$.data.id\"");
        return NULL;
    }
    tparser p;
    init_parser(&p, u, from + 1, to - from - 1, NULL);
    tstep *steps = p.failed ? NULL : parse_steps(&p);
    if (!p.failed && p.tok.kind != TT_END)
        unexpected(&p, "'.' or '[' to continue the path");
    *ok = !p.failed;
    return steps;
}

/* Binds the arguments of a call `(a: x, b: y)` (or positional `(x, y)`) to t's parameters. */
static bool bind_args(cc_unit *u, const ast *list, const struct cc_template *t, tnode **args,
                      uint32_t name_off, uint32_t name_len)
{
    tparser p;
    init_parser(&p, u, list ? list->tok.off : 0, list ? list->tok.len : 0, NULL);
    if (list) {
        expect(&p, TT_LPAREN, "'('");
        uint32_t positional = 0;
        bool named = false;
        while (!p.failed && p.tok.kind != TT_RPAREN) {
            int pi = -1;
            ttok name = p.tok;
            /* `name:` names the parameter; else the argument is the next one in order */
            if (name.kind == TT_NAME) {
                uint32_t save = p.pos;
                ttok saved = p.tok;
                next(&p);
                if (p.tok.kind == TT_COLON) {
                    next(&p);
                    for (uint32_t i = 0; i < t->nparams; i++)
                        if (t->params[i].nlen == name.len && !memcmp(t->params[i].name, u->text + name.off, name.len))
                            pi = (int)i;
                    if (pi < 0) {
                        const char *cands[64];
                        size_t k = 0;
                        for (uint32_t i = 0; i < t->nparams && k < 64; i++)
                            cands[k++] = cc_xstrndup(t->params[i].name, t->params[i].nlen);
                        char hint[128];
                        cc_suggest(u->text + name.off, name.len, cands, k, hint, sizeof hint);
                        for (size_t i = 0; i < k; i++)
                            free((char *)cands[i]);
                        fail(&p, name.off, name.len, "template '%s' has no parameter '%.*s'%s",
                             t->name, (int)name.len, u->text + name.off, hint);
                        break;
                    }
                    named = true;
                } else {
                    p.pos = save;
                    p.tok = saved;
                }
            }
            if (pi < 0) {
                if (named) {
                    fail(&p, p.tok.off, p.tok.len, "an argument without a name cannot follow named ones");
                    break;
                }
                if (positional >= t->nparams) {
                    fail(&p, p.tok.off, p.tok.len, "template '%s' takes %u argument%s", t->name,
                         t->nparams, t->nparams == 1 ? "" : "s");
                    break;
                }
                pi = (int)positional++;
            }
            if (args[pi]) {
                fail(&p, name.off, name.len, "parameter '%.*s' is given twice",
                     (int)t->params[pi].nlen, t->params[pi].name);
                break;
            }
            if (!(args[pi] = parse_value(&p)))
                break;
            if (p.tok.kind != TT_COMMA)
                break;
            next(&p);
        }
        if (!p.failed)
            expect(&p, TT_RPAREN, "',' or ')'");
        if (p.failed)
            return false;
    }
    for (uint32_t i = 0; i < t->nparams; i++)
        if (!args[i] && !t->params[i].dflt) {
            cc_error(u, name_off, name_len, "template '%s' needs parameter '%.*s'", t->name,
                     (int)t->params[i].nlen, t->params[i].name);
            return false;
        }
    return true;
}

/* A function transform: `transform function exec "cmd" [timeout 2s]` or `... http "url"`. */
static uint32_t function_xform(cc_comp *c, cc_unit *u, const ast *tf)
{
    const ast *kind = tf->c, *arg = tf->b;
    const char *k = u->text + kind->tok.off;
    bool exec = kind->tok.len == 4 && !memcmp(k, "exec", 4);
    bool http = kind->tok.len == 4 && !memcmp(k, "http", 4);
    if (!exec && !http) {
        cc_error(u, kind->tok.off, kind->tok.len, "unknown function transform '%.*s': 'exec' "
                 "runs a command, 'http' posts to a URL", (int)kind->tok.len, k);
        return VM_NONE;
    }
    size_t n;
    const char *s = cc_string(u, &arg->tok, &n);
    if (!s)
        return VM_NONE;
    if (n == 0 || memchr(s, 0, n)) {
        cc_error(u, arg->tok.off, arg->tok.len, exec ? "the command is empty" : "the URL is empty");
        return VM_NONE;
    }
    if (http && strncmp(s, "http://", 7) && strncmp(s, "https://", 8)) {
        cc_error(u, arg->tok.off, arg->tok.len, "the URL must start with http:// or https://");
        return VM_NONE;
    }
    double ms = 5000;
    for (const ast *o = kind->a; o; o = o->next) {
        bool is_timeout = o->kind == A_VALUE && o->op == TK_IDENT && o->tok.len == 7 &&
                          !memcmp(u->text + o->tok.off, "timeout", 7);
        if (!is_timeout) {
            cc_error(u, o->off, o->len, "unknown option of a function transform: only "
                     "'timeout DURATION' (as timeout 2s)");
            return VM_NONE;
        }
        const ast *v = o->next;
        if (!v || v->kind != A_VALUE || v->op != TK_QUANTITY || cc_duration(u, &v->tok, &ms) != 1 ||
            ms <= 0 || ms > 3600e3) {
            cc_error(u, v ? v->off : o->off, v ? v->len : o->len,
                     "'timeout' takes a duration from 1ms to 1h, as timeout 2s");
            return VM_NONE;
        }
        o = v;
    }
    vm_xform x = { exec ? VM_X_EXEC : VM_X_HTTP, 0, 0, 0, cc_str(c, s, n), (uint32_t)ms,
                   cc_span(u, tf->off, tf->len) };
    vec_push(c->xforms, x);
    return c->xforms.n - 1;
}

uint32_t cc_compile_transform(cc_comp *c, cc_unit *u, const ast *tf)
{
    cenv e = { .c = c, .u = u };
    start_xform(&e);
    const ast *kind = tf->a, *arg = tf->b;
    const char *k = kind ? u->text + kind->tok.off : "";
    size_t kn = kind ? kind->tok.len : 0;
#define IS(word) (kn == strlen(word) && !memcmp(k, word, kn))
    if (!kind) {
        /* transform { ... } / [ ... ] / "text ${...}" */
        if (arg->kind == A_VALUE) {
            tnode *n = parse_text(u, arg, NULL);
            if (!n)
                return VM_NONE;
            emit_text(&e, n);
            return finish_xform(&e, u, tf, true);
        }
        tnode *n = parse_body(u, arg, NULL);
        if (!n)
            return VM_NONE;
        emit_value(&e, n);
        return finish_xform(&e, u, tf, false);
    }
    if (tf->c)
        return IS("function") ? function_xform(c, u, tf)
                              : (cc_error(u, kind->tok.off, kind->tok.len, "expected 'function' "
                                          "before '%.*s'", (int)tf->c->tok.len, u->text + tf->c->tok.off),
                                 VM_NONE);
    if (IS("event") && !arg)
        return VM_NONE;   /* the whole event: no transform to run */
    if (IS("path") && arg && arg->kind == A_VALUE && arg->op == TK_STRING) {
        bool ok;
        tstep *steps = parse_jsonpath(u, arg, &ok);
        if (!ok)
            return VM_NONE;
        tnode at = { .off = arg->off, .len = arg->len };
        put_inst(&e, VM_TO_PATH, tpath(&e, steps, NULL), 0, at.off, at.len);
        put_inst(&e, VM_TO_EMIT, VM_EMIT_JSON, 0, at.off, at.len);
        return finish_xform(&e, u, tf, false);
    }
    if (IS("const") && arg && arg->kind == A_JSON) {
        jv *j = cc_json_parse(u, arg->tok.off, arg->tok.len);
        if (!j)
            return VM_NONE;
        char *buf = NULL;
        size_t len = 0, cap = 0;
        write_json(j, &buf, &len, &cap);
        tnode at = { .off = arg->off, .len = arg->len };
        text(&e, buf, len, &at);
        free(buf);
        return finish_xform(&e, u, tf, false);
    }
    if (IS("const") && arg && arg->kind == A_VALUE && arg->op == TK_STRING) {
        size_t n;
        const char *s = cc_string(u, &arg->tok, &n);
        if (!s)
            return VM_NONE;
        tnode at = { .off = arg->off, .len = arg->len };
        text(&e, s, n, &at);
        return finish_xform(&e, u, tf, true);
    }
    /* a template: `transform NAME` or `transform NAME(args)` */
    int ti = cc_names_find(&c->templates, k, kn);
    if (ti < 0 || (arg && arg->kind != A_JSON) || (arg && u->text[arg->tok.off] != '(')) {
        if (ti >= 0 || IS("path") || IS("const") || IS("event")) {
            const char *how = IS("path") ? "'transform path' takes a JSONPath string, as path \"$.data\""
                            : IS("const") ? "'transform const' takes JSON or a string"
                            : IS("event") ? "'transform event' takes nothing"
                            : "a template is used as 'transform NAME(param: value, ...)'";
            cc_error(u, tf->off, tf->len, "%s", how);
            return VM_NONE;
        }
        const char *cands[256];
        size_t nc = 0;
        static const char *const kinds[] = { "event", "path", "const", "function" };
        for (size_t i = 0; i < 4; i++)
            cands[nc++] = kinds[i];
        for (uint32_t i = 0; i < c->templates.n && nc < 256; i++)
            cands[nc++] = c->templates.v[i].name;
        char hint[128];
        cc_suggest(k, kn, cands, nc, hint, sizeof hint);
        if (cc_is_broken(c, "template", k, kn))
            return VM_NONE;
        cc_error(u, kind->tok.off, kind->tok.len, "unknown template '%.*s'%s (a transform is "
                 "event, path, const, function, {...}, \"text\" or a template; a standard one "
                 "needs its import, as import \"stdlib/slack\")", (int)kn, k, hint);
        return VM_NONE;
    }
#undef IS
    const struct cc_template *t = template_of(c, ti);
    if (!t->ok)
        return VM_NONE;   /* its errors are reported where it is declared */
    tnode **args = cc_alloc(c, (t->nparams + 1) * sizeof *args);
    if (!bind_args(u, arg, t, args, kind->tok.off, kind->tok.len))
        return VM_NONE;
    cenv caller = { .c = c, .u = u };
    cenv body = { .c = c, .u = t->unit, .tpl = t, .args = args, .caller = &caller,
                  .xform_start = e.xform_start };
    if (t->text)
        emit_text(&body, t->body);
    else
        emit_value(&body, t->body);
    body.failed |= caller.failed;
    return finish_xform(&body, u, tf, t->text);
}
