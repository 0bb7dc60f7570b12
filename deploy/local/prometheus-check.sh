#!/usr/bin/env bash
# Runs a real Prometheus (Debian package) with the repository's scrape config and alert rules
# (deploy/prometheus/prometheus.yml) against a running `paysync up`, posts a few events, and
# queries the processed rate. Start `paysync up` first (another terminal), then:
#   deploy/local/prometheus-check.sh
# Exits non-zero when Prometheus does not return a processed rate within the deadline.
set -euo pipefail
cd "$(dirname "$0")/../.."

PORT=${PAYSYNC_PROMETHEUS_PORT:-9099}
DEADLINE_SECS=${PAYSYNC_PROMETHEUS_DEADLINE_SECS:-90}
dir=$(mktemp -d)
prom=""
trap '[ -n "$prom" ] && { kill "$prom" 2>/dev/null; wait "$prom" 2>/dev/null; }; rm -rf "$dir"' EXIT

command -v prometheus >/dev/null || { echo "prometheus missing: deploy/local/services.sh installs it" >&2; exit 1; }
curl -fsS http://127.0.0.1:8080/readyz >/dev/null || { echo "paysync up is not running (no ready receiver on 127.0.0.1:8080)" >&2; exit 1; }

# Same jobs and rules as deploy/prometheus/prometheus.yml, scraped every second.
sed 's/scrape_interval: 15s/scrape_interval: 1s/; s/evaluation_interval: 15s/evaluation_interval: 1s/' \
  deploy/prometheus/prometheus.yml > "$dir/prometheus.yml"
cp deploy/prometheus/alerts.yml "$dir/"
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
  --web.listen-address="127.0.0.1:$PORT" >"$dir/prometheus.log" 2>&1 &
prom=$!
echo "prometheus: started on 127.0.0.1:$PORT (pid $prom)"

query='sum(rate(paysync_events_processed_total[10s]))'
start=$SECONDS
while :; do
  deploy/local/smoke-load.py --count 20 --threads 2 --prefix "evt_promcheck_${SECONDS}_$RANDOM" >/dev/null
  answer=$(curl -fsS --get "http://127.0.0.1:$PORT/api/v1/query" --data-urlencode "query=$query" || true)
  value=$(printf '%s' "$answer" | python3 -c 'import json,sys
try:
    r = json.load(sys.stdin)["data"]["result"]
    print(r[0]["value"][1] if r else "")
except Exception:
    print("")')
  if [ -n "$value" ] && python3 -c "import sys; sys.exit(0 if float('$value') > 0 else 1)"; then
    echo "prometheus: $query = $value events/s after $((SECONDS - start)) s"
    rules=$(curl -fsS "http://127.0.0.1:$PORT/api/v1/rules" | python3 -c 'import json,sys; print(sum(len(g["rules"]) for g in json.load(sys.stdin)["data"]["groups"]))')
    echo "prometheus: $rules alert rules loaded"
    exit 0
  fi
  if [ $((SECONDS - start)) -ge "$DEADLINE_SECS" ]; then
    echo "prometheus: no processed rate after ${DEADLINE_SECS}s; last answer: $answer" >&2
    tail -5 "$dir/prometheus.log" >&2
    exit 1
  fi
  sleep 1
done
