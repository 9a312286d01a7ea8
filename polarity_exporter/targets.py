"""`--config.file`: the Polarity servers the exporter probes by name (`GET /probe?target=NAME`).

    targets:
      prod:
        url: https://polarity.example.com
        api_key_file: /etc/polarity-exporter/prod.key
      lab:
        url: https://polarity-lab.example.com
        username: prometheus
        password_file: /etc/polarity-exporter/lab.password

Each target takes the keys of the per-server flags (`--polarity.page-size` -> `page_size`), with
the same defaults and ranges. This module has one job: turn that file into validated
`PolarityConfig`s, or raise a `ConfigError` whose one-line message names the file, the target and
the key. Nothing here logs, and no message ever carries a credential: values are never echoed,
only the keys that hold them.

The file may come from anyone who can edit a ConfigMap, so it is read defensively: bounded in
size, depth and number of targets; no YAML aliases (the "billion laughs"), no merge keys, no
duplicate keys (PyYAML would silently keep the last one), and only the safe YAML types.
"""

from __future__ import annotations

import json
import math
import os
import re
import ssl
import stat
from collections.abc import Callable
from dataclasses import MISSING, fields
from difflib import get_close_matches
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from polarity_exporter.config import (
    ConfigError,
    Credentials,
    PolarityConfig,
    choose_credentials,
    normalize_url,
)

# A target name becomes the `instance` label value and the `target` query parameter of /probe.
# No ":" or "/", so a URL can never pass for a name (a probe names a target, never a server).
TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAX_FILE_BYTES = 1 << 20
# Secret and CA files are checked to be regular files of at most this size before they are read:
# `password_file: /dev/zero` must fail, not fill the memory.
MAX_SECRET_BYTES = 64 << 10
MAX_CA_BYTES = 16 << 20
MAX_TARGETS = 1000
# The file is three levels deep (targets, target, key); anything far deeper is hostile.
MAX_DEPTH = 32

# Reads a secret file: (path, a label for messages) -> the secret without its trailing newline.
ReadSecret = Callable[[str, str], str]

# The flags' defaults are PolarityConfig's: one place for both.
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(PolarityConfig)
                             if f.default is not MISSING}
_STRINGS = ("url", "username", "username_file", "password", "password_file", "api_key",
            "api_key_file", "ca_file")
_NUMBERS = ("timeout", "page_size", "max_concurrency")
KEYS = (*_STRINGS, "insecure_skip_verify", *_NUMBERS)
# Inclusive ranges of the integer keys, as the CLI's click.IntRange flags have them.
_INT_RANGES = {"page_size": (1, 10000), "max_concurrency": (1, 64)}
MIN_TIMEOUT = 0.1
# A secret is given inline or in a file, never both.
_SECRETS = (("api_key", "api_key_file"), ("username", "username_file"),
            ("password", "password_file"))
_MERGE_TAG = "tag:yaml.org,2002:merge"
_KEY_LIKE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Plain YAML only. Explicit tags are refused before construction; above all because an unquoted
# password that starts with "!" is read as a tag, and a message naming the tag would show it.
_TAGS = {f"tag:yaml.org,2002:{name}" for name in
         ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")}
# Quoted parts of PyYAML's messages: an alias, anchor, tag or character taken from the text.
_QUOTED = re.compile(r""" ?(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def read_secret(path: str, label: str) -> str:
    """A secret file's content (a regular file of at most MAX_SECRET_BYTES, UTF-8, its trailing
    newline dropped). Messages never repeat the path: a password pasted where the path of its
    file belongs would otherwise be logged and answered to /-/reload."""
    _check_regular_file(path, MAX_SECRET_BYTES, label, show_path=False)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
        value = data.decode("utf-8").rstrip("\r\n")
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"cannot read {label}: {reason}") from None
    if not value:
        raise ConfigError(f"{label} is empty")
    return value


def load_targets(path: str) -> dict[str, PolarityConfig]:
    """The targets of the config file at `path`, in the file's order.

    Relative paths in `*_file` keys are relative to the config file's directory.
    """
    source = _one_line(path)
    text = _read_config(path, source)
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


# --- reading and parsing the file ----------------------------------------------------------------


def _read_config(path: str, source: str) -> str:
    try:
        # Non-blocking, and only a regular file: a FIFO or a device put in its place must fail
        # the (re)load at once, not hang the thread that reloads.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(f"config file {source} is not a regular file")
            # One byte more than allowed tells "too large" apart from "exactly at the limit".
            data = handle.read(MAX_FILE_BYTES + 1)
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "invalid path"
        raise ConfigError(f"cannot read config file {source}: {reason}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"config file {source}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {source}: not UTF-8 text") from None


class _Values(SafeConstructor):
    """Safe construction whose errors never quote a value."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception:
            # e.g. `!!int abc`, an integer of 5000 digits or `!!timestamp x` (AttributeError).
            # The exception's text may quote the value, maybe a secret: only the line is kept.
            raise ConstructorError(None, None, f"a value cannot be read as {_tag(node)}",
                                   node.start_mark) from None


class _PyLoader(_Values, yaml.SafeLoader):
    pass


# Loader classes, the preferred first: libyaml's when PyYAML has it, as it parses a large file
# five times faster and stops at 1000 levels of nesting (the pure-Python composer recurses until
# RecursionError). Tests run hostile files through each.
LOADERS: list[Callable[[str], Any]] = [_PyLoader]
if getattr(yaml, "__with_libyaml__", False):
    class _CLoader(_Values, yaml.CSafeLoader):
        pass

    LOADERS.insert(0, _CLoader)


def parse_yaml(text: str, source: str, loader: Callable[[str], Any] | None = None) -> object:
    """The YAML document in `text`, read with `loader` (by default the preferred one)."""
    try:
        return _compose_and_construct(text, loader or LOADERS[0])
    except ConfigError as exc:
        raise ConfigError(f"config file {source}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"config file {source}: {_yaml_problem(exc)}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"config file {source}: not valid YAML at line {line}: a control "
                          "character YAML does not allow") from None
    except (yaml.YAMLError, RecursionError):
        raise ConfigError(f"config file {source}: not valid YAML") from None


def _compose_and_construct(text: str, loader_class: Callable[[str], Any]) -> object:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        # Checked on the composed nodes, before anything is constructed: an alias bomb is still
        # a handful of shared nodes here, and duplicate keys are still visible.
        _check_nodes(loader, node, (), set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    # PyYAML's texts describe the structure, but quote aliases, anchors and characters from the
    # text: `password: *secret` is an undefined alias. The quoted parts are dropped.
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}" if mark is not None else ""
    problem = "; ".join(_QUOTED.sub("", p) for p in (exc.context, exc.problem) if p)
    return f"not valid YAML{where}: {_one_line(problem)[:160]}"


def _tag(node: Node) -> str:
    return str(node.tag).rsplit(":", 1)[-1]


def _check_nodes(loader: SafeConstructor, node: Node, path: tuple[str, ...],
                 seen: set[int]) -> None:
    """Reject aliases, merge keys, deep nesting and keys given twice in one mapping.

    `path` holds the keys leading to `node`; `seen` the ids of the nodes already walked.
    """
    if id(node) in seen:
        # An alias is the anchored node itself once more. Aliases let a few bytes expand into
        # gigabytes, and a list of servers never needs them.
        raise ConfigError(f"{_where(path)}: aliases (*name) are not allowed (the anchor is at "
                          f"line {node.start_mark.line + 1})")
    seen.add(id(node))
    if node.tag not in _TAGS:
        raise _at(node, path, "explicit YAML tags (!tag, !!type) are not allowed; quote a "
                              "value that starts with \"!\"")
    if len(path) > MAX_DEPTH:
        raise _at(node, path, f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, ScalarNode):
        # Constructed now (PyYAML keeps the result for construct_document) so that a value
        # that cannot be read is reported with its target and key.
        try:
            loader.construct_object(node, deep=True)
        except ConstructorError as exc:
            raise _at(node, path, _QUOTED.sub("", str(exc.problem))) from None
    elif isinstance(node, SequenceNode):
        for item in node.value:
            _check_nodes(loader, item, (*path, "[]"), seen)
    elif isinstance(node, MappingNode):
        keys: dict[object, int] = {}
        for key_node, value_node in node.value:
            if id(key_node) in seen:  # an alias as a key
                raise ConfigError(f"{_where(path)}: aliases (*name) are not allowed")
            seen.add(id(key_node))
            key = _check_key(loader, key_node, path, keys)
            _check_nodes(loader, value_node, (*path, _text(key)), seen)


def _check_key(loader: SafeConstructor, key_node: Node, path: tuple[str, ...],
               keys: dict[object, int]) -> object:
    """The constructed key, after checking it is neither a merge key nor given twice."""
    if key_node.tag == _MERGE_TAG:
        raise _at(key_node, path, "merge keys (<<) are not allowed")
    if key_node.tag not in _TAGS:
        raise _at(key_node, path, "explicit YAML tags (!tag, !!type) are not allowed; quote "
                                  "a key that starts with \"!\"")
    if not isinstance(key_node, ScalarNode):
        return None  # a sequence or mapping as a key: construction rejects it (unhashable)
    # Compared as constructed, so `1` and `0x1` are the same key, as they would be in the dict.
    key = loader.construct_object(key_node, deep=True)
    line = key_node.start_mark.line
    if key in keys:
        raise ConfigError(f"{_where((*path, _text(key)))}: given twice (lines "
                          f"{keys[key] + 1} and {line + 1})")
    keys[key] = line
    return key


def _at(node: Node, path: tuple[str, ...], problem: str) -> ConfigError:
    """An error about `node`, reached through the keys in `path`, naming where and its line."""
    return ConfigError(f"{_where(path)}, line {node.start_mark.line + 1}: {problem}")


def _where(path: tuple[str, ...]) -> str:
    """`target "lab": key "timeout"` for a path of keys from the top of the file."""
    if "[]" in path:  # within a list: the keys before it say where
        path = path[:path.index("[]")]
    if len(path) >= 2 and path[0] == "targets":
        target = f"target {_shown(path[1])}"
        return f"{target}: key {_shown(path[2])}" if len(path) >= 3 else target
    return f"key {_shown(path[0])}" if path else "top level"


def _shown(text: str) -> str:
    """A key or target name for a message, quoted, when it looks like one; else "(not shown)":
    "password:s3cret:" (no space after the colon) is one YAML key that holds a password, and
    a mis-indented line can make it a target name or a top-level key."""
    return _quote(text) if _KEY_LIKE.fullmatch(text) else "(not shown)"


# --- validation ----------------------------------------------------------------------------------


def _targets(document: object, read_secret: ReadSecret,
             base_dir: str | None) -> dict[str, PolarityConfig]:
    if document is None:
        raise ConfigError("empty; it needs a mapping `targets:` of target names to servers")
    if not isinstance(document, dict):
        raise ConfigError("must be a mapping with the key \"targets\"")
    for key in document:
        if key != "targets":
            raise ConfigError(f"key {_shown(_text(key))}: unknown key; the file has only "
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
            raise ConfigError(f"target {_quote(checked)}: {exc}") from None
    return result


def _target_name(name: object) -> str:
    if not isinstance(name, str):
        # YAML reads `no:`, `1:` or `1.5:` as a boolean or a number.
        raise ConfigError(f"target name {_shown(_text(name))} must be a string: quote it")
    if not TARGET_NAME.fullmatch(name):
        raise ConfigError(f"target name {_shown(name)} is invalid: use 1 to 63 letters, digits, "
                          "\"_\", \".\" or \"-\", starting with a letter or digit")
    return name


def _target(body: object, read_secret: ReadSecret, base_dir: str | None) -> PolarityConfig:
    if not isinstance(body, dict):
        raise ConfigError("must be a mapping with at least \"url\" and credentials")
    for key in body:
        if key not in KEYS:
            # Echoed only when it looks like a key: "password:s3cret:" (no space after the
            # colon) is one YAML key that holds a password.
            raise ConfigError(f"key {_shown(_text(key))}: unknown key{_suggest(key)}")
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
        timeout=_timeout(values),
        page_size=_integer(values, "page_size"),
        max_concurrency=_integer(values, "max_concurrency"),
    )


def _credentials(values: dict[Any, Any], files: dict[str, str],
                 read_secret: ReadSecret) -> Credentials:
    for inline, file_key in _SECRETS:
        if inline in values and file_key in values:
            raise _key_error(file_key, f"give {_quote(inline)} or {_quote(file_key)}, not both")
    given = {inline: _secret(values, files, inline, file_key, read_secret)
             for inline, file_key in _SECRETS}
    api_key, username, password = given["api_key"], given["username"], given["password"]
    key_name = _given_key(values, "api_key")
    if api_key is not None and (username is not None or password is not None):
        other = _given_key(values, "password" if password is not None else "username")
        raise _key_error(key_name, f"give either an API key or a username and password, not "
                                   f"both (remove {_quote(key_name)} or {_quote(other)})")
    if api_key is None and username is None and password is None:
        raise ConfigError("no credentials: set \"api_key_file\" (or \"api_key\"), or "
                          "\"username\" with \"password_file\" (or \"password\")")
    if api_key is None and username is None:
        raise _key_error("username", f"required with {_quote(_given_key(values, 'password'))}")
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


def _check_regular_file(path: str, limit: int, label: str, show_path: bool = True) -> None:
    """Raise unless `path` is a regular file (a symlink to one, as in a Kubernetes Secret volume,
    is fine) of at most `limit` bytes. `show_path`: name the path in the message (never for a
    secret's file)."""
    named = f"{label} {_one_line(path)}" if show_path else label
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "invalid path"
        raise ConfigError(f"cannot read {named}: {reason}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{named} is not a regular file")
    if info.st_size > limit:
        raise ConfigError(f"{named} is larger than {limit} bytes")


def _check_ca(path: str) -> None:
    # Loaded once here so that a wrong path or a file that is not PEM fails the (re)load, not
    # every scrape of that target.
    try:
        _check_regular_file(path, MAX_CA_BYTES, "the file")
    except ConfigError as exc:
        raise _key_error("ca_file", str(exc)) from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise _key_error("ca_file", f"{_one_line(path)} is not a PEM CA bundle "
                                    f"({exc.reason or 'no certificate found'})") from None
    except OSError as exc:
        raise _key_error("ca_file", f"cannot read {_one_line(path)}: "
                                    f"{exc.strerror or type(exc).__name__}") from None


def _boolean(values: dict[Any, Any], key: str) -> bool:
    value = values.get(key, _DEFAULTS[key])
    if not isinstance(value, bool):
        raise _key_error(key, "must be true or false")
    return value


def _timeout(values: dict[Any, Any]) -> float:
    value = values.get("timeout", _DEFAULTS["timeout"])
    rule = f"must be a number >= {MIN_TIMEOUT}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _key_error("timeout", rule)
    try:
        seconds = float(value)
    except OverflowError:  # an integer beyond float's range
        raise _key_error("timeout", f"{rule}, and finite") from None
    if math.isnan(seconds) or math.isinf(seconds):
        raise _key_error("timeout", f"{rule}, and finite (not .nan or .inf)")
    if seconds < MIN_TIMEOUT:
        raise _key_error("timeout", rule)
    return seconds


def _integer(values: dict[Any, Any], key: str) -> int:
    value = values.get(key, _DEFAULTS[key])
    low, high = _INT_RANGES[key]
    # bool is an int in Python, and 200.0 is a float: neither is an integer here.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _key_error(key, f"must be an integer from {low} to {high}")
    return value


# --- messages ------------------------------------------------------------------------------------


def _key_error(key: str, problem: str) -> ConfigError:
    return ConfigError(f"key {_quote(key)}: {problem}")


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
    return f" (did you mean {_quote(close[0])}?)" if close else ""


def _text(value: object) -> str:
    """A key as text for a message: YAML keys need not be strings."""
    if isinstance(value, str):
        return value
    try:
        return str(value)[:100]
    except ValueError:  # an int too long for str(); construction normally stops it first
        return f"<{type(value).__name__}>"


def _quote(text: str) -> str:
    """Double-quoted and escaped: a name with a newline or odd characters stays on one line."""
    return json.dumps(text[:100])


def _one_line(text: str) -> str:
    return text if text.isprintable() else json.dumps(text)[1:-1]
