package main

import (
	"reflect"
	"strings"
	"testing"
)

// An exposition as a node writes it: counters, a labelled gauge, a histogram, and two
// labelled families with no series yet (HELP and TYPE only).
const sample = `# HELP tally_records_applied_total Kafka records applied to entities.
# TYPE tally_records_applied_total counter
tally_records_applied_total{kind="players"} 5
tally_records_applied_total{kind="channels"} 7
# HELP tally_shard_lag_records Records in the partition not yet applied.
# TYPE tally_shard_lag_records gauge
tally_shard_lag_records{kind="players",partition="0"} 1
# HELP tally_apply_duration_seconds Time to apply one batch.
# TYPE tally_apply_duration_seconds histogram
tally_apply_duration_seconds_bucket{kind="players",le="0.001"} 3
tally_apply_duration_seconds_bucket{kind="players",le="+Inf"} 4
tally_apply_duration_seconds_sum{kind="players"} 0.004
tally_apply_duration_seconds_count{kind="players"} 4
# HELP tally_ingest_events_rejected_total Events rejected by HTTP ingest.
# TYPE tally_ingest_events_rejected_total counter
# HELP tally_http_request_duration_seconds Time to answer a request.
# TYPE tally_http_request_duration_seconds histogram
`

const textFormat = "text/plain; version=0.0.4; charset=utf-8"

func servedBySample(t *testing.T) served {
	t.Helper()
	families, err := check(strings.NewReader(sample), textFormat)
	if err != nil {
		t.Fatalf("the sample does not parse: %v", err)
	}
	return servedSeries(families, []byte(sample))
}

func TestEveryNameADashboardMayUseIsServed(t *testing.T) {
	dashboard := `{"targets": [
	  {"expr": "sum by (kind) (rate(tally_records_applied_total{job=\"$job\"}[$__rate_interval]))"},
	  {"expr": "histogram_quantile(0.99, sum by (le) (rate(tally_apply_duration_seconds_bucket[5m])))"},
	  {"expr": "rate(tally_apply_duration_seconds_sum[5m]) / rate(tally_apply_duration_seconds_count[5m])"},
	  {"expr": "max by (kind, partition) (tally_shard_lag_records)"},
	  {"expr": "sum by (reason) (rate(tally_ingest_events_rejected_total[5m]))"},
	  {"expr": "histogram_quantile(0.5, rate(tally_http_request_duration_seconds_bucket[5m]))"}
	], "description": "per batch (tally_apply_duration_seconds)",
	"title": "tally-cluster, not a metric", "uid": "tally"}`
	if got := unserved("dash.json", dashboard, servedBySample(t)); len(got) != 0 {
		t.Fatalf("names the sample serves were refused: %q", got)
	}
}

func TestANameTheExpositionLacksIsRefused(t *testing.T) {
	rules := `
- alert: A
  expr: tally_shard_lag_record > 10 and rate(tally_records_applied[5m]) > 0
- alert: B
  expr: tally_shard_lag_record > 10
  annotations:
    description: see tally_apply_duration_seconds_max
`
	got := unserved("alerts.yml", rules, servedBySample(t))
	want := []string{
		"alerts.yml names tally_apply_duration_seconds_max, which the exposition does not serve",
		"alerts.yml names tally_records_applied, which the exposition does not serve",
		"alerts.yml names tally_shard_lag_record, which the exposition does not serve",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
}

// The parser alone would not do: it drops a family without series, and a dashboard
// naming such a family would be refused although the node defines it.
func TestFamiliesWithoutSeriesCountOnlyThroughTheirTypeLines(t *testing.T) {
	families, err := check(strings.NewReader(sample), textFormat)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "tally_ingest_events_rejected_total" {
			t.Fatalf("the parser kept a family without series; the TYPE scan may be unneeded")
		}
	}
	if got := unserved("f", "tally_ingest_events_rejected_total", servedSeries(families, nil)); len(got) != 1 {
		t.Fatalf("without the TYPE lines the family should be missing, got %q", got)
	}
}
