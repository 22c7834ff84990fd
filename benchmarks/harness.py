"""MobileNetV2 (alpha 0.35, 96x96): float vs int8 vs pruned int8, on this host and three ARM cores.

Builds keras.applications MobileNetV2 (tf_keras, weights=None: nothing is
downloaded; random weights change no instruction count, as the kernels do
not depend on the values), converts it to float32 and full int8, and prunes
a copy to 75 % sparsity (a few steps of tfedge.wrap's pruning on random data)
before int8 conversion. All three go through ``tfedge.bench`` in one run:
LiteRT latency on this host, then LiteRT's aarch64 build under qemu on
rpi3 (cortex-a53), rpi4 (cortex-a72) and rpi5 (cortex-a76): exact
instructions per inference, outputs compared bit for bit with the host, and
the device estimates (instruction- and MAC-based, both labelled estimates)
with the MAC-bound lower bound. The int8 model and a small digits-size int8
CNN also run under ``-cpu max`` (SVE, dot product, i8mm) with and without
SVE: the bit-exact check shows where the two builds disagree.

    python benchmarks/harness.py [--runs 100] [--out benchmarks/results/harness.json]
    python benchmarks/harness.py --calibrate   # re-derive tfedge/devices.py's IPC

``--calibrate`` rebuilds MobileNetV2 1.0 224 and prints the instruction counts
and the IPC / efficiency constants derived from XNNPACK's published latencies
(the derivation written in tfedge/devices.py); it takes several minutes.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfedge  # noqa: E402
from tfedge import devices, keras  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402

TARGETS = ["rpi3", "rpi4", "rpi5"]
SVE_CHECK = ["max", "max,sve=off"]


def mobilenet_v2(alpha: float, size: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                          weights=None)


def calibration_data(size: int, n: int = 32) -> np.ndarray:
    """Random images in MobileNetV2's input range [-1, 1] (no dataset downloads)."""
    return np.random.default_rng(0).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def pruned_copy(model: keras.Model, sparsity: float, size: int) -> keras.Model:
    """A copy pruned to ``sparsity`` with tfedge.wrap (tfmot), a few steps on random data."""
    x = calibration_data(size, 48)
    y = np.random.default_rng(1).integers(0, 1000, len(x))
    edge = tfedge.wrap(model, prune=tfedge.PruneConfig(sparsity, begin_step=0, end_step=4,
                                                       frequency=1))
    edge.compile(keras.optimizers.SGD(1e-4), keras.losses.SparseCategoricalCrossentropy())
    edge.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return edge.finish()


def build_models(alpha: float, size: int, sparsity: float) -> dict[str, tfedge.TFLiteArtifact]:
    model = mobilenet_v2(alpha, size)
    rep = calibration_data(size)
    return {
        "float32": tfedge.convert(model, mode="float32"),
        "int8": tfedge.convert(model, representative_data=rep),
        f"pruned{int(100 * sparsity)}-int8": tfedge.convert(pruned_copy(model, sparsity, size),
                                                            representative_data=rep),
    }


def digits_cnn_int8() -> tfedge.TFLiteArtifact:
    """The tests' digits CNN shape (8x8x1, conv 16, conv 32, dense 64, 10), random weights."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    rep = np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    return tfedge.convert(model, representative_data=rep)


def calibrate() -> int:
    """Prints the instruction counts and constants of tfedge/devices.py's derivation."""
    model = mobilenet_v2(1.0, 224)
    arts = {"float32": tfedge.convert(model, mode="float32"),
            "int8": tfedge.convert(model, representative_data=calibration_data(224, 8))}
    macs = tfedge.model_cost(arts["float32"]).macs
    counts = {}
    for mode, art in arts.items():
        report = tfedge.bench(art, target=["cortex-a53", "cortex-a72", "cortex-a76"], runs=3,
                              warmup=1, emulation_runs=1)
        counts[mode] = {t.target: t.instructions for t in report.targets}
    # Published single-thread latencies (XNNPACK README) and the proxies of devices.py.
    ipc = {"cortex-a76": counts["float32"]["cortex-a76"] / (55e-3 * 2.0e9),   # Pixel 3a, A75
           "cortex-a72": counts["float32"]["cortex-a72"] / (53e-3 * 2.35e9),  # Pixel 2, A73
           "cortex-a53": counts["float32"]["cortex-a53"] / (79e-3 * 1.89 * 1.4e9)}  # RPi 3+
    rows = []
    for name in ("rpi3", "rpi4", "rpi5"):
        p = devices.PROFILES[name]
        t_fp32 = counts["float32"][p.qemu_cpu] / (ipc[p.qemu_cpu] * p.clock_hz)
        t_int8 = counts["int8"][p.qemu_cpu] / (ipc[p.qemu_cpu] * p.clock_hz)
        eff_fp32 = macs / (p.macs_per_cycle["fp32"] * p.clock_hz) / t_fp32
        eff_int8 = macs / (p.macs_per_cycle["int8"] * p.clock_hz) / t_int8
        rows.append([name, p.qemu_cpu, f"{counts['float32'][p.qemu_cpu]:,}",
                     f"{counts['int8'][p.qemu_cpu]:,}", f"{ipc[p.qemu_cpu]:.3f}", p.ipc,
                     f"{eff_fp32:.3f}", p.efficiency["fp32"], f"{eff_int8:.3f}",
                     p.efficiency["int8"]])
    print(format_table(["profile", "cpu", "fp32 instr", "int8 instr", "IPC", "in code",
                        "eff fp32", "in code", "eff int8", "in code"], rows,
                       title=f"MobileNetV2 1.0 224 ({macs:,} MACs): derived vs tfedge/devices.py"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width.")
    parser.add_argument("--size", type=int, default=96, help="Input height and width.")
    parser.add_argument("--sparsity", type=float, default=0.75, help="Pruned model sparsity.")
    parser.add_argument("--runs", type=int, default=100, help="Timed host runs per model.")
    parser.add_argument("--calibrate", action="store_true",
                        help="Re-derive the IPC and efficiency constants instead.")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "harness.json"),
                        help="Where to write the JSON results.")
    args = parser.parse_args(argv)
    if args.calibrate:
        return calibrate()

    start = time.time()
    models = build_models(args.alpha, args.size, args.sparsity)
    build_s = time.time() - start
    start = time.time()
    report = tfedge.compare(models, target=TARGETS + ["cortex-m7"], runs=args.runs,
                            warmup=10)
    sve_models = {"int8": models["int8"], "digits CNN int8": digits_cnn_int8()}
    sve = [tfedge.bench(art, target=SVE_CHECK, runs=5, warmup=1, name=name)
           for name, art in sve_models.items()]
    bench_s = time.time() - start

    sizes = []
    for name, art in models.items():
        sparsity = art.flatbuffer.weight_sparsity()
        total = sum(r["size"] for r in sparsity)
        zeros = sum(r["size"] * r["sparsity"] for r in sparsity)
        sizes.append({"model": name, "bytes": art.size_bytes,
                      "gzip_bytes": len(gzip.compress(art.content, 9)),
                      "weight_sparsity": zeros / max(total, 1)})
    print(report)
    print()
    print(format_table(["model", "bytes", "gzip bytes", "weight sparsity"],
                       [[s["model"], f"{s['bytes']:,}", f"{s['gzip_bytes']:,}",
                         f"{100 * s['weight_sparsity']:.1f}%"] for s in sizes],
                       title="sizes (gzip shows what pruning buys for download; int8 kernels "
                             "do not skip zeros)"))
    print()
    print(format_table(
        ["model", "under", "instructions", "= host", "differing outputs", "max abs diff"],
        [[r.name, t.target, f"{t.instructions:,}", "yes" if t.outputs_match else "NO",
          f"{t.mismatched_elements} of "
          f"{sum(int(np.prod(o.shape)) for o in sve_models[r.name].outputs)}",
          t.max_abs_diff] for r in sve for t in r.targets],
        title="int8 under qemu -cpu max (SVE, dot product, i8mm), with and without SVE"))
    print(f"\nbuild {build_s:.0f} s, benchmark {bench_s:.0f} s "
          f"(host: {report.reports[0].host.machine})")

    write_json(args.out, {"model": f"MobileNetV2 alpha {args.alpha} {args.size}x{args.size}",
                          "targets": TARGETS + ["cortex-m7"], "sizes": sizes,
                          "compare": report.to_dict(),
                          "sve_check": [{"model": r.name, **t.to_dict()}
                                        for r in sve for t in r.targets],
                          "build_seconds": build_s, "bench_seconds": bench_s})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
