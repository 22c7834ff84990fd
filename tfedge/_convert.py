"""``tfedge.convert``: a model to the TFLite flatbuffer its target needs, checked.

The entry point of the conversion stage, over its layers: the model
source and the converter call (:mod:`tfedge.source`), calibration data
(:mod:`tfedge.calibration`) and the artifact (:mod:`tfedge.artifact`).
This module holds :func:`convert` and the sparse path.

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

import math
import time
from typing import Any

import numpy as np
from absl import logging

from tfedge import lowbit
from tfedge.artifact import (INTEGER_MODES, IO_TYPES, LOWBIT_MODES, MODE_DESCRIPTIONS, MODES,
                             TFLiteArtifact, check_full_integer, runtime_settings, trust)
from tfedge.calibration import (check_num_samples, check_representative_range, data_range,
                                representative_samples, split_eval_data)
from tfedge.quant_debug import accuracy_aware
from tfedge.source import (ModelSource, is_quantization_aware_model, make_converter,
                           model_source, run_converter)
from tfedge._validate import compare_outputs, run_outputs

# A weight tensor with at least this fraction of zeros that the sparse encoder
# left dense is reported (the encoder itself skips tensors under about 30%).
SPARSE_REPORT_THRESHOLD = 0.1
_ITEM_BYTES = {"INT8": 1, "UINT8": 1, "INT16": 2, "FLOAT16": 2, "FLOAT32": 4, "INT32": 4}


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
    exact = mode in INTEGER_MODES
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
        raise ValueError(f"Unknown mode {mode!r}; use one of {', '.join(MODES + LOWBIT_MODES)}.")
    default_io = "int8" if mode == "int8" else "float32"
    input_type = input_type or default_io
    output_type = output_type or default_io
    for name, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in IO_TYPES:
            raise ValueError(f"{name}={value!r}; use one of {', '.join(IO_TYPES)}.")
        if value != "float32" and mode != "int8":
            raise ValueError(f"{name}={value!r} needs mode='int8'; mode={mode!r} keeps "
                             "float32 inputs and outputs.")
    return input_type, output_type


def convert(model: Any, representative_data: Any = None, *, mode: str = "int8",
            input_type: str | None = None, output_type: str | None = None,
            num_samples: int = 300, allow_float_ops: bool = False,
            batch_size: int | None = 1, signature: str | None = None,
            per_channel: bool | str = True, sparse: bool = False,
            tolerance: float | None = None, eval_data: Any = None,
            custom_objects: dict[str, Any] | None = None,
            max_size_bytes: int | None = None,
            bits: dict[str, int] | None = None,
            strict: bool = False) -> TFLiteArtifact:
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
            for one scale per tensor (some DSPs/NPUs need that; a smaller
            file: no per-channel scales and zero points). With mixed
            precision, ``"auto"``: each layer may also go per-tensor, chosen
            by measurement like its bit width.
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
        max_size_bytes: mixed precision (``mode="mixed_precision"``, implied
            when ``max_size_bytes`` or ``bits`` is given): the largest
            accepted file; each layer's bit width (4, 8, or 16x8) is chosen
            by measured sensitivity to meet it at the least accuracy cost.
            With ``mode="mixed_precision"``, ``tolerance`` asks instead for
            the smallest model within that loss on ``eval_data``. See
            :mod:`tfedge.lowbit` for these and the other low-bit modes
            (``"w4a8"``, ``"int4_weights"``, ``"int4_blockwise"``,
            ``"int2_blockwise"``, ``"litert_int8"``), which need
            ``pip install litert-quantizer``.
        bits: per-layer bit widths fixed by hand, e.g. ``{"dense_1": 4}``
            (4: int4 weights; 8: int8; 16: int16 activations, int8 weights).
        strict: raise instead of warning when the representative data look
            preprocessed differently from what the model expects (0..255
            pixels for a model without a Rescaling layer, a range far from
            ``eval_data``'s); see
            :func:`tfedge.calibration.check_representative_range`.

    Returns:
        A :class:`TFLiteArtifact` that states its mode, signatures and the
        runtime settings it needs.

    Raises:
        ValueError: unknown mode or I/O type, ``num_samples`` < 1, missing or
            ill-formed representative data (or, with ``strict``, data
            preprocessed unlike the model's), tolerance without eval data.
        UnsupportedModelError: a model or file that cannot be read.
        ConversionError: the converter failed (its message is kept), or an
            integer mode produced float ops.

    Example:

    >>> art = tfedge.convert(model, representative_data=x_train[:300])  # doctest: +SKIP
    >>> art.save("tflite_models/digits/model.tflite")  # doctest: +SKIP
    >>> art = tfedge.convert(model, x_train[:300], tolerance=0.01,
    ...                      eval_data=(x_val, y_val))  # doctest: +SKIP
    """
    check_num_samples(num_samples)
    # --- below 8 bits: the LiteRT Quantizer (tfedge/lowbit.py) ---
    if (max_size_bytes is not None or bits) and mode == "int8":
        mode = "mixed_precision"
    if mode in LOWBIT_MODES:
        if sparse:
            raise ValueError(f"sparse=True is not supported with mode={mode!r}.")
        return lowbit.convert_lowbit(
            model, representative_data, mode=mode, input_type=input_type,
            output_type=output_type, num_samples=num_samples, batch_size=batch_size,
            signature=signature, tolerance=tolerance, eval_data=eval_data,
            custom_objects=custom_objects, max_size_bytes=max_size_bytes, bits=bits,
            allow_float_ops=allow_float_ops, strict=strict, per_channel=per_channel)
    if max_size_bytes is not None or bits:
        raise ValueError(f"max_size_bytes= and bits= choose per-layer bit widths: use "
                         f"mode='mixed_precision' (or leave mode out), not mode={mode!r}.")
    if per_channel not in (True, False):
        raise ValueError(f"per_channel={per_channel!r}: mode={mode!r} takes True or False "
                         "('auto' is for mixed precision: max_size_bytes= or "
                         "mode='mixed_precision').")
    # --- end of the low-bit dispatch ---
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
    if mode in INTEGER_MODES and len(source.signatures) > 1:
        raise ValueError(f"{source.name!r} has signatures {', '.join(source.signatures)}; an "
                         f"integer mode calibrates one: pass signature='...'.")
    if mode in INTEGER_MODES and len(source.signature.inputs) != 1:
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
    if mode in INTEGER_MODES:
        qat = representative_data is None and mode == "int8" and \
            is_quantization_aware_model(source.keras_model)
        if qat:
            logging.info("tfedge: %r is quantization-aware: its ranges come from QAT.",
                         source.name)
            details["calibration"] = "quantization-aware training"
        else:
            samples = representative_samples(representative_data, source.input_shape,
                                             num_samples)
            details["calibration"] = {"samples": len(samples), "input_range": data_range(samples)}
            check_representative_range(samples, eval_x, source.keras_model, strict=strict)

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
        artifact = accuracy_aware(source, artifact, samples, eval_x, eval_y,
                                              tolerance=tolerance, **settings)
    elif mode in INTEGER_MODES:
        check_full_integer(artifact, allow_float_ops)

    trust(artifact.content)
    artifact.runtime = runtime_settings(artifact.content)
    if artifact.runtime["op_resolver"] != "auto":
        logging.warning("tfedge: %s needs op_resolver=%r: %s", source.name,
                        artifact.runtime["op_resolver"], artifact.runtime["reason"])
    if eval_x is not None:
        candidate = run_outputs(artifact.content, eval_x, artifact.op_resolver,
                                source.signature.outputs[0])
        artifact.validation = compare_outputs(source.reference(eval_x), candidate, eval_y,
                                              mode=mode)
        artifact.validation.op_resolver = artifact.op_resolver
    artifact.details["conversion_seconds"] = round(time.perf_counter() - started, 3)
    logging.info("tfedge: %s", str(artifact).splitlines()[0])
    return artifact
