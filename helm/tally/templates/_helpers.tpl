{{- define "tally.fullname" -}}
{{- printf "%s" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "tally.labels" -}}
app.kubernetes.io/name: tally
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "tally.selector" -}}
app.kubernetes.io/name: tally
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* The Secret holding the keys file and the cluster secret (not made by the chart). */}}
{{- define "tally.authSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "tally.fullname" .)) -}}
{{- end -}}

{{- /* Secrets of the transport settings (not made by the chart). */}}
{{- define "tally.tlsSecret" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" (include "tally.fullname" .)) -}}
{{- end -}}

{{- define "tally.kafkaSecret" -}}
{{- .Values.kafkaSecurity.existingSecret | default (printf "%s-kafka" (include "tally.fullname" .)) -}}
{{- end -}}

{{- define "tally.cassandraSecret" -}}
{{- .Values.cassandraSecurity.existingSecret | default (printf "%s-cassandra" (include "tally.fullname" .)) -}}
{{- end -}}

{{- /* Whether the Kafka settings need the Secret: a SASL password or a TLS CA. */}}
{{- define "tally.kafkaSasl" -}}
{{- if hasPrefix "sasl" .Values.kafkaSecurity.protocol }}true{{ end -}}
{{- end -}}
{{- define "tally.kafkaTls" -}}
{{- if hasSuffix "ssl" .Values.kafkaSecurity.protocol }}true{{ end -}}
{{- end -}}
{{- define "tally.kafkaSecretUsed" -}}
{{- if or (include "tally.kafkaSasl" .) (include "tally.kafkaTls" .) }}true{{ end -}}
{{- end -}}
{{- define "tally.cassandraSecretUsed" -}}
{{- if or .Values.cassandraSecurity.username .Values.cassandraSecurity.tls }}true{{ end -}}
{{- end -}}

{{- /* The startup probe's pace: liveness waits until the API answers once. A start takes
  migrations and Kafka's first metadata (seconds), plus node.pretouch_mib at about 3 s per
  GiB where the host backs memory lazily: two minutes, and 5 s more per GiB pretouched. */}}
{{- define "tally.startupProbeTiming" -}}
periodSeconds: 5
failureThreshold: {{ add 24 (div (int (.Values.node.pretouchMib | default 0)) 1024) }}
{{- end -}}
