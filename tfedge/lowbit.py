"""Below 8 bits: int4 / int2 weights and per-layer mixed precision, by the LiteRT Quantizer.

``tfedge.convert(model, data, mode=...)`` dispatches here for the modes of
:data:`tfedge.artifact.LOWBIT_MODES`. Each converts the model to a float
``.tflite`` with tfedge's converter path, then quantizes that file with the
LiteRT Quantizer (``pip install litert-quantizer``; formerly
``ai-edge-quantizer``), calibrated on the same representative samples. tfedge
does not quantize anything itself: it chooses the quantizer's recipe, checks
the result and measures it.

Modes (which ops get what comes from the quantizer's own policy, i.e. where
LiteRT has a kernel):

* ``"w4a8"``: full integer, int8 I/O; int4 weights on CONV_2D and
  FULLY_CONNECTED (the ops with an int4 kernel), int8 weights elsewhere,
  int8 activations everywhere.
* ``"int4_weights"``: weight-only; int4 weights on CONV_2D /
  FULLY_CONNECTED (int8 on other weight ops), dequantized at load, float
  activations and compute, float I/O. For phones, where size matters more
  than integer compute.
* ``"int4_blockwise"`` / ``"int2_blockwise"``: FULLY_CONNECTED weights in
  int4 / int2 with one scale per block of ``32`` values, other weight ops
  int8, activations float and quantized on the fly (dynamic range).
* ``"litert_int8"``: static int8 through the quantizer, the comparison to
  the converter's ``"int8"`` (which stays the default; see
  ``benchmarks/mixed_precision.py``).
* ``"mixed_precision"``: a bit width per layer, chosen by measurement (see
  :func:`choose_bits`): 4 (int4 weights, int8 activations), 8 (int8) or
  16 (int16 activations, int8 weights: LiteRT's 16x8), to meet
  ``max_size_bytes`` at the least accuracy cost, or the smallest model within
  ``tolerance``; ``bits={"dense_1": 4}`` fixes layers by hand.

Every artifact is run in LiteRT with XNNPACK and with the built-in kernels on
the calibration samples and compared with the float model
(``details["runtimes"]``); a model no LiteRT kernel computes correctly is an
error, not an artifact.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

import numpy as np
from absl import logging

from tfedge import quant_debug
from tfedge.artifact import (MODE_DESCRIPTIONS, TFLiteArtifact, check_full_integer,
                             runtime_settings, trust)
from tfedge.calibration import data_range, representative_samples, split_eval_data
from tfedge.card import tool_versions
from tfedge.errors import ConversionError
from tfedge.flatbuffer import FlatbufferModel
from tfedge.source import make_converter, model_source, quiet_converter, run_converter
from tfedge._validate import TFLiteRunner, compare_outputs, run_outputs

INT4_OPS = ("CONV_2D", "FULLY_CONNECTED")  # LiteRT's int4 kernels (the quantizer's policy)
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
BITS_CHOICES = (4, 8, 16)
BLOCK_SIZE = 32
MAX_16X8_TRIALS = 8  # layers mixed precision tries with int16 activations, most sensitive first
_STATIC_MODES = ("w4a8", "litert_int8", "mixed_precision")
# A runtime whose outputs agree with the float model's top-1 on fewer than this
# fraction of the samples (or relative RMSE above 1) computes the model wrongly.
_BROKEN_AGREEMENT = 0.5
_INSTALL = "pip install 'litert-quantizer~=0.11.0'"


def _quantizer() -> tuple[Any, Any]:
    """The LiteRT Quantizer's ``quantizer`` and ``qtyping`` modules (a heavy optional dep)."""
    try:
        from litert_quantizer import qtyping, quantizer
    except ImportError as err:
        raise ImportError(f"Low-bit modes (int4 / int2 / mixed precision) use the LiteRT "
                          f"Quantizer, which is not installed: {_INSTALL}") from err
    return quantizer, qtyping


# ----------------------------------------------------------------------------
# Recipes: what the quantizer is told, as plain data
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rule:
    """One quantizer recipe entry; later rules win where they overlap.

    Attributes:
        kind: ``"static"``, ``"weight_only"`` or ``"dynamic"``.
        op: a TFLite op name (``"CONV_2D"``) or ``"*"`` for every supported op.
        weight_bits: weight bits.
        activation_bits: activation bits (static only).
        regex: which ops (by output tensor name) it applies to.
        block_size: 0 for per-channel, else the block size (32, 64, ...).
    """

    kind: str
    op: str
    weight_bits: int
    activation_bits: int = 8
    regex: str = ".*"
    block_size: int = 0


def mode_rules(mode: str, block_size: int = BLOCK_SIZE) -> list[Rule]:
    """The quantizer recipe of a fixed low-bit mode (see the module docstring)."""
    if mode == "w4a8":
        return [Rule("static", "*", 8)] + [Rule("static", op, 4) for op in INT4_OPS]
    if mode == "litert_int8":
        return [Rule("static", "*", 8)]
    if mode == "int4_weights":
        return [Rule("weight_only", "*", 8)] + [Rule("weight_only", op, 4) for op in INT4_OPS]
    if mode in ("int4_blockwise", "int2_blockwise"):
        bits = 4 if mode == "int4_blockwise" else 2
        return [Rule("dynamic", "*", 8),
                Rule("dynamic", "FULLY_CONNECTED", bits, block_size=block_size)]
    raise ValueError(f"No fixed recipe for mode {mode!r}.")


def _apply(qt: Any, qtyping: Any, rule: Rule) -> None:
    op = qtyping.TFLOperationName(rule.op)
    granularity = (qtyping.QuantGranularity.CHANNELWISE if not rule.block_size else
                   qtyping.QuantGranularity(f"BLOCKWISE_{rule.block_size}"))
    if rule.kind == "static":
        qt.add_static_config(rule.regex, op, rule.activation_bits, rule.weight_bits,
                             weight_granularity=granularity)
    elif rule.kind == "weight_only":
        qt.add_weight_only_config(rule.regex, op, rule.weight_bits, granularity=granularity)
    else:
        qt.add_dynamic_config(rule.regex, op, rule.weight_bits, granularity=granularity)


class QuantizerSession:
    """A float ``.tflite`` calibrated once, then quantized with any recipe.

    Args:
        float_content: the float flatbuffer (one signature, one input).
        samples: representative samples (batch-1 float arrays); none for
            recipes that need no calibration.
    """

    def __init__(self, float_content: bytes, samples: list[np.ndarray] | None = None):
        self.float_content = float_content
        self.fb = FlatbufferModel(float_content)
        sigs = TFLiteArtifact(float_content).signatures
        self.signature_key = next(iter(sigs))
        self.input_name = sigs[self.signature_key]["inputs"][0]
        self.samples = samples or []
        self._calibration: dict[str, Any] | None = None
        self.calibration_seconds = 0.0

    def _calibrate(self, qt: Any) -> dict[str, Any] | None:
        """Min/max of every tensor, computed once (they do not depend on the recipe)."""
        if not qt.need_calibration:
            return None
        if self._calibration is None:
            if not self.samples:
                raise ValueError("This mode quantizes activations statically: it needs "
                                 "representative_data (a few hundred real inputs).")
            quantizer, qtyping = _quantizer()
            full = quantizer.Quantizer(self.float_content)
            # Calibrate every op, 16-bit included, so any later recipe finds its ranges.
            full.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8)
            started = time.perf_counter()
            with quiet_converter():
                self._calibration = full.calibrate(
                    {self.signature_key: [{self.input_name: s} for s in self.samples]})
            self.calibration_seconds = time.perf_counter() - started
        return self._calibration

    def quantize(self, rules: list[Rule]) -> bytes:
        """The flatbuffer the quantizer makes with ``rules``.

        Raises:
            ConversionError: the quantizer failed (its message is kept).
        """
        quantizer, qtyping = _quantizer()
        qt = quantizer.Quantizer(self.float_content)
        try:
            for rule in rules:
                _apply(qt, qtyping, rule)
            calibration = self._calibrate(qt)
            with quiet_converter():
                result = qt.quantize(calibration, enable_progress_report=False)
        except ValueError as err:
            if "representative_data" in str(err):
                raise
            raise ConversionError(f"The LiteRT Quantizer failed: {str(err).strip()[:1500]}") \
                from err
        return bytes(result.quantized_model)


# ----------------------------------------------------------------------------
# Layers of the float model and their candidate bit widths
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class LayerOption:
    """A weight layer of the model, what it may become, and what each choice measured.

    Attributes:
        layer: the Keras layer name (as :func:`tfedge.quant_debug.layer_groups`
            names it).
        ops: its TFLite op names.
        scopes: its ops' output tensor names (the quantizer's regex targets).
        choices: allowed bit widths (4 only for ops with an int4 kernel).
        weight_elements: weight values of its weight ops.
        loss: choice -> measured loss of the model with only this layer
            changed from int8 (the output effect, as in quant_debug).
        rmse_increase: the relative output RMSE that only this layer at 4
            bits adds to the int8 model's (ranks layers of equal loss).
        bytes_saved: choice -> file bytes saved against int8 (negative: grown).
        bits: the chosen bit width.
        fixed: set by the user's ``bits=``.
    """

    layer: str
    ops: list[str]
    scopes: list[str]
    choices: tuple[int, ...]
    weight_elements: int
    loss: dict[int, float] = dataclasses.field(default_factory=dict)
    bytes_saved: dict[int, int] = dataclasses.field(default_factory=dict)
    bits: int = 8
    fixed: bool = False
    rmse_increase: float = 0.0

    def rules(self, bits: int | None = None) -> list[Rule]:
        bits = self.bits if bits is None else bits
        if bits == 8:
            return []
        activation, weight = (16, 8) if bits == 16 else (8, 4)
        return [Rule("static", op, weight, activation, regex="^" + re.escape(scope) + ";")
                for op, scope in zip(self.ops, self.scopes)
                if bits == 16 or op in INT4_OPS]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "ops": self.ops, "bits": self.bits, "fixed": self.fixed,
                "choices": list(self.choices), "weight_elements": self.weight_elements,
                "loss_if_only_this": {str(k): v for k, v in self.loss.items()},
                "rmse_increase_if_only_this_int4": self.rmse_increase,
                "bytes_saved_if_only_this": {str(k): v for k, v in self.bytes_saved.items()}}


def layer_options(fb: FlatbufferModel, keras_model: Any = None) -> list[LayerOption]:
    """The weight layers of a float flatbuffer and the bit widths each may take."""
    options = []
    for name, ops in quant_debug.layer_groups(fb, keras_model).items():
        weight_ops = [op for op in ops if op.name in WEIGHT_OPS]
        if not weight_ops:
            continue
        scopes = [fb.tensors[op.outputs[0]].name for op in weight_ops]
        elements = sum(int(np.prod(fb.tensors[op.inputs[1]].shape)) for op in weight_ops)
        choices = (4, 8, 16) if any(op.name in INT4_OPS for op in weight_ops) else (8, 16)
        options.append(LayerOption(name, [op.name for op in weight_ops], scopes, choices,
                                   elements))
    return options


def _rules(options: list[LayerOption], bits: dict[str, int] | None = None) -> list[Rule]:
    rules = [Rule("static", "*", 8)]
    for option in options:
        rules += option.rules((bits or {}).get(option.layer))
    return rules


# ----------------------------------------------------------------------------
# Mixed precision by measurement
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class MixedPrecisionReport:
    """What mixed precision chose and what it measured.

    Attributes:
        max_size_bytes: the size budget (None without one).
        tolerance: the accepted loss (None without one).
        metric: what the loss measures (see :class:`tfedge.quant_debug.OutputLoss`).
        reached: True if every given target (size, tolerance) is met.
        int8_bytes: the all-int8 model (same quantizer).
        int8_loss: its loss.
        final_bytes: the returned model.
        final_loss: its loss.
        shortfall_bytes: bytes over ``max_size_bytes`` (0 when met).
        layers: one :class:`LayerOption` per weight layer (dicts).
        attempts: every whole model measured: ``{"bits", "bytes", "loss"}``.
        message: the summary that was logged.
        seconds: time taken.
    """

    max_size_bytes: int | None
    tolerance: float | None
    metric: str
    reached: bool
    int8_bytes: int
    int8_loss: float
    final_bytes: int
    final_loss: float
    shortfall_bytes: int
    layers: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
    message: str = ""
    seconds: float = 0.0

    @property
    def bits(self) -> dict[str, int]:
        return {row["layer"]: row["bits"] for row in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return self.message


def _scope_names(option: LayerOption) -> set[str]:
    """Every Keras layer name in the option's fused tensor names (Conv1, bn_Conv1, Conv1_relu)."""
    return {part for scope in option.scopes for piece in scope.split(";")
            for part in piece.split("/")}


def _check_bits(bits: dict[str, int] | None, options: list[LayerOption]) -> dict[str, int]:
    """``bits`` keyed by the options' layer names; a fused layer's other names work too."""
    if not bits:
        return {}
    by_name = {o.layer: o for o in options}
    resolved = {}
    for name, value in bits.items():
        option = by_name.get(name) or next((o for o in options if name in _scope_names(o)),
                                           None)
        if option is None:
            raise ValueError(f"bits={{{name!r}: {value}}}: no weight layer {name!r} in the model; "
                             f"its weight layers are {', '.join(by_name)}.")
        if value not in option.choices:
            raise ValueError(f"bits={{{name!r}: {value}}}: {name!r} ({'+'.join(option.ops)}) "
                             f"takes {' / '.join(map(str, option.choices))} (4: int4 "
                             "weights, where LiteRT has an int4 kernel; 8: int8; 16: int16 "
                             "activations with int8 weights).")
        resolved[option.layer] = value
    return resolved


def _summary(options: list[LayerOption]) -> str:
    if len(options) <= 8:
        return ", ".join(f"{o.layer}: {o.bits}" for o in options)
    counts = {b: sum(o.bits == b for o in options) for b in BITS_CHOICES}
    return (", ".join(f"{n} layers at {'16x8' if b == 16 else b}" for b, n in counts.items() if n)
            + " (details['mixed_precision']['layers'] names them)")


def choose_bits(session: QuantizerSession, options: list[LayerOption], loss_fn: Any, *,
                max_size_bytes: int | None = None, tolerance: float | None = None,
                bits: dict[str, int] | None = None) -> tuple[bytes, MixedPrecisionReport]:
    """Chooses each layer's bit width by measurement; returns the model and the report.

    1. The all-int8 model is measured, then each free layer alone at 4 bits:
       the loss against the float model (its effect on the output, as
       :mod:`tfedge.quant_debug` measures it; relative output RMSE breaks
       ties) and the bytes it saves. Layers are ranked by loss per byte saved.
    2. With ``max_size_bytes``: layers go to 4 bits, cheapest first, until
       the predicted size meets the budget; the model is then quantized and
       measured, and more layers follow while the real file is too large.
       Bytes left under the budget then buy 16x8 activations (int16
       activations, int8 weights) for the layers whose int4 weights hurt the
       output most, each kept only if the measured loss falls.
    3. With ``tolerance`` only: if int8 itself misses the tolerance, 16x8
       layers are added as in 2; then layers go to 4 bits in rank order as
       long as the measured loss stays within the tolerance (a layer that
       breaks it is skipped).
    Layers in ``bits`` keep their width. At most :data:`MAX_16X8_TRIALS`
    layers are tried at 16x8. When the budget cannot be met, the smallest
    model found is returned and a warning says "not reachable".
    """
    started = time.perf_counter()
    fixed = _check_bits(bits, options)
    for option in options:
        option.bits, option.fixed = fixed.get(option.layer, 8), option.layer in fixed
    attempts: list[dict[str, Any]] = []
    cache: dict[tuple, tuple[bytes, tuple[float, float]]] = {}

    def measure(assignment: dict[str, int]) -> tuple[bytes, tuple[float, float]]:
        key = tuple(sorted(assignment.items()))
        if key not in cache:
            content = session.quantize(_rules(options, assignment))
            cache[key] = (content, tuple(loss_fn(content)))
            attempts.append({"bits": {k: v for k, v in assignment.items() if v != 8},
                             "bytes": len(content), "loss": cache[key][1][0],
                             "relative_rmse": cache[key][1][1]})
        return cache[key]

    base = {o.layer: 8 for o in options}
    int8_content, int8_loss = measure(base)
    current = {o.layer: o.bits for o in options}
    free = [o for o in options if not o.fixed]
    for option in free:
        if 4 in option.choices:
            content, loss = measure({**base, option.layer: 4})
            option.loss[4] = loss[0]
            option.bytes_saved[4] = len(int8_content) - len(content)
            option.rmse_increase = loss[1] - int8_loss[1]

    def cost_per_byte(option: LayerOption) -> tuple[float, float]:
        saved = option.bytes_saved[4]
        return (option.loss[4] - int8_loss[0]) / saved, option.rmse_increase / saved

    to_four = sorted((o for o in free if o.bytes_saved.get(4, 0) > 0), key=cost_per_byte)
    sixteen = sorted((o for o in free if 16 in o.choices and 4 in o.loss),
                     key=lambda o: -o.rmse_increase)[:MAX_16X8_TRIALS]
    content, loss = measure(current)

    def add_sixteen(fits: Any) -> None:
        nonlocal current, content, loss
        for option in sixteen:
            if current[option.layer] != 8 or (tolerance is not None and max_size_bytes is None
                                              and loss[0] <= tolerance):
                continue
            trial = {**current, option.layer: 16}
            trial_content, trial_loss = measure(trial)
            if fits(trial_content) and trial_loss < loss:
                current, content, loss = trial, trial_content, trial_loss

    if max_size_bytes is not None:
        predicted = len(content)
        for option in to_four:
            if len(content) <= max_size_bytes:
                break
            if current[option.layer] == 4:
                continue
            current[option.layer] = 4
            predicted -= option.bytes_saved[4]
            if predicted <= max_size_bytes:
                content, loss = measure(current)
                predicted = len(content)
        content, loss = measure(current)
        if len(content) <= max_size_bytes:
            add_sixteen(lambda c: len(c) <= max_size_bytes)
    elif tolerance is not None:
        if loss[0] > tolerance:
            add_sixteen(lambda c: True)
        for option in to_four:
            trial = {**current, option.layer: 4}
            trial_content, trial_loss = measure(trial)
            if trial_loss[0] <= tolerance and len(trial_content) < len(content):
                current, content, loss = trial, trial_content, trial_loss
    int8_loss, loss = int8_loss[0], loss[0]

    for option in options:
        option.bits = current[option.layer]
    shortfall = max(0, len(content) - max_size_bytes) if max_size_bytes is not None else 0
    loss_ok = tolerance is None or loss <= tolerance
    reached = shortfall == 0 and loss_ok
    chosen = _summary(options)
    metric = loss_fn.metric
    if shortfall:
        message = (f"max_size_bytes={max_size_bytes:,} is not reachable: best found "
                   f"{len(content):,} bytes ({shortfall:,} over the budget) with {chosen} "
                   f"({metric} {loss:.4f}; int8: {len(int8_content):,} bytes). The rest is "
                   "ops without an int4 kernel, activations and the file's own structure; "
                   "prune or narrow the model, or use mode='int4_weights' where float "
                   "compute is acceptable.")
    elif not loss_ok:
        message = (f"tolerance={tolerance} is not reachable: best found {metric} {loss:.4f} "
                   f"at {len(content):,} bytes with {chosen} (int8: {int8_loss:.4f}). Try "
                   "quantization-aware training.")
    else:
        message = (f"Mixed precision: {len(content):,} bytes ({len(content) / len(int8_content):.2f}x "
                   f"the int8 {len(int8_content):,}), {metric} {loss:.4f} (int8: "
                   f"{int8_loss:.4f}); {chosen}.")
    (logging.info if reached else logging.warning)("tfedge: %s", message)
    report = MixedPrecisionReport(
        max_size_bytes, tolerance, metric, reached, len(int8_content), int8_loss, len(content),
        loss, shortfall, [o.to_dict() for o in options], attempts, message,
        round(time.perf_counter() - started, 3))
    return content, report


# ----------------------------------------------------------------------------
# Runtimes: XNNPACK and the built-in kernels
# ----------------------------------------------------------------------------
def check_runtimes(content: bytes, x: np.ndarray, reference: np.ndarray,
                   output_name: str | None = None) -> dict[str, Any]:
    """Runs a flatbuffer with XNNPACK and with LiteRT's built-in kernels, against float.

    Returns:
        ``{"xnnpack": row, "builtin": row}``; a row holds ``ok``, ``error``
        (why it does not run), ``top1_agreement`` and ``relative_rmse``
        against the float outputs, and ``correct`` (False: the kernels run
        but compute wrong results).
    """
    reference = np.asarray(reference, np.float64).reshape(len(x), -1)
    result = {}
    for name, resolver in (("xnnpack", "auto"), ("builtin", "no_delegates")):
        try:
            runner = TFLiteRunner(content, op_resolver=resolver)
            if output_name in runner.output_names:
                out = runner.predict(x, output_names=[output_name])
            else:
                out = runner.predict(x)
        except (RuntimeError, ValueError) as err:
            result[name] = {"ok": False, "correct": False,
                            "error": str(err).strip().splitlines()[0][:300]}
            continue
        out = np.asarray(out, np.float64).reshape(len(x), -1)
        rmse = float(np.sqrt(np.mean((out - reference) ** 2)) / (np.std(reference) or 1.0))
        agreement = (float(np.mean(out.argmax(1) == reference.argmax(1)))
                     if reference.shape[1] > 1 else None)
        correct = bool(np.isfinite(out).all() and rmse <= 1.0 and
                       (agreement is None or agreement >= _BROKEN_AGREEMENT))
        result[name] = {"ok": True, "correct": correct, "error": None,
                        "top1_agreement": agreement, "relative_rmse": rmse}
    return result


# ----------------------------------------------------------------------------
# The entry point (called by tfedge.convert)
# ----------------------------------------------------------------------------
def convert_lowbit(model: Any, representative_data: Any = None, *, mode: str,
                   input_type: str | None = None, output_type: str | None = None,
                   num_samples: int = 300, batch_size: int | None = 1,
                   signature: str | None = None, tolerance: float | None = None,
                   eval_data: Any = None, custom_objects: dict[str, Any] | None = None,
                   max_size_bytes: int | None = None, bits: dict[str, int] | None = None,
                   allow_float_ops: bool = False) -> Any:
    """``tfedge.convert`` for the low-bit modes (see the module docstring).

    Returns:
        A :class:`~tfedge.artifact.TFLiteArtifact` whose ``details`` record the
        quantizer recipe (``"lowbit"``), the runtimes checked
        (``"runtimes"``) and, for mixed precision, the
        :class:`MixedPrecisionReport` (``"mixed_precision"``).

    Raises:
        ImportError: litert-quantizer is not installed.
        ValueError: bad arguments, before any conversion.
        ConversionError: the converter or the quantizer failed, a static
            mode left float ops, or no LiteRT kernel computes the model
            correctly.
    """
    started = time.perf_counter()
    _quantizer()  # fail first, before tracing anything
    static = mode in _STATIC_MODES
    for name, value in (("input_type", input_type), ("output_type", output_type)):
        wanted = "int8" if static else "float32"
        if value not in (None, wanted):
            raise ValueError(f"{name}={value!r}: mode={mode!r} has {wanted} inputs and outputs "
                             "(the LiteRT Quantizer's I/O for it).")
    if mode != "mixed_precision" and (max_size_bytes is not None or bits or tolerance is not None):
        raise ValueError(f"max_size_bytes=, bits= and tolerance= choose per-layer bit widths: "
                         f"use them with mode='mixed_precision' (or leave mode out), not "
                         f"mode={mode!r}.")
    if mode == "mixed_precision":
        if max_size_bytes is None and tolerance is None and not bits:
            raise ValueError("mode='mixed_precision' needs a target: max_size_bytes=N, "
                             "tolerance=t with eval_data=(x, y), or bits={'layer': 4, ...}.")
        if max_size_bytes is not None and (int(max_size_bytes) != max_size_bytes
                                           or max_size_bytes <= 0):
            raise ValueError(f"max_size_bytes={max_size_bytes!r}: give a positive number of "
                             "bytes.")
        if tolerance is not None and (eval_data is None or not 0 <= tolerance < 1):
            raise ValueError("tolerance= needs eval_data=(x, y) (or x) and a fraction such as "
                             "0.005 (half an accuracy point).")
        if bits and any(not isinstance(v, int) for v in bits.values()):
            raise ValueError(f"bits={bits!r}: give whole bit widths, e.g. {{'dense_1': 4}}.")

    source = model_source(model, batch_size=1 if static else batch_size,
                                      signature=signature, custom_objects=custom_objects)
    if len(source.signatures) > 1 or len(source.signature.inputs) != 1:
        raise ValueError(f"Low-bit modes quantize one signature with one input; "
                         f"{source.name!r} has {len(source.signatures)} signature(s) and "
                         f"{len(source.signature.inputs)} input(s): pass signature='...'.")
    eval_x, eval_y = split_eval_data(eval_data, source.input_shape)
    samples = []
    if static or representative_data is not None:
        samples = representative_samples(representative_data, source.input_shape,
                                                     num_samples)
    float_content = run_converter(
        make_converter(source, "float32"), source, "float32")
    session = QuantizerSession(float_content, samples)
    details: dict[str, Any] = {
        "source": source.name, "source_kind": source.kind, "source_path": source.path,
        "mode": mode, "mode_description": MODE_DESCRIPTIONS[mode],
        "input_type": "int8" if static else "float32",
        "output_type": "int8" if static else "float32", "batch_size": source.batch_size,
        "quantizer": {"package": "litert-quantizer",
                      "version": tool_versions()["litert_quantizer"]},
        "signatures": {k: {"inputs": [i[0] for i in s.inputs], "outputs": s.outputs}
                       for k, s in source.signatures.items()}}
    if samples:
        details["calibration"] = {"samples": len(samples), "input_range": data_range(samples)}
    if eval_x is not None:
        check_x = eval_x
    elif samples:
        check_x = np.concatenate(samples[:64])
    else:  # weight-only without data: the runtimes are checked on seeded noise
        shape = tuple(d or 1 for d in source.input_shape[1:])
        check_x = np.random.default_rng(0).standard_normal((16,) + shape).astype(np.float32)
    output_name = source.signature.outputs[0]
    reference = source.reference(check_x)

    if mode == "mixed_precision":
        loss_fn = quant_debug.OutputLoss(reference, check_x, eval_y, output_name)
        options = layer_options(session.fb, source.keras_model)
        content, report = choose_bits(session, options, loss_fn, max_size_bytes=max_size_bytes,
                                      tolerance=tolerance, bits=bits)
        details["mixed_precision"] = report.to_dict()
        details["lowbit"] = {"bits": report.bits}
    else:
        rules = mode_rules(mode)
        content = session.quantize(rules)
        details["lowbit"] = {"recipe": [dataclasses.asdict(r) for r in rules]}
    details["quantize_seconds"] = round(time.perf_counter() - started, 3)

    artifact = TFLiteArtifact(content, mode=mode, num_calibration_samples=len(samples),
                                          details=details)
    if static:
        try:
            check_full_integer(artifact)
        except ConversionError as err:
            if not allow_float_ops:
                raise
            logging.warning("tfedge: %s", err)
    runtimes = check_runtimes(content, check_x, reference, output_name)
    details["runtimes"] = runtimes
    if not any(r["correct"] for r in runtimes.values()):
        raise ConversionError(
            f"mode={mode!r}: no LiteRT kernel computes this model correctly (ai-edge-litert "
            f"{tool_versions()['ai_edge_litert']}): " + "; ".join(
                f"{k}: {_runtime_summary(r)}" for k, r in runtimes.items()) +
            ". The quantizer wrote a model this LiteRT cannot run correctly: "
            + ("use mode='int4_blockwise' (int4 blocks run in XNNPACK)."
               if mode == "int2_blockwise" else
               "convert with mode='int8' (the TFLite converter), or report the float model "
               "to litert-quantizer."))
    for name, row in runtimes.items():
        if not row["correct"]:
            logging.warning("tfedge: %s: LiteRT's %s kernels %s; use the other runtime.",
                            source.name, name, f"reject it ({row['error']})" if not row["ok"]
                            else "compute it wrongly")
    trust(content)
    artifact.runtime = runtime_settings(content)
    if artifact.runtime["op_resolver"] == "no_delegates" and runtimes["builtin"]["correct"] \
            is False:
        raise ConversionError(f"mode={mode!r}: XNNPACK rejects this model and LiteRT's built-in "
                              "kernels compute it wrongly.")
    if eval_x is not None:
        candidate = run_outputs(content, eval_x, artifact.op_resolver, output_name)
        artifact.validation = compare_outputs(reference, candidate, eval_y, mode=mode)
        artifact.validation.op_resolver = artifact.op_resolver
    details["conversion_seconds"] = round(time.perf_counter() - started, 3)
    logging.info("tfedge: %s", str(artifact).splitlines()[0])
    return artifact


def _runtime_summary(row: dict[str, Any]) -> str:
    if not row["ok"]:
        return f"rejects it ({row['error']})"
    agreement = row["top1_agreement"]
    return ((f"top-1 agreement with float {agreement:.2f}, " if agreement is not None else "")
            + f"relative output RMSE {row['relative_rmse']:.3g}")
