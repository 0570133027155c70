/*
 * parser.y — the .ebr grammar.  Lemon turns it into parser.c / parser.h in the build tree.
 *
 * Actions are one-line calls into compiler/ast.c.  AST nodes live in the unit's arena and are
 * freed with it, so no nonterminal needs a %destructor.  A conflict fails the build.
 * The driver at the bottom feeds tokens from the lexer, inserts NL tokens inside option blocks
 * (where a line ends an option), reads JSON bodies after `pattern` / `transform`, and after a
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
decl ::= RULE IDENT(N) ON IDENT(B) LBRACE clauses(C) RBRACE(E). { ast_decl_rule(u, &N, &B, C, &E); }

/* Option blocks of bus, target and server: one option a line (or separated by ';'). */
optblock(A) ::= .                                   { A = NULL; }
optblock(A) ::= LBRACE RBRACE.                      { A = NULL; }
optblock(A) ::= LBRACE options(L) RBRACE.           { A = L; }

options(A) ::= option(O).                           { A = ast_append(NULL, O); }
options(A) ::= options(L) NL option(O).             { A = ast_append(L, O); }

option(A) ::= IDENT(N) values(V).                   { A = ast_option(u, &N, V, NULL); }
option(A) ::= DEAD_LETTER(N) values(V).             { A = ast_option(u, &N, V, NULL); }
option(A) ::= IDENT(N) values(V) ASSIGN value(W).   { A = ast_option(u, &N, V, W); }

values(A) ::= .                                     { A = NULL; }
values(A) ::= values(L) value(V).                   { A = ast_append(L, V); }

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
           type == TK_SERVER;
}

int gr_parse(cc_unit *u)
{
    gr_lexer lx;
    yyParser parser;
    gr_lexer_init(&lx, u->text, u->len);
    gr_parserInit(&parser, u);

    int errors = 0;
    int decl = 0;          /* the keyword of the declaration being read */
    int depth = 0;         /* brace depth */
    int nest = 0;          /* ( and [ depth inside an option block */
    int optblock = 0;      /* inside a bus / target / server { } */
    int prev = 0;          /* previous token kind passed to the parser */
    int prev2 = 0;         /* and the one before */
    int skipping = 0;      /* after an error: drop tokens until a declaration starts */
    gr_token decl_name = { 0, 0, 0 };

    for (;;) {
        size_t before = lx.pos;
        /* A JSON body may follow `pattern`, `transform` and `transform NAME`. */
        int json_ok = !skipping && (prev == TK_PATTERN || prev == TK_TRANSFORM ||
                                    (prev == TK_IDENT && prev2 == TK_TRANSFORM));
        gr_token t = json_ok && gr_next_is_json(&lx) ? gr_lex_json(&lx) : gr_lex(&lx);
        if (prev == TK_PATTERN && t.type != TK_JSON && t.type != TK_ERROR) {
            /* `pattern` takes nothing but JSON: say so rather than "unexpected token". */
            ast_error(u, t.off, t.len ? t.len : 1, "expected a JSON pattern ('{') after 'pattern'");
            u->syntax_failed = 1;
            goto failed;
        }
        if (t.type == TK_ERROR) {
            ast_error(u, t.off, t.len, "%s", lx.err);
            errors++;
            skipping = 1;
            ast_decl_broken(u, decl, decl_name);
            continue;
        }
        if (skipping) {
            if (t.type != 0 && !gr_is_decl_start(t.type))
                continue;
            skipping = 0;
            gr_parserFinalize(&parser);
            gr_parserInit(&parser, u);
            depth = nest = optblock = prev = prev2 = 0;
        }
        if (gr_is_decl_start(t.type) && depth == 0) {
            decl = t.type;
            decl_name.type = 0;
        } else if (prev == decl && t.type == TK_IDENT && depth == 0) {
            decl_name = t;
        }
        if (t.type == TK_SEMI) {
            if (!optblock || nest)
                continue;       /* a ';' only separates options */
            t.type = TK_NL;
        } else if (optblock && nest == 0 && prev != TK_LBRACE && prev != TK_NL &&
                   t.type != TK_RBRACE && memchr(u->text + before, '\n', t.off - before)) {
            gr_token nl = { TK_NL, t.off, 0 };
            gr_parser(&parser, TK_NL, nl);
            if (u->syntax_failed)
                goto failed;
        }
        if (t.type == TK_NL && (prev == TK_NL || prev == TK_LBRACE))
            continue;
        switch (t.type) {
        case TK_LBRACE:
            if (depth++ == 0 && (decl == TK_BUS || decl == TK_TARGET || decl == TK_SERVER))
                optblock = 1;
            break;
        case TK_RBRACE:
            if (depth > 0 && --depth == 0)
                optblock = 0;
            break;
        case TK_LPAREN: case TK_LBRACKET: nest++; break;
        case TK_RPAREN: case TK_RBRACKET: if (nest > 0) nest--; break;
        default: break;
        }
        gr_parser(&parser, t.type, t);
        prev2 = prev;
        prev = t.type;
        if (u->syntax_failed) {
        failed:
            errors++;
            u->syntax_failed = 0;
            ast_decl_broken(u, decl, decl_name);
            if (t.type == 0)
                break;
            skipping = !gr_is_decl_start(t.type);
            if (!skipping) {
                /* The error was the declaration keyword itself: restart on it. */
                gr_parserFinalize(&parser);
                gr_parserInit(&parser, u);
                depth = nest = optblock = 0;
                decl = t.type;
                gr_parser(&parser, t.type, t);
                if (u->syntax_failed) {
                    u->syntax_failed = 0;
                    skipping = 1;
                }
            }
            continue;
        }
        if (t.type == 0)
            break;
    }
    gr_parserFinalize(&parser);
    return errors;
}

}
