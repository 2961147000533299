{{/*
Helpers of the nasblade chart. Every name is prefixed "nasblade." (helm best practice).
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "nasblade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-nasblade unless the release name already contains the chart name. */}}
{{- define "nasblade.fullname" -}}
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

{{/* chart label value: name-version */}}
{{- define "nasblade.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator pods (stable across upgrades). */}}
{{- define "nasblade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nasblade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of the CSI node plugin's objects (its own component, so no operator selector
matches its pods). */}}
{{- define "nasblade.csiNodeSelectorLabels" -}}
app.kubernetes.io/name: {{ include "nasblade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: csi-node
{{- end -}}

{{- define "nasblade.csiNodeLabels" -}}
helm.sh/chart: {{ include "nasblade.chart" . }}
{{ include "nasblade.csiNodeSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nasblade
{{- end -}}

{{/* Standard labels of every object of the chart. */}}
{{- define "nasblade.labels" -}}
helm.sh/chart: {{ include "nasblade.chart" . }}
{{ include "nasblade.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nasblade
{{- end -}}

{{/* The operator's ServiceAccount name. */}}
{{- define "nasblade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nasblade.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag of the image (tag defaults to appVersion), pinned with @digest when
image.digest is set. */}}
{{- define "nasblade.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- with .Values.image.digest }}@{{ . }}{{ end -}}
{{- end -}}

{{/*
The ServiceAccount credentials of a pod that talks to the API server, mounted only into the
containers that do (nasblade.apiAccessMount) instead of the kubelet's automatic mount into every
container: the token the kubelet would project (3607 s: the API server extends exactly that
lifetime for clients that do not reload it, and the kubelet renews the file), the cluster's CA
and the namespace, at the path client-go and pykube read.
*/}}
{{- define "nasblade.apiAccessVolume" -}}
- name: api-access
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
{{- end -}}

{{- define "nasblade.apiAccessMount" -}}
- name: api-access
  mountPath: /var/run/secrets/kubernetes.io/serviceaccount
  readOnly: true
{{- end -}}

{{/* imagePullSecrets as comma-separated names (entries may be {name: x} or plain strings). */}}
{{- define "nasblade.pullSecretNames" -}}
{{- $names := list -}}
{{- range .Values.imagePullSecrets -}}
{{- if kindIs "string" . }}{{ $names = append $names . }}{{ else }}{{ $names = append $names .name }}{{ end -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{/*
metrics.scraper as a NetworkPolicy peer, in JSON ("{}": nobody). The same reading as the
operator's (nasblade_operator/settings.py, scraper_peer, for its per-array policies): a selector
that is null or empty is left out -- an empty selector would select every namespace or every
pod -- and with neither selector left there is no peer at all.
*/}}
{{- define "nasblade.scraperPeer" -}}
{{- $peer := dict -}}
{{- range $key, $selector := .Values.metrics.scraper | default dict -}}
{{- $kept := dict -}}
{{- with $selector -}}
{{- with .matchLabels }}{{ $_ := set $kept "matchLabels" . }}{{ end -}}
{{- with .matchExpressions }}{{ $_ := set $kept "matchExpressions" . }}{{ end -}}
{{- end -}}
{{- if $kept }}{{ $_ := set $peer $key $kept }}{{ end -}}
{{- end -}}
{{- toJson $peer -}}
{{- end -}}

{{/* Name of the kopf peering object (leader election). */}}
{{- define "nasblade.peeringName" -}}
{{- include "nasblade.fullname" . -}}
{{- end -}}

{{/*
Reject invalid values with a message that says what to change. Included by deployment.yaml,
so every install, upgrade and template run checks them.
*/}}
{{- define "nasblade.validate" -}}
{{- if not (has .Values.logLevel (list "info" "debug")) -}}
{{- fail (printf "logLevel must be \"info\" or \"debug\", not %q" (toString .Values.logLevel)) -}}
{{- end -}}
{{- if not (has .Values.image.pullPolicy (list "Always" "IfNotPresent" "Never")) -}}
{{- fail (printf "image.pullPolicy must be Always, IfNotPresent or Never, not %q" (toString .Values.image.pullPolicy)) -}}
{{- end -}}
{{- if not .Values.image.repository -}}
{{- fail "image.repository must not be empty" -}}
{{- end -}}
{{- if and .Values.image.digest (not (regexMatch "^sha256:[0-9a-f]{64}$" (toString .Values.image.digest))) -}}
{{- fail (printf "image.digest must be sha256:<64 hex digits>, not %q" (toString .Values.image.digest)) -}}
{{- end -}}
{{- if or (not (kindIs "float64" (.Values.replicaCount | float64))) (lt (int .Values.replicaCount) 1) -}}
{{- fail (printf "replicaCount must be at least 1, not %v" .Values.replicaCount) -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true (replicas would all act at once)" -}}
{{- end -}}
{{- if .Values.leaderElection.enabled -}}
{{- $kind := ternary "kopf.dev/v1/KopfPeering" "kopf.dev/v1/ClusterKopfPeering" (gt (len .Values.watchNamespaces) 0) -}}
{{- if not (.Capabilities.APIVersions.Has $kind) -}}
{{- fail (printf "leaderElection.enabled needs kopf's peering CRDs (no %s API): kubectl apply -f crds/kopf-peering.yaml first" $kind) -}}
{{- end -}}
{{- end -}}
{{- if not (kindIs "slice" .Values.watchNamespaces) -}}
{{- fail "watchNamespaces must be a list of namespace names" -}}
{{- end -}}
{{- range .Values.watchNamespaces -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString .)) -}}
{{- fail (printf "watchNamespaces: %q is not a valid namespace name" (toString .)) -}}
{{- end -}}
{{- end -}}
{{- range $k, $p := dict "metrics.port" .Values.metrics.port "healthPort" .Values.healthPort -}}
{{- if or (lt (int $p) 1) (gt (int $p) 65535) -}}
{{- fail (printf "%s must be a port number (1-65535), not %v" $k $p) -}}
{{- end -}}
{{- end -}}
{{- if eq (int .Values.metrics.port) (int .Values.healthPort) -}}
{{- fail "metrics.port and healthPort must differ" -}}
{{- end -}}
{{- if lt (int .Values.statusInterval) 1 -}}
{{- fail (printf "statusInterval must be at least 1 (seconds), not %v" .Values.statusInterval) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled=true" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) -}}
{{- fail "metrics.serviceMonitor.enabled: the cluster has no monitoring.coreos.com/v1 ServiceMonitor API (install prometheus-operator first, or leave it disabled)" -}}
{{- end -}}
{{- if and (not .Values.rbac.create) .Values.serviceAccount.create -}}
{{- /* allowed: the user binds their own roles to our ServiceAccount */ -}}
{{- end -}}
{{- end -}}
