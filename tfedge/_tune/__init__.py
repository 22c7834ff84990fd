"""``tfedge.tune``: search compression settings under a device budget.

Which sparsity, which width, QAT or not, which resolution? ``tune`` answers
it by running the real pipeline for each candidate -- build, ``wrap``, train,
``finish``, full-int8 ``convert`` -- and scoring the **int8 flatbuffer** in
LiteRT (:func:`tfedge.validate`), never the float Keras model. Each trial is
checked against a :class:`Budget` (file size, estimated latency on a named
target, tensor-arena size, minimum accuracy); trials that break it are kept
and marked infeasible. The result is the Pareto front (accuracy vs size vs
latency) as a table, JSON and PNG, plus the best feasible model with its
model card.

The search itself is keras-tuner's: its oracles decide what to try
(Bayesian optimization, random search or Hyperband), its project directory
makes the search resumable, and its chief/worker mode (``KERASTUNER_TUNER_ID``,
``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``) spreads trials over
processes and machines. tfedge only subclasses ``keras_tuner.Tuner`` and
overrides ``run_trial``, the documented way to tune anything.

Example:

>>> result = tfedge.tune(build_fn, (x_train, y_train), validation_data=(x_val, y_val),
...                      budget=tfedge.Budget(max_size_bytes=20_000, min_accuracy=0.9),
...                      max_trials=8, directory="tune_runs")  # doctest: +SKIP
>>> print(result)  # doctest: +SKIP


The stage is a package along its topics: :mod:`~tfedge._tune.space`
(budget, search space), :mod:`~tfedge._tune.scaling` (width and
resolution), :mod:`~tfedge._tune.trial` (one trial, keras-tuner's Tuner),
:mod:`~tfedge._tune.results` (Pareto front, reports) and
:mod:`~tfedge._tune.search` (``tune()``).
"""

from tfedge._tune.results import TuneResult, pareto_front, plot_pareto
from tfedge._tune.scaling import resize_images, scale_model
from tfedge._tune.search import tune
from tfedge._tune.space import ORACLES, Budget, SearchSpace, TrialSettings, score
from tfedge._tune.trial import MODEL_FILENAME, TRIAL_FILENAME, TrialRecord, run_pipeline

__all__ = ["tune", "Budget", "SearchSpace", "TuneResult", "TrialSettings", "TrialRecord",
           "score", "pareto_front", "plot_pareto", "scale_model", "resize_images",
           "run_pipeline", "ORACLES", "MODEL_FILENAME", "TRIAL_FILENAME"]
