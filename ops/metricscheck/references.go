package main

// The metric names a dashboard or a rules file refers to, checked against an exposition.
//
// A reference is any tally_* word in the file, wherever it stands (a query, a variable, a
// description): a name a reader is shown must exist too. It must be a family name of the
// exposition as its TYPE line gives it (counters with their _total), or a series name of
// one: a histogram's _bucket, _sum and _count. So `tally_records_applied`, a counter
// without its _total, is refused: it is neither.
//
// Families whose label sets have no series yet (a reason nothing was rejected for, a
// route not yet requested) print only their HELP and TYPE lines, and Prometheus's text
// parser drops such families, so for the text format the TYPE lines are read as well.

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
)

var reference = regexp.MustCompile(`\btally_[A-Za-z0-9_]*[A-Za-z0-9]`)

// served holds the family and series names of an exposition.
type served map[string]bool

// servedSeries lists the series names of the decoded families and of every TYPE line.
func servedSeries(families []*dto.MetricFamily, exposition []byte) served {
	s := served{}
	for _, f := range families {
		s.add(f.GetName(), strings.ToLower(f.GetType().String()))
	}
	lines := bufio.NewScanner(bytes.NewReader(exposition))
	lines.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		if len(fields) == 4 && fields[0] == "#" && fields[1] == "TYPE" {
			s.add(fields[2], fields[3])
		}
	}
	return s
}

func (s served) add(name, kind string) {
	switch kind {
	case "histogram", "gauge_histogram":
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			s[name+suffix] = true
		}
	case "summary":
		for _, suffix := range []string{"", "_sum", "_count"} {
			s[name+suffix] = true
		}
	default:
		s[name] = true
	}
}

// unserved says which distinct tally_* words of text the exposition does not serve, one
// message each, naming the file by path.
func unserved(path, text string, s served) []string {
	seen := map[string]bool{}
	var out []string
	for _, name := range reference.FindAllString(text, -1) {
		if seen[name] || s[name] {
			continue
		}
		seen[name] = true
		out = append(out, fmt.Sprintf("%s names %s, which the exposition does not serve", path, name))
	}
	sort.Strings(out)
	return out
}
