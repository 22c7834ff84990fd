"""Channel dependency groups of a Keras functional model, for channel pruning.

Removing an output channel of a Conv or Dense layer ("producer") is only
safe when every layer that sees that channel changes with it. This module
follows each channel from its producer through the graph and says which
channels must go together and which must stay:

* per-channel layers pass channels through unchanged: BatchNormalization,
  activations, pooling, padding, Dropout, ``DepthwiseConv2D``
  (depth multiplier 1), global pooling;
* element-wise ``Add`` / ``Multiply`` / ... tie channel *k* of every input
  together (a residual group keeps the same channels in all its members);
* ``Concatenate`` (last axis) maps each output range to its producer;
* ``Flatten`` repeats a channel at every spatial position, so the ``Dense``
  after it loses the matching rows;
* a Conv / Dense consumes channels: its kernel loses the matching input rows.

Channels are nodes of a union-find; a *component* is the set of channels
that go or stay together, a *group* the producers that share components.
A component is pinned (never removed) when it reaches a model output (the
class count never changes), a layer this analysis does not know (Reshape,
a nested model, a shared layer, LayerNormalization, ...), a model input, or
a producer whose activation mixes channels (softmax). Every layer that
stays whole is named with the reason.

Nothing here changes a model: :mod:`tfedge.channel_prune` masks and rebuilds.
This is tfedge's own code: tfmot never removes a channel, and Sony MCT's
sections stop at any multi-input node (see the module docstring of
:mod:`tfedge.channel_prune`).

Example:

>>> graph = analyze(model)  # doctest: +SKIP
>>> [g.producers for g in graph.groups if g.prunable]  # doctest: +SKIP
[['conv1'], ['block1_a', 'block1_b']]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tfedge._keras import keras
from tfedge.errors import UnsupportedModelError

_L = keras.layers
# Weightless layers that act on each channel separately.
_PASS_THROUGH = (_L.ReLU, _L.LeakyReLU, _L.ELU, _L.PReLU, _L.ThresholdedReLU, _L.Dropout,
                 _L.SpatialDropout1D, _L.SpatialDropout2D, _L.GaussianNoise, _L.GaussianDropout,
                 _L.ZeroPadding1D, _L.ZeroPadding2D, _L.Cropping1D, _L.Cropping2D,
                 _L.MaxPooling1D, _L.MaxPooling2D, _L.AveragePooling1D, _L.AveragePooling2D,
                 _L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.GlobalMaxPooling1D,
                 _L.GlobalMaxPooling2D, _L.UpSampling1D, _L.UpSampling2D,
                 _L.ActivityRegularization)
_ELEMENTWISE = (_L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum)
_MIXING_ACTIVATIONS = ("softmax", "log_softmax")


def is_producer(layer: Any) -> bool:
    """A layer whose output channels can be removed: Dense or a plain Conv1D/2D/3D."""
    if isinstance(layer, _L.Dense):
        return True
    if isinstance(layer, (_L.Conv2DTranspose, _L.Conv1DTranspose, _L.Conv3DTranspose,
                          _L.DepthwiseConv2D, _L.SeparableConv1D, _L.SeparableConv2D)):
        return False
    return (isinstance(layer, (_L.Conv1D, _L.Conv2D, _L.Conv3D))
            and getattr(layer, "groups", 1) == 1 and layer.data_format == "channels_last")


def _is_channel_bn(layer: Any) -> bool:
    if not isinstance(layer, _L.BatchNormalization):
        return False
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = len(layer.input_shape)
    return len(axis) == 1 and axis[0] in (-1, rank - 1)


def _is_per_channel_depthwise(layer: Any) -> bool:
    return (isinstance(layer, _L.DepthwiseConv2D) and layer.depth_multiplier == 1
            and layer.data_format == "channels_last")


def _activation_name(layer: Any) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", str(activation)) if activation is not None else ""


@dataclasses.dataclass
class ChannelGroup:
    """Producers whose output channels are removed together.

    Attributes:
        producers: names of the Conv / Dense layers in the group.
        components: one union-find root per channel position of the group
            (the first producer's channel order).
        pinned: True for a component that must stay, per position.
        reason: why the group cannot be pruned at all ('' if it can).
    """

    producers: list[str]
    components: list[int]
    pinned: list[bool]
    reason: str = ""

    @property
    def prunable(self) -> bool:
        return not all(self.pinned)

    @property
    def size(self) -> int:
        return len(self.components)


class ChannelGraph:
    """The channel dependency analysis of one model (see :func:`analyze`).

    Attributes:
        model: the analysed model.
        groups: the :class:`ChannelGroup` s, in model order.
        producer_ids: producer name -> node per output channel.
        input_ids: layer name -> node per input channel of its kernel (Conv,
            Dense, DepthwiseConv, BatchNormalization).
        bn_after: producer name -> the BatchNormalization that normalizes its
            output directly (for importance scores).
        unprunable: layer name -> why it is left whole.
    """

    def __init__(self, model: Any):
        self.model = model
        self._parent: list[int] = []
        self._reasons: list[tuple[np.ndarray, str]] = []
        self.producer_ids: dict[str, np.ndarray] = {}
        self.input_ids: dict[str, np.ndarray] = {}
        self.bn_after: dict[str, str] = {}
        self.unprunable: dict[str, str] = {}
        self.groups: list[ChannelGroup] = []

    # -- union-find -----------------------------------------------------------
    def _new(self, n: int) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, node: int) -> int:
        parent = self._parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:
            parent[node], node = root, parent[node]
        return root

    def _union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self._parent[max(rx, ry)] = min(rx, ry)

    def _pin(self, ids: np.ndarray, reason: str) -> None:
        self._reasons.append((ids, reason))

    def roots(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self.find(i) for i in ids.tolist()], dtype=np.int64)

    def pinned_roots(self) -> set[int]:
        return {self.find(i) for ids, _ in self._reasons for i in ids.tolist()}

    def _reason_for(self, roots: set[int]) -> str:
        for ids, reason in self._reasons:
            if roots & {self.find(i) for i in ids.tolist()}:
                return reason
        return ""


def inbound_nodes(model: Any, layer: Any) -> list[Any]:
    """The nodes through which ``layer`` is called inside ``model``."""
    return [n for i, n in enumerate(layer._inbound_nodes)
            if f"{layer.name}_ib-{i}" in model._network_nodes]


def analyze(model: Any) -> ChannelGraph:
    """Finds the channel dependency groups of a functional or Sequential model.

    Args:
        model: a built tf_keras functional or Sequential model.

    Returns:
        A :class:`ChannelGraph`; its ``groups`` say which producers prune
        together and which cannot be pruned (``unprunable`` says why).

    Raises:
        UnsupportedModelError: a subclassed or unbuilt model.
    """
    if not getattr(model, "_is_graph_network", False):
        raise UnsupportedModelError(
            f"Channel pruning needs a functional or Sequential model; {model.name!r} is "
            f"{type(model).__name__}. Rebuild it with the functional API.")
    graph = ChannelGraph(model)
    ids_of: dict[int, np.ndarray] = {}

    def channels(tensor: Any) -> int:
        return int(tensor.shape[-1]) if tensor.shape.rank else 1

    for tensor in model.inputs:
        ids_of[id(tensor)] = graph._new(channels(tensor))
        graph._pin(ids_of[id(tensor)], "a model input")

    for layer in model.layers:
        nodes = inbound_nodes(model, layer)
        if isinstance(layer, _L.InputLayer) or not nodes:
            continue
        node = nodes[0]
        inputs = [t for t in flatten(node.keras_inputs)]
        outs = flatten(node.outputs)
        in_ids = [ids_of.get(id(t)) for t in inputs]
        if any(i is None for i in in_ids):  # not reached from the model inputs
            in_ids = [graph._new(channels(t)) if i is None else i for t, i in zip(inputs, in_ids)]
        name = layer.name

        def opaque(reason: str) -> None:
            for ids in in_ids:
                graph._pin(ids, f"feeds {name!r} ({reason})")
            for t in outs:
                ids_of[id(t)] = graph._new(channels(t))
                graph._pin(ids_of[id(t)], f"comes from {name!r} ({reason})")
            graph.unprunable[name] = reason

        if len(nodes) > 1:
            opaque("a layer called more than once")
        elif len(inputs) == 1 and len(outs) == 1 and is_producer(layer):
            graph.input_ids[name] = in_ids[0]
            out = graph._new(channels(outs[0]))
            graph.producer_ids[name] = out
            ids_of[id(outs[0])] = out
            if _activation_name(layer) in _MIXING_ACTIVATIONS:
                graph._pin(out, f"{name!r} has a {_activation_name(layer)} activation")
        elif len(inputs) == 1 and len(outs) == 1 and (_is_channel_bn(layer)
                                                       or _is_per_channel_depthwise(layer)):
            graph.input_ids[name] = in_ids[0]
            ids_of[id(outs[0])] = in_ids[0]
            source = inputs[0]._keras_history.layer
            if isinstance(layer, _L.BatchNormalization) and is_producer(source):
                graph.bn_after.setdefault(source.name, name)
        elif len(inputs) == 1 and len(outs) == 1 and (
                isinstance(layer, _PASS_THROUGH) or (
                    isinstance(layer, _L.Activation)
                    and _activation_name(layer) not in _MIXING_ACTIVATIONS)):
            ids_of[id(outs[0])] = in_ids[0]
        elif isinstance(layer, _ELEMENTWISE) and len(outs) == 1 and len(
                {len(i) for i in in_ids}) == 1:
            for other in in_ids[1:]:
                graph._union(in_ids[0], other)
            ids_of[id(outs[0])] = in_ids[0]
        elif (isinstance(layer, _L.Concatenate) and len(outs) == 1
              and layer.axis in (-1, outs[0].shape.rank - 1)):
            ids_of[id(outs[0])] = np.concatenate(in_ids)
        elif (isinstance(layer, _L.Flatten) and len(inputs) == 1
              and layer.data_format == "channels_last" and inputs[0].shape[1:].is_fully_defined()):
            positions = int(np.prod(inputs[0].shape[1:-1]))
            ids_of[id(outs[0])] = np.tile(in_ids[0], positions)
        else:
            opaque(f"{type(layer).__name__}: channel pruning does not follow channels "
                   "through it")

    for tensor in model.outputs:
        graph._pin(ids_of[id(tensor)], "reaches a model output")
    _make_groups(graph)
    return graph


def flatten(value: Any) -> list[Any]:
    """The leaves (tensors) of a nested list, tuple or dict, in order."""
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flatten(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten(v)]
    return [value]


def _make_groups(graph: ChannelGraph) -> None:
    pinned = graph.pinned_roots()
    owner: dict[int, int] = {}  # component root -> group index
    for name, ids in graph.producer_ids.items():
        roots = graph.roots(ids)
        hits = sorted({owner[r] for r in roots.tolist() if r in owner})
        if not hits:
            group = ChannelGroup([name], [], [])
            graph.groups.append(group)
            index = len(graph.groups) - 1
        else:
            index = hits[0]
            group = graph.groups[index]
            group.producers.append(name)
            for other in hits[1:]:  # a producer bridging two groups merges them
                merged = graph.groups[other]
                group.producers += merged.producers
                merged.producers = []
                for r in merged.components:
                    owner[r] = index
                group.components += merged.components
        for r in roots.tolist():
            if r not in owner:
                owner[r] = index
                group.components.append(r)
    graph.groups = [g for g in graph.groups if g.producers]
    for group in graph.groups:
        group.pinned = [r in pinned for r in group.components]
        if not group.prunable:
            group.reason = graph._reason_for(set(group.components)) or "pinned"
            for name in group.producers:
                graph.unprunable.setdefault(name, f"its output channels: {group.reason}")


# ----------------------------------------------------------------------------
# MACs of a Keras model (the layers that dominate inference)
# ----------------------------------------------------------------------------
def keras_macs(model: Any) -> int:
    """Multiply-accumulates of one inference, from the layers' shapes.

    Counts Conv, DepthwiseConv and Dense layers (as :mod:`tfedge.cost` does
    for a flatbuffer); nested models are entered.

    Args:
        model: a built tf_keras model.

    Returns:
        MACs per sample.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += keras_macs(layer)
            continue
        kernel = getattr(layer, "depthwise_kernel", None)
        if kernel is None:
            kernel = getattr(layer, "kernel", None)
        if kernel is None or not hasattr(layer, "output_shape"):
            continue
        out = layer.output_shape
        if isinstance(out, list):
            out = out[0]
        spatial = int(np.prod([d for d in out[1:-1] if d])) if len(out) > 2 else 1
        shape = tuple(int(d) for d in kernel.shape)
        if isinstance(layer, _L.DepthwiseConv2D):
            total += spatial * int(np.prod(shape))  # kh * kw * C * multiplier
        elif isinstance(layer, (_L.Dense, _L.Conv1D, _L.Conv2D, _L.Conv3D)):
            total += spatial * int(np.prod(shape))
    return int(total)


def group_multiples(graph: ChannelGraph, multiple: Any) -> dict[int, int]:
    """The channel multiple of each group, by group index.

    Args:
        graph: the channel analysis.
        multiple: an int (every group), or ``{producer: int}``: a group takes
            the multiple of any of its producers named, the key ``"*"`` sets
            the others (default 1: no rounding). XNNPACK's int8 kernels tile
            channels differently per core (measured: multiples of 8 suit the
            Cortex-A72 of rpi4, 16 the A76 of rpi5; ``benchmarks/structured.py``),
            so a plan may round its small early groups and its wide late ones
            differently.

    Returns:
        ``{group index: multiple}`` for every group.

    Raises:
        ValueError: a multiple that is not a positive whole number, or a name
            that is no prunable group's producer (the message lists them).

    Example:

    >>> group_multiples(graph, {"block_1_expand": 8, "*": 16})  # doctest: +SKIP
    """
    check_multiple(multiple)
    if not isinstance(multiple, dict):
        return {i: int(multiple) for i in range(len(graph.groups))}
    producers = {p: i for i, g in enumerate(graph.groups) if g.prunable for p in g.producers}
    unknown = sorted(set(multiple) - set(producers) - {"*"})
    if unknown:
        raise ValueError(f"channel_multiple= names {', '.join(map(repr, unknown))}, not the "
                         f"producer of a prunable group; prunable: {', '.join(producers)} "
                         "(or '*' for the groups not named).")
    out = {i: int(multiple.get("*", 1)) for i in range(len(graph.groups))}
    for i, group in enumerate(graph.groups):
        named = [multiple[p] for p in group.producers if p in multiple]
        if len(set(named)) > 1:
            raise ValueError(f"channel_multiple= gives {sorted(set(named))} to producers of "
                             f"one group ({', '.join(group.producers)}): they share their "
                             "channels, give one value.")
        if named:
            out[i] = int(named[0])
    return out


def check_multiple(multiple: Any) -> None:
    """Raises ValueError unless ``multiple`` is a positive int or ``{name: positive int}``."""
    values = multiple.values() if isinstance(multiple, dict) else [multiple]
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))
           or int(v) != v or v < 1]
    if bad or (isinstance(multiple, dict) and not all(isinstance(k, str) for k in multiple)):
        raise ValueError(f"channel_multiple={multiple!r} must be a positive whole number "
                         "(e.g. 8), or a dict of producer name -> positive whole number "
                         "(e.g. {'block_1_expand': 8, '*': 16}).")
