"""Where a wrapped prune -> QAT training step spends its time, next to the plain step.

One keras.applications model (random init, 32x32 digits RGB as in
``benchmarks/zoo.py``): the plain Keras model trains one epoch, then one more
under TensorFlow's profiler; ``tfedge.wrap`` (prune 50% for one epoch, then
sparsity-preserving QAT) trains its two epochs, then one more QAT epoch under
the profiler. From each trace: the op time by op type, split into forward
and backward (ops under ``gradient_tape/``), per training step. Op time is
summed over TensorFlow's compute threads, so it can exceed the wall time.

    python benchmarks/qat_profile.py [--model ResNet50] [--train 256]
                                     [--out benchmarks/results/qat_profile.json]
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tfedge  # noqa: E402  (first: tf.keras is tf_keras)
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402
from tfedge import keras  # noqa: E402
from tfedge.data import load_digits  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402
from recipes.data import digits_rgb  # noqa: E402

BATCH = 32


def op_times(logdir: str) -> dict:
    """{(op type, "forward" | "backward"): seconds} summed over a trace's compute threads."""
    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    times: dict = collections.defaultdict(float)
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:
                    continue  # executor bookkeeping (ExecutorState::Process), not an op
                op_name, op_type = name.rsplit(":", 1)
                side = "backward" if "gradient_tape/" in op_name else "forward"
                times[(op_type, side)] += event.duration_ps * 1e-12
    return times


def profiled_epoch(model, x, y) -> tuple[dict, float]:
    """One epoch of ``model.fit`` under the profiler: (op times, wall seconds)."""
    logdir = tempfile.mkdtemp(prefix="qat_profile_")
    tf.profiler.experimental.start(logdir)
    t = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    wall = time.perf_counter() - t
    tf.profiler.experimental.stop()
    return op_times(logdir), wall


def summarize(times: dict, steps: int) -> dict:
    per_step = {f"{op}/{side}": 1e3 * s / steps for (op, side), s in times.items()}
    return {"op_ms_per_step": dict(sorted(per_step.items(), key=lambda kv: -kv[1])),
            "forward_ms": sum(v for k, v in per_step.items() if k.endswith("/forward")),
            "backward_ms": sum(v for k, v in per_step.items() if k.endswith("/backward"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ResNet50")
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/qat_profile.json")
    args = parser.parse_args(argv)
    (x, y), _ = load_digits()
    x, y = digits_rgb(x[:args.train], 32) * 255, y[:args.train]
    steps = int(np.ceil(len(x) / BATCH))
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, args.model)(input_shape=(32, 32, 3), weights=None,
                                                    classes=10)
    loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    plain_times, plain_wall = profiled_epoch(model, x, y)
    edge = tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, end_epoch=1),
                       quantize=tfedge.QATConfig(start_epoch=1))
    edge.compile(keras.optimizers.Adam(3e-4), loss, ["accuracy"])
    edge.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)  # prune, then the first QAT epoch
    qat_times, qat_wall = profiled_epoch(edge, x, y)
    plain, qat = summarize(plain_times, steps), summarize(qat_times, steps)
    plain_ops = plain["op_ms_per_step"]
    extra = {k: v - plain_ops.get(k, 0.0) for k, v in qat["op_ms_per_step"].items()}
    extra = dict(sorted(extra.items(), key=lambda kv: -kv[1]))
    rows = [[k, f"{plain_ops.get(k, 0.0):.1f}", f"{qat['op_ms_per_step'][k]:.1f}", f"{v:.1f}"]
            for k, v in list(extra.items())[:args.top]]
    print(format_table(["op type / pass", "plain ms/step", "QAT ms/step", "extra ms/step"], rows,
                       title=f"{args.model}: op time per step, plain vs wrapped QAT "
                             f"(wall {1e3 * plain_wall / steps:.0f} vs "
                             f"{1e3 * qat_wall / steps:.0f} ms/step)"))
    print(f"forward {plain['forward_ms']:.0f} -> {qat['forward_ms']:.0f} ms, backward "
          f"{plain['backward_ms']:.0f} -> {qat['backward_ms']:.0f} ms per step (op time)")
    write_json(args.out, {"model": args.model, "input": 32, "batch": BATCH, "steps": steps,
                          "plain_wall_ms_per_step": 1e3 * plain_wall / steps,
                          "qat_wall_ms_per_step": 1e3 * qat_wall / steps,
                          "plain": plain, "qat": qat, "extra_ms_per_step": extra})
    return 0


if __name__ == "__main__":
    sys.exit(main())
