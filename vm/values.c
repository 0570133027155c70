/*
 * values.c — the value semantics shared by the compiler and the VM: IP addresses, canonical
 * decimal numbers, wildcard matching, CRC32C.
 */
#define _GNU_SOURCE   /* strtod_l */
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vm.h"

/* ---- IP addresses ----------------------------------------------------------------------------- */

/* Parses a dotted quad: four decimal parts of 1-3 digits, each at most 255 (leading zeros are
 * decimal, as event-ruler reads them: "10.0.0.001" is 10.0.0.1). */
static bool parse_ipv4(const char *s, size_t n, uint8_t out[4])
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i >= n || s[i] != '.')
                return false;
            i++;
        }
        unsigned v = 0, digits = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && digits < 4) {
            v = v * 10 + (unsigned)(s[i++] - '0');
            digits++;
        }
        if (digits == 0 || digits > 3 || v > 255)
            return false;
        out[part] = (uint8_t)v;
    }
    return i == n;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Parses IPv6 text (RFC 4291 section 2.2): groups of 1-4 hex digits, at most one "::", and an
 * optional dotted-quad tail. */
static bool parse_ipv6(const char *s, size_t n, uint8_t out[16])
{
    uint16_t groups[8];
    int ngroups = 0, gap = -1;
    size_t i = 0;
    if (n >= 2 && s[0] == ':' && s[1] == ':') {
        gap = 0;
        i = 2;
        if (i == n)
            goto done;
    } else if (n >= 1 && s[0] == ':') {
        return false;
    }
    for (;;) {
        size_t start = i;
        unsigned v = 0;
        while (i < n && i - start < 5 && hex_digit(s[i]) >= 0)
            v = v * 16 + (unsigned)hex_digit(s[i++]);
        if (i < n && s[i] == '.' && ngroups <= 6) {
            uint8_t q[4];
            if (!parse_ipv4(s + start, n - start, q))
                return false;
            groups[ngroups++] = (uint16_t)(q[0] << 8 | q[1]);
            groups[ngroups++] = (uint16_t)(q[2] << 8 | q[3]);
            i = n;
            break;
        }
        if (i == start || i - start > 4 || ngroups == 8)
            return false;
        groups[ngroups++] = (uint16_t)v;
        if (i == n)
            break;
        if (s[i] != ':')
            return false;
        i++;
        if (i < n && s[i] == ':') {
            if (gap >= 0)
                return false;
            gap = ngroups;
            i++;
            if (i == n)
                break;
        } else if (i == n) {
            return false;
        }
    }
done:
    if (gap < 0 ? ngroups != 8 : ngroups > 7)
        return false;
    memset(out, 0, 16);
    int tail = gap < 0 ? 0 : ngroups - gap;
    for (int g = 0; g < ngroups; g++) {
        int at = (gap >= 0 && g >= gap) ? 8 - tail + (g - gap) : g;
        out[2 * at] = (uint8_t)(groups[g] >> 8);
        out[2 * at + 1] = (uint8_t)groups[g];
    }
    return true;
}

bool vm_parse_ip(const char *s, size_t n, uint8_t ip[16])
{
    uint8_t q[4];
    if (n >= 7 && n <= 15 && parse_ipv4(s, n, q)) {
        memset(ip, 0, 10);
        ip[10] = ip[11] = 0xff;
        memcpy(ip + 12, q, 4);
        return true;
    }
    return n >= 2 && n <= 45 && memchr(s, ':', n) && parse_ipv6(s, n, ip);
}

/* ---- numbers ------------------------------------------------------------------------------------ */

size_t vm_json_number_len(const char *s, size_t n, const char **why)
{
    size_t p = 0;
    const char *dummy;
    if (!why)
        why = &dummy;
    if (p < n && s[p] == '-')
        p++;
    if (p < n && s[p] == '0') {
        p++;
        if (p < n && s[p] >= '0' && s[p] <= '9') {
            *why = "invalid number: leading zeros are not allowed";
            return 0;
        }
    } else if (p < n && s[p] >= '1' && s[p] <= '9') {
        while (p < n && s[p] >= '0' && s[p] <= '9')
            p++;
    } else {
        *why = "invalid number";
        return 0;
    }
    if (p < n && s[p] == '.') {
        p++;
        if (!(p < n && s[p] >= '0' && s[p] <= '9')) {
            *why = "invalid number: digits must follow '.'";
            return 0;
        }
        while (p < n && s[p] >= '0' && s[p] <= '9')
            p++;
    }
    if (p < n && (s[p] == 'e' || s[p] == 'E')) {
        p++;
        if (p < n && (s[p] == '+' || s[p] == '-'))
            p++;
        if (!(p < n && s[p] >= '0' && s[p] <= '9')) {
            *why = "invalid number: digits must follow the exponent";
            return 0;
        }
        while (p < n && s[p] >= '0' && s[p] <= '9')
            p++;
    }
    return p;
}

static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;

static void make_c_locale(void)
{
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
}

/* ---- reading numbers exactly, fast ----------------------------------------------------------
 *
 * Most numbers in events have at most 19 significant digits: w x 10^q with w < 2^64.  Then the
 * correctly rounded double is found without strtod in one of two ways:
 *   - w <= 2^53 and |q| <= 22: w and 10^q are exact doubles, and one IEEE multiplication or
 *     division rounds their product correctly (Clinger's fast path);
 *   - otherwise w times a 128-bit truncation of 10^q gives the top bits of the product, and
 *     with them the double, unless the product lies so close to a halfway point between two
 *     doubles that the truncation could decide it (Eisel and Lemire's method).
 * Anything else (more digits, |q| beyond the table, a subnormal or overflowing result, the rare
 * ambiguous product) goes to strtod.  strtod was a third of the time of the CityLots rows that
 * look at coordinates (COMPLEX_ARRAYS, COMBO); test_values.c checks this path against it. */

/* pow10_hi/lo[q + 348]: the first 128 bits of 10^q for q = -348..347, truncated (bit 127 set). */
enum { POW10_MIN = -348, POW10_MAX = 347 };
static uint64_t pow10_hi[POW10_MAX - POW10_MIN + 1], pow10_lo[POW10_MAX - POW10_MIN + 1];
static pthread_once_t pow10_once = PTHREAD_ONCE_INIT;

/* Bits [pos, pos + 64) of the big number x (32-bit limbs, least significant first); bits below
 * 0 read as 0. */
static uint64_t big_bits(const uint32_t *x, int n, int pos)
{
    uint64_t v = 0;
    for (int b = 63; b >= 0; b--) {
        int at = pos + b;
        v = v << 1 | (at >= 0 && at / 32 < n ? (x[at / 32] >> (at % 32)) & 1 : 0);
    }
    return v;
}

static void big_top128(const uint32_t *x, int n, int q)
{
    while (n > 1 && x[n - 1] == 0)
        n--;
    int len = 32 * (n - 1);
    for (uint32_t top = x[n - 1]; top; top >>= 1)
        len++;
    pow10_hi[q - POW10_MIN] = big_bits(x, n, len - 64);
    pow10_lo[q - POW10_MIN] = big_bits(x, n, len - 128);
}

/* Computes the table once, exactly: 10^q by multiplying a big integer by 10; 10^-m as
 * floor(2^1408 / 10^m) by dividing by 10 (floors of floors by integers are the floor of the
 * whole), which keeps more than 128 bits down to m = 348. */
static void make_pow10(void)
{
    enum { LIMBS = 45 };
    uint32_t x[LIMBS] = { 1 };
    for (int q = 0; q <= POW10_MAX; q++) {
        if (q > 0) {
            uint64_t carry = 0;
            for (int i = 0; i < LIMBS; i++) {
                uint64_t v = (uint64_t)x[i] * 10 + carry;
                x[i] = (uint32_t)v;
                carry = v >> 32;
            }
        }
        big_top128(x, LIMBS, q);
    }
    memset(x, 0, sizeof x);
    x[LIMBS - 1] = 1;   /* 2^1408 */
    for (int m = 1; m <= -POW10_MIN; m++) {
        uint64_t rem = 0;
        for (int i = LIMBS - 1; i >= 0; i--) {
            uint64_t v = rem << 32 | x[i];
            x[i] = (uint32_t)(v / 10);
            rem = v % 10;
        }
        big_top128(x, LIMBS, -m);
    }
}

/* w x 10^q correctly rounded, w != 0, when the 128-bit product decides it. */
static bool eisel_lemire(uint64_t w, int q, bool neg, double *d)
{
    if (q < POW10_MIN || q > POW10_MAX)
        return false;
    pthread_once(&pow10_once, make_pow10);
    int lz = __builtin_clzll(w);
    w <<= lz;
    /* 2^e <= 10^q < 2^(e+1) for e = floor(q log2(10)) = (217706 q) >> 16 over this range. */
    int64_t exp2 = ((217706 * (int64_t)q) >> 16) + 64 + 1023 - lz;
    unsigned __int128 x = (unsigned __int128)w * pow10_hi[q - POW10_MIN];
    uint64_t hi = (uint64_t)(x >> 64), lo = (uint64_t)x;
    if ((hi & 0x1ff) == 0x1ff && lo + w < w) {
        /* The truncated low half of 10^q could still carry into the bits that count: add it. */
        unsigned __int128 y = (unsigned __int128)w * pow10_lo[q - POW10_MIN];
        uint64_t yhi = (uint64_t)(y >> 64), ylo = (uint64_t)y;
        uint64_t mlo = lo + yhi, mhi = hi + (mlo < lo);
        if ((mhi & 0x1ff) == 0x1ff && mlo + 1 == 0 && ylo + w < w)
            return false;
        hi = mhi;
        lo = mlo;
    }
    unsigned top = (unsigned)(hi >> 63);
    uint64_t mant = hi >> (top + 9);   /* 54 bits: the 53 of the double and one to round */
    exp2 -= 1 ^ top;
    if (lo == 0 && (hi & 0x1ff) == 0 && (mant & 3) == 1)
        return false;   /* exactly halfway, as far as these bits tell */
    mant = (mant + (mant & 1)) >> 1;
    if (mant >> 53) {
        mant >>= 1;
        exp2++;
    }
    if (exp2 < 1 || exp2 > 0x7fe)
        return false;   /* subnormal or too large: strtod says */
    uint64_t bits = (uint64_t)exp2 << 52 | (mant & ((1ull << 52) - 1)) | (uint64_t)neg << 63;
    memcpy(d, &bits, sizeof *d);
    return true;
}

/* Eight ASCII digits at s as their value, in *v; false if one of the bytes is not a digit.
 * Digits are 0x30-0x39: each byte's high nibble is 3 both before and after adding 6.  Then
 * pairs, quads and the two halves are combined with three multiplications instead of eight
 * steps (SWAR; the CityLots coordinates have ~14 fraction digits: the trusted COMBO row went
 * from 42.4K to 40.5K instructions an event, ~145 fewer for each of its ~13 numbers read,
 * callgrind). */
static inline bool eight_digits(const char *s, uint64_t *v)
{
    uint64_t x;
    memcpy(&x, s, 8);                                  /* little-endian: s[0] lowest */
    const uint64_t high = 0xF0F0F0F0F0F0F0F0ull, zeros = 0x3030303030303030ull;
    if ((x & high) != zeros || ((x + 0x0606060606060606ull) & high) != zeros)
        return false;
    x -= zeros;
    x = x * 10 + (x >> 8);                             /* each even byte: two digits */
    x = ((x & 0x000000FF000000FFull) * (100 + (1000000ull << 32)) +
         ((x >> 16) & 0x000000FF000000FFull) * (1 + (10000ull << 32))) >> 32;
    *v = x;
    return true;
}

/* The fast path of vm_number_value: false when strtod must decide. */
static bool fast_number(const char *s, size_t n, double *d)
{
    static const double exact10[] = { 1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
                                      1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
                                      1e20, 1e21, 1e22 };
    size_t i = 0;
    bool neg = i < n && s[i] == '-';
    i += neg;
    uint64_t w = 0;
    int sig = 0, q = 0;   /* significant digits in w; the decimal exponent */
    size_t first = i;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
        if (sig == 19)
            return false;
        w = w * 10 + (uint64_t)(s[i] - '0');
        sig += w != 0;
    }
    if (i == first)
        return false;
    if (i < n && s[i] == '.') {
        size_t f = ++i;
        /* eight digits a step while they fit in w's 19 (w already significant: leading zeros
         * of the fraction are counted one by one below) */
        for (uint64_t v; w != 0 && sig <= 11 && i + 8 <= n && eight_digits(s + i, &v); i += 8) {
            w = w * 100000000u + v;
            sig += 8;
            q -= 8;
        }
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
            if (sig == 19)
                return false;
            w = w * 10 + (uint64_t)(s[i] - '0');
            sig += w != 0;
            if (--q < -100000)
                return false;   /* (zeros without end: strtod) */
        }
        if (i == f)
            return false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        bool eneg = i < n && s[i] == '-';
        i += i < n && (s[i] == '-' || s[i] == '+');
        size_t f = i;
        int e = 0;
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
            if (e > 100000)
                return false;
            e = e * 10 + (s[i] - '0');
        }
        if (i == f)
            return false;
        q += eneg ? -e : e;
    }
    if (i != n)
        return false;
    if (w == 0) {
        *d = neg ? -0.0 : 0.0;
        return true;
    }
    if (w <= (1ull << 53) && q >= -22 && q <= 22) {
        double v = (double)w;
        v = q < 0 ? v / exact10[-q] : v * exact10[q];
        *d = neg ? -v : v;
        return true;
    }
    return eisel_lemire(w, q, neg, d);
}

bool vm_number_value(const char *s, size_t n, double *d)
{
    if (fast_number(s, n, d))
        return true;
    /* strtod needs a terminated copy; event numbers longer than the stack buffer are rare
     * enough to take a malloc.  The C locale keeps '.' the decimal point whatever the
     * program's locale is. */
    char buf[128], *heap = NULL, *tmp = buf;
    if (n >= sizeof buf && !(tmp = heap = malloc(n + 1)))
        return false;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    pthread_once(&c_locale_once, make_c_locale);
    char *end;
    *d = c_locale ? strtod_l(tmp, &end, c_locale) : strtod(tmp, &end);
    bool ok = end == tmp + n && isfinite(*d);
    if (ok && *d == 0) {
        /* A non-zero literal that rounds to zero lies outside the range too. */
        for (size_t i = 0; i < n && s[i] != 'e' && s[i] != 'E'; i++)
            if (s[i] >= '1' && s[i] <= '9')
                ok = false;
    }
    free(heap);
    return ok;
}

/* ---- strings ------------------------------------------------------------------------------------ */

static uint32_t hex4(const char *s)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char h = s[i];
        v = v * 16 + (uint32_t)(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
    }
    return v;
}

size_t vm_json_escape_len(const char *s, size_t n)
{
    if (n < 2 || s[1] != 'u')
        return 2;
    if (n >= 12 && hex4(s + 2) >= 0xD800 && hex4(s + 2) <= 0xDBFF && s[6] == '\\' && s[7] == 'u') {
        uint32_t lo = hex4(s + 8);
        if (lo >= 0xDC00 && lo <= 0xDFFF)
            return 12;   /* a surrogate pair: one code point */
    }
    return 6;
}

size_t vm_json_unescape(const char *s, size_t n, char *out)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] != '\\') {
            out[o++] = s[i++];
            continue;
        }
        size_t len = vm_json_escape_len(s + i, n - i);
        uint32_t cp;
        if (len == 2)
            cp = (unsigned char)to[strchr(from, s[i + 1]) - from];
        else if (len == 12)
            cp = 0x10000 + ((hex4(s + i + 2) - 0xD800) << 10) + (hex4(s + i + 8) - 0xDC00);
        else
            cp = hex4(s + i + 2);
        if (cp >= 0xD800 && cp <= 0xDFFF)
            cp = 0xFFFD;  /* a lone surrogate cannot be UTF-8: it reads as U+FFFD */
        o += vm_utf8_encode(cp, out + o);
        i += len;
    }
    return o;
}

size_t vm_number_canon(const char *s, size_t n, char *out, size_t cap)
{
    size_t i = 0, o = 0;
    bool neg = false;
    if (i < n && s[i] == '-')
        neg = true, i++;
    /* Collect the significant digits of integer and fraction parts; `point` counts digits
     * before the decimal point. */
    size_t dstart = o + 1;   /* leave room for the sign */
    long long point = 0;
    bool seen_point = false, any = false;
    size_t ndig = 0;
    if (cap < 4)
        return 0;
    for (; i < n; i++) {
        char ch = s[i];
        if (ch >= '0' && ch <= '9') {
            any = true;
            if (ndig == 0 && ch == '0') {
                if (seen_point)
                    point--;          /* leading zero after the point shifts the exponent */
                continue;
            }
            if (dstart + ndig + 24 >= cap)
                return 0;
            out[dstart + ndig++] = ch;
            if (!seen_point)
                point++;
        } else if (ch == '.' && !seen_point) {
            seen_point = true;
        } else {
            break;
        }
    }
    if (!any)
        return 0;
    long long exp = 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        bool eneg = false;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            eneg = s[i++] == '-';
        if (i == n)
            return 0;
        for (; i < n; i++) {
            if (s[i] < '0' || s[i] > '9')
                return 0;
            if (exp < 1000000000000LL)
                exp = exp * 10 + (s[i] - '0');
        }
        if (eneg)
            exp = -exp;
    }
    if (i != n)
        return 0;
    while (ndig > 0 && out[dstart + ndig - 1] == '0')
        ndig--;
    if (ndig == 0) {
        out[0] = '0';
        return 1;
    }
    /* value = 0.DIGITS x 10^(point + exp): written as [-]DIGITS e (point + exp - ndig). */
    if (neg)
        out[o++] = '-';
    memmove(out + o, out + dstart, ndig);
    o += ndig;
    int k = snprintf(out + o, cap - o, "e%lld", point + exp - (long long)ndig);
    if (k < 0 || (size_t)k >= cap - o)
        return 0;
    return o + (size_t)k;
}

/* ---- wildcards ------------------------------------------------------------------------------------ */

/* Length of the pattern token at p: an escaped character counts as the character. */
static size_t pat_char(const char *p, size_t np, size_t i, char *c)
{
    if (p[i] == '\\' && i + 1 < np) {
        *c = p[i + 1];
        return 2;
    }
    *c = p[i];
    return 1;
}

bool vm_wildcard_match(const char *pat, size_t np, const char *s, size_t n)
{
    /* The classic linear walk with one resume point: on a mismatch after a '*', the star
     * absorbs one more byte.  Bytes are compared, which is exact for UTF-8. */
    size_t pi = 0, si = 0, star_p = (size_t)-1, star_s = 0;
    while (si < n) {
        if (pi < np && pat[pi] == '*') {
            star_p = ++pi;
            star_s = si;
            continue;
        }
        if (pi < np) {
            char c;
            size_t k = pat_char(pat, np, pi, &c);
            if (c == s[si]) {
                pi += k;
                si++;
                continue;
            }
        }
        if (star_p == (size_t)-1)
            return false;
        pi = star_p;
        si = ++star_s;
    }
    while (pi < np && pat[pi] == '*')
        pi++;
    return pi == np;
}

/* ---- CRC32C (Castagnoli), table-driven --------------------------------------------------------- */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define CRC32C_HW 1

/* Three streams at once: the crc32 instruction takes 3 cycles and can start every cycle, so one
 * stream of 8-byte steps waits on itself.  A run of 3 * CRC_RUN bytes is three independent CRCs
 * of CRC_RUN bytes each, joined by shifting the first two over the bytes after them:
 * R(c, A B) = Z(R(c, A)) ^ R(0, B), where Z appends CRC_RUN zero bytes to the register (it is
 * linear, so four table looks of one byte each: crc_shift).  Records of the bus log are a few
 * hundred bytes: best of 15 runs of 200,000 CRCs, 234 bytes 33 -> 22 ns, 421 bytes 78 -> 42,
 * 1,030 bytes 158 -> 105, 4 KiB 503 -> 302. */
enum { CRC_RUN = 64 };
static uint32_t crc_shift[4][256];

static void crc_shift_init(void)
{
    for (uint32_t k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++) {
            uint32_t c = b << (8 * k);
            for (int i = 0; i < CRC_RUN; i++)
                c = (c >> 8) ^ crc_table[0][c & 0xff];
            crc_shift[k][b] = c;
        }
}

static inline uint32_t crc_zeros(uint32_t c)
{
    return crc_shift[0][c & 0xff] ^ crc_shift[1][(c >> 8) & 0xff] ^
           crc_shift[2][(c >> 16) & 0xff] ^ crc_shift[3][c >> 24];
}

/* SSE4.2's crc32 instruction computes exactly this polynomial, 8 bytes per instruction: one
 * stream runs at ~8 GB/s here against ~1.3 GB/s for slicing by 8, which is what lets the bus log
 * verify every record it reads at more than 2 GB/s (bench/log.c).  Chosen once, at first use. */
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t len)
{
    uint64_t c = ~crc;
    while (len >= 3 * CRC_RUN) {
        uint64_t c1 = 0, c2 = 0, w0, w1, w2;
        for (size_t i = 0; i < CRC_RUN; i += 8) {
            memcpy(&w0, p + i, 8);
            memcpy(&w1, p + CRC_RUN + i, 8);
            memcpy(&w2, p + 2 * CRC_RUN + i, 8);
            c = _mm_crc32_u64(c, w0);
            c1 = _mm_crc32_u64(c1, w1);
            c2 = _mm_crc32_u64(c2, w2);
        }
        c = crc_zeros(crc_zeros((uint32_t)c) ^ (uint32_t)c1) ^ (uint32_t)c2;
        p += 3 * CRC_RUN;
        len -= 3 * CRC_RUN;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}
#endif

static bool crc_hw;

static void crc_setup(void)
{
    crc_init();
#ifdef CRC32C_HW
    crc_shift_init();
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

/* The portable path, kept callable for the test that holds both paths to the same answers. */
uint32_t vm_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    pthread_once(&crc_once, crc_setup);
    crc = ~crc;
    /* Slicing by 8: eight table lookups per 8 bytes instead of one per byte. */
    while (len >= 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
              crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
              crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

uint32_t vm_crc32c(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&crc_once, crc_setup);
#ifdef CRC32C_HW
    if (crc_hw)
        return crc32c_hw(crc, buf, len);
#endif
    return vm_crc32c_sw(crc, buf, len);
}
