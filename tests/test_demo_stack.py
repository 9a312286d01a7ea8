"""The demo stack (demo/compose.yaml), tested part by part: Docker cannot run here.

The compose file is parsed and its mounts resolved; Prometheus' config is checked by promtool
with the repo's rules mounted where compose mounts them; Grafana's provisioning is checked
against the shipped dashboards; and the simulator and exporter services are started with the
compose file's own commands and environment (only hosts and ports made local).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from conftest import REPO, free_port, require_tool, stop_process, wait_until_ready
from prometheus_client.parser import text_string_to_metric_families

DEMO = REPO / "demo"
COMPOSE = yaml.safe_load((DEMO / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PROVISIONING = DEMO / "grafana" / "provisioning"


def mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (relative to demo/)."""
    result: dict[str, Path] = {}
    for volume in SERVICES[service].get("volumes", []):
        host, container = volume.split(":")[:2]
        result[container] = (DEMO / host).resolve()
    return result


def container_to_host(service: str, path: str) -> Path:
    """Where a path inside a service's container comes from on the host."""
    for container, host in sorted(mounts(service).items(), key=lambda kv: -len(kv[0])):
        if path == container or path.startswith(container + "/"):
            return host / path[len(container):].lstrip("/")
    raise AssertionError(f"{path} is not mounted into {service}")


def flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag:
            return args[i + 1]
    return None


# --- compose -------------------------------------------------------------------------------------


def test_compose_defines_the_four_services() -> None:
    assert set(SERVICES) == {"simulator", "exporter", "prometheus", "grafana"}
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name


def test_compose_builds_the_repos_dockerfile() -> None:
    for name in ("simulator", "exporter"):
        build = SERVICES[name]["build"]
        context = (DEMO / build["context"]).resolve()
        assert context == REPO and (context / build["dockerfile"]).is_file()


def test_every_compose_mount_and_secret_exists() -> None:
    for name in SERVICES:
        for container, host in mounts(name).items():
            assert host.exists(), f"{name}: {host} (for {container}) is missing"
    for secret in COMPOSE["secrets"].values():
        assert (DEMO / secret["file"]).is_file()


def test_demo_mounts_the_repos_rules_and_dashboards() -> None:
    assert REPO / "prometheus" / "polarity-alerts.yml" in mounts("prometheus").values()
    assert REPO / "grafana" / "dashboards" in mounts("grafana").values()
    copies = [p for p in DEMO.rglob("*") if p.suffix == ".json" or p.name.endswith("alerts.yml")]
    assert copies == [], "the demo mounts the repo's files; it must not keep copies"


def test_exporter_password_file_matches_the_simulator_account() -> None:
    simulator_env = SERVICES["simulator"]["environment"]
    exporter_env = SERVICES["exporter"]["environment"]
    (secret_name,) = SERVICES["exporter"]["secrets"]
    assert exporter_env["POLARITY_PASSWORD_FILE"] == f"/run/secrets/{secret_name}"
    password = (DEMO / COMPOSE["secrets"][secret_name]["file"]).read_text().strip()
    assert password == simulator_env["SIM_PASSWORD"]
    assert exporter_env["POLARITY_USERNAME"] == simulator_env["SIM_USERNAME"]
    assert "POLARITY_PASSWORD" not in exporter_env
    assert not any(password in arg for arg in SERVICES["exporter"]["command"])


# --- Prometheus ----------------------------------------------------------------------------------


def prometheus_config_path() -> str:
    path = flag_value(SERVICES["prometheus"]["command"], "--config.file")
    assert path is not None
    return path


@pytest.fixture
def prometheus_root(tmp_path: Path) -> Path:
    """The Prometheus container's files laid out under tmp_path exactly as compose mounts them."""
    for container, host in mounts("prometheus").items():
        target = tmp_path / container.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host, target)
    return tmp_path


def test_prometheus_config_passes_promtool_with_the_rules_loaded(prometheus_root: Path) -> None:
    promtool = require_tool("promtool")
    config = prometheus_root / prometheus_config_path().lstrip("/")
    result = subprocess.run([promtool, "check", "config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    rules = yaml.safe_load((REPO / "prometheus" / "polarity-alerts.yml").read_text())
    count = sum(len(group["rules"]) for group in rules["groups"])
    assert "polarity-alerts.yml" in output
    assert f"SUCCESS: {count} rules found" in output


def test_prometheus_scrapes_the_exporter_service_on_its_port() -> None:
    config = yaml.safe_load(container_to_host("prometheus", prometheus_config_path()).read_text())
    targets = [t for job in config["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]]
    listen = flag_value(SERVICES["exporter"]["command"], "--web.listen-address") or ":10119"
    assert f"exporter:{listen.rsplit(':', 1)[1]}" in targets
    job = next(j for j in config["scrape_configs"] if "exporter:10119" in str(j))
    # The project's alerts select up{job=~".*polarity.*"}.
    assert re.fullmatch(".*polarity.*", job["job_name"])


# --- Grafana -------------------------------------------------------------------------------------


def provisioning(kind: str) -> list[dict[str, Any]]:
    files = sorted((PROVISIONING / kind).glob("*.y*ml"))
    assert files, f"no {kind} provisioning files"
    docs = [yaml.safe_load(f.read_text()) for f in files]
    assert all(doc["apiVersion"] == 1 for doc in docs)
    return docs


def test_grafana_datasource_points_at_the_prometheus_service() -> None:
    (source,) = [ds for doc in provisioning("datasources") for ds in doc["datasources"]]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and url.hostname in SERVICES
    published = {p.split(":")[-1] for p in SERVICES["prometheus"]["ports"]}
    assert str(url.port) in published


def test_grafana_provisions_the_repos_dashboards() -> None:
    assert container_to_host("grafana", "/etc/grafana/provisioning") == PROVISIONING
    (provider,) = [p for doc in provisioning("dashboards") for p in doc["providers"]]
    assert provider["type"] == "file"
    dashboards = container_to_host("grafana", provider["options"]["path"])
    assert dashboards == REPO / "grafana" / "dashboards"
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert container_to_host("grafana", home).is_file()


def datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield node["datasource"]
        for value in node.values():
            yield from datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from datasource_refs(value)


def test_dashboards_resolve_to_the_provisioned_datasource() -> None:
    """File provisioning does not resolve __inputs: every reference must find our data source."""
    (source,) = [ds for doc in provisioning("datasources") for ds in doc["datasources"]]
    dashboards = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert "__inputs" not in dashboard, path.name
        variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
        for ref in datasource_refs(dashboard):
            uid = ref.get("uid", "")
            match = re.fullmatch(r"\$\{?(\w+)\}?", uid)
            if match:
                variable = variables[match.group(1)]
                assert variable["type"] == "datasource" and variable["query"] == source["type"]
            else:
                assert uid in (source["uid"], "-- Grafana --", "grafana"), (path.name, ref)


# --- the services' commands, run for real --------------------------------------------------------


def service_env(name: str, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLARITY_", "SIM_"))}
    env.update({k: str(v) for k, v in SERVICES[name].get("environment", {}).items()})
    env.update(overrides)
    return env


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    for i, arg in enumerate(out):
        if arg.startswith(flag + "="):
            out[i] = f"{flag}={value}"
        elif arg == flag:
            out[i + 1] = value
    return out


@pytest.fixture
def demo_simulator() -> Iterator[str]:
    """The compose simulator service: its entrypoint, command and environment, on a local port."""
    entrypoint = list(SERVICES["simulator"]["entrypoint"])
    assert entrypoint[0] == "python"
    command = replace_flag(SERVICES["simulator"]["command"], "--host", "127.0.0.1")
    command = replace_flag(command, "--port", str(free_port()))
    proc = subprocess.Popen([sys.executable, *entrypoint[1:], *command], env=service_env(
        "simulator"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, f"simulator did not start: {line}"
        yield match.group(1)
    finally:
        stop_process(proc)


def test_compose_services_run_with_their_real_commands(demo_simulator: str, tmp_path: Path) -> None:
    exporter_bin = Path(sys.executable).parent / "polarity-exporter"  # the image's ENTRYPOINT
    secret_name = SERVICES["exporter"]["secrets"][0]
    password_file = DEMO / COMPOSE["secrets"][secret_name]["file"]
    command = SERVICES["exporter"]["command"]
    assert urlsplit(flag_value(command, "--polarity.url") or "").hostname == "simulator"
    command = replace_flag(command, "--polarity.url", demo_simulator)
    port = free_port()
    log = (tmp_path / "exporter.log").open("w")
    proc = subprocess.Popen(
        [str(exporter_bin), *command, f"--web.listen-address=127.0.0.1:{port}"],
        env=service_env("exporter", POLARITY_PASSWORD_FILE=str(password_file)),
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/-/ready", proc, timeout=30)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    finally:
        stop_process(proc)
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    up = [s.value for s in samples if s.name == "polarity_up"]
    assert up == [1], (tmp_path / "exporter.log").read_text()
    integrations = flag_value(SERVICES["simulator"]["command"], "--integrations")
    info = [s for s in samples if s.name == "polarity_integration_info"]
    assert len(info) == int(integrations or 0)
