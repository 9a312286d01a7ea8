"""The container image: the real Dockerfile, built and run without a Docker engine.

Static checks first (hadolint, the COPY sources and .dockerignore, the final stage's shape). Then
buildah builds the real Dockerfile, daemonless and without a registry: `--pull=never`, the vfs
storage driver, chroot isolation, and a Debian bookworm base made locally with mmdebstrap standing
in for python:3.11-slim-bookworm (no container registry is reachable from CI). The image's own
entrypoint then runs as the image's own user with `--demo`, under `buildah run`: it must serve the
demo, answer /-/healthy, write nothing to its root filesystem, and exit 0 on SIGTERM.

The base tarball and the base image are cached under /var/cache/polarity-exporter-test, keyed by a
hash of what makes them, so reruns on one machine only build the project's image.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import time
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from conftest import IN_CI, REPO, free_port, require_tool, wait_until_ready
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


# --- the real image, built with buildah and run ---------------------------------------------------

CACHE = Path("/var/cache/polarity-exporter-test")
STORAGE = CACHE / "containers"  # buildah storage used by this test only (vfs: no overlay needed)
RUNROOT = Path("/run/polarity-exporter-test")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_NAME = "localhost/polarity-exporter-test-base"
IMAGE_NAME = "localhost/polarity-exporter"
IMAGE_USER = "65532:65532"

# The stand-in for python:3.11-slim-bookworm, which no registry can provide here: Debian
# bookworm's own python3 with venv and pip.
MMDEBSTRAP = ["--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates",
              "bookworm"]
# Then, on a `buildah from scratch` container: the tarball; this machine's CA bundle, since the
# build reaches the package index through it; `python` for python3 as in the official image; and
# pip allowed to install into the system Python (the official image's Python is not Debian's).
BASE_SETUP = [
    ["add", "{ctr}", "{tarball}", "/"],
    ["copy", "{ctr}", str(HOST_CA_BUNDLE), "/etc/ssl/certs/ca-certificates.crt"],
    ["run", "--isolation", "chroot", "{ctr}", "--", "ln", "-s", "python3", "/usr/bin/python"],
    ["config", "--env", "PIP_BREAK_SYSTEM_PACKAGES=1", "{ctr}"],
]
# `buildah run` creates its /run/.containerenv mount point and removes it again, so /run's mtime
# moves whatever the exporter does; everything else in the root filesystem must stay as it was.
DIRS_BUILDAH_TOUCHES = {"/run"}

image_timeout = pytest.mark.timeout(900)  # the first run on a machine also makes the base


def tail(text: str, chars: int = 3000) -> str:
    return text[-chars:]


@dataclass
class Buildah:
    exe: str

    def command(self, *args: str) -> list[str]:
        return [self.exe, "--root", str(STORAGE), "--runroot", str(RUNROOT),
                "--storage-driver", "vfs", *args]

    def __call__(self, *args: str, timeout: float = 300, log: Path | None = None) -> str:
        result = subprocess.run(self.command(*args), capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=timeout, check=False)
        if log is not None:
            log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            pytest.fail(f"buildah {shlex.join(args)} exited with {result.returncode}:\n"
                        f"{tail(result.stdout)}\n{tail(result.stderr)}", pytrace=False)
        return result.stdout.strip()

    def has_image(self, name: str) -> bool:
        result = subprocess.run(self.command("inspect", "--type", "image", name),
                                capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
                                check=False)
        return result.returncode == 0


@dataclass
class BuiltImage:
    buildah: Buildah
    name: str
    config: dict[str, object]
    layer_sizes: list[int]
    base_layer_sizes: list[int]
    base_seconds: float | None  # None: the cached base was used
    build_seconds: float


def base_key() -> str:
    recipe = {"mmdebstrap": MMDEBSTRAP, "setup": BASE_SETUP,
              "ca": hashlib.sha256(HOST_CA_BUNDLE.read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def forget_leftovers(buildah: Buildah, keep: str) -> None:
    """Containers and images of earlier (possibly interrupted) runs: the storage is ours alone."""
    buildah("rm", "--all")
    for entry in json.loads(buildah("images", "--all", "--json") or "[]"):
        if keep not in (entry.get("names") or []):
            buildah("rmi", "--force", entry["id"])


def make_test_base(buildah: Buildah, mmdebstrap: str, name: str, key: str,
                   logs: Path) -> float | None:
    """The base image, from the cached mmdebstrap tarball or a new one; None if it existed."""
    if buildah.has_image(name):
        return None
    start = time.monotonic()
    tarball = CACHE / f"base-{key}.tar"
    if not tarball.exists():
        for stale in CACHE.glob("base-*.tar"):
            stale.unlink()
        partial = CACHE / f"base-{key}.partial.tar"  # mmdebstrap picks the format by suffix
        result = subprocess.run([mmdebstrap, *MMDEBSTRAP, str(partial)], capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=900, check=False)
        (logs / "mmdebstrap.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            pytest.fail(f"mmdebstrap exited with {result.returncode}:\n{tail(result.stderr)}",
                        pytrace=False)
        partial.rename(tarball)
    ctr = buildah("from", "scratch")
    for step in BASE_SETUP:
        buildah(*[arg.format(ctr=ctr, tarball=tarball) for arg in step])
    buildah("commit", "--rm", ctr, name)
    return time.monotonic() - start


def layer_sizes(buildah: Buildah, name: str) -> tuple[dict[str, object], list[tuple[str, int]]]:
    info = json.loads(buildah("inspect", "--type", "image", name))
    layers = json.loads(info["Manifest"])["layers"]
    return info["OCIv1"]["config"], [(layer["digest"], int(layer["size"])) for layer in layers]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    """The project's Dockerfile built by buildah on the locally made base; removed afterwards."""
    if os.geteuid() != 0:
        message = "building the image with buildah needs root"
        if IN_CI:
            pytest.fail(f"{message}, and CI must run this check")
        pytest.skip(message)
    buildah = Buildah(require_tool("buildah"))
    mmdebstrap = require_tool("mmdebstrap")
    logs = tmp_path_factory.mktemp("image-logs")
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one test run at a time uses the storage
        key = base_key()
        base = f"{BASE_NAME}:{key}"
        forget_leftovers(buildah, keep=base)
        base_seconds = make_test_base(buildah, mmdebstrap, base, key, logs)
        name = f"{IMAGE_NAME}:test-{os.getpid()}"
        start = time.monotonic()
        buildah("bud", "--pull=never", "--isolation", "chroot",
                "--build-arg", f"PYTHON_IMAGE={base}", "--tag", name,
                "--file", str(DOCKERFILE), str(REPO), timeout=600, log=logs / "build.log")
        build_seconds = time.monotonic() - start
        try:
            config, layers = layer_sizes(buildah, name)
            _, base_layers = layer_sizes(buildah, base)
            base_digests = {digest for digest, _ in base_layers}
            yield BuiltImage(
                buildah=buildah, name=name, config=config,
                layer_sizes=[size for digest, size in layers if digest not in base_digests],
                base_layer_sizes=[size for _, size in base_layers],
                base_seconds=base_seconds, build_seconds=build_seconds,
            )
        finally:
            buildah("rm", "--all")
            buildah("rmi", "--force", name)


Snapshot = dict[str, tuple[int, int, int, int, int, str]]


def snapshot(root: Path) -> Snapshot:
    """Every path under root with its mode, owner, size, mtime and link target."""
    entries: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = "/" + str(path.relative_to(root))
            mtime = 0 if rel in DIRS_BUILDAH_TOUCHES else st.st_mtime_ns
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            entries[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, mtime, target)
    return entries


def process_tree() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(stat_file.parent.name))
    return children


def entrypoint_processes(buildah_pid: int) -> list[int]:
    """The processes `buildah run` started in the container: the first descendants that are not
    buildah's own helpers (buildah-chroot-runtime, buildah-chroot-exec)."""
    tree = process_tree()
    found, stack = [], [buildah_pid]
    while stack:
        for child in tree.get(stack.pop(), []):
            try:
                argv0 = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            (stack if os.path.basename(argv0).startswith(b"buildah") else found).append(child)
    return found


def process_ids(pid: int) -> dict[str, list[int]]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: [int(v) for v in rest.split()]
            for key, _, rest in (line.partition(":") for line in status.splitlines())
            if key in ("Uid", "Gid")}


@dataclass
class DemoRun:
    argv: list[str]
    files: set[str]
    ids: dict[str, list[int]]
    metrics: str
    healthy_status: int
    exit_code: int | None
    rootfs_changes: list[str] = field(default_factory=list)
    log: str = ""


@pytest.fixture(scope="module")
def demo_run(image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """One life of the image: its entrypoint with --demo, as its user, until SIGTERM."""
    buildah = image.buildah
    ctr = buildah("from", "--pull=never", image.name)
    rootfs = Path(buildah("mount", ctr))
    before = snapshot(rootfs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    entrypoint = image.config["Entrypoint"]
    assert isinstance(entrypoint, list)
    argv = [*entrypoint, "--demo", f"--web.listen-address=127.0.0.1:{port}"]
    log_path = tmp_path_factory.mktemp("demo-run") / "container.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            buildah.command("run", "--isolation", "chroot", "--user", str(image.config["User"]),
                            ctr, "--", *argv),
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        )
    started: list[int] = []
    try:
        try:
            wait_until_ready(f"{url}/-/ready", proc, timeout=60)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}; the container's output:\n{tail(log_path.read_text())}",
                        pytrace=False)
        started = entrypoint_processes(proc.pid)
        assert len(started) == 1, f"expected one entrypoint process, found {started}"
        ids = process_ids(started[0])
        metrics = requests.get(f"{url}/metrics", timeout=30)
        healthy = requests.get(f"{url}/-/healthy", timeout=10)
        os.kill(started[0], signal.SIGTERM)  # what `docker stop` sends to the entrypoint
        try:
            exit_code: int | None = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            exit_code = None
    finally:
        if proc.poll() is None:
            for pid in started:
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    after = snapshot(rootfs)
    changes = sorted(
        f"{'added' if path not in before else 'removed' if path not in after else 'changed'} "
        f"{path}"
        for path in before.keys() | after.keys() if before.get(path) != after.get(path)
    )
    buildah("rm", ctr)
    yield DemoRun(argv=argv, files=set(before), ids=ids, metrics=metrics.text,
                  healthy_status=healthy.status_code, exit_code=exit_code,
                  rootfs_changes=changes, log=log_path.read_text())


@image_timeout
def test_image_config_is_the_dockerfiles(image: BuiltImage) -> None:
    assert image.config["Entrypoint"] == ["polarity-exporter"]
    assert image.config["User"] == IMAGE_USER
    assert image.config["ExposedPorts"] == {"10119/tcp": {}}
    labels = image.config["Labels"]
    assert isinstance(labels, dict)
    assert labels["org.opencontainers.image.version"] == PACKAGE_VERSION
    env_items = image.config["Env"]
    assert isinstance(env_items, list)
    env = dict(str(item).split("=", 1) for item in env_items)
    assert env["PATH"].startswith("/opt/venv/bin:"), env["PATH"]
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


@image_timeout
def test_image_is_one_small_layer_above_its_base(
    image: BuiltImage, demo_run: DemoRun, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runtime stage adds only the venv: no build context, wheel, build tool or pip cache."""
    total = sum(image.base_layer_sizes) + sum(image.layer_sizes)
    base = "cached" if image.base_seconds is None else f"made in {image.base_seconds:.0f} s"
    with capsys.disabled():
        print(f"\n[image] {image.name}: {total / 1e6:.0f} MB, of which "
              f"{sum(image.layer_sizes) / 1e6:.1f} MB above the test base (base {base}; "
              f"image built in {image.build_seconds:.0f} s)")
    assert len(image.layer_sizes) == 1
    assert sum(image.layer_sizes) < 64e6
    assert "/opt/venv/bin/polarity-exporter" in demo_run.files
    leftovers = [path for path in demo_run.files
                 if path.startswith(("/src", "/dist", "/root/.cache"))
                 or re.fullmatch(r"/opt/venv/lib/python3\.\d+/site-packages/build", path)]
    assert leftovers == []


@image_timeout
def test_entrypoint_runs_as_the_images_own_user(demo_run: DemoRun) -> None:
    assert demo_run.argv[0] == "polarity-exporter"
    uid, gid = (int(part) for part in IMAGE_USER.split(":"))
    assert demo_run.ids == {"Uid": [uid] * 4, "Gid": [gid] * 4}


@image_timeout
def test_the_image_serves_the_demo(demo_run: DemoRun) -> None:
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(demo_run.metrics)
        for s in family.samples
    }
    assert samples.get(("polarity_up", ())) == 1, demo_run.log
    assert samples.get(("polarity_exporter_build_info", (("version", PACKAGE_VERSION),))) == 1
    assert any(name == "polarity_integration_running" for name, _ in samples)


@image_timeout
def test_healthy_answers(demo_run: DemoRun) -> None:
    assert demo_run.healthy_status == 200


@image_timeout
def test_sigterm_ends_it_with_exit_0(demo_run: DemoRun) -> None:
    assert demo_run.exit_code == 0, tail(demo_run.log)


@image_timeout
def test_nothing_is_written_to_the_root_filesystem(demo_run: DemoRun) -> None:
    """What `docker run --read-only` needs: the whole life of the process left the root
    filesystem as the image made it."""
    assert demo_run.rootfs_changes == [], demo_run.rootfs_changes[:20]
