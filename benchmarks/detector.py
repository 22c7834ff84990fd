"""Detector acceptance run: float vs int8 mAP of the YOLO-style recipe on generated shapes.

Runs ``recipes.detector`` once with its defaults (or the flags given after
``--``), in this process, and reports side by side the Keras float model's
and the full-int8 TFLite body's COCO mAP@0.5 and mAP@0.5:0.95 (same float
post-processing on both), with the training time measured two ways: wall
clock, and the training stage's CPU time divided by the cores it may use
(other work sharing the machine inflates the wall clock, much less the CPU
time).

Acceptance (issue 5): float mAP@0.5 >= 0.80, int8 mAP@0.5 within 0.03 of
float, training under 15 minutes on 2 CPU cores.

    python benchmarks/detector.py [--out benchmarks/results/detector.json] [-- recipe flags]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfedge  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402

from recipes import detector  # noqa: E402

MIN_FLOAT_MAP50 = 0.80
MAX_INT8_DROP = 0.03
MAX_TRAIN_MINUTES = 15.0


class _CpuClock:
    """Wall and process CPU seconds of a stage (CPU time covers all threads)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_argv = argv[argv.index("--") + 1:] if "--" in argv else []
    own_argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/detector.json",
                        help="Where to write the JSON results.")
    args = parser.parse_args(own_argv)

    recipe_args = detector.build_parser().parse_args(recipe_argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load_before = os.getloadavg()[0]
    with _CpuClock() as total:
        results = detector.run(recipe_args)
    load_after = os.getloadavg()[0]

    train_key = next(k for k in results["seconds"] if k.startswith("training"))
    train_wall = results["seconds"][train_key]
    # what the training would take with the cores to itself: its CPU seconds per core
    train_cpu_per_core = results["cpu_seconds"][train_key] / cores
    float_map, int8_map = results["keras_map"], results["int8_map"]
    drop = float_map["map50"] - int8_map["map50"]
    checks = {
        f"float mAP@0.5 >= {MIN_FLOAT_MAP50}": float_map["map50"] >= MIN_FLOAT_MAP50,
        f"int8 mAP@0.5 within {MAX_INT8_DROP} of float": drop <= MAX_INT8_DROP,
        f"training < {MAX_TRAIN_MINUTES:.0f} min (wall clock)":
            train_wall < 60 * MAX_TRAIN_MINUTES,
    }

    print()
    print(format_table(
        ["model", "mAP@0.5", "mAP@0.5:0.95", "mAP@0.75"],
        [["Keras float", float_map["map50"], float_map["map50_95"], float_map["map75"]],
         ["TFLite full int8 body", int8_map["map50"], int8_map["map50_95"], int8_map["map75"]],
         ["int8 - float", -drop, int8_map["map50_95"] - float_map["map50_95"],
          int8_map["map75"] - float_map["map75"]]],
        title=f"YOLO-style detector on {results['test_images']} generated test images"))
    print()
    print(format_table(
        ["time", "seconds"],
        [["training, wall clock", train_wall],
         [f"training, CPU time / {cores} cores", round(train_cpu_per_core, 1)],
         ["whole run, wall clock", round(total.wall, 1)],
         ["whole run, CPU time", round(total.cpu, 1)],
         ["load average before / after", f"{load_before:.1f} / {load_after:.1f}"]]))
    print()
    print(format_table(["acceptance", "met"],
                       [[k, "yes" if v else "NO"] for k, v in checks.items()]))

    record = {
        "benchmark": "detector", "recipe_flags": recipe_argv,
        "settings": {k: results[k] for k in ("dataset", "input_size", "width", "epochs",
                                              "num_train", "test_images", "parameters",
                                              "size_bytes", "anchors")},
        "map": {"float": float_map, "int8": int8_map, "int8_minus_float_map50": -drop},
        "seconds": {**results["seconds"], "total_wall": round(total.wall, 1),
                    "total_cpu": round(total.cpu, 1),
                    "training_cpu_per_core": round(train_cpu_per_core, 1),
                    "cpu_by_stage": results["cpu_seconds"]},
        "machine": {"cores": cores, "load_average_before": round(load_before, 2),
                    "load_average_after": round(load_after, 2),
                    "processor": platform.processor() or platform.machine()},
        "tfedge": tfedge.__version__,
        "acceptance": checks,
        "output": os.path.dirname(results["files"]["tflite"]),
    }
    write_json(args.out, record)
    print(f"\nwrote {args.out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
