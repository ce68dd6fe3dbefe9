#!/usr/bin/env bash
# helm-lint.sh - check the Helm chart offline. Lints it; renders it with the default
# values, the production values and the ServiceMonitor on; checks each rendering with
# k8scheck (ops/k8scheck: strict decoding into the Kubernetes API types, the references
# between the objects, the pod's grace period against node.shutdown_grace_secs). Then
# renders what must be refused and fails unless k8scheck refuses each for the expected
# reason: a check that cannot fail checks nothing. `make helm-lint` runs it with HELM and
# K8SCHECK built.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

HELM=${HELM:-.services/bin/helm}
K8SCHECK=${K8SCHECK:-.services/bin/k8scheck}
CHART=helm/tally
PRODUCTION=$CHART/values-production.yaml
OUT=.services/helm
mkdir -p "$OUT"

render() { "$HELM" template tally "$CHART" "$@"; }

"$HELM" lint --strict "$CHART"
"$HELM" lint --strict "$CHART" -f "$PRODUCTION"
render > "$OUT/default.yaml"
render -f "$PRODUCTION" > "$OUT/production.yaml"
render --set serviceMonitor.enabled=true > "$OUT/servicemonitor.yaml"
# Every transport secured: mutual TLS, Kafka over SASL_SSL, Cassandra with a password and TLS.
render --set serviceMonitor.enabled=true,tls.enabled=true,tls.clientAuth=true \
  --set kafkaSecurity.protocol=sasl_ssl,kafkaSecurity.username=tally \
  --set cassandraSecurity.username=tally,cassandraSecurity.tls=true > "$OUT/secure.yaml"
"$K8SCHECK" "$OUT/default.yaml" "$OUT/production.yaml" "$OUT/servicemonitor.yaml" "$OUT/secure.yaml"

# must_fail WANT ARGS...: the chart renders with ARGS, and k8scheck refuses it saying WANT.
must_fail() {
  local want=$1 out
  shift
  render "$@" > "$OUT/must-fail.yaml"
  if out=$("$K8SCHECK" "$OUT/must-fail.yaml" 2>&1); then
    echo "helm-lint: k8scheck passed the chart rendered with $*" >&2
    exit 1
  fi
  if ! grep -qF -- "$want" <<< "$out"; then
    echo "helm-lint: with $* k8scheck was to say '$want', but said: $out" >&2
    exit 1
  fi
  echo "helm-lint: refused, as it must be: $*"
}
# The kubelet would kill the node before its own bound (30 s, plus the 10 s margin).
must_fail "terminationGracePeriodSeconds 39 is less than the 40s a shutdown needs" \
  --set terminationGracePeriodSeconds=39
# The bound is the one rendered: a longer shutdown needs a longer grace period.
must_fail "terminationGracePeriodSeconds 60 is less than the 1m1s a shutdown needs, node.shutdown_grace_secs 51" \
  --set node.shutdownGraceSecs=51
must_fail "terminationGracePeriodSeconds 50 is less than the 55s a shutdown needs, node.shutdown_grace_secs 45" \
  -f "$PRODUCTION" --set terminationGracePeriodSeconds=50
# A field the API types do not have.
must_fail 'unknown field "spec.template.spec.containers[0].resources.bogus"' --set resources.bogus=1
# A budget that no node drain can satisfy.
must_fail "allows no eviction" --set podDisruptionBudget.maxUnavailable=0
rm -f "$OUT/must-fail.yaml"
echo "helm-lint: chart $CHART lints, renders and passes k8scheck (renderings in $OUT)"
