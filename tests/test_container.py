"""The container image, tested around the build: no Docker engine runs on these machines.

hadolint lints the Dockerfile; the build stage's own commands are replayed on a context made of
exactly what the Dockerfile COPYs (and .dockerignore lets through); the resulting venv runs
`polarity-exporter --version` and serves the demo. The image build itself is not exercised.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from conftest import REPO, free_port, require_tool, stop_process, wait_until_ready
from prometheus_client.parser import text_string_to_metric_families

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PACKAGE_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@dataclass
class Stage:
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage, with continuation lines joined and comments dropped."""
    stages: list[Stage] = []
    logical = ""
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if logical and line.lstrip().startswith("#"):
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        keyword, _, rest = logical.strip().partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            parts = rest.split()
            stages.append(Stage(parts[2] if len(parts) > 2 else str(len(stages))))
        elif stages:
            stages[-1].instructions.append((keyword.upper(), rest.strip()))
    return stages


STAGES = parse_dockerfile(DOCKERFILE.read_text())
BUILD, FINAL = STAGES[0], STAGES[-1]


def copy_sources(stage: Stage) -> list[str]:
    """Sources of the stage's COPY instructions from the build context (not --from=...)."""
    sources: list[str] = []
    for rest in stage.args("COPY"):
        words = shlex.split(rest)
        if any(w.startswith("--from") for w in words):
            continue
        sources.extend(w for w in words[:-1] if not w.startswith("--"))
    return sources


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, enough for this file: the last matching pattern decides."""
    result = False
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob_pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatch(prefix, glob_pattern) for prefix in prefixes):
            result = not negate
    return result


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# --- static checks -------------------------------------------------------------------------------


def test_hadolint_is_clean() -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_every_copy_source_exists_and_reaches_the_context() -> None:
    sources = copy_sources(BUILD) + copy_sources(FINAL)
    assert "pyproject.toml" in sources
    patterns = dockerignore_patterns()
    for source in sources:
        assert (REPO / source).exists(), f"COPY source {source} is missing"
        assert not ignored(source, patterns), f"COPY source {source} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv", ".git", "tests", "helm", "demo/polarity-password.txt"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"


def test_final_stage_only_copies_the_built_venv() -> None:
    assert FINAL.args("RUN") == [], "the runtime stage installs nothing itself"
    copies = [shlex.split(rest) for rest in FINAL.args("COPY")]
    assert copies and all(f"--from={BUILD.name}" in words for words in copies)


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    user = FINAL.args("USER")[-1]
    assert re.fullmatch(r"[0-9]+(:[0-9]+)?", user)
    assert all(int(part) != 0 for part in user.split(":"))


def test_entrypoint_and_port_are_the_exporters() -> None:
    assert FINAL.args("ENTRYPOINT") == ['["polarity-exporter"]']
    assert FINAL.args("EXPOSE") == ["10119"]
    assert FINAL.args("HEALTHCHECK") == []


def test_oci_labels_name_source_version_and_license() -> None:
    labels = dict(
        word.split("=", 1) for rest in FINAL.args("LABEL") for word in shlex.split(rest)
    )
    version_arg = next(a for a in FINAL.args("ARG") if a.startswith("VERSION="))
    assert version_arg == f"VERSION={PACKAGE_VERSION}"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    urls = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]
    assert labels["org.opencontainers.image.source"] == urls["Source"]


# --- the install path, replayed ------------------------------------------------------------------


@dataclass
class ImageReplay:
    venv: Path
    dist: Path


def build_stage_commands() -> list[str]:
    """The build stage's RUN commands that come after its COPYs (those that build/install)."""
    commands: list[str] = []
    copied = False
    for keyword, rest in BUILD.instructions:
        if keyword == "COPY":
            copied = True
        elif keyword == "RUN" and copied:
            commands.extend(part.strip() for part in rest.split("&&"))
    return commands


def replay(command: str, paths: dict[str, Path], cwd: Path) -> None:
    """Run one Dockerfile command with the image's absolute paths mapped to temp dirs."""
    words = []
    for word in shlex.split(command):
        for image_path, local in paths.items():
            if word == image_path or word.startswith(image_path + "/"):
                word = str(local) + word[len(image_path):]
        words.extend(sorted(glob.glob(word)) if "*" in word else [word])
    if words[0] == "python":
        words[0] = sys.executable  # the build stage's python has `build` installed; so does ours
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=300,
                            env=env, check=False)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageReplay:
    """Replays the build stage once per session: context from the COPYs, wheel, fresh venv."""
    root = tmp_path_factory.mktemp("image")
    context = root / "src"
    context.mkdir()
    for source in copy_sources(BUILD):
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(origin, context / source,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, context / source)
    paths = {"/dist": root / "dist", "/opt/venv": root / "venv"}
    commands = build_stage_commands()
    assert any("pip install" in c for c in commands), commands
    for command in commands:
        replay(command, paths, context)
    return ImageReplay(venv=paths["/opt/venv"], dist=paths["/dist"])


def test_the_wheel_builds_from_the_copied_context(image: ImageReplay) -> None:
    wheels = list(image.dist.glob("*.whl"))
    assert [w.name for w in wheels] == [f"polarity_exporter-{PACKAGE_VERSION}-py3-none-any.whl"]


def test_installed_console_script_reports_the_version(image: ImageReplay) -> None:
    result = subprocess.run([str(image.venv / "bin" / "polarity-exporter"), "--version"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert PACKAGE_VERSION in result.stdout


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def demo_exporter(image: ImageReplay, tmp_path: Path) -> Iterator[str]:
    """The installed exporter in demo mode, with the image's environment and a scratch cwd."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLARITY_")}
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1",
               PATH=f"{image.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    proc = subprocess.Popen(
        ["polarity-exporter", "--demo", f"--web.listen-address=127.0.0.1:{port}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/-/ready", proc, timeout=30)
        yield url
    finally:
        stop_process(proc)


def test_installed_exporter_serves_the_demo(demo_exporter: str) -> None:
    response = requests.get(f"{demo_exporter}/metrics", timeout=30)
    assert response.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("polarity_up", ())] == 1
    assert samples[("polarity_exporter_build_info", (("version", PACKAGE_VERSION),))] == 1
    assert any(name == "polarity_integration_running" for name, _ in samples)


def test_installed_exporter_writes_nothing_at_runtime(
    image: ImageReplay, tmp_path: Path
) -> None:
    """What a read-only root filesystem needs: serving the demo creates no file anywhere we own."""
    before = snapshot(image.venv)
    # A fixture-like inline start, so the snapshot brackets the whole life of the process.
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLARITY_")}
    env.update(PYTHONDONTWRITEBYTECODE="1", HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    proc = subprocess.Popen(
        [str(image.venv / "bin" / "polarity-exporter"), "--demo",
         f"--web.listen-address=127.0.0.1:{port}"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/-/ready", proc, timeout=30)
        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).status_code == 200
    finally:
        stop_process(proc)
    assert snapshot(image.venv) == before
    assert snapshot(workdir) == set() and snapshot(tmp_path / "home") == set()
