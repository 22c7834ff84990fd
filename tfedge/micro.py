"""TensorFlow Lite for Microcontrollers: ops, C array, tensor arena, real runs.

What an embedded team needs to put a ``.tflite`` on a microcontroller with
TFLM, each fact read from the flatbuffer or measured in TFLM itself:

- :func:`resolver_methods`: the ``MicroMutableOpResolver::AddXxx()`` call of
  every op the model uses; an op TFLM has no kernel for raises, naming it.
- :func:`resolver_header` and :func:`model_data_sources`: the op resolver as
  a ready-to-include header, and the model as an aligned C array.
- :func:`run_tflm`: runs the model in TFLM's own interpreter (PyPI
  ``tflite-micro``) and measures the smallest tensor arena it runs in.

TFLM can abort the whole process on some models (SIGABRT, no message), so it
never runs in the caller's process: :func:`run_tflm` starts
``tfedge/_tflm_worker.py`` in a subprocess and turns a death into a
:class:`~tfedge.errors.VerificationError`. No TensorFlow import here.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from typing import Any, Sequence

import numpy as np

from tfedge.errors import UnsupportedModelError, VerificationError
from tfedge.flatbuffer import SUB_BYTE_BITS, _op_name, _parse  # the reader's own parse, cached
from tfedge.report import write_json

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_tflm_worker.py")
# TFLM aligns the arena's start up and its end down to 16 bytes
# (MicroArenaBufferAlignment); the worker searches in these steps.
ARENA_ALIGNMENT = 16

# Builtin op -> MicroMutableOpResolver method, for every builtin kernel that
# TFLM registers (tensorflow/lite/micro/micro_mutable_op_resolver.h; the same
# set the PyPI tflite-micro interpreter links). Method names mostly follow
# TFLM's generator rule (CONV_2D -> AddConv2D) but not always (AddPadV2,
# AddCumSum, AddBatchMatMul, AddUnidirectionalSequenceLSTM), so they are
# spelled out.
TFLM_BUILTIN_OPS: dict[str, str] = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin", "ASSIGN_VARIABLE": "AddAssignVariable",
    "AVERAGE_POOL_2D": "AddAveragePool2D", "BATCH_MATMUL": "AddBatchMatMul",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd", "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce", "CAST": "AddCast",
    "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize",
    "DIV": "AddDiv", "DYNAMIC_UPDATE_SLICE": "AddDynamicUpdateSlice", "ELU": "AddElu",
    "EMBEDDING_LOOKUP": "AddEmbeddingLookup", "EQUAL": "AddEqual", "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims", "FILL": "AddFill", "FLOOR": "AddFloor",
    "FLOOR_DIV": "AddFloorDiv", "FLOOR_MOD": "AddFloorMod",
    "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd", "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish", "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D", "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual", "LOG": "AddLog", "LOG_SOFTMAX": "AddLogSoftmax",
    "LOGICAL_AND": "AddLogicalAnd", "LOGICAL_NOT": "AddLogicalNot",
    "LOGICAL_OR": "AddLogicalOr", "LOGISTIC": "AddLogistic", "MAX_POOL_2D": "AddMaxPool2D",
    "MAXIMUM": "AddMaximum", "MEAN": "AddMean", "MINIMUM": "AddMinimum",
    "MIRROR_PAD": "AddMirrorPad", "MUL": "AddMul", "NEG": "AddNeg",
    "NOT_EQUAL": "AddNotEqual", "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2",
    "PRELU": "AddPrelu", "QUANTIZE": "AddQuantize", "READ_VARIABLE": "AddReadVariable",
    "REDUCE_ALL": "AddReduceAll", "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin",
    "RELU": "AddRelu", "RELU6": "AddRelu6", "RESHAPE": "AddReshape",
    "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound", "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2",
    "SHAPE": "AddShape", "SIN": "AddSin", "SLICE": "AddSlice", "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQRT": "AddSqrt", "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference", "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub", "SUM": "AddSum", "SVDF": "AddSvdf",
    "TANH": "AddTanh", "TRANSPOSE": "AddTranspose", "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "UNPACK": "AddUnpack", "VAR_HANDLE": "AddVarHandle", "WHILE": "AddWhile",
    "ZEROS_LIKE": "AddZerosLike",
}
# Custom ops TFLM ships a kernel for, by custom code.
TFLM_CUSTOM_OPS: dict[str, str] = {
    "TFLite_Detection_PostProcess": "AddDetectionPostprocess",
    "CIRCULAR_BUFFER": "AddCircularBuffer",
    "ethos-u": "AddEthosU",
}

_HEX = [f"0x{b:02x}" for b in range(256)]
_BYTES_PER_LINE = 12


def tflm_version() -> str | None:
    """Version of the installed ``tflite-micro`` package, or None."""
    try:
        return importlib.metadata.version("tflite-micro")
    except importlib.metadata.PackageNotFoundError:
        return None


def _op_codes(artifact: Any) -> list[str]:
    """Names of every op code the flatbuffer declares (all subgraphs)."""
    return [_op_name(code) for code in _parse(artifact.content).operatorCodes or []]


def _method(op: str) -> str | None:
    if op.startswith("CUSTOM:"):
        return TFLM_CUSTOM_OPS.get(op[len("CUSTOM:"):])
    return TFLM_BUILTIN_OPS.get(op)


def resolver_methods(artifact: Any) -> list[tuple[str, str]]:
    """The op resolver calls a model needs under TFLM, read from its flatbuffer.

    Args:
        artifact: a :class:`~tfedge.TFLiteArtifact`.

    Returns:
        ``(op name, MicroMutableOpResolver method)`` pairs, one per op kind,
        sorted by op name, e.g. ``[("CONV_2D", "AddConv2D"), ...]``.

    Raises:
        UnsupportedModelError: the model uses ops TFLM has no kernel for;
            the message names each one.

    Example:

    >>> tfedge.micro.resolver_methods(artifact)  # doctest: +SKIP
    [('CONV_2D', 'AddConv2D'), ('FULLY_CONNECTED', 'AddFullyConnected'), ...]
    """
    ops = sorted(set(_op_codes(artifact)))
    missing = [op for op in ops if _method(op) is None]
    if missing:
        counts = artifact.flatbuffer.op_counts()
        named = ", ".join(f"{op} (used {counts[op]}x)" if counts.get(op) else op
                          for op in missing)
        raise UnsupportedModelError(
            f"TensorFlow Lite for Microcontrollers has no kernel for {named}: the "
            "embedded team cannot run this model. Replace the layers behind these ops "
            "with ones TFLM supports (e.g. relu/relu6 instead of gelu or swish, no custom "
            "or TF Select ops) and convert again; tfedge.micro.TFLM_BUILTIN_OPS lists the "
            f"ops TFLM runs (tflite-micro {tflm_version()}).")
    return [(op, _method(op)) for op in ops]


def c_identifier(name: str) -> str:
    """A C identifier from a model name: ``"digits-cnn v2"`` -> ``"digits_cnn_v2"``."""
    ident = re.sub(r"\W+", "_", name).strip("_").lower() or "model"
    return ident if not ident[0].isdigit() else f"m_{ident}"


def _camel(ident: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in ident.split("_"))


def c_symbols(name: str) -> dict[str, str]:
    """The C/C++ names a bundle defines for model ``name``.

    Returns:
        ``data`` (the array), ``length`` (its length), ``arena_size`` (the
        tensor arena constant), ``resolver`` (the op resolver type) and
        ``register`` (the function adding the ops).
    """
    ident = c_identifier(name)
    camel = _camel(ident)
    return {"data": f"g_{ident}_model_data", "length": f"g_{ident}_model_data_len",
            "arena_size": f"k{camel}TensorArenaSize", "resolver": f"{camel}OpResolver",
            "register": f"Register{camel}Ops"}


def _banner(what: str, content_name: str, size: int, sha256: str) -> str:
    return (f"// {what}\n// Generated by tfedge from {content_name} ({size:,} bytes, "
            f"sha256 {sha256}).\n// Do not edit: export the model again instead.\n")


def model_data_sources(content: bytes, name: str, arena_size: int, *,
                       sha256: str, header_name: str = "model_data.h",
                       headroom: int | None = None) -> tuple[str, str]:
    """The model as a C++ array: ``(model_data.cc text, model_data.h text)``.

    The array is ``const`` (it stays in flash) and ``alignas(16)``, as TFLM
    reads tensors in place and needs them aligned. The header declares the
    array, its length, and the measured tensor arena size.

    Args:
        content: the flatbuffer bytes.
        name: model name; symbols are ``g_<name>_model_data``,
            ``g_<name>_model_data_len`` and ``k<Name>TensorArenaSize``.
        arena_size: tensor arena bytes to state.
        sha256: the flatbuffer's sha256, written in the banner.
        header_name: file name the ``.cc`` includes.
        headroom: bytes of ``arena_size`` added to the measured smallest
            arena (from :func:`run_tflm`); None: the size was given, not
            measured.

    Returns:
        The ``.cc`` and ``.h`` file contents.
    """
    ident = c_identifier(name)
    symbols = c_symbols(name)
    data, length, arena = symbols["data"], symbols["length"], symbols["arena_size"]
    guard = f"TFEDGE_{ident.upper()}_MODEL_DATA_H_"
    banner = _banner(f"Model {name!r} as a C array for TensorFlow Lite for Microcontrollers.",
                     "model.tflite", len(content), sha256)
    header = (
        f"{banner}#ifndef {guard}\n#define {guard}\n\n"
        f"// The .tflite flatbuffer, 16-byte aligned, in read-only memory.\n"
        f"extern const unsigned char {data}[];\n"
        f"extern const unsigned int {length};  // {len(content)} bytes\n\n"
        + (f"// Tensor arena: the smallest in which the TFLM interpreter allocated the model\n"
           f"// and ran the samples ({int(arena_size) - headroom} bytes; {ARENA_ALIGNMENT} less "
           f"fails), plus {headroom} bytes\n// so that a buffer without alignas(16) also "
           f"fits (TFLM aligns the arena's start).\n" if headroom is not None else
           "// Tensor arena: the size given at export; the TFLM interpreter ran the samples "
           "in it.\n")
        + f"// (tflite-micro {tflm_version()}, reference kernels, 64-bit host: 32-bit targets\n"
        f"// need the same or less; optimized kernels such as CMSIS-NN may ask for\n"
        f"// scratch buffers, so check on the target with RecordingMicroInterpreter).\n"
        f"// Declare it as: alignas(16) static uint8_t tensor_arena[{arena}];\n"
        f"constexpr unsigned int {arena} = {int(arena_size)};\n\n"
        f"#endif  // {guard}\n")
    lines = [", ".join(_HEX[b] for b in content[i:i + _BYTES_PER_LINE])
             for i in range(0, len(content), _BYTES_PER_LINE)]
    source = (
        f"{banner}#include \"{header_name}\"\n\n"
        f"alignas(16) const unsigned char {data}[] = {{\n    "
        + ",\n    ".join(lines) + "\n};\n"
        f"const unsigned int {length} = {len(content)};\n")
    return source, header


def read_model_data(source: str) -> bytes:
    """The bytes of the array in a ``model_data.cc`` (to check it against the file)."""
    body = source[source.index("{") + 1:source.rindex("}")]
    return bytes(int(h, 16) for h in re.findall(r"0x([0-9a-fA-F]{2})", body))


def resolver_header(name: str, methods: Sequence[tuple[str, str]],
                    op_counts: dict[str, int] | None = None) -> str:
    """A header with a ``MicroMutableOpResolver`` sized for exactly the model's ops.

    Args:
        name: model name (as for :func:`model_data_sources`).
        methods: from :func:`resolver_methods`.
        op_counts: uses of each op, written as a comment.

    Returns:
        The header text: ``<Name>OpResolver`` (a ``MicroMutableOpResolver<N>``)
        and ``inline TfLiteStatus Register<Name>Ops(<Name>OpResolver&)``.
    """
    ident = c_identifier(name)
    s = c_symbols(name)
    guard = f"TFEDGE_{ident.upper()}_OP_RESOLVER_H_"
    counts = op_counts or {}
    used = ", ".join(f"{op} x{counts[op]}" if counts.get(op) else op for op, _ in methods)
    calls = "".join(f"  if (resolver.{method}() != kTfLiteOk) return kTfLiteError;\n"
                    for _, method in methods)
    return (
        f"// The TFLM ops model {name!r} uses, read from its flatbuffer: {used}.\n"
        f"// Generated by tfedge. Do not edit: export the model again instead.\n"
        f"#ifndef {guard}\n#define {guard}\n\n"
        f"#include \"tensorflow/lite/micro/micro_mutable_op_resolver.h\"\n\n"
        f"using {s['resolver']} = tflite::MicroMutableOpResolver<{len(methods)}>;\n\n"
        f"// Usage, with model_data.h:\n"
        f"//   static {s['resolver']} resolver;\n"
        f"//   if ({s['register']}(resolver) != kTfLiteOk) {{ /* report */ }}\n"
        f"//   alignas(16) static uint8_t tensor_arena[{s['arena_size']}];\n"
        f"//   tflite::MicroInterpreter interpreter(tflite::GetModel({s['data']}),\n"
        f"//       resolver, tensor_arena, {s['arena_size']});\n"
        f"//   interpreter.AllocateTensors();\n"
        f"inline TfLiteStatus {s['register']}({s['resolver']}& resolver) {{\n"
        f"{calls}  return kTfLiteOk;\n}}\n\n#endif  // {guard}\n")


@dataclasses.dataclass
class TFLMRun:
    """What one TFLM run measured.

    Attributes:
        arena_bytes: the tensor arena the samples ran in. When measured, it is
            the smallest multiple of :data:`ARENA_ALIGNMENT` in which TFLM
            allocates the model and runs it, found by search: one alignment
            step less fails.
        outputs: raw output tensors, one array per output, samples first.
        recorded_bytes: what TFLM's recording allocator reported after a run
            (measured runs only): a lower bound of ``arena_bytes``, short of
            the scratch space the memory planner needs while allocating.
        probes: ``[arena bytes, fits]`` of each size the search tried.
    """

    arena_bytes: int
    outputs: list[np.ndarray]
    recorded_bytes: int | None = None
    probes: list[list[Any]] = dataclasses.field(default_factory=list)


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_tflm(content: bytes, inputs: Sequence[np.ndarray], *, num_outputs: int = 1,
             arena_size: int | None = None, timeout: float = 600.0) -> TFLMRun:
    """Runs a model in TFLM's interpreter, in a subprocess, one sample at a time.

    Args:
        content: the flatbuffer bytes.
        inputs: one array per model input, samples first, in the input
            tensor's dtype (quantized already).
        num_outputs: number of model outputs.
        arena_size: tensor arena bytes; None searches for the smallest arena
            that allocates and runs the model (from TFLM's recorded use, a
            lower bound, up in :data:`ARENA_ALIGNMENT` steps) and runs the
            samples in exactly that.
        timeout: seconds before the run is abandoned.

    Returns:
        A :class:`TFLMRun`.

    Raises:
        UnsupportedModelError: TFLM has no kernel for an op (named).
        VerificationError: TFLM crashed (e.g. SIGABRT), could not allocate
            the given arena, failed to run, or timed out.
    """
    version = tflm_version()
    if version is None:
        raise VerificationError("TensorFlow Lite for Microcontrollers is not installed: "
                                "pip install tflite-micro")
    with tempfile.TemporaryDirectory(prefix="tfedge-tflm-") as tmp:
        request = {"model": os.path.join(tmp, "model.tflite"),
                   "inputs": os.path.join(tmp, "inputs.npz"),
                   "outputs": os.path.join(tmp, "outputs.npz"),
                   "num_outputs": int(num_outputs), "arena_size": arena_size}
        with open(request["model"], "wb") as f:
            f.write(content)
        np.savez(request["inputs"], **{f"input_{i}": np.asarray(x) for i, x in enumerate(inputs)})
        request_path = os.path.join(tmp, "request.json")
        write_json(request_path, request)
        try:
            proc = subprocess.run([sys.executable, _WORKER, request_path], capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise VerificationError(f"TFLM ({version}) did not finish within {timeout:.0f} s "
                                    "on this model.") from None
        stages = [line.split()[1:] for line in proc.stdout.splitlines()
                  if line.startswith("stage ")]
        stage, *arena = stages[-1] if stages else ["start"]
        if proc.returncode != 0:
            if proc.returncode < 0:
                how = f"was killed by {signal.Signals(-proc.returncode).name}"
            else:
                how = f"exited with status {proc.returncode}"
            where = _STAGES.get(stage, stage) + (f" (arena {int(arena[0]):,} bytes)"
                                                 if arena else "")
            raise VerificationError(
                f"The TFLM interpreter (tflite-micro {version}) {how} while "
                f"{where}, with no Python error: TFLM cannot run this "
                "model, although LiteRT may. The embedded team would hit the same crash. "
                "Simplify the model (fewer or more common ops, smaller tensors) or report "
                "the .tflite to tflite-micro.\nTFLM's last messages:\n"
                + (_tail(proc.stderr) or "(none)"))
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if not result["ok"]:
            log = result.get("log", "")
            missing = re.findall(r"Didn't find op for builtin opcode '(\w+)'", log)
            missing += re.findall(r"Didn't find op for custom opcode '([^']+)'", log)
            if missing:
                raise UnsupportedModelError(
                    f"TFLM ({version}) has no kernel for {', '.join(sorted(set(missing)))}: "
                    "replace the layers behind these ops and convert again.")
            where = ("allocating tensors" + (f" in a {result['arena_size']:,}-byte arena"
                                             if result.get("arena_size") else "")
                     if result.get("stage") == "allocate" else "running the model")
            raise VerificationError(f"TFLM ({version}) failed {where}:\n{_tail(log)}")
        with np.load(request["outputs"]) as data:
            outputs = [data[f"output_{k}"] for k in range(len(data.files))]
    return TFLMRun(arena_bytes=int(result["arena_size"]), outputs=outputs,
                   recorded_bytes=result.get("recorded_size"), probes=result.get("probes", []))


_STAGES = {"start": "starting", "load": "loading the model and allocating its tensors",
           "measure": "measuring the tensor arena", "invoke": "running the samples"}


# TFLM's prepare failures: "<file>.cc:<line> <check> was not true." or "<file>.cc <message>.",
# then "Node <OP> (number <n>) failed to prepare".
_PREPARE_FAILURE = re.compile(r"([\w/]+\.cc(?::\d+)?) (.*?)(?: was not true)?\.?\s*\n"
                              r"(?:.*?Node (\w+) \(number (\d+)\) failed to prepare)?", re.S)


def low_bit_refusal(artifact: Any, tflm_message: str) -> str | None:
    """Why TFLM refuses a model with int4 / int2 tensors, and what to convert instead.

    Args:
        artifact: the model (a :class:`~tfedge.artifact.TFLiteArtifact`).
        tflm_message: TFLM's error (from :func:`run_tflm`).

    Returns:
        The explanation, naming TFLM's check (``file.cc:line``), the op and
        its tensor types, and the mode that runs in TFLM; None when the model
        has no sub-byte tensor (the failure is something else).
    """
    fb = artifact.flatbuffer
    low = [t for t in fb.tensors if t.dtype in SUB_BYTE_BITS]
    if not low:
        return None
    match = _PREPARE_FAILURE.search(tflm_message)
    where = "TFLM rejects it"
    if match:
        where, check = match.group(1).split("/")[-1], match.group(2)
        if match.group(4) is not None:
            op = fb.ops[int(match.group(4))]
            # the weight (input 1) of a weight op; the first input of any other op
            tensors = [fb.tensors[t] for t in op.inputs if t >= 0]
            if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(tensors) > 1:
                stored = fb.tensors[fb.stored_tensor(op.inputs[1])]
                where += (f": {stored.dtype.lower()} filter with {tensors[0].dtype.lower()} input "
                          f"in {op.name} (op {op.index}) fails to prepare")
            else:
                where += (f": {op.name} (op {op.index}) on {tensors[0].dtype.lower()} input "
                          "fails to prepare")
        where += f" ({check})"
    kinds = sorted({t.dtype for t in low})
    fc = match is not None and match.group(3) == "FULLY_CONNECTED"
    return (f"TFLite Micro (tflite-micro {tflm_version()}) cannot run this model, whose "
            f"weights are {'/'.join(kinds)}: {where}. Convert it with mode='int8' (full int8 "
            "runs in TFLM)" + (
                ", or with mixed precision keeping every FULLY_CONNECTED layer at 8 bits "
                "(bits={'<dense layer>': 8, ...}): TFLM prepares int4 CONV_2D filters with "
                "int8 input" if fc else "") +
            "; the other low-bit modes are for LiteRT (phones, Linux boards).")
