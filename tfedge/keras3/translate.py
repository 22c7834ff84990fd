"""Keras 3 -> tf_keras config translation, layer by layer, and the graph rebuilt from it.

The tolerance constants and :func:`model_kind` live here too, at the bottom
of the bridge: :mod:`~tfedge.keras3.equivalence` and
:mod:`~tfedge.keras3.bridge` import them.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
from typing import Any

import numpy as np
import tensorflow as tf
from tf_keras.src.applications import convnext as tf_keras_convnext

from tfedge import prepare as prepare_lib
from tfedge._keras import keras
from tfedge.errors import UnsupportedModelError

RTOL = 1e-4
"""Outputs may differ by ``ATOL + RTOL * max|output|`` (float rounding)."""
ATOL = 1e-5
_UNKNOWN_DIM = 32  # size used for unknown non-batch dimensions in checks
_CHECK_BATCH = 4

# Keras 3 config keys tf_keras calls differently, per class.
_RENAMES = {"LeakyReLU": {"negative_slope": "alpha"}}
# tf_keras options set on the copy so it computes what Keras 3 computes, per class.
# BatchNormalization: Keras 3 normalizes with tf.nn.batch_normalization; tf_keras's
# default fused kernel (FusedBatchNormV3) rounds differently, a 1e-7 relative
# difference a deep network amplifies (an EfficientNetB0 whose BatchNorm saw a
# few images drifted to 9091x the float tolerance, benchmarks/keras3.py). The
# unfused tf_keras path is the same op: the copy is bit-identical.
_AS_KERAS3 = {"BatchNormalization": {"fused": False}}
# Layers keras.applications defines for itself (not registered, not in keras.layers),
# by their Keras 3 module: the tf_keras twin with the same code, config and weights.
_APPLICATION_LAYERS = {
    "keras.src.applications.convnext": {"LayerScale": tf_keras_convnext.LayerScale,
                                        "StochasticDepth": tf_keras_convnext.StochasticDepth},
}
# Keras 3 options that change speed only, never the numbers.
_SPEED_ONLY = {"use_cudnn", "flash_attention"}
# Activations tf_keras has under the same name with another definition.
_REDEFINED_ACTIVATIONS: dict[str, str] = {}
_MODEL_CLASSES = ("Functional", "Sequential", "Model")
_WAY_OUT = (
    "Way out: replace these layers with ones tf_keras also has, or give tf_keras "
    "twins of your custom layers: tf_model = tfedge.keras3.to_tf_keras(model, "
    "custom_objects={'MyLayer': TfKerasMyLayer}); wrapped = tfedge.wrap(tf_model, ...); "
    "...; tfedge.keras3.to_keras3(wrapped.finish(), like=model). Or build the model "
    "with tf_keras (`import tf_keras as keras`).")


def _keras3() -> types.ModuleType:
    """The Keras 3 module (imported only when a Keras 3 model is seen)."""
    module = sys.modules.get("keras")
    if module is None or not hasattr(module, "Layer"):
        import keras as module  # noqa: PLC0415
    return module


def model_kind(model: Any) -> str:
    """``"sequential"``, ``"functional"``, ``"subclassed"`` or ``"layer"`` for a Keras 3 object."""
    k3 = _keras3()
    if isinstance(model, k3.Sequential):
        return "sequential"
    from keras.src.models.functional import Functional  # noqa: PLC0415

    if isinstance(model, Functional):
        return "functional"
    return "subclassed" if isinstance(model, k3.Model) else "layer"


_KINDS = ("layers", "initializers", "regularizers", "constraints", "optimizers",
          "optimizers.schedules", "losses", "metrics")


def _kind(module: str) -> str:
    """``"keras.optimizers.schedules"`` -> ``"optimizers.schedules"``."""
    return module[len("keras."):] if module.startswith("keras.") else ""


def _submodule(root: types.ModuleType, kind: str) -> Any:
    return functools.reduce(lambda m, part: getattr(m, part, None), kind.split("."), root)


class _NotReady(Exception):
    """A node's inputs are not computed yet."""


def _short(name: str) -> str:
    return name.split("/")[-1].split(":")[0]


@functools.lru_cache(maxsize=None)
def _init_parameters(cls: type) -> tuple[frozenset, dict]:
    """(names accepted by ``cls``'s constructors, their defaults), along the MRO."""
    names, defaults = set(), {}
    for klass in reversed(cls.__mro__):
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
                continue
            names.add(p.name)
            if p.default is not p.empty:
                defaults[p.name] = p.default
    if issubclass(cls, keras.layers.Layer):  # tf_keras Layer's checked **kwargs
        names |= {"input_dim", "input_shape", "batch_input_shape", "batch_size",
                  "weights", "activity_regularizer", "autocast", "implementation"}
    return frozenset(names), defaults


def _format_problems(problems: list[str], limit: int = 6) -> str:
    """``"where: what"`` lines, grouped by what, each naming its layers."""
    groups: dict[str, list[str]] = {}
    for line in problems:
        where, _, what = line.partition(": ")
        groups.setdefault(what, []).append(where)
    lines = []
    for what, wheres in groups.items():
        more = f" (+{len(wheres) - limit} more)" if len(wheres) > limit else ""
        lines.append(f"  {', '.join(wheres[:limit])}{more}: {what}")
    return "\n".join(lines)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                                and list(a) == list(b))
    except Exception:  # noqa: BLE001 - arrays and odd objects: not the same
        return False


_BINARY_OPS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply",
               "Divide": "divide", "TrueDivide": "divide"}


def _binary_op(data: dict[str, Any]) -> Any:
    """For a Keras 3 ``x + y`` / ``x * c`` ... operation node (keras.applications
    MobileNetV3's hard-sigmoid, residual adds), a callable that builds the same
    maths from tf_keras layers: ``Add`` / ``Multiply`` of two tensors, or
    :class:`tfedge.prepare.ConstantOp` with a constant. None for other nodes."""
    op = _BINARY_OPS.get(data["class_name"])
    if op is None or not str(data.get("module", "")).startswith(("keras.src.ops", "keras.ops")):
        return None
    name = data["name"]

    def call(x, y, **kwargs):
        tx, ty = hasattr(x, "_keras_history"), hasattr(y, "_keras_history")
        if tx and ty:
            cls = {"add": keras.layers.Add, "subtract": keras.layers.Subtract,
                   "multiply": keras.layers.Multiply}.get(op)
            if cls is None:
                raise UnsupportedModelError(f"{name}: a tensor divided by a tensor has no "
                                            "tf_keras layer.")
            return cls(name=name)([x, y])
        if not tx:  # constant first: only + and * commute
            if op not in ("add", "multiply"):
                raise UnsupportedModelError(f"{name}: a constant {op} a tensor has no tf_keras "
                                            "layer.")
            x, y = y, x
        c = np.asarray(y, "float32")
        if op == "subtract":
            return prepare_lib.ConstantOp("add", -c, name=name)(x)
        if op == "divide":
            return prepare_lib.ConstantOp("multiply", 1.0 / c, name=name)(x)
        return prepare_lib.ConstantOp(op, c, name=name)(x)

    return call


class _Translator:
    """Rebuilds a Keras 3 model's config as a tf_keras model, collecting problems."""

    def __init__(self, custom_objects: dict[str, Any] | None):
        self.custom_objects = dict(custom_objects or {})
        self.problems: list[str] = []

    # -- values inside configs ------------------------------------------------
    def value(self, value: Any, where: str) -> Any:
        if isinstance(value, dict):
            if "class_name" in value and "config" in value:
                return self.object(value, where)
            return {k: self.value(v, where) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(v, where) for v in value)
        if isinstance(value, str) and where.endswith(":activation"):
            return self.activation(value, where)
        return value

    def activation(self, name: str, where: str) -> str:
        if name in prepare_lib.KERAS3_ACTIVATIONS:  # by their exact maths (tfedge.prepare)
            return prepare_lib.KERAS3_ACTIVATIONS[name]
        if name in _REDEFINED_ACTIVATIONS:
            self.problems.append(f"{where.rsplit(':', 1)[0]}: activation {name!r}: "
                                 f"{_REDEFINED_ACTIVATIONS[name]}.")
        else:
            try:
                keras.activations.get(name)
            except (ValueError, TypeError):
                self.problems.append(f"{where.rsplit(':', 1)[0]}: activation {name!r} does "
                                     "not exist in tf_keras; use an activation both have "
                                     "(relu, relu6, swish, sigmoid, tanh, softmax, gelu...).")
        return name

    def object(self, obj: dict[str, Any], where: str) -> Any:
        name, config = obj["class_name"], obj["config"]
        module = obj.get("module") or ""
        registered = obj.get("registered_name")
        if name == "__tuple__":
            return tuple(self.value(v, where) for v in config["value"])
        if name == "__numpy__":
            return np.asarray(config["value"], dtype=config.get("dtype"))
        if name in ("DTypePolicy", "FloatDTypePolicy"):
            return config["name"]
        if "DTypePolicy" in name:
            self.problems.append(f"{where}: Keras 3 quantized dtype policy {config.get('name')!r} "
                                 "(a model already quantized by Keras 3); give tfedge the float "
                                 "model and let it quantize.")
            return None
        if name == "function":
            if module == "keras.activations":
                return self.activation(config, where + ":activation")
            if config in self.custom_objects:
                return config
            self.problems.append(f"{where}: custom function {config!r} (from {module}) cannot "
                                 "be carried to tf_keras.")
            return None
        kind = _kind(module)
        cls = self.tf_class(name, registered, module, kind, where)
        if cls is None:
            return None
        inner = self.fit(cls, name, kind, self.value(config, where), where)
        return {"class_name": registered if registered in self.custom_objects else name,
                "config": inner}

    def tf_class(self, name: str, registered: str | None, module: str, kind: str,
                 where: str) -> type | None:
        for key in (registered, name):
            if key and key in self.custom_objects:
                return self.custom_objects[key]
        if name in _APPLICATION_LAYERS.get(module, {}):
            return _APPLICATION_LAYERS[module][name]
        if module.startswith("keras.src.ops") or module.startswith("keras.ops"):
            self.problems.append(
                f"{where}: a Keras 3 operation (keras.ops {name}, or a Python operator on a "
                "tensor) in the graph; tf_keras has no layer for it. Use a layer instead "
                "(layers.Add, layers.Multiply, layers.Rescaling, layers.ReLU, layers.Activation...).")
            return None
        if kind in _KINDS:
            cls = getattr(_submodule(keras, kind), name, None)
            if cls is None:
                self.problems.append(f"{where}: Keras 3 {kind[:-1]} {name} has no tf_keras "
                                     "counterpart.")
            return cls
        self.problems.append(f"{where}: custom {name} ({registered or module or 'unregistered'}) "
                             "has no tf_keras twin.")
        return None

    def fit(self, cls: type, name: str, kind: str, config: dict[str, Any],
            where: str) -> dict[str, Any]:
        """Keeps the keys ``cls`` accepts; drops Keras 3 extras at their defaults."""
        if not isinstance(config, dict):
            return config
        renames = _RENAMES.get(name, {})
        config = {renames.get(k, k): v for k, v in config.items()}
        if cls in self.custom_objects.values():
            return config  # the user's twin takes the user's config
        accepted, _ = _init_parameters(cls)
        k3_cls = getattr(_submodule(_keras3(), kind), name, None) if kind in _KINDS else None
        k3_defaults = _init_parameters(k3_cls)[1] if isinstance(k3_cls, type) else {}
        out = {}
        for key, value in config.items():
            if key in accepted:
                out[key] = value
            elif key in _SPEED_ONLY or (key == "data_format" and value == "channels_last"):
                continue  # tf_keras computes the same without it
            elif key in k3_defaults:
                if not _same(value, k3_defaults[key]):
                    self.problems.append(f"{where}: Keras 3 option {key}={value!r} has no "
                                         f"tf_keras equivalent in {name}.")
                # at its Keras 3 default it means what tf_keras does anyway
            elif value is not None and value is not False:
                self.problems.append(f"{where}: Keras 3 option {key}={value!r} has no tf_keras "
                                     f"equivalent in {name}.")
        return out

    # -- layers and models ----------------------------------------------------
    def layer(self, data: dict[str, Any], where: str) -> Any:
        name = data["class_name"]
        module = data.get("module") or ""
        if name in _MODEL_CLASSES and module.startswith("keras"):
            return self.model(data["config"], name, where)
        if name == "InputLayer":
            return self.input_layer(data, where)
        before = len(self.problems)
        cls = self.tf_class(name, data.get("registered_name"), module,
                            _kind(module), where)
        if cls is None:
            return None
        config = {k: self.value(v, f"{where}:{k}") for k, v in data["config"].items()}
        config = self.fit(cls, name, "layers", config, where)
        if cls not in self.custom_objects.values():
            config.update(_AS_KERAS3.get(name, {}))
        if len(self.problems) > before:
            return None
        try:
            with keras.utils.custom_object_scope(self.custom_objects):
                return cls.from_config(config)
        except Exception as err:  # noqa: BLE001 - any failure is reported per layer
            self.problems.append(f"{where}: tf_keras {name} rejects its config: "
                                 f"{str(err).strip().splitlines()[0][:300]}")
            return None

    def input_layer(self, data: dict[str, Any], where: str) -> Any:
        config = data["config"]
        shape = config.get("batch_shape") or config.get("batch_input_shape")
        if shape is None:
            shape = (None,) + tuple(config["shape"])
        dtype = self.value(config.get("dtype"), where) or "float32"
        if config.get("optional"):
            self.problems.append(f"{where}: optional inputs are Keras 3 only.")
        return keras.Input(batch_shape=tuple(shape), dtype=dtype, name=config.get("name"),
                           sparse=bool(config.get("sparse")), ragged=bool(config.get("ragged")))

    def model(self, config: dict[str, Any], class_name: str, where: str) -> Any:
        if class_name == "Sequential":
            return self.sequential(config, where)
        if "layers" not in config:
            self.problems.append(f"{where}: {config.get('name')!r} is a subclassed model nested in "
                                 "the graph; only Sequential and functional models can be rebuilt.")
            return None
        return self.functional(config, where)

    def sequential(self, config: dict[str, Any], where: str) -> Any:
        before = len(self.problems)
        layers = [self.layer(d, f"{where}/{d['config'].get('name', d['class_name'])}")
                  for d in config["layers"]]
        if len(self.problems) > before:
            return None
        if (not config["layers"] or config["layers"][0]["class_name"] != "InputLayer") \
                and config.get("build_input_shape"):
            layers.insert(0, keras.Input(batch_shape=tuple(config["build_input_shape"])))
        model = keras.Sequential(layers, name=config.get("name"))
        model.trainable = config.get("trainable", True)
        return model

    def functional(self, config: dict[str, Any], where: str) -> Any:
        before = len(self.problems)
        created = {d["name"]: _binary_op(d) or self.layer(d, f"{where}/{d['name']}")
                   for d in config["layers"]}
        if len(self.problems) > before:
            return None
        # outputs[name][k]: the flat outputs of the k-th call of layer `name`.
        outputs: dict[str, list[list[Any]]] = {name: [] for name in created}
        pending = []
        for data in config["layers"]:
            if data["class_name"] == "InputLayer":
                outputs[data["name"]].append([created[data["name"]]])
            elif data["inbound_nodes"]:
                pending.append((data["name"], list(data["inbound_nodes"])))
        while pending:
            progressed = False
            for name, nodes in pending:
                while nodes:
                    try:
                        args, kwargs = self.node_arguments(nodes[0], outputs, where)
                    except _NotReady:
                        break
                    result = created[name](*args, **kwargs)
                    outputs[name].append(tf.nest.flatten(result))
                    nodes.pop(0)
                    progressed = True
            pending = [(n, nodes) for n, nodes in pending if nodes]
            if pending and not progressed:
                raise UnsupportedModelError(
                    f"The graph of Keras 3 model {config.get('name')!r} could not be rebuilt: "
                    f"the calls of {', '.join(n for n, _ in pending)} never get their inputs.")
        inputs = self.history(config["input_layers"], outputs)
        outs = self.history(config["output_layers"], outputs)
        return keras.Model(inputs, outs, name=config.get("name"),
                           trainable=config.get("trainable", True))

    def node_arguments(self, node: Any, outputs: dict[str, list[list[Any]]],
                       where: str) -> tuple[list[Any], dict[str, Any]]:
        if not isinstance(node, dict):  # pragma: no cover - Keras 2 style config
            raise UnsupportedModelError(f"{where}: unexpected node format {node!r}.")

        def resolve(value):
            if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
                layer, node_index, tensor_index = value["config"]["keras_history"]
                calls = outputs[layer]
                if node_index >= len(calls):
                    raise _NotReady
                return calls[node_index][tensor_index]
            if isinstance(value, dict) and "class_name" in value and "config" in value:
                return self.value(value, where)
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(resolve(v) for v in value)
            return value

        args = list(resolve(list(node.get("args", []))))
        # Keras 3 records training=... and mask=None on every call but decides
        # them at run time from the outer call; tf_keras does the same when
        # they are left out.
        kwargs = {k: resolve(v) for k, v in node.get("kwargs", {}).items()
                  if k != "training" and v is not None}
        return args, kwargs

    @staticmethod
    def history(structure: Any, outputs: dict[str, list[list[Any]]]) -> Any:
        """Maps ``[layer, node, tensor]`` leaves of input/output_layers to tensors."""
        if (isinstance(structure, (list, tuple)) and len(structure) == 3
                and isinstance(structure[0], str)):
            layer, node_index, tensor_index = structure
            return outputs[layer][node_index][tensor_index]
        if isinstance(structure, dict):
            return {k: _Translator.history(v, outputs) for k, v in structure.items()}
        return [_Translator.history(v, outputs) for v in structure]
