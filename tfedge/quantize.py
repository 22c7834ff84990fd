"""Quantization-aware training (QAT): configuration and application.

tfedge wraps tfmot's quantization API (``quantize_annotate_layer`` +
``quantize_apply`` with a ``QuantizeScheme``) and fixes its sharp edges:

* layers tfmot cannot quantize (custom layers, ``Lambda``, unsupported
  built-ins, a BatchNormalization that follows no convolution) no longer
  crash deep inside tfmot: tfedge quantizes what tfmot supports, leaves the
  rest in float and logs one warning that names them. ``strict=True`` turns
  the warning into an error; ``skip=`` and ``layer_configs=`` are per-layer
  overrides;
* nested Sequential/functional models (a backbone inside a classifier) are
  inlined first, so their layers are quantized too (tfmot refuses them);
* the scheme follows what came before: a pruned model gets tfmot's
  prune-preserving scheme (PQAT), a clustered one the cluster-preserving
  scheme (CQAT, PCQAT when also pruned), so QAT does not undo them;
* ``DepthwiseConv2D`` kernels are fake-quantized per output channel, as
  TFLite's int8 kernel quantizes them, instead of tfmot's one scale per
  kernel (tfmot #808, :mod:`tfedge.qat_depthwise`), in every int8 scheme.

The QAT model keeps tfmot's fake-quant wrappers; ``tf.lite.TFLiteConverter``
turns it into a full-int8 model using the ranges learned in training, so
``tfedge.convert`` needs no representative data for it.

Example:

>>> cfg = QATConfig(start_epoch=6)
>>> cfg.get_config()["scheme"]
'int8'
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import re
from typing import Any, Callable, Iterable, Iterator

from absl import logging

from tfedge._config import PhaseConfig
from tfedge import qat_configs
from tfedge import qat_depthwise
from tfedge._keras import keras
from tfedge.errors import UnsupportedModelError
import tensorflow_model_optimization as tfmot
from tf_keras.src.saving import serialization_lib as _tf_keras_serialization
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper

_tfmot_quant = tfmot.quantization.keras

SCHEMES = ("int8", "int16x8")
PRESERVE = ("none", "sparsity", "clusters", "sparse_clusters")

# Built-ins tfmot's registry does not list but its layout transforms handle
# (folded into the preceding Conv/Dense, or split into supported layers).
_TRANSFORMED = ("BatchNormalization", "SeparableConv1D", "SeparableConv2D")
_UNSUPPORTED_RE = re.compile(r"Layer (\S+?):<class")
_MAX_LISTED = 12  # layers named one by one in the warning
_KERAS_MODULES = ("tf_keras.", "keras.", "tensorflow_model_optimization.", "tensorflow.")


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, repr=False)
class QATConfig(PhaseConfig):
    """How to run quantization-aware training, and when.

    Args:
        scheme: ``"int8"`` (tfmot's default 8-bit scheme: int8 weights per
            channel, int8 activations) or ``"int16x8"`` (tfmot's experimental
            N-bit scheme, 8-bit weights and 16-bit activations; ``finish()``
            then gives the float model with the QAT-trained weights, to
            convert with ``mode="int16x8"`` and representative data, see
            :func:`strip_qat`).
        start_epoch: epoch of the ``fit`` at which QAT fine-tuning starts.
            Default: 0 alone; when pruning comes first, the epoch at which
            pruning ends (``PruneConfig(end_epoch=...)``).
        learning_rate: learning rate of the fresh optimizer built for the QAT
            phase when QAT starts after another phase (None: the one given to
            ``compile``). QAT fine-tuning usually wants a smaller one.
        skip: names of layers to leave in float.
        layer_configs: ``{layer name: tfmot.quantization.keras.QuantizeConfig}``
            for layers tfmot does not know (custom layers) or should quantize
            differently.
        strict: raise instead of warning when a layer cannot be quantized
            (layers in ``skip`` are never an error).
        preserve_sparsity: use tfmot's prune-preserving scheme. None (auto):
            when the model is pruned in the same ``wrap``, or when its kernels
            are already at least half zeros.
        range_samples: training samples the activation ranges are started
            from when QAT begins (:func:`tfedge.qat_ranges.start_ranges`);
            0 keeps tfmot's start at [-6, 6], which a short fine-tune barely
            moves.
        per_channel_depthwise: fake-quantize ``DepthwiseConv2D`` kernels with
            one int8 scale per output channel, as the int8 TFLite file stores
            them (:mod:`tfedge.qat_depthwise`); False keeps tfmot's single
            scale per depthwise kernel. int8 scheme only (16x8 QAT is
            recalibrated at conversion).
        logistic_grid: fake-quantize every sigmoid's output (squeeze-excite
            gates, the gate inside swish) on the fixed grid TFLite's int8
            ``LOGISTIC`` outputs (scale 1/256; :mod:`tfedge.prepare`), which
            tfmot leaves in float; False keeps tfmot's treatment. int8 scheme
            only.

    Raises:
        ValueError: unknown scheme, negative start, overlapping ``skip`` and
            ``layer_configs``, or a ``layer_configs`` value that is not a
            tfmot QuantizeConfig.

    Example:

    >>> QATConfig("int8", start_epoch=4, skip=["my_layer"]).skip
    ['my_layer']
    """

    ARGUMENT = "quantize"
    SHORTHAND = ((str,), "scheme", f"a scheme name ({', '.join(SCHEMES)})")

    scheme: str = "int8"
    _: dataclasses.KW_ONLY
    start_epoch: int | None = None
    learning_rate: float | None = None
    skip: Iterable[str] = ()
    layer_configs: dict[str, Any] | None = None
    strict: bool = False
    preserve_sparsity: bool | None = None
    range_samples: int = 64
    per_channel_depthwise: bool = True
    logistic_grid: bool = True

    def _normalize(self) -> None:
        self._set("skip", list(self.skip))
        self._set("layer_configs", dict(self.layer_configs or {}))
        self._set("strict", bool(self.strict))
        self._set("per_channel_depthwise", bool(self.per_channel_depthwise))
        self._set("logistic_grid", bool(self.logistic_grid))

    def _validate(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"Unknown QAT scheme {self.scheme!r}; use one of "
                             f"{', '.join(SCHEMES)}.")
        if self.start_epoch is not None and (int(self.start_epoch) != self.start_epoch
                                             or self.start_epoch < 0):
            raise ValueError(f"start_epoch={self.start_epoch} must be a whole number >= 0.")
        if int(self.range_samples) != self.range_samples or self.range_samples < 0:
            raise ValueError(f"range_samples={self.range_samples} must be a whole number >= 0 "
                             "(0: keep tfmot's initial activation ranges).")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive.")
        both = sorted(set(self.skip) & set(self.layer_configs))
        if both:
            raise ValueError(f"Layer(s) {', '.join(both)} are both skipped and given a "
                             "QuantizeConfig; keep each in one of skip= or layer_configs=.")
        for name, config in self.layer_configs.items():
            if not isinstance(config, _tfmot_quant.QuantizeConfig):
                raise ValueError(
                    f"layer_configs[{name!r}] is a {type(config).__name__}; it must be a "
                    "tfmot.quantization.keras.QuantizeConfig (subclass it to tell tfmot "
                    "which weights and activations of the layer to quantize).")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["layer_configs"] = {name: keras.utils.serialize_keras_object(c)
                                   for name, c in self.layer_configs.items()}
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "QATConfig":
        """Rebuilds a config; custom QuantizeConfig classes must be registered
        (``keras.utils.register_keras_serializable``)."""
        config = dict(config)
        with _tfmot_quant.quantize_scope():
            config["layer_configs"] = {
                name: keras.utils.deserialize_keras_object(c)
                for name, c in (config.get("layer_configs") or {}).items()}
        return cls(**config)


@dataclasses.dataclass
class QuantizationPlan:
    """What QAT did to each layer.

    Attributes:
        scheme: the tfmot scheme used (e.g. ``"int8+prune_preserving"``).
        quantized: names of the layers annotated for quantization.
        skipped: ``{layer name: reason}`` for layers left in float.
        inlined: names of nested models whose layers were inlined.
    """

    scheme: str
    quantized: list[str]
    skipped: dict[str, str]
    inlined: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------
# Schemes
# ----------------------------------------------------------------------------
def make_scheme(scheme: str = "int8", preserve: str = "none",
                per_channel_depthwise: bool = True) -> Any:
    """The tfmot ``QuantizeScheme`` for a scheme name and what to preserve.

    Args:
        scheme: ``"int8"`` or ``"int16x8"``.
        preserve: ``"none"``, ``"sparsity"`` (PQAT), ``"clusters"`` (CQAT) or
            ``"sparse_clusters"`` (PCQAT).
        per_channel_depthwise: int8 only: wrap the scheme so depthwise
            kernels are fake-quantized per output channel (and, when
            preserving sparsity, keep their zeros, which tfmot's PQAT
            registry does not do for depthwise kernels).

    Returns:
        A ``tfmot.quantization.keras.QuantizeScheme``.

    Raises:
        ValueError: for combinations tfmot has no scheme for (16x8 QAT cannot
            preserve sparsity or clusters).
    """
    if scheme not in SCHEMES or preserve not in PRESERVE:
        raise ValueError(f"Unknown scheme {scheme!r} or preserve {preserve!r}.")
    if scheme == "int16x8":
        if preserve != "none":
            raise ValueError(
                f"tfmot's 16x8 QAT scheme cannot preserve {preserve.replace('_', ' ')}: "
                "it has no prune- or cluster-preserving variant. Use the 'int8' QAT "
                "scheme with pruning/clustering, or drop pruning/clustering for 16x8.")
        return _tfmot_quant.experimental.default_n_bit.DefaultNBitQuantizeScheme(
            num_bits_weight=8, num_bits_activation=16)
    if preserve == "sparsity":
        base = _tfmot_quant.collab_opts.Default8BitPrunePreserveQuantizeScheme()
    elif preserve in ("clusters", "sparse_clusters"):
        base = tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(
            preserve_sparsity=preserve == "sparse_clusters")
    else:
        base = _tfmot_quant.default_8bit.Default8BitQuantizeScheme()
    if not per_channel_depthwise:
        return base
    return qat_depthwise.per_channel_depthwise(
        base, preserve_sparsity=preserve in ("sparsity", "sparse_clusters"))


# ----------------------------------------------------------------------------
# Nested models
# ----------------------------------------------------------------------------
def _is_graph_model(layer: Any) -> bool:
    return isinstance(layer, keras.Model) and bool(getattr(layer, "_is_graph_network", False))


def inline_nested_models(model: Any) -> tuple[Any, list[str]]:
    """Rebuilds ``model`` with nested functional/Sequential models inlined.

    tfmot refuses a model inside a model; inlining calls the nested model's
    layers directly on the outer graph's tensors (same layer objects, so the
    same weights). Nested models that cannot be inlined (subclassed, or
    layer names that would clash) are left as they are.

    Args:
        model: a functional or Sequential model (tfedge's private copy: its
            layers are shared with the result).

    Returns:
        ``(model, names of the inlined nested models)``; ``model`` itself when
        nothing was nested.
    """
    nested = [layer for layer in model.layers if _is_graph_model(layer)]
    if not nested or not _is_graph_model(model):
        return model, []
    names = [layer.name for layer in flat_layers(model)]
    if len(names) != len(set(names)):
        logging.warning("tfedge: nested models of %r share layer names; they are not "
                        "inlined for QAT and stay in float.", model.name)
        return model, []
    inlined: list[str] = []

    def run(graph: Any, inputs: list[Any]) -> list[Any]:
        # Mirrors tf_keras Functional._run_internal_graph, entering nested graphs.
        usage = graph._tensor_usage_count  # pylint: disable=protected-access
        tensors = {str(id(ref)): [t] * usage[str(id(ref))] for ref, t in zip(graph.inputs, inputs)}
        nodes_by_depth = graph._nodes_by_depth  # pylint: disable=protected-access
        for depth in sorted(nodes_by_depth, reverse=True):
            for node in nodes_by_depth[depth]:
                if node.is_input or any(i not in tensors for i in node.flat_input_ids):
                    continue
                args, kwargs = node.map_arguments(tensors)
                if _is_graph_model(node.layer) and not kwargs:
                    inlined.append(node.layer.name)
                    outputs = run(node.layer, _flatten(args))
                    outputs = outputs[0] if len(outputs) == 1 else outputs
                else:
                    outputs = node.layer(*args, **kwargs)
                flat = outputs if isinstance(outputs, (list, tuple)) else [outputs]
                for out_id, value in zip(node.flat_output_ids, flat):
                    tensors[out_id] = [value] * usage[out_id]
        return [tensors[str(id(ref))].pop() for ref in graph.outputs]

    inputs = [keras.Input(type_spec=t.type_spec, name=t.name.split(":")[0]) for t in model.inputs]
    outputs = run(model, inputs)
    flat_model = keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0],
                             name=model.name)
    return flat_model, inlined


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flatten(item)]
    return [value]


def flat_layers(model: Any) -> Iterable[Any]:
    """The layers of ``model`` with nested functional models opened, in order."""
    for layer in model.layers:
        if _is_graph_model(layer):
            yield from flat_layers(layer)
        else:
            yield layer


# ----------------------------------------------------------------------------
# Applying QAT
# ----------------------------------------------------------------------------
def _custom_objects(model: Any, config: QATConfig) -> dict[str, type]:
    """Classes tfmot's config round trip needs: custom layers and configs."""
    objects = {}
    for layer in flat_layers(model):
        cls = type(layer)
        # Every class keras.layers does not export by its name: custom layers, and
        # the ones keras.applications defines privately (ConvNeXt's LayerScale in
        # tf_keras.src.applications.convnext), which tf_keras's from_config would
        # otherwise leave as a bare class name ("'str' object has no attribute 'name'").
        if getattr(keras.layers, cls.__name__, None) is not cls:
            objects[cls.__name__] = cls
    for qc in config.layer_configs.values():
        objects[type(qc).__name__] = type(qc)
    return {**objects, **qat_depthwise.CUSTOM_OBJECTS}


def _skip_reason(layer: Any, registry: Any) -> str | None:
    """Why tfmot cannot quantize ``layer`` on its own, or None if it can."""
    cls = type(layer).__name__
    if isinstance(layer, keras.layers.InputLayer):
        return None
    if isinstance(layer, keras.Model):
        return (f"nested {cls} that could not be inlined; rebuild it with unique layer "
                "names, or flatten it into the outer model")
    if isinstance(layer, keras.layers.Lambda):
        return ("Lambda layer: tfmot cannot see what it computes; make it a custom layer "
                "and give it a QuantizeConfig")
    if registry.supports(layer) or cls in _TRANSFORMED:
        return None
    if cls in ("TFOpLambda", "SlicingOpLambda"):
        return ("a TensorFlow op applied to a Keras tensor (tfmot cannot quantize it); use "
                "a Keras layer instead (keras.layers.Add, ...), or ReLU(6.0) for hard-swish")
    if not type(layer).__module__.startswith(_KERAS_MODULES):
        return (f"custom layer {cls}: tfmot has no QuantizeConfig for it; pass "
                f"layer_configs={{{layer.name!r}: MyQuantizeConfig()}} to quantize it")
    return f"{cls} is not supported by tfmot's quantization registry"


@contextlib.contextmanager
def own_lambdas() -> Iterator[None]:
    """Lets tf_keras rebuild ``Lambda`` layers from their config, for this block only.

    tfmot rebuilds every layer from its config (``quantize_apply``, model
    copies), and for a ``Lambda`` that means deserializing its Python
    function, which tf_keras refuses in safe mode ("pass safe_mode=False",
    which the user cannot). The function is the user's own, from this
    process's model in memory, not from a file, so it is safe to rebuild;
    the Lambda stays in float (see :func:`_skip_reason`).
    """
    with _tf_keras_serialization.SafeModeScope(False):  # (tf_keras has no public scope)
        yield


def is_quantization_aware(model: Any) -> bool:
    """True if ``model`` holds tfmot's QAT layers (fake-quant wrappers)."""
    return any(isinstance(layer, (quantize_wrapper.QuantizeWrapper, quantize_layer.QuantizeLayer))
               for layer in flat_layers(model))


def _report_skipped(model: Any, config: QATConfig, layers: dict[str, Any],
                    skipped: dict[str, str], log: Callable[..., None]) -> None:
    """One warning naming the layers left in float (an error under ``strict``)."""
    problems = {n: r for n, r in skipped.items() if n not in config.skip}
    if problems:
        listing = "\n".join(f"  {n}: {r}" for n, r in list(problems.items())[:_MAX_LISTED])
        if len(problems) > _MAX_LISTED:
            kinds = collections.Counter(type(layers[n]).__name__ for n in problems)
            listing += (f"\n  ... {len(problems) - _MAX_LISTED} more (all: "
                        + ", ".join(f"{k} x{v}" for k, v in kinds.most_common())
                        + "; see the EdgeModel's qat_plan.skipped)")
        if config.strict:
            raise UnsupportedModelError(
                f"QAT cannot quantize {len(problems)} layer(s) of {model.name!r} "
                f"(strict=True):\n{listing}\nGive them a tfmot QuantizeConfig "
                "(QATConfig(layer_configs={name: config})), list them in "
                "QATConfig(skip=[...]) to keep them in float, or replace them.")
        log("tfedge: QAT left %d layer(s) in float (they are calibrated at conversion "
            "instead):\n%s\nPass QATConfig(strict=True) to make this an error, skip=[...] "
            "to silence it, or layer_configs={name: QuantizeConfig} to quantize them.",
            len(problems), listing)


def apply_qat(model: Any, config: QATConfig, preserve: str = "none",
              log: Callable[..., None] = logging.warning,
              plan_only: bool = False) -> tuple[Any, QuantizationPlan]:
    """Makes a quantization-aware copy of ``model`` with tfmot.

    Args:
        model: a plain functional or Sequential model (tfmot's pruning or
            clustering wrappers already stripped). Not changed.
        config: the QAT configuration (scheme, overrides, strictness).
        preserve: ``"none"``, ``"sparsity"``, ``"clusters"`` or
            ``"sparse_clusters"``: which tfmot collaborative scheme to use.
        log: where the warning about skipped layers goes.
        plan_only: only decide what to quantize (and raise under ``strict``),
            without running tfmot's ``quantize_apply``; returns ``(None, plan)``.
            ``wrap`` uses it to fail early at the cost of a graph walk.

    Returns:
        ``(qat_model, plan)``: the model with tfmot's quantize wrappers, and a
        :class:`QuantizationPlan` naming what was quantized and skipped.

    Raises:
        UnsupportedModelError: a subclassed model, a layer that cannot be
            quantized when ``strict`` is set, unknown layer names in
            ``skip``/``layer_configs``, nothing to quantize, or tfmot failed
            on the model (its message is kept).
        ValueError: an impossible scheme/preserve combination.
    """
    if not (_is_graph_model(model) or isinstance(model, keras.Sequential)):
        raise UnsupportedModelError(
            f"{model.name!r} is a subclassed keras.Model ({type(model).__name__}): tfmot can "
            "only quantize functional and Sequential models. Rebuild it with the functional "
            "API (keras.Input -> layers -> keras.Model(inputs, outputs)), then quantize that.")
    scheme = make_scheme(config.scheme, preserve, config.per_channel_depthwise)
    registry = scheme.get_quantize_registry()
    model, inlined = inline_nested_models(model)
    layers = {layer.name: layer for layer in model.layers}
    unknown = sorted((set(config.skip) | set(config.layer_configs)) - set(layers))
    if unknown:
        raise UnsupportedModelError(
            f"QAT overrides name layer(s) not in the model: {', '.join(unknown)}. Layers: "
            f"{', '.join(layers)}.")
    # tfedge.prepare's layers (and Multiply) come with their QuantizeConfigs.
    layer_configs = {**qat_configs.quantize_configs(
        model, logistic_grid=config.logistic_grid and config.scheme == "int8"),
        **config.layer_configs}
    layer_configs = {n: c for n, c in layer_configs.items() if n not in config.skip}
    skipped: dict[str, str] = {name: "skipped by the user (skip=)" for name in config.skip}
    for name, layer in layers.items():
        if name in skipped or name in layer_configs:
            continue
        reason = _skip_reason(layer, registry)
        if reason:
            skipped[name] = reason
    custom = {**_custom_objects(model, config), **qat_configs.CUSTOM_OBJECTS}

    def annotate(current_skip: dict[str, str]) -> Any:
        def fn(layer):
            if isinstance(layer, keras.layers.InputLayer) or layer.name in current_skip:
                return layer
            return _tfmot_quant.quantize_annotate_layer(
                layer, quantize_config=layer_configs.get(layer.name))
        clone = keras.models.clone_model(model, clone_function=fn)
        clone.set_weights(model.get_weights())
        return clone

    if plan_only:
        plan = QuantizationPlan(
            scheme=config.scheme + ("" if preserve == "none" else f"+{preserve}_preserving"),
            quantized=[n for n in layers if n not in skipped
                       and not isinstance(layers[n], keras.layers.InputLayer)],
            skipped=dict(skipped), inlined=inlined)
        _report_skipped(model, config, layers, skipped, log)
        return None, plan
    for _ in range(len(layers) + 1):
        if all(name in skipped for name in layers
               if not isinstance(layers[name], keras.layers.InputLayer)):
            raise UnsupportedModelError(
                f"Nothing in {model.name!r} can be quantization-aware trained: "
                + "; ".join(f"{n}: {r}" for n, r in skipped.items()))
        try:
            with _tfmot_quant.quantize_scope(custom), own_lambdas():
                qat = _tfmot_quant.quantize_apply(annotate(skipped), scheme)
            break
        except RuntimeError as err:
            match = _UNSUPPORTED_RE.search(str(err))
            if not match or match.group(1) not in layers or match.group(1) in skipped:
                raise UnsupportedModelError(f"tfmot could not quantize {model.name!r}: "
                                            f"{err}") from err
            cls = type(layers[match.group(1)]).__name__
            skipped[match.group(1)] = (f"{cls} in this position is not handled by tfmot "
                                       "(e.g. a BatchNormalization after no Conv/Dense)")
        except (ValueError, TypeError) as err:
            raise UnsupportedModelError(
                f"tfmot could not quantize {model.name!r}: {str(err)[:1000]}. Pass the "
                "offending layer's name in QATConfig(skip=[...]) to leave it in float.") from err

    plan = QuantizationPlan(
        scheme=config.scheme + ("" if preserve == "none" else f"+{preserve}_preserving"),
        quantized=[n for n in layers if n not in skipped
                   and not isinstance(layers[n], keras.layers.InputLayer)],
        skipped=skipped, inlined=inlined)
    _report_skipped(model, config, layers, skipped, log)
    logging.info("tfedge: QAT (%s) on %d layer(s)", plan.scheme, len(plan.quantized))
    return qat, plan


def copy_qat_model(model: Any, custom_objects: dict[str, type] | None = None) -> Any:
    """An independent copy of a QAT model (same weights and ranges)."""
    objects = dict(custom_objects or {})
    for layer in flat_layers(model):
        inner = getattr(layer, "layer", None)
        for obj in (layer, inner, getattr(layer, "quantize_config", None)):
            if obj is not None and not type(obj).__module__.startswith(_KERAS_MODULES):
                objects[type(obj).__name__] = type(obj)
    with _tfmot_quant.quantize_scope(objects):
        with own_lambdas():
            copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def strip_qat(model: Any) -> Any:
    """A float copy of a QAT model: tfmot's wrappers and quantize layers removed.

    The weights are the QAT-trained ones; the learned activation ranges are
    dropped (calibrate again at conversion). tfedge uses it for the 16x8
    scheme: tfmot's 16-bit fake-quant ranges are asymmetric, while TFLite's
    16x8 kernels need symmetric int16 activations (zero point 0), so a 16x8
    QAT model is converted with ``mode="int16x8"`` and representative data.

    Args:
        model: a model made by :func:`apply_qat` (or tfmot's quantize_apply).

    Returns:
        A plain functional model computing the same float function.
    """
    def fn(layer):
        if isinstance(layer, quantize_wrapper.QuantizeWrapper):
            inner = layer.layer
            return inner.__class__.from_config(inner.get_config())
        if isinstance(layer, quantize_layer.QuantizeLayer):
            return keras.layers.Activation("linear", name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    with _tfmot_quant.quantize_scope(_custom_objects(model, QATConfig())):
        plain = keras.models.clone_model(model, clone_function=fn)
    for layer in model.layers:
        if isinstance(layer, quantize_layer.QuantizeLayer):
            continue
        wrapped = isinstance(layer, quantize_wrapper.QuantizeWrapper)
        name = layer.layer.name if wrapped else layer.name
        target = plain.get_layer(name)
        # The wrapper holds the inner layer's variables (its kernel attribute is
        # swapped for the fake-quantized tensor), named "<inner name>/<weight>".
        by_name = {w.name.split("/", 1)[-1]: w for w in layer.weights
                   if w.name.startswith(name + "/")}
        target.set_weights([by_name[w.name.split("/", 1)[-1]].numpy() for w in target.weights])
    return plain
