"""The command line: invalid configuration exits at start with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env

from polarity_exporter import __version__
from polarity_exporter.config import SETTINGS, ConfigError, Setting
from polarity_exporter.targets import parse_targets


def run_cli(*args: str, env: dict[str, str] | None = None,
            python_flags: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *(python_flags or []), "-m", "polarity_exporter",
                           *args], text=True, capture_output=True, timeout=30,
                          env=clean_env(env))


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("polarity-exporter: error: ")
    for needle in needles:
        assert needle in lines[0]


def test_missing_url_is_rejected() -> None:
    assert_one_line_error(run_cli(env={"POLARITY_API_KEY": "k"}), "--polarity.url")


def test_url_with_credentials_is_rejected() -> None:
    result = run_cli("--polarity.url=https://bob:hunter2@polarity.example",
                     env={"POLARITY_API_KEY": "k"})
    assert_one_line_error(result, "must not contain credentials")
    assert "hunter2" not in result.stderr


def test_url_without_scheme_is_rejected() -> None:
    assert_one_line_error(run_cli("--polarity.url=polarity.example", env={"POLARITY_API_KEY": "k"}),
                          "not an http(s) URL")


def test_missing_credentials_are_rejected() -> None:
    assert_one_line_error(run_cli("--polarity.url=https://polarity.example"), "no credentials")


def test_unreadable_password_file_is_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = run_cli("--polarity.url=https://polarity.example", "--polarity.username=bob",
                     f"--polarity.password-file={missing}")
    assert_one_line_error(result, "cannot read --polarity.password-file", str(missing))


def test_both_kinds_of_credentials_are_rejected() -> None:
    result = run_cli("--polarity.url=https://polarity.example", "--polarity.username=bob",
                     env={"POLARITY_PASSWORD": "pw", "POLARITY_API_KEY": "k"})
    assert_one_line_error(result, "not both")


def test_username_without_password_is_rejected() -> None:
    assert_one_line_error(run_cli("--polarity.url=https://polarity.example",
                                  "--polarity.username=bob"), "no password for user 'bob'")


@pytest.mark.parametrize("address", ["10119", "localhost", "host:99999", "[::1:10119"])
def test_bad_listen_address_is_rejected(address: str) -> None:
    result = run_cli("--polarity.url=https://polarity.example", f"--web.listen-address={address}",
                     env={"POLARITY_API_KEY": "k"})
    assert_one_line_error(result, "--web.listen-address")


def test_bad_flag_value_is_one_line() -> None:
    result = run_cli("--polarity.page-size=0", env={"POLARITY_API_KEY": "k"})
    assert_one_line_error(result, "--polarity.page-size")


def test_unknown_flag_is_one_line() -> None:
    assert_one_line_error(run_cli("--polarity.pasword=x"), "No such option")


def test_flags_come_from_environment() -> None:
    result = run_cli(env={"POLARITY_URL": "ftp://polarity.example", "POLARITY_API_KEY": "k"})
    assert_one_line_error(result, "ftp://polarity.example")


def test_help_names_every_environment_variable() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for env in ["POLARITY_URL", "POLARITY_USERNAME", "POLARITY_PASSWORD_FILE",
                "POLARITY_API_KEY_FILE", "POLARITY_CA_FILE", "POLARITY_INSECURE_SKIP_VERIFY",
                "POLARITY_TIMEOUT", "POLARITY_PAGE_SIZE", "POLARITY_EXPORTER_WEB_LISTEN_ADDRESS",
                "POLARITY_EXPORTER_WEB_TELEMETRY_PATH", "POLARITY_EXPORTER_LOG_LEVEL",
                "POLARITY_EXPORTER_LOG_FORMAT"]:
        assert env in result.stdout, env


def test_no_flag_takes_a_secret_value() -> None:
    help_text = run_cli("--help").stdout
    assert "--polarity.password " not in help_text and "--polarity.password=" not in help_text
    assert "--polarity.api-key " not in help_text and "--polarity.api-key=" not in help_text


def test_version_flag_prints_the_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "polarity-exporter"
    result = subprocess.run([str(script), "--version"], text=True, capture_output=True,
                            timeout=30)
    assert result.returncode == 0 and __version__ in result.stdout


def test_demo_serves_metrics_at_the_printed_url(tmp_path: Path) -> None:
    import re

    import requests
    from conftest import free_port, stop_process, wait_until_ready

    port = free_port()
    out = tmp_path / "demo.out"
    with out.open("w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "polarity_exporter", "--demo",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=handle, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/-/ready", proc)
        match = re.search(r"metrics at (http://\S+)", out.read_text())
        assert match, out.read_text()
        body = requests.get(match.group(1), timeout=30).text
        assert "polarity_up 1.0" in body
        assert 'polarity_scrape_collector_success{collector="errors"} 1.0' in body
    finally:
        returncode = stop_process(proc)
    assert returncode == 0


def test_normal_path_never_imports_the_simulator() -> None:
    import socket

    # A port that is taken: the exporter builds everything it serves with, then stops at bind.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--polarity.url=http://127.0.0.1:9",
                         f"--web.listen-address=127.0.0.1:{port}",
                         env={"POLARITY_API_KEY": "k"}, python_flags=["-X", "importtime"])
    assert "cannot listen on" in result.stderr
    assert "polarity_exporter.client" in result.stderr  # importtime did report the imports
    assert "simulator" not in result.stderr


# One schema for the per-server numbers (issue 19): the flag and the targets file key read the
# same Setting, so they refuse the same values with the same rule.

def _out_of_range(setting: Setting) -> list[str]:
    step = 1 if setting.kind is int else 0.5
    return [f"{setting.high + step:g}", f"{setting.low - step:g}", "nan", "x"]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_a_flag_out_of_its_range_is_refused_with_its_settings_rule(setting: Setting) -> None:
    for value in _out_of_range(setting):
        result = run_cli("--polarity.url=https://polarity.example", f"{setting.flag}={value}",
                         env={"POLARITY_API_KEY": "k"})
        assert_one_line_error(result, setting.flag, setting.rule)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_the_targets_file_refuses_what_the_flag_refuses_with_the_same_rule(
        setting: Setting) -> None:
    for value in _out_of_range(setting):
        number = float(value) if value != "x" else value
        document = {"targets": {"lab": {"url": "https://polarity.example", "api_key": "k",
                                        setting.key: number}}}
        with pytest.raises(ConfigError) as caught:
            parse_targets(document, "t.yml")
        assert str(caught.value).endswith(f'key "{setting.key}": {setting.rule}')


def test_the_timeout_takes_minutes_up_to_its_bound() -> None:
    timeout = next(s for s in SETTINGS if s.key == "timeout")
    assert timeout.high >= 300  # Prometheus allows scrape timeouts of minutes
    assert timeout.parse("300") == 300.0
