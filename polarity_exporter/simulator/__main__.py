"""`python -m polarity_exporter.simulator`: run the simulated Polarity server until SIGTERM/SIGINT.

The account comes from the environment (SIM_USERNAME, SIM_PASSWORD, SIM_API_KEY), never from
arguments, so no secret shows up in `ps`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from types import FrameType

from polarity_exporter.simulator.server import Simulator, SimulatorConfig

# Vendor pages say API keys live 30 days; the standalone key gets the same.
API_KEY_LIFETIME = 30 * 86400


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m polarity_exporter.simulator",
        description="Simulated Polarity v5 REST API (test-only). Account from env SIM_USERNAME, "
                    "SIM_PASSWORD (defaults demo / demo-password) and optional SIM_API_KEY.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_non_negative_int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--integrations", type=_non_negative_int, default=25)
    parser.add_argument("--errors", type=_non_negative_int, default=80)
    parser.add_argument("--latency", type=_non_negative_float, default=0.0,
                        help="seconds added to every request")
    parser.add_argument("--token-lifetime", type=_non_negative_float, default=3600.0)
    parser.add_argument("--meta-bytes", type=_non_negative_int, default=200,
                        help="size of each error's meta.stack")
    parser.add_argument("--errors-forbidden", action="store_true",
                        help="answer 403 on /api/integrations/errors")
    parser.add_argument("--errors-changing", action="store_true",
                        help="one more occurrence of one record on every errors request")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    api_key = os.environ.get("SIM_API_KEY")
    config = SimulatorConfig(
        seed=args.seed, integrations=args.integrations, errors=args.errors,
        users={os.environ.get("SIM_USERNAME", "demo"):
               os.environ.get("SIM_PASSWORD", "demo-password")},
        api_keys={api_key: time.time() + API_KEY_LIFETIME} if api_key else {},
        latency=args.latency, token_lifetime=args.token_lifetime,
        errors_forbidden=args.errors_forbidden,
        errors_changing=args.errors_changing, meta_bytes=args.meta_bytes,
        host=args.host, port=args.port)
    sim = Simulator(config)
    try:
        sim.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"simulator listening on {sim.url}", flush=True)
    while not stopping.wait(0.5):  # a timed wait so signals are handled promptly
        pass
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
