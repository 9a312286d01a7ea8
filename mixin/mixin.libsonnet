// The polarity-exporter monitoring mixin: grafanaDashboards, prometheusAlerts and
// prometheusRules, with `_config` (config.libsonnet) for the job selector and the objectives.
//
//   local polarity = (import 'polarity-exporter-mixin/mixin.libsonnet') + {
//     _config+:: { exporterSelector: 'job="polarity-exporter"' },
//   };
(import 'config.libsonnet') +
(import 'alerts.libsonnet') +
(import 'dashboards.libsonnet')
