# lib.sh — what the end-to-end scripts share.  Each script runs as SCRIPT BIN_DIR SOURCE_DIR
# WORK_DIR and sources this first, as `. "$2/tests/e2e/lib.sh"`: it sets BIN (ebd, ebc and
# e2e_receiver), SRC and WORK (a scratch folder, emptied).  Before calling post, set URL (the
# daemon's base address); FAILS counts failed checks, PIDS lists processes to stop at the end.
set -u
BIN=$1
SRC=$2
WORK=$3
rm -rf "$WORK"
mkdir -p "$WORK"
FAILS=0
PIDS=""

fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
pass() { echo "ok: $*"; }

# wait_for SECONDS COMMAND...: runs COMMAND every 50 ms until it succeeds; false once SECONDS
# have passed.  Tests wait for what they expect to see, never for a time to pass, so a deadline
# only bounds a failure: E2E_WAIT (120 s) is generous on purpose, since a loaded machine (two CPU
# hogs and a disk writer that makes every fsync slow, under ASan) must not turn a slow success
# into a failure.
E2E_WAIT=${E2E_WAIT:-120}
wait_for() {
    _end=$(( $(date +%s) + $1 )); shift
    while :; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        [ "$(date +%s)" -lt $_end ] || return 1
        sleep 0.05
    done
}

# post PATH CONTENT_TYPE BODY [CURL ARGS...]: prints the status; the answer is in $WORK/answer.
post() {
    _path=$1; _ctype=$2; _body=$3; shift 3
    curl -s -o "$WORK/answer" -w '%{http_code}' -X POST "$URL$_path" -H "Content-Type: $_ctype" \
         --data-binary "$_body" "$@"
}

expect_status() {  # expect_status WANT NAME STATUS
    if [ "$3" = "$1" ]; then pass "$2 -> $1"; else fail "$2: got $3, wanted $1: $(cat "$WORK/answer")"; fi
}

ev() {  # ev ID TYPE [DATA]: a structured event
    printf '{"specversion":"1.0","id":"%s","source":"e2e","type":"%s","data":%s}' "$1" "$2" "${3:-{\"n\":1\}}"
}

# lines_ge FILE N: does FILE have at least N lines?
lines_ge() { [ -f "$1" ] && [ "$(grep -c '' "$1")" -ge "$2" ]; }

# finish: the closing line and the exit status (the daemon's log tail on failure).
finish() {
    if [ "$FAILS" -ne 0 ]; then
        [ -f "$WORK/ebd.log" ] && { echo "---- ebd log"; tail -40 "$WORK/ebd.log"; }
        echo "$FAILS failure(s)"
        exit 1
    fi
    echo "all checks of $(basename "$0") passed"
    exit 0
}
