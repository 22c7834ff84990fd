"""TensorFlow's C++ start-up lines, held to ``TF_CPP_MIN_LOG_LEVEL``.

Importing TensorFlow 2.21 prints lines such as ``oneDNN custom operations
are on``, ``Could not find cuda drivers`` and ``failed call to cuInit``
through Abseil's C++ logging, which writes everything to stderr before
``absl::InitializeLog()`` and ignores ``TF_CPP_MIN_LOG_LEVEL`` (TensorFlow's
documented switch). When that variable asks for quiet (1: no INFO, 2: no
WARNING either, 3: no ERROR either), tfedge imports TensorFlow (and lets it
look for devices, which is when it calls cuInit) with file descriptor 2
captured, then writes back every captured line except Abseil's log records
below the level, its "before absl::InitializeLog()" banner and the ERROR
record "failed call to cuInit", which TensorFlow prints on every machine
without an NVIDIA driver (a CPU machine is not an error). Python
warnings and anything else pass through unchanged; if the import fails,
everything captured is written back.

Nothing happens on import of this module. The ``tfedge`` command calls
:func:`quiet_tensorflow_import` (level 2 unless ``--verbose``): TensorFlow
is then imported this way whenever a subcommand first needs it, and not at
all by the subcommands that do not (``inspect``, ``check``...). The recipes
set the level and call :func:`import_tensorflow` at once (``recipes/__init__.py``).
A library user's own ``import tensorflow`` is left alone.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Any

LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LEVEL = "2"
_RECORD = re.compile(r"^([IWEF])\d{4} ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_NO_GPU = "failed call to cuInit"


def _level() -> int:
    try:
        return int(os.environ.get(LEVEL_VARIABLE, "0"))
    except ValueError:
        return 0


def keep_line(line: str, level: int) -> bool:
    """Whether a captured stderr line is shown at ``TF_CPP_MIN_LOG_LEVEL=level``."""
    if level <= 0:
        return True
    if line.rstrip("\n") == _BANNER:
        return False
    if _RECORD.match(line) and _NO_GPU in line:
        return False
    match = _RECORD.match(line)
    return match is None or _SEVERITY[match.group(1)] >= level


def import_tensorflow() -> None:
    """Imports TensorFlow, holding its C++ start-up lines to the level asked for."""
    level = _level()
    if level <= 0 or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # TensorFlow calls cuInit here
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            shown = text if failed else "".join(
                line for line in text.splitlines(keepends=True) if keep_line(line, level))
            if shown:
                sys.stderr.write(shown)
                sys.stderr.flush()


class _FirstTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: the first ``import tensorflow`` goes through :func:`import_tensorflow`.

    It removes itself, imports TensorFlow with stderr captured (the import
    lock is re-entrant), and hands the import system the module it got.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        _uninstall(self)
        import_tensorflow()
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return sys.modules["tensorflow"]

    def exec_module(self, module):
        pass  # imported already


def _uninstall(hook: Any) -> None:
    if hook in sys.meta_path:
        sys.meta_path.remove(hook)


def quiet_tensorflow_import(level: str = QUIET_LEVEL) -> None:
    """Sets ``TF_CPP_MIN_LOG_LEVEL`` (unless set) and quiets TensorFlow's first import.

    If TensorFlow is imported already, only the variable is set (its C++
    logging then has started already).
    """
    os.environ.setdefault(LEVEL_VARIABLE, level)
    if "tensorflow" not in sys.modules and not any(
            isinstance(h, _FirstTensorFlowImport) for h in sys.meta_path):
        sys.meta_path.insert(0, _FirstTensorFlowImport())
