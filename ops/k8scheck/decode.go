package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// The API groups a rendering may use. A kind outside them fails to decode ("no kind is
// registered"), so a new kind in the chart needs its group added here, with its types.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		appsv1.AddToScheme,
		corev1.AddToScheme,
		networkingv1.AddToScheme,
		policyv1.AddToScheme,
		monitoringv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(fmt.Sprintf("register API types: %v", err))
		}
	}
	return s
}()

// apimachinery's JSON/YAML serializer, the one kube-apiserver decodes requests with; Strict
// makes unknown and duplicate fields errors (as fieldValidation=Strict does) instead of
// dropping them. Field names match case-sensitively.
var codec = kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme,
	kjson.SerializerOptions{Yaml: true, Strict: true})

// manifest is one decoded document of a rendering.
type manifest struct {
	kind string
	name string
	// The typed object: *appsv1.StatefulSet, *corev1.Service, ...
	obj runtime.Object
}

func (m manifest) String() string { return fmt.Sprintf("%s %s", m.kind, m.name) }

// manifests is a whole rendering, in document order.
type manifests []manifest

// decodeAll splits a multi-document YAML stream and decodes every document strictly.
// Documents that are empty or hold only comments (helm writes "# Source:" lines) are
// skipped; anything else must be a known kind with a name, once per kind.
func decodeAll(in io.Reader) (manifests, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(in))
	var out manifests
	seen := map[string]int{}
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: read: %w", doc, err)
		}
		if asJSON, err := yaml.YAMLToJSON(raw); err == nil && string(asJSON) == "null" {
			continue
		}
		obj, gvk, err := codec.Decode(raw, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("document %d%s: %w", doc, describe(gvk), err)
		}
		meta, ok := obj.(metav1.Object)
		if !ok {
			return nil, fmt.Errorf("document %d%s: not an object with metadata", doc, describe(gvk))
		}
		m := manifest{kind: gvk.Kind, name: meta.GetName(), obj: obj}
		if m.name == "" {
			return nil, fmt.Errorf("document %d%s: metadata.name is empty", doc, describe(gvk))
		}
		if first, twice := seen[m.String()]; twice {
			return nil, fmt.Errorf("document %d: %s is also document %d", doc, m, first)
		}
		seen[m.String()] = doc
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, errors.New("no manifests in the input")
	}
	return out, nil
}

// describe names a document's kind in a message, when it got as far as having one.
func describe(gvk *schema.GroupVersionKind) string {
	if gvk == nil || gvk.Kind == "" {
		return ""
	}
	return fmt.Sprintf(" (%s %s)", gvk.GroupVersion(), gvk.Kind)
}

// kinds counts the rendering's objects by kind, e.g. "ConfigMap, 2 Service, StatefulSet".
func (ms manifests) kinds() string {
	count := map[string]int{}
	for _, m := range ms {
		count[m.kind]++
	}
	kinds := make([]string, 0, len(count))
	for k := range count {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for i, k := range kinds {
		if count[k] > 1 {
			kinds[i] = fmt.Sprintf("%d %s", count[k], k)
		}
	}
	return strings.Join(kinds, ", ")
}

// Typed views of a rendering, for the checks.

func (ms manifests) statefulSets() []*appsv1.StatefulSet { return all[*appsv1.StatefulSet](ms) }
func (ms manifests) services() []*corev1.Service         { return all[*corev1.Service](ms) }
func (ms manifests) configMaps() []*corev1.ConfigMap     { return all[*corev1.ConfigMap](ms) }
func (ms manifests) disruptionBudgets() []*policyv1.PodDisruptionBudget {
	return all[*policyv1.PodDisruptionBudget](ms)
}
func (ms manifests) networkPolicies() []*networkingv1.NetworkPolicy {
	return all[*networkingv1.NetworkPolicy](ms)
}

func (ms manifests) serviceMonitors() []*monitoringv1.ServiceMonitor {
	return all[*monitoringv1.ServiceMonitor](ms)
}

func all[T runtime.Object](ms manifests) []T {
	var out []T
	for _, m := range ms {
		if t, ok := m.obj.(T); ok {
			out = append(out, t)
		}
	}
	return out
}
