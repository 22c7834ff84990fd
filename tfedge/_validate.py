"""``tfedge.validate``: the flatbuffer in the LiteRT interpreter vs the Keras model.

Runs the ``.tflite`` in LiteRT (``ai_edge_litert``), quantizing inputs and
dequantizing outputs with the model's own parameters, on the user's real
data, and compares it with the Keras model on the same data.

The output-running helpers every later stage uses live here too:
:class:`TFLiteRunner`, :func:`run_outputs` and :func:`compare_outputs`
(``convert`` uses them for its sparse check and ``eval_data``). No
TensorFlow import.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from absl import logging

from ai_edge_litert import interpreter as litert

from tfedge.artifact import as_artifact
from tfedge.calibration import class_labels, validation_data
from tfedge.flatbuffer import check_bytes
from tfedge.report import format_table, to_json


def make_interpreter(content: bytes, num_threads: int | None = None,
                      op_resolver: str = "auto") -> Any:
    """A LiteRT interpreter on ``content`` (checked first, so it cannot crash)."""
    check_bytes(content)
    resolver = {"auto": litert.OpResolverType.AUTO,
                "builtin": litert.OpResolverType.BUILTIN,
                "reference": litert.OpResolverType.BUILTIN_REF,
                "no_delegates": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    if op_resolver not in resolver:
        raise ValueError(f"op_resolver={op_resolver!r}; use one of {', '.join(resolver)}.")
    return litert.Interpreter(model_content=content, num_threads=num_threads,
                              experimental_op_resolver_type=resolver[op_resolver])


def _xnnpack_rejects(err: Exception) -> bool:
    return "delegate" in str(err).lower()


def _signature_interpreter(content: bytes, num_threads: int | None,
                           op_resolver: str | None) -> tuple[Any, str]:
    """(interpreter, resolver used); op_resolver None picks what the model needs.

    A model that LiteRT's default XNNPACK delegate rejects (sparse int8 and
    sparse dynamic-range models) then runs without default delegates, with a
    warning, as :func:`tfedge.artifact.runtime_settings` records it.
    """
    chosen = op_resolver or "auto"
    try:
        interpreter = make_interpreter(content, num_threads, chosen)
        interpreter.allocate_tensors()
        return interpreter, chosen
    except RuntimeError as err:
        if not _xnnpack_rejects(err):
            raise
        if op_resolver is not None:
            raise RuntimeError(
                f"LiteRT's XNNPACK delegate rejects this model ({str(err).strip()}). Run it "
                "with op_resolver='no_delegates' (OpResolverType."
                "BUILTIN_WITHOUT_DEFAULT_DELEGATES), as its artifact's runtime settings "
                "say.") from None
        logging.warning("tfedge: XNNPACK rejects this model (%s); running it with "
                        "op_resolver='no_delegates'. On device, disable default delegates "
                        "(Android: Interpreter.Options().setUseXNNPACK(false)).",
                        str(err).strip().splitlines()[0])
    interpreter = make_interpreter(content, num_threads, "no_delegates")
    interpreter.allocate_tensors()
    return interpreter, "no_delegates"


def quantize_array(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
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

    Inputs are quantized and outputs dequantized with the model's own
    parameters. Outputs are named as in the model's signature (the Keras
    output names), because TFLite may order output tensors differently from
    Keras. A dynamic batch dimension is used when the model has one;
    otherwise samples run one at a time.

    Args:
        content: the flatbuffer bytes.
        num_threads: interpreter threads (None: LiteRT's default).
        op_resolver: ``"auto"`` (XNNPACK), ``"builtin"``, ``"reference"``,
            ``"no_delegates"``, or None (default): ``"auto"``, unless XNNPACK
            rejects the model (sparse int8), then ``"no_delegates"`` with a
            warning. ``self.op_resolver`` says which one runs.

    Example:

    >>> runner = TFLiteRunner(artifact.content)  # doctest: +SKIP
    >>> logits = runner.predict(x_test)  # doctest: +SKIP
    """

    def __init__(self, content: bytes, num_threads: int | None = None,
                 op_resolver: str | None = None):
        self.content = content
        self.num_threads = num_threads
        self.interpreter, self.op_resolver = _signature_interpreter(content, num_threads,
                                                                    op_resolver)
        signatures = self.interpreter.get_signature_list()
        if not signatures:
            raise ValueError("The model has no signature; convert it with tfedge.convert (or "
                             "TFLiteConverter.from_keras_model), which keeps serving_default.")
        self.signature_key = ("serving_default" if "serving_default" in signatures
                              else next(iter(signatures)))
        self._runner = self.interpreter.get_signature_runner(self.signature_key)
        self.input_details = self._runner.get_input_details()
        self.output_details = self._runner.get_output_details()
        self.input_names = list(signatures[self.signature_key]["inputs"])
        self.output_names = list(signatures[self.signature_key]["outputs"])
        self.dynamic_batch = all(
            len(d.get("shape_signature", [])) and d["shape_signature"][0] == -1
            for d in self.input_details.values())

    def run(self, inputs: np.ndarray | list[np.ndarray]) -> dict[str, np.ndarray]:
        """One interpreter call on a batch: float inputs -> float outputs by name."""
        arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if len(arrays) != len(self.input_names):
            raise ValueError(f"The model has {len(self.input_names)} inputs "
                             f"({', '.join(self.input_names)}); got {len(arrays)}.")
        feed = {name: quantize_array(np.asarray(a, np.float32), self.input_details[name])
                for name, a in zip(self.input_names, arrays)}
        outputs = self._runner(**feed)
        return {name: dequantize(outputs[name], self.output_details[name])
                for name in self.output_names}

    def predict_all(self, x: np.ndarray | list[np.ndarray],
                    batch_size: int = 64) -> dict[str, np.ndarray]:
        """Float outputs by name for float inputs ``x`` (one array per input)."""
        arrays = [np.asarray(a, np.float32) for a in (x if isinstance(x, (list, tuple)) else [x])]
        n = len(arrays[0])
        step = batch_size if self.dynamic_batch else 1
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, n, step):
            out = self.run([a[start:start + step] for a in arrays])
            for name, value in out.items():
                chunks[name].append(value)
        return {name: np.concatenate(parts, axis=0) for name, parts in chunks.items()}

    def predict(self, x: np.ndarray | list[np.ndarray], batch_size: int = 64,
                output_names: list[str] | None = None) -> np.ndarray | list[np.ndarray]:
        """Like ``keras.Model.predict``: one array, or a list in ``output_names`` order.

        Args:
            x: float inputs, samples first (a list of arrays for several inputs).
            batch_size: samples per interpreter call when the batch is dynamic.
            output_names: the order of the outputs to return (e.g. a Keras
                model's ``output_names``); default: the signature's order.
        """
        outputs = self.predict_all(x, batch_size)
        names = list(output_names or self.output_names)
        missing = [n for n in names if n not in outputs]
        if missing:
            raise ValueError(f"No output named {', '.join(missing)}; the model's outputs are "
                             f"{', '.join(self.output_names)}.")
        values = [outputs[n] for n in names]
        return values[0] if len(values) == 1 else values


def run_outputs(content: bytes, x: np.ndarray, op_resolver: str | None = None,
                output_name: str | None = None) -> np.ndarray:
    """Float outputs of a flatbuffer in LiteRT: one named output, or all, flattened side by side."""
    runner = TFLiteRunner(content, op_resolver=op_resolver)
    if output_name is not None and output_name in runner.output_names:
        return runner.predict(x, output_names=[output_name])
    out = runner.predict(x)
    if isinstance(out, list):
        return np.concatenate([np.reshape(o, (len(o), -1)) for o in out], axis=1)
    return out


def run_all_outputs(content: bytes, x: np.ndarray, names: list[str],
                    op_resolver: str | None = None) -> dict[str, np.ndarray]:
    """Float outputs of a flatbuffer in LiteRT, each of ``names`` (signature output names)."""
    runner = TFLiteRunner(content, op_resolver=op_resolver)
    out = runner.predict(x, output_names=list(names))
    return dict(zip(names, out if isinstance(out, list) else [out]))


def relative_rmse(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
    """Output RMSE relative to the reference's standard deviation, averaged over outputs.

    Each output is scaled by its own spread, so a model whose outputs differ
    in scale (a detector's box offsets and class logits) weighs them alike.
    Non-finite outputs give ``inf``.
    """
    values = []
    for name, ref in reference.items():
        ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
        out = np.asarray(candidate[name], np.float64).reshape(len(ref), -1)
        if not np.isfinite(out).all():
            return float("inf")
        values.append(float(np.sqrt(np.mean((out - ref) ** 2)) / (np.std(ref) or 1.0)))
    return float(np.mean(values))


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
        op_resolver: the LiteRT op resolver the flatbuffer ran with.
        per_output: for models with several outputs, max abs error and SNR
            of each output by name (the fields above then cover them all;
            agreement and accuracy are left out, as top-1 is not defined).
        output_step: the quantization step of the flatbuffer's int8 output
            (None for a float output).
        near_ties: of the samples whose top-1 differs, those the Keras model
            itself scores within ``NEAR_TIE_STEPS`` output steps apart (its
            top-1 against the flatbuffer's): top-1 there is decided by one
            rounding, which no int8 kernel avoids (None without
            ``output_step``).
    """

    num_samples: int
    agreement: float | None
    keras_accuracy: float | None
    tflite_accuracy: float | None
    max_abs_error: float
    mean_abs_error: float
    snr_db: float
    mode: str = "unknown"
    per_output: dict[str, dict[str, float]] | None = None
    op_resolver: str = "auto"
    output_step: float | None = None
    near_ties: int | None = None

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
                ["op resolver", self.op_resolver],
                ["keras accuracy", pct(self.keras_accuracy)],
                ["tflite accuracy", pct(self.tflite_accuracy)],
                ["top-1 agreement", pct(self.agreement) + self._ties()],
                ["max abs error", f"{self.max_abs_error:.4g}"],
                ["mean abs error", f"{self.mean_abs_error:.4g}"],
                ["SNR", f"{self.snr_db:.1f} dB"]]
        for name, stats in (self.per_output or {}).items():
            rows.append([f"{name}: max abs / SNR",
                         f"{stats['max_abs_error']:.4g} / {stats['snr_db']:.1f} dB"])
        return format_table(["validation", "value"], rows)


    def _ties(self) -> str:
        if self.near_ties is None or self.agreement is None or self.agreement == 1:
            return ""
        differ = round((1 - self.agreement) * self.num_samples)
        return (f" ({differ} differ, {self.near_ties} of them Keras near-ties: within "
                f"{NEAR_TIE_STEPS} output steps)")


# A disagreement is a near-tie when Keras scores the two classes this many int8 output
# steps apart or less (a step or two of accumulated rounding reorders them).
NEAR_TIE_STEPS = 2


def _error_stats(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    diff = reference - candidate
    noise = float(np.sum(diff ** 2))
    signal = float(np.sum(reference ** 2))
    snr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal else -math.inf)
    return {"max_abs_error": float(np.max(np.abs(diff))) if diff.size else 0.0,
            "mean_abs_error": float(np.mean(np.abs(diff))) if diff.size else 0.0,
            "snr_db": snr}


def compare_outputs(reference: Any, candidate: Any, y: Any = None, mode: str = "unknown",
                    names: list[str] | None = None,
                    output_step: float | None = None) -> ValidationReport:
    """Compares two models' float outputs on the same samples.

    Args:
        reference: outputs of the reference (Keras) model, samples first; a
            list of arrays for several outputs.
        candidate: outputs of the model under test (TFLite), in the same order.
        y: optional labels (integers or one-hot) for accuracy (single-output
            classifiers).
        mode: conversion mode, recorded in the report.
        names: output names, for the per-output statistics.
        output_step: quantization step of the candidate's output, to count
            near-ties among the disagreements.

    Returns:
        A :class:`ValidationReport`.
    """
    if isinstance(reference, (list, tuple)):
        if len(reference) != len(candidate):
            raise ValueError(f"Keras gives {len(reference)} outputs, TFLite {len(candidate)}.")
        if len(reference) > 1:
            names = list(names or [f"output_{i}" for i in range(len(reference))])
            flat_ref = [np.asarray(r, np.float64).reshape(len(r), -1) for r in reference]
            flat_cand = [np.asarray(c, np.float64).reshape(len(c), -1) for c in candidate]
            for name, r, c in zip(names, flat_ref, flat_cand):
                if r.shape != c.shape:
                    raise ValueError(f"Output {name!r} shapes differ: Keras {r.shape} vs "
                                     f"TFLite {c.shape}.")
            per_output = {n: _error_stats(r, c) for n, r, c in zip(names, flat_ref, flat_cand)}
            stats = _error_stats(np.concatenate(flat_ref, 1), np.concatenate(flat_cand, 1))
            return ValidationReport(num_samples=len(flat_ref[0]), agreement=None,
                                    keras_accuracy=None, tflite_accuracy=None, mode=mode,
                                    per_output=per_output, **stats)
        reference, candidate = reference[0], candidate[0]
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    candidate = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    if reference.shape != candidate.shape:
        raise ValueError(f"Output shapes differ: Keras {reference.shape} vs TFLite "
                         f"{candidate.shape}.")
    stats = _error_stats(reference, candidate)
    classify = reference.shape[1] > 1
    agreement = keras_acc = tflite_acc = near_ties = None
    if classify:
        ref_top, cand_top = reference.argmax(1), candidate.argmax(1)
        agreement = float(np.mean(ref_top == cand_top))
        if output_step:
            rows = np.arange(len(reference))
            gap = reference[rows, ref_top] - reference[rows, cand_top]
            near_ties = int(np.sum((ref_top != cand_top)
                                   & (gap <= NEAR_TIE_STEPS * output_step * (1 + 1e-6))))
        if y is not None:
            labels = class_labels(y)
            keras_acc = float(np.mean(ref_top == labels))
            tflite_acc = float(np.mean(cand_top == labels))
    return ValidationReport(num_samples=len(reference), agreement=agreement,
                            keras_accuracy=keras_acc, tflite_accuracy=tflite_acc, mode=mode,
                            output_step=output_step, near_ties=near_ties, **stats)


def _input_range(artifact: Any) -> tuple[float, float] | None:
    """The float range the model's input represents: int8 quantization, or calibration."""
    tensor = artifact.inputs[0]
    if tensor.scale and tensor.dtype in ("INT8", "UINT8", "INT16"):
        info = np.iinfo(tensor.numpy_dtype)
        scale, zero = tensor.scale[0], tensor.zero_point[0]
        return (info.min - zero) * scale, (info.max - zero) * scale
    calibrated = (artifact.details.get("calibration") or {})
    found = calibrated.get("input_range") if isinstance(calibrated, dict) else None
    return (found["min"], found["max"]) if found else None


def validate(artifact: Any, keras_model: Any, x: Any, y: Any = None, *,
             batch_size: int = 64, op_resolver: str | None = None,
             strict: bool = False) -> ValidationReport:
    """Runs the flatbuffer in LiteRT and compares it with the Keras model.

    Args:
        artifact: a :class:`~tfedge.artifact.TFLiteArtifact`, flatbuffer bytes,
            or a path to a ``.tflite`` file (bytes and files are checked and
            first run in a child process, so a corrupt file cannot crash
            this one; see :func:`tfedge.artifact.as_artifact`).
        keras_model: the Keras model it was converted from (an EdgeModel is
            accepted as is).
        x: float inputs, preprocessed as for training: an array of samples
            (one sample without its batch axis is accepted), or a
            ``tf.data.Dataset`` of ``x`` or ``(x, y)``, as for
            ``convert(eval_data=)``.
        y: optional labels, integers or one-hot, for accuracy.
        batch_size: samples per interpreter call when the batch is dynamic.
        op_resolver: LiteRT op resolver (``"auto"`` uses XNNPACK); None
            (default) uses the settings the artifact needs (a sparse int8
            model runs with ``"no_delegates"``, see
            :meth:`~tfedge.artifact.TFLiteArtifact.runtime_settings`).
        strict: raise instead of warning when ``x`` lies outside the range
            the model's input represents (e.g. 0..255 for a 0..1 model).

    Returns:
        A :class:`ValidationReport` (prints as a table, ``to_dict``/``to_json``).
        It is also kept as ``artifact.validation``, for the model card.

    Raises:
        InvalidModelFileError: the artifact is not a readable TFLite model.
        TypeError: no Keras model.
        ValueError: empty data, ``x`` of the wrong shape or with NaN values,
            labels outside the model's classes, outputs of different shapes;
            with ``strict``, ``x`` outside the range the model's input
            represents (otherwise a warning).

    Example:

    >>> report = tfedge.validate(artifact, model, x_test, y_test)  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    """
    if keras_model is None or not hasattr(keras_model, "predict"):
        raise TypeError(f"validate compares the artifact with keras_model=, the Keras model it "
                        f"was converted from; got {type(keras_model).__name__}. Call "
                        "tfedge.validate(artifact, model, x, y).")
    artifact = as_artifact(artifact)  # bytes and files: checked, probed in a child
    single = len(artifact.inputs) == 1
    x, y = validation_data(x, y, tuple(artifact.inputs[0].shape[1:]) if single else None,
                           input_range=_input_range(artifact) if single else None,
                           num_classes=(artifact.outputs[0].shape[-1]
                                        if artifact.outputs[0].shape else None),
                           strict=strict)
    reference = keras_model.predict(x, batch_size=batch_size, verbose=0)
    if op_resolver is None and hasattr(artifact, "runtime_settings"):
        op_resolver = artifact.runtime_settings()["op_resolver"]
    runner = TFLiteRunner(artifact.content, op_resolver=op_resolver)
    names = list(getattr(keras_model, "output_names", None) or [])
    if sorted(names) != sorted(runner.output_names):
        names = runner.output_names  # e.g. a wrapper model: trust the signature's order
    candidate = runner.predict(x, batch_size=batch_size, output_names=names)
    scale = artifact.outputs[0].scale if len(artifact.outputs) == 1 else None
    report = compare_outputs(reference, candidate, y, mode=artifact.mode, names=names,
                             output_step=float(scale[0]) if scale else None)
    report.op_resolver = runner.op_resolver
    artifact.validation = report
    logging.info("tfedge: validation on %d samples: agreement %s, SNR %.1f dB",
                 report.num_samples, report.agreement, report.snr_db)
    return report
