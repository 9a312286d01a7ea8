"""The Helm chart (helm/polarity-exporter) and the sidecar example (helm/examples/sidecar).

Real Helm (v4, embedded through helm-python-sdk) lints and renders the chart with the default
values and with every file under the chart's ci/. Every rendered object of a built-in kind is
validated by kubernetes-validate in strict mode (unknown fields are errors) against each
Kubernetes minor from KUBE_MIN to KUBE_MAX. kubernetes-validate ships no schemas for the
prometheus-operator CRDs, so ServiceMonitor, PodMonitor and PrometheusRule are checked here
against the fields of monitoring.coreos.com/v1 that the chart uses.
"""

from __future__ import annotations

import base64
import functools
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import click
import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from conftest import REPO, SIM_PASSWORD, SIM_USER, require_tool

from polarity_exporter.cli import command
from polarity_exporter.config import ApiKey, Password, PolarityConfig

CHART = REPO / "helm" / "polarity-exporter"
SIDECAR = REPO / "helm" / "examples" / "sidecar"
RULES_SOURCE = REPO / "prometheus" / "polarity-alerts.yml"
SLO_SOURCE = REPO / "prometheus" / "polarity-slo.yml"
DASHBOARDS_SOURCE = REPO / "grafana" / "dashboards"
RULES_COPY = CHART / "files" / "polarity-alerts.yml"
DASHBOARDS_COPY = CHART / "files" / "dashboards"

# The supported range, stated in the chart README; Chart.yaml's kubeVersion is ">=1.28.0-0".
KUBE_MIN, KUBE_MAX = 28, 35
KUBE_VERSIONS = [f"1.{minor}.0" for minor in range(KUBE_MIN, KUBE_MAX + 1)]
# Native sidecars (initContainers with restartPolicy: Always) are on by default from 1.29.
NATIVE_SIDECAR_VERSIONS = [v for v in KUBE_VERSIONS if int(v.split(".")[1]) >= 29]

RELEASE, NAMESPACE = "polarity", "monitoring"
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
VALUES_CASES = [pytest.param(None, id="defaults")] + [
    pytest.param(path, id=path.stem) for path in CI_FILES
]
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
SECRET_ENV = {"POLARITY_PASSWORD", "POLARITY_API_KEY"}


def load_values(path: Path | None) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) if path is not None else {}


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, exactly as `helm template` would produce it."""
    with helm.Chart.load(CHART) as chart:
        rendered: dict[str, str] = chart.render(
            values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    return rendered


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, text in rendered.items():
        if path.endswith(".yaml"):
            docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def notes(rendered: dict[str, str]) -> str:
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def exporter_container(workload: dict[str, Any]) -> dict[str, Any]:
    spec = pod_spec(workload)
    containers = spec.get("initContainers", []) + spec["containers"]
    return next(c for c in containers if c["name"] == "polarity-exporter")


@functools.cache
def rendered_case(path: Path | None) -> dict[str, str]:
    """Each values case is rendered once per session (rendering is the slow part)."""
    return render(load_values(path))


def case_objects(path: Path | None) -> list[dict[str, Any]]:
    return objects(rendered_case(path))


def lint_errors(report: dict[str, Any]) -> list[str]:
    # Severity 1 is info ("icon is recommended"); strict lint fails on warnings (2) and errors (3).
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2] + list(
        report["errors"]
    )


# --- lint and render -----------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_CASES)
@pytest.mark.parametrize("kube_version", [KUBE_VERSIONS[0], KUBE_VERSIONS[-1]])
def test_chart_lints_strictly(values_file: Path | None, kube_version: str) -> None:
    report = helm.lint(
        CHART, load_values(values_file), strict=True, kube_version=f"v{kube_version}"
    )
    assert lint_errors(report) == []


def test_ci_values_matrix_covers_each_credential_path() -> None:
    combos = set()
    for path in CI_FILES:
        auth = load_values(path).get("auth", {})
        combos.add((auth.get("type", "password"), bool(auth.get("existingSecret")),
                    auth.get("mountAs", "file")))
    kinds = {combo[0] for combo in combos}
    assert kinds == {"password", "apiKey"}
    assert {combo[1] for combo in combos} == {True, False}, "existing and chart-created Secret"
    assert {combo[2] for combo in combos} == {"file", "env"}


@pytest.mark.parametrize("values_file", VALUES_CASES)
def test_rendered_objects_pass_strict_kubernetes_schemas(
    values_file: Path | None
) -> None:
    docs = case_objects(values_file)
    built_in = [doc for doc in docs if doc["kind"] not in CRD_KINDS]
    assert {"Deployment", "ServiceAccount"} <= {doc["kind"] for doc in built_in}
    for version in KUBE_VERSIONS:
        for doc in built_in:
            kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """Guards the check above: strict mode must really reject what Kubernetes would drop."""
    deployment = only(objects(render()), "Deployment")
    exporter_container(deployment)["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


# Fields of monitoring.coreos.com/v1 (prometheus-operator API) the chart may emit.
MONITOR_SPEC_FIELDS = {"jobLabel", "namespaceSelector", "selector", "endpoints",
                       "podMetricsEndpoints", "scrapeProtocols", "fallbackScrapeProtocol",
                       "sampleLimit", "scrapeClass"}
SCRAPE_PROTOCOLS = {"PrometheusProto", "OpenMetricsText0.0.1", "OpenMetricsText1.0.0",
                    "PrometheusText0.0.4", "PrometheusText1.0.0"}
ENDPOINT_FIELDS = {"port", "path", "params", "scheme", "interval", "scrapeTimeout", "tlsConfig",
                   "basicAuth", "relabelings", "metricRelabelings"}
RELABEL_FIELDS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement",
                  "action"}
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def check_custom_resource(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc["metadata"]) <= {"name", "namespace", "labels", "annotations"}
    spec = doc["spec"]
    if doc["kind"] == "PrometheusRule":
        assert set(spec) == {"groups"}
        for group in spec["groups"]:
            assert set(group) <= {"name", "interval", "rules", "limit"} and group["rules"]
            for rule in group["rules"]:
                assert set(rule) <= RULE_FIELDS and isinstance(rule["expr"], str | int)
        return
    endpoints_key = "endpoints" if doc["kind"] == "ServiceMonitor" else "podMetricsEndpoints"
    assert set(spec) <= MONITOR_SPEC_FIELDS and spec["selector"]["matchLabels"]
    assert set(spec.get("scrapeProtocols", [])) <= SCRAPE_PROTOCOLS
    assert spec.get("fallbackScrapeProtocol", "PrometheusProto") in SCRAPE_PROTOCOLS
    assert isinstance(spec.get("sampleLimit", 0), int) and isinstance(spec.get("scrapeClass", ""),
                                                                       str)
    for endpoint in spec[endpoints_key]:
        assert set(endpoint) <= ENDPOINT_FIELDS
        assert isinstance(endpoint["port"], str), "monitors select ports by name"
        assert endpoint["path"] in ("/metrics", "/probe")
        if endpoint["path"] == "/probe":  # params: map of string to list of strings
            assert list(endpoint["params"]) == ["target"]
            assert [type(v) for v in endpoint["params"]["target"]] == [str]
        else:
            assert "params" not in endpoint
        for relabeling in endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", []):
            assert set(relabeling) <= RELABEL_FIELDS


@pytest.mark.parametrize("values_file", VALUES_CASES)
def test_custom_resources_use_only_known_fields(
    values_file: Path | None
) -> None:
    for doc in case_objects(values_file):
        if doc["kind"] in CRD_KINDS:
            check_custom_resource(doc)


def test_optional_cluster_features_are_off_by_default() -> None:
    kinds = {doc["kind"] for doc in objects(render())}
    assert kinds.isdisjoint(CRD_KINDS | {"NetworkPolicy", "PodDisruptionBudget", "ConfigMap"})
    with helm.Chart.load(CHART) as chart:
        assert chart.values["resources"] == {}


# --- credentials ---------------------------------------------------------------------------------


def secret_values(values: dict[str, Any]) -> list[str]:
    """Credentials and password hashes: none may show in args or plain env."""
    auth = values.get("auth", {})
    web = values.get("webConfig", {}).get("config", {})
    return [auth[key] for key in ("password", "apiKey") if auth.get(key)] + list(
        web.get("basic_auth_users", {}).values())


@pytest.mark.parametrize("values_file", VALUES_CASES)
def test_no_secret_in_args_or_plain_env(
    values_file: Path | None
) -> None:
    docs = case_objects(values_file)
    container = exporter_container(only(docs, "Deployment"))
    plain = container.get("args", []) + [e.get("value", "") for e in container.get("env", [])]
    for secret in secret_values(load_values(values_file)):
        assert not any(secret in item for item in plain)
    for env in container.get("env", []):
        if env["name"] in SECRET_ENV:
            assert "value" not in env and "secretKeyRef" in env["valueFrom"]
    assert not any(arg.startswith(("--polarity.password=", "--polarity.api-key="))
                   for arg in container.get("args", []))


# The ci files that configure the single server (polarity/auth); targets-values has targets only.
SINGLE_SERVER_CASES = [p for p in VALUES_CASES
                       if p.values[0] is not None and "auth" in load_values(p.values[0])]


@pytest.mark.parametrize("values_file", SINGLE_SERVER_CASES)
def test_credentials_come_from_the_named_secret(
    values_file: Path
) -> None:
    values = load_values(values_file)
    auth = values["auth"]
    docs = case_objects(values_file)
    deployment = only(docs, "Deployment")
    container, spec = exporter_container(deployment), pod_spec(deployment)
    secret_name = auth.get("existingSecret") or only(docs, "Secret")["metadata"]["name"]
    keys = {"username": "username", "password": "password", "apiKey": "api-key"}
    keys.update(auth.get("secretKeys", {}))
    key = keys["apiKey" if auth.get("type") == "apiKey" else "password"]
    env = {e["name"]: e for e in container["env"]}
    if auth.get("mountAs", "file") == "env":
        name = "POLARITY_API_KEY" if auth.get("type") == "apiKey" else "POLARITY_PASSWORD"
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret_name, "key": key}
        return
    name = "POLARITY_API_KEY_FILE" if auth.get("type") == "apiKey" else "POLARITY_PASSWORD_FILE"
    file_path = Path(env[name]["value"])
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == file_path.parent)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == secret_name
    assert {"key": key, "path": file_path.name} in volume["secret"]["items"]


def test_chart_created_secret_holds_the_given_credentials() -> None:
    docs = objects(render({"polarity": {"url": "https://p.example"},
                           "auth": {"username": "u1", "password": "s3cret"}}))
    secret = only(docs, "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"username": "u1", "password": "s3cret"}


def checksum(values: dict[str, Any]) -> str | None:
    template = only(objects(render(values)), "Deployment")["spec"]["template"]
    annotations: dict[str, str] = template["metadata"].get("annotations", {})
    return annotations.get("checksum/secret")


def test_changed_chart_secret_rolls_the_pod() -> None:
    first = checksum({"auth": {"username": "u", "password": "one"}})
    assert first is not None
    assert checksum({"auth": {"username": "u", "password": "one"}}) == first
    assert checksum({"auth": {"username": "u", "password": "two"}}) != first


def test_existing_secret_is_used_without_creating_one() -> None:
    docs = objects(render({"auth": {"existingSecret": "mine", "password": "ignored"}}))
    assert "Secret" not in {doc["kind"] for doc in docs}
    assert checksum({"auth": {"existingSecret": "mine"}}) is None


def test_ca_bundle_is_mounted_where_ca_file_points() -> None:
    for source in ("configMap", "secret"):
        ca = {source: "corp-ca", "key": "root.pem"}
        deployment = only(objects(render({"polarity": {"tls": {"ca": ca}}})), "Deployment")
        container, spec = exporter_container(deployment), pod_spec(deployment)
        arg = next(a for a in container["args"] if a.startswith("--polarity.ca-file="))
        ca_file = Path(arg.split("=", 1)[1])
        mount = next(m for m in container["volumeMounts"]
                     if Path(m["mountPath"]) == ca_file.parent)
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        ref = volume["configMap"]["name"] if source == "configMap" else volume["secret"][
            "secretName"]
        items = volume.get("configMap", volume.get("secret"))["items"]
        assert ref == "corp-ca" and {"key": "root.pem", "path": ca_file.name} in items


def test_insecure_skip_verify_switch_adds_the_flag() -> None:
    def args(skip: bool) -> list[str]:
        values = {"polarity": {"tls": {"insecureSkipVerify": skip}}}
        container = exporter_container(only(objects(render(values)), "Deployment"))
        result: list[str] = container["args"]
        return result

    assert "--polarity.insecure-skip-verify" in args(True)
    assert "--polarity.insecure-skip-verify" not in args(False)


# --- the exporter's real CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> click.Command:
    """The exporter's click command: the container's ENTRYPOINT parses the chart's args."""
    return command


def parse_args(cli: click.Command, args: list[str], tmp_path: Path) -> None:
    """Parse args as the container entrypoint would; no callback runs.

    --polarity.ca-file must name an existing file, which only exists inside the pod, so it is
    pointed at a local stand-in; the flag itself is still parsed for real.
    """
    stand_in = tmp_path / "ca.pem"
    stand_in.write_text("stand-in")
    local = [f"--polarity.ca-file={stand_in}" if a.startswith("--polarity.ca-file=") else a
             for a in args]
    cli.make_context("polarity-exporter", local)


def check_env_names(cli: click.Command, container: dict[str, Any]) -> None:
    known = {p.envvar for p in cli.params if isinstance(p.envvar, str)} | SECRET_ENV
    used = {e["name"] for e in container.get("env", []) if e["name"].startswith("POLARITY_")}
    assert used <= known


@pytest.mark.parametrize("values_file", VALUES_CASES)
def test_rendered_args_and_env_are_real_cli_options(
    cli: click.Command, values_file: Path | None, tmp_path: Path
) -> None:
    container = exporter_container(only(case_objects(values_file), "Deployment"))
    parse_args(cli, list(container["args"]), tmp_path)
    check_env_names(cli, container)


# --- probes, security, monitors ------------------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_CASES)
def test_probes_use_health_endpoints_never_metrics(
    values_file: Path | None
) -> None:
    container = exporter_container(only(case_objects(values_file), "Deployment"))
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    port_names = {p["name"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["port"] in port_names


def check_pod_security(spec: dict[str, Any], container: dict[str, Any]) -> None:
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    merged = {**spec["securityContext"], **container["securityContext"]}
    assert merged["runAsNonRoot"] is True
    assert isinstance(merged["runAsUser"], int) and merged["runAsUser"] > 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]


@pytest.mark.parametrize("values_file", VALUES_CASES)
def test_pod_runs_non_root_read_only_without_privileges(
    values_file: Path | None
) -> None:
    docs = case_objects(values_file)
    deployment = only(docs, "Deployment")
    check_pod_security(pod_spec(deployment), exporter_container(deployment))
    service_account = only(docs, "ServiceAccount")
    assert service_account["automountServiceAccountToken"] is False


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_monitor_selects_the_service_port_by_name() -> None:
    docs = case_objects(CHART / "ci" / "password-monitors-rules-values.yaml")
    monitor, service = only(docs, "ServiceMonitor"), only(docs, "Service")
    deployment = only(docs, "Deployment")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert NAMESPACE in monitor["spec"]["namespaceSelector"]["matchNames"]
    port = monitor["spec"]["endpoints"][0]["port"]
    service_port = next(p for p in service["spec"]["ports"] if p["name"] == port)
    container_ports = {p["name"] for p in exporter_container(deployment)["ports"]}
    assert service_port["targetPort"] in container_ports
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(service["spec"]["selector"], pod_labels)
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_pod_monitor_selects_the_container_port_by_name() -> None:
    docs = case_objects(CHART / "ci" / "sidecar-style-values.yaml")
    monitor, deployment = only(docs, "PodMonitor"), only(docs, "Deployment")
    assert "Service" not in {doc["kind"] for doc in docs}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(monitor["spec"]["selector"]["matchLabels"], labels)
    port_names = {p["name"] for p in exporter_container(deployment)["ports"]}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in port_names


def test_network_policy_admits_scrapes_on_the_metrics_port() -> None:
    docs = case_objects(CHART / "ci" / "password-monitors-rules-values.yaml")
    policy, deployment = only(docs, "NetworkPolicy"), only(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    port_names = {p["name"] for p in exporter_container(deployment)["ports"]}
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} <= port_names


def test_notes_name_objects_the_release_creates() -> None:
    rendered = render({"polarity": {"url": "https://p.example"},
                       "auth": {"username": "u", "password": "p"}})
    text = notes(rendered)
    service = only(objects(rendered), "Service")["metadata"]["name"]
    assert f"service/{service} " in text
    assert "WARNING" not in text


def test_notes_warn_when_url_or_credentials_are_missing() -> None:
    text = notes(render())
    assert "polarity.url is empty" in text and "no credentials are configured" in text


# --- the exporter's own endpoint: web config, probes, monitors, cache ----------------------------

WEB_CI = CHART / "ci" / "web-tls-basic-auth-values.yaml"
# What the cluster holds for WEB_CI: the Secrets it names but does not create. The password is
# the one whose bcrypt hash WEB_CI puts in basic_auth_users.
SCRAPE_USER, SCRAPE_PASSWORD = "prometheus", "ci-scrape-password"
SCRAPE_AUTH = {"scrape-auth": {"username": SCRAPE_USER, "password": SCRAPE_PASSWORD}}


def arg_value(container: dict[str, Any], flag: str) -> str | None:
    return next((a.split("=", 1)[1] for a in container.get("args", [])
                 if a.startswith(f"{flag}=")), None)


def web_config_secret(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == "Secret" and "web-config.yml" in d.get("data", {})]
    assert len(found) == 1
    return found[0]


def web_config_mount(deployment: dict[str, Any]) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """--web.config.file, the volume mount holding it, and that mount's volume."""
    container, spec = exporter_container(deployment), pod_spec(deployment)
    config_file = Path(arg_value(container, "--web.config.file") or "")
    mount = next(m for m in container["volumeMounts"]
                 if Path(m["mountPath"]) == config_file.parent)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    return config_file, mount, volume


def test_web_config_arg_names_the_file_mounted_from_the_web_config_secret() -> None:
    docs = case_objects(WEB_CI)
    config_file, mount, volume = web_config_mount(only(docs, "Deployment"))
    secret = web_config_secret(docs)
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert config_file.name in secret["data"]


def test_no_web_config_flag_or_secret_without_web_config() -> None:
    docs = objects(render())
    assert arg_value(exporter_container(only(docs, "Deployment")), "--web.config.file") is None
    assert not [d for d in docs if d["kind"] == "Secret"]


def test_existing_web_config_secret_is_mounted_whole_without_creating_one() -> None:
    docs = objects(render({"webConfig": {"existingSecret": "exporter-web",
                                         "existingSecretServesTLS": True}}))
    deployment = only(docs, "Deployment")
    config_file, _mount, volume = web_config_mount(deployment)
    # Whole, so that certificates beside web-config.yml can be named by relative path.
    assert volume["secret"]["secretName"] == "exporter-web" and "items" not in volume["secret"]
    assert config_file.name == "web-config.yml"
    assert "Secret" not in {d["kind"] for d in docs}
    assert exporter_container(deployment)["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def web_checksum(config: dict[str, Any]) -> str | None:
    template = only(objects(render({"webConfig": {"config": config}})), "Deployment")["spec"][
        "template"]
    annotations: dict[str, str] = template["metadata"].get("annotations", {})
    return annotations.get("checksum/web-config")


def test_changed_web_config_rolls_the_pod() -> None:
    headers = {"http_server_config": {"headers": {"X-Frame-Options": "deny"}}}
    first = web_checksum(headers)
    assert first is not None and web_checksum(headers) == first
    assert web_checksum({"http_server_config": {"headers": {"X-Frame-Options": "sameorigin"}}}) \
        != first


def materialise_pod_files(docs: list[dict[str, Any]], cluster: dict[str, dict[str, bytes]],
                          root: Path) -> None:
    """Write each Secret volume of the exporter container where the pod would see it, under root.

    Secrets the chart renders come from the render; the others from `cluster`, standing in for
    what the operator (or cert-manager) created.
    """
    rendered = {d["metadata"]["name"]: {k: base64.b64decode(v) for k, v in d["data"].items()}
                for d in docs if d["kind"] == "Secret"}
    deployment = only(docs, "Deployment")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    for mount in exporter_container(deployment).get("volumeMounts", []):
        name = volumes[mount["name"]]["secret"]["secretName"]
        directory = root / mount["mountPath"].lstrip("/")
        directory.mkdir(parents=True)
        for key, content in {**cluster, **rendered}[name].items():
            (directory / key).write_bytes(content)


def rooted_web_config(path: Path, root: Path) -> Path:
    """The web config with its absolute paths moved under root, as if root were the pod's /."""
    document = yaml.safe_load(path.read_text())
    tls = document.get("tls_server_config", {})
    for key in ("cert_file", "key_file", "client_ca_file"):
        if str(tls.get(key, "")).startswith("/"):
            tls[key] = str(root / tls[key].lstrip("/"))
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def web_ci_pod(tmp_path: Path) -> Any:
    """WEB_CI's web config as the pod would load it: rendered Secret plus real certificates."""
    from inproc import make_certs  # imports the exporter package, so only when needed

    certs = make_certs(require_tool("openssl"), tmp_path)
    tls_secret = {"tls.crt": certs.server_cert.read_bytes(),
                  "tls.key": certs.server_key.read_bytes(), "ca.crt": certs.ca.read_bytes()}
    docs = case_objects(WEB_CI)
    root = tmp_path / "pod"
    materialise_pod_files(docs, {load_values(WEB_CI)["webConfig"]["tlsSecret"]: tls_secret},
                          root)
    config_file = arg_value(exporter_container(only(docs, "Deployment")), "--web.config.file")
    assert config_file is not None
    path = rooted_web_config(root / config_file.lstrip("/"), root)
    return docs, path, certs


def test_rendered_web_config_loads_with_the_exporters_own_loader(web_ci_pod: Any) -> None:
    from polarity_exporter.basicauth import BasicAuth
    from polarity_exporter.webconfig import load_web_config

    _, path, _ = web_ci_pod
    security = load_web_config(str(path))
    assert security.tls is not None and security.ssl_context() is not None
    token = base64.b64encode(f"{SCRAPE_USER}:{SCRAPE_PASSWORD}".encode()).decode()
    assert BasicAuth(security.basic_auth_users).check(f"Basic {token}")


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_rendered_probes_and_service_monitor_reach_the_exporter_as_configured(
    web_ci_pod: Any, simulator: Any
) -> None:
    """The exporter serving the rendered web config answers the rendered probes (no auth,
    certificate unverified, as kubelet does) and the ServiceMonitor's scrape (the CA from its
    tlsConfig, basic auth from its Secret), and refuses a scrape without credentials."""
    import requests
    from inproc import password, running_exporter

    from polarity_exporter.webconfig import load_web_config

    docs, path, certs = web_ci_pod
    container = exporter_container(only(docs, "Deployment"))
    endpoint = only(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    auth = endpoint["basicAuth"]
    secrets = SCRAPE_AUTH
    user = secrets[auth["username"]["name"]][auth["username"]["key"]]
    secret = secrets[auth["password"]["name"]][auth["password"]["key"]]
    assert endpoint["tlsConfig"]["ca"]["secret"]["key"] == "ca.crt"
    with running_exporter(simulator.url, password(SIM_USER, SIM_PASSWORD),
                          security=load_web_config(str(path))) as exporter:
        port = exporter.url.rsplit(":", 1)[1]
        for probe in ("livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            url = f"{get['scheme'].lower()}://127.0.0.1:{port}{get['path']}"
            # kubelet does not verify a probe's certificate; neither does this request.
            assert requests.get(url, verify=False, timeout=5).status_code == 200  # noqa: S501
        metrics = f"{endpoint['scheme']}://127.0.0.1:{port}{endpoint['path']}"
        assert requests.get(metrics, verify=str(certs.ca), timeout=5).status_code == 401
        scrape = requests.get(metrics, verify=str(certs.ca), auth=(user, secret), timeout=10)
        assert scrape.status_code == 200 and "\npolarity_up 1" in "\n" + scrape.text


@pytest.mark.parametrize("monitor", ["serviceMonitor", "podMonitor"])
def test_monitor_scheme_follows_the_exporter_unless_set(monitor: str) -> None:
    kind = monitor[0].upper() + monitor[1:]
    key = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"

    def scheme(values: dict[str, Any]) -> str:
        values = {monitor: {"enabled": True, **values.pop(monitor, {})}, **values}
        result: str = only(objects(render(values)), kind)["spec"][key][0]["scheme"]
        return result

    tls = {"webConfig": {"config": {"tls_server_config": {"cert_file": "c", "key_file": "k"}}}}
    assert scheme({}) == "http"
    assert scheme(dict(tls)) == "https"
    assert scheme({monitor: {"scheme": "https"}}) == "https"
    with pytest.raises(helm.HelmRenderError, match="scheme is http"):
        render({**tls, monitor: {"enabled": True, "scheme": "http"}})


def test_probes_use_https_only_when_the_exporter_serves_tls() -> None:
    def probe(values: dict[str, Any]) -> dict[str, Any]:
        container = exporter_container(only(objects(render(values)), "Deployment"))
        result: dict[str, Any] = container["readinessProbe"]
        return result

    basic = {"basic_auth_users": {SCRAPE_USER: load_values(WEB_CI)["webConfig"]["config"][
        "basic_auth_users"][SCRAPE_USER]}}
    assert probe({"webConfig": {"config": basic}})["httpGet"].get("scheme", "HTTP") == "HTTP"
    assert probe({})["httpGet"].get("scheme", "HTTP") == "HTTP"
    tls = {"tls_server_config": {"cert_file": "c", "key_file": "k"}}
    assert probe({"webConfig": {"config": tls}})["httpGet"]["scheme"] == "HTTPS"


@pytest.mark.parametrize("tls", [
    pytest.param({"client_ca_file": "ca.pem"}, id="ca-implies-require"),
    pytest.param({"client_ca_file": "ca.pem", "client_auth_type": "RequireAndVerifyClientCert"},
                 id="require"),
])
def test_probes_fall_back_to_tcp_when_clients_need_a_certificate(tls: dict[str, str]) -> None:
    config = {"tls_server_config": {"cert_file": "c", "key_file": "k", **tls}}
    container = exporter_container(only(objects(render({"webConfig": {"config": config}})),
                                        "Deployment"))
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe] == {"tcpSocket": {"port": "metrics"},
                                    **load_values(CHART / "values.yaml")[probe]}


def test_cache_ttl_flag_only_when_positive() -> None:
    def ttl(value: float) -> str | None:
        container = exporter_container(only(objects(render({"cacheTTL": value})), "Deployment"))
        return arg_value(container, "--cache.ttl")

    assert ttl(0) is None
    assert ttl(15) == "15" and ttl(2.5) == "2.5"


def test_polarity_paging_values_become_flags() -> None:
    values = {"polarity": {"pageSize": 500, "maxConcurrency": 8}}
    container = exporter_container(only(objects(render(values)), "Deployment"))
    assert arg_value(container, "--polarity.page-size") == "500"
    assert arg_value(container, "--polarity.max-concurrency") == "8"


def test_chart_defaults_for_exporter_flags_match_the_cli(cli: click.Command) -> None:
    with helm.Chart.load(CHART) as chart:
        defaults = chart.values
    params = {p.name: p.default for p in cli.params}
    assert defaults["polarity"]["pageSize"] == params["page_size"]
    assert defaults["polarity"]["maxConcurrency"] == params["max_concurrency"]
    assert defaults["cacheTTL"] == params["cache_ttl"]


def test_notes_tell_how_to_reach_the_tls_basic_auth_endpoint() -> None:
    text = notes(rendered_case(WEB_CI))
    assert "curl -sk -u <user> https://127.0.0.1:10119/metrics" in text
    assert "over https with basic auth" in text and "cached for 15 s" in text


# --- values.schema.json --------------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    pytest.param({"imagee": {"tag": "x"}}, id="top-level"),
    pytest.param({"serviceMonitor": {"enabled": True, "intervall": "30s"}}, id="nested"),
    pytest.param({"auth": {"existingSecrett": "x"}}, id="auth"),
    pytest.param({"polarity": {"tls": {"insecureSkipVerfy": True}}}, id="deep"),
    pytest.param({"webConfig": {"config": {"tls_server_config": {
        "cert_file": "c", "key_file": "k", "cert_fle": "x"}}}}, id="web-config"),
    pytest.param({"webConfig": {"config": {"basic_auth_user": {}}}}, id="web-config-top"),
    pytest.param({"serviceMonitor": {"tlsConfig": {"insecureSkipVerfy": True}}}, id="tls-config"),
])
def test_schema_rejects_typos(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


@pytest.mark.parametrize("values", [
    pytest.param({"replicaCount": "two"}, id="int"),
    pytest.param({"serviceMonitor": {"enabled": "yes"}}, id="bool"),
    pytest.param({"auth": {"mountAs": "args"}}, id="enum"),
    pytest.param({"polarity": {"url": "polarity.example.com"}}, id="url"),
    pytest.param({"serviceMonitor": {"interval": 30}}, id="duration"),
    pytest.param({"extraEnv": {"A": "b"}}, id="list"),
    pytest.param({"cacheTTL": "15s"}, id="cache-ttl"),
    pytest.param({"cacheTTL": -1}, id="cache-ttl-negative"),
    pytest.param({"polarity": {"maxConcurrency": 0}}, id="max-concurrency"),
    pytest.param({"webConfig": {"config": {"basic_auth_users": {"prometheus": "hunter2"}}}},
                 id="plain-password-in-web-config"),
    pytest.param({"serviceMonitor": {"basicAuth": {"username": "prometheus",
                                                   "password": "hunter2"}}},
                 id="plain-basic-auth-password"),
    pytest.param({"podMonitor": {"scheme": "HTTPS"}}, id="scheme"),
    pytest.param({"webConfig": {"config": {"tls_server_config": {
        "cert_file": "c", "key_file": "k", "client_auth_type": "RequireAnyClientCert"}}}},
                 id="unsupported-client-auth"),
])
def test_schema_rejects_wrong_types(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


def test_schema_accepts_the_defaults_and_every_ci_file() -> None:
    with helm.Chart.load(CHART) as chart:
        for path in [None, *CI_FILES]:
            chart.validate_schema(load_values(path))


def test_every_default_value_is_described_by_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(defaults) <= set(schema["properties"])


def test_app_version_matches_the_package_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version and chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == f">=1.{KUBE_MIN}.0-0"


# --- one source of truth for rules and dashboards ------------------------------------------------


def test_chart_rules_copy_equals_the_repo_rules() -> None:
    assert RULES_COPY.exists(), "run helm/sync-chart-files.sh"
    assert RULES_COPY.read_bytes() == RULES_SOURCE.read_bytes(), "run helm/sync-chart-files.sh"


def test_chart_dashboards_copy_equals_the_repo_dashboards() -> None:
    source = {p.name: p.read_bytes() for p in DASHBOARDS_SOURCE.glob("*.json")}
    copy = {p.name: p.read_bytes() for p in DASHBOARDS_COPY.glob("*.json")}
    assert source, "grafana/dashboards/ has no dashboards"
    assert copy == source, "run helm/sync-chart-files.sh"


def test_prometheus_rule_embeds_the_repo_rules_and_the_slos_when_asked() -> None:
    docs = case_objects(CHART / "ci" / "password-monitors-rules-values.yaml")
    rule = only(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_SOURCE.read_text())["groups"] + \
        yaml.safe_load(SLO_SOURCE.read_text())["groups"]


def test_prometheus_rule_leaves_the_slos_out_by_default() -> None:
    rendered = render({"polarity": {"url": "https://polarity.example.com"},
                       "prometheusRule": {"enabled": True}})
    (rule,) = [doc for doc in objects(rendered) if doc.get("kind") == "PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_SOURCE.read_text())["groups"]


def test_chart_slo_copy_equals_the_repo_slo_rules() -> None:
    assert (CHART / "files" / "polarity-slo.yml").read_bytes() == SLO_SOURCE.read_bytes(), \
        "run helm/sync-chart-files.sh"


def test_dashboards_configmap_embeds_the_repo_dashboards() -> None:
    docs = case_objects(CHART / "ci" / "password-monitors-rules-values.yaml")
    configmap = only(docs, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = {p.name: p.read_text() for p in DASHBOARDS_SOURCE.glob("*.json")}
    assert configmap["data"] == source
    assert {"polarity-overview.json", "polarity-integration.json"} <= set(configmap["data"])


# --- the sidecar example -------------------------------------------------------------------------


def sidecar_docs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(SIDECAR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def test_sidecar_examples_pass_strict_kubernetes_schemas() -> None:
    names = set()
    for name, doc in sidecar_docs():
        names.add(name)
        if doc["kind"] in CRD_KINDS:
            check_custom_resource(doc)
            continue
        versions = NATIVE_SIDECAR_VERSIONS if name.startswith("native") else KUBE_VERSIONS
        for version in versions:
            kubernetes_validate.validate(doc, version, strict=True)
    assert {"native-sidecar.yaml", "classic-sidecar.yaml", "podmonitor.yaml"} <= names


def sidecar_workloads() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in sidecar_docs() if doc["kind"] == "Deployment"]


def test_native_sidecar_is_an_init_container_that_keeps_running() -> None:
    workloads = dict(sidecar_workloads())
    native = pod_spec(workloads["native-sidecar.yaml"])
    sidecar = next(c for c in native["initContainers"] if c["name"] == "polarity-exporter")
    assert sidecar["restartPolicy"] == "Always"
    classic = pod_spec(workloads["classic-sidecar.yaml"])
    assert "polarity-exporter" in {c["name"] for c in classic["containers"]}


def test_sidecar_examples_are_secure_and_probe_health_endpoints() -> None:
    secrets = {doc["metadata"]["name"] for _, doc in sidecar_docs() if doc["kind"] == "Secret"}
    for _, workload in sidecar_workloads():
        spec, container = pod_spec(workload), exporter_container(workload)
        check_pod_security(spec, container)
        assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
        assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
        env = {e["name"]: e for e in container["env"]}
        assert SECRET_ENV.isdisjoint(env) or all(
            "secretKeyRef" in env[n]["valueFrom"] for n in SECRET_ENV & set(env))
        key_file = Path(env["POLARITY_API_KEY_FILE"]["value"])
        mount = next(m for m in container["volumeMounts"]
                     if Path(m["mountPath"]) == key_file.parent)
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] in secrets


def test_sidecar_args_and_env_are_real_cli_options(cli: click.Command, tmp_path: Path) -> None:
    for _, workload in sidecar_workloads():
        container = exporter_container(workload)
        parse_args(cli, list(container["args"]), tmp_path)
        check_env_names(cli, container)


def test_sidecar_pod_monitor_selects_the_sidecar_port_by_name() -> None:
    monitor = next(doc for _, doc in sidecar_docs() if doc["kind"] == "PodMonitor")
    for _, workload in sidecar_workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert matches(monitor["spec"]["selector"]["matchLabels"], labels)
        port_names = {p["name"] for p in exporter_container(workload)["ports"]}
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in port_names


# --- several Polarity servers: targets, --config.file, /probe ------------------------------------

TARGETS_CI = CHART / "ci" / "targets-values.yaml"
PROD_KEY, LAB_PASSWORD = "ci-prod-api-key-0123456789", "ci-lab-password-correct-horse"
# What the cluster holds for TARGETS_CI: the Secrets and the CA ConfigMap it names.
TARGETS_CLUSTER: dict[tuple[str, str], dict[str, bytes]] = {
    ("Secret", "polarity-prod"): {"api-key": f"{PROD_KEY}\n".encode()},
    ("Secret", "polarity-lab"): {"user": b"prometheus\n", "pass": f"{LAB_PASSWORD}\n".encode()},
    ("ConfigMap", "polarity-lab-ca"): {"root.pem": Path(certifi.where()).read_bytes()},
}


def mounted_files(docs: list[dict[str, Any]], cluster: dict[tuple[str, str], dict[str, bytes]],
                  root: Path) -> None:
    """Write what kubelet would mount into the exporter container (Secret, ConfigMap and
    projected volumes) under root; objects the chart renders come from the render, the others
    from `cluster`. A key missing from its object fails, as the pod would."""
    store = dict(cluster)
    for doc in docs:
        if doc["kind"] == "Secret":
            store[("Secret", doc["metadata"]["name"])] = {
                k: base64.b64decode(v) for k, v in doc.get("data", {}).items()}
        elif doc["kind"] == "ConfigMap":
            store[("ConfigMap", doc["metadata"]["name"])] = {
                k: v.encode() for k, v in doc["data"].items()}
    deployment = only(docs, "Deployment")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    for mount in exporter_container(deployment).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        directory = root / mount["mountPath"].lstrip("/")
        directory.mkdir(parents=True)
        for source in volume["projected"]["sources"] if "projected" in volume else [volume]:
            kind = "Secret" if "secret" in source else "ConfigMap"
            ref = source["secret" if kind == "Secret" else "configMap"]
            data = store[(kind, ref.get("secretName") or ref["name"])]
            for item in ref.get("items") or [{"key": k, "path": k} for k in data]:
                (directory / item["path"]).write_bytes(data[item["key"]])


def targets_config_map(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == "ConfigMap" and "targets.yml" in d["data"]]
    assert len(found) == 1
    return found[0]


def load_rendered_targets(docs: list[dict[str, Any]],
                          cluster: dict[tuple[str, str], dict[str, bytes]],
                          root: Path) -> dict[str, PolarityConfig]:
    """The targets as the exporter in the pod would load them, with root standing for its /."""
    from polarity_exporter.targets import load_targets

    mounted_files(docs, cluster, root)
    config_file = arg_value(exporter_container(only(docs, "Deployment")), "--config.file")
    assert config_file is not None
    path = root / config_file.lstrip("/")
    # The file's absolute paths, moved under root as a textual edit: its YAML stays as rendered.
    path.write_text(path.read_text().replace("/etc/polarity-exporter/",
                                             f"{root}/etc/polarity-exporter/"))
    return load_targets(str(path))


def test_rendered_targets_config_loads_with_the_exporters_loader(tmp_path: Path) -> None:
    loaded = load_rendered_targets(case_objects(TARGETS_CI), TARGETS_CLUSTER, tmp_path)
    directory = tmp_path / "etc/polarity-exporter/targets"
    assert loaded == {
        "lab": PolarityConfig(url="https://polarity-lab.example.com:8443",
                              credentials=Password("prometheus", LAB_PASSWORD),
                              ca_file=str(directory / "lab" / "ca.crt"), timeout=20.0,
                              page_size=500, max_concurrency=4),
        "prod": PolarityConfig(url="https://polarity.example.com", credentials=ApiKey(PROD_KEY)),
    }
    assert (directory / "lab" / "ca.crt").read_bytes() == TARGETS_CLUSTER[
        ("ConfigMap", "polarity-lab-ca")]["root.pem"]


def test_targets_config_map_holds_paths_never_secrets() -> None:
    config_map = targets_config_map(case_objects(TARGETS_CI))
    text = yaml.safe_dump(config_map)
    for data in TARGETS_CLUSTER.values():
        for value in data.values():
            if not value.startswith(b"-----BEGIN"):  # the CA is no secret
                assert value.decode().strip() not in text
    for target in yaml.safe_load(config_map["data"]["targets.yml"])["targets"].values():
        assert not {"password", "api_key"} & set(target)


def test_inline_target_username_is_written_and_not_mounted(tmp_path: Path) -> None:
    values = {"targets": {"lab": {"url": "https://lab.example", "auth": {
        "existingSecret": "lab-secret", "username": "svc-prometheus"}}}}
    docs = objects(render(values))
    target = yaml.safe_load(targets_config_map(docs)["data"]["targets.yml"])["targets"]["lab"]
    assert target["username"] == "svc-prometheus" and "username_file" not in target
    cluster = {("Secret", "lab-secret"): {"password": b"pw\n"}}  # no username key needed
    loaded = load_rendered_targets(docs, cluster, tmp_path)
    assert loaded["lab"].credentials == Password("svc-prometheus", "pw")


@pytest.mark.parametrize("names", [
    pytest.param(["no", "on", "y", "true", "False", "null", "Null"], id="yaml-booleans-and-null"),
    pytest.param(["1", "1.5", "0x10", "0o10", "1e3", "1.5e3", "010", "1_000", "2024-01-02"],
                 id="yaml-numbers-and-dates"),
    pytest.param(["a" * 63, "A-b_c.9"], id="longest-and-every-character"),
])
def test_target_names_yaml_would_misread_survive_rendering(names: list[str],
                                                           tmp_path: Path) -> None:
    values = {"targets": {name: {"url": "https://p.example", "auth": {
        "type": "apiKey", "existingSecret": "shared"}} for name in names},
        "serviceMonitor": {"enabled": True}}
    docs = objects(render(values))
    cluster = {("Secret", "shared"): {"api-key": b"k"}}
    assert set(load_rendered_targets(docs, cluster, tmp_path)) == set(names)
    probes = only(docs, "ServiceMonitor")["spec"]["endpoints"][1:]
    assert sorted(e["params"]["target"][0] for e in probes) == sorted(names)


def probe_endpoints(monitor: dict[str, Any]) -> dict[str, dict[str, Any]]:
    key = "endpoints" if monitor["kind"] == "ServiceMonitor" else "podMetricsEndpoints"
    return {e["params"]["target"][0]: e for e in monitor["spec"][key] if e["path"] == "/probe"}


@pytest.mark.parametrize("monitor", ["serviceMonitor", "podMonitor"])
def test_monitors_probe_each_target_with_its_name_as_instance(monitor: str) -> None:
    values = {**load_values(TARGETS_CI), monitor: {
        "enabled": True, "interval": "45s", "scrapeTimeout": "40s",
        "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_node_name"],
                         "targetLabel": "node"}]}}
    kind = monitor[0].upper() + monitor[1:]
    found = only(objects(render(values)), kind)
    key = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
    metrics = [e for e in found["spec"][key] if e["path"] == "/metrics"]
    assert len(metrics) == 1, "the exporter's own /metrics endpoint stays"
    probes = probe_endpoints(found)
    assert sorted(probes) == sorted(load_values(TARGETS_CI)["targets"])
    for name, endpoint in probes.items():
        assert endpoint["params"] == {"target": [name]}
        assert endpoint["relabelings"][0] == {"targetLabel": "instance", "replacement": name}
        assert endpoint["relabelings"][1]["targetLabel"] == "node", "the monitor's own follow"
        assert {k: endpoint[k] for k in ("port", "scheme", "interval", "scrapeTimeout")} == \
            {k: metrics[0][k] for k in ("port", "scheme", "interval", "scrapeTimeout")}


def test_probe_endpoints_carry_the_monitors_tls_and_basic_auth() -> None:
    web = load_values(WEB_CI)
    values = {**web, "targets": load_values(TARGETS_CI)["targets"]}
    probes = probe_endpoints(only(objects(render(values)), "ServiceMonitor"))
    for endpoint in probes.values():
        assert endpoint["scheme"] == "https"
        assert endpoint["tlsConfig"] == web["serviceMonitor"]["tlsConfig"]
        assert endpoint["basicAuth"] == web["serviceMonitor"]["basicAuth"]


def config_checksum(values: dict[str, Any]) -> str | None:
    template = only(objects(render(values)), "Deployment")["spec"]["template"]
    annotations: dict[str, str] = template["metadata"].get("annotations", {})
    return annotations.get("checksum/config")


def test_changed_targets_roll_the_pod() -> None:
    targets = load_values(TARGETS_CI)["targets"]
    first = config_checksum({"targets": targets})
    assert first is not None and config_checksum({"targets": targets}) == first
    moved = {**targets, "prod": {**targets["prod"], "url": "https://polarity2.example.com"}}
    assert config_checksum({"targets": moved}) != first
    assert config_checksum({"targets": {**targets, "dr": targets["prod"]}}) != first
    assert config_checksum({}) is None


def test_without_targets_there_is_no_config_file() -> None:
    docs = objects(render({"polarity": {"url": "https://p.example"},
                           "auth": {"existingSecret": "s"}}))
    assert arg_value(exporter_container(only(docs, "Deployment")), "--config.file") is None
    assert "ConfigMap" not in {d["kind"] for d in docs}


def test_targets_make_the_single_server_optional() -> None:
    text = notes(rendered_case(TARGETS_CI))
    assert "WARNING" not in text
    assert "/probe?target=lab" in text and "lab, prod" in text
    assert "/metrics serves only the exporter's own metrics" in text


def test_target_ca_from_both_a_config_map_and_a_secret_fails_the_render() -> None:
    values = {"targets": {"lab": {"url": "https://lab.example", "auth": {"existingSecret": "s"},
                                  "tls": {"ca": {"configMap": "a", "secret": "b"}}}}}
    with pytest.raises(helm.HelmRenderError, match=r"targets\.lab\.tls\.ca: set either"):
        render(values)


def target_values(**target: Any) -> dict[str, Any]:
    base = {"url": "https://lab.example", "auth": {"existingSecret": "lab"}}
    return {"targets": {"lab": {**base, **target}}}


@pytest.mark.parametrize("values", [
    pytest.param(target_values(tiemout=10), id="unknown-key-in-target"),
    pytest.param(target_values(auth={"existingSecret": "lab", "password": "hunter2"}),
                 id="inline-password"),
    pytest.param(target_values(auth={"existingSecret": "lab", "apiKey": "k"}), id="inline-key"),
    pytest.param(target_values(auth={"existingSecret": "lab", "mountAs": "env"}),
                 id="unknown-key-in-auth"),
    pytest.param(target_values(tls={"insecureSkipVerfy": True}), id="unknown-key-in-tls"),
    pytest.param(target_values(auth={"type": "apiKey"}), id="no-existing-secret"),
    pytest.param({"targets": {"lab": {"auth": {"existingSecret": "lab"}}}}, id="no-url"),
    pytest.param(target_values(url="polarity.example.com"), id="url-without-scheme"),
    pytest.param(target_values(url="https://u:p@polarity.example.com"), id="url-credentials"),
    pytest.param(target_values(auth={"existingSecret": "lab", "type": "token"}), id="auth-type"),
    pytest.param(target_values(timeout=0.05), id="timeout"),
    pytest.param(target_values(pageSize=0), id="page-size"),
    pytest.param(target_values(maxConcurrency=65), id="max-concurrency"),
    pytest.param(target_values(tls={"insecureSkipVerify": "yes"}), id="insecure-not-bool"),
    *[pytest.param({"targets": {name: target_values()["targets"]["lab"]}}, id=f"name-{name}")
      for name in ("http://x", "a/b", "a:b", "-lab", "_lab", "a" * 64, "pr\u00f8d", "a b")],
    pytest.param({"targets": ["lab"]}, id="targets-list"),
])
def test_schema_rejects_bad_targets(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


def test_schema_accepts_a_full_target() -> None:
    values = target_values(timeout=2.5, pageSize=500, maxConcurrency=8, tls={
        "insecureSkipVerify": False, "ca": {"secret": "lab-ca", "key": "ca.pem"}}, auth={
        "type": "password", "existingSecret": "lab", "username": "svc",
        "secretKeys": {"username": "u", "password": "p", "apiKey": "k"}})
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)


def test_schema_target_name_pattern_is_the_loaders() -> None:
    from polarity_exporter.targets import TARGET_NAME

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["targets"]
    assert schema["additionalProperties"] is False
    assert list(schema["patternProperties"]) == [f"^{TARGET_NAME.pattern}$"]



# --- prometheus-community conventions (issue 22, item 5) ---------------------------------------

CONVENTIONS = CHART / "ci" / "conventions-values.yaml"


def test_common_labels_are_on_every_object() -> None:
    extra = {"polarity-exporter-notes", f"{RELEASE}-templated"}  # the user's own, as given
    docs = [doc for doc in case_objects(CONVENTIONS) if doc["metadata"]["name"] not in extra]
    assert len(docs) >= 5
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("team") == "security-operations", doc["kind"]
        assert labels.get("cost-center") == "4711", doc["kind"]


def test_extra_manifests_are_rendered_as_objects_and_templated_strings() -> None:
    configmaps = {doc["metadata"]["name"]: doc for doc in case_objects(CONVENTIONS)
                  if doc["kind"] == "ConfigMap"}
    assert configmaps["polarity-exporter-notes"]["data"] == {"owner": "security-operations"}
    templated = configmaps[f"{RELEASE}-templated"]
    assert templated["metadata"]["namespace"] == NAMESPACE
    assert templated["data"] == {"release": RELEASE}


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PodMonitor"])
def test_monitor_fields_pass_through_when_set_and_stay_out_otherwise(kind: str) -> None:
    spec = only(case_objects(CONVENTIONS), kind)["spec"]
    given = yaml.safe_load(CONVENTIONS.read_text())[
        "serviceMonitor" if kind == "ServiceMonitor" else "podMonitor"]
    for field in ("scrapeProtocols", "fallbackScrapeProtocol", "sampleLimit", "scrapeClass"):
        if field in given:
            assert spec[field] == given[field], field
        else:
            assert field not in spec, field
    plain = only(case_objects(CHART / "ci" / "password-monitors-rules-values.yaml"), kind) \
        if kind == "ServiceMonitor" else only(case_objects(CHART / "ci" /
                                                           "sidecar-style-values.yaml"), kind)
    assert not set(plain["spec"]) & {"scrapeProtocols", "fallbackScrapeProtocol", "sampleLimit",
                                     "scrapeClass"}


def test_service_monitor_relabelings_pass_through() -> None:
    endpoint = only(case_objects(CONVENTIONS), "ServiceMonitor")["spec"]["endpoints"][0]
    given = yaml.safe_load(CONVENTIONS.read_text())["serviceMonitor"]
    assert endpoint["relabelings"] == given["relabelings"]
    assert endpoint["metricRelabelings"] == given["metricRelabelings"]


@pytest.mark.parametrize("values", [
    {"serviceMonitor": {"scrapeProtocols": ["OpenMetrics"]}},
    {"serviceMonitor": {"fallbackScrapeProtocol": "text"}},
    {"serviceMonitor": {"sampleLimit": -1}},
    {"commonLabels": {"team": 7}},
    {"extraManifests": [7]},
], ids=["unknown-protocol", "unknown-fallback", "negative-sample-limit", "label-not-a-string",
        "manifest-not-an-object"])
def test_the_schema_refuses_bad_convention_values(values: dict[str, Any]) -> None:
    with pytest.raises(Exception, match=r"(?i)schema|validat|values"):
        render({"polarity": {"url": "https://polarity.example.com"}, **values})


def test_the_chart_readme_has_an_upgrading_section_for_this_version() -> None:
    readme = (CHART / "README.md").read_text()
    section = readme.split("## Upgrading", 1)[1].split("\n## ", 1)[0]
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    assert f"### To {version}" in section
