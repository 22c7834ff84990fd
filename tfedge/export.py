"""``tfedge.export``: handoff bundles for Android and embedded teams, verified.

A bundle is a folder the receiving team can use as is, whose every claim was
checked in the runtime that team uses:

- :func:`export_android`: ``model.tflite`` with its handoff facts (labels,
  input normalization, input/output quantization, name, version,
  description, signature names) embedded in the flatbuffer's metadata table
  and repeated in ``metadata.json`` for the app to read, ``labels.txt``,
  sample inputs/outputs, and the model card. Checked in LiteRT.
- :func:`export_micro`: ``model.tflite`` as an aligned C array
  (``model_data.cc``/``model_data.h``), ``op_resolver.h`` with a
  ``MicroMutableOpResolver`` sized for exactly the model's ops, the tensor
  arena measured in TensorFlow Lite for Microcontrollers, sample
  inputs/outputs and the model card. TFLM's outputs must equal LiteRT's.
- :func:`check_bundle`: re-validates a bundle (hashes, loading, samples).

Sample outputs come from LiteRT's builtin kernels without its default
XNNPACK delegate: those are the TFLite kernel semantics TFLM implements, and
on the digits CNN TFLM reproduces them bit for bit, while XNNPACK's int8
requantization differs by one step on a few values (11 of 320 there). The
XNNPACK comparison is recorded in the card as information for app teams.
Where LiteRT's optimized builtin kernels round differently from TFLM (on a
MobileNetV3-Small, by up to six steps), a micro bundle is checked against
LiteRT's reference kernels instead (``op_resolver="reference"``), of which
TFLM's kernels are ports; the card says which kernels the samples came from.

Why a JSON sidecar and not TFLite Support metadata: the TFLite Support
metadata writers (``tflite-support``, last release 0.4.4) require
``protobuf<4`` and cannot be installed beside TensorFlow 2.21
(``protobuf>=6.31``). tfedge therefore writes the same facts as JSON, stored
both next to the model and inside it, under the metadata name
:data:`METADATA_ENTRY` (the name ``TFLITE_METADATA`` is left alone: Task
Library parses it as a TFLite Support flatbuffer).

Size: about 750 lines, kept in one module for now because the two bundle
writers and :func:`check_bundle` share every helper here (samples, hashes,
the LiteRT comparison, the card) and nothing else uses them; the cut, when
it grows, is by bundle kind (Android, micro, the checker) over a shared
bundle module. The flatbuffer, metadata and TFLM layers are already their
own modules (:mod:`tfedge.flatbuffer`, :mod:`tfedge.metadata`,
:mod:`tfedge.micro`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Any, Sequence

import numpy as np
from absl import logging

from tfedge import card as card_lib
from tfedge import metadata as metadata_lib
from tfedge import micro
from tfedge.artifact import TFLiteArtifact, as_artifact
from tfedge.errors import InvalidModelFileError, VerificationError
from tfedge.bundle_folder import check_out_dir, is_temporary, staged
from tfedge.report import format_table, to_json, write_atomic, write_json
from tfedge._validate import make_interpreter, quantize_array

MODEL_FILE = "model.tflite"
METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.txt"
SAMPLES_FILE = "samples.npz"
MODEL_DATA_SOURCE = "model_data.cc"
MODEL_DATA_HEADER = "model_data.h"
OP_RESOLVER_HEADER = "op_resolver.h"
METADATA_ENTRY = "tfedge_metadata.json"
METADATA_FORMAT = "tfedge-android-metadata"
IO_TYPES = ("int8", "uint8", "float32")
_NUM_RANDOM_SAMPLES = 32
# LiteRT's builtin kernels, without the default XNNPACK delegate (see above).
REFERENCE_RESOLVER = "no_delegates"
# Bytes added to the smallest arena in a micro bundle: TFLM aligns the arena's
# start up to 16 bytes, so a buffer without alignas(16) loses up to 15 of them.
ARENA_HEADROOM = micro.ARENA_ALIGNMENT
_FLOAT_RTOL, _FLOAT_ATOL = 1e-4, 1e-5


# ----------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class Bundle:
    """A written bundle.

    Attributes:
        kind: ``"android"`` or ``"micro"``.
        directory: where it was written.
        files: file name -> size in bytes.
        card: the model card written as ``model_card.json``.
    """

    kind: str
    directory: str
    files: dict[str, int]
    card: dict[str, Any]

    @property
    def arena_bytes(self) -> int | None:
        """The TFLM tensor arena the bundle states (micro bundles), else None."""
        return self.card["bundle"].get("arena_bytes")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "directory": self.directory, "files": self.files,
                "bundle": self.card["bundle"]}

    def __str__(self) -> str:
        rows = [[name, size] for name, size in self.files.items()]
        facts = self.card["bundle"]
        lines = [format_table(["file", "bytes"], rows,
                              title=f"{self.kind} bundle in {self.directory}")]
        if self.kind == "micro":
            ops = ", ".join(o["op"] for o in facts["ops"])
            how = (f"smallest that runs {facts['arena_min_bytes']:,} + "
                   f"{facts['arena_headroom_bytes']} alignment headroom; TFLM recorded "
                   f"{facts['arena_recorded_bytes']:,}" if "arena_min_bytes" in facts
                   else "given")
            lines.append(f"tensor arena: {facts['arena_bytes']:,} bytes ({how}; TFLM "
                         f"{facts['tflm_version']}); ops: {ops}")
        check = facts["verification"]
        lines.append(f"verified: {check['summary']}")
        return "\n".join(lines)


@dataclasses.dataclass
class BundleCheck:
    """The result of :func:`check_bundle`: one row per check.

    Attributes:
        directory: the bundle checked.
        kind: ``"android"``, ``"micro"`` or ``"unknown"``.
        checks: ``(check, passed, detail)`` rows.
    """

    directory: str
    kind: str
    checks: list[tuple[str, bool, str]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(passed for _, passed, _ in self.checks)

    def add(self, check: str, passed: bool, detail: str = "") -> bool:
        self.checks.append((check, bool(passed), detail))
        return bool(passed)

    def to_dict(self) -> dict[str, Any]:
        return {"directory": self.directory, "kind": self.kind, "ok": self.ok,
                "checks": [{"check": c, "passed": p, "detail": d} for c, p, d in self.checks]}

    def to_json(self) -> str:
        return to_json(self.to_dict())

    def __str__(self) -> str:
        rows = [[c, "ok" if p else "FAILED", d] for c, p, d in self.checks]
        verdict = "bundle OK" if self.ok else "bundle FAILED its check"
        return (format_table(["check", "result", "detail"], rows,
                             title=f"{self.kind} bundle {self.directory}") + f"\n{verdict}")


# ----------------------------------------------------------------------------
# Helpers shared by both bundles
# ----------------------------------------------------------------------------
def _io_type(tensor: Any) -> str:
    return tensor.dtype.lower()


def _quantize(x: np.ndarray, tensor: Any) -> np.ndarray:
    params = (tensor.scale[0], tensor.zero_point[0]) if tensor.scale else (0.0, 0)
    return quantize_array(x, {"dtype": tensor.numpy_dtype, "quantization": params})


def _sample_inputs(artifact: Any, sample_inputs: Any,
                   seed: int = 0) -> tuple[list[np.ndarray], str]:
    """Model inputs for the bundle's samples, in the input tensors' dtypes.

    Float samples (preprocessed as for training) are quantized with the input
    tensor's scale and zero point; arrays already in the tensor's integer
    dtype are used as they are. Without samples, random values covering the
    input's range are drawn (they prove runtime agreement, not accuracy).
    """
    tensors = artifact.inputs
    if sample_inputs is None:
        rng = np.random.default_rng(seed)
        batches = []
        for t in tensors:
            shape = (_NUM_RANDOM_SAMPLES,) + tuple(t.shape[1:])
            dtype = t.numpy_dtype
            if dtype.kind in "iu":
                info = np.iinfo(dtype)
                batches.append(rng.integers(info.min, info.max, shape, endpoint=True,
                                            dtype=dtype))
            else:
                batches.append(rng.standard_normal(shape).astype(dtype))
        logging.warning("tfedge: no sample_inputs given; the bundle's samples are %d random "
                        "inputs (they check runtime agreement, not accuracy).",
                        _NUM_RANDOM_SAMPLES)
        return batches, "random"
    arrays = list(sample_inputs) if isinstance(sample_inputs, (list, tuple)) else [sample_inputs]
    if len(arrays) != len(tensors):
        raise ValueError(f"The model has {len(tensors)} inputs but {len(arrays)} sample arrays "
                         "were given: pass one array per input (samples first).")
    batches = []
    for x, t in zip(arrays, tensors):
        x = np.asarray(x)
        if x.ndim == len(t.shape) - 1:
            x = x[None]
        if tuple(x.shape[1:]) != tuple(t.shape[1:]) or len(x) == 0:
            raise ValueError(f"sample_inputs of shape {x.shape} do not fit input {t.name!r} "
                             f"of shape {t.shape}: give samples of shape {tuple(t.shape[1:])}, "
                             "samples first, preprocessed as for training.")
        if x.dtype == t.numpy_dtype and x.dtype.kind in "iu":
            batches.append(x)
        elif x.dtype.kind in "fiub":
            batches.append(_quantize(x.astype(np.float32), t))
        else:
            raise ValueError(f"sample_inputs must be numeric, got dtype {x.dtype}.")
    return batches, "given"


def litert_outputs(content: bytes, inputs: Sequence[np.ndarray],
                   op_resolver: str = REFERENCE_RESOLVER) -> list[np.ndarray]:
    """Raw outputs of the LiteRT interpreter, one sample at a time.

    Args:
        content: the flatbuffer bytes.
        inputs: one array per model input, samples first, in the input
            tensors' dtypes.
        op_resolver: as for :class:`~tfedge.TFLiteRunner`; default
            :data:`REFERENCE_RESOLVER` (builtin kernels, no XNNPACK).

    Returns:
        One array per model output, samples first, in the output dtypes.

    Raises:
        InvalidModelFileError: LiteRT cannot prepare the model.
    """
    try:
        interpreter = make_interpreter(content, op_resolver=op_resolver)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as err:  # LiteRT's own words, kept
        reason = (str(err).strip().splitlines() or [repr(err)])[0].rstrip(".?! ")
        raise InvalidModelFileError(
            f"LiteRT cannot prepare this model ({op_resolver} op resolver): {reason}. It "
            "uses an op, op version or layout this LiteRT build lacks, so no bundle can be "
            "verified: convert it again with this TensorFlow version.") from None
    in_details = interpreter.get_input_details()
    out_details = interpreter.get_output_details()
    rows = []
    for n in range(len(inputs[0])):
        for detail, batch in zip(in_details, inputs):
            interpreter.set_tensor(detail["index"], batch[n:n + 1])
        interpreter.invoke()
        rows.append([interpreter.get_tensor(d["index"]).copy() for d in out_details])
    return [np.concatenate([row[k] for row in rows]) for k in range(len(out_details))]


def _agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
               max_diff: int = 0) -> dict[str, Any]:
    """How two runtimes' raw outputs compare.

    Integer outputs may differ by at most ``max_diff`` quantization steps
    (0: bit-exact); float outputs must be close (``_FLOAT_RTOL``/``_FLOAT_ATOL``).
    """
    if len(reference) != len(candidate):
        return {"equal": False, "summary": f"{len(candidate)} outputs instead of "
                                           f"{len(reference)}"}
    for ref, got in zip(reference, candidate):
        if ref.shape != got.shape:
            return {"equal": False, "summary": f"shape {got.shape} instead of {ref.shape}"}
    values = differing = over = 0
    largest, exact = 0.0, True
    for ref, got in zip(reference, candidate):
        diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        largest = max(largest, float(diff.max()) if diff.size else 0.0)
        values += diff.size
        if ref.dtype.kind in "iub":
            differing += int(np.count_nonzero(diff))
            over += int(np.count_nonzero(diff > max_diff))
        else:
            exact = False
            far = int(np.count_nonzero(~np.isclose(got, ref, rtol=_FLOAT_RTOL, atol=_FLOAT_ATOL)))
            differing += far
            over += far
    samples = len(reference[0]) if reference else 0
    top1 = None
    if reference and reference[0].ndim == 2 and reference[0].shape[1] > 1:
        top1 = float(np.mean(reference[0].argmax(1) == candidate[0].argmax(1)))
    if differing == 0:
        how = "bit-exact" if exact else f"within rtol {_FLOAT_RTOL:g}, atol {_FLOAT_ATOL:g}"
        summary = f"{samples} samples, outputs equal ({how})"
    else:
        summary = (f"{differing} of {values} output values differ on {samples} samples, by at "
                   f"most {largest:g}" + (f" (allowed: {max_diff})" if max_diff else "")
                   + (f"; top-1 equal on {top1:.0%} of samples" if top1 is not None else ""))
    return {"equal": over == 0, "samples": samples, "values": values,
            "differing_values": differing, "max_abs_diff": largest,
            "allowed_integer_diff": max_diff, "top1_agreement": top1, "summary": summary}


def _xnnpack_agreement(artifact: Any, content: bytes, inputs: Sequence[np.ndarray],
                       reference: Sequence[np.ndarray]) -> dict[str, Any]:
    """XNNPACK's outputs vs the builtin kernels', or why it was not run (a model that
    needs op_resolver="no_delegates", such as a sparse int8 one, does not prepare there)."""
    settings = artifact.runtime_settings()
    if settings["op_resolver"] != "auto":
        return {"equal": None, "summary": f"not run: {settings['reason']}"}
    return _agreement(reference, litert_outputs(content, inputs, "auto"))


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _write(directory: str, name: str, data: bytes | str) -> None:
    write_atomic(os.path.join(directory, name), data)


def _save_samples(directory: str, inputs: Sequence[np.ndarray],
                  outputs: Sequence[np.ndarray]) -> None:
    arrays = {f"input_{i}": x for i, x in enumerate(inputs)}
    arrays.update({f"output_{k}": y for k, y in enumerate(outputs)})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _write(directory, SAMPLES_FILE, buffer.getvalue())


def _load_samples(directory: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    with np.load(os.path.join(directory, SAMPLES_FILE)) as data:
        inputs = [data[k] for k in sorted((k for k in data.files if k.startswith("input_")),
                                          key=lambda k: int(k.split("_")[1]))]
        outputs = [data[k] for k in sorted((k for k in data.files if k.startswith("output_")),
                                           key=lambda k: int(k.split("_")[1]))]
    return inputs, outputs


def _finish(kind: str, directory: str, artifact: Any, files: list[str], facts: dict[str, Any],
            *, name: str, description: str, labels: list[str] | None, validation: Any,
            benchmark: Any, out_dir: str) -> Bundle:
    """Hashes the files written into ``directory`` (the staging folder) into the card."""
    card = card_lib.model_card(artifact, name=name, description=description, labels=labels,
                               validation=validation, benchmark=benchmark)
    card["bundle"] = {"kind": kind, **facts, "files": {
        f: {"sha256": _sha256(os.path.join(directory, f)),
            "size_bytes": os.path.getsize(os.path.join(directory, f))} for f in files}}
    card_lib.write_model_card(directory, card)
    sizes = {f: card["bundle"]["files"][f]["size_bytes"] for f in files}
    sizes[card_lib.CARD_FILENAME] = os.path.getsize(os.path.join(directory, card_lib.CARD_FILENAME))
    return Bundle(kind=kind, directory=out_dir, files=sizes, card=card)


# ----------------------------------------------------------------------------
# Android
# ----------------------------------------------------------------------------
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
            "shape": list(tensor.shape), "dtype": _io_type(tensor),
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
        o["labels_file"] = LABELS_FILE if o is labelled else None
    steps = ["x = (x - mean) / std" if normalization else None,
             "q = clamp(round(x / scale) + zero_point)" if inputs[0]["quantization"] else None]
    return {
        "format": METADATA_FORMAT, "format_version": 1,
        "name": name, "version": version, "description": description,
        "signature_key": key, "signature_keys": list(signatures),
        "input_preprocessing": "; ".join(s for s in steps if s) or "none",
        "output_postprocessing": ("y = (q - zero_point) * scale"
                                  if outputs[0]["quantization"] else "none"),
        "inputs": inputs, "outputs": outputs, "labels": labels,
    }


def _check_io_type(artifact: Any, io_type: str | None) -> str:
    actual = {_io_type(t) for t in artifact.inputs + artifact.outputs}
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
                   benchmark: Any = None) -> Bundle:
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
        artifact.content, {METADATA_ENTRY: facts_json.encode()}), mode=artifact.mode,
        num_calibration_samples=artifact.num_calibration_samples)

    inputs, source = _sample_inputs(artifact, sample_inputs)
    outputs = litert_outputs(tagged.content, inputs)
    agreement = _agreement(litert_outputs(artifact.content, inputs), outputs)
    xnnpack = _xnnpack_agreement(artifact, tagged.content, inputs, outputs)
    if not agreement["equal"]:
        raise VerificationError("Embedding the metadata changed the model's LiteRT outputs "
                                f"({agreement['summary']}); this is a tfedge bug, please report.")

    verification = {**agreement, "summary": "LiteRT loads the model with metadata and "
                    f"reproduces the original model: {agreement['summary']}",
                    "xnnpack_vs_builtin_kernels": xnnpack}
    with staged(out_dir) as staging:
        _write(staging, MODEL_FILE, tagged.content)
        write_json(os.path.join(staging, METADATA_FILE), facts)
        files = [MODEL_FILE, METADATA_FILE]
        if labels:
            _write(staging, LABELS_FILE, "\n".join(labels) + "\n")
            files.append(LABELS_FILE)
        _save_samples(staging, inputs, outputs)
        files.append(SAMPLES_FILE)
        bundle = _finish("android", staging, tagged, files,
                         {"version": str(version), "io_type": io,
                          "metadata_entry": METADATA_ENTRY,
                          "samples": {"file": SAMPLES_FILE, "count": len(inputs[0]),
                                      "source": source},
                          "verification": verification},
                         name=name, description=description, labels=labels,
                         validation=validation, benchmark=benchmark, out_dir=out_dir)
    logging.info("tfedge: wrote the android bundle of %r to %s (%s)", name, out_dir,
                 verification["summary"])
    return bundle


# ----------------------------------------------------------------------------
# Microcontrollers
# ----------------------------------------------------------------------------
def export_micro(artifact: Any, out_dir: str | os.PathLike, *, sample_inputs: Any = None,
                 name: str = "model", description: str = "",
                 labels: Sequence[str] | None = None, max_diff: int = 0,
                 arena_size: int | None = None, validation: Any = None,
                 benchmark: Any = None) -> Bundle:
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
    inputs, source = _sample_inputs(artifact, sample_inputs)
    reference = litert_outputs(artifact.content, inputs)
    try:
        run = micro.run_tflm(artifact.content, inputs, num_outputs=len(artifact.outputs),
                             arena_size=None if arena_size is None else int(arena_size))
    except VerificationError as err:  # int4 / int2 weights: say why, and what runs instead
        reason = micro.low_bit_refusal(artifact, str(err))
        if reason is None:
            raise
        raise VerificationError(f"{reason} The embedded bundle was not written.") from err
    if arena_size is None:
        stated, arena_facts = run.arena_bytes + ARENA_HEADROOM, {
            "arena_min_bytes": run.arena_bytes, "arena_recorded_bytes": run.recorded_bytes,
            "arena_headroom_bytes": ARENA_HEADROOM,
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
    agreement = _agreement(reference, run.outputs, max_diff)
    kernels = REFERENCE_RESOLVER
    if not agreement["equal"]:
        # TFLM's kernels are ports of TFLite's reference kernels: where LiteRT's
        # optimized builtin kernels round differently, the reference ones are the check.
        builtin = agreement
        reference_kernels = litert_outputs(artifact.content, inputs, "reference")
        agreement = _agreement(reference_kernels, run.outputs, max_diff)
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
    xnnpack = _xnnpack_agreement(artifact, artifact.content, inputs, reference)

    source_cc, header = micro.model_data_sources(
        artifact.content, name, stated, sha256=artifact.sha256, header_name=MODEL_DATA_HEADER,
        headroom=ARENA_HEADROOM if arena_size is None else None)
    counts = artifact.flatbuffer.op_counts()
    verification = {**agreement, "summary": f"TFLM matches LiteRT: {agreement['summary']}",
                    "xnnpack_vs_builtin_kernels": xnnpack}
    with staged(out_dir) as staging:
        _write(staging, MODEL_FILE, artifact.content)
        _write(staging, MODEL_DATA_SOURCE, source_cc)
        _write(staging, MODEL_DATA_HEADER, header)
        _write(staging, OP_RESOLVER_HEADER, micro.resolver_header(name, methods, counts))
        _save_samples(staging, inputs, reference)
        files = [MODEL_FILE, MODEL_DATA_SOURCE, MODEL_DATA_HEADER, OP_RESOLVER_HEADER,
                 SAMPLES_FILE]
        bundle = _finish("micro", staging, artifact, files, {
            "tflm_version": micro.tflm_version(), "arena_bytes": stated, **arena_facts,
            "ops": [{"op": op, "method": m, "count": counts.get(op, 0)} for op, m in methods],
            "symbols": micro.c_symbols(name),
            "samples": {"file": SAMPLES_FILE, "count": len(inputs[0]), "source": source,
                        "litert_op_resolver": kernels},
            "verification": verification},
            name=name, description=description, labels=list(labels) if labels else None,
            validation=validation, benchmark=benchmark, out_dir=out_dir)
    logging.info("tfedge: wrote the micro bundle of %r to %s (%s)", name, out_dir,
                 verification["summary"])
    return bundle


# ----------------------------------------------------------------------------
# Checking a bundle
# ----------------------------------------------------------------------------
def _guard(result: BundleCheck, check: str, fn, *args) -> Any:
    """Runs one check; an exception becomes a failed row instead of a crash."""
    try:
        return fn(*args)
    except Exception as err:  # a check must report, not raise
        result.add(check, False, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
        return None


def check_bundle(bundle_dir: str | os.PathLike) -> BundleCheck:
    """Re-validates a bundle written by :func:`export_android` or :func:`export_micro`.

    Checks that the folder holds only the files of the card's manifest, that
    every file's sha256 matches the model card, that the model
    loads in LiteRT and reproduces the saved sample outputs, and for Android
    bundles that the embedded metadata equals ``metadata.json`` and
    ``labels.txt``; for micro bundles that the C array holds the model's
    exact bytes, the ops all have TFLM kernels, and TFLM runs the model in
    the recorded arena and reproduces the samples.

    Args:
        bundle_dir: the bundle folder.

    Returns:
        A :class:`BundleCheck`; ``.ok`` is True when every check passed.
        It prints as a table.

    Example:

    >>> report = tfedge.check_bundle("tflite_models/digits/micro")  # doctest: +SKIP
    >>> report.ok  # doctest: +SKIP
    True
    """
    directory = os.fspath(bundle_dir)
    result = BundleCheck(directory=directory, kind="unknown")
    card = _guard(result, "model card", card_lib.read_model_card, directory)
    if card is None:
        return result
    facts = card.get("bundle") or {}
    result.kind = facts.get("kind", "unknown")
    if not result.add("model card", result.kind in ("android", "micro"),
                      f"{card.get('name')!r}, {result.kind} bundle"):
        return result

    listed = set(facts.get("files", {})) | {card_lib.CARD_FILENAME}
    extra = sorted(n for n in os.listdir(directory) if n not in listed and not is_temporary(n))
    result.add("only the manifest's files", not extra,
               f"not in the bundle's manifest: {', '.join(extra)} (left by another export? "
               "a bundle folder holds one bundle: export into a new folder)" if extra
               else f"{len(listed)} files, all in the manifest")
    for name, expected in facts.get("files", {}).items():
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            result.add(f"file {name}", False, "missing")
            continue
        digest = _sha256(path)
        result.add(f"file {name}", digest == expected["sha256"],
                   "sha256 matches the card" if digest == expected["sha256"]
                   else f"sha256 {digest[:12]}... but the card says {expected['sha256'][:12]}...")

    model_path = os.path.join(directory, MODEL_FILE)
    content = _guard(result, "model", lambda: open(model_path, "rb").read())
    if content is None:
        return result
    digest = hashlib.sha256(content).hexdigest()
    described = card.get("sha256") or (card.get("model") or {}).get("sha256")
    result.add("model hash", digest == described, "model.tflite is the model the card "
               "describes" if digest == described else "model.tflite differs from the card")
    artifact = _guard(result, "model", as_artifact, content)
    if artifact is None:
        return result
    samples = _guard(result, "samples", _load_samples, directory)
    if samples is not None:
        inputs, saved = samples
        kernels = (facts.get("samples") or {}).get("litert_op_resolver", REFERENCE_RESOLVER)
        outputs = _guard(result, "LiteRT", litert_outputs, content, inputs, kernels)
        if outputs is not None:
            agreement = _agreement(saved, outputs)
            result.add("LiteRT reproduces samples", agreement["equal"], agreement["summary"])

    if result.kind == "android":
        _check_android(result, directory, content)
    else:
        _check_micro(result, directory, artifact, facts, samples)
    return result


def _check_android(result: BundleCheck, directory: str, content: bytes) -> None:
    sidecar = _guard(result, "metadata", lambda: json.load(
        open(os.path.join(directory, METADATA_FILE))))
    embedded = _guard(result, "metadata", metadata_lib.read_metadata, content)
    if sidecar is None or embedded is None:
        return
    raw = embedded.get(METADATA_ENTRY)
    same = raw is not None and json.loads(raw) == sidecar
    result.add("embedded metadata", same, f"{METADATA_ENTRY} in model.tflite equals "
               f"{METADATA_FILE}" if same else f"{METADATA_ENTRY} missing or different")
    labels = sidecar.get("labels")
    if labels:
        path = os.path.join(directory, LABELS_FILE)
        written = open(path).read().splitlines() if os.path.exists(path) else None
        result.add("labels", written == labels, f"{len(labels)} labels"
                   if written == labels else f"{LABELS_FILE} differs from the metadata")


def _check_micro(result: BundleCheck, directory: str, artifact: Any, facts: dict[str, Any],
                 samples: Any) -> None:
    def read(name):
        with open(os.path.join(directory, name)) as f:
            return f.read()

    source = _guard(result, "C array", read, MODEL_DATA_SOURCE)
    if source is not None:
        length = f"{facts['symbols']['length']} = {len(artifact.content)};"
        same = micro.read_model_data(source) == artifact.content and length in source
        result.add("C array", same,
                   f"{MODEL_DATA_SOURCE} holds model.tflite's {len(artifact.content):,} bytes"
                   if same else f"{MODEL_DATA_SOURCE} differs from model.tflite")
    methods = _guard(result, "TFLM ops", micro.resolver_methods, artifact)
    resolver = _guard(result, "op resolver", read, OP_RESOLVER_HEADER)
    if methods is not None and resolver is not None:
        missing = [m for _, m in methods if f"resolver.{m}()" not in resolver]
        result.add("op resolver", not missing, f"{len(methods)} ops registered" if not missing
                   else f"{OP_RESOLVER_HEADER} lacks {', '.join(missing)}")
    if samples is None or methods is None:
        return
    inputs, saved = samples
    run = _guard(result, "TFLM", lambda: micro.run_tflm(
        artifact.content, inputs, num_outputs=len(artifact.outputs),
        arena_size=facts["arena_bytes"]))
    if run is not None:
        result.add("TFLM arena", True, f"runs in the recorded {facts['arena_bytes']:,} bytes")
        allowed = facts["verification"].get("allowed_integer_diff", 0)
        agreement = _agreement(saved, run.outputs, allowed)
        result.add("TFLM reproduces samples", agreement["equal"], agreement["summary"])
