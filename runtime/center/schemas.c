/*
 * schemas.c — GET /v1/schemas: the schemas discovery inferred per bus and (source, type)
 * (docs/schemas.md), filtered by ?bus=, ?source=, ?type=; with ?history=1 each also lists the
 * previous versions kept, newest first.
 */
#include <string.h>

#include "center.h"
#include "../schema/discover.h"

typedef struct {
    const char *bus, *source, *type;
    bool history;
    sbuf *out;
    size_t n;
} listing;

/* Appends the kinds of bus b that pass the filters. */
static void list_bus(void *arg, disc_bus *b)
{
    listing *l = arg;
    if (l->bus && strcmp(l->bus, b->name) != 0)
        return;
    for (size_t i = 0; i < b->nkinds; i++) {
        const disc_kind *k = &b->kinds[i];
        if (!k->nver || (l->source && strcmp(l->source, k->source)) ||
            (l->type && strcmp(l->type, k->type)))
            continue;
        const disc_version *v = &k->ver[k->nver - 1];
        sbuf *o = l->out;
        sb_puts(o, l->n++ ? ",{\"bus\":" : "{\"bus\":");
        sb_json_string(o, b->name, strlen(b->name));
        sb_puts(o, ",\"source\":");
        sb_json_string(o, k->source, strlen(k->source));
        sb_puts(o, ",\"type\":");
        sb_json_string(o, k->type, strlen(k->type));
        sb_printf(o, ",\"version\":%llu,\"events\":%llu,\"updated\":\"%s\",\"schema\":%s",
                  (unsigned long long)v->version, (unsigned long long)sch_infer_count(k->g),
                  v->updated, v->schema);
        if (l->history) {
            sb_puts(o, ",\"history\":[");
            for (size_t j = k->nver - 1; j-- > 0;)
                sb_printf(o, "%s{\"version\":%llu,\"updated\":\"%s\",\"schema\":%s}",
                          j == k->nver - 2 ? "" : ",", (unsigned long long)k->ver[j].version,
                          k->ver[j].updated, k->ver[j].schema);
            sb_puts(o, "]");
        }
        sb_puts(o, "}");
    }
}

enum MHD_Result center_schemas(const center_req *r)
{
    sbuf out = { 0 };
    const char *h = center_query(r, "history");
    listing l = { center_query(r, "bus"), center_query(r, "source"), center_query(r, "type"),
                  h && (!strcmp(h, "1") || !strcmp(h, "true")), &out, 0 };
    sb_puts(&out, "{\"schemas\":[");
    sch_discovery_each(list_bus, &l);
    sb_puts(&out, "]}");
    enum MHD_Result res = out.oom ? (enum MHD_Result)ebd_send_error(r->c, 503, "out of memory", NULL)
                                  : (enum MHD_Result)ebd_send_json(r->c, 200, &out);
    sb_free(&out);
    return res;
}
