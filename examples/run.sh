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
echo "Each numbered line is one event of $HERE/events.jsonl and the rules it matched ('-': none);"
echo "the indented lines under it are the payloads their targets get, made by each rule's"
echo "transform (the whole event by default; docs/transforms.md).  The last line shows how an"
echo "invalid event is reported.  Add --explain to see why a rule did not match.  Edit the events"
echo "or the rules and run 'make run' again, or compile them:"
echo "  $EBC compile $HERE/orders.ebr -o orders.ebc"
exit 0
