"""Named entries in a ``.tflite`` file's own metadata table, and its signatures.

The TFLite schema gives every model a ``metadata`` list of name -> buffer
entries that runtimes ignore (the converter stores ``min_runtime_version``
and ``CONVERSION_METADATA`` there). tfedge stores its handoff facts there too,
so the ``.tflite`` describes itself even without the files around it.

Writing re-serializes the model with the schema's object API
(``ai_edge_litert.schema_py_generated``) and keeps every buffer 16-byte
aligned, as the converter does. Framework-neutral: no TensorFlow import.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tfedge.flatbuffer import check_bytes

_IDENTIFIER = b"TFL3"
_ALIGNMENT = 16


class _AlignedBufferT(schema.BufferT):
    """A buffer that packs its data 16-byte aligned (the generated Pack aligns to 1)."""

    def Pack(self, builder):  # noqa: N802  (the generated API's name)
        data = None
        if self.data is not None:
            raw = np.asarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(raw), _ALIGNMENT)
            builder.head -= len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            data = builder.EndVector()
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        schema.BufferAddOffset(builder, self.offset)
        schema.BufferAddSize(builder, self.size)
        return schema.BufferEnd(builder)


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_metadata(content: bytes) -> dict[str, bytes]:
    """All metadata entries of a model, name -> bytes.

    Raises:
        InvalidModelFileError: the bytes are not a readable TFLite model.
    """
    check_bytes(content)
    model = schema.Model.GetRootAs(bytes(content), 0)
    entries = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        buffer = model.Buffers(entry.Buffer())
        entries[_name(entry.Name())] = (buffer.DataAsNumpy().tobytes()
                                        if buffer.DataLength() else b"")
    return entries


def read_signatures(content: bytes) -> dict[str, dict[str, dict[str, int]]]:
    """The model's signatures: key -> {"inputs"|"outputs": {name: tensor index}}.

    Raises:
        InvalidModelFileError: the bytes are not a readable TFLite model.
    """
    check_bytes(content)
    model = schema.Model.GetRootAs(bytes(content), 0)
    signatures = {}
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        signatures[_name(sig.SignatureKey())] = {
            "inputs": {_name(sig.Inputs(k).Name()): sig.Inputs(k).TensorIndex()
                       for k in range(sig.InputsLength())},
            "outputs": {_name(sig.Outputs(k).Name()): sig.Outputs(k).TensorIndex()
                        for k in range(sig.OutputsLength())}}
    return signatures


def embed_metadata(content: bytes, entries: dict[str, bytes]) -> bytes:
    """Returns the model with ``entries`` added to its metadata table.

    Entries with a name already present are replaced; the model's graph,
    weights and other metadata are unchanged.

    Args:
        content: the flatbuffer bytes.
        entries: name -> bytes to store.

    Returns:
        The new flatbuffer bytes.

    Raises:
        InvalidModelFileError: the bytes are not a readable TFLite model.

    Example:

    >>> new = embed_metadata(content, {"my_app.json": b'{"labels": []}'})  # doctest: +SKIP
    >>> read_metadata(new)["my_app.json"]  # doctest: +SKIP
    b'{"labels": []}'
    """
    check_bytes(content)
    model = schema.ModelT.InitFromPackedBuf(bytes(content), 0)
    model.buffers = list(model.buffers or [])
    used = {t.buffer for g in model.subgraphs or [] for t in g.tensors or []}
    kept = []
    for entry in model.metadata or []:
        if _name(entry.name) not in entries:
            kept.append(entry)
        elif entry.buffer not in used:  # empty the replaced entry's buffer
            model.buffers[entry.buffer].data = None
    model.metadata = kept
    for name, data in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(bytes(data), dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    for buffer in model.buffers:
        buffer.__class__ = _AlignedBufferT
    builder = flatbuffers.Builder(len(content) + sum(len(d) for d in entries.values()) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=_IDENTIFIER)
    out = bytes(builder.Output())
    check_bytes(out)
    return out
