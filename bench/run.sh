#!/usr/bin/env bash
# End-to-end performance: ecom-pulse against the count-only librdkafka consumer (its floor)
# and a Python consumer (its hand-written alternative), on Tansu and on librdkafka's mock
# cluster; then scrape latency, restore time and memory. Prints a table with the ratios.
# Needs what scripts/test installs (tansu, python3 with confluent-kafka) plus prometheus_client.
#   bash bench/run.sh [--tansu-events N] [--mock-events N] [--keys K] [--skip tansu|mock|scrapes]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
python3 -c 'import confluent_kafka, prometheus_client' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check confluent-kafka prometheus-client
cargo build --release --locked --bin ecom-pulse --example bench_fill --example count_consumer --example mock_broker
exec python3 bench/run.py "$@"
