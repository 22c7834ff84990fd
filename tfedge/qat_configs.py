"""tfmot QuantizeConfigs for the layers :mod:`tfedge.prepare` leaves in a model.

tfmot's 8-bit registry has no config for ``Multiply``, for tfedge's
:class:`~tfedge.prepare.ConstantOp` / :class:`~tfedge.prepare.HardSwish` /
:class:`~tfedge.prepare.Swish`, or for a BatchNormalization with no Conv /
Dense before it, and its config of a sigmoid fake-quantizes the input only.
:func:`quantize_configs` gives tfmot one per such layer, matched to what the
int8 TFLite kernel computes:

* ``ADD`` / ``MUL`` / ``HARD_SWISH`` take int8 inputs and need only their
  output range (:class:`OutputQuantizeConfig`);
* ``LOGISTIC`` outputs on a fixed grid of scale 1/256 whatever it learned
  (:class:`LogisticQuantizeConfig`, and the gate inside swish,
  :class:`SwishQuantizeConfig`);
* ``AVERAGE_POOL_2D`` keeps its input's scale (no range of its own).

Quantization itself is tfmot's (``quantize_annotate_layer`` with these
configs, applied by :func:`tfedge.quantize.apply_qat`), not
re-implemented here.

Example:

>>> configs = quantize_configs(prepared_model)  # doctest: +SKIP
>>> type(configs["block1a_se_expand_activation"]).__name__  # doctest: +SKIP
'LogisticQuantizeConfig'
"""

from __future__ import annotations

from typing import Any

from tfedge._keras import keras
from tfedge.prepare import CUSTOM_OBJECTS as PREPARE_OBJECTS
from tfedge.prepare import ConstantOp, HardSwish, LOGISTIC_RANGE, SIGMOIDS, Swish, activation_name
import tensorflow_model_optimization as tfmot

_quantizers = tfmot.quantization.keras.quantizers


@keras.utils.register_keras_serializable("tfedge")
class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """tfmot QuantizeConfig that fake-quantizes a layer's output only.

    For layers without weights whose int8 TFLite kernel takes already
    quantized inputs (``ADD`` / ``MUL`` with a constant or a tensor,
    ``HARD_SWISH``): only the output range has to be learned.

    Args:
        quantize_output: False when the output is quantized by the layer that
            consumes it (tfmot's Concatenate transform sets it; it is kept in
            the config so copies of the QAT model agree).
    """

    def __init__(self, quantize_output: bool = True):
        self.quantize_output = quantize_output

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        if not self.quantize_output:
            return []
        return [_quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self) -> dict[str, Any]:
        return {"quantize_output": self.quantize_output}


def _logistic_quantizer() -> Any:
    return _quantizers.FixedQuantizer(num_bits=8, init_min=LOGISTIC_RANGE[0],
                                      init_max=LOGISTIC_RANGE[1], narrow_range=False)


@keras.utils.register_keras_serializable("tfedge")
class LogisticQuantizeConfig(OutputQuantizeConfig):
    """QuantizeConfig of a sigmoid ``Activation``: its output on TFLite's fixed
    int8 ``LOGISTIC`` grid, its input left to the layer before (tfmot's own
    config fake-quantizes the input a second time, with a range of its own,
    and never the output)."""

    def get_output_quantizers(self, layer):
        return [_logistic_quantizer()]


@keras.utils.register_keras_serializable("tfedge")
class SwishQuantizeConfig(OutputQuantizeConfig):
    """QuantizeConfig of :class:`Swish`: the sigmoid's output on TFLite's fixed
    ``LOGISTIC`` grid (``fixed_gate``), the product with a learned range.

    Args:
        fixed_gate: False gives tfmot's treatment of swish (the product only).
    """

    def __init__(self, quantize_output: bool = True, fixed_gate: bool = True):
        super().__init__(quantize_output)
        self.fixed_gate = fixed_gate

    def get_activations_and_quantizers(self, layer):
        # tfmot wraps ``gate`` (named "linear": post-quantized) in a QuantizeAwareActivation.
        return [(layer.gate, _logistic_quantizer())] if self.fixed_gate else []

    def set_quantize_activations(self, layer, quantize_activations):
        if quantize_activations:
            layer.gate = quantize_activations[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "fixed_gate": self.fixed_gate}


# Pooling layers whose TFLite int8 kernel keeps the input's scale (the global
# poolings convert to MEAN, which rescales, and keep tfmot's config).
_SAME_SCALE_POOLS = (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D,
                     keras.layers.AveragePooling3D)

# Layers tfmot's transforms fold a following BatchNormalization into.
_FOLDS_BATCHNORM = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")


def _inbound(node: Any) -> list[Any]:
    layers = node.inbound_layers
    return list(layers) if isinstance(layers, (list, tuple)) else [layers]


def _fused_relu(layer: Any) -> bool:
    """A ReLU / ReLU6 the converter fuses into the int8 ``ADD`` before it."""
    if isinstance(layer, keras.layers.ReLU):
        return (layer.max_value in (None, 6.0) and not float(layer.negative_slope)
                and not float(layer.threshold))
    return activation_name(layer) in ("relu", "relu6")


def _standalone_batchnorms(model: Any) -> dict[str, bool]:
    """BatchNormalization layers tfmot cannot fold (DenseNet's after a Concatenate):
    name -> whether their only consumer is a ReLU that TFLite fuses into them."""
    bns, consumers = {}, {}
    for nodes in getattr(model, "_nodes_by_depth", {}).values():  # pylint: disable=protected-access
        for node in nodes:
            producers = _inbound(node)
            for producer in producers:
                consumers.setdefault(producer.name, []).append(node.layer)
            if (isinstance(node.layer, keras.layers.BatchNormalization)
                    and type(producers[0]).__name__ not in _FOLDS_BATCHNORM):
                bns[node.layer.name] = node.layer
    outputs = set(getattr(model, "output_names", None) or [])  # an output needs its range
    return {name: (len(consumers.get(name, [])) == 1 and _fused_relu(consumers[name][0])
                   and name not in outputs) for name in bns}


def quantize_configs(model: Any, *, logistic_grid: bool = True,
                     fuse_relu: bool = True) -> dict[str, Any]:
    """``{layer name: QuantizeConfig}`` for the layers this module introduces,
    ``Multiply`` (tfmot's registry lacks it), BatchNormalization layers
    with no Conv/Dense before them (tfmot's registry refuses them one by one,
    each refusal costing a whole ``quantize_apply``; TFLite runs them as int8
    ``MUL`` + ``ADD``) and ``AveragePooling`` layers (no output range of their
    own: TFLite's kernel requires the input's).

    Args:
        model: the prepared model.
        logistic_grid: put every sigmoid output (sigmoid ``Activation`` layers,
            the gate inside :class:`Swish`) on TFLite's fixed int8 ``LOGISTIC``
            grid; False leaves sigmoids to tfmot (swish: product only).
        fuse_relu: a standalone BatchNormalization whose only consumer is a
            ReLU / ReLU6 gets no output range (the ReLU's is the int8 tensor);
            False gives it one (tfedge before; ``benchmarks/qat_step.py``).

    Returns:
        ``{layer name: QuantizeConfig}`` for ``quantize_annotate_layer``.
    """
    standalone = _standalone_batchnorms(model)
    configs = {layer.name: OutputQuantizeConfig() for layer in model.layers
               if isinstance(layer, (ConstantOp, HardSwish, keras.layers.Multiply))}
    # TFLite runs such a BatchNormalization as MUL + ADD and fuses a ReLU after it
    # into the ADD: one int8 tensor, the ReLU's. A range of the BN's own would
    # simulate a rounding the int8 file never does (and fake-quantize DenseNet's
    # widest tensors, its Concatenates' normalized outputs, once more a step).
    configs.update({name: OutputQuantizeConfig(quantize_output=not (fuse_relu and fused))
                    for name, fused in standalone.items()})
    configs.update({layer.name: SwishQuantizeConfig(fixed_gate=logistic_grid)
                    for layer in model.layers if isinstance(layer, Swish)})
    if logistic_grid:
        configs.update({layer.name: LogisticQuantizeConfig() for layer in model.layers
                        if activation_name(layer) in SIGMOIDS})
    # TFLite's int8 AVERAGE_POOL_2D needs the same scale on its input and output
    # (the converter refuses two learned ranges that differ, as DenseNet's
    # transition pools feeding a Concatenate get); an average never leaves its
    # input's range, so the output takes the input's quantization.
    configs.update({layer.name: OutputQuantizeConfig(quantize_output=False)
                    for layer in model.layers if isinstance(layer, _SAME_SCALE_POOLS)})
    return configs


CUSTOM_OBJECTS = {**PREPARE_OBJECTS, "OutputQuantizeConfig": OutputQuantizeConfig,
                  "LogisticQuantizeConfig": LogisticQuantizeConfig,
                  "SwishQuantizeConfig": SwishQuantizeConfig}
