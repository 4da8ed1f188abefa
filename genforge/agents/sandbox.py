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
   The parent measures the sandbox folder every 0.1 s and once more after the end: past
   `memory_mb` of allocated blocks or 10,000 entries the program is killed and the run
   is "memory" (the folder may be on tmpfs, which is memory that RLIMIT_AS does not count).
3. Kernel isolation, each step skipped where the kernel refuses it (logged once per process;
   protections() says which hold): a network namespace of its own (no interfaces but a loopback
   that is down; a user namespace too for ordinary users), no_new_privs, a seccomp filter (no
   memfd_create or memfd_secret: memory that RLIMIT_AS does not count), a Landlock domain (read
   only the Python installation and the system libraries, write only the sandbox, no TCP, no
   signals out of the domain) and no capabilities. This takes ctypes, which would let the
   program get around the audit hook, so it is done in a first interpreter that then execs the
   second one, where the program runs.
4. An audit hook (PEP 578), always: installed before the program is compiled and impossible to
   remove, it refuses sockets, processes, ctypes, memfd_create, trace functions, reading outside
   the sandbox and the Python installation, changing anything outside the sandbox, and bytecode
   the compiler did not make. A refusal ends the program at once (exit status 97) with a
   "sandbox: refused ..." line on stderr, since an exception could be caught and the attempt
   retried; only a refused import raises (SandboxImportError), because libraries try optional
   imports and carry on without.

"passed" cannot be forged by a program that leaves early (os._exit(0), sys.exit(0), a fake marker
on stdout) and so skips the tests that follow it: the parent writes a random nonce into a file
outside the sandbox, and only the guard's last step, once the program's code has returned, may
read it (the audit hook checks the calling frames) and copy it to a file descriptor that the
parent reads. The program may write there too, but cannot know the nonce; trace functions, which
could jump over lines, are refused.

Layer 4, the guard, is genforge/agents/guard.py; measuring and removing the folder,
genforge/agents/workdir.py. The child's two stages are scripts, this file and then the guard, so
that their code stays ordinary, linted Python.

Not enforced: disk use between two measures of the folder; and an audit hook is no sandbox on
its own (PEP 578 says so): a CPython memory-safety bug, or builtin modules that importlib can
instantiate a second time (posix.mknod, posix.memfd_create, _signal.pidfd_send_signal), reach
past it. Layer 3 is what holds then, so run where the kernel allows it (Landlock: Linux 5.13+).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import resource
import signal
import stat
import struct
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# The layers, by name: the audit hook (always), then the kernel's, each where it allows it.
PROTECTIONS = (
    "audit_hook",
    "network_namespace",  # no network but a loopback that is down
    "no_new_privs",  # nothing executed gains privileges (setuid)
    "seccomp",  # no memfd_create or memfd_secret
    "landlock",  # read the Python installation, write the sandbox folder, nothing else
    "landlock_network",  # no TCP bind or connect (Landlock ABI 4, Linux 6.7)
    "landlock_signals",  # no signals out of the sandbox (Landlock ABI 6, Linux 6.12)
    "no_capabilities",  # root's capabilities dropped (and the bounding set emptied)
)
_OUTPUT_LIMIT = 4096  # bytes kept of stdout (its head) and of stderr (its tail)
_FILE_LIMIT = 16 * 2**20  # the largest file the program may write, its output included
_FOLDER_CHECK_SECONDS = 0.1  # how often the parent measures the folder while the program runs
_MIN_MEMORY_MB = 64  # the interpreter alone maps about 20 MB before the program starts
# -S: no site module, so no .pth file runs (stage two puts site-packages on sys.path itself);
# -B: no .pyc written; -u: output survives a kill.
_PYTHON_FLAGS = ("-I", "-S", "-B", "-u", "-X", "utf8")
_GUARD_SCRIPT = os.path.realpath(os.path.join(os.path.dirname(__file__), "guard.py"))  # stage two
_LOCK = threading.Lock()  # guards the two below, since runs start from many threads
_PROTECTIONS: dict[str, bool] = {}  # protections(), once known
_WARNED: set[str] = set()  # the missing protections already logged


@dataclass
class SandboxResult:
    """How one program ended."""

    # "passed" (its last line ran, then exit status 0), "failed" (non-zero exit, or it ended
    # before its last line ran), "timeout", "memory" or "blocked"
    status: str
    returncode: int | None  # exit status, negative for a signal; None when the timeout killed it
    stdout: str  # the first _OUTPUT_LIMIT bytes
    stderr: str  # the last _OUTPUT_LIMIT bytes, where a traceback ends
    seconds: float  # wall clock

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_python(
    code: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    channel: Callable[[bytes], bytes] | None = None,
) -> SandboxResult:
    """Run `code` as a Python program in a sandboxed subprocess; safe to call from many threads.
    "passed" means that its last line ran and it then exited with status 0.

    channel: the program's one way out, for calling tools that run here, in the parent. The
    program writes a request line to the descriptor named first in $GENFORGE_CHANNEL and reads
    the reply line from the second; `channel(request)` makes the reply (a line, no newline).
    The time the parent takes to answer counts towards `timeout`."""
    # Imported here, not at the top: the child runs this file as a script, where genforge may not
    # be importable and where these modules would only slow down every run.
    from genforge.errors import GenforgeError

    if not isinstance(code, str):
        raise GenforgeError(f"run_python needs the program as a str, not {type(code).__name__}.")
    if not timeout > 0:
        raise GenforgeError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    if memory_mb < _MIN_MEMORY_MB:
        raise GenforgeError(f"memory_mb must be at least {_MIN_MEMORY_MB}, got {memory_mb}.")
    result, applied = _run(code, timeout, memory_mb, channel)
    _warn_once_of_missing(applied)
    return result


def protections() -> dict[str, bool]:
    """Which layers of the sandbox hold here: {name: bool} for each of PROTECTIONS. The audit
    hook always; the kernel's as stage one of a sandboxed run reports them (one run, the first
    time this is called in a process)."""
    with _LOCK:
        if not _PROTECTIONS:
            _, applied = _run("pass", 30.0, 256)
            _PROTECTIONS.update({name: name in applied for name in PROTECTIONS})
            _PROTECTIONS["audit_hook"] = True
        return dict(_PROTECTIONS)


def _warn_once_of_missing(applied: frozenset[str]) -> None:
    """Log, once per process for each, the kernel's protections that this run did not get."""
    import logging  # see run_python

    with _LOCK:
        missing = [name for name in PROTECTIONS[1:] if name not in applied | _WARNED]
        _WARNED.update(missing)
    if missing:
        logging.getLogger(__name__).warning(
            "The code sandbox runs without %s on this machine; the audit hook and the other "
            "layers still apply (see 'The sandbox' in docs/evals.md).",
            ", ".join(missing),
        )


def _run(
    code: str, timeout: float, memory_mb: int, channel=None
) -> tuple[SandboxResult, frozenset[str]]:
    """run_python's work; also returns the protections that stage one applied."""
    import secrets  # see run_python
    import tempfile

    from genforge.agents.workdir import MAX_ENTRIES, folder_over, remove_folder

    # The proof that the program ran to its end: a nonce in a file that only the guard's last
    # step may read, once the program's last line has run, and copy into `report`.
    nonce = secrets.token_hex(16).encode()
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="genforge-sandbox-"))
    nonce_fd, nonce_path = tempfile.mkstemp(prefix="genforge-sandbox-nonce-")
    try:
        with os.fdopen(nonce_fd, "wb") as f:
            f.write(nonce)
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(code)
        with (
            tempfile.TemporaryFile() as out,
            tempfile.TemporaryFile() as err,
            tempfile.TemporaryFile() as report,
        ):
            returncode, ending, seconds = _execute(
                workdir, nonce_path, timeout, memory_mb, out, err, report, channel
            )
            stdout, stderr = _head(out), _tail(err)
            report.seek(0)
            applied, _, reported = report.read(4096).partition(b"\n")  # stage one's line first
            completed = reported == nonce
        if ending is None and folder_over(workdir, memory_mb * 2**20):  # exact: all have ended
            ending = "folder"
    finally:
        remove_folder(workdir)
        with contextlib.suppress(OSError):
            os.unlink(nonce_path)
    if ending == "folder":
        status = "memory"
        stderr += (
            f"sandbox: the program's folder grew past {memory_mb} MB or {MAX_ENTRIES} entries\n"
        )
    else:
        status = _status(returncode, ending == "timeout")
    if status == "passed" and not completed:
        status = "failed"
        stderr += "sandbox: the program ended before its last line ran\n"
    returncode = None if ending == "timeout" else returncode
    layers = frozenset(applied.decode("ascii", "replace").split())
    return SandboxResult(status, returncode, stdout, stderr, seconds), layers


def _execute(
    workdir: str,
    nonce_path: str,
    timeout: float,
    memory_mb: int,
    out: io.BufferedRandom,
    err: io.BufferedRandom,
    report: io.BufferedRandom,
    channel=None,
) -> tuple[int, str | None, float]:
    """Run the child to its end; (exit status, ending as _wait_for_exit says, seconds)."""
    import subprocess  # see run_python

    env, pass_fds, theirs, serving = _child_environment(workdir), [report.fileno()], [], None
    if channel is not None:
        requests, their_requests = os.pipe()
        their_replies, replies = os.pipe()
        theirs = [their_requests, their_replies]
        env["GENFORGE_CHANNEL"] = f"{their_requests},{their_replies}"
        pass_fds += theirs
    cpu_seconds = math.ceil(timeout) + 1  # a backstop: the wall clock normally ends it first
    command = [sys.executable, *_PYTHON_FLAGS, os.path.realpath(__file__), workdir]
    command += [str(memory_mb), str(cpu_seconds), nonce_path, str(report.fileno())]
    start = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
    )
    for fd in theirs:
        os.close(fd)
    if channel is not None:
        serving = threading.Thread(target=_serve, args=(requests, replies, channel), daemon=True)
        serving.start()
    try:
        ending = _wait_for_exit(proc.pid, timeout, workdir, memory_mb * 2**20)
    finally:
        # Not reaped yet, so its pid, which is also the group's id, cannot have been
        # taken by an unrelated process. Kills whatever it started, even after it exited.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if serving is not None:
            serving.join()  # the program's end of the pipe is closed: the server has stopped
    return proc.returncode, ending, time.monotonic() - start


_MAX_REQUEST = 1 << 20  # bytes of one request line from the program


def _serve(requests: int, replies: int, channel: Callable[[bytes], bytes]) -> None:
    """Answer the program's request lines until it closes its end (it ended, or was killed)."""
    with open(requests, "rb") as reader, open(replies, "wb", buffering=0) as writer:
        while line := reader.readline(_MAX_REQUEST):
            try:
                writer.write(channel(line.rstrip(b"\n")).replace(b"\n", b" ") + b"\n")
            except (BrokenPipeError, ValueError):  # it is gone, or the line is not a request
                return


def _child_environment(workdir: str) -> dict[str, str]:
    """Nothing inherited (no secrets, no proxies); home and temporary files in the sandbox."""
    # One thread per numeric library: the harness runs several programs at once.
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir, **threads}


def _wait_for_exit(pid: int, timeout: float, workdir: str, folder_limit: int) -> str | None:
    """Wait for the child to end, without reaping it. None when it did; "timeout" when the
    timeout ran out first, "folder" when its folder outgrew the limit (checked every 0.1 s)."""
    from genforge.agents.workdir import folder_over  # see run_python

    start = time.monotonic()
    deadline, next_check = start + timeout, start + _FOLDER_CHECK_SECONDS
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        now = time.monotonic()
        if now >= deadline:
            return "timeout"
        if now >= next_check:
            if folder_over(workdir, folder_limit):
                return "folder"
            next_check = time.monotonic() + _FOLDER_CHECK_SECONDS
        time.sleep(min(delay, deadline - now))
        delay = min(2 * delay, 0.02)
    return None


def _status(returncode: int, timed_out: bool) -> str:
    from genforge.agents.guard import BLOCKED_EXIT, MEMORY_EXIT  # see run_python

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


# --- Stage one of the child: limits and kernel isolation, then exec stage two ----------------

_CLONE_NEWNET, _CLONE_NEWUSER = 0x40000000, 0x10000000
_PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP = 38, 24
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
# machine: (AUDIT_ARCH_*, (memfd_create, memfd_secret)): memory in a file, which RLIMIT_AS does not
# count (seccomp_data: the call's number at offset 0, the architecture at 4).
_SECCOMP_DENIED = {"x86_64": (0xC000003E, (319, 447)), "aarch64": (0xC00000B7, (279, 447))}
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


def _isolate_then_run(
    workdir: str, memory_mb: int, cpu_seconds: int, nonce_path: str, report_fd: str
) -> None:
    """Stage one: limits and kernel isolation (inherited across exec), then stage two."""
    _limit_resources(memory_mb, cpu_seconds)
    roots = _python_roots()
    applied = _isolate(workdir, roots, (nonce_path,))
    os.write(int(report_fd), (" ".join(applied) + "\n").encode())  # before the program runs
    # A fresh interpreter, because ctypes, which _isolate needed, would let the program
    # write anywhere in its own memory, the audit hook included.
    args = [sys.executable, *_PYTHON_FLAGS, _GUARD_SCRIPT, workdir, nonce_path, report_fd, *roots]
    os.execv(sys.executable, args)


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


def _isolate(workdir: str, roots: tuple[str, ...], readable: tuple[str, ...] = ()) -> list[str]:
    """Apply what the kernel allows of layer 3; returns the PROTECTIONS that took.
    `readable`: files outside `roots` that stage two may read."""
    import ctypes  # only here: stage two, where the program runs, must never load it

    applied = []
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        if _unshare_network(libc):
            applied.append("network_namespace")
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, *[ctypes.c_ulong(x) for x in (1, 0, 0, 0)]) == 0:
            applied.append("no_new_privs")
            if _seccomp(ctypes, libc):
                applied.append("seccomp")
            abi = _landlock(ctypes, libc, workdir, roots, readable)
            if abi:
                applied.append("landlock")
                applied += ["landlock_network"] if abi >= 4 else []
                applied += ["landlock_signals"] if abi >= 6 else []
        if _drop_capabilities(ctypes, libc):
            applied.append("no_capabilities")
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


def _seccomp(ctypes, libc) -> bool:
    """A seccomp filter that refuses (EPERM) the system calls that hold memory the address-space
    limit does not count, and any call made through another architecture's entry point."""
    numbers = _SECCOMP_DENIED.get(os.uname().machine)
    if numbers is None:
        return False
    arch, denied = numbers
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, JGE, BPF_RET|K
    allow, refuse = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    n = len(denied)
    program = [(ld_abs, 0, 0, 4), (jeq, 0, n + 3, arch), (ld_abs, 0, 0, 0)]  # arch, then nr
    program.append((jge, n + 1, 0, 0x40000000))  # x32 system calls on x86_64
    program += [(jeq, n - i, 0, number) for i, number in enumerate(denied)]
    program += [(ret, 0, 0, allow), (ret, 0, 0, refuse)]
    filters = b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(filters)
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buffer))  # struct sock_fprog
    args = [ctypes.c_ulong(x) for x in (_SECCOMP_MODE_FILTER, 0, 0)]
    return libc.prctl(_PR_SET_SECCOMP, args[0], ctypes.c_char_p(fprog), args[1], args[2]) == 0


def _landlock(ctypes, libc, workdir: str, roots: tuple[str, ...], readable: tuple[str, ...]) -> int:
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
        here = (_GUARD_SCRIPT, os.path.realpath(sys.executable), *readable)  # what stage two reads
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


if __name__ == "__main__":
    _isolate_then_run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:6])
