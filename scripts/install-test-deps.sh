#!/usr/bin/env bash
# Installs the Debian packages the integration tests need when they are missing:
# prometheus (the fleet-ECE test scrapes two caliper replicas with a real Prometheus server).
set -euo pipefail
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
((${#missing[@]})) || exit 0
if [[ $(id -u) != 0 ]]; then
  echo "error: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
