"""A stand-in Polarity server for tests, the demo and benchmarks. Not part of the exporter.

The exporter's normal path never imports this package (only `--demo` does), and this package
never imports the exporter: it models Polarity's documented REST API, not our client.
"""

from polarity_exporter.simulator.dataset import Dataset
from polarity_exporter.simulator.http import Request, Response
from polarity_exporter.simulator.server import FaultHook, Simulator, SimulatorConfig

__all__ = ["Dataset", "FaultHook", "Request", "Response", "Simulator", "SimulatorConfig"]
