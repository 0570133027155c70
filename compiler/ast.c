/*
 * ast.c — the compilation's arena, its diagnostics, and the AST builders the grammar calls.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cc.h"
#include "parser.h"

/* ---- memory ---------------------------------------------------------------------------------- */

struct cc_chunk {
    struct cc_chunk *next;
    size_t used, size;
    max_align_t data[];
};

void *cc_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fputs("ebc: out of memory\n", stderr);
        abort();
    }
    return p;
}

void *cc_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fputs("ebc: out of memory\n", stderr);
        abort();
    }
    return q;
}

char *cc_xstrndup(const char *s, size_t n)
{
    char *p = cc_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void vec_reserve(void **v, uint32_t *cap, size_t elem, uint32_t need)
{
    if (need <= *cap)
        return;
    uint32_t n = *cap ? *cap : 8;
    while (n < need)
        n *= 2;
    *v = cc_xrealloc(*v, (size_t)n * elem);
    *cap = n;
}

#define ARENA_CHUNK ((size_t)1 << 20)

void *cc_alloc(cc_comp *c, size_t size)
{
    size = (size + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    struct cc_chunk *k = c->chunks;
    if (!k || k->used + size > k->size) {
        /* zeroed once, whole (fresh pages from the kernel need no clearing): the arena is
         * never reused, so what it hands out needs no memset; that was 8% of compiling 100k
         * rules */
        size_t cap = size > ARENA_CHUNK ? size : ARENA_CHUNK;
        k = calloc(1, sizeof *k + cap);
        if (!k)
            abort();
        k->size = cap;
        k->next = c->chunks;
        c->chunks = k;
    }
    void *p = (char *)k->data + k->used;
    k->used += size;
    return p;
}

/* The scratch arena: chunks kept in a list and filled in order; a reset starts again at the
 * first, so the memory of one pattern's JSON tree serves the next.  Kept in the main arena, the
 * trees of 100k patterns were ~60% of the 835 MB that compiling them touched, and each of its
 * pages a fault: ebc check of 100k rules spent 1.7 s in the kernel. */
static void *reuse_alloc(struct cc_chunk **first, struct cc_chunk **at, size_t size, size_t chunk)
{
    size = (size + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    struct cc_chunk *k = *at;
    while (k && k->used + size > k->size)
        k = k->next;
    if (!k) {
        size_t cap = size > chunk ? size : chunk;
        k = cc_xmalloc(sizeof *k + cap);
        k->size = cap;
        k->used = 0;
        k->next = NULL;
        struct cc_chunk **end = first;
        while (*end)
            end = &(*end)->next;
        *end = k;
    }
    *at = k;
    void *p = (char *)k->data + k->used;
    k->used += size;
    memset(p, 0, size);
    return p;
}

static void reuse_reset(struct cc_chunk *first, struct cc_chunk **at)
{
    for (struct cc_chunk *k = first; k; k = k->next)
        k->used = 0;
    *at = first;
}

static void reuse_free(struct cc_chunk **first, struct cc_chunk **at)
{
    while (*first) {
        struct cc_chunk *k = *first;
        *first = k->next;
        free(k);
    }
    *at = NULL;
}

void *cc_scratch_alloc(cc_comp *c, size_t size)
{
    return reuse_alloc(&c->scratch, &c->scratch_at, size, 1048576);
}

void cc_scratch_reset(cc_comp *c)
{
    reuse_reset(c->scratch, &c->scratch_at);
}

/* The rule arena works as the scratch arena, for one rule's IR: kept in the main arena, the IR
 * of 100,000 issue193 rules was ~20% of the pages compiling them touched (page faults).  Its
 * chunks are small (a rule's IR is a few KiB): a compilation of a few rules, as the tests make
 * by the thousand, then allocates 64 KiB for it, not 1 MiB. */
void *cc_rule_alloc(cc_comp *c, size_t size)
{
    return reuse_alloc(&c->rulemem, &c->rulemem_at, size, 65536);
}

void cc_rule_reset(cc_comp *c)
{
    reuse_reset(c->rulemem, &c->rulemem_at);
}

void cc_arena_free(cc_comp *c)
{
    while (c->chunks) {
        struct cc_chunk *k = c->chunks;
        c->chunks = k->next;
        free(k);
    }
    reuse_free(&c->scratch, &c->scratch_at);
    reuse_free(&c->rulemem, &c->rulemem_at);
}

/* ---- diagnostics ----------------------------------------------------------------------------- */

void cc_diag(cc_comp *c, int warning, uint32_t src, uint32_t off, uint32_t len, const char *fmt,
             va_list ap)
{
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    cc_msg m = { warning, src, off, len, cc_xstrndup(buf, strlen(buf)), c->msgs.n };
    vec_push(c->msgs, m);
    if (warning)
        c->nwarnings++;
    else
        c->nerrors++;
}

void cc_error(cc_unit *u, uint32_t off, uint32_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cc_diag(u->comp, 0, u->src, off, len, fmt, ap);
    va_end(ap);
}

void cc_warning(cc_unit *u, uint32_t off, uint32_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cc_diag(u->comp, 1, u->src, off, len, fmt, ap);
    va_end(ap);
}

void ast_error(cc_unit *u, uint32_t off, uint32_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cc_diag(u->comp, 0, u->src, off, len, fmt, ap);
    va_end(ap);
}

static int msg_order(const void *pa, const void *pb)
{
    const cc_msg *a = pa, *b = pb;
    if (a->src != b->src)
        return a->src < b->src ? -1 : 1;
    if (a->off != b->off)
        return a->off < b->off ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Prints one diagnostic: "file:line:col: error: msg", the source line, and a caret underline
 * of the span (cut at the end of the line).  Columns count code points, starting at 1. */
static void print_msg(const cc_unit *u, const cc_msg *m, FILE *out)
{
    const char *text = u->text;
    size_t off = m->off <= u->len ? m->off : u->len;
    size_t bol = off, line = 1;
    while (bol > 0 && text[bol - 1] != '\n')
        bol--;
    for (size_t i = 0; i < bol; i++)
        line += text[i] == '\n';
    size_t eol = off;
    while (eol < u->len && text[eol] != '\n')
        eol++;
    size_t col = 1;
    for (size_t i = bol; i < off; i++)
        col += ((unsigned char)text[i] & 0xC0) != 0x80;
    fprintf(out, "%s:%zu:%zu: %s: %s\n", u->name, line, col, m->warning ? "warning" : "error",
            m->msg);
    size_t shown = eol;
    if (shown > bol && text[shown - 1] == '\r')
        shown--;
    fprintf(out, "%.*s\n", (int)(shown - bol), text + bol);
    for (size_t i = bol; i < off; i++) {
        if (((unsigned char)text[i] & 0xC0) == 0x80)
            continue;
        fputc(text[i] == '\t' ? '\t' : ' ', out);
    }
    size_t end = off + m->len;
    if (end > shown)
        end = shown;
    size_t carets = 0;
    for (size_t i = off; i < end; i++)
        carets += ((unsigned char)text[i] & 0xC0) != 0x80;
    if (carets == 0)
        carets = 1;
    for (size_t i = 0; i < carets; i++)
        fputc('^', out);
    fputc('\n', out);
}

void cc_print_diags(cc_comp *c, FILE *out)
{
    if (!out || c->msgs.n == 0)
        return;
    qsort(c->msgs.v, c->msgs.n, sizeof *c->msgs.v, msg_order);
    for (uint32_t i = 0; i < c->msgs.n; i++)
        print_msg(c->units.v[c->msgs.v[i].src], &c->msgs.v[i], out);
}

/* ---- syntax errors --------------------------------------------------------------------------- */

/* How a token kind reads in a message. */
const char *gr_token_name(int type)
{
    switch (type) {
    case 0: return "end of file";
    case TK_IDENT: return "a name";
    case TK_STRING: return "a string";
    case TK_NUMBER: return "a number";
    case TK_QUANTITY: return "a duration or size";
    case TK_REGEX: return "a regular expression";
    case TK_JSON: return "a JSON body";
    case TK_ARGS: return "a list in '(...)'";
    case TK_TEMPLATE: return "'template'";
    case TK_NL: return "the end of the line";
    case TK_EQ: return "'=='";
    case TK_NE: return "'!='";
    case TK_LT: return "'<'";
    case TK_LE: return "'<='";
    case TK_GT: return "'>'";
    case TK_GE: return "'>='";
    case TK_ASSIGN: return "'='";
    case TK_LPAREN: return "'('";
    case TK_RPAREN: return "')'";
    case TK_LBRACKET: return "'['";
    case TK_RBRACKET: return "']'";
    case TK_LBRACE: return "'{'";
    case TK_RBRACE: return "'}'";
    case TK_COMMA: return "','";
    case TK_DOT: return "'.'";
    case TK_COLON: return "':'";
    case TK_SEMI: return "';'";
    case TK_IMPORT: return "'import'";
    case TK_BUS: return "'bus'";
    case TK_TARGET: return "'target'";
    case TK_RULE: return "'rule'";
    case TK_SERVER: return "'server'";
    case TK_SOURCE: return "'source'";
    case TK_ON: return "'on'";
    case TK_MATCH: return "'match'";
    case TK_PATTERN: return "'pattern'";
    case TK_TRANSFORM: return "'transform'";
    case TK_TO: return "'to'";
    case TK_DEAD_LETTER: return "'dead_letter'";
    case TK_AND: return "'and'";
    case TK_OR: return "'or'";
    case TK_NOT: return "'not'";
    case TK_IN: return "'in'";
    case TK_EXISTS: return "'exists'";
    case TK_CIDR: return "'cidr'";
    case TK_STARTS_WITH: return "'starts_with'";
    case TK_ENDS_WITH: return "'ends_with'";
    case TK_CONTAINS: return "'contains'";
    case TK_LIKE: return "'like'";
    case TK_MATCHES: return "'matches'";
    case TK_IGNORE_CASE: return "'ignore_case'";
    case TK_AS: return "'as'";
    case TK_TRUE: return "'true'";
    case TK_FALSE: return "'false'";
    case TK_NULL: return "'null'";
    default: return "a token";
    }
}

static bool has(const int *set, int n, int t)
{
    for (int i = 0; i < n; i++)
        if (set[i] == t)
            return true;
    return false;
}

/* Turns the set of acceptable tokens into a short phrase: families of tokens are named once
 * ("an operator", "a value") rather than listed one by one. */
static void describe_expected(const int *exp, int n, char *buf, size_t cap)
{
    static const int ops[] = { TK_EQ, TK_NE, TK_LT, TK_LE, TK_GT, TK_GE, TK_STARTS_WITH,
                               TK_ENDS_WITH, TK_CONTAINS, TK_LIKE, TK_MATCHES, TK_IN };
    static const int vals[] = { TK_STRING, TK_NUMBER, TK_TRUE, TK_FALSE, TK_NULL, TK_LBRACKET };
    bool value_family = true;
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
        value_family &= has(exp, n, vals[i]);
    static const int decls[] = { TK_IMPORT, TK_BUS, TK_TARGET, TK_SOURCE, TK_RULE, TK_SERVER,
                                 TK_TEMPLATE };
    static const int clauses[] = { TK_MATCH, TK_PATTERN, TK_TRANSFORM, TK_TO, TK_DEAD_LETTER };
    const char *words[16];
    int nw = 0;
    int covered[64], nc = 0;
    struct { const int *set; int n; const char *name; } fam[] = {
        { ops, 12, "an operator" }, { vals, 6, "a value" },
        { decls, 7, "a declaration (import, bus, target, source, rule, server, template)" },
        { clauses, 5, "a rule clause (match, pattern, transform, to, dead_letter)" },
    };
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        int all = 1;
        for (int i = 0; i < fam[f].n; i++)
            all &= has(exp, n, fam[f].set[i]);
        if (all) {
            words[nw++] = fam[f].name;
            for (int i = 0; i < fam[f].n && nc < 64; i++)
                covered[nc++] = fam[f].set[i];
        }
    }
    for (int i = 0; i < n && nw < 8; i++) {
        if (has(covered, nc, exp[i]) || exp[i] == TK_NOT || exp[i] == TK_IGNORE_CASE ||
            exp[i] == TK_AS || exp[i] == TK_DOT || (exp[i] == TK_LBRACKET && has(exp, n, TK_DOT)))
            continue;  /* modifiers and path continuations would only clutter the message */
        if (exp[i] == TK_QUANTITY || exp[i] == TK_CIDR || exp[i] == TK_NL)
            continue;
        if (value_family && (exp[i] == TK_IDENT || exp[i] == TK_REGEX))
            continue;   /* a bare name or a regex is a value too: "a value" says it */
        words[nw++] = gr_token_name(exp[i]);
    }
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < nw; i++) {
        const char *sep = i == 0 ? "" : i == nw - 1 ? " or " : ", ";
        used += (size_t)snprintf(buf + used, used < cap ? cap - used : 0, "%s%s", sep, words[i]);
    }
}

void ast_syntax_error(cc_unit *u, int major, gr_token t, const int *expected, int nexpected)
{
    char want[512];
    describe_expected(expected, nexpected, want, sizeof want);
    char found[96];
    if (major == 0 || major == TK_NL || major == TK_JSON || major == TK_ARGS)
        snprintf(found, sizeof found, "%s", gr_token_name(major));
    else
        snprintf(found, sizeof found, "'%.*s'", (int)(t.len > 40 ? 40 : t.len), u->text + t.off);
    if (want[0])
        ast_error(u, t.off, t.len, "expected %s, found %s", want, found);
    else
        ast_error(u, t.off, t.len, "unexpected %s", found);
    u->syntax_failed = 1;
}

void ast_decl_broken(cc_unit *u, int decl_kind, gr_token name)
{
    const char *kind = decl_kind == TK_BUS ? "bus" : decl_kind == TK_TARGET ? "target"
                     : decl_kind == TK_RULE ? "rule" : decl_kind == TK_TEMPLATE ? "template"
                     : decl_kind == TK_SOURCE ? "source" : NULL;
    if (!kind || name.type != TK_IDENT)
        return;
    char buf[256];
    int n = snprintf(buf, sizeof buf, "%s %.*s", kind, (int)(name.len > 200 ? 200 : name.len),
                     u->text + name.off);
    vec_push(u->comp->broken, cc_xstrndup(buf, (size_t)n));
}

bool cc_is_broken(cc_comp *c, const char *kind, const char *name, size_t len)
{
    size_t kl = strlen(kind);
    for (uint32_t i = 0; i < c->broken.n; i++) {
        const char *b = c->broken.v[i];
        if (strncmp(b, kind, kl) == 0 && b[kl] == ' ' && strlen(b + kl + 1) == len &&
            memcmp(b + kl + 1, name, len) == 0)
            return true;
    }
    return false;
}

/* ---- builders -------------------------------------------------------------------------------- */

static ast *node(cc_unit *u, ast_kind kind, const gr_token *t)
{
    ast *n = cc_alloc(u->comp, sizeof *n);
    n->kind = kind;
    if (t) {
        n->tok = *t;
        n->off = t->off;
        n->len = t->len;
    }
    return n;
}

/* Widens n's span to reach the end of span (off, len). */
static void extend(ast *n, uint32_t off, uint32_t len)
{
    uint32_t end = off + len;
    if (n->len == 0 && n->off == 0) {
        n->off = off;
        n->len = len;
        return;
    }
    if (off < n->off) {
        n->len += n->off - off;
        n->off = off;
    }
    if (end > n->off + n->len)
        n->len = end - n->off;
}

ast *ast_append(ast *list, ast *item)
{
    if (!item)
        return list;
    if (!list) {
        item->tail = item;
        return item;
    }
    list->tail->next = item;
    list->tail = item;
    return list;
}

static void add_decl(cc_unit *u, ast *d)
{
    u->decls = ast_append(u->decls, d);
}

void ast_decl_import(cc_unit *u, const gr_token *path)
{
    add_decl(u, node(u, A_IMPORT, path));
}

void ast_decl_bus(cc_unit *u, const gr_token *name, ast *options)
{
    ast *d = node(u, A_BUS, name);
    d->c = options;
    add_decl(u, d);
}

void ast_decl_target(cc_unit *u, const gr_token *name, const gr_token *kind, ast *value,
                     ast *options)
{
    ast *d = node(u, A_TARGET, name);
    d->a = node(u, A_VALUE, kind);
    d->b = value;
    d->c = options;
    add_decl(u, d);
}

void ast_decl_source(cc_unit *u, const gr_token *name, const gr_token *kind, ast *value,
                     ast *options, const gr_token *bus)
{
    ast *d = node(u, A_SOURCE, name);
    d->a = node(u, A_VALUE, kind);
    d->b = value;
    d->c = options;
    d->aux = *bus;
    add_decl(u, d);
}

void ast_decl_server(cc_unit *u, const gr_token *kw, ast *options)
{
    ast *d = node(u, A_SERVER, kw);
    d->c = options;
    add_decl(u, d);
}

void ast_decl_rule(cc_unit *u, const gr_token *name, const gr_token *bus, ast *clauses,
                   const gr_token *end)
{
    ast *d = node(u, A_RULE, name);
    d->a = node(u, A_VALUE, bus);
    d->c = clauses;
    (void)end;
    add_decl(u, d);
}

ast *ast_option(cc_unit *u, const gr_token *name, ast *values, ast *assigned)
{
    ast *o = node(u, A_OPTION, name);
    o->a = values;
    o->b = assigned;
    for (ast *v = values; v; v = v->next)
        extend(o, v->off, v->len);
    if (assigned)
        extend(o, assigned->off, assigned->len);
    return o;
}

ast *ast_option_block(cc_unit *u, const gr_token *name, ast *options, const gr_token *end)
{
    ast *o = node(u, A_OPTION, name);
    o->a = options;
    o->flags |= AF_BLOCK;
    extend(o, end->off, end->len);
    return o;
}

ast *ast_value(cc_unit *u, const gr_token *t)
{
    ast *v = node(u, A_VALUE, t);
    v->op = t->type;
    return v;
}

ast *ast_call(cc_unit *u, const gr_token *name, ast *args, const gr_token *end)
{
    ast *c = node(u, A_CALL, name);
    c->a = args;
    extend(c, end->off, end->len);
    return c;
}

ast *ast_named(cc_unit *u, const gr_token *name, ast *value)
{
    ast *n = node(u, A_NAMED, name);
    n->a = value;
    extend(n, value->off, value->len);
    return n;
}

ast *ast_list(cc_unit *u, const gr_token *open, ast *items, const gr_token *close)
{
    ast *l = node(u, A_LIST, open);
    l->a = items;
    extend(l, close->off, close->len);
    return l;
}

ast *ast_json(cc_unit *u, const gr_token *t)
{
    return node(u, A_JSON, t);
}

ast *ast_clause(cc_unit *u, ast_kind kind, const gr_token *kw, ast *arg)
{
    ast *c = node(u, kind, kw);
    c->a = arg;
    for (ast *x = arg; x; x = x->next)
        extend(c, x->off, x->len);
    return c;
}

ast *ast_transform(cc_unit *u, const gr_token *kw, const gr_token *kind, ast *arg)
{
    ast *c = node(u, A_TRANSFORM, kw);
    if (kind) {
        c->a = node(u, A_VALUE, kind);
        extend(c, kind->off, kind->len);
    }
    c->b = arg;
    if (arg)
        extend(c, arg->off, arg->len);
    return c;
}

ast *ast_transform_function(cc_unit *u, const gr_token *kw, const gr_token *kind,
                           const gr_token *name, const gr_token *arg, ast *options)
{
    ast *c = ast_transform(u, kw, kind, ast_value(u, arg));
    c->c = node(u, A_VALUE, name);
    c->c->a = options;
    extend(c, name->off, name->len);
    for (ast *o = options; o; o = o->next)
        extend(c, o->off, o->len);
    return c;
}

void ast_decl_template(cc_unit *u, const gr_token *name, const gr_token *params, ast *body)
{
    ast *d = node(u, A_TEMPLATE, name);
    d->a = params ? ast_json(u, params) : NULL;
    d->b = body;
    extend(d, body->off, body->len);
    add_decl(u, d);
}

ast *ast_binary(cc_unit *u, ast_kind kind, ast *l, ast *r)
{
    ast *b = node(u, kind, NULL);
    b->a = l;
    b->b = r;
    b->off = l->off;
    b->len = r->off + r->len - l->off;
    return b;
}

ast *ast_not(cc_unit *u, const gr_token *kw, ast *e, const gr_token *close)
{
    ast *n = node(u, A_NOT, kw);
    n->a = e;
    extend(n, close->off, close->len);
    return n;
}

ast *ast_paren(cc_unit *u, const gr_token *open, ast *e, const gr_token *close)
{
    (void)u;
    extend(e, open->off, open->len);
    extend(e, close->off, close->len);
    return e;
}

ast *ast_exists(cc_unit *u, const gr_token *kw, ast *path, int negated)
{
    ast *n = node(u, A_EXISTS, kw);
    n->a = path;
    n->flags = negated ? AF_NEG : 0;
    extend(n, path->off, path->len);
    return n;
}

ast *ast_pred(cc_unit *u, ast *path, gr_token neg, gr_token op, gr_token ci, ast *rhs)
{
    ast *p = node(u, A_PRED, &op);
    p->op = op.type;
    p->a = path;
    p->b = rhs;
    p->flags = (neg.type ? AF_NEG : 0) | (ci.type ? AF_CI : 0);
    p->aux = ci;
    if (neg.type)
        p->c = node(u, A_VALUE, &neg);
    p->off = path->off;
    p->len = 0;
    extend(p, path->off, path->len);
    extend(p, rhs->off, rhs->len);
    return p;
}

ast *ast_as(cc_unit *u, ast *path, const gr_token *type)
{
    if (type->len != 6 || memcmp(u->text + type->off, "number", 6) != 0)
        ast_error(u, type->off, type->len, "expected 'number' after 'as' (the only conversion)");
    path->flags |= AF_ASNUM;
    extend(path, type->off, type->len);
    return path;
}

ast *ast_path(cc_unit *u, ast *segment)
{
    ast *p = node(u, A_PATH, NULL);
    p->a = ast_append(NULL, segment);
    p->off = segment->off;
    p->len = segment->len;
    return p;
}

ast *ast_path_add(ast *path, ast *segment)
{
    path->a = ast_append(path->a, segment);
    extend(path, segment->off, segment->len);
    return path;
}

ast *ast_path_array(ast *path, const gr_token *close)
{
    path->a->tail->flags |= AF_ARRAY;
    extend(path, close->off, close->len);
    return path;
}

ast *ast_segment(cc_unit *u, const gr_token *t)
{
    return node(u, A_SEGMENT, t);
}
