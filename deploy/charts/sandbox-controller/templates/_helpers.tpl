{{/* Chart name, overridable. */}}
{{- define "sandbox-controller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: fullnameOverride, else the release name when it already holds the chart
name, else <release>-<chart>. Names of other objects append to it, so keep it short. */}}
{{- define "sandbox-controller.fullname" -}}
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

{{/* The release namespace wins, as in the original chart; namespace.name is a fallback. */}}
{{- define "sandbox-controller.namespace" -}}
{{- default .Values.namespace.name .Release.Namespace }}
{{- end }}

{{- define "sandbox-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sandbox-controller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sandbox-controller.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "sandbox-controller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "sandbox-controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sandbox-controller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sandbox-controller.webhookService" -}}
{{ include "sandbox-controller.fullname" . }}-webhook
{{- end }}

{{- define "sandbox-controller.certSecret" -}}
{{ default (printf "%s-webhook-certs" (include "sandbox-controller.fullname" .)) .Values.webhookCerts.secretName }}
{{- end }}

{{- define "sandbox-controller.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The webhooks see only the watched namespace when one is set; nothing else on a shared
cluster is held up by this release's webhooks then. */}}
{{- define "sandbox-controller.namespaceSelector" -}}
{{- if .Values.watchNamespace }}
namespaceSelector:
  matchLabels:
    kubernetes.io/metadata.name: {{ .Values.watchNamespace }}
{{- end }}
{{- end }}

{{/* clientConfig of one webhook: the Service; the controller writes caBundle. */}}
{{- define "sandbox-controller.clientConfig" -}}
clientConfig:
  service:
    name: {{ include "sandbox-controller.webhookService" .root }}
    namespace: {{ include "sandbox-controller.namespace" .root }}
    path: {{ .path }}
    port: 443
{{- end }}
