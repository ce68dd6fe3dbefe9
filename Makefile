# Tally: the two quick-start commands are `make demo` and `make test`.
SHELL := /bin/bash
SERVICES := scripts/services/services.sh
CARGO ?= cargo
RUSTC ?= rustc
# The Rust release the project builds with, checked by `make toolchain`; rust-toolchain.toml
# says why the check is here and not in that file. Change it with rust-version in Cargo.toml.
RUST_VERSION := 1.95
# Integration tests start real node processes; two cores run two test threads well.
TEST_THREADS ?= 2

# Prometheus's own exposition parser, for node/tests/metrics.rs (see ops/metricscheck).
METRICSCHECK := .services/bin/metricscheck

# promtool, Prometheus's own rule checker and rule unit tester, for `make ops-check`.
# Prometheus 3.16.0 is Go module version v0.316.0; a folder per version, so a change builds it.
PROMTOOL_VERSION := v0.316.0
PROMTOOL := .services/promtool-$(PROMTOOL_VERSION)/promtool

# cargo-audit, built once into a folder of its own version under the git-ignored .services.
CARGO_AUDIT_VERSION := 0.22.2
CARGO_AUDIT := .services/cargo-audit-$(CARGO_AUDIT_VERSION)/bin/cargo-audit
# RustSec advisories for the crates in Cargo.lock, a subset made by scripts/vendor-advisories.sh
# (README, Development, says where it comes from and why it is not in this repository).
ADVISORY_DB ?= ../shared/advisory-db

HELM := .services/bin/helm
HELM_VERSION ?= v3.22.0
# Checks helm's renderings against the Kubernetes API types (see ops/k8scheck).
K8SCHECK := .services/bin/k8scheck
# The image `make image` builds; the chart's default tag is its appVersion.
IMAGE ?= tally-node:$(shell sed -n 's/^appVersion: "\(.*\)"$$/\1/p' helm/tally/Chart.yaml)

.PHONY: help helm-lint services services-down services-status build build-release demo demo-down \
        test check fmt clippy unit-tests browser-test integration-tests outage-tests bench soak schema toolchain doc \
        metricscheck audit ops-check

help:
	@echo "make demo            services up, build, start a node, send events, print the URLs"
	@echo "make demo-down       stop the demo node(s)"
	@echo "make test            services up, rustfmt check, clippy and rustdoc -D warnings, all tests"
	@echo "make services        start Kafka and Cassandra (fetched from Maven Central, cached)"
	@echo "make services-down   stop the services this project started"
	@echo "make services-status report each service"
	@echo "make bench           run the benchmark suite (see README, Performance)"
	@echo "make soak            3 nodes under load and faults for SOAK_SECS (default 1800), verified"
	@echo "make helm-lint       lint, render and check the Helm chart (builds helm and k8scheck with Go once)"
	@echo "make image           build the tally-node container image (needs docker or podman)"
	@echo "make ops-check       check the alert rules and run their tests; check the Grafana dashboard"
	@echo "make browser-test    the web dashboard in headless Chromium against a 3-node cluster"

services:
	@$(SERVICES) up

services-down:
	@$(SERVICES) down

services-status:
	@$(SERVICES) status

# A second Cassandra on 127.0.0.1:9142, TLS only, PasswordAuthenticator with role tally
# (docs/SERVICES.md, "The secure listeners"); `make services-down` stops it too.
.PHONY: services-secure
services-secure:
	@$(SERVICES) up-secure

# Fails unless the active rustc (the one rust-toolchain.toml selects) is RUST_VERSION.x.
toolchain:
	@v=$$($(RUSTC) --version) || { echo "toolchain: rustc does not run (rustup with a stable toolchain is needed)" >&2; exit 1; }; \
	case "$$v" in \
	  "rustc $(RUST_VERSION)."*) ;; \
	  *) echo "toolchain: Tally builds with Rust $(RUST_VERSION).x (RUST_VERSION in the Makefile), but rustc here is: $$v" >&2; exit 1 ;; \
	esac

build: toolchain
	$(CARGO) build --workspace

build-release: toolchain
	$(CARGO) build --release --workspace

demo: services build-release
	@scripts/demo.sh up

demo-down:
	@scripts/demo.sh down

fmt: toolchain
	$(CARGO) fmt --all -- --check

clippy: toolchain
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The API docs build without a warning (broken or private intra-doc links fail here).
doc: toolchain
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

# Unit tests and integration tests against the real services, in parallel.
unit-tests: toolchain $(METRICSCHECK)
	$(CARGO) test --workspace -- --test-threads=$(TEST_THREADS)

# The dashboard in headless Chromium against a 3-node cluster of the debug binary, with
# events sent through ingest and a node killed (tests/browser/run.sh says what it checks).
# The binary is built as `unit-tests` builds it, so after them this builds nothing: `cargo
# build -p tally-node` would resolve other features for shared crates (no dev-dependencies,
# no loadtest) and compile a second set of them. Chromium (Debian's package) and
# puppeteer-core (npm ci, tests/browser/package-lock.json) are installed when missing.
browser-test: toolchain
	$(CARGO) test --workspace --no-run
	tests/browser/run.sh

# The exactly-once tests again, every node against the secure services: Kafka over
# SASL_SSL (SCRAM-SHA-512), Cassandra with a password over TLS, the API over mutual TLS.
secure-tests: toolchain
	TALLY_TEST_SECURE=1 $(CARGO) test -p tally-node --test exactly_once -- --test-threads=$(TEST_THREADS)

# Tests that stop a shared service run alone, after everything else.
outage-tests: toolchain
	$(CARGO) test -p tally-node --test service_outage -- --ignored --test-threads=1

# The dependency audit is not part of it: no advisory database is reachable from here (see
# README, "Dependency audit"); `make audit` runs it where one is.
test: services services-secure fmt clippy doc helm-lint ops-check fuzz-quick unit-tests browser-test secure-tests outage-tests

# The fuzz targets: ignored tests named fuzz_* (node/src/fuzz.rs says which and what they
# check), each run for TALLY_FUZZ_CASES cases or TALLY_FUZZ_SECS seconds, whichever ends
# first. The quick run takes their defaults (10,000 cases, at most 20 s each): 13 s in all
# on this 2-core machine, busy with other builds. `--workspace` shares the unit tests' build.
.PHONY: fuzz-quick fuzz secure-tests
FUZZ_CASES ?= 1000000
FUZZ_SECS ?= 1200
fuzz-quick: toolchain
	$(CARGO) test --workspace --lib -- --ignored fuzz_ --test-threads=$(TEST_THREADS) --nocapture

# Long: FUZZ_CASES cases (default 1,000,000) or FUZZ_SECS seconds (default 20 minutes) per
# target, the targets two at a time.
fuzz: toolchain
	TALLY_FUZZ_CASES=$(FUZZ_CASES) TALLY_FUZZ_SECS=$(FUZZ_SECS) \
	  $(CARGO) test --workspace --lib -- --ignored fuzz_ --test-threads=$(TEST_THREADS) --nocapture

schema: toolchain
	$(CARGO) run -q -p tally-node -- schema > docs/event.schema.json

bench: services build-release
	@scripts/bench.sh

# A 3-node cluster under load with faults (kill -9, SIGSTOP, SIGTERM, Kafka and Cassandra
# restarts), verified exactly at the end; SOAK_SECS (default 1800) sets its length.
soak: services build-release
	@scripts/soak.sh

# Built with Go from ops/metricscheck (its go.sum pins prometheus/common), again when a
# source file changes; .services is git-ignored.
$(METRICSCHECK): $(wildcard ops/metricscheck/*.go) ops/metricscheck/go.mod ops/metricscheck/go.sum
	@command -v go > /dev/null || { echo "metricscheck: go is needed to build it" >&2; exit 1; }
	cd ops/metricscheck && go build -o $(abspath $(METRICSCHECK)) .

metricscheck: $(METRICSCHECK)

# From the Go module proxy, once per version; the service-discovery plugins, which rule
# checks never use, are left out (-tags remove_all_sd: half the build). With empty Go caches
# on this 2-core machine, busy with other work: 3.5 minutes (4.1 CPU-minutes) with the tag,
# 8.8 minutes (8.9 CPU-minutes) without it.
$(PROMTOOL):
	@command -v go > /dev/null || { echo "ops-check: go is needed to build promtool" >&2; exit 1; }
	GOBIN=$(abspath $(dir $(PROMTOOL))) GOFLAGS=-mod=mod go install -tags remove_all_sd \
	  github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

# The alert rules load and their unit tests pass; every runbook they name is a heading of
# docs/OPERATIONS.md; the dashboard imports and its queries parse. (node/tests/metrics.rs
# checks the metric names of both against a running node.)
ops-check: $(PROMTOOL)
	$(PROMTOOL) check rules ops/prometheus/alerts.yml
	$(PROMTOOL) test rules ops/prometheus/alerts_test.yml
	@for a in $$(grep -o 'docs/OPERATIONS.md#[a-z0-9-]*' ops/prometheus/alerts.yml | sed 's/.*#//' | sort -u); do \
	  grep -qix "#\+ $$a" docs/OPERATIONS.md || \
	  { echo "ops-check: ops/prometheus/alerts.yml names the runbook #$$a, no heading of docs/OPERATIONS.md" >&2; exit 1; }; \
	done
	python3 ops/grafana/check_dashboard.py ops/grafana/tally.json $(PROMTOOL)

# Built from source by cargo (the registry has no binaries), once per clone: 8.5 CPU-minutes,
# which took 39 minutes on a 2-core machine busy with other builds.
$(CARGO_AUDIT):
	$(CARGO) install --locked --no-default-features --root $(abspath .services/cargo-audit-$(CARGO_AUDIT_VERSION)) \
	  cargo-audit@$(CARGO_AUDIT_VERSION)

# Offline against the vendored advisories; fails on a vulnerability, and on a Cargo.lock
# with a crate the vendored copy was not made for (its advisories would be missing).
audit: toolchain $(CARGO_AUDIT)
	@test -d "$(ADVISORY_DB)/crates" || { echo "audit: no advisory database at $(ADVISORY_DB) (set ADVISORY_DB;" \
	  "scripts/vendor-advisories.sh makes one from a snapshot of RustSec's advisory-db)" >&2; exit 1; }
	@new=$$(LC_ALL=C comm -23 <(sed -n 's/^name = "\(.*\)"$$/\1/p' Cargo.lock | LC_ALL=C sort -u) \
	  "$(ADVISORY_DB)/checked-crates.txt"); \
	[ -z "$$new" ] || { echo "audit: $(ADVISORY_DB) was made before Cargo.lock had these crates:" $$new \
	  "- make it again with scripts/vendor-advisories.sh" >&2; exit 1; }
	$(CARGO_AUDIT) audit --no-fetch --db "$(ADVISORY_DB)" --file Cargo.lock

# helm from the Go module proxy, built once into .services/bin: the first time 3 min 55 s
# (2.5 CPU-minutes) on a 2-core machine busy with other builds.
$(HELM):
	@command -v go > /dev/null || { echo "helm-lint: go is needed to build helm" >&2; exit 1; }
	GOBIN=$(abspath .services/bin) GOFLAGS=-mod=mod go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

# Built with Go from ops/k8scheck (its go.sum pins k8s.io/api and the Prometheus Operator's
# types), its tests first, again when a source file changes: the first time, with an empty
# Go build cache, 1 min 45 s (1.5 CPU-minutes) on the same machine.
$(K8SCHECK): $(wildcard ops/k8scheck/*.go) ops/k8scheck/go.mod ops/k8scheck/go.sum
	@command -v go > /dev/null || { echo "helm-lint: go is needed to build k8scheck" >&2; exit 1; }
	cd ops/k8scheck && go test . && go build -o $(abspath $(K8SCHECK)) .

# scripts/helm-lint.sh says what is checked.
helm-lint: $(HELM) $(K8SCHECK)
	@HELM=$(HELM) K8SCHECK=$(K8SCHECK) scripts/helm-lint.sh

# The Dockerfile's image, tagged IMAGE, built by docker or podman with the Rust release
# the project pins. Where no engine answers it says so and fails (scripts/image.sh).
.PHONY: image
image:
	@RUST_VERSION=$(RUST_VERSION) scripts/image.sh $(IMAGE)
