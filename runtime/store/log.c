/*
 * log.c — the bus log: the local storage backend (runtime.h "Storage"; format and contract in
 * docs/storage.md).
 *
 * A log is a directory of segment files named by the offset of their first record, each with a
 * sparse index file once it is sealed, a LOCK file held by the one process that writes, and a
 * cursors/ directory of named cursors and cursor sets.  One mutex guards the state; appends
 * gather in a pending buffer and whichever appender finds no write in progress becomes the leader
 * that writes (and, under fsync always, syncs) everything pending at once: group commit with no
 * extra thread.  Readers read the files themselves with pread, up to what has been acknowledged.
 * A write or sync that fails stops appends until the log has recovered by itself (try_recover):
 * back to its acknowledged records, with room to go on.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store_int.h"

/* ---- The format (docs/storage.md) --------------------------------------------------------------
 *
 * segment file  NNNNNNNNNNNNNNNNNNNN.seg (20 digits: the base offset)
 *   header  32 bytes: magic[8] "EBRLOG\0\0" | u32 version | u32 header size | u64 base offset |
 *                     i64 creation time (ns)
 *   records, each:    u32 crc32c of the 28 header bytes after it and the payload | u32 length |
 *                     u64 offset | i64 time (ns) | u32 flags | u32 marker "EBR\1" | payload
 * index file    NNNNNNNNNNNNNNNNNNNN.idx, written when a segment is sealed
 *   header  64 bytes: magic[8] "EBRIDX\0\0" | u32 version | u32 entries | u64 base | u64 next |
 *                     u64 segment bytes | i64 first time | i64 last time | u32 damaged |
 *                     u32 crc32c of the header (this field as 0) and the entries
 *   entries, 16 bytes each: u32 offset - base | u32 position | i64 time
 * All integers little-endian. */

#define LOG_VERSION 1u
#define SEG_HDR 32u
#define REC_HDR 32u
#define IDX_HDR 64u
#define IDX_ENT 16u
#define IDX_EVERY 4096u              /* an index entry per this many bytes of records */
#define REC_LIMIT (1u << 30)         /* the format's largest payload */
static const char seg_magic[8] = { 'E', 'B', 'R', 'L', 'O', 'G', 0, 0 };
static const char idx_magic[8] = { 'E', 'B', 'R', 'I', 'D', 'X', 0, 0 };
static const char rec_mark[4] = { 'E', 'B', 'R', 1 };

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

typedef struct {
    uint32_t len, flags;
    uint64_t offset;
    int64_t time;
} rec_hdr;

enum { REC_OK, REC_SHORT, REC_BAD };

/* Checks the record at p with avail bytes after it: REC_OK (h filled), REC_SHORT (it runs past
 * avail) or REC_BAD (why says what is wrong).  The offset is the caller's to check. */
static int rec_check(const unsigned char *p, uint64_t avail, rec_hdr *h, const char **why)
{
    if (avail < REC_HDR) {
        *why = "a record header cut short";
        return REC_SHORT;
    }
    if (memcmp(p + 28, rec_mark, 4) != 0) {
        *why = "no record marker";
        return REC_BAD;
    }
    h->len = get32(p + 4);
    h->offset = get64(p + 8);
    h->time = (int64_t)get64(p + 16);
    h->flags = get32(p + 24);
    if (h->len > REC_LIMIT) {
        *why = "a length beyond the format's limit";
        return REC_BAD;
    }
    if (avail - REC_HDR < h->len) {
        *why = "a record cut short";
        return REC_SHORT;
    }
    if (vm_crc32c(0, p + 4, REC_HDR - 4 + h->len) != get32(p)) {
        *why = "a checksum mismatch";
        return REC_BAD;
    }
    return REC_OK;
}

/* The first position q in [from, size) where a good record with an offset of at least expect
 * starts, or UINT64_MAX.  Candidates are found by their marker; the offset must also be within
 * reach (no more records than bytes) before the checksum is computed. */
static uint64_t resync(const unsigned char *m, uint64_t size, uint64_t from, uint64_t expect,
                       rec_hdr *h)
{
    uint64_t q = from;
    while (q + REC_HDR <= size) {
        const unsigned char *hit = memmem(m + q + 28, size - q - 28, rec_mark, 4);
        if (!hit)
            break;
        q = (uint64_t)(hit - 28 - m);
        const char *why;
        uint64_t off = get64(m + q + 8);
        if (off >= expect && off - expect <= size / REC_HDR &&
            rec_check(m + q, size - q, h, &why) == REC_OK)
            return q;
        q++;
    }
    return UINT64_MAX;
}

/* ---- Segments and their sparse indexes ------------------------------------------------------- */

typedef struct {
    uint32_t rel, pos;
    int64_t time;
} idx_ent;

typedef struct {
    uint64_t base;          /* the offset of its first record */
    uint64_t next;          /* one past its last record's offset (base while empty) */
    uint64_t bytes;         /* the size of its header and whole records */
    int64_t first_time, last_time;
    idx_ent *idx;
    size_t nidx, capidx;
    uint64_t idx_pos;       /* the position of the last index entry */
    unsigned damaged;       /* corrupt stretches found inside it (reported when found) */
    bool sealed;
} segment;

static bool idx_add(segment *g, uint64_t offset, uint64_t pos, int64_t time)
{
    if (g->nidx && pos - g->idx_pos < IDX_EVERY)
        return true;
    if (g->nidx == g->capidx) {
        size_t cap = g->capidx ? g->capidx * 2 : 16;
        idx_ent *v = realloc(g->idx, cap * sizeof *v);
        if (!v)
            return false;
        g->idx = v;
        g->capidx = cap;
    }
    g->idx[g->nidx++] = (idx_ent){ (uint32_t)(offset - g->base), (uint32_t)pos, time };
    g->idx_pos = pos;
    return true;
}

static void seg_free(segment *g)
{
    if (g) {
        free(g->idx);
        free(g);
    }
}

/* What a scan of one segment file found. */
typedef struct {
    unsigned damaged;        /* corrupt stretches with good records after them */
    uint64_t tail_bytes;     /* bytes after the last good record that hold none (at g->bytes) */
    const char *tail_why;
    bool header_bad;
} scan_result;

typedef void (*report_fn)(void *arg, const char *msg);

static void vreportf(report_fn fn, void *arg, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static void vreportf(report_fn fn, void *arg, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    fn(arg, msg);
}

static void reportf(report_fn fn, void *arg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void reportf(report_fn fn, void *arg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreportf(fn, arg, fmt, ap);
    va_end(ap);
}

/* Scans segment file data m[0..size) whose name says base: fills g (records, times, index) with
 * every good record in order, reporting each corrupt stretch that good records follow; what
 * follows the last good record is left in r->tail_bytes for the caller to judge. */
static bool scan_segment(const char *path, const unsigned char *m, uint64_t size, uint64_t base,
                         segment *g, scan_result *r, report_fn fn, void *arg)
{
    memset(r, 0, sizeof *r);
    g->base = g->next = base;
    g->bytes = SEG_HDR;
    g->first_time = g->last_time = 0;
    if (size < SEG_HDR || memcmp(m, seg_magic, 8) != 0 || get32(m + 8) != LOG_VERSION ||
        get32(m + 12) != SEG_HDR || get64(m + 16) != base) {
        r->header_bad = true;
        if (size < SEG_HDR) {
            g->bytes = size;
            r->tail_bytes = 0;
            return true;
        }
    }
    uint64_t pos = SEG_HDR, expect = base;
    while (pos < size) {
        rec_hdr h;
        const char *why;
        int rc = rec_check(m + pos, size - pos, &h, &why);
        if (rc == REC_OK && h.offset == expect) {
            if (g->next == g->base)
                g->first_time = h.time;
            g->last_time = h.time;
            if (!idx_add(g, h.offset, pos, h.time))
                return false;
            pos += REC_HDR + h.len;
            g->next = ++expect;
            g->bytes = pos;
            continue;
        }
        if (rc == REC_OK)
            why = "an offset out of sequence";
        rec_hdr hq;
        uint64_t q = resync(m, size, pos + 1, expect, &hq);
        if (q == UINT64_MAX) {
            r->tail_bytes = size - pos;
            r->tail_why = why;
            break;
        }
        r->damaged++;
        reportf(fn, arg,
                "%s: position %" PRIu64 ": corrupt record (%s) where offset %" PRIu64
                " should be; good records resume at position %" PRIu64 " with offset %" PRIu64
                " (%" PRIu64 " offsets lost, %" PRIu64 " bytes)",
                path, pos, why, expect, q, hq.offset, hq.offset - expect, q - pos);
        pos = q;
        expect = hq.offset;
    }
    return true;
}

/* Reads the index file of a sealed segment into g if it is whole and agrees with the segment's
 * size; false otherwise (the caller scans the segment instead). */
static bool idx_load(int dirfd, const char *name, uint64_t base, uint64_t seg_size, segment *g)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct stat st;
    unsigned char *b = NULL;
    bool ok = false;
    if (fstat(fd, &st) != 0 || st.st_size < IDX_HDR || st.st_size > (off_t)(IDX_HDR + (1u << 28)))
        goto done;
    b = malloc((size_t)st.st_size);
    if (!b || pread(fd, b, (size_t)st.st_size, 0) != st.st_size)
        goto done;
    uint32_t n = get32(b + 12);
    if (memcmp(b, idx_magic, 8) != 0 || get32(b + 8) != LOG_VERSION ||
        (uint64_t)st.st_size != IDX_HDR + (uint64_t)n * IDX_ENT || get64(b + 16) != base ||
        get64(b + 32) != seg_size)
        goto done;
    uint32_t want = get32(b + 60);
    put32(b + 60, 0);
    if (vm_crc32c(0, b, (size_t)st.st_size) != want)
        goto done;
    g->base = base;
    g->next = get64(b + 24);
    g->bytes = seg_size;
    g->first_time = (int64_t)get64(b + 40);
    g->last_time = (int64_t)get64(b + 48);
    g->damaged = get32(b + 56);
    g->idx = malloc((n ? n : 1) * sizeof *g->idx);
    if (!g->idx || g->next < base)
        goto done;
    for (uint32_t i = 0; i < n; i++) {
        const unsigned char *e = b + IDX_HDR + (size_t)i * IDX_ENT;
        g->idx[i] = (idx_ent){ get32(e), get32(e + 4), (int64_t)get64(e + 8) };
        if (g->idx[i].pos >= seg_size)
            goto done;
    }
    g->nidx = g->capidx = n;
    g->idx_pos = n ? g->idx[n - 1].pos : 0;
    ok = true;
done:
    if (!ok) {
        free(g->idx);
        g->idx = NULL;
    }
    free(b);
    close(fd);
    return ok;
}

/* Writes g's index file (temporary name, then renamed); synced unless sync is false. */
static bool idx_write(int dirfd, const segment *g, bool sync)
{
    size_t len = IDX_HDR + g->nidx * IDX_ENT;
    unsigned char *b = calloc(1, len);
    if (!b)
        return false;
    memcpy(b, idx_magic, 8);
    put32(b + 8, LOG_VERSION);
    put32(b + 12, (uint32_t)g->nidx);
    put64(b + 16, g->base);
    put64(b + 24, g->next);
    put64(b + 32, g->bytes);
    put64(b + 40, (uint64_t)g->first_time);
    put64(b + 48, (uint64_t)g->last_time);
    put32(b + 56, g->damaged);
    for (size_t i = 0; i < g->nidx; i++) {
        unsigned char *e = b + IDX_HDR + i * IDX_ENT;
        put32(e, g->idx[i].rel);
        put32(e + 4, g->idx[i].pos);
        put64(e + 8, (uint64_t)g->idx[i].time);
    }
    put32(b + 60, vm_crc32c(0, b, len));
    char name[40], tmp[48];
    snprintf(name, sizeof name, "%020" PRIu64 ".idx", g->base);
    snprintf(tmp, sizeof tmp, "%s.tmp", name);
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    bool ok = fd >= 0 && pwrite(fd, b, len, 0) == (ssize_t)len && (!sync || fdatasync(fd) == 0);
    if (fd >= 0)
        ok = close(fd) == 0 && ok;
    ok = ok && renameat(dirfd, tmp, dirfd, name) == 0;
    if (!ok) {
        int e = errno;
        unlinkat(dirfd, tmp, 0);
        errno = e;
    }
    free(b);
    return ok;
}

/* The segment files of a directory, sorted by base offset. */
static bool list_segments(int dirfd, uint64_t **bases, size_t *n)
{
    *bases = NULL;
    *n = 0;
    int fd = dup(dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return false;
    }
    size_t cap = 0;
    bool ok = true;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *nm = e->d_name;
        if (strlen(nm) != 24 || strcmp(nm + 20, ".seg") != 0 || strspn(nm, "0123456789") != 20)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *v = realloc(*bases, cap * sizeof *v);
            if (!v) {
                ok = false;
                break;
            }
            *bases = v;
        }
        (*bases)[(*n)++] = strtoull(nm, NULL, 10);
    }
    closedir(d);
    for (size_t i = 1; i < *n; i++)     /* insertion sort: directories hold few segments */
        for (size_t j = i; j > 0 && (*bases)[j - 1] > (*bases)[j]; j--) {
            uint64_t t = (*bases)[j];
            (*bases)[j] = (*bases)[j - 1];
            (*bases)[j - 1] = t;
        }
    return ok;
}

/* ---- The log ------------------------------------------------------------------------------- */

/* Where the log stood at a moment it was sound: the last segment then, the end of its records
 * below `next` and the time of its last record (0: none).  Recovery after a failed write or sync
 * goes back to the mark of the acknowledged records. */
typedef struct {
    uint64_t base, pos, next;
    int64_t time;
} log_mark;

/* A failed log tries to recover at most this often: the pause doubles after each attempt that
 * fails, from the first to the second. */
#define RETRY_FIRST_NS 100000000ll
#define RETRY_MAX_NS 1000000000ll
/* Recovery first makes sure of room for the batch that failed, up to this much (at least one
 * page): a disk still full does not pass for recovered. */
#define ROOM_MIN 4096u
#define ROOM_MAX (1u << 20)

typedef struct {
    store base;
    store_options o;
    char *dir;
    int dirfd, lockfd, curfd;    /* the directory, its LOCK file, its cursors/ directory */
    pthread_mutex_t mu;
    pthread_cond_t cv;           /* acknowledgements, writes done, closing: every waiter */
    pthread_mutex_t sync_mu;     /* the flusher's sync of fd against a roll closing it */
    segment **segs;              /* oldest first; the last one is written */
    size_t nsegs, capsegs;
    int fd;                      /* the last segment, open for writing */
    _Atomic uint64_t first;      /* the first offset kept */
    uint64_t next;               /* the next offset to hand out */
    uint64_t written, durable, acked;   /* records below these are written / synced / acked */
    int64_t last_time;
    unsigned char *pend, *spare; /* records waiting for a leader, serialized; a second buffer */
    size_t plen, pcap, scap;
    uint64_t batch;              /* the number of the batch pend collects */
    pthread_cond_t batch_cv[2];  /* the appenders of batch k wait on batch_cv[k % 2], so that
                                  * acknowledging a batch wakes its appenders and one of the next
                                  * batch's (to lead it), not every appender in vain */
    bool writing, failed, closing;
    unsigned inflight;           /* appends inside log_append: close waits for them to leave */
    /* After a failed write or sync (failed): the cause, the last failed recovery's, when to try
     * again and the pause after that; broken once acknowledged records were found lost (only a
     * reopen goes on then).  A recovery adds one to epoch, which tells cursors that the bytes
     * past the acknowledged records changed. */
    char why[512], retry_why[512];
    int64_t retry_at, retry_ns;
    uint64_t room;               /* the bytes recovery must find room for */
    bool broken;
    uint64_t epoch;
    uint64_t wakes;              /* store_wake calls: a waiting cursor returns when it moves */
    log_mark acked_at;           /* the end of the acknowledged records */
    log_mark synced_at;          /* and of those known synced (fsync interval: not all of them) */
    pthread_t flusher;
    bool has_flusher;
    pthread_cond_t flush_cv;
    _Atomic uint64_t fsyncs, writes;
    pthread_mutex_t err_mu;      /* err is written by any thread that fails */
    pthread_mutex_t commit_mu;   /* one named-cursor commit at a time */
    char err[512];
    int (*fault)(void *arg, const char *op);    /* tests: log_set_fault */
    void *fault_arg;
} log_t;

typedef struct {
    store_cursor base;
    log_t *l;
    uint64_t next;               /* the offset of the next record to look at */
    uint64_t skip_below;         /* seeking: records below this are passed over */
    int64_t min_time;            /* seeking by time: records older are passed over */
    int fd;                      /* the segment being read, or -1 */
    uint64_t seg_base, pos;      /* its base; the position of record `next` in it */
    uint64_t limit, acked;       /* what may be read of it, as of the last look */
    bool sealed;
    unsigned char *buf;          /* file bytes [buf_pos, buf_pos + buf_len) */
    size_t cap, buf_len;
    uint64_t buf_pos;
    uint64_t bad_pos;            /* the corrupt record last reported (UINT64_MAX: none) */
    uint64_t gap_to;             /* or the offset after the missing ones last reported */
    uint64_t epoch;              /* the log's epoch when it last looked */
    uint64_t wakes;              /* the log's store_wake count it has answered */
    char err[512];
} log_cursor;

static const store_ops log_ops;
static const char *log_error(store *s);

static void default_report(void *arg, const char *msg)
{
    (void)arg;
    fprintf(stderr, "ebr log: %s\n", msg);
}

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void say(log_t *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(log_t *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreportf(l->o.report, l->o.report_arg, fmt, ap);
    va_end(ap);
}

/* Records the message of a failure and returns st. */
static store_status fail(log_t *l, store_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static store_status fail(log_t *l, store_status st, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&l->err_mu);
    memcpy(l->err, msg, sizeof msg);
    pthread_mutex_unlock(&l->err_mu);
    return st;
}

static void seg_name(char *buf, size_t cap, uint64_t base)
{
    snprintf(buf, cap, "%020" PRIu64 ".seg", base);
}

static bool push_segment(log_t *l, segment *g)
{
    if (l->nsegs == l->capsegs) {
        size_t cap = l->capsegs ? l->capsegs * 2 : 8;
        segment **v = realloc(l->segs, cap * sizeof *v);
        if (!v)
            return false;
        l->segs = v;
        l->capsegs = cap;
    }
    l->segs[l->nsegs++] = g;
    return true;
}

/* The mark of the last segment as it is: call when everything in it is acknowledged.  Under
 * l->mu, or as the leader. */
static log_mark mark_of(const log_t *l)
{
    const segment *g = l->segs[l->nsegs - 1];
    return (log_mark){ g->base, g->bytes, g->next, g->next > g->base ? g->last_time : 0 };
}

static void pwrite_header(unsigned char h[SEG_HDR], uint64_t base)
{
    memset(h, 0, SEG_HDR);
    memcpy(h, seg_magic, 8);
    put32(h + 8, LOG_VERSION);
    put32(h + 12, SEG_HDR);
    put64(h + 16, base);
    put64(h + 24, (uint64_t)realtime_ns());
}

static bool write_all(int fd, const unsigned char *p, size_t n, uint64_t pos)
{
    while (n) {
        ssize_t w = pwrite(fd, p, n, (off_t)pos);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
        pos += (uint64_t)w;
    }
    return true;
}

static bool sync_on(const log_t *l)
{
    return l->o.fsync != STORE_FSYNC_NEVER;
}

/* The errno a test's fault hook makes operation op fail with, or 0 (log_set_fault). */
static int fault(log_t *l, const char *op)
{
    return l->fault ? l->fault(l->fault_arg, op) : 0;
}

/* The writer's writes and syncs of segment data, where tests inject failures. */
static bool seg_write(log_t *l, int fd, const unsigned char *p, size_t n, uint64_t pos)
{
    int e = fault(l, "write");
    if (e) {
        errno = e;
        return false;
    }
    return write_all(fd, p, n, pos);
}

static int seg_sync(log_t *l, int fd)
{
    int e = fault(l, "sync");
    if (e) {
        errno = e;
        return -1;
    }
    return fdatasync(fd);
}

/* Creates the segment file for base (header written; file and directory synced unless fsync
 * never) and returns its descriptor, or -1 with errno set. */
static int create_segment(log_t *l, uint64_t base)
{
    char name[40];
    seg_name(name, sizeof name, base);
    int fd = openat(l->dirfd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    unsigned char h[SEG_HDR];
    pwrite_header(h, base);
    if (!write_all(fd, h, SEG_HDR, 0) || (sync_on(l) && (fdatasync(fd) || fsync(l->dirfd)))) {
        int e = errno;
        close(fd);
        unlinkat(l->dirfd, name, 0);   /* no stray segment is left to confuse the next open */
        errno = e;
        return -1;
    }
    return fd;
}

/* ---- Opening: recovery ---------------------------------------------------------------------- */

/* Maps a segment file for a scan (NULL for an empty file, which scans as a bad header). */
static const unsigned char *map_file(int fd, uint64_t size)
{
    if (size == 0)
        return (const unsigned char *)"";
    void *m = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    return m == MAP_FAILED ? NULL : m;
}

static void unmap_file(const unsigned char *m, uint64_t size)
{
    if (size)
        munmap((void *)m, (size_t)size);
}

/* Loads one segment at open: a sealed one from its index when that agrees with the file, the
 * last one (and any without a good index) by a scan.  The last segment's torn or corrupt tail
 * is truncated (unless read-only), loudly. */
static store_status load_segment(log_t *l, uint64_t base, bool last, segment **out)
{
    char name[40], path[4200];
    seg_name(name, sizeof name, base);
    snprintf(path, sizeof path, "%s/%s", l->dir, name);
    segment *g = calloc(1, sizeof *g);
    if (!g)
        return fail(l, STORE_EIO, "out of memory");
    int fd = openat(l->dirfd, name, (l->o.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        seg_free(g);
        if (fd >= 0)
            close(fd);
        return fail(l, STORE_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    uint64_t size = (uint64_t)st.st_size;
    char iname[40];
    snprintf(iname, sizeof iname, "%020" PRIu64 ".idx", base);
    if (!last && idx_load(l->dirfd, iname, base, size, g)) {
        g->sealed = true;
        if (g->damaged)
            say(l, "%s: holds %u corrupt stretch%s (found when it was scanned; readers report "
                "each with its position)", path, g->damaged, g->damaged == 1 ? "" : "es");
        close(fd);
        *out = g;
        return STORE_OK;
    }
    const unsigned char *m = map_file(fd, size);
    if (m && size >= 12 && memcmp(m, seg_magic, 8) == 0 && get32(m + 8) != LOG_VERSION) {
        uint32_t v = get32(m + 8);
        unmap_file(m, size);
        close(fd);
        seg_free(g);
        return fail(l, STORE_CORRUPT, "%s: segment format version %u; this build reads version %u",
                    path, v, LOG_VERSION);
    }
    scan_result r;
    if (!m || !scan_segment(path, m, size, base, g, &r, l->o.report, l->o.report_arg)) {
        if (m)
            unmap_file(m, size);
        close(fd);
        seg_free(g);
        return fail(l, STORE_EIO, "%s: cannot read: %s", path, strerror(errno));
    }
    unmap_file(m, size);
    g->damaged = r.damaged;
    store_status st_ok = STORE_OK;
    if (r.header_bad) {
        if (last && g->next == base && !l->o.read_only) {
            /* A segment whose creation a crash cut short: start it again. */
            unsigned char h[SEG_HDR];
            pwrite_header(h, base);
            if (ftruncate(fd, 0) || !write_all(fd, h, SEG_HDR, 0) || fdatasync(fd))
                st_ok = fail(l, STORE_EIO, "%s: cannot rewrite: %s", path, strerror(errno));
            say(l, "%s: recovered: a segment header cut short (%" PRIu64 " bytes), written again",
                path, size);
            g->bytes = SEG_HDR;
            r.tail_bytes = 0;
        } else
            say(l, "%s: the segment header is damaged (its records are read by their own checks)",
                path);
    }
    if (r.tail_bytes && last) {
        if (l->o.read_only)
            say(l, "%s: position %" PRIu64 ": %" PRIu64 " bytes after offset %" PRIu64
                " hold no whole record (%s): a torn tail, left as it is (read-only)",
                path, g->bytes, r.tail_bytes, g->next - 1, r.tail_why);
        else {
            say(l, "%s: recovered: truncated a torn tail at position %" PRIu64 ": %" PRIu64
                " bytes after %s%" PRIu64 " held no whole record (%s)",
                path, g->bytes, r.tail_bytes, g->next > base ? "offset " : "the header, before offset ",
                g->next > base ? g->next - 1 : base, r.tail_why);
            if (ftruncate(fd, (off_t)g->bytes) != 0 || fdatasync(fd) != 0)
                st_ok = fail(l, STORE_EIO, "%s: cannot truncate: %s", path, strerror(errno));
        }
    } else if (r.tail_bytes)
        say(l, "%s: position %" PRIu64 ": %" PRIu64 " bytes after offset %" PRIu64
            " hold no whole record (%s)", path, g->bytes, r.tail_bytes, g->next - 1, r.tail_why);
    close(fd);
    if (st_ok != STORE_OK) {
        seg_free(g);
        return st_ok;
    }
    g->sealed = !last;
    if (g->sealed && !l->o.read_only && !r.tail_bytes && !idx_write(l->dirfd, g, sync_on(l)))
        say(l, "%s: cannot write its index: %s", path, strerror(errno));
    *out = g;
    return STORE_OK;
}

static store_status load_all(log_t *l)
{
    uint64_t *bases;
    size_t n;
    if (!list_segments(l->dirfd, &bases, &n))
        return fail(l, STORE_EIO, "%s: cannot list: %s", l->dir, strerror(errno));
    store_status st = STORE_OK;
    for (size_t i = 0; i < n && st == STORE_OK; i++) {
        segment *g;
        st = load_segment(l, bases[i], i + 1 == n, &g);
        if (st != STORE_OK)
            break;
        if (l->nsegs) {
            segment *p = l->segs[l->nsegs - 1];
            if (g->base < p->next && i + 1 == n && g->next == g->base && !l->o.read_only) {
                /* An empty last segment inside its predecessor (left by a roll that failed
                 * half-way in an older version): it holds nothing, so it goes, and the
                 * predecessor is written again. */
                char name[40];
                seg_name(name, sizeof name, g->base);
                say(l, "%s/%s: removed: an empty segment inside the offsets of the one before",
                    l->dir, name);
                unlinkat(l->dirfd, name, 0);
                seg_free(g);
                p->sealed = false;
                break;
            }
            if (g->base < p->next) {
                seg_free(g);
                st = fail(l, STORE_CORRUPT, "%s: segments %020" PRIu64 " and %020" PRIu64
                          " overlap (offsets up to %" PRIu64 " in the first)",
                          l->dir, p->base, bases[i], p->next - 1);
                break;
            }
            if (g->base > p->next)
                say(l, "%s: offsets %" PRIu64 "..%" PRIu64 " are missing between segments "
                    "%020" PRIu64 " and %020" PRIu64, l->dir, p->next, g->base - 1, p->base, g->base);
        }
        if (!push_segment(l, g)) {
            seg_free(g);
            st = fail(l, STORE_EIO, "out of memory");
        }
    }
    free(bases);
    return st;
}

static void *flusher_main(void *arg);

static void log_free(log_t *l)
{
    for (size_t i = 0; i < l->nsegs; i++)
        seg_free(l->segs[i]);
    free(l->segs);
    free(l->pend);
    free(l->spare);
    if (l->fd >= 0)
        close(l->fd);
    if (l->curfd >= 0)
        close(l->curfd);
    if (l->lockfd >= 0)
        close(l->lockfd);     /* and with it the lock */
    if (l->dirfd >= 0)
        close(l->dirfd);
    pthread_mutex_destroy(&l->mu);
    pthread_mutex_destroy(&l->sync_mu);
    pthread_mutex_destroy(&l->err_mu);
    pthread_mutex_destroy(&l->commit_mu);
    pthread_cond_destroy(&l->cv);
    pthread_cond_destroy(&l->batch_cv[0]);
    pthread_cond_destroy(&l->batch_cv[1]);
    pthread_cond_destroy(&l->flush_cv);
    free(l->dir);
    free(l);
}

/* Syncs the directory that holds path (after creating path in it). */
static void sync_parent(const char *path)
{
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", path);
    size_t n = strlen(parent);
    while (n > 1 && parent[n - 1] == '/')
        parent[--n] = 0;
    char *slash = strrchr(parent, '/');
    if (!slash)
        snprintf(parent, sizeof parent, ".");
    else if (slash == parent)
        parent[1] = 0;
    else
        *slash = 0;
    int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static store_status open_dirs(log_t *l)
{
    if (!l->o.read_only && mkdir(l->dir, 0755) == 0)
        sync_parent(l->dir);        /* the new directory's entry is durable before any record */
    else if (!l->o.read_only && errno != EEXIST)
        return fail(l, STORE_EIO, "%s: cannot create: %s", l->dir, strerror(errno));
    l->dirfd = open(l->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (l->dirfd < 0)
        return fail(l, STORE_EIO, "%s: cannot open: %s", l->dir, strerror(errno));
    if (!l->o.read_only) {
        l->lockfd = openat(l->dirfd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (l->lockfd < 0)
            return fail(l, STORE_EIO, "%s/LOCK: cannot open: %s", l->dir, strerror(errno));
        if (flock(l->lockfd, LOCK_EX | LOCK_NB) != 0)
            return fail(l, errno == EWOULDBLOCK ? STORE_EBUSY : STORE_EIO,
                        "%s: the log is open in another process (%s)", l->dir, strerror(errno));
        char pid[32];
        int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
        if (ftruncate(l->lockfd, 0) != 0 || pwrite(l->lockfd, pid, (size_t)n, 0) != n)
            return fail(l, STORE_EIO, "%s/LOCK: cannot write: %s", l->dir, strerror(errno));
        if (mkdirat(l->dirfd, "cursors", 0755) == 0)
            fsync(l->dirfd);
        else if (errno != EEXIST)
            return fail(l, STORE_EIO, "%s/cursors: cannot create: %s", l->dir, strerror(errno));
    }
    l->curfd = openat(l->dirfd, "cursors", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (l->curfd < 0 && !(l->o.read_only && errno == ENOENT))
        return fail(l, STORE_EIO, "%s/cursors: cannot open: %s", l->dir, strerror(errno));
    return STORE_OK;
}

store_status log_open(const char *dir, const store_options *o, store **out, char *err,
                      size_t errcap)
{
    *out = NULL;
    log_t *l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(err, errcap, "out of memory");
        return STORE_EIO;
    }
    l->base.ops = &log_ops;
    l->dirfd = l->lockfd = l->curfd = l->fd = -1;
    if (o)
        l->o = *o;
    if (!l->o.fsync_interval_ns)
        l->o.fsync_interval_ns = 10 * 1000000ull;
    if (!l->o.segment_bytes)
        l->o.segment_bytes = 64ull << 20;
    if (l->o.segment_bytes < 4096)
        l->o.segment_bytes = 4096;
    if (l->o.segment_bytes > (1ull << 30))
        l->o.segment_bytes = 1ull << 30;
    if (!l->o.max_record || l->o.max_record > REC_LIMIT)
        l->o.max_record = l->o.max_record ? REC_LIMIT : 16u << 20;
    if (!l->o.report)
        l->o.report = default_report;
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->sync_mu, NULL);
    pthread_mutex_init(&l->err_mu, NULL);
    pthread_mutex_init(&l->commit_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &ca);
    pthread_cond_init(&l->batch_cv[0], &ca);
    pthread_cond_init(&l->batch_cv[1], &ca);
    pthread_cond_init(&l->flush_cv, &ca);
    pthread_condattr_destroy(&ca);
    l->dir = strdup(dir);
    store_status st = l->dir ? open_dirs(l) : fail(l, STORE_EIO, "out of memory");
    if (st == STORE_OK)
        st = load_all(l);
    if (st == STORE_OK && l->nsegs == 0) {
        if (l->o.read_only)
            st = fail(l, STORE_EINVAL, "%s: not a bus log (no segment files)", dir);
        else {
            segment *g = calloc(1, sizeof *g);
            int fd = g ? create_segment(l, 0) : -1;
            if (fd < 0 || !push_segment(l, g)) {
                seg_free(g);
                st = fail(l, STORE_EIO, "%s: cannot create the first segment: %s", dir,
                          strerror(errno));
            } else {
                g->bytes = SEG_HDR;
                l->fd = fd;
            }
        }
    }
    if (st == STORE_OK) {
        segment *a = l->segs[l->nsegs - 1];
        if (l->fd < 0 && !l->o.read_only) {
            char name[40];
            seg_name(name, sizeof name, a->base);
            l->fd = openat(l->dirfd, name, O_RDWR | O_CLOEXEC);
            if (l->fd < 0)
                st = fail(l, STORE_EIO, "%s/%s: cannot open: %s", dir, name, strerror(errno));
        }
        l->first = l->segs[0]->base;
        l->next = l->written = l->durable = l->acked = a->next;
        for (size_t i = 0; i < l->nsegs; i++)
            if (l->segs[i]->last_time > l->last_time)
                l->last_time = l->segs[i]->last_time;
        l->acked_at = l->synced_at = mark_of(l);
        l->retry_ns = RETRY_FIRST_NS;
    }
    if (st == STORE_OK && !l->o.read_only) {
        if (pthread_create(&l->flusher, NULL, flusher_main, l) != 0)
            st = fail(l, STORE_EIO, "cannot start the log's flusher thread");
        else
            l->has_flusher = true;
    }
    if (st != STORE_OK) {
        snprintf(err, errcap, "%s", l->err);
        log_free(l);
        return st;
    }
    *out = &l->base;
    return STORE_OK;
}

/* ---- Writing ----------------------------------------------------------------------------- */

/* A write or sync failed (msg says which and why; bytes: the batch it was to write): the log
 * takes no appends until it recovers (try_recover), and the appenders waiting for a batch give
 * up.  Under l->mu. */
static void set_failed(log_t *l, const char *msg, uint64_t bytes)
{
    if (!l->failed) {
        l->failed = true;
        l->room = bytes < ROOM_MIN ? ROOM_MIN : bytes > ROOM_MAX ? ROOM_MAX : bytes;
        snprintf(l->why, sizeof l->why, "%s", msg);
        l->retry_why[0] = 0;
        l->retry_at = mono_ns() + l->retry_ns;
    }
    pthread_cond_broadcast(&l->batch_cv[0]);
    pthread_cond_broadcast(&l->batch_cv[1]);
}

/* Seals the last segment (synced, its index written) and starts the next one.  Called by the
 * leader (l->writing), without l->mu. */
static store_status roll(log_t *l)
{
    segment *old = l->segs[l->nsegs - 1];
    if (sync_on(l)) {
        if (seg_sync(l, l->fd) != 0)
            return fail(l, STORE_EIO, "%s: fdatasync: %s", l->dir, strerror(errno));
        l->fsyncs++;
    }
    if (!idx_write(l->dirfd, old, sync_on(l)))
        say(l, "%s: cannot write the index of segment %020" PRIu64 ": %s (rebuilt at the next open)",
            l->dir, old->base, strerror(errno));
    segment *g = calloc(1, sizeof *g);
    int fd = g ? create_segment(l, old->next) : -1;
    if (fd < 0) {
        free(g);
        return fail(l, STORE_EIO, "%s: cannot create segment %020" PRIu64 ": %s", l->dir,
                    old->next, strerror(errno));
    }
    g->base = g->next = old->next;
    g->bytes = SEG_HDR;
    pthread_mutex_lock(&l->sync_mu);
    pthread_mutex_lock(&l->mu);
    bool ok = push_segment(l, g);
    int oldfd = l->fd;
    if (ok) {
        old->sealed = true;
        l->fd = fd;
    }
    pthread_mutex_unlock(&l->mu);
    pthread_mutex_unlock(&l->sync_mu);
    close(ok ? oldfd : fd);
    if (!ok) {
        free(g);
        return fail(l, STORE_EIO, "out of memory");
    }
    return STORE_OK;
}

/* Makes the records of b[0..n) (first offset `first`) part of segment g as written: under l->mu,
 * since readers look at g. */
static bool publish(log_t *l, segment *g, const unsigned char *b, size_t n, uint64_t pos)
{
    bool ok = true;
    pthread_mutex_lock(&l->mu);
    for (size_t p = 0; p < n;) {
        uint32_t len = get32(b + p + 4);
        uint64_t off = get64(b + p + 8);
        int64_t t = (int64_t)get64(b + p + 16);
        if (g->next == g->base)
            g->first_time = t;
        g->last_time = t;
        g->next = off + 1;
        ok = idx_add(g, off, pos + p, t) && ok;
        p += REC_HDR + len;
    }
    g->bytes = pos + n;
    pthread_mutex_unlock(&l->mu);
    return ok;
}

/* Writes the batch b[0..n) (serialized records with their checksums still to compute), rolling
 * segments where it would pass the segment size, and syncs under fsync always.  The leader's
 * work, done without l->mu. */
static store_status write_batch(log_t *l, unsigned char *b, size_t n)
{
    size_t start = 0;
    segment *a = l->segs[l->nsegs - 1];    /* only the leader changes the last segment */
    uint64_t pos = a->bytes;
    for (size_t p = 0; p < n;) {
        uint32_t len = get32(b + p + 4);
        size_t rl = REC_HDR + len;
        put32(b + p, vm_crc32c(0, b + p + 4, REC_HDR - 4 + len));
        bool has_records = a->next > a->base || p > start;
        if (has_records && pos + (p - start) + rl > l->o.segment_bytes) {
            if (p > start) {
                if (!seg_write(l, l->fd, b + start, p - start, pos))
                    return fail(l, STORE_EIO, "%s: write: %s", l->dir, strerror(errno));
                l->writes++;
                if (!publish(l, a, b + start, p - start, pos))
                    return fail(l, STORE_EIO, "out of memory");
            }
            store_status st = roll(l);
            if (st != STORE_OK)
                return st;
            a = l->segs[l->nsegs - 1];
            pos = a->bytes;
            start = p;
        }
        p += rl;
    }
    if (n > start) {
        if (!seg_write(l, l->fd, b + start, n - start, pos))
            return fail(l, STORE_EIO, "%s: write: %s", l->dir, strerror(errno));
        l->writes++;
        if (!publish(l, a, b + start, n - start, pos))
            return fail(l, STORE_EIO, "out of memory");
    }
    if (l->o.fsync == STORE_FSYNC_ALWAYS) {
        if (seg_sync(l, l->fd) != 0)
            return fail(l, STORE_EIO, "%s: fdatasync: %s", l->dir, strerror(errno));
        l->fsyncs++;
    }
    return STORE_OK;
}

/* The leader: takes everything pending and writes it.  Called and returns with l->mu held. */
static void lead(log_t *l)
{
    l->writing = true;
    unsigned char *b = l->pend;
    size_t n = l->plen, bcap = l->pcap;
    uint64_t end = l->next;
    l->pend = l->spare;         /* appenders fill the other buffer meanwhile */
    l->pcap = l->scap;
    l->spare = NULL;
    l->scap = 0;
    l->plen = 0;
    uint64_t g = l->batch++;
    pthread_mutex_unlock(&l->mu);

    store_status st = write_batch(l, b, n);
    char msg[512] = "";
    if (st != STORE_OK) {
        snprintf(msg, sizeof msg, "%s", log_error(&l->base));
        say(l, "%s", msg);                 /* reports never run under l->mu */
    }

    pthread_mutex_lock(&l->mu);
    l->spare = b;
    l->scap = bcap;
    if (st == STORE_OK) {
        l->written = end;
        if (l->o.fsync == STORE_FSYNC_ALWAYS)
            l->durable = end;
        l->acked = l->o.fsync == STORE_FSYNC_ALWAYS ? l->durable : l->written;
        l->acked_at = mark_of(l);
        if (l->o.fsync == STORE_FSYNC_ALWAYS)
            l->synced_at = l->acked_at;
    } else
        set_failed(l, msg, n);
    l->writing = false;
    pthread_cond_broadcast(&l->batch_cv[g & 1]);
    if (l->plen)
        pthread_cond_signal(&l->batch_cv[(g + 1) & 1]);   /* one of them leads the next */
    pthread_cond_broadcast(&l->cv);                        /* readers, close, retention */
}

/* ---- Recovery after a failed write or sync -------------------------------------------------- */

static size_t find_segment(const log_t *l, uint64_t offset);

/* Writes again the records acknowledged since the last good sync, y, up to a (both in the
 * segment open as fd), after checking each as read back: after a failed fsync the kernel may
 * hold them as clean pages that were never written, and a sync alone would not write them.
 * Works through 1 MiB of whole records at a time (more for a larger record).  STORE_CORRUPT
 * when one does not read back intact: an acknowledged record was lost. */
static store_status rewrite_unsynced(log_t *l, int fd, const log_mark *a, const log_mark *y,
                                     uint64_t *rewritten)
{
    uint64_t pos = y->base == a->base ? y->pos : SEG_HDR;
    uint64_t off = y->base == a->base ? y->next : a->base;
    *rewritten = 0;
    size_t cap = 1 << 20;
    unsigned char *b = NULL;
    store_status st = STORE_OK;
    while (st == STORE_OK && pos < a->pos) {
        size_t want = a->pos - pos < cap ? (size_t)(a->pos - pos) : cap;
        if (!b && !(b = malloc(cap))) {
            st = fail(l, STORE_EIO, "out of memory");
            break;
        }
        size_t got = 0;
        while (got < want) {
            ssize_t r = pread(fd, b + got, want - got, (off_t)(pos + got));
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        if (got < want) {
            st = fail(l, STORE_EIO, "%s/%020" PRIu64 ".seg: cannot read back position %" PRIu64
                      ": %s", l->dir, a->base, pos + got, got ? "the file is shorter than written"
                      : strerror(errno));
            break;
        }
        size_t p = 0;         /* the whole records in b[0..p) */
        for (;;) {
            rec_hdr h;
            const char *why = "an offset out of sequence";
            int rc = rec_check(b + p, want - p, &h, &why);
            if (rc == REC_SHORT && want - p < a->pos - pos - p)
                break;        /* the record goes on past this piece */
            if (rc != REC_OK || h.offset != off) {
                st = fail(l, STORE_CORRUPT, "%s/%020" PRIu64 ".seg: position %" PRIu64 ": offset %"
                          PRIu64 ", acknowledged but not yet synced when a write or sync failed, "
                          "does not read back intact (%s): it was lost; the log takes no appends "
                          "until reopened", l->dir, a->base, pos + p, off, why);
                break;
            }
            p += REC_HDR + h.len;
            off++;
            if (p == want)
                break;
        }
        if (st != STORE_OK)
            break;
        if (p == 0) {         /* one record larger than the buffer: room for it whole */
            uint32_t len = get32(b + 4);
            free(b);
            b = NULL;
            cap = REC_HDR + (size_t)len;
            continue;
        }
        if (!seg_write(l, fd, b, p, pos))
            st = fail(l, STORE_EIO, "%s: write: %s", l->dir, strerror(errno));
        pos += p;
        *rewritten += p;
    }
    free(b);
    return st;
}

/* What a recovery did, for its report. */
typedef struct {
    size_t keep;              /* the segment that is the last one again */
    int fd;                   /* its file, open for writing */
    uint64_t cut;             /* bytes of it truncated */
    unsigned removed;         /* later segment files removed */
    uint64_t rewritten;       /* bytes written again (rewrite_unsynced) */
} recovery;

/* The file work of a recovery: brings the files back to the acknowledged records, a, and
 * syncs them.  Segment files after a's hold none (a batch that rolled, then failed): they go;
 * a's segment is truncated after them (its index, if a roll wrote one, goes too).  Done by the
 * leader (l->writing) with l->sync_mu held and l->mu not; changes nothing in memory, so that a
 * failure leaves the log as it was, and the next attempt does it all again. */
static store_status restore(log_t *l, const log_mark *a, const log_mark *y, uint64_t room,
                            recovery *rv)
{
    memset(rv, 0, sizeof *rv);
    rv->keep = find_segment(l, a->base);
    rv->fd = l->fd;
    char name[40];
    seg_name(name, sizeof name, a->base);
    if (l->segs[rv->keep]->base != a->base)
        return fail(l, STORE_EIO, "%s/%s: the segment of the last acknowledged record is not "
                    "in the log", l->dir, name);
    if (rv->keep + 1 < l->nsegs && (rv->fd = openat(l->dirfd, name, O_RDWR | O_CLOEXEC)) < 0)
        return fail(l, STORE_EIO, "%s/%s: cannot open: %s", l->dir, name, strerror(errno));
    store_status st = STORE_OK;
    uint64_t *bases = NULL;
    size_t nb = 0;
    if (!list_segments(l->dirfd, &bases, &nb))
        st = fail(l, STORE_EIO, "%s: cannot list: %s", l->dir, strerror(errno));
    bool unlinked = false;
    for (size_t i = nb; st == STORE_OK && i-- > 0 && bases[i] >= a->base;) {
        char iname[40];
        snprintf(iname, sizeof iname, "%020" PRIu64 ".idx", bases[i]);
        if (unlinkat(l->dirfd, iname, 0) == 0)
            unlinked = true;
        if (bases[i] == a->base)
            break;
        seg_name(iname, sizeof iname, bases[i]);
        if (unlinkat(l->dirfd, iname, 0) == 0) {
            unlinked = true;
            rv->removed++;
        } else if (errno != ENOENT)
            st = fail(l, STORE_EIO, "%s/%s: cannot remove: %s", l->dir, iname, strerror(errno));
    }
    free(bases);
    if (st == STORE_OK && sync_on(l))
        st = rewrite_unsynced(l, rv->fd, a, y, &rv->rewritten);
    struct stat sb;
    if (st == STORE_OK && fstat(rv->fd, &sb) != 0)
        st = fail(l, STORE_EIO, "%s/%s: cannot stat: %s", l->dir, name, strerror(errno));
    int e = st == STORE_OK ? fault(l, "truncate") : 0;
    if (st == STORE_OK && (e || ftruncate(rv->fd, (off_t)a->pos) != 0))
        st = fail(l, STORE_EIO, "%s/%s: cannot truncate: %s", l->dir, name, strerror(e ? e : errno));
    if (st == STORE_OK) {
        /* Room to go on: `room` bytes reserved after the records, then given back.  (A file
         * system without fallocate is taken at its word.) */
        rv->cut = (uint64_t)sb.st_size > a->pos ? (uint64_t)sb.st_size - a->pos : 0;
        if (fallocate(rv->fd, 0, (off_t)a->pos, (off_t)room) != 0 && errno != EOPNOTSUPP &&
            errno != ENOSYS) {
            st = fail(l, STORE_EIO, "%s: no room for %" PRIu64 " bytes yet: %s", l->dir, room,
                      strerror(errno));
        }
        if (ftruncate(rv->fd, (off_t)a->pos) != 0 && st == STORE_OK)
            st = fail(l, STORE_EIO, "%s/%s: cannot truncate: %s", l->dir, name, strerror(errno));
    }
    if (st == STORE_OK) {
        if (sync_on(l) && (seg_sync(l, rv->fd) != 0 || (unlinked && fsync(l->dirfd) != 0)))
            st = fail(l, STORE_EIO, "%s: fdatasync: %s", l->dir, strerror(errno));
    }
    if (st != STORE_OK && rv->fd != l->fd) {
        close(rv->fd);
        rv->fd = -1;
    }
    return st;
}

/* The memory half of a recovery, once restore has brought the files back to a: segments after
 * a's go, a's becomes the last one again as it was at a, and what was pending is dropped (its
 * appenders were answered STORE_EIO).  Under l->mu and l->sync_mu. */
static void adopt(log_t *l, const log_mark *a, const recovery *rv)
{
    for (size_t i = rv->keep + 1; i < l->nsegs; i++)
        seg_free(l->segs[i]);
    l->nsegs = rv->keep + 1;
    segment *g = l->segs[rv->keep];
    g->next = a->next;
    g->bytes = a->pos;
    g->last_time = a->time;
    if (g->next == g->base)
        g->first_time = 0;
    while (g->nidx && g->base + g->idx[g->nidx - 1].rel >= a->next)
        g->nidx--;
    g->idx_pos = g->nidx ? g->idx[g->nidx - 1].pos : 0;
    g->sealed = false;
    if (rv->fd != l->fd) {
        close(l->fd);
        l->fd = rv->fd;
    }
    l->next = l->written = a->next;
    if (sync_on(l)) {
        l->durable = a->next;
        l->synced_at = *a;
    }
    l->fsyncs += sync_on(l);
    l->plen = 0;
    l->failed = false;
    l->epoch++;
    l->retry_ns = RETRY_FIRST_NS;
}

/* After a failed write or sync: once the pause has passed (force: at once), takes the leader's
 * place and brings the log back to its acknowledged records: what was written after them, never
 * acknowledged, is truncated; what was acknowledged but not yet synced is written again; the
 * files are synced, and appends are taken again.  Does nothing while a write, retention or an
 * earlier failed batch's appenders are still about, or once acknowledged records were found lost.
 * Called with l->mu held; returns with it held, having released it meanwhile. */
static void try_recover(log_t *l, bool force)
{
    if (!l->failed || l->broken || l->writing || l->inflight ||
        (!force && (l->closing || mono_ns() < l->retry_at)))
        return;
    l->writing = true;
    log_mark a = l->acked_at, y = l->synced_at;
    uint64_t room = l->room;
    pthread_mutex_unlock(&l->mu);

    pthread_mutex_lock(&l->sync_mu);      /* the flusher syncs no descriptor we change */
    recovery rv;
    store_status st = restore(l, &a, &y, room, &rv);
    char msg[1024];
    if (st == STORE_OK) {
        int n = snprintf(msg, sizeof msg, "%s: recovered after a failed write or sync: appends are "
                         "taken again from offset %" PRIu64 "; %" PRIu64 " bytes after it, never "
                         "acknowledged, truncated from segment %020" PRIu64, l->dir, a.next,
                         rv.cut, a.base);
        if (rv.removed && n > 0 && (size_t)n < sizeof msg)
            n += snprintf(msg + n, sizeof msg - (size_t)n, ", %u later segment%s removed",
                          rv.removed, rv.removed == 1 ? "" : "s");
        if (rv.rewritten && n > 0 && (size_t)n < sizeof msg)
            snprintf(msg + n, sizeof msg - (size_t)n, ", %" PRIu64 " bytes acknowledged since the "
                     "last good sync written again and synced", rv.rewritten);
    } else
        snprintf(msg, sizeof msg, "%s", log_error(&l->base));
    pthread_mutex_lock(&l->mu);
    bool tell = true;
    if (st == STORE_OK)
        adopt(l, &a, &rv);
    else if (st == STORE_CORRUPT) {
        l->broken = true;
        snprintf(l->why, sizeof l->why, "%.511s", msg);
    } else {
        tell = strcmp(l->retry_why, msg) != 0;    /* the same cause again: said once */
        snprintf(l->retry_why, sizeof l->retry_why, "%.511s", msg);
        l->retry_ns = l->retry_ns * 2 > RETRY_MAX_NS ? RETRY_MAX_NS : l->retry_ns * 2;
        l->retry_at = mono_ns() + l->retry_ns;
    }
    l->writing = false;
    pthread_cond_broadcast(&l->cv);        /* readers, close, retention */
    pthread_mutex_unlock(&l->mu);
    pthread_mutex_unlock(&l->sync_mu);
    if (tell)
        say(l, "%s%s", st == STORE_OK || st == STORE_CORRUPT ? "" : "recovery failed, tried again "
            "later: ", msg);
    pthread_mutex_lock(&l->mu);
}

/* Makes room for n more bytes in the pending buffer. */
static bool pend_reserve(log_t *l, size_t n)
{
    if (l->plen + n <= l->pcap)
        return true;
    size_t cap = l->pcap ? l->pcap : 1 << 16;
    while (cap < l->plen + n)
        cap *= 2;
    unsigned char *v = realloc(l->pend, cap);
    if (!v)
        return false;
    l->pend = v;
    l->pcap = cap;
    return true;
}

static store_status log_append(store *s, const store_entry *e, size_t n, uint64_t *offsets,
                               bool *dup)
{
    (void)dup;                    /* (the log keeps every record: ebd's dedup.c does the rest) */
    log_t *l = (log_t *)s;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i].len > l->o.max_record)
            return fail(l, STORE_EINVAL, "a record of %u bytes is over the limit of %u bytes",
                        e[i].len, l->o.max_record);
        total += REC_HDR + e[i].len;
    }
    if (l->o.read_only)
        return fail(l, STORE_EINVAL, "%s: opened read-only", l->dir);
    pthread_mutex_lock(&l->mu);
    if (l->failed && !l->closing)
        try_recover(l, false);
    if (l->closing || l->failed) {
        store_status st = l->closing ? STORE_CLOSED : STORE_EIO;
        if (l->failed)
            fail(l, st, "%s; %s", l->why, l->broken ? "the log takes no appends until reopened"
                 : "the log takes no appends until it recovers (it tries again by itself)");
        pthread_mutex_unlock(&l->mu);
        return st;
    }
    if (n == 0) {
        pthread_mutex_unlock(&l->mu);
        return STORE_OK;
    }
    if (!pend_reserve(l, total)) {
        pthread_mutex_unlock(&l->mu);
        return fail(l, STORE_EIO, "out of memory");
    }
    int64_t now = realtime_ns();
    if (now < l->last_time)
        now = l->last_time;     /* times never decrease along the offsets */
    l->last_time = now;
    uint64_t off = l->next;
    for (size_t i = 0; i < n; i++, off++) {
        if (offsets)
            offsets[i] = off;
        unsigned char *h = l->pend + l->plen;
        put32(h + 4, e[i].len);
        put64(h + 8, off);
        put64(h + 16, (uint64_t)now);
        put32(h + 24, e[i].flags);
        memcpy(h + 28, rec_mark, 4);
        if (e[i].len)
            memcpy(h + REC_HDR, e[i].data, e[i].len);
        l->plen += REC_HDR + e[i].len;
    }
    l->next = off;
    uint64_t mine = l->batch;
    l->inflight++;
    while (l->acked < off) {
        if (l->failed)
            break;
        if (!l->writing)
            lead(l);
        else
            pthread_cond_wait(&l->batch_cv[mine & 1], &l->mu);
    }
    store_status st = l->acked >= off ? STORE_OK : STORE_EIO;
    if (--l->inflight == 0 && l->closing)
        pthread_cond_broadcast(&l->cv);      /* close waits for the last one to leave */
    pthread_mutex_unlock(&l->mu);
    return st;
}

static void log_bounds(store *s, uint64_t *first, uint64_t *next)
{
    log_t *l = (log_t *)s;
    pthread_mutex_lock(&l->mu);
    *first = l->first;
    *next = l->acked;
    pthread_mutex_unlock(&l->mu);
}

/* ---- The flusher: interval syncs and retention ------------------------------------------- */

static void sync_now(log_t *l)
{
    pthread_mutex_lock(&l->sync_mu);
    pthread_mutex_lock(&l->mu);
    uint64_t target = l->written;
    log_mark at = l->acked_at;       /* written is acknowledged under interval */
    int fd = l->fd;
    bool due = target > l->durable && !l->failed;
    pthread_mutex_unlock(&l->mu);
    if (due) {
        int rc = seg_sync(l, fd);
        char msg[512];
        snprintf(msg, sizeof msg, "%s: fdatasync: %s", l->dir, rc ? strerror(errno) : "");
        pthread_mutex_lock(&l->mu);
        l->fsyncs++;
        if (rc == 0) {
            if (target > l->durable) {
                l->durable = target;
                l->synced_at = at;
            }
        } else {
            /* After a failed fsync the kernel may have marked the pages clean without writing
             * them: what was written since the last good sync is not known to be on disk, so
             * the log stops until recovery has written it again and synced. */
            fail(l, STORE_EIO, "%s", msg);
            set_failed(l, msg, 0);
        }
        pthread_mutex_unlock(&l->mu);
        if (rc != 0)
            say(l, "%s", msg);
    }
    pthread_mutex_unlock(&l->sync_mu);
}

static void *flusher_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ebd-log-sync");   /* (top -H, ps -L) */
    log_t *l = arg;
    uint64_t step = l->o.fsync == STORE_FSYNC_INTERVAL ? l->o.fsync_interval_ns : 1000000000ull;
    if (step > 1000000000ull)
        step = 1000000000ull;
    struct timespec last_retain;
    clock_gettime(CLOCK_MONOTONIC, &last_retain);
    pthread_mutex_lock(&l->mu);
    while (!l->closing) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        uint64_t ns = (uint64_t)t.tv_nsec + step;
        t.tv_sec += (time_t)(ns / 1000000000ull);
        t.tv_nsec = (long)(ns % 1000000000ull);
        pthread_cond_timedwait(&l->flush_cv, &l->mu, &t);
        if (l->closing)
            break;
        try_recover(l, false);      /* a failed log recovers with no append to prompt it */
        pthread_mutex_unlock(&l->mu);
        if (l->o.fsync == STORE_FSYNC_INTERVAL)
            sync_now(l);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((l->o.retention_ns || l->o.retention_bytes) && t.tv_sec > last_retain.tv_sec) {
            last_retain = t;
            unsigned deleted;
            store_retain(&l->base, realtime_ns(), &deleted);
        }
        pthread_mutex_lock(&l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* ---- Retention ----------------------------------------------------------------------------- */

static store_status log_retain(store *s, int64_t now, unsigned *deleted)
{
    log_t *l = (log_t *)s;
    *deleted = 0;
    if (l->o.read_only)
        return STORE_OK;
    pthread_mutex_lock(&l->mu);
    while (l->writing)
        pthread_cond_wait(&l->cv, &l->mu);
    if (l->closing || l->failed) {
        pthread_mutex_unlock(&l->mu);
        return l->closing ? STORE_CLOSED : STORE_EIO;
    }
    l->writing = true;     /* retention takes the leader's place: no write runs meanwhile */
    int64_t cutoff = l->o.retention_ns ? now - (int64_t)l->o.retention_ns : INT64_MIN;
    segment *a = l->segs[l->nsegs - 1];
    store_status st = STORE_OK;
    char msg[512] = "";
    if (a->next > a->base && a->last_time < cutoff && l->plen == 0) {
        /* Every record of the last segment has expired: seal it so that it can go. */
        pthread_mutex_unlock(&l->mu);
        st = roll(l);
        if (st != STORE_OK)
            snprintf(msg, sizeof msg, "%s", log_error(&l->base));
        pthread_mutex_lock(&l->mu);
        if (st == STORE_OK)
            l->acked_at = l->synced_at = mark_of(l);   /* the new, empty segment */
    }
    if (st != STORE_OK)
        set_failed(l, msg, 0);  /* as after a failed write */
    /* Take the expired segments out of the list here; delete their files and report them
     * once l->mu is released (readers only find segments through the list). */
    uint64_t total = 0;
    for (size_t i = 0; i < l->nsegs; i++)
        total += l->segs[i]->bytes;
    size_t ngone = 0;
    while (st == STORE_OK && ngone + 1 < l->nsegs) {
        segment *g = l->segs[ngone];
        bool old = g->next > g->base && g->last_time < cutoff;
        bool big = l->o.retention_bytes && total > l->o.retention_bytes;
        if (!old && !big)
            break;
        total -= g->bytes;
        ngone++;
    }
    segment **gone = NULL;
    if (ngone && (gone = malloc(ngone * sizeof *gone))) {
        memcpy(gone, l->segs, ngone * sizeof *gone);
        memmove(l->segs, l->segs + ngone, (l->nsegs - ngone) * sizeof *l->segs);
        l->nsegs -= ngone;
        l->first = l->segs[0]->base;
    } else
        ngone = 0;
    l->writing = false;
    if (l->plen)
        pthread_cond_signal(&l->batch_cv[l->batch & 1]);   /* appends waited: one leads */
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    if (st != STORE_OK)
        say(l, "%s", msg);
    for (size_t i = 0; i < ngone; i++) {
        segment *g = gone[i];
        char name[40];
        seg_name(name, sizeof name, g->base);
        say(l, "%s/%s: deleted by retention (%s): offsets %" PRIu64 "..%" PRIu64 ", %" PRIu64
            " bytes", l->dir, name, g->next > g->base && g->last_time < cutoff ? "age" : "size",
            g->base, g->next - 1, g->bytes);
        unlinkat(l->dirfd, name, 0);
        snprintf(name, sizeof name, "%020" PRIu64 ".idx", g->base);
        unlinkat(l->dirfd, name, 0);
        seg_free(g);
    }
    free(gone);
    *deleted = (unsigned)ngone;
    return st;
}

/* ---- Cursors ------------------------------------------------------------------------------- */

/* The index of the segment holding offset (the last whose base is at most offset). */
static size_t find_segment(const log_t *l, uint64_t offset)
{
    size_t lo = 0, hi = l->nsegs;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (l->segs[mid]->base <= offset)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static bool cursor_open_segment(log_cursor *c, const segment *g)
{
    if (c->fd >= 0 && c->seg_base == g->base)
        return true;
    if (c->fd >= 0)
        close(c->fd);
    char name[40];
    seg_name(name, sizeof name, g->base);
    c->fd = openat(c->l->dirfd, name, O_RDONLY | O_CLOEXEC);
    c->seg_base = g->base;
    c->buf_len = 0;
    if (c->fd < 0)
        snprintf(c->err, sizeof c->err, "%s/%s: cannot open: %s", c->l->dir, name, strerror(errno));
    return c->fd >= 0;
}

/* Positions c at offset: in its segment, at the last index entry at or before it (records
 * before offset are passed over as they are read).  Under l->mu. */
static void position(log_cursor *c, uint64_t offset, int64_t min_time)
{
    log_t *l = c->l;
    c->skip_below = offset;
    c->min_time = min_time;
    c->bad_pos = UINT64_MAX;
    c->gap_to = 0;
    if (offset < l->first) {
        c->next = offset;
        if (c->fd >= 0)
            close(c->fd);
        c->fd = -1;
        return;
    }
    const segment *g = l->segs[find_segment(l, offset)];
    size_t lo = 0, hi = g->nidx;    /* the first entry past offset */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g->base + g->idx[mid].rel <= offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0) {
        c->next = g->base;
        c->pos = SEG_HDR;
    } else {
        c->next = g->base + g->idx[lo - 1].rel;
        c->pos = g->idx[lo - 1].pos;
    }
    if (!cursor_open_segment(c, g))
        c->fd = -1;
    c->limit = 0;    /* look at the log again before reading */
}

static log_cursor *cursor_new(log_t *l)
{
    log_cursor *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->base.s = &l->base;
    c->l = l;
    c->fd = -1;
    c->cap = 1 << 20;
    c->buf = malloc(c->cap);
    if (!c->buf) {
        free(c);
        return NULL;
    }
    c->min_time = INT64_MIN;
    c->bad_pos = UINT64_MAX;
    return c;
}

/* Where reading from time t starts.  Times never decrease along the offsets, so it is found from
 * the first segment whose newest record is that recent, through its index entries' times (the
 * cursor passes over what is older).  Under l->mu. */
static uint64_t offset_at(const log_t *l, int64_t t)
{
    size_t i = 0;
    while (i < l->nsegs && (l->segs[i]->next == l->segs[i]->base || l->segs[i]->last_time < t))
        i++;
    uint64_t from = l->acked;
    if (i < l->nsegs) {
        const segment *g = l->segs[i];
        from = g->base;
        for (size_t k = 0; k < g->nidx && g->idx[k].time < t; k++)
            from = g->base + g->idx[k].rel;
        if (from < l->first)
            from = l->first;
    }
    return from;
}

/* A cursor at offset, or (by_time) at the first record appended at or after t. */
static store_status open_cursor(log_t *l, uint64_t offset, bool by_time, int64_t t,
                                store_cursor **out)
{
    log_cursor *c = cursor_new(l);
    if (!c)
        return fail(l, STORE_EIO, "out of memory");
    pthread_mutex_lock(&l->mu);
    c->epoch = l->epoch;
    c->wakes = l->wakes;
    position(c, by_time ? offset_at(l, t) : offset, by_time ? t : INT64_MIN);
    pthread_mutex_unlock(&l->mu);
    *out = &c->base;
    return STORE_OK;
}

static store_status log_cursor_open(store *s, uint64_t offset, store_cursor **out)
{
    return open_cursor((log_t *)s, offset, false, 0, out);
}

static store_status log_cursor_open_at(store *s, int64_t t, store_cursor **out)
{
    return open_cursor((log_t *)s, 0, true, t, out);
}

static store_status log_cursor_seek(store_cursor *cc, uint64_t offset)
{
    log_cursor *c = (log_cursor *)cc;
    pthread_mutex_lock(&c->l->mu);
    position(c, offset, INT64_MIN);
    pthread_mutex_unlock(&c->l->mu);
    return STORE_OK;
}

static store_status cfail(log_cursor *c, store_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static store_status cfail(log_cursor *c, store_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return st;
}

/* Makes file bytes [pos, pos + need) of the current segment available in c->buf, reading ahead
 * up to c->limit; returns a pointer to them or NULL (an I/O error; message in c->err). */
static const unsigned char *cursor_bytes(log_cursor *c, uint64_t pos, size_t need)
{
    if (pos >= c->buf_pos && pos + need <= c->buf_pos + c->buf_len)
        return c->buf + (pos - c->buf_pos);
    if (need > c->cap) {
        size_t cap = c->cap;
        while (cap < need)
            cap *= 2;
        unsigned char *v = realloc(c->buf, cap);
        if (!v) {
            cfail(c, STORE_EIO, "out of memory");
            return NULL;
        }
        c->buf = v;
        c->cap = cap;
    }
    size_t want = c->limit - pos < c->cap ? (size_t)(c->limit - pos) : c->cap;
    if (want < need)
        want = need;
    size_t got = 0;
    while (got < want) {
        ssize_t r = pread(c->fd, c->buf + got, want - got, (off_t)(pos + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    c->buf_pos = pos;
    c->buf_len = got;
    if (got < need) {
        cfail(c, STORE_EIO, "%s/%020" PRIu64 ".seg: cannot read at position %" PRIu64 ": %s",
              c->l->dir, c->seg_base, pos, got ? "the file is shorter than recorded" : strerror(errno));
        return NULL;
    }
    return c->buf;
}

/* Looks at the log under l->mu: where the cursor's segment ends, what is acknowledged, and
 * whether retention has passed the cursor by; moves to the next segment when the current one is
 * read to its end.  Waits up to the deadline for a record.  STORE_OK when one can be read. */
static store_status refresh(log_cursor *c, const struct timespec *deadline, bool wait)
{
    log_t *l = c->l;
    pthread_mutex_lock(&l->mu);
    store_status st = STORE_OK;
    for (;;) {
        if (c->epoch != l->epoch) {
            /* A recovery truncated records that were never acknowledged, and new ones may
             * stand in their place: bytes read ahead past the acknowledged ones are stale, and
             * so is a position found among them (a cursor waiting at or past the end). */
            c->epoch = l->epoch;
            c->buf_len = 0;
            if (c->next >= l->acked) {
                if (c->fd >= 0)
                    close(c->fd);
                c->fd = -1;
                position(c, c->next > c->skip_below ? c->next : c->skip_below, c->min_time);
            }
        }
        if (l->closing) {
            st = cfail(c, STORE_CLOSED, "%s: the log is closing", l->dir);
            break;
        }
        if (c->next < l->first) {
            st = cfail(c, STORE_BEHIND, "%s: offset %" PRIu64 " was deleted by retention; the "
                       "log now starts at offset %" PRIu64, l->dir, c->next, (uint64_t)l->first);
            break;
        }
        if (c->next >= l->acked) {
            if (!wait || c->wakes != l->wakes) {
                c->wakes = l->wakes;      /* (a store_wake since its last call: it returns) */
                st = STORE_TIMEOUT;
                break;
            }
            if (deadline ? pthread_cond_timedwait(&l->cv, &l->mu, deadline) != 0
                         : pthread_cond_wait(&l->cv, &l->mu) != 0) {
                st = c->next < l->acked ? STORE_OK : STORE_TIMEOUT;
                if (st == STORE_TIMEOUT)
                    break;
            }
            continue;
        }
        size_t i = find_segment(l, c->next);
        const segment *g = l->segs[i];
        if (c->fd < 0 || c->seg_base != g->base) {
            /* The cursor moves into g: past the end of the one before, or never opened. */
            c->pos = SEG_HDR;
            if (!cursor_open_segment(c, g)) {
                st = STORE_EIO;
                break;
            }
        }
        c->limit = g->bytes;
        c->sealed = g->sealed || i + 1 < l->nsegs;
        c->acked = l->acked;
        if (c->pos < c->limit)
            break;
        /* The segment is read to its end. */
        if (c->next < g->next || !c->sealed) {
            c->gap_to = 0;
            c->bad_pos = c->pos;
            st = cfail(c, STORE_CORRUPT, "%s/%020" PRIu64 ".seg: position %" PRIu64
                       ": the segment ends where offset %" PRIu64 " should be",
                       l->dir, g->base, c->pos, c->next);
            break;
        }
        uint64_t to = l->segs[i + 1]->base;     /* sealed: a later segment exists */
        c->bad_pos = UINT64_MAX;
        c->gap_to = to;
        st = cfail(c, STORE_CORRUPT, "%s: offsets %" PRIu64 "..%" PRIu64 " are missing (segment "
                   "%020" PRIu64 " ends before them)", l->dir, c->next, to - 1, g->base);
        break;
    }
    pthread_mutex_unlock(&l->mu);
    return st;
}

static store_status log_cursor_next(store_cursor *cc, store_record *r, int timeout_ms)
{
    log_cursor *c = (log_cursor *)cc;
    struct timespec deadline, *dl = NULL;
    for (;;) {
        /* Without the lock while the last look says there is more: one lock per batch of
         * records, not per record.  Retention is checked every record all the same. */
        if (c->next < atomic_load(&c->l->first) || c->fd < 0 || c->next >= c->acked ||
            c->pos >= c->limit) {
            if (timeout_ms > 0 && !dl) {
                /* (only when it may wait: reading the clock for every record was ~3.5% of the
                 * router's time, perf on bench_ingest --routing-row) */
                clock_gettime(CLOCK_MONOTONIC, &deadline);
                uint64_t ns = (uint64_t)deadline.tv_nsec + (uint64_t)timeout_ms * 1000000ull;
                deadline.tv_sec += (time_t)(ns / 1000000000ull);
                deadline.tv_nsec = (long)(ns % 1000000000ull);
                dl = &deadline;
            }
            store_status st = refresh(c, dl, timeout_ms != 0);
            if (st != STORE_OK)
                return st;
            if (c->pos >= c->limit || c->next >= c->acked)
                continue;
        }
        rec_hdr h;
        const char *why = "a record that runs past the end of the segment";
        int rc = REC_BAD;
        const unsigned char *p = NULL;
        uint32_t len = 0;
        if (c->pos + REC_HDR <= c->limit) {
            p = cursor_bytes(c, c->pos, REC_HDR);
            if (!p)
                return STORE_EIO;
            len = get32(p + 4);
        }
        if (p && len <= REC_LIMIT && c->pos + REC_HDR + len <= c->limit) {
            p = cursor_bytes(c, c->pos, REC_HDR + len);
            if (!p)
                return STORE_EIO;
            rc = rec_check(p, REC_HDR + len, &h, &why);
        }
        if (rc == REC_OK && h.offset != c->next)
            why = "an offset out of sequence", rc = REC_BAD;
        if (rc != REC_OK) {
            c->bad_pos = c->pos;
            c->gap_to = 0;
            return cfail(c, STORE_CORRUPT, "%s/%020" PRIu64 ".seg: position %" PRIu64
                         ": corrupt record where offset %" PRIu64 " should be (%s)",
                         c->l->dir, c->seg_base, c->pos, c->next, why);
        }
        c->pos += REC_HDR + h.len;
        c->next++;
        if (h.offset < c->skip_below || h.time < c->min_time)
            continue;
        c->min_time = INT64_MIN;
        r->offset = h.offset;
        r->time_ns = h.time;
        r->flags = h.flags;
        r->len = h.len;
        r->data = p + REC_HDR;
        return STORE_OK;
    }
}

/* Goes past the corrupt record (or the missing offsets) last reported: to the next good record
 * in the segment, found by its marker and checks, or to the next segment. */
static store_status log_cursor_skip(store_cursor *cc, uint64_t *lost)
{
    log_cursor *c = (log_cursor *)cc;
    log_t *l = c->l;
    *lost = 0;
    if (c->gap_to) {
        *lost = c->gap_to - c->next;
        uint64_t to = c->gap_to;
        pthread_mutex_lock(&l->mu);
        position(c, to, c->min_time);
        pthread_mutex_unlock(&l->mu);
        return STORE_OK;
    }
    if (c->bad_pos == UINT64_MAX || c->fd < 0)
        return cfail(c, STORE_EINVAL, "no corrupt record to skip");
    uint64_t size = c->limit;
    const unsigned char *m = map_file(c->fd, size);
    if (!m)
        return cfail(c, STORE_EIO, "%s/%020" PRIu64 ".seg: cannot map: %s", l->dir, c->seg_base,
                     strerror(errno));
    rec_hdr h;
    uint64_t q = resync(m, size, c->bad_pos + 1, c->next, &h);
    unmap_file(m, size);
    uint64_t to;
    if (q != UINT64_MAX) {
        *lost = h.offset - c->next;
        c->next = h.offset;
        c->pos = q;
        c->bad_pos = UINT64_MAX;
        c->buf_len = 0;
        return STORE_OK;
    }
    pthread_mutex_lock(&l->mu);
    size_t i = find_segment(l, c->next);
    bool later = i + 1 < l->nsegs;
    to = later ? l->segs[i + 1]->base : 0;
    if (later) {
        *lost = to - c->next;
        position(c, to, c->min_time);
    }
    pthread_mutex_unlock(&l->mu);
    if (!later)
        return cfail(c, STORE_CORRUPT, "%s/%020" PRIu64 ".seg: no good record after position %"
                     PRIu64 " yet", l->dir, c->seg_base, c->bad_pos);
    return STORE_OK;
}

static uint64_t log_cursor_offset(const store_cursor *cc)
{
    const log_cursor *c = (const log_cursor *)cc;
    return c->next > c->skip_below ? c->next : c->skip_below;
}

static const char *log_cursor_error(const store_cursor *cc)
{
    return ((const log_cursor *)cc)->err;
}

static void log_cursor_close(store_cursor *cc)
{
    log_cursor *c = (log_cursor *)cc;
    if (c->fd >= 0)
        close(c->fd);
    free(c->buf);
    free(c);
}

/* ---- Named cursors and cursor sets ------------------------------------------------------------
 *
 * In cursors/, named cursor NAME is the file NAME and cursor set SET the file "@SET" ('@' is in no
 * cursor's name, so the two never meet); a commit writes the file as ".FILE.tmp" first (a leading
 * dot: no cursor's name either).
 *
 * named cursor  one line: "ebr-cursor 1 OFFSET CRC\n", or with offsets still pending below the
 *               position "ebr-cursor 2 HIGH N P1 .. PN CRC\n"
 * cursor set    "ebr-cursorset 1 BASE N\n", then N lines "NAME HIGH K P1 .. PK\n" in strcmp
 *               order of the names (each once), then the line "CRC\n"
 * CRC is the crc32c (8 hex digits) of all the text before it; numbers are decimal. */

#define CURSOR_MAX_BYTES (64 + 21 * (STORE_MAX_PENDING + 2))   /* a named cursor's file */
#define SET_MAX_BYTES (1u << 30)     /* far beyond any set: a larger file is not read */

/* False, with errno set, when a test's fault hook fails operation op (log_set_fault). */
static bool faultless(log_t *l, const char *op)
{
    int e = fault(l, op);
    if (e)
        errno = e;
    return e == 0;
}

/* Writes text[0..n) as cursors/FILE atomically and durably: as ".FILE.tmp", in one write, synced,
 * renamed over FILE, and the directory synced; one commit at a time, so that two never share the
 * temporary file.  When a step fails the temporary file is removed: FILE is as it was (unless
 * only the directory's sync failed). */
static store_status cursor_file_write(log_t *l, const char *file, const char *text, size_t n)
{
    if (l->curfd < 0 || l->o.read_only)
        return fail(l, STORE_EINVAL, "%s: opened read-only", l->dir);
    char tmp[VM_MAX_NAME + 8];
    snprintf(tmp, sizeof tmp, ".%s.tmp", file);
    pthread_mutex_lock(&l->commit_mu);
    int fd = openat(l->curfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    bool ok = fd >= 0 && faultless(l, "cursor write") &&
              write_all(fd, (const unsigned char *)text, n, 0) && faultless(l, "cursor sync") &&
              fdatasync(fd) == 0;
    int e = errno;
    if (fd >= 0 && close(fd) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (ok && !(faultless(l, "cursor rename") && renameat(l->curfd, tmp, l->curfd, file) == 0 &&
                fsync(l->curfd) == 0)) {
        ok = false;
        e = errno;
    }
    store_status st = STORE_OK;
    if (!ok) {
        st = fail(l, STORE_EIO, "%s/cursors/%s: cannot write: %s", l->dir, file, strerror(e));
        unlinkat(l->curfd, tmp, 0);
    }
    pthread_mutex_unlock(&l->commit_mu);
    return st;
}

/* Reads file `file` of directory dirfd whole, if it is at most cap bytes, into *text (malloc'd,
 * a NUL after its *n bytes).  Returns 0, or the errno of the failure (EFBIG: larger than cap). */
static int read_whole(int dirfd, const char *file, size_t cap, char **text, size_t *n)
{
    *text = NULL;
    *n = 0;
    int fd = openat(dirfd, file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    struct stat st;
    int e = fstat(fd, &st) == 0 ? 0 : errno;
    if (!e && (uint64_t)st.st_size > cap)
        e = EFBIG;
    size_t size = e ? 0 : (size_t)st.st_size, got = 0;
    char *b = e ? NULL : malloc(size + 1);
    if (!e && !b)
        e = ENOMEM;
    while (!e && got < size) {
        ssize_t r = pread(fd, b + got, size - got, (off_t)got);
        if (r < 0 && errno != EINTR)
            e = errno;
        else if (r == 0)
            break;          /* cut short meanwhile: what there is will be judged */
        else if (r > 0)
            got += (size_t)r;
    }
    close(fd);
    if (e) {
        free(b);
        return e;
    }
    b[got] = 0;
    *text = b;
    *n = got;
    return 0;
}

/* Writes v in decimal at p; returns the number of characters. */
static size_t put_dec(char *p, uint64_t v)
{
    char t[20];
    size_t k = 0;
    do
        t[k++] = (char)('0' + v % 10);
    while (v /= 10);
    for (size_t i = 0; i < k; i++)
        p[i] = t[k - 1 - i];
    return k;
}

/* Reads a decimal number at *p (digits, no leading zero but in 0 itself, no overflow) and the
 * character sep after it, and moves *p past them; false when they are not there. */
static bool get_dec(const char **p, uint64_t *v, char sep)
{
    const char *q = *p;
    if (*q < '0' || *q > '9' || (q[0] == '0' && q[1] >= '0' && q[1] <= '9'))
        return false;
    uint64_t x = 0;
    for (; *q >= '0' && *q <= '9'; q++) {
        if (x > (UINT64_MAX - (uint64_t)(*q - '0')) / 10)
            return false;
        x = x * 10 + (uint64_t)(*q - '0');
    }
    if (*q != sep)
        return false;
    *v = x;
    *p = q + 1;
    return true;
}

/* Puts pending offsets p[0..n) in increasing order, each once, in out (room for n), as cursor
 * files hold them (their reader insists on it); returns how many there are. */
static size_t sort_pending(const uint64_t *p, size_t n, uint64_t *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t j = k;
        while (j > 0 && out[j - 1] > p[i])
            j--;
        if (j > 0 && out[j - 1] == p[i])
            continue;
        memmove(out + j + 1, out + j, (k - j) * sizeof *out);
        out[j] = p[i];
        k++;
    }
    return k;
}

static store_status log_commit(store *s, const char *name, uint64_t high, const uint64_t *pending,
                               size_t npending)
{
    log_t *l = (log_t *)s;
    char *text = malloc(64 + 21 * (npending + 2));
    uint64_t *sorted = malloc((npending ? npending : 1) * sizeof *sorted);
    if (!text || !sorted) {
        free(text);
        free(sorted);
        return fail(l, STORE_EIO, "out of memory");
    }
    npending = sort_pending(pending, npending, sorted);
    pending = sorted;
    int n = npending ? sprintf(text, "ebr-cursor 2 %" PRIu64 " %zu", high, npending)
                     : sprintf(text, "ebr-cursor 1 %" PRIu64, high);
    for (size_t i = 0; i < npending; i++)
        n += sprintf(text + n, " %" PRIu64, pending[i]);
    n += sprintf(text + n, " %08x\n", vm_crc32c(0, text, (size_t)n));
    store_status st = cursor_file_write(l, name, text, (size_t)n);
    free(text);
    free(sorted);
    return st;
}

/* Parses named cursor file text[0..n) (a NUL after it) into *high and pending[0..*npending)
 * (room for STORE_MAX_PENDING).  Strictly: the whole file one line, digits only, no overflow,
 * pending offsets increasing and below the position, the checksum over all of it; false when it
 * is not so. */
static bool parse_cursor(const char *text, size_t n, uint64_t *high, uint64_t *pending,
                         size_t *npending)
{
    const char *sp = strrchr(text, ' ');
    bool ok = n > 0 && n == strlen(text) && sp && text[n - 1] == '\n' &&
              !strncmp(text, "ebr-cursor ", 11) && strlen(sp + 1) == 9;
    uint64_t nums[STORE_MAX_PENDING + 3];
    size_t nn = 0;
    const char *p = text + 11;
    while (ok && p < sp) {
        if (*p < '0' || *p > '9' || nn == STORE_MAX_PENDING + 3) {
            ok = false;
            break;
        }
        uint64_t v = 0;
        for (; *p >= '0' && *p <= '9'; p++) {
            if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
                ok = false;
            v = v * 10 + (uint64_t)(*p - '0');
        }
        nums[nn++] = v;
        if (p < sp && *p++ != ' ')
            ok = false;
    }
    if (ok) {
        char *end;
        unsigned long crc = strtoul(sp + 1, &end, 16);
        ok = *end == '\n' && vm_crc32c(0, text, (size_t)(sp - text)) == (uint32_t)crc;
    }
    size_t count = 0;
    if (ok && nn == 2 && nums[0] == 1) {
        *high = nums[1];
    } else if (ok && nn >= 3 && nums[0] == 2 && nums[2] == nn - 3 && nums[2] <= STORE_MAX_PENDING) {
        *high = nums[1];
        count = nn - 3;
        for (size_t i = 0; i < count; i++) {
            pending[i] = nums[3 + i];
            ok = ok && pending[i] < *high && (i == 0 || pending[i] > pending[i - 1]);
        }
    } else
        ok = false;
    *npending = ok ? count : 0;
    return ok;
}

static store_status log_committed(store *s, const char *name, uint64_t *high, uint64_t *pending,
                                  size_t *npending)
{
    log_t *l = (log_t *)s;
    if (l->curfd < 0)
        return fail(l, STORE_NOTFOUND, "%s/cursors/%s: no such cursor", l->dir, name);
    char *text;
    size_t n;
    int e = read_whole(l->curfd, name, CURSOR_MAX_BYTES, &text, &n);
    if (e && e != EFBIG)
        return fail(l, e == ENOENT ? STORE_NOTFOUND : STORE_EIO, "%s/cursors/%s: %s", l->dir,
                    name, strerror(e));
    bool ok = !e && parse_cursor(text, n, high, pending, npending);
    free(text);
    if (!ok)
        return fail(l, STORE_CORRUPT, "%s/cursors/%s: not a cursor file, or its checksum does not "
                    "match", l->dir, name);
    return STORE_OK;
}

static store_status log_commit_set(store *s, const char *set, uint64_t base,
                                   const store_pos *const *e, size_t n)
{
    log_t *l = (log_t *)s;
    size_t cap = 64 + 10;
    for (size_t i = 0; i < n; i++)
        cap += strlen(e[i]->name) + 3 * 21 + 21 * e[i]->npending;
    char *text = malloc(cap);
    if (!text)
        return fail(l, STORE_EIO, "out of memory");
    size_t k = (size_t)sprintf(text, "ebr-cursorset 1 %" PRIu64 " %zu\n", base, n);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(e[i]->name);
        memcpy(text + k, e[i]->name, len);
        k += len;
        text[k++] = ' ';
        k += put_dec(text + k, e[i]->high);
        text[k++] = ' ';
        uint64_t sorted[STORE_MAX_PENDING];
        size_t np = sort_pending(e[i]->pending, e[i]->npending, sorted);
        k += put_dec(text + k, np);
        for (size_t j = 0; j < np; j++) {
            text[k++] = ' ';
            k += put_dec(text + k, sorted[j]);
        }
        text[k++] = '\n';
    }
    k += (size_t)sprintf(text + k, "%08x\n", vm_crc32c(0, text, k));
    char file[VM_MAX_NAME + 2];
    snprintf(file, sizeof file, "@%s", set);
    store_status st = cursor_file_write(l, file, text, k);
    free(text);
    return st;
}

/* Parses the entry line at *p into x (prev: the name of the entry before it, or NULL) and moves
 * *p past it; NULL, or what is wrong (x then holds what to free). */
static const char *parse_pos(const char **p, store_pos *x, const char *prev)
{
    const char *q = *p, *sp = q;
    while (*sp && *sp != ' ' && *sp != '\n')
        sp++;
    size_t len = (size_t)(sp - q);
    if (*sp != ' ' || len == 0 || len > VM_MAX_NAME)
        return "a bad name";
    if (!(x->name = malloc(len + 1)))
        return "out of memory";
    memcpy(x->name, q, len);
    x->name[len] = 0;
    if (!store_cursor_name_ok(x->name))
        return "a bad name";
    if (prev && strcmp(prev, x->name) >= 0)
        return "names out of order or repeated";
    q = sp + 1;
    uint64_t k;
    if (!get_dec(&q, &x->high, ' '))
        return "a bad position";
    /* "HIGH 0\n", or "HIGH K P1 .. PK\n" */
    if (get_dec(&q, &k, '\n') ? k != 0 : !get_dec(&q, &k, ' ') || k == 0)
        return "a bad count of pending offsets";
    if (k > STORE_MAX_PENDING)
        return "more pending offsets than a cursor keeps";
    if (k && !(x->pending = malloc((size_t)k * sizeof *x->pending)))
        return "out of memory";
    for (size_t j = 0; j < k; j++) {
        if (!get_dec(&q, &x->pending[j], j + 1 < k ? ' ' : '\n'))
            return "a bad pending offset, or not as many as the count says";
        if (x->pending[j] >= x->high || (j > 0 && x->pending[j] <= x->pending[j - 1]))
            return "pending offsets not strictly increasing below the position";
        x->npending = j + 1;
    }
    *p = q;
    return NULL;
}

/* Parses cursor set file text[0..n) (a NUL after it; the text is changed) into *base and the
 * entries *e[0..*ne) (malloc'd).  Strictly: the checksum over everything before its line, no
 * NUL byte, the header's version and count, each entry as parse_pos wants it, nothing after the
 * last entry but the checksum.  False when it is not so, with the reason in why. */
static bool parse_set(char *text, size_t n, uint64_t *base, store_pos **e, size_t *ne,
                      char *why, size_t whycap)
{
    *e = NULL;
    *ne = 0;
    const char *crc_at = n >= 10 ? text + n - 9 : NULL;
    uint32_t crc = 0;
    for (int i = 0; crc_at && i < 8; i++) {
        char c = crc_at[i];
        if ((c < '0' || c > '9') && (c < 'a' || c > 'f'))
            crc_at = NULL;
        else
            crc = crc << 4 | (uint32_t)(c <= '9' ? c - '0' : c - 'a' + 10);
    }
    if (!crc_at || crc_at[-1] != '\n' || text[n - 1] != '\n') {
        snprintf(why, whycap, "its last line is not a checksum (a torn file?)");
        return false;
    }
    size_t body = (size_t)(crc_at - text);
    if (vm_crc32c(0, text, body) != crc) {
        snprintf(why, whycap, "its checksum does not match");
        return false;
    }
    if (memchr(text, 0, n)) {
        snprintf(why, whycap, "it holds a NUL byte");
        return false;
    }
    text[body] = 0;     /* every read below stops before the checksum's line */
    const char *p = text;
    uint64_t version, count;
    if (strncmp(p, "ebr-cursorset ", 14) != 0 || (p += 14, !get_dec(&p, &version, ' '))) {
        snprintf(why, whycap, "not a cursor set file (line 1)");
        return false;
    }
    if (version != 1) {
        snprintf(why, whycap, "format version %" PRIu64 " is not supported (this build reads 1)",
                 version);
        return false;
    }
    /* (an entry's line takes at least 6 bytes: a larger count is damage) */
    if (!get_dec(&p, base, ' ') || !get_dec(&p, &count, '\n') || count > body / 6) {
        snprintf(why, whycap, "line 1: a bad base or count");
        return false;
    }
    store_pos *v = count ? calloc((size_t)count, sizeof *v) : NULL;
    if (count && !v) {
        snprintf(why, whycap, "out of memory");
        return false;
    }
    const char *bad = NULL;
    size_t i = 0;
    for (; i < count && !bad; i++)
        bad = parse_pos(&p, &v[i], i ? v[i - 1].name : NULL);
    if (!bad && *p) {
        bad = "more lines than the count says";
        i++;
    }
    if (bad) {
        snprintf(why, whycap, "line %zu: %s", i + 1, bad);
        store_set_free(v, (size_t)count);
        return false;
    }
    *e = v;
    *ne = (size_t)count;
    return true;
}

static store_status log_committed_set(store *s, const char *set, uint64_t *base, store_pos **e,
                                      size_t *n)
{
    log_t *l = (log_t *)s;
    char file[VM_MAX_NAME + 2], *text, why[200];
    snprintf(file, sizeof file, "@%s", set);
    if (l->curfd < 0)
        return fail(l, STORE_NOTFOUND, "%s/cursors/%s: no such cursor set", l->dir, file);
    size_t len;
    int err = read_whole(l->curfd, file, SET_MAX_BYTES, &text, &len);
    if (err == EFBIG)
        return fail(l, STORE_CORRUPT, "%s/cursors/%s: a damaged cursor set: larger than %u bytes",
                    l->dir, file, SET_MAX_BYTES);
    if (err)
        return fail(l, err == ENOENT ? STORE_NOTFOUND : STORE_EIO, "%s/cursors/%s: %s", l->dir,
                    file, strerror(err));
    bool ok = parse_set(text, len, base, e, n, why, sizeof why);
    free(text);
    if (!ok)
        return fail(l, STORE_CORRUPT, "%s/cursors/%s: a damaged cursor set: %s", l->dir, file, why);
    return STORE_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names of the entries of directory dirfd but "." and "..", sorted (strcmp), in *out
 * (malloc'd, as each name).  False with errno set when it cannot be read. */
static bool list_dir(int dirfd, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        errno = e;
        return false;
    }
    char **v = NULL;
    size_t k = 0, cap = 0;
    bool ok = true;
    struct dirent *de;
    while (ok && (errno = 0, de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (k == cap) {
            char **w = realloc(v, (cap = cap ? 2 * cap : 16) * sizeof *v);
            ok = w != NULL;
            v = w ? w : v;
        }
        if (ok && !(v[k] = strdup(de->d_name)))
            ok = false;
        k += ok;
    }
    int e = ok ? errno : ENOMEM;    /* (readdir's, when it ended the loop on an error) */
    closedir(d);
    if (!ok || e) {
        while (k)
            free(v[--k]);
        free(v);
        errno = e;
        return false;
    }
    if (k > 1)
        qsort(v, k, sizeof *v, cmp_str);
    *out = v;
    *n = k;
    return true;
}

/* Is file name `file` of cursors/ a named cursor's (set false) or a cursor set's (set true)? */
static bool is_cursor_file(const char *file, bool set)
{
    return (file[0] == '@') == set && store_cursor_name_ok(file + set);
}

static store_status log_names(store *s, bool sets, char ***out, size_t *n)
{
    log_t *l = (log_t *)s;
    *out = NULL;
    *n = 0;
    if (l->curfd < 0)
        return STORE_OK;
    char **v;
    size_t k;
    if (!list_dir(l->curfd, &v, &k))
        return fail(l, STORE_EIO, "%s/cursors: cannot list: %s", l->dir, strerror(errno));
    size_t m = 0;
    for (size_t i = 0; i < k; i++) {
        struct stat st;
        if (is_cursor_file(v[i], sets) && fstatat(l->curfd, v[i], &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISREG(st.st_mode)) {
            if (sets)
                memmove(v[i], v[i] + 1, strlen(v[i]));   /* the set's name: no '@' */
            v[m++] = v[i];
        } else
            free(v[i]);
    }
    *out = v;
    *n = m;
    return STORE_OK;
}

static store_status log_forget(store *s, const char *name)
{
    log_t *l = (log_t *)s;
    if (l->curfd < 0 || l->o.read_only)
        return fail(l, STORE_EINVAL, "%s: opened read-only", l->dir);
    store_status st = STORE_OK;
    pthread_mutex_lock(&l->commit_mu);
    if (unlinkat(l->curfd, name, 0) == 0) {
        if (fsync(l->curfd) != 0)
            st = fail(l, STORE_EIO, "%s/cursors: cannot sync after removing %s: %s", l->dir, name,
                      strerror(errno));
    } else if (errno != ENOENT)
        st = fail(l, STORE_EIO, "%s/cursors/%s: cannot remove: %s", l->dir, name, strerror(errno));
    pthread_mutex_unlock(&l->commit_mu);
    return st;
}

/* ---- Closing, figures ------------------------------------------------------------------- */

/* A copy of the last message, the calling thread's own (another thread may fail meanwhile). */
static const char *log_error(store *s)
{
    log_t *l = (log_t *)s;
    static __thread char copy[512];
    pthread_mutex_lock(&l->err_mu);
    memcpy(copy, l->err, sizeof copy);
    pthread_mutex_unlock(&l->err_mu);
    return copy;
}

static void log_close(store *s)
{
    log_t *l = (log_t *)s;
    pthread_mutex_lock(&l->mu);
    l->closing = true;          /* new appends are refused; those inside finish */
    pthread_cond_broadcast(&l->cv);
    pthread_cond_broadcast(&l->flush_cv);
    while (l->writing || l->inflight)
        pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
    if (l->has_flusher)
        pthread_join(l->flusher, NULL);
    pthread_mutex_lock(&l->mu);
    try_recover(l, true);       /* leave only acknowledged records for the next open */
    pthread_mutex_unlock(&l->mu);
    if (l->fd >= 0 && sync_on(l) && !l->failed && l->written > l->durable)
        fdatasync(l->fd);    /* a clean shutdown leaves everything on disk */
    log_free(l);
}

/* True unless a failed write or sync has the log refusing appends; then its cause in err. */
static bool log_health(store *s, char *err, size_t errcap)
{
    log_t *l = (log_t *)s;
    pthread_mutex_lock(&l->mu);
    bool ok = !l->failed;
    if (!ok)
        snprintf(err, errcap, "%s%s%s", l->why, l->retry_why[0] ? "; recovering failed: " : "",
                 l->retry_why);
    pthread_mutex_unlock(&l->mu);
    return ok;
}

void log_set_fault(store *s, int (*fn)(void *arg, const char *op), void *arg)
{
    log_t *l = (log_t *)s;
    pthread_mutex_lock(&l->mu);
    l->fault = fn;
    l->fault_arg = arg;
    pthread_mutex_unlock(&l->mu);
}

void log_get_stats(store *s, log_stats *st)
{
    log_t *l = (log_t *)s;
    pthread_mutex_lock(&l->mu);
    st->first = l->first;
    st->next = l->acked;
    st->written = l->written;
    st->durable = l->durable;
    st->bytes = 0;
    for (size_t i = 0; i < l->nsegs; i++)
        st->bytes += l->segs[i]->bytes;
    st->segments = (unsigned)l->nsegs;
    st->fsyncs = l->fsyncs;
    st->writes = l->writes;
    st->appending = l->inflight;
    pthread_mutex_unlock(&l->mu);
}

static void log_figures(store *s, store_figures *f)
{
    log_stats st;
    log_get_stats(s, &st);
    f->first = st.first;
    f->next = st.next;
    f->bytes = st.bytes;
    f->segments = st.segments;
}

static void log_wake(store *s)
{
    log_t *l = (log_t *)s;
    pthread_mutex_lock(&l->mu);
    l->wakes++;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static const store_ops log_ops = {
    .name = "log",
    .figures = log_figures,
    .append = log_append,
    .bounds = log_bounds,
    .cursor_open = log_cursor_open,
    .cursor_open_at = log_cursor_open_at,
    .cursor_next = log_cursor_next,
    .cursor_seek = log_cursor_seek,
    .cursor_skip = log_cursor_skip,
    .cursor_offset = log_cursor_offset,
    .cursor_error = log_cursor_error,
    .cursor_close = log_cursor_close,
    .commit = log_commit,
    .committed = log_committed,
    .names = log_names,
    .forget = log_forget,
    .commit_set = log_commit_set,
    .committed_set = log_committed_set,
    .retain = log_retain,
    .health = log_health,
    .wake = log_wake,
    .error = log_error,
    .close = log_close,
};

/* ---- Offline check -------------------------------------------------------------------------- */

typedef struct {
    report_fn fn;
    void *arg;
    long problems;
} check_ctx;

static void count_problem(void *arg, const char *msg)
{
    check_ctx *k = arg;
    k->problems++;
    k->fn(k->arg, msg);
}

/* Opens the log directory dir and lists its segments (their base offsets, in *bases, to free);
 * returns the directory's descriptor, or -1 with a message in err when dir is not a log. */
static int open_segments(const char *dir, uint64_t **bases, size_t *n, char *err, size_t errcap)
{
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        snprintf(err, errcap, "%s: cannot open: %s", dir, strerror(errno));
        return -1;
    }
    if (!list_segments(dirfd, bases, n) || *n == 0) {
        snprintf(err, errcap, "%s: not a bus log (no segment files)", dir);
        free(*bases);
        close(dirfd);
        return -1;
    }
    return dirfd;
}

/* Checks the files of dir/cursors (dirfd: dir's descriptor): reports each damaged named cursor or
 * cursor set as a problem, then a line for them all.  A commit's temporary file (left by a
 * crash) is passed over, another file is mentioned without being counted. */
static void check_cursors(const char *dir, int dirfd, check_ctx *k)
{
    int fd = openat(dirfd, "cursors", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    char **files = NULL;
    size_t nfiles = 0;
    if (fd < 0 || !list_dir(fd, &files, &nfiles)) {
        if (errno != ENOENT)
            reportf(count_problem, k, "%s/cursors: cannot read: %s", dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    long before = k->problems;
    size_t singles = 0, sets = 0, positions = 0;
    for (size_t i = 0; i < nfiles; i++) {
        const char *f = files[i];
        bool set = f[0] == '@';
        if (f[0] == '.')
            continue;
        if (!is_cursor_file(f, set)) {
            reportf(k->fn, k->arg, "%s/cursors/%s: not a cursor's file (passed over)", dir, f);
            continue;
        }
        char *text, why[200];
        size_t n;
        int e = read_whole(fd, f, set ? SET_MAX_BYTES : CURSOR_MAX_BYTES, &text, &n);
        snprintf(why, sizeof why, "%s", e == EFBIG ? "too large" : strerror(e));
        bool ok = !e;
        if (ok && set) {
            uint64_t base;
            store_pos *v;
            size_t nv;
            ok = parse_set(text, n, &base, &v, &nv, why, sizeof why);
            store_set_free(v, nv);
            positions += nv;
        } else if (ok) {
            uint64_t high, pending[STORE_MAX_PENDING];
            size_t np;
            ok = parse_cursor(text, n, &high, pending, &np);
            snprintf(why, sizeof why, "not a cursor file, or its checksum does not match");
        }
        free(text);
        if (!ok)
            reportf(count_problem, k, "%s/cursors/%s: a damaged %s: %s", dir, f,
                    set ? "cursor set" : "named cursor", why);
        else if (set)
            sets++;
        else
            singles++;
    }
    reportf(k->fn, k->arg, "%s/cursors: %zu named cursor%s, %zu cursor set%s (%zu positions)%s",
            dir, singles, singles == 1 ? "" : "s", sets, sets == 1 ? "" : "s", positions,
            k->problems == before ? ": ok" : "");
    for (size_t i = 0; i < nfiles; i++)
        free(files[i]);
    free(files);
    close(fd);
}

long log_check(const char *dir, bool fix, report_fn fn, void *arg, char *err, size_t errcap)
{
    uint64_t *bases;
    size_t n;
    int dirfd = open_segments(dir, &bases, &n, err, errcap);
    if (dirfd < 0)
        return -1;
    if (fix) {
        /* (only a log is repaired: log_open would make a new one of any other directory) */
        close(dirfd);
        free(bases);
        store *s;
        store_options o = { .report = fn, .report_arg = arg };
        if (log_open(dir, &o, &s, err, errcap) != STORE_OK)
            return -1;
        store_close(s);
        if ((dirfd = open_segments(dir, &bases, &n, err, errcap)) < 0)
            return -1;
    }
    check_ctx k = { fn, arg, 0 };
    uint64_t prev_next = bases[0], records = 0, bytes = 0;
    for (size_t i = 0; i < n; i++) {
        char name[40], path[4200];
        seg_name(name, sizeof name, bases[i]);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            reportf(count_problem, &k, "%s: cannot open: %s", path, strerror(errno));
            if (fd >= 0)
                close(fd);
            continue;
        }
        uint64_t size = (uint64_t)st.st_size;
        const unsigned char *m = map_file(fd, size);
        segment g = { 0 };
        scan_result r;
        if (!m || !scan_segment(path, m, size, bases[i], &g, &r, count_problem, &k)) {
            reportf(count_problem, &k, "%s: cannot read: %s", path, strerror(errno));
            if (m)
                unmap_file(m, size);
            close(fd);
            free(g.idx);
            continue;
        }
        unmap_file(m, size);
        close(fd);
        if (r.header_bad)
            reportf(count_problem, &k, "%s: the segment header is damaged or of another version",
                    path);
        if (r.tail_bytes)
            reportf(count_problem, &k, "%s: position %" PRIu64 ": %" PRIu64 " bytes after %s "
                    "hold no whole record (%s)%s", path, g.bytes, r.tail_bytes,
                    g.next > g.base ? "the last record" : "the header", r.tail_why,
                    i + 1 == n ? ": a torn tail (ebc log check --fix truncates it)" : "");
        if (bases[i] > prev_next)
            reportf(count_problem, &k, "%s: offsets %" PRIu64 "..%" PRIu64 " are missing before it",
                    path, prev_next, bases[i] - 1);
        else if (bases[i] < prev_next)
            reportf(count_problem, &k, "%s: its offsets overlap the previous segment's", path);
        if (i + 1 < n) {
            char iname[40];
            snprintf(iname, sizeof iname, "%020" PRIu64 ".idx", bases[i]);
            segment gi = { 0 };
            if (!idx_load(dirfd, iname, bases[i], size, &gi) || gi.next != g.next)
                reportf(count_problem, &k, "%s/%s: missing or stale (rebuilt when the log is "
                        "opened)", dir, iname);
            free(gi.idx);
        }
        char line[4400];
        if (g.next > g.base)
            snprintf(line, sizeof line, "%s: offsets %" PRIu64 "..%" PRIu64 ", %" PRIu64 " bytes%s",
                     path, g.base, g.next - 1, size, r.damaged || r.tail_bytes ? "" : ": ok");
        else
            snprintf(line, sizeof line, "%s: no records, %" PRIu64 " bytes%s", path, size,
                     r.tail_bytes || r.header_bad ? "" : ": ok");
        fn(arg, line);
        records += g.next - g.base;
        bytes += size;
        prev_next = g.next;
        free(g.idx);
    }
    check_cursors(dir, dirfd, &k);
    char line[300];
    snprintf(line, sizeof line, "%s: %zu segments, %" PRIu64 " records, %" PRIu64 " bytes: %ld problem%s",
             dir, n, records, bytes, k.problems, k.problems == 1 ? "" : "s");
    fn(arg, line);
    free(bases);
    close(dirfd);
    return k.problems;
}
