#!/bin/sh
# End-to-end tests of Amazon EventBridge compatibility (docs/aws.md) with real AWS clients from
# Debian: the AWS CLI (`aws events put-events`, `aws events test-event-pattern`) and boto3
# (put_events, test_event_pattern) pointed at ebd with --endpoint-url.  An event put that way is
# stored as AWS's envelope and delivered through a rule whose pattern comes from the AWS
# documentation (detail-type, and detail with numeric and prefix conditions); `ebc test` on the
# stored events agrees with the daemon.  Batches, partial failures, the limits (10 entries,
# 256 KB), an unknown bus, a bus ARN, a bus with a token; then with access keys in the rules:
# signed requests, a wrong secret, an unknown key, a key bound to one bus, a stale signature, an
# unsigned request.
#   aws.sh BIN_DIR SOURCE_DIR WORK_DIR
# Needs awscli and python3-boto3 (tools/deps.sh).  Everything runs on 127.0.0.1 (ports
# 31000-31949, below Linux's ephemeral range, where a client's connection could hold the port;
# e2e.sh and the event center's tests take 20000-30999); every process started here is stopped.
. "$2/tests/e2e/lib.sh"
P=$(( 31000 + ($$ % 190) * 5 ))
URL=http://127.0.0.1:$P
E2E_WAIT=${E2E_WAIT:-60}
AWS=/usr/bin/aws
PY=/usr/bin/python3
EBD=""
cleanup() {
    for p in $EBD $PIDS; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT
[ -x $AWS ] || { fail "the AWS CLI is missing: sh tools/deps.sh installs awscli"; finish; }
$PY -c 'import boto3' 2>/dev/null || { fail "boto3 is missing: sh tools/deps.sh installs python3-boto3"; finish; }

# The CLI reads no file of this machine's: its configuration and credentials come from here.
export AWS_CONFIG_FILE="$WORK/aws-config" AWS_SHARED_CREDENTIALS_FILE="$WORK/aws-credentials"
export AWS_DEFAULT_REGION=eu-west-1 AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE
export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY AWS_PAGER="" AWS_MAX_ATTEMPTS=1
: >"$AWS_CONFIG_FILE"
: >"$AWS_SHARED_CREDENTIALS_FILE"

start_ebd() {  # start_ebd RULES
    "$BIN/ebd" --rules "$1" --data "$WORK/data" --listen 127.0.0.1:$P >>"$WORK/ebd.log" 2>&1 &
    EBD=$!
    wait_for "$E2E_WAIT" curl -sf "$URL/healthz" || { fail "ebd did not start"; finish; }
}
stop_ebd() {
    [ -n "$EBD" ] && { kill -TERM "$EBD" 2>/dev/null; wait "$EBD" 2>/dev/null; }
    EBD=""
}
# cli ARGS...: `aws events ARGS` against ebd; its output in $WORK/out, its errors in $WORK/err.
cli() { $AWS events --endpoint-url "$URL" --output json "$@" >"$WORK/out" 2>"$WORK/err"; }
# boto KEY SECRET ACTION ARGS...: aws_client.py's one JSON line, in $WORK/out too.
boto() {
    _k=$1; _s=$2; shift 2
    $PY "$SRC/tests/e2e/aws_client.py" "$URL" "$_k" "$_s" eu-west-1 "$@" >"$WORK/out" 2>"$WORK/err"
}
# field FILTER: jq of $WORK/out.
field() { jq -r "$1" "$WORK/out" 2>/dev/null; }
check() {  # check NAME FILTER WANT: does FILTER on the last output give WANT?
    _got=$(field "$2")
    [ "$_got" = "$3" ] && pass "$1" || fail "$1: $2 is '$_got', wanted '$3': $(cat "$WORK/out" "$WORK/err")"
}

# A pattern put together from the AWS documentation's examples ("Content filtering in Amazon
# EventBridge event patterns": numeric ranges and prefixes; PutEvents' com.mycompany.myapp).
cat >"$WORK/pattern.json" <<'EOF'
{
  "source": ["com.mycompany.myapp"],
  "detail-type": ["myDetailType"],
  "detail": {
    "c-count": [{ "numeric": [">", 0, "<=", 5] }],
    "state": [{ "prefix": "run" }]
  }
}
EOF
cat >"$WORK/rules.ebr" <<EOF
bus default {}
bus orders {}
bus locked { token env("EBR_E2E_LOCKED") }
target matched file "out/matched.jsonl"
target all file "out/all.jsonl"
rule from_the_aws_docs on orders {
  pattern $(cat "$WORK/pattern.json")
  to matched
}
rule everything on orders { pattern { "detail-type": [{ "exists": true }] } to all }
EOF
export EBR_E2E_LOCKED=locked-bus-token-0123456789
"$BIN/ebc" check "$WORK/rules.ebr" >"$WORK/check.out" 2>&1 || { fail "ebc check: $(cat "$WORK/check.out")"; finish; }
start_ebd "$WORK/rules.ebr"

# ---- the AWS CLI: put-events -----------------------------------------------------------------
cat >"$WORK/entries.json" <<'EOF'
[
  {"Source": "com.mycompany.myapp", "DetailType": "myDetailType", "EventBusName": "orders",
   "Detail": "{\"c-count\": 3, \"state\": \"running\", \"note\": \"matches\"}",
   "Resources": ["arn:aws:ec2:eu-west-1:123456789012:instance/i-1"]},
  {"Source": "com.mycompany.myapp", "DetailType": "myDetailType", "EventBusName": "orders",
   "Detail": "{\"c-count\": 9, \"state\": \"running\", \"note\": \"too many\"}"},
  {"Source": "com.mycompany.myapp", "DetailType": "myDetailType", "EventBusName": "orders",
   "Detail": "{\"c-count\": 2, \"state\": \"stopped\", \"note\": \"wrong prefix\"}"},
  {"Source": "com.mycompany.myapp", "DetailType": "myDetailType", "EventBusName": "orders",
   "Detail": "not json"},
  {"Source": "com.mycompany.myapp", "DetailType": "myDetailType",
   "EventBusName": "arn:aws:events:eu-west-1:123456789012:event-bus/orders",
   "Detail": "{\"c-count\": 5, \"state\": \"run\", \"note\": \"by ARN\"}", "Time": "2026-12-05T10:00:00Z"}
]
EOF
cli put-events --entries "file://$WORK/entries.json" && pass "aws events put-events: exit 0" \
    || fail "aws events put-events: $(cat "$WORK/err")"
check "FailedEntryCount is 1" .FailedEntryCount 1
check "the malformed Detail: MalformedDetail" '.Entries[3].ErrorCode' MalformedDetail
check "each good entry has an EventId" '[.Entries[0,1,2,4].EventId | test("^[0-9a-f-]{36}$")] | all' true
ID1=$(field '.Entries[0].EventId')
wait_for "$E2E_WAIT" lines_ge "$WORK/data/out/all.jsonl" 4 && pass "4 events delivered to the catch-all rule" \
    || fail "all.jsonl: $(cat "$WORK/data/out/all.jsonl" 2>/dev/null)"
wait_for "$E2E_WAIT" lines_ge "$WORK/data/out/matched.jsonl" 2 || true
notes=$(jq -r .detail.note "$WORK/data/out/matched.jsonl" 2>/dev/null | tr '\n' ' ')
[ "$notes" = "matches by ARN " ] && pass "the AWS documentation's pattern matched the two it should: $notes" \
    || fail "matched: '$notes'"
first=$(head -1 "$WORK/data/out/matched.jsonl")
echo "$first" >"$WORK/out"
check "the envelope: version" .version 0
check "the envelope: id is the EventId" .id "$ID1"
check "the envelope: detail-type" '."detail-type"' myDetailType
check "the envelope: source" .source com.mycompany.myapp
check "the envelope: region is the client's" .region eu-west-1
check "the envelope: account (no keys: 000000000000)" .account 000000000000
check "the envelope: resources" '.resources[0]' "arn:aws:ec2:eu-west-1:123456789012:instance/i-1"
check "the envelope: detail, an object" '.detail["c-count"]' 3
check "the envelope: time, AWS's form" '.time | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")' true
sed -n 2p "$WORK/data/out/matched.jsonl" >"$WORK/out"
check "Time given: the event's time" .time 2026-12-05T10:00:00Z

# ---- ebc test on what the daemon stored agrees with it ------------------------------------------
"$BIN/ebc" log dump "$WORK/data/buses/orders" --json >"$WORK/stored.jsonl" 2>"$WORK/dump.err" \
    || fail "ebc log dump: $(cat "$WORK/dump.err")"
jq -c '.payload' "$WORK/stored.jsonl" >"$WORK/events.jsonl" 2>/dev/null
"$BIN/ebc" test --json "$WORK/rules.ebr" "$WORK/events.jsonl" >"$WORK/ebctest.json" 2>"$WORK/ebctest.err"
by_ebc=$(jq -r 'select(.matched | index("from_the_aws_docs")) | .line' "$WORK/ebctest.json" | wc -l)
[ "$by_ebc" = 2 ] && [ ! -s "$WORK/ebctest.err" ] \
    && pass "ebc test on the 4 stored events: the same 2 match, no warning" \
    || fail "ebc test: $by_ebc matched; $(cat "$WORK/ebctest.err" "$WORK/ebctest.json")"

# ---- the AWS CLI: refusals ------------------------------------------------------------------------
cli put-events --entries '[{"Source":"s","DetailType":"t","Detail":"{}","EventBusName":"nope"}]'
check "an unknown bus: the entry fails (InvalidArgument)" '.Entries[0].ErrorCode' InvalidArgument
check "  and says which" '.Entries[0].ErrorMessage | test("nope")' true
cli put-events --entries '[{"Source":"s","DetailType":"t","Detail":"{}","EventBusName":"locked"}]'
check "a bus with a token, no keys declared: AccessDeniedException" '.Entries[0].ErrorCode' AccessDeniedException
cli put-events --entries '[{"DetailType":"t","Detail":"{}","EventBusName":"orders"},{"Source":"aws.ec2","DetailType":"t","Detail":"{}","EventBusName":"orders"}]'
check "no Source: InvalidArgument" '.Entries[0].ErrorCode' InvalidArgument
check "an aws. source: NotAuthorizedForSourceException" '.Entries[1].ErrorCode' NotAuthorizedForSourceException
cli put-events --entries '[{"Source":"s","DetailType":"t","Detail":"{}"}]'
check "no EventBusName: the bus named default" '.FailedEntryCount' 0
# ---- test-event-pattern -----------------------------------------------------------------------------
EVENT='{"version":"0","id":"1","detail-type":"myDetailType","source":"com.mycompany.myapp","account":"123456789012","time":"2026-12-05T10:00:00Z","region":"eu-west-1","resources":[],"detail":{"c-count":4,"state":"running"}}'
cli test-event-pattern --event-pattern "file://$WORK/pattern.json" --event "$EVENT"
check "test-event-pattern: a match" .Result true
cli test-event-pattern --event-pattern "file://$WORK/pattern.json" --event "$(echo "$EVENT" | sed 's/"c-count":4/"c-count":6/')"
check "test-event-pattern: no match (c-count 6)" .Result false
cli test-event-pattern --event-pattern '{"detail":{"c-count":[{"numeric":[">"]}]}}' --event "$EVENT"
rc=$?
[ $rc -ne 0 ] && grep -q InvalidEventPatternException "$WORK/err" \
    && pass "a bad pattern: InvalidEventPatternException ($(tr -d '\n' <"$WORK/err" | cut -c1-160))" \
    || fail "a bad pattern: exit $rc: $(cat "$WORK/out" "$WORK/err")"
cli test-event-pattern --event-pattern '{"source":["x"]}' --event '{"id":"1"}'
grep -q "ValidationException" "$WORK/err" && pass "an event without AWS's fields: ValidationException" \
    || fail "event without fields: $(cat "$WORK/out" "$WORK/err")"

# ---- boto3 ---------------------------------------------------------------------------------------------
K=$AWS_ACCESS_KEY_ID S=$AWS_SECRET_ACCESS_KEY
boto "$K" "$S" put orders 10
check "boto3 put_events, 10 entries: none failed" '.FailedEntryCount' 0
check "  10 ids" '.Entries | length' 10
boto "$K" "$S" put orders 11
check "11 entries: ValidationException" .error ValidationException
check "  answered 400" .status 400
big=$(head -c 140000 /dev/zero | tr '\0' x)
printf '[{"Source":"s","DetailType":"t","Detail":"{\\"a\\":\\"%s\\"}","EventBusName":"orders"},{"Source":"s","DetailType":"t","Detail":"{\\"a\\":\\"%s\\"}","EventBusName":"orders"}]' "$big" "$big" >"$WORK/big.json"
boto "$K" "$S" put_json "$WORK/big.json"
check "two entries of 140,000 bytes: over 256 KB in all (ValidationException)" .error ValidationException
printf '[{"Source":"s","DetailType":"t","Detail":"{}","EventBusName":"orders"},{"Source":"s","DetailType":"t","Detail":"[1]","EventBusName":"orders"},{"Source":"s","DetailType":"t","Detail":"{}","EventBusName":"gone"}]' >"$WORK/partial.json"
boto "$K" "$S" put_json "$WORK/partial.json"
check "a partial failure: 2 of 3 fail" .FailedEntryCount 2
check "  the first stored" '.Entries[0].EventId | length' 36
check "  an array Detail: MalformedDetail" '.Entries[1].ErrorCode' MalformedDetail
check "  an unknown bus" '.Entries[2].ErrorCode' InvalidArgument
boto "$K" "$S" test "$(cat "$WORK/pattern.json")" "$EVENT"
check "boto3 test_event_pattern" .Result true
# One entry of exactly 256 KB as AWS counts it (Source + DetailType + Detail) fits a bus of the
# default max_event_size, though its envelope is larger; one byte more is refused.
pad=$(( 262144 - 1 - 1 - 8 ))                      # Source "s", DetailType "t", Detail {"a":"..."}
printf '[{"Source":"s","DetailType":"t","Detail":"{\\"a\\":\\"%s\\"}","EventBusName":"orders"}]' \
    "$(head -c $pad /dev/zero | tr '\0' x)" >"$WORK/exact.json"
boto "$K" "$S" put_json "$WORK/exact.json"
check "one entry of exactly 262,144 bytes (AWS's count): stored" .FailedEntryCount 0
printf '[{"Source":"s","DetailType":"t","Detail":"{\\"a\\":\\"%s\\"}","EventBusName":"orders"}]' \
    "$(head -c $((pad + 1)) /dev/zero | tr '\0' x)" >"$WORK/exact1.json"
boto "$K" "$S" put_json "$WORK/exact1.json"
check "  one byte more: ValidationException" .error ValidationException
# U+0000 would be cut off by a NUL-terminated string: the entry is refused, not changed.
st=$(post / application/x-amz-json-1.1 '{"Entries":[{"Source":"a\u0000hidden","DetailType":"t","Detail":"{}","EventBusName":"orders"},{"Source":"s","DetailType":"t","Detail":"{} \u0000x","EventBusName":"orders"}]}' \
     -H 'X-Amz-Target: AWSEvents.PutEvents')
[ "$st" = 200 ] && [ "$(jq -r '.Entries[0].ErrorCode' "$WORK/answer")" = InvalidArgument ] \
    && [ "$(jq -r '.Entries[1].ErrorCode' "$WORK/answer")" = MalformedDetail ] \
    && pass "a U+0000 in Source: InvalidArgument; in Detail: MalformedDetail" \
    || fail "U+0000: $st $(cat "$WORK/answer")"
st=$(post / application/x-amz-json-1.1 '{"Entries":[{"Source":"s","DetailType":"t","Detail":"{}","Source":"aws.ec2"}]}' \
     -H 'X-Amz-Target: AWSEvents.PutEvents')
[ "$st" = 400 ] && grep -q SerializationException "$WORK/answer" \
    && pass "a member given twice: 400 SerializationException" || fail "duplicate member: $st $(cat "$WORK/answer")"
st=$(post '/?a=b' application/x-amz-json-1.1 '{"Entries":[{"Source":"s","DetailType":"t","Detail":"{}"}]}' \
     -H 'X-Amz-Target: AWSEvents.PutEvents')
[ "$st" = 400 ] && pass "a query string: 400 ($(cat "$WORK/answer"))" || fail "query string: $st $(cat "$WORK/answer")"
# The API Reference's limits: DetailType at most 128 characters (checked entry by entry, as
# Source and Detail are); TraceHeader 1 to 500, each resource at most 2048, TestEventPattern's
# EventPattern at most 4096 (the request's constraints: 400 ValidationException).
put_raw() { post / application/x-amz-json-1.1 "$1" -H 'X-Amz-Target: AWSEvents.PutEvents'; }
# invalid STATUS WHAT / taken STATUS WHAT: the answer just received was 400 ValidationException /
# 200 with no entry failed
invalid() {
    [ "$1" = 400 ] && grep -q ValidationException "$WORK/answer" && pass "$2" \
        || fail "$2: $1 $(cat "$WORK/answer")"
}
taken() {
    [ "$1" = 200 ] && [ "$(jq -r .FailedEntryCount "$WORK/answer")" = 0 ] && pass "$2" \
        || fail "$2: $1 $(cat "$WORK/answer")"
}
dt128=$(printf 'é%.0s' $(seq 128)) dt129=$(head -c 129 /dev/zero | tr '\0' x)
st=$(put_raw "{\"Entries\":[{\"Source\":\"s\",\"DetailType\":\"$dt128\",\"Detail\":\"{}\",\"EventBusName\":\"orders\"},{\"Source\":\"s\",\"DetailType\":\"$dt129\",\"Detail\":\"{}\",\"EventBusName\":\"orders\"}]}")
[ "$st" = 200 ] && [ "$(jq -r '.Entries[0].EventId | length' "$WORK/answer")" = 36 ] \
    && [ "$(jq -r '.Entries[1].ErrorCode' "$WORK/answer")" = InvalidArgument ] \
    && [ "$(jq -r .FailedEntryCount "$WORK/answer")" = 1 ] \
    && pass "DetailType of 128 characters (256 bytes): stored; of 129: InvalidArgument" \
    || fail "DetailType over 128 characters: $st $(cat "$WORK/answer")"
st=$(put_raw '{"Entries":[{"DetailType":"t","Detail":"{}","EventBusName":"orders"},{"Source":"s","Detail":"{}","EventBusName":"orders"}]}')
invalid "$st" "no entry with Source, DetailType and Detail: the request fails (400 ValidationException)"
th501=$(head -c 501 /dev/zero | tr '\0' t)
st=$(put_raw "{\"Entries\":[{\"Source\":\"s\",\"DetailType\":\"t\",\"Detail\":\"{}\",\"EventBusName\":\"orders\",\"TraceHeader\":\"$th501\"}]}")
invalid "$st" "a TraceHeader of 501 characters: 400 ValidationException"
st=$(put_raw '{"Entries":[{"Source":"s","DetailType":"t","Detail":"{}","EventBusName":"orders","TraceHeader":""}]}')
invalid "$st" "an empty TraceHeader: 400 ValidationException"
st=$(put_raw '{"Entries":[{"Source":"s","DetailType":"t","Detail":"{}","EventBusName":"orders","TraceHeader":"Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"}]}')
taken "$st" "an X-Ray TraceHeader: taken"
r2049=arn:aws:s3:::$(head -c 2036 /dev/zero | tr '\0' b)
st=$(put_raw "{\"Entries\":[{\"Source\":\"s\",\"DetailType\":\"t\",\"Detail\":\"{}\",\"EventBusName\":\"orders\",\"Resources\":[\"$r2049\"]}]}")
invalid "$st" "a resource of 2049 characters: 400 ValidationException"
st=$(put_raw "{\"Entries\":[{\"Source\":\"s\",\"DetailType\":\"t\",\"Detail\":\"{}\",\"EventBusName\":\"orders\",\"Resources\":[\"${r2049%b}\"]}]}")
taken "$st" "a resource of 2048 characters: taken"
for n in 4081 4082; do        # {"source":["v..."]}: 15 characters and n
    pat="{\"source\":[\"$(head -c $n /dev/zero | tr '\0' v)\"]}"
    body=$(jq -cn --arg p "$pat" --arg e "$EVENT" '{EventPattern: $p, Event: $e}')
    st=$(post / application/x-amz-json-1.1 "$body" -H 'X-Amz-Target: AWSEvents.TestEventPattern')
    if [ $n = 4081 ]; then
        [ "$st" = 200 ] && pass "an EventPattern of 4096 characters: answered" || fail "EventPattern of 4096: $st $(cat "$WORK/answer")"
    else
        invalid "$st" "an EventPattern of 4097 characters: 400 ValidationException"
    fi
done
stop_ebd

# ---- access keys in the rules ----------------------------------------------------------------------------
export EBR_E2E_AWS_SECRET="$AWS_SECRET_ACCESS_KEY" EBR_E2E_ORDERS_SECRET=orders-only-secret-0123456789
cat >"$WORK/keys.ebr" <<'EOF'
server { aws_access_key "AKIAIOSFODNN7EXAMPLE" secret env("EBR_E2E_AWS_SECRET") account "123456789012" }
bus orders { aws_access_key "AKIAORDERSONLY000001" secret env("EBR_E2E_ORDERS_SECRET") }
bus other {}
target all file "out/keys.jsonl"
rule everything on orders { pattern { "detail-type": [{ "exists": true }] } to all }
EOF
"$BIN/ebc" check "$WORK/keys.ebr" >"$WORK/check.out" 2>&1 || { fail "ebc check keys.ebr: $(cat "$WORK/check.out")"; finish; }
start_ebd "$WORK/keys.ebr"
cli put-events --entries '[{"Source":"s","DetailType":"signed","Detail":"{\"k\":1}","EventBusName":"orders"}]'
check "signed with a declared key: stored" .FailedEntryCount 0
wait_for "$E2E_WAIT" lines_ge "$WORK/data/out/keys.jsonl" 1
head -1 "$WORK/data/out/keys.jsonl" >"$WORK/out"
check "  the key's account in the envelope" .account 123456789012
AWS_SECRET_ACCESS_KEY=not-the-secret cli put-events --entries '[{"Source":"s","DetailType":"t","Detail":"{}","EventBusName":"orders"}]'
grep -q SignatureDoesNotMatch "$WORK/err" && pass "a wrong secret: SignatureDoesNotMatch" \
    || fail "wrong secret: $(cat "$WORK/out" "$WORK/err")"
AWS_ACCESS_KEY_ID=AKIANOTDECLARED00000 cli put-events --entries '[{"Source":"s","DetailType":"t","Detail":"{}","EventBusName":"orders"}]'
grep -q InvalidClientTokenId "$WORK/err" && pass "an unknown key: InvalidClientTokenId" \
    || fail "unknown key: $(cat "$WORK/out" "$WORK/err")"
boto AKIAORDERSONLY000001 orders-only-secret-0123456789 put other 1
check "a key bound to bus orders, on bus other: AccessDeniedException" '.Entries[0].ErrorCode' AccessDeniedException
boto AKIAORDERSONLY000001 orders-only-secret-0123456789 put orders 1
check "  on bus orders: stored" .FailedEntryCount 0
boto AKIAORDERSONLY000001 not-the-secret put orders 1
check "boto3 with a bad signature: SignatureDoesNotMatch" .error SignatureDoesNotMatch
check "  answered 403" .status 403
boto "$K" "$S" put_skewed orders -1200
check "signed 20 minutes ago: RequestExpired" .error RequestExpired
boto "$K" "$S" put_skewed orders 1200
check "signed 20 minutes ahead: RequestExpired" .error RequestExpired
boto "$K" "$S" put_skewed orders -300
check "5 minutes off: taken" .FailedEntryCount 0
boto "$K" "$S" put_scoped orders s3
check "a signature scoped to another service (s3): SignatureDoesNotMatch" .error SignatureDoesNotMatch
boto "$K" "$S" put_scoped orders events
check "  the same, scoped to events: taken" .FailedEntryCount 0
st=$(post / application/x-amz-json-1.1 '{"Entries":[{"Source":"s","DetailType":"t","Detail":"{}","EventBusName":"orders"}]}' \
     -H 'X-Amz-Target: AWSEvents.PutEvents')
[ "$st" = 403 ] && grep -q MissingAuthenticationToken "$WORK/answer" \
    && pass "an unsigned request: 403 MissingAuthenticationToken" || fail "unsigned: $st $(cat "$WORK/answer")"
stop_ebd

# One key id with two accounts: ebd refuses the rules (which account would an event get?).
cat >"$WORK/two.ebr" <<'EOF'
server { aws_access_key "AKIAIOSFODNN7EXAMPLE" secret env("EBR_E2E_AWS_SECRET") account "111111111111" }
bus orders { aws_access_key "AKIAIOSFODNN7EXAMPLE" secret env("EBR_E2E_AWS_SECRET") account "222222222222" }
EOF
"$BIN/ebd" --rules "$WORK/two.ebr" --data "$WORK/data2" --listen 127.0.0.1:$((P + 1)) >"$WORK/two.log" 2>&1 &
two=$!
wait_for "$E2E_WAIT" sh -c "! kill -0 $two" || kill "$two" 2>/dev/null
wait "$two" 2>/dev/null
grep -q "two accounts" "$WORK/two.log" && pass "one key id with two accounts: ebd refuses the rules" \
    || fail "two accounts: $(cat "$WORK/two.log")"
finish
