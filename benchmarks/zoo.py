"""keras.applications models through wrap: prune 50% -> QAT -> full int8.

Per model (random init, small input): pass/fail of each stage (wrap, fit,
finish, convert, validate), float ops left in the int8 file, its size,
Keras-vs-LiteRT top-1 agreement on held-out smoke data, wall time of each
stage, and the training step time of the plain Keras model next to the
wrapped one. What ``tfedge.prepare`` rewrote is recorded with its numerical
check.

Smoke data: scikit-learn's digits upsampled to the model's input (RGB, pixel
values 0-255 as keras.applications' built-in preprocessing expects). The
plain model is trained first, 8 epochs at Adam 3e-3 (its step time is the
plain step; with 4 epochs the models stood at 68-96% float accuracy on digits,
and top-1 of a model that has not learned the task is decided by near-ties
that any rounding flips), then
wrapped and fine-tuned one epoch pruning, one epoch QAT (the wrapped step is
the QAT epoch's median batch). The step ratio is measured after the row's
other stages, side by side: both models' traced train functions (the plain
model's from its training, the wrapped one's from its QAT epoch) take turns
in rounds of a few steps on the same batches (:func:`interleaved_steps`), so
that machine load hits both alike; the median of the rounds' ratios is the
row's ``step_ratio``. The in-fit medians stay as ``plain_step_s`` /
``wrapped_step_s`` (``fit_step_ratio``), which load moved by up to 0.4x
between two runs of the same row. Agreement is measured on held-out digits, so
top-1 is decided by a model that learned something, not by near-ties of an
untrained one on noise. The first batch of each phase (graph tracing) and
the hand-over between phases are recorded apart from the steps.

Each model's row is written to the JSON as soon as it is done, so a run cut
short keeps what it measured.

    python benchmarks/zoo.py [--models MobileNetV3Small,EfficientNetB0] [--keras 2|3|both]
                             [--train 1024] [--test 256] [--plain-epochs 8]
                             [--out benchmarks/results/zoo.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tfedge  # noqa: E402  (first: tf.keras is tf_keras)
from tfedge import keras3 as bridge_lib  # noqa: E402
from tfedge._keras import is_keras3_model, keras  # noqa: E402
from tfedge.data import load_digits  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402
from recipes.data import digits_rgb  # noqa: E402

# Smallest sensible input per model (keras.applications minimum: 32 px for
# most; NASNetMobile needs 32 too with include_top; ConvNeXt 32).
SIZES = {"MobileNet": 32, "MobileNetV2": 32, "MobileNetV3Small": 32, "MobileNetV3Large": 32,
         "EfficientNetB0": 32, "EfficientNetV2B0": 32, "ResNet50": 32, "DenseNet121": 32,
         "NASNetMobile": 32, "RegNetX002": 32, "ConvNeXtTiny": 32}
BATCH = 32
SETTINGS = {"train": 1024, "test": 256, "plain_epochs": 8}


def batch_times(keras_mod) -> object:
    """A callback (of ``keras_mod``) timing every training batch, per epoch, and
    the gaps between epochs (where tfedge hands over from one phase to the next)."""

    class BatchTimes(keras_mod.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs: list[list[float]] = []
            self.gaps: list[float] = []
            self._end = None

        def on_epoch_begin(self, epoch, logs=None):
            if self._end is not None:
                self.gaps.append(time.perf_counter() - self._end)
            self.epochs.append([])

        def on_epoch_end(self, epoch, logs=None):
            self._end = time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.epochs[-1].append(time.perf_counter() - self._t)

        def summary(self) -> dict:
            return {"first_batch_s": [e[0] for e in self.epochs if e],
                    "median_batch_s": [float(np.median(e)) for e in self.epochs if e],
                    "between_epochs_s": self.gaps}

    return BatchTimes()


def interleaved_steps(plain, edge, x, y, *, rounds: int = 8,
                      seconds_per_round: float = 0.5) -> dict:
    """The plain and the wrapped training step, timed side by side.

    ``plain`` and ``edge`` have trained (``fit`` traced their train functions:
    the plain model's, and the wrapped model's in its last phase). Each round
    runs ``k`` steps of one, then ``k`` of the other, on the same batches of
    ``x``, ``y`` (``k`` from the plain step measured in a warm-up round, so that a
    round of the plain model lasts about ``seconds_per_round``; 1 to 8). Both
    models train on: call this when the row needs neither any more.

    Returns:
        ``{"rounds", "steps_per_round", "plain_step_s", "wrapped_step_s",
        "ratio", "ratios"}``: the median step of each over the rounds, and the
        median of the per-round ratios (wrapped / plain), which a change of load
        between rounds does not bias.
    """
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH, drop_remainder=True)
    functions = [(plain.train_function, iter(data.repeat())),
                 (edge.train_function, iter(data.repeat()))]

    def timed(function, iterator, k):
        start = time.perf_counter()
        for _ in range(k):
            function(iterator)
        return (time.perf_counter() - start) / k

    warm = [timed(f, it, 2) for f, it in functions]  # also any retrace after fit
    k = int(np.clip(round(seconds_per_round / max(warm[0], 1e-6)), 1, 8))
    steps = [[timed(f, it, k) for f, it in functions] for _ in range(rounds)]
    ratios = [w / p for p, w in steps]
    return {"rounds": rounds, "steps_per_round": k,
            "plain_step_s": float(np.median([p for p, _ in steps])),
            "wrapped_step_s": float(np.median([w for _, w in steps])),
            "ratio": float(np.median(ratios)), "ratios": [float(r) for r in ratios]}


def smoke_data(size: int) -> tuple:
    """Held-out digits at ``size`` x ``size`` RGB, 0-255: (x_train, y_train, x_test, y_test)."""
    (x_train, y_train), (x_test, y_test) = load_digits()
    n_train, n_test = SETTINGS["train"], SETTINGS["test"]
    return (digits_rgb(x_train[:n_train], size) * 255, y_train[:n_train],
            digits_rgb(x_test[:n_test], size) * 255, y_test[:n_test])


def build(name: str, keras_mod) -> object:
    size = SIZES[name]
    kwargs = dict(input_shape=(size, size, 3), weights=None, classes=10)
    return getattr(keras_mod.applications, name)(**kwargs)


def train_plain(model, keras_mod, x, y, callbacks=()) -> object:
    """Trains the zoo's plain ``model`` in place: BatchNormalization momentum 0.9 (a
    setting for short runs, as zoo_accuracy), ``plain_epochs`` at Adam 3e-3."""
    for layer in model.layers:
        if isinstance(layer, keras_mod.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(keras_mod.optimizers.Adam(3e-3), loss_for(model, keras_mod),
                  metrics=["accuracy"])  # keyword: Keras 3's third is loss_weights
    model.fit(x, y, batch_size=BATCH, epochs=SETTINGS["plain_epochs"], verbose=0,
              callbacks=list(callbacks))
    return model


def prune_qat(model, x, y, *, qat: dict | None = None, callbacks=()) -> object:
    """``wrap`` (prune 50% for one epoch, then QAT, ``QATConfig(start_epoch=1, **qat)``),
    fine-tuned 2 epochs at Adam 3e-4: the trained EdgeModel."""
    edge = tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, end_epoch=1),
                       quantize=tfedge.QATConfig(start_epoch=1, **(qat or {})))
    edge.compile(keras.optimizers.Adam(3e-4), loss_for(model, keras), ["accuracy"])
    edge.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=list(callbacks))
    return edge


def loss_for(model, keras_mod) -> object:
    """Cross-entropy on what ``model`` outputs: probabilities or logits.

    tf_keras' RegNet ends in a plain Dense whatever ``classifier_activation``
    says (its ``Head`` ignores it), so it outputs logits; a probability loss
    on logits trains nothing (RegNetX002 stayed at 11%)."""
    activation = getattr(model.layers[-1], "activation", None)
    softmax = getattr(activation, "__name__", None) == "softmax"
    return keras_mod.losses.SparseCategoricalCrossentropy(from_logits=not softmax)


def _commit() -> str | None:
    """The git commit the row was measured at (rows of several runs share the JSON)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def keras3_bridge_facts(model, edge) -> dict:
    """For a Keras 3 source: how exactly ``wrap``'s bridge carried it to tf_keras.

    The copy's every layer output against the trained Keras 3 model's on the
    same random inputs, in units of the bridge's float tolerance (0 is
    bit-identical), and what the translation rewrote by its exact maths.
    """
    copy = edge.keras3_bridge.tf_keras_model
    facts = {"constant_ops": sum(type(layer).__name__ == "ConstantOp" for layer in copy.layers),
             "activations": sorted({getattr(layer.activation, "__name__", "?")
                                    for layer in copy.layers
                                    if callable(getattr(layer, "activation", None))})}
    try:
        facts["worst_vs_tolerance"] = bridge_lib.check_equivalent(model, copy, what="zoo copy")
    except Exception as err:  # noqa: BLE001 - recorded, the row goes on
        facts["check_error"] = f"{type(err).__name__}: {str(err)[:300]}"
    return facts


def run_model(name: str, keras_mod, label: str) -> dict:
    size = SIZES[name]
    x, y, x_test, y_test = smoke_data(size)
    row: dict = {"model": name, "keras": label, "input": size, "stages": {}, "seconds": {},
                 "settings": dict(SETTINGS), "commit": _commit()}  # rows of several runs
    t_all = time.perf_counter()
    stage = "build"
    if not hasattr(keras_mod.applications, name):  # a fact of that Keras, not a tfedge failure
        row["absent"] = (f"keras.applications of Keras {keras_mod.__version__} has no {name} "
                         "(tf_keras' has it: see the Keras 2 row)")
        row["seconds"]["total"] = 0.0
        return row
    try:
        keras_mod.utils.set_random_seed(0)
        model = build(name, keras_mod)
        row["params"] = int(model.count_params())
        stage = "train"  # the plain Keras model, trained briefly: its step is the plain step
        t = time.perf_counter()
        times = batch_times(keras_mod)
        train_plain(model, keras_mod, x, y, callbacks=[times])
        row["seconds"]["train"] = time.perf_counter() - t
        row["plain_step_s"] = float(np.median(times.epochs[-1]))
        row["plain_batches"] = times.summary()
        if label == "3":  # jit_compile="auto" could pick XLA for the plain step: recorded
            row["plain_jit_compile"] = bool(model.jit_compile)
        row["float_accuracy"] = float(model.evaluate(x_test, y_test, verbose=0)[1])
        stage = "wrap"
        t = time.perf_counter()
        edge = tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, end_epoch=1),
                           quantize=tfedge.QATConfig(start_epoch=1))
        row["seconds"]["wrap"] = time.perf_counter() - t
        row["stages"]["wrap"] = "pass"
        if label == "3":
            row["bridge"] = keras3_bridge_facts(model, edge)
        row["prepared"] = getattr(edge, "preparation", None) and edge.preparation.to_dict()
        stage = "fit"
        t = time.perf_counter()
        edge.compile(keras.optimizers.Adam(3e-4), loss_for(model, keras), ["accuracy"])
        times = batch_times(keras)
        edge.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[times])
        row["seconds"]["fit"] = time.perf_counter() - t
        row["wrapped_step_s"] = float(np.median(times.epochs[-1]))
        row["wrapped_batches"] = times.summary()  # epoch 0 prune, epoch 1 QAT
        row["fit_step_ratio"] = row["wrapped_step_s"] / row["plain_step_s"]
        row["stages"]["fit"] = "pass"
        row["float_layers"] = sorted(edge.qat_plan.skipped) if edge.qat_plan else []
        stage = "finish"
        t = time.perf_counter()
        final = edge.finish()
        row["seconds"]["finish"] = time.perf_counter() - t
        row["stages"]["finish"] = "pass"
        row["finish_returns"] = "keras 3" if is_keras3_model(final) else "tf_keras"
        stage = "convert"
        t = time.perf_counter()
        art = tfedge.convert(final, x[:100])
        row["seconds"]["convert"] = time.perf_counter() - t
        row["float_ops"] = [op.name for op in art.flatbuffer.float_ops()]
        row["int8_bytes"] = art.size_bytes
        row["ops"] = art.ops
        row["mode"] = art.mode
        row["stages"]["convert"] = "pass" if art.mode == "int8" and not row["float_ops"] \
            else "fail"
        stage = "validate"
        t = time.perf_counter()
        report = tfedge.validate(art, final, x_test, y_test)
        row["seconds"]["validate"] = time.perf_counter() - t
        row["agreement"] = report.agreement
        row["near_ties"] = report.near_ties  # disagreements Keras itself scores 2 steps apart
        row["validated_samples"] = report.num_samples
        row["qat_keras_accuracy"] = report.keras_accuracy
        row["int8_accuracy"] = report.tflite_accuracy
        row["stages"]["validate"] = "pass" if report.agreement >= 0.99 else "fail"
        stage = "step timing"  # last: both models train on
        row["interleaved"] = interleaved_steps(model, edge, x, y)
        row["step_ratio"] = row["interleaved"]["ratio"]
    except Exception as err:  # a benchmark records failures and goes on
        row["stages"][stage] = "fail"
        row["error"] = f"{type(err).__name__}: {str(err)[:400]}"
        traceback.print_exc()
    row["seconds"]["total"] = time.perf_counter() - t_all
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SIZES))
    parser.add_argument("--keras", default="2", choices=("2", "3", "both"))
    parser.add_argument("--train", type=int, default=SETTINGS["train"])
    parser.add_argument("--test", type=int, default=SETTINGS["test"])
    parser.add_argument("--plain-epochs", type=int, default=SETTINGS["plain_epochs"])
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --out (other models or Keras)")
    parser.add_argument("--out", default="benchmarks/results/zoo.json")
    args = parser.parse_args(argv)
    SETTINGS.update(train=args.train, test=args.test, plain_epochs=args.plain_epochs)
    labels = ["2", "3"] if args.keras == "both" else [args.keras]
    rows = []
    if args.append and os.path.exists(args.out):
        with open(args.out) as f:
            rows = json.load(f)["rows"]
    for label in labels:
        if label == "3":
            import keras as keras_mod  # Keras 3 (tfedge's bridge carries it to tf_keras)
        else:
            keras_mod = keras
        for name in args.models.split(","):
            print(f"== {name} (Keras {label})", flush=True)
            row = run_model(name, keras_mod, label)
            rows = [r for r in rows if (r["model"], r["keras"]) != (name, label)] + [row]
            write_json(args.out, {"batch": BATCH, "settings": SETTINGS,
                                  "data": "sklearn digits upsampled to RGB 0-255",
                                  "rows": rows})
    stages = ("wrap", "fit", "finish", "convert", "validate")
    table = [[r["model"], r["keras"],
              *[r["stages"].get(s, "absent" if "absent" in r else "-") for s in stages],
              len(r["float_ops"]) if "float_ops" in r else "-",
              r.get("int8_bytes", "-"),
              f"{100 * r['agreement']:.1f}%" if r.get("agreement") is not None else "-",
              r.get("float_accuracy", "-"), r.get("int8_accuracy", "-"),
              r["seconds"].get("wrap", "-"), r.get("interleaved", {}).get("plain_step_s", "-"),
              r.get("interleaved", {}).get("wrapped_step_s", "-"), r.get("step_ratio", "-"),
              r.get("fit_step_ratio", "-"), r["seconds"]["total"]]
             for r in rows]
    print(format_table(["model", "keras", *stages, "float ops", "int8 bytes", "agree",
                        "float acc", "int8 acc",
                        "wrap s", "plain step s", "wrapped step s", "ratio", "in-fit ratio",
                        "total s"],
                       table, title="keras.applications: prune 50% -> QAT -> int8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
