/*
 * parser.y — the .ebr grammar.  Lemon turns it into parser.c / parser.h in the build tree.
 *
 * Actions are one-line calls into compiler/ast.c.  AST nodes live in the unit's arena and are
 * freed with it, so no nonterminal needs a %destructor.  A conflict fails the build.
 * The driver at the bottom feeds tokens from the lexer, inserts NL tokens inside option blocks
 * (where a line ends an option), reads JSON and template bodies after `pattern`, `transform` and
 * `template` whole (the compiler parses them), and after a
 * syntax error resumes at the next declaration so that one run reports every error.
 */

%name gr_parser
%token_prefix TK_
%token_type { gr_token }
%default_type { ast * }
%extra_context { cc_unit *u }
%start_symbol file

%include {
/* Generated from grammar/parser.y by Lemon: do not edit. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar.h"
#include "../compiler/ast.h"

struct yyParser;
static void gr_syntax_error(const struct yyParser *p, int major, gr_token tok);

/* A token covering a through b. */
static gr_token gr_join(gr_token a, gr_token b)
{
    gr_token t = a;
    t.len = b.off + b.len - a.off;
    return t;
}
}

%syntax_error { gr_syntax_error(yypParser, yymajor, TOKEN); }
%stack_overflow { ast_error(u, 0, 0, "the file is nested too deeply to parse"); u->syntax_failed = 1; }
%stack_size 1000

/* Tokens the lexer or driver produce that no rule names. */
%token ERROR SEMI.

%left OR.
%left AND.

file ::= decls.

decls ::= .
decls ::= decls decl.

decl ::= IMPORT STRING(S).                          { ast_decl_import(u, &S); }
decl ::= BUS IDENT(N) optblock(O).                  { ast_decl_bus(u, &N, O); }
decl ::= TARGET IDENT(N) IDENT(K) value(V) optblock(O). { ast_decl_target(u, &N, &K, V, O); }
decl ::= TARGET IDENT(N) BUS(K) value(V) optblock(O).   { ast_decl_target(u, &N, &K, V, O); }
decl ::= SERVER(S) optblock(O).                     { ast_decl_server(u, &S, O); }
/* `source` is a keyword only where a declaration may start (the driver turns the word into
 * SOURCE there), so that rules keep matching on the attribute `source`. */
decl ::= SOURCE IDENT(N) IDENT(K) value(V) optblock(O) TO IDENT(B).
                                                    { ast_decl_source(u, &N, &K, V, O, &B); }
decl ::= RULE IDENT(N) ON IDENT(B) LBRACE clauses(C) RBRACE(E). { ast_decl_rule(u, &N, &B, C, &E); }
decl ::= TEMPLATE IDENT(N) ARGS(P) tbody(B).        { ast_decl_template(u, &N, &P, B); }
decl ::= TEMPLATE IDENT(N) tbody(B).                { ast_decl_template(u, &N, NULL, B); }

/* A template's body: a JSON-like template (read whole by the lexer, parsed by the compiler),
 * or a string for a text payload. */
tbody(A) ::= JSON(J).                               { A = ast_json(u, &J); }
tbody(A) ::= STRING(S).                             { A = ast_value(u, &S); }

/* Option blocks of bus, target and server: one option a line (or separated by ';'). */
optblock(A) ::= .                                   { A = NULL; }
optblock(A) ::= LBRACE RBRACE.                      { A = NULL; }
optblock(A) ::= LBRACE options(L) RBRACE.           { A = L; }

options(A) ::= option(O).                           { A = ast_append(NULL, O); }
options(A) ::= options(L) NL option(O).             { A = ast_append(L, O); }

option(A) ::= IDENT(N) values(V).                   { A = ast_option(u, &N, V, NULL); }
option(A) ::= DEAD_LETTER(N) values(V).             { A = ast_option(u, &N, V, NULL); }
option(A) ::= IDENT(N) values(V) ASSIGN value(W).   { A = ast_option(u, &N, V, W); }
/* A block of NAME = value lines as one option's value (an exec target's env { ... }). */
option(A) ::= IDENT(N) LBRACE RBRACE(E).            { A = ast_option_block(u, &N, NULL, &E); }
option(A) ::= IDENT(N) LBRACE options(L) RBRACE(E). { A = ast_option_block(u, &N, L, &E); }
/* a JSON value (a schedule source's data {...}): the driver reads it whole after `data` */
option(A) ::= IDENT(N) JSON(J).                     { A = ast_option(u, &N, ast_json(u, &J), NULL); }

values(A) ::= .                                     { A = NULL; }
values(A) ::= values(L) value(V).                   { A = ast_append(L, V); }
/* a bus's schema option: on_invalid dead_letter */
values(A) ::= values(L) DEAD_LETTER(T).             { A = ast_append(L, ast_value(u, &T)); }
/* a function transform's options (a dead_letter clause may follow them) */
fvalues(A) ::= .                                    { A = NULL; }
fvalues(A) ::= fvalues(L) value(V).                 { A = ast_append(L, V); }

value(A) ::= STRING(T).                             { A = ast_value(u, &T); }
value(A) ::= NUMBER(T).                             { A = ast_value(u, &T); }
value(A) ::= QUANTITY(T).                           { A = ast_value(u, &T); }
value(A) ::= TRUE(T).                               { A = ast_value(u, &T); }
value(A) ::= FALSE(T).                              { A = ast_value(u, &T); }
value(A) ::= NULL(T).                               { A = ast_value(u, &T); }
value(A) ::= IDENT(T).                              { A = ast_value(u, &T); }
value(A) ::= IDENT(N) LPAREN args(L) RPAREN(E).     { A = ast_call(u, &N, L, &E); }
value(A) ::= LBRACKET(B) RBRACKET(E).               { A = ast_list(u, &B, NULL, &E); }
value(A) ::= LBRACKET(B) items(L) RBRACKET(E).      { A = ast_list(u, &B, L, &E); }
value(A) ::= LBRACKET(B) items(L) COMMA RBRACKET(E). { A = ast_list(u, &B, L, &E); }

items(A) ::= value(V).                              { A = ast_append(NULL, V); }
items(A) ::= items(L) COMMA value(V).               { A = ast_append(L, V); }

args(A) ::= .                                       { A = NULL; }
args(A) ::= arglist(L).                             { A = L; }
arglist(A) ::= arg(X).                              { A = ast_append(NULL, X); }
arglist(A) ::= arglist(L) COMMA arg(X).             { A = ast_append(L, X); }
arg(A) ::= value(V).                                { A = V; }
arg(A) ::= IDENT(N) COLON value(V).                 { A = ast_named(u, &N, V); }

/* Rule bodies. */
clauses(A) ::= .                                    { A = NULL; }
clauses(A) ::= clauses(L) clause(C).                { A = ast_append(L, C); }

clause(A) ::= MATCH(K) expr(E).                     { A = ast_clause(u, A_MATCH, &K, E); }
clause(A) ::= PATTERN(K) JSON(J).                   { A = ast_clause(u, A_PATTERN, &K, ast_json(u, &J)); }
clause(A) ::= TRANSFORM(K) IDENT(N).                { A = ast_transform(u, &K, &N, NULL); }
clause(A) ::= TRANSFORM(K) IDENT(N) STRING(S).      { A = ast_transform(u, &K, &N, ast_value(u, &S)); }
clause(A) ::= TRANSFORM(K) IDENT(N) JSON(J).        { A = ast_transform(u, &K, &N, ast_json(u, &J)); }
clause(A) ::= TRANSFORM(K) JSON(J).                 { A = ast_transform(u, &K, NULL, ast_json(u, &J)); }
clause(A) ::= TRANSFORM(K) STRING(S).               { A = ast_transform(u, &K, NULL, ast_value(u, &S)); }
clause(A) ::= TRANSFORM(K) IDENT(N) ARGS(P).        { A = ast_transform(u, &K, &N, ast_json(u, &P)); }
clause(A) ::= TRANSFORM(K) IDENT(F) IDENT(N) STRING(S) fvalues(O).
                                                    { A = ast_transform_function(u, &K, &F, &N, &S, O); }
clause(A) ::= TO(K) names(L).                       { A = ast_clause(u, A_TO, &K, L); }
clause(A) ::= DEAD_LETTER(K) IDENT(N).              { A = ast_clause(u, A_DEAD_LETTER, &K, ast_value(u, &N)); }

names(A) ::= IDENT(N).                              { A = ast_append(NULL, ast_value(u, &N)); }
names(A) ::= names(L) COMMA IDENT(N).               { A = ast_append(L, ast_value(u, &N)); }

/* Match expressions. */
expr(A) ::= expr(L) OR expr(R).                     { A = ast_binary(u, A_OR, L, R); }
expr(A) ::= expr(L) AND expr(R).                    { A = ast_binary(u, A_AND, L, R); }
expr(A) ::= NOT(K) LPAREN expr(E) RPAREN(C).        { A = ast_not(u, &K, E, &C); }
expr(A) ::= LPAREN(K) expr(E) RPAREN(C).            { A = ast_paren(u, &K, E, &C); }
expr(A) ::= EXISTS(K) path(P).                      { A = ast_exists(u, &K, P, 0); }
expr(A) ::= NOT(K) EXISTS path(P).                  { A = ast_exists(u, &K, P, 1); }
expr(A) ::= operand(P) negation(N) operator(O) case(C) rhs(V). { A = ast_pred(u, P, N, O, C, V); }

operand(A) ::= path(P).                             { A = P; }
operand(A) ::= path(P) AS IDENT(T).                 { A = ast_as(u, P, &T); }

path(A) ::= segment(S).                             { A = ast_path(u, S); }
path(A) ::= path(P) DOT segment(S).                 { A = ast_path_add(P, S); }
path(A) ::= path(P) LBRACKET RBRACKET(E).           { A = ast_path_array(P, &E); }

segment(A) ::= IDENT(T).                            { A = ast_segment(u, &T); }
segment(A) ::= STRING(T).                           { A = ast_segment(u, &T); }

%type negation { gr_token }
negation(A) ::= .                                   { A.type = 0; A.off = A.len = 0; }
negation(A) ::= NOT(T).                             { A = T; }

%type operator { gr_token }
operator(A) ::= EQ(T).                              { A = T; }
operator(A) ::= NE(T).                              { A = T; }
operator(A) ::= LT(T).                              { A = T; }
operator(A) ::= LE(T).                              { A = T; }
operator(A) ::= GT(T).                              { A = T; }
operator(A) ::= GE(T).                              { A = T; }
operator(A) ::= STARTS_WITH(T).                     { A = T; }
operator(A) ::= ENDS_WITH(T).                       { A = T; }
operator(A) ::= CONTAINS(T).                        { A = T; }
operator(A) ::= LIKE(T).                            { A = T; }
operator(A) ::= MATCHES(T).                         { A = T; }
operator(A) ::= IN(T).                              { A = T; }
operator(A) ::= IN(T) CIDR(C).                      { A = gr_join(T, C); A.type = TK_CIDR; }

%type case { gr_token }
case(A) ::= .                                       { A.type = 0; A.off = A.len = 0; }
case(A) ::= IGNORE_CASE(T).                         { A = T; }

rhs(A) ::= value(V).                                { A = V; }
rhs(A) ::= REGEX(T).                                { A = ast_value(u, &T); }

%code {

/* Simulates the parser from its current stack on lookahead `tok` (following reductions, which
 * Lemon takes by default without looking) and says whether the token could be shifted. */
static int gr_accepts(const yyParser *p, int tok)
{
    YYACTIONTYPE st[YYSTACKDEPTH + 1];
    int n = (int)(p->yytos - p->yystack) + 1;
    if (n > YYSTACKDEPTH)
        return 0;
    for (int i = 0; i < n; i++)
        st[i] = p->yystack[i].stateno;
    for (int guard = 0; guard < 10000; guard++) {
        YYACTIONTYPE act = yy_find_shift_action((YYCODETYPE)tok, st[n - 1]);
        if (act <= YY_MAX_SHIFTREDUCE || act == YY_ACCEPT_ACTION)
            return 1;
        if (act < YY_MIN_REDUCE || act > YY_MAX_REDUCE)
            return 0;
        unsigned rule = act - YY_MIN_REDUCE;
        n += yyRuleInfoNRhs[rule];
        if (n < 1)
            return 0;
        YYACTIONTYPE go = yy_find_reduce_action(st[n - 1], yyRuleInfoLhs[rule]);
        if (n >= YYSTACKDEPTH)
            return 0;
        st[n++] = go;
    }
    return 0;
}

/* Reports a syntax error at token `tok`, naming what the grammar would have accepted there. */
static void gr_syntax_error(const yyParser *p, int major, gr_token tok)
{
    cc_unit *u = p->u;
    int expected[YYNTOKEN], n = 0;
    for (int t = 1; t < YYNTOKEN; t++)
        if (t != TK_ERROR && gr_accepts(p, t))
            expected[n++] = t;
    ast_syntax_error(u, major, tok, expected, n);
}

/* Is this token the start of a declaration (where the parser can resume after an error)? */
static int gr_is_decl_start(int type)
{
    return type == TK_IMPORT || type == TK_BUS || type == TK_TARGET || type == TK_RULE ||
           type == TK_SERVER || type == TK_TEMPLATE || type == TK_SOURCE;
}

/* The driver's state between tokens. */
typedef struct {
    cc_unit *u;
    yyParser parser;
    int decl;              /* the keyword of the declaration being read */
    gr_token decl_name;
    int depth;             /* brace depth */
    int nest;              /* ( and [ depth inside an option block */
    int optblock;          /* inside a bus / target / server { } */
    int prev, prev2, prev3;  /* the last three token kinds given to the parser */
    gr_token last;         /* the last token given to the parser */
    int skipping;          /* after an error: drop tokens until a declaration starts */
    int errors;
} driver;

/* Starts the parser afresh, as at the start of a file. */
static void restart(driver *d)
{
    gr_parserFinalize(&d->parser);
    gr_parserInit(&d->parser, d->u);
    d->depth = d->nest = d->optblock = d->prev = d->prev2 = d->prev3 = 0;
    d->u->syntax_failed = 0;
}

/* Gives one token to the parser, keeping the driver's view of braces and declarations.
 * Returns 0, or -1 when the parser reported a syntax error. */
static int feed(driver *d, gr_token t)
{
    if (gr_is_decl_start(t.type) && d->depth == 0) {
        d->decl = t.type;
        d->decl_name.type = 0;
    } else if (d->prev == d->decl && t.type == TK_IDENT && d->depth == 0) {
        d->decl_name = t;
    }
    switch (t.type) {
    case TK_LBRACE:
        if (d->depth++ == 0 && (d->decl == TK_BUS || d->decl == TK_TARGET || d->decl == TK_SERVER ||
                                d->decl == TK_SOURCE))
            d->optblock = 1;
        break;
    case TK_RBRACE:
        if (d->depth > 0 && --d->depth == 0)
            d->optblock = 0;
        break;
    case TK_LPAREN: case TK_LBRACKET: d->nest++; break;
    case TK_RPAREN: case TK_RBRACKET: if (d->nest > 0) d->nest--; break;
    default: break;
    }
    gr_parser(&d->parser, t.type, t);
    d->prev3 = d->prev2;
    d->prev2 = d->prev;
    d->prev = t.type;
    d->last = t;
    return d->u->syntax_failed ? -1 : 0;
}

/* After an error at token t: resume at t if it starts a declaration, else skip to the next. */
static void recover(driver *d, gr_token t)
{
    d->errors++;
    ast_decl_broken(d->u, d->decl, d->decl_name);
    restart(d);
    d->skipping = t.type != 0 && !gr_is_decl_start(t.type);
    if (gr_is_decl_start(t.type) && feed(d, t) != 0) {
        restart(d);
        d->skipping = 1;
    }
}

/* Does the word `source` at t start a declaration?  Where the parser takes one at the top level;
 * while skipping a broken declaration (the parser restarted, braces not followed), when the word
 * begins its line. */
static int source_starts(const driver *d, const gr_token *t)
{
    if (d->skipping)
        return t->off == 0 || d->u->text[t->off - 1] == '\n';
    return d->depth == 0 && gr_accepts(&d->parser, TK_SOURCE);
}

int gr_parse(cc_unit *u)
{
    gr_lexer lx;
    driver d = { .u = u };
    gr_lexer_init(&lx, u->text, u->len);
    gr_parserInit(&d.parser, u);
    for (;;) {
        size_t before = lx.pos;
        /* A JSON body may follow `pattern` and `transform const`; a template body (with
         * `${...}` inside its strings) `transform` and `template NAME (...)`; an argument or
         * parameter list `transform NAME` and `template NAME`. */
        int next = d.skipping ? -1 : gr_next_char(&lx);
        int after_name = d.prev == TK_IDENT && (d.prev2 == TK_TRANSFORM || d.prev2 == TK_TEMPLATE);
        int json_ok = (d.prev == TK_PATTERN || (after_name && d.prev2 == TK_TRANSFORM)) &&
                      (next == '{' || next == '[');
        /* a source's `data` option takes a JSON value */
        json_ok |= d.optblock && d.decl == TK_SOURCE && d.prev == TK_IDENT && d.last.len == 4 &&
                   memcmp(u->text + d.last.off, "data", 4) == 0 && (next == '{' || next == '[');
        int template_ok = ((d.prev == TK_TRANSFORM || (d.prev == TK_ARGS && d.prev3 == TK_TEMPLATE) ||
                            (after_name && d.prev2 == TK_TEMPLATE)) && (next == '{' || next == '[')) ||
                          (after_name && next == '(');
        gr_token t = template_ok ? gr_lex_template(&lx) : json_ok ? gr_lex_json(&lx) : gr_lex(&lx);
        if (t.type == TK_IDENT && t.len == 6 && memcmp(u->text + t.off, "source", 6) == 0 &&
            source_starts(&d, &t))
            t.type = TK_SOURCE;
        if (d.skipping) {
            if (t.type != 0 && !gr_is_decl_start(t.type))
                continue;      /* the rest of a broken declaration, lexical errors included */
            d.skipping = 0;
        }
        if (t.type == TK_ERROR) {
            ast_error(u, t.off, t.len, "%s", lx.err);
            recover(&d, t);
            continue;
        }
        if (d.prev == TK_PATTERN && t.type != TK_JSON) {
            /* `pattern` takes nothing but JSON: say so rather than "unexpected token". */
            ast_error(u, t.off, t.len ? t.len : 1, "expected a JSON pattern ('{') after 'pattern'");
            recover(&d, t);
            continue;
        }
        if (t.type == TK_SEMI) {
            if (!d.optblock || d.nest)
                continue;      /* a ';' only separates options */
            t.type = TK_NL;
        } else if (d.optblock && d.nest == 0 && d.prev != TK_LBRACE && d.prev != TK_NL &&
                   t.type != TK_RBRACE && memchr(u->text + before, '\n', t.off - before)) {
            gr_token nl = { TK_NL, t.off, 0 };
            if (feed(&d, nl) != 0) {
                recover(&d, t);
                continue;
            }
        }
        if (t.type == TK_NL && (d.prev == TK_NL || d.prev == TK_LBRACE))
            continue;
        if (feed(&d, t) != 0)
            recover(&d, t);
        if (t.type == 0)
            break;
    }
    gr_parserFinalize(&d.parser);
    return d.errors;
}

}
