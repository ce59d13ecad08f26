#!/usr/bin/env python3
"""Turns the benchmarks' figures into the one report `make bench` prints.

Each figure is divided by a baseline measured in the same run; absolute numbers are shown
for context only. Two sources:
- criterion's medians for the producer helpers (target/criterion);
- pipeline-bench's JSON for the sessionizer end to end (target/bench/pipeline.json).
It prints the detailed report, then one table (figure, value, unit, baseline, ratio, goal,
met) and writes the same table to bench-results/latest.json (third argument) as
{"figures": [{"name", "value", "unit", "baseline", "ratio", "goal", "met"}], "run": {...}}.
Exit status is 0 even when a goal is missed: the report says so.

Usage: bench_report.py [CRITERION_DIR] [PIPELINE_JSON] [RESULTS_JSON] [SIZE]
"""
import datetime
import json
import os
import sys
from pathlib import Path

# The table: one dict per figure, in the order printed.
FIGURES: list = []


def figure(name, value, unit, baseline=None, ratio=None, goal=None, met=None) -> None:
    """Adds a row. `baseline` says what the ratio divides by (with its value); `goal` is the
    condition on the ratio or value; `met` is None when the figure has no goal."""
    FIGURES.append(
        {
            "name": name,
            "value": None if value is None else round(float(value), 4),
            "unit": unit,
            "baseline": baseline,
            "ratio": None if ratio is None else round(float(ratio), 4),
            "goal": goal,
            "met": met,
        }
    )


def estimates_path(root: Path, group: str, bench: str) -> Path:
    return root / group / bench / "new" / "estimates.json"


def median_ns(root: Path, group: str, bench: str) -> float:
    with estimates_path(root, group, bench).open() as handle:
        return json.load(handle)["median"]["point_estimate"]


# The baseline runs first, so every result of the same criterion run is written after it; an
# older one comes from an earlier revision of the bench (a variant since removed): not shown.
STALE_SECONDS = 1


def same_run_median(root: Path, group: str, bench: str, baseline_mtime: float):
    """The median of `bench` when it was written by the same criterion run as the baseline of
    its group, else None (a variant an older revision of the bench had, or none at all)."""
    try:
        if estimates_path(root, group, bench).stat().st_mtime < baseline_mtime - STALE_SECONDS:
            return None
        return median_ns(root, group, bench)
    except OSError:
        return None


def criterion_baseline(root: Path, group: str, bench: str):
    """(median, modification time) of a group's baseline, or None, said, when it is missing."""
    try:
        return median_ns(root, group, bench), estimates_path(root, group, bench).stat().st_mtime
    except OSError as error:
        print(f"  no criterion results ({error})")
        return None


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def producer_report(root: Path, goals: list) -> None:
    print()
    print("Producer helper cost per trace, against the OpenTelemetry SDK and a bare rdkafka send")
    found = criterion_baseline(root, "emit_path", "bare_send")
    if found is None:
        return
    bare, baseline_mtime = found
    medians = {
        bench: same_run_median(root, "emit_path", bench, baseline_mtime)
        for bench in [
            "request_path", "build_only", "encode_only", "otel_sdk", "otel_sdk_static_values"
        ]
    }
    request = medians["request_path"]
    if request is None:
        print("  no request_path result from the baseline's run")
        return
    print(f"  bare_send: median {bare / 1000:.2f} µs per trace")
    print(f"  request path (context, 3-step trace, Avro, enqueue): median {request / 1000:.2f} µs"
          f" = {request / bare:.2f}x bare send")
    for label, bench in [("of which building the trace", "build_only"),
                         ("of which Avro encoding", "encode_only")]:
        if medians[bench] is not None:
            print(f"    {label}: median {medians[bench] / 1000:.2f} µs")
    figure(
        "producer helper request path against a bare send",
        request / 1000,
        "µs/trace",
        f"bare rdkafka send of the same bytes, {bare / 1000:.2f} µs",
        request / bare,
        None,
        None,
    )
    peer = medians["otel_sdk"]
    if peer is None:
        print("  no otel_sdk result from the baseline's run")
        return
    goal = 1.0
    ratio = request / peer
    met = ratio <= goal
    print(f"  OpenTelemetry SDK, same request as 4 spans, batch span processor: median "
          f"{peer / 1000:.2f} µs; helpers = {ratio:.2f}x  goal <= {goal:.1f}x: {verdict(met)}")
    goals.append((f"producer request path <= {goal:.1f}x the OpenTelemetry SDK", f"{ratio:.2f}x", met))
    figure(
        "producer helper request path (context, 3-step trace, Avro, enqueue)",
        request / 1000,
        "µs/trace",
        f"opentelemetry SDK, 4 spans through a batch span processor, {peer / 1000:.2f} µs",
        ratio,
        f"<= {goal:.1f}x",
        met,
    )
    static = medians["otel_sdk_static_values"]
    if static is not None:
        print(f"  the SDK with run-time values as 'static strings (no copies): median "
              f"{static / 1000:.2f} µs; helpers = {request / static:.2f}x (reported)")
        figure(
            "producer helper request path against the OpenTelemetry SDK given 'static values",
            request / 1000,
            "µs/trace",
            f"opentelemetry SDK, run-time values not copied, {static / 1000:.2f} µs",
            request / static,
            None,
            None,
        )


def otel_report(root: Path) -> None:
    print()
    print("OpenTelemetry ingest per trace (4 spans), against the native decode of the same traces")
    found = criterion_baseline(root, "otel_assembly", "native_decode")
    if found is None:
        return
    baseline, baseline_mtime = found
    # Criterion's throughput groups report the time of one iteration: 100 traces.
    traces = 100
    print(f"  baseline native_decode: median {baseline / traces / 1000:.2f} µs per trace")
    for label, bench in [
        ("OTLP protobuf decode, grouping and assembly", "otlp_decode_assemble"),
        ("  of which grouping and assembly", "assemble_only"),
    ]:
        value = same_run_median(root, "otel_assembly", bench, baseline_mtime)
        if value is None:
            continue
        ratio = value / baseline
        per_trace_us = value / traces / 1000
        print(
            f"  {label}: median {per_trace_us:.2f} µs per trace "
            f"({traces * 4 / (value / 1e9):,.0f} spans/s) = {ratio:.2f}x baseline"
        )
        if bench == "otlp_decode_assemble":
            figure(
                "OpenTelemetry ingest: OTLP decode + assembly per trace (4 spans)",
                per_trace_us,
                "µs/trace",
                f"native Avro decode of the same traces, {baseline / traces / 1000:.2f} µs",
                ratio,
            )


def gateway_rows_report(root: Path) -> None:
    print()
    print("Gateway: a data-stream body to records per row, against parsing it into values")
    for rows in [1, 100]:
        group = f"data_stream_{rows}"
        found = criterion_baseline(root, group, "values_and_text")
        if found is None:
            continue
        baseline, baseline_mtime = found
        value = same_run_median(root, group, "stream_records", baseline_mtime)
        if value is None:
            print(f"  no stream_records result from the baseline's run ({group})")
            continue
        per_row, baseline_per_row = value / rows / 1000, baseline / rows / 1000
        print(
            f"  {rows} row(s) per request: stream_records median {per_row:.2f} µs per row, "
            f"values and text {baseline_per_row:.2f} µs = {value / baseline:.2f}x"
        )
        figure(
            f"gateway: the official SDK's data-stream body to records, {rows} row(s) per request",
            per_row,
            "µs/row",
            f"serde_json parse into values, rows written back as text, {baseline_per_row:.2f} µs",
            value / baseline,
        )


# Figures one part computes for another's goal.
RUN_STATE: dict = {}


def decode_row_report(root: Path, goals: list) -> None:
    print()
    print("Decode + row per trace, against the naive crate path on the same records")
    found = criterion_baseline(root, "decode_row", "naive_crate_path")
    if found is None:
        return
    baseline, baseline_mtime = found
    # One iteration handles the bench's 2 records.
    records = 2
    print(
        f"  baseline naive_crate_path (SpecificSingleObjectReader + serde_json): "
        f"median {baseline / records / 1000:.2f} µs per trace"
    )
    for label, bench, goal in [
        ("project decode + row", "project_path", 1.0),
        ("  of which decode", "project_decode_only", None),
    ]:
        value = same_run_median(root, "decode_row", bench, baseline_mtime)
        if value is None:
            continue
        ratio = value / baseline
        if bench == "project_path":
            # Part of the CPU floor of the sessionizer's figure (pipeline_report).
            RUN_STATE["decode_row_us_per_trace"] = value / records / 1000
        text = f"  {label}: median {value / records / 1000:.2f} µs per trace = {ratio:.2f}x baseline"
        if goal is not None:
            met = ratio <= goal
            text += f"  goal <= {goal:.1f}x: {verdict(met)}"
            goals.append((f"decode + row <= {goal:.1f}x the naive crate path", f"{ratio:.2f}x", met))
            figure(
                "decode + row per trace (single thread)",
                value / records / 1000,
                "µs/trace",
                f"naive crate path (apache-avro SpecificSingleObjectReader + serde_json), "
                f"{baseline / records / 1000:.2f} µs",
                ratio,
                f"<= {goal:.1f}x",
                met,
            )
        print(text)


# Every variant of pipeline-bench's throughput part.
THROUGHPUT_VARIANTS = ("bare", "minimal", "sessionizer", "sessionizer_repartition_off", "sessionizer_all_forwarded")


def throughput_report(t: dict, goals: list) -> None:
    w = t["workload"]
    print(
        f"  workload: {w['traces']} traces ({w['sessions']} sessions x {w['turns_per_session']} turns, "
        f"{w['users']} users, {w['partitions']} partitions), Avro {w['avro_bytes_mean']:.0f} B mean "
        f"({w['avro_bytes_min']}-{w['avro_bytes_max']}), {w['steps_per_trace']} steps "
        f"{w['step_nesting_depth']} levels deep; changelog {'on' if t['changelog'] else 'off'}"
    )
    # Older results ran three variants per repetition and did not record the count.
    reps = t.get("reps", len(t["runs"]) // 3)
    print(f"  throughput, median of {reps} run(s) each, window = first message consumed .. last trace done:")
    print(f"    {'':<34} {'traces/s':>10} {'CPU µs/trace':>13} {'broker µs/trace':>16} {'others busy':>12}")
    for label, key in [
        ("bare consumption (count only)", "bare"),
        ("minimal (decode + Passthrough row)", "minimal"),
        ("sessionizer (whole pipeline)", "sessionizer"),
        ("  repartitioning off", "sessionizer_repartition_off"),
        ("  every trace repartitioned", "sessionizer_all_forwarded"),
    ]:
        if key not in t:
            continue
        s = t[key]
        broker = s.get("median_broker_cpu_us_per_trace")
        broker_text = f"{broker:.1f}" if broker is not None else "?"
        print(
            f"    {label:<34} {s['median_traces_per_second']:>10.0f} {s['median_cpu_us_per_trace']:>13.1f} "
            f"{broker_text:>16} {s['median_others_cpu_share'] * 100:>11.0f}%"
        )
    print("    (CPU: this process, all threads; broker: the broker process; others busy: share of the")
    print("     machine used by neither, i.e. other work on the box during the window)")
    s = t["sessionizer"]
    print(
        f"    sessionizer CPU without the in-process ack server: "
        f"{s['median_cpu_us_per_trace_without_ack']:.1f} µs/trace "
        f"(ack server thread {s['median_ack_cpu_us_per_trace']:.1f} µs/trace)"
    )
    goal = t["goal_ratio_to_minimal"]
    ratio = t["ratio_to_minimal"]
    per_rep = ", ".join(f"{r:.2f}" for r in t["ratio_to_minimal_per_rep"])
    print(
        f"  sessionizer / minimal pipeline = {ratio:.2f}x (per rep: {per_rep})  "
        f"goal >= {goal:.1f}x: {verdict(ratio >= goal)}"
    )
    goals.append((f"throughput >= {goal:.1f}x minimal pipeline", f"{ratio:.2f}x", ratio >= goal))
    figure(
        "end-to-end throughput (sessionizer, changelog on)",
        s["median_traces_per_second"],
        "traces/s",
        f"minimal consume-decode-serialize loop, {t['minimal']['median_traces_per_second']:.0f} traces/s",
        ratio,
        f">= {goal:.1f}x",
        ratio >= goal,
    )
    figure(
        "end-to-end throughput against bare consumption",
        s["median_traces_per_second"],
        "traces/s",
        f"bare consumer (count only), {t['bare']['median_traces_per_second']:.0f} traces/s",
        t["ratio_to_bare"],
    )
    print(
        f"  sessionizer / bare consumption = {t['ratio_to_bare']:.2f}x; "
        f"minimal / bare = {t['minimal_ratio_to_bare']:.2f}x"
    )
    cpu_ratio = s["median_cpu_us_per_trace_without_ack"] / t["minimal"]["median_cpu_us_per_trace"]
    print(f"  CPU per trace, sessionizer (without ack server) / minimal = {cpu_ratio:.2f}x")
    figure(
        "sessionizer CPU per trace (process, without the ack server)",
        s["median_cpu_us_per_trace_without_ack"],
        "µs/trace",
        f"minimal loop, {t['minimal']['median_cpu_us_per_trace']:.1f} µs/trace",
        cpu_ratio,
    )
    floor_report(t, goals)
    if "sessionizer_repartition_off" in t:
        repartition_report(t, goals)


def floor_report(t: dict, goals: list) -> None:
    """CPU per trace against the floor: what a bare consumer spends per trace plus the decode
    and row of the project's single-threaded path (the decode_row bench, same run)."""
    decode_row = RUN_STATE.get("decode_row_us_per_trace")
    bare = t["bare"].get("median_cpu_us_per_trace")
    if decode_row is None or bare is None:
        print("  CPU per trace against the floor: not computed (no decode_row or bare CPU figure)")
        return
    floor = bare + decode_row
    cpu = t["sessionizer"]["median_cpu_us_per_trace_without_ack"]
    ratio = cpu / floor
    goal = 2.0
    met = ratio <= goal
    print(
        f"  CPU per trace / floor (bare consumer {bare:.1f} + decode and row {decode_row:.1f} µs) "
        f"= {ratio:.2f}x  goal <= {goal:.1f}x: {verdict(met)}"
    )
    goals.append((f"sessionizer CPU per trace <= {goal:.1f}x the floor", f"{ratio:.2f}x", met))
    figure(
        "sessionizer CPU per trace against the floor (changelog on, production defaults)",
        cpu,
        "µs/trace",
        f"bare consumer CPU per trace plus decode and row, {floor:.1f} µs",
        ratio,
        f"<= {goal:.1f}x",
        met,
    )


def repartition_report(t: dict, goals: list) -> None:
    """The repartition stage: agreeing producers with it on against off (its cost when nothing
    is forwarded), and every trace forwarded against agreeing producers."""
    on, off, forwarded = t["sessionizer"], t["sessionizer_repartition_off"], t["sessionizer_all_forwarded"]
    goal = t["goal_ratio_repartition_on_to_off"]
    ratio = t["ratio_repartition_on_to_off"]
    met = ratio >= goal
    per_rep = ", ".join(f"{r:.2f}" for r in t["ratio_repartition_on_to_off_per_rep"])
    print(
        f"  agreeing producers (nothing forwarded), repartitioning on / off = {ratio:.2f}x "
        f"(per rep: {per_rep})  goal >= {goal:.2f}x: {verdict(met)}"
    )
    print(
        f"    CPU per trace without the ack server: on {on['median_cpu_us_per_trace_without_ack']:.1f} µs, "
        f"off {off['median_cpu_us_per_trace_without_ack']:.1f} µs"
    )
    goals.append((f"repartitioning on / off >= {goal:.2f}x", f"{ratio:.2f}x", met))
    figure(
        "agreeing producers, repartitioning on / off (throughput)",
        on["median_traces_per_second"],
        "traces/s",
        f"repartitioning off, {off['median_traces_per_second']:.0f} traces/s "
        f"(ratio: median of {len(t['ratio_repartition_on_to_off_per_rep'])} back-to-back pairs)",
        ratio,
        f">= {goal:.2f}x",
        met,
    )
    figure(
        "agreeing producers, repartitioning on / off (CPU per trace, without the ack server)",
        on["median_cpu_us_per_trace_without_ack"],
        "µs/trace",
        f"repartitioning off, {off['median_cpu_us_per_trace_without_ack']:.1f} µs/trace"
        + (f" (ratio: median of {len(t['cpu_ratio_repartition_on_to_off_per_rep'])} back-to-back pairs)"
           if "cpu_ratio_repartition_on_to_off_per_rep" in t else ""),
        t.get("cpu_ratio_repartition_on_to_off",
              on["median_cpu_us_per_trace_without_ack"] / off["median_cpu_us_per_trace_without_ack"]),
    )
    ratio = t["ratio_all_forwarded_to_agreeing"]
    per_rep = ", ".join(f"{r:.2f}" for r in t["ratio_all_forwarded_to_agreeing_per_rep"])
    print(
        f"  every trace repartitioned (forwarded once, read back) / agreeing = {ratio:.2f}x "
        f"(per rep: {per_rep}); CPU per trace without the ack server "
        f"{forwarded['median_cpu_us_per_trace_without_ack']:.1f} µs"
    )
    figure(
        "every trace repartitioned / agreeing producers (throughput)",
        forwarded["median_traces_per_second"],
        "traces/s",
        f"agreeing producers, {on['median_traces_per_second']:.0f} traces/s",
        ratio,
    )
    figure(
        "every trace repartitioned / agreeing producers (CPU per trace, without the ack server)",
        forwarded["median_cpu_us_per_trace_without_ack"],
        "µs/trace",
        f"agreeing producers, {on['median_cpu_us_per_trace_without_ack']:.1f} µs/trace",
        forwarded["median_cpu_us_per_trace_without_ack"] / on["median_cpu_us_per_trace_without_ack"],
    )


def lag_report(lag: dict, goals: list) -> None:
    print(
        f"  lag: {lag['target_rate']:.0f} traces/s ({lag['rate_source']}), achieved "
        f"{lag['achieved_rate']:.0f}/s for {lag['seconds']:.0f} s, {lag['traces']} traces"
    )
    broker = lag.get("broker_cpu_share")
    broker_text = f"{broker * 100:.0f} %" if broker is not None else "?"
    print(
        f"    machine share while producing: this process {lag['cpu_utilization'] * 100:.0f} %, "
        f"broker {broker_text}, others {lag['others_cpu_share'] * 100:.0f} %"
    )
    window = lag.get("window") or {}
    threads = window.get("threads") or {}
    if threads and window.get("seconds"):
        def core_share(prefix: str) -> float:
            return sum(v for k, v in threads.items() if k.startswith(prefix)) / window["seconds"] * 100

        print(
            f"    busy, in % of one core: sessionizer runtime (tokio-rt-worker) {core_share('tokio-rt-worker'):.0f} %, "
            f"librdkafka {core_share('rdk:'):.0f} %, ack server {core_share('ack-server'):.0f} %, "
            f"bench producer {core_share('pipeline-bench'):.0f} %"
        )
    for label, key in [("whole run", "whole_run"), (f"after {lag['warmup_seconds']:.0f} s warm-up", "after_warmup")]:
        f = lag[key]
        s, r = f["sessionization_lag"], f["reference_consumer_lag"]
        ratio = s["p99_seconds"] / r["p99_seconds"] if r["p99_seconds"] else float("nan")
        print(
            f"    {label:<19} sessionization lag p50 {s['p50_seconds'] * 1000:6.0f} ms, "
            f"p99 {s['p99_seconds'] * 1000:6.0f} ms ({f['share_within_1s'] * 100:.2f} % within 1 s); "
            f"reference consumer p50 {r['p50_seconds'] * 1000:4.0f} ms, p99 {r['p99_seconds'] * 1000:4.0f} ms; "
            f"p99 ratio {ratio:.2f}x"
        )
    whole = lag["whole_run"]
    p99 = whole["sessionization_lag"]["p99_seconds"]
    reference = whole["reference_consumer_lag"]
    if not lag.get("repartitioning", True):
        print("    (repartitioning OFF in this lag run, --lag-repartition-off: not the default)")
    goal = lag["goal_p99_to_reference"]
    ratio = p99 / reference["p99_seconds"] if reference["p99_seconds"] else None
    met = ratio is not None and ratio <= goal
    print(
        f"    goal p99 <= {goal:.1f}x the reference consumer's (whole run): "
        f"{'-' if ratio is None else f'{ratio:.2f}x'}: {verdict(met)}; absolute p99 {p99 * 1000:.0f} ms, "
        f"{whole['share_within_1s'] * 100:.2f} % within 1 s"
    )
    if lag.get("repartitioning", True):
        goals.append((f"sessionization lag p99 <= {goal:.1f}x the reference consumer's",
                      "-" if ratio is None else f"{ratio:.2f}x", met))
    p50 = whole["sessionization_lag"]["p50_seconds"]
    rate = f"{lag['achieved_rate']:.0f} traces/s for {lag['seconds']:.0f} s"
    figure(
        f"sessionization lag p50 at half max rate ({rate})",
        p50,
        "s",
        f"bare reference consumer p50, {reference['p50_seconds']:.3f} s",
        p50 / reference["p50_seconds"] if reference["p50_seconds"] else None,
    )
    figure(
        f"sessionization lag p99 at half max rate ({rate}; {whole['share_within_1s'] * 100:.2f} % within 1 s)",
        p99,
        "s",
        f"bare reference consumer p99, {reference['p99_seconds']:.3f} s",
        ratio,
        f"<= {goal:.1f}x",
        met,
    )
    a = lag["ack_arrival_delay"]
    print(
        f"    rows at the ack server (event time to arrival, batch linger included): "
        f"p50 {a['p50_seconds'] * 1000:.0f} ms, p99 {a['p99_seconds'] * 1000:.0f} ms"
    )


def memory_report(memory: dict, goals: list) -> None:
    goal = memory["goal_bytes_per_session"]
    for probe in memory["probes"]:
        b = probe["bytes_per_session"]
        print(
            f"  state memory: {probe['sessions']:>9} open sessions: {b:6.0f} B/session "
            f"(RSS +{(probe['rss_after_bytes'] - probe['rss_before_bytes']) / 2**20:.1f} MiB)  "
            f"goal < {goal:.0f} B: {verdict(b < goal)}"
        )
        goals.append((f"state memory < {goal:.0f} B/session at {probe['sessions']}", f"{b:.0f} B", b < goal))
    spreads = ", ".join(f"{spread:.2f}" for spread in memory["spread_within_probes"])
    print(
        f"    growth {'linear' if memory['linear'] else 'NOT linear'}: within each probe, per-session bytes "
        f"at N/4, N/2, N vary by {spreads}x; marginal {memory['marginal_bytes_per_session']:.0f} B/session "
        f"over the last doubling; largest/smallest N = {memory['growth_ratio_largest_to_smallest']:.2f}x "
        f"(the session table doubles)"
    )
    probes = sorted(memory["probes"], key=lambda probe: probe["sessions"])
    smallest = probes[0]
    for probe in probes:
        b = probe["bytes_per_session"]
        is_smallest = probe is smallest
        figure(
            f"state memory per open session at {probe['sessions']:,} sessions",
            b,
            "B/session",
            None if is_smallest else f"{smallest['sessions']:,} sessions, {smallest['bytes_per_session']:.0f} B/session",
            None if is_smallest else b / smallest["bytes_per_session"],
            f"< {goal:.0f} B" + ("" if is_smallest else ", linear"),
            b < goal and (is_smallest or memory["linear"]),
        )
    journal = memory.get("journal")
    if journal and journal.get("journal_bytes_per_session") is not None:
        print(
            f"    changelog journal: +{journal['journal_bytes_per_session']:.0f} B per session touched since "
            f"the last checkpoint (transient, freed at each checkpoint)"
        )


def sdk_report(sdk: dict, throughput, goals: list) -> None:
    sync, background = sdk["sync"], sdk["background"]
    print(
        f"  official Openlayer SDK {sdk['sdk_version']} (Python tracer, same traces: "
        f"{sdk['trace_json_bytes_mean']:.0f} B of trace JSON each, same ack server):"
    )
    print(
        f"    synchronous publishing: {sync['delivered']} of {sync['traces']} rows in {sync['seconds']:.1f} s = "
        f"{sync['rows_per_second']:.0f} rows/s ({sync['request_bytes_per_row']:.0f} B per request)"
    )
    print(
        f"    default background mode, burst of {background['traces']}: {background['delivered']} delivered, "
        f"{background['dropped_logged']} dropped (logged by the SDK), {background['seconds']:.1f} s"
    )
    if throughput:
        rows = throughput["sessionizer"]["median_traces_per_second"]
        ratio = rows / sync["rows_per_second"]
        met = ratio >= 50
        print(f"    sessionizer {rows:.0f} rows/s / SDK sync = {ratio:.1f}x  goal >= 50x: {verdict(met)}")
        goals.append(("rows/s >= 50x the official SDK (sync)", f"{ratio:.1f}x", met))
        figure(
            "rows/s delivered to the same Openlayer-compatible server",
            rows,
            "rows/s",
            f"official Python SDK {sdk['sdk_version']}, sync publishing, {sync['rows_per_second']:.0f} rows/s",
            ratio,
            ">= 50x",
            met,
        )
        runs = [run for run in throughput["runs"] if run["variant"].startswith("sessionizer")]
        delivered = sum(run["traces"] for run in runs)
        figure(
            f"sessionizer: traces not delivered ({len(runs)} runs)",
            0,
            "rows",
            f"{delivered} traces produced, all acknowledged",
            0.0,
        )
    figure(
        "official SDK, default background mode: delivered of a burst",
        background["delivered"],
        "rows",
        f"burst of {background['traces']} traces",
        background["delivered"] / background["traces"] if background["traces"] else None,
    )
    figure(
        "official SDK, default background mode: dropped of the burst",
        background["dropped_logged"],
        "rows",
        f"burst of {background['traces']} traces",
        background["dropped_logged"] / background["traces"] if background["traces"] else None,
    )


def gateway_report(gateway: dict, throughput, goals: list) -> None:
    """The ingest gateway: rows/s acknowledged by Kafka against the sessionizer's throughput of
    the same run, and request latency at half its one-trace-per-request rate. Run once per
    `http.answer_after`; the default's figures keep their plain names, the other's say how
    the gateway answered."""
    single, batched, latency = gateway["single"], gateway["batched"], gateway["latency"]
    answer_after = gateway.get("answer_after", "acknowledged")
    mode = "" if answer_after == "acknowledged" else f" (answer_after = {answer_after})"
    print(f"  ingest gateway answering once {answer_after} (in-process, {gateway['clients']} "
          "concurrent HTTP clients, SDK-shaped requests):")
    sessionizer = throughput["sessionizer"]["median_traces_per_second"] if throughput else None
    for run in (single, batched):
        print(
            f"    {run['rows_per_request']} trace(s)/request: {run['rows_per_second']:.0f} rows/s "
            f"({run['rows_acknowledged']} rows in {run['seconds']:.2f} s, {run['body_bytes_per_row']:.0f} B/row); "
            f"CPU per row: gateway {run['gateway_cpu_us_per_row']:.1f} µs, librdkafka "
            f"{run['librdkafka_cpu_us_per_row']:.1f} µs, HTTP clients {run['client_cpu_us_per_row']:.1f} µs"
            + (f"; others busy {run['others_cpu_share'] * 100:.0f} % of the machine" if "others_cpu_share" in run else "")
            + (f"; {run['retried_503']} answers 503 retried" if run.get("retried_503") else "")
        )
        if run["rows_per_request"] == 1:
            name = f"gateway{mode} rows/s acknowledged by Kafka, 1 trace per request (SDK shape)"
        else:
            name = f"gateway{mode} rows/s acknowledged by Kafka, {run['rows_per_request']} traces per request"
        if sessionizer:
            ratio = run["rows_per_second"] / sessionizer
            goal = 0.5 if run["rows_per_request"] == 1 else None
            met = None if goal is None else ratio >= goal
            print(f"      / sessionizer {sessionizer:.0f} traces/s = {ratio:.2f}x"
                  + ("" if goal is None else f"  goal >= {goal:.1f}x: {verdict(met)}"))
            if goal is not None:
                goals.append((f"gateway{mode}, 1 trace per request >= {goal:.1f}x the sessionizer",
                              f"{ratio:.2f}x", met))
            figure(name, run["rows_per_second"], "rows/s",
                   f"sessionizer end to end, {sessionizer:.0f} traces/s", ratio,
                   None if goal is None else f">= {goal:.1f}x", met)
        else:
            figure(name, run["rows_per_second"], "rows/s")
    print(
        f"    latency at {latency['target_rate']:.0f} requests/s (half the 1-trace rate; achieved "
        f"{latency['achieved_rate']:.0f}/s for {latency['seconds']:.0f} s, open loop): p50 "
        f"{latency['p50_seconds'] * 1000:.1f} ms, p99 {latency['p99_seconds'] * 1000:.1f} ms, max "
        f"{latency['max_seconds'] * 1000:.1f} ms"
        + (
            f"; this process {latency['process_cpu_share'] * 100:.0f} %, others "
            f"{latency['others_cpu_share'] * 100:.0f} % of the machine"
            if "others_cpu_share" in latency
            else ""
        )
    )
    at = f"at half max rate ({latency['target_rate']:.0f} requests/s for {latency['seconds']:.0f} s)"
    figure(f"gateway{mode} request latency p50 {at}", latency["p50_seconds"] * 1000, "ms")
    p99_ms, p99_goal_ms = latency["p99_seconds"] * 1000, 10.0
    p99_met = p99_ms <= p99_goal_ms
    print(f"    goal p99 <= {p99_goal_ms:.0f} ms: {verdict(p99_met)}")
    goals.append((f"gateway{mode} latency p99 <= {p99_goal_ms:.0f} ms at half max rate", f"{p99_ms:.1f} ms", p99_met))
    bare = latency.get("bare_producer")
    if bare:
        # Answering once acknowledged: the broker's own round trip at that load is the floor.
        print(
            f"    a bare producer with the gateway's settings at that rate: p50 "
            f"{bare['p50_seconds'] * 1000:.1f} ms, p99 {bare['p99_seconds'] * 1000:.1f} ms, max "
            f"{bare['max_seconds'] * 1000:.1f} ms"
        )
        baseline = (f"a bare producer with the gateway's settings at the same rate, p99 "
                    f"{bare['p99_seconds'] * 1000:.1f} ms", bare["p99_seconds"])
    else:
        baseline = (f"p50, {latency['p50_seconds'] * 1000:.1f} ms", latency["p50_seconds"])
    figure(
        f"gateway{mode} request latency p99 {at}",
        p99_ms,
        "ms",
        baseline[0],
        latency["p99_seconds"] / baseline[1] if baseline[1] else None,
        f"<= {p99_goal_ms:.0f} ms",
        p99_met,
    )
    sdk = gateway.get("sdk")
    if sdk:
        goal = 0.9
        ratio = sdk["gateway_median"] / sdk["direct_median"]
        met = ratio >= goal
        print(
            f"    official SDK (sync), {sdk['traces']} traces per run: through the gateway "
            f"{sdk['gateway_median']:.0f} rows/s, straight to the test server {sdk['direct_median']:.0f} rows/s "
            f"(medians of {len(sdk['direct_rows_per_second'])} runs in turns) = {ratio:.2f}x  "
            f"goal >= {goal:.1f}x: {verdict(met)}"
        )
        goals.append((f"official SDK through the gateway{mode} >= {goal:.1f}x straight", f"{ratio:.2f}x", met))
        figure(
            f"official SDK (sync) rows/s through the gateway{mode}",
            sdk["gateway_median"],
            "rows/s",
            f"the same SDK straight to the Openlayer-compatible test server, {sdk['direct_median']:.0f} rows/s",
            ratio,
            f">= {goal:.1f}x",
            met,
        )


def scaling_report(scaling: dict) -> None:
    print(f"  scaling with work (median of {scaling['reps']} run(s) each; ratios to the same run's baseline):")
    for title, key, baseline in [
        ("input partitions = sessionizer instances (one group, in-process)", "partitions", "partitions_baseline"),
        ("batch size (rows per Openlayer request), 3 partitions, 1 instance", "batches", "batches_baseline"),
    ]:
        points = scaling[key]
        if not points:
            continue
        print(f"    {title}; baseline: {scaling[baseline]}")
        # The baselines pipeline-bench divides by: 1 partition; the default 1,000-row batch.
        is_baseline = (lambda p: p["partitions"] == 1) if key == "partitions" else (lambda p: p["batch_rows"] == 1000)
        base = next((p for p in points if is_baseline(p)), None)
        for p in points:
            label = (
                f"{p['partitions']} partition(s) x {p['instances']} instance(s)"
                if key == "partitions"
                else f"batch {p['batch_rows']} rows"
            )
            print(
                f"      {label:<34} {p['median_traces_per_second']:>8.0f} traces/s ({p['throughput_ratio']:.2f}x)  "
                f"{p['median_cpu_us_per_trace_without_ack']:>6.1f} µs CPU/trace ({p['cpu_ratio']:.2f}x)  "
                f"{p['mean_rows_per_request']:.0f} rows/request, others busy {p['median_others_cpu_share'] * 100:.0f} %"
            )
            is_base = p is base
            base_text = (
                "itself (the baseline)"
                if is_base
                else (
                    f"1 partition x 1 instance, {base['median_traces_per_second']:.0f} traces/s"
                    if key == "partitions" and base
                    else f"batch {base['batch_rows']} rows, {base['median_traces_per_second']:.0f} traces/s"
                    if base
                    else scaling[baseline]
                )
            )
            figure(f"throughput, {label}", p["median_traces_per_second"], "traces/s", base_text, p["throughput_ratio"])
            if not is_base:
                cpu_base = (
                    f"{base['median_cpu_us_per_trace_without_ack']:.1f} µs/trace at the baseline" if base else scaling[baseline]
                )
                figure(
                    f"CPU per trace, {label}",
                    p["median_cpu_us_per_trace_without_ack"],
                    "µs/trace",
                    cpu_base,
                    p["cpu_ratio"],
                )


def pipeline_report(path: Path, goals: list) -> None:
    print()
    print("Sessionizer end to end on the real broker, against baselines of the same run")
    try:
        with path.open() as handle:
            report = json.load(handle)
    except OSError as error:
        print(f"  no pipeline-bench results ({error})")
        return
    print(f"  {report['cores']:.0f} cores; pipeline-bench took {report['seconds']:.0f} s")
    RUN["cores"] = report["cores"]
    RUN["pipeline_bench_seconds"] = round(report["seconds"], 1)
    # Reports written before `--variants` existed ran every variant and have no such key.
    variants = (report.get("throughput") or {}).get("variants")
    if variants is not None and len(variants) < len(THROUGHPUT_VARIANTS):
        print(f"  throughput: only {', '.join(report['throughput']['variants'])} ran; its figures are left out")
        report["throughput"] = None
    if report.get("throughput"):
        throughput_report(report["throughput"], goals)
        RUN["others_busy_share_median"] = round(report["throughput"]["sessionizer"]["median_others_cpu_share"], 3)
        RUN["workload"] = report["throughput"]["workload"]
    if report.get("sdk"):
        sdk_report(report["sdk"], report.get("throughput"), goals)
    for key in ("gateway", "gateway_queued"):
        if report.get(key):
            gateway_report(report[key], report.get("throughput"), goals)
    if report.get("scaling"):
        scaling_report(report["scaling"])
    if report.get("lag"):
        lag_report(report["lag"], goals)
    if report.get("memory"):
        memory_report(report["memory"], goals)
    if report.get("otel_memory"):
        otel = report["otel_memory"]
        print(
            f"  OpenTelemetry assembly: {otel['traces']} open traces hold {otel['bytes_per_open_trace']:.0f} B/trace "
            f"({otel['protobuf_bytes_per_trace']:.0f} B of protobuf on the wire)"
        )


# What the table was measured on (docs/performance.md quotes it).
RUN: dict = {}


def machine() -> dict:
    info = {"cpus": os.cpu_count()}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        info["load_average_1m_at_report"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def number(value) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def print_table() -> None:
    print()
    header = ["figure", "value", "unit", "baseline (same run)", "ratio", "goal", "met"]
    rows = [
        [
            f["name"],
            number(f["value"]),
            f["unit"],
            f["baseline"] or "-",
            "-" if f["ratio"] is None else f"{f['ratio']:.2f}x",
            f["goal"] or "-",
            "-" if f["met"] is None else ("yes" if f["met"] else "NO"),
        ]
        for f in FIGURES
    ]
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
    pipeline = Path(sys.argv[2] if len(sys.argv) > 2 else "target/bench/pipeline.json")
    results = Path(sys.argv[3] if len(sys.argv) > 3 else "bench-results/latest.json")
    RUN["size"] = sys.argv[4] if len(sys.argv) > 4 else None
    RUN["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    RUN["machine"] = machine()
    goals: list = []
    producer_report(root, goals)
    decode_row_report(root, goals)
    otel_report(root)
    gateway_rows_report(root)
    pipeline_report(pipeline, goals)
    if goals:
        print()
        print("Goals")
        for label, value, met in goals:
            print(f"  {'ok ' if met else 'NO '} {label:<45} {value:>10}")
    print_table()
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("w") as handle:
        json.dump({"figures": FIGURES, "run": RUN}, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    print(f"\ntable written to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
