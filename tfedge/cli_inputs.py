"""What the ``tfedge`` command line reads, checked before any work: paths, counts, arrays, builders.

Every function here names the flag it reads in its error, so a bad argument
is one clear line (``tfedge.cli`` prints it and exits 2). Array files follow
one convention (see :mod:`tfedge.cli`): a ``.npy`` of inputs, or a ``.npz``
with ``x`` and ``y`` (``x_val`` / ``y_val`` for a validation split;
``x_train`` / ``y_train`` are still read as ``x`` / ``y``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
from typing import Any, Callable

import numpy as np

from tfedge.data import load_digits


# ----------------------------------------------------------------------------
# Paths are checked before any work, and errors name the flag
# ----------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse then names the flag in its error)."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count: give a whole number >= 1")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: give a whole number >= 0")
    return value


def output_file(path: str | None, flag: str) -> str | None:
    """Checks that ``path`` can be written as a file, before any work; names ``flag``.

    Raises:
        ValueError: ``path`` is a folder, or its folder cannot be created or written.
    """
    if path is None:
        return None
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory: give the file to write, e.g. "
                         f"{os.path.join(path, 'out' + (os.path.splitext(path)[1] or '.json'))!r}.")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path!r}: {folder!r} is a file, so the folder for it cannot "
                         "be created. Give another path.")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path!r}: no permission to write in {folder!r}.")
    return path


def input_file(path: str | None, flag: str) -> str | None:
    """Checks that ``path`` is an existing file (not a folder); names ``flag``."""
    if path is not None and not os.path.isfile(path):
        what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
        raise ValueError(f"{flag} {path!r} {what}.")
    return path


def read_samples(path: str | None, flag: str, count: int | None = None) -> np.ndarray | None:
    """An array of samples from a .npy file (or the ``x`` of a .npz); names ``flag``."""
    if path is None:
        return None
    x, _ = load_arrays(input_file(path, flag), flag)
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{flag} {path!r} holds {x.dtype} values, not numbers.")
    return x[:count] if count else x


def read_keras_model(path: str | None, flag: str) -> Any:
    """A saved tf_keras model for ``tune``; an unreadable file names ``flag``."""
    if path is None:
        return None
    from tfedge._keras import keras

    input_file(path, flag)
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - Keras raises many kinds for a bad file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{flag} {path!r} is not a saved tf_keras model (.keras / .h5) "
                         f"Keras can load: {type(err).__name__}: {first[:300]}") from None


# ----------------------------------------------------------------------------
# Inputs the command line reads: builder functions and array files
# ----------------------------------------------------------------------------
def load_builder(spec: str) -> Callable[..., Any]:
    """``"path/to/file.py:function"`` or ``"package.module:function"`` -> the function.

    Raises:
        ValueError: malformed spec, missing file, module or function.
    """
    if ":" not in spec:
        raise ValueError(f"--builder {spec!r} must be FILE.py:FUNCTION or MODULE:FUNCTION, "
                         "e.g. models.py:build (the function takes width and input_shape).")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        if not os.path.exists(where):
            raise ValueError(f"--builder file {where!r} does not exist.")
        module_spec = importlib.util.spec_from_file_location(
            os.path.splitext(os.path.basename(where))[0], where)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ValueError(f"--builder module {where!r} cannot be imported: {err}") from err
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--builder: {where!r} has no function {name!r}.")
    return fn


def _xy(arrays: Any, path: str, what: str, x_key: str = "x", y_key: str = "y",
        old: tuple[str, str] | None = ("x_train", "y_train")) -> tuple:
    """(x, y or None) from an open .npz, by the one key convention (old names accepted)."""
    names = (x_key, y_key) if x_key in arrays.files or old is None or old[0] not in \
        arrays.files else old
    if names[0] not in arrays.files:
        raise ValueError(f"{what}: {path!r} has arrays {', '.join(arrays.files)}; name the "
                         f"inputs {x_key!r} (and labels {y_key!r}): np.savez(path, "
                         f"{x_key}=x, {y_key}=y).")
    return arrays[names[0]], (arrays[names[1]] if names[1] in arrays.files else None)


def load_arrays(path: str | None, what: str) -> tuple:
    """(x, y) from a .npy file (y None) or a .npz file with ``x`` (and ``y``).

    Raises:
        ValueError: an unreadable file, or a .npz without ``x``.
    """
    if path is None:
        return None, None
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{what}: cannot read {path!r} as a .npy/.npz array ({err}).") from None
    if isinstance(data, np.ndarray):
        return data, None
    with data:
        return _xy(data, path, what)


def load_training_data(spec: str) -> tuple[tuple[np.ndarray, np.ndarray],
                                           tuple[np.ndarray, np.ndarray] | None]:
    """``"digits"`` or a .npz with ``x``, ``y`` (and ``x_val``, ``y_val``), for ``tune``.

    Returns:
        ``((x, y), (x_val, y_val) or None)``. For ``digits`` the validation
        pair is the last 20% of scikit-learn's training split (the test split
        is left untouched).

    Raises:
        ValueError: unknown name, missing file or arrays.
    """
    if spec == "digits":
        (x, y), _ = load_digits()
        n_val = len(x) // 5
        return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])
    if not spec.endswith(".npz") or not os.path.exists(spec):
        raise ValueError(f"--data {spec!r}: give 'digits' or an existing .npz file holding "
                         "x and y (and optionally x_val and y_val).")
    with np.load(spec) as arrays:
        x, y = _xy(arrays, spec, "--data")
        if y is None:
            raise ValueError(f"--data: {spec} has inputs but no labels: add 'y'.")
        val = _xy(arrays, spec, "--data", "x_val", "y_val", old=None) \
            if "x_val" in arrays.files else None
        return (x, y), val
