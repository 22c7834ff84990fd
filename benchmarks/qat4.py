"""4-bit QAT for w4a8: does training with int4 fake-quant recover w4a8's accuracy loss?

MobileNetV2 alpha 0.35 at 96x96 on the digits (as in
``benchmarks/mixed_precision.py``: same builder, data, seed and training). In
one run, side by side on the test split in LiteRT:

* ``int8 (converter)``: the float model, ``tfedge.convert`` (the reference);
* ``w4a8``: the float model, ``tfedge.convert(mode="w4a8")`` (the LiteRT
  Quantizer: int4 per-channel CONV_2D / FULLY_CONNECTED weights);
* ``float fine-tuned (lr), w4a8``: the float model trained ``--qat-epochs`` more
  epochs without fake quant, then w4a8 (is it the extra training?);
* ``QAT int4 (lr), w4a8``: the float model fine-tuned ``--qat-epochs`` epochs with
  tfmot's quantize wrappers, whose Conv2D (not depthwise) and Dense layers
  carry a QuantizeConfig with 4-bit per-channel symmetric weight quantizers
  (tfmot's ``LastValueQuantizer(num_bits=4)``: the grid of the LiteRT
  Quantizer's symmetric int4, scale max|w| / 7) and 8-bit activations
  elsewhere (tfmot's default 8-bit registry, through
  ``tfedge.quantize.apply_qat``'s ``layer_configs``); then stripped to float
  (``tfedge.quantize.strip_qat``: the QAT-trained weights) and converted with
  ``mode="w4a8"``, calibrated again.

    python benchmarks/qat4.py [--epochs 12] [--qat-epochs 3] [--qat-lr 2e-4 2e-5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfedge  # noqa: E402
from tfedge import keras  # noqa: E402
from tfedge.qat_configs import OutputQuantizeConfig  # noqa: E402
from tfedge.quantize import QATConfig, apply_qat, strip_qat  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mixed_precision as mp  # noqa: E402

import tensorflow_model_optimization as tfmot  # noqa: E402

_quantizers = tfmot.quantization.keras.quantizers


class FourBitWeights(tfmot.quantization.keras.QuantizeConfig):
    """int4 per-channel symmetric weights (kernel only), no activation quantizer here.

    The layers it is put on (Conv2D, Dense) have linear activations in
    MobileNetV2 (BatchNormalization and ReLU6 follow, quantized by tfmot's
    default registry).
    """

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, _quantizers.LastValueQuantizer(
            num_bits=4, per_axis=True, symmetric=True, narrow_range=True))]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        if getattr(layer, "activation", None) not in (None, keras.activations.linear):
            return [_quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False,
                                                       symmetric=False, narrow_range=False)]
        return []

    def get_config(self):
        return {}


def _producer_name(layer: Any) -> str:
    inbound = layer._inbound_nodes[0].inbound_layers  # pylint: disable=protected-access
    return (inbound[0] if isinstance(inbound, (list, tuple)) else inbound).name


def compile_model(model: Any, lr: float, steps: int) -> Any:
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, steps)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    return model


def accuracy(artifact: Any, x: np.ndarray, y: np.ndarray) -> float:
    runner = tfedge.TFLiteRunner(artifact.content, op_resolver=artifact.op_resolver)
    return float(np.mean(runner.predict(x).argmax(1) == y))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12, help="Float training epochs.")
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--qat-lr", type=float, nargs="+", default=[2e-4, 2e-5],
                        help="Fine-tune learning rates (Adam, cosine), each run both ways.")
    parser.add_argument("--out", default="benchmarks/results/qat4.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    model, (x, y), (x_test, y_test) = mp.train(
        "mobilenet_v2", argparse.Namespace(epochs_mobilenet=args.epochs, epochs_cnn=15))
    calibration = x[:300]
    rows = []

    def add(variant: str, artifact: Any, keras_model: Any, seconds: float | None = None):
        keras_acc = float(np.mean(keras_model.predict(x_test, verbose=0).argmax(1) == y_test))
        rows.append({"variant": variant, "mode": artifact.mode,
                     "accuracy": accuracy(artifact, x_test, y_test),
                     "keras_float_accuracy": keras_acc, "size_bytes": artifact.size_bytes,
                     "train_seconds": seconds})
        mp.log(f"{variant}: {100 * rows[-1]['accuracy']:.2f}% ({artifact.size_bytes:,} B)")

    int8 = tfedge.convert(model, calibration)
    add("int8 (converter)", int8, model)
    add("w4a8", tfedge.convert(model, calibration, mode="w4a8"), model)

    steps = -(-len(x) // 32) * args.qat_epochs
    four_bit = {layer.name: FourBitWeights() for layer in model.layers
                if type(layer).__name__ in ("Conv2D", "Dense")}
    # With its own QuantizeConfig a Conv2D is not folded with its BatchNormalization by
    # tfmot's transforms; the BN's output is then what the int8 model's fused conv outputs
    # (8-bit), and the 4-bit grid carries over the fold (per-channel symmetric scales).
    outputs = {layer.name: OutputQuantizeConfig() for layer in model.layers
               if isinstance(layer, keras.layers.BatchNormalization)
               and _producer_name(layer) in four_bit}
    for lr in args.qat_lr:
        # the same extra training without fake quant: separates QAT from more epochs
        tuned = keras.models.clone_model(model)
        tuned.set_weights(model.get_weights())
        keras.utils.set_random_seed(1)
        t = time.perf_counter()
        compile_model(tuned, lr, steps).fit(x, y, epochs=args.qat_epochs, batch_size=32,
                                            verbose=0)
        add(f"float fine-tuned (lr {lr:g}), w4a8",
            tfedge.convert(tuned, calibration, mode="w4a8"), tuned, time.perf_counter() - t)

        qat, plan = apply_qat(model, QATConfig(layer_configs={**four_bit, **outputs}))
        keras.utils.set_random_seed(1)
        t = time.perf_counter()
        compile_model(qat, lr, steps).fit(x, y, epochs=args.qat_epochs, batch_size=32,
                                          verbose=0)
        qat_seconds = time.perf_counter() - t
        qat_fake_quant_acc = float(np.mean(qat.predict(x_test, verbose=0).argmax(1) == y_test))
        stripped = strip_qat(qat)
        add(f"QAT int4 (lr {lr:g}), w4a8", tfedge.convert(stripped, calibration, mode="w4a8"),
            stripped, qat_seconds)
        rows[-1]["qat_fake_quant_accuracy"] = qat_fake_quant_acc
        rows[-1]["layers_4bit"] = len(four_bit)
        rows[-1]["layers_quantized"] = len(plan.quantized)
        rows[-1]["layers_skipped"] = plan.skipped

    int8_acc = rows[0]["accuracy"]
    for row in rows:
        row["vs_int8_pp"] = round(100 * (row["accuracy"] - int8_acc), 2)
    text = format_table(
        ["variant", "accuracy", "vs int8 (pp)", "Keras float", "bytes", "train s"],
        [[r["variant"], f"{100 * r['accuracy']:.2f}%", f"{r['vs_int8_pp']:+.2f}",
          f"{100 * r['keras_float_accuracy']:.2f}%", f"{r['size_bytes']:,}",
          f"{r['train_seconds']:.0f}" if r["train_seconds"] else "-"] for r in rows],
        title="MobileNetV2 0.35/96 on the digits: 4-bit QAT before w4a8 (LiteRT, test split)")
    print(text)
    write_json(args.out, {"settings": vars(args), "rows": rows, "table": text,
                          "seconds": round(time.perf_counter() - started, 1)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
