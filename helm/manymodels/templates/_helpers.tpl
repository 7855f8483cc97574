{{/* Names and labels shared by every template. */}}
{{- define "manymodels.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "manymodels.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: manymodels
{{- end -}}

{{- define "manymodels.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "manymodels.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "manymodels.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "manymodels.image" -}}
{{- $registry := .root.Values.image.registry -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The scorer headless Service, and each StatefulSet pod's stable DNS name. */}}
{{- define "manymodels.scorerService" -}}
{{- printf "%s-scorer" (include "manymodels.fullname" .) -}}
{{- end -}}

{{/* The SRV name of the headless Service's port named http: one record per pod, whose
target is the pod's stable name (the same names as manymodels.scorerNames). */}}
{{- define "manymodels.scorerSrv" -}}
{{- $svc := include "manymodels.scorerService" . -}}
{{- printf "_http._tcp.%s.%s.svc.cluster.local" $svc .Release.Namespace -}}
{{- end -}}

{{- define "manymodels.scorerNames" -}}
{{- $svc := include "manymodels.scorerService" . -}}
{{- $names := list -}}
{{- range $i := until (int .Values.scorer.replicas) -}}
{{- $names = append $names (printf "%s-%d.%s.%s.svc.cluster.local:8001" $svc $i $svc $.Release.Namespace) -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{/* The documented rule (docs/cache.md, "Memory: the budget is a contract, loads included"): RSS <= fixed + budget x 1.1, so the cache
budget is (memory limit - fixedMemoryMiB) / 1.1. */}}
{{- define "manymodels.cacheBudgetMiB" -}}
{{- div (mul (sub (int .Values.scorer.memoryMiB) (int .Values.scorer.fixedMemoryMiB)) 10) 11 -}}
{{- end -}}

{{- define "manymodels.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "manymodels.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The Secret holding the pool key or the metrics key (.which: "poolKey" or "metricsKey"):
the user's existingSecret, else the one the chart creates; empty when there is none. */}}
{{- define "manymodels.keySecret" -}}
{{- $cfg := index .root.Values.auth .which -}}
{{- if $cfg.existingSecret -}}
{{- $cfg.existingSecret -}}
{{- else if $cfg.create -}}
{{- printf "%s-%s" (include "manymodels.fullname" .root) (ternary "pool-key" "metrics-key" (eq .which "poolKey")) -}}
{{- end -}}
{{- end -}}

{{/* The base64 value of a key Secret the chart creates: the value already in the cluster
(lookup, so `helm upgrade` keeps the key), else a new random 48-character key. Computed once
per render and remembered, so the Secret and the pods' checksum annotation agree. For an
existingSecret, its current data (empty when lookup cannot reach a cluster). */}}
{{- define "manymodels.keyValue" -}}
{{- $cfg := index .root.Values.auth .which -}}
{{- $memo := printf "_%sValue" .which -}}
{{- if not (hasKey .root.Values.auth $memo) -}}
{{- $name := include "manymodels.keySecret" . -}}
{{- $value := "" -}}
{{- if $name -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace $name -}}
{{- if and $existing $existing.data (hasKey $existing.data $cfg.key) -}}
{{- $value = index $existing.data $cfg.key -}}
{{- else if not $cfg.existingSecret -}}
{{- $value = randAlphaNum 48 | b64enc -}}
{{- end -}}
{{- end -}}
{{- $_ := set .root.Values.auth $memo $value -}}
{{- end -}}
{{- index .root.Values.auth $memo -}}
{{- end -}}

{{/* Pod annotation: changes when a key changes (or a rotation starts or ends), so both
workloads roll onto a new key. */}}
{{- define "manymodels.keysChecksum" -}}
{{- $keys := printf "%s/%s" (include "manymodels.keyValue" (dict "root" . "which" "poolKey")) (include "manymodels.keyValue" (dict "root" . "which" "metricsKey")) -}}
{{- with include "manymodels.previousKeyValue" . -}}
{{- $keys = printf "%s/%s" $keys . -}}
{{- end -}}
{{- $keys | sha256sum -}}
{{- end -}}

{{/* During a rotation, the previous pool key's field and its current data in the cluster
(empty when lookup cannot reach one); empty without a rotation. */}}
{{- define "manymodels.previousKeyValue" -}}
{{- $cfg := .Values.auth.poolKey -}}
{{- if $cfg.previousKey -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $cfg.existingSecret -}}
{{- $value := "" -}}
{{- if and $existing $existing.data (hasKey $existing.data $cfg.previousKey) -}}
{{- $value = index $existing.data $cfg.previousKey -}}
{{- end -}}
{{- printf "%s=%s" $cfg.previousKey $value -}}
{{- end -}}
{{- end -}}

{{/* The previous pool key as an env var (.env), during a rotation; nothing otherwise. */}}
{{- define "manymodels.previousKeyEnv" -}}
{{- $cfg := .root.Values.auth.poolKey -}}
{{- if $cfg.previousKey -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ $cfg.existingSecret }}
      key: {{ $cfg.previousKey }}
{{- end -}}
{{- end -}}

{{/* An env var taken from a key Secret. */}}
{{- define "manymodels.keyEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "manymodels.keySecret" . }}
      key: {{ (index .root.Values.auth .which).key }}
{{- end -}}
