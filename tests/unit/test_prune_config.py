"""PruneConfig: validation, epoch/step resolution, config round trip (no training)."""

import pytest

from tfedge import PruneConfig


@pytest.mark.parametrize("kwargs, message", [
    ({"final_sparsity": 1.0}, "outside [0, 1)"),
    ({"final_sparsity": -0.1}, "outside [0, 1)"),
    ({"final_sparsity": 0.5, "initial_sparsity": 1.2}, "outside [0, 1)"),
    ({"final_sparsity": 0.0}, "prunes nothing"),
    ({"final_sparsity": 0.5, "initial_sparsity": 0.6}, "above final_sparsity"),
    ({"begin_step": 100, "end_step": 50}, "end after it begins"),
    ({"begin_epoch": 3, "end_epoch": 3}, "end after it begins"),
    ({"begin_step": 1, "begin_epoch": 1}, "not both"),
    ({"end_step": 1, "end_epoch": 1}, "not both"),
    ({"frequency": 0}, "positive whole number"),
    ({"frequency": 2.5}, "positive whole number"),
    ({"schedule": "cosine"}, "Unknown pruning schedule"),
    ({"structure": "4:2"}, "'M:N'"),
    ({"structure": "two:four"}, "'M:N'"),
    ({"layers": 42}, "layers must be"),
])
def test_invalid_settings_raise_value_error_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        PruneConfig(**kwargs)


def test_epochs_resolve_to_steps_aligned_with_frequency():
    cfg = PruneConfig(0.8, begin_epoch=1, end_epoch=5, frequency=10)
    begin, end, freq = cfg.resolve(steps_per_epoch=45, epochs=8)
    assert (begin, freq) == (45, 10)
    assert end == 45 + ((225 - 45) // 10) * 10 == 225
    assert (end - begin) % freq == 0


def test_default_end_is_last_update_inside_the_fit():
    begin, end, freq = PruneConfig(0.8).resolve(steps_per_epoch=45, epochs=8)
    total = 45 * 8
    assert begin == 0 and freq == min(100, total // 10)
    assert end < total and (end - begin) % freq == 0
    assert end + freq >= total - 1  # no later update would still fit


def test_unknown_steps_with_epoch_schedule_says_what_to_pass():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        PruneConfig(0.5, end_epoch=2).resolve(steps_per_epoch=None, epochs=3)


def test_explicit_steps_work_without_known_fit_length():
    assert PruneConfig(0.5, begin_step=0, end_step=200, frequency=50).resolve(None, 1) == (0, 200, 50)


def test_frequency_longer_than_span_is_rejected():
    with pytest.raises(ValueError, match="longer than the pruning span"):
        PruneConfig(0.5, end_step=20, frequency=50).resolve(steps_per_epoch=10, epochs=5)


def test_structured_2_4_has_half_sparsity():
    cfg = PruneConfig(structure="2:4")
    assert cfg.m_by_n == (2, 4)
    assert cfg.target_sparsity == 0.5


def test_config_round_trip():
    cfg = PruneConfig(0.7, initial_sparsity=0.1, begin_epoch=1, end_epoch=4, frequency=20,
                      layers=["dense"], schedule="polynomial_decay")
    again = PruneConfig.from_config(cfg.get_config())
    assert again.get_config() == cfg.get_config()


@pytest.mark.parametrize("value, expected", [(0.8, 0.8), (True, 0.8), ({"final_sparsity": 0.6}, 0.6)])
def test_coerce_shorthands(value, expected):
    assert PruneConfig.coerce(value).final_sparsity == expected


def test_coerce_rejects_other_types():
    with pytest.raises(ValueError, match="prune= takes"):
        PruneConfig.coerce("lots")
