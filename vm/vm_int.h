/*
 * vm_int.h — internals shared by the files of vm/ (never included from outside it).
 */
#ifndef EBR_VM_INT_H
#define EBR_VM_INT_H

#include <string.h>

#include "vm.h"

/* The scanner's path trie, derived from the program's paths at load time.  Node 0 is the event
 * object itself; an edge is one object key. */
typedef struct {
    uint32_t path;        /* the path ending here, or VM_NONE */
    uint32_t edge0, nedge;
    uint32_t depth;       /* segments from the root */
} vm_trie_node;

typedef struct {
    const char *key;
    uint32_t len;
    uint32_t child;
    uint64_t head;        /* vm_key_head of the key */
} vm_trie_edge;

/* A number that stands for key k[0..len) among the keys of its length: all of it when len <= 8
 * (then equal numbers are equal keys), its first 8 bytes when longer.  Reads k[0..len) only. */
static inline uint64_t vm_key_head(const char *k, size_t len)
{
    uint64_t h;
    uint32_t a, b;
    if (len >= 8) {
        memcpy(&h, k, 8);
        return h;
    }
    if (len >= 4) {   /* (overlapping) */
        memcpy(&a, k, 4);
        memcpy(&b, k + len - 4, 4);
        return (uint64_t)a << 32 | b;
    }
    return len == 0 ? 0
                    : (uint64_t)(unsigned char)k[0] << 16 | (uint64_t)(unsigned char)k[len / 2] << 8 |
                          (unsigned char)k[len - 1];
}

/* Are a[0..n) and b[0..n) the same bytes?  Eight at a time, the last eight overlapping, and
 * nothing read outside either.  For the index's look-ups of keys and value ids (5 to 40 bytes,
 * ~40 an event with the 10k issue193 rules), where memcmp was a call through the PLT and a
 * branch on the length class that the lengths of the event's strings mispredicted. */
static inline bool vm_same_bytes(const char *a, const char *b, size_t n)
{
    uint64_t x, y;
    if (n < 8)
        return vm_key_head(a, n) == vm_key_head(b, n);
    for (size_t i = 0; i + 8 < n; i += 8) {
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            return false;
    }
    memcpy(&x, a + n - 8, 8);
    memcpy(&y, b + n - 8, 8);
    return x == y;
}

struct vm_trie {
    vm_trie_node *nodes;
    uint32_t nnodes;
    vm_trie_edge *edges;
    uint32_t nedges;
};

/* Finds the child of node n reached by key k[0..len); VM_NONE if there is none.  Few edges (the
 * usual case) are looked at in line, more by a binary search (program.c); either compares the
 * length and the key's head (vm_key_head) before any byte, and a key of 8 bytes or fewer is
 * then told without memcmp.  (In line, with the walk's strings read in line too: the trusted
 * EXACT row 6,041 -> 5,290 instructions an event, callgrind.  The heads, which spare reading the
 * edge's key: vm_match with the 10k issue193 rules, whose events' "data" holds ~18 keys, 56.3K
 * -> 54.7K instructions and 690 -> 594 D1 misses an event.) */
uint32_t vm_trie_child_many(const struct vm_trie *t, uint32_t n, const char *k, size_t len);

/* vm_trie_child with node n's edges and their number already at hand (e, ne): the scanner's
 * walk keeps them for the container it reads, whose keys all start at its node. */
static inline uint32_t vm_trie_child_of(const struct vm_trie *t, uint32_t n,
                                        const vm_trie_edge *e, uint32_t ne, const char *k,
                                        size_t len)
{
    if (ne > 8)
        return vm_trie_child_many(t, n, k, len);
    for (uint32_t i = 0; i < ne; i++) {
        if (e[i].len != len)
            continue;
        /* (the head only once a length matches: most keys of an event are on no rule's path,
         * and making it first branched on every key's length: trusted CityLots EXACT 248 ->
         * 233 ns an event) */
        uint64_t head = vm_key_head(k, len);
        for (; i < ne && e[i].len == len; i++)
            if (e[i].head == head && (len <= 8 || memcmp(e[i].key + 8, k + 8, len - 8) == 0))
                return e[i].child;
        return VM_NONE;
    }
    return VM_NONE;
}

static inline uint32_t vm_trie_child(const struct vm_trie *t, uint32_t n, const char *k, size_t len)
{
    const vm_trie_node *node = &t->nodes[n];
    return vm_trie_child_of(t, n, t->edges + node->edge0, node->nedge, k, len);
}

void vm_trie_free(struct vm_trie *t);

/* What vm_program_prepare works out from a program's tables: never stored, always derived. */
struct vm_derived {
    struct vm_trie *trie;
    /* Per instruction: for a TEST, the number of leading segments its path shares with the path of
     * some later TEST of the rule.  An array this TEST's field lies in matters to the rest of the
     * rule only if it sits at most that deep; deeper ones need no binding and no choice point. */
    uint16_t *keep_depth;
    /* Per rule: one past the address of its last NOT (0: none).  Before it a negation may still
     * follow, and more bindings can then turn a failure into a match. */
    uint32_t *last_not;
    /* Per bus, per path: its vm_ix_path entry in the bus's index, or VM_NONE. */
    uint32_t *ix_path_of;
    /* The index's hash table with each slot's key tagged by the high half of its hash: a probe
     * that meets another key is told apart without reading that key (with 100k keys, each
     * key and its bytes is a cache miss). */
    uint64_t *ix_tagged;
    /* Value ids: every distinct (path, string) that an equality predicate names has a number,
     * found through vid_slots (open addressing, each slot the high half of the hash << 32 | id
     * + 1; vid_text: per id, its string and path, read with no constant), and a number
     * among the strings of its path, vid_local (16 bits: a path that names more than 65,535
     * strings gets none, and its equalities are tested constant by constant).  Per predicate
     * of the index (all buses), the sorted local ids of its strings, vids[vm_pred_vid0(d, g)
     * ..+ vm_pred_nvid(d, g)] (pred_vids: where each predicate's ids start, its top bit set
     * for one that has none), or vm_pred_nvid VM_NONE for a predicate that is not a plain
     * string equality
     * (ignore-case, as-number, a constant that spells an IP address).  A triggered clause's
     * next predicate is then one lookup of the leaf per event and a binary search, where it was
     * a scan of up to 50 constants, each a length test and a memcmp on bytes scattered over the
     * strings (index.c, leaf_passes).  (16-bit ids: 2.8M constants with 100k issue193 rules,
     * 56 bytes a rule less than 32-bit ones.) */
    uint64_t *vid_slots;
    uint32_t nvid_slots, nvids;
    struct vm_vid { vm_str s; uint32_t path; } *vid_text;
    uint16_t *vid_local;
    uint32_t *pred_vids;
    uint16_t *vids;
    /* Per key of the index: the local value id of its string if it is a plain string key
     * (VM_K_STR) that has one, else VM_NONE; per path entry of the index, whether every string
     * of its path that has an id is a key of it.  A leaf found among a path's keys then has its
     * id without a second lookup, and one not found has none (index.c, dispatch).  Each string
     * leaf that some rule's trigger looks at was looked up twice. */
    uint32_t *key_vid;
    uint8_t *keys_hold_vids;
    /* Per path entry of the index and affix kind (VM_K_PREFIX, _PREFIX_CI, _SUFFIX, _SUFFIX_CI,
     * vm_affix_slot), 256 bits: bit vm_affix_bit of the two bytes each key of that kind begins
     * (a prefix) or ends (a suffix) with; all set when some key is shorter than two bytes.  A
     * clear bit says no key of the kind can match a text, whose two bytes there are folded
     * first for the _CI kinds (index.c, dispatch). */
    uint64_t *affix_bits;
    /* Per test: VM_Q_* when it is an equality, prefix, suffix or wildcard test of strings alone
     * (no address, no number) that index.c can run on a string leaf's bytes as they lie in the
     * event (ignore-case: constants of ASCII alone, and no wildcard), else VM_Q_NONE (index.c,
     * quick_passes). */
    uint8_t *test_quick;
    /* Per predicate g of the index (all buses), the clauses it triggers as records
     * ix_recs[rec_at[g] .. rec_at[g + 1]), laid out one after another so that deciding them reads
     * no clause, predicate or test table until the clause's next predicate has passed (see
     * vm_ix_rec). */
    struct vm_ix_rec *ix_recs;
    uint32_t *rec_at;
    struct vm_ix_cpred *ix_cpreds;
    uint32_t ncpreds;
    /* Per clause of the index (all buses): if it is its rule's only clause and the rule is
     * TESTs of its predicates, then one negated TEST (`"exists": false`), that TEST's address
     * in p->code, else VM_NONE.  Such a clause is decided without its bytecode where arrays
     * cannot change the outcome (index.c, negation_holds). */
    uint32_t *neg_test;
};

/* A clause as the predicate that triggers it sees it: its rule, and the other predicate it
 * tests first (VM_NONE: this trigger completes it): a plain string equality that triggers
 * nothing if it has one (its path and value ids are then here, and most candidates fail on one
 * binary search), or else the rarest.  A clause that needs all its predicates, none a band and
 * no negation, is `simple` (ncp > 0): its predicates are ix_cpreds[cp0 ..+ ncp], each with its
 * value ids, and it is decided from them and the stamps alone; the bytecode decides only if
 * arrays within `depth` hold leaves of two of their paths.  (ncp 2: the trigger and `next`
 * are all, and cp0 is the trigger's path; ncp 1: the trigger is all the clause needs.) */
typedef struct vm_ix_rec {
    uint32_t clause, rule;   /* all buses */
    uint32_t next;           /* all buses */
    uint32_t vid0;           /* next's value ids vids[vid0 ..+ nvid] */
    uint32_t sig;            /* ... as a signature (vm_vid_sig), ~0 for none */
    uint32_t cp0;
    uint16_t path;           /* next's path */
    uint16_t nvid;           /* VM_REC_NO_IDS: none, pred_passed decides */
    uint16_t ncp, depth;
} vm_ix_rec;

/* A record's next predicate has no ids (or more than 16 bits count, or its path is past 16
 * bits: then its clause is not simple either). */
#define VM_REC_NO_IDS 0xffffu

/* Value id v (local to its path) as one of 32 bits: the signature of a list of ids is the or
 * of theirs, and a leaf whose bit is not in it has none of them.  Most candidates fail on
 * their next predicate (~106 of ~145 records an event with the 10k issue193 rules); with the
 * leaves' bits of each path (index.c, path_sig), ~3 in 4 of them fail without reading the ids,
 * one cache miss each. */
static inline uint32_t vm_vid_sig(uint32_t v)
{
    return 1u << ((v * 0x9E3779B1u) >> 27);
}

/* A predicate of a simple clause (vm_ix_rec): its path and value ids, as in vm_ix_rec (nvid
 * 0xffff: none).  12 bytes, not 16: with 100k issue193 rules, 9 bytes a rule. */
typedef struct vm_ix_cpred { uint32_t pred, vid0; uint16_t path, nvid; } vm_ix_cpred;

#define VM_PRED_NO_IDS 0x80000000u

/* The hash of the tables built at load (ix_tagged, vid_slots), never stored (unlike
 * vm_ix_hash, which places the file's keys): a string 8 bytes a step, where vm_ix_hash takes a
 * multiplication per byte.  Each event looks up ~30 keys and ~18 value ids (10k issue193
 * rules), strings of 5 to 40 bytes; hashing them was ~20% of the instructions of matching. */
static inline uint64_t vm_probe_hash(uint64_t seed, const char *s, size_t n)
{
    uint64_t h = (seed * 0x9E3779B97F4A7C15ull) ^ n, w;
    for (; n >= 8; s += 8, n -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
    }
    if (n >= 4) {
        uint32_t a, b;   /* (overlapping when n < 8: the length is in h) */
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        h = (h ^ ((uint64_t)a << 32 | b)) * 0x94d049bb133111ebull;
    } else if (n > 0) {
        w = (uint64_t)(unsigned char)s[0] << 16 | (uint64_t)(unsigned char)s[n / 2] << 8 |
            (unsigned char)s[n - 1];
        h = (h ^ w) * 0x94d049bb133111ebull;
    }
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ull;
    return h ^ (h >> 32);
}

/* An ASCII byte case-folded: 'A'..'Z' to 'a'..'z', any other byte as it is. */
static inline unsigned char vm_fold_ascii(unsigned char b)
{
    return (unsigned char)(b + ((unsigned)(b - 'A') < 26u ? 32 : 0));
}

/* The affix filter of struct vm_derived: its four words for path entry ipath and kind. */
static inline const uint64_t *vm_affix_slot(const struct vm_derived *d, uint32_t ipath,
                                            unsigned kind)
{
    return d->affix_bits + ((size_t)ipath * 4 + (kind - VM_K_PREFIX)) * 4;
}

/* The bit of the affix filter for two bytes. */
static inline unsigned vm_affix_bit(unsigned char a, unsigned char b)
{
    return ((uint32_t)(a << 8 | b) * 0x9E3779B1u) >> 24;
}

/* The vm_probe_hash seed of a key of the index. */
static inline uint64_t vm_key_seed(unsigned kind, unsigned aux, uint32_t ipath)
{
    return (uint64_t)ipath << 16 | kind << 8 | aux;
}

static inline uint32_t vm_pred_vid0(const struct vm_derived *d, uint32_t g)
{
    return d->pred_vids[g] & ~VM_PRED_NO_IDS;
}

static inline uint32_t vm_pred_nvid(const struct vm_derived *d, uint32_t g)
{
    return d->pred_vids[g] & VM_PRED_NO_IDS ? VM_NONE
                                            : vm_pred_vid0(d, g + 1) - vm_pred_vid0(d, g);
}

/* Does number d lie in range constant k (VM_C_RANGE)? */
static inline bool vm_in_range(const vm_const *k, double d)
{
    if (k->flags & VM_CF_LO_OPEN ? !(d > k->lo) : !(d >= k->lo))
        return false;
    return k->flags & VM_CF_HI_OPEN ? d < k->hi : d <= k->hi;
}

/* A test run on a leaf's bytes in place (struct vm_derived, test_quick). */
enum { VM_Q_NONE, VM_Q_EQ, VM_Q_PREFIX, VM_Q_SUFFIX, VM_Q_WILDCARD, VM_Q_CI = 8 };

/* The value id of string s on path (see struct vm_derived; its local id is vid_local[id]), or
 * VM_NONE when no equality predicate names it. */
uint32_t vm_value_id(const vm_program *p, uint32_t path, const char *s, size_t n);

void vm_derived_free(struct vm_derived *d);

/* A predicate of the index in a context: what this event knows of it (mark: 2 * epoch + 1
 * passed, 2 * epoch tested on demand and failed, index.c), and where its records start
 * (struct vm_derived, rec_at, copied: the entry that firing a predicate reads also tells
 * where its records are, so deciding a candidate reads no rec_at entry, one cache miss each of
 * ~140 candidates an event with the 10k issue193 rules; one mark in place of a stamp and a
 * "tried" stamp).  When every record of the predicate tests value ids on one path, the or of
 * their signatures and that path (vm_vid_sig; sig ~0: none), so that the records of a candidate
 * that would all fail on the signatures are not read (index.c, worth_deciding; 16 bytes a
 * predicate, not 8). */
typedef struct vm_pred_mark { uint32_t mark, rec, sig, path; } vm_pred_mark;

/* Fills the marks of a new context (per predicate of the index, and one past the last). */
void vm_pred_mark_init(const vm_program *p, vm_pred_mark *m);

/* A leaf of the event that some rule looks at. */
enum { VM_J_STR, VM_J_NUM, VM_J_TRUE, VM_J_FALSE, VM_J_NULL };

typedef struct {
    uint8_t type;
    uint8_t escaped;      /* VM_J_STR holds backslash escapes */
    uint32_t off, len;    /* the token in the event text (strings: inside the quotes) */
    uint32_t memb, nmemb; /* the array elements it lies in: the innermost in the pool (VM_NONE
                             when none), and how many (the chain to the outermost) */
    uint32_t next;        /* next field of the same path, or VM_NONE */
} vm_field;

/* An array element that holds leaves: element `index` of array `array`, itself inside the
 * element `up` (VM_NONE at the top), whose chain ends at `outer`.  The leaves of one element
 * share its entry, so the pool grows with the containers of the event, not with its leaves
 * times their depth (1,024 levels of arrays around 100,000 leaves would be 800 MB copied). */
typedef struct { uint32_t array, index, up, outer; } vm_memb;

/* Per path, for the search (match.c): its fields in order, and where each run of fields in one
 * outermost array ends, worked out once per event when a search needs to skip elements. */
typedef struct { uint32_t stamp, at, n; } vm_path_runs;

/* Stage 1 of the fast scanner (scan_fast.c): every bracket of the event with its match. */
typedef struct {
    uint32_t *br_pos, *br_match;     /* brackets: position; of an opening one, the index of
                                        its closing one */
    uint64_t *br_cnt;                /* ... and the ':' and ',' before each (high, low half) */
    uint32_t nbr, br_cap;
    struct vm_fast_frame *stack;
    uint32_t stack_cap;
} vm_fast;

bool vm_fast_available(void);
bool vm_fast_grow_brackets(vm_fast *F);
void vm_fast_free(vm_fast *F);

/* Growable per-context buffers: they reach their working size after a few events and are then
 * reused, so matching allocates nothing per event. */
#define VM_BUF(T) struct { T *v; uint32_t n, cap; }

typedef VM_BUF(char) vm_cbuf;

struct vm_ctx {
    const vm_program *p;
    size_t max_depth;
    /* scanner output */
    VM_BUF(vm_field) fields;
    VM_BUF(vm_memb) memb;     /* membership pool */
    uint32_t memb_top;        /* while scanning: the innermost element open, or VM_NONE */
    uint32_t memb_depth;      /* ... and how many are open */
    uint32_t *first, *last;   /* per path: its fields, as a list */
    VM_BUF(uint32_t) touched; /* paths with fields, to reset */
    uint32_t narrays;
    VM_BUF(uint16_t) array_depth;   /* per array: the depth of the key that holds it */
    size_t max_steps, steps;        /* the matcher's work budget for one rule on one event */
    VM_BUF(vm_rule_error) failed;   /* the rules this event failed (vm_match_failures) */
    /* the index: marks of the current event (epoch), so nothing is cleared per event */
    bool reference;
    uint32_t epoch;                 /* below 2^31 (vm_pred_mark) */
    struct vm_pred_mark *pred_mark; /* per predicate (all buses), and one past the last */
    uint32_t *rule_stamp;           /* per rule: decided in this event */
    uint32_t *path_arrays;          /* per path: some leaf of this event lies in an array */
    uint16_t *path_depth;           /* ... and the depth of the outermost such array */
    VM_BUF(uint32_t) candidates;
    VM_BUF(uint32_t) live;          /* records the signatures leave, with their trigger (index.c) */
    VM_BUF(uint32_t) field_vid;     /* per field: its value id, VM_NONE, or VM_VID_UNSET (index.c);
                                       a number: 0 parsed into field_num, VM_NONE not a double */
    VM_BUF(double) field_num;       /* per number field: its value, once parsed (index.c) */
    uint32_t *path_sig, *sig_stamp; /* per path: its leaves' signature in this event (index.c) */
    /* the fast scanner */
    bool fast_ok;
    bool trusted;             /* vm_options.trusted: events are read without validating them */
    const char *valid_for;    /* trusted: the event last validated for a template (transform.c) */
    size_t valid_len;
    vm_fast fast;
    /* scanner frames */
    VM_BUF(struct vm_frame) frames;
    /* matcher */
    bool plain;               /* vm_options.plain_search */
    int32_t *bind;            /* per array: the chosen element, or -1 */
    int32_t *bind_level;      /* per bound array: the choice whose retry may change it (-1: none) */
    uint32_t bind_cap;
    VM_BUF(uint32_t) trail;   /* arrays bound, to undo on backtracking */
    VM_BUF(struct vm_choice) choices;
    vm_path_runs *runs;       /* per path (match.c) */
    VM_BUF(uint32_t) run_field; /* the fields of the paths that have runs, path after path */
    VM_BUF(uint32_t) run_end;   /* ... per entry: one past the last entry of its run */
    VM_BUF(uint32_t) run_pos;   /* per field: its entry in run_field */
    VM_BUF(uint32_t) matched;
    bool trace;               /* vm_why_not: note the failure that gets furthest (trace_pc) */
    uint32_t trace_pc;
    /* the event vm_match last scanned (a transform may reuse its fields, and its brackets when
     * stage 1 ran on it: fast_for) */
    const char *scanned, *fast_for;
    uint32_t dotted_keys;       /* keys with dots the scan read as several names ("a.b") */
    size_t scanned_len;
    /* transforms (transform.c): the payload, scratch values, the value stack, per open object
     * or array whether it has a member yet */
    vm_cbuf xout;
    vm_cbuf xscratch;
    VM_BUF(struct vm_tval) xstack;
    VM_BUF(uint8_t) xfirst;
    VM_BUF(uint32_t) xpos;      /* navigation: positions of several results */
    /* scratch for decoding, folding and canonicalising values */
    char *dec, *fold, *canon;
    size_t dec_cap, fold_cap, canon_cap;
    void *re_scratch;
    size_t re_cap;
};

#define VM_VID_UNSET 0xfffffffeu

/* Grows a VM_BUF to hold `need` elements; false when memory runs out. */
bool vm_buf_grow(void **v, uint32_t *cap, size_t elem, uint32_t need);
#define VM_BUF_PUSH(buf, x) \
    ((buf).n < (buf).cap || vm_buf_grow((void **)&(buf).v, &(buf).cap, sizeof *(buf).v, (buf).n + 1) \
         ? ((buf).v[(buf).n++] = (x), true) : false)

typedef struct {
    const char *s;
    size_t n;
} vm_text;

/* Helpers of the reference evaluator (match.c) that the index uses too. */
bool vm_field_text(vm_ctx *c, const char *json, const vm_field *f, vm_text *out);
bool vm_fold_text(vm_ctx *c, vm_text *t);
bool vm_canon_text(vm_ctx *c, const char *s, size_t n, vm_text *out);
bool vm_leaf_passes(vm_ctx *c, const char *json, const vm_test *t, const vm_field *f);

/* Runs rule ri's bytecode on the scanned event with a budget of c->max_steps: 1 match, 0 none,
 * -1 out of memory, -2 out of steps. */
int vm_run_rule(vm_ctx *c, const char *json, uint32_t ri);

/* Notes that rule ri could not be decided for this event (its step budget ran out); false when
 * memory runs out. */
bool vm_rule_failed(vm_ctx *c, uint32_t ri);

/* Before an event's first vm_ix_match_bus: forgets the leaves' value ids (false: no memory). */
bool vm_ix_begin(vm_ctx *c);
/* Matches the scanned event against the index of one bus, appending matched rules (sorted) to
 * c->matched and failed ones to c->failed.  Returns VM_OK or VM_ERR_NOMEM. */
vm_status vm_ix_match_bus(vm_ctx *c, uint32_t bus, const char *json);
/* Sorts rule numbers (the matches of an event) in place. */
void vm_sort_rules(uint32_t *v, size_t n);

/* The extraction walk reads 64-byte windows with AVX-512 (1) or SSE2 (0); -1 until the first
 * walk asks the CPU.  Tests set it to run both. */
extern int vm_walk_wide;
/* ... and is built for BMI1, BMI2 and POPCNT (1) or for any x86-64 (0); -1 until it asks the
 * CPU. */
extern int vm_walk_bmi;

/* Stage 1 of the fast scanner: true when the event is valid (then c->fast is filled). */
bool vm_fast_stage1(vm_ctx *c, const char *json, size_t len);
/* The same with a chosen implementation: 0 AVX-512 VBMI2, 1 AVX2 masks, 2 portable (tests). */
bool vm_fast_stage1_with(vm_ctx *c, const char *json, size_t len, int kind);
/* The implementation vm_fast_stage1 runs on this CPU, as vm_fast_stage1_with's kind. */
int vm_fast_stage1_kind(void);
bool vm_fast_brackets(vm_ctx *c, const char *json, size_t len);

/* What vm_fast_skip found. */
typedef enum { VM_SKIP_OK, VM_SKIP_BAD, VM_SKIP_DEEP } vm_skip_status;

/* The trusted scan's jump over a container nothing looks into, without stage 1: from json[from]
 * (the byte after its opening bracket, outside any string) to the bracket that closes it,
 * counting brackets outside strings, 64 bytes at a time.  Brackets are not told apart ('{' may
 * close with ']') and nothing else is checked.  VM_SKIP_OK with *end one past the closing
 * bracket; VM_SKIP_DEEP when brackets nest more than `room` deep (the container itself is 1);
 * VM_SKIP_BAD when the text ends first.  Reads json[0..len) only, whatever the bytes. */
vm_skip_status vm_fast_skip(const char *json, size_t len, size_t from, size_t room, size_t *end);
/* The same with portable classification (for tests). */
vm_skip_status vm_fast_skip_portable(const char *json, size_t len, size_t from, size_t room,
                                     size_t *end);

/* Scans the event into c's field tables.  Returns VM_OK, or an error for invalid JSON. */
vm_status vm_scan(vm_ctx *c, const char *json, size_t len, vm_error *err);

#endif
