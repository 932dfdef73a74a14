"""Under CI=true a test skipped for a missing package fails the run; a skip for what the machine cannot do stays."""

from pathlib import Path

pytest_plugins = ["pytester"]


def test_ci_turns_missing_package_skips_into_failures(pytester, monkeypatch):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(
        """
        import pytest

        def test_needs_a_package():
            pytest.importorskip("no_such_package_for_flaxen")

        def test_needs_a_machine():
            pytest.skip("this machine's glibc cannot use the tunable")
        """
    )
    monkeypatch.setenv("CI", "true")
    pytester.runpytest_inprocess().assert_outcomes(failed=1, skipped=1)
    monkeypatch.setenv("CI", "")
    pytester.runpytest_inprocess().assert_outcomes(skipped=2)
