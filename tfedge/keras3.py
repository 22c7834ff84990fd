"""Keras 3 models in tfedge: a checked bridge to tf_keras and back.

TensorFlow 2.16+ makes Keras 3 the default (``import keras``), but the
TensorFlow Model Optimization Toolkit (tfmot), which tfedge wraps for pruning
and quantization-aware training, works only on tf_keras (Keras 2) models
(tfmot issues #1119, #1141, #1167). This module lets a user whose code says
``import keras`` call ``tfedge.wrap(model)`` and get back a Keras 3 model:

1. **Keras 3 -> tf_keras** (:func:`to_tf_keras`). The model's config is
   translated layer by layer: ``InputLayer``'s ``batch_shape`` becomes
   ``batch_input_shape``, dtype policies become dtype names, serialized
   initializers/regularizers/constraints lose Keras 3's ``module`` and
   ``registered_name`` keys, Keras 3 renames are undone (``LeakyReLU``'s
   ``negative_slope`` is tf_keras's ``alpha``), and Keras 3 options tf_keras
   does not have are dropped when they are at their Keras 3 default (which
   is the Keras 2 behaviour) and reported otherwise. The graph is rebuilt
   call by call from the config (Sequential, functional, nested models,
   shared layers, ``keras.applications`` models), every weight is copied,
   and both models are run on the same random inputs (every layer's output
   is compared, not only the model's outputs, which for an untrained network
   can hardly depend on its input). If anything differs beyond float
   tolerance, each layer is run alone: one that differs alone stops the run
   and is named; if none does, the drift is float rounding amplified by the
   network, which is logged (see :func:`check_equivalent`).
2. **tf_keras -> Keras 3** (:func:`to_keras3`). The trained tf_keras model
   is poured back into a clone of the user's own Keras 3 model (same classes,
   same config), weight by weight, and checked the same way, so the user
   gets back the kind of model they gave.

``tfedge.convert`` and ``tfedge.validate`` need no bridge: ``convert``
traces the Keras 3 model into a ``tf.function`` and hands the converter its
variables through :func:`variable_holder` (the converter does not see
through Keras 3's variable wrappers), and ``validate`` only calls
``predict``. :func:`as_functional` gives a subclassed Keras 3 model the
functional form ``convert`` needs by tracing its ``call`` once.

``wrap`` also accepts Keras 3 training objects: ``EdgeModel.compile`` takes
Keras 3 optimizers, losses and metrics (:func:`compile_arguments`), ``fit``
Keras 3 callbacks (:class:`Keras3Callback`), and a Keras 3 ``teacher=`` is
carried across like the student. After QAT, ``finish()`` returns the tf_keras
model: tfmot's fake-quant layers hold the learned int8 ranges and exist only
in tf_keras (see :meth:`Keras3Bridge.finish`).

Why a bridge and not native Keras 3 pruning/QAT
-----------------------------------------------
The alternative was to re-implement tfmot's mechanisms as Keras 3 layers:
pruning masks with the same polynomial schedule, fake-quant ops placed and
named so that the TFLite converter folds them into int8 kernels, and
distillation as a Keras 3 ``Model``. The bridge was chosen because:

* **one implementation**. The bridge reuses tfmot exactly as tf_keras users
  get it: same pruning wrappers, same QAT layout transforms (Conv+BN
  folding, the per-layer quantize registry) and the converter paths they
  are tested against. A native copy would have to match tfmot's QAT graph
  patterns bit for bit to get the same int8 model from the converter, and
  stay matched as both evolve; its bugs would be ours alone.
* **verifiable**. Every crossing is checked numerically (random inputs,
  float tolerance) before any training happens and again on the way back,
  so a silent semantic difference between the two Keras versions cannot
  slip through: it stops the run and names the layer.
* **small and removable**. The whole difference between the two Keras
  versions lives in this one module; when tfmot supports Keras 3, wrap drops
  the bridge and nothing else changes.

The cost is that a Keras 3 model must be describable to tf_keras: see below.

What is not supported (each raises :class:`~tfedge.errors.UnsupportedModelError`
naming every offending layer and the way out)
------------------------------------------------------------------------------
* Layers tf_keras does not have (e.g. ``RMSNormalization``, ``RandAugment``,
  ``TFSMLayer``), Keras 3 options tf_keras lacks set to a non-default value
  (e.g. ``lora_rank``), quantized Keras 3 layers (quantized dtype policies),
  activations missing in tf_keras (``hard_silu``, ``glu``...) or defined
  differently there (``hard_sigmoid``: Keras 3 uses ``relu6(x + 3) / 6``,
  tf_keras ``0.2 x + 0.5``).
* Keras 3 operations called directly on tensors of a functional model
  (``x + 3.0``, ``keras.ops.relu(x)``; ``keras.applications.MobileNetV3``
  does this): tf_keras has no layer for them. Use layers (``layers.Add``,
  ``layers.Rescaling``, ``layers.ReLU``...).
* Custom layers, unless a tf_keras twin is given:
  ``to_tf_keras(model, custom_objects={"Scale": TfKerasScale})``, then
  ``tfedge.wrap`` on the result, and ``to_keras3(trained, like=model)`` at
  the end. The numerical check still guards the twin.
* Subclassed models in ``wrap``: their layers cannot be copied and rewired
  from Python code. ``convert`` and ``validate`` accept them once they have
  been called on data (their ``call`` is traced).
* Backends other than TensorFlow work for the bridge (weights are copied as
  NumPy arrays), but conversion to TFLite needs the TensorFlow backend.

Example:

>>> tf_model = tfedge.keras3.to_tf_keras(keras3_model)  # doctest: +SKIP
>>> wrapped = tfedge.wrap(keras3_model, prune=0.8)  # the same, inside wrap  # doctest: +SKIP
>>> wrapped.finish()  # a Keras 3 model again  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from absl import logging

from tfedge._keras import is_keras3_model, keras
from tfedge.errors import UnsupportedModelError

RTOL = 1e-4
"""Outputs may differ by ``ATOL + RTOL * max|output|`` (float rounding)."""
ATOL = 1e-5
_UNKNOWN_DIM = 32  # size used for unknown non-batch dimensions in checks
_CHECK_BATCH = 4

# Keras 3 config keys tf_keras calls differently, per class.
_RENAMES = {"LeakyReLU": {"negative_slope": "alpha"}}
# Keras 3 options that change speed only, never the numbers.
_SPEED_ONLY = {"use_cudnn", "flash_attention"}
# Activations tf_keras has under the same name with another definition.
_REDEFINED_ACTIVATIONS = {
    "hard_sigmoid": "Keras 3's hard_sigmoid is relu6(x + 3) / 6, tf_keras's is "
                    "clip(0.2 x + 0.5, 0, 1); use layers.ReLU(6.0) on (x + 3) and "
                    "layers.Rescaling(1 / 6) instead",
}
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


# ----------------------------------------------------------------------------
# Config translation: Keras 3 -> tf_keras
# ----------------------------------------------------------------------------
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
        created = {d["name"]: self.layer(d, f"{where}/{d['name']}") for d in config["layers"]}
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
        import tensorflow as tf  # noqa: PLC0415

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


# ----------------------------------------------------------------------------
# Weights and numerical equivalence (both directions)
# ----------------------------------------------------------------------------
def _is_model(layer: Any) -> bool:
    return isinstance(layer, keras.Model) or (is_keras3_model(layer)
                                              and isinstance(layer, _keras3().Model))


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _layer_pairs(src: Any, dst: Any, path: str | None = None) -> Iterator[tuple[str, Any, Any]]:
    """(path, source layer, destination layer) for matching leaf layers, by name."""
    path = src.name if path is None else path
    by_name = {layer.name: layer for layer in src.layers}
    for layer in dst.layers:
        where = f"{path}/{layer.name}"
        other = by_name.get(layer.name)
        if other is not None and _is_model(layer) and _is_model(other):
            yield from _layer_pairs(other, layer, where)
        else:
            yield where, other, layer


def _copy_weights(src: Any, dst: Any) -> list[str]:
    """Copies every weight of ``src`` into ``dst`` (matched by layer and weight
    name); returns the problems found."""
    problems = []
    matched = set()
    for where, other, layer in _layer_pairs(src, dst):
        matched.add(id(other))
        if other is None:
            if layer.weights:
                problems.append(f"{where}: no layer of that name in the source model.")
            continue
        theirs, ours = list(other.weights), list(layer.weights)
        if len(theirs) != len(ours):
            problems.append(f"{where}: {len(theirs)} weights in the source but {len(ours)} "
                            "in the copy (the two Keras versions store this layer differently).")
            continue
        names_theirs = [_short(w.name) for w in theirs]
        names_ours = [_short(w.name) for w in ours]
        if len(set(names_ours)) == len(ours) and set(names_ours) == set(names_theirs):
            lookup = dict(zip(names_theirs, theirs))
            theirs = [lookup[n] for n in names_ours]
        for mine, their in zip(ours, theirs):
            value = _numpy(their)
            if tuple(value.shape) != tuple(mine.shape):
                problems.append(f"{where}: weight {_short(mine.name)} has shape {value.shape} "
                                f"in the source but {tuple(mine.shape)} in the copy.")
                continue
            mine.assign(value)
    for where, _, layer in _layer_pairs(dst, src):
        if id(layer) not in matched and layer.weights:
            problems.append(f"{where}: only in the source model (e.g. a training layer "
                            "tfedge added, which the other Keras cannot hold).")
    return problems


def _input_specs(model: Any) -> list[tuple[tuple[int, ...], str]]:
    specs = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape)
        dtype = getattr(tensor.dtype, "name", tensor.dtype)
        specs.append(((_CHECK_BATCH,) + tuple(_UNKNOWN_DIM if d is None else int(d)
                                              for d in shape[1:]), str(dtype)))
    return specs


def _random(shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype.startswith("float") or dtype.startswith("bfloat"):
        return rng.uniform(-1.0, 1.0, shape).astype("float32").astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 2, shape).astype(dtype)


def _run(model: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import tensorflow as tf  # noqa: PLC0415

    out = model(inputs[0] if len(inputs) == 1 else inputs, training=False)
    return [_numpy(t).astype(np.float64) for t in tf.nest.flatten(out)]


def _differences(reference: list[np.ndarray], candidate: list[np.ndarray]) -> list[float]:
    """Per output: max |difference| / allowed; above 1 means not equivalent."""
    ratios = []
    for a, b in zip(reference, candidate):
        if a.shape != b.shape:
            ratios.append(float("inf"))
            continue
        allowed = ATOL + RTOL * float(np.max(np.abs(a))) if a.size else ATOL
        ratios.append(float(np.max(np.abs(a - b))) / allowed if a.size else 0.0)
    return ratios


def max_difference(reference: Any, candidate: Any, *, seed: int = 0) -> float:
    """Largest absolute output difference of two models on the same random inputs.

    Args:
        reference: a Keras 3 or tf_keras model with known input shapes.
        candidate: a model with the same inputs and outputs.
        seed: seed of the random inputs (uniform in [-1, 1) for float inputs,
            0/1 for integer inputs; unknown dimensions are 32).

    Returns:
        The largest absolute difference over all outputs (inference mode).
    """
    rng = np.random.default_rng(seed)
    x = [_random(shape, dtype, rng) for shape, dtype in _input_specs(reference)]
    a, b = _run(reference, x), _run(candidate, x)
    return max((float(np.max(np.abs(u - v))) for u, v in zip(a, b) if u.size), default=0.0)


def _layer_input(layer: Any) -> Any:
    """The input of a layer's first call (tf_keras refuses ``.input`` for shared ones)."""
    return layer.get_input_at(0) if hasattr(layer, "get_input_at") else layer.input


def _check_layers_alone(src: Any, dst: Any,
                        rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Runs each leaf layer pair on the same random input, free of what comes before.

    Returns:
        (the layers that compute differently, with their difference; the
        layers that could not be run alone).
    """
    import tensorflow as tf  # noqa: PLC0415

    culprits, unchecked = [], []
    for where, other, layer in _layer_pairs(src, dst):
        if other is None or type(layer).__name__ == "InputLayer":
            continue
        try:
            x = tf.nest.map_structure(
                lambda t: _random((2,) + tuple(_UNKNOWN_DIM if d is None else int(d)
                                               for d in tuple(t.shape)[1:]),
                                  str(getattr(t.dtype, "name", t.dtype)), rng),
                _layer_input(other))
            a = [_numpy(t).astype(np.float64) for t in tf.nest.flatten(other(x, training=False))]
            b = [_numpy(t).astype(np.float64) for t in tf.nest.flatten(layer(x, training=False))]
        except Exception:  # noqa: BLE001 - e.g. a layer that needs more call arguments
            if other.weights or layer.weights or type(other).__name__ != type(layer).__name__:
                unchecked.append(where)
            continue
        ratios = _differences(a, b) if len(a) == len(b) else [float("inf")]
        if any(r > 1 for r in ratios):
            diff = max((float(np.max(np.abs(u - v))) if u.shape == v.shape else float("inf")
                        for u, v in zip(a, b)), default=float("inf"))
            culprits.append(f"{where} ({type(other).__name__}): max abs difference {diff:.3g}")
    return culprits, unchecked


def _layer_output(layer: Any) -> Any:
    """The output of a layer's first call (tf_keras refuses ``.output`` for shared ones)."""
    return layer.get_output_at(0) if hasattr(layer, "get_output_at") else layer.output


def _probed(model: Any, names: list[str]) -> Any:
    """``model`` with the outputs of its top-level layers ``names`` added as outputs."""
    import tensorflow as tf  # noqa: PLC0415

    probes = [tf.nest.flatten(_layer_output(model.get_layer(n))) for n in names]
    model_class = _keras3().Model if is_keras3_model(model) else keras.Model
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return model_class(inputs, list(model.outputs) + [t for p in probes for t in p])


def _probe_names(model: Any) -> list[str]:
    return [layer.name for layer in model.layers
            if type(layer).__name__ != "InputLayer" and not _is_model(layer)]


def check_equivalent(reference: Any, candidate: Any, *, what: str, seed: int = 0) -> float:
    """Raises unless both models compute the same on the same random inputs.

    Two stages. First the whole models run on the same random inputs and the
    output of every top-level layer is compared, not only the models'
    outputs: a random-weight network's outputs can barely depend on its input
    (an untrained MobileNetV2's logits are constant to 1e-7), which would
    hide a difference in its early layers. If anything differs, every layer
    is then run alone on the same random input, free of what comes before
    it: a layer that differs alone computes something else, and is named.
    If every layer computes the same alone, the drift is float rounding
    amplified through the network (BatchNorm over a near-zero variance
    multiplies it by up to 30 per layer): a warning says so and the models
    are taken as equivalent.

    Args:
        reference: the model whose outputs are right.
        candidate: its translation (same layer names).
        what: how to name the translation in messages.
        seed: seed of the random inputs.

    Returns:
        The largest ``|difference| / (ATOL + RTOL * max|value|)`` over all
        compared tensors of the whole models.

    Raises:
        UnsupportedModelError: a layer computes differently alone (named,
            with its difference), or the models differ and some layer could
            not be checked alone (named).
    """
    rng = np.random.default_rng(seed)
    x = [_random(shape, dtype, rng) for shape, dtype in _input_specs(reference)]
    names = [n for n in _probe_names(reference) if n in set(_probe_names(candidate))]
    try:
        probed_reference, probed_candidate = _probed(reference, names), _probed(candidate, names)
    except Exception:  # noqa: BLE001 - a layer also called outside the model: outputs only
        names, probed_reference, probed_candidate = [], reference, candidate
    a, b = _run(probed_reference, x), _run(probed_candidate, x)
    ratios = _differences(a, b) if len(a) == len(b) else [float("inf")]
    worst = max(ratios, default=0.0)
    if worst <= 1:
        return worst
    n_out = len(reference.outputs)
    first = next((n for n, r in zip(names, ratios[n_out:]) if r > 1), None)
    drift = (f"the whole models drift apart by up to {worst:.3g} times the float tolerance "
             f"({ATOL:g} + {RTOL:g} x max|value|)"
             + (f", from layer {first!r} on" if first else ""))
    culprits, unchecked = _check_layers_alone(reference, candidate, rng)
    if not culprits and not unchecked:
        logging.warning("tfedge: %s: %s, but every layer computes the same alone: float "
                        "rounding amplified through the network (e.g. by BatchNorm over a "
                        "near-zero variance). Taken as equivalent.", what, drift)
        return worst
    detail = ""
    if culprits:
        detail += "\nLayers that compute differently alone (same random input):\n  " + \
            "\n  ".join(culprits)
    if unchecked:
        detail += "\nLayers that could not be checked alone:\n  " + "\n  ".join(unchecked)
    raise UnsupportedModelError(
        f"{what} does not compute the same as {reference.name!r}: {drift}.{detail}\n"
        "These layers mean something different in Keras 3 and tf_keras: replace them, or "
        "build the model with tf_keras. " + _WAY_OUT)


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------
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
    import tensorflow as tf  # noqa: PLC0415
    from tensorflow.python.trackable.resource import TrackableResource  # noqa: PLC0415

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
    import tensorflow as tf  # noqa: PLC0415

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
