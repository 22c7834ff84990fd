"""LowRankConfig(ranks=): explicit per-layer ranks, validated against the config and the model."""

import numpy as np
import pytest

import tfedge
from tfedge import lowrank
from tests.helpers import dense_heavy_model


def test_ranks_round_trip_and_exclude_the_other_rank_sources():
    config = tfedge.LowRankConfig(ranks={"fc1": 64, "pointwise": np.int64(4)})
    assert config.energy is None and config.macs is None
    assert config.get_config()["ranks"] == {"fc1": 64, "pointwise": 4}
    assert type(config.ranks["pointwise"]) is int
    assert tfedge.LowRankConfig.from_config(config.get_config()) == config
    assert tfedge.LowRankConfig.coerce({"ranks": {"fc1": 64}}).ranks == {"fc1": 64}
    for other in ({"energy": 0.9}, {"macs": 0.5}):
        with pytest.raises(ValueError, match="not both"):
            tfedge.LowRankConfig(ranks={"fc1": 64}, **other)
    with pytest.raises(ValueError, match="drop layers="):
        tfedge.LowRankConfig(ranks={"fc1": 64}, layers=["fc1"])


@pytest.mark.parametrize("rank", [0, -3, 2.5, True, "32"])
def test_a_rank_is_a_whole_number_of_at_least_one(rank):
    with pytest.raises(ValueError, match=r"ranks\['fc1'\].*whole number >= 1"):
        tfedge.LowRankConfig(ranks={"fc1": rank})


def test_ranks_must_name_layers_as_a_dict():
    with pytest.raises(ValueError, match="names no layer"):
        tfedge.LowRankConfig(ranks={})
    with pytest.raises(ValueError, match="dict of layer name -> rank"):
        tfedge.LowRankConfig(ranks=[("fc1", 64)])


def test_explicit_ranks_are_exactly_the_ranks_built():
    model = dense_heavy_model()
    factored, report = lowrank.factorize(model, tfedge.LowRankConfig(
        ranks={"fc1": 64, "pointwise": 4}))
    assert {r["layer"]: r["rank"] for r in report.rows} == {"fc1": 64, "pointwise": 4}
    assert all(r["factorized"] for r in report.rows)
    assert factored.get_layer("fc1_lr1").units == 64
    assert factored.get_layer("pointwise_lr1").filters == 4
    assert "fc2" in [layer.name for layer in factored.layers]  # not named: left whole
    assert report.macs_after < report.macs_before


def test_unknown_or_unfactorizable_layer_lists_the_factorizable_ones():
    model = dense_heavy_model()
    listed = "conv, pointwise, fc1, fc2, logits"
    with pytest.raises(ValueError, match=f"'fc9', which is not a layer.*are: {listed}"):
        lowrank.factorize(model, tfedge.LowRankConfig(ranks={"fc9": 8}))
    flatten = next(layer.name for layer in model.layers if "flatten" in layer.name)
    with pytest.raises(ValueError, match=f"is a Flatten, not a Dense.*are: {listed}"):
        lowrank.factorize(model, tfedge.LowRankConfig(ranks={flatten: 8}))


def test_rank_at_or_above_the_full_rank_is_refused():
    with pytest.raises(ValueError, match=r"ranks\['logits'\]=10 is not below the layer's full "
                                         r"rank 10 .*256x10.*1\.\.9"):
        lowrank.factorize(dense_heavy_model(), tfedge.LowRankConfig(ranks={"logits": 10}))


def test_rank_that_does_not_lower_the_macs_names_the_largest_that_does():
    # pointwise: 16 -> 32 at 4x4; rank r costs 16 * r * (16 + 32) MACs against 16 * 512
    with pytest.raises(ValueError, match=r"ranks\['pointwise'\]=12 does not lower.*largest "
                                         r"rank that does is 10"):
        lowrank.factorize(dense_heavy_model(), tfedge.LowRankConfig(ranks={"pointwise": 12}))
    lowrank.factorize(dense_heavy_model(), tfedge.LowRankConfig(ranks={"pointwise": 10}))


def test_a_budget_leaves_the_classifier_whole_and_says_why():
    model = dense_heavy_model()
    factored, report = lowrank.factorize(model, tfedge.LowRankConfig(macs=0.5))
    rows = {r["layer"]: r for r in report.rows}
    assert not rows["logits"]["factorized"]
    assert "computes a model output" in rows["logits"]["note"]
    assert "layers=" in rows["logits"]["note"]
    assert factored.get_layer("logits").get_weights()[0].shape == (256, 10)
    assert "logits_lr1" not in [layer.name for layer in factored.layers]
    assert report.macs_after <= 0.5 * report.macs_before
    assert any(r["factorized"] for r in report.rows)


def test_an_output_layer_named_in_layers_is_factorized():
    model = dense_heavy_model()
    _, report = lowrank.factorize(model, tfedge.LowRankConfig(energy=0.5, layers=["logits"]))
    assert [r["layer"] for r in report.rows if r["factorized"]] == ["logits"]


def test_the_output_layer_is_found_through_activations_and_concatenations():
    keras = tfedge._keras.keras
    inputs = keras.Input((16,))
    h = keras.layers.Dense(64, activation="relu", name="trunk")(inputs)
    a = keras.layers.Dense(32, name="head_a")(h)
    b = keras.layers.Activation("sigmoid")(keras.layers.Dense(32, name="head_b")(h))
    out = keras.layers.Reshape((64,))(keras.layers.Concatenate()([a, b]))
    model = keras.Model(inputs, [out, keras.layers.Softmax()(keras.layers.Dense(8, name="cls")(h))])
    assert lowrank._nearest_outputs(model) == {"head_a", "head_b", "cls"}


def test_a_model_whose_only_factorizable_layer_is_its_output_says_how():
    keras = tfedge._keras.keras
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dense(64, name="only")(inputs))
    with pytest.raises(tfedge.UnsupportedModelError,
                       match=r"besides the output layers \['only'\].*LowRankConfig\(layers=\)"):
        lowrank.factorize(model, tfedge.LowRankConfig(energy=0.5))
    _, report = lowrank.factorize(model, tfedge.LowRankConfig(energy=0.5, layers=["only"]))
    assert report.rows[0]["factorized"]
