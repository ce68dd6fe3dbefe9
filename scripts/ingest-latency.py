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
read_to_applied of the player records (docs/ARCHITECTURE.md, "Latency, stage by stage");
the parsing is scripts/stage_metrics.py's.
"""
import json
import sys
import time
import urllib.request

import stage_metrics

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


for i in range(10):
    one(i)
before = stage_metrics.scrape(BASE)
results = [one(i) for i in range(10, COUNT)]
acks = [a * 1000 for a, _ in results]
seen = [v * 1000 for _, v in results]
print(f"{len(results)} events: acknowledged p50 {pct(acks, .5):.1f} ms, p99 {pct(acks, .99):.1f} ms; "
      f"visible p50 {pct(seen, .5):.1f} ms, p99 {pct(seen, .99):.1f} ms")
le = lambda ms: "above the last bucket" if ms is None else f"<= {ms:.2f} ms"
for st in stage_metrics.split(before, stage_metrics.scrape(BASE)):
    name = ",".join(f'{k}="{v}"' for k, v in st["labels"].items()) or st["family"]
    print(f"  {name}: {st['count']} observed, mean {st['mean_ms']:.2f} ms, p50 {le(st['p50_le_ms'])}, "
          f"p99 {le(st['p99_le_ms'])}")
