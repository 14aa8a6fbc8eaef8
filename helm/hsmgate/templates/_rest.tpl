{{/*
hsmgate-rest, the REST access path (rest.*; docs/REST.md). Names, labels, the checked
settings and the rendered rest.toml.

Its pods are told apart from the gateway's by app.kubernetes.io/name (<name>-rest):
every Service, the PodDisruptionBudget, the anti-affinity and the NetworkPolicy of the
gateway select {app.kubernetes.io/name: <name>, app.kubernetes.io/instance: <release>},
and a Deployment's selector cannot change on upgrade, so a shared name with a
component label would put REST pods behind the gateway's Services.
*/}}

{{/* <fullname>-rest, the fullname cut to 47 characters so that "<...>-rest-metrics" fits a DNS label. */}}
{{- define "hsmgate.rest.fullname" -}}
{{- printf "%s-rest" (include "hsmgate.fullname" . | trunc 47 | trimSuffix "-") }}
{{- end }}

{{- define "hsmgate.rest.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-rest" (include "hsmgate.name" . | trunc 58 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hsmgate.rest.labels" -}}
helm.sh/chart: {{ include "hsmgate.chart" . }}
{{ include "hsmgate.rest.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: rest
app.kubernetes.io/part-of: hsmgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The REST settings, checked, as YAML:
  auth                    "jwt" or "mtls"
  listen, admin           the listener's and the admin endpoints' "IP:port"
  configDir               where rest.toml is mounted (the ConfigMap)
  certFile, keyFile, clientCaFile, jwksFile, jwksCaFile   absolute paths ("" when unused)
  tlsSources, jwtSources  the projected sources of the volumes "tls" and "jwt"
  jwksPort                the port of rest.jwt.jwksUrl (0 without one)
  partitions              [{name, secretName, sessions, mountPath, clientConfig}]
  terminationGracePeriodSeconds
Every Secret and ConfigMap is mounted as a whole volume, never with subPath: only then
does the kubelet update the files when the object changes, and hsmgate-rest re-reads
the TLS files and a JWKS file when they change (polled every 5 s).
It refuses, by value name, what hsmgate-rest would refuse at start
(rest/src/config.rs) and what the chart cannot mount.
*/}}
{{- define "hsmgate.rest" -}}
{{- $r := .Values.rest }}
{{- $t := $r.tls | default dict }}
{{- $j := $r.jwt | default dict }}
{{- $m := $r.mtls | default dict }}
{{- $l := $r.limits | default dict }}
{{- $nameRule := "^[A-Za-z0-9._-]{1,64}$" }}
{{- $objectRule := "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$" }}
{{- $keyRule := "^[-._a-zA-Z0-9]{1,253}$" }}
{{- $auth := toString $r.auth }}
{{- if not (has $auth (list "jwt" "mtls")) }}
{{- fail (printf "rest.auth %q: must be jwt (bearer tokens) or mtls (client certificates)" $auth) }}
{{- end }}
{{- /* Ports. */}}
{{- $port := int64 $r.port }}
{{- $adminPort := int64 $r.adminPort }}
{{- range $name, $v := dict "rest.port" $port "rest.adminPort" $adminPort }}
{{- if or (lt $v 1) (gt $v 65535) }}
{{- fail (printf "%s (%d): must be 1..65535" $name $v) }}
{{- end }}
{{- end }}
{{- if eq $port $adminPort }}
{{- fail (printf "rest.adminPort (%d): must differ from rest.port" $adminPort) }}
{{- end }}
{{- $ip := toString $r.listenAddress }}
{{- if not (regexMatch "^([0-9]{1,3}(\\.[0-9]{1,3}){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$" $ip) }}
{{- fail (printf "rest.listenAddress %q: must be an IP address, \"0.0.0.0\" or \"::\"" $ip) }}
{{- end }}
{{- /* The server certificate (and the client CA for mtls). */}}
{{- $secret := toString (default "" $t.secretName) }}
{{- if not $secret }}
{{- fail "rest.tls.secretName is required with rest.enabled: a Secret of type kubernetes.io/tls (tls.crt, tls.key) with the REST service's server certificate, for example the one cert-manager writes for a Certificate" }}
{{- end }}
{{- $caSecret := toString (default "" $t.clientCaSecret) }}
{{- $caKey := toString (default "" $t.clientCaKey) }}
{{- range $name, $v := dict "rest.tls.secretName" $secret "rest.tls.clientCaSecret" $caSecret }}
{{- if and $v (not (regexMatch $objectRule $v)) }}
{{- fail (printf "%s %q: must be the name of a Secret in the release namespace" $name $v) }}
{{- end }}
{{- end }}
{{- $dir := "/etc/hsmgate-rest" }}
{{- $tlsItems := list (dict "key" "tls.crt" "path" "tls.crt") (dict "key" "tls.key" "path" "tls.key" "mode" 288) }}
{{- $tlsSources := list }}
{{- $clientCaFile := "" }}
{{- if eq $auth "mtls" }}
{{- if not $caSecret }}
{{- fail "rest.tls.clientCaSecret is required with rest.auth mtls: a Secret whose rest.tls.clientCaKey (ca.crt) holds the CA bundle that signs the client certificates" }}
{{- end }}
{{- if not (regexMatch $keyRule $caKey) }}
{{- fail (printf "rest.tls.clientCaKey %q: must be a key of a Secret ([-._a-zA-Z0-9]+)" $caKey) }}
{{- end }}
{{- $caItem := dict "key" $caKey "path" "client-ca.crt" }}
{{- if eq $caSecret $secret }}
{{- $tlsItems = append $tlsItems $caItem }}
{{- else }}
{{- $tlsSources = append $tlsSources (dict "secret" (dict "name" $caSecret "items" (list $caItem))) }}
{{- end }}
{{- $clientCaFile = printf "%s/tls/client-ca.crt" $dir }}
{{- else if $caSecret }}
{{- fail "rest.tls.clientCaSecret: only with rest.auth mtls (a jwt listener asks for no client certificate)" }}
{{- end }}
{{- $tlsSources = prepend $tlsSources (dict "secret" (dict "name" $secret "items" $tlsItems)) }}
{{- /* Bearer tokens. */}}
{{- $jwksUrl := toString (default "" $j.jwksUrl) }}
{{- $jwksCm := toString (default "" $j.jwksConfigMap) }}
{{- $jwksCmKey := toString (default "" $j.jwksConfigMapKey) }}
{{- $jwksCaCm := toString (default "" $j.jwksCaConfigMap) }}
{{- $jwksCaKey := toString (default "" $j.jwksCaKey) }}
{{- $jwtSources := list }}
{{- $jwksFile := "" }}
{{- $jwksCaFile := "" }}
{{- $jwksPort := 0 }}
{{- $algorithms := list }}
{{- if eq $auth "jwt" }}
{{- range $name := list "issuer" "audience" }}
{{- if not (toString (default "" (index $j $name))) }}
{{- fail (printf "rest.jwt.%s is required with rest.auth jwt: the exact %s a token must carry (docs/REST.md section 4.1)" $name (ternary "`iss`" "`aud`" (eq $name "issuer"))) }}
{{- end }}
{{- end }}
{{- range $name := list "tenantClaim" "partitionsClaim" }}
{{- if not (toString (default "" (index $j $name))) }}
{{- fail (printf "rest.jwt.%s: must not be empty" $name) }}
{{- end }}
{{- end }}
{{- if and $jwksUrl $jwksCm }}
{{- fail "rest.jwt.jwksUrl and rest.jwt.jwksConfigMap: set one of them, not both (where the token verification keys come from)" }}
{{- end }}
{{- if not (or $jwksUrl $jwksCm) }}
{{- fail "rest.jwt.jwksUrl or rest.jwt.jwksConfigMap is required with rest.auth jwt: the issuer's JWKS as an https:// URL, or a ConfigMap holding it" }}
{{- end }}
{{- range $i, $a := $j.algorithms | default list }}
{{- if not (has (toString $a) (list "ES256" "EdDSA" "RS256")) }}
{{- fail (printf "rest.jwt.algorithms[%d] %q: must be ES256, EdDSA or RS256 (none and the HMAC algorithms are refused)" $i (toString $a)) }}
{{- end }}
{{- $algorithms = append $algorithms (toString $a) }}
{{- end }}
{{- if gt (int64 $j.leewaySecs) 300 }}
{{- fail (printf "rest.jwt.leewaySecs (%d): at most 300" (int64 $j.leewaySecs)) }}
{{- end }}
{{- if or (lt (int64 $j.maxTokenBytes) 256) (gt (int64 $j.maxTokenBytes) 65536) }}
{{- fail (printf "rest.jwt.maxTokenBytes (%d): must be 256..65536" (int64 $j.maxTokenBytes)) }}
{{- end }}
{{- if $jwksUrl }}
{{- $rest := trimPrefix "https://" $jwksUrl }}
{{- $host := regexReplaceAll "[/?#].*$" $rest "" }}
{{- if or (not (hasPrefix "https://" $jwksUrl)) (not $host) (regexMatch "\\s" $jwksUrl) (contains "@" $host) }}
{{- fail (printf "rest.jwt.jwksUrl %q: must be an https:// URL with a host (and no credentials)" $jwksUrl) }}
{{- end }}
{{- $jwksPort = regexFind ":[0-9]+$" $host | trimPrefix ":" | default "443" | int64 }}
{{- $refresh := int64 $j.jwksRefreshSecs }}
{{- if or (lt $refresh 1) (gt $refresh 86400) }}
{{- fail (printf "rest.jwt.jwksRefreshSecs (%d): must be 1..86400" $refresh) }}
{{- end }}
{{- if $jwksCaCm }}
{{- if not (regexMatch $objectRule $jwksCaCm) }}
{{- fail (printf "rest.jwt.jwksCaConfigMap %q: must be the name of a ConfigMap in the release namespace" $jwksCaCm) }}
{{- end }}
{{- if not (regexMatch $keyRule $jwksCaKey) }}
{{- fail (printf "rest.jwt.jwksCaKey %q: must be a key of a ConfigMap ([-._a-zA-Z0-9]+)" $jwksCaKey) }}
{{- end }}
{{- $jwtSources = append $jwtSources (dict "configMap" (dict "name" $jwksCaCm "items" (list (dict "key" $jwksCaKey "path" "jwks-ca.crt")))) }}
{{- $jwksCaFile = printf "%s/jwt/jwks-ca.crt" $dir }}
{{- end }}
{{- else }}
{{- if $jwksCaCm }}
{{- fail "rest.jwt.jwksCaConfigMap: only with rest.jwt.jwksUrl (it verifies the key server; a JWKS file needs none)" }}
{{- end }}
{{- if not (regexMatch $objectRule $jwksCm) }}
{{- fail (printf "rest.jwt.jwksConfigMap %q: must be the name of a ConfigMap in the release namespace" $jwksCm) }}
{{- end }}
{{- if not (regexMatch $keyRule $jwksCmKey) }}
{{- fail (printf "rest.jwt.jwksConfigMapKey %q: must be a key of a ConfigMap ([-._a-zA-Z0-9]+)" $jwksCmKey) }}
{{- end }}
{{- $jwtSources = append $jwtSources (dict "configMap" (dict "name" $jwksCm "items" (list (dict "key" $jwksCmKey "path" "jwks.json")))) }}
{{- $jwksFile = printf "%s/jwt/jwks.json" $dir }}
{{- end }}
{{- else }}
{{- range $name := list "issuer" "audience" "jwksUrl" "jwksConfigMap" "jwksCaConfigMap" }}
{{- if toString (default "" (index $j $name)) }}
{{- fail (printf "rest.jwt.%s: only with rest.auth jwt (rest.auth is mtls)" $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Partitions. */}}
{{- $partitions := list }}
{{- $names := list }}
{{- if not $r.partitions }}
{{- fail "rest.partitions is required: at least one partition, [{name, secretName, sessions}], whose Secret holds its hsmgate client config (client.toml) and the key files it names" }}
{{- end }}
{{- if not (kindIs "slice" $r.partitions) }}
{{- fail "rest.partitions: must be a list of {name, secretName, sessions}" }}
{{- end }}
{{- range $i, $p := $r.partitions }}
{{- if not (kindIs "map" $p) }}
{{- fail (printf "rest.partitions[%d]: must be a map {name, secretName, sessions}" $i) }}
{{- end }}
{{- range $k := keys $p | sortAlpha }}
{{- if not (has $k (list "name" "secretName" "sessions")) }}
{{- fail (printf "rest.partitions[%d]: unknown key %q (allowed: name, secretName, sessions)" $i $k) }}
{{- end }}
{{- end }}
{{- $name := toString (default "" $p.name) }}
{{- if not (regexMatch $nameRule $name) }}
{{- fail (printf "rest.partitions[%d].name %q: must be 1-64 characters of [A-Za-z0-9._-] (the partition's name, as in its client config)" $i $name) }}
{{- end }}
{{- if or (eq $name ".") (eq $name "..") }}
{{- fail (printf "rest.partitions[%d].name %q: cannot name a directory" $i $name) }}
{{- end }}
{{- if has $name $names }}
{{- fail (printf "rest.partitions[%d].name %q: listed twice" $i $name) }}
{{- end }}
{{- $names = append $names $name }}
{{- $ps := toString (default "" $p.secretName) }}
{{- if not $ps }}
{{- fail (printf "rest.partitions[%d].secretName is required: a Secret holding the client config of partition %q under the key client.toml, and the key files it names" $i $name) }}
{{- end }}
{{- if not (regexMatch $objectRule $ps) }}
{{- fail (printf "rest.partitions[%d].secretName %q: must be the name of a Secret in the release namespace" $i $ps) }}
{{- end }}
{{- $sessions := 2 }}
{{- if hasKey $p "sessions" }}{{ $sessions = int64 $p.sessions }}{{ end }}
{{- if or (lt $sessions 1) (gt $sessions 64) }}
{{- fail (printf "rest.partitions[%d].sessions (%d): must be 1..64" $i $sessions) }}
{{- end }}
{{- $mount := printf "%s/partitions/%s" $dir $name }}
{{- $partitions = append $partitions (dict "name" $name "secretName" $ps "sessions" $sessions "mountPath" $mount "clientConfig" (printf "%s/client.toml" $mount)) }}
{{- end }}
{{- /* Client certificate identities. */}}
{{- $identities := $m.identities | default list }}
{{- if eq $auth "mtls" }}
{{- if not $identities }}
{{- fail "rest.mtls.identities is required with rest.auth mtls: at least one {match, tenant, partitions}, for example {match: \"dns:ci.example.com\", tenant: payments, partitions: [payments-signing]}" }}
{{- end }}
{{- if not (kindIs "slice" $identities) }}
{{- fail "rest.mtls.identities: must be a list of {match, tenant, partitions}" }}
{{- end }}
{{- $matches := list }}
{{- range $i, $id := $identities }}
{{- if not (kindIs "map" $id) }}
{{- fail (printf "rest.mtls.identities[%d]: must be a map {match, tenant, partitions}" $i) }}
{{- end }}
{{- range $k := keys $id | sortAlpha }}
{{- if not (has $k (list "match" "tenant" "partitions")) }}
{{- fail (printf "rest.mtls.identities[%d]: unknown key %q (allowed: match, tenant, partitions)" $i $k) }}
{{- end }}
{{- end }}
{{- $match := toString (default "" $id.match) }}
{{- if not (regexMatch "^(dns|uri|email|cn):[[:print:]]{1,256}$" $match) }}
{{- fail (printf "rest.mtls.identities[%d].match %q: must be dns:NAME, uri:URI, email:ADDRESS or cn:NAME" $i $match) }}
{{- end }}
{{- if has $match $matches }}
{{- fail (printf "rest.mtls.identities[%d].match %q: listed twice" $i $match) }}
{{- end }}
{{- $matches = append $matches $match }}
{{- if not (regexMatch $nameRule (toString (default "" $id.tenant))) }}
{{- fail (printf "rest.mtls.identities[%d].tenant %q: required, 1-64 characters of [A-Za-z0-9._-]" $i (toString (default "" $id.tenant))) }}
{{- end }}
{{- range $k, $pn := $id.partitions | default list }}
{{- if not (has (toString $pn) $names) }}
{{- fail (printf "rest.mtls.identities[%d].partitions[%d] %q: not in rest.partitions" $i $k (toString $pn)) }}
{{- end }}
{{- end }}
{{- end }}
{{- else if $identities }}
{{- fail "rest.mtls.identities: only with rest.auth mtls (rest.auth is jwt)" }}
{{- end }}
{{- /* Limits and the drain. */}}
{{- range $name, $bounds := dict "requestsPerSecond" (list 1 4294967295) "burst" (list 1 4294967295) "authFailuresPerSecond" (list 1 4294967295) "authFailureBurst" (list 1 4294967295) "maxBodyBytes" (list 1024 1048576) "maxConnections" (list 1 1000000) "requestTimeoutMs" (list 100 600000) "idleTimeoutMs" (list 100 3600000) }}
{{- $v := int64 (index $l $name) }}
{{- if or (lt $v (index $bounds 0 | int64)) (gt $v (index $bounds 1 | int64)) }}
{{- fail (printf "rest.limits.%s (%d): must be %d..%d" $name $v (index $bounds 0 | int64) (index $bounds 1 | int64)) }}
{{- end }}
{{- end }}
{{- $drain := int64 $r.drainTimeoutSecs }}
{{- if or (lt $drain 0) (gt $drain 3600) }}
{{- fail (printf "rest.drainTimeoutSecs (%d): must be 0..3600" $drain) }}
{{- end }}
{{- $preStop := int64 $r.preStopSleepSeconds }}
{{- $grace := add $preStop $drain 10 }}
{{- $given := $r.terminationGracePeriodSeconds }}
{{- if and (not (kindIs "invalid" $given)) (ne (toString $given) "") }}
{{- $grace = int64 $given }}
{{- if le $grace (add $preStop $drain) }}
{{- fail (printf "rest.terminationGracePeriodSeconds (%d) must exceed rest.preStopSleepSeconds (%d) + rest.drainTimeoutSecs (%d), or the drain is cut short" $grace $preStop $drain) }}
{{- end }}
{{- end }}
{{- if not (has (toString $r.service.type) (list "ClusterIP" "NodePort" "LoadBalancer")) }}
{{- fail (printf "rest.service.type %q: must be ClusterIP, NodePort or LoadBalancer" (toString $r.service.type)) }}
{{- end }}
auth: {{ $auth }}
listen: {{ include "hsmgate.socketAddr" (list $ip $port) | toJson }}
admin: {{ include "hsmgate.socketAddr" (list $ip $adminPort) | toJson }}
configDir: {{ $dir | toJson }}
certFile: {{ printf "%s/tls/tls.crt" $dir | toJson }}
keyFile: {{ printf "%s/tls/tls.key" $dir | toJson }}
clientCaFile: {{ $clientCaFile | toJson }}
jwksFile: {{ $jwksFile | toJson }}
jwksCaFile: {{ $jwksCaFile | toJson }}
jwksUrl: {{ $jwksUrl | toJson }}
jwksPort: {{ $jwksPort }}
algorithms: {{ $algorithms | toJson }}
tlsSources: {{ $tlsSources | toJson }}
jwtSources: {{ $jwtSources | toJson }}
partitions: {{ $partitions | toJson }}
terminationGracePeriodSeconds: {{ $grace }}
{{- end }}

{{/*
rest.toml (docs/REST.md section 3), from rest.* and the checked settings. Every path
is absolute: the files are where the Deployment mounts them.
*/}}
{{- define "hsmgate.rest.toml" -}}
{{- $r := .Values.rest }}
{{- $s := include "hsmgate.rest" . | fromYaml }}
{{- $j := $r.jwt }}
{{- $l := $r.limits }}
# rest.toml, rendered by the hsmgate Helm chart from the release's values (rest.*).
# Fields: docs/REST.md section 3.2. Check it with `hsmgate-rest --config FILE --check`.
drain_timeout_secs = {{ int64 $r.drainTimeoutSecs }}

[[listeners]]
name = "https"
address = {{ $s.listen | toJson }}
auth = {{ $s.auth | toJson }}

# rest.tls: Secret {{ $r.tls.secretName }}{{ if $s.clientCaFile }}, and the client CA from Secret {{ $r.tls.clientCaSecret }}{{ end }}.
[tls]
cert_file = {{ $s.certFile | toJson }}
key_file = {{ $s.keyFile | toJson }}
{{- with $s.clientCaFile }}
client_ca_file = {{ . | toJson }}
{{- end }}
{{- if eq $s.auth "jwt" }}

[jwt]
{{- if $s.jwksUrl }}
jwks_url = {{ $s.jwksUrl | toJson }}
jwks_refresh_secs = {{ int64 $j.jwksRefreshSecs }}
{{- with $s.jwksCaFile }}
jwks_ca_file = {{ . | toJson }}
{{- end }}
{{- else }}
# ConfigMap {{ $j.jwksConfigMap }}, re-read when it changes.
jwks_file = {{ $s.jwksFile | toJson }}
{{- end }}
issuer = {{ toString $j.issuer | toJson }}
audience = {{ toString $j.audience | toJson }}
{{- with $s.algorithms }}
algorithms = {{ . | toJson }}
{{- end }}
leeway_secs = {{ int64 $j.leewaySecs }}
tenant_claim = {{ toString $j.tenantClaim | toJson }}
partitions_claim = {{ toString $j.partitionsClaim | toJson }}
max_token_bytes = {{ int64 $j.maxTokenBytes }}
{{- else }}
{{- range $id := $r.mtls.identities }}

[[mtls.identities]]
match = {{ toString $id.match | toJson }}
tenant = {{ toString $id.tenant | toJson }}
partitions = {{ $id.partitions | default list | toJson }}
{{- end }}
{{- end }}
{{- range $p := $s.partitions }}

# Secret {{ $p.secretName }}, mounted at {{ $p.mountPath }}.
[[partitions]]
name = {{ $p.name | toJson }}
client_config = {{ $p.clientConfig | toJson }}
sessions = {{ int64 $p.sessions }}
{{- end }}

[limits]
requests_per_second = {{ int64 $l.requestsPerSecond }}
burst = {{ int64 $l.burst }}
max_body_bytes = {{ int64 $l.maxBodyBytes }}
max_connections = {{ int64 $l.maxConnections }}
request_timeout_ms = {{ int64 $l.requestTimeoutMs }}
idle_timeout_ms = {{ int64 $l.idleTimeoutMs }}
auth_failures_per_second = {{ int64 $l.authFailuresPerSecond }}
auth_failure_burst = {{ int64 $l.authFailureBurst }}

# Plain HTTP: /metrics, /healthz, /readyz (the kubelet's probes and Prometheus).
[admin]
address = {{ $s.admin | toJson }}
{{- end }}
