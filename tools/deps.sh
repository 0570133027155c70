#!/bin/sh
# Installs the Debian packages ebr builds and tests with, but only those that are missing.
# Non-interactive; run as root (or with sudo available). Prints nothing when all is present.
# `deps.sh bench` adds what the benchmarks need, `deps.sh fuzz` what the fuzz targets need.
set -eu

PKGS="cmake make gcc pkg-config re2c lemon libcjson-dev libcriterion-dev \
      libcurl4-openssl-dev libmicrohttpd-dev libpcre2-dev libssl-dev libnats-dev nats-server curl \
      libmosquitto-dev mosquitto tzdata \
      openssl prometheus jq \
      libjs-chart.js chromium chromium-driver python3-selenium awscli python3-boto3"
# (libmosquitto-dev, mosquitto: MQTT sources and targets and their tests; tzdata: schedules'
# time zones; libpcre2-dev: the JSON Schema validator's patterns; libssl-dev: libcrypto's HMAC-SHA256 for
# AWS Signature Version 4 (runtime/aws/sigv4.c); prometheus, jq: promtool and jq for the event
# center's tests; libjs-chart.js: Chart.js, embedded into ebd's console; chromium, its driver and
# selenium: the console's test; awscli and python3-boto3: real AWS clients for the Amazon
# EventBridge compatibility test, tests/e2e/aws.sh)
case "${1:-}" in
    bench) PKGS="$PKGS gnuplot-nox python3" ;;    # charts; the scaling workload's generator
    fuzz)  PKGS="$PKGS clang libclang-rt-dev" ;;  # libFuzzer comes with clang's runtime
esac

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# The end-to-end tests run the cloudevents npm package: node and npm, from Debian unless the
# machine has them already (from elsewhere: installing Debian's npm over them would conflict).
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0

echo "deps: installing$missing"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "deps: need root (or sudo) to install:$missing" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet: update once if the first attempt fails.
if ! $SUDO apt-get install -y -q --no-install-recommends $missing >/tmp/ebr-deps.log 2>&1; then
    $SUDO apt-get update -q >>/tmp/ebr-deps.log 2>&1
    $SUDO apt-get install -y -q --no-install-recommends $missing >>/tmp/ebr-deps.log 2>&1 || {
        echo "deps: apt-get failed; see /tmp/ebr-deps.log" >&2; tail -20 /tmp/ebr-deps.log >&2; exit 1; }
fi
