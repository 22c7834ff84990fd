"""Plain-text tables and JSON for reports. Framework-neutral (no TF import)."""

from __future__ import annotations

import json
import math
import os
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


def write_json(path: "str | os.PathLike", data: Any) -> str:
    """Writes ``data`` as JSON (see :func:`to_json`), atomically, creating parent folders.

    The text goes to a temporary file in the same folder, which then replaces
    ``path`` (``os.replace``): a reader never sees half a file, and a crash
    leaves the old one.

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
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    text = to_json(data) + "\n"  # serialized first: an error leaves no file behind
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:  # (open, not mkstemp: the file gets the usual mode)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
