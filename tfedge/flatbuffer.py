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
# Sub-byte integer types: values packed into bytes, low bits first, in ceil(n * bits / 8)
# bytes (as the LiteRT Quantizer writes them and LiteRT's kernels read them).
SUB_BYTE_BITS = {"INT4": 4, "UINT4": 4, "INT2": 2}
_ITEM_BITS = {"FLOAT32": 32, "FLOAT16": 16, "FLOAT64": 64, "BFLOAT16": 16, "INT8": 8,
              "UINT8": 8, "INT16": 16, "UINT16": 16, "INT32": 32, "UINT32": 32, "INT64": 64,
              "UINT64": 64, "BOOL": 8, **SUB_BYTE_BITS}


def type_bits(dtype: str) -> int | None:
    """Bits per element of a schema type name (``"INT4"`` -> 4), or None if unknown."""
    return _ITEM_BITS.get(dtype)


def packed_bytes(num_elements: int, dtype: str) -> int | None:
    """Bytes a dense tensor of ``num_elements`` takes in the file (sub-byte types packed)."""
    bits = type_bits(dtype)
    return None if bits is None else -(-int(num_elements) * bits // 8)


def unpack_sub_byte(raw: bytes, dtype: str, num_elements: int) -> np.ndarray:
    """Packed INT4 / UINT4 / INT2 values as an int8 array (sign-extended for signed types)."""
    bits = SUB_BYTE_BITS[dtype]
    per_byte = 8 // bits
    data = np.frombuffer(raw, dtype=np.uint8)
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits)
    values = ((data[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:num_elements]
    values = values.astype(np.int8)
    if dtype.startswith("INT"):
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values).astype(np.int8)
    return values

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

    @property
    def bits(self) -> int | None:
        """Bits per element (``INT4``: 4), or None for a type without a fixed width."""
        return type_bits(self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes the tensor's values take when dense (sub-byte types packed), 0 if unknown."""
        size = int(np.prod(self.shape)) if self.shape else 1
        return packed_bytes(size, self.dtype) or 0

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


def _decoded(name: Any) -> None:
    if isinstance(name, bytes):
        name.decode()  # a flipped bit in a name: UnicodeDecodeError


_MAX_RANK = 16
_MAX_TENSOR_ELEMENTS = 1 << 31  # LiteRT sizes tensors in int32 bytes in many kernels


def _sparse_vector(vector: Any) -> np.ndarray:
    values = getattr(vector, "values", None)
    if values is None:
        raise ValueError("a sparse dimension has no segment or index array")
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _check_sparsity(tensor: Any, shape: list[int], stored_bytes: int, itemsize: int) -> None:
    """Checks a sparse tensor's encoding as TFLite's own verifier does.

    Walks the dimensions in traversal order: a dense dimension multiplies
    the number of nodes by its size; a CSR dimension must have one segment
    boundary per node plus one, non-decreasing from 0 to the number of
    indices, and indices inside the dimension. The stored values must be
    exactly the nodes left at the end (DENSIFY reads that many).
    """
    sparsity = tensor.sparsity
    order = [int(v) for v in (sparsity.traversalOrder if sparsity.traversalOrder is not None
                              else [])]
    block_map = [int(v) for v in (sparsity.blockMap if sparsity.blockMap is not None else [])]
    dims = list(sparsity.dimMetadata or [])
    rank = len(shape)
    n = rank + len(block_map)
    if sorted(order) != list(range(n)) or len(dims) != n or any(
            not 0 <= d < rank for d in block_map) or len(set(block_map)) != len(block_map):
        raise ValueError("inconsistent sparse encoding (traversal order, block map, dimensions)")
    block = {d: 1 for d in range(rank)}
    for j, d in enumerate(block_map):
        size = int(dims[order.index(rank + j)].denseSize)
        if size < 1 or shape[d] % size:
            raise ValueError("sparse block size does not divide the tensor's shape")
        block[d] = size
    nodes = 1
    for level, d in enumerate(order):
        size = shape[d] // block[d] if d < rank else block[block_map[d - rank]]
        meta = dims[level]
        if meta.format == 0:  # DENSE
            if int(meta.denseSize) != size:
                raise ValueError("a dense dimension of the sparse encoding has the wrong size")
            nodes *= size
        elif meta.format == 1:  # SPARSE_CSR
            segments = _sparse_vector(meta.arraySegments)
            indices = _sparse_vector(meta.arrayIndices)
            if len(segments) != nodes + 1 or segments[0] != 0 or np.any(np.diff(segments) < 0) \
                    or segments[-1] != len(indices):
                raise ValueError("corrupt sparse segments")
            if len(indices) and (indices.min() < 0 or indices.max() >= size):
                raise ValueError("sparse index outside its dimension")
            nodes = len(indices)
        else:
            raise ValueError(f"unknown sparse dimension format {meta.format}")
        if nodes > 1 << 40:
            raise ValueError("sparse encoding too large")
    if itemsize and stored_bytes != nodes * itemsize:
        raise ValueError(f"sparse tensor stores {stored_bytes} bytes for {nodes} values")


def _check_structure(model: "schema.ModelT") -> None:
    """Raises on references and sizes a runtime would follow blindly.

    Every index must point inside its table; model inputs must be distinct,
    non-constant tensors (LiteRT writes into them); constant data must have
    exactly the size its tensor's shape and type say (LiteRT reads that
    much); names must be text. A damaged file that passes this loads without
    crashing the interpreter in our fuzzing (truncations and bit flips of
    real models, run in a child process).
    """
    n_buffers = len(model.buffers or [])
    n_codes = len(model.operatorCodes or [])
    if not model.subgraphs:
        raise IndexError("the model has no subgraph")
    for subgraph in model.subgraphs:
        if subgraph.tensors is None or subgraph.inputs is None or subgraph.outputs is None:
            raise ValueError("a subgraph has no tensor, input or output table")
        tensors = subgraph.tensors
        n_tensors = len(tensors)
        for op in subgraph.operators or []:
            for t in list(op.inputs if op.inputs is not None else []) + list(
                    op.outputs if op.outputs is not None else []):
                if t >= n_tensors or t < -1:
                    raise IndexError(f"operator refers to tensor {t} of {n_tensors}")
            if not 0 <= op.opcodeIndex < n_codes:
                raise IndexError("operator refers to a missing op code")
        inputs = list(subgraph.inputs if subgraph.inputs is not None else [])
        outputs = list(subgraph.outputs if subgraph.outputs is not None else [])
        for t in inputs + outputs:
            if not 0 <= t < n_tensors:
                raise IndexError(f"model input/output refers to tensor {t} of {n_tensors}")
        if len(set(inputs)) != len(inputs):
            raise ValueError("the same tensor is listed twice as a model input")
        for t in inputs:
            data = model.buffers[tensors[t].buffer].data if tensors[t].buffer < n_buffers else None
            if data is not None and len(data):
                raise ValueError(f"model input {t} is a constant tensor")
        for tensor in tensors:
            if not 0 <= tensor.buffer < n_buffers:
                raise IndexError(f"tensor refers to buffer {tensor.buffer} of {n_buffers}")
            _decoded(tensor.name)
            if tensor.type not in _TYPE_NAMES:
                raise ValueError(f"unknown tensor type {tensor.type}")
            shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
            if len(shape) > _MAX_RANK or any(d < 0 for d in shape):
                raise ValueError(f"tensor shape {shape[:8]} is not a valid shape")
            if int(np.prod(shape, dtype=object)) > _MAX_TENSOR_ELEMENTS:
                raise ValueError(f"tensor shape {shape[:8]} is implausibly large")
            data = model.buffers[tensor.buffer].data
            dtype = _NUMPY_TYPES.get(_TYPE_NAMES.get(tensor.type, ""))
            if tensor.sparsity is not None:
                _check_sparsity(tensor, shape, 0 if data is None else len(data),
                                np.dtype(dtype).itemsize if dtype is not None else 0)
            elif data is not None and len(data) and (
                    dtype is not None or _TYPE_NAMES[tensor.type] in SUB_BYTE_BITS):
                expected = packed_bytes(int(np.prod(shape, dtype=object)),
                                        _TYPE_NAMES[tensor.type])
                if len(data) != expected:
                    raise ValueError(f"constant tensor of shape {shape} has {len(data)} bytes "
                                     f"of data, not {expected}")
    for sig in model.signatureDefs or []:
        _decoded(sig.signatureKey)
        for item in list(sig.inputs or []) + list(sig.outputs or []):
            _decoded(item.name)
    for entry in model.metadata or []:
        _decoded(entry.name)


@functools.lru_cache(maxsize=8)
def _parse(content: bytes) -> "schema.ModelT":
    try:
        model = schema.ModelT.InitFromPackedBuf(content, 0)
        _check_structure(model)
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
                   tuple(int(t) for t in (op.inputs if op.inputs is not None else [])),
                   tuple(int(t) for t in (op.outputs if op.outputs is not None else [])))
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

        Sub-byte tensors (``INT4``, ``INT2``) come back unpacked, as int8 values.
        Sparse-encoded tensors return None: their buffer holds only the
        non-zero values (see :meth:`is_sparse`).
        """
        tensor = self._subgraph.tensors[tensor_index]
        raw = self._buffer_bytes(tensor.buffer)
        if not raw or tensor.sparsity is not None:
            return None
        info = self.tensors[tensor_index]
        if info.dtype in SUB_BYTE_BITS:  # packed: unpacked into int8 values
            size = int(np.prod(info.shape)) if info.shape else 1
            return unpack_sub_byte(raw, info.dtype, size).reshape(info.shape)
        if info.numpy_dtype.itemsize == 0:  # a type NumPy has no match for
            return None
        return np.frombuffer(raw, dtype=info.numpy_dtype).reshape(info.shape)

    def _buffer_bytes(self, index: int) -> bytes:
        """A buffer's bytes: inline, or (files the LiteRT Quantizer writes) after the
        flatbuffer at ``offset`` / ``size``."""
        buffer = self._model.buffers[index]
        if buffer.data is not None and len(buffer.data):
            return np.asarray(buffer.data, dtype=np.uint8).tobytes()
        offset, size = int(buffer.offset or 0), int(buffer.size or 0)
        return self.content[offset:offset + size] if offset > 1 and size else b""

    def is_sparse(self, tensor_index: int) -> bool:
        """True if the tensor uses TFLite's sparse encoding."""
        return self._subgraph.tensors[tensor_index].sparsity is not None

    def is_constant(self, tensor_index: int) -> bool:
        """True if the tensor's values are stored in the file (weights, biases, shapes)."""
        return bool(self._buffer_bytes(self._subgraph.tensors[tensor_index].buffer))

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

    def stored_tensor(self, tensor_index: int) -> int:
        """The tensor whose values the file stores behind ``tensor_index``.

        A weight read through DENSIFY (sparse weights) or DEQUANTIZE (float16
        weights) is computed at load time from a stored tensor; this follows
        such ops back to it. Other tensors are returned as they are.
        """
        producers = {t: op for op in self.ops if op.name in ("DENSIFY", "DEQUANTIZE")
                     for t in op.outputs}
        seen = set()
        while tensor_index in producers and tensor_index not in seen:
            seen.add(tensor_index)
            tensor_index = producers[tensor_index].inputs[0]
        return tensor_index

    def sparse_encoding(self, tensor_index: int) -> dict[str, Any] | None:
        """How a sparse-encoded tensor is stored, or None for a dense one.

        Returns:
            ``{"block": [rows, cols] or None, "stored_values": n,
            "stored_bytes": b, "index_bytes": i, "nonzero": k}``: the block
            shape when the converter encoded blocks (e.g. ``[1, 4]``), the
            number of values the buffer holds (non-zeros plus block padding),
            their size, the size of the index arrays, and how many of the
            values are non-zero.
        """
        tensor = self._subgraph.tensors[tensor_index]
        sparsity = tensor.sparsity
        if sparsity is None:
            return None
        info = self.tensors[tensor_index]
        data = self._model.buffers[tensor.buffer].data
        raw = np.asarray(data if data is not None else [], dtype=np.uint8).tobytes()
        itemsize = info.numpy_dtype.itemsize
        values = (np.frombuffer(raw[:len(raw) - len(raw) % itemsize], dtype=info.numpy_dtype)
                  if itemsize else np.zeros(0, np.int8))
        block = None
        block_map = list(sparsity.blockMap) if sparsity.blockMap is not None else []
        dims = sparsity.dimMetadata or []
        if block_map and len(dims) >= len(info.shape) + len(block_map):
            block = [1] * len(info.shape)
            for i, axis in enumerate(block_map):
                block[int(axis)] = int(dims[len(info.shape) + i].denseSize)
        index_bytes = 0
        for dim in dims:
            for vector in (getattr(dim, "arraySegments", None), getattr(dim, "arrayIndices", None)):
                items = getattr(vector, "values", None)
                if items is not None:
                    index_bytes += np.asarray(items).nbytes
        zp = info.zero_point[0] if info.zero_point else 0
        return {"block": block, "stored_values": int(values.size), "stored_bytes": len(raw),
                "index_bytes": int(index_bytes), "nonzero": int(np.count_nonzero(values != zp))}

    def weight_sparsity(self) -> list[dict[str, Any]]:
        """Fraction of exact zeros in each weight tensor, read from the file.

        For int8 weights a zero is the stored value 0 (symmetric weight
        quantization has zero point 0), so pruned weights read back as zeros.
        Weights stored in TFLite's sparse encoding are counted from their
        stored values; ``encoding`` says which kind each tensor uses,
        ``block`` the block shape of a block-sparse encoding, and
        ``stored_bytes`` what the tensor takes in the file (values plus
        sparse indices), to compare with ``size`` x item size when dense.
        """
        rows = []
        for op, weight in self.weight_tensors():
            info = self.tensors[self.stored_tensor(weight.index)]
            size = int(np.prod(info.shape)) if info.shape else 0
            sparse = self.sparse_encoding(info.index)
            if sparse is not None:
                zeros = size - sparse["nonzero"]
                extra = {"encoding": "sparse", "block": sparse["block"],
                         "stored_bytes": sparse["stored_bytes"] + sparse["index_bytes"]}
            else:
                data = self.constant(info.index)
                if data is None:
                    continue
                zp = info.zero_point[0] if info.zero_point else 0
                zeros = int(np.count_nonzero(data == zp))
                extra = {"encoding": "dense", "block": None, "stored_bytes": info.nbytes}
            rows.append({"op": op.name, "tensor": info.name, "shape": list(info.shape),
                         "dtype": info.dtype, "size": size,
                         "sparsity": zeros / max(size, 1), **extra})
        return rows

    def layer_bits(self) -> list[dict[str, Any]]:
        """The bit width of each convolution / fully-connected op's weights and activations.

        Returns:
            One row per weight op, in execution order: ``op`` (index and
            name), ``layer`` (its output tensor's name), ``weight_dtype`` and
            ``weight_bits`` (of the stored weights, e.g. ``INT4`` / 4, read
            through a DEQUANTIZE for weight-only models), ``granularity``
            (``"per-channel"``, ``"per-tensor"``, ``"blockwise-<n>"`` or
            ``"float"``), ``activation_dtype`` / ``activation_bits`` (of
            the op's input), ``weight_bytes`` (in the file, packed) and
            ``compute`` (``"integer"`` or ``"float"``).
        """
        rows = []
        for op, weight in self.weight_tensors():
            stored = self.tensors[self.stored_tensor(weight.index)]
            quant = self._subgraph.tensors[stored.index].quantization
            if quant is not None and quant.details is not None and \
                    hasattr(quant.details, "blockSize"):
                granularity = f"blockwise-{int(quant.details.blockSize)}"
            elif stored.dtype in FLOAT_TYPES:
                granularity = "float"
            else:
                granularity = "per-channel" if len(stored.scale) > 1 else "per-tensor"
            activation = self.tensors[op.inputs[2 if op.name == "TRANSPOSE_CONV" else 0]]
            output = self.tensors[op.outputs[0]] if op.outputs else activation
            rows.append({"op": f"{op.index} {op.name}", "layer": output.name.split(";")[0],
                         "weight_dtype": stored.dtype, "weight_bits": stored.bits,
                         "granularity": granularity, "activation_dtype": activation.dtype,
                         "activation_bits": activation.bits, "weight_bytes": stored.nbytes,
                         "compute": "float" if activation.dtype in FLOAT_TYPES else "integer"})
        return rows

    def byte_breakdown(self) -> dict[str, Any]:
        """Where the file's bytes go: weights by op and type, biases, quantization, the graph.

        Returns:
            ``{"total", "weights": {"<OP> <DTYPE>": bytes}, "biases",
            "other_constants", "scales" (float32, 4 B each), "zero_points"
            (int64, 8 B each), "quant_params_of_weights" (the scales and zero
            points of weight and bias tensors: per channel), "tensor_names",
            "graph" (the rest: tensor and op tables, names, signatures,
            flatbuffer structure and alignment)}``, in bytes.
        """
        consumers = {}
        for op in self.ops:
            for slot, t in enumerate(op.inputs):
                if t >= 0:
                    consumers.setdefault(self.stored_tensor(t), (op.name, slot))
        weights: dict[str, int] = collections.Counter()
        biases = other = scales = zero_points = weight_quant = names = 0
        seen_buffers = set()
        for info, tensor in zip(self.tensors, self._subgraph.tensors):
            names += len(info.name.encode())
            quant_bytes = 4 * len(info.scale) + 8 * len(info.zero_point)
            scales += 4 * len(info.scale)
            zero_points += 8 * len(info.zero_point)
            buffer = self._model.buffers[tensor.buffer]
            size = len(buffer.data) if buffer.data is not None else \
                (int(buffer.size or 0) if int(buffer.offset or 0) > 1 else 0)
            if not size or tensor.buffer in seen_buffers:
                continue
            seen_buffers.add(tensor.buffer)
            op_name, slot = consumers.get(info.index, ("", -1))
            if op_name in WEIGHT_OPS and slot == 1:
                weights[f"{op_name} {info.dtype}"] += size
                weight_quant += quant_bytes
            elif op_name in WEIGHT_OPS and slot == 2:
                biases += size
                weight_quant += quant_bytes
            else:
                other += size
        stored = sum(weights.values()) + biases + other
        return {"total": len(self.content), "weights": dict(sorted(weights.items())),
                "weights_total": sum(weights.values()), "biases": biases,
                "other_constants": other, "scales": scales, "zero_points": zero_points,
                "quant_params_of_weights": weight_quant, "tensor_names": names,
                "graph": len(self.content) - stored - scales - zero_points - names}
