"""Process settings for the `flaxen` command: the memory allocator on CPU, and the persistent compilation cache.

XLA:CPU allocates each compiled step's scratch memory from the C allocator and frees it when the step ends; glibc
serves allocations that large with a fresh `mmap`, so every step page-faults all of it back in. Backing large
allocations with transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`) avoids that, but glibc reads
the variable once, at process start: `relaunch_with_fast_allocator()` relaunches the process with it, and the
`flaxen` command calls it.

`enable_compilation_cache()` keeps compiled XLA programs on disk (under the user's cache folder), so a repeated or
resumed run skips compiling its step; `FLAXEN_COMPILATION_CACHE` moves it (a folder) or turns it off ("off").

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
CACHE_VARIABLE = "FLAXEN_COMPILATION_CACHE"  # a folder for compiled programs, or "off"
CACHE_MIN_COMPILE_SECONDS = 0.5  # programs that compile faster than this are not worth a disk read
CACHE_MAX_BYTES = 2 << 30  # least recently used entries go beyond this; a bound also turns on JAX's file lock
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


def compilation_cache_folder(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where compiled programs are kept: $FLAXEN_COMPILATION_CACHE, else $XDG_CACHE_HOME/flaxen/xla (default
    ~/.cache/flaxen/xla); None when that variable says off (off, none, 0, false, or empty)."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(CACHE_VARIABLE)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "none", "0", "false") else Path(chosen).expanduser()
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flaxen" / "xla"


def enable_compilation_cache(folder: Path | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in `folder` (default: `compilation_cache_folder()`); the folder.

    Entries are keyed by the program, the compiler version and the device, so a run never reads another setup's
    program. With a size bound JAX takes a file lock around every read and write, so runs sharing the folder at the
    same time never read an entry half-written. An unwritable folder leaves caching off rather than failing the run.
    """
    folder = compilation_cache_folder() if folder is None else folder
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return folder
