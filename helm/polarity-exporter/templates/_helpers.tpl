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
