"""A compression search under a microcontroller budget, end to end.

On scikit-learn's digits (validation: the last 300 training images; the test
split is used only to re-score the best model at the end), ``tfedge.tune``
searches final sparsity, pruning length, QAT, width, input resolution and
distillation from a wider teacher, each trial trained, converted to full
int8, scored in LiteRT, and checked against a budget:

* ``.tflite`` at most 32 KB (flash), TFLite-Micro tensor arena at most 16 KB
  (RAM, measured in TFLM's own interpreter),
* estimated single-thread latency at most 0.5 ms on ``cortex-m7`` (the
  benchmark harness's MAC-based estimate),
* int8 validation accuracy at least 93%.

Printed: every trial (feasible or not), the Pareto front and the best
feasible model; written: ``benchmarks/results/tune.json`` and
``benchmarks/results/tune_pareto.png``. The keras-tuner directory is kept, so
rerunning with a larger ``--trials`` resumes.

    python benchmarks/tune.py [--trials 16] [--epochs 4] [--oracle bayesian]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfedge  # noqa: E402
from tfedge import keras  # noqa: E402
from tfedge.data import load_digits  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402
from tfedge import TFLiteRunner  # noqa: E402

from tfedge import _tune as tune_lib  # noqa: E402  (the tune stage's module)

HERE = os.path.dirname(os.path.abspath(__file__))
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build(width: float, input_shape: tuple) -> keras.Model:
    """The test suite's digits CNN, its channels scaled by ``width``."""
    inputs = keras.Input(input_shape)
    h = keras.layers.Conv2D(max(2, int(16 * width)), 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(max(2, int(32 * width)), 3, strides=2, padding="same",
                            activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(max(2, int(64 * width)), activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="digits_cnn")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="Trials in total.")
    parser.add_argument("--epochs", type=int, default=4, help="Training epochs per trial.")
    parser.add_argument("--oracle", default="bayesian", choices=("bayesian", "random", "grid"),
                        help="keras-tuner oracle.")
    parser.add_argument("--directory", default=os.path.join("/tmp", "tfedge_bench_tune"),
                        help="keras-tuner directory (a rerun resumes from it).")
    parser.add_argument("--overwrite", action="store_true", help="Start the search over.")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "tune.json"),
                        help="Where the JSON results go.")
    args = parser.parse_args(argv)

    (x, y), (x_test, y_test) = load_digits()
    x_train, y_train, x_val, y_val = x[:-300], y[:-300], x[-300:], y[-300:]

    start = time.time()
    keras.utils.set_random_seed(0)
    teacher = build(2.0, x.shape[1:])
    teacher._name = "teacher"
    teacher.compile(keras.optimizers.Adam(3e-3), LOSS, ["accuracy"])
    teacher.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    teacher_seconds = time.time() - start
    teacher_acc = teacher.evaluate(x_val, y_val, verbose=0)[1]
    print(f"teacher (width 2.0): validation accuracy {100 * teacher_acc:.2f}%, "
          f"trained in {teacher_seconds:.0f} s")

    budget = tfedge.Budget(max_size_bytes=32_000, max_arena_bytes=16_000, target="cortex-m7",
                           max_latency_ms=0.5, min_accuracy=0.93)
    space = tfedge.SearchSpace(final_sparsity=[0.0, 0.5, 0.75, 0.9], prune_end=[0.5, 1.0],
                               quantize=[False, True], width=[0.25, 0.5, 0.75, 1.0],
                               resolution=[None, 6], distill=[False, True],
                               distill_alpha=[0.1], temperature=[4.0])
    out_dir = os.path.dirname(args.out)
    result = tfedge.tune(build, (x_train, y_train), validation_data=(x_val, y_val),
                         budget=budget, space=space, loss=LOSS, learning_rate=3e-3,
                         epochs=args.epochs, batch_size=32, max_trials=args.trials,
                         oracle=args.oracle, teacher=teacher, directory=args.directory,
                         project_name="digits_m7", overwrite=args.overwrite,
                         output_dir=os.path.join(args.directory, "report"), verbose=0)
    print(result)

    front = [t for t in result.trials if t.trial_id in result.front]
    rows = [[t.trial_id, t.settings["final_sparsity"], "on" if t.settings["quantize"] else "off",
             t.settings["width"], t.settings["resolution"] or 8,
             "on" if t.settings["distill"] else "off", f"{100 * t.metrics['accuracy']:.2f}%",
             int(t.metrics["size_bytes"]), int(t.metrics["arena_bytes"]),
             round(t.metrics["latency_ms"], 4)] for t in front]
    print(format_table(["trial", "sparsity", "qat", "width", "res", "distill", "int8 acc",
                        "size B", "arena B", "m7 est. ms"], rows,
                       title="Pareto front of the feasible trials"))

    summary = {"budget": budget.get_config(), "space": space.get_config(),
               "oracle": args.oracle, "epochs_per_trial": args.epochs,
               "trials": len(result.trials), "ran_this_call": result.ran,
               "feasible": sum(t.feasible for t in result.trials),
               "infeasible": len(result.infeasible),
               "failed": sum(t.status != "COMPLETED" for t in result.trials),
               "search_seconds": result.seconds,
               "trial_seconds": [t.seconds for t in result.trials],
               "teacher_validation_accuracy": teacher_acc, "pareto_front": result.front,
               "result": result.to_dict()}
    if result.best is not None:
        artifact = tfedge.load(result.files["best"])
        x_res = tune_lib.resize_images(x_test, result.best.settings["resolution"])
        test_acc = float(np.mean(TFLiteRunner(artifact.content).predict(x_res).argmax(1) == y_test))
        summary["best"] = {"trial_id": result.best.trial_id, "settings": result.best.settings,
                           "metrics": result.best.metrics, "int8_test_accuracy": test_acc}
        print(f"best feasible: trial {result.best.trial_id}, int8 test accuracy "
              f"{100 * test_acc:.2f}% ({len(y_test)} held-out test images)")
    print(f"{len(result.trials)} trials ({len(result.ran)} run now) in "
          f"{result.seconds:.0f} s; feasible {summary['feasible']}, infeasible "
          f"{summary['infeasible']}, failed {summary['failed']}")

    os.makedirs(out_dir, exist_ok=True)
    write_json(args.out, summary)
    if "plot" in result.files:
        shutil.copyfile(result.files["plot"], os.path.join(out_dir, "tune_pareto.png"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
