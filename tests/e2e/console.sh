#!/bin/sh
# End-to-end test of the console (/ui, docs/console.md): ebd with a small rule set, three
# receivers (one that answers 200, one that fails once, one that always fails), a few events;
# then the console's files checked with curl (types, ETag, 404) and its pages in headless
# Chromium through selenium (tests/e2e/console.py: token, buses and the chart, rules, events and
# their search, traces, targets, schemas, replays).  Screenshots go to WORK_DIR/*.png.
#   console.sh BIN_DIR SOURCE_DIR WORK_DIR
# Needs chromium, chromium-driver and python3-selenium (tools/deps.sh): without them it fails,
# saying so.  Everything runs on 127.0.0.1; every process started here is stopped at the end.
. "$2/tests/e2e/lib.sh"
# Ports 30000-30999 (the console's share of the event center's range).
BASE=$(( 30000 + $$ % 990 ))
P_EBD=$BASE; P_OK=$((BASE + 1)); P_FLAKY=$((BASE + 2)); P_BAD=$((BASE + 3))
URL=http://127.0.0.1:$P_EBD
E2E_WAIT=${E2E_WAIT:-60}
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

PY=/usr/bin/python3
for need in /usr/bin/chromium /usr/bin/chromedriver; do
    [ -x "$need" ] || { fail "$need is missing: sh tools/deps.sh installs chromium and chromium-driver"; finish; }
done
"$PY" -c 'import selenium' 2>/dev/null \
    || { fail "python3 selenium is missing: sh tools/deps.sh installs python3-selenium"; finish; }

for r in "$P_OK ok" "$P_FLAKY flaky --fail 1" "$P_BAD bad --status 500"; do
    set -- $r
    port=$1; name=$2; shift 2
    "$BIN/e2e_receiver" "$port" "$WORK/$name.log" "$@" &
    PIDS="$PIDS $!"
done

export E2E_ADMIN=console-adm1n-0123456789
cat >"$WORK/rules.ebr" <<EOF
server { admin_token env("E2E_ADMIN") }
bus main
target ok http "http://127.0.0.1:$P_OK/ok"
target flaky http "http://127.0.0.1:$P_FLAKY/flaky" {
  retry exponential(attempts: 5, first: 50ms, max: 200ms, max_age: 1h)
}
target bad http "http://127.0.0.1:$P_BAD/bad" {
  retry exponential(attempts: 2, first: 50ms, max: 100ms, max_age: 1h)
  dead_letter file "dlq/bad.jsonl"
}
rule to_ok on main { match type == "order.created" to ok }
rule to_flaky on main { match type == "order.paid" to flaky }
rule to_bad on main { match type == "order.failed" to bad }
EOF
"$BIN/ebd" --rules "$WORK/rules.ebr" --data "$WORK/data" --listen 127.0.0.1:$P_EBD >>"$WORK/ebd.log" 2>&1 &
PIDS="$PIDS $!"
wait_for "$E2E_WAIT" curl -sf "$URL/healthz" || { fail "ebd did not start"; finish; }

# ---- the files, with curl -------------------------------------------------------------------
get() {  # get PATH [CURL ARGS...]: prints "STATUS CONTENT_TYPE"; headers in $WORK/headers
    _p=$1; shift
    curl -s -o "$WORK/answer" -D "$WORK/headers" -w '%{http_code} %{content_type}' "$URL$_p" "$@"
}
s=$(get /ui)
[ "$s" = "301 " ] && grep -qi '^Location: ui/' "$WORK/headers" && pass "/ui redirects to /ui/" || fail "/ui: $s"
s=$(get /ui/)
[ "$s" = "200 text/html; charset=utf-8" ] && grep -q '<title>ebr console</title>' "$WORK/answer" \
    && grep -qi "^Content-Security-Policy: default-src 'none'" "$WORK/headers" \
    && pass "/ui/ is the console's page, with a Content-Security-Policy" || fail "/ui/: $s"
s=$(get /ui/console.js)
[ "$s" = "200 text/javascript; charset=utf-8" ] && cmp -s "$WORK/answer" "$SRC/runtime/center/ui/console.js" \
    && pass "/ui/console.js is runtime/center/ui/console.js" || fail "/ui/console.js: $s"
s=$(get /ui/console.css)
[ "$s" = "200 text/css; charset=utf-8" ] && pass "/ui/console.css is CSS" || fail "/ui/console.css: $s"
s=$(get /ui/chart.min.js)
[ "$s" = "200 text/javascript; charset=utf-8" ] && grep -q 'Chart.js v' "$WORK/answer" \
    && pass "/ui/chart.min.js is Chart.js ($(grep -o 'Chart.js v[0-9.]*' "$WORK/answer" | head -1), from libjs-chart.js)" \
    || fail "/ui/chart.min.js: $s"
etag=$(sed -n 's/^[Ee][Tt][Aa][Gg]: *//p' "$WORK/headers" | tr -d '\r')
s=$(get /ui/chart.min.js -H "If-None-Match: $etag")
[ -n "$etag" ] && [ "${s%% *}" = 304 ] && grep -qi '^Cache-Control: no-cache' "$WORK/headers" \
    && pass "ETag $etag: 304 when unchanged" || fail "If-None-Match $etag: $s"
s=$(get /ui/nope.js)
[ "${s%% *}" = 404 ] && pass "/ui/nope.js -> 404" || fail "/ui/nope.js: $s"
s=$(get /ui/)
[ "${s%% *}" = 200 ] && pass "the files need no token" || fail "/ui/ without a token: $s"

# ---- traffic ----------------------------------------------------------------------------------
send() {  # send ID SOURCE TYPE DATA
    printf '{"specversion":"1.0","id":"%s","source":"%s","type":"%s","data":%s}' "$1" "$2" "$3" "$4" \
        >"$WORK/event.json"
    s=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "$URL/v1/buses/main/events" \
        -H 'Content-Type: application/cloudevents+json' --data-binary @"$WORK/event.json")
    [ "$s" = 202 ] || fail "sending $1: $s $(cat "$WORK/answer")"
}
for n in 1 2 3 4; do send "ord-$n" shop order.created "{\"order\":$n,\"total\":12.5,\"currency\":\"EUR\"}"; done
send pay-1 billing order.paid '{"order":1,"amount":12.5}'
send bad-1 shop order.failed '{"order":9,"reason":"card declined"}'
send 'x<b>bold</b><img src=x onerror=alert(1)>' shop order.created '{"order":5,"total":1,"note":"<script>alert(1)</script>"}'
wait_for "$E2E_WAIT" lines_ge "$WORK/ok.log" 5 && wait_for "$E2E_WAIT" lines_ge "$WORK/flaky.log" 2 \
    && wait_for "$E2E_WAIT" lines_ge "$WORK/data/dlq/bad.jsonl" 1 \
    && pass "delivered: 5 to ok, pay-1 to flaky on its second attempt, bad-1 dead-lettered" \
    || fail "deliveries: ok $(grep -c '' "$WORK/ok.log") flaky $(grep -c '' "$WORK/flaky.log")"

# ---- the pages, in headless Chromium ---------------------------------------------------------
"$PY" "$SRC/tests/e2e/console.py" "$URL" "$E2E_ADMIN" "$WORK" 2>"$WORK/console.py.err"
st=$?
[ $st -eq 0 ] && pass "console.py: every check in Chromium passed (screenshots in $WORK)" \
    || { fail "console.py: $st check(s) failed (screenshots in $WORK)"; tail -5 "$WORK/console.py.err"; }
# The replay the page started delivered the order.created events to ok again.
[ $st -eq 0 ] && { wait_for "$E2E_WAIT" lines_ge "$WORK/ok.log" 10 \
    && pass "the replay started from the page delivered again" \
    || fail "after the page's replay: $(grep -c '' "$WORK/ok.log") deliveries to ok, wanted 10"; }
finish
