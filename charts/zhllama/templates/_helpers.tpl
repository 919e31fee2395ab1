{{/*
The run id: names every object of the run. It comes from the resolved spec that `ctl values` prints; ctl has
validated it, so the chart only refuses values without a spec.
*/}}
{{- define "zhllama.runId" -}}
{{- (required "spec: the chart takes the resolved run spec; print the values with `ctl values STAGE [--size ...] [--set ...] > run.yaml` and pass -f run.yaml" .Values.spec).run_id -}}
{{- end -}}

{{/* The spec as the pods read it (/etc/zhllama/spec.json), unchanged. */}}
{{- define "zhllama.specJson" -}}
{{- toPrettyJson .Values.spec -}}
{{- end -}}

{{- define "zhllama.workloadKind" -}}
{{- if not .Values.launch.distributed -}}
Job
{{- else if eq .Values.backend "trainjob" -}}
TrainJob
{{- else -}}
PyTorchJob
{{- end -}}
{{- end -}}

{{- define "zhllama.labels" -}}
{{- $runId := include "zhllama.runId" . -}}
app.kubernetes.io/name: zhllama
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .Values.spec.stage }}
app.kubernetes.io/part-of: zhllama
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
zhllama.io/run-id: {{ $runId }}
zhllama.io/stage: {{ .Values.spec.stage }}
zhllama.io/size: {{ .Values.spec.size | quote }}
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
{{- $repo := ternary .Values.image.train .Values.image.tools (gt (int .Values.spec.resources.gpus_per_node) 0) -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The container's command line: torchrun over the operator's PET_* variables, or python for one pod. */}}
{{- define "zhllama.command" -}}
{{- $job := .Values.launch.entrypoint -}}
{{- if .Values.launch.distributed -}}
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
{{- if .Values.launch.indexed }}
# The shares of an Indexed Job; Kubernetes sets each pod's own JOB_COMPLETION_INDEX.
- name: ZHLLAMA_WORKERS
  value: {{ int .Values.launch.completions | quote }}
{{- end }}
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
{{- if .Values.launch.distributed }}
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
{{- $resources := .Values.spec.resources -}}
{{- $gpus := int $resources.gpus_per_node -}}
requests:
  cpu: {{ $resources.cpu | quote }}
  memory: {{ $resources.memory | quote }}
  {{- if gt $gpus 0 }}
  nvidia.com/gpu: {{ $gpus | quote }}
  {{- end }}
  {{- range $name, $count := .Values.extraResources }}
  {{ $name }}: {{ $count | quote }}
  {{- end }}
limits:
  memory: {{ $resources.memory | quote }}
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
One pod template. Arguments: root (the chart context), role (master or worker), container (its name), and
optionally restartPolicy (else the one run.restartPolicy gives).
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
  restartPolicy: {{ .restartPolicy | default (ternary "OnFailure" "Never" (eq $v.run.restartPolicy "OnFailure")) }}
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
