"""Digits CNN handoff bundles: TFLM arena, bundle sizes, export and check times.

For each width of the digits CNN (trained briefly, converted to full int8),
in one process: export the micro bundle (TFLM run in a subprocess, arena
measured; one-step differences from LiteRT allowed and counted) and the
Android bundle (metadata embedded), check both, and compare TFLM's outputs
with LiteRT's builtin kernels, and XNNPACK's with the builtin kernels, on 32
test digits. The measured arena is shown beside the
guess TFLM's Python interpreter uses without one (10x the model size).

    python benchmarks/export_bundles.py [--widths 8 16 32]
        [--out benchmarks/results/export_bundles.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfedge  # noqa: E402
from tfedge import handoff, keras, micro  # noqa: E402
from tfedge.data import load_digits  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402


def build(width: int) -> keras.Model:
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(4 * width, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))


def differences(agreement: dict) -> str:
    if not agreement["differing_values"]:
        return "exact"
    return (f"{agreement['differing_values']}/{agreement['values']} differ "
            f"(max {agreement['max_abs_diff']:g})")


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32],
                        help="Widths of the digits CNN to export.")
    parser.add_argument("--epochs", type=int, default=5, help="Training epochs per model.")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "export_bundles.json"),
                        help="Where to write the JSON results.")
    args = parser.parse_args(argv)

    (x_train, y_train), (x_test, _) = load_digits()
    samples = x_test[:32]
    rows, results = [], []
    for width in args.widths:
        keras.utils.set_random_seed(0)
        model = build(width)
        model.compile(keras.optimizers.Adam(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
        artifact = tfedge.convert(model, representative_data=x_train[:300])
        with tempfile.TemporaryDirectory() as tmp:
            micro_bundle, t_micro = timed(tfedge.export_micro, artifact, os.path.join(tmp, "micro"),
                                   sample_inputs=samples, name=f"digits_w{width}",
                                   max_diff=1)
            android, t_android = timed(
                tfedge.export_android, artifact, os.path.join(tmp, "android"),
                labels=[str(d) for d in range(10)], norm_mean=0.0, norm_std=1.0,
                name=f"digits_w{width}", sample_inputs=samples)
            check_micro, t_check_micro = timed(tfedge.check_bundle, micro_bundle.directory)
            check_android, t_check_android = timed(tfedge.check_bundle, android.directory)
        facts = micro_bundle.card["bundle"]
        result = {
            "width": width, "model_bytes": artifact.size_bytes,
            "arena_bytes": facts["arena_bytes"],
            "tflm_default_arena_guess_bytes": 10 * artifact.size_bytes,
            "micro_bundle_bytes": sum(micro_bundle.files.values()),
            "model_data_cc_bytes": micro_bundle.files[handoff.MODEL_DATA_SOURCE],
            "android_bundle_bytes": sum(android.files.values()),
            "metadata_added_bytes": android.files[handoff.MODEL_FILE] - artifact.size_bytes,
            "tflm_vs_litert_builtin": facts["verification"]["summary"],
            "xnnpack_vs_litert_builtin": facts["verification"]["xnnpack_vs_builtin_kernels"],
            "export_micro_s": t_micro, "export_android_s": t_android,
            "check_micro_s": t_check_micro, "check_android_s": t_check_android,
            "checks_ok": check_micro.ok and check_android.ok,
            "ops": [o["op"] for o in facts["ops"]],
        }
        results.append(result)
        rows.append([width, result["model_bytes"], result["arena_bytes"],
                     result["tflm_default_arena_guess_bytes"], result["micro_bundle_bytes"],
                     result["android_bundle_bytes"], result["metadata_added_bytes"],
                     differences(facts["verification"]),
                     differences(facts["verification"]["xnnpack_vs_builtin_kernels"]),
                     f"{t_micro:.2f}", f"{t_android:.2f}",
                     f"{t_check_micro:.2f}", "ok" if result["checks_ok"] else "FAILED"])
    print(format_table(
        ["width", "model B", "arena B", "10x guess B", "micro bundle B", "android bundle B",
         "metadata +B", "TFLM vs LiteRT", "XNNPACK vs builtin", "micro s", "android s",
         "check micro s", "checks"], rows,
        title="Digits CNN bundles (32 test digits; TFLM in a subprocess)"))
    write_json(args.out, {"tflm_version": micro.tflm_version(),
                          "samples": len(samples), "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
