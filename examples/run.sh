#!/bin/sh
# `make run`: starts the daemon on the example ruleset (examples/orders.ebr) on 127.0.0.1, with
# its data (the bus log, cursors, the file targets' output) under $BUILD/run-data, and says how
# to send it an event and where the delivered payloads appear.  Ctrl-C stops it.
BUILD=${1:-build}
HERE=$(dirname "$0")
PORT=${EBR_PORT:-8088}
DATA="$BUILD/run-data"
mkdir -p "$DATA"

"$BUILD/bin/ebc" check "$HERE/orders.ebr" || exit 1
EVENT=$(head -n 1 "$HERE/events.jsonl")
cat <<MSG

ebd is starting on http://127.0.0.1:$PORT with $HERE/orders.ebr (bus 'orders').

Send it an event (CloudEvents structured mode), from another terminal:

  curl -i -X POST http://127.0.0.1:$PORT/v1/buses/orders/events \\
       -H 'Content-Type: application/cloudevents+json' \\
       -d '$EVENT'

or the five example events at once, as a batch:

  (printf '['; head -n 5 $HERE/events.jsonl | paste -sd,; printf ']') | \\
  curl -i -X POST http://127.0.0.1:$PORT/v1/buses/orders/events \\
       -H 'Content-Type: application/cloudevents-batch+json' --data-binary @-

The payloads the rules deliver appear in:

  $DATA/out/billing.jsonl   $DATA/out/audit.jsonl   $DATA/out/ops_chat.jsonl

  (tail -f $DATA/out/*.jsonl to watch; ebc log dump $DATA/buses/orders shows what was stored)

The event center: the console at http://127.0.0.1:$PORT/ui/ (buses, rules, events and their
traces, targets, replays, schemas); what happened to event e1:

  curl -s http://127.0.0.1:$PORT/v1/buses/orders/events/e1/trace
  $BUILD/bin/ebc trace --data $DATA orders e1

and Prometheus metrics at http://127.0.0.1:$PORT/metrics.

Ctrl-C stops the daemon (SIGHUP reloads the rules).

MSG
exec "$BUILD/bin/ebd" --rules "$HERE/orders.ebr" --data "$DATA" --listen "127.0.0.1:$PORT"
