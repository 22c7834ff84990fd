"""A wrapped QAT train step with tfedge's per-channel fake quant, in three variants.

``EdgeModel.train_step`` runs tfmot's per-channel kernel fake quant with
whole-tensor ops (``tfedge.qat_gradients``). This measures what each part
buys on one model (``keras.applications.MobileNet``, random init, 32x32
input, batch 32, random data): the step as tfedge traces it (forward and
gradient vectorized), with the gradient alone vectorized (tfedge before the
forward was), and with TensorFlow's forward and gradient. The three train
functions are traced once each, then timed in interleaved rounds (a few
steps per variant per round) so that machine noise hits all alike; the
table has the median step of the rounds.

    python benchmarks/qat_step.py [--rounds 15] [--out benchmarks/results/qat_step.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tfedge  # noqa: E402  (tfedge first: it sets up Keras 2)
from tfedge import keras, qat_gradients  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402
import tensorflow as tf  # noqa: E402

VARIANTS = {"tfedge": qat_gradients.vectorized_per_channel_fake_quant,
            "gradient_only": qat_gradients.vectorized_per_channel_gradient,
            "tensorflow": contextlib.nullcontext}
STEPS_PER_ROUND = 4


def traced_step(context, batch: int = 32) -> tuple:
    """(train function, data iterator) of a wrapped QAT MobileNet, traced with
    ``context`` standing in for tfedge's block in the train step."""
    keras.utils.set_random_seed(0)
    net = keras.applications.MobileNet(input_shape=(32, 32, 3), weights=None, classes=10)
    edge = tfedge.wrap(net, quantize=True)
    edge.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(),
                 ["accuracy"])
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.random((1024, 32, 32, 3), np.float32), rng.integers(0, 10, 1024)))
    iterator = iter(data.batch(batch).repeat())
    saved = qat_gradients.vectorized_per_channel_fake_quant
    qat_gradients.vectorized_per_channel_fake_quant = context
    try:
        function = edge.make_train_function()
        function(iterator)  # traced here, with ``context``
    finally:
        qat_gradients.vectorized_per_channel_fake_quant = saved
    for _ in range(3):
        function(iterator)
    return function, iterator


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/qat_step.json")
    args = parser.parse_args(argv)
    steps = {name: traced_step(context) for name, context in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (function, iterator) in steps.items():
            start = time.perf_counter()
            for _ in range(STEPS_PER_ROUND):
                logs = function(iterator)
            float(logs["loss"])
            times[name].append((time.perf_counter() - start) / STEPS_PER_ROUND)
    median = {name: float(np.median(t)) for name, t in times.items()}
    print(format_table(["variant", "median step s", "vs tensorflow"],
                       [[name, f"{median[name]:.4f}",
                         f"{median['tensorflow'] / median[name]:.2f}x"] for name in VARIANTS],
                       title=f"wrapped QAT MobileNet train step, median of {args.rounds} rounds"))
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    write_json(args.out, {"model": "MobileNet", "input": 32, "batch": 32,
                          "threads": {"intra_op": threads, "cpus": os.cpu_count()},
                          "load_average": list(os.getloadavg()), "rounds": args.rounds,
                          "steps_per_round": STEPS_PER_ROUND, "median_step_s": median,
                          "step_s": times})
    return 0


if __name__ == "__main__":
    sys.exit(main())
