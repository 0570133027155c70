# ebr — the two commands a user needs are `make run` and `make test`; see README.md.
# Every target first installs missing Debian packages (tools/deps.sh), then drives CMake.

BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
MAKEFLAGS  += --no-print-directory
CMAKE_FLAGS ?=

.PHONY: all deps build build-asan test test-release test-asan run bench bench-citylots bench-scaling fuzz clean

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

# Everything in the release build, then the unit tests again under ASan + UBSan.
test: test-release test-asan

test-release: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	@echo "conformance (../shared/conformance, details in $(BUILD)/Testing/Temporary/LastTest.log):"
	@grep -E "^(DIVERGE|SKIPMODE)|cases:|^engines" $(BUILD)/Testing/Temporary/LastTest.log | sed 's/^/  /'

test-asan: build-asan
	@cd $(ASAN_BUILD) && ctest --output-on-failure -j $(JOBS) -L unit

run: build
	@sh examples/run.sh $(BUILD)

# Benchmarks (bench/README.md): not part of `make test`.  Results go to bench/results/, the
# generated rules and events to $(BUILD)/bench/.
SHARED ?= ../shared
BENCH_ARGS = --ebc $(BUILD)/bin/ebc --data $(SHARED)/data --work $(BUILD)/bench --out bench/results
bench: bench-citylots bench-scaling

bench-citylots: build
	@$(BUILD)/bin/bench_citylots $(BENCH_ARGS) $(CITYLOTS_ARGS)

bench-scaling: build
	@$(BUILD)/bin/bench_scaling $(BENCH_ARGS) $(SCALING_ARGS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
