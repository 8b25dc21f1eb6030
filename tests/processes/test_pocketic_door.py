"""The PocketIC door as its clients start it (`icllm-emulator-pocket-ic --port-file PATH`), driven with
what a broken or mismatched client sends: each mistake is a 4xx with a message, never a 500."""

from __future__ import annotations

import base64
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.waiting import wait_until

LAUNCHER = Path(sys.executable).with_name("icllm-emulator-pocket-ic")
NEW_SUBNET = {"state_config": "New", "instruction_config": "Production", "dts_flag": "Enabled"}
# What @dfinity/pic 0.23 sends for one application subnet.
CREATE_BODY = {
    "subnet_config_set": {
        "application": [{**NEW_SUBNET, "cost_schedule": "Normal"}],
        "system": [],
        "cloud_engine": [],
        "verified_application": [],
    }
}


class Door:
    def __init__(self, process: subprocess.Popen[bytes], port_file: Path) -> None:
        self.process = process
        self.port_file = port_file
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def create(self) -> int:
        response = self.http.post("/instances", json=CREATE_BODY)
        assert response.status_code == 201 or response.status_code == 200, response.text
        return int(response.json()["Created"]["instance_id"])


def start(tmp_path: Path, *args: str) -> Door:
    port_file = tmp_path / "pocket_ic.port"
    log = tmp_path / "door.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(LAUNCHER), "--port-file", str(port_file), *args], stdout=out, stderr=out
        )
    wait_until(lambda: port_file.exists() or process.poll() is not None, "the port file", timeout=60)
    assert process.poll() is None, log.read_text()
    assert port_file.read_text().endswith("\n")  # PocketIC's Python client reads up to the newline
    return Door(process, port_file)


def stop(door: Door) -> None:
    door.http.close()
    if door.process.poll() is None:
        door.process.send_signal(signal.SIGTERM)
        door.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    started = start(tmp_path_factory.mktemp("door"), "--max-instances", "3")
    try:
        yield started
    finally:
        stop(started)


@pytest.fixture
def door(server: Door) -> Iterator[Door]:
    """The module's server, with no instance left over from the test before."""
    yield server
    for instance_id, state in enumerate(server.http.get("/instances").json()):
        if state == "Available":
            server.http.delete(f"/instances/{instance_id}")


def test_version_is_the_line_the_rust_crate_compares() -> None:
    result = subprocess.run([str(LAUNCHER), "--version"], capture_output=True, text=True, timeout=60)
    assert result.stdout == "pocket-ic-server 14.0.0\n"


def test_a_second_server_on_a_live_port_file_leaves_the_first_serving(door: Door) -> None:
    second = subprocess.run(
        [str(LAUNCHER), "--port-file", str(door.port_file)], capture_output=True, timeout=60
    )
    assert second.returncode == 0
    assert door.http.get("/instances").status_code == 200


def test_a_new_instance_starts_at_genesis_and_time_only_moves_forward(door: Door) -> None:
    instance = door.create()
    assert door.http.get(f"/instances/{instance}/read/get_time").json() == {
        "nanos_since_epoch": 1_620_328_630_000_000_000
    }
    later = 1_620_328_630_000_000_000 + 10**18  # an exact 19-digit integer survives the round trip
    assert door.http.post(
        f"/instances/{instance}/update/set_time", json={"nanos_since_epoch": later}
    ).is_success
    assert door.http.get(f"/instances/{instance}/read/get_time").json()["nanos_since_epoch"] == later
    back = door.http.post(f"/instances/{instance}/update/set_time", json={"nanos_since_epoch": later - 1})
    assert back.status_code == 400 and "in the past" in back.json()["message"]


def test_unknown_and_deleted_instances_are_named(door: Door) -> None:
    instance = door.create()
    assert door.http.delete(f"/instances/{instance}").is_success
    gone = door.http.get(f"/instances/{instance}/read/get_time")
    assert gone.status_code == 410
    assert gone.json()["message"] == f"PocketIC instance {instance} was deleted (deleted by its client)"
    unknown = door.http.get("/instances/9999/read/get_time")
    assert unknown.status_code == 404 and "no PocketIC instance 9999" in unknown.json()["message"]
    bad = door.http.get("/instances/x/read/get_time")
    assert bad.status_code == 400 and "is a number" in bad.json()["message"]
    assert door.http.get("/instances").json()[instance] == "Deleted"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "is not JSON"),
        (b'["a list"]', "the body is a JSON object"),
        (
            b'{"sender": "BA==", "canister_id": "AA==", "method": "m", "payload": "%%%", '
            b'"effective_principal": "None"}',
            "'payload' is not base64",
        ),
        (
            b'{"sender": "BA==", "canister_id": "AA==", "method": 7, "payload": "", '
            b'"effective_principal": "None"}',
            "'method' is a str",
        ),
        (
            b'{"sender": "BA==", "canister_id": "AA==", "method": "m", "payload": "", '
            b'"effective_principal": {"Subnet": "AA=="}}',
            "effective_principal is",
        ),
        (
            b'{"sender": "' + base64.b64encode(bytes(30)) + b'", "canister_id": "AA==", "method": "m", '
            b'"payload": "", "effective_principal": "None"}',
            "a principal has at most 29",
        ),
    ],
)
def test_malformed_requests_are_400_with_a_message(door: Door, body: bytes, says: str) -> None:
    instance = door.create()
    response = door.http.post(
        f"/instances/{instance}/update/submit_ingress_message",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert says in response.json()["message"]


def test_a_huge_body_is_refused_before_it_is_read(door: Door) -> None:
    instance = door.create()
    response = door.http.post(
        f"/instances/{instance}/update/submit_ingress_message",
        content=b"{" + b" " * (5 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert "takes at most 4194304" in response.json()["message"]


def test_a_client_of_another_protocol_version_is_told_so(door: Door) -> None:
    old = door.http.post("/instances", json={"subnet_config_set": {"application": 1, "nns": False}})
    assert old.status_code == 400 and "speaks the REST API of PocketIC server 14.0.0" in old.json()["message"]
    unknown = door.http.post("/instances/0/update/execute_ingress_message", json={})
    assert (
        unknown.status_code == 404
        and "not an endpoint of PocketIC server 14.0.0" in unknown.json()["message"]
    )
    state = door.http.post(
        "/instances", json={"subnet_config_set": {"nns": {"state_config": {"FromPath": "/tmp/x"}}}}
    )
    assert state.status_code == 400 and "loading subnet state" in state.json()["message"]


def test_instances_beyond_the_limit_are_refused_with_the_reason(door: Door) -> None:
    first, *_ = [door.create() for _ in range(3)]
    refused = door.http.post("/instances", json=CREATE_BODY)
    assert refused.status_code == 429
    assert "holds 3 PocketIC instances at once (--max-instances)" in refused.json()["message"]
    assert door.http.delete(f"/instances/{first}").is_success
    door.create()  # room again


def test_an_instance_unused_for_the_ttl_is_freed_and_an_idle_server_exits(tmp_path: Path) -> None:
    door = start(tmp_path, "--ttl", "1")
    try:
        instance = door.create()
        # listing the instances uses none of them
        wait_until(lambda: door.http.get("/instances").json() == ["Deleted"], "the instance to be freed")
        freed = door.http.get(f"/instances/{instance}/read/get_time")
        assert freed.status_code == 410
        assert "unused for more than --ttl 1 s" in freed.json()["message"]
        door.process.wait(timeout=30)  # no instance and no request for a second: the server leaves
        assert not door.port_file.exists()
    finally:
        stop(door)


def test_not_emulated_endpoints_say_so(door: Door) -> None:
    gateway = door.http.post("/http_gateway", json={"forward_to": {"PocketIcInstance": 0}})
    assert gateway.status_code == 501 and "not emulated" in gateway.json()["message"]
    instance = door.create()
    key = door.http.post(f"/instances/{instance}/read/pub_key", json={"subnet_id": "AA=="})
    assert key.status_code == 501 and "threshold BLS key" in key.json()["message"]


def test_the_launcher_is_installed() -> None:
    assert shutil.which(str(LAUNCHER)) is not None


def test_an_instance_may_start_at_a_later_time_but_not_before_genesis(door: Door) -> None:
    later = 1_700_000_000_000_000_000
    body = {**CREATE_BODY, "initial_time": {"Timestamp": {"nanos_since_epoch": later}}}
    created = door.http.post("/instances", json=body).json()["Created"]["instance_id"]
    assert door.http.get(f"/instances/{created}/read/get_time").json() == {"nanos_since_epoch": later}
    early = {**CREATE_BODY, "initial_time": {"Timestamp": {"nanos_since_epoch": 5}}}
    refused = door.http.post("/instances", json=early)
    assert refused.status_code == 400 and "before PocketIC's genesis" in refused.json()["message"]
    gateway = door.http.post("/instances", json={**CREATE_BODY, "http_gateway_config": {"port": 1}})
    assert (
        gateway.status_code == 400 and "the HTTP gateway, which is not emulated" in gateway.json()["message"]
    )


def test_the_door_listens_on_loopback_only(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(LAUNCHER), "--port-file", str(tmp_path / "port"), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "listens on loopback only" in result.stderr
    assert not (tmp_path / "port").exists()


def test_the_llm_canister_is_scripted_per_instance_over_icllm(door: Door) -> None:
    first, second = door.create(), door.create()
    rule = {"match": {"contains": "France"}, "action": {"reply": {"content": "Paris."}}, "times": 1}
    added = door.http.post(f"/instances/{first}/icllm/rules", json={"rules": [rule]})
    assert added.status_code == 200 and len(added.json()["rule_ids"]) == 1
    (listed,) = door.http.get(f"/instances/{first}/icllm/rules").json()["rules"]
    assert listed["rule"]["action"]["reply"]["content"] == "Paris."
    assert door.http.get(f"/instances/{second}/icllm/rules").json() == {}
    # the same control plane found by a subnet of the instance, as pic-js finds it
    (subnet,) = door.http.get(f"/instances/{first}/_/topology").json()["subnet_configs"]
    assert door.http.delete(f"/subnets/{subnet}/icllm/rules").status_code == 200
    assert door.http.get(f"/instances/{first}/icllm/rules").json() == {}
    outcall = {
        "match": {"url": "https://api.example.com/x"},
        "response": {"status": 200, "body": "eyJ1c2QiOiA5fQ=="},
    }
    assert (
        door.http.post(f"/instances/{first}/icllm/outcall-rules", json={"rules": [outcall]}).status_code
        == 200
    )
    assert door.http.post(f"/instances/{first}/icllm/hold", json={"hold": True}).json() == {}
    assert door.http.post(f"/instances/{first}/icllm/release", json={"all": True}).json() == {}
    wrong = door.http.post(f"/instances/{first}/icllm/rules", json={"rules": [{"action": {"shout": 1}}]})
    assert wrong.status_code == 400 and "AddRulesRequest" in wrong.json()["message"]
    both = door.http.post(f"/instances/{first}/icllm/release", json={"all": True, "job_ids": ["x"]})
    assert both.status_code == 400 and "not both" in both.json()["message"]
    unknown = door.http.get("/subnets/aaaaa-aa/icllm/rules")
    assert (
        unknown.status_code == 404 and "no live PocketIC instance has a subnet" in unknown.json()["message"]
    )
