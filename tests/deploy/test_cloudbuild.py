"""cloudbuild.yaml: build, push, migrate, deploy; every flag Cloud Run needs, consistently."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mdp.settings import Settings
from tests.deploy import CLOUDBUILD, load_stages

IMAGE = "${_REGION}-docker.pkg.dev/$PROJECT_ID/${_REPOSITORY}/${_SERVICE}:$COMMIT_SHA"
USER_SUBSTITUTION = re.compile(r"\$\{(_[A-Z0-9_]+)\}|\$(_[A-Z0-9_]+)")
BUILTIN_SUBSTITUTION = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}|\$([A-Z][A-Z0-9_]*)")
FLAGS_FILE = "/workspace/deploy-flags.yaml"
BUILTINS = {"PROJECT_ID", "PROJECT_NUMBER", "BUILD_ID", "LOCATION", "COMMIT_SHA", "SHORT_SHA"}
DEPLOY_FLAGS = (
    "--image",
    "--region",
    "--add-cloudsql-instances",
    "--flags-file",
    "--service-account",
    "--no-cpu-throttling",
    "--min-instances",
    "--port",
    "--concurrency",
    "--set-env-vars",
    "--timeout",
)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded = yaml.safe_load(CLOUDBUILD.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def steps(config: dict[str, Any]) -> list[dict[str, Any]]:
    found = config["steps"]
    assert isinstance(found, list) and found
    return found


def _args(step: dict[str, Any]) -> list[str]:
    return [str(arg) for arg in step.get("args", [])]


def _gcloud(step: dict[str, Any]) -> list[str]:
    """The gcloud argv of a step, whether gcloud is the entrypoint or the first argument."""
    args = _args(step)
    if step.get("entrypoint") == "gcloud":
        return args
    if step.get("entrypoint") is None and args[:1] == ["gcloud"]:
        return args[1:]
    return []


def flag_values(args: list[str], flag: str) -> list[str]:
    values = []
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            values.append(args[index + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


def _one(args: list[str], flag: str) -> str:
    values = flag_values(args, flag)
    assert len(values) == 1, f"{flag} given {len(values)} times in {args}"
    return values[0]


def _index(steps: list[dict[str, Any]], prefix: list[str], *, docker: bool = False) -> int:
    for index, step in enumerate(steps):
        argv = _args(step) if docker and "docker" in str(step.get("name")) else _gcloud(step)
        if argv[: len(prefix)] == prefix:
            return index
    raise AssertionError(f"no step runs {' '.join(prefix)}")


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _exposed_port() -> str:
    runtime = load_stages()[-1]
    exposed = runtime.last("EXPOSE")
    assert exposed is not None
    return exposed.value.split("/")[0]


def test_steps_build_push_migrate_then_deploy(steps: list[dict[str, Any]]) -> None:
    build = _index(steps, ["build"], docker=True)
    push = _index(steps, ["push"], docker=True)
    migrate_job = _index(steps, ["run", "jobs", "deploy"])
    migrate = _index(steps, ["run", "jobs", "execute"])
    budget = _budget_index(steps)
    deploy = _index(steps, ["run", "deploy"])
    assert build < push < migrate_job < migrate < budget < deploy
    # No step may start early: each waits for the one before (no waitFor: ['-']).
    assert all(step.get("waitFor") in (None, []) for step in steps)


def _env_vars(flag: str) -> dict[str, str]:
    """`--set-env-vars` as gcloud reads it: `,`-separated, or by the `^X^` prefix's `X`."""
    separator = ","
    if escaped := re.fullmatch(r"\^(.)\^(.*)", flag, re.DOTALL):
        separator, flag = escaped[1], escaped[2]
    return dict(item.split("=", 1) for item in flag.split(separator))


def test_deploy_step_sets_every_cloud_run_flag(steps: list[dict[str, Any]]) -> None:
    args = _gcloud(steps[_index(steps, ["run", "deploy"])])
    for flag in DEPLOY_FLAGS:
        assert any(a == flag or a.startswith(flag + "=") for a in args), f"deploy lacks {flag}"
    assert _one(args, "--add-cloudsql-instances") == "${_INSTANCE_CONNECTION_NAME}"
    # --max-instances and --set-secrets come from the budget step's file.
    assert _one(args, "--flags-file") == FLAGS_FILE
    assert not flag_values(args, "--max-instances") and not flag_values(args, "--set-secrets")
    assert _one(args, "--service-account") == "${_SERVICE_ACCOUNT}"
    assert _one(args, "--region") == "${_REGION}"
    assert _one(args, "--min-instances") == "1"
    assert int(_one(args, "--concurrency")) >= 1
    assert "--cpu-throttling" not in args
    env = _env_vars(_one(args, "--set-env-vars"))
    assert set(env) >= {"LOG_LEVEL", "INGESTION_INTERVAL_SECONDS", "INGESTION_ENABLED"}
    # The source and its products, with the commas SYMBOLS holds.
    assert (env["FEED"], env["SYMBOLS"]) == ("${_FEED}", "${_SYMBOLS}")
    # The pool size the budget was computed for is the one the service uses.
    assert env["DB_POOL_SIZE"] == "${_DB_POOL_SIZE}"
    assert env["EXPORT_MAX_CONCURRENT"] == "${_EXPORT_MAX_CONCURRENT}"
    assert env["DATABASE_READ_POOLER"] == "${_DATABASE_READ_POOLER}"
    assert re.fullmatch(r"\d+s", _one(args, "--timeout"))


def test_the_deploy_defaults_are_settings_the_service_accepts(
    steps: list[dict[str, Any]], config: dict[str, Any]
) -> None:
    """The environment the deploy step sets, with the default substitutions, starts the
    service: a misspelt FEED or a SYMBOLS the source refuses would fail every instance."""
    args = _gcloud(steps[_index(steps, ["run", "deploy"])])
    defaults = config["substitutions"]
    env = {
        name: re.sub(r"\$\{(_[A-Z_]+)\}", lambda m: str(defaults[m[1]]), value)
        for name, value in _env_vars(_one(args, "--set-env-vars")).items()
    }
    settings = Settings.from_env({**env, "DATABASE_URL": "postgresql://cloud-sql/mdp"})
    assert settings.feed == "synthetic" and settings.ingestion_enabled
    assert [s.symbol for s in settings.symbols] == defaults["_SYMBOLS"].split(",")


def test_port_matches_the_dockerfile(steps: list[dict[str, Any]]) -> None:
    args = _gcloud(steps[_index(steps, ["run", "deploy"])])
    port = _one(args, "--port")
    assert port == _exposed_port()
    assert load_stages()[-1].env()["PORT"] == port


def test_every_step_uses_the_same_image(
    steps: list[dict[str, Any]], config: dict[str, Any]
) -> None:
    build = _args(steps[_index(steps, ["build"], docker=True)])
    push = _args(steps[_index(steps, ["push"], docker=True)])
    job = _gcloud(steps[_index(steps, ["run", "jobs", "deploy"])])
    deploy = _gcloud(steps[_index(steps, ["run", "deploy"])])
    tags = flag_values(build, "--tag") + flag_values(build, "-t")
    assert tags == [IMAGE]
    assert push[1:] == [IMAGE]
    assert _one(job, "--image") == IMAGE
    assert _one(deploy, "--image") == IMAGE
    assert config["images"] == [IMAGE]


def test_migration_job_runs_mdp_migrate_like_the_service(steps: list[dict[str, Any]]) -> None:
    job = _gcloud(steps[_index(steps, ["run", "jobs", "deploy"])])
    execute = _gcloud(steps[_index(steps, ["run", "jobs", "execute"])])
    deploy = _gcloud(steps[_index(steps, ["run", "deploy"])])
    name = job[3]
    assert name == "${_SERVICE}-migrate"
    assert execute[3] == name
    assert "--wait" in execute
    assert _one(execute, "--region") == _one(job, "--region") == _one(deploy, "--region")
    assert [_one(job, "--command"), _one(job, "--args")] == ["mdp", "migrate"]
    # Same database, same credentials, same identity as the service it migrates for.
    assert _one(job, "--set-cloudsql-instances") == _one(deploy, "--add-cloudsql-instances")
    assert _one(job, "--set-secrets") == "DATABASE_URL=${_DATABASE_URL_SECRET}:latest"
    assert _one(job, "--service-account") == _one(deploy, "--service-account")
    assert _one(job, "--max-retries") == "0"


def test_substitutions_used_are_declared_and_declared_are_used(config: dict[str, Any]) -> None:
    declared = config["substitutions"]
    assert set(declared) >= {
        "_REGION",
        "_REPOSITORY",
        "_SERVICE",
        "_INSTANCE_CONNECTION_NAME",
        "_DATABASE_URL_SECRET",
        "_SERVICE_ACCOUNT",
    }
    used: set[str] = set()
    builtins: set[str] = set()
    for text in _strings(config):
        for match in USER_SUBSTITUTION.finditer(text):
            used.add(match.group(1) or match.group(2))
        for match in BUILTIN_SUBSTITUTION.finditer(text):
            builtins.add(match.group(1) or match.group(2))
    assert used <= set(declared), f"undeclared: {used - set(declared)}"
    outside = {
        s for key, value in config.items() if key != "substitutions" for s in _strings(value)
    }
    used_outside = {
        m.group(1) or m.group(2) for text in outside for m in USER_SUBSTITUTION.finditer(text)
    }
    assert set(declared) <= used_outside, f"declared but unused: {set(declared) - used_outside}"
    assert builtins <= BUILTINS, f"not built-in substitutions: {builtins - BUILTINS}"
    # Only the optional read replica's secret may default to nothing.
    assert all(
        isinstance(value, str) and (value or name == "_DATABASE_READ_URL_SECRET")
        for name, value in declared.items()
    )


def test_defaults_that_refer_to_substitutions_enable_dynamic_substitutions(
    config: dict[str, Any],
) -> None:
    refers = any("$" in value for value in config["substitutions"].values())
    options = config["options"]
    assert options["logging"] == "CLOUD_LOGGING_ONLY"
    if refers:
        assert options.get("dynamicSubstitutions") is True


def _budget_index(steps: list[dict[str, Any]]) -> int:
    for index, step in enumerate(steps):
        if step.get("id") == "budget":
            return index
    raise AssertionError("no budget step")


def _run_budget(
    config: dict[str, Any], tmp_path: Path, **overrides: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    """The budget step's script as Cloud Build would run it: substitutions applied (`$$` is a
    literal `$`), writing into `tmp_path` instead of /workspace."""
    step = config["steps"][_budget_index(config["steps"])]
    assert step["entrypoint"] == "bash" and step["args"][0] == "-c"
    values = {**config["substitutions"], **overrides}
    script = step["args"][1].replace("$$", "\0")
    script = USER_SUBSTITUTION.sub(lambda m: values[m.group(1) or m.group(2)], script)
    script = script.replace("\0", "$").replace("/workspace", str(tmp_path))
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    flags = tmp_path / "deploy-flags.yaml"
    return result, flags.read_text(encoding="utf-8") if flags.exists() else ""


@pytest.mark.parametrize(
    ("overrides", "instances", "secrets"),
    [
        # 90 connections to share, 17 per instance (10 reads, 4 exports, 3 on the primary).
        ({}, 5, "DATABASE_URL=mdp-database-url:latest"),
        ({"_DB_MAX_CONNECTIONS": "500", "_DB_POOL_SIZE": "5"}, 40, None),
        ({"_EXPORT_MAX_CONCURRENT": "0"}, 6, None),
        # A replica takes the reads: 3 per instance on the primary, 14 on the replica.
        (
            {"_DATABASE_READ_URL_SECRET": "mdp-read-url", "_DB_READ_MAX_CONNECTIONS": "200"},
            13,
            "DATABASE_URL=mdp-database-url:latest,DATABASE_READ_URL=mdp-read-url:latest",
        ),
        # Behind a pooler with 1000 client connections, the primary's 3 each bound it.
        (
            {"_DATABASE_READ_URL_SECRET": "mdp-read-url", "_DB_READ_MAX_CONNECTIONS": "1000"},
            30,
            None,
        ),
    ],
    ids=["defaults", "bigger-primary", "no-exports", "replica", "pooler"],
)
def test_max_instances_follow_the_connection_budget(
    config: dict[str, Any],
    tmp_path: Path,
    overrides: dict[str, str],
    instances: int,
    secrets: str | None,
) -> None:
    overrides = {"_DATABASE_URL_SECRET": "mdp-database-url", **overrides}
    result, flags = _run_budget(config, tmp_path, **overrides)

    assert result.returncode == 0, result.stderr
    written = yaml.safe_load(flags)
    assert written["--max-instances"] == str(instances)
    if secrets is not None:
        assert written["--set-secrets"] == secrets


def test_a_budget_without_room_for_one_instance_fails_the_build(
    config: dict[str, Any], tmp_path: Path
) -> None:
    result, flags = _run_budget(config, tmp_path, _DB_MAX_CONNECTIONS="22", _DB_POOL_SIZE="10")

    assert result.returncode != 0
    assert "lower _DB_POOL_SIZE" in result.stderr
    assert flags == ""
