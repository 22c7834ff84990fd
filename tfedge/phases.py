"""The phases of one ``fit``: which technique trains from which epoch, and the hand-over.

:func:`plan_phases` orders pruning, clustering and QAT (the one order tfmot
can run: prune -> cluster -> QAT) and checks their start epochs;
:class:`tfedge.EdgeModel` switches from one phase to the next at those
epochs, with a :func:`fresh_optimizer` of the user's configuration, and
returns one History over all of them (:func:`merge_histories`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tfedge import cluster as cluster_lib
from tfedge import prune as prune_lib
from tfedge import quantize as quantize_lib
from tfedge._keras import keras


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stage of training: ``name`` runs from global epoch ``start_epoch``."""

    name: str  # "prune", "cluster" or "quantize"
    start_epoch: int


def prune_end_epoch(config: prune_lib.PruneConfig) -> int | None:
    return None if config.end_epoch is None else int(math.ceil(config.end_epoch))


def plan_phases(prune: prune_lib.PruneConfig | None,
                cluster: cluster_lib.ClusterConfig | None,
                quantize: quantize_lib.QATConfig | None) -> list[Phase]:
    """The phases of training and the epoch each starts at.

    Raises:
        ValueError: a start epoch cannot be inferred, phases overlap or come
            in an order tfmot cannot run (pruning must end before clustering
            or QAT strips its wrappers).
    """
    phases = []
    if prune is not None:
        phases.append(Phase("prune", 0))
    for name, config in (("cluster", cluster), ("quantize", quantize)):
        if config is None:
            continue
        start = config.start_epoch
        if start is None:
            if not phases:
                start = 0
            elif phases[-1].name == "prune" and prune_end_epoch(prune) is not None:
                start = prune_end_epoch(prune)
            else:
                after = "pruning" if phases[-1].name == "prune" else "clustering"
                cls = "ClusterConfig" if name == "cluster" else "QATConfig"
                raise ValueError(
                    f"When should {'clustering' if name == 'cluster' else 'QAT'} start? It "
                    f"follows {after}, whose end is not given in epochs: pass "
                    f"{cls}(start_epoch=N), e.g. the last 2 epochs of your fit.")
        if phases and start <= phases[-1].start_epoch:
            raise ValueError(
                f"The {name} phase starts at epoch {start}, not after the {phases[-1].name} "
                f"phase (epoch {phases[-1].start_epoch}): the phases run one after the "
                "other (prune -> cluster -> QAT); give later start epochs.")
        phases.append(Phase(name, int(start)))
    if prune is not None and len(phases) > 1:
        end = prune_end_epoch(prune)
        if end is not None and end > phases[1].start_epoch:
            raise ValueError(
                f"Pruning ends at epoch {prune.end_epoch} but {phases[1].name} starts at epoch "
                f"{phases[1].start_epoch}: its wrappers would be stripped before the target "
                "sparsity is reached. End pruning earlier (PruneConfig(end_epoch=...)) or "
                "start the next phase later.")
    return phases


def fresh_optimizer(optimizer: Any, learning_rate: float | None = None) -> Any:
    """A new optimizer with the same configuration (and optionally another rate)."""
    optimizer = keras.optimizers.get(optimizer) if isinstance(optimizer, (str, dict)) \
        else optimizer.__class__.from_config(optimizer.get_config())
    if learning_rate is not None:
        config = optimizer.get_config()
        config["learning_rate"] = learning_rate
        optimizer = optimizer.__class__.from_config(config)
    return optimizer


def merge_histories(histories: list[Any], model: Any) -> Any:
    merged = keras.callbacks.History()
    merged.set_model(model)
    merged.params = dict(histories[-1].params)
    merged.epoch = [e for h in histories for e in h.epoch]
    keys = list(dict.fromkeys(k for h in histories for k in h.history))
    merged.history = {k: [v for h in histories for v in h.history.get(k, [None] * len(h.epoch))]
                      for k in keys}
    return merged
