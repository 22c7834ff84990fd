"""Accuracy of keras.applications models, as Keras builds them, after prune 50% + QAT int8.

MobileNetV3Small and EfficientNetB0 (weights=None, 32x32 RGB digits: the 8x8
scikit-learn digits upsampled, pixel values 0-255 as keras.applications'
built-in preprocessing expects) are trained in float, then wrapped with
``tfedge.wrap(prune=PruneConfig(0.5), quantize=QATConfig(...))`` (tfedge's
preparation pass is what lets tfmot take them unchanged), fine-tuned,
converted to full int8 and evaluated with LiteRT on the test split. The only
change to the architecture is the BatchNorm momentum (0.9, a training
setting, as the recipes use for short runs).

The float reference is trained as long as the optimized model: the optimized
model gets ``--epochs`` of float training and then ``--finetune-epochs`` of
pruning + QAT, so the reference continues from the same ``--epochs`` weights
for ``--finetune-epochs`` more epochs of plain float training at the same
fine-tuning learning rate (``float_accuracy``; ``float_accuracy_before_finetune``
is the model the optimization starts from). Comparing the int8 model with the
float model before its fine-tune credits the optimization with the extra
epochs (in the results this replaces, MobileNetV3Small's int8 model stood
3.8 pp above its float reference). ``float_train_s`` includes the reference's
fine-tune.

Keras-vs-LiteRT top-1 agreement of the QAT model and its int8 file is recorded
with validate's count of Keras near-ties: on these models, trained to 94-97%,
it says whether the zoo's EfficientNet agreement (``zoo.py``: briefly trained,
96.1%) is a matter of training.

Where accuracy goes is recorded too: the held-out accuracy after every
fine-tuning epoch (the pruning epochs are float, the last ones QAT), and with
``--debug`` tfedge's layer-wise int8 debugger on the float model
(``tfedge.debug_quantization``: the layers with the largest int8 error).

    python benchmarks/zoo_accuracy.py [--models MobileNetV3Small,EfficientNetB0]
        [--epochs 15] [--finetune-epochs 5] [--debug]
        [--out benchmarks/results/zoo_accuracy.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tfedge  # noqa: E402
from tfedge._keras import keras  # noqa: E402
from tfedge.data import load_digits  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402
from recipes.data import digits_rgb  # noqa: E402

SIZE = 32
FINETUNE_LR = 3e-4  # the optimized model's fine-tune, and the float reference's


def digits_rgb255(x: np.ndarray) -> np.ndarray:
    return digits_rgb(x, SIZE) * 255


def run(name: str, epochs: int, finetune_epochs: int, debug: bool = False) -> dict:
    (x_train, y_train), (x_test, y_test) = load_digits()
    x_train, x_test = digits_rgb255(x_train), digits_rgb255(x_test)
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(input_shape=(SIZE, SIZE, 3), weights=None,
                                              classes=10)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    t0 = time.perf_counter()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    start_acc = float(model.evaluate(x_test, y_test, verbose=0)[1])
    # The float reference: the same weights, fine-tuned as long as the optimized
    # model is (same epochs, learning rate and data), without pruning or QAT.
    keras.utils.set_random_seed(1)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    reference.compile(keras.optimizers.Adam(FINETUNE_LR), "sparse_categorical_crossentropy",
                      ["accuracy"])
    reference.fit(x_train, y_train, batch_size=32, epochs=finetune_epochs, verbose=0)
    float_acc = float(reference.evaluate(x_test, y_test, verbose=0)[1])
    del reference
    extra = {}
    if debug:  # which layers of the float model lose the most in int8 (calibrated)
        dbg = tfedge.debug_quantization(model, x_train[:200], (x_test, y_test),
                                        num_debug_samples=32, output_effects=False)
        extra["debug_float_model"] = {
            "int8_ptq_accuracy_drop": dbg.int8_loss, "metric": dbg.metric,
            "seconds": dbg.seconds,
            "worst_layers": [{k: layer.to_dict()[k] for k in (
                "rank", "layer", "ops", "scale", "rmse_over_scale", "max_abs_error")}
                for layer in dbg.top(12)]}
    t1 = time.perf_counter()
    keras.utils.set_random_seed(1)
    prune_epochs = max(1, finetune_epochs - 2)
    edge = tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, end_epoch=prune_epochs),
                       quantize=tfedge.QATConfig(start_epoch=prune_epochs, strict=True))
    edge.compile(keras.optimizers.Adam(FINETUNE_LR), "sparse_categorical_crossentropy",
                 ["accuracy"])
    history = edge.fit(x_train, y_train, batch_size=32, epochs=finetune_epochs, verbose=0,
                       validation_data=(x_test, y_test))
    final = edge.finish()
    sparsity = tfedge.sparsity_report(final).overall
    art = tfedge.convert(final, x_train[:200])
    report = tfedge.validate(art, final, x_test, y_test)
    t2 = time.perf_counter()
    return {"model": name, "input": SIZE, "float_accuracy": float_acc,
            "float_accuracy_before_finetune": start_acc,
            "float_epochs_total": epochs + finetune_epochs,
            "int8_accuracy": report.tflite_accuracy, "qat_keras_accuracy": report.keras_accuracy,
            "drop_pp": 100 * (float_acc - report.tflite_accuracy),
            "agreement": report.agreement, "near_ties": report.near_ties,
            "validated_samples": report.num_samples,
            "sparsity": sparsity,
            "float_ops": [op.name for op in art.flatbuffer.float_ops()], "mode": art.mode,
            "int8_bytes": art.size_bytes, "ops": art.ops, "epochs": epochs,
            "finetune_epochs": finetune_epochs, "float_train_s": t1 - t0,
            "optimize_s": t2 - t1, "prune_epochs": prune_epochs,
            "finetune_val_accuracy": [float(v) for v in history.history["val_accuracy"]],
            **extra}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="MobileNetV3Small,EfficientNetB0")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--debug", action="store_true",
                        help="run tfedge.debug_quantization on the float model")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of other models already in --out")
    parser.add_argument("--out", default="benchmarks/results/zoo_accuracy.json")
    args = parser.parse_args(argv)
    rows = []
    if args.append and os.path.exists(args.out):
        with open(args.out) as f:
            rows = json.load(f)["rows"]
    for name in args.models.split(","):
        print(f"== {name}", flush=True)
        row = run(name, args.epochs, args.finetune_epochs, args.debug)
        rows = [r for r in rows if r["model"] != name] + [row]
        write_json(args.out, {"rows": rows})
    print(format_table(
        ["model", "float acc", "int8 acc", "drop pp", "agreement", "near-ties", "sparsity",
         "float ops", "int8 bytes"],
        [[r["model"], r["float_accuracy"], r["int8_accuracy"], r["drop_pp"],
          r.get("agreement"), r.get("near_ties"), r["sparsity"], len(r["float_ops"]),
          r["int8_bytes"]] for r in rows],
        title="digits 32x32: float vs prune 50% + QAT int8 (LiteRT)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
