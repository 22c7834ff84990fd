"""int8 by the TFLite converter vs the LiteRT Quantizer on the recipe models: size, time, ops.

The recipes' own architectures, built as the recipes build them (random
init: nothing is downloaded or trained, so accuracy is not compared here;
``benchmarks/mixed_precision.py`` compares accuracy on trained models):

* ``mobilenet_v3_small``: the classifier recipe's int8-friendly
  MobileNetV3-Small (hard-swish and squeeze-excite replaced), 32x32 RGB;
* ``detector``: the detector recipe's YOLO-style body, 96x96, two outputs.

Each is converted by ``tfedge.convert(mode="int8")`` (TFLite's converter)
and ``mode="litert_int8"`` (the LiteRT Quantizer's static int8) on the
same 200 calibration images: file size, conversion time, op count and
kinds, float ops left, whether the model is full integer, whether LiteRT
(XNNPACK, built-in kernels) and TFLite Micro run it, and how far each is from
the float model (relative output RMSE on 32 held-out random images).

    python benchmarks/quantizer_int8.py [--out benchmarks/results/quantizer_int8.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfedge  # noqa: E402
from tfedge.errors import TFEdgeError  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402
from tfedge._validate import run_outputs  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from recipes.classifier import build_classifier, int8_friendly_mobilenet_v3  # noqa: E402
from recipes.detector import build_detector  # noqa: E402


def models():
    tfedge.keras.utils.set_random_seed(0)
    v3 = int8_friendly_mobilenet_v3(build_classifier("mobilenet_v3_small", 10, input_size=32))
    yield "mobilenet_v3_small", v3, 32
    tfedge.keras.utils.set_random_seed(0)
    yield "detector", build_detector(3, input_size=96), 96


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/quantizer_int8.json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for name, model, size in models():
        calibration = rng.uniform(0, 1, (200, size, size, 3)).astype(np.float32)
        check = rng.uniform(0, 1, (32, size, size, 3)).astype(np.float32)
        reference = np.asarray(model.predict(check, verbose=0)[0] if isinstance(
            model.output, list) else model.predict(check, verbose=0), np.float64)
        for mode in ("int8", "litert_int8"):
            started = time.perf_counter()
            try:
                art = tfedge.convert(model, calibration, mode=mode)
            except TFEdgeError as err:
                rows.append({"model": name, "path": mode, "error": str(err)[:400]})
                continue
            seconds = time.perf_counter() - started
            out = np.asarray(run_outputs(art.content, check, art.op_resolver,
                                         art.signatures["serving_default"]["outputs"][0]),
                             np.float64).reshape(reference.shape)
            rmse = float(np.sqrt(np.mean((out - reference) ** 2)) / (np.std(reference) or 1))
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    bundle = tfedge.export_micro(art, tmp, sample_inputs=check[:4], max_diff=1)
                    tflm = f"verified (arena {bundle.arena_bytes:,} B)"
                except (TFEdgeError, RuntimeError) as err:  # RuntimeError: LiteRT's builtin kernels
                    tflm = "refused: " + str(err).splitlines()[0][:160]
            rows.append({"model": name, "path": "converter" if mode == "int8" else "quantizer",
                         "size_bytes": art.size_bytes, "seconds": round(seconds, 2),
                         "ops": sum(art.ops.values()), "op_kinds": art.ops,
                         "float_ops": len(art.flatbuffer.float_ops()),
                         "full_integer": art.is_full_integer, "op_resolver": art.op_resolver,
                         "relative_rmse_vs_float": rmse, "tflm": tflm})
            print(f"{name} {mode}: {art.size_bytes:,} B in {seconds:.1f} s", file=sys.stderr)
    table = format_table(
        ["model", "int8 path", "bytes", "convert s", "ops", "float ops", "rel. RMSE vs float",
         "TFLM"],
        [[r["model"], r["path"], f"{r['size_bytes']:,}" if "size_bytes" in r else "-",
          r.get("seconds", "-"), r.get("ops", "-"), r.get("float_ops", "-"),
          f"{r['relative_rmse_vs_float']:.3f}" if "relative_rmse_vs_float" in r else "-",
          (r.get("tflm") or r.get("error", ""))[:70]] for r in rows],
        title="int8: TFLite converter vs LiteRT Quantizer on the recipe architectures "
              "(random init, random calibration images)")
    print(table)
    write_json(args.out, {"rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
