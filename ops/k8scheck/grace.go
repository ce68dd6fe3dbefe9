package main

import (
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// The environment variable that overrides node.shutdown_grace_secs (node/src/config.rs:
// TALLY_<SECTION>__<KEY>), and the one that names the config file when --config does not.
const (
	graceEnv  = "TALLY_NODE__SHUTDOWN_GRACE_SECS"
	configEnv = "TALLY_CONFIG"
)

// checkGrace checks, for every StatefulSet, that the kubelet waits long enough after
// SIGTERM for the node to finish its shutdown: terminationGracePeriodSeconds must exceed
// node.shutdown_grace_secs by margin. The node bounds everything it does after SIGTERM by
// that setting (HTTP drain, the final checkpoint of every shard, handing the partitions
// over, closing the Kafka consumer), then exits with status 70 by itself; a pod grace
// period that ends first means SIGKILL in the middle of a final checkpoint.
//
// The margin is for what lies between the two clocks: the kubelet's starts when it sends
// SIGTERM, the node's watchdog when the node has handled the signal, and an exit must still
// be reaped and its last log lines written. A preStop hook's time counts too: the kubelet
// runs it first, within the same grace period.
//
// The bound is read from where the node reads it: the --config file the container names,
// followed through its volume mount to a ConfigMap of the rendering, and the environment
// variable that overrides it. The config must set it: the check does not assume the
// node's default, which could change without the chart noticing.
func checkGrace(ms manifests, margin time.Duration) (string, error) {
	var said []string
	for _, s := range ms.statefulSets() {
		line, err := checkStatefulSetGrace(s, ms, margin)
		if err != nil {
			return "", fmt.Errorf("StatefulSet %s: %w", s.Name, err)
		}
		said = append(said, line)
	}
	return strings.Join(said, "; "), nil
}

func checkStatefulSetGrace(s *appsv1.StatefulSet, ms manifests, margin time.Duration) (string, error) {
	pod := s.Spec.Template.Spec
	podGrace := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if pod.TerminationGracePeriodSeconds != nil {
		podGrace = *pod.TerminationGracePeriodSeconds
	}
	checked := 0
	var said []string
	for _, c := range pod.Containers {
		configPath, ok := configPathOf(c)
		if !ok {
			continue
		}
		checked++
		bound, from, err := shutdownGrace(c, pod, configPath, ms)
		if err != nil {
			return "", fmt.Errorf("container %s: %w", c.Name, err)
		}
		preStop, err := preStopSeconds(c)
		if err != nil {
			return "", fmt.Errorf("container %s: %w", c.Name, err)
		}
		need := time.Duration(preStop+bound)*time.Second + margin
		parts := fmt.Sprintf("node.shutdown_grace_secs %d (%s) + %s", bound, from, margin)
		if preStop > 0 {
			parts += fmt.Sprintf(" + preStop sleep %ds", preStop)
		}
		if time.Duration(podGrace)*time.Second < need {
			return "", fmt.Errorf("terminationGracePeriodSeconds %d is less than the %s a shutdown needs, %s:"+
				" the kubelet would kill the node before its own bound, perhaps in a final checkpoint",
				podGrace, need, parts)
		}
		said = append(said, fmt.Sprintf("terminationGracePeriodSeconds %d covers %s", podGrace, parts))
	}
	if checked == 0 {
		return "", fmt.Errorf("no container runs tally-node with a config file (--config or %s)", configEnv)
	}
	return strings.Join(said, "; "), nil
}

// configPathOf is the config file a container's tally-node reads, if it names one.
func configPathOf(c corev1.Container) (string, bool) {
	args := append(append([]string{}, c.Command...), c.Args...)
	for i, a := range args {
		switch {
		case (a == "--config" || a == "-c") && i+1 < len(args):
			return args[i+1], true
		case strings.HasPrefix(a, "--config="):
			return strings.TrimPrefix(a, "--config="), true
		}
	}
	for _, e := range c.Env {
		if e.Name == configEnv && e.Value != "" {
			return e.Value, true
		}
	}
	return "", false
}

// shutdownGrace is node.shutdown_grace_secs as the container's node would read it, and
// where it came from.
func shutdownGrace(c corev1.Container, pod corev1.PodSpec, configPath string, ms manifests) (int64, string, error) {
	if len(c.EnvFrom) > 0 {
		return 0, "", fmt.Errorf("envFrom may set %s, which this check cannot see", graceEnv)
	}
	for _, e := range c.Env {
		// The node's config loader reads environment names in any case.
		if !strings.EqualFold(e.Name, graceEnv) {
			continue
		}
		if e.ValueFrom != nil {
			return 0, "", fmt.Errorf("%s comes from valueFrom, which this check cannot see", graceEnv)
		}
		n, err := strconv.ParseInt(e.Value, 10, 64)
		if err != nil {
			return 0, "", fmt.Errorf("%s=%q: %w", graceEnv, e.Value, err)
		}
		return n, "env " + graceEnv, nil
	}
	cm, key, err := mountedConfigMap(c, pod, configPath, ms)
	if err != nil {
		return 0, "", fmt.Errorf("config %s: %w", configPath, err)
	}
	text, ok := cm.Data[key]
	if !ok {
		return 0, "", fmt.Errorf("config %s: ConfigMap %s has no key %q", configPath, cm.Name, key)
	}
	var cfg struct {
		Node map[string]any `toml:"node"`
	}
	if _, err := toml.Decode(text, &cfg); err != nil {
		return 0, "", fmt.Errorf("config %s (ConfigMap %s, key %s): not TOML: %w", configPath, cm.Name, key, err)
	}
	from := fmt.Sprintf("ConfigMap %s, key %s", cm.Name, key)
	v, ok := cfg.Node["shutdown_grace_secs"]
	if !ok {
		return 0, "", fmt.Errorf("%s does not set node.shutdown_grace_secs; render it, so the grace period"+
			" is checked against the value the node uses", from)
	}
	n, ok := v.(int64)
	if !ok || n < 0 {
		return 0, "", fmt.Errorf("%s: node.shutdown_grace_secs = %v is not a whole number of seconds", from, v)
	}
	return n, from, nil
}

// mountedConfigMap follows a file path through the container's volume mounts to the
// ConfigMap of the rendering that provides it, and the key of that file.
func mountedConfigMap(c corev1.Container, pod corev1.PodSpec, file string, ms manifests) (*corev1.ConfigMap, string, error) {
	var mount *corev1.VolumeMount
	var rel string
	for i, m := range c.VolumeMounts {
		var r string
		switch {
		case m.SubPath != "" && m.MountPath == file:
			r = m.SubPath
		case m.SubPath == "" && strings.HasPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/"):
			r = strings.TrimPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		default:
			continue
		}
		// The deepest mount wins, as in the container's file system.
		if mount == nil || len(m.MountPath) > len(mount.MountPath) {
			mount, rel = &c.VolumeMounts[i], r
		}
	}
	if mount == nil {
		return nil, "", fmt.Errorf("no volume mount provides it")
	}
	var source *corev1.ConfigMapVolumeSource
	for _, v := range pod.Volumes {
		if v.Name == mount.Name {
			source = v.ConfigMap
		}
	}
	if source == nil {
		return nil, "", fmt.Errorf("volume %q is not a ConfigMap volume", mount.Name)
	}
	key := rel
	if len(source.Items) > 0 {
		key = ""
		for _, item := range source.Items {
			if path.Clean(item.Path) == path.Clean(rel) {
				key = item.Key
			}
		}
		if key == "" {
			return nil, "", fmt.Errorf("volume %q's items do not provide %q", mount.Name, rel)
		}
	}
	for _, cm := range ms.configMaps() {
		if cm.Name == source.Name {
			return cm, key, nil
		}
	}
	return nil, "", fmt.Errorf("ConfigMap %q (volume %q) is not in the rendering", source.Name, mount.Name)
}

// preStopSeconds is how long a container's preStop hook may hold SIGTERM back: the
// kubelet runs the hook first, within the same grace period. Only a sleep is bounded.
func preStopSeconds(c corev1.Container) (int64, error) {
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
		return 0, nil
	}
	if s := c.Lifecycle.PreStop.Sleep; s != nil {
		return s.Seconds, nil
	}
	return 0, fmt.Errorf("a preStop hook other than sleep delays SIGTERM by an unknown time")
}
