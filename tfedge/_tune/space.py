"""The tune stage's data: the :class:`Budget` a model must meet and the :class:`SearchSpace`.

Plain data (keras-tuner's "what to try", not "how to run it"): the budget
checks a trial's measurements and gives the score the oracle maximizes; the
search space declares keras-tuner hyperparameters and turns their values
into :class:`TrialSettings`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence


ORACLES = ("bayesian", "random", "grid", "hyperband")
_FRACTIONS = ("channel_fraction", "channel_end", "rank_energy", "rank_macs")


@dataclasses.dataclass
class Budget:
    """What the deployed int8 model must fit in.

    Every limit is optional; a trial is feasible when it meets all given ones.

    Args:
        max_size_bytes: largest allowed ``.tflite`` file, in bytes.
        max_latency_ms: largest allowed estimated latency on ``target``.
        target: a device profile of the benchmark harness
            (``tfedge.devices.PROFILES``: rpi3, rpi4, rpi5, phone, cortex-m7);
            needed for ``max_latency_ms``. Given alone, latency is estimated
            and reported without a limit. Latencies are the harness's
            single-thread estimates (:func:`tfedge.estimate_latency`).
        max_arena_bytes: largest allowed TFLite-Micro tensor arena, in bytes.
        min_accuracy: smallest allowed top-1 accuracy of the int8 model on
            the validation data, in [0, 1].

    Raises:
        ValueError: for negative limits, an accuracy outside [0, 1], or a
            latency limit without a target.

    Example:

    >>> Budget(max_size_bytes=50_000, min_accuracy=0.9).violations(
    ...     {"size_bytes": 60_000, "accuracy": 0.95})
    {'size_bytes': {'value': 60000, 'limit': 50000}}
    """

    max_size_bytes: int | None = None
    max_latency_ms: float | None = None
    target: str | None = None
    max_arena_bytes: int | None = None
    min_accuracy: float | None = None

    # (metric name, budget field, True if the metric must stay <= the limit)
    _LIMITS = (("size_bytes", "max_size_bytes", True), ("latency_ms", "max_latency_ms", True),
               ("arena_bytes", "max_arena_bytes", True), ("accuracy", "min_accuracy", False))

    def __post_init__(self):
        for name in ("max_size_bytes", "max_latency_ms", "max_arena_bytes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"Budget {name}={value} must be positive (or None for no "
                                 "limit).")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise ValueError(f"Budget min_accuracy={self.min_accuracy} is outside [0, 1]; "
                             "give a fraction, e.g. 0.9 for 90%.")
        if self.max_latency_ms is not None and not self.target:
            raise ValueError("Budget max_latency_ms needs target=, the device the latency is "
                             "estimated for (a device profile of tfedge's benchmark harness).")

    @property
    def measures_latency(self) -> bool:
        return bool(self.target)

    @property
    def measures_arena(self) -> bool:
        return self.max_arena_bytes is not None

    def violations(self, metrics: dict[str, float]) -> dict[str, dict[str, float]]:
        """The limits ``metrics`` break: ``{metric: {"value": v, "limit": l}}``.

        A limited metric that is missing or NaN counts as a violation.
        """
        broken = {}
        for metric, field, upper in self._LIMITS:
            limit = getattr(self, field)
            if limit is None:
                continue
            value = metrics.get(metric)
            if value is None or (isinstance(value, float) and math.isnan(value)) \
                    or (value > limit if upper else value < limit):
                broken[metric] = {"value": value, "limit": limit}
        return broken

    def penalty(self, metrics: dict[str, float]) -> float:
        """Sum of relative excesses over the limits (0 when feasible)."""
        total = 0.0
        for metric, v in self.violations(metrics).items():
            value, limit = v["value"], v["limit"]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                total += 1.0
            elif metric == "accuracy":
                total += limit - value
            else:
                total += value / limit - 1.0
        return total

    def get_config(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Budget":
        return cls(**config)


def score(accuracy: float, budget: Budget, metrics: dict[str, float]) -> float:
    """The objective keras-tuner maximizes.

    A feasible trial scores its int8 accuracy (in [0, 1]); an infeasible one
    scores ``accuracy - 1 - penalty``, below every feasible trial, and less
    so the closer it is to the budget, which steers Bayesian optimization
    toward the feasible region.
    """
    penalty = budget.penalty(metrics)
    return float(accuracy) if penalty == 0.0 and not budget.violations(metrics) \
        else float(accuracy) - 1.0 - penalty



@dataclasses.dataclass
class SearchSpace:
    """The choices ``tune`` searches over. A one-value list fixes that setting.

    Args:
        final_sparsity: pruning targets; 0 means no pruning.
        prune_end: where the pruning schedule ends, as a fraction of the
            training epochs (the rest fine-tunes at the final sparsity).
        quantize: QAT off/on choices (``[False]``, ``[True]`` or both). With
            pruning, QAT (prune-preserving) fine-tunes from the epoch pruning
            ends; without, it trains from the start.
        width: width multipliers (channels and units of every layer but the
            output layers are scaled; with a ``build_fn`` it is passed on).
        resolution: square input sides in pixels; None keeps the data's own.
        distill: distillation off/on choices (on needs ``teacher=``).
        distill_alpha: weights of the hard-label loss when distilling
            (:class:`tfedge.distill.DistillConfig`'s ``alpha``; the soft
            targets get ``1 - alpha``).
        temperature: distillation temperatures.
        channel_fraction: channel-pruning fractions
            (``PruneConfig(f, structure="channel")``: the share of every
            prunable group's output channels removed; ``finish()`` rebuilds
            a narrower model); 0 means none. Tried only in trials with
            ``final_sparsity`` 0: a trial prunes weights or channels.
        channel_end: where the channel-masking schedule ends, as a fraction
            of the epochs (like ``prune_end``; only for channel trials).
        rank_energy: low-rank factorization (``LowRankConfig(energy=e)``):
            the share of each layer's squared singular values kept, in
            (0, 1]; 0 means no factorization.
        rank_macs: low-rank factorization to a MAC budget
            (``LowRankConfig(macs=m)``: the model's MACs after over before,
            in (0, 1)); 0 means none. Tried only in trials with
            ``rank_energy`` 0 (a rank comes from one or the other).

    Raises:
        ValueError: for empty choice lists, values out of range, or a
            structured choice that no trial could take (channel fractions
            without a 0 among ``final_sparsity``, MAC budgets without a 0
            among ``rank_energy``).

    Example:

    >>> SearchSpace(final_sparsity=[0.5, 0.8], width=[0.5, 1.0]).width
    [0.5, 1.0]
    >>> SearchSpace(final_sparsity=[0.0], channel_fraction=[0.25, 0.5]).channel_fraction
    [0.25, 0.5]
    """

    final_sparsity: Sequence[float] = (0.0, 0.5, 0.75, 0.9)
    prune_end: Sequence[float] = (0.5, 1.0)
    quantize: Sequence[bool] = (False,)
    width: Sequence[float] = (0.5, 1.0)
    resolution: Sequence[int | None] = (None,)
    distill: Sequence[bool] = (False,)
    distill_alpha: Sequence[float] = (0.1,)
    temperature: Sequence[float] = (4.0,)
    channel_fraction: Sequence[float] = (0.0,)
    channel_end: Sequence[float] = (1.0,)
    rank_energy: Sequence[float] = (0.0,)
    rank_macs: Sequence[float] = (0.0,)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            values = getattr(self, f.name)
            if isinstance(values, (int, float, bool)) or values is None:
                values = [values]
            values = list(values)
            if not values:
                raise ValueError(f"SearchSpace {f.name} is empty: give at least one value.")
            if f.name in _FRACTIONS:  # one hyperparameter type: 0 and 0.5 are both floats
                values = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                          else v for v in values]
            setattr(self, f.name, values)
        checks = (("final_sparsity", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
                  ("prune_end", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
                  ("width", lambda v: v > 0, "positive"),
                  ("resolution", lambda v: v is None or (int(v) == v and v > 0),
                   "a positive number of pixels or None"),
                  ("distill_alpha", lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
                  ("temperature", lambda v: v > 0, "positive"),
                  ("channel_fraction", lambda v: 0.0 <= v < 1.0, "in [0, 1) (0: no channel "
                   "pruning)"),
                  ("channel_end", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
                  ("rank_energy", lambda v: 0.0 <= v <= 1.0, "in [0, 1] (0: no "
                   "factorization)"),
                  ("rank_macs", lambda v: 0.0 <= v < 1.0, "in [0, 1) (0: no MAC budget)"))
        for name, ok, what in checks:
            bad = [v for v in getattr(self, name) if not ok(v)]
            if bad:
                raise ValueError(f"SearchSpace {name} values {bad} must be {what}.")
        for child, parent, why in (
                ("channel_fraction", "final_sparsity", "a trial prunes weights or channels, "
                 "not both"),
                ("rank_macs", "rank_energy", "a rank comes from an energy or a MAC budget, "
                 "not both")):
            if any(getattr(self, child)) and 0.0 not in [float(v) for v in getattr(self, parent)]:
                raise ValueError(f"SearchSpace {child}={getattr(self, child)} is tried only in "
                                 f"trials with {parent} 0 ({why}), and {parent}="
                                 f"{getattr(self, parent)} has no 0: add 0.0 to {parent}.")

    def declare(self, hp: Any) -> None:
        """Declares the choices on a ``keras_tuner.HyperParameters``.

        The pruning length exists only for trials that prune, the
        distillation weights only for trials that distill, the channel
        fraction only for trials that do not prune weights (and its schedule
        end only for those that prune channels), the MAC budget only for
        trials without an energy threshold (keras-tuner conditional scopes),
        so no two trials differ only in a setting that does nothing.
        """
        def choice(name, values):
            keys = list(dict.fromkeys(_hp_value(v) for v in values))
            if len(keys) == 1:
                hp.Fixed(name, keys[0])
            else:
                hp.Choice(name, keys, ordered=not isinstance(keys[0], bool))

        choice("final_sparsity", self.final_sparsity)
        pruned = sorted({float(v) for v in self.final_sparsity if v > 0})
        if pruned:
            with hp.conditional_scope("final_sparsity", pruned):
                choice("prune_end", self.prune_end)
        choice("quantize", self.quantize)
        choice("width", self.width)
        choice("resolution", self.resolution)
        choice("distill", self.distill)
        if any(self.distill):
            with hp.conditional_scope("distill", [True]):
                choice("distill_alpha", self.distill_alpha)
                choice("temperature", self.temperature)
        # Structured settings are declared only when some trial uses them, so
        # searches without them keep their hyperparameters (and resume).
        if any(self.channel_fraction):
            with hp.conditional_scope("final_sparsity", [0.0]):
                choice("channel_fraction", self.channel_fraction)
                with hp.conditional_scope("channel_fraction",
                                          sorted({float(v) for v in self.channel_fraction
                                                  if v > 0})):
                    choice("channel_end", self.channel_end)
        if any(self.rank_energy) or any(self.rank_macs):
            choice("rank_energy", self.rank_energy)
        if any(self.rank_macs):
            with hp.conditional_scope("rank_energy", [0.0]):
                choice("rank_macs", self.rank_macs)

    def get_config(self) -> dict[str, Any]:
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SearchSpace":
        return cls(**config)


def _hp_value(value: Any) -> Any:
    """keras-tuner choices must be one type and not None: None -> 0."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return value
    return float(value) if isinstance(value, float) else int(value)


@dataclasses.dataclass
class TrialSettings:
    """One candidate's settings, read from a keras-tuner trial's values."""

    final_sparsity: float = 0.0
    prune_end: float = 1.0
    quantize: bool = False
    width: float = 1.0
    resolution: int | None = None
    distill: bool = False
    distill_alpha: float = 0.1
    temperature: float = 4.0
    channel_fraction: float = 0.0
    channel_end: float = 1.0
    rank_energy: float = 0.0
    rank_macs: float = 0.0
    epochs: int | None = None

    @classmethod
    def from_values(cls, values: dict[str, Any], epochs: int) -> "TrialSettings":
        return cls(final_sparsity=float(values.get("final_sparsity", 0.0)),
                   prune_end=float(values.get("prune_end", 1.0)),
                   quantize=bool(values.get("quantize", False)),
                   width=float(values.get("width", 1.0)),
                   resolution=int(values.get("resolution", 0)) or None,
                   distill=bool(values.get("distill", False)),
                   distill_alpha=float(values.get("distill_alpha", 0.1)),
                   temperature=float(values.get("temperature", 4.0)),
                   channel_fraction=float(values.get("channel_fraction", 0.0)),
                   channel_end=float(values.get("channel_end", 1.0)),
                   rank_energy=float(values.get("rank_energy", 0.0)),
                   rank_macs=float(values.get("rank_macs", 0.0)),
                   epochs=int(values.get("tuner/epochs", epochs)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
