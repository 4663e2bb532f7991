{{/* The chart name, or nameOverride. Used as app.kubernetes.io/name. */}}
{{- define "shardmetrics.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name if it already contains
the chart name (`helm install shardmetrics ...` gives shardmetrics-scraper, the same names as the
Kustomize base), else <release>-<chart>.
*/}}
{{- define "shardmetrics.fullname" -}}
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

{{- define "shardmetrics.scraper.fullname" -}}
{{ include "shardmetrics.fullname" . }}-scraper
{{- end }}

{{- define "shardmetrics.frontend.fullname" -}}
{{ include "shardmetrics.fullname" . }}-frontend
{{- end }}

{{/*
Labels on every object. The Metrics API is a cluster singleton (one APIService per group and
version), so selectors need not tell releases apart: they use name + component only, exactly
like the Kustomize base.
*/}}
{{- define "shardmetrics.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "shardmetrics.name" . }}
app.kubernetes.io/part-of: shardmetrics
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "scraper"). */}}
{{- define "shardmetrics.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shardmetrics.name" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The container image: repository:tag, or repository@digest when a digest is given. */}}
{{- define "shardmetrics.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* The hardened container securityContext shared by both components. */}}
{{- define "shardmetrics.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65534
runAsGroup: 65534
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The hardened pod securityContext shared by both components. */}}
{{- define "shardmetrics.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65534
runAsGroup: 65534
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Admin-port probes (/livez, /readyz on plain HTTP), the same for both components. */}}
{{- define "shardmetrics.probes" -}}
livenessProbe:
  httpGet:
    path: /livez
    port: admin
    scheme: HTTP
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
    scheme: HTTP
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}

{{/* Downward-API env: POD_NAME, POD_NAMESPACE (and POD_IP when .podIP is true). */}}
{{- define "shardmetrics.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- if .podIP }}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end }}
{{- end }}
