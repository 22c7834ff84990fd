"""Per-group channel fractions chosen for a budget, by measured sensitivity.

:func:`plan_channels` measures how much each dependency group's accuracy
(or a score the caller gives, ``evaluate=``: a detector's mAP) suffers when
a fraction of its channels is masked (the others whole), at a few candidate
fractions, then picks per group the largest fraction whose
accuracy drop stays under a threshold, and searches (bisection) the
smallest threshold that meets the budget. This is AIMET's greedy
compression-ratio selection, applied to channel groups (residual groups
included). The budget is one of:

* ``macs=r``: the rebuilt model's MACs over the model's (Keras shapes);
* ``params=r``: its parameter count over the model's;
* ``instructions=r`` with ``target="rpi4"``: emulated instructions per
  inference of its int8 conversion (``tfedge.convert`` then
  ``tfedge.bench``, exact counts) over the dense int8 model's; with
  ``target=["rpi4", "rpi5"]`` the worse of the targets' ratios.

``strategy="cost"`` replaces the single threshold by a cost-aware greedy
(NetAdapt / AIMET-like): each group's cost saved at each candidate fraction
is estimated from its MACs saved (exact, from the channel counts) times the
group's own cost per MAC, measured once per group with the budget's metric
(one int8 conversion + emulation per group for ``instructions``), and the
greedy repeatedly takes the group step of smallest accuracy drop per unit of
cost saved until the measured cost meets the budget. On an instruction
budget it prunes the groups that cost many instructions per MAC (the
high-resolution stem and expansions of MobileNetV2) harder than a single
threshold does.

Masked channels shift the statistics every later BatchNormalization sees, so
a masked model scored as is can lose nearly everything (the recipe's detector
loses up to 98 pp of mAP at most candidates of its early stages) and the
sensitivities stop ranking the groups. ``recalibrate_bn=n`` re-estimates
every BatchNormalization's moving statistics on ``n`` calibration samples
after masking, before scoring: EagleEye's adaptive batch normalization (Li
et al., ECCV 2020), which found the recalibrated score of a pruned candidate
tracks its fine-tuned accuracy where the plain score does not. Measured here
(``benchmarks/structured.py --detector-plan-bn``, one seed) it makes the
detector's drops milder but its plan is no better after a full-rate
fine-tune (94.6% mAP against 97.5% for the plain plan), so it is off by default.

The plan goes to training as
``PruneConfig(..., structure="channel", fractions=plan)``.

:func:`int8_instructions` is the one measurement behind the instruction
budget and the benchmarks' plan searches: full-int8 conversion, then exact
emulated instructions per target and the file size.

Example:

>>> plan = plan_channels(model, x_val, y_val, macs=0.5)  # doctest: +SKIP
>>> print(plan)  # fraction per group, sensitivity, the budget reached  # doctest: +SKIP
>>> edge = tfedge.wrap(model, prune=tfedge.PruneConfig(  # doctest: +SKIP
...     0.5, structure="channel", fractions=plan, end_epoch=3))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from tfedge import channel_prune, channels
from tfedge._bench import bench
from tfedge._convert import convert
from tfedge._keras import keras
from tfedge.errors import TFEdgeError, UnsupportedModelError
from tfedge.report import format_table
from tfedge._wrap import clone_model

CANDIDATES = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
STRATEGIES = ("threshold", "cost")


class BudgetError(TFEdgeError, ValueError):
    """A budget that channel pruning cannot reach (the message names the best reached)."""


@dataclasses.dataclass
class ChannelPlan:
    """Channel fractions per dependency group, chosen for a budget.

    Attributes:
        fractions: first producer of each group -> fraction of its prunable
            channels to remove.
        metric: ``"macs"``, ``"params"`` or ``"instructions"``.
        budget: the ratio asked for.
        reached: the ratio the plan reaches.
        threshold: accuracy drop allowed per group that met the budget.
        base_accuracy: accuracy of the unpruned model on the data given.
        rows: per group: ``producers``, ``fraction``, ``sensitivity``
            (accuracy at each candidate fraction).
        target: the device of an ``instructions`` budget (a list: the worse
            of their ratios).
        multiple: the channel multiple the plan was made with (an int or
            ``{producer: int}``); ``PruneConfig(fractions=plan)`` trains with it.
        strategy: ``"threshold"`` or ``"cost"`` (:func:`plan_channels`); with
            ``"cost"``, ``threshold`` is the largest drop of a group chosen.
    """

    fractions: dict[str, float]
    metric: str
    budget: float
    reached: float
    threshold: float
    base_accuracy: float
    rows: list[dict[str, Any]]
    target: str | list[str] | None = None
    multiple: Any = 1
    strategy: str = "threshold"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        where = "+".join(self.target) if isinstance(self.target, list) else self.target
        rows = [[", ".join(r["producers"]), f"{100 * r['fraction']:.1f}%",
                 " ".join(f"{100 * a:.0f}" for a in r["sensitivity"])] for r in self.rows]
        return format_table(
            ["group", "removed", "accuracy % at " + "/".join(f"{c:g}" for c in CANDIDATES)],
            rows, title=f"channel plan: {self.metric} {self.reached:.3f}x (budget "
                        f"{self.budget}x{' on ' + where if where else ''}, {self.strategy}), "
                        f"drop per group <= {100 * self.threshold:.1f} pp")


def _top1(x: Any, y: Any) -> Callable[[Any], float]:
    """``model -> top-1 accuracy`` on ``(x, y)`` (integer labels)."""
    labels = np.asarray(y).reshape(-1)

    def accuracy(model: Any) -> float:
        pred = model.predict(x, verbose=0, batch_size=128)
        return float(np.mean(np.argmax(pred, -1) == labels))
    return accuracy


def _scorer(model: Any, x: Any, y: Any, evaluate: Callable[[Any], float] | None
            ) -> Callable[[Any], float]:
    """The sensitivity measure: top-1 accuracy on ``(x, y)`` or the user's ``evaluate``."""
    if (y is None) == (evaluate is None):
        raise ValueError(
            "Give plan_channels either y (integer labels: sensitivity is top-1 accuracy) or "
            "evaluate= (a function model -> score, higher is better, e.g. a detector's "
            "mAP), not " + ("both." if evaluate is not None else "neither."))
    if evaluate is None:
        if len(model.outputs) != 1:
            raise ValueError(
                f"{model.name!r} has {len(model.outputs)} outputs; top-1 accuracy needs one. "
                "Pass evaluate=lambda m: ... (a score of the model on your validation data, "
                "e.g. a detector's mAP) instead of y.")
        return _top1(x, y)
    if not callable(evaluate):
        raise TypeError(f"evaluate={evaluate!r} is not callable: give a function "
                        "model -> float (higher is better).")

    def checked(work: Any) -> float:
        value = evaluate(work)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not np.isfinite(number):
            raise ValueError(f"evaluate returned {value!r}; it must return a finite number "
                             "(higher is better), e.g. accuracy or mAP in [0, 1].")
        return number
    return checked


def plan_channels(model: Any, x: Any, y: Any = None, *, macs: float | None = None,
                  params: float | None = None, instructions: float | None = None,
                  target: str | Sequence[str] = "rpi4", representative_data: Any = None,
                  candidates: Sequence[float] = CANDIDATES, multiple: Any = 1,
                  strategy: str = "threshold", max_measures: int = 8,
                  evaluate: Callable[[Any], float] | None = None,
                  recalibrate_bn: int = 0) -> ChannelPlan:
    """Chooses per-group channel fractions for a budget by measured sensitivity.

    Args:
        model: a trained tf_keras functional model (not changed): a classifier
            scored by ``y``, or any model scored by ``evaluate``.
        x: validation inputs (and the default calibration samples).
        y: their integer labels: sensitivity is top-1 accuracy. Give ``y`` or
            ``evaluate``, not both.
        evaluate: instead of ``y``, a function ``model -> float``, higher is
            better, on the scale of an accuracy (e.g. a detector's mAP in
            [0, 1] on your validation data). It is called on a private copy
            with channels masked, once per group and candidate fraction, and
            must not train it. ``ChannelPlan.base_accuracy`` and the
            sensitivities are then its scores.
        macs / params / instructions: the budget, one of them, a ratio in (0, 1).
        target: device profile for ``instructions`` (``tfedge.devices.PROFILES``),
            or a list of them: the budget holds for the worse of their ratios.
        representative_data: calibration samples for the int8 conversions of an
            ``instructions`` budget (default: ``x[:200]``).
        candidates: fractions measured per group.
        multiple: channels kept per group rounded up to a multiple, as
            ``PruneConfig(channel_multiple=)`` will round them (an int or
            ``{producer: int}``, :func:`tfedge.channels.group_multiples`): the
            sensitivities and the budget are measured with that rounding, and
            the plan carries it to ``PruneConfig(fractions=plan)``.
        strategy: ``"threshold"`` (default): per group the largest candidate
            whose drop is under one threshold, bisected for the budget.
            ``"cost"``: the cost-aware greedy of the module docstring (one
            extra measurement per group, then at most ``max_measures``).
        max_measures: with ``strategy="cost"``, measurements of the whole
            plan's cost at most (each greedy stop that misses the budget
            lowers the estimate's goal by the miss and goes on).
        recalibrate_bn: after masking each candidate, replace every
            BatchNormalization's moving statistics by the batch statistics of
            the first ``recalibrate_bn`` samples of ``representative_data``
            (adaptive BN, module docstring; one forward pass in training mode,
            so Dropout is active in it); 0 (default): score the masked model
            as it is. On the copy only: training starts from ``model``.

    Returns:
        A :class:`ChannelPlan`.

    Raises:
        ValueError: no budget, several budgets, or a ratio outside (0, 1); neither
            or both of ``y`` and ``evaluate``; ``y`` for a model with several
            outputs; ``evaluate`` returning a non-finite number;
            ``recalibrate_bn`` negative.
        TypeError: ``evaluate`` is not callable.
        BudgetError: the budget cannot be met; the message names the best reached.
        UnsupportedModelError: nothing in the model can be channel-pruned.

    Example:

    >>> plan = plan_channels(classifier, x_val, y_val, macs=0.5)  # doctest: +SKIP
    >>> # a model without one class output: score it yourself (higher is better)
    >>> plan = plan_channels(detector, x_val, instructions=0.55,  # doctest: +SKIP
    ...                      target=["rpi4", "rpi5"], evaluate=lambda m: map50(m, x_val))
    """
    given = {k: v for k, v in (("macs", macs), ("params", params),
                               ("instructions", instructions)) if v is not None}
    if len(given) != 1:
        raise ValueError("Give plan_channels one budget: macs=, params= or instructions= "
                         "(a ratio such as 0.5).")
    metric, budget = next(iter(given.items()))
    if not 0.0 < budget < 1.0:
        raise ValueError(f"{metric}={budget} is outside (0, 1): it is the share kept, e.g. 0.5.")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: give one of {', '.join(STRATEGIES)}.")
    targets = [target] if isinstance(target, str) else list(target)
    if metric == "instructions" and not targets:
        raise ValueError("target=[] names no device: give e.g. target='rpi4' or "
                         "['rpi4', 'rpi5'].")
    if int(max_measures) < 1:
        raise ValueError(f"max_measures={max_measures}: give 1 or more.")
    if int(recalibrate_bn) < 0:
        raise ValueError(f"recalibrate_bn={recalibrate_bn}: give the number of calibration "
                         "samples (e.g. 256), or 0 to score the masked model as it is.")
    score = _scorer(model, x, y, evaluate)
    calibration = representative_data if representative_data is not None else x[:200]
    bn_samples = calibration[:int(recalibrate_bn)]
    work = clone_model(model)
    graph = channels.analyze(work)
    groups = [i for i, g in enumerate(graph.groups) if g.prunable]
    if not groups:
        raise UnsupportedModelError(
            f"Nothing in {model.name!r} can be channel-pruned: "
            + "; ".join(f"{n}: {r}" for n, r in graph.unprunable.items()))
    tiles = channels.group_multiples(graph, multiple)
    masks = channel_prune.ChannelMasks(graph)
    scores = channel_prune.channel_scores(graph)
    original = work.get_weights()
    base_accuracy = score(work)

    sensitivity: dict[int, list[float]] = {}
    for index in groups:
        curve = []
        for fraction in candidates:
            removed = channel_prune.select_removed(graph, scores, {index: fraction}, set(),
                                                   tiles)
            masks.set_removed(removed)
            masks.apply()
            if recalibrate_bn:
                recalibrate_batch_norm(work, bn_samples)
            curve.append(score(work))
            work.set_weights(original)
        sensitivity[index] = curve
        logging.info("tfedge: sensitivity of %s: %s", "+".join(graph.groups[index].producers),
                     curve)

    measure = _metric(metric, model, graph, targets, calibration, tiles)
    if strategy == "cost":
        chosen, reached, threshold = _cost_greedy(
            graph, groups, candidates, sensitivity, base_accuracy, tiles, measure, metric,
            budget, int(max_measures))
        return _plan(graph, groups, chosen, sensitivity, metric, budget, reached, threshold,
                     base_accuracy, targets, target, multiple, strategy)

    def fractions_at(threshold: float) -> dict[int, float]:
        chosen = {}
        for index in groups:
            ok = [f for f, a in zip(candidates, sensitivity[index])
                  if base_accuracy - a <= threshold + 1e-12]
            chosen[index] = max(ok) if ok else 0.0
        return chosen

    # A larger threshold gives larger fractions and a lower cost: binary search over
    # the distinct accuracy drops measured (each cost is computed once).
    drops = sorted({0.0} | {max(base_accuracy - a, 0.0) for c in sensitivity.values()
                            for a in c})
    costs: dict[float, float] = {}

    def cost(threshold: float) -> float:
        if threshold not in costs:
            costs[threshold] = measure(fractions_at(threshold))
        return costs[threshold]

    if cost(drops[-1]) > budget:
        raise BudgetError(
            f"The budget {metric}={budget} cannot be met by channel pruning: the best reached "
            f"is {cost(drops[-1]):.3f}x (every group at up to {max(candidates):g}; layers left "
            f"whole: {', '.join(graph.unprunable) or 'none'}). Ask for {cost(drops[-1]):.3f} "
            "or more, or add low-rank factorization (LowRankConfig).")
    lo, hi = 0, len(drops) - 1  # cost(drops[hi]) <= budget
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(drops[mid]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    threshold = drops[hi]
    return _plan(graph, groups, fractions_at(threshold), sensitivity, metric, budget,
                 cost(threshold), threshold, base_accuracy, targets, target, multiple, strategy)


def recalibrate_batch_norm(model: Any, samples: Any) -> int:
    """Sets every BatchNormalization's moving statistics to those of ``samples``.

    One forward pass in training mode with each layer's momentum at 0 (put
    back afterwards), so each layer's moving mean and variance become the
    batch statistics of its input as the layers before it now compute them
    (nested models included). Adaptive BN of EagleEye (Li et al., 2020).

    Args:
        model: a tf_keras model, changed in place (its moving statistics).
        samples: one batch of inputs, e.g. 256 calibration images.

    Returns:
        The number of BatchNormalization layers recalibrated (0: none, nothing run).

    Example:

    >>> recalibrate_batch_norm(masked_copy, x_calib[:256])  # doctest: +SKIP
    """
    layers = [m for m in model.submodules if isinstance(m, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        model(samples, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)


def _plan(graph: Any, groups: list[int], chosen: dict[int, float],
          sensitivity: dict[int, list[float]], metric: str, budget: float, reached: float,
          threshold: float, base_accuracy: float, targets: list[str], target: Any,
          multiple: Any, strategy: str) -> ChannelPlan:
    rows = [{"producers": list(graph.groups[i].producers), "fraction": chosen[i],
             "sensitivity": sensitivity[i]} for i in groups]
    where = (target if isinstance(target, str) else targets) if metric == "instructions" \
        else None
    return ChannelPlan(fractions={graph.groups[i].producers[0]: chosen[i] for i in groups},
                       metric=metric, budget=budget, reached=reached, threshold=threshold,
                       base_accuracy=base_accuracy, rows=rows, target=where,
                       multiple=multiple, strategy=strategy)


def _cost_greedy(graph: Any, groups: list[int], candidates: Sequence[float],
                 sensitivity: dict[int, list[float]], base_accuracy: float,
                 tiles: dict[int, int], measure: Any, metric: str, budget: float,
                 max_measures: int) -> tuple[dict[int, float], float, float]:
    """The cost-aware greedy of ``strategy="cost"``: (fractions, reached, largest drop).

    Per group, the cost saved at each candidate is its MACs saved times the
    group's measured cost per MAC (its metric's saving at the middle candidate
    over its MACs saved there); the drops are made non-decreasing in the
    fraction (a larger fraction is never taken as safer). Each step moves one
    group to the later candidate of smallest extra drop per extra cost saved
    (the larger saving on a tie) until the estimate meets the goal; the goal
    starts at the budget and is lowered by each measured miss.
    """
    scores = channel_prune.channel_scores(graph)
    base_macs = channels.keras_macs(graph.model)
    fractions = [0.0] + list(candidates)
    middle = len(fractions) // 2
    saved: dict[int, list[float]] = {}
    drop: dict[int, list[float]] = {}
    for index in groups:
        macs = [base_macs - channel_prune.macs_after(graph, channel_prune.select_removed(
            graph, scores, {index: f}, set(), tiles)) if f else 0 for f in fractions]
        # the candidate nearest the middle that removes something (multiples round)
        probe = min((j for j in range(1, len(fractions)) if macs[j] > 0),
                    key=lambda j: abs(j - middle), default=None)
        per_mac = 1.0 / base_macs
        if metric != "macs" and probe is not None:
            per_mac = (1.0 - measure({index: fractions[probe]})) / macs[probe]
        saved[index] = [m * per_mac for m in macs]
        drop[index] = list(np.maximum.accumulate(
            [0.0] + [max(base_accuracy - a, 0.0) for a in sensitivity[index]]))
        logging.info("tfedge: %s: %.3f of the %s saved per share of the MACs saved",
                     "+".join(graph.groups[index].producers), per_mac * base_macs, metric)
    at = {index: 0 for index in groups}
    estimate, goal, measures, reached = 1.0, budget, 0, None
    while True:
        exhausted = False
        while estimate > goal:
            best = None
            for index in groups:
                k = at[index]
                for j in range(k + 1, len(fractions)):
                    gain = saved[index][j] - saved[index][k]
                    if gain <= 0:
                        continue
                    key = ((drop[index][j] - drop[index][k]) / gain, -gain)
                    if best is None or key < best[0]:
                        best = (key, index, j, gain)
            if best is None:
                exhausted = True
                break
            _, index, j, gain = best
            at[index] = j
            estimate -= gain
        chosen = {index: fractions[at[index]] for index in groups}
        reached = measure(chosen)
        measures += 1
        logging.info("tfedge: cost greedy: estimate %.3f, measured %.3f (budget %.3f)",
                     estimate, reached, budget)
        if reached <= budget:
            break
        if exhausted or measures >= max_measures:
            raise BudgetError(
                f"The budget {metric}={budget} was not met by the cost-aware plan: the best "
                f"reached is {reached:.3f}x after {measures} measurement(s)"
                + (f" (every group at up to {max(candidates):g}; layers left whole: "
                   f"{', '.join(graph.unprunable) or 'none'}). Ask for {reached:.3f} or more, "
                   "or add low-rank factorization (LowRankConfig)." if exhausted else
                   f"; raise max_measures={max_measures} or ask for {reached:.3f} or more."))
        # lower the goal below the estimate by the miss, so that the greedy goes on
        goal = min(goal, estimate) - (reached - budget) - 1e-3
    largest = max(drop[i][at[i]] for i in groups)
    return chosen, reached, float(largest)


def _metric(metric: str, model: Any, graph: Any, targets: list[str], calibration: Any,
            tiles: dict[int, int]):
    """``fractions -> ratio`` of the rebuilt model's cost to the model's."""
    scores = channel_prune.channel_scores(graph)

    def rebuilt(fractions):
        return channel_prune.rebuild(graph, channel_prune.select_removed(
            graph, scores, fractions, set(), tiles))

    if metric == "macs":
        base = channels.keras_macs(model)
        return lambda f: channels.keras_macs(rebuilt(f)) / base
    if metric == "params":
        base = model.count_params()
        return lambda f: rebuilt(f).count_params() / base
    base = int8_instructions(model, calibration, targets).instructions

    def ratio(f):
        counts = int8_instructions(rebuilt(f), calibration, targets).instructions
        return max(counts[t] / base[t] for t in targets)
    return ratio


@dataclasses.dataclass
class Int8Count:
    """What :func:`int8_instructions` measured.

    Attributes:
        instructions: target -> exact emulated instructions of one inference.
        size_bytes: the int8 TFLite file's size.
    """

    instructions: dict[str, int]
    size_bytes: int


def int8_instructions(model: Any, calibration: Any,
                      targets: Sequence[str] = ("rpi4",)) -> Int8Count:
    """Converts ``model`` to full int8 and counts one inference's instructions per target.

    The counts depend on the layers' shapes, not on the weights' values, so an
    untrained rebuilt model measures what its trained version will run
    (``tfedge.bench``: LiteRT's aarch64 build under qemu, one emulated run,
    exact counts).

    Args:
        model: a tf_keras model.
        calibration: representative samples for the int8 conversion.
        targets: device profiles (``tfedge.devices.PROFILES``), e.g. ``["rpi4", "rpi5"]``.

    Returns:
        An :class:`Int8Count`: instructions per target and the int8 file size.

    Raises:
        ConversionError: the conversion fails (from ``tfedge.convert``).

    Example:

    >>> int8_instructions(model, x[:32], ["rpi4", "rpi5"]).instructions  # doctest: +SKIP
    {'rpi4': 6157409, 'rpi5': 3229476}
    """
    artifact = convert(model, representative_data=calibration)
    report = bench(artifact, target=list(targets), runs=1, warmup=0, emulation_runs=1)
    return Int8Count({t.target: t.instructions for t in report.targets}, artifact.size_bytes)
