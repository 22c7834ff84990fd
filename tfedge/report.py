"""Plain-text tables and JSON for reports. Framework-neutral (no TF import)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import threading
from typing import Any, Sequence


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                 title: str | None = None) -> str:
    """Formats rows as an aligned text table.

    Args:
        headers: column names.
        rows: one sequence per row, as long as ``headers``.
        title: optional line printed above the table.

    Returns:
        The table as a string (no trailing newline).
    """
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [title] if title else []
    out += [line, "  ".join("-" * w for w in widths)]
    for row in cells:
        out.append("  ".join(v.rjust(w) if _is_number(v) else v.ljust(w)
                             for v, w in zip(row, widths)))
    return "\n".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%x"))
        return True
    except ValueError:
        return False


def to_json(data: Any) -> str:
    """JSON with NumPy scalars and arrays turned into Python values."""
    return json.dumps(data, indent=2, default=_default, sort_keys=False)


def write_atomic(path: "str | os.PathLike", data: "bytes | str") -> str:
    """Writes bytes or text to ``path`` atomically, creating parent folders.

    The one file writer of tfedge (models, cards, JSON, C sources, samples):
    the data go to a temporary file in the same folder, flushed to disk,
    which then replaces ``path`` (``os.replace``). A reader never sees half
    a file, and a process killed at any moment leaves the old file or the
    new one, never a mix (at worst a ``.<name>.<pid>-<thread>.tmp`` file beside
    it, which the next write of that file removes).

    Args:
        path: the file to write.
        data: ``bytes`` (written as is) or ``str`` (UTF-8).

    Returns:
        The path written.

    Raises:
        IsADirectoryError: ``path`` is a folder.

    Example:

    >>> import os, tempfile
    >>> path = write_atomic(os.path.join(tempfile.mkdtemp(), "a", "x.txt"), "hi\\n")
    >>> open(path).read()
    'hi\\n'
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder: give a file name to write, e.g. "
                                f"{os.path.join(path, 'model.tflite')!r}.")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    remove_stale(folder, f".{os.path.basename(path)}.")
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}-"
                               f"{threading.get_ident()}.tmp")  # (one per writer thread)
    try:
        with open(tmp, "wb") as f:  # (open, not mkstemp: the file gets the usual mode)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_stale(folder: str, prefix: str) -> None:
    """Deletes ``<prefix><pid>[-...].tmp`` files and ``<prefix><pid>-*`` folders of dead processes.

    What a writer killed mid-write leaves behind (see :func:`write_atomic`);
    those of running processes are left alone.
    """
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split(".", 1)[0].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: "str | os.PathLike", data: Any) -> str:
    """Writes ``data`` as JSON (see :func:`to_json`), atomically (:func:`write_atomic`).

    Args:
        path: the ``.json`` file to write.
        data: what :func:`to_json` accepts (NumPy values, objects with ``to_dict``).

    Returns:
        The path written.

    Example:

    >>> import json, os, tempfile
    >>> path = write_json(os.path.join(tempfile.mkdtemp(), "a", "r.json"), {"n": 1})
    >>> json.load(open(path))
    {'n': 1}
    """
    return write_atomic(path, to_json(data) + "\n")  # serialized first: an error writes nothing


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
