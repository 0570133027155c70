/*
 * grammar.h — the front end's public door: the re2c lexer and the Lemon parser of .ebr files.
 *
 * The parser builds the AST of compiler/ast.h through one-line calls into compiler/ (the grammar
 * stays thin); syntax errors go to the same diagnostics as every other error.
 */
#ifndef EBR_GRAMMAR_H
#define EBR_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

/* A token: its kind (TK_* of the generated parser.h) and its byte span in the source. */
typedef struct {
    int type;
    uint32_t off, len;
} gr_token;

/* The lexer's state; src must be followed by a NUL byte at src[len] (the re2c sentinel),
 * but NUL bytes inside the text are read as characters, never as the end. */
typedef struct {
    const char *src;
    size_t len;
    size_t pos;
    int after_dot;     /* the previous token was '.': a keyword there is a plain name */
    const char *err;   /* message of the last TK_ERROR token */
    char errbuf[64];
} gr_lexer;

void gr_lexer_init(gr_lexer *lx, const char *src, size_t len);

/* Returns the next token (TK_EOF at the end).  A character the language has no use for, an
 * unterminated string or a bad escape gives TK_ERROR with lx->err saying what is wrong. */
gr_token gr_lex(gr_lexer *lx);

/* Does a JSON value ('{' or '[') start at the next non-blank character? */
int gr_next_is_json(const gr_lexer *lx);

/* Reads a JSON value that starts at the next non-blank character (a pattern or template body):
 * balanced brackets, strings with escapes skipped.  Returns TK_JSON, or TK_ERROR with lx->err. */
gr_token gr_lex_json(gr_lexer *lx);

/* Reads a template body ('{' or '[', giving TK_JSON) or an argument or parameter list ('(',
 * giving TK_ARGS) that starts at the next non-blank character: brackets balanced, strings
 * skipped with the `${ ... }` expressions inside them.  The compiler parses the text. */
gr_token gr_lex_template(gr_lexer *lx);

/* The next non-blank character, or -1 at the end. */
int gr_next_char(const gr_lexer *lx);

/* The printable name of a token kind, for messages ("'{'", "a string", "end of file"). */
const char *gr_token_name(int type);

struct cc_unit;

/* Parses a whole source file into u's AST, reporting every syntax error to u's diagnostics and
 * resuming at the next declaration after each.  Returns the number of syntax errors. */
int gr_parse(struct cc_unit *u);

#endif
