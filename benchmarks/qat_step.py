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

``--compare logistic_grid`` instead times ``QATConfig(logistic_grid=True)``
(sigmoid outputs on TFLite's LOGISTIC grid, :mod:`tfedge.qat_configs`)
against ``False`` and the plain Keras step (``--model EfficientNetB0``).
``--compare fuse_relu`` times a standalone BatchNormalization followed by a
ReLU without a range of its own (the ReLU's, as TFLite fuses them; tfedge's
default) against with one (``quantize_configs(fuse_relu=False)``, tfedge
before) and the plain step (``--model DenseNet121``, whose Concatenates'
outputs are such BNs').

    python benchmarks/qat_step.py [--rounds 15] [--out benchmarks/results/qat_step.json]
    python benchmarks/qat_step.py --compare logistic_grid --model EfficientNetB0 \
        --out benchmarks/results/qat_step_logistic_grid.json
    python benchmarks/qat_step.py --compare fuse_relu --model DenseNet121 \
        --out benchmarks/results/qat_step_fuse_relu.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tfedge  # noqa: E402  (tfedge first: it sets up Keras 2)
from tfedge import keras, qat_configs, qat_gradients  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402
import tensorflow as tf  # noqa: E402

# name -> (the block standing in for tfedge's in the train step, QATConfig arguments);
# "plain": the unwrapped Keras model.
VARIANTS = {"tfedge": (qat_gradients.vectorized_per_channel_fake_quant, {}),
            "gradient_only": (qat_gradients.vectorized_per_channel_gradient, {}),
            "tensorflow": (contextlib.nullcontext, {})}
# --compare logistic_grid: what putting sigmoid outputs on TFLite's grid costs per step.
GRID_VARIANTS = {"logistic_grid": (qat_gradients.vectorized_per_channel_fake_quant, {}),
                 "tfmot_sigmoids": (qat_gradients.vectorized_per_channel_fake_quant,
                                    {"logistic_grid": False}),
                 "plain": (None, None)}
# --compare fuse_relu: quantize_configs(fuse_relu=...) of each variant.
FUSE_VARIANTS = {"fused_relu": (qat_gradients.vectorized_per_channel_fake_quant, {}),
                 "bn_range": (qat_gradients.vectorized_per_channel_fake_quant, {}),
                 "plain": (None, None)}
FUSE_RELU = {"fused_relu": True, "bn_range": False}
STEPS_PER_ROUND = 4


def traced_step(context, qat: dict | None, model: str = "MobileNet", batch: int = 32,
                fuse_relu: bool = True) -> tuple:
    """(train function, data iterator) of a wrapped QAT ``model`` (``QATConfig(**qat)``),
    traced with ``context`` standing in for tfedge's block in the train step; with
    ``qat`` None, of the plain Keras model."""
    keras.utils.set_random_seed(0)
    net = getattr(keras.applications, model)(input_shape=(32, 32, 3), weights=None,
                                             classes=10)
    configs = qat_configs.quantize_configs
    qat_configs.quantize_configs = functools.partial(configs, fuse_relu=fuse_relu)
    try:
        edge = net if qat is None else tfedge.wrap(net, quantize=tfedge.QATConfig(**qat))
    finally:
        qat_configs.quantize_configs = configs
    edge.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(),
                 ["accuracy"])
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.random((1024, 32, 32, 3), np.float32), rng.integers(0, 10, 1024)))
    iterator = iter(data.batch(batch).repeat())
    saved = qat_gradients.vectorized_per_channel_fake_quant
    qat_gradients.vectorized_per_channel_fake_quant = context or saved
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
    parser.add_argument("--model", default="MobileNet")
    parser.add_argument("--compare", choices=("per_channel", "logistic_grid", "fuse_relu"),
                        default="per_channel")
    parser.add_argument("--out", default="benchmarks/results/qat_step.json")
    args = parser.parse_args(argv)
    variants, baseline = {"per_channel": (VARIANTS, "tensorflow"),
                          "logistic_grid": (GRID_VARIANTS, "tfmot_sigmoids"),
                          "fuse_relu": (FUSE_VARIANTS, "bn_range")}[args.compare]
    steps = {name: traced_step(context, qat, args.model, fuse_relu=FUSE_RELU.get(name, True))
             for name, (context, qat) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (function, iterator) in steps.items():
            start = time.perf_counter()
            for _ in range(STEPS_PER_ROUND):
                logs = function(iterator)
            float(logs["loss"])
            times[name].append((time.perf_counter() - start) / STEPS_PER_ROUND)
    median = {name: float(np.median(t)) for name, t in times.items()}
    print(format_table(["variant", "median step s", f"{baseline} / variant"],
                       [[name, f"{median[name]:.4f}",
                         f"{median[baseline] / median[name]:.2f}x"] for name in variants],
                       title=f"wrapped QAT {args.model} train step, median of {args.rounds} "
                             "rounds"))
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    write_json(args.out, {"model": args.model, "compare": args.compare, "input": 32, "batch": 32,
                          "threads": {"intra_op": threads, "cpus": os.cpu_count()},
                          "load_average": list(os.getloadavg()), "rounds": args.rounds,
                          "steps_per_round": STEPS_PER_ROUND, "median_step_s": median,
                          "step_s": times})
    return 0


if __name__ == "__main__":
    sys.exit(main())
