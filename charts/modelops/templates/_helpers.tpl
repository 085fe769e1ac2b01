{{/* Names, labels and the operator's RBAC rules, shared by the templates. */}}

{{- define "modelops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: <release>-modelops, or just <release> when it already says modelops. */}}
{{- define "modelops.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "modelops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "modelops.labels" -}}
helm.sh/chart: {{ include "modelops.chart" . }}
{{ include "modelops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelops
{{- end }}

{{- define "modelops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modelops.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Namespaces given to `modelops run -n`; empty means cluster-wide. */}}
{{- define "modelops.clusterwide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/* Settings that cannot work together fail the render (also enforced by values.schema.json,
     which `--skip-schema-validation` would bypass). */}}
{{- define "modelops.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail "replicaCount > 1 needs peering.enabled=true: without kopf peering every replica would reconcile the same objects" }}
{{- end }}
{{- end }}

{{/*
The operator's API calls, as RBAC rules. Keep this list exactly what the code calls:
tests/unit/test_chart.py compares the rendered rules with its own table, so a verb or
resource added or removed here fails until that table is updated too.
*/}}

{{/* Namespaced resources: a ClusterRole's rules when cluster-wide, a Role's in each watched namespace. */}}
{{- define "modelops.rules.namespaced" -}}
# The custom resources; update for kopf's annotation-based progress storage.
- apiGroups: [modelops.dev]
  resources: [trainingjobs, modelservices, modelpools]
  verbs: [get, list, watch, patch, update]
# ttlSecondsAfterFinished removes finished TrainingJobs.
- apiGroups: [modelops.dev]
  resources: [trainingjobs]
  verbs: [delete]
- apiGroups: [modelops.dev]
  resources: [trainingjobs/status, modelservices/status, modelpools/status]
  verbs: [get, patch, update]
# Training workers, their rendezvous Services, Triton's Services and config.pbtxt ConfigMaps.
- apiGroups: [""]
  resources: [pods, services, configmaps]
  verbs: [get, list, watch, create, patch, delete]
# ModelService: the readiness gate of Triton pods.
- apiGroups: [""]
  resources: [pods/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
# ModelService: Triton Deployments per revision, their HPAs, and ServiceMonitors when that CRD exists;
# ModelPool: a PodMonitor of its servers when that CRD exists.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors, podmonitors]
  verbs: [get, list, watch, create, patch, delete]
# A pooled ModelService: the EndpointSlice of its selector-less Service (the pool servers where its model is ready).
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch, create, patch, delete]
# TrainingJob with Kueue (label kueue.x-k8s.io/queue-name): its Workload, when Kueue is installed; the
# status write hands an evicted workload's quota back and marks it finished with its job.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get, list, watch, create, delete]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads/status]
  verbs: [patch]
{{- end }}

{{/* Cluster-scoped kinds the operator only reads, in both modes: the PriorityClass value a Kueue Workload
     carries, and the ResourceFlavors whose node labels and tolerations an admission puts on the pods. */}}
{{- define "modelops.rules.clusterread" -}}
- apiGroups: [scheduling.k8s.io]
  resources: [priorityclasses]
  verbs: [list, watch]
- apiGroups: [kueue.x-k8s.io]
  resources: [resourceflavors]
  verbs: [list, watch]
{{- end }}

{{/* kopf's peering object(s): cluster-scoped when cluster-wide, one per watched namespace otherwise. */}}
{{- define "modelops.rules.peering" -}}
- apiGroups: [kopf.dev]
  resources: [{{ if include "modelops.clusterwide" . }}clusterkopfpeerings{{ else }}kopfpeerings{{ end }}]
  verbs: [get, list, watch, patch]
{{- end }}

{{/* kopf rescans the served resources when CRDs change: cluster-scoped, needed in both modes. */}}
{{- define "modelops.rules.discovery" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/* Only namespaced: kopf lists and watches namespaces to match its -n names/patterns (kopf 1.45
     observation.py; cluster-wide it does not). Without them it retries the 403 for about a minute,
     then falls back to the exact names and never notices a namespace recreated later. */}}
{{- define "modelops.rules.namespaces" -}}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
