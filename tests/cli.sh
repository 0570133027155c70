#!/bin/sh
# End-to-end tests of the ebc command: exit codes, outputs, .ebc files refused when damaged.
# usage: cli.sh EBC SOURCE_DIR
set -u
EBC=$1
SRC=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0

fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
# expect_status WANT CMD...: runs CMD, checks its exit status
expect_status() {
    want=$1; shift
    "$@" >"$T/out" 2>"$T/err"
    got=$?
    [ "$got" -eq "$want" ] || fail "'$*' exited $got, expected $want; stderr: $(cat "$T/err")"
}

# --help, --version, usage errors
expect_status 0 "$EBC" --help
grep -q "exit status" "$T/out" || fail "--help does not document exit codes"
for cmd in "compile RULES.ebr -o OUT.ebc" "check RULES" "test RULES EVENTS.jsonl" "bench RULES EVENTS.jsonl" \
           "--transforms" "disasm RULES" "explain RULES" "opcodes" "log check DIR \[--fix\]" \
           "log dump DIR \[--from OFFSET | --since TIME\] \[--json\]" "log cursors DIR \[--json\]" \
           "schema infer EVENTS.jsonl"; do
    grep -q -- "^  *$cmd" "$T/out" || fail "--help does not list '$cmd'"
done
expect_status 0 "$EBC" --version
grep -q "^ebc " "$T/out" || fail "--version prints '$(cat "$T/out")'"
expect_status 2 "$EBC"
expect_status 2 "$EBC" frobnicate
expect_status 2 "$EBC" compile "$SRC/examples/orders.ebr"

# compile and check a good file
expect_status 0 "$EBC" check "$SRC/examples/orders.ebr"
grep -q "ok: 3 rules" "$T/out" || fail "check prints '$(cat "$T/out")'"
expect_status 0 "$EBC" check "$SRC/examples/cluster.ebr"     # (a bus on NATS JetStream)
expect_status 0 "$EBC" check "$SRC/examples/connect.ebr"     # (sources, broker and remote targets)
grep -q "ok: 3 rules, 3 buses, 3 targets, 4 sources" "$T/out" || fail "check of connect.ebr prints '$(cat "$T/out")'"
expect_status 0 "$EBC" compile "$SRC/examples/orders.ebr" -o "$T/orders.ebc"
[ -s "$T/orders.ebc" ] || fail "compile wrote no file"

# the documented matches of the example, from source and from the compiled file
AT="--ingest-time 2026-11-26T10:00:00Z"
expect_status 3 "$EBC" test "$SRC/examples/orders.ebr" "$SRC/examples/events.jsonl" $AT
cmp -s "$T/out" "$SRC/examples/events.expected" || fail "ebc test on examples/ differs from examples/events.expected"
expect_status 3 "$EBC" test "$T/orders.ebc" "$SRC/examples/events.jsonl" $AT
cmp -s "$T/out" "$SRC/examples/events.expected" || fail "ebc test on the .ebc differs from the .ebr"
head -5 "$SRC/examples/events.jsonl" > "$T/good.jsonl"
expect_status 0 "$EBC" test "$T/orders.ebc" "$T/good.jsonl"
expect_status 0 "$EBC" test "$T/orders.ebc" - < "$T/good.jsonl"
[ "$(grep -c '^[0-9]*:' "$T/out")" -eq 5 ] || fail "ebc test on stdin printed $(grep -c '^[0-9]*:' "$T/out") event lines"
grep -q '^  big_eu_orders -> billing: {"specversion": "1.0", "id": "e1"' "$T/out" || fail "no payload line for billing"

# --json
expect_status 3 "$EBC" test --json "$T/orders.ebc" "$SRC/examples/events.jsonl"
grep -q '^{"line": 1, "matched": \["big_eu_orders"\], "deliveries": \[{"rule": "big_eu_orders", "target": "billing", "payload": {"specversion": "1.0", "id": "e1",' "$T/out" || fail "--json line 1: $(head -1 "$T/out")"
grep -qx '{"line": 3, "matched": \[\]}' "$T/out" || fail "--json line 3"
grep -q '^{"line": 6, "matched": \[\], "error": "the event must be a JSON object (at byte 0)"}$' "$T/out" || fail "--json error line"

# payloads: a template, a function transform run for real, a failing transform
cat > "$T/x.ebr" <<'EOF'
bus b
target t file "t.jsonl"
rule tpl on b { match exists id transform { "id": $id, "at": $ingest_time } to t }
rule fn on b { match exists id transform function exec "cat" to t }
rule bad on b { match exists id transform { "n": to_number(data.s) } to t }
EOF
printf '%s\n' '{"id": "e1", "data": {"s": "x"}}' > "$T/x.jsonl"
expect_status 4 "$EBC" test "$T/x.ebr" "$T/x.jsonl" --ingest-time 2026-11-26T10:00:00Z
grep -qx '  tpl -> t: {"id":"e1","at":"2026-11-26T10:00:00.000Z"}' "$T/out" || fail "template payload: $(cat "$T/out")"
grep -qx '  fn -> t: {"id": "e1", "data": {"s": "x"}}' "$T/out" || fail "exec payload: $(cat "$T/out")"
grep -q '^  bad -> t: error: to_number: "x" is not a number (.*x.ebr:5:' "$T/out" || fail "failed transform: $(cat "$T/out")"
expect_status 4 "$EBC" test --json "$T/x.ebr" "$T/x.jsonl"
grep -q '"deliveries": \[{"rule": "tpl", "target": "t", "payload": {"id":"e1","at":"' "$T/out" || fail "--json deliveries: $(cat "$T/out")"
grep -q '{"rule": "bad", "target": "t", "error": "to_number' "$T/out" || fail "--json delivery error"
expect_status 2 "$EBC" test "$T/x.ebr" "$T/x.jsonl" --now yesterday

# an event ebd would refuse (not a CloudEvent) is tested all the same, with a warning on stderr
{ echo '{"source": "acme.orders", "data": {"total": 250}}'
  head -1 "$SRC/examples/events.jsonl"
  echo '{"specversion": "1.0", "id": "e9", "source": "acme.orders", "type": "t", "time": "today"}'
  echo 'not JSON'; } > "$T/ce.jsonl"
for json in "" --json; do
    expect_status 3 "$EBC" test $json "$T/orders.ebc" "$T/ce.jsonl"
    [ "$(grep -c '^[{0-9]' "$T/out")" -eq 4 ] || fail "ebc test $json on non-CloudEvents: $(cat "$T/out")"
    [ "$(wc -l < "$T/err")" -eq 2 ] || fail "ebc test $json warned: $(cat "$T/err")"
    grep -qx "$T/ce.jsonl:1: warning: ebd would refuse this event: required attribute 'specversion' is missing" "$T/err" ||
        fail "ebc test $json, no warning for line 1: $(cat "$T/err")"
    grep -qx "$T/ce.jsonl:3: warning: ebd would refuse this event: attribute 'time' must be an RFC 3339 time" "$T/err" ||
        fail "ebc test $json, no warning for line 3: $(cat "$T/err")"
done
expect_status 0 "$EBC" test "$T/orders.ebc" - < "$T/good.jsonl"
[ -s "$T/err" ] && fail "ebc test warned about CloudEvents: $(cat "$T/err")"

# bench: an invalid line is reported once, counted, not timed, and the run ends with status 3
head -2 "$SRC/examples/events.jsonl" > "$T/bench.jsonl"
printf 'not an event\n\n{"a": 1,}\n' >> "$T/bench.jsonl"
head -1 "$SRC/examples/events.jsonl" >> "$T/bench.jsonl"
expect_status 3 "$EBC" bench "$T/orders.ebc" "$T/bench.jsonl" --repeat 3 --transforms
grep -q "^events *5 (2 invalid, not timed)" "$T/out" || fail "bench output: $(cat "$T/out")"
grep -q "^  big_eu_orders *2$" "$T/out" || fail "bench counts: $(cat "$T/out")"
[ "$(wc -l < "$T/err")" -eq 2 ] || fail "bench reported $(wc -l < "$T/err") lines: $(cat "$T/err")"
grep -qx "$T/bench.jsonl:3: error: invalid event: the event must be a JSON object (at byte 0)" "$T/err" ||
    fail "bench error line 3: $(cat "$T/err")"
grep -qx "$T/bench.jsonl:5: error: invalid event: trailing comma in object (at byte 8)" "$T/err" ||
    fail "bench error line 5: $(cat "$T/err")"
expect_status 3 "$EBC" bench --json "$T/orders.ebc" "$T/bench.jsonl" --repeat 1
grep -q '^{"events": 5, "bytes": [0-9]*, .*"invalid": 2, "counts": {"big_eu_orders": 2,' "$T/out" ||
    fail "bench --json: $(cat "$T/out")"
# --trusted: the invalid events still set aside (checked untimed), the same counts
expect_status 3 "$EBC" bench --json --trusted "$T/orders.ebc" "$T/bench.jsonl" --repeat 1
grep -q '^{"events": 5, "bytes": [0-9]*, .*"trusted": true, "invalid": 2, "counts": {"big_eu_orders": 2,' "$T/out" ||
    fail "bench --json --trusted: $(cat "$T/out")"
expect_status 0 "$EBC" bench "$T/orders.ebc" "$T/good.jsonl" --repeat 1
[ -s "$T/err" ] && fail "bench on valid events wrote to stderr: $(cat "$T/err")"

# --bus
expect_status 0 "$EBC" test --bus orders "$T/orders.ebc" "$T/good.jsonl"
expect_status 2 "$EBC" test --bus nosuch "$T/orders.ebc" "$T/good.jsonl"

# the opcode table in docs/bytecode.md is what `ebc opcodes` prints
expect_status 0 "$EBC" opcodes
sed -n '/<!-- opcodes -->/,/<!-- \/opcodes -->/p' "$SRC/docs/bytecode.md" | sed '1d;$d' > "$T/doc_ops"
cmp -s "$T/out" "$T/doc_ops" || fail "docs/bytecode.md's opcode table is out of date (paste 'ebc opcodes')"

# disasm reads both forms alike
expect_status 0 "$EBC" disasm "$SRC/examples/orders.ebr"
cp "$T/out" "$T/d1"
expect_status 0 "$EBC" disasm "$T/orders.ebc"
cmp -s "$T/out" "$T/d1" || fail "disasm of .ebc and .ebr differ"

# errors: exit 1, nothing written, an existing output left alone
printf 'bus b\nrule r on b { match source == }\n' > "$T/bad.ebr"
expect_status 1 "$EBC" compile "$T/bad.ebr" -o "$T/bad.ebc"
[ -e "$T/bad.ebc" ] && fail "compile wrote output despite errors"
grep -q "bad.ebr:2:31: error:" "$T/err" || fail "error not positioned: $(cat "$T/err")"
cp "$T/orders.ebc" "$T/keep.ebc"
expect_status 1 "$EBC" compile "$T/bad.ebr" -o "$T/keep.ebc"
cmp -s "$T/keep.ebc" "$T/orders.ebc" || fail "a failed compile changed an existing output"
expect_status 1 "$EBC" check "$T/bad.ebr"
expect_status 3 "$EBC" test "$T/orders.ebc" "$T/missing.jsonl"
expect_status 1 "$EBC" check "$T/missing.ebr"

# damaged .ebc files are refused with a clear message
size=$(wc -c < "$T/orders.ebc")
cp "$T/orders.ebc" "$T/flip.ebc"
printf '\377' | dd of="$T/flip.ebc" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
expect_status 3 "$EBC" test "$T/flip.ebc" "$T/good.jsonl"
grep -q "checksum mismatch" "$T/err" || fail "flipped byte: $(cat "$T/err")"
head -c $((size - 7)) "$T/orders.ebc" > "$T/trunc.ebc"
expect_status 3 "$EBC" disasm "$T/trunc.ebc"
grep -q "truncated" "$T/err" || fail "truncated file: $(cat "$T/err")"
cp "$T/orders.ebc" "$T/version.ebc"
printf '\011' | dd of="$T/version.ebc" bs=1 seek=8 conv=notrunc 2>/dev/null
expect_status 3 "$EBC" disasm "$T/version.ebc"
grep -q "version 9 is not supported" "$T/err" || fail "wrong version: $(cat "$T/err")"
head -c 20 "$T/orders.ebc" > "$T/short.ebc"
expect_status 3 "$EBC" disasm "$T/short.ebc"
grep -q "truncated" "$T/err" || fail "short file: $(cat "$T/err")"
# ... known by their first bytes even when those are damaged too, never compiled as source
head -c 5 "$T/orders.ebc" > "$T/five.ebc"
cp "$T/orders.ebc" "$T/magic.ebc"
printf 'XY' | dd of="$T/magic.ebc" bs=1 seek=1 conv=notrunc 2>/dev/null
cp "$T/orders.ebc" "$T/overwritten.ebc"
printf 'rule' | dd of="$T/overwritten.ebc" bs=1 conv=notrunc 2>/dev/null
for f in five magic overwritten flip version; do
    for cmd in check test compile; do
        case $cmd in
        test) expect_status 3 "$EBC" test "$T/$f.ebc" "$T/good.jsonl" ;;
        compile) expect_status 3 "$EBC" compile "$T/$f.ebc" -o "$T/recompiled.ebc" ;;
        *) expect_status 3 "$EBC" $cmd "$T/$f.ebc" ;;
        esac
        grep -q "^$T/$f.ebc: error: not a valid ruleset file: " "$T/err" ||
            fail "ebc $cmd on $f.ebc: $(cat "$T/err")"
    done
done
expect_status 3 "$EBC" check "$T/five.ebc"
grep -q "not a valid ruleset file: truncated .ebc file: 5 bytes" "$T/err" || fail "5 bytes: $(cat "$T/err")"
# a sound .ebc is checked as the ruleset it holds
expect_status 0 "$EBC" check "$T/orders.ebc"
grep -q "ok: 3 rules" "$T/out" || fail "check of an .ebc prints '$(cat "$T/out")'"

# ebc log check and ebc log cursors: named cursors and cursor sets, written here as
# docs/storage.md describes them (a log of one empty segment; the checksums are CRC32C)
L=$T/log
mkdir -p "$L/cursors"
printf 'EBRLOG\000\000\001\000\000\000\040\000\000\000' > "$L/00000000000000000000.seg"
printf '\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000' >> "$L/00000000000000000000.seg"
printf 'ebr-cursor 1 7 b571391e\n' > "$L/cursors/audit"
printf 'ebr-cursor 2 50 3 7 40 45 23055563\n' > "$L/cursors/orders.billing"
printf 'ebr-cursorset 1 100 2\nr1.t1 120 0\nr2.t2 130 2 101 105\nd2636869\n' > "$L/cursors/@delivery"
printf 'torn' > "$L/cursors/.audit.tmp"
expect_status 0 "$EBC" log check "$L"
grep -qx "$L/cursors: 2 named cursors, 1 cursor set (2 positions): ok" "$T/out" || fail "log check: $(cat "$T/out")"
expect_status 0 "$EBC" log cursors "$L"
printf '%s\n' "audit 7" "orders.billing 50 pending 7 40 45" "@delivery base 100 entries 2" "  r1.t1 120" \
    "  r2.t2 130 pending 101 105" > "$T/want"
cmp -s "$T/out" "$T/want" || fail "log cursors: $(cat "$T/out")"
expect_status 0 "$EBC" log cursors --json "$L"
printf '%s\n' '{"cursor":"audit","high":7,"pending":[]}' '{"cursor":"orders.billing","high":50,"pending":[7,40,45]}' \
    '{"set":"delivery","base":100,"entries":[{"name":"r1.t1","high":120,"pending":[]},{"name":"r2.t2","high":130,"pending":[101,105]}]}' \
    > "$T/want"
cmp -s "$T/out" "$T/want" || fail "log cursors --json: $(cat "$T/out")"
# ... a set edited by hand (its checksum no longer matches) and a torn named cursor
printf 'ebr-cursorset 1 100 2\nr1.t1 121 0\nr2.t2 130 2 101 105\nd2636869\n' > "$L/cursors/@delivery"
printf 'ebr-cursor 1 7 b57' > "$L/cursors/audit"
expect_status 5 "$EBC" log check "$L"
grep -qx "$L/cursors/@delivery: a damaged cursor set: its checksum does not match" "$T/out" ||
    fail "log check, damaged set: $(cat "$T/out")"
grep -q "^$L/cursors/audit: a damaged named cursor: " "$T/out" || fail "log check, torn cursor: $(cat "$T/out")"
grep -qx "$L: 1 segments, 0 records, 32 bytes: 2 problems" "$T/out" || fail "log check summary: $(cat "$T/out")"
expect_status 5 "$EBC" log cursors "$L"
[ "$(cat "$T/out")" = "orders.billing 50 pending 7 40 45" ] || fail "log cursors, damaged files: $(cat "$T/out")"
grep -q "^ebc log cursors: $L/cursors/@delivery: a damaged cursor set: " "$T/err" || fail "log cursors stderr: $(cat "$T/err")"
grep -q "^ebc log cursors: $L/cursors/audit: " "$T/err" || fail "log cursors stderr: $(cat "$T/err")"
expect_status 3 "$EBC" log cursors "$T/no-such-log"
expect_status 2 "$EBC" log cursors
expect_status 2 "$EBC" log cursors "$L" --frobnicate

# ebc schema infer (docs/schemas.md): one schema per (source, type); a bad line named file:line
printf '%s\n%s\n' '{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"n":1,"at":"2026-12-05T16:00:00Z"}}' \
    '{"specversion":"1.0","id":"2","source":"s","type":"t","data":{"n":2.5}}' >"$T/ev.jsonl"
expect_status 0 "$EBC" schema infer "$T/ev.jsonl"
tr -d ' \t\n' <"$T/out" >"$T/flat"
grep -qF '"source":"s","type":"t","events":2' "$T/flat" || fail "schema infer: $(cat "$T/out")"
grep -qF '"data":{"type":"object","properties":{"at":{"type":"string","format":"date-time"},"n":{"type":"number"}},"required":["n"]}' \
    "$T/flat" || fail "schema infer, data: $(cat "$T/flat")"
printf '{"specversion":"1.0","id":"1","source":"s"}\n' >"$T/bad.jsonl"
expect_status 3 "$EBC" schema infer "$T/bad.jsonl"
grep -qx "$T/bad.jsonl:1: not a CloudEvent: no type (a non-empty string)" "$T/err" || fail "schema infer, bad line: $(cat "$T/err")"
expect_status 2 "$EBC" schema
expect_status 2 "$EBC" schema frobnicate x

if [ "$fails" -ne 0 ]; then
    echo "$fails cli checks failed"
    exit 1
fi
echo "cli: all checks passed"
