#!/bin/sh
# End-to-end tests of ingest's limits and of what it refuses in an event's attributes:
# connections in all and per client address (503 with Retry-After when full, instead of a client
# that connects and hangs), a deadline for a request's headers and for its body (a client that
# sends a byte every now and then is cut), the bytes of request bodies held at once (503 beyond
# them), percent-encoding of ce- headers, control characters in attributes, and put-events with
# "entries" given twice.
#   ingest.sh BIN_DIR SOURCE_DIR WORK_DIR
# Everything runs on 127.0.0.1 (ports 1100-4999, below Linux's ephemeral range and apart from
# the other scripts'); at most 2,000 sockets at once, every wait bounded; every process started
# here is stopped at the end.  No check bounds a duration from above, except that with
# E2E_TIMED=1 the request made beside 2,000 slow sockets must be answered within a second.
. "$2/tests/e2e/lib.sh"
# Two daemons: one with the default limits on P0 for the whole script, and one at a time with
# small limits on P.
P0=$(( 1100 + $$ % 3899 ))
P=$((P0 + 1))
URL0=http://127.0.0.1:$P0
URLP=http://127.0.0.1:$P
URL=$URL0
EBD=""
EBD0=""
cleanup() {
    for p in $EBD $EBD0 $PIDS; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT

start_ebd() {  # start_ebd NAME [FLAGS...]: a daemon on P and data directory $WORK/NAME, logging to $WORK/ebd.log
    _name=$1; shift
    "$BIN/ebd" --rules "$WORK/rules.ebr" --data "$WORK/$_name" --listen 127.0.0.1:$P "$@" >>"$WORK/ebd.log" 2>&1 &
    EBD=$!
    URL=$URLP
    wait_for 60 curl -sf "$URL/healthz" || fail "ebd $* did not start: $(tail -3 "$WORK/ebd.log")"
}
stop_ebd() {
    [ -n "$EBD" ] && { kill -TERM "$EBD" 2>/dev/null; wait "$EBD" 2>/dev/null; }
    EBD=""
    URL=$URL0
}
printf 'bus main\n' >"$WORK/rules.ebr"

# ---- a socket client (perl-base, which every Debian has) -----------------------------------------
#   hold N idle|slow DIR      opens N connections (slow: each sends the start of a request's headers
#                             and no more), writes DIR/ready (opened=N failed=N); then, each time
#                             DIR/want appears, writes DIR/status: how many are still open, closed
#                             by the daemon, or answered (and the answers' status lines).  Up to 300 s.
#   drip idle|headers|body INTERVAL OUT
#                             one connection that sends nothing (idle), or a request's headers
#                             (headers) or, after whole headers, its body (body) one byte every
#                             INTERVAL seconds; writes OUT when the daemon closes it or answers, or
#                             after 60 s without either.
#   partial CL SEND DIR       a batch of CL bytes sent with Expect: 100-continue: once the daemon
#                             said 100 Continue, SEND bytes of it, then DIR/sent; the rest when
#                             DIR/go appears (up to 120 s); the answer's status line into DIR/answer.
cat >"$WORK/sock.pl" <<'EOF'
use strict;
use warnings;
use IO::Socket::INET;
use Errno qw(EAGAIN EWOULDBLOCK);
$SIG{PIPE} = 'IGNORE';
my ($port, $mode) = (shift, shift);     # the daemon's port, what to do

sub put {
    my ($file, $text) = @_;
    open(my $f, '>', "$file.tmp") or die "$file: $!";
    print $f $text;
    close $f;
    rename "$file.tmp", $file;
}
sub connect_one {
    return IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 10);
}
sub nap { select(undef, undef, undef, $_[0]); }
# What a socket holds now: 'open' (nothing to read), 'closed', or the status line of an answer.
sub look {
    my ($s) = @_;
    $s->blocking(0);
    my $r = sysread($s, my $buf, 65536);
    return 'open' if !defined $r && ($! == EAGAIN || $! == EWOULDBLOCK);
    return 'closed' if !$r;
    my ($line) = $buf =~ /^([^\r\n]*)/;
    return "answer $line";
}
my $ev = '{"specversion":"1.0","id":"big","source":"e2e","type":"x"}';

if ($mode eq 'hold') {
    my ($n, $what, $dir) = @ARGV;
    my (@s, $failed);
    $failed = 0;
    for (1 .. $n) {
        my $c = connect_one();
        if (!$c) { $failed++; next; }
        syswrite($c, "POST /v1/buses/main/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
            if $what eq 'slow';
        push @s, $c;
    }
    put("$dir/ready", "opened=" . scalar(@s) . " failed=$failed\n");
    my @state = ('open') x @s;
    my $end = time + 300;
    while (time < $end) {
        if (-e "$dir/want") {
            for my $i (0 .. $#s) {
                $state[$i] = look($s[$i]) if $state[$i] eq 'open';
            }
            my %count;
            $count{$_ eq 'open' || $_ eq 'closed' ? $_ : 'answered'}++ for @state;
            my %lines;
            $lines{$_}++ for grep { /^answer / } @state;
            put("$dir/status", sprintf("open=%d closed=%d answered=%d\n", $count{open} // 0,
                                       $count{closed} // 0, $count{answered} // 0)
                               . join('', map { "$_ x$lines{$_}\n" } sort keys %lines));
            unlink "$dir/want";
        }
        nap(0.05);
    }
} elsif ($mode eq 'drip') {
    my ($what, $interval, $out) = @ARGV;
    my $c = connect_one() or die "connect: $!";
    syswrite($c, "POST /v1/buses/main/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ") if $what eq 'headers';
    syswrite($c, "POST /v1/buses/main/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 . "Content-Type: application/cloudevents+json\r\nContent-Length: 100000\r\n\r\n")
        if $what eq 'body';
    my ($sent, $result, $end) = (0, undef, time + 60);
    while (time < $end) {
        my $l = look($c);
        if ($l ne 'open') { $result = $l; last; }
        if ($what ne 'idle') {
            my $w = syswrite($c, 'a');
            if (!defined $w && $! != EAGAIN) { $result = "closed ($!)"; last; }
            $sent++;
        }
        nap($interval);
    }
    put($out, ($result // 'still open after 60 s') . " after sending $sent bytes\n");
} elsif ($mode eq 'partial') {
    my ($cl, $send, $dir) = @ARGV;
    # the body's bytes [$off, $off + $len): '[' event, spaces, ']' (made as sent: it may be large)
    my $head = '[' . $ev;
    my $piece = sub {
        my ($off, $len) = @_;
        $len = 1 << 20 if $len > 1 << 20;
        my $p = $off < length($head) ? substr($head, $off, $len) : ' ' x $len;
        $p = substr($p, 0, $cl - 1 - $off) . ']' if $off + length($p) >= $cl;
        return $p;
    };
    my $c = connect_one() or die "connect: $!";
    syswrite($c, "POST /v1/buses/main/events HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
                 . "Content-Type: application/cloudevents-batch+json\r\nContent-Length: $cl\r\n\r\n");
    my $got = '';
    my $end = time + 60;
    while (time < $end && $got !~ /\r\n\r\n/) {
        my $r = sysread($c, my $buf, 4096);
        last if !$r;
        $got .= $buf;
    }
    if ($got !~ /^HTTP\/1.1 100/) {
        my ($line) = $got =~ /^([^\r\n]*)/;
        put("$dir/answer", "no 100 Continue: " . ($line // 'nothing') . "\n");
        exit 0;
    }
    my $off = 0;
    while ($off < $send) {
        my $w = syswrite($c, $piece->($off, $send - $off));
        die "write: $!" if !defined $w;
        $off += $w;
    }
    put("$dir/sent", "$off\n");
    $end = time + 120;
    nap(0.05) while !-e "$dir/go" && time < $end;
    exit 0 if !-e "$dir/go";
    while ($off < $cl) {
        my $w = syswrite($c, $piece->($off, $cl - $off));
        die "write: $!" if !defined $w;
        $off += $w;
    }
    $got = '';
    $end = time + 60;
    while (time < $end && $got !~ /\r\n/) {
        my $r = sysread($c, my $buf, 4096);
        last if !$r;
        $got .= $buf;
    }
    my ($line) = $got =~ /^([^\r\n]*)/;
    put("$dir/answer", ($line // 'nothing') . "\n");
}
EOF
# (Started as a simple command, so that $! is perl itself and kill stops it.)  SOCK0 talks to
# the daemon with the default limits, SOCK to the other.
SOCK0="perl $WORK/sock.pl $P0"
SOCK="perl $WORK/sock.pl $P"

# hold_status DIR: asks the holder in DIR how its sockets are, and prints it.
hold_status() {
    rm -f "$1/status"
    touch "$1/want"
    wait_for 60 test -f "$1/status" && cat "$1/status"
}
# hold_field DIR NAME: one count (open, closed, answered) of the holder's last status.
hold_field() { sed -n "s/.*$2=\([0-9]*\).*/\1/p" "$1/status"; }
# hold_until DIR NAME N: waits (up to 60 s) until the holder's NAME count is N.
hold_until() {
    _w=0
    while [ $_w -lt 120 ]; do
        hold_status "$1" >/dev/null
        [ "$(hold_field "$1" "$2")" = "$3" ] && return 0
        sleep 0.5; _w=$((_w + 1))
    done
    return 1
}
# hold N idle|slow NAME [PORT]: starts a holder in $WORK/NAME (connecting to P, or PORT) and waits
# until its connections are open.
hold() {
    mkdir -p "$WORK/$3"
    perl "$WORK/sock.pl" "${4:-$P}" hold "$1" "$2" "$WORK/$3" &
    PIDS="$PIDS $!"
    eval "HOLD_$3=$!"
    wait_for 120 test -f "$WORK/$3/ready" || fail "the holder $3 did not open its connections"
}
unhold() {  # unhold NAME
    eval "kill \$HOLD_$1 2>/dev/null; wait \$HOLD_$1 2>/dev/null"
}
# answer_header NAME: the value of header NAME in $WORK/headers (curl -D).
answer_header() { tr -d '\r' <"$WORK/headers" | sed -n "s/^$1: *//Ip" | head -1; }
post_h() {  # post_h PATH CONTENT_TYPE BODY [CURL ARGS...]: as post, headers in $WORK/headers
    _path=$1; _ctype=$2; _body=$3; shift 3
    curl -s -D "$WORK/headers" -o "$WORK/answer" -w '%{http_code}' --max-time 60 -X POST "$URL$_path" \
         -H "Content-Type: $_ctype" --data-binary "$_body" "$@"
}

# Enough descriptors for 2,000 sockets on each side (root may raise the hard limit).
[ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 20000 ] && ulimit -n 20000 2>/dev/null
FDS=$(ulimit -n)

# The daemon with the default limits, and a client that sends it a request's headers one byte every
# 0.2 s: cut after --header-timeout (30 s), while the rest runs (checked at the end; libmicrohttpd's
# own time-out, 120 s before, is for a connection that sends nothing, so it kept this one).
"$BIN/ebd" --rules "$WORK/rules.ebr" --data "$WORK/main" --listen 127.0.0.1:$P0 >>"$WORK/ebd.log" 2>&1 &
EBD0=$!
wait_for 60 curl -sf "$URL0/healthz" || fail "ebd did not start: $(tail -3 "$WORK/ebd.log")"
$SOCK0 drip headers 0.2 "$WORK/drip.default" &
PIDS="$PIDS $!"

# ---- 2,000 slow sockets: a normal request is answered while they are held open -----------------
# libmicrohttpd's default was 1,020 connections: the 1,021st client connected (into the listen
# backlog) and hung.  With the descriptor limit raised to its hard limit, the daemon serves
# min(10000, descriptors/2) connections, a quarter of them per client address.
if [ "$FDS" = unlimited ] || [ "$FDS" -ge 20000 ]; then
    hold 2000 slow slow $P0
    echo "  holder: $(cat "$WORK/slow/ready")"
    s=$(curl -s -o "$WORK/answer" -w '%{http_code} %{time_total}' --max-time 60 -X POST "$URL/v1/buses/main/events" \
        -H 'Content-Type: application/cloudevents+json' --data-binary "$(ev normal1 x)")
    set -- $s
    hold_status "$WORK/slow" >/dev/null
    if [ "$1" = 202 ] && grep -q '^opened=2000 failed=0' "$WORK/slow/ready" && [ "$(hold_field "$WORK/slow" open)" = 2000 ]; then
        pass "a request made while 2,000 slow sockets are held open is answered 202 (in $2 s); all 2,000 still open after it"
    else
        fail "beside 2,000 slow sockets: got '$1' in $2 s; holder $(cat "$WORK/slow/ready"), now $(cat "$WORK/slow/status")"
    fi
    if [ "${E2E_TIMED:-0}" = 1 ]; then
        awk -v t="$2" 'BEGIN { exit !(t < 1.0) }' && pass "answered within a second ($2 s)" \
            || fail "beside 2,000 slow sockets the request took $2 s"
    fi
    unhold slow
else
    echo "note: the descriptor limit is $FDS (under 20000, and it cannot be raised here): the 2,000-socket check did not run"
fi

# ---- bytes of bodies held at once, by default 256 MiB -------------------------------------------
# Nine requests of 31 MiB, each sending 64 KiB of it and holding the rest: eight fit (a body with a
# Content-Length counts whole from its headers on), the ninth is answered 503 before its body.
# (Before, each was buffered as it came: 250 such took 7.9 GB.)
k=1
while [ $k -le 9 ]; do
    mkdir -p "$WORK/big$k"
    $SOCK0 partial 32505856 65536 "$WORK/big$k" &
    PIDS="$PIDS $!"
    eval "BIG$k=$!"
    k=$((k + 1))
done
settled() { [ "$(ls "$WORK"/big*/sent "$WORK"/big*/answer 2>/dev/null | wc -l)" -ge 9 ]; }
wait_for 120 settled
held=$(ls "$WORK"/big*/sent 2>/dev/null | wc -l)
refused=$(cat "$WORK"/big*/answer 2>/dev/null | grep -c '^no 100 Continue: HTTP/1.1 503')
[ "$held" = 8 ] && [ "$refused" = 1 ] \
    && pass "nine requests of 31 MiB at once: eight taken, the ninth answered 503 before its body" \
    || fail "nine requests of 31 MiB: $held taken, $refused refused; $(cat "$WORK"/big*/answer 2>/dev/null)"
k=1
while [ $k -le 9 ]; do eval "kill \$BIG$k 2>/dev/null; wait \$BIG$k 2>/dev/null"; k=$((k + 1)); done
# Their bytes are counted out when their connections close: a 31 MiB request fits again.
again() {
    rm -rf "$WORK/big0"; mkdir -p "$WORK/big0"
    $SOCK0 partial 32505856 0 "$WORK/big0" & _b=$!
    wait_for 60 sh -c "[ -f '$WORK/big0/sent' ] || [ -f '$WORK/big0/answer' ]"
    kill $_b 2>/dev/null; wait $_b 2>/dev/null
    [ -f "$WORK/big0/sent" ]
}
wait_for 60 again && pass "once they are gone, a 31 MiB request is taken again" \
    || fail "after the 31 MiB requests closed: $(cat "$WORK/big0/answer" 2>/dev/null)"

# ---- the connection limit: 503 with Retry-After when full, not a hang ---------------------------
start_ebd full --max-connections 20 --max-client-connections 0 --header-timeout 600
hold 20 idle full1
s=$(post_h /v1/buses/main/events application/cloudevents+json "$(ev full1 x)")
[ "$s" = 503 ] && [ "$(answer_header Retry-After)" = 1 ] && grep -q '20 connections' "$WORK/answer" \
    && pass "the 21st connection is answered 503, Retry-After: 1: $(cat "$WORK/answer")" \
    || fail "a request beyond --max-connections 20: got $s, Retry-After '$(answer_header Retry-After)': $(cat "$WORK/answer")"
# More idle connections than the reserve holds: every one of them is closed by the daemon (those in
# the reserve after a few seconds, the others as soon as they are taken from the backlog), while
# the 20 admitted ones stay open.
hold 60 idle full2
hold_until "$WORK/full2" closed 60 && pass "60 more idle connections beyond the limit are all closed by the daemon" \
    || fail "beyond the limit: $(cat "$WORK/full2/status")"
hold_status "$WORK/full1" >/dev/null
[ "$(hold_field "$WORK/full1" open)" = 20 ] && pass "the 20 admitted connections stay open" \
    || fail "admitted connections: $(cat "$WORK/full1/status")"
unhold full1
# Their slots come back: a request goes through again.
wait_for 60 sh -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -X POST '$URL/v1/buses/main/events' \
    -H 'Content-Type: application/cloudevents+json' --data-binary '$(ev full2 x)')\" = 202 ]" \
    && pass "once they close, a new connection is served (202)" || fail "after the holders closed: still refused"
unhold full2
stop_ebd

# ---- per client address ------------------------------------------------------------------------
start_ebd client --max-client-connections 10 --header-timeout 600
hold 10 idle client1
s=$(post_h /v1/buses/main/events application/cloudevents+json "$(ev client1 x)")
[ "$s" = 503 ] && [ "$(answer_header Retry-After)" = 1 ] && grep -q '127.0.0.1' "$WORK/answer" \
    && pass "the 11th connection from one address is answered 503, Retry-After: 1: $(cat "$WORK/answer")" \
    || fail "a request beyond --max-client-connections 10: got $s: $(cat "$WORK/answer")"
hold 30 idle client2
hold_until "$WORK/client2" closed 30 && pass "30 more idle connections from that address are all closed by the daemon" \
    || fail "beyond the per-client limit: $(cat "$WORK/client2/status")"
hold_status "$WORK/client1" >/dev/null
[ "$(hold_field "$WORK/client1" open)" = 10 ] && pass "its 10 admitted connections stay open" \
    || fail "admitted connections: $(cat "$WORK/client1/status")"
unhold client1
unhold client2
stop_ebd

# ---- deadlines: headers and body must arrive in time, however slowly they trickle in -----------
# libmicrohttpd's own time-out is for a connection that sends nothing; one byte every 0.2 s kept a
# connection (and its slot) for as long as the client liked.
start_ebd deadline --header-timeout 2 --body-timeout 2
for what in headers body idle; do
    $SOCK drip $what 0.2 "$WORK/drip.$what" &
    PIDS="$PIDS $!"
done
for what in headers body idle; do
    wait_for 120 test -f "$WORK/drip.$what"
    case $what in
        idle) said="a client that opens a connection and sends nothing" ;;
        *) said="a client that sends its $what one byte every 0.2 s" ;;
    esac
    grep -q '^closed' "$WORK/drip.$what" && pass "$said is cut: $(cat "$WORK/drip.$what")" \
        || fail "$said: $(cat "$WORK/drip.$what" 2>/dev/null)"
done
logged=0
for what in headers body; do
    grep -q "msg=\"connections cut.* $what=[1-9].*header_timeout_s=2 body_timeout_s=2" "$WORK/ebd.log" \
        && logged=$((logged + 1)) || fail "no log line for the connection cut in its $what"
done
[ $logged = 2 ] && pass "the daemon logs them: $(grep -o 'msg="connections cut.*header_timeout_s=2 .*' "$WORK/ebd.log" | head -1)"
s=$(post /v1/buses/main/events application/cloudevents+json "$(ev after-drip x)")
expect_status 202 "a normal request after the cuts" "$s"
stop_ebd

# ---- bytes of bodies held at once --------------------------------------------------------------
# A request whose body would take the bytes held over --max-buffered is answered 503 before its
# body is read (Content-Length), or once it is (chunked: what came was dropped, not kept).
start_ebd buffered --max-buffered 1MiB
mkdir -p "$WORK/pa"
$SOCK partial 700000 600000 "$WORK/pa" &
PIDS="$PIDS $!"
wait_for 60 test -f "$WORK/pa/sent" || fail "the partial body was not taken: $(cat "$WORK/pa/answer" 2>/dev/null)"
head -c 500000 /dev/zero | tr '\0' ' ' >"$WORK/pad"
{ printf '[%s' "$(ev b1 x)"; head -c 499000 "$WORK/pad"; printf ']'; } >"$WORK/b500k"
# curl sends 500,000 bytes without waiting for "100 Continue": the body, on its way, is read and
# dropped before the answer (an answer sent before it was lost to a reset on a busy machine).
s=$(post_h /v1/buses/main/events application/cloudevents-batch+json @"$WORK/b500k")
[ "$s" = 503 ] && [ "$(answer_header Retry-After)" = 1 ] && grep -q 'max-buffered' "$WORK/answer" \
    && pass "with 700,000 bytes held, a 500,000-byte request is answered 503, Retry-After: 1: $(cat "$WORK/answer")" \
    || fail "past --max-buffered: got $s: $(cat "$WORK/answer")"
# A client that waits for "100 Continue" is answered before it sends the body at all.
s=$(post_h /v1/buses/main/events application/cloudevents-batch+json @"$WORK/b500k" \
    -H 'Expect: 100-continue' --expect100-timeout 60 -w '%{http_code} %{size_upload}')
[ "$s" = "503 0" ] && grep -q 'max-buffered' "$WORK/answer" \
    && pass "with Expect: 100-continue it is answered 503 before its body (0 bytes sent)" \
    || fail "past --max-buffered with Expect: got $s: $(cat "$WORK/answer")"
touch "$WORK/pa/go"
wait_for 60 test -f "$WORK/pa/answer"
grep -q '^HTTP/1.1 202' "$WORK/pa/answer" && pass "the held request, finished, is stored: $(cat "$WORK/pa/answer")" \
    || fail "the held request: $(cat "$WORK/pa/answer")"
s=$(post_h /v1/buses/main/events application/cloudevents-batch+json @"$WORK/b500k")
expect_status 202 "once it is done, the 500,000-byte request fits" "$s"
{ printf '[%s' "$(ev b2 x)"; head -c 500000 "$WORK/pad"; head -c 500000 "$WORK/pad"; head -c 200000 "$WORK/pad"; printf ']'; } >"$WORK/b1200k"
s=$(post_h /v1/buses/main/events application/cloudevents-batch+json @"$WORK/b1200k" -H 'Transfer-Encoding: chunked')
[ "$s" = 503 ] && [ "$(answer_header Retry-After)" = 1 ] \
    && pass "a chunked body growing past --max-buffered: 503, Retry-After: 1" || fail "chunked past the bound: $s $(cat "$WORK/answer")"
s=$(post_h /v1/buses/main/events application/cloudevents-batch+json @"$WORK/b500k" -H 'Transfer-Encoding: chunked')
expect_status 202 "a chunked body within it" "$s"
stop_ebd

# ---- what an attribute may hold ----------------------------------------------------------------
binary() {  # binary NAME STATUS [HEADERS...]: a binary-mode event with the given headers
    _name=$1; _want=$2; shift 2
    _s=$(post /v1/buses/main/events application/json '{"a":1}' -H 'ce-specversion: 1.0' \
         -H 'ce-source: e2e' -H 'ce-type: x' "$@")
    expect_status "$_want" "$_name" "$_s"
}
binary "binary: ce-id a%ZZb (not a percent-encoding)" 400 -H 'ce-id: a%ZZb'
grep -q "ce-id" "$WORK/answer" && grep -q "percent" "$WORK/answer" && pass "  which names ce-id: $(cat "$WORK/answer")" || fail "  message: $(cat "$WORK/answer")"
binary "binary: ce-id ending in %4" 400 -H 'ce-id: abc%4'
binary "binary: ce-subject with a lone %" 400 -H 'ce-id: p1' -H 'ce-subject: 100% sure'
binary "binary: ce-id a%00b (NUL)" 400 -H 'ce-id: a%00b'
grep -q '"field":"id"' "$WORK/answer" && grep -q 'control character' "$WORK/answer" \
    && pass "  which names id: $(cat "$WORK/answer")" || fail "  message: $(cat "$WORK/answer")"
binary "binary: ce-subject %0A (line feed)" 400 -H 'ce-id: p2' -H 'ce-subject: a%0Ab'
grep -q '"field":"subject"' "$WORK/answer" || fail "  names subject: $(cat "$WORK/answer")"
binary "binary: ce-myext %C2%85 (U+0085, a C1 control)" 400 -H 'ce-id: p3' -H 'ce-myext: a%C2%85'
grep -q '"field":"myext"' "$WORK/answer" || fail "  names myext: $(cat "$WORK/answer")"
binary "binary: ce-id caf%C3%A9 (UTF-8, percent-encoded)" 202 -H 'ce-id: caf%C3%A9'
s=$(post /v1/buses/main/events application/cloudevents+json '{"specversion":"1.0","id":"a\u0001","source":"e2e","type":"x"}')
expect_status 400 "structured: an id holding U+0001" "$s"
grep -q '"field":"id"' "$WORK/answer" || fail "  names id: $(cat "$WORK/answer")"
s=$(post /v1/buses/main/events application/cloudevents+json '{"specversion":"1.0","id":"s1","source":"e2e","type":"x","subject":"a\nb"}')
expect_status 400 "structured: a subject holding a line feed" "$s"
s=$(post /v1/buses/main/events application/cloudevents-batch+json "[$(ev ok1 x),{\"specversion\":\"1.0\",\"id\":\"b1\",\"source\":\"e2e\",\"type\":\"x\u007f\"}]")
expect_status 400 "batched: a type holding U+007F" "$s"
grep -q 'event 1: attribute .type.' "$WORK/answer" || fail "  names event 1 and type: $(cat "$WORK/answer")"
s=$(post /v1/buses/main/put-events application/json "{\"entries\":[$(ev pe1 x),{\"specversion\":\"1.0\",\"id\":\"pe2\",\"source\":\"e2e\",\"type\":\"x\",\"myext\":\"\u009f\"}]}")
[ "$s" = 200 ] && grep -q '"failed_entry_count":1' "$WORK/answer" && grep -q "attribute 'myext'.*control character" "$WORK/answer" \
    && pass "put-events: an entry with U+009F in an extension is refused naming it: $(cat "$WORK/answer")" \
    || fail "put-events control character: $s $(cat "$WORK/answer")"
s=$(post /v1/buses/main/put-events application/json "{\"entries\":[$(ev d1 x)],\"entries\":[$(ev d2 x)]}")
expect_status 400 "put-events: \"entries\" twice" "$s"
grep -q '"field":"entries"' "$WORK/answer" && grep -q 'twice' "$WORK/answer" \
    && pass "  which names it: $(cat "$WORK/answer")" || fail "  message: $(cat "$WORK/answer")"

# ---- the drip started at the beginning ---------------------------------------------------------
wait_for 120 test -f "$WORK/drip.default"
grep -q '^closed' "$WORK/drip.default" \
    && pass "with the defaults, a client that sends its headers one byte every 0.2 s is cut: $(cat "$WORK/drip.default")" \
    || fail "with the defaults, a header drip: $(cat "$WORK/drip.default" 2>/dev/null)"

finish
