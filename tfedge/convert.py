"""``tfedge.convert``: a model to the TFLite flatbuffer its target needs, checked.

A thin layer over ``tf.lite.TFLiteConverter`` that fixes its sharp edges:

* **inputs**: a tf_keras (or Keras 3) model, a SavedModel directory, or a
  ``.keras`` / ``.h5`` file; traced with a **fixed batch of 1** by default
  (what embedded runtimes and TFLM need), dynamic batch on request; the
  signature names are kept and reported.
* **modes**: full int8 (int8 or uint8 I/O, or float I/O around an int8 body),
  16x8, float16, dynamic range, float32; per-channel weights by default. Each
  artifact says what it is, and an integer mode that still has float ops
  raises :class:`~tfedge.errors.ConversionError` listing them.
* **representative data** as an array, a ``tf.data.Dataset`` (of ``x`` or
  ``(x, y)``), a generator or a callable, checked for shape, dtype, values
  and count before the converter sees it.
* **sparse flatbuffers** (``sparse=True``): TFLite's sparse tensor encoding
  (``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``), dense vs sparse size, tensors
  the encoder left dense, outputs checked equal to the dense model's, and the
  runtime settings the result needs (sparse integer models do not prepare
  under LiteRT's default XNNPACK delegate).
* **accuracy-aware conversion** (``tolerance=``, ``eval_data=``): the fewest
  layers kept in float to stay within the tolerance of the float model, see
  :mod:`tfedge.quant_debug`.

Every artifact knows the LiteRT settings it needs (:meth:`TFLiteArtifact.
runtime_settings`) and writes its model card beside the ``.tflite``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
from typing import Any, Iterable, Iterator

import numpy as np
from absl import logging

from tfedge import flatbuffer
from tfedge.errors import ConversionError, InvalidModelFileError, UnsupportedModelError
from tfedge.report import format_table

MODES = ("int8", "int16x8", "float16", "dynamic_range", "float32")
MODE_DESCRIPTIONS = {
    "int8": "full integer: int8 weights and activations",
    "int16x8": "int16 activations, int8 weights",
    "float16": "float16 weights, float32 compute",
    "dynamic_range": "int8 weights, float activations (quantized on the fly)",
    "float32": "float32, not quantized",
    "mixed": "int8 with some ops in float",
    "unknown": "not known",
}
_INTEGER_MODES = ("int8", "int16x8")
_IO_TYPES = ("int8", "uint8", "float32")
_MIN_SAMPLES_WARNING = 100
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
# A weight tensor with at least this fraction of zeros that the sparse encoder
# left dense is reported (the encoder itself skips tensors under about 30%).
SPARSE_REPORT_THRESHOLD = 0.1
_ITEM_BYTES = {"INT8": 1, "UINT8": 1, "INT16": 2, "FLOAT16": 2, "FLOAT32": 4, "INT32": 4}

_NO_DELEGATES_ADVICE = (
    "Run it with LiteRT's OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES (Python: "
    "Interpreter(..., experimental_op_resolver_type=OpResolverType."
    "BUILTIN_WITHOUT_DEFAULT_DELEGATES); Android: Interpreter.Options().setUseXNNPACK(false)). "
    "A default-configured Android or desktop interpreter will reject this model.")


# ----------------------------------------------------------------------------
# Runtime settings
# ----------------------------------------------------------------------------
def runtime_settings(content: bytes) -> dict[str, Any]:
    """The LiteRT settings a flatbuffer needs, found by preparing it.

    The model is prepared (``allocate_tensors``) under LiteRT's default op
    resolver, which applies the XNNPACK delegate. If that fails and the
    model prepares without default delegates, it needs
    ``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``: sparse int8 and
    sparse dynamic-range models are such models (XNNPACK refuses their
    FULLY_CONNECTED ops, whose weights come out of a DENSIFY op).

    Args:
        content: the flatbuffer bytes.

    Returns:
        ``{"op_resolver": "auto" | "no_delegates", "reason": str | None}``.

    Raises:
        InvalidModelFileError: the bytes are not a readable TFLite model, or
            LiteRT cannot prepare the model with either resolver.
    """
    from ai_edge_litert import interpreter as litert

    flatbuffer.check_bytes(content)
    errors = {}
    for name, resolver in (("auto", litert.OpResolverType.AUTO),
                           ("no_delegates",
                            litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)):
        try:
            interpreter = litert.Interpreter(model_content=bytes(content),
                                             experimental_op_resolver_type=resolver)
            interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as err:
            errors[name] = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            continue
        if name == "auto":
            return {"op_resolver": "auto", "reason": None}
        return {"op_resolver": "no_delegates",
                "reason": f"LiteRT's default XNNPACK delegate rejects this model "
                          f"({errors['auto']}). " + _NO_DELEGATES_ADVICE}
    raise InvalidModelFileError(
        f"LiteRT cannot prepare this model: {errors.get('no_delegates') or errors.get('auto')}. "
        "It uses an op or a tensor layout this LiteRT build does not support; convert it "
        "again with this TensorFlow version, or check the ops with `tfedge inspect`.")


# ----------------------------------------------------------------------------
# The artifact
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class TFLiteArtifact:
    """A converted model: flatbuffer bytes plus facts read back from them.

    Attributes:
        content: the ``.tflite`` flatbuffer.
        mode: the conversion mode (see :data:`MODES`); for a file, read
            from its tensors by :func:`load` (``"mixed"``: int8 with float
            ops), ``"unknown"`` when built from bytes directly.
        num_calibration_samples: representative samples used (0 if none).
        details: how it was made: input/output types, per-channel, batch,
            signatures, calibration data, sparse encoding, float fallback,
            conversion time (see :meth:`to_dict`).
        runtime: the LiteRT settings it needs (``op_resolver``, ``reason``);
            found by preparing the model when not given, see
            :meth:`runtime_settings`.
        validation: the last :class:`~tfedge.validate.ValidationReport` of
            this artifact, recorded in its model card.

    Example:

    >>> art = tfedge.convert(model, representative_data=x[:200])  # doctest: +SKIP
    >>> art.save("model.tflite"); art.inputs[0].dtype  # doctest: +SKIP
    'INT8'
    """

    content: bytes
    mode: str = "unknown"
    num_calibration_samples: int = 0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    runtime: dict[str, Any] | None = None
    validation: Any = None

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

    @property
    def signatures(self) -> dict[str, dict[str, list[str]]]:
        """Signature key -> ``{"inputs": [names], "outputs": [names]}``."""
        from tfedge.metadata import read_signatures

        return {key: {"inputs": list(sig["inputs"]), "outputs": list(sig["outputs"])}
                for key, sig in read_signatures(self.content).items()}

    @property
    def is_full_integer(self) -> bool:
        """True if no op computes in float (the I/O boundary aside)."""
        return not self.flatbuffer.float_ops()

    @property
    def description(self) -> str:
        """One line on what the artifact is, e.g. ``"int8 (full integer...), int8 I/O"``."""
        text = f"{self.mode} ({MODE_DESCRIPTIONS.get(self.mode, self.mode)})"
        io_types = sorted({t.dtype.lower() for t in self.inputs + self.outputs})
        text += f", {'/'.join(io_types)} I/O"
        kept = (self.details.get("float_fallback") or {}).get("kept_layers")
        if kept:
            text += f", {len(kept)} layer(s) kept in float: {', '.join(kept)}"
        fb = self.flatbuffer
        if any(fb.is_sparse(fb.stored_tensor(w.index)) for _, w in fb.weight_tensors()):
            text += ", sparse-encoded weights"
        return text

    def runtime_settings(self) -> dict[str, Any]:
        """The LiteRT settings this model needs (found once, then kept).

        Returns:
            ``{"op_resolver": "auto" | "no_delegates", "reason": ...}``, see
            :func:`runtime_settings`.
        """
        if self.runtime is None:
            self.runtime = runtime_settings(self.content)
        return self.runtime

    @property
    def op_resolver(self) -> str:
        """The op resolver LiteRT must use for this model (``"auto"`` or ``"no_delegates"``)."""
        return self.runtime_settings()["op_resolver"]

    def card(self, *, name: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """The model card of this artifact (see :func:`tfedge.card.model_card`)."""
        from tfedge import card as card_lib

        return card_lib.model_card(self, name=name or self.details.get("source", "model"),
                                   **kwargs)

    def save(self, path: str | os.PathLike, *, card: bool = True, name: str | None = None,
             **card_kwargs: Any) -> str:
        """Writes the flatbuffer to ``path`` and its model card beside it.

        Args:
            path: the ``.tflite`` file to write (parents are created).
            card: also write the model card (``model.tflite`` ->
                ``model_card.json``, ``x.tflite`` -> ``x_card.json``).
            name: model name in the card (default: the source model's name).
            **card_kwargs: passed to :func:`tfedge.card.model_card`
                (``description``, ``labels``, ``validation``, ...).

        Returns:
            The path of the ``.tflite`` file.
        """
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(self.content)
        if card:
            from tfedge import card as card_lib

            card_lib.write_card_beside(path, self.card(name=name, **card_kwargs))
        return path

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "description": self.description,
                "size_bytes": self.size_bytes, "sha256": self.sha256,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "signatures": self.signatures, "ops": self.ops,
                "num_calibration_samples": self.num_calibration_samples,
                "full_integer": self.is_full_integer,
                "runtime": self.runtime_settings(), "conversion": self.details}

    def __str__(self) -> str:
        rows = [[kind, t.name, "x".join(map(str, t.shape)), t.dtype,
                 f"{t.scale[0]:.6g}" if t.scale else "-",
                 t.zero_point[0] if t.zero_point else "-"]
                for kind, ts in (("input", self.inputs), ("output", self.outputs)) for t in ts]
        table = format_table(["", "tensor", "shape", "dtype", "scale", "zero point"], rows)
        ops = ", ".join(f"{k} x{v}" for k, v in self.ops.items())
        lines = [f"TFLite model: {self.description}; {self.size_bytes:,} bytes", table,
                 f"ops: {ops}"]
        sigs = self.signatures
        if sigs:
            lines.append("signatures: " + "; ".join(
                f"{k} ({', '.join(v['inputs'])} -> {', '.join(v['outputs'])})"
                for k, v in sigs.items()))
        sparse = self.details.get("sparse")
        if sparse:
            lines.append(f"sparse: {sparse['summary']}")
        if self.runtime and self.runtime.get("op_resolver") != "auto":
            lines.append(f"runtime: needs op_resolver={self.runtime['op_resolver']!r}: "
                         f"{self.runtime['reason']}")
        return "\n".join(lines)


# Flatbuffers this process converted, or that LiteRT already loaded in a child process.
_TRUSTED: set[str] = set()
_PROBE_SCRIPT = """
import sys
import numpy as np
from ai_edge_litert import interpreter as litert
ran = False
# The file is memory-mapped, as on device: a kernel reading past the model's end then faults
# here instead of reading garbage. Several interpreters in turn, because memory a damaged
# kernel overwrote often crashes the next one.
for resolver in (litert.OpResolverType.AUTO, litert.OpResolverType.AUTO,
                 litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                 litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES):
    try:
        it = litert.Interpreter(model_path=sys.argv[1], experimental_op_resolver_type=resolver)
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        it.invoke()
        ran = True
    except Exception:  # a clean error: the parent reports it itself
        pass
sys.exit(0 if ran else 3)
"""


def probe_in_child(content: bytes, timeout: float = 120.0) -> None:
    """Loads and runs a flatbuffer once in LiteRT in a child process.

    Structural checks (:func:`tfedge.flatbuffer.check_bytes`) catch damaged
    tables, sizes and sparse encodings, but a flipped bit in an op's version
    or options can still send LiteRT's C++ kernels out of bounds. The child
    dies then, not this process. Bytes this process converted, or probed
    before, are not probed again.

    Raises:
        InvalidModelFileError: LiteRT crashed (or hung) on the model.
    """
    import signal
    import subprocess

    digest = hashlib.sha256(content).hexdigest()
    if digest in _TRUSTED:
        return
    fd, path = tempfile.mkstemp(suffix=".tflite", prefix="tfedge_probe_")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        run = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT, path], capture_output=True,
                             timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise InvalidModelFileError(
            f"LiteRT did not finish loading and running this model in {timeout:.0f} s (in a "
            "child process): the file is corrupt or far too large. Re-export it.") from None
    finally:
        os.unlink(path)
    if run.returncode > 0 and run.returncode != 3:  # the probe itself failed, not LiteRT
        logging.warning("tfedge: could not check the model in a child process (exit status "
                        "%d: %s); loading it without that check.", run.returncode,
                        run.stderr.decode(errors="replace").strip()[-300:])
        return
    if run.returncode < 0:
        code = -run.returncode
        name = signal.Signals(code).name if code in signal.valid_signals() else f"signal {code}"
        raise InvalidModelFileError(
            f"LiteRT crashes on this model ({name} while loading and running it in a child "
            "process): the file is corrupt (its structure reads fine, but an op's version or "
            "options do not). Re-export the model.")
    _TRUSTED.add(digest)


def load_bytes(content: bytes, *, probe: bool = True) -> TFLiteArtifact:
    """Reads untrusted flatbuffer bytes into an artifact, safely.

    Args:
        content: the bytes of a ``.tflite`` file.
        probe: also load and run them once in LiteRT in a child process
            (:func:`probe_in_child`), so that a corrupt model cannot crash
            this process later.

    Raises:
        InvalidModelFileError: not a readable TFLite model, or one LiteRT
            crashes on.
    """
    artifact = TFLiteArtifact(bytes(content))
    artifact.mode = infer_mode(artifact.flatbuffer)
    if probe:
        probe_in_child(artifact.content)
    return artifact


def load(path: str | os.PathLike, *, probe: bool = True) -> TFLiteArtifact:
    """Reads a ``.tflite`` file into an artifact.

    The bytes are checked (identifier, tables, sizes, sparse encodings)
    before anything parses them further, and then loaded and run once in
    LiteRT in a child process, so a truncated, corrupt or foreign file
    raises a clear error instead of crashing the process. A file whose model
    card (beside it) records the same sha256 is tfedge's own output and is
    not probed; nor is one this process converted.

    Args:
        path: the ``.tflite`` file.
        probe: run the child-process check (:func:`probe_in_child`).

    Raises:
        FileNotFoundError: no such file.
        InvalidModelFileError: a directory, not a readable TFLite model, or
            a model LiteRT crashes on.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InvalidModelFileError(
            f"{path!r} is a directory; pass the .tflite file inside it (tfedge convert "
            "turns a SavedModel directory into one).")
    with open(path, "rb") as f:
        content = f.read()
    try:
        artifact = TFLiteArtifact(content)
        artifact.mode = infer_mode(artifact.flatbuffer)
        if probe and not _card_vouches_for(path, artifact.sha256):
            probe_in_child(content)
    except InvalidModelFileError as err:
        raise InvalidModelFileError(f"{path}: {err}") from None
    return artifact


def infer_mode(fb: flatbuffer.FlatbufferModel) -> str:
    """The conversion mode a flatbuffer was made with, read from its tensors.

    Returns:
        One of :data:`MODES`, or ``"mixed"`` for an int8 model with float ops.
    """
    activations = {fb.tensors[t].dtype for op in fb.ops for t in op.outputs
                   if t >= 0 and op.name not in ("DEQUANTIZE", "DENSIFY")}
    weights = {fb.tensors[fb.stored_tensor(w.index)].dtype for _, w in fb.weight_tensors()}
    if "INT16" in activations:
        return "int16x8"
    if activations & {"INT8", "UINT8"}:
        return "mixed" if fb.float_ops() else "int8"
    if "FLOAT16" in weights:
        return "float16"
    if weights & {"INT8", "UINT8"}:
        return "dynamic_range"
    return "float32"


def _card_vouches_for(path: str, sha256: str) -> bool:
    from tfedge.card import card_path

    for candidate in (card_path(path), os.path.join(os.path.dirname(path), "model_card.json")):
        try:
            with open(candidate) as f:
                card = json.load(f)
        except (OSError, ValueError):
            continue
        if sha256 in (card.get("sha256"), (card.get("model") or {}).get("sha256")):
            _TRUSTED.add(sha256)
            return True
    return False


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


def _dataset_arrays(dataset: Any, limit: int | None = None
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
        x = _as_numpy(_take_x(item))
        xs.append(x if batched else x[None])
        if isinstance(item, tuple) and len(item) in (2, 3):
            y = _as_numpy(item[1])
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
    x, _ = _dataset_arrays(dataset, num_samples)
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
        items: Iterable[Any] = [_as_numpy(data)]
    else:
        items = data
    rank = len(input_shape)
    samples: list[np.ndarray] = []
    integer_typed = False
    for item in items:
        x = _as_numpy(_take_x(item))
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


def _data_range(samples: list[np.ndarray]) -> dict[str, float]:
    stacked = np.concatenate(samples)
    return {"min": float(stacked.min()), "max": float(stacked.max()),
            "mean": float(stacked.mean()), "std": float(stacked.std())}


def _check_eval_range(eval_x: np.ndarray, calibration: dict[str, float]) -> None:
    """Warns when evaluation inputs go well outside the calibrated input range."""
    span = calibration["max"] - calibration["min"] or 1.0
    outside = np.mean((eval_x < calibration["min"] - 0.05 * span)
                      | (eval_x > calibration["max"] + 0.05 * span))
    if outside > 0.01:
        logging.warning("tfedge: %.1f%% of the evaluation input values lie outside the "
                        "calibrated input range [%g, %g]; int8 inputs clip them. Calibrate "
                        "on data preprocessed like the evaluation data.", 100 * outside,
                        calibration["min"], calibration["max"])


# ----------------------------------------------------------------------------
# Model sources: Keras models, SavedModels, model files
# ----------------------------------------------------------------------------
@contextlib.contextmanager
def _fds_silenced(fds: tuple[int, ...] = (1, 2)) -> Iterator[None]:
    """Sends file descriptors 1 and 2 to /dev/null (the quantizer's C++ code prints there)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(fd) for fd in fds]
    except (OSError, ValueError, AttributeError):  # no real stdout/stderr (embedded Python)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in fds:
        os.dup2(devnull, fd)
    try:
        yield
    finally:
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """Hides the converter's Python and C++ chatter unless verbose logging.

    Its errors are not lost: the converter raises them as exceptions, which
    :func:`run_converter` turns into a ConversionError with their message.
    """
    if logging.get_verbosity() >= logging.DEBUG:
        yield
        return
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            _fds_silenced():
        warnings.filterwarnings("ignore", module="tensorflow")
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield  # (stdout: Keras 3's export prints every endpoint it saves)


def _clean_name(name: str, fallback: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name).split(":")[0]).strip("_")
    return name or fallback


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n] - 1}")
    return out


@dataclasses.dataclass
class _Signature:
    key: str
    function: Any                      # a tf ConcreteFunction returning a dict
    inputs: list[tuple[str, tuple, Any]]   # (name, shape with batch, tf dtype)
    outputs: list[str]


@dataclasses.dataclass
class ModelSource:
    """What ``convert`` converts: traced functions over a model's weights.

    Attributes:
        name: the model's name.
        kind: ``"keras"`` (tf_keras), ``"keras3"`` or ``"saved_model"``.
        signatures: signature key -> traced function, inputs and outputs.
        trackable: the object holding the variables (kept alive).
        keras_model: the Keras model, when there is one.
        path: the file or directory it was read from, if any.
        batch_size: the batch dimension the functions were traced with.
    """

    name: str
    kind: str
    signatures: dict[str, _Signature]
    trackable: Any
    keras_model: Any = None
    path: str | None = None
    batch_size: int | None = 1
    saved_model_dir: str | None = None

    @property
    def signature(self) -> _Signature:
        return next(iter(self.signatures.values()))

    @property
    def input_shape(self) -> tuple:
        return self.signature.inputs[0][1]

    def converter(self) -> Any:
        """A fresh ``tf.lite.TFLiteConverter`` for these signatures."""
        import tensorflow as tf

        keys = list(self.signatures)
        if self.saved_model_dir is not None:
            return tf.lite.TFLiteConverter.from_saved_model(self.saved_model_dir,
                                                            signature_keys=keys)
        if keys == ["serving_default"]:
            return tf.lite.TFLiteConverter.from_concrete_functions(
                [self.signature.function], self.trackable)
        # Other or several keys: only a SavedModel keeps them.
        self.saved_model_dir = tempfile.mkdtemp(prefix="tfedge_convert_")
        module = tf.Module()
        module.source = self.trackable
        tf.saved_model.save(module, self.saved_model_dir,
                            signatures={k: s.function for k, s in self.signatures.items()})
        return tf.lite.TFLiteConverter.from_saved_model(self.saved_model_dir,
                                                        signature_keys=keys)

    def reference(self, x: np.ndarray) -> np.ndarray:
        """Float outputs of the source model (first output) for inputs ``x``."""
        if self.keras_model is not None:
            out = self.keras_model.predict(x, batch_size=64, verbose=0)
            if isinstance(out, dict):
                out = out[self.signature.outputs[0]] if self.signature.outputs[0] in out \
                    else next(iter(out.values()))
            elif isinstance(out, (list, tuple)):
                out = out[0]
            return np.asarray(out)
        import tensorflow as tf

        sig = self.signature
        step = self.batch_size or 64
        outs = []
        for i in range(0, len(x), step):
            chunk = x[i:i + step]
            padded = chunk if self.batch_size is None or len(chunk) == step else \
                np.concatenate([chunk, np.zeros((step - len(chunk),) + chunk.shape[1:],
                                                chunk.dtype)])
            outs.append(_as_numpy(sig.function(tf.constant(padded))[sig.outputs[0]])[:len(chunk)])
        return np.concatenate(outs)


def _batch(shape: Any, batch_size: int | None) -> tuple:
    dims = list(shape.as_list() if hasattr(shape, "as_list") else shape)
    if dims and batch_size is not None and dims[0] in (None, -1):
        dims[0] = batch_size
    elif dims and batch_size is None:
        dims[0] = None
    return tuple(None if d == -1 else d for d in dims)


def _keras_signature(model: Any, batch_size: int | None) -> _Signature:
    import tensorflow as tf

    inputs = list(getattr(model, "inputs", None) or [])
    if not inputs:
        raise UnsupportedModelError(
            f"Model {getattr(model, 'name', model)!r} is not built: its input shape is "
            "unknown. Start it with keras.Input(shape=...) (or call model.build(input_shape) "
            "or call it once on data) before converting it.")
    names = _unique([_clean_name(getattr(t, "name", ""), f"input_{i}")
                     for i, t in enumerate(inputs)])
    specs = [tf.TensorSpec(_batch(t.shape, batch_size), getattr(t, "dtype", None) or tf.float32,
                           name=n) for t, n in zip(inputs, names)]
    outputs = list(getattr(model, "outputs", None) or [])
    out_names = list(getattr(model, "output_names", None) or [])
    if len(out_names) != len(outputs):
        out_names = [_clean_name(getattr(t, "name", ""), f"output_{i}")
                     for i, t in enumerate(outputs)]
    out_names = _unique([_clean_name(n, f"output_{i}") for i, n in enumerate(out_names)])

    def serve(*args):
        result = model(args[0] if len(args) == 1 else list(args), training=False)
        if isinstance(result, dict):
            return dict(result)
        values = result if isinstance(result, (list, tuple)) else [result]
        return dict(zip(out_names, values))

    function = tf.function(serve, input_signature=specs).get_concrete_function()
    return _Signature("serving_default", function,
                      [(n, tuple(s.shape.as_list()), s.dtype) for n, s in zip(names, specs)],
                      out_names)


def _keyword_caller(function: Any, names: list[str]) -> Any:
    """A positional-argument function that calls a signature by keyword."""
    def serve(*args):
        return function(**dict(zip(names, args)))
    return serve


def _saved_model_signatures(loaded: Any, path: str, batch_size: int | None,
                            signature: str | None) -> dict[str, _Signature]:
    import tensorflow as tf

    available = dict(getattr(loaded, "signatures", {}) or {})
    if not available:
        raise UnsupportedModelError(
            f"The SavedModel {path!r} has no signatures, so the converter cannot tell its "
            "inputs. Save it with signatures (tf.saved_model.save(obj, path, signatures="
            "{'serving_default': fn.get_concrete_function(spec)}), or model.export(path)).")
    if signature is not None:
        if signature not in available:
            raise ValueError(f"No signature {signature!r} in {path!r}; it has "
                             f"{', '.join(sorted(available))}.")
        available = {signature: available[signature]}
    signatures = {}
    for key, function in available.items():
        _, kwargs = function.structured_input_signature
        names = sorted(kwargs)
        specs = [tf.TensorSpec(_batch(kwargs[n].shape, batch_size), kwargs[n].dtype, name=n)
                 for n in names]
        outputs = sorted(function.structured_outputs)
        traced = tf.function(_keyword_caller(function, names),
                             input_signature=specs).get_concrete_function()
        signatures[key] = _Signature(key, traced,
                                     [(n, tuple(s.shape.as_list()), s.dtype)
                                      for n, s in zip(names, specs)], outputs)
    return signatures


def _load_keras_file(path: str, custom_objects: dict[str, Any] | None) -> tuple[Any, str]:
    from tfedge._keras import keras

    try:
        return keras.models.load_model(path, custom_objects=custom_objects, compile=False), \
            "keras"
    except Exception as tf_keras_error:  # noqa: BLE001 - retried with Keras 3 below
        if path.endswith(".keras"):
            try:
                import keras as keras3

                return keras3.saving.load_model(path, custom_objects=custom_objects,
                                                compile=False), "keras3"
            except Exception:  # noqa: BLE001 - report the first failure
                pass
        raise UnsupportedModelError(
            f"Cannot load the Keras model file {path!r}: {type(tf_keras_error).__name__}: "
            f"{str(tf_keras_error).strip()[:500]}\nCustom layers need custom_objects="
            "{'MyLayer': MyLayer} (CLI: import them in a module and pass --custom-objects "
            "module:dict).") from None


def _plain_model(model: Any) -> Any:
    from tfedge._keras import is_keras3_model
    from tfedge.wrap import EdgeModel  # local: convert must not need wrap's imports

    if isinstance(model, EdgeModel):
        logging.info("tfedge: convert got a wrapped model; calling finish() first.")
        return model.finish()
    if is_keras3_model(model):
        try:
            from tfedge.keras3 import as_functional
        except ImportError:  # pragma: no cover - the Keras 3 bridge is optional
            return model
        return as_functional(model)  # a subclassed model is traced into a functional one
    return model


def model_source(model: Any, *, batch_size: int | None = 1, signature: str | None = None,
                 custom_objects: dict[str, Any] | None = None) -> ModelSource:
    """Reads what ``convert`` accepts into traced functions with a chosen batch.

    Args:
        model: a tf_keras or Keras 3 model, an EdgeModel (finished first), a
            loaded SavedModel object, or the path of a SavedModel directory
            or of a ``.keras`` / ``.h5`` file.
        batch_size: the batch dimension to trace (1 for embedded targets),
            or None for a dynamic batch.
        signature: for a SavedModel with several signatures, the one to
            convert (default: all).
        custom_objects: custom layers for loading a Keras file.

    Returns:
        A :class:`ModelSource`.

    Raises:
        FileNotFoundError: no such file or directory.
        UnsupportedModelError: an unbuilt model, a file that does not load,
            a SavedModel without signatures, a ``.tflite`` file.
    """
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r}: use a positive whole number, or None "
                         "for a dynamic batch.")
    import tensorflow as tf

    path = None
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No model at {path!r}: give a SavedModel directory or "
                                    "a .keras / .h5 file.")
        if os.path.isdir(path):
            if not any(os.path.exists(os.path.join(path, f))
                       for f in ("saved_model.pb", "saved_model.pbtxt")):
                raise UnsupportedModelError(
                    f"{path!r} is a directory without saved_model.pb, so not a SavedModel. "
                    "Give a SavedModel directory (tf.saved_model.save / model.export) or a "
                    ".keras / .h5 file.")
            with quiet_converter():
                loaded = tf.saved_model.load(path)
            sigs = _saved_model_signatures(loaded, path, batch_size, signature)
            name = os.path.basename(os.path.normpath(path))
            return ModelSource(name, "saved_model", sigs, loaded, path=path,
                               batch_size=batch_size)
        if path.lower().endswith(".tflite"):
            raise UnsupportedModelError(f"{path!r} is already a TFLite model: read it with "
                                        "tfedge.load(path), or convert its source model.")
        if not path.lower().endswith(_KERAS_SUFFIXES):
            raise UnsupportedModelError(
                f"Do not know how to read {path!r}: give a SavedModel directory or a "
                ".keras / .h5 / .hdf5 Keras file.")
        model, _ = _load_keras_file(path, custom_objects)
    model = _plain_model(model)
    if hasattr(model, "signatures") and not hasattr(model, "layers"):
        sigs = _saved_model_signatures(model, "<loaded SavedModel>", batch_size, signature)
        return ModelSource("saved_model", "saved_model", sigs, model, batch_size=batch_size)
    from tfedge._keras import is_keras3_model

    if not callable(model):
        raise UnsupportedModelError(
            f"convert takes a Keras model, a SavedModel directory or a .keras/.h5 file; got "
            f"{type(model).__module__}.{type(model).__name__}.")
    sig = _keras_signature(model, batch_size)
    kind = "keras3" if is_keras3_model(model) else "keras"
    # The converter gets the variables only: it does not see Keras 3's, and
    # saving a whole tf_keras model traces every layer (minutes for MobileNetV2).
    from tfedge.keras3 import variable_holder
    trackable = variable_holder(model)
    return ModelSource(getattr(model, "name", "model"), kind, {sig.key: sig}, trackable,
                       keras_model=model, path=path, batch_size=batch_size)


# ----------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------
def _is_quantization_aware(model: Any) -> bool:
    if model is None:
        return False
    try:
        from tfedge.quantize import is_quantization_aware  # local: needs tfmot
    except ImportError:  # pragma: no cover - QAT support is optional
        return False
    return is_quantization_aware(model)


def _tf_type(name: str) -> Any:
    import tensorflow as tf

    return {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[name]


def make_converter(source: ModelSource, mode: str, samples: list[np.ndarray] | None = None, *,
                   input_type: str = "float32", output_type: str = "float32",
                   per_channel: bool = True, sparse: bool = False) -> Any:
    """A ``tf.lite.TFLiteConverter`` set up for ``mode`` (the settings tfedge uses).

    Args:
        source: the model, from :func:`model_source`.
        mode: one of :data:`MODES`.
        samples: representative samples (batch-1 arrays) for integer modes;
            empty or None for a quantization-aware model.
        input_type: model input type of the int8 mode.
        output_type: model output type of the int8 mode.
        per_channel: per-channel weight scales (the converter's default);
            False for one scale per tensor.
        sparse: add ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``.

    Returns:
        The converter, not yet run.
    """
    import tensorflow as tf

    converter = source.converter()
    optimizations = []
    if mode in _INTEGER_MODES:
        optimizations.append(tf.lite.Optimize.DEFAULT)
        if samples:
            batch = source.batch_size or 1

            def dataset():
                for start in range(0, len(samples) - batch + 1, batch):
                    yield [np.concatenate(samples[start:start + batch])]

            converter.representative_dataset = dataset
            if mode == "int8":
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                       tf.lite.OpsSet.TFLITE_BUILTINS]
        # (without data, i.e. QAT, the converter refuses the INT8-only ops set)
        if mode == "int16x8":
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.inference_input_type = _tf_type(input_type)
        converter.inference_output_type = _tf_type(output_type)
    elif mode == "float16":
        optimizations.append(tf.lite.Optimize.DEFAULT)
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic_range":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if not per_channel:
        # The converter exposes this switch only as an experimental attribute.
        converter._experimental_disable_per_channel = True  # pylint: disable=protected-access
    return converter


def run_converter(converter: Any, source: ModelSource, mode: str) -> bytes:
    """Runs a converter, turning its failures into a ConversionError."""
    try:
        with quiet_converter():
            return converter.convert()
    except Exception as err:  # the converter raises many kinds; keep its message
        raise ConversionError(
            f"The TFLite converter failed on {source.name!r} in mode {mode!r}: "
            f"{str(err).strip()[:2000]}\nIf this names an op, that op has no TFLite "
            "builtin kernel: replace the layer, or try mode='float32' to see whether "
            "the model converts at all.") from err


def run_outputs(content: bytes, x: np.ndarray, op_resolver: str | None = None,
                output_name: str | None = None) -> np.ndarray:
    """Float outputs of a flatbuffer in LiteRT: one named output, or all, flattened side by side."""
    from tfedge.validate import TFLiteRunner

    runner = TFLiteRunner(content, op_resolver=op_resolver)
    if output_name is not None and output_name in runner.output_names:
        return runner.predict(x, output_names=[output_name])
    out = runner.predict(x)
    if isinstance(out, list):
        return np.concatenate([np.reshape(o, (len(o), -1)) for o in out], axis=1)
    return out


def _sparse_report(dense: TFLiteArtifact, sparse: TFLiteArtifact) -> dict[str, Any]:
    """Dense vs sparse size, per tensor: zeros, encoding, bytes, and the traps."""
    rows = sparse.flatbuffer.weight_sparsity()
    for row in rows:
        row["dense_bytes"] = row["size"] * _ITEM_BYTES.get(row["dtype"], 4)
    left_dense = [r for r in rows if r["encoding"] == "dense"
                  and r["sparsity"] >= SPARSE_REPORT_THRESHOLD]
    encoded = [r for r in rows if r["encoding"] == "sparse"]
    grown = [r for r in encoded if r["stored_bytes"] > r["dense_bytes"]]
    ratio = sparse.size_bytes / dense.size_bytes
    summary = (f"{dense.size_bytes:,} -> {sparse.size_bytes:,} bytes ({ratio:.2f}x the dense "
               f"file); {len(encoded)} of {len(rows)} weight tensors sparse-encoded")
    blocks = [r["block"] for r in encoded if r["block"]]
    if blocks:
        summary += f", blocks {'x'.join(map(str, blocks[0]))}"
    if grown:
        summary += f"; {len(grown)} encoded larger than dense"
    if left_dense:
        summary += f"; {len(left_dense)} with >= {SPARSE_REPORT_THRESHOLD:.0%} zeros left dense"
    return {"dense_bytes": dense.size_bytes, "sparse_bytes": sparse.size_bytes,
            "ratio": ratio, "encoded": bool(encoded), "tensors": rows,
            "left_dense": [{"tensor": r["tensor"], "sparsity": r["sparsity"]}
                           for r in left_dense],
            "encoded_larger": [{"tensor": r["tensor"], "sparsity": r["sparsity"],
                                "dense_bytes": r["dense_bytes"], "sparse_bytes": r["stored_bytes"]}
                               for r in grown],
            "summary": summary}


def _check_inputs(samples: list[np.ndarray] | None, source: ModelSource,
                  count: int = 16) -> np.ndarray:
    """Inputs to compare two conversions on: real samples, or seeded noise."""
    if samples:
        return np.concatenate(samples[:count])
    shape = tuple(d or 1 for d in source.input_shape[1:])
    return np.random.default_rng(0).standard_normal((count,) + shape).astype(np.float32)


def _hint_sparse(artifact: TFLiteArtifact) -> None:
    rows = [r for r in artifact.flatbuffer.weight_sparsity() if r["size"] >= 4096]
    if rows and sum(r["sparsity"] * r["size"] for r in rows) / sum(r["size"] for r in rows) >= 0.5:
        logging.info("tfedge: the weights are mostly zeros (pruned?); convert(..., sparse=True) "
                     "encodes them sparsely and shrinks the .tflite file.")


def _convert_sparse(source: ModelSource, mode: str, samples: list[np.ndarray] | None,
                    dense: TFLiteArtifact, check_x: list[np.ndarray] | None,
                    **settings: Any) -> TFLiteArtifact:
    """The sparse-encoded twin of ``dense``, or ``dense`` if it is not equivalent."""
    content = run_converter(make_converter(source, mode, samples, sparse=True, **settings),
                            source, mode)
    sparse = TFLiteArtifact(content, mode=mode, num_calibration_samples=dense.num_calibration_samples,
                            details=dict(dense.details))
    report = _sparse_report(dense, sparse)
    for row in report["left_dense"]:
        logging.warning("tfedge: %s has %.0f%% zeros but the converter left it dense (its "
                        "sparse encoder skips tensors it does not find sparse enough); it "
                        "takes its full size in the file.", row["tensor"], 100 * row["sparsity"])
    for row in report["encoded_larger"]:
        logging.warning("tfedge: the sparse encoding of %s (%.0f%% zeros) takes %s bytes, more "
                        "than the %s bytes of its dense form: at this sparsity the indices "
                        "cost more than the zeros save.", row["tensor"],
                        100 * row["sparsity"], f"{row['sparse_bytes']:,}",
                        f"{row['dense_bytes']:,}")
    if not report["encoded"] or sparse.size_bytes >= dense.size_bytes:
        reason = ("no weight tensor was sparse enough to encode" if not report["encoded"] else
                  f"the sparse file is larger ({report['ratio']:.2f}x the dense one)")
        logging.warning("tfedge: sparse=True, but %s: keeping the dense model (%s bytes).",
                        reason, f"{dense.size_bytes:,}")
        dense.details["sparse"] = {**report, "used": False, "reason": reason}
        return dense
    x = _check_inputs(check_x, source)
    dense_out = run_outputs(dense.content, x, "no_delegates")
    sparse_out = run_outputs(sparse.content, x, "no_delegates")
    exact = mode in _INTEGER_MODES
    same = (np.array_equal(dense_out, sparse_out) if exact else
            np.allclose(dense_out, sparse_out, rtol=1e-4, atol=1e-5))
    if not same:
        diff = np.nanmax(np.abs(dense_out - sparse_out)) if np.isfinite(sparse_out).all() \
            else float("nan")
        reason = (f"the sparse model's outputs differ from the dense model's (max abs "
                  f"difference {diff:.3g}{', NaN outputs' if math.isnan(diff) else ''})")
        logging.warning("tfedge: sparse encoding rejected: %s; LiteRT runs this sparse "
                        "encoding wrongly. Keeping the dense model.", reason)
        dense.details["sparse"] = {**report, "used": False, "reason": reason}
        return dense
    sparse.details["sparse"] = {**report, "used": True, "outputs_identical": bool(
        np.array_equal(dense_out, sparse_out))}
    logging.info("tfedge: sparse encoding: %s", report["summary"])
    return sparse


def _validate_args(mode: str, input_type: str | None, output_type: str | None
                   ) -> tuple[str, str]:
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
    return input_type, output_type


def split_eval_data(eval_data: Any, input_shape: tuple) -> tuple[np.ndarray | None,
                                                          np.ndarray | None]:
    """``(x, y)``, ``x`` or a dataset -> (x, y) arrays, checked against the input shape."""
    if eval_data is None:
        return None, None
    if hasattr(eval_data, "element_spec"):
        x, y = _dataset_arrays(eval_data)
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


def convert(model: Any, representative_data: Any = None, *, mode: str = "int8",
            input_type: str | None = None, output_type: str | None = None,
            num_samples: int = 300, allow_float_ops: bool = False,
            batch_size: int | None = 1, signature: str | None = None,
            per_channel: bool = True, sparse: bool = False,
            tolerance: float | None = None, eval_data: Any = None,
            custom_objects: dict[str, Any] | None = None) -> TFLiteArtifact:
    """Converts a model to a TFLite flatbuffer.

    Wraps ``tf.lite.TFLiteConverter`` (and, for ``tolerance``, TFLite's
    ``QuantizationDebugger`` and selective quantization); see the module
    docstring for what tfedge adds.

    Args:
        model: a tf_keras or Keras 3 model, the EdgeModel ``wrap`` returned
            (it is finished first), a SavedModel directory, or a ``.keras`` /
            ``.h5`` file.
        representative_data: calibration inputs for the integer modes: an
            array, a ``tf.data.Dataset`` (labels are dropped), a generator, or
            a callable returning one. Use data preprocessed as for training.
            Optional for a quantization-aware (QAT) model in ``int8`` mode:
            its fake-quant layers carry the ranges.
        mode: ``"int8"`` (full integer, default), ``"int16x8"`` (int16
            activations, int8 weights), ``"float16"`` (float16 weights),
            ``"dynamic_range"`` (int8 weights, float activations) or
            ``"float32"`` (no quantization).
        input_type: ``"int8"``, ``"uint8"`` or ``"float32"`` (float I/O
            around an int8 body); default int8 for ``int8`` mode, float32
            otherwise.
        output_type: as ``input_type``.
        num_samples: at most this many representative samples are used.
        allow_float_ops: for the integer modes, accept float ops left in the
            model with a warning instead of raising.
        batch_size: the model's batch dimension in the flatbuffer: 1 (default,
            what microcontrollers and most apps run), another fixed size, or
            None for a dynamic batch.
        signature: for a SavedModel with several signatures, the one to
            convert (integer modes convert one signature).
        per_channel: one weight scale per output channel (default); False
            for one scale per tensor (some DSPs/NPUs need that).
        sparse: encode pruned weights in TFLite's sparse format. The file
            shrinks (90% sparsity: about 0.4x); the artifact records the
            runtime settings it needs, since sparse integer models do not
            prepare under LiteRT's default XNNPACK delegate.
        tolerance: accuracy-aware conversion (``int8`` mode): the largest
            accepted loss against the float model on ``eval_data`` (accuracy
            points with labels, e.g. 0.01; top-1 disagreement without).
            The fewest layers needed are kept in float; see
            ``artifact.details["float_fallback"]``.
        eval_data: ``(x, y)``, ``x``, or a ``tf.data.Dataset`` of them, for
            ``tolerance``; when given, the artifact is also validated on it
            and the result goes into its model card.
        custom_objects: custom layers, for loading a ``.keras`` / ``.h5`` file.

    Returns:
        A :class:`TFLiteArtifact` that states its mode, signatures and the
        runtime settings it needs.

    Raises:
        ValueError: unknown mode or I/O type, missing or ill-formed
            representative data, tolerance without eval data.
        UnsupportedModelError: a model or file that cannot be read.
        ConversionError: the converter failed (its message is kept), or an
            integer mode produced float ops.

    Example:

    >>> art = tfedge.convert(model, representative_data=x_train[:300])  # doctest: +SKIP
    >>> art.save("tflite_models/digits/model.tflite")  # doctest: +SKIP
    >>> art = tfedge.convert(model, x_train[:300], tolerance=0.01,
    ...                      eval_data=(x_val, y_val))  # doctest: +SKIP
    """
    started = time.perf_counter()
    input_type, output_type = _validate_args(mode, input_type, output_type)
    if tolerance is not None:
        if mode != "int8":
            raise ValueError(f"tolerance= works with mode='int8' (layers fall back from int8 "
                             f"to float); mode={mode!r} has no per-layer fallback.")
        if eval_data is None:
            raise ValueError("tolerance= needs eval_data=(x, y) (or x): the data on which the "
                             "int8 model must stay within the tolerance of the float model.")
        if not 0 <= tolerance < 1:
            raise ValueError(f"tolerance={tolerance}: give a fraction such as 0.01 (one "
                             "accuracy point).")
        if sparse:
            raise ValueError("sparse=True together with tolerance= is not supported: convert "
                             "with tolerance first, then check whether the pruned layers are "
                             "among the float ones.")
    source = model_source(model, batch_size=batch_size, signature=signature,
                          custom_objects=custom_objects)
    eval_x, eval_y = split_eval_data(eval_data, source.input_shape)
    if mode in _INTEGER_MODES and len(source.signatures) > 1:
        raise ValueError(f"{source.name!r} has signatures {', '.join(source.signatures)}; an "
                         f"integer mode calibrates one: pass signature='...'.")
    if mode in _INTEGER_MODES and len(source.signature.inputs) != 1:
        raise ValueError("Integer conversion of multi-input models is not supported yet: "
                         f"{source.name!r} has {len(source.signature.inputs)} inputs.")

    samples: list[np.ndarray] = []
    details: dict[str, Any] = {
        "source": source.name, "source_kind": source.kind, "source_path": source.path,
        "mode": mode, "mode_description": MODE_DESCRIPTIONS[mode],
        "input_type": input_type if mode == "int8" else "float32",
        "output_type": output_type if mode == "int8" else "float32",
        "per_channel": per_channel, "batch_size": source.batch_size,
        "signatures": {k: {"inputs": [i[0] for i in s.inputs], "outputs": s.outputs}
                       for k, s in source.signatures.items()}}
    if mode in _INTEGER_MODES:
        qat = representative_data is None and mode == "int8" and \
            _is_quantization_aware(source.keras_model)
        if qat:
            logging.info("tfedge: %r is quantization-aware: its ranges come from QAT.",
                         source.name)
            details["calibration"] = "quantization-aware training"
        else:
            samples = representative_samples(representative_data, source.input_shape,
                                             num_samples)
            details["calibration"] = {"samples": len(samples), "input_range": _data_range(samples)}
            if eval_x is not None:
                _check_eval_range(eval_x, details["calibration"]["input_range"])

    logging.info("tfedge: converting %r to TFLite (%s, batch %s, %d calibration samples)",
                 source.name, mode, source.batch_size or "dynamic", len(samples))
    settings = {"input_type": input_type if mode == "int8" else "float32",
                "output_type": output_type if mode == "int8" else "float32",
                "per_channel": per_channel}
    content = run_converter(make_converter(source, mode, samples, **settings), source, mode)
    artifact = TFLiteArtifact(content, mode=mode, num_calibration_samples=len(samples),
                              details=details)
    if sparse:
        check_x = samples or ([eval_x[i:i + 1] for i in range(min(16, len(eval_x)))]
                              if eval_x is not None else None)
        artifact = _convert_sparse(source, mode, samples, artifact, check_x, **settings)
    else:
        _hint_sparse(artifact)

    if tolerance is not None:
        from tfedge import quant_debug

        artifact = quant_debug.accuracy_aware(source, artifact, samples, eval_x, eval_y,
                                              tolerance=tolerance, **settings)
    elif mode in _INTEGER_MODES:
        try:
            check_full_integer(artifact)
        except ConversionError as err:
            if not allow_float_ops:
                raise
            logging.warning("tfedge: %s", err)

    _TRUSTED.add(artifact.sha256)
    artifact.runtime = runtime_settings(artifact.content)
    if artifact.runtime["op_resolver"] != "auto":
        logging.warning("tfedge: %s needs op_resolver=%r: %s", source.name,
                        artifact.runtime["op_resolver"], artifact.runtime["reason"])
    if eval_x is not None:
        from tfedge.validate import compare_outputs

        candidate = run_outputs(artifact.content, eval_x, artifact.op_resolver,
                                source.signature.outputs[0])
        artifact.validation = compare_outputs(source.reference(eval_x), candidate, eval_y,
                                              mode=mode)
        artifact.validation.op_resolver = artifact.op_resolver
    artifact.details["conversion_seconds"] = round(time.perf_counter() - started, 3)
    logging.info("tfedge: %s", str(artifact).splitlines()[0])
    return artifact
