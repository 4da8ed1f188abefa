"""The C heap allocator a fine-tuning process runs under: mimalloc where it is installed.

Why: a training step frees and allocates gigabytes of activations in a different order each way
(forward, then backward), and glibc's malloc keeps freed blocks it cannot reuse for the next,
differently sized ones, so a process's resident memory grows step after step (LoRA on an int8
SmolLM2 base: a peak of 1,909 MB at the first step, 2,376 MB by the fifth). mimalloc reuses them:
the same steps peak at 1,690-1,730 MB from the first to the last, and with its freed memory kept
for reuse (not handed back to the system) the step is faster too: 9.8 s against glibc's 10.3 s
(benchmarks/RESULTS.md). An allocator can only be chosen when a process starts, so `genforge
finetune` starts itself again with the library preloaded (as PyTorch's own CPU launcher,
`torch.backends.xeon.run_cpu`, does for jemalloc and tcmalloc), once, on Linux, unless
GENFORGE_MALLOC=system. The library is the `cmeel-mimalloc` wheel's (a dependency: 1.6 MB).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

ENV = "GENFORGE_MALLOC"  # "mimalloc" (the default) or "system" (glibc's malloc)
LIBRARY = Path("cmeel.prefix") / "lib" / "libmimalloc.so"  # where the wheel puts it


def mimalloc_library() -> Path | None:
    """The installed mimalloc shared library, or None."""
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    for root in [*roots, *sys.path]:
        candidate = Path(root) / LIBRARY
        if candidate.is_file():
            return candidate
    return None


def preloaded() -> bool:
    """Whether this process runs under mimalloc (preloaded)."""
    return "mimalloc" in os.environ.get("LD_PRELOAD", "")


def genforge_process() -> bool:
    """Whether this process is the `genforge` command (its console script or `python -m
    genforge`), not a program that calls genforge's CLI from within."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return program.name == "genforge" or program.parts[-2:] == ("genforge", "__main__.py")


def wanted() -> bool:
    """Whether fine-tuning runs under mimalloc here: on Linux, installed, and not turned off with
    GENFORGE_MALLOC=system."""
    if not sys.platform.startswith("linux") or os.environ.get(ENV, "mimalloc") == "system":
        return False
    return mimalloc_library() is not None


def restart_under_mimalloc() -> None:
    """Start the `genforge` command again (its own command line) with mimalloc preloaded where it
    is `wanted` and not already in force. Returns only where it does not restart."""
    if preloaded() or not genforge_process() or not wanted():
        return
    env = mimalloc_env(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)


def mimalloc_env(env) -> dict[str, str] | None:
    """`env` for a process that runs under mimalloc (None where it is not installed): the library
    preloaded, and freed memory kept for reuse instead of handed back to the system (a training
    step faults its pages in again otherwise: 9.8 s a step against 12.8 s)."""
    library = mimalloc_library()
    if library is None:
        return None
    preload = " ".join(filter(None, [str(library), env.get("LD_PRELOAD", "")]))
    return {"MIMALLOC_PURGE_DELAY": "-1", **env, "LD_PRELOAD": preload}
