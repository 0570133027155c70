#!/bin/sh
# `make run`: shows the example ruleset at work.  The daemon (ebd) that takes events over HTTP
# is not part of this version yet; until it is, this runs the same rules offline with `ebc test`.
BUILD=${1:-build}
EBC="$BUILD/bin/ebc"
HERE=$(dirname "$0")

if [ -x "$BUILD/bin/ebd" ]; then
    exec "$BUILD/bin/ebd" --rules "$HERE/orders.ebr" --data "$BUILD/run-data" --listen 127.0.0.1:8088
fi

echo "ebr: the daemon (ebd) is not in this version yet; showing the example rules offline."
echo
echo "\$ $EBC check $HERE/orders.ebr"
"$EBC" check "$HERE/orders.ebr" || exit 1
echo
echo "\$ $EBC test $HERE/orders.ebr $HERE/events.jsonl"
"$EBC" test "$HERE/orders.ebr" "$HERE/events.jsonl"
echo
echo "Each line is one event of $HERE/events.jsonl and the rules it matched ('-': none);"
echo "the last line shows how an invalid event is reported.  Edit the events or the rules and"
echo "run 'make run' again, or compile them: $EBC compile $HERE/orders.ebr -o orders.ebc"
exit 0
