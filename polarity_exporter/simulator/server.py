"""An HTTP stand-in for the documented Polarity v5 REST API (test and demo use only).

Request handling is a pipeline: parse -> route -> `Response` -> (test-only faults) -> send. Every
route returns a `Response` value instead of writing to the socket, so a fault hook can replace or
delay it in one place without touching the Polarity behaviour.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from polarity_exporter.simulator.dataset import (
    DEFAULT_BASE_TIME,
    Dataset,
    DatasetSpec,
    JsonDict,
    generate,
)
from polarity_exporter.simulator.http import (
    CHUNK_BYTES,
    JSONAPI,
    Request,
    Response,
    SimulatorHandler,
    SimulatorServer,
)

DEFAULT_PAGE_SIZE = 100


@dataclass
class SimulatorConfig:
    """Everything that shapes the simulated server. Defaults give a small, quick dataset."""

    seed: int = 7
    integrations: int = 25
    errors: int = 80
    users: dict[str, str] = field(default_factory=lambda: {"demo": "demo-password"})
    api_keys: dict[str, float] = field(default_factory=dict)  # key -> expiry, Unix seconds
    latency: float = 0.0  # seconds added to every request
    token_lifetime: float = 3600.0
    errors_forbidden: bool = False  # the errors endpoint answers 403, as for a non-admin
    # Every errors request finds one more occurrence of one record (the next each time), as on
    # a server whose integrations keep failing: no two errors bodies alike
    errors_changing: bool = False
    meta_bytes: int = 200  # size of each error's meta.stack; raise it for big-body benchmarks
    base_time: float = DEFAULT_BASE_TIME  # "now" of the dataset: the newest occurred-on
    host: str = "127.0.0.1"
    port: int = 0
    # Serve HTTPS with this certificate and key (PEM files) instead of plain HTTP.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


# TEST-ONLY, not Polarity behaviour: fault modes (see simulator/faults.py). The hook sees each
# request and the response Polarity would give; it returns the response to send (the same one,
# a replacement, or one with the test-only socket fields of `Response` set).
FaultHook = Callable[[Request, Response], Response]


def _json_response(status: int, payload: Any) -> Response:
    return Response(status, [json.dumps(payload, ensure_ascii=False).encode()])


def _error(status: int, title: str, detail: str) -> Response:
    """A JSON:API error document, the shape the API notes expect for failures."""
    return _json_response(
        status, {"errors": [{"status": str(status), "title": title, "detail": detail}]})


def _chunked_json_list(records: Iterable[JsonDict], prefix: bytes, suffix: bytes) -> list[bytes]:
    """Serialise a huge list record by record into ~1 MiB chunks.

    One `json.dumps` of 100k records would build a str of the whole body (4 bytes a character
    once any non-Latin-1 character is present) before encoding it.
    """
    chunks: list[bytes] = []
    pending: list[bytes] = [prefix]
    size = len(prefix)
    first = True
    for record in records:
        piece = json.dumps(record, ensure_ascii=False).encode()
        if not first:
            pending.append(b",")
        first = False
        pending.append(piece)
        size += len(piece) + 1
        if size >= CHUNK_BYTES:
            chunks.append(b"".join(pending))
            pending, size = [], 0
    pending.append(suffix)
    chunks.append(b"".join(pending))
    return chunks


def _fake_jwt(username: str, expires: float) -> str:
    """A JWT-shaped opaque token: the exporter must not care what is inside."""
    def part(obj: JsonDict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    header = part({"alg": "HS256", "typ": "JWT"})
    payload = part({"sub": username, "exp": int(expires), "jti": secrets.token_hex(8)})
    return f"{header}.{payload}.{secrets.token_urlsafe(32)}"


@dataclass
class _Session:
    token: str
    username: str
    expires: float


@dataclass
class _ApiKey:
    """An accepted API key; keys carry no session to refresh or log out."""


class _Auth:
    """Issued tokens and configured API keys; thread-safe."""

    def __init__(self, users: dict[str, str], api_keys: dict[str, float], lifetime: float) -> None:
        self._users = dict(users)
        self._keys = dict(api_keys)
        self._lifetime = lifetime
        self._tokens: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def check_password(self, username: str, password: str) -> bool:
        expected = self._users.get(username)
        # compare_digest so the simulator does not model a timing leak the real server lacks
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    def issue(self, username: str) -> tuple[str, float]:
        expires = time.time() + self._lifetime
        token = _fake_jwt(username, expires)
        with self._lock:
            self._tokens[token] = _Session(token, username, expires)
        return token, expires

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def revoke_all(self) -> None:
        with self._lock:
            self._tokens.clear()

    def authenticate(self, header: str | None) -> _Session | _ApiKey | Response:
        """Who the Authorization header names, or the 401 response to send."""
        if not header or not header.startswith("Bearer "):
            return _error(401, "Unauthorized", "missing bearer token")
        credential = header[len("Bearer "):].strip()
        now = time.time()
        key_expiry = self._keys.get(credential)
        if key_expiry is not None:
            if key_expiry <= now:
                return _error(401, "Unauthorized", "the API key has expired")
            return _ApiKey()
        with self._lock:
            session = self._tokens.get(credential)
            if session is not None and session.expires <= now:
                del self._tokens[credential]
                return _error(401, "Unauthorized", "the token has expired")
        if session is None:
            return _error(401, "Unauthorized", "invalid or revoked token")
        return session


class Simulator:
    """A Polarity server in a background thread. `with Simulator(cfg) as sim:` starts and stops."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        cfg = self.config
        self.dataset: Dataset = generate(DatasetSpec(
            seed=cfg.seed, integrations=cfg.integrations, errors=cfg.errors,
            meta_bytes=cfg.meta_bytes, base_time=cfg.base_time))
        self.counts: Counter[tuple[str, str]] = Counter()
        # TEST-ONLY hook, see FaultHook. None means plain Polarity behaviour.
        self.faults: FaultHook | None = None
        self._auth = _Auth(cfg.users, cfg.api_keys, cfg.token_lifetime)
        self._by_id = {item["id"]: item for item in self.dataset.integrations}
        # The errors body is the big one: serialise it once and serve the cached bytes.
        self._errors_body = _chunked_json_list(
            self.dataset.errors, b'{"data":[', b'],"jsonapi":{"version":"1.0"}}')
        self._counts_lock = threading.Lock()
        self._changes = 0  # errors requests answered with errors_changing
        # Set by stop(): releases handlers held by a TEST-ONLY `hang` fault.
        self.stopping = threading.Event()
        self._server: SimulatorServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator is not started")
        host, port = self._server.server_address[:2]
        scheme = "https" if self.config.tls_cert_file else "http"
        return f"{scheme}://{host!s}:{port}"

    def start(self) -> Simulator:
        """Bind and serve; returns once the socket is listening (connections queue from now)."""
        if self._server is not None:
            return self
        self.stopping.clear()
        server = SimulatorServer((self.config.host, self.config.port), SimulatorHandler, self)
        if self.config.tls_cert_file:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.config.tls_cert_file, self.config.tls_key_file)
            # The handshake happens on the first read, in the handler thread, so a client that
            # rejects the certificate cannot stall the accept loop.
            server.socket = context.wrap_socket(server.socket, server_side=True,
                                                do_handshake_on_connect=False)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                  name="polarity-simulator", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop accepting, and cut kept-alive connections so clients see the server gone.

        serve_forever polls every 20 ms, so stopping is quick enough for per-test fixtures.
        """
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def revoke_tokens(self) -> None:
        """Invalidate every issued token now, as a server restart or an admin would."""
        self._auth.revoke_all()

    # -- request pipeline ------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        with self._counts_lock:
            self.counts[(request.method, request.path)] += 1
        if self.config.latency > 0:
            time.sleep(self.config.latency)
        response = self._route(request)
        response.headers.setdefault("Content-Type", JSONAPI)
        hook = self.faults
        if hook is not None:  # TEST-ONLY: fault injection, never Polarity behaviour
            response = hook(request, response)
        return response

    def _route(self, request: Request) -> Response:
        method, path = request.method, request.path
        if path == "/api/users/login":
            return self._login(request) if method == "POST" else self._not_allowed(method, path)
        if path == "/api/users/refresh":
            return self._refresh(request) if method == "GET" else self._not_allowed(method, path)
        if path == "/api/users/logout":
            return self._logout(request) if method == "POST" else self._not_allowed(method, path)
        if path == "/api/integrations" or path.startswith("/api/integrations/"):
            rest = path[len("/api/integrations"):]
            # "errors" is a resource of its own, never an integration id
            if rest == "/errors":
                handler: Callable[[Request], Response] = self._errors
            elif rest == "":
                handler = self._list
            elif rest.count("/") == 1 and rest != "/":
                handler = self._one
            else:
                return _error(404, "Not Found", f"no route for {path}")
            if method != "GET":
                return self._not_allowed(method, path)
            who = self._auth.authenticate(request.headers.get("authorization"))
            return who if isinstance(who, Response) else handler(request)
        return _error(404, "Not Found", f"no route for {path}")

    @staticmethod
    def _not_allowed(method: str, path: str) -> Response:
        return _error(405, "Method Not Allowed", f"{method} is not allowed on {path}")

    # -- authentication --------------------------------------------------------------------

    def _token_response(self, username: str) -> Response:
        token, expires = self._auth.issue(username)
        return _json_response(200, {"data": {
            "token": token,
            "expiration_time": int(expires),
            "users": {"id": "1", "type": "users", "username": username},
        }})

    def _login(self, request: Request) -> Response:
        try:
            body = json.loads(request.body)
        except (UnicodeDecodeError, ValueError):
            return _error(400, "Bad Request", "the request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "Bad Request", "the request body must be a JSON object")
        username, password = body.get("identification"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            return _error(400, "Bad Request", "identification and password are required strings")
        if not self._auth.check_password(username, password):
            return _error(401, "Unauthorized", "invalid username or password")
        return self._token_response(username)

    def _refresh(self, request: Request) -> Response:
        who = self._auth.authenticate(request.headers.get("authorization"))
        if isinstance(who, Response):
            return who
        if isinstance(who, _ApiKey):  # nothing to refresh; unconfirmed what Polarity answers
            return _error(400, "Bad Request", "API keys cannot be refreshed")
        # Unconfirmed whether Polarity revokes the old token on refresh; it stays valid here.
        return self._token_response(who.username)

    def _logout(self, request: Request) -> Response:
        who = self._auth.authenticate(request.headers.get("authorization"))
        if isinstance(who, Response):
            return who
        if isinstance(who, _Session):  # logging out with an API key does not delete the key
            self._auth.revoke(who.token)
        return _json_response(200, {})

    # -- integrations ----------------------------------------------------------------------

    def _list(self, request: Request) -> Response:
        query = request.query
        try:
            size = int(query.get("page[size]", [str(DEFAULT_PAGE_SIZE)])[-1])
            number = int(query.get("page[number]", ["1"])[-1])
        except ValueError:
            return _error(400, "Bad Request", "page[size] and page[number] must be integers")
        if size < 1 or number < 1:
            return _error(400, "Bad Request", "page[size] and page[number] must be at least 1")
        items = self.dataset.integrations
        status = query.get("filter[integration.status]")
        if status is not None:
            items = [item for item in items if item["attributes"].get("status") == status[-1]]
        with_errors = query.get("filter[integration.integration-errors]")
        if with_errors is not None:
            wanted = with_errors[-1].lower()
            if wanted not in ("true", "false"):
                return _error(400, "Bad Request",
                              "filter[integration.integration-errors] must be true or false")
            items = [item for item in items
                     if bool(item["relationships"]["integration-errors"]["data"])
                     == (wanted == "true")]
        page = items[(number - 1) * size: number * size]
        return _json_response(200, {
            "data": page,
            "meta": {"page": {"number": number, "size": size, "total": len(items)}},
        })

    def _one(self, request: Request) -> Response:
        ident = request.path.rsplit("/", 1)[1]
        item = self._by_id.get(ident)
        if item is None:
            return _error(404, "Not Found", f"no integration with id {ident}")
        return _json_response(200, {"data": item})

    def _errors(self, request: Request) -> Response:
        if self.config.errors_forbidden:
            return _error(403, "Forbidden",
                          "only integration managers and admins can view integration errors")
        if not self.config.errors_changing or not self.dataset.errors:
            return Response(200, self._errors_body)
        with self._counts_lock:
            self._changes += 1
            record = self.dataset.errors[self._changes % len(self.dataset.errors)]
            attributes = record["attributes"]
            count = attributes.get("error-count")
            attributes["error-count"] = (count if isinstance(count, int) else 0) + 1
            body = _chunked_json_list(self.dataset.errors, b'{"data":[',
                                      b'],"jsonapi":{"version":"1.0"}}')
        return Response(200, body)
