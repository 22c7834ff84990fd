"""QAT: int8 TFLite matches the QAT Keras model, BatchNorm folds, depthwise kernels are
quantized per channel, unsupported layers are named."""

import contextlib
import logging

import numpy as np
import pytest
import tensorflow as tf

import tfedge
from tfedge import keras, qat_gradients
from tfedge.errors import UnsupportedModelError
from tfedge.quantize import QATConfig, apply_qat, is_quantization_aware

import tensorflow_model_optimization as tfmot
from tensorflow.python.framework import ops as tf_ops
from tf_keras.src.applications.convnext import LayerScale

from tests.helpers import build_digits_cnn, compile_for_digits, count_vectorized_gradient

_quantizers = tfmot.quantization.keras.quantizers


class Scale(keras.layers.Layer):
    """A custom layer tfmot knows nothing about: a learned per-channel scale."""

    def build(self, input_shape):
        self.w = self.add_weight("w", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w


class ScaleQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Quantizes Scale's weight and output (the per-layer override users write)."""

    def get_weights_and_quantizers(self, layer):
        return [(layer.w, _quantizers.LastValueQuantizer(
            num_bits=8, symmetric=True, narrow_range=False, per_axis=False))]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        layer.w = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [_quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}


def _model_with_custom_layer():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    h = Scale(name="my_scale")(h)
    h = keras.layers.Flatten(name="flat")(h)
    outputs = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs, name="custom_net")


def test_qat_int8_tflite_accuracy_matches_qat_keras(trained_digits_cnn, digits):
    (x, y), (x_test, y_test) = digits
    keras.utils.set_random_seed(1)
    edge = compile_for_digits(tfedge.wrap(trained_digits_cnn, quantize=True))
    edge.fit(x, y, epochs=2, batch_size=32, verbose=0)
    qat = edge.finish()
    assert is_quantization_aware(qat) and qat.name == trained_digits_cnn.name
    calibrated = tfedge.convert(qat, representative_data=x[:300])
    from_qat_ranges = tfedge.convert(qat)  # no data: QAT gives every range
    for artifact in (calibrated, from_qat_ranges):
        assert artifact.inputs[0].dtype == "INT8" and not artifact.flatbuffer.float_ops()
        report = tfedge.validate(artifact, qat, x_test, y_test)
        print(f"\nQAT int8 ({artifact.num_calibration_samples} calibration samples): keras "
              f"{report.keras_accuracy:.4f}, tflite {report.tflite_accuracy:.4f}, agreement "
              f"{report.agreement:.4f}")
        assert report.keras_accuracy > 0.93
        assert abs(report.accuracy_drop) <= 0.005
        assert report.agreement >= 0.99


def test_conv_batchnorm_relu_folds_into_conv(digits):
    (x, y), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same")(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Flatten()(h)
    model = compile_for_digits(keras.Model(inputs, keras.layers.Dense(10)(h)))
    model.fit(x, y, epochs=4, batch_size=32, verbose=0)
    edge = compile_for_digits(tfedge.wrap(model, quantize=True))
    edge.fit(x, y, epochs=2, batch_size=32, verbose=0)
    qat = edge.finish()
    artifact = tfedge.convert(qat)
    ops = set(artifact.ops)
    assert ops <= {"CONV_2D", "FULLY_CONNECTED", "RESHAPE"}, artifact.ops
    assert artifact.ops["CONV_2D"] == 2
    report = tfedge.validate(artifact, qat, x_test, y_test)
    assert report.agreement >= 0.99 and report.snr_db > 20, str(report)


def test_custom_layer_is_left_in_float_and_named(digits, caplog):
    (x, y), (x_test, y_test) = digits
    model = _model_with_custom_layer()
    with caplog.at_level(logging.WARNING):
        edge = compile_for_digits(tfedge.wrap(model, quantize=True))
    assert "my_scale" in caplog.text and "custom layer Scale" in caplog.text
    assert set(edge.qat_plan.skipped) == {"my_scale"}
    assert set(edge.qat_plan.quantized) == {"conv", "flat", "logits"}
    wrapped = {l.name for l in edge.network.layers
               if isinstance(l, tfmot.quantization.keras.QuantizeWrapperV2)}
    assert wrapped == {"quant_conv", "quant_flat", "quant_logits"}
    edge.fit(x[:512], y[:512], epochs=1, batch_size=32, verbose=0)
    # The float layer is calibrated at conversion; the model is still full int8.
    artifact = tfedge.convert(edge.finish(), representative_data=x[:200])
    assert tfedge.validate(artifact, edge, x_test, y_test).agreement >= 0.97


def test_strict_mode_raises_and_names_the_layer():
    with pytest.raises(UnsupportedModelError, match=r"(?s)strict=True.*my_scale.*QuantizeConfig"):
        tfedge.wrap(_model_with_custom_layer(), quantize=QATConfig(strict=True))


def test_per_layer_overrides_skip_and_quantize_config():
    model = _model_with_custom_layer()
    qat, plan = apply_qat(model, QATConfig(layer_configs={"my_scale": ScaleQuantizeConfig()},
                                           skip=["logits"], strict=True))
    assert plan.skipped == {"logits": "skipped by the user (skip=)"}
    assert "my_scale" in plan.quantized
    kinds = {l.name: type(l).__name__ for l in qat.layers}
    assert kinds["quant_my_scale"] == "QuantizeWrapperV2" and kinds["logits"] == "Dense"
    with pytest.raises(UnsupportedModelError, match="not in the model: nope"):
        apply_qat(model, QATConfig(skip=["nope"]))


def test_unsupported_builtin_and_nested_model(caplog):
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((8, 8, 1)),
                                 keras.layers.Conv2D(8, 3, activation="relu", name="inner_conv"),
                                 keras.layers.Flatten(name="inner_flat")], name="backbone")
    inputs = keras.Input((8, 8, 1))
    h = backbone(inputs)
    h = keras.layers.LayerNormalization(name="norm")(h)  # no tfmot QuantizeConfig
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    with caplog.at_level(logging.WARNING):
        qat, plan = apply_qat(model, QATConfig())
    assert plan.inlined == ["backbone"]  # tfmot refuses nested models; tfedge inlines them
    assert {"inner_conv", "inner_flat", "logits"} <= set(plan.quantized)
    assert list(plan.skipped) == ["norm"] and "LayerNormalization" in caplog.text
    assert model.layers[1] is backbone and len(model.layers) == 4  # user's model untouched


def test_subclassed_model_gets_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(10)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 4), np.float32))
    with pytest.raises(UnsupportedModelError, match="subclassed.*functional API"):
        apply_qat(net, QATConfig())


def test_int16x8_scheme_converts_with_int16_activations(trained_digits_cnn, digits):
    (x, y), (x_test, y_test) = digits
    edge = compile_for_digits(tfedge.wrap(trained_digits_cnn, quantize="int16x8"))
    edge.fit(x[:640], y[:640], epochs=1, batch_size=32, verbose=0)
    plain = edge.finish()  # float, QAT-trained weights (see QATConfig)
    assert not is_quantization_aware(plain)
    artifact = tfedge.convert(plain, representative_data=x[:200], mode="int16x8")
    conv_out = next(artifact.flatbuffer.tensors[op.outputs[0]] for op in artifact.flatbuffer.ops
                    if op.name == "CONV_2D")
    assert conv_out.dtype == "INT16"
    report = tfedge.validate(artifact, plain, x_test, y_test)
    assert report.agreement >= 0.99 and abs(report.accuracy_drop) <= 0.005


def test_qat_config_round_trip_and_validation():
    config = QATConfig("int8", start_epoch=3, learning_rate=1e-4, skip=["a"],
                       layer_configs={"b": ScaleQuantizeConfig()}, strict=True)
    with tfmot.quantization.keras.quantize_scope({"ScaleQuantizeConfig": ScaleQuantizeConfig}):
        again = QATConfig.from_config(config.get_config())
    assert again.get_config() == config.get_config()
    assert isinstance(again.layer_configs["b"], ScaleQuantizeConfig)
    with pytest.raises(ValueError, match="Unknown QAT scheme"):
        QATConfig("int4")
    with pytest.raises(ValueError, match="both skipped"):
        QATConfig(skip=["a"], layer_configs={"a": ScaleQuantizeConfig()})
    with pytest.raises(ValueError, match="must be a tfmot"):
        QATConfig(layer_configs={"a": "int8"})


def test_keras_applications_private_layer_survives_tfmot_round_trip(caplog):
    # ConvNeXt's LayerScale lives in tf_keras.src.applications.convnext and is not
    # deserializable by name; tfmot's from_config used to leave the string
    # "LayerScale" in its place ("'str' object has no attribute 'name'").
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    r = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    r = LayerScale(1e-2, 8, name="layer_scale")(r)
    h = keras.layers.Add(name="residual")([h, r])
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(h))
    with caplog.at_level(logging.WARNING):
        qat, plan = apply_qat(model, QATConfig())
    assert "layer_scale" in plan.skipped and "LayerScale" in caplog.text
    assert {"conv", "dw", "logits"} <= set(plan.quantized)
    scale = next(layer for layer in qat.layers if layer.name == "layer_scale")
    assert isinstance(scale, LayerScale)
    x = np.random.default_rng(0).random((2, 8, 8, 3), np.float32)
    assert qat(x).shape == (2, 4)


def _train_function_op_types(edge) -> set:
    """Every op type in the traced train step, the function library included."""
    types = set()
    for concrete in edge.train_function._list_all_concrete_functions():
        graph_def = concrete.graph.as_graph_def()
        types |= {node.op for node in graph_def.node}
        types |= {node.op for f in graph_def.library.function for node in f.node_def}
    return types


def _qat_fit(x, y, teacher=None):
    keras.utils.set_random_seed(0)
    edge = compile_for_digits(tfedge.wrap(build_digits_cnn(), quantize=True, teacher=teacher))
    edge.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    return edge


def _inference_op_types(model) -> set:
    """Op types of the model's inference graph, traced outside any train step."""
    fn = tf.function(lambda x: model(x, training=False))
    return {op.type for op in fn.get_concrete_function(
        tf.TensorSpec((None, 8, 8, 1), tf.float32)).graph.get_operations()}


def test_wrapped_qat_step_uses_the_vectorized_kernel_fake_quant_and_trains_alike(
        digits, monkeypatch):
    (x, y), (x_test, y_test) = digits
    x, y = x[:320], y[:320]
    tf_gradient = tf_ops._gradient_registry.lookup(qat_gradients.OP_TYPE)
    tf_forward = tf.quantization.fake_quant_with_min_max_vars_per_channel
    fast = _qat_fit(x, y)
    types = _train_function_op_types(fast)
    assert qat_gradients.OP_TYPE not in types  # the forward is whole-tensor ops
    assert "FakeQuantWithMinMaxVarsPerChannelGradient" not in types
    assert tf_ops._gradient_registry.lookup(qat_gradients.OP_TYPE) is tf_gradient
    assert tf.quantization.fake_quant_with_min_max_vars_per_channel is tf_forward
    assert qat_gradients.OP_TYPE in _inference_op_types(fast.network)  # TF's op outside

    distilled = _qat_fit(x, y, teacher=build_digits_cnn(name="teacher"))  # its own tape
    assert qat_gradients.OP_TYPE not in _train_function_op_types(distilled)

    calls = count_vectorized_gradient(monkeypatch)  # the gradient-only swap, as before
    monkeypatch.setattr(qat_gradients, "vectorized_per_channel_fake_quant",
                        qat_gradients.vectorized_per_channel_gradient)
    grad_only = _qat_fit(x, y)
    assert len(calls) == 2 * len(grad_only.train_function._list_all_concrete_functions())
    assert qat_gradients.OP_TYPE in _train_function_op_types(grad_only)

    monkeypatch.setattr(qat_gradients, "vectorized_per_channel_fake_quant", contextlib.nullcontext)
    slow = _qat_fit(x, y)  # TF's own forward and gradient
    types = _train_function_op_types(slow)
    assert {qat_gradients.OP_TYPE, "FakeQuantWithMinMaxVarsPerChannelGradient"} <= types
    for other in (grad_only, slow):
        for a, b in zip(fast.network.get_weights(), other.network.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # exact: equal runs

    reports = []
    for edge in (fast, slow):  # the converter reads the QAT ranges from TF's op
        artifact = tfedge.convert(edge.finish())
        assert artifact.inputs[0].dtype == "INT8" and not artifact.flatbuffer.float_ops()
        reports.append(tfedge.validate(artifact, edge.network, x_test, y_test))
    assert reports[0].agreement == reports[1].agreement
    assert reports[0].tflite_accuracy == reports[1].tflite_accuracy


def _depthwise_net(x, y):
    """A trained digits net with two depthwise layers whose channels differ in range
    by up to 300x: ``dw`` (folded with its BatchNormalization, which absorbs the
    scale, as in MobileNet) and ``dw2`` (multiplier 2, no BatchNormalization)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(h)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="dw_bn")(h))
    h = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2,
                                     activation="relu", name="dw2")(h)
    h = keras.layers.Flatten()(h)
    model = compile_for_digits(keras.Model(inputs, keras.layers.Dense(10, name="logits")(h)))
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    # Channel c of dw scaled by s_c, dw_bn's statistics by the same: the function is
    # unchanged (up to BatchNormalization's epsilon), the kernel's ranges are not.
    scale = np.geomspace(0.05, 15.0, 8).astype("float32")
    dw, bn = model.get_layer("dw"), model.get_layer("dw_bn")
    dw.set_weights([dw.get_weights()[0] * scale[None, None, :, None]])
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma, beta, mean * scale, (var + bn.epsilon) * scale ** 2 - bn.epsilon])
    return model



def _filter_quantization(artifact, layer):
    """The quantization parameters of ``layer``'s int8 depthwise filter in the file."""
    tensors = [d for d in tf.lite.Interpreter(model_content=artifact.content).get_tensor_details()
               if f"quant_{layer}/" in d["name"] and "FakeQuant" in d["name"]
               and d["dtype"] == np.int8 and len(d["shape"]) == 4 and d["shape"][0] == 1]
    assert len(tensors) == 1, [d["name"] for d in tensors]
    return tensors[0]["quantization_parameters"]


def _qat_int8(model, x, y, x_test, y_test, epochs=1, **wrap_args):
    keras.utils.set_random_seed(1)
    edge = compile_for_digits(tfedge.wrap(model, **wrap_args))
    edge.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    qat = edge.finish()
    artifact = tfedge.convert(qat)
    assert artifact.inputs[0].dtype == "INT8" and not artifact.flatbuffer.float_ops()
    return qat, artifact, tfedge.validate(artifact, qat, x_test, y_test)


def _kernel(qat, layer):
    return next(w for w in qat.get_layer(f"quant_{layer}").weights
                if "depthwise_kernel" in w.name).numpy()


def test_depthwise_qat_is_per_channel_as_tflite_stores_it(digits):
    (x, y), (x_test, y_test) = digits
    model = _depthwise_net(x, y)
    results = {}
    for per_channel in (False, True):
        results[per_channel] = _qat_int8(model, x, y, x_test, y_test,
                                         quantize=QATConfig(per_channel_depthwise=per_channel))
        qat, artifact, report = results[per_channel]
        print(f"\nper_channel_depthwise={per_channel}: {report}")
        for layer, channels in (("dw", 8), ("dw2", 16)):
            params = _filter_quantization(artifact, layer)
            assert len(params["scales"]) == channels and params["quantized_dimension"] == 3
    (_, per_tensor, tensor_report), (qat, per_channel, channel_report) = results.values()
    # dw2 (no BatchNormalization to fold): the file's scales are the kernel's own
    # per-channel ranges, in TFLite's channel order c * multiplier + m.
    kernel = _kernel(qat, "dw2")
    np.testing.assert_allclose(_filter_quantization(per_channel, "dw2")["scales"],
                               np.abs(kernel).max(axis=(0, 1)).ravel() / 127, rtol=0.01)
    # tfmot's default: one scale per multiplier index, whatever the channel's range.
    assert len(set(_filter_quantization(per_tensor, "dw2")["scales"].round(8))) == 2
    # dw: per-tensor fake quantization left its small channels a few int8 levels, so
    # once the converter folds the BatchNormalization their scales are 100x coarser.
    spread = {name: float(s.max() / s.min()) for name, s in (
        ("tensor", _filter_quantization(per_tensor, "dw")["scales"]),
        ("channel", _filter_quantization(per_channel, "dw")["scales"]))}
    assert spread["tensor"] > 50 and spread["channel"] < 5, spread
    assert channel_report.agreement >= max(tensor_report.agreement, 0.99)
    assert channel_report.snr_db > tensor_report.snr_db + 3, (channel_report, tensor_report)


def test_prune_preserving_qat_keeps_per_channel_depthwise_and_zeros(digits):
    (x, y), (x_test, y_test) = digits
    model = _depthwise_net(x, y)
    # Pruning then QAT (tfmot's prune-preserving scheme, wrapped): tfmot prunes no
    # depthwise kernel, the others stay half zeros, depthwise stays per channel.
    qat, artifact, report = _qat_int8(model, x, y, x_test, y_test, epochs=2,
                                      prune=tfedge.PruneConfig(0.5, end_epoch=1), quantize=True)
    assert report.agreement >= 0.98, str(report)
    np.testing.assert_allclose(_filter_quantization(artifact, "dw2")["scales"],
                               np.abs(_kernel(qat, "dw2")).max(axis=(0, 1)).ravel() / 127,
                               rtol=0.01)
    sparse = [row for row in artifact.flatbuffer.weight_sparsity() if row["sparsity"] >= 0.49]
    assert len(sparse) == 2, artifact.flatbuffer.weight_sparsity()  # stem and logits
    # A depthwise kernel that is already half zeros keeps them through PQAT with
    # tfedge's quantizer; tfmot's registry turns sparsity preservation off for it.
    kernel = model.get_layer("dw2").get_weights()
    kernel[0] = np.where(np.abs(kernel[0]) < np.median(np.abs(kernel[0])), 0.0, kernel[0])
    model.get_layer("dw2").set_weights(kernel)
    zeros = {}
    for per_channel in (False, True):
        qat, _, report = _qat_int8(model, x, y, x_test, y_test, quantize=QATConfig(
            preserve_sparsity=True, per_channel_depthwise=per_channel))
        zeros[per_channel] = float(np.mean(_kernel(qat, "dw2") == 0))
        assert report.agreement >= 0.98, str(report)
    assert zeros[True] >= 0.49 and zeros[False] < 0.1, zeros
