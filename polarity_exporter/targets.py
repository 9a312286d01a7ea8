"""`--config.file`: the Polarity servers the exporter probes by name (`GET /probe?target=NAME`).

    targets:
      prod:
        url: https://polarity.example.com
        api_key_file: /etc/polarity-exporter/prod.key
      lab:
        url: https://polarity-lab.example.com
        username: prometheus
        password_file: /etc/polarity-exporter/lab.password

Each target takes the keys of the per-server flags (`--polarity.page-size` -> `page_size`), read
by the same schema (config.SETTINGS: types, ranges, defaults and messages). This module has one
job: turn that file into validated `PolarityConfig`s, or raise a `ConfigError` whose one-line
message names the file, the target and the key. Nothing here logs, and no message ever carries a
credential: values are never echoed, only the keys that hold them. The YAML itself is read
defensively by safeyaml.py.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable
from difflib import get_close_matches
from typing import Any

from polarity_exporter.config import (
    COLLECTORS,
    SETTINGS,
    TARGET_KEYS,
    TARGET_STRINGS,
    ConfigError,
    Credentials,
    PolarityConfig,
    check_proxy_url,
    check_regular_file,
    choose_credentials,
    normalize_url,
    read_secret_file,
)
from polarity_exporter.safeyaml import (
    LOADERS,
    MAX_FILE_BYTES,
    as_text,
    one_line,
    parse_yaml,
    quote,
    read_config,
    shown,
    shown_key,
)

__all__ = ["KEYS", "LOADERS", "MAX_FILE_BYTES", "MAX_TARGETS", "load_targets", "parse_targets",
           "parse_yaml", "read_secret"]

# A target name becomes the `instance` label value and the `target` query parameter of /probe.
# No ":" or "/", so a URL can never pass for a name (a probe names a target, never a server).
TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAX_CA_BYTES = 16 << 20
MAX_TARGETS = 1000

# Reads a secret file: (path, a label for messages) -> the secret without its trailing newline.
ReadSecret = Callable[[str, str], str]

_STRINGS = TARGET_STRINGS
_NUMBERS = {setting.key: setting for setting in SETTINGS}  # config.py: the flags' schema too
KEYS = TARGET_KEYS
# A secret is given inline or in a file, never both.
_SECRETS = (("api_key", "api_key_file"), ("username", "username_file"),
            ("password", "password_file"))


def read_secret(path: str, label: str) -> str:
    """A secret file's content. Messages never repeat the path: a password pasted where the
    path of its file belongs would otherwise be logged and answered to /-/reload."""
    return read_secret_file(path, label)


def load_targets(path: str) -> dict[str, PolarityConfig]:
    """The targets of the config file at `path`, in the file's order.

    Relative paths in `*_file` keys are relative to the config file's directory.
    """
    source = one_line(path)
    text = read_config(path, source)
    document = parse_yaml(text, source)
    return parse_targets(document, source, base_dir=os.path.dirname(os.path.abspath(path)))


def parse_targets(
    document: object,
    source: str,
    read_secret: ReadSecret = read_secret,
    base_dir: str | None = None,
) -> dict[str, PolarityConfig]:
    """Validate a parsed config document; `source` names it in messages (`config file SOURCE:`).

    `read_secret` reads the `*_file` keys; relative paths are joined to `base_dir` when given.
    """
    try:
        return _targets(document, read_secret, base_dir)
    except ConfigError as exc:
        raise ConfigError(f"config file {source}: {exc}") from None


# --- validation ----------------------------------------------------------------------------------


def _targets(document: object, read_secret: ReadSecret,
             base_dir: str | None) -> dict[str, PolarityConfig]:
    if document is None:
        raise ConfigError("empty; it needs a mapping `targets:` of target names to servers")
    if not isinstance(document, dict):
        raise ConfigError("must be a mapping with the key \"targets\"")
    for key in document:
        if key != "targets":
            raise ConfigError(f"key {shown_key(as_text(key), ('targets',))}: unknown key; the "
                              "file has only "
                              "\"targets\"")
    targets = document.get("targets")
    if not isinstance(targets, dict) or not targets:
        raise ConfigError("key \"targets\": must be a non-empty mapping of target names to "
                          "servers")
    if len(targets) > MAX_TARGETS:
        raise ConfigError(f"key \"targets\": {len(targets)} targets; at most {MAX_TARGETS} are "
                          "allowed")
    result: dict[str, PolarityConfig] = {}
    for name, body in targets.items():
        checked = _target_name(name)
        try:
            result[checked] = _target(body, read_secret, base_dir)
        except ConfigError as exc:
            raise ConfigError(f"target {quote(checked)}: {exc}") from None
    return result


def _target_name(name: object) -> str:
    if not isinstance(name, str):
        # YAML reads `no:`, `1:` or `1.5:` as a boolean or a number.
        raise ConfigError(f"target name {shown(as_text(name))} must be a string: quote it")
    if not TARGET_NAME.fullmatch(name):
        raise ConfigError(f"target name {shown(name)} is invalid: use 1 to 63 letters, digits, "
                          "\"_\", \".\" or \"-\", starting with a letter or digit")
    return name


def _target(body: object, read_secret: ReadSecret, base_dir: str | None) -> PolarityConfig:
    if not isinstance(body, dict):
        raise ConfigError("must be a mapping with at least \"url\" and credentials")
    for key in body:
        if key not in KEYS:
            # Echoed only when it looks like a key: "password:s3cret:" (no space after the
            # colon) is one YAML key that holds a password.
            raise ConfigError(f"key {shown_key(as_text(key), KEYS)}: unknown key{_suggest(key)}")
    # A key set to null counts as not given, as YAML writes a blank value.
    values = {key: value for key, value in body.items() if value is not None}
    for key in _STRINGS:
        if key in values and (not isinstance(values[key], str) or not values[key]):
            raise _key_error(key, "must be a non-empty string (quote it if YAML reads it as "
                                  "another type)")
    if "url" not in values:
        raise _key_error("url", "required")
    raw_url: str = values["url"]
    # urlsplit silently drops tabs and newlines inside a URL (and normalize_url keeps them):
    # reject any whitespace or control character rather than send it to Polarity.
    if any(ch.isspace() or not ch.isprintable() for ch in raw_url.strip()):
        raise _key_error("url", "must not contain spaces or control characters")
    try:
        url = normalize_url(raw_url)
    except ConfigError as exc:
        raise _key_error("url", _url_problem(str(exc))) from None
    proxy_url = values.get("proxy_url")
    if proxy_url is not None:
        proxy_url = check_proxy_url(proxy_url, "key \"proxy_url\"")
    files = {key: _resolve(values[key], base_dir) for key in KEYS
             if key.endswith("_file") and key in values}
    ca_file = files.get("ca_file")
    if ca_file is not None:
        _check_ca(ca_file)
    return PolarityConfig(
        url=url,
        credentials=_credentials(values, files, read_secret),
        ca_file=ca_file,
        insecure_skip_verify=_boolean(values, "insecure_skip_verify"),
        proxy_url=proxy_url,
        errors=_collectors(values),
        error_events=_boolean(values, "error_events") if "error_events" in values else None,
        **{key: _number(values, key) for key in _NUMBERS},
    )


def _collectors(values: dict[Any, Any]) -> bool | None:
    """`collectors: [integrations, errors]`: whether the errors part runs (None: as the flags
    say). The integrations part is what polarity_up stands on: it cannot be left out."""
    if "collectors" not in values:
        return None
    given = values["collectors"]
    if not isinstance(given, list) or not all(isinstance(item, str) for item in given):
        raise _key_error("collectors", "must be a list of collector names: "
                                       f"{', '.join(COLLECTORS)}")
    for item in given:
        if item not in COLLECTORS:
            raise _key_error("collectors", f"unknown collector {shown(item)}: known are "
                                           f"{', '.join(COLLECTORS)}")
    if "integrations" not in given:
        raise _key_error("collectors", "must include \"integrations\": polarity_up depends "
                                       "on it")
    return "errors" in given


def _credentials(values: dict[Any, Any], files: dict[str, str],
                 read_secret: ReadSecret) -> Credentials:
    for inline, file_key in _SECRETS:
        if inline in values and file_key in values:
            raise _key_error(file_key, f"give {quote(inline)} or {quote(file_key)}, not both")
    given = {inline: _secret(values, files, inline, file_key, read_secret)
             for inline, file_key in _SECRETS}
    api_key, username, password = given["api_key"], given["username"], given["password"]
    key_name = _given_key(values, "api_key")
    if api_key is not None and (username is not None or password is not None):
        other = _given_key(values, "password" if password is not None else "username")
        raise _key_error(key_name, f"give either an API key or a username and password, not "
                                   f"both (remove {quote(key_name)} or {quote(other)})")
    if api_key is None and username is None and password is None:
        raise ConfigError("no credentials: set \"api_key_file\" (or \"api_key\"), or "
                          "\"username\" with \"password_file\" (or \"password\")")
    if api_key is None and username is None:
        raise _key_error("username", f"required with {quote(_given_key(values, 'password'))}")
    if api_key is None and password is None:
        raise _key_error("password_file", "required with a username (or set \"password\")")
    # Every check that names a key has run; what choose_credentials can still reject (an API
    # key with characters a header cannot carry) is reported against the key that held it.
    try:
        return choose_credentials(api_key=api_key, api_key_file=None, username=username,
                                  password=password, password_file=None)
    except ConfigError as exc:
        raise _key_error(key_name, str(exc)) from None


def _secret(values: dict[Any, Any], files: dict[str, str], inline: str, file_key: str,
            read_secret: ReadSecret) -> str | None:
    """The secret given inline or in a file; None when neither is given."""
    if file_key in files:
        try:
            value = read_secret(files[file_key], "the file")
        except ConfigError as exc:
            raise _key_error(file_key, str(exc)) from None
    elif inline in values:
        value = values[inline]
    else:
        return None
    # The same trimming choose_credentials applies, checked here so that a blank secret is an
    # error naming its key rather than "no credentials".
    blank = not value.strip() if inline == "api_key" else not value.rstrip("\r\n")
    if blank:
        raise _key_error(_given_key(values, inline), "is blank")
    return str(value)


def _given_key(values: dict[Any, Any], inline: str) -> str:
    """`password` or `password_file`: whichever the target sets."""
    file_key = f"{inline}_file"
    return file_key if file_key in values else inline


def _resolve(path: str, base_dir: str | None) -> str:
    return os.path.join(base_dir, path) if base_dir is not None else path


def _check_ca(path: str) -> None:
    # Loaded once here so that a wrong path or a file that is not PEM fails the (re)load, not
    # every scrape of that target.
    try:
        check_regular_file(path, MAX_CA_BYTES, f"the file {one_line(path)}")
    except ConfigError as exc:
        raise _key_error("ca_file", str(exc)) from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise _key_error("ca_file", f"{one_line(path)} is not a PEM CA bundle "
                                    f"({exc.reason or 'no certificate found'})") from None
    except OSError as exc:
        raise _key_error("ca_file", f"cannot read {one_line(path)}: "
                                    f"{exc.strerror or type(exc).__name__}") from None


def _boolean(values: dict[Any, Any], key: str) -> bool:
    value = values.get(key, False)
    if not isinstance(value, bool):
        raise _key_error(key, "must be true or false")
    return value


def _number(values: dict[Any, Any], key: str) -> Any:
    """A per-server number: from its text as the flag reads it (a YAML number arrives as its
    text, safeyaml.py), or as given by a document built in code."""
    setting = _NUMBERS[key]
    value = values.get(key, setting.default)
    try:
        return setting.parse(value) if isinstance(value, str) else setting.check(value)
    except ConfigError as exc:
        raise _key_error(key, str(exc)) from None


# --- messages ------------------------------------------------------------------------------------


def _key_error(key: str, problem: str) -> ConfigError:
    return ConfigError(f"key {quote(key)}: {problem}")


def _url_problem(message: str) -> str:
    """normalize_url's reason, without the URL it quotes: a URL may carry a key in its query
    or a password as its port, and this message is logged and answered to /-/reload."""
    for needle, problem in (
            ("credentials", "must not contain credentials; use the credential keys"),
            ("query or fragment", "must not have a query or fragment"),
            ("http(s) URL with a host", "is not an http(s) URL with a host"),
    ):
        if needle in message:
            return problem
    return "is not a valid URL"


def _suggest(key: object) -> str:
    close = get_close_matches(str(key)[:100], KEYS, n=1) if isinstance(key, str) else []
    return f" (did you mean {quote(close[0])}?)" if close else ""

