"""--config.file: polarity_exporter.targets turns a YAML file of named Polarity servers into
validated PolarityConfigs, or into one ConfigError line naming the file, the target and the key.

Real files in tmp_path, read by the real loader (both PyYAML loaders where it matters). Every
failing case carries known secrets (inline and in files) and checks that no message shows them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import certifi
import pytest
import yaml
from conftest import REPO

from polarity_exporter import targets
from polarity_exporter.config import (
    MAX_SECRET_BYTES,
    SETTINGS,
    ApiKey,
    ConfigError,
    Password,
    PolarityConfig,
    Setting,
)
from polarity_exporter.targets import (
    KEYS,
    LOADERS,
    MAX_FILE_BYTES,
    MAX_TARGETS,
    load_targets,
    parse_targets,
    parse_yaml,
)

SECRET_KEY = "k3y-SECRET-api-0123456789abcdef"
SECRET_PASSWORD = "pw-SECRET-correct-horse-42"
SECRETS = (SECRET_KEY, SECRET_PASSWORD, "SECRET")
URL = "https://polarity.example.com"
BASE: dict[str, Any] = {"url": URL, "api_key": SECRET_KEY}
STRING_KEYS = ("url", "username", "username_file", "password", "password_file", "api_key",
               "api_key_file", "ca_file", "proxy_url")


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A directory with the config's secret files; relative paths in the config point here."""
    files = {
        "api.key": f"  {SECRET_KEY} \n",
        "password.txt": f"{SECRET_PASSWORD}\n",
        "username.txt": "prometheus\n",
        "empty.txt": "",
        "newline.txt": "\n",
        "blank.key": "   \n",
        "spaced.key": f"{SECRET_KEY} {SECRET_KEY}\n",
        "big.txt": SECRET_PASSWORD * (MAX_SECRET_BYTES // len(SECRET_PASSWORD) + 1),
        "not-pem.pem": f"{SECRET_PASSWORD}\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "not-utf8.txt").write_bytes(b"\xff" + SECRET_PASSWORD.encode())
    (tmp_path / "ca.pem").write_bytes(Path(certifi.where()).read_bytes())
    (tmp_path / "a-directory").mkdir()
    return tmp_path


def write(directory: Path, document: object) -> Path:
    path = directory / "polarity.yml"
    text = document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False)
    path.write_text(text)
    return path


def load(directory: Path, document: object) -> dict[str, PolarityConfig]:
    return load_targets(str(write(directory, document)))


def failure(directory: Path, document: object) -> str:
    path = write(directory, document)
    with pytest.raises(ConfigError) as caught:
        load_targets(str(path))
    message = str(caught.value)
    assert message.startswith(f"config file {path}: "), message
    return message


def check_message(message: str, target: str | None, key: str | None, says: str = "") -> None:
    """One line, naming the target and the key, saying `says`, showing no secret."""
    assert says in message, message
    assert "\n" not in message and "\r" not in message, message
    if target is not None:
        assert f"target {target!r}".replace("'", '"') in message, message
    if key is not None:
        assert f'"{key}"' in message, message
    for secret in SECRETS:
        assert secret not in message, message
    assert "--polarity" not in message, "file errors name keys, not flags"


# --- valid files ---------------------------------------------------------------------------------


def test_api_key_target_gets_the_flag_defaults(config_dir: Path) -> None:
    loaded = load(config_dir, {"targets": {"prod": {"url": URL, "api_key_file": "api.key"}}})
    assert loaded == {"prod": PolarityConfig(url=URL, credentials=ApiKey(SECRET_KEY))}


def test_defaults_equal_the_cli_flag_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from polarity_exporter.cli import command

    for name in ("POLARITY_CA_FILE", "POLARITY_INSECURE_SKIP_VERIFY", "POLARITY_TIMEOUT",
                 "POLARITY_PAGE_SIZE", "POLARITY_MAX_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    flags = command.make_context("polarity-exporter", []).params  # parsed, not run
    defaults = {f.name: f.default for f in fields(PolarityConfig)
                if f.name not in ("url", "credentials", "errors", "error_events")}
    assert defaults == {name: flags[name] for name in defaults}


def test_password_file_target_reads_the_password_without_its_newline(config_dir: Path) -> None:
    loaded = load(config_dir, {"targets": {"lab": {
        "url": URL, "username": "prometheus", "password_file": "password.txt"}}})
    assert loaded["lab"].credentials == Password("prometheus", SECRET_PASSWORD)


def test_username_file_is_read_like_a_secret(config_dir: Path) -> None:
    loaded = load(config_dir, {"targets": {"lab": {
        "url": URL, "username_file": "username.txt", "password_file": "password.txt"}}})
    assert loaded["lab"].credentials == Password("prometheus", SECRET_PASSWORD)


def test_inline_credentials_are_accepted(config_dir: Path) -> None:
    loaded = load(config_dir, {"targets": {
        "a": {"url": URL, "api_key": SECRET_KEY},
        "b": {"url": URL, "username": "u", "password": SECRET_PASSWORD}}})
    assert loaded["a"].credentials == ApiKey(SECRET_KEY)
    assert loaded["b"].credentials == Password("u", SECRET_PASSWORD)


def test_api_key_is_stripped_as_for_the_flag(config_dir: Path) -> None:
    loaded = load(config_dir, {"targets": {"a": {"url": URL, "api_key_file": "api.key"}}})
    assert loaded["a"].credentials == ApiKey(SECRET_KEY)


def test_every_key_is_applied(config_dir: Path) -> None:
    loaded = load(config_dir, {"targets": {"lab": {
        "url": "https://polarity-lab.example.com:8443/polarity/", "username": "prometheus",
        "password_file": "password.txt", "ca_file": "ca.pem", "insecure_skip_verify": True,
        "timeout": 2.5, "page_size": 10000, "max_concurrency": 64}}})
    assert loaded["lab"] == PolarityConfig(
        url="https://polarity-lab.example.com:8443/polarity",
        credentials=Password("prometheus", SECRET_PASSWORD), ca_file=str(config_dir / "ca.pem"),
        insecure_skip_verify=True, timeout=2.5, page_size=10000, max_concurrency=64)


def test_targets_keep_the_order_of_the_file(config_dir: Path) -> None:
    names = ["zulu", "alpha", "mike", "A-1.b_2"]
    loaded = load(config_dir, {"targets": {n: dict(BASE) for n in names}})
    assert list(loaded) == names


def test_relative_paths_are_relative_to_the_config_file(config_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    loaded = load(config_dir, {"targets": {"a": {"url": URL, "api_key_file": "api.key",
                                                 "ca_file": "ca.pem"}}})
    assert loaded["a"].ca_file == str(config_dir / "ca.pem")
    assert loaded["a"].credentials == ApiKey(SECRET_KEY)


def test_absolute_paths_are_kept(config_dir: Path) -> None:
    ca = str(config_dir / "ca.pem")
    loaded = load(config_dir, {"targets": {"a": {**BASE, "ca_file": ca}}})
    assert loaded["a"].ca_file == ca


def test_null_values_mean_the_default(config_dir: Path) -> None:
    loaded = load(config_dir, "targets:\n  a:\n    url: https://polarity.example.com\n"
                              f"    api_key: {SECRET_KEY}\n    timeout:\n    ca_file: ~\n")
    assert loaded["a"] == PolarityConfig(url=URL, credentials=ApiKey(SECRET_KEY))


def test_an_integer_timeout_is_a_float(config_dir: Path) -> None:
    timeout = load(config_dir, {"targets": {"a": {**BASE, "timeout": 3}}})["a"].timeout
    assert timeout == 3.0 and isinstance(timeout, float)


def test_no_secret_in_the_repr_of_loaded_targets(config_dir: Path) -> None:
    loaded = load(config_dir, {"targets": {
        "a": {"url": URL, "api_key_file": "api.key"},
        "b": {"url": URL, "username": "u", "password_file": "password.txt"}}})
    assert not any(secret in repr(loaded) for secret in SECRETS)


def test_parse_targets_reads_secrets_through_the_given_reader() -> None:
    files = {"/etc/polarity-exporter/prod.key": SECRET_KEY,
             "/etc/polarity-exporter/lab.password": SECRET_PASSWORD}
    read: list[str] = []

    def reader(path: str, label: str) -> str:
        read.append(path)
        return files[path]

    document = {"targets": {
        "prod": {"url": URL, "api_key_file": "/etc/polarity-exporter/prod.key"},
        "lab": {"url": URL, "username": "u",
                "password_file": "/etc/polarity-exporter/lab.password"}}}
    loaded = parse_targets(document, "test", reader)
    assert loaded["prod"].credentials == ApiKey(SECRET_KEY)
    assert loaded["lab"].credentials == Password("u", SECRET_PASSWORD)
    assert read == list(files)


def test_a_file_at_the_size_limit_loads(config_dir: Path) -> None:
    body = yaml.safe_dump({"targets": {"a": BASE}})
    padding = "#" * (MAX_FILE_BYTES - len(body) - 1) + "\n"
    assert len(body + padding) == MAX_FILE_BYTES
    assert list(load(config_dir, body + padding)) == ["a"]


def test_the_most_targets_allowed_load(config_dir: Path) -> None:
    document = {"targets": {f"t{i}": dict(BASE) for i in range(MAX_TARGETS)}}
    assert len(load(config_dir, document)) == MAX_TARGETS


@pytest.mark.parametrize("loader", LOADERS, ids=lambda c: c.__name__)
def test_each_yaml_loader_reads_the_same_targets(loader: Callable[[str], Any]) -> None:
    text = yaml.safe_dump({"targets": {"b": {**BASE, "timeout": 2},
                                       "a": {"url": URL, "username": "u",
                                             "password": SECRET_PASSWORD}}}, sort_keys=False)
    document = parse_yaml(text, "test", loader)
    # As PyYAML reads it, but a per-server number as its text (read by the flags' schema).
    assert document == {"targets": {"b": {**BASE, "timeout": "2"},
                                    "a": {"url": URL, "username": "u",
                                          "password": SECRET_PASSWORD}}}
    targets = parse_targets(document, "test")
    assert list(targets) == ["b", "a"] and targets["b"].timeout == 2.0


# --- invalid files: a generated matrix -----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A config that must fail; `target`, `key` and `says` must all be in the message."""

    document: object
    target: str | None
    key: str | None
    says: str = ""


def one(body: object, name: object = "lab") -> dict[str, Any]:
    return {"targets": {"ok": dict(BASE), name: body}}


# Wrong type or out of range, for every key.
WRONG_VALUES: dict[str, list[object]] = {
    **{key: [123, True, 1.5, ["x"], {"a": "b"}, ""] for key in STRING_KEYS},
    "insecure_skip_verify": ["true", "no", 1, 0, ["x"]],
    "timeout": ["ten", True, 0, 0.05, -1, math.nan, math.inf, -math.inf, 10**400, [1], 301],
    "page_size": [0, 10001, -1, 1.5, 200.0, True, "0x10", "1:30", 10**400],
    "max_concurrency": [0, 65, 10.0, False, "1e1"],
    "collectors": ["errors", [], ["errors"], ["integrations", "metrics"], [1],
                   {"integrations": True}, True],
    "error_events": ["true", "yes please", 1, ["x"]],
}
BAD_PROXY_URLS = ["socks5://proxy.example.com:1080", "http://", "proxy.example.com:3128",
                  f"http://u:{SECRET_PASSWORD}@proxy.example.com:99999",
                  f"http://u:{SECRET_PASSWORD}@proxy.example.com/path",
                  f"http://u:{SECRET_PASSWORD}@proxy.example.com/?a=1",
                  f"https://u:{SECRET_PASSWORD}@[::1", f"http://u:{SECRET_PASSWORD}@p x:3128"]
BAD_URLS = ["polarity.example.com", "ftp://polarity.example.com", "https://",
            f"https://user:{SECRET_PASSWORD}@polarity.example.com",
            f"https://{SECRET_PASSWORD}@polarity.example.com", "https://x/?a=1", "https://x#top",
            "https://x\n/y", "https://x\t/y", "https://x/a b", "https://x:99999",
            f"https://u:{SECRET_PASSWORD}@x:99999", "https://[::1"]
BOTH_CREDENTIALS = [
    ({"api_key": SECRET_KEY, "username": "u", "password": SECRET_PASSWORD}, "api_key"),
    ({"api_key_file": "api.key", "username": "u", "password_file": "password.txt"},
     "api_key_file"),
    ({"api_key": SECRET_KEY, "username": "u"}, "api_key"),
    ({"api_key_file": "api.key", "password": SECRET_PASSWORD}, "api_key_file"),
    ({"api_key": SECRET_KEY, "api_key_file": "api.key"}, "api_key_file"),
    ({"username": "u", "password": SECRET_PASSWORD, "password_file": "password.txt"},
     "password_file"),
    ({"username": "u", "username_file": "username.txt", "password": SECRET_PASSWORD},
     "username_file"),
]
PARTIAL_CREDENTIALS = [
    ({}, "api_key_file"),
    ({"username": "u"}, "password_file"),
    ({"username_file": "username.txt"}, "password_file"),
    ({"password": SECRET_PASSWORD}, "username"),
    ({"password_file": "password.txt"}, "username"),
    ({"api_key": "   "}, "api_key"),
    ({"api_key": f"{SECRET_KEY} {SECRET_KEY}"}, "api_key"),
    ({"api_key": f"{SECRET_KEY}\u00e9"}, "api_key"),
    ({"username": "u", "password": "\n"}, "password"),
]
SECRET_FILE_KEYS = {"api_key_file": {}, "password_file": {"username": "u"},
                    "username_file": {"password": SECRET_PASSWORD}}
BAD_FILES = ["missing.txt", "a-directory", "empty.txt", "newline.txt", "big.txt",
             "not-utf8.txt", "/dev/zero"]
BAD_CA_FILES = ["missing.pem", "a-directory", "empty.txt", "not-pem.pem", "big.txt",
                "/dev/zero"]
UNKNOWN_KEYS = ["tiemout", "URL", "api-key-file", "password_files", "headers", "scheme"]
UNKNOWN_FAR_KEYS = {"headers", "scheme"}
BAD_NAMES: list[object] = ["http://polarity.example.com", "a/b", "a:b", "-a", "_a", ".a",
                           "a" * 64, "pr\u00f8d", "a b", "", "a\nb", 1, True, 1.5, None]


def matrix() -> list[Any]:
    cases: list[Any] = []

    def add(case_id: str, case: Case) -> None:
        cases.append(pytest.param(case, id=case_id[:60]))

    for key, values in WRONG_VALUES.items():
        for value in values:
            base = {k: v for k, v in BASE.items() if not (key == "api_key_file" and k == "api_key")}
            add(f"{key}={value!r}"[:50], Case(one({**base, key: value}), "lab", key))
    for key in UNKNOWN_KEYS:  # named when close to a key (a typo), else "(not shown)"
        close = key not in UNKNOWN_FAR_KEYS
        add(f"unknown-{key}", Case(one({**BASE, key: 1}), "lab", key if close else None,
                                   "unknown key" if close else "key (not shown): unknown key"))
    int_key: dict[Any, Any] = {**BASE, 7: 1}
    add("unknown-int-key", Case(one(int_key), "lab", None, "key (not shown): unknown key"))
    add("missing-url", Case(one({"api_key": SECRET_KEY}), "lab", "url"))
    add("null-url", Case(one({"url": None, "api_key": SECRET_KEY}), "lab", "url"))
    for url in BAD_URLS:
        add(f"url={url!r}", Case(one({**BASE, "url": url}), "lab", "url"))
    for index, url in enumerate(BAD_PROXY_URLS):
        add(f"proxy_url-{index}", Case(one({**BASE, "proxy_url": url}), "lab", "proxy_url"))
    for body, key in BOTH_CREDENTIALS:
        add(f"both-{'+'.join(body)}", Case(one({"url": URL, **body}), "lab", key))
    for index, (body, key) in enumerate(PARTIAL_CREDENTIALS):
        add(f"partial-{index}-{'+'.join(body) or 'none'}", Case(one({"url": URL, **body}), "lab",
                                                                key))
    for key, rest in SECRET_FILE_KEYS.items():
        for file in BAD_FILES:
            add(f"{key}={file}", Case(one({"url": URL, **rest, key: file}), "lab", key))
    for file in BAD_CA_FILES:
        add(f"ca_file={file}", Case(one({**BASE, "ca_file": file}), "lab", "ca_file"))
    for name in BAD_NAMES:
        add(f"name={name!r}", Case(one(dict(BASE), name), None, None, "target name"))
    for not_a_mapping in (None, "https://polarity.example.com", [BASE], 1):
        add(f"target-is-{type(not_a_mapping).__name__}", Case(one(not_a_mapping), "lab", None))
    add("duplicate-key", Case(
        f"targets:\n  lab:\n    url: {URL}\n    api_key: {SECRET_KEY}\n    timeout: 5\n"
        "    timeout: 6\n", "lab", "timeout", "given twice"))
    add("duplicate-key-flow", Case(
        f"targets: {{lab: {{url: '{URL}', api_key: {SECRET_KEY}, url: '{URL}'}}}}\n", "lab",
        "url", "given twice"))
    add("duplicate-key-spelled-differently", Case(
        f"targets:\n  lab:\n    url: {URL}\n    api_key: {SECRET_KEY}\n    page_size: 16\n"
        "    page_size: 0x10\n", "lab", "page_size", "given twice"))
    add("duplicate-target", Case(
        f"targets:\n  lab: {{url: '{URL}', api_key: {SECRET_KEY}}}\n"
        f"  lab: {{url: '{URL}', api_key: k2}}\n", "lab", None, "given twice"))
    add("duplicate-targets-key", Case(
        f"targets:\n  a: {{url: '{URL}', api_key: k}}\n"
        f"targets:\n  b: {{url: '{URL}', api_key: k}}\n",
        None, "targets", "given twice"))
    add("alias", Case(
        f"targets:\n  a: &srv {{url: '{URL}', api_key: {SECRET_KEY}}}\n  lab: *srv\n", "lab",
        None, "aliases"))
    add("alias-of-a-secret", Case(
        f"targets:\n  lab: {{url: '{URL}', username: &u {SECRET_PASSWORD}, password: *u}}\n",
        "lab", "password", "aliases"))
    add("alias-of-a-key", Case(
        f"targets:\n  &name lab: {{url: '{URL}', api_key: {SECRET_KEY}}}\n"
        f"  other: {{url: '{URL}', api_key: *name}}\n", "other", "api_key", "aliases"))
    add("alias-as-a-key", Case(
        f"targets:\n  &name lab: {{url: '{URL}', api_key: {SECRET_KEY}}}\n"
        f"  *name : {{url: '{URL}', api_key: k}}\n", None, "targets", "aliases"))
    add("merge-key", Case(
        f"targets:\n  lab:\n    <<: {{url: '{URL}'}}\n    api_key: {SECRET_KEY}\n", "lab", None,
        "merge keys"))
    add("python-tag", Case(
        "targets:\n  lab:\n    url: !!python/object/apply:os.system ['true']\n", "lab", "url",
        "tags"))
    add("unquoted-password-read-as-a-tag", Case(
        f"targets:\n  lab:\n    url: {URL}\n    username: u\n    password: !{SECRET_PASSWORD}\n",
        "lab", "password", "tags"))
    add("binary-tag", Case(
        f"targets:\n  lab:\n    url: {URL}\n    api_key: !!binary {SECRET_KEY}\n", "lab",
        "api_key"))
    add("int-tag-on-a-secret", Case(
        f"targets:\n  lab:\n    url: {URL}\n    api_key: !!int {SECRET_KEY}\n", "lab",
        "api_key"))
    add("huge-integer", Case(
        f"targets:\n  lab:\n    url: {URL}\n    api_key: k\n    page_size: {'9' * 5000}\n",
        "lab", "page_size"))
    add("deep-nesting", Case(
        f"targets:\n  lab:\n    url: {URL}\n    api_key: k\n    timeout: {'[' * 40}{']' * 40}\n",
        "lab", "timeout", "nested"))
    add("the-password-as-an-undefined-alias", Case(
        f"targets:\n  lab:\n    url: {URL}\n    username: u\n    password: *{SECRET_PASSWORD}\n",
        None, None, "undefined alias"))
    add("tab-indent", Case(f"targets:\n\tlab: {{url: '{URL}', api_key: {SECRET_KEY}}}\n", None,
                           None))
    add("nul-character", Case(f"targets:\n  lab: {{url: '{URL}', api_key: \"{SECRET_KEY}\0\"}}\n",
                              None, None))
    add("two-documents", Case(f"targets: {{lab: {{url: '{URL}', api_key: k}}}}\n---\n{{}}\n",
                              None, None))
    add("unknown-top-key", Case({"targets": {"ok": BASE}, "global": {}}, None, None,
                                "key (not shown): unknown key"))
    add("unknown-top-key-typo", Case({"targets": {"ok": BASE}, "target": {}}, None, "target"))
    document: object
    for document in ("", "# only a comment\n", "targets:\n", {"targets": {}},
                     {"targets": [BASE]}, {"targets": "lab"}, [BASE], "just text\n"):
        add(f"document={document!r}", Case(document, None, None))
    too_many = {"targets": {f"t{i}": {"url": URL, "api_key": "k"} for i in range(MAX_TARGETS + 1)}}
    add("too-many-targets", Case(too_many, None, "targets", f"at most {MAX_TARGETS}"))
    return cases


@pytest.mark.parametrize("case", matrix())
def test_invalid_config_is_one_line_naming_target_and_key(config_dir: Path, case: Case) -> None:
    check_message(failure(config_dir, case.document), case.target, case.key, case.says)


def test_the_matrix_covers_every_key() -> None:
    assert set(WRONG_VALUES) == set(KEYS)


@pytest.mark.parametrize("loader", LOADERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("case", [p for p in matrix() if isinstance(p.values[0].document, str)])
def test_each_yaml_loader_rejects_hostile_yaml_alike(loader: Callable[[str], Any],
                                                      case: Case) -> None:
    assert isinstance(case.document, str)
    with pytest.raises(ConfigError) as caught:
        parse_targets(parse_yaml(case.document, "f.yml", loader), "f.yml")
    check_message(str(caught.value), case.target, case.key, case.says)


# --- specific messages ---------------------------------------------------------------------------


def test_message_for_a_small_timeout_names_file_target_and_key(config_dir: Path) -> None:
    path = write(config_dir, {"targets": {"lab": {**BASE, "timeout": 0.05}}})
    with pytest.raises(ConfigError) as caught:
        load_targets(str(path))
    assert str(caught.value) == \
        f'config file {path}: target "lab": key "timeout": must be a number from 0.1 to 300'


def test_unknown_key_suggests_the_closest_key(config_dir: Path) -> None:
    message = failure(config_dir, {"targets": {"lab": {**BASE, "tiemout": 5}}})
    assert message.endswith('target "lab": key "tiemout": unknown key (did you mean "timeout"?)')


def test_duplicate_key_names_both_lines(config_dir: Path) -> None:
    message = failure(config_dir, f"targets:\n  lab:\n    url: {URL}\n    url: {URL}\n")
    assert message.endswith('target "lab": key "url": given twice (lines 3 and 4)')


def test_yaml_boolean_name_is_told_to_be_quoted(config_dir: Path) -> None:
    message = failure(config_dir, f"targets:\n  no: {{url: '{URL}', api_key: k}}\n")
    assert "must be a string: quote it" in message


def test_an_alias_bomb_is_rejected_before_it_expands(config_dir: Path) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]"
        for i in range(9)]
    message = failure(config_dir, "\n".join(levels) + "\n")  # 10**10 items if expanded
    assert "aliases (*name) are not allowed" in message


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*: No such file"):
        load_targets(str(tmp_path / "nope.yml"))


def test_file_over_the_size_limit_is_refused(config_dir: Path) -> None:
    message = failure(config_dir, "#" * MAX_FILE_BYTES + "\n")
    assert message.endswith(f"larger than {MAX_FILE_BYTES} bytes")


def test_file_not_in_utf8_is_refused(config_dir: Path) -> None:
    path = config_dir / "polarity.yml"
    path.write_bytes("targets: {}".encode("utf-16"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_targets(str(path))


def test_url_errors_name_keys_not_flags(config_dir: Path) -> None:
    message = failure(config_dir, {"targets": {"lab": {
        **BASE, "url": f"https://u:{SECRET_PASSWORD}@polarity.example.com"}}})
    assert message.endswith('key "url": must not contain credentials; use the credential keys')


def test_target_name_pattern_allows_no_url_characters() -> None:
    assert targets.TARGET_NAME.fullmatch("prod-eu.1_a")
    assert not any(targets.TARGET_NAME.fullmatch(name) for name in (
        "http://x", "x:1", "a/b", "a?b", "a&b", "a%20b", "a b"))


# --- documentation -------------------------------------------------------------------------------


def test_the_config_file_reference_documents_every_key() -> None:
    text = (REPO / "docs" / "configuration.md").read_text().split("## The targets file", 1)[1]
    missing = [key for key in KEYS if not re.search(rf"`{key}`", text)]
    assert missing == []


# --- mistakes that put a secret where the loader would repeat it (found by review) ---------------

SECRET_MISTAKES = {
    "password-as-its-file-path": {"url": URL, "username": "u", "password_file": SECRET_PASSWORD},
    "key-in-the-url-query": {"url": f"{URL}/?api_key={SECRET_KEY}", "api_key": "k"},
    "secret-in-the-url-fragment": {"url": f"{URL}/#{SECRET_KEY}", "api_key": "k"},
    "password-as-the-url-port": {"url": f"http://polarity:{SECRET_PASSWORD}", "api_key": "k"},
    "key-pasted-as-the-url": {"url": SECRET_KEY, "api_key": "k"},
    "nul-in-a-file-path": {"url": URL, "username": "u", "password_file": "pw\0SECRET"},
}


@pytest.mark.parametrize("target", SECRET_MISTAKES.values(), ids=SECRET_MISTAKES.keys())
def test_a_secret_in_the_wrong_place_is_never_repeated(tmp_path: Path,
                                                       target: dict[str, Any]) -> None:
    path = tmp_path / "targets.yml"
    path.write_text(yaml.safe_dump({"targets": {"lab": target}}))
    with pytest.raises(ConfigError) as caught:
        load_targets(str(path))
    message = str(caught.value)
    assert '"lab"' in message and "\n" not in message
    assert not any(secret in message for secret in SECRETS), message


def test_a_password_written_as_a_key_is_not_repeated(tmp_path: Path) -> None:
    path = tmp_path / "targets.yml"  # "password:" with no space after the colon: one key
    path.write_text(f"targets:\n  lab:\n    url: {URL}\n    password:{SECRET_PASSWORD}: x\n")
    with pytest.raises(ConfigError, match="unknown key") as caught:
        load_targets(str(path))
    assert SECRET_PASSWORD not in str(caught.value)


def test_a_fifo_in_place_of_the_config_file_fails_at_once(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "targets.yml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_targets(str(fifo))  # would block forever in a blocking open()


@pytest.mark.parametrize("text", [
    f"targets:\n  password:{SECRET_PASSWORD}: x\n",  # mis-indented: a target name
    f"targets:\n  lab:\n    url: {URL}\npassword:{SECRET_PASSWORD}: x\n",  # a top-level key
    f"targets:\n  lab:\n    url: {URL}\n    password:{SECRET_PASSWORD}: x\n"
    f"    password:{SECRET_PASSWORD}: x\n",  # given twice
], ids=["as-a-target-name", "as-a-top-level-key", "given-twice"])
def test_a_password_written_as_a_key_anywhere_is_not_repeated(tmp_path: Path, text: str) -> None:
    path = tmp_path / "targets.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_targets(str(path))
    assert SECRET_PASSWORD not in str(caught.value)
    assert "\n" not in str(caught.value)


# One schema (issue 19): a per-server number written in the targets file is read from its text
# exactly as the flag reads the same text, never by YAML 1.1's rules (020 is 16 there, 1:30 is
# 90, 0x10 is 16).
NUMBER_TEXTS = ["020", "010", "0x10", "0b11", "1:30", "3:20", "1e2", "1.5e1", "1_000", "+10",
                "100.0", "300.0000001", ".inf", ".nan", "nan", "12", "007"]


@pytest.mark.parametrize("loader", LOADERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
@pytest.mark.parametrize("text", NUMBER_TEXTS)
def test_a_number_in_the_targets_file_reads_as_the_same_text_as_a_flag(
        loader: Callable[[str], Any], setting: Setting, text: str) -> None:
    try:
        expected: object = setting.parse(text)
    except ConfigError as exc:
        expected = str(exc)
    document = parse_yaml(f"targets:\n  lab:\n    url: {URL}\n    api_key: k\n"
                          f"    {setting.key}: {text}\n", "t.yml", loader)
    try:
        got: object = getattr(parse_targets(document, "t.yml")["lab"], setting.key)
    except ConfigError as exc:
        got = str(exc).rsplit(": ", 1)[-1]
    assert got == expected


# A secret a misplaced line turned into a key (the value of `api_key:` on the next line, ending
# in ":", or dedented): an unknown key is named only when it is close to a known one.
@pytest.mark.parametrize("text", [
    f"targets:\n  lab:\n    url: {URL}\n    api_key:\n    {SECRET_KEY}:\n",
    f"targets:\n  lab:\n    url: {URL}\n    api_key: k\n{SECRET_KEY}:\n",
    f"targets:\n  lab:\n    url: {URL}\n    password:\n    Summer2024:\n    username: u\n",
])
def test_a_secret_that_became_a_key_is_never_named(config_dir: Path, text: str) -> None:
    message = failure(config_dir, text)
    assert "(not shown)" in message
    assert SECRET_KEY not in message and "Summer2024" not in message


def test_a_fifo_swapped_in_after_the_check_does_not_block_a_reload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret file is checked on the open file, not by its path: a FIFO that replaced the
    file between a look at the path and the open would block open() for good."""
    import os
    import threading

    from polarity_exporter import config

    fifo = tmp_path / "password"
    os.mkfifo(fifo)
    regular = os.stat(__file__)
    monkeypatch.setattr(config.os, "stat", lambda *_args, **_kwargs: regular)  # the race
    outcome: list[str] = []

    def read() -> None:
        try:
            config.read_secret_file(str(fifo), "the file")
        except ConfigError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert outcome == ["the file is not a regular file"]
