{{/* Chart name. */}}
{{- define "sonic-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
Object-name prefix. At most 40 characters: the RayService name must stay within KubeRay's
47-character limit, and KubeRay appends "-<5 chars>" for RayClusters and "-serve-svc" for Services.
*/}}
{{- define "sonic-serve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sonic-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels for objects the chart owns directly (not the Ray pods; see sonic-serve.rayPodLabels). */}}
{{- define "sonic-serve.labels" -}}
helm.sh/chart: {{ include "sonic-serve.chart" . }}
{{ include "sonic-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sonic-serve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sonic-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sonic-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Labels of Ray pods. KubeRay sets app.kubernetes.io/name=kuberay on Ray pods and its head
Service selects on it, so the Ray pod templates must not carry app.kubernetes.io/name.
Call with (dict "ctx" $ "group" "head").
*/}}
{{- define "sonic-serve.rayPodLabels" -}}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/part-of: sonic-serve
app.kubernetes.io/component: ray
sonic-serve.io/ray-group: {{ .group }}
sonic-serve.io/s3-client: "true"
{{- end -}}

{{/* Selector that matches every Ray pod of this release. */}}
{{- define "sonic-serve.raySelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: ray
{{- end -}}

{{- define "sonic-serve.image" -}}
{{- $img := .Values.image -}}
{{- $repo := $img.repository -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" $img.registry $img.repository }}{{ end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "sonic-serve.minioImage" -}}
{{- $img := .Values.minio.image -}}
{{- $repo := $img.repository -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" $img.registry $img.repository }}{{ end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $img.tag -}}
{{- end -}}
{{- end -}}

{{- define "sonic-serve.rayServiceName" -}}
{{- include "sonic-serve.fullname" . -}}
{{- end -}}

{{/* Service KubeRay creates for Serve traffic: <rayservice>-serve-svc. */}}
{{- define "sonic-serve.serveServiceName" -}}
{{- printf "%s-serve-svc" (include "sonic-serve.rayServiceName" .) -}}
{{- end -}}

{{- define "sonic-serve.minioName" -}}
{{- printf "%s-minio" (include "sonic-serve.fullname" .) -}}
{{- end -}}

{{- define "sonic-serve.s3SecretName" -}}
{{- default (printf "%s-s3" (include "sonic-serve.fullname" .)) .Values.s3.existingSecret -}}
{{- end -}}

{{- define "sonic-serve.authSecretName" -}}
{{- default (printf "%s-auth" (include "sonic-serve.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "sonic-serve.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s.%s.svc:9000" (include "sonic-serve.minioName" .) .Release.Namespace -}}
{{- else -}}
{{- required "s3.endpoint is required when minio.enabled is false" .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "sonic-serve.s3Secure" -}}
{{- if .Values.minio.enabled -}}false{{- else -}}{{ .Values.s3.secure }}{{- end -}}
{{- end -}}

{{- define "sonic-serve.weightsClaimName" -}}
{{- default (printf "%s-weights" (include "sonic-serve.fullname" .)) .Values.weights.cache.pvc.existingClaim -}}
{{- end -}}

{{/* Directory the cache volume is mounted at: the parent of serve.weightsPath. */}}
{{- define "sonic-serve.cacheMountPath" -}}
{{- dir .Values.serve.weightsPath -}}
{{- end -}}

{{/* S3 connection env shared by the Ray containers and the Jobs. */}}
{{- define "sonic-serve.s3Env" -}}
- name: SONIC_S3_ENDPOINT
  value: {{ include "sonic-serve.s3Endpoint" . | quote }}
- name: SONIC_S3_SECURE
  value: {{ include "sonic-serve.s3Secure" . | quote }}
- name: SONIC_S3_BUCKET
  value: {{ .Values.s3.bucket | quote }}
- name: SONIC_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "sonic-serve.s3SecretName" . }}
      key: access-key
- name: SONIC_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "sonic-serve.s3SecretName" . }}
      key: secret-key
{{- end -}}

{{/* OpenTelemetry env, identical on the head and on every worker group. */}}
{{- define "sonic-serve.otelEnv" -}}
{{- $t := .Values.tracing -}}
{{- if $t.enabled -}}
- name: OTEL_SDK_DISABLED
  value: "false"
- name: OTEL_TRACES_EXPORTER
  value: "otlp"
- name: RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH
  value: "deployments.telemetry:serve_span_processors"
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ required "tracing.endpoint is required when tracing.enabled" $t.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $t.protocol | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ $t.serviceName | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $t.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $t.samplingRatio | toString | quote }}
- name: RAY_SERVE_TRACING_SAMPLING_RATIO
  value: {{ $t.samplingRatio | toString | quote }}
{{- else -}}
- name: OTEL_SDK_DISABLED
  value: "true"
- name: OTEL_TRACES_EXPORTER
  value: "none"
- name: OTEL_SERVICE_NAME
  value: {{ $t.serviceName | quote }}
- name: OTEL_TRACES_SAMPLER
  value: "always_off"
- name: RAY_SERVE_TRACING_SAMPLING_RATIO
  value: "0"
{{- end }}
{{- $attrs := list (printf "service.namespace=%s" .Release.Namespace) (printf "deployment.environment=%s" .Release.Name) -}}
{{- range $k, $v := $t.resourceAttributes }}{{ $attrs = append $attrs (printf "%s=%v" $k $v) }}{{ end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- end -}}

{{/* Env of every Ray container (head and workers). */}}
{{- define "sonic-serve.rayEnv" -}}
- name: SONIC_WEIGHTS
  value: {{ .Values.serve.weightsPath | quote }}
- name: SONIC_DTYPE
  value: {{ .Values.serve.dtype | quote }}
- name: SONIC_RETENTION_DAYS
  value: {{ .Values.serve.retentionDays | quote }}
- name: SONIC_WEBHOOK_ALLOW
  value: {{ .Values.serve.webhookAllow | quote }}
- name: SONIC_S3_PUBLIC_ENDPOINT
  value: {{ .Values.s3.publicEndpoint | quote }}
{{ include "sonic-serve.s3Env" . }}
- name: SONIC_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "sonic-serve.authSecretName" . }}
      key: api-keys
- name: SONIC_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "sonic-serve.authSecretName" . }}
      key: webhook-secret
{{ include "sonic-serve.otelEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The cache volume (named "weights"). */}}
{{- define "sonic-serve.weightsVolume" -}}
{{- $c := .Values.weights.cache -}}
- name: weights
{{- if eq $c.type "emptyDir" }}
  emptyDir:
    sizeLimit: {{ $c.emptyDirSizeLimit }}
{{- else if eq $c.type "hostPath" }}
  hostPath:
    path: {{ $c.hostPath }}
    type: DirectoryOrCreate
{{- else if eq $c.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "sonic-serve.weightsClaimName" . }}
{{- else }}
{{- fail (printf "weights.cache.type must be emptyDir, hostPath or pvc, not %q" $c.type) }}
{{- end }}
{{- end -}}

{{- define "sonic-serve.weightsSyncMarker" -}}
{{- printf "%s/.sonic-serve-sync-complete" (include "sonic-serve.cacheMountPath" .) -}}
{{- end -}}

{{/* The weights pull command. */}}
{{- define "sonic-serve.weightsPullCommand" -}}
- sonic-serve
- weights
- pull
- {{ printf "s3://%s/%s" .Values.s3.bucket .Values.s3.modelsPrefix | quote }}
- {{ .Values.serve.weightsPath | quote }}
{{- end -}}

{{/*
Init containers of a Ray worker pod: pull the weights (mode initContainer) or wait for the
sync Job's marker (mode job). Nothing for mode none.
*/}}
{{- define "sonic-serve.weightsInitContainers" -}}
{{- $mode := .Values.weights.sync.mode -}}
{{- if eq $mode "initContainer" }}
- name: weights-sync
  image: {{ include "sonic-serve.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    {{- include "sonic-serve.weightsPullCommand" . | nindent 4 }}
  env:
    {{- include "sonic-serve.s3Env" . | nindent 4 }}
  resources:
    {{- toYaml .Values.weights.sync.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: weights
      mountPath: {{ include "sonic-serve.cacheMountPath" . }}
{{- else if eq $mode "job" }}
- name: weights-wait
  image: {{ include "sonic-serve.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - sh
    - -c
    - {{ printf "until [ -e %s ]; do echo waiting for the weights sync Job; sleep 10; done" (include "sonic-serve.weightsSyncMarker" .) | quote }}
  resources:
    requests:
      cpu: 10m
      memory: 16Mi
    limits:
      cpu: 100m
      memory: 64Mi
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: weights
      mountPath: {{ include "sonic-serve.cacheMountPath" . }}
      readOnly: true
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by head and workers. */}}
{{- define "sonic-serve.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Volumes of a Ray pod. Call with (dict "ctx" $ "shm" "8Gi" "weights" true). */}}
{{- define "sonic-serve.rayVolumes" -}}
volumes:
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ .shm }}
{{- if .weights }}
{{ include "sonic-serve.weightsVolume" .ctx | indent 2 }}
{{- end }}
{{- end -}}

{{/* Volume mounts of a Ray container. Call with (dict "ctx" $ "weights" true). */}}
{{- define "sonic-serve.rayVolumeMounts" -}}
volumeMounts:
  - name: dshm
    mountPath: /dev/shm
{{- if .weights }}
  - name: weights
    mountPath: {{ include "sonic-serve.cacheMountPath" .ctx }}
    readOnly: {{ .ctx.Values.weights.cache.readOnly }}
{{- end }}
{{- end -}}

{{/* Stage key -> Serve deployment name. */}}
{{- define "sonic-serve.stageMap" -}}
audio: AudioEncoder
image: ImageEncoder
fusion: Fusion
diffusion: Diffusion
postprocess: PostProcess
manager: JobManager
ingress: Ingress
{{- end -}}

{{/*
spec.serveConfigV2: files/serve_config.yaml (a byte-identical copy of
deployments/serve_config.yaml) with the per-stage values applied.
*/}}
{{- define "sonic-serve.serveConfig" -}}
{{- $cfg := .Files.Get "files/serve_config.yaml" | fromYaml -}}
{{- if or (not $cfg) (hasKey $cfg "Error") -}}
{{- fail "files/serve_config.yaml is missing or is not valid YAML" -}}
{{- end -}}
{{- $stageMap := include "sonic-serve.stageMap" . | fromYaml -}}
{{- range $key := keys $stageMap | sortAlpha -}}
{{- $depName := get $stageMap $key -}}
{{- $s := get $.Values.stages $key -}}
{{- $found := false -}}
{{- range $app := $cfg.applications -}}
{{- range $dep := $app.deployments -}}
{{- if eq $dep.name $depName -}}
{{- $found = true -}}
{{- if not (kindIs "invalid" $s.maxOngoingRequests) }}{{ $_ := set $dep "max_ongoing_requests" $s.maxOngoingRequests }}{{ end -}}
{{- $opts := default dict $dep.ray_actor_options -}}
{{- if not (kindIs "invalid" $s.numCpus) }}{{ $_ := set $opts "num_cpus" $s.numCpus }}{{ end -}}
{{- if not (kindIs "invalid" $s.numGpus) }}{{ $_ := set $opts "num_gpus" $s.numGpus }}{{ end -}}
{{- range $k, $v := $s.rayActorOptions }}{{ $_ := set $opts $k $v }}{{ end -}}
{{- $_ := set $dep "ray_actor_options" $opts -}}
{{- $wantsAutoscaling := or (not (kindIs "invalid" $s.minReplicas)) (not (kindIs "invalid" $s.maxReplicas)) (not (kindIs "invalid" $s.targetOngoingRequests)) (not (empty $s.autoscalingConfig)) -}}
{{- if not (kindIs "invalid" $s.numReplicas) -}}
{{- if $wantsAutoscaling -}}
{{- fail (printf "stages.%s: numReplicas cannot be combined with minReplicas/maxReplicas/targetOngoingRequests/autoscalingConfig" $key) -}}
{{- end -}}
{{- $_ := set $dep "num_replicas" $s.numReplicas -}}
{{- $_ := unset $dep "autoscaling_config" -}}
{{- else if $wantsAutoscaling -}}
{{- $as := default dict $dep.autoscaling_config -}}
{{- if hasKey $dep "num_replicas" -}}
{{- if not (hasKey $as "min_replicas") }}{{ $_ := set $as "min_replicas" $dep.num_replicas }}{{ end -}}
{{- if not (hasKey $as "max_replicas") }}{{ $_ := set $as "max_replicas" $dep.num_replicas }}{{ end -}}
{{- $_ := unset $dep "num_replicas" -}}
{{- end -}}
{{- if not (kindIs "invalid" $s.minReplicas) }}{{ $_ := set $as "min_replicas" $s.minReplicas }}{{ end -}}
{{- if not (kindIs "invalid" $s.maxReplicas) }}{{ $_ := set $as "max_replicas" $s.maxReplicas }}{{ end -}}
{{- if not (kindIs "invalid" $s.targetOngoingRequests) }}{{ $_ := set $as "target_ongoing_requests" $s.targetOngoingRequests }}{{ end -}}
{{- range $k, $v := $s.autoscalingConfig }}{{ $_ := set $as $k $v }}{{ end -}}
{{- $_ := set $dep "autoscaling_config" $as -}}
{{- end -}}
{{- with $dep.autoscaling_config -}}
{{- if and (hasKey . "min_replicas") (hasKey . "max_replicas") -}}
{{- if gt (float64 .min_replicas) (float64 .max_replicas) -}}
{{- fail (printf "stages.%s (%s): min_replicas %v is above max_replicas %v" $key $depName .min_replicas .max_replicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "stages.%s: deployment %s is not in files/serve_config.yaml" $key $depName) -}}
{{- end -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
