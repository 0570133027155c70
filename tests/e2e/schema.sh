#!/bin/sh
# End-to-end tests of schemas (docs/schemas.md): a bus binding a schema to an event type with each
# on_invalid mode (reject answers 400 naming the instance path and keyword; accept stores; dead_letter
# keeps the event in DATA/BUS.invalid.jsonl, not on the bus), through structured events and
# put-events; a reload that changes a schema file; discovery (GET /v1/schemas, a version bump when a
# field appears, kept across a restart); and `ebc schema infer`.
#   schema.sh BIN_DIR SOURCE_DIR WORK_DIR
# Everything runs on 127.0.0.1, ports 26000-26999; every process started here is stopped at the end.
. "$2/tests/e2e/lib.sh"
P=$(( 26000 + $$ % 1000 ))
URL=http://127.0.0.1:$P
EBD=""
cleanup() {
    for p in $EBD $PIDS; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT

start_ebd() {  # a daemon on P with data directory $WORK/data, logging to $WORK/ebd.log
    "$BIN/ebd" --rules "$WORK/rules.ebr" --data "$WORK/data" --listen 127.0.0.1:$P >>"$WORK/ebd.log" 2>&1 &
    EBD=$!
    wait_for 60 curl -sf "$URL/healthz" || fail "ebd did not start: $(tail -3 "$WORK/ebd.log")"
}
stop_ebd() {
    [ -n "$EBD" ] && { kill -TERM "$EBD" 2>/dev/null; wait "$EBD" 2>/dev/null; }
    EBD=""
}
has() {  # has FILE TEXT: does FILE hold TEXT?
    [ -f "$1" ] && grep -qF -- "$2" "$1"
}
answer_has() {  # answer_has NAME TEXT
    if grep -qF -- "$2" "$WORK/answer"; then pass "$1"; else fail "$1: no '$2' in $(cat "$WORK/answer")"; fi
}

mkdir -p "$WORK/schemas"
cat >"$WORK/schemas/order.json" <<'JSON'
{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["data"],
  "properties": {
    "data": {
      "type": "object",
      "required": ["total", "items"],
      "properties": {
        "total": {"type": "number", "minimum": 20},
        "items": {"type": "array", "items": {"type": "object", "required": ["sku"],
                                              "properties": {"price": {"type": "number", "minimum": 0}}}},
        "email": {"type": "string", "format": "email"},
        "ip": {"type": "string", "format": "ipv4"}
      }
    }
  }
}
JSON
cat >"$WORK/rules.ebr" <<'EOF2'
bus orders {
  schema "order.created" file "schemas/order.json" on_invalid reject
  schema "order.paid"    file "schemas/order.json" on_invalid dead_letter
  schema "order.noted"   file "schemas/order.json" on_invalid accept
  schema "order.plain"   file "schemas/order.json"
}
target out file "out/orders.jsonl"
rule all on orders { match exists id to out }
EOF2
# ---- ebc check knows the option -------------------------------------------------------------------
"$BIN/ebc" check "$WORK/rules.ebr" >"$WORK/check.out" 2>&1 && pass "ebc check accepts the schema options" \
    || fail "ebc check: $(cat "$WORK/check.out")"
printf 'bus b {\n  schema "t" file "schemas/none.json"\n}\n' >"$WORK/bad.ebr"
"$BIN/ebc" check "$WORK/bad.ebr" >"$WORK/check.out" 2>&1
if grep -q 'bad.ebr:2:19: error: schema file ".*schemas/none.json": cannot read it' "$WORK/check.out"; then
    pass "ebc check names a missing schema file with its position"
else
    fail "ebc check on a missing file: $(cat "$WORK/check.out")"
fi

start_ebd
GOOD='{"total":25,"items":[{"sku":"a","price":5}]}'
LOW='{"total":12,"items":[{"sku":"a","price":5}]}'
NEG='{"total":30,"items":[{"sku":"a","price":5},{"sku":"b","price":-1}]}'
CE=application/cloudevents+json

# ---- reject ------------------------------------------------------------------------------------------
st=$(post /v1/buses/orders/events $CE "$(ev r1 order.created "$GOOD")")
expect_status 202 "a valid order.created" "$st"
st=$(post /v1/buses/orders/events $CE "$(ev r2 order.created "$LOW")")
expect_status 400 "order.created under the minimum (reject)" "$st"
answer_has "the 400 names the path, keyword and reason" 'schema \"order.created\": /data/total: minimum: 12 is less than the minimum 20'
st=$(post /v1/buses/orders/events $CE "$(ev r3 order.created "$NEG")")
expect_status 400 "a negative price deep in an array (reject)" "$st"
answer_has "the 400 names /data/items/1/price" '/data/items/1/price: minimum'
st=$(post /v1/buses/orders/events $CE "$(ev r4 order.created '{"total":25,"items":[],"email":"not an address"}')")
expect_status 400 "a bad email format (reject)" "$st"
answer_has "format is asserted" '/data/email: format'
st=$(post /v1/buses/orders/events $CE "$(ev r4b order.created '{"total":25,"items":[],"ip":"10.0.0.1\u0000.evil.com"}')")
expect_status 400 "an ipv4 with more after a U+0000 (reject: the whole string is read)" "$st"
answer_has "it names the format" '/data/ip: format'
st=$(post /v1/buses/orders/events $CE "$(ev r4c order.created '{"total":25,"items":[],"ip":"10.0.0.1"}')")
expect_status 202 "the same address without it" "$st"
st=$(post /v1/buses/orders/events application/json "$LOW" -H 'ce-specversion: 1.0' -H 'ce-id: bin1' \
     -H 'ce-source: e2e' -H 'ce-type: order.created')
expect_status 400 "a binary-mode event under the minimum (reject)" "$st"
answer_has "binary mode: the path and keyword" '/data/total: minimum'
st=$(post /v1/buses/orders/events $CE "$(ev r8 order.plain "$LOW")")
expect_status 400 "without on_invalid, an invalid event is rejected" "$st"
st=$(post /v1/buses/orders/events $CE "$(ev r5 other.type "$LOW")")
expect_status 202 "a type no schema binds passes" "$st"
st=$(post /v1/buses/orders/events application/cloudevents-batch+json "[$(ev b1 order.created "$GOOD"),$(ev b2 order.created "$LOW")]")
expect_status 400 "a batch with an invalid event is refused whole" "$st"
answer_has "the batch's 400 names the event" 'event 1: schema \"order.created\"'
st=$(post /v1/buses/orders/put-events application/json \
     "{\"entries\":[$(ev p1 order.created "$GOOD"),$(ev p2 order.created "$LOW"),$(ev p3 order.paid "$LOW"),$(ev p4 order.noted "$LOW")]}")
expect_status 200 "put-events with valid and invalid entries" "$st"
answer_has "put-events: one entry failed" '"failed_entry_count":1'
answer_has "put-events: the rejected entry names the keyword" '/data/total: minimum'
answer_has "put-events: the dead_letter entry says so" '{"id":"p3","dead_letter":true'

# ---- dead_letter and accept ---------------------------------------------------------------------------
st=$(post /v1/buses/orders/events $CE "$(ev d1 order.paid "$LOW")")
expect_status 202 "an invalid order.paid is taken (dead_letter)" "$st"
answer_has "the answer says dead_letter" '"dead_letter":true'
st=$(post /v1/buses/orders/events $CE "$(ev a1 order.noted "$LOW")")
expect_status 202 "an invalid order.noted is stored (accept)" "$st"
answer_has "an accepted invalid event has an offset" '"offset"'
st=$(post /v1/buses/orders/events $CE "$(ev d2 order.paid "$GOOD")")
expect_status 202 "a valid order.paid" "$st"
wait_for 60 has "$WORK/data/out/orders.jsonl" '"id":"d2"' || fail "d2 was not delivered"
# a batch [accepted-but-invalid, good, good]: every one is stored, and its trace by id finds the
# offset the answer gave (an accepted event's schema message once counted as "not stored")
st=$(post /v1/buses/orders/events application/cloudevents-batch+json \
     "[$(ev ac1 order.noted "$LOW"),$(ev ac2 order.noted "$GOOD"),$(ev ac3 order.created "$GOOD")]")
expect_status 202 "a batch led by an accepted invalid event" "$st"
for id in ac1 ac2 ac3; do
    off=$(grep -o "\"id\":\"$id\",\"offset\":[0-9]*" "$WORK/answer" | sed 's/.*://')
    [ -n "$off" ] || fail "$id has no offset: $(cat "$WORK/answer")"
    if wait_for 60 sh -c "curl -s '$URL/v1/buses/orders/events/$id/trace' | grep -q '\"offset\":$off,\"id\":\"$id\"'"; then
        pass "$id's trace is at its offset $off"
    else
        fail "$id's trace: $(curl -s "$URL/v1/buses/orders/events/$id/trace")"
    fi
done
OUT="$WORK/data/out/orders.jsonl"
for id in r1 r5 p1 p4 a1 d2; do
    has "$OUT" "\"id\":\"$id\"" && pass "$id is on the bus" || fail "$id is not on the bus"
done
for id in r2 r3 r4 r8 b1 b2 p2 p3 d1; do
    has "$OUT" "\"id\":\"$id\"" && fail "$id is on the bus" || pass "$id is not on the bus"
done
DLQ="$WORK/data/orders.invalid.jsonl"
for id in p3 d1; do
    has "$DLQ" "\"id\":\"$id\"" && pass "$id is in the dead-letter file" || fail "$id is not in $DLQ"
done
has "$DLQ" '"error":"schema \"order.paid\": /data/total: minimum' && pass "the dead letter says why" \
    || fail "the dead-letter file: $(cat "$DLQ")"
[ "$(grep -c '' "$DLQ")" -eq 2 ] && pass "two dead letters" || fail "dead letters: $(cat "$DLQ")"

# ---- reload with a changed schema ------------------------------------------------------------------------
sed 's/"minimum": 20/"minimum": 30/' "$WORK/schemas/order.json" >"$WORK/schemas/o2.json" && mv "$WORK/schemas/o2.json" "$WORK/schemas/order.json"
st=$(post /v1/admin/reload application/json '')
expect_status 200 "reload" "$st"
st=$(post /v1/buses/orders/events $CE "$(ev r6 order.created "$GOOD")")
expect_status 400 "after the reload, total 25 is under the new minimum" "$st"
answer_has "the new minimum" 'minimum: 25 is less than the minimum 30'
cp "$WORK/schemas/order.json" "$WORK/schemas/order.good"
echo '{"type": 3}' >"$WORK/schemas/order.json"
st=$(post /v1/admin/reload application/json '')
expect_status 400 "a reload with a schema that does not compile is refused" "$st"
answer_has "the refusal names the file" 'order.json'
st=$(post /v1/buses/orders/events $CE "$(ev r7 order.created "$GOOD")")
expect_status 400 "the running schemas stay" "$st"

# ---- discovery -----------------------------------------------------------------------------------------
schemas() {  # schemas QUERY: GET /v1/schemas?QUERY into $WORK/schemas.json
    curl -s -o "$WORK/schemas.json" "$URL/v1/schemas?$1"
}
version_is() {  # version_is QUERY N: is the (one) schema's version N?
    schemas "$1" && grep -q "\"version\":$2," "$WORK/schemas.json"
}
Q='bus=orders&source=e2e&type=other.type'
wait_for 60 version_is "$Q" 1 && pass "discovery shows other.type at version 1" \
    || fail "discovery: $(cat "$WORK/schemas.json")"
grep -q '"events":1,' "$WORK/schemas.json" && pass "one other.type event" || fail "events: $(cat "$WORK/schemas.json")"
grep -q '"total":{"type":"integer"}' "$WORK/schemas.json" && pass "the schema describes data" \
    || fail "the schema: $(cat "$WORK/schemas.json")"
schemas "bus=nosuch"
grep -q '^{"schemas":\[\]}$' "$WORK/schemas.json" && pass "?bus= filters" || fail "?bus=nosuch: $(cat "$WORK/schemas.json")"
st=$(post /v1/buses/orders/events $CE "$(ev n1 other.type '{"total":3,"items":[],"coupon":"X1"}')")
expect_status 202 "other.type with a new field" "$st"
wait_for 60 version_is "$Q" 2 && pass "a new field bumps the version to 2" || fail "no version 2: $(cat "$WORK/schemas.json")"
grep -q '"coupon":{"type":"string"}' "$WORK/schemas.json" && pass "version 2 has the new field" \
    || fail "version 2: $(cat "$WORK/schemas.json")"
schemas "$Q&history=1"
grep -q '"history":\[{"version":1,' "$WORK/schemas.json" && pass "the previous version is kept" \
    || fail "history: $(cat "$WORK/schemas.json")"
schemas "type=order.created"
grep -q '"type":"order.created"' "$WORK/schemas.json" && ! grep -q '"type":"other.type"' "$WORK/schemas.json" \
    && pass "?type= filters" || fail "?type=: $(cat "$WORK/schemas.json")"
stop_ebd
[ -f "$WORK/data/orders.schemas.json" ] && pass "discovery saved its state" || fail "no orders.schemas.json"
mv "$WORK/schemas/order.good" "$WORK/schemas/order.json"
start_ebd
wait_for 60 version_is "$Q" 2 && pass "a restart keeps version 2" || fail "after the restart: $(cat "$WORK/schemas.json")"
grep -q '"events":2,' "$WORK/schemas.json" && pass "and its count (the read position was kept)" \
    || fail "events after the restart: $(cat "$WORK/schemas.json")"
st=$(post /v1/buses/orders/events $CE "$(ev n2 other.type '{"total":4,"items":[],"coupon":"X2"}')")
wait_for 60 sh -c "curl -s '$URL/v1/schemas?$Q' | grep -q '\"events\":3,'" && pass "discovery goes on after the restart" \
    || fail "after the restart: $(curl -s "$URL/v1/schemas?$Q")"
version_is "$Q" 2 && pass "the same shape keeps version 2" || fail "version: $(cat "$WORK/schemas.json")"
stop_ebd

# ---- ebc schema infer --------------------------------------------------------------------------------
{
    ev i1 order.created '{"total":25,"when":"2026-12-05T16:00:00Z"}'; echo
    ev i2 order.created '{"total":25.5,"extra":true,"when":"2026-12-05T16:00:01Z"}'; echo
    echo
    ev i3 other.type '{"ip":"10.0.0.1"}'; echo
} >"$WORK/events.jsonl"
"$BIN/ebc" schema infer "$WORK/events.jsonl" >"$WORK/infer.json" 2>"$WORK/infer.err" \
    && pass "ebc schema infer" || fail "ebc schema infer: $(cat "$WORK/infer.err")"
tr -d ' \t\n' <"$WORK/infer.json" >"$WORK/infer.flat"
for want in '"source":"e2e","type":"order.created","events":2' '"total":{"type":"number"}' \
            '"when":{"type":"string","format":"date-time"}' '"required":["total","when"]' \
            '"type":"other.type","events":1' '"ip":{"type":"string","format":"ipv4"}'; do
    grep -qF "$want" "$WORK/infer.flat" && pass "infer: $want" || fail "infer: no $want in $(cat "$WORK/infer.flat")"
done
printf '%s\n{"id": 1}\n' "$(ev i1 t)" >"$WORK/bad.jsonl"
"$BIN/ebc" schema infer "$WORK/bad.jsonl" >/dev/null 2>"$WORK/infer.err"
[ $? -eq 3 ] && grep -q "bad.jsonl:2: not a CloudEvent" "$WORK/infer.err" && pass "a bad line is named file:line" \
    || fail "a bad line: $(cat "$WORK/infer.err")"
finish
