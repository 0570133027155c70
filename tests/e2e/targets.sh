#!/bin/sh
# End-to-end tests of what ebd's targets may do to the machine they run on: commands (exec
# targets and function transforms) get a clean environment, default signals and an end to what
# they leave behind, and their standard error reaches the log capped and escaped; file targets
# stay inside the data directory, follow no symbolic link there and write one line per payload;
# an http target speaks http or https only, and with `batch` carries many deliveries per request.
#   targets.sh BIN_DIR SOURCE_DIR WORK_DIR
# Everything runs on 127.0.0.1; every process started here is stopped at the end.
. "$2/tests/e2e/lib.sh"
# Ports 5000-9999 (daemon.sh takes 10000-18999 and e2e.sh 20000-31999, so all can run at once).
P=$(( 5000 + $$ % 5000 ))
URL=http://127.0.0.1:$P
E2E_WAIT=${E2E_WAIT:-60}
EBD=""
cleanup() {
    for p in $EBD $PIDS; do kill "$p" 2>/dev/null; done
    [ -s "$WORK/left.pid" ] && kill "$(cat "$WORK/left.pid")" 2>/dev/null
    wait 2>/dev/null
}
trap cleanup EXIT

start_ebd() {  # start_ebd RULES DATA: in the background, logging to $WORK/ebd.log
    "$BIN/ebd" --rules "$1" --data "$2" --listen 127.0.0.1:$P >>"$WORK/ebd.log" 2>&1 &
    EBD=$!
    wait_for "$E2E_WAIT" curl -sf "$URL/healthz" || { fail "ebd did not start"; finish; }
}
stop_ebd() {
    [ -n "$EBD" ] && { kill -TERM "$EBD" 2>/dev/null; wait "$EBD" 2>/dev/null; }
    EBD=""
}
# refused RULES: runs ebd on RULES (data in $WORK/refused); true if it exits 1, its message in
# $WORK/err.
refused() {
    "$BIN/ebd" --rules "$1" --data "$WORK/refused" --listen 127.0.0.1:$P 2>"$WORK/err"
    [ $? -eq 1 ]
}
# ended PID: has that process ended (gone, or a zombie waiting for its parent)?
ended() {
    _state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
    [ -z "$_state" ] || [ "$_state" = Z ]
}

# ---- commands ---------------------------------------------------------------------------------
export EBR_ADMIN_TOKEN=adm1n-secret-0123456789 E2E_DB_TOKEN=db-secret-0123456789 E2E_GREETING=hello
cat >"$WORK/cmd.ebr" <<EOF
server { admin_token env("EBR_ADMIN_TOKEN") }
bus main
target dump exec "env | sort >\"\$1\"" {
  args ["$WORK/env.out"]
  env {
    GREETING = env("E2E_GREETING")
    MODE = "fast"
  }
}
# (a program, not sh: dash unblocks every signal when it starts)
target status exec ["cp", "/proc/self/status", "$WORK/status.out"]
target prio exec ["cp", "/proc/self/stat", "$WORK/stat.out"]
target leaves exec "sleep 300 & echo \$! >\"\$1\"" { args ["$WORK/left.pid"] }
target noisy exec "printf 'said \"no\" level=error msg=forged\\n' >&2; yes 0123456789 | head -c 2000000 >&2; exit 3" {
  retry none
  dead_letter file "dlq/noisy.jsonl"
}
target chatty exec "printf 'all \"fine\"\\nreally\\n' >&2"
target sink file "out/sink.jsonl"
rule to_dump on main { match type == "dump" to dump }
rule to_status on main { match type == "status" to status }
rule to_prio on main { match type == "prio" to prio }
rule to_leaves on main { match type == "leaves" to leaves }
rule to_noisy on main { match type == "noisy" to noisy }
rule to_chatty on main { match type == "chatty" to chatty }
rule fn on main {
  match type == "fn"
  transform function exec "echo \"token=\$EBR_ADMIN_TOKEN\$E2E_DB_TOKEN\" >&2; exit 1"
  to sink
  dead_letter fn_dlq
}
target fn_dlq file "dlq/fn.jsonl"
EOF
start_ebd "$WORK/cmd.ebr" "$WORK/data"
for t in dump status prio leaves noisy chatty fn; do
    s=$(post /v1/buses/main/events application/cloudevents+json "$(ev "$t-1" "$t")")
    [ "$s" = 202 ] || fail "post $t: $s $(cat "$WORK/answer")"
done

wait_for "$E2E_WAIT" grep -q '^PATH' "$WORK/env.out" || fail "exec target did not run: $(cat "$WORK/env.out" 2>/dev/null)"
if grep -q 'secret' "$WORK/env.out"; then
    fail "a command sees the daemon's secrets: $(grep secret "$WORK/env.out")"
else
    pass "a command's environment holds none of the daemon's variables"
fi
grep -q '^GREETING=hello$' "$WORK/env.out" && grep -q '^MODE=fast$' "$WORK/env.out" \
    && pass "env { GREETING = env(\"E2E_GREETING\"); MODE = \"fast\" } reaches the command" \
    || fail "env { } variables: $(cat "$WORK/env.out")"
grep -q '^PATH=' "$WORK/env.out" && grep -q '^HOME=' "$WORK/env.out" \
    && pass "PATH and HOME are passed" || fail "PATH/HOME: $(cat "$WORK/env.out")"
extra=$(grep -v -E '^(PATH|HOME|LANG|TZ|GREETING|MODE|PWD)=' "$WORK/env.out")
[ -z "$extra" ] && pass "and nothing else (the shell adds PWD)" || fail "unexpected variables: $extra"
# The daemon blocks SIGTERM, SIGINT and SIGHUP in its threads (it takes them with sigwait) and
# ignores SIGPIPE (13) and SIGXFSZ (25): a command gets none of that, so timeout(1) works in it.
wait_for "$E2E_WAIT" grep -q '^SigIgn' "$WORK/status.out" || fail "status target did not run"
grep -q '^SigBlk:[[:space:]]*0*$' "$WORK/status.out" \
    && pass "no signal is blocked in a command" || fail "blocked signals: $(grep SigBlk "$WORK/status.out")"
ign=$(sed -n 's/^SigIgn:[[:space:]]*//p' "$WORK/status.out")
[ -n "$ign" ] && [ $(( 0x$ign & ((1 << 12) | (1 << 24)) )) -eq 0 ] \
    && pass "SIGPIPE and SIGXFSZ are at their default in a command" || fail "ignored signals: $ign"

# Routers and delivery threads yield to ingest (nice 19 for those threads); a command keeps the
# daemon's own priority (field 19 of /proc/PID/stat: the nice value; the names hold no space).
wait_for "$E2E_WAIT" test -s "$WORK/stat.out" || fail "prio target did not run"
base=$(cut -d' ' -f19 "/proc/$EBD/stat")
cmdnice=$(cut -d' ' -f19 "$WORK/stat.out")
[ "$cmdnice" = "$base" ] && pass "a command runs at the daemon's priority (nice $base)" \
    || fail "a command runs at nice $cmdnice, the daemon at $base"
low=$((base + 19 > 19 ? 19 : base + 19))
lowered=$(for f in /proc/$EBD/task/*/stat; do cut -d' ' -f19 "$f"; done | grep -c -x -- "$low")
[ "$lowered" -ge 2 ] && pass "$lowered threads (routers, delivery) run at nice $low" \
    || fail "threads at nice $low: $lowered"

wait_for "$E2E_WAIT" test -s "$WORK/left.pid" || fail "leaves target did not run"
left=$(cat "$WORK/left.pid")
wait_for "$E2E_WAIT" ended "$left" && pass "what a finished command left running is ended" \
    || fail "the command's background child $left still runs"

wait_for "$E2E_WAIT" grep -q 'target=noisy' "$WORK/ebd.log" || fail "noisy target not logged"
wait_for "$E2E_WAIT" lines_ge "$WORK/data/dlq/noisy.jsonl" 1 || fail "noisy target: no dead letter"
grep -q '^level=error msg=forged' "$WORK/ebd.log" && fail "a command's stderr wrote a line of its own into the log"
grep 'target=noisy' "$WORK/ebd.log" | grep -q 'exited with status 3: said \\"no\\" level=error msg=forged 0123456789' \
    && pass "a failed command's stderr is in its error, on one line, escaped" \
    || fail "noisy error: $(grep 'target=noisy' "$WORK/ebd.log")"
size=$(wc -c <"$WORK/ebd.log")
[ "$size" -lt 20000 ] && pass "2 MB of stderr left $size bytes of log in all" || fail "the log grew to $size bytes"
grep -q '"error":"/bin/sh exited with status 3: said \\"no\\"' "$WORK/data/dlq/noisy.jsonl" \
    && pass "the dead letter carries the same error" || fail "noisy dead letter: $(head -c 600 "$WORK/data/dlq/noisy.jsonl")"

wait_for "$E2E_WAIT" grep -q 'target=chatty' "$WORK/ebd.log" || fail "chatty target not logged"
grep -q 'msg="command wrote to standard error" target=chatty stderr="all \\"fine\\" really"' "$WORK/ebd.log" \
    && pass "a successful command's stderr is logged, escaped" || fail "chatty: $(grep 'target=chatty' "$WORK/ebd.log")"

wait_for "$E2E_WAIT" lines_ge "$WORK/data/dlq/fn.jsonl" 1 || fail "function transform: no dead letter"
if grep -q -e adm1n-secret -e db-secret "$WORK/ebd.log" "$WORK/data/dlq/fn.jsonl"; then
    fail "a function's stderr put a secret in the log: $(grep -h -e secret "$WORK/ebd.log" "$WORK/data/dlq/fn.jsonl")"
else
    pass "a function command sees no secret either ($(grep -o "exited with status 1: token=[^\"]*" "$WORK/data/dlq/fn.jsonl"))"
fi
stop_ebd

# ---- file targets: one line per payload --------------------------------------------------------
cat >"$WORK/lines.ebr" <<'EOF'
bus main
target events file "out/events.jsonl"
target texts file "out/texts.txt"
target failing exec "exit 1" { retry none; dead_letter file "dlq/failing.jsonl" }
rule all on main { match type == "pretty" to events, failing }
rule text on main { match type == "text" transform "says: ${data.msg}" to texts }
EOF
start_ebd "$WORK/lines.ebr" "$WORK/data2"
pretty='{
  "specversion": "1.0",
  "id": "p1",
  "source": "e2e",
  "type": "pretty",
  "data": { "text": "a b\tc", "list": [ 1, 2 ] }
}'
expect_status 202 "a pretty-printed event" "$(post /v1/buses/main/events application/cloudevents+json "$pretty")"
expect_status 202 "an event whose text forges a line" "$(post /v1/buses/main/events application/cloudevents+json \
    "$(ev t1 text '{"msg": "hi\n{\"id\":\"forged\"}\r\\n"}')")"
wait_for "$E2E_WAIT" lines_ge "$WORK/data2/out/events.jsonl" 1 || fail "no event in the file"
wait_for "$E2E_WAIT" lines_ge "$WORK/data2/dlq/failing.jsonl" 1 || fail "no dead letter in the file"
wait_for "$E2E_WAIT" lines_ge "$WORK/data2/out/texts.txt" 1 || fail "no text in the file"
want='{"specversion":"1.0","id":"p1","source":"e2e","type":"pretty","data":{"text":"a b\tc","list":[1,2]}}'
[ "$(cat "$WORK/data2/out/events.jsonl")" = "$want" ] \
    && pass "a pretty-printed event is one line, without white space between its tokens" \
    || fail "pretty event in the file: $(cat "$WORK/data2/out/events.jsonl")"
[ "$(grep -c '' "$WORK/data2/dlq/failing.jsonl")" = 1 ] && grep -q -F "{\"event\":$want,\"rule\":\"all\"" "$WORK/data2/dlq/failing.jsonl" \
    && pass "a dead letter of it is one line too" || fail "dead letter file: $(cat "$WORK/data2/dlq/failing.jsonl")"
# msg is hi, a line feed, {"id":"forged"}, a carriage return, a backslash and an n.
want_text='says: hi\n{"id":"forged"}\r\\n'
[ "$(grep -c '' "$WORK/data2/out/texts.txt")" = 1 ] && [ "$(cat "$WORK/data2/out/texts.txt")" = "$want_text" ] \
    && pass "a text payload's line breaks (and backslashes) are escaped" \
    || fail "text payload in the file: $(cat "$WORK/data2/out/texts.txt")"
stop_ebd

# ---- file targets stay inside the data directory and follow no link there ---------------------
printf 'bus main\ntarget out file env("E2E_PATH")\nrule r on main { match exists id to out }\n' >"$WORK/path.ebr"
E2E_PATH=../escaped.jsonl refused "$WORK/path.ebr" && grep -q "target 'out': '../escaped.jsonl': a relative path names a file under the data directory and cannot leave it" "$WORK/err" \
    && pass "env() path with '..' refused: $(cat "$WORK/err")" || fail "env() path with ..: $(cat "$WORK/err")"
[ ! -e "$WORK/escaped.jsonl" ] || fail "the file outside the data directory was created"
for own in buses/main/00000000000000000000.seg ./pairs/main; do
    E2E_PATH=$own refused "$WORK/path.ebr" && grep -q "target 'out': '$own': .* under the data directory is the daemon's own" "$WORK/err" \
        && pass "a file target may not write into the daemon's own files ($own)" || fail "own files ($own): $(cat "$WORK/err")"
done
printf 'bus main\ntarget out file "a/../../escaped.jsonl"\nrule r on main { match exists id to out }\n' >"$WORK/path2.ebr"
refused "$WORK/path2.ebr" && grep -q "path2.ebr:2:17: error: a relative path names a file under the data directory" "$WORK/err" \
    && pass "a literal path with '..' is refused with its position" || fail "literal path with ..: $(cat "$WORK/err")"

mkdir -p "$WORK/elsewhere" "$WORK/data3/logs"
: >"$WORK/victim"
ln -s "$WORK/elsewhere" "$WORK/data3/out"
ln -s "$WORK/victim" "$WORK/data3/logs/events.jsonl"
printf 'bus main\ntarget out file "out/x.jsonl"\nrule r on main { match exists id to out }\n' >"$WORK/link1.ebr"
"$BIN/ebd" --rules "$WORK/link1.ebr" --data "$WORK/data3" --listen 127.0.0.1:$P 2>"$WORK/err"
[ $? -eq 1 ] && grep -q "'out' is not a directory (symbolic links are not followed under the data directory)" "$WORK/err" \
    && pass "a linked directory under the data directory is refused: $(cat "$WORK/err")" || fail "linked directory: $(cat "$WORK/err")"
[ -z "$(ls "$WORK/elsewhere")" ] || fail "a file was created through the link: $(ls "$WORK/elsewhere")"
printf 'bus main\ntarget out file "logs/events.jsonl"\nrule r on main { match exists id to out }\n' >"$WORK/link2.ebr"
"$BIN/ebd" --rules "$WORK/link2.ebr" --data "$WORK/data3" --listen 127.0.0.1:$P 2>"$WORK/err"
[ $? -eq 1 ] && grep -q "it is a symbolic link" "$WORK/err" \
    && pass "a linked file is refused: $(cat "$WORK/err")" || fail "linked file: $(cat "$WORK/err")"
# A dead-letter file is opened when a dead letter comes: a link planted by then is not followed.
cat >"$WORK/link3.ebr" <<'EOF'
bus main
target failing exec "exit 1" { retry none; dead_letter file "dlq/failing.jsonl" }
rule r on main { match exists id to failing }
EOF
start_ebd "$WORK/link3.ebr" "$WORK/data3"
ln -s "$WORK/elsewhere" "$WORK/data3/dlq"
expect_status 202 "an event for a dead letter" "$(post /v1/buses/main/events application/cloudevents+json "$(ev d1 x)")"
wait_for "$E2E_WAIT" grep -q 'msg="dead-letter delivery failed".*symbolic links are not followed' "$WORK/ebd.log" \
    && pass "a dead letter is not written through a link" || fail "dead letter through a link: $(grep dead "$WORK/ebd.log" | tail -3)"
[ -z "$(ls "$WORK/elsewhere")" ] || fail "a dead letter went through the link: $(ls "$WORK/elsewhere")"
stop_ebd

# ---- http targets: http and https only, whatever the URL's source ------------------------------
printf 'bus main\ntarget hook http env("E2E_URL")\nrule r on main { match exists id to hook }\n' >"$WORK/url.ebr"
E2E_URL=file:///etc/passwd refused "$WORK/url.ebr" && grep -q "target 'hook': the URL 'file:///etc/passwd' does not start with http:// or https://" "$WORK/err" \
    && pass "an env() URL of another scheme is refused: $(cat "$WORK/err")" || fail "file:// URL from env: $(cat "$WORK/err")"

# ---- http targets with batch: many deliveries per request, a failed request retried whole -------
# Two rules to one target with `batch 10`; 20 events posted at once make 40 deliveries.  The
# receiver fails the first request: its events come again; in the end every (rule, event) is in
# the answered requests exactly once, as JSON arrays of at most 10 CloudEvents.
PB=$(( 5000 + (P - 5000 + 2500) % 5000 ))
"$BIN/e2e_receiver" $PB "$WORK/batch.log" --fail 1 &
PIDS="$PIDS $!"
cat >"$WORK/batch.ebr" <<EOF
bus main
target hook http "http://127.0.0.1:$PB/batch" { batch 10; retry exponential(attempts: 5, first: 100ms) }
rule one on main { match type == "batched" to hook }
rule two on main { match type == "batched" to hook }
EOF
start_ebd "$WORK/batch.ebr" "$WORK/data4"
b="["; j=0; while [ $j -lt 20 ]; do b="$b$( [ $j -gt 0 ] && echo ,)$(ev "bt$j" batched)"; j=$((j + 1)); done
expect_status 202 "20 events for a target with batch 10" "$(post /v1/buses/main/events application/cloudevents-batch+json "$b]")"
answered() { awk -F'\t' '$3 == 200' "$WORK/batch.log"; }
delivered() { [ "$(answered | grep -o '"id":"bt[0-9]*"' | wc -l)" -ge 40 ]; }
wait_for "$E2E_WAIT" delivered
twice=$(answered | grep -o '"id":"bt[0-9]*"' | sort | uniq -c | awk '$1 == 2' | wc -l)
all=$(answered | grep -o '"id":"bt[0-9]*"' | wc -l)
[ "$twice" = 20 ] && [ "$all" = 40 ] && pass "batch 10: each of 40 deliveries answered once, after a failed request" \
    || fail "batch: $all deliveries answered, $twice events twice: $(cut -f2-3 "$WORK/batch.log" | sort | uniq -c)"
most=$(answered | awk -F'"id":"bt' '{ print NF - 1 }' | sort -n | tail -1)
reqs=$(answered | wc -l)
[ "$most" -gt 1 ] && [ "$most" -le 10 ] && pass "batch 10: $reqs requests, the largest of $most events" \
    || fail "batch: the largest request carried $most events ($reqs requests)"
awk -F'\t' '$3 == 500 { found = 1 } END { exit !found }' "$WORK/batch.log" \
    && pass "batch: the first request failed (500) and its events were sent again" \
    || fail "batch: no failed request in the log"
awk -F'\t' '$3 == 200 && $7 != "application/cloudevents-batch+json" { bad = 1 } END { exit bad }' "$WORK/batch.log" \
    && pass "batch: Content-Type application/cloudevents-batch+json" || fail "batch: $(cut -f7 "$WORK/batch.log" | sort -u)"
answered | cut -f8 | head -1 | grep -q '^\[{"specversion":"1.0"' \
    && pass "batch: the body is a JSON array of the events" || fail "batch body: $(cut -f8 "$WORK/batch.log" | head -c 200)"
stop_ebd

finish
