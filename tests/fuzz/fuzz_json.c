/*
 * fuzz_json.c — libFuzzer target: any bytes as a request body for the daemon.  The strict JSON
 * check (vm_json_check) never reads out of bounds, and says why and where it refuses; what it takes, cJSON takes too (cJSON is more
 * lenient, never less); the daemon's spans (js_each, vm_json_value_end) over an accepted object or array
 * cut it into values that are each valid JSON; and the CloudEvents check (ce_check) runs on
 * every value without crashing.  `make fuzz` runs it.
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../runtime/ebd_int.h"

typedef struct {
    const char *s;
    int bad;
} walk;

static bool each_value(void *arg, const js_member *m)
{
    walk *w = arg;
    if (!vm_json_valid(w->s + m->val_off, m->val_len, NULL))
        w->bad++;
    if (m->key_len && !vm_json_valid(w->s + m->key_off, m->key_len, NULL))
        w->bad++;
    char why[256];
    const char *id;
    size_t idlen;
    ce_check(w->s + m->val_off, m->val_len, why, sizeof why, &id, &idlen, NULL);
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy with nothing after it, so that a read past the end is caught by ASan. */
    char *s = malloc(size ? size : 1);
    memcpy(s, data, size);
    size_t at;
    const char *why = NULL;
    bool ok = vm_json_check(s, size, &at, &why);
    if (!ok && (at > size || !why))
        abort();
    if (ok) {
        /* cJSON nests at most 1000 deep; the check allows 1024. */
        cJSON *j = cJSON_ParseWithLength(s, size);
        size_t depth = 0, max = 0;
        for (size_t i = 0; i < size; i++) {
            if (s[i] == '"')
                for (i++; i < size && s[i] != '"'; i++)
                    i += s[i] == '\\';
            else if (s[i] == '[' || s[i] == '{')
                max = ++depth > max ? depth : max;
            else if (s[i] == ']' || s[i] == '}')
                depth--;
        }
        /* cJSON refuses a surrogate escape that is not part of a pair, which RFC 8259's grammar
         * (and so the check) allows: no comparison then. */
        bool surrogate = false;
        for (size_t i = 0; i + 5 < size && !surrogate; i++)
            surrogate = s[i] == '\\' && s[i + 1] == 'u' && (s[i + 2] == 'd' || s[i + 2] == 'D') &&
                        strchr("89abcdefABCDEF", s[i + 3]) && s[i + 3];
        if (!j && max < 1000 && !surrogate)
            abort();
        cJSON_Delete(j);
        size_t i = vm_json_ws(s, size, 0);
        if (s[i] == '{' || s[i] == '[') {
            walk w = { s, 0 };
            js_each(s, size, i, each_value, &w);
            if (w.bad)
                abort();
        }
        char why[256];
        const char *id;
        size_t idlen;
        bool nulls = false;
        if (ce_check(s, size, why, sizeof why, &id, &idlen, &nulls) && nulls) {
            /* what ingest stores: still a CloudEvent, with no null attribute left */
            size_t n = size;
            ce_drop_nulls(s, &n);
            if (n > size || !vm_json_valid(s, n, NULL) ||
                !ce_check(s, n, why, sizeof why, &id, &idlen, &nulls) || nulls)
                abort();
        }
    }
    free(s);
    return 0;
}
