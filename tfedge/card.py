"""Model cards: the JSON facts that travel with every ``.tflite`` file.

A card records what the receiving team needs to trust and use the model:
versions of the tools that made it, conversion mode, size and sha256 of the
flatbuffer, input/output quantization, op list, signatures, the runtime
settings it needs (op resolver), per-layer weight sparsity and encoding
(read back from the flatbuffer), and any validation or benchmark results.
``TFLiteArtifact.save`` writes it beside the ``.tflite`` (``model.tflite`` ->
``model_card.json``, ``digits.tflite`` -> ``digits_card.json``).
Framework-neutral: reading TF's version is done without importing it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
from typing import Any

from tfedge.report import write_json

CARD_FILENAME = "model_card.json"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def tool_versions() -> dict[str, str | None]:
    """Versions of tfedge and the libraries that shape a converted model."""
    tf_version = _version("tensorflow") or _version("tensorflow-cpu")
    return {"tfedge": _version("tfedge"), "tensorflow": tf_version,
            "tf_keras": _version("tf-keras"),
            "tensorflow_model_optimization": _version("tensorflow-model-optimization"),
            "ai_edge_litert": _version("ai-edge-litert"),
            "litert_quantizer": _version("litert-quantizer")}


def model_card(artifact: Any, *, name: str, description: str = "",
               labels: list[str] | None = None, validation: Any = None,
               benchmark: Any = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Builds the model card of a converted model.

    Args:
        artifact: a :class:`~tfedge.TFLiteArtifact`.
        name: model name for humans and file names.
        description: one or two sentences on what the model does.
        labels: class labels, in output order.
        validation: a ValidationReport (or dict) from ``tfedge.validate``;
            default: the artifact's last validation, if any.
        benchmark: a benchmark report (or dict) from ``tfedge.bench``.
        extra: anything else to record (training settings, dataset, ...).

    Returns:
        The card as a JSON-ready dict: ``name``, ``mode``, ``sha256``,
        ``size_bytes``, ``runtime`` (the LiteRT settings it needs),
        ``io_quantization``, ``model`` (tensors, ops, signatures, how it was
        converted), ``weight_sparsity`` (per layer, with its encoding),
        ``layer_bits`` (each layer's weight and activation bit width),
        ``validation``, ``benchmark``, ``tools``.
    """
    def as_dict(value):
        return value.to_dict() if hasattr(value, "to_dict") else value

    if validation is None:
        validation = getattr(artifact, "validation", None)
    runtime = artifact.runtime_settings() if hasattr(artifact, "runtime_settings") else None
    return {
        "name": name,
        "description": description,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tools": tool_versions(),
        "mode": artifact.mode,
        "sha256": artifact.sha256,
        "size_bytes": artifact.size_bytes,
        "runtime": runtime,
        "io_quantization": [
            {"role": role, "name": t.name, "dtype": t.dtype, "shape": list(t.shape),
             "scale": t.scale[0] if t.scale else None,
             "zero_point": t.zero_point[0] if t.zero_point else None}
            for role, tensors in (("input", artifact.inputs), ("output", artifact.outputs))
            for t in tensors],
        "model": artifact.to_dict(),
        "weight_sparsity": artifact.flatbuffer.weight_sparsity(),
        "layer_bits": artifact.flatbuffer.layer_bits(),
        "labels": labels,
        "validation": as_dict(validation),
        "benchmark": as_dict(benchmark),
        **({"extra": extra} if extra else {}),
    }


def card_path(tflite_path: str | os.PathLike) -> str:
    """Where the card of a ``.tflite`` file goes: beside it.

    ``dir/model.tflite`` -> ``dir/model_card.json`` (the bundle convention,
    :data:`CARD_FILENAME`); ``dir/x.tflite`` -> ``dir/x_card.json``.
    """
    path = os.fspath(tflite_path)
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(os.path.dirname(path), f"{stem}_card.json")


def write_card_beside(tflite_path: str | os.PathLike, card: dict[str, Any]) -> str:
    """Writes ``card`` beside ``tflite_path`` (see :func:`card_path`); returns its path."""
    path = card_path(tflite_path)
    return write_model_card(os.path.dirname(path) or ".", card, os.path.basename(path))


def write_model_card(directory: str | os.PathLike, card: dict[str, Any],
                     filename: str = CARD_FILENAME) -> str:
    """Writes ``card`` as JSON into ``directory``; returns the file's path."""
    return write_json(os.path.join(os.fspath(directory), filename), card)


def read_model_card(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a card: its file, its folder (``model_card.json``), or its ``.tflite`` file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CARD_FILENAME)
    elif path.endswith(".tflite"):
        path = card_path(path)
    with open(path) as f:
        return json.load(f)
