#!/bin/sh
# Copy the repo's alert rules and Grafana dashboards into the chart and the mixin. Helm cannot read files outside
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
# The monitoring mixin reads the same files from its own directory, so that a vendored mixin/
# (jsonnet-bundler copies only that directory) is whole; tests/test_mixin.py checks the copies.
mixin="$repo/mixin"
mkdir -p "$mixin/rules" "$mixin/dashboards"
cp "$repo/prometheus/polarity-alerts.yml" "$repo/prometheus/polarity-slo.yml" "$mixin/rules/"
rm -f "$mixin"/dashboards/*.json
cp "$repo"/grafana/dashboards/*.json "$mixin/dashboards/"
echo "synced $files and $mixin from prometheus/ and grafana/dashboards/"
