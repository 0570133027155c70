#!/bin/sh
# End-to-end tests of event traces (docs/trace.md): an event delivered at its first attempt, one
# retried then delivered, one dead-lettered after its retries; each one's trace by id (with and
# without source) and by offset: received (from 127.0.0.1), matched rules, attempts with status
# and error, outcome; 404 for an unknown id; ?explain=1 naming the failing condition of a rule
# that did not match; `ebc trace` (timeline, --json, --offset, --explain) while ebd runs; the
# newest of several events with one id; traces kept across a restart; `trace off`; access rules
# without an admin token (Host, Origin, POST content); a look-up by id bounded ("truncated").
#   trace.sh BIN_DIR SOURCE_DIR WORK_DIR
# Everything runs on 127.0.0.1 (ports 28000-28999); every process started here is stopped.
. "$2/tests/e2e/lib.sh"
P=$(( 28000 + ($$ % 190) * 5 ))
P_OK=$((P + 1)); P_FLAKY=$((P + 2)); P_BAD=$((P + 3))
URL=http://127.0.0.1:$P
E2E_WAIT=${E2E_WAIT:-60}
EBD=""
cleanup() {
    for p in $EBD $PIDS; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT

receiver() {   # receiver PORT NAME ARGS...
    _port=$1; _name=$2; shift 2
    "$BIN/e2e_receiver" "$_port" "$WORK/$_name.log" "$@" &
    PIDS="$PIDS $!"
}
start_ebd() {  # start_ebd RULES
    "$BIN/ebd" --rules "$1" --data "$WORK/data" --listen 127.0.0.1:$P >>"$WORK/ebd.log" 2>&1 &
    EBD=$!
    wait_for "$E2E_WAIT" curl -sf "$URL/healthz" || { fail "ebd did not start"; finish; }
}
stop_ebd() {
    [ -n "$EBD" ] && { kill -TERM "$EBD" 2>/dev/null; wait "$EBD" 2>/dev/null; }
    EBD=""
}
# get PATH: the answer's status; its body in $WORK/answer.
get() { curl -s -o "$WORK/answer" -w '%{http_code}' "$URL$1"; }
# has TEXT...: does the last answer hold every TEXT?
has() {
    for _t in "$@"; do grep -qF -- "$_t" "$WORK/answer" || return 1; done
}
# trace_has PATH TEXT...: GET PATH answers 200 with every TEXT (traces are written every 100 ms:
# polled until they say it).
trace_has() {
    _p=$1; shift
    [ "$(get "$_p")" = 200 ] && has "$@"
}
check() {  # check NAME PATH TEXT...: waits for the trace to say every TEXT
    _n=$1; shift
    if wait_for "$E2E_WAIT" trace_has "$@"; then pass "$_n"; else fail "$_n: $(cat "$WORK/answer")"; fi
}
post_ev() {  # post_ev ID SOURCE TYPE [DATA]
    st=$(curl -s -o "$WORK/posted" -w '%{http_code}' -X POST "$URL/v1/buses/orders/events" \
         -H 'Content-Type: application/cloudevents+json' \
         --data-binary "{\"specversion\":\"1.0\",\"id\":\"$1\",\"source\":\"$2\",\"type\":\"$3\",\"data\":${4:-{\"n\":1\}}}")
    [ "$st" = 202 ] || fail "posting $1: $st $(cat "$WORK/posted")"
}

receiver $P_OK ok
receiver $P_FLAKY flaky --fail 1 --status 503
receiver $P_BAD bad --status 500
cat >"$WORK/rules.ebr" <<EOF
bus orders { trace_retention 2d }
bus quiet { trace off }
target ok http "http://127.0.0.1:$P_OK/ok" { retry none }
target flaky http "http://127.0.0.1:$P_FLAKY/flaky" {
  retry exponential(attempts: 4, first: 50ms, max: 100ms, max_age: 1h)
}
target bad http "http://127.0.0.1:$P_BAD/bad" {
  retry exponential(attempts: 2, first: 50ms, max: 100ms, max_age: 1h)
  dead_letter file "dlq/bad.jsonl"
}
rule to_ok on orders { match type == "ok" to ok }
rule to_flaky on orders {
  match type == "flaky"
  transform { "order": data.n, "kind": "flaky" }
  to flaky
}
rule to_bad on orders { match type == "bad" to bad }
rule big_orders on orders { match type == "ok" and data.n >= 100 to ok }
rule quiet_ok on quiet { match type == "ok" to ok }
target spans file "out/spans.jsonl"
rule to_spans on orders { match type == "span" to spans }
EOF
"$BIN/ebc" check "$WORK/rules.ebr" >"$WORK/check.out" 2>&1 || { fail "ebc check: $(cat "$WORK/check.out")"; finish; }
start_ebd "$WORK/rules.ebr"

post_ev e-ok shop ok            # offset 0
post_ev e-flaky shop flaky      # offset 1
post_ev e-bad shop bad          # offset 2
post_ev dup a ok                # offset 3
post_ev dup b ok                # offset 4
curl -s -o /dev/null -X POST "$URL/v1/buses/quiet/events" -H 'Content-Type: application/cloudevents+json' \
     --data-binary '{"specversion":"1.0","id":"q1","source":"shop","type":"ok","data":{"n":1}}'

# ---- by id: delivered, retried, dead-lettered -------------------------------------------------
check "delivered at the first attempt" /v1/buses/orders/events/e-ok/trace \
    '"offset":0' '"id":"e-ok"' '"source":"shop"' '"type":"ok"' '"producer":"127.0.0.1:' \
    '"matched":[{"rule":"to_ok","target":"ok","payload_bytes":' \
    '"attempt":1,"status":200,' '"error":null' \
    '"outcomes":[{"rule":"to_ok","target":"ok","state":"delivered","attempts":1}]'
has '"attempt":2' && fail "e-ok: a second attempt: $(cat "$WORK/answer")"
check "retried, then delivered" /v1/buses/orders/events/e-flaky/trace \
    '"offset":1' '"matched":[{"rule":"to_flaky","target":"flaky","payload_bytes":' \
    '"attempt":1,"status":503,' "answered 503" '"attempt":2,"status":200,' \
    '"state":"delivered","attempts":2'
check "dead-lettered after its retries" /v1/buses/orders/events/e-bad/trace \
    '"offset":2' '"attempt":1,"status":500,' '"attempt":2,"status":500,' \
    '"target":"dlq/bad.jsonl"' '"dead_letter":true' \
    '"state":"dead_lettered","dead_letter":"dlq/bad.jsonl","error":"POST http://127.0.0.1:'"$P_BAD"'/bad answered 500","attempts":2'
wait_for "$E2E_WAIT" lines_ge "$WORK/data/dlq/bad.jsonl" 1 && pass "the dead letter is in its file" \
    || fail "no dead letter in dlq/bad.jsonl"

# ---- with a source; by offset; unknown ones ----------------------------------------------------
check "by id and source" "/v1/buses/orders/events/e-ok/trace?source=shop" '"offset":0'
st=$(get "/v1/buses/orders/events/e-ok/trace?source=elsewhere")
expect_status 404 "an id with another source" "$st"
st=$(get /v1/buses/orders/events/no-such-id/trace)
expect_status 404 "an unknown id" "$st"
has '"error":"no trace of an event with id' && pass "the 404 says why" || fail "404 body: $(cat "$WORK/answer")"
check "by offset" /v1/buses/orders/offsets/1/trace '"id":"e-flaky"' '"state":"delivered","attempts":2'
st=$(get /v1/buses/orders/offsets/999/trace)
expect_status 404 "an offset beyond the log" "$st"
st=$(get /v1/buses/orders/offsets/x1/trace)
expect_status 400 "an offset that is not a number" "$st"
st=$(get /v1/buses/nobus/offsets/0/trace)
expect_status 404 "an unknown bus" "$st"
check "one id, two events: the newest, the other listed" /v1/buses/orders/events/dup/trace \
    '"offset":4' '"source":"b"' '"others":[{"offset":3,"source":"a",'
check "one id, its source picks the older" "/v1/buses/orders/events/dup/trace?source=a" '"offset":3'
has '"others"' && fail "dup with source a lists others: $(cat "$WORK/answer")"

# ---- access without an admin token: no DNS rebinding, no cross-site requests ---------------------
code() { curl -s -o "$WORK/answer" -w '%{http_code}' "$@"; }
T=/v1/buses/orders/offsets/0/trace
expect_status 403 "a foreign Host" "$(code -H 'Host: evil.example' "$URL$T")"
has 'Host must name the loopback listener' && pass "the 403 says why" || fail "403 body: $(cat "$WORK/answer")"
expect_status 403 "a foreign Host with a port" "$(code -H "Host: evil.example:$P" "$URL$T")"
expect_status 200 "Host: localhost:PORT" "$(code -H "Host: localhost:$P" "$URL$T")"
expect_status 200 "Host: [::1]" "$(code -H 'Host: [::1]' "$URL$T")"
expect_status 403 "a foreign Origin" "$(code -H 'Origin: http://evil.example' "$URL$T")"
expect_status 403 "Origin: null" "$(code -H 'Origin: null' "$URL$T")"
expect_status 200 "the same Origin" "$(code -H "Origin: http://127.0.0.1:$P" "$URL$T")"
expect_status 403 "a text/plain POST (a simple cross-site request)" \
    "$(code -X POST -H 'Content-Type: text/plain' --data-binary '{"since":"1h"}' "$URL/v1/buses/orders/replays")"
expect_status 404 "a text/plain POST with X-Ebr-Request passes (to the handler)" \
    "$(code -X POST -H 'Content-Type: text/plain' -H 'X-Ebr-Request: 1' --data-binary '{"since":"1h"}' \
      "$URL/v1/buses/nobus/replays")"
expect_status 404 "a JSON POST passes (to the handler)" \
    "$(code -X POST -H 'Content-Type: application/json' --data-binary '{"since":"1h"}' "$URL/v1/buses/nobus/replays")"
expect_status 403 "a reload with a foreign Host" "$(code -X POST -H 'Host: evil.example' "$URL/v1/admin/reload")"
expect_status 403 "a reload with a foreign Origin" \
    "$(code -X POST -H 'Origin: http://evil.example' "$URL/v1/admin/reload")"
expect_status 200 "the console's files are open" "$(code -H 'Host: evil.example' "$URL/ui/")"

# ---- explain ------------------------------------------------------------------------------------
check "explain names the failing condition" "/v1/buses/orders/events/e-ok/trace?explain=1" \
    '"not_matched":[' '{"rule":"to_flaky","why":"no match: type == \"flaky\" is false (' \
    '{"rule":"big_orders","why":"no match: data.n >= 100 is false ('
has '"rule":"quiet_ok"' && fail "explain names a rule of another bus"
has '"rule":"to_ok","why"' && fail "explain names a rule that matched"
get /v1/buses/orders/events/e-ok/trace >/dev/null
has '"not_matched"' && fail "not_matched without explain=1"

# ---- a bus with trace off -------------------------------------------------------------------------
wait_for "$E2E_WAIT" lines_ge "$WORK/ok.log" 4 || fail "the ok receiver did not get 4 requests"
st=$(get /v1/buses/quiet/events/q1/trace)
expect_status 404 "trace off: no trace by id" "$st"
[ -d "$WORK/data/trace/quiet" ] && fail "trace off: a trace log for bus quiet"

# ---- ebc trace, read-only while ebd runs ----------------------------------------------------------
"$BIN/ebc" trace --data "$WORK/data" orders e-flaky >"$WORK/tl.out" 2>&1
if grep -q '^event e-flaky (source shop, type flaky), bus orders, offset 1' "$WORK/tl.out" &&
   grep -q 'received from 127\.0\.0\.1:' "$WORK/tl.out" &&
   grep -q 'matched rule to_flaky -> target flaky' "$WORK/tl.out" &&
   grep -q 'attempt 1 to_flaky -> flaky: failed, status 503' "$WORK/tl.out" &&
   grep -q 'attempt 2 to_flaky -> flaky: ok, status 200' "$WORK/tl.out" &&
   grep -q 'outcome  to_flaky -> flaky: delivered after 2 attempts' "$WORK/tl.out"; then
    pass "ebc trace prints the timeline"
else
    fail "ebc trace timeline: $(cat "$WORK/tl.out")"
fi
"$BIN/ebc" trace --data "$WORK/data" orders --offset 2 --json >"$WORK/answer" 2>&1
has '"id":"e-bad"' '"state":"dead_lettered"' && pass "ebc trace --offset --json" \
    || fail "ebc trace --offset --json: $(cat "$WORK/answer")"
"$BIN/ebc" trace --data "$WORK/data" orders e-ok --explain "$WORK/rules.ebr" >"$WORK/tl.out" 2>&1
grep -q 'not matched  big_orders: no match: data.n >= 100 is false (.*rules.ebr:' "$WORK/tl.out" \
    && pass "ebc trace --explain" || fail "ebc trace --explain: $(cat "$WORK/tl.out")"
"$BIN/ebc" trace --data "$WORK/data" orders nope >"$WORK/tl.out" 2>&1
[ $? -eq 3 ] && grep -q 'no trace of an event' "$WORK/tl.out" && pass "ebc trace: an unknown id" \
    || fail "ebc trace unknown id: $(cat "$WORK/tl.out")"

# ---- a reload: the old traces keep their rules' names, new events are traced by the new rules ---
sed 's/rule to_ok on orders/rule to_ok_v2 on orders/' "$WORK/rules.ebr" >"$WORK/rules2.ebr"
cp "$WORK/rules2.ebr" "$WORK/rules.ebr"
st=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "$URL/v1/admin/reload")
expect_status 200 "reload" "$st"
post_ev e-reloaded shop ok      # offset 5
check "a trace after a reload names the new rule" /v1/buses/orders/events/e-reloaded/trace \
    '"matched":[{"rule":"to_ok_v2","target":"ok"' '"state":"delivered"'
check "a trace from before the reload keeps the old name" /v1/buses/orders/events/e-ok/trace \
    '"matched":[{"rule":"to_ok","target":"ok"'

# ---- a restart keeps the traces ----------------------------------------------------------------
stop_ebd
"$BIN/ebc" trace --data "$WORK/data" orders e-bad --json >"$WORK/answer" 2>&1
has '"state":"dead_lettered"' && pass "ebc trace with ebd stopped" || fail "ebc trace, ebd stopped: $(cat "$WORK/answer")"
start_ebd "$WORK/rules.ebr"
check "a trace survives a restart" /v1/buses/orders/events/e-flaky/trace '"producer":"127.0.0.1:' \
    '"attempt":1,"status":503,' '"state":"delivered","attempts":2'
post_ev e-after shop ok
check "traces go on after the restart" /v1/buses/orders/events/e-after/trace '"offset":6' \
    '"state":"delivered"'

# ---- a bounded look-up by id: 300 events with one id -----------------------------------------------
# (the look-up reads the received trace log newest first and stops at 256 candidates: the newest
# is found, 20 others listed, and the answer says "truncated")
i=0; batch=""
while [ $i -lt 300 ]; do
    batch="$batch${batch:+,}{\"specversion\":\"1.0\",\"id\":\"many\",\"source\":\"s$i\",\"type\":\"none\"}"
    i=$((i + 1))
done
st=$(curl -s -o "$WORK/posted" -w '%{http_code}' -X POST "$URL/v1/buses/orders/events" \
     -H 'Content-Type: application/cloudevents-batch+json' --data-binary "[$batch]")
expect_status 202 "a batch of 300 events with one id" "$st"
check "one id, 300 events: the newest, truncated" /v1/buses/orders/events/many/trace \
    '"offset":306,' '"source":"s299"' '"truncated":true'
n=$(grep -o '{"offset":[0-9]*,"source"' "$WORK/answer" | wc -l)
[ "$n" -eq 20 ] && pass "20 others listed" || fail "others: $n: $(cat "$WORK/answer")"

# ---- runs of events: one record for many (a router's matched span, a delivered batch) ------------
# 40 events to a file target in one batch (offsets 307-346), each one byte longer than the one
# before (and "sp0" an id one byte shorter than "sp20"); the 31st matches nothing, which breaks
# the run.  Each event's trace is its own.
i=0; batch=""
while [ $i -lt 40 ]; do
    ty=span; [ $i -eq 30 ] && ty=none
    batch="$batch${batch:+,}{\"specversion\":\"1.0\",\"id\":\"sp$i\",\"source\":\"s\",\"type\":\"$ty\",\"data\":{\"pad\":\"$(printf "%${i}s" | tr ' ' x)\"}}"
    i=$((i + 1))
done
st=$(curl -s -o "$WORK/posted" -w '%{http_code}' -X POST "$URL/v1/buses/orders/events" \
     -H 'Content-Type: application/cloudevents-batch+json' --data-binary "[$batch]")
expect_status 202 "a batch of 40 events to a file target" "$st"
payload_of() {  # payload_of OFFSET: the payload_bytes its trace gives, once it says delivered
    wait_for "$E2E_WAIT" trace_has "/v1/buses/orders/offsets/$1/trace" '"state":"delivered","attempts":1' \
        && sed -n 's/.*"matched":\[{"rule":"to_spans","target":"spans","payload_bytes":\([0-9]*\)}.*/\1/p' "$WORK/answer"
}
for k in 0 20 21 39; do
    eval "pl$k=\$(payload_of $((307 + k)))"
done
[ -n "$pl0" ] && [ $((pl20 - pl0)) -eq 21 ] && [ $((pl21 - pl20)) -eq 1 ] && [ $((pl39 - pl21)) -eq 18 ] \
    && pass "each event of a run has its own payload size ($pl0, $pl20, $pl21, $pl39 bytes)" \
    || fail "payload sizes in a run: '$pl0' '$pl20' '$pl21' '$pl39'"
check "an event in a run: received, matched, delivered at the first attempt" \
    /v1/buses/orders/offsets/327/trace '"id":"sp20"' '"producer":"127.0.0.1:' \
    '"matched":[{"rule":"to_spans","target":"spans","payload_bytes":' '"attempt":1,"status":null,' \
    '"outcomes":[{"rule":"to_spans","target":"spans","state":"delivered","attempts":1}]'
check "the event that broke the run matched nothing" /v1/buses/orders/offsets/337/trace \
    '"id":"sp30"' '"matched":[]'
check "the run goes on after it" /v1/buses/orders/offsets/338/trace '"id":"sp31"' \
    '"state":"delivered","attempts":1'
"$BIN/ebc" trace --data "$WORK/data" orders sp20 >"$WORK/ebc-span.out" 2>&1 \
    && grep -q 'spans' "$WORK/ebc-span.out" && grep -q 'delivered' "$WORK/ebc-span.out" \
    && pass "ebc trace reads an event of a run: $(grep -c . "$WORK/ebc-span.out") lines" \
    || fail "ebc trace of sp20: $(cat "$WORK/ebc-span.out")"
stop_ebd
finish
