"""Channel pruning: whole filters masked while training, then a narrower model.

``PruneConfig(final_sparsity, structure="channel")`` removes that fraction
of the prunable output channels of every dependency group
(:mod:`tfedge.channels`), gradually, inside ``fit``:

* a polynomial-decay schedule (the same formula and the same epoch / step
  bounds as tfedge's unstructured pruning) sets the fraction at each mask
  update;
* at each update, the channels of each group with the lowest importance are
  masked: their filter (kernel output slice and bias), their BatchNorm scale
  and shift, their depthwise filter and every consumer's input rows are
  multiplied by zero after each training step (:class:`ChannelPruningCallback`);
  a masked channel stays masked;
* :meth:`ChannelPruning.rebuild` (called by ``EdgeModel.finish``) builds a
  narrower functional model with Keras' own ``clone_model`` and copies the
  surviving weights. Because consumers' rows of a masked channel are zero,
  the rebuilt model computes the same function as the masked one.

Importance (``PruneConfig(importance=...)``): ``"bn_gamma"`` (default) is
the scale of the BatchNorm that follows the filter (network slimming), and
where no BatchNorm follows, the L2 norm of the filter; ``"l2"`` is the L2
norm of the filter after folding the BatchNorm that follows it
(``|gamma| / sqrt(var + eps)`` times the filter norm: the filter the int8
model runs); ``"l1"`` the same with the L1 norm. Scores are summed over the
members of a residual group. Measured (``benchmarks/structured.py
--importance-study``, MobileNetV1-style on 32x32 digits, 4 epochs of gradual
pruning and fine-tuning): at 30% all three reach 99.78% int8; at 50%
bn_gamma 99.11%, l1 98.89%, l2 98.44%; on an under-trained model of the
same family bn_gamma led at both fractions by 4-12 pp. Hence the default.
A first-order Taylor score needs a gradient pass over data at each mask
update (the callback would need the training batches) and was not added.

tfmot has no channel pruning (it never removes a channel); Sony MCT's
``keras_pruning_experimental`` stops at residual ``Add`` and ``Concatenate``
nodes and targets weights memory only, and needs TF <= 2.15. This module is
tfedge's own, built on Keras' ``clone_model`` for the rebuild.

Example:

>>> edge = tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, structure="channel",  # doctest: +SKIP
...                                                    end_epoch=4))
>>> edge.compile("adam", loss, ["accuracy"]); edge.fit(x, y, epochs=6)  # doctest: +SKIP
>>> narrow = edge.finish()  # fewer channels, same outputs as the masked model  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from tfedge import channels as channels_lib
from tfedge._keras import keras
from tfedge.errors import UnsupportedModelError
from tfedge.report import format_table

IMPORTANCE = ("bn_gamma", "l2", "l1")


# ----------------------------------------------------------------------------
# Importance and selection
# ----------------------------------------------------------------------------
def channel_scores(graph: channels_lib.ChannelGraph, method: str = "bn_gamma") -> dict[int, float]:
    """Importance of each channel component (union-find root -> score).

    Args:
        graph: the model's channel analysis.
        method: ``"bn_gamma"``, ``"l2"`` or ``"l1"`` (see the module docstring).

    Returns:
        The score of every component a producer writes.
    """
    if method not in IMPORTANCE:
        raise ValueError(f"importance={method!r} is not one of {', '.join(IMPORTANCE)}.")
    model = graph.model
    scores: dict[int, float] = {}
    for name, ids in graph.producer_ids.items():
        kernel = model.get_layer(name).kernel.numpy()
        flat = kernel.reshape(-1, kernel.shape[-1])
        norm = np.abs(flat).sum(0) if method == "l1" else np.sqrt((flat ** 2).sum(0))
        bn_name = graph.bn_after.get(name)
        if bn_name is not None:
            bn = model.get_layer(bn_name)
            gamma = np.abs(bn.gamma.numpy()) if bn.gamma is not None else np.ones_like(norm)
            if method == "bn_gamma":
                norm = gamma
            else:
                norm = norm * gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        for root, value in zip(graph.roots(ids).tolist(), norm.tolist()):
            scores[root] = scores.get(root, 0.0) + float(value)
    return scores


def select_removed(graph: channels_lib.ChannelGraph, scores: dict[int, float],
                   fractions: dict[int, float], removed: set[int],
                   multiple: int | dict[int, int] = 1) -> set[int]:
    """Components to remove: in each group, its fraction of the prunable ones.

    Args:
        graph: the channel analysis.
        scores: component importance.
        fractions: group index -> fraction of its prunable channels to remove.
        removed: components already removed (they stay removed).
        multiple: round each group's kept channels up to a multiple of this
            (int8 kernels work on channel tiles: 8 or 16 on aarch64 NEON), or
            ``{group index: multiple}`` (:func:`tfedge.channels.group_multiples`; 1 if absent).

    Returns:
        The new set of removed components (a superset of ``removed``).
    """
    out = set(removed)
    for index, group in enumerate(graph.groups):
        free = [r for r, pinned in zip(group.components, group.pinned) if not pinned]
        if not free:
            continue
        count = int(math.floor(fractions.get(index, 0.0) * len(free) + 1e-9))
        if len(free) == group.size:
            count = min(count, group.size - 1)  # a group keeps at least one channel
        tile = multiple.get(index, 1) if isinstance(multiple, dict) else multiple
        if tile > 1 and count:
            kept = min(-(-(group.size - count) // tile) * tile, group.size)
            count = max(min(group.size - kept, len(free)), 0)
        count = max(count, sum(r in removed for r in free))  # masked channels stay masked
        order = sorted(free, key=lambda r: (r not in removed, scores.get(r, 0.0)))
        out.update(order[:count])
    return out


# ----------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------
def _masked_weights(graph: channels_lib.ChannelGraph) -> list[tuple[Any, list[tuple[int, Any]]]]:
    """(variable, [(axis, channel ids), ...]) for every weight a channel touches."""
    model = graph.model
    out = []
    for name, in_ids in graph.input_ids.items():
        layer = model.get_layer(name)
        if name in graph.producer_ids:
            out_ids = graph.producer_ids[name]
            out.append((layer.kernel, [(-2, in_ids), (-1, out_ids)]))
            if layer.use_bias:
                out.append((layer.bias, [(0, out_ids)]))
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            out.append((layer.depthwise_kernel, [(2, in_ids)]))
            if layer.use_bias:
                out.append((layer.bias, [(0, in_ids)]))
        else:  # BatchNormalization
            out += [(w, [(0, in_ids)]) for w in (layer.gamma, layer.beta) if w is not None]
    return out


class ChannelMasks:
    """Mask variables for every weight a channel touches, and the op applying them.

    Args:
        graph: the channel analysis of the model being trained.
    """

    def __init__(self, graph: channels_lib.ChannelGraph):
        self.graph = graph
        self._entries = []
        for variable, axes in _masked_weights(graph):
            shape = [1] * len(variable.shape)
            for axis, _ in axes:
                shape[axis] = int(variable.shape[axis])
            mask = tf.Variable(tf.ones(shape, variable.dtype), trainable=False,
                               name=variable.name.split(":")[0].replace("/", "_") + "_cmask")
            self._entries.append((variable, mask, axes))
        self._apply = tf.function(self._apply_all)

    def _apply_all(self):
        for variable, mask, _ in self._entries:
            variable.assign(variable * mask)

    def set_removed(self, removed: set[int]) -> None:
        """Sets the masks so that the ``removed`` components are zero."""
        for variable, mask, axes in self._entries:
            value = np.ones(mask.shape, mask.dtype.as_numpy_dtype)
            for axis, ids in axes:
                keep = np.array([self.graph.find(i) not in removed for i in ids.tolist()],
                                value.dtype)
                shape = [1] * value.ndim
                shape[axis] = len(keep)
                value = value * keep.reshape(shape)
            mask.assign(value)

    def apply(self) -> None:
        """Multiplies every masked weight by its mask (one graph call)."""
        self._apply()


# ----------------------------------------------------------------------------
# Rebuild
# ----------------------------------------------------------------------------
def _kept(graph: channels_lib.ChannelGraph, ids: np.ndarray, removed: set[int]) -> np.ndarray:
    return np.array([graph.find(i) not in removed for i in ids.tolist()], bool)


def rebuild(graph: channels_lib.ChannelGraph, removed: set[int]) -> Any:
    """A narrower copy of ``graph.model`` without the ``removed`` channels.

    The model is rebuilt with ``keras.models.clone_model`` (every layer from
    its config, producers with fewer filters / units) and the surviving
    weights are copied. The source model is not changed.

    Args:
        graph: the channel analysis of the (masked) model.
        removed: the components to drop.

    Returns:
        A new functional model, independent of the source.
    """
    model = graph.model

    def clone(layer):
        config = layer.get_config()
        if layer.name in graph.producer_ids:
            key = "units" if isinstance(layer, keras.layers.Dense) else "filters"
            config[key] = int(_kept(graph, graph.producer_ids[layer.name], removed).sum())
        return layer.__class__.from_config(config)

    narrow = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if not layer.weights:
            continue
        values = [w.numpy() for w in layer.weights]
        if layer.name in graph.input_ids:
            keep_in = _kept(graph, graph.input_ids[layer.name], removed)
            if layer.name in graph.producer_ids:
                keep_out = _kept(graph, graph.producer_ids[layer.name], removed)
                sliced = []
                for w, v in zip(layer.weights, values):
                    if w is layer.kernel:
                        v = v[..., keep_in, :][..., keep_out]
                    elif layer.use_bias and w is layer.bias:
                        v = v[keep_out]
                    sliced.append(v)
                values = sliced
            elif isinstance(layer, keras.layers.DepthwiseConv2D):
                values = [v[:, :, keep_in] if w is layer.depthwise_kernel else v[keep_in]
                          for w, v in zip(layer.weights, values)]
            else:  # BatchNormalization: every weight is per channel
                values = [v[keep_in] for v in values]
        narrow.get_layer(layer.name).set_weights(values)
    return narrow


def macs_after(graph: channels_lib.ChannelGraph, removed: set[int]) -> int:
    """MACs of the model rebuilt without ``removed``, from the channel counts alone.

    Same count as :func:`tfedge.channels.keras_macs` of :func:`rebuild`'s model,
    without building it.
    """
    model = graph.model
    total = channels_lib.keras_macs(model)
    for name, in_ids in graph.input_ids.items():
        layer = model.get_layer(name)
        if isinstance(layer, keras.layers.BatchNormalization):
            continue
        out = layer.output_shape
        spatial = int(np.prod([d for d in out[1:-1] if d])) if len(out) > 2 else 1
        kept_in = int(_kept(graph, in_ids, removed).sum())
        if name in graph.producer_ids:
            kernel = tuple(int(d) for d in layer.kernel.shape)
            kept_out = int(_kept(graph, graph.producer_ids[name], removed).sum())
            taps = int(np.prod(kernel[:-2]))
            total += spatial * taps * (kept_in * kept_out - kernel[-2] * kernel[-1])
        else:  # depthwise, multiplier 1
            kernel = tuple(int(d) for d in layer.depthwise_kernel.shape)
            total += spatial * kernel[0] * kernel[1] * (kept_in - kernel[2])
    return int(total)


def fraction_for_macs(model: Any, ratio: float, *, multiple: Any = 1,
                      grid: int = 400, fixed: dict[str, float] | None = None
                      ) -> tuple[float, float]:
    """The uniform channel fraction whose rebuilt model has at most ``ratio`` x the MACs.

    Channel counts alone set the MACs, so this needs no training; with
    ``multiple`` the MACs are not monotone in the fraction, so a fine grid of
    fractions is scanned and the one closest to the target from below kept.

    ``fixed`` holds some groups at a fraction of their own and solves the
    uniform fraction of the others (:func:`fractions_for_macs` returns the
    whole plan for ``PruneConfig(fractions=...)``). On LiteRT's aarch64 int8
    kernels the high-resolution layers of a MobileNet cost far more
    instructions per MAC than the late ones (per-pixel work and channel tiles
    of 8 / 16 that a few channels do not fill), and uniform fractions take
    most MACs from the late layers, so the instructions fall slower than the
    MACs; pruning the early expansions harder buys more device speed at the
    same MACs (``benchmarks/structured.py``, ``structured_recovered_early.json``;
    per-stage counts: ``benchmarks/structured_plans.py --stages``, where MobileNetV2
    0.35/96's 48x48 stem and first block take 28.8% of the rpi4 instructions for
    15.2% of the MACs, ``structured_plans.json``).

    Args:
        model: a tf_keras functional model.
        ratio: target MACs over the model's, in (0, 1).
        multiple: kept channels rounded up to a multiple, one or per group
            (see :func:`tfedge.channels.group_multiples`).
        grid: fractions scanned in (0, 1).
        fixed: optional ``{first producer of a group: fraction}`` of groups
            that keep their own fraction, in [0, 1).

    Returns:
        ``(fraction, reached_ratio)``: the fraction of the groups not in ``fixed``.

    Raises:
        ValueError: a ratio outside (0, 1), one below what channel pruning
            can reach (the best is named), or ``fixed`` naming no prunable
            group's first producer or a fraction outside [0, 1).

    Example:

    >>> f, reached = fraction_for_macs(model, 0.5, multiple=16,  # doctest: +SKIP
    ...                                fixed={"block_1_expand": 0.67})
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio={ratio} is outside (0, 1): it is the MACs kept, e.g. 0.5.")
    graph = channels_lib.analyze(model)
    held = _fixed_groups(graph, fixed)
    scores = channel_scores(graph)
    base = channels_lib.keras_macs(model)
    tiles = channels_lib.group_multiples(graph, multiple)

    def removed_at(fraction):
        fractions = {i: held.get(i, fraction) for i in range(len(graph.groups))}
        return select_removed(graph, scores, fractions, set(), tiles)

    best = None
    for step in range(0 if held else 1, grid):
        fraction = step / grid
        reached = macs_after(graph, removed_at(fraction)) / base
        if reached <= ratio and (best is None or reached > best[1] + 1e-12):
            best = (fraction, reached)
    if best is None:
        raise ValueError(f"A MAC ratio of {ratio:.3f} cannot be reached by channel pruning: "
                         f"the best is {macs_after(graph, removed_at(0.999)) / base:.3f} (the "
                         f"layers left whole: {', '.join(graph.unprunable) or 'none'}"
                         + (f"; held by fixed=: {', '.join(fixed)}" if fixed else "") + ").")
    return best


def fractions_for_macs(model: Any, ratio: float, *, fixed: dict[str, float],
                       multiple: Any = 1, grid: int = 400) -> tuple[dict[str, float], float]:
    """A per-group plan for ``ratio`` x the MACs: ``fixed`` groups at their own fraction.

    :func:`fraction_for_macs` with ``fixed``, spelled out for every prunable
    group, ready for ``PruneConfig(..., structure="channel", fractions=plan,
    channel_multiple=multiple)``.

    Args:
        model: a tf_keras functional model.
        ratio: target MACs over the model's, in (0, 1).
        fixed: ``{first producer of a group: fraction}`` held as given.
        multiple: kept channels rounded up to a multiple, one or per group
            (see :func:`tfedge.channels.group_multiples`).
        grid: fractions scanned in (0, 1).

    Returns:
        ``({first producer: fraction} of every prunable group, reached_ratio)``.

    Raises:
        ValueError: as :func:`fraction_for_macs`.

    Example:

    >>> plan, reached = fractions_for_macs(model, 0.5, multiple=16,  # doctest: +SKIP
    ...                                    fixed={"block_1_expand": 0.67})
    >>> tfedge.PruneConfig(0.5, structure="channel", fractions=plan,  # doctest: +SKIP
    ...                    channel_multiple=16, end_epoch=4)
    """
    fraction, reached = fraction_for_macs(model, ratio, multiple=multiple, grid=grid,
                                          fixed=fixed)
    graph = channels_lib.analyze(model)
    return ({g.producers[0]: float(fixed.get(g.producers[0], fraction))
             for g in graph.groups if g.prunable}, reached)


def _fixed_groups(graph: channels_lib.ChannelGraph, fixed: dict[str, float] | None
                  ) -> dict[int, float]:
    """``fixed`` by group index; a clear error for a name that starts no prunable group."""
    if not fixed:
        return {}
    first = {g.producers[0]: i for i, g in enumerate(graph.groups) if g.prunable}
    unknown = sorted(set(fixed) - set(first))
    if unknown:
        raise ValueError(f"fixed= names {', '.join(map(repr, unknown))}, not the first producer "
                         f"of a prunable group; those are: {', '.join(first)}.")
    bad = {k: v for k, v in fixed.items() if not 0.0 <= float(v) < 1.0}
    if bad:
        raise ValueError(f"fixed= fractions must be in [0, 1) (the share of a group's channels "
                         f"removed): {bad}.")
    return {first[k]: float(v) for k, v in fixed.items()}


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------
class ChannelReport:
    """Channels kept per group, and the layers left whole.

    Attributes:
        rows: per group: ``producers``, ``channels``, ``kept``, ``removed_fraction``.
        unprunable: layer name -> why it was left whole.
    """

    def __init__(self, rows: list[dict[str, Any]], unprunable: dict[str, str]):
        self.rows = rows
        self.unprunable = unprunable

    def to_dict(self) -> dict[str, Any]:
        return {"groups": self.rows, "unprunable": self.unprunable}

    def __str__(self) -> str:
        table = format_table(
            ["group", "channels", "kept", "removed"],
            [[", ".join(r["producers"]), r["channels"], r["kept"],
              f"{100 * r['removed_fraction']:.0f}%"] for r in self.rows if r["prunable"]],
            title="channel pruning per dependency group")
        whole = "\n".join(f"  {name}: {why}" for name, why in self.unprunable.items())
        return table + ("\nleft whole:\n" + whole if whole else "")


# ----------------------------------------------------------------------------
# The pruning phase
# ----------------------------------------------------------------------------
def polynomial_fraction(step: int, begin: int, end: int, initial: float, final: float,
                        power: float) -> float:
    """tfmot's PolynomialDecay formula at ``step`` (clipped to [begin, end])."""
    p = min(max((step - begin) / max(end - begin, 1), 0.0), 1.0)
    return final + (initial - final) * (1.0 - p) ** power


class ChannelPruning:
    """The channel-pruning phase of one ``EdgeModel``: masks, schedule, rebuild.

    Args:
        config: a ``PruneConfig`` with ``structure="channel"``; its
            ``fractions`` (first producer -> fraction, e.g. from
            :func:`tfedge.channel_budget.plan_channels`) override the uniform
            ``final_sparsity`` per group.

    Raises:
        UnsupportedModelError: (at :meth:`apply`) no layer of the model can be
            pruned; the message names every layer and why.
    """

    def __init__(self, config: Any):
        self.config = config
        self.graph: channels_lib.ChannelGraph | None = None
        self.multiples: dict[int, int] = {}
        self.masks: ChannelMasks | None = None
        self.removed: set[int] = set()
        self.step = 0
        self.resolved: tuple[int, int, int] | None = None
        self.callback = ChannelPruningCallback(self)
        # producers whose channels stay whole, e.g. a low-rank factorization's
        # bottlenecks (their rank was already chosen; tfedge.wrap sets it)
        self.keep_whole: set[str] = set()

    def apply(self, network: Any) -> Any:
        """Analyses ``network`` and attaches masks to its weights (in place).

        Returns:
            ``network`` itself: channel pruning needs no wrapper layers.
        """
        graph = channels_lib.analyze(network)
        prunable = [g for g in graph.groups if g.prunable]
        if not prunable:
            why = "; ".join(f"{n}: {r}" for n, r in graph.unprunable.items()) or "no Conv/Dense"
            raise UnsupportedModelError(
                f"Channel pruning found no layer of {network.name!r} whose output channels "
                f"can be removed ({why}). Channels that reach a model output never change; "
                "give the model Conv/Dense layers before its output, or use unstructured "
                "pruning: PruneConfig(final_sparsity) without structure=.")
        named = self.config.fractions or {}
        producers = {p for g in prunable for p in g.producers}
        unknown = sorted(set(named) - producers)
        if unknown:
            raise ValueError(f"fractions= names {', '.join(map(repr, unknown))}, not the "
                             "producer of a prunable group; prunable: "
                             f"{', '.join(sorted(producers))}.")
        self.multiples = channels_lib.group_multiples(graph, self.config.channel_multiple or 1)
        self.graph = graph
        self.masks = ChannelMasks(graph)
        logging.info("tfedge: channel pruning %d group(s) (%s); left whole: %s", len(prunable),
                     ", ".join("+".join(g.producers) for g in prunable),
                     ", ".join(graph.unprunable) or "none")
        return network

    def group_fractions(self, scale: float) -> dict[int, float]:
        named = self.config.fractions
        groups = self.graph.groups
        if not named:
            fractions = {i: scale for i in range(len(groups))}
        else:
            progress = scale / float(self.config.final_sparsity)
            fractions = {i: progress * next((named[p] for p in g.producers if p in named), 0.0)
                         for i, g in enumerate(groups)}
        return {i: 0.0 if self.keep_whole & set(groups[i].producers) else f
                for i, f in fractions.items()}

    def update(self, fraction: float) -> None:
        """Masks ``fraction`` of each group's prunable channels (by importance)."""
        scores = channel_scores(self.graph, self.config.importance or "bn_gamma")
        self.removed = select_removed(self.graph, scores, self.group_fractions(fraction),
                                      self.removed, self.multiples)
        self.masks.set_removed(self.removed)
        self.masks.apply()

    def fraction_at(self, step: int) -> float:
        begin, end, _ = self.resolved
        if self.config.schedule == "constant":
            return float(self.config.final_sparsity)
        return polynomial_fraction(step, begin, end, self.config.initial_sparsity,
                                   self.config.final_sparsity, self.config.power)

    def report(self) -> ChannelReport:
        rows = []
        for group in self.graph.groups:
            kept = sum(r not in self.removed for r in group.components)
            free = sum(not p for p in group.pinned)
            rows.append({"producers": list(group.producers), "channels": group.size,
                         "kept": kept, "prunable": group.prunable,
                         "removed_fraction": (group.size - kept) / free if free else 0.0})
        return ChannelReport(rows, dict(self.graph.unprunable))

    def rebuild(self) -> Any:
        """The narrower model with the surviving weights (see :func:`rebuild`)."""
        begin, end, _ = self.resolved or (0, 0, 1)
        if self.resolved is None or self.step < end:
            logging.warning("tfedge: channel pruning stopped before its end step (%d of %d): "
                            "the model is rebuilt with the channels masked so far.",
                            self.step, end)
        self.masks.apply()
        return rebuild(self.graph, self.removed)


class ChannelPruningCallback(keras.callbacks.Callback):
    """Updates the channel masks on schedule and applies them after every step.

    ``EdgeModel.fit`` adds it in the channel-pruning phase. The schedule's
    steps are resolved at the first ``fit`` from its own step count (like
    :class:`tfedge.prune.ResolvePruningSchedule`).

    Args:
        pruning: the :class:`ChannelPruning` state it drives.
    """

    def __init__(self, pruning: ChannelPruning):
        super().__init__()
        self.pruning = pruning

    def on_train_begin(self, logs=None):
        p = self.pruning
        if p.resolved is None:
            p.resolved = p.config.resolve(self.params.get("steps"), self.params.get("epochs", 1))
            logging.info("tfedge: channel pruning steps %d..%d every %d steps", *p.resolved)
        p.masks.apply()

    def on_train_batch_end(self, batch, logs=None):
        p = self.pruning
        p.step += 1
        begin, end, frequency = p.resolved
        if begin <= p.step <= end and (p.step - begin) % frequency == 0:
            p.update(p.fraction_at(p.step))
        else:
            p.masks.apply()

    def get_config(self) -> dict[str, Any]:
        return {"config": self.pruning.config.get_config()}
