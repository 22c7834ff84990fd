"""The converter stage: every mode, sparse flatbuffers, accuracy-aware fallback, measured.

In one process, on scikit-learn's digits (real data, test split of 450):

1. **Modes.** The digits CNN (trained once) converted in every mode by
   ``tfedge.convert`` and by the hand-written ``tf.lite.TFLiteConverter``
   call a user would write for that mode, side by side: file size,
   conversion time, top-1 accuracy in LiteRT and agreement with the float
   Keras model. (tfedge's time includes what the hand-written call does not
   do: checking the data, tracing at batch 1, reading the result back,
   the full-int8 check and finding the runtime settings.)
2. **Sparse flatbuffers.** A Dense 64-512-512-10 model on the digits'
   64 pixels, pruned by ``tfedge.wrap`` to 80% and 90%, and by tfmot with
   4x1 blocks to 90%, converted dense and sparse (int8 and float32): raw and
   gzip sizes, sparse/dense ratio, whether the outputs are identical, and the
   op resolver the model needs.
3. **Accuracy-aware conversion.** A digits MLP with a quantization-hostile
   activation (``log(1 + exp(8x)) / 8``: its exp has a huge range): full
   int8 vs ``convert(..., tolerance=0.01)``, which layers were kept in float
   and what that cost.

    python benchmarks/convert.py [--mobilenet] [--out benchmarks/results/convert.json]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfedge  # noqa: E402
from tfedge import keras  # noqa: E402
from tfedge.data import load_digits  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402
from tfedge import TFLiteRunner  # noqa: E402

MODES = [("int8", "int8"), ("int8", "uint8"), ("int8", "float32"), ("int16x8", None),
         ("float16", None), ("dynamic_range", None), ("float32", None)]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def compile_for_digits(model):
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    return model


def digits_cnn(width: int = 16):
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(4 * width, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="digits_cnn")


def hand_written(model, mode: str, io_type: str | None, calibration: np.ndarray) -> bytes:
    """The TFLiteConverter call a user writes for each mode (from the TFLite docs)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode in ("int8", "int16x8"):
        def representative_dataset():
            for x in calibration:
                yield [x[None].astype(np.float32)]
        converter.representative_dataset = representative_dataset
    if mode == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        types = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
        converter.inference_input_type = types[io_type]
        converter.inference_output_type = types[io_type]
    elif mode == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    elif mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def scores(content: bytes, x: np.ndarray, y: np.ndarray, reference: np.ndarray,
           op_resolver: str | None = None) -> tuple[float, float]:
    out = TFLiteRunner(content, op_resolver=op_resolver).predict(x)
    return float(np.mean(out.argmax(1) == y)), float(np.mean(out.argmax(1) == reference.argmax(1)))


def bench_modes(digits, epochs: int) -> list[dict]:
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    model = compile_for_digits(digits_cnn())
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    reference = model.predict(x_test, verbose=0)
    float_acc = float(np.mean(reference.argmax(1) == y_test))
    calibration = x_train[:300]
    rows = []
    for mode, io_type in MODES:
        art, t_tfedge = timed(tfedge.convert, model, calibration, mode=mode,
                              input_type=io_type, output_type=io_type)
        hand, t_hand = timed(hand_written, model, mode, io_type, calibration)
        acc, agree = scores(art.content, x_test, y_test, reference)
        hand_acc, hand_agree = scores(hand, x_test, y_test, reference)
        rows.append({"mode": mode, "io": io_type or "float32", "float_accuracy": float_acc,
                     "tfedge": {"bytes": art.size_bytes, "seconds": t_tfedge, "accuracy": acc,
                                "agreement": agree, "description": art.description,
                                "batch": art.inputs[0].shape_signature[0]},
                     "hand_written": {"bytes": len(hand), "seconds": t_hand,
                                      "accuracy": hand_acc, "agreement": hand_agree,
                                      "batch": tfedge.TFLiteArtifact(hand).inputs[0]
                                      .shape_signature[0]}})
    return rows


def bench_mobilenet() -> dict:
    """int8 MobileNetV2 (alpha 0.35, 96x96, random weights): conversion cost at scale."""
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None,
                                           classes=10)
    x = np.random.default_rng(0).random((132, 96, 96, 3)).astype(np.float32)
    calibration, check = x[:100], x[100:]
    reference = model.predict(check, verbose=0)
    art, t_tfedge = timed(tfedge.convert, model, calibration)
    hand, t_hand = timed(hand_written, model, "int8", "int8", calibration)
    agree = [float(np.mean(TFLiteRunner(c).predict(check).argmax(1) == reference.argmax(1)))
             for c in (art.content, hand)]
    return {"tfedge": {"bytes": art.size_bytes, "seconds": t_tfedge, "agreement": agree[0]},
            "hand_written": {"bytes": len(hand), "seconds": t_hand, "agreement": agree[1]}}


def _mlp(name: str):
    inputs = keras.Input((64,), name="features")
    h = keras.layers.Dense(512, activation="relu")(inputs)
    h = keras.layers.Dense(512, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name=name)


def pruned_mlp(x, y, sparsity: float, block: tuple[int, int] | None, epochs: int):
    import tensorflow_model_optimization as tfmot

    keras.utils.set_random_seed(0)
    if block is None:  # tfedge's own pruning
        wrapped = tfedge.wrap(_mlp("mlp"), prune=tfedge.PruneConfig(sparsity,
                                                                    end_epoch=epochs - 1))
        compile_for_digits(wrapped).fit(x, y, epochs=epochs, batch_size=64, verbose=0)
        return wrapped.finish()
    steps = int(np.ceil(len(x) / 64))
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, sparsity, 0, steps * (epochs - 1),
                                                     frequency=max(1, steps // 4))
    model = tfmot.sparsity.keras.prune_low_magnitude(_mlp("mlp"), pruning_schedule=schedule,
                                                     block_size=block)
    compile_for_digits(model).fit(x, y, epochs=epochs, batch_size=64, verbose=0,
                                  callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return tfmot.sparsity.keras.strip_pruning(model)


def bench_sparse(digits, epochs: int) -> list[dict]:
    (x_train, y_train), (x_test, y_test) = digits
    x_train, x_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)
    rows = []
    for sparsity, block in ((0.8, None), (0.9, None), (0.9, (4, 1))):
        model = pruned_mlp(x_train, y_train, sparsity, block, epochs)
        achieved = tfedge.sparsity_report(model).overall
        for mode in ("int8", "float32"):
            dense = tfedge.convert(model, x_train[:300], mode=mode)
            sparse = tfedge.convert(model, x_train[:300], mode=mode, sparse=True)
            facts = sparse.details["sparse"]
            dense_out = TFLiteRunner(dense.content, op_resolver="no_delegates").predict(x_test)
            sparse_out = TFLiteRunner(sparse.content).predict(x_test)
            blocks = sorted({"x".join(map(str, r["block"])) for r in facts["tensors"]
                             if r.get("block")})
            rows.append({
                "pruning": f"{sparsity:.0%}" + (f" {block[0]}x{block[1]} blocks" if block
                                                else " (tfedge.wrap)"),
                "achieved_sparsity": achieved, "mode": mode,
                "dense_bytes": dense.size_bytes, "sparse_bytes": sparse.size_bytes,
                "dense_gzip": len(gzip.compress(dense.content)),
                "sparse_gzip": len(gzip.compress(sparse.content)),
                "ratio": sparse.size_bytes / dense.size_bytes, "used": facts["used"],
                "reason": facts.get("reason"),
                "outputs_identical": bool(np.array_equal(dense_out, sparse_out)),
                "max_abs_diff": float(np.max(np.abs(dense_out - sparse_out))),
                "encoded": f"{sum(r['encoding'] == 'sparse' for r in facts['tensors'])}"
                           f"/{len(facts['tensors'])}",
                "blocks": ",".join(blocks) or "-",
                "op_resolver": sparse.runtime_settings()["op_resolver"],
                "ops": sparse.ops})
    return rows


def bench_fallback(digits) -> dict:
    (x_train, y_train), (x_test, y_test) = digits
    x_train, x_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), name="features")
    h = keras.layers.Dense(64, name="hidden")(inputs)
    h = keras.layers.Lambda(lambda v: tf.math.log(1.0 + tf.exp(8.0 * v)) / 8.0,
                            name="sharp_softplus")(h)
    h = keras.layers.Dense(32, activation="relu", name="dense2")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="hostile")
    compile_for_digits(model).fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
    full, t_full = timed(tfedge.convert, model, x_train[:300], eval_data=(x_test, y_test))
    aware, t_aware = timed(tfedge.convert, model, x_train[:300], tolerance=0.01,
                           eval_data=(x_test, y_test))
    report, t_debug = timed(tfedge.debug_quantization, model, x_train[:300], (x_test, y_test))
    fallback = aware.details["float_fallback"]
    return {"float_accuracy": full.validation.keras_accuracy,
            "int8_accuracy": full.validation.tflite_accuracy, "int8_bytes": full.size_bytes,
            "int8_seconds": t_full, "aware_accuracy": aware.validation.tflite_accuracy,
            "aware_bytes": aware.size_bytes, "aware_seconds": t_aware,
            "kept_layers": fallback["kept_layers"], "kept_ops": fallback["kept_ops"],
            "size_cost_bytes": fallback["size_cost_bytes"], "tried": len(fallback["attempts"]),
            "message": fallback["message"], "debug_seconds": t_debug,
            "debug_report": report.to_dict(), "debug_table": str(report)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="Training epochs of the CNN.")
    parser.add_argument("--sparse-epochs", type=int, default=4,
                        help="Training epochs of each pruned MLP.")
    parser.add_argument("--mobilenet", action="store_true",
                        help="Also time an int8 MobileNetV2 (alpha 0.35, 96x96) conversion.")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "convert.json"),
                        help="Where to write the JSON results.")
    args = parser.parse_args(argv)
    digits = load_digits()

    modes = bench_modes(digits, args.epochs)
    print(format_table(
        ["mode", "I/O", "bytes tfedge", "bytes hand", "s tfedge", "s hand", "acc tfedge",
         "acc hand", "agree tfedge", "agree hand", "batch tfedge/hand"],
        [[r["mode"], r["io"], r["tfedge"]["bytes"], r["hand_written"]["bytes"],
          f"{r['tfedge']['seconds']:.2f}", f"{r['hand_written']['seconds']:.2f}",
          f"{100 * r['tfedge']['accuracy']:.2f}%", f"{100 * r['hand_written']['accuracy']:.2f}%",
          f"{100 * r['tfedge']['agreement']:.2f}%",
          f"{100 * r['hand_written']['agreement']:.2f}%",
          f"{r['tfedge']['batch']}/{r['hand_written']['batch']}"] for r in modes],
        title=f"Digits CNN, every mode (float Keras accuracy "
              f"{100 * modes[0]['float_accuracy']:.2f}%, 450 test digits)"))
    print()

    sparse = bench_sparse(digits, args.sparse_epochs)
    print(format_table(
        ["pruning", "mode", "dense B", "sparse B", "ratio", "gzip dense", "gzip sparse",
         "encoded", "blocks", "max |dense-sparse|", "used", "op resolver"],
        [[r["pruning"], r["mode"], r["dense_bytes"], r["sparse_bytes"], f"{r['ratio']:.2f}x",
          r["dense_gzip"], r["sparse_gzip"], r["encoded"], r["blocks"],
          "0 (identical)" if r["outputs_identical"] else f"{r['max_abs_diff']:.2g}",
          r["used"], r["op_resolver"]] for r in sparse],
        title="Dense 64-512-512-10 on digits pixels, dense vs sparse flatbuffer"))
    print()

    fallback = bench_fallback(digits)
    print(fallback["debug_table"])
    print(format_table(
        ["model", "accuracy", "bytes", "seconds"],
        [["float (Keras)", f"{100 * fallback['float_accuracy']:.2f}%", "-", "-"],
         ["full int8", f"{100 * fallback['int8_accuracy']:.2f}%", fallback["int8_bytes"],
          f"{fallback['int8_seconds']:.2f}"],
         ["int8, tolerance 0.01", f"{100 * fallback['aware_accuracy']:.2f}%",
          fallback["aware_bytes"], f"{fallback['aware_seconds']:.2f}"]],
        title="Accuracy-aware conversion of a model with a quantization-hostile activation"))
    print(fallback["message"])

    mobilenet = None
    if args.mobilenet:
        mobilenet = bench_mobilenet()
        print()
        print(format_table(
            ["converter", "bytes", "seconds", "agreement (32 random inputs)"],
            [[name, r["bytes"], f"{r['seconds']:.1f}", f"{100 * r['agreement']:.1f}%"]
             for name, r in (("tfedge.convert", mobilenet["tfedge"]),
                             ("hand-written", mobilenet["hand_written"]))],
            title="int8 MobileNetV2 (alpha 0.35, 96x96, random weights, 100 calibration "
                  "samples)"))

    results = {"modes": modes, "sparse": sparse, "fallback": fallback, "mobilenet": mobilenet,
               "versions": {"tensorflow": tf.__version__, "tfedge": tfedge.__version__}}
    write_json(args.out, results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
