#!/usr/bin/env python3
"""Checks the Grafana dashboard and the alert rules in deploy/ (standard library only).

  check-monitoring.py static --promtool PROMTOOL --workdir DIR [--provisioning FILE.json]... DASHBOARD.json...
      Offline: each dashboard loads as JSON; has uid, title, an integer schemaVersion and panels;
      panel ids are unique (rows' nested panels included); every panel has a Prometheus target
      on the `datasource` variable; every `$var` is a template variable or a Grafana built-in;
      every service metric (sessionizer_*, gateway_*, and the process collector's process_*)
      is selected with namespace="$namespace", pod=~"$pod"; every expression on process_*
      (unprefixed, exported by both services) keeps only its service's pods by joining
      `on (namespace, pod)` with that service's *_build_info; and every
      target expression and variable query, with the variables substituted, passes
      `promtool check rules` as a recording rule. Provisioning files (converted to JSON by the
      caller) must name a file provider with a path, or Prometheus data sources with a url.

  check-monitoring.py live --prometheus URL --metrics-url URL --alerts ALERTS.json
                           [--alert-group NAME]... --namespace NS --pod POD [--timeout SECS]
                           DASHBOARD.json...
      Against a running Prometheus that scrapes the running service behind --metrics-url
      (the sessionizer or the gateway), for the given dashboards and the alerts of the given
      groups (all groups without --alert-group); see scripts/check-prometheus-live.sh for the
      setup and the rules of the test.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# Grafana variables a dashboard may use without declaring them.
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                     "__range_ms", "__dashboard", "__from", "__to", "__name", "__org", "__user"}
# Every variable a panel query must filter on, and the matcher it must use.
REQUIRED_MATCHERS = ('namespace="$namespace"', 'pod=~"$pod"')
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
# The services' own metrics (services/*/src/metrics.rs): the sessionizer's and the gateway's,
# and the process collector's (process_*, unprefixed, in both).
METRIC = re.compile(r"\b(?:sessionizer|gateway|process)_[A-Za-z0-9_]+")
SELECTOR = re.compile(r"\b((?:sessionizer|gateway|process)_[A-Za-z0-9_]+)\s*(\{[^}]*\})?")
PROCESS_JOIN = re.compile(r"\bon\s*\(\s*namespace\s*,\s*pod\s*\)\s*group_left\b.*\b(sessionizer|gateway)_build_info\b", re.S)
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.S)
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
ANNOTATION_LABEL = re.compile(r"\$labels\.(\w+)")


class Problems:
    def __init__(self):
        self.items = []

    def add(self, message):
        self.items.append(message)

    def report_and_exit(self, what):
        if self.items:
            for message in self.items:
                print(f"  - {message}", file=sys.stderr)
            print(f"{what}: {len(self.items)} problem(s)", file=sys.stderr)
            sys.exit(1)


def all_panels(panels):
    """Every panel, with the panels nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def substitute(expr, values):
    """Replaces $var and ${var} (and ${var:format}) with values[var]; unknown names stay."""
    def one(match):
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))
    return VARIABLE.sub(one, expr)


def variable_query(variable):
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    return query if isinstance(query, str) else None


def dashboard_targets(dashboard):
    """(panel, target) for every query target of every panel."""
    for panel in all_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []) or []:
            yield panel, target


# ---------------------------------------------------------------------------------------------
# static


def check_dashboard_static(path, problems):
    try:
        with open(path) as file:
            dashboard = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        problems.add(f"{path}: cannot load as JSON: {error}")
        return []
    for key in ("uid", "title"):
        if not isinstance(dashboard.get(key), str) or not dashboard.get(key):
            problems.add(f"{path}: `{key}` missing or empty")
    if not isinstance(dashboard.get("schemaVersion"), int) or isinstance(dashboard.get("schemaVersion"), bool):
        problems.add(f"{path}: `schemaVersion` missing or not an integer")
    if not isinstance(dashboard.get("panels"), list) or not dashboard["panels"]:
        problems.add(f"{path}: `panels` missing or empty")
        return []

    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    datasource = variables.get("datasource", {})
    if datasource.get("type") != "datasource" or datasource.get("query") != "prometheus":
        problems.add(f"{path}: needs a template variable `datasource` of type datasource, query prometheus")
    for name in ("namespace", "pod"):
        if variables.get(name, {}).get("type") != "query" or not variable_query(variables.get(name, {})):
            problems.add(f"{path}: needs a query template variable `{name}`")
    known = set(variables) | BUILTIN_VARIABLES

    seen_ids = {}
    exprs = []  # (where, expr)
    for panel in all_panels(dashboard["panels"]):
        title = panel.get("title", "?")
        panel_id = panel.get("id")
        if not isinstance(panel_id, int):
            problems.add(f"{path}: panel {title!r} has no integer id")
        elif panel_id in seen_ids:
            problems.add(f"{path}: panel id {panel_id} used by {seen_ids[panel_id]!r} and {title!r}")
        else:
            seen_ids[panel_id] = title
        if not isinstance(panel.get("gridPos"), dict):
            problems.add(f"{path}: panel {title!r} has no gridPos")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            problems.add(f"{path}: panel {title!r} has no targets")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.add(f"{path}: panel {title!r} does not use the ${{datasource}} variable")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids) or None in ref_ids:
            problems.add(f"{path}: panel {title!r} has missing or repeated refIds {ref_ids}")
        for target in targets:
            where = f"{path}: panel {panel_id} {title!r} target {target.get('refId')}"
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.add(f"{where}: no expr")
                continue
            if target.get("datasource", {}).get("uid", "${datasource}") != "${datasource}":
                problems.add(f"{where}: target does not use the ${{datasource}} variable")
            exprs.append((where, expr))
            for selector in SELECTOR.finditer(expr):
                matchers = selector.group(2) or ""
                missing = [m for m in REQUIRED_MATCHERS if m not in matchers]
                if missing:
                    problems.add(f"{where}: {selector.group(1)} is not filtered by {', '.join(missing)}")
            # Both services export process_*: without the join a namespace holding both would
            # sum the other service's processes in.
            if re.search(r"\bprocess_", expr):
                join = PROCESS_JOIN.search(expr)
                if not join or join.group(1) != dashboard.get("uid"):
                    problems.add(f"{where}: process_* must be joined `* on (namespace, pod) group_left ... "
                                 f"{dashboard.get('uid')}_build_info{{...}}` to keep only this service's pods")
    for name, variable in variables.items():
        query = variable_query(variable)
        if variable.get("type") == "query" and query:
            match = LABEL_VALUES.match(query)
            if not match:
                problems.add(f"{path}: variable {name}: query is not label_values(selector, label)")
                continue
            exprs.append((f"{path}: variable {name}", match.group(1)))
    for where, expr in exprs:
        for match in VARIABLE.finditer(expr):
            name = match.group(1) or match.group(2)
            if name not in known:
                problems.add(f"{where}: unknown variable ${name}")
    return exprs


def static_values():
    """Placeholder values: intervals become durations, variables plain words."""
    values = {"__rate_interval": "5m", "__interval": "5m", "__range": "5m"}
    return values


def run_static(args):
    problems = Problems()
    rules = []
    for path in args.dashboards:
        for where, expr in check_dashboard_static(path, problems):
            values = static_values()
            for match in VARIABLE.finditer(expr):
                name = match.group(1) or match.group(2)
                values.setdefault(name, "placeholder")
            rules.append((where, substitute(expr, values)))
    for path in args.provisioning or []:
        check_provisioning(path, problems)
    problems.report_and_exit("dashboard static check")

    rules_file = os.path.join(args.workdir, "dashboard-exprs.rules.yml")
    with open(rules_file, "w") as file:
        file.write("groups:\n  - name: dashboard\n    rules:\n")
        for index, (where, expr) in enumerate(rules):
            file.write(f"      # {where}\n")
            file.write(f"      - record: dashboard_expr_{index}\n")
            file.write(f"        expr: {json.dumps(expr)}\n")
    proc = subprocess.run([args.promtool, "check", "rules", "--lint=none", rules_file],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        # Name the panels behind the rule names promtool reports.
        for index in sorted({int(n) for n in re.findall(r"dashboard_expr_(\d+)", proc.stdout + proc.stderr)}):
            print(f"  dashboard_expr_{index} is {rules[index][0]}", file=sys.stderr)
        print("dashboard static check: promtool rejects a dashboard expression", file=sys.stderr)
        sys.exit(1)
    print(f"dashboards {' '.join(args.dashboards)}: structure OK; {len(rules)} expressions pass promtool check rules")


def check_provisioning(path, problems):
    try:
        with open(path) as file:
            config = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        problems.add(f"{path}: cannot load: {error}")
        return
    if config.get("apiVersion") != 1:
        problems.add(f"{path}: apiVersion must be 1")
    providers, datasources = config.get("providers"), config.get("datasources")
    if not providers and not datasources:
        problems.add(f"{path}: neither providers nor datasources")
    for provider in providers or []:
        if provider.get("type", "file") != "file" or not provider.get("options", {}).get("path"):
            problems.add(f"{path}: provider {provider.get('name')!r} must be type file with options.path")
    for datasource in datasources or []:
        if datasource.get("type") != "prometheus" or not datasource.get("url"):
            problems.add(f"{path}: data source {datasource.get('name')!r} must be type prometheus with a url")


# ---------------------------------------------------------------------------------------------
# live: the measured side of an alert expression


def split_top_level(expr, operators):
    """Splits expr at operators outside (), [], {} and strings. Returns [(op, part)]."""
    pieces, depth, start, index, quote = [], 0, 0, 0, None
    words = [op for op in operators if op.isalpha()]
    symbols = sorted((op for op in operators if not op.isalpha()), key=len, reverse=True)
    previous_op = None
    while index < len(expr):
        char = expr[index]
        if quote:
            if char == "\\":
                index += 2
                continue
            if char == quote:
                quote = None
            index += 1
            continue
        if char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            found = None
            for word in words:
                end = index + len(word)
                if (expr[index:end].lower() == word
                        and (index == 0 or not (expr[index - 1].isalnum() or expr[index - 1] == "_"))
                        and (end == len(expr) or not (expr[end].isalnum() or expr[end] == "_"))):
                    found = word
                    break
            if found is None:
                for symbol in symbols:
                    if expr.startswith(symbol, index):
                        # `=~` and `!~` only occur inside braces; `==` must not be read as `=`.
                        found = symbol
                        break
            if found:
                pieces.append((previous_op, expr[start:index]))
                previous_op = found
                index += len(found)
                start = index
                continue
        index += 1
    pieces.append((previous_op, expr[start:]))
    return pieces


def strip_modifiers(operand):
    """Removes a leading `bool` and on()/ignoring()/group_left()/group_right() from an operand."""
    changed = True
    operand = operand.strip()
    while changed:
        changed = False
        match = re.match(r"^(bool)\b\s*", operand)
        if match:
            operand, changed = operand[match.end():], True
        match = re.match(r"^(on|ignoring|group_left|group_right)\s*(\([^)]*\))?\s*", operand)
        if match and match.group(0).strip():
            operand, changed = operand[match.end():], True
    return operand.strip()


def is_number(text):
    try:
        float(text.strip())
        return True
    except ValueError:
        return False


def unwrap(expr):
    """Removes parentheses that enclose the whole expression."""
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for index, char in enumerate(expr):
            depth += char == "("
            depth -= char == ")"
            if depth == 0 and index < len(expr) - 1:
                return expr
        expr = expr[1:-1].strip()
    return expr


def measured_sides(expr):
    """The expressions an alert compares with its thresholds.

    `A > 60` gives [A]; `A > 0 and B > 1000` gives [A, B]; an expression without a top-level
    comparison is its own measured side.
    """
    expr = unwrap(expr)
    sides = []
    for _, operand in split_top_level(expr, ["or", "and", "unless"]):
        operand = unwrap(strip_modifiers(operand))
        parts = split_top_level(operand, ["==", "!=", ">=", "<=", ">", "<"])
        if len(parts) == 1:
            sides.append(operand)
            continue
        for _, part in parts:
            part = unwrap(strip_modifiers(part))
            if not is_number(part):
                sides.append(part)
    return sides


def shorten_subquery_resolution(expr, resolution):
    """`x[10m:1m]` -> `x[10m:1s]`: a run of a minute has no two points at a 1m resolution."""
    return re.sub(r"\[\s*(\w+)\s*:\s*\w*\s*\]", lambda m: f"[{m.group(1)}:{resolution}]", expr)


# ---------------------------------------------------------------------------------------------
# live: Prometheus HTTP API


def api(base, path, params=None, method="POST"):
    """GET or POST (form-encoded, so PromQL needs no escaping) to the HTTP API."""
    encoded = urllib.parse.urlencode(params or {}, doseq=True)
    url = base.rstrip("/") + path
    if method == "GET":
        request = urllib.request.Request(url + ("?" + encoded if encoded else ""))
    else:
        request = urllib.request.Request(url, data=encoded.encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        # 400/422 carry {"status":"error","errorType":"bad_data","error":...}.
        try:
            return json.load(error)
        except json.JSONDecodeError:
            return {"status": "error", "error": f"HTTP {error.code}"}
    except (urllib.error.URLError, OSError) as error:
        return {"status": "error", "error": str(error)}


def query(base, expr):
    """(parse error or None, [series]) of an instant query now."""
    answer = api(base, "/api/v1/query", {"query": expr})
    if answer.get("status") != "success":
        return f"{answer.get('errorType', '')} {answer.get('error', answer)}".strip(), []
    data = answer["data"]
    if data["resultType"] in ("scalar", "string"):
        return None, [{"metric": {}, "value": data["result"]}]
    return None, data["result"]


def finite(series):
    try:
        return math.isfinite(float(series["value"][1]))
    except (KeyError, IndexError, TypeError, ValueError):
        return False


def fetch_text(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


class Check:
    """One expression that must parse, and (when `needs_data`) return finite samples whose
    series carry `labels`."""

    def __init__(self, where, expr, needs_data, labels=()):
        self.where, self.expr, self.needs_data, self.labels = where, expr, needs_data, set(labels)

    def run(self, base):
        error, series = query(base, self.expr)
        if error:
            return f"{self.where}: does not parse or evaluate: {error}\n      {self.expr}"
        if not self.needs_data:
            return None
        if not any(finite(s) for s in series):
            what = "no series" if not series else f"{len(series)} series, none finite"
            return f"{self.where}: returns no data ({what})\n      {self.expr}"
        missing = {label for s in series for label in self.labels if label not in s["metric"]}
        if missing:
            return f"{self.where}: result lacks label(s) {sorted(missing)} used in its legend or annotations\n      {self.expr}"
        return None


def live_checks(args):
    values = {"namespace": args.namespace, "pod": args.pod, "__rate_interval": args.rate_interval,
              "__interval": args.rate_interval, "__range": args.range}
    checks, variable_checks, names = [], [], set()
    for path in args.dashboards:
        with open(path) as file:
            dashboard = json.load(file)
        for panel, target in dashboard_targets(dashboard):
            expr = target["expr"]
            names.update(METRIC.findall(expr))
            labels = LEGEND_LABEL.findall(target.get("legendFormat", ""))
            checks.append(Check(f"panel {panel['id']} {panel.get('title')!r} {target['refId']}",
                                substitute(expr, values), True, labels))
        for variable in dashboard.get("templating", {}).get("list", []):
            query_text = variable_query(variable)
            match = LABEL_VALUES.match(query_text or "") if variable.get("type") == "query" else None
            if match:
                names.update(METRIC.findall(match.group(1)))
                variable_checks.append((variable["name"], substitute(match.group(1), values), match.group(2)))
    with open(args.alerts) as file:
        alerts = json.load(file)
    groups = [g for g in alerts["groups"] if not args.alert_group or g["name"] in args.alert_group]
    missing_groups = set(args.alert_group or []) - {g["name"] for g in alerts["groups"]}
    if missing_groups:
        sys.exit(f"live: no alert group(s) {sorted(missing_groups)} in {args.alerts}")
    for group in groups:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            expr = rule["expr"].strip()
            names.update(METRIC.findall(expr))
            labels = set()
            for text in list(rule.get("annotations", {}).values()) + list(rule.get("labels", {}).values()):
                labels.update(ANNOTATION_LABEL.findall(text))
            checks.append(Check(f"alert {name} (full expression)", expr, False))
            for index, side in enumerate(measured_sides(expr)):
                checks.append(Check(f"alert {name} measured side {index + 1}",
                                    shorten_subquery_resolution(side, args.scrape_interval), True, labels))
    return checks, variable_checks, names, values


def run_live(args):
    checks, variable_checks, names, values = live_checks(args)
    print(f"live: {len(checks)} expressions ({sum(c.needs_data for c in checks)} must return data), "
          f"{len(variable_checks)} variable queries, {len(names)} service metric names", flush=True)

    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    while True:
        failures = [f for f in (c.run(args.prometheus) for c in checks) if f]
        # Every service metric the dashboards and the alerts name is in the service's
        # /metrics (labelled series appear once touched, so this is polled too).
        try:
            exposition = fetch_text(args.metrics_url)
        except (urllib.error.URLError, OSError) as error:
            exposition = ""
            failures.append(f"cannot read {args.metrics_url}: {error}")
        exported = {line.split("{")[0].split(" ")[0] for line in exposition.splitlines()
                    if line and not line.startswith("#")}
        for name in sorted(names - exported):
            failures.append(f"metric {name} is referenced but not in {args.metrics_url}")
        for name, selector, label in variable_checks:
            # What Grafana's label_values(selector, label) asks (this endpoint is GET only).
            answer = api(args.prometheus, f"/api/v1/label/{label}/values", {"match[]": selector}, "GET")
            want = values.get(label)
            if answer.get("status") != "success" or want not in answer.get("data", []):
                failures.append(f"variable {name}: label_values({selector}, {label}) gives "
                                f"{answer.get('data', answer)}, not {want!r}")
        rules = api(args.prometheus, "/api/v1/rules", method="GET")
        for group in rules.get("data", {}).get("groups", []):
            for rule in group["rules"]:
                if rule.get("health") != "ok":
                    failures.append(f"rule {rule.get('name')}: health {rule.get('health')!r} {rule.get('lastError', '')}")
        if not rules.get("data", {}).get("groups"):
            failures.append("Prometheus has loaded no alert rules")
        # Parse errors never heal: stop at once.
        parse_errors = [f for f in failures if "does not parse" in f]
        if parse_errors:
            failures = parse_errors
            break
        if not failures or time.monotonic() >= deadline:
            break
        time.sleep(2)
    if failures:
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        print(f"live: {len(failures)} failure(s) after {time.monotonic() - started:.0f} s", file=sys.stderr)
        sys.exit(1)
    print(f"live: all {len(names)} referenced metrics are exported by {args.metrics_url}; "
          f"every panel and alert expression parses and returns data; variables resolve; rules healthy (after {time.monotonic() - started:.0f} s of polling)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    static = sub.add_parser("static")
    static.add_argument("--promtool", default="promtool")
    static.add_argument("--workdir", required=True)
    static.add_argument("--provisioning", action="append", help="a provisioning file as JSON; repeatable")
    static.add_argument("dashboards", nargs="+")
    live = sub.add_parser("live")
    live.add_argument("--prometheus", required=True)
    live.add_argument("--metrics-url", required=True)
    live.add_argument("--alerts", required=True, help="alerts.yml converted to JSON")
    live.add_argument("--alert-group", action="append", help="only the alerts of this group; repeatable")
    live.add_argument("--namespace", required=True)
    live.add_argument("--pod", required=True)
    live.add_argument("--rate-interval", default="1m")
    live.add_argument("--range", default="5m")
    live.add_argument("--scrape-interval", default="1s")
    live.add_argument("--timeout", type=float, default=90)
    live.add_argument("dashboards", nargs="+")
    args = parser.parse_args()
    if args.command == "static":
        run_static(args)
    else:
        run_live(args)


if __name__ == "__main__":
    main()
