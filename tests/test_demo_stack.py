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
SIMULATORS = ("simulator", "simulator-lab")


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


def test_compose_defines_two_servers_one_exporter_prometheus_and_grafana() -> None:
    assert set(SERVICES) == {*SIMULATORS, "exporter", "prometheus", "grafana"}
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name


def test_compose_builds_the_repos_dockerfile() -> None:
    for name in (*SIMULATORS, "exporter"):
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


def demo_targets() -> dict[str, Any]:
    path = flag_value(SERVICES["exporter"]["command"], "--config.file")
    assert path is not None
    targets: dict[str, Any] = yaml.safe_load(container_to_host("exporter", path).read_text())
    return dict(targets["targets"])


def target_service(target: dict[str, Any]) -> str:
    """The compose service a target's URL names."""
    host = urlsplit(target["url"]).hostname
    assert host in SIMULATORS, target["url"]
    return host


def test_each_target_is_one_simulator_with_its_account() -> None:
    (secret_name,) = SERVICES["exporter"]["secrets"]
    password = (DEMO / COMPOSE["secrets"][secret_name]["file"]).read_text().strip()
    targets = demo_targets()
    assert sorted(target_service(t) for t in targets.values()) == sorted(SIMULATORS)
    for target in targets.values():
        simulator_env = SERVICES[target_service(target)]["environment"]
        assert target["password_file"] == f"/run/secrets/{secret_name}"
        assert password == simulator_env["SIM_PASSWORD"]
        assert target["username"] == simulator_env["SIM_USERNAME"]
        assert "password" not in target
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


def prometheus_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(container_to_host("prometheus", prometheus_config_path()).read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_prometheus_probes_every_target_through_the_exporter_service() -> None:
    listen = flag_value(SERVICES["exporter"]["command"], "--web.listen-address") or ":10119"
    address = f"exporter:{listen.rsplit(':', 1)[1]}"
    (job,) = [j for j in prometheus_jobs().values() if j.get("metrics_path") == "/probe"]
    assert sorted(job["static_configs"][0]["targets"]) == sorted(demo_targets())
    rules = job["relabel_configs"]
    assert {"source_labels": ["__address__"], "target_label": "__param_target"} in rules
    assert {"source_labels": ["__param_target"], "target_label": "instance"} in rules
    assert {"target_label": "__address__", "replacement": address} in rules
    # The project's alerts select up{job=~".*polarity.*"}.
    assert re.fullmatch(".*polarity.*", job["job_name"])


def test_prometheus_scrapes_the_exporters_own_metrics() -> None:
    own = [j for j in prometheus_jobs().values() if j.get("metrics_path", "/metrics") == "/metrics"
           and any("exporter:10119" in t for sc in j["static_configs"] for t in sc["targets"])]
    assert len(own) == 1


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


def start_simulator(service: str) -> tuple[subprocess.Popen[str], str]:
    """A compose simulator service: its entrypoint, command and environment, on a local port."""
    entrypoint = list(SERVICES[service]["entrypoint"])
    assert entrypoint[0] == "python"
    command = replace_flag(SERVICES[service]["command"], "--host", "127.0.0.1")
    command = replace_flag(command, "--port", str(free_port()))
    proc = subprocess.Popen([sys.executable, *entrypoint[1:], *command], env=service_env(
        service), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        stop_process(proc)
        raise AssertionError(f"{service} did not start: {line}")
    return proc, match.group(1)


@pytest.fixture
def demo_simulators() -> Iterator[dict[str, str]]:
    """Every simulator service of the compose file, running: service -> local URL."""
    started: dict[str, tuple[subprocess.Popen[str], str]] = {}
    try:
        for service in SIMULATORS:
            started[service] = start_simulator(service)
        yield {service: url for service, (_, url) in started.items()}
    finally:
        for proc, _ in started.values():
            stop_process(proc)


def test_compose_services_run_with_their_real_commands(demo_simulators: dict[str, str],
                                                       tmp_path: Path) -> None:
    exporter_bin = Path(sys.executable).parent / "polarity-exporter"  # the image's ENTRYPOINT
    secret_name = SERVICES["exporter"]["secrets"][0]
    password_file = DEMO / COMPOSE["secrets"][secret_name]["file"]
    # The targets file as the container sees it, with the services' hosts made local.
    targets = demo_targets()
    services = {name: target_service(target) for name, target in targets.items()}
    for name, target in targets.items():
        target["url"] = demo_simulators[services[name]]
        target["password_file"] = str(password_file)
    (tmp_path / "targets.yml").write_text(yaml.safe_dump({"targets": targets}))
    command = replace_flag(SERVICES["exporter"]["command"], "--config.file",
                           str(tmp_path / "targets.yml"))
    port = free_port()
    log = (tmp_path / "exporter.log").open("w")
    proc = subprocess.Popen(
        [str(exporter_bin), *command, f"--web.listen-address=127.0.0.1:{port}"],
        env=service_env("exporter"), stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    answers = {}
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/-/ready", proc, timeout=30)
        for name in targets:
            answers[name] = requests.get(f"http://127.0.0.1:{port}/probe",
                                         params={"target": name}, timeout=30).text
    finally:
        stop_process(proc)
    for name, text in answers.items():
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        up = [s.value for s in samples if s.name == "polarity_up"]
        assert up == [1], (tmp_path / "exporter.log").read_text()
        integrations = flag_value(SERVICES[services[name]]["command"], "--integrations")
        info = [s for s in samples if s.name == "polarity_integration_info"]
        assert len(info) == int(integrations or 0)
