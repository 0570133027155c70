/*
 * console.c — the console's files under /ui/ (docs/console.md): the pages in runtime/center/ui/
 * and Chart.js from Debian's libjs-chart.js, embedded at build time by tools/embed_files.cmake
 * into console_files[] (the build tree's gen/console_files.c).  They carry no data (the pages
 * ask the admin API for it, with the operator's token), so they are served to anyone.
 */
#include <string.h>

#include "center.h"

/* The embedded files (tools/embed_files.cmake writes the same definition); ends with a NULL
 * name. */
extern const struct console_file {
    const char *name;
    const unsigned char *data;
    size_t len;
    const char *type, *etag;
} console_files[];

/* The embedded file of that name, or NULL. */
static const struct console_file *console_find(const char *name)
{
    for (const struct console_file *f = console_files; f->name; f++)
        if (!strcmp(f->name, name))
            return f;
    return NULL;
}

/* Does the request's If-None-Match name etag (one of a list, or "*")? */
static bool console_fresh(struct MHD_Connection *c, const char *etag)
{
    const char *inm = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
    if (!inm)
        return false;
    if (!strcmp(inm, "*"))
        return true;
    size_t n = strlen(etag);
    for (const char *p = strstr(inm, etag); p; p = strstr(p + 1, etag))
        if ((p == inm || p[-1] == ' ' || p[-1] == ',' || p[-1] == '/') &&
            (p[n] == '\0' || p[n] == ',' || p[n] == ' '))
            return true;
    return false;
}

/* Adds the headers every answer of the console carries. */
static void console_headers(struct MHD_Response *rs, const struct console_file *f)
{
    MHD_add_response_header(rs, "Cache-Control", "no-cache");
    MHD_add_response_header(rs, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(rs, "Referrer-Policy", "no-referrer");
    if (f) {
        MHD_add_response_header(rs, "ETag", f->etag);
        MHD_add_response_header(rs, "Content-Type", f->type);
        if (!strncmp(f->type, "text/html", 9)) {
            /* The pages run their own scripts only, and talk to this server only. */
            MHD_add_response_header(rs, "Content-Security-Policy",
                                    "default-src 'none'; script-src 'self'; style-src 'self'; "
                                    "img-src 'self' data:; connect-src 'self'; "
                                    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
            MHD_add_response_header(rs, "X-Frame-Options", "DENY");
        }
    }
}

/* GET /ui, /ui/ and /ui/NAME: /ui redirects to /ui/ (the pages name their files and the API
 * relative to it), /ui/ is index.html, /ui/NAME the embedded file NAME (404 when there is
 * none); 304 when the request's If-None-Match holds the file's ETag. */
enum MHD_Result console_serve(const center_req *r)
{
    struct MHD_Response *rs;
    unsigned status;
    if (!strcmp(r->url, "/ui")) {
        rs = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (!rs)
            return MHD_NO;
        MHD_add_response_header(rs, "Location", "ui/");
        console_headers(rs, NULL);
        status = MHD_HTTP_MOVED_PERMANENTLY;
    } else {
        const struct console_file *f = console_find(r->narg ? r->arg[0] : "index.html");
        if (!f)
            return (enum MHD_Result)ebd_send_error(r->c, 404, "the console has no such file", NULL);
        bool fresh = console_fresh(r->c, f->etag);
        rs = MHD_create_response_from_buffer(fresh ? 0 : f->len, fresh ? (void *)"" : (void *)f->data,
                                             MHD_RESPMEM_PERSISTENT);
        if (!rs)
            return MHD_NO;
        console_headers(rs, f);
        status = fresh ? MHD_HTTP_NOT_MODIFIED : MHD_HTTP_OK;
    }
    enum MHD_Result ok = MHD_queue_response(r->c, status, rs);
    MHD_destroy_response(rs);
    return ok;
}
