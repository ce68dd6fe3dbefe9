#!/usr/bin/env python3
"""ingest-latency.py - one event at a time through a node's HTTP ingest: how long the
POST takes to be acknowledged, and until the event shows in the player's view.

    python3 scripts/ingest-latency.py [BASE_URL] [COUNT]

BASE_URL defaults to http://127.0.0.1:8080 (cluster-config/local.toml; auth off), COUNT
to 60; the first 10 events warm up and are not counted. Each event is a level_up of one
of 7 players; "visible" is when GET /v1/players/{id} on the same node shows its level.

It also splits the time by stage, from the node's stage histograms over the counted events
(the difference of two /metrics scrapes; a quantile is the upper bound of its histogram
bucket, the mean is exact): ingest queued, produce, commit; then appended_to_read and
read_to_applied of the player records (docs/ARCHITECTURE.md, "Latency, stage by stage").
"""
import json
import sys
import time
import urllib.request

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
COUNT = int(sys.argv[2]) if len(sys.argv) > 2 else 60
RUN = str(int(time.time()))


def one(i):
    player = f"latency-{RUN}-{i % 7}"
    event = {"v": 1, "id": f"latency-{RUN}-{i}", "ts": int(time.time() * 1000) - 1000,
             "player": player, "kind": "level_up", "level": i + 2}
    start = time.perf_counter()
    req = urllib.request.Request(BASE + "/v1/events", data=json.dumps(event).encode(),
                                 method="POST", headers={"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()
    acked = time.perf_counter() - start
    deadline = start + 10
    while time.perf_counter() < deadline:
        try:
            view = json.loads(urllib.request.urlopen(f"{BASE}/v1/players/{player}", timeout=10).read())
            if view["player"]["level"] >= i + 2:
                return acked, time.perf_counter() - start
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
        time.sleep(0.001)
    raise SystemExit(f"event {i} not visible within 10 s")


def pct(values, q):
    values = sorted(values)
    return values[int(q * (len(values) - 1))]


def scrape():
    """The stage histograms of /metrics: {(family, labels): {le: count, "sum": s, "count": n}}."""
    text = urllib.request.urlopen(BASE + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        for family in ("tally_ingest_stage_duration_seconds", "tally_record_stage_duration_seconds"):
            if not line.startswith(family + "_"):
                continue
            series, value = line.rsplit(" ", 1)
            name, _, labels = series.partition("{")
            labels = labels.rstrip("}")
            le = None
            parts = []
            for pair in labels.split(","):
                if pair.startswith("le="):
                    le = pair[4:-1]
                elif pair:
                    parts.append(pair)
            key = (family, ",".join(parts))
            entry = out.setdefault(key, {})
            if name.endswith("_bucket"):
                entry[float(le)] = float(value)
            elif name.endswith("_sum"):
                entry["sum"] = float(value)
            elif name.endswith("_count"):
                entry["count"] = float(value)
    return out


def stages(before, after):
    """Per stage with observations in between: count, mean, p50 and p99 in ms."""
    rows = []
    for key, now in sorted(after.items()):
        was = before.get(key, {})
        n = now.get("count", 0) - was.get("count", 0)
        if n <= 0:
            continue
        mean = (now.get("sum", 0) - was.get("sum", 0)) / n * 1000
        bounds = sorted(b for b in now if isinstance(b, float))
        def quantile(q):
            for b in bounds:
                if now[b] - was.get(b, 0) >= q * n:
                    return b * 1000
            return float("inf")
        rows.append((key[1] or key[0], int(n), mean, quantile(.5), quantile(.99)))
    return rows


for i in range(10):
    one(i)
before = scrape()
results = [one(i) for i in range(10, COUNT)]
acks = [a * 1000 for a, _ in results]
seen = [v * 1000 for _, v in results]
print(f"{len(results)} events: acknowledged p50 {pct(acks, .5):.1f} ms, p99 {pct(acks, .99):.1f} ms; "
      f"visible p50 {pct(seen, .5):.1f} ms, p99 {pct(seen, .99):.1f} ms")
for name, n, mean, p50, p99 in stages(before, scrape()):
    print(f"  {name}: {n} observed, mean {mean:.2f} ms, p50 <= {p50:.2f} ms, p99 <= {p99:.2f} ms")
