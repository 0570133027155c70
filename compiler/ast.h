/*
 * ast.h — the syntax tree and the per-compilation state, shared by grammar/ and compiler/
 * (internal to them; compiler.h is the public door).
 *
 * Every node carries the byte span it was read from; line and column are worked out only when a
 * message is printed.  Nodes live in the compilation's arena.
 */
#ifndef EBR_AST_H
#define EBR_AST_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "../grammar/grammar.h"
#include "../vm/vm.h"

typedef enum {
    /* declarations: tok = name */
    A_IMPORT,      /* tok = the path string */
    A_BUS,         /* c = options */
    A_TARGET,      /* a = kind (A_VALUE ident), b = value, c = options */
    A_SERVER,      /* c = options */
    A_SOURCE,      /* a = kind (A_VALUE ident), b = value, c = options, aux = the bus's name */
    A_RULE,        /* a = bus (A_VALUE ident), c = clauses */
    A_TEMPLATE,    /* a = parameter list (A_JSON over its "(...)") or NULL, b = body (A_JSON
                      or a STRING A_VALUE) */
    /* option blocks and values */
    A_OPTION,      /* tok = name, a = values, b = the value after '='; with AF_BLOCK, a = the
                      options inside its { } */
    A_VALUE,       /* tok: STRING, NUMBER, QUANTITY, TRUE, FALSE, NULL, IDENT or REGEX */
    A_CALL,        /* tok = function name, a = arguments */
    A_NAMED,       /* tok = argument name, a = value */
    A_LIST,        /* a = items */
    A_JSON,        /* tok = the JSON text */
    /* rule clauses: tok = the keyword */
    A_MATCH,       /* a = expression */
    A_PATTERN,     /* a = A_JSON */
    A_TRANSFORM,   /* a = kind (A_VALUE ident) or NULL, b = argument (A_VALUE string, A_JSON
                      over a body or over a call's "(...)"); `function`: c = its kind
                      (A_VALUE ident: exec, http) with c->a = its options (timeout 2s) */
    A_TO,          /* a = target names (A_VALUE idents) */
    A_DEAD_LETTER, /* a = target name */
    /* expressions */
    A_AND,         /* a, b */
    A_OR,          /* a, b */
    A_NOT,         /* a */
    A_EXISTS,      /* a = path; flags AF_NEG for `not exists` */
    A_PRED,        /* a = operand path, b = right-hand side; op = operator token kind */
    A_PATH,        /* a = segments; flags AF_ASNUM for `as number` */
    A_SEGMENT,     /* tok = IDENT or STRING; flags AF_ARRAY when followed by [] */
} ast_kind;

enum {
    AF_NEG   = 1 << 0,  /* `not exists`, `not in`, `not starts_with`, ... */
    AF_CI    = 1 << 1,  /* `ignore_case` */
    AF_ASNUM = 1 << 2,  /* `as number` */
    AF_ARRAY = 1 << 3,  /* `[]` after a path segment */
    AF_BLOCK = 1 << 4,  /* an option whose value is a block of options: env { A = "x" } */
};

typedef struct ast ast;
struct ast {
    ast_kind kind;
    int op;
    unsigned flags;
    gr_token tok;
    gr_token aux;        /* A_PRED: the ignore_case token */
    uint32_t off, len;   /* the node's whole span */
    ast *a, *b, *c;
    ast *next;           /* next item of a list */
    ast *tail;           /* the last item, kept on a list's first node */
};

typedef struct cc_comp cc_comp;

/* One source file of a compilation. */
typedef struct cc_unit {
    cc_comp *comp;
    uint32_t src;        /* index in the compilation's sources (vm_span.src) */
    const char *name;
    const char *text;    /* NUL-terminated */
    size_t len;
    ast *decls;          /* declarations in source order */
    int syntax_failed;   /* set by the parser's error hook, cleared by the driver */
} cc_unit;

/* Arena allocation: zeroed memory that lives as long as the compilation. */
void *cc_alloc(cc_comp *c, size_t size);
void *cc_scratch_alloc(cc_comp *c, size_t size);   /* zeroed, until cc_scratch_reset */
void cc_scratch_reset(cc_comp *c);
void *cc_rule_alloc(cc_comp *c, size_t size);      /* zeroed, until cc_rule_reset */
void cc_rule_reset(cc_comp *c);
void cc_arena_free(cc_comp *c);

/* Diagnostics.  `off`/`len` are a byte span in unit u's text. */
void ast_error(cc_unit *u, uint32_t off, uint32_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void cc_diag(cc_comp *c, int warning, uint32_t src, uint32_t off, uint32_t len, const char *fmt,
             va_list ap);

/* Called by the parser on a syntax error at token t, with the kinds it expected there. */
void ast_syntax_error(cc_unit *u, int major, gr_token t, const int *expected, int nexpected);

/* Records that a declaration failed to parse, so that references to its name do not pile more
 * errors on the first one. */
void ast_decl_broken(cc_unit *u, int decl_kind, gr_token name);

/* Node builders called from grammar actions. */
ast *ast_append(ast *list, ast *item);
void ast_decl_import(cc_unit *u, const gr_token *path);
void ast_decl_bus(cc_unit *u, const gr_token *name, ast *options);
void ast_decl_target(cc_unit *u, const gr_token *name, const gr_token *kind, ast *value, ast *options);
void ast_decl_server(cc_unit *u, const gr_token *kw, ast *options);
void ast_decl_source(cc_unit *u, const gr_token *name, const gr_token *kind, ast *value,
                     ast *options, const gr_token *bus);
void ast_decl_rule(cc_unit *u, const gr_token *name, const gr_token *bus, ast *clauses, const gr_token *end);
ast *ast_option(cc_unit *u, const gr_token *name, ast *values, ast *assigned);
ast *ast_option_block(cc_unit *u, const gr_token *name, ast *options, const gr_token *end);
ast *ast_value(cc_unit *u, const gr_token *t);
ast *ast_call(cc_unit *u, const gr_token *name, ast *args, const gr_token *end);
ast *ast_named(cc_unit *u, const gr_token *name, ast *value);
ast *ast_list(cc_unit *u, const gr_token *open, ast *items, const gr_token *close);
ast *ast_json(cc_unit *u, const gr_token *t);
ast *ast_clause(cc_unit *u, ast_kind kind, const gr_token *kw, ast *arg);
ast *ast_transform(cc_unit *u, const gr_token *kw, const gr_token *kind, ast *arg);
ast *ast_transform_function(cc_unit *u, const gr_token *kw, const gr_token *kind,
                           const gr_token *name, const gr_token *arg, ast *options);
void ast_decl_template(cc_unit *u, const gr_token *name, const gr_token *params, ast *body);
ast *ast_binary(cc_unit *u, ast_kind kind, ast *l, ast *r);
ast *ast_not(cc_unit *u, const gr_token *kw, ast *e, const gr_token *close);
ast *ast_paren(cc_unit *u, const gr_token *open, ast *e, const gr_token *close);
ast *ast_exists(cc_unit *u, const gr_token *kw, ast *path, int negated);
ast *ast_pred(cc_unit *u, ast *path, gr_token neg, gr_token op, gr_token ci, ast *rhs);
ast *ast_as(cc_unit *u, ast *path, const gr_token *type);
ast *ast_path(cc_unit *u, ast *segment);
ast *ast_path_add(ast *path, ast *segment);
ast *ast_path_array(ast *path, const gr_token *close);
ast *ast_segment(cc_unit *u, const gr_token *t);

#endif
