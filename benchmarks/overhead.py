"""Training-step cost of tfedge.wrap pruning vs hand-written tfmot vs plain fit.

Same model, same data, same batch size, in one process. The three variants are
run in interleaved rounds (a, b, c, a, b, c, ...) so that noise from the
machine hits all of them alike; each round times every training step after a
warm-up epoch, and the table reports the median step time over all rounds.

    python benchmarks/overhead.py [--rounds 5] [--epochs 3] [--out benchmarks/results/overhead.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfedge  # noqa: E402
from tfedge import keras  # noqa: E402
from tfedge.data import load_digits  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402

import tensorflow_model_optimization as tfmot  # noqa: E402


def build(width: int) -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(4 * width, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


class StepTimer(keras.callbacks.Callback):
    """Records the wall time of each training batch after the first epoch."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch > 0:  # epoch 0 includes tracing
            self.times.append(time.perf_counter() - self._t)


def compile_(model):
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def plain(model, x, y, args, timer):
    compile_(model).fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=0,
                        callbacks=[timer])


def hand_tfmot(model, x, y, args, timer):
    steps = int(np.ceil(len(x) / args.batch_size)) * args.epochs
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=steps,
                                                    frequency=max(1, steps // 10))
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    compile_(pruned).fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=0,
                         callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), timer])


def with_tfedge(model, x, y, args, timer):
    wrapped = tfedge.wrap(model, prune=0.8)
    compile_(wrapped).fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=0,
                          callbacks=[timer])


VARIANTS = {"plain fit": plain, "tfmot by hand": hand_tfmot, "tfedge.wrap": with_tfedge}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5,
                        help="Interleaved rounds of the three variants (default 5).")
    parser.add_argument("--epochs", type=int, default=3,
                        help="Epochs per round; the first is not timed (default 3).")
    parser.add_argument("--batch-size", type=int, default=64, help="Batch size (default 64).")
    parser.add_argument("--width", type=int, default=32, help="Model width (default 32).")
    parser.add_argument("--out", default="benchmarks/results/overhead.json",
                        help="Where to write the JSON results.")
    args = parser.parse_args(argv)

    (x, y), _ = load_digits()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name, run in VARIANTS.items():
            keras.utils.set_random_seed(r)
            timer = StepTimer()
            run(build(args.width), x, y, args, timer)
            times[name].extend(timer.times)
            keras.backend.clear_session()
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    median = {name: float(np.median(t)) for name, t in times.items()}
    base = median["tfmot by hand"]
    rows = [[name, len(times[name]), f"{1e3 * median[name]:.3f}",
             f"{1e3 * float(np.percentile(times[name], 90)):.3f}",
             f"{median[name] / median['plain fit']:.3f}x", f"{median[name] / base:.3f}x"]
            for name in VARIANTS]
    print(format_table(["variant", "steps", "median ms/step", "p90 ms/step", "vs plain",
                        "vs tfmot"], rows,
                       title=f"Training-step time, digits CNN width {args.width}, "
                             f"batch {args.batch_size}, {args.rounds} interleaved rounds"))
    result = {"settings": vars(args), "median_step_s": median,
              "p90_step_s": {n: float(np.percentile(t, 90)) for n, t in times.items()},
              "ratio_tfedge_vs_tfmot": median["tfedge.wrap"] / base,
              "ratio_tfmot_vs_plain": base / median["plain fit"]}
    write_json(args.out, result)
    print(f"tfedge / tfmot = {result['ratio_tfedge_vs_tfmot']:.3f}x  (target <= 1.05x); "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
