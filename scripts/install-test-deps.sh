#!/usr/bin/env bash
# Installs what the integration tests need when it is missing:
# - prometheus, a Debian package (the fleet-ECE test scrapes two caliper replicas with a real
#   Prometheus server);
# - onnxruntime, pillow and numpy for python3, from PyPI (tests/serve/own_model.rs checks caliper
#   against the independent pipeline scripts/reference_predict.py);
# - chromium and chromium-driver, Debian packages (tests/serve/dashboard.rs drives the /ui page in
#   a real headless browser over WebDriver).
# - tritonclient[grpc] and grpcio-health-checking, from PyPI (tests/serve/grpc.rs drives the gRPC
#   port with Triton's client and the standard health check).
set -euo pipefail
if ! python3 -c 'import onnxruntime, PIL, numpy' 2>/dev/null; then
  echo "installing onnxruntime, pillow, numpy for $(command -v python3)" >&2
  python3 -m pip install --quiet onnxruntime==1.32.0 pillow==13.0.0 numpy==2.4.6 >&2
fi
if ! python3 -c 'import tritonclient.http' 2>/dev/null; then
  # tests/serve/tritonclient_http.rs drives caliper's KServe V2 endpoint with Triton's own
  # client and its defaults (scripts/tritonclient_infer.py).
  echo "installing tritonclient[http] for $(command -v python3)" >&2
  python3 -m pip install --quiet 'tritonclient[http]==2.73.0' numpy==2.4.6 >&2
fi
if ! python3 -c 'import tritonclient.grpc, grpc_health.v1.health_pb2' 2>/dev/null; then
  echo "installing tritonclient[grpc], grpcio-health-checking for $(command -v python3)" >&2
  python3 -m pip install --quiet 'tritonclient[grpc]==2.73.0' grpcio-health-checking==1.81.1 >&2
fi
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
((${#missing[@]})) || exit 0
if [[ $(id -u) != 0 ]]; then
  echo "error: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
