"""Importing tfedge makes tf.keras tf_keras, whatever was imported first (run in subprocesses)."""

import os
import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_tensorflow_imported_first_still_gets_tf_keras():
    result = _run("""
        import tensorflow as tf
        import tfedge, tf_keras
        assert tf.keras.Model is tf_keras.Model, tf.keras.Model
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok" in result.stdout


def test_keras3_imported_first_keeps_both():
    result = _run("""
        import keras
        import tfedge, tf_keras
        import tensorflow as tf
        assert keras.__version__.startswith("3."), keras.__version__
        assert tf.keras.Model is tf_keras.Model
        assert tfedge.keras is tf_keras
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok" in result.stdout


def test_tf_keras_already_keras3_raises_clear_error():
    result = _run("""
        import tensorflow as tf
        tf.keras.layers.Dense  # resolves tf.keras to Keras 3
        try:
            import tfedge
        except ImportError as err:
            print("ERR:", err)
        else:
            print("no error")
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ERR:" in result.stdout
    assert "TF_USE_LEGACY_KERAS=1" in result.stdout


@pytest.mark.parametrize("value", ["1", "true"])
def test_legacy_flag_set_by_user_is_respected(value):
    env_code = f"import os; os.environ['TF_USE_LEGACY_KERAS'] = {value!r}\n"
    result = _run(env_code + "import tensorflow as tf\ntf.keras.layers.Dense\n"
                  "import tfedge, tf_keras\nassert tf.keras.Model is tf_keras.Model\nprint('ok')")
    assert result.returncode == 0, result.stderr[-2000:]
