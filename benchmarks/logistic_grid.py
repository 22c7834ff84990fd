"""QAT with sigmoid outputs on TFLite's int8 LOGISTIC grid vs tfmot's treatment, side by side.

TFLite's int8 ``LOGISTIC`` always outputs multiples of 1/256; tfmot
fake-quantizes a sigmoid's input, never its output, and swish (``LOGISTIC``
then ``MUL`` in the int8 file) only after the product.
``QATConfig(logistic_grid=True)`` (tfedge's default) puts both on the grid
(:mod:`tfedge.prepare`). Per seed, one float model is trained as in
``benchmarks/zoo.py`` and wrapped twice from it (prune 50% -> QAT, the same
seed), once per setting, converted to int8 and validated on the held-out
smoke data. Per run:

* ``agreement``: Keras-vs-LiteRT top-1 (the zoo's number);
* ``decisive agreement``: the same on the samples whose Keras top-2 margin is
  at least ``--margin`` steps of the int8 output (1/256): top-1 of a sample
  whose two best classes are a step or two apart is decided by rounding, in
  any int8 kernel;
* ``output MAE (steps)`` and ``SNR``: how far the int8 outputs are from the
  QAT model's, a continuous measure that near-ties do not decide;
* ``int8 self-agreement``: the int8 model's top-1 on the test data against
  its own top-1 with 1% of the input values moved by one int8 input step:
  how much of the disagreement one-step rounding flips alone explain.

    python benchmarks/logistic_grid.py [--models EfficientNetB0] [--seeds 0 1 2]
        [--out benchmarks/results/logistic_grid.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import zoo  # noqa: E402  (imports tfedge first)
import tfedge  # noqa: E402
from tfedge._keras import keras  # noqa: E402
from tfedge._validate import TFLiteRunner, compare_outputs  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402


def qat_run(model, grid: bool, seed: int, data: tuple, margin: float) -> dict:
    """prune 50% -> QAT (``logistic_grid=grid``) -> int8 -> validated, as in the zoo."""
    x, y, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    t = time.perf_counter()
    final = zoo.prune_qat(model, x, y, qat={"logistic_grid": grid}).finish()
    art = tfedge.convert(final, x[:100])
    keras_out = np.asarray(final.predict(x_test, verbose=0))
    runner = TFLiteRunner(art.content)  # one interpreter for both runs below
    tflite_out = np.asarray(runner.predict(x_test)).reshape(keras_out.shape)
    report = compare_outputs(keras_out, tflite_out, y_test, mode=art.mode)
    top2 = np.sort(keras_out, axis=-1)[:, -2:]
    step = 1.0 / 256  # the int8 SOFTMAX output's scale
    decisive = (top2[:, 1] - top2[:, 0]) >= margin * step
    agree = keras_out.argmax(-1) == tflite_out.argmax(-1)
    # The int8 model's own sensitivity to rounding: 1% of the input values moved by one
    # step of the int8 input's scale, the size of the flips QAT and int8 differ by.
    in_scale = float(art.inputs[0].scale[0])
    rng = np.random.default_rng(seed)
    moved = x_test + (rng.random(x_test.shape) < 0.01) * rng.choice([-1, 1], x_test.shape) \
        * in_scale
    tflite_moved = np.asarray(runner.predict(moved.astype("float32"))).reshape(keras_out.shape)
    return {"grid": grid, "seed": seed, "agreement": report.agreement,
            "decisive_samples": int(decisive.sum()),
            "decisive_agreement": float(agree[decisive].mean()) if decisive.any() else None,
            "disagreements": int((~agree).sum()),
            "int8_self_agreement_one_step": float(
                (tflite_out.argmax(-1) == tflite_moved.argmax(-1)).mean()),
            "output_mae_steps": float(np.abs(keras_out - tflite_out).mean() / step),
            "snr_db": report.snr_db, "qat_keras_accuracy": report.keras_accuracy,
            "int8_accuracy": report.tflite_accuracy, "float_ops": len(art.flatbuffer.float_ops()),
            "seconds": time.perf_counter() - t}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="EfficientNetB0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--margin", type=float, default=3.0,
                        help="decisive: Keras top-2 margin of at least this many output steps")
    parser.add_argument("--grid", choices=("both", "on", "off"), default="both",
                        help="on / off alone: e.g. the self-agreement of a model without "
                             "sigmoids, where the setting changes nothing")
    parser.add_argument("--out", default="benchmarks/results/logistic_grid.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    settings = {"both": (False, True), "on": (True,), "off": (False,)}[args.grid]
    for name in args.models.split(","):
        data = zoo.smoke_data(zoo.SIZES[name])
        for seed in args.seeds:
            keras.utils.set_random_seed(seed)
            model = zoo.train_plain(zoo.build(name, keras), keras, data[0], data[1])
            for grid in settings:  # wrap copies the model: both start from the same one
                row = {"model": name, **qat_run(model, grid, seed, data, args.margin)}
                rows.append(row)
                print(f"{name} seed {seed} grid {grid}: agreement {row['agreement']:.2%} "
                      f"MAE {row['output_mae_steps']:.3f} steps", flush=True)
                write_json(args.out, {"settings": {**zoo.SETTINGS, "margin": args.margin},
                                      "rows": rows, "seconds": time.perf_counter() - t0})
    summary = []
    for name in args.models.split(","):
        for grid in settings:
            mine = [r for r in rows if r["model"] == name and r["grid"] == grid]
            summary.append({"model": name, "grid": grid, "runs": len(mine), **{
                k: float(np.mean([r[k] for r in mine])) for k in
                ("agreement", "decisive_agreement", "output_mae_steps", "snr_db",
                 "int8_accuracy", "int8_self_agreement_one_step")}})
    print(format_table(
        ["model", "seed", "logistic grid", "agreement", "decisive", "MAE steps", "SNR dB",
         "int8 acc", "int8 self-agr."],
        [[r["model"], r["seed"], r["grid"], f"{r['agreement']:.2%}",
          f"{r['decisive_agreement']:.2%} of {r['decisive_samples']}",
          f"{r['output_mae_steps']:.3f}", f"{r['snr_db']:.1f}", f"{r['int8_accuracy']:.2%}",
          f"{r['int8_self_agreement_one_step']:.2%}"] for r in rows]
        + [[s["model"], "mean", s["grid"], f"{s['agreement']:.2%}",
            f"{s['decisive_agreement']:.2%}", f"{s['output_mae_steps']:.3f}",
            f"{s['snr_db']:.1f}", f"{s['int8_accuracy']:.2%}",
            f"{s['int8_self_agreement_one_step']:.2%}"] for s in summary]))
    write_json(args.out, {"settings": {**zoo.SETTINGS, "margin": args.margin}, "rows": rows,
                          "summary": summary, "seconds": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
