{{- define "sandbox-manager.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: fullnameOverride, else the release name when it holds the chart name, else
<release>-<chart>. Other names append to it, so keep it short. */}}
{{- define "sandbox-manager.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sandbox-manager.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sandbox-manager.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sandbox-manager.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: manager
{{- end }}

{{- define "sandbox-manager.labels" -}}
{{ include "sandbox-manager.commonLabels" . }}
{{ include "sandbox-manager.selectorLabels" . }}
{{- end }}

{{- define "sandbox-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sandbox-manager.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "sandbox-gateway.labels" -}}
{{ include "sandbox-manager.commonLabels" . }}
{{ include "sandbox-gateway.selectorLabels" . }}
{{- end }}

{{/* The label selector the manager finds gateway pods with (`--gateway-selector`). */}}
{{- define "sandbox-gateway.selector" -}}
app.kubernetes.io/instance={{ .Release.Name }},app.kubernetes.io/component=gateway
{{- end }}

{{- define "sandbox-manager.serviceAccountName" -}}
{{- default (include "sandbox-manager.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "sandbox-gateway.serviceAccountName" -}}
{{- default (printf "%s-gateway" (include "sandbox-manager.serviceAccountName" .)) .Values.gateway.serviceAccount.name }}
{{- end }}

{{- define "sandbox-gateway.name" -}}
{{- .Values.ingress.dataplaneService }}
{{- end }}

{{- define "sandbox-manager.adminKeySecret" -}}
{{ include "sandbox-manager.fullname" . }}-admin-key
{{- end }}

{{- define "sandbox-manager.peerTokenSecret" -}}
{{ include "sandbox-manager.fullname" . }}-peer-token
{{- end }}

{{/* controller.logLevel as RUST_LOG: klog-style numbers (the original's) or a filter. */}}
{{- define "sandbox-manager.rustLog" -}}
{{- $l := .Values.controller.logLevel }}
{{- if or (kindIs "int" $l) (kindIs "float64" $l) (kindIs "int64" $l) (regexMatch "^[0-9]+$" (toString $l)) }}
{{- $n := int $l }}
{{- if ge $n 6 }}trace{{ else if ge $n 3 }}debug{{ else }}info{{ end }}
{{- else }}
{{- $l }}
{{- end }}
{{- end }}

{{/* gateway.envoy.logLevel (Envoy's names) as RUST_LOG. */}}
{{- define "sandbox-gateway.rustLog" -}}
{{- $l := lower (toString .Values.gateway.envoy.logLevel) }}
{{- if eq $l "critical" }}error{{ else }}{{ $l }}{{ end }}
{{- end }}

{{/* The DEFAULT-priority threshold (or the first one) of gateway.envoy.circuitBreakers. */}}
{{- define "sandbox-gateway.breaker" -}}
{{- $pick := dict }}
{{- range .Values.gateway.envoy.circuitBreakers.thresholds }}
{{- if and (not $pick) (eq (upper (toString (default "DEFAULT" .priority))) "DEFAULT") }}
{{- $pick = . }}
{{- end }}
{{- end }}
{{- toYaml $pick }}
{{- end }}

{{- define "sandbox-manager.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
