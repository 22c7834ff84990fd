"""``tfedge.validate``: the flatbuffer in the LiteRT interpreter vs the Keras model.

Runs the ``.tflite`` in LiteRT (``ai_edge_litert``), quantizing inputs and
dequantizing outputs with the model's own parameters, on the user's real
data, and compares it with the Keras model on the same data.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import numpy as np
from absl import logging

from tfedge.report import format_table, to_json


def _make_interpreter(content: bytes, num_threads: int | None = None,
                      op_resolver: str = "auto") -> Any:
    """A LiteRT interpreter on ``content`` (checked first, so it cannot crash)."""
    from ai_edge_litert import interpreter as litert

    from tfedge.flatbuffer import check_bytes

    check_bytes(content)
    resolver = {"auto": litert.OpResolverType.AUTO,
                "builtin": litert.OpResolverType.BUILTIN,
                "reference": litert.OpResolverType.BUILTIN_REF,
                "no_delegates": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    return litert.Interpreter(model_content=content, num_threads=num_threads,
                              experimental_op_resolver_type=resolver[op_resolver])


def quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float inputs -> the tensor's type, with its scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if dtype.kind == "f" or not scale:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(x / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """A tensor's values -> float32, with its scale and zero point."""
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or not scale:
        return q.astype(np.float32)
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


class TFLiteRunner:
    """Runs a flatbuffer on float inputs, batch by batch, returning float outputs.

    The input batch dimension is resized when the model allows it (dynamic
    batch); otherwise samples run one at a time.

    Args:
        content: the flatbuffer bytes.
        num_threads: interpreter threads (None: LiteRT's default).
        op_resolver: ``"auto"`` (XNNPACK), ``"builtin"``, ``"reference"``,
            or ``"no_delegates"``.
    """

    def __init__(self, content: bytes, num_threads: int | None = None,
                 op_resolver: str = "auto"):
        self.content = content
        self.num_threads = num_threads
        self.op_resolver = op_resolver
        self.interpreter = _make_interpreter(content, num_threads, op_resolver)
        self.interpreter.allocate_tensors()
        self._batch = int(self.interpreter.get_input_details()[0]["shape"][0])
        signature = self.interpreter.get_input_details()[0].get("shape_signature")
        self.dynamic_batch = signature is not None and len(signature) and signature[0] == -1

    def _set_batch(self, n: int) -> None:
        if n == self._batch:
            return
        detail = self.interpreter.get_input_details()[0]
        self.interpreter.resize_tensor_input(detail["index"], [n] + list(detail["shape"][1:]))
        self.interpreter.allocate_tensors()
        self._batch = n

    def _run(self, x: np.ndarray) -> np.ndarray:
        self._set_batch(len(x))
        detail = self.interpreter.get_input_details()[0]
        self.interpreter.set_tensor(detail["index"], quantize(x, detail))
        self.interpreter.invoke()
        out = self.interpreter.get_output_details()[0]
        return dequantize(self.interpreter.get_tensor(out["index"]), out)

    def batches(self, x: np.ndarray, batch_size: int = 64) -> Iterator[np.ndarray]:
        step = batch_size if self.dynamic_batch else 1
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            if not self.dynamic_batch:
                yield self._run(chunk)
                continue
            try:
                yield self._run(chunk)
            except (RuntimeError, ValueError):
                # Some models declare a dynamic batch they cannot run.
                self.dynamic_batch = False
                self._set_batch(1)
                for row in chunk:
                    yield self._run(row[None])

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Float outputs of the flatbuffer for float inputs ``x``."""
        x = np.asarray(x, dtype=np.float32)
        return np.concatenate(list(self.batches(x, batch_size)), axis=0)


@dataclasses.dataclass
class ValidationReport:
    """How the flatbuffer compares with the Keras model on the same data.

    Attributes:
        num_samples: samples compared.
        agreement: fraction of samples whose top-1 class is the same (None
            for outputs with a single value per sample).
        keras_accuracy: top-1 accuracy of the Keras model (None without labels).
        tflite_accuracy: top-1 accuracy of the flatbuffer (None without labels).
        max_abs_error: largest absolute output difference.
        mean_abs_error: mean absolute output difference.
        snr_db: signal-to-noise ratio of the TFLite outputs against the Keras
            outputs, in dB (inf when identical).
        mode: conversion mode of the artifact, when known.
    """

    num_samples: int
    agreement: float | None
    keras_accuracy: float | None
    tflite_accuracy: float | None
    max_abs_error: float
    mean_abs_error: float
    snr_db: float
    mode: str = "unknown"

    @property
    def accuracy_drop(self) -> float | None:
        """Keras accuracy minus TFLite accuracy, in points of accuracy (0-1)."""
        if self.keras_accuracy is None or self.tflite_accuracy is None:
            return None
        return self.keras_accuracy - self.tflite_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "accuracy_drop": self.accuracy_drop}

    def to_json(self) -> str:
        return to_json(self.to_dict())

    def __str__(self) -> str:
        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}%"
        rows = [["samples", self.num_samples], ["mode", self.mode],
                ["keras accuracy", pct(self.keras_accuracy)],
                ["tflite accuracy", pct(self.tflite_accuracy)],
                ["top-1 agreement", pct(self.agreement)],
                ["max abs error", f"{self.max_abs_error:.4g}"],
                ["mean abs error", f"{self.mean_abs_error:.4g}"],
                ["SNR", f"{self.snr_db:.1f} dB"]]
        return format_table(["validation", "value"], rows)


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y)).astype(int)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, y: Any = None,
                    mode: str = "unknown") -> ValidationReport:
    """Compares two models' float outputs on the same samples.

    Args:
        reference: outputs of the reference (Keras) model, samples first.
        candidate: outputs of the model under test (TFLite).
        y: optional labels (integers or one-hot) for accuracy.
        mode: conversion mode, recorded in the report.

    Returns:
        A :class:`ValidationReport`.
    """
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    candidate = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    if reference.shape != candidate.shape:
        raise ValueError(f"Output shapes differ: Keras {reference.shape} vs TFLite "
                         f"{candidate.shape}.")
    diff = reference - candidate
    noise = float(np.sum(diff ** 2))
    signal = float(np.sum(reference ** 2))
    snr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal else -math.inf)
    classify = reference.shape[1] > 1
    agreement = keras_acc = tflite_acc = None
    if classify:
        ref_top, cand_top = reference.argmax(1), candidate.argmax(1)
        agreement = float(np.mean(ref_top == cand_top))
        if y is not None:
            labels = _labels(y)
            keras_acc = float(np.mean(ref_top == labels))
            tflite_acc = float(np.mean(cand_top == labels))
    return ValidationReport(
        num_samples=len(reference), agreement=agreement, keras_accuracy=keras_acc,
        tflite_accuracy=tflite_acc, max_abs_error=float(np.max(np.abs(diff))) if diff.size else 0.0,
        mean_abs_error=float(np.mean(np.abs(diff))) if diff.size else 0.0, snr_db=snr, mode=mode)


def validate(artifact: Any, keras_model: Any, x: Any, y: Any = None, *,
             batch_size: int = 64, op_resolver: str = "auto") -> ValidationReport:
    """Runs the flatbuffer in LiteRT and compares it with the Keras model.

    Args:
        artifact: a :class:`~tfedge.convert.TFLiteArtifact`, flatbuffer bytes,
            or a path to a ``.tflite`` file.
        keras_model: the Keras model it was converted from (an EdgeModel is
            accepted as is).
        x: float inputs, preprocessed as for training (array of samples).
        y: optional labels, integers or one-hot, for accuracy.
        batch_size: samples per interpreter call when the batch is dynamic.
        op_resolver: LiteRT op resolver (``"auto"`` uses XNNPACK).

    Returns:
        A :class:`ValidationReport` (prints as a table, ``to_dict``/``to_json``).

    Raises:
        InvalidModelFileError: the artifact is not a readable TFLite model.
        ValueError: empty data, or outputs of different shapes.

    Example:

    >>> report = tfedge.validate(artifact, model, x_test, y_test)  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    """
    from tfedge.convert import TFLiteArtifact, load

    if isinstance(artifact, (bytes, bytearray)):
        artifact = TFLiteArtifact(bytes(artifact))
    elif not isinstance(artifact, TFLiteArtifact):
        artifact = load(artifact)
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("validate needs at least one sample in x.")
    if y is not None and len(y) != len(x):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)} labels.")
    reference = keras_model.predict(x, batch_size=batch_size, verbose=0)
    runner = TFLiteRunner(artifact.content, op_resolver=op_resolver)
    candidate = runner.predict(x, batch_size=batch_size)
    report = compare_outputs(reference, candidate, y, mode=artifact.mode)
    logging.info("tfedge: validation on %d samples: agreement %s, SNR %.1f dB",
                 report.num_samples, report.agreement, report.snr_db)
    return report
