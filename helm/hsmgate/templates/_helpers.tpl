{{/* Names, labels and checks shared by the templates. */}}

{{- define "hsmgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: also the name of the headless Service, so the gateway's DNS name.
Kept to 52 characters so that "<fullname>-metrics" and "<fullname>-config" stay
within the 63 characters of a DNS label.
*/}}
{{- define "hsmgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hsmgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hsmgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hsmgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hsmgate.labels" -}}
helm.sh/chart: {{ include "hsmgate.chart" . }}
{{ include "hsmgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: hsmgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "hsmgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hsmgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hsmgate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (toString $tag) }}
{{- end }}
{{- end }}

{{/* The gateway_id: config.gatewayId or the full name, checked against the gateway's rule. */}}
{{- define "hsmgate.gatewayId" -}}
{{- $id := default (include "hsmgate.fullname" .) .Values.config.gatewayId }}
{{- if not (regexMatch "^[A-Za-z0-9._-]{1,64}$" $id) }}
{{- fail (printf "config.gatewayId %q: must be 1-64 characters of [A-Za-z0-9._-]" $id) }}
{{- end }}
{{- $id }}
{{- end }}

{{/* The Secret that holds the key file, after checking the gatewayKey values. */}}
{{- define "hsmgate.keySecretName" -}}
{{- $k := .Values.gatewayKey }}
{{- if and $k.create $k.existingSecret }}
{{- fail "gatewayKey: set either existingSecret or create, not both" }}
{{- else if $k.create }}
{{- printf "%s-key" (include "hsmgate.fullname" .) }}
{{- else if $k.existingSecret }}
{{- $k.existingSecret }}
{{- else }}
{{- fail "gatewayKey.existingSecret is required: the name of a Secret holding the gateway's key file (hsmgate keygen --out gateway.key; kubectl create secret generic hsmgate-key --from-file=gateway.key=./gateway.key). For a test install set gatewayKey.create=true with gatewayKey.privateKey instead." }}
{{- end }}
{{- end }}

{{/* Seconds of drain: ceil(config.timeouts.drain_ms / 1000). */}}
{{- define "hsmgate.drainSeconds" -}}
{{- $ms := int64 .Values.config.timeouts.drain_ms }}
{{- div (add $ms 999) 1000 }}
{{- end }}

{{/* terminationGracePeriodSeconds: given (and checked) or preStop + drain + 10. */}}
{{- define "hsmgate.terminationGracePeriodSeconds" -}}
{{- $preStop := int64 .Values.preStopSleepSeconds }}
{{- $drain := int64 (include "hsmgate.drainSeconds" .) }}
{{- $given := .Values.terminationGracePeriodSeconds }}
{{- if and (not (kindIs "invalid" $given)) (ne (toString $given) "") }}
{{- $g := int64 $given }}
{{- if le $g (add $preStop $drain) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds (%d) + drain (%d s from config.timeouts.drain_ms), or the drain is cut short" $g $preStop $drain) }}
{{- end }}
{{- $g }}
{{- else }}
{{- add $preStop $drain 10 }}
{{- end }}
{{- end }}

{{/* The key file text for gatewayKey.create (the format `hsmgate keygen` writes). */}}
{{- define "hsmgate.keyFileText" -}}
# hsmgate static key pair (X25519). Keep this file secret.
{{- with .Values.gatewayKey.publicKey }}
public = {{ . | toJson }}
{{- end }}
private = {{ .Values.gatewayKey.privateKey | toJson }}
{{ end }}

{{/* An IntOrString value: "25%" stays a quoted string, 1 or "1" becomes a number. */}}
{{- define "hsmgate.intOrString" -}}
{{- $v := toString . }}
{{- if regexMatch "^[0-9]+$" $v }}
{{- $v }}
{{- else if regexMatch "^[0-9]+%$" $v }}
{{- $v | quote }}
{{- else }}
{{- fail (printf "%q: must be a number or a percentage" $v) }}
{{- end }}
{{- end }}

{{/*
The for, labels and annotations of one alert of the PrometheusRule:
(list alert-values prometheusRule summary description). `for` is left out when empty.
*/}}
{{- define "hsmgate.alertMeta" -}}
{{- $alert := index . 0 }}
{{- $pr := index . 1 }}
{{- with $alert.for }}
for: {{ . }}
{{- end }}
labels:
  severity: {{ $alert.severity | toString | toJson }}
  {{- with omit (default dict $pr.alertLabels) "severity" }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  summary: {{ index . 2 | toJson }}
  description: {{ index . 3 | toJson }}
{{- end }}
