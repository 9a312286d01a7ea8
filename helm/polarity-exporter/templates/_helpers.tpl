{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "polarity-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name, as prometheus-community charts build it. */}}
{{- define "polarity-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "polarity-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "polarity-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "polarity-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "polarity-exporter.labels" -}}
helm.sh/chart: {{ include "polarity-exporter.chart" . }}
{{ include "polarity-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: metrics
app.kubernetes.io/part-of: {{ include "polarity-exporter.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- /* The ServiceMonitor/PodMonitor spec fields passed through as given (prometheus-community
       chart convention); each only when set, so older prometheus-operators are not sent fields
       they do not know. */}}
{{- define "polarity-exporter.monitorSpecFields" -}}
{{- with .scrapeProtocols }}
scrapeProtocols:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .fallbackScrapeProtocol }}
fallbackScrapeProtocol: {{ . }}
{{- end }}
{{- if .sampleLimit }}
sampleLimit: {{ .sampleLimit }}
{{- end }}
{{- with .scrapeClass }}
scrapeClass: {{ . }}
{{- end }}
{{- end }}

{{- define "polarity-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "polarity-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "polarity-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The chart creates a Secret only when no existing one is named and a credential is given. */}}
{{- define "polarity-exporter.createSecret" -}}
{{- $a := .Values.auth }}
{{- if and (not $a.existingSecret) (or $a.username $a.password $a.apiKey) }}true{{ end }}
{{- end }}

{{- define "polarity-exporter.secretName" -}}
{{- default (include "polarity-exporter.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{/* True when the pod gets credentials at all (an existing Secret or a chart-created one). */}}
{{- define "polarity-exporter.hasCredentials" -}}
{{- if or .Values.auth.existingSecret (include "polarity-exporter.createSecret" .) }}true{{ end }}
{{- end }}

{{/* --- the exporter's own endpoint (--web.config.file) --- */}}

{{/* True when the exporter gets a web config at all (inline or an existing Secret). */}}
{{- define "polarity-exporter.webConfigEnabled" -}}
{{- $w := .Values.webConfig }}
{{- if and $w.config $w.existingSecret }}
{{- fail "webConfig: set either config or existingSecret, not both" }}
{{- end }}
{{- if or $w.config $w.existingSecret }}true{{ end }}
{{- end }}

{{- define "polarity-exporter.webConfigSecretName" -}}
{{- default (printf "%s-web-config" (include "polarity-exporter.fullname" .)) .Values.webConfig.existingSecret }}
{{- end }}

{{/* True when the exporter serves HTTPS: seen in the inline config, declared for an existing one. */}}
{{- define "polarity-exporter.webTLS" -}}
{{- $w := .Values.webConfig }}
{{- if $w.existingSecret }}
{{- if $w.existingSecretServesTLS }}true{{ end }}
{{- else if and $w.config (get $w.config "tls_server_config") }}true{{ end }}
{{- end }}

{{/* True when the inline web config makes clients present a certificate, which kubelet cannot:
     the toolkit defaults client_auth_type to RequireAndVerifyClientCert when client_ca_file is
     set. VerifyClientCertIfGiven still lets kubelet in. */}}
{{- define "polarity-exporter.webClientCertRequired" -}}
{{- $tls := dict }}
{{- if .Values.webConfig.config }}
{{- $tls = default (dict) (get .Values.webConfig.config "tls_server_config") }}
{{- end }}
{{- $type := get $tls "client_auth_type" }}
{{- if or (eq $type "RequireAndVerifyClientCert") (and (not $type) (get $tls "client_ca_file")) }}true{{ end }}
{{- end }}

{{/* The scheme a monitor scrapes with: its own setting, else whatever the exporter serves. */}}
{{- define "polarity-exporter.monitorScheme" -}}
{{- $monitor := index . 0 }}
{{- $root := index . 1 }}
{{- if and (eq $monitor.scheme "http") (include "polarity-exporter.webTLS" $root) }}
{{- fail "a monitor's scheme is http but webConfig serves TLS: the exporter answers plain HTTP with 400 (leave scheme empty)" }}
{{- end }}
{{- if $monitor.scheme }}{{ $monitor.scheme }}
{{- else if include "polarity-exporter.webTLS" $root }}https
{{- else }}http
{{- end }}
{{- end }}

{{/* One probe: tcpSocket when kubelet cannot pass the TLS handshake, else httpGet on path. */}}
{{- define "polarity-exporter.probe" -}}
{{- $root := index . 0 }}
{{- $path := index . 1 }}
{{- $timings := index . 2 }}
{{- if include "polarity-exporter.webClientCertRequired" $root }}
tcpSocket:
  port: {{ $root.Values.service.portName }}
{{- else }}
httpGet:
  path: {{ $path }}
  port: {{ $root.Values.service.portName }}
  {{- if include "polarity-exporter.webTLS" $root }}
  scheme: HTTPS
  {{- end }}
{{- end }}
{{- with $timings }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* --- several Polarity servers (targets, --config.file) --- */}}

{{- define "polarity-exporter.targetsConfigMapName" -}}
{{- printf "%s-targets" (include "polarity-exporter.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* Where each target's Secret (and CA) is mounted; the config file names files under it. */}}
{{- define "polarity-exporter.targetDir" -}}
{{- printf "/etc/polarity-exporter/targets/%s" . }}
{{- end }}

{{/* One target's auth with the chart's defaults filled in: type and the Secret's key names. */}}
{{- define "polarity-exporter.targetAuth" -}}
{{- $name := index . 0 }}
{{- $t := index . 1 }}
{{- $auth := default (dict) $t.auth }}
{{- $keys := merge (dict) (default (dict) $auth.secretKeys) (dict "username" "username" "password" "password" "apiKey" "api-key") }}
{{- $_ := required (printf "targets.%s.url is required" $name) $t.url }}
{{- $_ := required (printf "targets.%s.auth.existingSecret is required: credentials come from an existing Secret" $name) $auth.existingSecret }}
{{- $ca := default (dict) (default (dict) $t.tls).ca }}
{{- if and $ca.configMap $ca.secret }}
{{- fail (printf "targets.%s.tls.ca: set either configMap or secret, not both" $name) }}
{{- end }}
{{- toYaml (dict "type" (default "password" $auth.type) "existingSecret" $auth.existingSecret "username" (default "" $auth.username) "keys" $keys "ca" $ca) }}
{{- end }}

{{/* The config file (polarity_exporter/targets.py reads it): paths only, never a secret. */}}
{{- define "polarity-exporter.targetsConfig" -}}
{{- $targets := dict }}
{{- range $name, $t := .Values.targets }}
{{- $auth := include "polarity-exporter.targetAuth" (list $name $t) | fromYaml }}
{{- $dir := include "polarity-exporter.targetDir" $name }}
{{- $target := dict "url" $t.url }}
{{- if eq $auth.type "apiKey" }}
{{- $_ := set $target "api_key_file" (printf "%s/api-key" $dir) }}
{{- else }}
{{- if $auth.username }}
{{- $_ := set $target "username" $auth.username }}
{{- else }}
{{- $_ := set $target "username_file" (printf "%s/username" $dir) }}
{{- end }}
{{- $_ := set $target "password_file" (printf "%s/password" $dir) }}
{{- end }}
{{- if or $auth.ca.configMap $auth.ca.secret }}
{{- $_ := set $target "ca_file" (printf "%s/ca.crt" $dir) }}
{{- end }}
{{- $tls := default (dict) $t.tls }}
{{- if hasKey $tls "insecureSkipVerify" }}
{{- $_ := set $target "insecure_skip_verify" $tls.insecureSkipVerify }}
{{- end }}
{{- range $valuesKey, $fileKey := dict "timeout" "timeout" "pageSize" "page_size" "maxConcurrency" "max_concurrency" }}
{{- if hasKey $t $valuesKey }}
{{- $_ := set $target $fileKey (get $t $valuesKey) }}
{{- end }}
{{- end }}
{{- $_ := set $targets $name $target }}
{{- end }}
{{- toYaml (dict "targets" $targets) }}
{{- end }}

{{/* A monitor's endpoints scraping /probe?target=NAME, one per target, instance=NAME. */}}
{{- define "polarity-exporter.probeEndpoints" -}}
{{- $monitor := index . 0 }}
{{- $root := index . 1 }}
{{- range $name := keys $root.Values.targets | sortAlpha }}
- port: {{ $root.Values.service.portName }}
  path: /probe
  params:
    target:
      - {{ $name | quote }}
  scheme: {{ include "polarity-exporter.monitorScheme" (list $monitor $root) }}
  interval: {{ $monitor.interval }}
  scrapeTimeout: {{ $monitor.scrapeTimeout }}
  {{- with $monitor.tlsConfig }}
  tlsConfig:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $monitor.basicAuth }}
  basicAuth:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  relabelings:
    # The exporter's address would be the instance; the target's name is.
    - targetLabel: instance
      replacement: {{ $name | quote }}
    {{- with $monitor.relabelings }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $monitor.metricRelabelings }}
  metricRelabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
