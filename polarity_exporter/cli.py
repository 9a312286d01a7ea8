"""Command line: flags and environment -> Config, then run the exporter until a signal.

Flags follow the Go exporters' dotted naming. No flag takes a secret's value: secrets come from
files or environment variables, so they never show in `ps`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
import urllib3

from polarity_exporter import __version__
from polarity_exporter.config import (
    DEFAULT_PORT,
    SETTINGS,
    CollectorConfig,
    Config,
    ConfigError,
    Password,
    PolarityConfig,
    ServerConfig,
    Setting,
    check_proxy_url,
    choose_credentials,
    has_credentials,
    normalize_url,
    parse_listen_address,
)
from polarity_exporter.exporter import block_signals, run
from polarity_exporter.logs import LEVELS, setup_logging
from polarity_exporter.memory import tune_process

if TYPE_CHECKING:
    from polarity_exporter.webconfig import WebSecurity

log = logging.getLogger("polarity_exporter")
ENV = "POLARITY_EXPORTER_"


def _option(flag: str, envvar: str, **kwargs: Any) -> Callable[[Any], Any]:
    # --polarity.url -> "url", --web.listen-address -> "web_listen_address".
    name = flag.split("/")[0].lstrip("-").removeprefix("polarity.").replace(".", "_") \
        .replace("-", "_")
    return click.option(flag, name, envvar=envvar, show_envvar=True, show_default=True, **kwargs)


class _Number(click.ParamType):  # type: ignore[type-arg]
    """A per-server number, read and checked by its Setting: the targets file's rule and
    message, not click's."""

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self.name = f"{setting.kind.__name__} {setting.low:g}-{setting.high:g}"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | float:
        try:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return self.setting.check(value)  # the default
            return self.setting.parse(str(value))
        except ConfigError as exc:
            self.fail(f"{value!r} {exc}", param, ctx)


def _settings(command: Callable[..., Any]) -> Callable[..., Any]:
    """The --polarity.<key> flags of config.SETTINGS, in their order."""
    for setting in reversed(SETTINGS):
        command = _option(setting.flag, f"POLARITY_{setting.key.upper()}", type=_Number(setting),
                          default=setting.default, help=setting.help)(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "terminal_width": 100,
                                 "max_content_width": 100})
@_option("--polarity.url", "POLARITY_URL",
         help="Base URL of the Polarity server that /metrics serves.")
@_option("--polarity.username", "POLARITY_USERNAME", help="Account for password login.")
@_option("--polarity.password-file", "POLARITY_PASSWORD_FILE",
         help="File holding the password (or set POLARITY_PASSWORD).")
@_option("--polarity.api-key-file", "POLARITY_API_KEY_FILE",
         help="File holding an API key, preferred over a password (or set POLARITY_API_KEY).")
@_option("--polarity.ca-file", "POLARITY_CA_FILE",
         type=click.Path(exists=True, dir_okay=False),
         help="CA bundle to verify Polarity's TLS certificate.")
@_option("--polarity.insecure-skip-verify", "POLARITY_INSECURE_SKIP_VERIFY", is_flag=True,
         help="Do not verify Polarity's TLS certificate (logs a warning).")
@_option("--polarity.proxy-url", "POLARITY_PROXY_URL",
         help="Upstream proxy (http:// or https://; CONNECT for https servers) instead of "
              "HTTPS_PROXY/NO_PROXY. Give credentials only in the environment variable.")
@_settings
@_option("--collector.errors/--no-collector.errors", ENV + "COLLECTOR_ERRORS", default=True,
         help="Read /api/integrations/errors; off: no errors request, and the metrics that "
              "need it are absent.")
@_option("--collector.max-codes", ENV + "COLLECTOR_MAX_CODES", type=click.IntRange(2, 1000),
         default=20, help="Most error-code series per integration; the rest fold into "
                          "code=\"other\".")
@_option("--collector.max-label-length", ENV + "COLLECTOR_MAX_LABEL_LENGTH",
         type=click.IntRange(8, 4096), default=128,
         help="Longest label value; longer names and codes are cut.")
@_option("--collector.max-orphan-ids", ENV + "COLLECTOR_MAX_ORPHAN_IDS",
         type=click.IntRange(2, 100000), default=100,
         help="Most integration ids named only by error records (not in the listing); the "
              "rest fold into integration_id=\"other\".")
@_option("--config.file", ENV + "CONFIG_FILE",
         help="YAML file of named Polarity servers, each served at /probe?target=NAME; "
              "reloaded on SIGHUP and POST /-/reload.")
@_option("--web.listen-address", ENV + "WEB_LISTEN_ADDRESS", default=f":{DEFAULT_PORT}",
         help="host:port to listen on.")
@_option("--web.telemetry-path", ENV + "WEB_TELEMETRY_PATH", default="/metrics",
         help="Path of the metrics endpoint.")
@_option("--web.timeout-offset", ENV + "WEB_TIMEOUT_OFFSET", type=click.FloatRange(min=0),
         default=0.5, help="Seconds subtracted from Prometheus' scrape timeout.")
@_option("--web.shutdown-timeout", ENV + "WEB_SHUTDOWN_TIMEOUT",
         type=click.FloatRange(min=0, max=3600), default=10.0,
         help="Seconds scrapes in flight may take to finish after SIGTERM.")
@_option("--web.config.file", ENV + "WEB_CONFIG_FILE",
         help="Prometheus exporter-toolkit web config (YAML): TLS, basic auth, headers.")
@_option("--cache.ttl", ENV + "CACHE_TTL", type=click.FloatRange(min=0), default=0.0,
         help="Seconds to reuse a scrape result (0: off). Concurrent scrapes always share one "
              "fetch.")
@_option("--log.level", ENV + "LOG_LEVEL", type=click.Choice(list(LEVELS)), default="info",
         help="Log level.")
@_option("--log.format", ENV + "LOG_FORMAT", type=click.Choice(["logfmt", "json"]),
         default="logfmt", help="Log format.")
@_option("--log.error-events", ENV + "LOG_ERROR_EVENTS", is_flag=True,
         help="Log each new or changed Polarity error record as one event line.")
@_option("--history.limit", ENV + "HISTORY_LIMIT", type=click.IntRange(0, 1000), default=100,
         help="Recent scrapes and probes kept, with their logs, for the landing page.")
@_option("--demo", ENV + "DEMO", is_flag=True,
         help="Start the built-in Polarity simulator and export its metrics.")
@click.version_option(__version__, "--version", prog_name="polarity-exporter")
def command(**flags: Any) -> None:
    """Prometheus exporter for Polarity integrations: status, errors, affected users."""
    # Before any thread starts (the demo's simulator is the first): every thread inherits the
    # mask, and only the main thread takes these signals (exporter.run).
    block_signals()
    source = click.get_current_context().get_parameter_source("proxy_url")
    flags["proxy_url_from_command_line"] = source is click.core.ParameterSource.COMMANDLINE
    setup_logging(flags["log_level"], flags["log_format"])
    # Process-wide settings belong to the process, so they are made here, at its entry point,
    # not by the modules a library user might import.
    tune_process()
    # With --polarity.insecure-skip-verify, urllib3 would warn on every request; the exporter
    # warns once at start-up instead (exporter.py).
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    simulator = None
    if flags["demo"]:
        simulator, flags = _start_demo(flags)
    try:
        config = build_config(flags)
        run(config)
    finally:
        if simulator is not None:
            simulator.stop()


def build_config(flags: dict[str, Any]) -> Config:
    if not flags["url"] and not flags.get("config_file"):
        raise ConfigError("--polarity.url (or POLARITY_URL) or --config.file is required")
    if not flags["web_telemetry_path"].startswith("/") or flags["web_telemetry_path"] in (
            "/", "/-/healthy", "/-/ready", "/-/reload", "/probe", "/logs"):
        raise ConfigError(f"--web.telemetry-path {flags['web_telemetry_path']!r} must start "
                          "with / and not be /, /-/healthy, /-/ready, /-/reload, /probe or "
                          "/logs")
    host, port = parse_listen_address(flags["web_listen_address"])
    config = Config(
        polarity=polarity_config(flags) if flags["url"] else None,
        collector=CollectorConfig(max_codes=flags["collector_max_codes"],
                                  max_label_length=flags["collector_max_label_length"],
                                  max_orphan_ids=flags["collector_max_orphan_ids"],
                                  errors=flags["collector_errors"],
                                  error_events=flags["log_error_events"]),
        web=ServerConfig(host=host, port=port, telemetry_path=flags["web_telemetry_path"],
                      timeout_offset=flags["web_timeout_offset"],
                      shutdown_timeout=flags["web_shutdown_timeout"],
                      security=load_security(flags["web_config_file"]),
                      security_file=flags["web_config_file"] or None),
        cache_ttl=flags["cache_ttl"],
        targets_file=flags.get("config_file") or None,
        history_limit=flags["history_limit"],
    )
    if config.polarity is not None:
        warn_about_readable_secrets({"--polarity.api-key-file": flags["api_key_file"],
                                     "--polarity.password-file": flags["password_file"]})
    return config


def polarity_config(flags: dict[str, Any]) -> PolarityConfig:
    """The --polarity.* flags' server."""
    # Secrets are read from the environment here, never declared as click parameters, so that
    # no flag can take them and --help never echoes them.
    credentials = flags.get("credentials") or choose_credentials(
        api_key=os.environ.get("POLARITY_API_KEY"),
        api_key_file=flags["api_key_file"],
        username=flags["username"],
        password=os.environ.get("POLARITY_PASSWORD"),
        password_file=flags["password_file"],
    )
    proxy_url = flags.get("proxy_url") or None
    if proxy_url is not None:
        proxy_url = check_proxy_url(proxy_url, "--polarity.proxy-url")
        if has_credentials(proxy_url) and flags.get("proxy_url_from_command_line"):
            raise ConfigError("--polarity.proxy-url holds credentials: set it in "
                              "POLARITY_PROXY_URL instead, the command line shows in ps")
    return PolarityConfig(
        url=normalize_url(flags["url"]),
        proxy_url=proxy_url,
        credentials=credentials,
        ca_file=flags["ca_file"],
        insecure_skip_verify=flags["insecure_skip_verify"],
        **{setting.key: flags[setting.key] for setting in SETTINGS},
    )


def warn_about_readable_secrets(files: dict[str, str | None]) -> None:
    """A start-up warning, not an error: a secret file others can read. (Credentials sent in
    clear text are warned about per server: servers.Server.)"""
    for flag, path in files.items():
        if not path:
            continue
        with contextlib.suppress(OSError):  # unreadable files were reported already
            mode = os.stat(path).st_mode & 0o777
            if mode & 0o077:
                log.warning("secret file is readable by group or others; chmod 600 it",
                            extra={"flag": flag, "file": path, "mode": f"{mode:04o}"})


def load_security(path: str | None) -> WebSecurity | None:
    if not path:
        return None
    # Imported only when asked for: it needs bcrypt and PyYAML.
    from polarity_exporter.webconfig import load_web_config

    return load_web_config(path)


def _start_demo(flags: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    # Imported here only: the simulator is never part of the exporter's normal path.
    from polarity_exporter.simulator import Simulator, SimulatorConfig

    username, password = "demo", secrets.token_urlsafe(16)
    # base_time=now: the demo's errors look recent, so dashboards show them in their default range.
    simulator = Simulator(SimulatorConfig(seed=1, integrations=40, errors=150,
                                          users={username: password}, base_time=time.time()))
    simulator.start()
    log.info("demo: started the Polarity simulator", extra={"url": simulator.url})
    return simulator, {**flags, "url": simulator.url,
                       "credentials": Password(username, password)}


def main() -> None:
    try:
        command.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"polarity-exporter: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        click.echo(f"polarity-exporter: error: {exc}", err=True)
        sys.exit(2)
