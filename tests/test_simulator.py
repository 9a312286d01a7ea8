"""The simulator over real HTTP: it must model the documented Polarity API and its quirks.

Expected values are computed from `sim.dataset`, never hard-coded, so a change of generator
keeps the tests meaningful.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import SIM_PASSWORD, SIM_USER, free_port

from polarity_exporter.simulator import Simulator, SimulatorConfig

JSONAPI = "application/vnd.api+json"
HEADERS = {"Content-Type": JSONAPI, "Accept": JSONAPI}


def login(sim: Simulator, user: str = SIM_USER, password: str = SIM_PASSWORD) -> requests.Response:
    return requests.post(f"{sim.url}/api/users/login", headers=HEADERS, timeout=10,
                         json={"identification": user, "password": password})


def token_of(sim: Simulator) -> str:
    response = login(sim)
    assert response.status_code == 200
    return str(response.json()["data"]["token"])


def get(sim: Simulator, path: str, token: str | None, **params: Any) -> requests.Response:
    headers = dict(HEADERS)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(f"{sim.url}{path}", headers=headers, params=params, timeout=30)


def all_pages(sim: Simulator, token: str, size: int, **filters: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    number = 1
    while True:
        body = get(sim, "/api/integrations", token, **{"page[size]": size,
                                                         "page[number]": number}, **filters).json()
        items += body["data"]
        if number * size >= body["meta"]["page"]["total"]:
            return items
        number += 1


def error_detail(response: requests.Response) -> str:
    assert response.headers["Content-Type"] == JSONAPI
    errors = response.json()["errors"]
    assert errors[0]["status"] == str(response.status_code)
    return str(errors[0]["detail"])


@pytest.fixture
def short_lived() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(seed=3, integrations=5, errors=10, token_lifetime=0.3,
                                   users={SIM_USER: SIM_PASSWORD})) as sim:
        yield sim


# -- authentication ------------------------------------------------------------------------

def test_login_returns_token_and_expiration_time(simulator: Simulator) -> None:
    before = time.time()
    response = login(simulator)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JSONAPI
    data = response.json()["data"]
    assert isinstance(data["token"], str) and data["token"]
    assert before + 3600 - 5 <= data["expiration_time"] <= time.time() + 3600 + 1
    assert isinstance(data["users"], dict)


def test_login_with_wrong_password_is_401(simulator: Simulator) -> None:
    response = login(simulator, password="wrong")
    assert response.status_code == 401
    assert "invalid username or password" in error_detail(response)


def test_login_with_malformed_body_is_400(simulator: Simulator) -> None:
    for body in (b"not json", b"[]", json.dumps({"username": SIM_USER}).encode()):
        response = requests.post(f"{simulator.url}/api/users/login", data=body,
                                 headers=HEADERS, timeout=10)
        assert response.status_code == 400, body
        error_detail(response)


def test_missing_or_invalid_token_is_401(simulator: Simulator) -> None:
    assert get(simulator, "/api/integrations", None).status_code == 401
    response = get(simulator, "/api/integrations", "not-a-token")
    assert response.status_code == 401
    error_detail(response)


def test_refresh_issues_a_new_working_token(simulator: Simulator) -> None:
    old = token_of(simulator)
    response = get(simulator, "/api/users/refresh", old)
    assert response.status_code == 200
    new = response.json()["data"]["token"]
    assert new != old
    assert isinstance(response.json()["data"]["expiration_time"], int)
    assert get(simulator, "/api/integrations", new).status_code == 200


def test_logout_invalidates_the_token(simulator: Simulator) -> None:
    token = token_of(simulator)
    other = token_of(simulator)
    response = requests.post(f"{simulator.url}/api/users/logout", timeout=10,
                             headers={**HEADERS, "Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert get(simulator, "/api/integrations", token).status_code == 401
    assert get(simulator, "/api/integrations", other).status_code == 200


def test_token_expires_after_its_lifetime(short_lived: Simulator) -> None:
    issued = time.monotonic()
    token = token_of(short_lived)
    assert get(short_lived, "/api/integrations", token).status_code == 200
    # Expiry is a wall-clock deadline, not a readiness condition: waiting past it is the test.
    time.sleep(max(0.0, issued + 0.35 - time.monotonic()))
    response = get(short_lived, "/api/integrations", token)
    assert response.status_code == 401
    assert "expired" in error_detail(response)


def test_revoke_tokens_invalidates_every_issued_token(simulator: Simulator) -> None:
    tokens = [token_of(simulator) for _ in range(3)]
    simulator.revoke_tokens()
    assert [get(simulator, "/api/integrations", t).status_code for t in tokens] == [401] * 3
    assert get(simulator, "/api/integrations", token_of(simulator)).status_code == 200


def test_api_key_is_accepted_as_bearer() -> None:
    config = SimulatorConfig(integrations=3, errors=4, api_keys={"good-key": time.time() + 600})
    with Simulator(config) as sim:
        assert get(sim, "/api/integrations", "good-key").status_code == 200
        assert get(sim, "/api/integrations/errors", "good-key").status_code == 200


def test_expired_api_key_is_401_saying_it_expired() -> None:
    config = SimulatorConfig(integrations=3, errors=4, api_keys={"old-key": time.time() - 1})
    with Simulator(config) as sim:
        response = get(sim, "/api/integrations", "old-key")
        assert response.status_code == 401
        detail = error_detail(response)
        assert "API key" in detail and "expired" in detail


def test_counts_record_method_and_path_without_query(simulator: Simulator) -> None:
    token = token_of(simulator)
    get(simulator, "/api/integrations", token, **{"page[size]": 1})
    get(simulator, "/api/integrations", token, **{"page[size]": 2})
    assert simulator.counts[("POST", "/api/users/login")] == 1
    assert simulator.counts[("GET", "/api/integrations")] == 2


# -- integrations --------------------------------------------------------------------------

def test_default_page_size_is_100() -> None:
    with Simulator(SimulatorConfig(integrations=130, errors=20,
                                   users={SIM_USER: SIM_PASSWORD})) as sim:
        body = get(sim, "/api/integrations", token_of(sim)).json()
        assert body["meta"]["page"] == {"number": 1, "size": 100, "total": 130}
        assert body["data"] == sim.dataset.integrations[:100]


def test_paging_returns_every_integration_once_in_order(simulator: Simulator) -> None:
    items = all_pages(simulator, token_of(simulator), size=7)
    assert items == simulator.dataset.integrations


def test_page_beyond_the_end_is_empty_with_total(simulator: Simulator) -> None:
    body = get(simulator, "/api/integrations", token_of(simulator),
               **{"page[size]": 10, "page[number]": 99}).json()
    assert body["data"] == []
    assert body["meta"]["page"]["total"] == len(simulator.dataset.integrations)


def test_bad_page_parameters_are_400(simulator: Simulator) -> None:
    token = token_of(simulator)
    for params in ({"page[size]": "x"}, {"page[size]": 0}, {"page[number]": 0}):
        assert get(simulator, "/api/integrations", token, **params).status_code == 400


def test_status_filter_counts_and_pages_the_filtered_set(simulator: Simulator) -> None:
    token = token_of(simulator)
    statuses = Counter(i["attributes"]["status"] for i in simulator.dataset.integrations)
    for status, count in statuses.items():
        one = get(simulator, "/api/integrations", token,
                  **{"page[size]": 1, "filter[integration.status]": status}).json()
        assert one["meta"]["page"]["total"] == count
        items = all_pages(simulator, token, 3, **{"filter[integration.status]": status})
        assert items == [i for i in simulator.dataset.integrations
                         if i["attributes"]["status"] == status]


def test_errors_filter_keeps_integrations_with_errors(simulator: Simulator) -> None:
    expected = [i for i in simulator.dataset.integrations
                if i["relationships"]["integration-errors"]["data"]]
    token = token_of(simulator)
    items = all_pages(simulator, token, 4, **{"filter[integration.integration-errors]": "true"})
    assert items == expected
    both = get(simulator, "/api/integrations", token, **{
        "page[size]": 1, "filter[integration.integration-errors]": "true",
        "filter[integration.status]": "running"}).json()
    assert both["meta"]["page"]["total"] == sum(
        1 for i in expected if i["attributes"]["status"] == "running")


def test_single_integration_by_id(simulator: Simulator) -> None:
    item = simulator.dataset.integrations[-1]
    response = get(simulator, f"/api/integrations/{item['id']}", token_of(simulator))
    assert response.status_code == 200
    assert response.json()["data"] == item
    assert get(simulator, "/api/integrations/nope", token_of(simulator)).status_code == 404


def test_integration_items_have_documented_shape(simulator: Simulator) -> None:
    for item in simulator.dataset.integrations:
        assert item["type"] == "integrations"
        assert item["links"]["self"] == f"/api/integrations/{item['id']}"
        for attribute in ("name", "acronym", "description", "status", "autosubscribe",
                          "entity-types"):
            assert attribute in item["attributes"]
        assert all(ref["type"] == "integration-errors"
                   for ref in item["relationships"]["integration-errors"]["data"])
        assert "integration-options" in item["relationships"]


# -- errors ---------------------------------------------------------------------------------

def test_errors_endpoint_returns_all_records(simulator: Simulator) -> None:
    response = get(simulator, "/api/integrations/errors", token_of(simulator))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JSONAPI
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.json() == {"data": simulator.dataset.errors, "jsonapi": {"version": "1.0"}}


def test_errors_endpoint_forbidden_is_403() -> None:
    config = SimulatorConfig(integrations=3, errors=5, errors_forbidden=True,
                             users={SIM_USER: SIM_PASSWORD})
    with Simulator(config) as sim:
        token = token_of(sim)
        response = get(sim, "/api/integrations/errors", token)
        assert response.status_code == 403
        error_detail(response)
        assert get(sim, "/api/integrations", token).status_code == 200


def test_relationships_match_the_errors_endpoint(simulator: Simulator) -> None:
    errors = get(simulator, "/api/integrations/errors", token_of(simulator)).json()["data"]
    by_owner: dict[str, set[str]] = {}
    for err in errors:
        owner = err["attributes"]["integration-id"]
        assert err["relationships"]["integration"]["data"] == {"id": owner,
                                                               "type": "integrations"}
        by_owner.setdefault(owner, set()).add(err["id"])
    for item in simulator.dataset.integrations:
        refs = item["relationships"]["integration-errors"]["data"]
        assert {ref["id"] for ref in refs} == by_owner.get(item["id"], set())
        assert len(refs) == len(by_owner.get(item["id"], set()))


def test_orphan_errors_are_present_and_unreferenced(simulator: Simulator) -> None:
    listed = {i["id"] for i in simulator.dataset.integrations}
    orphans = [e for e in simulator.dataset.errors
               if e["attributes"]["integration-id"] not in listed]
    assert orphans
    referenced = {ref["id"] for i in simulator.dataset.integrations
                  for ref in i["relationships"]["integration-errors"]["data"]}
    assert not {e["id"] for e in orphans} & referenced


def test_some_integrations_have_no_errors(simulator: Simulator) -> None:
    assert any(not i["relationships"]["integration-errors"]["data"]
               for i in simulator.dataset.integrations)


def test_documented_quirks_are_present(simulator: Simulator) -> None:
    integrations, errors = simulator.dataset.integrations, simulator.dataset.errors
    attributes = [e["attributes"] for e in errors]
    assert {i["attributes"]["status"] for i in integrations} >= {"running", "stopped", "failed"}
    assert any("version" not in i["attributes"] for i in integrations)
    assert any(any(c in i["attributes"]["name"] for c in '"\\') for i in integrations)
    assert any(not i["attributes"]["name"].isascii() for i in integrations)
    codes = {a["code"] for a in attributes}
    assert any("\n" in c for c in codes) and any('"' in c for c in codes)
    assert any("\\" in c for c in codes) and any(not c.isascii() for c in codes)
    assert {type(a["status"]) for a in attributes} == {int, str}
    occurred = [a["occurred-on"] for a in attributes]
    assert any(" " in o and o.endswith("Z") for o in occurred)
    assert any("T" in o and o.endswith("Z") for o in occurred)
    assert any(o.endswith("+02:00") for o in occurred)
    assert any("affected_users" not in a["meta"] for a in attributes)
    assert all(isinstance(a["error-count"], int) and a["error-count"] > 0 for a in attributes)


def test_codes_repeat_and_some_integration_exceeds_20_codes(simulator: Simulator) -> None:
    codes: dict[str, list[str]] = {}
    for err in simulator.dataset.errors:
        codes.setdefault(err["attributes"]["integration-id"], []).append(err["attributes"]["code"])
    assert any(len(set(c)) < len(c) for c in codes.values())
    assert max(len(set(c)) for c in codes.values()) > 20


def test_affected_users_overlap_between_records(simulator: Simulator) -> None:
    seen = Counter(user["id"] for e in simulator.dataset.errors
                   for user in e["attributes"]["meta"].get("affected_users", []))
    assert seen and max(seen.values()) > 1


def test_dataset_is_reproducible_from_seed() -> None:
    def make(seed: int) -> Simulator:
        return Simulator(SimulatorConfig(seed=seed, integrations=12, errors=40))

    first, again, other = make(11), make(11), make(12)
    assert first.dataset == again.dataset
    assert first.dataset != other.dataset


def test_meta_bytes_sets_stack_size() -> None:
    sim = Simulator(SimulatorConfig(integrations=2, errors=5, meta_bytes=5000))
    assert all(len(e["attributes"]["meta"]["stack"]) == 5000 for e in sim.dataset.errors)


# -- server behaviour -----------------------------------------------------------------------

def test_unknown_path_is_404(simulator: Simulator) -> None:
    response = get(simulator, "/api/nothing-here", token_of(simulator))
    assert response.status_code == 404
    error_detail(response)


def test_connection_is_kept_alive_across_requests(simulator: Simulator) -> None:
    host, port = simulator.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {**HEADERS, "Authorization": f"Bearer {token_of(simulator)}"}
        sockets = []
        for path in ("/api/integrations", "/api/integrations/errors", "/api/nope"):
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            assert not response.will_close
            sockets.append(conn.sock)
        assert sockets[0] is not None and sockets.count(sockets[0]) == 3
    finally:
        conn.close()


@pytest.mark.timing
def test_latency_delays_each_request() -> None:
    with Simulator(SimulatorConfig(integrations=1, errors=1, latency=0.3)) as sim:
        started = time.monotonic()
        get(sim, "/api/integrations", None)
        assert time.monotonic() - started >= 0.3


def test_stop_refuses_new_connections() -> None:
    sim = Simulator(SimulatorConfig(integrations=1, errors=1)).start()
    url = sim.url
    sim.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/api/integrations", timeout=5)


def test_standalone_serves_and_stops_on_sigterm() -> None:
    port = free_port()
    env = {"SIM_USERNAME": "alice", "SIM_PASSWORD": "s3cret", "SIM_API_KEY": "key-1",
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "polarity_exporter.simulator", "--port", str(port),
         "--integrations", "4", "--errors", "6", "--errors-forbidden"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"simulator listening on http://127.0.0.1:{port}"
        url = f"http://127.0.0.1:{port}"
        response = requests.post(f"{url}/api/users/login", timeout=10,
                                 json={"identification": "alice", "password": "s3cret"})
        assert response.status_code == 200
        headers = {"Authorization": "Bearer key-1"}
        assert requests.get(f"{url}/api/integrations", headers=headers,
                            timeout=10).json()["meta"]["page"]["total"] == 4
        assert requests.get(f"{url}/api/integrations/errors", headers=headers,
                            timeout=10).status_code == 403
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stop_cuts_kept_alive_connections() -> None:
    sim = Simulator(SimulatorConfig(integrations=1, errors=1)).start()
    host, port = sim.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/api/integrations")
        conn.getresponse().read()
        sim.stop()
        with pytest.raises((OSError, http.client.HTTPException)):
            conn.request("GET", "/api/integrations")
            conn.getresponse().read()
    finally:
        conn.close()
        sim.stop()
