/*
 * event.c — the CloudEvent a source makes of what it took in (sources_int.h).
 */
#include <string.h>
#include <strings.h>
#include <time.h>

#include "sources_int.h"

static bool json_media(const char *ct)
{
    if (!ct)
        return true;               /* no type said: JSON if it parses as JSON */
    size_t n = strcspn(ct, ";");
    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    return (n == 16 && !strncasecmp(ct, "application/json", 16)) ||
           (n == 9 && !strncasecmp(ct, "text/json", 9)) ||
           (n > 5 && !strncasecmp(ct + n - 5, "+json", 5));
}

static bool has_specversion(void *arg, const js_member *m)
{
    return !js_key_is(arg, m, "specversion");      /* (false: found, stop) */
}

bool src_json_event(const void *p, size_t n)
{
    const char *d = p;
    if (!d || !n || !vm_json_valid(d, n, NULL))
        return false;
    size_t i = vm_json_ws(d, n, 0);
    return i < n && d[i] == '{' && !js_each(d, n, i, has_specversion, (void *)d);
}

void src_time_text(sbuf *out, int64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    sb_printf(out, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
              tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

void src_uri_escape(char *out, size_t cap, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0;
    for (; *s && cap > 0; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x80) {        /* a character beyond ASCII kept whole, or the cut made before it */
            size_t len = 1;
            while (len < 4 && ((unsigned char)s[len] & 0xC0) == 0x80)
                len++;
            if (k + len >= cap)
                break;
            memcpy(out + k, s, len);
            k += len;
            s += len - 1;
            continue;
        }
        bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || strchr("-._~:/?@!$&'()*+,;=", c);
        if (keep && k + 1 < cap) {
            out[k++] = (char)c;
        } else if (!keep && k + 3 < cap) {
            out[k++] = '%';
            out[k++] = hex[c >> 4];
            out[k++] = hex[c & 15];
        } else {
            break;
        }
    }
    if (cap > 0)
        out[k] = 0;
}

static void attr(sbuf *out, const char *name, const char *value)
{
    sb_puts(out, ",\"");
    sb_puts(out, name);
    sb_puts(out, "\":");
    sb_json_string(out, value, strlen(value));
}

bool src_event_json(sbuf *out, const src_ce *e)
{
    sb_puts(out, "{\"specversion\":\"1.0\"");
    attr(out, "id", e->id);
    attr(out, "source", e->source);
    attr(out, "type", e->type);
    if (e->subject)
        attr(out, "subject", e->subject);
    if (e->time_ms > 0) {
        sb_puts(out, ",\"time\":\"");
        src_time_text(out, e->time_ms);
        sb_puts(out, "\"");
    }
    for (size_t i = 0; i < e->next; i++)
        attr(out, e->ext_names[i], e->ext_values[i]);
    const char *d = e->data;
    if (d && e->n) {
        /* JSON goes in as it is (less its surrounding blanks), text as a string, the rest in
         * base64: the three ways the JSON format carries data. */
        size_t a = 0, z = e->n;
        if (json_media(e->content_type)) {
            a = vm_json_ws(d, e->n, 0);
            while (z > a && (d[z - 1] == ' ' || d[z - 1] == '\n' || d[z - 1] == '\r' ||
                             d[z - 1] == '\t'))
                z--;
        }
        bool json = json_media(e->content_type) && vm_json_valid(d, e->n, NULL);
        sbuf s = { 0 };
        bool text = !json && e->content_type && !strncasecmp(e->content_type, "text/", 5) &&
                    !memchr(d, 0, e->n);
        if (text) {
            sb_json_string(&s, d, e->n);
            text = !s.oom && vm_json_valid(s.v, s.n, NULL);   /* (invalid UTF-8 is not text) */
        }
        attr(out, "datacontenttype", e->content_type ? e->content_type
                                     : json ? "application/json" : "application/octet-stream");
        if (json) {
            sb_puts(out, ",\"data\":");
            sb_put(out, d + a, z - a);
        } else if (text) {
            sb_puts(out, ",\"data\":");
            sb_put(out, s.v, s.n);
        } else {
            sb_puts(out, ",\"data_base64\":");
            sb_base64(out, (const unsigned char *)d, e->n);
        }
        sb_free(&s);
    }
    sb_puts(out, "}");
    return !out->oom;
}

void src_hash_id(char out[33], const void *const *parts, const size_t *lens, size_t nparts)
{
    unsigned char md[16];
    ebd_digest128(md, parts, lens, nparts);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[32] = 0;
}
