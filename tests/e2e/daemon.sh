#!/bin/sh
# End-to-end tests of ebd's start-up, reloads, listener and configuration: no acknowledged event
# lost while the daemon starts or reloads, one daemon per port, TLS, and what a newcomer reads
# (--help, --version, answers, error messages).
#   daemon.sh BIN_DIR SOURCE_DIR WORK_DIR
# Everything runs on 127.0.0.1; every process started here is stopped at the end.
. "$2/tests/e2e/lib.sh"
# Ports 10000-18999 (e2e.sh takes 20000-31999, so the two can run at once), below Linux's
# ephemeral range.
BASE=$(( 10000 + $$ % 9000 ))
P=$BASE
URL=http://127.0.0.1:$P
EBD=""
IO=""
cleanup() {
    [ -n "$IO" ] && kill "$IO" 2>/dev/null
    for p in $EBD $PIDS; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -f "$WORK/io.dd"
}
trap cleanup EXIT

start_ebd() {  # start_ebd RULES DATA [FLAGS...]: in the background, logging to $WORK/ebd.log
    _rules=$1; _data=$2; shift 2
    "$BIN/ebd" --rules "$_rules" --data "$_data" --listen 127.0.0.1:$P "$@" >>"$WORK/ebd.log" 2>&1 &
    EBD=$!
}
stop_ebd() {
    [ -n "$EBD" ] && { kill -TERM "$EBD" 2>/dev/null; wait "$EBD" 2>/dev/null; }
    EBD=""
}
healthy() { curl -sf "$URL/healthz"; }

# fire BUS PREFIX N FILE: posts events PREFIX-0, PREFIX-1, ... to BUS as fast as it can, from
# before the daemon listens, until N are acknowledged (202); their ids go to FILE.  Bounded: it
# gives up after E2E_WAIT seconds.
fire() {
    _i=0; _acked=0; _end=$(( $(date +%s) + E2E_WAIT ))
    : >"$4"
    while [ $_acked -lt "$3" ] && [ "$(date +%s)" -lt $_end ]; do
        _s=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/v1/buses/$1/events" \
             -H 'Content-Type: application/cloudevents+json' --data-binary "$(ev "$2-$_i" x)")
        if [ "$_s" = 202 ]; then echo "$2-$_i" >>"$4"; _acked=$((_acked + 1)); fi
        _i=$((_i + 1))
    done
}

# delivered ACKED FILE...: is every id of ACKED in each FILE?  Prints what is missing where.
delivered() {
    _ok=0
    for _f in "$@"; do
        [ "$_f" = "$1" ] && continue
        for _id in $(cat "$1"); do
            grep -q "\"id\":\"$_id\"" "$_f" 2>/dev/null || { echo "  $_id not in $_f"; _ok=1; }
        done
    done
    return $_ok
}

# ---- start-up: events acknowledged from the first request on reach every matching target ------
# The rules have eight pairs; each new pair fixes its position (a synced write) as the daemon
# starts.  A disk writer beside the test makes those syncs slow, which is what opened the window.
{
    echo 'bus main'
    k=1
    while [ $k -le 8 ]; do
        echo "target t$k file \"out/t$k.jsonl\""
        echo "rule r$k on main { match exists id to t$k }"
        k=$((k + 1))
    done
} >"$WORK/start.ebr"
(while :; do dd if=/dev/zero of="$WORK/io.dd" bs=1M count=32 conv=fsync 2>/dev/null; done) &
IO=$!
lost=0
round=1
while [ $round -le 20 ]; do
    fire main "s$round" 5 "$WORK/acked.$round" &
    F=$!
    start_ebd "$WORK/start.ebr" "$WORK/start$round"
    wait $F
    if [ "$(grep -c '' "$WORK/acked.$round")" -ne 5 ]; then
        fail "start-up round $round: only $(grep -c '' "$WORK/acked.$round") of 5 events acknowledged"
    fi
    files=""
    k=1
    while [ $k -le 8 ]; do files="$files $WORK/start$round/out/t$k.jsonl"; k=$((k + 1)); done
    # shellcheck disable=SC2086
    if ! wait_for "$E2E_WAIT" delivered "$WORK/acked.$round" $files; then
        # shellcheck disable=SC2086
        delivered "$WORK/acked.$round" $files
        lost=$((lost + 1))
    fi
    stop_ebd
    round=$((round + 1))
done
kill "$IO" 2>/dev/null; wait "$IO" 2>/dev/null; IO=""; rm -f "$WORK/io.dd"
[ $lost -eq 0 ] && pass "start-up under I/O load: 20 rounds, every event acknowledged from the first request delivered to all 8 targets" \
    || fail "start-up: acknowledged events lost in $lost of 20 rounds"

# ---- reload: a bus and rule added by a reload get every event acknowledged under them ----------
# Events are posted to the new bus from before the reload (404 until it exists): the first 202 is
# an event acknowledged under the new rules, and the new rule must deliver it.
cp "$WORK/start.ebr" "$WORK/reload.ebr"
start_ebd "$WORK/reload.ebr" "$WORK/reload"
wait_for "$E2E_WAIT" healthy || fail "ebd did not start"
lost=0
round=1
while [ $round -le 5 ]; do
    fire "nb$round" "n$round" 5 "$WORK/racked.$round" &
    F=$!
    printf 'bus nb%d\ntarget nt%d file "out/nb%d.jsonl"\nrule nr%d on nb%d { match exists id to nt%d }\n' \
        $round $round $round $round $round $round >>"$WORK/reload.ebr"
    kill -HUP "$EBD"
    wait $F
    wait_for "$E2E_WAIT" delivered "$WORK/racked.$round" "$WORK/reload/out/nb$round.jsonl" \
        || { delivered "$WORK/racked.$round" "$WORK/reload/out/nb$round.jsonl"; lost=$((lost + 1)); }
    round=$((round + 1))
done
[ $lost -eq 0 ] && pass "reload: 5 rounds, every event acknowledged on a bus the reload added delivered by its new rule" \
    || fail "reload: acknowledged events lost in $lost of 5 rounds"

# ---- one daemon per port ----------------------------------------------------------------------
"$BIN/ebd" --rules "$WORK/start.ebr" --data "$WORK/second" --listen 127.0.0.1:$P >"$WORK/out" 2>"$WORK/err" &
SECOND=$!
PIDS="$PIDS $SECOND"
if wait_for "$E2E_WAIT" sh -c "! kill -0 $SECOND 2>/dev/null"; then
    wait $SECOND; st=$?
    [ $st -eq 1 ] && grep -q "^ebd: cannot listen on 127.0.0.1:$P: Address already in use" "$WORK/err" \
        && [ ! -e "$WORK/second" ] \
        && pass "a second ebd on a port in use exits 1 before it touches any data: $(cat "$WORK/err")" \
        || fail "second ebd on the same port: exit $st, $(cat "$WORK/err")"
else
    fail "a second ebd started on a port already in use"
fi
[ "$(curl -s "$URL/healthz")" = '{"status":"ok"}' ] && pass "the first daemon still serves; /healthz answers {\"status\":\"ok\"}" \
    || fail "/healthz: $(curl -s "$URL/healthz")"

# ---- answers and messages ---------------------------------------------------------------------
s=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "$URL/v1/admin/reload")
[ "$s" = 200 ] && [ "$(cat "$WORK/answer")" = '{"status":"reloaded"}' ] && pass "a reload answers {\"status\":\"reloaded\"}" \
    || fail "reload answer: $s $(cat "$WORK/answer")"
head -c $((33 * 1024 * 1024)) /dev/zero >"$WORK/huge"
s=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "$URL/v1/buses/main/events" \
    -H 'Content-Type: application/cloudevents+json' --data-binary @"$WORK/huge")
rm -f "$WORK/huge"
[ "$s" = 413 ] && grep -q 'over the limit of 32 MiB (33554432 bytes)' "$WORK/answer" \
    && pass "413 names the limit: $(cat "$WORK/answer")" || fail "413: $s $(cat "$WORK/answer")"
s=$(post /v1/buses/main/events application/cloudevents+json '{"specversion":"1.0","id":"j1",}')
[ "$s" = 400 ] && grep -q '"the body is not valid JSON: trailing comma in object (at byte 31)"' "$WORK/answer" \
    && pass "invalid JSON: the answer says what and where: $(cat "$WORK/answer")" || fail "invalid JSON: $s $(cat "$WORK/answer")"
s=$(post /v1/buses/main/events application/json '{"a": "x' -H 'ce-specversion: 1.0' -H 'ce-id: j2' \
    -H 'ce-source: e2e' -H 'ce-type: x')
[ "$s" = 400 ] && grep -q 'not valid JSON though its content type is application/json: unterminated string (at byte 6)' "$WORK/answer" \
    && pass "binary mode, invalid JSON data: $(cat "$WORK/answer")" || fail "binary invalid JSON: $s $(cat "$WORK/answer")"
# A refused reload: the compiler's errors span several lines; the log keeps one line per message.
cp "$WORK/reload.ebr" "$WORK/reload.good"
printf 'rule broken on main { match data.x == to t1 }\nrule worse on main { match exists to t9 }\n' >>"$WORK/reload.ebr"
s=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "$URL/v1/admin/reload")
[ "$s" = 400 ] || fail "a broken reload answered $s"
wait_for "$E2E_WAIT" grep -q 'reload refused' "$WORK/ebd.log"
bad=$(grep -vc '^time=[^ ]* level=[a-z]* msg=' "$WORK/ebd.log")
[ "$bad" -eq 0 ] && grep 'reload refused' "$WORK/ebd.log" | grep -q 'errors=".*reload.ebr:[0-9]*:[0-9]*: error: .*\\n' \
    && pass "a refused reload's errors stay on one log line, escaped" \
    || fail "log lines that are not messages: $bad; $(grep -v '^time=' "$WORK/ebd.log" | head -3)"
cp "$WORK/reload.good" "$WORK/reload.ebr"
stop_ebd

# ---- TLS --------------------------------------------------------------------------------------
if command -v openssl >/dev/null 2>&1; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 2 \
        -subj /CN=127.0.0.1 -addext "subjectAltName=IP:127.0.0.1" >/dev/null 2>&1 \
        || fail "openssl could not make a certificate"
    export E2E_TLS_TOKEN=0123456789abcdef-tls
    printf 'bus sec { token env("E2E_TLS_TOKEN") }\ntarget s file "out/s.jsonl"\nrule r on sec { match exists id to s }\n' >"$WORK/tls.ebr"
    start_ebd "$WORK/tls.ebr" "$WORK/tls" --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem"
    TURL=https://127.0.0.1:$P
    if wait_for "$E2E_WAIT" curl -sf --cacert "$WORK/cert.pem" "$TURL/healthz"; then
        s=$(curl -s --cacert "$WORK/cert.pem" -o "$WORK/answer" -w '%{http_code}' -X POST "$TURL/v1/buses/sec/events" \
            -H 'Content-Type: application/cloudevents+json' -H "Authorization: Bearer $E2E_TLS_TOKEN" \
            --data-binary "$(ev tls1 x)")
        expect_status 202 "an event over HTTPS, the certificate checked with --cacert" "$s"
        wait_for "$E2E_WAIT" grep -q '"id":"tls1"' "$WORK/tls/out/s.jsonl" && pass "delivered after HTTPS ingest" \
            || fail "the HTTPS event was not delivered"
        s=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P/healthz")
        [ "$s" != 200 ] && pass "plain HTTP is not served on the TLS port ($s)" || fail "plain HTTP answered 200 on the TLS port"
        curl -s -o /dev/null "$TURL/healthz" && fail "an unknown certificate was accepted without --cacert" \
            || pass "curl without the CA refuses the self-signed certificate (it is really TLS)"
    else
        fail "ebd with --tls-cert did not serve HTTPS: $(tail -3 "$WORK/ebd.log")"
    fi
    stop_ebd
    # The same from the server block.
    printf 'server {\n  tls_cert "%s"\n  tls_key "%s"\n}\n' "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/tls2.ebr"
    cat "$WORK/tls.ebr" >>"$WORK/tls2.ebr"
    start_ebd "$WORK/tls2.ebr" "$WORK/tls2"
    wait_for "$E2E_WAIT" curl -sf --cacert "$WORK/cert.pem" "$TURL/healthz" && pass "tls_cert and tls_key in the server block" \
        || fail "server block TLS: $(tail -3 "$WORK/ebd.log")"
    stop_ebd
    # Tokens on an address that is not loopback: TLS, or an explicit --insecure-http.
    "$BIN/ebd" --rules "$WORK/tls.ebr" --data "$WORK/tls3" --listen 0.0.0.0:$P >"$WORK/out" 2>"$WORK/err" &
    X=$!; PIDS="$PIDS $X"
    if wait_for "$E2E_WAIT" sh -c "! kill -0 $X 2>/dev/null"; then
        wait $X; st=$?
        [ $st -eq 1 ] && grep -q "without TLS the buses' tokens would cross the network in clear text" "$WORK/err" \
            && pass "tokens on a non-loopback address without TLS: refused, exit 1" || fail "no TLS on 0.0.0.0: exit $st, $(cat "$WORK/err")"
    else
        fail "ebd served tokens over plain HTTP on 0.0.0.0"
    fi
    "$BIN/ebd" --rules "$WORK/tls.ebr" --data "$WORK/tls3" --listen 0.0.0.0:$P --insecure-http >>"$WORK/ebd.log" 2>&1 &
    EBD=$!
    wait_for "$E2E_WAIT" healthy && pass "--insecure-http allows plain HTTP there" || fail "--insecure-http: $(tail -3 "$WORK/ebd.log")"
    stop_ebd
    "$BIN/ebd" --rules "$WORK/tls.ebr" --data "$WORK/tls3" --listen 0.0.0.0:$P --tls-cert "$WORK/cert.pem" \
        --tls-key "$WORK/key.pem" >>"$WORK/ebd.log" 2>&1 &
    EBD=$!
    wait_for "$E2E_WAIT" curl -sf --cacert "$WORK/cert.pem" "$TURL/healthz" && pass "TLS on a non-loopback address" \
        || fail "TLS on 0.0.0.0: $(tail -3 "$WORK/ebd.log")"
    stop_ebd
    "$BIN/ebd" --rules "$WORK/tls.ebr" --data "$WORK/tls3" --listen 127.0.0.1:$P --tls-cert "$WORK/cert.pem" \
        --tls-key "$WORK/cert.pem" 2>"$WORK/err"
    [ $? -eq 1 ] && grep -q "the TLS key .* is not\|certificate or key was refused" "$WORK/err" \
        && pass "a certificate given as the key: $(cat "$WORK/err")" || fail "bad key: $(cat "$WORK/err")"
    "$BIN/ebd" --rules "$WORK/tls.ebr" --data "$WORK/tls3" --listen 127.0.0.1:$P --tls-cert "$WORK/nope.pem" \
        --tls-key "$WORK/key.pem" 2>"$WORK/err"
    [ $? -eq 1 ] && grep -q "cannot read the TLS certificate $WORK/nope.pem: No such file or directory" "$WORK/err" \
        && pass "a missing certificate file is named" || fail "missing cert: $(cat "$WORK/err")"
else
    fail "openssl is needed for the TLS tests (tools/deps.sh installs it)"
fi

# ---- a damaged .ebc is named as such, not compiled as source ----------------------------------
"$BIN/ebc" compile "$WORK/start.ebr" -o "$WORK/start.ebc" || fail "ebc compile"
cp "$WORK/start.ebc" "$WORK/damaged.ebc"
printf 'XX' | dd of="$WORK/damaged.ebc" bs=1 seek=100 conv=notrunc 2>/dev/null
"$BIN/ebd" --rules "$WORK/damaged.ebc" --data "$WORK/dmg" --listen 127.0.0.1:$P 2>"$WORK/err"
st=$?
[ $st -eq 1 ] && grep -q "damaged.ebc: not a valid ruleset file: corrupted .ebc file" "$WORK/err" \
    && ! grep -q 'error: ' "$WORK/err" && pass "a damaged .ebc: $(head -1 "$WORK/err")" \
    || fail "damaged .ebc: exit $st, $(cat "$WORK/err")"
head -c 5 "$WORK/start.ebc" >"$WORK/cut.ebc"
"$BIN/ebd" --rules "$WORK/cut.ebc" --data "$WORK/dmg" --listen 127.0.0.1:$P 2>"$WORK/err"
st=$?
[ $st -eq 1 ] && grep -q "cut.ebc: not a valid ruleset file: truncated" "$WORK/err" \
    && pass "an .ebc cut short: $(head -1 "$WORK/err")" || fail "cut .ebc: exit $st, $(cat "$WORK/err")"
start_ebd "$WORK/start.ebc" "$WORK/good-ebc"
wait_for "$E2E_WAIT" healthy && pass "the intact .ebc runs" || fail "ebd on a good .ebc: $(tail -3 "$WORK/ebd.log")"
stop_ebd

# ---- secrets: empty or short tokens are refused; nothing is created before the settings pass --
printf 'bus a\nbus b { token "" }\n' >"$WORK/tok1.ebr"
"$BIN/ebd" --rules "$WORK/tok1.ebr" --data "$WORK/tok" --listen 127.0.0.1:$P 2>"$WORK/err"
st=$?
[ $st -eq 1 ] && grep -q "bus 'b': token is empty: a token needs at least 16 bytes" "$WORK/err" \
    && pass "an empty token is refused: $(head -1 "$WORK/err")" || fail "empty token: exit $st, $(cat "$WORK/err")"
[ ! -e "$WORK/tok/buses/a" ] && pass "no bus folder is created before the settings are refused" \
    || fail "bus folder created before a refusal: $(ls "$WORK/tok/buses")"
printf 'bus a { token env("E2E_EMPTY") }\n' >"$WORK/tok2.ebr"
E2E_EMPTY= "$BIN/ebd" --rules "$WORK/tok2.ebr" --data "$WORK/tok" --listen 127.0.0.1:$P 2>"$WORK/err"
st=$?
[ $st -eq 1 ] && grep -q "bus 'a': token is empty" "$WORK/err" \
    && pass "a token from an empty variable is refused" || fail "empty env token: exit $st, $(cat "$WORK/err")"
printf 'server { admin_token "short" }\nbus a\n' >"$WORK/tok3.ebr"
"$BIN/ebd" --rules "$WORK/tok3.ebr" --data "$WORK/tok" --listen 127.0.0.1:$P 2>"$WORK/err"
st=$?
[ $st -eq 1 ] && grep -q "admin_token is too short: a token needs at least 16 bytes" "$WORK/err" \
    && pass "a short admin token is refused" || fail "short admin token: exit $st, $(cat "$WORK/err")"

# ---- buses a reload removes are closed: descriptors and threads do not pile up -----------------
printf 'bus keep\nbus gone0\n' >"$WORK/buses.ebr"
start_ebd "$WORK/buses.ebr" "$WORK/buses"
wait_for "$E2E_WAIT" healthy || fail "ebd did not start"
counts() { echo "$(ls /proc/$EBD/fd | wc -l) $(awk '/^Threads:/ {print $2}' /proc/$EBD/status)"; }
reload_to() {  # reload_to N: the rules declare bus keep and bus goneN only
    printf 'bus keep\nbus gone%d\n' "$1" >"$WORK/buses.ebr"
    curl -s -o "$WORK/answer" -X POST "$URL/v1/admin/reload"
}
reload_to 1
set -- $(counts); fd0=$1; th0=$2
k=2
while [ $k -le 21 ]; do reload_to $k; k=$((k + 1)); done
set -- $(counts); fd1=$1; th1=$2
[ $((fd1 - fd0)) -le 4 ] && [ $((th1 - th0)) -le 2 ] \
    && pass "20 reloads that swap a bus: descriptors $fd0 -> $fd1, threads $th0 -> $th1" \
    || fail "20 reloads that swap a bus: descriptors $fd0 -> $fd1, threads $th0 -> $th1"
grep -q 'bus closed: the rules no longer declare it" bus=gone20' "$WORK/ebd.log" \
    && pass "the removed bus's log is closed (and said so)" || fail "no 'bus closed' line"
reload_to 5     # a bus removed before comes back: its log opens again, with what it held
s=$(post /v1/buses/gone5/events application/cloudevents+json "$(ev back1 x)")
expect_status 202 "a bus declared again after a reload took it away takes events" "$s"
stop_ebd

# ---- lost positions: the pairs start again from the oldest event kept, loudly, not at the end ---
PR=$((BASE + 1))
printf 'bus main\ntarget h http "http://127.0.0.1:%d/h" { retry exponential(attempts: 100, first: 50ms, max: 100ms) }\nrule r on main { match exists id to h }\n' $PR >"$WORK/lost.ebr"
start_ebd "$WORK/lost.ebr" "$WORK/lost"
wait_for "$E2E_WAIT" healthy || fail "ebd did not start"
for id in lag1 lag2 lag3; do post /v1/buses/main/events application/cloudevents+json "$(ev $id x)" >/dev/null; done
wait_for "$E2E_WAIT" grep -q 'offset=2' "$WORK/ebd.log"      # the target is down: they wait for retries
stop_ebd
rm -f "$WORK/lost/buses/main/cursors/@delivery"     # the bus's positions (docs/storage.md)
"$BIN/e2e_receiver" $PR "$WORK/lost.log" &
PIDS="$PIDS $!"
start_ebd "$WORK/lost.ebr" "$WORK/lost"
wait_for "$E2E_WAIT" healthy || fail "ebd did not start"
post /v1/buses/main/events application/cloudevents+json "$(ev lag4 x)" >/dev/null
if wait_for "$E2E_WAIT" grep -q '"id":"lag4"' "$WORK/lost.log" && grep -q '"id":"lag1"' "$WORK/lost.log"; then
    pass "a pair whose position was removed delivers its backlog (lag1-3) instead of skipping it"
else
    fail "lost cursor: the receiver got $(grep -o '"id":"lag[0-9]"' "$WORK/lost.log" 2>/dev/null | paste -sd,)"
fi
grep -q 'level=error msg="the delivery positions of a bus are missing though its pairs have run before' "$WORK/ebd.log" \
    && pass "and says so at level error" || fail "no error line for the lost positions"
stop_ebd

# ---- positions kept one file per pair (before the cursor set) are read and converted ------------
# Five events delivered to both file targets; then the set is replaced by the single cursors an
# older ebd wrote (docs/storage.md): r.f at 3 (so 3 and 4 go again), r2.f2 at 5 with offset 1
# still pending (so 1 goes again).  CRC: crc32c of the text before it.
printf 'bus main\ntarget f file "out/f.jsonl"\ntarget f2 file "out/f2.jsonl"\nrule r on main { match exists id to f }\nrule r2 on main { match exists id to f2 }\n' >"$WORK/conv.ebr"
start_ebd "$WORK/conv.ebr" "$WORK/conv"
wait_for "$E2E_WAIT" healthy || fail "ebd did not start"
for id in c0 c1 c2 c3 c4; do post /v1/buses/main/events application/cloudevents+json "$(ev $id x)" >/dev/null; done
wait_for "$E2E_WAIT" lines_ge "$WORK/conv/out/f.jsonl" 5 && wait_for "$E2E_WAIT" lines_ge "$WORK/conv/out/f2.jsonl" 5 \
    || fail "conversion: the five events were not delivered"
stop_ebd
C="$WORK/conv/buses/main/cursors"
rm -f "$C/@delivery"
printf 'ebr-cursor 1 3 72ebae01\n' >"$C/r.f"
printf 'ebr-cursor 2 5 1 1 224d08b5\n' >"$C/r2.f2"
start_ebd "$WORK/conv.ebr" "$WORK/conv"
wait_for "$E2E_WAIT" healthy || fail "ebd did not start"
post /v1/buses/main/events application/cloudevents+json "$(ev c5 x)" >/dev/null
if wait_for "$E2E_WAIT" grep -q '"id":"c5"' "$WORK/conv/out/f.jsonl" && wait_for "$E2E_WAIT" grep -q '"id":"c5"' "$WORK/conv/out/f2.jsonl" &&
   [ "$(grep -o '"id":"c[0-9]"' "$WORK/conv/out/f.jsonl" | paste -sd,)" = '"id":"c0","id":"c1","id":"c2","id":"c3","id":"c4","id":"c3","id":"c4","id":"c5"' ] &&
   [ "$(grep -o '"id":"c[0-9]"' "$WORK/conv/out/f2.jsonl" | paste -sd,)" = '"id":"c0","id":"c1","id":"c2","id":"c3","id":"c4","id":"c1","id":"c5"' ]; then
    pass "per-pair cursor files are converted: each pair goes on from its own position and pending event"
else
    fail "conversion: f got $(grep -o '"id":"c[0-9]"' "$WORK/conv/out/f.jsonl" | paste -sd,); f2 got $(grep -o '"id":"c[0-9]"' "$WORK/conv/out/f2.jsonl" | paste -sd,)"
fi
[ ! -e "$C/r.f" ] && [ ! -e "$C/r2.f2" ] && [ -f "$C/@delivery" ] && grep -q 'msg="delivery cursors converted into the bus' "$WORK/ebd.log" \
    && pass "the single files are gone once the set is written, and the log says so" \
    || fail "conversion: files left $(ls "$C" | paste -sd' ')"
stop_ebd

# ---- a bus target that feeds its own bus: each pass counted, the 17th dead-lettered --------------
cat >"$WORK/loop.ebr" <<'EOF'
bus a
target loop bus a { dead_letter file "dlq/loop.jsonl" }
target seen file "out/seen.jsonl"
rule r on a { match exists id to loop }
rule all on a { match exists id to seen }
EOF
"$BIN/ebc" check "$WORK/loop.ebr" >"$WORK/out" 2>&1
grep -q "warning: events can loop: rule 'r' on bus 'a' sends to bus 'a', its own bus" "$WORK/out" \
    && pass "the compiler warns of the loop" || fail "no loop warning: $(cat "$WORK/out")"
start_ebd "$WORK/loop.ebr" "$WORK/loop"
wait_for "$E2E_WAIT" healthy || fail "ebd did not start"
post /v1/buses/a/events application/cloudevents+json "$(ev hop0 x)" >/dev/null
if wait_for "$E2E_WAIT" test -s "$WORK/loop/dlq/loop.jsonl"; then
    wait_for "$E2E_WAIT" lines_ge "$WORK/loop/out/seen.jsonl" 17
    hops=$(grep -o '"ebrhops":[0-9]*' "$WORK/loop/out/seen.jsonl" | cut -d: -f2 | sort -n | paste -sd,)
    [ "$hops" = "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16" ] && [ "$(grep -c '' "$WORK/loop/out/seen.jsonl")" -eq 17 ] \
        && pass "a loop: the event went round 16 times, each pass stamped ebrhops 1..16" \
        || fail "loop: $(grep -c '' "$WORK/loop/out/seen.jsonl") passes, hops $hops"
    grep -q '"error":"the event has passed 16 bus targets already (ebrhops 16)' "$WORK/loop/dlq/loop.jsonl" \
        && pass "then dead-lettered with the reason" || fail "loop dead letter: $(cat "$WORK/loop/dlq/loop.jsonl")"
else
    fail "the looping event was never dead-lettered ($(grep -c '' "$WORK/loop/out/seen.jsonl" 2>/dev/null) passes)"
fi
stop_ebd
n=$("$BIN/ebc" log dump "$WORK/loop/buses/a" 2>/dev/null | grep -c '')
[ "$n" -eq 17 ] && pass "the bus holds the event and its 16 passes, no more" || fail "the looping bus holds $n records"

# ---- the command line -------------------------------------------------------------------------
"$BIN/ebd" --version >"$WORK/out" 2>&1 && grep -q '^ebd [0-9]' "$WORK/out" && pass "--version: $(cat "$WORK/out")" \
    || fail "--version: $(cat "$WORK/out")"
"$BIN/ebd" --help >"$WORK/help" 2>&1 || fail "--help exited non-zero"
# Every flag the parser takes is in --help (read from the source, so a new flag cannot hide).
for flag in $(grep -o '"--[a-z-]*"' "$SRC/runtime/ebd.c" | tr -d '"' | sort -u); do
    grep -q -- "$flag" "$WORK/help" || fail "--help does not list $flag"
done
pass "--help lists every flag ($(grep -o '"--[a-z-]*"' "$SRC/runtime/ebd.c" | sort -u | tr -d '"' | paste -sd' '))"

# ---- a data directory that cannot be written: the real cause, no rules-file prefix ------------
if unshare -m true 2>/dev/null; then
    mkdir -p "$WORK/ro"
    unshare -m sh -c "mount -t tmpfs -o ro tmpfs '$WORK/ro' && exec '$BIN/ebd' --rules '$WORK/start.ebr' --data '$WORK/ro/d' --listen 127.0.0.1:$P" 2>"$WORK/err"
    st=$?
    [ $st -eq 1 ] && grep -q "^ebd: cannot create the data directory $WORK/ro/d: Read-only file system" "$WORK/err" \
        && pass "read-only data directory: $(cat "$WORK/err")" || fail "read-only: exit $st, $(cat "$WORK/err")"
    unshare -m sh -c "mkdir -p '$WORK/ro2' && mount -t tmpfs tmpfs '$WORK/ro2' && mkdir '$WORK/ro2/d' && mount -o remount,ro '$WORK/ro2' && exec '$BIN/ebd' --rules '$WORK/start.ebr' --data '$WORK/ro2/d' --listen 127.0.0.1:$P" 2>"$WORK/err"
    st=$?
    [ $st -eq 1 ] && grep -q "^ebd: cannot write in the data directory $WORK/ro2/d: Read-only file system" "$WORK/err" \
        && ! grep -q 'start.ebr' "$WORK/err" && pass "existing read-only data directory: $(cat "$WORK/err")" \
        || fail "read-only existing: exit $st, $(cat "$WORK/err")"
else
    echo "note: no mount namespace here; the read-only data directory checks did not run"
fi
if command -v setpriv >/dev/null 2>&1; then
    # Root may write anywhere: the daemon runs as nobody, from a copy it can reach.
    PD=$(mktemp -d /tmp/ebd-perm.XXXXXX)
    chmod 755 "$PD"
    cp "$BIN/ebd" "$WORK/start.ebr" "$PD/"
    mkdir "$PD/locked"
    chmod 755 "$PD/locked" "$PD/ebd" "$PD/start.ebr"
    setpriv --reuid=65534 --regid=65534 --clear-groups "$PD/ebd" --rules "$PD/start.ebr" --data "$PD/locked" \
        --listen 127.0.0.1:$P 2>"$WORK/err"
    st=$?
    [ $st -eq 1 ] && grep -q "^ebd: cannot write in the data directory $PD/locked: Permission denied" "$WORK/err" \
        && pass "a data directory it may not write: $(cat "$WORK/err")" || fail "permission: exit $st, $(cat "$WORK/err")"
    rm -rf "$PD"
fi

# ---- matching that fails for one rule: its dead letter has the error, the other rules deliver --
# (server match_steps lowers the step budget of one rule on one event, so that an event of 400
# elements takes `heavy` over it: the search needs about 5 steps an element there)
cat >"$WORK/fails.ebr" <<'EOF'
server { match_steps 500 }
bus m
target all_out file "out/all.jsonl"
target light_out file "out/light.jsonl"
target heavy_out file "out/heavy.jsonl" { dead_letter file "dlq/heavy.jsonl" }
target deep_out file "out/deep.jsonl"
rule all on m { match exists id to all_out }
rule heavy on m { match data.a[].x == 1 and data.a[].y == 1 to heavy_out }
rule light on m { match data.a[].x == 0 and data.a[].y == 1 to light_out }
rule deep on m { match data.deep == 7 to deep_out }
EOF
start_ebd "$WORK/fails.ebr" "$WORK/fails"
wait_for "$E2E_WAIT" healthy || fail "ebd did not start"
elems=$(seq 400 | awk '{ printf ",{\"x\":1,\"y\":0}" }')
expect_status 202 "an event that takes one rule over its step budget" \
    "$(post /v1/buses/m/events application/cloudevents+json "$(ev big1 x "{\"a\":[{\"x\":0,\"y\":1}$elems]}")")"
expect_status 202 "then one that this rule matches" \
    "$(post /v1/buses/m/events application/cloudevents+json "$(ev small1 x '{"a":[{"x":1,"y":1}]}')")"
# 1,000 levels: what ingest accepts, the matcher reads (data.deep's arrays are implicit in it).
deep=$(seq 997 | awk '{ printf "[" }')7$(seq 997 | awk '{ printf "]" }')
expect_status 202 "an event 1,000 levels deep" \
    "$(post /v1/buses/m/events application/cloudevents+json "$(ev deep1 x "{\"deep\":$deep}")")"
if wait_for "$E2E_WAIT" grep -q '"id":"small1"' "$WORK/fails/out/heavy.jsonl" && wait_for "$E2E_WAIT" test -s "$WORK/fails/dlq/heavy.jsonl"; then
    wait_for "$E2E_WAIT" grep -q '"id":"big1"' "$WORK/fails/out/light.jsonl"
    grep -q '"id":"big1"' "$WORK/fails/out/all.jsonl" && grep -q '"id":"big1"' "$WORK/fails/out/light.jsonl" \
        && pass "the other rules delivered the event that one rule failed" \
        || fail "big1 was not delivered by the other rules: $(cat "$WORK/fails/out/all.jsonl" "$WORK/fails/out/light.jsonl" 2>/dev/null | grep -c big1)"
    ! grep -q '"id":"big1"' "$WORK/fails/out/heavy.jsonl" && grep -q '"id":"big1"' "$WORK/fails/dlq/heavy.jsonl" \
        && grep -q "\"rule\":\"heavy\",\"target\":\"heavy_out\",\"status\":null,\"error\":\"matching rule 'heavy' took more than 500 steps" "$WORK/fails/dlq/heavy.jsonl" \
        && [ "$(grep -c '' "$WORK/fails/dlq/heavy.jsonl")" -eq 1 ] \
        && pass "the failing rule's dead letter holds the event and the error" \
        || fail "dead letter of heavy: $(cat "$WORK/fails/dlq/heavy.jsonl")"
else
    fail "heavy: no dead letter, or no delivery after it ($(cat "$WORK/fails/dlq/heavy.jsonl" 2>/dev/null))"
fi
grep -q "level=error msg=\"matching failed: the event goes to the rule's dead letter\" rule=heavy bus=m offset=0 error=\"matching rule 'heavy' took more than 500 steps" "$WORK/ebd.log" \
    && pass "and the failure is logged at level error with the rule, bus and offset" || fail "no log line for the failed rule"
wait_for "$E2E_WAIT" grep -q '"id":"deep1"' "$WORK/fails/out/deep.jsonl" && grep -q '"id":"deep1"' "$WORK/fails/out/all.jsonl" \
    && pass "the 1,000-level event matched exists id and a rule on its deepest leaf" \
    || fail "deep1: $(cat "$WORK/fails/out/deep.jsonl" 2>/dev/null | grep -c deep1) in deep, $(grep -c deep1 "$WORK/fails/out/all.jsonl") in all"
stop_ebd

finish
