"""What the plugin's tests share: an inner pytest project with a strict minimal ini."""

from __future__ import annotations

import pytest

# Inner runs load every installed plugin, as a user's would; the two `-p no:` only spare each run the
# import of unrelated plugins (hypothesis's alone takes a second per in-process run).
INI = """
[pytest]
addopts = -p no:hypothesispytest -p no:faker
asyncio_default_fixture_loop_scope = function
filterwarnings = error
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
