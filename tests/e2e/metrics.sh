#!/bin/sh
# End-to-end tests of ebd's metrics and admin API (docs/metrics.md): known traffic in (events a
# rule sends to a good http target and to two file targets, events to a target that always fails
# and dead-letters, one to a target that fails once and succeeds on its retry; refused requests
# of each reason), then the exact counts in GET /metrics (checked by `promtool check metrics`)
# and in /v1/buses, /v1/rules and /v1/targets; the admin token; counters kept across a reload.
#   metrics.sh BIN_DIR SOURCE_DIR WORK_DIR
# Everything runs on 127.0.0.1; every process started here is stopped at the end.
. "$2/tests/e2e/lib.sh"
# Ports 27000-27999 (the metrics part of the event center's range).
P=$(( 27000 + $$ % 900 ))
URL=http://127.0.0.1:$P
E2E_WAIT=${E2E_WAIT:-60}
EBD=""
cleanup() {
    for p in $EBD $PIDS; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT

command -v promtool >/dev/null 2>&1 || { echo "promtool is missing (Debian package prometheus)"; exit 1; }
command -v jq >/dev/null 2>&1 || { echo "jq is missing"; exit 1; }

export E2E_ADMIN=metrics-admin-0123456789 E2E_BUS=metrics-bus-token-0123456789
ADM="Authorization: Bearer $E2E_ADMIN"
BUS="Authorization: Bearer $E2E_BUS"

"$BIN/e2e_receiver" $((P + 1)) "$WORK/ok.log" & PIDS="$PIDS $!"
"$BIN/e2e_receiver" $((P + 2)) "$WORK/bad.log" --status 500 & PIDS="$PIDS $!"
"$BIN/e2e_receiver" $((P + 3)) "$WORK/flaky.log" --fail 1 & PIDS="$PIDS $!"
"$BIN/e2e_receiver" $((P + 4)) "$WORK/held.log" --hold "$WORK/open" & PIDS="$PIDS $!"

cat >"$WORK/rules.ebr" <<EOF
server { admin_token env("E2E_ADMIN") }
bus main {
  token env("E2E_BUS")
  max_event_size 1KiB
}
target ok http "http://127.0.0.1:$((P + 1))/ok"
target bad http "http://127.0.0.1:$((P + 2))/bad" {
  retry exponential(attempts: 2, first: 50ms, max: 100ms)
  dead_letter file "dlq/bad.jsonl"
}
target flaky http "http://127.0.0.1:$((P + 3))/flaky" {
  retry exponential(attempts: 3, first: 50ms, max: 100ms)
}
target sink1 file "out/sink1.jsonl"
target sink2 file "out/sink2.jsonl"
rule a on main { match type == "a" to ok }
rule fan on main { match type == "a" to sink1, sink2 }
rule b on main { match type == "b" to bad }
rule c on main { match type == "c" to flaky }
EOF
"$BIN/ebd" --rules "$WORK/rules.ebr" --data "$WORK/data" --listen 127.0.0.1:$P >>"$WORK/ebd.log" 2>&1 &
EBD=$!
wait_for "$E2E_WAIT" curl -sf "$URL/healthz" || { fail "ebd did not start"; finish; }

# get PATH: the answer's body (with the admin token)
get() { curl -s -H "$ADM" "$URL$1"; }
# metric NAME{LABELS}: its value in $WORK/metrics.txt (empty when it is not there)
metric() { awk -v k="$1" '$1 == k { print $2 }' "$WORK/metrics.txt"; }
check_metric() {  # check_metric SERIES WANT
    _got=$(metric "$1")
    if [ "$_got" = "$2" ]; then pass "$1 = $2"; else fail "$1: got '$_got', wanted $2"; fi
}
check_json() {  # check_json NAME JQ_EXPR WANT (on $WORK/json)
    _got=$(jq -r "$2" "$WORK/json" 2>&1)
    if [ "$_got" = "$3" ]; then pass "$1 = $3"; else fail "$1: got '$_got', wanted $3"; fi
}

# ---- traffic ------------------------------------------------------------------------------------
N=5
i=0
while [ $i -lt $N ]; do
    i=$((i + 1))
    st=$(post /v1/buses/main/events application/cloudevents+json "$(ev a$i a)" -H "$BUS")
    expect_status 202 "event a$i" "$st"
done
for id in b1 b2; do
    expect_status 202 "event $id" "$(post /v1/buses/main/events application/cloudevents+json "$(ev $id b)" -H "$BUS")"
done
expect_status 202 "event c1" "$(post /v1/buses/main/events application/cloudevents+json "$(ev c1 c)" -H "$BUS")"
# refused: 3 invalid (bad JSON, no id, an invalid put-events entry beside a good one: its good
# entry is ingested), 1 too large, 2 unauthorized, 1 unknown bus
expect_status 400 "bad JSON" "$(post /v1/buses/main/events application/cloudevents+json '{bad' -H "$BUS")"
expect_status 400 "no id" "$(post /v1/buses/main/events application/cloudevents+json \
    '{"specversion":"1.0","source":"e2e","type":"a"}' -H "$BUS")"
expect_status 200 "put-events, one bad entry" "$(post /v1/buses/main/put-events application/json \
    "{\"entries\":[$(ev p1 none),{\"specversion\":\"1.0\"}]}" -H "$BUS")"
big=$(head -c 2000 /dev/zero | tr '\0' x)
expect_status 413 "too large" "$(post /v1/buses/main/events application/cloudevents+json \
    "$(ev big a "\"$big\"")" -H "$BUS")"
expect_status 401 "no bus token" "$(post /v1/buses/main/events application/cloudevents+json "$(ev u1 a)")"
expect_status 403 "wrong bus token" "$(post /v1/buses/main/events application/cloudevents+json \
    "$(ev u2 a)" -H "Authorization: Bearer wrong-token-0123456789")"
expect_status 404 "unknown bus" "$(post /v1/buses/nope/events application/cloudevents+json "$(ev n1 a)" -H "$BUS")"
INGESTED=$((N + 2 + 1 + 1))
RULES=4

# ---- drained: every target done -------------------------------------------------------------------
drained() {
    get /v1/targets >"$WORK/json" &&
    [ "$(jq '[.targets[] | .queued + .lag] | add' "$WORK/json")" = 0 ] &&
    [ "$(jq '.targets[] | select(.name == "bad") | .dead_lettered' "$WORK/json")" = 2 ] &&
    [ "$(jq '.targets[] | select(.name == "flaky") | .succeeded' "$WORK/json")" = 1 ] &&
    [ "$(jq '.targets[] | select(.name == "sink2") | .succeeded' "$WORK/json")" = $N ]
}
wait_for "$E2E_WAIT" drained || fail "the deliveries did not finish: $(cat "$WORK/json")"

# ---- GET /metrics ---------------------------------------------------------------------------------
code=$(curl -s -o "$WORK/metrics.txt" -w '%{http_code}' -H "$ADM" "$URL/metrics")
expect_status 200 "GET /metrics" "$code"
if promtool check metrics <"$WORK/metrics.txt" >"$WORK/promtool.out" 2>&1; then
    pass "promtool check metrics"
else
    fail "promtool check metrics: $(cat "$WORK/promtool.out")"
fi
ctype=$(curl -s -o /dev/null -w '%{content_type}' -H "$ADM" "$URL/metrics")
case "$ctype" in text/plain*version=0.0.4*) pass "content type $ctype" ;; *) fail "content type $ctype" ;; esac
check_all() {  # the counts after the traffic above (again after the reload)
    check_metric 'ebr_events_ingested_total{bus="main"}' $INGESTED
    check_metric 'ebr_events_refused_total{bus="main",reason="invalid"}' 3
    check_metric 'ebr_events_refused_total{bus="main",reason="too_large"}' 1
    check_metric 'ebr_events_refused_total{bus="main",reason="unauthorized"}' 2
    check_metric 'ebr_events_refused_total{bus="main",reason="storage"}' 0
    check_metric 'ebr_events_refused_total{bus="",reason="unknown_bus"}' 1
    check_metric 'ebr_rule_matched_total{rule="a",bus="main"}' $N
    check_metric 'ebr_rule_matched_total{rule="fan",bus="main"}' $N
    check_metric 'ebr_rule_matched_total{rule="b",bus="main"}' 2
    check_metric 'ebr_rule_matched_total{rule="c",bus="main"}' 1
    check_metric 'ebr_deliveries_succeeded_total{target="ok"}' $N
    check_metric 'ebr_deliveries_succeeded_total{target="sink1"}' $N
    check_metric 'ebr_deliveries_succeeded_total{target="sink2"}' $N
    check_metric 'ebr_deliveries_failed_total{target="ok"}' 0
    check_metric 'ebr_deliveries_succeeded_total{target="bad"}' 0
    check_metric 'ebr_deliveries_failed_total{target="bad"}' 4
    check_metric 'ebr_deliveries_retried_total{target="bad"}' 2
    check_metric 'ebr_deliveries_dead_lettered_total{target="bad"}' 2
    check_metric 'ebr_deliveries_succeeded_total{target="flaky"}' 1
    check_metric 'ebr_deliveries_failed_total{target="flaky"}' 1
    check_metric 'ebr_deliveries_retried_total{target="flaky"}' 1
    check_metric 'ebr_deliveries_dead_lettered_total{target="flaky"}' 0
    check_metric 'ebr_delivery_latency_seconds_count{target="ok"}' $N
    check_metric 'ebr_delivery_latency_seconds_bucket{target="ok",le="+Inf"}' $N
    check_metric 'ebr_delivery_latency_seconds_count{target="flaky"}' 1
    check_metric 'ebr_delivery_duration_seconds_count{target="bad"}' 4
    check_metric 'ebr_delivery_duration_seconds_count{target="flaky"}' 2
    check_metric 'ebr_target_queued{target="ok"}' 0
    check_metric 'ebr_target_lag_events{target="bad"}' 0
    check_metric 'ebr_log_next_offset{bus="main"}' $INGESTED
    check_metric 'ebr_log_segments{bus="main"}' 1
    check_metric 'ebr_rules' $RULES
    check_metric 'ebr_replays_running' 0
}
check_all
for m in process_resident_memory_bytes process_cpu_seconds_total process_open_fds \
         process_start_time_seconds process_threads ebr_log_bytes'{bus="main"}'; do
    v=$(metric "$m")
    case "$v" in ''|0|0.00) fail "$m: '$v'" ;; *) pass "$m = $v" ;; esac
done

# ---- the admin API --------------------------------------------------------------------------------
get /v1/buses >"$WORK/json"
check_json "buses" '[.buses[].name] | join(",")' main
check_json "bus ingested" '.buses[0].ingested' $INGESTED
check_json "bus refused" '.buses[0].refused' 6
check_json "bus per_minute entries" '.buses[0].per_minute | length' 60
check_json "bus per_minute sum" '[.buses[0].per_minute[].count] | add' $INGESTED
check_json "bus log next" '.buses[0].log.next' $INGESTED
check_json "bus rules" '.buses[0].rules | join(",")' a,fan,b,c
# the (source, type) kinds discovery has a schema for (it reads the log on its own): as many as
# GET /v1/schemas lists, once it has caught up
schemas_agree() {
    k=$(get '/v1/schemas?bus=main' | jq '.schemas | length')
    [ "$k" -gt 0 ] && [ "$(get /v1/buses | jq '.buses[0].schemas')" = "$k" ]
}
if wait_for "$E2E_WAIT" schemas_agree; then pass "bus schemas: as many as /v1/schemas lists"
else fail "bus schemas: $(get /v1/buses | jq -c '.buses[0].schemas') against $(get '/v1/schemas?bus=main' | jq -c '.schemas | length') kinds listed"; fi
check_json "bus rate" '.buses[0].rate > 0' true
get /v1/buses/main >"$WORK/json"
check_json "GET /v1/buses/main" '.name + " " + (.ingested | tostring)' "main $INGESTED"
code=$(curl -s -o "$WORK/answer" -w '%{http_code}' -H "$ADM" "$URL/v1/buses/nope")
expect_status 404 "GET /v1/buses/nope" "$code"
get /v1/rules >"$WORK/json"
check_json "rules" '[.rules[] | "\(.name):\(.matched):\(.targets | join("+"))"] | join(",")' \
    "a:$N:ok,fan:$N:sink1+sink2,b:2:bad,c:1:flaky"
check_json "rule rate" '.rules[0].rate > 0' true
get '/v1/rules?bus=main' >"$WORK/json"
check_json "rules ?bus=main" '.rules | length' 4
get '/v1/rules?bus=other' >"$WORK/json"
check_json "rules ?bus=other" '.rules | length' 0
get /v1/targets >"$WORK/json"
check_json "targets" '[.targets[] | "\(.name):\(.kind)"] | join(",")' \
    "ok:http,bad:http,flaky:http,sink1:file,sink2:file"
check_json "ok target" '.targets[0] | "\(.succeeded) \(.failed) \(.queued) \(.lag) \(.last_error)"' \
    "$N 0 0 0 null"
check_json "bad target" '.targets[1] | "\(.failed) \(.retried) \(.dead_lettered) \(.lag)"' "4 2 2 0"
check_json "bad last_error" '.targets[1].last_error.message | test("answered 500")' true
check_json "bad errors" '.targets[1].errors | length' 4
check_json "bad error sample" '.targets[1].errors[0] | (.rule + " " + (.time | test("^[0-9-]+T[0-9:.]+Z$") | tostring))' "b true"
check_json "flaky target" '.targets[2] | "\(.succeeded) \(.failed) \(.retried) \(.errors | length)"' "1 1 1 1"

# ---- the admin token ------------------------------------------------------------------------------
for path in /metrics /v1/buses /v1/rules /v1/targets /v1/buses/main; do
    expect_status 401 "$path without a token" "$(curl -s -o "$WORK/answer" -w '%{http_code}' "$URL$path")"
    expect_status 403 "$path with a wrong token" "$(curl -s -o "$WORK/answer" -w '%{http_code}' \
        -H "Authorization: Bearer wrong-token-0123456789" "$URL$path")"
done

# ---- a reload keeps the counts (and adds a rule) ---------------------------------------------------
cat >>"$WORK/rules.ebr" <<EOF
target held http "http://127.0.0.1:$((P + 4))/held"
rule h on main { match type == "h" to held }
EOF
RULES=5
expect_status 200 "reload" "$(post /v1/admin/reload application/json '' -H "$ADM")"
curl -s -o "$WORK/metrics.txt" -H "$ADM" "$URL/metrics"
check_all
expect_status 202 "event a after the reload" "$(post /v1/buses/main/events \
    application/cloudevents+json "$(ev a9 a)" -H "$BUS")"
N=$((N + 1))
INGESTED=$((INGESTED + 1))
wait_for "$E2E_WAIT" drained || fail "the delivery after the reload did not finish"
curl -s -o "$WORK/metrics.txt" -H "$ADM" "$URL/metrics"
check_metric 'ebr_events_ingested_total{bus="main"}' $INGESTED
check_metric 'ebr_rule_matched_total{rule="a",bus="main"}' $N
check_metric 'ebr_rule_matched_total{rule="fan",bus="main"}' $N
check_metric 'ebr_deliveries_succeeded_total{target="ok"}' $N
check_metric 'ebr_deliveries_dead_lettered_total{target="bad"}' 2
promtool check metrics <"$WORK/metrics.txt" >"$WORK/promtool.out" 2>&1 || fail "promtool after the reload: $(cat "$WORK/promtool.out")"

# ---- queued and lag while a target holds its answers ------------------------------------------------
for id in h1 h2 h3; do
    expect_status 202 "event $id" "$(post /v1/buses/main/events application/cloudevents+json "$(ev $id h)" -H "$BUS")"
done
INGESTED=$((INGESTED + 3))
held() {  # held QUEUED LAG: does /v1/targets say so of target held?
    get /v1/targets >"$WORK/json" &&
    [ "$(jq -r '.targets[] | select(.name == "held") | "\(.queued) \(.lag)"' "$WORK/json")" = "$1 $2" ]
}
wait_for "$E2E_WAIT" held 3 3 && pass "held: 3 queued, lag 3" || fail "held: $(cat "$WORK/json")"
curl -s -o "$WORK/metrics.txt" -H "$ADM" "$URL/metrics"
check_metric 'ebr_target_queued{target="held"}' 3
check_metric 'ebr_target_lag_events{target="held"}' 3
check_metric 'ebr_target_lag_events{target="ok"}' 0
check_metric 'ebr_rule_matched_total{rule="h",bus="main"}' 3
: >"$WORK/open"
wait_for "$E2E_WAIT" held 0 0 && pass "held: drained" || fail "held after opening: $(cat "$WORK/json")"
check_json "held succeeded" '.targets[] | select(.name == "held") | .succeeded' 3

finish
