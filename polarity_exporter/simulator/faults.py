"""TEST-ONLY fault modes for the simulator. None of this is Polarity's behaviour.

Each function returns a `FaultHook` to assign to `Simulator.faults`. A hook sees the request and
the response Polarity would give and returns what to send instead: another status or body, or a
response with the test-only socket fields (`hang`, `trickle`, `cut_after`) set. Hooks compose with
`chain`, and `first(n, hook)` limits a fault to the first n matching requests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from polarity_exporter.simulator.http import Request, Response
from polarity_exporter.simulator.server import FaultHook

INTEGRATIONS = "/api/integrations"
ERRORS = "/api/integrations/errors"
LOGIN = "/api/users/login"
REFRESH = "/api/users/refresh"
LOGOUT = "/api/users/logout"

Match = Callable[[Request], bool]


def on(path: str | None = None, method: str | None = None, page: int | None = None) -> Match:
    """A request predicate: exact path, method, and (for listings) page[number]."""
    def match(request: Request) -> bool:
        if path is not None and request.path != path:
            return False
        if method is not None and request.method != method:
            return False
        return page is None or request.query.get("page[number]", ["1"])[-1] == str(page)
    return match


def _when(match: Match, make: Callable[[Request, Response], Response]) -> FaultHook:
    def hook(request: Request, response: Response) -> Response:
        return make(request, response) if match(request) else response
    return hook


def chain(*hooks: FaultHook) -> FaultHook:
    def hook(request: Request, response: Response) -> Response:
        for each in hooks:
            response = each(request, response)
        return response
    return hook


def first(n: int, hook: FaultHook, match: Match) -> FaultHook:
    """Apply `hook` only to the first n requests that `match`; plain behaviour afterwards."""
    remaining = [n]
    lock = threading.Lock()

    def limited(request: Request, response: Response) -> Response:
        if not match(request):
            return response
        with lock:
            if remaining[0] <= 0:
                return response
            remaining[0] -= 1
        return hook(request, response)
    return limited


# --- statuses and bodies ----------------------------------------------------------------------

def status(code: int, match: Match, headers: dict[str, str] | None = None,
           body: bytes | None = None) -> FaultHook:
    """Answer `code` (with a JSON:API error body unless one is given)."""
    payload = body if body is not None else json.dumps(
        {"errors": [{"status": str(code), "title": "Injected fault",
                     "detail": f"test-only fault: HTTP {code}"}]}).encode()
    return _when(match, lambda _req, _resp: Response(
        code, [payload], {"Content-Type": "application/vnd.api+json", **(headers or {})}))


def echo_request(code: int, match: Match, where: str = "detail") -> FaultHook:
    """Answer `code` quoting the request's credentials (its Authorization header and body), as
    careless servers and proxies do: in the error's detail (`where="detail"`; "cut": starting
    just before the 200th character, where the message is cut; "upper": upper-cased), for a
    3xx in the Location's path, or the Authorization's value alone in a header ("retry-after",
    "content-type")."""
    def make(request: Request, _response: Response) -> Response:
        authorization = request.headers.get("authorization", "")
        echoed = f"{authorization} {request.body.decode('utf-8', 'replace')}"
        if 300 <= code < 400:
            return Response(code, [b""], {"Location": "/login/" + quote(echoed, safe="")})
        if where == "retry-after":
            return Response(code, [b"{}"], {"Content-Type": "application/vnd.api+json",
                                           "Retry-After": authorization})
        if where == "content-type":
            return Response(code, [b"{}"], {"Content-Type": f"text/html; x={authorization}"})
        detail = {"detail": f"rejected: {echoed}", "cut": f"{'x' * 190} {echoed}",
                  "upper": f"rejected: {echoed.upper()}"}[where]
        payload = json.dumps({"errors": [{"status": str(code), "title": "Injected fault",
                                          "detail": detail}]}).encode()
        return Response(code, [payload], {"Content-Type": "application/vnd.api+json"})
    return _when(match, make)


def huge_body(code: int, megabytes: int, match: Match) -> FaultHook:
    """Answer `code` with a JSON-labelled body of `megabytes` MiB (one 64 KiB block repeated, so
    the simulator itself holds only the block)."""
    block = b"x" * 65536
    chunks = [block] * (megabytes * 16)
    return _when(match, lambda _req, _resp: Response(
        code, chunks, {"Content-Type": "application/vnd.api+json"}))


def body(raw: bytes, match: Match, content_type: str = "application/vnd.api+json",
         code: int = 200) -> FaultHook:
    """Send these bytes instead of the real body."""
    return _when(match, lambda _req, _resp: Response(code, [raw], {"Content-Type": content_type}))


def transform_json(fn: Callable[[Any, Request], Any], match: Match) -> FaultHook:
    """Decode the real JSON body, let `fn` rewrite it, send the result."""
    def make(request: Request, response: Response) -> Response:
        if response.status != 200:
            return response
        document = json.loads(b"".join(response.chunks))
        rewritten = fn(document, request)
        return replace(response, chunks=[json.dumps(rewritten, ensure_ascii=False).encode()])
    return _when(match, make)


def truncate(keep_fraction: float, match: Match) -> FaultHook:
    """Send a well-formed Content-Length with a body cut short: truncated JSON."""
    def make(_request: Request, response: Response) -> Response:
        whole = b"".join(response.chunks)
        return replace(response, chunks=[whole[: int(len(whole) * keep_fraction)]])
    return _when(match, make)


# --- sockets ----------------------------------------------------------------------------------

def hang(seconds: float, match: Match) -> FaultHook:
    """Accept the request and send nothing for `seconds` (or until the simulator stops)."""
    return _when(match, lambda _req, resp: replace(resp, hang=seconds))


def trickle(interval: float, match: Match) -> FaultHook:
    """Send the headers at once, then the body 16 bytes at a time, `interval` seconds apart."""
    return _when(match, lambda _req, resp: replace(resp, trickle=interval))


def reset(match: Match) -> FaultHook:
    """Reset the connection (TCP RST) instead of answering."""
    return _when(match, lambda _req, resp: replace(resp, reset=True))


def trickle_headers(interval: float, match: Match) -> FaultHook:
    """Send a status line, then one byte of a header every `interval` seconds, never ending."""
    return _when(match, lambda _req, resp: replace(resp, trickle_headers=interval))


def trickle_chunk_size(interval: float, match: Match) -> FaultHook:
    """Send chunked headers, then a chunk-size line one digit every `interval` seconds."""
    return _when(match, lambda _req, resp: replace(resp, trickle_chunk_size=interval))


def cut(after_bytes: int, match: Match) -> FaultHook:
    """Announce the full Content-Length, send `after_bytes` of the body, drop the connection."""
    return _when(match, lambda _req, resp: replace(resp, cut_after=after_bytes))


# --- paging that lies ---------------------------------------------------------------------------

def _page_number(request: Request) -> int:
    return int(request.query.get("page[number]", ["1"])[-1])


def inflate_total(extra: int) -> FaultHook:
    """meta.page.total claims `extra` more integrations than the pages hold."""
    def fn(document: Any, _request: Request) -> Any:
        document["meta"]["page"]["total"] += extra
        return document
    return transform_json(fn, on(INTEGRATIONS))


def growing_total(step: int) -> FaultHook:
    """meta.page.total grows by `step` on every page after the first."""
    def fn(document: Any, request: Request) -> Any:
        document["meta"]["page"]["total"] += step * (_page_number(request) - 1)
        return document
    return transform_json(fn, on(INTEGRATIONS))


def repeat_page(served: int, instead_of: int, sim_pages: Callable[[int], Any]) -> FaultHook:
    """Serve page `served` again when page `instead_of` is asked for."""
    def fn(document: Any, request: Request) -> Any:
        document["data"] = sim_pages(served)
        return document
    return transform_json(fn, on(INTEGRATIONS, page=instead_of))


def endless_pages(total: int) -> FaultHook:
    """Claim a huge total and answer every page number with a full page of fresh ids."""
    def fn(document: Any, request: Request) -> Any:
        number = _page_number(request)
        size = int(request.query.get("page[size]", ["100"])[-1])
        template = document["data"][0] if document["data"] else {"type": "integrations"}
        document["data"] = [{**template, "id": f"endless_{number}_{i}"} for i in range(size)]
        document["meta"]["page"]["total"] = total
        return document
    return transform_json(fn, on(INTEGRATIONS))
