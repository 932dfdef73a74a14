"""The allocator relaunch (flaxen.runtime): when it applies, that it never loops, and that the CLI uses it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flaxen.runtime import HUGE_PAGE_TUNABLE, fast_allocator_environment

GLIBC = ("glibc", "2.36")


@pytest.fixture
def thp(tmp_path):
    def setting(text: str) -> Path:
        path = tmp_path / "enabled"
        path.write_text(text)
        return path

    return setting


def test_adds_the_huge_page_tunable_and_keeps_the_users_tunables(thp):
    env = fast_allocator_environment({"PATH": "/bin"}, libc=GLIBC, huge_pages_setting=thp("always [madvise] never"))
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": HUGE_PAGE_TUNABLE}
    env = fast_allocator_environment(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, libc=GLIBC, huge_pages_setting=thp("[always] madvise never")
    )
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{HUGE_PAGE_TUNABLE}"


@pytest.mark.parametrize(
    "environ, libc, setting",
    [
        ({"FLAXEN_ALLOCATOR": "system"}, GLIBC, "always [madvise] never"),  # the user's opt-out
        ({"GLIBC_TUNABLES": HUGE_PAGE_TUNABLE}, GLIBC, "always [madvise] never"),  # already relaunched: no loop
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, GLIBC, "always [madvise] never"),  # another allocator chosen
        ({}, ("glibc", "2.31"), "always [madvise] never"),  # glibc without the tunable
        ({}, ("", ""), "always [madvise] never"),  # musl and others
        ({}, GLIBC, "always madvise [never]"),  # huge pages switched off
        ({}, GLIBC, None),  # no such setting (not Linux, containers without /sys)
    ],
)
def test_does_nothing_when_it_cannot_help_or_was_told_not_to(tmp_path, environ, libc, setting):
    path = tmp_path / "enabled"
    if setting is not None:
        path.write_text(setting)
    assert fast_allocator_environment(environ, libc=libc, huge_pages_setting=path) is None


def _relaunch_applies() -> bool:
    return sys.platform.startswith("linux") and fast_allocator_environment() is not None


@pytest.mark.skipif(not _relaunch_applies(), reason="this machine's glibc/kernel cannot use the tunable (or it is set)")
def test_a_script_relaunches_once_with_the_tunable_and_keeps_its_arguments(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "import os, sys\n"
        "print('started', flush=True)\n"
        "from flaxen.runtime import relaunch_with_fast_allocator\n"
        "relaunch_with_fast_allocator()\n"
        "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "FLAXEN_ALLOCATOR", "FLAXEN_RELAUNCHED")}
    out = subprocess.run(
        [sys.executable, str(script), "a b", "--x"], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines() == ["started", "started", f"{HUGE_PAGE_TUNABLE} ['a b', '--x']"]


SCRIPT = (
    "import os, sys\n"
    "print('started', flush=True)\n"
    "from flaxen.runtime import relaunch_with_fast_allocator\n"
    "relaunch_with_fast_allocator()\n"
    "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])\n"
)


@pytest.mark.skipif(not _relaunch_applies(), reason="this machine's glibc/kernel cannot use the tunable (or it is set)")
def test_a_module_run_with_dash_m_relaunches_but_a_runpy_host_is_left_alone(tmp_path):
    (tmp_path / "relaunching_module.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "FLAXEN_ALLOCATOR", "FLAXEN_RELAUNCHED")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-m", "relaunching_module", "x"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert out.stdout.splitlines() == ["started", "started", f"{HUGE_PAGE_TUNABLE} ['x']"]
    host = tmp_path / "host.py"  # another program running the script in its own process must not be restarted
    host.write_text(
        "import runpy\nprint('host', flush=True)\n"
        f"runpy.run_path({str(tmp_path / 'relaunching_module.py')!r}, run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, str(host)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["host", "started", "None []"]


def test_the_command_runs_under_the_tunable(tmp_path):
    """`flaxen` relaunches itself; a bad-input error still comes out as one line with exit code 2."""
    probe = tmp_path / "missing-run"
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "FLAXEN_ALLOCATOR", "FLAXEN_RELAUNCHED")}
    out = subprocess.run(
        [sys.executable, "-m", "flaxen.cli", "generate", "--run", str(probe), "--prompt", "x"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("flaxen: error:"), out.stderr


def test_the_command_line_relaunches_but_calls_from_python_do_not(monkeypatch, tmp_path):
    import flaxen.cli
    import flaxen.runtime

    calls = []
    monkeypatch.setattr(flaxen.runtime, "relaunch_with_fast_allocator", lambda: calls.append("relaunch"))
    args = ["generate", "--run", str(tmp_path / "missing"), "--prompt", "x"]
    assert flaxen.cli.main(args) == 2 and calls == []
    monkeypatch.setattr(sys, "argv", ["flaxen", *args])
    assert flaxen.cli.main() == 2 and calls == ["relaunch"]


def test_the_compilation_cache_folder_follows_the_variable_and_the_user_cache():
    from flaxen.runtime import compilation_cache_folder

    assert compilation_cache_folder({"XDG_CACHE_HOME": "/c"}) == Path("/c/flaxen/xla")
    assert compilation_cache_folder({"FLAXEN_COMPILATION_CACHE": "/elsewhere"}) == Path("/elsewhere")
    assert all(compilation_cache_folder({"FLAXEN_COMPILATION_CACHE": off}) is None for off in ("off", "0", "", "none"))
    assert compilation_cache_folder({}) == Path.home() / ".cache" / "flaxen" / "xla"


def test_the_command_keeps_compiled_programs_and_a_second_run_reads_them(tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    (tmp_path / "text.txt").write_text("the king and the queen of the night. " * 400)
    env = os.environ | {"FLAXEN_COMPILATION_CACHE": str(cache), "FLAXEN_ALLOCATOR": "system"}
    command = [sys.executable, "-m", "flaxen.cli", "pretrain", "gpt", "--data", str(tmp_path / "text.txt")]
    command += ["--preset", "tiny", "--vocab-size", "300", "--steps", "2", "--no-progress", "--out", str(run)]
    subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    entries = {path.name for path in cache.iterdir() if not path.name.startswith(".")}
    assert any("train_step" in name for name in entries), entries  # the training step is kept
    env["JAX_LOG_COMPILES"] = "1"  # jax logs "Persistent compilation cache hit" when it reads one
    env["JAX_DEBUG_LOG_MODULES"] = "jax._src.compiler"
    again = subprocess.run(command + ["--overwrite"], env=env, capture_output=True, text=True, check=True)
    assert "cache hit" in again.stderr.lower()
    assert {path.name for path in cache.iterdir() if not path.name.startswith(".")} >= entries
