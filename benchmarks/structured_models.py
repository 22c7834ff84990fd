"""The models, data and training helpers that ``structured.py``'s families,
its detector and ``structured_plans.py`` share.

The families: the digits CNN of ``compression.py`` on 8x8 digits, and
MobileNetV2 0.35 on digits upsampled to 96x96 (``FAMILIES``); the width of a
family's architecture nearest a MAC target (``scratch_width``, the scratch
baselines); a cosine-decayed fine-tune, distilled or not (``fine_tune``);
``--factorize LAYER=RANK`` parsing; and the per-variant bench fields of a
result row. Imports nothing of ``structured.py`` (data flows one way).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfedge  # noqa: E402
from tfedge import channels, keras  # noqa: E402
from tfedge.data import load_digits  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compression import compile_, digits_cnn  # noqa: E402

TARGETS = ["rpi3", "rpi4", "rpi5"]


def fast_batchnorm(model: keras.Model, momentum: float = 0.9) -> keras.Model:
    """BatchNorm moving statistics that follow a few hundred steps.

    keras.applications builds MobileNetV2 with momentum 0.999: after the ~500
    steps of a digits run its moving statistics are still near their initial
    values and the model scores chance (10%) in inference mode.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
    return model


def mobilenet_v2(alpha: float, name: str, size: int = 96) -> keras.Model:
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                           weights=None, classes=10,
                                           classifier_activation=None)
    model._name = name
    return fast_batchnorm(model)


def digits_at(size: int):
    import tensorflow as tf

    (x, y), (x_test, y_test) = load_digits()

    def up(a):
        return np.repeat(tf.image.resize(a, (size, size), "bilinear").numpy(), 3, axis=-1)
    return (up(x), y), (up(x_test), y_test)


FAMILIES: dict[str, dict[str, Any]] = {
    "digits_cnn": {"build": digits_cnn, "width": 16, "widths": list(range(4, 17)),
                   "data": load_digits, "epochs": 15, "lr": 1e-3, "prune_epochs": 4,
                   "tune_epochs": 4, "multiple": 4},
    "mobilenet_v2": {"build": mobilenet_v2, "width": 0.35,
                     "widths": [0.1, 0.15, 0.2, 0.25, 0.3, 0.35],
                     "data": lambda: digits_at(96), "epochs": 12, "lr": 2e-3,
                     "prune_epochs": 2, "tune_epochs": 2, "multiple": 16},
}


def progress(tag: str) -> Callable[[str], None]:
    """A ``log(msg)`` printing ``[tag HH:MM:SS] msg`` to stderr (a benchmark's progress)."""
    def log(msg: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    return log


def fine_tune(model: Any, x: Any, y: Any, epochs: int, lr: float, teacher: Any = None,
              **phases: Any) -> Any:
    """``epochs`` of training with a cosine-decayed learning rate, distilled
    from ``teacher`` (``tfedge.wrap(model, teacher=...)``) when one is given;
    ``phases`` are more ``tfedge.wrap`` phases (``factorize=``, ``quantize=``);
    one given as None is left out (a plain fine-tune when none is left)."""
    phases = {k: v for k, v in phases.items() if v is not None}
    steps = -(-len(x) // 32) * epochs
    if teacher is None and not phases:
        compile_(model, lr, steps).fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        return model
    edge = compile_(tfedge.wrap(model, teacher=teacher, **phases), lr, steps)
    edge.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return edge.finish()


def parse_spec(spec: str) -> dict[str, Any]:
    """``"instructions=0.55,target=rpi4+rpi5"`` -> ``plan_channels`` keyword arguments."""
    out: dict[str, Any] = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key == "target":
            out[key] = value.split("+") if "+" in value else value
        elif key in ("macs", "params", "instructions"):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def parse_ranks(spec: str) -> dict[str, int]:
    """``"Conv_1=32,block_16_project=8"`` -> ``{"Conv_1": 32, "block_16_project": 8}``
    (``LowRankConfig(ranks=)``; the config checks the ranks, ``factorize`` the names)."""
    try:
        return {k: int(v) for k, v in (item.split("=") for item in spec.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec!r}: give LAYER=RANK[,LAYER=RANK...], e.g. "
                                         "Conv_1=32") from None


def ranks_label(ranks: dict[str, int]) -> str:
    """How a variant factorized at ``ranks`` is named: ``" + low-rank Conv_1 r32"``."""
    return " + low-rank " + ", ".join(f"{k} r{v}" for k, v in ranks.items())


# ``parser.add_argument("--factorize", **FACTORIZE_ARGUMENT, help=...)``: one variant per value
FACTORIZE_ARGUMENT: dict[str, Any] = {"nargs": "+", "type": parse_ranks, "default": [],
                                      "metavar": "LAYER=RANK[,LAYER=RANK]"}


def scratch_width(spec: dict[str, Any], target_macs: float) -> tuple[Any, int]:
    """The width of the family's architecture whose MACs are closest to the target."""
    best = None
    for width in spec["widths"]:
        macs = channels.keras_macs(spec["build"](width, "probe"))
        if best is None or abs(macs - target_macs) < abs(best[1] - target_macs):
            best = (width, macs)
    return best


def bench_fields(artifact: Any, bench_report: Any, ratio: dict[str, Any]) -> dict[str, Any]:
    """The size, MACs, host p50, emulated instructions and ratios of one row of
    the comparison table (``tfedge.compare``'s report and ratios for ``artifact``)."""
    return {"size_bytes": artifact.size_bytes, "macs": bench_report.cost.macs,
            "host_p50_ms": bench_report.host.latency_ms["p50"],
            "instructions": {t.target: t.instructions for t in bench_report.targets},
            "ratios": ratio}
