#!/bin/sh
# End-to-end test of a bus whose disk fills up: ebd answers 503 for its events and /healthz names
# it; once there is room again the same daemon takes its events again by itself (no restart, no
# reload), with every acknowledged event in the log exactly once and none of those answered 503.
#   disk.sh BIN_DIR SOURCE_DIR WORK_DIR
# The data directory is a 2 MiB tmpfs mounted in a private mount namespace (unshare -m, as root),
# filled by a file written beside the logs; where that cannot be done, the full disk is a file
# size limit set on the running daemon with prlimit and lifted the same way (E2E_DISK=rlimit
# chooses that).  Exits 77 (skipped) when neither can be done.  Everything runs on 127.0.0.1; every process started here is
# stopped at the end.
. "$2/tests/e2e/lib.sh"
# Ports 19000-19999 (daemon.sh takes 10000-18999, e2e.sh 20000-31999).
P=$(( 19000 + $$ % 1000 ))
URL=http://127.0.0.1:$P
MNT=$WORK/mnt
mkdir -p "$MNT"
EBD=""
NS=""
cleanup() {
    [ -n "$EBD" ] && kill "$EBD" 2>/dev/null
    [ -n "$NS" ] && kill "$NS" 2>/dev/null
    wait 2>/dev/null
}
trap cleanup EXIT

if [ "${E2E_DISK:-}" != rlimit ] &&
   unshare -m sh -c 'mount -t tmpfs -o size=1m tmpfs "$1" && umount "$1"' sh "$MNT" 2>/dev/null; then
    MODE=tmpfs
    DATA=$MNT/data
elif command -v prlimit >/dev/null 2>&1; then
    MODE=rlimit
    DATA=$WORK/data
else
    echo "skipped: neither a tmpfs in a private mount namespace nor prlimit can be had here"
    exit 77
fi
echo "the full disk is: $MODE"

printf 'bus full\nbus calm\n' >"$WORK/disk.ebr"
if [ $MODE = tmpfs ]; then
    # In the namespace: the tmpfs, ebd on it, and once ebd has stopped a copy of the logs out of
    # it (the tmpfs goes with the namespace).
    cat >"$WORK/ns.sh" <<'EOF'
mount -t tmpfs -o size=2m tmpfs "$1" || exit 97
"$2/ebd" --rules "$3" --data "$1/data" --listen "127.0.0.1:$4" &
echo $! >"$5/ebd.pid"
wait $!
rc=$?
cp -a "$1/data" "$5/after"
exit $rc
EOF
    unshare -m sh "$WORK/ns.sh" "$MNT" "$BIN" "$WORK/disk.ebr" "$P" "$WORK" >>"$WORK/ebd.log" 2>&1 &
    NS=$!
    wait_for "$E2E_WAIT" test -s "$WORK/ebd.pid"
    EBD=$(cat "$WORK/ebd.pid" 2>/dev/null)
else
    "$BIN/ebd" --rules "$WORK/disk.ebr" --data "$DATA" --listen "127.0.0.1:$P" >>"$WORK/ebd.log" 2>&1 &
    EBD=$!
fi
wait_for "$E2E_WAIT" curl -sf "$URL/healthz" || { fail "ebd did not start: $(tail -3 "$WORK/ebd.log")"; finish; }

# in_ns COMMAND...: runs COMMAND where the daemon's files are.
in_ns() {
    if [ $MODE = tmpfs ]; then nsenter -t "$EBD" -m "$@"; else "$@"; fi
}
# fill / unfill: no room left for the logs / room again.
fill() {
    if [ $MODE = tmpfs ]; then
        in_ns sh -c 'dd if=/dev/zero of="$1/filler" bs=64k 2>/dev/null; true' sh "$MNT"
    else
        _size=$(stat -c %s "$DATA/buses/full/00000000000000000000.seg")
        prlimit --pid "$EBD" --fsize="$((_size + 1500)):"
    fi
}
unfill() {
    if [ $MODE = tmpfs ]; then in_ns rm -f "$MNT/filler"; else prlimit --pid "$EBD" --fsize=unlimited:; fi
}
# health: the status of /healthz; its body in $WORK/health.
health() { curl -s -o "$WORK/health" -w '%{http_code}' "$URL/healthz"; }
healthy() { [ "$(health)" = 200 ]; }
# health_says TEXT: /healthz answers 503 and its body has TEXT.
health_says() { [ "$(health)" = 503 ] && grep -qF "$1" "$WORK/health"; }

PAD=$(head -c 500 /dev/zero | tr '\0' 'a')
: >"$WORK/acked"
: >"$WORK/refused"
i=0
# put_full: puts event full-$i on bus full and notes the id as acknowledged or refused; the
# status in $s.
put_full() {
    s=$(post /v1/buses/full/events application/cloudevents+json "$(ev "full-$i" x "\"$PAD\"")" -D "$WORK/headers")
    case $s in
        202) echo "full-$i" >>"$WORK/acked" ;;
        503) echo "full-$i" >>"$WORK/refused" ;;
        *) fail "full-$i: status $s: $(cat "$WORK/answer")" ;;
    esac
    i=$((i + 1))
}

# ---- while there is room ------------------------------------------------------------------------
while [ $i -lt 20 ]; do put_full; done
[ "$(grep -c '' "$WORK/acked")" = 20 ] && pass "20 events stored while there is room" \
    || fail "before the disk filled: $(grep -c '' "$WORK/refused") refused"

# ---- the disk fills: 503, and /healthz names the bus ----------------------------------------------
fill
# (the last page of the segment file may still take an event or a few)
j=0
while [ $j -lt 200 ]; do put_full; [ "$s" = 503 ] && break; j=$((j + 1)); done
expect_status 503 "an event once the disk is full" "$s"
grep -qi '^Retry-After:' "$WORK/headers" && pass "503 carries Retry-After" || fail "503 headers: $(cat "$WORK/headers")"
st=$(health)
expect_status 503 "/healthz while a bus cannot store" "$st"
grep -qF '"status":"degraded"' "$WORK/health" && grep -qF '"bus":"full"' "$WORK/health" \
    && pass "/healthz names the bus: $(cat "$WORK/health")" || fail "/healthz: $(cat "$WORK/health")"
grep -qF '"bus":"calm"' "$WORK/health" && fail "/healthz names a bus that can store: $(cat "$WORK/health")"
# The log tries to recover by itself, and finds no room: still 503, with that cause.
wait_for "$E2E_WAIT" health_says "no room" \
    && pass "a recovery attempt on the full disk fails, and /healthz says so" \
    || fail "no failed recovery attempt seen: $(cat "$WORK/health")"
put_full
expect_status 503 "an event while the disk is still full" "$s"

# ---- room again: the same daemon recovers by itself -----------------------------------------------
unfill
wait_for "$E2E_WAIT" healthy && pass "/healthz is ok again once there is room, with no event put" \
    || fail "/healthz after room was made: $(health) $(cat "$WORK/health")"
k=0
while [ $k -lt 20 ]; do put_full; [ "$s" = 202 ] || break; k=$((k + 1)); done
[ $k = 20 ] && pass "20 events stored again without a restart" || fail "after recovery: status $s: $(cat "$WORK/answer")"
s=$(post /v1/buses/calm/events application/cloudevents+json "$(ev calm-1 x)")
expect_status 202 "the other bus" "$s"
grep -q "recovered after a failed write or sync" "$WORK/ebd.log" && pass "the recovery is logged" \
    || fail "no recovery in the daemon's log"

# ---- what the log holds -----------------------------------------------------------------------------
kill -TERM "$EBD" 2>/dev/null
if [ $MODE = tmpfs ]; then
    wait "$NS" 2>/dev/null
    NS=""
    LOG=$WORK/after/buses/full
else
    wait "$EBD" 2>/dev/null
    LOG=$DATA/buses/full
fi
EBD=""
"$BIN/ebc" log dump "$LOG" >"$WORK/dump" 2>"$WORK/dump.err" || fail "ebc log dump: $(cat "$WORK/dump.err")"
"$BIN/ebc" log check "$LOG" >"$WORK/check" 2>&1 && pass "ebc log check finds nothing wrong" \
    || fail "ebc log check: $(cat "$WORK/check")"
bad=0
for id in $(cat "$WORK/acked"); do
    n=$(grep -c "\"id\":\"$id\"" "$WORK/dump")
    [ "$n" = 1 ] || { echo "  $id acknowledged, $n times in the log"; bad=1; }
done
[ $bad = 0 ] && pass "every one of the $(grep -c '' "$WORK/acked") acknowledged events is in the log once" \
    || fail "acknowledged events missing or stored twice"
bad=0
for id in $(cat "$WORK/refused"); do
    grep -q "\"id\":\"$id\"" "$WORK/dump" && { echo "  $id answered 503, yet in the log"; bad=1; }
done
[ $bad = 0 ] && pass "none of the $(grep -c '' "$WORK/refused") events answered 503 is in the log" \
    || fail "events answered 503 were stored"
n=$(grep -c '' "$WORK/dump")
[ "$n" = "$(grep -c '' "$WORK/acked")" ] && pass "the log holds those $n records and nothing else" \
    || fail "the log holds $n records, $(grep -c '' "$WORK/acked") acknowledged"
finish
