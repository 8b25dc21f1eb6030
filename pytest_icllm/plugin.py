"""pytest-icllm: fixtures, options and a marker for testing code that calls the IC's LLM canister.

Fixtures: `icllm` (the per-test controller), `icllm_client` / `icllm_async_client` (clients bound to
the emulator), `icllm_server` (the session's emulator), `icllm_config` (per-test settings a conftest
can override at any scope). Settings are resolved in one place, `_options.resolve`; the README states
their precedence.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emulator.client import AsyncLlmClient, LlmClient
from emulator.clock import ClockKind
from emulator.config import BackendKind, EmulatorConfig
from emulator.server import ThreadedEmulator
from pytest_icllm._controller import IcllmController
from pytest_icllm._options import OPTIONS, PER_TEST, OptionError, Settings, resolve

SETTINGS_KEY = pytest.StashKey[Settings]()
REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
URL_ENV = "ICLLM_URL"

MARKER_HELP = (
    "icllm(" + ", ".join(f"{name}=..." for name in PER_TEST) + "): settings of the emulated LLM canister "
    "for this test, class or module (the closest marker wins)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("icllm", "emulated Internet Computer LLM canister")
    for option in OPTIONS:
        group.addoption(option.flag, dest=f"icllm_{option.name}", default=None, help=option.help)
        parser.addini(option.ini, option.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    ini = {o.name: config.getini(o.ini) for o in OPTIONS if config.getini(o.ini) not in (None, "", [])}
    cli = {o.name: v for o in OPTIONS if (v := config.getoption(f"icllm_{o.name}")) is not None}
    if "url" not in cli and os.environ.get(URL_ENV):
        cli["url"] = os.environ[URL_ENV]
    try:
        settings = resolve(ini, cli)
    except OptionError as error:
        raise pytest.UsageError(f"pytest-icllm: {error}") from None
    if settings.url and os.environ.get("PYTEST_XDIST_WORKER"):
        raise pytest.UsageError(
            "pytest-icllm: --icllm-url points every xdist worker at one emulator, whose state the workers "
            "would share and reset under each other; leave it out to give each worker its own emulator"
        )
    config.stash[SETTINGS_KEY] = settings


def pytest_report_header(config: pytest.Config) -> str | None:
    settings = config.stash.get(SETTINGS_KEY, None)
    return settings.header() if settings else None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report, so teardown checks can stand back when the test itself failed."""
    report = yield
    item.stash.setdefault(REPORTS_KEY, {})[report.when] = report
    return report


@dataclass(frozen=True)
class EmulatorAddress:
    """Where the session's emulator listens."""

    grpc_target: str
    in_process: bool


@pytest.fixture(scope="session")
def icllm_server(pytestconfig: pytest.Config) -> Iterator[EmulatorAddress]:
    """The session's emulator: started in a background thread, or the one at --icllm-url / ICLLM_URL."""
    settings = pytestconfig.stash[SETTINGS_KEY]
    if settings.url:
        _check_reachable(settings.url)
        yield EmulatorAddress(settings.url, in_process=False)
        return
    emulator = ThreadedEmulator(
        EmulatorConfig(
            grpc_port=0,
            backend=BackendKind(settings.backend),
            clock=ClockKind(settings.clock),
            workers=settings.workers,
        )
    )
    emulator.start()
    try:
        yield EmulatorAddress(emulator.ports.grpc_target, in_process=True)
    finally:
        emulator.stop()


def _check_reachable(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        try:
            status = (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            )
        except grpc.RpcError as error:
            pytest.exit(f"pytest-icllm: no emulator answers at {target}: {error.code().name}", returncode=4)
        if status != health_pb2.HealthCheckResponse.SERVING:
            pytest.exit(f"pytest-icllm: the emulator at {target} is not serving yet", returncode=4)


@pytest.fixture(scope="session")
def _icllm_channel(icllm_server: EmulatorAddress) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(icllm_server.grpc_target) as channel:
        yield channel


@pytest.fixture
def icllm_config() -> dict[str, Any]:
    """Per-test emulator settings; override this fixture in a conftest, at any scope."""
    return {}


@pytest.fixture
def icllm(
    request: pytest.FixtureRequest, _icllm_channel: grpc.Channel, icllm_config: dict[str, Any]
) -> Iterator[IcllmController]:
    """The controller of the emulated LLM canister, reset for this test: script, steer, inspect."""
    item = request.node
    markers = [
        (_marker_origin(item), _marker_kwargs(item, m)) for m in reversed(list(item.iter_markers("icllm")))
    ]
    session = request.config.stash[SETTINGS_KEY]
    try:
        settings = resolve(_session_layer(session), {}, icllm_config, markers)
    except OptionError as error:
        problem = str(error)
    else:
        problem = ""
    if problem:
        pytest.fail(problem, pytrace=False)
    controller = IcllmController(_icllm_channel, settings)
    controller._begin()
    yield controller
    reports = item.stash.get(REPORTS_KEY, {})
    if "call" in reports and not reports["call"].passed:
        return  # the test's own failure says more than any teardown check
    problems = controller._problems()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def _session_layer(session: Settings) -> dict[str, Any]:
    """The session's resolved values, as the base layer for one test."""
    return {option.name: getattr(session, option.name) for option in OPTIONS}


def _marker_origin(item: pytest.Item) -> str:
    path, line, _ = item.location
    return f"{path}:{(line or 0) + 1}: @pytest.mark.icllm"


def _marker_kwargs(item: pytest.Item, marker: pytest.Mark) -> dict[str, Any]:
    if marker.args:
        pytest.fail(
            f"{_marker_origin(item)} takes keyword arguments only ({', '.join(PER_TEST)}), "
            f"got positional {marker.args!r}",
            pytrace=False,
        )
    return dict(marker.kwargs)


@pytest.fixture(scope="session")
def icllm_client(icllm_server: EmulatorAddress) -> Iterator[LlmClient]:
    """A blocking client (shaped like ic-llm) bound to the session's emulator."""
    with LlmClient(icllm_server.grpc_target) as client:
        yield client


try:
    import pytest_asyncio
except ImportError:  # asyncio tests need pytest-asyncio; without it there is no async fixture
    pass
else:

    @pytest_asyncio.fixture
    async def icllm_async_client(icllm_server: EmulatorAddress) -> AsyncIterator[AsyncLlmClient]:
        """An asyncio client bound to the session's emulator (needs pytest-asyncio)."""
        async with AsyncLlmClient(icllm_server.grpc_target) as client:
            yield client
