{{/* The release's full name, at most 63 characters. */}}
{{- define "dynaps-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dynaps-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dynaps-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dynaps-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dynaps-operator.labels" -}}
{{ include "dynaps-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The rules of the operator's (Cluster)Role: only the verbs it uses. */}}
{{- define "dynaps-operator.rules" -}}
# Watch the jobs, read one before each reconcile, delete it when ttlSecondsAfterFinished passed.
- apiGroups: [dynaps.io]
  resources: [parameterserverjobs]
  verbs: [get, list, watch, delete]
# Write the status (phase, conditions, ownership).
- apiGroups: [dynaps.io]
  resources: [parameterserverjobs/status]
  verbs: [patch]
# Owner references with blockOwnerDeletion need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on (e.g. OpenShift).
- apiGroups: [dynaps.io]
  resources: [parameterserverjobs/finalizers]
  verbs: [update]
# The job's pods: watched, listed per job, created under stable names, deleted to replace them.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, delete]
# The headless Service (created once; garbage-collected with the job). get: whose one of
# its name is, when it exists already (metadata only; someone else's is never relied on).
- apiGroups: [""]
  resources: [services]
  verbs: [create, get]
# The runtime configuration (created, then patched when it changes, only if it is the job's).
# get (metadata only): whose one of its name is; and the labels of a ConfigMap a job template
# names (is it marked dynaps.io/usable-by-jobs?).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch, get]
# The job's Secret: created once (immutable, garbage-collected with the job), read back for the
# coordinator's HTTP token after an operator restart; and the labels of a Secret a job template
# names (metadata only). Never listed nor watched.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create, get]
# The labels of a claim a job template names (metadata only): is it marked for jobs?
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
# The job's NetworkPolicy (created once; garbage-collected with the job). get: whose one of
# its name is, when it exists already (metadata only): the job's pods wait until it is theirs.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create, get]
# The gang scheduler's PodGroup (runPolicy.schedulingPolicy.scheduler): created with the first
# pods, patched when minMember changes (only if it is the job's: get, metadata only),
# garbage-collected with the job.
- apiGroups: [scheduling.x-k8s.io, scheduling.volcano.sh]
  resources: [podgroups]
  verbs: [create, patch, get]
# An Event for every decision.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
