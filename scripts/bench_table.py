#!/usr/bin/env python3
"""Builds the Performance table from bench/results/*.json and puts it into README.md.

Usage: scripts/bench_table.py [RESULTS_DIR] [README]
       BENCH_TABLE_SINCE=EPOCH_SECONDS scripts/bench_table.py ...

With BENCH_TABLE_SINCE, results files written before that time are left out, as if they
were not there: `scripts/bench.sh MODE` sets it to its own start, so a run renders only
the rows it measured, never rows from an older run's files still in RESULTS_DIR.

Each row says what was measured, the result and the command that reproduces it. In the
README, rows of this run replace the rows of the same command, in their place; rows of
commands whose results are not in RESULTS_DIR (not run in this checkout) are kept as they
were, so running one benchmark changes only its own rows. table.md holds this run's rows
only. The README keeps everything outside the markers <!-- bench:start --> and
<!-- bench:end -->.
"""
import glob
import json
import os
import re
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
readme = sys.argv[2] if len(sys.argv) > 2 else "README.md"


since = float(os.environ.get("BENCH_TABLE_SINCE") or 0)


def fresh(path):
    """Whether a results file counts: it exists and was written at or after `since`."""
    return os.path.exists(path) and os.path.getmtime(path) >= since


def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if fresh(path) else None


def by_size(pattern):
    """[(n, json)] for files like viewers-500000.json, smallest n first."""
    found = []
    for p in filter(fresh, glob.glob(os.path.join(out, pattern))):
        m = re.search(r"-(\d+)\.json$", p)
        if m:
            found.append((int(m.group(1)), json.load(open(p))))
    return sorted(found, key=lambda x: x[0])



def services(d):
    """Kafka's and Cassandra's CPU in a viewers run: apart when the run measured them apart."""
    if "cassandra_cpu_cores_avg" in d:
        return (f"Kafka {d['kafka_cpu_cores_avg']:.2f}, Cassandra {d['cassandra_cpu_cores_avg']:.2f} "
                f"at {d['cassandra_cpu_us_per_row']:.0f} µs per row written")
    return f"Kafka + Cassandra {d['kafka_cassandra_cpu_cores_avg']:.2f}"

rows = []
machine = None

node = load("node.json")
if node:
    machine = node["machine"]
    cmd = node.get("command", "scripts/bench.sh node")
    lat = node["steady_latency"]
    applied = f"{node['node_records_per_sec']:,.0f} records/s = {100 * node['node_vs_baseline']:.0f}% of the baseline"
    if "node_vs_batch_baseline" in node:
        applied += f", {100 * node['node_vs_batch_baseline']:.0f}% of the batch-read baseline"
    rows += [
        ("Plain rdkafka consume-and-discard of the same topic (baseline: `poll`, a record per call)",
         f"{node['baseline_records_per_sec']:,.0f} records/s", cmd),
    ]
    if "batch_baseline_records_per_sec" in node:
        rows += [
            ("The same, reading in batches as a node does (batch-read baseline)",
             f"{node['batch_baseline_records_per_sec']:,.0f} records/s", cmd),
        ]
    rows += [
        ("One node applying a pre-filled topic (history on, the default)", applied, cmd),
    ]
    if "node_pretouched_records_per_sec" in node:
        rows += [
            (f"The same records again, a node with node.pretouch_mib = {node['pretouch_mib']:,} (its memory made "
             f"resident at start; target: 80% of the batch-read baseline)",
             f"{node['node_pretouched_records_per_sec']:,.0f} records/s = "
             f"{100 * node['node_pretouched_vs_batch_baseline']:.0f}% of the batch-read baseline", cmd),
        ]
    rows += [
        (f"Resident memory per player ({node['players_resident']:,.0f} players resident)",
         f"{node['bytes_per_player']:,.0f} bytes", cmd),
        ("Cassandra writes during a steady stream (coalescing)",
         f"{node['steady_cassandra_rows_per_sec']:,.0f} rows/s for {node['steady_events_per_sec']:,.0f} records/s applied", cmd),
        ("End-to-end latency in that stream (p50 / p99 / max)",
         f"{lat['p50_ms']:.0f} / {lat['p99_ms']:.0f} / {lat['max_ms']:.0f} ms", cmd),
    ]

for n, d in by_size("cluster-players-*.json"):
    cmd = d.get("command", "scripts/bench.sh cluster")
    waited = d["verify"]["waited_secs"] if d.get("verify") else 0.0
    rows += [
        (f"3-node cluster: {n:,} players, {d['events_sent']:,} events sent at max rate via Kafka",
         f"{d['events_per_sec']:,.0f} events/s sent; all applied and a sample verified exact "
         f"{waited:.1f} s after the last send = {d['events_sent'] / (d['secs'] + waited):,.0f} events/s end to end", cmd),
    ]

for n, d in by_size("failover-*.json"):
    rows.append((f"Failover after kill -9 ({d.get('resident_on_killed_node', 0):,} entities resident on the killed node)",
                 f"{d['secs']:.2f} s until its {d['partitions_moved']} partitions process again", d.get("command", "scripts/bench.sh cluster")))

for n, d in by_size("query-latency-*.json"):
    o, f = d["on_owner"], d["via_non_owner"]
    rows.append((f"Query latency with {n:,} players (owner / through a non-owner), p50 / p99",
                 f"{o['p50_ms']:.2f} / {o['p99_ms']:.2f} ms and {f['p50_ms']:.2f} / {f['p99_ms']:.2f} ms",
                 d.get("command", "scripts/bench.sh cluster")))

for n, d in by_size("viewers-*.json"):
    lat = d["latency"]
    planned = d.get("duration_secs", 0) / max(d.get("speedup", 1), 1e-9)
    on_time = planned == 0 or d["secs"] <= planned * 1.05
    exact = d.get("verify") and not d["verify"].get("mismatches")
    verdict = ("sustained (on schedule" if on_time else f"NOT sustained (took {d['secs']:.0f} s for {planned:.0f} s") + \
        (", verified exact)" if exact else ", not verified)")
    flush = d.get("flush_period_ms")
    label = f"{n:,} viewers over 5,000 channels at real speed, 3 nodes" + \
        (f", shard.flush_period_ms = {flush}" if flush is not None else "")
    cost = ""
    if "stack_cpu_us_per_event" in d:
        cost = (f"; whole stack but the load tester {d['stack_cpu_us_per_event']:.1f} µs of CPU per event (goal: 15), "
                f"{d['cassandra_rows_per_event']:.2f} Cassandra rows per event")
    rows.append((label,
                 f"{verdict}: {d['events_per_sec']:,.0f} events/s; the 3 nodes used {d['cluster_cpu_cores_avg']:.2f} cores "
                 f"on average ({services(d)}, load tester "
                 f"{d['loadtest_cpu_cores_avg']:.2f}){cost}; latency p50 / p99 {lat['p50_ms']:.0f} / {lat['p99_ms']:.0f} ms",
                 d.get("command", f"BENCH_VIEWERS={n} scripts/bench.sh viewers")))

idle = load("idle.json")
if idle:
    rows.append(("3-node cluster at rest (no events: gossip, checkpoint ticks, timers)",
                 f"the 3 nodes used {idle['cluster_cpu_cores_avg']:.3f} cores on average over {idle['secs']:.0f} s",
                 idle.get("command", "scripts/bench.sh idle")))

for name in ("generator-players.json", "generator-viewers.json"):
    d = load(name)
    if d:
        rows.append((f"Load tester alone ({d['scenario']}, --via none: every record built and encoded, then dropped)",
                     f"{d['events_per_sec']:,.0f} events/s", d.get("command", "scripts/bench.sh generator")))

for n, d in by_size("subscribers-*.json"):
    if "without_subscribers" not in d:
        continue
    cmd = d.get("command", f"BENCH_SUBSCRIBERS={n} scripts/bench.sh subscribers")
    s, u, u0 = d["subscribers"], d["node"], d["without_subscribers"]["node"]
    lat, push = d["latency"], s["latency"]
    mix = f"{s['players']:,} players, {s['channels']:,} channels, {s['top']:,} top-N"
    pp = s.get("probe_latency")
    probe = (f"; the probe events themselves pushed after {pp['p50_ms']:.0f} / {pp['p99_ms']:.0f} / {pp['max_ms']:.0f} ms"
             if pp and pp.get("samples") else "")
    exact = "every subscriber's last frame exact" if not s["mismatches"] else f"{len(s['mismatches']):,} MISMATCHES"
    rows += [
        (f"{n:,} WebSocket subscribers on one node ({mix}) while it consumes {d['events_per_sec']:,.0f} events/s",
         f"push latency p50 / p99 / max {push['p50_ms']:.0f} / {push['p99_ms']:.0f} / {push['max_ms']:.0f} ms; "
         f"event-to-visible in the same run {lat['p50_ms']:.0f} / {lat['p99_ms']:.0f} / {lat['max_ms']:.0f} ms "
         f"(push p99 {d['push_p99_over_visible_p99_ms']:+.0f} ms){probe}; {s['frames']:,} frames, {exact}", cmd),
        (f"Node CPU per event at that load, with {n:,} subscribers and without",
         f"{u['cpu_us_per_event']:.1f} µs and {u0['cpu_us_per_event']:.1f} µs "
         f"({100 * d['cpu_per_event_increase']:+.0f}%; {u['load_cpu_cores']:.2f} and {u0['load_cpu_cores']:.2f} cores)", cmd),
        (f"Node memory per idle subscriber ({n:,} connected)",
         f"{u['bytes_per_idle_subscriber'] / 1024:.1f} KiB (RSS {u['rss_kib_before_subscribers'] / 1024:,.0f} to "
         f"{u['rss_kib_idle_subscribers'] / 1024:,.0f} MiB); connecting them took {u['connect_cpu_secs']:.1f} CPU-s in "
         f"{s['connect_secs']:.0f} s, idle they cost {u['idle_cpu_cores_with_subscribers']:.3f} cores", cmd),
    ]
    stages = {st["labels"]["stage"]: st for st in d.get("push_stages", [])}
    if stages:
        rows.append((f"Push stages on the node in that run (mean; p99 as a bucket bound)",
                     "; ".join(f"{name.replace('_', ' ')} {st['mean_ms']:.1f} ms (p50 ≤ {st['p50_le_ms']:g} ms, p99 "
                               + (f"≤ {st['p99_le_ms']:g} ms" if st['p99_le_ms'] is not None else "past the last bucket")
                               + f", {st['count']:,} frames)" for name, st in sorted(stages.items(), reverse=True)), cmd))
    f = d.get("floor")
    if f:
        w, c = f["writes"], f["connections"]
        rows.append((f"Floors on this machine: as many 300-byte loopback TCP writes a second as that run pushed "
                     f"frames ({w['writes'] // max(1, round(w['secs'])):,}/s over {w['sockets']:,} sockets); "
                     f"an idle connection to the node",
                     f"the kernel alone: {w['kernel_us_per_write']:.1f} µs per write, {w['kernel_cores']:.3f} cores = "
                     f"{100 * w['share_of_node_cpu_without']:.0f}% of the node's CPU without subscribers (goal for "
                     f"all of push: 10%); {c['http']['bytes_per_connection'] / 1024:.1f} KiB kept alive after one HTTP/1.1 "
                     f"request, {c['ws']['bytes_per_connection'] / 1024:.1f} KiB upgraded to a WebSocket, nothing "
                     f"subscribed (goal per idle subscriber: 16 KiB)", cmd))

hist = load("history.json")
if hist:
    machine = machine or hist["machine"]
    cmd = hist.get("command", "scripts/bench.sh history")
    c = hist["compare"]
    on, off = c["runs"]["history"], c["runs"]["nohistory"]
    ratios = " and ".join(f"{100 * r:.0f}%" for r in c["on_vs_off_by_round"])
    rows.append((f"History on vs off: one node applying the same pre-filled topic ({c['records']:,} records; "
                 f"target: on at least 75% of off)",
                 f"{c['best_records_per_sec']['history']:,.0f} vs {c['best_records_per_sec']['nohistory']:,.0f} "
                 f"records/s = {100 * c['on_vs_off']:.0f}% (best of {len(on)} alternating rounds each; "
                 f"round by round {ratios})", cmd))
    if "compare_pretouched" in hist:
        pt = hist["compare_pretouched"]
        ratios = " and ".join(f"{100 * r:.0f}%" for r in pt["on_vs_off_by_round"])
        rows.append((f"The same, both nodes with node.pretouch_mib = {pt['pretouch_mib']:,} (memory made resident "
                     f"at start, in the same alternating rounds)",
                     f"{pt['best_records_per_sec']['history']:,.0f} vs {pt['best_records_per_sec']['nohistory']:,.0f} "
                     f"records/s = {100 * pt['on_vs_off']:.0f}% (round by round {ratios})", cmd))
    bpp = lambda runs: min(r["bytes_per_player"] for r in runs)
    rows.append((f"Resident memory per player, history on vs off ({on[-1]['players_resident']:,} players resident)",
                 f"{bpp(on):,.0f} vs {bpp(off):,.0f} bytes (the lower of the rounds)", cmd))
    p, li, lo, w = hist["prefill"], hist["latency_idle"], hist["latency_load"], hist["load_window"]
    def lat(d):
        out = f"{d['p50_ms']:.1f} / {d['p99_ms']:.1f} / {d['max_ms']:.1f} ms"
        src = d.get("by_source")
        if src:  # where the owner took the buckets from: its cache (hit) or Cassandra
            out += " (" + ", ".join(f"{n} {b['samples']}: {b['p50_ms']:.1f} / {b['p99_ms']:.1f} / {b['max_ms']:.1f}"
                                    for n, b in src.items()) + ")"
        return out
    rows.append((f"History queries, one at a time, while the node applies {w['records_per_sec']:,.0f} records/s "
                 f"(aimed at half of the {hist['live_max']['events_per_sec']:,.0f} events/s it sustains live, "
                 f"{hist['load_target_events_per_sec']:,} events/s; the load tester sent {w['sent_events_per_sec']:,.0f}; "
                 f"node {w['node_cpu_cores']:.2f} cores), p50 / p99 / max (target: p99 at most 10 ms)",
                 f"a player's hourly history over {p['days']} days ({lo['player_hourly']['first_answer']['buckets']} "
                 f"buckets, {lo['player_hourly']['answer_bytes'] / 1024:,.0f} KiB): {lat(lo['player_hourly'])}; "
                 f"a channel's minute history over {p['channel_days']} days "
                 f"({lo['channel_minute']['first_answer']['buckets']:,} buckets, "
                 f"{lo['channel_minute']['answer_bytes'] / 1024:,.0f} KiB): {lat(lo['channel_minute'])}", cmd))
    rows.append(("The same queries with the node idle, p50 / p99 / max",
                 f"player {lat(li['player_hourly'])}; channel {lat(li['channel_minute'])}", cmd))
    st = hist["steady"]
    kinds = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(st["bucket_rows_by_kind_per_sec"].items()))
    rows.append(("History bucket rows written to Cassandra during a steady stream (coalescing)",
                 f"{st['bucket_rows_per_sec']:,.0f} rows/s ({kinds}) for {st['records_per_sec']:,.0f} records/s applied "
                 f"= {st['bucket_rows_per_record']:.2f} per record; entity rows {st['entity_rows_per_sec']:,.0f}/s", cmd))

# Event latency on one node (scripts/bench.sh latency): a row per path and load.
# (what, which latency, quantile, at most ms): issue 18's targets.
LATENCY_TARGETS = (("acknowledged p99", "ack_latency", "p99_ms", 30), ("visible p50", "latency", "p50_ms", 15),
                   ("visible p99", "latency", "p99_ms", 50))
TARGETS_LABEL = "targets: " + ", ".join(f"{w} at most {ms} ms" for w, _, _, ms in LATENCY_TARGETS)
STAGE_NAMES = {"queued": "queued", "produce": "produce", "commit": "commit",
               "appended_to_read": "appended→read", "read_to_applied": "read→applied"}
# (name, what carries an event at a trickle) of each path.
PATHS = {"http": ("HTTP ingest", "request"), "kafka": ("straight through Kafka (transactional producer)", "transaction")}
for via in ("http", "kafka"):
    for level in ("light", "half"):
        d = load(f"latency-{via}-{level}.json")
        if not d:
            continue
        a, v, mx = d["ack_latency"], d["latency"], d["path_max"]
        if level == "light":
            what = f"light load ({d['target_events_per_sec']:,} events/s, one per {PATHS[via][1]})"
        else:
            what = (f"half load ({d['target_events_per_sec']:,} events/s aimed, half of the "
                    f"{mx['events_per_sec']:,.0f} it took at max in batches of {mx['batch']:,}; "
                    f"{d['events_per_sec']:,.0f} sent)")
        # The player records' stages only: the probes are player events.
        stages = sorted((s for s in d["stages"] if s["labels"].get("kind", "players") == "players"),
                        key=lambda s: list(STAGE_NAMES).index(s["labels"]["stage"]))
        split = ", ".join(f"{STAGE_NAMES.get(s['labels']['stage'], s['labels']['stage'])} {s['mean_ms']:.1f}"
                          for s in stages)
        missed = [w for w, which, q, ms in LATENCY_TARGETS if d[which][q] > ms]
        verdict = "all three met" if not missed else "missed: " + ", ".join(missed)
        rows.append((f"Event latency on one node, {PATHS[via][0]}, {what}, a probe every "
                     f"{d['probe_interval_ms']} ms ({TARGETS_LABEL})",
                     f"acknowledged p50 / p99 {a['p50_ms']:.1f} / {a['p99_ms']:.1f} ms; visible p50 / p99 "
                     f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f} ms ({v['samples']:,} probes, {v['timeouts']} timeouts); "
                     f"stages (mean): {split} ms; {verdict}", d["command"]))

if not rows:
    sys.exit(f"bench_table: no results in {out}")

lines = []
if machine:
    lines.append(f"Machine: {machine}. Every row is one run of the command beside it; the machine also runs "
                 "Kafka, Cassandra and the load tester.")
    lines.append("")
lines += ["| what | result | command |", "|---|---|---|"]
lines += [f"| {w} | {r} | `{c}` |" for w, r, c in rows]
table = "\n".join(lines) + "\n"
open(os.path.join(out, "table.md"), "w").write(table)
print(table)

def merged(old_table, rows):
    """The README's table with this run's rows in place of the rows of the same command."""
    new_by_command = {}
    for w, r, c in rows:
        new_by_command.setdefault(c, []).append(f"| {w} | {r} | `{c}` |")
    head, body, emitted = [], [], set()
    old_machine = None
    for line in old_table.splitlines():
        m = re.match(r"^\|.*\| `([^`]*)` \|$", line)
        if not m:
            if line.startswith("Machine: "):
                # The rows kept from earlier runs may come from other machines: the line
                # says which, and is kept; say when it does not name this one.
                old_machine = line
                continue
            if not line.startswith("|"):
                head.append(line)
            elif line not in ("| what | result | command |", "|---|---|---|"):
                # A row written by hand, its command not only a command: kept in its place.
                body.append(line)
            continue
        command = m.group(1)
        if command in new_by_command:
            if command not in emitted:
                body.extend(new_by_command[command])
                emitted.add(command)
        else:
            body.append(line)
    body += [l for c, ls in new_by_command.items() if c not in emitted for l in ls]
    if old_machine and machine and machine.split(",")[-1].strip() not in old_machine:
        print(f"bench_table: the README's machine line does not name this machine ({machine}); "
              "edit it to say which rows ran where", file=sys.stderr)
    line = old_machine or (machine and f"Machine: {machine}. Every row is one run of the command beside "
                           "it; the machine also runs Kafka, Cassandra and the load tester.")
    if line:
        head = [line, ""] + [h for h in head if h.strip()]
    while head and not head[-1].strip():
        head.pop()
    while head and not head[0].strip():
        head.pop(0)
    out_lines = head + ([""] if head else []) + ["| what | result | command |", "|---|---|---|"] + body
    return "\n".join(out_lines) + "\n"


text = open(readme).read()
start, end = "<!-- bench:start -->", "<!-- bench:end -->"
if start in text and end in text:
    head, rest = text.split(start, 1)
    old_table, tail = rest.split(end, 1)
    open(readme, "w").write(f"{head}{start}\n{merged(old_table, rows)}{end}{tail}")
    print(f"bench_table: updated {readme}")
else:
    print(f"bench_table: {readme} has no {start} / {end} markers; table left in {out}/table.md")
