"""BASELINE (benchmark only, not part of the exporter): the "straightforward exporter".

What a user would write from Polarity's API documentation: sequential `requests.request(...)`
calls without a session, `json.loads` of each whole body (`response.json()`), and module-level
`prometheus_client` Gauges with labels, refreshed on every GET /metrics. It exists only so the
benchmark can show what polarity-exporter costs against "what people would write instead".
Deliberately not hardened (no paging guards, no code cap, no deadline).

    python bench/straightforward_exporter.py --url URL --port P --page-size S

Credentials from env BENCH_USERNAME / BENCH_PASSWORD. Prints "listening" once it serves.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import requests
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

HEADERS = {"Content-Type": "application/vnd.api+json", "Accept": "application/vnd.api+json"}

UP = Gauge("polarity_up", "Polarity reachable")
INFO = Gauge("polarity_integration_info", "info",
             ["integration_id", "name", "acronym", "version"])
STATUS = Gauge("polarity_integration_status", "status", ["integration_id", "status"])
RUNNING = Gauge("polarity_integration_running", "running", ["integration_id"])
ERRORS = Gauge("polarity_integration_errors", "errors", ["integration_id"])
OCCURRENCES = Gauge("polarity_integration_error_occurrences_total", "occurrences",
                    ["integration_id", "code"])
LAST = Gauge("polarity_integration_error_last_occurrence_timestamp_seconds", "last",
             ["integration_id", "code"])
USERS = Gauge("polarity_integration_error_affected_users", "users", ["integration_id"])
ALL = (INFO, STATUS, RUNNING, ERRORS, OCCURRENCES, LAST, USERS)


class Polarity:
    def __init__(self, url: str, page_size: int) -> None:
        self.url = url
        self.page_size = page_size
        self.token = ""

    def login(self) -> None:
        response = requests.request("POST", self.url + "/api/users/login", headers=HEADERS,
                                    json={"identification": os.environ["BENCH_USERNAME"],
                                          "password": os.environ["BENCH_PASSWORD"]}, timeout=60)
        response.raise_for_status()
        self.token = response.json()["data"]["token"]

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        headers = {**HEADERS, "Authorization": "Bearer " + self.token}
        response = requests.request("GET", self.url + path, headers=headers, params=params,
                                    timeout=60)
        if response.status_code == 401:
            self.login()
            return self.get(path, params)
        response.raise_for_status()
        return response.json()

    def integrations(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.get("/api/integrations",
                            {"page[size]": self.page_size, "page[number]": page})
            items += body["data"]
            if not body["data"] or len(items) >= body["meta"]["page"]["total"]:
                return items
            page += 1


def update(polarity: Polarity) -> None:
    for gauge in ALL:
        gauge.clear()
    for item in polarity.integrations():
        attrs = item["attributes"]
        INFO.labels(item["id"], attrs.get("name", ""), attrs.get("acronym", ""),
                    attrs.get("version", "")).set(1)
        STATUS.labels(item["id"], str(attrs.get("status"))).set(1)
        RUNNING.labels(item["id"]).set(1 if attrs.get("status") == "running" else 0)
        ERRORS.labels(item["id"]).set(0)
        USERS.labels(item["id"]).set(0)
    newest: dict[tuple[str, str], float] = {}
    users: dict[str, set[str]] = defaultdict(set)
    for error in polarity.get("/api/integrations/errors")["data"]:
        attrs = error["attributes"]
        iid, code = attrs["integration-id"], attrs["code"]
        ERRORS.labels(iid).inc()
        OCCURRENCES.labels(iid, code).inc(attrs["error-count"])
        when = datetime.fromisoformat(attrs["occurred-on"].replace("Z", "+00:00")).timestamp()
        newest[(iid, code)] = max(when, newest.get((iid, code), 0.0))
        for user in (attrs.get("meta") or {}).get("affected_users") or []:
            users[iid].add(user["id"])
    for (iid, code), when in newest.items():
        LAST.labels(iid, code).set(when)
    for iid, ids in users.items():
        USERS.labels(iid).set(len(ids))
    UP.set(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--page-size", type=int, default=100)
    args = parser.parse_args()
    polarity = Polarity(args.url, args.page_size)
    polarity.login()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                update(polarity)
                body = generate_latest()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            else:
                body = b"ok\n"
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", args.port), Handler)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
