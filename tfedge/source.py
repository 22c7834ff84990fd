"""The model side of conversion: what ``convert`` reads, and the converter call.

:func:`model_source` reads a tf_keras or Keras 3 model, an EdgeModel, a
SavedModel or a ``.keras`` / ``.h5`` file into a :class:`ModelSource`:
traced functions with a chosen batch over the model's variables.
:func:`make_converter` sets ``tf.lite.TFLiteConverter`` up for a mode the way
tfedge converts, and :func:`run_converter` runs it, turning its failures into
a :class:`~tfedge.errors.ConversionError` (:func:`quiet_converter` hides its
chatter). The converter is TensorFlow's own; nothing here re-implements it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import keyword
import os
import re
import sys
import tempfile
import warnings
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from tfedge._keras import is_keras3_model, keras
from tfedge._wrap import EdgeModel
from tfedge.artifact import INTEGER_MODES
from tfedge.calibration import as_numpy
from tfedge.errors import ConversionError, UnsupportedModelError
from tfedge.keras3 import as_functional, variable_holder
from tfedge.metadata import read_signatures
from tfedge.quantize import is_quantization_aware



@contextlib.contextmanager
def _fds_silenced(fds: tuple[int, ...] = (1, 2)) -> Iterator[None]:
    """Sends file descriptors 1 and 2 to /dev/null (the quantizer's C++ code prints there)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(fd) for fd in fds]
    except (OSError, ValueError, AttributeError):  # no real stdout/stderr (embedded Python)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in fds:
        os.dup2(devnull, fd)
    try:
        yield
    finally:
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """Hides the converter's Python and C++ chatter unless verbose logging.

    Its errors are not lost: the converter raises them as exceptions, which
    :func:`run_converter` turns into a ConversionError with their message.
    """
    if logging.get_verbosity() >= logging.DEBUG:
        yield
        return
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            _fds_silenced():
        warnings.filterwarnings("ignore", module="tensorflow")
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield  # (stdout: Keras 3's export prints every endpoint it saves)


def _clean_name(name: str | None, fallback: str) -> str:
    """A signature name for a tensor: no None, no Python keyword.

    ``tf.saved_model.save`` makes every input name a keyword argument; a
    name it cannot be (``"class"``, or ``"None"`` from a rebuilt model whose
    input tensor has no name) makes the save fail, and the converter then
    silently falls back to its old path, which writes no signature at all.
    """
    if name is None:
        return fallback
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name).split(":")[0]).strip("_")
    if keyword.iskeyword(name):  # "None" and "class" among them
        name += "_"
    return name or fallback


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n] - 1}")
    return out


@dataclasses.dataclass
class _Signature:
    key: str
    function: Any                      # a tf ConcreteFunction returning a dict
    inputs: list[tuple[str, tuple, Any]]   # (name, shape with batch, tf dtype)
    outputs: list[str]


@dataclasses.dataclass
class ModelSource:
    """What ``convert`` converts: traced functions over a model's weights.

    Attributes:
        name: the model's name.
        kind: ``"keras"`` (tf_keras), ``"keras3"`` or ``"saved_model"``.
        signatures: signature key -> traced function, inputs and outputs.
        trackable: the object holding the variables (kept alive).
        keras_model: the Keras model, when there is one.
        path: the file or directory it was read from, if any.
        batch_size: the batch dimension the functions were traced with.
    """

    name: str
    kind: str
    signatures: dict[str, _Signature]
    trackable: Any
    keras_model: Any = None
    path: str | None = None
    batch_size: int | None = 1
    saved_model_dir: str | None = None

    @property
    def signature(self) -> _Signature:
        return next(iter(self.signatures.values()))

    @property
    def input_shape(self) -> tuple:
        return self.signature.inputs[0][1]

    def converter(self) -> Any:
        """A fresh ``tf.lite.TFLiteConverter`` for these signatures."""
        keys = list(self.signatures)
        if self.saved_model_dir is not None:
            return tf.lite.TFLiteConverter.from_saved_model(self.saved_model_dir,
                                                            signature_keys=keys)
        if keys == ["serving_default"]:
            return tf.lite.TFLiteConverter.from_concrete_functions(
                [self.signature.function], self.trackable)
        # Other or several keys: only a SavedModel keeps them.
        self.saved_model_dir = tempfile.mkdtemp(prefix="tfedge_convert_")
        module = tf.Module()
        module.source = self.trackable
        tf.saved_model.save(module, self.saved_model_dir,
                            signatures={k: s.function for k, s in self.signatures.items()})
        return tf.lite.TFLiteConverter.from_saved_model(self.saved_model_dir,
                                                        signature_keys=keys)

    def reference_outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Float outputs of the source model for inputs ``x``, every output by signature name."""
        sig = self.signature
        if len(sig.outputs) == 1:
            return {sig.outputs[0]: self.reference(x)}
        if self.keras_model is not None:
            out = self.keras_model.predict(x, batch_size=64, verbose=0)
            names = list(getattr(self.keras_model, "output_names", None) or [])
            if isinstance(out, dict) and set(out) == set(sig.outputs):
                return {n: np.asarray(out[n]) for n in sig.outputs}
            if isinstance(out, (list, tuple)) and sorted(names) == sorted(sig.outputs):
                by_name = dict(zip(names, out))
                return {n: np.asarray(by_name[n]) for n in sig.outputs}
        return self._run_signature(x, sig.outputs)

    def _run_signature(self, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """The traced signature's outputs ``names`` on ``x``, in batches it was traced for."""
        sig = self.signature
        step = self.batch_size or 64
        outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for i in range(0, len(x), step):
            chunk = x[i:i + step]
            padded = chunk if self.batch_size is None or len(chunk) == step else \
                np.concatenate([chunk, np.zeros((step - len(chunk),) + chunk.shape[1:],
                                                chunk.dtype)])
            result = sig.function(tf.constant(padded))
            for n in names:
                outs[n].append(as_numpy(result[n])[:len(chunk)])
        return {n: np.concatenate(v) for n, v in outs.items()}

    def reference(self, x: np.ndarray) -> np.ndarray:
        """Float outputs of the source model (first output) for inputs ``x``."""
        if self.keras_model is not None:
            out = self.keras_model.predict(x, batch_size=64, verbose=0)
            if isinstance(out, dict):
                out = out[self.signature.outputs[0]] if self.signature.outputs[0] in out \
                    else next(iter(out.values()))
            elif isinstance(out, (list, tuple)):
                out = out[0]
            return np.asarray(out)
        first = self.signature.outputs[0]
        return self._run_signature(x, [first])[first]


def _batch(shape: Any, batch_size: int | None) -> tuple:
    dims = list(shape.as_list() if hasattr(shape, "as_list") else shape)
    if dims and batch_size is not None and dims[0] in (None, -1):
        dims[0] = batch_size
    elif dims and batch_size is None:
        dims[0] = None
    return tuple(None if d == -1 else d for d in dims)


def _keras_signature(model: Any, batch_size: int | None) -> _Signature:
    inputs = list(getattr(model, "inputs", None) or [])
    if not inputs:
        raise UnsupportedModelError(
            f"Model {getattr(model, 'name', model)!r} is not built: its input shape is "
            "unknown. Start it with keras.Input(shape=...) (or call model.build(input_shape) "
            "or call it once on data) before converting it.")
    names = _unique([_clean_name(getattr(t, "name", ""), f"input_{i}")
                     for i, t in enumerate(inputs)])
    specs = [tf.TensorSpec(_batch(t.shape, batch_size), getattr(t, "dtype", None) or tf.float32,
                           name=n) for t, n in zip(inputs, names)]
    outputs = list(getattr(model, "outputs", None) or [])
    out_names = list(getattr(model, "output_names", None) or [])
    if len(out_names) != len(outputs):
        out_names = [_clean_name(getattr(t, "name", ""), f"output_{i}")
                     for i, t in enumerate(outputs)]
    out_names = _unique([_clean_name(n, f"output_{i}") for i, n in enumerate(out_names)])

    def serve(*args):
        result = model(args[0] if len(args) == 1 else list(args), training=False)
        if isinstance(result, dict):
            return dict(result)
        values = result if isinstance(result, (list, tuple)) else [result]
        return dict(zip(out_names, values))

    function = tf.function(serve, input_signature=specs).get_concrete_function()
    return _Signature("serving_default", function,
                      [(n, tuple(s.shape.as_list()), s.dtype) for n, s in zip(names, specs)],
                      out_names)


def _keyword_caller(function: Any, names: list[str]) -> Any:
    """A positional-argument function that calls a signature by keyword."""
    def serve(*args):
        return function(**dict(zip(names, args)))
    return serve


def _saved_model_signatures(loaded: Any, path: str, batch_size: int | None,
                            signature: str | None) -> dict[str, _Signature]:
    available = dict(getattr(loaded, "signatures", {}) or {})
    if not available:
        raise UnsupportedModelError(
            f"The SavedModel {path!r} has no signatures, so the converter cannot tell its "
            "inputs. Save it with signatures (tf.saved_model.save(obj, path, signatures="
            "{'serving_default': fn.get_concrete_function(spec)}), or model.export(path)).")
    if signature is not None:
        if signature not in available:
            raise ValueError(f"No signature {signature!r} in {path!r}; it has "
                             f"{', '.join(sorted(available))}.")
        available = {signature: available[signature]}
    signatures = {}
    for key, function in available.items():
        _, kwargs = function.structured_input_signature
        names = sorted(kwargs)
        specs = [tf.TensorSpec(_batch(kwargs[n].shape, batch_size), kwargs[n].dtype, name=n)
                 for n in names]
        outputs = sorted(function.structured_outputs)
        traced = tf.function(_keyword_caller(function, names),
                             input_signature=specs).get_concrete_function()
        signatures[key] = _Signature(key, traced,
                                     [(n, tuple(s.shape.as_list()), s.dtype)
                                      for n, s in zip(names, specs)], outputs)
    return signatures


def _load_keras_file(path: str, custom_objects: dict[str, Any] | None) -> tuple[Any, str]:
    try:
        return keras.models.load_model(path, custom_objects=custom_objects, compile=False), \
            "keras"
    except Exception as tf_keras_error:  # noqa: BLE001 - retried with Keras 3 below
        if file_kind(path) == "keras":  # a zip: the .keras format, maybe Keras 3's
            try:
                import keras as keras3

                return keras3.saving.load_model(path, custom_objects=custom_objects,
                                                compile=False), "keras3"
            except Exception:  # noqa: BLE001 - report the first failure
                pass
        raise UnsupportedModelError(
            f"Cannot load the Keras model file {path!r}: {type(tf_keras_error).__name__}: "
            f"{str(tf_keras_error).strip()[:500]}\nCustom layers need custom_objects="
            "{'MyLayer': MyLayer} (CLI: import them in a module and pass --custom-objects "
            "module:dict).") from None


def _plain_model(model: Any) -> Any:
    if isinstance(model, EdgeModel):
        logging.info("tfedge: convert got a wrapped model; calling finish() first.")
        return model.finish()
    if is_keras3_model(model):
        return as_functional(model)  # a subclassed model is traced into a functional one
    return model


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
               (b"GIF8", "a GIF image"), (b"%PDF", "a PDF document"),
               (b"\x93NUMPY", "a NumPy array (.npy)"), (b"\x1f\x8b", "a gzip archive"))


def file_kind(path: str) -> str:
    """What a file is, from its first bytes: ``"tflite"``, ``"keras"`` (a zip, the
    .keras format), ``"h5"`` (HDF5), or a description such as ``"a PNG image"``."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if head.startswith(b"PK\x03\x04"):
        return "keras"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "h5"
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if not head:
        return "an empty file"
    return "a file of unknown format"


def model_source(model: Any, *, batch_size: int | None = 1, signature: str | None = None,
                 custom_objects: dict[str, Any] | None = None) -> ModelSource:
    """Reads what ``convert`` accepts into traced functions with a chosen batch.

    Args:
        model: a tf_keras or Keras 3 model, an EdgeModel (finished first), a
            loaded SavedModel object, or the path of a SavedModel directory
            or of a ``.keras`` / ``.h5`` file.
        batch_size: the batch dimension to trace (1 for embedded targets),
            or None for a dynamic batch.
        signature: for a SavedModel with several signatures, the one to
            convert (default: all).
        custom_objects: custom layers for loading a Keras file.

    Returns:
        A :class:`ModelSource`.

    Raises:
        FileNotFoundError: no such file or directory.
        UnsupportedModelError: an unbuilt model, a file that does not load,
            a SavedModel without signatures, a ``.tflite`` file.
    """
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r}: use a positive whole number, or None "
                         "for a dynamic batch.")
    path = None
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No model at {path!r}: give a SavedModel directory or "
                                    "a .keras / .h5 file.")
        if os.path.isdir(path):
            if not any(os.path.exists(os.path.join(path, f))
                       for f in ("saved_model.pb", "saved_model.pbtxt")):
                raise UnsupportedModelError(
                    f"{path!r} is a directory without saved_model.pb, so not a SavedModel. "
                    "Give a SavedModel directory (tf.saved_model.save / model.export) or a "
                    ".keras / .h5 file.")
            with quiet_converter():
                loaded = tf.saved_model.load(path)
            sigs = _saved_model_signatures(loaded, path, batch_size, signature)
            name = os.path.basename(os.path.normpath(path))
            return ModelSource(name, "saved_model", sigs, loaded, path=path,
                               batch_size=batch_size)
        kind = file_kind(path)  # judged by the bytes, not the name
        if kind == "tflite":
            raise UnsupportedModelError(f"{path!r} is already a TFLite model (its bytes say "
                                        "so, whatever its name): read it with "
                                        "tfedge.load(path), or convert its source model.")
        if kind not in ("keras", "h5"):
            raise UnsupportedModelError(
                f"{path!r} is {kind}, not a model tfedge can read: give a SavedModel "
                "directory or a .keras / .h5 Keras file.")
        model, _ = _load_keras_file(path, custom_objects)
    model = _plain_model(model)
    if hasattr(model, "signatures") and not hasattr(model, "layers"):
        sigs = _saved_model_signatures(model, "<loaded SavedModel>", batch_size, signature)
        return ModelSource("saved_model", "saved_model", sigs, model, batch_size=batch_size)
    if not callable(model):
        raise UnsupportedModelError(
            f"convert takes a Keras model, a SavedModel directory or a .keras/.h5 file; got "
            f"{type(model).__module__}.{type(model).__name__}.")
    sig = _keras_signature(model, batch_size)
    kind = "keras3" if is_keras3_model(model) else "keras"
    # The converter gets the variables only: it does not see Keras 3's, and
    # saving a whole tf_keras model traces every layer (minutes for MobileNetV2).
    trackable = variable_holder(model)
    return ModelSource(getattr(model, "name", "model"), kind, {sig.key: sig}, trackable,
                       keras_model=model, path=path, batch_size=batch_size)


# ----------------------------------------------------------------------------
# The converter
# ----------------------------------------------------------------------------
def is_quantization_aware_model(model: Any) -> bool:
    """True for a quantization-aware (QAT) Keras model; False for None or any other."""
    return model is not None and is_quantization_aware(model)


def _tf_type(name: str) -> Any:
    return {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[name]


def make_converter(source: ModelSource, mode: str, samples: list[np.ndarray] | None = None, *,
                   input_type: str = "float32", output_type: str = "float32",
                   per_channel: bool = True, sparse: bool = False) -> Any:
    """A ``tf.lite.TFLiteConverter`` set up for ``mode`` (the settings tfedge uses).

    Args:
        source: the model, from :func:`model_source`.
        mode: one of :data:`MODES`.
        samples: representative samples (batch-1 arrays) for integer modes;
            empty or None for a quantization-aware model.
        input_type: model input type of the int8 mode.
        output_type: model output type of the int8 mode.
        per_channel: per-channel weight scales (the converter's default);
            False for one scale per tensor.
        sparse: add ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``.

    Returns:
        The converter, not yet run.
    """
    converter = source.converter()
    optimizations = []
    if mode in INTEGER_MODES:
        optimizations.append(tf.lite.Optimize.DEFAULT)
        if samples:
            batch = source.batch_size or 1

            def dataset():
                for start in range(0, len(samples) - batch + 1, batch):
                    yield [np.concatenate(samples[start:start + batch])]

            converter.representative_dataset = dataset
            if mode == "int8":
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                       tf.lite.OpsSet.TFLITE_BUILTINS]
        # (without data, i.e. QAT, the converter refuses the INT8-only ops set)
        if mode == "int16x8":
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.inference_input_type = _tf_type(input_type)
        converter.inference_output_type = _tf_type(output_type)
    elif mode == "float16":
        optimizations.append(tf.lite.Optimize.DEFAULT)
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic_range":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if not per_channel:
        # The converter exposes this switch only as an experimental attribute.
        converter._experimental_disable_per_channel = True  # pylint: disable=protected-access
    return converter


def run_converter(converter: Any, source: ModelSource, mode: str) -> bytes:
    """Runs a converter; its failures, and a file without the source's signatures, raise ConversionError."""
    try:
        with quiet_converter():
            content = converter.convert()
    except Exception as err:  # the converter raises many kinds; keep its message
        raise ConversionError(
            f"The TFLite converter failed on {source.name!r} in mode {mode!r}: "
            f"{str(err).strip()[:2000]}\nIf this names an op, that op has no TFLite "
            "builtin kernel: replace the layer, or try mode='float32' to see whether "
            "the model converts at all.") from err
    if source.signatures and not read_signatures(content):
        # The converter saves concrete functions as a SavedModel first and, when
        # that save fails, silently converts a frozen graph without signatures.
        raise ConversionError(
            f"The TFLite converter wrote no signature for {source.name!r} (inputs "
            f"{', '.join(n for n, _, _ in source.signature.inputs)}): it could not save the "
            "traced model as a SavedModel and fell back to a path that drops signatures, so "
            "LiteRT's signature runner (and tfedge.validate) cannot run the file. Give the "
            "model's inputs plain identifier names, or convert a SavedModel directory.")
    return content
