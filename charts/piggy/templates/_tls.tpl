{{/*
TLS material of global.tls.mode=generated.

One CA (Secret <prefix>-ca) signs one certificate per service (Secret
<prefix>-<component>-tls with tls.crt, tls.key and ca.crt; server and client
usage, so the same identity serves and calls over mTLS).

Nothing is regenerated on an upgrade: every template reads the live Secrets
with `lookup` and reuses them while they are valid. A certificate is (re)issued
only when its Secret is missing or unreadable, its CA changed, its DNS names
changed, or fewer than renewBeforeDays remain (the expiry is kept in the
piggysec.com/not-after annotation, as Unix seconds, because templates cannot
parse certificates). Without a cluster (helm template, --dry-run=client),
lookup finds nothing and fresh material is rendered.

The Deployments put "checksum/tls" (the hash of the CA and their certificate)
on their pod template, so pods restart when their certificate changes (the
services also reload their TLS files every 10s), and only then.

Each piece of material is decided once per render and memoized in the
render's .Release map, which Helm shares between the chart and its subcharts,
so the Secrets, the webhook's caBundle and the checksums all see the same
(possibly freshly generated) certificates. Should a Helm version stop sharing
that map, the Secrets and the caBundle (rendered together in
tls-generated.yaml) stay consistent; only the checksums after a fresh
generation would differ from the material once (libs/deploytest checks this).
*/}}

{{/* DNS names of a component's certificate, as a JSON list. */}}
{{- define "piggy.tls.dnsNames" -}}
{{- $name := include "piggy.name" . -}}
{{- $ns := .root.Release.Namespace -}}
{{- $list := list $name (printf "%s.%s" $name $ns) (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.%s" $name $ns .root.Values.global.clusterDomain) -}}
{{- range (.extra | default list) }}{{ $list = append $list . }}{{ end -}}
{{- toJson $list -}}
{{- end -}}

{{/* Name of the CA Secret (both modes). */}}
{{- define "piggy.tls.caSecretName" -}}
{{- printf "%s-ca" (include "piggy.prefix" .) -}}
{{- end -}}

{{/* The CA to use, as YAML {cert, key, notAfter (Unix seconds, a string:
numbers would come back from fromYaml as floats), fresh}: the live one while it
is valid, else a new ECDSA P-256 CA. */}}
{{- define "piggy.tls.ca" -}}
{{- if not (hasKey .Release "piggyTLSCA") -}}
{{- $g := .Values.global.tls.generated -}}
{{- $now := now | unixEpoch | atoi -}}
{{- $renewAt := add $now (mul (int $g.renewBeforeDays) 86400) -}}
{{- $s := lookup "v1" "Secret" .Release.Namespace (include "piggy.tls.caSecretName" .) -}}
{{- $out := dict -}}
{{- if and $s $s.data (index $s.data "tls.crt") (index $s.data "tls.key") -}}
{{- $notAfter := index ($s.metadata.annotations | default dict) "piggysec.com/not-after" | default "0" | atoi -}}
{{- if gt $notAfter $renewAt -}}
{{- $out = dict "cert" (index $s.data "tls.crt" | b64dec) "key" (index $s.data "tls.key" | b64dec) "notAfter" (printf "%d" $notAfter) "fresh" false -}}
{{- end -}}
{{- end -}}
{{- if not $out -}}
{{- $key := genPrivateKey "ecdsa" -}}
{{- $ca := genCAWithKey (printf "%s CA (%s)" (include "piggy.prefix" .) .Release.Namespace) (int $g.caValidityDays) $key -}}
{{- $out = dict "cert" $ca.Cert "key" $ca.Key "notAfter" (printf "%d" (add $now (mul (int $g.caValidityDays) 86400))) "fresh" true -}}
{{- end -}}
{{- $_ := set .Release "piggyTLSCA" (toYaml $out) -}}
{{- end -}}
{{- index .Release "piggyTLSCA" -}}
{{- end -}}

{{/* A component's certificate, as YAML {cert, key, notAfter, dnsNames, fresh}:
the live one while it is valid for this CA and these names, else a new one.
Arguments: root, component, extra (extra DNS names), ca (from piggy.tls.ca). */}}
{{- define "piggy.tls.component" -}}
{{- $memo := printf "piggyTLS-%s" .component -}}
{{- if not (hasKey .root.Release $memo) -}}
{{- $g := .root.Values.global.tls.generated -}}
{{- $now := now | unixEpoch | atoi -}}
{{- $renewAt := add $now (mul (int $g.renewBeforeDays) 86400) -}}
{{- $dns := include "piggy.tls.dnsNames" . | fromJsonArray -}}
{{- $dnsSum := toJson $dns | sha256sum | trunc 16 -}}
{{- $s := lookup "v1" "Secret" .root.Release.Namespace (include "piggy.tlsSecretName" .) -}}
{{- $out := dict -}}
{{- if and (not .ca.fresh) $s $s.data (index $s.data "tls.crt") (index $s.data "tls.key") -}}
{{- $ann := $s.metadata.annotations | default dict -}}
{{- $notAfter := index $ann "piggysec.com/not-after" | default "0" | atoi -}}
{{- $sameCA := eq (index $s.data "ca.crt" | default "" | b64dec) .ca.cert -}}
{{- $sameNames := eq (index $ann "piggysec.com/dns-names" | default "") $dnsSum -}}
{{- if and $sameCA $sameNames (gt $notAfter $renewAt) -}}
{{- $out = dict "cert" (index $s.data "tls.crt" | b64dec) "key" (index $s.data "tls.key" | b64dec) "notAfter" (printf "%d" $notAfter) "fresh" false -}}
{{- end -}}
{{- end -}}
{{- if not $out -}}
{{- $ca := buildCustomCert (b64enc .ca.cert) (b64enc .ca.key) -}}
{{- $key := genPrivateKey "ecdsa" -}}
{{- $c := genSignedCertWithKey (first $dns) (list) $dns (int $g.certValidityDays) $ca $key -}}
{{- $out = dict "cert" $c.Cert "key" $c.Key "notAfter" (printf "%d" (add $now (mul (int $g.certValidityDays) 86400))) "fresh" true -}}
{{- end -}}
{{- $_ := set $out "dnsNames" $dnsSum -}}
{{- $_ := set .root.Release $memo (toYaml $out) -}}
{{- end -}}
{{- index .root.Release $memo -}}
{{- end -}}

{{/* The checksum/tls pod annotation of a component (generated mode only). */}}
{{- define "piggy.tls.checksum" -}}
{{- if eq .root.Values.global.tls.mode "generated" -}}
{{- $ca := include "piggy.tls.ca" .root | fromYaml -}}
{{- $c := include "piggy.tls.component" (dict "root" .root "component" .component "extra" .extra "ca" $ca) | fromYaml -}}
checksum/tls: {{ print $ca.cert $c.cert | sha256sum | quote }}
{{- end -}}
{{- end -}}
