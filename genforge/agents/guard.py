"""The guard: stage two of the sandboxed child, which installs an audit hook and runs the program.

It runs inside the child that `genforge/agents/sandbox.py` starts: stage one there sets the limits
and the kernel isolation, then execs this file as a script, in a fresh interpreter that has never
loaded ctypes. Here the guard (layer 4 in sandbox.py's docstring) is installed as an audit hook
(PEP 578) before the program is compiled, and cannot be removed. When the program's code has
returned, and only then, the guard's last step hands the parent's nonce back (_report_completion).

The hook runs inside the program's interpreter, so it trusts nothing the program can rebind: the
functions, builtins and tables it uses are bound as default arguments when it is defined, it calls
no code of the program's, and the program may not replace a function's code or defaults. This
file imports only the small part of the standard library that the guard needs.
"""

from __future__ import annotations

import _frozen_importlib_external
import builtins
import io
import os
import pathlib
import socket
import stat
import sys
import sysconfig
import types

BLOCKED_EXIT = 97  # the guard refused an operation
MEMORY_EXIT = 98  # the program raised MemoryError


# --- Stage two of the child: the guard, then the program -----------------------------------


def _run_sandboxed(workdir: str, nonce_path: str, report_fd: int, roots: tuple[str, ...]) -> None:
    """Stage two: the kernel's limits are inherited; install the guard and run the program.
    `roots`, the Python installation, are the paths stage one's Landlock rules let it read;
    `nonce_path` and `report_fd`: see _report_completion."""
    if "_ctypes" in sys.modules:
        raise RuntimeError("ctypes is loaded before the guard: the program could get around it")
    _disable_unaudited()
    site_packages = [sysconfig.get_path(name) for name in ("purelib", "platlib")]
    paths = dict.fromkeys(sys.path + site_packages)  # -S left site-packages out
    sys.path[:] = [path for path in paths if _inside(os.path.realpath(path), roots)]
    program = os.path.join(workdir, "program.py")
    readable = (os.path.realpath(__file__),)  # this file, for tracebacks that pass the guard
    completion = (os.path.realpath(nonce_path), sys._getframe())  # see _completion_refusal
    sys.addaudithook(_make_guard(workdir, roots, readable, program, completion))
    _run_program(program, (nonce_path, report_fd))


def _disable_unaudited() -> None:
    """Replace functions that act beyond the sandbox without raising an audit event."""
    import _posixsubprocess  # the one `subprocess` uses; a second copy cannot load (see guard)
    import posix

    _posixsubprocess.fork_exec = _refusing("_posixsubprocess.fork_exec")
    # memfd_create: memory held in a file descriptor, which the address-space limit does not count.
    for name in ("mknod", "mkfifo", "pidfd_open", "memfd_create"):
        if hasattr(posix, name):
            setattr(posix, name, _refusing(f"os.{name}"))
            setattr(os, name, getattr(posix, name))


def _refusing(event: str):
    def refuse(*args, **kwargs):
        sys.audit(event)  # the guard refuses this event, which ends the program
        raise PermissionError(f"sandbox: {event} is not available")

    return refuse


def _report_completion(
    nonce_path: str,
    report_fd: int,
    *,
    _open=os.open,
    _read=os.read,
    _write=os.write,
    _close=os.close,
    _flags=os.O_RDONLY | os.O_CLOEXEC,
) -> None:
    """Copy the parent's nonce into the report: proof that the program's last line ran. The
    guard lets only this call, made by _run_program once the program has returned, open the
    nonce; the program may write into the report, but cannot know what to write."""
    fd = _open(nonce_path, _flags)
    try:
        nonce = _read(fd, 64)
    finally:
        _close(fd)
    _write(report_fd, nonce)


def _run_program(program: str, completion: tuple[str, int], _report=_report_completion) -> None:
    """Compile and run the program as __main__, in a namespace that holds nothing of ours; when
    it returns, report its completion. (When it does not, whatever it rebound in this module
    cannot make this function report: the report is made in the `else` clause only.)"""
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
    else:
        _report(*completion)  # the function's last line: the guard checks the call comes from it


# The line of that call, which the guard requires of the frame that opens the nonce.
_REPORT_LINE = max(line for _, _, line in _run_program.__code__.co_lines() if line is not None)


# --- The guard ----------------------------------------------------------------------------
# It runs in the program's interpreter, on every audit event. So it reads no global names (what
# it uses is bound as default arguments when this module loads, before the program runs), it
# acts on exact types only (a subclass could run the program's code inside the guard), and its
# tables cannot be changed. Each helper is defined before the functions that bind it.

# Refused whatever their arguments.
_DENIED_EVENTS = frozenset(
    {
        # Processes (_posixsubprocess.fork_exec, os.mknod, os.mkfifo, os.pidfd_open and
        # os.memfd_create are raised by _disable_unaudited's stand-ins).
        "os.system",
        "os.exec",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "subprocess.Popen",
        "pty.spawn",
        "_posixsubprocess.fork_exec",
        # Other processes and the kernel.
        "os.kill",
        "os.killpg",
        "resource.prlimit",
        "os.mknod",
        "os.mkfifo",
        "os.pidfd_open",
        "os.memfd_create",
        # A link could lead the path checks astray; a fixed working directory keeps relative
        # paths checkable.
        "os.link",
        "os.symlink",
        "os.chdir",
        # Reaching the guard's objects; bytecode from elsewhere than the compiler.
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "marshal.load",
        # A trace function may jump over lines of the program, its tests included.
        "sys.settrace",
        "sys.setprofile",
        "sys.monitoring.register_callback",
        # A subinterpreter would start without the guard.
        "cpython.PyInterpreterState_New",
        "webbrowser.open",
    }
)
_DENIED_PREFIXES = ("socket.", "ctypes.", "sqlite3.", "syslog.")
# Modules with native access that no audit event covers (ctypes, cffi), that make processes, or
# that reach files and sockets from C (sqlite, dbm, readline, tk, shared memory, account files).
_DENIED_MODULES = frozenset(
    {
        "ctypes",
        "_ctypes",
        "cffi",
        "_cffi_backend",
        "_posixsubprocess",
        "_posixshmem",
        "_sqlite3",
        "_dbm",
        "_gdbm",
        "readline",
        "_tkinter",
        "ossaudiodev",
        "pwd",
        "grp",
        "spwd",
    }
)
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
    arg,
    _type=type,
    _str=str,
    _bytes=bytes,
    _int=int,
    _issubclass=issubclass,
    _copy=str.__str__,
    _decode=bytes.decode,
    _readlink=os.readlink,
    _OSError=OSError,
    _entry=os.DirEntry,
    _entry_path=os.DirEntry.__fspath__,
    _pathlib=_PATHLIB_CLASSES,
    _fspath=pathlib.PurePath.__fspath__,
    _to_str=pathlib.PurePath.__str__,
    _pathlib_names=_PATHLIB_NAMES,
    _builtin_names=_BUILTIN_NAMES,
):
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


def _completion_refusal(
    frame,
    policy,
    _report=_report_completion.__code__,
    _run=_run_program.__code__,
    _line=_REPORT_LINE,
):
    """The nonce may be read only by _report_completion called from the very _run_program call
    that runs the program (its caller is the frame of _run_sandboxed), at the line after the
    program returned: no frame of the program's, in any thread, is all three."""
    caller = frame.f_back
    if (
        frame.f_code is _report
        and caller is not None
        and caller.f_code is _run
        and caller.f_back is policy[4][1]
        and caller.f_lineno == _line
    ):
        return None
    return "the nonce that proves the program ran to its end"


def _open_refusal(
    args,
    policy,
    _type=type,
    _str=str,
    _int=int,
    _issubclass=issubclass,
    _as_path=_as_path,
    _resolve=_resolve,
    _inside=_inside,
    _describe=_describe,
    _completion=_completion_refusal,
    _getframe=sys._getframe,
    _stat=os.stat,
    _isdir=stat.S_ISDIR,
    _OSError=OSError,
    _write_flags=_OPEN_WRITE_FLAGS,
    _write_letters=frozenset("wax+"),
):
    workdir, roots, readable = policy[0], policy[1], policy[2]
    target, mode, flags = args
    if _issubclass(_type(target), _int):
        return None  # a descriptor: its path was checked when it was opened
    path = _as_path(target)
    real = None if path is None else _resolve(path, workdir)
    if real is None:
        return _describe(path, real)
    if _inside(real, (workdir,)) or real == "/dev/null":
        return None
    if policy[4] is not None and real == policy[4][0]:
        return _completion(_getframe(2), policy)  # 2: past the guard, the frame that opens
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
    event,
    args,
    policy,
    _reads=_READ_EVENTS,
    _changes=_CHANGE_EVENTS,
    _type=type,
    _int=int,
    _as_path=_as_path,
    _resolve=_resolve,
    _inside=_inside,
    _describe=_describe,
):
    workdir, roots = policy[0], policy[1]
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
    args,
    policy,
    _modules=_DENIED_MODULES,
    _prefixes=_DENIED_MODULE_PREFIXES,
    _as_path=_as_path,
    _resolve=_resolve,
    _inside=_inside,
):
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
    data,
    caller,
    policy,
    _code=_COMPILE_BYTECODE,
    _open_code=io.open_code,
    _as_path=_as_path,
    _resolve=_resolve,
    _inside=_inside,
):
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
    args,
    _type=type,
    _str=str,
    _function=types.FunctionType,
    _names=_PROTECTED_ATTRIBUTES,
    _ours=__file__,
):
    """The guard's functions keep their code and defaults (the program's may change theirs)."""
    target, name = args[0], args[1]
    if _type(target) is _function and _type(name) is _str and name in _names:
        filename = target.__code__.co_filename
        if _type(filename) is _str and filename == _ours:
            return f"replacing {name} of the sandbox's own function"
    return None


def _refuse(
    event,
    detail,
    policy,
    _getframe=sys._getframe,
    _write=os.write,
    _exit=os._exit,
    _type=type,
    _str=str,
    _status=BLOCKED_EXIT,
):
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


def _make_guard(
    workdir: str,
    roots: tuple[str, ...],
    readable: tuple[str, ...],
    program: str,
    completion: tuple[str, types.FrameType] | None = None,
):
    """The audit hook: refuses what the module docstring lists, allows everything else.
    `completion`: the nonce's path and the frame of _run_sandboxed (see _completion_refusal)."""
    # strs and a frame in tuples: nothing in it can change
    policy = (workdir, roots, readable, program, completion)

    def guard(
        event,
        args,
        _policy=policy,
        _denied=_DENIED_EVENTS,
        _prefixes=_DENIED_PREFIXES,
        _paths=_PATH_EVENTS,
        _getframe=sys._getframe,
        _open=_open_refusal,
        _path=_path_refusal,
        _import=_import_refusal,
        _marshal=_marshal_refusal,
        _setattr=_setattr_refusal,
        _refuse=_refuse,
        _error=SandboxImportError,
        _coroutine=types.coroutine.__code__,
        _unix=socket.AF_UNIX,
    ):
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
    _run_sandboxed(sys.argv[1], sys.argv[2], int(sys.argv[3]), tuple(sys.argv[4:]))
