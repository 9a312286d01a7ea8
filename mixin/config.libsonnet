// What a user of the mixin may set: `(import 'mixin.libsonnet') + { _config+:: { ... } }`.
// The defaults are what prometheus/ and grafana/dashboards/ ship: with them, the mixin's output
// equals those files exactly (tests/test_mixin.py).
{
  _config+:: {
    // Selects polarity-exporter's own scrape job, for PolarityExporterDown.
    exporterSelector: 'job=~".*polarity.*"',
    // The SLO objectives (prometheus/polarity-slo.yml), as fractions.
    apiAvailabilityObjective: 0.995,
    integrationAvailabilityObjective: 0.99,
    // Where each alert's runbook_url points; the alert's name, in lower case, is appended.
    runbookURLPrefix: 'https://github.com/polarity-exporter/polarity-exporter/blob/main/docs/runbook.md#',
  },
}
