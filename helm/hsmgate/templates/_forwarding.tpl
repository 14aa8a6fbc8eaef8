{{/*
config.forwarding, the pools' forwarding, and what kernel forwarding needs of the gateway
container, checked, as YAML:
  mode             splice, copy or kernel
  kernel           kernel forwarding is used: config.forwarding.mode is kernel, or a pool's
                   forwarding (config.pools[i].forwarding) is, which makes the gateway load
                   the BPF program as well; the container gets the capabilities BPF and
                   NET_ADMIN
  by               what asks for kernel forwarding, for comments and messages:
                   "config.forwarding.mode kernel", or (mode not kernel) the pools', e.g.
                   "config.pools[1].forwarding kernel"; "" when kernel is false
  maxSessions      forwarding.kernel_max_sessions (1..1048576)
  budget           forwarding.kernel_budget, bytes (16384..67108864)
  asRoot           the gateway container runs as uid 0 (its securityContext, else the
                   pod's; the image's own user is 65532): gateway.key is then mounted
                   0400, since the gateway refuses a key file of its own that its group
                   may read (0440 with group fsGroup is for the non-root user)
  securityContext  the gateway container's: securityContext, and with kernel forwarding
                   capabilities.add BPF and NET_ADMIN, and with
                   config.forwarding.kernelRunAsRoot runAsUser 0 and runAsNonRoot false
It refuses, by value name, what the gateway would refuse at start
(gateway/src/control/config.rs, ForwardingConfig), config.forwarding.kernelRunAsRoot
without kernel forwarding, and kernel forwarding in a container that does not run as
root: Kubernetes grants no ambient capabilities, so for the non-root user the added
capabilities are never effective and the gateway would only log that it splices. A
pool's forwarding other than splice, copy or kernel is refused by hsmgate.gatewayToml
(_config.tpl); here only "kernel" counts. Pools in config.extraToml are not seen.
*/}}
{{- define "hsmgate.forwarding" -}}
{{- $f := .Values.config.forwarding }}
{{- $mode := toString $f.mode }}
{{- if not (has $mode (list "splice" "copy" "kernel")) }}
{{- fail (printf "config.forwarding.mode %q: must be splice, copy or kernel" $mode) }}
{{- end }}
{{- $kernelPools := list }}
{{- if kindIs "slice" .Values.config.pools }}
{{- range $i, $p := .Values.config.pools }}
{{- if and (kindIs "map" $p) (eq (toString $p.forwarding) "kernel") }}
{{- $kernelPools = append $kernelPools (printf "config.pools[%d].forwarding" $i) }}
{{- end }}
{{- end }}
{{- end }}
{{- $kernel := or (eq $mode "kernel") (gt (len $kernelPools) 0) }}
{{- $by := "" }}
{{- $spliced := "every session" }}
{{- $instead := "use config.forwarding.mode splice" }}
{{- if eq $mode "kernel" }}
{{- $by = "config.forwarding.mode kernel" }}
{{- else if $kernel }}
{{- $by = printf "%s kernel" (join ", " $kernelPools) }}
{{- $spliced = "the sessions of those pools" }}
{{- $instead = printf "set %s to splice" (join " and " $kernelPools) }}
{{- end }}
{{- $maxSessions := int64 $f.kernel_max_sessions }}
{{- if or (lt $maxSessions 1) (gt $maxSessions 1048576) }}
{{- fail (printf "config.forwarding.kernel_max_sessions (%d): must be 1..1048576" $maxSessions) }}
{{- end }}
{{- $budget := int64 $f.kernel_budget }}
{{- if or (lt $budget 16384) (gt $budget 67108864) }}
{{- fail (printf "config.forwarding.kernel_budget (%d): must be 16384..67108864 bytes" $budget) }}
{{- end }}
{{- $root := $f.kernelRunAsRoot }}
{{- if not (kindIs "bool" $root) }}
{{- fail (printf "config.forwarding.kernelRunAsRoot %q: must be true or false" (toString $root)) }}
{{- end }}
{{- if and $root (not $kernel) }}
{{- fail (printf "config.forwarding.kernelRunAsRoot: only with config.forwarding.mode kernel or a pool's forwarding kernel (mode is %q, and no pool's forwarding is kernel): nothing else needs the gateway to run as root" $mode) }}
{{- end }}
{{- $sc := deepCopy (default dict .Values.securityContext) }}
{{- if $kernel }}
{{- $caps := deepCopy (default dict $sc.capabilities) }}
{{- $add := list }}
{{- range (default list $caps.add) }}
{{- $add = append $add . }}
{{- end }}
{{- range (list "BPF" "NET_ADMIN") }}
{{- if not (has . $add) }}
{{- $add = append $add . }}
{{- end }}
{{- end }}
{{- $_ := set $caps "add" $add }}
{{- $_ := set $sc "capabilities" $caps }}
{{- if $root }}
{{- $_ := set $sc "runAsUser" 0 }}
{{- $_ := set $sc "runAsNonRoot" false }}
{{- end }}
{{- end }}
{{- $psc := default dict .Values.podSecurityContext }}
{{- $uid := "65532 (the image's user)" }}
{{- if not (kindIs "invalid" $sc.runAsUser) }}
{{- $uid = toString (int64 $sc.runAsUser) }}
{{- else if not (kindIs "invalid" $psc.runAsUser) }}
{{- $uid = toString (int64 $psc.runAsUser) }}
{{- end }}
{{- $nonRoot := false }}
{{- if kindIs "bool" $sc.runAsNonRoot }}
{{- $nonRoot = $sc.runAsNonRoot }}
{{- else if kindIs "bool" $psc.runAsNonRoot }}
{{- $nonRoot = $psc.runAsNonRoot }}
{{- end }}
{{- $asRoot := and (eq $uid "0") (not $nonRoot) }}
{{- if and $kernel (not $asRoot) }}
{{- fail (printf "%s: the gateway container runs as user %s with runAsNonRoot %t, and the capabilities BPF and NET_ADMIN the chart adds are effective only for root (Kubernetes grants no ambient capabilities), so the BPF program would not load and %s would be spliced. Set config.forwarding.kernelRunAsRoot: true to run the gateway container as root (uid 0, every other capability still dropped; README.md, \"Kernel forwarding\"), or %s" $by $uid $nonRoot $spliced $instead) }}
{{- end }}
mode: {{ $mode | toJson }}
kernel: {{ $kernel }}
by: {{ $by | toJson }}
maxSessions: {{ $maxSessions }}
budget: {{ $budget }}
asRoot: {{ $asRoot }}
securityContext: {{ $sc | toJson }}
{{- end }}
