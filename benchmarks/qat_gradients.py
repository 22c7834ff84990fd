"""TF's per-channel fake-quant gradient vs tfedge's vectorized one, side by side.

tfmot fake-quantizes every Conv2D kernel per output channel with
``FakeQuantWithMinMaxVarsPerChannel``; TF's gradient for it is a C++ kernel
that loops over the channels. ``tfedge.qat_gradients`` computes the same
three gradients (input, min, max) with whole-tensor ops. For each kernel
shape both run as ``tf.function`` s on the same inputs (kernel values
N(0, 0.05), per-channel symmetric ranges from the kernel's own abs max, one
value in 16 pushed beyond the range so that every mask has work), in
interleaved rounds so machine noise hits both alike; the table has the median
of the rounds, the speed-up, tfedge's time for ``dx`` alone (in a QAT train
step tfmot's ranges are not trainable, so grappler prunes the rest), the
largest difference between the two results, and the forward fake-quant
likewise: TF's op against tfedge's whole-tensor forward (bit-exact: the
number of differing elements is recorded, and must be 0).

    python benchmarks/qat_gradients.py [--rounds 30] [--out benchmarks/results/qat_gradients.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tfedge.qat_gradients import (per_channel_fake_quant_values,  # noqa: E402  (tfedge first)
                                  per_channel_gradient_values)
import tensorflow as tf  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402

SHAPES = [(3, 3, 512, 512), (1, 1, 1024, 1024), (3, 3, 32, 64)]


def inputs(shape: tuple, seed: int = 0) -> tuple:
    """(grad, kernel, min, max) as a QAT step sees them for a kernel of ``shape``."""
    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, 0.05, shape).astype(np.float32)
    bound = np.abs(kernel).reshape(-1, shape[-1]).max(axis=0) * 0.9  # some values beyond
    grad = rng.normal(size=shape).astype(np.float32)
    return tuple(tf.constant(v) for v in (grad, kernel, -bound, bound))


def timed(fn, args) -> float:
    t = time.perf_counter()
    result = fn(*args)
    for r in tf.nest.flatten(result):
        r.numpy()
    return time.perf_counter() - t


def measure(shape: tuple, rounds: int) -> dict:
    args = inputs(shape)
    tf_gradient = tf.function(
        lambda g, x, lo, hi: tf.quantization.fake_quant_with_min_max_vars_per_channel_gradient(
            g, x, lo, hi, num_bits=8, narrow_range=True))
    ours = tf.function(lambda g, x, lo, hi: per_channel_gradient_values(
        g, x, lo, hi, num_bits=8, narrow_range=True))
    dx_only = tf.function(lambda g, x, lo, hi: per_channel_gradient_values(
        g, x, lo, hi, num_bits=8, narrow_range=True)[0])  # what a QAT train step keeps
    forward = tf.function(
        lambda g, x, lo, hi: tf.quantization.fake_quant_with_min_max_vars_per_channel(
            x, lo, hi, num_bits=8, narrow_range=True))
    forward_ours = tf.function(lambda g, x, lo, hi: per_channel_fake_quant_values(
        x, lo, hi, num_bits=8, narrow_range=True))
    variants = {"tf": tf_gradient, "tfedge": ours, "tfedge_dx": dx_only, "forward": forward,
                "forward_tfedge": forward_ours}
    diffs = [float(np.max(np.abs(a.numpy() - b.numpy())))
             for a, b in zip(tf_gradient(*args), ours(*args))]
    forward_differ = int(np.count_nonzero(forward(*args).numpy() != forward_ours(*args).numpy()))
    for fn in variants.values():  # traced and warm
        timed(fn, args)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn, args))
    median = {name: float(np.median(t)) for name, t in times.items()}
    return {"shape": list(shape), "elements": int(np.prod(shape)), "rounds": rounds,
            "tf_gradient_ms": 1e3 * median["tf"], "tfedge_gradient_ms": 1e3 * median["tfedge"],
            "tfedge_dx_only_ms": 1e3 * median["tfedge_dx"],
            "forward_ms": 1e3 * median["forward"],
            "tfedge_forward_ms": 1e3 * median["forward_tfedge"],
            "forward_speedup": median["forward"] / median["forward_tfedge"],
            "forward_elements_differing": forward_differ,
            "speedup": median["tf"] / median["tfedge"],
            "max_abs_diff": {"dx": diffs[0], "d_min": diffs[1], "d_max": diffs[2]}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default="benchmarks/results/qat_gradients.json")
    args = parser.parse_args(argv)
    rows = [measure(shape, args.rounds) for shape in SHAPES]
    table = [["x".join(map(str, r["shape"])), f"{r['tf_gradient_ms']:.2f}",
              f"{r['tfedge_gradient_ms']:.2f}", f"{r['speedup']:.1f}x",
              f"{r['tfedge_dx_only_ms']:.2f}",
              f"{max(r['max_abs_diff'].values()):.1e}", f"{r['forward_ms']:.2f}",
              f"{r['tfedge_forward_ms']:.2f}", f"{r['forward_speedup']:.1f}x",
              str(r["forward_elements_differing"])] for r in rows]
    print(format_table(["kernel", "TF gradient ms", "tfedge gradient ms", "speed-up",
                        "tfedge dx only ms", "max |diff|", "TF forward ms",
                        "tfedge forward ms", "speed-up", "forward differing"], table,
                       title=f"FakeQuantWithMinMaxVarsPerChannel gradient and forward, median of "
                             f"{args.rounds} rounds"))
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    write_json(args.out, {"threads": {"intra_op": threads, "cpus": os.cpu_count()},
                          "num_bits": 8, "narrow_range": True, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
