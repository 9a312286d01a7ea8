// prometheusAlerts and prometheusRules, read from the shipped rule files (copied next to this
// file by helm/sync-chart-files.sh, so that a vendored mixin/ is whole), with `_config` applied.
local shipped = {
  alerts: std.parseYaml(importstr 'rules/polarity-alerts.yml'),
  slo: std.parseYaml(importstr 'rules/polarity-slo.yml'),
};

local defaults = (import 'config.libsonnet')._config;

// "99.5" for 0.995: how the descriptions write an objective.
local percent(fraction) = '%g' % (fraction * 100);

{
  local config = $._config,
  local replaceAll(text, pairs) = std.foldl(function(acc, pair) std.strReplace(acc, pair[0], pair[1]), pairs, text),
  local substitutions = [
    [defaults.exporterSelector, config.exporterSelector],
    ['(1 - %g)' % defaults.apiAvailabilityObjective, '(1 - %g)' % config.apiAvailabilityObjective],
    ['(1 - %g)' % defaults.integrationAvailabilityObjective, '(1 - %g)' % config.integrationAvailabilityObjective],
    [percent(defaults.apiAvailabilityObjective) + '% objective', percent(config.apiAvailabilityObjective) + '% objective'],
    [percent(defaults.integrationAvailabilityObjective) + '% objective', percent(config.integrationAvailabilityObjective) + '% objective'],
    [defaults.runbookURLPrefix, config.runbookURLPrefix],
  ],
  local configured(rule) = rule {
    expr: replaceAll(rule.expr, substitutions),
    [if std.objectHas(rule, 'annotations') then 'annotations']: std.mapWithKey(
      function(_, value) replaceAll(value, substitutions), rule.annotations
    ),
  },
  local only(groups, kind) = [
    group { rules: [configured(rule) for rule in group.rules if std.objectHas(rule, kind)] }
    for group in groups
    if std.length([rule for rule in group.rules if std.objectHas(rule, kind)]) > 0
  ],

  prometheusAlerts+:: {
    groups+: only(shipped.alerts.groups, 'alert') + only(shipped.slo.groups, 'alert'),
  },
  prometheusRules+:: {
    groups+: only(shipped.slo.groups, 'record'),
  },
}
