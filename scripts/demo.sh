#!/usr/bin/env bash
# The demo: a local Kafka broker, a worker and the read model, a generated month of usage for 25 tenants across
# all five services with licence snapshots, the month closed and its invoice printed; then
# everything is stopped again, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
metering=.venv/bin/metering

export METERING_DATA_DIR="${METERING_DATA_DIR:-.metering/demo}"
# The demo closes its month itself; an automatic close of last month would race the events.
export METERING_AUTO_CLOSE_GRACE=off
tenants="${DEMO_TENANTS:-25}"
month=$(.venv/bin/python -c 'import datetime as d; from projections.months import previous_month as p; print(p(d.date.today().strftime("%Y-%m")))')
invoice_month=$(.venv/bin/python -c "from projections.months import next_month; print(next_month('$month'))")

trap '$metering down >/dev/null 2>&1 || true' EXIT
$metering down >/dev/null 2>&1 || true
rm -rf "$METERING_DATA_DIR"

$metering up --detach
$metering generate "$month" --tenants "$tenants" -o "$METERING_DATA_DIR/month.jsonl"
events=$(wc -l < "$METERING_DATA_DIR/month.jsonl")
start=$(date +%s.%N)
$metering send "$METERING_DATA_DIR/month.jsonl"
$metering close "$month"
end=$(date +%s.%N)
.venv/bin/python - "$events" "$start" "$end" <<'PY'
import sys
events, start, end = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"end to end: {events} events sent, counted and invoiced in {end - start:.1f}s "
      f"({events / (end - start):,.0f} events/s)")
PY
$metering invoice "$invoice_month"
$metering audit "$month"
$metering down
