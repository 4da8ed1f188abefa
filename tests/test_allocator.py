"""genforge.allocator: the `genforge` command restarts itself once with mimalloc preloaded."""

import os
import subprocess
import sys

from genforge import allocator

PROBE = """import os
from genforge import allocator
allocator.restart_under_mimalloc()
with open("/proc/self/maps") as f:
    mapped = "libmimalloc" in f.read()
print(os.environ.get("LD_PRELOAD", "-"), mapped)
"""


def probe(tmp_path, name: str, **env: str) -> list[str]:
    script = tmp_path / name
    script.write_text(PROBE)
    run = subprocess.run(
        [sys.executable, str(script)],
        env={k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV)} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_the_genforge_command_runs_under_mimalloc_unless_told_not_to(tmp_path):
    library = allocator.mimalloc_library()
    assert library is not None  # a dependency: the set-up installs it
    preload, mapped = probe(tmp_path, "genforge")  # a process named as the command
    assert preload == str(library) and mapped == "True"
    preload, mapped = probe(tmp_path, "genforge", GENFORGE_MALLOC="system")
    assert (preload, mapped) == ("-", "False")
    preload, mapped = probe(tmp_path, "my_program.py")  # a program calling genforge's CLI
    assert (preload, mapped) == ("-", "False")
