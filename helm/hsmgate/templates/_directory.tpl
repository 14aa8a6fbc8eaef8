{{/*
The directory link, checked, as YAML (gateway.toml's [directory], docs/OPERATIONS.md
§4.5 and §15):
  https               the endpoint is https:// (else http://, with allowPlaintext)
  port                the endpoint's port (443 for https://, 80 for http:// without one)
  allowPlaintext, systemRoots, serverName
  mountPath           where the TLS volume is mounted ("" without TLS files)
  caFile, certFile, keyFile   absolute paths of the mounted files ("" when not used)
  sources             the projected volume's sources: the CA bundle and the client
                      certificate and key, from Secrets or a ConfigMap
The files are mounted as a whole volume, never with subPath: only then does the kubelet
update them in place when a Secret changes, and the gateway re-reads them within 2 s
of a change (no checksum annotation, no restart).
It refuses, by value name, what the gateway would refuse at start
(gateway/src/config.rs, DirectoryConfig::validate), and an https:// endpoint with no CA.
*/}}
{{- define "hsmgate.directory" -}}
{{- $d := .Values.config.directory }}
{{- $t := $d.tls | default dict }}
{{- $endpoint := toString $d.endpoint }}
{{- if not $endpoint }}
{{- fail "config.directory.endpoint is required: \"https://host:port\" of the directory's gRPC endpoint, for example \"https://hsmgate-directory.hsm.svc:7100\"" }}
{{- end }}
{{- range $name, $v := dict "config.directory.allowPlaintext" $d.allowPlaintext "config.directory.systemRoots" $d.systemRoots }}
{{- if not (kindIs "bool" $v) }}
{{- fail (printf "%s %q: must be true or false" $name (toString $v)) }}
{{- end }}
{{- end }}
{{- /* The TOML names the chart renders itself would otherwise pass through (tomlOtherKeys). */}}
{{- range $key, $value := dict "allow_plaintext" "allowPlaintext" "system_roots" "systemRoots" "server_name" "serverName" "ca_file" "tls.caSecret, tls.caConfigMap or tls.secretName" "client_cert_file" "tls.secretName" "client_key_file" "tls.secretName" }}
{{- if hasKey $d $key }}
{{- fail (printf "config.directory.%s: the chart renders it; set config.directory.%s instead" $key $value) }}
{{- end }}
{{- end }}
{{- $https := hasPrefix "https://" $endpoint }}
{{- if not (or $https (hasPrefix "http://" $endpoint)) }}
{{- fail (printf "config.directory.endpoint %q: must be https://host:port (or http://host:port with config.directory.allowPlaintext=true)" $endpoint) }}
{{- end }}
{{- $rest := regexReplaceAll "^https?://" $endpoint "" | trimSuffix "/" }}
{{- if or (not $rest) (regexMatch "\\s" $rest) }}
{{- fail (printf "config.directory.endpoint %q: must be https://host:port (or http://host:port with config.directory.allowPlaintext=true)" $endpoint) }}
{{- end }}
{{- if contains "@" $endpoint }}
{{- fail (printf "config.directory.endpoint %q: must not carry credentials (user:password@): /config and the log show it" $endpoint) }}
{{- end }}
{{- $port := regexFind ":[0-9]+$" $rest | trimPrefix ":" | default (ternary "443" "80" $https) | int64 }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- fail (printf "config.directory.endpoint %q: port %d is not 1..65535" $endpoint $port) }}
{{- end }}
{{- $serverName := toString (default "" $d.serverName) }}
{{- $keyRule := "^[-._a-zA-Z0-9]{1,253}$" }}
{{- range $name := list "secretName" "caSecret" "caConfigMap" }}
{{- $v := toString (default "" (index $t $name)) }}
{{- if and $v (not (regexMatch "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$" $v)) }}
{{- fail (printf "config.directory.tls.%s %q: must be the name of a %s in the release namespace" $name $v (ternary "ConfigMap" "Secret" (eq $name "caConfigMap"))) }}
{{- end }}
{{- end }}
{{- $secret := toString (default "" $t.secretName) }}
{{- $caSecret := toString (default "" $t.caSecret) }}
{{- $caConfigMap := toString (default "" $t.caConfigMap) }}
{{- $caKey := toString (default "" $t.caKey) }}
{{- $certKey := toString (default "" $t.certKey) }}
{{- $keyKey := toString (default "" $t.keyKey) }}
{{- range $name, $v := dict "caKey" $caKey "certKey" $certKey "keyKey" $keyKey }}
{{- if and $v (not (regexMatch $keyRule $v)) }}
{{- fail (printf "config.directory.tls.%s %q: must be a key of a Secret or ConfigMap ([-._a-zA-Z0-9]+)" $name $v) }}
{{- end }}
{{- end }}
{{- if not $https }}
{{- if not $d.allowPlaintext }}
{{- fail (printf "config.directory.endpoint %q: http:// sends the directory's answers (the grants) in clear, and anyone on the path can forge them. Use https:// with config.directory.tls (the CA that signs the directory's certificate), or set config.directory.allowPlaintext=true to accept the risk" $endpoint) }}
{{- end }}
{{- range $name, $v := dict "serverName" $serverName "systemRoots" $d.systemRoots "tls.secretName" $secret "tls.caSecret" $caSecret "tls.caConfigMap" $caConfigMap }}
{{- if $v }}
{{- fail (printf "config.directory.%s: only with an https:// endpoint (config.directory.endpoint is %q)" $name $endpoint) }}
{{- end }}
{{- end }}
https: false
port: {{ $port }}
allowPlaintext: true
systemRoots: false
serverName: ""
mountPath: ""
caFile: ""
certFile: ""
keyFile: ""
sources: []
{{- else }}
{{- if $d.allowPlaintext }}
{{- fail (printf "config.directory.allowPlaintext: only with an http:// endpoint (config.directory.endpoint is %q); the gateway refuses it with https://" $endpoint) }}
{{- end }}
{{- if and $serverName (not (or (regexMatch "^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\\.?$" $serverName) (regexMatch "^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$" $serverName))) }}
{{- fail (printf "config.directory.serverName %q: must be a DNS name or an IP address (the name the directory's certificate carries)" $serverName) }}
{{- end }}
{{- if and $caSecret $caConfigMap }}
{{- fail "config.directory.tls.caSecret and config.directory.tls.caConfigMap: set one of them, not both" }}
{{- end }}
{{- /* Mutual TLS: the client certificate and its key, from tls.secretName. */}}
{{- $client := and (ne $secret "") (or (ne $certKey "") (ne $keyKey "")) }}
{{- if and $client (not $keyKey) }}
{{- fail (printf "config.directory.tls.keyKey is required with config.directory.tls.certKey %q: the key of the client certificate's private key in Secret %q (tls.key for cert-manager); mutual TLS needs both" $certKey $secret) }}
{{- end }}
{{- if and $client (not $certKey) }}
{{- fail (printf "config.directory.tls.certKey is required with config.directory.tls.keyKey %q: the key of the client certificate in Secret %q (tls.crt for cert-manager); mutual TLS needs both" $keyKey $secret) }}
{{- end }}
{{- $caFrom := "" }}
{{- if $caSecret }}{{ $caFrom = "caSecret" }}
{{- else if $caConfigMap }}{{ $caFrom = "caConfigMap" }}
{{- else if and $secret $caKey }}{{ $caFrom = "secretName" }}
{{- end }}
{{- if and $caFrom (not $caKey) }}
{{- fail (printf "config.directory.tls.caKey is required with config.directory.tls.%s: the key of the CA bundle (ca.crt)" $caFrom) }}
{{- end }}
{{- if and (not $caFrom) (not $d.systemRoots) }}
{{- fail (printf "config.directory.tls.secretName is required with the https:// endpoint %q: a Secret whose %q holds the CA that signs the directory's certificate (cert-manager's Secret: ca.crt, and tls.crt + tls.key for mutual TLS); or config.directory.tls.caSecret / caConfigMap for the CA alone, or config.directory.systemRoots=true for a publicly trusted directory" $endpoint (default "ca.crt" $caKey)) }}
{{- end }}
{{- if and $secret (not $client) (ne $caFrom "secretName") }}
{{- fail (printf "config.directory.tls.secretName %q: supplies nothing (tls.certKey and tls.keyKey are empty, and the CA comes from tls.%s)" $secret $caFrom) }}
{{- end }}
{{- $mount := "/etc/hsmgate-tls/directory" }}
{{- $sources := list }}
{{- $caItem := dict "key" $caKey "path" "ca.crt" }}
{{- if $caSecret }}
{{- $sources = append $sources (dict "secret" (dict "name" $caSecret "items" (list $caItem))) }}
{{- else if $caConfigMap }}
{{- $sources = append $sources (dict "configMap" (dict "name" $caConfigMap "items" (list $caItem))) }}
{{- end }}
{{- if $secret }}
{{- $items := list }}
{{- if eq $caFrom "secretName" }}
{{- $items = append $items $caItem }}
{{- end }}
{{- if $client }}
{{- $items = append $items (dict "key" $certKey "path" "tls.crt") }}
{{- $items = append $items (dict "key" $keyKey "path" "tls.key" "mode" 288) }}
{{- end }}
{{- $sources = append $sources (dict "secret" (dict "name" $secret "items" $items)) }}
{{- end }}
https: true
port: {{ $port }}
allowPlaintext: false
systemRoots: {{ $d.systemRoots }}
serverName: {{ $serverName | toJson }}
mountPath: {{ ternary $mount "" (gt (len $sources) 0) | toJson }}
caFile: {{ ternary (printf "%s/ca.crt" $mount) "" (ne $caFrom "") | toJson }}
certFile: {{ ternary (printf "%s/tls.crt" $mount) "" $client | toJson }}
keyFile: {{ ternary (printf "%s/tls.key" $mount) "" $client | toJson }}
sources: {{ $sources | toJson }}
{{- end }}
{{- end }}
