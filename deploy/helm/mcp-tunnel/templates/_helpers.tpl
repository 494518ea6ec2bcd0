{{/* Names. fullname is the release name when it already contains the chart name. */}}
{{- define "mcp-tunnel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mcp-tunnel.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mcp-tunnel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mcp-tunnel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mcp-tunnel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcp-tunnel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The stack pods (proxy + cloudflared): what the Deployment, PDB and NetworkPolicy select. */}}
{{- define "mcp-tunnel.stackSelectorLabels" -}}
{{ include "mcp-tunnel.selectorLabels" . }}
app.kubernetes.io/component: tunnel-stack
{{- end -}}

{{/* Managed mode: the Secret setup writes (the release name, as the official chart). */}}
{{- define "mcp-tunnel.managedSecretName" -}}
{{- .Release.Name -}}
{{- end -}}

{{- define "mcp-tunnel.tokenSecretName" -}}
{{- if .Values.setup.enabled -}}{{ include "mcp-tunnel.managedSecretName" . }}{{- else -}}{{ .Values.external.tunnelTokenSecretName }}{{- end -}}
{{- end -}}

{{- define "mcp-tunnel.certSecretName" -}}
{{- if .Values.setup.enabled -}}{{ include "mcp-tunnel.managedSecretName" . }}{{- else -}}{{ .Values.external.serverCertSecretName }}{{- end -}}
{{- end -}}

{{/* image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "mcp-tunnel.imageRef" -}}
{{- $img := index . 0 -}}
{{- $default := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $default $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* shutdown_timeout (any Go duration the proxy accepts; the schema enforces that) in whole
seconds, rounded up: 1.5s -> 2, 500ms -> 1, 1m30s -> 90. */}}
{{- define "mcp-tunnel.shutdownSeconds" -}}
{{- $d := toString (default "30s" .Values.gateway.config.shutdown_timeout) -}}
{{- $scale := dict "h" 3600.0 "m" 60.0 "s" 1.0 "ms" 0.001 "us" 0.000001 "µs" 0.000001 "μs" 0.000001 "ns" 0.000000001 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9.]+(ns|us|µs|μs|ms|s|m|h)" $d -1 -}}
{{- $unit := regexFind "(ns|us|µs|μs|ms|s|m|h)$" . -}}
{{- $total = addf $total (mulf (float64 (trimSuffix $unit .)) (get $scale $unit)) -}}
{{- end -}}
{{- ceil $total | int -}}
{{- end -}}

{{/* The proxy config: gateway.config with the fields the chart owns forced. */}}
{{- define "mcp-tunnel.proxyConfig" -}}
{{- $cfg := deepCopy .Values.gateway.config -}}
{{- /* Loopback: cloudflared reaches it over the pod's shared network namespace; nothing else may. */ -}}
{{- $_ := set $cfg "listen_addr" "127.0.0.1:8080" -}}
{{- $_ := set $cfg "admin_addr" (printf ":%d" (int .Values.admin.port)) -}}
{{- $tls := deepCopy (default (dict) $cfg.tls) -}}
{{- $_ := set $tls "cert_file" "/data/tls.crt" -}}
{{- $_ := set $tls "key_file" "/data/tls.key" -}}
{{- $_ := set $cfg "tls" $tls -}}
{{- if .Values.setup.enabled -}}
{{- $_ := unset $cfg "tunnel_domain" -}}
{{- else -}}
{{- $_ := required "gateway.config.tunnel_domain is required when setup.enabled is false (External mode)" .Values.gateway.config.tunnel_domain -}}
{{- end -}}
{{- if not $cfg.routes -}}
{{- fail "gateway.config.routes must name at least one route (subdomain: scheme://host:port)" -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The hardened container security context (matches the hardened Compose files). */}}
{{- define "mcp-tunnel.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "mcp-tunnel.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Is the NetworkPolicy for ingress / egress on? networkPolicy.enabled (claude.ai shape) wins when set. */}}
{{- define "mcp-tunnel.npIngress" -}}
{{- $np := .Values.networkPolicy -}}
{{- if kindIs "bool" $np.enabled -}}{{ ternary "true" "" $np.enabled }}{{- else -}}{{ ternary "true" "" $np.ingress.enabled }}{{- end -}}
{{- end -}}

{{- define "mcp-tunnel.npEgress" -}}
{{- $np := .Values.networkPolicy -}}
{{- if kindIs "bool" $np.enabled -}}{{ ternary "true" "" $np.enabled }}{{- else -}}{{ ternary "true" "" $np.egress.enabled }}{{- end -}}
{{- end -}}

{{/* Setup's credentials (env), shared by nothing else: WIF or the API key. */}}
{{- define "mcp-tunnel.setupEnv" -}}
{{- if .Values.api.token }}
- name: API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "mcp-tunnel.fullname" . }}-setup-api-token
      key: api-token
{{- else }}
- name: ANTHROPIC_FEDERATION_RULE_ID
  value: {{ .Values.api.wif.federationRuleId | quote }}
- name: ANTHROPIC_ORGANIZATION_ID
  value: {{ .Values.api.wif.organizationId | quote }}
{{- with .Values.api.wif.workspaceId }}
- name: ANTHROPIC_WORKSPACE_ID
  value: {{ . | quote }}
{{- end }}
- name: ANTHROPIC_IDENTITY_TOKEN_FILE
  value: {{ default "/var/run/secrets/anthropic.com/token" .Values.api.wif.tokenFile | quote }}
{{- end }}
{{- end -}}
