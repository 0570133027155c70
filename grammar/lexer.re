/*
 * lexer.re — the .ebr lexer.  re2c turns this into lexer.c in the build tree (never committed).
 *
 * State lives in gr_lexer; the end of input is the explicit limit src + len (re2c:eof), so a NUL
 * byte inside a file is an ordinary (and rejected) character, never the end.
 */
#include <stdio.h>
#include <string.h>

#include "grammar.h"
#include "parser.h"

#define TK_EOF 0

void gr_lexer_init(gr_lexer *lx, const char *src, size_t len)
{
    memset(lx, 0, sizeof *lx);
    lx->src = src;
    lx->len = len;
}

static gr_token tok(gr_lexer *lx, int type, const char *start, const char *end)
{
    gr_token t = { type, (uint32_t)(start - lx->src), (uint32_t)(end - start) };
    lx->pos = (size_t)(end - lx->src);
    lx->after_dot = type == TK_DOT;
    return t;
}

static gr_token error_tok(gr_lexer *lx, const char *msg, const char *start, const char *end)
{
    lx->err = msg;
    return tok(lx, TK_ERROR, start, end);
}

/* Skips the rest of a string after a bad escape: to the closing quote, or the end of the line. */
static size_t skip_string_rest(const gr_lexer *lx, size_t p)
{
    while (p < lx->len && lx->src[p] != '"' && lx->src[p] != '\n')
        p += lx->src[p] == '\\' && p + 1 < lx->len && lx->src[p + 1] != '\n' ? 2 : 1;
    return p < lx->len && lx->src[p] == '"' ? p + 1 : p;
}

/* The end of input, placed just after the last visible character so that a message about it
 * shows the last line of the file rather than an empty one. */
static gr_token eof_tok(gr_lexer *lx)
{
    size_t end = lx->len;
    while (end > 0 && strchr(" \t\r\n\f", lx->src[end - 1]))
        end--;
    gr_token t = { TK_EOF, (uint32_t)end, 0 };
    lx->pos = lx->len;
    return t;
}

/* Keywords, looked up once an identifier is read; after a '.' every word is a plain name. */
static int keyword(const char *s, size_t n)
{
    static const struct { const char *word; int type; } words[] = {
        { "import", TK_IMPORT },     { "bus", TK_BUS },           { "target", TK_TARGET },
        { "rule", TK_RULE },         { "server", TK_SERVER },     { "on", TK_ON },
        { "match", TK_MATCH },       { "pattern", TK_PATTERN },   { "transform", TK_TRANSFORM },
        { "to", TK_TO },             { "dead_letter", TK_DEAD_LETTER },
        { "and", TK_AND },           { "or", TK_OR },             { "not", TK_NOT },
        { "in", TK_IN },             { "exists", TK_EXISTS },     { "cidr", TK_CIDR },
        { "starts_with", TK_STARTS_WITH }, { "ends_with", TK_ENDS_WITH },
        { "contains", TK_CONTAINS }, { "like", TK_LIKE },         { "matches", TK_MATCHES },
        { "ignore_case", TK_IGNORE_CASE }, { "as", TK_AS },         { "template", TK_TEMPLATE },
        { "true", TK_TRUE },         { "false", TK_FALSE },       { "null", TK_NULL },
    };
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strlen(words[i].word) == n && memcmp(words[i].word, s, n) == 0)
            return words[i].type;
    return TK_IDENT;
}

/*!re2c
    re2c:api:style = free-form;
    re2c:define:YYCTYPE = "unsigned char";
    re2c:define:YYCURSOR = "cur";
    re2c:define:YYMARKER = "mar";
    re2c:define:YYLIMIT = "lim";
    re2c:yyfill:enable = 0;
    re2c:eof = 0;

    digit   = [0-9];
    int     = "-"? ("0" | [1-9] digit*);
    frac    = "." digit+;
    exp     = [eE] [+-]? digit+;
    ident   = [A-Za-z_] [A-Za-z0-9_]* ("-" [A-Za-z0-9_]+)*;
    blank   = [ \t\r\n\f]+;
    comment = "#" [^\n\x00]*;
    uesc    = "\\u" [0-9a-fA-F]{4};
    esc     = "\\" ["\\/bfnrt] | uesc;
    schar   = [^"\\\n\x00] | esc;
*/

gr_token gr_lex(gr_lexer *lx)
{
    const unsigned char *cur, *mar, *lim, *start;
    cur = (const unsigned char *)lx->src + lx->pos;
    lim = (const unsigned char *)lx->src + lx->len;
    (void)mar;
#define T(type) tok(lx, (type), (const char *)start, (const char *)cur)
#define E(msg)  error_tok(lx, (msg), (const char *)start, (const char *)cur)
again:
    start = cur;
    /*!re2c
        $                  { return eof_tok(lx); }
        blank | comment    { goto again; }

        ident              {
            int type = lx->after_dot ? TK_IDENT
                     : keyword((const char *)start, (size_t)(cur - start));
            return T(type);
        }

        int frac? exp?     { return T(TK_NUMBER); }
        int frac? [A-Za-z] [A-Za-z0-9.]* { return T(TK_QUANTITY); }

        "\"" schar* "\""   { return T(TK_STRING); }
        "\"" schar* "\\"   {
            /* Underline the bad escape, then resume after the string's closing quote. */
            start = cur - 1;
            if (cur < lim && *cur != '\n')
                cur++;
            gr_token t = E("invalid escape in string (use \\\" \\\\ \\/ \\b \\f \\n \\r \\t or \\uXXXX)");
            lx->pos = skip_string_rest(lx, lx->pos);
            return t;
        }
        "\"" schar*        { return E("unterminated string"); }

        "/" ([^/\\\n\x00] | "\\" [^\n\x00])* "/"  { return T(TK_REGEX); }
        "/" ([^/\\\n\x00] | "\\" [^\n\x00])*      { return E("unterminated regular expression (a '/' must end it on the same line)"); }

        "=="  { return T(TK_EQ); }
        "!="  { return T(TK_NE); }
        "<="  { return T(TK_LE); }
        ">="  { return T(TK_GE); }
        "<"   { return T(TK_LT); }
        ">"   { return T(TK_GT); }
        "="   { return T(TK_ASSIGN); }
        "("   { return T(TK_LPAREN); }
        ")"   { return T(TK_RPAREN); }
        "["   { return T(TK_LBRACKET); }
        "]"   { return T(TK_RBRACKET); }
        "{"   { return T(TK_LBRACE); }
        "}"   { return T(TK_RBRACE); }
        ","   { return T(TK_COMMA); }
        "."   { return T(TK_DOT); }
        ":"   { return T(TK_COLON); }
        ";"   { return T(TK_SEMI); }

        "&&"  { return E("'&&' is written 'and'"); }
        "||"  { return E("'||' is written 'or'"); }
        "!"   { return E("'!' is written 'not' ('!=' compares)"); }
        [\x80-\xff]+ { return E("non-ASCII characters belong inside strings"); }
        *     {
            unsigned char ch = start[0];
            if (ch >= 0x20 && ch < 0x7f)
                snprintf(lx->errbuf, sizeof lx->errbuf, "unexpected character '%c'", ch);
            else
                snprintf(lx->errbuf, sizeof lx->errbuf, "unexpected byte 0x%02x", ch);
            return E(lx->errbuf);
        }
    */
#undef T
#undef E
}

/* Skips blanks and comments from position p; returns the new position. */
static size_t skip_blank(const gr_lexer *lx, size_t p)
{
    for (;;) {
        while (p < lx->len && strchr(" \t\r\n\f", lx->src[p]) && lx->src[p])
            p++;
        if (p < lx->len && lx->src[p] == '#') {
            while (p < lx->len && lx->src[p] != '\n')
                p++;
            continue;
        }
        return p;
    }
}

int gr_next_is_json(const gr_lexer *lx)
{
    size_t p = skip_blank(lx, lx->pos);
    return p < lx->len && (lx->src[p] == '{' || lx->src[p] == '[');
}

gr_token gr_lex_json(gr_lexer *lx)
{
    size_t p = skip_blank(lx, lx->pos), start = p;
    const char *s = lx->src;
    if (p >= lx->len || (s[p] != '{' && s[p] != '[')) {
        size_t end = p < lx->len ? p + 1 : p;
        return error_tok(lx, "expected '{' to start a JSON value", s + p, s + end);
    }
    /* Brackets are only counted here; their balance and kinds are checked by the JSON parser,
     * which gives the better message. */
    int depth = 0;
    while (p < lx->len) {
        char c = s[p++];
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0)
                return tok(lx, TK_JSON, s + start, s + p);
        } else if (c == '"') {
            size_t quote = p - 1;
            while (p < lx->len && s[p] != '"' && s[p] != '\n') {
                if (s[p] == '\\' && p + 1 < lx->len)
                    p++;
                p++;
            }
            if (p >= lx->len || s[p] == '\n')
                return error_tok(lx, "unterminated string in JSON", s + quote, s + p);
            p++;
        }
    }
    return error_tok(lx, "unterminated JSON value: no matching '}'", s + start, s + start + 1);
}

/* Moves past a string of a template body that starts at p (at its '"'): inside it, `${ ... }`
 * holds an expression, which may hold strings and braces of its own.  Returns the position
 * after the closing quote, or 0 (with *why) when the string or an expression does not end. */
static size_t skip_template_string(const gr_lexer *lx, size_t p, const char **why, size_t *at);

/* Moves past a bracketed region that starts at p ('(' '[' '{'), brackets of every kind counted,
 * template strings skipped.  Returns the position after its closing bracket, or 0. */
static size_t skip_template_group(const gr_lexer *lx, size_t p, const char **why, size_t *at)
{
    size_t open = p;
    const char *s = lx->src;
    int depth = 0;
    while (p < lx->len) {
        char c = s[p];
        if (c == '"') {
            if (!(p = skip_template_string(lx, p, why, at)))
                return 0;
            continue;
        }
        if (c == '#') {   /* a comment, to the end of the line */
            while (p < lx->len && s[p] != '\n')
                p++;
            continue;
        }
        p++;
        if (c == '{' || c == '[' || c == '(')
            depth++;
        else if ((c == '}' || c == ']' || c == ')') && --depth == 0)
            return p;
    }
    *why = "no matching closing bracket";
    *at = open;
    return 0;
}

static size_t skip_template_string(const gr_lexer *lx, size_t p, const char **why, size_t *at)
{
    const char *s = lx->src;
    size_t open = p;
    for (p++; p < lx->len && s[p] != '\n'; ) {
        if (s[p] == '"')
            return p + 1;
        if (s[p] == '\\' && p + 1 < lx->len) {
            p += 2;
        } else if (s[p] == '$' && p + 1 < lx->len && s[p + 1] == '$') {
            p += 2;     /* "$$" is a literal '$': "$${" is no interpolation */
        } else if (s[p] == '$' && p + 1 < lx->len && s[p + 1] == '{') {
            /* ${ expression }: brackets counted from its '{' */
            size_t end = skip_template_group(lx, p + 1, why, at);
            if (!end) {
                if (*at == p + 1) {
                    *why = "'${' is never closed with '}'";
                    *at = p;
                }
                return 0;
            }
            p = end;
        } else {
            p++;
        }
    }
    *why = "unterminated string";
    *at = open;
    return 0;
}

gr_token gr_lex_template(gr_lexer *lx)
{
    size_t p = skip_blank(lx, lx->pos);
    const char *s = lx->src, *why = NULL;
    if (p >= lx->len || (s[p] != '{' && s[p] != '[' && s[p] != '(')) {
        size_t end = p < lx->len ? p + 1 : p;
        return error_tok(lx, "expected '{', '[' or '('", s + p, s + end);
    }
    size_t at = p;
    size_t end = skip_template_group(lx, p, &why, &at);
    if (!end) {
        /* Underline what did not end: a bracket, a string or a '${'. */
        if (at == p)
            snprintf(lx->errbuf, sizeof lx->errbuf, "'%c' is never closed", s[p]);
        else
            snprintf(lx->errbuf, sizeof lx->errbuf, "%s", why);
        return error_tok(lx, lx->errbuf, s + at, s + at + (s[at] == '$' ? 2 : 1));
    }
    return tok(lx, s[p] == '(' ? TK_ARGS : TK_JSON, s + p, s + end);
}

int gr_next_char(const gr_lexer *lx)
{
    size_t p = skip_blank(lx, lx->pos);
    return p < lx->len ? (unsigned char)lx->src[p] : -1;
}
