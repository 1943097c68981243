"""Ecosystem tests that need the real plugins skip, naming them, where those are not installed."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


def test_a_test_needing_an_absent_distribution_skips_and_names_it(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.needs_dists("pytest", "bridge-no-such-plugin")
        def test_absent():
            raise AssertionError("must not run")

        @pytest.mark.needs_dists("pytest")
        def test_present():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*needs bridge-no-such-plugin installed (tox -e ecosystem installs them)*"])


HIDE_REAL_PLUGINS = """
_installed = distribution


def distribution(name):  # as if bridge-llama and bridge-qwen were not installed
    if name in ("bridge-llama", "bridge-qwen"):
        raise PackageNotFoundError(name)
    return _installed(name)
"""


def test_the_real_plugin_tests_skip_without_the_real_plugins(pytester):
    pytester.makeconftest(CONFTEST + HIDE_REAL_PLUGINS)
    for module in ("test_discovery.py", "test_isolation.py"):
        pytester.makepyfile(**{module[:-3]: (Path(__file__).parent / module).read_text()})
    result = pytester.runpytest_subprocess("-m", "needs_dists", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()  # every needs_dists test skips (no count to keep up to date)
    assert outcomes.get("skipped", 0) > 0, outcomes
    assert not any(outcomes.get(k) for k in ("passed", "failed", "errors", "error")), outcomes
