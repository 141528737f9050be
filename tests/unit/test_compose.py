"""docker-compose.yml and .env.example, checked without a Docker engine (none runs here):
services, profiles, health checks, start order, volumes and every variable."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from plugin.config import PREFIX, REPO_ROOT, variables

COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
LONG_RUNNING = ("elasticsearch", "kibana", "redis", "worker", "events-a", "events-b", "api")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _documented() -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"#?\s*([A-Z][A-Z0-9_]+)=", line)
        if match:
            names.add(match.group(1))
    return names


def test_bundled_and_external_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"elasticsearch", "opensearch", "kibana", "redis", "setup", "worker",
                             "events-a", "events-b", "api"}
    bundled = {name for name, s in services.items() if "bundled" in s.get("profiles", [])}
    assert bundled == {"elasticsearch", "kibana"}  # without the profile: an external cluster
    # Elasticsearch and Kibana of one version, the newest the client line (8.19) serves.
    versions = {services[n]["image"].rsplit(":", 1)[1] for n in bundled}
    assert versions == {"9.5.3"}
    # OpenSearch of the line `make up` tests, in a profile of its own.
    assert services["opensearch"]["profiles"] == ["opensearch"]
    assert services["opensearch"]["image"] == "opensearchproject/opensearch:3.5.0"


def test_health_checks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        check = services[name]["healthcheck"]
        assert check["test"] and check["retries"] > 0, name
    assert services["setup"]["command"] == ["es-interest", "setup"]
    assert services["setup"]["restart"] == "no"
    for name in ("worker", "events-a", "events-b", "api"):
        needs = services[name]["depends_on"]
        assert needs["setup"]["condition"] == "service_completed_successfully"
        assert needs["redis"]["condition"] == "service_healthy"
        assert "ports" not in services["worker"]  # `--scale worker=N` needs no fixed port
    # The setup job waits for a bundled engine, and runs without one (external).
    for name in ("elasticsearch", "opensearch"):
        engine = services["setup"]["depends_on"][name]
        assert engine == {"condition": "service_healthy", "required": False}
    assert "--appendonly" in services["redis"]["command"]


def test_every_event_partition_has_an_owner(compose: dict[str, Any]) -> None:
    from plugin.config import load_settings
    from plugin.partitions import parse_spec

    count = load_settings({}).event_partitions
    owned: list[int] = []
    for service in compose["services"].values():
        command = service.get("command", [])
        if "--partitions" in command:
            owned += parse_spec(command[command.index("--partitions") + 1], count)
    assert sorted(owned) == list(range(count))  # each exactly once


def test_volumes_are_declared(compose: dict[str, Any]) -> None:
    named = set(compose["volumes"])
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith(("$", ".", "/")):
                used.add(source)
    assert used == named == {"esdata", "osdata", "redisdata", "models"}


def test_every_variable_is_documented() -> None:
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    documented = _documented()
    assert referenced <= documented, referenced - documented
    # And every product setting (plugin/config.py) is in .env.example.
    settings = set(variables())
    missing = settings - documented - {PREFIX + "REDIS_URL"}
    assert not missing, missing
    assert settings >= {PREFIX + "ENGINE_URL", PREFIX + "SEARCH_TIMEOUT_S"}


def test_the_image_installs_what_the_commands_run() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "gunicorn" in dockerfile and "COPY mappings mappings" in dockerfile
    assert Path(REPO_ROOT / "plugin" / "wsgi.py").exists()


def _compose() -> list[str] | None:
    """Docker Compose v2: the docker plugin, or the one `make compose-check` built."""
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    built = REPO_ROOT / ".devstack" / "bin" / "docker-compose"
    return [str(built)] if built.exists() else None


@pytest.mark.parametrize("profile", [None, "bundled", "opensearch"])
def test_docker_compose_itself_accepts_the_file(profile: str | None) -> None:
    """Compose's own parser, on .env.example's values (what `make compose-check` runs)."""
    command = _compose()
    if command is None:
        pytest.skip("no Docker Compose v2 here: `make compose-check` builds one")
    args = [*command, "--env-file", ".env.example", "-f", "docker-compose.yml"]
    if profile:
        args += ["--profile", profile]
    answer = subprocess.run([*args, "config", "--format", "json"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    resolved = json.loads(answer.stdout)
    services = resolved["services"]
    expected = {"redis", "setup", "worker", "events-a", "events-b", "api"} | (
        {"bundled": {"elasticsearch", "kibana"}, "opensearch": {"opensearch"}}.get(profile or "",
                                                                                  set()))
    assert set(services) == expected
    assert all("healthcheck" in services[s] for s in expected - {"setup"})
    assert services["worker"]["depends_on"]["setup"]["condition"] == (
        "service_completed_successfully")
