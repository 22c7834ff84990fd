"""The command line starts without TensorFlow: --help, inspect and check (run in subprocesses).

Not a timing test: it checks what the process imported (``sys.modules``), which
is what makes the difference (``import tensorflow`` alone takes seconds).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tfedge
from tfedge import keras

_RUN = textwrap.dedent("""
    import json, sys
    from tfedge.cli import main
    try:
        status = main(sys.argv[1:])
    except SystemExit as done:  # --help exits
        status = done.code
    heavy = sorted(m for m in ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization")
                   if m in sys.modules)
    print("RESULT " + json.dumps({"status": status, "heavy": heavy}))
""")


def _cli(*args: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True, text=True,
                         env=env, timeout=120)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.stderr[-2000:]
    return {**json.loads(lines[-1][len("RESULT "):]), "stdout": run.stdout}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small untrained int8 model, saved with its card, and an Android bundle of it."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(h)))
    x = np.random.default_rng(0).random((120, 8, 8, 1), np.float32)
    artifact = tfedge.convert(model, representative_data=x)
    folder = tmp_path_factory.mktemp("cli_startup")
    path = artifact.save(folder / "model.tflite")
    bundle = tfedge.export_android(artifact, folder / "android", name="tiny")
    return path, bundle.directory


def test_help_does_not_import_tensorflow():
    result = _cli("--help")
    assert result["status"] == 0 and "inspect" in result["stdout"]
    assert result["heavy"] == []


def test_inspect_does_not_import_tensorflow(tiny_model):
    path, _ = tiny_model
    result = _cli("inspect", str(path), "--json")
    assert result["status"] == 0
    assert '"mode": "int8"' in result["stdout"]
    assert result["heavy"] == []


def test_check_does_not_import_tensorflow(tiny_model):
    _, bundle_dir = tiny_model
    result = _cli("check", str(bundle_dir))
    assert result["status"] == 0, result["stdout"]
    assert result["heavy"] == []


def test_import_tfedge_alone_does_not_import_tensorflow_but_its_names_do():
    code = ("import sys, tfedge; before = 'tensorflow' in sys.modules; tfedge.wrap; "
            "print(before, 'tensorflow' in sys.modules, callable(tfedge.convert))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert run.stdout.split()[-3:] == ["False", "True", "True"], run.stderr[-2000:]
