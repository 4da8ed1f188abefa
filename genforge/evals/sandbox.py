"""Run model-generated Python safely: the code-execution half of HumanEval/MBPP pass@1.

`run_python(code)` runs `code` in a fresh interpreter and reports "passed", "failed", "timeout",
"memory" or "blocked". Nothing the program does may touch the user's files, the network or other
processes, or use the machine beyond its limits. The defence is layered, outermost first, so that
each layer holds where an inner one is bypassed or not available:

1. Process: `python -I -S -B` (no user site, no PYTHON* variables, no cwd on sys.path, no .pth
   files run, no .pyc written), in a new session, its cwd a new temporary directory that is removed afterwards, an
   environment of our own (HOME and TMPDIR point into the sandbox), stdin /dev/null, stdout and
   stderr into unlinked files. A wall-clock timeout in the parent kills the whole process group.
2. Resource limits: address space, CPU seconds, file size (which also bounds the output), no core
   files and, for ordinary users, the number of processes (the kernel does not count root's).
3. Kernel isolation, each step skipped silently where the kernel refuses it: a network namespace
   of its own (no interfaces but a loopback that is down; a user namespace too for ordinary
   users), no_new_privs, a Landlock domain (read only the Python installation and the system
   libraries, write only the sandbox, no TCP, no signals out of the domain) and no capabilities.
   This takes ctypes, which would let the program get around the audit hook, so it is done in a
   first interpreter that then execs the second one, where the program runs.
4. An audit hook (PEP 578), always: installed before the program is compiled and impossible to
   remove, it refuses sockets, processes, ctypes, reading outside the sandbox and the Python
   installation, changing anything outside the sandbox, and bytecode the compiler did not make.
   A refusal ends the program at once (exit status 97) with a "sandbox: refused ..." line on
   stderr, since an exception could be caught and the attempt retried; only a refused import
   raises (SandboxImportError), because libraries try optional imports and carry on without.

The hook runs inside the program's interpreter, so it trusts nothing the program can rebind: the
functions, builtins and tables it uses are bound as default arguments when it is defined, it calls
no code of the program's, and the program may not replace a function's code or defaults.
The child is this file run as a script, so that its code stays ordinary, linted Python.

Not enforced: disk use beyond the size of each file (the timeout bounds it); and an audit hook is
no sandbox on its own (PEP 578 says so): a CPython memory-safety bug, or builtin modules that
importlib can instantiate a second time (posix.mknod, _signal.pidfd_send_signal), reach past it.
Layer 3 is what holds then, so run where the kernel allows it (Landlock: Linux 5.13+).
"""

from __future__ import annotations

import _frozen_importlib_external
import builtins
import contextlib
import io
import math
import os
import pathlib
import resource
import signal
import socket
import stat
import struct
import sys
import sysconfig
import time
import types
from dataclasses import dataclass

BLOCKED_EXIT = 97  # the guard refused an operation
MEMORY_EXIT = 98  # the program raised MemoryError
_OUTPUT_LIMIT = 4096  # bytes kept of stdout (its head) and of stderr (its tail)
_FILE_LIMIT = 16 * 2**20  # the largest file the program may write, its output included
_MIN_MEMORY_MB = 64  # the interpreter alone maps about 20 MB before the program starts
# -S: no site module, so no .pth file runs (stage two puts site-packages on sys.path itself);
# -B: no .pyc written; -u: output survives a kill.
_PYTHON_FLAGS = ("-I", "-S", "-B", "-u", "-X", "utf8")


@dataclass
class SandboxResult:
    """How one program ended."""

    status: str  # "passed", "failed" (non-zero exit), "timeout", "memory" or "blocked"
    returncode: int | None  # exit status, negative for a signal; None when the timeout killed it
    stdout: str  # the first _OUTPUT_LIMIT bytes
    stderr: str  # the last _OUTPUT_LIMIT bytes, where a traceback ends
    seconds: float  # wall clock

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_python(code: str, *, timeout: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run `code` as a Python program in a sandboxed subprocess; safe to call from many threads."""
    # Imported here, not at the top: the child runs this file as a script, where genforge may not
    # be importable and where these modules would only slow down every run.
    import subprocess
    import tempfile

    from genforge.errors import GenforgeError

    if not isinstance(code, str):
        raise GenforgeError(f"run_python needs the program as a str, not {type(code).__name__}.")
    if not timeout > 0:
        raise GenforgeError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    if memory_mb < _MIN_MEMORY_MB:
        raise GenforgeError(f"memory_mb must be at least {_MIN_MEMORY_MB}, got {memory_mb}.")
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="genforge-sandbox-"))
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(code)
        cpu_seconds = math.ceil(timeout) + 1  # a backstop: the wall clock normally ends it first
        script = os.path.realpath(__file__)
        command = [sys.executable, *_PYTHON_FLAGS, script, "isolate", workdir]
        command += [str(memory_mb), str(cpu_seconds)]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.monotonic()
            proc = subprocess.Popen(
                command,
                cwd=workdir,
                env=_child_environment(workdir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                timed_out = _wait_for_exit(proc.pid, timeout)
            finally:
                # Not reaped yet, so its pid, which is also the group's id, cannot have been
                # taken by an unrelated process. Kills whatever it started, even after it exited.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            seconds = time.monotonic() - start
            stdout, stderr = _head(out), _tail(err)
    finally:
        _remove_tree(workdir)
    returncode = None if timed_out else proc.returncode
    return SandboxResult(_status(proc.returncode, timed_out), returncode, stdout, stderr, seconds)


def _child_environment(workdir: str) -> dict[str, str]:
    """Nothing inherited (no secrets, no proxies); home and temporary files in the sandbox."""
    # One thread per numeric library: the harness runs several programs at once.
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir, **threads}


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait for the child to end, without reaping it; True if the timeout ran out first."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        time.sleep(min(delay, remaining))
        delay = min(2 * delay, 0.02)
    return False


def _status(returncode: int, timed_out: bool) -> str:
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0:
        return "passed"
    if returncode == BLOCKED_EXIT:
        return "blocked"
    # A SIGKILL the parent did not send comes from the kernel's out-of-memory killer.
    if returncode in (MEMORY_EXIT, -signal.SIGKILL):
        return "memory"
    return "failed"


def _head(f: io.BufferedRandom) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    text = f.read(_OUTPUT_LIMIT).decode("utf-8", "replace")
    return text if size <= _OUTPUT_LIMIT else f"{text}\n[... {size - _OUTPUT_LIMIT} bytes cut]\n"


def _tail(f: io.BufferedRandom) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - _OUTPUT_LIMIT))
    text = f.read().decode("utf-8", "replace")
    return text if size <= _OUTPUT_LIMIT else f"[{size - _OUTPUT_LIMIT} bytes cut ...]\n{text}"


def _remove_tree(path: str) -> None:
    """Remove the sandbox, first giving back any permission the program took from its folders."""
    import shutil  # see run_python

    for root, dirs, _ in os.walk(path):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o700)
    shutil.rmtree(path)


# --- Stage one of the child: limits and kernel isolation, then exec stage two ----------------

_CLONE_NEWNET, _CLONE_NEWUSER = 0x40000000, 0x10000000
_PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP = 38, 24
_LANDLOCK_CREATE_RULESET, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT_SELF = 444, 445, 446
# Landlock file rights (linux/landlock.h): ABI 1 has bits 0-12, then REFER (2), TRUNCATE (3),
# IOCTL_DEV (5). EXECUTE stays unhandled: stage one execs Python, and what the program might run
# would inherit this domain, no_new_privs and every limit anyway.
_LL_ABI1, _LL_EXECUTE = (1 << 13) - 1, 1 << 0
_LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1 << 1, 1 << 2, 1 << 3
_LL_REMOVE_DIR, _LL_REMOVE_FILE, _LL_MAKE_DIR, _LL_MAKE_REG = 1 << 4, 1 << 5, 1 << 7, 1 << 8
_LL_MAKE_FIFO, _LL_REFER, _LL_TRUNCATE, _LL_IOCTL_DEV = 1 << 10, 1 << 13, 1 << 14, 1 << 15
_LL_FILE_RIGHTS = _LL_WRITE_FILE | _LL_READ_FILE | _LL_TRUNCATE | _LL_IOCTL_DEV
_LL_SANDBOX = _LL_READ_FILE | _LL_READ_DIR | _LL_WRITE_FILE | _LL_REMOVE_DIR | _LL_REMOVE_FILE
_LL_SANDBOX |= _LL_MAKE_DIR | _LL_MAKE_REG | _LL_MAKE_FIFO | _LL_REFER | _LL_TRUNCATE
# What the dynamic loader and libc read on the program's behalf (extension modules' libraries).
_SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/localtime")


def _isolate_then_run(workdir: str, memory_mb: int, cpu_seconds: int) -> None:
    """Stage one: limits and kernel isolation (inherited across exec), then stage two."""
    _limit_resources(memory_mb, cpu_seconds)
    _isolate(workdir, _python_roots())
    # A fresh interpreter, because ctypes, which _isolate needed, would let the program
    # write anywhere in its own memory, the audit hook included.
    script = os.path.realpath(__file__)
    os.execv(sys.executable, [sys.executable, *_PYTHON_FLAGS, script, "run", workdir])


def _limit_resources(memory_mb: int, cpu_seconds: int) -> None:
    limits = {  # resource: (soft, hard)
        resource.RLIMIT_AS: (memory_mb * 2**20, memory_mb * 2**20),
        # SIGXCPU at the soft limit; SIGKILL a second later if the program ignores it.
        resource.RLIMIT_CPU: (cpu_seconds, cpu_seconds + 1),
        resource.RLIMIT_FSIZE: (_FILE_LIMIT, _FILE_LIMIT),
        resource.RLIMIT_CORE: (0, 0),
    }
    tasks = _count_own_tasks() if os.getuid() != 0 else None  # root's are not counted
    if tasks is not None:
        limits[resource.RLIMIT_NPROC] = (tasks + 64, tasks + 64)
    for which, (soft, hard) in limits.items():
        _, current = resource.getrlimit(which)
        if current != resource.RLIM_INFINITY:  # a hard limit can only be lowered
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(which, (soft, hard))


def _count_own_tasks() -> int | None:
    """This user's processes and threads, or None where /proc cannot tell."""
    uid, count = os.getuid(), 0
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return None
    for entry in entries:
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                pass  # it exited meanwhile
    return count


def _python_roots() -> tuple[str, ...]:
    """The Python installation and environment: the program may read them, not change them."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(
        sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")
    )
    real = {os.path.realpath(path) for path in paths if path}
    return tuple(sorted(path for path in real if path != "/" and os.path.isdir(path)))


def _isolate(workdir: str, roots: tuple[str, ...]) -> list[str]:
    """Apply what the kernel allows of layer 3; returns the names of the steps that took."""
    import ctypes  # only here: stage two, where the program runs, must never load it

    applied = []
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        if _unshare_network(libc):
            applied.append("network namespace")
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, *[ctypes.c_ulong(x) for x in (1, 0, 0, 0)]) == 0:
            applied.append("no_new_privs")
            abi = _landlock(ctypes, libc, workdir, roots)
            if abi:
                applied.append(f"landlock abi {abi}")
        if _drop_capabilities(ctypes, libc):
            applied.append("no capabilities")
    except (OSError, AttributeError):
        pass  # no such libc functions here: the audit hook still applies
    return applied


def _unshare_network(libc) -> bool:
    """A network namespace of the child's own: no interfaces but a loopback that is down."""
    if libc.unshare(_CLONE_NEWNET) == 0:
        return True
    # Ordinary users may have one inside a user namespace of their own, mapping their own ids.
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        return False
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1"),
        ("gid_map", f"{gid} {gid} 1"),
    ):
        try:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        except OSError:
            pass  # unmapped ids cannot create files in the sandbox, but are no less isolated
    return True


def _landlock(ctypes, libc, workdir: str, roots: tuple[str, ...]) -> int:
    """Read the installation, write the sandbox, nothing else; no TCP and no signals out, where
    the ABI has them. Returns the ABI version enforced, 0 for none."""
    long = ctypes.c_long
    abi = libc.syscall(long(_LANDLOCK_CREATE_RULESET), None, long(0), long(1))  # 1: the version
    if abi < 1:
        return 0
    fs = _LL_ABI1 & ~_LL_EXECUTE
    fs |= (_LL_REFER if abi >= 2 else 0) | (_LL_TRUNCATE if abi >= 3 else 0)
    fs |= _LL_IOCTL_DEV if abi >= 5 else 0
    net = 0b11 if abi >= 4 else 0  # TCP bind and connect
    scoped = 0b11 if abi >= 6 else 0  # abstract unix sockets and signals
    attr = struct.pack("=QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = libc.syscall(long(_LANDLOCK_CREATE_RULESET), attr, long(len(attr)), long(0))
    if ruleset < 0:
        return 0
    try:
        here = (os.path.realpath(__file__), os.path.realpath(sys.executable))
        rules = [(path, _LL_READ_FILE | _LL_READ_DIR) for path in (*roots, *_SYSTEM_READ, *here)]
        rules.append(("/dev/null", _LL_READ_FILE | _LL_WRITE_FILE | _LL_TRUNCATE))
        rules.append((workdir, _LL_SANDBOX))
        for path, access in rules:
            if not _landlock_rule(ctypes, libc, ruleset, path, access & fs):
                return 0
        ok = libc.syscall(long(_LANDLOCK_RESTRICT_SELF), long(ruleset), long(0)) == 0
        return abi if ok else 0
    finally:
        os.close(ruleset)


def _landlock_rule(ctypes, libc, ruleset: int, path: str, access: int) -> bool:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return True  # nothing there to allow
    except OSError:
        return False
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _LL_FILE_RIGHTS
        rule = struct.pack("=Qi", access, fd)  # struct landlock_path_beneath_attr, packed
        long = ctypes.c_long
        args = (long(_LANDLOCK_ADD_RULE), long(ruleset), long(1), rule, long(0))  # 1: PATH_BENEATH
        return libc.syscall(*args) == 0
    finally:
        os.close(fd)


def _drop_capabilities(ctypes, libc) -> bool:
    """Root without capabilities cannot make device nodes, override file modes or raise limits;
    emptying the bounding set first keeps the exec of stage two from granting them again."""
    cap = 0
    while libc.prctl(_PR_CAPBSET_DROP, *[ctypes.c_ulong(x) for x in (cap, 0, 0, 0)]) == 0:
        cap += 1
    version_3, this_process = 0x20080522, 0
    # Buffers, not bytes: capset writes the version it wants into the header if it differs.
    header = ctypes.create_string_buffer(struct.pack("=Ii", version_3, this_process))
    data = ctypes.create_string_buffer(24)  # effective, permitted, inheritable (x2): all empty
    return libc.capset(header, data) == 0


# --- Stage two of the child: the guard, then the program -----------------------------------


def _run_sandboxed(workdir: str) -> None:
    """Stage two: the kernel's limits are inherited; install the guard and run the program."""
    if "_ctypes" in sys.modules:
        raise RuntimeError("ctypes is loaded before the guard: the program could get around it")
    roots = _python_roots()
    _disable_unaudited()
    site_packages = [sysconfig.get_path(name) for name in ("purelib", "platlib")]
    paths = dict.fromkeys(sys.path + site_packages)  # -S left site-packages out
    sys.path[:] = [path for path in paths if _inside(os.path.realpath(path), roots)]
    program = os.path.join(workdir, "program.py")
    readable = (os.path.realpath(__file__),)  # this file, for tracebacks that pass the guard
    sys.addaudithook(_make_guard(workdir, roots, readable, program))
    _run_program(program)


def _disable_unaudited() -> None:
    """Replace functions that act beyond the sandbox without raising an audit event."""
    import _posixsubprocess  # the one `subprocess` uses; a second copy cannot load (see guard)
    import posix

    _posixsubprocess.fork_exec = _refusing("_posixsubprocess.fork_exec")
    for name in ("mknod", "mkfifo", "pidfd_open"):
        if hasattr(posix, name):
            setattr(posix, name, _refusing(f"os.{name}"))
            setattr(os, name, getattr(posix, name))


def _refusing(event: str):
    def refuse(*args, **kwargs):
        sys.audit(event)  # the guard refuses this event, which ends the program
        raise PermissionError(f"sandbox: {event} is not available")

    return refuse


def _run_program(program: str) -> None:
    """Compile and run the program as __main__, in a namespace that holds nothing of ours."""
    main = types.ModuleType("__main__")
    main.__file__ = program
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.argv = [program]
    try:
        with open(program, "rb") as f:
            code = compile(f.read(), program, "exec")
        exec(code, main.__dict__)
    except MemoryError:
        os.write(2, b"sandbox: MemoryError: the program ran out of its memory limit\n")
        os._exit(MEMORY_EXIT)
    except SystemExit:
        raise
    except BaseException as exc:
        import traceback  # here: most programs never need it

        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)  # not this frame
        sys.exit(BLOCKED_EXIT if isinstance(exc, SandboxImportError) else 1)


# --- The guard ----------------------------------------------------------------------------
# It runs in the program's interpreter, on every audit event. So it reads no global names (what
# it uses is bound as default arguments when this module loads, before the program runs), it
# acts on exact types only (a subclass could run the program's code inside the guard), and its
# tables cannot be changed. Each helper is defined before the functions that bind it.

# Refused whatever their arguments.
_DENIED_EVENTS = frozenset(
    {
        # Processes (_posixsubprocess.fork_exec, os.mknod, os.mkfifo and os.pidfd_open are raised
        # by _disable_unaudited's stand-ins).
        "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn",
        "subprocess.Popen", "pty.spawn", "_posixsubprocess.fork_exec",
        # Other processes and the kernel.
        "os.kill", "os.killpg", "resource.prlimit", "os.mknod", "os.mkfifo", "os.pidfd_open",
        # A link could lead the path checks astray; a fixed working directory keeps relative
        # paths checkable.
        "os.link", "os.symlink", "os.chdir",
        # Reaching the guard's objects; bytecode from elsewhere than the compiler.
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "marshal.load",
        # A subinterpreter would start without the guard.
        "cpython.PyInterpreterState_New",
        "webbrowser.open",
    }
)  # fmt: skip
_DENIED_PREFIXES = ("socket.", "ctypes.", "sqlite3.", "syslog.")
# Modules with native access that no audit event covers (ctypes, cffi), that make processes, or
# that reach files and sockets from C (sqlite, dbm, readline, tk, shared memory, account files).
_DENIED_MODULES = frozenset(
    {
        "ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess", "_posixshmem",
        "_sqlite3", "_dbm", "_gdbm", "readline", "_tkinter", "ossaudiodev", "pwd", "grp", "spwd",
    }
)  # fmt: skip
_DENIED_MODULE_PREFIXES = ("ctypes.", "_ctypes", "cffi.", "_test", "_xx")
_READ_EVENTS = frozenset({"os.listdir", "os.scandir", "os.getxattr", "os.listxattr"})
# Events that change a path: ((index of the path argument, index of its dir_fd or None), ...).
_CHANGE_EVENTS = types.MappingProxyType(
    {
        "os.remove": ((0, 1),),
        "os.rmdir": ((0, 1),),
        "os.mkdir": ((0, 2),),
        "os.chmod": ((0, 2),),
        "os.chown": ((0, 3),),
        "os.utime": ((0, 3),),
        "os.truncate": ((0, None),),
        "os.setxattr": ((0, None),),
        "os.removexattr": ((0, None),),
        "os.rename": ((0, 2), (1, 3)),
    }
)
_PATH_EVENTS = _READ_EVENTS | frozenset(_CHANGE_EVENTS)
_OPEN_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PROTECTED_ATTRIBUTES = frozenset({"__code__", "__defaults__", "__kwdefaults__"})
_PATHLIB_CLASSES = (pathlib.PosixPath, pathlib.PurePosixPath)
_PATHLIB_NAMES, _BUILTIN_NAMES = vars(pathlib), vars(builtins)
_COMPILE_BYTECODE = _frozen_importlib_external._compile_bytecode.__code__


class SandboxImportError(ImportError):
    """The guard refused an import; the program may catch it, as it would a missing module."""


def _inside(path, roots):
    for root in roots:  # noqa: SIM110 - any() would be a global name, which the program can rebind
        if path == root or path.startswith(root + "/"):
            return True
    return False


def _resolve(
    path, workdir, _lstat=os.lstat, _readlink=os.readlink, _islink=stat.S_ISLNK, _OSError=OSError
):
    """The absolute path with symbolic links followed as the kernel would; None for a loop."""
    if not path.startswith("/"):
        path = workdir + "/" + path  # the working directory, which the program cannot change
    pending = path.split("/")
    pending.reverse()
    done, links = "", 0
    while pending:
        part = pending.pop()
        if part == "" or part == ".":
            continue
        if part == "..":
            done = done[: done.rfind("/")]
            continue
        candidate = done + "/" + part
        try:
            mode = _lstat(candidate).st_mode
        except _OSError:
            done = candidate  # not there (yet): the rest is taken as written
            continue
        if not _islink(mode):
            done = candidate
            continue
        links += 1
        if links > 40:
            return None
        target = _readlink(candidate)
        if target.startswith("/"):
            done = ""
        rest = target.split("/")
        rest.reverse()
        pending.extend(rest)
    return done or "/"


def _as_path(
    arg, _type=type, _str=str, _bytes=bytes, _int=int, _issubclass=issubclass, _copy=str.__str__,
    _decode=bytes.decode, _readlink=os.readlink, _OSError=OSError, _entry=os.DirEntry,
    _entry_path=os.DirEntry.__fspath__, _pathlib=_PATHLIB_CLASSES,
    _fspath=pathlib.PurePath.__fspath__, _to_str=pathlib.PurePath.__str__,
    _pathlib_names=_PATHLIB_NAMES, _builtin_names=_BUILTIN_NAMES,
):  # fmt: skip
    """`arg` as an exact str, the path the audited call used; None if that cannot be known."""
    kind = _type(arg)
    if kind is _entry:
        arg = _entry_path(arg)
        kind = _type(arg)
    if kind is _str:
        return arg
    if _issubclass(kind, _str):
        return _copy(arg)
    if _issubclass(kind, _bytes):
        return _decode(arg, "utf-8", "surrogateescape")  # -X utf8
    if _issubclass(kind, _int):  # a descriptor: where it points
        try:
            target = _readlink(f"/proc/self/fd/{_int.__index__(arg)}")
        except _OSError:
            return None
        return target if target.startswith("/") else None  # not "pipe:[...]" and the like
    # A pathlib path whose os.fspath() ran pathlib's own code, which cached the very string the
    # call used.
    if (
        (kind is _pathlib[0] or kind is _pathlib[1])
        and kind.__fspath__ is _fspath
        and kind.__str__ is _to_str
        and "str" not in _pathlib_names
        and _builtin_names.get("str") is _str
    ):
        text = _to_str(arg)
        return text if _type(text) is _str else None
    return None


def _describe(path, real):
    if path is None:
        return "a path that is not a str, bytes, descriptor or pathlib path"
    if real is None:
        return f"{path!r}: too many levels of symbolic links"
    return f"{real!r}: outside the sandbox directory"


def _open_refusal(
    args, policy, _type=type, _str=str, _int=int, _issubclass=issubclass, _as_path=_as_path,
    _resolve=_resolve, _inside=_inside, _describe=_describe, _stat=os.stat, _isdir=stat.S_ISDIR,
    _OSError=OSError, _write_flags=_OPEN_WRITE_FLAGS, _write_letters=frozenset("wax+"),
):  # fmt: skip
    workdir, roots, readable, _ = policy
    target, mode, flags = args
    if _issubclass(_type(target), _int):
        return None  # a descriptor: its path was checked when it was opened
    path = _as_path(target)
    real = None if path is None else _resolve(path, workdir)
    if real is None:
        return _describe(path, real)
    if _inside(real, (workdir,)) or real == "/dev/null":
        return None
    if flags & _write_flags or (_type(mode) is _str and not _write_letters.isdisjoint(mode)):
        return f"{real!r} for writing: only the sandbox directory is writable"
    if not (_inside(real, roots) or real in readable):
        return _describe(path, real)
    if mode is None:  # os.open(): a directory's descriptor would anchor *at() calls out of sight
        try:
            if _isdir(_stat(real).st_mode):
                return f"{real!r}: directories outside the sandbox cannot be opened"
        except _OSError:
            pass
    return None


def _path_refusal(
    event, args, policy, _reads=_READ_EVENTS, _changes=_CHANGE_EVENTS, _type=type, _int=int,
    _as_path=_as_path, _resolve=_resolve, _inside=_inside, _describe=_describe,
):  # fmt: skip
    workdir, roots, _, _ = policy
    if event in _reads:
        if args[0] is None:
            return None  # the working directory
        path = _as_path(args[0])
        real = None if path is None else _resolve(path, workdir)
        if real is not None and (_inside(real, (workdir,)) or _inside(real, roots)):
            return None
        return _describe(path, real)
    for index, dir_index in _changes[event]:
        path = _as_path(args[index])
        dir_fd = None if dir_index is None else args[dir_index]
        if path is not None and not path.startswith("/") and _type(dir_fd) is _int and dir_fd >= 0:
            base = _as_path(dir_fd)
            path = None if base is None else base + "/" + path
        real = None if path is None else _resolve(path, workdir)
        if real is None or not real.startswith(workdir + "/"):
            return _describe(path, real)
    return None


def _import_refusal(
    args, policy, _modules=_DENIED_MODULES, _prefixes=_DENIED_MODULE_PREFIXES, _as_path=_as_path,
    _resolve=_resolve, _inside=_inside,
):  # fmt: skip
    name = _as_path(args[0])
    if name is None or name in _modules or name.startswith(_prefixes):
        return f"{name!r}: this module is not available in the sandbox"
    if args[1] is not None:  # an extension module is about to be loaded from this file
        path = _as_path(args[1])
        real = None if path is None else _resolve(path, policy[0])
        if real is None or not _inside(real, policy[1]):
            return f"{path!r}: extension modules load only from the Python installation"
    return None


def _marshal_refusal(
    data, caller, policy, _code=_COMPILE_BYTECODE, _open_code=io.open_code, _as_path=_as_path,
    _resolve=_resolve, _inside=_inside,
):  # fmt: skip
    """Unmarshal only what a cached module of the Python installation holds on disk."""
    if caller.f_code is not _code:
        return "only the import system may unmarshal code"
    path = caller.f_locals.get("bytecode_path")
    path = None if path is None else _as_path(path)
    real = None if path is None else _resolve(path, policy[0])
    if real is None or not _inside(real, policy[1]):
        return f"{path!r}: bytecode loads only from the Python installation"
    with _open_code(real) as f:
        if f.read()[16:] != data:  # 16 bytes of .pyc header
            return f"bytecode that differs from {real!r}"
    return None


def _setattr_refusal(
    args, _type=type, _str=str, _function=types.FunctionType, _names=_PROTECTED_ATTRIBUTES,
    _ours=__file__,
):  # fmt: skip
    """The guard's functions keep their code and defaults (the program's may change theirs)."""
    target, name = args[0], args[1]
    if _type(target) is _function and _type(name) is _str and name in _names:
        filename = target.__code__.co_filename
        if _type(filename) is _str and filename == _ours:
            return f"replacing {name} of the sandbox's own function"
    return None


def _refuse(
    event, detail, policy, _getframe=sys._getframe, _write=os.write, _exit=os._exit,
    _type=type, _str=str, _status=BLOCKED_EXIT,
):  # fmt: skip
    """Say what was refused, and where in the program, then end the program."""
    line, frame = "", _getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if _type(filename) is _str and filename == policy[3]:
            line = f" (program.py line {frame.f_lineno})"
            break
        frame = frame.f_back
    separator = ": " if detail else ""
    message = f"sandbox: refused {event}{separator}{detail}{line}\n"
    _write(2, message.encode("utf-8", "backslashreplace"))
    _exit(_status)


def _make_guard(workdir: str, roots: tuple[str, ...], readable: tuple[str, ...], program: str):
    """The audit hook: refuses what the module docstring lists, allows everything else."""
    policy = (workdir, roots, readable, program)  # strs in tuples: nothing in it can change

    def guard(
        event, args, _policy=policy, _denied=_DENIED_EVENTS, _prefixes=_DENIED_PREFIXES,
        _paths=_PATH_EVENTS, _getframe=sys._getframe, _open=_open_refusal, _path=_path_refusal,
        _import=_import_refusal, _marshal=_marshal_refusal, _setattr=_setattr_refusal,
        _refuse=_refuse, _error=SandboxImportError, _coroutine=types.coroutine.__code__,
        _unix=socket.AF_UNIX,
    ):  # fmt: skip
        if event == "socket.__new__" and args[1] == _unix:
            return  # a socketpair (asyncio's event loop makes one); connect and bind stay refused
        if event in _denied or event.startswith(_prefixes):
            detail = ""
        elif event == "open":
            detail = _open(args, _policy)
        elif event in _paths:
            detail = _path(event, args, _policy)
        elif event == "import":
            # Not fatal: an import can be retried safely, and libraries try optional ones (numpy
            # tries ctypes).
            detail = _import(args, _policy)
            if detail is not None:
                raise _error(f"sandbox: refused import: {detail}")
        elif event == "marshal.loads":
            detail = _marshal(args[0], _getframe(1), _policy)
        elif event == "object.__setattr__":
            detail = _setattr(args)
        elif event == "code.__new__":  # types.coroutine() only changes a flag (asyncio uses it)
            detail = None if _getframe(1).f_code is _coroutine else "code from outside the compiler"
        else:
            return
        if detail is not None:
            _refuse(event, detail, _policy)

    return guard


if __name__ == "__main__":
    if sys.argv[1] == "isolate":
        _isolate_then_run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        _run_sandboxed(sys.argv[2])
