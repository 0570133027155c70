#!/bin/sh
# End-to-end tests of the CloudEvents 1.0 HTTP binding at ebd's ingest (binary, structured and
# batched mode) and at an http target, case by case against the binding and the JSON format:
# what is taken and stored as what, what is refused (and then not stored), and what a target is
# sent.
#   cloudevents.sh BIN_DIR SOURCE_DIR WORK_DIR
# One daemon and one receiver on 127.0.0.1 (ports 1024-1099, apart from the other scripts');
# every wait bounded, both stopped at the end.
. "$2/tests/e2e/lib.sh"
P=$(( 1024 + ($$ % 37) * 2 )); P_RCV=$((P + 1))
URL=http://127.0.0.1:$P
DATA=$WORK/data
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

cat >"$WORK/rules.ebr" <<EOF
bus main {
  fsync interval 10ms
}
target all file "out/all.jsonl"
target unset file "out/unset.jsonl"
target rcv http "http://127.0.0.1:$P_RCV/in"
rule everything on main { match exists id to all }
rule nulls_unset on main {
  pattern { "type": ["nulls"], "subject": [{ "exists": false }], "myext": [{ "exists": false }] }
  to unset
}
target set file "out/set.jsonl"
bus side {
  fsync interval 10ms
}
target toside bus side
target sidefile file "out/side.jsonl"
rule to_side on main {
  match type == "toside"
  transform {"specversion": "1.0", "id": "side-\${id}", "source": "e2e", "type": "onside", "subject": data.missing}
  to toside
}
rule on_side on side { pattern { "subject": [{ "exists": false }] } to sidefile }
rule nulls_set on main { pattern { "type": ["nulls"], "subject": [null, "settle"] } to set }
rule deliver on main { match type == "deliver" to rcv }
EOF
"$BIN/e2e_receiver" $P_RCV "$WORK/rcv.log" &
PIDS="$PIDS $!"
"$BIN/ebd" --rules "$WORK/rules.ebr" --data "$DATA" --listen 127.0.0.1:$P >>"$WORK/ebd.log" 2>&1 &
PIDS="$PIDS $!"
wait_for "$E2E_WAIT" curl -sf "$URL/healthz" || { fail "ebd did not start"; finish; }

STORED=$DATA/out/all.jsonl
# settle ID: posts a last event, ID, and waits for it in the file target, which takes the log in
# order: what is not in the file then was not stored.
settle() {
    post /v1/buses/main/events application/cloudevents+json "$(ev "$1" x)" >/dev/null
    wait_for "$E2E_WAIT" grep -q "\"id\":\"$1\"" "$STORED" || fail "the event $1 was not stored"
}
stored() { grep "\"id\":\"$1\"" "$STORED"; }   # stored ID: the event's line in the log's copy

# binary NAME STATUS CTYPE BODY [CURL ARGS...]: a binary-mode event of type x from e2e, with
# the given headers (ce-id among them)
binary() {
    _name=$1; _want=$2; _ct=$3; _body=$4; shift 4
    _s=$(post /v1/buses/main/events "$_ct" "$_body" -H 'ce-specversion: 1.0' -H 'ce-source: e2e' \
         -H 'ce-type: x' "$@")
    expect_status "$_want" "$_name" "$_s"
}

# ---- structured and batched mode ----------------------------------------------------------------
s=$(post /v1/buses/main/events 'Application/CloudEvents+JSON; charset=UTF-8' "$(ev st1 x)")
expect_status 202 "structured: the media type in any case, with a charset" "$s"
s=$(post /v1/buses/main/events application/cloudevents+json \
    '{"specversion":"1.0","id":"null1","source":"e2e","type":"nulls","subject":null,  "myext" : null,"data":null}')
expect_status 202 "structured: null attributes are unset (json-format 2.2)" "$s"
s=$(post /v1/buses/main/events application/cloudevents-batch+json \
    '[{"specversion":"1.0","id":"null2","source":"e2e","type":"nulls","data":{"a":null}, "subject" : null},
      {"specversion":"1.0","id":"null3","source":"e2e","type":"nulls","subject":"set","data_base64":null}]')
expect_status 202 "batched: null attributes are unset" "$s"
s=$(post /v1/buses/main/events application/cloudevents+json '{"specversion":"1.0","id":7,"source":"e2e","type":"x"}')
expect_status 400 "structured: an id that is a number" "$s"
grep -q '"field":"id"' "$WORK/answer" || fail "  names id: $(cat "$WORK/answer")"
s=$(post /v1/buses/main/events application/cloudevents+json '{"specversion":"1.0","id":"ext1","source":"e2e","type":"x","myext":2.5}')
expect_status 400 "structured: an extension that is a number but no Integer" "$s"
s=$(post /v1/buses/main/events application/cloudevents-batch+json '[]')
expect_status 202 "batched: an empty batch (json-format 4.3: valid in a request)" "$s"
grep -qx '{"events":\[\]}' "$WORK/answer" && pass "  answered {\"events\":[]}" || fail "  answer: $(cat "$WORK/answer")"
s=$(post /v1/buses/main/events application/cloudevents-batch+json "[$(ev g1 x),{\"specversion\":\"1.0\",\"id\":\"g2\",\"source\":\"e2e\"}]")
expect_status 400 "batched: one event of two without a type" "$s"
s=$(post /v1/buses/main/events application/cloudevents-batch+json "$(ev g3 x)")
expect_status 400 "batched: a body that is no array" "$s"
s=$(post /v1/buses/main/events application/cloudevents+avro 'x')
expect_status 415 "an event format ebd does not read (application/cloudevents+avro)" "$s"

# ---- binary mode ----------------------------------------------------------------------------------
s=$(post /v1/buses/main/events application/json '{"a":1}' -H 'CE-SpecVersion: 1.0' -H 'Ce-Id: b-case' \
    -H 'CE-SOURCE: e2e' -H 'ce-Type: x' -H 'CE-MyExt: v')
expect_status 202 "binary: ce- header names in any case" "$s"
binary "binary: a quoted-string header value" 202 application/json '{"a":1}' -H 'ce-id: b-quoted' \
    -H 'ce-subject: "a b\"c%25d"'
binary "binary: a quoted string that does not end" 400 application/json '{"a":1}' -H 'ce-id: b-open' \
    -H 'ce-subject: "abc'
grep -q '"field":"ce-subject"' "$WORK/answer" && grep -q 'quoted string' "$WORK/answer" \
    && pass "  which says so: $(cat "$WORK/answer")" || fail "  message: $(cat "$WORK/answer")"
binary "binary: lower-case percent-encoding" 202 application/json '{"a":1}' -H 'ce-id: b-lower' \
    -H 'ce-subject: caf%c3%a9'
binary "binary: %C0%A0, an overlong UTF-8 encoding (the binding: MUST be rejected)" 400 \
    application/json '{"a":1}' -H 'ce-id: b-overlong' -H 'ce-subject: a%C0%A0b'
binary "binary: a ce-datacontenttype header beside Content-Type (3.1.1: MUST NOT)" 400 \
    application/json '{"a":1}' -H 'ce-id: b-dct' -H 'ce-datacontenttype: text/plain'
grep -q '"field":"ce-datacontenttype"' "$WORK/answer" || fail "  names the header: $(cat "$WORK/answer")"
binary "binary: a ce-data header (data is no attribute name)" 400 application/json '{"a":1}' \
    -H 'ce-id: b-data' -H 'ce-data: x'
binary "binary: a JSON body with a charset" 202 'application/json; charset=utf-8' ' {"a": [1, 2]} ' \
    -H 'ce-id: b-json'
binary "binary: a body of any other */json type" 202 'text/json' '{"t":1}' -H 'ce-id: b-json2'
printf 'by\001tes\377' >"$WORK/bytes"
binary "binary: a body of bytes" 202 application/octet-stream @"$WORK/bytes" -H 'ce-id: b-bytes'
s=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "$URL/v1/buses/main/events" -H 'Content-Type:' \
    -H 'ce-specversion: 1.0' -H 'ce-id: b-empty' -H 'ce-source: e2e' -H 'ce-type: x' --data-binary '')
expect_status 202 "binary: no body and no Content-Type" "$s"

# ---- delivery: a whole event goes to an http target in structured mode ---------------------------
s=$(post /v1/buses/main/events application/json '{"n":1}' -H 'ce-specversion: 1.0' -H 'ce-id: d1' \
    -H 'ce-source: e2e' -H 'ce-type: deliver')
expect_status 202 "an event for the http target" "$s"

settle last
leaked=""
for id in g1 g2 g3 b-overlong b-open b-dct b-data ext1; do
    stored "$id" >/dev/null && leaked="$leaked $(stored "$id")"
done
[ -z "$leaked" ] && pass "nothing of a refused request was stored" || fail "refused, yet stored:$leaked"
stored st1 >/dev/null && pass "structured event st1 stored" || fail "st1 not stored"
# A null attribute is unset (json-format 2.2): stored without it, so that rules see it unset;
# "data": null is a null payload, and stays.
[ "$(stored null1)" = '{"specversion":"1.0","id":"null1","source":"e2e","type":"nulls","data":null}' ] \
    && pass "null1 stored without its null attributes" || fail "null1: $(stored null1)"
[ "$(stored null2)" = '{"specversion":"1.0","id":"null2","source":"e2e","type":"nulls","data":{"a":null}}' ] \
    && pass "null2 (batched) stored without its null subject, its data as it came" || fail "null2: $(stored null2)"
[ "$(stored null3)" = '{"specversion":"1.0","id":"null3","source":"e2e","type":"nulls","subject":"set"}' ] \
    && pass "null3 stored without its null data_base64" || fail "null3: $(stored null3)"
# (null9 and null8, after them all, match each rule: once one is in its file, that target has
# had the others)
post /v1/buses/main/events application/cloudevents+json \
    '{"specversion":"1.0","id":"null9","source":"e2e","type":"nulls"}' >/dev/null
post /v1/buses/main/events application/cloudevents+json \
    '{"specversion":"1.0","id":"null8","source":"e2e","type":"nulls","subject":"settle"}' >/dev/null
wait_for "$E2E_WAIT" grep -q '"id":"null9"' "$DATA/out/unset.jsonl" || fail "null9 did not reach its target"
wait_for "$E2E_WAIT" grep -q '"id":"null8"' "$DATA/out/set.jsonl" || fail "null8 did not reach its target"
# A bus target's event too: its transform gives the subject null (a path that names nothing).
post /v1/buses/main/events application/cloudevents+json "$(ev ts1 toside)" >/dev/null
if wait_for "$E2E_WAIT" grep -q '"id":"side-ts1"' "$DATA/out/side.jsonl"; then
    grep '"id":"side-ts1"' "$DATA/out/side.jsonl" | grep -q subject \
        && fail "the bus target kept the null subject: $(cat "$DATA/out/side.jsonl")" \
        || pass "a bus target's event is appended without its null attributes, and matched so"
else
    fail "side-ts1 did not reach the other bus's rule: $(cat "$DATA/out/side.jsonl" 2>/dev/null)"
fi
ids() { grep -o '"id":"null[0-9]"' "$1" 2>/dev/null | tr '\n' ' '; }
[ "$(ids "$DATA/out/unset.jsonl")" = '"id":"null1" "id":"null2" "id":"null9" ' ] \
    && pass "rules see null attributes unset: exists false matches them" \
    || fail "exists false matched: $(ids "$DATA/out/unset.jsonl")"
[ "$(ids "$DATA/out/set.jsonl")" = '"id":"null8" ' ] \
    && pass "rules see null attributes unset: [null] does not match them" \
    || fail "[null] matched: $(ids "$DATA/out/set.jsonl")"
stored b-case | grep -q '"myext":"v"' && pass "b-case stored with its extension: $(stored b-case)" \
    || fail "b-case: $(stored b-case)"
stored b-quoted | grep -qF '"subject":"a b\"c%d"' && pass "quoted-string unescaped, then percent-decoded: $(stored b-quoted)" \
    || fail "b-quoted: $(stored b-quoted)"
stored b-lower | grep -q '"subject":"café"' && pass "%c3%a9 is é" || fail "b-lower: $(stored b-lower)"
# (the file target writes each event on one line, its JSON without white space)
stored b-json | grep -qF '"datacontenttype":"application/json; charset=utf-8","data":{"a":[1,2]}}' \
    && pass "a JSON body is data as JSON, its Content-Type datacontenttype: $(stored b-json)" || fail "b-json: $(stored b-json)"
stored b-json2 | grep -qF '"data":{"t":1}' && pass "text/json body kept as JSON" || fail "b-json2: $(stored b-json2)"
stored b-bytes | grep -qF '"datacontenttype":"application/octet-stream","data_base64":"YnkBdGVz/w=="' \
    && pass "bytes are data_base64: $(stored b-bytes)" || fail "b-bytes: $(stored b-bytes)"
line=$(stored b-empty)
{ [ -n "$line" ] && ! echo "$line" | grep -q '"data\|datacontenttype'; } \
    && pass "no body: no data, no datacontenttype: $line" || fail "b-empty: $line"

wait_for "$E2E_WAIT" grep -q '"id":"d1"' "$WORK/rcv.log" || fail "the receiver did not get d1"
line=$(grep '"id":"d1"' "$WORK/rcv.log")
[ "$(echo "$line" | cut -f7)" = "application/cloudevents+json" ] \
    && pass "a whole event is sent as application/cloudevents+json (the binding's structured mode)" \
    || fail "content type of a whole event: $(echo "$line" | cut -f7)"
echo "$line" | cut -f8- | grep -q '^{"specversion":"1.0","id":"d1","source":"e2e","type":"deliver",' \
    && pass "  its body the event" || fail "  body: $(echo "$line" | cut -f8-)"

finish
