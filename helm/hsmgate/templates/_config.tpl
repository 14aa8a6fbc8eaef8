{{/*
gateway.toml, rendered from .Values.config and .Values.ports. Strings and lists go
through toJson: a JSON string or array of strings is also valid TOML. Numbers go
through int64, so that large values are not printed in exponent form.
*/}}
{{- define "hsmgate.gatewayToml" -}}
{{- $c := .Values.config }}
{{- if not $c.directory.endpoint }}
{{- fail "config.directory.endpoint is required: \"http://host:port\" of the directory's gRPC endpoint" }}
{{- end }}
{{- if not (hasPrefix "http://" $c.directory.endpoint) }}
{{- fail (printf "config.directory.endpoint %q: must be http://host:port (TLS to the directory is not built into this version)" $c.directory.endpoint) }}
{{- end }}
{{- if not $c.pools }}
{{- fail "config.pools is required: at least one pool, e.g. [{name: default, members: [\"10.20.0.11:2400\"]}]" }}
{{- end }}
{{- if not (has $c.forwarding.mode (list "splice" "copy")) }}
{{- fail (printf "config.forwarding.mode %q: must be splice or copy" (toString $c.forwarding.mode)) }}
{{- end }}
# gateway.toml, rendered by the hsmgate Helm chart from the release's values
# (config.* and ports.*). Options: docs/OPERATIONS.md section 4.
gateway_id = {{ include "hsmgate.gatewayId" . | toJson }}
# The key Secret is mounted next to this file.
key_file = "gateway.key"

[[listeners]]
name = {{ $c.listenerName | toJson }}
address = {{ include "hsmgate.socketAddr" (list $c.listenAddress .Values.ports.client) | toJson }}
backlog = {{ int64 $c.backlog }}

[admission]
allow = {{ $c.admission.allow | default list | toJson }}
deny = {{ $c.admission.deny | default list | toJson }}

[timeouts]
handshake_ms = {{ int64 $c.timeouts.handshake_ms }}
hsm_connect_ms = {{ int64 $c.timeouts.hsm_connect_ms }}
idle_ms = {{ int64 $c.timeouts.idle_ms }}
drain_ms = {{ int64 $c.timeouts.drain_ms }}

[limits]
max_connections = {{ int64 $c.limits.max_connections }}
hsm_connect_retries = {{ int64 $c.limits.hsm_connect_retries }}

[directory]
endpoint = {{ $c.directory.endpoint | toJson }}
connect_timeout_ms = {{ int64 $c.directory.connect_timeout_ms }}
request_timeout_ms = {{ int64 $c.directory.request_timeout_ms }}
cache_max_entries = {{ int64 $c.directory.cache_max_entries }}
cache_max_ttl_secs = {{ int64 $c.directory.cache_max_ttl_secs }}
cache_deny_ttl_secs = {{ int64 $c.directory.cache_deny_ttl_secs }}

[forwarding]
mode = {{ $c.forwarding.mode | toJson }}
pipe_size = {{ int64 $c.forwarding.pipe_size }}
copy_buffer = {{ int64 $c.forwarding.copy_buffer }}

[health]
interval_ms = {{ int64 $c.health.interval_ms }}
timeout_ms = {{ int64 $c.health.timeout_ms }}
unhealthy_after = {{ int64 $c.health.unhealthy_after }}
healthy_after = {{ int64 $c.health.healthy_after }}

[admin]
address = {{ include "hsmgate.socketAddr" (list $c.adminAddress .Values.ports.admin) | toJson }}
{{- range $i, $p := $c.pools }}
{{- if not $p.name }}
{{- fail (printf "config.pools[%d].name is required" $i) }}
{{- end }}
{{- if not $p.members }}
{{- fail (printf "config.pools[%d].members: a pool needs at least one \"IP:port\" member" $i) }}
{{- end }}
{{- range $j, $m := $p.members }}
{{- if not (regexMatch "^([0-9]{1,3}(\\.[0-9]{1,3}){3}|\\[[0-9A-Fa-f:.]+\\]):[0-9]{1,5}$" (toString $m)) }}
{{- fail (printf "config.pools[%d].members[%d] %q: must be IP:port or [IPv6]:port (host names are not supported in this version)" $i $j (toString $m)) }}
{{- end }}
{{- end }}

[[pools]]
name = {{ $p.name | toJson }}
members = {{ $p.members | toJson }}
{{- end }}
{{- end }}

{{/* "IP:port" from (list ip port); an IPv6 literal gets brackets. */}}
{{- define "hsmgate.socketAddr" -}}
{{- $ip := index . 0 | toString }}
{{- $port := index . 1 | int64 }}
{{- if contains ":" $ip }}
{{- printf "[%s]:%d" $ip $port }}
{{- else }}
{{- printf "%s:%d" $ip $port }}
{{- end }}
{{- end }}
