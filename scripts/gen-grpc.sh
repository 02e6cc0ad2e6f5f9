#!/usr/bin/env bash
# Regenerates src/serve/grpc/pb.rs (prost messages + tonic server) from proto/grpc_service.proto.
# Needs only cargo: the proto is compiled by protox, a protobuf compiler written in Rust, in the
# separate package tools/protogen (so caliper's own build never compiles protos or needs protoc).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo run --quiet --release --manifest-path "$root/tools/protogen/Cargo.toml" -- "$root"
rustfmt --edition 2024 "$root/src/serve/grpc/pb.rs"
echo "wrote src/serve/grpc/pb.rs" >&2
