"""The targets file's YAML, read defensively: it may come from anyone who can edit a ConfigMap.

Bounded in size and depth; no YAML aliases (the "billion laughs"), no merge keys, no explicit
tags, no duplicate keys (PyYAML would silently keep the last one), and only the safe YAML types.
Every problem is a one-line `ConfigError` naming where it is (`target "lab": key "timeout"`,
and the line), and never quoting a value: values may be secrets.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from difflib import get_close_matches
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from polarity_exporter.config import SETTINGS, TARGET_KEYS, ConfigError

MAX_FILE_BYTES = 1 << 20
# The file is three levels deep (targets, target, key); anything far deeper is hostile.
MAX_DEPTH = 32
_MERGE_TAG = "tag:yaml.org,2002:merge"
_KEY_LIKE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Plain YAML only. Explicit tags are refused before construction; above all because an unquoted
# password that starts with "!" is read as a tag, and a message naming the tag would show it.
_TAGS = {f"tag:yaml.org,2002:{name}" for name in
         ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")}
_NUMBER_TAGS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_STR_TAG = "tag:yaml.org,2002:str"
NUMBER_KEYS = frozenset(setting.key for setting in SETTINGS)
# Quoted parts of PyYAML's messages: an alias, anchor, tag or character taken from the text.
_QUOTED = re.compile(r""" ?(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def read_config(path: str, source: str) -> str:
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
    return f"not valid YAML{where}: {one_line(problem)[:160]}"


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
        if node.tag in _NUMBER_TAGS and len(path) == 3 and path[0] == "targets" \
                and path[2] in NUMBER_KEYS:
            # A per-server number is read from its text by the flags' schema (config.SETTINGS),
            # not by YAML 1.1, which reads 020 as 16 and 1:30 as 90.
            node.tag = _STR_TAG
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
            _check_nodes(loader, value_node, (*path, as_text(key)), seen)


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
        raise ConfigError(f"{_where((*path, as_text(key)))}: given twice (lines "
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
        target = f"target {shown(path[1])}"
        return f"{target}: key {shown_key(path[2], TARGET_KEYS)}" if len(path) >= 3 else target
    return f"key {shown_key(path[0], ('targets',))}" if path else "top level"


def shown(text: str) -> str:
    """A target name for a message, quoted, when it looks like one; else "(not shown)":
    "password:s3cret:" (no space after the colon) is one YAML key that holds a password, and
    a mis-indented line can make it a target name."""
    return quote(text) if _KEY_LIKE.fullmatch(text) else "(not shown)"


def shown_key(text: str, known: tuple[str, ...]) -> str:
    """A key for a message: shown only when it is one of `known` or close to one (a typo);
    anything else may be a secret that a misplaced line made a key (`4f8b2c1d9e7a:`)."""
    if get_close_matches(text[:100].lower(), known, n=1):
        return shown(text)
    return "(not shown)"


def as_text(value: object) -> str:
    """A key as text for a message: YAML keys need not be strings."""
    if isinstance(value, str):
        return value
    try:
        return str(value)[:100]
    except ValueError:  # an int too long for str(); construction normally stops it first
        return f"<{type(value).__name__}>"


def quote(text: str) -> str:
    """Double-quoted and escaped: a name with a newline or odd characters stays on one line."""
    return json.dumps(text[:100])


def one_line(text: str) -> str:
    return text if text.isprintable() else json.dumps(text)[1:-1]
