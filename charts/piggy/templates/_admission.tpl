{{/* The namespaces the webhook and the admission policy cover: every
namespace except kube-system, the release namespace and
webhook.excludeNamespaces, narrowed by webhook.namespaceSelector. */}}
{{- define "piggy.webhook.namespaceSelector" -}}
{{- $w := .Values.webhook -}}
{{- $excluded := concat (list "kube-system" .Release.Namespace) ($w.excludeNamespaces | default list) | uniq -}}
{{- with $w.namespaceSelector.matchLabels }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      {{- toYaml $excluded | nindent 6 }}
  {{- with $w.namespaceSelector.matchExpressions }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The MutatingWebhookConfiguration. Arguments: root, caBundle (PEM; empty
in cert-manager mode, where cainjector fills it). Generated mode renders it
from tls-generated.yaml so that caBundle is the CA rendered there. */}}
{{- define "piggy.webhook" -}}
{{- $root := .root }}
{{- $w := $root.Values.webhook }}
{{- $args := dict "root" $root "component" "admission-gateway" }}
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {{ include "piggy.name" $args }}
  labels:
    {{- include "piggy.labels" $args | nindent 4 }}
  {{- if eq $root.Values.global.tls.mode "cert-manager" }}
  annotations:
    # cert-manager's cainjector keeps caBundle equal to the certificate's CA.
    cert-manager.io/inject-ca-from: {{ printf "%s/%s" $root.Release.Namespace (include "piggy.name" $args) }}
  {{- end }}
webhooks:
  - name: pods.piggysec.com
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: {{ $w.failurePolicy }}
    timeoutSeconds: {{ $w.timeoutSeconds }}
    reinvocationPolicy: {{ $w.reinvocationPolicy }}
    matchPolicy: Equivalent
    clientConfig:
      service:
        name: {{ include "piggy.name" $args }}
        namespace: {{ $root.Release.Namespace }}
        path: /mutate
        port: 443
      {{- with .caBundle }}
      caBundle: {{ b64enc . }}
      {{- end }}
    rules:
      - apiGroups: [""]
        apiVersions: [v1]
        operations: [CREATE]
        resources: [pods]
        scope: Namespaced
    namespaceSelector:
      {{- include "piggy.webhook.namespaceSelector" $root | trim | nindent 6 }}
    {{- with $w.objectSelector }}
    objectSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- if $w.annotatedPodsOnly }}
    matchConditions:
      # Only pods that carry a piggysec.com/ annotation reach the gateway; the
      # rest never pay for a webhook call. Turn off (webhook.annotatedPodsOnly)
      # when cluster-wide defaults must apply to pods without annotations.
      - name: has-piggy-annotation
        expression: >-
          has(object.metadata.annotations) &&
          object.metadata.annotations.exists(k, k.startsWith('piggysec.com/'))
    {{- end }}
{{- end -}}
