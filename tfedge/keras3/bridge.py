"""The bridge's entry points: to_tf_keras, to_keras3, the wrap-side Keras3Bridge, and the
Keras 3 training objects (compile arguments, callbacks) ``wrap`` accepts."""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, Iterable, Iterator

import tensorflow as tf
from absl import logging
from tensorflow.python.trackable.resource import TrackableResource

from tfedge._keras import is_keras3_model, keras
from tfedge.errors import UnsupportedModelError

from tfedge.keras3.equivalence import _copy_weights, _is_model, check_equivalent
from tfedge.keras3.translate import (_WAY_OUT, _format_problems, _keras3, _submodule, _Translator,
                                     model_kind)


def _check_graph_model(model: Any, what: str) -> str:
    if not is_keras3_model(model):
        raise UnsupportedModelError(
            f"{what} takes a Keras 3 model (from `import keras`), got "
            f"{type(model).__module__}.{type(model).__name__}.")
    kind = model_kind(model)
    if kind == "layer":
        raise UnsupportedModelError(
            f"{what} takes a Keras 3 Model, got the layer {model.name!r}: put it in a model "
            "(keras.Input -> layer -> keras.Model(inputs, outputs)).")
    if kind == "subclassed":
        raise UnsupportedModelError(
            f"{model.name!r} is a subclassed Keras 3 model ({type(model).__name__}). "
            "tfedge.convert and tfedge.validate accept it as is (its call is traced), but "
            "wrap (pruning, quantization-aware training, distillation) needs a functional "
            "or Sequential model: they copy its layers and rewire its graph, which only "
            "those describe. Rebuild it as keras.Input -> layers -> keras.Model(inputs, "
            "outputs), or as keras.Sequential([keras.Input(shape), ...]).")
    if not model.built or not getattr(model, "inputs", None):
        raise UnsupportedModelError(
            f"Keras 3 model {model.name!r} is not built: its input shape is unknown. Start "
            "it with keras.Input(shape=...) (or call model.build(input_shape)).")
    return kind


def to_tf_keras(model: Any, *, custom_objects: dict[str, type] | None = None,
                check: bool = True) -> Any:
    """Translates a Keras 3 model into an equivalent tf_keras model.

    The Keras 3 model is only read. Its config is translated layer by layer,
    its graph rebuilt (nested models and shared layers included), its weights
    copied, and both models are run on the same random inputs.

    Args:
        model: a built Keras 3 Sequential or functional model (e.g. a
            ``keras.applications`` model).
        custom_objects: tf_keras twins of custom Keras 3 layers, by class
            name or registered name (``"package>Name"``). A twin takes the
            Keras 3 layer's config and creates the same weights.
        check: compare outputs on random inputs (leave on; it costs one
            forward pass of each model).

    Returns:
        A tf_keras model with the same layer names, weights and outputs.

    Raises:
        UnsupportedModelError: subclassed or unbuilt models; layers,
            options, activations or operations tf_keras cannot express (each
            named, with the way out); outputs that differ beyond float
            tolerance (the layers responsible named).

    Example:

    >>> tf_model = tfedge.keras3.to_tf_keras(keras.applications.MobileNetV2(
    ...     weights=None, alpha=0.35, input_shape=(96, 96, 3)))  # doctest: +SKIP
    """
    kind = _check_graph_model(model, "to_tf_keras")
    translator = _Translator(custom_objects)
    config = model.get_config()
    result = translator.model(config, "Sequential" if kind == "sequential" else "Functional",
                              model.name)
    if translator.problems:
        raise UnsupportedModelError(
            f"Keras 3 model {model.name!r} cannot be carried to tf_keras, which tfmot "
            f"(pruning, QAT) needs:\n{_format_problems(translator.problems)}\n{_WAY_OUT}")
    problems = _copy_weights(model, result)
    if problems:
        raise UnsupportedModelError(
            f"The weights of Keras 3 model {model.name!r} do not fit its tf_keras copy:\n"
            f"{_format_problems(problems)}\n{_WAY_OUT}")
    if check:
        worst = check_equivalent(model, result, what=f"The tf_keras copy of {model.name!r}")
        logging.info("tfedge: Keras 3 model %r carried to tf_keras; outputs equal within "
                     "%.2g of the float tolerance", model.name, worst)
    return result


def to_keras3(model: Any, *, like: Any, check: bool = True) -> Any:
    """Pours a tf_keras model's weights back into a Keras 3 model like ``like``.

    ``like`` (the user's original Keras 3 model) gives the architecture: it
    is cloned (same classes and configs) and never changed; ``model`` (e.g.
    what ``EdgeModel.finish()`` returns) gives the weights, matched by layer
    and weight name.

    Args:
        model: a tf_keras model with the layers of ``like`` (e.g. trained).
        like: the Keras 3 Sequential or functional model it came from.
        check: compare outputs on random inputs.

    Returns:
        A new Keras 3 model, named like ``model``, computing what ``model`` computes.

    Raises:
        UnsupportedModelError: the two models do not have the same layers
            and weights, or their outputs differ beyond float tolerance.
    """
    _check_graph_model(like, "to_keras3(like=...)")
    result = _keras3().models.clone_model(like)
    problems = _copy_weights(model, result)
    if problems:
        raise UnsupportedModelError(
            f"tf_keras model {model.name!r} cannot be poured back into Keras 3 model "
            f"{like.name!r}:\n{_format_problems(problems)}")
    result._name = model.name
    if check:
        check_equivalent(model, result, what=f"The Keras 3 copy of {model.name!r}")
    return result


class Keras3Bridge:
    """A Keras 3 model carried to tf_keras for ``wrap``, and the way back.

    A plain object (not a layer), so an :class:`~tfedge.EdgeModel` can
    hold it without tracking the user's model or its weights.

    Args:
        model: the user's Keras 3 Sequential or functional model (only read).
        custom_objects: tf_keras twins of custom layers (see :func:`to_tf_keras`).

    Attributes:
        source: the user's Keras 3 model.
        tf_keras_model: its checked tf_keras copy.
    """

    def __init__(self, model: Any, *, custom_objects: dict[str, type] | None = None):
        self.source = model
        self.tf_keras_model = to_tf_keras(model, custom_objects=custom_objects)

    def to_keras3(self, model: Any) -> Any:
        """The tf_keras ``model`` (trained from :attr:`tf_keras_model`) as Keras 3."""
        return to_keras3(model, like=self.source)

    def finish(self, model: Any) -> Any:
        """What ``EdgeModel.finish()`` hands back for a Keras 3 source.

        A plain trained model comes back as Keras 3. A quantization-aware
        model stays tf_keras: its fake-quant layers hold the int8 ranges
        learned in training, which ``tfedge.convert`` uses, and they exist
        only in tfmot (tf_keras); a Keras 3 model cannot carry them.
        """
        tfmot_layers = [layer.name for layer in _leaf_layers(model)
                        if type(layer).__module__.startswith("tensorflow_model_optimization")]
        if tfmot_layers:
            logging.warning(
                "tfedge: %r is quantization-aware: its fake-quant layers (%d, e.g. %r) hold the "
                "int8 ranges learned in training and exist only in tf_keras, so finish() "
                "returns the tf_keras model; tfedge.convert and tfedge.validate take it as "
                "is.", model.name, len(tfmot_layers), tfmot_layers[0])
            return model
        return self.to_keras3(model)


def variable_holder(model: Any) -> Any:
    """A ``tf.Module`` holding a Keras model's variables and resources, nothing else.

    Give it to ``tf.lite.TFLiteConverter.from_concrete_functions`` as the
    trackable of a function traced over the model. The converter saves that
    object as a SavedModel and freezes the variables it finds there:

    * given a Keras 3 model it does not see through Keras 3's variable
      wrappers, and leaves ``READ_VARIABLE`` ops that fail at calibration;
    * given a tf_keras model it also traces every layer's call for the
      SavedModel: 104 s instead of 20 s for a QAT MobileNetV2 0.35 at 96x96
      (``benchmarks/keras3.py``), for the same flatbuffer bytes.

    Lookup tables and other resources the model owns are held too.

    Args:
        model: a tf_keras or Keras 3 (TensorFlow backend) model.

    Returns:
        The holder.
    """
    holder = tf.Module(name=f"{model.name}_variables".replace(".", "_").replace("-", "_"))
    holder.model_variables = [v if isinstance(v, tf.Variable) else v.value
                              for v in model.variables]
    holder.model_resources = [t for t in tf.train.TrackableView(model).descendants()
                              if isinstance(t, TrackableResource)]
    return holder


_COMPILE_KINDS = {"optimizer": "optimizers", "loss": "losses", "metrics": "metrics",
                  "weighted_metrics": "metrics"}


def compile_arguments(**arguments: Any) -> dict[str, Any]:
    """Keras 3 optimizers, losses and metrics given to ``compile`` -> tf_keras ones.

    A user whose code says ``import keras`` passes Keras 3 objects to
    ``EdgeModel.compile``, a tf_keras model. They are translated through their
    configs (like layers); strings, tf_keras objects and the user's own
    functions pass unchanged. Other arguments pass unchanged.

    Args:
        **arguments: ``compile``'s keyword arguments.

    Returns:
        The same arguments, Keras 3 objects replaced by tf_keras ones.

    Raises:
        UnsupportedModelError: a Keras 3 object tf_keras has no counterpart for.
    """
    def convert(value: Any, kind: str) -> Any:
        module = getattr(value, "__module__", None) or ""
        if not module.startswith("keras.") or isinstance(value, str):
            return value
        where = f"compile/{kind[:-1]}"
        if inspect.isfunction(value):
            twin = getattr(_submodule(keras, kind), value.__name__, None)
            if twin is None:
                raise UnsupportedModelError(f"{where}: Keras 3 {value.__name__} has no tf_keras "
                                            "counterpart; pass its name as a string.")
            return twin
        translator = _Translator(None)
        plain = translator.object(_keras3().saving.serialize_keras_object(value), where)
        if translator.problems:
            raise UnsupportedModelError(
                f"A Keras 3 {kind[:-1]} given to compile cannot be used on the tf_keras model "
                f"tfedge trains:\n{_format_problems(translator.problems)}\nPass its name as a "
                "string, or the tf_keras object (tfedge.keras....).")
        with keras.utils.custom_object_scope({}):
            return getattr(_submodule(keras, kind), plain["class_name"]).from_config(plain["config"])

    return {name: (tf.nest.map_structure(lambda v, k=_COMPILE_KINDS[name]: convert(v, k), value)
                   if name in _COMPILE_KINDS and value is not None else value)
            for name, value in arguments.items()}


class Keras3Callback(keras.callbacks.Callback):
    """Runs a Keras 3 callback (EarlyStopping, ...) in the tf_keras ``fit``.

    Every hook is forwarded; the Keras 3 callback sees the tf_keras model
    (``stop_training``, ``get_weights``... work alike in both).

    Args:
        callback: a ``keras.callbacks.Callback`` of Keras 3.
    """

    def __init__(self, callback: Any):
        super().__init__()
        self.callback = callback

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def _overrides(self, mode: str) -> bool:
        base = _keras3().callbacks.Callback
        names = [f"on_{mode}_batch_begin", f"on_{mode}_batch_end"]
        if mode == "train":
            names += ["on_batch_begin", "on_batch_end"]
        return any(getattr(type(self.callback), n) is not getattr(base, n) for n in names)

    def _implements_train_batch_hooks(self):
        return self._overrides("train")

    def _implements_test_batch_hooks(self):
        return self._overrides("test")

    def _implements_predict_batch_hooks(self):
        return self._overrides("predict")


def _forward(hook: str) -> Callable[..., None]:
    def method(self, *args, **kwargs):
        getattr(self.callback, hook)(*args, **kwargs)
    method.__name__ = hook
    return method


for _hook in [f"on_{m}_{e}" for m in ("train", "test", "predict") for e in ("begin", "end")] + [
        f"on_{m}_batch_{e}" for m in ("train", "test", "predict") for e in ("begin", "end")] + [
        "on_epoch_begin", "on_epoch_end"]:
    setattr(Keras3Callback, _hook, _forward(_hook))
del _hook


def fit_callbacks(callbacks: Iterable[Any] | None) -> list[Any]:
    """The user's ``fit`` callbacks, Keras 3 ones adapted to the tf_keras ``fit``."""
    k3 = sys.modules.get("keras")
    base = getattr(getattr(k3, "callbacks", None), "Callback", None) if k3 else None
    return [Keras3Callback(cb) if base is not None and isinstance(cb, base)
            and not isinstance(cb, keras.callbacks.Callback) else cb
            for cb in (callbacks or [])]


def _leaf_layers(model: Any) -> Iterator[Any]:
    for layer in model.layers:
        if _is_model(layer):
            yield from _leaf_layers(layer)
        else:
            yield layer


def as_functional(model: Any) -> Any:
    """A Keras 3 model with ``inputs``/``outputs``, for conversion.

    Sequential and functional models are returned as they are. A subclassed
    model is traced once through its ``call`` on a symbolic input of the
    shape it was built with; it shares its layers and weights with ``model``.

    Raises:
        UnsupportedModelError: a subclassed model never called on data, or
            whose ``call`` cannot be traced.
    """
    if model_kind(model) != "subclassed":
        return model
    k3 = _keras3()
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    shape = shapes.get("input_shape") or next(iter(shapes.values()), None)
    if shape is None or not isinstance(shape, (tuple, list)) or (
            shape and isinstance(shape[0], (tuple, list))):
        raise UnsupportedModelError(
            f"Subclassed Keras 3 model {model.name!r} has no known single input shape: "
            "call it once on a batch of real inputs (model(x)) or model.build(input_shape) "
            "before converting it.")
    inputs = k3.Input(batch_shape=(None,) + tuple(shape[1:]), name="input")
    try:
        outputs = model(inputs, training=False)
    except Exception as err:  # noqa: BLE001 - tracing failures are reported as such
        raise UnsupportedModelError(
            f"The call of subclassed Keras 3 model {model.name!r} cannot be traced on a "
            f"symbolic input ({type(err).__name__}: {str(err).strip()[:300]}). Conversion "
            "needs a call made of tensor operations (no Python branching on values); or "
            "rebuild it as a functional model.") from err
    return k3.Model(inputs, outputs, name=model.name)
