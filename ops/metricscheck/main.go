// Command metricscheck reads a metrics exposition on stdin and parses it with Prometheus's
// own Go parser (github.com/prometheus/common/expfmt), choosing the parser from the
// Content-Type the way a Go client does, so a test can check what GET /metrics serves.
//
// It exits 1 on any parse error (among them a family whose HELP or TYPE line comes twice,
// the bug the hand-written exposition had), on a family without HELP or TYPE, and on a
// series that appears twice. Otherwise it prints one line per family, sorted:
// "name type series".
//
// With -require-from FILE (repeatable), it also exits 1 unless every tally_* name in each
// FILE (a Grafana dashboard, alert rules, their tests) is a family or series name of the
// exposition, and prints each name that is not (see references.go).
//
// Not for: scraping a server or checking naming conventions (promtool does that).
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// files is a repeatable flag.
type files []string

func (f *files) String() string     { return strings.Join(*f, ",") }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	contentType := flag.String("content-type", "text/plain; version=0.0.4; charset=utf-8",
		"the Content-Type the exposition was served with")
	var requireFrom files
	flag.Var(&requireFrom, "require-from",
		"a file whose tally_* names must all be families or series of the exposition (repeatable)")
	flag.Parse()
	exposition, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "metricscheck: read stdin:", err)
		os.Exit(1)
	}
	families, err := check(bytes.NewReader(exposition), *contentType)
	if err != nil {
		fmt.Fprintln(os.Stderr, "metricscheck:", err)
		os.Exit(1)
	}
	if len(requireFrom) > 0 {
		served := servedSeries(families, exposition)
		var missing []string
		for _, path := range requireFrom {
			text, err := os.ReadFile(path)
			if err != nil {
				fmt.Fprintln(os.Stderr, "metricscheck:", err)
				os.Exit(1)
			}
			missing = append(missing, unserved(path, string(text), served)...)
		}
		if len(missing) > 0 {
			fmt.Fprintln(os.Stderr, "metricscheck: "+strings.Join(missing, "\nmetricscheck: "))
			os.Exit(1)
		}
	}
	for _, f := range families {
		fmt.Printf("%s %s %d\n", f.GetName(), strings.ToLower(f.GetType().String()), len(f.GetMetric()))
	}
}

// check decodes every family of in and applies the checks the parser leaves to callers.
func check(in io.Reader, contentType string) ([]*dto.MetricFamily, error) {
	format := expfmt.ResponseFormat(http.Header{"Content-Type": []string{contentType}})
	if format.FormatType() == expfmt.TypeUnknown {
		return nil, fmt.Errorf("content type %q is no exposition format Prometheus parses", contentType)
	}
	decoder := expfmt.NewDecoder(in, format)
	var families []*dto.MetricFamily
	for {
		f := &dto.MetricFamily{}
		err := decoder.Decode(f)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("parse (%s): %w", format, err)
		}
		families = append(families, f)
	}
	sort.Slice(families, func(i, j int) bool { return families[i].GetName() < families[j].GetName() })
	for _, f := range families {
		if f.Help == nil {
			return nil, fmt.Errorf("family %q has no HELP line", f.GetName())
		}
		// Without a TYPE line the text parser calls a family untyped.
		if f.GetType() == dto.MetricType_UNTYPED {
			return nil, fmt.Errorf("family %q has no TYPE line (or is untyped)", f.GetName())
		}
		seen := map[string]bool{}
		for _, m := range f.GetMetric() {
			key := labelKey(m)
			if seen[key] {
				return nil, fmt.Errorf("family %q has the series {%s} twice", f.GetName(), key)
			}
			seen[key] = true
		}
	}
	return families, nil
}

// labelKey names a series by its sorted label pairs.
func labelKey(m *dto.Metric) string {
	pairs := make([]string, 0, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		pairs = append(pairs, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	sort.Strings(pairs)
	return strings.Join(pairs, ",")
}
