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
* ``per_channel=False`` quantizes the fixed modes' weights with one scale per
  tensor; with mixed precision, ``per_channel="auto"`` lets each layer also
  take int8 or int4 weights with one scale per tensor, which drops its
  float32 scales and int64 zero points per output channel (for the weights
  and the int32 biases: 24 bytes a channel, often more than int4 saves on a
  narrow layer; see ``benchmarks/results/mixed_precision.json``'s ``bytes``).
* ``"mixed_precision"``: a bit width per layer, chosen by measurement (see
  :func:`tfedge.mixed_precision.choose_bits`): 4 (int4 weights, int8 activations), 8 (int8) or
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
import time
from typing import Any

import numpy as np
from absl import logging

from tfedge import quant_debug
from tfedge.artifact import (MODE_DESCRIPTIONS, TFLiteArtifact, check_full_integer,
                             runtime_settings, trust)
from tfedge.calibration import (check_num_samples, check_representative_range, data_range,
                                representative_samples, split_eval_data)
from tfedge.card import tool_versions
from tfedge.errors import ConversionError
from tfedge.lowbit_quantizer import (INT4_OPS, QuantizerSession, Rule, check_runtimes,
                                     mode_rules, quantizer_modules)
from tfedge.mixed_precision import MixedPrecisionReport, choose_bits, layer_options
from tfedge.source import make_converter, model_source, run_converter
from tfedge._validate import compare_outputs, run_all_outputs, run_outputs

__all__ = ["INT4_OPS", "MixedPrecisionReport", "QuantizerSession", "Rule", "choose_bits",
           "convert_lowbit", "mode_rules"]
_STATIC_MODES = ("w4a8", "litert_int8", "mixed_precision")


# ----------------------------------------------------------------------------
# The entry point (called by tfedge.convert)
# ----------------------------------------------------------------------------
def convert_lowbit(model: Any, representative_data: Any = None, *, mode: str,
                   input_type: str | None = None, output_type: str | None = None,
                   num_samples: int = 300, batch_size: int | None = 1,
                   signature: str | None = None, tolerance: float | None = None,
                   eval_data: Any = None, custom_objects: dict[str, Any] | None = None,
                   max_size_bytes: int | None = None, bits: dict[str, int] | None = None,
                   allow_float_ops: bool = False, strict: bool = False,
                   per_channel: bool | str = True) -> Any:
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
    check_num_samples(num_samples)
    quantizer_modules()  # fail first, before tracing anything
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
    if per_channel not in (True, False, "auto"):
        raise ValueError(f"per_channel={per_channel!r}: give True (a weight scale per output "
                         "channel), False (one per tensor) or, with mixed precision, 'auto' "
                         "(each layer's choice, by measurement).")
    mixed = mode == "mixed_precision"
    if (per_channel == "auto" and not mixed) or (per_channel is False and mixed):
        raise ValueError(f"per_channel={per_channel!r} with mode={mode!r}: per_channel='auto' "
                         "lets mixed precision choose per layer (max_size_bytes= or "
                         "tolerance=); the fixed modes take True or False.")
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
        # the int8 path's check: calibration preprocessed unlike the model's / eval data
        check_representative_range(samples, eval_x, source.keras_model, strict=strict)
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
    # several outputs (a detector): compared on all of them, by relative output RMSE
    references = source.reference_outputs(check_x)
    reference = references[output_name]
    compared = references if len(references) > 1 else reference

    if mode == "mixed_precision":
        loss_fn = quant_debug.OutputLoss(references if len(references) > 1 else reference,
                                          check_x, eval_y, output_name)
        options = layer_options(session.fb, source.keras_model,
                                per_tensor=per_channel == "auto")
        content, report = choose_bits(session, options, loss_fn, max_size_bytes=max_size_bytes,
                                      tolerance=tolerance, bits=bits)
        details["mixed_precision"] = report.to_dict()
        details["lowbit"] = {"bits": report.bits}
    else:
        rules = [dataclasses.replace(r, per_channel=bool(per_channel)) if not r.block_size
                 else r for r in mode_rules(mode)]
        content = session.quantize(rules)
        details["lowbit"] = {"recipe": [dataclasses.asdict(r) for r in rules]}
    details["quantize_seconds"] = round(time.perf_counter() - started, 3)

    artifact = TFLiteArtifact(content, mode=mode, num_calibration_samples=len(samples),
                                          details=details)
    if static:
        check_full_integer(artifact, allow_float_ops)
    runtimes = check_runtimes(content, check_x, compared, output_name)
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
        if len(references) > 1:
            names = list(references)
            candidates = run_all_outputs(content, eval_x, names, artifact.op_resolver)
            artifact.validation = compare_outputs([references[n] for n in names],
                                                  [candidates[n] for n in names], mode=mode,
                                                  names=names)
        else:
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

