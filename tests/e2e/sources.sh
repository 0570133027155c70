#!/bin/sh
# Sources, broker targets and the event network (docs/sources.md):
#   sources.sh BIN_DIR SOURCE_DIR WORK_DIR
# Starts mosquitto and nats-server itself on loopback ports and stops them.  Checks:
#   webhooks: GitHub, Stripe and a plain HMAC signed by each scheme are stored (a delivery sent
#     again once), a bad signature or a stale Stripe timestamp is refused with 401;
#   a schedule (rate(1 second)) across a kill -9 and a restart: every second once, none missed;
#   an MQTT source (QoS 1) and an MQTT target, across a broker restart;
#   NATS: a core subject and a JetStream stream as sources, core and JetStream targets;
#   two daemons, one forwarding to the other's bus (remote target, over TLS) whose dedup window
#     keeps each event once while the receiver is killed (-9) and started again under traffic.
. "$2/tests/e2e/lib.sh"
# Ports below Linux's ephemeral range: 20000-20989.
BASE=$(( 20000 + ($$ % 99) * 10 ))
P_A=$BASE; P_MQ=$((BASE + 1)); P_NATS=$((BASE + 2)); P_B=$((BASE + 3)); P_C=$((BASE + 4))
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$MOSQ" ] || { echo "mosquitto is not installed (tools/deps.sh installs it)"; exit 1; }
[ -x "$NATS" ] || { echo "nats-server is not installed (tools/deps.sh installs it)"; exit 1; }
MQ="python3 $SRC/tests/e2e/mqtt_client.py"
NC="python3 $SRC/tests/e2e/nats_client.py"

cleanup() {
    for f in "$WORK"/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT

# mosquitto switches to its own user when started as root: its folder must be writable by it.
chmod 0777 "$WORK"
mkdir -p "$WORK/mq" && chmod 0777 "$WORK/mq"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/mq/\n' \
    "$P_MQ" "$WORK" >"$WORK/mosquitto.conf"
mq_start() { "$MOSQ" -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 & echo $! >"$WORK/mq.pid"; }
mq_up() { curl -s --max-time 1 "telnet://127.0.0.1:$P_MQ" </dev/null >/dev/null 2>&1; [ $? -ne 7 ]; }
nats_start() {
    mkdir -p "$WORK/nats"
    "$NATS" -js -a 127.0.0.1 -p "$P_NATS" -sd "$WORK/nats" >>"$WORK/nats.log" 2>&1 &
    echo $! >"$WORK/nats.pid"
}
nats_up() { curl -s --max-time 1 "telnet://127.0.0.1:$P_NATS" </dev/null 2>/dev/null | grep -q INFO; }
stop() {        # stop NAME [SIGNAL]
    _pid=$(cat "$WORK/$1.pid" 2>/dev/null) || return 0
    kill -"${2:-TERM}" "$_pid" 2>/dev/null
    wait "$_pid" 2>/dev/null
    rm -f "$WORK/$1.pid"
}
ebd_start() {   # ebd_start NAME PORT RULES [FLAGS...]
    _n=$1; _p=$2; _r=$3; shift 3
    "$BIN/ebd" --rules "$_r" --data "$WORK/data-$_n" --listen "127.0.0.1:$_p" "$@" >>"$WORK/$_n.log" 2>&1 &
    echo $! >"$WORK/$_n.pid"
}
# the receiving daemon of the network test (port P_C) speaks HTTPS
base() { if [ "$1" = "$P_C" ]; then echo "https://127.0.0.1:$1"; else echo "http://127.0.0.1:$1"; fi; }
ebd_up() { curl -sf --cacert "$WORK/cert.pem" "$(base "$1")/healthz" >/dev/null; }
# ids PORT BUS: every stored event's id, oldest first, one a line, to $WORK/ids
ids() {
    : >"$WORK/ids"; _after=""
    while :; do
        curl -s -o "$WORK/page" --cacert "$WORK/cert.pem" -H "Authorization: Bearer $INBOX_TOKEN" \
            "$(base "$1")/v1/buses/$2/events?order=oldest&limit=1000$_after" || return 1
        jq -r '.events[].event.id' "$WORK/page" >>"$WORK/ids" || return 1
        _next=$(jq -r '.next // ""' "$WORK/page")
        [ -z "$_next" ] && return 0
        _after="&after=$_next"
    done
}
count_is() { ids "$1" "$2" && [ "$(wc -l <"$WORK/ids")" -eq "$3" ]; }
has_id() { ids "$1" "$2" && grep -qx "$3" "$WORK/ids"; }
metric() {      # metric PORT NAME_AND_LABELS: its value
    curl -s "http://127.0.0.1:$1/metrics" | grep -F "$2" | awk '{print $2}' | head -1
}

export GH_SECRET=gh-secret-e2e STRIPE_SECRET=whsec_e2e_secret SHOP_SECRET=shop-secret-e2e
export INBOX_TOKEN=inbox-token-e2e-0123456789
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 2 \
    -subj /CN=127.0.0.1 -addext "subjectAltName=IP:127.0.0.1" >/dev/null 2>&1 ||
    fail "openssl could not make a certificate"
mq_start; nats_start
wait_for 20 mq_up || fail "mosquitto did not start"
wait_for 20 nats_up || fail "nats-server did not start"

cat >"$WORK/a.ebr" <<RULES
bus hooks { dedup 10m }
bus ticks
bus tel { dedup 10m }
bus nt { dedup 10m }
source gh webhook "/hooks/github" { verify github(secret: env("GH_SECRET")) } to hooks
source pay webhook "/hooks/stripe" { verify stripe(secret: env("STRIPE_SECRET"), tolerance: 5m) } to hooks
source shop webhook "/hooks/shop" {
  verify hmac(secret: env("SHOP_SECRET"), header: "X-Shop-Signature", encoding: base64)
  id_header "X-Shop-Delivery"
  type "shop.order"
} to hooks
source tick schedule "rate(1 second)" { data {"job": "tick"} } to ticks
source sensors mqtt "mqtt://127.0.0.1:$P_MQ" { topic "sensors/#" qos 1 } to tel
source core nats "nats://127.0.0.1:$P_NATS" { subject "in.core.>" } to nt
source js nats "nats://127.0.0.1:$P_NATS" { stream "E2EIN" subject "in.js.>" } to nt
target alerts mqtt "mqtt://127.0.0.1:$P_MQ" { topic "alerts/out" qos 1 }
target ncore nats "nats://127.0.0.1:$P_NATS" { subject "out.core" }
target njs nats "nats://127.0.0.1:$P_NATS" { subject "out.js.x" jetstream true }
target njs2 nats "nats://127.0.0.1:$P_NATS" { subject "out.js.same" jetstream true }
rule hot on tel { match data.temp > 30 to alerts }
rule fwd on nt { match subject starts_with "in." to ncore, njs }
rule same on nt { match subject starts_with "in." transform {"source": "x", "id": "same"} to njs2 }
RULES
"$BIN/ebc" check "$WORK/a.ebr" >/dev/null || fail "the rules do not compile"
$NC stream "$P_NATS" E2EIN 'in.js.>' || fail "stream E2EIN"
$NC stream "$P_NATS" OUTJS 'out.js.>' || fail "stream OUTJS"
ebd_start a "$P_A" "$WORK/a.ebr"
wait_for 30 ebd_up "$P_A" || fail "ebd a did not start"
URL=http://127.0.0.1:$P_A

# ---- webhooks ------------------------------------------------------------------------------------
body='{"ref":"refs/heads/main","repository":{"html_url":"https://github.com/acme/shop"}}'
sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$GH_SECRET" | sed 's/.* //')
gh() {  # gh SIGNATURE BODY DELIVERY
    post /hooks/github application/json "$2" -H "X-GitHub-Event: push" \
        -H "X-GitHub-Delivery: $3" -H "X-Hub-Signature-256: sha256=$1"
}
expect_status 202 "github push, signed" "$(gh "$sig" "$body" gh-1)"
expect_status 202 "the same delivery again" "$(gh "$sig" "$body" gh-1)"
expect_status 401 "github push, wrong signature" "$(gh "$(echo "$sig" | tr 0-9a-f 1-9a-f0)" "$body" gh-2)"
expect_status 401 "github push, body changed" "$(gh "$sig" "$body " gh-3)"
expect_status 401 "github push, unsigned" "$(post /hooks/github application/json "$body" -H "X-GitHub-Event: push")"
sb='{"id":"evt_e2e_1","type":"invoice.paid","created":1700000000,"data":{"object":{"id":"in_1"}},"livemode":true}'
st_sig() { printf '%s.%s' "$1" "$sb" | openssl dgst -sha256 -hmac "$STRIPE_SECRET" | sed 's/.* //'; }
now=$(date +%s); old=$((now - 1000))
expect_status 202 "stripe event, signed" "$(post /hooks/stripe application/json "$sb" -H "Stripe-Signature: t=$now,v1=$(st_sig $now)")"
expect_status 401 "stripe event, stale timestamp" "$(post /hooks/stripe application/json "$sb" -H "Stripe-Signature: t=$old,v1=$(st_sig $old)")"
shop='{"order":17}'
ssig=$(printf '%s' "$shop" | openssl dgst -sha256 -hmac "$SHOP_SECRET" -binary | base64)
expect_status 202 "hmac (base64) webhook" "$(post /hooks/shop application/json "$shop" -H "X-Shop-Signature: $ssig" -H "X-Shop-Delivery: shop-9")"
expect_status 405 "a webhook takes POST only" "$(curl -s -o "$WORK/answer" -w '%{http_code}' "$URL/hooks/shop")"
if ids "$P_A" hooks && [ "$(paste -sd, "$WORK/ids")" = "gh-1,evt_e2e_1,shop-9" ]; then
    pass "the hooks bus holds each delivery once: gh-1, evt_e2e_1, shop-9"
else fail "hooks bus: $(paste -sd, "$WORK/ids")"; fi
curl -s "$URL/v1/buses/hooks/events?order=oldest&limit=3" >"$WORK/page"
[ "$(jq -r '.events[0].event | .type + " " + .source + " " + .subject' "$WORK/page")" = \
  "com.github.push https://github.com/acme/shop refs/heads/main" ] &&
[ "$(jq -r '.events[1].event | .type + " " + .subject' "$WORK/page")" = "com.stripe.invoice.paid in_1" ] &&
[ "$(jq -r '.events[2].event | .type + " " + (.data.order|tostring)' "$WORK/page")" = "shop.order 17" ] &&
    pass "webhook events carry the provider's type, source, subject and the body as data" ||
    fail "webhook events: $(head -c 600 "$WORK/page")"
[ "$(metric "$P_A" 'ebr_source_events_total{source="gh",outcome="refused"}')" = 3 ] &&
    pass "metrics: the github source refused 3" || fail "metrics: $(curl -s "$URL/metrics" | grep ebr_source_events_total | head -8)"

# ---- MQTT: a source (QoS 1) and a target, across a broker restart -------------------------------
rm -f "$WORK/ready"; READY=$WORK/ready $MQ sub "$P_MQ" alerts/out 1 60 >"$WORK/alerts1" 2>&1 &
SUB=$!
wait_for 30 test -f "$WORK/ready" || fail "the alerts subscriber did not subscribe"
$MQ pub "$P_MQ" sensors/t1 '{"temp": 35}' 1 || fail "publish sensors/t1"
$MQ pub "$P_MQ" sensors/t2 '{"temp": 20}' 1 || fail "publish sensors/t2"
wait_for "$E2E_WAIT" count_is "$P_A" tel 2 && pass "mqtt source: both messages stored" ||
    fail "mqtt source: $(paste -sd, "$WORK/ids")"
curl -s "$URL/v1/buses/tel/events?order=oldest&limit=1" >"$WORK/page"
[ "$(jq -r '.events[0].event | .source + " " + .subject + " " + (.data.temp|tostring)' "$WORK/page")" = \
  "mqtt://127.0.0.1:$P_MQ/sensors/t1 sensors/t1 35" ] && pass "mqtt source: the message's event" ||
    fail "mqtt event: $(head -c 400 "$WORK/page")"
wait "$SUB"
grep -q '"temp": *35' "$WORK/alerts1" && pass "mqtt target: the hot reading published to alerts/out" ||
    fail "mqtt target got: $(cat "$WORK/alerts1")"
stop mq KILL
mq_start
wait_for 20 mq_up || fail "mosquitto did not start again"
up_again() { curl -s "http://127.0.0.1:$P_A/metrics" | grep -q 'ebr_source_up{source="sensors".*} 1'; }
wait_for "$E2E_WAIT" up_again || fail "the mqtt source did not reconnect"
rm -f "$WORK/ready"; READY=$WORK/ready $MQ sub "$P_MQ" alerts/out 1 60 >"$WORK/alerts2" 2>&1 &
SUB=$!
wait_for 30 test -f "$WORK/ready" || fail "the alerts subscriber did not subscribe again"
$MQ pub "$P_MQ" sensors/t3 '{"temp": 40}' 1 || fail "publish sensors/t3 after the restart"
wait_for "$E2E_WAIT" count_is "$P_A" tel 3 && pass "mqtt source: a message after the broker restart is stored" ||
    fail "after the broker restart: $(paste -sd, "$WORK/ids")"
wait "$SUB"
grep -q '"temp": *40' "$WORK/alerts2" && pass "mqtt target: publishes again after the broker restart" ||
    fail "mqtt target after the restart got: $(cat "$WORK/alerts2")"

# ---- NATS: a core subject and a JetStream stream as sources; core and JetStream targets ------------
rm -f "$WORK/ready"; READY=$WORK/ready $NC sub "$P_NATS" out.core 2 60 >"$WORK/outcore" 2>&1 &
SUB=$!
wait_for 30 test -f "$WORK/ready" || fail "the out.core subscriber did not subscribe"
$NC pub "$P_NATS" in.core.a '{"n": 1}' || fail "publish in.core.a"
$NC pub "$P_NATS" in.js.b '{"n": 2}' || fail "publish in.js.b"
wait_for "$E2E_WAIT" count_is "$P_A" nt 2 && pass "nats sources: the core and the JetStream message stored" ||
    fail "nats sources: $(paste -sd, "$WORK/ids")"
curl -s "$URL/v1/buses/nt/events?order=oldest&limit=2" >"$WORK/page"
[ "$(jq -r '[.events[].event.subject] | sort | join(",")' "$WORK/page")" = "in.core.a,in.js.b" ] &&
    pass "nats sources: subjects in.core.a, in.js.b" || fail "nats events: $(head -c 600 "$WORK/page")"
# a structured-mode message that is not JSON: refused (and acknowledged), the daemon unmoved
$NC pub "$P_NATS" in.core.bad '{"specversion":"1.0","id":' application/cloudevents+json || fail "publish in.core.bad"
refused_one() { [ "$(metric "$P_A" 'ebr_source_events_total{source="core",outcome="refused"}')" = 1 ]; }
wait_for "$E2E_WAIT" refused_one && ebd_up "$P_A" && count_is "$P_A" nt 2 &&
    pass "nats source: a structured message that is not JSON is refused, nothing stored" ||
    fail "malformed structured message: $(curl -s "$URL/metrics" | grep 'source="core"')"
wait "$SUB"
[ "$(grep -c specversion "$WORK/outcore")" = 2 ] && pass "nats core target: both published to out.core" ||
    fail "out.core got: $(cat "$WORK/outcore")"
js_count() { [ "$($NC count "$P_NATS" OUTJS)" = "$1" ]; }
# (4: the two events, and the same two transformed to one source and id: two deliveries, each
# stored, as the Nats-Msg-Id names the delivery, not the payload)
wait_for "$E2E_WAIT" js_count 4 && pass "nats JetStream target: the stream holds all 4 deliveries" ||
    fail "OUTJS holds $($NC count "$P_NATS" OUTJS)"

# ---- a schedule across kill -9 and a restart: every second once -----------------------------------
tick_count() { ids "$P_A" ticks && [ "$(wc -l <"$WORK/ids")" -ge "$1" ]; }
wait_for "$E2E_WAIT" tick_count 2 || fail "the schedule does not fire"
stop a KILL
sleep 2
ebd_start a "$P_A" "$WORK/a.ebr"
wait_for 30 ebd_up "$P_A" || fail "ebd a did not start again"
ids "$P_A" ticks; before=$(wc -l <"$WORK/ids")
wait_for "$E2E_WAIT" tick_count $((before + 3)) || fail "the schedule does not fire after the restart"
kill -HUP "$(cat "$WORK/a.pid")"          # a reload too: the source is replaced
sleep 2
wait_for "$E2E_WAIT" tick_count $((before + 5)) || fail "the schedule does not fire after a reload"
stop a
# A stop between a firing's append and its record, made by hand in the state file: the firing
# is in the log but recorded in flight.  The next start finds it there and does not store it
# again; then one in flight that the log does not hold is stored.
STATE=$WORK/data-a/sources/tick.schedule
L=$(awk '$1 == "last" {print $2}' "$STATE")
printf 'last %s\ninflight %s\nat %s\n' $((L - 1)) "$L" "$((L * 1000))" >"$STATE"
ebd_start a "$P_A" "$WORK/a.ebr"; wait_for 30 ebd_up "$P_A"
wait_for 30 grep -q 'in flight at the last stop.*stored=yes' "$WORK/a.log" &&
    pass "schedule: a firing in flight that the log holds counts as done" ||
    fail "no in-flight firing found: $(grep schedule "$WORK/a.log" | tail -3)"
stop a
L=$(awk '$1 == "last" {print $2}' "$STATE")
printf 'last %s\ninflight %s\nat %s\n' "$L" $((L + 1)) "$(( $(date +%s) * 1000 ))" >"$STATE"
ebd_start a "$P_A" "$WORK/a.ebr"; wait_for 30 ebd_up "$P_A"
wait_for 30 grep -q 'in flight at the last stop.*stored=no' "$WORK/a.log" &&
    pass "schedule: a firing in flight that the log lacks is stored then" ||
    fail "no in-flight firing stored: $(grep schedule "$WORK/a.log" | tail -3)"
ids "$P_A" ticks; stop a
jq -R 'sub("tick@"; "") | fromdate' "$WORK/ids" >"$WORK/secs"
n=$(wc -l <"$WORK/secs"); first=$(head -1 "$WORK/secs"); last=$(tail -1 "$WORK/secs")
if [ "$(sort -u "$WORK/secs" | wc -l)" = "$n" ] && [ $((last - first + 1)) = "$n" ]; then
    pass "schedule: $n firings, every second from the first to the last once, across kill -9, a restart and a reload"
else fail "schedule firings: $(paste -sd, "$WORK/ids")"; fi

# ---- the event network: a remote target into a bus with a dedup window, over TLS --------------------
TLS="--tls-cert $WORK/cert.pem --tls-key $WORK/key.pem"
cat >"$WORK/c.ebr" <<RULES
bus inbox { dedup 10m; token env("INBOX_TOKEN") }
RULES
cat >"$WORK/b.ebr" <<RULES
bus out
target far remote "https://127.0.0.1:$P_C/v1/buses/inbox" {
  token env("INBOX_TOKEN")
  ca "$WORK/cert.pem"
  timeout 2s
  retry exponential(attempts: 100000, first: 50ms, max: 500ms, max_age: 1h)
}
rule forward on out { match exists id to far }
RULES
ebd_start c "$P_C" "$WORK/c.ebr" $TLS; ebd_start b "$P_B" "$WORK/b.ebr"
wait_for 30 ebd_up "$P_C" || fail "ebd c did not start"
wait_for 30 ebd_up "$P_B" || fail "ebd b did not start"
N=300
post_some() {   # post_some FROM TO: events n<FROM>..n<TO> to b's bus out, one request each
    _k=$1; : >"$WORK/net.cfg"
    while [ "$_k" -le "$2" ]; do
        [ -s "$WORK/net.cfg" ] && echo next >>"$WORK/net.cfg"
        printf 'url = "http://127.0.0.1:%s/v1/buses/out/events"\nrequest = "POST"\noutput = "/dev/null"\n' "$P_B" >>"$WORK/net.cfg"
        printf '{"specversion":"1.0","id":"n%s","source":"net-e2e","type":"t"}' "$_k" >"$WORK/net.ev$_k"
        printf 'header = "Content-Type: application/cloudevents+json"\ndata-binary = "@%s"\n' "$WORK/net.ev$_k" >>"$WORK/net.cfg"
        printf 'write-out = "%%{http_code}\\n"\n' >>"$WORK/net.cfg"
        _k=$((_k + 1))
    done
    curl -s -K "$WORK/net.cfg" >>"$WORK/net.status"
}
: >"$WORK/net.status"
post_some 1 150
got_some() { ids "$P_C" inbox && [ "$(wc -l <"$WORK/ids")" -ge 20 ]; }
wait_for "$E2E_WAIT" got_some || fail "nothing forwarded"
stop c KILL                               # the link is cut under traffic...
post_some 151 $N
sleep 1
ebd_start c "$P_C" "$WORK/c.ebr" $TLS     # ...and restored
wait_for 30 ebd_up "$P_C" || fail "ebd c did not start again"
[ "$(grep -c '^202$' "$WORK/net.status")" = $N ] || fail "posting to b: $(sort "$WORK/net.status" | uniq -c)"
wait_for "$E2E_WAIT" count_is "$P_C" inbox $N
ids "$P_C" inbox
if [ "$(wc -l <"$WORK/ids")" = $N ] && [ "$(sort -u "$WORK/ids" | wc -l)" = $N ]; then
    pass "network: all $N events stored exactly once at the far end, across kill -9 of the receiver"
else fail "network: $(wc -l <"$WORK/ids") stored, $(sort -u "$WORK/ids" | wc -l) distinct"; fi
# A replay on b sends every event again (the same source and id, with a "replay" attribute):
# the window answers each as stored before, and the far bus still holds each once.
st=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "http://127.0.0.1:$P_B/v1/buses/out/replays" \
    -H 'Content-Type: application/json' --data '{"name":"again","since":"1h"}')
[ "$st" = 201 ] || fail "replay on b: $st $(cat "$WORK/answer")"
replayed() {
    curl -s -o "$WORK/answer" "http://127.0.0.1:$P_B/v1/buses/out/replays/again" &&
        [ "$(jq -r .state "$WORK/answer")" = done ]
}
wait_for "$E2E_WAIT" replayed || fail "the replay did not finish: $(cat "$WORK/answer")"
dups=$(curl -s --cacert "$WORK/cert.pem" "$(base "$P_C")/metrics" | grep '^ebr_events_duplicate_total{bus="inbox"}' | awk '{print $2}')
if count_is "$P_C" inbox $N && [ "${dups:-0}" -ge $N ]; then
    pass "network: all $N sent again by a replay, each answered as a duplicate ($dups), none stored twice"
else fail "after the replay: $(wc -l <"$WORK/ids") stored, duplicates $dups"; fi
curl -s -o "$WORK/answer" -w '%{http_code}' --cacert "$WORK/cert.pem" -X POST "$(base "$P_C")/v1/buses/inbox/events" \
    -H "Authorization: Bearer $INBOX_TOKEN" -H "Content-Type: application/cloudevents+json" \
    --data '{"specversion":"1.0","id":"n7","source":"net-e2e","type":"t"}' >"$WORK/st"
[ "$(cat "$WORK/st")" = 202 ] && jq -e '.events[0].duplicate == true' "$WORK/answer" >/dev/null &&
    pass "dedup: an event sent again is answered as stored, with the first one's offset" ||
    fail "dedup answer: $(cat "$WORK/st") $(cat "$WORK/answer")"
count_is "$P_C" inbox $N || fail "the duplicate was stored"
stop b; stop c
for f in "$WORK"/a.log "$WORK"/b.log "$WORK"/c.log; do
    grep -q "ERROR: AddressSanitizer\|runtime error:" "$f" && fail "sanitizer report in $f"
done
[ "$FAILS" -ne 0 ] && for f in a b c; do echo "---- $f.log"; grep -v "level=debug" "$WORK/$f.log" | tail -15; done
finish
