#!/usr/bin/env python3
"""stage_metrics.py - the node's stage histograms (docs/ARCHITECTURE.md, "Latency, stage by
stage") read from its /metrics text, and what they observed between two scrapes.

    python3 scripts/stage_metrics.py BEFORE.prom AFTER.prom    the split, as JSON

Imported by scripts/ingest-latency.py and scripts/bench.sh (latency). Per stage with
observations in between: their count, the exact mean (the difference of the sums over the
difference of the counts), and p50 and p99 as the upper bound of the histogram bucket each
falls in (the buckets double from 0.25 ms, so a quantile is only known to a factor of two).
The ingest stages are observed per request, the record stages per applied batch, for its
oldest record, the push stages per frame (docs/API.md; their buckets double from 0.05 ms).
Not a general Prometheus parser: it reads these three families.
"""
import json
import sys
import urllib.request

FAMILIES = ("tally_ingest_stage_duration_seconds", "tally_record_stage_duration_seconds",
            "tally_push_stage_duration_seconds")


def parse(text):
    """{(family, labels): {le: count, "sum": s, "count": n}}; labels without `le`, as written."""
    out = {}
    for line in text.splitlines():
        family = next((f for f in FAMILIES if line.startswith(f + "_")), None)
        if family is None:
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        le, parts = None, []
        for pair in labels.rstrip("}").split(","):
            if pair.startswith("le="):
                le = pair[4:-1]
            elif pair:
                parts.append(pair)
        entry = out.setdefault((family, ",".join(parts)), {})
        if name.endswith("_bucket"):
            entry[float(le)] = float(value)
        elif name.endswith("_sum"):
            entry["sum"] = float(value)
        elif name.endswith("_count"):
            entry["count"] = float(value)
    return out


def scrape(base_url):
    """The stage histograms of a node's /metrics, base_url like http://127.0.0.1:8080."""
    return parse(urllib.request.urlopen(base_url + "/metrics", timeout=10).read().decode())


def labels_of(labels):
    """'kind="players",stage="queued"' -> {"kind": "players", "stage": "queued"}."""
    return dict((k, v.strip('"')) for k, _, v in (p.partition("=") for p in labels.split(",") if p))


def split(before, after):
    """Per stage observed between the two parses: a dict with family, labels, count,
    mean_ms, p50_le_ms and p99_le_ms (None past the last finite bucket)."""
    rows = []
    for key, now in sorted(after.items()):
        was = before.get(key, {})
        n = now.get("count", 0) - was.get("count", 0)
        if n <= 0:
            continue
        bounds = sorted(b for b in now if isinstance(b, float))

        def quantile(q):
            for b in bounds:
                if now[b] - was.get(b, 0) >= q * n:
                    return b * 1000 if b != float("inf") else None
            return None

        rows.append({"family": key[0], "labels": labels_of(key[1]), "count": int(n),
                     "mean_ms": (now.get("sum", 0) - was.get("sum", 0)) / n * 1000,
                     "p50_le_ms": quantile(.5), "p99_le_ms": quantile(.99)})
    return rows


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: stage_metrics.py BEFORE.prom AFTER.prom")
    a, b = (parse(open(p).read()) for p in sys.argv[1:])
    json.dump(split(a, b), sys.stdout, indent=2)
    print()
