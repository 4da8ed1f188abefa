"""The sandbox's folder, from outside: how much it holds while a program runs, and removing it
afterwards, whatever the program left there (any depth of nesting, paths longer than PATH_MAX,
folders without permissions). Both walk by file descriptors, one level at a time, without
recursion, so that a program cannot make them fail or end the process that runs them."""

from __future__ import annotations

import errno
import logging
import os
import stat

logger = logging.getLogger(__name__)

MAX_ENTRIES = 10_000  # files and folders a program may keep in its folder


def folder_over(path: str, limit: int) -> bool:
    """Whether the folder holds more than `limit` bytes (allocated, so a sparse file counts what
    it holds) or MAX_ENTRIES entries. A walk by descriptors, one open at a time, so that no
    depth of nesting or length of path stops it; a folder it cannot open counts as too big."""
    total, entries = 0, 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # not there: nothing held
    try:
        pending: list[list[str] | None] = [None]  # per level: sub-folders to visit, None: unlisted
        while pending:
            if pending[-1] is None:
                pending[-1] = []
                with os.scandir(fd) as listing:
                    for entry in listing:
                        entries += 1
                        try:
                            info = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # removed meanwhile by the running program
                        total += info.st_blocks * 512
                        if stat.S_ISDIR(info.st_mode):
                            pending[-1].append(entry.name)
                if total > limit or entries > MAX_ENTRIES:
                    return True
            elif pending[-1]:
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    fd = _replace_fd(fd, os.open(pending[-1].pop(), flags, dir_fd=fd))
                except OSError as error:
                    if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        continue  # removed or replaced meanwhile
                    raise
                pending.append(None)
            else:
                pending.pop()
                if pending:
                    fd = _replace_fd(fd, os.open("..", os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd))
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _replace_fd(old: int, new: int) -> int:
    os.close(old)
    return new


def remove_folder(path: str) -> None:
    """Remove the sandbox folder, whatever the program left there; never raises (a folder that
    stays is logged), so that one program cannot end a whole evaluation."""
    try:
        _flatten_and_remove(path)
    except OSError as error:
        logger.warning("could not remove the sandbox folder: %s", error)


def _flatten_and_remove(path: str) -> None:
    """Remove files, and move the folders found in each folder up to the top one, until the top
    folder is empty: no recursion and no long path, at any depth of nesting; permissions the
    program took from its folders are given back first."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        top = os.open(path, flags)
    except FileNotFoundError:
        return
    moved = 0  # names for the folders moved up
    try:
        os.fchmod(top, 0o700)
        while entries := _list(top):
            for name, is_dir in entries:
                if not is_dir:
                    os.unlink(name, dir_fd=top)
                    continue
                os.chmod(name, 0o700, dir_fd=top)  # a folder, not a link (nothing runs there now)
                folder = os.open(name, flags, dir_fd=top)
                try:
                    for child, child_is_dir in _list(folder):
                        if child_is_dir:
                            os.chmod(child, 0o700, dir_fd=folder)  # rename rewrites its ".."
                            moved = _move_up(folder, child, top, moved)
                        else:
                            os.unlink(child, dir_fd=folder)
                finally:
                    os.close(folder)
                os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)
    os.rmdir(path)


def _list(folder: int) -> list[tuple[str, bool]]:
    with os.scandir(folder) as listing:
        return [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]


def _move_up(folder: int, name: str, top: int, moved: int) -> int:
    """Move folder/name to the top folder under a new name; returns the names used so far."""
    while True:
        moved += 1
        try:
            os.rename(name, f".removing-{moved}", src_dir_fd=folder, dst_dir_fd=top)
            return moved
        except OSError as error:  # the name is taken by a non-empty folder or by a file
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
