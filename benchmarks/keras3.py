"""The Keras 3 bridge: what it costs and how exact it is, per keras.applications model.

For each model (weights=None, BatchNorm statistics taken from real images so
no layer is trivially constant): the time of ``tfedge.keras3.to_tf_keras``
(translation, graph rebuild, weight copy and the every-layer check) and of
``to_keras3`` back, and the largest difference over every layer's output in
units of the bridge's float tolerance (``1e-5 + 1e-4 * max|value|``; 0 means
bit-identical).

Then, side by side in one run, ``tfedge.convert`` of the same QAT MobileNetV2
handing the TFLite converter the whole tf_keras model (what it did before)
vs ``tfedge.keras3.variable_holder`` (its variables only), and whether the
two flatbuffers are the same bytes.

    python benchmarks/keras3.py [--models MobileNetV2,ResNet50] [--skip-convert]
                                [--out benchmarks/results/keras3.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfedge  # noqa: E402  (first: tf.keras is tf_keras; `import keras` stays Keras 3)
from tfedge import keras3 as bridge  # noqa: E402
from tfedge import source as source_lib  # noqa: E402
from tfedge.data import load_digits  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402

import keras  # noqa: E402  (Keras 3)

MODELS = {
    "MobileNetV2": lambda: keras.applications.MobileNetV2(
        weights=None, alpha=0.35, input_shape=(96, 96, 3), classes=10),
    "MobileNet": lambda: keras.applications.MobileNet(
        weights=None, alpha=0.25, input_shape=(96, 96, 3), classes=10),
    "EfficientNetB0": lambda: keras.applications.EfficientNetB0(
        weights=None, input_shape=(96, 96, 3), classes=10),
    "ResNet50": lambda: keras.applications.ResNet50(
        weights=None, input_shape=(96, 96, 3), classes=10),
}


def images(size: int, n: int = 16) -> np.ndarray:
    """Real digits, upscaled to size x size x 3."""
    (x, _), _ = load_digits()
    x = np.repeat(x[:n], 3, axis=3)
    import tensorflow as tf

    return tf.image.resize(x, (size, size), method="nearest").numpy()


def calibrate_batchnorm(model, x) -> None:
    """BatchNorm statistics of real images, as after training."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(x, training=True)


def bridge_row(name: str) -> dict:
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    calibrate_batchnorm(model, images(model.inputs[0].shape[1]))
    start = time.perf_counter()
    tf_model = bridge.to_tf_keras(model)
    there = time.perf_counter() - start
    start = time.perf_counter()
    back = bridge.to_keras3(tf_model, like=model)
    back_s = time.perf_counter() - start
    return {"model": name, "params": int(model.count_params()), "layers": len(model.layers),
            "to_tf_keras_s": round(there, 2), "to_keras3_s": round(back_s, 2),
            "worst_vs_tolerance_there": bridge.check_equivalent(model, tf_model, what="copy"),
            "worst_vs_tolerance_back": bridge.check_equivalent(model, back, what="back")}


def convert_rows() -> list[dict]:
    keras.utils.set_random_seed(0)
    model = MODELS["MobileNetV2"]()
    qat = tfedge.wrap(model, quantize=True).finish()  # a tf_keras QAT model
    holder = source_lib.variable_holder
    rows, contents = [], []
    for label, fn in (("whole tf_keras model", lambda m: m), ("variables only", holder)):
        source_lib.variable_holder = fn  # what tfedge.convert hands the converter
        try:
            start = time.perf_counter()
            artifact = tfedge.convert(qat)
            seconds = time.perf_counter() - start
        finally:
            source_lib.variable_holder = holder
        contents.append(artifact.content)
        rows.append({"trackable": label, "convert_s": round(seconds, 1),
                     "bytes": artifact.size_bytes})
    for row in rows:
        row["same_bytes"] = contents[0] == contents[1]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated keras.applications models to bridge")
    parser.add_argument("--skip-convert", action="store_true",
                        help="skip the QAT MobileNetV2 conversion comparison (minutes); "
                             "the one already in --out is kept")
    parser.add_argument("--out", default="benchmarks/results/keras3.json",
                        help="where to write the JSON results")
    args = parser.parse_args(argv)

    rows = [bridge_row(name) for name in args.models.split(",")]
    print(format_table(
        ["model", "params", "layers", "to_tf_keras s", "to_keras3 s", "worst/tol there",
         "worst/tol back"],
        [[r["model"], r["params"], r["layers"], r["to_tf_keras_s"], r["to_keras3_s"],
          f"{r['worst_vs_tolerance_there']:.3g}", f"{r['worst_vs_tolerance_back']:.3g}"]
         for r in rows]))
    result = {"bridge": rows}
    if args.skip_convert and os.path.exists(args.out):  # keep the last conversion comparison
        with open(args.out) as f:
            previous = json.load(f)
        if "convert" in previous:
            result["convert"] = previous["convert"]
    if not args.skip_convert:
        conv = convert_rows()
        print()
        print(format_table(["QAT MobileNetV2 0.35 96x96: converter gets", "convert s", "bytes",
                            "same bytes"],
                           [[r["trackable"], r["convert_s"], r["bytes"], r["same_bytes"]]
                            for r in conv]))
        result["convert"] = conv
    write_json(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
