// Command k8scheck reads the manifests `helm template` renders (multi-document YAML, from
// the files named or from stdin) and checks them offline, as far as the API types go:
//
//   - every document decodes strictly into its Kubernetes API type (k8s.io/api, and the
//     Prometheus Operator's types for monitoring.coreos.com/v1): an unknown field, a field
//     of the wrong type, a field given twice, or a kind those types do not have fails, as
//     an API server asked for strict field validation would refuse it;
//   - the objects refer to each other correctly (refs.go): selectors select the pods or
//     services they are meant for, named ports exist, a PodDisruptionBudget lets a drain
//     evict a pod, a ServiceMonitor's durations parse;
//   - the pod's terminationGracePeriodSeconds exceeds the node's own bound on its
//     shutdown, node.shutdown_grace_secs as rendered into the config the pod mounts, by
//     -grace-margin (grace.go).
//
// It exits 1 with the first problem of each file, and prints one line per file otherwise.
//
// Not for: checks only a cluster can make (admission, quotas, CRDs being installed), or
// the node's config beyond the shutdown bound (`tally-node check-config` reads that).
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

func main() {
	margin := flag.Duration("grace-margin", 10*time.Second,
		"how much longer than node.shutdown_grace_secs terminationGracePeriodSeconds must be")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: k8scheck [-grace-margin 10s] [FILE...] (stdin without FILE)")
		flag.PrintDefaults()
	}
	flag.Parse()
	inputs := flag.Args()
	if len(inputs) == 0 {
		inputs = []string{"-"}
	}
	failed := false
	for _, name := range inputs {
		summary, err := checkFile(name, *margin)
		if err != nil {
			fmt.Fprintf(os.Stderr, "k8scheck: %s: %v\n", name, err)
			failed = true
			continue
		}
		fmt.Printf("k8scheck: %s: %s\n", name, summary)
	}
	if failed {
		os.Exit(1)
	}
}

// checkFile runs every check on one rendering and says what it found.
func checkFile(name string, margin time.Duration) (string, error) {
	in := io.Reader(os.Stdin)
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return "", err
		}
		defer f.Close()
		in = f
	}
	objects, err := decodeAll(in)
	if err != nil {
		return "", err
	}
	if err := checkReferences(objects); err != nil {
		return "", err
	}
	grace, err := checkGrace(objects, margin)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%d objects (%s) decode strictly and refer to each other; %s",
		len(objects), objects.kinds(), grace), nil
}
