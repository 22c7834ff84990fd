"""``tfedge.convert``: a Keras model to a TFLite flatbuffer, checked.

A thin layer over ``tf.lite.TFLiteConverter`` that fixes its sharp edges:
representative data is accepted as an array, a ``tf.data.Dataset`` (of ``x``
or ``(x, y)``, batched or not) or a generator, and checked against the
model's input; the result is read back and a model asked to be full int8 that
still has float ops raises :class:`~tfedge.errors.ConversionError` listing
them, instead of shipping a silently half-float model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import itertools
import os
import warnings
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from absl import logging

from tfedge import flatbuffer
from tfedge.errors import ConversionError
from tfedge.report import format_table

MODES = ("int8", "int16x8", "float16", "dynamic_range", "float32")
_INTEGER_MODES = ("int8", "int16x8")
_IO_TYPES = ("int8", "uint8", "float32")
_MIN_SAMPLES_WARNING = 100


@dataclasses.dataclass
class TFLiteArtifact:
    """A converted model: flatbuffer bytes plus facts read back from them.

    Attributes:
        content: the ``.tflite`` flatbuffer.
        mode: the conversion mode (see :data:`MODES`), or ``"unknown"`` for a
            file loaded from disk.
        num_calibration_samples: representative samples used (0 if none).

    Example:

    >>> art = tfedge.convert(model, representative_data=x[:200])  # doctest: +SKIP
    >>> art.save("model.tflite"); art.inputs[0].dtype  # doctest: +SKIP
    'INT8'
    """

    content: bytes
    mode: str = "unknown"
    num_calibration_samples: int = 0

    def __post_init__(self):
        self.flatbuffer = flatbuffer.FlatbufferModel(self.content)

    @property
    def size_bytes(self) -> int:
        return len(self.content)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def inputs(self) -> list[flatbuffer.TensorInfo]:
        return self.flatbuffer.inputs

    @property
    def outputs(self) -> list[flatbuffer.TensorInfo]:
        return self.flatbuffer.outputs

    @property
    def ops(self) -> dict[str, int]:
        """Operator counts by kind, e.g. ``{"CONV_2D": 3}``."""
        return dict(sorted(self.flatbuffer.op_counts().items()))

    def save(self, path: str | os.PathLike) -> str:
        """Writes the flatbuffer to ``path`` (parents created); returns the path."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(self.content)
        return path

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "size_bytes": self.size_bytes, "sha256": self.sha256,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "ops": self.ops, "num_calibration_samples": self.num_calibration_samples}

    def __str__(self) -> str:
        rows = [[kind, t.name, "x".join(map(str, t.shape)), t.dtype,
                 f"{t.scale[0]:.6g}" if t.scale else "-",
                 t.zero_point[0] if t.zero_point else "-"]
                for kind, ts in (("input", self.inputs), ("output", self.outputs)) for t in ts]
        table = format_table(["", "tensor", "shape", "dtype", "scale", "zero point"], rows)
        ops = ", ".join(f"{k} x{v}" for k, v in self.ops.items())
        return (f"TFLite model ({self.mode}), {self.size_bytes:,} bytes\n{table}\nops: {ops}")


def load(path: str | os.PathLike) -> TFLiteArtifact:
    """Reads a ``.tflite`` file into an artifact.

    Raises:
        FileNotFoundError: no such file.
        InvalidModelFileError: the file is not a readable TFLite model.
    """
    with open(path, "rb") as f:
        return TFLiteArtifact(f.read())


def check_full_integer(artifact: TFLiteArtifact) -> None:
    """Raises unless every op of the model computes on integer tensors.

    Args:
        artifact: the converted model.

    Raises:
        ConversionError: lists each op that reads or writes a float tensor,
            with what to do about it.
    """
    float_ops = artifact.flatbuffer.float_ops()
    if not float_ops:
        return
    tensors = artifact.flatbuffer.tensors
    lines = []
    for op in float_ops[:20]:
        names = [f"{tensors[t].name} ({tensors[t].dtype})" for t in op.inputs + op.outputs
                 if t >= 0 and tensors[t].dtype in flatbuffer.FLOAT_TYPES]
        lines.append(f"  op {op.index} {op.name}: {', '.join(names[:3])}")
    more = f"\n  ... and {len(float_ops) - 20} more" if len(float_ops) > 20 else ""
    raise ConversionError(
        f"The model is not full integer: {len(float_ops)} op(s) compute in float:\n"
        + "\n".join(lines) + more +
        "\nThese ops have no int8 kernel (or the converter could not quantize them). "
        "Replace the layers behind them with int8-friendly ones (e.g. ReLU6 for swish, "
        "no custom ops), convert with mode='int16x8', or pass allow_float_ops=True to "
        "accept a mixed model.")


# ----------------------------------------------------------------------------
# Representative data
# ----------------------------------------------------------------------------
def _take_x(item: Any) -> Any:
    """Drops labels: ``(x, y)`` or ``(x, y, w)`` -> ``x``."""
    if isinstance(item, tuple) and len(item) in (2, 3):
        return item[0]
    return item


def _as_numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


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
        ValueError: no data, wrong shape, non-numeric or non-finite values.
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
        items: Iterable[Any] = [_as_numpy(data)]
    else:
        items = data
    rank = len(input_shape)
    samples: list[np.ndarray] = []
    for item in items:
        x = _as_numpy(_take_x(item))
        if x.dtype.kind not in "fiub":
            raise ValueError(f"Representative data must be numeric, got dtype {x.dtype}.")
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
    if not all(np.isfinite(s).all() for s in samples):
        raise ValueError("Representative data contains NaN or infinite values.")
    if len(samples) < _MIN_SAMPLES_WARNING:
        logging.warning("tfedge: only %d representative samples; int8 ranges calibrated on "
                        "fewer than %d samples may clip real inputs.", len(samples),
                        _MIN_SAMPLES_WARNING)
    return samples


# ----------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """Hides the converter's C++ and Python chatter unless verbose logging."""
    if logging.get_verbosity() >= logging.DEBUG:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="tensorflow.lite")
        yield


def _plain_model(model: Any) -> Any:
    from tfedge.wrap import EdgeModel  # local: convert must not need wrap's imports

    if isinstance(model, EdgeModel):
        logging.info("tfedge: convert got a wrapped model; calling finish() first.")
        return model.finish()
    return model


def _is_quantization_aware(model: Any) -> bool:
    from tfedge.quantize import is_quantization_aware  # local: needs tfmot

    return is_quantization_aware(model)


def convert(model: Any, representative_data: Any = None, *, mode: str = "int8",
            input_type: str | None = None, output_type: str | None = None,
            num_samples: int = 300, allow_float_ops: bool = False) -> TFLiteArtifact:
    """Converts a Keras model to a TFLite flatbuffer.

    Args:
        model: a tf_keras model, or the EdgeModel ``wrap`` returned (it is
            finished first).
        representative_data: calibration inputs for the integer modes: an
            array, a ``tf.data.Dataset`` (labels are dropped), a generator, or
            a callable returning one. Use data preprocessed as for training.
            Optional for a quantization-aware (QAT) model in ``int8`` mode:
            its fake-quant layers carry the ranges (layers QAT skipped then
            stay float and are reported; pass data to calibrate them).
        mode: ``"int8"`` (full integer, default), ``"int16x8"`` (int16
            activations, int8 weights), ``"float16"`` (float16 weights),
            ``"dynamic_range"`` (int8 weights, float activations) or
            ``"float32"`` (no quantization).
        input_type: ``"int8"``, ``"uint8"`` or ``"float32"``; default int8
            for ``int8`` mode, float32 otherwise.
        output_type: as ``input_type``.
        num_samples: at most this many representative samples are used.
        allow_float_ops: for the integer modes, accept float ops left in the
            model with a warning instead of raising.

    Returns:
        A :class:`TFLiteArtifact`.

    Raises:
        ValueError: unknown mode or I/O type, missing or ill-shaped
            representative data.
        ConversionError: the converter failed (its message is kept), or an
            integer mode produced float ops.

    Example:

    >>> art = tfedge.convert(model, representative_data=x_train[:300])  # doctest: +SKIP
    >>> art.save("tflite_models/digits/model.tflite")  # doctest: +SKIP
    """
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    default_io = "int8" if mode == "int8" else "float32"
    input_type = input_type or default_io
    output_type = output_type or default_io
    for name, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in _IO_TYPES:
            raise ValueError(f"{name}={value!r}; use one of {', '.join(_IO_TYPES)}.")
        if value != "float32" and mode != "int8":
            raise ValueError(f"{name}={value!r} needs mode='int8'; mode={mode!r} keeps "
                             "float32 inputs and outputs.")
    model = _plain_model(model)

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    samples: list[np.ndarray] = []
    if mode in _INTEGER_MODES:
        shape = tuple(model.inputs[0].shape)
        if len(model.inputs) != 1:
            raise ValueError("Integer conversion of multi-input models is not supported yet: "
                             f"{model.name!r} has {len(model.inputs)} inputs.")
        if representative_data is None and mode == "int8" and _is_quantization_aware(model):
            logging.info("tfedge: %r is quantization-aware: its ranges come from QAT.",
                         model.name)
        else:
            samples = representative_samples(representative_data, shape, num_samples)
            converter.representative_dataset = lambda: ([s] for s in samples)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "int8":
            if samples:  # (without data, i.e. QAT, the converter refuses this ops set)
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                       tf.lite.OpsSet.TFLITE_BUILTINS]
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS]
        dtypes = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
        converter.inference_input_type = dtypes[input_type]
        converter.inference_output_type = dtypes[output_type]
    elif mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic_range":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

    logging.info("tfedge: converting %r to TFLite (%s, %d calibration samples)",
                 model.name, mode, len(samples))
    try:
        with _quiet_converter():
            content = converter.convert()
    except Exception as err:  # the converter raises many kinds; keep its message
        raise ConversionError(
            f"The TFLite converter failed on {model.name!r} in mode {mode!r}: "
            f"{str(err).strip()[:2000]}\nIf this names an op, that op has no TFLite "
            "builtin kernel: replace the layer, or try mode='float32' to see whether "
            "the model converts at all.") from err

    artifact = TFLiteArtifact(content, mode=mode, num_calibration_samples=len(samples))
    if mode in _INTEGER_MODES:
        try:
            check_full_integer(artifact)
        except ConversionError as err:
            if not allow_float_ops:
                raise
            logging.warning("tfedge: %s", err)
    logging.info("tfedge: %s", str(artifact).splitlines()[0])
    return artifact
