"""The Android handoff bundle: the model with its facts embedded, checked in LiteRT.

:func:`export_android` writes ``model.tflite`` with the handoff facts (labels,
input normalization, input/output quantization, name, version, description,
signature names) embedded in the flatbuffer's metadata table and repeated in
``metadata.json``, ``labels.txt``, sample inputs/outputs and the model card.
:func:`check_android` is the Android half of :func:`tfedge.check_bundle`.

Why a JSON sidecar and not TFLite Support metadata: the TFLite Support
metadata writers (``tflite-support``, last release 0.4.4) require
``protobuf<4`` and cannot be installed beside TensorFlow 2.21
(``protobuf>=6.31``). tfedge therefore writes the same facts as JSON, stored
both next to the model and inside it, under the metadata name
:data:`tfedge.handoff.METADATA_ENTRY` (the name ``TFLITE_METADATA`` is left
alone: Task Library parses it as a TFLite Support flatbuffer).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
from absl import logging

from tfedge import handoff
from tfedge import metadata as metadata_lib
from tfedge.artifact import IO_TYPES, TFLiteArtifact, as_artifact
from tfedge.bundle_folder import check_out_dir, staged
from tfedge.errors import VerificationError
from tfedge.report import to_json, write_json


def _as_floats(value: Any, what: str) -> list[float] | None:
    if value is None:
        return None
    values = [float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64))]
    if not values or not all(np.isfinite(values)):
        raise ValueError(f"{what} must be finite numbers, got {value!r}.")
    return values


def _normalization(artifact: Any, norm_mean: Any, norm_std: Any) -> dict[str, Any] | None:
    mean, std = _as_floats(norm_mean, "norm_mean"), _as_floats(norm_std, "norm_std")
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError("Give both norm_mean and norm_std (the app computes "
                         "(x - mean) / std), or neither.")
    if any(s == 0 for s in std):
        raise ValueError(f"norm_std={std} contains 0: std divides the input.")
    channels = artifact.inputs[0].shape[-1]
    for values, what in ((mean, "norm_mean"), (std, "norm_std")):
        if len(values) not in (1, channels):
            raise ValueError(f"{what} has {len(values)} values; give 1 or one per input "
                             f"channel ({channels}).")
    return {"mean": mean, "std": std}


def _tensor_facts(tensor: Any, signature_name: str | None) -> dict[str, Any]:
    return {"name": tensor.name, "signature_name": signature_name, "index": tensor.index,
            "shape": list(tensor.shape), "dtype": handoff.tensor_io_type(tensor),
            "quantization": ({"scale": tensor.scale[0], "zero_point": tensor.zero_point[0]}
                             if tensor.scale else None)}


def android_metadata(artifact: Any, *, name: str, version: str, description: str,
                     labels: list[str] | None, normalization: dict[str, Any] | None
                     ) -> dict[str, Any]:
    """The facts an Android app needs to feed the model and read its outputs.

    Returns:
        A JSON-ready dict: name, version, description, signature keys, and
        per input/output tensor its signature name, shape, dtype and
        quantization; the input normalization and the labels.
    """
    signatures = metadata_lib.read_signatures(artifact.content)
    key = "serving_default" if "serving_default" in signatures else next(iter(signatures), None)
    by_index = {}
    if key is not None:
        for kind in ("inputs", "outputs"):
            by_index.update({index: sig_name
                             for sig_name, index in signatures[key][kind].items()})
    inputs = [_tensor_facts(t, by_index.get(t.index)) for t in artifact.inputs]
    outputs = [_tensor_facts(t, by_index.get(t.index)) for t in artifact.outputs]
    inputs[0]["normalization"] = normalization
    # Labels belong to the first output with one value per label (a detector's
    # scores, not its boxes).
    labelled = next((o for o, t in zip(outputs, artifact.outputs)
                     if labels and t.shape and t.shape[-1] == len(labels)), None)
    for o in outputs:
        o["labels_file"] = handoff.LABELS_FILE if o is labelled else None
    steps = ["x = (x - mean) / std" if normalization else None,
             "q = clamp(round(x / scale) + zero_point)" if inputs[0]["quantization"] else None]
    return {
        "format": handoff.METADATA_FORMAT, "format_version": 1,
        "name": name, "version": version, "description": description,
        "signature_key": key, "signature_keys": list(signatures),
        "input_preprocessing": "; ".join(s for s in steps if s) or "none",
        "output_postprocessing": ("y = (q - zero_point) * scale"
                                  if outputs[0]["quantization"] else "none"),
        "inputs": inputs, "outputs": outputs, "labels": labels,
    }


def _check_io_type(artifact: Any, io_type: str | None) -> str:
    actual = {handoff.tensor_io_type(t) for t in artifact.inputs + artifact.outputs}
    current = actual.pop() if len(actual) == 1 else "mixed"
    if io_type is None:
        return current
    if io_type not in IO_TYPES:
        raise ValueError(f"io_type={io_type!r}; use one of {', '.join(IO_TYPES)}.")
    if io_type != current:
        raise ValueError(
            f"io_type={io_type!r} but the model's inputs/outputs are {current}. Export does "
            "not re-quantize a finished model: convert it with that interface, e.g. "
            f"tfedge.convert(model, representative_data, input_type={io_type!r}, "
            f"output_type={io_type!r}) (the converter adds exact {io_type}<->int8 "
            "requantize ops at the boundary), then export that artifact.")
    return current


def export_android(artifact: Any, out_dir: str | os.PathLike, *,
                   labels: Sequence[str] | None = None, norm_mean: Any = None,
                   norm_std: Any = None, name: str = "model", version: str = "1",
                   description: str = "", io_type: str | None = None,
                   sample_inputs: Any = None, validation: Any = None,
                   benchmark: Any = None) -> handoff.Bundle:
    """Writes the Android handoff bundle, checked in LiteRT.

    Files: ``model.tflite`` (the facts below embedded in its metadata table
    under :data:`METADATA_ENTRY`), ``metadata.json`` (the same facts),
    ``labels.txt`` (with labels), ``samples.npz`` (raw inputs and LiteRT
    outputs) and ``model_card.json`` (with every file's sha256).

    Args:
        artifact: a :class:`~tfedge.TFLiteArtifact`, flatbuffer bytes
            or a ``.tflite`` path.
        out_dir: the bundle folder: new, empty, or an earlier bundle, which
            is replaced whole (written beside it, then swapped in: a kill
            leaves the old bundle or the new one).
        labels: class names in output order (as many as output classes).
        norm_mean: input normalization mean, one value or one per channel:
            the app feeds ``(x - mean) / std``.
        norm_std: input normalization std, as ``norm_mean``.
        name: model name.
        version: model version string.
        description: what the model does, for the app developer.
        io_type: ``"int8"``, ``"uint8"`` or ``"float32"``: the input/output
            type the app expects; it must be the artifact's (convert with
            ``input_type``/``output_type`` to change it). None: the
            artifact's. Android's Task Library takes uint8 or float32 images.
        sample_inputs: inputs preprocessed as for training (float, quantized
            here) or already in the input dtype; default 32 random inputs.
        validation: a ValidationReport to record in the card.
        benchmark: a benchmark report to record in the card.

    Returns:
        The :class:`Bundle`.

    Raises:
        ValueError: labels, normalization or io_type do not fit the model;
            ``out_dir`` is a file or holds other files (see :func:`check_out_dir`).
        InvalidModelFileError: LiteRT cannot prepare the model.
        VerificationError: the model with metadata does not reproduce the
            original model's outputs in LiteRT.

    Example:

    >>> tfedge.export_android(artifact, "tflite_models/digits/android",  # doctest: +SKIP
    ...                       labels=[str(d) for d in range(10)], norm_mean=0.0,
    ...                       norm_std=16.0, name="digits", version="1.0")
    """
    out_dir = check_out_dir(out_dir)  # before any work
    artifact = as_artifact(artifact)
    io = _check_io_type(artifact, io_type)
    labels = list(labels) if labels is not None else None
    if labels is not None:
        classes = [t.shape[-1] if t.shape else 1 for t in artifact.outputs]
        if len(labels) not in classes:
            raise ValueError(f"{len(labels)} labels, but the outputs have "
                             f"{' / '.join(map(str, classes))} output classes: give one "
                             "label per class of the class-scores output, in output order.")
        if any("\n" in str(label) for label in labels):
            raise ValueError("Labels must not contain newlines (labels.txt has one per line).")
        labels = [str(label) for label in labels]
    normalization = _normalization(artifact, norm_mean, norm_std)

    facts = android_metadata(artifact, name=name, version=str(version),
                             description=description, labels=labels,
                             normalization=normalization)
    facts_json = to_json(facts) + "\n"  # embedded as is; metadata.json is the same text

    tagged = TFLiteArtifact(metadata_lib.embed_metadata(
        artifact.content, {handoff.METADATA_ENTRY: facts_json.encode()}), mode=artifact.mode,
        num_calibration_samples=artifact.num_calibration_samples)

    inputs, source = handoff.make_samples(artifact, sample_inputs)
    outputs = handoff.litert_outputs(tagged.content, inputs)
    agreement = handoff.compare_outputs(handoff.litert_outputs(artifact.content, inputs), outputs)
    xnnpack = handoff.xnnpack_agreement(artifact, tagged.content, inputs, outputs)
    if not agreement["equal"]:
        raise VerificationError("Embedding the metadata changed the model's LiteRT outputs "
                                f"({agreement['summary']}); this is a tfedge bug, please report.")

    verification = {**agreement, "summary": "LiteRT loads the model with metadata and "
                    f"reproduces the original model: {agreement['summary']}",
                    "xnnpack_vs_builtin_kernels": xnnpack}
    with staged(out_dir) as staging:
        handoff.write_file(staging, handoff.MODEL_FILE, tagged.content)
        write_json(os.path.join(staging, handoff.METADATA_FILE), facts)
        files = [handoff.MODEL_FILE, handoff.METADATA_FILE]
        if labels:
            handoff.write_file(staging, handoff.LABELS_FILE, "\n".join(labels) + "\n")
            files.append(handoff.LABELS_FILE)
        handoff.save_samples(staging, inputs, outputs)
        files.append(handoff.SAMPLES_FILE)
        bundle = handoff.finish_bundle("android", staging, tagged, files,
                         {"version": str(version), "io_type": io,
                          "metadata_entry": handoff.METADATA_ENTRY,
                          "samples": {"file": handoff.SAMPLES_FILE, "count": len(inputs[0]),
                                      "source": source},
                          "verification": verification},
                         name=name, description=description, labels=labels,
                         validation=validation, benchmark=benchmark, out_dir=out_dir)
    logging.info("tfedge: wrote the android bundle of %r to %s (%s)", name, out_dir,
                 verification["summary"])
    return bundle


def check_android(result: handoff.BundleCheck, directory: str, content: bytes) -> None:
    sidecar = result.guard("metadata", lambda: json.load(
        open(os.path.join(directory, handoff.METADATA_FILE))))
    embedded = result.guard("metadata", metadata_lib.read_metadata, content)
    if sidecar is None or embedded is None:
        return
    raw = embedded.get(handoff.METADATA_ENTRY)
    same = raw is not None and json.loads(raw) == sidecar
    result.add("embedded metadata", same, f"{handoff.METADATA_ENTRY} in model.tflite equals "
               f"{handoff.METADATA_FILE}" if same
               else f"{handoff.METADATA_ENTRY} missing or different")
    labels = sidecar.get("labels")
    if labels:
        path = os.path.join(directory, handoff.LABELS_FILE)
        written = open(path).read().splitlines() if os.path.exists(path) else None
        result.add("labels", written == labels, f"{len(labels)} labels"
                   if written == labels else f"{handoff.LABELS_FILE} differs from the metadata")
