"""``tfedge.wrap``: the user's model, prepared for optimization-aware training.

``wrap`` never touches the user's model: it trains a private copy (same
architecture, same weights) held inside an :class:`EdgeModel`. ``EdgeModel``
is an ordinary Keras model (``compile``, ``fit``, ``evaluate``, ``predict``)
whose ``fit`` adds the callbacks the optimization needs, so forgetting tfmot's
``UpdatePruningStep`` (its most common error) cannot happen. ``finish()``
strips the training wrappers and returns a plain Keras model.
"""

from __future__ import annotations

from typing import Any, Callable

from absl import logging

from tfedge import prune as prune_lib
from tfedge._keras import is_keras3_model, keras
from tfedge.errors import UnsupportedModelError


def _check_model(model: Any) -> None:
    if is_keras3_model(model):
        raise UnsupportedModelError(
            f"{model.name!r} is a Keras 3 model, and tfmot works only on tf_keras (Keras 2) "
            "models. Build the model with tf_keras (`import tf_keras as keras`, or "
            "`tf.keras` after `import tfedge`) for now.")
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"wrap expects a tf_keras Sequential or functional Model, got "
            f"{type(model).__module__}.{type(model).__name__}.")
    if not getattr(model, "_is_graph_network", False) and not isinstance(model, keras.Sequential):
        raise UnsupportedModelError(
            f"{model.name!r} is a subclassed keras.Model ({type(model).__name__}); its "
            "layers cannot be copied and wrapped from its Python code. Rebuild it with "
            "the functional API (keras.Input -> layers -> keras.Model(inputs, outputs)) "
            "or as a keras.Sequential, then call wrap on that.")
    if not model.built or not model.inputs:
        raise UnsupportedModelError(
            f"Model {model.name!r} is not built: its input shape is unknown. Start it with "
            "keras.Input(shape=...) (or call model.build(input_shape)) before wrap.")


def clone_model(model: Any, layer_fn: Callable[[Any], Any] | None = None) -> Any:
    """Rebuilds ``model`` with ``layer_fn`` applied to every layer.

    Nested Sequential and functional models are entered and rebuilt too, so
    ``layer_fn`` sees their layers. Without ``layer_fn`` this returns an
    independent copy with the same weights.

    Args:
        model: a tf_keras Sequential or functional model.
        layer_fn: maps a layer to the layer to use in its place; layers it
            returns unchanged are shared with ``model``.

    Returns:
        The rebuilt model.

    Raises:
        UnsupportedModelError: a layer that cannot be copied (a custom layer
            without ``get_config``) is named with the fix.
    """
    if layer_fn is None:
        try:
            copy = keras.models.clone_model(model)
        except (NotImplementedError, TypeError, ValueError) as err:
            raise UnsupportedModelError(
                f"Model {model.name!r} could not be copied: {err}. Custom layers need "
                "get_config() returning their constructor arguments (and from_config if "
                "those are not plain values).") from err
        copy.set_weights(model.get_weights())
        return copy

    def fn(layer):
        if isinstance(layer, keras.Model) and (
                getattr(layer, "_is_graph_network", False) or isinstance(layer, keras.Sequential)):
            return clone_model(layer, layer_fn)
        return layer_fn(layer)

    return keras.models.clone_model(model, clone_function=fn)


class EdgeModel(keras.Model):
    """The model ``tfedge.wrap`` returns: train it, then ``finish()`` it.

    It holds a private copy of the user's network with tfmot's wrappers in
    place. ``fit`` adds the callbacks the chosen optimizations need (and
    resolves epoch-based schedules from the fit's own step count); callbacks the
    user passes are kept and run after them.

    Args:
        network: the wrapped network (already holding tfmot wrappers).
        source_name: the name of the user's model, given back by ``finish``.
        prune_config: the pruning configuration, or None.
        schedule: the pruning schedule shared by the wrappers, or None.
        log_dir: where tfmot's pruning summaries go (TensorBoard), or None.
    """

    def __init__(self, network: Any, *, source_name: str,
                 prune_config: prune_lib.PruneConfig | None = None,
                 schedule: Any = None, log_dir: str | None = None, **kwargs):
        kwargs.setdefault("name", f"tfedge_{source_name}")
        super().__init__(**kwargs)
        self.network = network
        self.source_name = source_name
        self.prune_config = prune_config
        self.log_dir = log_dir
        self._schedule = schedule
        self._resolver = (prune_lib.ResolvePruningSchedule(prune_config, schedule)
                          if prune_config is not None else None)

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def optimization_callbacks(self) -> list[keras.callbacks.Callback]:
        """The callbacks ``fit`` adds before the user's own."""
        callbacks: list[keras.callbacks.Callback] = []
        if self.prune_config is not None:
            callbacks.append(self._resolver)
            callbacks.append(prune_lib._tfmot_sparsity.UpdatePruningStep())
            if self.log_dir:
                callbacks.append(prune_lib._tfmot_sparsity.PruningSummaries(log_dir=self.log_dir))
        return callbacks

    def fit(self, *args, callbacks=None, **kwargs):
        """Keras ``fit``, with the optimization's callbacks added.

        Takes the same arguments as ``keras.Model.fit``. A tfmot
        ``UpdatePruningStep`` the user already passes is not added twice.
        """
        user = list(callbacks or [])
        ours = [cb for cb in self.optimization_callbacks()
                if not any(type(u) is type(cb) for u in user)]
        return super().fit(*args, callbacks=ours + user, **kwargs)

    def finish(self) -> Any:
        """Strips the training wrappers and returns a plain Keras model.

        The returned model has the user's original name, the trained weights
        with the sparsity baked in, and no tfmot layers; it is independent of
        this EdgeModel. Use ``tfedge.sparsity_report(model)`` for the achieved
        sparsity per layer.

        Returns:
            A tf_keras functional or Sequential model.
        """
        network = self.network
        if self.prune_config is not None:
            network = prune_lib.strip_pruning(network)
        plain = clone_model(network)
        plain._name = self.source_name
        if self.prune_config is not None:
            logging.info("tfedge: finished; overall kernel sparsity %.1f%%",
                         100 * prune_lib.sparsity_report(plain).overall)
        return plain

    def summary(self, *args, **kwargs):
        return self.network.summary(*args, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "source_name": self.source_name,
                "prune": self.prune_config.get_config() if self.prune_config else None,
                "log_dir": self.log_dir}


def wrap(model: Any, *, prune: Any = None, log_dir: str | None = None) -> EdgeModel:
    """Prepares a Keras model for optimization-aware training.

    The user's model is copied, never changed. Compile and fit the returned
    model as usual; call ``finish()`` on it at the end.

    Args:
        model: a tf_keras Sequential or functional model (nested models are
            supported). Keras 3 and subclassed models raise an error that
            says what to do.
        prune: pruning to apply: a :class:`~tfedge.prune.PruneConfig`, a
            final sparsity such as ``0.8`` (polynomial decay over the first
            ``fit``), a dict of PruneConfig arguments, or None.
        log_dir: optional TensorBoard directory for tfmot's pruning summaries.

    Returns:
        An :class:`EdgeModel` ready for ``compile`` and ``fit``.

    Raises:
        UnsupportedModelError: for Keras 3, subclassed or unbuilt models, or a
            layer that cannot be copied.
        ValueError: for invalid settings (sparsity outside [0, 1), end before
            begin, unknown layer names, nothing prunable) or no optimization.

    Example:

    >>> wrapped = tfedge.wrap(model, prune=tfedge.PruneConfig(0.8, end_epoch=4))  # doctest: +SKIP
    >>> wrapped.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])  # doctest: +SKIP
    >>> wrapped.fit(x, y, epochs=6)  # doctest: +SKIP
    >>> plain = wrapped.finish()  # doctest: +SKIP
    """
    _check_model(model)
    prune_config = prune_lib.PruneConfig.coerce(prune)
    if prune_config is None:
        raise ValueError("wrap was asked for no optimization: pass prune=... "
                         "(e.g. prune=0.8).")
    network = clone_model(model)
    schedule = prune_config.make_schedule()
    network = prune_lib.apply_pruning(network, prune_config, schedule, clone_model)
    return EdgeModel(network, source_name=model.name, prune_config=prune_config,
                     schedule=schedule, log_dir=log_dir)
