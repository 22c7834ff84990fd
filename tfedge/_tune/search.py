"""``tune()``: the search, keras-tuner's oracle driving the trials of :mod:`tfedge._tune.trial`."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import time
import warnings
from typing import Any, Callable

import numpy as np
from absl import logging

from tfedge._keras import keras
from tfedge._wrap import wrap
from tfedge._tune.results import TuneResult, budget_text, collect_trials, write_report
from tfedge._tune.scaling import scale_model
from tfedge._tune.space import ORACLES, Budget, SearchSpace
from tfedge._tune.trial import TRIAL_FILENAME, TrialRecord, check_measurable, tuner_class
from tfedge.errors import TFEdgeError


def _as_xy(data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"{what} must be a pair (x, y) of NumPy arrays: tune resizes and "
                         "slices the inputs per trial.")
    x, y = (np.asarray(v) for v in data)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{what}: x has {len(x)} samples and y has {len(y)} labels; give "
                         "the same, non-zero number.")
    return x.astype(np.float32) if x.dtype.kind == "f" else x, y


def _default_compile(optimizer: Any, loss: Any, learning_rate: float) -> Callable[[Any], Any]:

    def compile_fn(model):
        opt = optimizer() if callable(optimizer) and not isinstance(optimizer, str) else optimizer
        if opt is None or opt == "adam":
            opt = keras.optimizers.Adam(learning_rate)
        model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
        return model
    return compile_fn


def _resumable_grid_oracle():
    import keras_tuner as kt

    class ResumableGridSearchOracle(kt.oracles.GridSearchOracle):
        """keras-tuner's grid oracle, able to resume.

        keras-tuner 1.4's GridSearchOracle keeps its walk through the grid in
        memory only (not in ``oracle.json``), so a reloaded search stops at
        once. When the parent says STOPPED, this walks the grid from its first
        combination and returns the first one not tried yet (the oracle's
        persisted ``_tried_so_far`` hashes), so only a truly exhausted grid stops.
        """

        def populate_space(self, trial_id):
            response = super().populate_space(trial_id)
            if response["status"] != kt.engine.trial.TrialStatus.STOPPED:
                return response
            hps = self.get_space()
            values = {hp.name: hp.default for hp in hps.space if hps.is_active(hp)}
            while values is not None:
                if not self._duplicate(values):
                    return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": values}
                values = self._get_next_combination(values)
            return response

    return ResumableGridSearchOracle


def _make_oracle(kind: str, *, hp: Any, max_trials: int, epochs: int, seed: int) -> Any:
    import keras_tuner as kt

    objective = kt.Objective("score", direction="max")
    common = dict(objective=objective, hyperparameters=hp, seed=seed,
                  tune_new_entries=False, allow_new_entries=False,
                  max_consecutive_failed_trials=max(3, max_trials))
    if kind == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(
            max_trials=max_trials, num_initial_points=min(3, max_trials), **common)
    if kind == "random":
        return kt.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if kind == "grid":
        return _resumable_grid_oracle()(max_trials=max_trials, **common)
    if kind == "hyperband":
        return kt.oracles.HyperbandOracle(max_epochs=epochs, factor=3, **common)
    raise ValueError(f"Unknown oracle {kind!r}; use one of {', '.join(ORACLES)}.")


def tune(build_fn: Any, data: Any, *, validation_data: Any = None,
         validation_split: float = 0.2, budget: Budget | None = None,
         space: SearchSpace | None = None, loss: Any = None, optimizer: Any = "adam",
         learning_rate: float = 1e-3, compile_fn: Callable[[Any], Any] | None = None,
         epochs: int = 3, batch_size: int = 32, max_trials: int = 10,
         oracle: str = "bayesian", teacher: Any = None, directory: str = "tfedge_tune",
         project_name: str = "search", overwrite: bool = False, output_dir: str | None = None,
         plot: bool = True, seed: int = 0, distribution_strategy: Any = None,
         num_calibration_samples: int = 300, latency_method: str = "macs",
         verbose: int = 0) -> TuneResult:
    """Searches compression settings whose int8 model fits a device budget.

    Each trial builds a candidate, trains it with ``tfedge.wrap`` (pruning,
    QAT and distillation as its settings say), converts it to a full-int8
    flatbuffer and scores that flatbuffer in LiteRT on the validation data.
    Trials are checked against ``budget``; infeasible ones are kept and
    marked. The search is keras-tuner's, so it resumes from ``directory``
    (finished trials are not rerun) and runs distributed when keras-tuner's
    ``KERASTUNER_*`` environment variables are set.

    Args:
        build_fn: either a function ``build_fn(width, input_shape)`` returning
            a fresh tf_keras model (``width`` is the multiplier,
            ``input_shape`` excludes the batch), or a tf_keras model, whose
            architecture is rebuilt at each width/resolution and trained from
            scratch (see :func:`scale_model`).
        data: training data ``(x, y)`` as NumPy arrays (classification, one
            output of class scores).
        validation_data: ``(x, y)`` the int8 model is scored on. Default: the
            last ``validation_split`` of ``data``. Keep the test set out.
        validation_split: used when ``validation_data`` is None.
        budget: the :class:`Budget`; None means no limits (plain Pareto search).
        space: the :class:`SearchSpace`.
        loss: the training loss (needed unless ``compile_fn`` is given), e.g.
            ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``.
        optimizer: ``"adam"`` or a callable returning a fresh optimizer.
        learning_rate: Adam's learning rate when ``optimizer="adam"``.
        compile_fn: ``compile_fn(model)`` compiling a model; overrides
            ``loss``/``optimizer`` (include an accuracy metric if you like).
        epochs: training epochs per trial (Hyperband: the maximum).
        batch_size: training batch size.
        max_trials: trials in total, counting those already in ``directory``
            (ignored by Hyperband, which sets its own schedule).
        oracle: ``"bayesian"`` (Gaussian-process Bayesian optimization),
            ``"random"``, ``"grid"`` (every combination, in order) or
            ``"hyperband"`` (trains many settings briefly and the best
            longer; each trial trains from scratch for its epoch count).
        teacher: a trained Keras model, for the distillation settings.
        directory: keras-tuner's directory (shared by chief and workers).
        project_name: keras-tuner's project name inside ``directory``.
        overwrite: start over instead of resuming.
        output_dir: where the table, JSON, plot and ``best/`` go (default:
            ``directory/project_name``).
        plot: write ``pareto.png`` (needs matplotlib).
        seed: seed of the oracle and of each trial's initialization.
        distribution_strategy: a ``tf.distribute`` strategy each trial trains
            under (e.g. ``MirroredStrategy`` over the local devices).
        num_calibration_samples: representative samples for int8 conversion.
        latency_method: how ``tfedge.estimate_latency`` estimates the
            latency on ``budget.target``: ``"macs"`` (fast, from the MACs in
            the flatbuffer) or ``"instructions"`` (one run of LiteRT's aarch64
            build under qemu per trial; exact instruction count / IPC).
        verbose: keras-tuner's progress display (0 silent, 1 per trial).

    Returns:
        A :class:`TuneResult`. On a keras-tuner worker, only the trials that
        worker ran and no files (the chief writes the report).

    Raises:
        ValueError: bad data, settings or oracle name.
        TFEdgeError: an arena budget without TFLite Micro, or QAT/distillation
            asked of a ``wrap`` that lacks them.
        ImportError: keras-tuner is missing (``pip install 'tfedge[tune]'``).

    Example:

    >>> def build(width, input_shape):  # doctest: +SKIP
    ...     inputs = keras.Input(input_shape)
    ...     h = keras.layers.Conv2D(int(16 * width), 3, activation="relu")(inputs)
    ...     h = keras.layers.GlobalAveragePooling2D()(h)
    ...     return keras.Model(inputs, keras.layers.Dense(10)(h))
    >>> result = tfedge.tune(build, (x, y), budget=tfedge.Budget(max_size_bytes=8_000),
    ...                      loss=keras.losses.SparseCategoricalCrossentropy(True),
    ...                      max_trials=6)  # doctest: +SKIP
    """
    start = time.time()
    try:
        import keras_tuner as kt
    except ImportError as err:
        raise ImportError("tfedge.tune needs keras-tuner (and tensorboard, which it imports): "
                          "pip install 'tfedge[tune]'") from err
    from keras_tuner.src.distribute import utils as dist_utils

    budget = budget or Budget()
    space = space or SearchSpace()
    if oracle not in ORACLES:
        raise ValueError(f"Unknown oracle {oracle!r}; use one of {', '.join(ORACLES)}.")
    if latency_method not in ("macs", "instructions"):
        raise ValueError(f"latency_method={latency_method!r}; use 'macs' (fast estimate) or "
                         "'instructions' (emulated under qemu).")
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs={epochs} must be a positive whole number.")
    if max_trials < 1:
        raise ValueError(f"max_trials={max_trials} must be at least 1.")
    if any(space.distill) and teacher is None:
        raise ValueError("The search space has distill=True but no teacher= was given.")
    if any(space.quantize) or any(space.distill):
        _check_wrap_supports(quantize=any(space.quantize), distill=any(space.distill))
    check_measurable(budget)
    if compile_fn is None:
        if loss is None:
            raise ValueError("tune needs loss= (e.g. keras.losses.SparseCategoricalCrossentropy"
                             "(from_logits=True)) or compile_fn=.")
        compile_fn = _default_compile(optimizer, loss, learning_rate)

    x, y = _as_xy(data, "data")
    if validation_data is None:
        if not 0.0 < validation_split < 1.0:
            raise ValueError("Give validation_data=(x, y), or validation_split in (0, 1).")
        n_val = max(1, int(round(len(x) * validation_split)))
        x, y, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    else:
        x_val, y_val = _as_xy(validation_data, "validation_data")

    if isinstance(build_fn, keras.Model):
        template = build_fn

        def make_model(width, input_shape):
            return scale_model(template, width, input_shape)
        name = template.name
    elif callable(build_fn):
        def make_model(width, input_shape):
            model = build_fn(width=width, input_shape=input_shape)
            if not isinstance(model, keras.Model):
                raise ValueError(f"build_fn returned {type(model).__name__}, not a tf_keras "
                                 "model (build it with tfedge.keras / tf.keras after "
                                 "`import tfedge`).")
            return model
        name = getattr(build_fn, "__name__", "model")
    else:
        raise ValueError("build_fn must be a tf_keras model or a function "
                         "build_fn(width, input_shape) -> model.")

    hp = kt.HyperParameters()
    space.declare(hp)
    pipeline = dict(make_model=make_model, compile_fn=compile_fn, data=(x, y),
                    validation_data=(x_val, y_val), batch_size=batch_size, teacher=teacher,
                    num_calibration=num_calibration_samples)
    with _quiet_tuner(verbose):
        tuner = tuner_class()(
            _make_oracle(oracle, hp=hp, max_trials=max_trials, epochs=epochs, seed=seed),
            pipeline=pipeline, budget=budget, epochs=int(epochs), seed=seed,
            latency_method=latency_method,
            directory=directory, project_name=project_name, overwrite=overwrite,
            distribution_strategy=distribution_strategy)
    role = ("single" if not dist_utils.has_chief_oracle() else
            "chief" if dist_utils.is_chief_oracle() else "worker")
    logging.info("tfedge tune: %s, %s oracle, %s trials, budget %s", role, oracle,
                 max_trials if oracle != "hyperband" else "hyperband", budget_text(budget))
    with _quiet_tuner(verbose):
        tuner.search(verbose=verbose)

    if role == "worker":
        trials = []
        for trial_id in tuner.ran:
            path = os.path.join(tuner.get_trial_dir(trial_id), TRIAL_FILENAME)
            if os.path.exists(path):
                with open(path) as f:
                    saved = json.load(f)
                saved.pop("feasible", None)
                trials.append(TrialRecord(**saved))
        return TuneResult(trials, [], None, budget, ran=list(tuner.ran), role=role,
                          seconds=time.time() - start)
    return write_report(collect_trials(tuner), budget, output_dir or tuner.project_dir, plot=plot,
                   name=name, ran=list(tuner.ran), role=role, seconds=time.time() - start)


@contextlib.contextmanager
def _quiet_tuner(verbose: int):
    """With verbose=0, keeps keras-tuner's prints out of stdout and its failed
    trials' tracebacks out of stderr (tfedge logs a one-line reason instead)."""
    if verbose:
        yield
        return
    from keras_tuner.src import config as kt_config

    debug, kt_config.DEBUG = kt_config.DEBUG, False
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # The Bayesian oracle's Gaussian process warns on every fit of few points.
            warnings.filterwarnings("ignore", module="sklearn.gaussian_process")
            yield
    finally:
        kt_config.DEBUG = debug


def _check_wrap_supports(*, quantize: bool, distill: bool) -> None:
    """Fails fast if the search asks for QAT / distillation this wrap lacks."""
    params = inspect.signature(wrap).parameters
    missing = [name for name, wanted in (("quantize", quantize), ("teacher", distill))
               if wanted and name not in params]
    if missing:
        raise TFEdgeError(
            f"The search space asks for {' and '.join(missing)}, but this tfedge.wrap has no "
            f"{', '.join(m + '=' for m in missing)} option yet. Use quantize=[False] and "
            "distill=[False] in the SearchSpace.")
