"""The LiteRT Quantizer, wrapped: recipes as plain data, one calibration, runtime checks.

Machinery of :mod:`tfedge.lowbit`: :class:`Rule` (one recipe entry),
:func:`mode_rules` (the recipe of each fixed low-bit mode),
:class:`QuantizerSession` (a float ``.tflite`` calibrated once, quantized
with any recipe) and :func:`check_runtimes` (XNNPACK and LiteRT's built-in
kernels against the float model). The quantizer (``pip install
litert-quantizer``) is a heavy optional dependency, imported on use.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from tfedge.artifact import TFLiteArtifact
from tfedge.errors import ConversionError
from tfedge.flatbuffer import FlatbufferModel
from tfedge.source import quiet_converter
from tfedge._validate import TFLiteRunner, relative_rmse

INT4_OPS = ("CONV_2D", "FULLY_CONNECTED")  # LiteRT's int4 kernels (the quantizer's policy)
BLOCK_SIZE = 32
# A runtime whose outputs agree with the float model's top-1 on fewer than this
# fraction of the samples (or relative RMSE above 1) computes the model wrongly.
_BROKEN_AGREEMENT = 0.5
_INSTALL = "pip install 'litert-quantizer~=0.11.0'"


def quantizer_modules() -> tuple[Any, Any]:
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
        per_channel: with ``block_size`` 0: one weight scale per output
            channel (default), or False for one per tensor (no per-channel
            scales and zero points in the file, for weights and biases).
    """

    kind: str
    op: str
    weight_bits: int
    activation_bits: int = 8
    regex: str = ".*"
    block_size: int = 0
    per_channel: bool = True


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
    if rule.block_size:
        granularity = qtyping.QuantGranularity(f"BLOCKWISE_{rule.block_size}")
    else:
        granularity = qtyping.QuantGranularity.CHANNELWISE if rule.per_channel else \
            qtyping.QuantGranularity.TENSORWISE
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
            quantizer, qtyping = quantizer_modules()
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
        quantizer, qtyping = quantizer_modules()
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
# Runtimes: XNNPACK and the built-in kernels
# ----------------------------------------------------------------------------
def check_runtimes(content: bytes, x: np.ndarray, reference: np.ndarray | dict[str, np.ndarray],
                   output_name: str | None = None) -> dict[str, Any]:
    """Runs a flatbuffer with XNNPACK and with LiteRT's built-in kernels, against float.

    Args:
        content: the flatbuffer.
        x: inputs.
        reference: the float model's outputs on ``x``: one array (of
            ``output_name``), or a dict of every output by name (a model with
            several outputs is compared on all of them, by relative RMSE only).
        output_name: the output ``reference`` holds, when it is one array.

    Returns:
        ``{"xnnpack": row, "builtin": row}``; a row holds ``ok``, ``error``
        (why it does not run), ``top1_agreement`` (None for several outputs or
        one value per sample) and ``relative_rmse`` against the float outputs
        (averaged over outputs), and ``correct`` (False: the kernels run but
        compute wrong results).
    """
    references = reference if isinstance(reference, dict) else {output_name: reference}
    several = len(references) > 1
    result = {}
    for name, resolver in (("xnnpack", "auto"), ("builtin", "no_delegates")):
        try:
            runner = TFLiteRunner(content, op_resolver=resolver)
            if several:
                outs = dict(zip(references, runner.predict(x, output_names=list(references))))
            elif output_name in runner.output_names:
                outs = {output_name: runner.predict(x, output_names=[output_name])}
            else:
                outs = {output_name: runner.predict(x)}
        except (RuntimeError, ValueError) as err:
            result[name] = {"ok": False, "correct": False,
                            "error": str(err).strip().splitlines()[0][:300]}
            continue
        rmse = relative_rmse(references, outs)
        agreement = None
        if not several:
            ref = np.asarray(next(iter(references.values())), np.float64).reshape(len(x), -1)
            out = np.asarray(next(iter(outs.values())), np.float64).reshape(len(x), -1)
            if ref.shape[1] > 1:
                agreement = float(np.mean(out.argmax(1) == ref.argmax(1)))
        correct = bool(np.isfinite(rmse) and rmse <= 1.0 and
                       (agreement is None or agreement >= _BROKEN_AGREEMENT))
        result[name] = {"ok": True, "correct": correct, "error": None,
                        "top1_agreement": agreement, "relative_rmse": rmse}
    return result
