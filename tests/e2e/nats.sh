#!/bin/sh
# A bus on NATS JetStream shared by two daemons (docs/storage.md, "NATS JetStream"):
#   nats.sh BIN_DIR SOURCE_DIR WORK_DIR
# Starts nats-server -js itself on loopback ports (one node, then a cluster of three) and stops
# it.  Checks: events posted to either daemon are delivered once, by both daemons' routers;
# a daemon killed with SIGKILL under traffic loses nothing acknowledged (what it held goes to
# the other after the ack wait); a restart of everything (the server too) loses nothing; the
# metrics show the stream and its consumer; on three nodes with replicas 3, killing one node
# under traffic keeps the bus taking and delivering events.
. "$2/tests/e2e/lib.sh"
# Ports below Linux's ephemeral range (32768 and up): 19000-19989.
BASE=$(( 19000 + ($$ % 99) * 10 ))
P_A=$BASE; P_B=$((BASE + 1)); P_RECV=$((BASE + 2)); P_N1=$((BASE + 3)); P_N2=$((BASE + 4))
P_N3=$((BASE + 5)); P_C1=$((BASE + 6)); P_C2=$((BASE + 7)); P_C3=$((BASE + 8))
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$NATS" ] || { echo "nats-server is not installed (tools/deps.sh installs it)"; exit 1; }

cleanup() {
    for f in "$WORK"/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT

# nats_start NAME PORT [ARGS...]: a server with its own storage folder; its pid in NAME.pid.
nats_start() {
    _n=$1; _p=$2; shift 2
    mkdir -p "$WORK/$_n"
    "$NATS" -js -a 127.0.0.1 -p "$_p" -sd "$WORK/$_n" -n "$_n" "$@" >>"$WORK/$_n.log" 2>&1 &
    echo $! >"$WORK/$_n.pid"
}
nats_stop() {   # nats_stop NAME [SIGNAL]
    _pid=$(cat "$WORK/$1.pid" 2>/dev/null) || return 0
    kill -"${2:-TERM}" "$_pid" 2>/dev/null
    wait "$_pid" 2>/dev/null
    rm -f "$WORK/$1.pid"
}
# Is a NATS server answering on PORT? (its INFO line)
nats_up() { curl -s --max-time 1 "telnet://127.0.0.1:$1" </dev/null 2>/dev/null | grep -q INFO; }

ebd_start() {   # ebd_start NAME PORT RULES
    "$BIN/ebd" --rules "$3" --data "$WORK/data-$1" --listen "127.0.0.1:$2" >>"$WORK/$1.log" 2>&1 &
    echo $! >"$WORK/$1.pid"
}
ebd_up() { curl -sf "http://127.0.0.1:$1/healthz" >/dev/null; }
ebd_stop() {    # ebd_stop NAME [SIGNAL]
    _pid=$(cat "$WORK/$1.pid" 2>/dev/null) || return 0
    kill -"${2:-TERM}" "$_pid" 2>/dev/null
    wait "$_pid" 2>/dev/null
    rm -f "$WORK/$1.pid"
}

# post_range PORT PREFIX FROM TO: posts events PREFIXFROM..PREFIXTO to bus orders, one request
# each, from one curl; appends "id status" lines to $WORK/posted.
post_range() {
    _cfg=$WORK/each.$2.cfg; : >"$_cfg"; _k=$3
    while [ "$_k" -le "$4" ]; do
        printf '{"specversion":"1.0","id":"%s%s","source":"nats-e2e","type":"t"}' "$2" "$_k" >"$WORK/ev.$2$_k"
        [ -s "$_cfg" ] && echo next >>"$_cfg"
        printf 'url = "http://127.0.0.1:%s/v1/buses/orders/events"\nrequest = "POST"\noutput = "/dev/null"\n' "$1" >>"$_cfg"
        printf 'header = "Content-Type: application/cloudevents+json"\ndata-binary = "@%s"\n' "$WORK/ev.$2$_k" >>"$_cfg"
        printf 'write-out = "%s %%{http_code}\\n"\n' "$2$_k" >>"$_cfg"
        _k=$((_k + 1))
    done
    curl -s -K "$_cfg" >"$WORK/posted.$2"
    cat "$WORK/posted.$2" >>"$WORK/posted"
}

# Every id posted with 202 is in the receiver's log?  (prints the first one missing)
all_delivered() {
    grep ' 202$' "$WORK/posted" | cut -d' ' -f1 | sort -u >"$WORK/acked"
    grep -o '"id":"[^"]*"' "$WORK/recv.log" 2>/dev/null | cut -d'"' -f4 | sort -u >"$WORK/got"
    _miss=$(comm -23 "$WORK/acked" "$WORK/got" | head -1)
    [ -z "$_miss" ] || { echo "$_miss"; return 1; }
}
delivered_count() { grep -c "\"id\":\"$1\"" "$WORK/recv.log"; }

touch "$WORK/open"          # (the receiver answers while this file exists)
"$BIN/e2e_receiver" "$P_RECV" "$WORK/recv.log" --hold "$WORK/open" &
PIDS="$PIDS $!"

# ---- one node, two daemons -----------------------------------------------------------------
nats_start n1 "$P_N1"
wait_for "$E2E_WAIT" nats_up "$P_N1" || { fail "nats-server did not start"; cat "$WORK/n1.log"; finish; }
cat >"$WORK/one.ebr" <<EOF
bus orders { log nats "nats://127.0.0.1:$P_N1" stream "E2E_ORDERS" ack_wait 10s in_hand 16; dedup 10m }
target hook http "http://127.0.0.1:$P_RECV/hook" { retry exponential(attempts: 50, first: 100ms, max: 1s) }
rule all on orders { match type == "t" to hook }
EOF
ebd_start a "$P_A" "$WORK/one.ebr"
ebd_start b "$P_B" "$WORK/one.ebr"
wait_for "$E2E_WAIT" ebd_up "$P_A" && wait_for "$E2E_WAIT" ebd_up "$P_B" ||
    { fail "the daemons did not start"; cat "$WORK/a.log" "$WORK/b.log"; finish; }
grep -q 'log=nats' "$WORK/a.log" && pass "the bus is on NATS JetStream" || fail "no 'log=nats' in a.log"

# The receiver holds its answers while the events go in: each daemon may hold 16 (in_hand), so
# the consumer shows 32 in hand only when both daemons have taken their share.
rm -f "$WORK/open"
post_range "$P_A" x 1 100 &
X=$!
post_range "$P_B" y 1 100
wait $X
[ "$(grep -c ' 202$' "$WORK/posted")" -eq 200 ] && pass "200 events taken by two daemons" ||
    fail "posts: $(grep -vc ' 202$' "$WORK/posted") not 202: $(grep -v ' 202$' "$WORK/posted" | head -3)"
both_hold() {
    curl -s "http://127.0.0.1:$P_A/metrics" | grep -q '^ebr_bus_consumer_in_hand{bus="orders"} 32$'
}
wait_for "$E2E_WAIT" both_hold && pass "both daemons hold events of the bus, 16 each" ||
    fail "in hand: $(curl -s "http://127.0.0.1:$P_A/metrics" | grep consumer_in_hand)"
touch "$WORK/open"
wait_for "$E2E_WAIT" all_delivered && pass "every event delivered" || fail "not delivered: $(all_delivered)"
dups=$(grep -o '"id":"[^"]*"' "$WORK/recv.log" | sort | uniq -d | wc -l)
[ "$dups" -eq 0 ] && pass "each delivered once" || fail "$dups events delivered twice with nothing failing"
ma=$(curl -s "http://127.0.0.1:$P_A/metrics" | grep '^ebr_deliveries_succeeded_total' | awk '{s+=$2} END {print s+0}')
mb=$(curl -s "http://127.0.0.1:$P_B/metrics" | grep '^ebr_deliveries_succeeded_total' | awk '{s+=$2} END {print s+0}')
[ "$ma" -gt 0 ] && [ "$mb" -gt 0 ] && [ $((ma + mb)) -eq 200 ] && pass "both daemons routed and delivered ($ma + $mb)" ||
    fail "deliveries by daemon: a=$ma b=$mb (want both > 0, 200 in all)"
curl -s "http://127.0.0.1:$P_A/metrics" >"$WORK/metrics"
grep -q '^ebr_log_next_offset{bus="orders"} 200$' "$WORK/metrics" && pass "metrics: the stream's next offset" ||
    fail "metrics: $(grep ebr_log_next_offset "$WORK/metrics")"
grep -q '^ebr_bus_consumer_in_hand{bus="orders"}' "$WORK/metrics" && pass "metrics: the consumer's state" ||
    fail "metrics: no ebr_bus_consumer_in_hand"
# The bus's dedup window is the stream's, shared by both daemons: x5 went in through a; sent to
# b, it is answered as stored before, and the stream does not grow.
st=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "http://127.0.0.1:$P_B/v1/buses/orders/events" \
    -H 'Content-Type: application/cloudevents+json' --data-binary @"$WORK/ev.x5")
[ "$st" = 202 ] && jq -e '.events[0].duplicate == true' "$WORK/answer" >/dev/null &&
    curl -s "http://127.0.0.1:$P_A/metrics" | grep -q '^ebr_log_next_offset{bus="orders"} 200$' &&
    pass "dedup across daemons: an event taken by a, sent to b, is not stored again" ||
    fail "dedup across daemons: $st $(cat "$WORK/answer")"

# ---- the event center on the stream: query, dry run and replay by time, traces ---------------
URL=http://127.0.0.1:$P_A
js() { jq -r "$1" "$WORK/answer"; }
st=$(curl -s -o "$WORK/answer" -w '%{http_code}' "$URL/v1/buses/orders/events?limit=5")
[ "$st" = 200 ] && [ "$(js '.events | length')" = 5 ] && pass "event query on the stream" ||
    fail "query: $st $(cat "$WORK/answer")"
printf 'bus orders
target t file "never.jsonl"
rule ys on orders { match id starts_with "y" to t }
' >"$WORK/dry.ebr"
st=$(post "/v1/buses/orders/dry-run?since=1h" text/plain "@$WORK/dry.ebr" -H "X-Ebr-Request: 1")
[ "$st" = 200 ] && [ "$(js '.events')" = 200 ] && [ "$(js '.rules[0].matched')" = 100 ] &&
    pass "dry run by time on the stream" || fail "dry run: $st $(cat "$WORK/answer")"
st=$(post /v1/buses/orders/replays application/json '{"name":"r1","since":"1h"}')
[ "$st" = 201 ] && [ "$(js '.total')" = 200 ] || fail "replay: $st $(cat "$WORK/answer")"
replayed() { [ "$(grep -c '"replay":"r1"' "$WORK/recv.log")" -ge 200 ]; }
wait_for "$E2E_WAIT" replayed && pass "a replay by time on the stream delivered every event again" ||
    fail "replayed: $(grep -c '"replay":"r1"' "$WORK/recv.log") of 200"
# The trace streams are the bus's, shared: either daemon answers with the whole trace of any
# event (received by one, delivered by whichever took it), for every event.
traced() {   # traced PORT OFFSET
    curl -sf "http://127.0.0.1:$1/v1/buses/orders/offsets/$2/trace" >"$WORK/trace.$1" &&
        grep -q '"received":{"time"' "$WORK/trace.$1" && grep -q '"state":"delivered"' "$WORK/trace.$1"
}
all_traced() {
    for _o in 0 1 2 3 4 5 6 7 8 9; do traced "$P_A" $_o && traced "$P_B" $_o || return 1; done
}
wait_for "$E2E_WAIT" all_traced && pass "either daemon gives the whole trace of an event" ||
    fail "traces: $(cat "$WORK/trace.$P_A" "$WORK/trace.$P_B" 2>/dev/null | head -c 600)"
# by id: y7 was posted to b; a finds it
st=$(curl -s -o "$WORK/answer" -w '%{http_code}' "http://127.0.0.1:$P_A/v1/buses/orders/events/y7/trace")
[ "$st" = 200 ] && [ "$(js '.id')" = y7 ] && [ "$(js '.outcomes[0].state')" = delivered ] &&
    pass "a trace by id, of an event another daemon took in" || fail "trace by id: $st $(cat "$WORK/answer")"

# an event no rule matches: its trace (matched nothing) comes from the other daemon too
printf '{"specversion":"1.0","id":"u1","source":"nats-e2e","type":"other"}' >"$WORK/u1.json"
st=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$P_A/v1/buses/orders/events" \
     -H 'Content-Type: application/cloudevents+json' --data-binary "@$WORK/u1.json")
[ "$st" = 202 ] || fail "posting u1: $st"
unmatched() {
    curl -sf "http://127.0.0.1:$P_B/v1/buses/orders/events/u1/trace" >"$WORK/answer" &&
        [ "$(js '.matched | length')" = 0 ] && [ "$(js '.received.producer')" != null ]
}
wait_for "$E2E_WAIT" unmatched && pass "the trace of an event no rule matched, from either daemon" ||
    fail "unmatched trace: $(cat "$WORK/answer")"

# ---- a daemon killed under traffic ---------------------------------------------------------
# The receiver holds its answers, and b is killed while it has events in hand (queued or in
# flight, as its metrics say): they go to a after the ack wait.
: >"$WORK/posted"
rm -f "$WORK/open"
post_range "$P_B" k 1 60
post_range "$P_A" l 1 60
b_holds() {
    curl -s "http://127.0.0.1:$P_B/metrics" | grep '^ebr_target_queued{target="hook"}' |
        awk '{exit !($2 > 0)}'
}
wait_for "$E2E_WAIT" b_holds && pass "b has events in hand" || fail "b took none of the events"
# a reloads meanwhile: its old rules give back what they hold, its new rules take it again
kill -HUP "$(cat "$WORK/a.pid")"
wait_for "$E2E_WAIT" grep -q 'msg="rules reloaded"' "$WORK/a.log" && pass "a reloaded with events in hand" ||
    fail "a did not reload: $(tail -3 "$WORK/a.log")"
ebd_stop b KILL
touch "$WORK/open"
post_range "$P_A" m 1 60
wait_for "$E2E_WAIT" all_delivered && pass "nothing acknowledged lost when a daemon is killed" ||
    fail "lost after kill -9: $(all_delivered)"

# ---- everything restarted ------------------------------------------------------------------
: >"$WORK/posted"
post_range "$P_A" r 1 50
ebd_stop a
nats_stop n1
nats_start n1 "$P_N1"
wait_for "$E2E_WAIT" nats_up "$P_N1" || fail "nats-server did not start again"
ebd_start a "$P_A" "$WORK/one.ebr"
ebd_start b "$P_B" "$WORK/one.ebr"
wait_for "$E2E_WAIT" ebd_up "$P_A" && wait_for "$E2E_WAIT" ebd_up "$P_B" || fail "the daemons did not start again"
post_range "$P_B" s 1 50
wait_for "$E2E_WAIT" all_delivered && pass "nothing acknowledged lost across a restart of everything" ||
    fail "lost across the restart: $(all_delivered)"
ebd_stop a
ebd_stop b
nats_stop n1

# ---- three nodes, replicas 3, one node killed under traffic --------------------------------
ROUTES="nats://127.0.0.1:$P_C1,nats://127.0.0.1:$P_C2,nats://127.0.0.1:$P_C3"
nats_start c1 "$P_N1" --cluster_name ebr --cluster "nats://127.0.0.1:$P_C1" --routes "$ROUTES"
nats_start c2 "$P_N2" --cluster_name ebr --cluster "nats://127.0.0.1:$P_C2" --routes "$ROUTES"
nats_start c3 "$P_N3" --cluster_name ebr --cluster "nats://127.0.0.1:$P_C3" --routes "$ROUTES"
wait_for "$E2E_WAIT" nats_up "$P_N1" && wait_for "$E2E_WAIT" nats_up "$P_N2" &&
    wait_for "$E2E_WAIT" nats_up "$P_N3" || fail "the cluster did not start"
cat >"$WORK/three.ebr" <<EOF
bus orders {
  log nats "nats://127.0.0.1:$P_N1" "nats://127.0.0.1:$P_N2" "nats://127.0.0.1:$P_N3" stream "E2E_R3" replicas 3 ack_wait 2s
}
target hook http "http://127.0.0.1:$P_RECV/hook" { retry exponential(attempts: 50, first: 100ms, max: 1s) }
rule all on orders { match exists id to hook }
EOF
# (the stream can be made once the cluster has elected its JetStream leader: ebd exits until then)
started() { ebd_start a "$P_A" "$WORK/three.ebr"; wait_for 10 ebd_up "$P_A" || { ebd_stop a; return 1; }; }
wait_for "$E2E_WAIT" started && pass "a bus with replicas 3 on three nodes" ||
    { fail "ebd did not start on the cluster"; tail -5 "$WORK/a.log"; }
ebd_start b "$P_B" "$WORK/three.ebr"
wait_for "$E2E_WAIT" ebd_up "$P_B" || fail "the second daemon did not start on the cluster"
: >"$WORK/posted"
post_range "$P_A" c 1 60
post_range "$P_B" d 1 60
nats_stop c2 KILL
# Posts go on; one answered 503 while the stream elects a leader is posted again, as a
# producer would (only what was answered 202 counts).
post_range "$P_A" e 1 60
post_range "$P_B" f 1 60
for i in 1 2 3 4 5; do
    grep -v ' 202$' "$WORK/posted" | cut -d' ' -f1 >"$WORK/again"
    [ -s "$WORK/again" ] || break
    grep ' 202$' "$WORK/posted" >"$WORK/posted.ok"; mv "$WORK/posted.ok" "$WORK/posted"
    sleep 1
    while read -r id; do
        p=${id%%[0-9]*}; n=${id#"$p"}; post_range "$P_A" "$p" "$n" "$n"
    done <"$WORK/again"
done
[ "$(grep -c ' 202$' "$WORK/posted")" -eq 240 ] && pass "the bus kept taking events with a node down" ||
    fail "taken with a node down: $(grep -c ' 202$' "$WORK/posted") of 240"
wait_for "$E2E_WAIT" all_delivered && pass "and kept delivering them, nothing acknowledged lost" ||
    fail "lost with a node down: $(all_delivered)"
ebd_stop a
ebd_stop b
nats_stop c1
nats_stop c3
# (under the sanitizers: a daemon that died of one has said so in its log)
if grep -l "Sanitizer\|runtime error:" "$WORK"/a.log "$WORK"/b.log >/dev/null 2>&1; then
    fail "a sanitizer report: $(grep -h -m3 "Sanitizer\|runtime error:" "$WORK"/a.log "$WORK"/b.log)"
fi
finish
