# caliper: the two commands a newcomer needs are `make run` and `make test`.
# Everything they need (the ONNX Runtime library, the datasets the tests use) is fetched on demand.
CARGO ?= cargo
ADDR ?= 127.0.0.1:8080
ORT_LIB := third_party/onnxruntime/lib/libonnxruntime.so

.PHONY: build run test lint fmt fetch fetch-data fetch-test-models deps clean check-models

$(ORT_LIB):
	scripts/fetch-onnxruntime.sh

fetch: $(ORT_LIB)

fetch-data:
	scripts/fetch-data.sh

## fetch-test-models: a third-party ImageNet classifier, its labels and real photos (tests/own_model.rs)
fetch-test-models:
	scripts/fetch-test-models.sh

## deps: Debian packages the integration tests use (a real Prometheus server)
deps:
	scripts/install-test-deps.sh

## build: fetch what is missing, build the release binaries into target/release/
build: fetch
	$(CARGO) build --release --locked --bins

## run: build, then serve the bundled models on 127.0.0.1:8080
run: build
	target/release/caliper serve --addr $(ADDR) --models models --calib calib

## lint: formatting and clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

## test: fetch, build, lint and run every test
test: deps fetch fetch-data fetch-test-models build lint
	$(CARGO) test --locked --all-targets

## check-models: the shipped models reproduce docs/results/shipped-models.json (README's table)
check-models: fetch fetch-data build
	$(CARGO) test --locked --release --test shipped_models

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
