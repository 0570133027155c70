/*
 * ebcfile.c — the .ebc file: writing a program out, and reading one back with every check a
 * corrupted, truncated or foreign file needs to be refused cleanly.
 *
 * Each table is one section of fixed-size little-endian records.  The record layout of every
 * struct is listed once below (FIELDS_*); the writer and the reader are both generated from it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vm_int.h"

/* ---- primitive encodings --------------------------------------------------------------------- */

/* Where the writer's bytes go.  Serialising into memory, b is a buffer of the file's exact size
 * (every section's length is known before it is written: records have fixed sizes).  Saving to
 * a file, b is a small buffer written out whenever it fills, so the file is never whole in
 * memory: compiling 100,000 issue193 rules, the 165 MB image was a buffer doubled to 268 MB, and
 * its page faults about 0.6 s of system time. */
typedef struct {
    uint8_t *b;
    size_t n, cap;
    int fd;              /* -1: into memory */
    uint64_t flushed;    /* bytes already written to fd */
    uint32_t crc;        /* crc32c of the bytes from CRC_FROM on that were written to fd */
    bool failed;         /* a write failed (errno says why), or the image outgrew its buffer */
} wbuf;
typedef struct { const uint8_t *b; size_t n, p; } rbuf;

/* The header: magic, version, section count, file length, checksum (of what follows it). */
enum { HEADER = 8 + 4 + 4 + 8 + 4, ENTRY = 4 + 8 + 8, CRC_FROM = HEADER, CRC_AT = 24 };

/* Writes n bytes at the file's current end, adding those past the header to the checksum. */
static bool emit(wbuf *w, const uint8_t *x, size_t n)
{
    if (w->fd < 0 || w->failed) {
        w->failed = true;
        return false;
    }
    size_t skip = w->flushed < CRC_FROM ? (size_t)(CRC_FROM - w->flushed) : 0;
    if (skip < n)
        w->crc = vm_crc32c(w->crc, x + skip, n - skip);
    w->flushed += n;
    while (n > 0) {
        ssize_t k = write(w->fd, x, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            w->failed = true;
            return false;
        }
        x += k;
        n -= (size_t)k;
    }
    return true;
}

/* Empties the buffer into the file; false if it cannot (in memory, or the write failed). */
static __attribute__((noinline)) bool wbuf_flush(wbuf *w)
{
    bool ok = emit(w, w->b, w->n);
    if (ok)
        w->n = 0;
    return ok;
}

/* (In line, with st_le below writing in place: `ebc compile` of 100,000 issue193 rules spent
 * 18% of its time here, a call and a copy per field; of 10k rules, 1.48G -> 1.18G instructions
 * with the value ids numbered by offset, program.c.) */
static inline void put_bytes(wbuf *w, const void *x, size_t n)
{
    if (w->n + n > w->cap) {
        /* A large array (the string pool) goes to the file straight from where it is. */
        if (wbuf_flush(w) && n > w->cap)
            emit(w, x, n);
        if (w->n + n > w->cap)
            return;
    }
    memcpy(w->b + w->n, x, n);
    w->n += n;
}

/* Makes room for n more bytes in the buffer (n at most a record's size); false if it cannot. */
static inline bool room(wbuf *w, size_t n)
{
    return w->n + n <= w->cap || (wbuf_flush(w) && n <= w->cap);
}

/* Stores v's low bytes at the buffer's end, where the caller made room. */
static inline void st_le(wbuf *w, uint64_t v, int bytes)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(w->b + w->n, &v, (size_t)bytes);   /* one move */
#else
    for (int i = 0; i < bytes; i++)
        w->b[w->n + (size_t)i] = (uint8_t)(v >> (8 * i));
#endif
    w->n += (size_t)bytes;
}

static bool get_le(rbuf *r, uint64_t *v, int bytes)
{
    if (r->n - r->p < (size_t)bytes)
        return false;
    *v = 0;
    for (int i = 0; i < bytes; i++)
        *v |= (uint64_t)r->b[r->p + (size_t)i] << (8 * i);
    r->p += (size_t)bytes;
    return true;
}

static inline void st_U8(wbuf *w, const uint8_t *x) { st_le(w, *x, 1); }
static inline void st_U32(wbuf *w, const uint32_t *x) { st_le(w, *x, 4); }
static inline void st_U64(wbuf *w, const uint64_t *x) { st_le(w, *x, 8); }
static inline void st_I32(wbuf *w, const int32_t *x) { st_le(w, (uint32_t)*x, 4); }
static inline void st_F64(wbuf *w, const double *x) { uint64_t u; memcpy(&u, x, 8); st_le(w, u, 8); }
static inline void st_CHAR(wbuf *w, const char *x) { st_le(w, (uint8_t)*x, 1); }

static bool get_U32(rbuf *r, uint32_t *x) { uint64_t v; if (!get_le(r, &v, 4)) return false; *x = (uint32_t)v; return true; }
static bool get_U64(rbuf *r, uint64_t *x) { return get_le(r, x, 8); }

/* ---- record layouts: the one list of fields per struct --------------------------------------- */

#define FIELDS_vm_str(F)     F(U32, off) F(U32, len)
#define FIELDS_vm_span(F)    F(U32, src) F(U32, off) F(U32, len)
#define FIELDS_vm_source(F)  F(vm_str, name) F(vm_str, text)
#define FIELDS_vm_path(F)    F(U32, seg0) F(U32, nseg)
/* A constant's union is its 16 bytes, kept bit for bit through lo and hi (whichever member its
 * type uses). */
#define FIELDS_vm_const(F)   F(U8, type) F(U8, flags) F(U8, bits) F(vm_str, s) F(F64, lo) F(F64, hi)
#define FIELDS_vm_test(F)    F(U8, kind) F(U8, flags) F(U32, arg0) F(U32, narg)
#define FIELDS_vm_regex(F)   F(U32, inst0) F(U32, ninst)
#define FIELDS_vm_re_inst(F) F(U8, op) F(U32, x) F(U32, y)
#define FIELDS_vm_range(F)   F(U32, lo) F(U32, hi)
#define FIELDS_vm_rule(F)    F(vm_str, name) F(U32, bus) F(U32, code0) F(U32, ncode) F(U32, tgt0) \
                             F(U32, ntgt) F(U32, dead_letter) F(U32, xform) F(vm_span, span)
#define FIELDS_vm_xform(F)   F(U8, kind) F(U8, flags) F(U32, code0) F(U32, ncode) F(vm_str, arg) \
                             F(U32, timeout_ms) F(vm_span, span)
#define FIELDS_vm_tpath(F)   F(U32, step0) F(U32, nstep) F(U32, path)
#define FIELDS_vm_tstep(F)   F(U8, kind) F(I32, index) F(vm_str, name)
#define FIELDS_vm_bus(F)     F(vm_str, name) F(U32, opt0) F(U32, nopt) F(vm_span, span)
#define FIELDS_vm_target(F)  F(vm_str, name) F(vm_str, kind) F(U32, value) F(U32, opt0) \
                             F(U32, nopt) F(vm_span, span)
#define FIELDS_vm_input(F)   F(vm_str, name) F(vm_str, kind) F(U32, bus) F(U32, value) F(U32, opt0) \
                             F(U32, nopt) F(vm_span, span)
#define FIELDS_vm_ix_bus(F)    F(U32, path0) F(U32, npath) F(U32, pred0) F(U32, npred) F(U32, clause0) \
                               F(U32, nclause) F(U32, always0) F(U32, nalways)
#define FIELDS_vm_ix_path(F)   F(U32, path) F(U32, kinds) F(U32, exists0) F(U32, nexists) \
                               F(U32, generic0) F(U32, ngeneric) F(U32, plen0) F(U32, nplen) \
                               F(U32, slen0) F(U32, nslen) F(U32, clen0) F(U32, nclen) \
                               F(U32, bound0) F(U32, nbound) F(U32, node0) F(U32, nnode) \
                               F(U32, band0) F(U32, nband)
#define FIELDS_vm_ix_pred(F)   F(U32, path) F(U32, test) F(U32, clause0) F(U32, nclause)
#define FIELDS_vm_ix_clause(F) F(U32, rule) F(U32, need) F(U32, flags) F(U32, depth) F(U32, pred0) \
                               F(U32, npred)
#define FIELDS_vm_ix_key(F)    F(U8, kind) F(U8, aux) F(U32, ipath) F(vm_str, key) F(U32, list0) \
                               F(U32, nlist)
#define FIELDS_vm_ix_node(F)   F(U32, list0) F(U32, nlist)
#define FIELDS_vm_cfg(F)     F(U8, type) F(vm_str, key) F(vm_str, str) F(F64, num) F(U32, child0) \
                             F(U32, nchild) F(vm_span, span)

/* ---- fixed-size records ---------------------------------------------------------------------- *
 * Every record has a fixed encoded size (the sum of its fields').  The writer makes room for a
 * whole record once and stores its fields unchecked (st_*), each one move on a little-endian
 * host: writing the file of 10k issue193 rules took 122M instructions before, 28M after. */

enum { SIZE_U8 = 1, SIZE_CHAR = 1, SIZE_U32 = 4, SIZE_I32 = 4, SIZE_U64 = 8, SIZE_F64 = 8 };
#define FIELD_SIZE(T, f) + SIZE_##T
#define SIZE_OF(S) SIZE_##S = 0 FIELDS_##S(FIELD_SIZE), RAW_##S = 0,
enum { SIZE_OF(vm_str) SIZE_OF(vm_span) };
enum {
    SIZE_OF(vm_source) SIZE_OF(vm_path) SIZE_OF(vm_const) SIZE_OF(vm_test) SIZE_OF(vm_regex)
    SIZE_OF(vm_re_inst) SIZE_OF(vm_range) SIZE_OF(vm_rule) SIZE_OF(vm_xform) SIZE_OF(vm_tpath)
    SIZE_OF(vm_tstep) SIZE_OF(vm_bus) SIZE_OF(vm_target) SIZE_OF(vm_input) SIZE_OF(vm_cfg) SIZE_OF(vm_ix_bus)
    SIZE_OF(vm_ix_path) SIZE_OF(vm_ix_pred) SIZE_OF(vm_ix_clause) SIZE_OF(vm_ix_key)
    SIZE_OF(vm_ix_node)
};
#undef SIZE_OF
#undef FIELD_SIZE

#define SCALAR(T, type) \
    static void put_##T(wbuf *w, const type *x) { if (room(w, SIZE_##T)) st_##T(w, x); }
SCALAR(CHAR, char)
SCALAR(U32, uint32_t)
SCALAR(U64, uint64_t)
SCALAR(F64, double)
#undef SCALAR

#define ST_FIELD(T, f) st_##T(w, &x->f);
#define RECORD(S)                                                                    \
    static inline void st_##S(wbuf *w, const S *x) { FIELDS_##S(ST_FIELD) }          \
    static void put_##S(wbuf *w, const S *x) { if (room(w, SIZE_##S)) st_##S(w, x); }
RECORD(vm_str)
RECORD(vm_span)
RECORD(vm_source)
RECORD(vm_path)
RECORD(vm_const)
RECORD(vm_test)
RECORD(vm_regex)
RECORD(vm_re_inst)
RECORD(vm_range)
RECORD(vm_rule)
RECORD(vm_xform)
RECORD(vm_tpath)
RECORD(vm_tstep)
RECORD(vm_bus)
RECORD(vm_target)
RECORD(vm_input)
RECORD(vm_cfg)
RECORD(vm_ix_bus)
RECORD(vm_ix_path)
RECORD(vm_ix_pred)
RECORD(vm_ix_clause)
RECORD(vm_ix_key)
RECORD(vm_ix_node)
#undef RECORD

/* ---- decoding fixed-size records ------------------------------------------------------------- *
 * A section holds exactly length / size records: the reader decodes each with straight-line
 * loads at constant offsets instead of a bounds-checked byte loop per field, and counts without
 * a first pass.  This took loading the 251 MB file of 100,000 rules from 4.4 G instructions to
 * 0.76 G (callgrind). */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* The file's byte order is the host's: a load is one unaligned move. */
static inline uint32_t ld32(const uint8_t *b) { uint32_t v; memcpy(&v, b, 4); return v; }
static inline uint64_t ld64(const uint8_t *b) { uint64_t v; memcpy(&v, b, 8); return v; }
/* A section of scalars is then the array's image, copied whole: the 58 MB string pool of the
 * file of 100,000 rules above all: 0.25 G instructions fewer. */
enum { RAW_CHAR = 1, RAW_U32 = 1, RAW_U64 = 1, RAW_F64 = 1 };
#else
enum { RAW_CHAR = 1, RAW_U32 = 0, RAW_U64 = 0, RAW_F64 = 0 };
static inline uint32_t ld32(const uint8_t *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static inline uint64_t ld64(const uint8_t *b) { return ld32(b) | (uint64_t)ld32(b + 4) << 32; }
#endif

static inline void dec_U8(const uint8_t *b, uint8_t *x) { *x = b[0]; }
static inline void dec_CHAR(const uint8_t *b, char *x) { *x = (char)b[0]; }
static inline void dec_U32(const uint8_t *b, uint32_t *x) { *x = ld32(b); }
static inline void dec_I32(const uint8_t *b, int32_t *x) { *x = (int32_t)ld32(b); }
static inline void dec_U64(const uint8_t *b, uint64_t *x) { *x = ld64(b); }
static inline void dec_F64(const uint8_t *b, double *x) { uint64_t v = ld64(b); memcpy(x, &v, 8); }

#define DEC_FIELD(T, f) dec_##T(b, &x->f); b += SIZE_##T;
#define DECODER(S) \
    static inline void dec_##S(const uint8_t *b, S *x) { FIELDS_##S(DEC_FIELD) }
DECODER(vm_str)
DECODER(vm_span)
DECODER(vm_source)
DECODER(vm_path)
DECODER(vm_const)
DECODER(vm_test)
DECODER(vm_regex)
DECODER(vm_re_inst)
DECODER(vm_range)
DECODER(vm_rule)
DECODER(vm_xform)
DECODER(vm_tpath)
DECODER(vm_tstep)
DECODER(vm_bus)
DECODER(vm_target)
DECODER(vm_input)
DECODER(vm_cfg)
DECODER(vm_ix_bus)
DECODER(vm_ix_path)
DECODER(vm_ix_pred)
DECODER(vm_ix_clause)
DECODER(vm_ix_key)
DECODER(vm_ix_node)
#undef DECODER
#undef DEC_FIELD

/* ---- sections: tag, table, count, record type ------------------------------------------------ */

#define SECTIONS(S)                                        \
    S("STRS", strs, nstrs, CHAR, char)                     \
    S("SRCS", srcs, nsrcs, vm_source, vm_source)           \
    S("SEGS", segs, nsegs, vm_str, vm_str)                 \
    S("PATH", paths, npaths, vm_path, vm_path)             \
    S("CNST", consts, nconsts, vm_const, vm_const)         \
    S("TEST", tests, ntests, vm_test, vm_test)             \
    S("REGX", regexes, nregexes, vm_regex, vm_regex)       \
    S("REIN", re_insts, nre_insts, vm_re_inst, vm_re_inst) \
    S("RERG", re_ranges, nre_ranges, vm_range, vm_range)   \
    S("CODE", code, ncode, U64, vm_inst)                   \
    S("CSPN", code_spans, ncode, vm_span, vm_span)         \
    S("RULE", rules, nrules, vm_rule, vm_rule)             \
    S("RTGT", rule_targets, nrule_targets, U32, uint32_t)  \
    S("BUSS", buses, nbuses, vm_bus, vm_bus)               \
    S("TGTS", targets, ntargets, vm_target, vm_target)     \
    S("INPT", inputs, ninputs, vm_input, vm_input)         \
    S("CFGS", cfgs, ncfgs, vm_cfg, vm_cfg)                 \
    S("XFRM", xforms, nxforms, vm_xform, vm_xform)         \
    S("TCOD", tcode, ntcode, U64, vm_inst)                 \
    S("TSPN", tcode_spans, ntcode, vm_span, vm_span)       \
    S("TPTH", tpaths, ntpaths, vm_tpath, vm_tpath)         \
    S("TSTP", tsteps, ntsteps, vm_tstep, vm_tstep)         \
    S("IXBU", ix_buses, nix_buses, vm_ix_bus, vm_ix_bus)   \
    S("IXPA", ix_paths, nix_paths, vm_ix_path, vm_ix_path) \
    S("IXPR", ix_preds, nix_preds, vm_ix_pred, vm_ix_pred) \
    S("IXCL", ix_clauses, nix_clauses, vm_ix_clause, vm_ix_clause) \
    S("IXKE", ix_keys, nix_keys, vm_ix_key, vm_ix_key)     \
    S("IXSL", ix_slots, nix_slots, U32, uint32_t)          \
    S("IXNO", ix_nodes, nix_nodes, vm_ix_node, vm_ix_node) \
    S("IXBO", ix_bounds, nix_bounds, F64, double)          \
    S("IXRE", ix_refs, nix_refs, U32, uint32_t)

/* The server block is two numbers; it has a section of its own, written by hand. */
#define SERVER_TAG "SRVR"

enum {
#define S(tag, field, count, rec, type) SEC_##field,
    SECTIONS(S)
#undef S
    SEC_server,
    SEC__COUNT
};

static uint32_t tag_value(const char *t)
{
    return (uint32_t)(unsigned char)t[0] | (uint32_t)(unsigned char)t[1] << 8 |
           (uint32_t)(unsigned char)t[2] << 16 | (uint32_t)(unsigned char)t[3] << 24;
}

static void patch_le(uint8_t *b, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        b[i] = (uint8_t)(v >> (8 * i));
}

/* Where each section goes (records have fixed sizes, so this is known before anything is
 * written); returns the file's length. */
static uint64_t layout(const vm_program *p, uint32_t *tags, uint64_t *offs, uint64_t *lens)
{
    uint64_t at = HEADER + SEC__COUNT * ENTRY;
#define S(tag, field, count, rec, type)                                    \
    tags[SEC_##field] = tag_value(tag);                                    \
    offs[SEC_##field] = at;                                                \
    lens[SEC_##field] = (p->field ? (uint64_t)p->count : 0) * SIZE_##rec;  \
    at += lens[SEC_##field];
    SECTIONS(S)
#undef S
    tags[SEC_server] = tag_value(SERVER_TAG);
    offs[SEC_server] = at;
    lens[SEC_server] = 2 * SIZE_U32;
    return at + lens[SEC_server];
}

/* Writes the whole file through w: the header (its checksum left 0 for the caller to fill in),
 * the section table, then each section.  Returns the file's length. */
static uint64_t put_program(wbuf *w, const vm_program *p)
{
    uint32_t tags[SEC__COUNT];
    uint64_t offs[SEC__COUNT], lens[SEC__COUNT];
    uint64_t total = layout(p, tags, offs, lens);
    uint32_t version = VM_EBC_VERSION, nsec = SEC__COUNT, crc = 0;
    put_bytes(w, VM_EBC_MAGIC, 8);
    put_U32(w, &version);
    put_U32(w, &nsec);
    put_U64(w, &total);
    put_U32(w, &crc);
    for (int i = 0; i < SEC__COUNT; i++) {
        put_U32(w, &tags[i]);
        put_U64(w, &offs[i]);
        put_U64(w, &lens[i]);
    }
#define S(tag, field, count, rec, type)                                   \
    if (SIZE_##rec == 1 && p->field)        /* bytes: all at once */      \
        put_bytes(w, p->field, p->count);                                 \
    else                                                                  \
        for (uint32_t i = 0; i < (p->field ? p->count : 0); i++)          \
            put_##rec(w, &p->field[i]);
    SECTIONS(S)
#undef S
    put_U32(w, &p->server0);
    put_U32(w, &p->nserver);
    return total;
}

uint64_t vm_program_image_size(const vm_program *p)
{
    uint32_t tags[SEC__COUNT];
    uint64_t offs[SEC__COUNT], lens[SEC__COUNT];
    return layout(p, tags, offs, lens);
}

vm_status vm_program_serialize(const vm_program *p, uint8_t **out, size_t *len)
{
    uint32_t tags[SEC__COUNT];
    uint64_t offs[SEC__COUNT], lens[SEC__COUNT];
    uint64_t total = layout(p, tags, offs, lens);
    if (total > SIZE_MAX)
        return VM_ERR_NOMEM;
    /* Sized exactly, once: no doubling, no copies. */
    wbuf w = { .b = malloc((size_t)total), .cap = (size_t)total, .fd = -1 };
    if (!w.b)
        return VM_ERR_NOMEM;
    put_program(&w, p);
    if (w.failed || w.n != total) {   /* a record layout that disagrees with SIZE_*: a bug */
        free(w.b);
        return VM_ERR_NOMEM;
    }
    patch_le(w.b + CRC_AT, vm_crc32c(0, w.b + CRC_FROM, w.n - CRC_FROM), 4);
    *out = w.b;
    *len = w.n;
    return VM_OK;
}

/* Fills err for a file that could not be saved, with errno's reason. */
static vm_status save_error(vm_error *err, vm_status code, const char *what)
{
    if (err) {
        err->code = code;
        err->offset = 0;
        snprintf(err->msg, sizeof err->msg, "%s: %s", what, strerror(errno));
    }
    return code;
}

/* The buffer between the records and the file: 256 KiB a write. */
enum { SAVE_BUFFER = 256 * 1024 };

vm_status vm_program_save(const vm_program *p, const char *path, vm_error *err)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return save_error(err, VM_ERR_IO, "cannot write");
    }
    wbuf w = { .b = malloc(SAVE_BUFFER), .cap = SAVE_BUFFER, .fd = -1 };
    if (!w.b) {
        errno = ENOMEM;
        return save_error(err, VM_ERR_NOMEM, "out of memory");
    }
    w.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (w.fd < 0) {
        free(w.b);
        return save_error(err, VM_ERR_IO, "cannot write");
    }
    uint64_t total = put_program(&w, p);
    bool ok = wbuf_flush(&w);
    if (ok && w.flushed != total) {   /* a record layout that disagrees with SIZE_*: a bug */
        errno = EIO;
        ok = false;
    }
    if (ok) {
        uint8_t crc[4];
        patch_le(crc, w.crc, 4);
        ok = pwrite(w.fd, crc, 4, CRC_AT) == 4;
    }
    int saved = errno;
    if (close(w.fd) != 0 && ok) {
        saved = errno;
        ok = false;
    }
    free(w.b);
    /* Renamed into place only when whole: readers see the old file or the new one, never part
     * of one, and a failed write leaves the old file as it was. */
    if (ok && rename(tmp, path) == 0)
        return VM_OK;
    if (ok)
        saved = errno;
    unlink(tmp);
    errno = saved;
    return save_error(err, VM_ERR_IO, "cannot write");
}

/* ---- reading --------------------------------------------------------------------------------- */

static vm_program *refuse(vm_program *p, vm_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static vm_program *refuse(vm_program *p, vm_error *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = VM_ERR_FORMAT;
        err->offset = 0;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    vm_program_free(p);
    return NULL;
}

static bool str_ok(const vm_program *p, vm_str s)
{
    return s.off <= p->nstrs && s.len <= p->nstrs - s.off;
}

/* A string printed as a name must end with the pool's NUL after it. */
static bool name_ok(const vm_program *p, vm_str s)
{
    return str_ok(p, s) && s.off + s.len < p->nstrs && p->strs[s.off + s.len] == 0 &&
           !memchr(p->strs + s.off, 0, s.len);
}

static bool range_ok(uint32_t first, uint32_t n, uint32_t total)
{
    return first <= total && n <= total - first;
}

static bool span_ok(const vm_program *p, vm_span s)
{
    return s.src < p->nsrcs && s.off <= p->srcs[s.src].text.len &&
           s.len <= p->srcs[s.src].text.len - s.off;
}

/* Checks a regex program: classes within the range table, jumps within the program. */
static bool regex_ok(const vm_program *p, const vm_regex *re)
{
    if (!range_ok(re->inst0, re->ninst, p->nre_insts) || re->ninst == 0)
        return false;
    for (uint32_t i = 0; i < re->ninst; i++) {
        const vm_re_inst *in = &p->re_insts[re->inst0 + i];
        switch (in->op) {
        case VM_RE_CLASS: if (!range_ok(in->x, in->y, p->nre_ranges) || i + 1 >= re->ninst) return false; break;
        case VM_RE_SPLIT: if (in->x >= re->ninst || in->y >= re->ninst) return false; break;
        case VM_RE_JMP: if (in->x >= re->ninst) return false; break;
        case VM_RE_MATCH: break;
        default: return false;
        }
    }
    return true;
}

/* Checks the constants of a test fit its kind (the VM reads them without further checks). */
static bool test_ok(const vm_program *p, const vm_test *t)
{
    if (t->kind >= VM_T__COUNT || !range_ok(t->arg0, t->narg, p->nconsts) ||
        t->flags >= 2 * VM_TF_BAND ||
        ((t->flags & VM_TF_BAND) && (t->kind != VM_T_RANGE || t->narg != 1 || t->flags != VM_TF_BAND)))
        return false;
    for (uint32_t i = 0; i < t->narg; i++) {
        const vm_const *k = &p->consts[t->arg0 + i];
        bool ok;
        switch (t->kind) {
        case VM_T_EQ: ok = k->type <= VM_C_NULL; break;
        case VM_T_RANGE: ok = k->type == VM_C_RANGE; break;
        case VM_T_CIDR: ok = k->type == VM_C_CIDR; break;
        case VM_T_REGEX: ok = k->type == VM_C_REGEX; break;
        case VM_T_EXISTS: ok = false; break;
        default: ok = k->type == VM_C_STR; break;
        }
        if (!ok)
            return false;
    }
    return true;
}

/* Checks a rule's code: operands in range, jumps forward and inside the rule, and a final
 * MATCH, so that any program that loads runs to an end. */
static bool code_ok(const vm_program *p, const vm_rule *r)
{
    if (!range_ok(r->code0, r->ncode, p->ncode) || r->ncode == 0)
        return false;
    const vm_inst *code = p->code + r->code0;
    for (uint32_t pc = 0; pc < r->ncode; pc++) {
        vm_inst in = code[pc];
        uint32_t a = VM_A(in), b = VM_B(in);
        switch (VM_OP(in)) {
        case VM_OP_TEST:   /* (a band test belongs to the index: it is not one leaf's test) */
            if (a >= p->npaths || b >= p->ntests || (p->tests[b].flags & VM_TF_BAND))
                return false;
            break;
        case VM_OP_FORK: case VM_OP_NOT:
            if (b <= pc || b >= r->ncode) return false;
            break;
        case VM_OP_JOIN: if (b <= pc || b >= r->ncode) return false; break;
        case VM_OP_NOTOK: case VM_OP_MATCH: break;
        default: return false;
        }
    }
    return VM_OP(code[r->ncode - 1]) == VM_OP_MATCH;
}

/* Checks that refs[first .. first+n) are all below limit. */
static bool refs_below(const vm_program *p, uint32_t first, uint32_t n, uint32_t limit)
{
    if (!range_ok(first, n, p->nix_refs))
        return false;
    for (uint32_t i = 0; i < n; i++)
        if (p->ix_refs[first + i] >= limit)
            return false;
    return true;
}

/* Does the list of predicates of bus x hold a band (whose refs were checked)? */
static bool has_band(const vm_program *p, const vm_ix_bus *x, uint32_t first, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (p->tests[p->ix_preds[x->pred0 + p->ix_refs[first + i]].test].flags & VM_TF_BAND)
            return true;
    return false;
}

/* Checks a transform: its template code within the table, every operand in range, jumps
 * forward and inside it.  (The value stack is checked as the code runs.) */
static bool xform_ok(const vm_program *p, const vm_xform *x)
{
    if (x->kind > VM_X_HTTP || x->flags > VM_XF_TEXT || !str_ok(p, x->arg) || !span_ok(p, x->span))
        return false;
    if (x->kind != VM_X_TEMPLATE)
        return x->ncode == 0;
    if (!range_ok(x->code0, x->ncode, p->ntcode))
        return false;
    static const uint8_t lo[VM_FN__COUNT] = {
#define X(id, name, l, h) l,
        VM_TEMPLATE_FUNCTIONS(X)
#undef X
    };
    static const uint8_t hi[VM_FN__COUNT] = {
#define X(id, name, l, h) h,
        VM_TEMPLATE_FUNCTIONS(X)
#undef X
    };
    for (uint32_t pc = 0; pc < x->ncode; pc++) {
        vm_inst in = p->tcode[x->code0 + pc];
        uint32_t a = VM_A(in), b = VM_B(in);
        switch (VM_OP(in)) {
        case VM_TO_TEXT: case VM_TO_CONST: case VM_TO_STR:
            if (b > p->nstrs || a > p->nstrs - b) return false;
            break;
        case VM_TO_PATH: if (a >= p->ntpaths) return false; break;
        case VM_TO_VAR: if (a >= VM_VAR__COUNT) return false; break;
        case VM_TO_CALL: if (a >= VM_FN__COUNT || b < lo[a] || b > hi[a]) return false; break;
        case VM_TO_CAT: if (a == 0) return false; break;
        case VM_TO_EMIT: if (a > VM_EMIT_KEY) return false; break;
        case VM_TO_BEGIN: case VM_TO_END: if (a > 1) return false; break;
        case VM_TO_SKIP: case VM_TO_ELSE: if (b <= pc || b > x->ncode) return false; break;
        case VM_TO_SEP: break;
        default: return false;
        }
    }
    return true;
}

/* Checks the index: every list within its pool and every number within its table, one index
 * per bus, the hash table a power of two with every key reachable. */
static const char *verify_index(const vm_program *p)
{
    if (p->nix_buses != p->nbuses)
        return "the index does not cover every bus";
    if (p->nix_slots & (p->nix_slots - 1))
        return "the index's hash table is malformed";
    for (uint32_t b = 0; b < p->nix_buses; b++) {
        const vm_ix_bus *x = &p->ix_buses[b];
        if (!range_ok(x->path0, x->npath, p->nix_paths) || !range_ok(x->pred0, x->npred, p->nix_preds) ||
            !range_ok(x->clause0, x->nclause, p->nix_clauses) ||
            !refs_below(p, x->always0, x->nalways, x->nclause))
            return "a bus's index is malformed";
        for (uint32_t i = 0; i < x->npred; i++) {
            const vm_ix_pred *pr = &p->ix_preds[x->pred0 + i];
            if (pr->path >= p->npaths || pr->test >= p->ntests ||
                !refs_below(p, pr->clause0, pr->nclause, x->nclause))
                return "an index predicate is malformed";
        }
        for (uint32_t i = 0; i < x->nclause; i++) {
            const vm_ix_clause *cl = &p->ix_clauses[x->clause0 + i];
            if (cl->rule >= p->nrules || p->rules[cl->rule].bus != b ||
                !refs_below(p, cl->pred0, cl->npred, x->npred) || cl->need > cl->npred)
                return "an index clause is malformed";
        }
        for (uint32_t i = 0; i < x->npath; i++) {
            const vm_ix_path *ip = &p->ix_paths[x->path0 + i];
            /* A band is found through the range tree and the band list only: in a list that
             * runs one leaf's test it would mean something else. */
            if (!refs_below(p, ip->exists0, ip->nexists, x->npred) ||
                !refs_below(p, ip->generic0, ip->ngeneric, x->npred) ||
                has_band(p, x, ip->exists0, ip->nexists) || has_band(p, x, ip->generic0, ip->ngeneric))
                return "an index path is malformed";
            if (ip->path >= p->npaths || !refs_below(p, ip->exists0, ip->nexists, x->npred) ||
                !refs_below(p, ip->generic0, ip->ngeneric, x->npred) ||
                !refs_below(p, ip->plen0, ip->nplen, UINT32_MAX) ||
                !refs_below(p, ip->slen0, ip->nslen, UINT32_MAX) ||
                !refs_below(p, ip->clen0, ip->nclen, 129) ||
                !range_ok(ip->bound0, ip->nbound, p->nix_bounds) ||
                !range_ok(ip->node0, ip->nnode, p->nix_nodes))
                return "an index path is malformed";
            /* The segment tree: a power of two of leaves, enough for every slot; or (odd) one
             * list per slot. */
            if (ip->nnode && (ip->nnode & 1 ? ip->nnode != 2 * (uint64_t)ip->nbound + 1
                                            : (ip->nnode & (ip->nnode - 1)) ||
                                              ip->nnode / 2 < 2 * (uint64_t)ip->nbound + 1))
                return "an index range tree is malformed";
            for (uint32_t k = 0; k < ip->nnode; k++)
                if (!refs_below(p, p->ix_nodes[ip->node0 + k].list0, p->ix_nodes[ip->node0 + k].nlist, x->npred))
                    return "an index range tree is malformed";
            for (uint32_t k = 1; k < ip->nbound; k++)
                if (!(p->ix_bounds[ip->bound0 + k - 1] < p->ix_bounds[ip->bound0 + k]))
                    return "an index range tree is malformed";
            /* Bands: predicates of this path with band tests, by lower bound. */
            if (!refs_below(p, ip->band0, ip->nband, x->npred))
                return "an index band list is malformed";
            double last = -1.0 / 0.0;
            for (uint32_t k = 0; k < ip->nband; k++) {
                const vm_ix_pred *pr = &p->ix_preds[x->pred0 + p->ix_refs[ip->band0 + k]];
                const vm_test *t = &p->tests[pr->test];
                if (pr->path != ip->path || !(t->flags & VM_TF_BAND) ||
                    !(p->consts[t->arg0].lo >= last))
                    return "an index band list is malformed";
                last = p->consts[t->arg0].lo;
            }
        }
    }
    for (uint32_t i = 0; i < p->nix_keys; i++) {
        const vm_ix_key *k = &p->ix_keys[i];
        const vm_ix_bus *x = NULL;
        for (uint32_t b = 0; b < p->nix_buses && !x; b++)
            if (k->ipath >= p->ix_buses[b].path0 && k->ipath - p->ix_buses[b].path0 < p->ix_buses[b].npath)
                x = &p->ix_buses[b];
        if (!x || k->kind >= VM_K__COUNT || !str_ok(p, k->key) ||
            !refs_below(p, k->list0, k->nlist, x->npred) || has_band(p, x, k->list0, k->nlist))
            return "an index key is malformed";
    }
    for (uint32_t i = 0; i < p->nix_slots; i++)
        if (p->ix_slots[i] > p->nix_keys)
            return "the index's hash table is malformed";
    if (p->nix_keys && p->nix_slots < p->nix_keys + 1)
        return "the index's hash table is malformed";
    return NULL;
}

/* Checks every cross-reference of a freshly read program. */
static const char *verify(const vm_program *p)
{
    for (uint32_t i = 0; i < p->nsrcs; i++)
        if (!name_ok(p, p->srcs[i].name) || !str_ok(p, p->srcs[i].text))
            return "a source entry points outside the string pool";
    for (uint32_t i = 0; i < p->nsegs; i++)
        if (!str_ok(p, p->segs[i]))
            return "a path segment points outside the string pool";
    for (uint32_t i = 0; i < p->npaths; i++)
        if (!range_ok(p->paths[i].seg0, p->paths[i].nseg, p->nsegs))
            return "a path points outside the segment table";
    for (uint32_t i = 0; i < p->nconsts; i++) {
        const vm_const *k = &p->consts[i];
        if (k->type > VM_C_REGEX || !str_ok(p, k->s) || k->bits > 128 ||
            (k->type == VM_C_REGEX && k->re >= p->nregexes))
            return "a constant is malformed";
    }
    for (uint32_t i = 0; i < p->ntests; i++)
        if (!test_ok(p, &p->tests[i]))
            return "a test is malformed";
    for (uint32_t i = 0; i < p->nregexes; i++)
        if (!regex_ok(p, &p->regexes[i]))
            return "a regular expression program is malformed";
    for (uint32_t i = 0; i < p->nre_ranges; i++)
        if (p->re_ranges[i].lo > p->re_ranges[i].hi)
            return "a character range is malformed";
    for (uint32_t i = 0; i < p->ncode; i++)
        if (p->code_spans && !span_ok(p, p->code_spans[i]))
            return "an instruction's source span is out of range";
    for (uint32_t i = 0; i < p->nrules; i++) {
        const vm_rule *r = &p->rules[i];
        if (!name_ok(p, r->name) || (r->bus != VM_NONE && r->bus >= p->nbuses) ||
            !range_ok(r->tgt0, r->ntgt, p->nrule_targets) ||
            (r->dead_letter != VM_NONE && r->dead_letter >= p->ntargets) || !span_ok(p, r->span) ||
            (r->xform != VM_NONE && r->xform >= p->nxforms))
            return "a rule is malformed";
        if (!code_ok(p, r))
            return "a rule's code is malformed";
    }
    for (uint32_t i = 0; i < p->nrule_targets; i++)
        if (p->rule_targets[i] >= p->ntargets)
            return "a rule names a target that does not exist";
    for (uint32_t i = 0; i < p->nbuses; i++)
        if (!name_ok(p, p->buses[i].name) || !range_ok(p->buses[i].opt0, p->buses[i].nopt, p->ncfgs))
            return "a bus is malformed";
    for (uint32_t i = 0; i < p->ntargets; i++) {
        const vm_target *t = &p->targets[i];
        if (!name_ok(p, t->name) || !name_ok(p, t->kind) || t->value >= p->ncfgs ||
            !range_ok(t->opt0, t->nopt, p->ncfgs))
            return "a target is malformed";
    }
    for (uint32_t i = 0; i < p->ninputs; i++) {
        const vm_input *s = &p->inputs[i];
        if (!name_ok(p, s->name) || !name_ok(p, s->kind) || s->bus >= p->nbuses ||
            s->value >= p->ncfgs || !range_ok(s->opt0, s->nopt, p->ncfgs))
            return "a source is malformed";
    }
    for (uint32_t i = 0; i < p->ncfgs; i++) {
        const vm_cfg *k = &p->cfgs[i];
        if (k->type > VM_CFG_OPTION || !str_ok(p, k->key) || !str_ok(p, k->str) ||
            !range_ok(k->child0, k->nchild, p->ncfgs) || (k->nchild && k->child0 <= i))
            return "an option is malformed";
    }
    if (!range_ok(p->server0, p->nserver, p->ncfgs))
        return "the server block is malformed";
    for (uint32_t i = 0; i < p->nxforms; i++)
        if (!xform_ok(p, &p->xforms[i]))
            return "a transform is malformed";
    for (uint32_t i = 0; i < p->ntcode; i++)
        if (!span_ok(p, p->tcode_spans[i]))
            return "a template instruction's source span is out of range";
    for (uint32_t i = 0; i < p->ntpaths; i++)
        if (!range_ok(p->tpaths[i].step0, p->tpaths[i].nstep, p->ntsteps) ||
            (p->tpaths[i].path != VM_NONE && p->tpaths[i].path >= p->npaths))
            return "a template path is malformed";
    for (uint32_t i = 0; i < p->ntsteps; i++)
        if (p->tsteps[i].kind > VM_TS_ALL || !str_ok(p, p->tsteps[i].name))
            return "a template path step is malformed";
    const char *why = verify_index(p);
    if (why)
        return why;
    if (p->nstrs > 0 && p->strs[p->nstrs - 1] != 0)
        return "the string pool is not terminated";
    return NULL;
}

/* A table of megabytes is asked for in huge pages (where the kernel gives them on request):
 * filling it then takes one fault per 2 MB instead of one per 4 KB: user time ~1.1 s to ~0.4 s
 * on the file of 100,000 rules (most of what is left is the kernel clearing those pages). */
static void *table_alloc(uint64_t n, size_t size)
{
    void *t = calloc(n ? n : 1, size);
#if defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    if (t && n * size >= 2 * huge) {
        uintptr_t from = ((uintptr_t)t + huge - 1) & ~(huge - 1);
        uintptr_t to = ((uintptr_t)t + n * size) & ~(huge - 1);
        if (to > from)
            madvise((void *)from, to - from, MADV_HUGEPAGE);
    }
#endif
    return t;
}

/* Reads the records of one section into a new array; a length that is not a whole number of
 * records means the section is malformed. */
#define READ_SECTION(field, count, rec, type, sec)                                         \
    do {                                                                                   \
        const uint8_t *b = buf + off[sec];                                                 \
        uint64_t n = len_[sec] / SIZE_##rec;                                               \
        if (len_[sec] % SIZE_##rec != 0 || n > UINT32_MAX)                                 \
            return refuse(p, err, "malformed .ebc file: section %.4s is corrupt", #field); \
        p->field = table_alloc(n, sizeof(type));                                           \
        if (!p->field)                                                                     \
            return refuse(p, err, "out of memory");                                        \
        type *x = p->field;                                                                \
        if (RAW_##rec && SIZE_##rec == sizeof(type))                                       \
            memcpy(x, b, n * sizeof(type));                                                \
        else                                                                               \
            for (uint64_t i = 0; i < n; i++, b += SIZE_##rec)                              \
                dec_##rec(b, &x[i]);                                                       \
        counted[sec] = (uint32_t)n;                                                        \
    } while (0)

vm_program *vm_program_parse(const uint8_t *buf, size_t len, vm_error *err)
{
    vm_program *p = calloc(1, sizeof *p);
    if (!p)
        return refuse(p, err, "out of memory");
    if (len > 0 && len < 8 && memcmp(buf, VM_EBC_MAGIC, len) == 0)
        return refuse(p, err, "truncated .ebc file: %zu bytes, shorter than its magic number", len);
    if (len < 8 || memcmp(buf, VM_EBC_MAGIC, 8) != 0)
        return refuse(p, err, "bad magic number: not an .ebc file, or one whose first bytes are damaged");
    if (len < HEADER)
        return refuse(p, err, "truncated .ebc file: %zu bytes, shorter than its header", len);
    rbuf h = { buf, len, 8 };
    uint32_t version = 0, nsec = 0, crc = 0;
    uint64_t total = 0;
    get_U32(&h, &version);
    get_U32(&h, &nsec);
    get_U64(&h, &total);
    get_U32(&h, &crc);
    if (version != VM_EBC_VERSION)
        return refuse(p, err, ".ebc format version %u is not supported (this ebr reads version %u): "
                      "compile the rules again with this ebc", version, VM_EBC_VERSION);
    if (total != len)
        return refuse(p, err, "truncated .ebc file: the header says %llu bytes, the file has %zu",
                      (unsigned long long)total, len);
    if (vm_crc32c(0, buf + CRC_FROM, len - CRC_FROM) != crc)
        return refuse(p, err, "corrupted .ebc file: checksum mismatch");
    if (nsec > 1024 || HEADER + (size_t)nsec * ENTRY > len)
        return refuse(p, err, "malformed .ebc file: bad section table");
    uint64_t off[SEC__COUNT] = { 0 }, len_[SEC__COUNT] = { 0 };
    bool seen[SEC__COUNT] = { false };
    uint32_t counted[SEC__COUNT] = { 0 };
    const char *tags[SEC__COUNT] = {
#define S(tag, field, count, rec, type) tag,
        SECTIONS(S)
#undef S
        SERVER_TAG,
    };
    for (uint32_t i = 0; i < nsec; i++) {
        uint32_t tag = 0;
        uint64_t o = 0, l = 0;
        get_U32(&h, &tag);
        get_U64(&h, &o);
        get_U64(&h, &l);
        if (o > len || l > len - o)
            return refuse(p, err, "malformed .ebc file: a section lies outside the file");
        for (int s = 0; s < SEC__COUNT; s++)
            if (tag == tag_value(tags[s])) {
                off[s] = o, len_[s] = l, seen[s] = true;
            }
        /* Sections of unknown tags are skipped: a later minor version may add some. */
    }
    for (int s = 0; s < SEC__COUNT; s++)
        if (!seen[s])
            return refuse(p, err, "malformed .ebc file: section %s is missing", tags[s]);
#define S(tag, field, count, rec, type) READ_SECTION(field, count, rec, type, SEC_##field);
    SECTIONS(S)
#undef S
#define S(tag, field, count, rec, type) \
    if (SEC_##field != SEC_code_spans && SEC_##field != SEC_tcode_spans) p->count = counted[SEC_##field];
    SECTIONS(S)
#undef S
    if (counted[SEC_code_spans] != p->ncode || counted[SEC_tcode_spans] != p->ntcode)
        return refuse(p, err, "malformed .ebc file: one source span per instruction is required");
    {
        rbuf r = { buf + off[SEC_server], len_[SEC_server], 0 };
        if (!get_U32(&r, &p->server0) || !get_U32(&r, &p->nserver) || r.p != r.n)
            return refuse(p, err, "malformed .ebc file: section SRVR is corrupt");
    }
    const char *why = verify(p);
    if (why)
        return refuse(p, err, "malformed .ebc file: %s", why);
    if (vm_program_prepare(p) != VM_OK)
        return refuse(p, err, "out of memory");
    return p;
}

/* "cannot open PATH: why" names the cause; "cannot read PATH" is said as it always was. */
static vm_program *io_error(vm_error *err, const char *what, const char *path, bool why)
{
    if (err) {
        err->code = VM_ERR_IO;
        err->offset = 0;
        if (why)
            snprintf(err->msg, sizeof err->msg, "cannot %s %s: %s", what, path, strerror(errno));
        else
            snprintf(err->msg, sizeof err->msg, "cannot %s %s", what, path);
    }
    return NULL;
}

/* Reads what a descriptor holds when it cannot be mapped (a pipe, a terminal, a file system
 * without mmap): the size from fstat when it has one, else by doubling. */
static uint8_t *read_all(int fd, size_t hint, size_t *len)
{
    size_t n = 0, cap = hint ? hint + 1 : 65536;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return NULL;
    for (;;) {
        if (n == cap) {
            uint8_t *b = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!b) {
                free(buf);
                errno = ENOMEM;
                return NULL;
            }
            buf = b;
            cap *= 2;
        }
        ssize_t k = read(fd, buf + n, cap - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            free(buf);
            return NULL;
        }
        if (k == 0)
            break;
        n += (size_t)k;
    }
    *len = n;
    return buf;
}

/* The file is mapped rather than read: no copy into a buffer that doubles (each doubling a copy
 * and fresh pages to fault), and the checksum and the decoder read the page cache directly.
 * On the 251 MB file of 100,000 rules: system time ~2.0 s to ~0.8 s, user ~1.6 s to ~1.1 s. */
vm_program *vm_program_load(const char *path, vm_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return io_error(err, "open", path, true);
    struct stat st;
    bool sized = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
                 (uint64_t)st.st_size < SIZE_MAX;
    if (sized) {
        size_t n = (size_t)st.st_size;
        void *map = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map != MAP_FAILED) {
            close(fd);
#ifdef MADV_SEQUENTIAL
            madvise(map, n, MADV_SEQUENTIAL);
#endif
            vm_program *p = vm_program_parse(map, n, err);
            munmap(map, n);
            return p;
        }
    }
    size_t n = 0;
    uint8_t *buf = read_all(fd, sized ? (size_t)st.st_size : 0, &n);
    int saved = errno;
    close(fd);
    errno = saved;
    if (!buf) {
        if (errno == ENOMEM)
            return refuse(NULL, err, "out of memory");
        return io_error(err, "read", path, false);
    }
    vm_program *p = vm_program_parse(buf, n, err);
    free(buf);
    return p;
}

bool vm_file_is_ebc(const char *path)
{
    unsigned char head[64];
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    size_t k = n < 8 ? n : 8, same = 0;
    for (size_t i = 0; i < k; i++)
        same += head[i] == (unsigned char)VM_EBC_MAGIC[i];
    return (k > 0 && 2 * same > k) || memchr(head, 0, n) != NULL;
}
