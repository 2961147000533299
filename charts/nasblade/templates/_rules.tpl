{{/*
The operator's namespaced permissions (least privilege; docs/operator.md):
- its own resources and their status (kopf patches status and finalizers),
- the children it builds: the controller StatefulSet, Services, the token Secret, blade Pods
  (it deletes pods to replace failed blades), device PVCs (deleted when the DiskArray's
  deletionPolicy says so),
- Events for the resources' history, kopf peering in the namespace.
*/}}
{{- define "nasblade.namespacedRules" -}}
- apiGroups: [nasblade.io]
  resources: [diskarrays, clustergroups]
  verbs: [get, list, watch, patch, update]
- apiGroups: [nasblade.io]
  resources: [diskarrays/status, clustergroups/status, diskarrays/finalizers, clustergroups/finalizers]
  verbs: [get, patch, update]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods, services, secrets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.leaderElection.enabled }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}
