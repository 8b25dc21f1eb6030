"""What the plugin's tests share: an inner pytest project with a strict minimal ini."""

from __future__ import annotations

# The plugin imports these when a test first needs the emulator. An in-process run restores
# `sys.modules` when it ends, so each run would import them afresh, and an `except LlmReject` in one
# run would not catch the class of another: imported here once, every run shares them.
# icp-py-core's .did parser is a PyO3 extension, and rapidyaml (the cassettes' reader) a SWIG one, each
# initialised once per process (a second import crashes): imported here, before any inner run, they
# survive each run's restore of `sys.modules`, though the plugin itself imports them only when used.
import icp_candid.did_loader  # noqa: F401
import pytest

import icllm_emulator.cassettes.format
import icllm_emulator.client
import icllm_emulator.runtime.ic
import icllm_emulator.runtime.values
import icllm_emulator.server  # noqa: F401
import pytest_icllm._canisters
import pytest_icllm._controller
import pytest_icllm._inprocess  # noqa: F401

# Inner runs load every installed plugin, as a user's would; the two `-p no:` only spare each run the
# import of unrelated plugins (hypothesis's alone takes a second per in-process run). An in-process run
# shares the process's threads with the outer suite, so a thread of some other test that dies meanwhile
# would be reported inside it: that one warning stays a warning (the inner tests' own threads catch
# their exceptions, and their results are asserted).
INI = """
[pytest]
addopts = -p no:hypothesispytest -p no:faker
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
    default::pytest.PytestUnhandledThreadExceptionWarning
"""


@pytest.fixture
def pt(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory with a strict minimal ini, as a careful user's project would have."""
    pytester.makeini(INI)
    return pytester


def run(pt: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    """Run `source` as the user's test module `test_user.py` in an inner pytest (in-process)."""
    pt.makepyfile(test_user=source)
    return pt.runpytest(*args)
