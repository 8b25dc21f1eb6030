"""The Candid codec: the LLM canister's `.did`, its Candid arguments and replies, byte for byte.

`decode_request` and `encode_reply` are what `LlmCanister.CallCandid` runs around the canister core;
`encode_chat_request` and `decode_reply` are the other side, for callers that build Candid in Python.
"""

from icllm_emulator.candid._codec import (
    DEFAULT_INTERFACE,
    DEPOSIT,
    INTERFACES,
    LLM_CANISTER_ID,
    candid_interface,
    check_method,
    decode_deposit,
    decode_reply,
    decode_request,
    encode_chat_request,
    encode_deposit,
    encode_deposit_reply,
    encode_reply,
    method_api,
)
from icllm_emulator.candid._wire import CandidError

__all__ = [
    "DEFAULT_INTERFACE",
    "DEPOSIT",
    "INTERFACES",
    "LLM_CANISTER_ID",
    "CandidError",
    "candid_interface",
    "check_method",
    "decode_deposit",
    "decode_reply",
    "decode_request",
    "encode_chat_request",
    "encode_deposit",
    "encode_deposit_reply",
    "encode_reply",
    "method_api",
]
