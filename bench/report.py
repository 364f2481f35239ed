"""The targets (issues 3 and 9), and the Markdown report of a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    ratio: float  # service req/s ≥ ratio × floor req/s
    text: str


TARGETS = {
    "price_latest": Target(0.7, "≥ 0.7 × floor"),
    # Issue 10: from memory, at least 1.5 times the floor's database-backed answer.
    "price_latest_memory": Target(1.5, "≥ 1.5 × floor"),
    "symbols": Target(0.7, "≥ 0.7 × floor"),
    "trades_1h": Target(0.7, "≥ 0.7 × floor"),
    "candles_1m_1h": Target(2.0, "≥ 2 × floor"),
    "candles_1m_24h": Target(5.0, "≥ 5 × floor"),
    "health": Target(0.5, "≥ 0.5 × floor"),
    "metrics": Target(0.5, "≥ 0.5 × floor"),
}
# On every endpoint and at every connection count: p99 within this factor of the floor's.
P99_FACTOR = 3.0
FIRST_1D_30D_MS = 100.0  # issue 13: first request for 1d candles over 30 days
HEARTBEAT_FACTOR = 1.5  # heartbeat age under saturation ≤ 1.5 × ingestion interval
RSS_GROWTH = 0.20  # RSS growth over the run ≤ 20 %


def verdicts(
    name: str, service: dict[str, Any], floor: dict[str, Any], errors: int
) -> dict[str, Any]:
    """Ratio and its target, p99 against the floor's, and whether every answer of every run
    (`errors`: non-2xx answers and socket errors) was a 2xx."""
    floor_rps = floor["requests_per_second"]
    ratio = service["requests_per_second"] / floor_rps if floor_rps else None
    spec = TARGETS.get(name)
    p99, floor_p99 = service["p99_ms"], floor["p99_ms"]
    return {
        "ratio": round(ratio, 3) if ratio is not None else None,
        "target": spec.ratio if spec else None,
        "met": ratio >= spec.ratio if spec and ratio is not None else None,
        "p99_within": (p99 <= P99_FACTOR * floor_p99 if p99 is not None and floor_p99 else None),
        "errors": errors,
        "all_2xx": errors == 0,
    }


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _verdict(row: dict[str, Any]) -> tuple[str, str]:
    spec = TARGETS.get(row["name"])
    if spec is None:
        return "–", "–"
    ratio = row["ratio"]
    if ratio is None:
        return spec.text, "?"
    if ratio >= spec.ratio:
        return spec.text, "yes"
    short = spec.ratio - ratio
    needed = spec.ratio / ratio - 1 if ratio else float("inf")
    return spec.text, f"**no**: short by {short:.2f}× (service needs +{needed:.0%} req/s)"


def _yes(flag: bool | None) -> str:
    return "?" if flag is None else "yes" if flag else "**no**"


def _endpoint_tables(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for connections in result["config"]["connections"]:
        rows = [row for row in result["endpoints"] if row["connections"] == connections]
        lines += [
            f"### {connections} connections",
            "",
            "| endpoint | service req/s | p50 ms | p99 ms | floor req/s | floor p99 ms | ratio "
            "| target | met? | p99 ≤ 3 × floor | all 2xx (every run) |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|---|---|",
        ]
        for row in rows:
            s, f = row["service"], row["floor"]
            target, met = _verdict(row)
            errors = row["errors"]
            clean = "yes" if not errors else f"**no**: {errors} in {s['runs']} runs"
            # Two rows share /price/latest: the database read (the reader) and the memory one.
            label = f"`{row['path']}`" + (
                " (from memory)" if row["name"].endswith("_memory") else ""
            )
            lines.append(
                f"| {label} | {s['requests_per_second']:,.0f} | {_fmt_ms(s['p50_ms'])} "
                f"| {_fmt_ms(s['p99_ms'])} | {f['requests_per_second']:,.0f} "
                f"| {_fmt_ms(f['p99_ms'])} | {row['ratio']:.2f}× | {target} | {met} "
                f"| {_yes(row['p99_within'])} "
                f"| {clean} |"
            )
        lines.append("")
    return lines


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    cfg = result["config"]
    db = result["database"]
    lines = [
        f"# Benchmark {result['timestamp']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}, {result['postgres']}; load average at "
        f"start {m['load_average']}. Shared with other work: figures are noisy (±20 % between "
        "runs is common); compare ratios, not absolute req/s.",
        "",
        f"Service at {result['git']}; database `{db['name']}`: {db['trades']:,} trades "
        f"({len(db['symbols'])} symbols × {cfg['trades_per_second']:g} trade/s × "
        f"{cfg['days']:g} days{', reused' if db['reused'] else ''}). wrk: "
        f"{' and '.join(map(str, cfg['connections']))} connections, 2 threads, "
        f"{cfg['duration']:g} s per run, median of {cfg['repeat']} runs alternating service "
        "and floor; ingestion running every 1 s. `/price/latest` is measured on a second "
        "service process whose live feed holds no trades, so it answers from the database.",
        "",
        *_endpoint_tables(result),
        "## Candles, single requests",
        "",
        "| window | candles | service cold ms | service warm ms (median of 5) | floor ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["candles_single"]:
        lines.append(
            f"| `{row['path']}` | {row['candles']} | {_fmt_ms(row['service_cold_ms'])} "
            f"| {_fmt_ms(row['service_warm_ms'])} | {_fmt_ms(row['floor_ms'])} |"
        )
    agree = result["candles_agree"]
    lines += [
        "",
        f"Closed candles equal to the floor's (computed from trades): "
        f"{'yes' if agree['agree'] else 'NO'} ({agree['compared']} compared).",
        "",
        "## Backfill, heartbeat, memory",
        "",
        "| what | value | target | met? |",
        "|---|---:|---|---|",
    ]
    copy = result["copy"]
    b_rps = copy["backfill_rows_per_second"]
    ratio = copy["backfill_to_raw"]
    lines.append(
        f"| `mdp backfill` rows/s ({copy['backfill_rows']:,} rows, empty database, median of 3) "
        f"| {b_rps:,.0f} | ≥ 200,000 | {'yes' if b_rps and b_rps >= 200_000 else '**no**'} |"
        if b_rps
        else "| `mdp backfill` rows/s | – | ≥ 200,000 | ? |"
    )
    lines.append(
        f"| raw COPY rows/s ({copy['rows']:,} rows, same table shape, median of 3) "
        f"| {copy['raw_copy_rows_per_second']:,.0f} | | |"
    )
    if ratio is not None:
        lines.append(
            f"| backfill ÷ raw COPY | {ratio:.2f} | ≥ 0.5 | {'yes' if ratio >= 0.5 else '**no**'} |"
        )
    build = db["backfill"]
    if build["rows_per_second"]:
        lines.append(
            f"| bench database build rows/s ({build['rows']:,} rows) "
            f"| {build['rows_per_second']:,.0f} | | |"
        )
    hb = result["heartbeat"]
    worst = hb["max_age_s"]
    hb_met = worst is not None and worst <= hb["limit_s"]
    lines.append(
        f"| worst ingestion heartbeat age under wrk (s) | {_fmt_ms(worst)} "
        f"| ≤ {hb['limit_s']:g} | {'yes' if hb_met else '**no**'} |"
    )
    first = next((r for r in result["candles_single"] if r["name"] == "candles_1d_30d"), None)
    if first is not None:
        cold = first["service_cold_ms"]
        lines.append(
            f"| first request for `1d` candles over 30 days (ms) | {_fmt_ms(cold)} "
            f"| < {FIRST_1D_30D_MS:g} | {'yes' if cold < FIRST_1D_30D_MS else '**no**'} |"
        )
    caught = result.get("catch_up")
    if caught is not None:
        age = caught["max_age_s"]
        lines.append(
            f"| candle catch-up after rewinding the watermark {caught['rewound_s'] / 86400:g} "
            f"days: seconds, worst heartbeat age (s) | {caught['seconds']:g}, {_fmt_ms(age)} "
            f"| ≤ {hb['limit_s']:g} | "
            f"{'yes' if age is not None and age <= hb['limit_s'] else '**no**'} |"
        )
    rss = result["rss_mib"]
    growth = rss["growth"]
    lines.append(
        f"| service RSS MiB: ready / after warm-up / end | {rss['ready']} / {rss['start']} / "
        f"{rss['end']} ({growth:+.1%}) | ≤ +20 % | {'yes' if growth <= RSS_GROWTH else '**no**'} |"
    )
    profiles = result.get("profile")
    if profiles:
        lines += [
            "",
            "## Where the service's CPU goes (py-spy, self time by package, under wrk)",
            "",
            "| endpoint | top packages | hottest frames (self) |",
            "|---|---|---|",
        ]
        for name, summary in profiles.items():
            packages = ", ".join(f"{p} {v}%" for p, v in summary["self_by_package"][:6])
            frames = ", ".join(f"`{p}` {v}%" for p, v in summary["self_by_frame"][:4])
            lines.append(f"| {name} | {packages} | {frames} |")
    lines += [
        "",
        "Ratio = service req/s ÷ floor req/s. The floor (`bench/floor_app.py`) is plain "
        "Starlette + asyncpg + orjson with the service's SQL and no validation; its candles "
        "are aggregated from trades on every request (the seed's model), so candle ratios "
        "above 1 are what candles materialised on the write path buy.",
        "",
    ]
    return "\n".join(lines)
