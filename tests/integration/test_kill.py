"""SIGKILL during a save or an export never costs the user the model they had.

A forked child saves (or exports) two models in turn over the same target,
forever; the parent kills it at a random moment. Afterwards the target must
be the old model or the new one, whole, and load; a bundle must pass
``check_bundle``. Forking (instead of a fresh interpreter per kill) keeps
TensorFlow's import out of the loop, so twenty-odd kills take seconds.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import time

import numpy as np
import pytest

import tfedge
from tfedge import keras


def _dense_artifact(seed: int):
    """A float32 model of about 4 MB, so that one save takes long enough to interrupt."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((512,))
    h = keras.layers.Dense(1024, activation="relu")(inputs)
    outputs = keras.layers.Dense(512)(h)
    return tfedge.convert(keras.Model(inputs, outputs, name=f"dense{seed}"), mode="float32")


@pytest.fixture(scope="module")
def two_models():
    a, b = _dense_artifact(0), _dense_artifact(1)
    a.runtime_settings(), b.runtime_settings()  # found here, not in the forked children
    return a, b


def _kill_at_random(work, trials: int, max_delay: float, rng: random.Random,
                    after_each) -> list[str]:
    """Forks ``work`` (which loops forever) ``trials`` times, SIGKILLs it at a random moment."""
    outcomes = []
    for _ in range(trials):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: signal that it runs, then write until killed
            os.close(read)
            try:
                os.write(write, b"x")
                work()
            finally:
                os._exit(1)
        os.close(write)
        os.read(read, 1)
        os.close(read)
        time.sleep(rng.uniform(0.0, max_delay))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        outcomes.append(after_each())
    return outcomes


def _sha(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


def test_killed_save_leaves_the_old_or_the_new_model(two_models, tmp_path):
    a, b = two_models
    target = str(tmp_path / "model.tflite")
    a.save(target)  # the model the user shipped
    shas = {a.sha256: "old", b.sha256: "new"}
    saves = []

    def work():
        while True:
            for art in (b, a):
                art.save(target)

    def after_each():
        digest = _sha(target)
        kind = shas.get(digest, "corrupt" if digest else "missing")
        if kind in ("old", "new"):
            loaded = tfedge.load(target, probe=False)
            assert loaded.sha256 == digest
        saves.append(kind)
        return kind

    started = time.perf_counter()
    t0 = time.perf_counter()
    b.save(str(tmp_path / "timing.tflite"))
    one_save = time.perf_counter() - t0
    outcomes = _kill_at_random(work, 24, max(0.05, 6 * one_save), random.Random(0), after_each)
    leftovers = sorted(n for n in os.listdir(tmp_path)
                       if n not in ("model.tflite", "model_card.json", "timing.tflite",
                                    "timing_card.json"))
    print(f"\nkill test (save): {len(outcomes)} kills, one save {one_save * 1000:.0f} ms, "
          f"outcomes {dict((k, outcomes.count(k)) for k in set(outcomes))}, "
          f"{len(leftovers)} temporary file(s) left, {time.perf_counter() - started:.1f} s")
    assert set(outcomes) <= {"old", "new"}, outcomes
    assert len(outcomes) >= 20
    assert len(leftovers) <= 2, leftovers  # model and card temp files of the last kill only


def test_killed_export_leaves_a_whole_bundle(two_models, tmp_path):
    a, b = two_models
    bundle = str(tmp_path / "android")
    samples = np.random.default_rng(0).standard_normal((2, 512)).astype(np.float32)
    tfedge.export_android(a, bundle, sample_inputs=samples)

    def work():
        while True:
            for art in (b, a):
                tfedge.export_android(art, bundle, sample_inputs=samples)

    def after_each():
        if not os.path.isdir(bundle):
            return "missing"
        check = tfedge.check_bundle(bundle)
        if not check.ok:
            return "broken: " + "; ".join(f"{c}: {d}" for c, ok, d in check.checks if not ok)
        return "whole"

    t0 = time.perf_counter()
    tfedge.export_android(b, str(tmp_path / "timing"), sample_inputs=samples)
    one = time.perf_counter() - t0
    outcomes = _kill_at_random(work, 20, max(0.1, 3 * one), random.Random(1), after_each)
    left = [n for n in os.listdir(tmp_path) if n not in ("android", "timing")]
    print(f"\nkill test (export): {len(outcomes)} kills, one export {one * 1000:.0f} ms, "
          f"broken {sum(o != 'whole' for o in outcomes)}, {len(left)} staging folder(s) left")
    assert len(left) <= 1, left  # a killed export's staging folder goes at the next export
    assert all(o == "whole" for o in outcomes), outcomes
    assert len(outcomes) >= 20
