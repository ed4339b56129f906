# The two entry points the README opens with: `make run` and `make test`.
# Everything is installed into ./.venv from the project's own files, so a clean clone needs only
# Python 3.11+ (with venv) and a Rust toolchain.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: run test install chromium lint rust-test py-test container-test bench bench-quick bench-micro bench-install fuzz fuzz-seeds mutation clean

$(BIN)/python:
	@# psycopg's C build needs pg_config and the libpq headers
	@command -v pg_config >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq libpq-dev >/dev/null; } || \
		{ echo "pg_config not found: install the libpq development package (Debian: libpq-dev)"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: install the venv module (Debian: apt-get install python3-venv)"; exit 1; }
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml Cargo.toml nexus_core/Cargo.toml $(shell find nexus_core/src -name '*.rs' 2>/dev/null)
	@echo "installing into $(VENV) and building the Rust core with cargo (quiet; a few minutes the first time)"
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

## The browser tests (tests/browser) drive Debian's chromium through Playwright: its own browser
## download is not used. Installed from Debian when run as root, else a message saying how.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || [ -n "$$NEXUS_CHROMIUM" ] || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		{ echo "chromium not found: the browser tests need it (Debian: apt-get install chromium; or set NEXUS_CHROMIUM)"; exit 1; }

install: $(STAMP)

## Install and start the gateway (proxy on :3000, dashboard on :3001).
run: install
	$(BIN)/nexus serve

## Install and run the whole test suite: lints (ruff, mypy, cargo fmt, clippy), Rust tests, Python tests.
test: install lint rust-test py-test

lint: install
	$(BIN)/ruff check nexus tests bench mutation
	$(BIN)/ruff format --check nexus tests bench mutation
	$(BIN)/mypy
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings
	PYO3_PYTHON=$(abspath $(BIN))/python cargo clippy --all-targets --locked --features python -- -D warnings

rust-test:
	cargo test --locked

py-test: install chromium
	$(BIN)/python -m pytest

## Build the images and run docker/compose.yml with podman, traffic and storage checked (not part of
## `make test`: the first build takes minutes). Podman and debootstrap come from Debian when run as root.
CONTAINER_PACKAGES := podman buildah runc uidmap slirp4netns fuse-overlayfs debootstrap
container-test: install
	@command -v podman >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CONTAINER_PACKAGES) >/dev/null; } || \
		{ echo "podman not found: install it (Debian: apt-get install $(CONTAINER_PACKAGES))"; exit 1; }
	$(PIP) install --quiet -e '.[test,container]'
	$(BIN)/python -m pytest -m container -s tests/container

## The overhead harness (full run, ~25 min; needs wrk, installed from Debian when run as root, and cargo).
bench: bench-install
	$(BIN)/python -m bench.overhead

## The same phases, short (~6 min), for development.
bench-quick: bench-install
	$(BIN)/python -m bench.overhead --quick

## Micro-benchmarks: the Rust core against its Python reference (pytest-benchmark).
bench-micro: bench-install
	$(BIN)/python -m pytest bench/micro

## Fuzz each target in nexus_core/fuzz for FUZZ_SECONDS (not part of `make test`). cargo-fuzz is
## installed from crates.io when missing; RUSTC_BOOTSTRAP=1 lets the stable toolchain build libFuzzer.
## Each run starts from the committed seeds (fuzz/seeds/<target>, which `cargo test` runs through the
## same checks on every `make test`) and writes what it finds to fuzz/corpus/<target> (not committed);
## `make fuzz-seeds` folds that back into the seeds, minimised. FUZZ_TARGETS picks some of them.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= safe_json:json safe_text:json copy_rows:copy sse_observer:sse analyze_request:request
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	cd nexus_core && for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$${t%%:*} && \
		RUSTC_BOOTSTRAP=1 cargo fuzz run $${t%%:*} fuzz/corpus/$${t%%:*} fuzz/seeds/$${t%%:*} -- \
			-max_total_time=$(FUZZ_SECONDS) -dict=fuzz/dicts/$${t##*:}.dict || exit 1; \
	done

fuzz-seeds:
	@command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	cd nexus_core && for t in $(FUZZ_TARGETS); do \
		t=$${t%%:*}; rm -rf fuzz/seeds.new && mkdir -p fuzz/seeds.new fuzz/seeds/$$t fuzz/corpus/$$t && \
		RUSTC_BOOTSTRAP=1 cargo fuzz run $$t fuzz/seeds.new fuzz/seeds/$$t fuzz/corpus/$$t -- -set_cover_merge=1 || exit 1; \
		find fuzz/seeds.new -type f -size +8k -delete; \
		rm -rf fuzz/seeds/$$t && mv fuzz/seeds.new fuzz/seeds/$$t; \
	done

## Mutation testing (not part of `make test`; about 30 min on 2 cores): mutmut over the Python areas of
## mutation/areas.toml and cargo-mutants over nexus_core. The last line is the kill rate per area;
## docs/testing.md records it. MUTATION_ARGS="--area proxy --unit-only" for a quick look at one area.
mutation: install
	$(PIP) install --quiet -e '.[test,mutation]'
	$(BIN)/python -m mutation.run $(MUTATION_ARGS)

bench-install: install
	$(PIP) install --quiet -e '.[test,bench]'

clean:
	rm -rf $(VENV) target
