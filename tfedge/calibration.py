"""Calibration and evaluation data: what ``convert`` and ``validate`` feed a model.

Representative (calibration) data for the integer modes is accepted as an
array, a ``tf.data.Dataset`` (of ``x`` or ``(x, y)``), a generator or a
callable, and checked for shape, dtype, values and count before the
converter sees it (:func:`representative_samples`). Evaluation data is split
into ``(x, y)`` arrays (:func:`split_eval_data`), and labels, integers or
one-hot, become class indices (:func:`class_labels`).

Framework-neutral: datasets are read by iteration, so this module imports
no TensorFlow.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from absl import logging

_MIN_SAMPLES_WARNING = 100


def take_x(item: Any) -> Any:
    """Drops labels: ``(x, y)`` or ``(x, y, w)`` -> ``x``."""
    if isinstance(item, tuple) and len(item) in (2, 3):
        return item[0]
    return item


def as_numpy(value: Any) -> np.ndarray:
    """A tensor (anything with ``.numpy()``) or array-like as a NumPy array."""
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def dataset_arrays(dataset: Any, limit: int | None = None
                    ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(x, y) arrays from a dataset of ``x`` or ``(x, y[, w])``, batched or not."""
    spec = getattr(dataset, "element_spec", None)
    x_spec = spec[0] if isinstance(spec, tuple) else spec
    shape = getattr(x_spec, "shape", None)
    batched = bool(shape is not None and shape.rank and shape[0] is None)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    count = 0
    for item in dataset:
        x = as_numpy(take_x(item))
        xs.append(x if batched else x[None])
        if isinstance(item, tuple) and len(item) in (2, 3):
            y = as_numpy(item[1])
            ys.append(y if batched else y[None])
        count += len(xs[-1])
        if limit is not None and count >= limit:
            break
    if not xs:
        return None, None
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) != 1:
        raise ValueError(f"The dataset's inputs have different shapes {sorted(shapes)}: "
                         "resize them as for training first.")
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys) if ys else None
    if limit is not None:
        x, y = x[:limit], (None if y is None else y[:limit])
    return x, y


def representative_from_dataset(dataset: Any, num_samples: int = 300) -> np.ndarray:
    """The inputs of a ``tf.data.Dataset`` of ``(x, y)``, as one array.

    Labels (and sample weights) are dropped; batched and unbatched datasets
    are both accepted. Use it to calibrate with the training pipeline itself.

    Args:
        dataset: a ``tf.data.Dataset`` of ``x``, ``(x, y)`` or ``(x, y, w)``
            elements, batched or not.
        num_samples: at most this many samples are taken.

    Returns:
        A float32 array of shape ``(n,) + input_shape``.

    Raises:
        ValueError: an empty dataset, or elements of differing shapes.

    Example:

    >>> ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # doctest: +SKIP
    >>> calib = tfedge.representative_from_dataset(ds, 300)  # doctest: +SKIP
    >>> art = tfedge.convert(model, calib)  # doctest: +SKIP
    """
    x, _ = dataset_arrays(dataset, num_samples)
    if x is None:
        raise ValueError("The dataset is empty: give a tf.data.Dataset of (x, y) with at "
                         "least one element (a few hundred samples are best).")
    return x


def representative_samples(data: Any, input_shape: tuple[int | None, ...],
                           num_samples: int) -> list[np.ndarray]:
    """Turns representative data into a list of float32 arrays of batch 1.

    Args:
        data: an array of samples, a ``tf.data.Dataset`` (of ``x`` or
            ``(x, y)``; batched or not), a generator or iterable of samples or
            batches, or a callable returning one.
        input_shape: the model input's shape, batch dimension first.
        num_samples: at most this many samples are taken.

    Returns:
        The samples, each of shape ``(1,) + input_shape[1:]``.

    Raises:
        ValueError: no data, wrong shape, non-numeric, non-finite or constant
            values; the message says what to pass instead. Fewer than 100
            samples, or integer-typed data, only log a warning.
    """
    if data is None:
        raise ValueError(
            "Full-integer conversion needs representative_data: a few hundred real "
            "inputs (e.g. representative_data=x_train[:200]) to calibrate the int8 "
            "ranges of activations. For a float model pass mode='float32'.")
    if callable(data) and not hasattr(data, "element_spec"):
        data = data()
    if isinstance(data, np.ndarray) or (hasattr(data, "shape") and hasattr(data, "dtype")
                                        and not hasattr(data, "element_spec")):
        items: Iterable[Any] = [as_numpy(data)]
    else:
        items = data
    rank = len(input_shape)
    samples: list[np.ndarray] = []
    integer_typed = False
    for item in items:
        x = as_numpy(take_x(item))
        if x.dtype.kind not in "fiub":
            raise ValueError(f"Representative data must be numeric, got dtype {x.dtype}: "
                             "pass the model's preprocessed float inputs (e.g. images "
                             "scaled as for training), not file names or raw records.")
        integer_typed = integer_typed or x.dtype.kind in "iub"
        if x.ndim == rank - 1:
            x = x[None]
        if x.ndim != rank or any(d is not None and d != s
                                 for d, s in zip(input_shape[1:], x.shape[1:])):
            raise ValueError(
                f"Representative data of shape {x.shape} does not fit the model input "
                f"{tuple(input_shape)}: give samples of shape {tuple(input_shape[1:])} "
                f"(or batches of them), preprocessed exactly as for training.")
        for row in x:
            samples.append(row[None].astype(np.float32))
            if len(samples) >= num_samples:
                break
        if len(samples) >= num_samples:
            break
    if not samples:
        raise ValueError("representative_data is empty: pass at least one sample "
                         "(a few hundred are best).")
    stacked = np.concatenate(samples)
    bad = ~np.isfinite(stacked)
    if bad.any():
        rows = sorted({int(i) for i in np.nonzero(bad.reshape(len(stacked), -1).any(1))[0]})
        raise ValueError(f"Representative data contains NaN or infinite values (sample(s) "
                         f"{rows[:5]}{'...' if len(rows) > 5 else ''}): clean or drop them.")
    if len(samples) > 1 and float(np.ptp(stacked, axis=0).max()) == 0.0:
        raise ValueError(f"All {len(samples)} representative samples are identical: "
                         "calibration would see a single point and clip every real input. "
                         "Pass varied real inputs (e.g. a random slice of the training set).")
    if integer_typed:
        logging.warning("tfedge: representative data is integer-typed (range %g..%g); it is "
                        "fed to the model as float32 as is. Make sure it is preprocessed "
                        "exactly as at training time (e.g. scaled to [0, 1]).",
                        float(stacked.min()), float(stacked.max()))
    if len(samples) < _MIN_SAMPLES_WARNING:
        logging.warning("tfedge: only %d representative samples; int8 ranges calibrated on "
                        "fewer than %d samples may clip real inputs.", len(samples),
                        _MIN_SAMPLES_WARNING)
    return samples


def data_range(samples: list[np.ndarray]) -> dict[str, float]:
    """Min, max, mean and std of the calibration samples (recorded in the artifact)."""
    stacked = np.concatenate(samples)
    return {"min": float(stacked.min()), "max": float(stacked.max()),
            "mean": float(stacked.mean()), "std": float(stacked.std())}


def check_eval_range(eval_x: np.ndarray, calibration: dict[str, float]) -> None:
    """Warns when evaluation inputs go well outside the calibrated input range."""
    span = calibration["max"] - calibration["min"] or 1.0
    outside = np.mean((eval_x < calibration["min"] - 0.05 * span)
                      | (eval_x > calibration["max"] + 0.05 * span))
    if outside > 0.01:
        logging.warning("tfedge: %.1f%% of the evaluation input values lie outside the "
                        "calibrated input range [%g, %g]; int8 inputs clip them. Calibrate "
                        "on data preprocessed like the evaluation data.", 100 * outside,
                        calibration["min"], calibration["max"])


def split_eval_data(eval_data: Any, input_shape: tuple) -> tuple[np.ndarray | None,
                                                          np.ndarray | None]:
    """``(x, y)``, ``x`` or a dataset -> (x, y) arrays, checked against the input shape."""
    if eval_data is None:
        return None, None
    if hasattr(eval_data, "element_spec"):
        x, y = dataset_arrays(eval_data)
    elif isinstance(eval_data, tuple) and len(eval_data) == 2:
        x, y = np.asarray(eval_data[0], np.float32), (
            None if eval_data[1] is None else np.asarray(eval_data[1]))
    else:
        x, y = np.asarray(eval_data, np.float32), None
    if x is None or len(x) == 0:
        raise ValueError("eval_data is empty: give (x, y) with at least one sample.")
    if x.ndim != len(input_shape) or any(d is not None and d != s for d, s in
                                         zip(input_shape[1:], x.shape[1:])):
        raise ValueError(f"eval_data inputs of shape {x.shape} do not fit the model input "
                         f"{tuple(input_shape)}: give samples of shape {tuple(input_shape[1:])}.")
    if y is not None and len(y) != len(x):
        raise ValueError(f"eval_data has {len(x)} inputs but {len(y)} labels.")
    return x, y


def class_labels(y: Any) -> np.ndarray:
    """Class indices from labels: integers (any shape with one value per sample) or one-hot."""
    y = np.asarray(y)
    return y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y)).astype(int)
