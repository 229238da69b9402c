{{/* Names and labels shared by every manifest. */}}

{{- define "flock.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flock.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "flock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "flock.labels" -}}
{{ include "flock.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "flock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "flock.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "flock.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The port of `listen` (host:port), for the probes and the metrics Service. */}}
{{- define "flock.metricsPort" -}}
{{- regexFind "[0-9]+$" .Values.listen -}}
{{- end -}}

{{/* Fixed paths inside the pod (not values: nothing outside the pod sees them). */}}
{{- define "flock.configDir" -}}/etc/flock{{- end -}}
{{- define "flock.birdConfigPath" -}}/etc/bird/bird.conf{{- end -}}
{{- define "flock.birdSocket" -}}/run/bird/bird.ctl{{- end -}}

{{/* Where the agent container finds the peers' BGP passwords (one projected Secret volume). */}}
{{- define "flock.bgpPasswordDir" -}}/etc/flock-bgp-passwords{{- end -}}

{{/* "true" when some peer has a passwordSecret (the DaemonSet then mounts them). */}}
{{- define "flock.bgpPasswords" -}}
{{- range (.Values.bird.peers | default list) -}}
{{- if .passwordSecret -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/*
"true" when some peer runs BFD (bird.bfd.enabled, or the peer's own bfd.enabled over it):
BIRD's BFD sockets then need a capability (see the DaemonSet's bird container).
*/}}
{{- define "flock.bfdInUse" -}}
{{- $default := .Values.bird.bfd.enabled -}}
{{- range (.Values.bird.peers | default list) -}}
{{- $on := $default -}}
{{- if and .bfd (hasKey .bfd "enabled") -}}
{{- $on = .bfd.enabled -}}
{{- end -}}
{{- if $on -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/*
flock-agent's config, from the values. routerId may be the placeholder `fromNodeIP`,
which the render-config init container replaces with the node's IPv4 address (the
agent's loader needs a concrete address and does not expand variables).
*/}}
{{- define "flock.agentConfig" -}}
{{- /* A peer's passwordSecret {name, key} becomes passwordFile: the file the kubelet
       mounts from that Secret key (peer-<index> in flock.bgpPasswordDir). The password
       itself never reaches the ConfigMap. */ -}}
{{- $peers := list -}}
{{- range $index, $peer := (.Values.bird.peers | default list) -}}
{{- $agentPeer := omit $peer "passwordSecret" -}}
{{- if $peer.passwordSecret -}}
{{- $_ := set $agentPeer "passwordFile" (printf "%s/peer-%d" (include "flock.bgpPasswordDir" $) $index) -}}
{{- end -}}
{{- $peers = append $peers $agentPeer -}}
{{- end -}}
{{- $bird := dict
    "configPath" (include "flock.birdConfigPath" .)
    "socket" (include "flock.birdSocket" .)
    "asn" .Values.bird.asn
    "routerId" .Values.bird.routerId
    "peers" $peers
    "bfd" .Values.bird.bfd
    "timeoutSeconds" .Values.bird.timeoutSeconds -}}
{{- $config := dict
    "stateDir" .Values.stateDir
    "cniSocket" .Values.cniSocket
    "anycastPools" (.Values.anycastPools | default list)
    "routeProtocol" .Values.routeProtocol
    "withdrawnLingerSeconds" .Values.withdrawnLingerSeconds
    "lastResortPrepend" .Values.lastResortPrepend
    "tickSeconds" .Values.tickSeconds
    "resyncSeconds" .Values.resyncSeconds
    "maxAnycastPerPod" .Values.maxAnycastPerPod
    "datapath" .Values.datapath
    "listen" .Values.listen
    "procPath" (ternary "/proc" "/host/proc" .Values.agent.privileged)
    "bird" $bird -}}
{{- if .Values.lastResortRouteProtocol -}}
{{- $_ := set $config "lastResortRouteProtocol" .Values.lastResortRouteProtocol -}}
{{- end -}}
{{- if .Values.withdrawnRouteProtocol -}}
{{- $_ := set $config "withdrawnRouteProtocol" .Values.withdrawnRouteProtocol -}}
{{- end -}}
{{- if .Values.podCIDRs -}}
{{- $_ := set $config "podCIDRs" .Values.podCIDRs -}}
{{- end -}}
{{- if .Values.podCIDRCommunities -}}
{{- $_ := set $config "podCIDRCommunities" .Values.podCIDRCommunities -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
