"""Low-rank factorization: Dense and Conv layers split into two thinner ones by SVD.

``tfedge.wrap(model, factorize=LowRankConfig(...))`` factorizes the copy it
trains when ``fit`` starts (epoch 0, before any other phase); the following
epochs fine-tune the factors, and ``finish()`` returns ordinary layers that
convert to full int8 unchanged:

* ``Dense`` (in, out): ``W = U S V^T`` -> Dense(r, no bias) then Dense(out);
* 1x1 ``Conv2D``: the same, as two 1x1 convolutions;
* k x k ``Conv2D``: spatial SVD (Jaderberg et al.; AIMET's Keras spatial
  SVD): the kernel reshaped to (kh*cin, kw*cout) is split into a kh x 1
  convolution to r channels and a 1 x kw convolution to cout (strides,
  dilation and padding split per axis, so at full rank the output is the
  same).

The rank of each layer comes from an energy threshold (the smallest rank
keeping ``energy`` of the squared singular values), from a MAC budget
(``macs=0.5``: the threshold found by bisection so that the whole model has
at most half its MACs), or is given per layer (``ranks={"Conv_1": 32}``:
e.g. a channel-pruned MobileNetV2's wide head conv, whose weights are much
of the int8 file). A layer whose factorization would not lower its MACs is
left alone (and reported); an explicit rank that would not is an error. With
an energy or a budget, the last factorizable layer before each model output
(the classifier) is left whole too, unless named in ``layers=``: its rank
would bottleneck the outputs for a few MACs (``_nearest_outputs``).
The SVD is NumPy's; the rebuilt graph is plain Keras layers.

Example:

>>> edge = tfedge.wrap(model, factorize=tfedge.LowRankConfig(macs=0.5))  # doctest: +SKIP
>>> edge.compile("adam", loss); edge.fit(x, y, epochs=3)  # doctest: +SKIP
>>> print(edge.factorization_report())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tfedge import channels as channels_lib
from tfedge._config import PhaseConfig
from tfedge._keras import keras
from tfedge.errors import UnsupportedModelError
from tfedge.report import format_table

_L = keras.layers


@dataclasses.dataclass(frozen=True)
class LowRankConfig(PhaseConfig):
    """Which layers to factorize, and to what rank.

    Args:
        energy: keep the smallest rank holding this fraction of each layer's
            squared singular values, in (0, 1]; default 0.9 when no budget.
        macs: instead of ``energy``, a budget: the model's MACs after
            factorization over its MACs before, in (0, 1).
        layers: names of the layers to consider (default: every Dense and
            groups=1 Conv2D except the last one on each path to a model
            output, e.g. the classifier: its rank would bottleneck the
            outputs; name it here or in ``ranks=`` to factorize it).
        ranks: instead of ``energy`` / ``macs`` / ``layers``, explicit ranks:
            layer name -> rank (an int >= 1). Only these layers are factorized;
            ``factorize`` checks each against the model (a factorizable layer,
            a rank below its full rank that lowers its MACs).

    Raises:
        ValueError: values out of range, ranks that are not whole numbers >= 1,
            or more than one of ``energy``, ``macs`` and ``ranks`` (or
            ``ranks`` with ``layers``).

    Example:

    >>> LowRankConfig(energy=0.95).get_config()["energy"]
    0.95
    >>> LowRankConfig(ranks={"Conv_1": 32}).get_config()["ranks"]
    {'Conv_1': 32}
    """

    ARGUMENT = "factorize"
    SHORTHAND = ((float,), "energy", "an energy threshold such as 0.9")

    energy: float | None = None
    _: dataclasses.KW_ONLY
    macs: float | None = None
    layers: list[str] | None = None
    ranks: dict[str, int] | None = None

    def _normalize(self) -> None:
        given = [k for k in ("energy", "macs", "ranks") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError("Give LowRankConfig one of an energy threshold (energy=), a MAC "
                             f"budget (macs=) or explicit ranks (ranks=), not both {given[0]}= "
                             f"and {given[1]}=.")
        if self.ranks is not None and self.layers is not None:
            raise ValueError("ranks= names the layers to factorize already: drop layers=.")
        if not given:
            self._set("energy", 0.9)
        if self.energy is not None:
            self._set("energy", float(self.energy))
        if self.macs is not None:
            self._set("macs", float(self.macs))
        if self.layers is not None:
            self._set("layers", list(self.layers))
        if self.ranks is not None:
            if not isinstance(self.ranks, dict):
                raise ValueError(f"ranks= takes a dict of layer name -> rank, e.g. "
                                 f"{{'Conv_1': 32}}; got {type(self.ranks).__name__}.")
            self._set("ranks", {name: int(r) if isinstance(r, np.integer) else r
                                for name, r in self.ranks.items()})

    def _validate(self) -> None:
        if self.ranks is not None and not self.ranks:
            raise ValueError("ranks={} names no layer: give layer name -> rank, e.g. "
                             "{'Conv_1': 32}, or use energy= / macs=.")
        for name, rank in (self.ranks or {}).items():
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise ValueError(f"ranks[{name!r}]={rank!r}: a rank is a whole number >= 1 "
                                 "(the width of the layer's first factor), e.g. 32.")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy={self.energy} is outside (0, 1]: it is the share of the "
                             "squared singular values kept, e.g. 0.9.")
        if self.macs is not None and not 0.0 < self.macs < 1.0:
            raise ValueError(f"macs={self.macs} is outside (0, 1): it is the share of the "
                             "model's MACs kept, e.g. 0.5.")


# ----------------------------------------------------------------------------
# Per-layer SVD
# ----------------------------------------------------------------------------
def _kind(layer: Any) -> str | None:
    if isinstance(layer, _L.Dense) and len(layer.input_shape) == 2:
        return "dense"
    if (type(layer) is _L.Conv2D and layer.groups == 1 and layer.data_format == "channels_last"):
        return "1x1" if tuple(layer.kernel_size) == (1, 1) else "spatial"
    return None


def _matrix(layer: Any, kind: str) -> np.ndarray:
    w = layer.kernel.numpy()
    if kind == "dense":
        return w
    if kind == "1x1":
        return w[0, 0]
    kh, kw, cin, cout = w.shape  # M[(i, c), (j, o)] = W[i, j, c, o]
    return w.transpose(0, 2, 1, 3).reshape(kh * cin, kw * cout)


def _macs(layer: Any, kind: str, rank: int | None) -> int:
    """MACs of the layer (rank None) or of its factorization at ``rank``."""
    out = layer.output_shape
    kernel = tuple(int(d) for d in layer.kernel.shape)
    if kind == "dense":
        n_in, n_out = kernel
        return n_in * n_out if rank is None else rank * (n_in + n_out)
    h_out, w_out = out[1], out[2]
    if kind == "1x1":
        cin, cout = kernel[2:]
        return h_out * w_out * (cin * cout if rank is None else rank * (cin + cout))
    kh, kw, cin, cout = kernel
    if rank is None:
        return h_out * w_out * kh * kw * cin * cout
    w_mid = layer.input_shape[2]  # the kh x 1 conv keeps the full width
    return h_out * w_mid * kh * cin * rank + h_out * w_out * kw * rank * cout


class _Candidate:
    def __init__(self, layer: Any, kind: str):
        self.layer, self.kind = layer, kind
        self.u, self.s, self.vt = np.linalg.svd(_matrix(layer, kind), full_matrices=False)
        energy = np.cumsum(self.s ** 2)
        self.energy = energy / max(energy[-1], 1e-30)
        self.macs = _macs(layer, kind, None)

    def rank_for(self, energy: float) -> int:
        return int(min(np.searchsorted(self.energy, energy - 1e-9) + 1, len(self.s)))

    def pays(self, rank: int) -> bool:
        return _macs(self.layer, self.kind, rank) < self.macs

    def largest_paying(self) -> int:
        """The largest rank whose factorization has fewer MACs than the layer (0: none)."""
        return next((r for r in range(len(self.s) - 1, 0, -1) if self.pays(r)), 0)


def _factor_layers(c: _Candidate, rank: int) -> tuple[list[Any], list[list[np.ndarray]]]:
    layer, config = c.layer, c.layer.get_config()
    root = np.sqrt(c.s[:rank])
    a = c.u[:, :rank] * root
    b = (c.vt[:rank].T * root).T
    bias = [layer.bias.numpy()] if layer.use_bias else []
    name = layer.name
    if c.kind == "dense":
        first = _L.Dense(rank, use_bias=False, name=f"{name}_lr1")
        second = _L.Dense.from_config({**config, "name": f"{name}_lr2"})
        return [first, second], [[a], [b] + bias]
    common = {k: config[k] for k in ("padding", "kernel_regularizer") if k in config}
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    if c.kind == "1x1":
        first = _L.Conv2D(rank, 1, strides=layer.strides, use_bias=False, name=f"{name}_lr1",
                          **common)
        second = _L.Conv2D.from_config({**config, "filters": layer.filters, "strides": (1, 1),
                                        "name": f"{name}_lr2"})
        return [first, second], [[a[None, None]], [b[None, None]] + bias]
    kh, kw, cin, cout = layer.kernel.shape
    first = _L.Conv2D(rank, (kh, 1), strides=(sh, 1), dilation_rate=(dh, 1), use_bias=False,
                      name=f"{name}_lr1", **common)
    second = _L.Conv2D.from_config({**config, "kernel_size": (1, kw), "strides": (1, sw),
                                    "dilation_rate": (1, dw), "name": f"{name}_lr2"})
    first_kernel = a.reshape(kh, cin, rank)[:, None]              # (kh, 1, cin, r)
    second_kernel = b.reshape(rank, kw, cout).transpose(1, 0, 2)[None]  # (1, kw, r, cout)
    return [first, second], [[first_kernel], [second_kernel] + bias]


# ----------------------------------------------------------------------------
# The rewrite
# ----------------------------------------------------------------------------
def _map(value: Any, tensors: dict[int, Any]) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, tensors) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, tensors) for k, v in value.items()}
    return tensors.get(id(value), value)


def _rewrite(model: Any, ranks: dict[str, tuple[_Candidate, int]]) -> Any:
    """A copy of ``model`` with each layer in ``ranks`` replaced by its two factors."""
    tensors: dict[int, Any] = {}
    inputs = []
    for tensor in model.inputs:
        new = keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype,
                          name=tensor._keras_history.layer.name)
        tensors[id(tensor)] = new
        inputs.append(new)
    weights: list[tuple[Any, list[np.ndarray]]] = []
    for layer in model.layers:
        nodes = channels_lib.inbound_nodes(model, layer)
        if isinstance(layer, _L.InputLayer) or not nodes:
            continue
        if len(nodes) > 1:
            raise UnsupportedModelError(f"Layer {layer.name!r} is called more than once; "
                                        "low-rank factorization needs each layer called once.")
        node = nodes[0]
        args, kwargs = _map(node.call_args, tensors), _map(node.call_kwargs, tensors)
        if layer.name in ranks:
            pair, values = _factor_layers(*ranks[layer.name])
            out = pair[1](pair[0](*args, **kwargs))
            weights += list(zip(pair, values))
        else:
            new = layer.__class__.from_config(layer.get_config())
            out = new(*args, **kwargs)
            weights.append((new, layer.get_weights()))
        for old, new_tensor in zip(channels_lib.flatten(node.outputs), channels_lib.flatten(out)):
            tensors[id(old)] = new_tensor
    outputs = _map(model.outputs, tensors)
    rebuilt = keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)
    for layer, values in weights:
        layer.set_weights(values)
    return rebuilt


class FactorizationReport:
    """What factorization chose per layer.

    Attributes:
        rows: per considered layer: ``layer``, ``kind``, ``rank``, ``full_rank``,
            ``energy`` kept, ``macs_before``, ``macs_after``, ``factorized``, ``note``.
        macs_before / macs_after: the whole model's MACs.
    """

    def __init__(self, rows: list[dict[str, Any]], macs_before: int, macs_after: int):
        self.rows, self.macs_before, self.macs_after = rows, macs_before, macs_after

    def bottlenecks(self) -> set[str]:
        """The first factor of each factorized layer, whose output width is its rank.

        Channel pruning composed with factorization leaves these whole: the
        rank was chosen by the energy or the budget, and cutting it again
        hurts (measured on the digits CNN: 0.5x MACs low-rank plus 50% of the
        channels cut a rank-4 logits bottleneck to 2 and scored 32% int8
        after 2 epochs; keeping the ranks, 84%. That was before a budget left the
        logits whole, see ``_nearest_outputs``; the rule holds for every rank).
        """
        return {f"{r['layer']}_lr1" for r in self.rows if r["factorized"]}

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.rows, "macs_before": self.macs_before,
                "macs_after": self.macs_after}

    def __str__(self) -> str:
        rows = [[r["layer"], r["kind"], f"{r['rank']}/{r['full_rank']}",
                 f"{100 * r['energy']:.1f}%", r["macs_before"], r["macs_after"],
                 r["note"]] for r in self.rows]
        return format_table(["layer", "kind", "rank", "energy", "MACs", "after", "note"], rows,
                            title=f"low-rank: model MACs {self.macs_before:,} -> "
                                  f"{self.macs_after:,}")


def factorize(model: Any, config: LowRankConfig) -> tuple[Any, FactorizationReport]:
    """Factorizes ``model``'s Dense and Conv2D layers (a new model; ``model`` is kept).

    Args:
        model: a tf_keras functional model (trained: the ranks come from its weights).
        config: the energy threshold or MAC budget.

    Returns:
        ``(factorized model, FactorizationReport)``.

    Raises:
        UnsupportedModelError: no layer can be factorized with fewer MACs, or the only
            factorizable layers are the output layers a budget leaves whole (named).
        ValueError: the MAC budget cannot be met (the best reachable is named); an
            explicit rank for a layer that is not a factorizable one of the model
            (they are listed), not below the layer's full rank, or too large to
            lower its MACs (the largest rank that does is named).
    """
    if config.ranks is not None:
        candidates = _explicit_candidates(model, config.ranks)
        chosen = {c.layer.name: (c, config.ranks[c.layer.name]) for c in candidates}
        return _report_and_rewrite(model, candidates, chosen, None)
    held = _nearest_outputs(model) if config.layers is None else set()
    considered = [_Candidate(layer, _kind(layer)) for layer in model.layers
                  if _kind(layer) and (config.layers is None or layer.name in config.layers)]
    candidates = [c for c in considered if c.layer.name not in held]
    if not candidates:
        raise UnsupportedModelError(
            f"{model.name!r} has no Dense (2-D input) or Conv2D layer to factorize"
            + (f" besides the output layers {sorted(held)}, left whole by default: name them "
               "in LowRankConfig(layers=) to factorize them anyway." if held else "."))
    base = channels_lib.keras_macs(model)

    def plan(energy: float) -> dict[str, tuple[_Candidate, int]]:
        chosen = {}
        for c in candidates:
            rank = c.rank_for(energy)
            if c.pays(rank):
                chosen[c.layer.name] = (c, rank)
        return chosen

    def total(chosen):
        return base - sum(c.macs - _macs(c.layer, c.kind, r) for c, r in chosen.values())

    if config.macs is None:
        energy = config.energy
    else:
        lo, hi = 0.0, 1.0  # largest energy whose plan fits the budget
        if total(plan(1e-6)) > config.macs * base:
            raise ValueError(f"macs={config.macs} cannot be reached by factorization: the best "
                             f"(rank 1 everywhere it pays) is {total(plan(1e-6)) / base:.3f}x. "
                             "Ask for more MACs, or combine with channel pruning.")
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(plan(mid)) <= config.macs * base else (lo, mid)
        energy = lo
    chosen = plan(energy)
    if not chosen:
        raise UnsupportedModelError(
            f"No layer of {model.name!r} gets fewer MACs when factorized at energy "
            f"{energy:.3f}; lower the energy (LowRankConfig(energy=...)) or give a budget.")
    return _report_and_rewrite(model, considered, chosen, energy, held)


_HELD_NOTE = ("left whole: it computes a model output, and a rank below its width would "
              "bottleneck the outputs (name it in layers= to factorize it)")


def _nearest_outputs(model: Any) -> set[str]:
    """The factorizable layers nearest the model outputs: the first met on each path
    back from an output (through activations, reshapes, concatenations, ...).

    Factorizing one of these to rank ``r`` confines its part of the outputs to an
    ``r``-dimensional subspace. Measured on the digits CNN of
    ``benchmarks/structured.py``: at ``macs=0.5`` the global energy threshold cut the
    10-class logits Dense to rank 5 for 0.2% of the MACs, and the model scored 88.9%
    int8 after fine-tuning against 96.7% dense; with the logits left whole, the same
    budget scores as dense (MobileNetV2's ``predictions`` was cut the same way).
    """
    found: set[str] = set()
    seen: set[int] = set()
    stack = [t._keras_history.layer for t in model.outputs]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if _kind(layer):
            found.add(layer.name)
            continue
        for node in channels_lib.inbound_nodes(model, layer):
            stack += [t._keras_history.layer for t in channels_lib.flatten(node.keras_inputs)]
    return found


def _explicit_candidates(model: Any, ranks: dict[str, int]) -> list[_Candidate]:
    """The layers of ``LowRankConfig(ranks=)``, each checked against its rank."""
    factorizable = [layer.name for layer in model.layers if _kind(layer)]
    layers = {layer.name: layer for layer in model.layers}
    candidates = []
    for name, rank in ranks.items():
        if name not in factorizable:
            what = (f"is a {type(layers[name]).__name__}, not a Dense (2-D input) or groups=1 "
                    "Conv2D" if name in layers else f"is not a layer of {model.name!r}")
            shown = ", ".join(factorizable[:40]) + (", ..." if len(factorizable) > 40 else "")
            raise ValueError(f"LowRankConfig(ranks=) names {name!r}, which {what}. The "
                             f"factorizable layers are: {shown or 'none'}.")
        c = _Candidate(layers[name], _kind(layers[name]))
        full = len(c.s)
        if rank >= full:
            raise ValueError(f"ranks[{name!r}]={rank} is not below the layer's full rank {full} "
                             f"(its kernel as a matrix is {c.u.shape[0]}x{c.vt.shape[1]}): "
                             f"ask for 1..{full - 1}.")
        if not c.pays(rank):
            best = c.largest_paying()
            fix = (f"the largest rank that does is {best}" if best
                   else "no rank does: leave it out of ranks=")
            raise ValueError(f"ranks[{name!r}]={rank} does not lower the layer's MACs "
                             f"({_macs(c.layer, c.kind, rank):,} factorized vs {c.macs:,}); "
                             f"{fix}.")
        candidates.append(c)
    return candidates


def _report_and_rewrite(model: Any, candidates: list[_Candidate],
                        chosen: dict[str, tuple[_Candidate, int]], energy: float | None,
                        held: set[str] = frozenset()
                        ) -> tuple[Any, FactorizationReport]:
    """The factorized model and the report of each candidate (chosen or left whole;
    ``held``: the output layers a budget does not consider)."""
    base = channels_lib.keras_macs(model)
    rows = []
    for c in candidates:
        done = c.layer.name in chosen
        rank = chosen[c.layer.name][1] if done else c.rank_for(energy)
        rows.append({"layer": c.layer.name, "kind": c.kind, "rank": rank,
                     "full_rank": len(c.s), "energy": float(c.energy[rank - 1]),
                     "macs_before": c.macs,
                     "macs_after": _macs(c.layer, c.kind, rank) if done else c.macs,
                     "factorized": done,
                     "note": "" if done else _HELD_NOTE if c.layer.name in held
                     else "left whole: factorizing would not lower its MACs"})
    factored = _rewrite(model, chosen)
    return factored, FactorizationReport(rows, base, channels_lib.keras_macs(factored))


def factorize_layers(model: Any, ranks: dict[str, int | None]) -> Any:
    """Factorizes the named layers at the given ranks (None: full rank), no MAC check.

    At full rank the factorized model computes the same function as
    ``model`` (up to float rounding): the check that the split is exact.

    Args:
        model: a tf_keras functional model.
        ranks: layer name -> rank (None: the full rank ``min`` of the matrix).

    Returns:
        A new model.

    Raises:
        UnsupportedModelError: a named layer is not a Dense (2-D input) or Conv2D.
    """
    chosen = {}
    for name, rank in ranks.items():
        layer = model.get_layer(name)
        kind = _kind(layer)
        if kind is None:
            raise UnsupportedModelError(f"Layer {name!r} ({type(layer).__name__}) cannot be "
                                        "factorized: only Dense and Conv2D layers can.")
        c = _Candidate(layer, kind)
        chosen[name] = (c, len(c.s) if rank is None else min(int(rank), len(c.s)))
    return _rewrite(model, chosen)
