"""Channel fractions per group from a MAC / parameter / instruction budget."""

import pytest

import tfedge
from tfedge import channel_budget, channels, keras
from test_channel_prune import compile_, residual_concat_model


@pytest.fixture(scope="module")
def trained(digits):
    (x, y), _ = digits
    model = compile_(residual_concat_model())
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return model


def test_mac_budget_plan_is_met_after_training(trained, digits):
    (x, y), (x_test, y_test) = digits
    plan = channel_budget.plan_channels(trained, x_test, y_test, macs=0.5)
    assert plan.reached <= 0.5
    assert len(plan.rows) == 5 and all(len(r["sensitivity"]) == 7 for r in plan.rows)
    assert "channel plan: macs" in str(plan)
    edge = compile_(tfedge.wrap(trained, prune=tfedge.PruneConfig(
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


def test_unknown_group_name_in_fractions_is_rejected():
    with pytest.raises(ValueError, match="'nope'"):
        tfedge.wrap(residual_concat_model(), prune=tfedge.PruneConfig(
            0.5, structure="channel", fractions={"nope": 0.5}))


@pytest.mark.slow
def test_instruction_budget_on_rpi4(trained, digits):
    (x, _), (x_test, y_test) = digits
    plan = channel_budget.plan_channels(trained, x_test, y_test, instructions=0.6,
                                        candidates=(0.25, 0.5, 0.75), target="rpi4",
                                        representative_data=x[:100])
    assert plan.metric == "instructions" and plan.target == "rpi4"
    assert plan.reached <= 0.6
