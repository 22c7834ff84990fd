"""Model cards: the JSON facts that travel with every ``.tflite`` file.

A card records what the receiving team needs to trust and use the model:
versions of the tools that made it, conversion mode, size and sha256 of the
flatbuffer, input/output quantization, op list, per-layer weight sparsity
(read back from the flatbuffer), and any validation or benchmark results.
Framework-neutral: reading TF's version is done without importing it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
from typing import Any

from tfedge.report import to_json

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
            "ai_edge_litert": _version("ai-edge-litert")}


def model_card(artifact: Any, *, name: str, description: str = "",
               labels: list[str] | None = None, validation: Any = None,
               benchmark: Any = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Builds the model card of a converted model.

    Args:
        artifact: a :class:`~tfedge.convert.TFLiteArtifact`.
        name: model name for humans and file names.
        description: one or two sentences on what the model does.
        labels: class labels, in output order.
        validation: a ValidationReport (or dict) from ``tfedge.validate``.
        benchmark: a benchmark report (or dict) from ``tfedge.bench``.
        extra: anything else to record (training settings, dataset, ...).

    Returns:
        The card as a JSON-ready dict.
    """
    def as_dict(value):
        return value.to_dict() if hasattr(value, "to_dict") else value

    return {
        "name": name,
        "description": description,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tools": tool_versions(),
        "model": artifact.to_dict(),
        "weight_sparsity": artifact.flatbuffer.weight_sparsity(),
        "labels": labels,
        "validation": as_dict(validation),
        "benchmark": as_dict(benchmark),
        **({"extra": extra} if extra else {}),
    }


def write_model_card(directory: str | os.PathLike, card: dict[str, Any],
                     filename: str = CARD_FILENAME) -> str:
    """Writes ``card`` as JSON into ``directory``; returns the file's path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(os.fspath(directory), filename)
    with open(path, "w") as f:
        f.write(to_json(card) + "\n")
    return path


def read_model_card(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a card written by :func:`write_model_card` (a file or its folder)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CARD_FILENAME)
    with open(path) as f:
        return json.load(f)
