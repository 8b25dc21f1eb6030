"""The PocketIC door's REST API, request by request, as PocketIC's clients send them: canisters created
and installed through the management canister by ingress, their state read back in PocketIC's JSON."""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterator
from typing import Any

import pytest
from icp_principal import Principal

from icllm_emulator.candid import encode_chat_request
from icllm_emulator.domain import Api, ChatRequest, UserMessage
from icllm_emulator.runtime.values import Interface
from tests.canisters.conftest import module_path
from tests.processes.test_pocketic_door import CREATE_BODY, Door, start, stop
from tests.waiting import wait_until

ALICE = Principal.from_str("tasxg-7ryw7-s5kzi-2v6cw-sst2p-rwv3m-jhll4-gu3pz-hi3lr-jfc45-yqe")  # a user
SPECIFIED = Principal.from_str("rrkah-fqaaa-aaaaa-aaaaq-cai")
LLM = Principal.from_str("w36hm-eqaaa-aaaal-qr76a-cai")
MANAGEMENT = Interface(
    """
    type settings = record { controllers : opt vec principal };
    service : {
      provisional_create_canister_with_cycles : (record {
        amount : opt nat; settings : opt settings; specified_id : opt principal
      }) -> (record { canister_id : principal });
      install_code : (record {
        mode : variant { install; reinstall; upgrade : opt record { skip_pre_upgrade : opt bool } };
        canister_id : principal; wasm_module : blob; arg : blob
      }) -> ();
    }
    """
)
AGENT = Interface("service : { prompt : (text) -> (text); asked_count : () -> (nat) query }")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Instance:
    def __init__(self, door: Door) -> None:
        self.http = door.http
        self.id = door.create()
        self.path = f"/instances/{self.id}"

    def post(self, route: str, body: Any) -> Any:
        response = self.http.post(f"{self.path}/{route}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def submit(self, canister: bytes, method: str, arg: bytes, sender: Principal = ALICE) -> Any:
        body = {
            "sender": b64(sender.bytes),
            "canister_id": b64(canister),
            "method": method,
            "payload": b64(arg),
            "effective_principal": "None",
        }
        return self.post("update/submit_ingress_message", body)

    def update(self, canister: bytes, method: str, arg: bytes, sender: Principal = ALICE) -> Any:
        submitted = self.submit(canister, method, arg, sender)
        return self.post("update/await_ingress_message", submitted["Ok"])

    def create(self, specified: Principal | None = None) -> Principal:
        arg = {"amount": 10**18, "settings": None, "specified_id": specified and specified.to_str()}
        outcome = self.update(
            b"",
            "provisional_create_canister_with_cycles",
            MANAGEMENT.encode_call("provisional_create_canister_with_cycles", (arg,)),
        )
        decoded = MANAGEMENT.decode_reply(
            "provisional_create_canister_with_cycles", base64.b64decode(outcome["Ok"])
        )
        return Principal.from_str(decoded["canister_id"])

    def install(self, canister: Principal, wasm: bytes) -> Any:
        arg = {
            "mode": {"install": None},
            "canister_id": canister.to_str(),
            "wasm_module": wasm,
            "arg": b"DIDL\0\0",
        }
        return self.update(b"", "install_code", MANAGEMENT.encode_call("install_code", (arg,)))


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    started = start(tmp_path_factory.mktemp("door"))
    try:
        yield started
    finally:
        stop(started)


@pytest.fixture
def instance(door: Door) -> Iterator[Instance]:
    made = Instance(door)
    yield made
    door.http.delete(made.path)


@pytest.fixture(scope="module")
def wasm() -> bytes:
    return module_path("motoko-agent").read_bytes()


def test_a_canister_at_a_specified_id_is_controlled_by_its_creator(instance: Instance) -> None:
    canister = instance.create(SPECIFIED)
    assert canister == SPECIFIED
    controllers = instance.post("read/get_controllers", {"canister_id": b64(canister.bytes)})
    assert controllers == [{"principal_id": b64(ALICE.bytes)}]
    subnet = instance.post("read/get_subnet", {"canister_id": b64(canister.bytes)})
    topology = instance.http.get(f"{instance.path}/_/topology").json()
    (subnet_id,) = topology["subnet_configs"]
    assert Principal(base64.b64decode(subnet["subnet_id"])).to_str() == subnet_id
    unknown = instance.post(
        "read/get_subnet", {"canister_id": b64(Principal.from_str("aaaaa-aa").bytes + b"x")}
    )
    assert unknown is None


def test_cycles_are_exact_integers(instance: Instance) -> None:
    canister = instance.create()
    before = instance.post("read/get_cycles", {"canister_id": b64(canister.bytes)})["cycles"]
    assert before == 10**18
    after = instance.post("update/add_cycles", {"canister_id": b64(canister.bytes), "amount": 10**18 + 1})
    assert after == {"cycles": 2 * 10**18 + 1}
    missing = instance.http.post(
        f"{instance.path}/read/get_cycles", json={"canister_id": b64(SPECIFIED.bytes)}
    )
    assert missing.status_code == 404 and "does not exist" in missing.json()["message"]


def test_stable_memory_is_set_from_a_gzipped_blob(instance: Instance, wasm: bytes) -> None:
    canister = instance.create()
    assert "Ok" in instance.install(canister, wasm)
    blob_id = instance.http.post(
        "/blobstore", content=gzip.compress(b"stable bytes"), headers={"Content-Encoding": "gzip"}
    ).text
    instance.post(
        "update/set_stable_memory",
        {"canister_id": b64(canister.bytes), "blob_id": b64(bytes.fromhex(blob_id))},
    )
    memory = base64.b64decode(
        instance.post("read/get_stable_memory", {"canister_id": b64(canister.bytes)})["blob"]
    )
    assert memory.startswith(b"stable bytes") and len(memory) == 65536


def test_a_call_waiting_on_a_held_answer_has_no_status_until_released(
    instance: Instance, wasm: bytes
) -> None:
    canister = instance.create()
    instance.install(canister, wasm)
    instance.post("icllm/hold", {"hold": True})
    submitted = instance.submit(canister.bytes, "prompt", AGENT.encode_call("prompt", ("held?",)))["Ok"]
    instance.post("update/tick", {})
    assert instance.post("read/ingress_status", {"raw_message_id": submitted, "raw_caller": None}) is None
    (job,) = instance.http.get(f"{instance.path}/icllm/jobs").json()["jobs"]
    assert job["state"] == "HELD"
    assert instance.post("icllm/release", {"all": True}) == {"job_ids": [job["id"]]}
    done = instance.post("update/await_ingress_message", submitted)
    assert AGENT.decode_reply("prompt", base64.b64decode(done["Ok"]))
    status = instance.post("read/ingress_status", {"raw_message_id": submitted, "raw_caller": None})
    assert status == done
    other = instance.http.post(
        f"{instance.path}/read/ingress_status",
        json={"raw_message_id": submitted, "raw_caller": {"principal_id": b64(b"\x04")}},
    )
    assert other.status_code == 403


def test_a_trap_reaches_the_reject_with_its_codes(instance: Instance, wasm: bytes) -> None:
    canister = instance.create()
    instance.install(canister, wasm)
    outcome = instance.update(canister.bytes, "prompt", b"not candid")
    assert outcome["Err"]["reject_code"] == "CanisterError"
    assert outcome["Err"]["error_code"] in ("CanisterCalledTrap", "CanisterTrapped")
    assert outcome["Err"]["certified"] is True
    unknown = instance.submit(SPECIFIED.bytes, "prompt", b"DIDL\0\0")
    assert unknown["Err"]["error_code"] == "CanisterNotFound"


def test_a_user_may_call_the_llm_canister_itself(instance: Instance) -> None:
    instance.post(
        "icllm/rules", {"rules": [{"match": {"contains": "ping"}, "action": {"reply": {"content": "pong"}}}]}
    )
    request = encode_chat_request(ChatRequest("llama3.1:8b", (UserMessage("ping"),), api=Api.V0))
    outcome = instance.update(LLM.bytes, "v0_chat", request)
    assert (
        Interface("service : { v0_chat : (text) -> (text) }").decode_reply(
            "v0_chat", base64.b64decode(outcome["Ok"])
        )
        == "pong"
    )
    (call,) = instance.http.get(f"{instance.path}/icllm/history").json()["calls"]
    assert call["caller"] == ALICE.to_str()
    query = instance.post(
        "read/query",
        {
            "sender": b64(ALICE.bytes),
            "canister_id": b64(LLM.bytes),
            "method": "v0_chat",
            "payload": b64(request),
            "effective_principal": "None",
        },
    )
    assert query["Err"]["reject_code"] == "DestinationInvalid"


def test_auto_progress_follows_the_wall_clock(instance: Instance) -> None:
    assert instance.http.get(f"{instance.path}/auto_progress").json() is False
    instance.post("auto_progress", {"artificial_delay_ms": 0})
    assert instance.http.get(f"{instance.path}/auto_progress").json() is True
    instance.post("update/tick", {})
    wait_until(
        lambda: instance.http.get(f"{instance.path}/read/get_time").json()["nanos_since_epoch"] > 1.7e18,
        "time to follow the wall clock",
    )
    instance.post("stop_progress", {})
    assert instance.http.get(f"{instance.path}/auto_progress").json() is False


def test_mocking_an_outcall_nobody_made_is_a_400(instance: Instance) -> None:
    response = instance.http.post(
        f"{instance.path}/update/mock_canister_http",
        json={
            "subnet_id": {"subnet_id": "AA=="},
            "request_id": 7,
            "response": {"CanisterHttpReply": {"status": 200, "headers": [], "body": ""}},
            "additional_responses": [],
        },
    )
    assert response.status_code == 400
    assert "no pending canister HTTP outcall has request_id 7" in response.json()["message"]


def test_two_instances_are_two_ics(door: Door, wasm: bytes) -> None:
    first, second = Instance(door), Instance(door)
    try:
        assert first.create() == second.create()  # each IC hands out the same first id
        first.post("icllm/rules", {"rules": [{"match": {}, "action": {"reply": {"content": "one"}}}]})
        assert second.http.get(f"{second.path}/icllm/rules").json() == {}
        first.post("update/set_time", {"nanos_since_epoch": 1_620_328_631_000_000_000})
        assert (
            second.http.get(f"{second.path}/read/get_time").json()["nanos_since_epoch"]
            == 1_620_328_630 * 10**9
        )
    finally:
        door.http.delete(first.path)
        door.http.delete(second.path)


def test_the_create_body_of_pic_js_is_accepted(door: Door) -> None:
    assert door.http.post("/instances", json=CREATE_BODY).json()["Created"]["http_gateway_info"] is None
