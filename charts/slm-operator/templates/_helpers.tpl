{{/*
Names. Kubernetes names are limited to 63 characters (DNS labels), so every generated name is
truncated there, and a trailing "-" left by the cut is removed.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "slm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name: fullnameOverride, or "<release>-<chart>" (just "<release>" when the release name
already contains the chart name).
*/}}
{{- define "slm-operator.fullname" -}}
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

{{/* A name derived from the full name plus a suffix, still within 63 characters. */}}
{{- define "slm-operator.suffixed" -}}
{{- $suffix := index . 1 -}}
{{- $base := include "slm-operator.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base $suffix -}}
{{- end -}}

{{/* "chart-version" for the helm.sh/chart label. */}}
{{- define "slm-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "slm-operator.labels" -}}
helm.sh/chart: {{ include "slm-operator.chart" . }}
{{ include "slm-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: slm-operator
{{- end -}}

{{/* Labels that select the operator pods (immutable once installed). */}}
{{- define "slm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The operator's ServiceAccount name. */}}
{{- define "slm-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "slm-operator.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "repository:tag" or "repository@digest"; the tag defaults to the chart's appVersion. */}}
{{- define "slm-operator.imageRef" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "slm-operator.image" -}}
{{- include "slm-operator.imageRef" (list .Values.image .) -}}
{{- end -}}

{{- define "slm-operator.runtimeImage" -}}
{{- include "slm-operator.imageRef" (list .Values.runtime.image .) -}}
{{- end -}}

{{/* Whether kopf peering is on: more than one operator replica. */}}
{{- define "slm-operator.ha" -}}
{{- if gt (int .Values.replicaCount) 1 -}}true{{- end -}}
{{- end -}}

{{/* The kopf peering object's name. */}}
{{- define "slm-operator.peeringName" -}}
{{- default (include "slm-operator.fullname" .) .Values.peering.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
RBAC rules, kept here in one place so that they are easy to adjust.

"namespacedRules": what the operator needs where SLMDeployments live. With watchNamespaces empty
they go into the ClusterRole; otherwise into one Role per watched namespace.
*/}}
{{- define "slm-operator.namespacedRules" -}}
# The custom resource: watch, patch (kopf's finalizers and annotations) and its status.
- apiGroups: ["slm.dev"]
  resources: ["slmdeployments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["slm.dev"]
  resources: ["slmdeployments/status"]
  verbs: ["get", "patch"]
# Children carry ownerReferences with blockOwnerDeletion; where the OwnerReferencesPermissionEnforcement
# admission plugin is on (e.g. OpenShift), setting it needs update on the owner's finalizers.
- apiGroups: ["slm.dev"]
  resources: ["slmdeployments/finalizers"]
  verbs: ["update"]
# The children of an SLMDeployment, reconciled by server-side apply (a PATCH: no `update`).
# These rules must equal `slm-operator rbac` (tests/chart/test_chart.py compares them).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps", "serviceaccounts", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The operator's own autoscaler (autoscaling.targetInFlightRequests) sets the replica count
# through the scale subresource, as the HPA does.
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# One InferencePool per SLMDeployment where the Gateway API Inference Extension's CRD is installed
# (unused elsewhere: RBAC may name a resource the API server does not serve).
- apiGroups: ["inference.networking.k8s.io"]
  resources: ["inferencepools"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Runtime pods: room left on nodes (placement) and failed model fetches (status).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
# Namespaced mode only: checks that the API key Secret named in a spec exists (get grants its data
# too, so the cluster-wide operator has no Secret access at all and skips the check).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
# Events about the handlers' progress and errors.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if include "slm-operator.ha" . }}
# kopf peering between the operator replicas, one KopfPeering per watched namespace.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/* "clusterRules": what stays cluster-scoped whatever watchNamespaces says. */}}
{{- define "slm-operator.clusterRules" -}}
# Nodes: which accelerators (cpu/gpu/npu) the cluster has, kept by the operator's node informer.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
# kopf: discovering the served resources and the namespaces; the operator: reading the CRD of an
# optional child kind (InferencePool) by name, to know whether it is served.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- if and (include "slm-operator.ha" .) (empty .Values.watchNamespaces) }}
# kopf peering between the operator replicas (cluster-wide operator).
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/* The gateway's name ("<fullname>-gateway") and the labels that select its pods. */}}
{{- define "slm-operator.gatewayName" -}}
{{- include "slm-operator.suffixed" (list . "gateway") -}}
{{- end -}}

{{- define "slm-operator.gatewaySelectorLabels" -}}
app.kubernetes.io/name: slm-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "slm-operator.gatewayLabels" -}}
helm.sh/chart: {{ include "slm-operator.chart" . }}
{{ include "slm-operator.gatewaySelectorLabels" . }}
app.kubernetes.io/component: gateway
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: slm-operator
{{- end -}}

{{/* The gateway reads SLMDeployments and their EndpointSlices; nothing else. No Secrets: it sends
its own upstream key (gateway.upstreamKey, mounted by the kubelet), which runtimes trust by digest. */}}
{{- define "slm-operator.gatewayRules" -}}
- apiGroups: ["slm.dev"]
  resources: ["slmdeployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
{{- end -}}

{{/* The Secret holding the gateway's upstream key: gateway.upstreamKey.existingSecret or the generated one. */}}
{{- define "slm-operator.gatewayUpstreamKeySecret" -}}
{{- .Values.gateway.upstreamKey.existingSecret | default (include "slm-operator.suffixed" (list . "gateway-upstream-key")) -}}
{{- end -}}

{{/* The generated upstream key: the one already in the cluster (kept across upgrades), else 48
random characters. Made once per render and remembered in .Values, so the Secret and the digest
given to the operator are taken of the same key. */}}
{{- define "slm-operator.gatewayGeneratedKey" -}}
{{- if not (hasKey .Values.gateway.upstreamKey "generatedKey") -}}
{{- $key := randAlphaNum 48 -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "slm-operator.gatewayUpstreamKeySecret" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data "key") -}}
{{- $key = index $existing.data "key" | b64dec -}}
{{- end -}}
{{- $_ := set .Values.gateway.upstreamKey "generatedKey" $key -}}
{{- end -}}
{{- index .Values.gateway.upstreamKey "generatedKey" -}}
{{- end -}}

{{/* The digests of the upstream key the operator writes into runtime configs, one per line. */}}
{{- define "slm-operator.gatewayKeyDigests" -}}
{{- if .Values.gateway.upstreamKey.existingSecret -}}
{{- if not .Values.gateway.upstreamKey.sha256 -}}
{{- fail "gateway.upstreamKey.existingSecret needs gateway.upstreamKey.sha256: the SHA-256 of its key (printf %s KEY | sha256sum)" -}}
{{- end -}}
{{- range .Values.gateway.upstreamKey.sha256 }}
{{ lower . }}
{{- end -}}
{{- else -}}
{{ include "slm-operator.gatewayGeneratedKey" . | sha256sum }}
{{- end -}}
{{- end -}}
