#!/usr/bin/env python3
"""RSS of the exporter across reloads that replace targets (loopback only).

Starts simulators in this process (http, and https with a self-signed certificate when openssl
is available), the exporter as a child process with --config.file, then loops: rewrite the
targets file so that CHANGE targets get a new config (page_size toggled), POST /-/reload,
optionally probe each target once. Prints the exporter's VmRSS every --every reloads.

    python bench/reload_rss.py                       # 300 reloads, 5 targets all changed, probes
    python bench/reload_rss.py --reloads 1000 --https --ca-file
    python bench/reload_rss.py --no-probe

Exit status 1 when the RSS grew by more than --max-growth MiB (default 5) from reload --warmup
(default 10) to the end. Measured (5 small targets, 300 reloads, ~30 s): a retired Server kept
alive by the Server -> SharedScrape -> Server.late cycle grows ~+15 MiB; freed at close, +0-0.5.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

import polarity_exporter
from polarity_exporter.simulator import Simulator, SimulatorConfig

USER, PASSWORD = "exporter", "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def rss_mib(pid: int) -> float:
    return status(pid, "VmRSS") / 1024


def self_signed(directory: Path) -> tuple[str, str] | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "self.key", "-out",
                    "self.pem", "-days", "2", "-subj", "/CN=polarity.test", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, cwd=directory)
    return str(directory / "self.pem"), str(directory / "self.key")


def write_targets(path: Path, urls: list[str], n: int, change: int, generation: int,
                  ca_file: str | None, insecure: bool) -> None:
    lines = ["targets:"]
    for i in range(n):
        url = urls[i % len(urls)]
        # The first `change` targets get a new page_size on every generation.
        page = 100 + (generation % 2) if i < change else 100
        lines += [f"  t{i}:", f"    url: {url}", f"    username: {USER}",
                  f"    password: {PASSWORD}", f"    page_size: {page}", "    timeout: 5"]
        if url.startswith("https"):
            if ca_file:
                lines.append(f"    ca_file: {ca_file}")
            elif insecure:
                lines.append("    insecure_skip_verify: true")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reloads", type=int, default=300)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--targets", type=int, default=5)
    ap.add_argument("--change", type=int, default=5)
    ap.add_argument("--https", action="store_true", help="targets on an https simulator")
    ap.add_argument("--ca-file", action="store_true", help="https targets verify with ca_file")
    ap.add_argument("--no-probe", action="store_true", help="do not probe after each reload")
    ap.add_argument("--warmup", type=int, default=10,
                    help="reloads before the baseline RSS is taken (threads, caches warm)")
    ap.add_argument("--integrations", type=int, default=5, help="simulator integrations")
    ap.add_argument("--errors", type=int, default=10, help="simulator error records")
    ap.add_argument("--max-growth", type=float, default=5.0, help="MiB allowed after warm-up")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the exporter")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rss-repro-"))
    data = {"users": {USER: PASSWORD}, "integrations": args.integrations,
            "errors": args.errors}
    sims = [Simulator(SimulatorConfig(**data)).start()]
    ca_file = None
    if args.https:
        pair = self_signed(work)
        if pair is None:
            print("openssl not found: no https")
        else:
            sims[0].stop()
            sims = [Simulator(SimulatorConfig(**data, tls_cert_file=pair[0],
                                              tls_key_file=pair[1])).start()]
            ca_file = pair[0] if args.ca_file else None
    urls = [s.url for s in sims]
    config = work / "targets.yaml"
    write_targets(config, urls, args.targets, args.change, 0, ca_file, insecure=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLARITY_")}
    env.update(dict(item.split("=", 1) for item in args.env))
    # The exporter runs the same package this script imported.
    root = str(Path(polarity_exporter.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    log = open(work / "exporter.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "polarity_exporter", "--config.file",
                             str(config), "--web.listen-address", f"127.0.0.1:{port}",
                             "--log.level", "warn"], env=env, stdout=log, stderr=log)
    http = requests.Session()
    http.trust_env = False
    started = time.monotonic()
    try:
        for _ in range(200):
            try:
                if http.get(base + "/-/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        else:
            log.flush()
            raise SystemExit("exporter not ready:\n" + (work / "exporter.log").read_text()[-2000:])
        print(f"package={root}")
        print(f"targets={args.targets} change={args.change} https={bool(args.https)} "
              f"ca_file={bool(ca_file)} probe={not args.no_probe} env={args.env}")
        print(f"{'reloads':>7} {'rss_MiB':>8} {'threads':>7} {'secs':>6}", flush=True)
        print(f"{0:>7} {rss_mib(proc.pid):8.1f} {status(proc.pid, 'Threads'):>7} "
              f"{0:6.1f}", flush=True)
        baseline = None
        rss = 0.0
        probes = up = 0
        for n in range(1, args.reloads + 1):
            write_targets(config, urls, args.targets, args.change, n, ca_file, insecure=True)
            answer = http.post(base + "/-/reload", timeout=30)
            if answer.status_code != 200:
                raise SystemExit(f"reload {n}: HTTP {answer.status_code} {answer.text[:200]}")
            if not args.no_probe:
                for i in range(args.targets):
                    body = http.get(base + f"/probe?target=t{i}", timeout=30).text
                    probes += 1
                    up += "\npolarity_up 1" in body
            if n == args.warmup:
                baseline = rss_mib(proc.pid)
            if n % args.every == 0:
                rss = rss_mib(proc.pid)
                print(f"{n:>7} {rss:8.1f} {status(proc.pid, 'Threads'):>7} "
                      f"{time.monotonic() - started:6.1f}", flush=True)
        if probes:
            print(f"probes answered polarity_up 1: {up}/{probes}")
        rss = rss_mib(proc.pid)
        growth = rss - (baseline if baseline is not None else rss)
        verdict = "LEAK" if growth > args.max_growth else "ok"
        print(f"RSS {baseline or 0:.1f} MiB at reload {args.warmup}, {rss:.1f} MiB at reload "
              f"{args.reloads}: growth {growth:+.1f} MiB "
              f"(limit {args.max_growth}) -> {verdict}")
        return 1 if verdict == "LEAK" else 0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for sim in sims:
            sim.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
