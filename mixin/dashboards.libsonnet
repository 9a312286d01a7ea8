// grafanaDashboards: the shipped dashboards (grafana/generate.py builds them; copied next to
// this file by helm/sync-chart-files.sh).
{
  grafanaDashboards+:: {
    'polarity-overview.json': import 'dashboards/polarity-overview.json',
    'polarity-integration.json': import 'dashboards/polarity-integration.json',
  },
}
