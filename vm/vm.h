/*
 * vm.h — the VM's public door.
 *
 * It holds the bytecode definition that the compiler emits (instruction layout, opcodes, tests,
 * constants, the ruleset image `vm_program`), the .ebc file reader and writer, and the matcher
 * that runs a program against one event.  Nothing here depends on runtime/.
 */
#ifndef EBR_VM_H
#define EBR_VM_H

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <stdint.h>
#include <stdbool.h>

#define EBR_VERSION "0.1.0"

/* ---------------------------------------------------------------------------------------------
 * Instruction layout: one 64-bit word.
 *
 *     63                              32 31                    8 7         0
 *    +----------------------------------+-----------------------+-----------+
 *    |               B (32)             |         A (24)        |  OP (8)   |
 *    +----------------------------------+-----------------------+-----------+
 *
 * Only the accessors below touch the bits.  The compiler checks operands against VM_MAX_A /
 * VM_MAX_B before it emits; the loader checks them again against the program's tables.
 */
typedef uint64_t vm_inst;

#define VM_OP(i)          ((unsigned)((i) & 0xffu))
#define VM_A(i)           ((uint32_t)(((i) >> 8) & 0xffffffu))
#define VM_B(i)           ((uint32_t)((i) >> 32))
#define VM_INST(op, a, b) ((vm_inst)(op) | ((vm_inst)(a) << 8) | ((vm_inst)(b) << 32))
#define VM_MAX_A          0xffffffu
#define VM_MAX_B          0xffffffffu

typedef enum {
#define OP(name, fmt, doc) VM_OP_##name,
#include "opcodes.def"
#undef OP
    VM_OP__COUNT
} vm_opcode;

extern const char *const vm_op_names[VM_OP__COUNT];
extern const char *const vm_op_formats[VM_OP__COUNT];
extern const char *const vm_op_docs[VM_OP__COUNT];

/* ---------------------------------------------------------------------------------------------
 * The ruleset image.  Every table is a flat array; strings live in one pool and are referenced by
 * (offset, length).  The compiler builds it, vm_program_write() serialises it, vm_program_load()
 * reads and verifies it.
 */
typedef struct { uint32_t off, len; } vm_str;

/* A place in a source file, for messages and the disassembler. */
typedef struct { uint32_t src, off, len; } vm_span;

typedef struct { vm_str name, text; } vm_source;

/* A field path: nseg key segments, segs[seg0 .. seg0+nseg). Arrays on the way are implicit. */
typedef struct { uint32_t seg0, nseg; } vm_path;

/* Kinds of constant a test compares against. */
typedef enum {
    VM_C_STR,    /* s: UTF-8 text (case-folded when the test ignores case) */
    VM_C_NUM,    /* s: canonical decimal (see vm_number_canon), num: its double value */
    VM_C_TRUE,
    VM_C_FALSE,
    VM_C_NULL,
    VM_C_RANGE,  /* lo, hi with VM_CF_LO_OPEN / VM_CF_HI_OPEN; +-inf for no bound */
    VM_C_CIDR,   /* ip (IPv4 as ::ffff:a.b.c.d), bits: the prefix length within the 128 */
    VM_C_REGEX,  /* re: index into the program's regexes; s: its source text */
} vm_const_type;

enum {
    VM_CF_IP      = 1 << 0, /* VM_C_STR that spells an IP address: ip holds it, bits = 128 */
    VM_CF_LO_OPEN = 1 << 1, /* VM_C_RANGE: lower bound excluded */
    VM_CF_HI_OPEN = 1 << 2, /* VM_C_RANGE: upper bound excluded */
    VM_CF_TILDE   = 1 << 3, /* VM_C_REGEX: s is written with Quamina's '~' escapes */
};

/* 32 bytes: a type uses one member of the union at most (a program of 100,000 rules holds
 * 2.8M constants; with every member apart they took 64 bytes each, 180 MB). */
typedef struct {
    uint8_t type, flags, bits;
    vm_str s;
    union {
        double num;                       /* VM_C_NUM */
        struct { double lo, hi; };        /* VM_C_RANGE */
        uint8_t ip[16];                   /* VM_C_CIDR, VM_C_STR with VM_CF_IP */
        uint32_t re;                      /* VM_C_REGEX */
    };
} vm_const;

/* Tests: a predicate on one leaf value; it passes if any of its constants passes (an "or" over
 * args[arg0 .. arg0+narg)), and VM_TF_NEG turns that around for the leaf (anything-but: the
 * leaf is there and passes none). */
typedef enum {
    VM_T_EXISTS,   /* any leaf: string, number, true, false or null */
    VM_T_EQ,       /* typed equality with a constant */
    VM_T_PREFIX,
    VM_T_SUFFIX,
    VM_T_CONTAINS,
    VM_T_WILDCARD, /* '*' matches any run; "\*" and "\\" are literal */
    VM_T_REGEX,    /* I-Regexp, the whole string */
    VM_T_RANGE,    /* numbers (and numeric strings with VM_TF_ASNUM) inside a range */
    VM_T_CIDR,     /* strings that spell an IP address inside a network */
    VM_T__COUNT
} vm_test_kind;

enum {
    VM_TF_NEG   = 1 << 0, /* the leaf exists and passes none of the constants */
    VM_TF_CI    = 1 << 1, /* compare case-insensitively (Unicode full case folding) */
    VM_TF_ASNUM = 1 << 2, /* a string value that spells a JSON number is compared as that number */
    VM_TF_BAND  = 1 << 3, /* (index only, RANGE of one constant) `p >= lo and p < hi` of one
                             clause: some number leaf passes the lower bound and some (maybe
                             another) the upper one, i.e. max >= lo and min < hi */
};

typedef struct {
    uint8_t kind, flags;
    uint32_t arg0, narg;  /* constants */
} vm_test;

extern const char *const vm_test_names[VM_T__COUNT];

/* I-Regexp programs: a Thompson NFA over code points, run in linear time. */
typedef enum {
    VM_RE_CLASS, /* consume one code point within ranges[x .. x+y); continue at pc+1 */
    VM_RE_SPLIT, /* continue at x and at y (x preferred) */
    VM_RE_JMP,   /* continue at x */
    VM_RE_MATCH, /* accept if the input is used up */
} vm_re_op;

typedef struct { uint8_t op; uint32_t x, y; } vm_re_inst;
typedef struct { uint32_t lo, hi; } vm_range; /* inclusive code point range */
typedef struct { uint32_t inst0, ninst; } vm_regex; /* pcs are relative to inst0 */

/* Declarations the daemon needs (buses, targets, server settings): small trees of options. */
typedef enum {
    VM_CFG_STR,      /* str */
    VM_CFG_ENV,      /* str: the environment variable's name, read when the daemon starts */
    VM_CFG_NUM,      /* num */
    VM_CFG_DURATION, /* num: milliseconds */
    VM_CFG_SIZE,     /* num: bytes */
    VM_CFG_BOOL,     /* num: 0 or 1 */
    VM_CFG_IDENT,    /* str: a bare word (an fsync policy, a target's name, ...) */
    VM_CFG_CALL,     /* str: function name; children: named arguments */
    VM_CFG_LIST,     /* children */
    VM_CFG_OPTION,   /* key: option name; children: its values */
} vm_cfg_type;

typedef struct {
    uint8_t type;
    vm_str key, str;
    double num;
    uint32_t child0, nchild;
    vm_span span;
} vm_cfg;

typedef struct { vm_str name; uint32_t opt0, nopt; vm_span span; } vm_bus;
typedef struct { vm_str name, kind; uint32_t value, opt0, nopt; vm_span span; } vm_target;
/* An event source (`source NAME KIND VALUE { options } to BUS`): what the daemon takes events
 * from besides its HTTP API, and the bus it stores them on. */
typedef struct { vm_str name, kind; uint32_t bus, value, opt0, nopt; vm_span span; } vm_input;

#define VM_NONE 0xffffffffu

/* Names the daemon turns into names of its own: a (rule, target) pair's durable cursor is named
 * RULE.TARGET, and a bus's log is a directory named after the bus.  Storage takes names up to
 * this many bytes, so the compiler refuses a bus name or a pair's name that is longer. */
#define VM_MAX_NAME 200u

/* How many bus targets one event may pass through: each bus target stamps the event it appends
 * with the extension attribute VM_HOPS_ATTR, one more than the event it came from had; past
 * this, the delivery is dead-lettered instead (a loop between buses).  The compiler warns of a
 * possible loop. */
#define VM_MAX_BUS_HOPS 16u
#define VM_HOPS_ATTR "ebrhops"

typedef struct {
    vm_str name;
    uint32_t bus;
    uint32_t code0, ncode;   /* instructions */
    uint32_t tgt0, ntgt;     /* rule_targets */
    uint32_t dead_letter;    /* target index or VM_NONE */
    uint32_t xform;          /* its transform (xforms), or VM_NONE: the whole event */
    vm_span span;
} vm_rule;

/* ---------------------------------------------------------------------------------------------
 * Transforms (docs/transforms.md): what a matched rule's targets receive.  A template is code
 * (tcode) that writes the payload from the event, read where it lies in the event's text; a
 * function transform is run by the caller (the runtime): the VM only describes it.
 */
typedef enum {
    VM_X_TEMPLATE,  /* tcode[code0 .. code0+ncode) writes the payload */
    VM_X_EXEC,      /* arg: a command; the event on its stdin, the payload from its stdout */
    VM_X_HTTP,      /* arg: a URL; the event POSTed, the response body is the payload */
} vm_xform_kind;

enum { VM_XF_TEXT = 1 };    /* the payload is text, not JSON */

typedef struct {
    uint8_t kind, flags;
    uint32_t code0, ncode;
    vm_str arg;
    uint32_t timeout_ms;
    vm_span span;           /* the transform clause */
} vm_xform;

/* A template path (JSONPath: `.name`, `['name']`, `[n]`, `[-n]`, `[*]`) as steps from the
 * event's root. */
enum { VM_TS_NAME, VM_TS_INDEX, VM_TS_ALL };
typedef struct { uint8_t kind; int32_t index; vm_str name; } vm_tstep;
typedef struct {
    uint32_t step0, nstep;
    uint32_t path;          /* names only: the same path for the scanner (paths), or VM_NONE */
} vm_tpath;

/* Template instructions (VM_INST(op, a, b), as the matcher's).  A value on the stack is a JSON
 * value, a string, or nothing (a path that names nothing). */
#define VM_TEMPLATE_OPCODES(X)                                                                   \
    X(TEXT,    "write pool[b .. b+a)")                                                          \
    X(CONST,   "push the JSON value written pool[b .. b+a)")                                    \
    X(STR,     "push the string pool[b .. b+a)")                                                \
    X(PATH,    "push the value at template path a (an array when it has [*]; nothing if none)")  \
    X(VAR,     "push variable a: $bus, $rule, $ingest_time")                                    \
    X(CALL,    "call function a on the top b values")                                           \
    X(ELSE,    "if the top is neither nothing nor null, go to b; else pop it (x ?? y)")       \
    X(CAT,     "pop a values: push the string of their text")                                   \
    X(EMIT,    "pop and write it: a = 0 as JSON, 1 inside a JSON string, 2 as text, 3 as a key") \
    X(BEGIN,   "write '{' (a = 0) or '[' (a = 1); a new object or array has no member yet")     \
    X(SEP,     "write ',' unless this is the first member")                                     \
    X(END,     "write '}' (a = 0) or ']' (a = 1)")                                              \
    X(SKIP,    "if the top is nothing or null, pop it and go to b (jumps count from the "       \
               "transform's first instruction)")

typedef enum {
#define X(name, doc) VM_TO_##name,
    VM_TEMPLATE_OPCODES(X)
#undef X
    VM_TO__COUNT
} vm_top;

enum { VM_EMIT_JSON, VM_EMIT_INSTR, VM_EMIT_TEXT, VM_EMIT_KEY };
enum { VM_VAR_BUS, VM_VAR_RULE, VM_VAR_INGEST_TIME, VM_VAR__COUNT };

/* Template functions: name, least and most arguments. */
#define VM_TEMPLATE_FUNCTIONS(X)  \
    X(UPPER, "upper", 1, 1)       \
    X(LOWER, "lower", 1, 1)       \
    X(LEN, "len", 1, 1)           \
    X(JOIN, "join", 1, 2)         \
    X(TO_STRING, "to_string", 1, 1) \
    X(TO_NUMBER, "to_number", 1, 1) \
    X(JSON, "json", 1, 1)         \
    X(FORMAT_TIME, "format_time", 1, 2) \
    X(NOW, "now", 0, 0)

typedef enum {
#define X(id, name, lo, hi) VM_FN_##id,
    VM_TEMPLATE_FUNCTIONS(X)
#undef X
    VM_FN__COUNT
} vm_fn;

/* ---------------------------------------------------------------------------------------------
 * The index (docs/index.md): per bus, one decision structure built by the compiler from all the
 * rules of the bus, so that the work per event follows the event, not the number of rules.
 *
 * A *predicate* is one test on one path.  For each path a dispatcher finds the predicates a leaf
 * passes: exact values, case-folded strings, prefixes, suffixes and CIDR networks by lookups in
 * one hash table keyed by (path, key kind, bytes); numeric ranges by a segment tree over their
 * bounds; `exists` as a list; everything else (wildcards, regexes, anything-but, `as number`)
 * as a list of tests to run.  A rule is one or more *clauses*; a clause is triggered by its
 * rarest predicate and is complete when all the predicates it needs have passed.  A candidate
 * is a match at once, unless the clause cannot decide alone (a negation, or arrays in this event
 * on its paths): then the rule's bytecode, the reference evaluator, confirms it.
 */
typedef enum {
    VM_K_STR,       /* key: the decoded string */
    VM_K_STR_CI,    /* key: the case-folded string */
    VM_K_NUM,       /* key: the canonical decimal (vm_number_canon) */
    VM_K_TRUE,
    VM_K_FALSE,
    VM_K_NULL,
    VM_K_IP,        /* key: 16 address bytes (an IP-aware string constant) */
    VM_K_PREFIX,    /* key: the prefix */
    VM_K_PREFIX_CI,
    VM_K_SUFFIX,
    VM_K_SUFFIX_CI,
    VM_K_CIDR,      /* key: 16 masked address bytes; aux: prefix length */
    VM_K__COUNT
} vm_key_kind;

typedef struct {
    uint32_t path, test;
    uint32_t clause0, nclause;  /* ix_refs: the clauses this predicate triggers */
} vm_ix_pred;

enum { VM_IXC_VERIFY = 1 };     /* the clause holds a negation: run the rule to confirm */

typedef struct {
    uint32_t rule;
    uint32_t need;              /* npred: all its predicates must pass (it is listed under its
                                   rarest); 1: any one; 0: a candidate for every event */
    uint32_t flags;
    uint32_t depth;             /* the longest path prefix two of its predicates share: arrays
                                   no deeper can tie their leaves to one element */
    uint32_t pred0, npred;      /* ix_refs: the predicates it counts */
} vm_ix_clause;

typedef struct {
    uint32_t path;
    uint32_t kinds;             /* bit k set: keys of vm_key_kind k exist for this path */
    uint32_t exists0, nexists;  /* ix_refs: predicates every leaf passes */
    uint32_t generic0, ngeneric;/* ix_refs: predicates tested one by one */
    uint32_t plen0, nplen;      /* ix_refs: the distinct lengths of prefixes ... */
    uint32_t slen0, nslen;      /* ... of suffixes ... */
    uint32_t clen0, nclen;      /* ... and of CIDR prefixes (0..128) */
    uint32_t bound0, nbound;    /* ix_bounds: the sorted distinct finite bounds of ranges */
    uint32_t node0, nnode;      /* ix_nodes: the range segment tree (leaves: 2*nbound+1 slots),
                                   or, when nnode is odd (2*nbound+1), one list per slot */
    uint32_t band0, nband;      /* ix_refs: its VM_TF_BAND predicates, by lower bound (they are
                                   in the tree too; this finds those between two leaves) */
} vm_ix_path;

typedef struct {
    uint8_t kind, aux;
    uint32_t ipath;             /* the vm_ix_path (so a key belongs to one bus and path) */
    vm_str key;                 /* bytes in the string pool */
    uint32_t list0, nlist;      /* ix_refs: the predicates a leaf with this key passes */
} vm_ix_key;

typedef struct { uint32_t list0, nlist; } vm_ix_node;  /* ix_refs: predicates */

typedef struct {
    uint32_t path0, npath;      /* ix_paths, sorted by path */
    uint32_t pred0, npred;      /* ix_preds */
    uint32_t clause0, nclause;  /* ix_clauses */
    uint32_t always0, nalways;  /* ix_refs: clauses that need no predicate */
} vm_ix_bus;

typedef struct vm_program {
    char *strs;        uint32_t nstrs;
    vm_source *srcs;   uint32_t nsrcs;
    vm_str *segs;      uint32_t nsegs;
    vm_path *paths;    uint32_t npaths;
    vm_const *consts;  uint32_t nconsts;
    vm_test *tests;    uint32_t ntests;
    vm_regex *regexes; uint32_t nregexes;
    vm_re_inst *re_insts; uint32_t nre_insts;
    vm_range *re_ranges;  uint32_t nre_ranges;
    vm_inst *code;     uint32_t ncode;
    vm_span *code_spans;   /* one per instruction */
    vm_rule *rules;    uint32_t nrules;
    uint32_t *rule_targets; uint32_t nrule_targets;
    vm_bus *buses;     uint32_t nbuses;
    vm_target *targets; uint32_t ntargets;
    vm_input *inputs;  uint32_t ninputs;
    vm_cfg *cfgs;      uint32_t ncfgs;
    vm_xform *xforms;  uint32_t nxforms;
    vm_inst *tcode;    uint32_t ntcode;
    vm_span *tcode_spans;  /* one per template instruction */
    vm_tpath *tpaths;  uint32_t ntpaths;
    vm_tstep *tsteps;  uint32_t ntsteps;
    uint32_t server0, nserver; /* the server { } block's options, in cfgs */
    /* the index: one vm_ix_bus per bus */
    vm_ix_bus *ix_buses;      uint32_t nix_buses;
    vm_ix_path *ix_paths;     uint32_t nix_paths;
    vm_ix_pred *ix_preds;     uint32_t nix_preds;
    vm_ix_clause *ix_clauses; uint32_t nix_clauses;
    vm_ix_key *ix_keys;       uint32_t nix_keys;
    uint32_t *ix_slots;       uint32_t nix_slots;  /* hash table: key index + 1; a power of two */
    vm_ix_node *ix_nodes;     uint32_t nix_nodes;
    double *ix_bounds;        uint32_t nix_bounds;
    uint32_t *ix_refs;        uint32_t nix_refs;
    struct vm_derived *derived; /* worked out at load time (vm_program_prepare) */
    /* Once vm_program_drop_sources let the source texts go: where each line starts, per source
     * (lines of source i: src_lines[src_line0[i] .. src_line0[i + 1])). */
    uint32_t *src_line0, *src_lines;
} vm_program;

/* A string of the pool, as pointer + length. */
static inline const char *vm_s(const vm_program *p, vm_str s) { return p->strs + s.off; }

/* ---------------------------------------------------------------------------------------------
 * Errors are values: a code, a message, a byte position.
 */
typedef enum {
    VM_OK = 0,
    VM_ERR_IO,
    VM_ERR_FORMAT,   /* not an .ebc file, wrong version, bad checksum, truncated, inconsistent */
    VM_ERR_EVENT,    /* the event is not a JSON object */
    VM_ERR_LIMIT,    /* the event is too deep or too big */
    VM_ERR_NOMEM,
    VM_ERR_TRANSFORM, /* a transform failed for this event (a function's argument, ...) */
    VM_ERR_RULE,     /* vm_match: some rules could not be decided for this event (each one's
                        error in vm_match_failures); the others were */
} vm_status;

typedef struct {
    vm_status code;
    size_t offset;       /* byte offset in the input the message is about */
    char msg[200];
} vm_error;

/* .ebc files ----------------------------------------------------------------------------------
 * Layout (all integers little-endian; docs/bytecode.md draws it):
 *   magic[8] "\x89EBC\r\n\x1a\n" | u32 version | u32 nsections | u64 file length | u32 crc32c of
 *   the bytes after this field | section table: nsections x (u32 tag, u64 offset, u64 length) | data
 */
#define VM_EBC_MAGIC   "\x89" "EBC\r\n\x1a\n"
#define VM_EBC_VERSION 5u

/* Serialises p into a malloc'd buffer (*out, *len). Returns VM_OK or VM_ERR_NOMEM. */
vm_status vm_program_serialize(const vm_program *p, uint8_t **out, size_t *len);
/* The length of p's .ebc image, as vm_program_serialize would make it, without making it. */
uint64_t vm_program_image_size(const vm_program *p);

/* Writes p to the file at path, through a temporary file beside it (path.tmp.PID) that is
 * renamed over path only once it is whole: a reader sees the old file or the new one, and a
 * failed write leaves path as it was and no temporary file behind.  The image is written a
 * buffer at a time, never whole in memory.  Returns VM_OK, or VM_ERR_IO / VM_ERR_NOMEM with
 * err->msg saying why ("cannot write: No such file or directory"). */
vm_status vm_program_save(const vm_program *p, const char *path, vm_error *err);

/* Parses and verifies an .ebc image (checksum, version, every index and jump in range) into a new
 * program.  Returns NULL and fills err when the image is refused. */
vm_program *vm_program_parse(const uint8_t *buf, size_t len, vm_error *err);

/* Reads and parses a file. */
vm_program *vm_program_load(const char *path, vm_error *err);

/* Is the file at path meant to be an .ebc file, sound or damaged, rather than rules source?  True
 * when its first bytes agree with the magic number in most places (the whole magic, a file cut
 * inside it, a magic partly overwritten) or hold a NUL (a binary file is never source).  False
 * for text and for a file that cannot be read (the compiler then reports why). */
bool vm_file_is_ebc(const char *path);

/* Works out the derived tables (the scanner's path trie, ...) of a program made in memory.  vm_program_parse does
 * this itself.  Returns VM_OK or VM_ERR_NOMEM. */
vm_status vm_program_prepare(vm_program *p);

void vm_program_free(vm_program *p);

/* Lets the memory of the rules' source texts go, keeping where their lines start: a daemon needs
 * them only for the file:line:col of a message (vm_span_where), and with 100,000 rules they are
 * 56 MB.  The disassembler and the source lines of `ebc test` need the texts: not after this. */
void vm_program_drop_sources(vm_program *p);

/* The line and column (from 1; the column in bytes) where span s starts. */
void vm_span_where(const vm_program *p, vm_span s, uint32_t *line, uint32_t *col);

/* Reads an RFC 3339 date-time (fraction and offset allowed; 't', 'z' and a space for 'T'
 * too) of s[0..n) into milliseconds since 1970 (UTC); false when it is not one. */
bool vm_parse_time(const char *s, size_t n, int64_t *ms);

/* The source text of span s on one line (runs of white space folded to one space), at most
 * cap - 4 bytes and "..." when cut; the sources must be there (not dropped). */
void vm_span_source(const vm_program *p, vm_span s, char *text, size_t cap);

uint32_t vm_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t vm_crc32c_sw(uint32_t crc, const void *buf, size_t len);   /* the table path, for tests */

/* ---------------------------------------------------------------------------------------------
 * Matching.  A vm_ctx is one thread's scratch memory for one program; after a warm-up it matches
 * events without allocating.
 */
typedef struct vm_ctx vm_ctx;

/* The deepest nesting of objects and arrays in an event that the scanner reads, and that
 * vm_json_check (the daemon's ingest) accepts: the two agree, so a stored event can be matched. */
#define VM_MAX_DEPTH 1024

/* The default work limit of one rule on one event (vm_options.max_steps). */
#define VM_MAX_STEPS 10000000

typedef struct {
    bool reference;      /* run every rule's bytecode instead of the index (for checking) */
    bool no_simd;        /* scan byte by byte even where SIMD is available (for checking) */
    bool plain_search;   /* search array elements one by one, backtracking to the last choice,
                            as the rules' semantics say (for checking the faster search) */
    size_t max_depth;    /* nesting limit for events; 0 means the default (VM_MAX_DEPTH) */
    size_t max_steps;    /* work limit for one rule on one event; 0 means the default
                            (VM_MAX_STEPS): fields examined plus choices revisited, see
                            docs/bytecode.md */
    bool trusted;        /* the caller vouches that every event is valid JSON (the bus log:
                            checked at ingest, guarded by CRCs since): vm_match reads only the
                            parts the rules' paths reach and jumps over the rest by brackets and
                            quotes, checking no number, literal or UTF-8.  Valid JSON gets the
                            verdicts of the validating scan; any other bytes are read safely
                            but may get any verdict (an error or some matches) */
} vm_options;

/* The options a ruleset's server block sets for matching (`match_steps`: max_steps); the rest
 * zero, the defaults.  ebd and `ebc test` both match with them. */
vm_options vm_program_options(const vm_program *p);

vm_ctx *vm_ctx_new(const vm_program *p, const vm_options *opt);
const vm_program *vm_ctx_program(const vm_ctx *c);
void vm_ctx_free(vm_ctx *c);

/* Scans one event (JSON text) and runs every rule (or only the rules on bus `bus`, unless it is
 * VM_NONE).  Returns VM_OK when every rule was decided, and points *rules at the matched rule
 * indices in ascending order (valid until the next call on c).
 *
 * A rule that cannot be decided for this event (its step budget, vm_options.max_steps, ran out)
 * fails alone: the others are decided as usual.  vm_match then returns VM_ERR_RULE, *rules
 * holds the rules that matched, vm_match_failures lists those that failed, and err holds the
 * first failure's message.
 *
 * An error about the event itself fails every rule: an event that is not a JSON object gives
 * VM_ERR_EVENT with the offending byte offset, one nested deeper than vm_options.max_depth
 * VM_ERR_LIMIT, and memory running out VM_ERR_NOMEM; *rules is then empty. */
vm_status vm_match(vm_ctx *c, uint32_t bus, const char *json, size_t len,
                   const uint32_t **rules, size_t *nrules, vm_error *err);

/* A rule that vm_match could not decide for an event, and why (err.code VM_ERR_LIMIT, err.msg
 * names the rule). */
typedef struct {
    uint32_t rule;
    vm_error err;
} vm_rule_error;

/* The rules that the last vm_match on c could not decide (VM_ERR_RULE), in ascending order of
 * rule; points *out at them (valid until the next call on c) and returns how many (0 after any
 * other status). */
size_t vm_match_failures(const vm_ctx *c, const vm_rule_error **out);

/* Why did rule `rule` not match the event last given to vm_match on c (json: the same pointer)?
 * Runs the rule's bytecode and names the condition whose failure got furthest through it (so
 * for `a and b` the first that fails; for `a or b` the last alternative): *at is its
 * instruction (in p->code: a TEST, or the NOTOK of a negation that held; code_spans[*at] is its
 * place in the rules).  False when the rule matches, or when the budget runs out. */
bool vm_why_not(vm_ctx *c, uint32_t rule, const char *json, uint32_t *at);

/* What a transform may read besides the event. */
typedef struct {
    const char *bus, *rule;  /* $bus and $rule (NULL: the names the program gives them) */
    int64_t ingest_ms;       /* $ingest_time: when the event was received, ms since 1970 */
    int64_t now_ms;          /* what now() says, ms since 1970; 0: the clock */
} vm_xform_env;

/* Writes the payload that rule `rule`'s targets receive for the event json[0..len) (valid JSON,
 * as vm_match has checked it; on a trusted context, which did not, a template checks it first
 * and refuses other bytes with VM_ERR_EVENT): the event itself when the rule has no transform,
 * else its template's output.  On VM_OK, *out and *outlen hold the payload (valid until the next call on
 * c) and *text says it is text, not JSON.  A template that fails for this event (a function
 * given what it cannot take) gives VM_ERR_TRANSFORM, with err saying why and where in the
 * rules; nothing is written half.  A function transform (VM_X_EXEC, VM_X_HTTP) is the caller's
 * to run: this returns VM_ERR_TRANSFORM for it. */
vm_status vm_transform(vm_ctx *c, uint32_t rule, const char *json, size_t len,
                       const vm_xform_env *env, const char **out, size_t *outlen, bool *text,
                       vm_error *err);

/* ---------------------------------------------------------------------------------------------
 * Showing what the compiler made.
 */

/* Writes s[0..n) as a JSON string literal (quotes, escapes). */
void vm_put_json_string(FILE *out, const char *s, size_t n);

/* Writes every rule's code, one "addr OPCODE operands ; synopsis" line per instruction. */
void vm_disasm(const vm_program *p, FILE *out);

/* Hashes an index key (vm_ix_key): the compiler lays the table out with it, the VM looks up
 * with it, so it is part of the file format. */
uint64_t vm_ix_hash(unsigned kind, unsigned aux, uint32_t ipath, const char *key, size_t len);

/* Draws the index of every bus as an ASCII tree (`ebc explain`). */
void vm_explain(const vm_program *p, FILE *out);

/* Writes a path ("data.items.sku") or a test on it ("data.total >= 100") in the rule language. */
void vm_print_path(const vm_program *p, uint32_t path, FILE *out);
void vm_print_test(const vm_program *p, uint32_t path, uint32_t test, FILE *out);

/* Formats an address (with "/bits" when bits < 128; IPv4-mapped addresses as dotted quads). */
void vm_format_ip(const uint8_t ip[16], int bits, char *buf, size_t cap);

/* ---------------------------------------------------------------------------------------------
 * Shared helpers the compiler needs too (one implementation of each semantic).
 */

/* Is s[0..n) exactly one JSON value (RFC 8259: strict numbers, well-formed UTF-8, no raw control
 * characters, at most VM_MAX_DEPTH levels deep), white space around it allowed?  If not, *bad_at is the
 * byte where it fails and *why what is wrong there, a static text in the event scanner's words
 * ("trailing comma in object", "unterminated string", ...); either may be NULL. */
bool vm_json_check(const char *s, size_t n, size_t *bad_at, const char **why);

/* vm_json_check without the reason. */
bool vm_json_valid(const char *s, size_t n, size_t *bad_at);

/* Writes s[0..n) escaped for the inside of a JSON string (quotes, backslashes and control
 * characters; everything else as it is) to out, which must hold 6 * n bytes; returns the length
 * written. */
size_t vm_json_escape(char *out, const char *s, size_t n);

/* Walking JSON text that vm_json_valid has accepted, without a DOM (the template navigator and
 * the daemon's ingest both do; inline, as the navigator calls them for every member it passes).
 * vm_json_ws: past white space from p.  vm_json_string_end: past the string whose opening quote
 * is at p (memchr to each quote, then the backslashes before it counted).  vm_json_value_end:
 * past the value that starts at p (brackets counted, strings skipped). */
static inline size_t vm_json_ws(const char *s, size_t n, size_t p)
{
    while (p < n && (s[p] == ' ' || s[p] == '\t' || s[p] == '\n' || s[p] == '\r'))
        p++;
    return p;
}

static inline size_t vm_json_string_end(const char *s, size_t n, size_t p)
{
    for (p++; p < n;) {
        const char *q = (const char *)memchr(s + p, '"', n - p);
        if (!q)
            return n;
        size_t at = (size_t)(q - s), k = at;
        while (k > p && s[k - 1] == '\\')
            k--;
        if ((at - k) % 2 == 0)
            return at + 1;
        p = at + 1;
    }
    return n;
}

static inline size_t vm_json_value_end(const char *s, size_t n, size_t p)
{
    if (p >= n)
        return n;
    if (s[p] == '"')
        return vm_json_string_end(s, n, p);
    if (s[p] == '{' || s[p] == '[') {
        int depth = 0;
        while (p < n) {
            char ch = s[p];
            if (ch == '"') {
                p = vm_json_string_end(s, n, p);
                continue;
            }
            p++;
            if (ch == '{' || ch == '[')
                depth++;
            else if ((ch == '}' || ch == ']') && --depth == 0)
                return p;
        }
        return n;
    }
    while (p < n && !strchr(",}] \t\r\n", s[p]))
        p++;
    return p;
}

/* Decodes one UTF-8 code point from s[0..n); returns its length (1..4), or 0 if the bytes there
 * are not well-formed UTF-8 (overlong, surrogate, > U+10FFFF, truncated). */
size_t vm_utf8_decode(const char *s, size_t n, uint32_t *cp);
size_t vm_utf8_encode(uint32_t cp, char out[4]);

/* Unicode simple case folding (CaseFolding.txt, statuses C and S). */
uint32_t vm_casefold(uint32_t cp);

/* Unicode full case folding (statuses C and F): writes 1 to 3 code points, returns how many. */
size_t vm_casefold_full(uint32_t cp, uint32_t out[3]);

/* Unicode full uppercase (upper) or lowercase mapping: writes 1 to 3 code points. */
size_t vm_case_map(uint32_t cp, bool upper, uint32_t out[3]);

/* Writes the full case folding of UTF-8 text s[0..n) to out, which must hold 3*n bytes (the
 * most a folding grows a text); returns the length written.  ignore_case compares these. */
size_t vm_casefold_utf8(const char *s, size_t n, char *out);

/* Parses an IPv4 (dotted quad) or IPv6 address.  Fills ip with 16 bytes (IPv4 mapped into
 * ::ffff:0:0/96) and returns true; false if s is not an address. */
bool vm_parse_ip(const char *s, size_t n, uint8_t ip[16]);

/* Writes the canonical form of a JSON number (sign, significant digits, exponent) so that two
 * numbers of equal decimal value have the same form: "300", "300.0" and "3e2" all give "3e2".
 * Returns the length, or 0 if s is not a JSON number or out (of size cap) is too small. */
size_t vm_number_canon(const char *s, size_t n, char *out, size_t cap);

/* Length of the JSON number (RFC 8259) that starts s[0..n), or 0 with *why (if not NULL) saying
 * what is wrong. */
size_t vm_json_number_len(const char *s, size_t n, const char **why);

/* Reads a JSON number's text as a double.  False when it lies outside the finite double range
 * (it overflows, or it is not zero but rounds to zero): such a number compares by value only. */
bool vm_number_value(const char *s, size_t n, double *d);

/* Decodes the body of a JSON string whose escapes were already checked (the scanner and the
 * compiler check them) into out, which holds n bytes: decoding never grows a string.  A lone
 * surrogate escape becomes U+FFFD.  Returns the decoded length. */
size_t vm_json_unescape(const char *s, size_t n, char *out);

/* The length of the checked escape sequence at s (s[0] is the backslash): 2, 6 for \uXXXX, or
 * 12 for a \uXXXX\uXXXX surrogate pair that makes one code point. */
size_t vm_json_escape_len(const char *s, size_t n);

/* Runs regex re of p over UTF-8 text; scratch must hold 2 * regex.ninst uint32_t entries
 * plus regex.ninst bytes (vm_regex_scratch_size). */
size_t vm_regex_scratch_size(const vm_program *p, uint32_t re);
bool vm_regex_match(const vm_program *p, uint32_t re, const char *s, size_t n, void *scratch);

/* Wildcard match: '*' matches any run, "\*" a star, "\\" a backslash.  Bytes are compared;
 * to ignore case, pass both sides case-folded. */
bool vm_wildcard_match(const char *pat, size_t np, const char *s, size_t n);

#endif
