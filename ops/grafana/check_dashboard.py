#!/usr/bin/env python3
"""Checks ops/grafana/tally.json: it is JSON Grafana can import, and every query in it is
PromQL that Prometheus's own parser accepts.

    check_dashboard.py DASHBOARD PROMTOOL

The structure checks are the ones a broken import shows: a schema version, a Prometheus
data source variable that every target uses, unique panel ids, a grid position per panel.
The queries are handed to `promtool check rules` as recording rules, after Grafana's
variables are replaced by what Grafana would put there ($__rate_interval by a duration,
any other $variable by a word inside its quoted label value).

Not for: metric names (node/tests/metrics.rs checks those against a running node).
"""

import json
import os
import re
import subprocess
import sys
import tempfile

DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")


def fail(message):
    print(f"check_dashboard: {message}", file=sys.stderr)
    sys.exit(1)


def panels_of(dashboard):
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def structure(dashboard):
    """The (panel, target) pairs, after checking what an import needs."""
    if not isinstance(dashboard.get("schemaVersion"), int):
        fail("no schemaVersion")
    variables = dashboard.get("templating", {}).get("list", [])
    if not any(v.get("type") == "datasource" and v.get("name") == "datasource"
               and v.get("query") == "prometheus" for v in variables):
        fail("no Prometheus data source variable named datasource")
    ids, queries = set(), []
    for panel in panels_of(dashboard):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            fail(f"panel id {panel.get('id')} ({title}) used twice")
        ids.add(panel.get("id"))
        if not {"h", "w", "x", "y"} <= set(panel.get("gridPos", {})):
            fail(f"panel {title!r} has no complete gridPos")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets", [])
        if not targets:
            fail(f"panel {title!r} has no query")
        for target in targets:
            uid = target.get("datasource", {}).get("uid")
            if uid != "${datasource}":
                fail(f"panel {title!r} query {target.get('refId')} uses data source {uid!r}, "
                     "not ${datasource}")
            if not target.get("expr"):
                fail(f"panel {title!r} query {target.get('refId')} has no expr")
            queries.append((panel, target))
    for v in variables:
        if v.get("type") == "query":
            queries.append(({"id": f"variable_{v['name']}", "title": f"variable {v['name']}"},
                             {"refId": "query", "expr": label_values_selector(v)}))
    return queries


def label_values_selector(variable):
    """The series selector of a `label_values(selector, label)` variable query."""
    definition = variable.get("definition", "")
    m = re.fullmatch(r"label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\)", definition)
    if not m:
        fail(f"variable {variable.get('name')}: {definition!r} is not label_values(selector, label)")
    return m.group(1)


def as_promql(expr):
    for variable, duration in DURATIONS.items():
        expr = expr.replace(variable, duration)
    return VARIABLE.sub("grafana_variable", expr)


def main():
    if len(sys.argv) != 3:
        fail("usage: check_dashboard.py DASHBOARD PROMTOOL")
    path, promtool = sys.argv[1:]
    try:
        with open(path, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")
    queries = structure(dashboard)
    rules, names = [], {}
    for panel, target in queries:
        name = f"dashboard:panel_{panel['id']}:{target['refId']}"
        names[name] = f"panel {panel.get('title')!r} query {target['refId']}"
        # A JSON string is a YAML double-quoted scalar.
        rules.append(f"      - record: {name}\n        expr: {json.dumps(as_promql(target['expr']))}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
    try:
        run = subprocess.run([promtool, "check", "rules", "--lint=none", f.name],
                             capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if run.returncode != 0:
        out = run.stdout + run.stderr
        for name, where in names.items():
            out = out.replace(name, f"{name} ({where})")
        fail(f"{path}: promtool refused a query:\n{out}")
    print(f"check_dashboard: {path}: {len(queries)} queries parse, "
          f"{sum(1 for _ in panels_of(dashboard))} panels")


if __name__ == "__main__":
    main()
