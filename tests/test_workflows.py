"""The GitHub Actions workflows (.github/workflows), above all the release path.

actionlint (with shellcheck for the `run:` scripts) and zizmor, offline, must find nothing; every
action is pinned by commit SHA with its release beside it; permissions are granted per job, and
only the publishing jobs may write; the image goes where the chart looks for it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, require_tool

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
RELEASE = REPO / ".github" / "workflows" / "release.yml"
CHART = REPO / "helm" / "polarity-exporter"
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)\s*(?:#\s*(\S+))?\s*$")


def load(path: Path) -> dict[str, Any]:
    workflow = yaml.safe_load(path.read_text())
    assert isinstance(workflow, dict)
    if True in workflow:  # YAML 1.1 reads the key `on` as a boolean
        workflow["on"] = workflow.pop(True)
    return workflow


def jobs(path: Path = RELEASE) -> dict[str, dict[str, Any]]:
    return load(path)["jobs"]


def step_using(job: dict[str, Any], action: str) -> dict[str, Any]:
    steps = [s for s in job["steps"] if str(s.get("uses", "")).startswith(action + "@")]
    assert len(steps) == 1, f"expected one {action} step"
    return steps[0]


def test_there_is_a_release_workflow() -> None:
    assert RELEASE in WORKFLOWS


def test_actionlint_finds_nothing() -> None:
    actionlint = require_tool("actionlint")
    shellcheck = require_tool("shellcheck")
    result = subprocess.run(
        [actionlint, "-no-color", f"-shellcheck={shellcheck}", *map(str, WORKFLOWS)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing() -> None:
    zizmor = require_tool("zizmor")
    result = subprocess.run(
        [zizmor, "--offline", "--no-progress", "--color=never", *map(str, WORKFLOWS)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_by_commit_sha_with_its_release(path: Path) -> None:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = USES_LINE.match(line)
        if not match:
            continue
        uses, release = match.groups()
        assert PINNED.match(uses), f"{uses} is not pinned by a full commit SHA"
        assert release and re.fullmatch(r"v\d+\.\d+\.\d+", release), f"{uses}: no # vX.Y.Z"
        action, sha = uses.split("@")
        assert pins.setdefault(action, sha) == sha, f"{action} is pinned to two commits"
    assert pins, "no action found"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_permissions_are_granted_per_job_and_only_publishers_write(path: Path) -> None:
    workflow = load(path)
    assert workflow["permissions"] == {}, "the workflow itself grants nothing"
    writes = {}
    for name, job in workflow["jobs"].items():
        permissions = job.get("permissions")
        assert isinstance(permissions, dict), f"job {name} must state its permissions"
        assert set(permissions.values()) <= {"read", "write", "none"}
        writes[name] = {scope for scope, level in permissions.items() if level == "write"}
    if path == RELEASE:
        assert writes == {"test": set(), "dist": set(), "image": {"packages"},
                          "chart": {"packages"}, "pypi": {"id-token"}}


def test_release_runs_on_version_tags_only() -> None:
    assert load(RELEASE)["on"] == {"push": {"tags": ["v[0-9]+.[0-9]+.[0-9]+"]}}


def test_release_publishes_only_after_the_readme_test_command() -> None:
    release = jobs()
    test_steps = [step.get("run", "") for step in release["test"]["steps"]]
    assert "bash .ci/run" in test_steps
    ci_run = (REPO / ".ci" / "run").read_text().strip().splitlines()
    readme = (REPO / "README.md").read_text()
    assert ci_run[-1] == "make test" and "make test " in readme
    assert release["test"]["steps"][-1]["env"] == {"CI": "true"}

    def upstream(name: str) -> set[str]:
        needs = release[name].get("needs", [])
        needs = [needs] if isinstance(needs, str) else needs
        return set(needs).union(*(upstream(n) for n in needs))

    for name in ("image", "chart", "pypi"):
        assert "test" in upstream(name), f"{name} may publish before the tests pass"


def test_image_is_multi_arch_with_sbom_and_provenance_where_the_chart_looks() -> None:
    release = load(RELEASE)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert release["env"]["IMAGE"] == values["image"]["repository"]
    image = release["jobs"]["image"]
    meta = step_using(image, "docker/metadata-action")["with"]
    assert meta["images"] == "${{ env.IMAGE }}"
    # The chart's default tag is its appVersion, X.Y.Z without the v.
    assert "type=semver,pattern={{version}}" in meta["tags"].splitlines()
    build = step_using(image, "docker/build-push-action")["with"]
    assert set(build["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["push"] is True and build["sbom"] is True
    assert build["provenance"] == "mode=max"
    assert build["tags"] == "${{ steps.meta.outputs.tags }}"
    assert build["build-args"] == "VERSION=${{ steps.meta.outputs.version }}"
    login = step_using(image, "docker/login-action")["with"]
    assert values["image"]["repository"].startswith(login["registry"] + "/")


def test_chart_is_pushed_as_oci_beside_not_over_the_image() -> None:
    release = load(RELEASE)
    charts = release["env"]["CHARTS"]
    assert charts.startswith("oci://")
    chart_name = yaml.safe_load((CHART / "Chart.yaml").read_text())["name"]
    assert f"{charts}/{chart_name}" != f"oci://{release['env']['IMAGE']}"
    script = next(s["run"] for s in release["jobs"]["chart"]["steps"] if "run" in s)
    assert "helm package helm/polarity-exporter" in script
    assert 'helm push "dist/polarity-exporter-$version.tgz" "$CHARTS"' in script
    assert "--password-stdin" in script and "${{" not in script


def test_pypi_is_published_by_trusted_publishing() -> None:
    pypi = jobs()["pypi"]
    publish = step_using(pypi, "pypa/gh-action-pypi-publish")
    assert not {"password", "user"} & set(publish.get("with") or {}), "no stored token"
    assert pypi["permissions"] == {"id-token": "write"}
    assert pypi["environment"]["name"] == "pypi"
