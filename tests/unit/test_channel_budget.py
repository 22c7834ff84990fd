"""plan_channels' cost-aware greedy and several targets (no training, no qemu: the
instruction counts are replaced by a cost model of the layers' shapes)."""

import numpy as np
import pytest

from tfedge import channel_budget, channel_prune, channels
from tests.helpers import residual_concat_model


def data(model):
    """Random images labelled by the model itself: the unpruned model scores 100%,
    and masking channels loses agreement (a real, non-zero sensitivity)."""
    x = np.random.default_rng(0).uniform(0, 1, (96, 8, 8, 1)).astype(np.float32)
    return x, np.argmax(model.predict(x, verbose=0), -1)


def rebuilt(model, plan):
    graph = channels.analyze(model)
    fractions = {i: plan.fractions.get(g.producers[0], 0.0) for i, g in enumerate(graph.groups)}
    return channel_prune.rebuild(graph, channel_prune.select_removed(
        graph, channel_prune.channel_scores(graph), fractions, set(), plan.multiple))


def fake_counts(model):
    """rpi4: the MACs; rpi5: the MACs plus 40x the MACs of layer 'left' (a layer that
    costs many instructions per MAC on one device only)."""
    macs = channels.keras_macs(model)
    left = model.get_layer("left")
    left_macs = 8 * 8 * 9 * int(left.kernel.shape[-2]) * left.filters
    return {"rpi4": macs, "rpi5": macs + 40 * left_macs}


@pytest.fixture
def counted(monkeypatch):
    calls = []

    def int8_instructions(model, calibration, targets=("rpi4",)):
        calls.append(list(targets))
        counts = fake_counts(model)
        return channel_budget.Int8Count({t: counts[t] for t in targets}, 0)
    monkeypatch.setattr(channel_budget, "int8_instructions", int8_instructions)
    return calls


def test_cost_plan_meets_the_worse_of_two_targets_within_bounded_measures(counted):
    model = residual_concat_model()
    x, y = data(model)
    plan = channel_budget.plan_channels(model, x, y, instructions=0.6, target=["rpi4", "rpi5"],
                                        strategy="cost", max_measures=4)
    assert plan.target == ["rpi4", "rpi5"] and plan.strategy == "cost"
    narrow, dense = fake_counts(rebuilt(model, plan)), fake_counts(model)
    ratios = {t: narrow[t] / dense[t] for t in dense}
    assert plan.reached == pytest.approx(max(ratios.values()))
    assert max(ratios.values()) <= 0.6
    assert all(c == ["rpi4", "rpi5"] for c in counted)  # one conversion counts both
    # the dense count, one probe per group, then at most max_measures plans
    assert len(counted) <= 1 + len(plan.rows) + 4
    # the group that is expensive on rpi5 is pruned at least as hard as any other
    assert plan.fractions["left"] == max(plan.fractions.values())
    assert "cost" in str(plan) and plan.to_dict()["strategy"] == "cost"


def test_cost_plan_meets_a_mac_budget_without_measuring_per_group():
    model = residual_concat_model()
    x, y = data(model)
    plan = channel_budget.plan_channels(model, x, y, macs=0.5, strategy="cost", multiple=4)
    macs = channels.keras_macs(rebuilt(model, plan)) / channels.keras_macs(model)
    assert macs == pytest.approx(plan.reached) and plan.reached <= 0.5
    assert all(f in (0.0,) + channel_budget.CANDIDATES for f in plan.fractions.values())
    # at least as accurate as the threshold plan for the same budget, by the proxy the
    # greedy optimizes (sum of the chosen groups' measured drops)
    threshold = channel_budget.plan_channels(model, x, y, macs=0.5, multiple=4)

    def summed_drop(p):
        return sum(p.base_accuracy - r["sensitivity"][channel_budget.CANDIDATES.index(
            r["fraction"])] if r["fraction"] else 0.0 for r in p.rows)
    assert summed_drop(plan) <= summed_drop(threshold) + 1e-9


def test_cost_budget_that_cannot_be_met_names_the_best_reached():
    model = residual_concat_model()
    x, y = data(model)
    with pytest.raises(channel_budget.BudgetError, match=r"best reached is 0\.\d+x"):
        channel_budget.plan_channels(model, x, y, params=0.01, strategy="cost")


def test_bad_strategy_settings_are_rejected():
    model = residual_concat_model()
    x, y = data(model)
    with pytest.raises(ValueError, match="strategy='fast'.*threshold, cost"):
        channel_budget.plan_channels(model, x, y, macs=0.5, strategy="fast")
    with pytest.raises(ValueError, match="max_measures=0"):
        channel_budget.plan_channels(model, x, y, macs=0.5, strategy="cost", max_measures=0)
    with pytest.raises(ValueError, match="names no device"):
        channel_budget.plan_channels(model, x, y, instructions=0.5, target=[])


def two_output_model():
    """A small model with a class output and a box output (no single top-1)."""
    from tfedge import keras
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for name in ("c1", "c2"):
        x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name=name)(x)
        x = keras.layers.BatchNormalization(name=name + "/bn")(x)
        x = keras.layers.ReLU(name=name + "/relu")(x)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, [keras.layers.Dense(3, name="cls")(pooled),
                                keras.layers.Dense(4, name="box")(pooled)], name="two_heads")


def test_evaluate_scores_a_model_with_several_outputs():
    model = two_output_model()
    x = np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    reference = model.predict(x, verbose=0)[1]
    before = [w.copy() for w in model.get_weights()]
    calls = []

    def box_fidelity(m):  # 1 on the unmasked model, lower as the box output moves
        calls.append(m)
        boxes = m.predict(x, verbose=0)[1]
        return 1.0 - float(np.mean(np.abs(boxes - reference)) / np.mean(np.abs(reference)))
    plan = channel_budget.plan_channels(model, x, macs=0.5, evaluate=box_fidelity)
    assert plan.base_accuracy == pytest.approx(1.0)
    # the base score, then every candidate of both groups, all on the private copy
    assert len(calls) == 1 + 2 * len(channel_budget.CANDIDATES)
    assert all(m is not model for m in calls)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    curves = [r["sensitivity"] for r in plan.rows]
    assert all(max(c) < 1.0 for c in curves)  # masking moves the boxes: a real signal
    assert channels.keras_macs(rebuilt(model, plan)) / channels.keras_macs(model) <= 0.5


def test_scoring_arguments_are_checked():
    model = two_output_model()
    x = np.zeros((8, 8, 8, 1), np.float32)
    y = np.zeros(8, int)
    with pytest.raises(ValueError, match="2 outputs; top-1 accuracy needs one.*evaluate="):
        channel_budget.plan_channels(model, x, y, macs=0.5)
    with pytest.raises(ValueError, match="either y .* or evaluate=.*neither"):
        channel_budget.plan_channels(model, x, macs=0.5)
    with pytest.raises(ValueError, match="not both"):
        channel_budget.plan_channels(model, x, y, macs=0.5, evaluate=lambda m: 1.0)
    with pytest.raises(TypeError, match="not callable"):
        channel_budget.plan_channels(model, x, macs=0.5, evaluate=0.9)
    with pytest.raises(ValueError, match="evaluate returned nan.*finite"):
        channel_budget.plan_channels(model, x, macs=0.5, evaluate=lambda m: float("nan"))


def test_recalibrate_batch_norm_sets_each_layer_to_its_inputs_batch_statistics():
    from tfedge import keras
    model = two_output_model()
    x = np.random.default_rng(1).normal(2.0, 3.0, (32, 8, 8, 1)).astype(np.float32)
    assert channel_budget.recalibrate_batch_norm(model, x) == 2
    for name in ("c1", "c2"):  # c2's input is computed with c1/bn's new statistics
        inputs = keras.Model(model.input, model.get_layer(name).output).predict(x, verbose=0)
        bn = model.get_layer(name + "/bn")
        np.testing.assert_allclose(bn.moving_mean.numpy(), inputs.mean((0, 1, 2)),
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(bn.moving_variance.numpy(), inputs.var((0, 1, 2)),
                                   rtol=0.01)  # Bessel's correction over 32*8*8 values
        assert bn.momentum == pytest.approx(0.99)  # put back
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    before = [w.copy() for w in plain.get_weights()]
    assert channel_budget.recalibrate_batch_norm(plain, x[:, 0, 0, :].repeat(4, 1)) == 0
    assert all(np.array_equal(a, b) for a, b in zip(before, plain.get_weights()))


def test_plan_recalibrates_every_masked_candidate_on_its_copy_only():
    model = two_output_model()
    x = np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    channel_budget.recalibrate_batch_norm(model, x)  # unmasked, x's statistics already
    original = model.get_layer("c2/bn").moving_mean.numpy().copy()
    before = [w.copy() for w in model.get_weights()]

    def seen(recalibrate):
        means = []

        def evaluate(m):
            means.append(m.get_layer("c2/bn").moving_mean.numpy().copy())
            return float(len(means) == 1)  # every candidate: a drop of 1
        channel_budget.plan_channels(model, x, macs=0.5, evaluate=evaluate,
                                     representative_data=x, recalibrate_bn=recalibrate)
        return means
    plain, adapted = seen(0), seen(64)
    assert all(np.array_equal(m, original) for m in plain)
    # the base score is taken as the model is; every masked candidate after recalibration
    # (masking c1 moves c2's inputs; masking c2 zeroes its masked channels' inputs)
    assert np.array_equal(adapted[0], original)
    assert not any(np.allclose(m, original) for m in adapted[1:])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    with pytest.raises(ValueError, match="recalibrate_bn=-1.*samples"):
        channel_budget.plan_channels(model, x, macs=0.5, evaluate=lambda m: 1.0,
                                     recalibrate_bn=-1)
