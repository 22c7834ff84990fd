"""Pruning: configuration, schedules resolved at ``fit``, and sparsity reports.

tfedge wraps tfmot's magnitude pruning (``prune_low_magnitude``) and fixes its
sharp edges:

* schedules can be given in **epochs**: their step bounds are tf.Variables that
  :class:`ResolvePruningSchedule` fills from the ``fit`` call's own step count,
  so nobody has to compute ``steps_per_epoch`` by hand;
* the end step is aligned to the pruning frequency, so the final sparsity is
  really reached (tfmot silently stops short when ``end - begin`` is not a
  multiple of the frequency);
* the user's model is copied before wrapping, never wrapped in place.

Example:

>>> cfg = PruneConfig(final_sparsity=0.8, end_epoch=4)
>>> cfg.get_config()["final_sparsity"]
0.8
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from tfedge._config import PhaseConfig
from tfedge._keras import keras
from tfedge.channels import check_multiple
from tfedge.report import format_table
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

_tfmot_sparsity = tfmot.sparsity.keras

LayerSelector = Sequence[str] | Callable[[Any], bool] | None


# ----------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------
class _ResolvableSchedule(_tfmot_sparsity.PruningSchedule):
    """A tfmot schedule whose begin/end/frequency are variables set at fit."""

    def __init__(self, begin_step: int = 0, end_step: int = -1, frequency: int = 100):
        self.begin_step = tf.Variable(int(begin_step), dtype=tf.int64, trainable=False,
                                      name="prune_begin_step")
        self.end_step = tf.Variable(int(end_step), dtype=tf.int64, trainable=False,
                                    name="prune_end_step")
        self.frequency = tf.Variable(int(frequency), dtype=tf.int64, trainable=False,
                                     name="prune_frequency")

    def set_steps(self, begin_step: int, end_step: int, frequency: int) -> None:
        self.begin_step.assign(int(begin_step))
        self.end_step.assign(int(end_step))
        self.frequency.assign(int(frequency))

    def _should_prune(self, step):
        step = tf.cast(step, tf.int64)
        return self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)

    def _steps_config(self) -> dict[str, int]:
        return {"begin_step": int(self.begin_step.numpy()),
                "end_step": int(self.end_step.numpy()),
                "frequency": int(self.frequency.numpy())}


class PolynomialDecay(_ResolvableSchedule):
    """Sparsity rising from ``initial`` to ``final`` along (1 - t)^power.

    Same formula as ``tfmot.sparsity.keras.PolynomialDecay``; the step bounds
    may be changed after the model is wrapped (see :class:`PruneConfig`).

    Args:
        initial_sparsity: sparsity at ``begin_step``.
        final_sparsity: sparsity reached at ``end_step``.
        begin_step: first step at which masks are updated.
        end_step: last step at which masks are updated.
        power: exponent of the decay.
        frequency: masks are updated every ``frequency`` steps.
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float,
                 begin_step: int = 0, end_step: int = -1, power: float = 3.0,
                 frequency: int = 100):
        super().__init__(begin_step, end_step, frequency)
        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = float(final_sparsity)
        self.power = float(power)

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        span = tf.cast(tf.maximum(self.end_step - self.begin_step, 1), tf.float32)
        p = tf.cast(step - self.begin_step, tf.float32) / span
        p = tf.clip_by_value(p, 0.0, 1.0)
        sparsity = (self.initial_sparsity - self.final_sparsity) * tf.pow(1.0 - p, self.power) \
            + self.final_sparsity
        return self._should_prune(step), sparsity

    def get_config(self) -> dict[str, Any]:
        return {"class_name": self.__class__.__name__,
                "config": {"initial_sparsity": self.initial_sparsity,
                           "final_sparsity": self.final_sparsity,
                           "power": self.power, **self._steps_config()}}


class ConstantSparsity(_ResolvableSchedule):
    """The same target sparsity at every pruning step (tfmot's ConstantSparsity).

    Args:
        target_sparsity: sparsity applied from ``begin_step`` on.
        begin_step: first step at which masks are updated.
        end_step: last step at which masks are updated (-1: forever).
        frequency: masks are updated every ``frequency`` steps.
    """

    def __init__(self, target_sparsity: float, begin_step: int = 0, end_step: int = -1,
                 frequency: int = 100):
        super().__init__(begin_step, end_step, frequency)
        self.target_sparsity = float(target_sparsity)

    def __call__(self, step):
        return self._should_prune(step), tf.constant(self.target_sparsity, tf.float32)

    def get_config(self) -> dict[str, Any]:
        return {"class_name": self.__class__.__name__,
                "config": {"target_sparsity": self.target_sparsity, **self._steps_config()}}


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, repr=False)
class PruneConfig(PhaseConfig):
    """What to prune, how much, and when.

    Begin and end may be given in steps or in epochs (not both). Epochs are
    turned into steps when ``fit`` starts, from the number of steps Keras
    itself computed for that call. When no end is given, pruning ends at the
    last step of the first ``fit`` call. The end is moved down to the last
    mask update, so that the final sparsity is always reached.

    Args:
        final_sparsity: fraction of weights set to zero at the end, in (0, 1).
        initial_sparsity: fraction at the beginning (polynomial decay only).
        schedule: ``"polynomial_decay"`` or ``"constant"``.
        begin_step: step at which pruning starts.
        end_step: step at which the final sparsity is reached.
        begin_epoch: like ``begin_step``, in epochs.
        end_epoch: like ``end_step``, in epochs.
        frequency: steps between mask updates; default: 100, or a tenth of the
            pruning span when that is shorter.
        power: exponent of the polynomial decay.
        layers: which layers to prune: None (every layer tfmot can prune that
            has weights), a list of layer names, or a predicate ``layer -> bool``.
        structure: ``"2:4"`` (or any ``"M:N"``) for structured M-of-N sparsity;
            the sparsity is then M/N and ``final_sparsity`` is ignored.
            ``"channel"``: ``final_sparsity`` is the fraction of prunable output
            channels removed, and ``finish()`` returns a narrower model (see
            :mod:`tfedge.channel_prune`).
        importance: channel score with ``structure="channel"``: ``"bn_gamma"``
            (default; the filter's L2 norm where no BatchNorm follows), ``"l2"``
            or ``"l1"`` (see :mod:`tfedge.channel_prune`).
        fractions: with ``structure="channel"``, per-group fractions instead of
            one: ``{first producer of a group: fraction}`` or a
            :class:`tfedge.channel_budget.ChannelPlan`; ``final_sparsity`` then
            only shapes the schedule (each group reaches its own fraction).
        channel_multiple: with ``structure="channel"``, round the channels each
            group keeps up to a multiple of this (XNNPACK's aarch64 int8
            kernels tile channels: measured, 8 suits rpi4's Cortex-A72, 16
            rpi5's A76; see ``benchmarks/structured.py``); or per group,
            ``{producer: multiple}`` with ``"*"`` for the groups not named
            (default 1), e.g. ``{"block_1_expand": 8, "*": 16}``
            (:func:`tfedge.channels.group_multiples`). With
            ``fractions=`` a ``ChannelPlan``, the plan's multiple by default.

    Raises:
        ValueError: for sparsities outside [0, 1), an end not after the begin,
            steps mixed with epochs, a non-positive frequency, an unknown
            schedule or a malformed structure.

    Example:

    >>> PruneConfig(0.8, begin_epoch=1, end_epoch=5).schedule
    'polynomial_decay'
    """

    ARGUMENT = "prune"
    SHORTHAND = ((int, float), "final_sparsity", "a sparsity such as 0.8")
    SCHEDULES = ("polynomial_decay", "constant")

    final_sparsity: float = 0.8
    _: dataclasses.KW_ONLY
    initial_sparsity: float = 0.0
    schedule: str = "polynomial_decay"
    begin_step: int | None = None
    end_step: int | None = None
    begin_epoch: float | None = None
    end_epoch: float | None = None
    frequency: int | None = None
    power: float = 3.0
    layers: LayerSelector = None
    structure: str | None = None
    importance: str | None = None
    fractions: Any = None
    channel_multiple: int | dict[str, int] | None = None

    def _normalize(self) -> None:
        fractions = getattr(self.fractions, "fractions", self.fractions)  # a ChannelPlan
        planned = getattr(self.fractions, "multiple", None)
        if planned is not None and self.channel_multiple is None:
            self._set("channel_multiple", planned)  # train with the rounding it planned with
        elif planned is not None and planned != self.channel_multiple:
            raise ValueError(f"channel_multiple={self.channel_multiple!r} differs from the "
                             f"multiple the plan was made with ({planned!r}): the groups "
                             "would not reach the planned budget. Drop channel_multiple=, "
                             "or plan again with plan_channels(..., multiple=...).")
        if isinstance(self.channel_multiple, dict):
            self._set("channel_multiple", dict(self.channel_multiple))
        if fractions is not None:
            self._set("fractions", {str(k): float(v) for k, v in dict(fractions).items()})
        self._set("final_sparsity", float(self.final_sparsity))
        self._set("initial_sparsity", float(self.initial_sparsity))
        self._set("power", float(self.power))
        if isinstance(self.layers, (list, tuple)):
            self._set("layers", list(self.layers))

    def _validate(self) -> None:
        if self.schedule not in self.SCHEDULES:
            raise ValueError(f"Unknown pruning schedule {self.schedule!r}; use one of "
                             f"{', '.join(self.SCHEDULES)}.")
        if self.channel and not 0.0 < self.final_sparsity < 1.0:
            raise ValueError(f"final_sparsity={self.final_sparsity} is outside (0, 1): with "
                             "structure='channel' it is the fraction of output channels "
                             "removed, e.g. 0.5.")
        for name in ("final_sparsity", "initial_sparsity"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value} is outside [0, 1): sparsity is the "
                                 "fraction of weights set to zero, e.g. 0.8 for 80%.")
        if self.structure is None and self.final_sparsity == 0.0:
            raise ValueError("final_sparsity=0 prunes nothing; pass e.g. 0.5, or do not "
                             "ask for pruning.")
        if self.schedule == "polynomial_decay" and self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"initial_sparsity={self.initial_sparsity} is above "
                             f"final_sparsity={self.final_sparsity}; pruning only adds zeros.")
        if self.begin_step is not None and self.begin_epoch is not None:
            raise ValueError("Give the pruning begin in steps or in epochs, not both.")
        if self.end_step is not None and self.end_epoch is not None:
            raise ValueError("Give the pruning end in steps or in epochs, not both.")
        for name in ("begin_step", "end_step", "begin_epoch", "end_epoch"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}={value} is negative.")
        begin = self.begin_step if self.begin_step is not None else self.begin_epoch
        end = self.end_step if self.end_step is not None else self.end_epoch
        same_unit = (self.begin_step is None) == (self.end_step is None) or begin is None
        if begin is not None and end is not None and same_unit and end <= begin:
            raise ValueError(f"Pruning must end after it begins: end={end} <= begin={begin}.")
        if self.frequency is not None and (int(self.frequency) != self.frequency
                                           or self.frequency < 1):
            raise ValueError(f"frequency={self.frequency} must be a positive whole number "
                             "of steps.")
        if self.layers is not None and not (isinstance(self.layers, list) or callable(self.layers)):
            raise ValueError("layers must be None, a list of layer names or a predicate "
                             f"function, got {type(self.layers).__name__}.")
        if self.channel:  # --- channel pruning (tfedge.channel_prune) ---
            if self.importance not in (None, "bn_gamma", "l2", "l1"):
                raise ValueError(f"importance={self.importance!r}: use 'bn_gamma', 'l2' or "
                                 "'l1'.")
            if self.fractions and not all(0.0 <= f < 1.0 for f in self.fractions.values()):
                raise ValueError("fractions= must each be in [0, 1): the share of a group's "
                                 "channels removed.")
            if self.layers is not None:
                raise ValueError("layers= is not supported with structure='channel': every "
                                 "layer whose channels can be removed is pruned.")
            if self.channel_multiple is not None:
                check_multiple(self.channel_multiple)
        elif (self.importance is not None or self.fractions is not None
              or self.channel_multiple is not None):
            raise ValueError("importance=, fractions= and channel_multiple= apply to "
                             "structure='channel' only.")
        self.m_by_n  # validates structure

    @property
    def channel(self) -> bool:
        """True for channel pruning (``structure="channel"``)."""
        return self.structure == "channel"

    @property
    def m_by_n(self) -> tuple[int, int] | None:
        if self.structure is None or self.channel:
            return None
        try:
            m, n = (int(v) for v in str(self.structure).split(":"))
        except ValueError:
            m = n = 0
        if not 0 < m < n:
            raise ValueError(f"structure={self.structure!r} is not of the form 'M:N' with "
                             "0 < M < N, e.g. '2:4', or 'channel'.")
        return m, n

    @property
    def target_sparsity(self) -> float:
        """The sparsity the pruned layers should end with."""
        if self.m_by_n:
            m, n = self.m_by_n
            return 1.0 - m / n
        return self.final_sparsity

    def make_schedule(self) -> _ResolvableSchedule:
        """A schedule with provisional steps; :meth:`resolve` fixes them at fit."""
        if self.schedule == "constant":
            return ConstantSparsity(self.target_sparsity)
        return PolynomialDecay(self.initial_sparsity, self.final_sparsity, power=self.power)

    def resolve(self, steps_per_epoch: int | None, epochs: int) -> tuple[int, int, int]:
        """(begin_step, end_step, frequency) for a fit of this length.

        Raises:
            ValueError: if epochs are needed but the fit's steps are unknown,
                or if the pruning span does not fit in the training run.
        """
        uses_epochs = self.begin_epoch is not None or self.end_epoch is not None
        if steps_per_epoch is None and (uses_epochs or self.end_step is None):
            raise ValueError(
                "tfedge cannot tell how many steps this fit has (the data has no known "
                "length). Pass steps_per_epoch= to fit, or give the pruning end in steps: "
                "PruneConfig(end_step=...).")
        begin = (self.begin_step if self.begin_step is not None
                 else int(round((self.begin_epoch or 0) * steps_per_epoch)))
        if self.end_step is not None:
            end = self.end_step
        elif self.end_epoch is not None:
            end = int(round(self.end_epoch * steps_per_epoch))
        else:
            end = steps_per_epoch * epochs
        total = steps_per_epoch * epochs if steps_per_epoch else None
        if end <= begin:
            raise ValueError(f"Pruning must end after it begins: end step {end} <= begin "
                             f"step {begin} for this fit ({steps_per_epoch} steps x {epochs} "
                             "epochs).")
        span = end - begin
        frequency = int(self.frequency) if self.frequency else max(1, min(100, span // 10))
        if frequency > span:
            raise ValueError(f"frequency={frequency} steps is longer than the pruning span "
                             f"({span} steps from {begin} to {end}): masks would never reach "
                             "the final sparsity. Lower the frequency or prune for longer.")
        end = begin + (span // frequency) * frequency  # last step that updates masks
        if total is not None and span > total - begin:
            asked = (f"end_epoch={self.end_epoch:g}" if self.end_epoch is not None
                     else f"end_step={self.end_step}")
            logging.warning(
                "tfedge: PruneConfig(%s) ends after this fit, which has %d epoch(s) of %d "
                "steps (%d steps): the gradual schedule is cut to the steps that run, so "
                "sparsity jumps to its final value in a few large steps. Fit for at least %s "
                "epochs, or give end_epoch <= %d.", asked, epochs, steps_per_epoch, total,
                f"{self.end_epoch:g}" if self.end_epoch is not None
                else math.ceil(self.end_step / steps_per_epoch), epochs)
        if total is not None and end >= total:
            # The last update must happen on a step that runs: steps are 1-based.
            end = begin + ((total - 1 - begin) // frequency) * frequency
            if end <= begin:
                raise ValueError(f"This fit has {total} steps, too few to prune from step "
                                 f"{begin} every {frequency} steps. Train longer or lower "
                                 "the frequency.")
        return begin, end, frequency

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if callable(self.layers):  # a predicate is named, and cannot be restored
            config["layers"] = getattr(self.layers, "__name__", repr(self.layers))
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PruneConfig":
        if isinstance(config.get("layers"), str):
            raise ValueError("A layer predicate cannot be restored from a config; pass "
                             "layers= again.")
        return cls(**config)


# ----------------------------------------------------------------------------
# Applying pruning
# ----------------------------------------------------------------------------
def is_prunable(layer: Any) -> bool:
    """True for layers tfmot can prune that have weights to prune."""
    if isinstance(layer, keras.Model):
        return False
    return bool(prune_registry.PruneRegistry.supports(layer) and layer.trainable_weights
                and prune_registry.PruneRegistry._weight_names(layer))


def iter_layers(model: Any) -> Iterable[Any]:
    """Every layer, entering nested models (which are yielded too)."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer)


def select_layers(model: Any, selector: LayerSelector) -> set[str]:
    """Names of the layers to prune.

    Raises:
        ValueError: on unknown or unprunable names, or when nothing is prunable.
    """
    candidates = {layer.name: layer for layer in iter_layers(model) if is_prunable(layer)}
    if selector is None:
        chosen = set(candidates)
    elif callable(selector):
        chosen = {name for name, layer in candidates.items() if selector(layer)}
    else:
        all_names = {layer.name for layer in iter_layers(model)}
        unknown = [n for n in selector if n not in all_names]
        if unknown:
            raise ValueError(f"No layer named {', '.join(map(repr, unknown))} in the model. "
                             f"Prunable layers: {', '.join(sorted(candidates)) or 'none'}.")
        unprunable = [n for n in selector if n not in candidates]
        if unprunable:
            raise ValueError(f"Layer(s) {', '.join(map(repr, unprunable))} cannot be pruned "
                             "(no weights tfmot can prune). Prunable layers: "
                             f"{', '.join(sorted(candidates)) or 'none'}.")
        chosen = set(selector)
    if not chosen:
        raise ValueError("Nothing to prune: the model has no layer with prunable weights "
                         "(Dense, Conv, DepthwiseConv, ...)" +
                         (" among the selected layers." if selector is not None else "."))
    return chosen


def apply_pruning(model: Any, config: PruneConfig, schedule: _ResolvableSchedule,
                  clone: Callable[[Any, Callable[[Any], Any]], Any]) -> Any:
    """Wraps the selected layers of ``model`` (a private copy) for pruning.

    Args:
        model: a copy of the user's model that tfedge owns.
        config: the pruning configuration.
        schedule: the schedule shared by every wrapped layer.
        clone: ``clone(model, layer_fn)`` rebuilds a model with ``layer_fn``
            applied to each layer (entering nested models).

    Returns:
        A model whose selected layers are tfmot ``PruneLowMagnitude`` wrappers.
    """
    chosen = select_layers(model, config.layers)
    kwargs = {"pruning_schedule": schedule}
    if config.m_by_n:
        kwargs["sparsity_m_by_n"] = config.m_by_n

    def wrap_layer(layer):
        if layer.name in chosen:
            return _tfmot_sparsity.prune_low_magnitude(layer, **kwargs)
        return layer

    logging.info("tfedge: pruning %d layer(s) to %.0f%% sparsity: %s", len(chosen),
                 100 * config.target_sparsity, ", ".join(sorted(chosen)))
    return clone(model, wrap_layer)


class ResolvePruningSchedule(keras.callbacks.Callback):
    """Sets the schedule's step bounds from the ``fit`` call's own step count.

    ``wrap``'s ``fit`` adds this callback itself; it resolves once, at the
    first ``fit``, and keeps those steps for later calls.

    Args:
        config: the pruning configuration.
        schedule: the schedule object the wrappers share.
    """

    def __init__(self, config: PruneConfig, schedule: _ResolvableSchedule):
        super().__init__()
        self.config = config
        self.schedule = schedule
        self.resolved: tuple[int, int, int] | None = None

    def on_train_begin(self, logs=None):
        if self.resolved is not None:
            return
        steps, epochs = self.params.get("steps"), self.params.get("epochs", 1)
        self.resolved = self.config.resolve(steps, epochs)
        self.schedule.set_steps(*self.resolved)
        logging.info("tfedge: pruning steps %d..%d every %d steps (%s steps/epoch)",
                     *self.resolved, steps)

    def get_config(self) -> dict[str, Any]:
        return {"config": self.config.get_config()}


def pruning_callbacks(config: PruneConfig, schedule: _ResolvableSchedule,
                      log_dir: str | None = None) -> list[keras.callbacks.Callback]:
    """The callbacks a pruned model needs during ``fit``, in order."""
    callbacks = [ResolvePruningSchedule(config, schedule), _tfmot_sparsity.UpdatePruningStep()]
    if log_dir:
        callbacks.append(_tfmot_sparsity.PruningSummaries(log_dir=log_dir))
    return callbacks


def strip_pruning(model: Any) -> Any:
    """Removes tfmot's wrappers, keeping the pruned (masked) weights."""
    return _tfmot_sparsity.strip_pruning(model)


# ----------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------
class SparsityReport:
    """Achieved sparsity per weight tensor.

    Attributes:
        rows: one dict per weight tensor: ``layer``, ``weight``, ``shape``,
            ``size``, ``zeros``, ``sparsity``.
    """

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __getitem__(self, layer_name: str) -> float:
        for row in self.rows:
            if row["layer"] == layer_name:
                return row["sparsity"]
        raise KeyError(layer_name)

    @property
    def overall(self) -> float:
        size = sum(r["size"] for r in self.rows)
        return sum(r["zeros"] for r in self.rows) / size if size else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall, "layers": self.rows}

    def __str__(self) -> str:
        rows = [[r["layer"], r["weight"], "x".join(map(str, r["shape"])), r["size"],
                 f"{100 * r['sparsity']:.1f}%"] for r in self.rows]
        rows.append(["overall", "", "", sum(r["size"] for r in self.rows),
                     f"{100 * self.overall:.1f}%"])
        return format_table(["layer", "weight", "shape", "params", "sparsity"], rows)


def sparsity_report(model: Any) -> SparsityReport:
    """Fraction of exact zeros in every kernel of a Keras model.

    Args:
        model: a Keras model (plain, or still wrapped for pruning).

    Returns:
        A SparsityReport with one row per kernel (biases are not pruned and
        not listed).
    """
    rows = []
    for layer in iter_layers(model):
        if isinstance(layer, keras.Model):
            continue
        target = getattr(layer, "layer", layer)  # a pruning wrapper's inner layer
        # A wrapper's weights include its inner layer's (a QAT wrapper even holds
        # the kernel the inner layer no longer tracks).
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            if not (short.endswith("kernel") or short == "embeddings"):
                continue
            value = np.asarray(weight.numpy())
            if isinstance(layer, PruneLowMagnitude):
                # Until the next mask update the kernel may hold masked values.
                for w, mask, _ in layer.pruning_vars:
                    if w is weight:
                        value = value * mask.numpy()
            zeros = int(np.count_nonzero(value == 0))
            rows.append({"layer": target.name, "weight": short, "shape": list(value.shape),
                         "size": int(value.size), "zeros": zeros,
                         "sparsity": zeros / max(int(value.size), 1)})
    return SparsityReport(rows)
