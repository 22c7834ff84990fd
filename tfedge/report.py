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
    """Writes ``data`` as JSON (see :func:`to_json`), creating parent folders.

    Returns:
        The path written.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(to_json(data) + "\n")
    return path


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
