"""Compression side by side: float, PTQ, QAT, prune+PQAT, distilled student, student alone.

Two model families, each trained from the same seed on scikit-learn's digits:

* ``digits_cnn``: the small CNN of the test suite (8x8x1);
* ``mobilenet``: a MobileNetV1-style model (3x3 stem, depthwise-separable
  blocks, BatchNorm, ReLU6, global pooling) on the digits upsampled to 32x32x3.

For each, in one run: the float model (TFLite float32), post-training int8,
QAT int8 (fine-tuned from the float model, converted without calibration
data), prune-80% then PQAT int8 (one ``wrap``/``fit``, phases switched by
epoch), a student with a quarter of the teacher's width distilled from the
float model (int8), and the same student trained alone (int8). Reported per
variant: Keras and TFLite test accuracy, top-1 agreement between them, file
size, gzip size, and the training time spent to get it (wall and CPU seconds,
cumulative: the QAT rows include the float model's training).

    python benchmarks/compression.py [--families digits_cnn mobilenet] [--out ...]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfedge  # noqa: E402
from tfedge import keras  # noqa: E402
from tfedge.data import load_digits  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402


# ----------------------------------------------------------------------------
# Models and data
# ----------------------------------------------------------------------------
def digits_cnn(width: int, name: str) -> keras.Model:
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="c1")(inputs)
    h = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu",
                            name="c2")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(4 * width, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name=name)


def mobilenet(width: int, name: str) -> keras.Model:
    """MobileNetV1-style, int8-friendly (ReLU6, BN after every conv)."""
    def conv_bn(h, filters, kernel, strides=1, depthwise=False):
        if depthwise:
            h = keras.layers.DepthwiseConv2D(kernel, strides, padding="same", use_bias=False)(h)
        else:
            h = keras.layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False)(h)
        h = keras.layers.BatchNormalization()(h)
        return keras.layers.ReLU(6.0)(h)

    inputs = keras.Input((32, 32, 3), name="image")
    h = conv_bn(inputs, width, 3, strides=2)  # 16x16
    for multiple, strides in ((2, 1), (4, 2), (4, 1), (8, 2)):  # -> 4x4
        h = conv_bn(h, None, 3, strides, depthwise=True)
        h = conv_bn(h, multiple * width, 1)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name=name)


def upsampled_digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    import tensorflow as tf

    (x, y), (x_test, y_test) = load_digits()

    def up(a):
        return np.repeat(tf.image.resize(a, (32, 32), "bilinear").numpy(), 3, axis=-1)
    return (up(x), y), (up(x_test), y_test)


FAMILIES: dict[str, dict[str, Any]] = {
    "digits_cnn": {"build": digits_cnn, "width": 16, "data": load_digits, "epochs": 15,
                   "lr": 1e-3},
    "mobilenet": {"build": mobilenet, "width": 32, "data": upsampled_digits, "epochs": 20,
                  "lr": 2e-3},
}


# ----------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------
def compile_(model: Any, lr: float, decay_steps: int | None = None) -> Any:
    """Adam; with ``decay_steps`` (training from scratch) a cosine-decayed rate,
    so the float baselines are converged and later fine-tuning gains are not
    mistaken for the technique's."""
    if decay_steps:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps)
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    return model


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str, keras_model: Any, artifact: Any, x_test: np.ndarray,
            y_test: np.ndarray, wall: float, cpu: float, note: str = "") -> dict[str, Any]:
    report = tfedge.validate(artifact, keras_model, x_test, y_test)
    return {"variant": name, "mode": artifact.mode, "params": int(keras_model.count_params()),
            "keras_accuracy": report.keras_accuracy, "tflite_accuracy": report.tflite_accuracy,
            "agreement": report.agreement, "size_bytes": artifact.size_bytes,
            "gzip_bytes": len(gzip.compress(artifact.content, 9)),
            "weight_sparsity": _sparsity(artifact), "train_wall_s": wall, "train_cpu_s": cpu,
            "note": note}


def _sparsity(artifact: Any) -> float:
    rows = artifact.flatbuffer.weight_sparsity()
    size = sum(r["size"] for r in rows)
    return sum(r["sparsity"] * r["size"] for r in rows) / size if size else 0.0


def run_family(family: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    spec = FAMILIES[family]
    (x, y), (x_test, y_test) = spec["data"]()
    epochs, lr, width, build = spec["epochs"], spec["lr"], spec["width"], spec["build"]
    fit = dict(batch_size=32, verbose=0)
    calibration = x[:300]
    steps = -(-len(x) // 32) * epochs
    rows = []
    log = lambda msg: print(f"[{family}] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    keras.utils.set_random_seed(0)
    teacher = compile_(build(width, f"{family}_float"), lr, steps)
    _, t_wall, t_cpu = timed(lambda: teacher.fit(x, y, epochs=epochs, **fit))
    rows.append(measure("float", teacher, tfedge.convert(teacher, mode="float32"),
                        x_test, y_test, t_wall, t_cpu))
    rows.append(measure("PTQ int8", teacher, tfedge.convert(teacher, calibration),
                        x_test, y_test, t_wall, t_cpu, "300 calibration samples"))
    log("float + PTQ done")

    keras.utils.set_random_seed(0)
    qat = compile_(tfedge.wrap(teacher, quantize=True), args.qat_lr)
    _, wall, cpu = timed(lambda: qat.fit(x, y, epochs=args.qat_epochs, **fit))
    qat_model = qat.finish()
    rows.append(measure("QAT int8", qat_model, tfedge.convert(qat_model), x_test, y_test,
                        t_wall + wall, t_cpu + cpu,
                        f"+{args.qat_epochs} QAT epochs, no calibration data"))
    log("QAT done")

    keras.utils.set_random_seed(0)
    prune_epochs = args.prune_epochs
    pqat = compile_(tfedge.wrap(
        teacher, prune=tfedge.PruneConfig(0.8, end_epoch=prune_epochs),
        quantize=tfedge.QATConfig(learning_rate=args.qat_lr)), lr / 2)
    _, wall, cpu = timed(lambda: pqat.fit(x, y, epochs=prune_epochs + args.qat_epochs, **fit))
    pqat_model = pqat.finish()
    rows.append(measure("prune 80% + PQAT int8", pqat_model, tfedge.convert(pqat_model),
                        x_test, y_test, t_wall + wall, t_cpu + cpu,
                        f"+{prune_epochs} prune (lr {lr / 2:g}) + {args.qat_epochs} PQAT epochs, "
                        "one fit; tfmot does not prune depthwise kernels"))
    log("prune + PQAT done")

    keras.utils.set_random_seed(1)
    student = build(width // 4, f"{family}_student")
    distilled = compile_(tfedge.wrap(student, teacher=teacher, distill=tfedge.DistillConfig(
        temperature=args.temperature, alpha=args.alpha)), lr, steps)
    _, wall, cpu = timed(lambda: distilled.fit(x, y, epochs=epochs, **fit))
    distilled_model = distilled.finish()
    rows.append(measure("distilled student int8", distilled_model,
                        tfedge.convert(distilled_model, calibration), x_test, y_test,
                        t_wall + wall, t_cpu + cpu,
                        f"width/4, T={args.temperature}, alpha={args.alpha}, PTQ"))
    log("distillation done")

    keras.utils.set_random_seed(1)
    alone = compile_(build(width // 4, f"{family}_student"), lr, steps)
    _, wall, cpu = timed(lambda: alone.fit(x, y, epochs=epochs, **fit))
    rows.append(measure("student alone int8", alone, tfedge.convert(alone, calibration),
                        x_test, y_test, wall, cpu, "width/4, same init and epochs, PTQ"))
    log("student alone done")
    for row in rows:
        row["family"] = family
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES),
                        help="Model families to run (default: all).")
    parser.add_argument("--qat-epochs", type=int, default=3,
                        help="QAT fine-tuning epochs (default 3).")
    parser.add_argument("--qat-lr", type=float, default=1e-4,
                        help="Learning rate of QAT fine-tuning (default 1e-4).")
    parser.add_argument("--prune-epochs", type=int, default=4,
                        help="Epochs of pruning to 80%% before PQAT (default 4).")
    parser.add_argument("--temperature", type=float, default=4.0,
                        help="Distillation temperature (default 4).")
    parser.add_argument("--alpha", type=float, default=0.1,
                        help="Weight of the hard-label loss in distillation (default 0.1).")
    parser.add_argument("--out", default="benchmarks/results/compression.json",
                        help="Where to write the JSON results.")
    args = parser.parse_args(argv)

    rows = []
    for family in args.families:
        rows += run_family(family, args)
        keras.backend.clear_session()

    def pct(v):
        return f"{100 * v:.2f}%"
    table = [[r["family"], r["variant"], r["params"], pct(r["keras_accuracy"]),
              pct(r["tflite_accuracy"]), pct(r["agreement"]), r["size_bytes"], r["gzip_bytes"],
              pct(r["weight_sparsity"]), f"{r['train_wall_s']:.1f}", f"{r['train_cpu_s']:.1f}"]
             for r in rows]
    print(format_table(["family", "variant", "params", "keras acc", "tflite acc", "agreement",
                        "bytes", "gzip bytes", "sparsity", "train s", "train cpu s"], table,
                       title="Compression on digits (test split, 450 images)"))
    result = {"settings": vars(args), "rows": rows}
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
