#!/bin/sh
# Copy the repo's alert rules and Grafana dashboards into the chart. Helm cannot read files outside
# the chart directory, so the chart keeps verbatim copies; tests/test_helm_chart.py fails when they
# drift from the originals. Run from anywhere: helm/sync-chart-files.sh
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
files="$repo/helm/polarity-exporter/files"
mkdir -p "$files/dashboards"
cp "$repo/prometheus/polarity-alerts.yml" "$files/polarity-alerts.yml"
cp "$repo/prometheus/polarity-slo.yml" "$files/polarity-slo.yml"
rm -f "$files"/dashboards/*.json
cp "$repo"/grafana/dashboards/*.json "$files/dashboards/"
echo "synced $files from prometheus/ and grafana/dashboards/"
