{{/*
The admin endpoints and the pod's identity, checked, as YAML:
  gatewayIdFromPodName  the pods pass --gateway-id $(POD_NAME)
  bindPodIP             the pods pass --admin-address <podAddress>
  podAddress            "$(POD_IP):<ports.admin>", or "[$(POD_IP)]:<port>" for IPv6
  exposed               the admin address is not loopback (the pod IP, or config.adminAddress)
  token                 admin.token_file is rendered (adminToken.enabled)
  create                the chart makes the token Secret (no adminToken.existingSecret)
  secretName, secretKey the token Secret and its key
  configEndpoint, metricsRequireToken
It refuses, by value name, what the gateway would refuse at start
(gateway/src/config.rs, AdminConfig::validate): /config served on an address that is
not loopback without a token file, and metrics_require_token without one.
*/}}
{{- define "hsmgate.admin" -}}
{{- $c := .Values.config }}
{{- $t := .Values.adminToken }}
{{- range $name, $v := dict "config.gatewayIdFromPodName" $c.gatewayIdFromPodName "config.adminBindPodIP" $c.adminBindPodIP "config.adminConfigEndpoint" $c.adminConfigEndpoint "config.adminMetricsRequireToken" $c.adminMetricsRequireToken "adminToken.enabled" $t.enabled }}
{{- if not (kindIs "bool" $v) }}
{{- fail (printf "%s %q: must be true or false" $name (toString $v)) }}
{{- end }}
{{- end }}
{{- $family := toString $c.adminPodIPFamily }}
{{- if not (has $family (list "IPv4" "IPv6")) }}
{{- fail (printf "config.adminPodIPFamily %q: must be IPv4 or IPv6 (the family of the pods' status.podIP)" $family) }}
{{- end }}
{{- $port := int64 .Values.ports.admin }}
{{- $fileIP := toString $c.adminAddress }}
{{- $loopback := regexMatch "^(127\\.[0-9.]+|::1|(0{1,4}:){7}0{0,3}1)$" $fileIP }}
{{- $exposed := or $c.adminBindPodIP (not $loopback) }}
{{- $where := ternary "the pod IP (config.adminBindPodIP)" (printf "config.adminAddress %q" $fileIP) $c.adminBindPodIP }}
{{- if and $exposed $c.adminConfigEndpoint (not $t.enabled) }}
{{- fail (printf "adminToken.enabled is false while /config is served (config.adminConfigEndpoint) on %s, not loopback: the gateway refuses to start without admin.token_file. Keep adminToken.enabled, or set config.adminConfigEndpoint=false" $where) }}
{{- end }}
{{- if and $c.adminMetricsRequireToken (not $t.enabled) }}
{{- fail "config.adminMetricsRequireToken: requires adminToken.enabled (the gateway refuses metrics_require_token without admin.token_file); set it to false to turn the token off" }}
{{- end }}
{{- if not (regexMatch "^[-._a-zA-Z0-9]{1,253}$" (toString $t.key)) }}
{{- fail (printf "adminToken.key %q: must be a Secret key ([-._a-zA-Z0-9]+)" (toString $t.key)) }}
{{- end }}
gatewayIdFromPodName: {{ $c.gatewayIdFromPodName }}
bindPodIP: {{ $c.adminBindPodIP }}
podAddress: {{ ternary (printf "[$(POD_IP)]:%d" $port) (printf "$(POD_IP):%d" $port) (eq $family "IPv6") | toJson }}
exposed: {{ $exposed }}
token: {{ $t.enabled }}
create: {{ and $t.enabled (not $t.existingSecret) }}
secretName: {{ default (printf "%s-admin-token" (include "hsmgate.fullname" .)) $t.existingSecret | toJson }}
secretKey: {{ toString $t.key | toJson }}
configEndpoint: {{ $c.adminConfigEndpoint }}
metricsRequireToken: {{ $c.adminMetricsRequireToken }}
{{- end }}
