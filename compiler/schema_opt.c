/*
 * schema_opt.c — the bus option that binds a JSON Schema to an event type (docs/schemas.md):
 *
 *     bus orders { schema "order.created" file "schemas/order.json" on_invalid reject }
 *
 * checked here at compile time: its shape, that the file (relative to the directory of the
 * rules file that says it) exists, is JSON and compiles as a draft 2020-12 schema, and that a
 * bus binds each type once (with CC_NO_FILES, compiler.h, the file is not read).  ebd loads the same files (runtime/schema/enforce.c).
 */
#include <stdlib.h>
#include <string.h>

#include "cc.h"
#include "parser.h"
#include "../runtime/schema/schema.h"

/* Is v the bare word w? */
static bool is_word(cc_unit *u, const ast *v, const char *w)
{
    return v && v->kind == A_VALUE && (v->op == TK_IDENT || v->op == TK_DEAD_LETTER) &&
           strlen(w) == v->tok.len && memcmp(u->text + v->tok.off, w, v->tok.len) == 0;
}

/* Is v a string literal?  Its decoded text (arena), or NULL. */
static const char *str_of(cc_unit *u, const ast *v)
{
    size_t n;
    if (!v || v->kind != A_VALUE || v->op != TK_STRING)
        return NULL;
    const char *s = cc_string(u, &v->tok, &n);
    return s && strlen(s) == n ? s : NULL;
}

bool cc_opt_schema(cc_comp *c, cc_unit *u, ast *o, const char *w)
{
    ast *type = o->a, *kw = type ? type->next : NULL, *path = kw ? kw->next : NULL;
    ast *kw2 = path ? path->next : NULL, *mode = kw2 ? kw2->next : NULL;
    const char *t = str_of(u, type), *p = str_of(u, path);
    if (!t || !*t || !is_word(u, kw, "file") || !p || o->b || (kw2 && !is_word(u, kw2, "on_invalid")) ||
        (kw2 && !mode) || (mode && mode->next)) {
        cc_error_at(u, o, "%s is written: schema \"TYPE\" file \"PATH\" [on_invalid reject | "
                    "dead_letter | accept]", w);
        return false;
    }
    if (mode && !is_word(u, mode, "reject") && !is_word(u, mode, "dead_letter") &&
        !is_word(u, mode, "accept")) {
        cc_error_at(u, mode, "on_invalid takes reject, dead_letter or accept");
        return false;
    }
    for (ast *x = o->next; x; x = x->next) {
        const char *t2 = x->tok.len == 6 && memcmp(u->text + x->tok.off, "schema", 6) == 0
                       ? str_of(u, x->a) : NULL;
        if (t2 && strcmp(t, t2) == 0) {
            cc_error_at(u, x, "the bus binds a schema to type \"%s\" twice", t);
            return false;
        }
    }
    if (c->flags & CC_NO_FILES)
        return true;          /* (the file is not read: its shape is all that is checked) */
    char *full = sch_resolve_path(u->name, p);
    char err[600];
    sch_schema *s = full ? sch_load_file(full, SCH_FORMATS, err, sizeof err) : NULL;
    if (!full)
        snprintf(err, sizeof err, "out of memory");
    bool ok = s != NULL;
    if (!ok)
        cc_error_at(u, path, "schema file \"%s\": %s", full ? full : p, err);
    sch_free(s);
    free(full);
    return ok;
}
