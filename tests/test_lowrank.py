"""Low-rank factorization: exact at full rank, fewer MACs at the chosen rank, int8."""

import numpy as np
import pytest

import tfedge
from tfedge import channels, keras, lowrank
from tfedge.errors import UnsupportedModelError

L = keras.layers


def dense_heavy_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    h = L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv")(inputs)
    h = L.Conv2D(32, 1, activation="relu", name="pointwise")(h)
    h = L.Flatten()(h)
    h = L.Dense(256, activation="relu", name="fc1")(h)
    h = L.Dense(256, activation="relu", name="fc2")(h)
    return keras.Model(inputs, L.Dense(10, name="logits")(h), name="dense_heavy")


def test_full_rank_is_exact_for_dense_1x1_and_spatial():
    model = dense_heavy_model()
    x = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 1)).astype(np.float32)
    full = lowrank.factorize_layers(model, {n: None for n in ("conv", "pointwise", "fc1", "fc2")})
    assert full.get_layer("conv_lr1").kernel_size == (3, 1)
    assert full.get_layer("conv_lr2").kernel_size == (1, 3)
    np.testing.assert_allclose(full.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-4, rtol=1e-4)


def test_strided_dilated_spatial_split_is_exact():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((11, 9, 4))
    out = L.Conv2D(6, (3, 5), strides=(2, 1), padding="same", name="a")(inputs)
    out = L.Conv2D(5, 3, dilation_rate=2, padding="valid", name="b")(out)
    model = keras.Model(inputs, out)
    x = np.random.default_rng(1).normal(size=(4, 11, 9, 4)).astype(np.float32)
    full = lowrank.factorize_layers(model, {"a": None, "b": None})
    np.testing.assert_allclose(full(x).numpy(), model(x).numpy(), atol=1e-4)


def test_budget_lowers_macs_and_converts_to_int8(digits):
    (x, y), (x_test, y_test) = digits
    model = dense_heavy_model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    edge = tfedge.wrap(model, factorize=tfedge.LowRankConfig(macs=0.5))
    report = edge.factorization_report()
    assert report.macs_after <= 0.5 * report.macs_before
    assert any(r["factorized"] for r in report.rows)
    edge.compile(keras.optimizers.Adam(5e-4),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    edge.fit(x, y, epochs=1, batch_size=64, verbose=0)
    final = edge.finish()
    assert channels.keras_macs(final) == report.macs_after
    art = tfedge.convert(final, representative_data=x[:200])
    tfedge.check_full_integer(art)
    assert tfedge.model_cost(art).macs < 0.55 * tfedge.model_cost(
        tfedge.convert(model, representative_data=x[:200])).macs
    assert tfedge.validate(art, final, x_test, y_test).tflite_accuracy > 0.6


def test_layer_that_would_cost_more_is_left_whole():
    model = dense_heavy_model()
    rng = np.random.default_rng(0)
    fc1 = model.get_layer("fc1")
    fc1.set_weights([rng.normal(size=(512, 8)) @ rng.normal(size=(8, 256)), fc1.get_weights()[1]])
    _, report = lowrank.factorize(model, tfedge.LowRankConfig(energy=0.999,
                                                              layers=["fc1", "logits"]))
    rows = {r["layer"]: r for r in report.rows}
    assert rows["fc1"]["factorized"] and rows["fc1"]["rank"] == 8
    assert not rows["logits"]["factorized"]  # 256 -> 10 at rank ~10 costs more
    assert "would not lower" in rows["logits"]["note"]


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
        tfedge.LowRankConfig(energy=0.0)
    with pytest.raises(ValueError, match=r"outside \(0, 1\)"):
        tfedge.LowRankConfig(macs=1.5)
    with pytest.raises(ValueError, match="not both"):
        tfedge.LowRankConfig(energy=0.9, macs=0.5)
    with pytest.raises(ValueError, match="best .* is 0\\.\\d+x"):
        lowrank.factorize(dense_heavy_model(), tfedge.LowRankConfig(macs=0.001))
    inputs = keras.Input((4,))
    with pytest.raises(UnsupportedModelError, match="factorize"):
        lowrank.factorize(keras.Model(inputs, L.ReLU()(inputs)), tfedge.LowRankConfig())


def test_self_teacher_distills_from_the_original(digits):
    (x, y), _ = digits
    model = dense_heavy_model()
    edge = tfedge.wrap(model, factorize=tfedge.LowRankConfig(macs=0.5), teacher="self")
    edge.compile(keras.optimizers.Adam(5e-4),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = edge.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    assert "soft_loss" in history.history
    assert "fc1_lr1" not in [layer.name for layer in model.layers]  # user's model untouched
