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
