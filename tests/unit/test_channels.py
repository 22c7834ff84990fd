"""Channel dependency groups, channel/low-rank configs and exact factorization (no training)."""

import numpy as np
import pytest

import tfedge
from tfedge import channel_budget, channel_prune, channels, keras, lowrank
from tfedge.errors import UnsupportedModelError
from tests.helpers import dense_heavy_model, residual_concat_model

L = keras.layers


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


def test_unknown_group_name_in_fractions_is_rejected():
    with pytest.raises(ValueError, match="'nope'"):
        tfedge.wrap(residual_concat_model(), prune=tfedge.PruneConfig(
            0.5, structure="channel", fractions={"nope": 0.5}))


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


def test_macs_after_matches_the_rebuilt_model_and_multiples_round_up():
    model = residual_concat_model()
    graph = channels.analyze(model)
    scores = channel_prune.channel_scores(graph)
    fractions = {i: 0.4 for i in range(len(graph.groups))}
    for multiple in (1, 8):
        removed = channel_prune.select_removed(graph, scores, fractions, set(), multiple)
        narrow = channel_prune.rebuild(graph, removed)
        assert channel_prune.macs_after(graph, removed) == channels.keras_macs(narrow)
        c3 = narrow.get_layer("c3").filters
        assert c3 == (20 if multiple == 1 else 24)  # 32 - floor(0.4 * 32), rounded up to 8
    fraction, reached = channel_prune.fraction_for_macs(model, 0.5, multiple=8)
    assert reached <= 0.5 and 0 < fraction < 1
    with pytest.raises(ValueError, match="best is"):
        channel_prune.fraction_for_macs(model, 0.001)
    with pytest.raises(ValueError, match="channel_multiple"):
        tfedge.PruneConfig(0.5, structure="channel", channel_multiple=0)


def test_fixed_groups_keep_their_fraction_and_the_rest_meets_the_macs():
    model = residual_concat_model()
    uniform, _ = channel_prune.fraction_for_macs(model, 0.5)
    plan, reached = channel_prune.fractions_for_macs(model, 0.5, fixed={"stem": 0.75})
    assert plan["stem"] == 0.75 and reached <= 0.5
    assert set(plan) == {g.producers[0] for g in channels.analyze(model).groups if g.prunable}
    others = {f for name, f in plan.items() if name != "stem"}
    assert len(others) == 1 and others.pop() < uniform  # the stem took more, the rest less
    graph = channels.analyze(model)
    removed = channel_prune.select_removed(
        graph, channel_prune.channel_scores(graph),
        {i: plan.get(g.producers[0], 0.0) for i, g in enumerate(graph.groups)}, set())
    narrow = channel_prune.rebuild(graph, removed)
    assert narrow.get_layer("stem").filters == 4  # 16 - 0.75 * 16
    assert channels.keras_macs(narrow) / channels.keras_macs(model) == pytest.approx(reached)
    with pytest.raises(ValueError, match="'proj', not the first producer.*stem"):
        channel_prune.fraction_for_macs(model, 0.5, fixed={"proj": 0.5})
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        channel_prune.fraction_for_macs(model, 0.5, fixed={"stem": 1.0})


def test_plan_channels_plans_with_the_rounding_pruning_will_apply():
    model = residual_concat_model()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    plan = channel_budget.plan_channels(model, x, y, macs=0.5, multiple=8)
    graph = channels.analyze(model)
    fractions = {i: plan.fractions.get(g.producers[0], 0.0) for i, g in enumerate(graph.groups)}
    removed = channel_prune.select_removed(graph, channel_prune.channel_scores(graph), fractions,
                                           set(), 8)  # as PruneConfig(channel_multiple=8)
    narrow = channel_prune.rebuild(graph, removed)
    # the budget it reports is the one the rounded model reaches, not the unrounded plan's
    assert channels.keras_macs(narrow) / channels.keras_macs(model) == pytest.approx(plan.reached)
    assert plan.reached <= 0.5 and plan.multiple == 8
    assert all(narrow.get_layer(n).filters % 8 == 0 for n in ("stem", "left", "right", "c3"))
    # PruneConfig takes the plan's multiple, and refuses another one
    assert tfedge.PruneConfig(0.5, structure="channel", fractions=plan).channel_multiple == 8
    with pytest.raises(ValueError, match="plan was made with"):
        tfedge.PruneConfig(0.5, structure="channel", fractions=plan, channel_multiple=4)


def test_channel_multiple_per_group():
    model = residual_concat_model()
    graph = channels.analyze(model)
    index = {p: i for i, g in enumerate(graph.groups) for p in g.producers}
    tiles = channels.group_multiples(graph, {"c3": 8, "proj": 16, "*": 4})
    assert tiles[index["c3"]] == 8 and tiles[index["stem"]] == 16  # stem + proj: one group
    assert tiles[index["left"]] == 4
    assert channels.group_multiples(graph, {"c3": 8})[index["left"]] == 1  # no '*': 1
    removed = channel_prune.select_removed(graph, channel_prune.channel_scores(graph),
                                           {i: 0.4 for i in range(len(graph.groups))}, set(),
                                           tiles)
    narrow = channel_prune.rebuild(graph, removed)
    assert narrow.get_layer("c3").filters == 24  # 32 - floor(0.4 * 32) = 20, up to 8
    assert narrow.get_layer("stem").filters == 16  # 10 up to 16
    assert narrow.get_layer("left").filters == 12  # 10 up to 4
    fraction, reached = channel_prune.fraction_for_macs(model, 0.6, multiple={"c3": 8, "*": 4})
    assert reached <= 0.6

    cfg = tfedge.PruneConfig(0.4, structure="channel", channel_multiple={"c3": 8, "*": 4})
    assert tfedge.PruneConfig.from_config(cfg.get_config()).channel_multiple == {"c3": 8, "*": 4}
    assert tfedge.PruneConfig(0.4, structure="channel", channel_multiple=16).channel_multiple == 16
    for bad in ({"c3": 0}, {"c3": 2.5}, {3: 8}, "8"):
        with pytest.raises(ValueError, match="positive whole number"):
            tfedge.PruneConfig(0.4, structure="channel", channel_multiple=bad)
    with pytest.raises(ValueError, match="'nope', not the producer of a prunable group"):
        tfedge.wrap(model, prune=tfedge.PruneConfig(0.4, structure="channel",
                                                    channel_multiple={"nope": 8}))
    with pytest.raises(ValueError, match="share their channels"):
        channels.group_multiples(graph, {"stem": 8, "proj": 16})
