"""py-spy on the service under wrk, and what its raw stacks say: CPU by package and frame."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.support import HOST, log
from bench.wrk import run_wrk


def profile(
    pid: int,
    port: int,
    paths: list[tuple[str, str]],
    *,
    seconds: float,
    connections: int,
    out: Path,
) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """py-spy (raw folded stacks) on the service under wrk, one endpoint at a time."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for name, path in paths:
        raw = out / f"{name}.txt"
        spying = subprocess.Popen(
            [
                spy,
                "record",
                "--nonblocking",
                "-p",
                str(pid),
                "-d",
                str(round(seconds)),
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            run_wrk(
                f"http://{HOST}:{port}{path}",
                seconds=seconds,
                connections=connections,
            )
        finally:
            spying.wait(timeout=seconds + 30)
        if raw.exists():
            summaries[name] = summarise_profile(raw)
            top = ", ".join(f"{pkg} {pct}%" for pkg, pct in summaries[name]["self_by_package"][:6])
            log(f"py-spy {name}: CPU by package: {top}")
    return summaries


def _package(frame: str) -> str:
    """The top-level package or module of a py-spy frame (`connexion`, `sqlalchemy`, `mdp`,
    `asyncio`, …): py-spy names files relative to their sys.path entry."""
    match = re.search(r"\(([^()]*):\d+\)$", frame)
    if match is None:
        return "<frozen>" if "<frozen" in frame else "native/unknown"
    return match[1].split("/", 1)[0].removesuffix(".py")


def summarise_profile(raw: Path, count: int = 15) -> dict[str, list[tuple[str, float]]]:
    """From py-spy's raw stacks: CPU (self time) by package, the hottest frames by self time,
    and the hottest project functions by inclusive time. Inclusive shares are approximate:
    SQLAlchemy's greenlets show up as separate stacks."""
    self_package: Counter[str] = Counter()
    self_frame: Counter[str] = Counter()
    project_inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        n = int(samples)
        total += n
        # A sample without a Python frame: native code (the C event loop, GC, the driver).
        frames = stack.split(";") if stack else ["<no Python frame>"]
        self_package[_package(frames[-1])] += n
        self_frame[re.sub(r" \((.*/)?([^/]+):\d+\)$", r" (\2)", frames[-1])] += n
        project = {
            f
            for f in frames
            if _package(f) in ("mdp", "access", "handlers", "persistence", "live", "web", "errors")
        }
        for frame in {f for f in project if "mdp/cli.py" not in f}:
            project_inclusive[re.sub(r" \((.*/)?([^/]+):\d+\)$", r" (\2)", frame)] += n

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(key, round(100 * n / total, 1)) for key, n in counter.most_common(count)]

    return {
        "self_by_package": shares(self_package),
        "self_by_frame": shares(self_frame),
        "project_inclusive": shares(project_inclusive),
    }
