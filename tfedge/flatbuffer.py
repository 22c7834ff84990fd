"""Reads facts from a TFLite flatbuffer: tensors, quantization, ops, weights.

Framework-neutral on purpose (no TensorFlow or Keras import): it uses only the
flatbuffer schema bindings that ship with ``ai_edge_litert`` and NumPy, so
reports, checks and cost models built on it import fast and test alone.

Every entry point checks the bytes before parsing them, so a truncated or
foreign file raises :class:`~tfedge.errors.InvalidModelFileError` instead of
crashing the process inside the interpreter.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tfedge.errors import InvalidModelFileError

_IDENTIFIER = b"TFL3"

# Schema enum values -> names / NumPy dtypes.
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if k.isupper()}
_NUMPY_TYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64,
    "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "UINT16": np.uint16,
    "INT32": np.int32, "UINT32": np.uint32, "INT64": np.int64, "UINT64": np.uint64,
    "BOOL": np.bool_,
}
FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"})

# Ops whose input 1 is a weight tensor ("kernel"), as the converter lays them out.
WEIGHT_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
                        "TRANSPOSE_CONV", "CONV_3D"})


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a flatbuffer, as a deployment engineer needs to see it.

    Attributes:
        name: tensor name in the flatbuffer.
        index: tensor index in subgraph 0.
        shape: static shape (batch included).
        shape_signature: shape with -1 for dynamic dimensions.
        dtype: type name as in the schema, e.g. ``"INT8"``.
        scale: quantization scale(s); empty when not quantized.
        zero_point: quantization zero point(s); empty when not quantized.
        quantized_dimension: axis of per-channel quantization.
    """

    name: str
    index: int
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    quantized_dimension: int = 0

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(_NUMPY_TYPES.get(self.dtype, np.void))

    @property
    def is_quantized(self) -> bool:
        return bool(self.scale)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """One operator of subgraph 0, in execution order."""

    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def check_bytes(content: bytes) -> None:
    """Raises InvalidModelFileError unless ``content`` looks like a TFLite model.

    Args:
        content: the bytes to check.

    Raises:
        InvalidModelFileError: empty, too short, wrong file identifier, or a
            structure that does not parse.
    """
    if not isinstance(content, (bytes, bytearray, memoryview)):
        raise InvalidModelFileError(
            f"Expected the bytes of a .tflite flatbuffer, got {type(content).__name__}."
        )
    if len(content) < 8:
        raise InvalidModelFileError(
            f"Not a TFLite model: {len(content)} bytes is too short for a flatbuffer."
        )
    if bytes(content[4:8]) != _IDENTIFIER:
        raise InvalidModelFileError(
            "Not a TFLite model: the flatbuffer identifier is "
            f"{bytes(content[4:8])!r}, expected {_IDENTIFIER!r}. Is this a "
            ".tflite file (not a SavedModel, .keras or .h5 file)?"
        )
    _parse(bytes(content))


@functools.lru_cache(maxsize=8)
def _parse(content: bytes) -> "schema.ModelT":
    try:
        model = schema.ModelT.InitFromPackedBuf(content, 0)
        subgraph = model.subgraphs[0]
        n_tensors = len(subgraph.tensors)
        n_buffers = len(model.buffers or [])
        for op in subgraph.operators or []:
            for t in list(op.inputs) + list(op.outputs):
                if t >= n_tensors:
                    raise IndexError(f"operator refers to tensor {t} of {n_tensors}")
            if op.opcodeIndex >= len(model.operatorCodes):
                raise IndexError("operator refers to a missing op code")
        for tensor in subgraph.tensors:
            if tensor.buffer >= n_buffers:
                raise IndexError(f"tensor refers to buffer {tensor.buffer} of {n_buffers}")
    except InvalidModelFileError:
        raise
    except Exception as err:  # any parse failure means a damaged file
        raise InvalidModelFileError(
            f"Not a readable TFLite model (the flatbuffer is truncated or "
            f"corrupt: {type(err).__name__}: {err}). Re-export the model."
        ) from None
    return model


def _op_name(code: "schema.OperatorCodeT") -> str:
    value = max(code.builtinCode, code.deprecatedBuiltinCode)
    if value == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode
        return "CUSTOM:" + (custom.decode() if isinstance(custom, bytes) else str(custom))
    return _OP_NAMES.get(value, f"BUILTIN_{value}")


def _tensor_info(tensor: "schema.TensorT", index: int) -> TensorInfo:
    q = tensor.quantization
    scale = tuple(float(s) for s in (q.scale if q is not None and q.scale is not None else []))
    zp = tuple(int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else []))
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else []))
    sig = tensor.shapeSignature
    signature = tuple(int(d) for d in sig) if sig is not None and len(sig) else shape
    return TensorInfo(
        name=name, index=index, shape=shape, shape_signature=signature,
        dtype=_TYPE_NAMES.get(tensor.type, str(tensor.type)),
        scale=scale, zero_point=zp,
        quantized_dimension=int(q.quantizedDimension) if q is not None else 0,
    )


class FlatbufferModel:
    """A parsed, read-only view of a TFLite flatbuffer (subgraph 0).

    Args:
        content: the flatbuffer bytes.

    Raises:
        InvalidModelFileError: if the bytes are not a readable TFLite model.

    Example:

    >>> fb = FlatbufferModel(open("model.tflite", "rb").read())  # doctest: +SKIP
    >>> fb.op_counts()  # doctest: +SKIP
    Counter({'CONV_2D': 3, 'FULLY_CONNECTED': 1})
    """

    def __init__(self, content: bytes):
        check_bytes(content)
        self.content = bytes(content)
        self._model = _parse(self.content)
        self._subgraph = self._model.subgraphs[0]
        self.tensors = [_tensor_info(t, i) for i, t in enumerate(self._subgraph.tensors)]
        self.ops = [
            OpInfo(i, _op_name(self._model.operatorCodes[op.opcodeIndex]),
                   tuple(int(t) for t in op.inputs), tuple(int(t) for t in op.outputs))
            for i, op in enumerate(self._subgraph.operators or [])
        ]

    @property
    def inputs(self) -> list[TensorInfo]:
        return [self.tensors[i] for i in self._subgraph.inputs]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [self.tensors[i] for i in self._subgraph.outputs]

    @property
    def num_subgraphs(self) -> int:
        return len(self._model.subgraphs)

    def op_counts(self) -> collections.Counter:
        """Number of operators of each kind."""
        return collections.Counter(op.name for op in self.ops)

    def signature_keys(self) -> list[str]:
        keys = []
        for sig in self._model.signatureDefs or []:
            key = sig.signatureKey
            keys.append(key.decode() if isinstance(key, bytes) else str(key))
        return keys

    def constant(self, tensor_index: int) -> np.ndarray | None:
        """The constant data of a tensor (weights, biases), or None.

        Sparse-encoded tensors return None: their buffer holds only the
        non-zero values (see :meth:`is_sparse`).
        """
        tensor = self._subgraph.tensors[tensor_index]
        data = self._model.buffers[tensor.buffer].data
        if data is None or len(data) == 0 or tensor.sparsity is not None:
            return None
        info = self.tensors[tensor_index]
        raw = np.asarray(data, dtype=np.uint8).tobytes()
        return np.frombuffer(raw, dtype=info.numpy_dtype).reshape(info.shape)

    def is_sparse(self, tensor_index: int) -> bool:
        """True if the tensor uses TFLite's sparse encoding."""
        return self._subgraph.tensors[tensor_index].sparsity is not None

    def is_constant(self, tensor_index: int) -> bool:
        """True if the tensor's values are stored in the file (weights, biases, shapes)."""
        data = self._model.buffers[self._subgraph.tensors[tensor_index].buffer].data
        return data is not None and len(data) > 0

    def float_ops(self, ignore_io_boundary: bool = True) -> list[OpInfo]:
        """Operators that read or write a floating-point tensor.

        Args:
            ignore_io_boundary: leave out the QUANTIZE op that turns a float
                model input into integers and the DEQUANTIZE op that turns an
                integer result into a float model output (float I/O around
                an integer body).
        """
        inputs, outputs = set(self._subgraph.inputs), set(self._subgraph.outputs)
        found = []
        for op in self.ops:
            if ignore_io_boundary and (
                    (op.name == "QUANTIZE" and set(op.inputs) <= inputs)
                    or (op.name == "DEQUANTIZE" and set(op.outputs) <= outputs)):
                continue
            if any(self.tensors[t].dtype in FLOAT_TYPES for t in op.inputs + op.outputs if t >= 0):
                found.append(op)
        return found

    def weight_tensors(self) -> list[tuple[OpInfo, TensorInfo]]:
        """(op, weight tensor) for every convolution / fully-connected op."""
        pairs = []
        for op in self.ops:
            if op.name in WEIGHT_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0:
                pairs.append((op, self.tensors[op.inputs[1]]))
        return pairs

    def weight_sparsity(self) -> list[dict[str, Any]]:
        """Fraction of exact zeros in each weight tensor, read from the file.

        For int8 weights a zero is the stored value 0 (symmetric weight
        quantization has zero point 0), so pruned weights read back as zeros.
        """
        rows = []
        for op, info in self.weight_tensors():
            data = self.constant(info.index)
            if data is None:
                continue
            zp = info.zero_point[0] if info.zero_point else 0
            zeros = int(np.count_nonzero(data == zp))
            rows.append({"op": op.name, "tensor": info.name, "shape": list(info.shape),
                         "dtype": info.dtype, "size": int(data.size),
                         "sparsity": zeros / max(int(data.size), 1)})
        return rows
