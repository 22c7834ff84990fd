"""Mixed precision by measurement: a bit width per layer (4, 8 or 16x8) to a budget.

Part of :mod:`tfedge.lowbit` (``tfedge.convert(..., max_size_bytes=N)``,
``mode="mixed_precision", tolerance=t``, ``bits={"dense_1": 4}``). Each
layer's sensitivity is its effect on the model's output, measured as
:mod:`tfedge.quant_debug` measures it (:class:`~tfedge.quant_debug.OutputLoss`)
on models the LiteRT Quantizer makes (:class:`~tfedge.lowbit_quantizer.
QuantizerSession`); see :func:`choose_bits`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import numpy as np
from absl import logging

from tfedge import quant_debug
from tfedge.flatbuffer import FlatbufferModel
from tfedge.lowbit_quantizer import INT4_OPS, QuantizerSession, Rule

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
BITS_CHOICES = (4, 8, 16)
PER_TENSOR = {"8t": 8, "4t": 4}  # per-tensor weight choices -> their bit width
MAX_16X8_TRIALS = 8  # layers mixed precision tries with int16 activations, most sensitive first


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
        choices: allowed bit widths (4 only for ops with an int4 kernel);
            with per-tensor choices (``per_channel="auto"``) also ``"8t"`` /
            ``"4t"``: int8 / int4 weights with one scale per tensor (no
            per-channel scales and zero points for weights and biases).
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
    choices: tuple[Any, ...]
    weight_elements: int
    loss: dict[Any, float] = dataclasses.field(default_factory=dict)
    bytes_saved: dict[Any, int] = dataclasses.field(default_factory=dict)
    bits: Any = 8
    fixed: bool = False
    rmse_increase: float = 0.0
    rmse: dict[Any, float] = dataclasses.field(default_factory=dict)

    def rules(self, bits: Any = None) -> list[Rule]:
        bits = self.bits if bits is None else bits
        if bits == 8:
            return []
        per_channel = bits not in PER_TENSOR
        bits = PER_TENSOR.get(bits, bits)
        activation = 16 if bits == 16 else 8
        rules = []
        for op, scope in zip(self.ops, self.scopes):
            weight = 4 if bits == 4 and op in INT4_OPS else 8
            if weight == 8 and per_channel and activation == 8:
                continue  # the default rule's int8 per-channel
            rules.append(Rule("static", op, weight, activation,
                              regex="^" + re.escape(scope) + ";", per_channel=per_channel))
        return rules

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "ops": self.ops, "bits": self.bits, "fixed": self.fixed,
                "choices": list(self.choices), "weight_elements": self.weight_elements,
                "loss_if_only_this": {str(k): v for k, v in self.loss.items()},
                "rmse_increase_if_only_this_int4": self.rmse_increase,
                "bytes_saved_if_only_this": {str(k): v for k, v in self.bytes_saved.items()}}


def layer_options(fb: FlatbufferModel, keras_model: Any = None,
                  per_tensor: bool = False) -> list[LayerOption]:
    """The weight layers of a float flatbuffer and the bit widths each may take.

    With ``per_tensor``, each layer may also take int8 or (with an int4
    kernel) int4 weights with one scale per tensor (``"8t"`` / ``"4t"``).
    """
    options = []
    for name, ops in quant_debug.layer_groups(fb, keras_model).items():
        weight_ops = [op for op in ops if op.name in WEIGHT_OPS]
        if not weight_ops:
            continue
        scopes = [fb.tensors[op.outputs[0]].name for op in weight_ops]
        elements = sum(int(np.prod(fb.tensors[op.inputs[1]].shape)) for op in weight_ops)
        int4 = any(op.name in INT4_OPS for op in weight_ops)
        choices = (4, 8, 16) if int4 else (8, 16)
        if per_tensor:
            choices += ("8t", "4t") if int4 else ("8t",)
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


_LABELS = {16: "16x8", "8t": "8 per-tensor", "4t": "4 per-tensor"}


def _summary(options: list[LayerOption]) -> str:
    if len(options) <= 8:
        return ", ".join(f"{o.layer}: {o.bits}" for o in options)
    counts = {b: sum(o.bits == b for o in options) for b in BITS_CHOICES + tuple(PER_TENSOR)}
    return (", ".join(f"{n} layers at {_LABELS.get(b, b)}" for b, n in counts.items() if n)
            + " (details['mixed_precision']['layers'] names them)")


def choose_bits(session: QuantizerSession, options: list[LayerOption], loss_fn: Any, *,
                max_size_bytes: int | None = None, tolerance: float | None = None,
                bits: dict[str, int] | None = None) -> tuple[bytes, MixedPrecisionReport]:
    """Chooses each layer's bit width by measurement; returns the model and the report.

    1. The all-int8 model is measured, then each free layer alone at 4 bits
       (and, with per-tensor choices, at int8 and int4 per tensor): the loss
       against the float model (its effect on the output, as
       :mod:`tfedge.quant_debug` measures it; relative output RMSE breaks
       ties) and the bytes it saves. Moves are ranked by loss per byte saved.
    2. With ``max_size_bytes``: the cheapest move per byte (a layer to 4
       bits, or to per-tensor, or from one to a smaller other) is taken, one
       at a time, until the predicted size meets the budget; the model is then quantized and
       measured, and more layers follow while the real file is too large.
       Bytes left under the budget then buy 16x8 activations (int16
       activations, int8 weights) for the layers whose int4 weights hurt the
       output most, each kept only if the measured loss itself falls (int16
       ops run outside XNNPACK, several times slower on ARM: see
       ``benchmarks/results/mixed_precision.json``).
    3. With ``tolerance`` only: if int8 itself misses the tolerance, 16x8
       layers are added as in 2; then the moves from int8 are tried in rank
       order, each kept if the measured loss stays within the tolerance and
       the file shrinks.
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
        option.loss[8], option.rmse[8], option.bytes_saved[8] = int8_loss[0], int8_loss[1], 0
        for choice in option.choices:
            if choice in (8, 16):
                continue
            content, loss = measure({**base, option.layer: choice})
            option.loss[choice], option.rmse[choice] = loss
            option.bytes_saved[choice] = len(int8_content) - len(content)
        if 4 in option.loss:
            option.rmse_increase = option.rmse[4] - int8_loss[1]

    def move_cost(option: LayerOption, start: Any, end: Any) -> tuple[float, float]:
        """Measured loss (then RMSE) per byte saved going from one choice to another."""
        saved = option.bytes_saved[end] - option.bytes_saved[start]
        return ((option.loss[end] - option.loss[start]) / saved,
                (option.rmse[end] - option.rmse[start]) / saved)

    def best_move(assignment: dict[str, Any]) -> tuple[LayerOption, Any] | None:
        """The smaller choice of some free layer that costs the least loss per byte saved."""
        moves = [(move_cost(o, assignment[o.layer], c), i, o, c)
                 for i, o in enumerate(free) if assignment[o.layer] in o.loss
                 for c in o.loss
                 if o.bytes_saved[c] > o.bytes_saved[assignment[o.layer]]]
        return min(moves, key=lambda m: (m[0], m[1]))[2:] if moves else None

    # every (layer, smaller choice) from int8, cheapest per byte first (tolerance search)
    ranked = sorted(((move_cost(o, 8, c), i, o, c) for i, o in enumerate(free)
                     for c in o.loss if o.bytes_saved[c] > 0), key=lambda m: (m[0], m[1]))
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
            # kept only for a lower loss itself: int16 activations have no XNNPACK kernel,
            # so a mere RMSE gain is not worth the slower op
            if fits(trial_content) and trial_loss[0] < loss[0]:
                current, content, loss = trial, trial_content, trial_loss

    if max_size_bytes is not None:
        predicted = len(content)
        while len(content) > max_size_bytes:
            move = best_move(current)
            if move is None:
                break
            option, choice = move
            predicted -= option.bytes_saved[choice] - option.bytes_saved[current[option.layer]]
            current[option.layer] = choice
            if predicted <= max_size_bytes:
                content, loss = measure(current)
                predicted = len(content)
        content, loss = measure(current)
        if len(content) <= max_size_bytes:
            add_sixteen(lambda c: len(c) <= max_size_bytes)
    elif tolerance is not None:
        if loss[0] > tolerance:
            add_sixteen(lambda c: True)
        for _, _, option, choice in ranked:
            if current[option.layer] not in option.loss or \
                    option.bytes_saved[choice] <= option.bytes_saved[current[option.layer]]:
                continue
            trial = {**current, option.layer: choice}
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


