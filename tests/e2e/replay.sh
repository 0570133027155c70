#!/bin/sh
# End-to-end tests of the event query, replays and dry runs (docs/replay.md):
# GET /v1/buses/BUS/events with each filter, both orders and paging (every event once across
# pages); `ebc log dump`'s filters; a replay delivering a time range again with the `replay`
# attribute (all rules, one rule, one target), its status and counts, `ebc replay`; cancelling
# a long replay; a replay that survives kill -9 of ebd and finishes after the restart (every
# event of its range delivered at least once); the dry run offline (ebc) and over HTTP, which
# reads no file of the daemon's machine (imports, schema options); a replay that cannot be
# saved (500); a reload during a replay's held request (done in about a second).
#   replay.sh BIN_DIR SOURCE_DIR WORK_DIR
# Everything runs on 127.0.0.1, ports 29000-29999; every process started here is stopped.
. "$2/tests/e2e/lib.sh"
P=$(( 29000 + ($$ % 300) * 3 ))
PR=$((P + 1))
PS=$((P + 2))
URL=http://127.0.0.1:$P
E2E_WAIT=${E2E_WAIT:-90}
EBD=""
cleanup() {
    for p in $EBD $PIDS; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT

start_ebd() {
    "$BIN/ebd" --rules "$WORK/rules.ebr" --data "$WORK/data" --listen 127.0.0.1:$P >>"$WORK/ebd.log" 2>&1 &
    EBD=$!
    wait_for "$E2E_WAIT" curl -sf "$URL/healthz" || { fail "ebd did not start"; finish; }
}

# get PATH: the answer's body to $WORK/answer, the status printed.
get() { curl -s -o "$WORK/answer" -w '%{http_code}' "$URL$1"; }
# js FILTER: what jq's filter gives for the answer (raw strings).
js() { jq -r "$1" "$WORK/answer"; }
# count FILE PATTERN: lines of FILE holding PATTERN (0 when none or no file).
count() { if [ -f "$1" ]; then grep -c -- "$2" "$1"; else echo 0; fi; return 0; }
count_ge() { [ "$(count "$1" "$2")" -ge "$3" ]; }
state_is() {  # state_is NAME STATE
    [ "$(get "/v1/buses/main/replays/$1")" = 200 ] && [ "$(js '.state')" = "$2" ]
}

cat >"$WORK/rules.ebr" <<EOF
bus main
target hook http "http://127.0.0.1:$PR/hook"
target other http "http://127.0.0.1:$PR/other"
target slow http "http://127.0.0.1:$PS/slow" { timeout 10s }
target f file "out/f.jsonl"
rule ra on main { match type == "a" to hook, other }
rule rb on main { match type == "b" to hook, f }
rule rs on main { match type == "s" to slow }
target bad http "http://127.0.0.1:1/nothing-listens" {
  retry none
  dead_letter file "dlq/bad.jsonl"
}
rule rd on main { match type == "d" to bad }
EOF
"$BIN/e2e_receiver" $PR "$WORK/recv.log" & PIDS="$PIDS $!"
"$BIN/e2e_receiver" $PS "$WORK/slow.log" --delay 100 & PIDS="$PIDS $!"
start_ebd

# ---- 20 events: e1..e20, odd ones type a, even ones type b, source src(i % 3) ------------------
i=1
while [ $i -le 20 ]; do
    t=a; [ $((i % 2)) -eq 0 ] && t=b
    printf '{"specversion":"1.0","id":"e%d","source":"src%d","type":"%s","data":{"n":%d}}' $i $((i % 3)) $t $i >"$WORK/ev"
    st=$(post /v1/buses/main/events application/cloudevents+json "@$WORK/ev")
    case $st in 200|202) ;; *) fail "event e$i: $st $(cat "$WORK/answer")" ;; esac
    [ $i -eq 10 ] && { sleep 0.05; MID=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ); sleep 0.05; }
    i=$((i + 1))
done
wait_for "$E2E_WAIT" count_ge "$WORK/recv.log" . 30 || fail "live delivery: $(count "$WORK/recv.log" .) of 30"
pass "20 events delivered live"

# ---- the event query ----------------------------------------------------------------------------
st=$(get "/v1/buses/main/events")
[ "$st" = 200 ] && [ "$(js '.events | length')" = 20 ] && [ "$(js '.events[0].offset')" = 19 ] &&
    [ "$(js '.next')" = null ] && [ "$(js '.events[0].event.id')" = e20 ] &&
    pass "query: newest first by default, all 20, next null" || fail "query default: $st $(head -c 300 "$WORK/answer")"
# page_all ORDER LIMIT FILTERS: every id across the pages, one a line, to $WORK/ids
page_all() {
    : >"$WORK/ids"; _after=""; _pages=0
    while :; do
        _st=$(get "/v1/buses/main/events?order=$1&limit=$2$3$_after")
        [ "$_st" = 200 ] || { fail "page: $_st $(cat "$WORK/answer")"; return; }
        js '.events[].event.id' >>"$WORK/ids"
        _pages=$((_pages + 1))
        _next=$(js '.next // ""')
        [ -z "$_next" ] && break
        _after="&after=$_next"
        [ $_pages -gt 50 ] && { fail "paging does not end"; return; }
    done
}
page_all newest 7 ""
[ "$(sort -u "$WORK/ids" | wc -l)" = 20 ] && [ "$(wc -l <"$WORK/ids")" = 20 ] &&
    [ "$(head -1 "$WORK/ids")" = e20 ] && [ "$(tail -1 "$WORK/ids")" = e1 ] &&
    pass "query: newest first in pages of 7, every event once ($_pages pages)" || fail "newest pages: $(paste -sd, "$WORK/ids")"
page_all oldest 6 ""
[ "$(sort -u "$WORK/ids" | wc -l)" = 20 ] && [ "$(wc -l <"$WORK/ids")" = 20 ] &&
    [ "$(head -1 "$WORK/ids")" = e1 ] && [ "$(tail -1 "$WORK/ids")" = e20 ] &&
    pass "query: oldest first in pages of 6, every event once" || fail "oldest pages: $(paste -sd, "$WORK/ids")"
page_all newest 3 "&type=a"
[ "$(paste -sd, "$WORK/ids")" = "e19,e17,e15,e13,e11,e9,e7,e5,e3,e1" ] &&
    pass "query: type=a, paged" || fail "type=a: $(paste -sd, "$WORK/ids")"
page_all oldest 50 "&source=src1"
[ "$(paste -sd, "$WORK/ids")" = "e1,e4,e7,e10,e13,e16,e19" ] &&
    pass "query: source=src1" || fail "source=src1: $(paste -sd, "$WORK/ids")"
page_all oldest 50 "&source=src*&type=b"
[ "$(wc -l <"$WORK/ids")" = 10 ] && pass "query: source prefix src* and type=b" || fail "src*: $(paste -sd, "$WORK/ids")"
page_all oldest 50 "&until=$MID"
[ "$(paste -sd, "$WORK/ids")" = "e1,e2,e3,e4,e5,e6,e7,e8,e9,e10" ] &&
    pass "query: until an RFC 3339 time" || fail "until: $(paste -sd, "$WORK/ids")"
page_all newest 4 "&since=$MID"
[ "$(paste -sd, "$WORK/ids")" = "e20,e19,e18,e17,e16,e15,e14,e13,e12,e11" ] &&
    pass "query: since an RFC 3339 time, newest first" || fail "since: $(paste -sd, "$WORK/ids")"
page_all oldest 50 "&since=1h"
[ "$(wc -l <"$WORK/ids")" = 20 ] && pass "query: since=1h (a duration)" || fail "since=1h: $(wc -l <"$WORK/ids")"
page_all oldest 50 "&until=2h"
[ "$(wc -l <"$WORK/ids")" = 0 ] && pass "query: until=2h: none" || fail "until=2h: $(wc -l <"$WORK/ids")"
for q in "limit=0:limit" "limit=1001:limit" "since=yesterday:since" "until=5x:until" \
         "order=up:order" "after=zz:after" "order=oldest&after=n3:after"; do
    st=$(get "/v1/buses/main/events?${q%:*}")
    [ "$st" = 400 ] && [ "$(js '.field')" = "${q##*:}" ] && pass "query ${q%:*} -> 400 naming ${q##*:}" ||
        fail "query ${q%:*}: $st $(cat "$WORK/answer")"
done
st=$(get "/v1/buses/nope/events")
[ "$st" = 404 ] && pass "query: unknown bus -> 404" || fail "unknown bus: $st"

# ---- ebc log dump's filters (the log read-only beside the daemon) ------------------------------
LOG="$WORK/data/buses/main"
n=$("$BIN/ebc" log dump "$LOG" --type a | wc -l)
[ "$n" = 10 ] && pass "log dump --type a: 10" || fail "log dump --type a: $n"
"$BIN/ebc" log dump "$LOG" --order newest --limit 3 >"$WORK/dump"
[ "$(cut -d' ' -f1 "$WORK/dump" | paste -sd,)" = "19,18,17" ] && grep -q 'flags=0x0 len=' "$WORK/dump" &&
    pass "log dump --order newest --limit 3 (the text format kept)" || fail "newest dump: $(cat "$WORK/dump")"
n=$("$BIN/ebc" log dump "$LOG" --source src0 --json --until "$MID" | grep -c '"offset"')
[ "$n" = 3 ] && pass "log dump --source src0 --until TIME --json: 3" || fail "dump src0: $n"
n=$("$BIN/ebc" log dump "$LOG" --since "$MID" --type 'b*' --limit 2 | wc -l)
[ "$n" = 2 ] && pass "log dump --since TIME --type b* --limit 2" || fail "dump since: $n"
"$BIN/ebc" log dump "$LOG" --order sideways >/dev/null 2>&1
[ $? = 2 ] && pass "log dump --order sideways -> 2" || fail "bad --order accepted"

# ---- the dry run --------------------------------------------------------------------------------
cat >"$WORK/dry.ebr" <<'EOF'
bus main
target nowhere file "never.jsonl"
rule odd on main { match type == "a" to nowhere }
rule from0 on main { match source == "src0" to nowhere }
rule none on main { match type == "zzz" to nowhere }
EOF
"$BIN/ebc" replay --dry-run "$WORK/dry.ebr" --data "$WORK/data" --bus main --since 1h --json >"$WORK/answer"
[ "$(js '.events')" = 20 ] && [ "$(js '[.rules[].matched] | join(",")')" = "10,6,0" ] &&
    [ "$(js '.rules[0].samples | join(",")')" = "e1,e3,e5,e7,e9" ] &&
    [ "$(js '.rules[1].samples | join(",")')" = "e3,e6,e9,e12,e15" ] &&
    pass "dry run offline: 20 events, 10/6/0 matched, samples" || fail "dry run offline: $(cat "$WORK/answer")"
"$BIN/ebc" replay --dry-run "$WORK/dry.ebr" --data "$WORK/data" --bus main --since 1h --until "$MID" >"$WORK/dry.txt"
grep -q "^10 events read" "$WORK/dry.txt" && grep -q "^rule odd: 5 matched; samples: e1, e3, e5, e7, e9" "$WORK/dry.txt" &&
    pass "dry run offline, text, --until" || fail "dry run text: $(cat "$WORK/dry.txt")"
[ ! -e "$WORK/data/never.jsonl" ] || fail "the dry run delivered"
st=$(post "/v1/buses/main/dry-run?since=1h" text/plain "@$WORK/dry.ebr" -H "X-Ebr-Request: 1")
[ "$st" = 200 ] && [ "$(js '.events')" = 20 ] && [ "$(js '[.rules[].matched] | join(",")')" = "10,6,0" ] &&
    [ "$(js '.truncated')" = false ] && pass "dry run over HTTP" || fail "dry run HTTP: $st $(cat "$WORK/answer")"
printf 'bus main\nrule x on main { match type == to nowhere }\n' >"$WORK/bad.ebr"
st=$(post "/v1/buses/main/dry-run?since=1h" text/plain "@$WORK/bad.ebr" -H "X-Ebr-Request: 1")
[ "$st" = 400 ] && js '.messages' | grep -q "dry-run.ebr:2:" && pass "dry run: compile errors -> 400 with positions" ||
    fail "dry run bad rules: $st $(cat "$WORK/answer")"
# a file of the daemon's machine is never read by a dry run: its content never shows in the
# answer (the compiler quotes the lines it reads), whatever the text does around its import
printf 'bus main\nrule leaked_xq7 on main { match type == to nowhere }\n' >"$WORK/secret.ebr"
printf '{"type": "leaked_xq7", "minimum": "leaked_xq7"}\n' >"$WORK/secret.json"
printf 'bus main\nimport # a comment\n  "%s"\n' "$WORK/secret.ebr" >"$WORK/imp.ebr"
printf 'bus main\ntarget t file "a#" import "%s"\n' "$WORK/secret.ebr" >"$WORK/imp2.ebr"
printf 'bus main\ntarget t file "a#"\nimport "%s"\n' "$WORK/secret.ebr" >"$WORK/imp3.ebr"
for f in imp imp2 imp3; do
    st=$(post "/v1/buses/main/dry-run?since=1h" text/plain "@$WORK/$f.ebr" -H "X-Ebr-Request: 1")
    [ "$st" = 400 ] && ! grep -q leaked_xq7 "$WORK/answer" && js '.messages' | grep -q "cannot import" &&
        pass "dry run: a file import ($f) -> 400, the file unread" || fail "dry run import $f: $st $(cat "$WORK/answer")"
done
printf 'bus main { schema "x" file "%s" }\ntarget nowhere file "n.jsonl"\nrule r on main { match type == "a" to nowhere }\n' \
    "$WORK/secret.json" >"$WORK/sch.ebr"
st=$(post "/v1/buses/main/dry-run?since=1h" text/plain "@$WORK/sch.ebr" -H "X-Ebr-Request: 1")
[ "$st" = 200 ] && ! grep -q leaked_xq7 "$WORK/answer" && pass "dry run: a schema option's file is not read" ||
    fail "dry run schema file: $st $(cat "$WORK/answer")"
printf 'import "stdlib/slack"\n' | cat - "$WORK/dry.ebr" >"$WORK/std.ebr"
st=$(post "/v1/buses/main/dry-run?since=1h" text/plain "@$WORK/std.ebr" -H "X-Ebr-Request: 1")
[ "$st" = 200 ] && pass "dry run: a standard template import is fine" || fail "stdlib import: $st $(cat "$WORK/answer")"
st=$(post "/v1/buses/main/dry-run" text/plain "@$WORK/dry.ebr" -H "X-Ebr-Request: 1")
[ "$st" = 400 ] && [ "$(js '.field')" = since ] && pass "dry run without since -> 400" || fail "no since: $st"

# ---- replays ------------------------------------------------------------------------------------
st=$(post /v1/buses/main/replays application/json '{"name":"r1","since":"1h"}')
[ "$st" = 201 ] && [ "$(js '.total')" = 20 ] || fail "replay r1: $st $(cat "$WORK/answer")"
wait_for "$E2E_WAIT" state_is r1 done || fail "r1 did not finish: $(cat "$WORK/answer")"
[ "$(js '[.events_read, .matched, .delivered, .failed, .progress] | join(",")')" = "20,40,40,0,1" ] &&
    pass "replay r1: done, 20 read, 40 matched and delivered" || fail "r1 counts: $(cat "$WORK/answer")"
[ "$(count "$WORK/recv.log" '"replay":"r1"')" = 30 ] && [ "$(count "$WORK/data/out/f.jsonl" '"replay":"r1"')" = 10 ] &&
    pass "replay r1: the receiver and the file got every event again, with replay=r1" ||
    fail "r1 deliveries: $(count "$WORK/recv.log" '"replay":"r1"') http, $(count "$WORK/data/out/f.jsonl" '"replay":"r1"') file"
grep '"replay":"r1"' "$WORK/recv.log" | grep -q '/hook.*"id":"e4","source":"src1","type":"b","data":{"n":4},"replay":"r1"}' &&
    pass "a replayed body: the event with replay=r1 added" || fail "r1 body: $(grep -m1 '"replay":"r1"' "$WORK/recv.log")"
st=$(post /v1/buses/main/replays application/json '{"name":"r2","since":"1h","rule":"ra"}')
wait_for "$E2E_WAIT" state_is r2 done || fail "r2 did not finish"
[ "$(count "$WORK/recv.log" '"replay":"r2"')" = 20 ] && [ "$(count "$WORK/recv.log" '"type":"b".*"replay":"r2"')" = 0 ] &&
    pass "replay r2: one rule (ra: 10 events to hook and other)" || fail "r2: $(count "$WORK/recv.log" '"replay":"r2"')"
st=$(post /v1/buses/main/replays application/json '{"name":"r3","since":"1h","target":"hook"}')
wait_for "$E2E_WAIT" state_is r3 done || fail "r3 did not finish"
[ "$(count "$WORK/recv.log" '/hook.*"replay":"r3"')" = 20 ] && [ "$(count "$WORK/recv.log" '"replay":"r3"')" = 20 ] &&
    [ "$(count "$WORK/data/out/f.jsonl" '"replay":"r3"')" = 0 ] &&
    pass "replay r3: one target (hook: 20 events)" || fail "r3: $(count "$WORK/recv.log" '"replay":"r3"')"
"$BIN/ebc" replay --url "$URL" --bus main --since "$MID" --rule rb --target f --name r4 >"$WORK/cli.out" 2>&1
[ $? = 0 ] && grep -q "r4: done; 10 events read, 5 matched, 5 delivered" "$WORK/cli.out" &&
    [ "$(count "$WORK/data/out/f.jsonl" '"replay":"r4"')" = 5 ] &&
    pass "ebc replay: rule and target, since a time, followed to the end" || fail "ebc replay: $(cat "$WORK/cli.out")"
"$BIN/ebc" replay --url "$URL" --bus main --status r4 >"$WORK/answer" && [ "$(js '.state')" = done ] &&
    pass "ebc replay --status" || fail "--status: $(cat "$WORK/answer")"
"$BIN/ebc" replay --url "$URL" --bus main --list >"$WORK/answer" && [ "$(js '.replays | length')" = 4 ] &&
    pass "ebc replay --list" || fail "--list: $(cat "$WORK/answer")"
for q in '{"since":"1h","rule":"nope"}|404|rule' '{"since":"1h","target":"nope"}|404|target' \
         '{"since":"1h","rule":"ra","target":"f"}|400|target' '{"until":"1h"}|400|since' \
         '{"since":"1h","name":"a b"}|400|name' '{"since":"soon"}|400|since'; do
    body=${q%%|*}; rest=${q#*|}; rest=$(echo "$rest" | tr '|' ':')
    st=$(post /v1/buses/main/replays application/json "$body")
    [ "$st" = "${rest%:*}" ] && [ "$(js '.field')" = "${rest#*:}" ] && pass "replay $body -> $st" ||
        fail "replay $body: $st $(cat "$WORK/answer")"
done
st=$(post /v1/buses/nope/replays application/json '{"since":"1h"}')
[ "$st" = 404 ] && pass "replay on an unknown bus -> 404" || fail "unknown bus replay: $st"
# a replay whose file cannot be written is not started: 500, not 201 (its path is a directory)
mkdir -p "$WORK/data/replays/main/unsaved.json/x"
st=$(post /v1/buses/main/replays application/json '{"name":"unsaved","since":"1h"}')
[ "$st" = 500 ] && [ "$(get /v1/buses/main/replays/unsaved)" = 404 ] &&
    pass "a replay that cannot be saved -> 500, not started" || fail "unsaved replay: $st $(cat "$WORK/answer")"
rm -rf "$WORK/data/replays/main/unsaved.json"
ls -a "$WORK/data/replays/main" | grep -q '^\.unsaved\.' && fail "a temporary file left behind"

# ---- a delivery that fails: the replay's dead letter ---------------------------------------------
for i in 1 2; do
    post /v1/buses/main/events application/cloudevents+json \
        "{\"specversion\":\"1.0\",\"id\":\"d$i\",\"source\":\"dl\",\"type\":\"d\"}" >/dev/null
done
wait_for "$E2E_WAIT" count_ge "$WORK/data/dlq/bad.jsonl" . 2 || fail "live dead letters"
st=$(post /v1/buses/main/replays application/json '{"name":"dl","since":"1h","rule":"rd"}')
wait_for "$E2E_WAIT" state_is dl done || fail "dl did not finish"
[ "$(js '[.matched, .delivered, .failed, .dead_lettered] | join(",")')" = "2,0,2,2" ] &&
    js '.error' | grep -q "nothing-listens" &&
    [ "$(count "$WORK/data/dlq/bad.jsonl" '"offset":.*"replay":"dl"}$')" = 2 ] &&
    grep '"replay":"dl"}$' "$WORK/data/dlq/bad.jsonl" | grep -q '"event":{.*"id":"d1".*"replay":"dl"}' &&
    pass "a replayed delivery that fails: dead-lettered with replay=dl, counted, its error shown" ||
    fail "dl: $(cat "$WORK/answer"); $(tail -1 "$WORK/data/dlq/bad.jsonl")"

# ---- cancel: a long replay against a slow receiver ------------------------------------------------
i=1
while [ $i -le 30 ]; do
    post /v1/buses/main/events application/cloudevents+json \
        "{\"specversion\":\"1.0\",\"id\":\"s$i\",\"source\":\"slow\",\"type\":\"s\"}" >/dev/null
    i=$((i + 1))
done
wait_for "$E2E_WAIT" count_ge "$WORK/slow.log" . 30 || fail "slow live: $(count "$WORK/slow.log" .)"
st=$(post /v1/buses/main/replays application/json '{"name":"long","since":"1h","rule":"rs"}')
[ "$st" = 201 ] || fail "long: $st $(cat "$WORK/answer")"
wait_for "$E2E_WAIT" count_ge "$WORK/slow.log" '"replay":"long"' 3 || fail "long did not start"
st=$(post /v1/buses/main/replays application/json '{"name":"long","since":"1h"}')
[ "$st" = 409 ] && pass "a running name -> 409" || fail "duplicate running name: $st"
get /v1/buses/main/replays/long >/dev/null
[ "$(js '.state')" = running ] && [ "$(js '.position > .first and .progress < 1')" = true ] &&
    pass "status of a running replay shows its progress" || fail "running status: $(cat "$WORK/answer")"
st=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X DELETE "$URL/v1/buses/main/replays/long")
[ "$st" = 200 ] && [ "$(js '.state')" = cancelled ] && pass "DELETE cancels" || fail "cancel: $st $(cat "$WORK/answer")"
wait_for "$E2E_WAIT" sh -c "[ \"\$(curl -s $URL/v1/buses/main/replays/long | grep -o '\"finished\":\"')\" ]" ||
    fail "the cancelled replay's thread did not end"
n1=$(count "$WORK/slow.log" '"replay":"long"')
sleep 1
n2=$(count "$WORK/slow.log" '"replay":"long"')
[ "$n1" = "$n2" ] && [ "$n2" -lt 30 ] && pass "the cancelled replay stopped ($n2 of 30 delivered)" ||
    fail "cancelled replay went on: $n1 then $n2"

# ---- kill -9 during a replay: it resumes after the restart and finishes ----------------------------
st=$(post /v1/buses/main/replays application/json '{"name":"crash","since":"1h","rule":"rs"}')
wait_for "$E2E_WAIT" count_ge "$WORK/slow.log" '"replay":"crash"' 5 || fail "crash did not start"
sleep 1.2       # (its position saved at least once)
kill -9 "$EBD"; wait "$EBD" 2>/dev/null; EBD=""
before=$(count "$WORK/slow.log" '"replay":"crash"')
start_ebd
wait_for "$E2E_WAIT" state_is crash done || fail "crash did not finish after the restart: $(cat "$WORK/answer")"
missing=""
i=1
while [ $i -le 30 ]; do
    grep -q "\"id\":\"s$i\".*\"replay\":\"crash\"" "$WORK/slow.log" || missing="$missing s$i"
    i=$((i + 1))
done
[ -z "$missing" ] && [ "$before" -lt 30 ] && grep -q 'msg="replay resumed" replay=crash' "$WORK/ebd.log" &&
    pass "kill -9 at $before of 30: resumed and finished, every event delivered at least once" ||
    fail "crash: before=$before missing:$missing"
get /v1/buses/main/replays/long >/dev/null
[ "$(js '.state')" = cancelled ] && pass "the cancelled replay stays cancelled across the restart" ||
    fail "long after restart: $(cat "$WORK/answer")"

# ---- a reload during a replay (it goes on with the new rules), then SIGTERM and a restart ----------
st=$(post /v1/buses/main/replays application/json '{"name":"calm","since":"1h","rule":"rs"}')
wait_for "$E2E_WAIT" count_ge "$WORK/slow.log" '"replay":"calm"' 3 || fail "calm did not start"
st=$(post /v1/admin/reload application/json '')
[ "$st" = 200 ] || fail "reload: $st $(cat "$WORK/answer")"
n=$(count "$WORK/slow.log" '"replay":"calm"')
wait_for "$E2E_WAIT" count_ge "$WORK/slow.log" '"replay":"calm"' $((n + 3)) && pass "a reload during a replay: it goes on" ||
    fail "calm stopped at the reload"
kill -TERM "$EBD"; wait "$EBD" 2>/dev/null; EBD=""
grep '"name":"calm"' "$WORK/data/replays/main/calm.json" | grep -q '"state":"running"' ||
    fail "a stopped daemon's replay is not saved running: $(cat "$WORK/data/replays/main/calm.json")"
start_ebd
wait_for "$E2E_WAIT" state_is calm done || fail "calm did not finish after the restart: $(cat "$WORK/answer")"
missing=""
i=1
while [ $i -le 30 ]; do
    grep -q "\"id\":\"s$i\".*\"replay\":\"calm\"" "$WORK/slow.log" || missing="$missing s$i"
    i=$((i + 1))
done
[ -z "$missing" ] && [ "$(count "$WORK/slow.log" '"replay":"calm"')" = 30 ] &&
    pass "SIGTERM during a replay: resumed exactly where it stopped (30 deliveries, none twice)" ||
    fail "calm: $(count "$WORK/slow.log" '"replay":"calm"') deliveries, missing:$missing"

# ---- a reload waits a moment for a replay in the middle of a long request, not its timeout -------
# reload_while_held RELEASE WHAT: a reload answers 200 while what the replay is in the middle of
# is still held (RELEASE not yet there): had it waited for it, it would answer only after the
# 5-minute timeout, past E2E_WAIT.
reload_while_held() {
    rm -f "$WORK/reload.code"
    curl -s -o "$WORK/reload.answer" -w '%{http_code}' -X POST "$URL/v1/admin/reload" \
         -H 'Content-Type: application/json' --data-binary '' >"$WORK/reload.code" &
    _rl=$!
    if wait_for "$E2E_WAIT" test -s "$WORK/reload.code" && [ ! -e "$1" ] &&
       [ "$(cat "$WORK/reload.code")" = 200 ]; then
        pass "a reload during $2: answered while it is still held"
    else
        fail "reload behind $2: $(cat "$WORK/reload.code" 2>/dev/null) $(cat "$WORK/reload.answer" 2>/dev/null)"
    fi
    kill $_rl 2>/dev/null
    wait $_rl 2>/dev/null
}
PT=$((P + 3))
"$BIN/e2e_receiver" $PT "$WORK/stuck.log" --hold "$WORK/release" --arrived "$WORK/stuck.arr" & PIDS="$PIDS $!"
printf 'target stuck http "http://127.0.0.1:%s/stuck" { timeout 5m }\nrule rt on main { match type == "a" to stuck }\n' \
    $PT >>"$WORK/rules.ebr"
st=$(post /v1/admin/reload application/json '')
[ "$st" = 200 ] || fail "reload (stuck): $st $(cat "$WORK/answer")"
st=$(post /v1/buses/main/replays application/json '{"name":"stuck","since":"1h","rule":"rt"}')
wait_for "$E2E_WAIT" count_ge "$WORK/stuck.arr" '"replay":"stuck"' 1 || fail "stuck did not start"
reload_while_held "$WORK/release" "a replay's held request"
touch "$WORK/release"
curl -s -o "$WORK/answer" -X DELETE "$URL/v1/buses/main/replays/stuck" >/dev/null
stuck_ended() { state_is stuck cancelled || [ "$(js '.state')" = done ]; }
wait_for "$E2E_WAIT" stuck_ended || fail "stuck did not end: $(cat "$WORK/answer")"
# the same for a function transform in progress (a command that takes 20 s)
printf 'rule rf on main {\n  match type == "b"\n  transform function exec "touch %s/fn.started; while [ ! -e %s/fn.release ]; do sleep 0.1; done; cat" timeout 5m\n  to stuck\n}\n' \
    "$WORK" "$WORK" >>"$WORK/rules.ebr"
st=$(post /v1/admin/reload application/json '')
[ "$st" = 200 ] || fail "reload (fn): $st $(cat "$WORK/answer")"
st=$(post /v1/buses/main/replays application/json '{"name":"fn","since":"1h","rule":"rf"}')
wait_for "$E2E_WAIT" test -e "$WORK/fn.started" || fail "fn did not start"
reload_while_held "$WORK/fn.release" "a replay's function transform"
touch "$WORK/fn.release"
curl -s -o "$WORK/answer" -X DELETE "$URL/v1/buses/main/replays/fn" >/dev/null
fn_ended() { state_is fn cancelled || [ "$(js '.state')" = done ]; }
wait_for "$E2E_WAIT" fn_ended || fail "fn did not end: $(cat "$WORK/answer")"

finish
