# The two commands a new user needs are `make run` and `make test`; the rest serve development.
.PHONY: run test lint bench reliability broker-up broker-down broker-status fmt

CARGO ?= cargo

## run: the embedded demo (in-process Kafka, helpers, sessionizer, local Openlayer endpoint)
run:
	$(CARGO) run --locked -p sessionizer-demo

## test: start the real test broker if needed, run every test, stop what was started
test:
	scripts/test.sh

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: benchmarks, each reported as a ratio to a baseline measured in the same run;
##   BENCH_SIZE=quick (the default, about 5 minutes) or BENCH_SIZE=full (under 30 minutes)
bench:
	scripts/bench.sh --$(or $(BENCH_SIZE),quick)

## reliability: crash, rebalance, broker restart, Openlayer outage, poison input and SIGTERM
##   scenarios at full size (up to ~20 minutes); RELIABILITY_SIZE=quick runs what make test runs
reliability:
	scripts/reliability.sh $(or $(RELIABILITY_SIZE),full)

broker-up:
	scripts/kafka-broker.sh up

broker-down:
	scripts/kafka-broker.sh down

broker-status:
	scripts/kafka-broker.sh status
