"""INT4 / INT2 tensors in a flatbuffer: packed sizes, unpacked values, size checks."""

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from tfedge import flatbuffer
from tfedge.errors import InvalidModelFileError


def _one_tensor_model(dtype: int, shape: list[int], data: bytes) -> bytes:
    """A flatbuffer with one constant tensor (and an input, so it has a subgraph I/O)."""
    model = schema.ModelT()
    model.version = 3
    model.buffers = [schema.BufferT(), schema.BufferT()]
    model.buffers[1].data = np.frombuffer(data, np.uint8)
    weight, inp = schema.TensorT(), schema.TensorT()
    weight.name, weight.shape, weight.type, weight.buffer = b"w", shape, dtype, 1
    inp.name, inp.shape, inp.type, inp.buffer = b"x", [1], schema.TensorType.FLOAT32, 0
    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs, subgraph.operators = \
        [weight, inp], [1], [1], []
    model.subgraphs = [subgraph]
    model.operatorCodes = []
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_int4_and_int2_tensors_read_with_packed_sizes_and_values():
    from litert_quantizer.transformations.transformation_utils import pack_data

    values = np.array([-8, 7, -1, 0, 3, -5, 1, 2, -2], np.int8)  # 9 values: 5 bytes in int4
    packed = pack_data(4, values.view(np.uint8)).tobytes()  # the quantizer's own packing
    fb = flatbuffer.FlatbufferModel(_one_tensor_model(schema.TensorType.INT4, [3, 3], packed))
    info = fb.tensors[0]
    assert (info.dtype, info.bits, info.nbytes) == ("INT4", 4, 5)
    np.testing.assert_array_equal(fb.constant(0).reshape(-1), values)

    two = np.array([-2, 1, 0, -1, 1, -2], np.int8)  # 6 values: 2 bytes in int2
    fb2 = flatbuffer.FlatbufferModel(_one_tensor_model(
        schema.TensorType.INT2, [6], pack_data(2, two.view(np.uint8)).tobytes()))
    assert fb2.tensors[0].nbytes == 2
    np.testing.assert_array_equal(fb2.constant(0), two)

    with pytest.raises(InvalidModelFileError, match="has 4 bytes of data, not 5"):
        flatbuffer.FlatbufferModel(_one_tensor_model(schema.TensorType.INT4, [3, 3], packed[:4]))
