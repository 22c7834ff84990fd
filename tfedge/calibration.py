"""Calibration and evaluation data: what ``convert`` and ``validate`` feed a model.

Representative (calibration) data for the integer modes is accepted as an
array, a ``tf.data.Dataset`` (of ``x`` or ``(x, y)``), a generator or a
callable, and checked for shape, dtype, values and count before the
converter sees it (:func:`representative_samples`), and its range is compared
with what the model and the evaluation data expect
(:func:`check_representative_range`). Evaluation data is split
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


def check_num_samples(num_samples: Any) -> None:
    """Raises unless ``num_samples`` (representative samples to calibrate on) is a count >= 1."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, float, np.integer)) \
            or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r}: give the number of representative "
                         "samples to calibrate on, at least 1 (default 300; a few hundred "
                         "are best).")


def data_range(samples: list[np.ndarray]) -> dict[str, float]:
    """Min, max, mean and std of the calibration samples (recorded in the artifact)."""
    stacked = np.concatenate(samples)
    return {"min": float(stacked.min()), "max": float(stacked.max()),
            "mean": float(stacked.mean()), "std": float(stacked.std())}


def warn_or_raise(message: str, strict: bool) -> None:
    """A loud warning, or a ValueError under ``strict=True``."""
    if strict:
        raise ValueError(message)
    logging.warning("tfedge: %s (strict=True makes this an error.)", message)


def looks_like_raw_pixels(x: np.ndarray) -> bool:
    """Whole numbers from 0 up to more than 1 and at most 255: 8-bit pixels not yet scaled."""
    x = np.asarray(x)
    if x.size == 0 or not np.isfinite(x).all():
        return False
    low, high = float(x.min()), float(x.max())
    return low >= 0 and 1.5 < high <= 255 and bool(np.all(x == np.round(x)))


def first_layer_rescales(model: Any) -> bool:
    """True if the model scales its own input first (Rescaling, Normalization layers)."""
    for layer in getattr(model, "layers", [])[:3]:
        if type(layer).__name__ in ("Rescaling", "Normalization"):
            return True
    return False


def check_representative_range(samples: list[np.ndarray], eval_x: np.ndarray | None,
                               model: Any = None, *, strict: bool = False) -> None:
    """Compares the calibration data's range with what the model and ``eval_data`` expect.

    Calibration on differently preprocessed data (0..255 pixels for a model
    trained on 0..1) gives int8 ranges that are wrong for every real input,
    and the converter cannot tell. Two signs are checked:

    * with ``eval_data``: its values outside the calibrated range (they clip),
      or a calibrated range ten times wider than the evaluation data's (int8
      steps ten times too coarse);
    * without it: whole-number 0..255 data for a model whose first layers do
      not rescale their input.

    Raises:
        ValueError: under ``strict=True``, instead of the warning.
    """
    stacked = np.concatenate(samples)
    low, high = float(stacked.min()), float(stacked.max())
    span = high - low or 1.0
    if eval_x is not None:
        e_low, e_high = float(np.min(eval_x)), float(np.max(eval_x))
        outside = float(np.mean((eval_x < low - 0.05 * span) | (eval_x > high + 0.05 * span)))
        if outside > 0.01:
            warn_or_raise(
                f"{100 * outside:.1f}% of the eval_data input values lie outside the range "
                f"of representative_data [{low:g}, {high:g}] (eval_data spans [{e_low:g}, "
                f"{e_high:g}]); the int8 input clips them. Calibrate on data preprocessed "
                "like the evaluation data.", strict)
        elif span > 10 * ((e_high - e_low) or 1e-12):
            warn_or_raise(
                f"representative_data spans [{low:g}, {high:g}], over ten times the range of "
                f"eval_data [{e_low:g}, {e_high:g}]: the two are not preprocessed alike "
                "(e.g. 0..255 pixels vs x / 255), and int8 calibrated on the wider range "
                "resolves the real inputs in a few steps. Preprocess representative_data "
                "exactly as the training and evaluation data.", strict)
        return
    if looks_like_raw_pixels(stacked) and not first_layer_rescales(model):
        warn_or_raise(
            f"representative_data holds whole numbers from {low:g} to {high:g} (raw 8-bit "
            "pixels?) and the model's first layers do not rescale their input (no Rescaling "
            "or Normalization layer): if it was trained on scaled inputs (e.g. x / 255), "
            "calibrate on the same scaling, or the int8 model's outputs will be wrong. "
            "Pass eval_data= to have the ranges compared.", strict)


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


def validation_data(x: Any, y: Any, sample_shape: tuple | None, *,
                    input_range: tuple[float, float] | None = None,
                    num_classes: int | None = None,
                    strict: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Checks ``validate``'s ``x`` and ``y`` before any model runs on them.

    Args:
        x: an array of samples, one sample without its batch axis, or a
            ``tf.data.Dataset`` of ``x`` or ``(x, y)`` (as ``convert(eval_data=)``).
        y: labels (integers or one-hot), or None; inside the dataset for one.
        sample_shape: the shape of one model input sample (no batch), or None
            (several inputs: not checked).
        input_range: the float range the model's input represents (int8
            input: its quantization range; float input: its calibration range).
        num_classes: classes of the first output, for integer labels.
        strict: raise instead of warning about values outside ``input_range``.

    Returns:
        ``(x, y)`` as arrays, samples first.

    Raises:
        ValueError: wrong shape, non-numeric, NaN or infinite inputs; labels
            not as many as samples, not whole numbers, or outside
            ``0..num_classes - 1``; with ``strict``, inputs out of range.
    """
    if hasattr(x, "element_spec"):
        if y is not None:
            raise ValueError("x is a tf.data.Dataset: put the labels in it, as (x, y) "
                             "elements, instead of passing y= as well.")
        x, y = dataset_arrays(x)
        if x is None:
            raise ValueError("validate got an empty dataset as x: give at least one sample.")
    if isinstance(x, (list, tuple)) and sample_shape is None:
        return x, None if y is None else np.asarray(y)  # several inputs: the runner checks
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise ValueError(f"x must be numeric samples, got dtype {x.dtype}: pass the model's "
                         "preprocessed inputs as an array (or a tf.data.Dataset).")
    if sample_shape is not None:
        sample_shape = tuple(sample_shape)
        if x.ndim == len(sample_shape) and tuple(x.shape) == sample_shape:
            x = x[None]  # one sample without its batch axis
        if tuple(x.shape[1:]) != sample_shape:
            raise ValueError(f"x of shape {x.shape} does not fit the model input: give "
                             f"samples of shape {sample_shape}, samples first (one sample: "
                             f"x[None]), preprocessed as for training.")
    if len(x) == 0:
        raise ValueError("validate needs at least one sample in x.")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = sorted({int(i) for i in np.nonzero(bad.reshape(len(x), -1).any(1))[0]})
        raise ValueError(f"x contains NaN or infinite values (sample(s) {rows[:5]}"
                         f"{'...' if len(rows) > 5 else ''}): clean or drop them; the "
                         "comparison would be meaningless.")
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)} labels.")
        if num_classes and num_classes > 1 and not (y.ndim > 1 and y.shape[-1] > 1):
            labels = y.reshape(len(y))
            if labels.dtype.kind not in "iub" and not np.all(labels == np.round(labels)):
                raise ValueError("y holds non-integer labels: give class indices "
                                 f"0..{num_classes - 1} (or one-hot rows).")
            wrong = labels[(labels < 0) | (labels >= num_classes)]
            if wrong.size:
                raise ValueError(
                    f"y has {wrong.size} label(s) outside 0..{num_classes - 1} (e.g. "
                    f"{', '.join(str(v) for v in np.unique(wrong)[:5])}): the model has "
                    f"{num_classes} classes. Give class indices 0..{num_classes - 1} in the "
                    "model's output order.")
    if input_range is not None:
        low, high = input_range
        span = (high - low) or 1.0
        outside = float(np.mean((x < low - 0.05 * span) | (x > high + 0.05 * span)))
        if outside > 0.01:
            warn_or_raise(
                f"{100 * outside:.1f}% of the x values lie outside the range the model's "
                f"input represents [{low:g}, {high:g}] (x spans [{float(x.min()):g}, "
                f"{float(x.max()):g}]); they clip, and the report would measure wrongly "
                "preprocessed inputs. Preprocess x as for training (e.g. x / 255).", strict)
    return x, y
