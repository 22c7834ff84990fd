"""Channel pruning: dependency groups, masks during fit, the narrower rebuilt model."""

import numpy as np
import pytest

import tfedge
from tfedge import channels, keras
from tfedge.errors import UnsupportedModelError

L = keras.layers


def residual_concat_model():
    """Conv-BN-ReLU stem, depthwise block with a residual Add, a Concatenate of two
    branches, and a Dense head after both GlobalAveragePooling and Flatten."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    a = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    a = L.ReLU(6.0)(L.BatchNormalization(name="stem_bn")(a))
    b = L.DepthwiseConv2D(3, padding="same", name="dw")(a)
    b = L.ReLU()(L.BatchNormalization(name="dw_bn")(b))
    b = L.Conv2D(16, 1, name="proj")(b)
    r = L.Add(name="residual")([a, b])
    left = L.Conv2D(16, 3, padding="same", activation="relu", name="left")(r)
    right = L.Conv2D(16, 1, activation="relu", name="right")(r)
    c = L.Concatenate(name="concat")([left, right])
    c = L.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="c3")(c)
    h = L.Concatenate()([L.GlobalAveragePooling2D()(c), L.Flatten()(L.MaxPooling2D()(c))])
    h = L.Dense(32, activation="relu", name="fc")(h)
    return keras.Model(inputs, L.Dense(10, name="logits")(h), name="rescat")


def compile_(model):
    model.compile(keras.optimizers.Adam(2e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    return model


def test_groups_follow_residual_add_and_concat():
    graph = channels.analyze(residual_concat_model())
    groups = {tuple(g.producers): g for g in graph.groups}
    assert ("stem", "proj") in groups  # tied by the residual Add
    assert groups[("left",)].size == 16 and groups[("right",)].size == 16
    assert not groups[("logits",)].prunable
    assert "output" in graph.unprunable["logits"]
    # The Dense after [GAP, Flatten(MaxPool)] consumes c3's channels 1 + 4*4/4 times.
    assert len(graph.input_ids["fc"]) == 32 + 32 * 4
    assert len(set(graph.roots(graph.input_ids["fc"]).tolist())) == 32


def test_unknown_layer_is_named_and_left_whole():
    inputs = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, name="a")(inputs)
    h = L.Reshape((-1, 8))(h)  # channel pruning does not follow a Reshape
    h = L.Dense(8, name="b")(h)
    h = L.Flatten()(h)
    graph = channels.analyze(keras.Model(inputs, L.Dense(3, name="out")(h)))
    assert "Reshape" in graph.unprunable["a"]
    assert [g.producers for g in graph.groups if g.prunable] == [["b"]]


def test_mobilenet_v2_residual_groups():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                           classes=10)
    graph = channels.analyze(model)
    producers = {p: g for g in graph.groups for p in g.producers}
    # block_1 and block_2 projections meet in the Add of block_2.
    assert producers["block_1_project"] is producers["block_2_project"]
    assert not producers["predictions"].prunable
    assert all(g.prunable for g in graph.groups if g is not producers["predictions"])


def test_channel_pruned_model_is_narrower_same_outputs_and_converts(digits):
    (x, y), (x_test, y_test) = digits
    model = residual_concat_model()
    edge = compile_(tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, structure="channel",
                                                                end_epoch=2)))
    edge.fit(x, y, epochs=3, batch_size=32, verbose=0)
    masked = edge.network.predict(x_test, verbose=0)
    narrow = edge.finish()

    pruned = [p for g in channels.analyze(model).groups if g.prunable for p in g.producers]
    before = sum(model.get_layer(n).count_params() for n in pruned)
    after = sum(narrow.get_layer(n).count_params() for n in pruned)
    assert after <= 0.6 * before, (before, after)
    assert narrow.output_shape == model.output_shape
    assert narrow.get_layer("stem").filters == narrow.get_layer("proj").filters == 8
    assert channels.keras_macs(narrow) < 0.4 * channels.keras_macs(model)
    np.testing.assert_allclose(narrow.predict(x_test, verbose=0), masked, atol=1e-5)
    assert model.get_layer("stem").filters == 16  # the user's model is untouched

    report = edge.channel_report()
    assert {tuple(r["producers"]): r["kept"] for r in report.rows}[("c3",)] == 16
    art = tfedge.convert(narrow, representative_data=x[:200])
    tfedge.check_full_integer(art)
    result = tfedge.validate(art, narrow, x_test, y_test)
    assert result.tflite_accuracy > 0.6  # 3 short epochs: trained, not random (10%)
    assert result.agreement > 0.95


def test_channel_pruning_then_qat_converts_without_calibration(digits):
    (x, y), (x_test, y_test) = digits
    edge = compile_(tfedge.wrap(residual_concat_model(),
                                prune=tfedge.PruneConfig(0.5, structure="channel", end_epoch=1),
                                quantize=tfedge.QATConfig(start_epoch=1)))
    edge.fit(x, y, epochs=2, batch_size=64, verbose=0)
    final = edge.finish()
    art = tfedge.convert(final)
    assert art.mode == "int8"
    assert tfedge.validate(art, final, x_test, y_test).agreement > 0.9


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_fraction_outside_open_interval_is_rejected(fraction):
    with pytest.raises(ValueError, match=r"outside \(0, 1\)"):
        tfedge.PruneConfig(fraction, structure="channel")


def test_model_without_prunable_channels_is_rejected():
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, L.Dense(10, name="only")(L.Flatten()(inputs)))
    with pytest.raises(UnsupportedModelError, match="only.*model output"):
        tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, structure="channel"))


def test_config_round_trip():
    cfg = tfedge.PruneConfig(0.3, structure="channel", importance="bn_gamma", end_epoch=3)
    again = tfedge.PruneConfig.from_config(cfg.get_config())
    assert again.channel and again.importance == "bn_gamma" and again.m_by_n is None
    with pytest.raises(ValueError, match="importance"):
        tfedge.PruneConfig(0.3, structure="channel", importance="taylor")
