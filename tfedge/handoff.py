"""What the Android and micro handoff bundles share: file names, results, samples, checks.

:mod:`tfedge.handoff_android` and :mod:`tfedge.handoff_micro` write the two
bundles and :mod:`tfedge.export` checks them; this module holds what all three
use: the bundle's file names, the :class:`Bundle` and :class:`BundleCheck`
results, the sample inputs and their LiteRT outputs, the comparison of two
runtimes' raw outputs, and the model card with every file's sha256.

Sample outputs come from LiteRT's builtin kernels without its default
XNNPACK delegate (:data:`REFERENCE_RESOLVER`): those are the TFLite kernel
semantics TFLM implements. See :mod:`tfedge.export` for why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from tfedge import card as card_lib
from tfedge import micro
from tfedge.errors import InvalidModelFileError
from tfedge.report import format_table, to_json, write_atomic
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

    def guard(self, check: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs one check's ``fn(*args)``; an exception becomes a failed row, not a crash."""
        try:
            return fn(*args)
        except Exception as err:  # a check must report, not raise
            self.add(check, False, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
            return None

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
def tensor_io_type(tensor: Any) -> str:
    return tensor.dtype.lower()


def quantize_input(x: np.ndarray, tensor: Any) -> np.ndarray:
    params = (tensor.scale[0], tensor.zero_point[0]) if tensor.scale else (0.0, 0)
    return quantize_array(x, {"dtype": tensor.numpy_dtype, "quantization": params})


def make_samples(artifact: Any, sample_inputs: Any,
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
            batches.append(quantize_input(x.astype(np.float32), t))
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


def compare_outputs(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
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


def xnnpack_agreement(artifact: Any, content: bytes, inputs: Sequence[np.ndarray],
                       reference: Sequence[np.ndarray]) -> dict[str, Any]:
    """XNNPACK's outputs vs the builtin kernels', or why it was not run (a model that
    needs op_resolver="no_delegates", such as a sparse int8 one, does not prepare there)."""
    settings = artifact.runtime_settings()
    if settings["op_resolver"] != "auto":
        return {"equal": None, "summary": f"not run: {settings['reason']}"}
    return compare_outputs(reference, litert_outputs(content, inputs, "auto"))


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_file(directory: str, name: str, data: bytes | str) -> None:
    write_atomic(os.path.join(directory, name), data)


def save_samples(directory: str, inputs: Sequence[np.ndarray],
                  outputs: Sequence[np.ndarray]) -> None:
    arrays = {f"input_{i}": x for i, x in enumerate(inputs)}
    arrays.update({f"output_{k}": y for k, y in enumerate(outputs)})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_file(directory, SAMPLES_FILE, buffer.getvalue())


def load_samples(directory: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    with np.load(os.path.join(directory, SAMPLES_FILE)) as data:
        inputs = [data[k] for k in sorted((k for k in data.files if k.startswith("input_")),
                                          key=lambda k: int(k.split("_")[1]))]
        outputs = [data[k] for k in sorted((k for k in data.files if k.startswith("output_")),
                                           key=lambda k: int(k.split("_")[1]))]
    return inputs, outputs


def finish_bundle(kind: str, directory: str, artifact: Any, files: list[str], facts: dict[str, Any],
            *, name: str, description: str, labels: list[str] | None, validation: Any,
            benchmark: Any, out_dir: str) -> Bundle:
    """Hashes the files written into ``directory`` (the staging folder) into the card."""
    card = card_lib.model_card(artifact, name=name, description=description, labels=labels,
                               validation=validation, benchmark=benchmark)
    card["bundle"] = {"kind": kind, **facts, "files": {
        f: {"sha256": sha256_file(os.path.join(directory, f)),
            "size_bytes": os.path.getsize(os.path.join(directory, f))} for f in files}}
    card_lib.write_model_card(directory, card)
    sizes = {f: card["bundle"]["files"][f]["size_bytes"] for f in files}
    sizes[card_lib.CARD_FILENAME] = os.path.getsize(os.path.join(directory, card_lib.CARD_FILENAME))
    return Bundle(kind=kind, directory=out_dir, files=sizes, card=card)
