# syntax=docker/dockerfile:1
# caliper: the calibrated inference server. Multi-stage: build on Debian 12 (bookworm) with the
# pinned Rust toolchain, run on Debian 12 slim as a non-root user with the bundled models/ and
# calib/. ONNX Runtime comes from the official PyPI wheel, fetched by the same script as
# `make build`, and is shipped next to the binary (where caliper looks for it).
#
#   docker build -t caliper .
#   docker run --rm -p 8080:8080 caliper
#
# Checked once on 2026-11-27 (Docker 20.10 from Debian, vfs storage, `--network host` builds):
# the image built (299 MB), was healthy at its first check (10 s), answered predictions for the
# bundled models as uid 10001, and exited 0 on `docker stop` (SIGTERM, drained). Docker Hub was
# unreachable there, so both base images were local stand-ins with the same names (debootstrap
# bookworm plus this VM's TLS-egress CA; that plus the host's Rust 1.95.0 at the official paths).

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# ONNX Runtime library (pip only downloads the wheel; nothing is installed into Python).
COPY scripts/fetch-onnxruntime.sh scripts/
RUN scripts/fetch-onnxruntime.sh

# Dependency layer: build against stub sources, cached until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock rust-toolchain.toml build.rs ./
RUN mkdir -p src/bin \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/caliper-train.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bins \
 && rm -rf src

# The real sources (see .dockerignore); touch so cargo does not reuse the stub artefacts.
COPY . .
RUN touch src/lib.rs src/main.rs src/bin/caliper-train.rs \
 && cargo build --release --locked --bins \
 && mkdir -p models calib \
 && cp -L third_party/onnxruntime/lib/libonnxruntime.so target/release/libonnxruntime.so

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin caliper
WORKDIR /app
COPY --from=build /src/target/release/caliper /src/target/release/caliper-train /src/target/release/libonnxruntime.so /app/
COPY --from=build --chown=caliper:caliper /src/models /app/models
COPY --from=build --chown=caliper:caliper /src/calib /app/calib
# The feedback log (acknowledged labels, fsynced): mount a volume here to keep it across containers.
RUN mkdir -p /app/state && chown caliper:caliper /app/state
VOLUME /app/state
USER caliper
ENV CALIPER_ADDR=0.0.0.0:8080 \
    CALIPER_MODELS=/app/models \
    CALIPER_CALIB=/app/calib \
    CALIPER_STATE_DIR=/app/state \
    CALIPER_LOG_JSON=true
EXPOSE 8080
# Ready = every model loaded and warmed up (GET /v2/health/ready answers 503 before).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/v2/health/ready >/dev/null || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/caliper"]
CMD ["serve"]
