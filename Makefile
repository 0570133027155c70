# ebr — the two commands a user needs are `make run` and `make test`; see README.md.
# Every target first installs missing Debian packages (tools/deps.sh), then drives CMake.

BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
MAKEFLAGS  += --no-print-directory
CMAKE_FLAGS ?=

.PHONY: all deps build build-asan test test-release test-asan test-stress run bench bench-deps \
        bench-citylots bench-scaling bench-log bench-ingest fuzz soak clean

all: build

deps:
	@sh tools/deps.sh

$(BUILD)/CMakeCache.txt: | deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DEBR_WERROR=ON $(CMAKE_FLAGS) >/dev/null

$(ASAN_BUILD)/CMakeCache.txt: | deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DEBR_WERROR=ON -DEBR_SANITIZE=ON $(CMAKE_FLAGS) >/dev/null

build: deps $(BUILD)/CMakeCache.txt
	@cmake --build $(BUILD) -j $(JOBS)

build-asan: deps $(ASAN_BUILD)/CMakeCache.txt
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

# Everything in the release build, then the unit and end-to-end tests again under ASan + UBSan
# (labels unit and e2e exactly: the console's test in Chromium, e2e-ui, runs in the release only).
test: test-release test-asan

test-release: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	@echo "conformance (../shared/conformance, details in $(BUILD)/Testing/Temporary/LastTest.log):"
	@grep -E "^(DIVERGE|SKIPMODE)|cases:|^engines" $(BUILD)/Testing/Temporary/LastTest.log | sed 's/^/  /'

test-asan: build-asan
	@cd $(ASAN_BUILD) && ctest --output-on-failure -j $(JOBS) -L "^(unit|e2e)$$"

# The end-to-end tests (ctest -L e2e) 5 times in a row beside two CPU hogs and a disk writer
# (tools/stress.sh): a check that depends on the machine's speed fails here.  Not part of `make test`.
STRESS_RUNS ?= 5
test-stress: build
	@sh tools/stress.sh $(BUILD) $(STRESS_RUNS)

run: build
	@sh examples/run.sh $(BUILD)

# Benchmarks (bench/README.md): not part of `make test`.  Results go to bench/results/, the
# generated rules and events to $(BUILD)/bench/.
SHARED ?= ../shared
BENCH_ARGS = --ebc $(BUILD)/bin/ebc --data $(SHARED)/data --work $(BUILD)/bench --out bench/results
bench: bench-citylots bench-scaling bench-log bench-ingest

bench-deps:
	@sh tools/deps.sh bench

bench-citylots: build bench-deps
	@$(BUILD)/bin/bench_citylots $(BENCH_ARGS) $(CITYLOTS_ARGS)

bench-scaling: build bench-deps
	@$(BUILD)/bin/bench_scaling $(BENCH_ARGS) $(SCALING_ARGS)

# The bus log against NATS JetStream (nats-server on 127.0.0.1); LOG_ARGS="--scale 20" for a
# quick look.  Writes about 1 GiB under $(BUILD)/bench and removes it.
bench-log: build bench-deps
	@$(BUILD)/bin/bench_log $(BENCH_ARGS) $(LOG_ARGS)

# ebd: ingest throughput and ingest-to-delivery latency (starts ebd and a receiver on loopback).
bench-ingest: build
	@$(BUILD)/bin/bench_ingest --ebd $(BUILD)/bin/ebd --work $(BUILD)/bench --out bench/results $(INGEST_ARGS)

# Fuzzing (libFuzzer, clang; not part of `make test`): each target runs FUZZ_SECONDS from a
# corpus seeded with the examples and test rulesets, kept in $(FUZZ_BUILD)/corpus between runs.
# A failure leaves its input in $(FUZZ_BUILD)/ as crash-* (rerun: $(FUZZ_BUILD)/bin/fuzz_X FILE).
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 120
fuzz:
	@sh tools/deps.sh fuzz
	@cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DEBR_FUZZ=ON \
	    -DEBR_WERROR=ON $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_event fuzz_rules fuzz_json
	@mkdir -p $(FUZZ_BUILD)/corpus/event $(FUZZ_BUILD)/corpus/rules $(FUZZ_BUILD)/corpus/json
	@awk 'NF { f = sprintf("$(FUZZ_BUILD)/corpus/event/seed%d", NR); printf "%s", $$0 > f; close(f) }' \
	    examples/events.jsonl
	@cp tests/golden/*.ebr examples/*.ebr $(FUZZ_BUILD)/corpus/rules/
	cd $(FUZZ_BUILD) && ./bin/fuzz_event -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 corpus/event
	cd $(FUZZ_BUILD) && ./bin/fuzz_rules -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 corpus/rules
	@cp $(FUZZ_BUILD)/corpus/event/seed* $(FUZZ_BUILD)/corpus/json/ 2>/dev/null || true
	cd $(FUZZ_BUILD) && ./bin/fuzz_json -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 corpus/json

# The bus log's crash test at length (not part of `make test`, which runs 20 rounds): a writer
# killed with SIGKILL mid-append SOAK_ROUNDS times, every acknowledged record checked after each.
SOAK_ROUNDS ?= 500
soak: build
	@out=$$(EBR_CRASH_ROUNDS=$(SOAK_ROUNDS) $(BUILD)/bin/unit_tests --filter 'log_crash/*' --verbose 2>&1); \
	    st=$$?; echo "$$out" | grep -E "rounds,|Assertion|round [0-9]|Synthesis"; exit $$st

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
