/*
 * http.c — the event center's endpoints: one table, one dispatcher.  A pattern is a path whose
 * '*' stands for one segment (no '/'), handed to the handler as r->arg[k].  Every endpoint but
 * the console's static files is an operator's: with the server's admin_token set it needs
 * `Authorization: Bearer TOKEN`; without one it is served on a loopback listener only (as
 * POST /v1/admin/reload is), to a request whose Host names loopback, whose Origin (if any) is
 * that host, and, for a POST, that a web page cannot send cross-site (ebd_authorize_admin).
 * (A DELETE is not checked further: a browser preflights it, and ebd grants no preflight.)
 */
#include <string.h>

#include "center.h"

typedef enum MHD_Result (*center_fn)(const center_req *r);

static const struct route {
    const char *method;           /* "GET", "POST", "DELETE" */
    const char *pattern;
    center_fn fn;
    bool open;                    /* served to anyone (the console's files) */
} routes[] = {
    { "GET", "/ui", console_serve, true },
    { "GET", "/ui/", console_serve, true },
    { "GET", "/ui/*", console_serve, true },
    { "GET", "/metrics", mt_serve_metrics, false },
    { "GET", "/v1/buses", mt_serve_buses, false },
    { "GET", "/v1/buses/*", mt_serve_bus, false },
    { "GET", "/v1/rules", mt_serve_rules, false },
    { "GET", "/v1/targets", mt_serve_targets, false },
    { "GET", "/v1/buses/*/events", qy_handle_events, false },
    { "POST", "/v1/buses/*/dry-run", dr_handle, false },
    { "POST", "/v1/buses/*/replays", rp_handle_start, false },
    { "GET", "/v1/buses/*/replays", rp_handle_list, false },
    { "GET", "/v1/buses/*/replays/*", rp_handle_get, false },
    { "DELETE", "/v1/buses/*/replays/*", rp_handle_cancel, false },
    { "GET", "/v1/schemas", center_schemas, false },                /* schemas.c */
    { "GET", "/v1/buses/*/events/*/trace", trace_serve_id, false },
    { "GET", "/v1/buses/*/offsets/*/trace", trace_serve_offset, false },
    { NULL, NULL, NULL, false },    /* (the end) */
};

/* Does url match pattern?  Fills r->arg with the segments that '*' stands for, cut out of
 * buf (room for url's length + 1). */
static bool match(const char *pattern, const char *url, center_req *r, char *buf)
{
    size_t narg = 0, at = 0;
    const char *p = pattern, *u = url;
    while (*p) {
        if (*p == '*') {
            size_t k = strcspn(u, "/");
            if (k == 0 || narg == sizeof r->arg / sizeof r->arg[0])
                return false;
            memcpy(buf + at, u, k);
            buf[at + k] = '\0';
            r->arg[narg++] = buf + at;
            at += k + 1;
            u += k;
            p++;
        } else if (*p++ != *u++) {
            return false;
        }
    }
    if (*u)
        return false;
    r->narg = narg;
    return true;
}

const char *center_query(const center_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->c, MHD_GET_ARGUMENT_KIND, name);
}

bool center_handle(struct MHD_Connection *c, ebd *d, const char *url, const char *method,
                   const char *body, size_t n, enum MHD_Result *out)
{
    char buf[2048];
    if (strlen(url) >= sizeof buf)
        return false;
    bool path_known = false;
    for (const struct route *rt = routes; rt->pattern; rt++) {
        center_req r = { .c = c, .d = d, .method = method, .url = url, .body = body, .n = n };
        if (!match(rt->pattern, url, &r, buf))
            continue;
        path_known = true;
        if (strcmp(rt->method, method) != 0)
            continue;
        if (!rt->open) {
            const char *why;
            unsigned deny = ebd_authorize_admin(d, c, !strcmp(method, "POST"), &why);
            if (deny) {
                *out = (enum MHD_Result)ebd_send_error(c, deny, why, NULL);
                return true;
            }
        }
        *out = rt->fn(&r);
        return true;
    }
    if (path_known) {
        *out = (enum MHD_Result)ebd_send_error(c, 405, "that method is not served here", NULL);
        return true;
    }
    return false;
}
