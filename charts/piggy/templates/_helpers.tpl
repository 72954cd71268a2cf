{{/*
Shared templates of the piggy chart and its subcharts. Named templates are
global in Helm, so the subcharts (charts/*) call these with their own context
(their .Values plus .Values.global); the subcharts are therefore installed only
through this chart.

Arguments are passed as dicts: "root" is the calling chart's context, "component"
one of admission-gateway, image-resolver, secret-broker.
*/}}

{{/* Prefix of every object name: global.fullnameOverride or the release name. */}}
{{- define "piggy.prefix" -}}
{{- $g := .Values.global | default dict -}}
{{- default .Release.Name $g.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* <prefix>-<component>. */}}
{{- define "piggy.name" -}}
{{- printf "%s-%s" (include "piggy.prefix" .root) .component -}}
{{- end -}}

{{/* In-cluster host name of a component's Service: <name>.<namespace>.svc */}}
{{- define "piggy.host" -}}
{{- printf "%s.%s.svc" (include "piggy.name" .) .root.Release.Namespace -}}
{{- end -}}

{{/* The Secret holding a component's certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "piggy.tlsSecretName" -}}
{{- printf "%s-%s-tls" (include "piggy.prefix" .root) .component -}}
{{- end -}}

{{/* Labels of every object of a component. */}}
{{- define "piggy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "piggy.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: piggy
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Labels that select a component's pods. */}}
{{- define "piggy.selectorLabels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* An image reference from the global registry/tag and an image block
{repository, registry, tag, digest}. */}}
{{- define "piggy.image" -}}
{{- $g := .root.Values.global.image -}}
{{- $registry := default $g.registry .image.registry -}}
{{- $tag := .image.tag | default $g.tag | default .root.Chart.AppVersion -}}
{{- $ref := printf "%s:%s" .image.repository $tag -}}
{{- if $registry }}{{ $ref = printf "%s/%s" $registry $ref }}{{ end -}}
{{- if .image.digest }}{{ $ref = printf "%s@%s" $ref .image.digest }}{{ end -}}
{{- $ref -}}
{{- end -}}

{{/* The pull policy of a component image. */}}
{{- define "piggy.imagePullPolicy" -}}
{{- .image.pullPolicy | default .root.Values.global.image.pullPolicy | default "IfNotPresent" -}}
{{- end -}}

{{/* The broker URL pods use by default (PIGGY_ADDRESS), or "" for none. */}}
{{- define "piggy.brokerAddress" -}}
{{- $a := index .Values.global.podDefaults "piggy-address" | default "" | toString -}}
{{- if eq $a "auto" -}}
https://{{ include "piggy.host" (dict "root" . "component" "secret-broker") }}
{{- else -}}
{{ $a }}
{{- end -}}
{{- end -}}

{{/* The piggy-env image of the install init container (PIGGY_ENV_IMAGE). */}}
{{- define "piggy.envImage" -}}
{{- $v := index .Values.global.podDefaults "piggy-env-image" | default "" | toString -}}
{{- if $v -}}
{{ $v }}
{{- else -}}
{{ include "piggy.image" (dict "root" . "image" .Values.global.piggyEnvImage) }}
{{- end -}}
{{- end -}}

{{/* Pod-level security context: non-root, RuntimeDefault seccomp; overridable
per service (podSecurityContext). */}}
{{- define "piggy.podSecurityContext" -}}
{{- $d := dict "runAsNonRoot" true "runAsUser" 65532 "runAsGroup" 65532 "fsGroup" 65532 "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- toYaml (mergeOverwrite $d (deepCopy (.Values.podSecurityContext | default dict))) -}}
{{- end -}}

{{/* Container security context: read-only root, no privilege escalation,
every capability dropped; overridable per service (securityContext). */}}
{{- define "piggy.containerSecurityContext" -}}
{{- $d := dict "runAsNonRoot" true "allowPrivilegeEscalation" false "readOnlyRootFilesystem" true "privileged" false "capabilities" (dict "drop" (list "ALL")) "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- toYaml (mergeOverwrite $d (deepCopy (.Values.securityContext | default dict))) -}}
{{- end -}}

{{/* Arguments every service takes (libs/daemon): TLS files, metrics port,
logging, shutdown bound. */}}
{{- define "piggy.commonArgs" -}}
- --tls-cert-file=/etc/piggy/tls/tls.crt
- --tls-key-file=/etc/piggy/tls/tls.key
- --tls-ca-file=/etc/piggy/tls/ca.crt
- --metrics-address=:9090
- --grpc-address=:9443
- --log-level={{ .Values.logLevel | default .Values.global.logLevel }}
- --shutdown-grace={{ .Values.shutdownGrace }}
- --operator-identities={{ include "piggy.name" (dict "root" . "component" "operator") }}
{{- end -}}

{{/* --pull-secret-namespaces of the gateway and the resolver (they must agree):
global.pullSecretNamespaces plus podDefaults.image-pull-secret-namespace. */}}
{{- define "piggy.pullSecretNamespacesArg" -}}
{{- $g := .Values.global -}}
{{- $ns := compact (concat ($g.pullSecretNamespaces | default list) (list (index ($g.podDefaults | default dict) "image-pull-secret-namespace" | default ""))) | uniq -}}
{{- with $ns }}
- --pull-secret-namespaces={{ join "," . }}
{{- end -}}
{{- end -}}

{{/* Environment every service gets: pod identity, OpenTelemetry, DEBUG. */}}
{{- define "piggy.commonEnv" -}}
{{- $g := .root.Values.global -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
# The Go runtime's soft memory limit follows the container's limit, so the
# garbage collector works harder before the kernel would OOM-kill.
- name: GOMEMLIMIT
  valueFrom: {resourceFieldRef: {resource: limits.memory}}
- name: OTEL_SERVICE_NAME
  value: {{ .component | quote }}
{{- $attrs := list "service.namespace=piggy" "k8s.namespace.name=$(POD_NAMESPACE)" "k8s.pod.name=$(POD_NAME)" "k8s.node.name=$(NODE_NAME)" }}
{{- range $k, $v := $g.otlp.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k (toString $v)) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- if $g.otlp.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $g.otlp.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $g.otlp.protocol | quote }}
{{- if not $g.otlp.exportMetrics }}
- name: OTEL_METRICS_EXPORTER
  value: none
{{- end }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $g.otlp.sampler | quote }}
{{- if $g.otlp.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $g.otlp.samplerArg | quote }}
{{- end }}
{{- end }}
{{- if $g.debug }}
- name: DEBUG
  value: "true"
{{- end }}
{{- end -}}

{{/* The cluster-wide pod defaults (global.podDefaults) as env vars named like
the annotations (aws-region → AWS_REGION), with the chart's computed
PIGGY_ADDRESS and PIGGY_ENV_IMAGE; the gateway and the broker both get them. */}}
{{- define "piggy.podDefaultsEnv" -}}
{{- $d := .Values.global.podDefaults -}}
{{- range $name := keys $d | sortAlpha }}
{{- $v := index $d $name | toString }}
{{- if eq $name "piggy-address" }}{{ $v = include "piggy.brokerAddress" $ }}{{ end }}
{{- if eq $name "piggy-env-image" }}{{ $v = include "piggy.envImage" $ }}{{ end }}
{{- if ne $v "" }}
- name: {{ $name | upper | replace "-" "_" }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}
{{- with .Values.global.lockedSettings }}
- name: LOCKED_SETTINGS
  value: {{ join "," . | quote }}
{{- end }}
{{- end -}}

{{/* Ports, probes on the metrics port (plain HTTP /healthz and /readyz). */}}
{{- define "piggy.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* Lifecycle: a short preStop pause so endpoints are removed before SIGTERM
(the native sleep action; the images have no shell). */}}
{{- define "piggy.lifecycle" -}}
{{- if and (gt (int .Values.preStopSleepSeconds) 0) (semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version) -}}
lifecycle:
  preStop:
    sleep: {seconds: {{ .Values.preStopSleepSeconds }}}
{{- end -}}
{{- end -}}

{{/* Default topology spread (zones and nodes, best effort) unless the
service sets topologySpreadConstraints itself ([] renders none). */}}
{{- define "piggy.topologySpread" -}}
{{- $tsc := .root.Values.topologySpreadConstraints -}}
{{- if kindIs "invalid" $tsc -}}
{{- $sel := include "piggy.selectorLabels" . | fromYaml -}}
{{- $tsc = list
  (dict "maxSkew" 1 "topologyKey" "topology.kubernetes.io/zone" "whenUnsatisfiable" "ScheduleAnyway" "labelSelector" (dict "matchLabels" $sel))
  (dict "maxSkew" 1 "topologyKey" "kubernetes.io/hostname" "whenUnsatisfiable" "ScheduleAnyway" "labelSelector" (dict "matchLabels" $sel)) -}}
{{- end -}}
{{- with $tsc }}
topologySpreadConstraints:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod scheduling and common pod spec fields. */}}
{{- define "piggy.podScheduling" -}}
{{- $v := .root.Values -}}
{{- with ($v.priorityClassName | default $v.global.priorityClassName) }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- include "piggy.topologySpread" . }}
{{- end -}}

{{/* The TLS volume of a component. */}}
{{- define "piggy.tlsVolume" -}}
- name: tls
  secret:
    secretName: {{ include "piggy.tlsSecretName" . }}
    defaultMode: 0440
{{- end -}}

{{/* Replica count, or none when an HPA owns it. */}}
{{- define "piggy.replicas" -}}
{{- if not .Values.autoscaling.enabled }}
replicas: {{ .Values.replicaCount }}
{{- end }}
{{- end -}}

{{/* The smallest number of replicas the Deployment runs with. */}}
{{- define "piggy.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end -}}
{{- end -}}

{{/* ServiceAccount of a component. */}}
{{- define "piggy.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create -}}
{{ .root.Values.serviceAccount.name | default (include "piggy.name" .) }}
{{- else -}}
{{ .root.Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{- define "piggy.serviceAccount" -}}
{{- if .root.Values.serviceAccount.create }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "piggy.serviceAccountName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "piggy.labels" . | nindent 4 }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# The token is mounted by the pod spec of the services that call the API.
automountServiceAccountToken: false
{{- end }}
{{- end -}}

{{/* PodDisruptionBudget: keeps at least one pod through voluntary
disruptions. Refuses a minAvailable that would block every drain. */}}
{{- define "piggy.pdb" -}}
{{- $v := .root.Values -}}
{{- if $v.podDisruptionBudget.enabled }}
{{- $min := int (include "piggy.minReplicas" .root) }}
{{- if and (not (kindIs "invalid" $v.podDisruptionBudget.minAvailable)) (ge (int $v.podDisruptionBudget.minAvailable) $min) }}
{{- fail (printf "%s: podDisruptionBudget.minAvailable=%v with %d replica(s) allows no voluntary disruption (node drains would hang); raise replicaCount/autoscaling.minReplicas or use maxUnavailable" .component $v.podDisruptionBudget.minAvailable $min) }}
{{- end }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "piggy.name" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "piggy.labels" . | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" $v.podDisruptionBudget.minAvailable) }}
  minAvailable: {{ $v.podDisruptionBudget.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $v.podDisruptionBudget.maxUnavailable }}
  {{- end }}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "piggy.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* HorizontalPodAutoscaler (optional). */}}
{{- define "piggy.hpa" -}}
{{- $a := .root.Values.autoscaling -}}
{{- if $a.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "piggy.name" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "piggy.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "piggy.name" . }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    {{- with $a.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target: {type: Utilization, averageUtilization: {{ . }}}
    {{- end }}
    {{- with $a.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target: {type: Utilization, averageUtilization: {{ . }}}
    {{- end }}
  {{- with $a.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* ServiceMonitor (optional; Prometheus Operator). */}}
{{- define "piggy.serviceMonitor" -}}
{{- $g := .root.Values.global.serviceMonitor -}}
{{- if or $g.enabled .root.Values.serviceMonitor.enabled }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "piggy.name" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "piggy.labels" . | nindent 4 }}
    {{- with (merge (dict) (.root.Values.serviceMonitor.labels | default dict) ($g.labels | default dict)) }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "piggy.selectorLabels" . | nindent 6 }}
  namespaceSelector:
    matchNames: [{{ .root.Release.Namespace }}]
  endpoints:
    - port: metrics
      path: /metrics
      scheme: http
      interval: {{ .root.Values.serviceMonitor.interval | default $g.interval }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy peers allowed to the gRPC admin port (global.networkPolicy.adminFrom). */}}
{{- define "piggy.netpol.metricsRule" -}}
- ports:
    - {port: metrics, protocol: TCP}
  {{- with .Values.global.networkPolicy.metricsFrom }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
