#!/usr/bin/env bash
# System packages the project needs: Java 17+ and Maven (the Kafka broker), Python 3.11+ with
# venv, Chromium and Prometheus (for the tests). Installs only what is missing (Debian, as
# root); quick when everything is there.
set -euo pipefail
missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# Browser tests of the Licences page drive Debian's Chromium; dashboard tests scrape with
# Debian's Prometheus (and check rules with its promtool).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
# The client tests produce with kcat (librdkafka's CLI) as producers do.
command -v kcat >/dev/null 2>&1 || command -v kafkacat >/dev/null 2>&1 || missing+=(kcat)
if ((${#missing[@]})); then
  echo "installing ${missing[*]} ..." >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "Python 3.11+ is needed, found $(python3 --version)" >&2
  exit 1
}
