"""``tfedge.quant_debug``: where int8 quantization loses accuracy, layer by layer.

Built on TFLite's ``tf.lite.experimental.QuantizationDebugger``: it
calibrates the model once and runs an instrumented copy whose NumericVerify
ops compare every quantized tensor with its float value (RMSE, max error,
RMSE relative to the tensor's quantization step). tfedge groups the ops by
the Keras layer they come from and adds what the debugger does not measure:
each layer's **effect on the final output**, i.e. the model's loss against
the float model when only that layer is int8 and the rest stays float. The
ranking follows that effect, since a layer whose tensor has a huge range can
look harmless per tensor (its RMSE is small next to its own step) while it
wipes out every small value downstream.

Selective quantization (some layers kept in float) calls the converter's own
quantizer, ``tensorflow.lite.python.convert.mlir_quantize``, on the
calibrated model with ``denylisted_nodes``: the same function
``TFLiteConverter`` and ``QuantizationDebugger`` use, so the int8 parts are
what the converter would produce.

Example:

>>> report = tfedge.debug_quantization(model, x_train[:300], (x_val, y_val))  # doctest: +SKIP
>>> print(report)  # doctest: +SKIP
>>> report.save("quant_debug.json")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import time
import warnings
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.lite.python import convert as tflite_convert

from tfedge.artifact import TFLiteArtifact
from tfedge.calibration import class_labels, representative_samples, split_eval_data
from tfedge.errors import ConversionError
from tfedge.flatbuffer import FlatbufferModel
from tfedge.report import format_table, to_json, write_json
from tfedge.source import make_converter, model_source, quiet_converter
from tfedge._validate import relative_rmse, run_all_outputs, run_outputs


# ----------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class LayerError:
    """How much one layer loses when it is quantized to int8.

    Attributes:
        layer: the Keras layer name (or, where the graph keeps no layer
            name, the op's output tensor name).
        ops: the TFLite ops the layer became, e.g. ``["EXP", "ADD", "LOG"]``.
        tensors: their output tensor names (the keys of selective
            quantization).
        scale: quantization step of the layer's output tensor.
        zero_point: zero point of the layer's output tensor.
        rmse_over_scale: the debugger's RMSE of the layer's outputs divided
            by their scale (about 0.29 is pure rounding; more means clipping
            or an op that loses more), the largest over the layer's ops.
        mean_squared_error: the debugger's mean squared error (largest op).
        max_abs_error: the debugger's largest absolute error (largest op).
        output_loss: the model's loss against the float model (see
            :attr:`QuantizationDebugReport.metric`) when only this layer is
            int8.
        output_rmse: RMSE of the model's output against the float model,
            relative to the float output's standard deviation, when only this
            layer is int8.
        rank: 1 for the layer that loses the most.
    """

    layer: str
    ops: list[str]
    tensors: list[str]
    scale: float | None = None
    zero_point: int | None = None
    rmse_over_scale: float | None = None
    mean_squared_error: float | None = None
    max_abs_error: float | None = None
    output_loss: float | None = None
    output_rmse: float | None = None
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class QuantizationDebugReport:
    """Layer-wise quantization error of a model, worst layer first.

    Attributes:
        model: the model's name.
        layers: one :class:`LayerError` per layer, ranked.
        metric: what ``output_loss`` measures: ``"accuracy drop"`` (with
            labels), ``"top-1 disagreement"`` (classifier, no labels) or
            ``"relative output RMSE"``.
        float_accuracy: the float model's accuracy (with labels).
        int8_loss: the loss of the whole model in full int8.
        num_debug_samples: samples the debugger ran.
        num_eval_samples: samples the output effects were measured on.
        seconds: time taken.
    """

    model: str
    layers: list[LayerError]
    metric: str
    float_accuracy: float | None
    int8_loss: float
    num_debug_samples: int
    num_eval_samples: int
    seconds: float = 0.0

    def top(self, n: int = 5) -> list[LayerError]:
        """The ``n`` layers that lose the most."""
        return self.layers[:n]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "metric": self.metric,
                "float_accuracy": self.float_accuracy, "int8_loss": self.int8_loss,
                "num_debug_samples": self.num_debug_samples,
                "num_eval_samples": self.num_eval_samples, "seconds": self.seconds,
                "layers": [layer.to_dict() for layer in self.layers]}

    def to_json(self) -> str:
        return to_json(self.to_dict())

    def save(self, path: str | os.PathLike) -> str:
        """Writes the report as JSON; returns the path."""
        return write_json(path, self.to_dict())

    def __str__(self) -> str:
        def num(v, fmt=".3g"):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        rows = [[layer.rank, layer.layer, "+".join(layer.ops), num(layer.scale),
                 num(layer.rmse_over_scale, ".3f"), num(layer.output_loss, ".4f"),
                 num(layer.output_rmse, ".3f")] for layer in self.layers]
        head = (f"Quantization error of {self.model!r} by layer, worst first "
                f"(loss = {self.metric} vs float; full int8: {self.int8_loss:.4f})")
        return format_table(["rank", "layer", "ops", "scale", "rmse/scale",
                             "loss if only this int8", "output rel. RMSE"], rows, title=head)


@dataclasses.dataclass
class FallbackReport:
    """What accuracy-aware conversion kept in float, and what it cost.

    Attributes:
        tolerance: the accepted loss.
        metric: what the loss measures (see :class:`QuantizationDebugReport`).
        reached: whether the final model is within the tolerance.
        int8_loss: loss of the full-int8 model.
        final_loss: loss of the returned model.
        kept_layers: layers kept in float, in the order they were added.
        kept_ops: the TFLite ops of those layers.
        int8_bytes: size of the full-int8 model (same quantizer path).
        final_bytes: size of the returned model.
        attempts: every candidate tried: ``{"float_layers", "loss", "bytes"}``.
        message: the one-paragraph summary that was logged.
    """

    tolerance: float
    metric: str
    reached: bool
    int8_loss: float
    final_loss: float
    kept_layers: list[str]
    kept_ops: list[str]
    int8_bytes: int
    final_bytes: int
    attempts: list[dict[str, Any]]
    message: str = ""

    @property
    def size_cost_bytes(self) -> int:
        return self.final_bytes - self.int8_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "size_cost_bytes": self.size_cost_bytes}

    def __str__(self) -> str:
        return self.message


# ----------------------------------------------------------------------------
# Naming ops after Keras layers
# ----------------------------------------------------------------------------
def _keras_layer_names(model: Any) -> set[str]:
    names: set[str] = set()
    stack = list(getattr(model, "layers", []) or [])
    while stack:
        layer = stack.pop()
        names.add(layer.name)
        stack.extend(getattr(layer, "layers", []) or [])
    return names


def _layer_of(fb: Any, op: Any, known: set[str]) -> str:
    """The Keras layer an op of the converted graph comes from (best effort).

    Tensor names carry the TF name scopes, e.g. ``"model/conv/Relu;model/
    conv/BiasAdd"``; the first scope component that is a known layer name
    wins (the deepest one, for nested models). Ops whose output has no such
    name (a model output is named ``StatefulPartitionedCall:0``) are named
    after their weight tensors.
    """
    names = [fb.tensors[t].name for t in op.outputs if t >= 0]
    names += [fb.tensors[t].name for t in op.inputs if t >= 0 and fb.constant(t) is not None]
    for name in names:
        for part in name.split(";"):
            scopes = part.split("/")
            if known:
                matches = [s for s in scopes if s in known]
                if matches:
                    return matches[-1]
            elif len(scopes) >= 3:
                return scopes[1]
    return f"{op.name.lower()}_{op.index}"


def layer_groups(fb: Any, keras_model: Any = None) -> dict[str, list[Any]]:
    """The ops of a flatbuffer grouped by the Keras layer they come from, in order.

    Args:
        fb: a :class:`~tfedge.flatbuffer.FlatbufferModel`.
        keras_model: the source Keras model (its layer names), or None.

    Returns:
        Layer name -> its :class:`~tfedge.flatbuffer.OpInfo` list (ops
        without outputs are left out).
    """
    known = _keras_layer_names(keras_model) if keras_model is not None else set()
    groups: dict[str, list[Any]] = {}
    for op in fb.ops:
        if any(t >= 0 for t in op.outputs):
            groups.setdefault(_layer_of(fb, op, known), []).append(op)
    return groups


# ----------------------------------------------------------------------------
# A debugging session: calibrate once, quantize selectively many times
# ----------------------------------------------------------------------------
def _loss_metric(reference: np.ndarray, y: np.ndarray | None) -> str:
    if reference.ndim == 2 and reference.shape[1] > 1:
        return "accuracy drop" if y is not None else "top-1 disagreement"
    return "relative output RMSE"


class OutputLoss:
    """A quantized model's loss against the float model on fixed data.

    The loss is the accuracy drop against the float model (labels given,
    classifier), the top-1 disagreement with it (no labels), or the output
    RMSE relative to the float output's standard deviation (other outputs).

    Args:
        reference: the float model's outputs on ``x`` (first output).
        x: the inputs.
        y: their labels, or None.
        output_name: the signature output to compare.
    """

    def __init__(self, reference: np.ndarray | dict[str, np.ndarray], x: np.ndarray,
                 y: np.ndarray | None = None, output_name: str | None = None):
        self.x, self.y, self.output_name = x, y, output_name
        self.references: dict[str, np.ndarray] | None = None
        self.float_accuracy = None
        if isinstance(reference, dict) and len(reference) > 1:
            # several outputs (a detector's boxes and scores): no class to agree on
            self.references = {k: np.asarray(v, np.float64) for k, v in reference.items()}
            self.metric = f"relative output RMSE (mean of {len(reference)} outputs)"
            return
        if isinstance(reference, dict):
            self.output_name, reference = next(iter(reference.items()))
        self.reference = np.asarray(reference, np.float64).reshape(len(x), -1)
        self.metric = _loss_metric(self.reference, y)
        if y is not None and self.metric == "accuracy drop":
            self.float_accuracy = float(np.mean(self.reference.argmax(1) == class_labels(y)))

    def __call__(self, content: bytes, op_resolver: str | None = None) -> tuple[float, float]:
        """(loss, relative output RMSE) of a flatbuffer against the float model."""
        if self.references is not None:
            rmse = relative_rmse(self.references, run_all_outputs(
                content, self.x, list(self.references), op_resolver))
            return rmse, rmse
        out = run_outputs(content, self.x, op_resolver, output_name=self.output_name)
        out = np.asarray(out, np.float64).reshape(len(out), -1)
        ref = self.reference
        rmse = float(np.sqrt(np.mean((out - ref) ** 2)) / (np.std(ref) or 1.0))
        if not np.isfinite(out).all():
            rmse = float("inf")
        if self.metric == "accuracy drop":
            return self.float_accuracy - float(np.mean(out.argmax(1) == class_labels(self.y))), rmse
        if self.metric == "top-1 disagreement":
            return 1.0 - float(np.mean(out.argmax(1) == ref.argmax(1))), rmse
        return rmse, rmse

    def accuracy(self, content: bytes, op_resolver: str | None = None) -> float | None:
        """Top-1 accuracy of a flatbuffer on the labelled data (None without labels)."""
        if self.float_accuracy is None:
            return None
        return self.float_accuracy - self(content, op_resolver)[0]


class DebugSession:
    """The calibrated model of one source, quantized with chosen layers in float.

    Args:
        source: a :class:`~tfedge.ModelSource` (batch 1).
        samples: representative samples (batch-1 float arrays).
        eval_x: inputs on which losses are measured.
        eval_y: their labels, or None.
        per_channel: per-channel weight scales.
        num_debug_samples: samples the QuantizationDebugger runs.
    """

    def __init__(self, source: Any, samples: list[np.ndarray], eval_x: np.ndarray,
                 eval_y: np.ndarray | None = None, *, per_channel: bool = True,
                 num_debug_samples: int = 64):
        self.source = source
        self.per_channel = per_channel
        self.eval_x, self.eval_y = eval_x, eval_y
        debug_samples = samples[:num_debug_samples]
        self.num_debug_samples = len(debug_samples)
        converter = make_converter(source, "int8", samples, per_channel=per_channel)
        with quiet_converter(), np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN statistics of empty tensors
            try:
                debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=converter, debug_dataset=lambda: ([s] for s in debug_samples))
                debugger.run()
            except Exception as err:  # noqa: BLE001 - the debugger raises many kinds
                raise ConversionError(
                    f"TFLite's QuantizationDebugger failed on {source.name!r}: "
                    f"{type(err).__name__}: {str(err).strip()[:1000]}") from err
            dump = io.StringIO()
            debugger.layer_statistics_dump(dump)
        self.calibrated = debugger.calibrated_model
        stats = {row["tensor_name"]: row for row in csv.DictReader(io.StringIO(dump.getvalue()))}

        fb = FlatbufferModel(self.calibrated)
        self.groups: dict[str, LayerError] = {}
        ops_by_layer = layer_groups(fb, source.keras_model)
        for name, op in ((n, op) for n, ops in ops_by_layer.items() for op in ops):
            outputs = [fb.tensors[t].name for t in op.outputs if t >= 0]
            group = self.groups.setdefault(name, LayerError(layer=name, ops=[], tensors=[]))
            group.ops.append(op.name)
            group.tensors.extend(outputs)
            row = stats.get(outputs[0])
            if row is None:
                continue
            scale, mse = _float(row.get("scale")), _float(row.get("mean_squared_error"))
            group.scale, group.zero_point = scale, int(float(row.get("zero_point") or 0))
            if scale and mse is not None and math.isfinite(mse):
                ratio = math.sqrt(mse) / scale
                group.rmse_over_scale = max(group.rmse_over_scale or 0.0, ratio)
            group.mean_squared_error = _max(group.mean_squared_error, mse)
            group.max_abs_error = _max(group.max_abs_error, _float(row.get("max_abs_error")))

        self._loss = OutputLoss(source.reference(eval_x), eval_x, eval_y,
                                source.signature.outputs[0])
        self.reference, self.metric = self._loss.reference, self._loss.metric
        self.float_accuracy = self._loss.float_accuracy

    def quantized(self, float_layers: list[str] = (), input_type: str = "float32",
                 output_type: str = "float32") -> bytes:
        """The int8 model with ``float_layers`` kept in float.

        Calls the converter's quantizer (``mlir_quantize``) on the calibrated
        model, with the layers' output tensors denylisted.
        """
        deny = [t for name in float_layers for t in self.groups[name].tensors]
        types = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
        with quiet_converter():
            return tflite_convert.mlir_quantize(
                self.calibrated, disable_per_channel=not self.per_channel,
                input_data_type=types[input_type], output_data_type=types[output_type],
                denylisted_nodes=deny or None)

    def loss(self, content: bytes) -> tuple[float, float]:
        """(loss, relative output RMSE) of a flatbuffer against the float model."""
        return self._loss(content)

    def layer_errors(self, output_effects: bool = True) -> list[LayerError]:
        """Every layer with its output effect measured (unless not asked), worst first."""
        names = list(self.groups) if output_effects else []
        for name in names:
            others = [n for n in names if n != name]
            loss, rmse = self.loss(self.quantized(others))
            self.groups[name].output_loss, self.groups[name].output_rmse = loss, rmse
        ranked = sorted(self.groups.values(),
                        key=lambda g: (-_finite(g.output_loss), -_finite(g.output_rmse),
                                       -_finite(g.rmse_over_scale)))
        for rank, group in enumerate(ranked, 1):
            group.rank = rank
        return ranked


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _max(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None and not math.isnan(v)]
    return max(values) if values else None


def _finite(value: float | None) -> float:
    if value is None or math.isnan(value):
        return -math.inf
    return value


# ----------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------
def debug_quantization(model: Any, representative_data: Any, eval_data: Any = None, *,
                       num_samples: int = 300, num_debug_samples: int = 64,
                       per_channel: bool = True, signature: str | None = None,
                       custom_objects: dict[str, Any] | None = None,
                       output_effects: bool = True) -> QuantizationDebugReport:
    """Layer-wise int8 quantization error of a model, worst layer first.

    Args:
        model: what :func:`tfedge.convert` accepts (Keras model, SavedModel
            directory, ``.keras`` / ``.h5`` file).
        representative_data: calibration inputs, as for ``convert``.
        eval_data: ``(x, y)`` or ``x`` on which each layer's effect on the
            output is measured (default: the representative samples).
        num_samples: at most this many calibration samples.
        num_debug_samples: samples the QuantizationDebugger runs.
        per_channel: per-channel weight scales.
        signature: the signature to debug, for a SavedModel with several.
        custom_objects: custom layers, for loading a Keras file.
        output_effects: measure each layer's effect on the model's output
            (one partly-int8 model per layer: most of the time on large
            models). False keeps the debugger's per-layer statistics only
            (``rmse_over_scale`` and the errors; ``output_loss`` is None),
            ranked by ``rmse_over_scale``.

    Returns:
        A :class:`QuantizationDebugReport` (prints as a table; ``save``
        writes JSON).

    Raises:
        ValueError: bad representative or evaluation data.
        ConversionError: the converter or the debugger failed.
    """
    started = time.perf_counter()
    source = model_source(model, batch_size=1, signature=signature,
                          custom_objects=custom_objects)
    samples = representative_samples(representative_data, source.input_shape, num_samples)
    eval_x, eval_y = split_eval_data(eval_data, source.input_shape)
    if eval_x is None:
        eval_x = np.concatenate(samples)
    session = DebugSession(source, samples, eval_x, eval_y, per_channel=per_channel,
                           num_debug_samples=num_debug_samples)
    int8_loss, _ = session.loss(session.quantized([]))
    layers = session.layer_errors(output_effects)
    return QuantizationDebugReport(
        model=source.name, layers=layers, metric=session.metric,
        float_accuracy=session.float_accuracy, int8_loss=int8_loss,
        num_debug_samples=session.num_debug_samples, num_eval_samples=len(eval_x),
        seconds=round(time.perf_counter() - started, 3))


def accuracy_aware(source: Any, artifact: Any, samples: list[np.ndarray],
                   eval_x: np.ndarray, eval_y: np.ndarray | None, *, tolerance: float,
                   input_type: str = "int8", output_type: str = "int8",
                   per_channel: bool = True) -> Any:
    """Keeps the fewest layers in float that bring the int8 model within tolerance.

    Called by ``tfedge.convert(..., tolerance=..., eval_data=...)``. The
    full-int8 ``artifact`` is returned as is when it already meets the
    tolerance. Otherwise the layers are ranked by their effect on the output
    (:meth:`DebugSession.layer_errors`), added to the float set in that order
    until the tolerance is met, and then each is dropped again if the rest
    still meets it. When even the best set misses the tolerance, the best
    model found is returned and a warning says so.

    Returns:
        A :class:`~tfedge.TFLiteArtifact` whose
        ``details["float_fallback"]`` is a :meth:`FallbackReport.to_dict` and
        ``details["quant_debug"]`` the layer ranking.
    """
    started = time.perf_counter()
    session = DebugSession(source, samples, eval_x, eval_y, per_channel=per_channel)
    io_types = {"input_type": input_type, "output_type": output_type}
    int8_loss, _ = session.loss(artifact.content)
    attempts = [{"float_layers": [], "loss": int8_loss, "bytes": artifact.size_bytes}]
    details = dict(artifact.details)
    if int8_loss <= tolerance:
        message = (f"Full int8 is within the tolerance: {session.metric} {int8_loss:.4f} <= "
                   f"{tolerance}; no layer kept in float.")
        logging.info("tfedge: %s", message)
        details["float_fallback"] = FallbackReport(
            tolerance, session.metric, True, int8_loss, int8_loss, [], [], artifact.size_bytes,
            artifact.size_bytes, attempts, message).to_dict()
        artifact.details = details
        return artifact

    ranking = session.layer_errors()
    int8_bytes = len(session.quantized([], **io_types))
    cache: dict[tuple[str, ...], tuple[float, bytes]] = {}

    def trial(layers: list[str]) -> tuple[float, bytes]:
        key = tuple(sorted(layers))
        if key not in cache:
            content = session.quantized(layers, **io_types)
            cache[key] = (session.loss(content)[0], content)
            attempts.append({"float_layers": list(layers), "loss": cache[key][0],
                             "bytes": len(content)})
        return cache[key]

    kept: list[str] = []
    best: tuple[float, list[str], bytes] = (int8_loss, [], artifact.content)
    for layer in ranking:
        kept.append(layer.layer)
        loss, content = trial(kept)
        if loss < best[0]:
            best = (loss, list(kept), content)
        if loss <= tolerance:
            break
    reached = best[0] <= tolerance
    if reached:  # drop any layer the others do not need
        for name in list(reversed(best[1])):
            fewer = [n for n in best[1] if n != name]
            if not fewer:
                continue
            loss, content = trial(fewer)
            if loss <= tolerance:
                best = (loss, fewer, content)
    final_loss, kept, content = best
    kept_ops = [op for name in kept for op in session.groups[name].ops]
    if reached:
        message = (f"Kept {len(kept)} of {len(ranking)} layers in float to meet the tolerance "
                   f"({session.metric} {final_loss:.4f} <= {tolerance}; full int8: "
                   f"{int8_loss:.4f}): {', '.join(kept)}. Size {int8_bytes:,} -> "
                   f"{len(content):,} bytes ({len(content) - int8_bytes:+,}).")
        logging.info("tfedge: %s", message)
    else:
        all_float = trial([g.layer for g in ranking])[0]
        message = (f"The tolerance {tolerance} is not reachable: the best model found has "
                   f"{session.metric} {final_loss:.4f} (full int8: {int8_loss:.4f}) with "
                   f"{len(kept)} layer(s) in float ({', '.join(kept) or 'none'}); it is the one "
                   f"returned.")
        if all_float > tolerance:
            message += (f" Even with every layer in float the loss is {all_float:.4f}, so the "
                        f"int8 input/output quantization loses it: use input_type/output_type="
                        f"'float32', or mode='int16x8'.")
        else:
            message += " Try mode='int16x8', or quantization-aware training."
        logging.warning("tfedge: %s", message)
    report = FallbackReport(tolerance, session.metric, reached, int8_loss, final_loss, kept,
                            kept_ops, int8_bytes, len(content), attempts, message)
    details["float_fallback"] = report.to_dict()
    details["quant_debug"] = QuantizationDebugReport(
        model=source.name, layers=ranking, metric=session.metric,
        float_accuracy=session.float_accuracy, int8_loss=int8_loss,
        num_debug_samples=session.num_debug_samples, num_eval_samples=len(eval_x),
        seconds=round(time.perf_counter() - started, 3)).to_dict()
    return TFLiteArtifact(content, mode=artifact.mode,
                          num_calibration_samples=artifact.num_calibration_samples,
                          details=details)
