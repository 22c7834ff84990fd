"""tfedge.tune without training: budget, score, Pareto front, search space, scaling, early errors."""

import pytest

import tfedge

pytest.importorskip("keras_tuner")
from tfedge import _tune as tune_lib  # the tune stage's package (tfedge.tune is the function)
from tfedge._tune import scaling as tune_scaling

from tests.helpers import LOSS, build_cnn


def test_budget_lists_each_broken_limit():
    budget = tfedge.Budget(max_size_bytes=10_000, min_accuracy=0.9)
    assert budget.violations({"size_bytes": 9_000, "accuracy": 0.95}) == {}
    broken = budget.violations({"size_bytes": 12_000, "accuracy": 0.8})
    assert broken == {"size_bytes": {"value": 12_000, "limit": 10_000},
                      "accuracy": {"value": 0.8, "limit": 0.9}}


def test_budget_rejects_bad_limits_with_the_fix():
    with pytest.raises(ValueError, match="target="):
        tfedge.Budget(max_latency_ms=5.0)
    with pytest.raises(ValueError, match="fraction"):
        tfedge.Budget(min_accuracy=90)
    with pytest.raises(ValueError, match="positive"):
        tfedge.Budget(max_size_bytes=0)
    assert tfedge.Budget.from_config(tfedge.Budget(max_size_bytes=5).get_config()) == \
        tfedge.Budget(max_size_bytes=5)


def test_every_feasible_trial_outscores_every_infeasible_one():
    budget = tfedge.Budget(max_size_bytes=10_000)
    feasible = tune_lib.score(0.10, budget, {"size_bytes": 9_999, "accuracy": 0.10})
    barely_over = tune_lib.score(0.99, budget, {"size_bytes": 10_001, "accuracy": 0.99})
    far_over = tune_lib.score(0.99, budget, {"size_bytes": 40_000, "accuracy": 0.99})
    assert feasible > barely_over > far_over


def test_pareto_front_keeps_only_undominated_points():
    points = [{"accuracy": 0.9, "size_bytes": 10, "latency_ms": 5.0},
              {"accuracy": 0.8, "size_bytes": 20, "latency_ms": 6.0},   # dominated by 0
              {"accuracy": 0.7, "size_bytes": 5, "latency_ms": 9.0},
              {"accuracy": 0.6, "size_bytes": 30, "latency_ms": 1.0}]
    assert tune_lib.pareto_front(points) == [0, 2, 3]
    # Without latency, point 3 is dominated by 0.
    assert tune_lib.pareto_front([{k: v for k, v in p.items() if k != "latency_ms"}
                                  for p in points]) == [0, 2]


def test_search_space_rejects_out_of_range_choices():
    with pytest.raises(ValueError, match="final_sparsity"):
        tfedge.SearchSpace(final_sparsity=[0.5, 1.0])
    with pytest.raises(ValueError, match="empty"):
        tfedge.SearchSpace(width=[])


def test_search_space_has_no_settings_that_do_nothing():
    import keras_tuner as kt

    hp = kt.HyperParameters()
    tfedge.SearchSpace(final_sparsity=[0.0, 0.5], distill=[False, True]).declare(hp)
    by_name = {p.name: p for p in hp.space}
    hp.values.update(final_sparsity=0.0, distill=False)
    assert not hp.is_active(by_name["prune_end"]) and not hp.is_active(by_name["temperature"])
    hp.values.update(final_sparsity=0.5, distill=True)
    assert hp.is_active(by_name["prune_end"]) and hp.is_active(by_name["temperature"])


def test_scale_model_scales_hidden_layers_and_keeps_the_classes(make_digits_cnn):
    model = make_digits_cnn(width=16)
    scaled = tune_lib.scale_model(model, width=0.5, input_shape=(6, 6, 1))
    widths = {layer.name: tune_scaling._width_key(layer) and layer.get_config()[
        tune_scaling._width_key(layer)] for layer in scaled.layers}
    assert [v for v in widths.values() if v] == [8, 16, 32, 10]
    assert tuple(scaled.input_shape) == (None, 6, 6, 1)
    assert tuple(scaled.output_shape) == (None, 10)
    assert model.layers[1].filters == 16  # the user's model is untouched


def test_unknown_target_fails_before_training_and_lists_the_devices(digits):
    (x, y), _ = digits
    with pytest.raises(ValueError, match="rpi4"):
        tfedge.tune(build_cnn, (x, y), loss=LOSS,
                    budget=tfedge.Budget(max_latency_ms=1.0, target="nokia-3310"), max_trials=1)


def test_tune_rejects_bad_data_and_missing_loss(digits):
    (x, y), _ = digits
    with pytest.raises(ValueError, match="loss="):
        tfedge.tune(build_cnn, (x, y), max_trials=1)
    with pytest.raises(ValueError, match="same"):
        tfedge.tune(build_cnn, (x, y[:10]), loss=LOSS, max_trials=1)


def test_cli_tune_has_help_on_every_flag():
    from tfedge.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["tune"]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"--{action.dest} has no help"


def test_structured_choices_are_validated_with_the_fix():
    with pytest.raises(ValueError, match="channel_fraction"):
        tfedge.SearchSpace(final_sparsity=[0.0], channel_fraction=[0.5, 1.0])
    with pytest.raises(ValueError, match="add 0.0 to final_sparsity"):
        tfedge.SearchSpace(final_sparsity=[0.5], channel_fraction=[0.5])
    with pytest.raises(ValueError, match="rank_energy"):
        tfedge.SearchSpace(rank_energy=[1.5])
    with pytest.raises(ValueError, match="add 0.0 to rank_energy"):
        tfedge.SearchSpace(rank_energy=[0.9], rank_macs=[0.5])
    with pytest.raises(ValueError, match="channel_end"):
        tfedge.SearchSpace(final_sparsity=[0.0], channel_fraction=[0.5], channel_end=[0.0])
    space = tfedge.SearchSpace(final_sparsity=[0], channel_fraction=[0, 0.5])
    assert space.channel_fraction == [0.0, 0.5]  # one hyperparameter type
    assert tfedge.SearchSpace.from_config(space.get_config()) == space


def test_structured_settings_are_active_only_where_they_act():
    import keras_tuner as kt

    hp = kt.HyperParameters()
    tfedge.SearchSpace(final_sparsity=[0.0, 0.5], channel_fraction=[0.0, 0.5],
                       channel_end=[0.5, 1.0], rank_energy=[0.0, 0.9],
                       rank_macs=[0.5]).declare(hp)
    by_name = {p.name: p for p in hp.space}
    active = lambda *names: [hp.is_active(by_name[n]) for n in names]  # noqa: E731
    hp.values.update(final_sparsity=0.5, channel_fraction=0.5, rank_energy=0.9)
    assert active("prune_end", "channel_fraction", "channel_end", "rank_macs") == \
        [True, False, False, False]
    hp.values.update(final_sparsity=0.0, channel_fraction=0.0, rank_energy=0.0)
    assert active("prune_end", "channel_fraction", "channel_end", "rank_macs") == \
        [False, True, False, True]
    hp.values.update(channel_fraction=0.5)
    assert active("channel_end") == [True]
    # A search without structured choices declares none of them (old searches resume).
    plain = kt.HyperParameters()
    tfedge.SearchSpace().declare(plain)
    assert not {"channel_fraction", "channel_end", "rank_energy", "rank_macs"} & \
        {p.name for p in plain.space}


def test_trial_settings_become_channel_pruning_and_factorization():
    from tfedge._tune import trial as tune_trial

    values = {"final_sparsity": 0.0, "channel_fraction": 0.5, "channel_end": 0.5,
              "quantize": True}
    options = tune_trial._wrap_options(tune_lib.TrialSettings.from_values(values, 4), 4, None,
                                       (8, 8, 1))
    prune = options["prune"]
    assert prune.channel and prune.final_sparsity == 0.5 and prune.end_epoch == 2
    assert options["quantize"].start_epoch == 2  # QAT after the channels are gone
    options = tune_trial._wrap_options(tune_lib.TrialSettings.from_values(
        {"rank_energy": 0.0, "rank_macs": 0.4}, 3), 3, None, (8, 8, 1))
    assert options == {"factorize": tfedge.LowRankConfig(macs=0.4)}
    options = tune_trial._wrap_options(tune_lib.TrialSettings.from_values(
        {"rank_energy": 0.95}, 3), 3, None, (8, 8, 1))
    assert options["factorize"].energy == 0.95 and "prune" not in options
