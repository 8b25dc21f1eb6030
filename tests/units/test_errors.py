"""One family of errors for a caller's mistakes, mapped by kind at every door."""

from __future__ import annotations


def test_every_error_of_the_project_for_a_callers_mistake_has_a_kind_every_door_maps() -> None:
    """The doors map errors by kind: a new error class needs no new entry in any door."""
    import importlib
    import pkgutil

    import icllm_emulator
    from icllm_emulator.errors import ErrorKind, IcllmError
    from icllm_emulator.grpc_api.status import MISUSE_STATUS as GRPC
    from icllm_emulator.ollama.app import MISUSE_STATUS as HTTP

    for info in pkgutil.walk_packages(icllm_emulator.__path__, "icllm_emulator."):
        skipped = ("icllm_emulator._proto", "icllm_emulator.backends.llama", "icllm_emulator.__main__")
        if not info.name.startswith(skipped):
            importlib.import_module(info.name)

    def subclasses(kind: type[IcllmError]) -> set[type[IcllmError]]:
        return {kind} | {c for sub in kind.__subclasses__() for c in subclasses(sub)}

    errors = subclasses(IcllmError)
    assert len(errors) >= 15
    assert set(GRPC) == set(HTTP) == set(ErrorKind)
    assert {e.kind for e in errors} <= set(ErrorKind)
