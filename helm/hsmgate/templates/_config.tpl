{{/*
gateway.toml, rendered from .Values.config, .Values.ports and .Values.service.proxyProtocol. Strings and lists go
through toJson: a JSON string or array of strings is also valid TOML. Numbers go
through int64, so that large values are not printed in exponent form.
*/}}
{{- define "hsmgate.gatewayToml" -}}
{{- $c := .Values.config }}
{{- $dir := include "hsmgate.directory" . | fromYaml }}
{{- if not $c.pools }}
{{- fail "config.pools is required: at least one pool, e.g. [{name: default, members: [\"10.20.0.11:2400\"]}]" }}
{{- end }}
{{- $fwd := include "hsmgate.forwarding" . | fromYaml }}
{{- $loops := int64 $c.acceptLoops }}
{{- if or (lt $loops 1) (gt $loops 64) }}
{{- fail (printf "config.acceptLoops (%d): must be 1..64" $loops) }}
{{- end }}
{{- if and (gt (int64 $c.limits.handshakes_per_second_per_source) 0) (lt (int64 $c.limits.handshake_burst_per_source) 1) }}
{{- fail "config.limits.handshake_burst_per_source: must be at least 1 when config.limits.handshakes_per_second_per_source is above 0" }}
{{- end }}
{{- $maxSession := int64 $c.timeouts.max_session_ms }}
{{- if or (lt $maxSession 0) (gt $maxSession 2592000000) }}
{{- fail (printf "config.timeouts.max_session_ms (%d): must be 0..2592000000 (30 days; 0 = no limit)" $maxSession) }}
{{- end }}
{{- $idlePipes := int64 $c.forwarding.max_idle_pipes }}
{{- if or (lt $idlePipes 0) (gt $idlePipes 65536) }}
{{- fail (printf "config.forwarding.max_idle_pipes (%d): must be 0..65536" $idlePipes) }}
{{- end }}
{{- $r := $c.revocation }}
{{- if not (kindIs "bool" $r.enabled) }}
{{- fail (printf "config.revocation.enabled %q: must be true or false" (toString $r.enabled)) }}
{{- end }}
{{- $recheck := int64 $r.check_interval_ms }}
{{- if or (lt $recheck 100) (gt $recheck 86400000) }}
{{- fail (printf "config.revocation.check_interval_ms (%d): must be 100..86400000" $recheck) }}
{{- end }}
{{- $pp := include "hsmgate.proxyProtocol" . | fromYaml }}
{{- $q := $c.quic }}
{{- if not (kindIs "bool" $q.enabled) }}
{{- fail (printf "config.quic.enabled %q: must be true or false" (toString $q.enabled)) }}
{{- end }}
{{- $streams := int64 $q.max_streams_per_connection }}
{{- if or (lt $streams 1) (gt $streams 10000) }}
{{- fail (printf "config.quic.max_streams_per_connection (%d): must be 1..10000" $streams) }}
{{- end }}
{{- $quicIdle := int64 $q.idle_timeout_ms }}
{{- if or (lt $quicIdle 1000) (gt $quicIdle 600000) }}
{{- fail (printf "config.quic.idle_timeout_ms (%d): must be 1000..600000" $quicIdle) }}
{{- end }}
{{- if and $q.enabled .Values.service.enabled (ne .Values.service.type "ClusterIP") (ne .Values.service.externalTrafficPolicy "Local") }}
{{- fail "config.quic.enabled with service.externalTrafficPolicy other than Local: QUIC has no PROXY protocol, so clients would reach the gateway from node addresses and the allow-lists would see those; set service.externalTrafficPolicy: Local or config.quic.enabled: false" }}
{{- end }}
# gateway.toml, rendered by the hsmgate Helm chart from the release's values
# (config.*, ports.*, service.proxyProtocol.*). Options: docs/OPERATIONS.md section 4.
gateway_id = {{ include "hsmgate.gatewayId" . | toJson }}
# The key Secret is mounted next to this file.
key_file = "gateway.key"

[[listeners]]
name = {{ $c.listenerName | toJson }}
address = {{ include "hsmgate.socketAddr" (list $c.listenAddress .Values.ports.client) | toJson }}
backlog = {{ int64 $c.backlog }}
accept_loops = {{ $loops }}
proxy_protocol = false
{{- if $pp.enabled }}

# service.proxyProtocol: every connection starts with a PROXY header (v1 or v2) from
# one of trusted_proxies; the header's source address is the client's.
[[listeners]]
name = {{ $pp.name | toJson }}
address = {{ include "hsmgate.socketAddr" (list $c.listenAddress .Values.ports.proxied) | toJson }}
backlog = {{ int64 $c.backlog }}
accept_loops = {{ $loops }}
proxy_protocol = true
trusted_proxies = {{ $pp.trustedProxies | toJson }}
{{- end }}
{{- if $q.enabled }}

# config.quic: QUIC on the client port over UDP (docs/PROTOCOL.md section 11).
[[listeners]]
name = "quic"
address = {{ include "hsmgate.socketAddr" (list $c.listenAddress .Values.ports.client) | toJson }}
transport = "quic"
{{- end }}

[admission]
allow = {{ $c.admission.allow | default list | toJson }}
deny = {{ $c.admission.deny | default list | toJson }}
{{- include "hsmgate.tomlOtherKeys" (list "admission" $c.admission (list "allow" "deny")) }}

[timeouts]
handshake_ms = {{ int64 $c.timeouts.handshake_ms }}
hsm_connect_ms = {{ int64 $c.timeouts.hsm_connect_ms }}
idle_ms = {{ int64 $c.timeouts.idle_ms }}
drain_ms = {{ int64 $c.timeouts.drain_ms }}
max_session_ms = {{ $maxSession }}
{{- include "hsmgate.tomlOtherKeys" (list "timeouts" $c.timeouts (list "handshake_ms" "hsm_connect_ms" "idle_ms" "drain_ms" "max_session_ms")) }}

[limits]
max_connections = {{ int64 $c.limits.max_connections }}
hsm_connect_retries = {{ int64 $c.limits.hsm_connect_retries }}
max_connections_per_source = {{ int64 $c.limits.max_connections_per_source }}
handshakes_per_second_per_source = {{ int64 $c.limits.handshakes_per_second_per_source }}
handshake_burst_per_source = {{ int64 $c.limits.handshake_burst_per_source }}
{{- include "hsmgate.tomlOtherKeys" (list "limits" $c.limits (list "max_connections" "hsm_connect_retries" "max_connections_per_source" "handshakes_per_second_per_source" "handshake_burst_per_source")) }}

[directory]
endpoint = {{ $c.directory.endpoint | toJson }}
{{- if $dir.https }}
{{- if or $dir.caFile $dir.certFile }}
# The files of config.directory.tls, mounted from their Secret (or ConfigMap) at
# {{ $dir.mountPath }}; the gateway re-reads them when the kubelet updates them.
{{- end }}
{{- with $dir.caFile }}
ca_file = {{ . | toJson }}
{{- end }}
system_roots = {{ $dir.systemRoots }}
{{- with $dir.serverName }}
server_name = {{ . | toJson }}
{{- end }}
{{- with $dir.certFile }}
client_cert_file = {{ . | toJson }}
client_key_file = {{ $dir.keyFile | toJson }}
{{- end }}
{{- else }}
# config.directory.allowPlaintext: the directory's answers cross the network in clear.
allow_plaintext = true
{{- end }}
connect_timeout_ms = {{ int64 $c.directory.connect_timeout_ms }}
request_timeout_ms = {{ int64 $c.directory.request_timeout_ms }}
cache_max_entries = {{ int64 $c.directory.cache_max_entries }}
cache_max_ttl_secs = {{ int64 $c.directory.cache_max_ttl_secs }}
cache_deny_ttl_secs = {{ int64 $c.directory.cache_deny_ttl_secs }}
{{- include "hsmgate.tomlOtherKeys" (list "directory" $c.directory (list "endpoint" "allowPlaintext" "systemRoots" "serverName" "tls" "connect_timeout_ms" "request_timeout_ms" "cache_max_entries" "cache_max_ttl_secs" "cache_deny_ttl_secs")) }}

[revocation]
enabled = {{ $r.enabled }}
check_interval_ms = {{ $recheck }}
{{- include "hsmgate.tomlOtherKeys" (list "revocation" $r (list "enabled" "check_interval_ms")) }}

[quic]
max_streams_per_connection = {{ $streams }}
idle_timeout_ms = {{ $quicIdle }}
{{- include "hsmgate.tomlOtherKeys" (list "quic" $q (list "enabled" "max_streams_per_connection" "idle_timeout_ms")) }}

[forwarding]
{{- if $fwd.kernel }}
# {{ $fwd.by }}: the gateway container has the capabilities BPF and
# NET_ADMIN, as root; where the BPF program still cannot be loaded the gateway logs
# "kernel forwarding unavailable; splicing sessions instead" and splices.
{{- end }}
mode = {{ $fwd.mode | toJson }}
kernel_max_sessions = {{ int64 $fwd.maxSessions }}
kernel_budget = {{ int64 $fwd.budget }}
pipe_size = {{ int64 $c.forwarding.pipe_size }}
copy_buffer = {{ int64 $c.forwarding.copy_buffer }}
max_idle_pipes = {{ $idlePipes }}
{{- include "hsmgate.tomlOtherKeys" (list "forwarding" $c.forwarding (list "mode" "kernel_max_sessions" "kernel_budget" "kernelRunAsRoot" "pipe_size" "copy_buffer" "max_idle_pipes")) }}

[health]
interval_ms = {{ int64 $c.health.interval_ms }}
timeout_ms = {{ int64 $c.health.timeout_ms }}
unhealthy_after = {{ int64 $c.health.unhealthy_after }}
healthy_after = {{ int64 $c.health.healthy_after }}
{{- include "hsmgate.tomlOtherKeys" (list "health" $c.health (list "interval_ms" "timeout_ms" "unhealthy_after" "healthy_after")) }}

{{- $admin := include "hsmgate.admin" . | fromYaml }}

[admin]
{{- if $admin.bindPodIP }}
# Replaced by the pod's IP: the pods run `hsmgate run --admin-address {{ $admin.podAddress }}`.
{{- end }}
address = {{ include "hsmgate.socketAddr" (list $c.adminAddress .Values.ports.admin) | toJson }}
{{- if $admin.token }}
# The adminToken Secret, mounted next to this file.
token_file = "admin-token"
{{- end }}
config_endpoint = {{ $admin.configEndpoint }}
metrics_require_token = {{ $admin.metricsRequireToken }}
{{- $d := $c.discovery | default dict }}

[discovery]
{{- with $d.nameserver }}
nameserver = {{ toString . | toJson }}
{{- end }}
min_ttl_secs = {{ int64 (default 5 $d.min_ttl_secs) }}
max_ttl_secs = {{ int64 (default 300 $d.max_ttl_secs) }}
retry_secs = {{ int64 (default 5 $d.retry_secs) }}
timeout_ms = {{ int64 (default 2000 $d.timeout_ms) }}
{{- include "hsmgate.tomlOtherKeys" (list "discovery" $d (list "nameserver" "min_ttl_secs" "max_ttl_secs" "retry_secs" "timeout_ms")) }}
{{- range $i, $p := $c.pools }}
{{- if not (kindIs "map" $p) }}
{{- fail (printf "config.pools[%d]: must be a map {name, members or dns, policy, weights, forwarding}" $i) }}
{{- end }}
{{- range $k := keys $p | sortAlpha }}
{{- if not (has $k (list "name" "members" "dns" "policy" "weights" "forwarding")) }}
{{- fail (printf "config.pools[%d]: unknown key %q (allowed: name, members, dns, policy, weights, forwarding)" $i $k) }}
{{- end }}
{{- end }}
{{- if not $p.name }}
{{- fail (printf "config.pools[%d].name is required" $i) }}
{{- end }}
{{- if and $p.members $p.dns }}
{{- fail (printf "config.pools[%d].dns: a pool takes either members or dns, not both" $i) }}
{{- end }}
{{- if not (or $p.members $p.dns) }}
{{- fail (printf "config.pools[%d].members: a pool needs at least one \"IP:port\" member, or dns to discover its members" $i) }}
{{- end }}
{{- if $p.dns }}
{{- $dns := toString $p.dns }}
{{- if regexMatch "^([0-9]{1,3}(\\.[0-9]{1,3}){3}|\\[[0-9A-Fa-f:.]+\\]):[0-9]{1,5}$" $dns }}
{{- fail (printf "config.pools[%d].dns %q: an IP address, not a DNS name: list it in members instead" $i $dns) }}
{{- end }}
{{- if not (regexMatch "^([A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*\\.?:[0-9]{1,5}|_[A-Za-z0-9-]+\\._[A-Za-z0-9-]+(\\.[A-Za-z0-9_-]+)+\\.?)$" $dns) }}
{{- fail (printf "config.pools[%d].dns %q: must be host:port (A and AAAA records) or _service._proto.domain (SRV records)" $i $dns) }}
{{- end }}
{{- if $p.weights }}
{{- fail (printf "config.pools[%d].weights: not allowed with dns (DNS members weigh 1, or their SRV record's weight)" $i) }}
{{- end }}
{{- end }}
{{- range $j, $m := $p.members }}
{{- if not (regexMatch "^([0-9]{1,3}(\\.[0-9]{1,3}){3}|\\[[0-9A-Fa-f:.]+\\]):[0-9]{1,5}$" (toString $m)) }}
{{- fail (printf "config.pools[%d].members[%d] %q: must be IP:port or [IPv6]:port (host names are not supported in this version)" $i $j (toString $m)) }}
{{- end }}
{{- end }}
{{- $policy := default "round_robin" $p.policy | toString }}
{{- if not (has $policy (list "round_robin" "least_connections" "power_of_two" "consistent_hash")) }}
{{- fail (printf "config.pools[%d].policy %q: must be round_robin, least_connections, power_of_two or consistent_hash" $i $policy) }}
{{- end }}
{{- $poolFwd := "" }}
{{- if not (kindIs "invalid" $p.forwarding) }}
{{- $poolFwd = toString $p.forwarding }}
{{- end }}
{{- if and $poolFwd (not (has $poolFwd (list "splice" "copy" "kernel"))) }}
{{- fail (printf "config.pools[%d].forwarding %q: must be splice, copy or kernel (or unset: config.forwarding.mode)" $i $poolFwd) }}
{{- end }}
{{- $weights := list }}
{{- if $p.weights }}
{{- if not (kindIs "slice" $p.weights) }}
{{- fail (printf "config.pools[%d].weights: must be a list, one weight per member" $i) }}
{{- end }}
{{- if ne (len $p.weights) (len $p.members) }}
{{- fail (printf "config.pools[%d].weights: %d weights for %d members; give one weight per member, in the order of members" $i (len $p.weights) (len $p.members)) }}
{{- end }}
{{- $total := 0 }}
{{- range $j, $w := $p.weights }}
{{- if or (not (regexMatch "^[0-9]+$" (toString $w))) (gt (int64 $w) 100) }}
{{- fail (printf "config.pools[%d].weights[%d] %q: must be an integer 0..100 (0 drains the member)" $i $j (toString $w)) }}
{{- end }}
{{- $weights = append $weights (int64 $w) }}
{{- $total = add $total (int64 $w) }}
{{- end }}
{{- if eq (int64 $total) 0 }}
{{- fail (printf "config.pools[%d].weights: at least one member needs a weight above 0" $i) }}
{{- end }}
{{- end }}

[[pools]]
name = {{ $p.name | toJson }}
{{- if $p.dns }}
dns = {{ toString $p.dns | toJson }}
{{- else }}
members = {{ $p.members | toJson }}
{{- end }}
policy = {{ $policy | toJson }}
{{- if $weights }}
weights = {{ $weights | toJson }}
{{- end }}
{{- if $poolFwd }}
forwarding = {{ $poolFwd | toJson }}
{{- end }}
{{- end }}
{{- with $c.extraToml }}
{{- include "hsmgate.checkExtraToml" . }}

# config.extraToml, appended verbatim (not checked by the chart; the gateway checks
# it at start).
{{ . | trimSuffix "\n" }}
{{- end }}
{{- end }}

{{/*
The keys of a config.<table> value map that the chart does not render itself, as
"key = value" lines of that table, unchecked: (list "table" $map (list known keys...)).
Numbers without a fraction are printed as integers (Helm reads every YAML number as a
float), strings, booleans and lists as TOML; a nested map is refused.
*/}}
{{- define "hsmgate.tomlOtherKeys" -}}
{{- $table := index . 0 }}
{{- $values := index . 1 | default dict }}
{{- $known := index . 2 }}
{{- range $k := keys $values | sortAlpha }}
{{- $v := index $values $k }}
{{- if and (not (has $k $known)) (not (kindIs "invalid" $v)) }}
{{- if not (regexMatch "^[a-z0-9_]+$" $k) }}
{{- fail (printf "config.%s.%s: not a gateway config key (lower case letters, digits and _)" $table $k) }}
{{- end }}
{{- if kindIs "map" $v }}
{{- fail (printf "config.%s.%s: a table; put tables in config.extraToml" $table $k) }}
{{- end }}
{{ $k }} = {{ include "hsmgate.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hsmgate.tomlValue" -}}
{{- if kindIs "bool" . }}
{{- . }}
{{- else if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}
{{- . }}
{{- else if kindIs "slice" . }}
{{- toJson . }}
{{- else }}
{{- toString . | toJson }}
{{- end }}
{{- end }}

{{/*
config.extraToml lands after the last [[pools]] table: it must open a table of its own
first, and may not open one the chart renders (TOML defines a table once).
*/}}
{{- define "hsmgate.checkExtraToml" -}}
{{- $rendered := list "admission" "timeouts" "limits" "directory" "revocation" "quic" "forwarding" "health" "admin" "discovery" "listeners" "pools" }}
{{- $first := "" }}
{{- range $line := splitList "\n" . }}
{{- $l := trim $line }}
{{- if and $l (not (hasPrefix "#" $l)) }}
{{- if not $first }}
{{- $first = $l }}
{{- if not (hasPrefix "[" $l) }}
{{- fail (printf "config.extraToml: must start with a table header ([table] or [[array]]); %q would land in the chart's last [[pools]] table" $l) }}
{{- end }}
{{- end }}
{{- if regexMatch "^\\[[^\\[]" $l }}
{{- $name := regexReplaceAll "^\\[\\s*([^\\].\\s]+).*$" $l "${1}" }}
{{- if has $name $rendered }}
{{- if eq $name "admin" }}
{{- fail (printf "config.extraToml: %s: the chart renders [admin] (from config.adminAddress and ports.admin); TOML defines a table once" $l) }}
{{- else if has $name (list "listeners" "pools") }}
{{- fail (printf "config.extraToml: %s: %s is an array of tables; add an entry with [[%s]]" $l $name $name) }}
{{- else }}
{{- fail (printf "config.extraToml: %s: the chart renders [%s] (TOML defines a table once); set its keys under config.%s instead" $l $name $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
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

{{/*
The PROXY protocol listener, checked, as YAML: {enabled, name, trustedProxies}.
service.proxyProtocol.enabled renders it whether or not the chart's load-balanced
Service is on (a load balancer outside the chart may target the pods).
*/}}
{{- define "hsmgate.proxyProtocol" -}}
{{- $pp := .Values.service.proxyProtocol }}
{{- if $pp.enabled }}
{{- $trusted := $pp.trustedProxies }}
{{- if not $trusted }}
{{- fail "service.proxyProtocol.trustedProxies is required when service.proxyProtocol.enabled is true: the CIDRs of the load balancers allowed to connect to the PROXY protocol listener, for example [\"10.0.64.0/24\"]" }}
{{- end }}
{{- if not (kindIs "slice" $trusted) }}
{{- fail (printf "service.proxyProtocol.trustedProxies: must be a list of CIDRs, for example [\"10.0.64.0/24\"] (got %q)" (toString $trusted)) }}
{{- end }}
{{- range $i, $cidr := $trusted }}
{{- if not (regexMatch "^([0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*/[0-9]{1,3})$" (toString $cidr)) }}
{{- fail (printf "service.proxyProtocol.trustedProxies[%d] %q: must be a CIDR (address/prefix length), for example \"10.0.64.0/24\" or \"fd00:64::/64\"" $i (toString $cidr)) }}
{{- end }}
{{- end }}
{{- $name := toString $pp.listenerName }}
{{- if not (regexMatch "^[A-Za-z0-9._-]{1,64}$" $name) }}
{{- fail (printf "service.proxyProtocol.listenerName %q: must be 1-64 characters of [A-Za-z0-9._-]" $name) }}
{{- end }}
{{- if eq $name (toString .Values.config.listenerName) }}
{{- fail (printf "service.proxyProtocol.listenerName %q: must differ from config.listenerName" $name) }}
{{- end }}
{{- $port := int64 .Values.ports.proxied }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- fail (printf "ports.proxied (%d): must be 1..65535" $port) }}
{{- end }}
{{- if or (eq $port (int64 .Values.ports.client)) (eq $port (int64 .Values.ports.admin)) }}
{{- fail (printf "ports.proxied (%d): the PROXY protocol listener needs its own port, not ports.client or ports.admin" $port) }}
{{- end }}
enabled: true
name: {{ $name | toJson }}
trustedProxies: {{ $trusted | toJson }}
{{- else }}
enabled: false
{{- end }}
{{- end }}
