"""The sandbox with real subprocesses: each test is one thing a generated program might do."""

from __future__ import annotations

import dis
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import textwrap
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from genforge.agents import guard, sandbox
from genforge.agents.sandbox import SandboxResult, run_python
from genforge.errors import GenforgeError

SECRET = "TOPSECRET-5d0c2f"  # written outside the sandbox; must never reach the output


def run(code: str, **kwargs) -> SandboxResult:
    return run_python(textwrap.dedent(code), **kwargs)


@pytest.fixture
def outside(tmp_path):
    """A folder outside the sandbox with a secret and a file the program must not change."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret-name-93a1.txt").write_text(SECRET)
    victim = folder / "victim.txt"
    victim.write_text("original")
    victim.chmod(0o600)
    return folder


def test_correct_code_passes():
    result = run("""
        def add(a, b):
            return a + b

        assert add(2, 3) == 5
        if __name__ == "__main__":
            print("sum", add(2, 3))
    """)
    assert (result.status, result.passed, result.returncode) == ("passed", True, 0)
    assert (result.stdout, result.stderr) == ("sum 5\n", "")


def test_failing_assert_fails_with_its_traceback():
    result = run("assert sorted([3, 1]) == [3, 1], 'not sorted'")
    assert (result.status, result.passed, result.returncode) == ("failed", False, 1)
    assert "AssertionError: not sorted" in result.stderr
    assert "program.py" in result.stderr
    assert "sandbox.py" not in result.stderr and "guard.py" not in result.stderr


@pytest.mark.parametrize(
    ("code", "timeout"),
    [("while True: pass", 2), ("import time\ntime.sleep(60)", 1)],
    ids=["busy", "asleep"],  # asleep: no CPU limit would ever end it, only the kill
)
def test_endless_program_times_out(code, timeout):
    result = run_python(code, timeout=timeout)
    assert (result.status, result.returncode) == ("timeout", None)
    assert timeout <= result.seconds < timeout + 3


@pytest.mark.parametrize(
    "code",
    ["x = []\nwhile True:\n    x.append(b' ' * 100_000_000)", "bytearray(10**11)"],
    ids=["append-100MB", "bytearray-100GB"],
)
def test_unbounded_allocation_is_memory(code):
    result = run_python(code, memory_mb=256)
    assert result.status == "memory", result.stderr


@pytest.mark.parametrize(
    "code",
    [
        "import os\nif os.fork() == 0:\n    os.execv('/bin/sh', ['sh', '-c', 'touch {marker}'])",
        "import subprocess\nsubprocess.run(['touch', '{marker}'])",
        "import os\nos.system('touch {marker}')",
        "import multiprocessing\nmultiprocessing.Process(target=open, args=('{marker}', 'w')).start()",
    ],
    ids=["fork", "subprocess", "system", "multiprocessing"],
)
def test_starting_a_process_is_blocked_and_has_no_effect(code, tmp_path):
    marker = tmp_path / "marker"  # what the process would have created
    result = run_python(code.format(marker=marker))
    assert result.status == "blocked", result.stderr
    assert result.stderr.startswith("sandbox: refused ")
    assert not marker.exists()


@pytest.mark.parametrize(
    "code",
    [
        "print(open({secret!r}).read())",
        "import pathlib\nprint(pathlib.Path({secret!r}).read_text())",
        "import os\nprint(os.listdir({folder!r}))",
        "import glob\nprint(glob.glob({folder!r} + '/*'))",
        # The refusal cannot be caught to try again.
        "try:\n    open({secret!r})\nexcept BaseException:\n    print('caught'); print(open({secret!r}).read())",
    ],
    ids=["open", "pathlib", "listdir", "glob", "catch-and-retry"],
)
def test_reading_outside_is_blocked(code, outside):
    secret = str(outside / "secret-name-93a1.txt")
    result = run_python(code.format(secret=secret, folder=str(outside)))
    assert result.status == "blocked", result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "secret-name" not in result.stdout and "caught" not in result.stdout


@pytest.mark.parametrize(
    "code",
    [
        "open({victim!r}, 'w').write('overwritten')",
        "open({victim!r}, 'a').write('appended')",
        "import os\nos.remove({victim!r})",
        "import pathlib\npathlib.Path({victim!r}).unlink()",
        "import os\nos.rename({victim!r}, 'moved.txt')",
        "import os\nos.chmod({victim!r}, 0o777)",
        "import shutil\nshutil.rmtree({folder!r})",
        "import os\nos.symlink({victim!r}, 'link')\nopen('link', 'w').write('through a link')",
    ],
    ids=["write", "append", "remove", "unlink", "rename", "chmod", "rmtree", "symlink"],
)
def test_changing_outside_is_blocked(code, outside):
    victim = outside / "victim.txt"
    result = run_python(code.format(victim=str(victim), folder=str(outside)))
    assert result.status == "blocked", result.stderr
    assert victim.read_text() == "original"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_connecting_to_a_local_server_is_blocked():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = run(f"""
            import socket
            with socket.create_connection(("127.0.0.1", {port}), timeout=2) as connection:
                connection.sendall(b"hello")
        """)
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()  # nobody ever connected
    assert result.status == "blocked", result.stderr


@pytest.mark.parametrize(
    "code",
    [
        "import ctypes\nprint(ctypes.CDLL(None).getpid())",
        "import importlib.util\nimportlib.util.module_from_spec(importlib.util.find_spec('_ctypes'))",
    ],
    ids=["import", "importlib"],
)
def test_ctypes_is_blocked(code):
    result = run_python(code)
    assert result.status == "blocked", result.stderr
    assert "SandboxImportError: sandbox: refused import" in result.stderr


def test_a_refused_import_can_be_caught_like_a_missing_module():
    result = run("""
        try:
            import ctypes
        except ImportError:
            ctypes = None
        print(ctypes)
    """)
    assert (result.status, result.stdout) == ("passed", "None\n")


@pytest.mark.parametrize(
    "code",
    [
        "import marshal\nexec(marshal.loads(marshal.dumps(compile('print(1)', 'x', 'exec'))))",
        "def f(): pass\nf.__code__.replace(co_code=f.__code__.co_code)",
    ],
    ids=["marshal", "code-replace"],
)
def test_bytecode_from_outside_the_compiler_is_blocked(code):
    result = run_python(code)
    assert result.status == "blocked", result.stderr
    assert result.stdout == ""


def test_the_guard_ignores_what_the_program_rebinds(outside):
    result = run(f"""
        import builtins, os, posixpath
        os.path.realpath = posixpath.realpath = posixpath.abspath = lambda path: "program.py"
        os._exit = os.write = lambda *args: None
        builtins.isinstance = lambda *args: True
        builtins.str, builtins.len = bytes, lambda x: 0
        print(open({str(outside / "secret-name-93a1.txt")!r}).read())
    """)
    assert result.status == "blocked", result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_the_guard_s_functions_cannot_be_replaced():
    result = run("""
        import sys
        bootstrap = sys._getframe(1).f_globals  # the guard's module, which runs this program
        bootstrap["_inside"].__code__ = (lambda path, roots: True).__code__
    """)
    assert result.status == "blocked", result.stderr


def test_the_guard_reads_no_name_the_program_could_rebind():
    hook = guard._make_guard("/sandbox", ("/usr",), (), "/sandbox/program.py")
    # The hook, the step that hands back the nonce, and every function of ours bound in their
    # defaults, transitively.
    functions, pending = [], [hook, guard._report_completion]
    while pending:
        function = pending.pop()
        if function.__code__.co_filename == guard.__file__ and function not in functions:
            functions.append(function)
            pending += [d for d in function.__defaults__ or () if isinstance(d, types.FunctionType)]
    names = {f.__name__ for f in functions}
    assert {"guard", "_open_refusal", "_resolve", "_as_path", "_refuse"} <= names
    assert {"_completion_refusal", "_report_completion"} <= names
    for function in functions:
        codes = [function.__code__]
        while codes:
            code = codes.pop()
            codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
            loads = {i.argval for i in dis.get_instructions(code) if "GLOBAL" in i.opname}
            loads |= {i.argval for i in dis.get_instructions(code) if i.opname.endswith("DEREF")}
            assert not loads, f"{function.__name__} reads {loads}"


def test_parent_environment_is_not_inherited(monkeypatch):
    monkeypatch.setenv("GENFORGE_TEST_TOKEN", "hunter2-0b5e")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    result = run("""
        import os
        print(dict(os.environ))
        print(os.environ["HOME"] == os.getcwd())
    """)
    assert result.passed, result.stderr
    assert "hunter2-0b5e" not in result.stdout and "proxy.invalid" not in result.stdout
    assert result.stdout.endswith("True\n")


def test_sandbox_directory_is_removed_afterwards():
    result = run("""
        import os
        os.makedirs("a/b")
        open("a/b/f", "w").close()
        os.chmod("a", 0o500)  # makes removing a/b hard for anyone but root
        print(os.getcwd())
    """)
    workdir = result.stdout.strip()
    assert result.passed and os.path.basename(workdir).startswith("genforge-sandbox-")
    assert not os.path.exists(workdir)


def test_files_inside_the_sandbox_are_allowed():
    result = run("""
        import os, pathlib, tempfile

        with open("notes.txt", "w") as f:
            f.write("kept")
        assert open("notes.txt").read() == "kept"
        os.mkdir("sub")
        os.rename("notes.txt", "sub/notes.txt")
        assert os.listdir("sub") == ["notes.txt"]
        assert pathlib.Path("sub/notes.txt").read_text() == "kept"
        with tempfile.TemporaryDirectory() as scratch:
            pathlib.Path(scratch, "x").write_text("y")
        os.remove("sub/notes.txt")
        os.rmdir("sub")
        print("ok")
    """)
    assert (result.status, result.stdout) == ("passed", "ok\n"), result.stderr


def test_common_stdlib_modules_work():
    result = run(r"""
        import collections, functools, hashlib, heapq, itertools, math, re, string, typing

        assert math.gcd(12, 18) == 6 and re.findall(r"\d+", "a1b22") == ["1", "22"]
        assert collections.Counter("abca").most_common(1) == [("a", 2)]
        assert list(itertools.accumulate([1, 2, 3])) == [1, 3, 6]
        assert heapq.nsmallest(2, [5, 1, 4]) == [1, 4]
        assert functools.reduce(lambda a, b: a * b, [1, 2, 3, 4]) == 24
        assert string.ascii_lowercase[:3] == "abc" and typing.get_args(typing.List[int]) == (int,)
        print(hashlib.sha256(b"abc").hexdigest()[:8])
    """)
    assert (result.status, result.stdout) == ("passed", "ba7816bf\n"), result.stderr


def test_parallel_runs_from_threads():
    programs = [f"import time\ntime.sleep(0.3)\nprint({i} * {i})" for i in range(4)]
    programs.append("import os\nos.system('true')")
    with ThreadPoolExecutor(len(programs)) as pool:
        results = list(pool.map(run_python, programs))
    assert [r.status for r in results] == ["passed"] * 4 + ["blocked"]
    assert [r.stdout for r in results[:4]] == [f"{i * i}\n" for i in range(4)]


def test_output_is_bounded():
    result = run("""
        import sys
        print("x" * 100_000)
        print("y" * 100_000, file=sys.stderr)
        raise ValueError("the end")
    """)
    assert result.status == "failed"
    assert result.stdout.startswith("xxx") and len(result.stdout) < 5000
    assert result.stderr.endswith("ValueError: the end\n") and len(result.stderr) < 5000


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"memory_mb": 1}], ids=["timeout", "memory"])
def test_bad_arguments_raise_a_genforge_error(kwargs):
    with pytest.raises(GenforgeError, match="must be"):
        run_python("pass", **kwargs)


PROBE = """
import ctypes, importlib.util, json, os, socket, sys

spec = importlib.util.spec_from_file_location("sandbox_under_test", {module!r})
sandbox = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sandbox)
applied = sandbox._isolate(os.getcwd(), sandbox._python_roots())
libc = ctypes.CDLL(None)


def refused(action):
    try:
        action()
        return False
    except OSError:
        return True


seen = {{
    "applied": applied,
    "inside": not refused(lambda: open("inside.txt", "w").close()),
    "read": refused(lambda: open({secret!r}).read()),
    "write": refused(lambda: open({marker!r}, "w").close()),
    "connect": refused(lambda: socket.create_connection(("127.0.0.1", {port}), timeout=1)),
    "signal": refused(lambda: os.kill(os.getppid(), 0)),
    "memfd": refused(lambda: os.memfd_create("m")),
    "chown": refused(lambda: os.chown("inside.txt", 1, 1)),
    "no_new_privs": libc.prctl(39, 0, 0, 0, 0) == 1,  # PR_GET_NO_NEW_PRIVS
    "can_chown": libc.prctl(23, 0, 0, 0, 0) == 1,  # PR_CAPBSET_READ, CAP_CHOWN
}}
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def kernel_probe(tmp_path_factory):
    """What a child that applied layer 3 alone, with no guard, was refused."""
    tmp_path = tmp_path_factory.mktemp("probe")
    outside, workdir = tmp_path / "outside", tmp_path / "work"
    outside.mkdir()
    workdir.mkdir()
    (outside / "secret-name-93a1.txt").write_text(SECRET)
    marker = outside / "marker"
    with socket.create_server(("127.0.0.1", 0)) as server:
        probe = PROBE.format(
            module=sandbox.__file__,
            secret=str(outside / "secret-name-93a1.txt"),
            marker=str(marker),
            port=server.getsockname()[1],
        )
        done = subprocess.run(
            [sys.executable, "-I", "-c", probe], cwd=workdir, capture_output=True, text=True
        )
        server.settimeout(0.2)
        try:
            server.accept()
            connected = True
        except TimeoutError:
            connected = False
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["inside"]  # the sandbox folder stays writable
    return {**seen, "connected": connected, "marker": marker.exists(), "stdout": done.stdout}


def test_protections_names_each_layer_and_the_audit_hook_always_holds():
    found = sandbox.protections()
    assert list(found) == list(sandbox.PROTECTIONS)
    assert all(isinstance(value, bool) for value in found.values())
    assert found["audit_hook"] is True  # asserted in action by every "blocked" test above


# Each kernel protection, and what the probe must then have been refused.
KERNEL_CHECKS = {
    "network_namespace": lambda seen: seen["connect"] and not seen["connected"],
    "no_new_privs": lambda seen: seen["no_new_privs"],
    "seccomp": lambda seen: seen["memfd"],
    "landlock": lambda seen: seen["read"] and seen["write"] and not seen["marker"],
    "landlock_network": lambda seen: seen["connect"] and not seen["connected"],
    "landlock_signals": lambda seen: seen["signal"],
    "no_capabilities": lambda seen: not seen["can_chown"] and (os.getuid() != 0 or seen["chown"]),
}


def test_every_kernel_protection_has_a_check():
    assert set(KERNEL_CHECKS) == set(sandbox.PROTECTIONS) - {"audit_hook"}


@pytest.mark.parametrize("name", list(KERNEL_CHECKS))
def test_each_kernel_protection_given_here_holds_without_the_audit_hook(name, kernel_probe):
    """Layer 3 alone, in a child that has no guard: each protection this kernel gives (as
    protections() reports it) is applied and refuses what it must."""
    if not sandbox.protections()[name]:
        pytest.skip(f"this kernel does not give {name} (see PROTECTIONS in sandbox.py)")
    assert name in kernel_probe["applied"]
    assert KERNEL_CHECKS[name](kernel_probe), kernel_probe
    assert SECRET not in kernel_probe["stdout"]


def test_a_missing_protection_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "_WARNED", set())
    every = frozenset(sandbox.PROTECTIONS)
    with caplog.at_level(logging.WARNING, logger=sandbox.__name__):
        for _ in range(3):
            sandbox._warn_once_of_missing(every - {"landlock", "seccomp"})
        sandbox._warn_once_of_missing(every)
    assert [r.getMessage() for r in caplog.records] == [
        "The code sandbox runs without seccomp, landlock on this machine; the audit hook and the "
        "other layers still apply (see 'The sandbox' in docs/evals.md)."
    ]


@pytest.mark.parametrize(
    "code",
    [
        # Memory in a file descriptor: RLIMIT_AS does not count it.
        "import os\nfds = []\nfor i in range(64):\n    fds.append(os.memfd_create(f'm{i}'))\n"
        "    os.write(fds[-1], b'x' * 8_000_000)",
        # The same through the posix module, which the program may reach directly.
        "import posix\nfd = posix.memfd_create('m')\nfor _ in range(40):\n    posix.write(fd, b'x' * 8_000_000)",
    ],
    ids=["os", "posix"],
)
def test_memory_held_in_a_memfd_is_blocked(code):
    result = run_python(code, memory_mb=128)
    assert result.status == "blocked", result.stderr
    assert "memfd_create" in result.stderr


def test_a_folder_grown_past_the_limit_is_memory():
    # 192 MB in files of 8 MB each (under the size limit of one file), with 128 MB allowed.
    result = run(
        """
        for i in range(24):
            with open(f"f{i}", "wb") as f:
                f.write(b"x" * 8_000_000)
        print("wrote all")
    """,
        memory_mb=128,
    )
    assert result.status == "memory", result.stderr
    assert "folder grew past 128 MB" in result.stderr


def test_a_file_past_the_size_limit_cannot_be_written():
    result = run_python("open('big', 'wb').write(b'x' * 32 * 2**20)", memory_mb=256)
    assert result.status == "failed", result.stderr
    assert "OSError: [Errno 27] File too large" in result.stderr  # Python ignores SIGXFSZ


def test_a_sparse_file_counts_what_it_holds():
    result = run(
        """
        with open("sparse", "wb") as f:
            f.truncate(16 * 2**20 - 1)  # 16 MB long, nothing written
    """,
        memory_mb=64,
    )
    assert result.passed, result.stderr


def test_deeply_nested_folders_are_removed_afterwards():
    # 2,000 levels, each made at the top and moved into the next: deeper than Python's recursion
    # limit and, at about 12,000 characters, longer than a path may be.
    result = run("""
        import os

        print(os.getcwd())
        os.mkdir("d0")
        open("d0/file", "w").close()
        for i in range(1, 2000):
            os.mkdir(f"d{i}")
            os.rename(f"d{i - 1}", f"d{i}/d{i - 1}")
        os.chmod("d1999/d1998", 0o500)
        os.chmod("d1999", 0)
    """)
    workdir = result.stdout.strip()
    assert result.passed, result.stderr
    assert os.path.basename(workdir).startswith("genforge-sandbox-")
    assert not os.path.exists(workdir)


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos._exit(0)",
        "import sys\nsys.exit(0)",
        "raise SystemExit",
        "try:\n    assert solution() == 4\nfinally:\n    raise SystemExit(0)",
        "import signal\nsignal.raise_signal(signal.SIGTERM)",
        # A fake report: the marker's look on stdout and stderr, bytes into every descriptor.
        "import os, sys\nprint('passed')\nprint('sandbox: passed', file=sys.stderr)\n"
        "for fd in range(256):\n    try:\n        os.write(fd, b'0' * 32)\n    except OSError:\n"
        "        pass\nos._exit(0)",
        # What the guard itself calls, rebound before leaving early.
        "import builtins, os, sys\nbuiltins.exec = builtins.compile = lambda *a, **k: None\n"
        "os._exit = sys.exit = os.write = lambda *a: None\nraise SystemExit(0)",
        # The guard's reporting step, called by the program itself.
        "import os, sys\nrunner = sys._getframe(1)\n"
        "runner.f_globals['_report_completion'](*runner.f_locals['completion'])\nos._exit(0)",
        # ... from a thread, where no frame of the program's is its caller.
        "import os, sys, threading\nrunner = sys._getframe(1)\n"
        "report = runner.f_globals['_report_completion']\n"
        "thread = threading.Thread(target=report, args=runner.f_locals['completion'])\n"
        "thread.start(); thread.join()\nos._exit(0)",
        # The guard's runner called again, on an empty program that returns at once.
        "import os, sys\nrunner = sys._getframe(1)\nopen('empty.py', 'w').close()\n"
        "runner.f_globals['_run_program']('empty.py', runner.f_locals['completion'])\nos._exit(0)",
        # A trace function could jump over the tests.
        "import sys\nsys.settrace(lambda frame, event, arg: None)",
    ],
    ids=[
        "os._exit",
        "sys.exit",
        "SystemExit",
        "SystemExit-in-finally",
        "own-signal",
        "fake-marker",
        "rebound-builtins",
        "report-called",
        "report-from-a-thread",
        "runner-called",
        "settrace",
    ],
)
def test_a_program_that_ends_before_its_tests_does_not_pass(code):
    program = f"def solution():\n    return 4\n\n{code}\n\nassert solution() == 5  # the tests\n"
    result = run_python(program)
    assert result.status in ("failed", "blocked"), result.stderr
    assert not result.passed


def test_the_report_line_is_the_call_that_reports():
    source = Path(guard.__file__).read_text().splitlines()[guard._REPORT_LINE - 1]
    assert source.strip().startswith("_report(*completion)")
