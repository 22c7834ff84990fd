"""The converted model: :class:`TFLiteArtifact`, and the one way to read one.

This is the bottom of the pipeline's model stages: ``convert`` makes
artifacts, ``validate``, ``bench``, ``export`` and the CLI take them. Every
stage accepts "an artifact, flatbuffer bytes or a ``.tflite`` path" through
:func:`as_artifact`, which checks the bytes (:func:`tfedge.flatbuffer.
check_bytes`) and probes untrusted ones once in LiteRT in a child process
(:func:`probe_in_child`), so a corrupt file raises a clear error instead of
crashing the process.

Also here: the LiteRT settings a model needs (:func:`runtime_settings`) and
the full-integer check (:func:`check_full_integer`). No TensorFlow import:
the CLI's ``inspect`` and ``check`` load this module without it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

from absl import logging
from ai_edge_litert import interpreter as litert

from tfedge import card as card_lib
from tfedge import flatbuffer
from tfedge.errors import ConversionError, InvalidModelFileError
from tfedge.metadata import read_signatures
from tfedge.report import format_table, write_atomic

MODES = ("int8", "int16x8", "float16", "dynamic_range", "float32")
# Below 8 bits, through the LiteRT Quantizer: tfedge/lowbit.py.
LOWBIT_MODES = ("w4a8", "int4_weights", "int4_blockwise", "int2_blockwise", "litert_int8",
                "mixed_precision")
MODE_DESCRIPTIONS = {
    "w4a8": "full integer: int4 weights on CONV_2D / FULLY_CONNECTED, int8 elsewhere, "
            "int8 activations",
    "int4_weights": "int4 weights (int8 where LiteRT has no int4 kernel), float activations",
    "int4_blockwise": "int4 FULLY_CONNECTED weights in blocks of 32, int8 elsewhere, "
                      "activations quantized on the fly",
    "int2_blockwise": "int2 FULLY_CONNECTED weights in blocks of 32, int8 elsewhere, "
                      "activations quantized on the fly",
    "litert_int8": "full integer: int8 weights and activations (LiteRT Quantizer)",
    "mixed_precision": "full integer: per-layer int4 / int8 weights, int8 / int16 activations",
    "int8": "full integer: int8 weights and activations",
    "int16x8": "int16 activations, int8 weights",
    "float16": "float16 weights, float32 compute",
    "dynamic_range": "int8 weights, float activations (quantized on the fly)",
    "float32": "float32, not quantized",
    "mixed": "int8 with some ops in float",
    "unknown": "not known",
}
INTEGER_MODES = ("int8", "int16x8")
# Interface types of a full-integer model's inputs and outputs (convert's
# input_type / output_type; the type an export bundle states).
IO_TYPES = ("int8", "uint8", "float32")

_NO_DELEGATES_ADVICE = (
    "Run it with LiteRT's OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES (Python: "
    "Interpreter(..., experimental_op_resolver_type=OpResolverType."
    "BUILTIN_WITHOUT_DEFAULT_DELEGATES); Android: Interpreter.Options().setUseXNNPACK(false)). "
    "A default-configured Android or desktop interpreter will reject this model.")


# ----------------------------------------------------------------------------
# Runtime settings
# ----------------------------------------------------------------------------
def runtime_settings(content: bytes) -> dict[str, Any]:
    """The LiteRT settings a flatbuffer needs, found by preparing it.

    The model is prepared (``allocate_tensors``) under LiteRT's default op
    resolver, which applies the XNNPACK delegate. If that fails and the
    model prepares without default delegates, it needs
    ``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``: sparse int8 and
    sparse dynamic-range models are such models (XNNPACK refuses their
    FULLY_CONNECTED ops, whose weights come out of a DENSIFY op).

    Args:
        content: the flatbuffer bytes.

    Returns:
        ``{"op_resolver": "auto" | "no_delegates", "reason": str | None}``.

    Raises:
        InvalidModelFileError: the bytes are not a readable TFLite model, or
            LiteRT cannot prepare the model with either resolver.
    """
    flatbuffer.check_bytes(content)
    errors = {}
    for name, resolver in (("auto", litert.OpResolverType.AUTO),
                           ("no_delegates",
                            litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)):
        try:
            interpreter = litert.Interpreter(model_content=bytes(content),
                                             experimental_op_resolver_type=resolver)
            interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as err:
            errors[name] = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            continue
        if name == "auto":
            return {"op_resolver": "auto", "reason": None}
        return {"op_resolver": "no_delegates",
                "reason": f"LiteRT's default XNNPACK delegate rejects this model "
                          f"({errors['auto']}). " + _NO_DELEGATES_ADVICE}
    raise InvalidModelFileError(
        f"LiteRT cannot prepare this model: {errors.get('no_delegates') or errors.get('auto')}. "
        "It uses an op or a tensor layout this LiteRT build does not support; convert it "
        "again with this TensorFlow version, or check the ops with `tfedge inspect`.")


# ----------------------------------------------------------------------------
# The artifact
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class TFLiteArtifact:
    """A converted model: flatbuffer bytes plus facts read back from them.

    Attributes:
        content: the ``.tflite`` flatbuffer.
        mode: the conversion mode (see :data:`MODES`); for a file, read
            from its tensors by :func:`load` (``"mixed"``: int8 with float
            ops), ``"unknown"`` when built from bytes directly.
        num_calibration_samples: representative samples used (0 if none).
        details: how it was made: input/output types, per-channel, batch,
            signatures, calibration data, sparse encoding, float fallback,
            conversion time (see :meth:`to_dict`).
        runtime: the LiteRT settings it needs (``op_resolver``, ``reason``);
            found by preparing the model when not given, see
            :meth:`runtime_settings`.
        validation: the last :class:`~tfedge.ValidationReport` of
            this artifact, recorded in its model card.

    Example:

    >>> art = tfedge.convert(model, representative_data=x[:200])  # doctest: +SKIP
    >>> art.save("model.tflite"); art.inputs[0].dtype  # doctest: +SKIP
    'INT8'
    """

    content: bytes
    mode: str = "unknown"
    num_calibration_samples: int = 0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    runtime: dict[str, Any] | None = None
    validation: Any = None

    def __post_init__(self):
        self.flatbuffer = flatbuffer.FlatbufferModel(self.content)

    @property
    def size_bytes(self) -> int:
        return len(self.content)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def inputs(self) -> list[flatbuffer.TensorInfo]:
        return self.flatbuffer.inputs

    @property
    def outputs(self) -> list[flatbuffer.TensorInfo]:
        return self.flatbuffer.outputs

    @property
    def ops(self) -> dict[str, int]:
        """Operator counts by kind, e.g. ``{"CONV_2D": 3}``."""
        return dict(sorted(self.flatbuffer.op_counts().items()))

    @property
    def signatures(self) -> dict[str, dict[str, list[str]]]:
        """Signature key -> ``{"inputs": [names], "outputs": [names]}``."""
        return {key: {"inputs": list(sig["inputs"]), "outputs": list(sig["outputs"])}
                for key, sig in read_signatures(self.content).items()}

    @property
    def is_full_integer(self) -> bool:
        """True if no op computes in float (the I/O boundary aside)."""
        return not self.flatbuffer.float_ops()

    @property
    def description(self) -> str:
        """One line on what the artifact is, e.g. ``"int8 (full integer...), int8 I/O"``."""
        text = f"{self.mode} ({MODE_DESCRIPTIONS.get(self.mode, self.mode)})"
        io_types = sorted({t.dtype.lower() for t in self.inputs + self.outputs})
        text += f", {'/'.join(io_types)} I/O"
        kept = (self.details.get("float_fallback") or {}).get("kept_layers")
        if kept:
            text += f", {len(kept)} layer(s) kept in float: {', '.join(kept)}"
        fb = self.flatbuffer
        if any(fb.is_sparse(fb.stored_tensor(w.index)) for _, w in fb.weight_tensors()):
            text += ", sparse-encoded weights"
        weight_bits = collections.Counter(row["weight_dtype"] for row in fb.layer_bits())
        if set(weight_bits) & set(flatbuffer.SUB_BYTE_BITS):
            text += ", weights " + ", ".join(f"{t} x{n}" for t, n in sorted(weight_bits.items()))
        return text

    def runtime_settings(self) -> dict[str, Any]:
        """The LiteRT settings this model needs (found once, then kept).

        Returns:
            ``{"op_resolver": "auto" | "no_delegates", "reason": ...}``, see
            :func:`runtime_settings`.
        """
        if self.runtime is None:
            self.runtime = runtime_settings(self.content)
        return self.runtime

    @property
    def op_resolver(self) -> str:
        """The op resolver LiteRT must use for this model (``"auto"`` or ``"no_delegates"``)."""
        return self.runtime_settings()["op_resolver"]

    def card(self, *, name: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """The model card of this artifact (see :func:`tfedge.card.model_card`)."""
        return card_lib.model_card(self, name=name or self.details.get("source", "model"),
                                   **kwargs)

    def save(self, path: str | os.PathLike, *, card: bool = True, name: str | None = None,
             **card_kwargs: Any) -> str:
        """Writes the flatbuffer to ``path`` and its model card beside it.

        Args:
            path: the ``.tflite`` file to write (parents are created).
            card: also write the model card (``model.tflite`` ->
                ``model_card.json``, ``x.tflite`` -> ``x_card.json``).
            name: model name in the card (default: the source model's name).
            **card_kwargs: passed to :func:`tfedge.card.model_card`
                (``description``, ``labels``, ``validation``, ...).

        Returns:
            The path of the ``.tflite`` file.
        """
        path = os.fspath(path)
        card_data = self.card(name=name, **card_kwargs) if card else None  # before writing
        write_atomic(path, self.content)  # a kill leaves the old file or the new one
        if card_data is not None:
            card_lib.write_card_beside(path, card_data)
        return path

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "description": self.description,
                "size_bytes": self.size_bytes, "sha256": self.sha256,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "signatures": self.signatures, "ops": self.ops,
                "num_calibration_samples": self.num_calibration_samples,
                "full_integer": self.is_full_integer,
                "runtime": self.runtime_settings(), "conversion": self.details}

    def __str__(self) -> str:
        rows = [[kind, t.name, "x".join(map(str, t.shape)), t.dtype,
                 f"{t.scale[0]:.6g}" if t.scale else "-",
                 t.zero_point[0] if t.zero_point else "-"]
                for kind, ts in (("input", self.inputs), ("output", self.outputs)) for t in ts]
        table = format_table(["", "tensor", "shape", "dtype", "scale", "zero point"], rows)
        ops = ", ".join(f"{k} x{v}" for k, v in self.ops.items())
        lines = [f"TFLite model: {self.description}; {self.size_bytes:,} bytes", table,
                 f"ops: {ops}"]
        sigs = self.signatures
        if sigs:
            lines.append("signatures: " + "; ".join(
                f"{k} ({', '.join(v['inputs'])} -> {', '.join(v['outputs'])})"
                for k, v in sigs.items()))
        sparse = self.details.get("sparse")
        if sparse:
            lines.append(f"sparse: {sparse['summary']}")
        bits = self.flatbuffer.layer_bits()
        if any(r["weight_dtype"] in flatbuffer.SUB_BYTE_BITS for r in bits):
            lines.append(format_table(
                ["op", "layer", "weights", "granularity", "activations", "weight bytes"],
                [[r["op"], r["layer"][:48], r["weight_dtype"], r["granularity"],
                  r["activation_dtype"], f"{r['weight_bytes']:,}"] for r in bits]))
        mixed = self.details.get("mixed_precision")
        if mixed:
            lines.append(f"mixed precision: {mixed['message']}")
        if self.runtime and self.runtime.get("op_resolver") != "auto":
            lines.append(f"runtime: needs op_resolver={self.runtime['op_resolver']!r}: "
                         f"{self.runtime['reason']}")
        return "\n".join(lines)


# Flatbuffers this process converted, or that LiteRT already loaded in a child process.
_TRUSTED: set[str] = set()
_REJECTED: dict[str, str] = {}  # sha256 -> why the child probe rejected those bytes
_PROBE_SCRIPT = """
import sys
import numpy as np
from ai_edge_litert import interpreter as litert
ran = False
error = "unknown error"
# The file is memory-mapped, as on device: a kernel reading past the model's end then faults
# here instead of reading garbage. Several interpreters in turn, because memory a damaged
# kernel overwrote often crashes the next one.
for resolver in (litert.OpResolverType.AUTO, litert.OpResolverType.AUTO,
                 litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                 litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES):
    try:
        it = litert.Interpreter(model_path=sys.argv[1], experimental_op_resolver_type=resolver)
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        it.invoke()
        ran = True
    except Exception as err:  # a clean error: the parent raises it (exit status 3)
        error = (str(err).strip().splitlines() or [repr(err)])[0]
if not ran:
    sys.stderr.write("\\ntfedge-probe-error: " + error + "\\n")
sys.exit(0 if ran else 3)
"""


def probe_in_child(content: bytes, timeout: float = 120.0) -> None:
    """Loads and runs a flatbuffer once in LiteRT in a child process.

    Structural checks (:func:`tfedge.flatbuffer.check_bytes`) catch damaged
    tables, sizes and sparse encodings, but a flipped bit in an op's version
    or options can still send LiteRT's C++ kernels out of bounds. The child
    dies then, not this process. A model LiteRT refuses cleanly (an op or
    op version it lacks) is an error too: it could not run on device. Bytes
    this process converted, or probed before, are not probed again.

    Raises:
        InvalidModelFileError: LiteRT cannot prepare the model, or crashed
            (or hung) on it.
    """
    digest = hashlib.sha256(content).hexdigest()
    if digest in _TRUSTED:
        return
    if digest in _REJECTED:  # the same bytes fail the same way: no second child process
        raise InvalidModelFileError(_REJECTED[digest])
    try:
        verified = _probe(content, timeout)
    except InvalidModelFileError as err:
        _REJECTED[digest] = str(err)
        raise
    if verified:
        _TRUSTED.add(digest)


def _probe(content: bytes, timeout: float) -> bool:
    """Runs the probe; True if LiteRT ran the model, False if the probe could not run."""
    fd, path = tempfile.mkstemp(suffix=".tflite", prefix="tfedge_probe_")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        run = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT, path], capture_output=True,
                             timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise InvalidModelFileError(
            f"LiteRT did not finish loading and running this model in {timeout:.0f} s (in a "
            "child process): the file is corrupt or far too large. Re-export it.") from None
    finally:
        os.unlink(path)
    if run.returncode == 3:  # LiteRT refused the model cleanly: it cannot run it
        stderr = run.stderr.decode(errors="replace")
        reason = stderr.rsplit("tfedge-probe-error: ", 1)[-1].strip() if \
            "tfedge-probe-error: " in stderr else "no reason given"
        reason = reason.rstrip(".?! ")
        raise InvalidModelFileError(
            f"LiteRT cannot prepare this model: {reason}. It uses an op, op version or "
            "tensor layout this LiteRT build does not support: convert it again with this "
            "TensorFlow version; tfedge.load(path, probe=False) reads it without this check.")
    if run.returncode > 0:  # the probe itself failed, not LiteRT
        logging.warning("tfedge: could not check the model in a child process (exit status "
                        "%d: %s); loading it without that check.", run.returncode,
                        run.stderr.decode(errors="replace").strip()[-300:])
        return False
    if run.returncode < 0:
        code = -run.returncode
        name = signal.Signals(code).name if code in signal.valid_signals() else f"signal {code}"
        raise InvalidModelFileError(
            f"LiteRT crashes on this model ({name} while loading and running it in a child "
            "process): the file is corrupt (its structure reads fine, but an op's version or "
            "options do not). Re-export the model.")
    return True


def load_bytes(content: bytes, *, probe: bool = True) -> TFLiteArtifact:
    """Reads untrusted flatbuffer bytes into an artifact, safely.

    Args:
        content: the bytes of a ``.tflite`` file.
        probe: also load and run them once in LiteRT in a child process
            (:func:`probe_in_child`), so that a corrupt model cannot crash
            this process later.

    Raises:
        InvalidModelFileError: not a readable TFLite model, or one LiteRT
            crashes on.
    """
    artifact = TFLiteArtifact(bytes(content))
    artifact.mode = infer_mode(artifact.flatbuffer)
    if probe:
        probe_in_child(artifact.content)
    return artifact


def load(path: str | os.PathLike, *, probe: bool = True) -> TFLiteArtifact:
    """Reads a ``.tflite`` file into an artifact.

    The bytes are checked (identifier, tables, sizes, sparse encodings)
    before anything parses them further, and then loaded and run once in
    LiteRT in a child process, so a truncated, corrupt or foreign file
    raises a clear error instead of crashing the process. A file whose model
    card (beside it) records the same sha256 is tfedge's own output and is
    not probed; nor is one this process converted.

    Args:
        path: the ``.tflite`` file.
        probe: run the child-process check (:func:`probe_in_child`).

    Raises:
        FileNotFoundError: no such file.
        InvalidModelFileError: a directory (folder), not a readable TFLite model, or
            a model LiteRT crashes on.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InvalidModelFileError(
            f"{path!r} is a directory (a folder, e.g. a SavedModel), not a .tflite file: pass "
            "the .tflite file, or convert the model first (tfedge.convert(model, ...)"
            ".save('model.tflite'), or `tfedge convert`).")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such model file: {path!r}. Pass the path of a .tflite "
                                "file, its bytes, or a converted artifact.")
    with open(path, "rb") as f:
        content = f.read()
    try:
        artifact = TFLiteArtifact(content)
        artifact.mode = infer_mode(artifact.flatbuffer)
        if probe and not _card_vouches_for(path, artifact.sha256):
            probe_in_child(content)
    except InvalidModelFileError as err:
        raise InvalidModelFileError(f"{path}: {err}") from None
    return artifact


def infer_mode(fb: flatbuffer.FlatbufferModel) -> str:
    """The conversion mode a flatbuffer was made with, read from its tensors.

    Returns:
        One of :data:`MODES`, or ``"mixed"`` for an int8 model with float ops.
    """
    activations = {fb.tensors[t].dtype for op in fb.ops for t in op.outputs
                   if t >= 0 and op.name not in ("DEQUANTIZE", "DENSIFY")}
    weights = {fb.tensors[fb.stored_tensor(w.index)].dtype for _, w in fb.weight_tensors()}
    if weights & set(flatbuffer.SUB_BYTE_BITS):  # LiteRT Quantizer output (tfedge/lowbit.py)
        rows = fb.layer_bits()
        if not fb.float_ops():
            return "w4a8" if activations <= {"INT8", "INT32"} and {
                r["weight_dtype"] for r in rows if r["op"].split()[1] in ("CONV_2D",
                                                                           "FULLY_CONNECTED")
            } == {"INT4"} else "mixed_precision"
        if any(r["granularity"].startswith("blockwise") for r in rows):
            return "int2_blockwise" if "INT2" in weights else "int4_blockwise"
        return "int4_weights"
    if "INT16" in activations:
        return "int16x8"
    if activations & {"INT8", "UINT8"}:
        return "mixed" if fb.float_ops() else "int8"
    if "FLOAT16" in weights:
        return "float16"
    if weights & {"INT8", "UINT8"}:
        return "dynamic_range"
    return "float32"


def _card_vouches_for(path: str, sha256: str) -> bool:
    """True if the card beside ``path`` records this sha256; warns if it records another."""
    own = card_lib.card_path(path)
    for candidate in (own, os.path.join(os.path.dirname(path), "model_card.json")):
        try:
            with open(candidate) as f:
                card = json.load(f)
        except (OSError, ValueError):
            continue
        recorded = {card.get("sha256"), (card.get("model") or {}).get("sha256")} - {None}
        if sha256 in recorded:
            _TRUSTED.add(sha256)
            return True
        if candidate == own and recorded:
            logging.warning(
                "tfedge: %s describes another model (sha256 %s...), not %s (sha256 %s...): "
                "the card is stale, or the file was replaced. Its facts (validation, "
                "benchmarks) do not apply to this file; save the artifact again "
                "(artifact.save) to write a matching card.", own, sorted(recorded)[0][:12],
                path, sha256[:12])
    return False


def check_full_integer(artifact: TFLiteArtifact, allow_float_ops: bool = False) -> None:
    """Raises unless every op of the model computes on integer tensors.

    Args:
        artifact: the converted model.
        allow_float_ops: log the same message as a warning instead of raising
            (``tfedge.convert(..., allow_float_ops=True)``).

    Raises:
        ConversionError: lists each op that reads or writes a float tensor,
            with what to do about it (unless ``allow_float_ops``).
    """
    float_ops = artifact.flatbuffer.float_ops()
    if not float_ops:
        return
    tensors = artifact.flatbuffer.tensors
    lines = []
    for op in float_ops[:20]:
        names = [f"{tensors[t].name} ({tensors[t].dtype})" for t in op.inputs + op.outputs
                 if t >= 0 and tensors[t].dtype in flatbuffer.FLOAT_TYPES]
        lines.append(f"  op {op.index} {op.name}: {', '.join(names[:3])}")
    more = f"\n  ... and {len(float_ops) - 20} more" if len(float_ops) > 20 else ""
    error = ConversionError(
        f"The model is not full integer: {len(float_ops)} op(s) compute in float:\n"
        + "\n".join(lines) + more +
        "\nThese ops have no int8 kernel (or the converter could not quantize them). "
        "Replace the layers behind them with int8-friendly ones (e.g. ReLU6 for swish, "
        "no custom ops), convert with mode='int16x8', or pass allow_float_ops=True to "
        "accept a mixed model.")
    if not allow_float_ops:
        raise error
    logging.warning("tfedge: %s", error)

def trust(content: bytes) -> None:
    """Marks flatbuffer bytes as this process's own output: they are not probed."""
    _TRUSTED.add(hashlib.sha256(content).hexdigest())


def as_artifact(model: Any, *, probe: bool = True) -> TFLiteArtifact:
    """The one way every stage reads "an artifact, flatbuffer bytes or a path".

    Args:
        model: a :class:`TFLiteArtifact` (returned as is), the bytes of a
            ``.tflite`` file (checked, see :func:`load_bytes`), or its path
            (see :func:`load`).
        probe: for bytes and files, also load and run them once in LiteRT
            in a child process (:func:`probe_in_child`); bytes this process
            converted or probed before are not probed again.

    Returns:
        The artifact.

    Raises:
        TypeError: anything else (e.g. a Keras model: convert it first).
        FileNotFoundError: no such file.
        InvalidModelFileError: a folder, not a readable TFLite model, or one
            LiteRT crashes on.

    Example:

    >>> art = as_artifact("tflite_models/digits_mobilenet_v3_small/model.tflite")  # doctest: +SKIP
    >>> as_artifact(art) is art  # doctest: +SKIP
    True
    """
    if isinstance(model, TFLiteArtifact):
        return model
    if isinstance(model, (bytes, bytearray, memoryview)):
        return load_bytes(bytes(model), probe=probe)
    if isinstance(model, (str, os.PathLike)):
        return load(model, probe=probe)
    raise TypeError(f"Expected a .tflite path, flatbuffer bytes or a TFLiteArtifact, got "
                    f"{type(model).__name__}. Convert a Keras model with tfedge.convert first.")
