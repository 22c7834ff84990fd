"""Below 8 bits: int8 (converter vs LiteRT Quantizer), w4a8, int4 weights, mixed precision, measured.

In one run, for each model (trained here, small):

* ``digits_cnn``: the issue's digits CNN (conv 32, conv 64, dense 256,
  dense 10) on scikit-learn's 8x8 digits;
* ``mobilenet_v2``: keras.applications MobileNetV2 alpha 0.35 at 96x96,
  random init, on the digits upsampled to 96x96 RGB (recipes/data.py's
  ``digits_rgb``, the recipe's builder);
* ``detector``: the YOLO-style detector of ``recipes/detector.py`` (96x96,
  boxes and scores outputs) on its generated shapes, trained briefly; scored
  by COCO mAP@0.5 with the recipe's own float post-processing and
  pycocotools (``recipes.detector.evaluate``). With no class to agree on,
  mixed precision ranks its layers by the relative output RMSE against the
  float model (each output scaled by its spread, averaged over boxes and
  scores) on held-out generated images.

each variant is converted by ``tfedge.convert`` and measured the same way:

* ``int8 (converter)``: ``mode="int8"``, TFLite's converter (the default);
* ``int8 (quantizer)``: ``mode="litert_int8"``, the LiteRT Quantizer's static int8;
* ``w4a8``: int4 CONV_2D / FULLY_CONNECTED weights, int8 elsewhere, full integer;
* ``int4_weights``: weight-only int4, float compute;
* ``int4_blockwise``: int4 FULLY_CONNECTED weights in blocks of 32, dynamic;
* ``mixed 0.75x / 0.6x / 0.5x``: ``max_size_bytes`` at those fractions of the
  converter's int8 file; the layers are chosen on held-out training images
  (top-1 disagreement with the float model; the test set is never seen);
* ``w4a8 per-tensor``: w4a8 with one weight scale per tensor
  (``per_channel=False``): no per-channel scales and zero points;
* ``mixed 0.6x, per-tensor allowed``: ``per_channel="auto"``, each layer may
  also take int8 / int4 weights per tensor.

The ``bytes`` section breaks the int8 and w4a8 files down (weights by op and
type, biases, float32 scales, int64 zero points, names, graph): what int4
weights can and cannot shrink.

Columns: test accuracy (mAP@0.5 for the detector) in LiteRT (XNNPACK unless the model needs the
built-in kernels), file size and its ratio to the converter's int8, conversion
time, ops (count, float ops), exact emulated instructions per inference on
rpi4 (Cortex-A72) and rpi5 (Cortex-A76) in LiteRT's aarch64 build under qemu,
and the TFLite Micro verdict (``tfedge.export_micro``: verified, or the
reason it refuses). The size-accuracy front goes to a PNG.

    python benchmarks/mixed_precision.py [--models digits_cnn mobilenet_v2 detector] [--epochs-mobilenet 12]
    python benchmarks/mixed_precision.py --models detector --merge   # keep the other models' rows
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfedge  # noqa: E402
from tfedge import keras  # noqa: E402
from tfedge.data import load_digits  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402
from tfedge.errors import TFEdgeError  # noqa: E402
from tfedge._validate import TFLiteRunner  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from recipes import detector as detector_recipe  # noqa: E402
from recipes.classifier import build_classifier  # noqa: E402
from recipes.common import cosine_schedule  # noqa: E402
from recipes.data import digits_rgb, generate_shapes, load_detection  # noqa: E402

BUDGETS = (0.75, 0.6, 0.5)
AUTO_BUDGET = 0.6  # mixed precision with per_channel="auto" (per-tensor layers allowed)
TARGETS = ["rpi4", "rpi5"]
MODELS = ["digits_cnn", "mobilenet_v2", "detector"]
DETECTOR_SIZE = 96


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def digits_cnn() -> Any:
    """The issue's digits CNN: conv 32, conv 64, dense 256, dense 10."""
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(256, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="digits_cnn")


def train(name: str, args: argparse.Namespace) -> tuple[Any, tuple, tuple]:
    (x, y), (x_test, y_test) = load_digits()
    keras.utils.set_random_seed(0)
    if name == "digits_cnn":
        model, epochs, lr = digits_cnn(), args.epochs_cnn, 1e-3
    else:
        x, x_test = digits_rgb(x, 96), digits_rgb(x_test, 96)
        model = build_classifier("mobilenet_v2", 10, input_size=96, alpha=0.35,
                                 name="mobilenet_v2_035_96")
        epochs, lr = args.epochs_mobilenet, 2e-3
    steps = -(-len(x) // 32) * epochs
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, steps)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    started = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    log(f"{name}: trained {epochs} epochs in {time.perf_counter() - started:.0f} s")
    return model, (x, y), (x_test, y_test)


class DetectorTask:
    """The detector's data, anchors and scoring (recipes.detector's own evaluation)."""

    def __init__(self, args: argparse.Namespace):
        self.data = load_detection("shapes", input_size=DETECTOR_SIZE,
                                   num_train=args.detector_train, num_test=args.detector_test,
                                   seed=0)
        self.anchors = detector_recipe.make_anchors(DETECTOR_SIZE, anchor_scale=3.0)
        # held-out generated images (their own seed) choose the mixed-precision layers
        self.held_out = generate_shapes(200, DETECTOR_SIZE, seed=20_000)[0]

    def score(self, outputs: list[np.ndarray]) -> dict[str, float]:
        return detector_recipe.evaluate(outputs, self.data, self.anchors)


def train_detector(args: argparse.Namespace) -> tuple[Any, DetectorTask]:
    keras.utils.set_random_seed(0)
    task = DetectorTask(args)
    data = task.data
    model = detector_recipe.build_detector(data.num_classes, input_size=DETECTOR_SIZE,
                                           anchor_scale=3.0, name="yolo_edge_detector")
    train = detector_recipe.training_dataset(data, task.anchors, 32, 0)
    steps = -(-data.num_train // 32) * args.epochs_detector
    detector_recipe.compile_detector(model, task.anchors, cosine_schedule(4e-3, steps))
    started = time.perf_counter()
    model.fit(train, epochs=args.epochs_detector, verbose=0)
    log(f"detector: trained {args.epochs_detector} epochs on {data.num_train} images in "
        f"{time.perf_counter() - started:.0f} s")
    return model, task


def tflm_verdict(artifact: Any, x: np.ndarray) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            bundle = tfedge.export_micro(artifact, tmp, sample_inputs=x[:4], max_diff=1)
        except TFEdgeError as err:
            reason = re.search(r"weights are [A-Z0-9/]+: (.*?)(?: \(|\. Convert)", str(err))
            return "refused: " + (reason.group(1) if reason else str(err).split(":")[0])
        return f"verified (arena {bundle.arena_bytes:,} B)"


def measure(name: str, variant: str, artifact: Any, test: Any, int8_bytes: int | None,
            args: argparse.Namespace) -> dict[str, Any]:
    runner = TFLiteRunner(artifact.content, op_resolver=artifact.op_resolver)
    if isinstance(test, DetectorTask):
        x_test = test.data.test_images
        maps = test.score(runner.predict(x_test, output_names=["boxes", "scores"]))
        scores = {"metric": "mAP@0.5", "score": maps["map50"], "map50": maps["map50"],
                  "map50_95": maps["map50_95"]}
    else:
        x_test, y_test = test
        accuracy = float(np.mean(runner.predict(x_test).argmax(1) == y_test))
        scores = {"metric": "accuracy", "score": accuracy, "accuracy": accuracy}
    row = {"model": name, "variant": variant, "mode": artifact.mode, **scores,
           "size_bytes": artifact.size_bytes,
           "size_vs_int8": artifact.size_bytes / int8_bytes if int8_bytes else 1.0,
           "conversion_seconds": artifact.details.get("conversion_seconds"),
           "full_integer": artifact.is_full_integer, "ops": sum(artifact.ops.values()),
           "float_ops": len(artifact.flatbuffer.float_ops()), "op_kinds": artifact.ops,
           "op_resolver": artifact.op_resolver}
    bits: dict[str, int] = {}
    for r in artifact.flatbuffer.layer_bits():
        key = f"{r['weight_dtype']}/{r['activation_dtype']}"
        bits[key] = bits.get(key, 0) + 1
    row["layer_bits"] = bits
    row["bytes"] = artifact.flatbuffer.byte_breakdown()
    runtimes = artifact.details.get("runtimes")
    if runtimes:
        row["runtimes"] = runtimes
    mixed = artifact.details.get("mixed_precision")
    if mixed:
        row["mixed_precision"] = {k: mixed[k] for k in ("max_size_bytes", "reached", "metric",
                                                         "shortfall_bytes", "message",
                                                         "seconds")}
        row["mixed_precision"]["bits"] = {layer["layer"]: layer["bits"]
                                          for layer in mixed["layers"]}
        row["mixed_precision"]["measured_models"] = len(mixed["attempts"])
    if args.emulate:
        report = tfedge.bench(artifact, target=TARGETS, runs=20, warmup=2, emulation_runs=2)
        row["host_p50_ms"] = report.host.latency_ms.get("p50")
        row["xnnpack_nodes"] = f"{report.host.delegated_nodes}/{report.host.nodes}"
        for t in TARGETS:
            result = report.target(t)
            row[f"{t}_instructions"] = result.instructions
            row[f"{t}_outputs_match_host"] = result.outputs_match
    row["tflm"] = tflm_verdict(artifact, x_test)
    log(f"{name} {variant}: {artifact.size_bytes:,} B, {row['metric']} {100 * row['score']:.2f}%, "
        f"tflm {row['tflm'][:40]}")
    return row


def run_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    if name == "detector":
        model, test = train_detector(args)
        calibration, held_out = test.data.x_calib, test.held_out
    else:
        model, (x, y), test = train(name, args)
        calibration = x[:300]
        held_out = x[-300:]  # chooses mixed-precision layers; never the test set
    rows = []
    int8 = tfedge.convert(model, calibration)
    rows.append(measure(name, "int8 (converter)", int8, test, None, args))
    variants = [("int8 (quantizer)", dict(mode="litert_int8")), ("w4a8", dict(mode="w4a8")),
                ("int4_weights", dict(mode="int4_weights")),
                ("int4_blockwise", dict(mode="int4_blockwise"))]
    variants += [(f"mixed {b}x", dict(max_size_bytes=int(b * int8.size_bytes),
                                      eval_data=held_out)) for b in BUDGETS]
    # one scale per tensor drops the per-channel float32 scales and int64 zero points
    variants += [("w4a8 per-tensor", dict(mode="w4a8", per_channel=False)),
                 (f"mixed {AUTO_BUDGET}x, per-tensor allowed",
                  dict(max_size_bytes=int(AUTO_BUDGET * int8.size_bytes), eval_data=held_out,
                       per_channel="auto"))]
    for variant, kwargs in variants:
        try:
            artifact = tfedge.convert(model, calibration, **kwargs)
        except TFEdgeError as err:
            rows.append({"model": name, "variant": variant, "error": str(err)[:500]})
            log(f"{name} {variant}: {err}")
            continue
        rows.append(measure(name, variant, artifact, test, int8.size_bytes, args))
    if isinstance(test, DetectorTask):
        float_score = test.score(model.predict(test.data.test_images, batch_size=64,
                                               verbose=0))["map50"]
    else:
        float_score = float(np.mean(model.predict(test[0], verbose=0).argmax(1) == test[1]))
    for row in rows:
        row["float_score"] = float_score
        if name != "detector":
            row["float_accuracy"] = float_score
    return rows


def _score(row: dict[str, Any]) -> float | None:
    """Accuracy (classifiers) or mAP@0.5 (detector); rows of older runs have accuracy only."""
    return row.get("score", row.get("accuracy"))


def plot(rows: list[dict[str, Any]], path: str) -> str:
    """Size vs accuracy per model; variants at the same point share one label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, name in zip(axes[0], models):
        points = [r for r in rows if r["model"] == name and _score(r) is not None]
        metric = points[0].get("metric", "accuracy")
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in points:
            groups.setdefault((r["size_bytes"] // 1000, round(100 * _score(r), 2)),
                              []).append(r)
        for i, ((_, acc), group) in enumerate(sorted(groups.items())):
            size = group[0]["size_bytes"] / 1e3
            ax.scatter(size, acc, marker="o" if group[0]["full_integer"] else "s",
                       color=f"C{i}")
            ax.annotate(", ".join(r["variant"] for r in group), (size, acc), fontsize=7,
                        xytext=(4, 14 * (i % 4) - 14), textcoords="offset points")
        front, best = [], -1.0
        for r in sorted(points, key=lambda r: (r["size_bytes"], -_score(r))):
            if _score(r) > best:
                front.append(r)
                best = _score(r)
        ax.plot([r["size_bytes"] / 1e3 for r in front], [100 * _score(r) for r in front],
                "k--", lw=0.8, label=f"size-{metric} front")
        accs = [100 * _score(r) for r in points]
        ax.set_ylim(min(accs) - 0.6, max(accs) + 0.6)
        float_score = points[0].get("float_score", points[0].get("float_accuracy"))
        ax.set_title(f"{name} (float {100 * float_score:.2f}%)")
        ax.set_xlabel("file size (kB)")
        ax.set_ylabel(f"test {metric} in LiteRT (%)")
        ax.legend(fontsize=7, title="o full integer, s float compute", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def byte_sections(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: where the bytes of the int8 and w4a8 files go, and what w4a8 saved.

    The evidence for how far int4 weights can shrink a file: per output
    channel, a quantized weight and its int32 bias each carry a float32
    scale and an int64 zero point in the flatbuffer (24 bytes, plus 4 of
    bias), however few bits the weights have.
    """
    sections: dict[str, Any] = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        by_variant = {r["variant"]: r["bytes"] for r in rows
                      if r["model"] == name and "bytes" in r}
        int8, w4a8 = by_variant.get("int8 (converter)"), by_variant.get("w4a8")
        if not int8 or not w4a8:
            continue
        fixed = int8["total"] - int8["weights_total"]
        sections[name] = {
            "int8 (converter)": int8, "w4a8": w4a8,
            "int8_share": {k: round(int8[k] / int8["total"], 4) for k in (
                "weights_total", "biases", "scales", "zero_points", "tensor_names", "graph")},
            "not_weights_in_int8": fixed,
            "w4a8_saved": int8["total"] - w4a8["total"],
            "w4a8_floor_vs_int8": round(1 - int8["weights_total"] / 2 / int8["total"], 4),
            "note": (f"int8 file: {int8['weights_total']:,} B of weights, {fixed:,} B "
                     f"else (biases {int8['biases']:,}, scales {int8['scales']:,}, int64 zero "
                     f"points {int8['zero_points']:,}, names {int8['tensor_names']:,}, graph "
                     f"{int8['graph']:,}); halving every weight byte would give at best "
                     f"{1 - int8['weights_total'] / 2 / int8['total']:.3f}x the int8 file."),
        }
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--epochs-cnn", type=int, default=15)
    parser.add_argument("--epochs-mobilenet", type=int, default=12)
    parser.add_argument("--epochs-detector", type=int, default=15)
    parser.add_argument("--detector-train", type=int, default=3000,
                        help="Generated training images of the detector.")
    parser.add_argument("--detector-test", type=int, default=300,
                        help="Generated test images of the detector (mAP).")
    parser.add_argument("--merge", action="store_true",
                        help="Keep the rows of models not run from the JSON of --out.")
    parser.add_argument("--no-emulate", dest="emulate", action="store_false",
                        help="Skip the qemu instruction counts.")
    parser.add_argument("--out", default="benchmarks/results/mixed_precision.json")
    parser.add_argument("--replot", action="store_true",
                        help="Only redraw the PNG from the JSON of --out.")
    args = parser.parse_args(argv)
    if args.replot:
        import json

        with open(args.out) as f:
            print(plot(json.load(f)["rows"], os.path.splitext(args.out)[0] + ".png"))
        return 0

    started = time.perf_counter()
    rows = []
    for name in args.models:
        rows += run_model(name, args)
    runs = [{"models": args.models, "settings": vars(args),
             "seconds": round(time.perf_counter() - started, 1)}]
    if args.merge and os.path.exists(args.out):
        import json

        with open(args.out) as f:
            previous = json.load(f)
        kept = [r for r in previous["rows"] if r["model"] not in args.models]
        rows = sorted(kept + rows, key=lambda r: MODELS.index(r["model"]))
        earlier = previous.get("runs") or [{"models": previous["settings"]["models"],
                                           "settings": previous["settings"],
                                           "seconds": previous.get("seconds")}]
        runs = [{**run, "models": [m for m in run["models"] if m not in args.models]}
                for run in earlier] + runs
        runs = [run for run in runs if run["models"]]

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    table = [[r["model"], r["variant"], pct(_score(r)),
              f"{r['size_bytes']:,}" if "size_bytes" in r else "-",
              f"{r['size_vs_int8']:.2f}x" if "size_vs_int8" in r else "-",
              f"{r['conversion_seconds']:.1f}" if r.get("conversion_seconds") else "-",
              f"{r.get('ops', '-')}/{r.get('float_ops', '-')}",
              f"{r['rpi4_instructions']:,}" if r.get("rpi4_instructions") else "-",
              f"{r['rpi5_instructions']:,}" if r.get("rpi5_instructions") else "-",
              (r.get("tflm") or r.get("error", ""))[:60]] for r in rows]
    text = format_table(["model", "variant", "acc / mAP@.5", "bytes", "vs int8", "convert s",
                         "ops/float", "rpi4 instr", "rpi5 instr", "TFLM"], table,
                        title="Below 8 bits: test accuracy (digits) or mAP@0.5 (detector, "
                              "generated shapes) in LiteRT, size, ARM instructions, TFLM")
    print(text)
    for r in rows:
        if r.get("mixed_precision"):
            print(f"{r['model']} {r['variant']}: {r['mixed_precision']['message']}")
    out_png = os.path.splitext(args.out)[0] + ".png"
    plot(rows, out_png)
    write_json(args.out, {"settings": vars(args), "runs": runs, "budgets": list(BUDGETS),
                          "bytes": byte_sections(rows), "rows": rows, "table": text, "plot": out_png,
                          "seconds": round(time.perf_counter() - started, 1)})
    print(f"wrote {args.out} and {out_png} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
