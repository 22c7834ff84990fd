"""``tfedge.wrap``: the user's model, prepared for optimization-aware training.

``wrap`` never touches the user's model: it trains a private copy (same
architecture, same weights) held inside an :class:`EdgeModel`. ``EdgeModel``
is an ordinary Keras model (``compile``, ``fit``, ``evaluate``, ``predict``)
whose ``fit`` adds the callbacks the optimization needs, so forgetting tfmot's
``UpdatePruningStep`` (its most common error) cannot happen. ``finish()``
strips the training wrappers and returns a plain Keras model.

The techniques compose in the one order that works, as **phases** of a
single ``fit``, switched by epoch:

    distill (every phase) -> prune -> cluster -> QAT -> (finish, convert)

* pruning runs from epoch 0 (its own schedule says when masks change);
* clustering starts at ``ClusterConfig.start_epoch`` (default: when
  pruning ends), on the stripped, pruned weights, preserving their zeros;
* QAT starts at ``QATConfig.start_epoch`` (default: when pruning ends), on
  the stripped network, with tfmot's prune- or cluster-preserving scheme;
* distillation adds the teacher's soft targets to every phase.

At a phase boundary ``fit`` strips the previous wrappers, applies the next
ones, and compiles the new network itself with the arguments given to
``compile`` (a fresh optimizer from the same config), then continues; the
returned History covers all epochs.

Example:

>>> edge = tfedge.wrap(model, prune=tfedge.PruneConfig(0.8, end_epoch=6),  # doctest: +SKIP
...                    quantize=tfedge.QATConfig(start_epoch=8))
>>> edge.compile("adam", loss, ["accuracy"])  # doctest: +SKIP
>>> edge.fit(x, y, epochs=10)  # epochs 0-7 prune, 8-9 PQAT  # doctest: +SKIP
>>> art = tfedge.convert(edge.finish())  # int8, ranges from QAT  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import tensorflow as tf
from absl import logging

from tfedge import channel_prune as channel_lib
from tfedge import cluster as cluster_lib
from tfedge import distill as distill_lib
from tfedge import keras3 as keras3_lib
from tfedge import lowrank as lowrank_lib
from tfedge import prepare as prepare_lib
from tfedge import prune as prune_lib
from tfedge import qat_gradients, qat_ranges
from tfedge import quantize as quantize_lib
from tfedge.phases import fresh_optimizer, merge_histories, plan_phases
from tfedge._keras import is_keras3_model, keras
from tfedge.errors import UnsupportedModelError
from tensorflow_model_optimization.python.core.api.experimental import combine as tfmot_combine

# A source model whose kernels are at least this sparse counts as pruned.
_PRUNED_SOURCE_SPARSITY = 0.5


def _check_model(model: Any, role: str = "model") -> None:
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"wrap expects a tf_keras Sequential or functional Model as the {role}, got "
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


def _check_teacher_inputs(teacher: Any, student: Any) -> None:
    """The teacher sees the student's batches: its inputs must take the same shapes."""
    def shapes(model):
        return [tuple(t.shape.as_list()[1:]) for t in model.inputs]

    ours, theirs = shapes(student), shapes(teacher)
    fits = len(ours) == len(theirs) and all(
        len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))
        for a, b in zip(ours, theirs))
    if not fits:
        show = lambda s: ", ".join(str(x) for x in s)  # noqa: E731
        raise ValueError(
            f"The teacher {teacher.name!r} takes inputs of shape {show(theirs)}, but the "
            f"student {student.name!r} takes {show(ours)}: distillation feeds both the same "
            "batches. Give a teacher trained on the student's input shape, or put the "
            "resizing inside the teacher (e.g. a keras.layers.Resizing layer first).")


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


# ----------------------------------------------------------------------------
# EdgeModel
# ----------------------------------------------------------------------------
class EdgeModel(keras.Model):
    """The model ``tfedge.wrap`` returns: compile it, fit it, then ``finish()`` it.

    It holds a private copy of the user's network with tfmot's wrappers of
    the current phase in place. ``fit`` adds the callbacks the phase needs
    (and resolves epoch-based schedules from the fit's own step count); the
    user's callbacks are kept and run after them. When the ``fit`` crosses a
    phase boundary, the network is rebuilt for the next phase and compiled
    again from the ``compile`` arguments, with a fresh optimizer.

    With a teacher, ``train_step`` minimizes the distillation loss and
    reports ``loss`` (the total), ``hard_loss``, ``soft_loss`` (with several
    outputs also ``soft_loss_<output>`` per output) and, with feature
    matching, ``feature_loss`` next to the compiled metrics;
    ``evaluate`` reports the same terms.

    Args:
        network: the user's network, copied (not yet wrapped).
        source_name: the name of the user's model, given back by ``finish``.
        prune_config: pruning, or None.
        cluster_config: clustering, or None.
        qat_config: quantization-aware training, or None.
        teacher: a trained teacher model, or None.
        distill_config: distillation settings (with ``teacher``).
        log_dir: where tfmot's pruning summaries go (TensorBoard), or None.
        source_sparsity: kernel sparsity of the user's model (picks PQAT).
    """

    def __init__(self, network: Any, *, source_name: str,
                 prune_config: prune_lib.PruneConfig | None = None,
                 cluster_config: cluster_lib.ClusterConfig | None = None,
                 qat_config: quantize_lib.QATConfig | None = None,
                 teacher: Any = None, distill_config: distill_lib.DistillConfig | None = None,
                 log_dir: str | None = None, source_sparsity: float = 0.0, **kwargs):
        kwargs.setdefault("name", f"tfedge_{source_name}")
        super().__init__(**kwargs)
        self.source_name = source_name
        self.prune_config = prune_config
        self.cluster_config = cluster_config
        self.qat_config = qat_config
        self.distill_config = distill_config
        self.log_dir = log_dir
        self.phases = plan_phases(prune_config, cluster_config, qat_config)
        self.qat_plan: quantize_lib.QuantizationPlan | None = None
        self._source_sparsity = source_sparsity
        self._phase_index = -1
        self._ranges_started = False  # QAT activation ranges set from data
        self._epochs_done = 0
        self._compile_args: dict[str, Any] | None = None
        self._schedule = prune_config.make_schedule() if prune_config else None
        self._resolver = (prune_lib.ResolvePruningSchedule(prune_config, self._schedule)
                          if prune_config is not None else None)
        # Channel pruning (tfedge.channel_prune): masks instead of tfmot wrappers.
        self._channels = (channel_lib.ChannelPruning(prune_config)
                          if prune_config is not None and prune_config.channel else None)
        self.network = network
        # Keras maps dict losses, metrics and targets to outputs by these names. A
        # subclassed model has none of its own (Keras would expect output_1, output_2),
        # and QAT renames the output layers (quant_<name>): keep the user's names.
        names = getattr(network, "output_names", None)
        self.output_names = list(names) if names else None
        if qat_config is not None and self.phases[0].name != "quantize":
            self._dry_run_qat(network)
        self._distillation = (distill_lib.Distillation(teacher, distill_config, network)
                              if teacher is not None else None)
        if self._distillation is not None:
            names = ["loss", "hard_loss", *self._distillation.term_names]
            self._trackers = [keras.metrics.Mean(name=n) for n in names]
        if self.phases and self.phases[0].start_epoch == 0:
            self._enter_phase(0)

    # -- phases ---------------------------------------------------------------
    @property
    def phase(self) -> str:
        """The current phase: ``"train"`` (no wrapper yet), ``"prune"``,
        ``"cluster"`` or ``"quantize"``."""
        return self.phases[self._phase_index].name if self._phase_index >= 0 else "train"

    def _preserve(self) -> str:
        """What QAT must preserve, from the phases before it."""
        names = [p.name for p in self.phases]
        pruned = ("prune" in names and self._channels is None) or (
            self._source_sparsity >= _PRUNED_SOURCE_SPARSITY)
        if self.qat_config.preserve_sparsity is not None:
            pruned = self.qat_config.preserve_sparsity
        if "cluster" in names:
            return "sparse_clusters" if pruned else "clusters"
        return "sparsity" if pruned else "none"

    def _dry_run_qat(self, network: Any) -> None:
        """Plans QAT at wrap time so impossible cases (strict) fail before training.

        Only the plan: tfmot's quantize_apply runs once, at the QAT phase."""
        self.qat_plan = quantize_lib.apply_qat(network, self.qat_config, self._preserve(),
                                               plan_only=True)[1]

    def _enter_phase(self, index: int) -> None:
        """Enters phase ``index`` in the distribution strategy the model was built
        under: the new wrappers' variables must be mirrored like the others."""
        with self.distribute_strategy.scope(), prepare_lib.construction_without_autograph():
            self._switch_phase(index)

    def _switch_phase(self, index: int) -> None:
        """Strips the current phase's wrappers and applies those of phase ``index``."""
        network = self.network
        if self.phase == "prune":
            network = self._strip_pruning(network)
        elif self.phase == "cluster":
            network = cluster_lib.strip_clustering(network)
        if self.phase != "train":  # every hand-over goes through the same preparation
            network = prepare_lib.prepare_model(network)[0]
        phase = self.phases[index]
        if phase.name == "prune" and self._channels is not None:
            network = self._channels.apply(network)
        elif phase.name == "prune":
            network = prune_lib.apply_pruning(network, self.prune_config, self._schedule,
                                              clone_model)
        elif phase.name == "cluster":
            preserve = self.cluster_config.preserve_sparsity
            if preserve is None:
                preserve = self.prune_config is not None
            network = cluster_lib.apply_clustering(network, self.cluster_config, preserve,
                                                   clone_model)
        else:
            quiet = self.qat_plan is not None  # the dry run already warned
            network, self.qat_plan = quantize_lib.apply_qat(
                network, self.qat_config, self._preserve(),
                log=logging.info if quiet else logging.warning)
        self._phase_index = index
        self.network = network
        if self._distillation is not None:
            self._distillation.bind(network)
        if self._compile_args is not None:
            args = dict(self._compile_args)
            lr = self.qat_config.learning_rate if phase.name == "quantize" else None
            args["optimizer"] = fresh_optimizer(args["optimizer"], lr)
            super().compile(**args)
        logging.info("tfedge: epoch %d: %s phase", phase.start_epoch, phase.name)

    def _start_qat_ranges(self, x: Any) -> None:
        """At QAT's first ``fit``, its activation ranges start from ``x``'s first samples."""
        count = self.qat_config.range_samples if self.phase == "quantize" else 0
        if count and not self._ranges_started:
            samples = qat_ranges.first_samples(x, count)
            if samples is not None:
                with self.distribute_strategy.scope():
                    qat_ranges.start_ranges(self.network, samples)
            self._ranges_started = True

    def optimization_callbacks(self) -> list[keras.callbacks.Callback]:
        """The callbacks ``fit`` adds before the user's own, for the current phase."""
        callbacks: list[keras.callbacks.Callback] = []
        if self.phase == "prune" and self._channels is not None:
            callbacks.append(self._channels.callback)
        elif self.phase == "prune":
            callbacks.append(self._resolver)
            callbacks.append(prune_lib._tfmot_sparsity.UpdatePruningStep())
            if self.log_dir:
                callbacks.append(prune_lib._tfmot_sparsity.PruningSummaries(log_dir=self.log_dir))
        return callbacks

    # -- Keras API --------------------------------------------------------------
    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Keras ``compile``; the arguments are kept to compile later phases.

        Keras 3 optimizers, losses and metrics are accepted (translated by
        :func:`tfedge.keras3.compile_arguments`).
        """
        self._compile_args = keras3_lib.compile_arguments(
            optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        super().compile(**self._compile_args)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, **kwargs):
        """Keras ``fit``, run phase by phase, with the optimization's callbacks added.

        Takes the same arguments as ``keras.Model.fit``. Phase start epochs
        count every epoch this model trained, over all ``fit`` calls. A tfmot
        ``UpdatePruningStep`` the user already passes is not added twice. If a
        callback stops training (EarlyStopping), the later phases do not run.

        Returns:
            One ``History`` for all the epochs of all the phases.
        """
        if self._compile_args is None:
            raise RuntimeError("Compile the wrapped model before fit: "
                               "edge.compile(optimizer, loss, metrics).")
        user = keras3_lib.fit_callbacks(callbacks)  # Keras 3 callbacks adapted
        first = self._epochs_done
        last = first + max(epochs - initial_epoch, 0)
        starts = [p.start_epoch for p in self.phases]
        while (self._phase_index + 1 < len(self.phases)
               and starts[self._phase_index + 1] <= first):
            self._enter_phase(self._phase_index + 1)
        bounds = [first] + [s for s in starts if first < s < last] + [last]
        histories = []
        for begin, end in zip(bounds[:-1], bounds[1:]):
            if begin != first:
                self._enter_phase(self._phase_index + 1)
            self._start_qat_ranges(x)
            ours = [cb for cb in self.optimization_callbacks()
                    if not any(type(u) is type(cb) for u in user)]
            history = super().fit(
                x, y, batch_size=batch_size, epochs=initial_epoch + end - first,
                verbose=verbose, callbacks=ours + user, validation_split=validation_split,
                validation_data=validation_data, shuffle=shuffle, class_weight=class_weight,
                sample_weight=sample_weight, initial_epoch=initial_epoch + begin - first,
                steps_per_epoch=steps_per_epoch, **kwargs)
            histories.append(history)
            self._epochs_done += len(history.epoch)
            if self.stop_training and end != last:
                logging.warning("tfedge: training was stopped in the %s phase at epoch %d; "
                                "the later phases (%s) did not run.", self.phase,
                                self._epochs_done, ", ".join(
                                    p.name for p in self.phases[self._phase_index + 1:]))
                break
        if not histories:
            return keras.callbacks.History()
        self.history = merge_histories(histories, self)
        return self.history

    # -- distillation -------------------------------------------------------------
    @property
    def metrics(self):
        metrics = super().metrics
        if getattr(self, "_distillation", None) is None:
            return metrics
        return metrics + [m for m in self._trackers if m not in metrics]

    def _distill_step(self, data: Any, training: bool) -> tuple[Any, dict[str, Any], Any, Any]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred, features = self._distillation.student_forward(x, training=training)
        hard = self.compiled_loss(y, y_pred, sample_weight)
        terms = self._distillation.loss_terms(x, y_pred, features)
        terms["hard_loss"] = hard
        terms["loss"] = self._distillation.total(hard, terms)
        if self.losses:
            terms["loss"] += tf.add_n(self.losses)
        return y_pred, terms, y, sample_weight

    def _distill_results(self, y, y_pred, sample_weight, terms) -> dict[str, Any]:
        self.compiled_metrics.update_state(y, y_pred, sample_weight)
        batch = tf.cast(tf.shape(tf.nest.flatten(y_pred)[0])[0], tf.float32)
        results = {}
        for tracker in self._trackers:
            tracker.update_state(terms[tracker.name], sample_weight=batch)
            results[tracker.name] = tracker.result()
        for metric in self.compiled_metrics.metrics:
            results[metric.name] = metric.result()
        return results

    def train_step(self, data):
        # tfmot's per-channel kernel fake-quant runs and differentiates with
        # whole-tensor ops inside this step only (TF's forward and gradient loop
        # over channels; see tfedge.qat_gradients): fit traces the step, tfmot
        # looks the forward function up and tape.gradient the gradient while it
        # traces. Inference graphs (the converter's) keep TF's op.
        with qat_gradients.vectorized_per_channel_fake_quant():
            if self._distillation is None:
                return super().train_step(data)
            with tf.GradientTape() as tape:
                y_pred, terms, y, sample_weight = self._distill_step(data, training=True)
            variables = self.trainable_variables + self._distillation.trainable_variables
            grads = tape.gradient(terms["loss"], variables)
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables) if g is not None])
        return self._distill_results(y, y_pred, sample_weight, terms)

    def test_step(self, data):
        if self._distillation is None:
            return super().test_step(data)
        y_pred, terms, y, sample_weight = self._distill_step(data, training=False)
        return self._distill_results(y, y_pred, sample_weight, terms)

    # -- the end --------------------------------------------------------------------
    def finish(self) -> Any:
        """Strips the training wrappers and returns a plain Keras model.

        The returned model has the user's original name and the trained
        weights, and is independent of this EdgeModel. After pruning the
        sparsity is baked in (``tfedge.sparsity_report``); after clustering
        the shared values are. After QAT it is the quantization-aware model
        (tfmot's fake-quant wrappers stay: they carry the learned int8
        ranges), which ``tfedge.convert`` turns into a full-int8 model, with
        or without representative data. A teacher is not part of it. Its
        outputs keep the user's names (``output_names``, and so the names of
        the converted file's signature outputs), which QAT's wrappers alone
        would change to ``quant_<name>``.

        Returns:
            A tf_keras functional or Sequential model.
        """
        pending = [p.name for p in self.phases[self._phase_index + 1:]]
        if pending:
            logging.warning("tfedge: finish() before the %s phase(s) started (trained %d "
                            "epochs; they start at epoch %s): the model is returned as of "
                            "the %s phase.", ", ".join(pending), self._epochs_done,
                            ", ".join(str(p.start_epoch) for p in
                                      self.phases[self._phase_index + 1:]), self.phase)
        network = self.network
        if self.phase == "prune":
            network = self._strip_pruning(network)
        elif self.phase == "cluster":
            network = cluster_lib.strip_clustering(network)
        if self.phase == "quantize":
            if self.cluster_config is not None:  # CQAT's training variables go
                network = tfmot_combine.strip_clustering_cqat(network)
            if self.qat_config.scheme == "int16x8":
                logging.info("tfedge: 16x8 QAT model returned as float with its QAT-trained "
                             "weights: convert it with mode='int16x8' and representative data.")
                plain = quantize_lib.strip_qat(network)
            else:
                plain = quantize_lib.copy_qat_model(network)
        else:
            plain = clone_model(network)
        plain._name = self.source_name
        if self.output_names:
            # QAT's wrappers renamed the output layers (quant_<name>); the user's names
            # stay the outputs' names, and so the converted file's signature outputs
            plain.output_names = list(self.output_names)
        if self._channels is not None:
            logging.info("tfedge: finished; %s", self._channels.report())
        elif self.prune_config is not None:
            logging.info("tfedge: finished; overall kernel sparsity %.1f%%",
                         100 * prune_lib.sparsity_report(plain).overall)
        if getattr(self, "keras3_bridge", None) is not None:
            return self.keras3_bridge.finish(plain)  # the user gave Keras 3: give it back
        return plain

    def _strip_pruning(self, network: Any) -> Any:
        """tfmot's wrappers removed, or, for channel pruning, the narrower model."""
        if self._channels is not None:
            return self._channels.rebuild()
        return prune_lib.strip_pruning(network)

    def channel_report(self) -> "channel_lib.ChannelReport | None":
        """Channels kept per dependency group (channel pruning), else None."""
        return self._channels.report() if self._channels and self._channels.graph else None

    def factorization_report(self) -> "lowrank_lib.FactorizationReport | None":
        """Ranks chosen per layer by ``wrap(..., factorize=...)``, else None."""
        return getattr(self, "factorization", None)

    def summary(self, *args, **kwargs):
        return self.network.summary(*args, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "source_name": self.source_name,
                "prune": self.prune_config.get_config() if self.prune_config else None,
                "cluster": self.cluster_config.get_config() if self.cluster_config else None,
                "quantize": self.qat_config.get_config() if self.qat_config else None,
                "distill": self.distill_config.get_config() if self.distill_config else None,
                "phases": [dataclasses.asdict(p) for p in self.phases],
                "log_dir": self.log_dir}


def wrap(model: Any, *, prune: Any = None, quantize: Any = None, cluster: Any = None,
         teacher: Any = None, distill: Any = None, log_dir: str | None = None,
         factorize: Any = None) -> EdgeModel:
    """Prepares a Keras model for optimization-aware training.

    The user's model (and teacher) are copied or only read, never changed.
    Compile and fit the returned model once; call ``finish()`` at the end.
    The techniques run as phases of that fit, in the order distill -> prune
    -> cluster -> QAT (see the module docstring).

    Args:
        model: a tf_keras Sequential or functional model (nested models are
            supported), or a Keras 3 one: it is carried to tf_keras (checked
            numerically) and ``finish()`` gives Keras 3 back; see
            :mod:`tfedge.keras3`. Subclassed models raise an error that says
            what to do.
        prune: a :class:`~tfedge.prune.PruneConfig`, a final sparsity such as
            ``0.8`` (polynomial decay over the first ``fit``), a dict of
            PruneConfig arguments, or None.
        quantize: quantization-aware training: True (int8), ``"int16x8"``, a
            :class:`~tfedge.quantize.QATConfig`, a dict of its arguments, or
            None. After pruning it preserves sparsity (PQAT), after
            clustering the clusters (CQAT).
        cluster: weight clustering: a :class:`~tfedge.cluster.ClusterConfig`,
            a number of clusters, a dict, or None.
        teacher: a trained tf_keras model to distill from, ``"self"`` (the
            user's model as given: the natural teacher of its pruned or
            factorized copy), or None.
        distill: a :class:`~tfedge.distill.DistillConfig` (or dict of its
            arguments); defaults to ``DistillConfig()`` with a teacher.
        log_dir: optional TensorBoard directory for tfmot's pruning summaries.
        factorize: low-rank factorization (:mod:`tfedge.lowrank`): a
            ``LowRankConfig``, a dict of its arguments, True, or None. The copy
            is factorized before the first epoch; later epochs fine-tune it.

    Returns:
        An :class:`EdgeModel` ready for ``compile`` and ``fit``.

    Raises:
        UnsupportedModelError: for Keras 3, subclassed or unbuilt models, a
            layer that cannot be copied, or (with ``strict``) layers QAT
            cannot quantize.
        ValueError: invalid settings, impossible combinations (16x8 QAT with
            pruning or clustering, distill without teacher, a teacher whose input
            shape differs from the model's, phases that
            overlap), or no optimization at all.

    Example:

    >>> edge = tfedge.wrap(model, prune=tfedge.PruneConfig(0.8, end_epoch=4),  # doctest: +SKIP
    ...                    quantize=True)  # QAT from epoch 4 on, preserving sparsity
    >>> edge.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])  # doctest: +SKIP
    >>> edge.fit(x, y, epochs=6)  # doctest: +SKIP
    >>> plain = edge.finish()  # doctest: +SKIP
    """
    # tfmot needs tf_keras: a Keras 3 model is carried across (checked) and back at finish().
    bridge = keras3_lib.Keras3Bridge(model) if is_keras3_model(model) else None
    model = bridge.tf_keras_model if bridge else model
    _check_model(model)
    prune_config = prune_lib.PruneConfig.coerce(prune)
    qat_config = quantize_lib.QATConfig.coerce(quantize)
    cluster_config = cluster_lib.ClusterConfig.coerce(cluster)
    if distill is not None and distill is not False and teacher is None:
        raise ValueError("distill= was given without a teacher: pass teacher=<trained "
                         "model> too.")
    if isinstance(teacher, str) and teacher == "self":
        teacher = clone_model(model)  # the unpruned, unfactorized model teaches its copy
    distill_config = distill_lib.DistillConfig.coerce(distill) if teacher is not None else None
    if teacher is not None:
        teacher = keras3_lib.to_tf_keras(teacher) if is_keras3_model(teacher) else teacher
        _check_model(teacher, role="teacher")
        _check_teacher_inputs(teacher, model)
    factorize_config = lowrank_lib.LowRankConfig.coerce(factorize)
    if (prune_config is None and qat_config is None and cluster_config is None
            and teacher is None and factorize_config is None):
        raise ValueError("wrap was asked for no optimization: pass prune=... (e.g. "
                         "prune=0.8), quantize=True, cluster=16 and/or teacher=...")
    if qat_config is not None and qat_config.scheme != "int8" and (prune_config or cluster_config):
        raise ValueError(
            f"QAT scheme {qat_config.scheme!r} cannot preserve pruning or clustering (tfmot "
            "has prune/cluster-preserving schemes for int8 only). Use quantize=True (int8), "
            "or drop prune=/cluster=.")
    source_sparsity = 0.0
    if qat_config is not None and prune_config is None:
        source_sparsity = prune_lib.sparsity_report(model).overall
    with prepare_lib.construction_without_autograph():
        network, preparation = prepare_lib.prepare_model(clone_model(model))
    factorization = None
    if factorize_config is not None:  # low-rank (tfedge.lowrank), before the first epoch
        network, factorization = lowrank_lib.factorize(network, factorize_config)
    edge = EdgeModel(network, source_name=model.name, prune_config=prune_config,
                     cluster_config=cluster_config, qat_config=qat_config, teacher=teacher,
                     distill_config=distill_config, log_dir=log_dir,
                     source_sparsity=source_sparsity)
    edge.keras3_bridge = bridge
    edge.factorization = factorization
    if factorization is not None and edge._channels is not None:  # ranks stay as chosen
        edge._channels.keep_whole = factorization.bottlenecks()
    edge.preparation = preparation  # what was rewritten for tfmot, and the check
    return edge
