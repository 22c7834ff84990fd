"""Per-channel QAT for ``DepthwiseConv2D`` (tfmot issue #808).

tfmot's 8-bit registry gives ``DepthwiseConv2D`` the Conv quantizer, which is
"per axis" over the last axis of the kernel; a depthwise kernel is shaped
``(kh, kw, C, multiplier)`` and its last axis is the multiplier (1 in every
``keras.applications`` model), so the whole kernel shares one int8 scale.
TFLite's int8 ``DEPTHWISE_CONV_2D`` has one scale per output channel
(quantized dimension 3 of its ``[1, kh, kw, C * multiplier]`` filter), and the
converter writes one. Where depthwise channels differ widely in range
(MobileNet, EfficientNet: their BatchNormalization absorbs the differences),
the per-tensor fake quantization the QAT model trained with leaves the small
channels a few int8 levels, and once the converter folds the BatchNormalization
and re-quantizes per channel, the file computes something else than the QAT
model did (the test model: folded scales 190x apart instead of 3x).

:class:`DepthwiseWeightsQuantizer` fake-quantizes the kernel per output
channel: it reshapes it to ``(kh, kw, 1, C * multiplier)`` (channel ``c * m``
in TFLite's order), fake-quantizes per last axis and reshapes back.
:func:`per_channel_depthwise` wraps any tfmot 8-bit ``QuantizeScheme``
(default, prune-preserving, cluster-preserving) so its registry hands every
``DepthwiseConv2D`` this quantizer; under the prune-preserving schemes the
quantizer also keeps the kernel's zeros (tfmot's own PQAT registry disables
sparsity preservation for depthwise kernels, so QAT refilled them). Under the
cluster-preserving schemes the depthwise kernel is quantized per channel
without cluster preservation (tfmot's CQAT does not preserve depthwise
clusters either).

Example:

>>> scheme = per_channel_depthwise(
...     tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme())
>>> type(scheme).__name__
'PerChannelDepthwiseScheme'
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfedge._keras import keras
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras import quant_ops
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_registry as _registry_8bit)

_quantizers = tfmot.quantization.keras.quantizers


@keras.utils.register_keras_serializable("tfedge")
class DepthwiseWeightsQuantizer(_quantizers.LastValueQuantizer):
    """Symmetric int8 fake quantization of a depthwise kernel, one range per
    output channel (``C * multiplier`` ranges).

    Args:
        preserve_sparsity: multiply the kernel by its zero mask (taken when the
            quantizer is built) before quantizing, so pruned weights stay zero.
    """

    def __init__(self, preserve_sparsity: bool = False, **kwargs: Any):
        del kwargs  # get_config's LastValueQuantizer fields: fixed for TFLite int8
        super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)
        self.preserve_sparsity = bool(preserve_sparsity)

    def build(self, tensor_shape: Any, name: str, layer: Any) -> dict[str, Any]:
        channels = int(tensor_shape[-2]) * int(tensor_shape[-1])
        result = {
            "min_var": layer.add_weight(name + "_min", shape=(channels,), trainable=False,
                                        initializer=keras.initializers.Constant(-6.0)),
            "max_var": layer.add_weight(name + "_max", shape=(channels,), trainable=False,
                                        initializer=keras.initializers.Constant(6.0)),
        }
        if self.preserve_sparsity:
            kernel = getattr(layer.layer, name)
            result["sparsity_mask"] = tf.math.divide_no_nan(kernel, kernel)
        return result

    def __call__(self, inputs: Any, training: Any, weights: dict[str, Any],
                 **kwargs: Any) -> Any:
        if "sparsity_mask" in weights:
            inputs = inputs * weights["sparsity_mask"]
        kh, kw, channels, multiplier = (int(d) for d in inputs.shape)
        flat = tf.reshape(inputs, (kh, kw, 1, channels * multiplier))
        quantized = quant_ops.LastValueQuantize(
            flat, weights["min_var"], weights["max_var"], is_training=training,
            num_bits=8, per_channel=True, symmetric=True, narrow_range=True)
        return tf.reshape(quantized, (kh, kw, channels, multiplier))

    def get_config(self) -> dict[str, Any]:
        return {"preserve_sparsity": self.preserve_sparsity}


@keras.utils.register_keras_serializable("tfedge")
class DepthwiseQuantizeConfig(_registry_8bit.Default8BitQuantizeConfig):
    """tfmot's 8-bit DepthwiseConv2D config with :class:`DepthwiseWeightsQuantizer`.

    Args:
        preserve_sparsity: keep the kernel's zeros (prune-preserving QAT).
    """

    def __init__(self, preserve_sparsity: bool = False, **kwargs: Any):
        del kwargs
        super().__init__(["depthwise_kernel"], ["activation"], False)
        self.preserve_sparsity = bool(preserve_sparsity)
        self.weight_quantizer = DepthwiseWeightsQuantizer(preserve_sparsity)

    def get_config(self) -> dict[str, Any]:
        return {"preserve_sparsity": self.preserve_sparsity}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "DepthwiseQuantizeConfig":
        return cls(**config)


class _PerChannelDepthwiseRegistry:
    """A tfmot registry that answers as ``base`` except for DepthwiseConv2D."""

    def __init__(self, base: Any, preserve_sparsity: bool):
        self._base = base
        self._preserve_sparsity = preserve_sparsity

    def supports(self, layer: Any) -> bool:
        return self._base.supports(layer)

    def get_quantize_config(self, layer: Any) -> Any:
        if type(layer) is keras.layers.DepthwiseConv2D:  # pylint: disable=unidiomatic-typecheck
            return DepthwiseQuantizeConfig(self._preserve_sparsity)
        return self._base.get_quantize_config(layer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


class PerChannelDepthwiseScheme(tfmot.quantization.keras.QuantizeScheme):
    """``base``'s layout transforms and registry, with per-channel depthwise QAT.

    Args:
        base: a tfmot 8-bit ``QuantizeScheme``.
        preserve_sparsity: keep depthwise kernels' zeros (set for the
            prune-preserving schemes).
    """

    def __init__(self, base: Any, preserve_sparsity: bool = False):
        self.base = base
        self.preserve_sparsity = preserve_sparsity

    def get_layout_transformer(self) -> Any:
        return self.base.get_layout_transformer()

    def get_quantize_registry(self) -> Any:
        return _PerChannelDepthwiseRegistry(self.base.get_quantize_registry(),
                                            self.preserve_sparsity)


def per_channel_depthwise(scheme: Any, preserve_sparsity: bool = False) -> Any:
    """``scheme`` with every ``DepthwiseConv2D`` kernel fake-quantized per channel.

    Args:
        scheme: a tfmot 8-bit ``QuantizeScheme`` (default, prune- or
            cluster-preserving).
        preserve_sparsity: keep the depthwise kernels' zeros (pass True with
            a prune-preserving scheme).

    Returns:
        A :class:`PerChannelDepthwiseScheme`.
    """
    return PerChannelDepthwiseScheme(scheme, preserve_sparsity)


CUSTOM_OBJECTS = {"DepthwiseWeightsQuantizer": DepthwiseWeightsQuantizer,
                  "DepthwiseQuantizeConfig": DepthwiseQuantizeConfig}
