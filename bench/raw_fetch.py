"""BASELINE (benchmark only, not part of the exporter): raw sequential fetch.

The floor for any sequential client: one keep-alive connection downloads every page of
/api/integrations and the whole /api/integrations/errors body, one request after another, and
parses nothing. Only the login (not timed) reads JSON, to get the token.

    python bench/raw_fetch.py --url URL --pages N --page-size S --repeat R

Credentials from env BENCH_USERNAME / BENCH_PASSWORD. Prints one JSON line:
{"walls": [seconds per run], "cpu": [seconds per run], "bytes": body bytes per run}.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import requests


def fetch_all(session: requests.Session, url: str, pages: int, page_size: int) -> int:
    received = 0
    for number in range(1, pages + 1):
        response = session.get(f"{url}/api/integrations",
                               params={"page[size]": page_size, "page[number]": number},
                               timeout=60)
        response.raise_for_status()
        received += len(response.content)
    with session.get(f"{url}/api/integrations/errors", stream=True, timeout=60) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1 << 20):
            received += len(chunk)
    return received


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--pages", type=int, required=True)
    parser.add_argument("--page-size", type=int, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    session = requests.Session()
    session.headers.update({"Accept": "application/vnd.api+json",
                            "Content-Type": "application/vnd.api+json"})
    login = session.post(f"{args.url}/api/users/login", timeout=60, data=json.dumps(
        {"identification": os.environ["BENCH_USERNAME"],
         "password": os.environ["BENCH_PASSWORD"]}))
    login.raise_for_status()
    session.headers["Authorization"] = f"Bearer {login.json()['data']['token']}"
    walls, cpus, received = [], [], 0
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        received = fetch_all(session, args.url, args.pages, args.page_size)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    print(json.dumps({"walls": walls, "cpu": cpus, "bytes": received}), flush=True)


if __name__ == "__main__":
    main()
