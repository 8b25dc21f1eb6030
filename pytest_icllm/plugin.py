"""pytest-icllm: fixtures, options and a marker for testing code that calls the IC's LLM canister.

Fixtures: `icllm` (the per-test controller), `icllm_client` / `icllm_async_client` (clients bound to
the emulator), `icllm_server` (the session's emulator), `icllm_config` (per-test settings a conftest
can override at any scope). Settings are resolved in one place, `_options.resolve`; the README states
their precedence. gRPC and the emulator are imported by the fixtures that need them, so a run whose
tests never touch the emulator starts as fast as without the plugin.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from icllm_emulator.config import EmulatorConfig, config_from_settings
from icllm_emulator.settings import PER_TEST_CASSETTE, SettingError
from pytest_icllm._options import CONFIGURED, OPTIONS, PER_TEST, STARTUP, Settings, parse_option, resolve

if TYPE_CHECKING:
    from icllm_emulator._proto.icllm.v1 import control_pb2_grpc
    from icllm_emulator.client import AsyncLlmClient, LlmClient
    from icllm_emulator.runtime import CanisterRuntime
    from icllm_emulator.server import ThreadedEmulator
    from pytest_icllm._canisters import CanisterIC
    from pytest_icllm._controller import CassetteUse, IcllmController
    from pytest_icllm._inprocess import InProcessControl

SETTINGS_KEY = pytest.StashKey[Settings]()
CI_KEY = pytest.StashKey[bool]()
UPSTREAM_KEY = pytest.StashKey[str | None]()
REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
URL_ENV = "ICLLM_URL"
TOKEN_ENV = "ICLLM_CONTROL_TOKEN"
# Set by GitHub Actions, GitLab CI, CircleCI, Travis, Buildkite and most other CI services.
CI_ENV = "CI"

MARKER_HELP = (
    "icllm(" + ", ".join(f"{name}=..." for name in PER_TEST) + "): settings of the emulated LLM canister "
    "for this test, class or module (the closest marker wins)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("icllm", "emulated Internet Computer LLM canister")
    for option in OPTIONS:
        group.addoption(
            option.pytest_flag,
            dest=f"icllm_{option.name}",
            default=None,
            action="append" if option.repeatable else "store",
            help=option.flag_help + (" (repeatable)" if option.repeatable else ""),
            **({"nargs": "?", "const": "true"} if option.switch else {}),
        )
        parser.addini(option.ini, option.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    ini = {o.name: config.getini(o.ini) for o in OPTIONS if config.getini(o.ini) not in (None, "", [])}
    cli = {o.name: v for o in OPTIONS if (v := config.getoption(f"icllm_{o.name}")) is not None}
    ci = os.environ.get(CI_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    try:
        if "url" not in cli and os.environ.get(URL_ENV):
            cli["url"] = parse_option("url", os.environ[URL_ENV], f"environment variable {URL_ENV}")
        if "control_token" not in cli and os.environ.get(TOKEN_ENV):
            cli["control_token"] = os.environ[TOKEN_ENV]
        settings = resolve(ini, cli, ci=ci)
        api_key = os.environ.get(settings.upstream_key_env) or None
        if not settings.url:
            _start_config(settings, api_key)  # a bad session setting stops the run now, not at a test
    except SettingError as error:
        raise pytest.UsageError(f"pytest-icllm: {error}") from None
    # The controller process sees `--dist`; a worker process has `workerinput` (not an env var, which a
    # pytest run started inside a worker would inherit).
    distributed = getattr(config.option, "dist", "no") != "no" or hasattr(config, "workerinput")
    if settings.url and distributed:
        raise pytest.UsageError(
            "pytest-icllm: --icllm-url points every xdist worker at one emulator, whose state the workers "
            "would share and reset under each other; leave it out to give each worker its own emulator"
        )
    config.stash[SETTINGS_KEY] = settings
    config.stash[CI_KEY] = ci
    config.stash[UPSTREAM_KEY] = api_key


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        return None
    lines = [settings.header(), settings.details()]
    ci = config.stash.get(CI_KEY, False)
    if settings.cassette or settings.record_mode != "none" or ci:
        lines.append(
            f"icllm cassettes: record_mode={settings.record_mode}, cassette={settings.cassette or 'off'}"
            + (", CI=true: replay only unless --icllm-record-mode says otherwise" if ci else "")
        )
    return lines


def pytest_runtest_setup(item: pytest.Item) -> None:
    """An `icllm` marker is checked on every test, also one that does not take the `icllm` fixture."""
    if "icllm" in getattr(item, "fixturenames", ()) or item.get_closest_marker("icllm") is None:
        return  # the fixture checks its markers itself, with every layer
    session = item.config.stash.get(SETTINGS_KEY, None)
    if session is None:
        return
    try:
        markers = [
            _marker_layer(node, mark)  # type: ignore[arg-type]  # a test's own nodes: items and collectors
            for node, mark in reversed(list(item.iter_markers_with_node("icllm")))
        ]
        resolve({}, _session_layer(session), {}, markers, ci=item.config.stash.get(CI_KEY, False))
    except SettingError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report, so teardown checks can stand back when the test itself failed."""
    report = yield
    item.stash.setdefault(REPORTS_KEY, {})[report.when] = report
    return report


@dataclass(frozen=True)
class EmulatorAddress:
    """Where the session's emulator listens: its gRPC target (HOST:PORT) and Ollama-compatible HTTP URL.

    `http_url` is None for an emulator given by --icllm-url, whose HTTP port the plugin cannot know.
    """

    grpc_target: str
    in_process: bool
    http_url: str | None = None

    def ollama_env(self) -> dict[str, str]:
        """`OLLAMA_HOST` and friends: Ollama and OpenAI clients (or a local network) reach the emulator."""
        if self.http_url is None:
            raise RuntimeError(
                f"the emulator at {self.grpc_target} was given by --icllm-url, so its HTTP address is "
                "unknown here; set OLLAMA_HOST to it yourself"
            )
        from icllm_emulator.ollama import ollama_env

        return ollama_env(self.http_url)


@dataclass(frozen=True)
class _Session:
    address: EmulatorAddress
    control: control_pb2_grpc.ControlStub | InProcessControl
    # Whether Control.Reset restores the session's settings (true for the emulator started here).
    resets_to_session: bool
    # The emulator started here (None for one given by --icllm-url).
    emulator: ThreadedEmulator | None = None


@pytest.fixture(scope="session")
def _icllm_session(pytestconfig: pytest.Config) -> Iterator[_Session]:
    """The emulator this session uses and the way to its Control service; stopped at the end."""
    import grpc

    from icllm_emulator._proto.icllm.v1 import control_pb2_grpc
    from icllm_emulator.server import ThreadedEmulator
    from pytest_icllm._inprocess import InProcessControl

    settings = pytestconfig.stash[SETTINGS_KEY]
    if settings.url:
        _check_reachable(settings.url)
        with grpc.insecure_channel(settings.url) as channel:
            if settings.control_token:
                channel = grpc.intercept_channel(channel, _with_token(settings.control_token))
            control = control_pb2_grpc.ControlStub(channel)
            yield _Session(EmulatorAddress(settings.url, in_process=False), control, resets_to_session=False)
        return
    emulator = ThreadedEmulator(_start_config(settings, pytestconfig.stash.get(UPSTREAM_KEY, None)))
    emulator.start()
    try:
        ports = emulator.ports
        address = EmulatorAddress(ports.grpc_target, in_process=True, http_url=ports.http_url)
        yield _Session(address, InProcessControl(emulator), resets_to_session=True, emulator=emulator)
    finally:
        emulator.stop()


def _with_token(token: str) -> Any:
    """An interceptor that adds the Control token to every call of the session's Control stub."""
    import grpc

    class WithToken(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc ships no type hints
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            metadata = (*(details.metadata or ()), ("icllm-control-token", token))
            return continuation(details._replace(metadata=metadata), request)

    return WithToken()


def _start_config(settings: Settings, api_key: str | None = None) -> EmulatorConfig:
    """The in-process emulator starts with the session's settings, so a reset brings them back."""
    values = {name: getattr(settings, name) for name in STARTUP}
    return config_from_settings(
        {
            **values,
            # Free ports: never Ollama's own 11434, which a real Ollama may hold.
            "grpc_port": 0,
            "ollama_port": 0,
            # Its cassettes live beside the test modules, and their scrubbers are the test suite's own.
            "cassette_paths_anywhere": True,
            "allow_scrubber_imports": True,
        },
        environ={} if api_key is None else {settings.upstream_key_env: api_key},
    )


@pytest.fixture(scope="session")
def icllm_server(_icllm_session: _Session) -> EmulatorAddress:
    """The session's emulator: started in a background thread, or the one at --icllm-url / ICLLM_URL."""
    return _icllm_session.address


def _check_reachable(target: str) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            status = (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            )
        except grpc.RpcError as error:
            pytest.exit(
                f"pytest-icllm: no emulator answers at {target} ({error.code().name}): start one there "
                "(icllm-emulator serve), or leave out --icllm-url / ICLLM_URL to run one in-process",
                returncode=pytest.ExitCode.USAGE_ERROR,
            )
        if status != health_pb2.HealthCheckResponse.SERVING:
            pytest.exit(
                f"pytest-icllm: the emulator at {target} is not serving yet "
                f"(health {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}); "
                "wait for its port file or health check before running the tests",
                returncode=pytest.ExitCode.USAGE_ERROR,
            )


@pytest.fixture
def icllm_config() -> dict[str, Any]:
    """Per-test emulator settings; override this fixture in a conftest, at any scope."""
    return {}


@pytest.fixture
def icllm(
    request: pytest.FixtureRequest, _icllm_session: _Session, icllm_config: dict[str, Any]
) -> Iterator[IcllmController]:
    """The controller of the emulated LLM canister, reset for this test: script, steer, inspect."""
    from pytest_icllm._controller import IcllmController

    item = request.node
    session = request.config.stash[SETTINGS_KEY]
    ci = request.config.stash.get(CI_KEY, False)
    try:
        markers = [
            _marker_layer(node, mark) for node, mark in reversed(list(item.iter_markers_with_node("icllm")))
        ]
        # The session's values come first, as the command line would give them (CI keeps their mode).
        settings = resolve({}, _session_layer(session), icllm_config, markers, ci=ci)
    except SettingError as error:
        problem = str(error)
    else:
        problem = ""
    if problem:
        pytest.fail(problem, pytrace=False)
    controller = IcllmController(_icllm_session.control, settings, _cassette_use(item, settings, ci))
    restored = _icllm_session.resets_to_session and all(
        getattr(settings, o.name) == getattr(session, o.name) for o in CONFIGURED
    )
    controller._begin(configure=not restored)
    _use_cassette(controller)
    yield controller
    controller._eject_cassette()
    reports = item.stash.get(REPORTS_KEY, {})
    if any(not report.passed for report in reports.values()):
        return  # the test's own failure (or its setup's) says more than any teardown check
    problems = controller._problems()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def icllm_canister(
    request: pytest.FixtureRequest, icllm: IcllmController, _icllm_session: _Session
) -> Iterator[CanisterIC]:
    """This test's IC: `icllm_canister(wasm, did=, init=, id=, ...)`, `.stub(id, did=)`, `.faults.on()`."""
    from pytest_icllm._canisters import CanisterIC, Loop, PrivateLoop

    emulator = _icllm_session.emulator
    timeout, explain = icllm.settings.canister_timeout, partial(_pending_answers, icllm)
    if emulator is not None:
        loop = Loop(emulator.loop, timeout, explain)
        engine = emulator.engine

        async def runtime() -> CanisterRuntime:
            return engine.runtime

        ic = CanisterIC(loop.run(runtime()), loop)
        yield ic
        problems = _canister_problems(request.node, ic, icllm.settings)

        async def clear() -> None:
            engine.runtime.clear()

        loop.run(clear())
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)
        return
    from icllm_emulator.clock import RealClock
    from icllm_emulator.runtime import CanisterRuntime as Runtime
    from icllm_emulator.runtime.llm import OverGrpc

    private = PrivateLoop(timeout, explain)
    target = _icllm_session.address.grpc_target

    async def remote() -> tuple[Runtime, OverGrpc]:
        llm = OverGrpc(target)
        return Runtime(RealClock(), llm, seed=icllm.settings.seed), llm

    runtime_, llm = private.run(remote())
    found: list[str] = []
    try:
        remote_ic = CanisterIC(runtime_, private)
        yield remote_ic
        found = _canister_problems(request.node, remote_ic, icllm.settings)
    finally:

        async def close() -> None:
            runtime_.clear()
            await llm.close()

        private.run(close())
        private.close()
    if found:
        pytest.fail("\n\n".join(found), pytrace=False)


def _canister_problems(item: pytest.Item, ic: CanisterIC, settings: Settings) -> list[str]:
    """The stand-ins' and faults' teardown checks, unless the test failed on its own."""
    reports = item.stash.get(REPORTS_KEY, {})
    if any(not report.passed for report in reports.values()):
        return []
    return ic._problems(settings.assert_all_used, settings.assert_all_expected)


def _pending_answers(icllm: IcllmController) -> str:
    """What a canister call that timed out may wait for: the LLM answers held, queued or being made."""
    try:
        jobs = icllm.jobs()
    except Exception as error:  # a diagnosis that fails must not hide the timeout
        return f"; the emulator's jobs could not be listed ({type(error).__name__}: {error})"
    if not jobs:
        return "; no LLM answer is pending: the canister itself has not replied"
    held = [job.id for job in jobs if job.state == "HELD"]
    parts = []
    if held:
        listed = ", ".join(repr(job_id) for job_id in held)
        parts.append(
            f"{len(held)} LLM answer{'s are' if len(held) > 1 else ' is'} held ({listed}): release "
            f"{'them' if len(held) > 1 else 'it'} with icllm.release({listed}) or icllm.release_all()"
        )
    for job in jobs:
        if job.state == "QUEUED":
            parts.append(f"{job.id!r} ({job.model}) waits for a worker: are they paused (icllm.resume())?")
        elif job.state == "LEASED":
            parts.append(f"{job.id!r} ({job.model}) is being answered by {job.worker_id or 'a worker'}")
    return "; " + "; ".join(parts)


@pytest.fixture(scope="session")
def icllm_canister_session(_icllm_session: _Session) -> CanisterIC:
    """Install canisters once for the session (snapshot them, `restore` in each test): as icllm_canister."""
    from pytest_icllm._canisters import CanisterIC, Loop

    emulator = _icllm_session.emulator
    if emulator is None:
        pytest.fail(
            "icllm_canister_session needs the in-process emulator: with --icllm-url each test's canisters "
            "run in a runtime of their own; install them per test with icllm_canister",
            pytrace=False,
        )
    loop = Loop(emulator.loop)
    engine = emulator.engine

    async def runtime() -> CanisterRuntime:
        return engine.runtime

    return CanisterIC(loop.run(runtime()), loop, session=True)


def _use_cassette(controller: IcllmController) -> None:
    """Load the test's cassette; a broken file or a bad setting fails the test's setup, readably."""
    from icllm_emulator.client import EmulatorError

    try:
        controller._use_cassette()
    except EmulatorError as error:
        message = f"pytest-icllm: cannot use the cassette {controller.cassette}: {error.details}"
    else:
        return
    pytest.fail(message, pytrace=False)


# Characters kept in a cassette's file name; any other is replaced (and the name then gets a hash).
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-\[\]=+,@]")
MAX_NAME = 100


def cassette_name(test: str) -> str:
    """A file name for a test's cassette: readable, safe on every file system, distinct per test.

    Unsafe characters become `_`; a name that had any, or runs over MAX_NAME characters, gets a hash
    of the full name, so two tests never share a file by accident.
    """
    safe = _UNSAFE.sub("_", test).lstrip(".") or "_"
    if safe != test or len(safe) > MAX_NAME:
        digest = hashlib.sha256(test.encode("utf-8")).hexdigest()[:10]
        safe = f"{safe[: MAX_NAME - 11]}-{digest}"
    return safe + ".yaml"


def _cassette_use(item: pytest.Item, settings: Settings, ci: bool) -> CassetteUse | None:
    """Where the test's cassette lives: `cassettes/<module>/<test>.yaml` beside the test module by default."""
    from pytest_icllm._controller import CassetteUse

    if not settings.cassette:
        return None
    module = item.path
    rootdir = item.config.rootpath
    if settings.cassettes is None:
        folder = module.parent / "cassettes" / module.stem
    else:
        base = Path(settings.cassettes).expanduser()
        base = base if base.is_absolute() else rootdir / base
        try:
            folder = base / module.relative_to(rootdir).with_suffix("")
        except ValueError:
            folder = base / module.stem
    if settings.cassette == PER_TEST_CASSETTE:
        test = ".".join(item.nodeid.split("::")[1:]) or item.name
        path = folder / cassette_name(test)
    else:
        given = Path(settings.cassette).expanduser()
        path = given if given.is_absolute() else folder / given
    return CassetteUse(path.absolute(), _miss_hint(settings, ci))


def _miss_hint(settings: Settings, ci: bool) -> str:
    if ci and settings.record_mode == "none":
        return (
            "CI is true, so this run only replays (record modes from ini keys, icllm_config and markers are "
            "ignored in CI): record the cassette on a development machine (pytest --icllm-record-mode once, "
            "or new_episodes to add to it) and commit it, or force recording with --icllm-record-mode"
        )
    if settings.record_mode == "once":
        return (
            "record mode once records only into a cassette that does not exist yet: delete it to record "
            "it again, or run with --icllm-record-mode new_episodes (or @pytest.mark.icllm(record_mode="
            "'new_episodes')) to add this call to it"
        )
    return (
        "to record it: pytest --icllm-record-mode once (a new cassette), new_episodes (add to this one) "
        "or all (record it anew), or @pytest.mark.icllm(record_mode=...) on the test"
    )


def _session_layer(session: Settings) -> dict[str, Any]:
    """The session's resolved values, as the base layer for one test."""
    return {option.name: getattr(session, option.name) for option in OPTIONS}


def _marker_layer(node: pytest.Item | pytest.Collector, marker: pytest.Mark) -> tuple[str, dict[str, Any]]:
    """One marker's settings, named by where the marker is written (the test, its class or module)."""
    origin = f"{_marker_location(node)}: @pytest.mark.icllm"
    if marker.args:
        raise SettingError(
            f"{origin} takes keyword arguments only ({', '.join(PER_TEST)}); got positional {marker.args!r}"
        )
    return origin, dict(marker.kwargs)


def _marker_location(node: pytest.Item | pytest.Collector) -> str:
    """`path:line` of the test function, the class, or the module's `pytestmark` line."""
    path = node.nodeid.split("::")[0]
    line: int | None = None
    if isinstance(node, pytest.Module):
        try:
            source = node.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            source = []
        line = next((n for n, text in enumerate(source, 1) if text.startswith("pytestmark")), None)
    elif isinstance(node, pytest.Class | pytest.Function):
        _, lineno, _ = node.reportinfo()
        line = None if lineno is None else lineno + 1
    return f"{path}:{line}" if line else path


@pytest.fixture(scope="session")
def _icllm_session_client(icllm_server: EmulatorAddress) -> Iterator[LlmClient]:
    """One blocking client (one gRPC channel) for the whole session, handed out by `icllm_client`."""
    from icllm_emulator.client import LlmClient

    with LlmClient(icllm_server.grpc_target) as client:
        yield client


@pytest.fixture
def icllm_client(icllm: IcllmController, _icllm_session_client: LlmClient) -> LlmClient:
    """A blocking client (shaped like ic-llm) bound to the emulator, which `icllm` has reset."""
    return _icllm_session_client


try:
    import pytest_asyncio
except ImportError:  # asyncio tests need pytest-asyncio; without it there is no async fixture
    pass
else:

    @pytest_asyncio.fixture
    async def icllm_async_client(
        icllm: IcllmController, icllm_server: EmulatorAddress
    ) -> AsyncIterator[AsyncLlmClient]:
        """An asyncio client bound to the emulator, which `icllm` has reset (needs pytest-asyncio)."""
        from icllm_emulator.client import AsyncLlmClient

        async with AsyncLlmClient(icllm_server.grpc_target) as client:
            yield client
