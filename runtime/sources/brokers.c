/* TEMPORARY until the mqtt and natsrc branches land */
#include "sources_int.h"
bool mqtt_prepare(src *s, const vm_program *p, const vm_input *in, char *err, size_t cap)
{ (void)s; (void)p; (void)in; snprintf(err, cap, "mqtt: not yet"); return false; }
bool nats_prepare(src *s, const vm_program *p, const vm_input *in, char *err, size_t cap)
{ (void)s; (void)p; (void)in; snprintf(err, cap, "nats: not yet"); return false; }
