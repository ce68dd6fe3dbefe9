package main

import (
	"strings"
	"testing"
	"time"
)

// A small rendering of the chart's shape: every check passes on it, and each test below
// breaks one thing.
const rendering = `
---
# Source: comment-only documents are skipped
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: t-config
data:
  tally.toml: |
    [node]
    id = "set-by-env"
    api_addr = "0.0.0.0:8080"
    shutdown_grace_secs = 30
---
apiVersion: v1
kind: Service
metadata:
  name: t-gossip
spec:
  clusterIP: None
  selector: {app: t}
  ports: [{name: api, port: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: t
  labels: {app: t, component: api}
spec:
  selector: {app: t}
  ports: [{name: http, port: 8080, targetPort: api}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: t
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: t}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: t
spec:
  podSelector: {matchLabels: {app: t}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: t}}}]
      ports: [{port: api, protocol: TCP}]
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: t
spec:
  selector: {matchLabels: {component: api}}
  endpoints: [{port: http, path: /metrics, interval: 15s, scrapeTimeout: 10s}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: t
spec:
  serviceName: t-gossip
  replicas: 3
  selector: {matchLabels: {app: t}}
  template:
    metadata:
      labels: {app: t}
    spec:
      terminationGracePeriodSeconds: 60
      containers:
        - name: tally-node
          image: tally-node:0.1.0
          args: ["--config", "/etc/tally/tally.toml"]
          ports: [{name: api, containerPort: 8080}]
          volumeMounts: [{name: config, mountPath: /etc/tally}]
      volumes:
        - name: config
          configMap: {name: t-config}
`

func check(t *testing.T, yaml string) (string, error) {
	t.Helper()
	objects, err := decodeAll(strings.NewReader(yaml))
	if err != nil {
		return "", err
	}
	if err := checkReferences(objects); err != nil {
		return "", err
	}
	return checkGrace(objects, 10*time.Second)
}

// replaced is the rendering with old replaced by new, which must occur in it.
func replaced(t *testing.T, old, new string) string {
	t.Helper()
	if !strings.Contains(rendering, old) {
		t.Fatalf("the rendering has no %q", old)
	}
	return strings.Replace(rendering, old, new, 1)
}

func mustFail(t *testing.T, yaml, want string) {
	t.Helper()
	_, err := check(t, yaml)
	if err == nil {
		t.Fatalf("passed; want an error containing %q", want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not contain %q", err, want)
	}
}

func TestTheRenderingPasses(t *testing.T) {
	said, err := check(t, rendering)
	if err != nil {
		t.Fatal(err)
	}
	if want := "terminationGracePeriodSeconds 60 covers node.shutdown_grace_secs 30 (ConfigMap t-config, key tally.toml) + 10s"; said != want {
		t.Fatalf("said %q, want %q", said, want)
	}
}

func TestDecodingIsStrict(t *testing.T) {
	t.Run("an unknown field", func(t *testing.T) {
		mustFail(t, replaced(t, "  replicas: 3", "  replicas: 3\n  replica: 3"), `unknown field "spec.replica"`)
	})
	t.Run("a field in the wrong case", func(t *testing.T) {
		mustFail(t, replaced(t, "  replicas: 3", "  Replicas: 3"), `unknown field "spec.Replicas"`)
	})
	t.Run("a field twice", func(t *testing.T) {
		mustFail(t, replaced(t, "  replicas: 3", "  replicas: 3\n  replicas: 4"), `"replicas" already set`)
	})
	t.Run("a field of the wrong type", func(t *testing.T) {
		mustFail(t, replaced(t, "  replicas: 3", `  replicas: "3"`), "cannot unmarshal string")
	})
	t.Run("an unknown field of a ServiceMonitor", func(t *testing.T) {
		mustFail(t, replaced(t, "path: /metrics,", "path: /metrics, every: 15s,"), `unknown field "spec.endpoints[0].every"`)
	})
	t.Run("a kind the API types do not have", func(t *testing.T) {
		mustFail(t, replaced(t, "kind: PodDisruptionBudget", "kind: PodDisruptionBudgett"), `no kind "PodDisruptionBudgett" is registered`)
	})
	t.Run("a removed API version", func(t *testing.T) {
		mustFail(t, replaced(t, "apiVersion: policy/v1", "apiVersion: policy/v1beta1"), `no kind "PodDisruptionBudget" is registered for version "policy/v1beta1"`)
	})
	t.Run("no input", func(t *testing.T) {
		mustFail(t, "---\n# nothing\n", "no manifests")
	})
}

func TestReferences(t *testing.T) {
	t.Run("a service selecting no pods", func(t *testing.T) {
		mustFail(t, replaced(t, "  selector: {app: t}\n  ports: [{name: http", "  selector: {app: u}\n  ports: [{name: http"),
			"Service t: spec.selector map[app:u] selects the pods of no StatefulSet")
	})
	t.Run("a target port the pods do not have", func(t *testing.T) {
		mustFail(t, replaced(t, "targetPort: api", "targetPort: web"), `targetPort "web" is no container port`)
	})
	t.Run("a budget that allows no eviction", func(t *testing.T) {
		mustFail(t, replaced(t, "maxUnavailable: 1", "minAvailable: 100%"), "allows no eviction")
	})
	t.Run("a monitor selecting no service", func(t *testing.T) {
		mustFail(t, replaced(t, "matchLabels: {component: api}", "matchLabels: {component: web}"), "selects no Service")
	})
	t.Run("a monitor on a port the service does not have", func(t *testing.T) {
		mustFail(t, replaced(t, "endpoints: [{port: http", "endpoints: [{port: metrics"), `port "metrics" is no port of Service t`)
	})
	t.Run("a scrape timeout longer than the interval", func(t *testing.T) {
		mustFail(t, replaced(t, "scrapeTimeout: 10s", "scrapeTimeout: 1m"), "longer than interval")
	})
	t.Run("a network policy on no pods", func(t *testing.T) {
		mustFail(t, replaced(t, "podSelector: {matchLabels: {app: t}}\n  policyTypes", "podSelector: {matchLabels: {app: u}}\n  policyTypes"),
			"NetworkPolicy t: spec.podSelector selects the pods of no StatefulSet")
	})
	t.Run("a network policy opening a port the pods do not have", func(t *testing.T) {
		mustFail(t, replaced(t, "ports: [{port: api, protocol: TCP}]", "ports: [{port: gossip, protocol: UDP}]"), `opens port "gossip"`)
	})
	t.Run("a network policy that cuts the pods off from each other", func(t *testing.T) {
		mustFail(t, replaced(t, "from: [{podSelector: {matchLabels: {app: t}}}]", "from: [{podSelector: {matchLabels: {app: u}}}]"), "gossip would be cut")
	})
	t.Run("a governing service that is not headless", func(t *testing.T) {
		mustFail(t, replaced(t, "  clusterIP: None\n", ""), "is not headless")
	})
}

func TestGracePeriod(t *testing.T) {
	t.Run("shorter than the node's bound plus the margin", func(t *testing.T) {
		mustFail(t, replaced(t, "terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds: 39"),
			"terminationGracePeriodSeconds 39 is less than the 40s a shutdown needs, node.shutdown_grace_secs 30")
	})
	t.Run("unset, the API's 30 s", func(t *testing.T) {
		mustFail(t, replaced(t, "      terminationGracePeriodSeconds: 60\n", ""),
			"terminationGracePeriodSeconds 30 is less than")
	})
	t.Run("the bound follows the rendered config", func(t *testing.T) {
		mustFail(t, replaced(t, "shutdown_grace_secs = 30", "shutdown_grace_secs = 51"),
			"node.shutdown_grace_secs 51")
	})
	t.Run("the environment overrides the config", func(t *testing.T) {
		mustFail(t, replaced(t, "          ports: [{name: api", "          env: [{name: TALLY_NODE__SHUTDOWN_GRACE_SECS, value: \"55\"}]\n          ports: [{name: api"),
			"node.shutdown_grace_secs 55 (env TALLY_NODE__SHUTDOWN_GRACE_SECS)")
	})
	t.Run("a preStop sleep counts", func(t *testing.T) {
		mustFail(t, replaced(t, "          ports: [{name: api", "          lifecycle: {preStop: {sleep: {seconds: 25}}}\n          ports: [{name: api"),
			"the 1m5s a shutdown needs, node.shutdown_grace_secs 30 (ConfigMap t-config, key tally.toml) + 10s + preStop sleep 25s")
	})
	t.Run("the config must set the bound", func(t *testing.T) {
		mustFail(t, replaced(t, "    shutdown_grace_secs = 30\n", ""), "does not set node.shutdown_grace_secs")
	})
	t.Run("the config must be mounted from the rendering", func(t *testing.T) {
		mustFail(t, replaced(t, "configMap: {name: t-config}", "configMap: {name: other}"), `ConfigMap "other" (volume "config") is not in the rendering`)
	})
	t.Run("a node without a config file", func(t *testing.T) {
		mustFail(t, replaced(t, `args: ["--config", "/etc/tally/tally.toml"]`, `args: []`), "no container runs tally-node")
	})
	t.Run("--config=PATH", func(t *testing.T) {
		if _, err := check(t, replaced(t, `args: ["--config", "/etc/tally/tally.toml"]`, `args: ["--config=/etc/tally/tally.toml"]`)); err != nil {
			t.Fatal(err)
		}
	})
}
