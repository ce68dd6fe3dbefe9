package main

import (
	"fmt"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// checkReferences checks what strict decoding cannot: that the objects of one rendering
// fit together. A selector that selects nothing is valid to the API server and silently
// useless in the cluster (a budget that guards no pod, a monitor that scrapes nothing).
func checkReferences(ms manifests) error {
	sets := ms.statefulSets()
	if len(sets) == 0 {
		return fmt.Errorf("no StatefulSet: the chart's workload is missing")
	}
	for _, s := range sets {
		if err := checkStatefulSet(s, ms.services()); err != nil {
			return fmt.Errorf("StatefulSet %s: %w", s.Name, err)
		}
	}
	for _, svc := range ms.services() {
		if err := checkService(svc, sets); err != nil {
			return fmt.Errorf("Service %s: %w", svc.Name, err)
		}
	}
	for _, pdb := range ms.disruptionBudgets() {
		if err := checkDisruptionBudget(pdb, sets); err != nil {
			return fmt.Errorf("PodDisruptionBudget %s: %w", pdb.Name, err)
		}
	}
	for _, np := range ms.networkPolicies() {
		if err := checkNetworkPolicy(np, sets); err != nil {
			return fmt.Errorf("NetworkPolicy %s: %w", np.Name, err)
		}
	}
	for _, mon := range ms.serviceMonitors() {
		if err := checkServiceMonitor(mon, ms.services()); err != nil {
			return fmt.Errorf("ServiceMonitor %s: %w", mon.Name, err)
		}
	}
	return nil
}

// checkStatefulSet: its selector matches its own pods (the API server refuses it
// otherwise) and its serviceName is a headless Service of the rendering.
func checkStatefulSet(s *appsv1.StatefulSet, services []*corev1.Service) error {
	if err := selects(s.Spec.Selector, s.Spec.Template.Labels); err != nil {
		return fmt.Errorf("spec.selector: %w", err)
	}
	for _, svc := range services {
		if svc.Name == s.Spec.ServiceName {
			if svc.Spec.ClusterIP != corev1.ClusterIPNone {
				return fmt.Errorf("spec.serviceName %q is not headless (clusterIP: None)", svc.Name)
			}
			return nil
		}
	}
	return fmt.Errorf("spec.serviceName %q is no Service of the rendering", s.Spec.ServiceName)
}

// checkService: it selects the pods of a StatefulSet, and a named targetPort is one of
// their container ports.
func checkService(svc *corev1.Service, sets []*appsv1.StatefulSet) error {
	if len(svc.Spec.Selector) == 0 {
		return fmt.Errorf("spec.selector is empty")
	}
	selector := labels.SelectorFromSet(svc.Spec.Selector)
	for _, s := range sets {
		if !selector.Matches(labels.Set(s.Spec.Template.Labels)) {
			continue
		}
		for _, p := range svc.Spec.Ports {
			if p.TargetPort.Type == intstr.String && !hasContainerPort(s.Spec.Template.Spec, p.TargetPort.StrVal) {
				return fmt.Errorf("port %q: targetPort %q is no container port of StatefulSet %s",
					p.Name, p.TargetPort.StrVal, s.Name)
			}
		}
		return nil
	}
	return fmt.Errorf("spec.selector %v selects the pods of no StatefulSet", svc.Spec.Selector)
}

func hasContainerPort(pod corev1.PodSpec, name string) bool {
	for _, c := range pod.Containers {
		for _, p := range c.Ports {
			if p.Name == name {
				return true
			}
		}
	}
	return false
}

// checkNetworkPolicy: it applies to the pods of a StatefulSet, each named port it opens is
// one of their container ports, and a rule's pod selector (gossip's peers) selects those
// pods too: a policy that selects them but admits no Tally pod would cut gossip.
func checkNetworkPolicy(np *networkingv1.NetworkPolicy, sets []*appsv1.StatefulSet) error {
	for _, s := range sets {
		if selects(&np.Spec.PodSelector, s.Spec.Template.Labels) != nil {
			continue
		}
		peers := false
		for i, rule := range np.Spec.Ingress {
			for _, p := range rule.Ports {
				if p.Port != nil && p.Port.Type == intstr.String && !hasContainerPort(s.Spec.Template.Spec, p.Port.StrVal) {
					return fmt.Errorf("spec.ingress[%d] opens port %q, which the pods do not have", i, p.Port.StrVal)
				}
			}
			for _, from := range rule.From {
				if from.PodSelector != nil && from.NamespaceSelector == nil &&
					selects(from.PodSelector, s.Spec.Template.Labels) == nil {
					peers = true
				}
			}
		}
		if !peers {
			return fmt.Errorf("admits no traffic from StatefulSet %s's own pods: gossip would be cut", s.Name)
		}
		return nil
	}
	return fmt.Errorf("spec.podSelector selects the pods of no StatefulSet")
}

// checkDisruptionBudget: it guards the pods of a StatefulSet and lets a drain evict at
// least one of them (a budget of zero blocks every node drain and cluster upgrade).
func checkDisruptionBudget(pdb *policyv1.PodDisruptionBudget, sets []*appsv1.StatefulSet) error {
	if (pdb.Spec.MinAvailable == nil) == (pdb.Spec.MaxUnavailable == nil) {
		return fmt.Errorf("spec needs exactly one of minAvailable and maxUnavailable")
	}
	for _, s := range sets {
		if selects(pdb.Spec.Selector, s.Spec.Template.Labels) != nil {
			continue
		}
		replicas := 1
		if s.Spec.Replicas != nil {
			replicas = int(*s.Spec.Replicas)
		}
		// Rounded as the disruption controller rounds: both percentages round up.
		var evictable int
		if pdb.Spec.MaxUnavailable != nil {
			n, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MaxUnavailable, replicas, true)
			if err != nil {
				return fmt.Errorf("spec.maxUnavailable: %w", err)
			}
			evictable = n
		} else {
			n, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MinAvailable, replicas, true)
			if err != nil {
				return fmt.Errorf("spec.minAvailable: %w", err)
			}
			evictable = replicas - n
		}
		if evictable < 1 {
			return fmt.Errorf("allows no eviction of StatefulSet %s's %d pods: node drains would hang", s.Name, replicas)
		}
		return nil
	}
	return fmt.Errorf("spec.selector selects the pods of no StatefulSet")
}

// checkServiceMonitor: it selects a Service of the rendering, each endpoint names one of
// that Service's ports, and its durations are valid with the timeout within the interval
// (Prometheus refuses a scrape_timeout longer than the scrape_interval).
func checkServiceMonitor(mon *monitoringv1.ServiceMonitor, services []*corev1.Service) error {
	if len(mon.Spec.Endpoints) == 0 {
		return fmt.Errorf("spec.endpoints is empty")
	}
	var matched []*corev1.Service
	for _, svc := range services {
		if selects(&mon.Spec.Selector, svc.Labels) == nil {
			matched = append(matched, svc)
		}
	}
	if len(matched) == 0 {
		return fmt.Errorf("spec.selector selects no Service of the rendering")
	}
	for i, e := range mon.Spec.Endpoints {
		for _, svc := range matched {
			if !hasServicePort(svc, e.Port) {
				return fmt.Errorf("spec.endpoints[%d].port %q is no port of Service %s", i, e.Port, svc.Name)
			}
		}
		interval, err := promDurationOf(string(e.Interval))
		if err != nil {
			return fmt.Errorf("spec.endpoints[%d].interval: %w", i, err)
		}
		timeout, err := promDurationOf(string(e.ScrapeTimeout))
		if err != nil {
			return fmt.Errorf("spec.endpoints[%d].scrapeTimeout: %w", i, err)
		}
		if interval > 0 && timeout > interval {
			return fmt.Errorf("spec.endpoints[%d]: scrapeTimeout %s is longer than interval %s", i, e.ScrapeTimeout, e.Interval)
		}
	}
	return nil
}

func hasServicePort(svc *corev1.Service, name string) bool {
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			return true
		}
	}
	return false
}

// promDurationOf parses a Prometheus duration ("" is unset: 0) with Prometheus's own
// parser, which reads exactly the pattern the operator's CRD admits (1h30m, 15s, 500ms).
func promDurationOf(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := model.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	return time.Duration(d), nil
}

// selects says why sel does not select a pod or service with these labels, or nil.
func selects(sel *metav1.LabelSelector, l map[string]string) error {
	if sel == nil {
		return fmt.Errorf("no selector")
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return err
	}
	if s.Empty() {
		return fmt.Errorf("selector is empty (it would select everything)")
	}
	if !s.Matches(labels.Set(l)) {
		return fmt.Errorf("%s does not match labels %v", s, l)
	}
	return nil
}
