# caliper: the two commands a newcomer needs are `make run` and `make test`.
# Everything they need (the ONNX Runtime library, the datasets the tests use) is fetched on demand.
CARGO ?= cargo
ADDR ?= 127.0.0.1:8080
ORT_LIB := third_party/onnxruntime/lib/libonnxruntime.so
# CUDA=1: fetch the GPU build of ONNX Runtime with the CUDA 13 / cuDNN 9 libraries (about 1.4 GB
# of wheels, downloaded once into third_party/.cache/) and bake its path into the binaries
# (build.rs reads CALIPER_CUDA). Without it everything is the CPU build, as before.
CUDA ?=
export CALIPER_CUDA := $(if $(filter 1,$(CUDA)),1,0)

.PHONY: build run test lint fmt fetch fetch-cuda fetch-data fetch-test-models deps bench-deps bench bench-train bench-calibration clean check-models

# Where scripts/fetch-data.sh finds CIFAR-10 and PneumoniaMNIST (docs/DATA.md): a folder holding
# cifar10-jpg.tar.gz and pneumoniamnist.npz (default ../shared/data when it exists), else the
# publishers' downloads; CALIPER_DATA_OFFLINE=1 forbids downloads. Passed through to the scripts
# and the tests whether set in the environment or on the command line (make test CALIPER_DATA_MIRROR=...).
export CALIPER_DATA_MIRROR CALIPER_DATA_OFFLINE

$(ORT_LIB):
	scripts/fetch-onnxruntime.sh

fetch: $(ORT_LIB) $(if $(filter 1,$(CUDA)),fetch-cuda)

## fetch-cuda: onnxruntime-gpu and the NVIDIA libraries it needs (idempotent, sha256-checked)
fetch-cuda:
	scripts/fetch-onnxruntime.sh --cuda

fetch-data:
	scripts/fetch-data.sh

## fetch-test-models: a third-party ImageNet classifier, its labels and real photos (tests/serve/own_model.rs)
fetch-test-models:
	scripts/fetch-test-models.sh

## deps: what the integration tests use (a real Prometheus server, headless Chromium + chromedriver)
deps:
	scripts/install-test-deps.sh

## build: fetch what is missing, build the release binaries into target/release/ (CUDA=1: GPU build)
build: fetch
	$(CARGO) build --release --locked --bins

## run: build, then serve the bundled models on 127.0.0.1:8080
run: build
	target/release/caliper serve --addr $(ADDR) --models models --calib calib

## lint: formatting and clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

## bench-deps: Debian packages the benchmarks use (wrk, curl, python3-venv, time)
bench-deps:
	scripts/install-bench-deps.sh

## bench: the serving benchmark, then a bounded soak under hostile traffic (DURATION of the soak:
## SOAK_DURATION, default 180 s); each prints one JSON object as its last stdout line (docs/BENCHMARKS.md)
bench: bench-deps build
	scripts/bench-serve.sh
	DURATION=$(or $(SOAK_DURATION),180) scripts/soak.sh

## bench-train: caliper-train against PyTorch on the CPU (installs torch into .venv-bench)
bench-train: bench-deps fetch
	scripts/bench-train.sh

## bench-calibration: calibrator fits and metrics against netcal and NumPy/SciPy
bench-calibration: bench-deps fetch
	scripts/bench-calibration.sh

## test: fetch, build, lint and run every test
test: deps fetch fetch-data fetch-test-models build lint
	$(CARGO) test --locked --all-targets

## check-models: the shipped models reproduce docs/results/shipped-models.json (README's table)
check-models: fetch fetch-data build
	$(CARGO) test --locked --release --test serve shipped_models::

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
