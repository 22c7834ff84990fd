"""The microcontroller handoff bundle: the model as C sources, verified in TFLM.

:func:`export_micro` writes ``model.tflite``, ``model_data.cc``/``.h`` (an
aligned C array, its length and the measured tensor arena),
``op_resolver.h`` sized for exactly the model's ops, sample inputs/outputs
and the model card, once TFLM's outputs equal LiteRT's.
:func:`check_micro` is the micro half of :func:`tfedge.check_bundle`. The
TFLM runtime itself is driven by :mod:`tfedge.micro`.

Where LiteRT's optimized builtin kernels round differently from TFLM (on a
MobileNetV3-Small, by up to six steps), a micro bundle is checked against
LiteRT's reference kernels instead (``op_resolver="reference"``), of which
TFLM's kernels are ports; the card says which kernels the samples came from.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from absl import logging

from tfedge import handoff, micro
from tfedge.artifact import as_artifact
from tfedge.bundle_folder import check_out_dir, staged
from tfedge.errors import VerificationError


def export_micro(artifact: Any, out_dir: str | os.PathLike, *, sample_inputs: Any = None,
                 name: str = "model", description: str = "",
                 labels: Sequence[str] | None = None, max_diff: int = 0,
                 arena_size: int | None = None, validation: Any = None,
                 benchmark: Any = None) -> handoff.Bundle:
    """Writes the microcontroller (TFLM) handoff bundle, verified in TFLM.

    Before anything is written: every op must have a TFLM kernel, the model
    must run in TFLM's interpreter (in a subprocess, so a TFLM crash becomes
    an error), and TFLM's outputs on the samples must equal LiteRT's (bit
    for bit for integer outputs). The tensor arena is measured as the
    smallest one TFLM runs the model in.

    Files: ``model.tflite``, ``model_data.cc``/``model_data.h`` (the model as
    an ``alignas(16)`` const array, its length, ``k<Name>TensorArenaSize``),
    ``op_resolver.h`` (``MicroMutableOpResolver<N>`` and
    ``Register<Name>Ops``), ``samples.npz`` and ``model_card.json``.

    Args:
        artifact: a :class:`~tfedge.TFLiteArtifact`, flatbuffer bytes
            or a ``.tflite`` path. TFLM wants full int8 (uint8 is deprecated
            there).
        out_dir: the bundle folder: new, empty, or an earlier bundle, which
            is replaced whole (written beside it, then swapped in: a kill
            leaves the old bundle or the new one).
        sample_inputs: inputs preprocessed as for training (float, quantized
            here) or already in the input dtype; default 32 random inputs.
        name: model name; also names the C symbols.
        description: what the model does.
        labels: class names in output order, recorded in the card.
        max_diff: largest difference allowed between TFLM's and LiteRT's
            integer outputs, in quantization steps. 0 (default) demands
            bit-exact outputs; TFLM and LiteRT do not round requantization
            identically, so some models differ by one step on a few values,
            and ``max_diff=1`` accepts that (the count is in the card).
        arena_size: tensor arena bytes to state instead of the searched
            minimum plus headroom (e.g. the size the firmware reserves).
        validation: a ValidationReport to record in the card.
        benchmark: a benchmark report to record in the card.

    Returns:
        The :class:`Bundle` (``bundle.arena_bytes`` is the measured arena).

    Raises:
        ValueError: ``out_dir`` is a file or holds other files (see
            :func:`check_out_dir`); ``sample_inputs`` do not fit the model.
        InvalidModelFileError: LiteRT cannot prepare the model.
        UnsupportedModelError: an op has no TFLM kernel (the op is named).
        VerificationError: TFLM crashed or failed on the model (also: it
            cannot run in the given ``arena_size``), or its outputs differ
            from LiteRT's.
        ValueError: ``arena_size`` is not a positive number of bytes.

    Example:

    >>> b = tfedge.export_micro(artifact, "tflite_models/digits/micro",  # doctest: +SKIP
    ...                         sample_inputs=x_test[:32], name="digits")
    >>> b.arena_bytes  # doctest: +SKIP
    4400
    """
    out_dir = check_out_dir(out_dir)  # before any work
    artifact = as_artifact(artifact)
    if arena_size is not None and (int(arena_size) != arena_size or arena_size <= 0):
        raise ValueError(f"arena_size={arena_size!r} must be a positive whole number of bytes "
                         "(or None to measure the smallest arena).")
    methods = micro.resolver_methods(artifact)  # unsupported ops fail here, first
    if any(t.dtype == "UINT8" for t in artifact.inputs + artifact.outputs):
        logging.warning("tfedge: the model has uint8 inputs/outputs; TFLM deprecated uint8, "
                        "convert with input_type='int8' for microcontrollers.")
    inputs, source = handoff.make_samples(artifact, sample_inputs)
    reference = handoff.litert_outputs(artifact.content, inputs)
    try:
        run = micro.run_tflm(artifact.content, inputs, num_outputs=len(artifact.outputs),
                             arena_size=None if arena_size is None else int(arena_size))
    except VerificationError as err:  # int4 / int2 weights: say why, and what runs instead
        reason = micro.low_bit_refusal(artifact, str(err))
        if reason is None:
            raise
        raise VerificationError(f"{reason} The embedded bundle was not written.") from err
    if arena_size is None:
        stated, arena_facts = run.arena_bytes + handoff.ARENA_HEADROOM, {
            "arena_min_bytes": run.arena_bytes, "arena_recorded_bytes": run.recorded_bytes,
            "arena_headroom_bytes": handoff.ARENA_HEADROOM,
            "arena_measured_by": (
                "search: the smallest multiple of 16 bytes in which TFLM allocates the model "
                "and runs the samples (16 bytes less fails), starting from the "
                "RecordingMicroAllocator's total (a lower bound), plus 16 bytes of headroom "
                "for a buffer that is not 16-byte aligned"),
            "arena_probes": run.probes}
    else:
        stated, arena_facts = int(arena_size), {
            "arena_measured_by": "given (arena_size=); TFLM ran the samples in exactly this "
                                 "arena"}
    agreement = handoff.compare_outputs(reference, run.outputs, max_diff)
    kernels = handoff.REFERENCE_RESOLVER
    if not agreement["equal"]:
        # TFLM's kernels are ports of TFLite's reference kernels: where LiteRT's
        # optimized builtin kernels round differently, the reference ones are the check.
        builtin = agreement
        reference_kernels = handoff.litert_outputs(artifact.content, inputs, "reference")
        agreement = handoff.compare_outputs(reference_kernels, run.outputs, max_diff)
        if agreement["equal"]:
            reference, kernels = reference_kernels, "reference"
            agreement["builtin_kernels"] = builtin
            agreement["summary"] += (" against LiteRT's reference kernels (its optimized "
                                     f"builtin kernels differ: {builtin['summary']})")
    if not agreement["equal"]:
        hint = ""
        if builtin.get("max_abs_diff", 0) <= 1 and not max_diff:
            hint = (" One-step differences come from requantization rounding, which TFLM "
                    "and LiteRT do not implement identically; pass max_diff=1 "
                    "(tfedge export --max-diff 1) to accept them.")
        raise VerificationError(
            f"TFLM's outputs differ from LiteRT's builtin kernels ({builtin['summary']}) "
            f"and from its reference kernels ({agreement['summary']})."
            f"{hint} The embedded bundle was not written.")
    xnnpack = handoff.xnnpack_agreement(artifact, artifact.content, inputs, reference)

    source_cc, header = micro.model_data_sources(
        artifact.content, name, stated, sha256=artifact.sha256,
        header_name=handoff.MODEL_DATA_HEADER,
        headroom=handoff.ARENA_HEADROOM if arena_size is None else None)
    counts = artifact.flatbuffer.op_counts()
    verification = {**agreement, "summary": f"TFLM matches LiteRT: {agreement['summary']}",
                    "xnnpack_vs_builtin_kernels": xnnpack}
    with staged(out_dir) as staging:
        handoff.write_file(staging, handoff.MODEL_FILE, artifact.content)
        handoff.write_file(staging, handoff.MODEL_DATA_SOURCE, source_cc)
        handoff.write_file(staging, handoff.MODEL_DATA_HEADER, header)
        handoff.write_file(staging, handoff.OP_RESOLVER_HEADER,
                           micro.resolver_header(name, methods, counts))
        handoff.save_samples(staging, inputs, reference)
        files = [handoff.MODEL_FILE, handoff.MODEL_DATA_SOURCE, handoff.MODEL_DATA_HEADER,
                 handoff.OP_RESOLVER_HEADER,
                 handoff.SAMPLES_FILE]
        bundle = handoff.finish_bundle("micro", staging, artifact, files, {
            "tflm_version": micro.tflm_version(), "arena_bytes": stated, **arena_facts,
            "ops": [{"op": op, "method": m, "count": counts.get(op, 0)} for op, m in methods],
            "symbols": micro.c_symbols(name),
            "samples": {"file": handoff.SAMPLES_FILE, "count": len(inputs[0]), "source": source,
                        "litert_op_resolver": kernels},
            "verification": verification},
            name=name, description=description, labels=list(labels) if labels else None,
            validation=validation, benchmark=benchmark, out_dir=out_dir)
    logging.info("tfedge: wrote the micro bundle of %r to %s (%s)", name, out_dir,
                 verification["summary"])
    return bundle


def check_micro(result: handoff.BundleCheck, directory: str, artifact: Any, facts: dict[str, Any],
                 samples: Any) -> None:
    def read(name):
        with open(os.path.join(directory, name)) as f:
            return f.read()

    source = result.guard("C array", read, handoff.MODEL_DATA_SOURCE)
    if source is not None:
        length = f"{facts['symbols']['length']} = {len(artifact.content)};"
        same = micro.read_model_data(source) == artifact.content and length in source
        result.add("C array", same,
                   f"{handoff.MODEL_DATA_SOURCE} holds model.tflite's "
                   f"{len(artifact.content):,} bytes"
                   if same else f"{handoff.MODEL_DATA_SOURCE} differs from model.tflite")
    methods = result.guard("TFLM ops", micro.resolver_methods, artifact)
    resolver = result.guard("op resolver", read, handoff.OP_RESOLVER_HEADER)
    if methods is not None and resolver is not None:
        missing = [m for _, m in methods if f"resolver.{m}()" not in resolver]
        result.add("op resolver", not missing, f"{len(methods)} ops registered" if not missing
                   else f"{handoff.OP_RESOLVER_HEADER} lacks {', '.join(missing)}")
    if samples is None or methods is None:
        return
    inputs, saved = samples
    run = result.guard("TFLM", lambda: micro.run_tflm(
        artifact.content, inputs, num_outputs=len(artifact.outputs),
        arena_size=facts["arena_bytes"]))
    if run is not None:
        result.add("TFLM arena", True, f"runs in the recorded {facts['arena_bytes']:,} bytes")
        allowed = facts["verification"].get("allowed_integer_diff", 0)
        agreement = handoff.compare_outputs(saved, run.outputs, allowed)
        result.add("TFLM reproduces samples", agreement["equal"], agreement["summary"])
