/*
 * json.h — the compiler's JSON tree (compile time only), with byte spans into the rule file.
 */
#ifndef EBR_JSON_H
#define EBR_JSON_H

#include "cc.h"

typedef enum { J_OBJECT, J_ARRAY, J_STRING, J_NUMBER, J_TRUE, J_FALSE, J_NULL } jtype;

typedef struct jv jv;
struct jv {
    jtype type;
    uint32_t off, len;     /* the value's span in the unit's text */
    const char *str;       /* J_STRING: decoded UTF-8; J_NUMBER: the number as written */
    size_t slen;
    jv *kids;              /* members of an object, elements of an array */
    uint32_t nkids;
    jv *next;
    const char *key;       /* as a member of an object: its decoded key ... */
    size_t klen;
    uint32_t koff, kspan;  /* ... and the key's span (with quotes) */
};

/* Parses the JSON text at [off, off+len) of u's text.  Reports the first error and returns NULL
 * on malformed input. */
jv *cc_json_parse(cc_unit *u, uint32_t off, uint32_t len);
/* The same in the scratch arena: the tree lives until cc_scratch_reset. */
jv *cc_json_parse_scratch(cc_unit *u, uint32_t off, uint32_t len);

/* "an object", "a string", ... for messages. */
const char *cc_json_type_name(jtype t);

#endif
