"""Weight clustering (weight sharing) through tfmot's ``cluster_weights``.

Each clustered kernel keeps only ``number_of_clusters`` distinct values, so
the file compresses far better (gzip) and, followed by tfmot's
cluster-preserving QAT, the int8 model keeps those few values. tfedge wraps
tfmot's API; it only selects the layers, copies the model first and keeps
sparsity when the model was pruned before (sparsity-preserving clustering).

Example:

>>> ClusterConfig(16, start_epoch=4).get_config()["number_of_clusters"]
16
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
from absl import logging

from tfedge._config import PhaseConfig
from tfedge._keras import keras
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.clustering.keras import cluster as _cluster_lib
from tensorflow_model_optimization.python.core.clustering.keras import clustering_registry

_tfmot_cluster = tfmot.clustering.keras
INITS = ("kmeans_plus_plus", "density_based", "linear", "random")


@dataclasses.dataclass(frozen=True, repr=False)
class ClusterConfig(PhaseConfig):
    """How many shared values per kernel, and when clustering starts.

    Args:
        number_of_clusters: distinct values each clustered kernel keeps (> 1).
        start_epoch: epoch of the ``fit`` at which clustering starts.
            Default: 0 alone; after pruning, the epoch at which pruning ends.
        init: centroid initialization, one of :data:`INITS`.
        layers: None (every layer tfmot can cluster) or a list of layer names.
        preserve_sparsity: keep pruned zeros at zero (tfmot's
            sparsity-preserving clustering). None (auto): when the model is
            pruned in the same ``wrap``.

    Raises:
        ValueError: fewer than 2 clusters, unknown init, negative start.
    """

    ARGUMENT = "cluster"
    SHORTHAND = ((int,), "number_of_clusters", "a number of clusters")

    number_of_clusters: int = 16
    _: dataclasses.KW_ONLY
    start_epoch: int | None = None
    init: str = "kmeans_plus_plus"
    layers: list[str] | None = None
    preserve_sparsity: bool | None = None

    def _normalize(self) -> None:
        self._set("number_of_clusters", int(self.number_of_clusters))
        if self.layers is not None:
            self._set("layers", list(self.layers))

    def _validate(self) -> None:
        if self.number_of_clusters < 2:
            raise ValueError(f"number_of_clusters={self.number_of_clusters}: use 2 or more "
                             "(8 to 32 are typical).")
        if self.init not in INITS:
            raise ValueError(f"Unknown init {self.init!r}; use one of {', '.join(INITS)}.")
        start = self.start_epoch
        if start is not None and (int(start) != start or start < 0):
            raise ValueError(f"start_epoch={start} must be a whole number >= 0.")


def is_clusterable(layer: Any, number_of_clusters: int) -> bool:
    """True for layers whose weights tfmot can cluster."""
    if isinstance(layer, keras.Model) or not layer.trainable_weights:
        return False
    if not clustering_registry.ClusteringRegistry.supports(layer):
        return False
    if isinstance(layer, keras.layers.Conv2D):
        return _cluster_lib.layer_has_enough_weights_to_cluster(layer, number_of_clusters, False)
    return True


def apply_clustering(model: Any, config: ClusterConfig, preserve_sparsity: bool,
                     clone: Callable[[Any, Callable[[Any], Any]], Any]) -> Any:
    """Wraps the selected layers of ``model`` (a private copy) for clustering.

    Args:
        model: a plain model tfedge owns (pruning wrappers stripped).
        config: the clustering configuration.
        preserve_sparsity: keep zero weights at zero.
        clone: ``clone(model, layer_fn)`` rebuilds a model layer by layer.

    Returns:
        The model with tfmot ``ClusterWeights`` wrappers.

    Raises:
        ValueError: unknown or unclusterable layer names, or nothing to cluster.
    """
    candidates = {layer.name for layer in model.layers
                  if is_clusterable(layer, config.number_of_clusters)}
    chosen = candidates if config.layers is None else set(config.layers)
    bad = sorted(chosen - candidates)
    if bad:
        raise ValueError(f"Layer(s) {', '.join(bad)} cannot be clustered (unknown, nested, "
                         "or too few weights). Clusterable layers: "
                         f"{', '.join(sorted(candidates)) or 'none'}.")
    if not chosen:
        raise ValueError("Nothing to cluster: the model has no Dense/Conv layer with enough "
                         "weights at its top level.")
    init = _tfmot_cluster.CentroidInitialization[config.init.upper()]

    def wrap_layer(layer):
        if layer.name in chosen:
            return _tfmot_cluster.cluster_weights(layer, config.number_of_clusters, init,
                                                  preserve_sparsity=preserve_sparsity)
        return layer

    logging.info("tfedge: clustering %d layer(s) to %d values each: %s", len(chosen),
                 config.number_of_clusters, ", ".join(sorted(chosen)))
    return clone(model, wrap_layer)


def strip_clustering(model: Any) -> Any:
    """Removes tfmot's clustering wrappers, keeping the clustered weights."""
    return _tfmot_cluster.strip_clustering(model)


def unique_values(model: Any) -> dict[str, int]:
    """Number of distinct values in each kernel of a plain model."""
    counts = {}
    for layer in model.layers:
        for weight in layer.weights:
            if weight.name.split("/")[-1].split(":")[0].endswith("kernel"):
                counts[layer.name] = int(np.unique(weight.numpy()).size)
    return counts
