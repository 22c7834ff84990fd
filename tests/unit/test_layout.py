"""The package's shape: every public name resolves, none shadows a module, one way to read a model."""

import importlib
import pkgutil
import types

import pytest

import tfedge
from tfedge.artifact import as_artifact
from tfedge.errors import InvalidModelFileError


def _submodules() -> set:
    return {info.name for info in pkgutil.iter_modules(tfedge.__path__)}


def test_every_public_name_resolves():
    for name in tfedge.__all__:
        assert getattr(tfedge, name) is not None, name
    assert set(tfedge.__all__) <= set(dir(tfedge))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tfedge.nope  # noqa: B018


def test_no_function_shadows_a_submodule_of_the_same_name():
    modules = _submodules()
    assert {"_convert", "_validate", "_bench", "_wrap", "_tune", "artifact", "source",
            "calibration", "keras3"} <= modules
    for name in tfedge.__all__:
        value = getattr(tfedge, name)
        if name in modules:
            assert isinstance(value, types.ModuleType), f"tfedge.{name} hides tfedge/{name}"
    for name in modules:  # and each module is importable under its own name
        assert importlib.import_module(f"tfedge.{name}").__name__ == f"tfedge.{name}"


def test_stage_functions_are_exported_with_their_helpers():
    assert tfedge.estimate_latency is importlib.import_module("tfedge._bench").estimate_latency
    assert callable(tfedge.bench) and callable(tfedge.convert) and callable(tfedge.tune)


def test_as_artifact_is_the_one_reader_and_checks_bytes(tmp_path):
    with pytest.raises(InvalidModelFileError, match="Not a TFLite model"):
        as_artifact(b"not a flatbuffer at all")
    with pytest.raises(InvalidModelFileError, match="folder"):
        as_artifact(tmp_path)
    with pytest.raises(FileNotFoundError, match="No such model file"):
        as_artifact(tmp_path / "missing.tflite")
    with pytest.raises(TypeError, match="Convert a Keras model with tfedge.convert first"):
        as_artifact(object())
