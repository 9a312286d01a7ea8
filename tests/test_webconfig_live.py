"""exporter-toolkit parity of `--web.config.file` (issue 22, item 6): `rate_limit`, inline
`cert`/`key`/`client_ca`, `client_allowed_sans`, and the file read again when it (or a
certificate it names) changes, over real TLS connections to an exporter served in-process."""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml
from conftest import CREDS, require_tool
from inproc import Certs, Running, running_exporter

from polarity_exporter.config import ConfigError
from polarity_exporter.simulator import Simulator
from polarity_exporter.webconfig import load_web_config, parse_duration
from polarity_exporter.weblive import RateLimiter


@pytest.fixture(scope="module")
def more_certs(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A second server certificate, and client certificates naming SANs, from the same CA."""
    openssl = require_tool("openssl")
    directory = tmp_path_factory.mktemp("more-certs")
    ca_key = certs.ca.with_suffix(".key")

    def make(name: str, ext: str) -> None:
        def run(*args: str) -> None:
            subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory)
        (directory / f"{name}.ext").write_text(ext + "\n")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", str(certs.ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")

    make("server2", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    make("prometheus", "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:prometheus.example")
    make("intruder", "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:intruder.example")
    # A directory name (a tuple in getpeercert(), not a string) spelling the allowed name.
    make("dirname", "extendedKeyUsage=clientAuth\nsubjectAltName=dirName:dir_sect,"
         "DNS:intruder.example\n[dir_sect]\nCN=prometheus.example")
    return {name: directory / name for name in ("server2", "prometheus", "intruder", "dirname")}


def peer_fingerprint(port: int, ca: Path) -> str:
    """The SHA-256 of the certificate the exporter presents on a new connection."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def fingerprint_of(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest()


@pytest.fixture
def live(sim: Simulator, certs: Certs, tmp_path: Path) -> Iterator[tuple[Running, Path]]:
    """An exporter over TLS whose web config and certificate files live in tmp_path."""
    shutil.copy(certs.server_cert, tmp_path / "tls.crt")
    shutil.copy(certs.server_key, tmp_path / "tls.key")
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": "tls.crt",
                                                          "key_file": "tls.key"}}))
    with running_exporter(sim.url, CREDS, security=load_web_config(str(path)),
                          security_file=str(path)) as running:
        running.session.trust_env = False  # REQUESTS_CA_BUNDLE would replace verify
        running.session.verify = str(certs.ca)
        yield running, tmp_path


def test_a_certificate_rotated_on_disk_is_served_on_the_next_connection(
        live: tuple[Running, Path], certs: Certs, more_certs: dict[str, Path]) -> None:
    running, directory = live
    port = running.exporter.port
    assert peer_fingerprint(port, certs.ca) == fingerprint_of(certs.server_cert)
    # As cert-manager does: new files in place, no restart, no signal.
    shutil.copy(more_certs["server2"].with_suffix(".pem"), directory / "tls.crt")
    shutil.copy(more_certs["server2"].with_suffix(".key"), directory / "tls.key")
    assert peer_fingerprint(port, certs.ca) == \
        fingerprint_of(more_certs["server2"].with_suffix(".pem"))
    assert running.scrape().up == 1.0
    assert running.logs.matching("web config reloaded")


def test_a_bad_new_file_keeps_the_old_one_and_says_so_once(live: tuple[Running, Path],
                                                           certs: Certs) -> None:
    running, directory = live
    (directory / "web.yml").write_text("tls_server_config: [this is: not valid\n")
    for _ in range(3):
        assert peer_fingerprint(running.exporter.port, certs.ca) == \
            fingerprint_of(certs.server_cert)
        assert running.scrape().up == 1.0
    failures = running.logs.matching("web config reload failed")
    assert len(failures) == 1 and "not valid YAML" in failures[0]


def test_a_key_that_does_not_match_keeps_the_old_certificate(
        live: tuple[Running, Path], certs: Certs, more_certs: dict[str, Path]) -> None:
    running, directory = live
    shutil.copy(more_certs["server2"].with_suffix(".pem"), directory / "tls.crt")  # old key
    assert peer_fingerprint(running.exporter.port, certs.ca) == \
        fingerprint_of(certs.server_cert)
    assert running.logs.matching("web config reload failed")


def test_a_switch_between_tls_and_plain_http_is_refused_until_a_restart(
        live: tuple[Running, Path], certs: Certs) -> None:
    running, directory = live
    (directory / "web.yml").write_text("basic_auth_users: {}\n")
    assert running.scrape().up == 1.0
    (failure,) = running.logs.matching("web config reload failed")
    assert "needs a restart" in failure


def test_basic_auth_users_added_to_the_file_take_effect(live: tuple[Running, Path]) -> None:
    running, directory = live
    assert running.scrape().response.status_code == 200
    hashed = bcrypt.hashpw(b"new-password", bcrypt.gensalt(4)).decode()
    config = yaml.safe_load((directory / "web.yml").read_text())
    (directory / "web.yml").write_text(yaml.safe_dump({**config,
                                                       "basic_auth_users": {"ops": hashed}}))
    assert running.scrape().response.status_code == 401
    running.session.auth = ("ops", "new-password")
    assert running.scrape().response.status_code == 200


# --- rate_limit ------------------------------------------------------------------------------

def test_rate_limit_answers_429_past_the_burst_and_exempts_the_probes(sim: Simulator,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"rate_limit": {"interval": "1h", "burst": 3}}))
    with running_exporter(sim.url, CREDS, security=load_web_config(str(path)),
                          security_file=str(path)) as running:
        statuses = [running.scrape().response.status_code for _ in range(3)]
        refused = running.scrape().response
        probes = [requests.get(f"{running.url}{p}", timeout=10).status_code
                  for p in ("/-/healthy", "/-/ready") * 3]
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429 and refused.text == "Too Many Requests\n"
    assert probes == [200] * 6


def test_the_rate_limiter_refills_one_request_per_interval() -> None:
    now = [0.0]
    limiter = RateLimiter(load_rate_limit("10s", 2), clock=lambda: now[0])
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    now[0] = 9.9
    assert not limiter.allow()
    now[0] = 10.0
    assert limiter.allow() and not limiter.allow()
    now[0] = 1000.0  # never more than the burst
    assert [limiter.allow() for _ in range(3)] == [True, True, False]


def load_rate_limit(interval: str, burst: int) -> Any:
    from polarity_exporter.webconfig import RateLimitSettings
    return RateLimitSettings(parse_duration(interval, "interval"), burst)


@pytest.mark.parametrize("text, seconds", [("1s", 1.0), ("250ms", 0.25), ("1m30s", 90.0),
                                           ("1h", 3600.0), ("1.5s", 1.5), ("10us", 1e-5),
                                           (".5s", 0.5), ("+1s", 1.0), ("0", 0.0),
                                           ("3\u00b5s", 3e-6), ("3\u03bcs", 3e-6)])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("section, message", [
    ({"interval": "soon", "burst": 1}, "rate_limit.interval must be a duration"),
    ({"interval": "1s", "burst": -1}, "rate_limit.burst must be an integer"),
    ({"interval": "1s", "burst": "10"}, "rate_limit.burst must be an integer"),
    ({"interval": "1s", "burst": 1, "bursts": 2}, "unknown key 'bursts' in rate_limit"),
    ({"interval": "-1s", "burst": 1}, "rate_limit.interval must be a duration"),
    ({"interval": "300y", "burst": 1}, "rate_limit.interval must be a duration"),
    ({"interval": "3000000h", "burst": 1}, "longer than Go's longest duration"),
    ({"interval": "1s", "burst": 0}, "a burst of 0 would refuse every request"),
])
def test_bad_rate_limits_are_refused_naming_the_key(tmp_path: Path, section: dict[str, Any],
                                                    message: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"rate_limit": section}))
    with pytest.raises(ConfigError, match=message):
        load_web_config(str(path))


def test_a_zero_rate_limit_is_no_limit(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"rate_limit": {"interval": "0s", "burst": 0}}))
    assert load_web_config(str(path)).rate_limit is None


# --- inline certificates and client_allowed_sans ---------------------------------------------

def client(certs: Certs, pem: Path, key: Path) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would replace verify
    session.verify = str(certs.ca)
    session.cert = (str(pem), str(key))
    return session


def test_inline_cert_key_and_client_ca_serve_tls_and_verify_clients(
        sim: Simulator, certs: Certs, tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"tls_server_config": {
        "cert": certs.server_cert.read_text(), "key": certs.server_key.read_text(),
        "client_ca": certs.ca.read_text(), "client_auth_type": "RequireAndVerifyClientCert"}}))
    security = load_web_config(str(path))
    assert security.tls is not None and "PRIVATE KEY" not in repr(security)
    with running_exporter(sim.url, CREDS, security=security,
                          security_file=str(path)) as running:
        good = client(certs, certs.client_cert, certs.client_key)
        assert good.get(f"{running.url}/metrics", timeout=10).status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            client(certs, certs.other_client_cert, certs.other_client_key).get(
                f"{running.url}/metrics", timeout=10)
        assert peer_fingerprint(running.exporter.port, certs.ca) == \
            fingerprint_of(certs.server_cert)


def test_client_allowed_sans_admits_only_the_named_clients(
        sim: Simulator, certs: Certs, more_certs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"tls_server_config": {
        "cert_file": str(certs.server_cert), "key_file": str(certs.server_key),
        "client_ca_file": str(certs.ca), "client_auth_type": "RequireAndVerifyClientCert",
        "client_allowed_sans": ["prometheus.example"]}}))
    with running_exporter(sim.url, CREDS, security=load_web_config(str(path)),
                          security_file=str(path)) as running:
        allowed = client(certs, more_certs["prometheus"].with_suffix(".pem"),
                         more_certs["prometheus"].with_suffix(".key"))
        assert allowed.get(f"{running.url}/metrics", timeout=10).status_code == 200
        for name in ("intruder", "dirname"):
            refused = client(certs, more_certs[name].with_suffix(".pem"),
                             more_certs[name].with_suffix(".key"))
            with pytest.raises(requests.exceptions.RequestException):
                refused.get(f"{running.url}/metrics", timeout=10)
        no_san = client(certs, certs.client_cert, certs.client_key)  # a CN, no SAN
        with pytest.raises(requests.exceptions.RequestException):
            no_san.get(f"{running.url}/metrics", timeout=10)
        # Still serving: a refused certificate closed its connection, nothing more.
        assert allowed.get(f"{running.url}/metrics", timeout=10).status_code == 200


@pytest.mark.parametrize("tls, message", [
    ({"cert": "x", "cert_file": "y", "key_file": "z"}, "give cert or cert_file, not both"),
    ({"cert_file": "a", "key_file": "b", "client_allowed_sans": ["x"]},
     "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert"),
    ({"cert_file": "a", "key_file": "b", "client_allowed_sans": "x"},
     "client_allowed_sans must be a list"),
    # Optional client certificates would let a client without one pass the SAN check.
    ({"cert_file": "a", "key_file": "b", "client_ca_file": "c",
      "client_auth_type": "VerifyClientCertIfGiven", "client_allowed_sans": ["x"]},
     "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert"),
])
def test_bad_tls_sections_are_refused_naming_the_key(tmp_path: Path, tls: dict[str, Any],
                                                     message: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"tls_server_config": tls}))
    with pytest.raises(ConfigError, match=message):
        load_web_config(str(path))


def test_an_inline_key_never_shows_in_an_error(tmp_path: Path, certs: Certs) -> None:
    key = certs.server_key.read_text()
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"tls_server_config": {"cert": "not a certificate",
                                                          "key": key}}))
    with pytest.raises(ConfigError) as info:
        load_web_config(str(path))
    assert "PRIVATE KEY" not in str(info.value) and key.splitlines()[1] not in str(info.value)


# --- hostile files (the attack on item 6) ----------------------------------------------------

def test_a_concurrent_write_during_a_reload_is_read_on_the_next_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stamp kept is the one taken before the read: a write that lands while the file is
    being read is not mistaken for the version read."""
    from polarity_exporter import weblive
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users: {}\n")
    live = weblive.LiveWebConfig(str(path), load_web_config(str(path)))
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    real_load = weblive.load_web_config

    def load_then_overwrite(name: str) -> Any:
        loaded = real_load(name)  # the version being read ...
        path.write_text(yaml.safe_dump({"basic_auth_users": {"ops": hashed}}) + "\n" * 10)
        return loaded  # ... and a newer one on disk by the time it takes effect
    path.write_text("basic_auth_users: {}\n\n")
    monkeypatch.setattr(weblive, "load_web_config", load_then_overwrite)
    assert live.current().basic_auth is None
    monkeypatch.setattr(weblive, "load_web_config", real_load)
    state = live.current()
    assert state.basic_auth is not None and set(state.basic_auth.users) == {"ops"}


def nested(depth: int) -> str:
    return "basic_auth_users: " + "[" * depth + "]" * depth + "\n"


@pytest.mark.parametrize("text, message", [
    (nested(5000), "not valid YAML|nested more than"),
    ("basic_auth_users: {}\nbasic_auth_users: {}\n", "given twice"),
    ("rate_limit: &a {interval: 1s, burst: 1}\nbasic_auth_users: *a\n", "aliases"),
    ("basic_auth_users: {}\n" + "#" * (2 << 20), "larger than"),
])
def test_a_hostile_file_is_refused_with_one_line(tmp_path: Path, text: str,
                                                 message: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_web_config(str(path))
    assert "\n" not in str(info.value)


def test_a_hostile_file_on_reload_keeps_the_server_answering(live: tuple[Running, Path],
                                                            certs: Certs) -> None:
    running, directory = live
    (directory / "web.yml").write_text(nested(5000))
    for _ in range(3):
        assert running.session.get(f"{running.url}/-/healthy", timeout=10).status_code == 200
        assert running.scrape().up == 1.0
    assert len(running.logs.matching("web config reload failed")) == 1


def test_a_fifo_named_as_a_certificate_is_refused_at_once(tmp_path: Path, certs: Certs) -> None:
    import os
    os.mkfifo(tmp_path / "tls.key")
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": str(certs.server_cert),
                                                          "key_file": "tls.key"}}))
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_web_config(str(path))


@pytest.mark.parametrize("cost", ["03", "17", "99"])
def test_a_bcrypt_cost_outside_4_to_16_is_refused(tmp_path: Path, cost: str) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode().replace("$04$", f"${cost}$")
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {"ops": hashed}}))
    with pytest.raises(ConfigError, match=f"bcrypt cost {cost} is outside 4-16"):
        load_web_config(str(path))


def test_a_username_with_a_colon_is_refused_without_echoing_it(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  'alice:{hashed}': x\n")
    with pytest.raises(ConfigError, match="a username is empty or has a colon") as info:
        load_web_config(str(path))
    assert hashed not in str(info.value) and "alice" not in str(info.value)


def test_inline_certificates_load_without_a_writable_temporary_directory(
        tmp_path: Path, certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart runs with a read-only root filesystem: the inline key never touches a disk."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "does-not-exist"))
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"tls_server_config": {
        "cert": certs.server_cert.read_text(), "key": certs.server_key.read_text()}}))
    security = load_web_config(str(path))
    assert security.ssl_context() is not None
