"""Process settings that only take effect when the interpreter starts: the memory allocator on CPU.

XLA:CPU allocates each compiled step's scratch memory (hundreds of MB for a training step) from the C allocator and
frees it when the step ends. glibc serves allocations that large with a fresh `mmap`, so every step page-faults
all of it back in: about 100,000 faults, 15-20% of a small model's training step (benchmarks/NOTES.md). Asking
glibc to back large allocations with transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`) takes
that to a few hundred faults per step. glibc reads the variable once, at process start, so applying it means
relaunching the process: `relaunch_with_fast_allocator()` does that, and the `flaxen` command calls it.

This module must not import jax (or anything heavy): it runs before the relaunch.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT_VARIABLE = "FLAXEN_ALLOCATOR"  # set to "system" to keep the C allocator's defaults
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

    Call it first thing in a training script (before loading data: the relaunch starts the script over). Also a
    no-op in an interactive interpreter or for a script read from standard input, which cannot be started over.
    """
    argv = list(getattr(sys, "orig_argv", []))
    if len(argv) < 2 or sys.argv[0] in ("", "-") or hasattr(sys, "ps1") or sys.flags.interactive:
        return
    environ = fast_allocator_environment()
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], environ)
    except OSError:
        return  # keep running with the default allocator rather than fail


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts) or (0,)
