#!/usr/bin/env python3
"""History data over weeks of event time, and the latency of history queries over it.

Used by `scripts/bench.sh history`; standard library only.

  bench_history.py prefill --node ADDR --prefix P [--players 200 --days 30]
                           [--channels 20 --channel-days 7] --json OUT
  bench_history.py latency --node ADDR --prefix P [--players 200 --days 30]
                           [--channels 20 --channel-days 7] --secs 60 --json OUT

prefill sends, through HTTP ingest (POST /v1/events, NDJSON, one request at a time so every
partition's event time only moves forward), events dated over the past weeks:
- each of --players players `<P>hp<i>` ends a match and levels up once an hour over the
  past --days days (the hourly player history has no empty bucket);
- each of --channels channels `<P>hc<j>` has, every minute over the past --channel-days
  days, a viewer joining, following and leaving 40 s later (viewers `<P>hv<k>`, each in
  one channel at a time).
Every id is new, no event is in the future, and the hours and minutes are those of the
wall clock, so the queries below cover them exactly.

latency asks, one request at a time on one kept-alive connection, for as long as --secs
(or --queries of each), alternately a random player's hourly history over --days days and
a random channel's minute history over --channel-days days, all fields, and times each
answer to its last byte (the client is this script: about 0.1 ms of its own per request).
It reports p50 / p90 / p99 / max per query kind, answers other than 200, and how many of
the buckets of the first answers hold data (a check that the prefill is what is queried).

Not for: verifying the buckets' values (the integration tests compare them with an
independent model; see tests/).
"""
import argparse
import http.client
import json
import random
import sys
import time

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
DAY_MS = 86_400_000
BATCH = 5000


def now_ms():
    return int(time.time() * 1000)


def ranges(args, now):
    """(first hour, first minute, end): the hours and minutes prefill fills and latency asks
    for. The end is the start of the current minute (nothing at or after it is sent)."""
    end = now // MINUTE_MS * MINUTE_MS
    hour0 = end // HOUR_MS * HOUR_MS - args.days * DAY_MS
    minute0 = end - args.channel_days * DAY_MS
    return hour0, minute0, end


def events(args, now):
    """The prefill's events, in event-time order, as NDJSON lines."""
    hour0, minute0, end = ranges(args, now)
    p, n = args.prefix, 0
    for hour in range(hour0, end, HOUR_MS):
        batch = []
        for i in range(args.players):
            # Spread over the hour, a player's two events 10 minutes apart.
            ts = hour + (i * 7919) % (HOUR_MS - 11 * MINUTE_MS)
            for k, body in ((0, {"kind": "match_end", "match_id": f"{p}m{hour // HOUR_MS}-{i}",
                                 "kills": i % 15, "deaths": i % 5, "survival_secs": 60 + i % 1700,
                                 "placement": 1 + i % 99}),
                            (10 * MINUTE_MS, {"kind": "level_up", "level": 1 + (hour // HOUR_MS) % 199})):
                if ts + k < end:
                    batch.append((ts + k, f"{p}hp{i}", body))
        for minute in range(max(hour, minute0), min(hour + HOUR_MS, end), MINUTE_MS):
            m = minute // MINUTE_MS
            for j in range(args.channels):
                viewer, channel = f"{p}hv{(m * args.channels + j) % args.viewers}", f"{p}hc{j}"
                for off, kind in ((0, "viewer_join"), (20_000, "follow"), (40_000, "viewer_leave")):
                    batch.append((minute + off + j, viewer, {"kind": kind, "channel": channel}))
        batch.sort(key=lambda e: e[0])
        for ts, player, body in batch:
            n += 1
            yield json.dumps({"v": 1, "id": f"{p}h{n}", "ts": ts, "player": player, **body},
                             separators=(",", ":"))


def connect(node):
    host, port = node.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=60)


def post(conn, lines):
    body = ("\n".join(lines) + "\n").encode()
    for attempt in range(10):
        conn.request("POST", "/v1/events", body, {"content-type": "application/x-ndjson"})
        r = conn.getresponse()
        answer = r.read()
        if r.status == 202:
            a = json.loads(answer)
            if a.get("rejected"):
                sys.exit(f"bench_history: events rejected: {a['rejected'][:3]}")
            return a["accepted"]
        if r.status == 503 and attempt < 9:
            time.sleep(0.5)  # the same ids again: counted once
            continue
        sys.exit(f"bench_history: POST /v1/events answered {r.status}: {answer[:300]!r}")


def prefill(args):
    now = now_ms()
    conn, lines, sent, t0 = connect(args.node), [], 0, time.monotonic()
    for line in events(args, now):
        lines.append(line)
        if len(lines) == BATCH:
            sent += post(conn, lines)
            lines = []
    if lines:
        sent += post(conn, lines)
    secs = time.monotonic() - t0
    hour0, minute0, end = ranges(args, now)
    res = {"events": sent, "secs": secs, "events_per_sec": sent / secs, "players": args.players,
           "days": args.days, "channels": args.channels, "channel_days": args.channel_days,
           "first_hour_ms": hour0, "first_minute_ms": minute0, "end_ms": end}
    json.dump(res, open(args.json, "w"), indent=2)
    print(f"bench_history: sent {sent:,} events over {args.days} days in {secs:.1f} s "
          f"({sent / secs:,.0f} events/s)", file=sys.stderr)


def percentiles(samples):
    s = sorted(samples)
    if not s:
        return {"samples": 0}
    at = lambda q: s[min(len(s) - 1, int(q * len(s)))]
    return {"samples": len(s), "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99),
            "max_ms": s[-1], "mean_ms": sum(s) / len(s)}


def latency(args):
    # The ranges of the prefill, as it chose them (its minutes are those of its wall clock).
    pre = json.load(open(args.prefill))
    hour0, minute0, end = pre["first_hour_ms"], pre["first_minute_ms"], pre["end_ms"]
    kinds = {
        "player_hourly": (f"step=hour&from={hour0}&to={hour0 + args.days * DAY_MS}", "players", "hp", args.players,
                          "events"),
        "channel_minute": (f"step=minute&from={minute0}&to={end}", "channels", "hc", args.channels, "joins"),
    }
    if args.fields:  # one field per bucket: what building the answer costs, by difference
        kinds = {k: (query + f"&fields={field}", *rest, field)
                 for k, (query, *rest, field) in kinds.items()}
    rnd = random.Random(args.seed)
    conn = connect(args.node)
    times = {k: [] for k in kinds}
    # By where the node took the buckets from (x-tally-history-source): hit, fill, cassandra.
    by_source = {k: {} for k in kinds}
    errors, filled, size = {}, {}, {}
    deadline = time.monotonic() + args.secs
    done = 0
    while True:
        if args.queries and done >= args.queries:
            break
        if not args.queries and time.monotonic() >= deadline:
            break
        done += 1
        for kind, (query, path, tag, count, field) in kinds.items():
            url = f"/v1/{path}/{args.prefix}{tag}{rnd.randrange(count)}/history?{query}"
            t = time.perf_counter()
            conn.request("GET", url)
            r = conn.getresponse()
            body = r.read()
            ms = (time.perf_counter() - t) * 1000
            if r.status != 200:
                errors[str(r.status)] = errors.get(str(r.status), 0) + 1
                if r.will_close:
                    conn = connect(args.node)
                continue
            times[kind].append(ms)
            by_source[kind].setdefault(r.getheader("x-tally-history-source", "none"), []).append(ms)
            if kind not in filled:
                buckets = json.loads(body)["buckets"]
                filled[kind] = {"buckets": len(buckets), "with_data": sum(1 for b in buckets if b.get(field))}
                size[kind] = len(body)
    res = {k: {**percentiles(v), "answer_bytes": size.get(k), "first_answer": filled.get(k),
               "by_source": {src: percentiles(t) for src, t in sorted(by_source[k].items())}}
           for k, v in times.items()}
    res["errors"] = errors
    res["fields"] = args.fields
    json.dump(res, open(args.json, "w"), indent=2)
    for k in kinds:
        d = res[k]
        if d["samples"]:
            print(f"bench_history: {k}: {d['samples']} queries, p50 / p99 / max {d['p50_ms']:.1f} / "
                  f"{d['p99_ms']:.1f} / {d['max_ms']:.1f} ms, {d['answer_bytes']:,} bytes, "
                  f"{d['first_answer']['with_data']} of {d['first_answer']['buckets']} buckets with data; "
                  + ", ".join(f"{src} {b['samples']} (p99 {b['p99_ms']:.1f} ms)" for src, b in d["by_source"].items()),
                  file=sys.stderr)
    if errors:
        print(f"bench_history: answers other than 200: {errors}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["prefill", "latency"])
    ap.add_argument("--node", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--players", type=int, default=200)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--channels", type=int, default=20)
    ap.add_argument("--channel-days", type=int, default=7)
    ap.add_argument("--viewers", type=int, default=2000)
    ap.add_argument("--json", required=True)
    ap.add_argument("--prefill", help="latency: the prefill's JSON (its time ranges)")
    ap.add_argument("--secs", type=float, default=60)
    ap.add_argument("--queries", type=int, default=0, help="latency: this many of each instead of --secs")
    ap.add_argument("--fields", action="store_true", help="latency: one field per bucket instead of all")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.viewers < args.channels:
        sys.exit("bench_history: --viewers must be at least --channels (a viewer is in one channel at a time)")
    prefill(args) if args.command == "prefill" else latency(args)


if __name__ == "__main__":
    main()
