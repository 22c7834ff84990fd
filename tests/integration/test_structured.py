"""Channel pruning, channel budgets and low-rank factorization, trained on digits."""

import numpy as np
import pytest

import tfedge
from tfedge import channel_budget, channels, keras
from tests.helpers import compile_residual, dense_heavy_model, residual_concat_model


def test_channel_pruned_model_is_narrower_same_outputs_and_converts(digits):
    (x, y), (x_test, y_test) = digits
    model = residual_concat_model()
    edge = compile_residual(tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, structure="channel",
                                                                end_epoch=2)))
    edge.fit(x, y, epochs=3, batch_size=32, verbose=0)
    # BatchNorm's moving statistics are per replica (read as their mean): compare with the
    # masked network on one device, holding the values the rebuild copies.
    single = keras.models.clone_model(edge.network)
    single.set_weights(edge.network.get_weights())
    masked = single.predict(x_test, verbose=0)
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


@pytest.mark.slow
def test_channel_pruning_then_qat_converts_without_calibration(digits):
    (x, y), (x_test, y_test) = digits
    edge = compile_residual(tfedge.wrap(residual_concat_model(),
                                prune=tfedge.PruneConfig(0.5, structure="channel", end_epoch=1),
                                quantize=tfedge.QATConfig(start_epoch=1)))
    edge.fit(x, y, epochs=2, batch_size=64, verbose=0)
    final = edge.finish()
    art = tfedge.convert(final)
    assert art.mode == "int8"
    assert tfedge.validate(art, final, x_test, y_test).agreement > 0.9


@pytest.fixture(scope="module")
def trained(digits):
    (x, y), _ = digits
    model = compile_residual(residual_concat_model())
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return model


def test_mac_budget_plan_is_met_after_training(trained, digits):
    (x, y), (x_test, y_test) = digits
    plan = channel_budget.plan_channels(trained, x_test, y_test, macs=0.5)
    assert plan.reached <= 0.5
    assert len(plan.rows) == 5 and all(len(r["sensitivity"]) == 7 for r in plan.rows)
    assert "channel plan: macs" in str(plan)
    edge = compile_residual(tfedge.wrap(trained, prune=tfedge.PruneConfig(
        0.5, structure="channel", fractions=plan, end_epoch=1)))
    edge.fit(x, y, epochs=2, batch_size=64, verbose=0)
    narrow = edge.finish()
    assert channels.keras_macs(narrow) / channels.keras_macs(trained) == pytest.approx(
        plan.reached)
    kept = {tuple(r["producers"]): r["removed_fraction"] for r in edge.channel_report().rows}
    for row in plan.rows:  # each group reached its own fraction (to whole channels)
        assert kept[tuple(row["producers"])] == pytest.approx(row["fraction"], abs=0.07)


def test_budget_that_cannot_be_met_names_the_best(trained, digits):
    _, (x_test, y_test) = digits
    with pytest.raises(channel_budget.BudgetError, match=r"best reached is 0\.\d+x"):
        channel_budget.plan_channels(trained, x_test, y_test, params=0.01)
    with pytest.raises(ValueError, match="one budget"):
        channel_budget.plan_channels(trained, x_test, y_test, macs=0.5, params=0.5)


@pytest.mark.slow
def test_instruction_budget_on_rpi4(trained, digits):
    (x, _), (x_test, y_test) = digits
    plan = channel_budget.plan_channels(trained, x_test, y_test, instructions=0.6,
                                        candidates=(0.25, 0.5, 0.75), target="rpi4",
                                        representative_data=x[:100])
    assert plan.metric == "instructions" and plan.target == "rpi4"
    assert plan.reached <= 0.6


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


def test_explicit_ranks_are_kept_through_fine_tuning_and_convert_to_int8(digits):
    (x, y), (x_test, y_test) = digits
    model = dense_heavy_model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    ranks = {"fc1": 16, "pointwise": 6}
    edge = tfedge.wrap(model, factorize=tfedge.LowRankConfig(ranks=ranks))
    assert {r["layer"]: r["rank"] for r in edge.factorization_report().rows} == ranks
    edge.compile(keras.optimizers.Adam(5e-4),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    edge.fit(x, y, epochs=1, batch_size=64, verbose=0)
    final = edge.finish()
    assert final.get_layer("fc1_lr1").units == 16
    assert final.get_layer("pointwise_lr1").filters == 6
    assert final.get_layer("fc1_lr1").kernel.shape == (512, 16)
    assert "fc2_lr1" not in [layer.name for layer in final.layers]  # not named: whole
    art = tfedge.convert(final, representative_data=x[:200])
    tfedge.check_full_integer(art)
    assert tfedge.validate(art, final, x_test, y_test).tflite_accuracy > 0.6


def test_self_teacher_distills_from_the_original(digits):
    (x, y), _ = digits
    model = dense_heavy_model()
    edge = tfedge.wrap(model, factorize=tfedge.LowRankConfig(macs=0.5), teacher="self")
    edge.compile(keras.optimizers.Adam(5e-4),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = edge.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    assert "soft_loss" in history.history
    assert "fc1_lr1" not in [layer.name for layer in model.layers]  # user's model untouched


def test_channel_pruning_keeps_the_ranks_factorization_chose(digits):
    (x, y), _ = digits
    edge = tfedge.wrap(dense_heavy_model(), factorize=tfedge.LowRankConfig(macs=0.5),
                       prune=tfedge.PruneConfig(0.5, structure="channel", end_epoch=1))
    bottlenecks = edge.factorization_report().bottlenecks()
    assert bottlenecks and all(name.endswith("_lr1") for name in bottlenecks)
    edge.compile(keras.optimizers.Adam(1e-3),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    edge.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    rows = edge.channel_report().to_dict()["groups"]
    kept = {p: r["kept"] == r["channels"] for r in rows for p in r["producers"]}
    assert all(kept[name] for name in bottlenecks if name in kept)  # ranks untouched
    assert not all(kept.values())  # the other groups were pruned
    narrow = edge.finish()
    for name in bottlenecks & set(kept):
        rank = next(r["rank"] for r in edge.factorization_report().rows
                    if f"{r['layer']}_lr1" == name)
        assert narrow.get_layer(name).get_config().get("units", narrow.get_layer(
            name).get_config().get("filters")) == rank


CHANNELS_MIRRORED = """
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tfedge
    from tfedge.data import load_digits
    from tests.helpers import compile_residual, residual_concat_model

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    (x, y), (x_test, y_test) = load_digits()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        edge = compile_residual(tfedge.wrap(residual_concat_model(), prune=tfedge.PruneConfig(
            0.5, structure="channel", end_epoch=1)))
    edge.fit(x, y, epochs=2, batch_size=64, verbose=0)
    stem = edge.network.get_layer("stem").kernel
    kernels = [k.numpy() for k in strategy.experimental_local_results(stem)]
    # BatchNorm's moving statistics are per replica (read as their mean): compare with the
    # masked network on one device, holding the values the rebuild copies.
    single = tf.keras.models.clone_model(edge.network)
    single.set_weights(edge.network.get_weights())
    masked = single.predict(x_test, verbose=0)
    narrow = edge.finish()
    json.dump({"replicas": strategy.num_replicas_in_sync,
               "kernels_equal": all(np.array_equal(kernels[0], k) for k in kernels),
               "zero_filters": int((np.abs(kernels[0]).sum((0, 1, 2)) == 0).sum()),
               "stem": narrow.get_layer("stem").filters,
               "max_diff": float(np.abs(narrow.predict(x_test, verbose=0) - masked).max()),
               "scale": float(np.abs(masked).max()),
               "agreement": float(np.mean(narrow.predict(x_test, verbose=0).argmax(1)
                                          == masked.argmax(1)))},
              open(sys.argv[1], "w"))
"""


@pytest.mark.slow
def test_channel_pruning_under_mirrored_strategy(tmp_path):
    from tests.integration.test_distributed import _run

    result = _run(CHANNELS_MIRRORED, tmp_path)
    assert result["replicas"] == 2 and result["kernels_equal"]
    assert result["zero_filters"] == 8 and result["stem"] == 8
    assert result["max_diff"] < 1e-5 * result["scale"] + 1e-5
    assert result["agreement"] == 1.0
