/*
 * cc.h — the compiler's internal header: the compilation state, the checked IR, the builder of
 * the program image, and the helpers the passes share.  Only files in compiler/ include it.
 *
 * Passes: grammar/ parses each file into an AST (ast.c builds it) -> decl.c collects and checks
 * declarations -> expr.c (match expressions) and pattern.c (JSON patterns) lower rule conditions
 * into one IR -> codegen.c emits bytecode into the program builder -> compiler.c hands out the
 * finished vm_program.
 */
#ifndef EBR_CC_H
#define EBR_CC_H

#include <stdbool.h>
#include <stdio.h>

#include "ast.h"
#include "compiler.h"

/* ---- growable arrays ------------------------------------------------------------------------ */
#define VEC(T) struct { T *v; uint32_t n, cap; }

/* Makes room for one more element in a VEC (aborts when memory runs out: a compiler that cannot
 * allocate a few bytes has nothing better to do). */
void vec_reserve(void **v, uint32_t *cap, size_t elem, uint32_t need);
#define vec_push(vec, x) \
    (vec_reserve((void **)&(vec).v, &(vec).cap, sizeof *(vec).v, (vec).n + 1), \
     (vec).v[(vec).n] = (x), (vec).n++)

typedef VEC(uint32_t) u32vec;

/* The index under construction (index.c): predicates and clauses per bus. */
typedef struct {
    uint32_t bus, path, test;
    u32vec clauses;   /* the clauses it triggers */
    bool used;        /* some clause needs it */
} cc_xpred;

typedef struct {
    uint32_t bus, rule, need, flags, depth;
    u32vec preds;
} cc_xclause;

void *cc_xmalloc(size_t n);
void *cc_xrealloc(void *p, size_t n);
char *cc_xstrndup(const char *s, size_t n);

/* ---- the checked IR -------------------------------------------------------------------------- */
typedef enum {
    IR_TEST,   /* path, test */
    IR_AND,    /* kid[0..nkid) */
    IR_OR,     /* kid[0..nkid) */
    IR_NOT,    /* kid[0] */
} ir_kind;

typedef struct ir ir;
struct ir {
    ir_kind kind;
    uint32_t path, test;
    ir **kid;
    uint32_t nkid, cap;
    vm_span span;
};

/* ---- a diagnostic ---------------------------------------------------------------------------- */
typedef struct {
    int warning;
    uint32_t src, off, len;
    char *msg;
    uint32_t seq;   /* order of report, to keep sorting stable */
} cc_msg;

/* A declared name: which declaration, where, and its index in the program's tables. */
typedef struct {
    const char *name;
    ast *node;
    cc_unit *unit;
    uint32_t index;
} cc_name;

/* Declared names of one kind, with a hash index (slots hold index + 1). */
typedef struct {
    cc_name *v;
    uint32_t n, cap;
    uint32_t *slots, nslots;
} cc_names;

/* The index of name s[0..len) in list, or -1. */
int cc_names_find(const cc_names *list, const char *s, size_t len);
void cc_names_add(cc_names *list, cc_name e);
void cc_names_free(cc_names *list);

struct cc_comp {
    /* arena */
    struct cc_chunk *chunks;
    /* the scratch arena: what lowering one pattern needs only meanwhile (its JSON tree), reused
     * from the start for the next pattern (cc_scratch_reset) */
    struct cc_chunk *scratch, *scratch_at;
    /* the rule arena: one rule's IR, from lowering to code and index, reused from the start for
     * the next rule (cc_rule_reset) */
    struct cc_chunk *rulemem, *rulemem_at;
    unsigned flags;      /* CC_... of compiler.h */
    /* files */
    VEC(cc_unit *) units;
    /* diagnostics */
    VEC(cc_msg) msgs;
    int nerrors, nwarnings;
    /* declarations that failed to parse: "bus NAME", "target NAME", "rule NAME" */
    VEC(char *) broken;
    /* declarations, by kind */
    cc_names buses, targets, rules, sources;
    cc_names dups;       /* duplicate declarations: reported, and their bodies checked too */
    ast *server;
    cc_unit *server_unit;
    /* the program being built */
    VEC(char) strs;
    struct cc_strtab *strtab;
    VEC(vm_source) srcs;
    VEC(vm_str) segs;
    VEC(vm_path) paths;
    uint32_t *path_slots, path_slots_cap;   /* hash of paths, see cc_path */
    VEC(vm_const) consts;
    VEC(vm_test) tests;
    VEC(vm_regex) regexes;
    VEC(vm_re_inst) re_insts;
    VEC(vm_range) re_ranges;
    VEC(vm_inst) code;
    VEC(vm_span) code_spans;
    VEC(vm_rule) prules;
    VEC(uint32_t) rule_targets;
    VEC(vm_bus) pbuses;
    VEC(vm_target) ptargets;
    VEC(vm_input) pinputs;
    VEC(vm_cfg) cfgs;
    uint32_t server0, nserver;
    /* transforms and templates (template.c) */
    cc_names templates;          /* `template` declarations */
    struct cc_template *tmpls;   /* ... parsed (template.c), by the same index */
    uint32_t ntmpls;
    VEC(vm_xform) xforms;
    VEC(vm_inst) tcode;
    VEC(vm_span) tcode_spans;
    VEC(vm_tpath) tpaths;
    VEC(vm_tstep) tsteps;
    /* the index */
    VEC(cc_xpred) xpreds;
    uint32_t *xpred_slots, xpred_cap;
    VEC(cc_xclause) xclauses;
    u32vec ix_local_to_pred;
    VEC(vm_ix_bus) ix_buses;
    VEC(vm_ix_path) ix_paths;
    VEC(vm_ix_pred) ix_preds;
    VEC(vm_ix_clause) ix_clauses;
    VEC(vm_ix_key) ix_keys;
    u32vec ix_slots;
    VEC(vm_ix_node) ix_nodes;
    VEC(double) ix_bounds;
    u32vec ix_refs;
};

/* Reports an error (or warning) at a span of unit u. */
void cc_error(cc_unit *u, uint32_t off, uint32_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void cc_warning(cc_unit *u, uint32_t off, uint32_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define cc_error_at(u, node, ...) cc_error((u), (node)->off, (node)->len, __VA_ARGS__)

/* Writes every diagnostic, sorted by file and position, in the documented format. */
void cc_print_diags(cc_comp *c, FILE *out);

bool cc_is_broken(cc_comp *c, const char *kind, const char *name, size_t len);

/* ---- literal values -------------------------------------------------------------------------- */

/* Decodes a string token (with its quotes) into UTF-8 in the arena.  On a bad escape or bad UTF-8
 * reports an error at the offending bytes and returns NULL. */
char *cc_string(cc_unit *u, const gr_token *t, size_t *len);

/* The text of a token, NUL-terminated, in the arena. */
char *cc_token_text(cc_unit *u, const gr_token *t);

/* The offset in the source of byte `pos` of the decoded string token t (escapes differ in
 * length before and after decoding). */
uint32_t cc_source_offset(cc_unit *u, const gr_token *t, size_t pos);

/* Decodes a JSON string body s[0..n) (no quotes) into out (n bytes suffice).  Returns the length,
 * or -1 with the faulty bytes' offset, length and a message. */
long cc_decode_json_string(const char *s, size_t n, char *out, size_t *bad, size_t *badlen,
                           const char **why);

/* Reads a duration ("5s", "1h30m", "250ms", "1.5s") into milliseconds, or a size ("256KiB") into
 * bytes.  Returns 1; 0 if t is not one (the caller says what it expected); -1 if it is one but
 * out of range (over 100 years, a fraction of a byte, over 2^60 bytes). */
int cc_duration(cc_unit *u, const gr_token *t, double *ms);
int cc_size(cc_unit *u, const gr_token *t, double *bytes);

/* ---- the program builder --------------------------------------------------------------------- */
vm_str cc_str(cc_comp *c, const char *s, size_t n);
/* s in the pool, not looked for nor found again (a source file's whole text) */
vm_str cc_str_unpooled(cc_comp *c, const char *s, size_t n);
/* The same for a malloc'd text of n + 1 bytes (NUL last) that the pool takes over: the caller
 * no longer owns it. */
vm_str cc_str_adopt(cc_comp *c, char *text, size_t n);
void cc_strtab_free(cc_comp *c);
uint32_t cc_path(cc_comp *c, const char *const *segs, const size_t *lens, uint32_t nseg);

/* The most segments a path may have. */
#define CC_MAX_PATH 64

/* Appends the dot-separated parts of name s[0..n) to segs/lens (field names are flattened with
 * dots, as in EventBridge: {"a.b": 1} is {"a": {"b": 1}}).  Returns false, appending nothing,
 * when the path would exceed CC_MAX_PATH segments. */
bool cc_split_name(const char *s, size_t n, const char **segs, size_t *lens, uint32_t *nseg);
uint32_t cc_const(cc_comp *c, const vm_const *k);
uint32_t cc_test(cc_comp *c, vm_test_kind kind, unsigned flags, const uint32_t *consts, uint32_t n);

/* Builds constants; each returns the constant's index. */
uint32_t cc_const_string(cc_comp *c, const char *s, size_t n, bool fold, bool ip_aware);
uint32_t cc_const_number(cc_comp *c, const char *text, size_t n, double value);
uint32_t cc_const_simple(cc_comp *c, vm_const_type type);
uint32_t cc_const_range(cc_comp *c, double lo, bool lo_open, double hi, bool hi_open);

/* Parses "a.b.c.d/n" or an IPv6 prefix into a CIDR constant; returns false with a message in err
 * (a static string) when it is malformed. */
bool cc_const_cidr(cc_comp *c, const char *s, size_t n, uint32_t *out, const char **err);

/* Compiles an I-Regexp (escape '\\' or '~'); returns false with a message and a byte position in
 * the pattern when it is invalid. */
bool cc_const_regex(cc_comp *c, const char *pat, size_t n, char esc, uint32_t *out,
                    char *err, size_t errcap, size_t *errpos);

/* Checks a wildcard pattern (escapes, no "**"); returns false with a message and a position. */
bool cc_check_wildcard(const char *s, size_t n, char *err, size_t errcap, size_t *errpos);

/* ---- IR -------------------------------------------------------------------------------------- */
ir *ir_new(cc_comp *c, ir_kind kind, vm_span span);
ir *ir_test(cc_comp *c, uint32_t path, uint32_t test, vm_span span);
void ir_add(cc_comp *c, ir *parent, ir *kid);
vm_span cc_span(cc_unit *u, uint32_t off, uint32_t len);

/* ---- passes ---------------------------------------------------------------------------------- */

/* Collects the declarations of every unit, checks names and options, lowers each rule and emits
 * the program.  Returns the number of errors. */
int cc_check_and_build(cc_comp *c);

/* The standard templates (the .ebr files of stdlib-templates/, embedded by the build), ended
 * by a NULL name. */
extern const struct cc_stdlib_file { const char *name; const char *text; size_t len; } cc_stdlib_files[];

/* Parses and checks every template declaration (template.c). */
void cc_check_templates(cc_comp *c);

/* Compiles a rule's `transform` clause; returns its index in the program's transforms, or
 * VM_NONE for the whole event (and after reporting errors). */
uint32_t cc_compile_transform(cc_comp *c, cc_unit *u, const ast *tf);

/* " (did you mean 'x'?)" when one of cands is close to name, else "". */
void cc_suggest(const char *name, size_t len, const char *const *cands, size_t n, char *buf,
                size_t cap);

/* Lowers a `match` expression to IR (NULL after reporting errors). */
ir *cc_lower_expr(cc_unit *u, ast *e);

/* Lowers a `pattern` JSON body to IR (NULL after reporting errors). */
ir *cc_lower_pattern(cc_unit *u, ast *json);

/* Files rule `rule` (on bus `bus`) in the index: its clauses and predicates. */
void cc_index_rule(cc_comp *c, uint32_t rule, uint32_t bus, const ir *root);

/* Lays out the index of every bus once all rules are filed. */
void cc_index_build(cc_comp *c);

/* Emits rule code for ir; returns the first instruction's index and sets *n. */
uint32_t cc_codegen(cc_comp *c, ir *root, vm_span rule_span, uint32_t *n);

/* Checks a bus's `schema "TYPE" file "PATH" [on_invalid reject|dead_letter|accept]` option:
 * the file (relative to the rules file's directory) must hold a schema that compiles
 * (compiler/schema_opt.c, docs/schemas.md). */
bool cc_opt_schema(cc_comp *c, cc_unit *u, ast *o, const char *w);

#endif
