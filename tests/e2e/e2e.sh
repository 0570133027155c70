#!/bin/sh
# End-to-end tests of ebd: the real daemon on loopback ports, real HTTP in, real receivers out.
#   e2e.sh BIN_DIR SOURCE_DIR WORK_DIR
# BIN_DIR holds ebd, ebc and e2e_receiver.  Every server is started here on 127.0.0.1 and
# stopped at the end; nothing leaves the machine.
. "$2/tests/e2e/lib.sh"
# Ports below Linux's ephemeral range (32768 and up), where an outgoing connection's local port
# could be taking one of them when a receiver binds it.
BASE=$(( 20000 + $$ % 5980 ))   # 26000-31999: the event center's tests
P_EBD=$BASE; P_OK=$((BASE + 1)); P_FLAKY=$((BASE + 2)); P_BAD=$((BASE + 3)); P_DOWN=$((BASE + 4))
P_RA=$((BASE + 5)); P_NODE=$((BASE + 6)); P_SLOW=$((BASE + 7)); P_ORDER=$((BASE + 8)); P_BURST=$((BASE + 9)); P_RATE=$((BASE + 10)); P_HOLD=$((BASE + 11))
URL=http://127.0.0.1:$P_EBD
cleanup() { for p in $PIDS $(cat "$WORK"/ebd.pid 2>/dev/null); do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

# No check rests on how fast the machine is: each waits for something it can see (a line in a
# log, a file), never for a time to pass, and no duration is bounded from above (wait_for and
# E2E_WAIT are in lib.sh).

# count_ge PATTERN FILE N: N matching lines?
count_ge() { [ -f "$2" ] && [ "$(grep -c -- "$1" "$2")" -ge "$3" ]; }

receiver() {   # receiver PORT NAME ARGS...
    port=$1; name=$2; shift 2
    "$BIN/e2e_receiver" "$port" "$WORK/$name.log" "$@" &
    PIDS="$PIDS $!"
}

start_ebd() {  # start_ebd RULES DATA
    "$BIN/ebd" --rules "$1" --data "$2" --listen 127.0.0.1:$P_EBD >>"$WORK/ebd.log" 2>&1 &
    echo $! >"$WORK/ebd.pid"
    wait_for "$E2E_WAIT" curl -sf "$URL/healthz" || { fail "ebd did not start"; cat "$WORK/ebd.log"; exit 1; }
}

stop_ebd() {   # stop_ebd [SIGNAL]
    pid=$(cat "$WORK/ebd.pid")
    kill -"${1:-TERM}" "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    rm -f "$WORK/ebd.pid"
}

# post_each PREFIX TYPE FROM TO: posts events PREFIXFROM ... PREFIXTO of TYPE to bus main, one
# request each and in order, from one curl (a process per event made a loaded machine spend
# minutes here); prints each id with the status it got.
post_each() {
    _k=$3; _cfg=$WORK/each.cfg
    : >"$_cfg"
    while [ "$_k" -le "$4" ]; do
        ev "$1$_k" "$2" >"$WORK/each.$_k.json"
        [ -s "$_cfg" ] && echo next >>"$_cfg"
        printf 'url = "%s/v1/buses/main/events"\nrequest = "POST"\noutput = "/dev/null"\n' "$URL" >>"$_cfg"
        printf 'header = "Content-Type: application/cloudevents+json"\ndata-binary = "@%s"\n' \
            "$WORK/each.$_k.json" >>"$_cfg"
        printf 'write-out = "%s %%{http_code}\\n"\n' "$1$_k" >>"$_cfg"
        _k=$((_k + 1))
    done
    curl -s -K "$_cfg"
}

export E2E_TOKEN=s3cret-0123456789abcdef E2E_SECRET=hmac-key E2E_HEADER=from-env E2E_ADMIN=adm1n-0123456789abcdef
cat >"$WORK/rules.ebr" <<EOF
server {
  admin_token env("E2E_ADMIN")
  delivery_queue 1024
}
bus main {
  fsync interval 10ms
}
bus secure {
  token env("E2E_TOKEN")
}
bus small {
  max_event_size 1KiB
}

target ok http "http://127.0.0.1:$P_OK/ok" {
  sign hmac_sha256(secret: env("E2E_SECRET"))
  header "X-E2e" = env("E2E_HEADER")
}
target flaky http "http://127.0.0.1:$P_FLAKY/flaky" {
  retry exponential(attempts: 5, first: 100ms, max: 400ms, max_age: 1h)
}
target bad http "http://127.0.0.1:$P_BAD/bad" {
  retry exponential(attempts: 5, first: 100ms, max: 400ms, max_age: 1h)
  dead_letter file "dlq/bad.jsonl"
}
target down http "http://127.0.0.1:$P_DOWN/down" {
  retry exponential(attempts: 3, first: 50ms, max: 100ms, max_age: 1h)
  dead_letter file "dlq/down.jsonl"
}
target ra http "http://127.0.0.1:$P_RA/ra" {
  retry exponential(attempts: 3, first: 50ms, max: 5s, max_age: 1h)
}
target node http "http://127.0.0.1:$P_NODE/node"
target slow http "http://127.0.0.1:$P_SLOW/slow" {
  timeout 10m
}
target ordered http "http://127.0.0.1:$P_ORDER/ordered" {
  concurrency 1
}
target burst http "http://127.0.0.1:$P_BURST/burst" {
  concurrency 1
}
target rated http "http://127.0.0.1:$P_RATE/rated" {
  rate_limit 5
}
target hold http "http://127.0.0.1:$P_HOLD/hold" {
  retry exponential(attempts: 5, first: 1s, max: 2h, max_age: 24h)
}
target all file "out/all.jsonl"
target secured file "out/secure.jsonl"
target run exec "cat >> \"\$1\"; echo >> \"\$1\"" {
  args ["$WORK/exec.out"]
}
target forward bus small
target smallfile file "out/small.jsonl"

rule to_ok on main { match type == "ok" to ok }
rule to_flaky on main { match type == "flaky" to flaky }
rule to_bad on main { match type == "bad" to bad }
rule to_down on main { match type == "down" to down }
rule to_ra on main { match type == "ra" to ra }
rule to_node on main { match source == "npm" to node }
rule to_slow on main { match type == "slow" to slow }
rule to_ordered on main { match type == "seq" to ordered }
rule to_burst on main { match type == "burst" to burst }
rule to_rated on main { match type == "rated" to rated }
rule to_hold on main { match type == "hold" to hold }
rule everything on main { match exists id to all }
rule sec on secure { match exists id to secured }
rule to_exec on main { match type == "exec" to run }
rule to_bus on main {
  match type == "forward"
  transform {"specversion": "1.0", "id": "fwd-\${\$id}", "source": "e2e.forward", "type": "forwarded"}
  to forward
}
rule on_small on small { match exists id to smallfile }
EOF

receiver $P_OK ok
receiver $P_FLAKY flaky --fail 2
receiver $P_BAD bad --status 400
receiver $P_DOWN down --status 500
receiver $P_RA ra --fail 1 --status 503 --retry-after 1
receiver $P_NODE node
receiver $P_SLOW slow --arrived "$WORK/slow.arrived" --hold "$WORK/slow.release"
receiver $P_ORDER ordered --delay 20
receiver $P_BURST burst --delay 2
receiver $P_RATE rated
receiver $P_HOLD hold --fail 1 --status 503 --retry-after 3600
DATA=$WORK/data
start_ebd "$WORK/rules.ebr" "$DATA"

# ---- ingest: every mode, every error code ----------------------------------------------------
s=$(post /v1/buses/main/events application/cloudevents+json "$(ev s1 ok)")
expect_status 202 "structured event" "$s"
grep -q '{"events":\[{"id":"s1","offset":0}\]}' "$WORK/answer" || fail "structured answer: $(cat "$WORK/answer")"
s=$(post /v1/buses/main/events "application/json; charset=utf-8" '{"n": 2, "s": "caf\u00e9"}' \
    -H 'ce-specversion: 1.0' -H 'ce-id: b1' -H 'ce-source: e2e' -H 'ce-type: ok' \
    -H 'ce-subject: a%20b%C3%A9%25' -H 'ce-traceparent: 00-abc')
expect_status 202 "binary event" "$s"
s=$(post /v1/buses/main/events application/cloudevents-batch+json "[$(ev t1 x),$(ev t2 x)]")
expect_status 202 "batch of two" "$s"
grep -q '"id":"t2","offset":3' "$WORK/answer" || fail "batch answer: $(cat "$WORK/answer")"
s=$(post /v1/buses/main/events text/plain 'plain text body' -H 'ce-specversion: 1.0' \
    -H 'ce-id: b2' -H 'ce-source: e2e' -H 'ce-type: x')
expect_status 202 "binary event with a text body" "$s"

s=$(post /v1/buses/main/events application/cloudevents+json '{"specversion":"1.0","source":"e2e","type":"x"}')
expect_status 400 "missing id" "$s"
grep -q '"field":"id"' "$WORK/answer" || fail "400 names the field: $(cat "$WORK/answer")"
s=$(post /v1/buses/main/events application/cloudevents+json '{"specversion":"1.0",')
expect_status 400 "invalid JSON" "$s"
s=$(post /v1/buses/main/events application/json '{"a":1}')
expect_status 400 "binary mode without ce-specversion" "$s"
s=$(post /v1/buses/main/events application/cloudevents+json '{"specversion":"0.3","id":"x","source":"e2e","type":"x"}')
expect_status 400 "specversion 0.3" "$s"
s=$(post /v1/buses/main/events application/cloudevents+json '{"specversion":"1.0","id":"x","source":"e2e","type":"x","data":1,"data_base64":"AA=="}')
expect_status 400 "data and data_base64" "$s"
s=$(post /v1/buses/main/events application/cloudevents+json '{"specversion":"1.0","id":"x","source":"e2e","type":"x","Bad_Name":1}')
expect_status 400 "extension name with capitals" "$s"
s=$(post /v1/buses/main/events application/cloudevents+json '{"specversion":"1.0","id":"x","source":"e2e","type":"x","time":"yesterday"}')
expect_status 400 "time not RFC 3339" "$s"
s=$(post /v1/buses/main/events application/cloudevents+json '{"specversion":"1.0","id":"a2","source":"e2e","type":"x","id":"a3"}')
expect_status 400 "an attribute given twice" "$s"
s=$(post /v1/buses/main/events application/json '{}' -H 'ce-specversion: 1.0' -H 'ce-id: a2' -H 'ce-id: a3' -H 'ce-source: e2e' -H 'ce-type: x')
expect_status 400 "a ce- header given twice" "$s"
s=$(post /v1/buses/main/events application/cloudevents-batch+json "[$(ev g1 x),{\"id\":\"bad\"}]")
expect_status 400 "batch with one bad event" "$s"
s=$(post /v1/buses/secure/events application/cloudevents+json "$(ev k1 x)")
expect_status 401 "no token" "$s"
s=$(post /v1/buses/secure/events application/cloudevents+json "$(ev k2 x)" -H 'Authorization: Bearer wrong')
expect_status 403 "wrong token" "$s"
s=$(post /v1/buses/secure/events application/cloudevents+json "$(ev k3 x)" -H "Authorization: Bearer $E2E_TOKEN")
expect_status 202 "right token" "$s"
s=$(post /v1/buses/nope/events application/cloudevents+json "$(ev n1 x)")
expect_status 404 "unknown bus" "$s"
big=$(head -c 2000 /dev/zero | tr '\0' 'a')
s=$(post /v1/buses/small/events application/cloudevents+json "$(ev big1 x "\"$big\"")")
expect_status 413 "event over max_event_size" "$s"
s=$(post /v1/buses/main/events application/cloudevents+xml '<event/>')
expect_status 415 "unsupported content type" "$s"
s=$(post /v1/buses/main/put-events application/json "{\"entries\":[$(ev p1 x),{\"id\":\"p2\"},$(ev p3 x)]}")
expect_status 200 "put-events" "$s"
grep -q '"failed_entry_count":1' "$WORK/answer" && grep -q '"id":"p3","offset"' "$WORK/answer" \
    || fail "put-events answer: $(cat "$WORK/answer")"
# Nothing of a refused request was stored: the log holds exactly what was acknowledged.
"$BIN/ebc" log dump "$DATA/buses/main" --json >"$WORK/dump" 2>&1
n=$(wc -l <"$WORK/dump")
[ "$n" -eq 7 ] && pass "the log holds the 7 acknowledged events" || fail "the log holds $n events, not 7"
grep -q '"id":"b1".*"subject":"a bé%","traceparent":"00-abc","datacontenttype":"application/json; charset=utf-8","data":{"n": 2, "s": "caf\\u00e9"}' "$WORK/dump" \
    && pass "binary mode: headers percent-decoded, JSON data kept as sent" || fail "binary event stored as: $(grep b1 "$WORK/dump")"
grep -q '"id":"b2".*"data":"plain text body"' "$WORK/dump" && pass "binary mode: text body as a string" \
    || fail "text event stored as: $(grep b2 "$WORK/dump")"

# ---- delivery -------------------------------------------------------------------------------
post /v1/buses/main/events application/cloudevents+json "$(ev f1 flaky)" >/dev/null
post /v1/buses/main/events application/cloudevents+json "$(ev d1 bad)" >/dev/null
post /v1/buses/main/events application/cloudevents+json "$(ev x1 down)" >/dev/null
post /v1/buses/main/events application/cloudevents+json "$(ev r1 ra)" >/dev/null
wait_for "$E2E_WAIT" lines_ge "$WORK/flaky.log" 3 || fail "flaky: $(wc -l <"$WORK/flaky.log") requests"
if [ "$(cut -f3 "$WORK/flaky.log" | paste -sd,)" = "500,500,200" ]; then pass "retried twice after 500s, then delivered"
else fail "flaky receiver saw: $(cut -f3 "$WORK/flaky.log" | paste -sd,)"; fi
# The wait ebd chose before attempt n+1 (it logs it) is within min(max, first x 2^(n-1)) =
# 100, 200 ms, and the receiver saw that attempt no sooner than the wait after the failure
# (less 1 ms of rounding).
grep 'msg="delivery failed, will retry" rule=to_flaky ' "$WORK/ebd.log" \
    | sed -n 's/.* attempt=\([0-9]*\) wait_ms=\([0-9]*\) .*/\1 \2/p' >"$WORK/flaky.waits"
bounds=""; bad=""
while read -r n w; do
    cap=$((100 << (n - 1))); [ $cap -gt 400 ] && cap=400
    ta=$(sed -n "${n}p" "$WORK/flaky.log" | cut -f1); tb=$(sed -n "$((n + 1))p" "$WORK/flaky.log" | cut -f1)
    bounds="$bounds attempt $n: wait $w ms <= $cap ms, next request $((tb - ta)) ms later;"
    { [ "$w" -le $cap ] && [ $((tb - ta)) -ge $((w - 1)) ]; } || bad=yes
done <"$WORK/flaky.waits"
[ "$(grep -c '' "$WORK/flaky.waits")" -eq 2 ] && [ -z "$bad" ] && pass "two retries within their bounds:$bounds" \
    || fail "retries out of their bounds (first 100 ms, max 400 ms):$bounds $(cat "$WORK/flaky.waits")"
grep -q '"id":"f1"' "$WORK/flaky.log" || fail "flaky did not get the event"

wait_for "$E2E_WAIT" test -s "$DATA/dlq/bad.jsonl" || fail "no dead letter for a 400"
[ "$(wc -l <"$WORK/bad.log")" -eq 1 ] && pass "400 is not retried" || fail "400 retried: $(wc -l <"$WORK/bad.log") requests"
grep -q '"event":{"specversion":"1.0","id":"d1".*"rule":"to_bad","target":"bad","status":400,"error":"POST http://127.0.0.1:[0-9]*/bad answered 400","attempts":1,"first_attempt":"20[0-9-]*T[0-9:.]*Z","last_attempt"' \
    "$DATA/dlq/bad.jsonl" && pass "dead letter: event, rule, target, status, error, attempts, times" \
    || fail "dead letter: $(cat "$DATA/dlq/bad.jsonl")"
wait_for "$E2E_WAIT" test -s "$DATA/dlq/down.jsonl" || fail "no dead letter after exhausted retries"
[ "$(wc -l <"$WORK/down.log")" -eq 3 ] && pass "500s retried up to the 3 attempts" || fail "down saw $(wc -l <"$WORK/down.log") requests"
grep -q '"status":500,.*"attempts":3' "$DATA/dlq/down.jsonl" && pass "exhausted: dead letter with 3 attempts" \
    || fail "down dead letter: $(cat "$DATA/dlq/down.jsonl")"
wait_for "$E2E_WAIT" lines_ge "$WORK/ra.log" 2 || fail "Retry-After: no second request"
a=$(sed -n 1p "$WORK/ra.log" | cut -f1); b=$(sed -n 2p "$WORK/ra.log" | cut -f1)
[ $((b - a)) -ge 950 ] && pass "Retry-After: 1 honoured ($((b - a)) ms)" || fail "Retry-After ignored: $((b - a)) ms"

wait_for "$E2E_WAIT" grep -q '"id":"b1"' "$WORK/ok.log" || fail "ok receiver did not get b1"
line=$(grep '"id":"s1"' "$WORK/ok.log")
sig=$(echo "$line" | cut -f4); ts=$(echo "$line" | cut -f5); body=$(echo "$line" | cut -f8-)
[ "$(echo "$line" | cut -f6)" = "from-env" ] && pass "header value from env()" || fail "X-E2e header: $(echo "$line" | cut -f6)"
[ "$(echo "$line" | cut -f7)" = "application/cloudevents+json" ] && pass "a whole event goes as application/cloudevents+json" || fail "content type: $(echo "$line" | cut -f7)"
case "$sig" in t=$ts,v1=*) pass "signed: $sig" ;; *) fail "signature header: '$sig' (timestamp '$ts')" ;; esac
if command -v openssl >/dev/null 2>&1; then
    want=$(printf '%s.%s' "$ts" "$body" | openssl dgst -sha256 -hmac "$E2E_SECRET" | sed 's/^.* //')
    [ "$sig" = "t=$ts,v1=$want" ] && pass "HMAC-SHA256 signature verifies" || fail "signature $sig, expected v1=$want"
fi
wait_for "$E2E_WAIT" grep -q '"id":"k3"' "$DATA/out/secure.jsonl" && pass "secured bus delivered" || fail "secure bus not delivered"
wait_for "$E2E_WAIT" lines_ge "$DATA/out/all.jsonl" 11 || fail "file target: $(grep -c . "$DATA/out/all.jsonl") lines"

post /v1/buses/main/events application/cloudevents+json "$(ev ex1 exec '{"cmd":"ran"}')" >/dev/null
wait_for "$E2E_WAIT" grep -q '"id":"ex1"' "$WORK/exec.out" && pass "exec target: the payload on its stdin" \
    || fail "exec target: $(cat "$WORK/exec.out" 2>/dev/null)"
post /v1/buses/main/events application/cloudevents+json "$(ev fw1 forward)" >/dev/null
wait_for "$E2E_WAIT" grep -q '"id":"fwd-fw1","source":"e2e.forward"' "$DATA/out/small.jsonl" \
    && pass "bus target: the transformed event appended to another bus and routed there" \
    || fail "bus target: $(cat "$DATA/out/small.jsonl" 2>/dev/null)"

# A slow target: its deliveries overlap (16 in flight by default) and hold nothing else back.
# The slow receiver answers nothing until slow.release exists: 10 requests arrived and none
# answered is 10 in flight at once, and the ok target delivers while they all wait.
j=0; while [ $j -lt 10 ]; do post /v1/buses/main/events application/cloudevents+json "$(ev slow$j slow)" >/dev/null; j=$((j + 1)); done
wait_for "$E2E_WAIT" lines_ge "$WORK/slow.arrived" 10
post /v1/buses/main/events application/cloudevents+json "$(ev after-slow ok)" >/dev/null
wait_for "$E2E_WAIT" grep -q '"id":"after-slow"' "$WORK/ok.log"
arrived=$(grep -c '' "$WORK/slow.arrived"); answered=$(grep -c '' "$WORK/slow.log")
grep -q '"id":"after-slow"' "$WORK/ok.log" && [ "$answered" -eq 0 ] \
    && pass "a slow target holds back no other target (ok delivered while slow answered none)" \
    || fail "the ok target was not delivered while the slow one held its requests ($answered answered)"
[ "$arrived" -eq 10 ] && [ "$answered" -eq 0 ] && pass "10 deliveries to a slow target overlap (10 in flight at once)" \
    || fail "deliveries to a slow target: $arrived in flight at once (of 10), $answered answered"
touch "$WORK/slow.release"
post /v1/buses/main/events application/cloudevents+json "$(ev slow-end slow)" >/dev/null
wait_for "$E2E_WAIT" grep -q '"id":"slow-end"' "$WORK/slow.log"
got=$(grep -o '"id":"slow[0-9]*"' "$WORK/slow.log" | sort | uniq -c | awk '{ print $1 }' | sort -u | paste -sd,)
[ "$(grep -c '"id":"slow[0-9]*"' "$WORK/slow.log")" -eq 10 ] && [ "$got" = 1 ] \
    && pass "released, the 10 slow deliveries are answered, each once" \
    || fail "slow target after the release: $(grep -o '"id":"slow[0-9]*"' "$WORK/slow.log" | sort | uniq -c | paste -sd,)"
j=0; while [ $j -lt 20 ]; do post /v1/buses/main/events application/cloudevents+json "$(ev seq$j seq)" >/dev/null; j=$((j + 1)); done
wait_for "$E2E_WAIT" lines_ge "$WORK/ordered.log" 20
got=$(grep -o '"id":"seq[0-9]*"' "$WORK/ordered.log" | tr -dc '0-9\n' | paste -sd,)
[ "$got" = "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19" ] && pass "concurrency 1 keeps the order" \
    || fail "concurrency 1: order $got"

# rate_limit 5: ten events take at least about a second (five at once, then five a second).
# Measured from the post, not from the first arrival: on a busy machine the first delivery
# can arrive late (its connection) while the later ones keep the bucket's pace, so the span
# between arrivals is no lower bound; the tenth cannot arrive before the bucket allowed it.
j=0; b="["; while [ $j -lt 10 ]; do b="$b$( [ $j -gt 0 ] && echo ,)$(ev rated$j rated)"; j=$((j + 1)); done
a=$(date +%s%3N)
post /v1/buses/main/events application/cloudevents-batch+json "$b]" >/dev/null
wait_for "$E2E_WAIT" lines_ge "$WORK/rated.log" 10
b=$(sed -n 10p "$WORK/rated.log" | cut -f1)
[ $((b - a)) -ge 800 ] && pass "rate_limit 5: the tenth delivery $((b - a)) ms after the post (>= 800 ms)" \
    || fail "rate_limit 5: the tenth delivery $((b - a)) ms after the post"

# A burst larger than a worker's queue (delivery_queue 1024): the router stops queueing for it, the worker
# reads the log itself and rejoins the router; every event once, in order.
seq 0 1499 | awk '{ printf "%s{\"specversion\":\"1.0\",\"id\":\"burst%d\",\"source\":\"e2e\",\"type\":\"burst\"}", (NR > 1 ? "," : "["), $1 } END { print "]" }' >"$WORK/burst.json"
s=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "$URL/v1/buses/main/events" \
    -H 'Content-Type: application/cloudevents-batch+json' --data-binary @"$WORK/burst.json")
expect_status 202 "a batch of 1500 events" "$s"
wait_for "$E2E_WAIT" grep -q 'delivery fell behind: reading the log" cursor=to_burst.burst' "$WORK/ebd.log"
kill -HUP "$(cat "$WORK/ebd.pid")"     # a reload while it catches up loses nothing
wait_for "$E2E_WAIT" lines_ge "$WORK/burst.log" 1500
# concurrency 1 delivers in the log's order: once an event posted after the burst is in, so is
# every delivery of the burst, a second one included.
post /v1/buses/main/events application/cloudevents+json "$(ev burst-end burst)" >/dev/null
wait_for "$E2E_WAIT" grep -q '"id":"burst-end"' "$WORK/burst.log"
got=$(grep -o '"id":"burst[0-9]*"' "$WORK/burst.log" | tr -dc '0-9\n' | paste -sd,)
want=$(seq 0 1499 | paste -sd,)
[ "$got" = "$want" ] && pass "a burst of 1500 past a queue of 1024: each event once, in order" \
    || fail "burst: $(grep -c '"id":"burst[0-9]*"' "$WORK/burst.log") deliveries, in order: $( [ "$got" = "$want" ] && echo yes || echo no)"
grep -q 'delivery fell behind: reading the log" cursor=to_burst.burst' "$WORK/ebd.log" \
    && pass "the worker fell back to the log (and a reload then lost nothing)" || fail "no fall-back to the log in the log"

# One event waits an hour (Retry-After: 3600) for its retry while nine after it are delivered;
# a reload then delivers the waiting one at once and none of the nine again (the cursor keeps
# what was pending).
j=0; b="["; while [ $j -lt 10 ]; do b="$b$( [ $j -gt 0 ] && echo ,)$(ev hold$j hold)"; j=$((j + 1)); done
post /v1/buses/main/events application/cloudevents-batch+json "$b]" >/dev/null
last=$(grep -o '"offset":[0-9]*' "$WORK/answer" | tail -1 | cut -d: -f2)
# The pair's position in the bus's cursor set (docs/storage.md) has gone past the ten with one
# still pending: the line "to_hold.hold HIGH 1 P".
one_pending() {
    set -- $(grep '^to_hold\.hold ' "$DATA/buses/main/cursors/@delivery")
    [ "${3:-}" = 1 ] && [ "${2:-0}" -gt "$last" ]
}
wait_for "$E2E_WAIT" grep -q 'msg="delivery failed, will retry" rule=to_hold .* wait_ms=3600000 ' "$WORK/ebd.log" \
    || fail "hold: no retry waiting on Retry-After: 3600"
wait_for "$E2E_WAIT" one_pending || fail "hold: the cursor does not keep one event pending past the ten: $(cat "$DATA/buses/main/cursors/@delivery")"
kill -HUP "$(cat "$WORK/ebd.pid")"
wait_for "$E2E_WAIT" lines_ge "$WORK/hold.log" 11
# The pair delivers its pending event before the ones after it: once an event posted now is in,
# anything delivered twice is in too.
post /v1/buses/main/events application/cloudevents+json "$(ev hold-end hold)" >/dev/null
wait_for "$E2E_WAIT" grep -q '"id":"hold-end"' "$WORK/hold.log"
n=$(grep -c '"id":"hold[0-9]*"' "$WORK/hold.log")
ids=$(grep -o '"id":"hold[0-9]*"' "$WORK/hold.log" | sort | uniq -c | awk '{print $1}' | sort | uniq -c | tr -s ' ' | paste -sd,)
# 11 requests: the one that got the 503 twice (before the reload, then at once after), the others once
[ "$n" -eq 11 ] && [ "$ids" = " 9 1, 1 2" ] && pass "a reload delivers the event waiting for its retry, and nothing twice" \
    || fail "reload with a retry pending: $n requests, counts '$ids'"

# A request held by the slow receiver when a reload starts: the old worker lets it finish, the
# new one does not send it again.
rm -f "$WORK/slow.release"
post /v1/buses/main/events application/cloudevents+json "$(ev inflight1 slow)" >/dev/null
wait_for "$E2E_WAIT" grep -q '"id":"inflight1"' "$WORK/slow.arrived"
h=$(grep -c 'SIGHUP: reloading the rules' "$WORK/ebd.log"); r=$(grep -c 'rules reloaded' "$WORK/ebd.log")
kill -HUP "$(cat "$WORK/ebd.pid")"
wait_for "$E2E_WAIT" count_ge 'SIGHUP: reloading the rules' "$WORK/ebd.log" $((h + 1))
sleep 0.2     # most likely into the workers' stop by now; the check holds either way
touch "$WORK/slow.release"
wait_for "$E2E_WAIT" count_ge 'rules reloaded' "$WORK/ebd.log" $((r + 1)) || fail "the reload did not finish"
post /v1/buses/main/events application/cloudevents+json "$(ev inflight-end slow)" >/dev/null
wait_for "$E2E_WAIT" grep -q '"id":"inflight-end"' "$WORK/slow.log"
n=$(grep -c '"id":"inflight1"' "$WORK/slow.log"); a=$(grep -c '"id":"inflight1"' "$WORK/slow.arrived")
[ "$n" -eq 1 ] && [ "$a" -eq 1 ] && pass "a request in flight during a reload is sent once" \
    || fail "in flight during reload: sent $a times, answered $n times"

# ---- reload: refused when invalid, atomic when valid, under traffic ---------------------------
cp "$WORK/rules.ebr" "$WORK/rules.good"
printf '\nrule broken on main { match data.x == to all }\n' >>"$WORK/rules.ebr"
s=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "$URL/v1/admin/reload")
expect_status 401 "reload without the admin token" "$s"
s=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "$URL/v1/admin/reload" -H 'Authorization: Bearer nope')
expect_status 403 "reload with a wrong admin token" "$s"
s=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "$URL/v1/admin/reload" -H "Authorization: Bearer $E2E_ADMIN")
expect_status 400 "reload of a broken file" "$s"
grep -q 'rules.ebr:[0-9]*:[0-9]*: error' "$WORK/answer" && pass "reload errors are positioned" \
    || fail "reload answer: $(cat "$WORK/answer")"
sed 's/env("E2E_TOKEN")/env("E2E_TOKEN_TYPO")/' "$WORK/rules.good" >"$WORK/rules.ebr"
s=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "$URL/v1/admin/reload" -H "Authorization: Bearer $E2E_ADMIN")
expect_status 400 "reload with an unset token variable" "$s"
s=$(post /v1/buses/secure/events application/cloudevents+json "$(ev k4 x)")
expect_status 401 "after a refused reload the bus still needs its token" "$s"
cp "$WORK/rules.good" "$WORK/rules.ebr"
printf '\ntarget copy file "out/copy.jsonl"\nrule copy on main { match type == "load" to copy }\n' >>"$WORK/rules.ebr"
for n in 1 2 3 4 5 6 7 8 9 10; do printf 'bus extra%d\n' $n >>"$WORK/rules.ebr"; done
r=$(grep -c 'rules reloaded' "$WORK/ebd.log")
i=0
while [ $i -lt 200 ]; do
    post_each L load $i $((i + 9)) >/dev/null
    i=$((i + 10))
    [ $i -eq 100 ] && kill -HUP "$(cat "$WORK/ebd.pid")"
done
wait_for "$E2E_WAIT" count_ge 'rules reloaded' "$WORK/ebd.log" $((r + 1)) && pass "SIGHUP reloaded" \
    || fail "no reload in the log"
post /v1/buses/main/events application/cloudevents+json "$(ev L-after load)" >/dev/null
wait_for "$E2E_WAIT" grep -q '"id":"L-after"' "$DATA/out/copy.jsonl" && pass "the new rule delivers" || fail "new rule idle"
# A file target delivers in the log's order: with L-after in, every L before it is in.
wait_for "$E2E_WAIT" grep -q '"id":"L-after"' "$DATA/out/all.jsonl"
n=$(grep -c '"id":"L[0-9]*"' "$DATA/out/all.jsonl")
u=$(grep -o '"id":"L[0-9]*"' "$DATA/out/all.jsonl" | sort -u | grep -c '')
[ "$n" -eq 200 ] && [ "$u" -eq 200 ] && pass "reload under traffic: 200 events, each delivered once" \
    || fail "reload: $n deliveries of $u events (of 200)"

# ---- kill -9 under traffic: every acknowledged event is delivered at least once ----------------
: >"$WORK/acked"
i=0
while [ $i -lt 300 ]; do
    post_each K crash $i $((i + 9)) | awk '$2 == 202 { print $1 }' >>"$WORK/acked"
    i=$((i + 10))
    if [ $i -eq 150 ]; then
        stop_ebd KILL
        start_ebd "$WORK/rules.ebr" "$DATA"
    fi
done
sed 's/.*/"id":"&"/' "$WORK/acked" >"$WORK/acked.pat"
all_acked_in() { [ "$(grep -o -F -f "$WORK/acked.pat" "$1" | sort -u | grep -c '')" -eq "$(grep -c '' "$WORK/acked")" ]; }
wait_for "$E2E_WAIT" all_acked_in "$DATA/out/all.jsonl"
missing=0
for id in $(cat "$WORK/acked"); do
    grep -q "\"id\":\"$id\"" "$DATA/out/all.jsonl" || { missing=$((missing + 1)); echo "  lost $id"; }
done
[ $missing -eq 0 ] && pass "kill -9: all $(wc -l <"$WORK/acked") acknowledged events delivered" \
    || fail "kill -9: $missing acknowledged events never delivered"

# ---- a real client: the cloudevents npm package, binary and structured ------------------------
NODE_DIR=${EBR_NODE_DIR:-$WORK/node}
if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
    mkdir -p "$NODE_DIR"
    if [ ! -d "$NODE_DIR/node_modules/cloudevents" ]; then
        (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund cloudevents@8 >/dev/null 2>&1) \
            || fail "npm install cloudevents failed"
    fi
    cat >"$WORK/send.js" <<'EOF'
const { CloudEvent, emitterFor, httpTransport, Mode } = require("cloudevents");
const url = process.argv[2];
const data = { text: "héllo \"quoted\"", n: 9007199254740991, big: 1e300, list: [1, 2.5, null, true] };
(async () => {
  const emit = emitterFor(httpTransport(url), { mode: Mode.BINARY });
  await emit(new CloudEvent({ id: "npm-bin", source: "npm", type: "npm.test", data }));
  const emitS = emitterFor(httpTransport(url), { mode: Mode.STRUCTURED });
  await emitS(new CloudEvent({ id: "npm-str", source: "npm", type: "npm.test", data, subject: "s ü" }));
})().catch((e) => { console.error(e); process.exit(1); });
EOF
    if NODE_PATH="$NODE_DIR/node_modules" node "$WORK/send.js" "$URL/v1/buses/main/events" 2>"$WORK/node.err"; then
        wait_for "$E2E_WAIT" grep -q npm-str "$WORK/node.log"
        for id in npm-bin npm-str; do
            grep "\"id\":\"$id\"" "$WORK/node.log" | grep -q '"text":"héllo \\"quoted\\"","n":9007199254740991,"big":1e+300,"list":\[1,2.5,null,true\]' \
                && pass "cloudevents npm ($id) arrives intact" || fail "npm $id: $(grep "$id" "$WORK/node.log")"
        done
    else
        fail "the cloudevents client failed: $(cat "$WORK/node.err")"
    fi
else
    fail "node and npm are needed for the cloudevents client test"
fi

stop_ebd TERM
grep -q 'ebd stopped' "$WORK/ebd.log" && pass "SIGTERM: stopped cleanly" || fail "no clean stop"

# ---- configuration errors -------------------------------------------------------------------
if "$BIN/ebd" --rules "$WORK/rules.ebr" --data "$WORK/d2" --listen 0.0.0.0:$P_EBD --insecure-http 2>"$WORK/err"; then
    fail "ebd listened on 0.0.0.0 with buses that have no token"
else
    grep -q "bus 'main' has no token, and 0.0.0.0:$P_EBD is not a loopback address" "$WORK/err" \
        && pass "refuses a non-loopback address unless every bus has a token" || fail "message: $(cat "$WORK/err")"
fi
printf 'bus b\nrule r on b { match x == }\n' >"$WORK/bad.ebr"
"$BIN/ebd" --rules "$WORK/bad.ebr" --data "$WORK/d3" 2>"$WORK/err"
[ $? -eq 1 ] && grep -q 'bad.ebr:2:' "$WORK/err" && pass "bad rules: positioned errors, exit 1" \
    || fail "bad rules: $(cat "$WORK/err")"
"$BIN/ebd" --rules "$WORK/rules.ebr" --listen nowhere 2>"$WORK/err"
[ $? -eq 2 ] && grep -q 'HOST:PORT' "$WORK/err" && pass "a bad --listen: exit 2" || fail "bad listen: $(cat "$WORK/err")"
"$BIN/ebd" --help | grep -q 'usage: ebd' && pass "--help" || fail "--help"
E2E_HEADER="$(printf 'v\r\nX-Injected: yes')" "$BIN/ebd" --rules "$WORK/rules.ebr" --data "$WORK/d5" \
    --listen 127.0.0.1:$P_EBD 2>"$WORK/err" && fail "a header value with CR LF was taken" || \
    { grep -q "must not hold CR or LF" "$WORK/err" && pass "a header value from env() with CR LF is refused" || fail "CR LF: $(cat "$WORK/err")"; }

# ---- a bus that cannot store: 503 with Retry-After, nothing acknowledged that is not stored ------
printf 'bus full\n' >"$WORK/full.ebr"
(ulimit -f 100; exec "$BIN/ebd" --rules "$WORK/full.ebr" --data "$WORK/d6" --listen 127.0.0.1:$P_EBD) >>"$WORK/ebd.log" 2>&1 &
echo $! >"$WORK/ebd.pid"
wait_for "$E2E_WAIT" curl -sf "$URL/healthz" || fail "ebd (file size limit) did not start: $(tail -3 "$WORK/ebd.log")"
big=$(head -c 1000 /dev/zero | tr '\0' 'a')
got=0; s=202; j=0
while [ "$s" = 202 ] && [ $j -lt 200 ]; do
    s=$(post /v1/buses/full/events application/cloudevents+json "$(ev full$j x "\"$big\"")" -D "$WORK/headers")
    [ "$s" = 202 ] && got=$((got + 1))
    j=$((j + 1))
done
expect_status 503 "a bus whose log cannot grow (file size limit)" "$s"
grep -qi '^Retry-After:' "$WORK/headers" && pass "503 carries Retry-After" || fail "503 headers: $(cat "$WORK/headers")"
s=$(post /v1/buses/full/events application/cloudevents+json "$(ev after x)")
expect_status 503 "and after it, while the log still cannot grow (recovery finds no room)" "$s"
stop_ebd TERM
n=$("$BIN/ebc" log dump "$WORK/d6/buses/full" 2>/dev/null | grep -c '"id":"full')
[ "$n" -ge "$got" ] && pass "every one of the $got acknowledged events is in the log ($n records)" \
    || fail "$got acknowledged, $n in the log"

# ---- overload: 429 with Retry-After once --max-requests are in progress -------------------------
"$BIN/ebd" --rules "$WORK/rules.ebr" --data "$WORK/d4" --listen 127.0.0.1:$P_EBD --max-requests 1 >>"$WORK/ebd.log" 2>&1 &
echo $! >"$WORK/ebd.pid"
wait_for "$E2E_WAIT" curl -sf "$URL/healthz" || fail "ebd (--max-requests 1) did not start: $(tail -3 "$WORK/ebd.log")"
# A body sent at 1000 bytes a second keeps its request in progress for 100 s; the other request
# is sent until that one is counted (before that, it is simply stored).
head -c 100000 /dev/zero | tr '\0' ' ' >"$WORK/slowbody"
curl -s -o /dev/null --limit-rate 1000 -X POST "$URL/v1/buses/main/events" \
     -H 'Content-Type: application/cloudevents+json' --data-binary @"$WORK/slowbody" &
SLOW=$!
over() {
    s=$(curl -s -D "$WORK/headers" -o "$WORK/answer" -w '%{http_code}' -X POST "$URL/v1/buses/main/events" \
         -H 'Content-Type: application/cloudevents+json' --data-binary "$(ev over1 x)")
    [ "$s" = 429 ]
}
wait_for "$E2E_WAIT" over
expect_status 429 "a request over --max-requests" "$s"
grep -qi '^Retry-After: 1' "$WORK/headers" && pass "429 carries Retry-After" || fail "429 headers: $(cat "$WORK/headers")"
kill $SLOW 2>/dev/null; wait $SLOW 2>/dev/null
stop_ebd TERM
finish
