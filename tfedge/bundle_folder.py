"""Bundle folders: one bundle per folder, written beside it and swapped in whole.

:func:`check_out_dir` says, before any work, whether a bundle may go to a
folder (new, empty, or an earlier bundle and nothing else: a folder with
the user's files is not deleted). :func:`staged` gives a staging folder
beside the target that replaces it in one atomic rename when the bundle is
complete, so a process killed at any moment leaves the old bundle or the
new one. Framework-neutral (file system and the model card only).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from typing import Iterator

from tfedge import card as card_lib
from tfedge.report import remove_stale

_STAGING = ".tfedge-staging-"


def is_temporary(name: str) -> bool:
    """Files a killed writer may leave: write_atomic's temp files, staging folders."""
    return name.startswith(".") and (name.endswith(".tmp") or _STAGING in name)


def check_out_dir(out_dir: str | os.PathLike, flag: str = "out_dir") -> str:
    """Checks, before any work, that a bundle may be written to ``out_dir``.

    A bundle folder holds exactly one bundle's files: ``out_dir`` must be
    new, empty, or hold a tfedge bundle and nothing else (it is then
    replaced whole). Anything else there is the user's, and is not deleted.

    Args:
        out_dir: the bundle folder.
        flag: how the caller names it in the message (``"--android"`` in the CLI).

    Returns:
        ``out_dir`` as a string.

    Raises:
        ValueError: ``out_dir`` is a file, or a folder with files that are not
            one tfedge bundle's.

    Example:

    >>> import os, tempfile
    >>> check_out_dir(os.path.join(tempfile.mkdtemp(), "android")).endswith("android")
    True
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{flag} {out_dir!r} is a file, not a folder: give a new folder for "
                         "the bundle (an existing bundle folder is replaced whole).")
    if not os.path.isdir(out_dir):
        return out_dir
    entries = sorted(n for n in os.listdir(out_dir) if not is_temporary(n))
    if not entries:
        return out_dir
    try:
        manifest = set((card_lib.read_model_card(out_dir).get("bundle") or {})["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(
            f"{flag} {out_dir!r} holds files that are not a tfedge bundle ("
            f"{', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}): exporting "
            "replaces the bundle folder whole, so it must be new, empty, or an earlier "
            "bundle. Give another folder.") from None
    extra = [n for n in entries if n not in manifest | {card_lib.CARD_FILENAME}]
    if extra:
        raise ValueError(
            f"{flag} {out_dir!r} holds a bundle plus files that are not in its manifest "
            f"({', '.join(extra[:5])}): exporting replaces the folder whole and would delete "
            "them. Move them out (or delete them), or give another folder.")
    return out_dir


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths atomically (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def staged(out_dir: str) -> Iterator[str]:
    """A staging folder beside ``out_dir`` that replaces it whole when the block ends.

    Nothing is written into ``out_dir`` itself: the bundle is written into
    the staging folder, which is then swapped with ``out_dir`` in one atomic
    rename (renameat2's RENAME_EXCHANGE where the system has it; otherwise
    two renames). A process killed at any moment leaves the old bundle or
    the new one; an error leaves the old one. Staging folders that killed
    exports left are removed first.

    Args:
        out_dir: the bundle folder (checked with :func:`check_out_dir` before).

    Returns:
        A context manager giving the staging folder's path.

    Example:

    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "micro")
    >>> with staged(target) as folder:
    ...     _ = open(os.path.join(folder, "model.tflite"), "wb").write(b"TFL3")
    >>> os.listdir(target)
    ['model.tflite']
    """
    target = os.path.abspath(out_dir)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{os.path.basename(target)}{_STAGING}"
    remove_stale(parent, prefix)  # left by exports that were killed
    staging = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # (mkdtemp makes it private; a bundle is not)
    try:
        yield staging
        if not os.path.isdir(target) or not os.listdir(target):
            if os.path.isdir(target):
                os.rmdir(target)
            os.rename(staging, target)
        elif not _exchange(staging, target):
            old = staging + ".old"
            os.rename(target, old)
            os.rename(staging, target)
            os.rename(old, staging)
        # staging now holds the old bundle (or nothing)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


