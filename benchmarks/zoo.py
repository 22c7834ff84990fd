"""keras.applications models through wrap: prune 50% -> QAT -> full int8.

Per model (random weights, small input): pass/fail of each stage (wrap, fit,
finish, convert, validate), float ops left in the int8 file, its size,
Keras-vs-LiteRT top-1 agreement on the smoke data, wall time of each stage,
and the training step time of the plain Keras model next to the wrapped one
(median batch time of the QAT epoch vs the plain model's second epoch). What
``tfedge.prepare`` rewrote is recorded with its numerical check.

Each model's row is written to the JSON as soon as it is done, so a run cut
short keeps what it measured.

    python benchmarks/zoo.py [--models MobileNetV3Small,EfficientNetB0] [--keras 2|3|both]
                             [--out benchmarks/results/zoo.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfedge  # noqa: E402  (first: tf.keras is tf_keras)
from tfedge._keras import keras  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402

# Smallest sensible input per model (keras.applications minimum: 32 px for
# most; NASNetMobile needs 32 too with include_top; ConvNeXt 32).
SIZES = {"MobileNet": 32, "MobileNetV2": 32, "MobileNetV3Small": 32, "MobileNetV3Large": 32,
         "EfficientNetB0": 32, "EfficientNetV2B0": 32, "ResNet50": 32, "DenseNet121": 32,
         "NASNetMobile": 32, "RegNetX002": 32, "ConvNeXtTiny": 32}
BATCH, STEPS = 8, 4


class BatchTimes(keras.callbacks.Callback):
    """Wall time of every training batch, per epoch."""

    def __init__(self):
        super().__init__()
        self.epochs: list[list[float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([])

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.epochs[-1].append(time.perf_counter() - self._t)


def build(name: str, keras_mod) -> object:
    size = SIZES[name]
    kwargs = dict(input_shape=(size, size, 3), weights=None, classes=10)
    return getattr(keras_mod.applications, name)(**kwargs)


def run_model(name: str, keras_mod, label: str) -> dict:
    size = SIZES[name]
    rng = np.random.default_rng(0)
    x = (rng.random((BATCH * STEPS, size, size, 3)) * 255).astype("float32")
    y = rng.integers(0, 10, BATCH * STEPS)
    row: dict = {"model": name, "keras": label, "input": size, "stages": {}, "seconds": {}}
    t_all = time.perf_counter()
    stage = "build"
    try:
        model = build(name, keras_mod)
        row["params"] = int(model.count_params())
        if label == "2":  # the plain Keras step of the same model
            plain = keras.models.clone_model(model)
            plain.compile("adam", "sparse_categorical_crossentropy")
            times = BatchTimes()
            plain.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[times])
            row["plain_step_s"] = float(np.median(times.epochs[-1]))
        stage = "wrap"
        t = time.perf_counter()
        edge = tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, end_epoch=1),
                           quantize=tfedge.QATConfig(start_epoch=1))
        row["seconds"]["wrap"] = time.perf_counter() - t
        row["stages"]["wrap"] = "pass"
        row["prepared"] = getattr(edge, "preparation", None) and edge.preparation.to_dict()
        stage = "fit"
        t = time.perf_counter()
        edge.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        times = BatchTimes()
        edge.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[times])
        row["seconds"]["fit"] = time.perf_counter() - t
        row["wrapped_step_s"] = float(np.median(times.epochs[-1]))
        if "plain_step_s" in row:
            row["step_ratio"] = row["wrapped_step_s"] / row["plain_step_s"]
        row["stages"]["fit"] = "pass"
        row["float_layers"] = sorted(edge.qat_plan.skipped) if edge.qat_plan else []
        stage = "finish"
        t = time.perf_counter()
        final = edge.finish()
        row["seconds"]["finish"] = time.perf_counter() - t
        row["stages"]["finish"] = "pass"
        stage = "convert"
        t = time.perf_counter()
        art = tfedge.convert(final, x[:16])
        row["seconds"]["convert"] = time.perf_counter() - t
        row["float_ops"] = [op.name for op in art.flatbuffer.float_ops()]
        row["int8_bytes"] = art.size_bytes
        row["ops"] = art.ops
        row["mode"] = art.mode
        row["stages"]["convert"] = "pass" if art.mode == "int8" and not row["float_ops"] \
            else "fail"
        stage = "validate"
        t = time.perf_counter()
        report = tfedge.validate(art, final, x)
        row["seconds"]["validate"] = time.perf_counter() - t
        row["agreement"] = report.agreement
        row["stages"]["validate"] = "pass" if report.agreement >= 0.99 else "fail"
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
    parser.add_argument("--out", default="benchmarks/results/zoo.json")
    args = parser.parse_args(argv)
    labels = ["2", "3"] if args.keras == "both" else [args.keras]
    rows = []
    for label in labels:
        if label == "3":
            import keras as keras_mod  # Keras 3 (tfedge's bridge carries it to tf_keras)
        else:
            keras_mod = keras
        for name in args.models.split(","):
            print(f"== {name} (Keras {label})", flush=True)
            rows.append(run_model(name, keras_mod, label))
            write_json(args.out, {"batch": BATCH, "steps_per_epoch": STEPS, "rows": rows})
    stages = ("wrap", "fit", "finish", "convert", "validate")
    table = [[r["model"], r["keras"], *[r["stages"].get(s, "-") for s in stages],
              len(r["float_ops"]) if "float_ops" in r else "-",
              r.get("int8_bytes", "-"),
              f"{100 * r['agreement']:.1f}%" if r.get("agreement") is not None else "-",
              r["seconds"].get("wrap", "-"), r.get("plain_step_s", "-"),
              r.get("wrapped_step_s", "-"), r.get("step_ratio", "-"), r["seconds"]["total"]]
             for r in rows]
    print(format_table(["model", "keras", *stages, "float ops", "int8 bytes", "agree",
                        "wrap s", "plain step s", "wrapped step s", "ratio", "total s"],
                       table, title="keras.applications: prune 50% -> QAT -> int8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
