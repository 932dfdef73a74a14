"""Process settings that only take effect when the interpreter starts: the memory allocator on CPU.

XLA:CPU allocates each compiled step's scratch memory from the C allocator and frees it when the step ends; glibc
serves allocations that large with a fresh `mmap`, so every step page-faults all of it back in. Backing large
allocations with transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`) avoids that, but glibc reads
the variable once, at process start: `relaunch_with_fast_allocator()` relaunches the process with it, and the
`flaxen` command calls it.

This module itself imports nothing heavy; importing it loads the `flaxen` package (models only), which is what a
relaunch repeats.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT_VARIABLE = "FLAXEN_ALLOCATOR"  # set to "system" to keep the C allocator's defaults
_RELAUNCHED_VARIABLE = "FLAXEN_RELAUNCHED"
TRANSPARENT_HUGE_PAGES = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_MIN_GLIBC = (2, 35)  # the release that added glibc.malloc.hugetlb


def fast_allocator_environment(
    environ: Mapping[str, str] | None = None,
    *,
    libc: tuple[str, str] | None = None,
    huge_pages_setting: Path = TRANSPARENT_HUGE_PAGES,
) -> dict[str, str] | None:
    """The environment to relaunch with, or None when there is nothing to gain or the user decided otherwise.

    None when: `FLAXEN_ALLOCATOR=system`; the tunable is already set (so a relaunch never loops); another
    allocator is preloaded (`LD_PRELOAD`); not Linux with glibc >= 2.35; transparent huge pages are disabled.
    """
    environ = dict(os.environ if environ is None else environ)
    if environ.get(OPT_OUT_VARIABLE, "").strip().lower() in ("system", "default", "off", "0"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or environ.get("LD_PRELOAD", "").strip():
        return None
    name, version = libc if libc is not None else platform.libc_ver()
    if not sys.platform.startswith("linux") or name != "glibc" or _version(version) < _MIN_GLIBC:
        return None
    try:
        if "[never]" in huge_pages_setting.read_text():
            return None
    except OSError:
        return None
    environ["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGE_TUNABLE}" if tunables else HUGE_PAGE_TUNABLE
    return environ


def relaunch_with_fast_allocator() -> None:
    """Replace this process with the same command under `fast_allocator_environment()`; a no-op when that is None.

    Call it first thing in a training script (before loading data: the relaunch starts the script over). A no-op
    unless this process runs a script or `-m` module of its own (not in notebooks, IPython, `-c` or stdin): there,
    export GLIBC_TUNABLES=glibc.malloc.hugetlb=1 before starting Python instead.
    """
    argv = list(getattr(sys, "orig_argv", []))
    if not _runs_as_its_own_command(argv) or os.environ.get(_RELAUNCHED_VARIABLE):
        return
    environ = fast_allocator_environment()
    if environ is None:
        return
    environ[_RELAUNCHED_VARIABLE] = "1"  # never twice, even if something strips GLIBC_TUNABLES
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], environ)
    except OSError:
        return  # keep running with the default allocator rather than fail


def _runs_as_its_own_command(argv: list[str]) -> bool:
    """True when `__main__` is the script or `-m` module the interpreter was started with, so starting the same
    command over gives the same program. False for notebooks, IPython's %run, runpy hosts, `-c` and stdin."""
    if len(argv) < 2 or hasattr(sys, "ps1") or sys.flags.interactive:
        return False
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:  # python -m package.module
        module = spec.name.removesuffix(".__main__")
        return "-m" in argv[:-1] and argv[argv.index("-m") + 1] in (module, spec.name)
    main_file = getattr(main, "__file__", None)
    if not main_file or sys.argv[0] in ("", "-", "-c"):
        return False
    return any(os.path.abspath(arg) == os.path.abspath(main_file) for arg in argv[1:])


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts) or (0,)
