{{/*
The run id: names every object of the run and its store prefix.
*/}}
{{- define "zhllama.runId" -}}
{{- $runId := .Values.runId | default .Release.Name -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$" $runId) -}}
{{- fail (printf "runId: %q is not a valid run id: use lowercase letters, digits and '-', start and end with a letter or digit, at most 52 characters" $runId) -}}
{{- end -}}
{{- $runId -}}
{{- end -}}

{{/*
The resolved run spec as JSON: the generated preset for (size, stage), then overrides, bits, gpus, the S3
store and the run id. zhllama.spec.resolve_spec computes the same spec in Python (tests/k8s checks that).
*/}}
{{- define "zhllama.spec" -}}
{{- $v := .Values -}}
{{- $presets := (.Files.Get "files/presets.json" | fromJson).specs -}}
{{- if not (hasKey $presets $v.size) -}}
{{- fail (printf "size: unknown size %q; choose one of %s" $v.size (keys $presets | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $bySize := index $presets $v.size -}}
{{- if not (hasKey $bySize $v.stage) -}}
{{- fail (printf "stage: unknown stage %q; choose one of %s" $v.stage (keys $bySize | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $spec := deepCopy (index $bySize $v.stage) -}}
{{- include "zhllama.mergeOverrides" (dict "dst" $spec "src" $v.overrides "path" "overrides" "stage" $v.stage) -}}
{{- if not (kindIs "invalid" $v.bits) -}}
{{- if not (hasKey $spec "bits") -}}
{{- fail (printf "bits: only pretrain and sft load a base in 8 or 4 bits; remove bits for stage %q" $v.stage) -}}
{{- end -}}
{{- $_ := set $spec "bits" $v.bits -}}
{{- end -}}
{{- if not (kindIs "invalid" $v.gpus) -}}
{{- $perNode := int $spec.resources.gpus_per_node -}}
{{- if or (not (has $v.stage (list "pretrain" "sft"))) (eq $perNode 0) -}}
{{- fail (printf "gpus: stage %q of size %q runs %d GPUs per node; set overrides.resources.gpus_per_node instead" $v.stage $v.size $perNode) -}}
{{- end -}}
{{- if or (lt (int $v.gpus) 1) (ne (mod (int $v.gpus) $perNode) 0) -}}
{{- fail (printf "gpus: %v is not a positive multiple of the %d GPUs per node; use e.g. %d" $v.gpus $perNode (mul $perNode (add1 (div (int $v.gpus) $perNode)))) -}}
{{- end -}}
{{- $_ := set $spec.resources "nodes" (div (int $v.gpus) $perNode) -}}
{{- end -}}
{{- if $v.s3.bucket -}}
{{- if hasKey $v.overrides "store" -}}
{{- fail "overrides.store and s3.bucket both set the store; keep one" -}}
{{- end -}}
{{- $prefix := trimAll "/" $v.s3.prefix -}}
{{- $_ := set $spec "store" (ternary (printf "s3://%s/%s" $v.s3.bucket $prefix) (printf "s3://%s" $v.s3.bucket) (ne $prefix "")) -}}
{{- end -}}
{{- $_ := set $spec "run_id" (include "zhllama.runId" .) -}}
{{- toPrettyJson $spec -}}
{{- end -}}

{{/*
Deep-merge .src into .dst (a spec dict) in place. Unknown fields fail; values given as strings by --set are
converted to the field's type, so `--set overrides.lr=0.001` and `overrides: {lr: 0.001}` give the same spec.
*/}}
{{- define "zhllama.mergeOverrides" -}}
{{- $dst := .dst -}}
{{- range $key, $value := .src -}}
{{- $where := printf "%s.%s" $.path $key -}}
{{- if and (eq $.path "overrides") (has $key (list "stage" "size" "run_id")) -}}
{{- fail (printf "%s: set the chart value %s instead" $where (ternary "runId" $key (eq $key "run_id"))) -}}
{{- end -}}
{{- if not (hasKey $dst $key) -}}
{{- fail (printf "%s: the %s spec has no field %q (fields: %s)" $where $.stage $key (keys $dst | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $current := index $dst $key -}}
{{- if kindIs "map" $current -}}
{{- if not (kindIs "map" $value) -}}
{{- fail (printf "%s: expected a mapping of fields, got %v" $where $value) -}}
{{- end -}}
{{- include "zhllama.mergeOverrides" (dict "dst" $current "src" $value "path" $where "stage" $.stage) -}}
{{- else if and (kindIs "float64" $current) (kindIs "string" $value) -}}
{{- if not (regexMatch "^[-+]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]+)?$" $value) -}}
{{- fail (printf "%s: expected a number, got %q" $where $value) -}}
{{- end -}}
{{- $_ := set $dst $key (float64 $value) -}}
{{- else if and (kindIs "string" $current) (or (kindIs "int64" $value) (kindIs "float64" $value)) -}}
{{- $_ := set $dst $key (toString $value) -}}
{{- else if and (not (kindIs "invalid" $current)) (not (kindIs "invalid" $value)) (ne (kindOf $current) (kindOf $value)) (not (and (kindIs "float64" $current) (kindIs "int64" $value))) -}}
{{- fail (printf "%s: expected a %s like %s, got %v" $where (kindOf $current | replace "float64" "number" | replace "slice" "list") (toJson $current) $value) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "zhllama.distributed" -}}
{{- if has .Values.stage (list "pretrain" "sft") }}true{{ end -}}
{{- end -}}

{{- define "zhllama.workloadKind" -}}
{{- if not (include "zhllama.distributed" .) -}}
Job
{{- else if eq .Values.backend "trainjob" -}}
TrainJob
{{- else -}}
PyTorchJob
{{- end -}}
{{- end -}}

{{- define "zhllama.labels" -}}
app.kubernetes.io/name: zhllama
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .Values.stage }}
app.kubernetes.io/part-of: zhllama
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
zhllama.io/run-id: {{ include "zhllama.runId" . }}
zhllama.io/stage: {{ .Values.stage }}
zhllama.io/size: {{ .Values.size | quote }}
{{- end -}}

{{- define "zhllama.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "zhllama.runId" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "zhllama.schedulerName" -}}
{{- if .Values.scheduling.schedulerName -}}
{{- .Values.scheduling.schedulerName -}}
{{- else if eq .Values.gang.mode "volcano" -}}
volcano
{{- else if eq .Values.gang.mode "scheduler-plugins" -}}
scheduler-plugins-scheduler
{{- end -}}
{{- end -}}

{{/* Labels on the workload object that Kueue reads. */}}
{{- define "zhllama.queueLabels" -}}
{{- if eq .Values.gang.mode "kueue" -}}
{{- if not .Values.gang.queue -}}
{{- fail "gang.queue: set the Kueue LocalQueue to submit to (gang.mode is kueue)" -}}
{{- end -}}
kueue.x-k8s.io/queue-name: {{ .Values.gang.queue }}
{{- with .Values.gang.priorityClass }}
kueue.x-k8s.io/priority-class: {{ . }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The image for a run: the GPU training image when the stage requests GPUs, the CPU tools image otherwise.
*/}}
{{- define "zhllama.image" -}}
{{- $spec := fromJson (include "zhllama.spec" .) -}}
{{- $repo := ternary .Values.image.train .Values.image.tools (gt (int $spec.resources.gpus_per_node) 0) -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The container's command line: torchrun over the operator's PET_* variables, or python for one pod. */}}
{{- define "zhllama.command" -}}
{{- $job := printf "/app/jobs/%s.py" .Values.stage -}}
{{- if include "zhllama.distributed" . -}}
{{- list "torchrun" "--nnodes=$(PET_NNODES)" "--nproc_per_node=$(PET_NPROC_PER_NODE)" "--node_rank=$(PET_NODE_RANK)" "--master_addr=$(PET_MASTER_ADDR)" "--master_port=$(PET_MASTER_PORT)" $job "--spec" "/etc/zhllama/spec.json" | toJson -}}
{{- else -}}
{{- list "python" $job "--spec" "/etc/zhllama/spec.json" | toJson -}}
{{- end -}}
{{- end -}}

{{- define "zhllama.env" -}}
- name: ZHLLAMA_WORKDIR
  value: /scratch
- name: HOME
  value: /scratch/home
# The node cache: inputs and checkpoint shares downloaded once per pod, shared by its processes.
- name: ZHLLAMA_CACHE
  value: /scratch/cache
- name: PYTHONUNBUFFERED
  value: "1"
{{- with .Values.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.s3.credentialsSecret }}
{{- if .name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- if include "zhllama.distributed" . }}
{{- with .Values.nccl }}
- name: NCCL_DEBUG
  value: {{ .debug | quote }}
{{- with .socketIfname }}
- name: NCCL_SOCKET_IFNAME
  value: {{ . | quote }}
{{- end }}
{{- if not (kindIs "invalid" .ibDisable) }}
- name: NCCL_IB_DISABLE
  value: {{ ternary "1" "0" .ibDisable | quote }}
{{- end }}
{{- with .ibHca }}
- name: NCCL_IB_HCA
  value: {{ . | quote }}
{{- end }}
{{- if .efa }}
- name: FI_PROVIDER
  value: efa
- name: FI_EFA_USE_DEVICE_RDMA
  value: "1"
{{- end }}
- name: TORCH_NCCL_ASYNC_ERROR_HANDLING
  value: "1"
- name: TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC
  value: {{ .heartbeatTimeoutSeconds | quote }}
{{- range $name, $value := .extraEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Quantities as strings, the form the API server returns them in. */}}
{{- define "zhllama.resources" -}}
{{- $spec := fromJson (include "zhllama.spec" .) -}}
{{- $gpus := int $spec.resources.gpus_per_node -}}
requests:
  cpu: {{ $spec.resources.cpu | quote }}
  memory: {{ $spec.resources.memory | quote }}
  {{- if gt $gpus 0 }}
  nvidia.com/gpu: {{ $gpus | quote }}
  {{- end }}
  {{- range $name, $count := .Values.extraResources }}
  {{ $name }}: {{ $count | quote }}
  {{- end }}
limits:
  memory: {{ $spec.resources.memory | quote }}
  {{- if gt $gpus 0 }}
  nvidia.com/gpu: {{ $gpus | quote }}
  {{- end }}
  {{- range $name, $count := .Values.extraResources }}
  {{ $name }}: {{ $count | quote }}
  {{- end }}
{{- end -}}

{{- define "zhllama.volumeMounts" -}}
- name: spec
  mountPath: /etc/zhllama
  readOnly: true
- name: scratch
  mountPath: /scratch
{{- if .Values.shm.enabled }}
- name: shm
  mountPath: /dev/shm
{{- end }}
{{- end -}}

{{- define "zhllama.volumes" -}}
- name: spec
  configMap:
    name: {{ include "zhllama.runId" . }}-spec
- name: scratch
  emptyDir:
    sizeLimit: {{ .Values.scratch.sizeLimit }}
{{- if .Values.shm.enabled }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shm.sizeLimit }}
{{- end }}
{{- end -}}

{{/*
One pod template. Arguments: root (the chart context), role (master or worker), container (its name).
*/}}
{{- define "zhllama.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "zhllama.labels" $root | nindent 4 }}
    zhllama.io/role: {{ .role }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- /* ExitCode restarts are the operator's: it recreates a pod whose own policy is Never. */}}
  restartPolicy: {{ ternary "OnFailure" "Never" (eq $v.run.restartPolicy "OnFailure") }}
  serviceAccountName: {{ include "zhllama.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
  {{- with (include "zhllama.schedulerName" $root) }}
  schedulerName: {{ . }}
  {{- end }}
  {{- with $v.scheduling.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.scheduling.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.scheduling.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.scheduling.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.image.pullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 1000
    fsGroup: 1000
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: {{ .container }}
      image: {{ include "zhllama.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      workingDir: /app
      command: {{ include "zhllama.command" $root }}
      env:
        {{- include "zhllama.env" $root | nindent 8 }}
      resources:
        {{- include "zhllama.resources" $root | nindent 8 }}
      volumeMounts:
        {{- include "zhllama.volumeMounts" $root | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        capabilities:
          drop: [ALL]
          {{- with $v.addCapabilities }}
          add: {{ toJson . }}
          {{- end }}
  volumes:
    {{- include "zhllama.volumes" $root | nindent 4 }}
{{- end -}}
