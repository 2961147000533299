{{/*
The operator's namespaced permissions, least privilege (the table in docs/operator.md):
- its own resources (it deletes a DiskArray's ClusterGroups with it), their status, and
  their finalizers subresource (owner references with blockOwnerDeletion on clusters that
  enforce OwnerReferencesPermissionEnforcement);
- the children it builds: the controller StatefulSet, Services, the token Secret (no list
  or watch of Secrets), blade Pods (watched; deleted to replace failed blades), device PVCs
  (deleted when the DiskArray's deletionPolicy is Delete);
- with csi.enabled, each DiskArray's CSI controller plugin: its Deployment, ServiceAccount
  and RoleBinding (docs/csi.md);
- a PodDisruptionBudget per ClusterGroup and, with networkPolicy.enabled, the NetworkPolicies
  of each array and group (created, patched when exports change, never listed);
- Events for the resources' history, and kopf peering in the namespace.
*/}}
{{- define "nasblade.namespacedRules" -}}
- apiGroups: [nasblade.io]
  resources: [diskarrays]
  verbs: [get, list, watch, patch]
- apiGroups: [nasblade.io]
  resources: [clustergroups]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [nasblade.io]
  resources: [diskarrays/status, clustergroups/status]
  verbs: [get, patch]
- apiGroups: [nasblade.io]
  resources: [diskarrays/finalizers, clustergroups/finalizers]
  verbs: [update]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch]
{{- if .Values.csi.enabled }}
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  verbs: [get, create, delete]
{{- end }}
{{- if .Values.networkPolicy.enabled }}
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch]
{{- end }}
{{- if .Values.leaderElection.enabled }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}
