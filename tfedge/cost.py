"""``tfedge.cost``: what a model costs to run, read from its flatbuffer alone.

Multiply-accumulates (MACs) per operator and in total, parameter count, and
activation memory (the tensors alive at once while the graph runs). Nothing
runs: shapes come from the file, so this is instant and needs no device.
Framework-neutral (no TensorFlow import), built on :mod:`tfedge.flatbuffer`.

MACs are counted for the operators that dominate inference (convolutions,
depthwise convolutions, fully-connected, transposed convolutions, batch
matmul); element-wise ops, pooling and activations count zero. Sparse weights
are not discounted: LiteRT's int8 kernels do not skip zeros.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from tfedge.flatbuffer import FlatbufferModel, packed_bytes
from tfedge.report import format_table

# Integer operand types whose constants are shapes, axes or sizes, not
# learned parameters (unless they are the bias of a weight op).
_INDEX_TYPES = frozenset({"INT32", "INT64"})
_MATMUL_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
                         "TRANSPOSE_CONV", "CONV_3D", "BATCH_MATMUL"})


@dataclasses.dataclass(frozen=True)
class OpCost:
    """The cost of one operator.

    Attributes:
        index: operator index in execution order.
        op: operator name, e.g. ``"CONV_2D"``.
        macs: multiply-accumulates of one inference (0 for ops not counted).
        dtype: type the MACs are computed in (the activation input's type).
        output_shape: shape of the first output.
    """

    index: int
    op: str
    macs: int
    dtype: str
    output_shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ModelCost:
    """The cost of a model, read from its flatbuffer.

    Attributes:
        ops: one :class:`OpCost` per operator, in execution order.
        params: elements of the learned constant tensors (weights, biases and
            other float or integer constants; shape and axis operands left out).
        param_bytes: bytes those constants take in the file.
        activation_peak_bytes: the largest total size of non-constant tensors
            alive at once (an operator's inputs and outputs both count) - a
            lower bound of the interpreter's tensor arena, which packs these
            tensors by the same liveness.
        activation_peak_op: index of the operator where that peak is reached.
        largest_tensors: the three largest activation tensors, ``(name, bytes)``.
    """

    ops: list[OpCost]
    params: int
    param_bytes: int
    activation_peak_bytes: int
    activation_peak_op: int
    largest_tensors: list[tuple[str, int]]

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one inference."""
        return sum(op.macs for op in self.ops)

    def macs_by_dtype(self) -> dict[str, int]:
        """MACs split by computation type, e.g. ``{"INT8": 5_000_000}``."""
        split: dict[str, int] = {}
        for op in self.ops:
            if op.macs:
                split[op.dtype] = split.get(op.dtype, 0) + op.macs
        return split

    def macs_by_op(self) -> dict[str, int]:
        """MACs per operator kind, largest first."""
        split: dict[str, int] = {}
        for op in self.ops:
            if op.macs:
                split[op.op] = split.get(op.op, 0) + op.macs
        return dict(sorted(split.items(), key=lambda kv: -kv[1]))

    def to_dict(self, per_op: bool = False) -> dict[str, Any]:
        data = {"macs": self.macs, "macs_by_dtype": self.macs_by_dtype(),
                "macs_by_op": self.macs_by_op(), "params": self.params,
                "param_bytes": self.param_bytes,
                "activation_peak_bytes": self.activation_peak_bytes,
                "activation_peak_op": self.activation_peak_op,
                "largest_tensors": [list(t) for t in self.largest_tensors]}
        if per_op:
            data["ops"] = [op.to_dict() for op in self.ops]
        return data

    def __str__(self) -> str:
        rows = [["MACs", f"{self.macs:,}"], ["parameters", f"{self.params:,}"],
                ["parameter bytes", f"{self.param_bytes:,}"],
                ["activation peak bytes", f"{self.activation_peak_bytes:,} "
                                          f"(at op {self.activation_peak_op})"]]
        rows += [[f"MACs in {op}", f"{macs:,} ({100 * macs / max(self.macs, 1):.1f}%)"]
                 for op, macs in self.macs_by_op().items()]
        return format_table(["model cost", "value"], rows)


def _prod(shape: tuple[int, ...]) -> int:
    return int(math.prod(max(d, 1) for d in shape)) if shape else 1


def _op_macs(fb: FlatbufferModel, op) -> tuple[int, str]:
    """(MACs, computation type) of one operator, from its tensors' shapes."""
    tensors = fb.tensors
    if op.name not in _MATMUL_OPS or not op.outputs:
        dtype = tensors[op.inputs[0]].dtype if op.inputs and op.inputs[0] >= 0 else ""
        return 0, dtype
    out = tensors[op.outputs[0]].shape
    x_index = op.inputs[2] if op.name == "TRANSPOSE_CONV" else op.inputs[0]
    dtype = tensors[x_index].dtype
    w = tensors[op.inputs[1]].shape
    if op.name == "CONV_2D":          # weights (Cout, kh, kw, Cin / groups)
        macs = _prod(out) * _prod(w[1:])
    elif op.name == "DEPTHWISE_CONV_2D":  # weights (1, kh, kw, Cout)
        macs = _prod(out) * _prod(w[1:3])
    elif op.name == "FULLY_CONNECTED":    # weights (units, depth)
        macs = _prod(out) * w[-1]
    elif op.name == "TRANSPOSE_CONV":     # weights (Cout, kh, kw, Cin); input (N, H, W, Cin)
        macs = _prod(tensors[x_index].shape) * _prod(w[:3])
    elif op.name == "CONV_3D":            # weights (kd, kh, kw, Cin, Cout)
        macs = _prod(out) * _prod(w[:4])
    else:  # BATCH_MATMUL: out (..., M, N); a (..., M, K), or (..., K, M) when adjointed
        a = tensors[op.inputs[0]].shape
        m = out[-2] if len(out) >= 2 else 1
        macs = _prod(out) * (_prod(a[-2:]) // max(m, 1))
    return int(macs), dtype


def _bytes(fb: FlatbufferModel, index: int) -> int:
    info = fb.tensors[index]
    return packed_bytes(_prod(info.shape), info.dtype) or 0  # INT4 / INT2: packed


def _as_flatbuffer(model: Any) -> FlatbufferModel:
    if isinstance(model, FlatbufferModel):
        return model
    if hasattr(model, "flatbuffer") and isinstance(model.flatbuffer, FlatbufferModel):
        return model.flatbuffer
    if isinstance(model, (bytes, bytearray, memoryview)):
        return FlatbufferModel(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            return FlatbufferModel(f.read())
    raise TypeError(f"model_cost needs a .tflite path, bytes, a TFLiteArtifact or a "
                    f"FlatbufferModel, got {type(model).__name__}.")


def model_cost(model: Any) -> ModelCost:
    """Reads MACs, parameters and activation memory from a flatbuffer.

    Args:
        model: a ``.tflite`` path, its bytes, a
            :class:`~tfedge.TFLiteArtifact` or a
            :class:`~tfedge.flatbuffer.FlatbufferModel`.

    Returns:
        A :class:`ModelCost` (prints as a table; ``to_dict()`` for JSON).

    Raises:
        FileNotFoundError: no such file.
        InvalidModelFileError: not a readable TFLite model.

    Example:

    >>> cost = tfedge.cost.model_cost("model.tflite")  # doctest: +SKIP
    >>> cost.macs, cost.params  # doctest: +SKIP
    (58_736_000, 410_000)
    """
    fb = _as_flatbuffer(model)
    ops = []
    for op in fb.ops:
        macs, dtype = _op_macs(fb, op)
        shape = fb.tensors[op.outputs[0]].shape if op.outputs else ()
        ops.append(OpCost(op.index, op.name, macs, dtype, tuple(shape)))

    # Parameters: learned constants. Integer constants count only as the
    # bias of a weight op (int32 biases of int8 models); others are shapes.
    bias_of_weight_op = {op.inputs[2] for op in fb.ops
                         if op.name in _MATMUL_OPS and len(op.inputs) > 2 and op.inputs[2] >= 0}
    params = param_bytes = 0
    constants = set()
    for info in fb.tensors:
        if not fb.is_constant(info.index):
            continue
        constants.add(info.index)
        if info.dtype in _INDEX_TYPES and info.index not in bias_of_weight_op:
            continue
        params += _prod(info.shape)
        param_bytes += _bytes(fb, info.index)

    # Activation liveness: a tensor lives from the op that writes it (graph
    # inputs: from the start) to the last op that reads it (graph outputs: to
    # the end).
    n = len(fb.ops)
    first: dict[int, int] = {t.index: -1 for t in fb.inputs}
    last: dict[int, int] = {t.index: n for t in fb.outputs}
    for op in fb.ops:
        for t in op.outputs:
            if t >= 0 and t not in constants:
                first.setdefault(t, op.index)
                last[t] = max(last.get(t, op.index), op.index)
        for t in op.inputs:
            if t >= 0 and t not in constants:
                first.setdefault(t, -1)
                last[t] = max(last.get(t, op.index), op.index)
    sizes = {t: _bytes(fb, t) for t in first}
    peak, peak_op = 0, 0
    for i in range(max(n, 1)):
        live = sum(size for t, size in sizes.items() if first[t] <= i <= last.get(t, first[t]))
        if live > peak:
            peak, peak_op = live, i
    largest = sorted(((fb.tensors[t].name, size) for t, size in sizes.items()),
                     key=lambda kv: -kv[1])[:3]
    return ModelCost(ops=ops, params=params, param_bytes=param_bytes,
                     activation_peak_bytes=peak, activation_peak_op=peak_op,
                     largest_tensors=largest)
